//! Checks that need only the two configuration files: Synapse features MAS replaces or does not
//! support, and Synapse settings MAS must mirror so migrated passwords keep working.
//!
//! These are upstream's config checks with the same severities, plus `E-unicode-normalization`
//! (MAS #4598: without it some non-ASCII passwords stop working after the migration).

use super::ids;
use super::report::Finding;
use crate::config::{MasConfig, PasswordEnabled, PasswordScheme, SynapseConfig};

/// The MAS password scheme version migrated hashes are stored under.
const MIGRATED_PASSWORD_VERSION: u16 = 1;

/// All config findings, warnings and errors in a fixed order.
pub fn check(synapse: &SynapseConfig, mas: &MasConfig) -> Vec<Finding> {
    let mut out = synapse_only(synapse);
    out.extend(password_scheme(synapse, mas));
    out.extend(synapse_vs_mas(synapse, mas));
    out
}

fn synapse_only(s: &SynapseConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    if s.enable_registration {
        out.push(Finding::new(
            ids::REGISTRATION,
            "Synapse has `enable_registration: true`; after the migration registration is MAS's job",
            1,
            "set `enable_registration: false` in homeserver.yaml before Synapse is started with MAS, \
             and configure registration in MAS (`account.password_registration_enabled`) if wanted",
        ));
    }
    if s.user_consent {
        out.push(Finding::new(
            ids::USER_CONSENT,
            "Synapse has a `user_consent` section; MAS does not track Synapse's consent",
            1,
            "remove `user_consent` from homeserver.yaml after the migration (MAS shows terms via `branding.tos_uri`)",
        ));
    }
    for (enabled, id, name) in [
        (s.cas_enabled, ids::CAS, "CAS"),
        (s.saml2_enabled, ids::SAML2, "SAML2"),
        (s.jwt_enabled, ids::JWT, "JWT"),
    ] {
        if enabled {
            out.push(sso_warning(id, name));
        }
    }
    if s.password_enabled != PasswordEnabled::False && !s.password_localdb_enabled {
        out.push(sso_warning(
            ids::PASSWORD_PLUGIN,
            "a non-standard password provider plugin (`localdb_enabled: false`)",
        ));
    }
    out.extend(synapse_only_errors(s));
    out
}

fn sso_warning(id: &str, what: &str) -> Finding {
    Finding::new(
        id,
        format!("Synapse has {what} login enabled; MAS does not support it directly"),
        1,
        "map it by hand to an upstream OAuth 2.0 / OIDC provider in MAS's `upstream_oauth2` section \
         (its users' external ids are not migrated unless a MAS provider has a matching `synapse_idp_id`)",
    )
}

fn synapse_only_errors(s: &SynapseConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    if s.enable_3pid_changes == Some(true) {
        out.push(Finding::new(
            ids::THREEPID_CHANGES,
            "Synapse has `enable_3pid_changes: true`; with MAS, email addresses are managed by MAS",
            1,
            "remove `enable_3pid_changes` from homeserver.yaml (or set it to false)",
        ));
    }
    if s.login_via_existing_session_enabled {
        out.push(Finding::new(
            ids::LOGIN_VIA_EXISTING_SESSION,
            "Synapse has `login_via_existing_session.enabled: true`, which MAS does not support",
            1,
            "set `login_via_existing_session.enabled: false` in homeserver.yaml",
        ));
    }
    out
}

/// The v1 scheme must verify Synapse's hashes: bcrypt, same pepper, NFKC normalisation.
fn password_scheme(s: &SynapseConfig, m: &MasConfig) -> Vec<Finding> {
    let Some(v1) = m
        .password_schemes
        .iter()
        .find(|p| p.version == MIGRATED_PASSWORD_VERSION)
    else {
        return vec![Finding::new(
            ids::PASSWORD_SCHEME_MISSING,
            "MAS has no password hashing scheme with `version: 1`; migrated Synapse hashes are stored as version 1",
            1,
            "add to MAS's `passwords.schemes` an entry `{version: 1, algorithm: bcrypt, unicode_normalization: true}` \
             with `secret` set to Synapse's `password_config.pepper` (if any)",
        )];
    };
    let mut out = Vec::new();
    if v1.algorithm != "bcrypt" {
        out.push(Finding::new(
            ids::PASSWORD_SCHEME_ALGORITHM,
            format!(
                "MAS password scheme version 1 uses `{}`, but Synapse's hashes are bcrypt",
                v1.algorithm
            ),
            1,
            "set `algorithm: bcrypt` on the version 1 scheme (add a newer version with your preferred \
             algorithm; MAS upgrades hashes on login)",
        ));
    }
    if let Some(f) = pepper_mismatch(s, v1) {
        out.push(f);
    }
    if !v1.unicode_normalization {
        out.push(Finding::new(
            ids::UNICODE_NORMALIZATION,
            "MAS password scheme version 1 lacks `unicode_normalization: true`; Synapse hashed \
             NFKC-normalised passwords, so users with some non-ASCII passwords could not log in (MAS #4598)",
            1,
            "set `unicode_normalization: true` on the version 1 scheme",
        ));
    }
    out
}

