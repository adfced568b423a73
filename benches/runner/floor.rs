//! The floor: what the same server needs to hold the migrated rows at all. The migrated MAS
//! tables are binary-COPYed into index-less copies, then the real tables' indexes and
//! constraints are built on the copies in one session.

use crate::support::pg::{PgServer, quote_ident};
use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_postgres::Client;

/// The tables syn2mas writes, in dependency order.
pub const MAS_TABLES: [&str; 8] = syn2mas::sink::tables::NAMES;

#[derive(Debug, Clone, Default)]
pub struct Floor {
    pub copy_secs: f64,
    pub rows: u64,
    pub build_secs: f64,
    pub statements: usize,
}

fn copy_name(table: &str) -> String {
    format!("floor_{table}")
}

/// Measures the floor on `db` (which must hold the migrated data), then drops the copies.
pub async fn measure(server: &PgServer, db: &str, jobs: usize) -> Result<Floor> {
    let main = server.connect(db).await?;
    drop_copies(&main).await?;
    for t in MAS_TABLES {
        let sql = format!(
            "CREATE TABLE {} (LIKE {})",
            quote_ident(&copy_name(t)),
            quote_ident(t)
        );
        main.batch_execute(&sql)
            .await
            .with_context(|| sql.clone())?;
    }
    let statements = rebuild_statements(&main).await?;
    let started = Instant::now();
    let rows = copy_all(server, db, jobs).await?;
    let copy_secs = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for sql in &statements {
        main.batch_execute(sql).await.with_context(|| sql.clone())?;
    }
    let floor = Floor {
        copy_secs,
        rows,
        build_secs: started.elapsed().as_secs_f64(),
        statements: statements.len(),
    };
    drop_copies(&main).await?;
    Ok(floor)
}

async fn drop_copies(client: &Client) -> Result<()> {
    let names: Vec<String> = MAS_TABLES
        .iter()
        .map(|t| quote_ident(&copy_name(t)))
        .collect();
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {} CASCADE",
            names.join(", ")
        ))
        .await?;
    Ok(())
}

/// `jobs` workers, each with a reading and a writing session, take tables from a queue.
async fn copy_all(server: &PgServer, db: &str, jobs: usize) -> Result<u64> {
    let queue = Arc::new(Mutex::new(
        MAS_TABLES.iter().rev().copied().collect::<Vec<_>>(),
    ));
    let mut workers = Vec::new();
    for _ in 0..jobs.max(1) {
        let (src, dst) = (server.connect(db).await?, server.connect(db).await?);
        let queue = queue.clone();
        workers.push(tokio::spawn(async move {
            let mut rows = 0;
            loop {
                let next = queue
                    .lock()
                    .map_err(|_| anyhow::anyhow!("queue poisoned"))?
                    .pop();
                let Some(table) = next else {
                    return Ok::<u64, anyhow::Error>(rows);
                };
                rows += copy_one(&src, &dst, table).await?;
            }
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await??;
    }
    Ok(total)
}

async fn copy_one(src: &Client, dst: &Client, table: &str) -> Result<u64> {
    let out = format!(
        "COPY (SELECT * FROM {}) TO STDOUT (FORMAT binary)",
        quote_ident(table)
    );
    let into = format!(
        "COPY {} FROM STDIN (FORMAT binary)",
        quote_ident(&copy_name(table))
    );
    let stream = src.copy_out(&out).await.with_context(|| out.clone())?;
    let sink = dst.copy_in(&into).await.with_context(|| into.clone())?;
    futures::pin_mut!(stream, sink);
    while let Some(chunk) = stream.next().await {
        sink.send(chunk?).await?;
    }
    Ok(sink.finish().await?)
}

/// The real tables' PK/unique constraints, then plain indexes, then FK/check constraints,
/// rewritten to the copies' names.
async fn rebuild_statements(client: &Client) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut indexes = Vec::new();
    let mut others = Vec::new();
    for (n, table) in MAS_TABLES.iter().enumerate() {
        let constraints = client
            .query(
                "SELECT contype::text, pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE conrelid = $1::text::regclass AND contype IN ('p', 'u', 'f', 'c', 'x') ORDER BY conname",
                &[table],
            )
            .await?;
        for (k, row) in constraints.iter().enumerate() {
            let (kind, def): (String, String) = (row.get(0), row.get(1));
            let sql = format!(
                "ALTER TABLE {} ADD CONSTRAINT floor_c{n}_{k} {}",
                quote_ident(&copy_name(table)),
                rewrite_references(&def)
            );
            let list = if kind == "p" || kind == "u" {
                &mut keys
            } else {
                &mut others
            };
            list.push(sql);
        }
        let plain = client
            .query(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1 \
                 AND indexname NOT IN (SELECT conname FROM pg_constraint WHERE conrelid = $1::text::regclass) \
                 ORDER BY indexname",
                &[table],
            )
            .await?;
        for (k, row) in plain.iter().enumerate() {
            indexes.push(rewrite_index(
                &row.get::<_, String>(0),
                &format!("floor_i{n}_{k}"),
                table,
            ));
        }
    }
    keys.extend(indexes);
    keys.extend(others);
    Ok(keys)
}

/// `CREATE [UNIQUE] INDEX name ON [ONLY] [schema.]table USING …` with a new name and table.
fn rewrite_index(def: &str, new_name: &str, table: &str) -> String {
    let mut words: Vec<String> = def.split(' ').map(str::to_string).collect();
    if let Some(i) = words.iter().position(|w| w == "INDEX") {
        words[i + 1] = new_name.to_string();
    }
    if let Some(mut i) = words.iter().position(|w| w == "ON") {
        i += 1;
        if words[i] == "ONLY" {
            i += 1;
        }
        let (schema, _) = words[i].rsplit_once('.').unwrap_or(("", ""));
        let prefix = if schema.is_empty() {
            String::new()
        } else {
            format!("{schema}.")
        };
        words[i] = format!("{prefix}{}", quote_ident(&copy_name(table)));
    }
    words.join(" ")
}

/// Points `REFERENCES [schema.]t(` at `floor_t` when `t` is one of the copied tables.
fn rewrite_references(def: &str) -> String {
    let Some(at) = def.find("REFERENCES ") else {
        return def.to_string();
    };
    let start = at + "REFERENCES ".len();
    let end = def[start..].find('(').map_or(def.len(), |e| start + e);
    let target = def[start..end].trim();
    let bare = target
        .rsplit('.')
        .next()
        .unwrap_or(target)
        .trim_matches('"');
    if !MAS_TABLES.contains(&bare) {
        return def.to_string();
    }
    format!(
        "{}{}{}",
        &def[..start],
        quote_ident(&copy_name(bare)),
        &def[end..]
    )
}
