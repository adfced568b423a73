//! Hooks that let the test suite stop a run at an exact moment, fix its clock and split its
//! join as a large database would be split. They are compiled only with the `test-hooks`
//! feature, which the crate's own tests and benches turn on (a dev-dependency on the crate
//! itself); `cargo build --release` and `cargo install` leave them out, so no environment
//! variable can change what an operator's binary does.

/// Names a point where a run stops and waits: in order, `locked`, `schema`, `after-users`,
/// `spilled`, `index-built`, `fk-validation`, `rebuild`, `swap`, `swap-locked`, `swap-moved`,
/// `committed`, and `cleanup` (its start) and `cleanup-locked` in the cleanup after a failure
/// or signal; several separated by commas.
pub const PAUSE_ENV: &str = "SYN2MAS_TEST_PAUSE";
/// How long a pause lasts (seconds, default 600).
pub const PAUSE_SECS_ENV: &str = "SYN2MAS_TEST_PAUSE_SECS";
/// Fixes the migration's "now" (Unix ms) so two runs produce identical rows.
pub const NOW_ENV: &str = "SYN2MAS_TEST_NOW_MS";
/// Forces the number of partitions of the devices/tokens join (a power of two).
pub const PARTITIONS_ENV: &str = "SYN2MAS_TEST_PARTITIONS";
/// Lowers the bytes a partition of the devices/tokens join may hold (`spill::budget`), so a
/// small database is split (by user, then by device, then mapped in runs) as a huge one is.
pub const PARTITION_BYTES_ENV: &str = "SYN2MAS_TEST_PARTITION_BYTES";
/// Replaces the share of changed users (percent) above which a stage is not applied.
pub const FULL_ABOVE_ENV: &str = "SYN2MAS_TEST_FULL_ABOVE";

/// Waits at `point` when the tests ask for it (`SYN2MAS_TEST_PAUSE` names it, alone or in a
/// comma-separated list); nothing otherwise.
pub async fn pause(point: &str) {
    if !cfg!(feature = "test-hooks")
        || !std::env::var(PAUSE_ENV).is_ok_and(|p| p.split(',').any(|p| p == point))
    {
        return;
    }
    let secs = std::env::var(PAUSE_SECS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    eprintln!("syn2mas: paused at {point}");
    tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
}

/// The fixed "now" the tests ask for.
pub fn now_ms() -> Option<i64> {
    number(NOW_ENV)
}

/// The partition count the tests ask for (a power of two).
pub fn partitions() -> Option<usize> {
    number::<usize>(PARTITIONS_ENV).filter(|p| p.is_power_of_two())
}

/// The per-partition byte budget the tests ask for.
pub fn partition_bytes() -> Option<u64> {
    number::<u64>(PARTITION_BYTES_ENV).filter(|b| *b > 0)
}

fn number<T: std::str::FromStr>(name: &str) -> Option<T> {
    if !cfg!(feature = "test-hooks") {
        return None;
    }
    std::env::var(name).ok()?.parse().ok()
}

/// The share of changed users the tests ask a stage to be applied up to (percent).
pub fn full_above() -> Option<u64> {
    number(FULL_ABOVE_ENV)
}
