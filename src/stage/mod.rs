//! The stage: a complete, indexed copy of what `migrate` would write, built by `syn2mas
//! prestage` while Synapse runs, kept in a schema of syn2mas's own in the MAS database
//! (`syn2mas_stage`), and swapped in by a later `migrate` after it has re-derived only the users
//! whose rows changed since the stage's snapshot (`delta`).
//!
//! A stage appears atomically: `prestage` builds it as an ordinary run's shadow schema and, in
//! one transaction at the end, gives the indexes their real names, records what it was built
//! from ([`StageMeta`]) and renames the schema. A killed prestage therefore leaves the previous
//! stage (or none) and a shadow schema the next run drops; never a half-built stage.
//!
//! Besides the eight MAS tables the stage keeps, per Synapse user, how many rows each of the
//! six Synapse tables had for them in the snapshot (`user_counts`). With the snapshot's xmin
//! that finds every user whose rows changed: a row inserted or updated since has a newer xmin,
//! and a user who only lost rows has a smaller count (see `delta`).

pub mod delta;

use std::collections::BTreeMap;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Transaction};

use crate::config::MasConfig;
use crate::sink::shadow::{self, Rename};
use crate::sink::tables::Target;

/// The stage's schema in the MAS database.
pub const SCHEMA: &str = "syn2mas_stage";

/// The comment that marks [`SCHEMA`] as a stage syn2mas built: a schema of that name without
/// it is not ours, and syn2mas refuses to touch it.
const MARK: &str =
    "syn2mas: staged migration built by `syn2mas prestage`; `syn2mas stage drop` removes it";

/// The per-user row counts of the six Synapse tables (see the module doc).
pub const USER_COUNTS: &str = "user_counts";

/// A stage older than this many transactions is refused: its xmin could no longer be compared
/// with rows' xmins safely (32-bit transaction ids wrap around after 2^31).
pub const MAX_AGE_XIDS: i64 = 1_000_000_000;

/// What a stage was built from. A staged migration refuses a stage whose facts differ from
/// the databases and configuration it runs with: the stage would not be what a full run makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageMeta {
    /// Synapse's side: the snapshot and the database it was taken of.
    #[serde(flatten)]
    pub source: SourceFacts,
    pub mas_schema_version: Option<i64>,
    /// A digest of the MAS configuration the mapping depends on (server name, providers and
    /// their `synapse_idp_id`, `--ignore-missing-auth-providers`).
    pub mapping: String,
    /// The id key, hex: the staged migration derives the same ids as the prestage.
    pub id_key: String,
    /// The prestage's "now" (Unix ms), for rows whose source has no time.
    pub now_ms: i64,
}

/// The Synapse side of [`StageMeta`], read in the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFacts {
    /// When the snapshot was taken (the Synapse server's clock, RFC 3339).
    pub taken_at: String,
    /// The snapshot's xmin (64-bit, `xid8`): how old the stage is, in transactions.
    pub snapshot_xmin: i64,
    /// The snapshot itself (`pg_current_snapshot()` as text, `xmin:xmax:xip,…`): a row version
    /// is newer than the stage when its xmin was not yet visible to it.
    pub snapshot: String,
    /// Synapse's server (`pg_control_system()`; `None` where the role may not read it).
    pub system_identifier: Option<String>,
    pub database_oid: i64,
    pub database_name: String,
    pub synapse_schema_version: Option<i32>,
}

