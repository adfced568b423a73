//! Integration-test harness: throwaway PostgreSQL databases loaded with the project's fixtures
//! (or with the genuine Synapse / MAS schema dumps), the path of the built binary, and config
//! files pointing at those databases.
//!
//! Every `TestDb` is a uniquely named database on the server given by `PGHOST` / `PGPORT` /
//! `PGUSER` (defaults `127.0.0.1`, `5432`, `postgres`; `PGPASSWORD` is honoured), dropped again
//! when the value is dropped (in the background; `drop_now` waits), with `FORCE` so open
//! connections do not stop it. Set `SYN2MAS_KEEP_TEST_DBS=1` to keep them for debugging and
//! `SYN2MAS_HARNESS_TRACE=1` to see every psql call the harness makes.
//!
//! Loading is fast because each fixture is loaded only once into a *template* database, whose
//! name carries a hash of the SQL files' contents; tests then `CREATE DATABASE … TEMPLATE …`.
//! Templates are built under a temporary name and renamed when complete, so concurrent test
//! processes (several test binaries, several engineers) can share them safely. Templates never
//! accept connections (a template cannot be copied while someone is connected to it).
//!
//! `Schema::Anchor` loads the genuine dumps from `$SYN2MAS_ANCHOR_DIR` instead of the project's
//! own schema files; the data fixtures are the same for both.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Environment variable naming the folder with the genuine schema dumps.
pub const ANCHOR_ENV: &str = "SYN2MAS_ANCHOR_DIR";
/// File name of the genuine Synapse dump inside the anchor folder.
pub const ANCHOR_SYNAPSE_DUMP: &str = "synapse-1.163.2-schema.sql";
/// File name of the genuine MAS dump inside the anchor folder.
pub const ANCHOR_MAS_DUMP: &str = "mas-1.22.0-schema.sql";

pub const SYNAPSE_SCHEMA: &str = "fixtures/synapse/schema.sql";
pub const SYNAPSE_DATA: &str = "fixtures/synapse/data.sql";
pub const MAS_SCHEMA: &str = "fixtures/mas/schema.sql";
pub const MAS_PROVIDERS: &str = "fixtures/mas/providers.sql";
pub const SYNAPSE_CONFIG: &str = "fixtures/synapse/homeserver.yaml";
pub const MAS_CONFIG: &str = "fixtures/mas/config.yaml";

/// The server name every fixture uses.
pub const SERVER_NAME: &str = "example.com";
/// Synapse's pepper in the demo config = MAS's v1 scheme secret.
pub const PEPPER: &str = "demo-pepper";
/// The MAS upstream provider of the fixtures (`synapse_idp_id: oidc-google`).
pub const GOOGLE_PROVIDER_ULID: &str = "01H8PKNWKKRPCBW4YGH1RWV279";
/// The same provider id in UUID form, as stored in `upstream_oauth_providers`.
pub const GOOGLE_PROVIDER_UUID: &str = "018a2d3a-f273-c598-be13-d08871cd88e9";

/// Bump to invalidate every template built by an older harness.
const HARNESS_VERSION: &str = "1";

/// Which schema a test database is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schema {
    /// The project's own `fixtures/*/schema.sql`.
    Project,
    /// The genuine dumps from `$SYN2MAS_ANCHOR_DIR`.
    Anchor,
}

impl Schema {
    pub fn label(self) -> &'static str {
        match self {
            Schema::Project => "project",
            Schema::Anchor => "anchor",
        }
    }
}

impl std::fmt::Display for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The anchor folder, when `SYN2MAS_ANCHOR_DIR` is set (and non-empty). Panics when it is set but
/// does not hold both dumps: a test run that asked for the anchor must not silently skip it.
pub fn anchor_dir() -> Option<PathBuf> {
    let dir = std::env::var_os(ANCHOR_ENV).filter(|d| !d.is_empty())?;
    let dir = PathBuf::from(dir);
    for file in [ANCHOR_SYNAPSE_DUMP, ANCHOR_MAS_DUMP] {
        assert!(
            dir.join(file).is_file(),
            "{ANCHOR_ENV}={} does not contain {file}",
            dir.display()
        );
    }
    Some(dir)
}

