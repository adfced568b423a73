//! How one column is compared and shown: the Synapse side yields the value MAS should hold (in
//! Synapse's units), the MAS side the value it holds; a `Kind` knows both encodings.
//!
//! Equality works on the binary COPY bytes, without allocating, because it runs for every
//! column of every row; rendering (which allocates) only runs for the few examples reported.
//! Secrets never reach a rendered string: tokens show their first 4 characters, hashes nothing.

use std::net::IpAddr;

use crate::db::copy_binary::{FieldError, field, pg_micros_from_unix_ms};

/// Unix ms of PostgreSQL's timestamp epoch (2000-01-01T00:00:00Z).
const PG_EPOCH_UNIX_MS: i64 = 946_684_800_000;
/// The largest time a ULID holds (48 bits of ms); larger and negative times are clamped.
const MAX_ULID_MS: i64 = (1 << 48) - 1;
/// How many characters of a token a report may show.
const TOKEN_PREFIX: usize = 4;

/// A field whose bytes are not what its column type promises: a bug or a schema surprise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error("malformed {0} value")]
    Malformed(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A MAS username (text); shown as the Matrix user id `@username:server`.
    User,
    /// Any other text, compared byte for byte.
    Text,
    /// An access or refresh token: compared whole, shown by its first 4 characters.
    Token,
    /// A password hash: compared whole, never shown.
    Hash,
    Bool,
    /// `int8` on both sides.
    Int,
    /// Synapse Unix ms (`int8`) against a MAS `timestamptz`; NULL must stay NULL.
    Time,
    /// Like `Time`, but a NULL Synapse value means "the migration's time": any non-NULL MAS
    /// value is accepted.
    TimeOrAny,
    /// A device session's creation time. Synapse yields three fields: the exact time `migrate`
    /// uses (NULL: the migration's time), the `last_validated` of every token of the device
    /// (`int8[]`; upstream takes whichever token it met first) and whether one token had none
    /// (upstream then may have used its migration time).
    SessionTime,
    /// Synapse's free-text device ip against a MAS `inet`: NULL, '', '-' and unparsable text
    /// map to NULL, as `migrate` does.
    Ip,
    /// A `uuid` on both sides (upstream provider ids), shown as the ULID of MAS's config.
    Uuid,
}

impl Kind {
    /// Fields this kind takes in a Synapse row.
    pub fn synapse_width(self) -> usize {
        match self {
            Kind::SessionTime => 3,
            _ => 1,
        }
    }

    /// Whether the MAS value `m` is what the Synapse fields `s` call for.
    pub fn equal(self, s: &[Option<&[u8]>], m: Option<&[u8]>) -> Result<bool, ValueError> {
        Ok(match self {
            Kind::User
            | Kind::Text
            | Kind::Token
            | Kind::Hash
            | Kind::Bool
            | Kind::Int
            | Kind::Uuid => s[0] == m,
            Kind::Time => match (field::opt_int8(s[0])?, m) {
                (None, None) => true,
                (Some(ms), Some(_)) => same_time(ms, m)?,
                _ => false,
            },
            Kind::TimeOrAny => match field::opt_int8(s[0])? {
                None => m.is_some(),
                Some(ms) => m.is_some() && same_time(ms, m)?,
            },
            Kind::SessionTime => session_time_ok(s, m)?,
            Kind::Ip => expected_ip(s[0])? == actual_ip(m)?,
        })
    }

    /// The Synapse side's value as a report shows it.
    pub fn render_expected(self, s: &[Option<&[u8]>], server: &str) -> String {
        self.render_expected_inner(s, server)
            .unwrap_or_else(|e| format!("({e})"))
    }

    /// The MAS side's value as a report shows it.
    pub fn render_actual(self, m: Option<&[u8]>, server: &str) -> String {
        self.render_actual_inner(m, server)
            .unwrap_or_else(|e| format!("({e})"))
    }

    fn render_expected_inner(
        self,
        s: &[Option<&[u8]>],
        server: &str,
    ) -> Result<String, ValueError> {
        Ok(match self {
            Kind::Time => opt(field::opt_int8(s[0])?, render_unix_ms),
            Kind::TimeOrAny => match field::opt_int8(s[0])? {
                None => "any time (the migration's)".to_owned(),
                Some(ms) => render_unix_ms(ms),
            },
            Kind::SessionTime => render_session_time(s)?,
            Kind::Ip => opt(expected_ip(s[0])?, render_ip),
            other => other.render_actual_inner(s[0], server)?,
        })
    }

