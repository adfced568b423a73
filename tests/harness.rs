//! Tests of the test harness and of the fixtures themselves.
//!
//! * The Synapse fixture loads (on the project schema and, when available, on the genuine dump)
//!   and holds exactly the rows and edge cases documented in fixtures/synapse/README.md.
//! * The project's schema files agree with the genuine dumps of Synapse 1.163.2 and MAS 1.22.0,
//!   compared through pg_catalog: columns, types, nullability, defaults, constraints, indexes,
//!   incoming foreign keys, `_sqlx_migrations`. Without `SYN2MAS_ANCHOR_DIR` the project schema
//!   is checked against the facts below (taken from the genuine schemas), so drift is caught
//!   either way.
//! * The harness itself: isolation, cleanup, URIs, config files.

mod common;

use common::{Schema, TestDb, schemas};
use std::collections::BTreeSet;
use tokio_postgres::Client;

const SYNAPSE_TABLES: [&str; 8] = [
    "users",
    "user_threepids",
    "user_external_ids",
    "devices",
    "access_tokens",
    "refresh_tokens",
    "schema_version",
    "schema_compat_version",
];

/// The tables syn2mas writes, in upstream's order.
const MAS_WRITTEN: [&str; 8] = [
    "users",
    "user_passwords",
    "user_emails",
    "user_unsupported_third_party_ids",
    "upstream_oauth_links",
    "compat_sessions",
    "compat_access_tokens",
    "compat_refresh_tokens",
];

const NEWEST_MIGRATION: i64 = 20260720134722;
const OLDEST_MIGRATION: i64 = 20220530084123;
const NEWEST_CHECKSUM: &str = "f181cfae06cfa7e9665fc70bbeb18db20d101d2bda324f7509a5a89f5e0879417e61fc3f3f23d9a8e9eece1eeb63a780";

// ------------------------------------------------------------------------------------------------
// Catalogue helpers
// ------------------------------------------------------------------------------------------------

async fn strings(client: &Client, sql: &str, tables: &[&str]) -> Vec<String> {
    let tables: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    client
        .query(sql, &[&tables])
        .await
        .unwrap_or_else(|e| panic!("{}\n{sql}", common::pg_error(&e)))
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect()
}

/// Every definition fact PostgreSQL holds about `tables` (in schema `public`), one line each,
/// sorted: table kind, columns (order among live columns, type, NOT NULL, default, identity,
/// generation, collation), own constraints (`pg_get_constraintdef`, deferrability, validation),
/// indexes (`pg_get_indexdef`), and user triggers.
async fn definition(client: &Client, tables: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(
        strings(
            client,
            "SELECT format('table %s kind=%s persistence=%s', c.relname, c.relkind, c.relpersistence)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])",
            tables,
        )
        .await,
    );
    out.extend(
        strings(
            client,
            "SELECT format('column %s.%s #%s %s %s default=%s identity=%s generated=%s collation=%s',
                           c.relname, a.attname,
                           row_number() OVER (PARTITION BY c.relname ORDER BY a.attnum),
                           format_type(a.atttypid, a.atttypmod),
                           CASE WHEN a.attnotnull THEN 'NOT NULL' ELSE 'NULL' END,
                           coalesce(pg_get_expr(d.adbin, d.adrelid), '-'),
                           a.attidentity, a.attgenerated,
                           coalesce((SELECT collname FROM pg_collation WHERE oid = a.attcollation), '-'))
               FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])
                AND a.attnum > 0 AND NOT a.attisdropped",
            tables,
        )
        .await,
    );
    out.extend(
        strings(
            client,
            "SELECT format('constraint %s.%s %s %s deferrable=%s deferred=%s validated=%s',
                           c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid),
                           k.condeferrable, k.condeferred, k.convalidated)
               FROM pg_constraint k
               JOIN pg_class c ON c.oid = k.conrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])",
            tables,
        )
        .await,
    );
    out.extend(
        strings(
            client,
            "SELECT format('index %s.%s %s', tablename, indexname, indexdef)
               FROM pg_indexes WHERE schemaname = 'public' AND tablename = ANY($1::text[])",
            tables,
        )
        .await,
    );
    out.extend(
        strings(
            client,
            "SELECT format('trigger %s.%s %s', c.relname, t.tgname, pg_get_triggerdef(t.oid))
               FROM pg_trigger t
               JOIN pg_class c ON c.oid = t.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relname = ANY($1::text[]) AND NOT t.tgisinternal",
            tables,
        )
        .await,
    );
    out.sort();
    out
}

/// Foreign keys declared anywhere that point at one of `tables`.
async fn incoming_foreign_keys(client: &Client, tables: &[&str]) -> Vec<String> {
    let mut out = strings(
        client,
        "SELECT format('fk %s.%s %s', src.relname, k.conname, pg_get_constraintdef(k.oid))
           FROM pg_constraint k
           JOIN pg_class src ON src.oid = k.conrelid
           JOIN pg_class dst ON dst.oid = k.confrelid
           JOIN pg_namespace n ON n.oid = dst.relnamespace
          WHERE k.contype = 'f' AND n.nspname = 'public' AND dst.relname = ANY($1::text[])",
        tables,
    )
    .await;
    out.sort();
    out
}

