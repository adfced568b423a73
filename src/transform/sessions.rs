//! The devices/tokens join, done by syn2mas on one partition of users at a time.
//!
//! Synapse streams its owners, devices and tokens (with their refresh tokens) unjoined
//! (sql/sessions_*.sql); `source::spill` has routed every row to the partition of its user id.
//! Here a partition's rows are joined exactly as the SQL this replaces did (a FULL JOIN of
//! devices and tokens on (user_id, device_id), the owner by user id, each device's session
//! time from its tokens) and every joined row goes through `rows::session_row`, the same
//! mapping and skip order as before. In Rust, over a few MiB at a time, that join costs a
//! fraction of what PostgreSQL's hash joins and aggregate did.

use std::collections::HashMap;

/// foldhash, seeded per process: the join hashes ~5M short keys per million users, and std's
/// SipHash was ~5 % of syn2mas's CPU; a random seed keeps crafted user ids from colliding.
type Hasher = foldhash::fast::RandomState;

use super::{Batch, Ctx, RowError, field_error, rows};
use crate::db::copy_binary::{FieldError, decode_rows, field};
use crate::source::SessionRead;

type Row<'a> = [Option<&'a [u8]>];

/// Columns of sql/sessions_owners.sql.
mod owner {
    pub const NAME: usize = 0;
    pub const SKIP: usize = 1;
    pub const CREATION_TS: usize = 2;
    pub const ADMIN: usize = 3;
}

/// Columns of sql/sessions_devices.sql.
mod device {
    pub const USER_ID: usize = 0;
    pub const DEVICE_ID: usize = 1;
    pub const DISPLAY_NAME: usize = 2;
    pub const LAST_SEEN: usize = 3;
    pub const IP: usize = 4;
    pub const USER_AGENT: usize = 5;
    pub const SKIP: usize = 6;
}

/// Columns of sql/sessions_tokens.sql.
mod token {
    pub const USER_ID: usize = 0;
    pub const DEVICE_ID: usize = 1;
    pub const ID: usize = 2;
    pub const TOKEN: usize = 3;
    pub const VALID_UNTIL: usize = 4;
    pub const LAST_VALIDATED: usize = 5;
    pub const PUPPET: usize = 6;
    pub const PLAIN: usize = 7;
    pub const RT_ID: usize = 8;
    pub const RT_TOKEN: usize = 9;
    pub const PAIR_SKIP: usize = 10;
}

const TRUE: &[u8] = &[1];
const FALSE: &[u8] = &[0];

fn bool_field(b: bool) -> Option<&'static [u8]> {
    Some(if b { TRUE } else { FALSE })
}

/// A device's tokens and what its compat session needs of them.
#[derive(Default)]
struct Group {
    /// Its tokens (index in the partition) with their ids, decoded once.
    tokens: Vec<(usize, Option<i64>)>,
    /// `min(id)`: the token whose row also carries the device.
    first_token: Option<i64>,
    /// Earliest `last_validated` of non-puppet tokens without / with a refresh token.
    plain_ms: Option<i64>,
    any_ms: Option<i64>,
}

impl Group {
    /// When the session was created (sql/session_times.sql): plain tokens first.
    fn session_ms(&self) -> Option<i64> {
        self.plain_ms.or(self.any_ms)
    }
}

/// A partition's token groups by (user_id, device_id).
type Groups<'a> = HashMap<(&'a [u8], &'a [u8]), Group, Hasher>;

fn min_opt(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// A token-field decoding failure, named like the transform names its own.
fn token_error(t: &Row<'_>, column: &str, e: FieldError) -> RowError {
    let who = t[token::USER_ID]
        .and_then(|u| std::str::from_utf8(u).ok())
        .unwrap_or("?");
    field_error("access_tokens", who, column, e)
}

/// Joins one partition (the raw tuples of its owners, devices and tokens) and maps every
/// joined row. Memory is this partition's rows plus its output.
pub fn process_partition(ctx: &Ctx, parts: [&[u8]; 3]) -> anyhow::Result<Batch> {
    let slots = decoded(parts)?;
    let [owners, devices, tokens] = [0, 1, 2].map(|i| -> Vec<&Row<'_>> {
        slots[i]
            .chunks_exact(SessionRead::ALL[i].fields())
            .collect()
    });
    let owners = index_owners(&owners);
    let groups = group_tokens(&tokens)?;
    let mut batch = Batch::new(ctx);
    let mut matched = vec![false; tokens.len()];
    for d in &devices {
        let key = d[device::USER_ID].zip(d[device::DEVICE_ID]);
        match key.and_then(|k| groups.get(&k)) {
            Some(g) => {
                for &(i, id) in &g.tokens {
                    matched[i] = true;
                    let carries = id.is_some() && id == g.first_token;
                    emit(
                        ctx,
                        &mut batch,
                        &owners,
                        Some(d),
                        Some(tokens[i]),
                        carries,
                        Some(g),
                    )?;
                }
            }
            None => emit(ctx, &mut batch, &owners, Some(d), None, true, None)?,
        }
    }
    for (t, _) in tokens.iter().zip(&matched).filter(|(_, m)| !**m) {
        let g = t[token::USER_ID]
            .zip(t[token::DEVICE_ID])
            .and_then(|k| groups.get(&k));
        emit(ctx, &mut batch, &owners, None, Some(t), false, g)?;
    }
    batch.finish(ctx);
    Ok(batch)
}

