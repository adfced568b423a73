//! Building every index and constraint on the shadow tables, in parallel sessions, as soon as
//! each table is loaded.
//!
//! The rebuild is most of a migration's wall time and it is CPU on the database server, so it
//! overlaps with the load of the tables that come later and runs on several sessions. Jobs form
//! a small graph per table: its index builds (plain and those backing the primary key and
//! unique constraints) as soon as the table is loaded; then attaching the unique indexes as
//! constraints; then its foreign keys (added NOT VALID and validated, which lets validations of
//! different tables run side by side) and ANALYZE, once the tables they reference are attached.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Notify;
use tokio_postgres::Client;

use super::catalog::{ConstraintKind, Definitions};
use super::shadow::{OutgoingKey, PREFIX, Rename, shadow_name};
use super::tables::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dep {
    Loaded(Target),
    Job(usize),
}

#[derive(Debug, Clone)]
pub struct Job {
    pub label: String,
    pub target: Target,
    sql: Vec<String>,
    deps: Vec<Dep>,
    /// Estimated work, to start the longest ready jobs first.
    cost: u64,
}

/// Every job of a migration plus the renames the swap applies afterwards.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    pub jobs: Vec<Job>,
    pub renames: Vec<Rename>,
    /// Foreign keys to tables outside the eight, which the swap adds.
    pub outgoing: Vec<OutgoingKey>,
}

/// Builds the job graph from the real tables' definitions; `rows` estimates each table's size.
pub fn schedule(defs: &Definitions, rows: &BTreeMap<Target, u64>) -> Schedule {
    let mut s = Schedule::default();
    let mut counter = 0usize;
    let mut tmp = |kind: char| {
        counter += 1;
        format!("{PREFIX}{kind}{counter}")
    };
    for target in Target::ALL {
        let size = rows.get(&target).copied().unwrap_or(0) + 1;
        let shadow = shadow_name(target);
        let mut index_jobs = Vec::new();
        for i in defs.indexes.iter().filter(|i| i.target == target) {
            let name = tmp('i');
            let unique = if i.unique { "UNIQUE " } else { "" };
            let weight = sort_weight(i.tail.contains("USING gin"), i.textual);
            index_jobs.push(s.jobs.len());
            s.jobs.push(Job {
                label: format!("index {}", i.name),
                target,
                sql: vec![format!("CREATE {unique}INDEX {name} ON {shadow}{}", i.tail)],
                deps: vec![Dep::Loaded(target)],
                cost: size * weight,
            });
            s.renames.push(Rename::Index {
                from: name,
                to: i.name.clone(),
            });
        }
        let mut attach = Vec::new();
        for c in defs.constraints.iter().filter(|c| c.target == target) {
            match (c.kind, &c.index_tail) {
                (ConstraintKind::PrimaryKey | ConstraintKind::Unique, Some(tail)) => {
                    let index = tmp('i');
                    let constraint = tmp('k');
                    index_jobs.push(s.jobs.len());
                    s.jobs.push(Job {
                        label: format!("constraint {}", c.name),
                        target,
                        sql: vec![format!("CREATE UNIQUE INDEX {index} ON {shadow}{tail}")],
                        deps: vec![Dep::Loaded(target)],
                        cost: size * sort_weight(false, c.index_textual),
                    });
                    let kind = if c.kind == ConstraintKind::PrimaryKey {
                        "PRIMARY KEY"
                    } else {
                        "UNIQUE"
                    };
                    attach.push(format!(
                        "ALTER TABLE {shadow} ADD CONSTRAINT {constraint} {kind} USING INDEX {index}{}",
                        c.deferral
                    ));
                    s.renames.push(Rename::Constraint {
                        target,
                        from: constraint,
                        to: c.name.clone(),
                    });
                }
                (ConstraintKind::Check, _) => attach.push(format!(
                    "ALTER TABLE {shadow} ADD CONSTRAINT {} {}",
                    c.name, c.definition
                )),
                _ => {}
            }
        }
        let attach_job = s.jobs.len();
        s.jobs.push(Job {
            label: format!("attach constraints of {}", target.name()),
            target,
            sql: attach,
            deps: index_jobs.iter().map(|&j| Dep::Job(j)).collect(),
            cost: 1,
        });
        s.jobs.push(finish_job(defs, target, attach_job, size));
    }
    s.outgoing = defs.outgoing_keys();
    resolve_attach_deps(&mut s);
    s
}

