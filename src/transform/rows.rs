//! One mapping function per Synapse query (columns as in sql/*.sql, in order).

use std::net::IpAddr;

use super::ids::{Kind, ulid_ms};
use super::{Batch, Ctx, RowError, field_error, reason, time_error};
use crate::db::copy_binary::{field, pg_micros_from_unix_ms};
use crate::sink::tables::Target;
use crate::source::{Entity, Query};

type Row<'a> = [Option<&'a [u8]>];

/// Maps one row of a single-query stage into a batch.
pub(super) type Mapper = fn(&Ctx, &Row<'_>, &mut Batch) -> Result<(), RowError>;

/// The mapping of a single-query stage (the devices/tokens stage joins first: `sessions`).
pub(super) fn mapper(query: Query) -> Option<Mapper> {
    match query {
        Query::Users => Some(user),
        Query::Threepids => Some(threepid),
        Query::ExternalIds => Some(external_id),
        Query::Sessions => None,
    }
}

/// Typed access to one decoded row, turning decode failures into `RowError`s that name the
/// table, the row's user and the column.
struct Fields<'r, 'a> {
    table: &'static str,
    row: &'r Row<'a>,
    /// The row's user id once known, for messages.
    who: &'r str,
}

impl<'r, 'a> Fields<'r, 'a> {
    fn text(&self, i: usize, col: &str) -> Result<&'a str, RowError> {
        field::text(self.row[i]).map_err(|e| field_error(self.table, self.who, col, e))
    }
    fn opt_text(&self, i: usize, col: &str) -> Result<Option<&'a str>, RowError> {
        field::opt_text(self.row[i]).map_err(|e| field_error(self.table, self.who, col, e))
    }
    /// A text column syn2mas passes to MAS undecoded (`field::text_bytes` says why that is safe).
    fn text_bytes(&self, i: usize, col: &str) -> Result<&'a [u8], RowError> {
        field::text_bytes(self.row[i]).map_err(|e| field_error(self.table, self.who, col, e))
    }
    fn int8(&self, i: usize, col: &str) -> Result<i64, RowError> {
        field::int8(self.row[i]).map_err(|e| field_error(self.table, self.who, col, e))
    }
    fn opt_int8(&self, i: usize, col: &str) -> Result<Option<i64>, RowError> {
        field::opt_int8(self.row[i]).map_err(|e| field_error(self.table, self.who, col, e))
    }
    fn bool(&self, i: usize, col: &str) -> Result<bool, RowError> {
        field::bool(self.row[i]).map_err(|e| field_error(self.table, self.who, col, e))
    }
    fn opt_bool(&self, i: usize, col: &str) -> Result<Option<bool>, RowError> {
        field::opt_bool(self.row[i]).map_err(|e| field_error(self.table, self.who, col, e))
    }
    /// `timestamptz` micros for a Unix-ms column value.
    fn micros(&self, ms: i64, col: &str) -> Result<i64, RowError> {
        pg_micros_from_unix_ms(ms).map_err(|e| time_error(self.table, self.who, col, e))
    }
    fn err(&self, message: impl Into<String>) -> RowError {
        RowError {
            table: self.table,
            row: format!("`{}`", self.who),
            message: message.into(),
        }
    }
    /// The skip reason of the row (last column), if any; fatal reasons become errors.
    fn skip(&self, ctx: &Ctx) -> Result<Option<&'static str>, RowError> {
        let Some(s) = self.opt_text(self.row.len() - 1, "skip")? else {
            return Ok(None);
        };
        match reason(self.table, self.who, s)? {
            "orphan" => Err(self.err(
                "its user does not exist in Synapse's `users` table (`syn2mas check` reports these as E-orphan-rows)",
            )),
            "unmapped_provider" if !ctx.ignore_missing_auth_providers => Err(self.err(
                "its auth_provider has no MAS provider with that `synapse_idp_id` (see E-unmapped-provider in `syn2mas check`)",
            )),
            r => Ok(Some(r)),
        }
    }
}

