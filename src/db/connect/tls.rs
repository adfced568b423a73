//! The TLS connector for each of libpq's `sslmode`s, and `prefer`'s retry in plain text.
//!
//! native-tls does the TLS and loads the certificates (a PEM bundle with
//! `Certificate::stack_from_pem`, a client identity with `Identity::from_pkcs8`); tokio-postgres
//! only knows `disable`, `prefer` and `require`, and no crate implements libpq's meaning of the
//! modes, which is what this module keeps:
//!
//! * `require` encrypts without checking the certificate, unless a root certificate is given:
//!   then it behaves as `verify-ca`;
//! * `verify-ca` checks the chain, `verify-full` also the host name;
//! * a given `sslrootcert` replaces the system's trust store (`system` names the system store);
//! * `prefer` retries in plain text when the TLS handshake fails after the server agreed to TLS
//!   (a server that refuses TLS is handled inside tokio-postgres);
//! * unix sockets never use TLS, whatever the mode.

use super::{ConnectOptions, Pem, SslMode, error_chain};
use native_tls::{Certificate, Identity, TlsConnector};
use std::error::Error as _;
use std::path::Path;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{Client, NoTls};

pub(super) enum Transport {
    Plain,
    Tls {
        mode: PgSslMode,
        connector: TlsConnector,
    },
}

/// libpq's meaning of each mode. Unix sockets never use TLS (libpq ignores `sslmode` there,
/// and the server refuses TLS on them).
pub(super) fn transport(options: &ConnectOptions, host: &str) -> Result<Transport, String> {
    if host.starts_with('/') {
        return Ok(Transport::Plain);
    }
    let has_root = options.ssl_root_cert.is_some();
    let (mode, verify_chain, verify_host) = match options.ssl_mode {
        SslMode::Disable => return Ok(Transport::Plain),
        SslMode::Prefer => (PgSslMode::Prefer, false, false),
        // libpq: `require` with a root certificate given behaves as `verify-ca`.
        SslMode::Require => (PgSslMode::Require, has_root, false),
        SslMode::VerifyCa => (PgSslMode::Require, true, false),
        SslMode::VerifyFull => (PgSslMode::Require, true, true),
    };
    let connector = cached_connector(options, verify_chain, verify_host)?;
    Ok(Transport::Tls { mode, connector })
}

/// Connects with the chosen transport. With `prefer`, a TLS handshake that fails after the
/// server agreed to TLS is retried in plain text, as libpq does (a server that *refuses* TLS is
/// handled inside tokio-postgres already).
pub(super) async fn open(
    config: &tokio_postgres::Config,
    transport: Transport,
    side: &'static str,
) -> Result<Client, tokio_postgres::Error> {
    let mut config = config.clone();
    let Transport::Tls { mode, connector } = transport else {
        config.ssl_mode(PgSslMode::Disable);
        return super::open(&config, NoTls, side).await;
    };
    config.ssl_mode(mode);
    let tls = postgres_native_tls::MakeTlsConnector::new(connector);
    match super::open(&config, tls, side).await {
        Err(error) if mode == PgSslMode::Prefer && is_tls_failure(&error) => {
            tracing::debug!(
                side,
                error = %error_chain(&error),
                "TLS failed with sslmode=prefer, retrying without TLS"
            );
            config.ssl_mode(PgSslMode::Disable);
            super::open(&config, NoTls, side).await
        }
        other => other,
    }
}

/// A failure inside the TLS library (as opposed to refusal, I/O or authentication).
fn is_tls_failure(error: &tokio_postgres::Error) -> bool {
    error
        .source()
        .is_some_and(|cause| cause.downcast_ref::<native_tls::Error>().is_some())
}

/// Building a connector loads and parses the system's CA bundle, which took more client
/// CPU than a whole migration's TLS traffic when every one of a run's sessions did it; the
/// sessions of one run share their settings, so each distinct setting is built once.
fn cached_connector(
    options: &ConnectOptions,
    verify_chain: bool,
    verify_host: bool,
) -> Result<TlsConnector, String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Key = (Option<Pem>, Option<Pem>, Option<Pem>, bool, bool);
    static CACHE: OnceLock<Mutex<HashMap<Key, TlsConnector>>> = OnceLock::new();
    let key: Key = (
        options.ssl_root_cert.clone(),
        options.ssl_cert.clone(),
        options.ssl_key.clone(),
        verify_chain,
        verify_host,
    );
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(c) = cache.lock().unwrap().get(&key) {
        return Ok(c.clone());
    }
    let built = connector(options, verify_chain, verify_host)?;
    cache.lock().unwrap().insert(key, built.clone());
    Ok(built)
}

fn connector(
    options: &ConnectOptions,
    verify_chain: bool,
    verify_host: bool,
) -> Result<TlsConnector, String> {
    let mut builder = TlsConnector::builder();
    builder
        .danger_accept_invalid_certs(!verify_chain)
        .danger_accept_invalid_hostnames(!verify_host);
    if verify_chain {
        add_roots(&mut builder, options.ssl_root_cert.as_ref())?;
    }
    if let Some(identity) = identity(options)? {
        builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| format!("cannot set up TLS: {e}"))
}

