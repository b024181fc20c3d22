//! The `leasehold` command, built as a real binary and pointed by a kubeconfig at an API
//! server: the test double and a real kube-apiserver (`cli_on_both!`), or the double alone for
//! what does not depend on the server (usage, signals, the terminal, PID 1, connections) or
//! needs its faults. Mutual exclusion of the guarded command across a graceful handover, a
//! crash of the leading process, a paused wrapper and a hung API server; exit codes; the HTTP
//! endpoints; `status`; usage errors.
#![cfg(feature = "cli")]
#![allow(clippy::disallowed_methods)] // these tests read the real clock and spawn processes

mod apiserver;
mod backend;
mod envtest;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use apiserver::Kind;
use backend::Backend;

const BIN: &str = env!("CARGO_BIN_EXE_leasehold");

/// Runs each scenario `fn NAME(cluster: &Cluster)` on the double and on the real server
/// (`exclusive:` ones pause the server, and run alone on the real one).
macro_rules! cli_on_both {
    (exclusive: $($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn double() {
                super::$scenario(&super::Cluster::double(stringify!($scenario)));
            }

            #[test]
            fn real() {
                if let Some(cluster) = super::Cluster::real(stringify!($scenario), true) {
                    super::$scenario(&cluster);
                }
            }
        }
    )*};
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn double() {
                super::$scenario(&super::Cluster::double(stringify!($scenario)));
            }

            #[test]
            fn real() {
                if let Some(cluster) = super::Cluster::real(stringify!($scenario), false) {
                    super::$scenario(&cluster);
                }
            }
        }
    )*};
}

/// Runs each scenario on the double alone.
macro_rules! cli_on_double {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn double() {
                super::$scenario(&super::Cluster::double(stringify!($scenario)));
            }
        }
    )*};
}

/// An API server (double or real) with a runtime for its client calls, a namespace, a
/// kubeconfig pointing at both, and a scratch directory.
struct Cluster {
    backend: Backend,
    dir: PathBuf,
    kubeconfig: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Cluster {
    fn double(test: &str) -> Cluster {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let backend = runtime.block_on(Backend::double(test));
        Cluster::with(test, backend, runtime)
    }

    fn real(test: &str, exclusive: bool) -> Option<Cluster> {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let backend = runtime.block_on(async {
            if exclusive {
                Backend::real_exclusive(test).await
            } else {
                Backend::real(test).await
            }
        })?;
        Some(Cluster::with(test, backend, runtime))
    }

    fn with(test: &str, backend: Backend, runtime: tokio::runtime::Runtime) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "leasehold-cli-{test}-{}-{}",
            backend.name(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let kubeconfig = backend.kubeconfig("admin");
        Cluster {
            backend,
            dir,
            kubeconfig,
            runtime,
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig.clone()
    }

    /// The namespace every command uses by default.
    fn ns(&self) -> &str {
        self.backend.ns()
    }

    /// `leasehold ARGS` with this cluster's kubeconfig and fast timings where they apply.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        command
    }

    /// `leasehold ARGS` started in the background, its output discarded.
    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("leasehold starts")
    }

    fn object(&self, kind: Kind, name: &str) -> Option<serde_json::Value> {
        self.runtime.block_on(self.backend.object(kind, name))
    }

    fn put_raw(&self, kind: Kind, name: &str, object: serde_json::Value) {
        self.runtime
            .block_on(self.backend.put_raw(kind, name, object));
    }

    fn hang(&self, on: bool) {
        self.backend.hang(on);
    }

    fn holder(&self, lease: &str) -> Option<String> {
        self.object(Kind::Lease, lease)
            .and_then(|o| o["spec"]["holderIdentity"].as_str().map(String::from))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A paused server must not outlive a failed test.
        self.backend.hang(false);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const FAST: [&str; 6] = [
    "--lease-duration",
    "2s",
    "--renew-deadline",
    "1500ms",
    "--retry-period",
    "200ms",
];

/// A command that stamps "IDENTITY NANOS" into `file` every 20 ms while it lives.
fn stamper(file: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "while true; do echo \"$LEASEHOLD_IDENTITY $(date +%s%N) $LEASEHOLD_FENCING_TOKEN\" >> {}; sleep 0.02; done",
            file.display()
        ),
    ]
}

fn run_stamping(cluster: &Cluster, identity: &str, file: &Path) -> Child {
    let mut args: Vec<String> = [
        "run",
        "--lease",
        "ctl",
        "--identity",
        identity,
        "--grace",
        "500ms",
        "--watch",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.extend(FAST.iter().map(ToString::to_string));
    args.push("--".into());
    args.extend(stamper(file));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster.spawn(&args)
}

/// The stamps so far: (identity, nanoseconds).
fn stamps(file: &Path) -> Vec<(String, u128)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
        })
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(20));
    }
}