/// E-server-name, checked on every row of a dependent table before any skip reason: `migrate`
/// then refuses every row `check` reports, without the preflight scanning those tables again.
fn on_server(ctx: &Ctx, f: &Fields<'_, '_>) -> Result<(), RowError> {
    let id = f.who;
    if !id.starts_with('@') {
        return Err(f.err("user id does not start with `@`"));
    }
    if id.len() <= ctx.suffix.len() + 1 || !id.ends_with(ctx.suffix.as_str()) {
        return Err(f.err(format!(
            "user id does not end with `{}` (the MAS `matrix.homeserver`); see E-server-name in `syn2mas check`",
            ctx.suffix
        )));
    }
    Ok(())
}

/// The localpart of a full user id, which must be `@<localpart>:<server_name>`.
fn localpart<'a>(ctx: &Ctx, f: &Fields<'_, '_>, user_id: &'a str) -> Result<&'a str, RowError> {
    on_server(ctx, &Fields { who: user_id, ..*f })?;
    let lp = &user_id[1..user_id.len() - ctx.suffix.len()];
    if lp.is_empty() || lp.contains(':') {
        return Err(f.err(
            "the localpart is empty or contains `:`, which a MAS username cannot (see E-localpart-colon)",
        ));
    }
    Ok(lp)
}

/// The MAS id of a user, recomputed from its localpart and creation time (seconds).
fn user_uuid(ctx: &Ctx, localpart: &str, creation_ts: i64) -> u128 {
    ctx.ids.ulid(
        Kind::User,
        creation_ts.saturating_mul(1000),
        &[localpart.as_bytes()],
    )
}

/// The owner's creation time, which dependent rows carry from the join with `users`.
fn owner_creation(f: &Fields<'_, '_>, i: usize) -> Result<i64, RowError> {
    f.opt_int8(i, "users.creation_ts")?
        .ok_or_else(|| f.err("its user has no `creation_ts` (see E-null-user-fields)"))
}

fn count_skip(batch: &mut Batch, entity: Entity, reason: &'static str) {
    let c = batch.counts(entity);
    c.read += 1;
    *c.skipped.entry(reason).or_default() += 1;
}

fn count_migrated(batch: &mut Batch, entity: Entity) {
    let c = batch.counts(entity);
    c.read += 1;
    c.migrated += 1;
}

/// The fields of a row whose user id is its first column, or `None` when its `skip` column
/// says it is not migrated (then it is counted as skipped under `entity`).
fn unless_skipped<'r, 'a>(
    ctx: &Ctx,
    table: &'static str,
    entity: Entity,
    row: &'r Row<'a>,
    batch: &mut Batch,
) -> Result<Option<Fields<'r, 'a>>, RowError> {
    let probe = Fields {
        table,
        row,
        who: "?",
    };
    let f = Fields {
        who: probe.text(0, "user_id")?,
        ..probe
    };
    on_server(ctx, &f)?;
    if let Some(r) = f.skip(ctx)? {
        count_skip(batch, entity, r);
        return Ok(None);
    }
    Ok(Some(f))
}

/// `users` → `users` (+ `user_passwords`).
pub(super) fn user(ctx: &Ctx, row: &Row<'_>, batch: &mut Batch) -> Result<(), RowError> {
    let probe = Fields {
        table: "users",
        row,
        who: "?",
    };
    let name = probe.opt_text(0, "name")?;
    let f = Fields {
        who: name.unwrap_or("(NULL name)"),
        ..probe
    };
    if let Some(r) = f.skip(ctx)? {
        count_skip(batch, Entity::Users, r);
        return Ok(());
    }
    let name = name.ok_or_else(|| f.err("`name` is NULL (see E-null-user-fields)"))?;
    let creation = f
        .opt_int8(2, "creation_ts")?
        .ok_or_else(|| f.err("`creation_ts` is NULL (see E-null-user-fields)"))?;
    let lp = localpart(ctx, &f, name)?;
    let uid = user_uuid(ctx, lp, creation);
    let created = f.micros(creation.saturating_mul(1000), "creation_ts")?;
    let (admin, deactivated, locked, guest) = (
        f.bool(3, "admin")?,
        f.bool(4, "deactivated")?,
        f.bool(5, "locked")?,
        f.bool(6, "is_guest")?,
    );
    batch
        .encoder(Target::Users)
        .row(Target::Users.width())
        .uuid(uid)
        .text(lp)
        .timestamptz(created)
        .opt_timestamptz(locked.then_some(created))
        .opt_timestamptz(deactivated.then_some(created))
        .bool(admin)
        .bool(guest);
    if let Some(hash) = row[1] {
        let pid = ctx.ids.ulid(
            Kind::Password,
            creation.saturating_mul(1000),
            &[lp.as_bytes()],
        );
        batch
            .encoder(Target::UserPasswords)
            .row(Target::UserPasswords.width())
            .uuid(pid)
            .uuid(uid)
            .text(hash)
            .timestamptz(created)
            .int4(1);
    }
    count_migrated(batch, Entity::Users);
    Ok(())
}

