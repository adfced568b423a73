//! Synapse's rows through the transform: the reads streamed from one snapshot, mapped on rayon
//! workers, and their results handed on in order. `migrate` sends the encoded bodies to its
//! MAS writers; `check` runs the very same stages in counting mode and keeps only the counts
//! and findings (its plan), so there is one path from Synapse rows to MAS rows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

use crate::check::report::Plan;
use crate::db::ConnectOptions;
use crate::progress::Progress;
use crate::report::ReportDir;
use crate::sink::tables::Target;
use crate::source::reads::{Device, ExternalId, Owner, Read, Threepid, Token, User};
use crate::source::{Entity, Query, SessionRead, reader, spill};
use crate::transform::{self, Ctx, Stats};

/// Chunks being transformed at once; with bounded channels this bounds memory.
const IN_FLIGHT: usize = 3;

/// Where each stage's results go: one sender per MAS table it writes (none when counting), and
/// the `--report` directory for the rows it skips.
#[derive(Default, Clone)]
pub struct Senders {
    pub writers: BTreeMap<Target, mpsc::Sender<Vec<u8>>>,
    pub report: Option<Arc<ReportDir>>,
    /// Stop at the first batch with a warning (`migrate` without `--allow-warnings`).
    pub refuse_warnings: bool,
}

impl Senders {
    /// The senders of `targets` only (and the same report).
    fn pick<'t>(&self, targets: impl Iterator<Item = &'t Target>) -> Senders {
        Senders {
            writers: targets
                .filter_map(|t| self.writers.get(t).map(|tx| (*t, tx.clone())))
                .collect(),
            report: self.report.clone(),
            refuse_warnings: self.refuse_warnings,
        }
    }
}

/// Counts per entity and seconds per entity of a run of the stages.
pub type Outcome = (Stats, BTreeMap<Entity, f64>);

