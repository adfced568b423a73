//! Everything that talks to PostgreSQL at the protocol level: connections (TLS, sockets, libpq
//! environment), the binary COPY codec, snapshots and locks.

pub mod connect;
pub mod copy_binary;

pub use connect::{ConnectError, ConnectOptions, Pem, SslMode};

use anyhow::Context;
use tokio_postgres::GenericClient;

/// A schema of syn2mas's own in MAS (its shadow tables, its stage), recognised by the comment
/// syn2mas gives it when it creates it.
#[derive(Debug, Clone, Copy)]
pub struct OwnSchema {
    pub name: &'static str,
    /// The comment syn2mas puts on it.
    pub mark: &'static str,
    /// What syn2mas keeps in it, for messages ("shadow tables", "stage").
    pub holds: &'static str,
}

impl OwnSchema {
    /// Whether the schema exists. A schema of that name without syn2mas's mark is not ours:
    /// syn2mas refuses to touch it rather than drop or fill someone else's schema.
    pub async fn exists(&self, client: &impl GenericClient) -> anyhow::Result<bool> {
        let comment: Option<Option<String>> = client
            .query_opt(
                "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = $1",
                &[&self.name],
            )
            .await
            .with_context(|| format!("looking for syn2mas's {}", self.holds))?
            .map(|r| r.get(0));
        match comment {
            None => Ok(false),
            Some(Some(m)) if m == self.mark => Ok(true),
            Some(_) => anyhow::bail!(
                "the MAS database has a schema `{}` that syn2mas did not create; syn2mas needs that name for its {}. Rename or drop it",
                self.name,
                self.holds
            ),
        }
    }
}

/// A PostgreSQL error without its DETAIL line. A failed unique index or foreign key reports the
/// offending key there, and on MAS's tables that key can be an access or refresh token; the
/// message, the constraint and the table are enough to act on.
pub fn without_detail(e: tokio_postgres::Error) -> anyhow::Error {
    match e.as_db_error() {
        Some(db) => {
            let mut msg = format!("{}: {}", db.severity(), db.message());
            if let Some(c) = db.constraint() {
                msg.push_str(&format!(" (constraint {c})"));
            }
            if let Some(h) = db.hint() {
                msg.push_str(&format!("\nHINT: {h}"));
            }
            anyhow::anyhow!(msg)
        }
        None => e.into(),
    }
}
