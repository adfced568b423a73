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
/// workers (`transform::sessions`). The Synapse side is three plain scans; memory is a few
/// partitions, whatever the number of users.
async fn sessions_stage(
    readers: &[Client],
    ctx: &std::sync::Arc<Ctx>,
    plan: &Plan,
    progress: &Progress,
    senders: Senders,
) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let rows = stage_rows(plan, Query::Sessions) + stage_rows(plan, Query::Users);
    let parts = crate::test_hooks::partitions().unwrap_or_else(|| spill::partitions_for(rows));
    spill::make_room_for_files(parts * SessionRead::ALL.len())
        .context("raising the open-files limit for the partition files")?;
    let read_bar = progress.bar("devices and tokens: read", rows, "rows");
    let files = futures::future::try_join_all(SessionRead::ALL.into_iter().zip(readers).map(
        |(read, client)| spill_read(client, read, ctx.only_users.as_deref(), parts, &read_bar),
    ))
    .await?;
    read_bar.set_length(read_bar.position());
    read_bar.finish();
    crate::migrate::pause_point("spilled").await;
    let mut streams: Vec<_> = files.into_iter().map(Vec::into_iter).collect();
    let partitions: Vec<[std::fs::File; 3]> = (0..parts)
        .filter_map(|_| Some([streams[0].next()?, streams[1].next()?, streams[2].next()?]))
        .collect();
    let bar = progress.bar(Query::Sessions.name(), parts as u64, "partitions");
    let stats = run_partitions(ctx, partitions, &senders, &bar).await?;
    bar.finish();
    let secs = start.elapsed().as_secs_f64();
    let seconds = Query::Sessions
        .entities()
        .iter()
        .map(|e| (*e, secs))
        .collect();
    Ok((stats, seconds))
}

/// Streams one unjoined read into `parts` partition files (written off the I/O thread).
async fn spill_read(
    client: &Client,
    read: SessionRead,
    users: Option<&str>,
    parts: usize,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<std::fs::File>> {
    let (sql, fields) = session_read(read, users);
    let (tx, mut rx) = mpsc::channel::<reader::Chunk>(2);
    let bar = bar.clone();
    let spilling = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<std::fs::File>> {
        let mut spill = spill::Spill::new(parts, fields)?;
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

/// Joins and maps each partition on a transform worker, a few at a time, and forwards the
/// results in order.
async fn run_partitions(
    ctx: &std::sync::Arc<Ctx>,
    partitions: Vec<[std::fs::File; 3]>,
    senders: &Senders,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Stats> {
    let (job_tx, job_rx) = mpsc::channel::<Job>(IN_FLIGHT);
    let ctx = ctx.clone();
    let dispatch = async move {
        for files in partitions {
            let ctx = ctx.clone();
            if !spawn_job(&job_tx, 1, move || join_partition(&ctx, files)).await {
                break;
            }
        }
        Ok::<(), anyhow::Error>(())
    };
    let ((), stats) = tokio::try_join!(dispatch, forward(job_rx, senders, bar))?;
    Ok(stats)
}

fn join_partition(ctx: &Ctx, files: [std::fs::File; 3]) -> anyhow::Result<transform::Batch> {
    let [o, d, t] = files.map(spill::read_all);
    let (o, d, t) = (o?, d?, t?);
    transform::sessions::process_partition(ctx, [&o, &d, &t])
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
