//! MAS ids without a lookup table.
//!
//! Every id is a ULID: 48 bits of time from the source row, 80 bits from a keyed hash
//! (SipHash-1-3, 128-bit output) of the row's natural key (a user's localpart, a token's
//! Synapse id…). The key is 16 bytes from the OS CSPRNG for each run, so the 80 bits are
//! unpredictable like random ones; but any stage
//! that sees the same natural key recomputes the same id. That is why dependent rows (emails,
//! sessions, tokens) find their user's and session's MAS id without a map that grows with the
//! number of users. `--seed` replaces the random key with one derived from the seed.

use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher13};

/// What an id is for; part of the hashed input so different entities never share bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    User = b'u',
    Password = b'p',
    Email = b'e',
    Link = b'l',
    Session = b's',
    DevicelessSession = b'd',
    AccessToken = b'a',
    RefreshToken = b'r',
}

#[derive(Clone)]
pub struct Ids {
    sip: SipHasher13,
    /// Kept so a stage can record it: a staged migration must derive the ids its prestage did.
    key: [u8; 16],
}

impl std::fmt::Debug for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ids([redacted])")
    }
}

/// The largest time a ULID can hold (48 bits of milliseconds).
const MAX_ULID_MS: i64 = (1 << 48) - 1;

/// The time part a ULID gets for a source time: negative times become 0, larger than 48 bits
/// saturate (the row's created_at column still gets the real value).
pub fn ulid_ms(ms: i64) -> i64 {
    ms.clamp(0, MAX_ULID_MS)
}

impl Ids {
    /// A fresh key from the operating system's CSPRNG.
    pub fn random() -> Self {
        let mut key = [0u8; 16];
        getrandom::fill(&mut key).expect("the operating system's random source failed");
        Self::with_key(&key)
    }

    /// A key derived from `seed`, for reproducible runs (tests, benchmarks).
    pub fn from_seed(seed: u64) -> Self {
        let derived = blake3::derive_key("syn2mas 2026 id seed", &seed.to_le_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&derived[..16]);
        Self::with_key(&key)
    }

    /// The ids of a run whose key is `key` (a stage's, see [`Ids::key`]).
    pub fn with_key(key: &[u8; 16]) -> Self {
        Self {
            sip: SipHasher13::new_with_key(key),
            key: *key,
        }
    }

    /// The key: recorded with a stage so the migration that applies it derives the same ids.
    pub fn key(&self) -> [u8; 16] {
        self.key
    }

    /// The ULID (as a `uuid`'s 128 bits) of `kind` for natural key `parts` at `time_ms`.
    ///
    /// The hashed input is `kind`, then each part as its u32 little-endian length and bytes.
    /// It is assembled in a stack buffer and hashed in one call. SipHash-1-3 is a keyed PRF
    /// like the BLAKE3 it replaced, at a fifth of the cost on keys this short (BLAKE3 was
    /// ~10 % of syn2mas's CPU at 1M users, ~10M ids).
    pub fn ulid(&self, kind: Kind, time_ms: i64, parts: &[&[u8]]) -> u128 {
        let mut buf = [0u8; 192];
        let hash = match encode_key(&mut buf, kind, parts) {
            Some(len) => self.sip.hash(&buf[..len]).as_bytes(),
            None => self.hash_long(kind, parts),
        };
        let mut random = [0u8; 16];
        random[6..].copy_from_slice(&hash[..10]);
        ((ulid_ms(time_ms) as u128) << 80) | u128::from_be_bytes(random)
    }

    /// The same hash for keys too long for the stack buffer (long device ids, localparts).
    fn hash_long(&self, kind: Kind, parts: &[&[u8]]) -> [u8; 16] {
        let mut h = self.sip;
        h.write(&[kind as u8]);
        for p in parts {
            h.write(&(p.len() as u32).to_le_bytes());
            h.write(p);
        }
        h.finish128().as_bytes()
    }
}

/// Writes the hashed input into `buf`; `None` when it does not fit.
fn encode_key(buf: &mut [u8], kind: Kind, parts: &[&[u8]]) -> Option<usize> {
    let mut len = 1;
    *buf.first_mut()? = kind as u8;
    for p in parts {
        let end = len + 4 + p.len();
        buf.get_mut(len..len + 4)?
            .copy_from_slice(&(p.len() as u32).to_le_bytes());
        buf.get_mut(len + 4..end)?.copy_from_slice(p);
        len = end;
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_part_and_determinism() {
        let ids = Ids::from_seed(7);
        let a = ids.ulid(Kind::User, 1_600_000_000_000, &[b"alice"]);
        assert_eq!((a >> 80) as i64, 1_600_000_000_000);
        assert_eq!(
            a,
            Ids::from_seed(7).ulid(Kind::User, 1_600_000_000_000, &[b"alice"])
        );
        assert_ne!(
            a,
            Ids::from_seed(8).ulid(Kind::User, 1_600_000_000_000, &[b"alice"])
        );
        assert_ne!(a, ids.ulid(Kind::Password, 1_600_000_000_000, &[b"alice"]));
        // Field boundaries are part of the input: ("ab","c") differs from ("a","bc").
        assert_ne!(
            ids.ulid(Kind::Session, 0, &[b"ab", b"c"]),
            ids.ulid(Kind::Session, 0, &[b"a", b"bc"])
        );
        let u = ulid::Ulid(a);
        assert_eq!(u.timestamp_ms(), 1_600_000_000_000);
    }

    /// The one-call hash must equal the streaming one used for keys too long for the stack
    /// buffer, on both sides of the buffer's size (a key's id must not depend on its length).
    #[test]
    fn one_call_hash_equals_incremental_hash() {
        let ids = Ids::from_seed(3);
        let long = vec![b'x'; 300];
        let cases: [&[&[u8]]; 4] = [
            &[b"alice"],
            &[b"bob", b"DEVICEID"],
            &[&long[..180], b"d"],
            &[&long, b"device"],
        ];
        for parts in cases {
            let got = ids.ulid(Kind::Session, 1_000, parts);
            let want = ids.hash_long(Kind::Session, parts);
            let mut random = [0u8; 16];
            random[6..].copy_from_slice(&want[..10]);
            assert_eq!(got & ((1u128 << 80) - 1), u128::from_be_bytes(random));
        }
        let mut buf = [0u8; 192];
        assert_eq!(encode_key(&mut buf, Kind::User, &[b"ab"]), Some(7));
        assert_eq!(encode_key(&mut buf, Kind::User, &[&long]), None);
    }

    #[test]
    fn out_of_range_times_are_clamped() {
        let ids = Ids::random();
        assert_eq!(ids.ulid(Kind::User, -5, &[b"x"]) >> 80, 0);
        assert_eq!(
            ids.ulid(Kind::User, i64::MAX, &[b"x"]) >> 80,
            MAX_ULID_MS as u128
        );
    }
}