/// The last identity stamping, once a stamp newer than `after` appears.
fn stamping_after(file: &Path, after: u128) -> Option<String> {
    stamps(file)
        .into_iter()
        .rev()
        .find(|(_, t)| *t > after)
        .map(|(id, _)| id)
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Whether the stamps of different identities ever interleave: every change of identity must
/// be a clean handover (the old one never stamps again after the new one started).
fn assert_never_together(file: &Path) {
    let stamps = stamps(file);
    let mut finished: Vec<String> = Vec::new();
    let mut current: Option<&str> = None;
    for (id, _) in &stamps {
        if current != Some(id.as_str()) {
            assert!(
                !finished.contains(id),
                "{id} stamped again after another identity had started: {stamps:?}"
            );
            if let Some(c) = current {
                finished.push(c.to_string());
            }
            current = Some(id);
        }
    }
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn the_command_never_runs_twice_across_handover_and_crash(cluster: &Cluster) {
    let file = cluster.dir.join("stamps");
    let mut a = run_stamping(cluster, "a", &file);
    let mut b = run_stamping(cluster, "b", &file);
    wait_for("a first leader", Duration::from_secs(10), || {
        stamping_after(&file, 0).is_some()
    });
    let first = stamping_after(&file, 0).expect("a leader");
    let (leader, follower) = if first == "a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    // Graceful handover: SIGTERM to the leading leasehold.
    let t = now_nanos();
    signal(leader, "TERM");
    let status = leader.wait().expect("exits");
    assert_eq!(status.code(), Some(0), "a clean shutdown exits 0");
    let second = if first == "a" { "b" } else { "a" };
    wait_for("the handover", Duration::from_secs(5), || {
        stamping_after(&file, t).as_deref() == Some(second)
    });
    // Crash: SIGKILL to the leading leasehold; its command must die with it.
    let mut c = run_stamping(cluster, "c", &file);
    sleep(Duration::from_millis(300));
    signal(follower, "KILL");
    let killed = now_nanos();
    let _ = follower.wait();
    sleep(Duration::from_millis(300));
    let late: Vec<_> = stamps(&file)
        .into_iter()
        .filter(|(id, t)| id == second && *t > killed + 200_000_000)
        .collect();
    assert!(
        late.is_empty(),
        "the command outlived its leasehold: {late:?}"
    );
    wait_for("the failover", Duration::from_secs(10), || {
        stamping_after(&file, killed).as_deref() == Some("c")
    });
    signal(&c, "TERM");
    let _ = c.wait();
    assert_never_together(&file);
}

fn a_hung_api_server_gets_the_command_killed_by_the_end_of_the_term(cluster: &Cluster) {
    let file = cluster.dir.join("stamps");
    let mut a = run_stamping(cluster, "a", &file);
    wait_for("a leader", Duration::from_secs(10), || {
        stamping_after(&file, 0).is_some()
    });
    sleep(Duration::from_millis(300));
    let hung = now_nanos();
    cluster.hang(true);
    // The last renewal was issued at most a retry period before the hang: the term ends
    // within the renew deadline (1.5 s) of it, and the command is dead by then.
    sleep(Duration::from_secs(3));
    let late: Vec<_> = stamps(&file)
        .into_iter()
        .filter(|(_, t)| *t > hung + 1_600_000_000)
        .collect();
    assert!(late.is_empty(), "stamps after the term: {late:?}");
    cluster.hang(false);
    signal(&a, "TERM");
    let _ = a.wait();
}

fn exit_codes_and_release(cluster: &Cluster) {
    let check_lease = format!(
        "test \"$LEASEHOLD_LEASE\" = {}/once && exit 7",
        cluster.ns()
    );
    let mut args = vec![
        "run",
        "--lease",
        "once",
        "--identity",
        "a",
        "--grace",
        "500ms",
    ];
    args.extend(FAST);
    args.extend(["--", "sh", "-c", &check_lease]);
    let out = cluster.command(&args).output().expect("runs");
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        cluster.holder("once").as_deref(),
        Some(""),
        "released after the command"
    );
    // --no-release keeps the lock named.
    let mut args = vec![
        "run",
        "--lease",
        "kept",
        "--identity",
        "a",
        "--no-release",
        "--grace",
        "500ms",
    ];
    args.extend(FAST);
    args.extend(["--", "true"]);
    let out = cluster.command(&args).output().expect("runs");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(cluster.holder("kept").as_deref(), Some("a"));
}

fn usage_errors_exit_2_with_a_clear_message(cluster: &Cluster) {
    let cases: [(&[&str], &str); 5] = [
        (&["run", "--", "true"], "--lease"),
        (&["run", "--lease", "x"], "COMMAND"),
        (&["bogus"], "bogus"),
        (
            &[
                "run",
                "--lease",
                "x",
                "--lease-duration",
                "1s",
                "--renew-deadline",
                "2s",
                "--",
                "true",
            ],
            "leaseDuration must be greater than renewDeadline",
        ),
        (
            &[
                "run",
                "--lease",
                "x",
                "--retry-period",
                "soon",
                "--",
                "true",
            ],
            "soon",
        ),
    ];
    for (args, says) in cases {
        let out = cluster.command(args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

fn a_missing_namespace_or_permission_is_named_with_the_role_needed(cluster: &Cluster) {
    let gone = cluster
        .runtime
        .block_on(cluster.backend.missing_namespace());
    let out = cluster
        .command(&["run", "--lease", "x", "--namespace", &gone, "--", "true"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("namespace \"{gone}\" does not exist")),
        "{stderr}"
    );
    // The unprivileged user, granted all but update.
    cluster.runtime.block_on(cluster.backend.grant(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "list", "watch"],
    ));
    let out = cluster
        .command(&["run", "--lease", "x", "--", "true"])
        .env("KUBECONFIG", cluster.backend.kubeconfig("alice"))
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("may not update"), "{stderr}");
    assert!(stderr.contains("kind: Role"), "{stderr}");
}

/// Watching is the default; an identity that may not list or watch the lock polls it instead,
/// and the command says so once.
fn without_list_or_watch_the_command_polls_and_says_so(cluster: &Cluster) {
    cluster.runtime.block_on(cluster.backend.grant(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
    ));
    let mut args = vec![
        "run",
        "--lease",
        "polled",
        "--identity",
        "a",
        "--grace",
        "500ms",
    ];
    args.extend(FAST);
    args.extend(["--", "true"]);
    let out = cluster
        .command(&args)
        .env("KUBECONFIG", cluster.backend.kubeconfig("alice"))
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        stderr.matches("polling it instead").count(),
        1,
        "said once: {stderr}"
    );
    assert!(stderr.contains("grant list and watch"), "{stderr}");
    // Released on exit: the command ran while leading.
    assert_eq!(cluster.holder("polled").as_deref(), Some(""));
    // With list and watch, nothing is said.
    cluster.runtime.block_on(cluster.backend.grant(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update", "list", "watch"],
    ));
    let out = cluster
        .command(&args)
        .env("KUBECONFIG", cluster.backend.kubeconfig("alice"))
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("polling"), "{stderr}");
}

/// `--coordinated`: two wrapped programs registered as LeaseCandidates; the election
/// controller picks the older version, a better late candidate takes over, the programs never
/// run together, and the candidates are deleted on exit.
fn the_command_takes_part_in_a_coordinated_election(cluster: &Cluster) {
    {
        let _runtime = cluster.runtime.enter();
        cluster.backend.election_controller();
    }
    let file = cluster.dir.join("stamps");
    let coordinated = |identity: &str, version: &str| {
        let mut args: Vec<String> = [
            "run",
            "--lease",
            "ctl",
            "--identity",
            identity,
            "--grace",
            "500ms",
            "--coordinated",
            "--binary-version",
            version,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        args.extend(FAST.iter().map(ToString::to_string));
        args.push("--".into());
        args.extend(stamper(&file));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster
            .command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("leasehold starts")
    };
    let newer = coordinated("newer", "1.37.0");
    wait_for("the only candidate leads", Duration::from_secs(10), || {
        stamping_after(&file, 0).as_deref() == Some("newer")
    });
    assert!(cluster.object(Kind::LeaseCandidate, "newer").is_some());
    let joined = now_nanos();
    let older = coordinated("older", "1.36.0");
    wait_for(
        "the better late candidate leads",
        Duration::from_secs(10),
        || stamping_after(&file, joined).as_deref() == Some("older"),
    );
    for child in [older, newer] {
        signal(&child, "TERM");
        let out = child.wait_with_output().expect("exits");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    }
    assert_never_together(&file);
    for name in ["newer", "older"] {
        assert!(
            cluster.object(Kind::LeaseCandidate, name).is_none(),
            "{name}'s registration is deleted on exit"
        );
    }
}

/// Coordinated election needs a Lease lock, versions and an identity that names an object.
fn coordinated_usage_errors_are_found_before_contending(cluster: &Cluster) {
    for (bad, said) in [
        (vec!["--coordinated"], "--binary-version"),
        (vec!["--binary-version", "1.36.0"], "--coordinated"),
        (
            vec!["--coordinated", "--binary-version", "one"],
            "--binary-version",
        ),
        (
            vec![
                "--coordinated",
                "--binary-version",
                "1.36.0",
                "--emulation-version",
                "1.37.0",
            ],
            "--binary-version",
        ),
        (
            vec![
                "--coordinated",
                "--binary-version",
                "1.36.0",
                "--lock",
                "configmap",
            ],
            "--lock lease",
        ),
        (
            vec![
                "--coordinated",
                "--binary-version",
                "1.36.0",
                "--identity",
                "a_b",
            ],
            "object name",
        ),
    ] {
        let mut args = vec!["run", "--lease", "ctl"];
        if !bad.contains(&"--identity") {
            args.extend(["--identity", "a"]);
        }
        args.extend(bad.iter().copied());
        args.extend(["--", "true"]);
        let out = cluster.command(&args).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains(said), "{bad:?}: {stderr}");
    }
    assert!(cluster.object(Kind::Lease, "ctl").is_none());
}

