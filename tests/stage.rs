//! `syn2mas prestage` and the staged `migrate`: a stage built while Synapse changes, then a
//! window that applies only what changed, must give exactly what a full migration of the final
//! Synapse gives (same ids with the same seed, same clock), and `verify` must pass.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Output, Stdio};

use common::{Fixture as Env, Schema, TestDb, schemas};

/// A fixed "now" (2026-01-01T00:00:00Z) so two runs write identical rows.
const NOW_MS: &str = "1767225600000";

const TARGETS: [&str; 8] = syn2mas::sink::tables::NAMES;

/// What happens on a homeserver between the prestage and the window, on the fixture: every
/// kind of change, and users whose only change is a deletion (which no xmin shows).
const CHURN: &str = "
-- a registration with a login and an email
INSERT INTO users (name, password_hash, creation_ts, admin, is_guest, appservice_id, deactivated, locked)
     VALUES ('@newbie:example.com', '$2b$12$NmLaz82c.IMiK3/8mYweqeRBRNhAFFbk468OEoRgFpayONpvnBOLK', 1765000000, 0, 0, NULL, 0, false);
INSERT INTO devices (user_id, device_id, display_name, last_seen, ip, user_agent, hidden)
     VALUES ('@newbie:example.com', 'NEWDEV', 'New phone', 1765000100000, '192.0.2.5', 'Element', false);
INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, puppets_user_id, last_validated, refresh_token_id, used)
     VALUES (100, '@newbie:example.com', 'NEWDEV', 'syt_bmV3Ymll_churnchurnchurnchurn_0aaaaa', NULL, NULL, 1765000100000, NULL, true);
INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at)
     VALUES ('@newbie:example.com', 'email', 'newbie@example.com', 1765000000000, 1765000000000);
-- a password change, a device deleted, a new external id
UPDATE users SET password_hash = '$2b$12$uHpJji4QlBts50Jx9M08weSABDYVEgWRKaZa2hCjAbGLL0RTwn8Qq' WHERE name = '@carol:example.com';
DELETE FROM devices WHERE user_id = '@carol:example.com' AND device_id = 'CAROLTAB';
INSERT INTO user_external_ids (auth_provider, external_id, user_id) VALUES ('oidc-google', '123123123123123', '@carol:example.com');
-- a deactivation and a lock
UPDATE users SET deactivated = 1 WHERE name = '@grace:example.com';
UPDATE users SET locked = true WHERE name = '@alice:example.com';
-- a login on another device
INSERT INTO devices (user_id, device_id, display_name, last_seen, ip, user_agent, hidden)
     VALUES ('@dave:example.com', 'DAVENEW', 'Dave''s laptop', 1765000200000, '192.0.2.6', 'Element', false);
INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, puppets_user_id, last_validated, refresh_token_id, used)
     VALUES (101, '@dave:example.com', 'DAVENEW', 'syt_ZGF2ZQ_churnchurnchurnchurn_1bbbbb', NULL, NULL, 1765000200000, NULL, true);
-- deletions only: a logout, a device without tokens, an email, an external id
DELETE FROM access_tokens WHERE id = 9;
DELETE FROM devices WHERE user_id = '@josé:example.com' AND device_id = 'JOSEDEV';
DELETE FROM user_threepids WHERE user_id = '@erin:example.com';
DELETE FROM user_external_ids WHERE user_id = '@frank:example.com';
-- a refresh: rt 5 is replaced by rt 7, whose access token 17 is used (so rt 5 is superseded)
INSERT INTO refresh_tokens (id, user_id, device_id, token, next_token_id, expiry_ts, ultimate_session_expiry_ts)
     VALUES (7, '@MixedCase:example.com', 'MIXEDDEV', 'syr_TWl4ZWRDYXNl_churnchurnchurnchur_0ccccc', NULL, NULL, NULL);
UPDATE refresh_tokens SET next_token_id = 7 WHERE id = 5;
INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, puppets_user_id, last_validated, refresh_token_id, used)
     VALUES (17, '@MixedCase:example.com', 'MIXEDDEV', 'syt_TWl4ZWRDYXNl_churnchurnchurnchur_0ddddd', 1765000900000, NULL, 1765000300000, 7, true);
-- a guest upgraded to a full account
UPDATE users SET is_guest = 0, password_hash = '$2b$12$NmLaz82c.IMiK3/8mYweqeRBRNhAFFbk468OEoRgFpayONpvnBOLK' WHERE name = '@1001:example.com';
";

