//! Auth providers: every `auth_provider` value in Synapse's `user_external_ids`, where it comes
//! from (Synapse's `oidc` / `oidc-<idp_id>` rule) and which MAS provider takes it.
//!
//! `migrate` maps by exact string: MAS provider `synapse_idp_id` == `auth_provider`. Issuers are
//! only used here to suggest what to write, because operators expected issuer matching and were
//! stuck when it did not happen (MAS #4597).
//!
//! ~520 lines, a third of them tests: the analysis and the wording of its seven findings are
//! one decision table, read best in one place.

use super::ids;
use super::report::{
    Finding, MasProviderInfo, MatchedBy, ProviderMapping, ProviderStatus, SynapseProviderInfo,
};
use crate::config::{MasConfig, SynapseConfig, UpstreamProvider};
use std::collections::HashSet;

/// The value an earlier MSC3861/MAS setup leaves in `user_external_ids`.
pub const OAUTH_DELEGATED: &str = "oauth-delegated";

pub struct ProviderInputs<'a> {
    pub synapse: &'a SynapseConfig,
    pub mas: &'a MasConfig,
    /// Ids (UUID text) in MAS's `upstream_oauth_providers`; `None` if unreadable.
    pub in_database: Option<&'a HashSet<String>>,
    pub ignore_missing_auth_providers: bool,
}

/// Result of [`analyse`].
#[derive(Debug, Default)]
pub struct ProviderAnalysis {
    /// Each finding with the `auth_provider` it is about (for fetching example users).
    pub findings: Vec<(String, Finding)>,
    pub mappings: Vec<ProviderMapping>,
}

/// Findings and the mapping table for `(auth_provider, rows)` pairs.
pub fn analyse(found: &[(String, u64)], inputs: &ProviderInputs<'_>) -> ProviderAnalysis {
    let mut out = ProviderAnalysis::default();
    for (auth_provider, rows) in found {
        let (mapping, finding) = one(auth_provider, *rows, inputs);
        out.findings
            .extend(finding.map(|f| (auth_provider.clone(), f)));
        out.mappings.push(mapping);
    }
    out
}

fn one(
    auth_provider: &str,
    rows: u64,
    inputs: &ProviderInputs<'_>,
) -> (ProviderMapping, Option<Finding>) {
    let synapse = inputs
        .synapse
        .oidc_providers
        .iter()
        .find(|p| p.auth_provider == auth_provider)
        .map(|p| SynapseProviderInfo {
            idp_id: p.idp_id.clone(),
            issuer: p.issuer.clone(),
        });
    let mut mapping = ProviderMapping {
        auth_provider: auth_provider.to_owned(),
        rows,
        synapse,
        mas: None,
        status: ProviderStatus::Mapped,
        advice: String::new(),
    };
    let finding = if auth_provider == OAUTH_DELEGATED {
        oauth_delegated(&mut mapping)
    } else {
        let claimed: Vec<&UpstreamProvider> = inputs
            .mas
            .providers
            .iter()
            .filter(|p| p.synapse_idp_id.as_deref() == Some(auth_provider))
            .collect();
        match claimed.as_slice() {
            [] => unmapped(&mut mapping, inputs),
            [p] => mapped(&mut mapping, p, inputs.in_database),
            many => ambiguous(&mut mapping, many, inputs.in_database),
        }
    };
    (mapping, finding)
}

fn mas_info(
    p: &UpstreamProvider,
    matched_by: MatchedBy,
    in_database: Option<&HashSet<String>>,
) -> MasProviderInfo {
    MasProviderInfo {
        id: p.id.to_string(),
        synapse_idp_id: p.synapse_idp_id.clone(),
        issuer: p.issuer.clone(),
        enabled: p.enabled,
        in_database: in_database.map(|ids| ids.contains(&ulid_as_uuid(p.id))),
        matched_by,
    }
}