fn status_shows_the_lock(cluster: &Cluster) {
    let out = cluster
        .command(&["status", "--lease", "shown"])
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("does not exist"));
    let mut args = vec![
        "run",
        "--lease",
        "shown",
        "--identity",
        "a",
        "--no-release",
        "--grace",
        "500ms",
    ];
    args.extend(FAST);
    args.extend(["--", "true"]);
    assert!(cluster.command(&args).status().expect("runs").success());
    let out: Output = cluster
        .command(&["status", "--lease", "shown", "-o", "json"])
        .output()
        .expect("runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["holderIdentity"], "a");
    assert_eq!(json["leaseDurationSeconds"], 2);
    assert_eq!(json["leaderTransitions"], 0);
    assert!(json["renewedSecondsAgo"].as_f64().is_some_and(|s| s < 60.0));
    let out = cluster
        .command(&["status", "--lease", "shown"])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("holder:       a"), "{text}");
    assert!(text.contains("ago)"), "{text}");
}

fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("sends");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("reads");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

/// A pod, as small as the real server accepts.
fn pod(labels: serde_json::Value, annotations: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.example.com/app"}]},
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn the_sidecar_serves_leader_health_readiness_metrics_and_a_status_file(cluster: &Cluster) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let status_file = cluster.dir.join("leader");
    let file = status_file.display().to_string();
    let mut args = vec![
        "serve",
        "--lease",
        "side",
        "--identity",
        "a",
        "--http",
        &addr,
        "--status-file",
        &file,
    ];
    args.extend(FAST);
    let mut serve = cluster.spawn(&args);
    wait_for("the sidecar leads", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() && get(port, "/").1.contains("\"a\"")
    });
    assert_eq!(get(port, "/"), (200, "{\"name\":\"a\"}".to_string()));
    assert_eq!(get(port, "/healthz").0, 200);
    assert_eq!(get(port, "/readyz").0, 200);
    let (code, metrics) = get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains(&format!(
            "leader_election_master_status{{name=\"{}/side\"}} 1",
            cluster.ns()
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "leader_election_slowpath_total{{name=\"{}/side\"}}",
            cluster.ns()
        )),
        "{metrics}"
    );
    assert_eq!(
        std::fs::read_to_string(&status_file)
            .expect("present")
            .trim(),
        "a"
    );
    signal(&serve, "TERM");
    assert!(serve.wait().expect("exits").success());
    assert!(!status_file.exists(), "gone once it stopped leading");
    assert_eq!(cluster.holder("side").as_deref(), Some(""), "released");
}

fn the_sidecar_labels_its_pod_while_it_leads(cluster: &Cluster) {
    cluster.put_raw(
        Kind::Pod,
        "side-0",
        pod(serde_json::json!({"app": "side"}), serde_json::json!({})),
    );
    let label = |c: &Cluster| {
        c.object(Kind::Pod, "side-0")
            .map(|p| p["metadata"]["labels"].clone())
            .unwrap_or_default()
    };
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["serve", "--lease", "lbl", "--http", &addr, "--label-pod"];
    args.extend(FAST);
    let mut serve = cluster
        .command(&args)
        .env("POD_NAME", "side-0")
        .env("POD_NAMESPACE", cluster.ns())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    wait_for("the label", Duration::from_secs(10), || {
        label(cluster)["leasehold.dev/leader"] == "true"
    });
    assert_eq!(label(cluster)["app"], "side", "other labels kept");
    assert_eq!(
        cluster.holder("lbl").as_deref(),
        Some("side-0"),
        "POD_NAME is the identity"
    );
    signal(&serve, "TERM");
    assert!(serve.wait().expect("exits").success());
    let labels = label(cluster);
    assert_eq!(labels["app"], "side", "the pod is still there");
    assert!(labels.get("leasehold.dev/leader").is_none(), "removed");
}

fn restart_runs_the_command_again_while_leading(cluster: &Cluster) {
    let file = cluster.dir.join("runs");
    let script = format!("echo run >> {}; sleep 0.1", file.display());
    let mut args = vec![
        "run",
        "--lease",
        "again",
        "--identity",
        "a",
        "--restart",
        "--grace",
        "500ms",
    ];
    args.extend(FAST);
    args.extend(["--", "sh", "-c", &script]);
    let mut run = cluster.spawn(&args);
    wait_for("three runs", Duration::from_secs(10), || {
        std::fs::read_to_string(&file).is_ok_and(|s| s.lines().count() >= 3)
    });
    signal(&run, "TERM");
    assert_eq!(run.wait().expect("exits").code(), Some(0));
    assert_eq!(cluster.holder("again").as_deref(), Some(""), "released");
}

fn a_command_that_ignores_sigterm_is_killed_at_the_deadline(cluster: &Cluster) {
    let file = cluster.dir.join("stamps");
    let script = format!(
        "trap '' TERM; while true; do echo \"s $(date +%s%N)\" >> {}; sleep 0.02; done",
        file.display()
    );
    let mut args = vec![
        "run",
        "--lease",
        "stubborn",
        "--identity",
        "s",
        "--grace",
        "500ms",
    ];
    args.extend(FAST);
    args.extend(["--", "sh", "-c", &script]);
    let mut run = cluster.spawn(&args);
    wait_for("it runs", Duration::from_secs(10), || {
        stamping_after(&file, 0).is_some()
    });
    let t = now_nanos();
    signal(&run, "TERM");
    let _ = run.wait();
    let stopped = now_nanos();
    assert!(
        stopped - t < 1_500_000_000,
        "shutdown bounded by the grace period"
    );
    sleep(Duration::from_millis(300));
    let late: Vec<_> = stamps(&file)
        .into_iter()
        .filter(|(_, at)| *at > stopped + 100_000_000)
        .collect();
    assert!(late.is_empty(), "SIGKILLed by leasehold's exit: {late:?}");
}

fn help_exits_0_and_a_grace_longer_than_the_term_is_a_usage_error(cluster: &Cluster) {
    let out = cluster.command(&["run", "--help"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--grace"));
    // No cluster is needed to refuse bad flags.
    let out = Command::new(BIN)
        .args(["run", "--lease", "x", "--grace", "20s", "--", "true"])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--grace"));
}

fn a_stale_status_file_is_cleared_by_a_follower(cluster: &Cluster) {
    // Someone else holds the lock for a long lease.
    let mut args = vec![
        "run",
        "--lease",
        "held",
        "--identity",
        "other",
        "--no-release",
    ];
    args.extend([
        "--lease-duration",
        "60s",
        "--renew-deadline",
        "40s",
        "--retry-period",
        "2s",
    ]);
    args.extend(["--", "true"]);
    assert!(cluster.command(&args).status().expect("runs").success());
    // A file left by a sidecar that died while leading.
    let status_file = cluster.dir.join("leader");
    std::fs::write(&status_file, "me\n").expect("written");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let file = status_file.display().to_string();
    let mut args = vec![
        "serve",
        "--lease",
        "held",
        "--identity",
        "me",
        "--http",
        &addr,
        "--status-file",
        &file,
    ];
    args.extend(FAST);
    let mut serve = cluster.spawn(&args);
    wait_for("the sidecar answers", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() && get(port, "/").1.contains("other")
    });
    assert!(!status_file.exists(), "a follower shows no status file");
    signal(&serve, "TERM");
    let _ = serve.wait();
}

// ---- the command's promise under attack (a program never runs twice) -----------------------

/// A command that stamps "IDENTITY NANOS TOKEN GUARD" into `file` every 20 ms, where GUARD is
/// its parent (the guard of the leasehold that runs it), and appends a line to `starts` when it
/// starts.
fn stamper_counting(file: &Path, starts: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "echo start >> {}; while true; do echo \"$LEASEHOLD_IDENTITY $(date +%s%N) $LEASEHOLD_FENCING_TOKEN $PPID\" >> {}; sleep 0.02; done",
            starts.display(),
            file.display()
        ),
    ]
}

