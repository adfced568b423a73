//! `syn2mas`: parse the command line, set up logging, run, map the outcome to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use syn2mas::check::{self, CheckInputs, Report};
use syn2mas::cli::{Cli, ColorChoice, Command, GlobalArgs, LogFormat, MigrateArgs};
use syn2mas::config::{self, MasConfig, SynapseConfig};
use syn2mas::db::ConnectOptions;
use syn2mas::exit;
use syn2mas::migrate::{self, MigrateOptions, Sessions};
use syn2mas::progress::Progress;
use syn2mas::transform::RowError;

/// Target of the events that carry what is otherwise plain text on stderr (reports, refusals)
/// with `--log-format json`; always let through, since the code decides what `-q` hides.
const STDERR_TARGET: &str = "syn2mas::stderr";

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.global);
    let log_format = cli.global.log_format;
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
                log_format,
                Level::Error,
                &format!("Error: cannot start the async runtime: {e}"),
            );
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            say(log_format, Level::Error, &format!("Error: {e:#}"));
            ExitCode::from(exit::FAILURE)
        }
    }
}

#[derive(Clone, Copy)]
enum Level {
    Error,
    Warn,
    Info,
}

/// Human text for stderr: as is, or with `--log-format json` as one log record (the text in
/// `fields.message`), so that every stderr line is a JSON object.
fn say(format: LogFormat, level: Level, text: &str) {
    let text = text.trim_end();
    match (format, level) {
        (LogFormat::Text, _) => eprintln!("{text}"),
        (LogFormat::Json, Level::Error) => tracing::error!(target: STDERR_TARGET, "{text}"),
        (LogFormat::Json, Level::Warn) => tracing::warn!(target: STDERR_TARGET, "{text}"),
        (LogFormat::Json, Level::Info) => tracing::info!(target: STDERR_TARGET, "{text}"),
    }
}

/// Renders a human report for stderr, then `say`s it.
fn say_rendered(
    format: LogFormat,
    level: Level,
    render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    render(&mut buf)?;
    say(format, level, &String::from_utf8_lossy(&buf));
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (`docker stop`, Kubernetes ending a pod), with the
/// signal's name. Listening also makes the signals work when syn2mas is a container's PID 1,
/// which the kernel shields from signals it has no handler for.
async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT"
}

/// A read-only command stopped by a signal: nothing to undo.
fn interrupted_read_only(g: &GlobalArgs, signal: &str) -> u8 {
    say(
        g.log_format,
        Level::Warn,
        &format!("Interrupted by {signal}: stopped; nothing was changed."),
    );
    exit::INTERRUPTED
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
            allow_warnings: true,
            full_check: true,
            seed: None,
            rebuild_sessions: 2,
        });
    }
    let g = &cli.global;
    let l = load(g)?;
    // One listener for the whole run, so that a signal arriving between two steps (after the
    // checks, before the migration) is not lost.
    let mut stop = std::pin::pin!(interrupted());
    if let Command::Verify = cli.command {
        return tokio::select! {
            r = verify(g, &l) => r,
            signal = stop.as_mut() => Ok(interrupted_read_only(g, signal)),
        };
    }
    let inputs = CheckInputs {
        synapse: &l.synapse,
        mas: &l.mas,
        synapse_db: &l.synapse_db,
        mas_db: &l.mas_db,
        ignore_missing_auth_providers: g.ignore_missing_auth_providers,
        scope: match &cli.command {
            Command::Migrate(m) if !m.full_check => check::Scope::Preflight,
            _ => check::Scope::Full,
        },
    };
    let checked = check::run(&inputs);
    let report = tokio::select! {
        r = checked => r?,
        signal = stop.as_mut() => return Ok(interrupted_read_only(g, signal)),
    };
    match &cli.command {
        Command::Check => {
            print_report(g, &report)?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            }
            Ok(report.exit_code())
        }
        Command::Migrate(args) => migrate_after_check(g, args, &l, report, stop).await,
        Command::Demo => unreachable!("demo runs as migrate"),
        Command::Verify | Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("returned above")
        }
    }
}

/// `syn2mas verify`: the report on stdout (with `--json`: JSON on stdout, text on stderr).
async fn verify(g: &GlobalArgs, l: &Loaded) -> anyhow::Result<u8> {
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
        say_rendered(g.log_format, level, |w| report.render_human(w))?;
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else if !g.quiet || !report.ok() {
        report.render_human(&mut std::io::stdout().lock())?;
    }
    Ok(report.exit_code())
}