/// `Project` always; `Anchor` too when `SYN2MAS_ANCHOR_DIR` points at a folder with the two dumps.
pub fn schemas() -> Vec<Schema> {
    let mut out = vec![Schema::Project];
    if anchor_dir().is_some() {
        out.push(Schema::Anchor);
    }
    out
}

/// The crate root (where Cargo.toml is).
pub fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path relative to the crate root, e.g. `fixture("fixtures/synapse/data.sql")`.
pub fn fixture(relative: &str) -> PathBuf {
    crate_root().join(relative)
}

/// The `syn2mas` binary Cargo built for this test run.
pub fn syn2mas_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_syn2mas"))
}

// ------------------------------------------------------------------------------------------------
// Server and psql plumbing
// ------------------------------------------------------------------------------------------------

/// Where the test databases live.
#[derive(Debug, Clone)]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
}

pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Server {
            host: var("PGHOST").unwrap_or_else(|| "127.0.0.1".into()),
            port: var("PGPORT")
                .map(|p| p.parse().expect("PGPORT must be a port number"))
                .unwrap_or(5432),
            user: var("PGUSER").unwrap_or_else(|| "postgres".into()),
            password: var("PGPASSWORD"),
        }
    })
}

/// A `psql` command connected to `db`, stopping at the first error, without reading ~/.psqlrc.
fn psql(db: &str) -> Command {
    let s = server();
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", &s.host])
        .args(["-p", &s.port.to_string(), "-U", &s.user, "-d", db])
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .stdin(Stdio::null());
    if let Some(pw) = &s.password {
        cmd.env("PGPASSWORD", pw);
    }
    cmd
}

fn run(mut cmd: Command) -> Result<Output, String> {
    let started = std::time::Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run psql (is the PostgreSQL client installed?): {e}"))?;
    if std::env::var_os("SYN2MAS_HARNESS_TRACE").is_some() {
        eprintln!(
            "[harness] {:?} took {:?}",
            cmd.get_args().collect::<Vec<_>>(),
            started.elapsed()
        );
    }
    if out.status.success() {
        Ok(out)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Run one SQL command on the maintenance database `postgres`.
fn admin(sql: &str) -> Result<String, String> {
    let mut cmd = psql("postgres");
    cmd.args(["-At", "-c", sql]);
    run(cmd).map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// Load one SQL file into `db` with psql (dumps contain `COPY … FROM stdin` blocks).
fn load_file(db: &str, file: &Path) -> Result<(), String> {
    if !file.is_file() {
        return Err(format!("fixture {} does not exist", file.display()));
    }
    let mut cmd = psql(db);
    cmd.arg("-f").arg(file);
    run(cmd)
        .map(|_| ())
        .map_err(|e| format!("loading {} into {db}: {e}", file.display()))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn random_hex() -> String {
    format!("{:08x}", getrandom::u32().expect("getrandom"))
}

/// Whether a database of that name exists on the test server.
pub fn database_exists(name: &str) -> bool {
    admin(&format!(
        "SELECT 1 FROM pg_database WHERE datname = '{}'",
        name.replace('\'', "''")
    ))
    .unwrap_or_else(|e| panic!("cannot query pg_database on {}: {e}", describe_server()))
        == "1"
}

fn describe_server() -> String {
    let s = server();
    format!("{}@{}:{}", s.user, s.host, s.port)
}

fn drop_sql(name: &str) -> String {
    format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name))
}

/// Drop a database, terminating any session still connected to it.
fn drop_database(name: &str) -> Result<(), String> {
    admin(&drop_sql(name)).map(|_| ())
}

/// Drop a template database (templates must be unmarked first).
fn drop_template(name: &str) -> Result<(), String> {
    let q = quote_ident(name);
    admin(&format!("ALTER DATABASE {q} WITH IS_TEMPLATE false"))?;
    admin(&format!("DROP DATABASE IF EXISTS {q}")).map(|_| ())
}

fn process_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `<prefix>_<pid>_<unix seconds>_…`: a database name that says which process made it and when.
fn owned_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{}_{}",
        std::process::id(),
        now_secs(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        random_hex()
    )
}

/// Once per process: drop test and build databases left behind by test processes that died
/// without running their destructors: the pid in the name is gone and the database is over an
/// hour old (the age guard protects processes of another PID namespace sharing the server).
fn sweep_leftovers() {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        if !Path::new("/proc/self").exists() {
            return;
        }
        let Ok(list) = admin(
            "SELECT datname FROM pg_database WHERE datname LIKE 's2m\\_t\\_%' OR datname LIKE 's2m\\_b\\_%'",
        ) else {
            return;
        };
        for name in list.lines() {
            let mut parts = name.split('_').skip(2);
            let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
            let created = parts.next().and_then(|t| t.parse::<u64>().ok());
            let (Some(pid), Some(created)) = (pid, created) else {
                continue;
            };
            if !process_alive(pid) && now_secs().saturating_sub(created) > 3600 {
                // A build database may already have been marked as template before its process died.
                let _ = admin(&format!(
                    "ALTER DATABASE {} WITH IS_TEMPLATE false",
                    quote_ident(name)
                ));
                let _ = drop_database(name);
            }
        }
    });
}

