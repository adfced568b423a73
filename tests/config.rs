//! Configuration loading (Synapse and MAS files, merges, errors) and database connections
//! against the local PostgreSQL (127.0.0.1:5432, trust auth, user `postgres`).

use std::path::{Path, PathBuf};
use syn2mas::config::{
    ConfigError, PasswordEnabled, PasswordScheme, SynapseOidcProvider, load_mas_with_env,
    load_synapse_with_env,
};
use syn2mas::db::{ConnectOptions, Pem, SslMode};
use syn2mas::secret::Secret;

/// No environment at all: loader tests must not depend on the PG* variables of whoever runs
/// them (the environment is process-global and tests run in parallel).
fn no_env(_: &str) -> Option<String> {
    None
}

fn fixture(side: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/config")
        .join(side)
        .join(name)
}

fn synapse(name: &str) -> PathBuf {
    fixture("synapse", name)
}

fn mas(name: &str) -> PathBuf {
    fixture("mas", name)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn synapse_err(paths: &[PathBuf]) -> String {
    load_synapse_with_env(paths, &no_env)
        .unwrap_err()
        .to_string()
}

fn mas_err(paths: &[PathBuf]) -> String {
    load_mas_with_env(paths, &no_env).unwrap_err().to_string()
}

fn secret(s: &Option<Secret>) -> Option<&str> {
    s.as_ref().map(Secret::expose)
}

// ---------------------------------------------------------------------------------------------
// Synapse

#[test]
fn synapse_full_config() {
    let c = load_synapse_with_env(&[synapse("full.yaml")], &no_env).unwrap();
    assert_eq!(c.files, vec![synapse("full.yaml")]);
    assert_eq!(c.server_name, "example.com");
    let db = c.database.as_ref().unwrap();
    assert_eq!(db.host.as_deref(), Some("db.example.com"));
    assert_eq!(db.port, Some(6432));
    assert_eq!(db.user.as_deref(), Some("synapse_user"));
    assert_eq!(secret(&db.password), Some("db-secret-1"));
    assert_eq!(db.dbname.as_deref(), Some("synapse"));
    assert_eq!(db.ssl_mode, SslMode::VerifyFull);
    assert_eq!(
        db.ssl_root_cert,
        Some(Pem::File("/etc/ssl/pg-root.pem".into()))
    );
    assert_eq!(
        db.ssl_cert,
        Some(Pem::File("/etc/ssl/pg-client.pem".into()))
    );
    assert_eq!(db.ssl_key, Some(Pem::File("/etc/ssl/pg-client.key".into())));
    assert!(c.allow_guest_access);
    assert!(
        c.enable_registration,
        "`yes` is a YAML 1.1 boolean, as PyYAML reads it"
    );
    assert!(c.enable_registration_captcha);
    assert_eq!(c.enable_3pid_changes, Some(false));
    assert!(c.user_consent, "any mapping is accepted for user_consent");
    assert_eq!(c.password_enabled, PasswordEnabled::OnlyForReauth);
    assert!(!c.password_localdb_enabled);
    assert_eq!(secret(&c.password_pepper), Some("pepper-secret"));
    assert!(c.login_via_existing_session_enabled);
    assert!(
        c.cas_enabled,
        "Synapse's cas_config.enabled defaults to true"
    );
    assert!(
        c.saml2_enabled,
        "an sp_config and no `enabled: false` means on"
    );
    assert!(c.jwt_enabled);
    let provider = |auth: &str, idp: Option<&str>, issuer: &str| SynapseOidcProvider {
        auth_provider: auth.into(),
        idp_id: idp.map(Into::into),
        issuer: Some(issuer.into()),
    };
    assert_eq!(
        c.oidc_providers,
        vec![
            provider("oidc", None, "https://legacy.example.com"),
            provider("oidc-github", Some("github"), "https://github.com"),
            provider("oidc", Some("oidc"), "https://old.example.com"),
            provider("oidc", None, "https://noid.example.com"),
        ]
    );
    let debug = format!("{c:?}");
    assert!(!debug.contains("db-secret-1") && !debug.contains("pepper-secret"));
}

#[test]
fn synapse_minimal_config_has_synapse_defaults() {
    let c = load_synapse_with_env(&[synapse("minimal.yaml")], &no_env).unwrap();
    assert_eq!(c.server_name, "example.org");
    assert_eq!(c.database, None);
    assert!(!c.allow_guest_access && !c.enable_registration && !c.enable_registration_captcha);
    assert_eq!(c.enable_3pid_changes, None);
    assert!(!c.user_consent);
    assert_eq!(c.password_enabled, PasswordEnabled::True);
    assert!(c.password_localdb_enabled);
    assert_eq!(c.password_pepper, None);
    assert!(!c.login_via_existing_session_enabled);
    assert!(!c.cas_enabled && !c.saml2_enabled && !c.jwt_enabled);
    assert!(c.oidc_providers.is_empty());
}

#[test]
fn synapse_null_sections_are_absent_sections() {
    let c = load_synapse_with_env(&[synapse("nulls.yaml")], &no_env).unwrap();
    assert_eq!(c.database, None);
    assert_eq!(c.enable_3pid_changes, None);
    assert!(!c.user_consent);
    assert_eq!(c.password_enabled, PasswordEnabled::True);
    assert!(c.password_localdb_enabled);
    assert!(!c.cas_enabled && !c.saml2_enabled && !c.jwt_enabled);
    assert!(!c.login_via_existing_session_enabled);
    assert!(c.oidc_providers.is_empty());
}

#[test]
fn synapse_later_file_replaces_whole_top_level_keys() {
    let c =
        load_synapse_with_env(&[synapse("base.yaml"), synapse("override.yaml")], &no_env).unwrap();
    assert_eq!(c.server_name, "base.example");
    assert!(!c.enable_registration);
    assert_eq!(secret(&c.password_pepper), Some("base-pepper"));
    let db = c.database.unwrap();
    assert_eq!(db.dbname.as_deref(), Some("override-db"));
    assert_eq!(
        db.host, None,
        "base.yaml's database.args.host must not survive"
    );
    assert_eq!(db.user, None);
}

#[test]
fn synapse_database_falls_back_to_libpq_env() {
    let env = |name: &str| match name {
        "PGHOST" => Some("env-host".to_owned()),
        "PGUSER" => Some("env-user".to_owned()),
        "PGDATABASE" => Some("env-db".to_owned()),
        "PGPASSWORD" => Some("env-pw".to_owned()),
        "PGSSLMODE" => Some("require".to_owned()),
        _ => None,
    };
    let c = load_synapse_with_env(&[synapse("base.yaml"), synapse("override.yaml")], &env).unwrap();
    let db = c.database.unwrap();
    assert_eq!(db.host.as_deref(), Some("env-host"));
    assert_eq!(db.user.as_deref(), Some("env-user"));
    assert_eq!(
        db.dbname.as_deref(),
        Some("override-db"),
        "the config wins over PGDATABASE"
    );
    assert_eq!(secret(&db.password), Some("env-pw"));
    assert_eq!(db.ssl_mode, SslMode::Require);
}

#[test]
fn synapse_deprecated_database_alias_socket_and_string_port() {
    let c = load_synapse_with_env(&[synapse("legacy-alias.yaml")], &no_env).unwrap();
    let db = c.database.unwrap();
    assert_eq!(db.dbname.as_deref(), Some("legacy_alias_db"));
    assert_eq!(db.host.as_deref(), Some("/var/run/postgresql"));
    assert_eq!(db.port, Some(5433));
}

#[test]
fn synapse_sqlite_is_refused_with_directions() {
    let path = synapse("sqlite.yaml");
    assert_eq!(
        synapse_err(std::slice::from_ref(&path)),
        format!(
            "{}: `database.name`: this Synapse uses SQLite (`sqlite3`), which syn2mas cannot \
             read: port Synapse's database to PostgreSQL first with `synapse_port_db` (see \
             Synapse's \"Using Postgres\" documentation), then point `database` at it",
            path.display()
        )
    );
}

#[test]
fn synapse_database_without_name_is_sqlite_as_in_synapse() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "h.yaml",
        "server_name: x\ndatabase:\n  args: {}\n",
    );
    let err = synapse_err(std::slice::from_ref(&path));
    assert!(
        err.starts_with(&format!(
            "{}: `database.name`: this Synapse uses SQLite",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn synapse_unknown_driver() {
    let path = synapse("mysql.yaml");
    assert_eq!(
        synapse_err(std::slice::from_ref(&path)),
        format!(
            "{}: `database.name`: syn2mas does not support the `mysql` database driver; \
             Synapse's database must be PostgreSQL (`psycopg2`)",
            path.display()
        )
    );
}

#[test]
fn synapse_both_database_and_dbname() {
    let path = synapse("both-dbnames.yaml");
    assert_eq!(
        synapse_err(std::slice::from_ref(&path)),
        format!(
            "{}: `database.args`: Only one of `database` and `dbname` may be specified",
            path.display()
        )
    );
}

#[test]
fn synapse_missing_server_name_names_every_file() {
    let a = synapse("no-server-name.yaml");
    let b = synapse("empty.yaml");
    assert_eq!(
        synapse_err(&[a.clone(), b.clone()]),
        format!(
            "`server_name` is required but is not set in {}, {}",
            a.display(),
            b.display()
        )
    );
    assert!(matches!(
        load_synapse_with_env(&[b], &no_env),
        Err(ConfigError::Missing { .. })
    ));
}

#[test]
fn synapse_missing_file() {
    let path = PathBuf::from("/nonexistent/homeserver.yaml");
    assert_eq!(
        synapse_err(&[synapse("minimal.yaml"), path]),
        "cannot read /nonexistent/homeserver.yaml: No such file or directory (os error 2)"
    );
}

#[test]
fn synapse_yaml_syntax_error_has_line_and_column() {
    let path = synapse("syntax-error.yaml");
    let err = load_synapse_with_env(std::slice::from_ref(&path), &no_env).unwrap_err();
    let ConfigError::Syntax { line, column, .. } = &err else {
        panic!("expected a syntax error, got {err:?}");
    };
    assert_eq!((*line, *column), (4, 8));
    assert_eq!(
        err.to_string(),
        format!(
            "{}: YAML syntax error at line 4, column 8: mapping values are not allowed in this context",
            path.display()
        )
    );
}

#[test]
fn synapse_wrong_type_names_the_key() {
    let path = synapse("wrong-type.yaml");
    assert_eq!(
        synapse_err(std::slice::from_ref(&path)),
        format!(
            "{}: `password_config.localdb_enabled`: expected a boolean, found a string",
            path.display()
        )
    );
}

#[test]
fn synapse_more_wrong_types() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "password_config:\n  enabled: 3\n",
            "`password_config.enabled`: expected a boolean or `only_for_reauth`, found an integer",
        ),
        (
            "password_config: true\n",
            "`password_config`: expected a mapping, found a boolean",
        ),
        (
            "database:\n  name: psycopg2\n  args:\n    port: 70000\n",
            "`database.args.port`: expected an integer from 0 to 65535",
        ),
        (
            "oidc_providers:\n  - idp_id: [a]\n",
            "`oidc_providers[0].idp_id`: expected a string, found a sequence",
        ),
        (
            "database:\n  name: psycopg2\n  args:\n    sslmode: sometimes\n",
            "`database.args.sslmode`: expected one of disable, allow, prefer, require, verify-ca, verify-full",
        ),
    ];
    for (i, (body, expected)) in cases.into_iter().enumerate() {
        let path = write(
            dir.path(),
            &format!("{i}.yaml"),
            &format!("server_name: x\n{body}"),
        );
        assert_eq!(
            synapse_err(std::slice::from_ref(&path)),
            format!("{}: {expected}", path.display())
        );
    }
}

