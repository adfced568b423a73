//! Exact counts of what `migrate` would do, computed by aggregating the migration's own queries.

use std::collections::BTreeMap;

use anyhow::Context;
use tokio_postgres::Client;

use super::Entity;
use crate::check::report::{EntityPlan, Plan};
use crate::sink::tables;

/// What the plan depends on besides Synapse's data.
#[derive(Debug, Clone, Default)]
pub struct PlanParams {
    /// auth_provider values that have a MAS provider (`synapse_idp_id`).
    pub mapped_providers: Vec<String>,
}

/// Per-skip-reason counts of one query: (rows, rows matching the entity's extra condition).
type Counts = BTreeMap<Option<String>, (u64, u64)>;

/// Counts every entity by skip reason. Runs in the caller's transaction (check's read-only one).
pub async fn plan(client: &Client, params: &PlanParams) -> anyhow::Result<Plan> {
    super::set_query_params(client, params.mapped_providers.iter().map(String::as_str))
        .await
        .context("setting query parameters on Synapse")?;
    let mut counts = BTreeMap::new();
    for entity in Entity::ALL {
        counts.insert(entity, count(client, entity).await?);
    }
    Ok(assemble(&counts))
}

/// A plan from PostgreSQL's row estimates (`pg_class.reltuples`, instant), for when `migrate`
/// runs without the exact plan (`check`'s preflight scope): the progress bars and the order of
/// the index builds only need sizes, and every row is counted exactly as it is migrated.
/// Skips are unknown, so `migrate` equals `read`.
pub async fn estimate(client: &Client) -> anyhow::Result<Plan> {
    let mut plan = Plan::default();
    let mut rows = BTreeMap::new();
    for entity in Entity::ALL {
        let n: i64 = client
            .query_one(
                "SELECT greatest(coalesce(max(reltuples), 0), 0)::int8 FROM pg_catalog.pg_class \
                 WHERE oid = to_regclass($1)",
                &[&entity.name()],
            )
            .await
            .with_context(|| format!("estimating the size of Synapse's `{}`", entity.name()))?
            .get(0);
        let n = n as u64;
        rows.insert(entity, n);
        plan.entities.push(EntityPlan {
            entity: entity.name().to_owned(),
            read: n,
            migrate: n,
            ..Default::default()
        });
    }
    let estimates = [
        (tables::USERS, Entity::Users),
        (tables::USER_PASSWORDS, Entity::Users),
        (tables::USER_EMAILS, Entity::Threepids),
        (tables::UPSTREAM_OAUTH_LINKS, Entity::ExternalIds),
        (tables::COMPAT_SESSIONS, Entity::Devices),
        (tables::COMPAT_ACCESS_TOKENS, Entity::AccessTokens),
        (tables::COMPAT_REFRESH_TOKENS, Entity::RefreshTokens),
    ];
    for (table, entity) in estimates {
        plan.mas_rows.insert(table.to_owned(), rows[&entity]);
    }
    Ok(plan)
}

/// The condition whose count each entity's plan needs besides the per-reason totals.
fn extra_condition(entity: Entity) -> &'static str {
    match entity {
        Entity::Users => "password_hash IS NOT NULL",
        Entity::Threepids => "medium = 'email'",
        Entity::AccessTokens => "device_id IS NULL",
        Entity::RefreshTokens => "at_id IS NOT NULL",
        Entity::ExternalIds | Entity::Devices => "true",
    }
}

async fn count(client: &Client, entity: Entity) -> anyhow::Result<Counts> {
    let sql = format!(
        "SELECT skip, count(*)::int8, (count(*) FILTER (WHERE {}))::int8 FROM ({}) q GROUP BY skip",
        extra_condition(entity),
        entity.query()
    );
    let rows = client
        .query(&sql, &[])
        .await
        .with_context(|| format!("counting Synapse's `{}`", entity.name()))?;
    Ok(rows
        .iter()
        .map(|r| {
            let skip: Option<String> = r.get(0);
            let all: i64 = r.get(1);
            let extra: i64 = r.get(2);
            (skip, (all as u64, extra as u64))
        })
        .collect())
}

fn migrated(c: &Counts) -> (u64, u64) {
    c.get(&None).copied().unwrap_or_default()
}

fn entity_plan(entity: &str, c: &Counts, pick: impl Fn((u64, u64)) -> u64) -> EntityPlan {
    let mut plan = EntityPlan {
        entity: entity.to_owned(),
        ..Default::default()
    };
    for (reason, &v) in c {
        let n = pick(v);
        plan.read += n;
        match reason {
            None => plan.migrate += n,
            Some(r) if n > 0 => *plan.skip.entry(r.clone()).or_default() += n,
            Some(_) => {}
        }
    }
    plan
}

fn assemble(counts: &BTreeMap<Entity, Counts>) -> Plan {
    let c = |e: Entity| &counts[&e];
    let all = |v: (u64, u64)| v.0;
    let mut entities = Vec::new();
    for e in [
        Entity::Users,
        Entity::Threepids,
        Entity::ExternalIds,
        Entity::Devices,
    ] {
        entities.push(entity_plan(e.name(), c(e), all));
    }
    // Access tokens come from two queries: those without a refresh token, and the access
    // halves of refresh pairs (rows of the refresh query that have one).
    let mut at = entity_plan(Entity::AccessTokens.name(), c(Entity::AccessTokens), all);
    let paired = entity_plan("", c(Entity::RefreshTokens), |v| v.1);
    at.read += paired.read;
    at.migrate += paired.migrate;
    for (r, n) in paired.skip {
        *at.skip.entry(r).or_default() += n;
    }
    entities.push(at);
    entities.push(entity_plan(
        Entity::RefreshTokens.name(),
        c(Entity::RefreshTokens),
        all,
    ));

    let (users, passwords) = migrated(c(Entity::Users));
    let (threepids, emails) = migrated(c(Entity::Threepids));
    let (links, _) = migrated(c(Entity::ExternalIds));
    let (devices, _) = migrated(c(Entity::Devices));
    let (tokens, deviceless) = migrated(c(Entity::AccessTokens));
    let (pairs, _) = migrated(c(Entity::RefreshTokens));
    let mas_rows = BTreeMap::from([
        (tables::USERS.to_owned(), users),
        (tables::USER_PASSWORDS.to_owned(), passwords),
        (tables::USER_EMAILS.to_owned(), emails),
        (
            tables::USER_UNSUPPORTED_THIRD_PARTY_IDS.to_owned(),
            threepids - emails,
        ),
        (tables::UPSTREAM_OAUTH_LINKS.to_owned(), links),
        (tables::COMPAT_SESSIONS.to_owned(), devices + deviceless),
        (tables::COMPAT_ACCESS_TOKENS.to_owned(), tokens + pairs),
        (tables::COMPAT_REFRESH_TOKENS.to_owned(), pairs),
    ]);
    Plan { entities, mas_rows }
}