// ------------------------------------------------------------------------------------------------
// Templates
// ------------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Synapse,
    Mas,
}

/// One loadable fixture: which side, which schema, with or without the base data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FixtureKind {
    side: Side,
    schema: Schema,
    with_data: bool,
}

impl FixtureKind {
    fn files(self) -> Vec<PathBuf> {
        let schema_file = match (self.side, self.schema) {
            (Side::Synapse, Schema::Project) => fixture(SYNAPSE_SCHEMA),
            (Side::Mas, Schema::Project) => fixture(MAS_SCHEMA),
            (side, Schema::Anchor) => {
                let dir = anchor_dir().unwrap_or_else(|| {
                    panic!("Schema::Anchor requested but {ANCHOR_ENV} is not set")
                });
                dir.join(match side {
                    Side::Synapse => ANCHOR_SYNAPSE_DUMP,
                    Side::Mas => ANCHOR_MAS_DUMP,
                })
            }
        };
        let mut files = vec![schema_file];
        if self.with_data {
            files.push(fixture(match self.side {
                Side::Synapse => SYNAPSE_DATA,
                Side::Mas => MAS_PROVIDERS,
            }));
        }
        files
    }

    /// `s2m_tpl_<side>_<schema>_<data|empty>_` — the part of the template name before the hash.
    fn prefix(self) -> String {
        let side = match self.side {
            Side::Synapse => "synapse",
            Side::Mas => "mas",
        };
        let data = if self.with_data { "data" } else { "empty" };
        format!("s2m_tpl_{side}_{}_{data}_", self.schema.label())
    }

    /// Template name: prefix + hash of the harness version and every file's name and contents.
    fn template_name(self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(HARNESS_VERSION.as_bytes());
        for file in self.files() {
            let contents = std::fs::read(&file)
                .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", file.display()));
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update(&(contents.len() as u64).to_le_bytes());
            hasher.update(&contents);
        }
        let hash = hasher.finalize().to_hex();
        format!("{}{}", self.prefix(), &hash[..16])
    }
}

/// Per-template locks, so one process builds each template once while other fixtures build in
/// parallel. The bool records "known to exist".
fn template_lock(name: &str) -> Arc<Mutex<bool>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<Mutex<bool>>>>> = OnceLock::new();
    let mut map = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry(name.to_owned()).or_default().clone()
}

/// Make sure the template for `kind` exists (building it if needed) and return its name.
fn ensure_template(kind: FixtureKind, force_check: bool) -> String {
    sweep_leftovers();
    let name = kind.template_name();
    let lock = template_lock(&name);
    let mut ready = lock.lock().unwrap_or_else(|p| p.into_inner());
    if *ready && !force_check {
        return name;
    }
    if !database_exists(&name) {
        build_template(kind, &name);
    }
    *ready = true;
    name
}

