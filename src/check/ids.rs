//! Every finding id `check` can report. Ids are a public interface (scripts match on them, the
//! README documents them), so they live in one place and never change meaning; the severity is
//! the id's prefix (`E-` error → exit 10, `W-` warning → exit 11).

// Synapse configuration alone (same checks and severities as `mas-cli syn2mas check`).
pub const REGISTRATION: &str = "W-registration";
pub const USER_CONSENT: &str = "W-user-consent";
pub const CAS: &str = "W-cas";
pub const SAML2: &str = "W-saml2";
pub const JWT: &str = "W-jwt";
pub const PASSWORD_PLUGIN: &str = "W-password-plugin";
pub const THREEPID_CHANGES: &str = "E-3pid-changes";
pub const LOGIN_VIA_EXISTING_SESSION: &str = "E-login-via-existing-session";

// Synapse configuration against MAS configuration.
pub const PASSWORD_SCHEME_MISSING: &str = "E-password-scheme-missing";
pub const PASSWORD_SCHEME_ALGORITHM: &str = "E-password-scheme-algorithm";
pub const PEPPER_MISMATCH: &str = "E-pepper-mismatch";
pub const UNICODE_NORMALIZATION: &str = "E-unicode-normalization";
pub const GUEST_ACCESS: &str = "E-guest-access";
pub const SERVER_NAME_CONFIG: &str = "E-server-name-config";
pub const CAPTCHA: &str = "W-captcha";
pub const TOS_URI: &str = "W-tos-uri";

// MAS database.
pub const MAS_NOT_MAS: &str = "E-mas-not-mas";
pub const MAS_SCHEMA_OLD: &str = "E-mas-schema-old";
pub const MAS_SCHEMA_NEWER: &str = "W-mas-schema-newer";
pub const MAS_SCHEMA_FAILED: &str = "E-mas-schema-failed";
pub const PG_TRGM_MISSING: &str = "E-pg-trgm-missing";
pub const MAS_NOT_EMPTY: &str = "E-mas-not-empty";
pub const INTERRUPTED_RUN: &str = "W-interrupted-run";

/// Warnings `migrate` takes care of itself (it drops an interrupted run's leftovers first), so
/// they never make it refuse to run without `--allow-warnings`.
pub const HANDLED_BY_MIGRATE: &[&str] = &[INTERRUPTED_RUN];
pub const UPSTREAM_IN_PROGRESS: &str = "E-upstream-in-progress";

// Synapse database: schema.
pub const SYNAPSE_NOT_SYNAPSE: &str = "E-synapse-not-synapse";
pub const SYNAPSE_SCHEMA_OLD: &str = "E-synapse-schema-old";
pub const SYNAPSE_ENCODING: &str = "E-synapse-encoding";

// Synapse database: activity (`check` only; `migrate` has its own refusal).
pub const SYNAPSE_SESSIONS: &str = "W-synapse-sessions";

// Synapse database: data.
pub const GUESTS: &str = "W-guests";
pub const NON_EMAIL_THREEPIDS: &str = "W-non-email-threepids";
pub const SERVER_NAME: &str = "E-server-name";
pub const LOCALPART_COLON: &str = "E-localpart-colon";
pub const APPSERVICE_COLON: &str = "W-appservice-colon";
pub const NULL_USER_FIELDS: &str = "E-null-user-fields";
pub const ORPHAN_ROWS: &str = "E-orphan-rows";
pub const TOKEN_HIDDEN_DEVICE: &str = "W-token-hidden-device";
pub const DUPLICATE_TOKENS: &str = "E-duplicate-tokens";
pub const TIMESTAMP_RANGE: &str = "E-timestamp-range";
pub const NON_BCRYPT_HASHES: &str = "W-non-bcrypt-hashes";

// Auth providers (Synapse `user_external_ids` against both configs and MAS's database).
pub const OAUTH_DELEGATED: &str = "E-oauth-delegated";
pub const UNKNOWN_PROVIDER: &str = "E-unknown-provider";
pub const UNKNOWN_PROVIDER_IGNORED: &str = "W-unknown-provider";
pub const UNMAPPED_PROVIDER: &str = "E-unmapped-provider";
pub const PROVIDER_DISABLED: &str = "E-provider-disabled";
pub const PROVIDER_NOT_IN_DB: &str = "E-provider-not-in-db";
pub const PROVIDER_AMBIGUOUS: &str = "E-provider-ambiguous";