/// The users `CHURN` changes: newbie, carol, grace, alice, dave, admin, josé, erin, frank,
/// MixedCase, 1001.
const CHURNED_USERS: u64 = 11;

fn run(env: &Env, args: &[&str]) -> Output {
    env.syn2mas(args)
        .env("SYN2MAS_TEST_NOW_MS", NOW_MS)
        .output()
        .expect("run syn2mas")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn ok(out: &Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// Every row of every MAS table, as text, sorted.
async fn dump(db: &TestDb) -> BTreeMap<&'static str, Vec<String>> {
    let client = db.client().await;
    let mut out = BTreeMap::new();
    for t in TARGETS {
        let rows = client
            .query(&format!("SELECT x::text FROM {t} x ORDER BY 1"), &[])
            .await
            .unwrap();
        out.insert(t, rows.iter().map(|r| r.get(0)).collect());
    }
    out
}

async fn stage_exists(db: &TestDb) -> bool {
    db.client()
        .await
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = 'syn2mas_stage'",
            &[],
        )
        .await
        .unwrap()
        .is_some()
}

/// What a full migration of the churned fixture writes (no stage involved).
async fn full_run(schema: Schema) -> BTreeMap<&'static str, Vec<String>> {
    let env = Env::of(TestDb::synapse(schema).await, TestDb::mas(schema).await);
    env.synapse.exec(CHURN).await;
    ok(&run(&env, &["migrate", "--allow-warnings", "--seed", "1"]));
    dump(&env.mas).await
}

#[tokio::test(flavor = "multi_thread")]
async fn prestage_then_changes_then_migrate_equals_a_full_migration() {
    for schema in schemas() {
        let expected = full_run(schema).await;
        let env = Env::of(TestDb::synapse(schema).await, TestDb::mas(schema).await);
        let before = env.mas.fingerprint(&["syn2mas_stage"]).await;
        let out = run(
            &env,
            &["prestage", "--allow-warnings", "--seed", "1", "--json"],
        );
        let doc = ok(&out);
        assert_eq!(doc["migrate"]["prestage"], true, "{schema}");
        assert!(stage_exists(&env.mas).await, "{schema}: no stage");
        assert_eq!(
            env.mas.fingerprint(&["syn2mas_stage"]).await,
            before,
            "{schema}: prestage changed MAS outside its stage"
        );

        env.synapse.exec(CHURN).await;
        let out = run(&env, &["migrate", "--allow-warnings", "--json"]);
        let doc = ok(&out);
        assert_eq!(
            doc["migrate"]["staged"]["changed_users"], CHURNED_USERS,
            "{schema}: {}",
            doc["migrate"]
        );
        assert_eq!(dump(&env.mas).await, expected, "{schema}: staged ≠ full");
        assert!(!stage_exists(&env.mas).await, "{schema}: the stage is left");
        assert!(env.mas.leftovers().await.is_empty());
        let verify = run(&env, &["verify"]);
        assert_eq!(
            verify.status.code(),
            Some(0),
            "{schema}: {}",
            stderr(&verify)
        );
    }
}

/// Without any change the window re-derives nobody and still equals a full run.
#[tokio::test(flavor = "multi_thread")]
async fn a_stage_without_changes_is_swapped_in_as_it_is() {
    let schema = Schema::Project;
    let reference = Env::of(TestDb::synapse(schema).await, TestDb::mas(schema).await);
    ok(&run(
        &reference,
        &["migrate", "--allow-warnings", "--seed", "1"],
    ));
    let env = Env::of(TestDb::synapse(schema).await, TestDb::mas(schema).await);
    ok(&run(&env, &["prestage", "--allow-warnings", "--seed", "1"]));
    let status = ok(&run(&env, &["stage", "status", "--json"]));
    assert_eq!(status["valid"], true, "{status}");
    assert_eq!(status["changed_users"], 0, "{status}");
    assert_eq!(status["rows"]["users"], 10, "{status}");
    let doc = ok(&run(&env, &["migrate", "--allow-warnings", "--json"]));
    assert_eq!(doc["migrate"]["staged"]["changed_users"], 0);
    assert_eq!(dump(&env.mas).await, dump(&reference.mas).await);
}