/// `leasehold run` with the fast timings, a 500 ms grace, watching, and `command`.
fn run_args(identity: &str, lease: &str, command: Vec<String>) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--lease",
        lease,
        "--identity",
        identity,
        "--grace",
        "500ms",
        "--watch",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.extend(FAST.iter().map(ToString::to_string));
    args.push("--".into());
    args.extend(command);
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Every stamp as (identity, nanos, token, guard).
fn full_stamps(file: &Path) -> Vec<(String, u128, u64, u32)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((
                p.next()?.to_string(),
                p.next()?.parse().ok()?,
                p.next()?.parse().ok()?,
                p.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// No two guards' commands ever stamp at interleaved times: each guard's stamps form one
/// block (a guard is one run of the command).
fn assert_one_runner_at_a_time(file: &Path) {
    let stamps = full_stamps(file);
    let mut finished: Vec<u32> = Vec::new();
    let mut current: Option<u32> = None;
    for (_, _, _, guard) in &stamps {
        if current != Some(*guard) {
            assert!(
                !finished.contains(guard),
                "guard {guard} stamped again after another run had started: {stamps:?}"
            );
            if let Some(c) = current {
                finished.push(c);
            }
            current = Some(*guard);
        }
    }
}

fn leader_stamping_after(file: &Path, after: u128) -> Option<(String, u64)> {
    full_stamps(file)
        .into_iter()
        .rev()
        .find(|s| s.1 > after)
        .map(|s| (s.0, s.2))
}

fn a_paused_leasehold_cannot_keep_its_command_running(cluster: &Cluster) {
    let (file, starts) = (cluster.dir.join("stamps"), cluster.dir.join("starts"));
    let mut a = cluster.spawn(&strs(&run_args("a", "p", stamper_counting(&file, &starts))));
    wait_for("a leads", Duration::from_secs(10), || {
        leader_stamping_after(&file, 0).is_some()
    });
    let mut b = cluster.spawn(&strs(&run_args("b", "p", stamper_counting(&file, &starts))));
    sleep(Duration::from_millis(500));
    // Ctrl-Z or `kill -STOP`: only leasehold stops (the command has a group of its own).
    signal(&a, "STOP");
    let paused = now_nanos();
    wait_for("b takes over", Duration::from_secs(10), || {
        leader_stamping_after(&file, paused).is_some_and(|(id, _)| id == "b")
    });
    // a's command stopped by the end of a's term: its last renewal preceded the pause.
    let late: Vec<_> = full_stamps(&file)
        .into_iter()
        .filter(|s| s.0 == "a" && s.1 > paused + 1_600_000_000)
        .collect();
    assert!(late.is_empty(), "a's command outlived its term: {late:?}");
    signal(&a, "CONT");
    sleep(Duration::from_millis(500));
    signal(&a, "TERM");
    signal(&b, "TERM");
    let _ = (a.wait(), b.wait());
    assert_one_runner_at_a_time(&file);
}

fn a_blocked_log_pipe_does_not_keep_the_command_running(cluster: &Cluster) {
    let file = cluster.dir.join("stamps");
    // The command fills leasehold's stderr pipe (which nobody reads), then stamps.
    let script = format!(
        "head -c 1000000 /dev/zero >&2 & while true; do echo \"a $(date +%s%N) $LEASEHOLD_FENCING_TOKEN $PPID\" >> {}; sleep 0.02; done",
        file.display()
    );
    let args = run_args("a", "logs", vec!["sh".into(), "-c".into(), script]);
    let mut a = cluster
        .command(&strs(&args))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let _unread = a.stderr.take();
    wait_for("a leads", Duration::from_secs(10), || {
        leader_stamping_after(&file, 0).is_some()
    });
    sleep(Duration::from_millis(500));
    let hung = now_nanos();
    cluster.hang(true);
    sleep(Duration::from_secs(3));
    let late: Vec<_> = full_stamps(&file)
        .into_iter()
        .filter(|s| s.1 > hung + 1_600_000_000)
        .collect();
    assert!(late.is_empty(), "stamps after the term: {late:?}");
    cluster.hang(false);
    let _ = a.kill();
    let _ = a.wait();
}

fn a_daemonizing_command_is_killed_with_everything_it_started(cluster: &Cluster) {
    let file = cluster.dir.join("stamps");
    let daemon = format!(
        "while true; do echo \"d $(date +%s%N)\" >> {}; sleep 0.02; done",
        file.display()
    );
    // setsid (a new session and group), and a double fork that orphans the daemon.
    for script in [
        format!("setsid sh -c '{daemon}' >/dev/null 2>&1 </dev/null & sleep 0.3; exit 0"),
        format!("(setsid sh -c '{daemon}' >/dev/null 2>&1 </dev/null &) ; sleep 0.3; exit 0"),
    ] {
        let _ = std::fs::remove_file(&file);
        let args = run_args("a", "daemon", vec!["sh".into(), "-c".into(), script]);
        let out = cluster.command(&strs(&args)).output().expect("runs");
        let exited = now_nanos();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stamps(&file).len() > 3, "the daemon ran");
        sleep(Duration::from_millis(300));
        let late: Vec<_> = stamps(&file)
            .into_iter()
            .filter(|(_, t)| *t > exited)
            .collect();
        assert!(late.is_empty(), "the daemon outlived leasehold: {late:?}");
    }
}

fn a_restarted_wrapper_waits_for_its_old_lease_and_its_token_rises(cluster: &Cluster) {
    let (file, starts) = (cluster.dir.join("stamps"), cluster.dir.join("starts"));
    let args = run_args("a", "r", stamper_counting(&file, &starts));
    let mut first = cluster.spawn(&strs(&args));
    wait_for("a leads", Duration::from_secs(10), || {
        leader_stamping_after(&file, 0).is_some()
    });
    let (_, token) = leader_stamping_after(&file, 0).expect("stamps");
    signal(&first, "KILL");
    let _ = first.wait();
    let killed = now_nanos();
    let mut second = cluster.spawn(&strs(&args));
    wait_for("a leads again", Duration::from_secs(10), || {
        leader_stamping_after(&file, killed).is_some()
    });
    let again = full_stamps(&file)
        .into_iter()
        .find(|s| s.1 > killed)
        .expect("stamps");
    assert!(
        again.1 > killed + 1_900_000_000,
        "it waited out the lease (2 s): {} ms",
        (again.1 - killed) / 1_000_000
    );
    assert_eq!(again.2, token + 1, "the fencing token rose");
    signal(&second, "TERM");
    let _ = second.wait();
    assert_one_runner_at_a_time(&file);
}

fn an_edit_naming_a_follower_does_not_start_it_at_once(cluster: &Cluster) {
    let (file, starts) = (cluster.dir.join("stamps"), cluster.dir.join("starts"));
    let mut a = cluster.spawn(&strs(&run_args("a", "e", stamper_counting(&file, &starts))));
    wait_for("a leads", Duration::from_secs(10), || {
        leader_stamping_after(&file, 0).is_some()
    });
    let mut b = cluster.spawn(&strs(&run_args("b", "e", stamper_counting(&file, &starts))));
    sleep(Duration::from_millis(500));
    let (_, token) = leader_stamping_after(&file, 0).expect("stamps");
    let mut lease = cluster.object(Kind::Lease, "e").expect("the lease");
    lease["spec"]["holderIdentity"] = "b".into();
    let edited = now_nanos();
    cluster.put_raw(Kind::Lease, "e", lease);
    // a sees the lock taken and stops; nobody starts a term on the edited record before its
    // lease has run out (b did not write it; a no longer holds it), and the next term's
    // token is above a's.
    wait_for("a new term", Duration::from_secs(10), || {
        full_stamps(&file).iter().any(|s| s.2 > token)
    });
    let next = full_stamps(&file)
        .into_iter()
        .find(|s| s.2 > token)
        .expect("a new term");
    assert!(
        next.1 > edited + 1_900_000_000,
        "the edited lease was waited out: {} ms",
        (next.1 - edited) / 1_000_000
    );
    assert_eq!(next.2, token + 1);
    signal(&a, "TERM");
    signal(&b, "TERM");
    let _ = (a.wait(), b.wait());
    assert_one_runner_at_a_time(&file);
}

fn two_wrappers_with_one_identity_never_both_run_and_one_says_why(cluster: &Cluster) {
    let (file, starts) = (cluster.dir.join("stamps"), cluster.dir.join("starts"));
    let args = run_args("x", "t", stamper_counting(&file, &starts));
    let spawn = || {
        cluster
            .command(&strs(&args))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts")
    };
    let mut one = spawn();
    wait_for("one leads", Duration::from_secs(10), || {
        leader_stamping_after(&file, 0).is_some()
    });
    let mut two = spawn();
    let start = Instant::now();
    let (mut quit, mut stayed) = loop {
        if let Some(status) = two.try_wait().expect("waits") {
            assert_eq!(status.code(), Some(1));
            break (two, one);
        }
        if let Some(status) = one.try_wait().expect("waits") {
            assert_eq!(status.code(), Some(1));
            break (one, two);
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "nobody noticed the clash"
        );
        sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    quit.stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .expect("reads");
    assert!(
        stderr.contains("under this candidate's identity"),
        "{stderr}"
    );
    assert!(
        stayed.try_wait().expect("waits").is_none(),
        "the other runs on"
    );
    signal(&stayed, "TERM");
    let _ = stayed.wait();
    let _ = quit.wait();
    assert_one_runner_at_a_time(&file);
}

fn no_command_starts_between_the_early_stop_and_a_renewal(cluster: &Cluster) {
    let (file, starts) = (cluster.dir.join("stamps"), cluster.dir.join("starts"));
    let mut a = cluster.spawn(&strs(&run_args("a", "s", stamper_counting(&file, &starts))));
    wait_for("a leads", Duration::from_secs(10), || {
        leader_stamping_after(&file, 0).is_some()
    });
    let count = || {
        std::fs::read_to_string(&starts)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(count(), 1);
    // No renewal: the command is stopped a grace period before the term ends, and must not be
    // started again until a renewal moves the end on.
    cluster.hang(true);
    sleep(Duration::from_secs(3));
    assert_eq!(count(), 1, "started again without a renewal");
    cluster.hang(false);
    wait_for("leading again", Duration::from_secs(10), || count() == 2);
    sleep(Duration::from_millis(500));
    assert_eq!(count(), 2);
    signal(&a, "TERM");
    let _ = a.wait();
}

#[test]
fn a_grace_period_that_would_stop_a_healthy_leader_is_a_usage_error() {
    let run = |grace: &str| {
        let mut args = vec!["run", "--lease", "x", "--grace", grace];
        args.extend(FAST);
        args.extend(["--", "true"]);
        Command::new(BIN)
            .args(&args)
            .env("KUBECONFIG", "/nonexistent")
            .env_remove("POD_NAME")
            .output()
            .expect("runs")
    };
    // RD - RP = 1.3 s.
    let out = run("1300ms");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--renew-deadline minus --retry-period"),
        "{stderr}"
    );
    let out = run("1200ms");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(2), "accepted: {stderr}");
    // An annotation lock is renewed once a second at most: RD - 1 s = 500 ms.
    let mut args = vec![
        "run",
        "--lease",
        "x",
        "--lock",
        "configmap",
        "--grace",
        "500ms",
    ];
    args.extend(FAST);
    args.extend(["--", "true"]);
    let out = Command::new(BIN)
        .args(&args)
        .env("KUBECONFIG", "/nonexistent")
        .env_remove("POD_NAME")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("time precision"), "{stderr}");
}