/// Compares the v1 secret with the pepper byte for byte without ever showing either.
fn pepper_mismatch(s: &SynapseConfig, v1: &PasswordScheme) -> Option<Finding> {
    let pepper = s.password_pepper.as_ref().map(|p| p.expose());
    let secret = v1.secret.as_ref().map(|p| p.expose());
    if pepper == secret {
        return None;
    }
    let detail = match (pepper, secret) {
        (Some(_), None) => {
            "Synapse has a `password_config.pepper` but the MAS v1 scheme has no `secret`"
        }
        (None, Some(_)) => {
            "the MAS v1 scheme has a `secret` but Synapse has no `password_config.pepper`"
        }
        (Some(p), Some(s)) if s.strip_suffix('\n') == Some(p) => {
            "the MAS v1 `secret` equals Synapse's pepper plus a trailing newline (from `secret_file`?)"
        }
        _ => "the MAS v1 scheme's `secret` is not byte-for-byte Synapse's `password_config.pepper`",
    };
    Some(Finding::new(
        ids::PEPPER_MISMATCH,
        format!("{detail}; every migrated password would fail to verify"),
        1,
        "make the version 1 scheme's `secret` exactly Synapse's `password_config.pepper` \
         (or both absent; a `secret_file` must not end with a newline)",
    ))
}

