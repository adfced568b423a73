//! The merge join of one entity: two streams sorted by the same natural key, walked in step.
//! Equal keys are compared column by column; a key only Synapse has is missing from MAS (or an
//! expected absence, when the migration skips that row); a key only MAS has is extra.
//!
//! Memory is one row per side plus at most `MAX_EXAMPLES` rendered examples per kind.

use std::cmp::Ordering;
use std::time::Instant;

use super::compare::{ValueError, render_unix_ms, ulid_ms_for, ulid_ms_of, unix_ms_of_timestamptz};
use super::report::{Difference, EntityReport, Example, ExampleKind};
use super::spec::{Col, Spec};
use super::stream::{RowStream, StreamError};
use crate::db::copy_binary::field;

/// How many examples of each kind (missing, extra, different) an entity reports.
pub const MAX_EXAMPLES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("{side}'s `{entity}` column `{column}`: {source}")]
    Value {
        side: &'static str,
        entity: &'static str,
        column: &'static str,
        #[source]
        source: ValueError,
    },
}

/// One entity's comparison in progress.
pub struct Merge<'a> {
    spec: &'a Spec,
    offsets: Vec<usize>,
    server: &'a str,
    report: EntityReport,
}

impl<'a> Merge<'a> {
    pub fn new(spec: &'a Spec, server: &'a str) -> Self {
        Self {
            spec,
            offsets: spec.synapse_offsets(),
            server,
            report: EntityReport::new(spec.name),
        }
    }

