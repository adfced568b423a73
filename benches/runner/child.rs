//! Running `syn2mas` as a child process and measuring it with `wait4(2)`.

use anyhow::{Context, Result, bail};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// What one child run cost and said.
#[derive(Debug, Clone)]
pub struct ChildRun {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub wall_secs: f64,
    /// User + system CPU of the child (not of the PostgreSQL backends it drives).
    pub cpu_secs: f64,
    pub max_rss_kib: i64,
    pub stdout: String,
    pub stderr: String,
}

impl ChildRun {
    /// "exit 10", "signal 9".
    pub fn status_text(&self) -> String {
        match (self.exit_code, self.signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => "unknown status".into(),
        }
    }

    /// The last `lines` lines of stderr before any backtrace (with `RUST_BACKTRACE=1` an
    /// error's backtrace would otherwise fill the tail and hide the message).
    pub fn stderr_tail(&self, lines: usize) -> String {
        let all: Vec<&str> = self
            .stderr
            .lines()
            .take_while(|l| {
                !l.starts_with("Stack backtrace:") && !l.starts_with("stack backtrace:")
            })
            .collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Runs `bin args…` to completion, draining its output, and reaps it with `wait4` to get its
/// rusage (the std `Child` handle is never waited on, so the pid is reaped exactly once).
pub fn run(bin: &Path, args: &[String]) -> Result<ChildRun> {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let (status, usage) = wait4(pid)?;
    let wall_secs = started.elapsed().as_secs_f64();
    Ok(ChildRun {
        exit_code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        wall_secs,
        cpu_secs: timeval_secs(usage.ru_utime) + timeval_secs(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            // A read error just truncates what we report.
            let _ = p.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn wait4(pid: libc::pid_t) -> Result<(libc::c_int, libc::rusage)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain old data; all-zero is a valid value for wait4 to overwrite.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our own unreaped child; both pointers are valid for the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            bail!("wait4({pid}) failed: {err}");
        }
    }
}

pub fn timeval_secs(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}
