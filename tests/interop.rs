//! Interoperability with client-go, on a real API server: `goelect` (a candidate on client-go's
//! own `tools/leaderelection`, from `KUBEBUILDER_ASSETS`) and leasehold's tokio driver on the
//! same Lease. Handover both ways, failover after a SIGKILL, never two leaders at once (judged
//! by the events each side reports, with their wall-clock times, allowing for client-go
//! releasing the Lease before it reports that it stopped leading), and leasehold's watching
//! follower sending no requests while client-go leads. The same in coordinated mode, with
//! kube-apiserver's election controller.
#![cfg(all(feature = "tokio", feature = "kube"))]
#![allow(clippy::disallowed_methods)] // these tests read the real clock and spawn processes

mod apiserver;
mod backend;
mod common;
mod envtest;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use backend::Backend;
use common::id;
use leasehold::kube::{CandidateVersions, LeaseCandidateRegistration, LeaseLock};
use leasehold::tokio::{Handle, LeaderElector};
use leasehold::{AfterLoss, Config, Observation};
use tokio::time::sleep;

/// Who led when, by wall clock: (who, started or stopped, when).
#[derive(Default, Clone)]
struct Timeline(Arc<Mutex<Vec<(String, bool, SystemTime)>>>);

impl Timeline {
    fn note(&self, who: &str, started: bool, at: SystemTime) {
        self.0
            .lock()
            .expect("not poisoned")
            .push((who.to_string(), started, at));
    }

    /// Whether `who` leads now (its last event was a start).
    fn leads(&self, who: &str) -> bool {
        self.0
            .lock()
            .expect("not poisoned")
            .iter()
            .rev()
            .find(|(w, _, _)| w == who)
            .is_some_and(|(_, started, _)| *started)
    }

    /// Panics if two leaders overlapped by more than `slack` (client-go reports its stop after
    /// it released the Lease, so its successor may start a moment before that report).
    fn assert_never_two_leaders(&self, slack: Duration) {
        let mut events = self.0.lock().expect("not poisoned").clone();
        events.sort_by_key(|(_, _, at)| *at);
        let mut leading: Option<(String, SystemTime)> = None;
        let mut stopped_at: Vec<(String, SystemTime)> = Vec::new();
        for (who, started, at) in &events {
            if *started {
                if let Some((current, since)) = &leading
                    && current != who
                {
                    // The current leader has not reported a stop yet: allowed only within
                    // `slack` of its own stop report.
                    let stop = events
                        .iter()
                        .find(|(w, s, t)| w == current && !*s && t >= since)
                        .map(|(_, _, t)| *t);
                    let late = stop.map(|s| s.duration_since(*at).unwrap_or_default());
                    assert!(
                        late.is_some_and(|l| l <= slack),
                        "{who} started at {at:?} while {current} led (its stop came {late:?} later): {events:?}"
                    );
                }
                leading = Some((who.clone(), *at));
            } else if leading.as_ref().is_some_and(|(w, _)| w == who) {
                leading = None;
                stopped_at.push((who.clone(), *at));
            }
        }
    }
}

/// `goelect` from the assets, on the scenario's namespace, its events fed into `timeline`.
fn goelect(b: &Backend, id: &str, user: &str, extra: &[&str], timeline: &Timeline) -> Child {
    let assets = PathBuf::from(std::env::var_os("KUBEBUILDER_ASSETS").expect("set"));
    let program = assets.join("goelect");
    assert!(
        program.is_file(),
        "{} has no goelect (client-go's own candidate)",
        assets.display()
    );
    let mut child = Command::new(program)
        .arg("--kubeconfig")
        .arg(b.kubeconfig(user))
        .args([
            "--id",
            id,
            "--lease-name",
            "ctl",
            "--lease-namespace",
            b.ns(),
        ])
        .args([
            "--lease-duration",
            "3s",
            "--renew-deadline",
            "2s",
            "--retry-period",
            "250ms",
            "--release-on-cancel",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("goelect starts");
    let stdout = child.stdout.take().expect("piped");
    let (timeline, who) = (timeline.clone(), id.to_string());
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut parts = line.split_whitespace();
            let at = parts
                .next()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .map_or_else(SystemTime::now, SystemTime::from);
            if line.contains("event=STARTED_LEADING") {
                timeline.note(&who, true, at);
            } else if line.contains("event=STOPPED_LEADING") {
                timeline.note(&who, false, at);
            }
        }
    });
    child
}

fn config(name: &str) -> Config {
    let mut c = Config::new(id(name));
    c.lease_duration = Duration::from_secs(3);
    c.renew_deadline = Duration::from_secs(2);
    c.retry_period = Duration::from_millis(250);
    c.release_on_cancel = true;
    c.observation = Observation::Watch;
    c.after_loss = AfterLoss::Recontend;
    c
}

