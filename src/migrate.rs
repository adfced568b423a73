//! Orchestrates a migration.
