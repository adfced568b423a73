//! `syn2mas check` against real throwaway databases, for every schema in `schemas()`:
//!
//! * every data/database check fires on a database (or config) made to trigger it, with the
//!   expected id, severity, table and count, and nothing else fires: the clean fixture only has
//!   its two documented warnings (1 guest, 2 non-email threepids);
//! * check changes nothing (catalogue, row counts and a checksum of every row, before/after);
//! * check takes no lock that blocks a writer, and ignores uncommitted rows;
//! * `--json` output of the real binary validates against `src/check/report.schema.json`.
//!
//! Config-only checks are unit tests in `src/check/config.rs`.

mod common;

use common::{Schema, TestDb, schemas, syn2mas_bin, write_configs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use syn2mas::check::{self, CheckInputs, MatchedBy, ProviderStatus, Report, Severity};
use syn2mas::config::{MasConfig, SynapseConfig, SynapseOidcProvider, load_mas, load_synapse};
use syn2mas::db::ConnectOptions;
use tempfile::TempDir;

/// (id, table, count) of one finding.
type Expect = (&'static str, Option<&'static str>, u64);

/// What the clean fixture (fixtures/synapse/data.sql) reports: its documented warnings.
const BASELINE: &[Expect] = &[
    ("W-guests", Some("users"), 1),
    ("W-non-email-threepids", Some("user_threepids"), 2),
];

/// Two test databases, config files pointing at them, and the loaded configs (tests mutate
/// the loaded configs to trigger config-dependent checks).
struct Setup {
    synapse: TestDb,
    mas: TestDb,
    syn_cfg: SynapseConfig,
    mas_cfg: MasConfig,
    homeserver_yaml: PathBuf,
    mas_yaml: PathBuf,
    _dir: TempDir,
}

impl Setup {
    async fn new(synapse: TestDb, mas: TestDb) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let (homeserver_yaml, mas_yaml) = write_configs(dir.path(), &synapse, &mas);
        let syn_cfg =
            load_synapse(std::slice::from_ref(&homeserver_yaml)).expect("homeserver.yaml");
        let mas_cfg = load_mas(std::slice::from_ref(&mas_yaml)).expect("mas.yaml");
        Setup {
            synapse,
            mas,
            syn_cfg,
            mas_cfg,
            homeserver_yaml,
            mas_yaml,
            _dir: dir,
        }
    }

    /// The fixtures plus extra SQL run on each side (empty string: nothing).
    async fn with_sql(schema: Schema, synapse_sql: &str, mas_sql: &str) -> Setup {
        let s = Setup::new(TestDb::synapse(schema).await, TestDb::mas(schema).await).await;
        if !synapse_sql.is_empty() {
            s.synapse.exec(synapse_sql).await;
        }
        if !mas_sql.is_empty() {
            s.mas.exec(mas_sql).await;
        }
        s
    }

    async fn with_bad(schema: Schema, bad: &str) -> Setup {
        let file = format!("fixtures/synapse/bad/{bad}.sql");
        Setup::new(
            TestDb::synapse_with(schema, &[&file]).await,
            TestDb::mas(schema).await,
        )
        .await
    }

    async fn check(&self) -> Report {
        self.run(false).await
    }

    async fn run(&self, ignore_missing_auth_providers: bool) -> Report {
        let synapse_db = self.syn_cfg.database.clone().expect("database section");
        check::run(&CheckInputs {
            synapse: &self.syn_cfg,
            mas: &self.mas_cfg,
            synapse_db: &synapse_db,
            mas_db: &self.mas_cfg.database,
            ignore_missing_auth_providers,
            scope: check::Scope::Full,
            progress: &syn2mas::progress::Progress::hidden(),
            report: None,
            other_sessions: false,
        })
        .await
        .unwrap_or_else(|e| panic!("check failed: {e:#}"))
    }
}

fn options_for(db: &TestDb) -> ConnectOptions {
    ConnectOptions::from_uri(&db.uri())
        .expect("test uri")
        .with_libpq_env()
}

fn sorted(mut v: Vec<(String, Option<String>, u64)>) -> Vec<(String, Option<String>, u64)> {
    v.sort();
    v
}

fn owned(list: &[Expect]) -> Vec<(String, Option<String>, u64)> {
    list.iter()
        .map(|(id, t, n)| (id.to_string(), t.map(str::to_owned), *n))
        .collect()
}

