//! PostgreSQL's binary COPY format, both directions, on whole buffers of many rows.
//!
//! tokio-postgres ships a row-at-a-time binary COPY codec that allocates per row and per field;
//! syn2mas moves millions of rows, so it decodes a large chunk of rows into field slices that
//! borrow the chunk, and encodes MAS rows straight into one growing buffer per batch. The format
//! (header, tuples of length-prefixed fields, `-1` trailer) is documented in the PostgreSQL manual
//! under "COPY — Binary Format".
//!
//! Both directions stay in one file (~530 lines, half of them tests) because the decoder's tests
//! are round trips through the encoder.

use std::net::IpAddr;

/// The fixed 11-byte signature that starts every binary COPY stream.
pub const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Seconds between the Unix epoch and PostgreSQL's timestamp epoch (2000-01-01 UTC).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// Why a binary COPY buffer could not be decoded. These mean the server sent something other
/// than the query's columns, which is a bug or a schema surprise, never bad user data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("binary COPY stream does not start with the PGCOPY signature")]
    BadSignature,
    #[error("binary COPY header uses unsupported flags {0:#x}")]
    UnsupportedFlags(i32),
    #[error("binary COPY row has {got} fields, expected {expected}")]
    FieldCount { expected: usize, got: i16 },
    #[error("binary COPY field has invalid length {0}")]
    BadLength(i32),
    #[error("binary COPY data ends in the middle of a row")]
    Truncated,
    #[error("data after the binary COPY trailer")]
    TrailingData,
}

/// Length of the stream header if `buf` starts with a complete one, `Ok(None)` if more bytes are
/// needed.
pub fn header_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    const FIXED: usize = 11 + 4 + 4;
    if buf.len() < SIGNATURE.len() {
        return if SIGNATURE.starts_with(buf) {
            Ok(None)
        } else {
            Err(DecodeError::BadSignature)
        };
    }
    if &buf[..11] != SIGNATURE {
        return Err(DecodeError::BadSignature);
    }
    if buf.len() < FIXED {
        return Ok(None);
    }
    let flags = read_i32(&buf[11..15]);
    // Bit 16 is "OIDs included"; the lower 16 bits are critical flags we would not understand.
    if flags & 0x0001_ffff != 0 {
        return Err(DecodeError::UnsupportedFlags(flags));
    }
    let ext = read_i32(&buf[15..19]);
    if ext < 0 {
        return Err(DecodeError::BadLength(ext));
    }
    let total = FIXED + ext as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Where a scan of tuples stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Bytes of complete tuples from the start of the buffer.
    pub complete: usize,
    /// Number of complete tuples in those bytes.
    pub rows: usize,
    /// The `-1` trailer was found right after them.
    pub trailer: bool,
}

/// Finds how many whole tuples `buf` holds, so a reader can hand only complete rows to the
/// decoder however the server split its messages.
pub fn scan_tuples(buf: &[u8], fields: usize) -> Result<Scan, DecodeError> {
    let mut pos = 0;
    let mut rows = 0;
    loop {
        if buf.len() < pos + 2 {
            return Ok(Scan {
                complete: pos,
                rows,
                trailer: false,
            });
        }
        let n = read_i16(&buf[pos..pos + 2]);
        if n == -1 {
            return Ok(Scan {
                complete: pos,
                rows,
                trailer: true,
            });
        }
        if n as usize != fields || n < 0 {
            return Err(DecodeError::FieldCount {
                expected: fields,
                got: n,
            });
        }
        let mut p = pos + 2;
        let mut whole = true;
        for _ in 0..fields {
            if buf.len() < p + 4 {
                whole = false;
                break;
            }
            let len = read_i32(&buf[p..p + 4]);
            p += 4;
            if len >= 0 {
                p += len as usize;
            } else if len != -1 {
                return Err(DecodeError::BadLength(len));
            }
            if p > buf.len() {
                whole = false;
                break;
            }
        }
        if !whole {
            return Ok(Scan {
                complete: pos,
                rows,
                trailer: false,
            });
        }
        pos = p;
        rows += 1;
    }
}