/// Every id with a one-line meaning, in report order; the README table is written from this.
pub const CATALOGUE: &[(&str, &str)] = &[
    (REGISTRATION, "Synapse `enable_registration` is on"),
    (USER_CONSENT, "Synapse `user_consent` is configured"),
    (CAS, "Synapse CAS login is enabled"),
    (SAML2, "Synapse SAML2 login is enabled"),
    (JWT, "Synapse JWT login is enabled"),
    (
        PASSWORD_PLUGIN,
        "password login enabled with `localdb_enabled: false`",
    ),
    (THREEPID_CHANGES, "Synapse `enable_3pid_changes: true`"),
    (
        LOGIN_VIA_EXISTING_SESSION,
        "Synapse `login_via_existing_session` enabled",
    ),
    (
        PASSWORD_SCHEME_MISSING,
        "MAS has no password scheme version 1",
    ),
    (PASSWORD_SCHEME_ALGORITHM, "MAS scheme v1 is not bcrypt"),
    (
        PEPPER_MISMATCH,
        "MAS scheme v1 secret differs from Synapse's pepper",
    ),
    (
        UNICODE_NORMALIZATION,
        "MAS scheme v1 lacks `unicode_normalization: true`",
    ),
    (GUEST_ACCESS, "Synapse `allow_guest_access: true`"),
    (
        SERVER_NAME_CONFIG,
        "Synapse `server_name` differs from MAS `matrix.homeserver`",
    ),
    (
        CAPTCHA,
        "Synapse registration CAPTCHA without MAS `captcha`",
    ),
    (
        TOS_URI,
        "Synapse `user_consent` without MAS `branding.tos_uri`",
    ),
    (MAS_NOT_MAS, "MAS database lacks MAS's tables"),
    (MAS_SCHEMA_OLD, "MAS schema older than this tool expects"),
    (MAS_SCHEMA_NEWER, "MAS schema newer than this tool knows"),
    (MAS_SCHEMA_FAILED, "a MAS schema migration failed"),
    (PG_TRGM_MISSING, "extension `pg_trgm` missing on MAS"),
    (MAS_NOT_EMPTY, "a MAS target table has rows"),
    (
        INTERRUPTED_RUN,
        "leftover shadow tables (schema `syn2mas_shadow`) of an interrupted run",
    ),
    (
        UPSTREAM_IN_PROGRESS,
        "an unfinished `mas-cli syn2mas` migration on MAS",
    ),
    (
        SYNAPSE_NOT_SYNAPSE,
        "Synapse database lacks Synapse's tables",
    ),
    (SYNAPSE_SCHEMA_OLD, "Synapse schema older than 1.91.0"),
    (GUESTS, "guest users will be imported"),
    (NON_EMAIL_THREEPIDS, "non-email third-party ids"),
    (SERVER_NAME, "user ids not on MAS `matrix.homeserver`"),
    (LOCALPART_COLON, "non-appservice localparts containing `:`"),
    (
        APPSERVICE_COLON,
        "rows of appservice users whose localpart has `:`",
    ),
    (NULL_USER_FIELDS, "users with NULL name or creation_ts"),
    (ORPHAN_ROWS, "rows whose user has no `users` row"),
    (
        TOKEN_HIDDEN_DEVICE,
        "access tokens on hidden/guest devices (skipped)",
    ),
    (DUPLICATE_TOKENS, "duplicate or multiply-referenced tokens"),
    (
        TIMESTAMP_RANGE,
        "timestamps PostgreSQL's `timestamptz` cannot hold",
    ),
    (
        NON_BCRYPT_HASHES,
        "password hashes MAS's v1 scheme cannot verify",
    ),
    (OAUTH_DELEGATED, "`oauth-delegated` external ids left over"),
    (
        UNKNOWN_PROVIDER,
        "auth_provider unknown to Synapse and unmapped",
    ),
    (
        UNKNOWN_PROVIDER_IGNORED,
        "same, with --ignore-missing-auth-providers",
    ),
    (
        UNMAPPED_PROVIDER,
        "no MAS provider has `synapse_idp_id` = auth_provider",
    ),
    (PROVIDER_DISABLED, "the mapped MAS provider is disabled"),
    (
        PROVIDER_NOT_IN_DB,
        "the mapped MAS provider is not in MAS's database",
    ),
    (
        PROVIDER_AMBIGUOUS,
        "several MAS providers share one `synapse_idp_id`",
    ),
];

/// Whether `id` is a documented finding id.
pub fn is_known(id: &str) -> bool {
    CATALOGUE.iter().any(|(known, _)| *known == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for (id, meaning) in CATALOGUE {
            assert!(seen.insert(*id), "duplicate id {id}");
            assert!(id.starts_with("E-") || id.starts_with("W-"), "{id}");
            assert!(
                id[2..]
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{id}"
            );
            assert!(!meaning.is_empty());
        }
    }
}
