//! No secret ever leaves syn2mas: every password, pepper, token, refresh token, password hash
//! and database password of a fixture is a marker string containing `MARKER`, and no run —
//! check, dry-run, migrate, and the error paths, all at `-vv`, with and without `--json` —
//! may print `MARKER` on stdout or stderr. `Debug` of the loaded configs redacts them too.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Schema, TestDb, syn2mas_bin};
use serde_norway::Value;
use syn2mas::config::{load_mas_with_env, load_synapse_with_env};
use syn2mas::db::ConnectOptions;

/// What every secret of the fixtures contains, and nothing else does.
const MARKER: &str = "MARKER";

const PEPPER: &str = "MARKERpepper-3f9a";
const SYNAPSE_DB_PASSWORD: &str = "MARKERsynapse-db-pw-71c2";
const MAS_DB_PASSWORD: &str = "MARKERmas-db-pw-55d0";
const URI_PASSWORD: &str = "MARKERuri-pw-0b7e";
const ENV_PASSWORD: &str = "MARKERenv-pw-9d41";
const OTHER_MAS_SECRET: &str = "MARKERother-scheme-secret-2c";

/// Turns every secret of the Synapse fixture into a marker: password hashes (keeping the
/// bcrypt prefix, so the hash checks treat them as bcrypt), access and refresh tokens.
const MARK_SYNAPSE_ROWS: &str = "
    UPDATE users SET password_hash = '$2b$12$' || 'MARKERhash' || md5(name)
     WHERE password_hash IS NOT NULL;
    UPDATE access_tokens SET token = 'syt_MARKERaccess_' || id;
    UPDATE refresh_tokens SET token = 'syr_MARKERrefresh_' || id;
";

use common::Fixture as Env;

impl Env {
    /// The fixtures with every secret a marker; configs with marker passwords (which the
    /// local server, trusting 127.0.0.1, ignores) and the marker pepper on both sides.
    async fn new() -> Env {
        let synapse = TestDb::synapse(Schema::Project).await;
        synapse.exec(MARK_SYNAPSE_ROWS).await;
        let env = Env::of(synapse, TestDb::mas(Schema::Project).await);
        let s = common::server();
        let mas_name = env.mas.name.clone();
        edit(&env.homeserver, |v| {
            v["password_config"]["pepper"] = Value::from(PEPPER);
            v["database"]["args"]["password"] = Value::from(SYNAPSE_DB_PASSWORD);
            v["macaroon_secret_key"] = Value::from("MARKERmacaroon");
            v["form_secret"] = Value::from("MARKERform");
            v["oidc_providers"][0]["client_secret"] = Value::from("MARKERclient-secret");
        });
        edit(&env.mas_config, |v| {
            v["passwords"]["schemes"][0]["secret"] = Value::from(PEPPER);
            v["database"] = serde_norway::from_str(&format!(
                "{{host: '{}', port: {}, username: '{}', database: '{mas_name}'}}",
                s.host, s.port, s.user
            ))
            .unwrap();
            v["database"]["password"] = Value::from(MAS_DB_PASSWORD);
            v["matrix"]["secret"] = Value::from("MARKERmatrix-secret");
            v["upstream_oauth2"]["providers"][0]["client_secret"] =
                Value::from("MARKERclient-secret");
            v["secrets"]["encryption"] = Value::from("MARKERencryption");
        });
        env
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(syn2mas_bin());
        c.arg("-vv")
            .arg("-c")
            .arg(&self.mas_config)
            .arg("--synapse-config")
            .arg(&self.homeserver)
            .args(args)
            .env("SYN2MAS_TEST_NOW_MS", "1767225600000")
            .env("PGPASSWORD", ENV_PASSWORD)
            .env_remove("SYN2MAS_TEST_PAUSE")
            .stdin(Stdio::null());
        c
    }

    /// Runs and asserts the exit code and that no marker was printed.
    fn run(&self, args: &[&str], code: i32) -> (String, String) {
        let out = self.command(args).output().expect("run syn2mas");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}\nstderr:\n{stderr}\nstdout:\n{stdout}"
        );
        assert_no_secret(&format!("{args:?}"), &stdout, &stderr);
        (stdout, stderr)
    }
}

fn edit(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_norway::to_string(&v).unwrap()).unwrap();
}

