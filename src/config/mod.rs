//! The two configuration files syn2mas reads: Synapse's `homeserver.yaml` and MAS's `config.yaml`.
//!
//! Only the keys syn2mas needs are modelled; everything else is ignored, as Synapse and MAS ignore
//! keys they do not know. The loaders live next to their types (`synapse.rs`, `mas.rs`); the
//! merge rules (Synapse: later file replaces whole top-level keys; MAS: deep merge) in `merge.rs`;
//! the file-and-key-aware reader both use in `tree.rs`.

pub mod error;
pub mod mas;
pub mod merge;
pub mod synapse;
mod tree;

pub use error::ConfigError;
pub use mas::{MasConfig, PasswordScheme, UpstreamProvider, load_mas, load_mas_with_env};
pub use synapse::{
    PasswordEnabled, SynapseConfig, SynapseOidcProvider, load_synapse, load_synapse_with_env,
};
