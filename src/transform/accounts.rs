//! Users, third-party ids and external ids: one Synapse row in, at most one or two MAS rows out.

use super::ids::{Kind, ulid_ms};
use super::rules::{self, OwnerState, Reason};
use super::{Batch, Ctx, Note, Problem, RowError, RowRef, problem};
use crate::db::copy_binary::pg_micros_from_unix_ms;
use crate::sink::tables::Target;
use crate::source::Entity;
use crate::source::reads::{ExternalId, Threepid, User};

/// `timestamptz` micros for a Unix-ms time of `column`, or the E-timestamp-range problem.
pub(super) fn micros(entity: Entity, row: &str, ms: i64, column: &str) -> Result<i64, RowError> {
    pg_micros_from_unix_ms(ms).map_err(|e| {
        problem(
            entity,
            row,
            Problem::TimestampRange,
            format!("column `{column}`: {e}"),
        )
    })
}

/// E-server-name: a user id that is not `@<localpart>:<MAS matrix.homeserver>`. Checked on
/// every row before any skip reason, so that `migrate` refuses every row `check` reports.
pub(super) fn on_server(ctx: &Ctx, entity: Entity, user_id: &str) -> Result<(), RowError> {
    if rules::on_server(user_id, &ctx.suffix) {
        return Ok(());
    }
    let message = if user_id.starts_with('@') {
        format!(
            "user id does not end with `{}` (the MAS `matrix.homeserver`); see E-server-name in `syn2mas check`",
            ctx.suffix
        )
    } else {
        "user id does not start with `@`".to_owned()
    };
    Err(problem(entity, user_id, Problem::ServerName, message))
}

/// The localpart of a user id that is on the server.
pub(super) fn localpart<'a>(
    ctx: &Ctx,
    entity: Entity,
    user_id: &'a str,
) -> Result<&'a str, RowError> {
    rules::localpart(user_id, &ctx.suffix).ok_or_else(|| {
        problem(
            entity,
            user_id,
            Problem::LocalpartColon,
            "the localpart is empty or contains `:`, which a MAS username cannot (see E-localpart-colon)",
        )
    })
}

/// The orphan problem: a dependent row whose user is not in Synapse's `users`.
pub(super) fn orphan(entity: Entity, user_id: &str) -> RowError {
    problem(
        entity,
        user_id,
        Problem::Orphan,
        "its user does not exist in Synapse's `users` table (`syn2mas check` reports these as E-orphan-rows)",
    )
}

/// The owner's creation time (seconds), which its dependent rows need for the user's id.
pub(super) fn owner_creation(
    entity: Entity,
    user_id: &str,
    creation_ts: Option<i64>,
) -> Result<i64, RowError> {
    creation_ts.ok_or_else(|| {
        problem(
            entity,
            user_id,
            Problem::NullUserFields,
            "its user has no `creation_ts` (see E-null-user-fields)",
        )
    })
}

/// The MAS id of a user, recomputed from its localpart and creation time (seconds).
pub(super) fn user_uuid(ctx: &Ctx, localpart: &str, creation_ts: i64) -> u128 {
    ctx.ids.ulid(
        Kind::User,
        creation_ts.saturating_mul(1000),
        &[localpart.as_bytes()],
    )
}

/// A dependent row skipped for its owner; an appservice owner whose localpart holds `:` is
/// worth a note (upstream dies on those).
pub(super) fn skip_for_owner(
    ctx: &Ctx,
    batch: &mut Batch,
    entities: &[Entity],
    user_id: &str,
    reason: Reason,
    row: RowRef<'_, '_>,
) {
    if reason == Reason::Appservice && rules::appservice_colon(user_id, &ctx.suffix) {
        for e in entities {
            batch.note(*e, Note::AppserviceColon, || user_id.to_owned());
        }
    }
    for e in entities {
        batch.skipped(*e, reason, row);
    }
}