fn synapse_vs_mas(s: &SynapseConfig, m: &MasConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    if s.allow_guest_access {
        out.push(Finding::new(
            ids::GUEST_ACCESS,
            "Synapse has `allow_guest_access: true`; MAS does not support guest access (MAS #1445)",
            1,
            "set `allow_guest_access: false` in homeserver.yaml",
        ));
    }
    if s.server_name != m.homeserver {
        out.push(Finding::new(
            ids::SERVER_NAME_CONFIG,
            format!(
                "Synapse `server_name` is `{}` but MAS `matrix.homeserver` is `{}`",
                s.server_name, m.homeserver
            ),
            1,
            "set MAS's `matrix.homeserver` to Synapse's `server_name` exactly",
        ));
    }
    if s.enable_registration_captcha && m.captcha_service.is_none() {
        out.push(Finding::new(
            ids::CAPTCHA,
            "Synapse requires a CAPTCHA for registration but MAS has no `captcha` service",
            1,
            "configure MAS's `captcha` section (Synapse's reCAPTCHA keys can be reused)",
        ));
    }
    if s.user_consent && m.tos_uri.is_none() {
        out.push(Finding::new(
            ids::TOS_URI,
            "Synapse asks users to consent to terms but MAS has no `branding.tos_uri`",
            1,
            "set MAS's `branding.tos_uri` to your terms of service page",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::report::Severity;
    use crate::secret::Secret;

    fn good_pair() -> (SynapseConfig, MasConfig) {
        let synapse = SynapseConfig {
            server_name: "example.com".into(),
            password_localdb_enabled: true,
            password_pepper: Some(Secret::new("pep")),
            ..SynapseConfig::default()
        };
        let mas = MasConfig {
            homeserver: "example.com".into(),
            passwords_enabled: true,
            password_schemes: vec![PasswordScheme {
                version: 1,
                algorithm: "bcrypt".into(),
                cost: Some(12),
                secret: Some(Secret::new("pep")),
                unicode_normalization: true,
            }],
            ..MasConfig::default()
        };
        (synapse, mas)
    }

    fn ids_of(findings: &[Finding]) -> Vec<&str> {
        findings.iter().map(|f| f.id.as_str()).collect()
    }

    /// Applies `change` to a clean pair and returns the ids the checks report.
    fn ids_after(change: impl FnOnce(&mut SynapseConfig, &mut MasConfig)) -> Vec<String> {
        let (mut s, mut m) = good_pair();
        change(&mut s, &mut m);
        check(&s, &m).into_iter().map(|f| f.id).collect()
    }

    #[test]
    fn clean_configs_report_nothing() {
        let (s, m) = good_pair();
        assert!(check(&s, &m).is_empty());
    }

    type Change = fn(&mut SynapseConfig, &mut MasConfig);

    #[test]
    fn each_synapse_setting_fires_its_own_id() {
        let cases: Vec<(&str, Change)> = vec![
            (ids::REGISTRATION, |s, _| s.enable_registration = true),
            (ids::CAS, |s, _| s.cas_enabled = true),
            (ids::SAML2, |s, _| s.saml2_enabled = true),
            (ids::JWT, |s, _| s.jwt_enabled = true),
            (ids::PASSWORD_PLUGIN, |s, _| {
                s.password_localdb_enabled = false
            }),
            (ids::THREEPID_CHANGES, |s, _| {
                s.enable_3pid_changes = Some(true)
            }),
            (ids::LOGIN_VIA_EXISTING_SESSION, |s, _| {
                s.login_via_existing_session_enabled = true
            }),
            (ids::GUEST_ACCESS, |s, _| s.allow_guest_access = true),
            (ids::SERVER_NAME_CONFIG, |_, m| {
                m.homeserver = "other.org".into()
            }),
            (ids::PASSWORD_SCHEME_MISSING, |_, m| {
                m.password_schemes[0].version = 2
            }),
            (ids::PASSWORD_SCHEME_ALGORITHM, |_, m| {
                m.password_schemes[0].algorithm = "argon2id".into()
            }),
            (ids::UNICODE_NORMALIZATION, |_, m| {
                m.password_schemes[0].unicode_normalization = false
            }),
            (ids::PEPPER_MISMATCH, |_, m| {
                m.password_schemes[0].secret = None
            }),
            (ids::CAPTCHA, |s, _| s.enable_registration_captcha = true),
        ];
        for (id, change) in cases {
            assert_eq!(ids_after(change), vec![id.to_owned()], "{id}");
        }
    }

    #[test]
    fn user_consent_warns_twice_without_tos_uri_and_once_with() {
        assert_eq!(
            ids_after(|s, _| s.user_consent = true),
            vec![ids::USER_CONSENT, ids::TOS_URI]
        );
        assert_eq!(
            ids_after(|s, m| {
                s.user_consent = true;
                m.tos_uri = Some("https://example.com/tos".into());
            }),
            vec![ids::USER_CONSENT]
        );
    }

    #[test]
    fn explicit_false_3pid_changes_and_disabled_passwords_are_fine() {
        assert!(ids_after(|s, _| s.enable_3pid_changes = Some(false)).is_empty());
        assert!(
            ids_after(|s, _| {
                s.password_enabled = PasswordEnabled::False;
                s.password_localdb_enabled = false;
            })
            .is_empty()
        );
    }

    #[test]
    fn captcha_is_fine_when_mas_has_one() {
        assert!(
            ids_after(|s, m| {
                s.enable_registration_captcha = true;
                m.captcha_service = Some("recaptcha_v2".into());
            })
            .is_empty()
        );
    }

    #[test]
    fn pepper_comparison_is_exact_and_never_leaks() {
        let (mut s, mut m) = good_pair();
        s.password_pepper = None;
        m.password_schemes[0].secret = None;
        assert!(check(&s, &m).is_empty(), "absent == absent");

        s.password_pepper = Some(Secret::new(""));
        assert_eq!(ids_of(&check(&s, &m)), vec![ids::PEPPER_MISMATCH]);

        s.password_pepper = Some(Secret::new("s3cr3t-pepper"));
        m.password_schemes[0].secret = Some(Secret::new("s3cr3t-pepper\n"));
        let f = check(&s, &m);
        assert_eq!(ids_of(&f), vec![ids::PEPPER_MISMATCH]);
        assert!(f[0].problem.contains("trailing newline"));
        let text = format!("{f:?}");
        assert!(!text.contains("s3cr3t"), "pepper leaked: {text}");
    }

    #[test]
    fn server_name_message_shows_both_values_and_is_an_error() {
        let (s, mut m) = good_pair();
        m.homeserver = "matrix.example.com".into();
        let f = check(&s, &m);
        assert_eq!(f[0].severity, Severity::Error);
        assert!(f[0].problem.contains("`example.com`"));
        assert!(f[0].problem.contains("`matrix.example.com`"));
    }

    #[test]
    fn every_config_id_is_in_the_catalogue() {
        let (mut s, mut m) = good_pair();
        s.enable_registration = true;
        s.user_consent = true;
        s.cas_enabled = true;
        s.allow_guest_access = true;
        m.password_schemes[0].algorithm = "pbkdf2".into();
        for f in check(&s, &m) {
            assert!(ids::is_known(&f.id), "{}", f.id);
        }
    }
}
