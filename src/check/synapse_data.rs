//! Checks on Synapse's data that are not about one row at a time: how many external ids each
//! auth provider has (for the provider analysis) and duplicate tokens (MAS's unique indexes
//! would reject them only at the end of a migration). Everything `check` says about single
//! rows comes from the migration's own transform, run in counting mode (`row_findings`).

use super::ids;
use super::report::{Finding, MAX_EXAMPLES};
use crate::source::activity::{self, Found};
use anyhow::{Context, Result};
use tokio_postgres::Client;

/// What the Synapse side contributes to the report besides the row findings.
#[derive(Debug, Default)]
pub struct SynapseFacts {
    pub findings: Vec<Finding>,
    /// Rows of `user_external_ids` per `auth_provider`, ordered by name.
    pub providers: Vec<(String, u64)>,
}

/// Provider counts and duplicate tokens. The schema must have passed `synapse_schema::inspect`.
pub async fn inspect(client: &Client) -> Result<SynapseFacts> {
    Ok(SynapseFacts {
        providers: provider_counts(client).await?,
        findings: duplicate_tokens(client).await?,
    })
}

/// Rows of `user_external_ids` per `auth_provider`, ordered by name.
async fn provider_counts(client: &Client) -> Result<Vec<(String, u64)>> {
    let rows = client
        .query(
            "SELECT auth_provider::text, count(*) FROM user_external_ids GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .context("counting user_external_ids per auth_provider")?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, Option<String>>(0).unwrap_or_default(),
                count(r, 1),
            )
        })
        .collect())
}

fn count(row: &tokio_postgres::Row, idx: usize) -> u64 {
    row.get::<_, i64>(idx).max(0) as u64
}

/// Up to 5 users with an external id of `auth_provider` (an index range scan on the
/// `(auth_provider, external_id)` unique index); only the user ids, never the subjects.
pub async fn provider_users(client: &Client, auth_provider: &str) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT DISTINCT user_id FROM (SELECT user_id FROM user_external_ids \
         WHERE auth_provider = $1 LIMIT 500) s ORDER BY 1 LIMIT {MAX_EXAMPLES}"
    );
    let rows = client
        .query(&sql, &[&auth_provider])
        .await
        .context("listing users of an auth provider")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

// ---------------------------------------------------------------------------------------------
// other sessions

/// `W-synapse-sessions`: other sessions connected to Synapse's database (see
/// `source::activity` for what counts). A warning, since Synapse may run during `check`; it
/// tells the operator what `migrate` will refuse. `own` are `check`'s other sessions.
pub async fn other_sessions(client: &Client, own: &[i32]) -> Result<Option<Finding>> {
    let found = Found::split(activity::others(client, own).await?);
    if found.counted.is_empty() {
        return Ok(None);
    }
    let mut fix = "Nothing to do while Synapse is meant to run. Before `syn2mas migrate`, stop \
         Synapse and all its workers: migrate refuses while such sessions are connected \
         (--allow-other-sessions overrides that for sessions known not to write)."
        .to_owned();
    if !found.tools.is_empty() {
        let tools: Vec<String> = found.tools.iter().map(ToString::to_string).collect();
        fix.push_str(&format!(
            " Operator tools, not counted: {}.",
            tools.join("; ")
        ));
    }
    Ok(Some(
        Finding::new(
            ids::SYNAPSE_SESSIONS,
            "other sessions are connected to Synapse's database (is Synapse, or a worker, running?)",
            found.counted.len() as u64,
            fix,
        )
        .with_examples(found.counted.iter().map(ToString::to_string)),
    ))
}

// ---------------------------------------------------------------------------------------------
// duplicate tokens

/// (table, column, what the duplicate means).
const DUPLICATE_CHECKS: &[(&str, &str, &str)] = &[
    (
        "access_tokens",
        "token",
        "access token strings used by more than one row",
    ),
    (
        "refresh_tokens",
        "token",
        "refresh token strings used by more than one row",
    ),
    (
        "access_tokens",
        "refresh_token_id",
        "refresh tokens referenced by more than one access token",
    ),
];

/// MAS requires unique access and refresh tokens and one access token per refresh token;
/// otherwise the final unique-index build fails after all the data was copied.
async fn duplicate_tokens(client: &Client) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    for (table, column, meaning) in DUPLICATE_CHECKS {
        if has_unique_index(client, table, column).await? {
            continue;
        }
        let sql = format!(
            "SELECT count(*), (array_agg(uid ORDER BY uid))[1:{MAX_EXAMPLES}] FROM \
             (SELECT min(user_id) AS uid FROM {table} WHERE {column} IS NOT NULL \
              GROUP BY {column} HAVING count(*) > 1) d"
        );
        let row = client
            .query_one(&sql, &[])
            .await
            .with_context(|| format!("looking for duplicate {table}.{column}"))?;
        let n = count(&row, 0);
        if n > 0 {
            let ex: Option<Vec<String>> = row.get(1);
            out.push(duplicates(n, table, column, meaning).with_examples(ex.unwrap_or_default()));
        }
    }
    Ok(out)
}

/// A valid, non-partial, single-column unique index makes duplicates impossible.
async fn has_unique_index(client: &Client, table: &str, column: &str) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
               WHERE i.indrelid = $1::text::regclass AND i.indisunique AND i.indisvalid \
                 AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL \
                 AND a.attname = $2)",
            &[&table, &column],
        )
        .await
        .with_context(|| format!("looking for a unique index on {table}.{column}"))?;
    Ok(row.get(0))
}

fn duplicates(n: u64, table: &str, column: &str, meaning: &str) -> Finding {
    Finding::new(
        ids::DUPLICATE_TOKENS,
        format!(
            "{meaning} (`{table}.{column}`); MAS's unique constraints would reject them at the end of the migration"
        ),
        n,
        format!(
            "in Synapse, delete all but one row per duplicated `{table}.{column}` (the examples name \
             the owning users; the affected sessions log in again)"
        ),
    )
    .in_table(format!("{table}.{column}"))
}
