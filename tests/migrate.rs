//! `syn2mas migrate` end to end on real throwaway databases: the rows produced for every edge
//! case of the fixture, the catalogue after the swap, dry-run, and interruptions at each stage.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{GOOGLE_PROVIDER_UUID, Schema, TestDb, schemas};

/// A fixed "now" for runs whose results are compared (2026-01-01T00:00:00Z).
const NOW_MS: i64 = 1_767_225_600_000;

const TARGETS: [&str; 8] = syn2mas::sink::tables::NAMES;

use common::Fixture as Env;

impl Env {
    async fn new(schema: Schema) -> Env {
        Self::with(TestDb::synapse(schema).await, schema).await
    }

    async fn with(synapse: TestDb, schema: Schema) -> Env {
        Env::of(synapse, TestDb::mas(schema).await)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = self.syn2mas(args);
        c.env("SYN2MAS_TEST_NOW_MS", NOW_MS.to_string());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run syn2mas")
    }

    fn run_with_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Output {
        self.command(args)
            .envs(vars.iter().copied())
            .output()
            .expect("run syn2mas")
    }

    fn migrate(&self) -> Output {
        let out = self.run(&["migrate", "--allow-warnings", "--seed", "1", "--json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "migrate failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let client = self.mas.client().await;
        let rows = client.simple_query(sql).await.unwrap();
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect()
    }

    async fn col(&self, sql: &str) -> Vec<String> {
        self.rows(sql)
            .await
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_else(|| "NULL".into()))
            .collect()
    }

    /// Every row of every target table as text, sorted: two equal dumps are equal databases.
    async fn dump(&self) -> BTreeMap<&'static str, Vec<String>> {
        let mut out = BTreeMap::new();
        for t in TARGETS {
            out.insert(
                t,
                self.col(&format!("SELECT x::text FROM {t} x ORDER BY 1"))
                    .await,
            );
        }
        out
    }

    async fn counts(&self) -> Vec<i64> {
        let mut v = Vec::new();
        for t in TARGETS {
            v.push(self.mas.count(t).await);
        }
        v
    }

    /// The whole schema's catalogue: columns, indexes, constraints, relations with options,
    /// owners and grants. Equal before and after means the swap recreated MAS's definitions.
    async fn catalogue(&self) -> Vec<String> {
        self.col(CATALOGUE).await
    }

    async fn shadow_tables(&self) -> Vec<String> {
        self.mas.leftovers().await
    }
}

const CATALOGUE: &str = "
SELECT 'col ' || c.relname || ' ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || ' notnull=' || a.attnotnull || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
   AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'idx ' || tablename || ' ' || indexdef FROM pg_indexes WHERE schemaname = current_schema()
UNION ALL
SELECT 'con ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
       || ' validated=' || convalidated
  FROM pg_constraint WHERE connamespace = current_schema()::regnamespace
UNION ALL
SELECT 'rel ' || relname || ' ' || relkind::text || ' owner=' || pg_get_userbyid(relowner)
       || ' opts=' || coalesce(array_to_string(reloptions, ','), '') || ' acl=' || coalesce(relacl::text, '')
  FROM pg_class WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'i')
ORDER BY 1";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Asserts one entity's line of the summary: read, migrated and skips by reason.
fn assert_entity(
    summary: &serde_json::Value,
    entity: &str,
    read: u64,
    migrated: u64,
    skipped: &[(&str, u64)],
) {
    let e = summary["migrate"]["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entity"] == entity)
        .unwrap_or_else(|| panic!("no entity {entity} in {summary}"));
    assert_eq!(e["read"], read, "{entity} read");
    assert_eq!(e["migrated"], migrated, "{entity} migrated");
    let got: BTreeMap<String, u64> = e["skipped"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    let want: BTreeMap<String, u64> = skipped.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    assert_eq!(got, want, "{entity} skipped");
    assert_eq!(
        read,
        migrated + want.values().sum::<u64>(),
        "{entity}: read = migrated + skipped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_produces_the_expected_rows_for_every_edge_case() {
    for schema in schemas() {
        let env = Env::new(schema).await;
        let out = env.migrate();
        let summary = json(&out);
        assert_entity(&summary, "users", 13, 10, &[("appservice", 3)]);
        assert_entity(&summary, "user_threepids", 7, 5, &[("appservice", 2)]);
        assert_entity(&summary, "user_external_ids", 4, 3, &[("appservice", 1)]);
        assert_entity(
            &summary,
            "devices",
            14,
            9,
            &[
                ("appservice", 1),
                ("deactivated", 1),
                ("guest_device", 1),
                ("hidden", 2),
            ],
        );
        assert_entity(
            &summary,
            "access_tokens",
            16,
            10,
            &[
                ("appservice", 2),
                ("deactivated", 1),
                ("device_deleted", 1),
                ("puppet", 1),
                ("superseded", 1),
            ],
        );
        assert_entity(
            &summary,
            "refresh_tokens",
            6,
            4,
            &[("no_access_token", 1), ("superseded", 1)],
        );
        assert_eq!(summary["migrate"]["invalid_device_ips"], 1);
        check_users(&env).await;
        check_threepids_and_links(&env).await;
        check_sessions(&env).await;
        check_tokens(&env).await;
        check_ulid_times(&env).await;
    }
}

async fn check_users(env: &Env) {
    let users = env
        .rows(
            "SELECT username, extract(epoch FROM created_at)::bigint, locked_at IS NOT NULL,
                    deactivated_at IS NOT NULL, can_request_admin, is_guest,
                    coalesce(locked_at = created_at, true) AND coalesce(deactivated_at = created_at, true)
               FROM users ORDER BY username",
        )
        .await;
    let expect = [
        ("1001", "1700000000", "f", "f", "f", "t"),
        ("MixedCase", "1620000000", "f", "f", "f", "f"),
        ("admin", "1561000000", "f", "f", "t", "f"),
        ("alice", "1579000000", "f", "f", "f", "f"),
        ("carol", "1565000000", "f", "f", "t", "f"),
        ("dave", "1640000000", "f", "f", "f", "f"),
        ("erin", "1600000000", "f", "t", "f", "f"),
        ("frank", "1610000000", "f", "t", "f", "f"),
        ("grace", "1650000000", "t", "f", "f", "f"),
        ("josé", "1760000000", "f", "f", "f", "f"),
    ];
    assert_eq!(users.len(), expect.len(), "{users:?}");
    for (row, e) in users.iter().zip(expect) {
        let got: Vec<&str> = row.iter().map(|c| c.as_deref().unwrap()).collect();
        assert_eq!(got, vec![e.0, e.1, e.2, e.3, e.4, e.5, "t"], "user {}", e.0);
    }
    let passwords = env
        .rows(
            "SELECT u.username, p.hashed_password, p.version, p.created_at = u.created_at,
                    p.upgraded_from_id IS NULL
               FROM user_passwords p JOIN users u USING (user_id) ORDER BY u.username",
        )
        .await;
    let names: Vec<&str> = passwords.iter().map(|r| r[0].as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "MixedCase",
            "admin",
            "alice",
            "carol",
            "erin",
            "grace",
            "josé"
        ]
    );
    for r in &passwords {
        assert_eq!(r[2].as_deref(), Some("1"));
        assert_eq!(r[3].as_deref(), Some("t"));
        assert_eq!(r[4].as_deref(), Some("t"));
    }
    let carol = passwords
        .iter()
        .find(|r| r[0].as_deref() == Some("carol"))
        .unwrap();
    assert_eq!(
        carol[1].as_deref(),
        Some("$2a$10$z7BaOEL06Q7bN46exl7x1OP38dSqrhcgBVdlZtD/1468v8iRkOkBu"),
        "hashes are copied verbatim"
    );
}