    fn render_actual_inner(self, m: Option<&[u8]>, server: &str) -> Result<String, ValueError> {
        let Some(b) = m else {
            return Ok("NULL".to_owned());
        };
        Ok(match self {
            Kind::User => user_id(field::text(m)?, server),
            Kind::Text => format!("{:?}", field::text(m)?),
            Kind::Token => mask_token(field::text(m)?),
            Kind::Hash => "(hidden)".to_owned(),
            Kind::Bool => field::bool(m)?.to_string(),
            Kind::Int => field::int8(m)?.to_string(),
            Kind::Time | Kind::TimeOrAny | Kind::SessionTime => render_pg_micros(micros(b)?),
            Kind::Ip => opt(actual_ip(m)?, render_ip),
            Kind::Uuid => ulid::Ulid(u128::from_be_bytes(fixed::<16>(b, "uuid")?)).to_string(),
        })
    }
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "NULL".to_owned(), f)
}

/// `@localpart:server`, how operators know their users.
pub fn user_id(localpart: &str, server: &str) -> String {
    format!("@{localpart}:{server}")
}

/// The first 4 characters of a token and an ellipsis: enough to tell tokens apart in a
/// report, far too little to use one.
pub fn mask_token(token: &str) -> String {
    let prefix: String = token.chars().take(TOKEN_PREFIX).collect();
    format!("{prefix}…")
}

fn fixed<const N: usize>(b: &[u8], what: &'static str) -> Result<[u8; N], ValueError> {
    b.try_into().map_err(|_| ValueError::Malformed(what))
}

/// A `timestamptz` field: microseconds since 2000-01-01.
fn micros(b: &[u8]) -> Result<i64, ValueError> {
    Ok(i64::from_be_bytes(fixed::<8>(b, "timestamptz")?))
}

/// Whether a MAS `timestamptz` is exactly the Synapse Unix-ms time.
fn same_time(ms: i64, m: Option<&[u8]>) -> Result<bool, ValueError> {
    let Some(b) = m else { return Ok(false) };
    Ok(pg_micros_from_unix_ms(ms).ok() == Some(micros(b)?))
}

/// The Unix-ms time a `timestamptz` stands for, rounded down to the millisecond.
pub fn unix_ms_of_timestamptz(b: &[u8]) -> Result<i64, ValueError> {
    Ok(micros(b)?.div_euclid(1000).saturating_add(PG_EPOCH_UNIX_MS))
}

/// The time part a ULID gets for a row created at `unix_ms` (clamped to what 48 bits hold).
pub fn ulid_ms_for(unix_ms: i64) -> i64 {
    unix_ms.clamp(0, MAX_ULID_MS)
}

/// The time part of a `uuid` field holding a ULID.
pub fn ulid_ms_of(b: &[u8]) -> Result<i64, ValueError> {
    Ok((u128::from_be_bytes(fixed::<16>(b, "uuid")?) >> 80) as i64)
}

fn session_time_ok(s: &[Option<&[u8]>], m: Option<&[u8]>) -> Result<bool, ValueError> {
    let Some(b) = m else { return Ok(false) };
    let exact = field::opt_int8(s[0])?;
    let untimed = field::opt_bool(s[2])?.unwrap_or(false);
    if exact.is_none() || untimed {
        return Ok(true);
    }
    let actual = micros(b)?;
    let matches = |ms: i64| pg_micros_from_unix_ms(ms).ok() == Some(actual);
    if exact.is_some_and(matches) {
        return Ok(true);
    }
    Ok(int8_array(s[1])?.into_iter().flatten().any(matches))
}

fn render_session_time(s: &[Option<&[u8]>]) -> Result<String, ValueError> {
    let exact = field::opt_int8(s[0])?;
    let untimed = field::opt_bool(s[2])?.unwrap_or(false);
    Ok(match exact {
        None => "any time (the migration's)".to_owned(),
        Some(_) if untimed => "any time (a token of the device has no last_validated)".to_owned(),
        Some(ms) => {
            let others = int8_array(s[1])?.into_iter().flatten().count();
            format!(
                "{} (or the last_validated of one of its {others} tokens)",
                render_unix_ms(ms)
            )
        }
    })
}

