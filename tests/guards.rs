//! The guards around a real migration, end to end through the binary:
//!
//! * another session connected to Synapse's database (an idle Synapse or a forgotten worker)
//!   makes `migrate` refuse, unless `--allow-other-sessions`; `--dry-run` runs next to it and
//!   `check` reports it as a warning;
//! * `--work-mem` / `--maintenance-work-mem` are validated before anything is done and reach
//!   the rebuild sessions;
//! * a second signal during the cleanup stops the process at once, and the next run recovers;
//! * a connection lost at the swap's COMMIT (the COMMIT reached the server, the reply never
//!   came back) is reported truthfully: the migration had committed.

mod common;

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Fixture as Env, Schema, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TARGETS: [&str; 8] = syn2mas::sink::tables::NAMES;
/// The MAS rows of a complete migration of the fixtures with `--allow-warnings`, in `TARGETS`
/// order (the same figures as tests/hostile.rs).
const COMPLETE: [i64; 8] = [10, 7, 4, 1, 3, 10, 10, 4];

/// The outcome of one run of the binary.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn expect(&self, code: i32, needle: &str) -> &Self {
        assert!(
            !self.stderr.contains("panicked"),
            "panicked:\n{}",
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

impl Env {
    async fn new() -> Env {
        Env::of(
            TestDb::synapse(Schema::Project).await,
            TestDb::mas(Schema::Project).await,
        )
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = self.syn2mas(args);
        c.env("SYN2MAS_TEST_NOW_MS", "1767225600000")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    /// Runs the binary off the async runtime, so that connections the test holds keep being
    /// served meanwhile.
    async fn run(&self, args: &[&str]) -> Out {
        run(self.command(args)).await
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

    /// Tables and schemas a run leaves only when it was cut short.
    async fn leftovers(&self) -> Vec<String> {
        self.mas
            .client()
            .await
            .query(
                "SELECT relname::text FROM pg_class WHERE relname LIKE 'syn2mas\\_%' \
                 UNION ALL SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'syn2mas%' \
                 ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    async fn assert_untouched(&self, case: &str) {
        assert_eq!(self.counts().await, vec![0; 8], "{case}: MAS rows");
        assert!(self.leftovers().await.is_empty(), "{case}: leftovers");
    }

    /// MAS holds the complete migration, and `verify` agrees with Synapse row by row.
    async fn assert_complete(&self, case: &str) {
        assert_eq!(self.counts().await, COMPLETE.to_vec(), "{case}: MAS rows");
        assert!(self.leftovers().await.is_empty(), "{case}: leftovers");
        self.run(&["verify"]).await.expect(0, "");
    }

    /// Waits until no session called `application_name` is connected to Synapse's database
    /// (a dropped client's connection ends on the runtime's other threads).
    async fn wait_until_gone(&self, application_name: &str) {
        // `count` closes its own connection before it returns.
        let sessions = format!(
            "pg_stat_activity WHERE datname = '{}' AND application_name = '{application_name}'",
            self.synapse.name
        );
        for _ in 0..200 {
            if self.synapse.count(&sessions).await == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the session {application_name} never went away");
    }

    /// An idle session on Synapse's database that calls itself `application_name`, as a
    /// Synapse worker or an operator's tool would.
    async fn idle_synapse_session(&self, application_name: &str) -> tokio_postgres::Client {
        let s = common::server();
        let mut config = tokio_postgres::Config::new();
        config
            .host(&s.host)
            .port(s.port)
            .user(&s.user)
            .dbname(&self.synapse.name)
            .application_name(application_name);
        if let Some(pw) = &s.password {
            config.password(pw);
        }
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client.batch_execute("SELECT 1").await.unwrap();
        client
    }
}

async fn run(mut c: Command) -> Out {
    let out = tokio::task::spawn_blocking(move || c.output().expect("run syn2mas"))
        .await
        .unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ------------------------------------------------------------------------------------------------
// Another session on Synapse's database
// ------------------------------------------------------------------------------------------------

/// An idle session (a Synapse worker nobody stopped) makes `migrate` refuse before it reads
/// anything, naming the session and the fix; MAS stays untouched. An operator's `psql` is
/// listed but does not count. `--dry-run` runs next to it, `check` warns about it, and
/// `--allow-other-sessions` migrates anyway, with the session printed as a warning.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_on_synapse_makes_migrate_refuse() {
    let env = Env::new().await;
    let worker = env.idle_synapse_session("synapse-worker-7").await;
    let _psql = env.idle_synapse_session("psql").await;

    let out = env.run(&["migrate", "--allow-warnings"]).await;
    out.expect(
        1,
        "Refusing to migrate: 1 other session(s) are connected to Synapse's database",
    )
    .expect(1, "application_name \"synapse-worker-7\"")
    .expect(1, "connected since ")
    .expect(1, "Stop Synapse and all its workers")
    .expect(1, "--allow-other-sessions")
    .expect(1, "Nothing was changed in MAS.");
    assert!(
        !out.stderr.contains("Refusing to migrate: 2"),
        "psql counted:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("not counted as Synapse") && out.stderr.contains("\"psql\""),
        "psql not listed:\n{}",
        out.stderr
    );
    env.assert_untouched("refused").await;

    env.run(&["migrate", "--allow-warnings", "--dry-run"])
        .await
        .expect(0, "");
    env.assert_untouched("dry-run next to the session").await;

    let out = env.run(&["check", "--json"]).await;
    out.expect(11, "W-synapse-sessions");
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("check --json");
    let finding = json["warnings"]
        .as_array()
        .and_then(|w| w.iter().find(|f| f["id"] == "W-synapse-sessions"))
        .unwrap_or_else(|| panic!("no W-synapse-sessions finding: {json}"))
        .clone();
    assert_eq!(finding["count"], 1, "{finding}");
    let examples = finding["examples"].to_string();
    assert!(examples.contains("synapse-worker-7"), "{finding}");
    assert!(!examples.contains("\\\"psql\\\""), "{finding}");

    env.run(&["migrate", "--allow-warnings", "--allow-other-sessions"])
        .await
        .expect(
            0,
            "--allow-other-sessions: migrating although 1 other session(s)",
        )
        .expect(0, "synapse-worker-7");
    drop(worker);
    env.assert_complete("--allow-other-sessions").await;
}

/// A prestage runs next to Synapse and is not refused; the staged `migrate` of the window is,
/// like a full one, until the session is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_prestage_runs_next_to_synapse_but_the_staged_migrate_refuses() {
    let env = Env::new().await;
    let worker = env.idle_synapse_session("synapse-worker-2").await;
    env.run(&["prestage", "--allow-warnings"])
        .await
        .expect(0, "");
    env.run(&["migrate", "--allow-warnings"])
        .await
        .expect(1, "Refusing to migrate: 1 other session(s)")
        .expect(1, "synapse-worker-2");
    assert_eq!(
        env.counts().await,
        vec![0; 8],
        "refused staged migrate: MAS rows"
    );
    drop(worker);
    env.wait_until_gone("synapse-worker-2").await;
    let out = env.run(&["migrate", "--allow-warnings", "--json"]).await;
    out.expect(0, "");
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("--json");
    assert!(json["migrate"]["staged"].is_object(), "not staged: {json}");
    env.assert_complete("the staged migrate").await;
}

/// The refusal is `migrate`'s own, governed by `--allow-other-sessions` alone:
/// `--allow-warnings` does not let a running Synapse through, and the preflight check does not
/// turn the session into a warning that it would.
#[tokio::test(flavor = "multi_thread")]
async fn allow_warnings_does_not_let_a_running_synapse_through() {
    let env = Env::new().await;
    let _worker = env.idle_synapse_session("").await;
    let out = env
        .run(&["migrate", "--allow-warnings", "--full-check"])
        .await;
    out.expect(1, "Refusing to migrate: 1 other session(s)")
        .expect(1, "no application_name");
    assert!(!out.stderr.contains("W-synapse-sessions"), "{}", out.stderr);
    env.assert_untouched("--allow-warnings").await;
}

/// A role without `pg_read_all_stats` sees another role's session without its details: the
/// session still counts, and is described with what is known.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_hidden_from_an_unprivileged_role_still_counts() {
    use syn2mas::source::activity;
    let env = Env::new().await;
    let role = format!("s2m_probe_{}", std::process::id());
    let admin = env.synapse.client().await;
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN"
        ))
        .await
        .unwrap();
    let s = common::server();
    let mut config = tokio_postgres::Config::new();
    config
        .host(&s.host)
        .port(s.port)
        .user(&role)
        .dbname(&env.synapse.name);
    if let Some(pw) = &s.password {
        config.password(pw);
    }
    let (probe, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let _worker = env.idle_synapse_session("synapse-main").await;

    let seen = activity::others(&probe, &[]).await.unwrap();
    drop(probe);
    let worker = seen
        .iter()
        .find(|s| s.application_name == "synapse-main")
        .unwrap_or_else(|| panic!("the worker is not listed: {seen:?}"));
    assert_eq!(worker.details, None, "{worker:?}");
    assert_eq!(worker.role.as_deref(), Some(s.user.as_str()));
    assert!(
        worker.to_string().contains("hidden"),
        "{}",
        worker.to_string()
    );
    // syn2mas's role sees its own role's sessions in full: the admin session here.
    let seen_by_admin = activity::others(&admin, &[]).await.unwrap();
    let worker = seen_by_admin
        .iter()
        .find(|s| s.application_name == "synapse-main")
        .unwrap();
    let details = worker.details.as_ref().expect("details visible");
    assert!(details.client.contains("port"), "{details:?}");
    assert_eq!(details.state, "idle");
    admin
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}

// ------------------------------------------------------------------------------------------------
// Server memory settings
// ------------------------------------------------------------------------------------------------

/// Values PostgreSQL would not take, or that are not sizes at all, are refused before
/// anything is read or written, with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_memory_sizes_are_refused_before_anything_is_done() {
    let env = Env::new().await;
    for (flag, value, needle) in [
        ("--work-mem", "256", "has no unit; write e.g. 256MB"),
        (
            "--work-mem",
            "32kB",
            "less than PostgreSQL's minimum work_mem (64kB)",
        ),
        (
            "--maintenance-work-mem",
            "1MB'; DROP TABLE users; --",
            "unknown unit",
        ),
        (
            "--maintenance-work-mem",
            "4TB",
            "more than PostgreSQL accepts",
        ),
    ] {
        let out = env.run(&["migrate", "--allow-warnings", flag, value]).await;
        out.expect(2, needle).expect(2, flag);
        env.assert_untouched(value).await;
    }
}

