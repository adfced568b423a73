//! Partitioning the devices/tokens reads into temporary files, so that syn2mas can join
//! devices, tokens and their owners itself, one partition at a time, in bounded memory.
//!
//! PostgreSQL's own join of those tables (hash joins on two text columns and a per-device
//! aggregate) cost ~13 CPU-seconds at 1M users, most of a core for the whole run; plain scans
//! of the same tables cost ~2. Rows whose keys hash alike land in the same partition of every
//! stream, so each partition joins on its own.
//!
//! Memory is bounded by what is actually read, not by estimates: no partition is loaded whole
//! unless its files hold at most [`budget`] bytes. The first split's fan-out comes from the
//! tables' size on disk (`pg_relation_size`, always current; `reltuples` is -1 on a restored
//! dump nobody analysed), and any partition whose files turn out larger is split again
//! ([`Partition::next`]) before it is loaded:
//!
//! 1. by user id again, with another hash seed, while it holds more than one user;
//! 2. then, for one user (a bot with hundreds of thousands of devices), by (user, device): a
//!    device's row and the tokens naming it stay together, tokens without a device are spread
//!    by their own id, and the user's owner row is copied into every part (it is only looked
//!    up, never mapped, in the join);
//! 3. one device with more tokens than the budget is not split: it is mapped in runs
//!    ([`Tuples`]) against its owner and device row held in memory, after a first pass that
//!    gathers the device's session times (`transform::sessions::Held`).
//!
//! No rule of the mapping looks across two devices of one user (`transform::sessions` says
//! which rows each rule needs), which is what makes step 2 exact. So every partition the join
//! holds is at most the budget, plus, in step 3, one owner row and one device row. Two
//! exceptions: a single row larger than the budget on its own is held alone, and a partition
//! still too large after `MAX_DEPTH` splits (only colliding hashes get there) is mapped in runs
//! with all of its owner and device rows held.
//!
//! The files are anonymous (`tempfile::tempfile_in`): nothing is left behind when the process
//! ends, however it ends. They live in `TMPDIR`; see [`tmpfs_warning`].

use std::fs::File;
use std::hash::Hasher as _;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::SessionRead;
use crate::db::copy_binary::{DecodeError, scan_tuples, tuple_fields};

/// Bytes of raw tuples a partition (its three files together) may hold to be joined whole.
/// A partition in memory is ~4–5 times its raw tuples (decoded rows, hash maps, MAS rows) and
/// `IN_FLIGHT` of them are joined at once: 4 MiB keeps the join within a few tens of MiB.
pub const PARTITION_BUDGET: u64 = 4 << 20;

/// The most files one split writes per read. Each has a write buffer while it is written, so
/// this bounds the spill's own memory (3 × 256 × 16 KiB = 12 MiB for the first split, whose
/// three reads stream at once); more partitions than that come from splitting again.
pub const MAX_FANOUT: usize = 256;

/// Write buffer per partition file: large enough for few syscalls, small enough that
/// [`MAX_FANOUT`] of them per read stay a few MiB.
const WRITE_BUFFER: usize = 16 << 10;

/// Bytes read at once when a partition file is split again.
const READ_CHUNK: usize = 256 << 10;

/// How many times a partition may be split again before it is mapped in runs whatever its
/// keys: each split uses a new hash seed, so only a flood of identical keys gets this deep.
const MAX_DEPTH: u32 = 12;

/// The hash key's second half: any fixed value (the first half is the route's seed).
const SALT: u64 = 0x7379_6e32_6d61_7321;

/// The per-partition byte budget ([`PARTITION_BUDGET`]; tests may lower it).
pub fn budget() -> u64 {
    crate::test_hooks::partition_bytes().unwrap_or(PARTITION_BUDGET)
}

/// How many files `bytes` of rows need so that each holds about `budget`: a power of two, at
/// most [`MAX_FANOUT`].
pub fn fanout_for(bytes: u64, budget: u64) -> usize {
    let wanted = bytes.div_ceil(budget.max(1)).clamp(1, MAX_FANOUT as u64);
    (wanted as usize).next_power_of_two().min(MAX_FANOUT)
}

