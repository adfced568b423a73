//! `syn2mas check`: every pre-cutover check, strictly read-only on both databases.
//!
//! Promise: if `check` passes, `migrate` will not fail on data or configuration. `migrate` runs
//! the preflight part first ([`Scope::Preflight`], everything with `--full-check`) and refuses
//! on errors (and on warnings without `--allow-warnings`); the row-level checks it skips are
//! enforced by its transform, which stops before MAS sees anything.
//!
//! Read-only by construction: each side runs in one `REPEATABLE READ READ ONLY` transaction
//! (PostgreSQL itself rejects any write), with plain SELECTs that take only ACCESS SHARE locks,
//! which no INSERT/UPDATE/DELETE of a running Synapse or MAS waits for. Unlike `mas-cli syn2mas
//! check` it neither migrates MAS's schema nor takes an advisory lock.

pub mod config;
pub mod ids;
pub mod mas_target;
pub mod providers;
pub mod report;
pub mod row_findings;
pub mod synapse_data;
pub mod synapse_schema;

pub use report::{
    DatabaseInfo, EntityPlan, Finding, MasProviderInfo, MatchedBy, Plan, ProviderMapping,
    ProviderStatus, Report, Severity, SynapseProviderInfo,
};

use std::sync::Arc;

use crate::config::{MasConfig, SynapseConfig};
use crate::db::ConnectOptions;
use crate::pipeline;
use crate::progress::Progress;
use crate::transform::{Mode, Stats};
use anyhow::{Context, Result};
use tokio_postgres::Client;

/// Everything `check` needs; the CLI builds it from the flags and the two config files.
pub struct CheckInputs<'a> {
    pub synapse: &'a SynapseConfig,
    pub mas: &'a MasConfig,
    pub synapse_db: &'a ConnectOptions,
    pub mas_db: &'a ConnectOptions,
    pub ignore_missing_auth_providers: bool,
    pub scope: Scope,
    pub progress: &'a Progress,
    /// `--report DIR`: every skipped or refused row of the full scope's counting run.
    pub report: Option<Arc<crate::report::ReportDir>>,
    /// Report other sessions on Synapse's database (`W-synapse-sessions`): `check` does;
    /// `migrate`'s own checks do not, since `migrate` refuses them itself, governed by
    /// `--allow-other-sessions` alone (not by `--allow-warnings`).
    pub other_sessions: bool,
}

/// How much of Synapse's data `check` looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    /// Every check and the exact plan (`syn2mas check`, `migrate --full-check`).
    Full,
    /// Configuration, both schemas, MAS's state, providers and duplicate tokens: what
    /// `migrate` needs before it starts. What `check` says about single rows is enforced by
    /// the migration's own transform while it reads (the same code `check`'s counting run
    /// uses): a row it refuses, or without `--allow-warnings` a row `check` warns about,
    /// stops the run before MAS sees anything.
    Preflight,
}

/// A query that waits this long for a lock fails instead of hanging: something holds an
/// exclusive lock (a schema migration, VACUUM FULL, another tool's DDL).
const LOCK_TIMEOUT: &str = "10s";

/// Connects to both databases and runs every check. `Err` only for failures to connect or to
/// query (exit 1); problems found are findings in the report.
pub async fn run(inputs: &CheckInputs<'_>) -> Result<Report> {
    let (synapse, mas) = tokio::try_join!(
        inputs.synapse_db.connect("Synapse"),
        inputs.mas_db.connect("MAS"),
    )?;
    tokio::try_join!(begin_read_only(&synapse), begin_read_only(&mas))?;
    let readers = match inputs.scope {
        Scope::Full => share_snapshot(&synapse, inputs.synapse_db).await?,
        Scope::Preflight => Vec::new(),
    };
    let report = inspect(inputs, &synapse, &readers, &mas).await?;
    tokio::try_join!(finish(&synapse, "Synapse"), finish(&mas, "MAS"))?;
    for reader in &readers {
        finish(reader, "Synapse").await?;
    }
    Ok(report)
}

/// The plan reads every row through the migration's own pipeline, on the reader sessions
/// `migrate` would use, all on the snapshot of the first session so the figures agree with the
/// other checks. Each gets enough `work_mem` for the owner joins of threepids and external ids
/// (their own transaction only).
async fn share_snapshot(first: &Client, synapse_db: &ConnectOptions) -> Result<Vec<Client>> {
    let snapshot: String = first
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .context("exporting the Synapse snapshot")?
        .get(0);
    let readers = pipeline::open_readers(synapse_db).await?;
    for c in &readers {
        crate::source::snapshot::join(c, &snapshot).await?;
        c.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; SET LOCAL work_mem = '256MB'"
        ))
        .await
        .context("configuring a Synapse session")?;
    }
    Ok(readers)
}