/// Creates `db` from template0 in `encoding` (C collation) and loads the fixture's files; a
/// database whose load failed is dropped again.
fn create_loaded(db: &str, encoding: &str, kind: FixtureKind) -> Result<(), String> {
    admin(&format!(
        "CREATE DATABASE {} TEMPLATE template0 ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C'",
        quote_ident(db)
    ))
    .map_err(|e| format!("cannot create database {db} on {}: {e}", describe_server()))?;
    for file in kind.files() {
        if let Err(e) = load_file(db, &file) {
            let _ = drop_database(db);
            return Err(e);
        }
    }
    Ok(())
}

fn build_template(kind: FixtureKind, name: &str) {
    let build = owned_name("s2m_b");
    create_loaded(&build, "UTF8", kind).unwrap_or_else(|e| panic!("building template {name}: {e}"));

    let b = quote_ident(&build);
    admin(&format!(
        "ALTER DATABASE {b} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false"
    ))
    .unwrap_or_else(|e| panic!("cannot mark {build} as template: {e}"));
    match admin(&format!(
        "ALTER DATABASE {b} RENAME TO {}",
        quote_ident(name)
    )) {
        Ok(_) => remove_stale_templates(kind, name),
        // Another process finished the same template first: use theirs.
        Err(e) if e.contains("already exists") => {
            let _ = drop_template(&build);
        }
        Err(e) => {
            let _ = drop_template(&build);
            panic!("cannot rename {build} to {name}: {e}");
        }
    }
}

/// Drop templates of the same fixture built from older file contents.
fn remove_stale_templates(kind: FixtureKind, current: &str) {
    let prefix = kind.prefix().replace('_', "\\_");
    let Ok(list) = admin(&format!(
        "SELECT datname FROM pg_database WHERE datname LIKE '{prefix}%'"
    )) else {
        return;
    };
    for old in list.lines().filter(|n| *n != current) {
        let _ = drop_template(old);
    }
}

// ------------------------------------------------------------------------------------------------
// TestDb
// ------------------------------------------------------------------------------------------------

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A throwaway database, dropped (with `FORCE`) when this value is dropped.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    pub schema: Schema,
}

impl TestDb {
    /// Synapse schema + `fixtures/synapse/data.sql`.
    pub async fn synapse(schema: Schema) -> TestDb {
        Self::synapse_with(schema, &[]).await
    }

    /// Synapse schema + `fixtures/synapse/data.sql` + the given SQL files (paths relative to the
    /// crate root, e.g. `"fixtures/synapse/bad/null_name.sql"`), loaded in order.
    pub async fn synapse_with(schema: Schema, extra: &[&str]) -> TestDb {
        let extra = extra.iter().map(|p| fixture(p)).collect();
        Self::spawn(
            FixtureKind {
                side: Side::Synapse,
                schema,
                with_data: true,
            },
            extra,
        )
        .await
    }

    /// Synapse schema only (with its version bookkeeping rows).
    pub async fn synapse_empty(schema: Schema) -> TestDb {
        Self::spawn(
            FixtureKind {
                side: Side::Synapse,
                schema,
                with_data: false,
            },
            vec![],
        )
        .await
    }

    /// MAS schema (all 167 migrations recorded) + `fixtures/mas/providers.sql`.
    pub async fn mas(schema: Schema) -> TestDb {
        Self::spawn(
            FixtureKind {
                side: Side::Mas,
                schema,
                with_data: true,
            },
            vec![],
        )
        .await
    }

    /// MAS schema only (no provider row).
    pub async fn mas_empty(schema: Schema) -> TestDb {
        Self::spawn(
            FixtureKind {
                side: Side::Mas,
                schema,
                with_data: false,
            },
            vec![],
        )
        .await
    }

    /// Synapse schema + `fixtures/synapse/data.sql` in a database of another `encoding` (such
    /// as `SQL_ASCII`), built from template0 since a template cannot change encoding.
    pub async fn synapse_encoded(schema: Schema, encoding: &'static str) -> TestDb {
        let kind = FixtureKind {
            side: Side::Synapse,
            schema,
            with_data: true,
        };
        blocking(move || {
            let name = owned_name("s2m_t");
            create_loaded(&name, encoding, kind).unwrap_or_else(|e| panic!("{e}"));
            TestDb { name, schema }
        })
        .await
    }