/// How the rows of a split are routed to its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// By user id (every read's first column), hashed with a seed per `level`.
    User { level: u32 },
    /// By (user id, device id): a device and the tokens naming it go together; a token without
    /// a device goes by its own id; owner rows are copied to every file.
    Device { level: u32 },
}

impl Route {
    /// The route of the first split, made while the reads stream.
    pub const FIRST: Route = Route::User { level: 0 };

    fn seed(self) -> u64 {
        match self {
            Route::User { level } => u64::from(level) << 1,
            Route::Device { level } => (u64::from(level) << 1) | 1,
        }
    }

    /// Where the tuple whose leading fields are `f` goes: `None` for every file.
    fn key(self, read: SessionRead, f: &[Option<&[u8]>; KEY_FIELDS]) -> Option<u64> {
        let h = |parts: &[Option<&[u8]>]| hash(self.seed(), parts);
        match (self, read) {
            (Route::User { .. }, _) => Some(h(&[f[0]])),
            (Route::Device { .. }, SessionRead::Owners) => None,
            (Route::Device { .. }, SessionRead::Devices) => Some(h(&[f[0], f[DEVICE_ID], None])),
            (Route::Device { .. }, SessionRead::Tokens) => Some(match f[TOKEN_DEVICE_ID] {
                Some(device) => h(&[f[0], Some(device), None]),
                None => h(&[f[0], None, f[TOKEN_ID].or(f[TOKEN_RT_ID])]),
            }),
        }
    }
}

/// Leading fields a route looks at (up to `Token::rt_id`).
const KEY_FIELDS: usize = 9;
/// `Device::device_id`.
const DEVICE_ID: usize = 1;
/// `Token::id`, `Token::device_id` and `Token::rt_id`.
const TOKEN_ID: usize = 1;
const TOKEN_DEVICE_ID: usize = 2;
const TOKEN_RT_ID: usize = 8;

/// SipHash-1-3 of `parts` (length-prefixed, NULL distinct from empty) under `seed`: a new
/// seed per split, so rows that shared a partition spread over the next split's files.
fn hash(seed: u64, parts: &[Option<&[u8]>]) -> u64 {
    let mut h = siphasher::sip::SipHasher13::new_with_keys(seed, SALT);
    for part in parts {
        match part {
            None => h.write_u8(0),
            Some(bytes) => {
                h.write_u8(1);
                h.write_usize(bytes.len());
                h.write(bytes);
            }
        }
    }
    h.finish()
}

/// Whether the rows routed to a file all had one key (a user, or a device), which decides
/// how the partition can be split further.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// No routed row.
    #[default]
    None,
    /// Every routed row had this key hash.
    One(u64),
    Many,
}

impl Keys {
    fn see(&mut self, key: u64) {
        *self = self.merge(Keys::One(key));
    }

    fn merge(self, other: Keys) -> Keys {
        match (self, other) {
            (Keys::None, k) | (k, Keys::None) => k,
            (Keys::One(a), Keys::One(b)) if a == b => Keys::One(a),
            _ => Keys::Many,
        }
    }
}

/// Why spilling failed: the temporary files (named, with the fix the cause calls for) or a
/// malformed stream.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("syn2mas's temporary files in {dir}: {source}{}", advice(source))]
    Io { dir: String, source: io::Error },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// One read's file of a partition, written and rewound.
#[derive(Debug)]
pub struct Spilled {
    file: File,
    bytes: u64,
    keys: Keys,
}

/// One read's partition files while they are written.
pub struct Spill {
    read: SessionRead,
    route: Route,
    files: Vec<Out>,
    dir: PathBuf,
}

struct Out {
    file: BufWriter<File>,
    bytes: u64,
    keys: Keys,
}

