//! Applying what changed since the stage's snapshot: the window's `migrate` when a stage
//! exists, and a second `prestage` (a refresh). It finds the Synapse users whose rows changed,
//! derives their rows again with the normal transform, and in one transaction replaces their
//! rows in the stage and then swaps the stage in (the window) or records the new snapshot with
//! it (a refresh).
//!
//! A user is *changed* when any of their rows in the six tables has an xmin the stage's
//! snapshot could not see (inserted or updated since, or by a transaction still running then:
//! a superset, never fewer), or when the number of their rows in a table differs from the
//! stage's count (rows deleted), or when they exist on one side only. Every rule of the mapping
//! looks at one user's rows only, and ids are a keyed hash of natural keys with the stage's
//! key, so the rows of unchanged users in the stage are exactly what a full run would write for
//! them, and the changed users' rows are derived as a full run would.
//!
//! Everything that changes the stage happens in that one transaction: a failure, a signal or a
//! kill before its COMMIT leaves the stage exactly as it was, still usable.

use std::cmp::Ordering as Cmp;
use std::collections::BTreeMap;
use std::io::{Read as _, Seek, SeekFrom, Write as _};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_postgres::{Client, Row, Transaction};

use super::{SCHEMA, StageMeta};
use crate::check::report::{EntityPlan, Plan};
use crate::config::MasConfig;
use crate::db::ConnectOptions;
use crate::db::copy_binary::{TRAILER, header};
use crate::migrate::summary::{Staged, Summary, summarise};
use crate::migrate::{MigrateOptions, key_hex};
use crate::pipeline::{self, Senders};
use crate::progress::Progress;
use crate::sink::catalog::Definitions;
use crate::sink::shadow;
use crate::sink::tables::Target;
use crate::source::{Entity, plan};
use crate::transform::{Ctx, Ids, Mode, Stats};

/// What a staged migration needs from `migrate::run`, which has locked and checked MAS.
pub struct Run<'a> {
    pub synapse_db: &'a ConnectOptions,
    pub mas: &'a MasConfig,
    pub opts: &'a MigrateOptions,
    pub progress: &'a Progress,
    pub defs: &'a Definitions,
    /// The sessions' memory settings `migrate::run` chose.
    pub memory: crate::memory::Chosen,
    pub started: Instant,
    pub leftovers: Vec<String>,
}

/// What the changes are applied for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The window's `migrate`: the stage is brought up to date and swapped in.
    Window,
    /// A second `prestage`: the stage is brought up to date with a new snapshot, and stays.
    Refresh,
}

