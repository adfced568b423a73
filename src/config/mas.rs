//! MAS's `config.yaml`, as much of it as syn2mas reads.
//!
//! Read as MAS reads it: strict YAML 1.2 types, every section optional with MAS's defaults, and
//! the same rules for the `database` section (`uri` or split options, never both) and for
//! password schemes (unique versions, at least one, `secret` xor `secret_file`).

use super::error::ConfigError;
use super::merge::{load_documents, merge_deep};
use super::tree::Field;
use crate::db::connect::process_env;
use crate::db::{ConnectOptions, Pem, SslMode};
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
    /// Never empty: without `passwords.schemes` MAS uses one v1 argon2id scheme, which the
    /// loader fills in so checks see what MAS would use.
    pub password_schemes: Vec<PasswordScheme>,
    pub providers: Vec<UpstreamProvider>,
    /// `captcha.service`, if set.
    pub captcha_service: Option<String>,
    /// `branding.tos_uri`, if set.
    pub tos_uri: Option<String>,
}

/// MAS's default `matrix.homeserver`.
pub const DEFAULT_HOMESERVER: &str = "localhost:8008";

/// Loads and deep-merges MAS config files (rules in `merge.rs`, `merge_deep`: maps merge, later
/// scalars win, a later list replaces an earlier one, unlike mas-cli which appends lists).
/// Connection values missing from `database` come from the process's libpq environment, as
/// MAS's sqlx does.
pub fn load_mas(paths: &[PathBuf]) -> Result<MasConfig, ConfigError> {
    load_mas_with_env(paths, &process_env)
}

