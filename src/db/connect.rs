//! Connection options shared by the Synapse and MAS sides, and the code that opens a connection.
//!
//! The rules follow libpq (what `psql`, psycopg2 and therefore Synapse use), so that the settings
//! that work for the operator's `psql` work here too:
//!
//! * a URI is `postgresql://[user[:password]@][host][:port][/dbname][?k=v&…]`, percent-encoded;
//! * values that are not given come from `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`,
//!   `PGDATABASE`, `PGSSLMODE` (and `PGSSLROOTCERT`/`PGSSLCERT`/`PGSSLKEY`), then from
//!   `~/.pgpass` (or `PGPASSFILE`) for the password, then from libpq's defaults;
//! * a host that starts with `/` is the directory of a unix socket, and `sslmode` is ignored for
//!   it (PostgreSQL offers no TLS on unix sockets);
//! * `require` encrypts without checking the certificate (unless a root certificate is given,
//!   then it behaves as `verify-ca`), `verify-ca` checks the chain, `verify-full` also the name.

use crate::secret::Secret;
use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls, Socket};

/// libpq's `sslmode` values that syn2mas supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// Parses libpq's spelling (also MAS's `ssl_mode`, which uses the same words). `allow`
    /// (plain first, TLS if the server insists) is read as `prefer`: both accept either kind of
    /// connection without checking certificates, only the order of attempts differs, and
    /// tokio-postgres has no "plain first" mode.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "disable" => Some(Self::Disable),
            "allow" | "prefer" => Some(Self::Prefer),
            "require" => Some(Self::Require),
            "verify-ca" => Some(Self::VerifyCa),
            "verify-full" => Some(Self::VerifyFull),
            _ => None,
        }
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// A PEM document given either as a path or inline (MAS accepts both forms).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pem {
    File(PathBuf),
    /// Inline PEM text; kept as a `Secret` because a private key may be given this way.
    Inline(Secret),
}

/// Where and how to connect. Built from a config section or a URI; missing values are filled
/// from libpq's environment variables by `with_libpq_env`, as libpq itself would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// A host name, an IP address, or an absolute directory (unix socket).
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub dbname: Option<String>,
    pub ssl_mode: SslMode,
    pub ssl_root_cert: Option<Pem>,
    pub ssl_cert: Option<Pem>,
    pub ssl_key: Option<Pem>,
}

/// Why a connection failed, with the target described without its password.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to the {side} database ({target}): {reason}")]
pub struct ConnectError {
    /// `Synapse` or `MAS`.
    pub side: &'static str,
    /// `host=… port=… dbname=… user=…`, never the password.
    pub target: String,
    pub reason: String,
}