/// Reads the snapshot's facts on `snapshot` (a session in the snapshot's transaction).
/// Synapse's server identifier is read only where the role may call `pg_control_system()`
/// (an error would abort the snapshot's transaction).
pub async fn source_facts(snapshot: &Client) -> anyhow::Result<SourceFacts> {
    let row = snapshot
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    pg_snapshot_xmin(pg_current_snapshot())::text::int8,
                    (SELECT oid FROM pg_database WHERE datname = current_database())::int8,
                    current_database()::text,
                    (SELECT max(version)::int4 FROM schema_version),
                    pg_current_snapshot()::text,
                    CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')
                         THEN (SELECT system_identifier::text FROM pg_control_system()) END",
            &[],
        )
        .await
        .context("reading the Synapse snapshot's xmin")?;
    Ok(SourceFacts {
        taken_at: row.get(0),
        snapshot_xmin: row.get(1),
        snapshot: row.get(5),
        database_oid: row.get(2),
        database_name: row.get(3),
        synapse_schema_version: row.get(4),
        system_identifier: row.get(6),
    })
}

/// The MAS schema version (`_sqlx_migrations`).
pub async fn mas_schema_version(client: &Client) -> anyhow::Result<Option<i64>> {
    Ok(client
        .query_one("SELECT max(version) FROM _sqlx_migrations", &[])
        .await
        .context("reading MAS's schema version")?
        .get(0))
}

