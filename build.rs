//! Puts the git commit the binary was built from into `SYN2MAS_GIT_COMMIT` (shown by
//! `syn2mas --version`).
//!
//! Where it comes from, first match wins:
//! 1. the environment variable `SYN2MAS_GIT_COMMIT` at build time (the container build passes it
//!    as a build argument: the build context has no `.git`);
//! 2. `git rev-parse --short=12 HEAD` in the source tree (a clone, a worktree, `cargo install
//!    --git`, which builds from a checkout);
//! 3. `unknown` (a source tarball, no git installed).

use std::path::Path;
use std::process::Command;

const VAR: &str = "SYN2MAS_GIT_COMMIT";

fn main() {
    println!("cargo:rerun-if-env-changed={VAR}");
    println!("cargo:rerun-if-changed=build.rs");
    let commit = std::env::var(VAR)
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .or_else(from_git)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env={VAR}={commit}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env_dir())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn env_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned())
}

fn from_git() -> Option<String> {
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    if !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // Build again when HEAD moves: HEAD itself (a checkout, in a worktree too), the branch it
    // points at, and packed-refs (where `git gc` moves branch tips).
    let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(git(&["rev-parse", "--git-path", &branch]));
    }
    watch.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watch.into_iter().flatten() {
        let path = Path::new(&env_dir()).join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    Some(commit)
}