fn the_command_gets_default_signal_dispositions_and_the_terminal(cluster: &Cluster) {
    let status = cluster.dir.join("status");
    let script = format!("cat /proc/self/status > {}", status.display());
    let args = run_args("a", "sig", vec!["sh".into(), "-c".into(), script]);
    let out = cluster.command(&strs(&args)).output().expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let text = std::fs::read_to_string(&status).expect("written");
    let mask = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .expect("in /proc/self/status")
    };
    assert_eq!(mask("SigBlk:"), 0, "no signal blocked");
    assert_eq!(mask("SigIgn:") & (1 << 12), 0, "SIGPIPE not ignored");

    // In the foreground of a terminal, a command that reads it gets the terminal (no SIGTTIN).
    if Command::new("script").arg("--version").output().is_err() {
        panic!("`script` (util-linux) is needed for the terminal test");
    }
    let got = cluster.dir.join("got");
    let read = format!("read line; echo \"got:$line\" > {}", got.display());
    let args = run_args("a", "tty", vec!["sh".into(), "-c".into(), read]);
    let inner: Vec<String> = std::iter::once(BIN.to_string())
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect();
    let mut script = Command::new("script")
        .args(["-qec", &inner.join(" "), "/dev/null"])
        .env("KUBECONFIG", cluster.kubeconfig())
        .env_remove("POD_NAME")
        .env_remove("POD_NAMESPACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("script runs");
    let mut stdin = script.stdin.take().expect("piped");
    sleep(Duration::from_millis(1500));
    writeln!(stdin, "hello").expect("typed");
    wait_for(
        "the command read the terminal",
        Duration::from_secs(10),
        || std::fs::read_to_string(&got).is_ok_and(|s| s.trim() == "got:hello"),
    );
    drop(stdin);
    let _ = script.wait();
}

/// As PID 1 of a PID namespace (a container's entrypoint), leasehold reaps orphans that are
/// re-parented to it (processes that `kubectl exec` left behind), and the command's own
/// orphans are reaped by its guard.
fn as_pid_1_orphans_are_reaped(cluster: &Cluster) {
    let uid = Command::new("id").arg("-u").output().expect("id runs");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: a PID namespace needs root (unshare --pid)");
        return;
    }
    let script = "for i in $(seq 50); do (sleep 0.1 &); done; sleep 60";
    let mut args: Vec<String> = vec![
        "--pid".into(),
        "--fork".into(),
        "--mount-proc".into(),
        BIN.into(),
    ];
    args.extend(run_args(
        "a",
        "pid1",
        vec!["sh".into(), "-c".into(), script.into()],
    ));
    let mut ns = Command::new("unshare")
        .args(&args)
        .env("KUBECONFIG", cluster.kubeconfig())
        .env_remove("POD_NAME")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare runs");
    // leasehold is unshare's child, PID 1 inside.
    let unshare = ns.id();
    let mut pid1 = None;
    wait_for("leasehold starts as PID 1", Duration::from_secs(5), || {
        pid1 = children(unshare).into_iter().next();
        pid1.is_some()
    });
    let pid1 = pid1.expect("found");
    wait_for("it leads", Duration::from_secs(10), || {
        cluster.holder("pid1").as_deref() == Some("a")
    });
    // Orphans re-parented to PID 1, as `kubectl exec` leaves them: nsenter's child forks a
    // sleeper and exits, nsenter exits.
    for _ in 0..50 {
        let status = Command::new("nsenter")
            .args([
                "-t",
                &pid1.to_string(),
                "-p",
                "--",
                "sh",
                "-c",
                "sleep 0.1 &",
            ])
            .status()
            .expect("nsenter runs");
        assert!(status.success());
    }
    sleep(Duration::from_secs(3));
    let zombies = zombies_below(pid1);
    signal_pid(unshare, "TERM");
    signal_pid(pid1, "TERM");
    let _ = ns.wait();
    assert_eq!(zombies, 0, "zombies left in the namespace");
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Zombies among the descendants of `root`.
fn zombies_below(root: u32) -> usize {
    let mut zombies = 0;
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for child in children(pid) {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            if state == Some("Z") {
                zombies += 1;
            }
            todo.push(child);
        }
    }
    zombies
}