    async fn spawn(kind: FixtureKind, extra: Vec<PathBuf>) -> TestDb {
        blocking(move || Self::create_blocking(kind, &extra)).await
    }

    fn create_blocking(kind: FixtureKind, extra: &[PathBuf]) -> TestDb {
        let name = owned_name("s2m_t");
        let mut template = ensure_template(kind, false);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let sql = format!(
                "CREATE DATABASE {} TEMPLATE {}",
                quote_ident(&name),
                quote_ident(&template)
            );
            match admin(&sql) {
                Ok(_) => break,
                Err(e) if attempt < 100 && e.contains("is being accessed by other users") => {
                    std::thread::sleep(Duration::from_millis(50 + 10 * u64::from(attempt)));
                }
                // Dropped by a concurrent process that had newer fixture contents: rebuild ours.
                Err(e) if attempt < 5 && e.contains("does not exist") => {
                    template = ensure_template(kind, true);
                }
                Err(e) => panic!("cannot create {name} from {template}: {e}"),
            }
        }
        let db = TestDb {
            name,
            schema: kind.schema,
        };
        for file in extra {
            if let Err(e) = load_file(&db.name, file) {
                panic!("{e}");
            }
        }
        db
    }

    /// `postgresql://user@host:port/name` (a unix-socket host is percent-encoded).
    pub fn uri(&self) -> String {
        let s = server();
        let host = if s.host.starts_with('/') {
            s.host.replace('%', "%25").replace('/', "%2F")
        } else if s.host.contains(':') {
            format!("[{}]", s.host)
        } else {
            s.host.clone()
        };
        format!("postgresql://{}@{}:{}/{}", s.user, host, s.port, self.name)
    }

    /// A new connection to this database (its connection task runs on the current runtime).
    ///
    /// A client kept open on a Synapse database while `migrate` runs is an "other session"
    /// that makes it refuse (a running Synapse): drop it first, or use `exec`/`count`, which
    /// close their connection before returning.
    pub async fn client(&self) -> tokio_postgres::Client {
        self.connect().await.0
    }

    /// A new connection and its connection task, which ends once the client is dropped and
    /// the connection closed.
    async fn connect(&self) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
        let s = server();
        let mut config = tokio_postgres::Config::new();
        config
            .host(&s.host)
            .port(s.port)
            .user(&s.user)
            .dbname(&self.name)
            .application_name("syn2mas-tests");
        if let Some(pw) = &s.password {
            config.password(pw);
        }
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {}", self.name, pg_error(&e)));
        let task = tokio::spawn(async move {
            // Ends with an error when the database is dropped WITH (FORCE); nothing to report.
            let _ = connection.await;
        });
        (client, task)
    }

    /// Run SQL (several statements allowed); panics with the database's error message. The
    /// connection is closed when it returns.
    pub async fn exec(&self, sql: &str) {
        let (client, task) = self.connect().await;
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("SQL failed on {}: {}\n{sql}", self.name, pg_error(&e)));
        drop(client);
        let _ = task.await;
    }

    /// Load one more SQL file (path relative to the crate root) with psql.
    pub async fn load(&self, relative: &str) {
        let name = self.name.clone();
        let file = fixture(relative);
        blocking(move || load_file(&name, &file).unwrap_or_else(|e| panic!("{e}"))).await
    }

    /// `SELECT count(*) FROM <table>`. The connection is closed when it returns.
    pub async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {table}");
        let (client, task) = self.connect().await;
        let n = client
            .query_one(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql} on {}: {}", self.name, pg_error(&e)))
            .get(0);
        drop(client);
        let _ = task.await;
        n
    }

    /// What syn2mas left in this (MAS) database: its shadow schema (`schema syn2mas_shadow`)
    /// and the tables in it, and shadow tables of earlier builds (`syn2mas_new_*`) anywhere,
    /// schema-qualified.
    pub async fn leftovers(&self) -> Vec<String> {
        self.client()
            .await
            .query(LEFTOVERS, &[])
            .await
            .unwrap_or_else(|e| panic!("listing leftovers on {}: {}", self.name, pg_error(&e)))
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// A fingerprint of the whole database except the schemas in `except`: every row of every
    /// table and sequence in every schema, and the catalogue (schemas, relations with owners,
    /// options and grants, columns, defaults, indexes, constraints, triggers, rules, policies,
    /// functions, comments, default privileges, extensions, the database's own grants). Two
    /// equal fingerprints mean nothing a client can see differs. Returned as lines so a
    /// failing comparison can show the difference.
    pub async fn fingerprint(&self, except: &[&str]) -> Vec<String> {
        let client = self.client().await;
        let except: Vec<String> = except.iter().map(|s| (*s).to_owned()).collect();
        let mut lines: Vec<String> = client
            .query(FINGERPRINT_CATALOGUE, &[&except])
            .await
            .unwrap_or_else(|e| panic!("fingerprint of {}: {}", self.name, pg_error(&e)))
            .iter()
            .map(|r| r.get(0))
            .collect();
        let relations: Vec<String> = client
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind IN ('r', 'p', 'S', 'm')
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                    AND n.nspname NOT LIKE 'pg\\_toast%' AND NOT n.nspname = ANY($1)
                  ORDER BY 1",
                &[&except],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for rel in relations {
            let sql = format!(
                "SELECT count(*)::text || ' ' || coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '') FROM {rel} x"
            );
            let digest: String = client
                .query_one(&sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {}", pg_error(&e)))
                .get(0);
            lines.push(format!("rows {rel} {digest}"));
        }
        lines
    }

    /// Drop the database and wait until it is gone (plain `drop` only starts the drop).
    pub fn drop_now(mut self) {
        let name = std::mem::take(&mut self.name);
        drop_database(&name).unwrap_or_else(|e| panic!("cannot drop {name}: {e}"));
    }

    /// Whether this database still exists on the server.
    pub fn exists(&self) -> bool {
        database_exists(&self.name)
    }
}

impl Drop for TestDb {
    /// Starts `DROP DATABASE … WITH (FORCE)` in a background psql and returns at once: on
    /// PostgreSQL 15 every DROP DATABASE forces an immediate checkpoint, which takes seconds while
    /// other tests are writing, and concurrent drops share those checkpoints. Databases whose drop
    /// never ran (killed test process) are removed by the next harness run (`sweep_leftovers`).
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        if std::env::var_os("SYN2MAS_KEEP_TEST_DBS").is_some() {
            eprintln!("keeping test database {}", self.name);
            return;
        }
        let mut cmd = psql("postgres");
        cmd.args(["-c", &drop_sql(&self.name)])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match cmd.spawn() {
            // Reap it from a detached thread; if this process exits first, psql carries on.
            Ok(mut child) => {
                std::thread::spawn(move || child.wait());
            }
            Err(e) => eprintln!("warning: could not drop test database {}: {e}", self.name),
        }
    }
}