/// The digest of what the mapping takes from MAS's configuration.
pub fn mapping_digest(mas: &MasConfig, ignore_missing_auth_providers: bool) -> String {
    let mut providers: Vec<(String, String)> = mas
        .providers
        .iter()
        .filter_map(|p| {
            p.synapse_idp_id
                .clone()
                .map(|s| (s, format!("{:032x}", p.id.0)))
        })
        .collect();
    providers.sort();
    let mut h = blake3::Hasher::new();
    h.update(b"syn2mas stage mapping v1\0");
    h.update(mas.homeserver.as_bytes());
    h.update(&[0, u8::from(ignore_missing_auth_providers)]);
    for (idp, id) in providers {
        h.update(&(idp.len() as u64).to_le_bytes());
        h.update(idp.as_bytes());
        h.update(id.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// What a stage's snapshot saw, as 32-bit transaction ids (what a row's `xmin` holds): every
/// transaction before `xmax` except those in `in_progress` had ended when it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub xmax: u32,
    pub in_progress: Vec<u32>,
}

impl Snapshot {
    /// Parses `pg_current_snapshot()`'s text form, `xmin:xmax:xip,xip,…` (64-bit ids).
    pub fn parse(text: &str) -> anyhow::Result<Snapshot> {
        let bad = || anyhow::anyhow!("the stage's snapshot `{text}` is not what PostgreSQL writes");
        let mut parts = text.split(':');
        let (_xmin, xmax, xip) = (
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
            parts.next().ok_or_else(bad)?,
        );
        let low = |s: &str| s.parse::<u64>().map(|x| (x & 0xffff_ffff) as u32);
        Ok(Snapshot {
            xmax: low(xmax).map_err(|_| bad())?,
            in_progress: xip
                .split(',')
                .filter(|s| !s.is_empty())
                .map(low)
                .collect::<Result<_, _>>()
                .map_err(|_| bad())?,
        })
    }

    /// SQL that is true for a row version the snapshot could not see: created by a
    /// transaction that started after it (`age` compares around the 32-bit wraparound) or was
    /// still running when it was taken. Rows of transactions that had ended are either visible
    /// to it (unchanged) or were rolled back (invisible now too).
    fn newer_sql(&self) -> String {
        let mut sql = format!("age(xmin) <= age('{}'::xid)", self.xmax);
        if !self.in_progress.is_empty() {
            let ids: Vec<String> = self.in_progress.iter().map(|x| format!("'{x}'")).collect();
            sql = format!("({sql} OR xmin = ANY(ARRAY[{}]::xid[]))", ids.join(", "));
        }
        sql
    }
}

/// The per-user counts of the six Synapse tables, sorted by user id in byte order (`COLLATE
/// "C"`, which is also how Rust compares strings, so both sides of the delta's merge agree).
/// With `changed_since`, a last column says whether any of the user's rows is newer than that
/// snapshot. User ids that are NULL belong to rows a migration refuses anyway, and are left
/// out.
pub fn per_user_sql(changed_since: Option<&Snapshot>) -> String {
    const TABLES: [(&str, &str); 6] = [
        ("users", "name"),
        ("user_threepids", "user_id"),
        ("user_external_ids", "user_id"),
        ("devices", "user_id"),
        ("access_tokens", "user_id"),
        ("refresh_tokens", "user_id"),
    ];
    let changed = |s: &Snapshot| format!(", {} AS changed", s.newer_sql());
    let parts: Vec<String> = TABLES
        .iter()
        .enumerate()
        .map(|(i, (table, owner))| {
            format!(
                "SELECT {owner} AS user_id, {i} AS t{} FROM {table} WHERE {owner} IS NOT NULL",
                changed_since.map(changed).unwrap_or_default()
            )
        })
        .collect();
    let counts: Vec<String> = (0..TABLES.len())
        .map(|i| format!("count(*) FILTER (WHERE t = {i})::int8"))
        .collect();
    let flag = if changed_since.is_some() {
        ", bool_or(changed)"
    } else {
        ""
    };
    format!(
        "SELECT user_id COLLATE \"C\", {}{flag} FROM ({}) rows GROUP BY 1 ORDER BY 1",
        counts.join(", "),
        parts.join(" UNION ALL ")
    )
}

/// [`per_user_sql`] without the change flag, for the users in `users` only (a SQL array
/// literal): a refresh's new counts of the users it derived again.
pub fn per_user_sql_of(users: &str) -> String {
    per_user_sql(None).replace(" IS NOT NULL", &format!(" = ANY({users})"))
}

/// The table the prestage copies [`per_user_sql`]'s rows into (binary COPY straight through:
/// the column types match).
pub fn create_counts_sql(schema: &str) -> String {
    format!(
        "CREATE TABLE {schema}.{USER_COUNTS} (user_id text NOT NULL, users int8, threepids int8, \
         external_ids int8, devices int8, access_tokens int8, refresh_tokens int8)"
    )
}

/// Copies the snapshot's per-user counts ([`per_user_sql`]) from Synapse straight into a new
/// `user_counts` table in this run's shadow schema: binary COPY out, binary COPY in, the bytes
/// untouched. Returns the rows stored.
pub async fn copy_counts(synapse: &Client, mas: &Client) -> anyhow::Result<u64> {
    use futures::{SinkExt, StreamExt};
    let what = "copying the per-user counts into the stage";
    mas.batch_execute(&format!("BEGIN; {}", create_counts_sql(shadow::SCHEMA)))
        .await
        .context(what)?;
    let source = synapse
        .copy_out(&format!(
            "COPY ({}) TO STDOUT (FORMAT binary)",
            per_user_sql(None)
        ))
        .await
        .map_err(crate::db::without_detail)
        .context(what)?;
    let sink = mas
        .copy_in::<_, bytes::Bytes>(&format!(
            "COPY {}.{USER_COUNTS} FROM STDIN (FORMAT binary, FREEZE)",
            shadow::SCHEMA
        ))
        .await
        .map_err(crate::db::without_detail)
        .context(what)?;
    futures::pin_mut!(source);
    futures::pin_mut!(sink);
    while let Some(chunk) = source.next().await {
        let chunk = chunk.map_err(crate::db::without_detail).context(what)?;
        sink.feed(chunk).await.context(what)?;
    }
    let rows = sink.as_mut().finish().await.context(what)?;
    mas.batch_execute("COMMIT").await.context(what)?;
    Ok(rows)
}

/// A SQL array literal of `items` (`ARRAY[E'a', E'b']::text[]`), for statements that take no
/// parameters (COPY): every item is an escape string literal (backslashes and quotes doubled),
/// which means the same whatever the server's `standard_conforming_strings`.
pub fn sql_text_array<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = items
        .into_iter()
        .map(|s| format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''")))
        .collect();
    format!("ARRAY[{}]::text[]", quoted.join(", "))
}

/// Turns this run's shadow schema into the stage, in one transaction: the indexes and
/// constraints get their real names, the facts are recorded, a previous stage is dropped and
/// the schema renamed. Before the COMMIT there is no new stage; after it, a complete one.
pub async fn finish(
    client: &mut Client,
    renames: &[Rename],
    meta: &StageMeta,
) -> anyhow::Result<()> {
    let tx = client.transaction().await.context("finishing the stage")?;
    let from = shadow::SCHEMA;
    for r in renames {
        let sql = match r {
            Rename::Constraint {
                target,
                from: f,
                to,
            } => format!(
                "ALTER TABLE {from}.{} RENAME CONSTRAINT {f} TO {to}",
                target.name()
            ),
            Rename::Index { from: f, to } => format!("ALTER INDEX {from}.{f} RENAME TO {to}"),
        };
        tx.batch_execute(&sql)
            .await
            .map_err(crate::db::without_detail)
            .with_context(|| format!("finishing the stage: {sql}"))?;
    }
    index_foreign_keys(&tx).await?;
    tx.batch_execute(&format!(
        "CREATE INDEX ON {from}.{USER_COUNTS} (user_id COLLATE \"C\");
         CREATE TABLE {from}.meta (doc jsonb NOT NULL)"
    ))
    .await
    .context("recording the stage's facts")?;
    tx.execute(
        &format!("INSERT INTO {from}.meta (doc) VALUES ($1::text::jsonb)"),
        &[&serde_json::to_string(meta)?],
    )
    .await
    .context("recording the stage's facts")?;
    drop_in(&tx).await?;
    crate::test_hooks::pause("stage-finish").await;
    tx.batch_execute(&format!(
        "ALTER SCHEMA {from} RENAME TO {SCHEMA}; COMMENT ON SCHEMA {SCHEMA} IS '{MARK}'"
    ))
    .await
    .context("renaming the shadow schema to the stage")?;
    tx.commit().await.context("committing the stage")?;
    Ok(())
}

/// Prefix of the indexes a stage adds for its own use (see [`index_foreign_keys`]); the swap
/// drops them, so the tables MAS gets have exactly MAS's indexes.
const HELPER_INDEX: &str = "syn2mas_fk_";

/// Indexes the referencing columns of every foreign key between the stage's tables that MAS
/// leaves unindexed (`user_passwords.upgraded_from_id`): deleting a changed user's rows makes
/// PostgreSQL look for rows that still reference each deleted one, which without an index is a
/// scan of the whole table per deleted row (hours at a million users). Partial (`IS NOT
/// NULL`: the lookup's `=` implies it), so an unused column costs an empty index.
async fn index_foreign_keys(tx: &Transaction<'_>) -> anyhow::Result<()> {
    let rows = tx
        .query(
            "SELECT c.conrelid::regclass::text,
                    array_agg(quote_ident(a.attname) ORDER BY k.ord)
               FROM pg_constraint c
              CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
              WHERE c.contype = 'f' AND c.connamespace = $1::text::regnamespace
                AND NOT EXISTS (
                    SELECT 1 FROM pg_index i
                     WHERE i.indrelid = c.conrelid AND i.indpred IS NULL
                       AND array_to_string((i.indkey::int2[])[0:cardinality(c.conkey) - 1], ',')
                           = array_to_string(c.conkey, ','))
              GROUP BY c.oid, 1
              ORDER BY 1, 2",
            &[&shadow::SCHEMA],
        )
        .await
        .context("looking for unindexed foreign keys in the stage")?;
    for (n, row) in rows.iter().enumerate() {
        let table: String = row.get(0);
        let columns: Vec<String> = row.get(1);
        let not_null: Vec<String> = columns.iter().map(|c| format!("{c} IS NOT NULL")).collect();
        tx.batch_execute(&format!(
            "CREATE INDEX {HELPER_INDEX}{n} ON {table} ({}) WHERE {}",
            columns.join(", "),
            not_null.join(" AND ")
        ))
        .await
        .with_context(|| format!("indexing a foreign key of {table} in the stage"))?;
    }
    Ok(())
}

/// Drops the stage's own indexes (see [`index_foreign_keys`]) in the swap's transaction.
pub async fn drop_helper_indexes(tx: &Transaction<'_>) -> anyhow::Result<()> {
    let names: Vec<String> = tx
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relkind = 'i' AND starts_with(c.relname, $2)",
            &[&SCHEMA, &HELPER_INDEX],
        )
        .await
        .context("listing the stage's own indexes")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for name in names {
        tx.batch_execute(&format!("DROP INDEX {name}"))
            .await
            .with_context(|| format!("dropping the stage's index {name}"))?;
    }
    Ok(())
}

/// [`SCHEMA`] as syn2mas marks it.
const OWN: crate::db::OwnSchema = crate::db::OwnSchema {
    name: SCHEMA,
    mark: MARK,
    holds: "stage",
};

/// Whether a stage exists (and is ours: a schema of that name without syn2mas's mark is
/// refused).
pub async fn exists(client: &Client) -> anyhow::Result<bool> {
    OWN.exists(client).await
}

/// The stage's recorded facts (`None` without a stage).
pub async fn meta(client: &Client) -> anyhow::Result<Option<StageMeta>> {
    if !exists(client).await? {
        return Ok(None);
    }
    let doc: String = client
        .query_one(&format!("SELECT doc::text FROM {SCHEMA}.meta"), &[])
        .await
        .context("reading the stage's facts")?
        .get(0);
    Ok(Some(serde_json::from_str(&doc).context(
        "the stage's facts are not what syn2mas writes",
    )?))
}

/// Drops the stage in `tx`; whether there was one.
async fn drop_in(tx: &Transaction<'_>) -> anyhow::Result<bool> {
    if !OWN.exists(tx).await? {
        return Ok(false);
    }
    tx.batch_execute(&format!("DROP SCHEMA {SCHEMA} CASCADE"))
        .await
        .context("dropping the previous stage")?;
    Ok(true)
}

/// `syn2mas stage drop`: removes the stage; whether there was one.
pub async fn drop(client: &mut Client) -> anyhow::Result<bool> {
    let tx = client.transaction().await?;
    let had = drop_in(&tx).await?;
    tx.commit().await.context("dropping the stage")?;
    Ok(had)
}

/// Rows per MAS table in the stage.
pub async fn rows(client: &Client) -> anyhow::Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for t in Target::ALL {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {SCHEMA}.{}", t.name()), &[])
            .await
            .with_context(|| format!("counting the stage's `{}`", t.name()))?
            .get(0);
        out.push((t.name().to_owned(), n));
    }
    Ok(out)
}