/// libpq's compiled-in socket directory on Debian/Ubuntu and in the official images, used as the
/// default host when it exists (libpq's own default), else `localhost`.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// libpq's default port.
pub const DEFAULT_PORT: u16 = 5432;
/// Shown in `pg_stat_activity`, so a DBA can tell syn2mas's sessions apart.
const APPLICATION_NAME: &str = "syn2mas";
/// libpq waits forever by default; a migration tool that hangs on an unroutable host is worse
/// than one that says so. 30 s is MAS's own `connect_timeout` default.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a variable from the process environment. Pass this (or a test double) wherever an `env`
/// lookup is expected; `with_env` treats an empty value as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl ConnectOptions {
    /// Parses a libpq connection URI. Only what the URI says is set: call
    /// [`with_libpq_env`](Self::with_libpq_env) to fill the rest as libpq would.
    ///
    /// Error messages never quote any part of the URI: a malformed URI can put a password
    /// anywhere (an unencoded `/` or `@` in it shifts every part), so quoting "the bad port" could
    /// print a piece of the password.
    pub fn from_uri(uri: &str) -> Result<ConnectOptions, String> {
        uri::parse(uri)
    }

    /// Fills every value that is still missing from libpq's environment variables, read through
    /// `env` (see [`process_env`]). `PGSSLMODE` applies only while `ssl_mode` is still the
    /// default (`prefer`), since `ssl_mode` cannot record whether it was set explicitly.
    pub fn with_env(mut self, env: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        fill(&mut self.host, || get("PGHOST"));
        fill(&mut self.port, || get("PGPORT").and_then(|p| env_port(&p)));
        fill(&mut self.user, || get("PGUSER"));
        fill(&mut self.password, || get("PGPASSWORD").map(Secret::new));
        fill(&mut self.dbname, || get("PGDATABASE"));
        if self.ssl_mode == SslMode::default()
            && let Some(mode) = get("PGSSLMODE").and_then(|m| env_ssl_mode(&m))
        {
            self.ssl_mode = mode;
        }
        fill(&mut self.ssl_root_cert, || {
            get("PGSSLROOTCERT").map(pem_file)
        });
        fill(&mut self.ssl_cert, || get("PGSSLCERT").map(pem_file));
        fill(&mut self.ssl_key, || get("PGSSLKEY").map(pem_file));
        self
    }

    /// [`with_env`](Self::with_env) with the process environment.
    pub fn with_libpq_env(self) -> Self {
        self.with_env(process_env)
    }

    /// `(host, port, dbname, user)` as a connection would use them: these options, then the
    /// process's libpq environment, then libpq's defaults.
    pub fn effective(&self) -> (String, u16, String, String) {
        self.effective_with(process_env)
    }

    /// [`effective`](Self::effective) with an injected environment (`USER` is read from it too).
    pub fn effective_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> (String, u16, String, String) {
        let t = Target::resolve(&self.clone().with_env(&env), &env);
        (t.host, t.port, t.dbname, t.user)
    }

    /// `host=… port=… dbname=… user=…` with the effective values; never the password. Used in
    /// every message about a connection, so the operator sees which database was meant.
    pub fn describe(&self) -> String {
        self.describe_with(process_env)
    }

    /// [`describe`](Self::describe) with an injected environment.
    pub fn describe_with(&self, env: impl Fn(&str) -> Option<String>) -> String {
        Target::resolve(&self.clone().with_env(&env), &env).describe()
    }

    /// Opens one connection and spawns its I/O task on the current tokio runtime. `side`
    /// (`Synapse` or `MAS`) only labels errors and logs.
    pub async fn connect(&self, side: &'static str) -> Result<Client, ConnectError> {
        self.connect_with(side, &process_env).await
    }

    /// [`connect`](Self::connect) with an injected environment.
    pub async fn connect_with(
        &self,
        side: &'static str,
        env: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<Client, ConnectError> {
        let filled = self.clone().with_env(env);
        let target = Target::resolve(&filled, env);
        let password = filled
            .password
            .clone()
            .or_else(|| pgpass::password(&target, env));
        let fail = |reason: String| ConnectError {
            side,
            target: target.describe(),
            reason: redact(&reason, password.as_ref()),
        };
        let transport = tls::transport(&filled, &target.host).map_err(fail)?;
        let config = target.pg_config(password.as_ref());
        open_with(&config, transport, side)
            .await
            .map_err(|e| fail(error_chain(&e)))
    }
}

fn fill<T>(slot: &mut Option<T>, value: impl FnOnce() -> Option<T>) {
    if slot.is_none() {
        *slot = value();
    }
}

fn pem_file(path: String) -> Pem {
    Pem::File(PathBuf::from(path))
}

/// libpq refuses a bad `PGPORT`; here it is ignored with a warning instead, because
/// `with_env` cannot fail and the connection error that follows names the port used.
fn env_port(text: &str) -> Option<u16> {
    let port = text.parse::<u16>().ok().filter(|p| *p != 0);
    if port.is_none() {
        tracing::warn!("ignoring PGPORT: it is not a port number");
    }
    port
}

fn env_ssl_mode(text: &str) -> Option<SslMode> {
    let mode = SslMode::parse(text);
    if mode.is_none() {
        tracing::warn!("ignoring PGSSLMODE: it is not a supported sslmode");
    }
    mode
}

/// What a connection will actually use, after the environment and libpq's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    user: String,
    dbname: String,
}

impl Target {
    /// libpq's defaults for what is still missing: the socket directory (or `localhost`), port
    /// 5432, the OS user, and a database named like the user.
    fn resolve(options: &ConnectOptions, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let user = options.user.clone().unwrap_or_else(|| default_user(env));
        Self {
            host: options.host.clone().unwrap_or_else(default_host),
            port: options.port.unwrap_or(DEFAULT_PORT),
            dbname: options.dbname.clone().unwrap_or_else(|| user.clone()),
            user,
        }
    }

    fn describe(&self) -> String {
        format!(
            "host={} port={} dbname={} user={}",
            self.host, self.port, self.dbname, self.user
        )
    }

    fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    fn pg_config(&self, password: Option<&Secret>) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        if self.is_unix_socket() {
            config.host_path(&self.host);
        } else {
            config.host(&self.host);
        }
        config
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(APPLICATION_NAME)
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(password) = password {
            config.password(password.expose());
        }
        config
    }
}