impl Spill {
    /// `fanout` (a power of two) empty anonymous files in `TMPDIR` for `read`'s rows.
    pub fn new(read: SessionRead, route: Route, fanout: usize) -> Result<Self, SpillError> {
        debug_assert!(fanout.is_power_of_two());
        let dir = std::env::temp_dir();
        let files = (0..fanout)
            .map(|_| {
                tempfile::tempfile_in(&dir).map(|f| Out {
                    file: BufWriter::with_capacity(WRITE_BUFFER, f),
                    bytes: 0,
                    keys: Keys::None,
                })
            })
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| io_error(&dir, source))?;
        Ok(Self {
            read,
            route,
            files,
            dir,
        })
    }

    /// Appends every tuple of `tuples` (complete tuples, no header or trailer) to the file of
    /// its key (or to every file). Returns the number of tuples.
    pub fn add(&mut self, tuples: &[u8]) -> Result<u64, SpillError> {
        let mask = self.files.len() - 1;
        let fields = self.read.fields();
        let mut pos = 0;
        let mut rows = 0;
        let mut f = [None; KEY_FIELDS];
        while pos < tuples.len() {
            let len = tuple_fields(&tuples[pos..], fields, &mut f[..fields.min(KEY_FIELDS)])?;
            let tuple = &tuples[pos..pos + len];
            match self.route.key(self.read, &f) {
                Some(key) => {
                    let out = &mut self.files[key as usize & mask];
                    out.keys.see(key);
                    write(out, tuple, &self.dir)?;
                }
                None => {
                    for out in &mut self.files {
                        write(out, tuple, &self.dir)?;
                    }
                }
            }
            pos += len;
            rows += 1;
        }
        Ok(rows)
    }

    /// Flushes every file and rewinds it for reading.
    pub fn finish(self) -> Result<Vec<Spilled>, SpillError> {
        let dir = self.dir;
        self.files
            .into_iter()
            .map(|out| {
                let mut file = out
                    .file
                    .into_inner()
                    .map_err(|e| io_error(&dir, e.into_error()))?;
                file.seek(SeekFrom::Start(0))
                    .map_err(|e| io_error(&dir, e))?;
                Ok(Spilled {
                    file,
                    bytes: out.bytes,
                    keys: out.keys,
                })
            })
            .collect()
    }
}

fn write(out: &mut Out, tuple: &[u8], dir: &Path) -> Result<(), SpillError> {
    out.file.write_all(tuple).map_err(|e| io_error(dir, e))?;
    out.bytes += tuple.len() as u64;
    Ok(())
}

/// What to do about a failed temporary file, when the cause says: a full disk wants room (the
/// files need about as much space as Synapse's devices and access_tokens tables), too many
/// open files a higher `ulimit -n`.
fn advice(source: &io::Error) -> &'static str {
    match source.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "; they need about as much free space as Synapse's devices and access_tokens tables. Point TMPDIR at a disk with room"
        }
        _ if source.raw_os_error() == Some(libc::EMFILE) => {
            "; syn2mas keeps a few thousand of them open at once: raise the open-files limit (`ulimit -n`, systemd LimitNOFILE)"
        }
        _ => "",
    }
}

fn io_error(dir: &Path, source: io::Error) -> SpillError {
    SpillError::Io {
        dir: dir.display().to_string(),
        source,
    }
}

/// What to do with a partition before the join holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Load its three files and join them.
    Whole,
    /// Split it again by this route.
    Split(Route),
    /// One device (or a pathological depth): hold its owners and devices, map its tokens in
    /// runs of at most the budget.
    Runs,
}

/// The three files (owners, devices, tokens) of one partition, and what is known of its rows.
#[derive(Debug)]
pub struct Partition {
    files: [Spilled; 3],
    route: Route,
    depth: u32,
}

impl Partition {
    /// The partitions of one split, from each read's files in [`SessionRead::ALL`] order.
    /// Partitions without devices or tokens are dropped (their files closed): owner rows are
    /// only looked up by the join, never mapped, so alone they produce nothing.
    pub fn assemble(route: Route, depth: u32, reads: [Vec<Spilled>; 3]) -> Vec<Partition> {
        let [o, d, t] = reads;
        o.into_iter()
            .zip(d)
            .zip(t)
            .map(|((o, d), t)| Partition {
                files: [o, d, t],
                route,
                depth,
            })
            .filter(|p| p.files[1].bytes + p.files[2].bytes > 0)
            .collect()
    }