/// A stage: a read and the targets that no later stage writes (their writers are closed when
/// the stage ends, so their rebuild can start while other stages load).
type Stage = (Query, &'static [Target]);

const SESSION_TARGETS: &[Target] = &[
    Target::CompatSessions,
    Target::CompatAccessTokens,
    Target::CompatRefreshTokens,
];

/// The accounts lane: users first (their trigram index is the longest single rebuild job),
/// then threepids and external ids, whose index builds fill the time the rebuild sessions
/// would otherwise wait for the devices/tokens stage.
const ACCOUNT_STAGES: [Stage; 3] = [
    (Query::Users, &[Target::Users, Target::UserPasswords]),
    (
        Query::Threepids,
        &[Target::UserEmails, Target::UserUnsupportedThirdPartyIds],
    ),
    (Query::ExternalIds, &[Target::UpstreamOauthLinks]),
];

/// Synapse sessions on the one snapshot: one per devices/tokens read (they stream at the same
/// time), then the accounts lane's.
pub const READERS: usize = SessionRead::ALL.len() + 1;

/// Opens the reader sessions (at once: a TLS handshake each).
pub async fn open_readers(synapse_db: &ConnectOptions) -> anyhow::Result<Vec<Client>> {
    Ok(futures::future::try_join_all((0..READERS).map(|_| synapse_db.connect("Synapse"))).await?)
}

/// Opens the reader sessions on one snapshot of Synapse: the first takes `lock` on the six
/// tables and exports its snapshot, the others import it; every one gets `work_mem` for this
/// transaction (some reads hash-join millions of rows — owners of threepids and external ids,
/// refresh tokens — which PostgreSQL's default 4 MB spills to disk in many batches). Returns
/// the sessions and the snapshot's id, for further sessions to join.
pub async fn open_snapshot(
    synapse_db: &ConnectOptions,
    lock: crate::source::snapshot::LockMode,
    work_mem: crate::memory::MemSize,
) -> anyhow::Result<(Vec<Client>, String)> {
    use crate::source::snapshot;
    let readers = open_readers(synapse_db).await?;
    let id = snapshot::open(&readers[0], lock).await?;
    for client in &readers[1..] {
        snapshot::join(client, &id).await?;
    }
    for client in &readers {
        crate::memory::set_local_work_mem(client, work_mem).await?;
    }
    Ok((readers, id))
}

/// The `SELECT` of a single-read stage and its column count; of `users`' rows only when given
/// (a SQL array literal, see `Ctx::only_users`).
fn stage_read(query: Query, users: Option<&str>) -> Option<(String, usize)> {
    fn of<'a, R: Read<'a>>(users: Option<&str>) -> Option<(String, usize)> {
        Some((select::<R>(users), R::FIELDS))
    }
    match query {
        Query::Users => of::<User<'_>>(users),
        Query::Threepids => of::<Threepid<'_>>(users),
        Query::ExternalIds => of::<ExternalId<'_>>(users),
        Query::Sessions => None,
    }
}

/// The `SELECT` of one of the devices/tokens reads and its column count.
fn session_read(read: SessionRead, users: Option<&str>) -> (String, usize) {
    match read {
        SessionRead::Owners => (select::<Owner>(users), Owner::FIELDS),
        SessionRead::Devices => (select::<Device>(users), Device::FIELDS),
        SessionRead::Tokens => (select::<Token>(users), Token::FIELDS),
    }
}

fn select<'a, R: Read<'a>>(users: Option<&str>) -> String {
    match users {
        Some(list) => R::sql_for_users(list),
        None => R::sql(),
    }
}

/// Runs every stage: the devices/tokens stage on the first three readers and the accounts lane
/// on the fourth, at once. On the first error the other is dropped (its reads stop with it)
/// and the error returned. A writer ends when every stage writing its table has closed its
/// sender.
pub async fn run_all(
    readers: &[Client],
    ctx: &std::sync::Arc<Ctx>,
    plan: &Plan,
    progress: &Progress,
    senders: Senders,
) -> anyhow::Result<Outcome> {
    let (accounts, session_readers) = readers
        .split_last()
        .context("no Synapse session for the accounts lane")?;
    let sessions = sessions_stage(
        session_readers,
        ctx,
        plan,
        progress,
        senders.pick(SESSION_TARGETS.iter()),
    );
    let lane = run_lane(
        accounts,
        ctx,
        &ACCOUNT_STAGES,
        plan,
        progress,
        senders.pick(ACCOUNT_STAGES.iter().flat_map(|(_, t)| t.iter())),
    );
    // Only the stages hold senders now, so each writer closes as soon as its stage is done.
    drop(senders);
    let ((s1, sec1), (s2, sec2)) = tokio::try_join!(sessions, lane)?;
    let mut stats = s1;
    stats.merge(&s2);
    let mut seconds = sec1;
    seconds.extend(sec2);
    Ok((stats, seconds))
}

/// A lane's stages in order on one Synapse session; seconds are per stage.
async fn run_lane(
    synapse: &Client,
    ctx: &std::sync::Arc<Ctx>,
    stages: &[Stage],
    plan: &Plan,
    progress: &Progress,
    mut senders: Senders,
) -> anyhow::Result<Outcome> {
    let mut stats = Stats::default();
    let mut seconds = BTreeMap::new();
    for (query, closes) in stages {
        let start = Instant::now();
        let bar = progress.bar(query.name(), stage_rows(plan, *query), "rows");
        let s = run_stage(synapse, ctx, *query, &senders, &bar).await?;
        bar.set_length(bar.position());
        bar.finish();
        stats.merge(&s);
        for e in query.entities() {
            seconds.insert(*e, start.elapsed().as_secs_f64());
        }
        for t in *closes {
            senders.writers.remove(t);
        }
        if *query == Query::Users {
            crate::migrate::pause_point("after-users").await;
        }
    }
    Ok((stats, seconds))
}

/// Devices, access tokens and refresh tokens: the three unjoined reads stream at once on their
/// sessions into partition files, then the partitions are joined and mapped on the transform
/// workers (`transform::sessions`). The Synapse side is three plain scans. The first split is
/// sized from the tables' size on disk; a partition that turns out larger than the budget is
/// split again before it is loaded (`spill::Partition::next`), so memory is a few partitions
/// of at most the budget, whatever the number of users, the statistics or the skew.
async fn sessions_stage(
    readers: &[Client],
    ctx: &std::sync::Arc<Ctx>,
    plan: &Plan,
    progress: &Progress,
    senders: Senders,
) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let rows = stage_rows(plan, Query::Sessions) + stage_rows(plan, Query::Users);
    let budget = spill::budget();
    let first = readers
        .first()
        .context("no Synapse session for devices and tokens")?;
    // A staged run reads only its changed users: one first partition, split again below only
    // when it turns out larger than the budget, instead of a split sized for whole tables.
    let on_disk = match ctx.only_users {
        Some(_) => 0,
        None => crate::source::plan::session_bytes(first).await?,
    };
    let fanout =
        crate::test_hooks::partitions().unwrap_or_else(|| spill::fanout_for(on_disk, budget));
    if let Some(warning) = spill::tmpfs_warning(&std::env::temp_dir()) {
        progress.println(&warning);
    }
    spill::make_room_for_files(spill::OPEN_FILES.max(fanout * SessionRead::ALL.len() * 2))
        .context("raising the open-files limit for the partition files")?;
    let read_bar = progress.bar("devices and tokens: read", rows, "rows");
    let files = futures::future::try_join_all(SessionRead::ALL.into_iter().zip(readers).map(
        |(read, client)| spill_read(client, read, ctx.only_users.as_deref(), fanout, &read_bar),
    ))
    .await?;
    read_bar.set_length(read_bar.position());
    read_bar.finish();
    crate::migrate::pause_point("spilled").await;
    let files: [Vec<spill::Spilled>; 3] = files
        .try_into()
        .map_err(|_| anyhow::anyhow!("a devices/tokens read is missing"))?;
    let partitions = spill::Partition::assemble(spill::Route::FIRST, 0, files);
    let bar = progress.bar(
        Query::Sessions.name(),
        partitions.len() as u64,
        "partitions",
    );
    let (stats, held) = run_partitions(ctx, partitions, budget, &senders, &bar).await?;
    bar.finish();
    tracing::debug!(
        on_disk,
        first_split = fanout,
        partitions = held.partitions,
        splits = held.splits,
        in_runs = held.in_runs,
        largest_partition_bytes = held.largest,
        budget,
        "devices and tokens joined"
    );
    let secs = start.elapsed().as_secs_f64();
    let seconds = Query::Sessions
        .entities()
        .iter()
        .map(|e| (*e, secs))
        .collect();
    Ok((stats, seconds))
}

