//! Turning Synapse rows into MAS rows, already encoded for binary COPY, or only counting them.
//!
//! A chunk (or a partition of the devices/tokens join) is decoded, mapped and encoded by one
//! rayon worker, so the only serial part of the pipeline is the sockets. The mapping follows
//! upstream's (reference §3) except where upstream loses data silently; every row read is
//! counted as written or skipped with a reason. The rules themselves are in [`rules`]; the
//! same code runs for `migrate` ([`Mode::Migrate`]) and for `check`'s plan and the preflight
//! ([`Mode::Count`]), which is why the plan is what `migrate` does.

mod accounts;
pub mod findings;
pub mod ids;
pub mod rules;
pub mod sessions;
pub mod skipped;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::db::copy_binary::{self, Encoder};
use crate::sink::tables::Target;
use crate::source::reads::{ColumnError, Read};
use crate::source::{Entity, Query};
pub use findings::{Findings, Kind, Note, Problem, Warnings};
pub use ids::Ids;
use rules::Reason;
pub use skipped::{RowRef, SkippedRow};

/// What the transform produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Encode every MAS row; the first row `migrate` cannot map stops the run.
    Migrate,
    /// Encode nothing; count rows per outcome and record every problem and note (`check`).
    Count,
}

/// Everything a worker needs to map rows; shared read-only by all workers of a run.
#[derive(Debug)]
pub struct Ctx {
    pub ids: Ids,
    /// `:` + MAS `matrix.homeserver`: every user id must end with it.
    suffix: String,
    /// The migration's "now" in Unix ms, for rows whose source has no time.
    pub now_ms: i64,
    /// Synapse auth_provider → MAS upstream provider id.
    pub providers: HashMap<String, u128>,
    pub ignore_missing_auth_providers: bool,
    pub mode: Mode,
    /// Keep every skipped or refused row for `--report` ([`Batch::skipped_rows`]).
    pub report: bool,
    /// Record notes while migrating too: `migrate` without `--allow-warnings` stops at the
    /// first batch that has one (see `pipeline`).
    pub refuse_warnings: bool,
    /// Read only these Synapse users' rows (a SQL array literal of user ids): the users a
    /// staged migration re-derives. `None` reads everyone.
    pub only_users: Option<String>,
    sizes: SizeHints,
}

/// The largest COPY body each target has needed in one batch so far. A batch's encoders start
/// at that size: chunks and partitions are alike in size, and growing each from a small buffer
/// by doubling copied its bytes over again (realloc was ~2.5 % of syn2mas's CPU at 1M users).
#[derive(Debug, Default)]
struct SizeHints([AtomicUsize; Target::ALL.len()]);

impl SizeHints {
    /// Where an encoder starts when nothing is known yet.
    const FIRST: usize = 256 << 10;
    /// The most an encoder starts with: a batch's output per table is normally 1–3 MiB, and
    /// one outlier partition (a user with a huge number of devices) must not make every later
    /// batch of every worker reserve its size.
    const MAX: usize = 8 << 20;

    fn get(&self) -> [usize; Target::ALL.len()] {
        self.0
            .each_ref()
            .map(|s| s.load(Ordering::Relaxed).clamp(Self::FIRST, Self::MAX))
    }

    fn record(&self, batch: &Batch) {
        for (target, enc) in &batch.out {
            self.0[*target as usize].fetch_max(enc.len(), Ordering::Relaxed);
        }
    }
}

impl Ctx {
    pub fn new(
        ids: Ids,
        server_name: &str,
        now_ms: i64,
        providers: HashMap<String, u128>,
        ignore_missing_auth_providers: bool,
        mode: Mode,
    ) -> Self {
        Self {
            ids,
            suffix: format!(":{server_name}"),
            now_ms,
            providers,
            ignore_missing_auth_providers,
            mode,
            report: false,
            refuse_warnings: false,
            only_users: None,
            sizes: SizeHints::default(),
        }
    }
}

/// A row the mapping cannot take. Names the table and the row (by user id and a non-secret
/// key), never a token or hash. `problem` says which `check` finding it is; `None` means the
/// row's bytes are not what its column promises (a bug or a schema surprise, never data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Synapse `{}` row `{row}`: {message}", entity.name())]
pub struct RowError {
    pub entity: Entity,
    /// The row's user id (and key), as shown in messages and as a `check` example.
    pub row: String,
    pub message: String,
    pub problem: Option<Problem>,
}

/// Rows read, migrated and skipped (by reason) for one Synapse table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityCounts {
    pub read: u64,
    pub migrated: u64,
    pub skipped: BTreeMap<&'static str, u64>,
}

