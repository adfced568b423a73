//! Shadow tables: created empty next to the real ones, loaded and rebuilt, then swapped in by
//! one transaction.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_postgres::{Client, Transaction};

use super::tables::Target;

/// The schema of syn2mas's own in the MAS database that holds the shadow tables until the
/// swap. Keeping them out of MAS's schema means a run killed at any moment leaves MAS's schema
/// (its tables, catalogue, triggers and grants) exactly as it was: whatever a kill leaves
/// behind is this one schema, which the next run (or `DROP SCHEMA syn2mas_shadow CASCADE`)
/// removes.
pub const SCHEMA: &str = "syn2mas_shadow";

/// The comment that marks [`SCHEMA`] as syn2mas's: a schema of that name without it is not
/// ours, and syn2mas refuses to drop it.
const SCHEMA_MARK: &str = "syn2mas: shadow tables of a migration in progress or interrupted; safe to drop when no syn2mas runs";

/// Prefix of the temporary names of indexes and constraints built on the shadow tables (they
/// get their real names in the swap); also the prefix of the shadow tables of earlier syn2mas
/// builds, which kept them in MAS's schema and whose leftovers are still dropped.
pub const PREFIX: &str = "syn2mas_new_";

/// The shadow table of `target`, qualified with [`SCHEMA`].
pub fn shadow_name(target: Target) -> String {
    format!("{SCHEMA}.{}", target.name())
}

/// Second advisory lock key: every MAS session of a run holds it in shared mode for as long as
/// it is connected, and a run takes it exclusively before dropping leftovers. A run whose
/// lock-holding session died still has writer or rebuild sessions working on its shadow
/// tables; while they live, no other run can take them for leftovers and drop them.
pub const SESSIONS_LOCK: i64 = 0x7379_6e32_6d61_7331; // "syn2mas1"

/// Holds [`SESSIONS_LOCK`] in shared mode for the rest of `client`'s session.
pub async fn join_run(client: &Client) -> anyhow::Result<()> {
    client
        .execute("SELECT pg_advisory_lock_shared($1)", &[&SESSIONS_LOCK])
        .await
        .context("taking syn2mas's shared session lock on MAS")?;
    Ok(())
}

/// Drops what an interrupted run left behind: the [`SCHEMA`] with its shadow tables, and the
/// `syn2mas_new_*` tables older versions kept in MAS's schema. Returns what was dropped so the
/// caller can say so. Refuses while sessions of another run are still connected (they hold
/// [`SESSIONS_LOCK`]): their tables are in use, not left over.
///
/// `wait` is how long to wait for such sessions to end: a run cleaning up after itself has
/// just terminated its own, which takes the server a moment.
pub async fn drop_leftovers(client: &Client, wait: Duration) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + wait;
    let free = loop {
        let free: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&SESSIONS_LOCK])
            .await
            .context("taking syn2mas's session lock on MAS")?
            .get(0);
        if free || Instant::now() >= deadline {
            break free;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if !free {
        let pids: Vec<String> = client
            .query(
                "SELECT pid::text FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND classid = ($1::int8 >> 32)::oid AND objid = ($1::int8 & 4294967295)::oid
                   AND pid <> pg_backend_pid() ORDER BY pid",
                &[&SESSIONS_LOCK],
            )
            .await
            .context("listing sessions of another syn2mas run")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        bail!(
            "sessions of another syn2mas run are still connected to MAS (backend pids {}) and work on its shadow tables; \
             wait for that run to end, or stop those sessions (`SELECT pg_terminate_backend(pid)`), then run again",
            pids.join(", ")
        );
    }
    let mut dropped = legacy_leftovers(client).await?;
    if let Some(tables) = own_schema(client).await? {
        client
            .batch_execute(&format!("DROP SCHEMA {SCHEMA} CASCADE"))
            .await
            .context("dropping leftovers of an interrupted run")?;
        dropped.push(format!("schema {SCHEMA} ({tables} tables)"));
    }
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&SESSIONS_LOCK])
        .await
        .context("releasing syn2mas's session lock on MAS")?;
    Ok(dropped)
}