#[test]
fn synapse_type_error_in_a_later_file_names_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.yaml", "server_name: x\n");
    let b = write(dir.path(), "b.yaml", "allow_guest_access: \"hunter2\"\n");
    let err = synapse_err(&[a, b.clone()]);
    assert_eq!(
        err,
        format!(
            "{}: `allow_guest_access`: expected a boolean, found a string",
            b.display()
        )
    );
    assert!(!err.contains("hunter2"), "values are never quoted");
}

#[test]
fn synapse_sso_sections_follow_synapse_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "h.yaml",
        "server_name: x\n\
         cas_config: {enabled: false, server_url: u}\n\
         saml2_config: {enabled: true}\n\
         jwt_config: {secret: s, algorithm: HS256}\n",
    );
    let c = load_synapse_with_env(&[path], &no_env).unwrap();
    assert!(!c.cas_enabled, "explicitly disabled");
    assert!(
        !c.saml2_enabled,
        "no sp_config / config_path: Synapse leaves SAML off"
    );
    assert!(!c.jwt_enabled, "jwt_config.enabled defaults to false");
}

#[test]
fn synapse_legacy_oidc_config_needs_issuer_and_client_id() {
    let dir = tempfile::tempdir().unwrap();
    let partial = write(
        dir.path(),
        "a.yaml",
        "server_name: x\noidc_config: {issuer: https://i}\n",
    );
    assert!(
        load_synapse_with_env(&[partial], &no_env)
            .unwrap()
            .oidc_providers
            .is_empty()
    );
    let with_id = write(
        dir.path(),
        "b.yaml",
        "server_name: x\noidc_config: {issuer: https://i, client_id: c, idp_id: corp}\n",
    );
    let c = load_synapse_with_env(&[with_id], &no_env).unwrap();
    assert_eq!(c.oidc_providers[0].auth_provider, "oidc-corp");
    assert_eq!(c.oidc_providers[0].idp_id.as_deref(), Some("corp"));
}

