//! One binary `COPY … FROM STDIN` per shadow table, fed with bodies encoded by the workers.

use anyhow::Context;
use bytes::Bytes;
use futures::SinkExt;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::shadow::{create_shadow_sql, shadow_name};
use super::tables::Target;
use crate::db::copy_binary::{TRAILER, header};

/// Creates `target`'s shadow table and copies every body received on `rx` into it, in one
/// transaction; returns the rows the server says it stored. Creating the table in the COPY's
/// own transaction allows `FREEZE`: rows are stored frozen, so the index builds that read them
/// next do not have to rewrite every page to set hint bits, and a run killed mid-load leaves
/// no table behind. Ends when every sender is dropped.
pub async fn run(
    client: Client,
    target: Target,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> anyhow::Result<u64> {
    let what = || format!("writing MAS `{}`", target.name());
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .with_context(what)?
        .get(0);
    client
        .batch_execute(&format!("BEGIN; {}", create_shadow_sql(target, version)))
        .await
        .with_context(what)?;
    let Some(first) = rx.recv().await else {
        client
            .batch_execute("COMMIT")
            .await
            .map_err(crate::db::without_detail)
            .with_context(what)?;
        return Ok(0);
    };
    let sql = format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary, FREEZE)",
        shadow_name(target),
        target.columns().join(", ")
    );
    let sink = client
        .copy_in::<_, Bytes>(&sql)
        .await
        .map_err(crate::db::without_detail)
        .with_context(what)?;
    futures::pin_mut!(sink);
    sink.feed(Bytes::from(header()))
        .await
        .map_err(crate::db::without_detail)
        .with_context(what)?;
    sink.feed(Bytes::from(first))
        .await
        .map_err(crate::db::without_detail)
        .with_context(what)?;
    while let Some(body) = rx.recv().await {
        sink.feed(Bytes::from(body))
            .await
            .map_err(crate::db::without_detail)
            .with_context(what)?;
    }
    sink.feed(Bytes::from_static(TRAILER))
        .await
        .with_context(what)?;
    let rows = sink
        .as_mut()
        .finish()
        .await
        .map_err(crate::db::without_detail)
        .with_context(what)?;
    client
        .batch_execute("COMMIT")
        .await
        .map_err(crate::db::without_detail)
        .with_context(what)?;
    Ok(rows)
}
