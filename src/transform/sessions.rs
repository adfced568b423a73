//! Devices and tokens: the join syn2mas does itself, one partition of users at a time, and the
//! mapping of its rows.
//!
//! Synapse streams its owners, devices and tokens unjoined (`source::reads::{Owner, Device,
//! Token}`); `source::spill` has routed every row to the partition of its user id. Here a
//! partition is decoded into typed rows and joined in memory: each device with its owner and
//! the session time of its tokens, each token with its owner and its device. In Rust, over a
//! few MiB at a time, that join costs a fraction of what PostgreSQL's hash joins and aggregate
//! did (~13 CPU-seconds at 1M users).

use std::collections::HashMap;

/// foldhash, seeded per process: the join hashes ~5M short keys per million users, and std's
/// SipHash was ~5 % of syn2mas's CPU; a random seed keeps crafted user ids from colliding.
type Hasher = foldhash::fast::RandomState;

use super::accounts::{
    micros, on_server, orphan, owner_creation, settle, skip_for_owner, user_uuid,
};
use super::ids::{Kind, ulid_ms};
use super::rules::{self, Fate, OwnerState, Pair, Reason, SessionTimes, TokenDevice};
use super::{Batch, Ctx, Note, Problem, RowError, RowRef, decode_all};
use crate::sink::tables::Target;
use crate::source::Entity;
use crate::source::reads::{Device, Owner, Token};

/// A partition's rows, joined. Which rows each rule needs together (what lets
/// `source::spill` split one user's rows by device):
///
/// - a device: its owner row, and the session times of the tokens naming it;
/// - an access token (and its refresh token, which is on the same row): its owner row, and,
///   when it names a device, that device's row and session times;
/// - a refresh pair's consistency and whether it was superseded are columns of its own row
///   (`Token::rt_user_id`, `rt_device_id`, `successor_used`), computed by the read;
/// - a token without a device, or a refresh token no access token points at: its own row and
///   its owner's.
///
/// Nothing looks across two devices of one user, and owner rows are only looked up.
struct Partition<'a> {
    owners: HashMap<&'a str, Owner<'a>, Hasher>,
    /// Devices by (user_id, device_id), Synapse's primary key, with the session times of the
    /// tokens naming each (only an existing device's times are ever used: a token naming a
    /// deleted device is skipped before its session is looked at).
    devices: HashMap<(&'a str, &'a str), (Device<'a>, SessionTimes), Hasher>,
}

/// Joins one partition (the raw tuples of its owners, devices and tokens) and maps every row.
/// Memory is this partition's rows plus its output.
pub fn process_partition(ctx: &Ctx, parts: [&[u8]; 3]) -> anyhow::Result<Batch> {
    let owners: Vec<Owner<'_>> = decode_all(parts[0], Entity::Users)?;
    let devices: Vec<Device<'_>> = decode_all(parts[1], Entity::Devices)?;
    let tokens: Vec<Token<'_>> = decode_all(parts[2], Entity::AccessTokens)?;
    let mut p = Partition::join(&owners, &devices);
    p.add_times(&tokens);
    let mut batch = Batch::new(ctx);
    for d in &devices {
        device(ctx, &p, d, &mut batch)?;
    }
    for t in &tokens {
        token(ctx, &p, t, &mut batch)?;
    }
    batch.finish(ctx);
    Ok(batch)
}

/// A partition too large to hold whole (one device with more tokens than the partition
/// budget): its owner and device rows, held while its tokens are mapped in runs, and the
/// session times of each device, gathered by a first pass over every run
/// ([`Held::add_times`]) before any token is mapped.
#[derive(Debug)]
pub struct Held {
    owners: Vec<u8>,
    devices: Vec<u8>,
    /// Session times per device row, in the order of `devices`.
    times: Vec<SessionTimes>,
}

