//! The verification report: a table per entity for the operator, one JSON document for scripts.
//!
//! Examples name rows by user id, device id, email… never by secret: tokens appear as their
//! first 4 characters, password hashes not at all (the rendering in `compare` sees to it).

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;
use serde_json::json;

use crate::check::DatabaseInfo;

/// Version of the `--json` document layout. Bump it when a field changes meaning or disappears.
pub const JSON_VERSION: u64 = 1;

/// Exit code when the databases differ (the same value `check` uses for errors).
pub const EXIT_DIFFERENCES: u8 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExampleKind {
    /// Synapse has the row, the mapping migrates it, MAS lacks it.
    Missing,
    /// MAS has a row Synapse does not call for.
    Extra,
    /// Both have the row, some column differs.
    Different,
}

impl ExampleKind {
    fn label(self) -> &'static str {
        match self {
            ExampleKind::Missing => "missing",
            ExampleKind::Extra => "extra",
            ExampleKind::Different => "different",
        }
    }
}

/// One differing column of one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub column: String,
    /// What the mapping calls for, from Synapse.
    pub expected: String,
    /// What MAS holds.
    pub actual: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    pub kind: ExampleKind,
    /// The row, by natural key (user id, device id, email, masked token…).
    pub row: String,
    /// For `different`: the columns that differ.
    pub differences: Vec<Difference>,
    /// Why an `extra` row is extra, when Synapse has it but the migration skips it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The comparison of one MAS table (or part of one) with what Synapse calls for.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EntityReport {
    pub entity: String,
    /// Synapse rows the mapping migrates (expected in MAS).
    pub synapse_rows: u64,
    /// Rows MAS has.
    pub mas_rows: u64,
    /// Rows present on both sides, compared column by column.
    pub compared: u64,
    pub equal: u64,
    pub different: u64,
    pub missing: u64,
    pub extra: u64,
    /// Synapse rows the mapping skips, by the migration's reason (expected absent from MAS).
    pub skipped: BTreeMap<String, u64>,
    /// Rows that differ, by column.
    pub columns: BTreeMap<String, u64>,
    /// Up to 10 examples of each kind.
    pub examples: Vec<Example>,
    /// Wall time of this entity's comparison (both queries and the merge).
    pub seconds: f64,
}

impl EntityReport {
    pub fn new(entity: &str) -> Self {
        Self {
            entity: entity.to_owned(),
            ..Self::default()
        }
    }

    pub fn ok(&self) -> bool {
        self.different + self.missing + self.extra == 0
    }

    pub fn problems(&self) -> u64 {
        self.different + self.missing + self.extra
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub databases: Vec<DatabaseInfo>,
    pub entities: Vec<EntityReport>,
    pub seconds: f64,
}

impl Report {
    /// True when every MAS row is what Synapse calls for and nothing is missing or extra.
    pub fn ok(&self) -> bool {
        self.entities.iter().all(EntityReport::ok)
    }

    /// 0 when everything agrees, 10 when anything differs.
    pub fn exit_code(&self) -> u8 {
        if self.ok() {
            crate::exit::OK
        } else {
            EXIT_DIFFERENCES
        }
    }

    /// The entity of that name, if compared.
    pub fn entity(&self, name: &str) -> Option<&EntityReport> {
        self.entities.iter().find(|e| e.entity == name)
    }

    /// The `--json` document (layout documented in README.md, "Verifying a migration").
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "version": JSON_VERSION,
            "ok": self.ok(),
            "exit_code": self.exit_code(),
            "databases": self.databases,
            "entities": self.entities,
            "seconds": self.seconds,
        })
    }

    pub fn render_human(&self, out: &mut impl Write) -> io::Result<()> {
        DatabaseInfo::render_list(
            &self.databases,
            "Databases compared (read-only snapshots):",
            out,
        )?;
        writeln!(
            out,
            "\n  {:<34} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "MAS table",
            "expected",
            "in MAS",
            "equal",
            "differ",
            "missing",
            "extra",
            "skipped",
            "seconds"
        )?;
        for e in &self.entities {
            writeln!(
                out,
                "  {:<34} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8.2}",
                e.entity,
                e.synapse_rows,
                e.mas_rows,
                e.equal,
                e.different,
                e.missing,
                e.extra,
                e.skipped.values().sum::<u64>(),
                e.seconds
            )?;
        }
        for e in self.entities.iter().filter(|e| !e.ok()) {
            render_problems(out, e)?;
        }
        self.render_verdict(out)
    }

    fn render_verdict(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(out)?;
        if self.ok() {
            writeln!(
                out,
                "Verification passed: MAS holds exactly what the mapping makes of Synapse ({:.2}s).",
                self.seconds
            )
        } else {
            let problems: u64 = self.entities.iter().map(EntityReport::problems).sum();
            writeln!(
                out,
                "Verification FAILED: {problems} row(s) differ between Synapse and MAS (exit code {}, {:.2}s).",
                self.exit_code(),
                self.seconds
            )
        }
    }
}

fn render_problems(out: &mut impl Write, e: &EntityReport) -> io::Result<()> {
    writeln!(
        out,
        "\n{}: {} different, {} missing in MAS, {} extra in MAS",
        e.entity, e.different, e.missing, e.extra
    )?;
    if !e.columns.is_empty() {
        let cols: Vec<String> = e
            .columns
            .iter()
            .map(|(c, n)| format!("{c} ({n})"))
            .collect();
        writeln!(out, "  differing columns: {}", cols.join(", "))?;
    }
    for ex in &e.examples {
        writeln!(out, "  {:<9} {}", ex.kind.label(), ex.row)?;
        for d in &ex.differences {
            writeln!(
                out,
                "            {}: expected {}, MAS has {}",
                d.column, d.expected, d.actual
            )?;
        }
        if let Some(note) = &ex.note {
            writeln!(out, "            {note}")?;
        }
    }
    let shown = e.examples.len() as u64;
    if e.problems() > shown {
        writeln!(out, "  … and {} more", e.problems() - shown)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_follows_problems() {
        let mut r = Report {
            entities: vec![EntityReport::new("users")],
            ..Report::default()
        };
        assert_eq!(r.exit_code(), 0);
        r.entities[0].extra = 1;
        assert_eq!(r.exit_code(), EXIT_DIFFERENCES);
        let json = r.to_json();
        assert_eq!(json["ok"], false);
        assert_eq!(json["exit_code"], 10);
        assert_eq!(json["entities"][0]["extra"], 1);
        let mut text = Vec::new();
        r.render_human(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("Verification FAILED"), "{text}");
    }
}