fn default_host() -> String {
    if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
        DEFAULT_SOCKET_DIR.to_owned()
    } else {
        "localhost".to_owned()
    }
}

/// `$USER`, else the name of the effective OS user (libpq's own rule; containers often have no
/// `$USER`), else `postgres` if even that lookup fails.
fn default_user(env: &dyn Fn(&str) -> Option<String>) -> String {
    env("USER")
        .filter(|u| !u.is_empty())
        .or_else(|| os_user().map(|u| u.name))
        .unwrap_or_else(|| "postgres".to_owned())
}

/// The effective OS user's name and home directory, from the password database.
struct OsUser {
    name: String,
    home: PathBuf,
}

fn os_user() -> Option<OsUser> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: `passwd` is plain old data, so all-zero is a valid value for the out-parameter.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf.len()` is the size of `buf`; on
    // success `entry`'s strings point into `buf`, which outlives their use below.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut entry,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() || entry.pw_name.is_null() || entry.pw_dir.is_null() {
        return None;
    }
    // SAFETY: checked non-null above; getpwuid_r writes NUL-terminated strings into `buf`.
    let (name, home) = unsafe { (CStr::from_ptr(entry.pw_name), CStr::from_ptr(entry.pw_dir)) };
    Some(OsUser {
        name: name.to_string_lossy().into_owned(),
        home: PathBuf::from(std::ffi::OsStr::from_bytes(home.to_bytes())),
    })
}

/// Connects with the chosen transport. With `prefer`, a TLS handshake that fails after the
/// server agreed to TLS is retried in plain text, as libpq does (a server that *refuses* TLS is
/// handled inside tokio-postgres already).
async fn open_with(
    config: &tokio_postgres::Config,
    transport: tls::Transport,
    side: &'static str,
) -> Result<Client, tokio_postgres::Error> {
    let mut config = config.clone();
    let tls::Transport::Tls { mode, connector } = transport else {
        config.ssl_mode(PgSslMode::Disable);
        return open(&config, NoTls, side).await;
    };
    config.ssl_mode(mode);
    let tls = postgres_native_tls::MakeTlsConnector::new(connector);
    match open(&config, tls, side).await {
        Err(error) if mode == PgSslMode::Prefer && is_tls_failure(&error) => {
            tracing::debug!(
                side,
                error = %error_chain(&error),
                "TLS failed with sslmode=prefer, retrying without TLS"
            );
            config.ssl_mode(PgSslMode::Disable);
            open(&config, NoTls, side).await
        }
        other => other,
    }
}

async fn open<T>(
    config: &tokio_postgres::Config,
    tls: T,
    side: &'static str,
) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            // tokio-postgres errors carry no credentials; the chain helps tell a network
            // failure from a server-side termination.
            tracing::debug!(
                side,
                error = %error_chain(&error),
                "database connection ended with an error"
            );
        }
    });
    client.batch_execute(NO_JIT).await?;
    Ok(client)
}

/// Every query syn2mas runs is one large scan, join or index build that runs once: LLVM's
/// compile time (0.7 s for the devices/tokens read, before its first row) is never won back,
/// and PostgreSQL's cost threshold switches it on exactly for those. A plain `SET` after
/// connecting rather than a startup option, which connection poolers may refuse; skipped on
/// servers without JIT.
const NO_JIT: &str =
    "SELECT set_config('jit', 'off', false) FROM pg_catalog.pg_settings WHERE name = 'jit'";

/// A failure inside the TLS library (as opposed to refusal, I/O or authentication).
fn is_tls_failure(error: &tokio_postgres::Error) -> bool {
    error
        .source()
        .is_some_and(|cause| cause.downcast_ref::<native_tls::Error>().is_some())
}

/// `Display` of an error and of all its causes, joined with `: `. tokio-postgres's own
/// `Display` only says e.g. "error connecting to server" and keeps the useful part
/// ("Connection refused", the server's FATAL message) in the cause.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Removes the password from a message, as a last line of defence (no known error path quotes
/// it). Passwords shorter than 4 characters are left alone: blanking every "a" or "on" in a
/// message would both garble it and reveal the password by where the holes are.
fn redact(message: &str, password: Option<&Secret>) -> String {
    match password.map(Secret::expose) {
        Some(p) if p.chars().count() >= 4 => message.replace(p, "[redacted]"),
        _ => message.to_owned(),
    }
}

mod uri {
    //! libpq's URI syntax.

    use super::{ConnectOptions, Pem, SslMode};
    use crate::secret::Secret;
    use std::path::PathBuf;

    const SUPPORTED: &str = "host, port, user, password, dbname, sslmode, sslrootcert, sslcert, \
                             sslkey, application_name";

    pub(super) fn parse(uri: &str) -> Result<ConnectOptions, String> {
        let rest = strip_scheme(uri).ok_or_else(|| {
            "a database URI must start with `postgresql://` or `postgres://`".to_owned()
        })?;
        let (main, query) = match rest.split_once('?') {
            Some((main, query)) => (main, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match main.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (main, ""),
        };
        let mut options = ConnectOptions::default();
        let hostport = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                apply_userinfo(&mut options, userinfo)?;
                hostport
            }
            None => authority,
        };
        apply_hostport(&mut options, hostport)?;
        if !path.is_empty() {
            options.dbname = Some(decode(path, "database name")?);
        }
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            apply_param(&mut options, pair)?;
        }
        Ok(options)
    }

    /// `postgresql://…`, `postgres://…`, or the bare scheme (`postgresql:`), which means
    /// "everything from the environment and the defaults".
    fn strip_scheme(uri: &str) -> Option<&str> {
        ["postgresql:", "postgres:"].iter().find_map(|scheme| {
            let rest = uri.strip_prefix(scheme)?;
            if rest.is_empty() {
                Some(rest)
            } else {
                rest.strip_prefix("//")
            }
        })
    }

    fn apply_userinfo(options: &mut ConnectOptions, userinfo: &str) -> Result<(), String> {
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        options.user = non_empty(decode(user, "user name")?);
        if let Some(password) = password {
            options.password = non_empty(decode(password, "password")?).map(Secret::new);
        }
        Ok(())
    }

    fn apply_hostport(options: &mut ConnectOptions, hostport: &str) -> Result<(), String> {
        if hostport.contains(',') {
            return Err("a database URI with several hosts is not supported".to_owned());
        }
        let (host, port) = match hostport.strip_prefix('[') {
            Some(bracketed) => split_ipv6(bracketed)?,
            None => match hostport.split_once(':') {
                Some((host, port)) => (decode(host, "host")?, Some(port)),
                None => (decode(hostport, "host")?, None),
            },
        };
        options.host = non_empty(host);
        if let Some(port) = port.filter(|p| !p.is_empty()) {
            options.port = Some(parse_port(port)?);
        }
        Ok(())
    }

    /// `[::1]:5432` without its leading `[`.
    fn split_ipv6(bracketed: &str) -> Result<(String, Option<&str>), String> {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 host in the database URI lacks its closing `]`")?;
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or("unexpected text after the IPv6 host in the database URI")?,
            ),
        };
        Ok((host.to_owned(), port))
    }

    fn parse_port(text: &str) -> Result<u16, String> {
        text.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
            "the port in the database URI must be a number from 1 to 65535".to_owned()
        })
    }

    fn apply_param(options: &mut ConnectOptions, pair: &str) -> Result<(), String> {
        let (key, value) = pair
            .split_once('=')
            .ok_or("a parameter in the database URI's query lacks `=`")?;
        let key = decode(key, "query parameter name")?;
        let value = decode(value, "query parameter value")?;
        match key.as_str() {
            "host" => options.host = non_empty(value),
            "port" => options.port = Some(parse_port(&value)?),
            "user" => options.user = non_empty(value),
            "password" => options.password = non_empty(value).map(Secret::new),
            "dbname" => options.dbname = non_empty(value),
            "sslmode" => options.ssl_mode = ssl_mode(&value)?,
            "sslrootcert" => options.ssl_root_cert = pem_file(value),
            "sslcert" => options.ssl_cert = pem_file(value),
            "sslkey" => options.ssl_key = pem_file(value),
            // Harmless for a one-shot tool; syn2mas sets its own application name.
            "application_name" | "fallback_application_name" | "connect_timeout" => {}
            _ => {
                return Err(format!(
                    "unsupported parameter in the database URI's query (supported: {SUPPORTED})"
                ));
            }
        }
        Ok(())
    }

    fn ssl_mode(value: &str) -> Result<SslMode, String> {
        SslMode::parse(value).ok_or_else(|| {
            "`sslmode` in the database URI must be one of disable, allow, prefer, require, \
             verify-ca, verify-full"
                .to_owned()
        })
    }

    fn pem_file(value: String) -> Option<Pem> {
        non_empty(value).map(|v| Pem::File(PathBuf::from(v)))
    }

    fn non_empty(value: String) -> Option<String> {
        (!value.is_empty()).then_some(value)
    }

    /// Percent-decoding (`%2F` → `/`). `+` stays `+`: libpq does not treat it as a space.
    fn decode(text: &str, what: &str) -> Result<String, String> {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let byte = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| {
                        format!("the {what} in the database URI has a bad `%` escape")
                    })?;
                out.push(byte);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out)
            .map_err(|_| format!("the {what} in the database URI is not UTF-8 once decoded"))
    }
}