/// Compact per-table summary lines: `columns t: name type [not null] [default …], …`,
/// `constraints t: name kind, …`, `indexes t: name, …`.
async fn summary(client: &Client, table: &str) -> Vec<String> {
    const QUERIES: [&str; 3] = [
        "SELECT 'columns ' || $1::text || ': ' || coalesce(string_agg(
                a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''),
                ', ' ORDER BY a.attnum), '')
           FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE n.nspname = 'public' AND c.relname::text = $1::text
            AND a.attnum > 0 AND NOT a.attisdropped",
        // PostgreSQL 18 also lists every NOT NULL as a constraint (contype 'n'); the columns
        // line above already says which are NOT NULL, so the summary reads the same on 13–18.
        "SELECT 'constraints ' || $1::text || ': ' || coalesce(string_agg(
                k.conname || ' ' || k.contype::text, ', ' ORDER BY k.conname), '')
           FROM pg_constraint k
           JOIN pg_class c ON c.oid = k.conrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relname::text = $1::text AND k.contype::text <> 'n'",
        "SELECT 'indexes ' || $1::text || ': '
                || coalesce(string_agg(indexname, ', ' ORDER BY indexname), '')
           FROM pg_indexes WHERE schemaname = 'public' AND tablename::text = $1::text",
    ];
    let mut out = Vec::new();
    for sql in QUERIES {
        let row = client
            .query_one(sql, &[&table])
            .await
            .unwrap_or_else(|e| panic!("{}\n{sql}", common::pg_error(&e)));
        out.push(row.get(0));
    }
    out
}

/// One text column of a parameterless query.
async fn text_column(client: &Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{}\n{sql}", common::pg_error(&e)))
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect()
}

/// Panics listing the lines only one side has.
fn assert_same_lines(what: &str, project: &[String], anchor: &[String]) {
    let p: BTreeSet<&String> = project.iter().collect();
    let a: BTreeSet<&String> = anchor.iter().collect();
    let only_project: Vec<_> = p.difference(&a).collect();
    let only_anchor: Vec<_> = a.difference(&p).collect();
    assert!(
        only_project.is_empty() && only_anchor.is_empty() && project.len() == anchor.len(),
        "{what}: the project fixture differs from the genuine dump\n\
         only in the project fixture:\n  {}\nonly in the genuine dump:\n  {}",
        only_project
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
        only_anchor
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  "),
    );
}

/// Panics listing the lines that differ (order included) between what was found and expected.
fn assert_lines_eq(what: &str, found: &[String], expected: &[String]) {
    if found == expected {
        return;
    }
    let unexpected: Vec<&str> = found
        .iter()
        .filter(|l| !expected.contains(l))
        .map(|s| s.as_str())
        .collect();
    let missing: Vec<&str> = expected
        .iter()
        .filter(|l| !found.contains(l))
        .map(|s| s.as_str())
        .collect();
    panic!(
        "{what} differs from the genuine schema\nfound but not expected:\n  {}\nexpected but not found:\n  {}\n(if both are empty, the order differs)",
        unexpected.join("\n  "),
        missing.join("\n  "),
    );
}

async fn scalar_i64(client: &Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{}\n{sql}", common::pg_error(&e)))
        .get(0)
}

// ------------------------------------------------------------------------------------------------
// Synapse fixture
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn synapse_fixture_has_expected_row_counts() {
    for schema in schemas() {
        let db = TestDb::synapse(schema).await;
        let expected = [
            ("users", 13),
            ("user_threepids", 7),
            ("user_external_ids", 4),
            ("devices", 14),
            ("access_tokens", 16),
            ("refresh_tokens", 6),
            ("schema_version", 1),
            ("schema_compat_version", 1),
        ];
        for (table, count) in expected {
            assert_eq!(db.count(table).await, count, "{schema}: rows in {table}");
        }
        let client = db.client().await;
        assert_eq!(
            scalar_i64(&client, "SELECT version::bigint FROM schema_version").await,
            94,
            "{schema}"
        );
        assert_eq!(
            scalar_i64(
                &client,
                "SELECT compat_version::bigint FROM schema_compat_version"
            )
            .await,
            84,
            "{schema}"
        );
    }
}

