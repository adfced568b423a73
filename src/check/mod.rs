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
mod sql;
pub mod synapse_data;
pub mod synapse_schema;

pub use report::{
    DatabaseInfo, EntityPlan, Finding, MasProviderInfo, MatchedBy, Plan, ProviderMapping,
    ProviderStatus, Report, Severity, SynapseProviderInfo,
};

use crate::config::{MasConfig, SynapseConfig};
use crate::db::ConnectOptions;
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
}

/// How much of Synapse's data `check` looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    /// Every check and the exact plan (`syn2mas check`, `migrate --full-check`).
    Full,
    /// Configuration, both schemas, MAS's state, providers and one pass over `users`: what
    /// `migrate` needs before it starts. The row-level checks of the other tables are enforced
    /// by the migration itself, which stops before MAS sees anything (see
    /// `synapse_data::preflight`). Saves ~15 s of a 1M-user maintenance window.
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
    let planner = match inputs.scope {
        Scope::Full => {
            let planner = inputs.synapse_db.connect("Synapse").await?;
            share_snapshot(&synapse, &planner).await?;
            Some(planner)
        }
        Scope::Preflight => None,
    };
    let report = inspect(inputs, &synapse, planner.as_ref(), &mas).await?;
    tokio::try_join!(finish(&synapse, "Synapse"), finish(&mas, "MAS"))?;
    if let Some(planner) = &planner {
        finish(planner, "Synapse").await?;
    }
    Ok(report)
}

/// The plan's aggregates are the most expensive part of `check`; a second Synapse session
/// computes them while the first runs the data checks, both on the same snapshot so their
/// figures agree. Both get enough `work_mem` that the hash joins over millions of rows stay
/// in memory (their own transaction only).
async fn share_snapshot(first: &Client, second: &Client) -> Result<()> {
    let snapshot: String = first
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .context("exporting the Synapse snapshot")?
        .get(0);
    crate::source::snapshot::join(second, &snapshot).await?;
    for c in [first, second] {
        c.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; SET LOCAL work_mem = '256MB'"
        ))
        .await
        .context("configuring a Synapse session")?;
    }
    Ok(())
}

/// All checks, on connections already inside their read-only transactions. Report order:
/// configuration, MAS database, Synapse schema and data, auth providers.
async fn inspect(
    inputs: &CheckInputs<'_>,
    synapse: &Client,
    planner: Option<&Client>,
    mas: &Client,
) -> Result<Report> {
    let (syn_db, mas_db) = tokio::try_join!(
        describe(synapse, "synapse", inputs.synapse_db),
        describe(mas, "mas", inputs.mas_db),
    )?;
    let ((schema_findings, syn_facts), mas_facts, plan) = tokio::try_join!(
        inspect_synapse(synapse, inputs.mas, inputs.scope),
        mas_target::inspect(mas, &mas_db),
        plan_if_usable(planner, inputs.mas),
    )?;
    let mut report = Report {
        scope: inputs.scope,
        databases: vec![syn_db, mas_db],
        findings: config::check(inputs.synapse, inputs.mas),
        ..Report::default()
    };
    report.findings.extend(mas_facts.findings);
    report.findings.extend(schema_findings);
    let Some(facts) = syn_facts else {
        return Ok(report);
    };
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
    report.plan = plan;
    Ok(report)
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
/// itself is the problem: the data queries would only fail on missing columns).
async fn inspect_synapse(
    client: &Client,
    mas: &MasConfig,
    scope: Scope,
) -> Result<(Vec<Finding>, Option<synapse_data::SynapseFacts>)> {
    let schema = synapse_schema::inspect(client).await?;
    if !schema.is_empty() {
        return Ok((schema, None));
    }
    // The server name `migrate` extracts localparts with is MAS's, so the data is checked
    // against it (a differing Synapse `server_name` is E-server-name-config).
    let facts = match scope {
        Scope::Full => synapse_data::inspect(client, &mas.homeserver).await?,
        Scope::Preflight => synapse_data::preflight(client, &mas.homeserver).await?,
    };
    Ok((schema, Some(facts)))
}

/// The plan, unless the Synapse schema is one the queries cannot run on (the schema checks
/// report that) or there is no planner session (preflight scope).
async fn plan_if_usable(client: Option<&Client>, mas: &MasConfig) -> Result<Option<Plan>> {
    let Some(client) = client else {
        return Ok(None);
    };
    if !synapse_schema::inspect(client).await?.is_empty() {
        return Ok(None);
    }
    plan(client, mas).await.map(Some)
}

/// The exact per-entity counts, from the migration's own queries.
async fn plan(client: &Client, mas: &MasConfig) -> Result<Plan> {
    let params = crate::source::plan::PlanParams {
        mapped_providers: mapped_providers(mas),
    };
    crate::source::plan::plan(client, &params)
        .await
        .context("computing the migration plan")
}

/// `auth_provider` values a MAS provider claims (disabled ones included, as `migrate` maps them).
fn mapped_providers(mas: &MasConfig) -> Vec<String> {
    let mut out: Vec<String> = mas
        .providers
        .iter()
        .filter_map(|p| p.synapse_idp_id.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}