    /// Bytes of its three files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// Bytes of each file (owners, devices, tokens).
    pub fn file_bytes(&self) -> [u64; 3] {
        self.files.each_ref().map(|f| f.bytes)
    }

    /// Whole when it fits the budget; otherwise split again, by user while it holds several,
    /// then by device; one device's tokens are mapped in runs.
    pub fn next(&self, budget: u64) -> Next {
        if self.bytes() <= budget {
            return Next::Whole;
        }
        if self.depth >= MAX_DEPTH {
            return Next::Runs;
        }
        let one_key = !matches!(
            self.files.iter().fold(Keys::None, |k, f| k.merge(f.keys)),
            Keys::Many
        );
        match (self.route, one_key) {
            (Route::User { .. }, true) => Next::Split(Route::Device { level: 0 }),
            (Route::User { level }, false) => Next::Split(Route::User { level: level + 1 }),
            (Route::Device { .. }, true) => Next::Runs,
            (Route::Device { level }, false) => Next::Split(Route::Device { level: level + 1 }),
        }
    }

    /// Splits the partition by `route` into files of about half the budget each (the same
    /// route for the three files, so the parts join on their own). Reads one file at a time:
    /// memory is one read chunk and one set of write buffers.
    pub fn split(self, route: Route, budget: u64) -> Result<Vec<Partition>, SpillError> {
        let fanout = fanout_for(self.bytes().saturating_mul(2), budget);
        let depth = self.depth + 1;
        let mut reads = Vec::with_capacity(3);
        for (read, spilled) in SessionRead::ALL.into_iter().zip(self.files) {
            let mut spill = Spill::new(read, route, fanout)?;
            let mut tuples = Tuples::new(spilled.file, read.fields());
            while let Some(chunk) = tuples.next(READ_CHUNK)? {
                spill.add(chunk)?;
            }
            reads.push(spill.finish()?);
        }
        let reads: [Vec<Spilled>; 3] = reads.try_into().expect("three reads");
        Ok(Partition::assemble(route, depth, reads))
    }

    /// The three files' whole content (at most the budget, when [`Partition::next`] said
    /// [`Next::Whole`]).
    pub fn load(self) -> io::Result<[Vec<u8>; 3]> {
        let [o, d, t] = self.files.map(|f| read_all(f.file));
        Ok([o?, d?, t?])
    }

    /// The owners' and devices' content, and the tokens file to read in runs.
    pub fn into_runs(self) -> io::Result<([Vec<u8>; 2], Tuples)> {
        let [o, d, t] = self.files;
        Ok((
            [read_all(o.file)?, read_all(d.file)?],
            Tuples::new(t.file, SessionRead::Tokens.fields()),
        ))
    }
}

/// A partition file read back in runs of whole tuples.
pub struct Tuples {
    file: File,
    fields: usize,
    buf: Vec<u8>,
    /// Bytes at the start of `buf` handed out by the last `next`.
    taken: usize,
    eof: bool,
}

impl Tuples {
    pub fn new(file: File, fields: usize) -> Self {
        Self {
            file,
            fields,
            buf: Vec::new(),
            taken: 0,
            eof: false,
        }
    }