/// MAS stores a provider's ULID `id` in a `uuid` column: same 128 bits, UUID text form.
pub fn ulid_as_uuid(id: ulid::Ulid) -> String {
    let h = format!("{:032x}", id.0);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn oauth_delegated(m: &mut ProviderMapping) -> Option<Finding> {
    m.status = ProviderStatus::OauthDelegated;
    let delete = "DELETE FROM user_external_ids WHERE auth_provider = 'oauth-delegated';";
    m.advice = format!("run on Synapse's database: {delete}");
    Some(
        Finding::new(
            ids::OAUTH_DELEGATED,
            "`user_external_ids` has rows with auth_provider `oauth-delegated`, left by an earlier \
             MAS (MSC3861) setup; they cannot be migrated",
            m.rows,
            format!("run on Synapse's database, then check again: {delete}"),
        )
        .in_table("user_external_ids"),
    )
}

fn mapped(
    m: &mut ProviderMapping,
    p: &UpstreamProvider,
    in_database: Option<&HashSet<String>>,
) -> Option<Finding> {
    let info = mas_info(p, MatchedBy::SynapseIdpId, in_database);
    let not_in_db = info.in_database == Some(false);
    m.mas = Some(info);
    if !p.enabled {
        m.status = ProviderStatus::Disabled;
        m.advice = format!("set `enabled: true` on MAS provider {}", p.id);
        return Some(disabled(m, p));
    }
    if not_in_db {
        m.status = ProviderStatus::NotInDatabase;
        m.advice = format!(
            "run `mas-cli config sync` so MAS's database has provider {}",
            p.id
        );
        return Some(not_in_database(m, p));
    }
    m.advice = format!("ok: migrate links these rows to MAS provider {}", p.id);
    None
}

fn disabled(m: &ProviderMapping, p: &UpstreamProvider) -> Finding {
    Finding::new(
        ids::PROVIDER_DISABLED,
        format!(
            "auth_provider `{}` maps (synapse_idp_id) to MAS provider {}, which is `enabled: false`; \
             disabled providers are not synced into MAS's database, so the links cannot be written",
            m.auth_provider, p.id
        ),
        m.rows,
        format!(
            "set `enabled: true` on MAS provider {} and run `mas-cli config sync`, or move its \
             `synapse_idp_id` to the provider that should take these users",
            p.id
        ),
    )
    .in_table("user_external_ids")
}

fn not_in_database(m: &ProviderMapping, p: &UpstreamProvider) -> Finding {
    Finding::new(
        ids::PROVIDER_NOT_IN_DB,
        format!(
            "auth_provider `{}` maps to MAS provider {}, which is not in MAS's \
             `upstream_oauth_providers` table yet",
            m.auth_provider, p.id
        ),
        m.rows,
        "run `mas-cli config sync` against the MAS database, then check again",
    )
    .in_table("user_external_ids")
}

fn ambiguous(
    m: &mut ProviderMapping,
    many: &[&UpstreamProvider],
    in_database: Option<&HashSet<String>>,
) -> Option<Finding> {
    let list: Vec<String> = many.iter().map(|p| p.id.to_string()).collect();
    m.mas = Some(mas_info(many[0], MatchedBy::SynapseIdpId, in_database));
    m.status = ProviderStatus::Ambiguous;
    m.advice = format!(
        "keep `synapse_idp_id: \"{}\"` on exactly one of {}",
        m.auth_provider,
        list.join(", ")
    );
    Some(
        Finding::new(
            ids::PROVIDER_AMBIGUOUS,
            format!(
                "several MAS providers have `synapse_idp_id: \"{}\"`: {}",
                m.auth_provider,
                list.join(", ")
            ),
            m.rows,
            m.advice.clone(),
        )
        .with_examples(list)
        .in_table("user_external_ids"),
    )
}

/// No MAS provider claims the value: unknown to Synapse too → unknown-provider (a warning with
/// the flag, since migrate then skips the rows); known to Synapse → unmapped, with a suggestion.
fn unmapped(m: &mut ProviderMapping, inputs: &ProviderInputs<'_>) -> Option<Finding> {
    let Some(syn) = m.synapse.clone() else {
        m.status = ProviderStatus::Unknown;
        return Some(unknown(m, inputs.ignore_missing_auth_providers));
    };
    m.status = ProviderStatus::Unmapped;
    let candidate = suggest(&syn, &inputs.mas.providers);
    m.advice = match candidate {
        Some((p, MatchedBy::Issuer)) => format!(
            "add `synapse_idp_id: \"{}\"` to MAS provider {} (its issuer matches)",
            m.auth_provider, p.id
        ),
        Some((p, _)) => format!(
            "change MAS provider {}'s `synapse_idp_id` from `{}` to `{}` (Synapse stores the `oidc-` prefix)",
            p.id,
            p.synapse_idp_id.as_deref().unwrap_or(""),
            m.auth_provider
        ),
        None => format!(
            "add a MAS provider for issuer {} with `synapse_idp_id: \"{}\"` \
             (`mas-cli config generate --synapse-config` can draft it)",
            syn.issuer.as_deref().unwrap_or("<unspecified>"),
            m.auth_provider
        ),
    };
    m.mas = candidate.map(|(p, how)| mas_info(p, how, inputs.in_database));
    Some(unmapped_finding(m, &syn))
}

/// A MAS provider the operator probably meant: same issuer, or `synapse_idp_id` set to the bare
/// `idp_id` without Synapse's `oidc-` prefix (the most common slip).
fn suggest<'a>(
    syn: &SynapseProviderInfo,
    providers: &'a [UpstreamProvider],
) -> Option<(&'a UpstreamProvider, MatchedBy)> {
    let norm = |s: &str| s.trim_end_matches('/').to_owned();
    let bare = syn.idp_id.as_deref();
    if let Some(p) = providers
        .iter()
        .find(|p| bare.is_some() && p.synapse_idp_id.as_deref() == bare)
    {
        return Some((p, MatchedBy::BareIdpId));
    }
    let issuer = syn.issuer.as_deref().map(norm)?;
    providers
        .iter()
        .find(|p| p.issuer.as_deref().map(norm).as_ref() == Some(&issuer))
        .map(|p| (p, MatchedBy::Issuer))
}