#[track_caller]
fn assert_no_secret(case: &str, stdout: &str, stderr: &str) {
    assert!(!stderr.contains("panicked"), "{case}: panicked:\n{stderr}");
    for (name, text) in [("stdout", stdout), ("stderr", stderr)] {
        if let Some(at) = text.find(MARKER) {
            let from = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let to = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!(
                "{case}: a secret on {name}, line: {:?}\n--- whole {name}:\n{text}",
                &text[from..to]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn check_dry_run_and_migrate_print_no_secret() {
    let env = Env::new().await;
    // The fixture and the markers are really in play: the databases hold them...
    let n: i64 = env
        .synapse
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM access_tokens WHERE token LIKE '%MARKER%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 16);

    let (stdout, _) = env.run(&["check", "--json"], 11);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["exit_code"], 11);
    env.run(&["check"], 11);
    env.run(&["migrate", "--dry-run", "--allow-warnings", "--json"], 0);
    env.run(&["migrate", "--dry-run", "--allow-warnings"], 0);
    // Log records as JSON (fields included) carry no secret either.
    env.run(&["check", "--log-format", "json"], 11);
    env.run(
        &[
            "migrate",
            "--dry-run",
            "--allow-warnings",
            "--log-format",
            "json",
        ],
        0,
    );
    let (stdout, _) = env.run(&["migrate", "--allow-warnings", "--seed", "1", "--json"], 0);
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["migrate"]["mas_rows"]["compat_access_tokens"], 10);

    // ...and were migrated, so the runs above really handled them.
    let mas = env.mas.client().await;
    let row = mas
        .query_one(
            "SELECT (SELECT count(*) FROM compat_access_tokens WHERE access_token LIKE 'syt_MARKER%'),
                    (SELECT count(*) FROM compat_refresh_tokens WHERE refresh_token LIKE 'syr_MARKER%'),
                    (SELECT count(*) FROM user_passwords WHERE hashed_password LIKE '%MARKER%')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (10, 4, 7)
    );

    // Error path: a second run finds MAS not empty.
    env.run(&["migrate", "--allow-warnings", "--json"], 10);
    env.run(&["check", "--json"], 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn error_paths_print_no_secret() {
    let env = Env::new().await;

    // A pepper mismatch is reported without either value.
    let original = std::fs::read(&env.mas_config).unwrap();
    edit(&env.mas_config, |v| {
        v["passwords"]["schemes"][0]["secret"] = Value::from(OTHER_MAS_SECRET);
    });
    let (_, stderr) = env.run(&["check"], 10);
    assert!(stderr.contains("E-pepper-mismatch"), "{stderr}");
    env.run(&["check", "--json"], 10);
    env.run(&["migrate", "--allow-warnings", "--json"], 10);
    std::fs::write(&env.mas_config, &original).unwrap();

    // Connections that fail, with the password in a URI, in the config and in PGPASSWORD.
    let unreachable = format!("postgresql://postgres:{URI_PASSWORD}@127.0.0.1:1/x");
    for flag in ["--mas-database-uri", "--synapse-database-uri"] {
        let (_, stderr) = env.run(&[flag, &unreachable, "check"], 1);
        assert!(stderr.contains("Connection refused"), "{stderr}");
        env.run(
            &[flag, &unreachable, "migrate", "--allow-warnings", "--json"],
            1,
        );
    }
    // Malformed URIs with a password: an unencoded `/` or `@` shifts every part.
    for bad in [
        format!("postgresql://postgres:{URI_PASSWORD}@127.0.0.1:port/x"),
        format!("postgresql://postgres:{URI_PASSWORD}/x@127.0.0.1:5432/x"),
        format!("postgresql://postgres:{URI_PASSWORD}%zz@127.0.0.1/x"),
        format!("postgresql://postgres@127.0.0.1/x?password={URI_PASSWORD}&sslmode=sometimes"),
        format!("postgresql://postgres@127.0.0.1/x?pass={URI_PASSWORD}"),
        format!("mysql://postgres:{URI_PASSWORD}@127.0.0.1/x"),
    ] {
        env.run(&["--mas-database-uri", &bad, "check"], 1);
    }
    // The password of a split MAS `database` section, unreachable.
    edit(&env.mas_config, |v| v["database"]["port"] = Value::from(1));
    env.run(&["check"], 1);
    std::fs::write(&env.mas_config, &original).unwrap();
    // A non-existent database: the server's refusal.
    let missing = format!(
        "postgresql://postgres:{URI_PASSWORD}@127.0.0.1:{}/s2m_missing",
        common::server().port
    );
    env.run(&["--mas-database-uri", &missing, "check"], 1);

    // Config files with errors next to secrets: no message quotes the value.
    let broken = env.dir.path().join("broken.yaml");
    for text in [
        format!("server_name: x\npassword_config:\n  pepper: \"{PEPPER}\n"),
        format!("server_name: x\npassword_config:\n  pepper: [\"{PEPPER}\"]\n"),
        format!("server_name: x\npassword_config: {{pepper: {PEPPER}, pepper: {PEPPER}}}\n"),
        format!(
            "server_name: x\ndatabase:\n  name: psycopg2\n  args:\n    password: {SYNAPSE_DB_PASSWORD}\n    port: {SYNAPSE_DB_PASSWORD}\n"
        ),
        format!("server_name: x\n{SYNAPSE_DB_PASSWORD}: [\n"),
        format!("server_name: x\n\t{SYNAPSE_DB_PASSWORD}\n"),
    ] {
        std::fs::write(&broken, &text).unwrap();
        let out = Command::new(syn2mas_bin())
            .args(["-vv", "-c"])
            .arg(&env.mas_config)
            .arg("--synapse-config")
            .arg(&broken)
            .arg("check")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert_no_secret(
            &text,
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        );
    }
    for text in [
        format!("database:\n  uri: \"postgresql://u:{URI_PASSWORD}@h:x/d\"\n"),
        format!("database:\n  password: [{MAS_DB_PASSWORD}]\n"),
        format!("database:\n  password: {MAS_DB_PASSWORD}\n  uri: postgresql://h/d\n"),
        format!(
            "passwords:\n  schemes:\n    - {{version: 1, algorithm: bcrypt, secret: {PEPPER}, secret_file: /x}}\n"
        ),
        format!(
            "passwords:\n  schemes:\n    - {{version: 1, algorithm: bcrypt, secret: {{a: {PEPPER}}}}}\n"
        ),
    ] {
        std::fs::write(&broken, &text).unwrap();
        let out = Command::new(syn2mas_bin())
            .args(["-vv", "-c"])
            .arg(&broken)
            .arg("--synapse-config")
            .arg(&env.homeserver)
            .arg("check")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert_no_secret(
            &text,
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        );
    }

    // A Synapse that still writes: migrate fails fast.
    let writer = env.synapse.client().await;
    writer
        .batch_execute("BEGIN; UPDATE access_tokens SET used = true WHERE id = 1")
        .await
        .unwrap();
    env.run(&["migrate", "--allow-warnings", "--json"], 1);
    writer.batch_execute("ROLLBACK").await.unwrap();
}

/// A migration that fails in the middle (the provider its links need disappears from MAS
/// after the checks): the error, at -vv, names the constraint and no secret.
#[tokio::test(flavor = "multi_thread")]
async fn a_migration_failing_mid_run_prints_no_secret() {
    let env = Env::new().await;
    let mut child = env
        .command(&["migrate", "--allow-warnings", "--json"])
        .env("SYN2MAS_TEST_PAUSE", "after-users")
        .env("SYN2MAS_TEST_PAUSE_SECS", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stderr = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in lines.by_ref() {
        let line = line.unwrap();
        let paused = line.contains("paused at after-users");
        stderr.push(line);
        if paused {
            break;
        }
        assert!(Instant::now() < deadline, "never paused");
    }
    env.mas.exec("DELETE FROM upstream_oauth_providers").await;
    stderr.extend(lines.map_while(Result::ok));
    let out = child.wait_with_output().unwrap();
    let stderr = stderr.join("\n");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("upstream_oauth_links_provider_fkey"),
        "{stderr}"
    );
    assert_no_secret(
        "failing migration",
        &String::from_utf8_lossy(&out.stdout),
        &stderr,
    );
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// `Debug` of everything the loaders return shows no secret, whichever form it came in.
#[test]
fn debug_of_loaded_configs_redacts_every_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("pepper.txt");
    std::fs::write(&secret_file, "MARKERfrom-a-file\n").unwrap();
    let password_file = dir.path().join("db-password.txt");
    std::fs::write(&password_file, "MARKERdb-password-file\n").unwrap();

    let homeserver = dir.path().join("homeserver.yaml");
    std::fs::write(
        &homeserver,
        format!(
            "server_name: example.com\n\
             password_config: {{pepper: {PEPPER}}}\n\
             database:\n  name: psycopg2\n  args:\n    user: synapse\n    password: {SYNAPSE_DB_PASSWORD}\n    host: db\n    dbname: synapse\n\
             macaroon_secret_key: MARKERmacaroon\n\
             oidc_providers:\n  - {{idp_id: google, issuer: 'https://accounts.google.com', client_id: x, client_secret: MARKERclient}}\n"
        ),
    )
    .unwrap();
    let synapse = load_synapse_with_env(std::slice::from_ref(&homeserver), &no_env).unwrap();
    assert_eq!(
        synapse.password_pepper.as_ref().map(|p| p.expose()),
        Some(PEPPER)
    );

    let split = dir.path().join("mas-split.yaml");
    std::fs::write(
        &split,
        format!(
            "database:\n  host: db\n  username: mas\n  password_file: {}\n  ssl_mode: verify-full\n  ssl_ca: MARKERinline-ca\n  ssl_certificate: MARKERinline-cert\n  ssl_key: MARKERinline-key\n\
             passwords:\n  schemes:\n    - {{version: 1, algorithm: bcrypt, secret: {PEPPER}}}\n    - {{version: 2, algorithm: argon2id, secret_file: {}}}\n\
             matrix: {{homeserver: example.com, secret: MARKERmatrix}}\n",
            password_file.display(),
            secret_file.display()
        ),
    )
    .unwrap();
    let uri = dir.path().join("mas-uri.yaml");
    std::fs::write(
        &uri,
        format!("database:\n  uri: postgresql://mas:{URI_PASSWORD}@db/mas?sslmode=require\n"),
    )
    .unwrap();
    let env_pw = |name: &str| (name == "PGPASSWORD").then(|| ENV_PASSWORD.to_owned());
    let mas_split = load_mas_with_env(std::slice::from_ref(&split), &no_env).unwrap();
    let mas_uri = load_mas_with_env(std::slice::from_ref(&uri), &no_env).unwrap();
    let mas_env = load_mas_with_env(std::slice::from_ref(&uri), &env_pw).unwrap();
    assert_eq!(
        mas_split.database.password.as_ref().map(|p| p.expose()),
        Some("MARKERdb-password-file")
    );
    assert_eq!(
        mas_split.password_schemes[1]
            .secret
            .as_ref()
            .map(|s| s.expose()),
        Some("MARKERfrom-a-file\n")
    );
    assert_eq!(
        mas_uri.database.password.as_ref().map(|p| p.expose()),
        Some(URI_PASSWORD)
    );
    let from_env = ConnectOptions::default().with_env(env_pw);
    assert_eq!(
        from_env.password.as_ref().map(|p| p.expose()),
        Some(ENV_PASSWORD)
    );
    let from_uri = ConnectOptions::from_uri(&format!(
        "postgresql://u:{URI_PASSWORD}@h/d?password={URI_PASSWORD}"
    ))
    .unwrap();

    for (what, text) in [
        ("SynapseConfig", format!("{synapse:?} {synapse:#?}")),
        ("MasConfig (split)", format!("{mas_split:?} {mas_split:#?}")),
        ("MasConfig (uri)", format!("{mas_uri:?} {mas_uri:#?}")),
        ("MasConfig (env)", format!("{mas_env:?} {mas_env:#?}")),
        ("ConnectOptions (env)", format!("{from_env:?}")),
        ("ConnectOptions (uri)", format!("{from_uri:?}")),
        (
            "describe()",
            format!(
                "{} {}",
                from_uri.describe_with(no_env),
                mas_split.database.describe_with(env_pw)
            ),
        ),
    ] {
        assert!(!text.contains(MARKER), "{what} shows a secret: {text}");
        assert!(
            text.contains("[redacted]") || what == "describe()",
            "{what}: {text}"
        );
    }
}

/// The parsed command line keeps the database URIs (which may hold a password) out of `Debug`.
#[test]
fn debug_of_the_command_line_redacts_database_uris() {
    use clap::Parser;
    let uri = format!("postgresql://postgres:{URI_PASSWORD}@db/x");
    let cli = syn2mas::cli::Cli::try_parse_from([
        "syn2mas",
        "--synapse-database-uri",
        &uri,
        "--mas-database-uri",
        &uri,
        "migrate",
        "--dry-run",
    ])
    .unwrap();
    assert_eq!(cli.global.mas_database_uri.as_deref(), Some(uri.as_str()));
    let text = format!("{cli:?} {cli:#?}");
    assert!(!text.contains(MARKER), "{text}");
    assert!(
        text.contains("mas_database_uri: Some([redacted])"),
        "{text}"
    );
}
