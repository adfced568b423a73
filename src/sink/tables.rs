//! The eight MAS tables syn2mas writes, and the columns it fills in each.

pub const USERS: &str = "users";
pub const USER_PASSWORDS: &str = "user_passwords";
pub const USER_EMAILS: &str = "user_emails";
pub const USER_UNSUPPORTED_THIRD_PARTY_IDS: &str = "user_unsupported_third_party_ids";
pub const UPSTREAM_OAUTH_LINKS: &str = "upstream_oauth_links";
pub const COMPAT_SESSIONS: &str = "compat_sessions";
pub const COMPAT_ACCESS_TOKENS: &str = "compat_access_tokens";
pub const COMPAT_REFRESH_TOKENS: &str = "compat_refresh_tokens";

/// The eight names in `Target::ALL` order (dependency order: referenced tables first), for
/// code that needs plain names (checks, tests, the benchmark floor).
pub const NAMES: [&str; 8] = [
    USERS,
    USER_PASSWORDS,
    USER_EMAILS,
    USER_UNSUPPORTED_THIRD_PARTY_IDS,
    UPSTREAM_OAUTH_LINKS,
    COMPAT_SESSIONS,
    COMPAT_ACCESS_TOKENS,
    COMPAT_REFRESH_TOKENS,
];

/// A target table, used as an index into per-table arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Users,
    UserPasswords,
    UserEmails,
    UserUnsupportedThirdPartyIds,
    UpstreamOauthLinks,
    CompatSessions,
    CompatAccessTokens,
    CompatRefreshTokens,
}

impl Target {
    pub const ALL: [Target; 8] = [
        Target::Users,
        Target::UserPasswords,
        Target::UserEmails,
        Target::UserUnsupportedThirdPartyIds,
        Target::UpstreamOauthLinks,
        Target::CompatSessions,
        Target::CompatAccessTokens,
        Target::CompatRefreshTokens,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Users => USERS,
            Target::UserPasswords => USER_PASSWORDS,
            Target::UserEmails => USER_EMAILS,
            Target::UserUnsupportedThirdPartyIds => USER_UNSUPPORTED_THIRD_PARTY_IDS,
            Target::UpstreamOauthLinks => UPSTREAM_OAUTH_LINKS,
            Target::CompatSessions => COMPAT_SESSIONS,
            Target::CompatAccessTokens => COMPAT_ACCESS_TOKENS,
            Target::CompatRefreshTokens => COMPAT_REFRESH_TOKENS,
        }
    }

    /// The columns syn2mas writes, in the order the transform encodes them. Columns not listed
    /// take their defaults (NULL or the table's DEFAULT).
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Target::Users => &[
                "user_id",
                "username",
                "created_at",
                "locked_at",
                "deactivated_at",
                "can_request_admin",
                "is_guest",
            ],
            Target::UserPasswords => &[
                "user_password_id",
                "user_id",
                "hashed_password",
                "created_at",
                "version",
            ],
            Target::UserEmails => &["user_email_id", "user_id", "email", "created_at"],
            Target::UserUnsupportedThirdPartyIds => &["user_id", "medium", "address", "created_at"],
            Target::UpstreamOauthLinks => &[
                "upstream_oauth_link_id",
                "user_id",
                "upstream_oauth_provider_id",
                "subject",
                "created_at",
            ],
            Target::CompatSessions => &[
                "compat_session_id",
                "user_id",
                "device_id",
                "human_name",
                "created_at",
                "is_synapse_admin",
                "last_active_at",
                "last_active_ip",
                "user_agent",
            ],
            Target::CompatAccessTokens => &[
                "compat_access_token_id",
                "compat_session_id",
                "access_token",
                "created_at",
                "expires_at",
            ],
            Target::CompatRefreshTokens => &[
                "compat_refresh_token_id",
                "compat_session_id",
                "compat_access_token_id",
                "refresh_token",
                "created_at",
            ],
        }
    }

    /// Field count of one encoded row, for the binary COPY tuple header.
    pub fn width(self) -> i16 {
        self.columns().len() as i16
    }
}