#[test]
fn synapse_multi_database_form_uses_the_main_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "h.yaml",
        "server_name: x\n\
         databases:\n\
         \x20 state_db: {name: psycopg2, data_stores: [state], args: {dbname: state}}\n\
         \x20 main_db: {name: psycopg2, data_stores: [main], args: {dbname: main}}\n",
    );
    let c = load_synapse_with_env(&[path], &no_env).unwrap();
    assert_eq!(c.database.unwrap().dbname.as_deref(), Some("main"));
}

#[test]
fn synapse_later_null_section_switches_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(
        dir.path(),
        "a.yaml",
        "server_name: x\ncas_config: {server_url: u}\n",
    );
    let b = write(dir.path(), "b.yaml", "cas_config:\n");
    assert!(
        load_synapse_with_env(std::slice::from_ref(&a), &no_env)
            .unwrap()
            .cas_enabled
    );
    assert!(!load_synapse_with_env(&[a, b], &no_env).unwrap().cas_enabled);
}

#[test]
fn synapse_without_files() {
    assert_eq!(
        synapse_err(&[]),
        "no Synapse configuration file was given (use --synapse-config)"
    );
}

// ---------------------------------------------------------------------------------------------
// MAS

#[test]
fn mas_full_config() {
    let c = load_mas_with_env(&[mas("full.yaml")], &no_env).unwrap();
    let db = &c.database;
    assert_eq!(db.host.as_deref(), Some("mas-db.example.com"));
    assert_eq!(db.port, Some(5433));
    assert_eq!(db.user.as_deref(), Some("mas_user"));
    assert_eq!(secret(&db.password), Some("mas-db-secret"));
    assert_eq!(db.dbname.as_deref(), Some("mas"));
    assert_eq!(db.ssl_mode, SslMode::VerifyCa);
    assert_eq!(
        db.ssl_root_cert,
        Some(Pem::File("/etc/ssl/mas-root.pem".into()))
    );
    assert_eq!(
        db.ssl_cert,
        Some(Pem::Inline(Secret::new(
            "-----BEGIN CERTIFICATE-----\ninline\n-----END CERTIFICATE-----\n"
        )))
    );
    assert_eq!(
        db.ssl_key,
        Some(Pem::File("/etc/ssl/mas-client.key".into()))
    );
    assert_eq!(c.homeserver, "example.com");
    assert!(!c.passwords_enabled);
    assert_eq!(
        c.password_schemes,
        vec![
            PasswordScheme {
                version: 1,
                algorithm: "bcrypt".into(),
                cost: Some(10),
                secret: Some(Secret::new("pepper-secret")),
                unicode_normalization: true,
            },
            PasswordScheme {
                version: 2,
                algorithm: "argon2id".into(),
                cost: None,
                secret: None,
                unicode_normalization: false,
            },
        ]
    );
    assert_eq!(c.providers.len(), 2);
    assert_eq!(c.providers[0].id.to_string(), "01H8PKNWKKRPCBW4YGH1RWV279");
    assert_eq!(
        c.providers[0].synapse_idp_id.as_deref(),
        Some("oidc-github")
    );
    assert!(c.providers[0].enabled);
    assert_eq!(c.providers[0].issuer.as_deref(), Some("https://github.com"));
    assert!(!c.providers[1].enabled);
    assert_eq!(c.providers[1].synapse_idp_id, None);
    assert_eq!(c.captcha_service.as_deref(), Some("recaptcha_v2"));
    assert_eq!(c.tos_uri.as_deref(), Some("https://example.com/tos"));
    let debug = format!("{c:?}");
    assert!(!debug.contains("mas-db-secret") && !debug.contains("pepper-secret"));
}