/// `user_threepids` → `user_emails` or `user_unsupported_third_party_ids`.
pub(super) fn threepid(ctx: &Ctx, row: &Row<'_>, batch: &mut Batch) -> Result<(), RowError> {
    let Some(f) = unless_skipped(ctx, "user_threepids", Entity::Threepids, row, batch)? else {
        return Ok(());
    };
    let user_id = f.who;
    let (medium, address, added_at) = (
        f.text(1, "medium")?,
        f.text_bytes(2, "address")?,
        f.int8(3, "added_at")?,
    );
    let lp = localpart(ctx, &f, user_id)?;
    let uid = user_uuid(ctx, lp, owner_creation(&f, 4)?);
    let created = f.micros(added_at, "added_at")?;
    if medium == "email" {
        let id = ctx
            .ids
            .ulid(Kind::Email, added_at, &[medium.as_bytes(), address]);
        batch
            .encoder(Target::UserEmails)
            .row(Target::UserEmails.width())
            .uuid(id)
            .uuid(uid)
            .text(address)
            .timestamptz(created);
    } else {
        batch
            .encoder(Target::UserUnsupportedThirdPartyIds)
            .row(Target::UserUnsupportedThirdPartyIds.width())
            .uuid(uid)
            .text(medium)
            .text(address)
            .timestamptz(created);
    }
    count_migrated(batch, Entity::Threepids);
    Ok(())
}

/// `user_external_ids` → `upstream_oauth_links`.
pub(super) fn external_id(ctx: &Ctx, row: &Row<'_>, batch: &mut Batch) -> Result<(), RowError> {
    let Some(f) = unless_skipped(ctx, "user_external_ids", Entity::ExternalIds, row, batch)? else {
        return Ok(());
    };
    let user_id = f.who;
    let (provider, subject) = (f.text(1, "auth_provider")?, f.text_bytes(2, "external_id")?);
    let provider_id = *ctx
        .providers
        .get(provider)
        .ok_or_else(|| f.err(format!("auth_provider `{provider}` has no MAS provider")))?;
    let lp = localpart(ctx, &f, user_id)?;
    let creation = owner_creation(&f, 3)?;
    let uid = user_uuid(ctx, lp, creation);
    let creation_ms = creation.saturating_mul(1000);
    let id = ctx
        .ids
        .ulid(Kind::Link, creation_ms, &[provider.as_bytes(), subject]);
    let created = f.micros(ulid_ms(creation_ms), "users.creation_ts")?;
    batch
        .encoder(Target::UpstreamOauthLinks)
        .row(Target::UpstreamOauthLinks.width())
        .uuid(id)
        .uuid(uid)
        .uuid(provider_id)
        .text(subject)
        .timestamptz(created);
    count_migrated(batch, Entity::ExternalIds);
    Ok(())
}

/// A device's compat session id and creation time (ms), the same for the session row and for
/// every token of the device.
fn device_session(ctx: &Ctx, lp: &str, device_id: &str, session_ms: Option<i64>) -> (u128, i64) {
    let ms = ulid_ms(session_ms.unwrap_or(ctx.now_ms));
    let id = ctx
        .ids
        .ulid(Kind::Session, ms, &[lp.as_bytes(), device_id.as_bytes()]);
    (id, ms)
}

/// Writes the session of a token that has no device; upstream gives each such token its own.
fn deviceless_session(
    ctx: &Ctx,
    f: &Fields<'_, '_>,
    batch: &mut Batch,
    uid: u128,
    token_id: i64,
    created_ms: i64,
) -> Result<u128, RowError> {
    let ms = ulid_ms(created_ms);
    let sid = ctx
        .ids
        .ulid(Kind::DevicelessSession, ms, &[&token_id.to_le_bytes()]);
    let created = f.micros(ms, "last_validated")?;
    batch
        .encoder(Target::CompatSessions)
        .row(Target::CompatSessions.width())
        .uuid(sid)
        .uuid(uid)
        .null()
        .null()
        .timestamptz(created)
        .bool(false)
        .null()
        .null()
        .null();
    Ok(sid)
}

