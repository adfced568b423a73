//! Synapse's `homeserver.yaml`, as much of it as syn2mas reads.
//!
//! The loader reads the file as Synapse does, not as a strict schema: every section is optional,
//! a section written as `key:` with nothing under it (YAML null) is the same as an absent one,
//! unknown keys are ignored, booleans may be spelled the YAML 1.1 way (`yes`, `off`) because
//! PyYAML reads them so, and each "enabled" flag has Synapse's own default. Upstream syn2mas was
//! stricter and broke on real configs (MAS #3928, #3929, #5421).

use super::error::ConfigError;
use super::merge::{load_documents, merge_top_level};
use super::tree::Field;
use crate::db::connect::process_env;
use crate::db::{ConnectOptions, Pem, SslMode};
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

/// Loads and merges Synapse config files (a later file replaces whole top-level keys, as
/// Synapse's own `-c a -c b` does). Connection values missing from `database.args` are taken
/// from the process's libpq environment (`PGHOST`…).
pub fn load_synapse(paths: &[PathBuf]) -> Result<SynapseConfig, ConfigError> {
    load_synapse_with_env(paths, &process_env)
}

/// [`load_synapse`] with an injected environment lookup, so tests need not touch the
/// process-global environment.
pub fn load_synapse_with_env(
    paths: &[PathBuf],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SynapseConfig, ConfigError> {
    if paths.is_empty() {
        return Err(ConfigError::Other(
            "no Synapse configuration file was given (use --synapse-config)".to_owned(),
        ));
    }
    let root = merge_top_level(load_documents(paths)?);
    let root = Field::root(paths, &root);
    let password = password_config(&root.get("password_config")?)?;
    Ok(SynapseConfig {
        files: paths.to_vec(),
        server_name: server_name(&root, paths)?,
        database: database(&root)?.map(|o| o.with_env(env)),
        allow_guest_access: flag(&root, "allow_guest_access", false)?,
        enable_registration: flag(&root, "enable_registration", false)?,
        enable_registration_captcha: flag(&root, "enable_registration_captcha", false)?,
        enable_3pid_changes: root.get("enable_3pid_changes")?.bool_yaml11()?,
        user_consent: root.get("user_consent")?.is_present(),
        password_enabled: password.enabled,
        password_localdb_enabled: password.localdb_enabled,
        password_pepper: password.pepper,
        login_via_existing_session_enabled: flag(
            &root.get("login_via_existing_session")?,
            "enabled",
            false,
        )?,
        cas_enabled: cas_enabled(&root.get("cas_config")?)?,
        saml2_enabled: saml2_enabled(&root.get("saml2_config")?)?,
        jwt_enabled: jwt_enabled(&root.get("jwt_config")?)?,
        oidc_providers: oidc_providers(&root)?,
    })
}

fn server_name(root: &Field<'_>, paths: &[PathBuf]) -> Result<String, ConfigError> {
    root.get("server_name")?
        .string_or_int()?
        .ok_or_else(|| ConfigError::Missing {
            paths: paths.to_vec(),
            key: "server_name".to_owned(),
        })
}

/// A boolean key of `section`, with Synapse's default when absent.
fn flag(section: &Field<'_>, key: &str, default: bool) -> Result<bool, ConfigError> {
    Ok(section.get(key)?.bool_yaml11()?.unwrap_or(default))
}

struct PasswordConfig {
    enabled: PasswordEnabled,
    localdb_enabled: bool,
    pepper: Option<Secret>,
}

fn password_config(section: &Field<'_>) -> Result<PasswordConfig, ConfigError> {
    let enabled = section.get("enabled")?;
    let enabled = match enabled.string() {
        Ok(Some(text)) if text == "only_for_reauth" => PasswordEnabled::OnlyForReauth,
        _ => match enabled.bool_yaml11() {
            Ok(None | Some(true)) => PasswordEnabled::True,
            Ok(Some(false)) => PasswordEnabled::False,
            Err(_) => return Err(enabled.type_error("a boolean or `only_for_reauth`")),
        },
    };
    Ok(PasswordConfig {
        enabled,
        localdb_enabled: flag(section, "localdb_enabled", true)?,
        pepper: section.get("pepper")?.string_or_int()?.map(Secret::new),
    })
}

/// Synapse: CAS is on when `cas_config` is a non-empty mapping whose `enabled` is not false
/// (`enabled` defaults to **true** there; upstream syn2mas assumed false and so missed it).
fn cas_enabled(section: &Field<'_>) -> Result<bool, ConfigError> {
    Ok(section.is_nonempty_map()? && flag(section, "enabled", true)?)
}

/// Synapse: SAML2 is on when `saml2_config` is a non-empty mapping, `enabled` is not false
/// (default true) and it has an `sp_config` or a `config_path`.
fn saml2_enabled(section: &Field<'_>) -> Result<bool, ConfigError> {
    Ok(section.is_nonempty_map()?
        && flag(section, "enabled", true)?
        && (section.get("sp_config")?.is_truthy() || section.get("config_path")?.is_truthy()))
}

/// Synapse: JWT login is on only when `jwt_config.enabled` is true (default false).
fn jwt_enabled(section: &Field<'_>) -> Result<bool, ConfigError> {
    Ok(section.is_nonempty_map()? && flag(section, "enabled", false)?)
}

/// The legacy `oidc_config` (only when it names both an `issuer` and a `client_id`, as upstream
/// syn2mas requires), then every entry of `oidc_providers`.
fn oidc_providers(root: &Field<'_>) -> Result<Vec<SynapseOidcProvider>, ConfigError> {
    let mut providers = Vec::new();
    let legacy = root.get("oidc_config")?;
    if legacy.get("issuer")?.is_present() && legacy.get("client_id")?.is_present() {
        providers.push(oidc_provider(&legacy)?);
    }
    for entry in root.get("oidc_providers")?.items()? {
        providers.push(oidc_provider(&entry)?);
    }
    Ok(providers)
}

fn oidc_provider(entry: &Field<'_>) -> Result<SynapseOidcProvider, ConfigError> {
    if !entry.is_present() {
        return Err(entry.type_error("a mapping"));
    }
    let idp_id = entry.get("idp_id")?.string()?;
    Ok(SynapseOidcProvider {
        auth_provider: auth_provider(idp_id.as_deref()),
        idp_id,
        issuer: entry.get("issuer")?.string()?,
    })
}

/// Synapse's rule (`synapse/config/oidc.py`), which decides what lands in
/// `user_external_ids.auth_provider`: no `idp_id` or `oidc` → `oidc`; anything else gets the
/// `oidc-` prefix. Synapse applies it to the legacy `oidc_config` too (same parser), so a legacy
/// `idp_id: foo` is stored as `oidc-foo`, not `foo`.
pub fn auth_provider(idp_id: Option<&str>) -> String {
    match idp_id {
        None | Some("oidc") => "oidc".to_owned(),
        Some(id) => format!("oidc-{id}"),
    }
}

/// The main database: `database`, or the `databases` entry that holds the `main` data store.
fn database(root: &Field<'_>) -> Result<Option<ConnectOptions>, ConfigError> {
    let single = root.get("database")?;
    let multi = root.get("databases")?;
    match (single.is_present(), multi.is_present()) {
        (true, true) => Err(multi.invalid("cannot be set together with `database`")),
        (true, false) => database_entry(&single).map(Some),
        (false, true) => database_entry(&main_database(&multi)?).map(Some),
        (false, false) => Ok(None),
    }
}

/// Synapse's (experimental) multi-database form: a mapping of label → `database`-like entry
/// with `data_stores` (default: `main` and `state`).
fn main_database<'a>(multi: &Field<'a>) -> Result<Field<'a>, ConfigError> {
    for (_, entry) in multi.entries()? {
        let stores = entry.get("data_stores")?;
        let holds_main = if stores.is_present() {
            let mut names = Vec::new();
            for store in stores.items()? {
                names.push(store.string()?);
            }
            names.iter().any(|n| n.as_deref() == Some("main"))
        } else {
            true
        };
        if holds_main {
            return Ok(entry);
        }
    }
    Err(multi.invalid("no entry holds the `main` data store"))
}

