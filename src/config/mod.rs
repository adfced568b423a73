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

/// The most syn2mas reads from any file: a configuration file, or a file one names (secret and
/// password files, certificates and keys). Far more than any of them needs; the bound keeps a
/// path such as `/dev/zero` or a mistyped disk image from being read until memory runs out.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads a whole file, refusing one larger than [`MAX_FILE_BYTES`] (or endless).
pub fn read_file_capped(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "larger than {} MiB, far more than a configuration, secret or certificate file holds",
                MAX_FILE_BYTES >> 20
            ),
        ));
    }
    Ok(bytes)
}