fn assert_mas_defaults(c: &syn2mas::config::MasConfig) {
    assert_eq!(c.database, ConnectOptions::default());
    assert_eq!(c.homeserver, "localhost:8008");
    assert!(c.passwords_enabled);
    assert_eq!(
        c.password_schemes,
        vec![PasswordScheme {
            version: 1,
            algorithm: "argon2id".into(),
            cost: None,
            secret: None,
            unicode_normalization: false,
        }]
    );
    assert!(c.providers.is_empty());
    assert_eq!(c.captcha_service, None);
    assert_eq!(c.tos_uri, None);
}

#[test]
fn mas_empty_file_and_null_sections_give_defaults() {
    assert_mas_defaults(&load_mas_with_env(&[mas("empty.yaml")], &no_env).unwrap());
    assert_mas_defaults(&load_mas_with_env(&[mas("null-sections.yaml")], &no_env).unwrap());
}

#[test]
fn mas_deep_merge() {
    let c = load_mas_with_env(&[mas("base.yaml"), mas("override.yaml")], &no_env).unwrap();
    assert_eq!(c.database.host.as_deref(), Some("base-host"));
    assert_eq!(c.database.user.as_deref(), Some("mas"));
    assert_eq!(c.database.dbname.as_deref(), Some("mas"));
    assert_eq!(c.database.ssl_mode, SslMode::Disable);
    assert_eq!(c.homeserver, "override.example");
    assert_eq!(
        c.password_schemes
            .iter()
            .map(|s| (s.version, s.algorithm.as_str()))
            .collect::<Vec<_>>(),
        vec![(3, "pbkdf2")],
        "a later list replaces the earlier one"
    );
    assert_eq!(c.tos_uri.as_deref(), Some("https://base.example/tos"));
}

