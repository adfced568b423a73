//! libpq's connection URIs: `postgresql://[user[:password]@][host][:port][/dbname][?k=v&…]`.
//!
//! The `url` crate splits the URI into its parts (user info, an IPv6 host in brackets, port, path,
//! query) and `percent-encoding` decodes them. What is left here is where libpq reads a URI
//! differently from the URL standard:
//!
//! * characters that libpq takes as written but the URL standard treats as syntax or drops (`#`
//!   starts a fragment, tabs and newlines are deleted, leading and trailing spaces trimmed,
//!   `<>\^|` refused in a host) are percent-encoded before parsing, so they reach the value;
//! * an empty host before a user or a port (`postgresql://user@/db?host=/run/pg`,
//!   `postgresql://:5433`) is refused by the URL standard and valid to libpq;
//! * several hosts (`h1,h2`, which libpq tries in turn) are refused rather than misread;
//! * `+` is not a space (no form decoding), and a bad `%` escape is an error, not text;
//! * the bare scheme (`postgresql:`) means "everything from the environment and the defaults";
//! * the query's keys are libpq's (`host`, `port`, `sslmode`, …).
//!
//! `tokio_postgres::Config`'s own URI parser is not used: it knows neither `verify-ca`,
//! `verify-full` nor the certificate keys, and its error for an unknown query key quotes the key.
//!
//! One difference remains: the URL standard resolves a path segment `.` or `..`, so a database
//! with such a name must be given as `?dbname=..`.
//!
//! No error message quotes any part of the URI: a malformed URI can put a password anywhere (an
//! unencoded `/` or `@` in it shifts every part), so quoting "the bad port" could print a piece
//! of the password. `url`'s own messages ("invalid port number") quote nothing either.

use super::{ConnectOptions, Pem, SslMode};
use crate::secret::Secret;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use std::path::PathBuf;
use url::{Host, ParseError, Url};

const SCHEMES: [&str; 2] = ["postgresql:", "postgres:"];
const SUPPORTED: &str = "host, port, user, password, dbname, sslmode, sslrootcert, sslcert, \
                         sslkey, application_name";
const PORT: &str = "the port in the database URI must be a number from 1 to 65535";

/// What the URL standard would drop, trim, or read as syntax, and libpq takes as written.
const LITERAL: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

/// Stands in for an empty host while the URL is parsed; never reported as the host.
const NO_HOST: &str = "localhost";

pub(super) fn parse(uri: &str) -> Result<ConnectOptions, String> {
    if SCHEMES.contains(&uri) {
        return Ok(ConnectOptions::default());
    }
    let Some((scheme, rest)) = SCHEMES
        .iter()
        .find_map(|scheme| Some((scheme, uri.strip_prefix(scheme)?.strip_prefix("//")?)))
    else {
        return Err("a database URI must start with `postgresql://` or `postgres://`".to_owned());
    };
    let rest = utf8_percent_encode(rest, LITERAL).to_string();
    let (rest, empty_host) = fill_empty_host(&rest)?;
    let text = format!("{scheme}//{rest}");
    let url = Url::parse(&text).map_err(parse_error)?;

    let host = match url.host() {
        _ if empty_host => None,
        None => None,
        Some(Host::Domain(host)) => non_empty(decode(host, "host")?),
        Some(Host::Ipv4(address)) => Some(address.to_string()),
        Some(Host::Ipv6(address)) => Some(address.to_string()),
    };
    let dbname = url.path().strip_prefix('/').filter(|p| !p.is_empty());
    let mut options = ConnectOptions {
        user: non_empty(decode(url.username(), "user name")?),
        password: decode_some(url.password(), "password")?.map(Secret::new),
        host,
        port: url.port().map(nonzero_port).transpose()?,
        dbname: decode_some(dbname, "database name")?,
        ..ConnectOptions::default()
    };
    for pair in url
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        apply_param(&mut options, pair)?;
    }
    Ok(options)
}

/// The URI after `scheme://`, with a placeholder host where libpq allows an empty one and the
/// URL standard does not, and whether one was put in. Also refuses several hosts, which `url`
/// would report as a bad port (`h1:1,h2:2`) or take as one host (`h1,h2`).
fn fill_empty_host(rest: &str) -> Result<(String, bool), String> {
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host_start = authority.rfind('@').map_or(0, |at| at + 1);
    let host_port = &authority[host_start..];
    if host_port.contains(',') {
        return Err("a database URI with several hosts is not supported".to_owned());
    }
    if !host_port.is_empty() && !host_port.starts_with(':') {
        return Ok((rest.to_owned(), false));
    }
    let (before, after) = rest.split_at(host_start);
    Ok((format!("{before}{NO_HOST}{after}"), true))
}

/// `url`'s classification, in this module's words.
fn parse_error(error: ParseError) -> String {
    match error {
        ParseError::InvalidPort => PORT.to_owned(),
        ParseError::InvalidIpv6Address => "the IPv6 host in the database URI must be an IPv6 \
                                           address in `[…]`, followed by nothing or by `:port`"
            .to_owned(),
        ParseError::InvalidDomainCharacter => {
            "the host in the database URI has a character that is not allowed there".to_owned()
        }
        // `url`'s messages name the kind of error only, never the text.
        other => format!("the database URI is not valid: {other}"),
    }
}