/// A leasehold candidate whose terms go into `timeline`; its requests are `user`'s.
async fn leasehold(
    b: &Backend,
    name: &str,
    user: &str,
    coordinated: Option<&str>,
    timeline: &Timeline,
) -> Handle {
    let client = b.client_as(user).await;
    let (started, stopped) = (timeline.clone(), timeline.clone());
    let who = name.to_string();
    let builder =
        LeaderElector::builder(config(name), LeaseLock::new(client.clone(), b.ns(), "ctl"))
            .on_started_leading(move |leader| {
                started.note(&who, true, SystemTime::now());
                async move { leader.cancel.cancelled().await }
            });
    let who = name.to_string();
    let builder = builder.on_stopped_leading(move || stopped.note(&who, false, SystemTime::now()));
    let builder = match coordinated {
        Some(version) => builder.lease_candidate(LeaseCandidateRegistration::new(
            client,
            b.ns(),
            &id(name),
            "ctl",
            CandidateVersions::new(version),
        )),
        None => builder,
    };
    builder.build().expect("valid").spawn()
}

async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

fn signal(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_go_and_leasehold_share_a_lease() {
    let Some(b) = Backend::real("client_go_and_leasehold").await else {
        return;
    };
    let timeline = Timeline::default();
    // client-go leads first.
    let mut go = goelect(&b, "go", "cand-4", &[], &timeline);
    until("client-go leads", Duration::from_secs(10), || {
        timeline.leads("go")
    })
    .await;
    let ours = leasehold(&b, "rs", "cand-5", None, &timeline).await;
    sleep(Duration::from_secs(1)).await;
    // A watching follower sends nothing while the leader renews (the watch aside).
    let before = b.requests_of("cand-5").await.len();
    sleep(Duration::from_secs(3)).await;
    let requests: Vec<_> = b
        .requests_of("cand-5")
        .await
        .into_iter()
        .skip(before)
        .collect();
    assert!(
        requests.iter().all(|(verb, _)| verb == "watch"),
        "a watching follower polls nothing: {requests:?}"
    );
    // client-go hands over (SIGINT: it releases).
    let start = std::time::Instant::now();
    signal(&go, "INT");
    until("leasehold leads", Duration::from_secs(10), || {
        ours.is_leader()
    })
    .await;
    let go_to_rs = start.elapsed();
    let _ = go.wait();
    // And back: leasehold releases, client-go takes it at its next retry.
    let mut go = goelect(&b, "go2", "cand-4", &[], &timeline);
    sleep(Duration::from_secs(1)).await;
    let start = std::time::Instant::now();
    ours.shutdown().await;
    until("client-go leads again", Duration::from_secs(10), || {
        timeline.leads("go2")
    })
    .await;
    let rs_to_go = start.elapsed();
    // Failover: client-go killed, leasehold takes over once the lease ran out.
    let ours = leasehold(&b, "rs2", "cand-5", None, &timeline).await;
    sleep(Duration::from_secs(1)).await;
    let start = std::time::Instant::now();
    signal(&go, "KILL");
    let _ = go.wait();
    // A killed process leads no more (its lease runs on, which is what leasehold waits out).
    timeline.note("go2", false, SystemTime::now());
    until("leasehold takes over", Duration::from_secs(15), || {
        ours.is_leader()
    })
    .await;
    let failover = start.elapsed();
    assert!(
        failover >= Duration::from_secs(2),
        "after the lease: {failover:?}"
    );
    eprintln!(
        "client-go and leasehold on one Lease: handover client-go -> leasehold {go_to_rs:?}, leasehold -> client-go {rs_to_go:?}, failover after SIGKILL of client-go {failover:?}"
    );
    ours.shutdown().await;
    timeline.assert_never_two_leaders(Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_go_and_leasehold_in_coordinated_election() {
    let Some(b) = Backend::real("coordinated_interop").await else {
        return;
    };
    let timeline = Timeline::default();
    // client-go on a newer version leads first (alone).
    let coordinated_go = [
        "--coordinated",
        "--binary-version",
        "1.37.0",
        "--emulation-version",
        "1.37.0",
    ];
    let mut go = goelect(&b, "go", "cand-6", &coordinated_go, &timeline);
    until("client-go leads", Duration::from_secs(15), || {
        timeline.leads("go")
    })
    .await;
    // leasehold on an older version joins: the controller prefers it.
    let start = std::time::Instant::now();
    let ours = leasehold(&b, "rs", "cand-7", Some("1.36.0"), &timeline).await;
    until(
        "leasehold is preferred and leads",
        Duration::from_secs(30),
        || ours.is_leader(),
    )
    .await;
    let to_rs = start.elapsed();
    // client-go's candidate is one-shot (it exits once it lost its term); a new one joins,
    // and when leasehold stops it is picked.
    let _ = go.wait();
    let mut go = goelect(&b, "go2", "cand-6", &coordinated_go, &timeline);
    sleep(Duration::from_secs(2)).await;
    let start = std::time::Instant::now();
    ours.shutdown().await;
    until("client-go leads again", Duration::from_secs(30), || {
        timeline.leads("go2")
    })
    .await;
    let to_go = start.elapsed();
    eprintln!(
        "coordinated: a better leasehold candidate leads after {to_rs:?}; client-go again {to_go:?} after leasehold stopped"
    );
    signal(&go, "INT");
    let _ = go.wait();
    timeline.assert_never_two_leaders(Duration::from_millis(200));
}
