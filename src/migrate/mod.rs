//! Orchestrates a migration: Synapse snapshot → transform workers → COPY into shadow tables →
//! parallel rebuild → one swap transaction.
//!
//! MAS sees nothing until the swap commits. On any error the shadow tables are dropped (and the
//! sessions still building on them terminated first, so the drop does not wait for them); after
//! a kill, the next run finds and drops them before anything else.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::check::report::Plan;
use crate::config::MasConfig;
use crate::db::ConnectOptions;
use crate::pipeline::{self, Senders};
use crate::progress::Progress;
pub use summary::{EntitySummary, Summary};
use summary::{plan_mismatches, summarise};

pub(crate) mod summary;
use crate::sink::tables::Target;
use crate::sink::{catalog, rebuild, shadow, writer};
use crate::source;
use crate::source::activity;
use crate::source::snapshot::{self, LockMode};
use crate::transform::{Ctx, Ids, Mode, Stats};

/// Advisory lock key of upstream `mas-cli syn2mas` (HKDF of `syn2mas-maswriter`, reference
/// §1.4): holding it keeps the upstream tool and syn2mas from running at the same time.
const UPSTREAM_SYN2MAS_LOCK: i64 = 6_584_285_998_412_104_315;

pub(crate) use crate::test_hooks::pause as pause_point;

/// Encoded bodies queued per MAS table; with `IN_FLIGHT` and the chunk size this is what bounds
/// memory (a few MiB per table at most), whatever the number of users.
const WRITER_QUEUE: usize = 2;

#[derive(Debug, Clone)]
pub struct MigrateOptions {
    pub dry_run: bool,
    /// `--allow-warnings`: without it, rows `check` reports as warnings stop the run.
    pub allow_warnings: bool,
    /// `--report DIR`: every row the run skips (or the row it refuses).
    pub report: Option<Arc<crate::report::ReportDir>>,
    pub seed: Option<u64>,
    pub rebuild_sessions: usize,
    pub ignore_missing_auth_providers: bool,
    /// `syn2mas prestage`: build the stage instead of swapping (Synapse may run).
    pub prestage: bool,
    /// `--no-stage`: the full migration even when a stage exists.
    pub no_stage: bool,
    /// `--allow-other-sessions`: other sessions on Synapse's database are a warning, not a refusal.
    pub allow_other_sessions: bool,
    /// `--work-mem` / `--maintenance-work-mem`.
    pub memory: crate::memory::Requested,
}

impl MigrateOptions {
    /// How the run locks Synapse's tables: a dry run and a prestage run next to Synapse and
    /// block nothing; the real migration blocks its writers (and finds one still running).
    pub fn synapse_lock(&self) -> LockMode {
        if self.dry_run || self.prestage {
            LockMode::AccessShare
        } else {
            LockMode::Exclusive
        }
    }
}

/// Backend pids of the MAS sessions a run opened, so a failed or interrupted run can stop them
/// before dropping its shadow tables; and whether the run got the advisory lock, without which
/// the shadow tables in MAS are not its own.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    pids: Arc<Mutex<Vec<i32>>>,
    locked: Arc<AtomicBool>,
    /// Whether the run created its shadow schema: before that, there is nothing of its own to
    /// drop (what is there belongs to an earlier or another run).
    created: Arc<AtomicBool>,
    /// The oid of MAS's `users` table before the run: the swap replaces the table, so a
    /// different oid afterwards means the swap committed.
    users_oid: Arc<Mutex<Option<u32>>>,
}

impl Sessions {
    /// Records a MAS session of this run, which joins the run's shared session lock (see
    /// `shadow::SESSIONS_LOCK`) for as long as it is connected.
    async fn track(&self, client: &Client) -> anyhow::Result<()> {
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        self.pids.lock().unwrap().push(pid);
        shadow::join_run(client).await
    }

    fn pids(&self) -> Vec<i32> {
        self.pids.lock().unwrap().clone()
    }

    async fn remember_users_oid(&self, client: &Client) -> anyhow::Result<()> {
        let oid = users_oid(client).await?;
        *self.users_oid.lock().unwrap() = oid;
        Ok(())
    }

    /// Whether the run's swap committed, asked on a fresh connection: for when the run was
    /// interrupted or lost its connection around the swap's COMMIT, whose outcome it cannot
    /// know by itself. `None` when the run never got as far as looking at MAS.
    pub async fn swap_committed(&self, mas_db: &ConnectOptions) -> anyhow::Result<Option<bool>> {
        let Some(before) = *self.users_oid.lock().unwrap() else {
            return Ok(None);
        };
        let client = mas_db.connect("MAS").await?;
        Ok(Some(users_oid(&client).await? != Some(before)))
    }
}

