//! The check report: what an operator reads (human text on stderr) and what CI parses (`--json`).
//!
//! The JSON document is versioned (`"version": 1`) and described by `report.schema.json` next to
//! this file; a test validates real output against it, so the schema cannot silently drift.
//!
//! Longer than most modules (~580 lines, a third of them tests) because the report's types, its
//! human rendering and its JSON are one contract with the schema file and are changed together.

use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{self, Write};

/// Version of the `--json` document layout. Bump it when a field changes meaning or disappears.
pub const JSON_VERSION: u64 = 1;

/// JSON Schema (draft 2020-12) of [`Report::to_json`]'s document.
pub const JSON_SCHEMA: &str = include_str!("report.schema.json");

/// How many examples a finding carries at most: enough to find the rows, short enough to read.
pub const MAX_EXAMPLES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found by a check. Never carries a secret: examples are user ids, provider ids,
/// table names, never tokens, hashes or passwords.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable identifier, e.g. `E-server-name`; scripts and docs refer to it.
    pub id: String,
    pub severity: Severity,
    /// One line saying what is wrong.
    pub problem: String,
    /// How many rows/settings are affected (1 for a config setting).
    pub count: u64,
    /// Up to 5 examples.
    pub examples: Vec<String>,
    /// What to do about it.
    pub fix: String,
    /// The table (or `table.column`) the finding is about, when it is about one; data checks
    /// report one finding per table so each count is attributable.
    pub table: Option<String>,
}

impl Finding {
    /// A finding whose severity follows from its id (`E-…` error, `W-…` warning), so an id can
    /// never be reported with the wrong severity.
    pub fn new(id: &str, problem: impl Into<String>, count: u64, fix: impl Into<String>) -> Self {
        let severity = if id.starts_with("W-") {
            Severity::Warning
        } else {
            Severity::Error
        };
        Self {
            id: id.to_owned(),
            severity,
            problem: problem.into(),
            count,
            examples: Vec::new(),
            fix: fix.into(),
            table: None,
        }
    }

    /// Attaches examples, keeping at most [`MAX_EXAMPLES`].
    pub fn with_examples(mut self, examples: impl IntoIterator<Item = String>) -> Self {
        self.examples = examples.into_iter().take(MAX_EXAMPLES).collect();
        self
    }

    pub fn in_table(mut self, table: impl Into<String>) -> Self {
        self.table = Some(table.into());
        self
    }
}

/// Which database was inspected, so "MAS is not empty" can never be a mystery (MAS #4605).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DatabaseInfo {
    /// `synapse` or `mas`.
    pub side: String,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub user: String,
}

impl DatabaseInfo {
    /// A titled list of databases, one line each (never a password: there is none here).
    pub fn render_list(list: &[DatabaseInfo], title: &str, out: &mut impl Write) -> io::Result<()> {
        writeln!(out, "{title}")?;
        for db in list {
            writeln!(
                out,
                "  {:<8} host={} port={} dbname={} user={}",
                db.side, db.host, db.port, db.dbname, db.user
            )?;
        }
        Ok(())
    }
}

/// What `migrate` would do with one source table: every row read is either migrated or skipped
/// for a named reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EntityPlan {
    pub entity: String,
    pub read: u64,
    pub migrate: u64,
    pub skip: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub entities: Vec<EntityPlan>,
    /// Rows each MAS table would receive.
    pub mas_rows: BTreeMap<String, u64>,
}

/// The Synapse provider an `auth_provider` value comes from (Synapse's `oidc`/`oidc-<idp_id>`
/// naming rule applied to `oidc_config` and `oidc_providers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SynapseProviderInfo {
    pub idp_id: Option<String>,
    pub issuer: Option<String>,
}

/// How a MAS provider was associated with an `auth_provider` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchedBy {
    /// `synapse_idp_id` equals the `auth_provider`: this is the mapping `migrate` uses.
    SynapseIdpId,
    /// Only the issuer matches: a suggestion, `migrate` does not use it.
    Issuer,
    /// The MAS provider's `synapse_idp_id` is Synapse's bare `idp_id`, missing the `oidc-`
    /// prefix Synapse stores: a suggestion, `migrate` does not use it.
    BareIdpId,
}

/// The MAS provider (from MAS's config) that an `auth_provider` value maps to or could map to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MasProviderInfo {
    /// The provider's ULID `id` from MAS's config.
    pub id: String,
    pub synapse_idp_id: Option<String>,
    pub issuer: Option<String>,
    pub enabled: bool,
    /// Whether MAS's `upstream_oauth_providers` table has it; `None` when that table could not be
    /// read (not a MAS database).
    pub in_database: Option<bool>,
    pub matched_by: MatchedBy,
}

