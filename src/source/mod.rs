//! Reading Synapse: one consistent snapshot, each table streamed with binary COPY.
//!
//! Users, threepids and external ids are joined with their owners on Synapse's server
//! (sql/*.sql): those joins are cheap. Devices and tokens are streamed unjoined and joined by
//! syn2mas itself, partition by partition (`spill`, `transform::sessions`): PostgreSQL's join
//! of those tables was the most expensive statement of a migration. Every per-table query
//! yields a `skip` column naming why a row is not migrated; `check` aggregates those queries
//! for its plan, and the tests hold the migration to it row for row.

pub mod plan;
pub mod reader;
pub mod snapshot;
pub mod spill;

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

/// The stages of `migrate`'s read. Users, threepids and external ids each stream one query;
/// devices, access tokens and refresh tokens are one stage that streams the three
/// [`SessionRead`]s and joins them itself.
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

    /// The one SELECT a single-query stage streams, and its column count (`None` for the
    /// devices/tokens stage).
    pub fn read(self) -> Option<(&'static str, usize)> {
        match self {
            Query::Users => Some((Entity::Users.query(), 8)),
            Query::Threepids => Some((Entity::Threepids.query(), 6)),
            Query::ExternalIds => Some((Entity::ExternalIds.query(), 5)),
            Query::Sessions => None,
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

/// The three unjoined reads of the devices/tokens stage, each partitioned by its first column
/// (the user id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRead {
    Owners,
    Devices,
    Tokens,
}

impl SessionRead {
    pub const ALL: [SessionRead; 3] = [
        SessionRead::Owners,
        SessionRead::Devices,
        SessionRead::Tokens,
    ];

    pub fn sql(self) -> &'static str {
        match self {
            SessionRead::Owners => include_str!("../../sql/sessions_owners.sql"),
            SessionRead::Devices => include_str!("../../sql/sessions_devices.sql"),
            SessionRead::Tokens => include_str!("../../sql/sessions_tokens.sql"),
        }
    }

    pub fn fields(self) -> usize {
        match self {
            SessionRead::Owners => 4,
            SessionRead::Devices => 7,
            SessionRead::Tokens => 11,
        }
    }

    /// The Synapse table it reads, for messages.
    pub fn name(self) -> &'static str {
        match self {
            SessionRead::Owners => "users",
            SessionRead::Devices => "devices",
            SessionRead::Tokens => "access_tokens",
        }
    }
}

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
