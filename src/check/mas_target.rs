//! Checks on MAS's database: is it MAS, at the schema version this tool writes, empty, and free
//! of an unfinished migration (ours or upstream's)?
//!
//! Unlike `mas-cli syn2mas check`, this never migrates MAS's schema nor takes an advisory lock:
//! an out-of-date schema is reported (`E-mas-schema-old`) for the operator to upgrade.

use super::ids;
use super::report::{DatabaseInfo, Finding, MAX_EXAMPLES};
use anyhow::{Context, Result};
use std::collections::{BTreeSet, HashSet};
use tokio_postgres::Client;

/// Newest MAS migration this tool knows (MAS 1.22.0, `20260720134722_idx_oauth2_…`).
pub const KNOWN_MAS_SCHEMA: i64 = 20260720134722;

/// The tables `migrate` fills, which must be empty.
pub const TARGET_TABLES: &[&str] = &crate::sink::tables::NAMES;

/// Prefix of the shadow tables earlier builds of this tool kept in MAS's schema
/// (`syn2mas_new_<table>`).
pub const SHADOW_PREFIX: &str = crate::sink::shadow::PREFIX;

/// Row counts above this are reported as "more than": exact counts of a big, wrong database are
/// not worth the time.
const COUNT_CAP: i64 = 1_000_000;

/// What the MAS side contributes to the report.
#[derive(Debug, Default)]
pub struct MasFacts {
    pub findings: Vec<Finding>,
    /// `upstream_oauth_providers` ids (UUID text); `None` when the table is absent.
    pub provider_ids: Option<HashSet<String>>,
}

pub async fn inspect(client: &Client, db: &DatabaseInfo) -> Result<MasFacts> {
    let tables = visible_tables(client).await?;
    let shadow = shadow_schema(client).await?;
    let mut facts = MasFacts {
        findings: leftovers(&tables, shadow.as_deref()),
        provider_ids: None,
    };
    let upstream_renamed = tables.iter().any(|t| t.starts_with("syn2mas__"));
    let missing: Vec<&str> = TARGET_TABLES
        .iter()
        .copied()
        .filter(|t| !tables.contains(*t))
        .collect();
    let has_migrations = tables.contains("_sqlx_migrations");
    if !has_migrations || (!missing.is_empty() && !upstream_renamed) {
        facts.findings.push(not_mas(has_migrations, &missing, db));
        return Ok(facts);
    }
    facts.findings.extend(schema_version(client).await?);
    facts.findings.extend(pg_trgm(client).await?);
    let present: Vec<&str> = TARGET_TABLES
        .iter()
        .copied()
        .filter(|t| tables.contains(*t))
        .collect();
    facts
        .findings
        .extend(not_empty(client, &present, db).await?);
    if tables.contains("upstream_oauth_providers") {
        facts.provider_ids = Some(provider_ids(client).await?);
    }
    Ok(facts)
}

/// Tables unqualified names resolve to: MAS's own and any `syn2mas*` leftovers.
async fn visible_tables(client: &Client) -> Result<BTreeSet<String>> {
    let mut wanted: Vec<&str> = TARGET_TABLES.to_vec();
    wanted.extend(["_sqlx_migrations", "upstream_oauth_providers"]);
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_catalog.pg_class c \
             WHERE c.relkind IN ('r', 'p') AND pg_catalog.pg_table_is_visible(c.oid) \
               AND (c.relname = ANY($1) OR left(c.relname, 7) = 'syn2mas')",
            &[&wanted],
        )
        .await
        .context("listing MAS's tables")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The tables in syn2mas's shadow schema (`None` when there is no such schema).
async fn shadow_schema(client: &Client) -> Result<Option<Vec<String>>> {
    let schema = crate::sink::shadow::SCHEMA;
    let row = client
        .query_opt(
            "SELECT array(SELECT format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c
                           WHERE c.relnamespace = n.oid AND c.relkind = 'r' ORDER BY c.relname)
               FROM pg_catalog.pg_namespace n WHERE n.nspname = $1",
            &[&schema],
        )
        .await
        .context("looking for syn2mas's shadow schema")?;
    Ok(row.map(|r| r.get(0)))
}

/// Leftovers of an interrupted run: ours (the shadow schema, or shadow tables of an earlier
/// build in MAS's schema) are harmless (migrate drops them), upstream's mean MAS is
/// mid-migration with renamed tables and dropped constraints.
fn leftovers(tables: &BTreeSet<String>, shadow_schema: Option<&[String]>) -> Vec<Finding> {
    let legacy: Vec<String> = tables
        .iter()
        .filter(|t| t.starts_with(SHADOW_PREFIX))
        .cloned()
        .collect();
    let upstream: Vec<String> = tables
        .iter()
        .filter(|t| {
            t.starts_with("syn2mas__")
                || *t == "syn2mas_restore_constraints"
                || *t == "syn2mas_restore_indices"
        })
        .cloned()
        .collect();
    let mut out = Vec::new();
    if shadow_schema.is_some() || !legacy.is_empty() {
        out.push(interrupted_run(shadow_schema, &legacy));
    }
    if !upstream.is_empty() {
        out.push(upstream_in_progress(&upstream));
    }
    out
}