/// A device's last IP: NULL, empty and `-` mean unknown; anything else unparsable is counted
/// and written as NULL (upstream does the same, with a warning).
fn device_ip(batch: &mut Batch, ip: Option<&str>) -> Option<IpAddr> {
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

/// Columns of a devices/tokens row as `transform::sessions` joins it (one per token, with its
/// device's columns when the device exists, plus one per device without tokens).
mod col {
    pub const USER_ID: usize = 0;
    pub const DEVICE_ID: usize = 1;
    pub const DEVICE_EXISTS: usize = 2;
    pub const CARRIES_DEVICE: usize = 3;
    pub const DISPLAY_NAME: usize = 4;
    pub const LAST_SEEN: usize = 5;
    pub const IP: usize = 6;
    pub const USER_AGENT: usize = 7;
    pub const DEVICE_SKIP: usize = 8;
    pub const OWNER_SKIP: usize = 9;
    pub const CREATION_TS: usize = 10;
    pub const ADMIN: usize = 11;
    pub const SESSION_MS: usize = 12;
    pub const AT_ID: usize = 13;
    pub const AT_TOKEN: usize = 14;
    pub const VALID_UNTIL: usize = 15;
    pub const LAST_VALIDATED: usize = 16;
    pub const PUPPET: usize = 17;
    pub const RT_ID: usize = 18;
    pub const RT_TOKEN: usize = 19;
    pub const PAIR_SKIP: usize = 20;
}

/// What a joined devices/tokens row says about its device and owner.
struct SessionRow<'a> {
    user_id: &'a str,
    device_id: Option<&'a str>,
    device_exists: bool,
    device_skip: Option<&'static str>,
    /// `orphan` never gets here: it is an error unless an earlier reason skips the row.
    owner_skip: Option<&'a str>,
    session_ms: Option<i64>,
}

/// One joined devices/tokens row: the device it carries (if any) → `compat_sessions`; its access
/// token → `compat_access_tokens` (+ a deviceless `compat_sessions` row); its refresh token →
/// `compat_refresh_tokens`.
pub(super) fn session_row(ctx: &Ctx, row: &Row<'_>, batch: &mut Batch) -> Result<(), RowError> {
    let probe = Fields {
        table: "devices",
        row,
        who: "?",
    };
    let user_id = probe.text(col::USER_ID, "user_id")?;
    let f = Fields {
        who: user_id,
        table: if probe.bool(col::DEVICE_EXISTS, "device_exists")? {
            "devices"
        } else {
            "access_tokens"
        },
        ..probe
    };
    on_server(ctx, &f)?;
    let f = Fields {
        table: "devices",
        ..f
    };
    let device_skip = f
        .opt_text(col::DEVICE_SKIP, "device_skip")?
        .map(|r| reason("devices", user_id, r))
        .transpose()?;
    let s = SessionRow {
        user_id,
        device_id: f.opt_text(col::DEVICE_ID, "device_id")?,
        device_exists: f.bool(col::DEVICE_EXISTS, "device_exists")?,
        device_skip,
        owner_skip: f.opt_text(col::OWNER_SKIP, "owner_skip")?,
        session_ms: f.opt_int8(col::SESSION_MS, "session_ms")?,
    };
    if f.bool(col::CARRIES_DEVICE, "carries_device")? {
        device(ctx, &f, &s, batch)?;
    }
    if row[col::AT_ID].is_some() {
        let f = Fields {
            table: "access_tokens",
            ..f
        };
        if row[col::RT_ID].is_some() {
            refresh_pair(
                ctx,
                &Fields {
                    table: "refresh_tokens",
                    ..f
                },
                &s,
                batch,
            )?;
        } else {
            access_token(ctx, &f, &s, batch)?;
        }
    }
    Ok(())
}