fn print_report(g: &GlobalArgs, report: &Report) -> anyhow::Result<()> {
    if !g.quiet || report.exit_code() != exit::OK {
        let level = match report.exit_code() {
            exit::OK => Level::Info,
            exit::CHECK_WARNINGS => Level::Warn,
            _ => Level::Error,
        };
        say_rendered(g.log_format, level, |w| report.render_human(w))?;
    }
    Ok(())
}

async fn migrate_after_check(
    g: &GlobalArgs,
    args: &MigrateArgs,
    l: &Loaded,
    report: Report,
    stop: std::pin::Pin<&mut impl std::future::Future<Output = &'static str>>,
) -> anyhow::Result<u8> {
    print_report(g, &report)?;
    let errors = report.errors().count();
    let warnings = report.warnings().count();
    if errors > 0 {
        say(
            g.log_format,
            Level::Error,
            &format!(
                "Refusing to migrate: the checks found {errors} error(s). Nothing was changed."
            ),
        );
        return Ok(exit::CHECK_ERRORS);
    }
    if warnings > 0 && !args.allow_warnings {
        let ids: Vec<&str> = report.warnings().map(|w| w.id.as_str()).collect();
        say(
            g.log_format,
            Level::Error,
            &format!(
                "Refusing to migrate with warnings ({}). Review them, then run again with --allow-warnings.",
                ids.join(", ")
            ),
        );
        return Ok(exit::CHECK_WARNINGS);
    }
    let stderr_tty = std::io::stderr().is_terminal();
    let draw = !g.quiet
        && match g.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => stderr_tty,
        };
    let progress = Progress::new(draw, !g.quiet).lines_as_logs(g.log_format == LogFormat::Json);
    let opts = MigrateOptions {
        dry_run: args.dry_run,
        seed: args.seed,
        rebuild_sessions: args.rebuild_sessions,
        ignore_missing_auth_providers: g.ignore_missing_auth_providers,
    };
    let sessions = Sessions::default();
    let outcome = tokio::select! {
        r = migrate::run(&l.synapse_db, &l.mas_db, &l.mas, report.plan.as_ref(), &opts, &progress, &sessions) => Ok(r),
        signal = stop => Err(signal),
    };
    match outcome {
        Ok(Ok(summary)) => {
            progress.finish();
            if g.json {
                say_rendered(g.log_format, Level::Info, |w| summary.render_human(w))?;
                let doc = serde_json::json!({ "check": report.to_json(), "migrate": summary });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else if !g.quiet {
                summary.render_human(&mut std::io::stdout().lock())?;
            }
            Ok(exit::OK)
        }
        Ok(Err(e)) => {
            roll_back(g, &l.mas_db, &sessions).await;
            if let Some(row) = e.chain().find_map(|c| c.downcast_ref::<RowError>()) {
                // A row the preflight checks could not see: the same kind of problem `check`
                // reports as an error, found while reading, so the same exit code.
                say(
                    g.log_format,
                    Level::Error,
                    &format!(
                        "Refusing to migrate: {row}.\nNothing was changed in MAS. `syn2mas check` lists \
                         every such row; fix them in Synapse and run again."
                    ),
                );
                return Ok(exit::CHECK_ERRORS);
            }
            Err(e.context("the migration failed; MAS was left exactly as it was before the run"))
        }
        Err(signal) => {
            roll_back(g, &l.mas_db, &sessions).await;
            say(
                g.log_format,
                Level::Warn,
                &format!(
                    "Interrupted: the migration was rolled back; MAS is exactly as it was before the run. ({signal})"
                ),
            );
            Ok(exit::INTERRUPTED)
        }
    }
}

/// Drops what a failed or interrupted run built. If even that fails (MAS unreachable), the
/// next run does it first thing, and says so.
async fn roll_back(g: &GlobalArgs, mas_db: &ConnectOptions, sessions: &Sessions) {
    if let Err(e) = migrate::cleanup(mas_db, sessions).await {
        say(
            g.log_format,
            Level::Warn,
            &format!(
                "warning: could not drop this run's shadow tables now ({e:#}); the next syn2mas run will drop them before doing anything else"
            ),
        );
    }
}
