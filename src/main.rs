//! `syn2mas`: parse the command line, set up logging, run, map the outcome to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use syn2mas::check::{self, CheckInputs, Report};
use syn2mas::cli::{
    Cli, ColorChoice, Command, GlobalArgs, LogFormat, MigrateArgs, RunArgs, StageAction,
};
use syn2mas::config::{self, MasConfig, SynapseConfig};
use syn2mas::db::ConnectOptions;
use syn2mas::exit;
use syn2mas::migrate::{self, MigrateOptions, Sessions};
use syn2mas::progress::Progress;
use syn2mas::report::ReportDir;
use syn2mas::source::activity::SynapseInUse;
use syn2mas::transform::{RowError, Warnings};

/// Target of the events that carry what is otherwise plain text on stderr (reports, refusals)
/// with `--log-format json`; always let through, since the code decides what `-q` hides.
const STDERR_TARGET: &str = "syn2mas::stderr";

/// `--log-format`, set once by `init_tracing`.
static LOG_FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

#[derive(Clone, Copy)]
enum Level {
    Error,
    Warn,
    Info,
}

/// Human text for stderr: as is, or with `--log-format json` as one log record (the text in
/// `fields.message`), so that every stderr line is a JSON object.
fn say(level: Level, text: &str) {
    let text = text.trim_end();
    match (LOG_FORMAT.get().copied().unwrap_or(LogFormat::Text), level) {
        (LogFormat::Text, _) => eprintln!("{text}"),
        (LogFormat::Json, Level::Error) => tracing::error!(target: STDERR_TARGET, "{text}"),
        (LogFormat::Json, Level::Warn) => tracing::warn!(target: STDERR_TARGET, "{text}"),
        (LogFormat::Json, Level::Info) => tracing::info!(target: STDERR_TARGET, "{text}"),
    }
}