impl Held {
    /// Holds the raw owner and device tuples of a partition.
    pub fn new(owners: Vec<u8>, devices: Vec<u8>) -> anyhow::Result<Self> {
        // Only the count: the rows are decoded (and checked) when they are mapped.
        let n = crate::db::copy_binary::scan_tuples(
            &devices,
            <Device<'_> as crate::source::reads::Read>::FIELDS,
        )?
        .rows;
        Ok(Self {
            owners,
            devices,
            times: vec![SessionTimes::default(); n],
        })
    }

    /// Bytes of raw tuples held.
    pub fn bytes(&self) -> usize {
        self.owners.len() + self.devices.len()
    }

    /// Counts one run of the partition's tokens into its devices' session times.
    pub fn add_times(&mut self, tokens: &[u8]) -> anyhow::Result<()> {
        let tokens: Vec<Token<'_>> = decode_all(tokens, Entity::AccessTokens)?;
        let (owners, devices) = self.decode()?;
        let mut p = Partition::join(&owners, &devices);
        p.set_times(&devices, &self.times);
        p.add_times(&tokens);
        let times: Vec<SessionTimes> = devices
            .iter()
            .map(|d| p.devices[&(d.user_id, d.device_id)].1)
            .collect();
        self.times = times;
        Ok(())
    }

    fn decode(&self) -> anyhow::Result<(Vec<Owner<'_>>, Vec<Device<'_>>)> {
        Ok((
            decode_all(&self.owners, Entity::Users)?,
            decode_all(&self.devices, Entity::Devices)?,
        ))
    }

    /// Maps the held devices (once, after every run went through [`Held::add_times`]).
    pub fn process_devices(&self, ctx: &Ctx) -> anyhow::Result<Batch> {
        let (owners, devices) = self.decode()?;
        let mut p = Partition::join(&owners, &devices);
        p.set_times(&devices, &self.times);
        let mut batch = Batch::new(ctx);
        for d in &devices {
            device(ctx, &p, d, &mut batch)?;
        }
        batch.finish(ctx);
        Ok(batch)
    }

    /// Maps one run of the partition's tokens.
    pub fn process_tokens(&self, ctx: &Ctx, tokens: &[u8]) -> anyhow::Result<Batch> {
        let tokens: Vec<Token<'_>> = decode_all(tokens, Entity::AccessTokens)?;
        let (owners, devices) = self.decode()?;
        let mut p = Partition::join(&owners, &devices);
        p.set_times(&devices, &self.times);
        let mut batch = Batch::new(ctx);
        for t in &tokens {
            token(ctx, &p, t, &mut batch)?;
        }
        batch.finish(ctx);
        Ok(batch)
    }
}

impl<'a> Partition<'a> {
    fn join(owners: &[Owner<'a>], devices: &[Device<'a>]) -> Self {
        let mut p = Partition {
            owners: HashMap::with_capacity_and_hasher(owners.len(), Hasher::default()),
            devices: HashMap::with_capacity_and_hasher(devices.len(), Hasher::default()),
        };
        // `users.name` is unique in Synapse: the first row of a name is its only one.
        for o in owners {
            p.owners.entry(o.name).or_insert(*o);
        }
        for d in devices {
            p.devices
                .insert((d.user_id, d.device_id), (*d, SessionTimes::default()));
        }
        p
    }