mod pgpass {
    //! libpq's password file: `~/.pgpass` (or `$PGPASSFILE`), lines of
    //! `host:port:database:user:password` with `*` wildcards and `\` escapes.

    use super::{Target, os_user};
    use crate::secret::Secret;
    use std::path::PathBuf;

    /// The password for `target`, if a password file has a matching line.
    pub(super) fn password(
        target: &Target,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Secret> {
        let path = file_path(env)?;
        let text = read_private(&path)?;
        lookup(&text, target).map(Secret::new)
    }

    fn file_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
        if let Some(path) = env("PGPASSFILE").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(path));
        }
        let home = env("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(|| os_user().map(|u| u.home))?;
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
}

mod tls {
    //! Choosing and building the TLS connector for an `sslmode`.

    use super::{ConnectOptions, Pem, PgSslMode, SslMode};
    use native_tls::{Certificate, Identity, TlsConnector};
    use std::path::Path;

    pub(super) enum Transport {
        Plain,
        Tls {
            mode: PgSslMode,
            connector: TlsConnector,
        },
    }

    /// libpq's meaning of each mode. Unix sockets never use TLS (libpq ignores `sslmode` there,
    /// and the server refuses TLS on them).
    pub(super) fn transport(options: &ConnectOptions, host: &str) -> Result<Transport, String> {
        if host.starts_with('/') {
            return Ok(Transport::Plain);
        }
        let has_root = options.ssl_root_cert.is_some();
        let (mode, verify_chain, verify_host) = match options.ssl_mode {
            SslMode::Disable => return Ok(Transport::Plain),
            SslMode::Prefer => (PgSslMode::Prefer, false, false),
            // libpq: `require` with a root certificate given behaves as `verify-ca`.
            SslMode::Require => (PgSslMode::Require, has_root, false),
            SslMode::VerifyCa => (PgSslMode::Require, true, false),
            SslMode::VerifyFull => (PgSslMode::Require, true, true),
        };
        let connector = cached_connector(options, verify_chain, verify_host)?;
        Ok(Transport::Tls { mode, connector })
    }

