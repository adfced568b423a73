//! The binary COPY decoder on arbitrary bytes: the first byte picks the number of fields per
//! row, the rest is the stream. Nothing may panic, and whatever `scan_tuples` calls complete
//! rows `decode_rows` must decode into exactly that many rows.

#![no_main]

use libfuzzer_sys::fuzz_target;
use syn2mas::db::copy_binary::{decode_rows, field, header_len, scan_tuples};

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let fields = usize::from(first % 24);

    // As the reader does: a header, then tuples after it.
    let body = match header_len(stream) {
        Ok(Some(h)) => {
            assert!(h >= 19 && h <= stream.len());
            &stream[h..]
        }
        Ok(None) | Err(_) => stream,
    };

    if let Ok(scan) = scan_tuples(body, fields) {
        assert!(scan.complete <= body.len());
        let mut out = Vec::new();
        let rows = decode_rows(&body[..scan.complete], fields, &mut out);
        assert_eq!(rows, Ok(scan.rows), "scan and decode disagree");
        assert_eq!(out.len(), scan.rows * fields);
    }

    let mut out = Vec::new();
    let _ = decode_rows(body, fields, &mut out);
    for f in out {
        let _ = field::opt_text(f);
        let _ = field::opt_int8(f);
        let _ = field::opt_bool(f);
    }
});