/// Each edge case of fixtures/synapse/README.md, as a query with its exact expected count.
const EDGE_CASES: &[(&str, &str, i64)] = &[
    // users
    (
        "$2b$ bcrypt hashes",
        "SELECT count(*) FROM users WHERE password_hash LIKE '$2b$12$%' AND length(password_hash) = 60",
        6,
    ),
    (
        "old $2a$ bcrypt hash",
        "SELECT count(*) FROM users WHERE password_hash LIKE '$2a$%' AND length(password_hash) = 60",
        1,
    ),
    (
        "SSO-only user (no hash, active, not guest/AS)",
        "SELECT count(*) FROM users WHERE password_hash IS NULL AND deactivated = 0 AND is_guest = 0 AND appservice_id IS NULL",
        1,
    ),
    ("admins", "SELECT count(*) FROM users WHERE admin = 1", 2),
    (
        "deactivated with hash",
        "SELECT count(*) FROM users WHERE deactivated = 1 AND password_hash IS NOT NULL",
        1,
    ),
    (
        "deactivated without hash",
        "SELECT count(*) FROM users WHERE deactivated = 1 AND password_hash IS NULL",
        1,
    ),
    ("locked", "SELECT count(*) FROM users WHERE locked", 1),
    (
        "guests with numeric localparts",
        "SELECT count(*) FROM users WHERE is_guest = 1 AND name ~ '^@[0-9]+:example\\.com$'",
        1,
    ),
    (
        "appservice users",
        "SELECT count(*) FROM users WHERE appservice_id IS NOT NULL",
        3,
    ),
    (
        "appservice user with ':' in the localpart",
        "SELECT count(*) FROM users WHERE appservice_id IS NOT NULL AND name = '@irc_a:b:example.com'",
        1,
    ),
    (
        "uppercase localpart",
        "SELECT count(*) FROM users WHERE name <> lower(name)",
        1,
    ),
    (
        "non-ASCII localpart",
        "SELECT count(*) FROM users WHERE name ~ '[^\\x01-\\x7e]'",
        1,
    ),
    (
        "creation_ts in seconds, 2019..2026",
        "SELECT count(*) FROM users WHERE creation_ts BETWEEN 1546300800 AND 1798761599",
        13,
    ),
    (
        "no NULL names, no foreign server names",
        "SELECT count(*) FROM users WHERE name IS NULL OR name NOT LIKE '%:example.com'",
        0,
    ),
    // dependent rows of appservice users
    (
        "threepids of AS users",
        "SELECT count(*) FROM user_threepids t JOIN users u ON u.name = t.user_id WHERE u.appservice_id IS NOT NULL",
        2,
    ),
    (
        "external ids of AS users",
        "SELECT count(*) FROM user_external_ids e JOIN users u ON u.name = e.user_id WHERE u.appservice_id IS NOT NULL",
        1,
    ),
    (
        "devices of AS users",
        "SELECT count(*) FROM devices d JOIN users u ON u.name = d.user_id WHERE u.appservice_id IS NOT NULL",
        1,
    ),
    (
        "tokens of AS users",
        "SELECT count(*) FROM access_tokens t JOIN users u ON u.name = t.user_id WHERE u.appservice_id IS NOT NULL",
        2,
    ),
    (
        "rows of the ':' AS user",
        "SELECT (SELECT count(*) FROM user_threepids WHERE user_id = '@irc_a:b:example.com') + (SELECT count(*) FROM user_external_ids WHERE user_id = '@irc_a:b:example.com') + (SELECT count(*) FROM devices WHERE user_id = '@irc_a:b:example.com') + (SELECT count(*) FROM access_tokens WHERE user_id = '@irc_a:b:example.com') + (SELECT count(*) FROM refresh_tokens WHERE user_id = '@irc_a:b:example.com')",
        0,
    ),
    // threepids
    (
        "email threepids",
        "SELECT count(*) FROM user_threepids WHERE medium = 'email'",
        5,
    ),
    (
        "mixed-case email",
        "SELECT count(*) FROM user_threepids WHERE medium = 'email' AND address <> lower(address)",
        1,
    ),
    (
        "msisdn threepids",
        "SELECT count(*) FROM user_threepids WHERE medium = 'msisdn'",
        2,
    ),
    (
        "threepid of a deactivated user",
        "SELECT count(*) FROM user_threepids t JOIN users u ON u.name = t.user_id WHERE u.deactivated = 1",
        1,
    ),
    // external ids
    (
        "oidc-google links",
        "SELECT count(*) FROM user_external_ids WHERE auth_provider = 'oidc-google'",
        4,
    ),
    (
        "links of other providers (bad/ files only)",
        "SELECT count(*) FROM user_external_ids WHERE auth_provider <> 'oidc-google'",
        0,
    ),
    (
        "link of a deactivated user",
        "SELECT count(*) FROM user_external_ids e JOIN users u ON u.name = e.user_id WHERE u.deactivated = 1",
        1,
    ),
    // devices
    (
        "hidden cross-signing device",
        "SELECT count(*) FROM devices WHERE hidden",
        1,
    ),
    (
        "hidden IS NULL device",
        "SELECT count(*) FROM devices WHERE hidden IS NULL",
        1,
    ),
    (
        "guest_device of a guest",
        "SELECT count(*) FROM devices d JOIN users u ON u.name = d.user_id WHERE d.device_id = 'guest_device' AND u.is_guest = 1",
        1,
    ),
    (
        "visible devices without any token",
        "SELECT count(*) FROM devices d WHERE hidden = false AND device_id <> 'guest_device' AND NOT EXISTS (SELECT 1 FROM access_tokens t WHERE t.user_id = d.user_id AND t.device_id = d.device_id) AND NOT EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.user_id = d.user_id AND r.device_id = d.device_id)",
        2,
    ),
    ("ip '-'", "SELECT count(*) FROM devices WHERE ip = '-'", 1),
    (
        "visible device with NULL ip",
        "SELECT count(*) FROM devices WHERE ip IS NULL AND hidden = false",
        1,
    ),
    (
        "garbage ip",
        "SELECT count(*) FROM devices WHERE ip = 'not-an-ip'",
        1,
    ),
    (
        "plain IPv6 ip",
        "SELECT count(*) FROM devices WHERE ip LIKE '%:%' AND ip NOT LIKE '::ffff:%'",
        1,
    ),
    (
        "IPv4-mapped IPv6 ip",
        "SELECT count(*) FROM devices WHERE ip = '::ffff:1.2.3.4'",
        1,
    ),
    (
        "visible device with NULL last_seen",
        "SELECT count(*) FROM devices WHERE last_seen IS NULL AND hidden = false",
        1,
    ),
    (
        "device of a deactivated user",
        "SELECT count(*) FROM devices d JOIN users u ON u.name = d.user_id WHERE u.deactivated = 1",
        1,
    ),
    // access tokens
    (
        "deviceless non-puppet tokens",
        "SELECT count(*) FROM access_tokens WHERE device_id IS NULL AND puppets_user_id IS NULL",
        2,
    ),
    (
        "puppet token",
        "SELECT count(*) FROM access_tokens WHERE puppets_user_id IS NOT NULL",
        1,
    ),
    (
        "token whose device row is gone",
        "SELECT count(*) FROM access_tokens t WHERE device_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.user_id = t.user_id AND d.device_id = t.device_id)",
        1,
    ),
    (
        "expired token",
        "SELECT count(*) FROM access_tokens WHERE valid_until_ms < 1700000000000",
        1,
    ),
    (
        "token valid in the future",
        "SELECT count(*) FROM access_tokens WHERE valid_until_ms > 1798761600000",
        1,
    ),
    (
        "tokens without expiry",
        "SELECT count(*) FROM access_tokens WHERE valid_until_ms IS NULL",
        9,
    ),
    (
        "NULL last_validated",
        "SELECT count(*) FROM access_tokens WHERE last_validated IS NULL",
        1,
    ),
    (
        "legacy macaroon token",
        "SELECT count(*) FROM access_tokens WHERE token LIKE 'MDAx%'",
        1,
    ),
    (
        "token of a hidden device (bad/ file only)",
        "SELECT count(*) FROM access_tokens t JOIN devices d USING (user_id, device_id) WHERE d.hidden IS NOT FALSE",
        0,
    ),
    (
        "token of a deactivated user",
        "SELECT count(*) FROM access_tokens t JOIN users u ON u.name = t.user_id WHERE u.deactivated = 1",
        1,
    ),
    // refresh chains
    (
        "pairs without successor",
        "SELECT count(*) FROM refresh_tokens r WHERE next_token_id IS NULL AND EXISTS (SELECT 1 FROM access_tokens a WHERE a.refresh_token_id = r.id)",
        3,
    ),
    (
        "superseded pair whose successor was used",
        "SELECT count(*) FROM refresh_tokens r JOIN access_tokens nx ON nx.refresh_token_id = r.next_token_id WHERE nx.used",
        1,
    ),
    (
        "superseded pair whose successor is unused",
        "SELECT count(*) FROM refresh_tokens r JOIN access_tokens nx ON nx.refresh_token_id = r.next_token_id WHERE NOT nx.used",
        1,
    ),
    (
        "refresh token without access token",
        "SELECT count(*) FROM refresh_tokens r WHERE NOT EXISTS (SELECT 1 FROM access_tokens a WHERE a.refresh_token_id = r.id)",
        1,
    ),
];

