//! `cargo bench --bench generate -- --users 1000000 --seed 1 --db syn2mas_bench_synapse
//!  [--schema anchor|project] [--mas-db syn2mas_bench_mas] [--host … --port … --user …]`
//!
//! Drops and recreates the Synapse database and fills it with a deterministic population; with
//! `--mas-db`, also recreates an empty MAS database and writes `benches/out/{homeserver,mas}.yaml`.

#[path = "support/mod.rs"]
mod support;

use anyhow::Result;
use clap::Parser;
use support::pg::PgServer;
use support::schema::SchemaChoice;
use support::synapse::{GenerateOptions, GenerateReport, generate};

#[derive(Debug, Parser)]
#[command(
    name = "generate",
    about = "Fill a Synapse database with synthetic accounts for benchmarks"
)]
struct Args {
    /// Number of users
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    /// Seed: the same seed and user count give the same rows
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Synapse database to (re)create
    #[arg(long, default_value = "syn2mas_bench_synapse")]
    db: String,
    /// MAS database to (re)create, and write the config files for
    #[arg(long)]
    mas_db: Option<String>,
    /// Schema: the genuine dumps (`anchor`) or the project's fixtures (`project`)
    #[arg(long, default_value = "anchor")]
    schema: SchemaChoice,
    #[command(flatten)]
    server: PgServer,
    /// Sessions building indexes in parallel
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Skip the row-shape summary printed after loading
    #[arg(long)]
    no_stats: bool,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server = args.server.clone();
    let opts = GenerateOptions {
        server: server.clone(),
        db: args.db.clone(),
        users: args.users,
        seed: args.seed,
        schema: args.schema,
        jobs: args.jobs,
    };
    eprintln!(
        "generating {} users (seed {}) into {} …",
        args.users, args.seed, args.db
    );
    let report = generate(&opts).await?;
    print_report(&report);
    if let Some(mas_db) = &args.mas_db {
        support::mas::create_mas_db(&server, mas_db, args.schema).await?;
        let (hs, mas) = support::mas::write_configs(&server, &args.db, mas_db)?;
        println!(
            "\nMAS database {mas_db} created; configs: {} {}",
            hs.display(),
            mas.display()
        );
    }
    if !args.no_stats {
        print_shape(&server, &args.db).await?;
    }
    Ok(())
}

fn rate(rows: Option<u64>, secs: f64) -> String {
    match rows {
        Some(r) if secs > 0.0 => format!("{:.0}", r as f64 / secs),
        _ => "—".into(),
    }
}

fn print_report(report: &GenerateReport) {
    println!("\n| table | rows | s | rows/s |\n|---|---:|---:|---:|");
    for t in &report.tables {
        let rows = t.rows.map_or("—".into(), |r| r.to_string());
        println!(
            "| {} | {rows} | {:.2} | {} |",
            t.name,
            t.secs,
            rate(t.rows, t.secs)
        );
    }
    println!("\n| phase | s |\n|---|---:|");
    for s in &report.steps {
        println!("| {} | {:.2} |", s.name, s.secs);
    }
    let total = report.total_rows();
    println!(
        "| **total** | **{:.2}** |\n\n{total} rows in {:.2} s = {} rows/s overall",
        report.total_secs,
        report.total_secs,
        rate(Some(total), report.total_secs)
    );
}

/// Counts that show the generated shape matches the intended proportions.
const SHAPE: &[(&str, &str)] = &[
    ("users", "SELECT count(*) FROM users"),
    (
        "  appservice",
        "SELECT count(*) FROM users WHERE appservice_id IS NOT NULL",
    ),
    (
        "  appservice with ':' in localpart",
        "SELECT count(*) FROM users WHERE appservice_id IS NOT NULL AND name LIKE '@%:%:%'",
    ),
    ("  guests", "SELECT count(*) FROM users WHERE is_guest <> 0"),
    (
        "  deactivated",
        "SELECT count(*) FROM users WHERE deactivated <> 0",
    ),
    ("  locked", "SELECT count(*) FROM users WHERE locked"),
    ("  admins", "SELECT count(*) FROM users WHERE admin <> 0"),
    (
        "  with password hash",
        "SELECT count(*) FROM users WHERE password_hash IS NOT NULL",
    ),
    ("user_threepids", "SELECT count(*) FROM user_threepids"),
    (
        "  msisdn",
        "SELECT count(*) FROM user_threepids WHERE medium = 'msisdn'",
    ),
    (
        "user_external_ids",
        "SELECT count(*) FROM user_external_ids",
    ),
    (
        "  oidc-google",
        "SELECT count(*) FROM user_external_ids WHERE auth_provider = 'oidc-google'",
    ),
    ("devices", "SELECT count(*) FROM devices"),
    (
        "  hidden (cross-signing)",
        "SELECT count(*) FROM devices WHERE hidden",
    ),
    (
        "  guest_device",
        "SELECT count(*) FROM devices WHERE device_id = 'guest_device'",
    ),
    ("access_tokens", "SELECT count(*) FROM access_tokens"),
    (
        "  with refresh token",
        "SELECT count(*) FROM access_tokens WHERE refresh_token_id IS NOT NULL",
    ),
    (
        "  deviceless (not puppets)",
        "SELECT count(*) FROM access_tokens WHERE device_id IS NULL AND puppets_user_id IS NULL",
    ),
    (
        "  puppet",
        "SELECT count(*) FROM access_tokens WHERE puppets_user_id IS NOT NULL",
    ),
    (
        "  of deleted devices",
        "SELECT count(*) FROM access_tokens a WHERE device_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.user_id = a.user_id AND d.device_id = a.device_id)",
    ),
    (
        "  macaroon (MDAx…)",
        "SELECT count(*) FROM access_tokens WHERE token LIKE 'MDAx%'",
    ),
    (
        "  with valid_until_ms",
        "SELECT count(*) FROM access_tokens WHERE valid_until_ms IS NOT NULL",
    ),
    ("refresh_tokens", "SELECT count(*) FROM refresh_tokens"),
    (
        "  superseded (next_token_id set)",
        "SELECT count(*) FROM refresh_tokens WHERE next_token_id IS NOT NULL",
    ),
];

async fn print_shape(server: &PgServer, db: &str) -> Result<()> {
    let client = server.connect(db).await?;
    println!("\n| shape | rows | share of parent |\n|---|---:|---:|");
    let mut parent = 1i64;
    for (label, sql) in SHAPE {
        let n: i64 = client.query_one(*sql, &[]).await?.get(0);
        if label.starts_with(' ') {
            println!(
                "| {label} | {n} | {:.2}% |",
                100.0 * n as f64 / parent.max(1) as f64
            );
        } else {
            parent = n;
            println!("| {label} | {n} | |");
        }
    }
    Ok(())
}
