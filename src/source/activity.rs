//! Other sessions connected to Synapse's database (`pg_stat_activity`): a Synapse, or one of
//! its workers, that is still running.
//!
//! The `EXCLUSIVE NOWAIT` locks of the snapshot only catch a writer that holds a lock at that
//! instant. A Synapse that is idle when `migrate` starts slips past them, and a registration or
//! login that arrives during the run lands in Synapse after the migration read it: MAS never
//! gets it. So a real migration refuses while other sessions are connected; `check` reports
//! them as a warning (`W-synapse-sessions`), since Synapse may run during `check`.
//!
//! What counts: every *client backend* connected to the same database, except syn2mas's own
//! sessions (their backend pids) and the operator tools of [`OPERATOR_TOOLS`], which are listed
//! but do not count. Background processes (autovacuum, WAL senders, parallel workers) have other
//! `backend_type`s and do not count either — where the details are visible (below).
//!
//! A role without `pg_read_all_stats` sees other roles' sessions without their details:
//! `backend_type`, client address, start and state are NULL, only the pid, the role and the
//! `application_name` remain. Such a row still counts (it may be Synapse), and is described
//! with what is known.

use std::fmt;

use anyhow::{Context, Result};
use tokio_postgres::{Client, Row};

/// `application_name`s of interactive and backup tools an operator commonly keeps open on the
/// database during the maintenance window (a `psql` to watch the run, a `pg_dump` taken just
/// before it, pgAdmin), and of syn2mas itself (another `check` or `--dry-run`, which only read).
/// Synapse never announces itself under these names (psycopg2 leaves `application_name`
/// empty unless it is configured), so a session that does is trusted to be the operator's:
/// it is listed, and does not stop `migrate`. The name is whatever the client claims; a
/// `psql` that writes to Synapse's tables during the run is the operator's own doing.
pub const OPERATOR_TOOLS: &[&str] = &["psql", "pg_dump", "pg_dumpall", "syn2mas"];

/// `application_name` prefixes of the same kind (pgAdmin 4 names its sessions
/// `pgAdmin 4 - DB:…` / `pgAdmin 4 - CONN:…`).
pub const OPERATOR_TOOL_PREFIXES: &[&str] = &["pgAdmin"];

/// One other session connected to Synapse's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherSession {
    pub pid: i32,
    /// The session's role; `None` only if the role was dropped meanwhile.
    pub role: Option<String>,
    /// Empty when the client set none.
    pub application_name: String,
    /// `None` when this role may not see the session's details (no `pg_read_all_stats`).
    pub details: Option<Details>,
}

/// What `pg_stat_activity` shows of a session to a role allowed to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Details {
    /// `host:port`, or `local socket` for a Unix-domain socket.
    pub client: String,
    /// `backend_start` in UTC, to the second.
    pub backend_start: String,
    /// `idle`, `active`, `idle in transaction`, …
    pub state: String,
}

impl OtherSession {
    /// Whether this is one of the [`OPERATOR_TOOLS`]: listed, not counted.
    pub fn is_operator_tool(&self) -> bool {
        let name = self.application_name.as_str();
        OPERATOR_TOOLS.contains(&name) || OPERATOR_TOOL_PREFIXES.iter().any(|p| name.starts_with(p))
    }

    fn from_row(row: &Row) -> OtherSession {
        let visible: bool = row.get(3);
        let client = match (
            row.get::<_, Option<String>>(4),
            row.get::<_, Option<i32>>(5),
        ) {
            (Some(addr), Some(port)) if port >= 0 => format!("{addr} port {port}"),
            (Some(addr), _) => addr,
            (None, _) => "local socket".to_owned(),
        };
        OtherSession {
            pid: row.get(0),
            role: row.get(1),
            application_name: row.get(2),
            details: visible.then(|| Details {
                client,
                backend_start: row.get::<_, Option<String>>(6).unwrap_or_default(),
                state: row.get::<_, Option<String>>(7).unwrap_or_default(),
            }),
        }
    }
}

impl fmt::Display for OtherSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if self.application_name.is_empty() {
            write!(f, ", no application_name")?;
        } else {
            write!(f, ", application_name {:?}", self.application_name)?;
        }
        let role = self.role.as_deref().unwrap_or("?");
        match &self.details {
            Some(d) => write!(
                f,
                ", role {role}, from {}, connected since {} UTC, {}",
                d.client, d.backend_start, d.state
            ),
            None => write!(
                f,
                ", role {role} (client address, start and state hidden: syn2mas's role lacks \
                 pg_read_all_stats; a WAL sender or background worker of another role looks like this too)"
            ),
        }
    }
}

/// Every other client session on the database `client` is connected to, oldest first. `own`
/// are the backend pids of syn2mas's own sessions (the asking session is left out anyway).
pub async fn others(client: &Client, own: &[i32]) -> Result<Vec<OtherSession>> {
    // `backend_type` is NULL exactly when the row's details are hidden from us; `usesysid` is
    // NULL for processes that are no session of any role.
    let rows = client
        .query(
            "SELECT pid, usename::text, coalesce(application_name, ''), \
                    backend_type IS NOT NULL, host(client_addr), client_port, \
                    to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), state \
             FROM pg_catalog.pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND NOT (pid = ANY($1)) \
               AND (backend_type = 'client backend' \
                    OR (backend_type IS NULL AND usesysid IS NOT NULL)) \
             ORDER BY backend_start NULLS LAST, pid",
            &[&own],
        )
        .await
        .context("listing the other sessions connected to Synapse's database (pg_stat_activity)")?;
    Ok(rows.iter().map(OtherSession::from_row).collect())
}