/// Asserts the report holds exactly `expected` (plus the baseline when `baseline`), each with
/// the severity its id implies, and the exit code that follows.
fn assert_findings(report: &Report, baseline: bool, expected: &[Expect], ctx: &str) {
    let mut want = owned(expected);
    if baseline {
        want.extend(owned(BASELINE));
    }
    let got: Vec<_> = report
        .findings
        .iter()
        .map(|f| (f.id.clone(), f.table.clone(), f.count))
        .collect();
    assert_eq!(sorted(got), sorted(want.clone()), "{ctx}: findings differ");
    for f in &report.findings {
        let severity = if f.id.starts_with("E-") {
            Severity::Error
        } else {
            Severity::Warning
        };
        assert_eq!(f.severity, severity, "{ctx}: {}", f.id);
        assert!(f.examples.len() <= 5, "{ctx}: {}", f.id);
        assert!(!f.fix.is_empty(), "{ctx}: {}", f.id);
    }
    let code = if want.iter().any(|(id, _, _)| id.starts_with("E-")) {
        10
    } else if want.is_empty() {
        0
    } else {
        11
    };
    assert_eq!(report.exit_code(), code, "{ctx}: exit code");
}

fn finding<'a>(report: &'a Report, id: &str, table: Option<&str>) -> &'a check::Finding {
    report
        .findings
        .iter()
        .find(|f| f.id == id && f.table.as_deref() == table)
        .unwrap_or_else(|| panic!("no {id} ({table:?}) in {:#?}", report.findings))
}

// ------------------------------------------------------------------------------------------------
// Clean fixture
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn clean_fixture_reports_only_its_documented_warnings() {
    for schema in schemas() {
        let s = Setup::with_sql(schema, "", "").await;
        let r = s.check().await;
        assert_findings(&r, true, &[], &format!("{schema}"));
        let sides: Vec<_> = r.databases.iter().map(|d| d.side.as_str()).collect();
        assert_eq!(sides, ["synapse", "mas"]);
        assert_eq!(r.databases[0].dbname, s.synapse.name);
        assert_eq!(r.databases[1].dbname, s.mas.name);
        assert_eq!(r.providers.len(), 1, "{schema}");
        let google = &r.providers[0];
        assert_eq!(
            (google.auth_provider.as_str(), google.rows, google.status),
            ("oidc-google", 4, ProviderStatus::Mapped)
        );
        let mas = google.mas.as_ref().expect("mapped provider");
        assert_eq!(mas.id, common::GOOGLE_PROVIDER_ULID);
        assert_eq!(
            (mas.in_database, mas.matched_by),
            (Some(true), MatchedBy::SynapseIdpId)
        );
        let plan = r.plan.as_ref().expect("plan");
        let users = plan
            .entities
            .iter()
            .find(|e| e.entity == "users")
            .expect("users plan");
        assert_eq!(users.read, 13, "{schema}");
    }
}

#[tokio::test]
async fn a_fully_clean_database_exits_zero_with_the_success_line() {
    for schema in schemas() {
        let s = Setup::with_sql(
            schema,
            "DELETE FROM devices WHERE user_id IN (SELECT name FROM users WHERE is_guest <> 0); \
             DELETE FROM users WHERE is_guest <> 0; \
             DELETE FROM user_threepids WHERE medium <> 'email';",
            "",
        )
        .await;
        let r = s.check().await;
        assert_findings(&r, false, &[], &format!("{schema}"));
        let mut text = Vec::new();
        r.render_human(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.trim_end()
                .ends_with("Check completed successfully with no errors or warnings."),
            "{text}"
        );
        assert!(text.contains(&format!("dbname={}", s.mas.name)), "{text}");
    }
}

// ------------------------------------------------------------------------------------------------
// Synapse data: the bad fixtures
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn each_bad_fixture_fires_exactly_its_check() {
    let cases: &[(&str, &[Expect])] = &[
        (
            "wrong_server_name",
            &[
                ("E-server-name", Some("users"), 1),
                ("E-server-name", Some("user_threepids"), 1),
                ("E-server-name", Some("access_tokens"), 1),
            ],
        ),
        ("null_name", &[("E-null-user-fields", Some("users"), 1)]),
        (
            "oauth_delegated",
            &[("E-oauth-delegated", Some("user_external_ids"), 1)],
        ),
        (
            "unmapped_provider",
            &[("E-unknown-provider", Some("user_external_ids"), 1)],
        ),
        (
            "token_on_hidden_device",
            &[("W-token-hidden-device", Some("access_tokens"), 1)],
        ),
        (
            "non_bcrypt_hash",
            &[("W-non-bcrypt-hashes", Some("users"), 1)],
        ),
    ];
    for schema in schemas() {
        for (bad, expected) in cases {
            let s = Setup::with_bad(schema, bad).await;
            let r = s.check().await;
            assert_findings(&r, true, expected, &format!("{schema}/{bad}"));
        }
    }
}

