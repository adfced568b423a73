//! Everything that talks to PostgreSQL at the protocol level: connections (TLS, sockets, libpq
//! environment), the binary COPY codec, snapshots and locks.

pub mod connect;
pub mod copy_binary;

pub use connect::{ConnectError, ConnectOptions, Pem, SslMode};

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
