//! Connections to the benchmark's PostgreSQL server and running scripts on them.

use super::schema::Chunk;
use anyhow::{Context, Result};
use bytes::Bytes;
use futures::SinkExt;
use std::collections::HashSet;
use tokio_postgres::{Client, NoTls};

/// Where the benchmark databases live (trust or `.pgpass` auth; no password is handled here).
/// Also the `--host/--port/--user` flags of both bench targets.
#[derive(Clone, Debug, clap::Args)]
pub struct PgServer {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 5432)]
    pub port: u16,
    #[arg(long, default_value = "postgres")]
    pub user: String,
}

impl PgServer {
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            self.host, self.port, self.user, db
        )
    }

    /// `postgresql://user@host:port/db`, for config files. A socket directory as host is
    /// percent-encoded, as libpq URIs require.
    pub fn uri(&self, db: &str) -> String {
        format!(
            "postgresql://{}@{}:{}/{}",
            self.user,
            self.host.replace('%', "%25").replace('/', "%2F"),
            self.port,
            db
        )
    }

    pub async fn connect(&self, db: &str) -> Result<Client> {
        let (client, connection) = tokio_postgres::connect(&self.conninfo(db), NoTls)
            .await
            .with_context(|| format!("connecting to {}", self.conninfo(db)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("postgres connection error: {e}");
            }
        });
        Ok(client)
    }

    /// Drops (disconnecting anyone) and recreates `db`, C collation like Synapse requires.
    pub async fn recreate_db(&self, db: &str) -> Result<()> {
        let admin = self.connect("postgres").await?;
        let ident = quote_ident(db);
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {ident} WITH (FORCE)"))
            .await
            .with_context(|| format!("dropping database {db}"))?;
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {ident} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'"
            ))
            .await
            .with_context(|| format!("creating database {db}"))?;
        Ok(())
    }
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs chunks in order: consecutive SQL statements as one batch, COPY blocks via `copy_in`.
/// Dumps empty the `search_path`; it is reset afterwards so later statements find the tables.
pub async fn run_chunks(client: &Client, chunks: &[Chunk]) -> Result<()> {
    let mut batch = String::new();
    for chunk in chunks {
        match chunk {
            Chunk::Sql(sql) => {
                batch.push_str(sql);
                batch.push('\n');
            }
            Chunk::Copy { statement, data } => {
                flush_batch(client, &mut batch).await?;
                copy_text(
                    client,
                    statement.trim_end_matches(';'),
                    data.as_bytes().to_vec(),
                )
                .await?;
            }
        }
    }
    flush_batch(client, &mut batch).await?;
    client.batch_execute("RESET search_path").await?;
    Ok(())
}

async fn flush_batch(client: &Client, batch: &mut String) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    client
        .batch_execute(batch)
        .await
        .context("running schema statements")?;
    batch.clear();
    Ok(())
}

async fn copy_text(client: &Client, statement: &str, data: Vec<u8>) -> Result<u64> {
    let sink = client
        .copy_in(statement)
        .await
        .with_context(|| statement.to_string())?;
    futures::pin_mut!(sink);
    sink.send(Bytes::from(data)).await?;
    Ok(sink.finish().await?)
}

/// The columns `table` has in the current schema.
pub async fn columns_of(client: &Client, table: &str) -> Result<HashSet<String>> {
    let rows = client
        .query(
            "SELECT column_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
            &[&table],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
}
