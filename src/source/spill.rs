//! Partitioning a COPY stream by user into temporary files, so that syn2mas can join devices,
//! tokens and their owners itself, one partition at a time, in bounded memory.
//!
//! PostgreSQL's own join of those tables (hash joins on two text columns and a per-device
//! aggregate) cost ~13 CPU-seconds at 1M users, most of a core for the whole run; plain scans
//! of the same tables cost ~2. Rows whose user ids hash alike land in the same partition of
//! every stream, so each partition joins on its own: memory is one partition's rows, whatever
//! the number of users, and the files live on local disk (`TMPDIR`) for the length of the run.
//!
//! The files are anonymous (`tempfile::tempfile_in`): nothing is left behind when the process
//! ends, however it ends.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use crate::db::copy_binary::{DecodeError, tuple_key};

/// Write buffer per partition file: large enough for few syscalls, small enough that hundreds
/// of partitions stay a few MiB.
const WRITE_BUFFER: usize = 32 << 10;

/// Rows a partition should hold, summed over the streams: ~2–4 MiB of raw tuples.
const ROWS_PER_PARTITION: u64 = 32 << 10;

/// At most this many partitions (each stream keeps one open file per partition).
const MAX_PARTITIONS: usize = 1024;

/// How many partitions `rows` (estimated, all streams together) need: a power of two, so that
/// a partition is a mask of the key's hash.
pub fn partitions_for(rows: u64) -> usize {
    let wanted = rows.div_ceil(ROWS_PER_PARTITION).max(1);
    usize::try_from(wanted)
        .unwrap_or(MAX_PARTITIONS)
        .next_power_of_two()
        .min(MAX_PARTITIONS)
}

/// The partition of a row whose first column is `key` (NULL keys join nothing: partition 0).
pub fn partition_of(key: Option<&[u8]>, partitions: usize) -> usize {
    key.map_or(0, |k| crc32fast::hash(k) as usize & (partitions - 1))
}

/// Why spilling failed: the disk (named, with the fix) or a malformed stream.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error(
        "writing syn2mas's temporary files in {dir} failed ({source}); they need about as much free space as Synapse's devices and access_tokens tables. Point TMPDIR at a disk with room"
    )]
    Io { dir: String, source: io::Error },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// One stream's partition files while they are written.
pub struct Spill {
    files: Vec<BufWriter<File>>,
    fields: usize,
    dir: PathBuf,
}

impl Spill {
    /// `partitions` empty anonymous files in `TMPDIR`.
    pub fn new(partitions: usize, fields: usize) -> Result<Self, SpillError> {
        let dir = std::env::temp_dir();
        let files = (0..partitions)
            .map(|_| tempfile::tempfile_in(&dir).map(|f| BufWriter::with_capacity(WRITE_BUFFER, f)))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| SpillError::Io {
                dir: dir.display().to_string(),
                source,
            })?;
        Ok(Self { files, fields, dir })
    }

    /// Appends every tuple of `tuples` (complete tuples, no header or trailer) to the file of
    /// its partition. Returns the number of tuples.
    pub fn add(&mut self, tuples: &[u8]) -> Result<u64, SpillError> {
        let parts = self.files.len();
        let mut pos = 0;
        let mut rows = 0;
        while pos < tuples.len() {
            let (len, key) = tuple_key(&tuples[pos..], self.fields)?;
            let file = &mut self.files[partition_of(key, parts)];
            file.write_all(&tuples[pos..pos + len])
                .map_err(|e| self.io(e))?;
            pos += len;
            rows += 1;
        }
        Ok(rows)
    }

    /// Flushes every file and rewinds it for reading.
    pub fn finish(self) -> Result<Vec<File>, SpillError> {
        let dir = self.dir.display().to_string();
        let io = |source| SpillError::Io {
            dir: dir.clone(),
            source,
        };
        self.files
            .into_iter()
            .map(|w| {
                let mut f = w.into_inner().map_err(|e| io(e.into_error()))?;
                f.seek(SeekFrom::Start(0)).map_err(io)?;
                Ok(f)
            })
            .collect()
    }

    fn io(&self, source: io::Error) -> SpillError {
        SpillError::Io {
            dir: self.dir.display().to_string(),
            source,
        }
    }
}