#[tokio::test]
async fn bad_fixture_details_name_the_rows_and_the_fix() {
    for schema in schemas() {
        let r = Setup::with_bad(schema, "wrong_server_name")
            .await
            .check()
            .await;
        for table in ["users", "user_threepids", "access_tokens"] {
            let f = finding(&r, "E-server-name", Some(table));
            assert_eq!(f.examples, ["@bob:other.example"], "{schema}/{table}");
            assert!(f.problem.contains("example.com"), "{}", f.problem);
        }

        let r = Setup::with_bad(schema, "oauth_delegated")
            .await
            .check()
            .await;
        let f = finding(&r, "E-oauth-delegated", Some("user_external_ids"));
        assert!(
            f.fix
                .contains("DELETE FROM user_external_ids WHERE auth_provider = 'oauth-delegated';"),
            "{}",
            f.fix
        );

        let r = Setup::with_bad(schema, "non_bcrypt_hash")
            .await
            .check()
            .await;
        let f = finding(&r, "W-non-bcrypt-hashes", Some("users"));
        assert_eq!(f.examples, ["@imported:example.com"]);
        let json = r.to_json().to_string();
        assert!(!json.contains("$6$"), "a hash leaked into the report");

        let r = Setup::with_bad(schema, "token_on_hidden_device")
            .await
            .check()
            .await;
        let f = finding(&r, "W-token-hidden-device", Some("access_tokens"));
        assert!(f.problem.contains("skips"), "{}", f.problem);
        assert!(!r.to_json().to_string().contains("syt_"), "a token leaked");
    }
}

#[tokio::test]
async fn unknown_provider_is_a_warning_with_the_flag() {
    for schema in schemas() {
        let s = Setup::with_bad(schema, "unmapped_provider").await;
        let r = s.run(true).await;
        assert_findings(
            &r,
            true,
            &[("W-unknown-provider", Some("user_external_ids"), 1)],
            &format!("{schema}"),
        );
        let f = finding(&r, "W-unknown-provider", Some("user_external_ids"));
        assert_eq!(
            f.examples,
            ["@grace:example.com"],
            "the users, never the subject"
        );
        let gitlab = r
            .providers
            .iter()
            .find(|p| p.auth_provider == "oidc-gitlab")
            .unwrap();
        assert_eq!(gitlab.status, ProviderStatus::Unknown);
    }
}