/// How a dependent row's checks came out: what it is written with, a skip for its owner, or a
/// problem.
pub(super) type Outcome<T> = Result<Result<T, Reason>, RowError>;

/// Applies an [`Outcome`]: the values to write with, or `None` once the row is counted as
/// skipped (or, when counting, as refused).
pub(super) fn settle<T>(
    ctx: &Ctx,
    batch: &mut Batch,
    entity: Entity,
    user_id: &str,
    row: RowRef<'_, '_>,
    outcome: Outcome<T>,
) -> Result<Option<T>, RowError> {
    match outcome {
        Ok(Ok(v)) => Ok(Some(v)),
        Ok(Err(reason)) => {
            skip_for_owner(ctx, batch, &[entity], user_id, reason, row);
            Ok(None)
        }
        Err(err) => batch.refuse(err, &[entity], row).map(|()| None),
    }
}

/// `users` → `users` (+ `user_passwords`). The user id and the NULL columns are checked before
/// the appservice skip: `check` reports them on every user.
pub(super) fn user(ctx: &Ctx, u: &User<'_>, batch: &mut Batch) -> Result<(), RowError> {
    let e = Entity::Users;
    let shown = u.name.unwrap_or("(NULL name)");
    if u.is_guest {
        batch.note(e, Note::Guest, || shown.to_owned());
    }
    if !u.appservice && rules::foreign_hash(u.password_hash) {
        batch.note(e, Note::ForeignHash, || shown.to_owned());
    }
    match checked_user(ctx, u) {
        Ok(Some(user)) => {
            write_user(ctx, u, user, batch);
            Ok(())
        }
        Ok(None) => {
            batch.skipped(e, Reason::Appservice, RowRef::User(u));
            Ok(())
        }
        Err(err) => batch.refuse(err, &[e], RowRef::User(u)),
    }
}

/// What a user that passed every check is written with.
struct Checked<'a> {
    localpart: &'a str,
    /// `users.creation_ts`, seconds.
    creation: i64,
    /// The same as `timestamptz` micros.
    created: i64,
}

/// The user once every check passed; `None` for an appservice user.
fn checked_user<'a>(ctx: &Ctx, u: &User<'a>) -> Result<Option<Checked<'a>>, RowError> {
    let e = Entity::Users;
    let null = |row: &str, column: &str| {
        problem(
            e,
            row,
            Problem::NullUserFields,
            format!("`{column}` is NULL (see E-null-user-fields)"),
        )
    };
    let name = u.name.ok_or_else(|| null("(NULL name)", "name"))?;
    on_server(ctx, e, name)?;
    let creation = u.creation_ts.ok_or_else(|| null(name, "creation_ts"))?;
    if u.appservice {
        return Ok(None);
    }
    Ok(Some(Checked {
        localpart: localpart(ctx, e, name)?,
        creation,
        created: micros(e, name, creation.saturating_mul(1000), "creation_ts")?,
    }))
}

fn write_user(ctx: &Ctx, u: &User<'_>, c: Checked<'_>, batch: &mut Batch) {
    let Checked {
        localpart: lp,
        creation,
        created,
    } = c;
    let uid = user_uuid(ctx, lp, creation);
    batch.emit(Target::Users, |enc| {
        enc.uuid(uid)
            .text(lp)
            .timestamptz(created)
            .opt_timestamptz(u.locked.then_some(created))
            .opt_timestamptz(u.deactivated.then_some(created))
            .bool(u.admin)
            .bool(u.is_guest);
    });
    if let Some(hash) = u.password_hash {
        batch.emit(Target::UserPasswords, |enc| {
            let pid = ctx.ids.ulid(
                Kind::Password,
                creation.saturating_mul(1000),
                &[lp.as_bytes()],
            );
            enc.uuid(pid)
                .uuid(uid)
                .text(hash)
                .timestamptz(created)
                .int4(1);
        });
    }
    batch.migrated(Entity::Users);
}