/// Why a stage cannot be applied to these databases with this configuration (`None` when it
/// can). Each reason says what to do.
pub fn invalid_because(
    stage: &StageMeta,
    now: &SourceFacts,
    mas_schema_version: Option<i64>,
    mapping: &str,
    xmax_now: i64,
) -> Option<String> {
    let redo = "run `syn2mas prestage` again, or `syn2mas migrate --no-stage`";
    if let (Some(a), Some(b)) = (&stage.source.system_identifier, &now.system_identifier)
        && a != b
    {
        return Some(format!(
            "the stage was built from another PostgreSQL server (system identifier {a}, now {b}); {redo}"
        ));
    }
    if stage.source.database_oid != now.database_oid
        || stage.source.database_name != now.database_name
    {
        return Some(format!(
            "the stage was built from Synapse database `{}` (oid {}), not `{}` (oid {}); {redo}",
            stage.source.database_name,
            stage.source.database_oid,
            now.database_name,
            now.database_oid
        ));
    }
    if stage.source.synapse_schema_version != now.synapse_schema_version {
        return Some(format!(
            "Synapse's schema changed since the stage (version {:?}, now {:?}); {redo}",
            stage.source.synapse_schema_version, now.synapse_schema_version
        ));
    }
    if stage.mas_schema_version != mas_schema_version {
        return Some(format!(
            "MAS's schema changed since the stage (version {:?}, now {:?}); {redo}",
            stage.mas_schema_version, mas_schema_version
        ));
    }
    if stage.mapping != mapping {
        return Some(format!(
            "the MAS configuration the mapping uses (server name, upstream providers, --ignore-missing-auth-providers) changed since the stage; {redo}"
        ));
    }
    let age = xmax_now - stage.source.snapshot_xmin;
    if age > MAX_AGE_XIDS {
        return Some(format!(
            "the stage is {age} transactions old, too old to find what changed since it safely (at most {MAX_AGE_XIDS}); {redo}"
        ));
    }
    None
}