/// Decodes a buffer of complete tuples (no header, no trailer) into field slices, `fields` per
/// row, row-major. `None` is SQL NULL.
pub fn decode_rows<'a>(
    buf: &'a [u8],
    fields: usize,
    out: &mut Vec<Option<&'a [u8]>>,
) -> Result<usize, DecodeError> {
    let mut pos = 0;
    let mut rows = 0;
    while pos < buf.len() {
        let n = read_i16(buf.get(pos..pos + 2).ok_or(DecodeError::Truncated)?);
        if n == -1 {
            return Err(DecodeError::TrailingData);
        }
        if n < 0 || n as usize != fields {
            return Err(DecodeError::FieldCount {
                expected: fields,
                got: n,
            });
        }
        pos += 2;
        for _ in 0..fields {
            let len = read_i32(buf.get(pos..pos + 4).ok_or(DecodeError::Truncated)?);
            pos += 4;
            if len == -1 {
                out.push(None);
            } else if len < 0 {
                return Err(DecodeError::BadLength(len));
            } else {
                let end = pos + len as usize;
                out.push(Some(buf.get(pos..end).ok_or(DecodeError::Truncated)?));
                pos = end;
            }
        }
        rows += 1;
    }
    Ok(rows)
}

/// The length of the tuple at the start of `buf`, and its first `out.len()` fields in `out`
/// (`None`: NULL): what a router needs of a tuple, without decoding the rest.
pub fn tuple_fields<'a>(
    buf: &'a [u8],
    fields: usize,
    out: &mut [Option<&'a [u8]>],
) -> Result<usize, DecodeError> {
    let n = read_i16(buf.get(..2).ok_or(DecodeError::Truncated)?);
    if n < 1 || n as usize != fields {
        return Err(DecodeError::FieldCount {
            expected: fields,
            got: n,
        });
    }
    let mut pos = 2;
    for i in 0..fields {
        let len = read_i32(buf.get(pos..pos + 4).ok_or(DecodeError::Truncated)?);
        pos += 4;
        let value = if len == -1 {
            None
        } else if len < 0 {
            return Err(DecodeError::BadLength(len));
        } else {
            let end = pos + len as usize;
            let value = buf.get(pos..end).ok_or(DecodeError::Truncated)?;
            pos = end;
            Some(value)
        };
        if let Some(slot) = out.get_mut(i) {
            *slot = value;
        }
    }
    Ok(pos)
}

fn read_i16(b: &[u8]) -> i16 {
    i16::from_be_bytes([b[0], b[1]])
}

fn read_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Why a field's bytes do not hold the value its column type promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("unexpected NULL")]
    Null,
    #[error("expected {expected} bytes, got {got}")]
    Width { expected: usize, got: usize },
    #[error("text is not valid UTF-8")]
    Utf8,
}

/// Typed readers for the binary representation of the column types syn2mas reads.
pub mod field {
    use super::FieldError;

    pub fn text(f: Option<&[u8]>) -> Result<&str, FieldError> {
        opt_text(f)?.ok_or(FieldError::Null)
    }

    pub fn opt_text(f: Option<&[u8]>) -> Result<Option<&str>, FieldError> {
        f.map(|b| std::str::from_utf8(b).map_err(|_| FieldError::Utf8))
            .transpose()
    }

    /// A non-NULL text value syn2mas only copies into MAS, not checked for UTF-8 here (that
    /// check was ~5 % of syn2mas's CPU): Synapse's database is UTF8 (`check` refuses another
    /// encoding, E-synapse-encoding), so PostgreSQL only sends valid UTF-8, and MAS's server
    /// verifies every text value of a COPY again anyway.
    pub fn text_bytes(f: Option<&[u8]>) -> Result<&[u8], FieldError> {
        f.ok_or(FieldError::Null)
    }

    pub fn int8(f: Option<&[u8]>) -> Result<i64, FieldError> {
        opt_int8(f)?.ok_or(FieldError::Null)
    }

    pub fn opt_int8(f: Option<&[u8]>) -> Result<Option<i64>, FieldError> {
        f.map(|b| fixed::<8>(b).map(i64::from_be_bytes)).transpose()
    }

    pub fn bool(f: Option<&[u8]>) -> Result<bool, FieldError> {
        opt_bool(f)?.ok_or(FieldError::Null)
    }

    pub fn opt_bool(f: Option<&[u8]>) -> Result<Option<bool>, FieldError> {
        f.map(|b| fixed::<1>(b).map(|[v]| v != 0)).transpose()
    }

