//! The plan: what `migrate` would do, per Synapse table and per MAS table. Exact when `check`
//! computed it by running the migration's own reads and transform in counting mode
//! ([`from_counts`]); estimated from PostgreSQL's statistics otherwise ([`estimate`]).

use std::collections::BTreeMap;

use anyhow::Context;
use tokio_postgres::Client;

use super::Entity;
use crate::check::report::{EntityPlan, Plan};
use crate::sink::tables;
use crate::transform::Stats;

/// The entities in the order plans and summaries list them.
pub const ORDER: [Entity; 6] = [
    Entity::Users,
    Entity::Threepids,
    Entity::ExternalIds,
    Entity::Devices,
    Entity::AccessTokens,
    Entity::RefreshTokens,
];

/// The exact plan from a counting run of the transform over every read.
pub fn from_counts(stats: &Stats) -> Plan {
    let entities = ORDER
        .iter()
        .map(|e| {
            let c = stats.entities.get(e).cloned().unwrap_or_default();
            EntityPlan {
                entity: e.name().to_owned(),
                read: c.read,
                migrate: c.migrated,
                skip: c
                    .skipped
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(r, n)| ((*r).to_owned(), *n))
                    .collect(),
            }
        })
        .collect();
    let mas_rows = tables::NAMES
        .iter()
        .zip(crate::sink::tables::Target::ALL)
        .map(|(name, t)| {
            (
                (*name).to_owned(),
                stats.written.get(&t).copied().unwrap_or(0),
            )
        })
        .collect();
    Plan { entities, mas_rows }
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

/// Bytes on disk of the tables the devices/tokens stage reads (`pg_relation_size`: the heap
/// files' current size, never stale as `reltuples` can be, and about what their rows take
/// once spilled). Sizes the first split of that stage; missing tables count as empty.
pub async fn session_bytes(client: &Client) -> anyhow::Result<u64> {
    let n: i64 = client
        .query_one(
            "SELECT coalesce(sum(pg_relation_size(to_regclass(t))), 0)::int8 \
             FROM unnest($1::text[]) AS t",
            &[&[
                Entity::Users.name(),
                Entity::Devices.name(),
                Entity::AccessTokens.name(),
                Entity::RefreshTokens.name(),
            ]
            .as_slice()],
        )
        .await
        .context("measuring Synapse's devices and tokens tables (pg_relation_size)")?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}