/// Run blocking harness work off the async runtime, re-raising its panic unchanged.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("harness task failed: {e}"),
    }
}

/// A tokio-postgres error with the server's message, detail and hint when there is one.
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut msg = format!("{}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                msg.push_str(&format!(" (detail: {detail})"));
            }
            if let Some(hint) = db.hint() {
                msg.push_str(&format!(" (hint: {hint})"));
            }
            msg
        }
        None => e.to_string(),
    }
}

// ------------------------------------------------------------------------------------------------
// Config files
// ------------------------------------------------------------------------------------------------

/// Write `homeserver.yaml` and `mas.yaml` into `dir`: the demo configs
/// (`fixtures/synapse/homeserver.yaml`, `fixtures/mas/config.yaml`) with their databases replaced
/// by `synapse` and `mas` on the test server. Returns `(homeserver_yaml, mas_yaml)`.
pub fn write_configs(dir: &Path, synapse: &TestDb, mas: &TestDb) -> (PathBuf, PathBuf) {
    use serde_norway::Value;

    let read = |rel: &str| -> Value {
        let text = std::fs::read_to_string(fixture(rel))
            .unwrap_or_else(|e| panic!("cannot read {rel}: {e}"));
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
    };
    let s = server();

    let mut homeserver = read(SYNAPSE_CONFIG);
    let args = &mut homeserver["database"]["args"];
    args["host"] = Value::from(s.host.clone());
    args["port"] = Value::from(u64::from(s.port));
    args["user"] = Value::from(s.user.clone());
    args["dbname"] = Value::from(synapse.name.clone());
    if let Some(pw) = &s.password {
        args["password"] = Value::from(pw.clone());
    }

    // A password, if any, reaches the MAS side through the inherited PGPASSWORD (libpq rules).
    let mut mas_config = read(MAS_CONFIG);
    mas_config["database"]["uri"] = Value::from(mas.uri());

    let write = |name: &str, value: &Value| -> PathBuf {
        let path = dir.join(name);
        let text = serde_norway::to_string(value).expect("serialise YAML");
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    };
    (
        write("homeserver.yaml", &homeserver),
        write("mas.yaml", &mas_config),
    )
}

