//! Turning chunks of Synapse rows into MAS rows, already encoded for binary COPY.
//!
//! A chunk is decoded, mapped and encoded by one rayon worker, so the only serial part of the
//! pipeline is the sockets. The mapping follows upstream's (reference §3) except where the
//! upstream behaviour loses data silently; every row read is counted as written or skipped
//! with a reason.

pub mod ids;
mod rows;
pub mod sessions;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::db::copy_binary::{self, Encoder, FieldError, TimestampRange};
use crate::sink::tables::Target;
use crate::source::{Entity, Query};
pub use ids::Ids;

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
    ) -> Self {
        Self {
            ids,
            suffix: format!(":{server_name}"),
            now_ms,
            providers,
            ignore_missing_auth_providers,
            sizes: SizeHints::default(),
        }
    }
}

/// Why a row cannot be migrated. Names the table and the row (by user id and a non-secret
/// key), never a token or hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Synapse `{table}` row {row}: {message}")]
pub struct RowError {
    pub table: &'static str,
    pub row: String,
    pub message: String,
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
    }
}

/// The output of one chunk: an encoded COPY body per target table, and the counts.
#[derive(Debug, Default)]
pub struct Batch {
    pub out: BTreeMap<Target, Encoder>,
    pub stats: Stats,
    /// Initial encoder capacity per target (`SizeHints`).
    capacity: [usize; Target::ALL.len()],
}

impl Batch {
    fn new(ctx: &Ctx) -> Self {
        Self {
            capacity: ctx.sizes.get(),
            ..Self::default()
        }
    }

    fn encoder(&mut self, target: Target) -> &mut Encoder {
        let capacity = self.capacity[target as usize];
        self.out
            .entry(target)
            .or_insert_with(|| Encoder::with_capacity(capacity))
    }

    /// Records the rows each encoder holds as written to its table, and its size for the next
    /// batches.
    fn finish(&mut self, ctx: &Ctx) {
        for (target, enc) in &self.out {
            *self.stats.written.entry(*target).or_default() += enc.rows();
        }
        ctx.sizes.record(self);
    }

    fn counts(&mut self, entity: Entity) -> &mut EntityCounts {
        self.stats.entities.entry(entity).or_default()
    }
}

/// The skip reasons the source queries can yield, as static strings for cheap counting.
const REASONS: &[&str] = &[
    "appservice",
    "deactivated",
    "guest",
    "hidden",
    "guest_device",
    "puppet",
    "device_deleted",
    "device_hidden",
    "no_access_token",
    "inconsistent_pair",
    "superseded",
    "unmapped_provider",
    "orphan",
];

/// Decodes, maps and encodes one chunk of rows of `query`.
pub fn process_chunk(ctx: &Ctx, query: Query, bytes: &[u8]) -> anyhow::Result<Batch> {
    let (Some((_, fields)), Some(map)) = (query.read(), rows::mapper(query)) else {
        anyhow::bail!("`{}` is not read in chunks", query.name());
    };
    let mut slots = Vec::with_capacity(fields * 4096);
    copy_binary::decode_rows(bytes, fields, &mut slots)?;
    let mut batch = Batch::new(ctx);
    for row in slots.chunks_exact(fields) {
        map(ctx, row, &mut batch)?;
    }
    batch.finish(ctx);
    Ok(batch)
}

/// A field decoding failure, attributed to its table and row.
fn field_error(table: &'static str, row: &str, column: &str, e: FieldError) -> RowError {
    RowError {
        table,
        row: row.to_owned(),
        message: format!("column `{column}`: {e}"),
    }
}

fn time_error(table: &'static str, row: &str, column: &str, e: TimestampRange) -> RowError {
    RowError {
        table,
        row: row.to_owned(),
        message: format!("column `{column}`: {e}"),
    }
}

/// The static reason string for a `skip` value from SQL.
fn reason(table: &'static str, row: &str, skip: &str) -> Result<&'static str, RowError> {
    REASONS
        .iter()
        .copied()
        .find(|r| *r == skip)
        .ok_or_else(|| RowError {
            table,
            row: row.to_owned(),
            message: format!("unknown skip reason `{skip}`"),
        })
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
