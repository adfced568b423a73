//! Reading Synapse: one consistent snapshot, each table streamed with binary COPY.
//!
//! The joins that pair tokens with devices, refresh tokens and owners run on Synapse's server
//! (sql/*.sql), so the client never holds a table in memory. Every query yields a `skip` column
//! naming why a row is not migrated; `check` aggregates the very same queries for its plan, so
//! the plan and the migration cannot disagree.

pub mod plan;
pub mod reader;
pub mod snapshot;

use std::sync::LazyLock;

/// The Synapse tables syn2mas reads, in the order `migrate` processes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    Users,
    Threepids,
    ExternalIds,
    AccessTokens,
    RefreshTokens,
    Devices,
}

impl Entity {
    pub const ALL: [Entity; 6] = [
        Entity::Users,
        Entity::Threepids,
        Entity::ExternalIds,
        Entity::AccessTokens,
        Entity::RefreshTokens,
        Entity::Devices,
    ];

    /// The name used in reports, JSON and progress bars (the Synapse table it reads).
    pub fn name(self) -> &'static str {
        match self {
            Entity::Users => "users",
            Entity::Threepids => "user_threepids",
            Entity::ExternalIds => "user_external_ids",
            Entity::AccessTokens => "access_tokens",
            Entity::RefreshTokens => "refresh_tokens",
            Entity::Devices => "devices",
        }
    }

    /// The SELECT that yields this entity's rows (the columns the transform decodes, in order).
    pub fn query(self) -> &'static str {
        QUERIES[self as usize].as_str()
    }
}

/// The reads `migrate` streams. Users, threepids and external ids each have their own query;
/// devices, access tokens and refresh tokens come from one (`sql/sessions.sql`), because
/// reading them separately repeats the expensive joins three times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Query {
    Users,
    Threepids,
    ExternalIds,
    Sessions,
}

impl Query {
    pub const ALL: [Query; 4] = [
        Query::Users,
        Query::Threepids,
        Query::ExternalIds,
        Query::Sessions,
    ];

    /// The name shown on the progress bar.
    pub fn name(self) -> &'static str {
        match self {
            Query::Users => "users",
            Query::Threepids => "user_threepids",
            Query::ExternalIds => "user_external_ids",
            Query::Sessions => "devices and tokens",
        }
    }

    pub fn sql(self) -> &'static str {
        match self {
            Query::Users => Entity::Users.query(),
            Query::Threepids => Entity::Threepids.query(),
            Query::ExternalIds => Entity::ExternalIds.query(),
            Query::Sessions => SESSIONS,
        }
    }

    pub fn fields(self) -> usize {
        match self {
            Query::Users => 8,
            Query::Threepids => 6,
            Query::ExternalIds => 5,
            Query::Sessions => 21,
        }
    }

    /// The Synapse tables whose rows this read accounts for.
    pub fn entities(self) -> &'static [Entity] {
        match self {
            Query::Users => &[Entity::Users],
            Query::Threepids => &[Entity::Threepids],
            Query::ExternalIds => &[Entity::ExternalIds],
            Query::Sessions => &[Entity::Devices, Entity::AccessTokens, Entity::RefreshTokens],
        }
    }
}

const SESSIONS: &str = include_str!("../../sql/sessions.sql");

/// Refresh tokens that no access token points at: counted, never streamed.
pub const REFRESH_WITHOUT_ACCESS_TOKEN: &str =
    include_str!("../../sql/refresh_without_access_token.sql");

const SESSION_TIMES: &str = include_str!("../../sql/session_times.sql");

fn expand(sql: &str) -> String {
    sql.replace("#include session_times.sql\n", SESSION_TIMES)
}

static QUERIES: LazyLock<[String; 6]> = LazyLock::new(|| {
    [
        expand(include_str!("../../sql/users.sql")),
        expand(include_str!("../../sql/threepids.sql")),
        expand(include_str!("../../sql/external_ids.sql")),
        expand(include_str!("../../sql/access_tokens.sql")),
        expand(include_str!("../../sql/refresh_tokens.sql")),
        expand(include_str!("../../sql/devices.sql")),
    ]
});

/// Sets the session variables the queries read (`syn2mas.providers`). Values go through
/// `set_config` as bind parameters because COPY cannot take parameters and nothing from a
/// config file is ever spliced into SQL.
pub async fn set_query_params(
    client: &tokio_postgres::Client,
    mapped_providers: impl IntoIterator<Item = &str>,
) -> Result<(), tokio_postgres::Error> {
    let map: serde_json::Map<String, serde_json::Value> = mapped_providers
        .into_iter()
        .map(|p| (p.to_owned(), serde_json::Value::Bool(true)))
        .collect();
    let json = serde_json::Value::Object(map).to_string();
    client
        .execute(
            "SELECT set_config('syn2mas.providers', $1, false)",
            &[&json],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_are_expanded() {
        for e in Entity::ALL {
            assert!(!e.query().contains("#include"), "{}", e.name());
            assert!(e.query().contains("skip"), "{}", e.name());
        }
        assert!(Entity::Devices.query().contains("sess AS ("));
    }
}