async fn users_oid(client: &Client) -> anyhow::Result<Option<u32>> {
    Ok(client
        .query_one("SELECT to_regclass('users')::oid", &[])
        .await
        .context("looking up MAS's `users` table")?
        .get(0))
}

/// Runs the migration. `plan` is check's exact plan when it computed one (`--full-check`; the
/// final accounting compares against it), else sizes are estimated from Synapse's statistics.
/// `sessions` collects backend pids for `cleanup`.
pub async fn run(
    synapse_db: &ConnectOptions,
    mas_db: &ConnectOptions,
    mas: &MasConfig,
    exact_plan: Option<&Plan>,
    opts: &MigrateOptions,
    progress: &Progress,
    sessions: &Sessions,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mut main = mas_db.connect("MAS").await?;
    sessions.track(&main).await?;
    take_locks(&main).await?;
    sessions.locked.store(true, Ordering::SeqCst);
    pause_point("locked").await;
    let leftovers = shadow::drop_leftovers(&main, SESSIONS_GONE).await?;
    if !leftovers.is_empty() {
        progress.println(&format!(
            "Dropped leftovers of an interrupted earlier run: {}",
            leftovers.join(", ")
        ));
    }
    shadow::preflight(&main).await?;
    sessions.remember_users_oid(&main).await?;
    tracing::debug!(elapsed = ?started.elapsed(), "MAS checked and locked");
    let defs = catalog::read(&main).await?;
    let memory = synapse_guard(synapse_db, &main, opts, sessions).await?;
    if !opts.no_stage && crate::stage::exists(&main).await? {
        use crate::stage::delta::{Purpose, Run};
        let run = Run {
            synapse_db,
            mas,
            opts,
            progress,
            defs: &defs,
            memory,
            started,
            leftovers: leftovers.clone(),
        };
        let purpose = if opts.prestage {
            Purpose::Refresh
        } else {
            Purpose::Window
        };
        if let Some(summary) = run.apply(&mut main, purpose).await? {
            return Ok(summary);
        }
    }
    shadow::create_schema(&main).await?;
    sessions.created.store(true, Ordering::SeqCst);
    pause_point("schema").await;
    let built = tokio::select! {
        built = build(synapse_db, mas_db, mas, exact_plan, opts, progress, sessions, &defs, memory) => built?,
        lost = lock_holder_lost(&main) => return Err(lost),
    };
    let Built {
        runner,
        stats,
        written,
        load_seconds,
        stage_seconds,
        rebuild_seconds,
        stage_facts,
        ids_key,
        now_ms,
    } = built;

    pause_point("swap").await;
    let swap_start = Instant::now();
    if let Some(facts) = stage_facts {
        let meta = crate::stage::StageMeta {
            source: facts,
            mas_schema_version: crate::stage::mas_schema_version(&main).await?,
            mapping: crate::stage::mapping_digest(mas, opts.ignore_missing_auth_providers),
            id_key: key_hex(&ids_key),
            now_ms,
        };
        crate::stage::finish(&mut main, runner.renames(), &meta).await?;
    } else {
        shadow::swap(
            &mut main,
            runner.renames(),
            runner.outgoing(),
            !opts.dry_run,
        )
        .await?;
        if opts.dry_run {
            shadow::drop_leftovers(&main, SESSIONS_GONE).await?;
        } else {
            pause_point("committed").await;
        }
    }
    let swap_seconds = swap_start.elapsed().as_secs_f64();
    let entities = summarise(&stats, &stage_seconds)?;
    Ok(Summary {
        dry_run: opts.dry_run,
        prestage: opts.prestage,
        staged: None,
        plan_mismatches: exact_plan
            .map(|p| plan_mismatches(p, &entities))
            .unwrap_or_default(),
        entities,
        mas_rows: written
            .iter()
            .map(|(t, n)| (t.name().to_owned(), *n))
            .collect(),
        invalid_device_ips: stats.invalid_ips,
        load_seconds,
        rebuild_seconds,
        swap_seconds,
        total_seconds: started.elapsed().as_secs_f64(),
        leftovers_dropped: leftovers,
        server_memory: Some(memory),
    })
}

