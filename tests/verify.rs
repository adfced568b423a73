//! `syn2mas verify` end to end on real throwaway databases: it passes right after `migrate`,
//! and each deliberate corruption of the MAS side makes it fail (exit 10) naming that row.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{Schema, TestDb, schemas, syn2mas_bin, write_configs};
use serde_json::Value;

/// Exit code of `verify` when the databases differ.
const DIFFERENCES: i32 = 10;

struct Env {
    _dir: tempfile::TempDir,
    synapse: TestDb,
    mas: TestDb,
    homeserver: PathBuf,
    mas_config: PathBuf,
}

/// What one `verify` run printed.
struct Verified {
    code: Option<i32>,
    json: Value,
    /// Human report (stderr with `--json`) plus the JSON text, for secret and naming checks.
    text: String,
}

impl Env {
    async fn new(schema: Schema) -> Env {
        let synapse = TestDb::synapse(schema).await;
        let mas = TestDb::mas(schema).await;
        let dir = tempfile::tempdir().unwrap();
        let (homeserver, mas_config) = write_configs(dir.path(), &synapse, &mas);
        Env {
            _dir: dir,
            synapse,
            mas,
            homeserver,
            mas_config,
        }
    }

    /// A fresh environment with the fixture migrated (random ids, real clock, as in production).
    async fn migrated(schema: Schema) -> Env {
        let env = Env::new(schema).await;
        let out = env.run(&["migrate", "--allow-warnings"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "migrate failed on {schema}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(syn2mas_bin());
        c.arg("-c")
            .arg(&self.mas_config)
            .arg("--synapse-config")
            .arg(&self.homeserver)
            .args(args)
            .arg("--color")
            .arg("never")
            .env_remove("SYN2MAS_TEST_PAUSE")
            .env_remove("SYN2MAS_TEST_NOW_MS");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run syn2mas")
    }

    fn verify(&self) -> Verified {
        let out = self.run(&["verify", "--json"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("verify --json printed no JSON ({e}):\n{stdout}\n--- stderr:\n{stderr}")
        });
        Verified {
            code: out.status.code(),
            json,
            text: format!("{stderr}\n{stdout}"),
        }
    }

    /// Every token and password hash of the Synapse fixture: none may appear in a report.
    async fn secrets(&self) -> Vec<String> {
        let client = self.synapse.client().await;
        let rows = client
            .query(
                "SELECT token FROM access_tokens UNION ALL SELECT token FROM refresh_tokens \
                 UNION ALL SELECT password_hash FROM users WHERE password_hash IS NOT NULL",
                &[],
            )
            .await
            .unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }
}

impl Verified {
    fn entity(&self, name: &str) -> &Value {
        self.json["entities"]
            .as_array()
            .expect("entities array")
            .iter()
            .find(|e| e["entity"] == name)
            .unwrap_or_else(|| panic!("no entity {name} in {:#}", self.json))
    }

    fn count(&self, entity: &str, field: &str) -> u64 {
        self.entity(entity)[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{entity}.{field} missing"))
    }

    /// The example of `kind` in `entity` whose row mentions every part.
    fn example(&self, entity: &str, kind: &str, parts: &[&str]) -> &Value {
        self.entity(entity)["examples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| {
                e["kind"] == kind
                    && parts
                        .iter()
                        .all(|p| e["row"].as_str().unwrap_or("").contains(p))
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {kind} example naming {parts:?} in {entity}:\n{}",
                    self.text
                )
            })
    }

    /// Asserts the run failed with exit 10 and printed no secret.
    fn assert_failed_without_secrets(&self, secrets: &[String]) {
        assert_eq!(self.code, Some(DIFFERENCES), "{}", self.text);
        assert_eq!(self.json["ok"], false);
        assert_eq!(self.json["exit_code"], DIFFERENCES);
        assert!(self.text.contains("Verification FAILED"), "{}", self.text);
        assert_no_secrets(&self.text, secrets);
    }
}

/// Neither a whole secret nor its first 8 characters may be printed (reports show 4).
fn assert_no_secrets(text: &str, secrets: &[String]) {
    for s in secrets {
        let prefix: String = s.chars().take(8).collect();
        assert!(
            !text.contains(s.as_str()) && !text.contains(&prefix),
            "the report shows a secret starting with {:?}",
            s.chars().take(4).collect::<String>()
        );
    }
}

/// Rows each MAS table gets from the fixture (tests/migrate.rs checks the same numbers).
const EXPECTED_ROWS: [(&str, u64); 9] = [
    ("users", 10),
    ("user_passwords", 7),
    ("user_emails", 4),
    ("user_unsupported_third_party_ids", 1),
    ("upstream_oauth_links", 3),
    ("compat_sessions", 9),
    ("compat_sessions (deviceless)", 1),
    ("compat_access_tokens", 10),
    ("compat_refresh_tokens", 4),
];

#[tokio::test(flavor = "multi_thread")]
async fn passes_right_after_migrate() {
    for schema in schemas() {
        let env = Env::migrated(schema).await;
        let v = env.verify();
        assert_eq!(v.code, Some(0), "{schema}:\n{}", v.text);
        assert_eq!(v.json["version"], 1);
        assert_eq!(v.json["ok"], true);
        assert_eq!(v.json["exit_code"], 0);
        assert_eq!(v.json["databases"].as_array().unwrap().len(), 2);
        assert!(v.json["seconds"].as_f64().is_some());
        assert_eq!(
            v.json["entities"].as_array().unwrap().len(),
            EXPECTED_ROWS.len()
        );
        for (entity, rows) in EXPECTED_ROWS {
            for field in ["synapse_rows", "mas_rows", "compared", "equal"] {
                assert_eq!(v.count(entity, field), rows, "{schema} {entity}.{field}");
            }
            for field in ["different", "missing", "extra"] {
                assert_eq!(v.count(entity, field), 0, "{schema} {entity}.{field}");
            }
            assert!(v.entity(entity)["seconds"].as_f64().is_some());
            assert!(v.entity(entity)["examples"].as_array().unwrap().is_empty());
        }
        // Rows the mapping skips are accounted for, by the migration's reasons.
        assert_eq!(v.entity("users")["skipped"]["appservice"], 3);
        assert_eq!(v.entity("compat_sessions")["skipped"]["hidden"], 2);
        assert_eq!(v.entity("compat_access_tokens")["skipped"]["puppet"], 1);
        assert!(v.text.contains("Verification passed"), "{}", v.text);
        assert_no_secrets(&v.text, &env.secrets().await);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_output_and_exit_code_without_json() {
    let env = Env::migrated(Schema::Project).await;
    let out = env.run(&["verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("compat_refresh_tokens"), "{stdout}");
    assert!(stdout.contains("Verification passed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_mas_is_all_missing() {
    for schema in schemas() {
        let env = Env::new(schema).await;
        let v = env.verify();
        assert_eq!(v.code, Some(DIFFERENCES), "{}", v.text);
        for (entity, rows) in EXPECTED_ROWS {
            assert_eq!(v.count(entity, "missing"), rows, "{schema} {entity}");
            assert_eq!(v.count(entity, "mas_rows"), 0, "{schema} {entity}");
        }
        v.example("users", "missing", &["@alice:example.com"]);
        assert_no_secrets(&v.text, &env.secrets().await);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_token_is_named() {
    for schema in schemas() {
        let env = Env::migrated(schema).await;
        env.mas
            .exec(
                "DELETE FROM compat_access_tokens \
                  WHERE access_token = 'syt_ZGF2ZQ_dkRXVEKnEbTnJUGgPURU_1GOP20'",
            )
            .await;
        let v = env.verify();
        v.assert_failed_without_secrets(&env.secrets().await);
        assert_eq!(v.count("compat_access_tokens", "missing"), 1);
        assert_eq!(v.count("compat_access_tokens", "equal"), 9);
        v.example(
            "compat_access_tokens",
            "missing",
            &["syt_…", "@dave:example.com", "DAVEWEB"],
        );
        assert_only_problems_in(&v, &["compat_access_tokens"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_password_hash_is_named_but_not_shown() {
    for schema in schemas() {
        let env = Env::migrated(schema).await;
        let forged = "$2b$12$forgedforgedforgedforgeuvEFZQTqXJxnSXw5RLU/UzDNQiH0ZQDq";
        env.mas
            .exec(&format!(
                "UPDATE user_passwords SET hashed_password = '{forged}' \
                  WHERE user_id = (SELECT user_id FROM users WHERE username = 'grace')"
            ))
            .await;
        let v = env.verify();
        let mut secrets = env.secrets().await;
        secrets.push(forged.to_owned());
        v.assert_failed_without_secrets(&secrets);
        assert_eq!(v.count("user_passwords", "different"), 1);
        let ex = v.example("user_passwords", "different", &["@grace:example.com"]);
        assert_eq!(ex["differences"][0]["column"], "hashed_password");
        assert_eq!(v.entity("user_passwords")["columns"]["hashed_password"], 1);
        assert_only_problems_in(&v, &["user_passwords"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extra_email_is_named() {
    for schema in schemas() {
        let env = Env::migrated(schema).await;
        env.mas
            .exec(
                "INSERT INTO user_emails (user_email_id, user_id, email, created_at) \
                 SELECT '01890000-0000-7000-8000-000000000001', user_id, 'intruder@example.net', now() \
                   FROM users WHERE username = 'alice'",
            )
            .await;
        let v = env.verify();
        v.assert_failed_without_secrets(&env.secrets().await);
        assert_eq!(v.count("user_emails", "extra"), 1);
        assert_eq!(v.count("user_emails", "mas_rows"), 5);
        v.example(
            "user_emails",
            "extra",
            &["@alice:example.com", "intruder@example.net"],
        );
        assert_only_problems_in(&v, &["user_emails"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_moved_to_another_user_is_named() {
    for schema in schemas() {
        let env = Env::migrated(schema).await;
        env.mas
            .exec(
                "UPDATE compat_sessions \
                    SET user_id = (SELECT user_id FROM users WHERE username = 'carol') \
                  WHERE device_id = 'ADMINDESK'",
            )
            .await;
        let v = env.verify();
        v.assert_failed_without_secrets(&env.secrets().await);
        assert_eq!(v.count("compat_sessions", "missing"), 1);
        assert_eq!(v.count("compat_sessions", "extra"), 1);
        v.example(
            "compat_sessions",
            "missing",
            &["@admin:example.com", "ADMINDESK"],
        );
        v.example(
            "compat_sessions",
            "extra",
            &["@carol:example.com", "ADMINDESK"],
        );
        // The device's token now hangs off the wrong user's session.
        let ex = v.example(
            "compat_access_tokens",
            "different",
            &["@admin:example.com", "ADMINDESK"],
        );
        assert_eq!(ex["differences"][0]["column"], "username");
        assert_eq!(ex["differences"][0]["actual"], "@carol:example.com");
        assert_only_problems_in(&v, &["compat_sessions", "compat_access_tokens"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_user_creation_time_is_named() {
    for schema in schemas() {
        let env = Env::migrated(schema).await;
        env.mas
            .exec(
                "UPDATE users SET created_at = created_at + interval '1 hour' \
                  WHERE username = 'MixedCase'",
            )
            .await;
        let v = env.verify();
        v.assert_failed_without_secrets(&env.secrets().await);
        assert_eq!(v.count("users", "different"), 1);
        let ex = v.example("users", "different", &["@MixedCase:example.com"]);
        let columns: Vec<&str> = ex["differences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["column"].as_str().unwrap())
            .collect();
        assert!(columns.contains(&"created_at"), "{columns:?}");
        assert_eq!(ex["differences"][0]["expected"], "2021-05-03T00:00:00Z");
        assert_eq!(ex["differences"][0]["actual"], "2021-05-03T01:00:00Z");
        assert_only_problems_in(&v, &["users"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_ulid_time_is_named() {
    for schema in schemas() {
        let env = Env::migrated(schema).await;
        // Zero the 48-bit time part (the first 12 hex digits) of grace's token id.
        env.mas
            .exec(
                "UPDATE compat_access_tokens \
                    SET compat_access_token_id = \
                        ('00000000-0000' || substr(compat_access_token_id::text, 14))::uuid \
                  WHERE access_token = 'syt_Z3JhY2U_SokRoEXRkGQBnvxPAjGR_1SuUND'",
            )
            .await;
        let v = env.verify();
        v.assert_failed_without_secrets(&env.secrets().await);
        assert_eq!(v.count("compat_access_tokens", "different"), 1);
        let ex = v.example(
            "compat_access_tokens",
            "different",
            &["syt_…", "@grace:example.com", "GRACEPC"],
        );
        assert_eq!(
            ex["differences"][0]["column"],
            "compat_access_token_id (ULID time)"
        );
        assert_eq!(ex["differences"][0]["actual"], "1970-01-01T00:00:00Z");
        assert_only_problems_in(&v, &["compat_access_tokens"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_the_mapping_skips_is_extra_with_the_reason() {
    let env = Env::migrated(Schema::Project).await;
    // The deactivated user's token, which the migration skips, smuggled into alice's session.
    env.mas
        .exec(
            "INSERT INTO compat_access_tokens \
                 (compat_access_token_id, compat_session_id, access_token, created_at) \
             SELECT '01890000-0000-7000-8000-000000000002', s.compat_session_id, \
                    'syt_ZXJpbg_MMsciPJQOinZmcALNNSk_0prdi7', now() \
               FROM compat_sessions s WHERE s.device_id = 'ALICEPHONE'",
        )
        .await;
    let v = env.verify();
    v.assert_failed_without_secrets(&env.secrets().await);
    assert_eq!(v.count("compat_access_tokens", "extra"), 1);
    let ex = v.example(
        "compat_access_tokens",
        "extra",
        &["syt_…", "@alice:example.com"],
    );
    assert!(
        ex["note"].as_str().unwrap().contains("deactivated"),
        "{ex:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_database_is_exit_1() {
    let env = Env::new(Schema::Project).await;
    let out = env.run(&[
        "verify",
        "--mas-database-uri",
        "postgresql://postgres@127.0.0.1:1/nothing",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Error"));
}

/// Every entity not listed agrees completely.
fn assert_only_problems_in(v: &Verified, entities: &[&str]) {
    for (entity, _) in EXPECTED_ROWS {
        if entities.contains(&entity) {
            continue;
        }
        for field in ["different", "missing", "extra"] {
            assert_eq!(v.count(entity, field), 0, "{entity}.{field}:\n{}", v.text);
        }
    }
}
