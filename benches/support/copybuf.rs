//! Rows in PostgreSQL's COPY text format, written straight into a byte buffer.
//!
//! Each table's generator writes every column it knows; columns the target schema lacks (the
//! project's reduced fixture schema, say) are dropped here by a per-column mask.

/// Flush to the server once a buffer holds this much.
pub const CHUNK_BYTES: usize = 1 << 20;

pub struct CopyBuf {
    pub data: Vec<u8>,
    present: Vec<bool>,
    col: usize,
    started: bool,
    pub rows: u64,
}

impl CopyBuf {
    pub fn new(present: Vec<bool>) -> Self {
        CopyBuf {
            data: Vec::with_capacity(CHUNK_BYTES + 64 * 1024),
            present,
            col: 0,
            started: false,
            rows: 0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.data.len() >= CHUNK_BYTES
    }

    /// Hands the filled bytes over and starts a new chunk.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.data, Vec::with_capacity(CHUNK_BYTES + 64 * 1024))
    }

    /// The buffer positioned for the next column's value, or `None` when the column is masked.
    fn slot(&mut self) -> Option<&mut Vec<u8>> {
        let col = self.col;
        self.col += 1;
        if !self.present[col] {
            return None;
        }
        if self.started {
            self.data.push(b'\t');
        }
        self.started = true;
        Some(&mut self.data)
    }

    pub fn null(&mut self) {
        if let Some(b) = self.slot() {
            b.extend_from_slice(b"\\N");
        }
    }

    pub fn int(&mut self, v: i64) {
        if let Some(b) = self.slot() {
            push_int(b, v);
        }
    }

    pub fn opt_int(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.int(v),
            None => self.null(),
        }
    }

    pub fn bool(&mut self, v: bool) {
        if let Some(b) = self.slot() {
            b.push(if v { b't' } else { b'f' });
        }
    }

    pub fn opt_bool(&mut self, v: Option<bool>) {
        match v {
            Some(v) => self.bool(v),
            None => self.null(),
        }
    }

    /// Text that may need COPY escaping.
    pub fn text(&mut self, s: &str) {
        if let Some(b) = self.slot() {
            push_escaped(b, s.as_bytes());
        }
    }

    pub fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => self.null(),
        }
    }

    /// A value the closure writes itself; it must not contain tab, newline, CR or backslash.
    pub fn with(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        if let Some(b) = self.slot() {
            f(b);
        }
    }

    pub fn end_row(&mut self) {
        debug_assert_eq!(
            self.col,
            self.present.len(),
            "row has the wrong number of columns"
        );
        self.data.push(b'\n');
        self.col = 0;
        self.started = false;
        self.rows += 1;
    }
}

fn push_escaped(out: &mut Vec<u8>, s: &[u8]) {
    for &c in s {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(c),
        }
    }
}

/// Decimal digits of `v`, without going through `fmt`.
pub fn push_int(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    let mut n = v.unsigned_abs();
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Zero-padded decimal of `v` in exactly `width` digits (higher digits are dropped).
pub fn push_padded(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for i in (0..width).rev() {
        out[start + i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
}