/// The given root certificates replace the system's trust store (libpq trusts only its
/// `sslrootcert`); with none given, or with libpq's special value `system`, the system store
/// is used.
fn add_roots(
    builder: &mut native_tls::TlsConnectorBuilder,
    root: Option<&Pem>,
) -> Result<(), String> {
    let Some(root) = root.filter(|r| **r != Pem::File("system".into())) else {
        return Ok(());
    };
    let what = describe(root, "root certificate");
    for certificate in certificates(&read(root, &what)?, &what)? {
        builder.add_root_certificate(certificate);
    }
    builder.disable_built_in_roots(true);
    Ok(())
}

/// The client certificate and key, which must come together. The key must be PKCS#8: that
/// is what native-tls can load, and the error says how to convert another format.
fn identity(options: &ConnectOptions) -> Result<Option<Identity>, String> {
    let (cert, key) = match (&options.ssl_cert, &options.ssl_key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err("a TLS client certificate and its key must be given together".to_owned());
        }
    };
    let cert_what = describe(cert, "client certificate");
    let key_what = describe(key, "client key");
    let cert = read(cert, &cert_what)?;
    let key = read(key, &key_what)?;
    let key = key.trim_ascii_start();
    if !key.starts_with(b"-----BEGIN PRIVATE KEY-----") {
        return Err(format!(
            "the {key_what} must be an unencrypted PKCS#8 PEM key (`-----BEGIN PRIVATE \
             KEY-----`); convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`"
        ));
    }
    Identity::from_pkcs8(&cert, key)
        .map(Some)
        .map_err(|e| format!("cannot load the {cert_what} and {key_what}: {e}"))
}

/// How a PEM source is named in messages: its path, never its content.
fn describe(pem: &Pem, what: &str) -> String {
    match pem {
        Pem::File(path) => format!("{what} file {}", path.display()),
        Pem::Inline(_) => format!("inline {what}"),
    }
}

fn read(pem: &Pem, what: &str) -> Result<Vec<u8>, String> {
    match pem {
        Pem::File(path) => read_file(path, what),
        Pem::Inline(text) => Ok(text.expose().as_bytes().to_vec()),
    }
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    crate::config::read_file_capped(path).map_err(|e| format!("cannot read the {what}: {e}"))
}

/// Every certificate of a PEM bundle (native-tls's `from_pem` reads only the first one). Text
/// around and between the certificates, and other PEM blocks, are skipped.
pub(super) fn certificates(pem: &[u8], what: &str) -> Result<Vec<Certificate>, String> {
    let found = Certificate::stack_from_pem(pem)
        .map_err(|e| format!("the {what} has an invalid certificate: {e}"))?;
    if found.is_empty() {
        return Err(format!("the {what} contains no PEM certificate"));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    /// A self-signed throwaway certificate, shared with `tests/config.rs`.
    const CERT: &str = include_str!("../../../fixtures/tls/other-root.pem");

    fn refusal(options: ConnectOptions) -> String {
        match transport(&options, "h") {
            Err(err) => err,
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn tls_modes_and_certificate_errors() {
        let socket = ConnectOptions {
            ssl_mode: SslMode::VerifyFull,
            ..Default::default()
        };
        assert!(matches!(
            transport(&socket, "/var/run/postgresql"),
            Ok(Transport::Plain)
        ));
        let disabled = ConnectOptions {
            ssl_mode: SslMode::Disable,
            ..Default::default()
        };
        assert!(matches!(transport(&disabled, "h"), Ok(Transport::Plain)));
        assert_eq!(
            refusal(ConnectOptions {
                ssl_mode: SslMode::VerifyCa,
                ssl_root_cert: Some(Pem::File("/nonexistent/ca.pem".into())),
                ..Default::default()
            }),
            "cannot read the root certificate file /nonexistent/ca.pem: No such file or directory (os error 2)"
        );
        assert_eq!(
            refusal(ConnectOptions {
                ssl_mode: SslMode::Require,
                ssl_cert: Some(Pem::Inline(Secret::new("x"))),
                ..Default::default()
            }),
            "a TLS client certificate and its key must be given together"
        );
        assert_eq!(
            refusal(ConnectOptions {
                ssl_mode: SslMode::Require,
                ssl_cert: Some(Pem::Inline(Secret::new("cert"))),
                ssl_key: Some(Pem::Inline(Secret::new(
                    "-----BEGIN RSA PRIVATE KEY-----\n"
                ))),
                ..Default::default()
            }),
            "the inline client key must be an unencrypted PKCS#8 PEM key (`-----BEGIN PRIVATE KEY-----`); convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`"
        );
        assert_eq!(
            certificates(b"nothing here", "root certificate").err(),
            Some("the root certificate contains no PEM certificate".to_owned())
        );
    }

    #[test]
    fn pem_bundles() {
        let bundle = format!(
            "# a comment\n{CERT}between\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{CERT}"
        );
        let found = certificates(bundle.as_bytes(), "root certificate").unwrap();
        assert_eq!(found.len(), 2);
        let truncated = &CERT[..CERT.len() / 2];
        let err = certificates(truncated.as_bytes(), "root certificate")
            .err()
            .unwrap();
        assert!(
            err.starts_with("the root certificate has an invalid certificate: "),
            "{err}"
        );
        assert_eq!(
            certificates(b"\xff\xfe", "root certificate").err(),
            Some("the root certificate contains no PEM certificate".to_owned())
        );
    }
}
