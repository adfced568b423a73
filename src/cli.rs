//! Command-line definitions (clap derive) only; `main.rs` turns them into actions.
//!
//! The flag names and their global placement follow `mas-cli syn2mas` so operators' scripts keep
//! working when they switch tools.

use crate::secret::Secret;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// `syn2mas --version`: the crate version and the git commit it was built from (`build.rs`;
/// "unknown" when built outside a git checkout without `SYN2MAS_GIT_COMMIT`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SYN2MAS_GIT_COMMIT"),
    ")"
);

/// The git commit alone, as `build.rs` found it.
pub const GIT_COMMIT: &str = env!("SYN2MAS_GIT_COMMIT");

#[derive(Debug, Parser)]
#[command(
    name = "syn2mas",
    version = VERSION,
    about = "Move a Matrix homeserver's accounts from Synapse into Matrix Authentication Service",
    long_about = "Move a Matrix homeserver's accounts from Synapse's PostgreSQL database into Matrix \
                  Authentication Service (MAS).\n\nRun `syn2mas check` days before the cutover, \
                  `syn2mas migrate --dry-run` to rehearse, and `syn2mas migrate` in the maintenance \
                  window while Synapse is stopped.\n\nExit codes: 0 ok; 10 check errors; 11 check \
                  warnings only; 130 interrupted (rolled back); 1 anything else."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct GlobalArgs {
    /// MAS configuration file; repeat to merge several (default: $MAS_CONFIG, colon-separated, else config.yaml)
    #[arg(short = 'c', long = "config", global = true, value_name = "MAS.yaml")]
    pub config: Vec<PathBuf>,

    /// Synapse configuration file (homeserver.yaml); repeat to merge several, later files win
    #[arg(long = "synapse-config", global = true, value_name = "HOMESERVER.yaml")]
    pub synapse_config: Vec<PathBuf>,

    /// Connect to Synapse's database with this postgresql:// URI instead of homeserver.yaml's `database`
    #[arg(long, global = true, value_name = "URI")]
    pub synapse_database_uri: Option<String>,

    /// Connect to MAS's database with this postgresql:// URI instead of config.yaml's `database`
    #[arg(long, global = true, value_name = "URI")]
    pub mas_database_uri: Option<String>,

    /// Treat external ids of providers unknown to Synapse as a warning and skip them when migrating
    #[arg(long, global = true)]
    pub ignore_missing_auth_providers: bool,

    /// Print the result as one JSON document on stdout (human text still goes to stderr)
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output (-v: debug, -vv: trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less output: errors only, no progress bars
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// When to use colours and progress bars on the terminal
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Format of the log lines on stderr: `json` makes every stderr line one JSON object (for log collectors)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Write the JSON summary and, per Synapse table, every skipped or refused row (JSON Lines;
    /// user ids and keys, never a token, hash or password) into DIR (check, migrate, verify)
    #[arg(long, global = true, value_name = "DIR")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check configuration and both databases without changing anything (safe while Synapse runs)
    Check,
    /// Run the preflight checks, then migrate Synapse's accounts into MAS, all or nothing (bad rows stop it, exit 10)
    Migrate(MigrateArgs),
    /// Build the stage while Synapse runs: everything `migrate` would write, indexed, in MAS's `syn2mas_stage` schema; MAS's own tables are untouched. `migrate` then applies only what changed since
    Prestage(PrestageArgs),
    /// Show (`status`) or remove (`drop`) the stage `prestage` built
    Stage {
        #[command(subcommand)]
        action: StageAction,
    },
    /// Compare Synapse with the migrated MAS database row by row, read-only; exit 10 on any difference
    Verify,
    /// Create two demo databases from the bundled fixture on the local PostgreSQL, then check and migrate them
    Demo,
    /// Print a shell completion script for bash, zsh or fish on stdout
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout, or write one page per command into a folder
    Man {
        /// Write syn2mas.1 and syn2mas-<command>.1 into this folder instead
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand, Clone, Copy)]
pub enum StageAction {
    /// When the stage was taken, its rows, whether `migrate` can use it, and how many Synapse users changed since (exact; reads Synapse's six tables once)
    Status,
    /// Remove the stage (MAS's own tables are not touched)
    Drop,
}

/// What `prestage` and `migrate` both take: one definition of each flag.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Go on although the checks found warnings (errors always stop the run)
    #[arg(long)]
    pub allow_warnings: bool,

    /// Run every `check` (and its exact plan) first, not only the preflight checks; row-level
    /// problems are then refused before anything starts instead of when the run reads the row
    /// (costs ~15 s per million users)
    #[arg(long)]
    pub full_check: bool,

    /// Derive every generated id from this seed instead of fresh randomness (reproducible runs, tests)
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Number of PostgreSQL sessions building indexes and constraints on MAS in parallel
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub rebuild_sessions: usize,

    /// work_mem of each Synapse read session and MAS rebuild session, e.g. 64MB (default:
    /// derived from each server's settings and the session counts; see the README)
    #[arg(long, value_name = "SIZE", value_parser = crate::memory::parse_work_mem)]
    pub work_mem: Option<crate::memory::MemSize>,

    /// maintenance_work_mem of each MAS rebuild session, e.g. 512MB (default: derived from MAS's
    /// server's settings and --rebuild-sessions; see the README)
    #[arg(long, value_name = "SIZE", value_parser = crate::memory::parse_maintenance_work_mem)]
    pub maintenance_work_mem: Option<crate::memory::MemSize>,
}

#[derive(Debug, Args, Clone)]
pub struct PrestageArgs {
    /// Build a new stage even when the existing one could be refreshed with what changed since
    #[arg(long)]
    pub rebuild: bool,

    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args, Clone)]
