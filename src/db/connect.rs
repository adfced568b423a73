//! Connection options shared by the Synapse and MAS sides, and the code that opens a connection.

use crate::secret::Secret;
use std::path::PathBuf;

/// libpq's `sslmode` values that syn2mas supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A PEM document given either as a path or inline (MAS accepts both forms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    /// Inline PEM text; kept as a `Secret` because a private key may be given this way.
    Inline(Secret),
}

/// Where and how to connect. Built from a config section or a URI; missing values are filled
/// from libpq's environment variables by `with_libpq_env`, as libpq itself would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// A host name, an IP address, or an absolute directory (unix socket).
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub dbname: Option<String>,
    pub ssl_mode: SslMode,
    pub ssl_root_cert: Option<Pem>,
    pub ssl_cert: Option<Pem>,
    pub ssl_key: Option<Pem>,
}

/// Why a connection failed, with the target described without its password.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to the {side} database ({target}): {reason}")]
pub struct ConnectError {
    /// `Synapse` or `MAS`.
    pub side: &'static str,
    /// `host=… port=… dbname=… user=…`, never the password.
    pub target: String,
    pub reason: String,
}