#[tokio::test]
async fn provider_known_to_synapse_but_not_mapped_in_mas_is_unmapped() {
    for schema in schemas() {
        let mut s = Setup::with_bad(schema, "unmapped_provider").await;
        s.syn_cfg.oidc_providers.push(SynapseOidcProvider {
            auth_provider: "oidc-gitlab".into(),
            idp_id: Some("gitlab".into()),
            issuer: Some("https://gitlab.example.com".into()),
        });
        let r = s.check().await;
        assert_findings(
            &r,
            true,
            &[("E-unmapped-provider", Some("user_external_ids"), 1)],
            &format!("{schema}"),
        );
        let f = finding(&r, "E-unmapped-provider", Some("user_external_ids"));
        assert!(f.problem.contains("synapse_idp_id"), "{}", f.problem);
        assert!(f.problem.contains("not by issuer"), "{}", f.problem);
        assert!(
            f.problem.contains("https://gitlab.example.com"),
            "{}",
            f.problem
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Synapse data: rows made by SQL
// ------------------------------------------------------------------------------------------------

const USER_COLUMNS: &str = "INSERT INTO users (name, password_hash, creation_ts, admin, is_guest, appservice_id, deactivated, locked) VALUES";

#[tokio::test]
async fn synapse_data_checks_fire_on_rows_made_to_trigger_them() {
    let colon =
        format!("{USER_COLUMNS} ('@odd:name:example.com', NULL, 1700000000, 0, 0, NULL, 0, false)");
    let null_ts = format!("{USER_COLUMNS} ('@nots:example.com', NULL, NULL, 0, 0, NULL, 0, false)");
    let cases: Vec<(&str, String, Vec<Expect>)> = vec![
        ("localpart colon", colon, vec![("E-localpart-colon", Some("users"), 1)]),
        ("null creation_ts", null_ts, vec![("E-null-user-fields", Some("users"), 1)]),
        (
            "appservice colon with a device",
            "INSERT INTO devices (user_id, device_id, hidden) VALUES ('@irc_a:b:example.com', 'IRCA', false)".into(),
            vec![("W-appservice-colon", Some("devices"), 1)],
        ),
        (
            // A visible device, a threepid and a device token of a user that does not exist are
            // orphans; its hidden device and its puppet token are skipped before that matters.
            "orphans",
            "INSERT INTO devices (user_id, device_id, hidden) VALUES \
               ('@ghost:example.com', 'GHOST', false), ('@ghost:example.com', 'GHOSTKEY', true); \
             INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at) VALUES \
               ('@ghost:example.com', 'email', 'ghost@example.com', 1, 1); \
             INSERT INTO access_tokens (id, user_id, device_id, token, puppets_user_id) VALUES \
               (960, '@ghost:example.com', NULL, 'syt_Z2hvc3Q_puppet', '@admin:example.com'), \
               (961, '@ghost:example.com', 'GHOST', 'syt_Z2hvc3Q_device', NULL);"
                .into(),
            vec![
                ("E-orphan-rows", Some("devices"), 1),
                ("E-orphan-rows", Some("user_threepids"), 1),
                ("E-orphan-rows", Some("access_tokens"), 1),
            ],
        ),
        (
            "duplicate tokens",
            "ALTER TABLE access_tokens DROP CONSTRAINT access_tokens_token_key; \
             ALTER TABLE refresh_tokens DROP CONSTRAINT refresh_tokens_token_key; \
             INSERT INTO access_tokens (id, user_id, device_id, token, refresh_token_id) VALUES \
               (970, '@alice:example.com', 'ALICEPHONE', (SELECT token FROM access_tokens WHERE id = 1), NULL), \
               (971, '@alice:example.com', 'ALICEPHONE', 'syt_YWxpY2U_second_on_rt1', 1); \
             INSERT INTO refresh_tokens (id, user_id, device_id, token) VALUES \
               (7, '@alice:example.com', 'ALICEPHONE', (SELECT token FROM refresh_tokens WHERE id = 1));"
                .into(),
            vec![
                ("E-duplicate-tokens", Some("access_tokens.token"), 1),
                ("E-duplicate-tokens", Some("refresh_tokens.token"), 1),
                ("E-duplicate-tokens", Some("access_tokens.refresh_token_id"), 1),
            ],
        ),
    ];
    for schema in schemas() {
        for (name, sql, expected) in &cases {
            let s = Setup::with_sql(schema, sql, "").await;
            let r = s.check().await;
            assert_findings(&r, true, expected, &format!("{schema}/{name}"));
            let json = r.to_json().to_string();
            assert!(
                !json.contains("syt_") && !json.contains("syr_"),
                "{name}: token leaked"
            );
        }
    }
}

#[tokio::test]
async fn old_or_foreign_synapse_schema_stops_the_data_checks() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "no users.locked",
            "ALTER TABLE users DROP COLUMN locked",
            "users.locked",
        ),
        (
            "schema_version 79",
            "UPDATE schema_version SET version = 79",
            "schema_version is 79",
        ),
    ];
    for schema in schemas() {
        for (name, sql, needle) in cases {
            let s = Setup::with_sql(schema, sql, "").await;
            let r = s.check().await;
            assert_findings(&r, false, &[("E-synapse-schema-old", None, 1)], name);
            let f = finding(&r, "E-synapse-schema-old", None);
            assert!(f.problem.contains(needle), "{}", f.problem);
            assert!(f.fix.contains("1.91.0"), "{}", f.fix);
            assert!(r.plan.is_none() && r.providers.is_empty(), "{name}");
        }

        // Synapse's side pointed at the MAS database: five of the six tables are missing.
        let mut s = Setup::with_sql(schema, "", "").await;
        s.syn_cfg.database = Some(options_for(&s.mas));
        let r = s.check().await;
        assert_findings(
            &r,
            false,
            &[("E-synapse-not-synapse", None, 5)],
            "synapse = MAS db",
        );
        assert!(
            finding(&r, "E-synapse-not-synapse", None)
                .problem
                .contains("actually Synapse")
        );
    }
}