/// Streams one unjoined read into `fanout` partition files (written off the I/O thread).
async fn spill_read(
    client: &Client,
    read: SessionRead,
    users: Option<&str>,
    fanout: usize,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<spill::Spilled>> {
    let (sql, fields) = session_read(read, users);
    let (tx, mut rx) = mpsc::channel::<reader::Chunk>(2);
    let bar = bar.clone();
    let spilling = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<spill::Spilled>> {
        let mut spill = spill::Spill::new(read, spill::Route::FIRST, fanout)?;
        while let Some(chunk) = rx.blocking_recv() {
            bar.inc(spill.add(&chunk.bytes)?);
        }
        Ok(spill.finish()?)
    });
    let streamed = reader::stream(client, &sql, fields, read.name(), tx).await;
    // A failed spill drops its receiver, which ends the stream early without an error: the
    // spill's own error is the cause.
    let files = spilling.await.context("spilling devices and tokens")??;
    streamed?;
    Ok(files)
}

/// What the join did, for the debug log (and the tests' memory bound): partitions joined,
/// splits, partitions mapped in runs, and the most bytes of raw tuples one job held.
#[derive(Debug, Default)]
struct JoinFigures {
    partitions: u64,
    splits: u64,
    in_runs: u64,
    largest: u64,
}

