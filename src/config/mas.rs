//! MAS's `config.yaml`, as much of it as syn2mas reads.

use crate::db::ConnectOptions;
use crate::secret::Secret;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordScheme {
    pub version: u16,
    /// `bcrypt`, `argon2id` or `pbkdf2`.
    pub algorithm: String,
    pub cost: Option<u32>,
    /// `secret`, or the raw bytes of `secret_file` (a trailing newline is kept, as MAS keeps it).
    pub secret: Option<Secret>,
    pub unicode_normalization: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamProvider {
    pub id: ulid::Ulid,
    pub synapse_idp_id: Option<String>,
    pub enabled: bool,
    pub issuer: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct MasConfig {
    pub files: Vec<PathBuf>,
    pub database: ConnectOptions,
    /// `matrix.homeserver` (MAS's default is `localhost:8008`).
    pub homeserver: String,
    pub passwords_enabled: bool,
    /// Empty when the config has no `passwords` section: MAS then uses one v1 argon2id scheme,
    /// which the loader fills in so checks see what MAS would use.
    pub password_schemes: Vec<PasswordScheme>,
    pub providers: Vec<UpstreamProvider>,
    /// `captcha.service`, if set.
    pub captcha_service: Option<String>,
    /// `branding.tos_uri`, if set.
    pub tos_uri: Option<String>,
}
