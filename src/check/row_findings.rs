//! `check`'s findings about Synapse's rows: what the transform recorded while it ran over every
//! row in counting mode (`transform::findings`), worded for the operator. The conditions are
//! not restated here: a finding exists because the migration's own code met such a row.

use super::ids;
use super::report::Finding;
use crate::source::Entity;
use crate::transform::{Findings, Kind, Note, Problem};

/// One finding per (table, kind), tables in `Entity` order.
pub fn findings(found: &Findings, server_name: &str) -> Vec<Finding> {
    found
        .0
        .iter()
        .map(|((entity, kind), tally)| {
            finding(*entity, *kind, tally.count, server_name)
                .with_examples(tally.examples.iter().cloned())
                .in_table(entity.name())
        })
        .collect()
}

fn finding(entity: Entity, kind: Kind, n: u64, server_name: &str) -> Finding {
    let table = entity.name();
    match kind {
        Kind::Problem(Problem::ServerName) => wrong_server(n, server_name, table),
        Kind::Problem(Problem::NullUserFields) => null_user_fields(n),
        Kind::Problem(Problem::LocalpartColon) => localpart_colon(n),
        Kind::Problem(Problem::Orphan) => orphans(n, table),
        Kind::Problem(Problem::TimestampRange) => timestamp_range(n, time_columns(entity)),
        Kind::Problem(Problem::UnmappedProvider) => unmapped_provider(n),
        Kind::Note(Note::Guest) => guests(n),
        Kind::Note(Note::ForeignHash) => non_bcrypt(n),
        Kind::Note(Note::NonEmail) => non_email_threepids(n),
        Kind::Note(Note::AppserviceColon) => appservice_colon(n, table),
        Kind::Note(Note::TokenHiddenDevice) => token_hidden_device(n),
    }
}

/// The columns whose times the transform converts, per table.
fn time_columns(entity: Entity) -> &'static str {
    match entity {
        Entity::Users => "creation_ts",
        Entity::Threepids => "added_at",
        Entity::Devices => "last_seen",
        Entity::ExternalIds => "users.creation_ts",
        Entity::AccessTokens | Entity::RefreshTokens => "last_validated` or `valid_until_ms",
    }
}

fn null_user_fields(n: u64) -> Finding {
    Finding::new(
        ids::NULL_USER_FIELDS,
        "users with a NULL `name` or NULL `creation_ts`; migrate cannot give them a username or creation time",
        n,
        "in Synapse, delete rows with a NULL name and set a creation time on the others \
         (e.g. `UPDATE users SET creation_ts = 0 WHERE creation_ts IS NULL;`)",
    )
}

fn wrong_server(n: u64, server_name: &str, table: &str) -> Finding {
    Finding::new(
        ids::SERVER_NAME,
        format!(
            "rows of `{table}` whose user id is not `@<localpart>:{server_name}` (MAS `matrix.homeserver`, \
             the server name migrate uses); upstream syn2mas dies on them mid-run (MAS #4881)"
        ),
        n,
        "if MAS's `matrix.homeserver` is wrong, fix it; otherwise these rows belong to another server \
         name (e.g. left from a rename) and must be removed from Synapse before migrating",
    )
}

fn localpart_colon(n: u64) -> Finding {
    Finding::new(
        ids::LOCALPART_COLON,
        "non-appservice users whose localpart contains `:`; MAS usernames cannot hold it",
        n,
        "these accounts cannot be migrated: remove them (and their rows in the other user tables) \
         from Synapse, or mark them as appservice users if a bridge owns them",
    )
}

/// Rows with a time PostgreSQL's `timestamptz` cannot hold (4713 BC to 294276 AD).
fn timestamp_range(n: u64, column: &str) -> Finding {
    Finding::new(
        ids::TIMESTAMP_RANGE,
        format!(
            "rows whose `{column}` is a time PostgreSQL's `timestamptz` cannot hold (before \
             4713 BC or after 294276 AD); migrate cannot write them"
        ),
        n,
        "no Synapse writes such values: in Synapse, set them to a real time (or NULL where \
         the column allows it) after a look at the rows",
    )
}

fn unmapped_provider(n: u64) -> Finding {
    Finding::new(
        ids::UNMAPPED_PROVIDER,
        "external ids whose auth_provider has no MAS provider with that `synapse_idp_id`",
        n,
        "map the provider in MAS's `upstream_oauth2.providers` (see the providers section)",
    )
}

fn guests(n: u64) -> Finding {
    Finding::new(
        ids::GUESTS,
        "guest users; they will be migrated as MAS guests (`is_guest`), which MAS does not support \
         otherwise; their tokens and devices are not migrated",
        n,
        "nothing is required; deactivate or delete the guest accounts in Synapse first if you do not want them in MAS",
    )
}

fn non_bcrypt(n: u64) -> Finding {
    Finding::new(
        ids::NON_BCRYPT_HASHES,
        "users whose password hash is not bcrypt (`$2a$`/`$2b$`/`$2y$`); MAS's v1 (bcrypt) scheme \
         cannot verify it, so these users will need a password reset",
        n,
        "tell these users to reset their password after the migration (the hashes are migrated as they are)",
    )
}

fn orphans(n: u64, table: &str) -> Finding {
    Finding::new(
        ids::ORPHAN_ROWS,
        format!(
            "rows of `{table}` whose user id has no `users` row (Synapse has no foreign keys); \
             they cannot be migrated (upstream syn2mas dies on them mid-run)"
        ),
        n,
        format!(
            "delete them in Synapse after a look: \
             `DELETE FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.name = t.user_id);`"
        ),
    )
}

fn appservice_colon(n: u64, table: &str) -> Finding {
    Finding::new(
        ids::APPSERVICE_COLON,
        format!(
            "rows of `{table}` owned by appservice users whose localpart contains `:`; migrate skips \
             those users and these rows (upstream syn2mas would die on them)"
        ),
        n,
        "nothing is required: appservice users stay managed by their appservice",
    )
}

fn non_email_threepids(n: u64) -> Finding {
    Finding::new(
        ids::NON_EMAIL_THREEPIDS,
        "non-email third-party ids (probably phone numbers); they will be migrated to \
         `user_unsupported_third_party_ids`, which MAS does not use",
        n,
        "nothing is required; users keep logging in with their username",
    )
}

fn token_hidden_device(n: u64) -> Finding {
    Finding::new(
        ids::TOKEN_HIDDEN_DEVICE,
        "access tokens whose device is hidden (cross-signing key), has `hidden` NULL, or is `guest_device`; \
         migrate skips them, so those sessions will have to log in again",
        n,
        "nothing is required; MAS has no session for such devices",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_finding_per_table_and_kind_with_its_examples() {
        let mut f = Findings::default();
        f.add(
            Entity::Devices,
            Kind::Problem(Problem::Orphan),
            "@ghost:example.com",
        );
        f.add(
            Entity::Users,
            Kind::Problem(Problem::ServerName),
            "@bob:other.example",
        );
        f.add(
            Entity::Users,
            Kind::Problem(Problem::ServerName),
            "@al:other.example",
        );
        let out = findings(&f, "example.com");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].id, ids::SERVER_NAME);
        assert_eq!(out[0].table.as_deref(), Some("users"));
        assert_eq!(out[0].count, 2);
        assert_eq!(out[0].examples, ["@al:other.example", "@bob:other.example"]);
        assert!(out[0].problem.contains("example.com"));
        assert_eq!(out[1].id, ids::ORPHAN_ROWS);
        assert!(out[1].fix.contains("DELETE FROM devices"));
    }
}
