//! Hostile and broken input, end to end through the real binary: every case asserts the exit
//! code, the message that names the problem, that nothing panicked, and that MAS was not
//! changed (no row in any target table, no shadow schema or table left behind).
//!
//! * configuration: missing, unreadable, empty, syntactically broken, wrongly typed files,
//!   unknown drivers, YAML bombs, secret files that never end;
//! * databases: unreachable, nonexistent, not Synapse / not MAS, MAS not empty or at an
//!   unknown schema version, Synapse schema too old;
//! * concurrency: a second run, a Synapse that still writes, Ctrl-C;
//! * identifiers: server names and provider ids full of SQL metacharacters are data, never
//!   SQL.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Schema, TestDb, syn2mas_bin};
use serde_norway::Value;

/// A fixed "now" so runs are reproducible (2026-01-01T00:00:00Z).
const NOW_MS: &str = "1767225600000";

/// `mas-cli syn2mas`'s advisory lock key, which syn2mas takes too.
const UPSTREAM_LOCK: i64 = 6_584_285_998_412_104_315;

const TARGETS: [&str; 8] = syn2mas::sink::tables::NAMES;

/// The outcome of one run of the binary.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Out {
    fn from(out: std::process::Output, took: Duration) -> Out {
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took,
        }
    }

    /// Exit code `code`, `needle` in stderr, and no panic.
    #[track_caller]
    fn expect(&self, code: i32, needle: &str) -> &Self {
        assert!(
            !self.stderr.contains("panicked") && self.code != Some(101),
            "syn2mas panicked:\n{}",
            self.stderr
        );
        assert_eq!(
            self.code,
            Some(code),
            "exit code (wanted {code})\nstderr:\n{}\nstdout:\n{}",
            self.stderr,
            self.stdout
        );
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }
}

/// A Synapse and a MAS test database with config files pointing at them.
use common::Fixture as Env;

impl Env {
    async fn new() -> Env {
        Env::with(
            TestDb::synapse(Schema::Project).await,
            TestDb::mas(Schema::Project).await,
        )
    }

    fn with(synapse: TestDb, mas: TestDb) -> Env {
        Env::of(synapse, mas)
    }

    /// The binary with only the environment set, no config flags.
    fn bare(&self) -> Command {
        let mut c = Command::new(syn2mas_bin());
        c.env("SYN2MAS_TEST_NOW_MS", NOW_MS)
            .env_remove("SYN2MAS_TEST_PAUSE")
            .env_remove("MAS_CONFIG")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    /// The binary with both config files.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = self.bare();
        c.arg("-c")
            .arg(&self.mas_config)
            .arg("--synapse-config")
            .arg(&self.homeserver)
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        run(self.command(args))
    }

    /// A file in the temp dir.
    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Rewrites a config file through a closure on its YAML tree.
    fn edit(&self, path: &Path, f: impl FnOnce(&mut Value)) {
        let mut v: Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(path, serde_norway::to_string(&v).unwrap()).unwrap();
    }

    async fn counts(&self) -> Vec<i64> {
        let client = self.mas.client().await;
        let mut out = Vec::new();
        for t in TARGETS {
            let sql = format!("SELECT count(*) FROM {t}");
            out.push(client.query_one(&sql, &[]).await.unwrap().get(0));
        }
        out
    }

    async fn shadow_tables(&self) -> Vec<String> {
        self.mas.leftovers().await
    }

    async fn assert_untouched(&self, case: &str) {
        assert_eq!(self.counts().await, vec![0; 8], "{case}: MAS rows");
        assert!(
            self.shadow_tables().await.is_empty(),
            "{case}: shadow tables left"
        );
    }
}

fn run(mut c: Command) -> Out {
    let start = Instant::now();
    let out = c.output().expect("run syn2mas");
    Out::from(out, start.elapsed())
}

