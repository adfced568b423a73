//! The server memory `migrate` asks PostgreSQL for: `work_mem` on its Synapse read sessions and
//! its MAS rebuild sessions, `maintenance_work_mem` on the rebuild sessions.
//!
//! Both are per session (per sort or hash node, for `work_mem`), so what a run may take from a
//! server grows with the number of sessions: a fixed 1 GB per rebuild session is 8 GB with
//! `--rebuild-sessions 8`. Unless `--work-mem` / `--maintenance-work-mem` say otherwise, the
//! values are derived from each server's own settings and the session count ([`derive`]).
//! Values reach PostgreSQL as parameters of `set_config`, never spliced into SQL.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_postgres::Client;

/// A memory size in kB, the unit of PostgreSQL's memory settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemSize {
    kb: u64,
}

const KB: u64 = 1;
const MB: u64 = 1024;
const GB: u64 = 1024 * 1024;
const TB: u64 = 1024 * 1024 * 1024;

/// The largest memory setting PostgreSQL accepts (`MAX_KILOBYTES` on 64-bit servers).
const MAX_KB: u64 = i32::MAX as u64;

impl MemSize {
    pub const fn kb(kb: u64) -> MemSize {
        MemSize { kb }
    }

    pub const fn mb(mb: u64) -> MemSize {
        MemSize { kb: mb * MB }
    }

    pub fn as_kb(self) -> u64 {
        self.kb
    }

    fn div(self, n: u64) -> MemSize {
        MemSize {
            kb: self.kb / n.max(1),
        }
    }
}

impl fmt::Display for MemSize {
    /// The largest unit that divides the size exactly, as PostgreSQL's `SHOW` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, name) in [(TB, "TB"), (GB, "GB"), (MB, "MB")] {
            if self.kb >= unit && self.kb.is_multiple_of(unit) {
                return write!(f, "{}{name}", self.kb / unit);
            }
        }
        write!(f, "{}kB", self.kb)
    }
}

impl Serialize for MemSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for MemSize {
    type Err = String;

    /// A whole number and one of PostgreSQL's memory units (`kB`, `MB`, `GB`, `TB`; any case,
    /// optional space between): `256MB`, `1GB`, `65536kB`. A bare number is refused: PostgreSQL
    /// would read it as kB, which an operator rarely means.
    fn from_str(text: &str) -> Result<MemSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit = unit.trim();
        let number: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a memory size such as 256MB or 1GB"))?;
        let factor = match unit.to_ascii_lowercase().as_str() {
            "kb" => KB,
            "mb" => MB,
            "gb" => GB,
            "tb" => TB,
            "" => {
                return Err(format!(
                    "{text:?} has no unit; write e.g. {text}MB (units: kB, MB, GB, TB)"
                ));
            }
            _ => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (units: kB, MB, GB, TB)"
                ));
            }
        };
        let kb = number
            .checked_mul(factor)
            .filter(|kb| *kb <= MAX_KB)
            .ok_or_else(|| format!("{text:?} is more than PostgreSQL accepts (2147483647kB)"))?;
        Ok(MemSize { kb })
    }
}

/// The smallest `work_mem` PostgreSQL accepts.
const MIN_WORK_MEM: MemSize = MemSize::kb(64);
/// The smallest `maintenance_work_mem` PostgreSQL accepts.
const MIN_MAINTENANCE_WORK_MEM: MemSize = MemSize::mb(1);

/// `--work-mem`'s value parser: a memory size PostgreSQL accepts for `work_mem`.
pub fn parse_work_mem(text: &str) -> Result<MemSize, String> {
    at_least(text.parse()?, MIN_WORK_MEM, "work_mem")
}

/// `--maintenance-work-mem`'s value parser.
pub fn parse_maintenance_work_mem(text: &str) -> Result<MemSize, String> {
    at_least(
        text.parse()?,
        MIN_MAINTENANCE_WORK_MEM,
        "maintenance_work_mem",
    )
}

