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

/// Runs syn2mas with the fixed clock, applying a stage whatever share of users changed (on the
/// fixture most of them do; `too_many_changes_fall_back_to_a_full_run` tests the default).
fn run(env: &Env, args: &[&str]) -> Output {
    env.syn2mas(args)
        .env("SYN2MAS_TEST_NOW_MS", NOW_MS)
        .env("SYN2MAS_TEST_FULL_ABOVE", "100")
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

/// MAS's schema: every index and constraint, by name and definition.
async fn definitions(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'
             UNION ALL
             SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
               FROM pg_constraint WHERE connamespace = 'public'::regnamespace
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn prestage_then_changes_then_migrate_equals_a_full_migration() {
    for schema in schemas() {
        let expected = full_run(schema).await;
        let env = Env::of(TestDb::synapse(schema).await, TestDb::mas(schema).await);
        let catalogue = definitions(&env.mas).await;
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
        assert_eq!(
            definitions(&env.mas).await,
            catalogue,
            "{schema}: MAS's definitions"
        );
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
    let check = run(&env, &["check", "--json"]);
    let check: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(check["stage"]["valid"], true, "{}", check["stage"]);
    assert_eq!(check["stage"]["rows"]["users"], 10, "{}", check["stage"]);
    let status = ok(&run(&env, &["stage", "status", "--json"]));
    assert_eq!(status["valid"], true, "{status}");
    assert_eq!(status["changed_users"], 0, "{status}");
    assert_eq!(status["rows"]["users"], 10, "{status}");
    let doc = ok(&run(&env, &["migrate", "--allow-warnings", "--json"]));
    assert_eq!(doc["migrate"]["staged"]["changed_users"], 0);
    assert_eq!(dump(&env.mas).await, dump(&reference.mas).await);
}

/// A second prestage refreshes the stage with what changed since (the changed users only),
/// `--rebuild` builds a new one, `--seed` with another key rebuilds too; the window after a
/// refresh applies only what changed since the refresh, and equals a full run.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_prestage_refreshes_the_stage() {
    let schema = Schema::Project;
    let expected = full_run(schema).await;
    let env = Env::of(TestDb::synapse(schema).await, TestDb::mas(schema).await);
    ok(&run(&env, &["prestage", "--allow-warnings", "--seed", "1"]));
    env.synapse.exec(CHURN).await;
    let doc = ok(&run(
        &env,
        &["prestage", "--allow-warnings", "--seed", "1", "--json"],
    ));
    assert_eq!(
        doc["migrate"]["staged"]["changed_users"], CHURNED_USERS,
        "{}",
        doc["migrate"]
    );
    let status = ok(&run(&env, &["stage", "status", "--json"]));
    assert_eq!(status["changed_users"], 0, "{status}");
    let doc = ok(&run(
        &env,
        &[
            "prestage",
            "--allow-warnings",
            "--rebuild",
            "--seed",
            "1",
            "--json",
        ],
    ));
    assert!(doc["migrate"].get("staged").is_none(), "{}", doc["migrate"]);
    let out = run(
        &env,
        &["prestage", "--allow-warnings", "--seed", "2", "--json"],
    );
    let doc = ok(&out);
    assert!(doc["migrate"].get("staged").is_none(), "{}", doc["migrate"]);
    assert!(
        stderr(&out).contains("built with another --seed"),
        "{}",
        stderr(&out)
    );
    ok(&run(
        &env,
        &["prestage", "--allow-warnings", "--seed", "1", "--rebuild"],
    ));
    let doc = ok(&run(&env, &["migrate", "--allow-warnings", "--json"]));
    assert_eq!(doc["migrate"]["staged"]["changed_users"], 0);
    assert_eq!(dump(&env.mas).await, expected);
}

/// With most users changed (11 of the fixture's 13), or 2 of 14, applying the stage would cost more than a
/// full run: the window migrates in full and says so, a refresh builds a new stage; both give
/// what a full run gives.
#[tokio::test(flavor = "multi_thread")]
async fn too_many_changes_fall_back_to_a_full_run() {
    let schema = Schema::Project;
    let expected = full_run(schema).await;
    let env = Env::of(TestDb::synapse(schema).await, TestDb::mas(schema).await);
    let with_default = |args: &[&str]| {
        env.syn2mas(args)
            .env("SYN2MAS_TEST_NOW_MS", NOW_MS)
            .output()
            .unwrap()
    };
    ok(&with_default(&[
        "prestage",
        "--allow-warnings",
        "--seed",
        "1",
    ]));
    env.synapse.exec(CHURN).await;
    let out = with_default(&["prestage", "--allow-warnings", "--seed", "1", "--json"]);
    let doc = ok(&out);
    assert!(doc["migrate"].get("staged").is_none(), "{}", doc["migrate"]);
    assert!(
        stderr(&out).contains("building a new stage instead"),
        "{}",
        stderr(&out)
    );
    env.synapse
        .exec("UPDATE users SET locked = NOT locked WHERE name IN ('@alice:example.com', '@dave:example.com')")
        .await;
    env.synapse
        .exec("UPDATE users SET locked = NOT locked WHERE name IN ('@alice:example.com', '@dave:example.com')")
        .await;
    let out = with_default(&["migrate", "--allow-warnings", "--seed", "1", "--json"]);
    let doc = ok(&out);
    assert!(doc["migrate"].get("staged").is_none(), "{}", doc["migrate"]);
    assert!(
        stderr(&out)
            .contains("2 of the stage's 14 Synapse users (14.3 %) changed since its snapshot")
            && stderr(&out).contains("migrating in full instead"),
        "{}",
        stderr(&out)
    );
    assert_eq!(dump(&env.mas).await, expected);
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
    let check = env
        .syn2mas(&["check", "--json"])
        .arg("--synapse-database-uri")
        .arg(other.uri())
        .output()
        .unwrap();
    let check: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(check["stage"]["valid"], false, "{}", check["stage"]);
    assert!(
        check["stage"]["invalid_because"]
            .as_str()
            .is_some_and(|w| w.contains("built from Synapse database")),
        "{}",
        check["stage"]
    );
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

    // With a stage: a rebuilding prestage killed anywhere, and a refresh killed inside its
    // transaction, leave the stage exactly as it was (and MAS).
    ok(&run(&env, &["prestage", "--allow-warnings", "--seed", "1"]));
    env.synapse.exec(CHURN).await;
    let staged = env.mas.fingerprint(&["syn2mas_shadow"]).await;
    for signal in [libc::SIGKILL, libc::SIGTERM] {
        for point in ["after-users", "rebuild", "stage-finish"] {
            let args = ["prestage", "--allow-warnings", "--seed", "1", "--rebuild"];
            signal_at(&env, &args, point, signal);
            assert_eq!(
                env.mas.fingerprint(&["syn2mas_shadow"]).await,
                staged,
                "prestage --rebuild stopped by signal {signal} at {point}"
            );
        }
        for point in ["delta-detect", "delta-applied"] {
            let args = ["prestage", "--allow-warnings", "--seed", "1"];
            signal_at(&env, &args, point, signal);
            assert_eq!(
                env.mas.fingerprint(&["syn2mas_shadow"]).await,
                staged,
                "refresh stopped by signal {signal} at {point}"
            );
        }
    }

    // A staged migrate killed after applying the changes inside its transaction: MAS and the
    // stage are as they were, and the next migrate applies the stage.
    let staged = env.mas.fingerprint(&["syn2mas_shadow"]).await;
    for signal in [libc::SIGKILL, libc::SIGTERM] {
        for point in ["delta-detect", "delta-applied", "swap-moved"] {
            signal_at(&env, &["migrate", "--allow-warnings"], point, signal);
            assert_eq!(
                env.mas.fingerprint(&["syn2mas_shadow"]).await,
                staged,
                "stopped by signal {signal} at {point}"
            );
        }
    }
    let doc = ok(&run(&env, &["migrate", "--allow-warnings", "--json"]));
    assert_eq!(doc["migrate"]["staged"]["changed_users"], CHURNED_USERS);
    assert_eq!(dump(&env.mas).await, expected);
}

/// Runs `args` until it pauses at `point`, then SIGKILLs it.
fn kill_at(env: &Env, args: &[&str], point: &str) {
    signal_at(env, args, point, libc::SIGKILL);
}

/// Runs `args` until it pauses at `point`, then sends it `signal`; after a SIGTERM the run must
/// end as a stopped run does (exit 143).
fn signal_at(env: &Env, args: &[&str], point: &str, signal: libc::c_int) {
    let mut child = env
        .syn2mas(args)
        .env("SYN2MAS_TEST_NOW_MS", NOW_MS)
        .env("SYN2MAS_TEST_FULL_ABOVE", "100")
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
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
            let status = child.wait().unwrap();
            if signal == libc::SIGTERM {
                assert_eq!(status.code(), Some(143), "SIGTERM at {point}");
            }
            return;
        }
        seen.push(line);
    }
    let status = child.wait().unwrap();
    panic!("never paused at {point} ({status}):\n{}", seen.join("\n"));
}