/// Differences between `check --json`'s plan and what `migrate --json` did: per Synapse table
/// the rows read, migrated and skipped by each reason, and the rows of every MAS table. Empty
/// when the plan is exactly the migration.
pub fn plan_differences(check: &serde_json::Value, migrate: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let plan = &check["plan"];
    let done = &migrate["migrate"];
    let Some(entities) = done["entities"].as_array() else {
        return vec![format!("migrate reported no entities: {done}")];
    };
    for e in entities {
        let name = e["entity"].as_str().unwrap_or("?");
        let planned = plan["entities"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["entity"] == e["entity"]))
            .cloned()
            .unwrap_or_default();
        let pairs = [
            ("read", &planned["read"], &e["read"]),
            ("migrated", &planned["migrate"], &e["migrated"]),
            ("skipped", &planned["skip"], &e["skipped"]),
        ];
        for (what, p, m) in pairs {
            if p != m {
                out.push(format!("{name} {what}: planned {p}, migrate {m}"));
            }
        }
    }
    let planned_rows = &plan["mas_rows"];
    for t in syn2mas::sink::tables::NAMES {
        let (p, m) = (&planned_rows[t], &done["mas_rows"][t]);
        if p.as_u64().unwrap_or(0) != m.as_u64().unwrap_or(0) {
            out.push(format!("MAS {t}: planned {p}, migrate {m}"));
        }
    }
    out
}

/// A Synapse and a MAS test database with config files pointing at them, in a temporary
/// folder that lives as long as the value. Each test file adds its own ways to run syn2mas on
/// it (`impl Fixture` in the file, usually under the name `Env`).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub synapse: TestDb,
    pub mas: TestDb,
    pub homeserver: PathBuf,
    pub mas_config: PathBuf,
}

impl Fixture {
    /// Writes `homeserver.yaml` and `mas.yaml` for the two databases.
    pub fn of(synapse: TestDb, mas: TestDb) -> Fixture {
        let dir = tempfile::tempdir().expect("temporary folder");
        let (homeserver, mas_config) = write_configs(dir.path(), &synapse, &mas);
        Fixture {
            dir,
            synapse,
            mas,
            homeserver,
            mas_config,
        }
    }

    /// The built `syn2mas` with both config files, then `args`, and no test pause.
    pub fn syn2mas(&self, args: &[&str]) -> Command {
        let mut c = Command::new(syn2mas_bin());
        c.arg("-c")
            .arg(&self.mas_config)
            .arg("--synapse-config")
            .arg(&self.homeserver)
            .args(args)
            .env_remove("SYN2MAS_TEST_PAUSE");
        c
    }
}