/// [`SCHEMA`] as syn2mas marks it.
pub const OWN: crate::db::OwnSchema = crate::db::OwnSchema {
    name: SCHEMA,
    mark: SCHEMA_MARK,
    holds: "shadow tables",
};

/// The number of tables in [`SCHEMA`] when it exists (and is ours: see [`OWN`]).
async fn own_schema(client: &Client) -> anyhow::Result<Option<i64>> {
    if !OWN.exists(client).await? {
        return Ok(None);
    }
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relnamespace = $1::text::regnamespace AND relkind = 'r'",
            &[&SCHEMA],
        )
        .await
        .context("looking for leftovers of an interrupted run")?
        .get(0);
    Ok(Some(tables))
}

/// Drops the `syn2mas_new_*` shadow tables of syn2mas versions that kept them in MAS's schema.
async fn legacy_leftovers(client: &Client) -> anyhow::Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT quote_ident(relname) FROM pg_class
              WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r'
                AND starts_with(relname, $1)
              ORDER BY relname",
            &[&PREFIX],
        )
        .await
        .context("looking for leftovers of an interrupted run")?;
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    if !names.is_empty() {
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {} CASCADE",
                names.join(", ")
            ))
            .await
            .context("dropping leftovers of an interrupted run")?;
    }
    Ok(names)
}

/// Creates [`SCHEMA`], marked as syn2mas's, for this run's shadow tables.
pub async fn create_schema(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "BEGIN; CREATE SCHEMA {SCHEMA}; COMMENT ON SCHEMA {SCHEMA} IS '{SCHEMA_MARK}'; COMMIT"
        ))
        .await
        .map_err(crate::db::without_detail)
        .context(
            "creating syn2mas's schema for the shadow tables in MAS: the migrating role needs the CREATE privilege on the MAS database",
        )
}

/// Refuses to start when something depends on the target tables that the swap could not carry
/// over (views, triggers, rules, policies, publications), or when a table is missing or not
/// empty. Cheap, and run before any work so a doomed migration fails in the first second.
pub async fn preflight(client: &Client) -> anyhow::Result<()> {
    let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
    let found: Vec<String> = client
        .query(
            "SELECT relname FROM pg_class
              WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r'
                AND relname = ANY($1)",
            &[&names],
        )
        .await
        .context("looking up the MAS tables")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !found.iter().any(|f| f == n))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the MAS database has no table {} in schema `current_schema()`: is this a MAS database, and is its schema up to date (`mas-cli database migrate`)?",
            missing.join(", ")
        );
    }
    let deps = client
        .query(include_str!("../../sql/swap_blockers.sql"), &[&names])
        .await
        .context("looking for objects that depend on the MAS tables")?;
    if !deps.is_empty() {
        let list: Vec<String> = deps.iter().map(|r| r.get(0)).collect();
        bail!(
            "these objects depend on the MAS tables and would not survive the final swap: {}. Remove them before migrating and recreate them after.",
            list.join("; ")
        );
    }
    for t in Target::ALL {
        let n: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM (SELECT 1 FROM {} LIMIT 1) s",
                    t.name()
                ),
                &[],
            )
            .await
            .with_context(|| format!("reading MAS `{}`", t.name()))?
            .get(0);
        if n > 0 {
            bail!(
                "the MAS database is not empty: table `{}` has rows. syn2mas only migrates into an empty MAS database.",
                t.name()
            );
        }
    }
    Ok(())
}

/// The first `server_version_num` with per-column compression (`LIKE … INCLUDING COMPRESSION`,
/// `ALTER TABLE … SET COMPRESSION`): PostgreSQL 14.
pub const COMPRESSION_SINCE: i32 = 140_000;