impl EntityCounts {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    pub fn merge(&mut self, other: &EntityCounts) {
        self.read += other.read;
        self.migrated += other.migrated;
        for (r, n) in &other.skipped {
            *self.skipped.entry(r).or_default() += n;
        }
    }
}

/// Counts gathered while mapping, for every entity a batch touched.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub entities: BTreeMap<Entity, EntityCounts>,
    pub written: BTreeMap<Target, u64>,
    /// Device IPs that were neither empty, `-` nor an IP address; written as NULL.
    pub invalid_ips: u64,
    /// Problems and notes ([`Mode::Count`] only).
    pub findings: Findings,
}

impl Stats {
    pub fn merge(&mut self, other: &Stats) {
        for (e, c) in &other.entities {
            self.entities.entry(*e).or_default().merge(c);
        }
        for (t, n) in &other.written {
            *self.written.entry(*t).or_default() += n;
        }
        self.invalid_ips += other.invalid_ips;
        self.findings.merge(&other.findings);
    }
}

/// The output of one chunk: an encoded COPY body per target table, and the counts.
#[derive(Debug, Default)]
pub struct Batch {
    pub out: BTreeMap<Target, Encoder>,
    pub stats: Stats,
    /// Rows per target (encoded or, in [`Mode::Count`], only counted).
    rows: [u64; Target::ALL.len()],
    /// Every row skipped or refused, when reporting.
    pub skipped_rows: Vec<SkippedRow>,
    /// Initial encoder capacity per target (`SizeHints`).
    capacity: [usize; Target::ALL.len()],
    mode: Option<Mode>,
    report: bool,
    notes: bool,
}

impl Batch {
    fn new(ctx: &Ctx) -> Self {
        Self {
            capacity: ctx.sizes.get(),
            mode: Some(ctx.mode),
            report: ctx.report,
            notes: ctx.mode == Mode::Count || ctx.refuse_warnings,
            ..Self::default()
        }
    }

    fn counting(&self) -> bool {
        self.mode == Some(Mode::Count)
    }

    /// One row for `target`: encoded by `encode` when migrating, only counted otherwise (ids
    /// are computed inside `encode`, so counting does not pay for them).
    fn emit(&mut self, target: Target, encode: impl FnOnce(&mut Encoder)) {
        self.rows[target as usize] += 1;
        if self.counting() {
            return;
        }
        let capacity = self.capacity[target as usize];
        let enc = self
            .out
            .entry(target)
            .or_insert_with(|| Encoder::with_capacity(capacity));
        enc.row(target.width());
        encode(enc);
    }

    fn migrated(&mut self, entity: Entity) {
        let c = self.stats.entities.entry(entity).or_default();
        c.read += 1;
        c.migrated += 1;
    }

    fn skipped(&mut self, entity: Entity, reason: Reason, row: RowRef<'_, '_>) {
        let c = self.stats.entities.entry(entity).or_default();
        c.read += 1;
        *c.skipped.entry(reason.as_str()).or_default() += 1;
        if self.report {
            let reason = reason.as_str().to_owned();
            self.skipped_rows.push(SkippedRow::new(entity, row, reason));
        }
    }

    /// Counts a row `migrate` refuses as refused under each of `entities` (counting only).
    fn refused(&mut self, entities: &[Entity], problem: Problem, row: RowRef<'_, '_>) {
        for e in entities {
            let c = self.stats.entities.entry(*e).or_default();
            c.read += 1;
            *c.skipped.entry(Reason::Refused.as_str()).or_default() += 1;
            if self.report {
                let reason = format!("refused: {}", problem.finding_id());
                self.skipped_rows.push(SkippedRow::new(*e, row, reason));
            }
        }
    }

    /// Records a note about a row when counting, or when `migrate` refuses warnings.
    fn note(&mut self, entity: Entity, note: Note, example: impl FnOnce() -> String) {
        if self.notes {
            self.stats
                .findings
                .add(entity, Kind::Note(note), &example());
        }
    }

    /// A row `migrate` refuses: the error when migrating; when counting, the problem is
    /// recorded and the row counted as refused under each of `entities`.
    fn refuse(
        &mut self,
        err: RowError,
        entities: &[Entity],
        row: RowRef<'_, '_>,
    ) -> Result<(), RowError> {
        let Some(problem) = err.problem.filter(|_| self.counting()) else {
            return Err(err);
        };
        self.stats
            .findings
            .add(err.entity, Kind::Problem(problem), &err.row);
        self.refused(entities, problem, row);
        Ok(())
    }

