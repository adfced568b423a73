//! `cargo bench --bench run -- --users 100000,1000000 [--seed 1] [--skip-generate] [--smoke]`
//!
//! For each user count: generate the Synapse database, then run the release `syn2mas` binary
//! (`check`, `migrate --dry-run`, `migrate`) as a child process measuring wall time, CPU and
//! peak RSS, then measure the floor (plain binary COPY + index build of the same rows on the
//! same server). Prints a Markdown table per count and writes it to `benches/RESULTS.md`
//! (`--smoke`: 10k users, written to `benches/out/RESULTS-smoke.md`).

#[path = "runner/child.rs"]
mod child;
#[path = "runner/floor.rs"]
mod floor;
#[path = "runner/report.rs"]
mod report;
#[path = "support/mod.rs"]
mod support;

use anyhow::{Context, Result, bail};
use child::ChildRun;
use clap::Parser;
use report::{Failure, Phase, Section};
use std::path::{Path, PathBuf};
use std::time::Instant;
use support::pg::{PgServer, quote_ident};
use support::schema::{SchemaChoice, crate_dir};
use support::synapse::{GenerateOptions, GenerateReport, generate};
use tokio::runtime::Runtime;

#[derive(Debug, Parser, Clone)]
#[command(
    name = "run",
    about = "Benchmark syn2mas against generated Synapse databases"
)]
struct Args {
    /// User counts to benchmark, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    users: Vec<u32>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Reuse the existing Synapse database (only meaningful with one user count)
    #[arg(long)]
    skip_generate: bool,
    /// Quick CI run: 10k users, results to benches/out/RESULTS-smoke.md
    #[arg(long)]
    smoke: bool,
    #[arg(long, default_value = "syn2mas_bench_synapse")]
    db: String,
    #[arg(long, default_value = "syn2mas_bench_mas")]
    mas_db: String,
    /// Schema: the genuine dumps (`anchor`) or the project's fixtures (`project`)
    #[arg(long, default_value = "anchor")]
    schema: SchemaChoice,
    #[command(flatten)]
    server: PgServer,
    /// Parallel sessions for index builds (generator) and floor COPY
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Run `migrate` this many times per user count (each on a recreated MAS database) and add
    /// a row with the median: on a shared VM one run can be 1.5× another
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    repeat: u32,
    /// Write the Markdown here instead of benches/RESULTS.md (which keeps hand-written
    /// sections before the generated tables)
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// After the usual phases: for each churn percentage, a `prestage`, that share of users
    /// changed in Synapse, and the window's staged `migrate` (e.g. `--staged 0.1,1,10`)
    #[arg(long, value_delimiter = ',')]
    staged: Vec<f64>,
    /// After `migrate`, clear the statistics of the devices/tokens tables (`reltuples = -1`,
    /// no `pg_statistic` rows, as on a restored dump nobody analysed), run `migrate` again on a
    /// recreated MAS database, then `ANALYZE` them back (needs a superuser)
    #[arg(long)]
    no_stats: bool,
    /// Internal: generate this many users and print the report as JSON on stdout (the runner
    /// runs generation as its own child process so that it is measured like the others)
    #[arg(long, hide = true, value_name = "N")]
    generate_child: Option<u32>,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

/// Everything one benchmark run needs.
struct Bench {
    args: Args,
    rt: Runtime,
    server: PgServer,
    bin: PathBuf,
    hs_config: PathBuf,
    mas_config: PathBuf,
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if let Some(users) = args.generate_child {
        return generate_child(&args, users);
    }
    if args.smoke {
        args.users = vec![10_000];
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_syn2mas"));
    if !bin.is_file() {
        bail!(
            "{} is missing: run `cargo build --release` first",
            bin.display()
        );
    }
    let server = args.server.clone();
    let (hs_config, mas_config) = support::mas::write_configs(&server, &args.db, &args.mas_db)?;
    let bench = Bench {
        rt: tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        server,
        bin,
        hs_config,
        mas_config,
        args,
    };
    let pg_version = bench.rt.block_on(server_version(&bench.server))?;
    let mut document = report::machine_header(&pg_version, &report::transport(&bench.server));
    let mut failed = false;
    for &users in &bench.args.users {
        let section = bench.one(users);
        failed |= !section.failures.is_empty();
        let md = section.markdown();
        println!("\n{md}");
        document.push_str(&md);
        document.push('\n');
    }
    let path = match &bench.args.out {
        Some(p) => p.clone(),
        None => results_path(bench.args.smoke)?,
    };
    document.push_str(&kept_analysis(&path));
    std::fs::write(&path, document).with_context(|| format!("writing {}", path.display()))?;
    println!("results written to {}", path.display());
    if failed {
        bail!("some phases failed (see above)");
    }
    Ok(())
}

/// The child side of the generate phase.
fn generate_child(args: &Args, users: u32) -> Result<()> {
    let opts = GenerateOptions {
        server: args.server.clone(),
        db: args.db.clone(),
        users,
        seed: args.seed,
        schema: args.schema,
        jobs: args.jobs,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(generate(&opts))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Marks where the hand-written analysis starts in RESULTS.md; it survives re-runs.
const ANALYSIS_MARKER: &str =
    "<!-- analysis: written by hand, kept when the tables are regenerated -->";

/// The hand-written analysis of the previous RESULTS.md (from the marker on), if any.
fn kept_analysis(path: &std::path::Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|old| {
            old.find(ANALYSIS_MARKER)
                .map(|i| format!("\n{}", &old[i..]))
        })
        .unwrap_or_default()
}

fn results_path(smoke: bool) -> Result<PathBuf> {
    Ok(if smoke {
        support::mas::out_dir()?.join("RESULTS-smoke.md")
    } else {
        crate_dir().join("benches").join("RESULTS.md")
    })
}

async fn server_version(server: &PgServer) -> Result<String> {
    let client = server.connect("postgres").await?;
    Ok(client.query_one("SHOW server_version", &[]).await?.get(0))
}

impl Bench {
    /// All phases for one user count; failures are recorded in the section, not returned.
    fn one(&self, users: u32) -> Section {
        let mut s = Section {
            users,
            seed: self.args.seed,
            phases: Vec::new(),
            failures: Vec::new(),
        };
        eprintln!("== {users} users ==");
        let Some(synapse_rows) = self.generate(users, &mut s) else {
            return s;
        };
        self.setup_mas("create MAS database", &mut s);
        self.child_phase(
            "syn2mas check",
            &["check"],
            &[0, 11],
            Some(synapse_rows),
            &mut s,
        );
        let seed = self.args.seed.to_string();
        let dry = [
            "migrate",
            "--dry-run",
            "--allow-warnings",
            "--seed",
            seed.as_str(),
        ];
        let dry_run = self.child_phase("syn2mas migrate --dry-run", &dry, &[0], None, &mut s);
        self.setup_mas("recreate MAS database", &mut s);
        let real = ["migrate", "--allow-warnings", "--seed", seed.as_str()];
        let migrate = self.child_phase("syn2mas migrate", &real, &[0], None, &mut s);
        if let Some(run) = &migrate {
            self.stage_lines(run, &mut s);
            self.repeat_migrate(&real, &mut s);
            if self.args.no_stats {
                self.migrate_without_statistics(&real, &mut s);
            }
        }
        self.floor(migrate.is_some(), dry_run.is_some(), &mut s);
        for (i, pct) in self.args.staged.iter().enumerate() {
            self.staged(*pct, i, &mut s);
        }
        s
    }

    /// One staged row set: prestage, `pct` % of the users changed, the window's `migrate`.
    fn staged(&self, pct: f64, salt: usize, s: &mut Section) {
        let seed = self.args.seed.to_string();
        self.setup_mas("recreate MAS database", s);
        let prestage = ["prestage", "--allow-warnings", "--seed", seed.as_str()];
        let name = format!("syn2mas prestage (before {pct}% churn)");
        if self.child_phase(&name, &prestage, &[0], None, s).is_none() {
            return;
        }
        let mut phase = Phase::new(format!("churn {pct}% of users in Synapse"));
        let started = Instant::now();
        let result = self.rt.block_on(self.churn(pct, salt));
        phase.wall_secs = Some(started.elapsed().as_secs_f64());
        match result {
            Ok(rows) => {
                phase.rows = Some(rows);
                s.phases.push(phase);
            }
            Err(e) => return fail(s, phase, "error", &format!("{e:#}")),
        }
        let name = format!("syn2mas migrate: window after {pct}% churn");
        let window = ["migrate", "--allow-warnings"];
        if let Some(run) = self.child_phase(&name, &window, &[0], None, s) {
            for (part, secs, rows) in report::staged_timings(&run.stdout) {
                s.phases.push(Phase {
                    name: format!("  window › {part}"),
                    wall_secs: Some(secs),
                    rows,
                    ..Phase::default()
                });
            }
        }
    }

    /// Changes about `pct` % of Synapse's users, a third each: a password change, a logout (all
    /// their access tokens deleted), a login (a new device and token). Returns the rows changed.
    async fn churn(&self, pct: f64, salt: usize) -> Result<u64> {
        let client = self.server.connect(&self.args.db).await?;
        let share = ((pct * 100.0) / 3.0).round().max(1.0) as i64;
        let pick = |what: &str, column: &str| {
            format!("abs(hashtext({column} || '{what}{salt}')) % 10000 < {share}")
        };
        let statements = [
            format!(
                "UPDATE users SET password_hash = '$2b$12$uHpJji4QlBts50Jx9M08weSABDYVEgWRKaZa2hCjAbGLL0RTwn8Qq' \
                 WHERE name IS NOT NULL AND {}",
                pick("password", "name")
            ),
            format!(
                "DELETE FROM access_tokens WHERE user_id IS NOT NULL AND {}",
                pick("logout", "user_id")
            ),
            format!(
                "WITH s AS (SELECT name, (SELECT max(id) FROM access_tokens) + row_number() OVER () AS n FROM users \
                             WHERE name IS NOT NULL AND appservice_id IS NULL AND deactivated = 0 AND {pick}), \
                      d AS (INSERT INTO devices (user_id, device_id, display_name, last_seen, ip, user_agent, hidden) \
                            SELECT name, 'CHURN_' || n, 'new', 1790000000000, '192.0.2.1', 'Element', false FROM s) \
                 INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, puppets_user_id, last_validated, refresh_token_id, used) \
                 SELECT n, name, 'CHURN_' || n, 'syt_churn_' || n, NULL, NULL, 1790000000000, NULL, true FROM s",
                pick = pick("login", "name")
            ),
        ];
        let mut rows = 0;
        for sql in statements {
            rows += client
                .execute(&sql, &[])
                .await
                .with_context(|| format!("churn: {sql}"))?;
        }
        // `migrate` refuses while other sessions are connected to Synapse: wait until this one
        // is gone.
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await?
            .get(0);
        drop(client);
        let watcher = self.server.connect("postgres").await?;
        for _ in 0..100 {
            let gone = watcher
                .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await?
                .is_none();
            if gone {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(rows)
    }

    /// Generates the Synapse rows in a child process (or counts them, with `--skip-generate`);
    /// `None` stops this user count.
    fn generate(&self, users: u32, s: &mut Section) -> Option<u64> {
        if self.args.skip_generate {
            return self.count_existing(s);
        }
        eprintln!("-- generate");
        let argv: Vec<String> = [
            "--generate-child".to_string(),
            users.to_string(),
            "--seed".into(),
            self.args.seed.to_string(),
            "--db".into(),
            self.args.db.clone(),
            "--schema".into(),
            format!("{:?}", self.args.schema).to_ascii_lowercase(),
            "--host".into(),
            self.args.server.host.clone(),
            "--port".into(),
            self.args.server.port.to_string(),
            "--user".into(),
            self.args.server.user.clone(),
            "--jobs".into(),
            self.args.jobs.to_string(),
        ]
        .into();
        let mut phase = Phase::new("generate Synapse database");
        let run = match std::env::current_exe()
            .map_err(anyhow::Error::from)
            .and_then(|exe| child::run(&exe, &argv))
        {
            Ok(run) => run,
            Err(e) => {
                fail(s, phase, "not started", &format!("{e:#}"));
                return None;
            }
        };
        measured(&mut phase, &run);
        let report = serde_json::from_str::<GenerateReport>(run.stdout.trim());
        match (run.exit_code, report) {
            (Some(0), Ok(report)) => {
                let rows = report.total_rows();
                phase.rows = Some(rows);
                s.phases.push(phase);
                s.phases.extend(report.tables.into_iter().map(|t| Phase {
                    wall_secs: Some(t.secs),
                    rows: t.rows,
                    ..Phase::new(format!("  generate › {}", t.name))
                }));
                Some(rows)
            }
            _ => {
                fail(s, phase, &run.status_text(), &run.stderr_tail(15));
                None
            }
        }
    }

    fn count_existing(&self, s: &mut Section) -> Option<u64> {
        let mut phase = Phase::new("count Synapse rows (--skip-generate)");
        let started = Instant::now();
        let result = self.rt.block_on(self.count_synapse());
        phase.wall_secs = Some(started.elapsed().as_secs_f64());
        match result {
            Ok(rows) => {
                phase.rows = Some(rows);
                s.phases.push(phase);
                Some(rows)
            }
            Err(e) => {
                fail(s, phase, "error", &format!("{e:#}"));
                None
            }
        }
    }

    async fn count_synapse(&self) -> Result<u64> {
        let client = self.server.connect(&self.args.db).await?;
        let mut total = 0;
        for spec in support::tables::ALL {
            total += count_rows(&client, spec.name).await? as u64;
        }
        Ok(total)
    }

    fn setup_mas(&self, name: &str, s: &mut Section) {
        let mut phase = Phase::new(name);
        let started = Instant::now();
        let result = self.rt.block_on(support::mas::create_mas_db(
            &self.server,
            &self.args.mas_db,
            self.args.schema,
        ));
        phase.wall_secs = Some(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => s.phases.push(phase),
            Err(e) => fail(s, phase, "error", &format!("{e:#}")),
        }
    }

    /// Runs one `syn2mas` subcommand; `Some` when it exited with one of `ok_codes`.
    fn child_phase(
        &self,
        name: &str,
        sub: &[&str],
        ok_codes: &[i32],
        rows: Option<u64>,
        s: &mut Section,
    ) -> Option<ChildRun> {
        eprintln!("-- {name}");
        let mut argv: Vec<String> = vec![
            "--synapse-config".into(),
            path_arg(&self.hs_config),
            "--config".into(),
            path_arg(&self.mas_config),
            "--json".into(),
            "--color".into(),
            "never".into(),
        ];
        argv.extend(sub.iter().map(|a| a.to_string()));
        let mut phase = Phase::new(name);
        let run = match child::run(&self.bin, &argv) {
            Ok(run) => run,
            Err(e) => {
                fail(s, phase, "not started", &format!("{e:#}"));
                return None;
            }
        };
        save_output(s.users, sub, &run);
        measured(&mut phase, &run);
        phase.rows = rows;
        let ok = run.exit_code.is_some_and(|c| ok_codes.contains(&c));
        if !ok {
            fail(s, phase, &run.status_text(), &run.stderr_tail(15));
            return None;
        }
        if run.exit_code != Some(0) {
            phase.note = Some(run.status_text());
        }
        s.phases.push(phase);
        Some(run)
    }

    /// `--repeat`: the further `migrate` runs, then their median (wall and CPU) and largest
    /// peak RSS, all compared with the floor like the first run.
    fn repeat_migrate(&self, real: &[&str], s: &mut Section) {
        let repeat = self.args.repeat;
        if repeat < 2 {
            return;
        }
        for i in 2..=repeat {
            self.setup_mas("recreate MAS database", s);
            let name = format!("syn2mas migrate (run {i} of {repeat})");
            if self.child_phase(&name, real, &[0], None, s).is_none() {
                return;
            }
        }
        let runs: Vec<&Phase> = s.phases.iter().filter(|p| is_migrate_run(p)).collect();
        let median = |f: fn(&Phase) -> Option<f64>| {
            let mut v: Vec<f64> = runs.iter().filter_map(|p| f(p)).collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        let phase = Phase {
            wall_secs: median(|p| p.wall_secs),
            cpu_secs: median(|p| p.cpu_secs),
            rss_mib: runs.iter().filter_map(|p| p.rss_mib).reduce(f64::max),
            ..Phase::new(format!("syn2mas migrate: median of {repeat} runs"))
        };
        s.phases.push(phase);
    }

    /// `migrate` once more with the session tables' statistics cleared, then restored.
    fn migrate_without_statistics(&self, real: &[&str], s: &mut Section) {
        let sql = |sql: String, name: &str, s: &mut Section| {
            let mut phase = Phase::new(name);
            let started = Instant::now();
            let result = self.rt.block_on(async {
                let client = self.server.connect(&self.args.db).await?;
                client.batch_execute(&sql).await?;
                anyhow::Ok(())
            });
            phase.wall_secs = Some(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    s.phases.push(phase);
                    true
                }
                Err(e) => {
                    fail(s, phase, "error", &format!("{e:#}"));
                    false
                }
            }
        };
        let tables = ["users", "devices", "access_tokens", "refresh_tokens"];
        let oids = format!(
            "(SELECT to_regclass(t) FROM unnest(ARRAY['{}']) t)",
            tables.join("', '")
        );
        let clear = format!(
            "UPDATE pg_class SET reltuples = -1, relpages = 0 WHERE oid IN {oids}; \
             DELETE FROM pg_statistic WHERE starelid IN {oids};"
        );
        if !sql(clear, "clear statistics (--no-stats)", s) {
            return;
        }
        self.setup_mas("recreate MAS database", s);
        self.child_phase("syn2mas migrate, no statistics", real, &[0], None, s);
        let analyse = tables.map(|t| format!("ANALYZE {t};")).join(" ");
        sql(analyse, "ANALYZE again", s);
    }

    /// Per-stage lines from `migrate --json`, when it reports them.
    fn stage_lines(&self, run: &ChildRun, s: &mut Section) {
        for (name, secs, rows) in report::stage_timings(&run.stdout) {
            s.phases.push(Phase {
                name: format!("  migrate › {name}"),
                wall_secs: Some(secs),
                rows,
                ..Phase::default()
            });
        }
    }

    /// The floor phases, and the migrate phases' rows and ratios.
    fn floor(&self, migrated: bool, dry_ran: bool, s: &mut Section) {
        if !migrated {
            s.phases.push(Phase {
                note: Some("not run: migrate failed".into()),
                ..Phase::new("floor")
            });
            return;
        }
        let started = Instant::now();
        match self.rt.block_on(floor::measure(
            &self.server,
            &self.args.mas_db,
            self.args.jobs,
        )) {
            Ok(f) => self.push_floor(&f, dry_ran, s),
            Err(e) => fail(
                s,
                Phase::new("floor"),
                "error",
                &format!("{e:#} (after {:.1}s)", started.elapsed().as_secs_f64()),
            ),
        }
    }

    fn push_floor(&self, f: &floor::Floor, dry_ran: bool, s: &mut Section) {
        let total = f.copy_secs + f.build_secs;
        for p in &mut s.phases {
            let is_migrate = is_migrate_run(p)
                || p.name.starts_with("syn2mas migrate: median")
                || p.name == "syn2mas migrate, no statistics"
                || (dry_ran && p.name == "syn2mas migrate --dry-run");
            if is_migrate && total > 0.0 {
                p.rows = Some(f.rows);
                p.ratio = p.wall_secs.map(|w| w / total);
            }
        }
        let jobs = self.args.jobs.max(1);
        s.phases.push(Phase {
            wall_secs: Some(f.copy_secs),
            rows: Some(f.rows),
            ..Phase::new(format!(
                "floor: binary COPY of the migrated rows ({jobs} sessions)"
            ))
        });
        s.phases.push(Phase {
            wall_secs: Some(f.build_secs),
            rows: Some(f.rows),
            ..Phase::new(format!(
                "floor: {} indexes + constraints (1 session)",
                f.statements
            ))
        });
        s.phases.push(Phase {
            wall_secs: Some(total),
            rows: Some(f.rows),
            ratio: Some(1.0),
            ..Phase::new("floor: total")
        });
    }
}

/// A row of one real `migrate` run (the first, or a `--repeat` one).
fn is_migrate_run(p: &Phase) -> bool {
    p.name == "syn2mas migrate" || p.name.starts_with("syn2mas migrate (run ")
}

fn measured(phase: &mut Phase, run: &ChildRun) {
    phase.wall_secs = Some(run.wall_secs);
    phase.cpu_secs = Some(run.cpu_secs);
    phase.rss_mib = Some(run.max_rss_kib as f64 / 1024.0);
}

fn fail(s: &mut Section, mut phase: Phase, status: &str, detail: &str) {
    eprintln!("   {} failed ({status}):\n{detail}", phase.name);
    phase.note = Some(format!("FAILED: {status}"));
    s.failures.push(Failure {
        phase: phase.name.clone(),
        status: status.to_string(),
        stderr_tail: detail.to_string(),
    });
    s.phases.push(phase);
}

/// `SELECT count(*)` of a table.
async fn count_rows(client: &tokio_postgres::Client, table: &str) -> Result<i64> {
    let sql = format!("SELECT count(*) FROM {}", quote_ident(table));
    Ok(client
        .query_one(&sql, &[])
        .await
        .with_context(|| sql.clone())?
        .get(0))
}

/// Keeps the child's stdout/stderr as `benches/out/<users>-<subcommand>.{json,stderr}`.
fn save_output(users: u32, sub: &[&str], run: &ChildRun) {
    let dry = if sub.contains(&"--dry-run") {
        "-dry-run"
    } else {
        ""
    };
    let slug = format!("{}{dry}", sub.first().copied().unwrap_or("run"));
    let Ok(dir) = support::mas::out_dir() else {
        return;
    };
    let base = dir.join(format!("{users}-{slug}"));
    // Best effort: the outputs are for inspection only.
    let _ = std::fs::write(base.with_extension("json"), &run.stdout);
    let _ = std::fs::write(base.with_extension("stderr"), &run.stderr);
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