/// The statement creating `target`'s empty shadow table: same columns, defaults, storage and
/// (from PostgreSQL 14 on) column compression as the real one, no indexes or constraints (those
/// are built after the load), autovacuum off so it does not compete with the rebuild for the CPU.
///
/// `server_version_num` is MAS's server's. PostgreSQL 13 has no per-column compression, so
/// there is nothing to copy and the clause (a syntax error there) is left out; from 14 on it
/// keeps a `SET COMPRESSION lz4` an operator gave a MAS column.
pub fn create_shadow_sql(target: Target, server_version_num: i32) -> String {
    let compression = if server_version_num >= COMPRESSION_SINCE {
        " INCLUDING COMPRESSION"
    } else {
        ""
    };
    format!(
        "CREATE TABLE {shadow} (LIKE {real} INCLUDING DEFAULTS INCLUDING STORAGE{compression} \
         INCLUDING GENERATED INCLUDING IDENTITY) WITH (autovacuum_enabled = false)",
        shadow = shadow_name(target),
        real = target.name()
    )
}

/// A renaming the swap applies to an object built under a temporary name.
#[derive(Debug, Clone)]
pub enum Rename {
    /// `ALTER TABLE <table> RENAME CONSTRAINT <from> TO <to>` (renames the backing index too).
    Constraint {
        target: Target,
        from: String,
        to: String,
    },
    /// `ALTER INDEX <from> RENAME TO <to>`.
    Index { from: String, to: String },
}

/// A foreign key from a target table to a MAS table syn2mas does not replace
/// (`upstream_oauth_providers`, `user_sessions`). Adding it installs triggers on the referenced
/// table, which is live MAS, so it is added only inside the swap: before, a kill would leave
/// those triggers behind (and block deleting a provider while the leftovers exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingKey {
    pub target: Target,
    /// Quoted constraint name.
    pub name: String,
    /// `pg_get_constraintdef` text (the referenced table as MAS's search path shows it).
    pub definition: String,
}

/// Adds (and so validates) the foreign keys to tables outside the eight; in the swap, after the
/// new tables have their real names.
async fn add_outgoing(tx: &Transaction<'_>, keys: &[OutgoingKey]) -> anyhow::Result<()> {
    for k in keys {
        let sql = format!(
            "ALTER TABLE {} ADD CONSTRAINT {} {}",
            k.target.name(),
            k.name,
            k.definition
        );
        tx.batch_execute(&sql)
            .await
            .map_err(crate::db::without_detail)
            .with_context(|| format!("swap: {sql}"))?;
    }
    Ok(())
}

/// What the real tables carried that a fresh table does not.
struct Carried {
    incoming: Vec<(String, String, String)>,
    owners: Vec<(String, String)>,
    /// (table, GRANT statement, whether it only spells out the table's NULL ACL).
    grants: Vec<(String, String, bool)>,
    options: Vec<(String, Vec<String>)>,
    comments: Vec<(String, String)>,
}

/// The swap: one transaction that checks the real tables are still empty, replaces them with
/// the shadows, renames every index and constraint to its real name and restores the foreign
/// keys of other tables, owners, grants, options and comments. With `commit = false` (dry-run)
/// it is rolled back after doing everything, which proves it would have worked.
pub async fn swap(
    client: &mut Client,
    renames: &[Rename],
    outgoing: &[OutgoingKey],
    commit: bool,
) -> anyhow::Result<()> {
    let tx = client.transaction().await.context("starting the swap")?;
    swap_in(&tx, SCHEMA, renames, outgoing).await?;
    if commit {
        tx.commit().await.context("committing the swap")?;
    } else {
        tx.rollback()
            .await
            .context("rolling back the dry-run swap")?;
    }
    Ok(())
}