    /// The next run of whole tuples: at most `max` bytes, unless one tuple alone is larger.
    /// `None` at the end of the file.
    pub fn next(&mut self, max: usize) -> Result<Option<&[u8]>, SpillError> {
        self.buf.drain(..self.taken);
        self.taken = 0;
        loop {
            let scan = scan_tuples(&self.buf, self.fields)?;
            if scan.trailer {
                return Err(DecodeError::TrailingData.into());
            }
            if scan.complete > 0 && (self.buf.len() >= max || self.eof) {
                self.taken = scan.complete;
                return Ok(Some(&self.buf[..scan.complete]));
            }
            if self.eof {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(DecodeError::Truncated.into()),
                };
            }
            self.fill(max)?;
        }
    }

    /// Back to the first tuple, for another pass.
    pub fn rewind(&mut self) -> Result<(), SpillError> {
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_error(&std::env::temp_dir(), e))?;
        self.buf.clear();
        self.taken = 0;
        self.eof = false;
        Ok(())
    }

    /// Reads until `max` bytes are buffered, or 4 KiB more when a single tuple is larger: a
    /// run never exceeds `max` unless one tuple does.
    fn fill(&mut self, max: usize) -> Result<(), SpillError> {
        let want = match max.checked_sub(self.buf.len()) {
            Some(room) if room > 0 => room,
            _ => 4 << 10,
        };
        let got = (&mut self.file)
            .take(want as u64)
            .read_to_end(&mut self.buf)
            .map_err(|e| io_error(&std::env::temp_dir(), e))?;
        if got < want {
            self.eof = true;
        }
        Ok(())
    }
}

/// Raises the soft limit on open files so that `files` more fit, up to the hard limit: the
/// first split keeps three files per partition open until each is joined (up to 768), and a
/// partition split again adds its parts' files; many systems start processes with a soft
/// limit of 1024.
pub fn make_room_for_files(files: usize) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let wanted = (files as libc::rlim_t).saturating_add(256);
    if limit.rlim_cur >= wanted {
        return Ok(());
    }
    limit.rlim_cur = wanted.min(limit.rlim_max);
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Files the devices/tokens stage may hold open at once: the first split's, and a few levels
/// of splits of one partition.
pub const OPEN_FILES: usize = 3 * MAX_FANOUT * 4;

/// The whole content of a partition file.
fn read_all(mut file: File) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(file.metadata().map_or(0, |m| m.len() as usize));
    file.read_to_end(&mut buf)?;
    Ok(buf)
}

/// A warning when `dir` (where the partition files go) is a tmpfs: its files are memory, and
/// count against a container's memory limit as much as syn2mas's own.
pub fn tmpfs_warning(dir: &Path) -> Option<String> {
    is_tmpfs(dir).then(|| {
        format!(
            "warning: the temporary directory {} is a tmpfs, which is memory: syn2mas's partition files of devices and tokens (about the size of Synapse's devices and access_tokens tables) count against the memory limit there. Point TMPDIR at a directory on disk.",
            dir.display()
        )
    })
}

#[cfg(target_os = "linux")]
fn is_tmpfs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs only writes the struct passed by pointer; `path` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let magic = st.f_type as i64;
    magic == TMPFS_MAGIC
}

