//! The configuration loaders on arbitrary file contents: the input is written to a file that
//! both Synapse's and MAS's loader read (seed the corpus with `fixtures/config/*`). Loading may
//! fail with an error, never panic; a loaded config's `Debug` (which must redact secrets) must
//! not panic either.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use syn2mas::config::{load_mas_with_env, load_synapse_with_env};

/// One file, rewritten for every input (inputs run one at a time in a process).
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        // A RAM disk where there is one: the file is rewritten for every input.
        let base = std::path::Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("syn2mas-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz temp dir");
        dir.join("config.yaml")
    })
}

fn no_env(_: &str) -> Option<String> {
    None
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    std::fs::write(path, data).expect("write the fuzz input");
    let paths = std::slice::from_ref(path);
    if let Ok(config) = load_synapse_with_env(paths, &no_env) {
        let _ = format!("{config:?}");
    }
    if let Ok(config) = load_mas_with_env(paths, &no_env) {
        let _ = format!("{config:?}");
    }
});