/// The values given reach the rebuild sessions: an index on MAS whose expression reports the
/// settings it runs under (by failing with them) is rebuilt by those sessions. The failed
/// rebuild leaves MAS untouched; `--json` shows the Synapse readers' value too.
#[tokio::test(flavor = "multi_thread")]
async fn memory_settings_reach_the_rebuild_sessions() {
    let env = Env::new().await;
    env.mas
        .exec(
            "CREATE FUNCTION s2m_probe(text) RETURNS text IMMUTABLE LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'probe: maintenance_work_mem=% work_mem=%', \
               current_setting('maintenance_work_mem'), current_setting('work_mem'); END $$; \
             CREATE INDEX s2m_probe_idx ON users (s2m_probe(username))",
        )
        .await;
    let out = env
        .run(&[
            "migrate",
            "--allow-warnings",
            "--work-mem",
            "5MB",
            "--maintenance-work-mem",
            "7mb",
        ])
        .await;
    out.expect(1, "probe: maintenance_work_mem=7MB work_mem=5MB");
    env.assert_untouched("probe").await;

    // Without the flags: the derived values, never below the server's own.
    let out = env.run(&["migrate", "--allow-warnings", "-v"]).await;
    out.expect(1, "probe: maintenance_work_mem=")
        .expect(1, "server memory per session");
    env.mas
        .exec("DROP INDEX s2m_probe_idx; DROP FUNCTION s2m_probe(text)")
        .await;

    let out = env
        .run(&["migrate", "--allow-warnings", "--json", "--work-mem", "3MB"])
        .await;
    out.expect(0, "");
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("--json");
    let memory = &json["migrate"]["server_memory"];
    assert_eq!(memory["synapse_work_mem"], "3MB", "{memory}");
    assert_eq!(memory["rebuild_work_mem"], "3MB", "{memory}");
    assert!(
        memory["rebuild_maintenance_work_mem"].is_string(),
        "{memory}"
    );
    env.assert_complete("after the probe").await;
}