/// Raises the soft limit on open files so that `files` more fit, up to the hard limit: each of
/// the three reads keeps one file per partition open (up to 3072), and many systems start
/// processes with a soft limit of 1024.
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

/// The whole content of a partition file (it is one partition of one stream: a few MiB).
pub fn read_all(mut file: File) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(file.metadata().map_or(0, |m| m.len() as usize));
    file.read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::copy_binary::{Encoder, decode_rows};

    fn tuples(keys: &[Option<&str>]) -> Vec<u8> {
        let mut enc = Encoder::with_capacity(1024);
        for (i, k) in keys.iter().enumerate() {
            enc.row(2).opt_text(*k).int4(i as i32);
        }
        enc.into_bytes()
    }

    #[test]
    fn partition_counts_are_powers_of_two_within_bounds() {
        assert_eq!(partitions_for(0), 1);
        assert_eq!(partitions_for(ROWS_PER_PARTITION), 1);
        assert_eq!(partitions_for(ROWS_PER_PARTITION + 1), 2);
        assert_eq!(partitions_for(4_400_000), 256);
        assert_eq!(partitions_for(u64::MAX), MAX_PARTITIONS);
    }

    #[test]
    fn every_row_lands_once_in_the_partition_of_its_key() {
        let keys: Vec<String> = (0..500).map(|i| format!("@user{i}:example.com")).collect();
        let mut all: Vec<Option<&str>> = keys.iter().map(|k| Some(k.as_str())).collect();
        all.push(None);
        all.extend(keys.iter().take(50).map(|k| Some(k.as_str())));
        let body = tuples(&all);
        let mut spill = Spill::new(8, 2).unwrap();
        // Two calls, split at a tuple boundary, as the reader hands over chunks.
        let mid = crate::db::copy_binary::scan_tuples(&body[..body.len() / 2], 2)
            .unwrap()
            .complete;
        let n = spill.add(&body[..mid]).unwrap() + spill.add(&body[mid..]).unwrap();
        assert_eq!(n, all.len() as u64);
        let mut seen = 0;
        for (p, file) in spill.finish().unwrap().into_iter().enumerate() {
            let bytes = read_all(file).unwrap();
            let mut slots = Vec::new();
            seen += decode_rows(&bytes, 2, &mut slots).unwrap();
            for row in slots.chunks_exact(2) {
                assert_eq!(partition_of(row[0], 8), p);
            }
        }
        assert_eq!(seen, all.len());
    }

    #[test]
    fn the_open_files_limit_makes_room_for_every_partition_file() {
        make_room_for_files(3 * MAX_PARTITIONS).unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct passed by pointer.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        let wanted = 3 * MAX_PARTITIONS as libc::rlim_t + 256;
        assert!(
            limit.rlim_cur >= wanted.min(limit.rlim_max),
            "{}",
            limit.rlim_cur
        );
        // Where the hard limit allows it, every file of the largest split really opens.
        if limit.rlim_max >= wanted {
            let spills: Vec<_> = (0..3)
                .map(|_| Spill::new(MAX_PARTITIONS, 2).unwrap())
                .collect();
            assert_eq!(spills.len(), 3);
        }
    }

    #[test]
    fn a_malformed_stream_is_an_error_not_a_panic() {
        let mut spill = Spill::new(2, 2).unwrap();
        assert!(spill.add(&[0, 2, 0, 0, 0, 9, b'x']).is_err());
        assert!(spill.add(&[0, 3, 255, 255, 255, 255]).is_err());
    }
}
