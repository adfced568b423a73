//! Is this Synapse's database, and is it new enough for what `migrate` reads?
//!
//! Checked first because every data check (and the plan) would otherwise fail with a raw SQL
//! error ("column locked does not exist") instead of telling the operator what to do.

use super::ids;
use super::report::Finding;
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use tokio_postgres::Client;

/// Synapse schema delta 80 (Synapse 1.91.0) added `users.locked`, the newest column read.
pub const MIN_SYNAPSE_SCHEMA: i32 = 80;

/// Every table and column `check` and `migrate` read.
pub const REQUIRED: &[(&str, &[&str])] = &[
    (
        "users",
        &[
            "name",
            "password_hash",
            "creation_ts",
            "admin",
            "is_guest",
            "appservice_id",
            "deactivated",
            "locked",
        ],
    ),
    (
        "user_threepids",
        &["user_id", "medium", "address", "added_at"],
    ),
    (
        "user_external_ids",
        &["auth_provider", "external_id", "user_id"],
    ),
    (
        "devices",
        &[
            "user_id",
            "device_id",
            "display_name",
            "last_seen",
            "ip",
            "user_agent",
            "hidden",
        ],
    ),
    (
        "access_tokens",
        &[
            "id",
            "user_id",
            "device_id",
            "token",
            "valid_until_ms",
            "puppets_user_id",
            "last_validated",
            "refresh_token_id",
            "used",
        ],
    ),
    (
        "refresh_tokens",
        &["id", "user_id", "device_id", "token", "next_token_id"],
    ),
];

/// Findings about the schema; empty means every data check can run.
pub async fn inspect(client: &Client) -> Result<Vec<Finding>> {
    let columns = visible_columns(client).await?;
    let (missing_tables, missing_columns) = compare(&columns);
    if !missing_tables.is_empty() {
        // Probably the wrong database altogether: "too old" would send the operator astray.
        return Ok(vec![not_synapse(&missing_tables)]);
    }
    let mut out = Vec::new();
    let encoding = server_encoding(client).await?;
    if encoding != "UTF8" {
        out.push(wrong_encoding(&encoding));
    }
    let version = if columns.contains_key("schema_version") {
        schema_version(client).await?
    } else {
        None
    };
    let too_old = version.is_some_and(|v| v < MIN_SYNAPSE_SCHEMA);
    if !missing_columns.is_empty() || too_old {
        out.push(schema_old(&missing_columns, version));
    }
    Ok(out)
}

/// Columns of the required tables (plus `schema_version`) that unqualified names resolve to.
async fn visible_columns(client: &Client) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut tables: Vec<&str> = REQUIRED.iter().map(|(t, _)| *t).collect();
    tables.push("schema_version");
    let rows = client
        .query(
            "SELECT c.relname::text, a.attname::text \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             WHERE c.relkind IN ('r', 'p') AND c.relname = ANY($1) \
               AND pg_catalog.pg_table_is_visible(c.oid)",
            &[&tables],
        )
        .await
        .context("listing Synapse's tables")?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for row in rows {
        out.entry(row.get(0)).or_default().insert(row.get(1));
    }
    Ok(out)
}

/// (missing tables, missing `table.column`s of present tables).
fn compare(columns: &BTreeMap<String, BTreeSet<String>>) -> (Vec<String>, Vec<String>) {
    let mut tables = Vec::new();
    let mut cols = Vec::new();
    for (table, wanted) in REQUIRED {
        match columns.get(*table) {
            None => tables.push((*table).to_owned()),
            Some(have) => cols.extend(
                wanted
                    .iter()
                    .filter(|c| !have.contains(**c))
                    .map(|c| format!("{table}.{c}")),
            ),
        }
    }
    (tables, cols)
}

async fn schema_version(client: &Client) -> Result<Option<i32>> {
    let row = client
        .query_one("SELECT max(version)::int4 FROM schema_version", &[])
        .await
        .context("reading Synapse's schema_version")?;
    Ok(row.get(0))
}

/// Synapse refuses to start on a database that is not UTF8; `migrate` relies on it too, copying
/// tokens, user agents and addresses into MAS without decoding them (only a `SQL_ASCII`
/// database could hand out bytes that are not UTF-8).
async fn server_encoding(client: &Client) -> Result<String> {
    let row = client
        .query_one("SELECT pg_catalog.current_setting('server_encoding')", &[])
        .await
        .context("reading the Synapse database's encoding")?;
    Ok(row.get(0))
}

fn wrong_encoding(encoding: &str) -> Finding {
    Finding::new(
        ids::SYNAPSE_ENCODING,
        format!("the Synapse database's encoding is {encoding}, not UTF8 (Synapse requires UTF8)"),
        1,
        "point --synapse-config (its `database` section) or --synapse-database-uri at the database \
         Synapse actually runs on; a non-UTF8 copy must be re-created with ENCODING 'UTF8' and \
         restored into",
    )
}

fn not_synapse(missing: &[String]) -> Finding {
    Finding::new(
        ids::SYNAPSE_NOT_SYNAPSE,
        format!(
            "the Synapse database lacks the table(s) {}: is this actually Synapse's database?",
            missing.join(", ")
        ),
        missing.len() as u64,
        "point --synapse-config (its `database` section) or --synapse-database-uri at Synapse's \
         PostgreSQL database; check that the user's search_path reaches Synapse's schema",
    )
    .with_examples(missing.iter().cloned())
}

fn schema_old(missing_columns: &[String], version: Option<i32>) -> Finding {
    let mut what = Vec::new();
    if let Some(v) = version.filter(|v| *v < MIN_SYNAPSE_SCHEMA) {
        what.push(format!("schema_version is {v} (< {MIN_SYNAPSE_SCHEMA})"));
    }
    if !missing_columns.is_empty() {
        what.push(format!("missing column(s) {}", missing_columns.join(", ")));
    }
    Finding::new(
        ids::SYNAPSE_SCHEMA_OLD,
        format!(
            "the Synapse database schema is too old: {}",
            what.join("; ")
        ),
        missing_columns.len().max(1) as u64,
        "upgrade Synapse to 1.91.0 or newer and start it once so it updates its schema, then run check again",
    )
    .with_examples(missing_columns.iter().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> BTreeMap<String, BTreeSet<String>> {
        REQUIRED
            .iter()
            .map(|(t, cols)| {
                (
                    (*t).to_owned(),
                    cols.iter().map(|c| (*c).to_owned()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn complete_schema_has_nothing_missing() {
        let (t, c) = compare(&full());
        assert!(t.is_empty() && c.is_empty());
    }

    #[test]
    fn missing_locked_is_a_missing_column_not_a_missing_table() {
        let mut cols = full();
        cols.get_mut("users").unwrap().remove("locked");
        cols.remove("refresh_tokens");
        let (t, c) = compare(&cols);
        assert_eq!(t, vec!["refresh_tokens"]);
        assert_eq!(c, vec!["users.locked"]);
        let f = schema_old(&c, Some(79));
        assert_eq!(f.id, ids::SYNAPSE_SCHEMA_OLD);
        assert!(f.problem.contains("schema_version is 79"));
        assert!(f.problem.contains("users.locked"));
        assert!(f.fix.contains("1.91.0"));
    }
}