/// Outcome of the provider mapping for one `auth_provider` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderStatus {
    /// Mapped by `synapse_idp_id` to an enabled MAS provider that exists in MAS's database.
    Mapped,
    /// The `oauth-delegated` marker left by an earlier MAS setup.
    OauthDelegated,
    /// Neither Synapse's config nor any MAS `synapse_idp_id` knows it.
    Unknown,
    /// Synapse knows it, no MAS provider has it as `synapse_idp_id`.
    Unmapped,
    /// Mapped to a MAS provider with `enabled: false`.
    Disabled,
    /// Mapped, but the MAS provider is missing from MAS's database (`mas-cli config sync`).
    NotInDatabase,
    /// Several MAS providers claim the same `synapse_idp_id`.
    Ambiguous,
}

/// One row of the provider-mapping help: an `auth_provider` value found in Synapse's
/// `user_external_ids`, where it comes from, and where it would go (MAS #4597: operators could
/// not see why a provider "was missing").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderMapping {
    pub auth_provider: String,
    /// Rows of `user_external_ids` with this value.
    pub rows: u64,
    pub synapse: Option<SynapseProviderInfo>,
    pub mas: Option<MasProviderInfo>,
    pub status: ProviderStatus,
    /// What to write in MAS's config, or why nothing is needed.
    pub advice: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scope: super::Scope,
    pub databases: Vec<DatabaseInfo>,
    pub findings: Vec<Finding>,
    pub plan: Option<Plan>,
    pub providers: Vec<ProviderMapping>,
    /// The stage `syn2mas prestage` built, when there is one: whether `migrate` can use it.
    pub stage: Option<crate::stage::Status>,
}

impl Report {
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }

    /// The exit code `check` ends with: 10 on errors, 11 on warnings only, else 0.
    pub fn exit_code(&self) -> u8 {
        if self.errors().next().is_some() {
            crate::exit::CHECK_ERRORS
        } else if self.warnings().next().is_some() {
            crate::exit::CHECK_WARNINGS
        } else {
            crate::exit::OK
        }
    }

    /// Findings with this id, in report order (tests and wrappers look findings up by id).
    pub fn find<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Finding> + 'a {
        self.findings.iter().filter(move |f| f.id == id)
    }

    /// The `--json` document (layout in `report.schema.json`).
    pub fn to_json(&self) -> serde_json::Value {
        let errors: Vec<&Finding> = self.errors().collect();
        let warnings: Vec<&Finding> = self.warnings().collect();
        json!({
            "version": JSON_VERSION,
            "databases": self.databases,
            "errors": errors,
            "warnings": warnings,
            "providers": self.providers,
            "plan": self.plan,
            "stage": self.stage,
            "scope": self.scope,
            "exit_code": self.exit_code(),
        })
    }

    /// The human report for stderr: databases, errors, warnings, provider mapping, plan, verdict.
    pub fn render_human(&self, out: &mut impl Write) -> io::Result<()> {
        self.render_databases(out)?;
        render_findings(
            out,
            "Errors",
            "These issues prevent migrating from Synapse to MAS right now:",
            self.errors(),
        )?;
        render_findings(
            out,
            "Warnings",
            "These potential issues should be considered before migrating from Synapse to MAS:",
            self.warnings(),
        )?;
        self.render_providers(out)?;
        self.render_plan(out)?;
        self.render_stage(out)?;
        self.render_verdict(out)
    }

    fn render_stage(&self, out: &mut impl Write) -> io::Result<()> {
        let Some(stage) = &self.stage else {
            return Ok(());
        };
        section_header(out, "Stage (syn2mas prestage)")?;
        stage.render_human(out)
    }

    fn render_databases(&self, out: &mut impl Write) -> io::Result<()> {
        DatabaseInfo::render_list(&self.databases, "Databases inspected (read-only):", out)
    }

    fn render_providers(&self, out: &mut impl Write) -> io::Result<()> {
        if self.providers.is_empty() {
            return Ok(());
        }
        section_header(out, "Auth providers (user_external_ids)")?;
        writeln!(
            out,
            "MAS maps a Synapse auth_provider only through `synapse_idp_id` (exact string), never by issuer."
        )?;
        for p in &self.providers {
            render_provider(out, p)?;
        }
        Ok(())
    }

    fn render_plan(&self, out: &mut impl Write) -> io::Result<()> {
        let Some(plan) = &self.plan else {
            if self.scope == super::Scope::Preflight {
                writeln!(
                    out,
                    "\nPreflight checks only: the row-level checks of the other tables run as the \
                     migration reads them (a bad row stops it before MAS sees anything); \
                     `syn2mas check` or `migrate --full-check` runs them all first."
                )?;
            }
            return Ok(());
        };
        section_header(out, "Migration plan")?;
        writeln!(
            out,
            "  {:<30} {:>12} {:>12} {:>12}  skipped by reason",
            "entity", "read", "migrate", "skipped"
        )?;
        for e in &plan.entities {
            render_entity(out, e)?;
        }
        if !plan.mas_rows.is_empty() {
            writeln!(out, "  MAS rows to write:")?;
            for (table, rows) in &plan.mas_rows {
                writeln!(out, "    {table:<34} {rows:>12}")?;
            }
        }
        Ok(())
    }

    fn render_verdict(&self, out: &mut impl Write) -> io::Result<()> {
        let errors = self.errors().count();
        let warnings = self.warnings().count();
        writeln!(out)?;
        if errors + warnings == 0 {
            writeln!(
                out,
                "Check completed successfully with no errors or warnings."
            )
        } else {
            writeln!(
                out,
                "Check found {errors} error(s) and {warnings} warning(s) (exit code {}).",
                self.exit_code()
            )
        }
    }
}

