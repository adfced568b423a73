//! Progress for long work: indicatif bars on a terminal; otherwise (a pipe, a container,
//! `kubectl logs`, `nohup`) one log line per active step every few seconds and one when a
//! step finishes, so a run that shows no terminal still shows it is moving.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often to log a step's progress when stderr is not a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// How often the logger looks for steps that finished (their "done" line is at most this late).
const POLL: Duration = Duration::from_millis(200);

/// A bar the logger reports on when there is no terminal.
struct Tracked {
    bar: ProgressBar,
    unit: String,
    last_logged: Instant,
    done_logged: bool,
}

impl Tracked {
    /// Logs what is due at `now`: the "done" line once the bar finished, a progress line every
    /// `LOG_EVERY` while it runs. `flush` logs the "done" line only.
    fn log_due(&mut self, now: Instant, flush: bool) {
        if self.done_logged {
            return;
        }
        let name = self.bar.prefix();
        let pos = self.bar.position();
        let secs = self.bar.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { pos as f64 / secs } else { 0.0 };
        let unit = &self.unit;
        if self.bar.is_finished() {
            self.done_logged = true;
            tracing::info!(
                "progress {name}: done, {pos} {unit} in {secs:.1} s ({rate:.0} {unit}/s)"
            );
        } else if !flush && now.duration_since(self.last_logged) >= LOG_EVERY {
            self.last_logged = now;
            let of = match self.bar.length() {
                Some(len) if len > 0 => {
                    let pct = (pos as f64 * 100.0 / len as f64).min(100.0);
                    format!("/{len} {unit} ({pct:.1}%)")
                }
                _ => format!(" {unit}"),
            };
            tracing::info!("progress {name}: {pos}{of}, {rate:.0} {unit}/s, {secs:.0} s");
        }
    }
}

#[derive(Clone)]
pub struct Progress {
    multi: MultiProgress,
    /// Bars that the periodic logger reports on when there is no terminal.
    active: Arc<Mutex<Vec<Tracked>>>,
    draw: bool,
    log: bool,
    /// `println` goes through the log (one JSON object per line with `--log-format json`).
    lines_as_logs: bool,
}

impl Progress {
    /// `draw`: show bars (stderr is a terminal and not `--quiet`); `log`: log lines instead.
    /// Needs a tokio runtime when `log` is set and `draw` is not (the logger is a task).
    pub fn new(draw: bool, log: bool) -> Self {
        let multi = MultiProgress::with_draw_target(if draw {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let p = Self {
            multi,
            active: Arc::default(),
            draw,
            log: !draw && log,
            lines_as_logs: false,
        };
        if p.log {
            p.spawn_logger();
        }
        p
    }

    /// A progress display that shows nothing (tests, `--quiet`).
    pub fn hidden() -> Self {
        Self::new(false, false)
    }

    /// Send `println` lines through `tracing` instead of writing them to stderr (when every
    /// stderr line must be a log record, as with `--log-format json`). Ignored with bars.
    pub fn lines_as_logs(mut self, yes: bool) -> Self {
        self.lines_as_logs = yes;
        self
    }

    fn spawn_logger(&self) {
        let active = Arc::downgrade(&self.active);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(active) = active.upgrade() else {
                    return;
                };
                let now = Instant::now();
                for t in active.lock().unwrap().iter_mut() {
                    t.log_due(now, false);
                }
            }
        });
    }

    /// Logs the "done" line of every step that finished since the logger last looked (call it
    /// when the work is over: the process may end before the logger's next look).
    pub fn finish(&self) {
        if !self.log {
            return;
        }
        let now = Instant::now();
        for t in self.active.lock().unwrap().iter_mut() {
            t.log_due(now, true);
        }
    }

    /// A bar counting `total` rows (or jobs) of the named step.
    pub fn bar(&self, name: &str, total: u64, unit: &str) -> ProgressBar {
        let bar = self.multi.add(ProgressBar::new(total));
        bar.set_prefix(name.to_owned());
        if self.draw {
            let template = format!(
                "{{prefix:>22}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} {{per_sec}} eta {{eta}}"
            );
            bar.set_style(
                ProgressStyle::with_template(&template)
                    .expect("static progress template")
                    .progress_chars("=> "),
            );
        }
        if self.log {
            self.active.lock().unwrap().push(Tracked {
                bar: bar.clone(),
                unit: unit.to_owned(),
                last_logged: Instant::now(),
                done_logged: false,
            });
        }
        bar
    }

    /// Prints a line above the bars (or plainly when there are none).
    pub fn println(&self, line: &str) {
        if self.draw {
            let _ = self.multi.println(line);
        } else if self.lines_as_logs {
            tracing::info!("{line}");
        } else {
            eprintln!("{line}");
        }
    }
}