/// A dry run of the staged migration leaves MAS and the stage as they were; `--no-stage`
/// migrates everything and leaves the stage alone; `stage drop` removes it.
#[tokio::test(flavor = "multi_thread")]
async fn dry_run_keeps_the_stage_and_no_stage_ignores_it() {
    let schema = Schema::Project;
    let env = Env::of(TestDb::synapse(schema).await, TestDb::mas(schema).await);
    ok(&run(&env, &["prestage", "--allow-warnings", "--seed", "1"]));
    env.synapse.exec(CHURN).await;
    let before = env.mas.fingerprint(&[]).await;
    let doc = ok(&run(
        &env,
        &["migrate", "--allow-warnings", "--dry-run", "--json"],
    ));
    assert_eq!(doc["migrate"]["staged"]["changed_users"], CHURNED_USERS);
    assert_eq!(
        env.mas.fingerprint(&[]).await,
        before,
        "dry run changed MAS"
    );

    let doc = ok(&run(
        &env,
        &[
            "migrate",
            "--allow-warnings",
            "--no-stage",
            "--seed",
            "1",
            "--json",
        ],
    ));
    assert!(doc["migrate"].get("staged").is_none(), "{}", doc["migrate"]);
    assert!(stage_exists(&env.mas).await);
    assert_eq!(dump(&env.mas).await, full_run(schema).await);
    let out = run(&env, &["stage", "drop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stage_exists(&env.mas).await);
}

/// A stage built from one Synapse database is refused for another, naming both, and nothing
/// changes.
#[tokio::test(flavor = "multi_thread")]
async fn a_stage_of_another_synapse_database_is_refused() {
    let schema = Schema::Project;
    let env = Env::of(TestDb::synapse(schema).await, TestDb::mas(schema).await);
    ok(&run(&env, &["prestage", "--allow-warnings", "--seed", "1"]));
    let other = TestDb::synapse(schema).await;
    let before = env.mas.fingerprint(&[]).await;
    let out = env
        .syn2mas(&["migrate", "--allow-warnings"])
        .arg("--synapse-database-uri")
        .arg(other.uri())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refusing the stage: the stage was built from Synapse database")
            && stderr(&out).contains("--no-stage"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.mas.fingerprint(&[]).await, before);
}

/// Killed anywhere, a prestage leaves no stage (or the previous one), and a staged migrate
/// leaves the stage as it was: the next run works.
#[tokio::test(flavor = "multi_thread")]
async fn kills_leave_no_half_stage_and_no_half_swap() {
    let schema = Schema::Project;
    let expected = full_run(schema).await;

    // A prestage killed as it finishes: no stage, and migrate takes the full path.
    let env = Env::of(TestDb::synapse(schema).await, TestDb::mas(schema).await);
    let before = env.mas.fingerprint(&["syn2mas_shadow"]).await;
    kill_at(
        &env,
        &["prestage", "--allow-warnings", "--seed", "1"],
        "stage-finish",
    );
    assert!(!stage_exists(&env.mas).await);
    assert_eq!(env.mas.fingerprint(&["syn2mas_shadow"]).await, before);

    // A staged migrate killed after applying the changes inside its transaction: MAS and the
    // stage are as they were, and the next migrate applies the stage.
    ok(&run(&env, &["prestage", "--allow-warnings", "--seed", "1"]));
    env.synapse.exec(CHURN).await;
    let staged = env.mas.fingerprint(&[]).await;
    for point in ["delta-detect", "delta-applied", "swap-moved"] {
        kill_at(&env, &["migrate", "--allow-warnings"], point);
        assert_eq!(env.mas.fingerprint(&[]).await, staged, "killed at {point}");
    }
    let doc = ok(&run(&env, &["migrate", "--allow-warnings", "--json"]));
    assert_eq!(doc["migrate"]["staged"]["changed_users"], CHURNED_USERS);
    assert_eq!(dump(&env.mas).await, expected);
}

/// Runs `args` until it pauses at `point`, then SIGKILLs it.
fn kill_at(env: &Env, args: &[&str], point: &str) {
    let mut child = env
        .syn2mas(args)
        .env("SYN2MAS_TEST_NOW_MS", NOW_MS)
        .env("SYN2MAS_TEST_PAUSE", point)
        .env("SYN2MAS_TEST_PAUSE_SECS", "600")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines {
        let line = line.unwrap();
        if line.contains(&format!("paused at {point}")) {
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
        seen.push(line);
    }
    let status = child.wait().unwrap();
    panic!("never paused at {point} ({status}):\n{}", seen.join("\n"));
}