/// Relative cost per row of building an index, so the longest jobs start first (measured at
/// 1M users: ~1 µs per row for uuid and timestamp keys, ~5 for text, ~10 for a trigram GIN).
fn sort_weight(gin: bool, textual: bool) -> u64 {
    match (gin, textual) {
        (true, _) => 10,
        (false, true) => 5,
        (false, false) => 1,
    }
}

/// Planner settings for validating a foreign key: PostgreSQL's check is an anti-join of the
/// referencing table against the referenced one, which it otherwise runs as a hash join over
/// the whole referenced table. By the time a foreign key is validated both of its columns are
/// indexed (its table's attach job and the referenced table's have run) and `COPY … FREEZE`
/// marked every page all-visible, so a merge join of two index-only scans reads no heap at all:
/// at 1M users the eleven validations took 2.1 CPU-seconds instead of 4.7.
const MERGE_ANTI_JOIN: &str =
    "SET LOCAL enable_hashjoin = off; SET LOCAL enable_nestloop = off; SET LOCAL enable_sort = off";

/// The table's foreign keys and ANALYZE. Dependencies on other tables' attach jobs are filled
/// in by `resolve_attach_deps` once every table has one.
fn finish_job(defs: &Definitions, target: Target, attach_job: usize, size: u64) -> Job {
    let shadow = shadow_name(target);
    let mut sql = Vec::new();
    let mut deps = vec![Dep::Job(attach_job)];
    for c in defs
        .constraints
        .iter()
        .filter(|c| c.target == target && c.kind == ConstraintKind::ForeignKey)
        .filter(|c| !c.is_outgoing())
    {
        sql.push(format!(
            "ALTER TABLE {shadow} ADD CONSTRAINT {} {} NOT VALID",
            c.name, c.definition
        ));
        sql.push(format!(
            "BEGIN; {MERGE_ANTI_JOIN}; ALTER TABLE {shadow} VALIDATE CONSTRAINT {}; COMMIT",
            c.name
        ));
        // Placeholder: Loaded(referenced) is rewritten to the referenced table's attach job.
        deps.extend(c.references.iter().map(|&r| Dep::Loaded(r)));
    }
    sql.push(format!("ANALYZE {shadow}"));
    Job {
        label: format!("foreign keys and statistics of {}", target.name()),
        target,
        sql,
        deps,
        cost: size / 2,
    }
}

fn resolve_attach_deps(s: &mut Schedule) {
    let attach_of: BTreeMap<Target, usize> = s
        .jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| j.label.starts_with("attach "))
        .map(|(i, j)| (j.target, i))
        .collect();
    for job in s
        .jobs
        .iter_mut()
        .filter(|j| j.label.starts_with("foreign keys"))
    {
        for d in job.deps.iter_mut() {
            if let Dep::Loaded(t) = *d {
                *d = Dep::Job(attach_of[&t]);
            }
        }
    }
}

/// Shared state of the sessions working through a schedule.
pub struct Runner {
    schedule: Schedule,
    /// `work_mem` / `maintenance_work_mem` of each session.
    memory: crate::memory::Chosen,
    state: Mutex<State>,
    notify: Notify,
}

#[derive(Default)]
struct State {
    loaded: BTreeSet<Target>,
    running: BTreeSet<usize>,
    done: BTreeMap<usize, Duration>,
    aborted: bool,
}