/// Renders a human report for stderr, then `say`s it.
fn say_rendered(
    level: Level,
    render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    render(&mut buf)?;
    say(level, &String::from_utf8_lossy(&buf));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.global);
    // One thread for all I/O: the CPU work runs on rayon's pool, and a single I/O thread saves
    // the cross-thread wake-ups of the per-row COPY messages (~15 % of syn2mas's CPU at 1M
    // users with the multi-threaded scheduler), which PostgreSQL needs on a small machine.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(
                Level::Error,
                &format!("Error: cannot start the async runtime: {e}"),
            );
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            say(Level::Error, &format!("Error: {e:#}"));
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// Logs go to stderr. Other crates are held at `warn` whatever the verbosity: their debug
/// output could echo statements or connection details we have not vetted for secrets.
fn init_tracing(g: &GlobalArgs) {
    let level = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::new(format!("warn,syn2mas={level},{STDERR_TARGET}=info"));
    let ansi = match g.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::io::stderr().is_terminal(),
    };
    let _ = LOG_FORMAT.set(g.log_format);
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match g.log_format {
        LogFormat::Text => fmt.with_ansi(ansi).init(),
        // One JSON object per line: {"timestamp", "level", "fields": {"message", ...}}.
        LogFormat::Json => fmt
            .json()
            .with_ansi(false)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Everything both subcommands need before they differ.
struct Loaded {
    synapse: SynapseConfig,
    mas: MasConfig,
    synapse_db: ConnectOptions,
    mas_db: ConnectOptions,
}

fn load(g: &GlobalArgs) -> anyhow::Result<Loaded> {
    if g.synapse_config.is_empty() {
        anyhow::bail!(
            "Please specify the path to the Synapse configuration file(s) with --synapse-config."
        );
    }
    let synapse = config::load_synapse(&g.synapse_config)?;
    let mas = config::load_mas(&g.mas_config_files())?;
    let synapse_db = match &g.synapse_database_uri {
        Some(uri) => ConnectOptions::from_uri(uri)
            .map_err(|e| anyhow::anyhow!("--synapse-database-uri: {e}"))?
            .with_libpq_env(),
        None => synapse.database.clone().context(
            "homeserver.yaml has no `database` section; give one, or --synapse-database-uri",
        )?,
    };
    let mas_db = match &g.mas_database_uri {
        Some(uri) => ConnectOptions::from_uri(uri)
            .map_err(|e| anyhow::anyhow!("--mas-database-uri: {e}"))?
            .with_libpq_env(),
        None => mas.database.clone(),
    };
    Ok(Loaded {
        synapse,
        mas,
        synapse_db,
        mas_db,
    })
}

async fn run(mut cli: Cli) -> anyhow::Result<u8> {
    listen_for_signals();
    match &cli.command {
        Command::Completions { shell } => {
            let mut out = std::io::stdout().lock();
            syn2mas::cli::write_completions(*shell, &mut out)?;
            return Ok(exit::OK);
        }
        Command::Man { dir: None } => {
            syn2mas::cli::write_man_page(&mut std::io::stdout().lock())?;
            return Ok(exit::OK);
        }
        Command::Man { dir: Some(dir) } => {
            let written = syn2mas::cli::write_man_pages(dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            for path in written {
                println!("{}", path.display());
            }
            return Ok(exit::OK);
        }
        _ => {}
    }
    if matches!(cli.command, Command::Demo) {
        let configs = syn2mas::demo::prepare().await?;
        cli.global.config = vec![configs.mas];
        cli.global.synapse_config = vec![configs.homeserver];
        cli.command = Command::Migrate(MigrateArgs {
            dry_run: false,
            no_stage: false,
            allow_other_sessions: false,
            run: RunArgs {
                allow_warnings: true,
                full_check: true,
                seed: None,
                rebuild_sessions: 2,
                work_mem: None,
                maintenance_work_mem: None,
            },
        });
    }
    let g = &cli.global;
    let l = load(g)?;
    let report_dir = match &g.report {
        Some(dir) => Some(Arc::new(ReportDir::create(dir)?)),
        None => None,
    };
    if let Command::Stage { action } = cli.command {
        return stage_command(g, &l, action).await;
    }
    if let Command::Verify = cli.command {
        return tokio::select! {
            r = verify(g, &l, report_dir.as_deref()) => r,
            stop = stop_signal() => Ok(stopped_read_only(stop)),
        };
    }
    let progress = progress_for(g);
    let inputs = CheckInputs {
        synapse: &l.synapse,
        mas: &l.mas,
        synapse_db: &l.synapse_db,
        mas_db: &l.mas_db,
        ignore_missing_auth_providers: g.ignore_missing_auth_providers,
        scope: match &cli.command {
            Command::Migrate(m) if !m.run.full_check => check::Scope::Preflight,
            Command::Prestage(p) if !p.run.full_check => check::Scope::Preflight,
            _ => check::Scope::Full,
        },
        progress: &progress,
        // `migrate` reports the rows it skips itself; its check would report them twice.
        report: match &cli.command {
            Command::Check => report_dir.clone(),
            _ => None,
        },
        other_sessions: matches!(cli.command, Command::Check),
    };
    let checked = check::run(&inputs);
    let report = tokio::select! {
        r = checked => r?,
        stop = stop_signal() => return Ok(stopped_read_only(stop)),
    };
    match &cli.command {
        Command::Check => {
            print_report(g, &report)?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            }
            if let Some(dir) = &report_dir {
                dir.finish(&report.to_json())?;
            }
            Ok(report.exit_code())
        }
        Command::Migrate(args) => {
            let run = Run {
                g,
                args,
                prestage: false,
                l: &l,
                progress: &progress,
                report_dir,
            };
            run.migrate_after_check(report).await
        }
        Command::Prestage(p) => {
            let args = p.as_migrate();
            let run = Run {
                g,
                args: &args,
                prestage: true,
                l: &l,
                progress: &progress,
                report_dir,
            };
            run.migrate_after_check(report).await
        }
        Command::Demo => unreachable!("demo runs as migrate"),
        Command::Verify
        | Command::Stage { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => {
            unreachable!("returned above")
        }
    }
}

/// `syn2mas stage status|drop`.
async fn stage_command(g: &GlobalArgs, l: &Loaded, action: StageAction) -> anyhow::Result<u8> {
    let mut mas = l.mas_db.connect("MAS").await?;
    match action {
        StageAction::Drop => {
            let had = syn2mas::stage::drop(&mut mas).await?;
            say(
                Level::Info,
                if had {
                    "The stage was dropped; MAS's own tables were not touched."
                } else {
                    "There is no stage."
                },
            );
            Ok(exit::OK)
        }
        StageAction::Status => {
            let synapse = l.synapse_db.connect("Synapse").await?;
            let status = syn2mas::stage::status(
                &synapse,
                &mas,
                &l.mas,
                g.ignore_missing_auth_providers,
                true,
            )
            .await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                status.render_human(&mut std::io::stdout().lock())?;
            }
            Ok(exit::OK)
        }
    }
}

/// `syn2mas verify`: the report on stdout (with `--json`: JSON on stdout, text on stderr).
async fn verify(g: &GlobalArgs, l: &Loaded, report_dir: Option<&ReportDir>) -> anyhow::Result<u8> {
    let report = syn2mas::verify::run(&syn2mas::verify::VerifyInputs {
        mas: &l.mas,
        synapse_db: &l.synapse_db,
        mas_db: &l.mas_db,
    })
    .await?;
    if g.json {
        let level = if report.ok() {
            Level::Info
        } else {
            Level::Warn
        };
        say_rendered(level, |w| report.render_human(w))?;
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else if !g.quiet || !report.ok() {
        report.render_human(&mut std::io::stdout().lock())?;
    }
    if let Some(dir) = report_dir {
        dir.finish(&report.to_json())?;
    }
    Ok(report.exit_code())
}

/// Bars on a terminal, periodic log lines otherwise, nothing with `--quiet`.
fn progress_for(g: &GlobalArgs) -> Progress {
    let draw = !g.quiet
        && match g.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => std::io::stderr().is_terminal(),
        };
    Progress::new(draw, !g.quiet).lines_as_logs(g.log_format == LogFormat::Json)
}

/// `check` or `verify` stopped by a signal: nothing to undo.
fn stopped_read_only(stop: Stop) -> u8 {
    say(
        Level::Warn,
        &format!(
            "Interrupted by {}: stopped; nothing was changed.",
            stop.name()
        ),
    );
    stop.code()
}

fn print_report(g: &GlobalArgs, report: &Report) -> anyhow::Result<()> {
    if !g.quiet || report.exit_code() != exit::OK {
        let level = match report.exit_code() {
            exit::OK => Level::Info,
            exit::CHECK_WARNINGS => Level::Warn,
            _ => Level::Error,
        };
        say_rendered(level, |w| report.render_human(w))?;
    }
    Ok(())
}

/// A `migrate` after its check: the inputs every outcome needs.
struct Run<'a> {
    g: &'a GlobalArgs,
    args: &'a MigrateArgs,
    /// `syn2mas prestage`: the run builds the stage.
    prestage: bool,
    l: &'a Loaded,
    progress: &'a Progress,
    report_dir: Option<Arc<ReportDir>>,
}

