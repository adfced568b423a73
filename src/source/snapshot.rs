//! One consistent view of Synapse for the whole run, shareable across connections.
//!
//! The first connection opens a `REPEATABLE READ READ ONLY` transaction, locks the six tables
//! (EXCLUSIVE for a real run, so a Synapse that still writes is detected instead of racing us;
//! ACCESS SHARE for dry-run, which must be safe next to a running Synapse) and exports its
//! snapshot; further connections import it and read exactly the same state in parallel.

use anyhow::{Context, bail};
use tokio_postgres::Client;

use super::Entity;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Blocks Synapse's writes, allows reads: the real migration.
    Exclusive,
    /// Blocks nothing Synapse does: dry-run.
    AccessShare,
}

impl LockMode {
    fn sql(self) -> &'static str {
        match self {
            LockMode::Exclusive => "EXCLUSIVE",
            LockMode::AccessShare => "ACCESS SHARE",
        }
    }
}

/// Opens the snapshot on `client` and returns its id for `join`.
pub async fn open(client: &Client, mode: LockMode) -> anyhow::Result<String> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .context("starting the read transaction on Synapse")?;
    for entity in Entity::ALL {
        let sql = format!("LOCK TABLE {} IN {} MODE NOWAIT", entity.name(), mode.sql());
        if let Err(e) = client.batch_execute(&sql).await {
            if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                bail!(
                    "Synapse's table `{}` is in use by another session (is Synapse still running?). \
                     Stop Synapse and its workers before `syn2mas migrate`; `--dry-run` can run next to it.",
                    entity.name()
                );
            }
            return Err(e).with_context(|| format!("locking Synapse table `{}`", entity.name()));
        }
    }
    let row = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .context("exporting the Synapse snapshot")?;
    Ok(row.get(0))
}

/// Makes `client` read from the snapshot exported by `open`.
pub async fn join(client: &Client, snapshot: &str) -> anyhow::Result<()> {
    // SET TRANSACTION SNAPSHOT takes no parameters; the id comes from the server itself, and
    // is checked to be the hex-and-dashes form before it is quoted into the statement.
    if snapshot.is_empty() || !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        bail!("unexpected snapshot id from Synapse's server");
    }
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"
        ))
        .await
        .context("joining the Synapse snapshot")?;
    Ok(())
}