    /// Building a connector loads and parses the system's CA bundle, which took more client
    /// CPU than a whole migration's TLS traffic when every one of a run's sessions did it; the
    /// sessions of one run share their settings, so each distinct setting is built once.
    fn cached_connector(
        options: &ConnectOptions,
        verify_chain: bool,
        verify_host: bool,
    ) -> Result<TlsConnector, String> {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        type Key = (Option<Pem>, Option<Pem>, Option<Pem>, bool, bool);
        static CACHE: OnceLock<Mutex<HashMap<Key, TlsConnector>>> = OnceLock::new();
        let key: Key = (
            options.ssl_root_cert.clone(),
            options.ssl_cert.clone(),
            options.ssl_key.clone(),
            verify_chain,
            verify_host,
        );
        let cache = CACHE.get_or_init(Mutex::default);
        if let Some(c) = cache.lock().unwrap().get(&key) {
            return Ok(c.clone());
        }
        let built = connector(options, verify_chain, verify_host)?;
        cache.lock().unwrap().insert(key, built.clone());
        Ok(built)
    }

    fn connector(
        options: &ConnectOptions,
        verify_chain: bool,
        verify_host: bool,
    ) -> Result<TlsConnector, String> {
        let mut builder = TlsConnector::builder();
        builder
            .danger_accept_invalid_certs(!verify_chain)
            .danger_accept_invalid_hostnames(!verify_host);
        if verify_chain {
            add_roots(&mut builder, options.ssl_root_cert.as_ref())?;
        }
        if let Some(identity) = identity(options)? {
            builder.identity(identity);
        }
        builder
            .build()
            .map_err(|e| format!("cannot set up TLS: {e}"))
    }

