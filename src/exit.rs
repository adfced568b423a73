//! Process exit codes, shared by every subcommand (compatible with `mas-cli syn2mas`).

/// Everything went fine.
pub const OK: u8 = 0;
/// Anything else: configuration, connection, migration failure.
pub const FAILURE: u8 = 1;
/// `check` (or the checks `migrate` runs first) found at least one error.
pub const CHECK_ERRORS: u8 = 10;
/// `check` found warnings only (and `migrate` refuses them without `--allow-warnings`).
pub const CHECK_WARNINGS: u8 = 11;
/// Interrupted by SIGINT (Ctrl-C); everything was rolled back.
pub const INTERRUPTED: u8 = 130;