/// All checks, on connections already inside their read-only transactions. Report order:
/// configuration, MAS database, Synapse schema and data, auth providers.
async fn inspect(
    inputs: &CheckInputs<'_>,
    synapse: &Client,
    readers: &[Client],
    mas: &Client,
) -> Result<Report> {
    let (syn_db, mas_db) = tokio::try_join!(
        describe(synapse, "synapse", inputs.synapse_db),
        describe(mas, "mas", inputs.mas_db),
    )?;
    let ((schema_findings, syn_facts), mas_facts) = tokio::try_join!(
        inspect_synapse(inputs, synapse, readers),
        mas_target::inspect(mas, &mas_db),
    )?;
    let mut report = Report {
        scope: inputs.scope,
        databases: vec![syn_db, mas_db],
        findings: config::check(inputs.synapse, inputs.mas),
        ..Report::default()
    };
    report.findings.extend(mas_facts.findings);
    report.findings.extend(schema_findings);
    if inputs.other_sessions {
        let mut own = crate::source::activity::backend_pids(readers).await?;
        own.extend(crate::source::activity::backend_pids(std::slice::from_ref(mas)).await?);
        report
            .findings
            .extend(synapse_data::other_sessions(synapse, &own).await?);
    }
    report.stage = stage(inputs, synapse, mas).await?;
    let Some((facts, counted)) = syn_facts else {
        return Ok(report);
    };
    report.findings.extend(row_findings::findings(
        &counted.findings,
        &inputs.mas.homeserver,
    ));
    report.findings.extend(facts.findings);
    let analysis = providers::analyse(
        &facts.providers,
        &providers::ProviderInputs {
            synapse: inputs.synapse,
            mas: inputs.mas,
            in_database: mas_facts.provider_ids.as_ref(),
            ignore_missing_auth_providers: inputs.ignore_missing_auth_providers,
        },
    );
    for (auth_provider, mut finding) in analysis.findings {
        if finding.examples.is_empty() {
            finding.examples = synapse_data::provider_users(synapse, &auth_provider).await?;
        }
        report.findings.push(finding);
    }
    report.providers = analysis.mappings;
    if inputs.scope == Scope::Full {
        report.plan = Some(crate::source::plan::from_counts(&counted));
    }
    Ok(report)
}

/// The stage, when MAS has one: how old, how big, and whether `migrate` can apply it here (the
/// changed users are not counted: that reads Synapse's six tables, `stage status` does it).
async fn stage(
    inputs: &CheckInputs<'_>,
    synapse: &Client,
    mas: &Client,
) -> Result<Option<crate::stage::Status>> {
    if !crate::stage::exists(mas).await? {
        return Ok(None);
    }
    let status = crate::stage::status(
        synapse,
        mas,
        inputs.mas,
        inputs.ignore_missing_auth_providers,
        false,
    )
    .await?;
    Ok(Some(status))
}

/// One consistent snapshot per side; PostgreSQL rejects writes in it, so `check` cannot change
/// anything even by mistake.
async fn begin_read_only(client: &Client) -> Result<()> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
             SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"
        ))
        .await
        .context("starting a read-only transaction")
}

async fn finish(client: &Client, side: &str) -> Result<()> {
    client
        .batch_execute("COMMIT")
        .await
        .with_context(|| format!("ending the read-only transaction on {side}"))
}

/// Where we are connected: host and port as configured (after libpq's environment and
/// defaults), database and user as the server reports them.
pub(crate) async fn describe(
    client: &Client,
    side: &str,
    opts: &ConnectOptions,
) -> Result<DatabaseInfo> {
    let (host, port, _, _) = opts.effective();
    let row = client
        .query_one("SELECT current_database()::text, current_user::text", &[])
        .await
        .with_context(|| format!("asking the {side} database who we are"))?;
    Ok(DatabaseInfo {
        side: side.to_owned(),
        host,
        port,
        dbname: row.get(0),
        user: row.get(1),
    })
}

/// Schema findings, and the data checks when the schema allows them (`None` when the schema
/// itself is the problem: the reads would only fail on missing columns): the provider counts
/// and duplicate tokens, and (full scope) the transform's counting run over every read.
async fn inspect_synapse(
    inputs: &CheckInputs<'_>,
    client: &Client,
    readers: &[Client],
) -> Result<(Vec<Finding>, Option<(synapse_data::SynapseFacts, Stats)>)> {
    let schema = synapse_schema::inspect(client).await?;
    if !schema.is_empty() {
        return Ok((schema, None));
    }
    // The server name `migrate` extracts localparts with is MAS's, so the rows are checked
    // against it (a differing Synapse `server_name` is E-server-name-config).
    let mut ctx = crate::migrate::context(
        inputs.mas,
        None,
        inputs.ignore_missing_auth_providers,
        Mode::Count,
    )?;
    ctx.report = inputs.report.is_some() && inputs.scope == Scope::Full;
    let ctx = Arc::new(ctx);
    let counted = async {
        match inputs.scope {
            Scope::Full => {
                let sizes = crate::source::plan::estimate(client).await?;
                let senders = pipeline::Senders {
                    report: inputs.report.clone(),
                    ..pipeline::Senders::default()
                };
                let (stats, _) =
                    pipeline::run_all(readers, &ctx, &sizes, inputs.progress, senders).await?;
                Ok::<_, anyhow::Error>(stats)
            }
            Scope::Preflight => Ok(Stats::default()),
        }
    };
    let (facts, counted) = tokio::try_join!(synapse_data::inspect(client), counted)?;
    Ok((schema, Some((facts, counted))))
}