impl Run<'_> {
    /// Brings the stage up to date and swaps it in (rolled back with `--dry-run`), or, for a
    /// refresh, records the new snapshot with it. `None` when a refresh finds the stage unusable
    /// here (the caller builds a new one); a window refuses an unusable stage.
    pub async fn apply(
        self,
        main: &mut Client,
        purpose: Purpose,
    ) -> anyhow::Result<Option<Summary>> {
        let meta = super::meta(main)
            .await?
            .context("the stage vanished while the run started")?;
        let (readers, _) = pipeline::open_snapshot(
            self.synapse_db,
            self.opts.synapse_lock(),
            self.memory.synapse_work_mem,
        )
        .await?;
        let facts = super::source_facts(&readers[0]).await?;
        if let Some(why) = self
            .invalid_because(&meta, &facts, &readers[0], main)
            .await?
        {
            if purpose == Purpose::Refresh {
                self.progress.println(&format!(
                    "The stage cannot be refreshed ({why}): building a new one."
                ));
                return Ok(None);
            }
            bail!("refusing the stage: {why}. Nothing was changed.");
        }
        crate::test_hooks::pause("delta-detect").await;

        let detect_start = Instant::now();
        let (changed, staged_users) = changed_users(&readers[0], main, &meta).await?;
        let detect_seconds = detect_start.elapsed().as_secs_f64();
        if too_many(changed.len() as u64, staged_users) {
            let share = 100.0 * changed.len() as f64 / staged_users.max(1) as f64;
            let (what, instead) = match purpose {
                Purpose::Window => (
                    "applying them to the stage",
                    "migrating in full instead (the stage is left as it is; `syn2mas stage drop` removes it)",
                ),
                Purpose::Refresh => ("refreshing the stage", "building a new stage instead"),
            };
            self.progress.println(&format!(
                "{} of the stage's {staged_users} Synapse users ({share:.1} %) changed since its snapshot: {what} would take longer than a full run; {instead}.",
                changed.len()
            ));
            return Ok(None);
        }
        tracing::debug!(
            changed = changed.len(),
            detect_seconds,
            "changed users found"
        );

        let ctx = Arc::new(self.context(&meta, &changed)?);
        let load_start = Instant::now();
        let (stats, seconds, files) = if changed.is_empty() {
            (Stats::default(), BTreeMap::new(), Vec::new())
        } else {
            derive(&readers, &ctx, changed.len() as u64, self.progress).await?
        };
        let counts = match purpose {
            Purpose::Refresh => Some(counts_of(&readers[0], &changed).await?),
            Purpose::Window => None,
        };
        for client in &readers {
            client
                .batch_execute("COMMIT")
                .await
                .context("closing the Synapse read transaction")?;
        }
        let load_seconds = load_start.elapsed().as_secs_f64();

        let apply_start = Instant::now();
        let localparts = localparts(&changed, &self.mas.homeserver);
        let tx = main.transaction().await.context("starting the swap")?;
        replace_rows(&tx, &localparts, files).await?;
        let mas_rows = stage_rows(&tx).await?;
        let apply_seconds = apply_start.elapsed().as_secs_f64();
        crate::test_hooks::pause("delta-applied").await;
        let swap_start = Instant::now();
        match counts {
            Some(counts) => {
                let refreshed = StageMeta {
                    source: facts,
                    now_ms: ctx.now_ms,
                    ..meta.clone()
                };
                record_refresh(&tx, &changed, &counts, &refreshed).await?;
                tx.commit()
                    .await
                    .context("committing the refreshed stage")?;
            }
            None => {
                super::drop_helper_indexes(&tx).await?;
                shadow::swap_in(&tx, SCHEMA, &[], &self.defs.outgoing_keys()).await?;
                if self.opts.dry_run {
                    tx.rollback()
                        .await
                        .context("rolling back the dry-run swap")?;
                } else {
                    tx.commit().await.context("committing the swap")?;
                    crate::test_hooks::pause("committed").await;
                }
            }
        }
        let swap_seconds = swap_start.elapsed().as_secs_f64();
        let entities = summarise(&stats, &seconds)?;
        Ok(Some(Summary {
            dry_run: self.opts.dry_run,
            prestage: purpose == Purpose::Refresh,
            staged: Some(Staged {
                stage_taken_at: meta.source.taken_at,
                changed_users: changed.len() as u64,
                detect_seconds,
                apply_seconds,
            }),
            plan_mismatches: Vec::new(),
            entities,
            mas_rows,
            invalid_device_ips: stats.invalid_ips,
            load_seconds,
            rebuild_seconds: 0.0,
            swap_seconds,
            total_seconds: self.started.elapsed().as_secs_f64(),
            leftovers_dropped: self.leftovers,
            server_memory: None,
        }))
    }

    /// Why the stage cannot be applied here: built from other databases, schemas or
    /// configuration, too old, or (a refresh with `--seed`) with another id key.
    async fn invalid_because(
        &self,
        meta: &StageMeta,
        facts: &super::SourceFacts,
        snapshot: &Client,
        mas: &Client,
    ) -> anyhow::Result<Option<String>> {
        if let Some(seed) = self.opts.seed
            && self.opts.prestage
            && key_hex(&Ids::from_seed(seed).key()) != meta.id_key
        {
            return Ok(Some("it was built with another --seed".to_owned()));
        }
        Ok(super::invalid_because(
            meta,
            facts,
            super::mas_schema_version(mas).await?,
            &super::mapping_digest(self.mas, self.opts.ignore_missing_auth_providers),
            super::xmax_now(snapshot).await?,
        ))
    }

    /// The transform's context: the stage's id key, this run's clock, the changed users only.
    fn context(&self, meta: &StageMeta, changed: &[String]) -> anyhow::Result<Ctx> {
        let mut ctx = crate::migrate::context(
            self.mas,
            None,
            self.opts.ignore_missing_auth_providers,
            Mode::Migrate,
        )?;
        ctx.ids = Ids::with_key(&parse_key(&meta.id_key)?);
        ctx.refuse_warnings = !self.opts.allow_warnings;
        ctx.only_users = Some(super::sql_text_array(changed.iter().map(String::as_str)));
        Ok(ctx)
    }
}