/// The three streams' tuples as field slices, row-major.
fn decoded(parts: [&[u8]; 3]) -> anyhow::Result<[Vec<Option<&[u8]>>; 3]> {
    let mut out: [Vec<Option<&[u8]>>; 3] = Default::default();
    for ((bytes, read), slots) in parts.iter().zip(SessionRead::ALL).zip(out.iter_mut()) {
        decode_rows(bytes, read.fields(), slots)?;
    }
    Ok(out)
}

/// Owners by user id. `users.name` is unique in Synapse, so the first row of a name is its
/// only one.
fn index_owners<'a>(owners: &[&'a Row<'a>]) -> HashMap<&'a [u8], &'a Row<'a>, Hasher> {
    let mut map = HashMap::with_capacity_and_hasher(owners.len(), Hasher::default());
    for o in owners {
        if let Some(name) = o[owner::NAME] {
            map.entry(name).or_insert(*o);
        }
    }
    map
}

/// Tokens by (user_id, device_id), with the aggregates of sql/session_times.sql. Tokens
/// without a device id belong to no group (NULL joins nothing).
fn group_tokens<'a>(tokens: &[&'a Row<'a>]) -> Result<Groups<'a>, RowError> {
    let mut groups = Groups::default();
    for (i, t) in tokens.iter().enumerate() {
        let Some(key) = t[token::USER_ID].zip(t[token::DEVICE_ID]) else {
            continue;
        };
        let id = field::opt_int8(t[token::ID]).map_err(|e| token_error(t, "id", e))?;
        let g = groups.entry(key).or_default();
        g.tokens.push((i, id));
        if let Some(id) = id {
            g.first_token = min_opt(g.first_token, id);
        }
        let puppet = field::bool(t[token::PUPPET]).map_err(|e| token_error(t, "puppet", e))?;
        let lv = field::opt_int8(t[token::LAST_VALIDATED])
            .map_err(|e| token_error(t, "last_validated", e))?;
        if let (false, Some(ms)) = (puppet, lv) {
            g.any_ms = min_opt(g.any_ms, ms);
            if field::bool(t[token::PLAIN]).map_err(|e| token_error(t, "plain", e))? {
                g.plain_ms = min_opt(g.plain_ms, ms);
            }
        }
    }
    Ok(groups)
}

/// One row of the join, in the column order `rows::session_row` reads.
fn emit(
    ctx: &Ctx,
    batch: &mut Batch,
    owners: &HashMap<&[u8], &Row<'_>, Hasher>,
    d: Option<&Row<'_>>,
    t: Option<&Row<'_>>,
    carries: bool,
    g: Option<&Group>,
) -> Result<(), RowError> {
    let dv = |i: usize| d.and_then(|d| d[i]);
    let tk = |i: usize| t.and_then(|t| t[i]);
    let exists = dv(device::USER_ID).is_some();
    let user_id = dv(device::USER_ID).or(tk(token::USER_ID));
    let owner = user_id.and_then(|u| owners.get(u));
    let ow = |i: usize| owner.and_then(|o| o[i]);
    let owner_skip = match owner {
        None => Some(&b"orphan"[..]),
        Some(o) => o[owner::SKIP],
    };
    let session_ms = g.and_then(Group::session_ms).map(i64::to_be_bytes);
    let row: [Option<&[u8]>; 21] = [
        user_id,
        dv(device::DEVICE_ID).or(tk(token::DEVICE_ID)),
        bool_field(exists),
        bool_field(exists && carries),
        dv(device::DISPLAY_NAME),
        dv(device::LAST_SEEN),
        dv(device::IP),
        dv(device::USER_AGENT),
        if exists { dv(device::SKIP) } else { None },
        owner_skip,
        ow(owner::CREATION_TS),
        ow(owner::ADMIN),
        session_ms.as_ref().map(|b| &b[..]),
        tk(token::ID),
        tk(token::TOKEN),
        tk(token::VALID_UNTIL),
        tk(token::LAST_VALIDATED),
        tk(token::PUPPET),
        tk(token::RT_ID),
        tk(token::RT_TOKEN),
        tk(token::PAIR_SKIP),
    ];
    rows::session_row(ctx, &row, batch)
}