fn section_header(out: &mut impl Write, title: &str) -> io::Result<()> {
    write!(out, "\n\n===== {title} =====\n")
}

fn render_findings<'a>(
    out: &mut impl Write,
    title: &str,
    intro: &str,
    findings: impl Iterator<Item = &'a Finding>,
) -> io::Result<()> {
    let mut findings = findings.peekable();
    if findings.peek().is_none() {
        return Ok(());
    }
    section_header(out, title)?;
    writeln!(out, "{intro}")?;
    for f in findings {
        render_finding(out, f)?;
    }
    Ok(())
}

fn render_finding(out: &mut impl Write, f: &Finding) -> io::Result<()> {
    writeln!(out)?;
    writeln!(out, "• [{}] {} ({})", f.id, f.problem, f.count)?;
    if !f.examples.is_empty() {
        writeln!(out, "    examples: {}", f.examples.join(", "))?;
    }
    writeln!(out, "    fix: {}", f.fix)
}

fn render_provider(out: &mut impl Write, p: &ProviderMapping) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "  {} ({} rows) [{}]",
        p.auth_provider,
        p.rows,
        status_word(p.status)
    )?;
    let synapse = match &p.synapse {
        Some(s) => format!(
            "idp_id {}, issuer {}",
            s.idp_id.as_deref().unwrap_or("<none>"),
            s.issuer.as_deref().unwrap_or("<unspecified>")
        ),
        None => "not configured in homeserver.yaml".to_owned(),
    };
    writeln!(out, "    Synapse: {synapse}")?;
    let mas = match &p.mas {
        Some(m) => describe_mas_provider(m),
        None => "no provider with this synapse_idp_id or a matching issuer".to_owned(),
    };
    writeln!(out, "    MAS:     {mas}")?;
    writeln!(out, "    → {}", p.advice)
}

fn describe_mas_provider(m: &MasProviderInfo) -> String {
    let how = match m.matched_by {
        MatchedBy::SynapseIdpId => "synapse_idp_id matches",
        MatchedBy::Issuer => "issuer matches, synapse_idp_id does not",
        MatchedBy::BareIdpId => "synapse_idp_id lacks the `oidc-` prefix",
    };
    let db = match m.in_database {
        Some(true) => "in database",
        Some(false) => "NOT in database",
        None => "database not readable",
    };
    format!(
        "{} ({how}; issuer {}; {}; {db})",
        m.id,
        m.issuer.as_deref().unwrap_or("<unspecified>"),
        if m.enabled { "enabled" } else { "DISABLED" },
    )
}

fn status_word(s: ProviderStatus) -> &'static str {
    match s {
        ProviderStatus::Mapped => "ok",
        ProviderStatus::OauthDelegated => "oauth-delegated",
        ProviderStatus::Unknown => "unknown",
        ProviderStatus::Unmapped => "unmapped",
        ProviderStatus::Disabled => "disabled",
        ProviderStatus::NotInDatabase => "not in MAS database",
        ProviderStatus::Ambiguous => "ambiguous",
    }
}

