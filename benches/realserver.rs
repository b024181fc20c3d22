//! Numbers from a real kube-apiserver (`KUBEBUILDER_ASSETS`, with `goelect`): the requests per
//! minute of a leader and of a follower, polling and watching, for leasehold and for client-go
//! (counted by the apiserver's audit log, per user), and the time from a graceful stop (SIGINT
//! or a shutdown) of a leader to the next leader, both ways between the two. Client-go's
//! default timings (15 s / 10 s / 2 s) throughout.
//!
//! `KUBEBUILDER_ASSETS=../shared/envtest cargo bench --bench realserver --features tokio,kube`
//! (about three minutes). Not a test: it asserts nothing, it reports.
#![allow(clippy::disallowed_methods)] // a benchmark reads the real clock and spawns

#[path = "../tests/envtest/mod.rs"]
mod envtest;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leasehold::kube::LeaseLock;
use leasehold::tokio::{Handle, LeaderElector};
use leasehold::{Config, Identity, Observation};

/// How long each steady state is measured.
const WINDOW: Duration = Duration::from_secs(30);

fn main() {
    let Some(plane) = envtest::control_plane("realserver bench") else {
        eprintln!("set KUBEBUILDER_ASSETS (a directory with kube-apiserver, etcd and goelect)");
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(run(plane));
}

fn config(name: &str, watch: bool) -> Config {
    let mut c = Config::new(Identity::new(name).expect("an identity"));
    c.release_on_cancel = true;
    c.observation = if watch {
        Observation::Watch
    } else {
        Observation::Poll
    };
    c
}

async fn leasehold(
    plane: &'static envtest::ControlPlane,
    ns: &str,
    name: &str,
    user: &str,
    watch: bool,
) -> Handle {
    let client = plane.client_in(user, ns).await;
    LeaderElector::builder(config(name, watch), LeaseLock::new(client, ns, "ctl"))
        .on_started_leading(|leader| async move { leader.cancel.cancelled().await })
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn()
}

/// A `goelect` whose lead is reported in the returned flag.
fn goelect(
    plane: &envtest::ControlPlane,
    ns: &str,
    id: &str,
    user: &str,
) -> (Child, Arc<Mutex<bool>>) {
    let assets = std::path::PathBuf::from(std::env::var_os("KUBEBUILDER_ASSETS").expect("set"));
    let mut child = Command::new(assets.join("goelect"))
        .arg("--kubeconfig")
        .arg(plane.kubeconfig(user, ns))
        .args([
            "--id",
            id,
            "--lease-name",
            "ctl",
            "--lease-namespace",
            ns,
            "--release-on-cancel",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("goelect starts");
    let leads = Arc::new(Mutex::new(false));
    let (stdout, flag) = (child.stdout.take().expect("piped"), leads.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("event=STARTED_LEADING") {
                *flag.lock().expect("not poisoned") = true;
            } else if line.contains("event=STOPPED_LEADING") {
                *flag.lock().expect("not poisoned") = false;
            }
        }
    });
    (child, leads)
}

async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Some(start.elapsed())
}

fn per_minute(plane: &envtest::ControlPlane, user: &str, from: usize) -> f64 {
    let n = plane.requests_of(user).len().saturating_sub(from);
    n as f64 * 60.0 / WINDOW.as_secs_f64()
}

async fn run(plane: &'static envtest::ControlPlane) {
    println!("requests per minute (audit log, {WINDOW:?} windows, client-go's default timings):");
    for watch in [false, true] {
        let ns = plane
            .namespace(if watch { "bench-watch" } else { "bench-poll" })
            .await;
        let leader = leasehold(plane, &ns, "leader", "cand-0", watch).await;
        until(Duration::from_secs(20), || leader.is_leader()).await;
        let follower = leasehold(plane, &ns, "follower", "cand-1", watch).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (l0, f0) = (
            plane.requests_of("cand-0").len(),
            plane.requests_of("cand-1").len(),
        );
        tokio::time::sleep(WINDOW).await;
        let mode = if watch { "watching" } else { "polling" };
        println!(
            "  leasehold {mode}: leader {:.1}/min, follower {:.1}/min",
            per_minute(plane, "cand-0", l0),
            per_minute(plane, "cand-1", f0)
        );
        follower.shutdown().await;
        leader.shutdown().await;
    }
    let ns = plane.namespace("bench-goelect").await;
    let (mut a, a_leads) = goelect(plane, &ns, "go-a", "cand-2");
    until(Duration::from_secs(20), || {
        *a_leads.lock().expect("not poisoned")
    })
    .await;
    let (mut b, _) = goelect(plane, &ns, "go-b", "cand-3");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (l0, f0) = (
        plane.requests_of("cand-2").len(),
        plane.requests_of("cand-3").len(),
    );
    tokio::time::sleep(WINDOW).await;
    println!(
        "  client-go (goelect): leader {:.1}/min, follower {:.1}/min",
        per_minute(plane, "cand-2", l0),
        per_minute(plane, "cand-3", f0)
    );
    for child in [&mut a, &mut b] {
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }

    println!("handover after a graceful stop of the leader (time to the next leader):");
    let ns = plane.namespace("bench-handover").await;
    let (mut go, go_leads) = goelect(plane, &ns, "go", "cand-4");
    until(Duration::from_secs(20), || {
        *go_leads.lock().expect("not poisoned")
    })
    .await;
    let ours = leasehold(plane, &ns, "rs", "cand-5", true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = Command::new("kill")
        .args(["-INT", &go.id().to_string()])
        .status();
    let go_to_rs = until(Duration::from_secs(30), || ours.is_leader()).await;
    let _ = go.wait();
    println!("  client-go (SIGINT, release on cancel) -> leasehold (watching): {go_to_rs:?}");
    let (mut go, go_leads) = goelect(plane, &ns, "go2", "cand-4");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = Instant::now();
    ours.shutdown().await;
    let rs_to_go = until(Duration::from_secs(30), || {
        *go_leads.lock().expect("not poisoned")
    })
    .await;
    println!(
        "  leasehold (shutdown, release) -> client-go (polling every 2 s): {:?}",
        rs_to_go.map(|_| start.elapsed())
    );
    let _ = Command::new("kill")
        .args(["-INT", &go.id().to_string()])
        .status();
    let _ = go.wait();
    let ns = plane.namespace("bench-rs-rs").await;
    let first = leasehold(plane, &ns, "one", "cand-6", true).await;
    until(Duration::from_secs(20), || first.is_leader()).await;
    let second = leasehold(plane, &ns, "two", "cand-7", true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = Instant::now();
    first.shutdown().await;
    let rs_to_rs = until(Duration::from_secs(30), || second.is_leader()).await;
    println!(
        "  leasehold -> leasehold (watching): {:?}",
        rs_to_rs.map(|_| start.elapsed())
    );
    second.shutdown().await;
}