/// The current transaction counter of `client`'s server (64-bit), without taking an xid.
pub async fn xmax_now(client: &Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8",
            &[],
        )
        .await
        .context("reading Synapse's transaction counter")?
        .get(0))
}

/// What `syn2mas stage status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub exists: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taken_at: Option<String>,
    /// Transactions Synapse's server has run since the stage's snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_xids: Option<i64>,
    pub rows: BTreeMap<String, i64>,
    /// Whether `migrate` would apply it; when not, why and what to do.
    pub valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid_because: Option<String>,
    /// Synapse users whose rows changed since the stage: the ones `migrate` would derive again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed_users: Option<u64>,
}

impl Status {
    pub fn render_human(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        if !self.exists {
            return writeln!(out, "There is no stage. `syn2mas prestage` builds one.");
        }
        writeln!(
            out,
            "Stage taken at {} ({} transactions ago on Synapse's server).",
            self.taken_at.as_deref().unwrap_or("?"),
            self.age_xids.unwrap_or(0)
        )?;
        for (t, n) in &self.rows {
            writeln!(out, "  {t:<34} {n:>10}")?;
        }
        match (&self.invalid_because, self.changed_users) {
            (Some(why), _) => writeln!(out, "Not usable: {why}."),
            (None, Some(n)) => writeln!(
                out,
                "Usable: `syn2mas migrate` would derive {n} changed Synapse user(s) again and swap the stage in."
            ),
            (None, None) => writeln!(out, "Usable."),
        }
    }
}

