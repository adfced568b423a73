//! Filling a Synapse database: schema tables, parallel COPY of the six account tables, then the
//! schema's indexes and constraints, then ANALYZE.

use super::copybuf::CopyBuf;
use super::model::User;
use super::pg::{PgServer, columns_of, quote_ident, run_chunks};
use super::plan::Plan;
use super::schema::{SchemaChoice, Script, TableStatement, schema_file};
use super::tables::{self, TableSpec};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::SinkExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub server: PgServer,
    pub db: String,
    pub users: u32,
    pub seed: u64,
    pub schema: SchemaChoice,
    /// Sessions building indexes in parallel.
    pub jobs: usize,
}

/// One measured step: a table's COPY, or a phase.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Timing {
    pub name: String,
    pub secs: f64,
    pub rows: Option<u64>,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct GenerateReport {
    pub steps: Vec<Timing>,
    pub tables: Vec<Timing>,
    pub total_secs: f64,
}

impl GenerateReport {
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().filter_map(|t| t.rows).sum()
    }
}

pub async fn generate(opts: &GenerateOptions) -> Result<GenerateReport> {
    let started = Instant::now();
    let mut report = GenerateReport::default();
    let path = schema_file("synapse", opts.schema)?;
    let script = Script::read(&path)?;

    let t = Instant::now();
    opts.server.recreate_db(&opts.db).await?;
    let client = opts.server.connect(&opts.db).await?;
    run_chunks(&client, &script.pre)
        .await
        .with_context(|| format!("loading tables of {}", path.display()))?;
    report.steps.push(step("create database + tables", t, None));

    let masks = column_masks(&client).await?;
    let t = Instant::now();
    report.tables = load_tables(opts, &masks).await?;
    report.steps.push(step(
        "COPY (all tables, parallel)",
        t,
        Some(report.total_rows()),
    ));

    let t = Instant::now();
    let per_table = build_indexes(opts, script.indexes).await?;
    report
        .steps
        .push(step("indexes + unique/PK constraints", t, None));
    for mut timing in per_table {
        timing.name = format!("  of which {} (one session)", timing.name);
        report.steps.push(timing);
    }

    let t = Instant::now();
    for sql in &script.late {
        client
            .batch_execute(sql)
            .await
            .with_context(|| sql.clone())?;
    }
    report.steps.push(step("foreign keys + triggers", t, None));

    let t = Instant::now();
    finish(opts, &client).await?;
    report.steps.push(step("ANALYZE", t, None));
    report.total_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

fn step(name: &str, since: Instant, rows: Option<u64>) -> Timing {
    Timing {
        name: name.to_string(),
        secs: since.elapsed().as_secs_f64(),
        rows,
    }
}

/// Which generated columns each table has; fails if a column syn2mas reads is missing.
async fn column_masks(client: &Client) -> Result<HashMap<&'static str, Vec<bool>>> {
    let mut masks = HashMap::new();
    for spec in tables::ALL {
        let existing = columns_of(client, spec.name).await?;
        if existing.is_empty() {
            bail!("the schema has no table `{}`", spec.name);
        }
        if let Some(missing) = spec.required.iter().find(|c| !existing.contains(**c)) {
            bail!("table `{}` lacks column `{missing}`", spec.name);
        }
        masks.insert(
            spec.name,
            spec.columns.iter().map(|c| existing.contains(*c)).collect(),
        );
    }
    Ok(masks)
}