    fn fixed<const N: usize>(b: &[u8]) -> Result<[u8; N], FieldError> {
        b.try_into().map_err(|_| FieldError::Width {
            expected: N,
            got: b.len(),
        })
    }
}

/// Builds the body of a binary COPY FROM stream: rows only. The writer sends `header()` once
/// before the first body buffer and `TRAILER` after the last, so bodies built in parallel by
/// different workers can be sent in any order.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
    rows: u64,
}

/// The end-of-data marker of a binary COPY stream.
pub const TRAILER: &[u8] = &[0xff, 0xff];

/// The header of a binary COPY stream: signature, no flags, no extension.
pub fn header() -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.extend_from_slice(&0i32.to_be_bytes());
    h.extend_from_slice(&0i32.to_be_bytes());
    h
}

/// A timestamp out of PostgreSQL's `timestamptz` range (4713 BC to 294276 AD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timestamp {0} ms is outside PostgreSQL's timestamp range")]
pub struct TimestampRange(pub i64);

/// Microseconds since 2000-01-01 for a Unix time in milliseconds, refusing values PostgreSQL
/// would reject (so the error names our row instead of failing the whole COPY).
pub fn pg_micros_from_unix_ms(ms: i64) -> Result<i64, TimestampRange> {
    // PostgreSQL's limits: MIN_TIMESTAMP / END_TIMESTAMP in microseconds since 2000-01-01.
    const MIN: i64 = -211_813_488_000_000_000;
    const END: i64 = 9_223_371_331_200_000_000;
    ms.checked_sub(PG_EPOCH_UNIX_SECS * 1000)
        .and_then(|v| v.checked_mul(1000))
        .filter(|v| (MIN..END).contains(v))
        .ok_or(TimestampRange(ms))
}