/// The owner's reason to skip, with `orphan` as the error it is (check reports E-orphan-rows).
fn owner_reason(f: &Fields<'_, '_>, s: &SessionRow<'_>) -> Result<Option<&'static str>, RowError> {
    match s.owner_skip {
        None => Ok(None),
        Some("orphan") => Err(f.err(
            "its user does not exist in Synapse's `users` table (`syn2mas check` reports these as E-orphan-rows)",
        )),
        Some(r) => reason(f.table, s.user_id, r).map(Some),
    }
}

/// `devices` → `compat_sessions`, in the order of devices.sql.
fn device(
    ctx: &Ctx,
    f: &Fields<'_, '_>,
    s: &SessionRow<'_>,
    batch: &mut Batch,
) -> Result<(), RowError> {
    if let Some(r) = s.device_skip {
        count_skip(batch, Entity::Devices, r);
        return Ok(());
    }
    if let Some(r) = owner_reason(f, s)? {
        count_skip(batch, Entity::Devices, r);
        return Ok(());
    }
    let device_id = f.text(col::DEVICE_ID, "device_id")?;
    let name = f.row[col::DISPLAY_NAME];
    let last_seen = f
        .opt_int8(col::LAST_SEEN, "last_seen")?
        .map(|ms| f.micros(ms, "last_seen"))
        .transpose()?;
    let ip = device_ip(batch, f.opt_text(col::IP, "ip")?);
    let user_agent = f.row[col::USER_AGENT];
    let admin = f.opt_bool(col::ADMIN, "users.admin")?.unwrap_or(false);
    let lp = localpart(ctx, f, s.user_id)?;
    let uid = user_uuid(ctx, lp, owner_creation(f, col::CREATION_TS)?);
    let (sid, ms) = device_session(ctx, lp, device_id, s.session_ms);
    let created = f.micros(ms, "session created_at")?;
    batch
        .encoder(Target::CompatSessions)
        .row(Target::CompatSessions.width())
        .uuid(sid)
        .uuid(uid)
        .text(device_id)
        .opt_text(name)
        .timestamptz(created)
        .bool(admin)
        .opt_timestamptz(last_seen)
        .opt_inet(ip)
        .opt_text(user_agent);
    count_migrated(batch, Entity::Devices);
    Ok(())
}

/// The device-related reason a token is skipped (its device vanished, or is not a real device).
fn device_gone(s: &SessionRow<'_>) -> bool {
    s.device_id.is_some() && !s.device_exists
}

fn device_hidden(s: &SessionRow<'_>) -> bool {
    s.device_id.is_some() && s.device_skip.is_some()
}

/// The token's times must fit a `timestamptz` whenever its owner is migrated and it is not a
/// puppet token, even if the token is then skipped for its device or refresh chain: the
/// condition `check` reports as E-timestamp-range, so that `migrate` refuses exactly what
/// `check` does when it runs only the preflight checks.
fn check_token_times(f: &Fields<'_, '_>, s: &SessionRow<'_>) -> Result<(), RowError> {
    if s.owner_skip.is_some() || f.opt_bool(col::PUPPET, "puppets_user_id")? == Some(true) {
        return Ok(());
    }
    for (i, name) in [
        (col::LAST_VALIDATED, "access_tokens.last_validated"),
        (col::VALID_UNTIL, "access_tokens.valid_until_ms"),
    ] {
        if let Some(ms) = f.opt_int8(i, name)? {
            f.micros(ms, name)?;
        }
    }
    Ok(())
}

/// An access token without a refresh token, in the order of access_tokens.sql.
fn access_token(
    ctx: &Ctx,
    f: &Fields<'_, '_>,
    s: &SessionRow<'_>,
    batch: &mut Batch,
) -> Result<(), RowError> {
    check_token_times(f, s)?;
    let skip = if f.opt_bool(col::PUPPET, "puppets_user_id")? == Some(true) {
        Some("puppet")
    } else if device_gone(s) {
        Some("device_deleted")
    } else if let Some(r) = owner_reason(f, s)? {
        Some(r)
    } else if device_hidden(s) {
        Some("device_hidden")
    } else {
        None
    };
    if let Some(r) = skip {
        count_skip(batch, Entity::AccessTokens, r);
        return Ok(());
    }
    let id = f.int8(col::AT_ID, "id")?;
    let token = f.text_bytes(col::AT_TOKEN, "token")?;
    let expires = f.opt_int8(col::VALID_UNTIL, "valid_until_ms")?;
    let created_ms = f
        .opt_int8(col::LAST_VALIDATED, "last_validated")?
        .unwrap_or(ctx.now_ms);
    let lp = localpart(ctx, f, s.user_id)?;
    let session = match s.device_id {
        Some(d) => device_session(ctx, lp, d, s.session_ms).0,
        None => {
            let uid = user_uuid(ctx, lp, owner_creation(f, col::CREATION_TS)?);
            deviceless_session(ctx, f, batch, uid, id, created_ms)?
        }
    };
    write_access_token(ctx, f, batch, session, id, token, created_ms, expires)?;
    count_migrated(batch, Entity::AccessTokens);
    Ok(())
}

/// Writes a `compat_access_tokens` row and returns its id (the refresh token points at it).
#[allow(clippy::too_many_arguments)]
fn write_access_token(
    ctx: &Ctx,
    f: &Fields<'_, '_>,
    batch: &mut Batch,
    session: u128,
    id: i64,
    token: &[u8],
    created_ms: i64,
    expires_ms: Option<i64>,
) -> Result<u128, RowError> {
    let created = f.micros(created_ms, "access_tokens.last_validated")?;
    let expires = expires_ms
        .map(|ms| f.micros(ms, "access_tokens.valid_until_ms"))
        .transpose()?;
    let token_id = ctx
        .ids
        .ulid(Kind::AccessToken, created_ms, &[&id.to_le_bytes()]);
    batch
        .encoder(Target::CompatAccessTokens)
        .row(Target::CompatAccessTokens.width())
        .uuid(token_id)
        .uuid(session)
        .text(token)
        .timestamptz(created)
        .opt_timestamptz(expires);
    Ok(token_id)
}

/// A refresh token with the access token it produced, in the order of refresh_tokens.sql.
/// Counts both halves.
fn refresh_pair(
    ctx: &Ctx,
    f: &Fields<'_, '_>,
    s: &SessionRow<'_>,
    batch: &mut Batch,
) -> Result<(), RowError> {
    check_token_times(f, s)?;
    let pair_skip = f
        .opt_text(col::PAIR_SKIP, "pair_skip")?
        .map(|r| reason(f.table, s.user_id, r))
        .transpose()?;
    let skip = if pair_skip == Some("inconsistent_pair") {
        pair_skip
    } else if device_gone(s) || s.device_id.is_none() {
        Some("device_deleted")
    } else if pair_skip.is_some() {
        pair_skip
    } else if let Some(r) = owner_reason(f, s)? {
        Some(r)
    } else if device_hidden(s) {
        Some("device_hidden")
    } else {
        None
    };
    if let Some(r) = skip {
        count_skip(batch, Entity::RefreshTokens, r);
        count_skip(batch, Entity::AccessTokens, r);
        return Ok(());
    }
    let device_id = f.text(col::DEVICE_ID, "device_id")?;
    let rt_id = f.int8(col::RT_ID, "refresh_tokens.id")?;
    let rt_token = f.text_bytes(col::RT_TOKEN, "refresh_tokens.token")?;
    let at_id = f.int8(col::AT_ID, "access_tokens.id")?;
    let at_token = f.text_bytes(col::AT_TOKEN, "access_tokens.token")?;
    let expires = f.opt_int8(col::VALID_UNTIL, "access_tokens.valid_until_ms")?;
    let created_ms = f
        .opt_int8(col::LAST_VALIDATED, "access_tokens.last_validated")?
        .unwrap_or(ctx.now_ms);
    let lp = localpart(ctx, f, s.user_id)?;
    let (session, _) = device_session(ctx, lp, device_id, s.session_ms);
    let at_uuid = write_access_token(ctx, f, batch, session, at_id, at_token, created_ms, expires)?;
    let created = f.micros(created_ms, "access_tokens.last_validated")?;
    let rt_uuid = ctx
        .ids
        .ulid(Kind::RefreshToken, created_ms, &[&rt_id.to_le_bytes()]);
    batch
        .encoder(Target::CompatRefreshTokens)
        .row(Target::CompatRefreshTokens.width())
        .uuid(rt_uuid)
        .uuid(session)
        .uuid(at_uuid)
        .text(rt_token)
        .timestamptz(created);
    count_migrated(batch, Entity::RefreshTokens);
    count_migrated(batch, Entity::AccessTokens);
    Ok(())
}