#[tokio::test]
async fn mas_homeserver_is_the_server_name_rows_are_checked_against() {
    for schema in schemas() {
        let mut s = Setup::with_sql(schema, "", "").await;
        s.mas_cfg.homeserver = "other.example".into();
        let r = s.check().await;
        assert_findings(
            &r,
            true,
            &[
                ("E-server-name-config", None, 1),
                ("E-server-name", Some("users"), 13),
                ("E-server-name", Some("user_threepids"), 7),
                ("E-server-name", Some("user_external_ids"), 4),
                ("E-server-name", Some("devices"), 14),
                ("E-server-name", Some("access_tokens"), 16),
                ("E-server-name", Some("refresh_tokens"), 6),
            ],
            &format!("{schema}"),
        );
    }
}

// ------------------------------------------------------------------------------------------------
// MAS database
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn mas_database_checks_fire_on_databases_made_to_trigger_them() {
    let restore_table = "(order_key serial PRIMARY KEY, table_name text NOT NULL, name text NOT NULL, definition text NOT NULL)";
    let cases: Vec<(&str, String, Vec<Expect>)> = vec![
        (
            "not empty",
            "INSERT INTO users (user_id, username, created_at) VALUES (gen_random_uuid(), 'early', now())".into(),
            vec![("E-mas-not-empty", Some("users"), 1)],
        ),
        (
            "schema old",
            "DELETE FROM _sqlx_migrations WHERE version = 20260720134722".into(),
            vec![("E-mas-schema-old", None, 1)],
        ),
        (
            "schema newer",
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (20990101000000, 'future', true, '\\x00', 1)"
                .into(),
            vec![("W-mas-schema-newer", None, 1)],
        ),
        (
            "schema failed",
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (20990101000001, 'broken', false, '\\x00', 1)"
                .into(),
            vec![("E-mas-schema-failed", None, 1)],
        ),
        (
            "pg_trgm missing",
            "DROP EXTENSION pg_trgm CASCADE".into(),
            vec![("E-pg-trgm-missing", None, 1)],
        ),
        (
            "our interrupted run (earlier build, in MAS's schema)",
            "CREATE TABLE syn2mas_new_users (LIKE users)".into(),
            vec![("W-interrupted-run", None, 1)],
        ),
        (
            "our interrupted run (shadow schema)",
            "CREATE SCHEMA syn2mas_shadow; CREATE TABLE syn2mas_shadow.users (LIKE users); \
             CREATE TABLE syn2mas_shadow.user_emails (LIKE user_emails)"
                .into(),
            vec![("W-interrupted-run", None, 2)],
        ),
        (
            "upstream in progress",
            format!(
                "ALTER TABLE users RENAME TO syn2mas__users; \
                 CREATE TABLE syn2mas_restore_constraints {restore_table}; \
                 CREATE TABLE syn2mas_restore_indices {restore_table};"
            ),
            vec![("E-upstream-in-progress", None, 3)],
        ),
    ];
    for schema in schemas() {
        for (name, sql, expected) in &cases {
            let s = Setup::with_sql(schema, "", sql).await;
            let r = s.check().await;
            assert_findings(&r, true, expected, &format!("{schema}/{name}"));
        }
    }
}

#[tokio::test]
async fn mas_findings_say_which_database_and_what_to_do() {
    for schema in schemas() {
        let s = Setup::with_sql(
            schema,
            "",
            "INSERT INTO users (user_id, username, created_at) VALUES (gen_random_uuid(), 'early', now())",
        )
        .await;
        let r = s.check().await;
        let f = finding(&r, "E-mas-not-empty", Some("users"));
        assert!(
            f.problem.contains(&format!("dbname={}", s.mas.name)),
            "{}",
            f.problem
        );
        assert!(f.problem.contains("port="), "{}", f.problem);

        let s = Setup::with_sql(
            schema,
            "",
            "DELETE FROM _sqlx_migrations WHERE version = 20260720134722",
        )
        .await;
        let f = finding(&s.check().await, "E-mas-schema-old", None).clone();
        assert!(f.fix.contains("mas-cli database migrate"), "{}", f.fix);

        let s = Setup::with_sql(schema, "", "CREATE TABLE syn2mas_new_users (LIKE users)").await;
        let f = finding(&s.check().await, "W-interrupted-run", None).clone();
        assert!(
            f.problem.contains("drops these automatically"),
            "{}",
            f.problem
        );
    }
}