async fn check_threepids_and_links(env: &Env) {
    let emails = env
        .rows(
            "SELECT u.username, e.email, (extract(epoch FROM e.created_at) * 1000)::bigint
               FROM user_emails e JOIN users u USING (user_id) ORDER BY e.email",
        )
        .await;
    let got: Vec<Vec<&str>> = emails
        .iter()
        .map(|r| r.iter().map(|c| c.as_deref().unwrap()).collect())
        .collect();
    assert_eq!(
        got,
        vec![
            vec!["carol", "Carol.Smith@Example.COM", "1565000500000"],
            vec!["alice", "alice@example.com", "1579000100000"],
            vec!["erin", "erin@example.org", "1600000300000"],
            vec!["josé", "jose@example.com", "1760000200000"],
        ]
    );
    let other = env
        .rows(
            "SELECT u.username, t.medium, t.address, (extract(epoch FROM t.created_at) * 1000)::bigint
               FROM user_unsupported_third_party_ids t JOIN users u USING (user_id)",
        )
        .await;
    assert_eq!(other.len(), 1);
    let o: Vec<&str> = other[0].iter().map(|c| c.as_deref().unwrap()).collect();
    assert_eq!(o, ["alice", "msisdn", "447700900123", "1590000000000"]);
    let links = env
        .rows(
            "SELECT u.username, l.subject, l.upstream_oauth_provider_id::text,
                    l.created_at = u.created_at, l.human_account_name IS NULL
               FROM upstream_oauth_links l JOIN users u USING (user_id) ORDER BY u.username",
        )
        .await;
    let got: Vec<Vec<&str>> = links
        .iter()
        .map(|r| r.iter().map(|c| c.as_deref().unwrap()).collect())
        .collect();
    assert_eq!(
        got,
        vec![
            vec![
                "alice",
                "108234567890123456789",
                GOOGLE_PROVIDER_UUID,
                "t",
                "t"
            ],
            vec![
                "dave",
                "112233445566778899001",
                GOOGLE_PROVIDER_UUID,
                "t",
                "t"
            ],
            vec![
                "frank",
                "100000000000000000042",
                GOOGLE_PROVIDER_UUID,
                "t",
                "t"
            ],
        ]
    );
}

async fn check_sessions(env: &Env) {
    let sessions = env
        .rows(
            "SELECT u.username, coalesce(s.device_id, '(none)'), coalesce(s.human_name, ''),
                    (extract(epoch FROM s.created_at) * 1000)::bigint, s.is_synapse_admin,
                    coalesce((extract(epoch FROM s.last_active_at) * 1000)::bigint::text, ''),
                    coalesce(host(s.last_active_ip), ''), coalesce(s.user_agent, ''),
                    s.finished_at IS NULL AND s.user_session_id IS NULL
               FROM compat_sessions s JOIN users u USING (user_id)
              ORDER BY 1, 2",
        )
        .await;
    let now = NOW_MS.to_string();
    let expect: Vec<[&str; 9]> = vec![
        [
            "MixedCase",
            "MIXEDDEV",
            "",
            "1763999700000",
            "f",
            "1761000000000",
            "10.0.0.5",
            "nheko/0.12.0",
            "t",
        ],
        [
            "admin",
            "ADMINDESK",
            "Admin desktop",
            "1750000000000",
            "t",
            "1764100000000",
            "::ffff:1.2.3.4",
            "Element/1.11.80 (Windows)",
            "t",
        ],
        ["alice", "(none)", "", "1700000000000", "f", "", "", "", "t"],
        [
            "alice",
            "ALICELAPTOP",
            "Alice's laptop",
            "1763900000000",
            "f",
            "1763900000000",
            "2001:db8:85a3::8a2e:370:7334",
            "Mozilla/5.0 (X11; Linux x86_64) Element/1.11.80",
            "t",
        ],
        [
            "alice",
            "ALICEPHONE",
            "Alice's phone",
            "1763000000000",
            "f",
            "1764000000000",
            "198.51.100.23",
            "Element/1.6.20 (Android 14)",
            "t",
        ],
        [
            "carol",
            "CAROLOLD",
            "Riot Web",
            &now,
            "t",
            "1566000000000",
            "",
            "Riot/0.17.9",
            "t",
        ],
        [
            "carol",
            "CAROLTAB",
            "Carol's tablet",
            &now,
            "t",
            "1700000000000",
            "",
            "",
            "t",
        ],
        [
            "dave",
            "DAVEWEB",
            "Dave's browser",
            "1672444800000",
            "f",
            "",
            "",
            "Mozilla/5.0 (Macintosh)",
            "t",
        ],
        [
            "grace",
            "GRACEPC",
            "Grace's PC",
            "1761000000000",
            "f",
            "1762000000000",
            "203.0.113.7",
            "Element/1.11.79 (Linux)",
            "t",
        ],
        [
            "josé",
            "JOSEDEV",
            "Móvil de José",
            &now,
            "f",
            "1760100000000",
            "192.0.2.200",
            "FluffyChat/1.20",
            "t",
        ],
    ];
    let got: Vec<Vec<&str>> = sessions
        .iter()
        .map(|r| r.iter().map(|c| c.as_deref().unwrap()).collect())
        .collect();
    let want: Vec<Vec<&str>> = expect.iter().map(|r| r.to_vec()).collect();
    assert_eq!(got, want);
}