/// [`load_mas`] with an injected environment lookup.
pub fn load_mas_with_env(
    paths: &[PathBuf],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<MasConfig, ConfigError> {
    let mut documents = load_documents(paths)?.into_iter();
    let Some(first) = documents.next() else {
        return Err(ConfigError::Other(
            "no MAS configuration file was given (use --config)".to_owned(),
        ));
    };
    let root = documents.fold(first, merge_deep);
    let root = Field::root(paths, &root);
    let passwords = root.get("passwords")?;
    Ok(MasConfig {
        files: paths.to_vec(),
        database: database(&root.get("database")?)?.with_env(env),
        homeserver: root
            .get("matrix")?
            .get("homeserver")?
            .string()?
            .unwrap_or_else(|| DEFAULT_HOMESERVER.to_owned()),
        passwords_enabled: passwords.get("enabled")?.bool()?.unwrap_or(true),
        password_schemes: password_schemes(&passwords.get("schemes")?)?,
        providers: providers(&root.get("upstream_oauth2")?.get("providers")?)?,
        captcha_service: root.get("captcha")?.get("service")?.string()?,
        tos_uri: root.get("branding")?.get("tos_uri")?.string()?,
    })
}

/// MAS's default when `passwords.schemes` is not set: one argon2id scheme, version 1.
fn default_schemes() -> Vec<PasswordScheme> {
    vec![PasswordScheme {
        version: 1,
        algorithm: "argon2id".to_owned(),
        cost: None,
        secret: None,
        unicode_normalization: false,
    }]
}

fn password_schemes(list: &Field<'_>) -> Result<Vec<PasswordScheme>, ConfigError> {
    if !list.is_present() {
        return Ok(default_schemes());
    }
    let items = list.items()?;
    if items.is_empty() {
        return Err(list.invalid("at least one password scheme is required"));
    }
    let mut schemes: Vec<PasswordScheme> = Vec::with_capacity(items.len());
    for item in &items {
        let scheme = password_scheme(item)?;
        if schemes.iter().any(|s| s.version == scheme.version) {
            return Err(item.get("version")?.invalid(format!(
                "version {} is used by more than one password scheme",
                scheme.version
            )));
        }
        schemes.push(scheme);
    }
    Ok(schemes)
}

fn password_scheme(item: &Field<'_>) -> Result<PasswordScheme, ConfigError> {
    let version = item.get("version")?;
    let version = version
        .uint::<u16>()?
        .ok_or_else(|| version.invalid("is required"))?;
    Ok(PasswordScheme {
        version,
        algorithm: algorithm(&item.get("algorithm")?)?,
        cost: item.get("cost")?.uint::<u32>()?,
        secret: scheme_secret(item)?,
        unicode_normalization: item.get("unicode_normalization")?.bool()?.unwrap_or(false),
    })
}

fn algorithm(field: &Field<'_>) -> Result<String, ConfigError> {
    match field.string()?.as_deref() {
        Some(name @ ("bcrypt" | "argon2id" | "pbkdf2")) => Ok(name.to_owned()),
        Some(other) => Err(field.invalid(format!(
            "expected one of `bcrypt`, `argon2id`, `pbkdf2`, found `{other}`"
        ))),
        None => Err(field.invalid("is required")),
    }
}

/// `secret`, or the exact bytes of `secret_file`. The file is not trimmed: MAS appends the
/// bytes as they are, so a trailing newline is part of the pepper (and then will not match
/// Synapse's `pepper`, which the checks report).
fn scheme_secret(item: &Field<'_>) -> Result<Option<Secret>, ConfigError> {
    let secret = item.get("secret")?;
    let file = item.get("secret_file")?;
    match (secret.string()?, file.string()?) {
        (Some(_), Some(_)) => {
            Err(item.invalid("only one of `secret` and `secret_file` may be set"))
        }
        (Some(text), None) => Ok(Some(Secret::new(text))),
        (None, Some(path)) => read_text_file(&file, &path).map(Some),
        (None, None) => Ok(None),
    }
}

/// A secret read from a file named in the config; errors are reported at that key.
fn read_text_file(field: &Field<'_>, path: &str) -> Result<Secret, ConfigError> {
    let bytes = super::read_file_capped(std::path::Path::new(path))
        .map_err(|e| field.invalid(format!("cannot read {path}: {e}")))?;
    String::from_utf8(bytes)
        .map(Secret::new)
        .map_err(|_| field.invalid(format!("{path} is not UTF-8 text")))
}

fn providers(list: &Field<'_>) -> Result<Vec<UpstreamProvider>, ConfigError> {
    list.items()?.iter().map(provider).collect()
}

fn provider(item: &Field<'_>) -> Result<UpstreamProvider, ConfigError> {
    if !item.is_present() {
        return Err(item.type_error("a mapping"));
    }
    let id = item.get("id")?;
    let text = id.string()?.ok_or_else(|| id.invalid("is required"))?;
    let id = ulid::Ulid::from_string(&text)
        .map_err(|e| id.invalid(format!("`{text}` is not a valid ULID: {e}")))?;
    Ok(UpstreamProvider {
        id,
        synapse_idp_id: item.get("synapse_idp_id")?.string()?,
        enabled: item.get("enabled")?.bool()?.unwrap_or(true),
        issuer: item.get("issuer")?.string()?,
    })
}

/// The split options that MAS forbids next to `uri`.
const SPLIT_OPTIONS: [&str; 7] = [
    "host",
    "port",
    "socket",
    "username",
    "password",
    "password_file",
    "database",
];

/// MAS's `database` section. Absent → `postgresql://` (everything from the environment and
/// libpq's defaults), like MAS.
fn database(section: &Field<'_>) -> Result<ConnectOptions, ConfigError> {
    let uri = section.get("uri")?;
    let mut has_split = false;
    for key in SPLIT_OPTIONS {
        has_split |= section.get(key)?.is_present();
    }
    let mut options = match uri.string()? {
        Some(_) if has_split => {
            return Err(section.invalid(
                "`uri` must not be set together with `host`, `port`, `socket`, `username`, \
                 `password`, `password_file` or `database`",
            ));
        }
        // from_uri's messages never quote the URI, so they are safe to show.
        Some(text) => ConnectOptions::from_uri(&text).map_err(|e| uri.invalid(e))?,
        None => split_options(section)?,
    };
    apply_tls(section, &mut options)?;
    Ok(options)
}

/// `host`/`port`/`socket`/`username`/`password[_file]`/`database`. `socket` (a directory)
/// wins over `host`, as in sqlx.
fn split_options(section: &Field<'_>) -> Result<ConnectOptions, ConfigError> {
    let password = section.get("password")?;
    let password_file = section.get("password_file")?;
    let password = match (password.string()?, password_file.string()?) {
        (Some(_), Some(_)) => {
            return Err(section.invalid("only one of `password` and `password_file` may be set"));
        }
        (Some(text), None) => Some(Secret::new(text)),
        (None, Some(path)) => Some(database_password(&password_file, &path)?),
        (None, None) => None,
    };
    let host = section.get("host")?.string()?;
    let socket = section.get("socket")?.string()?;
    Ok(ConnectOptions {
        host: socket.or(host),
        port: section.get("port")?.uint::<u16>()?,
        user: section.get("username")?.string()?,
        password,
        dbname: section.get("database")?.string()?,
        ..ConnectOptions::default()
    })
}

/// A database password from a file, without its trailing line break: files written with `echo`
/// or by secret managers end with one, and a password ending in a newline is not something a
/// PostgreSQL role can sensibly have.
fn database_password(field: &Field<'_>, path: &str) -> Result<Secret, ConfigError> {
    let text = read_text_file(field, path)?;
    let text = text.expose();
    let trimmed = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(text);
    Ok(Secret::new(trimmed))
}

/// `ssl_mode` and the three PEM pairs; each set value overrides what a `uri` said.
fn apply_tls(section: &Field<'_>, options: &mut ConnectOptions) -> Result<(), ConfigError> {
    let mode = section.get("ssl_mode")?;
    if let Some(text) = mode.string()? {
        options.ssl_mode = SslMode::parse(&text).ok_or_else(|| {
            mode.invalid("expected one of disable, allow, prefer, require, verify-ca, verify-full")
        })?;
    }
    if let Some(pem) = pem_pair(section, "ssl_ca", "ssl_ca_file")? {
        options.ssl_root_cert = Some(pem);
    }
    let cert = pem_pair(section, "ssl_certificate", "ssl_certificate_file")?;
    let key = pem_pair(section, "ssl_key", "ssl_key_file")?;
    if cert.is_some() != key.is_some() {
        return Err(section.invalid(
            "both a ssl_certificate and a ssl_key must be set at the same time or none of them",
        ));
    }
    if cert.is_some() {
        options.ssl_cert = cert;
        options.ssl_key = key;
    }
    Ok(())
}

/// An inline PEM key or its `_file` twin; both set is an error, as in MAS.
fn pem_pair(section: &Field<'_>, inline: &str, file: &str) -> Result<Option<Pem>, ConfigError> {
    match (section.get(inline)?.string()?, section.get(file)?.string()?) {
        (Some(_), Some(_)) => {
            Err(section.invalid(format!("only one of `{inline}` and `{file}` may be set")))
        }
        (Some(text), None) => Ok(Some(Pem::Inline(Secret::new(text)))),
        (None, Some(path)) => Ok(Some(Pem::File(PathBuf::from(path)))),
        (None, None) => Ok(None),
    }
}