    /// Records the rows of each target, and the encoders' sizes for the next batches.
    fn finish(&mut self, ctx: &Ctx) {
        for target in Target::ALL {
            let n = self.rows[target as usize];
            if n > 0 {
                *self.stats.written.entry(target).or_default() += n;
            }
        }
        ctx.sizes.record(self);
    }
}

/// A problem found in a row of `entity` owned by (or named) `row`.
fn problem(entity: Entity, row: &str, problem: Problem, message: impl Into<String>) -> RowError {
    RowError {
        entity,
        row: row.to_owned(),
        message: message.into(),
        problem: Some(problem),
    }
}

/// A row whose bytes do not decode as its read declares.
fn malformed(entity: Entity, row: &[Option<&[u8]>], e: ColumnError) -> RowError {
    let who = row
        .first()
        .copied()
        .flatten()
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("?");
    RowError {
        entity,
        row: who.to_owned(),
        message: e.to_string(),
        problem: None,
    }
}

/// Decodes every row of a chunk of `R` and maps it with `map`.
fn each_row<'a, R: Read<'a>>(
    bytes: &'a [u8],
    entity: Entity,
    slots: &mut Vec<Option<&'a [u8]>>,
    mut map: impl FnMut(R) -> Result<(), RowError>,
) -> anyhow::Result<()> {
    slots.clear();
    copy_binary::decode_rows(bytes, R::FIELDS, slots)?;
    for row in slots.chunks_exact(R::FIELDS) {
        map(R::decode(row).map_err(|e| malformed(entity, row, e))?)?;
    }
    Ok(())
}

/// Every row of a buffer of `R` tuples, decoded. One tuple's field slices at a time: the
/// slices of a whole partition would take more memory than its bytes (16 per field), and the
/// rows are counted first so that their vector is allocated once, at its size.
fn decode_all<'a, R: Read<'a>>(bytes: &'a [u8], entity: Entity) -> anyhow::Result<Vec<R>> {
    let mut slots = vec![None; R::FIELDS];
    let mut rows = Vec::with_capacity(copy_binary::scan_tuples(bytes, R::FIELDS)?.rows);
    let mut pos = 0;
    while pos < bytes.len() {
        pos += copy_binary::tuple_fields(&bytes[pos..], R::FIELDS, &mut slots)?;
        rows.push(R::decode(&slots).map_err(|e| malformed(entity, &slots, e))?);
    }
    Ok(rows)
}

/// Decodes, maps and encodes (or counts) one chunk of rows of a single-read stage.
pub fn process_chunk(ctx: &Ctx, query: Query, bytes: &[u8]) -> anyhow::Result<Batch> {
    let mut batch = Batch::new(ctx);
    let mut slots = Vec::new();
    match query {
        Query::Users => each_row(bytes, Entity::Users, &mut slots, |r| {
            accounts::user(ctx, &r, &mut batch)
        })?,
        Query::Threepids => each_row(bytes, Entity::Threepids, &mut slots, |r| {
            accounts::threepid(ctx, &r, &mut batch)
        })?,
        Query::ExternalIds => each_row(bytes, Entity::ExternalIds, &mut slots, |r| {
            accounts::external_id(ctx, &r, &mut batch)
        })?,
        Query::Sessions => anyhow::bail!("`{}` is not read in chunks", query.name()),
    }
    batch.finish(ctx);
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_with(target: Target, bytes: usize) -> Batch {
        let mut enc = Encoder::with_capacity(bytes);
        enc.row(1).text(vec![b'x'; bytes]);
        Batch {
            out: BTreeMap::from([(target, enc)]),
            ..Batch::default()
        }
    }

    #[test]
    fn size_hints_follow_the_largest_batch_within_bounds() {
        let hints = SizeHints::default();
        assert_eq!(hints.get(), [SizeHints::FIRST; Target::ALL.len()]);

        hints.record(&batch_with(Target::CompatSessions, 3 << 20));
        hints.record(&batch_with(Target::CompatSessions, 1 << 20));
        let got = hints.get();
        assert!(got[Target::CompatSessions as usize] >= 3 << 20);
        assert_eq!(got[Target::Users as usize], SizeHints::FIRST);

        // One outlier does not make every later batch reserve its size.
        hints.record(&batch_with(Target::CompatAccessTokens, 64 << 20));
        assert_eq!(
            hints.get()[Target::CompatAccessTokens as usize],
            SizeHints::MAX
        );
    }
}
