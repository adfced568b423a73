//! One sorted side of a comparison: a `COPY (…) TO STDOUT (FORMAT binary)` read one row at a
//! time, with the row's fields borrowed from a buffer that is reused for the whole stream.
//!
//! The merge join needs exactly one current row per side, so this never holds more than a row
//! plus whatever the server sent ahead: memory does not grow with the table. The stream also
//! refuses rows whose key goes backwards, because a merge over misordered input would report
//! false differences (e.g. if a database did not honour `COLLATE "C"`).

use std::cmp::Ordering;
use std::ops::Range;
use std::pin::Pin;

use bytes::{Buf, BytesMut};
use futures::TryStreamExt;
use tokio_postgres::{Client, CopyOutStream};

use crate::db::copy_binary::{DecodeError, header_len};

/// Why a side could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("reading {side}'s rows for `{entity}`: {source}")]
    Query {
        side: &'static str,
        entity: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("decoding {side}'s rows for `{entity}`: {source}")]
    Decode {
        side: &'static str,
        entity: &'static str,
        #[source]
        source: DecodeError,
    },
    #[error("{side}'s rows for `{entity}` ended without the COPY trailer")]
    Truncated {
        side: &'static str,
        entity: &'static str,
    },
    #[error(
        "{side}'s rows for `{entity}` are not sorted by their key (row {row}); the two databases must order text with COLLATE \"C\" the same way"
    )]
    OutOfOrder {
        side: &'static str,
        entity: &'static str,
        row: u64,
    },
}

/// A field's place in the buffer; `None` is SQL NULL.
type Slot = Option<Range<usize>>;

pub struct RowStream {
    side: &'static str,
    entity: &'static str,
    inner: Pin<Box<CopyOutStream>>,
    buf: BytesMut,
    fields: usize,
    /// The first `keys` fields form the sort key.
    keys: usize,
    /// Fields of the current row (`buf[..row_len]`).
    slots: Vec<Slot>,
    row_len: usize,
    header_done: bool,
    finished: bool,
    rows: u64,
    /// The previous row's key (value, is-NULL), kept to check the order; buffers are reused.
    prev: Vec<(Vec<u8>, bool)>,
}

/// Outcome of trying to parse one tuple at the front of the buffer.
enum Parsed {
    Row(usize),
    Trailer,
    Incomplete,
}

impl RowStream {
    /// Starts `COPY (sql) TO STDOUT (FORMAT binary)`; rows have `fields` columns, the first
    /// `keys` of which are the sort key.
    pub async fn open(
        client: &Client,
        sql: &str,
        fields: usize,
        keys: usize,
        side: &'static str,
        entity: &'static str,
    ) -> Result<Self, StreamError> {
        let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
        let inner = client
            .copy_out(&copy)
            .await
            .map_err(|source| StreamError::Query {
                side,
                entity,
                source,
            })?;
        Ok(Self {
            side,
            entity,
            inner: Box::pin(inner),
            buf: BytesMut::with_capacity(256 << 10),
            fields,
            keys,
            slots: Vec::with_capacity(fields),
            row_len: 0,
            header_done: false,
            finished: false,
            rows: 0,
            prev: vec![(Vec::new(), true); keys],
        })
    }

    /// Moves to the next row; `false` once the stream is exhausted.
    pub async fn advance(&mut self) -> Result<bool, StreamError> {
        if self.finished {
            return Ok(false);
        }
        let had_row = self.rows > 0;
        if had_row {
            self.remember_key();
        }
        self.buf.advance(self.row_len);
        self.row_len = 0;
        loop {
            if self.header_done {
                match self.parse().map_err(|e| self.decode_error(e))? {
                    Parsed::Row(len) => {
                        self.row_len = len;
                        self.rows += 1;
                        if had_row && self.key_went_back() {
                            return Err(StreamError::OutOfOrder {
                                side: self.side,
                                entity: self.entity,
                                row: self.rows,
                            });
                        }
                        return Ok(true);
                    }
                    Parsed::Trailer => return self.finish().await.map(|()| false),
                    Parsed::Incomplete => {}
                }
            } else if let Some(h) = header_len(&self.buf).map_err(|e| self.decode_error(e))? {
                self.buf.advance(h);
                self.header_done = true;
                continue;
            }
            self.fill().await?;
        }
    }