fn database_entry(entry: &Field<'_>) -> Result<ConnectOptions, ConfigError> {
    let name_field = entry.get("name")?;
    // Synapse's default engine, when `name` is not given, is sqlite3.
    let name = name_field.string()?.unwrap_or_else(|| "sqlite3".to_owned());
    match name.as_str() {
        "psycopg2" | "psycopg" => database_args(&entry.get("args")?),
        "sqlite3" => Err(name_field.invalid(
            "this Synapse uses SQLite (`sqlite3`), which syn2mas cannot read: port Synapse's \
             database to PostgreSQL first with `synapse_port_db` (see Synapse's \"Using \
             Postgres\" documentation), then point `database` at it",
        )),
        other => Err(name_field.invalid(format!(
            "syn2mas does not support the `{other}` database driver; Synapse's database must be \
             PostgreSQL (`psycopg2`)"
        ))),
    }
}

/// psycopg2's connection arguments (libpq keywords); others (`cp_min`, `keepalives`…) are
/// ignored.
fn database_args(args: &Field<'_>) -> Result<ConnectOptions, ConfigError> {
    let dbname = args.get("dbname")?.string_or_int()?;
    let database = args.get("database")?.string_or_int()?;
    if dbname.is_some() && database.is_some() {
        return Err(args.invalid("Only one of `database` and `dbname` may be specified"));
    }
    let ssl_mode = args.get("sslmode")?;
    Ok(ConnectOptions {
        host: args.get("host")?.string_or_int()?,
        port: args.get("port")?.uint::<u16>()?,
        user: args.get("user")?.string_or_int()?,
        password: args.get("password")?.string_or_int()?.map(Secret::new),
        dbname: dbname.or(database),
        ssl_mode: match ssl_mode.string()? {
            None => SslMode::default(),
            Some(text) => SslMode::parse(&text).ok_or_else(|| {
                ssl_mode.invalid(
                    "expected one of disable, allow, prefer, require, verify-ca, verify-full",
                )
            })?,
        },
        ssl_root_cert: pem_path(&args.get("sslrootcert")?)?,
        ssl_cert: pem_path(&args.get("sslcert")?)?,
        ssl_key: pem_path(&args.get("sslkey")?)?,
    })
}

fn pem_path(field: &Field<'_>) -> Result<Option<Pem>, ConfigError> {
    Ok(field.string()?.map(|p| Pem::File(PathBuf::from(p))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_provider_rule() {
        assert_eq!(auth_provider(None), "oidc");
        assert_eq!(auth_provider(Some("oidc")), "oidc");
        assert_eq!(auth_provider(Some("github")), "oidc-github");
    }
}