#[tokio::test]
async fn a_database_that_is_not_mas_is_named() {
    for schema in schemas() {
        // MAS's side pointed at the Synapse database: it has `users`, but nothing else of MAS.
        let mut s = Setup::with_sql(schema, "", "").await;
        s.mas_cfg.database = options_for(&s.synapse);
        let r = s.check().await;
        assert_findings(
            &r,
            true,
            &[("E-mas-not-mas", None, 8)],
            &format!("{schema}"),
        );
        let f = finding(&r, "E-mas-not-mas", None);
        assert!(
            f.problem.contains("is this actually a MAS database?"),
            "{}",
            f.problem
        );
        assert!(f.problem.contains(&s.synapse.name), "{}", f.problem);
        assert_eq!(r.providers[0].mas.as_ref().unwrap().in_database, None);
    }
}

// ------------------------------------------------------------------------------------------------
// Auth providers against MAS's config and database
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn mapped_provider_must_be_enabled_and_in_mas_database() {
    for schema in schemas() {
        let mut s = Setup::with_sql(schema, "", "").await;
        s.mas_cfg.providers[0].enabled = false;
        let r = s.check().await;
        assert_findings(
            &r,
            true,
            &[("E-provider-disabled", Some("user_external_ids"), 4)],
            "disabled",
        );

        let s = Setup::new(
            TestDb::synapse(schema).await,
            TestDb::mas_empty(schema).await,
        )
        .await;
        let r = s.check().await;
        assert_findings(
            &r,
            true,
            &[("E-provider-not-in-db", Some("user_external_ids"), 4)],
            "not in db",
        );
        assert!(
            finding(&r, "E-provider-not-in-db", Some("user_external_ids"))
                .fix
                .contains("mas-cli config sync")
        );
        assert_eq!(r.providers[0].status, ProviderStatus::NotInDatabase);
    }
}