pub struct MigrateArgs {
    /// Run the whole migration, then roll it back: MAS is left exactly as it was (safe while Synapse runs)
    #[arg(long)]
    pub dry_run: bool,

    /// Migrate everything even when a stage from `syn2mas prestage` exists (the stage is left as it is)
    #[arg(long)]
    pub no_stage: bool,

    /// Migrate even though other sessions are connected to Synapse's database (only when they
    /// are known not to write to it: anything written during the run is not migrated)
    #[arg(long)]
    pub allow_other_sessions: bool,

    #[command(flatten)]
    pub run: RunArgs,
}

impl PrestageArgs {
    /// The migration's arguments a prestage runs with.
    pub fn as_migrate(&self) -> MigrateArgs {
        MigrateArgs {
            dry_run: false,
            no_stage: self.rebuild,
            // A prestage runs next to Synapse; it is never refused for its sessions.
            allow_other_sessions: false,
            run: self.run.clone(),
        }
    }
}

/// By hand, so that the database URIs, which may hold a password, show as `[redacted]`.
impl std::fmt::Debug for GlobalArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |uri: &Option<String>| uri.as_ref().map(|_| Secret::default());
        f.debug_struct("GlobalArgs")
            .field("config", &self.config)
            .field("synapse_config", &self.synapse_config)
            .field(
                "synapse_database_uri",
                &redacted(&self.synapse_database_uri),
            )
            .field("mas_database_uri", &redacted(&self.mas_database_uri))
            .field(
                "ignore_missing_auth_providers",
                &self.ignore_missing_auth_providers,
            )
            .field("json", &self.json)
            .field("verbose", &self.verbose)
            .field("quiet", &self.quiet)
            .field("color", &self.color)
            .field("log_format", &self.log_format)
            .field("report", &self.report)
            .finish()
    }
}

impl GlobalArgs {
    /// MAS config files: `--config`, else `$MAS_CONFIG` (colon-separated), else `config.yaml`,
    /// the same fallback chain as `mas-cli`.
    pub fn mas_config_files(&self) -> Vec<PathBuf> {
        if !self.config.is_empty() {
            return self.config.clone();
        }
        match std::env::var_os("MAS_CONFIG") {
            Some(v) if !v.is_empty() => std::env::split_paths(&v).collect(),
            _ => vec![PathBuf::from("config.yaml")],
        }
    }
}

/// `syn2mas completions SHELL`: the completion script, generated from the definitions above.
pub fn write_completions(
    shell: clap_complete::Shell,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    // Generated into memory first: clap_complete panics when its writer fails (a closed pipe).
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "syn2mas", &mut buf);
    out.write_all(&buf)?;
    out.flush()
}

/// `syn2mas man`: the top-level man page (roff), generated from the definitions above.
pub fn write_man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(out)
}

/// `syn2mas man --dir DIR`: `syn2mas.1` and one `syn2mas-<command>.1` per subcommand. Returns
/// the files written.
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let cmd = <Cli as clap::CommandFactory>::command();
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut write = |name: String, page: clap::Command| -> std::io::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        clap_mangen::Man::new(page).render(&mut file)?;
        std::io::Write::flush(&mut file)?;
        written.push(path);
        Ok(())
    };
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("syn2mas-{}", sub.get_name());
        // The page's title is the display name, its synopsis the bin name.
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("syn2mas {}", sub.get_name()))
            .version(VERSION);
        write(name, page)?;
    }
    write("syn2mas".to_owned(), cmd)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_are_accepted_before_and_after_the_subcommand() {
        let a = Cli::try_parse_from([
            "syn2mas",
            "-c",
            "mas.yaml",
            "--synapse-config",
            "hs.yaml",
            "migrate",
            "--dry-run",
        ])
        .unwrap();
        let b = Cli::try_parse_from([
            "syn2mas",
            "migrate",
            "--dry-run",
            "-c",
            "mas.yaml",
            "--synapse-config",
            "hs.yaml",
        ])
        .unwrap();
        assert_eq!(a.global.config, b.global.config);
        assert_eq!(a.global.synapse_config, b.global.synapse_config);
        assert!(matches!(a.command, Command::Migrate(ref m) if m.dry_run));
        assert!(matches!(b.command, Command::Migrate(ref m) if m.dry_run));
    }

    #[test]
    fn dry_run_is_only_a_migrate_flag() {
        assert!(Cli::try_parse_from(["syn2mas", "check", "--dry-run"]).is_err());
    }
}