/// The id key a stage recorded (see `migrate::key_hex`).
fn parse_key(hex_key: &str) -> anyhow::Result<[u8; 16]> {
    let key = u128::from_str_radix(hex_key, 16)
        .ok()
        .filter(|_| hex_key.len() == 32)
        .context("the stage's id key is not what syn2mas writes")?;
    Ok(key.to_be_bytes())
}

/// Above this share of the stage's users (percent), applying the changes costs more than a
/// full run: at 1M users on this project's benchmark machine the window took 13 s with 0.65 %
/// of the users changed and 36 s with 6.4 %, a full `migrate` 26 s (benches/RESULTS.md).
const FULL_ABOVE_PERCENT: u64 = 4;

/// Whether `changed` of `staged` users is too many to apply (see [`FULL_ABOVE_PERCENT`]).
fn too_many(changed: u64, staged: u64) -> bool {
    let limit = crate::test_hooks::full_above().unwrap_or(FULL_ABOVE_PERCENT);
    changed * 100 > limit * staged.max(1)
}

/// One user's counts on one side of the merge.
#[derive(Debug, PartialEq, Eq)]
struct Counts {
    user_id: String,
    rows: [i64; 6],
    changed: bool,
}

impl Counts {
    fn from_row(row: &Row, with_flag: bool) -> Counts {
        Counts {
            user_id: row.get(0),
            rows: std::array::from_fn(|i| row.get::<_, i64>(i + 1)),
            changed: with_flag && row.get::<_, Option<bool>>(7).unwrap_or(false),
        }
    }
}

/// The users whose rows changed since the stage (see the module doc), sorted, and the number
/// of users the stage holds: a merge of Synapse's per-user counts and xmin flags now with the
/// stage's counts, both streamed in the same byte order, so memory is the list of changed users
/// whatever the number of users.
pub(super) async fn changed_users(
    synapse: &Client,
    mas: &Client,
    meta: &StageMeta,
) -> anyhow::Result<(Vec<String>, u64)> {
    let snapshot = super::Snapshot::parse(&meta.source.snapshot)?;
    let now = synapse
        .query_raw(
            &super::per_user_sql(Some(&snapshot)),
            std::iter::empty::<i32>(),
        )
        .await
        .context("reading Synapse's per-user counts")?;
    let staged = mas
        .query_raw(
            &format!(
                "SELECT user_id COLLATE \"C\", users, threepids, external_ids, devices, access_tokens, \
                 refresh_tokens FROM {SCHEMA}.{} ORDER BY 1",
                super::USER_COUNTS
            ),
            std::iter::empty::<i32>(),
        )
        .await
        .context("reading the stage's per-user counts")?;
    futures::pin_mut!(now);
    futures::pin_mut!(staged);
    let mut a = next(&mut now, true).await?;
    let mut b = next(&mut staged, false).await?;
    let mut changed = Vec::new();
    let mut staged_users = u64::from(b.is_some());
    loop {
        match (a.take(), b.take()) {
            (None, None) => break,
            (Some(x), None) => {
                changed.push(x.user_id);
                a = next(&mut now, true).await?;
            }
            (None, Some(y)) => {
                changed.push(y.user_id);
                b = next(&mut staged, false).await?;
                staged_users += u64::from(b.is_some());
            }
            (Some(x), Some(y)) => match x.user_id.as_bytes().cmp(y.user_id.as_bytes()) {
                Cmp::Less => {
                    changed.push(x.user_id);
                    a = next(&mut now, true).await?;
                    b = Some(y);
                }
                Cmp::Greater => {
                    changed.push(y.user_id);
                    a = Some(x);
                    b = next(&mut staged, false).await?;
                    staged_users += u64::from(b.is_some());
                }
                Cmp::Equal => {
                    if x.changed || x.rows != y.rows {
                        changed.push(x.user_id);
                    }
                    a = next(&mut now, true).await?;
                    b = next(&mut staged, false).await?;
                    staged_users += u64::from(b.is_some());
                }
            },
        }
    }
    Ok((changed, staged_users))
}

async fn next(
    rows: &mut std::pin::Pin<&mut tokio_postgres::RowStream>,
    with_flag: bool,
) -> anyhow::Result<Option<Counts>> {
    match rows.next().await {
        None => Ok(None),
        Some(row) => Ok(Some(Counts::from_row(
            &row.context("reading per-user counts")?,
            with_flag,
        ))),
    }
}

