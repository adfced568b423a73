//! The deployment examples: `deploy/kubernetes/` (Job, kustomization, example Secret, the step
//! script) and `deploy/compose/compose.yaml`, checked offline by parsing them (serde_norway) and
//! following every reference, and the step script run for real with the built binary on the
//! fixture (the sequence, its exit codes, SIGTERM passed on by the shell as PID 1 would).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Schema, TestDb, crate_root, syn2mas_bin};
use serde_json::Value;

/// Peak RSS of `migrate` at 1M users (benches/RESULTS.md), and the Element Server Suite chart's
/// limit for its migration Job: the memory limit must sit between twice the one and the other.
const PEAK_RSS_MIB: u64 = 68;
const ESS_LIMIT_MIB: u64 = 350;
/// `migrate::cleanup` gives up waiting for the advisory lock after 10 s; the grace period must
/// leave it that and the connection and drops around it.
const CLEANUP_DEADLINE_SECS: u64 = 10;

fn deploy(rel: &str) -> PathBuf {
    crate_root().join("deploy").join(rel)
}

/// One YAML document as JSON values (easier to index), with the file named on failure.
fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let v: serde_norway::Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    serde_json::to_value(v).unwrap()
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| {
            let v: serde_norway::Value = serde::Deserialize::deserialize(d).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .collect()
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

/// Kubernetes quantities as bytes ("256Mi", "1Gi", "268435456"); compose's "256m" is MiB too.
fn bytes(q: &str) -> u64 {
    let (num, mult) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("m", 1 << 20),
        ("g", 1 << 30),
    ]
    .iter()
    .find_map(|(suffix, m)| q.strip_suffix(suffix).map(|n| (n, *m)))
    .unwrap_or((q, 1));
    num.parse::<u64>()
        .unwrap_or_else(|_| panic!("not a quantity: {q}"))
        * mult
}

/// compose durations: "120s", "2m", "1m30s".
fn seconds(d: &str) -> u64 {
    let mut total = 0;
    let mut num = String::new();
    for c in d.chars() {
        match c {
            '0'..='9' => num.push(c),
            'h' | 'm' | 's' => {
                let n: u64 = num.parse().unwrap_or_else(|_| panic!("bad duration {d}"));
                total += n * match c {
                    'h' => 3600,
                    'm' => 60,
                    _ => 1,
                };
                num.clear();
            }
            _ => panic!("bad duration {d}"),
        }
    }
    assert!(num.is_empty(), "bad duration {d}");
    total
}

/// The Dockerfile's `USER uid:gid` of the final stage.
fn dockerfile_user() -> (u64, u64) {
    let text = std::fs::read_to_string(crate_root().join("Dockerfile")).unwrap();
    let user = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("USER "))
        .next_back()
        .expect("the Dockerfile sets USER");
    let (u, g) = user.trim().split_once(':').expect("USER uid:gid");
    let entry = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ENTRYPOINT "))
        .next_back()
        .expect("ENTRYPOINT");
    assert_eq!(entry.trim(), r#"["syn2mas"]"#);
    (
        u.parse().expect("numeric uid"),
        g.parse().expect("numeric gid"),
    )
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a str {
    let env = container["env"].as_array().expect("env list");
    let e = env
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name}"));
    s(&e["value"], name)
}

const SEQUENCE: &str = "check dry-run migrate verify";