fn signal_pid(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status();
}

// ---- the sidecar's endpoints and pod label ---------------------------------------------------

fn serve_args<'a>(identity: &'a str, lease: &'a str, addr: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "serve",
        "--lease",
        lease,
        "--identity",
        identity,
        "--http",
        addr,
        "--watch",
        "--healthz-tolerance",
        "1s",
    ];
    args.extend(FAST);
    args
}

fn head(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    write!(stream, "HEAD {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("sends");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("reads");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}

/// /healthz is liveness with client-go's meaning: a follower cut off from the API server stays
/// alive (a restart would not help); /readyz is the stricter readiness. HEAD is answered.
fn healthz_is_liveness_and_readyz_is_stricter(cluster: &Cluster) {
    let (pa, pb) = (free_port(), free_port());
    let (aa, ab) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let mut a = cluster.spawn(&serve_args("a", "probes", &aa));
    wait_for("a leads", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", pa)).is_ok() && get(pa, "/").1.contains("\"a\"")
    });
    let mut b = cluster.spawn(&serve_args("b", "probes", &ab));
    wait_for("b follows", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", pb)).is_ok() && get(pb, "/").1.contains("\"a\"")
    });
    assert_eq!(head(pb, "/healthz"), (200, String::new()));
    assert_eq!(get(pb, "/readyz").0, 200);
    cluster.hang(true);
    // Past the lease (2 s) and the tolerance (1 s) without an answer.
    sleep(Duration::from_secs(4));
    assert_eq!(get(pb, "/healthz").0, 200, "a follower cut off stays alive");
    let (code, body) = get(pb, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no answer from the lock"), "{body}");
    // The leader could not renew: its record is older than the lease plus the tolerance.
    let (code, body) = get(pa, "/healthz");
    assert_eq!(code, 500, "{body}");
    cluster.hang(false);
    signal(&a, "KILL");
    signal(&b, "KILL");
    let _ = (a.wait(), b.wait());
}

/// A sidecar (re)started while the API server does not answer waits for it instead of exiting
/// in its preflight (which would crash-loop every replica through an outage).
fn a_sidecar_started_during_an_outage_waits_for_the_server(cluster: &Cluster) {
    cluster.hang(true);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut serve = cluster.spawn(&serve_args("a", "outage", &addr));
    sleep(Duration::from_secs(7));
    assert!(serve.try_wait().expect("waits").is_none(), "still running");
    assert_eq!(get(port, "/healthz").0, 200);
    cluster.hang(false);
    wait_for("it leads", Duration::from_secs(15), || {
        get(port, "/").1.contains("\"a\"")
    });
    signal(&serve, "TERM");
    assert!(serve.wait().expect("exits").success());
}

/// Idle connections cannot starve the probes: a new connection closes the oldest.
fn idle_connections_do_not_starve_the_probes(cluster: &Cluster) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut serve = cluster.spawn(&serve_args("a", "idle", &addr));
    wait_for("it answers", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() && get(port, "/healthz").0 == 200
    });
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connects"))
        .collect();
    // As a kubelet probes: a new connection each time, and 1 s to answer.
    for _ in 0..20 {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .expect("timeout set");
        write!(stream, "GET /healthz HTTP/1.0\r\n\r\n").expect("sends");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("answered within 1 s");
        assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    }
    drop(idle);
    signal(&serve, "TERM");
    let _ = serve.wait();
}

/// `--label-pod` keeps the label matching the state: a failed change is retried, and a leader
/// removes the label from other pods of its lock that still carry it (but not from pods of
/// other locks).
fn the_pod_label_is_reconciled_and_a_leader_clears_stale_ones(cluster: &Cluster) {
    let ns = cluster.ns();
    let lease = |name: &str| serde_json::json!({"leasehold.dev/lease": format!("{ns}/{name}")});
    cluster.put_raw(
        Kind::Pod,
        "side-0",
        pod(serde_json::json!({"app": "side"}), lease("lbl")),
    );
    // A pod that led before a partition, and a pod of another election.
    cluster.put_raw(
        Kind::Pod,
        "side-old",
        pod(
            serde_json::json!({"app": "side", "leasehold.dev/leader": "true"}),
            lease("lbl"),
        ),
    );
    cluster.put_raw(
        Kind::Pod,
        "other-0",
        pod(
            serde_json::json!({"app": "other", "leasehold.dev/leader": "true"}),
            lease("other"),
        ),
    );
    let leader_label = |name: &str| {
        cluster
            .object(Kind::Pod, name)
            .map(|p| p["metadata"]["labels"]["leasehold.dev/leader"].clone())
            .unwrap_or_default()
    };
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = serve_args("side-0", "lbl", &addr);
    args.push("--label-pod");
    // On the double, the first pod patches fail.
    if let Some(server) = cluster.backend.double_server() {
        server.fail_patches(3);
    }
    let mut serve = cluster
        .command(&args)
        .env("POD_NAME", "side-0")
        .env("POD_NAMESPACE", ns)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    wait_for(
        "the label, despite failed patches",
        Duration::from_secs(10),
        || leader_label("side-0") == "true",
    );
    wait_for("the stale label removed", Duration::from_secs(10), || {
        leader_label("side-old").is_null()
    });
    assert_eq!(leader_label("other-0"), "true", "another election's pod");
    signal(&serve, "TERM");
    assert!(serve.wait().expect("exits").success());
    assert!(leader_label("side-0").is_null(), "removed at exit");
}

// ---- the smaller promises -------------------------------------------------------------------

fn invalid_names_are_usage_errors_and_never_reach_a_url(cluster: &Cluster) {
    // A lease named `x` exists: a name pasted into a URL must not reach it.
    let mut args = vec![
        "run",
        "--lease",
        "x",
        "--identity",
        "a",
        "--no-release",
        "--grace",
        "500ms",
    ];
    args.extend(FAST);
    args.extend(["--", "true"]);
    assert!(cluster.command(&args).status().expect("runs").success());
    for bad in [
        vec!["status", "--lease", "x?dryRun=All"],
        vec!["status", "--lease", "X"],
        vec!["status", "--lease", "x", "--namespace", "a.b"],
        vec!["run", "--lease", "x/y", "--", "true"],
        vec!["serve", "--lease", "_x"],
    ] {
        let out = cluster.command(&bad).output().expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains("not a valid"), "{bad:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{bad:?} showed something");
    }
}