/// The per-user counts of `users` in the snapshot `synapse` reads (see `super::per_user_sql`).
async fn counts_of(synapse: &Client, users: &[String]) -> anyhow::Result<Vec<Counts>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let list = super::sql_text_array(users.iter().map(String::as_str));
    Ok(synapse
        .query(&super::per_user_sql_of(&list), &[])
        .await
        .context("reading the changed users' counts")?
        .iter()
        .map(|r| Counts::from_row(r, false))
        .collect())
}

/// A refresh's bookkeeping in its transaction: the changed users' counts as of the new
/// snapshot, and the new snapshot as the stage's.
async fn record_refresh(
    tx: &Transaction<'_>,
    changed: &[String],
    counts: &[Counts],
    meta: &StageMeta,
) -> anyhow::Result<()> {
    let table = format!("{SCHEMA}.{}", super::USER_COUNTS);
    tx.execute(
        &format!("DELETE FROM {table} WHERE user_id = ANY($1)"),
        &[&changed],
    )
    .await
    .context("refreshing the stage's per-user counts")?;
    let ids: Vec<&str> = counts.iter().map(|c| c.user_id.as_str()).collect();
    let column = |i: usize| counts.iter().map(|c| c.rows[i]).collect::<Vec<i64>>();
    tx.execute(
        &format!(
            "INSERT INTO {table} SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], \
             $5::int8[], $6::int8[], $7::int8[])"
        ),
        &[&ids, &column(0), &column(1), &column(2), &column(3), &column(4), &column(5)],
    )
    .await
    .context("refreshing the stage's per-user counts")?;
    tx.execute(
        &format!("UPDATE {SCHEMA}.meta SET doc = $1::text::jsonb"),
        &[&serde_json::to_string(meta)?],
    )
    .await
    .context("recording the stage's new snapshot")?;
    Ok(())
}

/// The MAS usernames of `users` on this server (users elsewhere have no MAS rows).
fn localparts(users: &[String], server: &str) -> Vec<String> {
    let suffix = format!(":{server}");
    users
        .iter()
        .filter(|u| crate::transform::rules::on_server(u, &suffix))
        .filter_map(|u| crate::transform::rules::localpart(u, &suffix).map(str::to_owned))
        .collect()
}

type Derived = (Stats, BTreeMap<Entity, f64>, Vec<(Target, std::fs::File)>);

/// Runs the changed users' rows through the normal pipeline; each MAS table's encoded rows go
/// to an anonymous temporary file, to be copied into the stage in the swap's transaction (in
/// dependency order: the stage's foreign keys are in force).
async fn derive(
    readers: &[Client],
    ctx: &Arc<Ctx>,
    users: u64,
    progress: &Progress,
) -> anyhow::Result<Derived> {
    let mut writers = BTreeMap::new();
    let mut sinks = Vec::new();
    for t in Target::ALL {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(2);
        writers.insert(t, tx);
        sinks.push((
            t,
            tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
                let mut file = tempfile::tempfile().context("a temporary file for the delta")?;
                while let Some(body) = rx.blocking_recv() {
                    file.write_all(&body).context("writing the delta")?;
                }
                file.seek(SeekFrom::Start(0))?;
                Ok(file)
            }),
        ));
    }
    let senders = Senders {
        writers,
        ..Senders::default()
    };
    let (stats, seconds) =
        pipeline::run_all(readers, ctx, &estimate(users), progress, senders).await?;
    let mut files = Vec::new();
    for (t, sink) in sinks {
        files.push((t, sink.await.context("delta writer panicked")??));
    }
    Ok((stats, seconds, files))
}

/// Sizes for the progress bars and the partitioning of a delta of `users` users.
fn estimate(users: u64) -> Plan {
    Plan {
        entities: plan::ORDER
            .iter()
            .map(|e| EntityPlan {
                entity: e.name().to_owned(),
                read: users * if *e == Entity::Users { 1 } else { 4 },
                ..Default::default()
            })
            .collect(),
        mas_rows: BTreeMap::new(),
    }
}