async fn check_tokens(env: &Env) {
    let tokens = env
        .rows(
            "SELECT t.access_token, u.username, coalesce(s.device_id, '(none)'),
                    (extract(epoch FROM t.created_at) * 1000)::bigint,
                    coalesce((extract(epoch FROM t.expires_at) * 1000)::bigint::text, '')
               FROM compat_access_tokens t JOIN compat_sessions s USING (compat_session_id)
               JOIN users u ON u.user_id = s.user_id
              ORDER BY t.created_at, t.access_token",
        )
        .await;
    let got: Vec<Vec<String>> = tokens
        .iter()
        .map(|r| {
            let mut v: Vec<String> = r.iter().map(|c| c.clone().unwrap()).collect();
            v[0] = v[0][..16.min(v[0].len())].to_owned();
            v
        })
        .collect();
    let now = NOW_MS.to_string();
    let expect: Vec<[&str; 5]> = vec![
        [
            "syt_ZGF2ZQ_dkRXV",
            "dave",
            "DAVEWEB",
            "1672444800000",
            "1672531200000",
        ],
        ["syt_YWxpY2U_wDwZ", "alice", "(none)", "1700000000000", ""],
        [
            "syt_YWRtaW4_MiNU",
            "admin",
            "ADMINDESK",
            "1750000000000",
            "",
        ],
        [
            "syt_Z3JhY2U_SokR",
            "grace",
            "GRACEPC",
            "1761000000000",
            "1811808000000",
        ],
        [
            "syt_YWxpY2U_IlhrtBb",
            "alice",
            "ALICEPHONE",
            "1763000000000",
            "",
        ],
        [
            "syt_YWxpY2U_ZfNC",
            "alice",
            "ALICEPHONE",
            "1763000000000",
            "1763000300000",
        ],
        [
            "syt_YWxpY2U_EFWv",
            "alice",
            "ALICELAPTOP",
            "1763999000000",
            "1763999300000",
        ],
        [
            "syt_TWl4ZWRDYXNl",
            "MixedCase",
            "MIXEDDEV",
            "1763999700000",
            "1764000000000",
        ],
        [
            "syt_TWl4ZWRDYXNl",
            "MixedCase",
            "MIXEDDEV",
            "1764000000000",
            "1764000600000",
        ],
        ["MDAxOWxvY2F0aW9u", "carol", "CAROLOLD", &now, ""],
    ];
    let want: Vec<Vec<String>> = expect
        .iter()
        .map(|r| {
            let mut v: Vec<String> = r.iter().map(|s| (*s).to_owned()).collect();
            v[0] = v[0][..16.min(v[0].len())].to_owned();
            v
        })
        .collect();
    assert_eq!(got, want);
    let pairs = env
        .rows(
            "SELECT r.refresh_token, a.access_token, r.compat_session_id = a.compat_session_id,
                    r.created_at = a.created_at, r.consumed_at IS NULL
               FROM compat_refresh_tokens r
               JOIN compat_access_tokens a USING (compat_access_token_id)
              ORDER BY r.refresh_token",
        )
        .await;
    let got: Vec<Vec<&str>> = pairs
        .iter()
        .map(|r| r.iter().map(|c| c.as_deref().unwrap()).collect())
        .collect();
    assert_eq!(
        got,
        vec![
            vec![
                "syr_TWl4ZWRDYXNl_kwnNYZxyQMHKVWwbIERm_0okAwz",
                "syt_TWl4ZWRDYXNl_nTkJZyqmVyLMvisxHoiP_2Hkw3q",
                "t",
                "t",
                "t"
            ],
            vec![
                "syr_TWl4ZWRDYXNl_qkyqXcoJlHxcfuIgfZKz_2Plz7n",
                "syt_TWl4ZWRDYXNl_sSQELnyWJFwPGoQdMojB_4W4tS3",
                "t",
                "t",
                "t"
            ],
            vec![
                "syr_YWxpY2U_sQkjuhXNgnCGJmXUUtbP_1Gz0Cm",
                "syt_YWxpY2U_ZfNCrgtJYBPxCYblPMNY_26me0Y",
                "t",
                "t",
                "t"
            ],
            vec![
                "syr_YWxpY2U_yZmITEjEHxkfYSgzUjqD_2uyVoF",
                "syt_YWxpY2U_EFWvYEWfDhspbdVVSqJf_38jR45",
                "t",
                "t",
                "t"
            ],
        ]
    );
}