impl Run<'_> {
    /// Writes `--report`'s summary: the check and how the migration ended. A report that
    /// cannot be written is a warning, never the run's outcome: after a committed migration,
    /// an exit code other than the migration's own would tell the operator something false.
    fn summary(&self, check: &Report, ended: serde_json::Value) -> anyhow::Result<()> {
        if let Some(dir) = &self.report_dir {
            let mut doc = serde_json::json!({ "check": check.to_json() });
            if let (Some(doc), Some(ended)) = (doc.as_object_mut(), ended.as_object()) {
                doc.extend(ended.clone());
            }
            if let Err(e) = dir.finish(&doc) {
                say(
                    Level::Warn,
                    &format!("warning: the report could not be completed: {e:#}"),
                );
            }
        }
        Ok(())
    }

    async fn migrate_after_check(&self, report: Report) -> anyhow::Result<u8> {
        let (g, args, l) = (self.g, self.args, self.l);
        print_report(g, &report)?;
        let errors = report.errors().count();
        let warnings: Vec<&str> = report
            .warnings()
            .map(|w| w.id.as_str())
            .filter(|id| !check::ids::HANDLED_BY_MIGRATE.contains(id))
            .collect();
        if errors > 0 {
            say(
                Level::Error,
                &format!(
                    "Refusing to migrate: the checks found {errors} error(s). Nothing was changed."
                ),
            );
            self.summary(&report, serde_json::json!({ "refused": "check errors" }))?;
            return Ok(exit::CHECK_ERRORS);
        }
        if !warnings.is_empty() && !args.run.allow_warnings {
            say(
                Level::Error,
                &format!(
                    "Refusing to migrate with warnings ({}). Review them, then run again with --allow-warnings.",
                    warnings.join(", ")
                ),
            );
            self.summary(&report, serde_json::json!({ "refused": "check warnings" }))?;
            return Ok(exit::CHECK_WARNINGS);
        }
        let opts = MigrateOptions {
            dry_run: args.dry_run,
            allow_warnings: args.run.allow_warnings,
            report: self.report_dir.clone(),
            seed: args.run.seed,
            rebuild_sessions: args.run.rebuild_sessions,
            ignore_missing_auth_providers: g.ignore_missing_auth_providers,
            prestage: self.prestage,
            no_stage: args.no_stage,
            allow_other_sessions: args.allow_other_sessions,
            memory: syn2mas::memory::Requested {
                work_mem: args.run.work_mem,
                maintenance_work_mem: args.run.maintenance_work_mem,
            },
        };
        let sessions = Sessions::default();
        let outcome = tokio::select! {
            r = migrate::run(&l.synapse_db, &l.mas_db, &l.mas, report.plan.as_ref(), &opts, self.progress, &sessions) => Ok(r),
            stop = stop_signal() => Err(stop),
        };
        match outcome {
            Ok(Ok(summary)) => {
                self.progress.finish();
                if g.json {
                    say_rendered(Level::Info, |w| summary.render_human(w))?;
                    let doc = serde_json::json!({ "check": report.to_json(), "migrate": summary });
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                } else if !g.quiet {
                    summary.render_human(&mut std::io::stdout().lock())?;
                }
                self.summary(&report, serde_json::json!({ "migrate": summary }))?;
                Ok(exit::OK)
            }
            Ok(Err(e)) => {
                if let Some(code) = self.stopped_or_committed(&sessions, None).await? {
                    return Ok(code);
                }
                if let Some(row) = e.chain().find_map(|c| c.downcast_ref::<RowError>()) {
                    // A row the preflight checks could not see: the same kind of problem `check`
                    // reports as an error, found while reading, so the same exit code.
                    say(
                        Level::Error,
                        &format!(
                            "Refusing to migrate: {row}.\nNothing was changed in MAS. `syn2mas check` lists \
                         every such row; fix them in Synapse and run again."
                        ),
                    );
                    if let Some(dir) = &self.report_dir {
                        dir.refused(row)?;
                    }
                    self.summary(&report, serde_json::json!({ "refused": row.to_string() }))?;
                    return Ok(exit::CHECK_ERRORS);
                }
                if let Some(busy) = e.chain().find_map(|c| c.downcast_ref::<SynapseInUse>()) {
                    // The same exit code as the lock that finds a Synapse still writing.
                    say(
                        Level::Error,
                        &format!("Refusing to migrate: {busy}\nNothing was changed in MAS."),
                    );
                    let refused = "other sessions are connected to Synapse's database";
                    self.summary(&report, serde_json::json!({ "refused": refused }))?;
                    return Ok(exit::FAILURE);
                }
                if let Some(w) = e.chain().find_map(|c| c.downcast_ref::<Warnings>()) {
                    say(
                        Level::Error,
                        &format!(
                            "Refusing to migrate with warnings: {w}. Nothing was changed in MAS. \
                             Review them with `syn2mas check`, then run again with --allow-warnings."
                        ),
                    );
                    self.summary(&report, serde_json::json!({ "refused": w.to_string() }))?;
                    return Ok(exit::CHECK_WARNINGS);
                }
                self.summary(&report, serde_json::json!({ "failed": format!("{e:#}") }))?;
                Err(e
                    .context("the migration failed; MAS was left exactly as it was before the run"))
            }
            Err(stop) => {
                if let Some(code) = self.stopped_or_committed(&sessions, Some(stop)).await? {
                    return Ok(code);
                }
                say(
                    Level::Warn,
                    &format!(
                        "Interrupted by {}: the migration was rolled back; MAS is exactly as it was before the run.",
                        stop.name()
                    ),
                );
                self.summary(&report, serde_json::json!({ "interrupted": stop.name() }))?;
                Ok(stop.code())
            }
        }
    }

    /// After a failure or a signal: stops the run's sessions and drops what it built, then
    /// finds out whether its swap had committed after all (a signal or a lost connection at the
    /// moment of the COMMIT leaves the run itself unsure). `Some(code)` when the run must end
    /// with it now: the swap committed (0), or a second signal cut the cleanup short.
    async fn stopped_or_committed(
        &self,
        sessions: &Sessions,
        first: Option<Stop>,
    ) -> anyhow::Result<Option<u8>> {
        let mas_db = &self.l.mas_db;
        let cleanup = async {
            roll_back(mas_db, sessions).await;
            sessions.swap_committed(mas_db).await
        };
        let committed = tokio::select! {
            c = cleanup => c,
            again = stop_signal() => {
                say(Level::Warn, &format!(
                    "{} during the cleanup: stopping now. Leftovers of this run (the schema \
                     `syn2mas_shadow`) may remain in MAS; the next syn2mas run drops them first.",
                    again.name()
                ));
                return Ok(Some(first.unwrap_or(again).code()));
            }
        };
        if let Ok(Some(true)) = committed {
            let why = match first {
                Some(stop) => format!("{} arrived", stop.name()),
                None => "the connection was lost".to_owned(),
            };
            say(
                Level::Warn,
                &format!(
                    "The migration had committed before {why}: MAS holds the migrated data. \
                 Run `syn2mas verify` before reopening."
                ),
            );
            return Ok(Some(exit::OK));
        }
        Ok(None)
    }
}

