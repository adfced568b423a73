//! Process exit codes, shared by every subcommand (compatible with `mas-cli syn2mas`).

/// Everything went fine.
pub const OK: u8 = 0;
/// Anything else: configuration, connection, migration failure.
pub const FAILURE: u8 = 1;
/// `check` (or the checks `migrate` runs first) found at least one error.
pub const CHECK_ERRORS: u8 = 10;
/// `check` found warnings only (and `migrate` refuses them without `--allow-warnings`).
pub const CHECK_WARNINGS: u8 = 11;
/// Interrupted by SIGINT (Ctrl-C); everything was rolled back. (128 + the signal number, as a
/// shell reports a process killed by it.)
pub const INTERRUPTED: u8 = 130;
/// Stopped by SIGTERM (`docker stop`, systemd, Kubernetes); everything was rolled back.
pub const TERMINATED: u8 = 143;
/// Stopped by SIGHUP (the SSH session or terminal went away); everything was rolled back.
pub const HANGUP: u8 = 129;