/// Users and 3PIDs/external ids stream straight away; devices and tokens wait for the plan,
/// which is built on a blocking thread meanwhile. Each table group has its own session.
async fn load_tables(
    opts: &GenerateOptions,
    masks: &HashMap<&'static str, Vec<bool>>,
) -> Result<Vec<Timing>> {
    let (seed, total) = (opts.seed, opts.users);
    let plan_started = Instant::now();
    let plan_task = tokio::task::spawn_blocking(move || Plan::build(seed, total));

    let users = spawn_copy(
        opts,
        masks,
        vec![(&tables::USERS, per_user(seed, total, tables::user_row))],
    )
    .await?;
    let side = spawn_copy(
        opts,
        masks,
        vec![
            (
                &tables::THREEPIDS,
                per_user(seed, total, tables::threepid_rows),
            ),
            (
                &tables::EXTERNAL_IDS,
                per_user(seed, total, tables::external_id_rows),
            ),
        ],
    )
    .await?;

    let plan = Arc::new(plan_task.await?);
    let plan_timing = Timing {
        name: "(plan devices + tokens, in memory)".into(),
        secs: plan_started.elapsed().as_secs_f64(),
        rows: None,
    };
    let devices = spawn_copy(
        opts,
        masks,
        vec![(&tables::DEVICES, device_source(seed, total, plan.clone()))],
    )
    .await?;
    let tokens = spawn_copy(
        opts,
        masks,
        vec![
            // Refresh tokens first: a schema with inline foreign keys checks them on load.
            (
                &tables::REFRESH_TOKENS,
                refresh_source(seed, total, plan.clone()),
            ),
            (&tables::ACCESS_TOKENS, token_source(seed, total, plan)),
        ],
    )
    .await?;

    let mut timings = vec![plan_timing];
    for task in [users, side, devices, tokens] {
        timings.extend(task.await??);
    }
    Ok(timings)
}

/// Fills a buffer with rows until it is full; `false` once the table is complete.
type Source = Box<dyn FnMut(&mut CopyBuf) -> bool + Send>;

fn per_user(seed: u64, total: u32, row: fn(u64, &User, &mut CopyBuf)) -> Source {
    let mut next = 0u32;
    Box::new(move |buf| {
        while !buf.is_full() && next < total {
            row(seed, &User::generate(seed, next, total), buf);
            next += 1;
        }
        next < total
    })
}

fn device_source(seed: u64, total: u32, plan: Arc<Plan>) -> Source {
    let mut next = 0usize;
    Box::new(move |buf| {
        while !buf.is_full() && next < plan.devices.len() {
            let device = &plan.devices[next];
            tables::device_row(seed, device, &User::generate(seed, device.user, total), buf);
            next += 1;
        }
        next < plan.devices.len()
    })
}

fn token_source(seed: u64, total: u32, plan: Arc<Plan>) -> Source {
    let mut next = 0usize;
    Box::new(move |buf| {
        while !buf.is_full() && next < plan.tokens.len() {
            let token = &plan.tokens[next];
            let user = User::generate(seed, token.user, total);
            let puppet = token.puppet_of.map(|a| User::generate(seed, a, total));
            tables::access_token_row(seed, next as i64 + 1, token, &user, puppet.as_ref(), buf);
            next += 1;
        }
        next < plan.tokens.len()
    })
}

fn refresh_source(seed: u64, total: u32, plan: Arc<Plan>) -> Source {
    let mut next = 0usize;
    Box::new(move |buf| {
        while !buf.is_full() && next < plan.refresh.len() {
            let token = &plan.refresh[next];
            let user = User::generate(seed, token.user, total);
            tables::refresh_token_row(seed, next as i64 + 1, token, &user, buf);
            next += 1;
        }
        next < plan.refresh.len()
    })
}

