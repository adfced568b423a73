//! The check report: what an operator reads (human text on stderr) and what CI parses (`--json`).

use serde::Serialize;
use std::collections::BTreeMap;

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

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub databases: Vec<DatabaseInfo>,
    pub findings: Vec<Finding>,
    pub plan: Option<Plan>,
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
}