fn nonzero_port(port: u16) -> Result<u16, String> {
    (port != 0).then_some(port).ok_or_else(|| PORT.to_owned())
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

fn parse_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .map_err(|_| PORT.to_owned())
        .and_then(nonzero_port)
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

/// A part that may be absent, decoded; `None` if absent or empty.
fn decode_some(part: Option<&str>, what: &str) -> Result<Option<String>, String> {
    Ok(part
        .map(|p| decode(p, what))
        .transpose()?
        .and_then(non_empty))
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

/// Percent-decoding (`%2F` → `/`). `+` stays `+`: libpq does not treat it as a space.
/// `percent_decode_str` keeps a `%` without two hex digits as text; libpq refuses it, and so
/// does this.
fn decode(text: &str, what: &str) -> Result<String, String> {
    let well_formed = text.split('%').skip(1).all(|escape| {
        escape
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return Err(format!(
            "the {what} in the database URI has a bad `%` escape"
        ));
    }
    percent_decode_str(text)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| format!("the {what} in the database URI is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// What the URL standard reads differently from libpq, read as libpq does.
    #[test]
    fn libpq_readings_where_the_url_standard_differs() {
        let o = ConnectOptions::from_uri("postgresql://u:p@/db?host=/run/pg").unwrap();
        assert_eq!(o.user.as_deref(), Some("u"));
        assert_eq!(o.password.as_ref().map(Secret::expose), Some("p"));
        assert_eq!(o.host.as_deref(), Some("/run/pg"));
        assert_eq!(o.dbname.as_deref(), Some("db"));
        let o = ConnectOptions::from_uri("postgresql://:5433/db").unwrap();
        assert_eq!((o.host, o.port), (None, Some(5433)));
        let o = ConnectOptions::from_uri("postgresql://u@").unwrap();
        assert_eq!((o.user.as_deref(), o.host), (Some("u"), None));
        let o =
            ConnectOptions::from_uri("postgresql://u:a#b\tc +d@h/d b?password=x+y%20z").unwrap();
        assert_eq!(o.password.as_ref().map(Secret::expose), Some("x+y z"));
        assert_eq!(o.dbname.as_deref(), Some("d b"));
        let o = ConnectOptions::from_uri("postgresql://u:a#b\tc +d@h/db ").unwrap();
        assert_eq!(o.password.as_ref().map(Secret::expose), Some("a#b\tc +d"));
        assert_eq!(o.dbname.as_deref(), Some("db "));
        let o = ConnectOptions::from_uri("postgresql://u:p@s:s@H%C3%A9/d%C3%A9").unwrap();
        assert_eq!(o.password.as_ref().map(Secret::expose), Some("p@s:s"));
        assert_eq!(o.host.as_deref(), Some("Hé"), "a host's case is kept");
        assert_eq!(o.dbname.as_deref(), Some("dé"));
        let o = ConnectOptions::from_uri("postgresql://h:/db?port=6000&sslmode=allow").unwrap();
        assert_eq!((o.port, o.ssl_mode), (Some(6000), SslMode::Prefer));
    }

    #[test]
    fn uri_errors_are_exact_and_never_quote_the_uri() {
        let ipv6 = "the IPv6 host in the database URI must be an IPv6 address in `[…]`, followed \
                    by nothing or by `:port`";
        let cases = [
            (
                "mysql://u:hunter2@h/db",
                "a database URI must start with `postgresql://` or `postgres://`",
            ),
            (
                "postgresql:u:hunter2@h/db",
                "a database URI must start with `postgresql://` or `postgres://`",
            ),
            (
                "postgresql://u:hunter2@h:99999/db",
                "the port in the database URI must be a number from 1 to 65535",
            ),
            (
                "postgresql://u:hunter2@h:0/db",
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
            ("postgresql://u:hunter2@[::1/db", ipv6),
            ("postgresql://u:hunter2@[::1]x/db", ipv6),
            (
                "postgresql://u:hunter2@h]/db",
                "the host in the database URI has a character that is not allowed there",
            ),
            (
                "postgresql://h/db?sslmode=hunter2",
                "`sslmode` in the database URI must be one of disable, allow, prefer, require, verify-ca, verify-full",
            ),
            (
                "postgresql://h/db?port=hunter2",
                "the port in the database URI must be a number from 1 to 65535",
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
            (
                "postgresql://u:hunter2@h1:1,h2:2/db",
                "a database URI with several hosts is not supported",
            ),
        ];
        for (uri, expected) in cases {
            let err = ConnectOptions::from_uri(uri).unwrap_err();
            assert_eq!(err, expected, "{uri}");
            assert!(!err.contains("hunter2") && !err.contains("hun"), "{uri}");
        }
    }

    proptest::proptest! {
        /// The fuzz target's property (`fuzz/fuzz_targets/database_uri.rs`) on URI-shaped text:
        /// no panic, and an error never quotes the secret wherever it lands.
        #[test]
        fn errors_never_quote_a_secret(
            scheme in "postgres(ql)?:(//)?",
            text in "[a-z0-9:/@?&=%,.\\[\\] +\t#<|-]{0,40}",
        ) {
            let uri = format!("{scheme}{}", text.replace('#', "ZQXJ"));
            if let Err(message) = ConnectOptions::from_uri(&uri) {
                proptest::prop_assert!(!message.contains("ZQXJ"), "{uri}: {message}");
            }
        }
    }
}