/// Runs `c`, killing it after `limit`; `None` if it had to be killed.
fn run_with_limit(mut c: Command, limit: Duration) -> Option<Out> {
    let start = Instant::now();
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn syn2mas");
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(Out::from(
                child.wait_with_output().unwrap(),
                start.elapsed(),
            ));
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

// ------------------------------------------------------------------------------------------------
// Configuration files
// ------------------------------------------------------------------------------------------------

/// One configuration case: which file to replace with what, the exit code and the message.
struct ConfigCase {
    name: &'static str,
    /// `Some(text)`: the Synapse config is replaced by this text.
    synapse: Option<&'static str>,
    /// `Some(text)`: the MAS config is replaced by this text.
    mas: Option<&'static str>,
    code: i32,
    /// Expected in stderr; `{synapse}` / `{mas}` stand for the config files' paths.
    message: &'static str,
}

const CONFIG_CASES: &[ConfigCase] = &[
    ConfigCase {
        name: "empty Synapse config",
        synapse: Some(""),
        mas: None,
        code: 1,
        message: "Error: `server_name` is required but is not set in {synapse}",
    },
    ConfigCase {
        name: "Synapse config of comments only",
        synapse: Some("# nothing here\n"),
        mas: None,
        code: 1,
        message: "Error: `server_name` is required but is not set in {synapse}",
    },
    ConfigCase {
        name: "Synapse YAML syntax error",
        synapse: Some("server_name: example.com\ndatabase:\n  name: psycopg2\n   args: {}\n"),
        mas: None,
        code: 1,
        message: "Error: {synapse}: YAML syntax error at line 4, column 8: ",
    },
    ConfigCase {
        name: "MAS YAML syntax error (unclosed quote)",
        synapse: None,
        mas: Some("matrix:\n  homeserver: \"example.com\n"),
        code: 1,
        message: "Error: {mas}: YAML syntax error at line 3, column 1: found unexpected end of stream, while scanning a quoted scalar at line 2 column 15",
    },
    ConfigCase {
        name: "Synapse top level is a list",
        synapse: Some("- server_name\n- example.com\n"),
        mas: None,
        code: 1,
        message: "Error: {synapse}: `(top level)`: expected a mapping of configuration keys",
    },
    ConfigCase {
        name: "Synapse server_name of the wrong type",
        synapse: Some("server_name: [example.com]\n"),
        mas: None,
        code: 1,
        message: "Error: {synapse}: `server_name`: expected a string, found a sequence",
    },
    ConfigCase {
        name: "Synapse boolean that is not one",
        synapse: Some("server_name: example.com\nallow_guest_access: sometimes\n"),
        mas: None,
        code: 1,
        message: "Error: {synapse}: `allow_guest_access`: expected a boolean, found a string",
    },
    ConfigCase {
        name: "Synapse database port out of range",
        synapse: Some(
            "server_name: example.com\ndatabase:\n  name: psycopg2\n  args: {port: 70000}\n",
        ),
        mas: None,
        code: 1,
        message: "Error: {synapse}: `database.args.port`: expected an integer from 0 to 65535",
    },
    ConfigCase {
        name: "unknown database driver",
        synapse: Some("server_name: example.com\ndatabase:\n  name: mysql\n"),
        mas: None,
        code: 1,
        message: "Error: {synapse}: `database.name`: syn2mas does not support the `mysql` database driver; Synapse's database must be PostgreSQL (`psycopg2`)",
    },
    ConfigCase {
        name: "SQLite Synapse",
        synapse: Some(
            "server_name: example.com\ndatabase:\n  name: sqlite3\n  args: {database: /data/homeserver.db}\n",
        ),
        mas: None,
        code: 1,
        message: "Error: {synapse}: `database.name`: this Synapse uses SQLite (`sqlite3`), which syn2mas cannot read",
    },
    ConfigCase {
        name: "MAS boolean written as a string",
        synapse: None,
        mas: Some("passwords:\n  enabled: \"yes\"\n"),
        code: 1,
        message: "Error: {mas}: `passwords.enabled`: expected a boolean, found a string",
    },
    ConfigCase {
        name: "MAS provider id that is not a ULID",
        synapse: None,
        mas: Some("upstream_oauth2:\n  providers:\n    - id: \"'; DROP TABLE users; --\"\n"),
        code: 1,
        message: "Error: {mas}: `upstream_oauth2.providers[0].id`: `'; DROP TABLE users; --` is not a valid ULID",
    },
    ConfigCase {
        name: "MAS database uri and split options together",
        synapse: None,
        mas: Some("database:\n  uri: postgresql://localhost/mas\n  host: localhost\n"),
        code: 1,
        message: "Error: {mas}: `database`: `uri` must not be set together with `host`",
    },
    ConfigCase {
        name: "MAS database uri of another scheme",
        synapse: None,
        mas: Some("database:\n  uri: \"mysql://root@localhost/mas\"\n"),
        code: 1,
        message: "Error: {mas}: `database.uri`: a database URI must start with `postgresql://` or `postgres://`",
    },
    ConfigCase {
        name: "YAML bomb (nested aliases)",
        synapse: Some(
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n\
             b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
             c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n\
             d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
             e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n\
             f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
             g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n\
             h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]\n\
             i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]\n\
             server_name: example.com\n",
        ),
        mas: None,
        code: 1,
        message: "Error: {synapse}: YAML error: repetition limit exceeded",
    },
];