    /// Counts tokens into the session times of the devices they name.
    fn add_times(&mut self, tokens: &[Token<'a>]) {
        for t in tokens.iter().filter(|t| t.id.is_some()) {
            if let Some(device_id) = t.device_id
                && let Some((_, times)) = self.devices.get_mut(&(t.user_id, device_id))
            {
                times.add(t.puppet, t.plain, t.last_validated);
            }
        }
    }

    /// Session times gathered earlier, one per row of `devices`.
    fn set_times(&mut self, devices: &[Device<'a>], times: &[SessionTimes]) {
        for (d, t) in devices.iter().zip(times) {
            if let Some((_, slot)) = self.devices.get_mut(&(d.user_id, d.device_id)) {
                *slot = *t;
            }
        }
    }

    fn session_ms(&self, user_id: &str, device_id: &str) -> Option<i64> {
        self.devices
            .get(&(user_id, device_id))
            .and_then(|(_, times)| times.session_ms())
    }
}

/// A device's compat session: its id and creation time (ms), the same for the session row and
/// for every token of the device.
fn device_session(
    ctx: &Ctx,
    localpart: &str,
    device_id: &str,
    session_ms: Option<i64>,
) -> (u128, i64) {
    let ms = ulid_ms(session_ms.unwrap_or(ctx.now_ms));
    let id = ctx.ids.ulid(
        Kind::Session,
        ms,
        &[localpart.as_bytes(), device_id.as_bytes()],
    );
    (id, ms)
}

/// A device's last IP: NULL, empty and `-` mean unknown; anything else unparsable is counted
/// and written as NULL (upstream does the same, with a warning).
fn device_ip(batch: &mut Batch, ip: Option<&str>) -> Option<std::net::IpAddr> {
    match ip.map(str::trim) {
        None | Some("") | Some("-") => None,
        Some(s) => {
            let parsed = s.parse().ok();
            if parsed.is_none() {
                batch.stats.invalid_ips += 1;
            }
            parsed
        }
    }
}

/// `devices` → `compat_sessions`. The device's own reasons come before its owner's.
fn device(ctx: &Ctx, p: &Partition<'_>, d: &Device<'_>, batch: &mut Batch) -> Result<(), RowError> {
    let e = Entity::Devices;
    let row = RowRef::Device(d);
    if let Err(err) = on_server(ctx, e, d.user_id) {
        return batch.refuse(err, &[e], row);
    }
    if let Some(r) = rules::device_skip(d.device_id, d.hidden) {
        batch.skipped(e, r, row);
        return Ok(());
    }
    let owner = p.owners.get(d.user_id);
    let checked = (|| match rules::owner_state(owner) {
        OwnerState::Missing => Err(orphan(e, d.user_id)),
        OwnerState::Skipped(r) => Ok(Err(r)),
        OwnerState::Migrated => {
            let last_seen = d
                .last_seen
                .map(|ms| micros(e, d.user_id, ms, "last_seen"))
                .transpose()?;
            let lp = super::accounts::localpart(ctx, e, d.user_id)?;
            let creation = owner_creation(e, d.user_id, owner.and_then(|o| o.creation_ts))?;
            Ok(Ok((last_seen, lp, creation)))
        }
    })();
    let Some((last_seen, lp, creation)) = settle(ctx, batch, e, d.user_id, row, checked)? else {
        return Ok(());
    };
    let ip = device_ip(batch, d.ip);
    let admin = owner.is_some_and(|o| o.admin);
    let session_ms = p.session_ms(d.user_id, d.device_id);
    batch.emit(Target::CompatSessions, |enc| {
        let (sid, ms) = device_session(ctx, lp, d.device_id, session_ms);
        let created = pg_micros(ms);
        enc.uuid(sid)
            .uuid(user_uuid(ctx, lp, creation))
            .text(d.device_id)
            .opt_text(d.display_name)
            .timestamptz(created)
            .bool(admin)
            .opt_timestamptz(last_seen)
            .opt_inet(ip)
            .opt_text(d.user_agent);
    });
    batch.migrated(e);
    Ok(())
}

/// A ULID time (0 ..= 2^48-1 ms) as `timestamptz` micros: always in range.
fn pg_micros(ulid_ms: i64) -> i64 {
    crate::db::copy_binary::pg_micros_from_unix_ms(ulid_ms)
        .expect("a ULID time is within timestamptz's range")
}

/// One row of the tokens read: an access token (with its refresh token, if any) or a refresh
/// token no access token points at.
fn token(ctx: &Ctx, p: &Partition<'_>, t: &Token<'_>, batch: &mut Batch) -> Result<(), RowError> {
    let row = RowRef::Token(t);
    let Some(id) = t.id else {
        let e = Entity::RefreshTokens;
        let user_id = t.rt_user_id.unwrap_or(t.user_id);
        if let Err(err) = on_server(ctx, e, user_id) {
            return batch.refuse(err, &[e], row);
        }
        batch.skipped(e, Reason::NoAccessToken, row);
        return Ok(());
    };
    let paired = t.rt_id.is_some();
    let entities: &[Entity] = if paired {
        &[Entity::RefreshTokens, Entity::AccessTokens]
    } else {
        &[Entity::AccessTokens]
    };
    if !servers_ok(ctx, t, paired, batch)? {
        batch.refused(entities, Problem::ServerName, row);
        return Ok(());
    }
    let owner = p.owners.get(t.user_id);
    let state = rules::owner_state(owner);
    let device = match t.device_id {
        None => TokenDevice::None,
        Some(d) => match p.devices.get(&(t.user_id, d)) {
            None => TokenDevice::Deleted,
            Some((dev, _)) => TokenDevice::Exists(rules::device_skip(dev.device_id, dev.hidden)),
        },
    };
    let times = match token_times(t, state) {
        Ok(v) => v,
        Err(err) => return batch.refuse(err, entities, row),
    };
    let fate = if paired {
        let pair = Pair {
            inconsistent: t.rt_user_id != Some(t.user_id) || t.rt_device_id != t.device_id,
            superseded: t.successor_used,
        };
        rules::refresh_pair_fate(pair, device, state)
    } else {
        rules::access_token_fate(t.puppet, device, state)
    };
    match fate {
        Fate::Orphan => {
            for e in entities {
                batch.refuse(orphan(*e, t.user_id), &[], row)?;
            }
            batch.refused(entities, Problem::Orphan, row);
            Ok(())
        }
        Fate::Skip(r) => {
            if r == Reason::DeviceHidden {
                batch.note(Entity::AccessTokens, Note::TokenHiddenDevice, || {
                    format!("{} (device {})", t.user_id, t.device_id.unwrap_or(""))
                });
            }
            skip_for_owner(ctx, batch, entities, t.user_id, r, row);
            Ok(())
        }
        Fate::Migrate => match write_token(ctx, p, t, id, times, owner, batch) {
            Err(err) => batch.refuse(err, entities, row),
            ok => ok,
        },
    }
}

/// E-server-name for the access token's user and, for a pair, the refresh token's: both are
/// checked (and, when counting, both recorded) before any skip reason.
fn servers_ok(ctx: &Ctx, t: &Token<'_>, paired: bool, batch: &mut Batch) -> Result<bool, RowError> {
    let mut ok = true;
    let rt_user = t.rt_user_id.filter(|_| paired);
    for (e, user_id) in [
        (Entity::AccessTokens, Some(t.user_id)),
        (Entity::RefreshTokens, rt_user),
    ] {
        if let Some(Err(err)) = user_id.map(|u| on_server(ctx, e, u)) {
            batch.refuse(err, &[], RowRef::Token(t))?;
            ok = false;
        }
    }
    Ok(ok)
}

/// A token's times as `timestamptz` micros: (created from `last_validated`, expires from
/// `valid_until_ms`). They must fit whenever the owner is migrated and the token is not a
/// puppet's, even if the token is then skipped for its device or refresh chain: what `check`
/// reports as E-timestamp-range.
fn token_times(t: &Token<'_>, owner: OwnerState) -> Result<(Option<i64>, Option<i64>), RowError> {
    if owner != OwnerState::Migrated || t.puppet {
        return Ok((None, None));
    }
    let e = Entity::AccessTokens;
    let time =
        |ms: Option<i64>, column: &str| ms.map(|ms| micros(e, t.user_id, ms, column)).transpose();
    Ok((
        time(t.last_validated, "access_tokens.last_validated")?,
        time(t.valid_until_ms, "access_tokens.valid_until_ms")?,
    ))
}

/// Writes a migrated access token (its deviceless session when it has no device) and, for a
/// pair, its refresh token. Every check comes before the first row is written, so an error
/// leaves the batch as it was.
fn write_token(
    ctx: &Ctx,
    p: &Partition<'_>,
    t: &Token<'_>,
    id: i64,
    (created, expires): (Option<i64>, Option<i64>),
    owner: Option<&Owner<'_>>,
    batch: &mut Batch,
) -> Result<(), RowError> {
    let e = Entity::AccessTokens;
    let malformed = |column: &str| RowError {
        entity: e,
        row: t.user_id.to_owned(),
        message: format!("column `{column}`: unexpected NULL"),
        problem: None,
    };
    let token = t.token.ok_or_else(|| malformed("token"))?;
    let lp = super::accounts::localpart(ctx, e, t.user_id)?;
    let created_ms = t.last_validated.unwrap_or(ctx.now_ms);
    let created = match created {
        Some(c) => c,
        None => micros(e, t.user_id, created_ms, "access_tokens.last_validated")?,
    };
    let session = match t.device_id {
        Some(d) => Session::Device(d, p.session_ms(t.user_id, d)),
        None => {
            let creation = owner_creation(e, t.user_id, owner.and_then(|o| o.creation_ts))?;
            Session::Deviceless(creation)
        }
    };
    let rt = match (t.rt_id, t.rt_token) {
        (Some(rt_id), Some(rt_token)) => Some((rt_id, rt_token)),
        (Some(_), None) => return Err(malformed("refresh_tokens.token")),
        _ => None,
    };
    if batch.counting() {
        if matches!(session, Session::Deviceless(_)) {
            batch.emit(Target::CompatSessions, |_| {});
        }
        batch.emit(Target::CompatAccessTokens, |_| {});
        if rt.is_some() {
            batch.emit(Target::CompatRefreshTokens, |_| {});
        }
    } else {
        let sid = session.write(ctx, lp, id, created_ms, batch);
        let at_uuid = ctx
            .ids
            .ulid(Kind::AccessToken, created_ms, &[&id.to_le_bytes()]);
        batch.emit(Target::CompatAccessTokens, |enc| {
            enc.uuid(at_uuid)
                .uuid(sid)
                .text(token)
                .timestamptz(created)
                .opt_timestamptz(expires);
        });
        if let Some((rt_id, rt_token)) = rt {
            batch.emit(Target::CompatRefreshTokens, |enc| {
                let rt_uuid = ctx
                    .ids
                    .ulid(Kind::RefreshToken, created_ms, &[&rt_id.to_le_bytes()]);
                enc.uuid(rt_uuid)
                    .uuid(sid)
                    .uuid(at_uuid)
                    .text(rt_token)
                    .timestamptz(created);
            });
        }
    }
    if rt.is_some() {
        batch.migrated(Entity::RefreshTokens);
    }
    batch.migrated(e);
    Ok(())
}

/// The compat session a migrated access token belongs to.
enum Session<'a> {
    /// Its device's, with the device's session time.
    Device(&'a str, Option<i64>),
    /// Its own (upstream gives every token without a device one), with the owner's creation
    /// time in seconds.
    Deviceless(i64),
}

impl Session<'_> {
    /// The session's id; a deviceless session's row is written here.
    fn write(
        &self,
        ctx: &Ctx,
        lp: &str,
        token_id: i64,
        created_ms: i64,
        batch: &mut Batch,
    ) -> u128 {
        match *self {
            Session::Device(device_id, session_ms) => {
                device_session(ctx, lp, device_id, session_ms).0
            }
            Session::Deviceless(creation) => {
                let ms = ulid_ms(created_ms);
                let sid = ctx
                    .ids
                    .ulid(Kind::DevicelessSession, ms, &[&token_id.to_le_bytes()]);
                let uid = user_uuid(ctx, lp, creation);
                batch.emit(Target::CompatSessions, |enc| {
                    enc.uuid(sid)
                        .uuid(uid)
                        .null()
                        .null()
                        .timestamptz(pg_micros(ms))
                        .bool(false)
                        .null()
                        .null()
                        .null();
                });
                sid
            }
        }
    }
}