fn unmapped_finding(m: &ProviderMapping, syn: &SynapseProviderInfo) -> Finding {
    Finding::new(
        ids::UNMAPPED_PROVIDER,
        format!(
            "auth_provider `{}` (Synapse OIDC provider, issuer {}) has no MAS provider; MAS matches \
             by `synapse_idp_id`, which must equal the Synapse auth_provider string exactly \
             (`oidc-<idp_id>`, or `oidc` without idp_id), not by issuer",
            m.auth_provider,
            syn.issuer.as_deref().unwrap_or("<unspecified>")
        ),
        m.rows,
        m.advice.clone(),
    )
    .in_table("user_external_ids")
}

fn unknown(m: &mut ProviderMapping, ignored: bool) -> Finding {
    let problem = format!(
        "auth_provider `{}` is produced by no OIDC provider in Synapse's config (SAML, CAS or a \
         removed provider?) and no MAS provider has it as `synapse_idp_id`",
        m.auth_provider
    );
    if ignored {
        m.advice =
            "skipped by migrate (--ignore-missing-auth-providers): these users lose this link"
                .into();
        Finding::new(
            ids::UNKNOWN_PROVIDER_IGNORED,
            format!("{problem}; with --ignore-missing-auth-providers, migrate skips these rows"),
            m.rows,
            format!(
                "nothing is required if dropping these links is intended; otherwise set \
                 `synapse_idp_id: \"{}\"` on the MAS provider that replaces it",
                m.auth_provider
            ),
        )
    } else {
        m.advice = format!(
            "set `synapse_idp_id: \"{}\"` on the MAS provider that replaces it, or pass \
             --ignore-missing-auth-providers to skip these rows",
            m.auth_provider
        );
        Finding::new(ids::UNKNOWN_PROVIDER, problem, m.rows, m.advice.clone())
    }
    .in_table("user_external_ids")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::report::Severity;
    use crate::config::SynapseOidcProvider;

    const GITHUB: &str = "01J0000000000000000000GH00";

    fn synapse() -> SynapseConfig {
        SynapseConfig {
            server_name: "example.com".into(),
            oidc_providers: vec![SynapseOidcProvider {
                auth_provider: "oidc-github".into(),
                idp_id: Some("github".into()),
                issuer: Some("https://github.com/".into()),
            }],
            ..SynapseConfig::default()
        }
    }

    fn mas(synapse_idp_id: Option<&str>, enabled: bool) -> MasConfig {
        MasConfig {
            providers: vec![UpstreamProvider {
                id: GITHUB.parse().unwrap(),
                synapse_idp_id: synapse_idp_id.map(str::to_owned),
                enabled,
                issuer: Some("https://github.com".into()),
            }],
            ..MasConfig::default()
        }
    }

    fn run(
        found: &[(&str, u64)],
        s: &SynapseConfig,
        m: &MasConfig,
        db: Option<&HashSet<String>>,
        ignore: bool,
    ) -> (Vec<Finding>, Vec<ProviderMapping>) {
        let found: Vec<(String, u64)> = found.iter().map(|(a, n)| ((*a).into(), *n)).collect();
        let a = analyse(
            &found,
            &ProviderInputs {
                synapse: s,
                mas: m,
                in_database: db,
                ignore_missing_auth_providers: ignore,
            },
        );
        (a.findings.into_iter().map(|(_, f)| f).collect(), a.mappings)
    }

    fn in_db() -> HashSet<String> {
        HashSet::from([ulid_as_uuid(GITHUB.parse().unwrap())])
    }

    #[test]
    fn ulid_to_uuid_keeps_the_bits() {
        let u: ulid::Ulid = "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap();
        assert_eq!(ulid_as_uuid(u), "01563e3a-b5d3-d676-4c61-efb99302bd5b");
    }

    #[test]
    fn mapped_enabled_in_db_is_clean() {
        let db = in_db();
        let (f, p) = run(
            &[("oidc-github", 3)],
            &synapse(),
            &mas(Some("oidc-github"), true),
            Some(&db),
            false,
        );
        assert!(f.is_empty(), "{f:?}");
        assert_eq!(p[0].status, ProviderStatus::Mapped);
        assert_eq!(p[0].mas.as_ref().unwrap().in_database, Some(true));
        assert_eq!(
            p[0].synapse.as_ref().unwrap().idp_id.as_deref(),
            Some("github")
        );
    }

    #[test]
    fn issuer_match_is_only_a_suggestion() {
        let (f, p) = run(
            &[("oidc-github", 3)],
            &synapse(),
            &mas(None, true),
            None,
            false,
        );
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].id, ids::UNMAPPED_PROVIDER);
        assert_eq!(f[0].count, 3);
        assert!(f[0].problem.contains("synapse_idp_id"));
        assert!(f[0].problem.contains("not by issuer"));
        assert!(
            f[0].fix.contains("synapse_idp_id: \"oidc-github\""),
            "{}",
            f[0].fix
        );
        assert_eq!(p[0].mas.as_ref().unwrap().matched_by, MatchedBy::Issuer);
    }

    #[test]
    fn bare_idp_id_is_spotted() {
        let (f, p) = run(
            &[("oidc-github", 1)],
            &synapse(),
            &mas(Some("github"), true),
            None,
            false,
        );
        assert_eq!(f[0].id, ids::UNMAPPED_PROVIDER);
        assert!(
            f[0].fix.contains("from `github` to `oidc-github`"),
            "{}",
            f[0].fix
        );
        assert_eq!(p[0].mas.as_ref().unwrap().matched_by, MatchedBy::BareIdpId);
    }

    #[test]
    fn unknown_is_an_error_or_with_the_flag_a_warning() {
        let (f, _) = run(&[("saml", 2)], &synapse(), &mas(None, true), None, false);
        assert_eq!(
            (f[0].id.as_str(), f[0].severity),
            (ids::UNKNOWN_PROVIDER, Severity::Error)
        );
        let (f, p) = run(&[("saml", 2)], &synapse(), &mas(None, true), None, true);
        assert_eq!(
            (f[0].id.as_str(), f[0].severity, f[0].count),
            (ids::UNKNOWN_PROVIDER_IGNORED, Severity::Warning, 2)
        );
        assert_eq!(p[0].status, ProviderStatus::Unknown);
    }

    #[test]
    fn unknown_to_synapse_but_mapped_in_mas_is_fine() {
        let db = in_db();
        let (f, _) = run(
            &[("saml", 2)],
            &synapse(),
            &mas(Some("saml"), true),
            Some(&db),
            false,
        );
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn oauth_delegated_gives_the_exact_delete() {
        let (f, _) = run(
            &[("oauth-delegated", 4)],
            &synapse(),
            &mas(None, true),
            None,
            true,
        );
        assert_eq!(f[0].id, ids::OAUTH_DELEGATED);
        assert_eq!(f[0].count, 4);
        assert!(
            f[0].fix
                .contains("DELETE FROM user_external_ids WHERE auth_provider = 'oauth-delegated';")
        );
    }

    #[test]
    fn disabled_wins_over_not_in_database() {
        let empty = HashSet::new();
        let (f, _) = run(
            &[("oidc-github", 1)],
            &synapse(),
            &mas(Some("oidc-github"), false),
            Some(&empty),
            false,
        );
        assert_eq!(
            f.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
            vec![ids::PROVIDER_DISABLED]
        );
        let (f, p) = run(
            &[("oidc-github", 1)],
            &synapse(),
            &mas(Some("oidc-github"), true),
            Some(&empty),
            false,
        );
        assert_eq!(f[0].id, ids::PROVIDER_NOT_IN_DB);
        assert!(f[0].fix.contains("mas-cli config sync"));
        assert_eq!(p[0].status, ProviderStatus::NotInDatabase);
    }

    #[test]
    fn two_mas_providers_on_one_idp_id_are_ambiguous() {
        let mut m = mas(Some("oidc-github"), true);
        let mut second = m.providers[0].clone();
        second.id = "01J0000000000000000000GH01".parse().unwrap();
        m.providers.push(second);
        let (f, _) = run(&[("oidc-github", 1)], &synapse(), &m, None, false);
        assert_eq!(f[0].id, ids::PROVIDER_AMBIGUOUS);
        assert_eq!(f[0].examples.len(), 2);
    }
}