/// Before Synapse is read: refuses while other sessions are connected to Synapse's database
/// (a Synapse still running; not for a dry-run or a prestage, which may run next to it), and
/// chooses the sessions' memory settings from both servers' own. On a connection of its own,
/// before this run has any other session on Synapse or anything in MAS.
async fn synapse_guard(
    synapse_db: &ConnectOptions,
    main: &Client,
    opts: &MigrateOptions,
    sessions: &Sessions,
) -> anyhow::Result<crate::memory::Chosen> {
    let synapse = synapse_db.connect("Synapse").await?;
    if !opts.dry_run && !opts.prestage {
        // The MAS sessions count as ours too, for a MAS that shares Synapse's database.
        activity::refuse_other_sessions(&synapse, &sessions.pids(), opts.allow_other_sessions)
            .await?;
    }
    (opts.memory)
        .choose_for(&synapse, main, pipeline::READERS, opts.rebuild_sessions)
        .await
}

/// What the load and rebuild produced, ready for the swap.
struct Built {
    runner: Arc<rebuild::Runner>,
    stats: Stats,
    written: BTreeMap<Target, u64>,
    load_seconds: f64,
    stage_seconds: BTreeMap<source::Entity, f64>,
    rebuild_seconds: f64,
    /// For a prestage: what the stage is built from.
    stage_facts: Option<crate::stage::SourceFacts>,
    ids_key: [u8; 16],
    now_ms: i64,
}

/// The id key as 32 hex digits (how a stage records it).
pub(crate) fn key_hex(key: &[u8; 16]) -> String {
    format!("{:032x}", u128::from_be_bytes(*key))
}

/// How often the run looks whether its lock-holding MAS session is still connected.
const LOCK_WATCH: Duration = Duration::from_millis(250);

/// Resolves (with the error to report) when the session holding the advisory lock is gone:
/// terminated, or its connection lost. Without the lock, another run may start; this run must
/// stop at once rather than load and rebuild for nothing until its swap fails.
async fn lock_holder_lost(main: &Client) -> anyhow::Error {
    while !main.is_closed() {
        tokio::time::sleep(LOCK_WATCH).await;
    }
    anyhow::anyhow!(
        "the MAS session holding syn2mas's advisory lock ended (terminated, or its connection was lost); the run stopped, as another run may now start"
    )
}

/// Synapse snapshot → transform → shadow tables, and the rebuild of their indexes and
/// constraints: everything before the swap.
#[allow(clippy::too_many_arguments)]
async fn build(
    synapse_db: &ConnectOptions,
    mas_db: &ConnectOptions,
    mas: &MasConfig,
    exact_plan: Option<&Plan>,
    opts: &MigrateOptions,
    progress: &Progress,
    sessions: &Sessions,
    defs: &catalog::Definitions,
    memory: crate::memory::Chosen,
) -> anyhow::Result<Built> {
    let started = Instant::now();

    let (synapse, snapshot_id) =
        pipeline::open_snapshot(synapse_db, opts.synapse_lock(), memory.synapse_work_mem).await?;
    let counts = if opts.prestage {
        Some(start_counts(synapse_db, mas_db, &snapshot_id, sessions).await?)
    } else {
        None
    };
    let mut ctx = context(
        mas,
        opts.seed,
        opts.ignore_missing_auth_providers,
        Mode::Migrate,
    )?;
    ctx.report = opts.report.is_some();
    ctx.refuse_warnings = !opts.allow_warnings;
    let ctx = Arc::new(ctx);
    tracing::debug!(elapsed = ?started.elapsed(), "Synapse snapshot open");
    let estimated;
    let plan = match exact_plan {
        Some(p) => p,
        None => {
            estimated = source::plan::estimate(&synapse[0]).await?;
            &estimated
        }
    };

    let mas_rows_plan: BTreeMap<Target, u64> = Target::ALL
        .iter()
        .map(|t| (*t, plan.mas_rows.get(t.name()).copied().unwrap_or(0)))
        .collect();
    let runner = rebuild::Runner::new(rebuild::schedule(defs, &mas_rows_plan), memory);
    let rebuild_bar = progress.bar("rebuild", runner.total_jobs() as u64, "jobs");
    let rebuild_tasks = spawn_rebuild(
        mas_db,
        opts.rebuild_sessions,
        &runner,
        &rebuild_bar,
        sessions,
    )
    .await?;
    let (mut senders, writers) = spawn_writers(mas_db, &runner, sessions).await?;
    senders.report = opts.report.clone();
    senders.refuse_warnings = !opts.allow_warnings;
    tracing::debug!(elapsed = ?started.elapsed(), "MAS sessions open");

    let load = load(&synapse, &ctx, plan, progress, senders).await;
    let load_seconds = started.elapsed().as_secs_f64();
    drop(synapse);
    let stage_facts = match counts {
        Some(task) => Some(
            task.await
                .context("copying the per-user counts panicked")??,
        ),
        None => None,
    };
    let (stats, stage_seconds) = match load {
        Ok(v) => v,
        Err(e) => {
            runner.abort();
            return Err(first_writer_error(writers).await.unwrap_or(e));
        }
    };
    let written = join_writers(writers).await?;
    pause_point("rebuild").await;
    let rebuild_start = Instant::now();
    for t in rebuild_tasks {
        t.await.context("rebuild session panicked")??;
    }
    rebuild_bar.finish();
    if !runner.complete() {
        bail!("the index and constraint rebuild stopped before finishing");
    }
    let rebuild_seconds = rebuild_start.elapsed().as_secs_f64();
    verify_written(&stats, &written)?;
    Ok(Built {
        runner,
        stats,
        written,
        load_seconds,
        stage_seconds,
        rebuild_seconds,
        stage_facts,
        ids_key: ctx.ids.key(),
        now_ms: ctx.now_ms,
    })
}