#[tokio::test]
async fn synapse_fixture_covers_every_edge_case() {
    for schema in schemas() {
        let db = TestDb::synapse(schema).await;
        let client = db.client().await;
        let mut failures = Vec::new();
        for (what, sql, expected) in EDGE_CASES {
            let got = scalar_i64(&client, sql).await;
            if got != *expected {
                failures.push(format!("{what}: expected {expected}, found {got}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{schema}: data.sql edge cases:\n  {}",
            failures.join("\n  ")
        );
    }
}

/// What upstream's stage queries select from the fixture (upstream-behaviour.md §3.4–3.6), so
/// the README's "what happens to it" column stays true.
#[tokio::test]
async fn synapse_fixture_feeds_upstream_stage_queries_as_documented() {
    for schema in schemas() {
        let db = TestDb::synapse(schema).await;
        let client = db.client().await;
        let ids = |sql: &'static str| {
            let client = &client;
            async move {
                let rows = client.query(sql, &[]).await.unwrap_or_else(|e| {
                    panic!("{}\n{sql}", common::pg_error(&e));
                });
                rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>()
            }
        };
        // Stage 4: non-refreshable, non-puppet tokens on an existing device, or deviceless.
        let stage4 = ids("SELECT id FROM (
                 SELECT at.id FROM access_tokens at JOIN devices USING (user_id, device_id)
                  WHERE at.puppets_user_id IS NULL AND at.refresh_token_id IS NULL
                 UNION ALL
                 SELECT at.id FROM access_tokens at
                  WHERE at.puppets_user_id IS NULL AND at.refresh_token_id IS NULL AND at.device_id IS NULL
             ) s ORDER BY id")
        .await;
        assert_eq!(
            stage4,
            vec![1, 2, 5, 6, 7, 8, 9, 10, 11],
            "{schema}: stage 4 rows"
        );
        // Stage 5: pairs kept unless superseded by a used successor.
        let stage5 = ids("SELECT rt.id FROM refresh_tokens rt
                   JOIN devices USING (user_id, device_id)
                   JOIN access_tokens at ON at.refresh_token_id = rt.id
                    AND at.user_id = rt.user_id AND at.device_id = rt.device_id
                   LEFT JOIN access_tokens nx ON nx.refresh_token_id = rt.next_token_id
                  WHERE nx.used IS NOT TRUE ORDER BY rt.id")
        .await;
        assert_eq!(stage5, vec![1, 3, 4, 5], "{schema}: stage 5 refresh tokens");
        // Stage 6: visible, non-guest devices.
        let stage6 = scalar_i64(
            &client,
            "SELECT count(*) FROM devices WHERE NOT hidden AND device_id <> 'guest_device'",
        )
        .await;
        assert_eq!(stage6, 11, "{schema}: stage 6 devices");
    }
}

#[tokio::test]
async fn synapse_empty_has_schema_and_bookkeeping_only() {
    for schema in schemas() {
        let db = TestDb::synapse_empty(schema).await;
        for table in &SYNAPSE_TABLES[..6] {
            assert_eq!(db.count(table).await, 0, "{schema}: {table}");
        }
        let client = db.client().await;
        assert_eq!(
            scalar_i64(&client, "SELECT version::bigint FROM schema_version").await,
            94,
            "{schema}"
        );
    }
}

#[tokio::test]
async fn synapse_bad_fixtures_load_and_add_their_rows() {
    let cases: &[(&str, &str)] = &[
        (
            "fixtures/synapse/bad/oauth_delegated.sql",
            "SELECT count(*) FROM user_external_ids WHERE auth_provider = 'oauth-delegated'",
        ),
        (
            "fixtures/synapse/bad/wrong_server_name.sql",
            "SELECT (SELECT count(*) FROM users WHERE name = '@bob:other.example')
                  + (SELECT count(*) FROM user_threepids WHERE user_id = '@bob:other.example')
                  + (SELECT count(*) FROM access_tokens WHERE user_id = '@bob:other.example') - 2",
        ),
        (
            "fixtures/synapse/bad/unmapped_provider.sql",
            "SELECT count(*) FROM user_external_ids WHERE auth_provider = 'oidc-gitlab'",
        ),
        (
            "fixtures/synapse/bad/null_name.sql",
            "SELECT count(*) FROM users WHERE name IS NULL",
        ),
        (
            "fixtures/synapse/bad/token_on_hidden_device.sql",
            "SELECT count(*) FROM access_tokens t JOIN devices d USING (user_id, device_id) WHERE d.hidden",
        ),
        (
            "fixtures/synapse/bad/non_bcrypt_hash.sql",
            "SELECT count(*) FROM users WHERE password_hash NOT LIKE '$2_$%'",
        ),
    ];
    for schema in schemas() {
        for (file, sql) in cases {
            let db = TestDb::synapse_with(schema, &[file]).await;
            let client = db.client().await;
            assert_eq!(scalar_i64(&client, sql).await, 1, "{schema}: {file}");
        }
        // They do not collide with each other either.
        let files: Vec<&str> = cases.iter().map(|(f, _)| *f).collect();
        let db = TestDb::synapse_with(schema, &files).await;
        assert_eq!(db.count("users").await, 16, "{schema}: all bad files");
        assert_eq!(
            db.count("access_tokens").await,
            18,
            "{schema}: all bad files"
        );
        assert_eq!(
            db.count("user_external_ids").await,
            6,
            "{schema}: all bad files"
        );
    }
}

/// The genuine Synapse 1.163.2 definitions of the tables syn2mas reads (names, types,
/// nullability, defaults; constraint kinds; index names).
const SYNAPSE_SUMMARY: &[&str] = &[
    "columns users: name text, password_hash text, creation_ts bigint, admin smallint not null default 0, upgrade_ts bigint, is_guest smallint not null default 0, appservice_id text, consent_version text, consent_server_notice_sent text, user_type text, deactivated smallint not null default 0, shadow_banned boolean, consent_ts bigint, approved boolean, locked boolean not null default false, suspended boolean not null default false",
    "constraints users: users_name_key u",
    "indexes users: users_creation_ts, users_name_key",
    "columns user_threepids: user_id text not null, medium text not null, address text not null, validated_at bigint not null, added_at bigint not null",
    "constraints user_threepids: medium_address u",
    "indexes user_threepids: medium_address, user_threepids_medium_address, user_threepids_user_id",
    "columns user_external_ids: auth_provider text not null, external_id text not null, user_id text not null",
    "constraints user_external_ids: user_external_ids_auth_provider_external_id_key u",
    "indexes user_external_ids: user_external_ids_auth_provider_external_id_key, user_external_ids_user_id_idx",
    "columns devices: user_id text not null, device_id text not null, display_name text, last_seen bigint, ip text, user_agent text, hidden boolean default false",
    "constraints devices: device_uniqueness u",
    "indexes devices: device_uniqueness",
    "columns access_tokens: id bigint not null, user_id text not null, device_id text, token text not null, valid_until_ms bigint, puppets_user_id text, last_validated bigint, refresh_token_id bigint, used boolean",
    "constraints access_tokens: access_tokens_pkey p, access_tokens_refresh_token_id_fkey f, access_tokens_token_key u",
    "indexes access_tokens: access_tokens_device_id, access_tokens_pkey, access_tokens_refresh_token_id_idx, access_tokens_token_key",
    "columns refresh_tokens: id bigint not null, user_id text not null, device_id text not null, token text not null, next_token_id bigint, expiry_ts bigint, ultimate_session_expiry_ts bigint",
    "constraints refresh_tokens: refresh_tokens_next_token_id_fkey f, refresh_tokens_pkey p, refresh_tokens_token_key u",
    "indexes refresh_tokens: refresh_tokens_next_token_id, refresh_tokens_pkey, refresh_tokens_token_key",
    "columns schema_version: lock character(1) not null default 'X'::bpchar, version integer not null, upgraded boolean not null",
    "constraints schema_version: schema_version_lock_check c, schema_version_lock_key u",
    "indexes schema_version: schema_version_lock_key",
    "columns schema_compat_version: lock character(1) not null default 'X'::bpchar, compat_version integer not null",
    "constraints schema_compat_version: schema_compat_version_lock_check c, schema_compat_version_lock_key u",
    "indexes schema_compat_version: schema_compat_version_lock_key",
];

#[tokio::test]
async fn synapse_schema_matches_genuine_synapse() {
    let mut project_definition = None;
    for schema in schemas() {
        let db = TestDb::synapse_empty(schema).await;
        let client = db.client().await;
        let mut lines = Vec::new();
        for table in SYNAPSE_TABLES {
            lines.extend(summary(&client, table).await);
        }
        let expected: Vec<String> = SYNAPSE_SUMMARY.iter().map(|s| s.to_string()).collect();
        assert_lines_eq(
            &format!("{schema}: Synapse table summary"),
            &lines,
            &expected,
        );

        let definition = definition(&client, &SYNAPSE_TABLES).await;
        match schema {
            Schema::Project => project_definition = Some(definition),
            Schema::Anchor => assert_same_lines(
                "Synapse tables",
                project_definition.as_deref().expect("project first"),
                &definition,
            ),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// MAS fixture
// ------------------------------------------------------------------------------------------------

const MAS_SUMMARY: &[&str] = &[
    "columns users: user_id uuid not null, username text not null, created_at timestamp with time zone not null, locked_at timestamp with time zone, can_request_admin boolean not null default false, is_guest boolean not null default false, deactivated_at timestamp with time zone",
    "constraints users: users_pkey p, users_username_unique u",
    "indexes users: users_lower_username_idx, users_pkey, users_username_trgm_idx, users_username_unique",
    "columns user_passwords: user_password_id uuid not null, user_id uuid not null, hashed_password text not null, created_at timestamp with time zone not null, version integer not null, upgraded_from_id uuid",
    "constraints user_passwords: user_passwords_pkey p, user_passwords_upgraded_from_id_fkey f, user_passwords_user_id_fkey f",
    "indexes user_passwords: user_passwords_pkey, user_passwords_user_fk",
    "columns user_emails: user_email_id uuid not null, user_id uuid not null, email text not null, created_at timestamp with time zone not null",
    "constraints user_emails: user_emails_pkey p, user_emails_user_id_fkey f",
    "indexes user_emails: user_emails_email_idx, user_emails_lower_email_idx, user_emails_pkey, user_emails_user_fk",
    "columns user_unsupported_third_party_ids: user_id uuid not null, medium text not null, address text not null, created_at timestamp with time zone not null",
    "constraints user_unsupported_third_party_ids: user_unsupported_third_party_ids_pkey p, user_unsupported_third_party_ids_user_id_fkey f",
    "indexes user_unsupported_third_party_ids: user_unsupported_third_party_ids_pkey",
    "columns upstream_oauth_links: upstream_oauth_link_id uuid not null, upstream_oauth_provider_id uuid not null, user_id uuid, subject text not null, created_at timestamp with time zone not null, human_account_name text",
    "constraints upstream_oauth_links: upstream_oauth_link_user_fkey f, upstream_oauth_links_pkey p, upstream_oauth_links_provider_fkey f, upstream_oauth_links_subject_unique u",
    "indexes upstream_oauth_links: idx_upstream_oauth_links_orphaned, upstream_oauth_links_human_account_name_trgm_idx, upstream_oauth_links_pkey, upstream_oauth_links_provider_fk, upstream_oauth_links_subject_unique, upstream_oauth_links_user_fk",
    "columns compat_sessions: compat_session_id uuid not null, user_id uuid not null, device_id text, created_at timestamp with time zone not null, finished_at timestamp with time zone, is_synapse_admin boolean not null default false, last_active_at timestamp with time zone, last_active_ip inet, user_session_id uuid, user_agent text, human_name text",
    "constraints compat_sessions: compat_sessions_pkey p, compat_sessions_user_id_fkey f, compat_sessions_user_session_id_fkey f",
    "indexes compat_sessions: compat_sessions_active_user_idx, compat_sessions_finished_at_idx, compat_sessions_inactive_ips_idx, compat_sessions_last_active_at_idx, compat_sessions_pkey, compat_sessions_user_fk, compat_sessions_user_session_fk",
    "columns compat_access_tokens: compat_access_token_id uuid not null, compat_session_id uuid not null, access_token text not null, created_at timestamp with time zone not null, expires_at timestamp with time zone",
    "constraints compat_access_tokens: compat_access_tokens_access_token_unique u, compat_access_tokens_compat_session_id_fkey f, compat_access_tokens_pkey p",
    "indexes compat_access_tokens: compat_access_tokens_access_token_unique, compat_access_tokens_pkey, compat_access_tokens_session_fk",
    "columns compat_refresh_tokens: compat_refresh_token_id uuid not null, compat_session_id uuid not null, compat_access_token_id uuid not null, refresh_token text not null, created_at timestamp with time zone not null, consumed_at timestamp with time zone",
    "constraints compat_refresh_tokens: compat_refresh_tokens_compat_access_token_id_fkey f, compat_refresh_tokens_compat_session_id_fkey f, compat_refresh_tokens_pkey p, compat_refresh_tokens_refresh_token_unique u",
    "indexes compat_refresh_tokens: compat_refresh_tokens_access_token_fk, compat_refresh_tokens_pkey, compat_refresh_tokens_refresh_token_unique, compat_refresh_tokens_session_fk",
    "columns upstream_oauth_providers: upstream_oauth_provider_id uuid not null, issuer text, scope text not null, client_id text not null, encrypted_client_secret text, token_endpoint_signing_alg text, token_endpoint_auth_method text not null, created_at timestamp with time zone not null, claims_imports jsonb not null default '{}'::jsonb, jwks_uri_override text, authorization_endpoint_override text, token_endpoint_override text, discovery_mode text not null default 'oidc'::text, pkce_mode text not null default 'auto'::text, human_name text, brand_name text, additional_parameters jsonb, disabled_at timestamp with time zone, response_mode text default 'query'::text, fetch_userinfo boolean not null default false, userinfo_endpoint_override text, id_token_signed_response_alg text not null default 'RS256'::text, userinfo_signed_response_alg text, ui_order integer not null default 0, forward_login_hint boolean not null default false, on_backchannel_logout text not null default 'do_nothing'::text, registration_token_required boolean not null default false",
    "constraints upstream_oauth_providers: upstream_oauth_providers_pkey p",
    "indexes upstream_oauth_providers: upstream_oauth_providers_pkey",
];

/// The foreign keys from tables syn2mas does not write that point at the 8 tables it writes
/// (upstream drops and restores them).
const MAS_FOREIGN_INCOMING: &[&str] = &[
    "compat_sso_logins_compat_session_id_fkey",
    "oauth2_sessions_user_id_fkey",
    "personal_sessions_actor_user_id_fkey",
    "personal_sessions_owner_user_id_fkey",
    "upstream_oauth_authorization_sessions_link_fkey",
    "user_recovery_tickets_user_email_id_fkey",
    "user_session_authentications_user_password_id_fkey",
    "user_sessions_user_id_fkey",
    "user_terms_user_id_fkey",
];

async fn project_mas_tables(client: &Client) -> Vec<String> {
    text_column(
        client,
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1",
    )
    .await
}

#[tokio::test]
async fn mas_schema_matches_genuine_mas() {
    let mut project: Option<(Vec<String>, Vec<String>, Vec<String>)> = None;
    for schema in schemas() {
        let db = TestDb::mas_empty(schema).await;
        let client = db.client().await;

        let mut lines = Vec::new();
        for table in MAS_WRITTEN.iter().chain(&["upstream_oauth_providers"]) {
            lines.extend(summary(&client, table).await);
        }
        let expected: Vec<String> = MAS_SUMMARY.iter().map(|s| s.to_string()).collect();
        assert_lines_eq(&format!("{schema}: MAS table summary"), &lines, &expected);

        let incoming = incoming_foreign_keys(&client, &MAS_WRITTEN).await;
        let from_elsewhere: BTreeSet<String> = strings(
            &client,
            "SELECT k.conname::text FROM pg_constraint k
               JOIN pg_class src ON src.oid = k.conrelid JOIN pg_class dst ON dst.oid = k.confrelid
              WHERE k.contype = 'f' AND dst.relname = ANY($1::text[]) AND src.relname <> ALL($1::text[])",
            &MAS_WRITTEN,
        )
        .await
        .into_iter()
        .collect();
        let expected: BTreeSet<String> =
            MAS_FOREIGN_INCOMING.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            from_elsewhere, expected,
            "{schema}: foreign keys into the 8 tables"
        );

        let extension = strings(
            &client,
            "SELECT e.extname || ' in ' || n.nspname FROM pg_extension e
               JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = ANY($1::text[])",
            &["pg_trgm"],
        )
        .await;
        assert_eq!(extension, vec!["pg_trgm in public"], "{schema}: extension");

        match schema {
            Schema::Project => {
                let tables = project_mas_tables(&client).await;
                let refs: Vec<&str> = tables.iter().map(|s| s.as_str()).collect();
                let definition = definition(&client, &refs).await;
                project = Some((tables, definition, incoming));
            }
            Schema::Anchor => {
                let (tables, project_definition, project_incoming) =
                    project.as_ref().expect("project first");
                let refs: Vec<&str> = tables.iter().map(|s| s.as_str()).collect();
                let anchor_definition = definition(&client, &refs).await;
                assert_same_lines(
                    "MAS tables present in the project fixture",
                    project_definition,
                    &anchor_definition,
                );
                assert_same_lines(
                    "foreign keys pointing at the 8 tables syn2mas writes",
                    project_incoming,
                    &incoming,
                );
            }
        }
    }
}

/// On the genuine schema upstream's writer drops 32 constraints (PK/UNIQUE/FK of the 8 tables and
/// FKs pointing at them) and 19 other indexes (mas-target-schema.md §4). The fixture must offer
/// the same to the project's writer.
#[tokio::test]
async fn mas_schema_offers_the_32_constraints_and_19_indexes_syn2mas_rebuilds() {
    for schema in schemas() {
        let db = TestDb::mas_empty(schema).await;
        let client = db.client().await;
        let tables: Vec<String> = MAS_WRITTEN.iter().map(|s| s.to_string()).collect();
        let constraints: i64 = client
            .query_one(
                "SELECT count(DISTINCT k.oid) FROM pg_constraint k
                   LEFT JOIN pg_class own ON own.oid = k.conrelid
                   LEFT JOIN pg_class dst ON dst.oid = k.confrelid
                  WHERE (k.contype IN ('p', 'u', 'f') AND own.relname = ANY($1::text[]))
                     OR (k.contype = 'f' AND dst.relname = ANY($1::text[]))",
                &[&tables],
            )
            .await
            .unwrap()
            .get(0);
        let indexes: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
                  WHERE t.relname = ANY($1::text[])
                    AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid
                                       AND k.contype IN ('p', 'u', 'x'))",
                &[&tables],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!((constraints, indexes), (32, 19), "{schema}");
    }
}

/// A real MAS database (built by migrations) has a dropped column in `users` at position 4; the
/// project fixture reproduces it (the genuine dump, being a dump, cannot).
#[tokio::test]
async fn project_mas_users_has_the_dropped_column_of_real_databases() {
    let db = TestDb::mas_empty(Schema::Project).await;
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT a.attnum::int, a.attisdropped FROM pg_attribute a
              WHERE a.attrelid = 'public.users'::regclass AND a.attnum > 0 ORDER BY a.attnum",
            &[],
        )
        .await
        .unwrap();
    let shape: Vec<(i32, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        shape,
        vec![
            (1, false),
            (2, false),
            (3, false),
            (4, true),
            (5, false),
            (6, false),
            (7, false),
            (8, false)
        ]
    );
}

#[tokio::test]
async fn sqlx_migrations_match_mas_1_22_0() {
    let mut project_rows: Option<Vec<String>> = None;
    for schema in schemas() {
        let db = TestDb::mas_empty(schema).await;
        let client = db.client().await;
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE NOT success), min(version), max(version),
                        count(DISTINCT version), bool_and(length(checksum) = 48)
                   FROM _sqlx_migrations",
                &[],
            )
            .await
            .unwrap();
        let got: (i64, i64, i64, i64, i64, bool) = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
        );
        assert_eq!(
            got,
            (167, 0, OLDEST_MIGRATION, NEWEST_MIGRATION, 167, true),
            "{schema}: (rows, failed, oldest, newest, distinct versions, 48-byte checksums)"
        );
        let newest: (String, String) = {
            let r = client
                .query_one(
                    "SELECT description, encode(checksum, 'hex') FROM _sqlx_migrations
                      WHERE version = $1",
                    &[&NEWEST_MIGRATION],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!(
            newest,
            (
                "idx oauth2 authorization grants user session id".to_string(),
                NEWEST_CHECKSUM.to_string()
            ),
            "{schema}: newest migration"
        );

        let rows = text_column(
            &client,
            "SELECT format('%s|%s|%s|%s', version, description, success, encode(checksum, 'hex'))
               FROM _sqlx_migrations ORDER BY version",
        )
        .await;
        match schema {
            Schema::Project => project_rows = Some(rows),
            Schema::Anchor => assert_same_lines(
                "_sqlx_migrations (version|description|success|checksum)",
                project_rows.as_deref().expect("project first"),
                &rows,
            ),
        }
    }
}

#[tokio::test]
async fn mas_fixture_has_the_google_provider_and_empty_target_tables() {
    let ulid = ulid::Ulid::from_string(common::GOOGLE_PROVIDER_ULID).unwrap();
    let hex = format!("{:032x}", ulid.0);
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    assert_eq!(uuid, common::GOOGLE_PROVIDER_UUID, "ULID -> UUID");

    for schema in schemas() {
        let db = TestDb::mas(schema).await;
        let client = db.client().await;
        let ids = text_column(
            &client,
            "SELECT upstream_oauth_provider_id::text || ' ' || issuer FROM upstream_oauth_providers",
        )
        .await;
        assert_eq!(
            ids,
            vec![format!("{uuid} https://accounts.google.com")],
            "{schema}"
        );
        for table in MAS_WRITTEN {
            assert_eq!(db.count(table).await, 0, "{schema}: {table}");
        }
        let empty = TestDb::mas_empty(schema).await;
        assert_eq!(empty.count("upstream_oauth_providers").await, 0, "{schema}");
    }
}

// ------------------------------------------------------------------------------------------------
// Config fixtures
// ------------------------------------------------------------------------------------------------

fn yaml(relative: &str) -> serde_norway::Value {
    let text = std::fs::read_to_string(common::fixture(relative)).unwrap();
    serde_norway::from_str(&text).unwrap()
}

#[test]
fn demo_configs_agree_with_each_other_and_the_fixtures() {
    use serde_norway::Value;
    let hs = yaml(common::SYNAPSE_CONFIG);
    let mas = yaml(common::MAS_CONFIG);

    assert_eq!(hs["server_name"].as_str(), Some(common::SERVER_NAME));
    assert_eq!(
        mas["matrix"]["homeserver"].as_str(),
        Some(common::SERVER_NAME)
    );
    assert!(mas["matrix"]["secret"].as_str().is_some());

    assert_eq!(hs["database"]["name"].as_str(), Some("psycopg2"));
    assert_eq!(
        hs["database"]["args"]["dbname"].as_str(),
        Some("syn2mas_demo_synapse")
    );
    assert_eq!(
        mas["database"]["uri"].as_str(),
        Some("postgresql://postgres@127.0.0.1:5432/syn2mas_demo_mas")
    );

    // Pepper = v1 bcrypt secret, with unicode normalisation; v2 argon2id.
    assert_eq!(
        hs["password_config"]["pepper"].as_str(),
        Some(common::PEPPER)
    );
    let schemes = mas["passwords"]["schemes"].as_sequence().unwrap();
    assert_eq!(schemes[0]["version"].as_u64(), Some(1));
    assert_eq!(schemes[0]["algorithm"].as_str(), Some("bcrypt"));
    assert_eq!(schemes[0]["secret"].as_str(), Some(common::PEPPER));
    assert_eq!(schemes[0]["unicode_normalization"], Value::Bool(true));
    assert_eq!(schemes[1]["version"].as_u64(), Some(2));
    assert_eq!(schemes[1]["algorithm"].as_str(), Some("argon2id"));

    // Synapse's idp_id `google` is stored as `oidc-google`; MAS maps exactly that.
    let oidc = &hs["oidc_providers"][0];
    let auth_provider = format!("oidc-{}", oidc["idp_id"].as_str().unwrap());
    let provider = &mas["upstream_oauth2"]["providers"][0];
    assert_eq!(
        provider["synapse_idp_id"].as_str(),
        Some(auth_provider.as_str())
    );
    assert_eq!(provider["id"].as_str(), Some(common::GOOGLE_PROVIDER_ULID));
    assert_eq!(provider["enabled"], Value::Bool(true));
    assert_eq!(provider["issuer"], oidc["issuer"]);
    assert_eq!(provider["client_id"], oidc["client_id"]);
    for key in ["token_endpoint_auth_method", "scope", "client_secret"] {
        assert!(provider[key].as_str().is_some(), "provider.{key}");
    }
    assert_eq!(
        mas["secrets"]["encryption"].as_str().map(str::len),
        Some(64),
        "secrets.encryption is 32 bytes of hex"
    );
}

// ------------------------------------------------------------------------------------------------
// Harness mechanics
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn test_databases_are_isolated_and_dropped() {
    let a = TestDb::synapse(Schema::Project).await;
    let b = TestDb::synapse(Schema::Project).await;
    assert_ne!(a.name, b.name);
    a.exec("DELETE FROM access_tokens; DELETE FROM users;")
        .await;
    assert_eq!(a.count("users").await, 0);
    assert_eq!(b.count("users").await, 13);

    // A connection left open does not prevent the drop.
    let _open = a.client().await;
    let name = a.name.clone();
    assert!(a.exists());
    a.drop_now();
    assert!(
        !common::database_exists(&name),
        "{name} still exists after drop_now"
    );

    // Plain drop removes it in the background, open connection or not.
    let _open = b.client().await;
    let name = b.name.clone();
    drop(b);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while common::database_exists(&name) {
        assert!(
            std::time::Instant::now() < deadline,
            "{name} still exists 120 s after drop"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn exec_reports_sql_errors() {
    let db = TestDb::synapse_empty(Schema::Project).await;
    let name = db.name.clone();
    let handle = tokio::spawn(async move {
        db.exec("SELECT * FROM no_such_table").await;
    });
    let err = handle.await.expect_err("exec must panic on SQL errors");
    let payload = err.into_panic();
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        msg.contains("no_such_table") && msg.contains(&name),
        "unexpected panic message: {msg}"
    );
}

#[tokio::test]
async fn uri_and_written_configs_reach_the_test_databases() {
    let synapse = TestDb::synapse(Schema::Project).await;
    let mas = TestDb::mas(Schema::Project).await;

    let (client, connection) = tokio_postgres::connect(&mas.uri(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{}: {}", mas.uri(), common::pg_error(&e)));
    tokio::spawn(connection);
    let current: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, mas.name);

    let dir = tempfile::tempdir().unwrap();
    let (hs_path, mas_path) = common::write_configs(dir.path(), &synapse, &mas);
    let hs: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&hs_path).unwrap()).unwrap();
    let mas_config: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&mas_path).unwrap()).unwrap();
    let server = common::server();
    assert_eq!(
        hs["database"]["args"]["dbname"].as_str(),
        Some(synapse.name.as_str())
    );
    assert_eq!(
        hs["database"]["args"]["host"].as_str(),
        Some(server.host.as_str())
    );
    assert_eq!(
        hs["database"]["args"]["port"].as_u64(),
        Some(u64::from(server.port))
    );
    assert_eq!(
        mas_config["database"]["uri"].as_str(),
        Some(mas.uri().as_str())
    );
    // Everything else is the demo config.
    assert_eq!(hs["server_name"].as_str(), Some(common::SERVER_NAME));
    assert_eq!(
        mas_config["upstream_oauth2"]["providers"][0]["synapse_idp_id"].as_str(),
        Some("oidc-google")
    );

    assert!(common::syn2mas_bin().is_file(), "syn2mas binary is built");
}
