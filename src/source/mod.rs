//! Reading Synapse: one consistent snapshot, each read streamed with binary COPY.
//!
//! The reads are declared in [`reads`] (columns once, SQL generated). Users, threepids and
//! external ids come joined with their owners from Synapse's server: those joins are cheap.
//! Devices and tokens are streamed unjoined and joined by syn2mas itself, partition by
//! partition (`spill`, `transform::sessions`): PostgreSQL's join of those tables was the most
//! expensive statement of a migration. No read decides anything about a row: the rules are in
//! `transform::rules`.

pub mod activity;
pub mod plan;
pub mod reader;
pub mod reads;
pub mod snapshot;
pub mod spill;

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
/// (the user id) and, for one user too large to hold, by device (`spill::Route`).
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

    /// The Synapse table it reads, for messages.
    pub fn name(self) -> &'static str {
        match self {
            SessionRead::Owners => "users",
            SessionRead::Devices => "devices",
            SessionRead::Tokens => "access_tokens",
        }
    }

    /// Columns per row (for the COPY codec and the partition files).
    pub fn fields(self) -> usize {
        use reads::Read;
        match self {
            SessionRead::Owners => reads::Owner::FIELDS,
            SessionRead::Devices => reads::Device::FIELDS,
            SessionRead::Tokens => reads::Token::FIELDS,
        }
    }
}