#[cfg(not(target_os = "linux"))]
fn is_tmpfs(_dir: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::copy_binary::{Encoder, decode_rows};
    use crate::source::reads::{Device, Read, Token};

    /// An owner tuple of `user`.
    fn owner(enc: &mut Encoder, user: &str) {
        enc.row(6)
            .text(user)
            .bool(false)
            .bool(false)
            .bool(false)
            .null()
            .bool(false);
    }

    fn device(enc: &mut Encoder, user: &str, device: &str) {
        enc.row(7)
            .text(user)
            .text(device)
            .null()
            .null()
            .null()
            .null()
            .bool(false);
    }

    /// A token tuple: an access token `id` on `device` (or deviceless), or with `id` NULL a
    /// refresh token `rt` alone (int8 columns as their 8 big-endian bytes).
    fn token(enc: &mut Encoder, user: &str, id: Option<i64>, device: Option<&str>, rt: i64) {
        let mut row = enc.row(13);
        row = row.text(user);
        row = match id {
            Some(id) => row.text(id.to_be_bytes()),
            None => row.null(),
        };
        row.opt_text(device)
            .null()
            .null()
            .null()
            .bool(false)
            .bool(true)
            .text(rt.to_be_bytes())
            .null()
            .null()
            .null()
            .bool(false);
    }

    /// Owners, devices and tokens of a few users, one of them owning most rows.
    fn reads() -> [Vec<u8>; 3] {
        let users: Vec<String> = (0..40).map(|i| format!("@u{i}:example.com")).collect();
        let [mut o, mut d, mut t] = [0; 3].map(|_| Encoder::with_capacity(1 << 16));
        for (i, u) in users.iter().enumerate() {
            owner(&mut o, u);
            let devices = if i == 0 { 300 } else { 2 };
            for k in 0..devices {
                let dev = format!("D{k}");
                device(&mut d, u, &dev);
                for j in 0..3 {
                    let id = (i * 10_000 + k * 10 + j) as i64;
                    token(&mut t, u, Some(id), Some(&dev), id);
                }
            }
            // Deviceless tokens, a lone refresh token, and a token of a deleted device.
            for j in 0..20 {
                let id = (i * 10_000 + 9_000 + j) as i64;
                token(&mut t, u, Some(id), None, id);
            }
            token(&mut t, u, None, None, (i * 10_000 + 9_999) as i64);
            token(
                &mut t,
                u,
                Some((i * 10_000 + 9_998) as i64),
                Some("GONE"),
                0,
            );
        }
        // A token whose owner has no row.
        token(&mut t, "@ghost:example.com", Some(1), Some("D0"), 1);
        [o, d, t].map(Encoder::into_bytes)
    }

    fn spill(route: Route, fanout: usize, reads: &[Vec<u8>; 3]) -> Vec<Partition> {
        let spilled = SessionRead::ALL.map(|read| {
            let i = read as usize;
            let mut s = Spill::new(read, route, fanout).unwrap();
            s.add(&reads[i]).unwrap();
            s.finish().unwrap()
        });
        Partition::assemble(route, 0, spilled)
    }

    /// Every partition down to what fits `budget`, split as the pipeline splits them, with the
    /// decision that produced each.
    fn settle(parts: Vec<Partition>, budget: u64) -> Vec<(Next, [Vec<u8>; 3], Route)> {
        let mut done = Vec::new();
        let mut queue: std::collections::VecDeque<_> = parts.into();
        while let Some(p) = queue.pop_front() {
            match p.next(budget) {
                Next::Split(route) => queue.extend(p.split(route, budget).unwrap()),
                next => {
                    let route = p.route;
                    done.push((next, p.load().unwrap(), route));
                }
            }
        }
        done
    }

    fn rows(bytes: &[u8], fields: usize) -> Vec<Vec<Option<Vec<u8>>>> {
        let mut slots = Vec::new();
        decode_rows(bytes, fields, &mut slots).unwrap();
        slots
            .chunks_exact(fields)
            .map(|r| r.iter().map(|f| f.map(<[u8]>::to_vec)).collect())
            .collect()
    }

    fn text(f: &Option<Vec<u8>>) -> String {
        String::from_utf8(f.clone().unwrap_or_default()).unwrap()
    }

    #[test]
    fn fanouts_are_powers_of_two_within_bounds() {
        assert_eq!(fanout_for(0, PARTITION_BUDGET), 1);
        assert_eq!(fanout_for(PARTITION_BUDGET, PARTITION_BUDGET), 1);
        assert_eq!(fanout_for(PARTITION_BUDGET + 1, PARTITION_BUDGET), 2);
        assert_eq!(fanout_for(100 * PARTITION_BUDGET, PARTITION_BUDGET), 128);
        assert_eq!(fanout_for(u64::MAX, PARTITION_BUDGET), MAX_FANOUT);
        assert_eq!(fanout_for(u64::MAX, 0), MAX_FANOUT);
    }

    #[test]
    fn the_routes_read_the_columns_they_name() {
        assert_eq!(Device::COLUMNS[DEVICE_ID].0, "device_id");
        assert_eq!(Token::COLUMNS[TOKEN_ID].0, "id");
        assert_eq!(Token::COLUMNS[TOKEN_DEVICE_ID].0, "device_id");
        assert_eq!(Token::COLUMNS[TOKEN_RT_ID].0, "rt_id");
        const { assert!(KEY_FIELDS <= Token::FIELDS) };
    }

    #[test]
    fn every_row_lands_once_in_the_partition_of_its_key() {
        let reads = reads();
        for fanout in [1, 8] {
            let parts = spill(Route::FIRST, fanout, &reads);
            let mut seen = [0, 0, 0];
            for (p, part) in parts.into_iter().enumerate() {
                let files = part.load().unwrap();
                for read in SessionRead::ALL {
                    let i = read as usize;
                    for row in rows(&files[i], read.fields()) {
                        let key = hash(Route::FIRST.seed(), &[row[0].as_deref()]);
                        assert_eq!(key as usize & (fanout - 1), p, "{fanout}");
                        seen[i] += 1;
                    }
                }
            }
            let want = SessionRead::ALL.map(|r| rows(&reads[r as usize], r.fields()).len());
            assert_eq!(seen, want);
        }
    }

    /// Splitting down to a tiny budget: every device and token lands exactly once, with its
    /// owner row and, for a token naming a device, in the part that holds that device row;
    /// the heavy user ends up split by device, and one device's tokens are left to runs.
    #[test]
    fn splits_keep_each_device_with_its_owner_and_tokens() {
        let reads = reads();
        let budget = 2 << 10;
        let done = settle(spill(Route::FIRST, 2, &reads), budget);
        let mut devices = std::collections::BTreeMap::new();
        let mut tokens = Vec::new();
        let mut routes = std::collections::BTreeSet::new();
        for (next, [o, d, t], route) in &done {
            routes.insert(format!("{route:?}"));
            let owners: std::collections::BTreeSet<String> =
                rows(o, 6).iter().map(|r| text(&r[0])).collect();
            let whole = o.len() + d.len() + t.len();
            match next {
                Next::Whole => assert!(whole as u64 <= budget, "{whole}"),
                Next::Runs => assert!(matches!(route, Route::Device { .. })),
                Next::Split(_) => unreachable!(),
            }
            for r in rows(d, 7) {
                let key = (text(&r[0]), text(&r[1]));
                assert!(owners.contains(&key.0), "device {key:?} without its owner");
                assert!(
                    devices.insert(key.clone(), d.as_ptr()).is_none(),
                    "{key:?} twice"
                );
            }
            for r in rows(t, 13) {
                let user = text(&r[0]);
                assert!(
                    owners.contains(&user) || user.starts_with("@ghost"),
                    "token of {user} without its owner"
                );
                tokens.push((user, r[TOKEN_ID].clone(), r[TOKEN_RT_ID].clone()));
            }
        }
        // A token naming a device that exists is in the very partition of that device.
        for (_, [_, d, t], _) in &done {
            for r in rows(t, 13) {
                if let (Some(_), Some(dev)) = (&r[TOKEN_ID], &r[TOKEN_DEVICE_ID]) {
                    let key = (text(&r[0]), text(&Some(dev.clone())));
                    if let Some(home) = devices.get(&key) {
                        assert_eq!(*home, d.as_ptr(), "{key:?}");
                    }
                }
            }
        }
        assert_eq!(devices.len(), rows(&reads[1], 7).len());
        let mut want: Vec<_> = rows(&reads[2], 13)
            .into_iter()
            .map(|r| (text(&r[0]), r[TOKEN_ID].clone(), r[TOKEN_RT_ID].clone()))
            .collect();
        want.sort();
        tokens.sort();
        assert_eq!(tokens, want);
        assert!(routes.iter().any(|r| r.starts_with("Device")), "{routes:?}");
        assert!(routes.iter().any(|r| r.starts_with("User")), "{routes:?}");
    }

    #[test]
    fn one_device_with_more_tokens_than_the_budget_is_left_to_runs() {
        let mut o = Encoder::with_capacity(1 << 10);
        let mut d = Encoder::with_capacity(1 << 10);
        let mut t = Encoder::with_capacity(1 << 20);
        owner(&mut o, "@bot:example.com");
        device(&mut d, "@bot:example.com", "ONE");
        for id in 0..5_000 {
            token(&mut t, "@bot:example.com", Some(id), Some("ONE"), id);
        }
        let reads = [o, d, t].map(Encoder::into_bytes);
        let budget = 16 << 10;
        let mut parts = spill(Route::FIRST, 4, &reads);
        assert_eq!(parts.len(), 1);
        let p = parts.pop().unwrap();
        assert_eq!(p.next(budget), Next::Split(Route::Device { level: 0 }));
        let mut parts = p.split(Route::Device { level: 0 }, budget).unwrap();
        assert_eq!(parts.len(), 1);
        let p = parts.pop().unwrap();
        assert_eq!(p.next(budget), Next::Runs);
        let ([owners, devices], mut runs) = p.into_runs().unwrap();
        assert_eq!((owners, devices), (reads[0].clone(), reads[1].clone()));
        let mut all = Vec::new();
        while let Some(run) = runs.next(budget as usize).unwrap() {
            assert!(run.len() as u64 <= budget, "{}", run.len());
            all.extend_from_slice(run);
        }
        assert_eq!(all, reads[2]);
    }

    #[test]
    fn a_tuple_larger_than_a_run_comes_alone() {
        let mut t = Encoder::with_capacity(1 << 16);
        for i in 0..3 {
            t.row(2).text(vec![b'x'; 10_000 * (i + 1)]).int4(1);
        }
        let bytes = t.into_bytes();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        let mut runs = Tuples::new(file, 2);
        let mut got = Vec::new();
        while let Some(run) = runs.next(1000).unwrap() {
            got.push(run.len());
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got.iter().sum::<usize>(), bytes.len());
    }

    #[test]
    fn the_open_files_limit_makes_room_for_every_partition_file() {
        make_room_for_files(OPEN_FILES).unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct passed by pointer.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        let wanted = OPEN_FILES as libc::rlim_t + 256;
        assert!(
            limit.rlim_cur >= wanted.min(limit.rlim_max),
            "{}",
            limit.rlim_cur
        );
        // Where the hard limit allows it, every file of the largest first split really opens.
        if limit.rlim_max >= wanted {
            let spills: Vec<_> = SessionRead::ALL
                .map(|r| Spill::new(r, Route::FIRST, MAX_FANOUT).unwrap())
                .into_iter()
                .collect();
            assert_eq!(spills.len(), 3);
        }
    }

    #[test]
    fn temporary_file_errors_give_the_advice_their_cause_calls_for() {
        let say = |e: io::Error| io_error(Path::new("/tmp"), e).to_string();
        let full = say(io::Error::from(io::ErrorKind::StorageFull));
        assert!(full.contains("Point TMPDIR at a disk with room"), "{full}");
        let files = say(io::Error::from_raw_os_error(libc::EMFILE));
        assert!(
            files.contains("ulimit -n") && !files.contains("TMPDIR"),
            "{files}"
        );
        let other = say(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(
            !other.contains("TMPDIR at") && !other.contains("ulimit"),
            "{other}"
        );
        assert!(
            other.starts_with("syn2mas's temporary files in /tmp: "),
            "{other}"
        );
    }

    #[test]
    fn a_malformed_stream_is_an_error_not_a_panic() {
        let mut spill = Spill::new(SessionRead::Owners, Route::FIRST, 2).unwrap();
        assert!(spill.add(&[0, 6, 0, 0, 0, 9, b'x']).is_err());
        assert!(spill.add(&[0, 3, 255, 255, 255, 255]).is_err());
    }

    /// `/dev/shm` is a tmpfs on Linux systems that have it; the crate's own directory is
    /// where the sources are checked out, on disk.
    #[test]
    fn tmpfs_is_recognised() {
        let shm = Path::new("/dev/shm");
        if cfg!(target_os = "linux") && shm.is_dir() {
            assert!(tmpfs_warning(shm).unwrap().contains("/dev/shm"));
        }
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(tmpfs_warning(here).is_some(), is_tmpfs(here));
        assert!(tmpfs_warning(Path::new("/nonexistent/dir")).is_none());
    }
}