#[test]
fn kubernetes_job_is_complete_and_every_reference_resolves() {
    let job = yaml(&deploy("kubernetes/job.yaml"));
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["kind"], "Job");
    let name = s(&job["metadata"]["name"], "metadata.name");
    let spec = &job["spec"];
    assert_eq!(spec["backoffLimit"], 0, "never retried on its own");
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace >= 6 * CLEANUP_DEADLINE_SECS,
        "grace {grace} s leaves too little for the rollback"
    );
    if let Some(deadline) = spec["activeDeadlineSeconds"].as_u64() {
        assert!(deadline >= 3600, "a 1M-user run must fit: {deadline} s");
    }

    // Runs as the image's user, which is not root.
    let (uid, gid) = dockerfile_user();
    assert_ne!(uid, 0);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], uid);
    assert_eq!(pod["securityContext"]["runAsGroup"], gid);

    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let image = s(&c["image"], "image");
    let (repo, tag) = image.rsplit_once(':').expect("an image with a tag");
    assert!(
        repo == "syn2mas" || repo.ends_with("/syn2mas"),
        "image {image}"
    );
    assert!(!tag.is_empty() && tag != "latest", "a pinned tag: {image}");

    // The sequence: steps.sh from the ConfigMap, all four steps, warnings not waved through.
    assert_eq!(
        c["command"],
        serde_json::json!(["/bin/sh", "/steps/steps.sh"])
    );
    assert!(c.get("args").is_none_or(|a| a.is_null()));
    assert_eq!(env_value(c, "SYN2MAS_STEPS"), SEQUENCE);
    assert_eq!(env_value(c, "SYN2MAS_ALLOW_WARNINGS"), "false");

    // Memory: from the benchmark, below the Helm chart's.
    let limits = &c["resources"]["limits"];
    let requests = &c["resources"]["requests"];
    let limit = bytes(s(&limits["memory"], "limits.memory"));
    let request = bytes(s(&requests["memory"], "requests.memory"));
    assert!(
        limit >= (2 * PEAK_RSS_MIB) << 20,
        "limit {limit} B is under twice the peak RSS"
    );
    assert!(limit <= ESS_LIMIT_MIB << 20, "limit {limit} B");
    assert!(request <= limit && request >= PEAK_RSS_MIB << 20);

    // Mounts and volumes resolve both ways.
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    let volume = |n: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == n)
            .unwrap_or_else(|| panic!("mount of undefined volume {n}"))
    };
    for m in mounts {
        volume(s(&m["name"], "mount name"));
    }
    for v in volumes {
        assert!(
            mounts.iter().any(|m| m["name"] == v["name"]),
            "volume {} is never mounted",
            v["name"]
        );
    }
    let mount_of = |path: &str| -> &Value {
        let m = mounts
            .iter()
            .filter(|m| path.starts_with(&format!("{}/", s(&m["mountPath"], "mountPath"))))
            .max_by_key(|m| s(&m["mountPath"], "mountPath").len())
            .unwrap_or_else(|| panic!("{path} is on no mounted volume"));
        volume(s(&m["name"], "name"))
    };

    // The steps script: the ConfigMap the kustomization generates from steps.sh.
    let steps = mount_of("/steps/steps.sh");
    let cm = s(&steps["configMap"]["name"], "steps configMap");
    let kustomization = yaml(&deploy("kubernetes/kustomization.yaml"));
    assert_eq!(kustomization["kind"], "Kustomization");
    let resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| s(r, "resource"))
        .collect();
    assert!(resources.contains(&"job.yaml"), "{resources:?}");
    for r in &resources {
        assert!(deploy(&format!("kubernetes/{r}")).is_file(), "{r}");
    }
    let generator = kustomization["configMapGenerator"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == cm)
        .unwrap_or_else(|| panic!("no configMapGenerator for {cm}"));
    assert_eq!(generator["options"]["disableNameSuffixHash"], true);
    assert_eq!(generator["files"], serde_json::json!(["steps.sh"]));
    assert!(deploy("kubernetes/steps.sh").is_file());
    let mode = steps["configMap"]["defaultMode"]
        .as_u64()
        .expect("defaultMode as a decimal number (YAML 1.1 and 1.2 read 0555 differently)");
    assert!(
        mode & 0o005 == 0o005,
        "steps.sh readable and executable by all: {mode:o}"
    );
    let config_mode = job["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"].is_object())
        .and_then(|v| v["secret"]["defaultMode"].as_u64())
        .expect("the Secret volume's defaultMode, decimal");
    assert_eq!(
        config_mode & 0o007,
        0,
        "configs not world-readable: {config_mode:o}"
    );
    assert_eq!(
        config_mode & 0o040,
        0o040,
        "group-readable (fsGroup): {config_mode:o}"
    );

    // Both config files come from the Secret, under the names the example Secret has.
    let secret = yaml(&deploy("kubernetes/secret.example.yaml"));
    assert_eq!(
        (&secret["apiVersion"], &secret["kind"]),
        (&"v1".into(), &"Secret".into())
    );
    for var in ["MAS_CONFIG_FILE", "SYNAPSE_CONFIG_FILE"] {
        let path = env_value(c, var);
        let vol = mount_of(path);
        assert_eq!(
            vol["secret"]["secretName"], secret["metadata"]["name"],
            "{var}={path} is not on the config Secret"
        );
        let file = path.rsplit('/').next().unwrap();
        let item = vol["secret"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["path"] == file)
            .unwrap_or_else(|| panic!("{file} is not an item of the Secret volume"));
        let key = s(&item["key"], "item key");
        assert!(
            secret["stringData"][key].is_string(),
            "the example Secret has no {key}"
        );
    }

    // TMPDIR (the spill files) is on a disk volume, needed with a read-only root filesystem.
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let tmp = mount_of(&format!("{}/x", env_value(c, "TMPDIR")));
    assert!(tmp["emptyDir"].is_object(), "TMPDIR on an emptyDir");
    assert!(
        tmp["emptyDir"]["medium"].is_null(),
        "not tmpfs: it would count against the memory limit"
    );

    // kubectl's own kustomize renders it (offline), where kubectl is installed.
    match Command::new("kubectl")
        .args(["kustomize"])
        .arg(deploy("kubernetes"))
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let docs = yaml_docs(&String::from_utf8_lossy(&out.stdout));
            let cm_doc = docs
                .iter()
                .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == cm)
                .expect("the rendered ConfigMap");
            assert_eq!(
                s(&cm_doc["data"]["steps.sh"], "steps.sh"),
                std::fs::read_to_string(deploy("kubernetes/steps.sh")).unwrap()
            );
            let rendered = docs
                .iter()
                .find(|d| d["kind"] == "Job")
                .expect("the rendered Job");
            assert_eq!(rendered["metadata"]["name"], name);
            assert_eq!(docs.len(), 2, "a Job and a ConfigMap, no Secret");
        }
        Err(e) => eprintln!("SKIP: kubectl is not installed ({e}); kustomize not rendered"),
    }
}