/// `user_threepids` → `user_emails` or `user_unsupported_third_party_ids`.
pub(super) fn threepid(ctx: &Ctx, t: &Threepid<'_>, batch: &mut Batch) -> Result<(), RowError> {
    let e = Entity::Threepids;
    if t.medium != rules::EMAIL_MEDIUM {
        batch.note(e, Note::NonEmail, || {
            format!("{} ({})", t.user_id, t.medium)
        });
    }
    let outcome = (|| {
        on_server(ctx, e, t.user_id)?;
        match rules::account_owner_state(t.owner_exists, t.owner_appservice) {
            OwnerState::Missing => Err(orphan(e, t.user_id)),
            OwnerState::Skipped(r) => Ok(Err(r)),
            OwnerState::Migrated => {
                let lp = localpart(ctx, e, t.user_id)?;
                let creation = owner_creation(e, t.user_id, t.owner_creation_ts)?;
                let created = micros(e, t.user_id, t.added_at, "added_at")?;
                Ok(Ok((lp, creation, created)))
            }
        }
    })();
    let Some((lp, creation, created)) =
        settle(ctx, batch, e, t.user_id, RowRef::Threepid(t), outcome)?
    else {
        return Ok(());
    };
    let uid = || user_uuid(ctx, lp, creation);
    if t.medium == rules::EMAIL_MEDIUM {
        batch.emit(Target::UserEmails, |enc| {
            let id = ctx
                .ids
                .ulid(Kind::Email, t.added_at, &[t.medium.as_bytes(), t.address]);
            enc.uuid(id)
                .uuid(uid())
                .text(t.address)
                .timestamptz(created);
        });
    } else {
        batch.emit(Target::UserUnsupportedThirdPartyIds, |enc| {
            enc.uuid(uid())
                .text(t.medium)
                .text(t.address)
                .timestamptz(created);
        });
    }
    batch.migrated(e);
    Ok(())
}

/// `user_external_ids` → `upstream_oauth_links`.
pub(super) fn external_id(
    ctx: &Ctx,
    x: &ExternalId<'_>,
    batch: &mut Batch,
) -> Result<(), RowError> {
    let e = Entity::ExternalIds;
    let outcome = (|| {
        on_server(ctx, e, x.user_id)?;
        match rules::account_owner_state(x.owner_exists, x.owner_appservice) {
            OwnerState::Missing => return Err(orphan(e, x.user_id)),
            OwnerState::Skipped(r) => return Ok(Err(r)),
            OwnerState::Migrated => {}
        }
        let Some(provider) = ctx.providers.get(x.auth_provider).copied() else {
            if ctx.ignore_missing_auth_providers || batch.counting() {
                // `check` reports unmapped providers from its provider analysis.
                return Ok(Err(Reason::UnmappedProvider));
            }
            return Err(problem(
                e,
                x.user_id,
                Problem::UnmappedProvider,
                "its auth_provider has no MAS provider with that `synapse_idp_id` (see E-unmapped-provider in `syn2mas check`)",
            ));
        };
        let lp = localpart(ctx, e, x.user_id)?;
        let creation = owner_creation(e, x.user_id, x.owner_creation_ts)?;
        let creation_ms = creation.saturating_mul(1000);
        let created = micros(e, x.user_id, ulid_ms(creation_ms), "users.creation_ts")?;
        Ok(Ok((provider, lp, creation, created)))
    })();
    let Some((provider, lp, creation, created)) =
        settle(ctx, batch, e, x.user_id, RowRef::ExternalId(x), outcome)?
    else {
        return Ok(());
    };
    batch.emit(Target::UpstreamOauthLinks, |enc| {
        let id = ctx.ids.ulid(
            Kind::Link,
            creation.saturating_mul(1000),
            &[x.auth_provider.as_bytes(), x.external_id],
        );
        enc.uuid(id)
            .uuid(user_uuid(ctx, lp, creation))
            .uuid(provider)
            .text(x.external_id)
            .timestamptz(created);
    });
    batch.migrated(e);
    Ok(())
}