// ------------------------------------------------------------------------------------------------
// Property: random churn, some of it while the prestage holds its snapshot
// ------------------------------------------------------------------------------------------------

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Synthetic users `@u1` … `@u{SYNTHETIC}` added to the fixture, each with a device `D<i>`, a
/// token on it, and (every other one) an email.
const SYNTHETIC: usize = 30;

const BASE: &str = "
INSERT INTO users (name, password_hash, creation_ts, admin, is_guest, appservice_id, deactivated, locked)
SELECT '@u' || i || ':example.com', '$2b$12$NmLaz82c.IMiK3/8mYweqeRBRNhAFFbk468OEoRgFpayONpvnBOLK', 1600000000 + i, 0, 0, NULL, 0, false
  FROM generate_series(1, 30) i;
INSERT INTO devices (user_id, device_id, display_name, last_seen, ip, user_agent, hidden)
SELECT '@u' || i || ':example.com', 'D' || i, 'device ' || i, 1700000000000 + i, '192.0.2.1', 'Element', false
  FROM generate_series(1, 30) i;
INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, puppets_user_id, last_validated, refresh_token_id, used)
SELECT 1000 + i, '@u' || i || ':example.com', 'D' || i, 'syt_base_' || md5(i::text), NULL, NULL, 1700000000000 + i, NULL, true
  FROM generate_series(1, 30) i;
INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at)
SELECT '@u' || i || ':example.com', 'email', 'u' || i || '@example.com', 1600000000000 + i, 1600000000000 + i
  FROM generate_series(2, 30, 2) i;
";

/// One change a homeserver sees; `k` makes new rows unique.
#[derive(Debug, Clone)]
enum Op {
    Register(usize),
    Password(usize),
    Deactivate(usize),
    ToggleLock(usize),
    Login(usize, usize),
    Logout(usize),
    DeleteDevice(usize),
    AddEmail(usize, usize),
    RemoveEmails(usize),
    AddLink(usize, usize),
    RemoveLinks(usize),
    RefreshableLogin(usize, usize),
    UpgradeGuest,
}

impl Op {
    fn sql(&self) -> String {
        let u = |i: &usize| format!("'@u{i}:example.com'");
        match self {
            Op::Register(k) => format!(
                "INSERT INTO users (name, password_hash, creation_ts, admin, is_guest, appservice_id, deactivated, locked)
                      VALUES ('@n{k}:example.com', NULL, {}, 0, 0, NULL, 0, false);
                 INSERT INTO devices (user_id, device_id, display_name, last_seen, ip, user_agent, hidden)
                      VALUES ('@n{k}:example.com', 'N{k}', NULL, 1765000000000, '192.0.2.9', 'Element', false);
                 INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, puppets_user_id, last_validated, refresh_token_id, used)
                      VALUES ({}, '@n{k}:example.com', 'N{k}', 'syt_new_{k}', NULL, NULL, 1765000000000, NULL, true);",
                1765000000 + k,
                20_000 + k
            ),
            Op::Password(i) => format!(
                "UPDATE users SET password_hash = '$2b$12$uHpJji4QlBts50Jx9M08weSABDYVEgWRKaZa2hCjAbGLL0RTwn8Qq' WHERE name = {}",
                u(i)
            ),
            Op::Deactivate(i) => format!("UPDATE users SET deactivated = 1 WHERE name = {}", u(i)),
            Op::ToggleLock(i) => format!("UPDATE users SET locked = NOT locked WHERE name = {}", u(i)),
            Op::Login(i, k) => format!(
                "INSERT INTO devices (user_id, device_id, display_name, last_seen, ip, user_agent, hidden)
                      VALUES ({u}, 'L{k}', 'login {k}', 1765000000000, '192.0.2.10', 'Element', false);
                 INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, puppets_user_id, last_validated, refresh_token_id, used)
                      VALUES ({}, {u}, 'L{k}', 'syt_login_{k}', NULL, NULL, 1765000000000, NULL, true);",
                30_000 + k,
                u = u(i)
            ),
            Op::Logout(i) => format!(
                "DELETE FROM access_tokens WHERE id = (SELECT min(id) FROM access_tokens WHERE user_id = {})",
                u(i)
            ),
            Op::DeleteDevice(i) => format!(
                "DELETE FROM devices WHERE user_id = {u} AND device_id = 'D{i}'",
                u = u(i)
            ),
            Op::AddEmail(i, k) => format!(
                "INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at)
                      VALUES ({}, 'email', 'x{k}@example.com', 1765000000000, 1765000000000)",
                u(i)
            ),
            Op::RemoveEmails(i) => format!("DELETE FROM user_threepids WHERE user_id = {}", u(i)),
            Op::AddLink(i, k) => format!(
                "INSERT INTO user_external_ids (auth_provider, external_id, user_id) VALUES ('oidc-google', 'sub{k}', {})",
                u(i)
            ),
            Op::RemoveLinks(i) => format!("DELETE FROM user_external_ids WHERE user_id = {}", u(i)),
            Op::RefreshableLogin(i, k) => format!(
                "INSERT INTO devices (user_id, device_id, display_name, last_seen, ip, user_agent, hidden)
                      VALUES ({u}, 'R{k}', NULL, 1765000000000, '192.0.2.11', 'Element', false);
                 INSERT INTO refresh_tokens (id, user_id, device_id, token, next_token_id, expiry_ts, ultimate_session_expiry_ts)
                      VALUES ({rt}, {u}, 'R{k}', 'syr_login_{k}', NULL, NULL, NULL);
                 INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, puppets_user_id, last_validated, refresh_token_id, used)
                      VALUES ({at}, {u}, 'R{k}', 'syt_refresh_{k}', 1765000900000, NULL, 1765000000000, {rt}, false);",
                u = u(i),
                rt = 40_000 + k,
                at = 50_000 + k
            ),
            Op::UpgradeGuest => "UPDATE users SET is_guest = 0 WHERE name = '@1001:example.com'".into(),
        }
    }
}