fn at_least(size: MemSize, min: MemSize, setting: &str) -> Result<MemSize, String> {
    if size < min {
        return Err(format!(
            "{size} is less than PostgreSQL's minimum {setting} ({min})"
        ));
    }
    Ok(size)
}

/// The most the derived `work_mem` gives a session: the value syn2mas used before it was
/// derived, enough for the largest hash join of a read at 1M users to stay in memory.
pub const WORK_MEM_CAP: MemSize = MemSize::mb(256);
/// The most the derived `maintenance_work_mem` gives a rebuild session: the value syn2mas used
/// before it was derived.
pub const MAINTENANCE_WORK_MEM_CAP: MemSize = MemSize::mb(1024);
/// `work_mem` is per sort or hash node, and a hash node may use `hash_mem_multiplier` (2 by
/// default) times it; a read's plan has up to two such nodes. So a session's share of the
/// budget is divided by this before it becomes its `work_mem`.
pub const WORK_MEM_NODES: u64 = 4;

/// One server's own settings, as `current_setting` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSettings {
    pub shared_buffers: MemSize,
    pub effective_cache_size: MemSize,
    pub work_mem: MemSize,
    pub maintenance_work_mem: MemSize,
}

impl ServerSettings {
    pub async fn read(client: &Client, side: &str) -> Result<ServerSettings> {
        let row = client
            .query_one(
                "SELECT current_setting('shared_buffers'), current_setting('work_mem'), \
                        current_setting('maintenance_work_mem'), \
                        current_setting('effective_cache_size')",
                &[],
            )
            .await
            .with_context(|| format!("reading {side}'s memory settings"))?;
        let get = |i: usize, name: &str| -> Result<MemSize> {
            let text: String = row.get(i);
            text.parse()
                .map_err(|e| anyhow::anyhow!("{side}'s {name} = {text:?}: {e}"))
        };
        Ok(ServerSettings {
            shared_buffers: get(0, "shared_buffers")?,
            work_mem: get(1, "work_mem")?,
            maintenance_work_mem: get(2, "maintenance_work_mem")?,
            effective_cache_size: get(3, "effective_cache_size")?,
        })
    }

    /// What `migrate`'s sessions on this server may share: the larger of `shared_buffers`
    /// (about a quarter of the machine's memory on a tuned server, but 128MB on an untuned
    /// one) and a quarter of `effective_cache_size` (set to half or three quarters of the
    /// memory on a tuned server, 4GB by default). PostgreSQL knows no other memory figure.
    pub fn budget(&self) -> MemSize {
        self.shared_buffers.max(self.effective_cache_size.div(4))
    }
}

/// The default rule: `migrate`'s sessions on a server share its [`ServerSettings::budget`].
/// Each session gets `budget / sessions` (divided by [`WORK_MEM_NODES`] for `work_mem`),
/// capped at the values syn2mas used to hard-code, and never less than the server's own
/// setting, which every session of that server gets anyway.
pub fn derive(server_setting: MemSize, budget: MemSize, divisor: u64, cap: MemSize) -> MemSize {
    budget.div(divisor).min(cap).max(server_setting)
}

/// What each kind of session gets, and whether it was given or derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Chosen {
    /// `work_mem` of each Synapse read session.
    pub synapse_work_mem: MemSize,
    /// `work_mem` of each MAS rebuild session.
    pub rebuild_work_mem: MemSize,
    /// `maintenance_work_mem` of each MAS rebuild session.
    pub rebuild_maintenance_work_mem: MemSize,
}

/// `--work-mem` and `--maintenance-work-mem`, each `None` for the derived default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requested {
    pub work_mem: Option<MemSize>,
    pub maintenance_work_mem: Option<MemSize>,
}

