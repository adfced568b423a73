//! libpq's password file: `~/.pgpass` (or `$PGPASSFILE`), lines of
//! `host:port:database:user:password` with `*` wildcards and `\` escapes.
//!
//! Read here because no well-kept crate reads it (tokio-postgres leaves the password to the
//! caller), and operators who use `psql` keep their passwords there. libpq's rules are kept: the
//! first matching line wins, a unix-socket host matches `localhost`, and a file that group or
//! others can read is ignored with a warning.

use super::Target;
use crate::secret::Secret;
use std::path::PathBuf;

/// The password for `target`, if a password file has a matching line.
pub(super) fn password(target: &Target, env: &dyn Fn(&str) -> Option<String>) -> Option<Secret> {
    let path = file_path(env)?;
    let text = read_private(&path)?;
    lookup(&text, target).map(Secret::new)
}

/// `$PGPASSFILE`, else `.pgpass` in `$HOME`, else in the home directory from the password
/// database (std's `home_dir`, which reads the same two places).
fn file_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(path) = env("PGPASSFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let home = env("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(std::env::home_dir)?;
    Some(home.join(".pgpass"))
}

/// The file's text, unless it is missing or readable by group/others: libpq ignores such a
/// file (with a warning) so that a password is not used from a file others can read.
fn read_private(path: &PathBuf) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "ignoring the password file: it has group or world access (should be 0600)"
        );
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// The first matching line wins. A unix-socket host matches the name `localhost`, as in
/// libpq.
pub(super) fn lookup(text: &str, target: &Target) -> Option<String> {
    let host = if target.is_unix_socket() {
        "localhost"
    } else {
        target.host.as_str()
    };
    let port = target.port.to_string();
    let wanted = [
        host,
        port.as_str(),
        target.dbname.as_str(),
        target.user.as_str(),
    ];
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(split_line)
        .find(|fields| {
            fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, value)| field == "*" || field == value)
        })
        .map(|mut fields| fields.swap_remove(4))
}

/// Five fields; `\:` and `\\` are escapes; the password is the rest of the line.
fn split_line(line: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut()?.push(chars.next().unwrap_or('\\')),
            ':' if fields.len() < 5 => fields.push(String::new()),
            _ => fields.last_mut()?.push(c),
        }
    }
    (fields.len() == 5).then_some(fields)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::connect::tests::env_of;

    fn target(host: &str, port: u16, dbname: &str, user: &str) -> Target {
        Target {
            host: host.into(),
            port,
            dbname: dbname.into(),
            user: user.into(),
        }
    }

    #[test]
    fn pgpass_lookup() {
        let text = "# comment\n\
                    other:*:*:*:nope\n\
                    db\\:x:5432:syn:bob:with\\:colon:and\\\\slash\n\
                    localhost:5432:*:carol:socketpw\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            lookup(text, &target("db:x", 5432, "syn", "bob")).as_deref(),
            Some("with:colon:and\\slash")
        );
        assert_eq!(
            lookup(text, &target("/var/run/postgresql", 5432, "x", "carol")).as_deref(),
            Some("socketpw")
        );
        assert_eq!(
            lookup(text, &target("db", 1, "x", "y")).as_deref(),
            Some("fallback")
        );
        assert_eq!(lookup("a:b:c\n", &target("a", 1, "c", "d")), None);
    }

    #[test]
    fn pgpass_file_is_used_only_when_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        std::fs::write(&path, "*:*:*:*:filepw\n").unwrap();
        let env = env_of(&[("PGPASSFILE", path.to_str().unwrap())]);
        let t = target("h", 5432, "d", "u");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(password(&t, &env), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            password(&t, &env).as_ref().map(Secret::expose),
            Some("filepw")
        );
    }
}