impl Encoder {
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            rows: 0,
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    pub fn row(&mut self, fields: i16) -> &mut Self {
        self.rows += 1;
        self.buf.extend_from_slice(&fields.to_be_bytes());
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
        self
    }

    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf
            .extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        self.buf.extend_from_slice(bytes);
        self
    }

    pub fn uuid(&mut self, v: u128) -> &mut Self {
        self.raw(&v.to_be_bytes())
    }

    pub fn opt_uuid(&mut self, v: Option<u128>) -> &mut Self {
        match v {
            Some(v) => self.uuid(v),
            None => self.null(),
        }
    }

    /// A `text` value: a `&str`, or bytes read from Synapse and passed through undecoded
    /// (`field::text_bytes`).
    pub fn text(&mut self, v: impl AsRef<[u8]>) -> &mut Self {
        self.raw(v.as_ref())
    }

    pub fn opt_text(&mut self, v: Option<impl AsRef<[u8]>>) -> &mut Self {
        match v {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.raw(&[v as u8])
    }

    pub fn int4(&mut self, v: i32) -> &mut Self {
        self.raw(&v.to_be_bytes())
    }

    /// `timestamptz` from microseconds since 2000-01-01 (see `pg_micros_from_unix_ms`).
    pub fn timestamptz(&mut self, pg_micros: i64) -> &mut Self {
        self.raw(&pg_micros.to_be_bytes())
    }

    pub fn opt_timestamptz(&mut self, pg_micros: Option<i64>) -> &mut Self {
        match pg_micros {
            Some(v) => self.timestamptz(v),
            None => self.null(),
        }
    }

    /// `inet` as a host address (/32 or /128), the way PostgreSQL's inet_send lays it out.
    pub fn inet(&mut self, ip: IpAddr) -> &mut Self {
        // PGSQL_AF_INET is AF_INET (2); PGSQL_AF_INET6 is AF_INET + 1, whatever the OS says.
        let mut b = [0u8; 20];
        let len = match ip {
            IpAddr::V4(v4) => {
                b[..4].copy_from_slice(&[2, 32, 0, 4]);
                b[4..8].copy_from_slice(&v4.octets());
                8
            }
            IpAddr::V6(v6) => {
                b[..4].copy_from_slice(&[3, 128, 0, 16]);
                b[4..20].copy_from_slice(&v6.octets());
                20
            }
        };
        self.raw(&b[..len])
    }

    pub fn opt_inet(&mut self, ip: Option<IpAddr>) -> &mut Self {
        match ip {
            Some(ip) => self.inet(ip),
            None => self.null(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(body: &[u8]) -> Vec<u8> {
        let mut v = header();
        v.extend_from_slice(body);
        v.extend_from_slice(TRAILER);
        v
    }

    #[test]
    fn encoded_rows_decode_back() {
        let mut e = Encoder::default();
        e.row(3).text("héllo").null().bool(true);
        e.row(3).text("").int4(7).bool(false);
        assert_eq!(e.rows(), 2);
        let body = e.into_bytes();
        let all = stream(&body);
        let h = header_len(&all).unwrap().unwrap();
        assert_eq!(h, 19);
        let scan = scan_tuples(&all[h..], 3).unwrap();
        assert_eq!(scan.rows, 2);
        assert!(scan.trailer);
        let mut fields = Vec::new();
        let rows = decode_rows(&all[h..h + scan.complete], 3, &mut fields).unwrap();
        assert_eq!(rows, 2);
        assert_eq!(field::text(fields[0]).unwrap(), "héllo");
        assert_eq!(fields[1], None);
        assert!(field::bool(fields[2]).unwrap());
        assert_eq!(field::text(fields[3]).unwrap(), "");
        assert_eq!(fields[4], Some(&7i32.to_be_bytes()[..]));
        assert!(!field::bool(fields[5]).unwrap());
    }

    #[test]
    fn scan_stops_at_a_partial_row() {
        let mut e = Encoder::default();
        e.row(1).text("abc");
        e.row(1).text("defgh");
        let body = e.into_bytes();
        for cut in 0..body.len() {
            let scan = scan_tuples(&body[..cut], 1).unwrap();
            let first_row = 2 + 4 + 3;
            assert_eq!(scan.complete, if cut >= first_row { first_row } else { 0 });
            assert!(!scan.trailer);
        }
    }

    #[test]
    fn wrong_field_count_and_truncation_are_errors() {
        let mut e = Encoder::default();
        e.row(2).text("a").text("b");
        let body = e.into_bytes();
        let mut out = Vec::new();
        assert_eq!(
            decode_rows(&body, 3, &mut out),
            Err(DecodeError::FieldCount {
                expected: 3,
                got: 2
            })
        );
        out.clear();
        assert_eq!(
            decode_rows(&body[..body.len() - 1], 2, &mut out),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn header_is_validated() {
        assert_eq!(header_len(b"PGC"), Ok(None));
        assert_eq!(header_len(b"XX"), Err(DecodeError::BadSignature));
        let mut h = header();
        h[14] = 1;
        assert_eq!(header_len(&h), Err(DecodeError::UnsupportedFlags(1)));
    }

    #[test]
    fn typed_fields_check_widths() {
        assert_eq!(
            field::int8(Some(&[0, 1])),
            Err(FieldError::Width {
                expected: 8,
                got: 2
            })
        );
        assert_eq!(field::int8(None), Err(FieldError::Null));
        assert_eq!(field::opt_int8(None), Ok(None));
        assert_eq!(field::text(Some(&[0xff])), Err(FieldError::Utf8));
    }

    #[test]
    fn timestamps_convert_and_refuse_out_of_range() {
        assert_eq!(pg_micros_from_unix_ms(946_684_800_000), Ok(0));
        assert_eq!(pg_micros_from_unix_ms(946_684_800_001), Ok(1000));
        assert_eq!(pg_micros_from_unix_ms(0), Ok(-946_684_800_000_000));
        assert!(pg_micros_from_unix_ms(i64::MAX).is_err());
        assert!(pg_micros_from_unix_ms(i64::MIN).is_err());
    }

    #[test]
    fn inet_layout_matches_postgres() {
        let mut e = Encoder::default();
        e.inet("1.2.3.4".parse().unwrap());
        assert_eq!(e.into_bytes(), vec![0, 0, 0, 8, 2, 32, 0, 4, 1, 2, 3, 4]);
        let mut e = Encoder::default();
        e.inet("::1".parse().unwrap());
        let b = e.into_bytes();
        assert_eq!(&b[..8], &[0, 0, 0, 20, 3, 128, 0, 16]);
        assert_eq!(b[23], 1);
    }
}
