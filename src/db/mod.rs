//! Everything that talks to PostgreSQL at the protocol level: connections (TLS, sockets, libpq
//! environment), the binary COPY codec, snapshots and locks.

pub mod connect;
pub mod copy_binary;

pub use connect::{ConnectError, ConnectOptions, Pem, SslMode};
