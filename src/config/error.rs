//! Typed configuration errors. Every variant names the file and the key path so the operator can
//! go straight to the line to fix.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: YAML syntax error at line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A YAML error the parser could not place at a line (e.g. several documents in one file).
    #[error("{path}: YAML error: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A required key that none of the merged files sets; all files are named because the key
    /// may belong in any of them.
    #[error("`{key}` is required but is not set in {}", join_paths(.paths))]
    Missing { paths: Vec<PathBuf>, key: String },
    #[error("{0}")]
    Other(String),
}

/// `a.yaml, b.yaml` for messages about a whole set of merged files.
pub(crate) fn join_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| show(p)).collect();
    if shown.is_empty() {
        "(no configuration file)".to_owned()
    } else {
        shown.join(", ")
    }
}

fn show(path: &Path) -> String {
    path.display().to_string()
}
