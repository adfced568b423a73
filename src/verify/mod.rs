//! `syn2mas verify`: compares Synapse with the migrated MAS database, row by row, and says
//! exactly what differs, so operators reopen the homeserver only on a result they can trust.
//!
//! How:
//! - **Read-only by construction.** Each side is one `REPEATABLE READ READ ONLY` snapshot
//!   (PostgreSQL rejects any write in it); worker connections import that snapshot, so every
//!   entity is compared against the same state. Only SELECT and COPY TO run.
//! - **Natural keys, not ids.** Ids are random after `migrate` and after upstream's
//!   `mas-cli syn2mas`, so rows are matched by username, (username, device), email, token…;
//!   ids are only checked for the one thing both tools guarantee: the ULID time part equals
//!   the row's `created_at`.
//! - **Merge join of two sorted streams.** Each side streams its rows with binary COPY, sorted
//!   by the key with `COLLATE "C"` (byte order, the same on both servers and in Rust), and the
//!   two streams are walked in step: memory is a row per side, whatever the number of users.
//! - **The migration's own queries.** What Synapse should have become is computed by wrapping
//!   sql/*.sql (their `skip` column), so `verify` and `migrate` cannot disagree on the mapping.

mod compare;
mod merge;
pub mod report;
mod spec;
mod stream;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use tokio_postgres::Client;

pub use report::{
    Difference, EXIT_DIFFERENCES, EntityReport, Example, ExampleKind, JSON_VERSION, Report,
};

use crate::config::MasConfig;
use crate::db::ConnectOptions;
use crate::source::snapshot;
use spec::Spec;
use stream::RowStream;

/// Entities compared at the same time, each on its own pair of connections. Two keeps both
/// servers' sorts and our merge busy without crowding a small machine.
const PARALLEL: usize = 2;

/// Session settings of every worker connection. A query that waits 10 s for a lock fails
/// instead of hanging behind DDL; the sorts of millions of rows stay in memory instead of
/// spilling to disk (256MB: the most `migrate` gives its Synapse reads, whose `work_mem` it
/// derives from the server's settings; `verify` does not yet).
const SESSION_SETTINGS: &str = "SET lock_timeout = '10s'; SET work_mem = '256MB'";

/// Everything `verify` needs; the CLI builds it from the flags and the config files.
pub struct VerifyInputs<'a> {
    /// MAS's config: `matrix.homeserver` (user ids) and the providers' `synapse_idp_id`.
    pub mas: &'a MasConfig,
    pub synapse_db: &'a ConnectOptions,
    pub mas_db: &'a ConnectOptions,
}