#[tokio::test]
async fn provider_without_synapse_idp_id_gets_an_issuer_suggestion() {
    for schema in schemas() {
        let mut s = Setup::with_sql(schema, "", "").await;
        s.mas_cfg.providers[0].synapse_idp_id = None;
        let r = s.check().await;
        assert_findings(
            &r,
            true,
            &[("E-unmapped-provider", Some("user_external_ids"), 4)],
            "unmapped",
        );
        let f = finding(&r, "E-unmapped-provider", Some("user_external_ids"));
        assert!(
            f.fix.contains("synapse_idp_id: \"oidc-google\""),
            "{}",
            f.fix
        );
        assert!(f.fix.contains(common::GOOGLE_PROVIDER_ULID), "{}", f.fix);
        let p = &r.providers[0];
        assert_eq!(p.status, ProviderStatus::Unmapped);
        assert_eq!(p.mas.as_ref().unwrap().matched_by, MatchedBy::Issuer);
        assert_eq!(
            p.synapse.as_ref().unwrap().issuer.as_deref(),
            Some("https://accounts.google.com")
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Read-only, non-blocking
// ------------------------------------------------------------------------------------------------

/// Catalogue of the database (relations, columns, constraints, indexes, extensions, sequences)
/// plus, per table, its row count and an md5 over every row.
async fn snapshot(db: &TestDb) -> Vec<String> {
    let c = db.client().await;
    let catalogue = "SELECT x FROM ( \
        SELECT 'rel ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text || ' ' || c.relnatts || ' ' || \
               coalesce(pg_get_indexdef(c.oid), '') AS x \
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
        UNION ALL SELECT 'col ' || a.attrelid::regclass::text || '.' || a.attname || ' ' || \
               format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull \
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped \
        UNION ALL SELECT 'con ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid) \
          FROM pg_constraint WHERE connamespace = 'public'::regnamespace \
        UNION ALL SELECT 'ext ' || extname || ' ' || extversion FROM pg_extension \
        UNION ALL SELECT 'seq ' || sequencename || ' ' || coalesce(last_value::text, '-') FROM pg_sequences \
        ) s ORDER BY x";
    let mut out: Vec<String> = c
        .query(catalogue, &[])
        .await
        .expect("catalogue")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let tables: Vec<String> = c
        .query(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
             WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in tables {
        let sql = format!(
            "SELECT count(*)::text || ' ' || md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) FROM {t} x"
        );
        let row = c.query_one(&sql, &[]).await.expect("table checksum");
        out.push(format!("rows {t} {}", row.get::<_, String>(0)));
    }
    out
}

#[tokio::test]
async fn check_leaves_both_databases_unchanged() {
    for schema in schemas() {
        // A dirty setup, so every example query and the plan run too.
        let s = Setup::new(
            TestDb::synapse_with(
                schema,
                &[
                    "fixtures/synapse/bad/wrong_server_name.sql",
                    "fixtures/synapse/bad/oauth_delegated.sql",
                    "fixtures/synapse/bad/token_on_hidden_device.sql",
                ],
            )
            .await,
            TestDb::mas(schema).await,
        )
        .await;
        s.mas
            .exec(
                "INSERT INTO users (user_id, username, created_at) VALUES (gen_random_uuid(), 'early', now()); \
                 CREATE TABLE syn2mas_new_users (LIKE users);",
            )
            .await;
        let before = (snapshot(&s.synapse).await, snapshot(&s.mas).await);
        assert!(
            before.0.len() > 50 && before.1.len() > 50,
            "snapshot too small to mean anything"
        );
        let r = s.check().await;
        assert_eq!(r.exit_code(), 10);
        let after = (snapshot(&s.synapse).await, snapshot(&s.mas).await);
        assert_eq!(before.0, after.0, "{schema}: Synapse changed");
        assert_eq!(before.1, after.1, "{schema}: MAS changed");
    }
}

/// Lock modes held by syn2mas's sessions on `dbs`, as (locktype, mode, granted); for object
/// locks the locktype carries the catalog (`object pg_database`).
async fn syn2mas_locks(
    observer: &tokio_postgres::Client,
    dbs: &[String],
) -> Vec<(String, String, bool)> {
    observer
        .query(
            "SELECT l.locktype || coalesce(' ' || l.classid::regclass::text, ''), l.mode, l.granted \
             FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE a.application_name = 'syn2mas' AND a.datname = ANY($1)",
            &[&dbs],
        )
        .await
        .expect("pg_locks")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn check_blocks_no_writer_and_ignores_uncommitted_rows() {
    for schema in schemas() {
        let s = Arc::new(Setup::with_sql(schema, "", "").await);
        // Open transactions that inserted into `users` on both sides, held during the check.
        let syn_writer = s.synapse.client().await;
        syn_writer
            .batch_execute(&format!(
                "BEGIN; {USER_COLUMNS} ('@pending:example.com', NULL, 1700000000, 0, 1, NULL, 0, false)"
            ))
            .await
            .unwrap();
        let mas_writer = s.mas.client().await;
        mas_writer
            .batch_execute(
                "BEGIN; INSERT INTO users (user_id, username, created_at) VALUES (gen_random_uuid(), 'pending', now())",
            )
            .await
            .unwrap();

        // While check runs: watch the locks its sessions hold, and keep writing with a short
        // lock_timeout, which fails if check holds anything a writer waits for.
        let done = Arc::new(AtomicBool::new(false));
        let dbs = vec![s.synapse.name.clone(), s.mas.name.clone()];
        let observer = s.synapse.client().await;
        let watch = {
            let done = done.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    seen.extend(syn2mas_locks(&observer, &dbs).await);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                seen
            })
        };
        let writer = {
            let done = done.clone();
            let s = s.clone();
            tokio::spawn(async move {
                let c = s.synapse.client().await;
                let mut writes = 0u32;
                while !done.load(Ordering::Relaxed) || writes == 0 {
                    c.batch_execute(&format!(
                        "BEGIN; SET LOCAL lock_timeout = '2s'; \
                         {USER_COLUMNS} ('@w{writes}:example.com', NULL, 1700000000, 0, 0, NULL, 0, false); \
                         UPDATE devices SET last_seen = last_seen WHERE user_id = '@alice:example.com'; \
                         ROLLBACK"
                    ))
                    .await
                    .unwrap_or_else(|e| panic!("a writer was blocked by check: {}", common::pg_error(&e)));
                    writes += 1;
                }
                writes
            })
        };
        let mut reports = Vec::new();
        for _ in 0..3 {
            let r = tokio::time::timeout(Duration::from_secs(60), s.check())
                .await
                .expect("check waited on a writer's transaction");
            reports.push(r);
        }
        done.store(true, Ordering::Relaxed);
        let seen = watch.await.unwrap();
        assert!(writer.await.unwrap() > 0);
        for r in &reports {
            // The uncommitted rows are invisible: no extra guest, MAS still empty.
            assert_findings(r, true, &[], &format!("{schema}: uncommitted rows"));
        }
        for (locktype, mode, granted) in &seen {
            assert!(
                *granted,
                "{schema}: check waited for a {locktype} {mode} lock"
            );
            let harmless = match locktype.as_str() {
                // What every SELECT takes; only DDL-grade locks (ACCESS EXCLUSIVE) wait for it.
                "relation" => mode == "AccessShareLock",
                // Every transaction's lock on its own virtual id.
                "virtualxid" => mode == "ExclusiveLock",
                // Taken by PostgreSQL itself while a session starts up, so that the database
                // is not dropped under it; conflicts only with DROP/ALTER DATABASE.
                "object pg_database" => mode == "RowExclusiveLock",
                _ => false,
            };
            assert!(harmless, "{schema}: check held {locktype} {mode}");
        }
        syn_writer.batch_execute("ROLLBACK").await.unwrap();
        mas_writer.batch_execute("ROLLBACK").await.unwrap();
    }
}

// ------------------------------------------------------------------------------------------------
// The binary and --json
// ------------------------------------------------------------------------------------------------

fn validator() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(check::report::JSON_SCHEMA).expect("report.schema.json is JSON");
    jsonschema::validator_for(&schema).expect("report.schema.json is a valid JSON Schema")
}

fn assert_valid(v: &jsonschema::Validator, doc: &serde_json::Value, ctx: &str) {
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{ctx}: {errors:#?}\n{doc:#}");
}

#[tokio::test]
async fn json_output_of_the_binary_matches_the_schema_and_the_exit_code() {
    let v = validator();
    for schema in schemas() {
        let s = Setup::new(
            TestDb::synapse_with(
                schema,
                &[
                    "fixtures/synapse/bad/unmapped_provider.sql",
                    "fixtures/synapse/bad/non_bcrypt_hash.sql",
                ],
            )
            .await,
            TestDb::mas(schema).await,
        )
        .await;
        let out = std::process::Command::new(syn2mas_bin())
            .arg("--synapse-config")
            .arg(&s.homeserver_yaml)
            .arg("--config")
            .arg(&s.mas_yaml)
            .args(["check", "--json", "--color", "never"])
            .output()
            .expect("run syn2mas");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("stdout is not one JSON document ({e}):\n{stdout}\nstderr:\n{stderr}")
        });
        assert_valid(&v, &doc, &format!("{schema} binary"));
        assert_eq!(out.status.code(), Some(10), "{stderr}");
        assert_eq!(doc["exit_code"], 10);
        assert_eq!(doc["errors"][0]["id"], "E-unknown-provider");
        assert!(doc["plan"]["entities"].is_array());
        for text in [&stdout, &stderr] {
            for secret in [
                "$2b$12$",
                "$2a$10$",
                "$6$rtEj",
                "syt_",
                "syr_",
                "demo-pepper",
                "MDAx",
            ] {
                assert!(!text.contains(secret), "{secret} leaked:\n{text}");
            }
        }
        for needle in [
            "===== Errors =====",
            "[E-unknown-provider]",
            "===== Warnings =====",
            "===== Auth providers (user_external_ids) =====",
            "===== Migration plan =====",
            &format!("dbname={}", s.synapse.name),
        ] {
            assert!(
                stderr.contains(needle),
                "{needle:?} missing from:\n{stderr}"
            );
        }
    }
}

#[tokio::test]
async fn json_of_unusual_reports_matches_the_schema() {
    let v = validator();
    for schema in schemas() {
        let r = Setup::with_sql(schema, "ALTER TABLE users DROP COLUMN locked", "")
            .await
            .check()
            .await;
        assert!(r.to_json()["plan"].is_null());
        assert_valid(&v, &r.to_json(), "no plan");

        let mut s = Setup::with_sql(schema, "", "").await;
        s.mas_cfg.database = options_for(&s.synapse);
        s.mas_cfg.providers[0].synapse_idp_id = None;
        assert_valid(&v, &s.check().await.to_json(), "not MAS, unmapped provider");

        let r = Setup::with_sql(
            schema,
            "DELETE FROM devices WHERE user_id IN (SELECT name FROM users WHERE is_guest <> 0); \
             DELETE FROM users WHERE is_guest <> 0; DELETE FROM user_threepids WHERE medium <> 'email';",
            "",
        )
        .await
        .check()
        .await;
        assert_eq!(r.to_json()["exit_code"], 0);
        assert_valid(&v, &r.to_json(), "clean");
    }
}