#[test]
fn mas_database_defaults_to_libpq_env() {
    let env = |name: &str| match name {
        "PGHOST" => Some("/run/pg".to_owned()),
        "PGPORT" => Some("6000".to_owned()),
        _ => None,
    };
    let c = load_mas_with_env(&[mas("empty.yaml")], &env).unwrap();
    assert_eq!(c.database.host.as_deref(), Some("/run/pg"));
    assert_eq!(c.database.port, Some(6000));
    assert_eq!(c.database.user, None);
}

#[test]
fn mas_socket_wins_over_host() {
    let c = load_mas_with_env(&[mas("socket.yaml")], &no_env).unwrap();
    assert_eq!(c.database.host.as_deref(), Some("/run/postgresql"));
    assert_eq!(c.database.user.as_deref(), Some("mas"));
}

#[test]
fn mas_bad_ulid() {
    let path = mas("bad-ulid.yaml");
    assert_eq!(
        mas_err(std::slice::from_ref(&path)),
        format!(
            "{}: `upstream_oauth2.providers[1].id`: `not-a-ulid` is not a valid ULID: invalid length",
            path.display()
        )
    );
}

#[test]
fn mas_duplicate_and_empty_schemes() {
    let dup = mas("duplicate-versions.yaml");
    assert_eq!(
        mas_err(std::slice::from_ref(&dup)),
        format!(
            "{}: `passwords.schemes[1].version`: version 1 is used by more than one password scheme",
            dup.display()
        )
    );
    let empty = mas("empty-schemes.yaml");
    assert_eq!(
        mas_err(std::slice::from_ref(&empty)),
        format!(
            "{}: `passwords.schemes`: at least one password scheme is required",
            empty.display()
        )
    );
}

#[test]
fn mas_uri_and_split_options_conflict() {
    let path = mas("uri-and-host.yaml");
    assert_eq!(
        mas_err(std::slice::from_ref(&path)),
        format!(
            "{}: `database`: `uri` must not be set together with `host`, `port`, `socket`, \
             `username`, `password`, `password_file` or `database`",
            path.display()
        )
    );
}

#[test]
fn mas_secret_file_keeps_its_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let pepper = write(dir.path(), "pepper", "the-pepper\n");
    let config = write(
        dir.path(),
        "config.yaml",
        &format!(
            "passwords:\n  schemes:\n    - version: 1\n      algorithm: bcrypt\n      secret_file: {}\n",
            pepper.display()
        ),
    );
    let c = load_mas_with_env(&[config], &no_env).unwrap();
    assert_eq!(secret(&c.password_schemes[0].secret), Some("the-pepper\n"));
}