/// Deletes every row of the users `localparts` from the stage (children first: the stage's
/// foreign keys are in force), then copies the re-derived rows in (parents first).
async fn replace_rows(
    tx: &Transaction<'_>,
    localparts: &[String],
    files: Vec<(Target, std::fs::File)>,
) -> anyhow::Result<()> {
    // Their MAS ids once (by username, through its unique index), then every table by id.
    let ids: Vec<String> = tx
        .query(
            &format!("SELECT user_id::text FROM {SCHEMA}.users WHERE username = ANY($1)"),
            &[&localparts],
        )
        .await
        .context("finding changed users in the stage")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let users = "ANY($1::text[]::uuid[])";
    let sessions =
        format!("SELECT compat_session_id FROM {SCHEMA}.compat_sessions WHERE user_id = {users}");
    // Children first: the stage's foreign keys are in force.
    let deletes = [
        format!(
            "DELETE FROM {SCHEMA}.compat_refresh_tokens WHERE compat_session_id IN ({sessions})"
        ),
        format!(
            "DELETE FROM {SCHEMA}.compat_access_tokens WHERE compat_session_id IN ({sessions})"
        ),
        format!("DELETE FROM {SCHEMA}.compat_sessions WHERE user_id = {users}"),
        format!("DELETE FROM {SCHEMA}.upstream_oauth_links WHERE user_id = {users}"),
        format!("DELETE FROM {SCHEMA}.user_unsupported_third_party_ids WHERE user_id = {users}"),
        format!("DELETE FROM {SCHEMA}.user_emails WHERE user_id = {users}"),
        format!("DELETE FROM {SCHEMA}.user_passwords WHERE user_id = {users}"),
        format!("DELETE FROM {SCHEMA}.users WHERE user_id = {users}"),
    ];
    for sql in &deletes {
        tx.execute(sql, &[&ids])
            .await
            .map_err(crate::db::without_detail)
            .context("deleting changed users' rows from the stage")?;
    }
    for (target, file) in files {
        copy_file(tx, target, file).await?;
    }
    Ok(())
}

/// Binary COPY of one re-derived table's rows into the stage.
async fn copy_file(
    tx: &Transaction<'_>,
    target: Target,
    mut file: std::fs::File,
) -> anyhow::Result<()> {
    let what = || {
        format!(
            "writing the changed users' rows into the stage's `{}`",
            target.name()
        )
    };
    if file.metadata().with_context(what)?.len() == 0 {
        return Ok(());
    }
    let sink = tx
        .copy_in::<_, bytes::Bytes>(&format!(
            "COPY {SCHEMA}.{} ({}) FROM STDIN (FORMAT binary)",
            target.name(),
            target.columns().join(", ")
        ))
        .await
        .map_err(crate::db::without_detail)
        .with_context(what)?;
    futures::pin_mut!(sink);
    sink.feed(bytes::Bytes::from(header()))
        .await
        .map_err(crate::db::without_detail)
        .with_context(what)?;
    // CopyData messages may split the stream anywhere; 1 MiB at a time keeps memory flat.
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        let n = file.read(&mut chunk).with_context(what)?;
        if n == 0 {
            break;
        }
        chunk.truncate(n);
        sink.feed(bytes::Bytes::from(chunk))
            .await
            .map_err(crate::db::without_detail)
            .with_context(what)?;
    }
    sink.feed(bytes::Bytes::from_static(TRAILER))
        .await
        .map_err(crate::db::without_detail)
        .with_context(what)?;
    sink.as_mut()
        .finish()
        .await
        .map_err(crate::db::without_detail)
        .with_context(what)?;
    Ok(())
}

/// Rows per MAS table in the stage as it will be swapped in.
async fn stage_rows(tx: &Transaction<'_>) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for t in Target::ALL {
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {SCHEMA}.{}", t.name()), &[])
            .await
            .with_context(|| format!("counting the stage's `{}`", t.name()))?
            .get(0);
        out.insert(t.name().to_owned(), n as u64);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_id_key_reads_back_as_itself() {
        let key: [u8; 16] = std::array::from_fn(|i| (i as u8) * 17);
        let text = key_hex(&key);
        assert_eq!(text.len(), 32);
        assert_eq!(parse_key(&text).unwrap(), key);
        assert_eq!(parse_key(&key_hex(&[0; 16])).unwrap(), [0; 16]);
        assert!(parse_key("00").is_err());
        assert!(parse_key(&"g".repeat(32)).is_err());
    }

    #[test]
    fn too_many_changes_is_a_share_of_the_stage() {
        assert!(!too_many(4, 100));
        assert!(too_many(5, 100));
        assert!(!too_many(0, 0));
    }
}