impl JoinFigures {
    fn holds(&mut self, bytes: usize) {
        self.largest = self.largest.max(bytes as u64);
    }
}

/// Joins and maps each partition on a transform worker, a few at a time, and forwards the
/// results in order. A partition larger than `budget` is split first (off the I/O thread),
/// and its parts take its place in the queue.
async fn run_partitions(
    ctx: &std::sync::Arc<Ctx>,
    partitions: Vec<spill::Partition>,
    budget: u64,
    senders: &Senders,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(Stats, JoinFigures)> {
    let (job_tx, job_rx) = mpsc::channel::<Job>(IN_FLIGHT);
    let ctx = ctx.clone();
    let split_bar = bar.clone();
    let dispatch = async move {
        let mut held = JoinFigures::default();
        let mut queue: std::collections::VecDeque<_> = partitions.into();
        while let Some(p) = queue.pop_front() {
            let going = match p.next(budget) {
                spill::Next::Whole => {
                    held.partitions += 1;
                    held.holds(p.bytes() as usize);
                    let ctx = ctx.clone();
                    spawn_job(&job_tx, 1, move || join_partition(&ctx, p)).await
                }
                spill::Next::Split(route) => {
                    held.splits += 1;
                    let parts = tokio::task::spawn_blocking(move || p.split(route, budget))
                        .await
                        .context("splitting a partition of devices and tokens")??;
                    // The split partition counts as one done; its parts are queued first.
                    split_bar.inc_length(parts.len() as u64);
                    split_bar.inc(1);
                    for part in parts.into_iter().rev() {
                        queue.push_front(part);
                    }
                    true
                }
                spill::Next::Runs => {
                    held.partitions += 1;
                    held.in_runs += 1;
                    in_runs(&ctx, p, budget, &job_tx, &mut held).await?
                }
            };
            if !going {
                break;
            }
        }
        Ok::<JoinFigures, anyhow::Error>(held)
    };
    let (held, stats) = tokio::try_join!(dispatch, forward(job_rx, senders, bar))?;
    Ok((stats, held))
}

fn join_partition(ctx: &Ctx, p: spill::Partition) -> anyhow::Result<transform::Batch> {
    let [o, d, t] = p
        .load()
        .context("reading a partition file of devices and tokens")?;
    transform::sessions::process_partition(ctx, [&o, &d, &t])
}

/// Maps a partition whose tokens alone exceed the budget (one device's): its owner and device
/// rows are held, a first pass over its tokens gathers the session times, then the devices
/// and each run of at most the rest of the budget are mapped as jobs of their own. `false`
/// when the collector has stopped.
async fn in_runs(
    ctx: &std::sync::Arc<Ctx>,
    p: spill::Partition,
    budget: u64,
    jobs: &mpsc::Sender<Job>,
    held: &mut JoinFigures,
) -> anyhow::Result<bool> {
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    let (rows, mut tokens) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let ([owners, devices], mut tokens) = p
            .into_runs()
            .context("reading a partition file of devices and tokens")?;
        let mut rows = transform::sessions::Held::new(owners, devices)?;
        let run = budget.saturating_sub(rows.bytes());
        while let Some(chunk) = tokens.next(run)? {
            rows.add_times(chunk)?;
        }
        tokens.rewind()?;
        Ok((rows, tokens))
    })
    .await
    .context("gathering a device's session times")??;
    let rows = std::sync::Arc::new(rows);
    let run = budget.saturating_sub(rows.bytes());
    held.holds(rows.bytes());
    let job = (ctx.clone(), rows.clone());
    if !spawn_job(jobs, 1, move || job.1.process_devices(&job.0)).await {
        return Ok(false);
    }
    loop {
        let (back, chunk) = tokio::task::spawn_blocking(move || {
            let chunk = tokens.next(run).map(|c| c.map(<[u8]>::to_vec));
            (tokens, chunk)
        })
        .await
        .context("reading a run of tokens")?;
        let Some(chunk) = chunk? else {
            return Ok(true);
        };
        tokens = back;
        held.holds(rows.bytes() + chunk.len());
        let job = (ctx.clone(), rows.clone());
        if !spawn_job(jobs, 0, move || job.1.process_tokens(&job.0, &chunk)).await {
            return Ok(false);
        }
    }
}