/// How long each job took, for the summary.
#[derive(Debug, Clone)]
pub struct JobTiming {
    pub label: String,
    pub seconds: f64,
}

impl Runner {
    pub fn new(schedule: Schedule, memory: crate::memory::Chosen) -> Arc<Self> {
        Arc::new(Self {
            schedule,
            memory,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        })
    }

    pub fn total_jobs(&self) -> usize {
        self.schedule.jobs.len()
    }

    pub fn renames(&self) -> &[Rename] {
        &self.schedule.renames
    }

    pub fn outgoing(&self) -> &[OutgoingKey] {
        &self.schedule.outgoing
    }

    /// Called when a table's COPY has committed: its jobs may start.
    pub fn loaded(&self, target: Target) {
        self.state.lock().unwrap().loaded.insert(target);
        self.notify.notify_waiters();
    }

    /// Stops every session after its current job (the migration failed elsewhere).
    pub fn abort(&self) {
        self.state.lock().unwrap().aborted = true;
        self.notify.notify_waiters();
    }

    fn ready(&self, st: &State, i: usize) -> bool {
        !st.running.contains(&i)
            && !st.done.contains_key(&i)
            && self.schedule.jobs[i].deps.iter().all(|d| match d {
                Dep::Loaded(t) => st.loaded.contains(t),
                Dep::Job(j) => st.done.contains_key(j),
            })
    }

    /// The next job for a session: `Some(Some(i))` to run, `Some(None)` to wait, `None` when
    /// there is nothing left (or the run was aborted).
    fn next(&self) -> Option<Option<usize>> {
        let mut st = self.state.lock().unwrap();
        if st.aborted || st.done.len() == self.schedule.jobs.len() {
            return None;
        }
        let pick = (0..self.schedule.jobs.len())
            .filter(|&i| self.ready(&st, i))
            .max_by_key(|&i| self.schedule.jobs[i].cost);
        if let Some(i) = pick {
            st.running.insert(i);
        }
        Some(pick)
    }

    fn finished(&self, i: usize, took: Duration) {
        let mut st = self.state.lock().unwrap();
        st.running.remove(&i);
        st.done.insert(i, took);
        drop(st);
        self.notify.notify_waiters();
    }

    /// One session's loop: run ready jobs until none are left. `on_done` is told each finished
    /// job (for progress). On error the whole runner is aborted.
    pub async fn session(
        self: Arc<Self>,
        client: Client,
        on_done: impl Fn(&str) + Send,
    ) -> anyhow::Result<()> {
        crate::memory::set_rebuild_session(&client, &self.memory).await?;
        client
            .batch_execute("SET max_parallel_maintenance_workers = 0; SET synchronous_commit = off")
            .await
            .context("configuring a MAS rebuild session")?;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let i = match self.next() {
                None => return Ok(()),
                Some(None) => {
                    notified.await;
                    continue;
                }
                Some(Some(i)) => i,
            };
            let job = &self.schedule.jobs[i];
            let start = Instant::now();
            for sql in &job.sql {
                if sql.contains(" VALIDATE CONSTRAINT ") {
                    crate::test_hooks::pause("fk-validation").await;
                }
                if let Err(e) = client.batch_execute(sql).await {
                    self.abort();
                    return Err(crate::db::without_detail(e)).with_context(|| {
                        format!("rebuilding {} on MAS `{}`", job.label, job.target.name())
                    });
                }
            }
            tracing::debug!(job = %job.label, seconds = start.elapsed().as_secs_f64(), "rebuilt");
            self.finished(i, start.elapsed());
            on_done(&job.label);
            if job.label.starts_with("index ") {
                crate::test_hooks::pause("index-built").await;
            }
        }
    }

    /// True when every job has finished.
    pub fn complete(&self) -> bool {
        self.state.lock().unwrap().done.len() == self.schedule.jobs.len()
    }
}