/// The elements of a binary `int8[]` (one dimension; NULL array = no elements). Allocates, so
/// only reached for devices whose session time is not the exact one.
fn int8_array(f: Option<&[u8]>) -> Result<Vec<Option<i64>>, ValueError> {
    const BAD: ValueError = ValueError::Malformed("int8[]");
    let Some(b) = f else { return Ok(Vec::new()) };
    let i32_at = |p: usize| -> Result<i32, ValueError> {
        Ok(i32::from_be_bytes(fixed::<4>(
            b.get(p..p + 4).ok_or(BAD)?,
            "int8[]",
        )?))
    };
    let ndim = i32_at(0)?;
    if ndim == 0 {
        return Ok(Vec::new());
    }
    if ndim != 1 {
        return Err(BAD);
    }
    let len = usize::try_from(i32_at(12)?).map_err(|_| BAD)?;
    let mut pos = 20;
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let n = i32_at(pos)?;
        pos += 4;
        if n == -1 {
            out.push(None);
            continue;
        }
        let v = b.get(pos..pos + 8).ok_or(BAD)?;
        out.push(Some(i64::from_be_bytes(fixed::<8>(v, "int8[]")?)));
        pos += 8;
    }
    Ok(out)
}

/// The address `migrate` stores for a Synapse device ip, with its full prefix length.
fn expected_ip(f: Option<&[u8]>) -> Result<Option<(IpAddr, u8)>, ValueError> {
    Ok(match field::opt_text(f)?.map(str::trim) {
        None | Some("") | Some("-") => None,
        Some(s) => s.parse::<IpAddr>().ok().map(|ip| (ip, full_prefix(ip))),
    })
}

fn full_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// A binary `inet`: family (2: IPv4, 3: IPv6), prefix bits, is-cidr flag, length, address.
fn actual_ip(f: Option<&[u8]>) -> Result<Option<(IpAddr, u8)>, ValueError> {
    const BAD: ValueError = ValueError::Malformed("inet");
    let Some(b) = f else { return Ok(None) };
    let (family, bits, addr) = match b {
        [family, bits, _cidr, _len, addr @ ..] => (*family, *bits, addr),
        _ => return Err(BAD),
    };
    let ip = match family {
        2 => IpAddr::from(fixed::<4>(addr, "inet")?),
        3 => IpAddr::from(fixed::<16>(addr, "inet")?),
        _ => return Err(BAD),
    };
    Ok(Some((ip, bits)))
}

fn render_ip((ip, bits): (IpAddr, u8)) -> String {
    if bits == full_prefix(ip) {
        ip.to_string()
    } else {
        format!("{ip}/{bits}")
    }
}

/// A Unix-ms time as ISO 8601 UTC.
pub fn render_unix_ms(ms: i64) -> String {
    match pg_micros_from_unix_ms(ms) {
        Ok(us) => render_pg_micros(us),
        Err(_) => format!("{ms} ms since 1970 (out of PostgreSQL's range)"),
    }
}

