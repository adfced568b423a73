//! What a migration did, per Synapse table and per MAS table, as printed at the end of a run
//! and in `migrate --json`.

use std::collections::BTreeMap;

use anyhow::bail;
use serde::Serialize;

use crate::check::report::Plan;
use crate::source::{self, Entity};
use crate::transform::{EntityCounts, Stats};

#[derive(Debug, Clone, Serialize)]
pub struct EntitySummary {
    pub entity: String,
    pub read: u64,
    pub migrated: u64,
    pub skipped: BTreeMap<String, u64>,
    pub seconds: f64,
    pub rows_per_second: f64,
}

/// What a staged migration did besides the usual (see `stage::delta`).
#[derive(Debug, Clone, Serialize)]
pub struct Staged {
    /// When the stage's snapshot was taken.
    pub stage_taken_at: String,
    /// Synapse users with any row inserted, updated or deleted since the stage: their rows were
    /// deleted from the stage and derived again. The entity counts above are theirs only.
    pub changed_users: u64,
    /// Finding them: the per-user counts and xmin scan of Synapse, merged with the stage's.
    pub detect_seconds: f64,
    /// Deleting and writing their rows in the stage (inside the swap's transaction).
    pub apply_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    /// `syn2mas prestage`: the run built the stage; MAS's own tables are unchanged.
    pub prestage: bool,
    /// A staged migration: the stage was brought up to date and swapped in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staged: Option<Staged>,
    pub entities: Vec<EntitySummary>,
    /// Rows written to each MAS table.
    pub mas_rows: BTreeMap<String, u64>,
    pub invalid_device_ips: u64,
    pub load_seconds: f64,
    pub rebuild_seconds: f64,
    pub swap_seconds: f64,
    pub total_seconds: f64,
    pub leftovers_dropped: Vec<String>,
    /// Differences between `check`'s plan and what was migrated (Synapse changed in between).
    pub plan_mismatches: Vec<String>,
    /// `work_mem` / `maintenance_work_mem` each kind of session was given (a staged migration
    /// rebuilds nothing and sets none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_memory: Option<crate::memory::Chosen>,
}

/// The per-entity summary, asserting that every row read was migrated or skipped.
pub(crate) fn summarise(
    stats: &Stats,
    seconds: &BTreeMap<Entity, f64>,
) -> anyhow::Result<Vec<EntitySummary>> {
    let mut out = Vec::new();
    for e in source::plan::ORDER {
        let c = stats.entities.get(&e).cloned().unwrap_or_default();
        check_accounted(e, &c)?;
        let secs = seconds.get(&e).copied().unwrap_or(0.0);
        out.push(EntitySummary {
            entity: e.name().to_owned(),
            read: c.read,
            migrated: c.migrated,
            skipped: c
                .skipped
                .iter()
                .map(|(r, n)| ((*r).to_owned(), *n))
                .collect(),
            seconds: secs,
            rows_per_second: if secs > 0.0 {
                c.read as f64 / secs
            } else {
                0.0
            },
        });
    }
    Ok(out)
}

fn check_accounted(e: Entity, c: &EntityCounts) -> anyhow::Result<()> {
    if c.read != c.migrated + c.skipped_total() {
        bail!(
            "accounting error for `{}`: read {} ≠ migrated {} + skipped {}",
            e.name(),
            c.read,
            c.migrated,
            c.skipped_total()
        );
    }
    Ok(())
}

pub(super) fn plan_mismatches(plan: &Plan, entities: &[EntitySummary]) -> Vec<String> {
    let mut out = Vec::new();
    for e in entities {
        if let Some(p) = plan.entities.iter().find(|p| p.entity == e.entity)
            && (p.read != e.read || p.migrate != e.migrated)
        {
            out.push(format!(
                "{}: check planned {} read / {} migrated, migrate saw {} / {}",
                e.entity, p.read, p.migrate, e.read, e.migrated
            ));
        }
    }
    out
}

impl Summary {
    /// The table printed at the end of a run.
    pub fn render_human(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let title = match (self.prestage, &self.staged, self.dry_run) {
            (true, Some(_), _) => {
                "Stage refreshed: the users who changed since its snapshot were derived again; MAS's own tables are unchanged."
            }
            (true, None, _) => {
                "Stage built: MAS's own tables are unchanged; `syn2mas migrate` will swap it in after applying what changes in Synapse from now on."
            }
            (false, Some(_), true) => {
                "Dry run of the staged migration complete: the stage was brought up to date, validated and swapped in, then everything was rolled back; MAS and the stage are unchanged."
            }
            (false, Some(_), false) => "Migration complete (from the stage).",
            (false, None, true) => {
                "Dry run complete: everything was migrated, validated and rolled back; MAS is unchanged."
            }
            (false, None, false) => "Migration complete.",
        };
        writeln!(out, "\n{title}\n")?;
        if let Some(s) = &self.staged {
            writeln!(
                out,
                "Stage of {}: {} Synapse user(s) changed since; their rows were derived again (the counts below are theirs). Finding them {:.2}s, applying {:.2}s.\n",
                s.stage_taken_at, s.changed_users, s.detect_seconds, s.apply_seconds
            )?;
        }
        writeln!(
            out,
            "{:<18} {:>10} {:>10} {:>10} {:>8} {:>11}  skipped by reason",
            "entity", "read", "migrated", "skipped", "seconds", "rows/s"
        )?;
        for e in &self.entities {
            let reasons: Vec<String> = e.skipped.iter().map(|(r, n)| format!("{r}={n}")).collect();
            writeln!(
                out,
                "{:<18} {:>10} {:>10} {:>10} {:>8.2} {:>11.0}  {}",
                e.entity,
                e.read,
                e.migrated,
                e.skipped.values().sum::<u64>(),
                e.seconds,
                e.rows_per_second,
                reasons.join(", ")
            )?;
        }
        let rows_title = if self.prestage {
            "Stage rows:"
        } else {
            "MAS rows written:"
        };
        writeln!(out, "\n{rows_title}")?;
        for (t, n) in &self.mas_rows {
            writeln!(out, "  {t:<34} {n:>10}")?;
        }
        if self.invalid_device_ips > 0 {
            writeln!(
                out,
                "\n{} device IP addresses could not be parsed and were stored as NULL.",
                self.invalid_device_ips
            )?;
        }
        for m in &self.plan_mismatches {
            writeln!(out, "warning: Synapse changed since check: {m}")?;
        }
        writeln!(
            out,
            "\nload {:.2}s, rebuild {:.2}s (after load), swap {:.2}s, total {:.2}s; read = migrated + skipped for every entity.",
            self.load_seconds, self.rebuild_seconds, self.swap_seconds, self.total_seconds
        )
    }
}