/// Replaces `{synapse}` / `{mas}` by the paths.
fn expand(message: &str, synapse: &Path, mas: &Path) -> String {
    message
        .replace("{synapse}", &synapse.display().to_string())
        .replace("{mas}", &mas.display().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_config_files_are_named_with_key_and_position() {
    let env = Env::new().await;
    for case in CONFIG_CASES {
        let synapse = match case.synapse {
            Some(text) => env.write("case-homeserver.yaml", text),
            None => env.homeserver.clone(),
        };
        let mas = match case.mas {
            Some(text) => env.write("case-mas.yaml", text),
            None => env.mas_config.clone(),
        };
        for sub in [&["check"][..], &["migrate", "--allow-warnings"][..]] {
            let mut c = env.bare();
            c.arg("-c")
                .arg(&mas)
                .arg("--synapse-config")
                .arg(&synapse)
                .args(sub);
            let out = run_with_limit(c, Duration::from_secs(30))
                .unwrap_or_else(|| panic!("{}: syn2mas hung", case.name));
            assert!(
                out.took < Duration::from_secs(10),
                "{}: took {:?}",
                case.name,
                out.took
            );
            out.expect(case.code, &expand(case.message, &synapse, &mas));
            env.assert_untouched(case.name).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_unreadable_and_absent_config_files() {
    let env = Env::new().await;
    let missing = env.dir.path().join("missing-homeserver.yaml");
    let missing_mas = env.dir.path().join("missing-mas.yaml");

    // No Synapse config at all.
    let mut c = env.bare();
    c.arg("-c").arg(&env.mas_config).arg("check");
    run(c).expect(
        1,
        "Error: Please specify the path to the Synapse configuration file(s) with --synapse-config.",
    );

    // A Synapse config that does not exist.
    let mut c = env.bare();
    c.arg("-c")
        .arg(&env.mas_config)
        .arg("--synapse-config")
        .arg(&missing)
        .args(["migrate", "--allow-warnings"]);
    run(c).expect(
        1,
        &format!(
            "Error: cannot read {}: No such file or directory (os error 2)",
            missing.display()
        ),
    );

    // A MAS config that does not exist.
    let mut c = env.bare();
    c.arg("-c")
        .arg(&missing_mas)
        .arg("--synapse-config")
        .arg(&env.homeserver)
        .arg("check");
    run(c).expect(
        1,
        &format!(
            "Error: cannot read {}: No such file or directory (os error 2)",
            missing_mas.display()
        ),
    );

    // No -c and no $MAS_CONFIG: `config.yaml` in the working directory, which is not there.
    let mut c = env.bare();
    c.arg("--synapse-config").arg(&env.homeserver).arg("check");
    run(c).expect(
        1,
        "Error: cannot read config.yaml: No such file or directory (os error 2)",
    );

    // A directory where a file is expected.
    let mut c = env.bare();
    c.arg("-c")
        .arg(&env.mas_config)
        .arg("--synapse-config")
        .arg(env.dir.path())
        .arg("check");
    run(c).expect(
        1,
        &format!(
            "Error: cannot read {}: Is a directory (os error 21)",
            env.dir.path().display()
        ),
    );

    // A file without read permission. Tests usually run as root, whom chmod does not stop:
    // then the file is read like any other and check runs (the fixture's warnings: exit 11).
    let locked = env.write(
        "locked-homeserver.yaml",
        std::fs::read(&env.homeserver).unwrap(),
    );
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let mut c = env.bare();
    c.arg("-c")
        .arg(&env.mas_config)
        .arg("--synapse-config")
        .arg(&locked)
        .arg("check");
    let out = run(c);
    if is_root() {
        out.expect(11, "W-guests");
    } else {
        out.expect(
            1,
            &format!(
                "Error: cannot read {}: Permission denied (os error 13)",
                locked.display()
            ),
        );
    }

    // Not UTF-8.
    let binary = env.write("binary.yaml", b"server_name: \xff\xfe\x00example\n");
    let mut c = env.bare();
    c.arg("-c")
        .arg(&env.mas_config)
        .arg("--synapse-config")
        .arg(&binary)
        .arg("check");
    run(c).expect(
        1,
        &format!(
            "Error: cannot read {}: stream did not contain valid UTF-8",
            binary.display()
        ),
    );
    env.assert_untouched("missing/unreadable files").await;
}

/// An empty MAS config means "everything from libpq's environment", as for MAS itself: with
/// the environment pointing nowhere, the connection error names where it tried.
#[tokio::test(flavor = "multi_thread")]
async fn empty_mas_config_falls_back_to_the_libpq_environment() {
    let env = Env::new().await;
    let empty = env.write("empty-mas.yaml", "");
    let mut c = env.bare();
    c.arg("-c")
        .arg(&empty)
        .arg("--synapse-config")
        .arg(&env.homeserver)
        .arg("check")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", "1")
        .env("PGUSER", "s2m_user")
        .env("PGDATABASE", "s2m_db");
    run(c).expect(
        1,
        "Error: cannot connect to the MAS database (host=127.0.0.1 port=1 dbname=s2m_db user=s2m_user): error connecting to server: Connection refused (os error 111)",
    );
    env.assert_untouched("empty MAS config").await;
}

/// Files named inside a config are values from a config file too: one that never ends
/// (`/dev/zero`) must be refused, not read until memory runs out.
#[tokio::test(flavor = "multi_thread")]
async fn endless_files_named_in_the_config_are_refused() {
    let env = Env::new().await;
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit); 3] = [
        ("passwords.schemes[0].secret_file", |v| {
            v["passwords"]["schemes"][0]["secret"] = Value::Null;
            v["passwords"]["schemes"][0]["secret_file"] = Value::from("/dev/zero");
        }),
        ("database.password_file", |v| {
            v["database"] = serde_norway::from_str(
                "{host: 127.0.0.1, port: 1, username: postgres, password_file: /dev/zero}",
            )
            .unwrap();
        }),
        ("database.ssl_ca_file", |v| {
            v["database"] = serde_norway::from_str(
                "{host: 127.0.0.1, port: 1, ssl_mode: verify-full, ssl_ca_file: /dev/zero}",
            )
            .unwrap();
        }),
    ];
    for (key, edit) in cases {
        let mas = env.write("endless-mas.yaml", std::fs::read(&env.mas_config).unwrap());
        env.edit(&mas, edit);
        let mut c = env.bare();
        c.arg("-c")
            .arg(&mas)
            .arg("--synapse-config")
            .arg(&env.homeserver)
            .arg("check");
        let out = run_with_limit(c, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{key} = /dev/zero: syn2mas was still reading after 20 s"));
        out.expect(1, "/dev/zero: larger than 16 MiB");
        env.assert_untouched(key).await;
    }
}

// ------------------------------------------------------------------------------------------------
// Databases
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_and_nonexistent_databases() {
    let env = Env::new().await;
    let s = common::server();

    // Nothing listens on port 1.
    for (flag, side) in [
        ("--synapse-database-uri", "Synapse"),
        ("--mas-database-uri", "MAS"),
    ] {
        let out = env.run(&[flag, "postgresql://postgres@127.0.0.1:1/x", "check"]);
        out.expect(
            1,
            &format!(
                "Error: cannot connect to the {side} database (host=127.0.0.1 port=1 dbname=x user=postgres): error connecting to server: Connection refused (os error 111)"
            ),
        );
    }

    // The local server trusts every connection from 127.0.0.1 and ignores passwords, so a
    // wrong password cannot be shown here; a database and a role that do not exist are what
    // the server refuses instead.
    let no_db = format!(
        "postgresql://{}:wrong-password@{}:{}/s2m_no_such_database",
        s.user, s.host, s.port
    );
    env.run(&["--mas-database-uri", &no_db, "migrate", "--allow-warnings"])
        .expect(
            1,
            "cannot connect to the MAS database (host=127.0.0.1 port=5432 dbname=s2m_no_such_database user=postgres): db error: FATAL: database \"s2m_no_such_database\" does not exist",
        );
    let no_role = format!(
        "postgresql://s2m_no_such_role:pw@{}:{}/{}",
        s.host, s.port, env.synapse.name
    );
    env.run(&["--synapse-database-uri", &no_role, "check"])
        .expect(
            1,
            "db error: FATAL: role \"s2m_no_such_role\" does not exist",
        );

    // A URI that is not one.
    env.run(&["--mas-database-uri", "mysql://root@localhost/mas", "check"])
        .expect(
            1,
            "Error: --mas-database-uri: a database URI must start with `postgresql://` or `postgres://`",
        );
    env.assert_untouched("unreachable databases").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn databases_that_are_not_synapse_or_not_mas() {
    let env = Env::new().await;
    let other = TestDb::mas_empty(Schema::Project).await;

    // Synapse pointed at a MAS database.
    let out = env.run(&["--synapse-database-uri", &other.uri(), "check"]);
    out.expect(10, "E-synapse-not-synapse").expect(
        10,
        "the Synapse database lacks the table(s) user_threepids, user_external_ids, devices, access_tokens, refresh_tokens: is this actually Synapse's database?",
    );
    env.run(&[
        "--synapse-database-uri",
        &other.uri(),
        "migrate",
        "--allow-warnings",
    ])
    .expect(
        10,
        "Refusing to migrate: the checks found 1 error(s). Nothing was changed.",
    );

    // MAS pointed at the Synapse database.
    let out = env.run(&["--mas-database-uri", &env.synapse.uri(), "check"]);
    out.expect(10, "E-mas-not-mas").expect(
        10,
        "has no _sqlx_migrations, user_passwords, user_emails, user_unsupported_third_party_ids, upstream_oauth_links, compat_sessions, compat_access_tokens, compat_refresh_tokens: is this actually a MAS database?",
    );
    env.run(&[
        "--mas-database-uri",
        &env.synapse.uri(),
        "migrate",
        "--allow-warnings",
    ])
    .expect(10, "Refusing to migrate");
    assert_eq!(env.synapse.count("users").await, 13, "Synapse untouched");
    env.assert_untouched("not Synapse / not MAS").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mas_that_is_not_empty_is_refused_naming_table_and_rows() {
    let env = Env::new().await;
    env.mas
        .exec(
            "INSERT INTO users (user_id, username, created_at) VALUES \
             (gen_random_uuid(), 'someone', now()), (gen_random_uuid(), 'else', now())",
        )
        .await;
    let out = env.run(&["check"]);
    out.expect(10, "E-mas-not-empty")
        .expect(10, "MAS table `users` has 2 row(s) in host=");
    env.run(&["migrate", "--allow-warnings"])
        .expect(10, "Refusing to migrate");
    assert_eq!(env.counts().await, vec![2, 0, 0, 0, 0, 0, 0, 0]);
    assert!(env.shadow_tables().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn mas_schema_too_old_newer_or_unknown() {
    let env = Env::new().await;
    let newest: i64 = env
        .mas
        .client()
        .await
        .query_one("SELECT max(version) FROM _sqlx_migrations", &[])
        .await
        .unwrap()
        .get(0);

    // The newest migration missing: too old.
    env.mas
        .exec(&format!(
            "DELETE FROM _sqlx_migrations WHERE version = {newest}"
        ))
        .await;
    let out = env.run(&["check"]);
    out.expect(10, "E-mas-schema-old").expect(
        10,
        &format!("older than {newest} (MAS 1.22.0), which this syn2mas writes"),
    );
    env.run(&["migrate", "--allow-warnings"])
        .expect(10, "Refusing to migrate");
    env.assert_untouched("MAS schema too old").await;

    // A migration this tool does not know: newer, a warning that migrate refuses by default.
    env.mas
        .exec(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (29990101000000, 'from the future', true, '\\x00', 1)",
        )
        .await;
    env.run(&["check"]).expect(
        11,
        "MAS's schema is at version 29990101000000, newer than 20260720134722",
    );
    env.run(&["migrate"])
        .expect(11, "Refusing to migrate with warnings (")
        .expect(11, "W-mas-schema-newer");
    env.assert_untouched("MAS schema newer").await;

    // No successful migration at all.
    env.mas.exec("DELETE FROM _sqlx_migrations").await;
    env.run(&["check"]).expect(
        10,
        "MAS's schema is at version none (no successful migration), older than 20260720134722",
    );
    env.assert_untouched("MAS schema unknown").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn synapse_schema_too_old() {
    let env = Env::new().await;
    env.synapse
        .exec("ALTER TABLE users DROP COLUMN locked")
        .await;
    env.run(&["check"])
        .expect(10, "E-synapse-schema-old")
        .expect(
            10,
            "the Synapse database schema is too old: missing column(s) users.locked",
        );
    env.run(&["migrate", "--allow-warnings"])
        .expect(10, "Refusing to migrate");
    env.run(&["migrate", "--allow-warnings", "--dry-run"])
        .expect(10, "Refusing to migrate");
    env.assert_untouched("Synapse schema too old").await;
}

/// `migrate` copies tokens, user agents and addresses without decoding them, relying on
/// Synapse's database being UTF8: a `SQL_ASCII` one (which hands out any bytes) is refused by
/// `check` and by `migrate`'s preflight, and MAS stays empty.
#[tokio::test(flavor = "multi_thread")]
async fn synapse_database_not_utf8_is_refused() {
    let env = Env::with(
        TestDb::synapse_encoded(Schema::Project, "SQL_ASCII").await,
        TestDb::mas(Schema::Project).await,
    );
    env.run(&["check"])
        .expect(10, "E-synapse-encoding")
        .expect(10, "the Synapse database's encoding is SQL_ASCII, not UTF8");
    env.run(&["migrate", "--allow-warnings"])
        .expect(10, "Refusing to migrate")
        .expect(10, "E-synapse-encoding");
    env.run(&["migrate", "--allow-warnings", "--dry-run"])
        .expect(10, "E-synapse-encoding");
    env.assert_untouched("Synapse database not UTF8").await;
}

// ------------------------------------------------------------------------------------------------
// Concurrency
// ------------------------------------------------------------------------------------------------

/// Another session holds the advisory lock of `mas-cli syn2mas` (which syn2mas takes too): the
/// run stops at once and leaves that other run's shadow tables alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_is_refused_while_the_lock_is_held() {
    let env = Env::new().await;
    let holder = env.mas.client().await;
    let got: bool = holder
        .query_one("SELECT pg_try_advisory_lock($1)", &[&UPSTREAM_LOCK])
        .await
        .unwrap()
        .get(0);
    assert!(got);
    // What the lock holder is building: a shadow table of its own.
    holder
        .batch_execute(
            "CREATE SCHEMA syn2mas_shadow; CREATE TABLE syn2mas_shadow.users (LIKE users)",
        )
        .await
        .unwrap();
    for args in [
        &["migrate", "--allow-warnings"][..],
        &["migrate", "--allow-warnings", "--dry-run"][..],
    ] {
        let out = env.run(args);
        out.expect(
            1,
            "another syn2mas (this tool or `mas-cli syn2mas`) is already running against this MAS database",
        );
        assert!(out.took < Duration::from_secs(20), "took {:?}", out.took);
        assert_eq!(env.counts().await, vec![0; 8]);
        assert_eq!(
            env.shadow_tables().await,
            ["schema syn2mas_shadow", "syn2mas_shadow.users"],
            "the refused run dropped the lock holder's shadow table:\n{}",
            out.stderr
        );
    }
    drop(holder);
}

/// A real first run, paused after loading; a second run is refused meanwhile, and the first
/// then completes as if nothing had happened.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_does_not_disturb_the_first() {
    let env = Env::new().await;
    let pause = 15;
    let mut first = env.command(&["migrate", "--allow-warnings", "--seed", "1"]);
    first
        .env("SYN2MAS_TEST_PAUSE", "swap")
        .env("SYN2MAS_TEST_PAUSE_SECS", pause.to_string());
    let (mut child, rest) = start_paused(first, "swap");
    let paused_at = Instant::now();
    let second = env.run(&["migrate", "--allow-warnings", "--seed", "2"]);
    assert!(
        paused_at.elapsed() < Duration::from_secs(pause - 2),
        "the second run took too long ({:?}) to tell whether it disturbed the first",
        paused_at.elapsed()
    );
    second.expect(
        1,
        "another syn2mas (this tool or `mas-cli syn2mas`) is already running",
    );
    let status = child.wait().unwrap();
    let err = rest.join().unwrap();
    assert_eq!(status.code(), Some(0), "the first run failed:\n{err}");
    assert_eq!(env.counts().await, vec![10, 7, 4, 1, 3, 10, 10, 4]);
    assert!(env.shadow_tables().await.is_empty());
}

/// The backend pid of the MAS session holding syn2mas's advisory lock (the run's main
/// session: the only one holding advisory locks exclusively).
async fn lock_holder(env: &Env) -> i32 {
    env.mas
        .client()
        .await
        .query_one(
            "SELECT DISTINCT pid FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ExclusiveLock'
                AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn terminate(env: &Env, pid: i32) {
    let done: bool = env
        .mas
        .client()
        .await
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(done, "could not terminate backend {pid}");
}

/// The session holding the advisory lock is terminated in the middle of a run (here while the
/// run waits between load and rebuild): the run notices within seconds, not at its swap minutes
/// later, fails, and leaves the whole MAS database as it was.
#[tokio::test(flavor = "multi_thread")]
async fn losing_the_lock_holding_session_fails_the_run_within_seconds() {
    let env = Env::new().await;
    let before = env.mas.fingerprint(&[]).await;
    let mut c = env.command(&["migrate", "--allow-warnings", "--seed", "1"]);
    c.env("SYN2MAS_TEST_PAUSE", "rebuild")
        .env("SYN2MAS_TEST_PAUSE_SECS", "600");
    let (mut child, rest) = start_paused(c, "rebuild");
    terminate(&env, lock_holder(&env).await).await;
    let start = Instant::now();
    let status = child.wait().unwrap();
    let err = rest.join().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("the MAS session holding syn2mas's advisory lock ended"),
        "{err}"
    );
    assert_eq!(env.mas.fingerprint(&[]).await, before);
}

/// A run whose lock holder died but whose other sessions still work on its shadow tables (the
/// process is frozen with SIGSTOP, so it cannot notice): a second run gets the advisory lock,
/// but refuses to take those tables for leftovers and drop them. Once the first run resumes it
/// fails and cleans up, and a third run migrates.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_never_drops_tables_a_live_run_still_uses() {
    let env = Env::new().await;
    let before = env.mas.fingerprint(&[]).await;
    let mut c = env.command(&["migrate", "--allow-warnings", "--seed", "1"]);
    c.env("SYN2MAS_TEST_PAUSE", "fk-validation")
        .env("SYN2MAS_TEST_PAUSE_SECS", "600");
    let (mut child, rest) = start_paused(c, "fk-validation");
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    terminate(&env, lock_holder(&env).await).await;
    let leftovers = env.shadow_tables().await;
    assert!(!leftovers.is_empty());

    let second = env.run(&["migrate", "--allow-warnings", "--seed", "2"]);
    second.expect(
        1,
        "sessions of another syn2mas run are still connected to MAS",
    );
    assert_eq!(
        env.shadow_tables().await,
        leftovers,
        "the second run dropped tables the first still uses"
    );

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let status = child.wait().unwrap();
    let err = rest.join().unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(env.mas.fingerprint(&[]).await, before, "{err}");
    env.run(&["migrate", "--allow-warnings", "--seed", "1"])
        .expect(0, "");
    assert_eq!(env.counts().await, vec![10, 7, 4, 1, 3, 10, 10, 4]);
}

/// Spawns `c` (stderr piped), waits until it says it paused at `point`, and returns it with a
/// thread collecting the rest of its stderr.
fn start_paused(
    mut c: Command,
    point: &str,
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let mut child = c
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn syn2mas");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "never paused at {point}");
        match lines.next() {
            Some(Ok(l)) if l.contains(&format!("paused at {point}")) => break,
            Some(Ok(l)) => seen.push(l),
            Some(Err(_)) => continue,
            None => panic!(
                "syn2mas exited before pausing at {point} ({:?}):\n{}",
                child.wait(),
                seen.join("\n")
            ),
        }
    }
    let rest =
        std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    (child, rest)
}

/// A Synapse that still writes holds locks on its tables: a real migration fails fast and says
/// why (its session first; with `--allow-other-sessions`, the lock it holds); a dry-run (which
/// must be safe next to a running Synapse) goes through.
#[tokio::test(flavor = "multi_thread")]
async fn a_synapse_that_still_writes_stops_migrate_but_not_dry_run() {
    let env = Env::new().await;
    let writer = env.synapse.client().await;
    writer
        .batch_execute(
            "BEGIN; INSERT INTO users (name, creation_ts) VALUES ('@late:example.com', 1700000000)",
        )
        .await
        .unwrap();

    let out = env.run(&["migrate", "--allow-warnings"]);
    out.expect(
        1,
        "Refusing to migrate: 1 other session(s) are connected to Synapse's database",
    )
    .expect(1, "idle in transaction");
    env.assert_untouched("Synapse still connected").await;

    let out = env.run(&["migrate", "--allow-warnings", "--allow-other-sessions"]);
    out.expect(1, "Synapse's table `users` is in use by another session (is Synapse still running?). Stop Synapse and its workers before `syn2mas migrate`; `--dry-run` can run next to it.")
        .expect(1, "the migration failed; MAS was left exactly as it was before the run");
    assert!(out.took < Duration::from_secs(20), "took {:?}", out.took);
    env.assert_untouched("Synapse still running").await;

    let out = env.run(&["migrate", "--allow-warnings", "--dry-run"]);
    out.expect(0, "");
    assert!(
        out.stdout.contains("Dry run complete"),
        "stdout:\n{}",
        out.stdout
    );
    env.assert_untouched("dry-run next to Synapse").await;
    writer.batch_execute("ROLLBACK").await.unwrap();
}

/// SIGINT, SIGTERM (`docker stop`, systemd, Kubernetes) and SIGHUP (a closed SSH session)
/// while the run waits in the middle (shadow tables loaded, rebuild under way): the same clean
/// rollback, exit 128 + the signal's number, and MAS exactly as before.
#[tokio::test(flavor = "multi_thread")]
async fn signals_roll_back_and_exit_with_their_codes() {
    let env = Env::new().await;
    for (signal, name, code) in [
        (libc::SIGINT, "SIGINT", 130),
        (libc::SIGTERM, "SIGTERM", 143),
        (libc::SIGHUP, "SIGHUP", 129),
    ] {
        let mut c = env.command(&["migrate", "--allow-warnings", "--seed", "1"]);
        c.env("SYN2MAS_TEST_PAUSE", "rebuild")
            .env("SYN2MAS_TEST_PAUSE_SECS", "600");
        let (mut child, rest) = start_paused(c, "rebuild");
        assert!(
            !env.shadow_tables().await.is_empty(),
            "{name}: paused with shadow tables"
        );
        let start = Instant::now();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0);
        let status = child.wait().unwrap();
        let err = rest.join().unwrap();
        assert_eq!(status.code(), Some(code), "{name}: {err}");
        assert!(
            err.contains(&format!(
                "Interrupted by {name}: the migration was rolled back; MAS is exactly as it was before the run."
            )),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(30));
        env.assert_untouched(name).await;
    }
}

/// A signal right after the swap committed: the run finds out that it did (the `users` table
/// was replaced) and says so with exit 0, instead of claiming a rollback.
#[tokio::test(flavor = "multi_thread")]
async fn a_signal_after_the_commit_is_reported_truthfully() {
    let env = Env::new().await;
    let mut c = env.command(&["migrate", "--allow-warnings", "--seed", "1"]);
    c.env("SYN2MAS_TEST_PAUSE", "committed")
        .env("SYN2MAS_TEST_PAUSE_SECS", "600");
    let (mut child, rest) = start_paused(c, "committed");
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    let err = rest.join().unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains(
            "The migration had committed before SIGTERM arrived: MAS holds the migrated data."
        ),
        "{err}"
    );
    assert!(!err.contains("rolled back"), "{err}");
    assert_ne!(env.counts().await, vec![0; 8], "MAS holds the migration");
    assert!(env.shadow_tables().await.is_empty());
}

// ------------------------------------------------------------------------------------------------
// Identifiers are data
// ------------------------------------------------------------------------------------------------

/// A server name with every SQL metacharacter.
const WEIRD_SERVER: &str = "o'k%_\\;--.example";
/// A user id that a `LIKE '%:' || server_name` comparison would take for one of ours (`%` and
/// `_` as wildcards), but is on another server.
const LOOKALIKE_USER: &str = "@mallory:o'kXYZx;--.example";
/// Synapse `idp_id`; its `auth_provider` is `oidc-` + this.
const WEIRD_IDP: &str = "we'ird%_\\;\"x";

#[tokio::test(flavor = "multi_thread")]
async fn server_names_and_provider_ids_are_data_not_sql() {
    let synapse = TestDb::synapse_empty(Schema::Project).await;
    let env = Env::with(synapse, TestDb::mas(Schema::Project).await);
    let auth_provider = format!("oidc-{WEIRD_IDP}");
    env.edit(&env.homeserver, |v| {
        v["server_name"] = Value::from(WEIRD_SERVER);
        v["oidc_providers"][0]["idp_id"] = Value::from(WEIRD_IDP);
    });
    env.edit(&env.mas_config, |v| {
        v["matrix"]["homeserver"] = Value::from(WEIRD_SERVER);
        v["upstream_oauth2"]["providers"][0]["synapse_idp_id"] = Value::from(auth_provider.clone());
    });
    let user = |lp: &str| format!("@{lp}:{WEIRD_SERVER}");
    let db = env.synapse.client().await;
    for (name, hash) in [
        (user("al'ice"), Some("$2b$12$abcdefghijklmnopqrstuu")),
        (user("b%o_b\\"), None),
    ] {
        db.execute(
            "INSERT INTO users (name, password_hash, creation_ts) VALUES ($1, $2, 1600000000)",
            &[&name, &hash],
        )
        .await
        .unwrap();
    }
    db.execute(
        "INSERT INTO user_external_ids (auth_provider, external_id, user_id) VALUES ($1, $2, $3)",
        &[
            &auth_provider,
            &"sub'; DROP TABLE users; --",
            &user("al'ice"),
        ],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at) \
         VALUES ($1, 'email', 'a''b@x', 1, 1)",
        &[&user("al'ice")],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO devices (user_id, device_id, display_name, hidden) VALUES ($1, 'D''1;', 'x', false)",
        &[&user("b%o_b\\")],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO access_tokens (id, user_id, device_id, token) VALUES (1, $1, 'D''1;', 'tok''en')",
        &[&user("b%o_b\\")],
    )
    .await
    .unwrap();

    // A row on a look-alike server: reported, not taken for ours.
    db.execute(
        "INSERT INTO users (name, creation_ts) VALUES ($1, 1600000000)",
        &[&LOOKALIKE_USER],
    )
    .await
    .unwrap();
    // Closed before syn2mas runs: an open session on Synapse's database is a running Synapse.
    drop(db);
    let out = env.run(&["check", "--json"]);
    out.expect(10, "E-server-name");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let ids: Vec<(&str, u64)> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["id"].as_str().unwrap(), f["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(ids, [("E-server-name", 1)], "{}", out.stderr);
    assert_eq!(report["errors"][0]["examples"][0], LOOKALIKE_USER);
    assert_eq!(
        report["providers"][0]["auth_provider"],
        auth_provider.as_str()
    );
    assert_eq!(report["providers"][0]["status"], "mapped");
    env.run(&["migrate", "--allow-warnings"])
        .expect(10, "Refusing to migrate");
    env.assert_untouched("look-alike server").await;

    env.synapse
        .exec(&format!(
            "DELETE FROM users WHERE name = '{}'",
            LOOKALIKE_USER.replace('\'', "''")
        ))
        .await;
    env.run(&["check"]).expect(0, "");
    let out = env.run(&["migrate", "--seed", "1", "--json"]);
    out.expect(0, "");
    let mas = env.mas.client().await;
    let names: Vec<String> = mas
        .query("SELECT username FROM users ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["al'ice", "b%o_b\\"]);
    let link = mas
        .query_one(
            "SELECT l.subject, u.username, l.upstream_oauth_provider_id::text \
               FROM upstream_oauth_links l JOIN users u USING (user_id)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(link.get::<_, String>(0), "sub'; DROP TABLE users; --");
    assert_eq!(link.get::<_, String>(1), "al'ice");
    assert_eq!(link.get::<_, String>(2), common::GOOGLE_PROVIDER_UUID);
    let session = mas
        .query_one(
            "SELECT s.device_id, t.access_token FROM compat_sessions s \
               JOIN compat_access_tokens t USING (compat_session_id)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(session.get::<_, String>(0), "D'1;");
    assert_eq!(session.get::<_, String>(1), "tok'en");
    assert_eq!(
        env.counts().await,
        vec![2, 1, 1, 0, 1, 1, 1, 0],
        "{}",
        out.stderr
    );
}

// ------------------------------------------------------------------------------------------------
// Values PostgreSQL cannot store
// ------------------------------------------------------------------------------------------------

/// Timestamps a `timestamptz` cannot hold (Synapse stores plain bigints) are check errors,
/// table by table, instead of a migration that dies half-way. Times that are merely odd (0,
/// before 1970, the year 3000) migrate as they are. Found by tests/proptest_db.rs.
#[tokio::test(flavor = "multi_thread")]
async fn timestamps_postgresql_cannot_hold_are_check_errors() {
    let env = Env::new().await;
    env.synapse
        .exec(
            "INSERT INTO users (name, creation_ts, appservice_id) VALUES \
               ('@far:example.com', 9223372036854775807, NULL), \
               ('@_bridge_far:example.com', -9223372036854775808, 'irc'), \
               ('@y3000:example.com', 32503680000, NULL), \
               ('@before1970:example.com', -86400, NULL); \
             INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at) VALUES \
               ('@alice:example.com', 'email', 'far@example.com', 0, 9223372036854775807), \
               ('@alice:example.com', 'email', 'zero@example.com', 0, 0); \
             INSERT INTO devices (user_id, device_id, last_seen, hidden) VALUES \
               ('@alice:example.com', 'FARDEV', -9223372036854775808, false), \
               ('@alice:example.com', 'NEGDEV', -1, false), \
               ('@y3000:example.com', 'Y3000', 32503680000000, false); \
             INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, last_validated, puppets_user_id) VALUES \
               (980, '@alice:example.com', NULL, 'syt_far_expiry', 9223372036854775807, NULL, NULL), \
               (981, '@alice:example.com', NULL, 'syt_far_puppet', NULL, -9223372036854775808, '@admin:example.com'), \
               (982, '@y3000:example.com', 'Y3000', 'syt_y3000', 32503680000000, 32503680000000, NULL);",
        )
        .await;
    let out = env.run(&["check", "--json"]);
    out.expect(10, "E-timestamp-range");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let mut found: Vec<(String, String, u64)> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_owned(),
                f["table"].as_str().unwrap_or("").to_owned(),
                f["count"].as_u64().unwrap(),
            )
        })
        .collect();
    found.sort();
    let want: Vec<(String, String, u64)> = ["access_tokens", "devices", "user_threepids", "users"]
        .iter()
        .map(|t| ("E-timestamp-range".to_owned(), (*t).to_owned(), 1))
        .collect();
    assert_eq!(found, want, "{}", out.stderr);
    env.run(&["migrate", "--allow-warnings"])
        .expect(10, "Refusing to migrate");
    env.assert_untouched("out-of-range timestamps").await;

    // Fixed in Synapse, the odd-but-valid times migrate as they are.
    env.synapse
        .exec(
            "UPDATE users SET creation_ts = 1700000000 WHERE name = '@far:example.com'; \
             UPDATE user_threepids SET added_at = 1700000000000 WHERE address = 'far@example.com'; \
             UPDATE devices SET last_seen = NULL WHERE device_id = 'FARDEV'; \
             UPDATE access_tokens SET valid_until_ms = NULL WHERE id = 980;",
        )
        .await;
    env.run(&["migrate", "--allow-warnings", "--seed", "1"])
        .expect(0, "");
    let mas = env.mas.client().await;
    let created: Vec<String> = mas
        .query(
            "SELECT username || ' ' || to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') \
               FROM users WHERE username IN ('y3000', 'before1970') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(created, ["before1970 1969-12-31", "y3000 3000-01-01"]);
    let expires: String = mas
        .query_one(
            "SELECT to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM compat_access_tokens \
              WHERE access_token = 'syt_y3000'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(expires, "3000-01-01");
}

/// Row-level problems in the tables other than `users`. An orphan device: the default
/// `migrate` runs only the preflight checks, finds it while reading and refuses with exit 10
/// naming the row, MAS untouched; `--full-check` refuses before reading anything, with the
/// full report. A threepid, a hidden device and a puppet token on another server: the
/// transform checks every row's server name before any skip reason, so even rows it would
/// skip are refused, naming the table and the row. Once fixed, both scopes migrate.
#[tokio::test(flavor = "multi_thread")]
async fn row_problems_outside_users_stop_migrate_in_both_check_scopes() {
    let env = Env::new().await;
    env.synapse
        .exec("INSERT INTO devices (user_id, device_id, hidden) VALUES ('@ghost:example.com', 'GHOSTDEV', false);")
        .await;
    let out = env.run(&["migrate", "--allow-warnings"]);
    out.expect(
        10,
        "Refusing to migrate: Synapse `devices` row `@ghost:example.com`",
    )
    .expect(10, "`syn2mas check` lists every such row");
    assert!(
        !out.stderr.contains("E-orphan-rows]"),
        "preflight does not run the orphan pass:\n{}",
        out.stderr
    );
    env.assert_untouched("preflight, orphan device").await;

    let out = env.run(&["migrate", "--allow-warnings", "--full-check"]);
    out.expect(10, "E-orphan-rows")
        .expect(10, "Refusing to migrate");
    env.assert_untouched("full check, orphan device").await;

    env.synapse
        .exec(
            "DELETE FROM devices WHERE user_id = '@ghost:example.com'; \
             INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at) VALUES \
               ('@alice:elsewhere.org', 'email', 'a@elsewhere.org', 0, 0);",
        )
        .await;
    let out = env.run(&["migrate", "--allow-warnings"]);
    out.expect(10, "Synapse `user_threepids` row `@alice:elsewhere.org`")
        .expect(10, "E-server-name")
        .expect(10, "Refusing to migrate");
    env.assert_untouched("foreign threepid").await;

    env.synapse
        .exec(
            "DELETE FROM user_threepids WHERE user_id = '@alice:elsewhere.org'; \
             INSERT INTO devices (user_id, device_id, hidden) \
               VALUES ('@carol:elsewhere.org', 'XSIGNKEY', true);",
        )
        .await;
    let out = env.run(&["migrate", "--allow-warnings"]);
    out.expect(10, "Synapse `devices` row `@carol:elsewhere.org`")
        .expect(10, "E-server-name");
    env.assert_untouched("foreign hidden device").await;

    env.synapse
        .exec(
            "DELETE FROM devices WHERE user_id = '@carol:elsewhere.org'; \
             INSERT INTO access_tokens (id, user_id, device_id, token, puppets_user_id) \
               VALUES (99001, '@dan:elsewhere.org', NULL, 'syt_foreign_puppet', '@alice:example.com');",
        )
        .await;
    let out = env.run(&["migrate", "--allow-warnings"]);
    out.expect(10, "Synapse `access_tokens` row `@dan:elsewhere.org`")
        .expect(10, "E-server-name");
    env.assert_untouched("foreign puppet token").await;

    env.synapse
        .exec("DELETE FROM access_tokens WHERE user_id = '@dan:elsewhere.org';")
        .await;
    let out = env.run(&["migrate", "--allow-warnings", "--full-check", "--dry-run"]);
    out.expect(0, "");
    let out = env.run(&["migrate", "--allow-warnings", "--json"]);
    out.expect(0, "");
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["check"]["scope"], "preflight");
    assert!(doc["check"]["plan"].is_null());
    assert_ne!(env.counts().await, vec![0; 8]);
}
