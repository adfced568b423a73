//! Code shared by the `generate` and `run` bench targets: a deterministic generator of Synapse
//! account data and the MAS database/config it is migrated into.

pub mod copybuf;
pub mod encode;
pub mod mas;
pub mod model;
pub mod pg;
pub mod plan;
pub mod rng;
pub mod schema;
pub mod synapse;
pub mod tables;