fn a_program_that_cannot_run_is_found_before_contending(cluster: &Cluster) {
    let script = cluster.dir.join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\n").expect("written");
    let script = script.display().to_string();
    for (program, code) in [("no-such-program-anywhere", 127), (script.as_str(), 126)] {
        for restart in [false, true] {
            let mut args = vec!["run", "--lease", "never", "--grace", "500ms"];
            if restart {
                args.push("--restart");
            }
            args.extend(FAST);
            args.extend(["--", program]);
            let start = Instant::now();
            let out = cluster.command(&args).output().expect("runs");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(code), "{program}: {stderr}");
            assert!(start.elapsed() < Duration::from_secs(5), "no retries");
            assert!(stderr.contains(program), "{stderr}");
        }
    }
    assert!(cluster.holder("never").is_none(), "nobody contended");
}

#[test]
fn timings_are_validated_at_the_locks_own_precision() {
    let run = |lock: &str| {
        Command::new(BIN)
            .args([
                "run",
                "--lease",
                "x",
                "--lock",
                lock,
                "--lease-duration",
                "2s",
                "--renew-deadline",
                "1s",
                "--retry-period",
                "200ms",
                "--grace",
                "500ms",
                "--",
                "true",
            ])
            .env("KUBECONFIG", "/nonexistent")
            .env_remove("POD_NAME")
            .output()
            .expect("runs")
    };
    // A Lease stores microseconds: a 1 s renew deadline is fine (the run then fails for want
    // of a cluster, not as a usage error).
    let out = run("lease");
    assert_ne!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An annotation lock stores whole seconds: the renew deadline must exceed 1.2 s.
    let out = run("configmap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("precision"), "{stderr}");
}

fn status_shows_future_times_escapes_identities_and_answers_json_for_garbage(cluster: &Cluster) {
    let future = "2999-01-01T00:00:00.000000Z";
    cluster.put_raw(
        Kind::Lease,
        "odd",
        serde_json::json!({"spec": {
            "holderIdentity": "evil\u{1b}[2J",
            "leaseDurationSeconds": 15,
            "renewTime": future,
            "acquireTime": future,
            "leaseTransitions": 4,
            "strategy": "OldestEmulationVersion",
        }}),
    );
    let out = cluster
        .command(&["status", "--lease", "odd"])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains("evil\\u{1b}[2J"), "{text}");
    assert!(text.contains("in the future"), "{text}");
    assert!(
        text.contains("strategy:     OldestEmulationVersion"),
        "{text}"
    );
    let out = cluster
        .command(&["status", "--lease", "odd", "-o", "json"])
        .output()
        .expect("runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(json["renewedSecondsAgo"].as_f64().is_some_and(|s| s < 0.0));
    assert_eq!(json["strategy"], "OldestEmulationVersion");
    // An unreadable record (an annotation lock's JSON, which any tool can spoil; the API
    // server stores any string): still JSON, with the error.
    cluster.put_raw(
        Kind::ConfigMap,
        "garbage",
        serde_json::json!({"metadata": {"annotations": {
            "control-plane.alpha.kubernetes.io/leader": "{\"leaseDurationSeconds\": \"fifteen\"}"
        }}}),
    );
    let out = cluster
        .command(&[
            "status",
            "--lease",
            "garbage",
            "--lock",
            "configmap",
            "-o",
            "json",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json even so");
    assert!(
        json["error"]
            .as_str()
            .is_some_and(|e| e.contains("leaseDurationSeconds")),
        "{json}"
    );
}

fn hangup_stops_like_terminate_and_an_empty_pod_name_falls_back(cluster: &Cluster) {
    let (file, starts) = (cluster.dir.join("stamps"), cluster.dir.join("starts"));
    let mut args = run_args("ignored", "hup", stamper_counting(&file, &starts));
    // No --identity: $POD_NAME is empty, so the host name and a suffix.
    args.drain(3..5);
    let mut run = cluster
        .command(&strs(&args))
        .env("POD_NAME", "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    wait_for("it leads", Duration::from_secs(10), || {
        leader_stamping_after(&file, 0).is_some()
    });
    let holder = cluster.holder("hup").expect("held");
    assert!(!holder.is_empty() && !holder.contains('_'), "{holder}");
    signal(&run, "HUP");
    assert_eq!(run.wait().expect("exits").code(), Some(0));
    assert_eq!(cluster.holder("hup").as_deref(), Some(""), "released");
}

fn a_second_signal_exits_at_once_and_a_failed_release_is_an_error(cluster: &Cluster) {
    let file = cluster.dir.join("stamps");
    // A command that ignores SIGTERM, and a long grace period: the first signal would wait.
    let script = format!(
        "trap '' TERM; while true; do echo \"s $(date +%s%N) 0 $PPID\" >> {}; sleep 0.02; done",
        file.display()
    );
    let mut args: Vec<String> = [
        "run",
        "--lease",
        "twice",
        "--identity",
        "a",
        "--grace",
        "5s",
        "--lease-duration",
        "15s",
        "--renew-deadline",
        "10s",
        "--retry-period",
        "2s",
        "--",
        "sh",
        "-c",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    args.push(script);
    let mut run = cluster.spawn(&strs(&args));
    wait_for("it runs", Duration::from_secs(10), || {
        leader_stamping_after(&file, 0).is_some()
    });
    signal(&run, "INT");
    sleep(Duration::from_millis(300));
    let second = Instant::now();
    signal(&run, "INT");
    let status = run.wait().expect("exits");
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "{:?}",
        second.elapsed()
    );
    assert_eq!(status.code(), Some(130));
    let gone = now_nanos();
    sleep(Duration::from_millis(300));
    assert!(
        stamps(&file).iter().all(|(_, t)| *t < gone),
        "the command died with leasehold"
    );

    // A release that cannot be written: the exit status says so.
    let (file, starts) = (cluster.dir.join("stamps2"), cluster.dir.join("starts2"));
    let mut run = cluster.spawn(&strs(&run_args(
        "b",
        "unreleased",
        stamper_counting(&file, &starts),
    )));
    wait_for("it leads", Duration::from_secs(10), || {
        leader_stamping_after(&file, 0).is_some()
    });
    cluster.hang(true);
    signal(&run, "TERM");
    let status = run.wait().expect("exits");
    cluster.hang(false);
    assert_eq!(status.code(), Some(1), "the release failed");
}

cli_on_both!(
    the_command_never_runs_twice_across_handover_and_crash,
    exit_codes_and_release,
    a_missing_namespace_or_permission_is_named_with_the_role_needed,
    without_list_or_watch_the_command_polls_and_says_so,
    the_command_takes_part_in_a_coordinated_election,
    status_shows_the_lock,
    the_sidecar_serves_leader_health_readiness_metrics_and_a_status_file,
    the_sidecar_labels_its_pod_while_it_leads,
    restart_runs_the_command_again_while_leading,
    a_command_that_ignores_sigterm_is_killed_at_the_deadline,
    a_stale_status_file_is_cleared_by_a_follower,
    a_paused_leasehold_cannot_keep_its_command_running,
    a_daemonizing_command_is_killed_with_everything_it_started,
    a_restarted_wrapper_waits_for_its_old_lease_and_its_token_rises,
    an_edit_naming_a_follower_does_not_start_it_at_once,
    two_wrappers_with_one_identity_never_both_run_and_one_says_why,
    invalid_names_are_usage_errors_and_never_reach_a_url,
    a_program_that_cannot_run_is_found_before_contending,
    status_shows_future_times_escapes_identities_and_answers_json_for_garbage,
    hangup_stops_like_terminate_and_an_empty_pod_name_falls_back,
    the_pod_label_is_reconciled_and_a_leader_clears_stale_ones,
);

cli_on_both!(exclusive:
    a_hung_api_server_gets_the_command_killed_by_the_end_of_the_term,
    a_blocked_log_pipe_does_not_keep_the_command_running,
    no_command_starts_between_the_early_stop_and_a_renewal,
    healthz_is_liveness_and_readyz_is_stricter,
    a_sidecar_started_during_an_outage_waits_for_the_server,
    a_second_signal_exits_at_once_and_a_failed_release_is_an_error,
);

cli_on_double!(
    coordinated_usage_errors_are_found_before_contending,
    a_daemon_whose_main_thread_ended_is_killed_with_the_command,
    chains_that_fork_and_exit_are_killed,
    signals_to_the_guard_never_leave_processes_behind,
    usage_errors_exit_2_with_a_clear_message,
    help_exits_0_and_a_grace_longer_than_the_term_is_a_usage_error,
    the_command_gets_default_signal_dispositions_and_the_terminal,
    as_pid_1_orphans_are_reaped,
    idle_connections_do_not_starve_the_probes,
);

// ---- hostile commands, from an adversarial review --------------------------------------------

/// Compiles a small C program (the shapes a shell cannot make) into `dir`: it stamps
/// "IDENTITY NANOS" into `$STAMPS` every 20 ms from wherever it runs.
fn c_program(dir: &Path, name: &str, body: &str) -> PathBuf {
    let source = dir.join(format!("{name}.c"));
    let binary = dir.join(name);
    let prelude = r#"
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <time.h>
#include <pthread.h>
static long long nowns(void){struct timespec t;clock_gettime(CLOCK_REALTIME,&t);return (long long)t.tv_sec*1000000000LL+t.tv_nsec;}
static void stamp(void){
  const char*f=getenv("STAMPS"); const char*id=getenv("LEASEHOLD_IDENTITY");
  char buf[256]; int n=snprintf(buf,sizeof buf,"%s %lld\n",id?id:"-",nowns());
  int fd=open(f,O_WRONLY|O_APPEND|O_CREAT,0644); if(fd>=0){ if(write(fd,buf,n)<0){} close(fd);} }
"#;
    std::fs::write(&source, format!("{prelude}\n{body}")).expect("source written");
    let status = Command::new("cc")
        .arg("-O1")
        .arg("-pthread")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("a C compiler (cc) for the hostile-command tests");
    assert!(status.success(), "{name} compiles");
    binary
}

/// A daemon that leaves the command's group and ends its main thread while a thread runs on:
/// its /proc entry shows a zombie, yet it lives, and it goes with the command.
fn a_daemon_whose_main_thread_ended_is_killed_with_the_command(cluster: &Cluster) {
    let program = c_program(
        &cluster.dir,
        "zleader",
        r#"
static void* work(void*a){ (void)a; for(;;){ stamp(); usleep(20000);} return 0; }
int main(void){
  if(fork()==0){ setsid(); pthread_t t; pthread_create(&t,0,work,0); pthread_exit(0); }
  usleep(300000); return 0; }
"#,
    );
    let file = cluster.dir.join("stamps");
    let args = run_args("a", "z", vec![program.display().to_string()]);
    let out = cluster
        .command(&strs(&args))
        .env("STAMPS", &file)
        .output()
        .expect("runs");
    let exited = now_nanos();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stamps(&file).len() > 3, "the daemon ran");
    sleep(Duration::from_millis(300));
    let late: Vec<_> = stamps(&file)
        .into_iter()
        .filter(|(_, t)| *t > exited)
        .collect();
    assert!(late.is_empty(), "the daemon outlived leasehold: {late:?}");
}

/// Chains that leave the group and fork and exit without pause (each new link re-parented to
/// the guard) are killed once the command is told to stop.
fn chains_that_fork_and_exit_are_killed(cluster: &Cluster) {
    let program = c_program(
        &cluster.dir,
        "forkchase",
        r#"
int main(void){
  for(int i=0;i<4;i++){
    if(fork()==0){
      setsid(); long long last=0;
      for(;;){ long long t=nowns(); if(t-last>20000000LL){stamp(); last=t;}
        pid_t p=fork(); if(p<0) continue; if(p>0) _exit(0); }
    }
  }
  for(;;){ stamp(); usleep(20000);} }
"#,
    );
    let file = cluster.dir.join("stamps");
    let args = run_args("a", "chase", vec![program.display().to_string()]);
    let mut run = cluster
        .command(&strs(&args))
        .env("STAMPS", &file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    wait_for("it runs", Duration::from_secs(10), || {
        stamps(&file).len() > 10
    });
    sleep(Duration::from_millis(500));
    signal(&run, "TERM");
    let status = run.wait().expect("exits");
    let exited = now_nanos();
    assert_eq!(status.code(), Some(0));
    sleep(Duration::from_millis(500));
    let late: Vec<_> = stamps(&file)
        .into_iter()
        .filter(|(_, t)| *t > exited)
        .collect();
    assert!(
        late.is_empty(),
        "{} stamps after leasehold exited",
        late.len()
    );
}

/// The guard's own process, in its own group.
fn guard_of(leasehold: &Child) -> u32 {
    let mut found = None;
    wait_for("the guard", Duration::from_secs(5), || {
        found = children(leasehold.id()).into_iter().find(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains("__guard"))
        });
        found.is_some()
    });
    found.expect("found")
}

