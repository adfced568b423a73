//! Property tests of the binary COPY codec (`syn2mas::db::copy_binary`), no database needed:
//!
//! * any rows built with `Encoder` come back field for field through `header_len`,
//!   `scan_tuples` and `decode_rows`, however the stream is cut into pieces;
//! * arbitrary bytes never make `header_len`, `scan_tuples`, `decode_rows` or the typed field
//!   readers panic, and whatever `scan_tuples` accepts as complete rows `decode_rows` decodes
//!   into exactly that many rows;
//! * the Unix-ms → PostgreSQL-µs conversion never panics and only accepts what PostgreSQL
//!   accepts.

use std::net::IpAddr;

use proptest::prelude::*;
use syn2mas::db::copy_binary::{
    DecodeError, Encoder, TRAILER, decode_rows, field, header, header_len, pg_micros_from_unix_ms,
    scan_tuples,
};

/// One value of a column type syn2mas writes.
#[derive(Debug, Clone)]
enum Value {
    Null,
    Text(String),
    Bool(bool),
    Int4(i32),
    Uuid(u128),
    Timestamptz(i64),
    Inet(IpAddr),
}

impl Value {
    fn encode(&self, e: &mut Encoder) {
        match self {
            Value::Null => e.null(),
            Value::Text(s) => e.text(s),
            Value::Bool(b) => e.bool(*b),
            Value::Int4(v) => e.int4(*v),
            Value::Uuid(v) => e.uuid(*v),
            Value::Timestamptz(v) => e.timestamptz(*v),
            Value::Inet(ip) => e.inet(*ip),
        };
    }

    /// Checks the decoded field against the value, through the typed readers where the crate
    /// has one.
    fn assert_decodes(&self, got: Option<&[u8]>) {
        match self {
            Value::Null => assert_eq!(got, None),
            Value::Text(s) => assert_eq!(field::text(got).unwrap(), s),
            Value::Bool(b) => assert_eq!(field::bool(got).unwrap(), *b),
            Value::Int4(v) => assert_eq!(got.unwrap(), &v.to_be_bytes()[..]),
            Value::Uuid(v) => assert_eq!(got.unwrap(), &v.to_be_bytes()[..]),
            Value::Timestamptz(v) => assert_eq!(field::int8(got).unwrap(), *v),
            Value::Inet(ip) => {
                let b = got.unwrap();
                match ip {
                    IpAddr::V4(v4) => {
                        assert_eq!(&b[..4], &[2, 32, 0, 4]);
                        assert_eq!(&b[4..], &v4.octets()[..]);
                    }
                    IpAddr::V6(v6) => {
                        assert_eq!(&b[..4], &[3, 128, 0, 16]);
                        assert_eq!(&b[4..], &v6.octets()[..]);
                    }
                }
            }
        }
    }
}

/// Text as Synapse rows hold it: any Unicode scalar except NUL (PostgreSQL `text` cannot hold
/// NUL), with control characters and 4-byte characters well represented, sometimes long.
fn text() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        4 => any::<char>().prop_filter("no NUL in PostgreSQL text", |c| *c != '\0'),
        1 => (1u32..0x20).prop_map(|c| char::from_u32(c).unwrap()),
        1 => prop::sample::select(vec!['😀', '𝄞', '🏳', '\u{10FFFF}', '\u{FEFF}', '\u{202E}']),
        1 => prop::sample::select(vec!['\'', '"', '\\', '%', '_', ';', ':', '@', '\n', '\r']),
    ];
    prop_oneof![
        8 => prop::collection::vec(ch.clone(), 0..40).prop_map(|v| v.into_iter().collect()),
        1 => (ch, 1000usize..70_000).prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        text().prop_map(Value::Text),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::Int4),
        any::<u128>().prop_map(Value::Uuid),
        any::<i64>().prop_map(Value::Timestamptz),
        any::<[u8; 4]>().prop_map(|b| Value::Inet(IpAddr::from(b))),
        any::<[u8; 16]>().prop_map(|b| Value::Inet(IpAddr::from(b))),
    ]
}

/// Rows of one width (a COPY stream has a fixed number of columns).
fn rows() -> impl Strategy<Value = Vec<Vec<Value>>> {
    (0usize..12)
        .prop_flat_map(|width| prop::collection::vec(prop::collection::vec(value(), width), 0..20))
}

fn encode(rows: &[Vec<Value>], width: usize) -> Vec<u8> {
    let mut e = Encoder::default();
    for row in rows {
        e.row(width as i16);
        for v in row {
            v.encode(&mut e);
        }
    }
    assert_eq!(e.rows(), rows.len() as u64);
    assert_eq!(e.is_empty(), rows.is_empty());
    e.into_bytes()
}