/// The stage's status against the databases and configuration given; with `count_changed`,
/// also the users changed since (a read of Synapse's six tables).
pub async fn status(
    synapse: &Client,
    mas: &Client,
    config: &MasConfig,
    ignore_missing_auth_providers: bool,
    count_changed: bool,
) -> anyhow::Result<Status> {
    let Some(meta) = meta(mas).await? else {
        return Ok(Status {
            exists: false,
            taken_at: None,
            age_xids: None,
            rows: BTreeMap::new(),
            valid: false,
            invalid_because: None,
            changed_users: None,
        });
    };
    let facts = source_facts(synapse).await?;
    let xmax = xmax_now(synapse).await?;
    let why = invalid_because(
        &meta,
        &facts,
        mas_schema_version(mas).await?,
        &mapping_digest(config, ignore_missing_auth_providers),
        xmax,
    );
    let changed_users = match why {
        None if count_changed => {
            Some(delta::changed_users(synapse, mas, &meta).await?.0.len() as u64)
        }
        _ => None,
    };
    Ok(Status {
        exists: true,
        taken_at: Some(meta.source.taken_at.clone()),
        age_xids: Some(xmax - meta.source.snapshot_xmin),
        rows: rows(mas).await?.into_iter().collect(),
        valid: why.is_none(),
        invalid_because: why,
        changed_users,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literals_quote_every_item() {
        assert_eq!(
            sql_text_array(["@a:x", "@o'k:x", "@b\\s:x"]),
            "ARRAY[E'@a:x', E'@o''k:x', E'@b\\\\s:x']::text[]"
        );
        assert_eq!(sql_text_array([]), "ARRAY[]::text[]");
    }

    #[test]
    fn the_per_user_read_counts_six_tables_and_flags_changes_only_when_asked() {
        let plain = per_user_sql(None);
        assert_eq!(plain.matches("count(*) FILTER").count(), 6);
        let some = per_user_sql_of("ARRAY['@a:x']::text[]");
        assert_eq!(
            some.matches("= ANY(ARRAY['@a:x']::text[])").count(),
            6,
            "{some}"
        );
        assert!(!some.contains("IS NOT NULL"), "{some}");
        assert!(!plain.contains("xmin"));
        let snapshot = Snapshot::parse("4294967300:4294967302:4294967300,4294967301").unwrap();
        assert_eq!(
            snapshot,
            Snapshot {
                xmax: 6,
                in_progress: vec![4, 5]
            }
        );
        let delta = per_user_sql(Some(&snapshot));
        assert!(
            delta.contains("(age(xmin) <= age('6'::xid) OR xmin = ANY(ARRAY['4', '5']::xid[]))"),
            "{delta}"
        );
        assert!(Snapshot::parse("1:2").is_err());
        assert_eq!(
            Snapshot::parse("7:9:").unwrap().in_progress,
            Vec::<u32>::new()
        );
        assert!(delta.contains("bool_or(changed)"));
        assert!(delta.ends_with("GROUP BY 1 ORDER BY 1"));
    }

    fn meta() -> StageMeta {
        StageMeta {
            source: SourceFacts {
                taken_at: "2026-12-05T00:00:00Z".into(),
                snapshot_xmin: 1000,
                snapshot: "1000:1000:".into(),
                ..facts()
            },
            mas_schema_version: Some(20260720134722),
            mapping: "m".into(),
            id_key: "00".into(),
            now_ms: 0,
        }
    }

    fn facts() -> SourceFacts {
        SourceFacts {
            taken_at: "2026-12-06T00:00:00Z".into(),
            snapshot_xmin: 2000,
            snapshot: "2000:2000:".into(),
            system_identifier: Some("7".into()),
            database_oid: 5,
            database_name: "synapse".into(),
            synapse_schema_version: Some(92),
        }
    }

    #[test]
    fn a_stage_is_refused_for_every_fact_that_changed() {
        let m = meta();
        let mas = Some(20260720134722);
        assert_eq!(invalid_because(&m, &facts(), mas, "m", 3000), None);
        let f = SourceFacts {
            system_identifier: Some("8".into()),
            ..facts()
        };
        assert!(
            invalid_because(&m, &f, mas, "m", 3000)
                .unwrap()
                .contains("another PostgreSQL server")
        );
        let f = SourceFacts {
            database_oid: 6,
            ..facts()
        };
        assert!(
            invalid_because(&m, &f, mas, "m", 3000)
                .unwrap()
                .contains("oid 6")
        );
        let f = SourceFacts {
            synapse_schema_version: Some(93),
            ..facts()
        };
        assert!(
            invalid_because(&m, &f, mas, "m", 3000)
                .unwrap()
                .contains("Synapse's schema changed")
        );
        assert!(
            invalid_because(&m, &facts(), Some(1), "m", 3000)
                .unwrap()
                .contains("MAS's schema changed")
        );
        assert!(
            invalid_because(&m, &facts(), mas, "other", 3000)
                .unwrap()
                .contains("configuration")
        );
        let old = invalid_because(&m, &facts(), mas, "m", 1000 + MAX_AGE_XIDS + 1).unwrap();
        assert!(old.contains("too old"), "{old}");
        assert!(old.contains("--no-stage"), "{old}");
    }
}