fn render_entity(out: &mut impl Write, e: &EntityPlan) -> io::Result<()> {
    let skipped: u64 = e.skip.values().sum();
    let reasons: Vec<String> = e
        .skip
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(reason, n)| format!("{reason}={n}"))
        .collect();
    writeln!(
        out,
        "  {:<30} {:>12} {:>12} {:>12}  {}",
        e.entity,
        e.read,
        e.migrate,
        skipped,
        reasons.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            scope: crate::check::Scope::Full,
            databases: vec![DatabaseInfo {
                side: "mas".into(),
                host: "db.example".into(),
                port: 5433,
                dbname: "mas".into(),
                user: "mas".into(),
            }],
            findings: vec![
                Finding::new("E-guest-access", "guests", 1, "turn it off"),
                Finding::new("W-guests", "guest users", 7, "nothing")
                    .with_examples((0..9).map(|i| format!("@g{i}:example.com")))
                    .in_table("users"),
            ],
            plan: Some(Plan {
                entities: vec![EntityPlan {
                    entity: "users".into(),
                    read: 10,
                    migrate: 8,
                    skip: BTreeMap::from([("appservice".into(), 2)]),
                }],
                mas_rows: BTreeMap::from([("users".into(), 8)]),
            }),
            providers: Vec::new(),
            stage: None,
        }
    }

    #[test]
    fn severity_follows_the_id_prefix() {
        assert_eq!(Finding::new("W-x", "", 1, "").severity, Severity::Warning);
        assert_eq!(Finding::new("E-x", "", 1, "").severity, Severity::Error);
    }

    #[test]
    fn examples_are_capped_at_five() {
        let r = sample();
        assert_eq!(r.findings[1].examples.len(), MAX_EXAMPLES);
    }

    #[test]
    fn exit_codes_follow_the_worst_severity() {
        let mut r = sample();
        assert_eq!(r.exit_code(), 10);
        r.findings.remove(0);
        assert_eq!(r.exit_code(), 11);
        r.findings.clear();
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn json_splits_errors_and_warnings() {
        let v = sample().to_json();
        assert_eq!(v["version"], 1);
        assert_eq!(v["exit_code"], 10);
        assert_eq!(v["errors"][0]["id"], "E-guest-access");
        assert_eq!(v["warnings"][0]["id"], "W-guests");
        assert_eq!(v["warnings"][0]["table"], "users");
        assert_eq!(v["plan"]["entities"][0]["skip"]["appservice"], 2);
        assert_eq!(v["databases"][0]["port"], 5433);
    }

    #[test]
    fn human_report_has_every_section_in_order() {
        let mut buf = Vec::new();
        sample().render_human(&mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let order = [
            "mas      host=db.example port=5433 dbname=mas user=mas",
            "===== Errors =====",
            "• [E-guest-access] guests (1)",
            "===== Warnings =====",
            "• [W-guests] guest users (7)",
            "examples: @g0:example.com",
            "fix: nothing",
            "===== Migration plan =====",
            "appservice=2",
            "Check found 1 error(s) and 1 warning(s) (exit code 10).",
        ];
        let mut at = 0;
        for needle in order {
            let pos = text[at..]
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing or out of order in:\n{text}"));
            at += pos;
        }
    }

    #[test]
    fn json_matches_the_published_schema() {
        let schema: serde_json::Value = serde_json::from_str(JSON_SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let mut r = sample();
        r.providers.push(ProviderMapping {
            auth_provider: "oidc-github".into(),
            rows: 3,
            synapse: Some(SynapseProviderInfo {
                idp_id: Some("github".into()),
                issuer: None,
            }),
            mas: Some(MasProviderInfo {
                id: "01H8PKNWKKRPCBW4YGH1RWV279".into(),
                synapse_idp_id: Some("github".into()),
                issuer: None,
                enabled: true,
                in_database: None,
                matched_by: MatchedBy::BareIdpId,
            }),
            status: ProviderStatus::Unmapped,
            advice: "change it".into(),
        });
        for doc in [r.to_json(), Report::default().to_json()] {
            let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{errors:?}");
        }
        // The schema is strict: a misspelt field is rejected, so it cannot silently drift.
        let mut bad = r.to_json();
        bad["warnings"][0]["sevirity"] = "warning".into();
        assert!(!validator.is_valid(&bad));
        let mut bad = r.to_json();
        bad["errors"][0]["severity"] = "warning".into();
        assert!(!validator.is_valid(&bad));
    }

    #[test]
    fn clean_report_ends_with_the_success_line() {
        let mut buf = Vec::new();
        Report::default().render_human(&mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.trim_end()
                .ends_with("Check completed successfully with no errors or warnings.")
        );
        assert!(!text.contains("====="));
    }
}