/// The backend pids of `clients` (syn2mas's own sessions, left out of [`others`]).
pub async fn backend_pids(clients: &[Client]) -> Result<Vec<i32>> {
    let mut pids = Vec::with_capacity(clients.len());
    for c in clients {
        let row = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .context("asking a session for its backend pid")?;
        pids.push(row.get(0));
    }
    Ok(pids)
}

/// The other sessions, split into those that count (may be Synapse) and the operator tools.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub counted: Vec<OtherSession>,
    pub tools: Vec<OtherSession>,
}

impl Found {
    pub fn split(sessions: Vec<OtherSession>) -> Found {
        let (tools, counted) = sessions
            .into_iter()
            .partition(OtherSession::is_operator_tool);
        Found { counted, tools }
    }

    /// `  - <session>` lines.
    pub fn list(sessions: &[OtherSession]) -> String {
        sessions
            .iter()
            .map(|s| format!("  - {s}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The operator tools' line, when there are any: they are named so that nothing connected
    /// goes unmentioned.
    pub fn tools_note(&self) -> Option<String> {
        (!self.tools.is_empty()).then(|| {
            format!(
                "Operator tools connected to Synapse's database (not counted as Synapse):\n{}",
                Found::list(&self.tools)
            )
        })
    }
}

/// `migrate`'s refusal: other sessions are connected to Synapse's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynapseInUse {
    pub sessions: Vec<OtherSession>,
}

impl fmt::Display for SynapseInUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} other session(s) are connected to Synapse's database (is Synapse, or one of its \
             workers, still running?):\n{}\nStop Synapse and all its workers, then run again. If \
             these sessions are known not to write to Synapse's database, run again with \
             --allow-other-sessions. (`--dry-run` can run next to them.)",
            self.sessions.len(),
            Found::list(&self.sessions)
        )
    }
}

impl std::error::Error for SynapseInUse {}

/// `migrate`'s guard, before it reads Synapse: `Err(SynapseInUse)` when other sessions count,
/// unless `allow` (`--allow-other-sessions`), which prints them as a warning instead.
/// Operator tools are always only printed.
pub async fn refuse_other_sessions(client: &Client, own: &[i32], allow: bool) -> Result<()> {
    let found = Found::split(others(client, own).await?);
    if let Some(note) = found.tools_note() {
        tracing::warn!("{note}");
    }
    if found.counted.is_empty() {
        return Ok(());
    }
    if allow {
        tracing::warn!(
            "--allow-other-sessions: migrating although {} other session(s) are connected to \
             Synapse's database; anything they write during the run will not be in MAS:\n{}",
            found.counted.len(),
            Found::list(&found.counted)
        );
        return Ok(());
    }
    Err(SynapseInUse {
        sessions: found.counted,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(name: &str, details: bool) -> OtherSession {
        OtherSession {
            pid: 42,
            role: Some("synapse".into()),
            application_name: name.into(),
            details: details.then(|| Details {
                client: "10.0.0.5 port 40000".into(),
                backend_start: "2026-12-05 16:00:00".into(),
                state: "idle".into(),
            }),
        }
    }

    #[test]
    fn operator_tools_are_told_apart_by_exact_name_or_prefix() {
        for tool in [
            "psql",
            "pg_dump",
            "pg_dumpall",
            "syn2mas",
            "pgAdmin 4 - DB:synapse",
        ] {
            assert!(session(tool, true).is_operator_tool(), "{tool}");
        }
        for other in [
            "",
            "synapse",
            "synapse.app.generic_worker",
            "psql2",
            "syn2mas-tests",
        ] {
            assert!(!session(other, true).is_operator_tool(), "{other}");
        }
    }

    #[test]
    fn a_session_is_described_with_what_is_known() {
        assert_eq!(
            session("synapse_main", true).to_string(),
            "pid 42, application_name \"synapse_main\", role synapse, from 10.0.0.5 port 40000, \
             connected since 2026-12-05 16:00:00 UTC, idle"
        );
        let hidden = session("", false).to_string();
        assert!(
            hidden.starts_with(
                "pid 42, no application_name, role synapse (client address, start and state hidden"
            ),
            "{hidden}"
        );
        assert!(hidden.contains("pg_read_all_stats"), "{hidden}");
    }

    #[test]
    fn split_counts_everything_but_the_tools() {
        let found = Found::split(vec![session("psql", true), session("", true)]);
        assert_eq!(found.counted, vec![session("", true)]);
        assert_eq!(found.tools, vec![session("psql", true)]);
        assert!(found.tools_note().unwrap().contains("psql"));
        assert_eq!(Found::split(vec![]).tools_note(), None);
    }
}