fn op() -> impl Strategy<Value = Op> {
    let i = 1..=SYNTHETIC;
    prop_oneof![
        Just(Op::Register(0)),
        i.clone().prop_map(Op::Password),
        i.clone().prop_map(Op::Deactivate),
        i.clone().prop_map(Op::ToggleLock),
        i.clone().prop_map(|i| Op::Login(i, 0)),
        i.clone().prop_map(Op::Logout),
        i.clone().prop_map(Op::DeleteDevice),
        i.clone().prop_map(|i| Op::AddEmail(i, 0)),
        i.clone().prop_map(Op::RemoveEmails),
        i.clone().prop_map(|i| Op::AddLink(i, 0)),
        i.clone().prop_map(Op::RemoveLinks),
        i.prop_map(|i| Op::RefreshableLogin(i, 0)),
        Just(Op::UpgradeGuest),
    ]
}

/// Gives every op that creates rows its own `k`.
fn numbered(ops: Vec<Op>, first: usize) -> Vec<Op> {
    ops.into_iter()
        .enumerate()
        .map(|(n, op)| {
            let k = first + n;
            match op {
                Op::Register(_) => Op::Register(k),
                Op::Login(i, _) => Op::Login(i, k),
                Op::AddEmail(i, _) => Op::AddEmail(i, k),
                Op::AddLink(i, _) => Op::AddLink(i, k),
                Op::RefreshableLogin(i, _) => Op::RefreshableLogin(i, k),
                other => other,
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
struct ChurnCase {
    /// Applied by another session while the prestage holds its snapshot.
    during: Vec<Op>,
    /// Applied after the prestage (and before the refresh, if any).
    after: Vec<Op>,
    /// A second prestage (a refresh) and more changes after it.
    refresh: Option<Vec<Op>>,
    /// On the genuine schemas (when the anchor dumps are there) instead of the project's.
    genuine: bool,
}

fn churn_case() -> impl Strategy<Value = ChurnCase> {
    (
        prop::collection::vec(op(), 0..6),
        prop::collection::vec(op(), 0..10),
        prop::option::of(prop::collection::vec(op(), 0..6)),
        any::<bool>(),
    )
        .prop_map(|(during, after, refresh, genuine)| ChurnCase {
            during: numbered(during, 0),
            after: numbered(after, 100),
            refresh: refresh.map(|r| numbered(r, 200)),
            genuine,
        })
}

async fn apply(db: &TestDb, ops: &[Op]) {
    for op in ops {
        db.exec(&op.sql()).await;
    }
}

/// Prestage, paused after reading users while `during` is applied by another session.
async fn prestage_with_writer(env: &Env, during: &[Op]) -> Result<(), TestCaseError> {
    let mut child = env
        .syn2mas(&["prestage", "--allow-warnings", "--seed", "1"])
        .env("SYN2MAS_TEST_NOW_MS", NOW_MS)
        .env("SYN2MAS_TEST_FULL_ABOVE", "100")
        .env("SYN2MAS_TEST_PAUSE", "after-users")
        .env("SYN2MAS_TEST_PAUSE_SECS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let paused = line.contains("paused at after-users");
        seen.push(line);
        if paused {
            break;
        }
    }
    apply(&env.synapse, during).await;
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    prop_assert_eq!(status.code(), Some(0), "{}", seen.join("\n"));
    Ok(())
}

async fn churn_property(case: ChurnCase) -> Result<(), TestCaseError> {
    let schema = match schemas().as_slice() {
        [.., last] if case.genuine => *last,
        _ => Schema::Project,
    };
    let env = Env::of(TestDb::synapse(schema).await, TestDb::mas(schema).await);
    env.synapse.exec(BASE).await;
    prestage_with_writer(&env, &case.during).await?;
    apply(&env.synapse, &case.after).await;
    if let Some(more) = &case.refresh {
        let out = run(
            &env,
            &["prestage", "--allow-warnings", "--seed", "1", "--json"],
        );
        prop_assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        prop_assert!(
            doc["migrate"]["staged"].is_object(),
            "not refreshed: {}",
            doc
        );
        apply(&env.synapse, more).await;
    }
    let out = run(&env, &["migrate", "--allow-warnings", "--json"]);
    prop_assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    prop_assert!(doc["migrate"]["staged"].is_object(), "not staged: {}", doc);

    // The same final Synapse, migrated in full into another MAS database.
    let full = TestDb::mas(schema).await;
    let out = env
        .syn2mas(&["migrate", "--allow-warnings", "--seed", "1"])
        .env("SYN2MAS_TEST_NOW_MS", NOW_MS)
        .arg("--mas-database-uri")
        .arg(full.uri())
        .output()
        .unwrap();
    prop_assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    prop_assert_eq!(dump(&env.mas).await, dump(&full).await);
    let verify = run(&env, &["verify"]);
    prop_assert_eq!(verify.status.code(), Some(0), "{}", stderr(&verify));
    Ok(())
}

/// Random registrations, password changes, deactivations, locks, logins, logouts, deleted
/// devices, emails and links added and removed, refreshable logins and a guest upgrade, some
/// while the prestage holds its snapshot, some after, optionally with a refresh in between:
/// the staged migration equals a full one and `verify` passes. `SYN2MAS_STAGE_CASES` sets the
/// number of cases (default 8: ~5 s each).
#[test]
fn random_churn_staged_equals_full() {
    let cases = std::env::var("SYN2MAS_STAGE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 16,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&churn_case(), |case| rt.block_on(churn_property(case))) {
        panic!("{e}");
    }
}

/// The user lists a staged read inlines (COPY takes no parameters) mean exactly the user ids,
/// quotes and backslashes included, whatever `standard_conforming_strings` says.
#[tokio::test(flavor = "multi_thread")]
async fn inlined_user_lists_are_the_user_ids_exactly() {
    let db = TestDb::synapse_empty(Schema::Project).await;
    let client = db.client().await;
    let ids = [
        "@o'k:example.com",
        "@back\\slash:example.com",
        "@x'';--\\'\\\\:e",
        "@josé:e",
    ];
    let literal = syn2mas::stage::sql_text_array(ids);
    for setting in ["on", "off"] {
        client
            .batch_execute(&format!("SET standard_conforming_strings = {setting}"))
            .await
            .unwrap();
        let got: Vec<String> = client
            .query_one(&format!("SELECT {literal}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, ids, "standard_conforming_strings = {setting}");
    }
}

/// Schemas of syn2mas's names that syn2mas did not create are never dropped or used: `migrate`
/// and `stage drop` refuse and name them, and they stay.
#[tokio::test(flavor = "multi_thread")]
async fn schemas_of_our_names_that_are_not_ours_are_left_alone() {
    let schema = Schema::Project;
    for name in ["syn2mas_shadow", "syn2mas_stage"] {
        let env = Env::of(TestDb::synapse(schema).await, TestDb::mas(schema).await);
        env.mas
            .exec(&format!(
                "CREATE SCHEMA {name}; CREATE TABLE {name}.keep (x int)"
            ))
            .await;
        for args in [&["migrate", "--allow-warnings"][..], &["stage", "drop"][..]] {
            if name == "syn2mas_shadow" && args[0] == "stage" {
                continue;
            }
            let out = run(&env, args);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{name} {args:?}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains(&format!(
                    "has a schema `{name}` that syn2mas did not create"
                )),
                "{name} {args:?}: {}",
                stderr(&out)
            );
        }
        assert_eq!(env.mas.count(&format!("{name}.keep")).await, 0);
        assert_eq!(env.mas.count("users").await, 0);
    }
}