    /// The given root certificates replace the system's trust store (libpq trusts only its
    /// `sslrootcert`); with none given, or with libpq's special value `system`, the system store
    /// is used.
    fn add_roots(
        builder: &mut native_tls::TlsConnectorBuilder,
        root: Option<&Pem>,
    ) -> Result<(), String> {
        let Some(root) = root.filter(|r| **r != Pem::File("system".into())) else {
            return Ok(());
        };
        let what = describe(root, "root certificate");
        for certificate in certificates(&read(root, &what)?, &what)? {
            builder.add_root_certificate(certificate);
        }
        builder.disable_built_in_roots(true);
        Ok(())
    }

    /// The client certificate and key, which must come together. The key must be PKCS#8: that
    /// is what native-tls can load, and the error says how to convert another format.
    fn identity(options: &ConnectOptions) -> Result<Option<Identity>, String> {
        let (cert, key) = match (&options.ssl_cert, &options.ssl_key) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            _ => {
                return Err(
                    "a TLS client certificate and its key must be given together".to_owned(),
                );
            }
        };
        let cert_what = describe(cert, "client certificate");
        let key_what = describe(key, "client key");
        let cert = read(cert, &cert_what)?;
        let key = read(key, &key_what)?;
        let key = key.trim_ascii_start();
        if !key.starts_with(b"-----BEGIN PRIVATE KEY-----") {
            return Err(format!(
                "the {key_what} must be an unencrypted PKCS#8 PEM key (`-----BEGIN PRIVATE \
                 KEY-----`); convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`"
            ));
        }
        Identity::from_pkcs8(&cert, key)
            .map(Some)
            .map_err(|e| format!("cannot load the {cert_what} and {key_what}: {e}"))
    }

    /// How a PEM source is named in messages: its path, never its content.
    fn describe(pem: &Pem, what: &str) -> String {
        match pem {
            Pem::File(path) => format!("{what} file {}", path.display()),
            Pem::Inline(_) => format!("inline {what}"),
        }
    }

    fn read(pem: &Pem, what: &str) -> Result<Vec<u8>, String> {
        match pem {
            Pem::File(path) => read_file(path, what),
            Pem::Inline(text) => Ok(text.expose().as_bytes().to_vec()),
        }
    }

    fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
        crate::config::read_file_capped(path).map_err(|e| format!("cannot read the {what}: {e}"))
    }

    /// Every certificate of a PEM bundle (native-tls's `from_pem` reads only the first one).
    pub(super) fn certificates(pem: &[u8], what: &str) -> Result<Vec<Certificate>, String> {
        const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
        const END: &str = "-----END CERTIFICATE-----";
        let text = std::str::from_utf8(pem).map_err(|_| format!("the {what} is not PEM text"))?;
        let mut found = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find(BEGIN) {
            let block = &rest[start..];
            let end = block
                .find(END)
                .ok_or_else(|| format!("the {what} has a truncated PEM certificate"))?
                + END.len();
            let certificate = Certificate::from_pem(&block.as_bytes()[..end])
                .map_err(|e| format!("the {what} has an invalid certificate: {e}"))?;
            found.push(certificate);
            rest = &block[end..];
        }
        if found.is_empty() {
            return Err(format!("the {what} contains no PEM certificate"));
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn full_uri() {
        let o = ConnectOptions::from_uri(
            "postgresql://syn:p%40ss%3Aw%2Fd@db.example.com:6543/synapse?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(o.host.as_deref(), Some("db.example.com"));
        assert_eq!(o.port, Some(6543));
        assert_eq!(o.user.as_deref(), Some("syn"));
        assert_eq!(o.password.as_ref().map(Secret::expose), Some("p@ss:w/d"));
        assert_eq!(o.dbname.as_deref(), Some("synapse"));
        assert_eq!(o.ssl_mode, SslMode::VerifyFull);
        assert_eq!(o.ssl_root_cert, Some(Pem::File("/etc/ca.pem".into())));
    }

    #[test]
    fn bare_schemes_are_empty_options() {
        for uri in ["postgresql://", "postgres://", "postgresql:", "postgres:"] {
            assert_eq!(
                ConnectOptions::from_uri(uri).unwrap(),
                ConnectOptions::default(),
                "{uri}"
            );
        }
    }

    #[test]
    fn socket_in_host_or_query() {
        let a = ConnectOptions::from_uri("postgresql://%2Fvar%2Frun%2Fpostgresql/synapse").unwrap();
        assert_eq!(a.host.as_deref(), Some("/var/run/postgresql"));
        assert_eq!(a.dbname.as_deref(), Some("synapse"));
        let b = ConnectOptions::from_uri("postgresql:///synapse?host=/run/pg&port=5433&user=me")
            .unwrap();
        assert_eq!(b.host.as_deref(), Some("/run/pg"));
        assert_eq!(b.port, Some(5433));
        assert_eq!(b.user.as_deref(), Some("me"));
    }

    #[test]
    fn ipv6_and_user_without_password() {
        let o = ConnectOptions::from_uri("postgres://me@[::1]:5433").unwrap();
        assert_eq!(o.host.as_deref(), Some("::1"));
        assert_eq!(o.port, Some(5433));
        assert_eq!(o.user.as_deref(), Some("me"));
        assert_eq!(o.password, None);
        assert_eq!(o.dbname, None);
    }

    #[test]
    fn uri_errors_are_exact_and_never_quote_the_uri() {
        let cases = [
            (
                "mysql://u:hunter2@h/db",
                "a database URI must start with `postgresql://` or `postgres://`",
            ),
            (
                "postgresql://u:hunter2@h:99999/db",
                "the port in the database URI must be a number from 1 to 65535",
            ),
            // An unencoded `/` in the password shifts everything: the password's head lands
            // in the port; the message must not quote it.
            (
                "postgresql://u:hun/ter2@h/db",
                "the port in the database URI must be a number from 1 to 65535",
            ),
            (
                "postgresql://u:hunter2%zz@h/db",
                "the password in the database URI has a bad `%` escape",
            ),
            (
                "postgresql://u:hunter2%ff@h/db",
                "the password in the database URI is not UTF-8 once decoded",
            ),
            (
                "postgresql://h/db?sslmode=hunter2",
                "`sslmode` in the database URI must be one of disable, allow, prefer, require, verify-ca, verify-full",
            ),
            (
                "postgresql://h/db?hunter2=1",
                "unsupported parameter in the database URI's query (supported: host, port, user, password, dbname, sslmode, sslrootcert, sslcert, sslkey, application_name)",
            ),
            (
                "postgresql://h/db?password=a&hunter2",
                "a parameter in the database URI's query lacks `=`",
            ),
            (
                "postgresql://h1,h2/db",
                "a database URI with several hosts is not supported",
            ),
        ];
        for (uri, expected) in cases {
            let err = ConnectOptions::from_uri(uri).unwrap_err();
            assert_eq!(err, expected, "{uri}");
            assert!(!err.contains("hunter2") && !err.contains("hun"), "{uri}");
        }
    }

    #[test]
    fn env_fills_only_missing_values() {
        let env = env_of(&[
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpass"),
            ("PGDATABASE", "envdb"),
            ("PGSSLMODE", "require"),
        ]);
        let given = ConnectOptions::from_uri("postgresql://me@cfghost/cfgdb?sslmode=disable")
            .unwrap()
            .with_env(&env);
        assert_eq!(given.host.as_deref(), Some("cfghost"));
        assert_eq!(given.port, Some(6000));
        assert_eq!(given.user.as_deref(), Some("me"));
        assert_eq!(given.password.as_ref().map(Secret::expose), Some("envpass"));
        assert_eq!(given.dbname.as_deref(), Some("cfgdb"));
        assert_eq!(given.ssl_mode, SslMode::Disable);

        let empty = ConnectOptions::default().with_env(&env);
        assert_eq!(empty.host.as_deref(), Some("envhost"));
        assert_eq!(empty.user.as_deref(), Some("envuser"));
        assert_eq!(empty.dbname.as_deref(), Some("envdb"));
        assert_eq!(empty.ssl_mode, SslMode::Require);
    }

    #[test]
    fn bad_or_empty_env_values_are_ignored() {
        let env = env_of(&[("PGPORT", "x"), ("PGSSLMODE", "sometimes"), ("PGHOST", "")]);
        let o = ConnectOptions::default().with_env(env);
        assert_eq!(o.port, None);
        assert_eq!(o.ssl_mode, SslMode::Prefer);
        assert_eq!(o.host, None);
    }

    #[test]
    fn describe_applies_defaults_and_hides_the_password() {
        let o = ConnectOptions::from_uri("postgresql://alice:s3cret-pw@db:6000").unwrap();
        assert_eq!(
            o.describe_with(no_env),
            "host=db port=6000 dbname=alice user=alice"
        );
        let defaults = ConnectOptions::default();
        let expected_host = if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
            DEFAULT_SOCKET_DIR
        } else {
            "localhost"
        };
        assert_eq!(
            defaults.effective_with(env_of(&[("USER", "bob")])),
            (
                expected_host.to_owned(),
                5432,
                "bob".to_owned(),
                "bob".to_owned()
            )
        );
        assert!(!format!("{o:?}").contains("s3cret-pw"));
    }

    #[test]
    fn default_user_falls_back_to_the_os_user() {
        let (_, _, dbname, user) = ConnectOptions::default().effective_with(no_env);
        let os = os_user()
            .map(|u| u.name)
            .unwrap_or_else(|| "postgres".into());
        assert_eq!(user, os);
        assert_eq!(dbname, os);
    }

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
            pgpass::lookup(text, &target("db:x", 5432, "syn", "bob")).as_deref(),
            Some("with:colon:and\\slash")
        );
        assert_eq!(
            pgpass::lookup(text, &target("/var/run/postgresql", 5432, "x", "carol")).as_deref(),
            Some("socketpw")
        );
        assert_eq!(
            pgpass::lookup(text, &target("db", 1, "x", "y")).as_deref(),
            Some("fallback")
        );
        assert_eq!(pgpass::lookup("a:b:c\n", &target("a", 1, "c", "d")), None);
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
        assert_eq!(pgpass::password(&t, &env), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            pgpass::password(&t, &env).as_ref().map(Secret::expose),
            Some("filepw")
        );
    }

    #[test]
    fn redaction_and_error_chain() {
        let pw = Secret::new("hunter2");
        assert_eq!(redact("bad hunter2 here", Some(&pw)), "bad [redacted] here");
        assert_eq!(redact("on and on", Some(&Secret::new("on"))), "on and on");
        let io = std::io::Error::other("inner");
        let outer = ConnectError {
            side: "MAS",
            target: "t".into(),
            reason: "r".into(),
        };
        assert_eq!(error_chain(&io), "inner");
        assert_eq!(
            error_chain(&outer),
            "cannot connect to the MAS database (t): r"
        );
    }

    #[test]
    fn tls_modes_and_certificate_errors() {
        let socket = ConnectOptions {
            ssl_mode: SslMode::VerifyFull,
            ..Default::default()
        };
        assert!(matches!(
            tls::transport(&socket, "/var/run/postgresql"),
            Ok(tls::Transport::Plain)
        ));
        let disabled = ConnectOptions {
            ssl_mode: SslMode::Disable,
            ..Default::default()
        };
        assert!(matches!(
            tls::transport(&disabled, "h"),
            Ok(tls::Transport::Plain)
        ));
        let missing_root = ConnectOptions {
            ssl_mode: SslMode::VerifyCa,
            ssl_root_cert: Some(Pem::File("/nonexistent/ca.pem".into())),
            ..Default::default()
        };
        let Err(err) = tls::transport(&missing_root, "h") else {
            panic!("expected an error")
        };
        assert_eq!(
            err,
            "cannot read the root certificate file /nonexistent/ca.pem: No such file or directory (os error 2)"
        );
        let half_identity = ConnectOptions {
            ssl_mode: SslMode::Require,
            ssl_cert: Some(Pem::Inline(Secret::new("x"))),
            ..Default::default()
        };
        let Err(err) = tls::transport(&half_identity, "h") else {
            panic!("expected an error")
        };
        assert_eq!(
            err,
            "a TLS client certificate and its key must be given together"
        );
        let pkcs1 = ConnectOptions {
            ssl_mode: SslMode::Require,
            ssl_cert: Some(Pem::Inline(Secret::new("cert"))),
            ssl_key: Some(Pem::Inline(Secret::new(
                "-----BEGIN RSA PRIVATE KEY-----\n",
            ))),
            ..Default::default()
        };
        let Err(err) = tls::transport(&pkcs1, "h") else {
            panic!("expected an error")
        };
        assert_eq!(
            err,
            "the inline client key must be an unencrypted PKCS#8 PEM key (`-----BEGIN PRIVATE KEY-----`); convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`"
        );
        assert_eq!(
            tls::certificates(b"nothing here", "root certificate").err(),
            Some("the root certificate contains no PEM certificate".to_owned())
        );
    }

    #[test]
    fn ssl_mode_spellings_round_trip() {
        for mode in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            assert_eq!(SslMode::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(SslMode::parse("allow"), Some(SslMode::Prefer));
        assert_eq!(SslMode::parse("Require"), None);
    }
}