#[test]
fn mas_secret_errors() {
    let dir = tempfile::tempdir().unwrap();
    let both = write(
        dir.path(),
        "both.yaml",
        "passwords:\n  schemes:\n    - version: 1\n      algorithm: bcrypt\n      secret: a\n      secret_file: /x\n",
    );
    assert_eq!(
        mas_err(std::slice::from_ref(&both)),
        format!(
            "{}: `passwords.schemes[0]`: only one of `secret` and `secret_file` may be set",
            both.display()
        )
    );
    let missing = write(
        dir.path(),
        "missing.yaml",
        "passwords:\n  schemes:\n    - version: 1\n      algorithm: bcrypt\n      secret_file: /nonexistent/pepper\n",
    );
    assert_eq!(
        mas_err(std::slice::from_ref(&missing)),
        format!(
            "{}: `passwords.schemes[0].secret_file`: cannot read /nonexistent/pepper: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn mas_wrong_types_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "passwords:\n  enabled: \"no\"\n",
            "`passwords.enabled`: expected a boolean, found a string",
        ),
        (
            "passwords:\n  schemes:\n    - version: 1\n      algorithm: md5\n",
            "`passwords.schemes[0].algorithm`: expected one of `bcrypt`, `argon2id`, `pbkdf2`, found `md5`",
        ),
        (
            "passwords:\n  schemes:\n    - algorithm: bcrypt\n",
            "`passwords.schemes[0].version`: is required",
        ),
        (
            "passwords:\n  schemes:\n    - version: 70000\n      algorithm: bcrypt\n",
            "`passwords.schemes[0].version`: expected an integer from 0 to 65535",
        ),
        (
            "database:\n  ssl_mode: maybe\n",
            "`database.ssl_mode`: expected one of disable, allow, prefer, require, verify-ca, verify-full",
        ),
        (
            "database:\n  ssl_ca: x\n  ssl_ca_file: /y\n",
            "`database`: only one of `ssl_ca` and `ssl_ca_file` may be set",
        ),
        (
            "database:\n  ssl_key_file: /k\n",
            "`database`: both a ssl_certificate and a ssl_key must be set at the same time or none of them",
        ),
        (
            "database:\n  password: a\n  password_file: /b\n",
            "`database`: only one of `password` and `password_file` may be set",
        ),
        (
            "database:\n  uri: \"postgresql://u:hunter2@h:port/db\"\n",
            "`database.uri`: the port in the database URI must be a number from 1 to 65535",
        ),
        (
            "upstream_oauth2:\n  providers:\n    - synapse_idp_id: oidc\n",
            "`upstream_oauth2.providers[0].id`: is required",
        ),
        (
            "matrix: [homeserver]\n",
            "`matrix`: expected a mapping, found a sequence",
        ),
    ];
    for (i, (body, expected)) in cases.into_iter().enumerate() {
        let path = write(dir.path(), &format!("{i}.yaml"), body);
        let err = mas_err(std::slice::from_ref(&path));
        assert_eq!(err, format!("{}: {expected}", path.display()));
        assert!(!err.contains("hunter2"));
    }
}

#[test]
fn mas_database_password_file_and_uri_with_tls_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "pw", "db-pass\n");
    let a = write(
        dir.path(),
        "a.yaml",
        &format!("database:\n  host: h\n  password_file: {}\n", pw.display()),
    );
    let c = load_mas_with_env(&[a], &no_env).unwrap();
    assert_eq!(secret(&c.database.password), Some("db-pass"));

    let b = write(
        dir.path(),
        "b.yaml",
        "database:\n  uri: postgresql://u:p%40ss@h/db?sslmode=require\n  ssl_mode: verify-full\n  ssl_ca: inline-ca\n",
    );
    let c = load_mas_with_env(&[b], &no_env).unwrap();
    assert_eq!(secret(&c.database.password), Some("p@ss"));
    assert_eq!(c.database.ssl_mode, SslMode::VerifyFull);
    assert_eq!(
        c.database.ssl_root_cert,
        Some(Pem::Inline(Secret::new("inline-ca")))
    );
}

#[test]
fn mas_syntax_error_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "c.yaml",
        "matrix:\n  homeserver: \"unterminated\n",
    );
    let err = load_mas_with_env(std::slice::from_ref(&path), &no_env).unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Syntax {
                line: 3,
                column: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{}: YAML syntax error at line 3, column 1: found unexpected end of stream, while \
             scanning a quoted scalar at line 2 column 15",
            path.display()
        )
    );
    assert_eq!(
        mas_err(&[PathBuf::from("/nonexistent/config.yaml")]),
        "cannot read /nonexistent/config.yaml: No such file or directory (os error 2)"
    );
}

// ---------------------------------------------------------------------------------------------
// Connections (local PostgreSQL on 127.0.0.1:5432, trust auth)

fn local(port: u16, ssl_mode: SslMode) -> ConnectOptions {
    ConnectOptions {
        host: Some("127.0.0.1".into()),
        port: Some(port),
        user: Some("postgres".into()),
        dbname: Some("postgres".into()),
        ssl_mode,
        ..Default::default()
    }
}

async fn connect(options: &ConnectOptions) -> Result<tokio_postgres::Client, String> {
    options
        .connect_with("MAS", &no_env)
        .await
        .map_err(|e| e.to_string())
}