/// A signal that stops a run: it is rolled back, and the process exits with 128 + the signal's
/// number, as a shell would report it.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Interrupt,
    Terminate,
    Hangup,
}

impl Stop {
    fn code(self) -> u8 {
        match self {
            Stop::Interrupt => exit::INTERRUPTED,
            Stop::Terminate => exit::TERMINATED,
            Stop::Hangup => exit::HANGUP,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Stop::Interrupt => "SIGINT",
            Stop::Terminate => "SIGTERM",
            Stop::Hangup => "SIGHUP",
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP as they arrive, from the start of the run: one listener for the
/// whole process, so a signal that comes between two steps (after the checks, before the
/// migration) waits for the next step instead of being lost.
static STOPS: std::sync::OnceLock<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Stop>>> =
    std::sync::OnceLock::new();

/// Starts the listener (inside the runtime). From then on these signals no longer kill the
/// process: they are delivered to [`stop_signal`] (the Kubernetes, systemd and `docker stop`
/// SIGTERM, the SIGHUP of a closed SSH session).
fn listen_for_signals() {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    if STOPS.set(tokio::sync::Mutex::new(rx)).is_err() {
        return;
    }
    for (kind, stop) in [
        (SignalKind::interrupt(), Stop::Interrupt),
        (SignalKind::terminate(), Stop::Terminate),
        (SignalKind::hangup(), Stop::Hangup),
    ] {
        let Ok(mut stream) = signal(kind) else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(stop).is_err() {
                    return;
                }
            }
        });
    }
}

/// The next SIGINT, SIGTERM or SIGHUP (one received earlier and not yet taken comes first).
async fn stop_signal() -> Stop {
    match STOPS.get() {
        Some(stops) => match stops.lock().await.recv().await {
            Some(stop) => stop,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Drops what a failed or interrupted run built. If even that fails (MAS unreachable), the
/// next run does it first thing, and says so.
async fn roll_back(mas_db: &ConnectOptions, sessions: &Sessions) {
    if let Err(e) = migrate::cleanup(mas_db, sessions).await {
        say(
            Level::Warn,
            &format!(
                "warning: could not drop this run's shadow tables now ({e:#}); the next syn2mas run will drop them before doing anything else"
            ),
        );
    }
}
