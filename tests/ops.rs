//! How syn2mas behaves for operators and their tooling: `--version` with the git commit, shell
//! completions and man pages generated from the clap definitions, one-line progress when stderr
//! is not a terminal (`kubectl logs`, `docker logs`) and `--log-format json`. (SIGTERM and the
//! other signals: tests/hostile.rs.)

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Schema, TestDb, syn2mas_bin};

const SUBCOMMANDS: [&str; 8] = [
    "check",
    "migrate",
    "prestage",
    "stage",
    "verify",
    "demo",
    "completions",
    "man",
];

fn run(args: &[&str]) -> Output {
    Command::new(syn2mas_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run syn2mas")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What `--version` must name: `SYN2MAS_GIT_COMMIT` if the build had it, else the checkout's
/// HEAD, else "unknown" (no git, or not a checkout).
fn expected_commit() -> String {
    if let Some(c) = std::env::var("SYN2MAS_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
    {
        return c.trim().to_owned();
    }
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(common::crate_root())
        .output();
    match git {
        Ok(out) if out.status.success() => text(&out.stdout).trim().to_owned(),
        other => {
            eprintln!(
                "NOTE: no git checkout here ({:?}): expecting `--version` to say `unknown`",
                other.map(|o| text(&o.stderr))
            );
            "unknown".to_owned()
        }
    }
}

#[test]
fn version_names_the_package_version_and_the_git_commit() {
    let out = run(&["--version"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let commit = expected_commit();
    let want = format!("syn2mas {} (commit {commit})", env!("CARGO_PKG_VERSION"));
    assert_eq!(text(&out.stdout).trim(), want);
    if commit != "unknown" {
        assert_eq!(commit.len(), 12, "a 12-digit abbreviated hash: {commit}");
        assert!(commit.bytes().all(|b| b.is_ascii_hexdigit()), "{commit}");
    }
    // `-V` and the man page carry the same string.
    assert_eq!(text(&run(&["-V"]).stdout).trim(), want);
}

#[test]
fn completions_cover_every_subcommand_and_flag_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.len() > 1000, "{shell}: only {} bytes", script.len());
        for word in SUBCOMMANDS.iter().copied().chain([
            "synapse-config",
            "allow-warnings",
            "dry-run",
            "log-format",
        ]) {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
        // The shell itself must accept the script, where it is installed.
        let check: &[&str] = match shell {
            "bash" => &["bash", "-n"],
            "zsh" => &["zsh", "-n"],
            _ => &["fish", "--no-execute"],
        };
        let path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(path.path(), &script).unwrap();
        match Command::new(check[0])
            .args(&check[1..])
            .arg(path.path())
            .output()
        {
            Ok(o) => assert!(
                o.status.success(),
                "{shell} rejects the completion script: {}",
                text(&o.stderr)
            ),
            Err(e) => eprintln!("SKIP: {shell} is not installed ({e}); its syntax is not checked"),
        }
    }
    // bash completes the subcommands when asked to.
    let out = run(&["completions", "bash"]);
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), &out.stdout).unwrap();
    let probe = format!(
        "source {}; COMP_WORDS=(syn2mas mi); COMP_CWORD=1; COMP_LINE='syn2mas mi'; COMP_POINT=10; \
         _syn2mas syn2mas mi syn2mas; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.path().display()
    );
    match Command::new("bash").args(["-c", &probe]).output() {
        Ok(o) => assert_eq!(
            text(&o.stdout).trim(),
            "migrate",
            "bash completion of `syn2mas mi`: {}",
            text(&o.stderr)
        ),
        Err(e) => eprintln!("SKIP: bash is not installed ({e})"),
    }
    let bad = run(&["completions", "tcsh"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn man_page_describes_every_subcommand_and_the_exit_codes() {
    let out = run(&["man"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(
        page.contains(".TH syn2mas 1"),
        "{}",
        &page[..page.len().min(300)]
    );
    assert!(page.contains(&format!("(commit {})", expected_commit())));
    for sub in SUBCOMMANDS {
        assert!(page.contains(sub), "man page lacks {sub}");
    }
    assert!(page.contains("Exit codes: 0 ok; 10 check errors; 11 check warnings only"));

    let dir = tempfile::tempdir().unwrap();
    let out = run(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut want: Vec<String> = SUBCOMMANDS
        .iter()
        .map(|s| format!("syn2mas-{s}.1"))
        .chain(["syn2mas.1".to_owned()])
        .collect();
    want.sort();
    assert_eq!(files, want);
    let migrate = std::fs::read_to_string(dir.path().join("syn2mas-migrate.1")).unwrap();
    assert!(migrate.contains(".TH syn2mas-migrate 1"));
    assert!(migrate.contains("\\fBsyn2mas migrate\\fR"), "synopsis");
    for flag in ["dry\\-run", "allow\\-warnings", "full\\-check"] {
        assert!(migrate.contains(flag), "migrate page lacks {flag}");
    }
    // groff must render it without complaint, where it is installed.
    match Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(dir.path().join("syn2mas.1"))
        .output()
    {
        Ok(o) => assert!(
            o.status.success() && o.stderr.is_empty(),
            "groff: {}",
            text(&o.stderr)
        ),
        Err(e) => eprintln!("SKIP: groff is not installed ({e}); the roff is not rendered"),
    }
}

// ------------------------------------------------------------------------------------------------
// Runs on the fixture
// ------------------------------------------------------------------------------------------------

use common::Fixture as Env;

impl Env {
    async fn new() -> Env {
        Env::of(
            TestDb::synapse(Schema::Project).await,
            TestDb::mas(Schema::Project).await,
        )
    }

    /// stdin and stdout closed, stderr a pipe: as under `kubectl logs` or `docker logs`.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = self.syn2mas(args);
        c.env_remove("NO_COLOR").stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run syn2mas")
    }

    async fn mas_rows(&self) -> i64 {
        let mut n = 0;
        for t in syn2mas::sink::tables::NAMES {
            n += self.mas.count(t).await;
        }
        n
    }
}

/// Every non-empty stderr line as a JSON object; panics naming the first line that is not one.
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {l}\n---\n{stderr}"));
            assert!(v.is_object(), "{l}");
            for key in ["timestamp", "level"] {
                assert!(v.get(key).is_some_and(|k| k.is_string()), "no {key}: {l}");
            }
            assert!(v["fields"]["message"].is_string(), "no fields.message: {l}");
            v
        })
        .collect()
}

fn messages<'a>(records: &'a [serde_json::Value], level: &str) -> Vec<&'a str> {
    records
        .iter()
        .filter(|r| r["level"] == level)
        .map(|r| r["fields"]["message"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn log_format_json_makes_every_stderr_line_a_json_record() {
    let env = Env::new().await;

    // check: the fixture's warnings come as one WARN record holding the report.
    let out = env.run(&["check", "--log-format", "json"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{stderr}");
    let records = json_lines(&stderr);
    let warn = messages(&records, "WARN");
    assert!(
        warn.iter().any(|m| m.contains("W-") && m.contains('\n')),
        "the report as one multi-line WARN record: {stderr}"
    );

    // A refusal is an ERROR record.
    let out = env.run(&["migrate", "--log-format", "json"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(11), "{stderr}");
    let records = json_lines(&stderr);
    assert!(
        messages(&records, "ERROR")
            .iter()
            .any(|m| m.starts_with("Refusing to migrate with warnings")),
        "{stderr}"
    );

    // A migration at -v: debug records, progress records, the summary; still only JSON.
    let out = env.run(&[
        "migrate",
        "--allow-warnings",
        "--seed",
        "1",
        "-v",
        "--log-format",
        "json",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let records = json_lines(&stderr);
    assert!(
        !messages(&records, "DEBUG").is_empty(),
        "-v gives DEBUG records: {stderr}"
    );
    let info = messages(&records, "INFO");
    assert!(
        info.iter().any(|m| m.starts_with("progress users: done, ")),
        "{stderr}"
    );
    // The summary table stays on stdout without --json.
    assert!(text(&out.stdout).contains("users"), "{}", text(&out.stdout));
    assert!(env.mas_rows().await > 0);

    // An error of the command line's own (unreadable config) is a record too.
    let out = Command::new(syn2mas_bin())
        .args([
            "--log-format",
            "json",
            "check",
            "--synapse-config",
            "/nonexistent/hs.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let records = json_lines(&text(&out.stderr));
    assert!(
        messages(&records, "ERROR")
            .iter()
            .any(|m| m.starts_with("Error: ") && m.contains("/nonexistent/hs.yaml")),
        "{}",
        text(&out.stderr)
    );
}

/// A migration whose stderr is a pipe logs one line per step when it finishes and, while a
/// step runs, one line every 5 s: here the run waits 7 s inside the rebuild step.
#[tokio::test(flavor = "multi_thread")]
async fn progress_is_logged_line_by_line_when_stderr_is_not_a_terminal() {
    let env = Env::new().await;
    let started = Instant::now();
    let out = env
        .command(&["migrate", "--dry-run", "--allow-warnings", "--seed", "1"])
        .env("SYN2MAS_TEST_PAUSE", "rebuild")
        .env("SYN2MAS_TEST_PAUSE_SECS", "7")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(started.elapsed() >= Duration::from_secs(7));
    assert!(
        !stderr.contains('\r') && !stderr.contains("\u{1b}["),
        "no bars, no colours on a pipe: {stderr:?}"
    );
    let progress: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split_once(" INFO progress ").map(|(_, rest)| rest))
        .collect();
    // While paused: the rebuild step is running, so its periodic line is due.
    let periodic: Vec<&&str> = progress
        .iter()
        .filter(|l| l.starts_with("rebuild: ") && l.contains(" jobs") && l.ends_with(" s"))
        .collect();
    assert!(
        !periodic.is_empty(),
        "a periodic rebuild line during the 7 s pause:\n{stderr}"
    );
    let (pos, len) = periodic[0]["rebuild: ".len()..]
        .split_once(' ')
        .and_then(|(n, _)| n.split_once('/'))
        .map(|(p, l)| (p.parse::<u64>().unwrap(), l.parse::<u64>().unwrap()))
        .expect("rebuild: POS/LEN");
    assert!(len > 0 && pos <= len, "{pos}/{len}");
    // Every step finishes with a "done" line (the preflight's counting pass over users and
    // threepids has steps of the same names, so those may come twice); the rebuild exactly once.
    for step in [
        "users",
        "user_threepids",
        "user_external_ids",
        "devices and tokens",
        "rebuild",
    ] {
        let done = progress
            .iter()
            .filter(|l| l.starts_with(&format!("{step}: done, ")))
            .count();
        assert!(done >= 1, "a done line for {step}:\n{stderr}");
        if step == "rebuild" {
            assert_eq!(done, 1, "{stderr}");
        }
    }
    assert_eq!(env.mas_rows().await, 0, "a dry run");

    // --quiet: no progress at all.
    let out = env.run(&["migrate", "--dry-run", "--allow-warnings", "-q"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !text(&out.stderr).contains("progress "),
        "{}",
        text(&out.stderr)
    );
}