impl Requested {
    /// The values for a run with `readers` Synapse sessions and `rebuild_sessions` MAS
    /// rebuild sessions.
    pub fn choose(
        self,
        synapse: &ServerSettings,
        mas: &ServerSettings,
        readers: usize,
        rebuild_sessions: usize,
    ) -> Chosen {
        let work_mem = |s: &ServerSettings, sessions: usize| {
            self.work_mem.unwrap_or_else(|| {
                derive(
                    s.work_mem,
                    s.budget(),
                    sessions.max(1) as u64 * WORK_MEM_NODES,
                    WORK_MEM_CAP,
                )
            })
        };
        Chosen {
            synapse_work_mem: work_mem(synapse, readers),
            rebuild_work_mem: work_mem(mas, rebuild_sessions),
            rebuild_maintenance_work_mem: self.maintenance_work_mem.unwrap_or_else(|| {
                derive(
                    mas.maintenance_work_mem,
                    mas.budget(),
                    rebuild_sessions.max(1) as u64,
                    MAINTENANCE_WORK_MEM_CAP,
                )
            }),
        }
    }

    /// Reads both servers' settings and chooses; logs the result at debug level.
    pub async fn choose_for(
        self,
        synapse: &Client,
        mas: &Client,
        readers: usize,
        rebuild_sessions: usize,
    ) -> Result<Chosen> {
        let (s, m) = tokio::try_join!(
            ServerSettings::read(synapse, "Synapse's server"),
            ServerSettings::read(mas, "MAS's server"),
        )?;
        let chosen = self.choose(&s, &m, readers, rebuild_sessions);
        tracing::debug!(
            synapse_work_mem = %chosen.synapse_work_mem,
            rebuild_work_mem = %chosen.rebuild_work_mem,
            rebuild_maintenance_work_mem = %chosen.rebuild_maintenance_work_mem,
            synapse_budget = %s.budget(),
            mas_budget = %m.budget(),
            "server memory per session"
        );
        Ok(chosen)
    }
}

/// Sets `work_mem` on a Synapse read session, for its transaction only.
pub async fn set_local_work_mem(client: &Client, work_mem: MemSize) -> Result<()> {
    client
        .execute(
            "SELECT set_config('work_mem', $1, true)",
            &[&work_mem.to_string()],
        )
        .await
        .context("setting work_mem on a Synapse read session")?;
    Ok(())
}

