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
//!
//! syn2mas does not link libpq, and tokio-postgres leaves all of this to its caller, so it is
//! here: the options and their environment and defaults in this file, the URI in [`uri`], the
//! password file in [`pgpass`], `sslmode` and the TLS connector in [`tls`].

use crate::secret::Secret;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};

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
        tls::open(&config, transport, side)
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
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(KEEPALIVE_INTERVAL)
            .keepalives_retries(KEEPALIVE_RETRIES);
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
/// `$USER`), else `postgres` if even that lookup fails. `whoami` (already used by tokio-postgres
/// for the same default) reads the password database for the effective uid, as libpq does.
fn default_user(env: &dyn Fn(&str) -> Option<String>) -> String {
    env("USER")
        .filter(|u| !u.is_empty())
        .or_else(|| whoami::username().ok())
        .unwrap_or_else(|| "postgres".to_owned())
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
    client.batch_execute(SERVER_KEEPALIVES).await?;
    Ok(client)
}

/// TCP keepalives on both ends of every connection: after 30 s of silence, a probe every 10 s,
/// 3 missed probes and the connection is dead (~60 s). The default (2 hours) let a half-open
/// connection — a migration host that vanished, a NAT that forgot the flow — keep its session,
/// its locks and the advisory lock on the server for hours; and syn2mas would wait as long for
/// an answer that cannot come.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// The server side of [`KEEPALIVE_IDLE`] and friends, for this session only (the server ignores
/// them on unix sockets, where there is no TCP).
const SERVER_KEEPALIVES: &str =
    "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3";

/// Every query syn2mas runs is one large scan, join or index build that runs once: LLVM's
/// compile time (0.7 s for the devices/tokens read, before its first row) is never won back,
/// and PostgreSQL's cost threshold switches it on exactly for those. A plain `SET` after
/// connecting rather than a startup option, which connection poolers may refuse; skipped on
/// servers without JIT.
const NO_JIT: &str =
    "SELECT set_config('jit', 'off', false) FROM pg_catalog.pg_settings WHERE name = 'jit'";

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

mod pgpass;
mod tls;
mod uri;

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    pub(super) fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
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
        let os = whoami::username().unwrap_or_else(|_| "postgres".into());
        assert_eq!(user, os);
        assert_eq!(dbname, os);
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