/// For a prestage: reads the snapshot's facts and copies its per-user counts into the shadow
/// schema, on sessions of their own (one joined to the snapshot), while the load runs.
async fn start_counts(
    synapse_db: &ConnectOptions,
    mas_db: &ConnectOptions,
    snapshot_id: &str,
    sessions: &Sessions,
) -> anyhow::Result<JoinHandle<anyhow::Result<crate::stage::SourceFacts>>> {
    let reader = synapse_db.connect("Synapse").await?;
    snapshot::join(&reader, snapshot_id).await?;
    let mas = open_sessions(mas_db, 1, sessions).await?.remove(0);
    Ok(tokio::spawn(async move {
        let facts = crate::stage::source_facts(&reader).await?;
        crate::stage::copy_counts(&reader, &mas).await?;
        reader
            .batch_execute("COMMIT")
            .await
            .context("closing the Synapse read transaction")?;
        Ok(facts)
    }))
}

/// After a failure or an interrupt: stops the run's MAS sessions and drops its shadow tables,
/// so MAS is exactly as before. Returns the names dropped.
///
/// A run that never got the advisory lock, or never got as far as creating its shadow schema,
/// has created nothing, and the shadow tables it would see belong to another run: it leaves
/// them alone. A run that created its schema takes the lock again (its stopped sessions
/// release it) before dropping anything, and drops only once no session of any run works on
/// the shadow tables (`shadow::SESSIONS_LOCK`), so a run that started in between keeps its
/// tables.
pub async fn cleanup(mas_db: &ConnectOptions, sessions: &Sessions) -> anyhow::Result<Vec<String>> {
    crate::test_hooks::pause("cleanup").await;
    if !sessions.locked.load(Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let client = mas_db.connect("MAS").await?;
    let pids = sessions.pids();
    if !pids.is_empty() {
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .await
            .context("stopping this run's MAS sessions")?;
    }
    if !sessions.created.load(Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if try_lock(
            &client,
            UPSTREAM_SYN2MAS_LOCK,
            "the syn2mas advisory lock (again)",
        )
        .await?
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "another syn2mas run holds the advisory lock now; its shadow tables are left alone"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crate::test_hooks::pause("cleanup-locked").await;
    shadow::drop_leftovers(&client, SESSIONS_GONE).await
}

/// How long dropping leftovers waits for sessions that are ending to be gone: a session closed
/// by its client (the end of a rebuild session, a run that just exited) or terminated by
/// `cleanup` releases its locks when its server process has exited, a moment later.
pub(crate) const SESSIONS_GONE: Duration = Duration::from_secs(5);

/// Takes a session-level advisory lock on MAS if it is free.
async fn try_lock(client: &Client, key: i64, what: &str) -> anyhow::Result<bool> {
    Ok(client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .with_context(|| format!("taking {what} on MAS"))?
        .get(0))
}

pub(crate) async fn take_locks(client: &Client) -> anyhow::Result<()> {
    if !try_lock(client, UPSTREAM_SYN2MAS_LOCK, "the syn2mas advisory lock").await? {
        bail!(
            "another syn2mas (this tool or `mas-cli syn2mas`) is already running against this MAS database"
        );
    }
    let db: String = client
        .query_one("SELECT current_database()", &[])
        .await?
        .get(0);
    let migrator_key = 0x3d32_ad9e_i64 * i64::from(crc32fast::hash(db.as_bytes()));
    if !try_lock(client, migrator_key, "MAS's schema-migration advisory lock").await? {
        bail!(
            "`mas-cli database migrate` (or MAS starting up) is running against this MAS database; wait for it to finish"
        );
    }
    Ok(())
}

/// The transform's context: ids, server name, providers map, "now".
pub(crate) fn context(
    mas: &MasConfig,
    seed: Option<u64>,
    ignore_missing_auth_providers: bool,
    mode: Mode,
) -> anyhow::Result<Ctx> {
    let ids = match seed {
        Some(seed) => Ids::from_seed(seed),
        None => Ids::random(),
    };
    let providers: HashMap<String, u128> = mas
        .providers
        .iter()
        .filter_map(|p| p.synapse_idp_id.clone().map(|s| (s, p.id.0)))
        .collect();
    let now_ms = match crate::test_hooks::now_ms() {
        Some(ms) => ms,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("system clock before 1970")?
            .as_millis() as i64,
    };
    Ok(Ctx::new(
        ids,
        &mas.homeserver,
        now_ms,
        providers,
        ignore_missing_auth_providers,
        mode,
    ))
}

async fn spawn_rebuild(
    mas_db: &ConnectOptions,
    n: usize,
    runner: &Arc<rebuild::Runner>,
    bar: &indicatif::ProgressBar,
    sessions: &Sessions,
) -> anyhow::Result<Vec<JoinHandle<anyhow::Result<()>>>> {
    let clients = open_sessions(mas_db, n.max(1), sessions).await?;
    Ok(clients
        .into_iter()
        .map(|client| {
            let bar = bar.clone();
            tokio::spawn(runner.clone().session(client, move |_| bar.inc(1)))
        })
        .collect())
}

/// Opens `n` MAS sessions at once (a TLS handshake each; in series they add up).
pub(crate) async fn open_sessions(
    mas_db: &ConnectOptions,
    n: usize,
    sessions: &Sessions,
) -> anyhow::Result<Vec<Client>> {
    let clients = futures::future::try_join_all((0..n).map(|_| mas_db.connect("MAS"))).await?;
    for c in &clients {
        sessions.track(c).await?;
    }
    Ok(clients)
}

type Writers = Vec<(Target, JoinHandle<anyhow::Result<u64>>)>;

async fn spawn_writers(
    mas_db: &ConnectOptions,
    runner: &Arc<rebuild::Runner>,
    sessions: &Sessions,
) -> anyhow::Result<(Senders, Writers)> {
    let mut senders = BTreeMap::new();
    let mut writers = Vec::new();
    let clients = open_sessions(mas_db, Target::ALL.len(), sessions).await?;
    for (t, client) in Target::ALL.into_iter().zip(clients) {
        // The shadow tables are disposable until the swap, whose own commit is synchronous.
        client.batch_execute("SET synchronous_commit = off").await?;
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        senders.insert(t, tx);
        let runner = runner.clone();
        writers.push((
            t,
            tokio::spawn(async move {
                let rows = writer::run(client, t, rx).await?;
                runner.loaded(t);
                Ok(rows)
            }),
        ));
    }
    let senders = Senders {
        writers: senders,
        ..Senders::default()
    };
    Ok((senders, writers))
}

/// Streams every read through the transform into the writers, then ends the Synapse read
/// transactions.
async fn load(
    synapse: &[Client],
    ctx: &Arc<Ctx>,
    plan: &Plan,
    progress: &Progress,
    senders: Senders,
) -> anyhow::Result<pipeline::Outcome> {
    let outcome = pipeline::run_all(synapse, ctx, plan, progress, senders).await?;
    for client in synapse {
        client
            .batch_execute("COMMIT")
            .await
            .context("closing the Synapse read transaction")?;
    }
    Ok(outcome)
}

/// When the load failed because a writer stopped, the writer's own error is the real cause.
async fn first_writer_error(writers: Writers) -> Option<anyhow::Error> {
    for (_, w) in writers {
        w.abort();
        if let Ok(Err(e)) = w.await {
            return Some(e);
        }
    }
    None
}

async fn join_writers(writers: Writers) -> anyhow::Result<BTreeMap<Target, u64>> {
    let mut written = BTreeMap::new();
    for (t, w) in writers {
        written.insert(t, w.await.context("MAS writer panicked")??);
    }
    Ok(written)
}

/// The rows PostgreSQL stored must be the rows the transform encoded, table by table.
fn verify_written(stats: &Stats, written: &BTreeMap<Target, u64>) -> anyhow::Result<()> {
    for t in Target::ALL {
        let encoded = stats.written.get(&t).copied().unwrap_or(0);
        let stored = written.get(&t).copied().unwrap_or(0);
        if encoded != stored {
            bail!(
                "MAS `{}` stored {stored} rows but syn2mas sent {encoded}; nothing was swapped in",
                t.name()
            );
        }
    }
    Ok(())
}