/// See `TestDb::leftovers`.
const LEFTOVERS: &str = r"
SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname = 'syn2mas_shadow'
UNION ALL
SELECT format('%s.%s', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind = 'r' AND (n.nspname = 'syn2mas_shadow' OR c.relname LIKE 'syn2mas\_new\_%')
ORDER BY 1";

/// The catalogue part of `TestDb::fingerprint`: one line per object, by name (never by oid,
/// except where PostgreSQL's own generated names carry one, such as RI trigger names, which is
/// stricter still), for every schema but the system ones and those in `$1`.
const FINGERPRINT_CATALOGUE: &str = r"
WITH ns AS (
  SELECT oid, nspname FROM pg_namespace
   WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\_toast%'
     AND nspname NOT LIKE 'pg\_temp%' AND NOT nspname = ANY($1::text[])
)
SELECT line FROM (
  SELECT 'database acl=' || coalesce(datacl::text, '') || ' owner=' || pg_get_userbyid(datdba) AS line
    FROM pg_database WHERE datname = current_database()
  UNION ALL
  SELECT 'schema ' || nspname || ' owner=' || pg_get_userbyid(n.nspowner) || ' acl=' || coalesce(n.nspacl::text, '')
         || ' comment=' || coalesce(obj_description(n.oid, 'pg_namespace'), '')
    FROM pg_namespace n JOIN ns USING (oid, nspname)
  UNION ALL
  SELECT 'rel ' || ns.nspname || '.' || c.relname || ' kind=' || c.relkind::text || ' owner=' || pg_get_userbyid(c.relowner)
         || ' persistence=' || c.relpersistence::text || ' opts=' || coalesce(array_to_string(c.reloptions, ','), '')
         || ' acl=' || coalesce(c.relacl::text, '') || ' rowsecurity=' || c.relrowsecurity
         || ' comment=' || coalesce(obj_description(c.oid, 'pg_class'), '')
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
  UNION ALL
  SELECT 'col ' || ns.nspname || '.' || c.relname || ' ' || a.attnum || ' ' || a.attname || ' '
         || format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull
         || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' identity=' || a.attidentity::text
         || ' generated=' || a.attgenerated::text || ' dropped=' || a.attisdropped || ' storage=' || a.attstorage::text
         || ' acl=' || coalesce(a.attacl::text, '')
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN ns ON ns.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
   WHERE a.attnum > 0
  UNION ALL
  SELECT 'idx ' || schemaname || '.' || tablename || ' ' || indexdef FROM pg_indexes
   WHERE schemaname IN (SELECT nspname FROM ns)
  UNION ALL
  SELECT 'con ' || ns.nspname || ' ' || k.conrelid::regclass::text || ' ' || k.conname || ' '
         || pg_get_constraintdef(k.oid) || ' validated=' || k.convalidated
    FROM pg_constraint k JOIN ns ON ns.oid = k.connamespace
  UNION ALL
  SELECT 'trigger ' || t.tgrelid::regclass::text || ' ' || t.tgname || ' ' || t.tgfoid::regprocedure::text
         || ' enabled=' || t.tgenabled::text || ' internal=' || t.tgisinternal
         || ' constraint=' || coalesce(t.tgconstrrelid::regclass::text, '')
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN ns ON ns.oid = c.relnamespace
  UNION ALL
  SELECT 'rule ' || schemaname || '.' || tablename || ' ' || rulename || ' ' || definition FROM pg_rules
   WHERE schemaname IN (SELECT nspname FROM ns)
  UNION ALL
  SELECT 'view ' || schemaname || '.' || viewname || ' ' || definition FROM pg_views
   WHERE schemaname IN (SELECT nspname FROM ns)
  UNION ALL
  SELECT 'policy ' || schemaname || '.' || tablename || ' ' || policyname || ' ' || coalesce(qual, '')
    FROM pg_policies WHERE schemaname IN (SELECT nspname FROM ns)
  UNION ALL
  SELECT 'function ' || p.oid::regprocedure::text || ' owner=' || pg_get_userbyid(p.proowner)
         || ' acl=' || coalesce(p.proacl::text, '') || ' ' || md5(coalesce(p.prosrc, ''))
    FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
  UNION ALL
  SELECT 'type ' || ns.nspname || '.' || t.typname || ' ' || t.typtype::text
    FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
  UNION ALL
  SELECT 'default-acl ' || pg_get_userbyid(d.defaclrole) || ' ' || coalesce(d.defaclnamespace::regnamespace::text, '')
         || ' ' || d.defaclobjtype::text || ' ' || d.defaclacl::text
    FROM pg_default_acl d
  UNION ALL
  SELECT 'extension ' || extname || ' ' || extversion FROM pg_extension
) all_lines
ORDER BY line";
