//! `syn2mas check`: every pre-cutover check, strictly read-only on both databases.
//!
//! Promise: if `check` passes, `migrate` will not fail on data or configuration. `migrate` runs
//! the same checks first and refuses on errors (and on warnings without `--allow-warnings`).

pub mod report;

pub use report::{DatabaseInfo, Finding, Report, Severity};
