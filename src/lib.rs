//! syn2mas: move a Matrix homeserver's accounts from Synapse's PostgreSQL database into
//! Matrix Authentication Service (MAS).
//!
//! The crate is a library plus a thin binary so that integration tests and benchmarks can drive
//! the same code paths the operator runs.

pub mod check;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod exit;
pub mod memory;
pub mod migrate;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod secret;
pub mod sink;
pub mod source;
pub mod stage;
pub mod test_hooks;
pub mod transform;
pub mod verify;
