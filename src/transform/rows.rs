//! One mapping function per Synapse query (columns as in sql/*.sql, in order).

use std::net::IpAddr;

use super::ids::{Kind, ulid_ms};
use super::{Batch, Ctx, RowError, field_error, reason, time_error};
use crate::db::copy_binary::{field, pg_micros_from_unix_ms};
use crate::sink::tables::Target;
use crate::source::Entity;

type Row<'a> = [Option<&'a [u8]>];

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

/// The localpart of a full user id, which must be `@<localpart>:<server_name>`.
fn localpart<'a>(ctx: &Ctx, f: &Fields<'_, '_>, user_id: &'a str) -> Result<&'a str, RowError> {
    let lp = user_id
        .strip_prefix('@')
        .ok_or_else(|| f.err("user id does not start with `@`"))?
        .strip_suffix(ctx.suffix.as_str())
        .ok_or_else(|| {
            f.err(format!(
                "user id does not end with `{}` (the MAS `matrix.homeserver`); see E-server-name in `syn2mas check`",
                ctx.suffix
            ))
        })?;
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
    if let Some(hash) = f.opt_text(1, "password_hash")? {
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
    let probe = Fields {
        table: "user_threepids",
        row,
        who: "?",
    };
    let user_id = probe.text(0, "user_id")?;
    let f = Fields {
        who: user_id,
        ..probe
    };
    if let Some(r) = f.skip(ctx)? {
        count_skip(batch, Entity::Threepids, r);
        return Ok(());
    }
    let (medium, address, added_at) = (
        f.text(1, "medium")?,
        f.text(2, "address")?,
        f.int8(3, "added_at")?,
    );
    let lp = localpart(ctx, &f, user_id)?;
    let uid = user_uuid(ctx, lp, owner_creation(&f, 4)?);
    let created = f.micros(added_at, "added_at")?;
    if medium == "email" {
        let id = ctx.ids.ulid(
            Kind::Email,
            added_at,
            &[medium.as_bytes(), address.as_bytes()],
        );
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
    let probe = Fields {
        table: "user_external_ids",
        row,
        who: "?",
    };
    let user_id = probe.text(0, "user_id")?;
    let f = Fields {
        who: user_id,
        ..probe
    };
    if let Some(r) = f.skip(ctx)? {
        count_skip(batch, Entity::ExternalIds, r);
        return Ok(());
    }
    let (provider, subject) = (f.text(1, "auth_provider")?, f.text(2, "external_id")?);
    let provider_id = *ctx
        .providers
        .get(provider)
        .ok_or_else(|| f.err(format!("auth_provider `{provider}` has no MAS provider")))?;
    let lp = localpart(ctx, &f, user_id)?;
    let creation = owner_creation(&f, 3)?;
    let uid = user_uuid(ctx, lp, creation);
    let creation_ms = creation.saturating_mul(1000);
    let id = ctx.ids.ulid(
        Kind::Link,
        creation_ms,
        &[provider.as_bytes(), subject.as_bytes()],
    );
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

/// A device's compat session id and creation time (ms), the same in every stage that needs it.
fn device_session(ctx: &Ctx, lp: &str, device_id: &str, session_ms: Option<i64>) -> (u128, i64) {
    let ms = ulid_ms(session_ms.unwrap_or(ctx.now_ms));
    let id = ctx
        .ids
        .ulid(Kind::Session, ms, &[lp.as_bytes(), device_id.as_bytes()]);
    (id, ms)
}

/// `access_tokens` without a refresh token → `compat_access_tokens` (+ a `compat_sessions`
/// row per deviceless token).
pub(super) fn access_token(ctx: &Ctx, row: &Row<'_>, batch: &mut Batch) -> Result<(), RowError> {
    let probe = Fields {
        table: "access_tokens",
        row,
        who: "?",
    };
    let user_id = probe.text(1, "user_id")?;
    let f = Fields {
        who: user_id,
        ..probe
    };
    if let Some(r) = f.skip(ctx)? {
        count_skip(batch, Entity::AccessTokens, r);
        return Ok(());
    }
    let id = f.int8(0, "id")?;
    let device_id = f.opt_text(2, "device_id")?;
    let token = f.text(3, "token")?;
    let expires = f.opt_int8(4, "valid_until_ms")?;
    let created_ms = f.opt_int8(5, "last_validated")?.unwrap_or(ctx.now_ms);
    let lp = localpart(ctx, &f, user_id)?;
    let session = match device_id {
        Some(d) => device_session(ctx, lp, d, f.opt_int8(7, "session_ms")?).0,
        None => {
            let uid = user_uuid(ctx, lp, owner_creation(&f, 6)?);
            deviceless_session(ctx, &f, batch, uid, id, created_ms)?
        }
    };
    let created = f.micros(created_ms, "last_validated")?;
    let expires = expires
        .map(|ms| f.micros(ms, "valid_until_ms"))
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
    count_migrated(batch, Entity::AccessTokens);
    Ok(())
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

/// `refresh_tokens` with their access token → `compat_access_tokens` + `compat_refresh_tokens`.
/// Counts the refresh token and, when there is one, its access token.
pub(super) fn refresh_pair(ctx: &Ctx, row: &Row<'_>, batch: &mut Batch) -> Result<(), RowError> {
    let probe = Fields {
        table: "refresh_tokens",
        row,
        who: "?",
    };
    let user_id = probe.text(1, "user_id")?;
    let f = Fields {
        who: user_id,
        ..probe
    };
    let has_access_token = row[4].is_some();
    if let Some(r) = f.skip(ctx)? {
        count_skip(batch, Entity::RefreshTokens, r);
        if has_access_token {
            count_skip(batch, Entity::AccessTokens, r);
        }
        return Ok(());
    }
    let rt_id = f.int8(0, "id")?;
    let device_id = f.text(2, "device_id")?;
    let rt_token = f.text(3, "token")?;
    let at_id = f.int8(4, "access_tokens.id")?;
    let at_token = f.text(5, "access_tokens.token")?;
    let expires = f.opt_int8(6, "access_tokens.valid_until_ms")?;
    let created_ms = f
        .opt_int8(7, "access_tokens.last_validated")?
        .unwrap_or(ctx.now_ms);
    let lp = localpart(ctx, &f, user_id)?;
    let (session, _) = device_session(ctx, lp, device_id, f.opt_int8(9, "session_ms")?);
    let created = f.micros(created_ms, "access_tokens.last_validated")?;
    let expires = expires
        .map(|ms| f.micros(ms, "access_tokens.valid_until_ms"))
        .transpose()?;
    let at_uuid = ctx
        .ids
        .ulid(Kind::AccessToken, created_ms, &[&at_id.to_le_bytes()]);
    let rt_uuid = ctx
        .ids
        .ulid(Kind::RefreshToken, created_ms, &[&rt_id.to_le_bytes()]);
    batch
        .encoder(Target::CompatAccessTokens)
        .row(Target::CompatAccessTokens.width())
        .uuid(at_uuid)
        .uuid(session)
        .text(at_token)
        .timestamptz(created)
        .opt_timestamptz(expires);
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

/// `devices` → `compat_sessions`.
pub(super) fn device(ctx: &Ctx, row: &Row<'_>, batch: &mut Batch) -> Result<(), RowError> {
    let probe = Fields {
        table: "devices",
        row,
        who: "?",
    };
    let user_id = probe.text(0, "user_id")?;
    let f = Fields {
        who: user_id,
        ..probe
    };
    if let Some(r) = f.skip(ctx)? {
        count_skip(batch, Entity::Devices, r);
        return Ok(());
    }
    let device_id = f.text(1, "device_id")?;
    let name = f.opt_text(2, "display_name")?;
    let last_seen = f
        .opt_int8(3, "last_seen")?
        .map(|ms| f.micros(ms, "last_seen"))
        .transpose()?;
    let ip = device_ip(batch, f.opt_text(4, "ip")?);
    let user_agent = f.opt_text(5, "user_agent")?;
    let admin = f.opt_bool(6, "users.admin")?.unwrap_or(false);
    let lp = localpart(ctx, &f, user_id)?;
    let uid = user_uuid(ctx, lp, owner_creation(&f, 7)?);
    let (sid, ms) = device_session(ctx, lp, device_id, f.opt_int8(8, "session_ms")?);
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