/// The example Secret's two files are configurations syn2mas accepts.
#[test]
fn example_secret_holds_configs_syn2mas_loads() {
    let secret = yaml(&deploy("kubernetes/secret.example.yaml"));
    let dir = tempfile::tempdir().unwrap();
    let write = |key: &str| {
        let p = dir.path().join(key);
        std::fs::write(&p, s(&secret["stringData"][key], key)).unwrap();
        p
    };
    let synapse = syn2mas::config::load_synapse(&[write("homeserver.yaml")])
        .unwrap_or_else(|e| panic!("homeserver.yaml: {e}"));
    let mas =
        syn2mas::config::load_mas(&[write("mas.yaml")]).unwrap_or_else(|e| panic!("mas.yaml: {e}"));
    let db = format!("{:?}", synapse.database.expect("a database section"));
    assert!(db.contains(".svc.cluster.local"), "{db}");
    assert!(format!("{:?}", mas.database).contains(".svc.cluster.local"));
}

#[test]
fn compose_example_runs_the_same_steps_with_the_same_limits() {
    let dir = deploy("compose");
    let compose = yaml(&dir.join("compose.yaml"));
    let svc = &compose["services"]["syn2mas"];
    assert!(svc.is_object(), "service syn2mas");
    let job = yaml(&deploy("kubernetes/job.yaml"));
    let pod = &job["spec"]["template"]["spec"];
    let c = &pod["containers"][0];

    assert_eq!(svc["entrypoint"], c["command"]);
    let volumes: Vec<&str> = svc["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| s(v, "volume"))
        .collect();
    // The same script file as the Job's ConfigMap, mounted where the entrypoint looks.
    let steps = volumes
        .iter()
        .find(|v| v.contains(":/steps/steps.sh"))
        .expect("steps.sh mounted");
    let host = steps.split(':').next().unwrap();
    assert_eq!(
        std::fs::canonicalize(dir.join(host)).unwrap(),
        std::fs::canonicalize(deploy("kubernetes/steps.sh")).unwrap()
    );
    assert!(steps.ends_with(":ro"));
    let config = volumes
        .iter()
        .find(|v| v.contains(":/config"))
        .expect("configs mounted");
    assert!(config.ends_with(":ro"), "{config}");
    assert!(dir.join(config.split(':').next().unwrap()).is_dir());
    let env = &svc["environment"];
    for var in ["MAS_CONFIG_FILE", "SYNAPSE_CONFIG_FILE"] {
        assert!(s(&env[var], var).starts_with("/config/"));
    }
    assert_eq!(
        s(&env["SYN2MAS_STEPS"], "SYN2MAS_STEPS"),
        format!("${{SYN2MAS_STEPS:-{SEQUENCE}}}")
    );
    assert!(
        volumes
            .iter()
            .any(|v| v.ends_with(&format!(":{}", s(&env["TMPDIR"], "TMPDIR")))),
        "TMPDIR on a volume: {volumes:?}"
    );

    let (uid, gid) = dockerfile_user();
    assert_eq!(s(&svc["user"], "user"), format!("{uid}:{gid}"));
    assert_eq!(svc["read_only"], true);
    assert_eq!(svc["restart"], "no");
    assert_eq!(
        bytes(s(&svc["mem_limit"], "mem_limit")),
        bytes(s(&c["resources"]["limits"]["memory"], "limit")),
        "the same memory limit as the Job"
    );
    assert_eq!(
        seconds(s(&svc["stop_grace_period"], "stop_grace_period")),
        pod["terminationGracePeriodSeconds"].as_u64().unwrap(),
        "the same grace as the Job"
    );
    let context = dir.join(s(&svc["build"]["context"], "build.context"));
    assert!(
        context.join("Dockerfile").is_file(),
        "{}",
        context.display()
    );
    for n in svc["networks"].as_array().unwrap() {
        let n = s(n, "network");
        assert_eq!(compose["networks"][n]["external"], true, "{n}");
    }
}

// ------------------------------------------------------------------------------------------------
// steps.sh, run for real
// ------------------------------------------------------------------------------------------------

use common::Fixture as Env;

impl Env {
    async fn new() -> Env {
        Env::of(
            TestDb::synapse(Schema::Project).await,
            TestDb::mas(Schema::Project).await,
        )
    }

    fn steps(&self, vars: &[(&str, &str)]) -> Command {
        let mut c = Command::new("sh");
        c.arg(deploy("kubernetes/steps.sh"))
            .env("SYN2MAS_BIN", syn2mas_bin())
            .env("MAS_CONFIG_FILE", &self.mas_config)
            .env("SYNAPSE_CONFIG_FILE", &self.homeserver)
            .env_remove("SYN2MAS_STEPS")
            .env_remove("SYN2MAS_ALLOW_WARNINGS")
            .env_remove("SYN2MAS_ARGS")
            .env_remove("SYN2MAS_MIGRATE_ARGS")
            .env_remove("SYN2MAS_TEST_PAUSE")
            .envs(vars.iter().copied())
            .stdin(Stdio::null());
        c
    }

    fn run(&self, vars: &[(&str, &str)]) -> (Option<i32>, String) {
        let out: Output = self.steps(vars).output().expect("run sh");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn mas_rows(&self) -> i64 {
        let mut n = 0;
        for t in syn2mas::sink::tables::NAMES {
            n += self.mas.count(t).await;
        }
        n
    }
}

/// The "step X: ..." lines the script logs, in order.
fn step_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("syn2mas-steps: step "))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn steps_stop_at_warnings_unless_allowed_then_run_all_four() {
    let env = Env::new().await;

    // The fixture has warnings: the sequence stops after check, with its exit code.
    let (code, err) = env.run(&[]);
    assert_eq!(code, Some(11), "{err}");
    assert_eq!(
        step_lines(&err),
        vec![
            "check: syn2mas check",
            "check: exit 11 (warnings: review them, then set SYN2MAS_ALLOW_WARNINGS=true); stopping",
        ],
        "{err}"
    );
    assert_eq!(env.mas_rows().await, 0);

    // A bad step name stops it before anything runs.
    let (code, err) = env.run(&[("SYN2MAS_STEPS", "check migrate-now")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unknown step 'migrate-now'"), "{err}");
    assert!(step_lines(&err).is_empty(), "{err}");

    // Warnings accepted: all four steps, in order, each passing, with JSON logs as asked.
    let (code, err) = env.run(&[
        ("SYN2MAS_ALLOW_WARNINGS", "true"),
        ("SYN2MAS_ARGS", "--log-format json"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        step_lines(&err),
        vec![
            "check: syn2mas check",
            "check: exit 11 (warnings), accepted (SYN2MAS_ALLOW_WARNINGS=true)",
            "dry-run: syn2mas migrate --dry-run --allow-warnings ",
            "dry-run: exit 0",
            "migrate: syn2mas migrate --allow-warnings ",
            "migrate: exit 0",
            "verify: syn2mas verify",
            "verify: exit 0",
        ],
        "{err}"
    );
    assert!(err.contains(&format!("syn2mas-steps: done: {SEQUENCE}")));
    for line in err.lines().filter(|l| !l.starts_with("syn2mas-steps: ")) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("SYN2MAS_ARGS reached syn2mas: {e}: {line}"));
        assert!(v["fields"]["message"].is_string());
    }
    assert!(env.mas_rows().await > 0);

    // Again: MAS is no longer empty, check says so and the sequence stops there.
    let (code, err) = env.run(&[("SYN2MAS_ALLOW_WARNINGS", "true")]);
    assert_eq!(code, Some(10), "{err}");
    assert_eq!(
        step_lines(&err).last().copied(),
        Some("check: exit 10 (errors: nothing was changed); stopping"),
        "{err}"
    );
}

/// Kubernetes sends SIGTERM to PID 1, here the shell: it must reach syn2mas, whose rollback
/// the shell waits for, and the pod's exit code must be syn2mas's 143.
#[tokio::test(flavor = "multi_thread")]
async fn steps_pass_sigterm_on_and_exit_with_the_rollback_code() {
    let env = Env::new().await;
    let mut child = env
        .steps(&[
            ("SYN2MAS_STEPS", "migrate"),
            ("SYN2MAS_ALLOW_WARNINGS", "true"),
            ("SYN2MAS_TEST_PAUSE", "rebuild"),
            // Bounded: a syn2mas the signal never reached must not outlive the test for long.
            ("SYN2MAS_TEST_PAUSE_SECS", "60"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stderr is read on a thread: an orphaned syn2mas could hold the pipe open.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("paused at rebuild") => break,
            Ok(_) => {}
            Err(e) => panic!("never paused ({e}): {:?}", child.try_wait()),
        }
    }
    let start = Instant::now();
    // SAFETY: kill(2) on our own child's pid (the shell); no memory is involved.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the shell did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        rest.push(l);
    }
    let rest = rest.join("\n");
    assert_eq!(status.code(), Some(143), "{status:?}: {rest}");
    assert!(rest.contains("received SIGTERM: passing it on"), "{rest}");
    assert!(
        rest.contains("Interrupted by SIGTERM: the migration was rolled back"),
        "syn2mas saw it: {rest}"
    );
    assert!(
        rest.contains("step migrate: exit 143 (stopped by SIGTERM: rolled back); stopping"),
        "{rest}"
    );
    assert_eq!(env.mas_rows().await, 0, "MAS untouched");
    assert_eq!(env.mas.leftovers().await, Vec::<String>::new());
}