fn interrupted_run(shadow_schema: Option<&[String]>, legacy: &[String]) -> Finding {
    let schema = crate::sink::shadow::SCHEMA;
    let mut drops = Vec::new();
    let mut examples: Vec<String> = Vec::new();
    if let Some(tables) = shadow_schema {
        drops.push(format!("DROP SCHEMA {schema} CASCADE;"));
        examples.push(format!("schema {schema}"));
        examples.extend(tables.iter().cloned());
    }
    if !legacy.is_empty() {
        drops.push(format!("DROP TABLE {};", legacy.join(", ")));
        examples.extend(legacy.iter().cloned());
    }
    let count = shadow_schema.map_or(0, <[String]>::len) + legacy.len();
    Finding::new(
        ids::INTERRUPTED_RUN,
        "shadow tables left by an interrupted `syn2mas migrate` (this tool); MAS's own tables were \
         never touched, and the next `syn2mas migrate` drops these automatically before it starts",
        count as u64,
        format!(
            "nothing is required; to tidy up now: `{}` on the MAS database",
            drops.join(" ")
        ),
    )
    .with_examples(examples)
}

fn upstream_in_progress(tables: &[String]) -> Finding {
    Finding::new(
        ids::UPSTREAM_IN_PROGRESS,
        "an unfinished `mas-cli syn2mas migrate` (the upstream tool) left MAS mid-migration: its \
         tables are renamed to `syn2mas__*` and their constraints and indexes dropped \
         (saved in `syn2mas_restore_*`); MAS cannot run like this and this tool will not write into it",
        tables.len() as u64,
        "either finish it with the upstream tool (re-run `mas-cli syn2mas migrate` until it completes) \
         or abandon it: drop and recreate the MAS database, run `mas-cli database migrate`, then run \
         `syn2mas check` again",
    )
    .with_examples(tables.iter().cloned())
}

fn not_mas(has_migrations: bool, missing: &[&str], db: &DatabaseInfo) -> Finding {
    let mut lacks: Vec<String> = Vec::new();
    if !has_migrations {
        lacks.push("_sqlx_migrations".into());
    }
    lacks.extend(missing.iter().map(|t| (*t).to_owned()));
    Finding::new(
        ids::MAS_NOT_MAS,
        format!(
            "the MAS database ({}) has no {}: is this actually a MAS database?",
            where_(db),
            lacks.join(", ")
        ),
        lacks.len() as u64,
        "point MAS's `database` config (or --mas-database-uri) at MAS's database; if this is MAS's \
         new, empty database, create MAS's schema first with `mas-cli database migrate`",
    )
    .with_examples(lacks)
}

fn where_(db: &DatabaseInfo) -> String {
    format!("host={} port={} dbname={}", db.host, db.port, db.dbname)
}

async fn schema_version(client: &Client) -> Result<Vec<Finding>> {
    let row = client
        .query_one(
            "SELECT max(version) FILTER (WHERE success), \
                    count(*) FILTER (WHERE NOT success), \
                    (array_agg(version::text || ' ' || description ORDER BY version) \
                       FILTER (WHERE NOT success))[1:$1] \
             FROM _sqlx_migrations",
            &[&(MAX_EXAMPLES as i32)],
        )
        .await
        .context("reading MAS's _sqlx_migrations")?;
    let newest: Option<i64> = row.get(0);
    let failed = row.get::<_, i64>(1).max(0) as u64;
    let failed_examples: Option<Vec<String>> = row.get(2);
    let mut out = Vec::new();
    if failed > 0 {
        out.push(schema_failed(failed, failed_examples.unwrap_or_default()));
    }
    out.extend(version_finding(newest));
    Ok(out)
}

fn schema_failed(n: u64, examples: Vec<String>) -> Finding {
    Finding::new(
        ids::MAS_SCHEMA_FAILED,
        "MAS schema migrations are recorded as failed (`_sqlx_migrations.success = false`); the \
         schema is in an unknown state",
        n,
        "find out why the migration failed (MAS's logs), repair the database, delete the failed \
         row(s) from `_sqlx_migrations` and run `mas-cli database migrate` again",
    )
    .with_examples(examples)
}

/// Old schema → error (MAS's tables may lack columns we write); newer → warning (they may have
/// changed in ways this tool does not know).
fn version_finding(newest: Option<i64>) -> Option<Finding> {
    match newest {
        Some(v) if v == KNOWN_MAS_SCHEMA => None,
        Some(v) if v > KNOWN_MAS_SCHEMA => Some(Finding::new(
            ids::MAS_SCHEMA_NEWER,
            format!(
                "MAS's schema is at version {v}, newer than {KNOWN_MAS_SCHEMA} (MAS 1.22.0), the \
                 newest this syn2mas knows; tables it writes may have changed"
            ),
            1,
            "use a syn2mas release that supports your MAS version, or run `syn2mas migrate --dry-run` \
             first to see whether the migration still works",
        )),
        other => Some(Finding::new(
            ids::MAS_SCHEMA_OLD,
            format!(
                "MAS's schema is at version {}, older than {KNOWN_MAS_SCHEMA} (MAS 1.22.0), which this \
                 syn2mas writes",
                other.map_or("none (no successful migration)".to_owned(), |v| v
                    .to_string())
            ),
            1,
            "run `mas-cli database migrate` with MAS 1.22.0 or newer against the MAS database",
        )),
    }
}