// ------------------------------------------------------------------------------------------------
// Signals and a lost COMMIT
// ------------------------------------------------------------------------------------------------

/// Spawns `c` with stderr piped and waits until it says it paused at `point`.
fn spawn_until_paused(mut c: Command, point: &str) -> (Child, Lines<BufReader<ChildStderr>>) {
    let mut child = c
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn syn2mas");
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, wait_for_pause(lines, point))
}

fn wait_for_pause(
    mut lines: Lines<BufReader<ChildStderr>>,
    point: &str,
) -> Lines<BufReader<ChildStderr>> {
    let mut seen = Vec::new();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(&format!("paused at {point}")) => return lines,
            Some(Ok(l)) => seen.push(l),
            Some(Err(_)) => continue,
            None => panic!(
                "syn2mas ended before pausing at {point}:\n{}",
                seen.join("\n")
            ),
        }
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0);
}

/// Waits for `child` at most `limit`; kills it and panics when it takes longer.
fn wait_at_most(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("syn2mas was still running {limit:?} after the second signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM mid-run starts the cleanup; a SIGINT while the cleanup is under way (held at its
/// start here) stops the process at once, with the first signal's exit code and a message that
/// says what may be left. The next run drops the leftovers and migrates everything.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_during_the_cleanup_stops_at_once() {
    let env = Env::new().await;
    let mut c = env.command(&["migrate", "--allow-warnings", "--seed", "1"]);
    c.env("SYN2MAS_TEST_PAUSE", "rebuild,cleanup")
        .env("SYN2MAS_TEST_PAUSE_SECS", "600");
    let (mut child, lines) = tokio::task::spawn_blocking(move || spawn_until_paused(c, "rebuild"))
        .await
        .unwrap();
    signal(&child, libc::SIGTERM);
    let lines = tokio::task::spawn_blocking(move || wait_for_pause(lines, "cleanup"))
        .await
        .unwrap();
    let start = Instant::now();
    signal(&child, libc::SIGINT);
    let status = wait_at_most(&mut child, Duration::from_secs(5));
    let took = start.elapsed();
    let rest = lines.map_while(Result::ok).collect::<Vec<_>>().join("\n");
    assert_eq!(status.code(), Some(143), "{rest}");
    assert!(
        rest.contains("SIGINT during the cleanup: stopping now.")
            && rest.contains("the next syn2mas run drops them"),
        "{rest}"
    );
    assert!(!rest.contains("panicked"), "{rest}");
    assert!(took < Duration::from_secs(2), "took {took:?} to stop");

    env.run(&["migrate", "--allow-warnings", "--seed", "1"])
        .await
        .expect(0, "");
    env.assert_complete("the run after").await;
}

/// A TCP proxy between syn2mas and MAS's server that forwards everything until the swap: on
/// the connection that locked the MAS tables for the swap it forwards the `COMMIT`, drops the
/// server's reply, waits until the server has surely committed, then cuts both sides. `cut`
/// is set once it did.
async fn commit_cutting_proxy(cut: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = common::server();
    let upstream = format!("{}:{}", s.host, s.port);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&upstream).await.unwrap();
            tokio::spawn(relay(client, server, cut.clone()));
        }
    });
    port
}