    /// Walks both streams to their end and returns the entity's report.
    pub async fn run(
        mut self,
        syn: &mut RowStream,
        mas: &mut RowStream,
        started: Instant,
    ) -> Result<EntityReport, MergeError> {
        let mut s_more = syn.advance().await?;
        let mut m_more = mas.advance().await?;
        while s_more || m_more {
            let order = match (s_more, m_more) {
                (true, true) => syn.cmp_key(mas),
                (true, false) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match order {
                Ordering::Less => {
                    self.synapse_only(syn)?;
                    s_more = syn.advance().await?;
                }
                Ordering::Greater => {
                    self.mas_only(mas, None);
                    m_more = mas.advance().await?;
                }
                Ordering::Equal => {
                    self.both(syn, mas)?;
                    s_more = syn.advance().await?;
                    m_more = mas.advance().await?;
                }
            }
        }
        self.report.mas_rows = mas.rows();
        self.report.seconds = started.elapsed().as_secs_f64();
        Ok(self.report)
    }

    /// The migration's skip reason of the current Synapse row (`None`: it must be in MAS).
    fn skip<'r>(&self, syn: &'r RowStream) -> Result<Option<&'r str>, MergeError> {
        field::opt_text(syn.field(self.spec.skip_field())).map_err(|e| MergeError::Value {
            side: "Synapse",
            entity: self.spec.name,
            column: "skip",
            source: e.into(),
        })
    }

    fn synapse_only(&mut self, syn: &RowStream) -> Result<(), MergeError> {
        match self.skip(syn)? {
            Some(reason) => self.count_skip(reason),
            None => {
                self.report.synapse_rows += 1;
                self.report.missing += 1;
                if self.wants(ExampleKind::Missing) {
                    let row = self.describe_synapse(syn);
                    self.example(ExampleKind::Missing, row, Vec::new(), None);
                }
            }
        }
        Ok(())
    }

    fn mas_only(&mut self, mas: &RowStream, note: Option<String>) {
        self.report.extra += 1;
        if self.wants(ExampleKind::Extra) {
            let row = self.describe_mas(mas);
            self.example(ExampleKind::Extra, row, Vec::new(), note);
        }
    }

    fn count_skip(&mut self, reason: &str) {
        match self.report.skipped.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                self.report.skipped.insert(reason.to_owned(), 1);
            }
        }
    }

    /// Both sides have the key: compare, unless the migration skips the Synapse row, in which
    /// case the MAS row should not exist.
    fn both(&mut self, syn: &RowStream, mas: &RowStream) -> Result<(), MergeError> {
        if let Some(reason) = self.skip(syn)? {
            let note = format!("Synapse has this row but the migration skips it ({reason})");
            self.count_skip(reason);
            self.mas_only(mas, Some(note));
            return Ok(());
        }
        self.report.synapse_rows += 1;
        self.report.compared += 1;
        let mask = self.differing_columns(syn, mas)?;
        let ulid_ok = self.ulid_ok(mas)?;
        if mask == 0 && ulid_ok {
            self.report.equal += 1;
            return Ok(());
        }
        self.report.different += 1;
        self.tally_columns(mask, ulid_ok);
        if self.wants(ExampleKind::Different) {
            let diffs = self.render_differences(syn, mas, mask, ulid_ok);
            let row = self.describe_synapse(syn);
            self.example(ExampleKind::Different, row, diffs, None);
        }
        Ok(())
    }

    /// Bit `i` set when compared column `i` differs. No allocation: this runs for every row.
    fn differing_columns(&self, syn: &RowStream, mas: &RowStream) -> Result<u64, MergeError> {
        let mut mask = 0u64;
        for (i, c) in self.spec.cols.iter().enumerate() {
            let s = self.synapse_fields(syn, i);
            let m = mas.field(self.spec.mas_col(i));
            let equal = c
                .kind
                .equal(&s[..c.kind.synapse_width()], m)
                .map_err(|e| self.value_error(c, e))?;
            if !equal {
                mask |= 1 << i;
            }
        }
        Ok(mask)
    }

    /// Up to three fields of compared column `i` in the Synapse row.
    fn synapse_fields<'r>(&self, syn: &'r RowStream, i: usize) -> [Option<&'r [u8]>; 3] {
        let at = self.offsets[i];
        let width = self.spec.cols[i].kind.synapse_width();
        std::array::from_fn(|k| if k < width { syn.field(at + k) } else { None })
    }

    /// Whether the row's id has the time part its creation time calls for.
    fn ulid_ok(&self, mas: &RowStream) -> Result<bool, MergeError> {
        let Some(u) = self.spec.ulid else {
            return Ok(true);
        };
        let (Some(id), Some(created)) = (
            mas.field(self.spec.id_field()),
            mas.field(self.spec.mas_col(u.created)),
        ) else {
            return Ok(false);
        };
        let c = &self.spec.cols[u.created];
        let id_ms = ulid_ms_of(id).map_err(|e| self.value_error(c, e))?;
        let created_ms = unix_ms_of_timestamptz(created).map_err(|e| self.value_error(c, e))?;
        Ok(id_ms == ulid_ms_for(created_ms))
    }

    fn tally_columns(&mut self, mask: u64, ulid_ok: bool) {
        for (i, c) in self.spec.cols.iter().enumerate() {
            if mask & (1 << i) != 0 {
                *self.report.columns.entry(c.name.to_owned()).or_default() += 1;
            }
        }
        if !ulid_ok && let Some(u) = self.spec.ulid {
            *self.report.columns.entry(ulid_column(u.id)).or_default() += 1;
        }
    }

    fn render_differences(
        &self,
        syn: &RowStream,
        mas: &RowStream,
        mask: u64,
        ulid_ok: bool,
    ) -> Vec<Difference> {
        let mut out = Vec::new();
        for (i, c) in self.spec.cols.iter().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            let s = self.synapse_fields(syn, i);
            out.push(Difference {
                column: c.name.to_owned(),
                expected: c
                    .kind
                    .render_expected(&s[..c.kind.synapse_width()], self.server),
                actual: c
                    .kind
                    .render_actual(mas.field(self.spec.mas_col(i)), self.server),
            });
        }
        if !ulid_ok && let Some(u) = self.spec.ulid {
            out.push(self.ulid_difference(mas, u.id, u.created));
        }
        out
    }

    fn ulid_difference(&self, mas: &RowStream, id: &str, created: usize) -> Difference {
        let created_ms = mas
            .field(self.spec.mas_col(created))
            .and_then(|b| unix_ms_of_timestamptz(b).ok());
        let id_ms = mas
            .field(self.spec.id_field())
            .and_then(|b| ulid_ms_of(b).ok());
        let show = |ms: Option<i64>| ms.map_or_else(|| "NULL".to_owned(), render_unix_ms);
        Difference {
            column: ulid_column(id),
            expected: format!(
                "{} (its {})",
                show(created_ms.map(ulid_ms_for)),
                self.spec.cols[created].name
            ),
            actual: show(id_ms),
        }
    }

    fn wants(&self, kind: ExampleKind) -> bool {
        self.report
            .examples
            .iter()
            .filter(|e| e.kind == kind)
            .count()
            < MAX_EXAMPLES
    }

    fn example(
        &mut self,
        kind: ExampleKind,
        row: String,
        differences: Vec<Difference>,
        note: Option<String>,
    ) {
        self.report.examples.push(Example {
            kind,
            row,
            differences,
            note,
        });
    }

    /// Names the current Synapse row: its key, then its label columns (a token's user and
    /// device). Secrets are masked by their kind's rendering.
    fn describe_synapse(&self, syn: &RowStream) -> String {
        let key = self.describe_key(syn);
        let labels: Vec<String> = self
            .spec
            .label
            .iter()
            .map(|&i| {
                let s = self.synapse_fields(syn, i);
                let c = &self.spec.cols[i];
                labelled(
                    c,
                    c.kind
                        .render_expected(&s[..c.kind.synapse_width()], self.server),
                )
            })
            .collect();
        with_labels(key, &labels)
    }

    fn describe_mas(&self, mas: &RowStream) -> String {
        let key = self.describe_key(mas);
        let labels: Vec<String> = self
            .spec
            .label
            .iter()
            .map(|&i| {
                let c = &self.spec.cols[i];
                labelled(
                    c,
                    c.kind
                        .render_actual(mas.field(self.spec.mas_col(i)), self.server),
                )
            })
            .collect();
        with_labels(key, &labels)
    }

    /// Key columns are the same single fields on both sides.
    fn describe_key(&self, row: &RowStream) -> String {
        self.spec
            .keys
            .iter()
            .enumerate()
            .map(|(i, c)| labelled(c, c.kind.render_actual(row.field(i), self.server)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn value_error(&self, c: &Col, source: ValueError) -> MergeError {
        MergeError::Value {
            side: "Synapse or MAS",
            entity: self.spec.name,
            column: c.name,
            source,
        }
    }
}

/// The report's name for a ULID time mismatch.
fn ulid_column(id: &str) -> String {
    format!("{id} (ULID time)")
}

/// A user is shown as its user id alone; anything else as `column value`.
fn labelled(c: &Col, value: String) -> String {
    match c.kind {
        super::compare::Kind::User => value,
        _ => format!("{} {value}", c.name),
    }
}

fn with_labels(key: String, labels: &[String]) -> String {
    if labels.is_empty() {
        key
    } else {
        format!("{key} ({})", labels.join(", "))
    }
}
