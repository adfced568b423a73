//! The per-N results table, the machine header, and what can be read from `--json` output.

use serde_json::Value;

use crate::support::pg::PgServer;
use std::fmt::Write as _;

/// One line of the results table.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub name: String,
    pub wall_secs: Option<f64>,
    pub cpu_secs: Option<f64>,
    pub rss_mib: Option<f64>,
    pub rows: Option<u64>,
    /// Wall time divided by the floor's, for the migrate phases.
    pub ratio: Option<f64>,
    /// Why a phase failed or was skipped ("exit 1", "not run").
    pub note: Option<String>,
}

impl Phase {
    pub fn new(name: impl Into<String>) -> Self {
        Phase {
            name: name.into(),
            ..Phase::default()
        }
    }
}

/// A failed phase's details, printed under the table.
#[derive(Debug, Clone)]
pub struct Failure {
    pub phase: String,
    pub status: String,
    pub stderr_tail: String,
}

pub struct Section {
    pub users: u32,
    pub seed: u64,
    pub phases: Vec<Phase>,
    pub failures: Vec<Failure>,
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("—".into(), |x| format!("{x:.decimals$}"))
}

impl Section {
    pub fn markdown(&self) -> String {
        let mut s = format!("## {} users (seed {})\n\n", self.users, self.seed);
        s.push_str("| phase | wall s | CPU s | peak RSS MiB | rows | rows/s | ratio to floor |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for p in &self.phases {
            let rate = match (p.rows, p.wall_secs) {
                (Some(r), Some(w)) if w > 0.0 => format!("{:.0}", r as f64 / w),
                _ => "—".into(),
            };
            let name = match &p.note {
                Some(n) => format!("{} ({n})", p.name),
                None => p.name.clone(),
            };
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {} | {} | {rate} | {} |",
                opt(p.wall_secs, 2),
                opt(p.cpu_secs, 2),
                opt(p.rss_mib, 0),
                p.rows.map_or("—".into(), |r| r.to_string()),
                p.ratio.map_or("—".into(), |r| format!("{r:.2}×")),
            );
        }
        for f in &self.failures {
            let _ = write!(
                s,
                "\n**{}** failed ({}); stderr tail:\n\n```\n{}\n```\n",
                f.phase, f.status, f.stderr_tail
            );
        }
        s
    }
}

/// Stage timings found in a `--json` document: objects naming an entity/stage with a duration
/// (`seconds`, `*_ms`) and maybe a row count, and `<stage>_seconds` / `<stage>_ms` fields.
/// The `check` part is skipped. Absent or unparsable → empty.
/// The parts of a staged `migrate --json` window: finding the changed users (their count as
/// rows), deriving their rows again, applying them to the stage, the swap.
pub fn staged_timings(json: &str) -> Vec<(String, f64, Option<u64>)> {
    let Ok(value) = serde_json::from_str::<Value>(json.trim()) else {
        return Vec::new();
    };
    let m = &value["migrate"];
    let staged = &m["staged"];
    let secs = |v: &Value| v.as_f64().unwrap_or(0.0);
    vec![
        (
            "find changed users (xmin scan, per-user counts, merge)".to_owned(),
            secs(&staged["detect_seconds"]),
            staged["changed_users"].as_u64(),
        ),
        (
            "derive their rows again".to_owned(),
            secs(&m["load_seconds"]),
            None,
        ),
        (
            "replace their rows in the stage".to_owned(),
            secs(&staged["apply_seconds"]),
            None,
        ),
        ("swap".to_owned(), secs(&m["swap_seconds"]), None),
    ]
}

pub fn stage_timings(json: &str) -> Vec<(String, f64, Option<u64>)> {
    let Ok(value) = serde_json::from_str::<Value>(json.trim()) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    collect(&value, &mut found);
    found
}

fn collect(value: &Value, found: &mut Vec<(String, f64, Option<u64>)>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| collect(v, found)),
        Value::Object(map) => {
            if let Some(stage) = named_stage(map) {
                found.push(stage);
                return;
            }
            for (key, v) in map {
                if key == "check" {
                    continue;
                }
                match prefixed_duration(key, v) {
                    Some((name, secs)) => found.push((name, secs, None)),
                    None => collect(v, found),
                }
            }
        }
        _ => {}
    }
}

fn named_stage(map: &serde_json::Map<String, Value>) -> Option<(String, f64, Option<u64>)> {
    let name = ["entity", "name", "stage", "phase", "table"]
        .iter()
        .find_map(|k| map.get(*k).and_then(Value::as_str))?;
    let secs = ["seconds", "secs", "duration_seconds", "elapsed_seconds"]
        .iter()
        .find_map(|k| map.get(*k).and_then(Value::as_f64))
        .or_else(|| map.get("ms").and_then(Value::as_f64).map(|ms| ms / 1000.0))?;
    let rows = ["migrated", "rows", "written", "count"]
        .iter()
        .find_map(|k| map.get(*k).and_then(Value::as_u64));
    Some((name.to_string(), secs, rows))
}

/// `load_seconds: 2.1` → `("load", 2.1)`; `rebuild_ms: 160` → `("rebuild", 0.16)`.
fn prefixed_duration(key: &str, v: &Value) -> Option<(String, f64)> {
    let x = v.as_f64()?;
    if let Some(prefix) = key
        .strip_suffix("_seconds")
        .or_else(|| key.strip_suffix("_secs"))
    {
        return Some((prefix.to_string(), x));
    }
    key.strip_suffix("_ms")
        .map(|prefix| (prefix.to_string(), x / 1000.0))
}

/// `nproc`, memory, CPU model, PostgreSQL version and date, as Markdown.
/// How the benchmark reaches the server, for the results header.
pub fn transport(server: &PgServer) -> String {
    if server.host.starts_with('/') {
        format!("unix socket in {}, no TLS", server.host)
    } else {
        format!(
            "TCP to {}:{}, libpq's default sslmode=prefer (TLS)",
            server.host, server.port
        )
    }
}

pub fn machine_header(pg_version: &str, transport: &str) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or("?".into(), |kib| format!("{:.1}", kib / 1024.0 / 1024.0));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("?".into(), |m| m.trim().to_string());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    format!(
        "# syn2mas benchmark results\n\n\
         - machine: nproc {cpus}, {mem_gib} GiB RAM, CPU {model}; 1-min load average at start {load}\n\
         - PostgreSQL: {pg_version} (same host; syn2mas connects by {transport})\n\
         - date: {date}\n\
         - produced by `cargo bench --bench run`; see benches/README.md for what each figure means\n\n"
    )
}
