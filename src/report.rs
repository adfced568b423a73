//! `--report DIR`: what a run did, for the operator to tell users who lost what. The run's JSON
//! summary (`summary.json`, the document `--json` prints) and one JSON Lines file per Synapse
//! table (`<table>.jsonl`) with every row skipped or refused, one object per row: the user id,
//! the key that names the row (device id, medium and address, provider and subject, token ids)
//! and the reason. Never a token, hash or password: the lines are built from
//! [`SkippedRow`], which has no field for them.
//!
//! Every table's file is created at the start (empty when nothing of it was skipped), and
//! lines are appended as batches finish, so memory does not grow with the number of rows.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;

use crate::source::Entity;
use crate::transform::{RowError, SkippedRow};

#[derive(Debug)]
pub struct ReportDir {
    dir: PathBuf,
    files: Mutex<BTreeMap<Entity, BufWriter<File>>>,
}

impl ReportDir {
    /// Creates `dir` (and its parents) and one empty file per Synapse table.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the report directory {}", dir.display()))?;
        let mut files = BTreeMap::new();
        for e in Entity::ALL {
            let path = dir.join(format!("{}.jsonl", e.name()));
            let file = File::create(&path)
                .with_context(|| format!("creating the report file {}", path.display()))?;
            files.insert(e, BufWriter::new(file));
        }
        Ok(Self {
            dir: dir.to_owned(),
            files: Mutex::new(files),
        })
    }

    /// Appends rows to their tables' files.
    pub fn rows(&self, rows: &[SkippedRow]) -> anyhow::Result<()> {
        let mut files = self.files.lock().unwrap();
        for row in rows {
            let Some(file) = row.entity.and_then(|e| files.get_mut(&e)) else {
                continue;
            };
            serde_json::to_writer(&mut *file, row)?;
            file.write_all(b"\n")
                .with_context(|| format!("writing the report in {}", self.dir.display()))?;
        }
        Ok(())
    }

    /// The row a migration refused (and stopped at).
    pub fn refused(&self, err: &RowError) -> anyhow::Result<()> {
        let reason = match err.problem {
            Some(p) => format!("refused: {}", p.finding_id()),
            None => "refused: unreadable row".to_owned(),
        };
        self.rows(&[SkippedRow {
            entity: Some(err.entity),
            user_id: err.row.clone(),
            reason,
            ..SkippedRow::default()
        }])
    }

    /// Writes `summary.json` and flushes every table's file.
    pub fn finish(&self, summary: &serde_json::Value) -> anyhow::Result<()> {
        let path = self.dir.join("summary.json");
        let text = serde_json::to_string_pretty(summary)?;
        std::fs::write(&path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        for file in self.files.lock().unwrap().values_mut() {
            file.flush()
                .with_context(|| format!("writing the report in {}", self.dir.display()))?;
        }
        Ok(())
    }
}