/// Whether this session runs over TLS, asked of the server itself.
async fn uses_tls(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn server_ssl() -> (bool, String) {
    let client = connect(&local(5432, SslMode::Disable)).await.unwrap();
    let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    let cert: String = client
        .query_one("SHOW ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    (ssl == "on", cert)
}

#[tokio::test]
async fn connect_with_sslmode_disable() {
    let client = connect(&local(5432, SslMode::Disable)).await.unwrap();
    assert!(!uses_tls(&client).await);
    let app: String = client
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "syn2mas");
}

#[tokio::test]
async fn connect_with_sslmode_prefer_uses_tls_when_the_server_has_it() {
    let (ssl_on, _) = server_ssl().await;
    let client = connect(&local(5432, SslMode::Prefer)).await.unwrap();
    assert_eq!(uses_tls(&client).await, ssl_on);
}

#[tokio::test]
async fn connect_with_sslmode_require() {
    let (ssl_on, _) = server_ssl().await;
    let result = connect(&local(5432, SslMode::Require)).await;
    if ssl_on {
        assert!(uses_tls(&result.unwrap()).await);
    } else {
        assert_eq!(
            result.err().unwrap(),
            "cannot connect to the MAS database (host=127.0.0.1 port=5432 dbname=postgres user=postgres): error performing TLS handshake: server does not support TLS"
        );
    }
}

/// verify-ca / verify-full against the server's own certificate (Debian's snakeoil certificate
/// is self-signed for `localhost`): the chain verifies from 127.0.0.1, the name only from
/// `localhost`. Needs the server's TLS; without it only the refusal is checked.
#[tokio::test]
async fn connect_with_verified_tls() {
    let (ssl_on, cert_file) = server_ssl().await;
    let readable = std::fs::read(&cert_file).is_ok();
    let with_root = |host: &str, mode: SslMode| ConnectOptions {
        host: Some(host.into()),
        ssl_root_cert: Some(Pem::File(cert_file.clone().into())),
        ..local(5432, mode)
    };
    let verify_ca = connect(&with_root("127.0.0.1", SslMode::VerifyCa)).await;
    if !(ssl_on && readable) {
        assert!(verify_ca.is_err());
        return;
    }
    assert!(uses_tls(&verify_ca.unwrap()).await);
    let wrong_name = connect(&with_root("127.0.0.1", SslMode::VerifyFull))
        .await
        .expect_err("the certificate is not for 127.0.0.1");
    assert!(
        wrong_name.starts_with(
            "cannot connect to the MAS database (host=127.0.0.1 port=5432 dbname=postgres user=postgres): error performing TLS handshake: "
        ),
        "{wrong_name}"
    );
    let client = connect(&with_root("localhost", SslMode::VerifyFull))
        .await
        .unwrap();
    assert!(uses_tls(&client).await);
    // An empty trust store for the chain: a different (inline) root must be rejected.
    let other_root = ConnectOptions {
        ssl_root_cert: Some(Pem::Inline(Secret::new(OTHER_ROOT))),
        ..local(5432, SslMode::VerifyCa)
    };
    let err = connect(&other_root).await.err().unwrap();
    assert!(
        err.starts_with(
            "cannot connect to the MAS database (host=127.0.0.1 port=5432 dbname=postgres user=postgres): error performing TLS handshake: "
        ),
        "{err}"
    );
}

/// A client certificate and PKCS#8 key given inline are loaded and offered; the local server
/// does not ask for one, so the session simply works.
#[tokio::test]
async fn connect_with_an_inline_client_identity() {
    let (ssl_on, _) = server_ssl().await;
    let options = ConnectOptions {
        ssl_cert: Some(Pem::Inline(Secret::new(OTHER_ROOT))),
        ssl_key: Some(Pem::Inline(Secret::new(OTHER_KEY))),
        ..local(5432, SslMode::Require)
    };
    let result = connect(&options).await;
    assert_eq!(result.is_ok(), ssl_on, "{:?}", result.as_ref().err());
}

/// A self-signed certificate that did not sign the server's certificate.
const OTHER_ROOT: &str = include_str!("../fixtures/tls/other-root.pem");

/// The private key of `OTHER_ROOT` (PKCS#8), a throwaway made for these tests only.
const OTHER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgpj0V3xki1VfVJCyx
/VAbNCIbS7lWQD7B8M9YenjCJuShRANCAASml02BcsCvHrMHt9tveHZJaM3RLDkR
bCsbrYKbkCD8Qq8iOnLowI0mC2wicmfo2V60ebSHZ0NZacOaqENaTaJz
-----END PRIVATE KEY-----
";

#[tokio::test]
async fn connect_to_a_closed_port_names_the_target_and_side() {
    let err = local(1, SslMode::Prefer)
        .connect_with("Synapse", &no_env)
        .await
        .err()
        .unwrap();
    assert_eq!(err.side, "Synapse");
    assert_eq!(
        err.target,
        "host=127.0.0.1 port=1 dbname=postgres user=postgres"
    );
    assert_eq!(
        err.to_string(),
        "cannot connect to the Synapse database (host=127.0.0.1 port=1 dbname=postgres user=postgres): error connecting to server: Connection refused (os error 111)"
    );
}

#[tokio::test]
async fn connection_errors_never_contain_the_password() {
    const PASSWORD: &str = "Tr0ub4dor-syn2mas-pw";
    let options = ConnectOptions {
        password: Some(Secret::new(PASSWORD)),
        dbname: Some("syn2mas_no_such_db".into()),
        ..local(5432, SslMode::Disable)
    };
    assert!(!format!("{options:?}").contains(PASSWORD));
    let err = options
        .connect_with("MAS", &no_env)
        .await
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        "cannot connect to the MAS database (host=127.0.0.1 port=5432 dbname=syn2mas_no_such_db user=postgres): db error: FATAL: database \"syn2mas_no_such_db\" does not exist"
    );
    assert!(!err.contains(PASSWORD));
    let closed = ConnectOptions {
        port: Some(1),
        ..options.clone()
    };
    let err = closed.connect_with("MAS", &no_env).await.err().unwrap();
    assert!(!format!("{err} {err:?}").contains(PASSWORD));
}