/// Sets `work_mem` and `maintenance_work_mem` on a MAS rebuild session, for the session.
pub async fn set_rebuild_session(client: &Client, chosen: &Chosen) -> Result<()> {
    client
        .execute(
            "SELECT set_config('work_mem', $1, false), set_config('maintenance_work_mem', $2, false)",
            &[
                &chosen.rebuild_work_mem.to_string(),
                &chosen.rebuild_maintenance_work_mem.to_string(),
            ],
        )
        .await
        .context("setting work_mem and maintenance_work_mem on a MAS rebuild session")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(s: &str) -> MemSize {
        s.parse().unwrap()
    }

    #[test]
    fn sizes_are_parsed_and_printed_as_postgresql_does() {
        assert_eq!(size("256MB"), MemSize::mb(256));
        assert_eq!(size("1GB"), MemSize::mb(1024));
        assert_eq!(size(" 64 kB "), MemSize::kb(64));
        assert_eq!(size("2gb").to_string(), "2GB");
        assert_eq!(size("1536MB").to_string(), "1536MB");
        assert_eq!(size("1048576kB").to_string(), "1GB");
        assert_eq!(size("100kB").to_string(), "100kB");
        assert_eq!(size("1TB").to_string(), "1TB");
    }

    #[test]
    fn bad_sizes_are_refused_with_the_reason() {
        for (text, needle) in [
            ("256", "has no unit"),
            ("256 MiB", "unknown unit"),
            ("lots", "not a memory size"),
            ("", "not a memory size"),
            ("-1MB", "not a memory size"),
            ("1MB; DROP TABLE users", "unknown unit"),
            ("3TB", "more than PostgreSQL accepts"),
            ("99999999999999999999GB", "not a memory size"),
        ] {
            let e = text.parse::<MemSize>().unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
        assert!(
            parse_work_mem("32kB")
                .unwrap_err()
                .contains("minimum work_mem (64kB)")
        );
        assert!(
            parse_maintenance_work_mem("512kB")
                .unwrap_err()
                .contains("minimum maintenance_work_mem (1MB)")
        );
        assert_eq!(parse_work_mem("64kB"), Ok(MemSize::kb(64)));
    }

    fn server(
        shared_buffers: &str,
        effective_cache_size: &str,
        work_mem: &str,
        maintenance: &str,
    ) -> ServerSettings {
        ServerSettings {
            shared_buffers: size(shared_buffers),
            effective_cache_size: size(effective_cache_size),
            work_mem: size(work_mem),
            maintenance_work_mem: size(maintenance),
        }
    }

    /// The README's worked examples.
    #[test]
    fn defaults_follow_the_documented_rule() {
        // PostgreSQL's defaults: the budget is a quarter of effective_cache_size (1GB).
        let untuned = server("128MB", "4GB", "4MB", "64MB");
        assert_eq!(untuned.budget(), size("1GB"));
        let c = Requested::default().choose(&untuned, &untuned, 4, 2);
        assert_eq!(c.synapse_work_mem, size("64MB")); // 1GB / (4 × 4)
        assert_eq!(c.rebuild_work_mem, size("128MB")); // 1GB / (2 × 4)
        assert_eq!(c.rebuild_maintenance_work_mem, size("512MB")); // 1GB / 2
        // A tuned 16 GB server: the budget is shared_buffers (4GB).
        let big = server("4GB", "12GB", "16MB", "256MB");
        assert_eq!(big.budget(), size("4GB"));
        let c = Requested::default().choose(&big, &big, 4, 2);
        assert_eq!(c.synapse_work_mem, size("256MB")); // 4GB / 16, at the cap
        assert_eq!(c.rebuild_work_mem, size("256MB")); // 4GB / 8 = 512MB, capped
        assert_eq!(c.rebuild_maintenance_work_mem, size("1GB")); // 2GB, capped
        // The same server with 8 rebuild sessions: the budget is shared.
        let c = Requested::default().choose(&big, &big, 4, 8);
        assert_eq!(c.rebuild_work_mem, size("128MB")); // 4GB / 32
        assert_eq!(c.rebuild_maintenance_work_mem, size("512MB")); // 4GB / 8
        // A tuned 2 GB server with 8 rebuild sessions.
        let small = server("512MB", "1536MB", "4MB", "64MB");
        assert_eq!(small.budget(), size("512MB"));
        let c = Requested::default().choose(&small, &small, 4, 8);
        assert_eq!(c.synapse_work_mem, size("32MB")); // 512MB / 16
        assert_eq!(c.rebuild_work_mem, size("16MB")); // 512MB / 32
        assert_eq!(c.rebuild_maintenance_work_mem, size("64MB")); // 512MB / 8
        // Never below the server's own setting.
        let generous = server("128MB", "512MB", "512MB", "2GB");
        let c = Requested::default().choose(&generous, &generous, 4, 8);
        assert_eq!(c.synapse_work_mem, size("512MB"));
        assert_eq!(c.rebuild_maintenance_work_mem, size("2GB"));
    }

    #[test]
    fn given_values_win_over_the_rule() {
        let s = server("4GB", "12GB", "16MB", "256MB");
        let r = Requested {
            work_mem: Some(size("1MB")),
            maintenance_work_mem: Some(size("32MB")),
        };
        let c = r.choose(&s, &s, 4, 2);
        assert_eq!(c.synapse_work_mem, size("1MB"));
        assert_eq!(c.rebuild_work_mem, size("1MB"));
        assert_eq!(c.rebuild_maintenance_work_mem, size("32MB"));
    }
}