/// Rows a stage's reads yield at most, from the plan (for the progress bar).
fn stage_rows(plan: &Plan, query: Query) -> u64 {
    let read = |e: &Entity| {
        plan.entities
            .iter()
            .find(|p| p.entity == e.name())
            .map_or(0, |p| p.read)
    };
    query.entities().iter().map(read).sum()
}

/// A transform job in flight: rows it stands for (progress) and where its batch will arrive.
type Job = (usize, oneshot::Receiver<anyhow::Result<transform::Batch>>);

/// One single-read stage: the reader streams chunks, rayon workers map them, the results go
/// to the writers in order. Bounded channels everywhere keep memory flat whatever the table
/// size.
async fn run_stage(
    synapse: &Client,
    ctx: &std::sync::Arc<Ctx>,
    query: Query,
    senders: &Senders,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Stats> {
    let (sql, fields) = stage_read(query, ctx.only_users.as_deref())
        .with_context(|| format!("`{}` has no single read", query.name()))?;
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<reader::Chunk>(2);
    let (job_tx, job_rx) = mpsc::channel::<Job>(IN_FLIGHT);
    let read = reader::stream(synapse, &sql, fields, query.name(), chunk_tx);
    let ctx = ctx.clone();
    let dispatch = async move {
        while let Some(chunk) = chunk_rx.recv().await {
            let ctx = ctx.clone();
            let rows = chunk.rows;
            let work = move || transform::process_chunk(&ctx, query, &chunk.bytes);
            if !spawn_job(&job_tx, rows, work).await {
                break;
            }
        }
        Ok::<(), anyhow::Error>(())
    };
    let (_, (), stats) = tokio::try_join!(read, dispatch, forward(job_rx, senders, bar))?;
    Ok(stats)
}

/// Runs `work` on a transform worker and queues its result for `forward`; `false` when the
/// collector has stopped (the stage is failing for a reason reported there).
async fn spawn_job(
    jobs: &mpsc::Sender<Job>,
    rows: usize,
    work: impl FnOnce() -> anyhow::Result<transform::Batch> + Send + 'static,
) -> bool {
    let (tx, rx) = oneshot::channel();
    rayon::spawn(move || {
        let _ = tx.send(work());
    });
    jobs.send((rows, rx)).await.is_ok()
}

/// Sends each job's encoded bodies to their writers, in job order, and sums the counts.
async fn forward(
    mut jobs: mpsc::Receiver<Job>,
    senders: &Senders,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Stats> {
    let mut stats = Stats::default();
    while let Some((rows, rx)) = jobs.recv().await {
        let batch = rx.await.context("transform worker panicked")??;
        for (target, enc) in batch.out {
            if enc.is_empty() {
                continue;
            }
            let tx = senders
                .writers
                .get(&target)
                .with_context(|| format!("no open writer for `{}`", target.name()))?;
            tx.send(enc.into_bytes())
                .await
                .map_err(|_| anyhow::anyhow!("the MAS writer for `{}` stopped", target.name()))?;
        }
        if senders.refuse_warnings && !batch.stats.findings.is_empty() {
            return Err(transform::Warnings(batch.stats.findings).into());
        }
        stats.merge(&batch.stats);
        if let Some(report) = &senders.report {
            report.rows(&batch.skipped_rows)?;
        }
        bar.inc(rows as u64);
        // Sizes may be estimates (preflight scope): never show more than 100 %.
        if bar.length().is_some_and(|len| bar.position() > len) {
            bar.set_length(bar.position());
        }
    }
    Ok(stats)
}
