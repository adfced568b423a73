//! One binary `COPY … FROM STDIN` per shadow table, fed with bodies encoded by the workers.

use anyhow::Context;
use bytes::Bytes;
use futures::SinkExt;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::shadow::shadow_name;
use super::tables::Target;
use crate::db::copy_binary::{TRAILER, header};

/// Copies every body received on `rx` into `target`'s shadow table; returns the rows the server
/// says it stored. The COPY starts with the first body, so a table no stage writes to is never
/// touched, and ends when every sender is dropped.
pub async fn run(
    client: Client,
    target: Target,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> anyhow::Result<u64> {
    let Some(first) = rx.recv().await else {
        return Ok(0);
    };
    let sql = format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        shadow_name(target),
        target.columns().join(", ")
    );
    let what = || format!("writing MAS `{}`", target.name());
    let sink = client.copy_in::<_, Bytes>(&sql).await.with_context(what)?;
    futures::pin_mut!(sink);
    sink.feed(Bytes::from(header())).await.with_context(what)?;
    sink.feed(Bytes::from(first)).await.with_context(what)?;
    while let Some(body) = rx.recv().await {
        sink.feed(Bytes::from(body)).await.with_context(what)?;
    }
    sink.feed(Bytes::from_static(TRAILER))
        .await
        .with_context(what)?;
    let rows = sink.as_mut().finish().await.with_context(what)?;
    Ok(rows)
}