async fn pg_trgm(client: &Client) -> Result<Option<Finding>> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_trgm')",
            &[],
        )
        .await
        .context("looking for the pg_trgm extension on MAS")?;
    if row.get(0) {
        return Ok(None);
    }
    Ok(Some(Finding::new(
        ids::PG_TRGM_MISSING,
        "the `pg_trgm` extension is not installed in the MAS database; MAS's trigram indexes on \
         `users.username` and `upstream_oauth_links.human_account_name` need it",
        1,
        "run `mas-cli database migrate` (it creates the extension), or as a superuser: \
         `CREATE EXTENSION pg_trgm;` in the MAS database",
    )))
}

/// One statement counting (up to a cap) the rows of every present target table.
async fn not_empty(client: &Client, tables: &[&str], db: &DatabaseInfo) -> Result<Vec<Finding>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let counts: Vec<String> = tables
        .iter()
        .map(|t| {
            format!(
                "(SELECT count(*) FROM (SELECT 1 FROM {t} LIMIT {}) s)",
                COUNT_CAP + 1
            )
        })
        .collect();
    let row = client
        .query_one(&format!("SELECT {}", counts.join(", ")), &[])
        .await
        .context("counting rows of MAS's target tables")?;
    let mut out = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        let n: i64 = row.get(i);
        if n > 0 {
            out.push(mas_not_empty(table, n, db));
        }
    }
    Ok(out)
}

fn mas_not_empty(table: &str, n: i64, db: &DatabaseInfo) -> Finding {
    let rows = if n > COUNT_CAP {
        format!("more than {COUNT_CAP} rows")
    } else {
        format!("{n} row(s)")
    };
    Finding::new(
        ids::MAS_NOT_EMPTY,
        format!(
            "MAS table `{table}` has {rows} in {} user {}; syn2mas only migrates into an empty MAS",
            where_(db),
            db.user
        ),
        n.min(COUNT_CAP + 1) as u64,
        "check that this is the database you meant (the connection above); if so, drop and recreate \
         it, run `mas-cli database migrate` and `mas-cli config sync`, then run check again",
    )
    .in_table(table)
}

async fn provider_ids(client: &Client) -> Result<HashSet<String>> {
    let rows = client
        .query(
            "SELECT upstream_oauth_provider_id::text FROM upstream_oauth_providers",
            &[],
        )
        .await
        .context("reading MAS's upstream_oauth_providers")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> DatabaseInfo {
        DatabaseInfo {
            side: "mas".into(),
            host: "pg.internal".into(),
            port: 5432,
            dbname: "mas_prod".into(),
            user: "mas".into(),
        }
    }

    #[test]
    fn version_boundaries() {
        assert!(version_finding(Some(KNOWN_MAS_SCHEMA)).is_none());
        assert_eq!(
            version_finding(Some(KNOWN_MAS_SCHEMA - 1)).unwrap().id,
            ids::MAS_SCHEMA_OLD
        );
        assert_eq!(version_finding(None).unwrap().id, ids::MAS_SCHEMA_OLD);
        assert_eq!(
            version_finding(Some(KNOWN_MAS_SCHEMA + 1)).unwrap().id,
            ids::MAS_SCHEMA_NEWER
        );
        assert!(
            version_finding(None)
                .unwrap()
                .fix
                .contains("mas-cli database migrate")
        );
    }

    #[test]
    fn leftovers_are_told_apart() {
        let tables: BTreeSet<String> = [
            "users",
            "syn2mas_new_users",
            "syn2mas__compat_sessions",
            "syn2mas_restore_indices",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let f = leftovers(&tables, None);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].id, ids::INTERRUPTED_RUN);
        assert_eq!(f[0].examples, vec!["syn2mas_new_users"]);
        assert_eq!(f[1].id, ids::UPSTREAM_IN_PROGRESS);
        assert_eq!(f[1].count, 2);
        let schema = vec!["syn2mas_shadow.users".to_owned()];
        let f = leftovers(&BTreeSet::new(), Some(&schema));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].id, ids::INTERRUPTED_RUN);
        assert_eq!(
            f[0].examples,
            vec!["schema syn2mas_shadow", "syn2mas_shadow.users"]
        );
        assert!(f[0].fix.contains("DROP SCHEMA syn2mas_shadow CASCADE;"));
    }

    #[test]
    fn not_empty_names_table_rows_and_database() {
        let f = mas_not_empty("users", 3, &db());
        assert!(f.problem.contains("`users` has 3 row(s)"), "{}", f.problem);
        assert!(
            f.problem
                .contains("host=pg.internal port=5432 dbname=mas_prod")
        );
        assert_eq!(f.count, 3);
        let big = mas_not_empty("users", COUNT_CAP + 1, &db());
        assert!(big.problem.contains("more than 1000000 rows"));
    }
}