/// The 48-bit time part of every generated ULID equals the row's created_at (ms).
async fn check_ulid_times(env: &Env) {
    for (table, id) in [
        ("users", "user_id"),
        ("user_passwords", "user_password_id"),
        ("user_emails", "user_email_id"),
        ("upstream_oauth_links", "upstream_oauth_link_id"),
        ("compat_sessions", "compat_session_id"),
        ("compat_access_tokens", "compat_access_token_id"),
        ("compat_refresh_tokens", "compat_refresh_token_id"),
    ] {
        let bad = env
            .col(&format!(
                "SELECT count(*) FROM {table}
                  WHERE ('x' || lpad(substr(replace({id}::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint
                        <> (extract(epoch FROM created_at) * 1000)::bigint"
            ))
            .await;
        assert_eq!(
            bad,
            ["0"],
            "{table}: ULID time part differs from created_at"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_swap_recreates_every_index_and_constraint_exactly() {
    for schema in schemas() {
        let env = Env::new(schema).await;
        let before = env.catalogue().await;
        assert!(before.iter().any(|l| l.contains("users_username_trgm_idx")));
        env.migrate();
        let after = env.catalogue().await;
        assert_eq!(before, after, "catalogue changed ({schema:?})");
        assert!(env.shadow_tables().await.is_empty());
    }
}

/// Every privilege on the MAS tables as it acts (a NULL ACL spelt out as the owner's defaults).
const PRIVILEGES: &str = "
SELECT c.relname || ' ' || CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
       || ' ' || a.privilege_type || ' grantable=' || a.is_grantable
  FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
 WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
 ORDER BY 1";

#[tokio::test(flavor = "multi_thread")]
async fn the_migrating_roles_default_privileges_do_not_reach_the_mas_tables() {
    for schema in schemas() {
        let env = Env::new(schema).await;
        // Roles are shared by the whole server; this one is only ever granted things, so
        // concurrent runs can share it (default privileges go with the dropped database).
        env.mas
            .exec(
                "DO $$ BEGIN
                   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'syn2mas_test_reader') THEN
                     CREATE ROLE syn2mas_test_reader;
                   END IF;
                 EXCEPTION WHEN unique_violation OR duplicate_object THEN NULL;
                 END $$;
                 GRANT SELECT ON users TO syn2mas_test_reader;
                 ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT INSERT, DELETE ON TABLES TO syn2mas_test_reader;",
            )
            .await;
        let before = env.col(PRIVILEGES).await;
        assert!(
            before.contains(&"users syn2mas_test_reader SELECT grantable=false".to_string()),
            "{before:?}"
        );
        env.migrate();
        let after = env.col(PRIVILEGES).await;
        assert_eq!(before, after, "privileges changed ({schema:?})");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_leaves_mas_byte_for_byte_unchanged() {
    for schema in schemas() {
        let env = Env::new(schema).await;
        let before = pg_dump(&env.mas);
        let out = env.run(&["migrate", "--dry-run", "--allow-warnings", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let summary = json(&out);
        assert_eq!(summary["migrate"]["dry_run"], true);
        assert_eq!(summary["migrate"]["mas_rows"]["users"], 10);
        let after = pg_dump(&env.mas);
        let changed: Vec<(&str, &str)> = before
            .lines()
            .zip(after.lines())
            .filter(|(a, b)| a != b)
            .take(5)
            .collect();
        assert!(
            changed.is_empty() && before.lines().count() == after.lines().count(),
            "dry-run changed MAS ({schema:?}): {changed:?}"
        );
        // And a real run afterwards still works.
        env.migrate();
        assert_eq!(env.mas.count("users").await, 10);
    }
}

fn pg_dump(db: &TestDb) -> String {
    let s = common::server();
    let out = Command::new("pg_dump")
        .args([
            "-h",
            &s.host,
            "-p",
            &s.port.to_string(),
            "-U",
            &s.user,
            "-d",
            &db.name,
        ])
        .output()
        .expect("pg_dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // pg_dump ≥ 15.14 brackets its output with a random `\restrict` key; it is not data.
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_refuses_because_mas_is_not_empty() {
    let env = Env::new(Schema::Project).await;
    env.migrate();
    let dump = env.dump().await;
    let out = env.run(&["migrate", "--allow-warnings"]);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(stderr(&out).contains("E-mas-not-empty"), "{}", stderr(&out));
    assert_eq!(env.dump().await, dump);
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_refuses_warnings_without_allow_warnings() {
    let env = Env::new(Schema::Project).await;
    let out = env.run(&["migrate"]);
    assert_eq!(out.status.code(), Some(11), "{}", stderr(&out));
    // The transform meets the fixture's guest first (users are read first) and stops there.
    assert!(
        stderr(&out).contains("Refusing to migrate with warnings")
            && stderr(&out).contains("W-guests in `users`")
            && stderr(&out).contains("--allow-warnings"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.counts().await, vec![0; 8]);
    assert!(env.shadow_tables().await.is_empty());
}

/// Starts a migration that stops at `point`, waits until it says so, and returns the child
/// with a thread collecting the rest of its stderr.
fn start_paused(
    env: &Env,
    point: &str,
    secs: u64,
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    let mut child = env
        .command(&["migrate", "--allow-warnings", "--seed", "1"])
        .env("SYN2MAS_TEST_PAUSE", point)
        .env("SYN2MAS_TEST_PAUSE_SECS", secs.to_string())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn syn2mas");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "never paused at {point}");
        match lines.next() {
            Some(Ok(l)) if l.contains(&format!("paused at {point}")) => break,
            Some(_) => continue,
            None => panic!(
                "syn2mas exited before pausing at {point}: {:?}",
                child.wait()
            ),
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    let rest =
        std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>().join("\n"));
    (child, rest)
}

/// Every point a run can be stopped at before its swap commits, in run order: MAS locked;
/// the shadow schema created; users loaded; devices and tokens read into the partition files;
/// an index built; a foreign key added, its validation next; every table loaded; rebuild done;
/// inside the swap transaction with the MAS tables locked; inside it with the new tables moved
/// in and every constraint added, before the COMMIT.
const KILL_POINTS: [&str; 10] = [
    "locked",
    "schema",
    "after-users",
    "spilled",
    "index-built",
    "fk-validation",
    "rebuild",
    "swap",
    "swap-locked",
    "swap-moved",
];

/// The schema a kill may leave behind (and only that: see `kill_at`).
const SHADOW_SCHEMA: &str = "syn2mas_shadow";

/// Stops a run paused at `point` with `signal` and checks what the promise says: with SIGTERM
/// the run cleans up and the whole MAS database (rows and catalogue, every schema) is exactly
/// as before; with SIGKILL nothing can clean up, so everything but syn2mas's own schema is
/// exactly as before, and whatever is left is in that schema. Either way the next run drops
/// the leftovers, says so, and migrates exactly what a clean run migrates.
async fn kill_at(point: &str, signal: libc::c_int, expected: &BTreeMap<&'static str, Vec<String>>) {
    let env = Env::new(Schema::Project).await;
    let before = env.mas.fingerprint(&[]).await;
    let catalogue = env.catalogue().await;
    let (mut child, rest) = start_paused(&env, point, 600);
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    let status = child.wait().unwrap();
    let err = rest.join().unwrap();
    let case = format!("signal {signal} at {point}");
    let leftovers = env.mas.leftovers().await;
    if signal == libc::SIGKILL {
        assert_eq!(status.code(), None, "{case}: {err}");
        assert_eq!(
            env.mas.fingerprint(&[SHADOW_SCHEMA]).await,
            before,
            "{case}: MAS outside syn2mas's schema changed"
        );
        assert!(
            leftovers
                .iter()
                .all(|l| l.starts_with(&format!("schema {SHADOW_SCHEMA}"))
                    || l.starts_with(&format!("{SHADOW_SCHEMA}."))),
            "{case}: leftovers outside syn2mas's schema: {leftovers:?}"
        );
    } else {
        assert_eq!(status.code(), Some(143), "{case}: {err}");
        assert!(
            err.contains("the migration was rolled back; MAS is exactly as it was before the run"),
            "{case}: {err}"
        );
        assert_eq!(
            env.mas.fingerprint(&[]).await,
            before,
            "{case}: the whole MAS database changed"
        );
        assert!(leftovers.is_empty(), "{case}: {leftovers:?}");
    }
    let out = env.migrate();
    assert_eq!(
        stderr(&out).contains("Dropped leftovers of an interrupted earlier run"),
        !leftovers.is_empty(),
        "{case}: {}",
        stderr(&out)
    );
    assert_eq!(&env.dump().await, expected, "{case}: the next run's result");
    assert_eq!(env.catalogue().await, catalogue, "{case}: catalogue");
    assert!(env.mas.leftovers().await.is_empty(), "{case}");
}

async fn reference_dump() -> BTreeMap<&'static str, Vec<String>> {
    let reference = Env::new(Schema::Project).await;
    reference.migrate();
    reference.dump().await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_every_point_leaves_mas_outside_its_schema_as_before() {
    let expected = reference_dump().await;
    for point in KILL_POINTS {
        kill_at(point, libc::SIGKILL, &expected).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_at_every_point_leaves_the_whole_mas_as_before() {
    let expected = reference_dump().await;
    for point in KILL_POINTS {
        kill_at(point, libc::SIGTERM, &expected).await;
    }
}

/// What a killed run leaves is `migrate`'s own business: the leftover warning never makes it
/// refuse without `--allow-warnings` (here on a Synapse without any row that warrants a
/// warning), it drops the leftovers and migrates.
#[tokio::test(flavor = "multi_thread")]
async fn leftovers_do_not_need_allow_warnings() {
    let schema = Schema::Project;
    let env = Env::with(TestDb::synapse_empty(schema).await, schema).await;
    let (mut child, _) = start_paused(&env, "after-users", 600);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!env.mas.leftovers().await.is_empty());
    let out = env.run(&["migrate", "--seed", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("W-interrupted-run")
            && stderr(&out).contains("Dropped leftovers of an interrupted earlier run"),
        "{}",
        stderr(&out)
    );
    assert!(env.mas.leftovers().await.is_empty());
}

/// A SIGKILL while the cleanup after a SIGTERM is under way (its sessions stopped, the lock
/// taken again, the shadow schema not yet dropped): MAS outside syn2mas's schema is as before,
/// and the next run recovers.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_the_cleanup_leaves_only_syn2mas_schema() {
    let expected = reference_dump().await;
    let env = Env::new(Schema::Project).await;
    let before = env.mas.fingerprint(&[]).await;
    let mut child = env
        .command(&["migrate", "--allow-warnings", "--seed", "1"])
        .env("SYN2MAS_TEST_PAUSE", "rebuild,cleanup-locked")
        .env("SYN2MAS_TEST_PAUSE_SECS", "600")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn syn2mas");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut wait_for = |needle: &str| {
        for line in lines.by_ref() {
            if line.unwrap().contains(needle) {
                return;
            }
        }
        panic!("syn2mas never said {needle:?}");
    };
    wait_for("paused at rebuild");
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    wait_for("paused at cleanup-locked");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(env.mas.fingerprint(&[SHADOW_SCHEMA]).await, before);
    assert!(!env.mas.leftovers().await.is_empty());
    env.migrate();
    assert_eq!(env.dump().await, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn terminated_connections_fail_the_run_and_roll_it_back() {
    let env = Env::new(Schema::Project).await;
    let catalogue = env.catalogue().await;
    let (mut child, _) = start_paused(&env, "rebuild", 3);
    env.mas
        .exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'syn2mas' AND datname = current_database()")
        .await;
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert_eq!(env.counts().await, vec![0; 8]);
    assert!(
        env.shadow_tables().await.is_empty(),
        "the failed run cleans up after itself"
    );
    assert_eq!(env.catalogue().await, catalogue);
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_appearing_in_mas_during_the_run_abort_the_swap() {
    let env = Env::new(Schema::Project).await;
    let (mut child, _) = start_paused(&env, "swap", 3);
    env.mas
        .exec("INSERT INTO users (user_id, username, created_at) VALUES (gen_random_uuid(), 'intruder', now())")
        .await;
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    assert_eq!(env.col("SELECT username FROM users").await, ["intruder"]);
    assert_eq!(env.mas.count("compat_sessions").await, 0);
    assert!(env.shadow_tables().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_constraint_failure_in_the_rebuild_rolls_everything_back() {
    let env = Env::new(Schema::Project).await;
    let catalogue = env.catalogue().await;
    let (mut child, rest) = start_paused(&env, "after-users", 3);
    // The provider disappears from MAS after check passed: validating the links' foreign key
    // to it fails during the rebuild.
    env.mas.exec("DELETE FROM upstream_oauth_providers").await;
    assert_eq!(child.wait().unwrap().code(), Some(1));
    let err = rest.join().unwrap();
    assert!(err.contains("upstream_oauth_links_provider_fkey"), "{err}");
    assert!(err.contains("MAS was left exactly as it was"), "{err}");
    assert_eq!(env.counts().await, vec![0; 8]);
    assert!(env.shadow_tables().await.is_empty());
    assert_eq!(env.catalogue().await, catalogue);
}

#[tokio::test(flavor = "multi_thread")]
async fn database_errors_lose_their_detail_line_which_can_hold_a_token() {
    let db = TestDb::mas_empty(Schema::Project).await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE t (tok text); INSERT INTO t VALUES ('syt_SECRET'), ('syt_SECRET')",
        )
        .await
        .unwrap();
    let e = client
        .batch_execute("CREATE UNIQUE INDEX t_tok ON t (tok)")
        .await
        .unwrap_err();
    let raw = format!("{:#}", anyhow::Error::from(e));
    assert!(
        raw.contains("syt_SECRET"),
        "PostgreSQL puts the key in DETAIL: {raw}"
    );
    let e = client
        .batch_execute("CREATE UNIQUE INDEX t_tok ON t (tok)")
        .await
        .unwrap_err();
    let safe = format!("{:#}", syn2mas::db::without_detail(e));
    assert!(safe.contains("could not create unique index"), "{safe}");
    assert!(!safe.contains("syt_SECRET"), "{safe}");
}

/// The rebuild schedule starts the costliest index builds first, and text keys cost several
/// times uuid keys: the catalogue must say which indexes sort text, on the project fixture and
/// on the genuine MAS schema alike.
#[tokio::test(flavor = "multi_thread")]
async fn the_catalogue_tells_text_indexes_from_uuid_ones() {
    for schema in schemas() {
        let mas = TestDb::mas(schema).await;
        let client = mas.client().await;
        let defs = syn2mas::sink::catalog::read(&client).await.unwrap();
        let index = |needle: &str| {
            defs.indexes
                .iter()
                .find(|i| i.tail.contains(needle))
                .unwrap_or_else(|| panic!("{schema:?}: no index with {needle}"))
                .textual
        };
        assert!(index("(lower(username))"), "{schema:?}");
        assert!(index("gin_trgm_ops"), "{schema:?}");
        assert!(!index("(compat_session_id)"), "{schema:?}");
        let pk = |table: &str| {
            defs.constraints
                .iter()
                .find(|c| {
                    c.target.name() == table
                        && c.kind == syn2mas::sink::catalog::ConstraintKind::PrimaryKey
                })
                .unwrap_or_else(|| panic!("{schema:?}: no primary key on {table}"))
                .index_textual
        };
        assert!(!pk("users"), "{schema:?}");
        let token = defs
            .constraints
            .iter()
            .find(|c| {
                c.index_tail
                    .as_deref()
                    .is_some_and(|t| t.contains("(access_token)"))
            })
            .map(|c| c.index_textual)
            .or_else(|| {
                defs.indexes
                    .iter()
                    .find(|i| i.tail.contains("(access_token)"))
                    .map(|i| i.textual)
            });
        assert_eq!(token, Some(true), "{schema:?}");
    }
}

/// The devices/tokens join runs partition by partition (rows routed by user id): however many
/// partitions the rows are split into, the rows written must be exactly those of one
/// partition (every session, token, refresh pair and skip).
/// `check`'s plan is the migration's own transform run in counting mode; this holds it to what
/// `migrate` then does, on the fixture with every edge case, on both schemas, with the
/// devices/tokens join in one partition, split in four, and split again down to single rows
/// (a budget of one byte): every table's rows read, migrated
/// and skipped by each reason, and every MAS table's rows.
#[tokio::test(flavor = "multi_thread")]
async fn the_plan_is_exactly_what_migrate_does() {
    for schema in schemas() {
        for (partitions, budget) in [("1", "4194304"), ("4", "4194304"), ("1", "1")] {
            let env = Env::new(schema).await;
            let vars = [
                ("SYN2MAS_TEST_PARTITIONS", partitions),
                ("SYN2MAS_TEST_PARTITION_BYTES", budget),
            ];
            let check = env.run_with_env(&["check", "--json"], &vars);
            assert_eq!(check.status.code(), Some(11), "{}", stderr(&check));
            let migrate = env.run_with_env(
                &["migrate", "--allow-warnings", "--seed", "1", "--json"],
                &vars,
            );
            assert_eq!(migrate.status.code(), Some(0), "{}", stderr(&migrate));
            let (check, migrate) = (json(&check), json(&migrate));
            let skipped: u64 = check["plan"]["entities"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|e| e["skip"].as_object().unwrap().values())
                .map(|n| n.as_u64().unwrap())
                .sum();
            assert!(
                skipped > 10,
                "{schema}: the fixture skips rows for many reasons"
            );
            let diff = common::plan_differences(&check, &migrate);
            assert!(diff.is_empty(), "{schema}/{partitions}/{budget}: {diff:#?}");
        }
    }
}

/// The lines of every `<table>.jsonl` of a report directory, sorted, by table.
fn report_lines(dir: &std::path::Path) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut out = BTreeMap::new();
    for table in [
        "users",
        "user_threepids",
        "user_external_ids",
        "devices",
        "access_tokens",
        "refresh_tokens",
    ] {
        let text = std::fs::read_to_string(dir.join(format!("{table}.jsonl")))
            .unwrap_or_else(|e| panic!("{table}.jsonl: {e}"));
        let mut lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{table}: {e}: {l}")))
            .collect();
        lines.sort_by_key(|v| v.to_string());
        out.insert(table.to_owned(), lines);
    }
    out
}

/// `--report DIR` on the fixture: `check` and `migrate` name the same skipped rows, one line
/// per row with its key and reason, as many as the summaries count; known rows are there;
/// `verify` writes its summary; no token or hash of the fixture appears in any file.
#[tokio::test(flavor = "multi_thread")]
async fn report_lists_every_skipped_row_and_no_secret() {
    let env = Env::new(Schema::Project).await;
    let dir = tempfile::tempdir().unwrap();
    let (checked, migrated) = (dir.path().join("check"), dir.path().join("migrate"));
    let check = env.run(&["check", "--report", checked.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(11), "{}", stderr(&check));
    let migrate = env.run(&[
        "migrate",
        "--allow-warnings",
        "--seed",
        "1",
        "--report",
        migrated.to_str().unwrap(),
    ]);
    assert_eq!(migrate.status.code(), Some(0), "{}", stderr(&migrate));

    let verified = dir.path().join("verify");
    let verify = env.run(&["verify", "--report", verified.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(0), "{}", stderr(&verify));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(verified.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(doc["ok"], true, "{doc}");

    let (by_check, by_migrate) = (report_lines(&checked), report_lines(&migrated));
    assert_eq!(
        by_check, by_migrate,
        "check and migrate report the same rows"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(migrated.join("summary.json")).unwrap())
            .unwrap();
    for e in summary["migrate"]["entities"].as_array().unwrap() {
        let table = e["entity"].as_str().unwrap();
        let skipped: u64 = e["skipped"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(by_migrate[table].len() as u64, skipped, "{table}");
    }
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checked.join("summary.json")).unwrap())
            .unwrap();
    assert!(plan["plan"]["entities"].is_array(), "{plan}");

    let has = |table: &str, want: serde_json::Value| {
        assert!(
            by_migrate[table].contains(&want),
            "{table} lacks {want}: {:#?}",
            by_migrate[table]
        );
    };
    has(
        "users",
        serde_json::json!({"user_id": "@_irc_bot:example.com", "reason": "appservice"}),
    );
    has(
        "devices",
        serde_json::json!({"user_id": "@alice:example.com", "device_id": "NULLHIDDEN", "reason": "hidden"}),
    );
    has(
        "devices",
        serde_json::json!({"user_id": "@1001:example.com", "device_id": "guest_device", "reason": "guest_device"}),
    );
    has(
        "devices",
        serde_json::json!({"user_id": "@erin:example.com", "device_id": "ERINPHONE", "reason": "deactivated"}),
    );
    has(
        "user_threepids",
        serde_json::json!({"user_id": "@_slack_u123:example.com", "medium": "msisdn",
                           "address": "15555550123", "reason": "appservice"}),
    );
    has(
        "user_external_ids",
        serde_json::json!({"user_id": "@_irc_bot:example.com", "auth_provider": "oidc-google",
                           "subject": "irc-bridge-bot-sub", "reason": "appservice"}),
    );
    has(
        "refresh_tokens",
        serde_json::json!({"user_id": "@alice:example.com", "device_id": "ALICELAPTOP",
                           "access_token_id": 13, "refresh_token_id": 2, "reason": "superseded"}),
    );
    has(
        "refresh_tokens",
        serde_json::json!({"user_id": "@alice:example.com", "device_id": "ALICEPHONE",
                           "refresh_token_id": 6, "reason": "no_access_token"}),
    );
    for path in std::fs::read_dir(&migrated)
        .unwrap()
        .chain(std::fs::read_dir(&checked).unwrap())
    {
        let path = path.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for secret in ["syt_", "syr_", "MDAx", "$2b$", "$2a$"] {
            assert!(!text.contains(secret), "{} holds {secret}", path.display());
        }
    }
}

/// A report that cannot be completed (here `summary.json` is a directory) is a warning: the
/// migration itself committed, so it still exits 0 and MAS holds its rows.
#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_report_does_not_change_a_successful_migrations_outcome() {
    let env = Env::new(Schema::Project).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("summary.json")).unwrap();
    let out = env.run(&[
        "migrate",
        "--allow-warnings",
        "--report",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: the report could not be completed"),
        "{}",
        stderr(&out)
    );
    assert_ne!(env.counts().await, vec![0; 8]);
}

/// The join writes exactly the same rows however many partitions the rows are first split
/// into, and however often a partition is split again because it exceeds a (lowered) byte
/// budget: by user, then by device, down to one device's tokens mapped in runs of one row
/// (budget 1).
#[tokio::test(flavor = "multi_thread")]
async fn the_partitioned_join_writes_the_same_rows_whatever_the_partition_count() {
    for schema in schemas() {
        let mut reference = None;
        for (parts, budget) in [
            ("1", "4194304"),
            ("4", "4194304"),
            ("64", "4194304"),
            ("1", "600"),
            ("1", "1"),
        ] {
            let env = Env::new(schema).await;
            let out = env.run_with_env(
                &["migrate", "--allow-warnings", "--seed", "1", "--json"],
                &[
                    ("SYN2MAS_TEST_PARTITIONS", parts),
                    ("SYN2MAS_TEST_PARTITION_BYTES", budget),
                ],
            );
            assert_eq!(
                out.status.code(),
                Some(0),
                "{schema:?}, {parts} partitions of {budget} bytes:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let counts: Vec<String> = entity_counts(&got)
                .iter()
                .map(|c| format!("{c:?}"))
                .collect();
            let rows = env.dump().await;
            assert!(
                counts.iter().any(|c| c.contains("access_tokens")),
                "{counts:?}"
            );
            match &reference {
                None => reference = Some((counts, rows)),
                Some((c, r)) => {
                    assert_eq!(&counts, c, "{schema:?}, {parts}/{budget}: counts");
                    assert_eq!(&rows, r, "{schema:?}, {parts}/{budget}: rows");
                }
            }
        }
    }
}

/// (entity, read, migrated, skipped by reason) of each entity of a `migrate --json` document.
fn entity_counts(doc: &serde_json::Value) -> Vec<[&serde_json::Value; 4]> {
    doc["migrate"]["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| [&e["entity"], &e["read"], &e["migrated"], &e["skipped"]])
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Memory of the devices/tokens join: bounded by what is read, not by statistics or skew
// ------------------------------------------------------------------------------------------------

/// Tokens of the one device of `@bot` that has more of them than any partition may hold.
const ONE_DEVICE_TOKENS: u32 = 200_000;

/// A population on top of the fixture, deterministic (no `random()`): 3,000 ordinary users
/// with a device and two tokens each, and `@bot`, who owns 2,000 devices with five tokens
/// each, 4,000 refresh pairs (half of them refreshed), 5,000 tokens without a device, a few
/// tokens of deleted devices, and one device with [`ONE_DEVICE_TOKENS`] tokens. Autovacuum is
/// off on the tables, so their statistics stay as the test leaves them.
fn skewed_population() -> String {
    format!(
        "
ALTER TABLE users SET (autovacuum_enabled = false);
ALTER TABLE devices SET (autovacuum_enabled = false);
ALTER TABLE access_tokens SET (autovacuum_enabled = false);
ALTER TABLE refresh_tokens SET (autovacuum_enabled = false);
INSERT INTO users (name, password_hash, creation_ts, admin, is_guest, appservice_id, deactivated, locked)
  SELECT '@m' || i || ':example.com', NULL, 1600000000 + i, 0, 0, NULL, 0, false
    FROM generate_series(1, 3000) i;
INSERT INTO users (name, password_hash, creation_ts, admin, is_guest, appservice_id, deactivated, locked)
  VALUES ('@bot:example.com', NULL, 1600000000, 0, 0, NULL, 0, false);
INSERT INTO devices (user_id, device_id, display_name, last_seen, ip, user_agent, hidden)
  SELECT '@m' || i || ':example.com', 'DEV' || i, 'phone', 1700000000000 + i, '10.0.0.1', 'agent', false
    FROM generate_series(1, 3000) i;
INSERT INTO devices (user_id, device_id, display_name, last_seen, ip, user_agent, hidden)
  SELECT '@bot:example.com', 'BOT' || i, NULL, 1700000000000 + i, NULL, NULL, false
    FROM generate_series(1, 2000) i;
INSERT INTO refresh_tokens (id, user_id, device_id, token, next_token_id, expiry_ts, ultimate_session_expiry_ts)
  SELECT 5000000 + i, '@bot:example.com', 'BOT' || (i % 2000 + 1), 'syr_bot_' || i,
         CASE WHEN i % 2 = 0 THEN 5000000 + i - 1 END, NULL, NULL
    FROM generate_series(1, 4000) i;
INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, puppets_user_id, last_validated, refresh_token_id, used)
  SELECT 1000000 + i, '@m' || (i % 3000 + 1) || ':example.com', 'DEV' || (i % 3000 + 1), 'syt_m_' || i,
         NULL, NULL, 1700000000000 + i, NULL, true
    FROM generate_series(1, 6000) i;
INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, puppets_user_id, last_validated, refresh_token_id, used)
  SELECT 2000000 + i, '@bot:example.com', 'BOT' || (i % 2000 + 1), 'syt_bot_' || i,
         NULL, NULL, 1700000000000 + i % 977, NULL, true
    FROM generate_series(1, 10000) i;
INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, puppets_user_id, last_validated, refresh_token_id, used)
  SELECT 3000000 + i, '@bot:example.com', 'BOT1', 'syt_one_' || i,
         1800000000000, NULL, 1700000000000 + (i * 7919) % 100003, NULL, true
    FROM generate_series(1, {ONE_DEVICE_TOKENS}) i;
INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, puppets_user_id, last_validated, refresh_token_id, used)
  SELECT 4000000 + i, '@bot:example.com', NULL, 'syt_nodev_' || i,
         NULL, NULL, 1700000000000 + i, NULL, true
    FROM generate_series(1, 5000) i;
INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, puppets_user_id, last_validated, refresh_token_id, used)
  SELECT 6000000 + i, '@bot:example.com', 'BOT' || (i % 2000 + 1), 'syt_rt_' || i,
         NULL, NULL, 1700000000000 + i, 5000000 + i, i % 3 = 0
    FROM generate_series(1, 4000) i;
INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, puppets_user_id, last_validated, refresh_token_id, used)
  SELECT 7000000 + i, '@bot:example.com', 'GONE' || i, 'syt_gone_' || i,
         NULL, NULL, 1700000000000 + i, NULL, true
    FROM generate_series(1, 50) i;
"
    )
}

const SESSION_TABLES: &str = "'users', 'devices', 'access_tokens', 'refresh_tokens'";

/// Statistics as PostgreSQL has them after `ANALYZE`.
fn analysed() -> String {
    "ANALYZE users; ANALYZE devices; ANALYZE access_tokens; ANALYZE refresh_tokens;".into()
}

/// No statistics at all, as on a restored dump nobody analysed: `reltuples = -1` and no
/// column statistics (this needs the superuser the tests connect as).
fn statistics_cleared() -> String {
    format!(
        "UPDATE pg_class SET reltuples = -1, relpages = 0 WHERE oid IN \
           (SELECT to_regclass(t) FROM unnest(ARRAY[{SESSION_TABLES}]) t);
         DELETE FROM pg_statistic WHERE starelid IN \
           (SELECT to_regclass(t) FROM unnest(ARRAY[{SESSION_TABLES}]) t);"
    )
}

/// A run's output and its peak resident memory (KiB): the child's `VmHWM` (the high-water mark
/// of its own address space since `exec`), read from `/proc` every 10 ms until it exits. Not
/// `wait4`'s `ru_maxrss`: Linux carries the parent's high-water mark across `fork`/`exec` into
/// it, so it reports this test process's size whenever that is larger.
fn run_measured(mut cmd: Command) -> (Output, u64) {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run syn2mas");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            pipe.read_to_end(&mut buf).unwrap();
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    let status = loop {
        if let Some(kib) = std::fs::read_to_string(&status_file)
            .ok()
            .as_deref()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(peak_kib > 0, "no VmHWM read from {status_file}");
    let output = Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    (output, peak_kib)
}

/// A number logged as `name=<n>` in a `-v` run's stderr.
fn logged(out: &Output, name: &str) -> u64 {
    let text = stderr(out);
    let key = format!("{name}=");
    let at = text
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in the log:\n{text}"));
    text[at + key.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number:\n{text}"))
}

/// The partition budget the memory tests lower the join to.
const TEST_BUDGET: u64 = 256 << 10;

/// The join's memory does not depend on PostgreSQL's statistics nor on one user owning most
/// devices and tokens: with no statistics at all (`reltuples = -1`, the case that put every
/// row in one partition), `migrate` writes exactly the rows it writes with fresh statistics,
/// no partition it holds exceeds the budget (lowered here so that ~30 MiB of tokens must be
/// split by user, then `@bot`'s by device, and its one huge device mapped in runs), and the
/// process stays far below what holding those rows at once took (125 MiB with statistics).
#[tokio::test(flavor = "multi_thread")]
async fn without_statistics_and_with_one_huge_user_the_join_stays_within_its_budget() {
    let schema = *schemas().last().unwrap();
    let budget = TEST_BUDGET.to_string();
    let mut runs = Vec::new();
    for stats in [analysed(), statistics_cleared()] {
        let synapse = TestDb::synapse(schema).await;
        synapse.exec(&skewed_population()).await;
        synapse.exec(&stats).await;
        let env = Env::with(synapse, schema).await;
        let mut cmd = env.command(&["-v", "migrate", "--allow-warnings", "--seed", "1", "--json"]);
        cmd.env("SYN2MAS_TEST_PARTITION_BYTES", &budget);
        let (out, peak_kib) = run_measured(cmd);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        runs.push((env.dump().await, out, peak_kib));
    }
    let (with_stats, no_stats) = (&runs[0], &runs[1]);
    // Peak RSS first: it is what fails when the join holds everything at once.
    for (what, (_, _, peak_kib)) in [("with statistics", with_stats), ("without", no_stats)] {
        eprintln!("{what}: peak RSS {} MiB", peak_kib >> 10);
        assert!(
            *peak_kib < MAX_RSS_KIB,
            "{what}: peak RSS {} MiB, over {} MiB",
            peak_kib >> 10,
            MAX_RSS_KIB >> 10
        );
    }
    assert_eq!(
        with_stats.0, no_stats.0,
        "the MAS tables differ with and without statistics"
    );
    assert!(with_stats.0["compat_access_tokens"].len() > ONE_DEVICE_TOKENS as usize);
    for (_, out, _) in &runs {
        let largest = logged(out, "largest_partition_bytes");
        assert!(largest > 0 && largest <= TEST_BUDGET, "{largest}");
        assert!(logged(out, "splits") > 0, "{}", stderr(out));
        assert!(logged(out, "in_runs") > 0, "{}", stderr(out));
    }
}

/// The peak resident memory the memory test allows a debug build (KiB): measured 26–27 MiB with
/// the join bounded, 125 MiB and more before (every row of `@bot` in one partition).
const MAX_RSS_KIB: u64 = 64 << 10;

/// With `TMPDIR` on a tmpfs, where partition files are memory, the run says so and names the
/// fix; on disk it says nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_tmpfs_temporary_directory_is_pointed_out() {
    use syn2mas::source::spill::tmpfs_warning;
    let shm = std::path::Path::new("/dev/shm");
    if tmpfs_warning(shm).is_none() {
        eprintln!("no tmpfs at /dev/shm here: nothing to test");
        return;
    }
    let schema = *schemas().last().unwrap();
    let env = Env::new(schema).await;
    let check = env.run_with_env(&["check"], &[("TMPDIR", "/dev/shm")]);
    let text = stderr(&check);
    assert!(
        text.contains("/dev/shm is a tmpfs")
            && text.contains("Point TMPDIR at a directory on disk"),
        "{text}"
    );
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = env.run_with_env(
        &["migrate", "--allow-warnings"],
        &[("TMPDIR", disk.path().to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    if tmpfs_warning(disk.path()).is_none() {
        assert!(!stderr(&out).contains("tmpfs"), "{}", stderr(&out));
    }
    let out = Env::new(schema)
        .await
        .run_with_env(&["migrate", "--allow-warnings"], &[("TMPDIR", "/dev/shm")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/dev/shm is a tmpfs"),
        "{}",
        stderr(&out)
    );
}
