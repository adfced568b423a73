//! Streams one entity's rows out of Synapse as chunks of complete binary COPY tuples.

use anyhow::{Context, bail};
use bytes::{Buf, Bytes, BytesMut};
use futures::TryStreamExt;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::db::copy_binary::{header_len, scan_tuples};

/// Target size of one chunk handed to a transform worker: large enough that per-chunk costs
/// vanish, small enough that a few in flight keep memory flat.
pub const CHUNK_BYTES: usize = 512 << 10;

/// A run of complete tuples of one entity.
#[derive(Debug)]
pub struct Chunk {
    pub bytes: Bytes,
    pub rows: usize,
}

/// Runs `COPY (sql) TO STDOUT (FORMAT binary)` (`fields` columns) and sends complete-row
/// chunks to `tx`; `what` names the read in errors. Returns the number of rows read. Stops
/// early (Ok) if the receiver went away, because then the pipeline is already failing for a
/// reason reported elsewhere.
pub async fn stream(
    client: &Client,
    sql: &str,
    fields: usize,
    what: &str,
    tx: mpsc::Sender<Chunk>,
) -> anyhow::Result<u64> {
    let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
    let stream = client
        .copy_out(&copy)
        .await
        .with_context(|| format!("reading Synapse's `{what}`"))?;
    futures::pin_mut!(stream);
    let mut buf = BytesMut::with_capacity(CHUNK_BYTES + (64 << 10));
    let mut header_done = false;
    let mut total = 0u64;
    let mut finished = false;
    while let Some(msg) = stream
        .try_next()
        .await
        .with_context(|| format!("reading Synapse's `{what}`"))?
    {
        if finished {
            bail!("data after the end of Synapse's `{what}` COPY stream");
        }
        buf.extend_from_slice(&msg);
        if !header_done {
            match header_len(&buf)? {
                Some(h) => {
                    buf.advance(h);
                    header_done = true;
                }
                None => continue,
            }
        }
        if buf.len() >= CHUNK_BYTES {
            let Some((sent, trailer)) = flush(&mut buf, fields, &tx).await? else {
                return Ok(total);
            };
            total += sent;
            finished = trailer;
        }
    }
    if !finished {
        let Some((sent, trailer)) = flush(&mut buf, fields, &tx).await? else {
            return Ok(total);
        };
        total += sent;
        if !trailer || !buf.is_empty() {
            bail!("Synapse's `{what}` COPY stream ended without its trailer");
        }
    }
    Ok(total)
}

/// Sends the complete tuples at the front of `buf`; consumes the trailer if it follows them.
/// `None` when the receiver is gone.
async fn flush(
    buf: &mut BytesMut,
    fields: usize,
    tx: &mpsc::Sender<Chunk>,
) -> anyhow::Result<Option<(u64, bool)>> {
    let scan = scan_tuples(buf, fields)?;
    let rows = scan.rows;
    if rows > 0 {
        let bytes = buf.split_to(scan.complete).freeze();
        if tx.send(Chunk { bytes, rows }).await.is_err() {
            return Ok(None);
        }
    }
    if scan.trailer {
        buf.advance(2);
    }
    Ok(Some((rows as u64, scan.trailer)))
}
