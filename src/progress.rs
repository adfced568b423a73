//! Progress for long work: indicatif bars on a terminal, a log line every few seconds otherwise
//! (so a migration run from CI, a container or `nohup` still shows it is moving).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often to log progress when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Progress {
    multi: MultiProgress,
    /// Bars that the periodic logger reports on when there is no terminal.
    active: Arc<Mutex<Vec<ProgressBar>>>,
    draw: bool,
}

impl Progress {
    /// `draw`: show bars (stderr is a terminal and not `--quiet`); `log`: log lines instead.
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
        };
        if !draw && log {
            p.spawn_logger();
        }
        p
    }

    /// A progress display that shows nothing (tests, `--quiet`).
    pub fn hidden() -> Self {
        Self::new(false, false)
    }

    fn spawn_logger(&self) {
        let active = Arc::downgrade(&self.active);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LOG_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(active) = active.upgrade() else {
                    return;
                };
                for bar in active.lock().unwrap().iter().filter(|b| !b.is_finished()) {
                    let (pos, len) = (bar.position(), bar.length().unwrap_or(0));
                    let pct = if len > 0 {
                        pos as f64 * 100.0 / len as f64
                    } else {
                        100.0
                    };
                    tracing::info!("{}: {pos}/{len} ({pct:.1}%)", bar.prefix());
                }
            }
        });
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
        self.active.lock().unwrap().push(bar.clone());
        bar
    }

    /// Prints a line above the bars (or plainly when there are none).
    pub fn println(&self, line: &str) {
        if self.draw {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }
}