/// The swap's work in `tx`, from the tables in schema `from` (this run's shadow schema, or the
/// stage), which it drops once they are moved out.
pub async fn swap_in(
    tx: &Transaction<'_>,
    from: &str,
    renames: &[Rename],
    outgoing: &[OutgoingKey],
) -> anyhow::Result<()> {
    tx.batch_execute("SET LOCAL lock_timeout = '60s'").await?;
    let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
    tx.batch_execute(&format!(
        "LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
        names.join(", ")
    ))
    .await
    .context("locking the MAS tables for the swap (is MAS running and holding them?)")?;
    crate::test_hooks::pause("swap-locked").await;
    ensure_still_empty(tx).await?;
    let carried = carried(tx, &names).await?;
    for (table, name, _) in &carried.incoming {
        tx.batch_execute(&format!("ALTER TABLE {table} DROP CONSTRAINT {name}"))
            .await
            .with_context(|| format!("dropping {name} on {table} for the swap"))?;
    }
    tx.batch_execute(&format!("DROP TABLE {}", names.join(", ")))
        .await
        .context("dropping the empty MAS tables for the swap")?;
    let schema: String = tx
        .query_one("SELECT quote_ident(current_schema())", &[])
        .await
        .context("looking up MAS's schema")?
        .get(0);
    for t in Target::ALL {
        tx.batch_execute(&format!(
            "ALTER TABLE {from}.{} SET SCHEMA {schema}; ALTER TABLE {} RESET (autovacuum_enabled)",
            t.name(),
            t.name()
        ))
        .await
        .with_context(|| format!("moving the new `{}` into MAS's schema", t.name()))?;
    }
    tx.batch_execute(&format!("DROP SCHEMA {from} CASCADE"))
        .await
        .context("dropping syn2mas's emptied schema in the swap")?;
    for r in renames {
        let sql = match r {
            Rename::Constraint { target, from, to } => {
                format!(
                    "ALTER TABLE {} RENAME CONSTRAINT {from} TO {to}",
                    target.name()
                )
            }
            Rename::Index { from, to } => format!("ALTER INDEX {from} RENAME TO {to}"),
        };
        tx.batch_execute(&sql)
            .await
            .map_err(crate::db::without_detail)
            .with_context(|| format!("swap: {sql}"))?;
    }
    restore(tx, &carried, &names).await?;
    add_outgoing(tx, outgoing).await?;
    crate::test_hooks::pause("swap-moved").await;
    Ok(())
}

async fn ensure_still_empty(tx: &Transaction<'_>) -> anyhow::Result<()> {
    for t in Target::ALL {
        let has: bool = tx
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {})", t.name()), &[])
            .await?
            .get(0);
        if has {
            bail!(
                "MAS table `{}` received rows while syn2mas was running (is MAS running?); nothing was changed",
                t.name()
            );
        }
    }
    Ok(())
}