async fn relay(client: TcpStream, server: TcpStream, cut: Arc<AtomicBool>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let mute = Arc::new(AtomicBool::new(false));
    let back = tokio::spawn({
        let mute = mute.clone();
        async move {
            let mut buf = vec![0; 64 * 1024];
            loop {
                let n = match from_server.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // Set before the COMMIT is forwarded, so its reply is never passed on.
                if mute.load(Ordering::SeqCst) {
                    continue;
                }
                if to_client.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    });
    // The startup message has no type byte (sslmode=disable: no SSLRequest before it).
    let mut len = [0u8; 4];
    if from_client.read_exact(&mut len).await.is_err() {
        return;
    }
    let mut body = vec![0; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
    if from_client.read_exact(&mut body).await.is_err() {
        return;
    }
    to_server.write_all(&len).await.unwrap();
    to_server.write_all(&body).await.unwrap();
    let mut swapping = false;
    loop {
        let mut head = [0u8; 5];
        if from_client.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        if from_client.read_exact(&mut body).await.is_err() {
            break;
        }
        // A simple query ('Q'): its text, NUL-terminated.
        let text = (head[0] == b'Q').then(|| {
            String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(&body)).into_owned()
        });
        let text = text.as_deref().unwrap_or("");
        if text.contains("LOCK TABLE") && text.contains("ACCESS EXCLUSIVE") {
            swapping = true;
        }
        let the_commit = swapping && text == "COMMIT" && !cut.load(Ordering::SeqCst);
        if the_commit {
            mute.store(true, Ordering::SeqCst);
        }
        if to_server.write_all(&head).await.is_err() || to_server.write_all(&body).await.is_err() {
            break;
        }
        if the_commit {
            // The COMMIT reached the server; let it finish, then lose the connection.
            tokio::time::sleep(Duration::from_millis(500)).await;
            cut.store(true, Ordering::SeqCst);
            back.abort();
            return;
        }
    }
    drop(to_server);
    let _ = back.await;
}

/// The swap's COMMIT reaches the server and commits, the reply is lost with the connection:
/// the run cannot know the outcome by itself, finds it out on a fresh connection, and reports
/// the truth (exit 0, the migration had committed), not a rollback. MAS is complete.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_lost_at_the_swaps_commit_is_reported_truthfully() {
    let env = Env::new().await;
    let cut = Arc::new(AtomicBool::new(false));
    let port = commit_cutting_proxy(cut.clone()).await;
    let s = common::server();
    let uri = format!(
        "postgresql://{}@127.0.0.1:{port}/{}?sslmode=disable",
        s.user, env.mas.name
    );
    let out = env
        .run(&["migrate", "--allow-warnings", "--mas-database-uri", &uri])
        .await;
    assert!(
        cut.load(Ordering::SeqCst),
        "the proxy never saw the swap's COMMIT"
    );
    out.expect(
        0,
        "The migration had committed before the connection was lost: MAS holds the migrated data.",
    );
    assert!(!out.stderr.contains("rolled back"), "{}", out.stderr);
    assert!(!out.stderr.contains("exactly as it was"), "{}", out.stderr);
    env.assert_complete("after the lost COMMIT").await;
}