/// A `timestamptz` (µs since 2000-01-01) as ISO 8601 UTC, with as many fraction digits as it
/// needs. The `time` crate's large-dates range covers PostgreSQL's (4713 BC to 294276 AD).
pub fn render_pg_micros(us: i64) -> String {
    let unix_us = i128::from(us) + i128::from(PG_EPOCH_UNIX_MS) * 1000;
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(unix_us * 1000) else {
        return format!("{us} µs since 2000-01-01");
    };
    let fraction = match t.microsecond() {
        0 => String::new(),
        f if f % 1000 == 0 => format!(".{:03}", f / 1000),
        f => format!(".{f:06}"),
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{fraction}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int8(v: i64) -> Vec<u8> {
        v.to_be_bytes().to_vec()
    }

    fn tstz(unix_ms: i64) -> Vec<u8> {
        pg_micros_from_unix_ms(unix_ms)
            .unwrap()
            .to_be_bytes()
            .to_vec()
    }

    #[test]
    fn times_compare_exactly_and_render_as_iso() {
        let s = int8(1_579_000_000_000);
        assert!(
            Kind::Time
                .equal(&[Some(&s)], Some(&tstz(1_579_000_000_000)))
                .unwrap()
        );
        assert!(
            !Kind::Time
                .equal(&[Some(&s)], Some(&tstz(1_579_000_000_001)))
                .unwrap()
        );
        assert!(!Kind::Time.equal(&[Some(&s)], None).unwrap());
        assert!(Kind::Time.equal(&[None], None).unwrap());
        assert!(Kind::TimeOrAny.equal(&[None], Some(&tstz(5))).unwrap());
        assert!(!Kind::TimeOrAny.equal(&[None], None).unwrap());
        assert_eq!(render_unix_ms(1_579_000_000_000), "2020-01-14T11:06:40Z");
        assert_eq!(
            render_unix_ms(1_579_000_000_123),
            "2020-01-14T11:06:40.123Z"
        );
        assert_eq!(render_unix_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(render_unix_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(render_pg_micros(1), "2000-01-01T00:00:00.000001Z");
        // PostgreSQL's extremes (4713 BC is year -4712 in ISO 8601).
        assert_eq!(
            render_unix_ms(9_224_318_015_999_999),
            "294276-12-31T23:59:59.999Z"
        );
        assert_eq!(
            render_unix_ms(-210_866_803_200_000),
            "-4713-11-24T00:00:00Z"
        );
    }

    #[test]
    fn session_time_accepts_any_token_time_or_the_exact_one() {
        // int8[] {10, 20}: ndim 1, no nulls, oid 20, dim 2, lbound 1.
        let mut arr = Vec::new();
        for v in [1i32, 0, 20, 2, 1] {
            arr.extend_from_slice(&v.to_be_bytes());
        }
        for v in [10i64, 20] {
            arr.extend_from_slice(&8i32.to_be_bytes());
            arr.extend_from_slice(&v.to_be_bytes());
        }
        let exact = int8(10);
        let no = [0u8];
        let yes = [1u8];
        let s = [Some(&exact[..]), Some(&arr[..]), Some(&no[..])];
        let ok = |ms| Kind::SessionTime.equal(&s, Some(&tstz(ms))).unwrap();
        assert!(ok(10) && ok(20) && !ok(30));
        let untimed = [Some(&exact[..]), Some(&arr[..]), Some(&yes[..])];
        assert!(Kind::SessionTime.equal(&untimed, Some(&tstz(30))).unwrap());
        assert!(
            Kind::SessionTime
                .equal(&[None, None, None], Some(&tstz(30)))
                .unwrap()
        );
        assert!(!Kind::SessionTime.equal(&[None, None, None], None).unwrap());
    }

    #[test]
    fn ips_follow_the_migration_rules() {
        let inet = |b: &[u8]| b.to_vec();
        let v4 = inet(&[2, 32, 0, 4, 1, 2, 3, 4]);
        assert!(Kind::Ip.equal(&[Some(b"1.2.3.4")], Some(&v4)).unwrap());
        assert!(Kind::Ip.equal(&[Some(b" 1.2.3.4 ")], Some(&v4)).unwrap());
        assert!(!Kind::Ip.equal(&[Some(b"1.2.3.5")], Some(&v4)).unwrap());
        for none in [&b"-"[..], b"", b"not-an-ip"] {
            assert!(Kind::Ip.equal(&[Some(none)], None).unwrap());
        }
        assert!(Kind::Ip.equal(&[None], None).unwrap());
        let net = inet(&[2, 24, 0, 4, 1, 2, 3, 4]);
        assert!(!Kind::Ip.equal(&[Some(b"1.2.3.4")], Some(&net)).unwrap());
        assert_eq!(Kind::Ip.render_actual(Some(&net), "x"), "1.2.3.4/24");
    }

    #[test]
    fn secrets_are_never_rendered() {
        let token = b"syt_YWxpY2U_IlhrtBbRFxtBMrIbBaVB_3IZwIM";
        assert_eq!(Kind::Token.render_actual(Some(token), "x"), "syt_…");
        assert_eq!(Kind::Token.render_expected(&[Some(token)], "x"), "syt_…");
        assert_eq!(
            Kind::Hash.render_actual(Some(b"$2b$12$abc"), "x"),
            "(hidden)"
        );
        assert_eq!(mask_token("ab"), "ab…");
        assert_eq!(
            Kind::User.render_actual(Some(b"alice"), "example.com"),
            "@alice:example.com"
        );
    }

    #[test]
    fn ulid_time_parts() {
        let id: u128 = (1_579_000_000_000u128 << 80) | 12345;
        assert_eq!(ulid_ms_of(&id.to_be_bytes()).unwrap(), 1_579_000_000_000);
        assert_eq!(
            unix_ms_of_timestamptz(&tstz(1_579_000_000_000)).unwrap(),
            1_579_000_000_000
        );
        let before_2000 = (-1i64).to_be_bytes();
        assert_eq!(
            unix_ms_of_timestamptz(&before_2000).unwrap(),
            PG_EPOCH_UNIX_MS - 1
        );
        assert_eq!(ulid_ms_for(-5), 0);
    }
}