async fn carried(tx: &Transaction<'_>, names: &[&str]) -> anyhow::Result<Carried> {
    let q = |sql: &'static str| async move {
        tx.query(sql, &[&names])
            .await
            .with_context(|| format!("reading the MAS catalogue: {sql}"))
    };
    let incoming = q("SELECT k.conrelid::regclass::text, quote_ident(k.conname), pg_get_constraintdef(k.oid)
                        FROM pg_constraint k JOIN pg_class r ON r.oid = k.confrelid JOIN pg_class c ON c.oid = k.conrelid
                       WHERE k.contype = 'f' AND r.relnamespace = current_schema()::regnamespace
                         AND r.relname = ANY($1)
                         AND NOT (c.relnamespace = current_schema()::regnamespace AND c.relname = ANY($1))
                       ORDER BY 1, 2")
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect();
    let owners = q("SELECT quote_ident(c.relname), quote_ident(pg_get_userbyid(c.relowner)) FROM pg_class c
                     WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY($1) AND c.relkind = 'r'")
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let grants = q(include_str!("../../sql/swap_grants.sql"))
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let options = q("SELECT quote_ident(c.relname), c.reloptions FROM pg_class c
                      WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY($1)
                        AND c.relkind = 'r' AND c.reloptions IS NOT NULL")
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    let comments = q("SELECT quote_ident(c.relname), quote_literal(d.description) FROM pg_class c
                       JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
                      WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY($1) AND c.relkind = 'r'")
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    Ok(Carried {
        incoming,
        owners,
        grants,
        options,
        comments,
    })
}

/// The (renamed) shadow tables that hold privileges of their own: a new table gets its
/// creator's default privileges (`ALTER DEFAULT PRIVILEGES`), which the real table may not have
/// had. Per table, every holder of a privilege, as REVOKE statements.
const SHADOW_PRIVILEGES: &str = "
    SELECT c.relname::text,
           format('REVOKE ALL ON TABLE %I FROM %s', c.relname,
                  CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                       ELSE quote_ident(pg_get_userbyid(a.grantee)) END)
      FROM pg_class c, aclexplode(c.relacl) a
     WHERE c.relnamespace = current_schema()::regnamespace
       AND c.relname = ANY($1)
       AND c.relkind = 'r'
     GROUP BY 1, 2
     ORDER BY 1, 2";

async fn restore(tx: &Transaction<'_>, c: &Carried, names: &[&str]) -> anyhow::Result<()> {
    let mut sql = Vec::new();
    for (table, owner) in &c.owners {
        sql.push(format!("ALTER TABLE {table} OWNER TO {owner}"));
    }
    for s in sql.drain(..) {
        tx.batch_execute(&s)
            .await
            .map_err(crate::db::without_detail)
            .with_context(|| format!("swap: {s}"))?;
    }
    // A shadow without an ACL of its own (the usual case) has its owner's default privileges,
    // like a real table without one: replaying the real table's explicit grants gives the same
    // ACL. A shadow that got default privileges loses all of them first and then gets the
    // real table's complete privileges, spelt-out owner defaults included: the same privileges
    // (the ACL then lists the owner's explicitly where the real table had NULL).
    let own: Vec<(String, String)> = tx
        .query(SHADOW_PRIVILEGES, &[&names])
        .await
        .context("reading the privileges of the new MAS tables")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let with_own_acl: HashSet<&str> = own.iter().map(|(t, _)| t.as_str()).collect();
    sql.extend(own.iter().map(|(_, revoke)| revoke.clone()));
    for (table, grant, spells_out_null) in &c.grants {
        if !spells_out_null || with_own_acl.contains(table.as_str()) {
            sql.push(grant.clone());
        }
    }
    for (table, options) in &c.options {
        // reloptions entries are `name=value` pairs PostgreSQL itself validated.
        sql.push(format!("ALTER TABLE {table} SET ({})", options.join(", ")));
    }
    for (table, comment) in &c.comments {
        sql.push(format!("COMMENT ON TABLE {table} IS {comment}"));
    }
    for (table, name, def) in &c.incoming {
        sql.push(format!("ALTER TABLE {table} ADD CONSTRAINT {name} {def}"));
    }
    for s in sql {
        tx.batch_execute(&s)
            .await
            .map_err(crate::db::without_detail)
            .with_context(|| format!("swap: {s}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_copied_only_where_the_server_has_it() {
        for target in Target::ALL {
            let pg13 = create_shadow_sql(target, 130_023);
            let pg14 = create_shadow_sql(target, 140_000);
            let pg18 = create_shadow_sql(target, 180_004);
            assert!(!pg13.contains("COMPRESSION"), "{pg13}");
            assert!(pg14.contains("INCLUDING COMPRESSION"), "{pg14}");
            assert!(pg18.contains("INCLUDING COMPRESSION"), "{pg18}");
            for sql in [&pg13, &pg14, &pg18] {
                assert!(
                    sql.contains("INCLUDING DEFAULTS INCLUDING STORAGE"),
                    "{sql}"
                );
                assert!(
                    sql.contains("INCLUDING GENERATED INCLUDING IDENTITY"),
                    "{sql}"
                );
            }
        }
    }
}