/// A stray signal to the guard (a `pkill -f` matching the command's name) stops the command
/// and everything it started, and nothing runs on; a SIGKILL of the guard leaves the lock to
/// expire instead of releasing it to a successor while escaped processes may live.
fn signals_to_the_guard_never_leave_processes_behind(cluster: &Cluster) {
    let file = cluster.dir.join("stamps");
    // Stamps "d<run>" from the daemon and "m<run>" from the command, where <run> is the
    // command's process id (leasehold runs it again after a renewal).
    let script = format!(
        "setsid sh -c 'while true; do echo \"d$1 $(date +%s%N)\" >> {f}; sleep 0.02; done' daemon $$ & while true; do echo \"m$$ $(date +%s%N)\" >> {f}; sleep 0.02; done",
        f = file.display()
    );
    let args = run_args("a", "sig", vec!["sh".into(), "-c".into(), script]);
    let mut run = cluster.spawn(&strs(&args));
    wait_for("it runs", Duration::from_secs(10), || {
        stamps(&file).iter().any(|(who, _)| who.starts_with('d'))
    });
    let first_daemon = stamps(&file)
        .into_iter()
        .find(|(who, _)| who.starts_with('d'))
        .map(|(who, _)| who)
        .expect("the daemon stamps");
    signal_pid(guard_of(&run), "TERM");
    let signalled = now_nanos();
    sleep(Duration::from_millis(1500));
    // Stopped within the grace period (500 ms), and not released meanwhile.
    let daemon_late: Vec<_> = stamps(&file)
        .into_iter()
        .filter(|(who, t)| *who == first_daemon && *t > signalled + 700_000_000)
        .collect();
    assert!(
        daemon_late.is_empty(),
        "{} daemon stamps after the stop",
        daemon_late.len()
    );
    assert_eq!(cluster.holder("sig").as_deref(), Some("a"), "still held");
    // SIGKILL of the guard: leasehold stops, without releasing.
    wait_for(
        "running again after a renewal",
        Duration::from_secs(10),
        || {
            stamps(&file)
                .iter()
                .any(|(_, t)| *t > signalled + 1_500_000_000)
        },
    );
    signal_pid(guard_of(&run), "KILL");
    let status = run.wait().expect("exits");
    assert_ne!(status.code(), Some(0));
    assert_eq!(
        cluster.holder("sig").as_deref(),
        Some("a"),
        "left to expire"
    );
}