#[tokio::test]
async fn connect_from_a_uri() {
    let options = ConnectOptions::from_uri(
        "postgresql://postgres:any%40pw@127.0.0.1:5432/postgres?sslmode=disable",
    )
    .unwrap();
    let client = connect(&options).await.unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn connect_over_the_unix_socket() {
    if !Path::new("/var/run/postgresql/.s.PGSQL.5432").exists() {
        // This machine's PostgreSQL has no socket there: nothing to connect to.
        return;
    }
    let options = ConnectOptions::from_uri(
        "postgresql://postgres@%2Fvar%2Frun%2Fpostgresql/postgres?sslmode=verify-full",
    )
    .unwrap();
    let client = connect(&options)
        .await
        .expect("sslmode is ignored on sockets");
    let addr: Option<String> = client
        .query_one("SELECT inet_client_addr()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(addr, None, "a unix-socket session has no client address");
}

/// A half-open connection must not keep a session (and its locks) for the kernel's default 2
/// hours: the server side of every syn2mas session probes after 30 s, every 10 s, 3 times.
#[tokio::test]
async fn sessions_have_short_tcp_keepalives() {
    let client = connect(&local(5432, SslMode::Disable)).await.unwrap();
    let row = client
        .query_one(
            "SELECT current_setting('tcp_keepalives_idle'), \
                    current_setting('tcp_keepalives_interval'), \
                    current_setting('tcp_keepalives_count')",
            &[],
        )
        .await
        .unwrap();
    let got: (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(got, ("30".into(), "10".into(), "3".into()));
}

#[tokio::test]
async fn connect_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let options = local(1, SslMode::Disable);
    let future = options.connect("MAS");
    assert_send(&future);
    assert!(future.await.is_err());
}

// A proxy in front of the real server that answers the TLS request itself, to test what
// `prefer` and `require` do with a server that refuses TLS or botches the handshake.

#[derive(Clone, Copy)]
enum Proxy {
    /// Answer `N` (no TLS), then relay the plain session.
    RefuseTls,
    /// Answer `S`, then send bytes that are not TLS and hang up.
    BotchTls,
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

async fn start_proxy(kind: Proxy) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(relay(client, kind));
        }
    });
    port
}

async fn relay(mut client: tokio::net::TcpStream, kind: Proxy) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = [0u8; 8];
    if client.read_exact(&mut head).await.is_err() {
        return;
    }
    let mut server = tokio::net::TcpStream::connect("127.0.0.1:5432")
        .await
        .unwrap();
    if head == SSL_REQUEST {
        match kind {
            Proxy::RefuseTls => client.write_all(b"N").await.unwrap(),
            Proxy::BotchTls => {
                let _ = client
                    .write_all(b"Sthis is not a TLS server hello\r\n")
                    .await;
                return;
            }
        }
    } else {
        server.write_all(&head).await.unwrap();
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

#[tokio::test]
async fn prefer_falls_back_to_plain_when_the_server_refuses_tls() {
    let port = start_proxy(Proxy::RefuseTls).await;
    let client = connect(&local(port, SslMode::Prefer)).await.unwrap();
    assert!(!uses_tls(&client).await);
    let err = connect(&local(port, SslMode::Require)).await.err().unwrap();
    assert_eq!(
        err,
        format!(
            "cannot connect to the MAS database (host=127.0.0.1 port={port} dbname=postgres user=postgres): error performing TLS handshake: server does not support TLS"
        )
    );
}

#[tokio::test]
async fn prefer_retries_plain_when_the_tls_handshake_fails() {
    let port = start_proxy(Proxy::BotchTls).await;
    let client = connect(&local(port, SslMode::Prefer)).await.unwrap();
    assert!(!uses_tls(&client).await);
    let err = connect(&local(port, SslMode::Require)).await.err().unwrap();
    assert!(
        err.starts_with(&format!(
            "cannot connect to the MAS database (host=127.0.0.1 port={port} dbname=postgres user=postgres): error performing TLS handshake: "
        )),
        "{err}"
    );
}