/// One session that COPYs the given tables one after the other.
async fn spawn_copy(
    opts: &GenerateOptions,
    masks: &HashMap<&'static str, Vec<bool>>,
    jobs: Vec<(&'static TableSpec, Source)>,
) -> Result<JoinHandle<Result<Vec<Timing>>>> {
    let client = opts.server.connect(&opts.db).await?;
    client.batch_execute("SET synchronous_commit = off").await?;
    let jobs: Vec<_> = jobs
        .into_iter()
        .map(|(spec, src)| (spec, masks[spec.name].clone(), src))
        .collect();
    Ok(tokio::spawn(async move {
        let mut timings = Vec::new();
        for (spec, mask, source) in jobs {
            timings.push(copy_table(&client, spec, mask, source).await?);
        }
        Ok(timings)
    }))
}

async fn copy_table(
    client: &Client,
    spec: &TableSpec,
    mask: Vec<bool>,
    mut source: Source,
) -> Result<Timing> {
    let started = Instant::now();
    let columns: Vec<&str> = spec
        .columns
        .iter()
        .zip(&mask)
        .filter(|(_, p)| **p)
        .map(|(c, _)| *c)
        .collect();
    let freeze = begin_frozen_load(client, spec.name).await?;
    let statement = format!(
        "COPY {} ({}) FROM STDIN{}",
        quote_ident(spec.name),
        columns.join(", "),
        if freeze { " (FREEZE)" } else { "" }
    );
    let sink = client
        .copy_in(&statement)
        .await
        .with_context(|| statement.clone())?;
    futures::pin_mut!(sink);
    let mut buf = CopyBuf::new(mask);
    loop {
        let more = source(&mut buf);
        if !buf.data.is_empty() {
            sink.send(Bytes::from(buf.take()))
                .await
                .with_context(|| format!("COPY into {}", spec.name))?;
        }
        if !more {
            break;
        }
    }
    let rows = sink
        .finish()
        .await
        .with_context(|| format!("COPY into {}", spec.name))?;
    if freeze {
        client.batch_execute("COMMIT").await?;
    }
    Ok(Timing {
        name: spec.name.to_string(),
        secs: started.elapsed().as_secs_f64(),
        rows: Some(rows),
    })
}

/// `COPY … FREEZE` (rows written already frozen and all-visible, as if long vacuumed, so
/// autovacuum and hint-bit writes do not disturb the benchmark) needs the table truncated in the
/// same transaction. A table referenced by a foreign key cannot be truncated (schemas with
/// inline constraints): then it is a plain COPY.
async fn begin_frozen_load(client: &Client, table: &str) -> Result<bool> {
    client.batch_execute("BEGIN").await?;
    match client
        .batch_execute(&format!("TRUNCATE {}", quote_ident(table)))
        .await
    {
        Ok(()) => Ok(true),
        Err(_) => {
            client.batch_execute("ROLLBACK").await?;
            Ok(false)
        }
    }
}

/// Index and constraint statements grouped per table, the big tables first; returns the time
/// spent on each loaded table.
async fn build_indexes(
    opts: &GenerateOptions,
    statements: Vec<TableStatement>,
) -> Result<Vec<Timing>> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in statements {
        groups.entry(s.table).or_default().push(s.sql);
    }
    let weight = |t: &str| {
        tables::ALL
            .iter()
            .position(|s| s.name == t)
            .map_or(0, |p| 10 - p)
    };
    let mut ordered: Vec<(String, Vec<String>)> = groups.into_iter().collect();
    ordered.sort_by_key(|(t, _)| std::cmp::Reverse(weight(t)));
    let timings = run_parallel(opts, ordered).await?;
    Ok(timings
        .into_iter()
        .filter(|t| weight(&t.name) > 0)
        .collect())
}

/// Runs each group's statements in order on one of `jobs` sessions; groups in queue order.
async fn run_parallel(
    opts: &GenerateOptions,
    groups: Vec<(String, Vec<String>)>,
) -> Result<Vec<Timing>> {
    let queue = Arc::new(Mutex::new(groups.into_iter()));
    let mut workers = Vec::new();
    for _ in 0..opts.jobs.max(1) {
        let client = opts.server.connect(&opts.db).await?;
        let queue = queue.clone();
        workers.push(tokio::spawn(async move {
            client
                .batch_execute("SET maintenance_work_mem = '512MB'")
                .await?;
            let mut timings = Vec::new();
            loop {
                let next = queue
                    .lock()
                    .map_err(|_| anyhow::anyhow!("work queue poisoned"))?
                    .next();
                let Some((name, sqls)) = next else {
                    return Ok::<_, anyhow::Error>(timings);
                };
                let started = Instant::now();
                for sql in sqls {
                    client
                        .batch_execute(&sql)
                        .await
                        .with_context(|| sql.clone())?;
                }
                timings.push(step(&name, started, None));
            }
        }));
    }
    let mut timings = Vec::new();
    for w in workers {
        timings.extend(w.await??);
    }
    Ok(timings)
}

/// Statistics as autovacuum would leave them (one table per session), and Synapse's guest id
/// sequence moved past the generated guests.
async fn finish(opts: &GenerateOptions, client: &Client) -> Result<()> {
    let groups = tables::ALL
        .iter()
        .map(|s| {
            (
                s.name.to_string(),
                vec![format!("ANALYZE {}", quote_ident(s.name))],
            )
        })
        .collect();
    run_parallel(opts, groups).await?;
    let has_seq: bool = client
        .query_one("SELECT to_regclass('user_id_seq') IS NOT NULL", &[])
        .await?
        .get(0);
    if has_seq && opts.users > 0 {
        client
            .execute(
                "SELECT setval('user_id_seq', $1)",
                &[&i64::from(opts.users)],
            )
            .await?;
    }
    Ok(())
}