    /// Field `i` of the current row.
    pub fn field(&self, i: usize) -> Option<&[u8]> {
        self.slots[i].clone().map(|r| &self.buf[r])
    }

    /// Rows read so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Compares the current rows' keys the way `ORDER BY … COLLATE "C" NULLS FIRST` does:
    /// field by field, NULL first, then bytes.
    pub fn cmp_key(&self, other: &RowStream) -> Ordering {
        (0..self.keys)
            .map(|i| self.field(i).cmp(&other.field(i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }

    /// The next COPY message, `None` at the end of the stream.
    async fn next_message(&mut self) -> Result<Option<bytes::Bytes>, StreamError> {
        self.inner
            .as_mut()
            .try_next()
            .await
            .map_err(|source| StreamError::Query {
                side: self.side,
                entity: self.entity,
                source,
            })
    }

    async fn fill(&mut self) -> Result<(), StreamError> {
        match self.next_message().await? {
            Some(bytes) => {
                self.buf.extend_from_slice(&bytes);
                Ok(())
            }
            None => Err(StreamError::Truncated {
                side: self.side,
                entity: self.entity,
            }),
        }
    }

    /// After the trailer nothing may follow; reads to the end of the COPY so that an error
    /// the server reports last is not lost.
    async fn finish(&mut self) -> Result<(), StreamError> {
        self.finished = true;
        self.slots.clear();
        let mut extra = self.buf.len() - 2;
        while let Some(bytes) = self.next_message().await? {
            extra += bytes.len();
        }
        if extra > 0 {
            return Err(self.decode_error(DecodeError::TrailingData));
        }
        self.buf.clear();
        Ok(())
    }

    /// Parses the tuple at the front of the buffer into `slots`.
    fn parse(&mut self) -> Result<Parsed, DecodeError> {
        let buf = &self.buf[..];
        let Some(n) = buf.get(..2) else {
            return Ok(Parsed::Incomplete);
        };
        let n = i16::from_be_bytes([n[0], n[1]]);
        if n == -1 {
            return Ok(Parsed::Trailer);
        }
        if n < 0 || n as usize != self.fields {
            return Err(DecodeError::FieldCount {
                expected: self.fields,
                got: n,
            });
        }
        self.slots.clear();
        let mut pos = 2;
        for _ in 0..self.fields {
            let Some(len) = buf.get(pos..pos + 4) else {
                return Ok(Parsed::Incomplete);
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            pos += 4;
            if len == -1 {
                self.slots.push(None);
                continue;
            }
            if len < 0 {
                return Err(DecodeError::BadLength(len));
            }
            let end = pos + len as usize;
            if end > buf.len() {
                return Ok(Parsed::Incomplete);
            }
            self.slots.push(Some(pos..end));
            pos = end;
        }
        Ok(Parsed::Row(pos))
    }

    fn remember_key(&mut self) {
        for i in 0..self.keys {
            let slot = self.slots[i].clone();
            let (bytes, null) = &mut self.prev[i];
            bytes.clear();
            *null = slot.is_none();
            if let Some(r) = slot {
                bytes.extend_from_slice(&self.buf[r]);
            }
        }
    }

    fn key_went_back(&self) -> bool {
        for (i, (bytes, null)) in self.prev.iter().enumerate() {
            let prev = (!null).then_some(&bytes[..]);
            match self.field(i).cmp(&prev) {
                Ordering::Less => return true,
                Ordering::Greater => return false,
                Ordering::Equal => {}
            }
        }
        false
    }

    fn decode_error(&self, source: DecodeError) -> StreamError {
        StreamError::Decode {
            side: self.side,
            entity: self.entity,
            source,
        }
    }
}