fn width_of(rows: &[Vec<Value>]) -> usize {
    rows.first().map_or(0, Vec::len)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn encoded_rows_decode_back_identically(rows in rows()) {
        let width = width_of(&rows);
        let body = encode(&rows, width);
        let mut stream = header();
        stream.extend_from_slice(&body);
        stream.extend_from_slice(TRAILER);

        let h = header_len(&stream).unwrap().unwrap();
        prop_assert_eq!(h, 19);
        let scan = scan_tuples(&stream[h..], width).unwrap();
        prop_assert_eq!(scan.rows, rows.len());
        prop_assert_eq!(scan.complete, body.len());
        prop_assert!(scan.trailer);

        let mut out = Vec::new();
        let n = decode_rows(&stream[h..h + scan.complete], width, &mut out).unwrap();
        prop_assert_eq!(n, rows.len());
        prop_assert_eq!(out.len(), rows.len() * width);
        for (row, got) in rows.iter().zip(out.chunks(width.max(1))) {
            for (v, f) in row.iter().zip(got) {
                v.assert_decodes(*f);
            }
        }
    }

    /// However the server splits its messages, `scan_tuples` only ever reports whole rows, and
    /// feeding the pieces in turn yields every row exactly once.
    #[test]
    fn any_cut_yields_only_whole_rows(rows in rows(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let width = width_of(&rows);
        let body = encode(&rows, width);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
        points.push(body.len());
        points.sort_unstable();
        let mut start = 0;
        let mut seen = 0;
        for p in points {
            let scan = scan_tuples(&body[start..p.max(start)], width).unwrap();
            prop_assert!(!scan.trailer);
            let mut out = Vec::new();
            let n = decode_rows(&body[start..start + scan.complete], width, &mut out).unwrap();
            prop_assert_eq!(n, scan.rows);
            seen += n;
            start += scan.complete;
        }
        prop_assert_eq!(start, body.len());
        prop_assert_eq!(seen, rows.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512), fields in 0usize..40) {
        let _ = header_len(&bytes);
        if let Ok(scan) = scan_tuples(&bytes, fields) {
            prop_assert!(scan.complete <= bytes.len());
            let mut out = Vec::new();
            // What the scan calls complete rows must decode, to exactly that many rows.
            let n = decode_rows(&bytes[..scan.complete], fields, &mut out);
            prop_assert_eq!(n, Ok(scan.rows));
            prop_assert_eq!(out.len(), scan.rows * fields);
        }
        let mut out = Vec::new();
        let _ = decode_rows(&bytes, fields, &mut out);
        for f in out {
            let _ = field::text(f);
            let _ = field::opt_int8(f);
            let _ = field::opt_bool(f);
        }
    }

    /// Bytes that start like a real stream (valid header, plausible tuple headers) reach the
    /// deeper branches of the decoder more often than uniform noise does.
    #[test]
    fn corrupted_streams_never_panic(rows in rows(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let width = width_of(&rows);
        let mut stream = header();
        stream.extend_from_slice(&encode(&rows, width));
        stream.extend_from_slice(TRAILER);
        for (i, b) in flips {
            let at = i.index(stream.len());
            stream[at] = b;
        }
        match header_len(&stream) {
            Ok(Some(h)) if h <= stream.len() => {
                if let Ok(scan) = scan_tuples(&stream[h..], width) {
                    let mut out = Vec::new();
                    let n = decode_rows(&stream[h..h + scan.complete], width, &mut out);
                    prop_assert_eq!(n, Ok(scan.rows));
                }
                let mut out = Vec::new();
                let _ = decode_rows(&stream[h..], width, &mut out);
            }
            Ok(_) => {}
            Err(e) => prop_assert!(matches!(
                e,
                DecodeError::BadSignature | DecodeError::UnsupportedFlags(_) | DecodeError::BadLength(_)
            )),
        }
    }

    #[test]
    fn header_len_accepts_every_prefix_of_a_valid_header(ext in prop::collection::vec(any::<u8>(), 0..64), cut in any::<prop::sample::Index>()) {
        let mut h = header();
        h[15..19].copy_from_slice(&(ext.len() as i32).to_be_bytes());
        h.extend_from_slice(&ext);
        let at = cut.index(h.len());
        prop_assert_eq!(header_len(&h[..at]), Ok(None));
        prop_assert_eq!(header_len(&h), Ok(Some(19 + ext.len())));
    }

    #[test]
    fn timestamps_convert_exactly_or_are_refused(ms in prop_oneof![
        any::<i64>(),
        Just(0i64), Just(-1i64), Just(i64::MIN), Just(i64::MAX),
        // Year 3000, 4713 BC and the edges of PostgreSQL's range.
        Just(32_503_680_000_000i64), Just(-210_866_803_200_000i64),
        Just(9_224_318_015_999_999i64), Just(9_224_318_016_000_000i64),
        -300_000_000_000_000i64..10_000_000_000_000_000i64,
    ]) {
        match pg_micros_from_unix_ms(ms) {
            Ok(us) => {
                prop_assert_eq!(us / 1000 + 946_684_800_000, ms);
                prop_assert!((-211_813_488_000_000_000..9_223_371_331_200_000_000).contains(&us));
            }
            Err(e) => prop_assert_eq!(e.0, ms),
        }
    }
}