/// Compares every entity. `Err` only when a database cannot be reached or read (exit 1);
/// differences are in the report.
pub async fn run(inputs: &VerifyInputs<'_>) -> anyhow::Result<Report> {
    let started = Instant::now();
    let (synapse, mas) = tokio::try_join!(
        inputs.synapse_db.connect("Synapse"),
        inputs.mas_db.connect("MAS"),
    )?;
    let (syn_snapshot, mas_snapshot) = tokio::try_join!(
        export_snapshot(&synapse, "Synapse"),
        export_snapshot(&mas, "MAS")
    )?;
    let databases = vec![
        crate::check::describe(&synapse, "synapse", inputs.synapse_db).await?,
        crate::check::describe(&mas, "mas", inputs.mas_db).await?,
    ];
    let shared = Shared {
        inputs,
        syn_snapshot,
        mas_snapshot,
        next: AtomicUsize::new(0),
    };
    let workers = (0..PARALLEL.min(spec::all().len())).map(|_| shared.worker());
    let mut entities: Vec<(usize, EntityReport)> = futures::future::try_join_all(workers)
        .await?
        .into_iter()
        .flatten()
        .collect();
    entities.sort_by_key(|(i, _)| *i);
    tokio::try_join!(commit(&synapse, "Synapse"), commit(&mas, "MAS"))?;
    Ok(Report {
        databases,
        entities: entities.into_iter().map(|(_, e)| e).collect(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What the workers share: where to connect, the snapshots to import, the next entity to take.
struct Shared<'a> {
    inputs: &'a VerifyInputs<'a>,
    syn_snapshot: String,
    mas_snapshot: String,
    next: AtomicUsize,
}

impl Shared<'_> {
    /// Opens a connection pair on the snapshots and compares entities until none is left.
    async fn worker(&self) -> anyhow::Result<Vec<(usize, EntityReport)>> {
        let (syn, mas) = tokio::try_join!(
            self.inputs.synapse_db.connect("Synapse"),
            self.inputs.mas_db.connect("MAS"),
        )?;
        tokio::try_join!(
            join_snapshot(&syn, &self.syn_snapshot, "Synapse"),
            join_snapshot(&mas, &self.mas_snapshot, "MAS"),
        )?;
        set_params(&syn, self.inputs.mas).await?;
        let mut done = Vec::new();
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(spec) = spec::all().get(i) else {
                break;
            };
            let report = compare(spec, &syn, &mas, &self.inputs.mas.homeserver).await?;
            tracing::info!(
                "verified {}: {} of {} rows equal, {:.1}s",
                spec.name,
                report.equal,
                report.synapse_rows.max(report.mas_rows),
                report.seconds
            );
            done.push((i, report));
        }
        tokio::try_join!(commit(&syn, "Synapse"), commit(&mas, "MAS"))?;
        Ok(done)
    }
}

/// One entity: both sorted queries start at once (each server sorts in parallel), then merge.
async fn compare(
    spec: &Spec,
    syn: &Client,
    mas: &Client,
    server: &str,
) -> anyhow::Result<EntityReport> {
    let started = Instant::now();
    let (mut s, mut m) = tokio::try_join!(
        RowStream::open(
            syn,
            spec.synapse_sql,
            spec.synapse_fields(),
            spec.keys.len(),
            "Synapse",
            spec.name
        ),
        RowStream::open(
            mas,
            spec.mas_sql,
            spec.mas_fields(),
            spec.keys.len(),
            "MAS",
            spec.name
        ),
    )?;
    let report = merge::Merge::new(spec, server)
        .run(&mut s, &mut m, started)
        .await?;
    Ok(report)
}

/// Opens the read-only snapshot every connection of that side will read, and exports it.
async fn export_snapshot(client: &Client, side: &str) -> anyhow::Result<String> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .with_context(|| format!("starting a read-only transaction on {side}"))?;
    let row = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .with_context(|| format!("exporting the {side} snapshot"))?;
    Ok(row.get(0))
}

async fn join_snapshot(client: &Client, id: &str, side: &str) -> anyhow::Result<()> {
    client
        .batch_execute(SESSION_SETTINGS)
        .await
        .with_context(|| format!("configuring the {side} session"))?;
    snapshot::join(client, id)
        .await
        .with_context(|| format!("reading the {side} snapshot"))
}

/// The settings the Synapse queries read: the user-id suffix and the auth_provider → MAS
/// provider id map (also as `syn2mas.providers`, whose keys are the mapped providers). Bound as parameters, never spliced.
async fn set_params(client: &Client, mas: &MasConfig) -> anyhow::Result<()> {
    let providers: serde_json::Map<String, serde_json::Value> = mas
        .providers
        .iter()
        .filter_map(|p| {
            let uuid = format_uuid(p.id.0);
            p.synapse_idp_id.clone().map(|s| (s, uuid.into()))
        })
        .collect();
    let suffix = format!(":{}", mas.homeserver);
    let ids = serde_json::Value::Object(providers).to_string();
    client
        .execute(
            "SELECT set_config('syn2mas.verify_suffix', $1, false), \
                    set_config('syn2mas.verify_provider_ids', $2, false), \
                    set_config('syn2mas.providers', $2, false)",
            &[&suffix, &ids],
        )
        .await
        .context("setting query parameters on Synapse")?;
    Ok(())
}

/// A 128-bit id in PostgreSQL's `uuid` text form.
fn format_uuid(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

async fn commit(client: &Client, side: &str) -> anyhow::Result<()> {
    client
        .batch_execute("COMMIT")
        .await
        .with_context(|| format!("ending the read-only transaction on {side}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_text_form() {
        let id: ulid::Ulid = "01H8PKNWKKRPCBW4YGH1RWV279".parse().unwrap();
        assert_eq!(format_uuid(id.0), "018a2d3a-f273-c598-be13-d08871cd88e9");
    }
}
