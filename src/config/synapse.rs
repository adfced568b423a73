//! Synapse's `homeserver.yaml`, as much of it as syn2mas reads.

use crate::db::ConnectOptions;
use crate::secret::Secret;
use std::path::PathBuf;

/// `password_config.enabled`: Synapse accepts a bool or the string `only_for_reauth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PasswordEnabled {
    #[default]
    True,
    False,
    OnlyForReauth,
}

/// One Synapse OIDC provider, reduced to what the provider checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynapseOidcProvider {
    /// The value Synapse stores in `user_external_ids.auth_provider` for this provider
    /// (`oidc`, or `oidc-<idp_id>`), computed with Synapse's own rule.
    pub auth_provider: String,
    /// The `idp_id` as written in the config, if any.
    pub idp_id: Option<String>,
    pub issuer: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct SynapseConfig {
    /// The files this was loaded from, in merge order (for messages).
    pub files: Vec<PathBuf>,
    pub server_name: String,
    /// The `database` section turned into connection options (libpq env vars filled in).
    /// `None` only when the section is absent; `sqlite3` is an error at load time.
    pub database: Option<ConnectOptions>,
    pub allow_guest_access: bool,
    pub enable_registration: bool,
    pub enable_registration_captcha: bool,
    /// `Some(true)` only when explicitly enabled.
    pub enable_3pid_changes: Option<bool>,
    /// Whether a `user_consent` section is present (its contents are not used).
    pub user_consent: bool,
    pub password_enabled: PasswordEnabled,
    pub password_localdb_enabled: bool,
    pub password_pepper: Option<Secret>,
    pub login_via_existing_session_enabled: bool,
    pub cas_enabled: bool,
    pub saml2_enabled: bool,
    pub jwt_enabled: bool,
    /// Legacy `oidc_config` (when it has `issuer` and `client_id`) followed by `oidc_providers`.
    pub oidc_providers: Vec<SynapseOidcProvider>,
}
