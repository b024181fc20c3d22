//! The tokio driver: on the in-memory lock in paused (simulated) tokio time, and against the
//! Lease API test server in real time.
#![cfg(all(feature = "tokio", feature = "kube"))]

mod apiserver;
mod backend;
mod common;
mod envtest;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apiserver::Kind;
use backend::Backend;
use common::{fast, id};
use leasehold::kube::LeaseLock;
use leasehold::lock::Lock;
use leasehold::tokio::{BuildError, Handle, LeaderElector};
use leasehold::{AfterLoss, Config, MemoryLock, Observation, Role};
use tokio::time::{Instant, sleep};

#[derive(Default, Clone)]
struct Log(Arc<Mutex<Vec<(Instant, String)>>>);

impl Log {
    fn push(&self, what: String) {
        self.0
            .lock()
            .expect("not poisoned")
            .push((Instant::now(), what));
    }
    fn count(&self, what: &str) -> usize {
        let log = self.0.lock().expect("not poisoned");
        log.iter().filter(|(_, w)| w == what).count()
    }
}

fn spawn<L: Lock>(config: Config, lock: L, log: &Log) -> Handle {
    let name = config.identity.to_string();
    let (started, stopped) = (log.clone(), log.clone());
    let (n1, n2) = (name.clone(), name);
    LeaderElector::builder(config, lock)
        .on_started_leading(move |leader| {
            started.push(format!("{n1} started"));
            async move { leader.cancel.cancelled().await }
        })
        .on_stopped_leading(move || stopped.push(format!("{n2} stopped")))
        .seed(7)
        .build()
        .expect("valid")
        .spawn()
}

async fn leader_of(handles: &[Handle]) -> Option<usize> {
    let leaders: Vec<usize> = (0..handles.len())
        .filter(|&i| handles[i].is_leader())
        .collect();
    assert!(leaders.len() <= 1, "two leaders: {leaders:?}");
    leaders.first().copied()
}

/// Polls every 10 ms (checking there is never more than one leader) until `f` holds.
async fn until(handles: &[Handle], limit: Duration, f: impl Fn(Option<usize>) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f(leader_of(handles).await) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not within {limit:?}");
        sleep(Duration::from_millis(10)).await;
    }
}

// ---- in-memory lock, simulated time ---------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn three_candidates_exactly_one_leader() {
    let lock = MemoryLock::new();
    let log = Log::default();
    let handles: Vec<Handle> = ["a", "b", "c"]
        .iter()
        .map(|n| spawn(fast(n), lock.clone(), &log))
        .collect();
    until(&handles, Duration::from_secs(1), |l| l.is_some()).await;
    let first = leader_of(&handles).await;
    for _ in 0..2000 {
        assert_eq!(
            leader_of(&handles).await,
            first,
            "leadership is stable without faults"
        );
        sleep(Duration::from_millis(10)).await;
    }
    let leader = first.expect("a leader");
    assert_eq!(handles[leader].state().role, Role::Leader);
    let name = ["a", "b", "c"][leader];
    assert_eq!(
        log.count(&format!("{name} started")),
        1,
        "one term, no flapping"
    );
    assert_eq!(log.count(&format!("{name} stopped")), 0);
}

#[tokio::test(start_paused = true)]
async fn an_aborted_leader_is_replaced_after_about_a_lease() {
    let lock = MemoryLock::new();
    let log = Log::default();
    let mut handles: Vec<Handle> = ["a", "b", "c"]
        .iter()
        .map(|n| spawn(fast(n), lock.clone(), &log))
        .collect();
    until(&handles, Duration::from_secs(1), |l| l.is_some()).await;
    sleep(Duration::from_millis(700)).await;
    let leader = leader_of(&handles).await.expect("a leader");
    handles.remove(leader).abort();
    let failover = until(&handles, Duration::from_secs(10), |l| l.is_some()).await;
    let c = fast("x");
    assert!(
        failover >= c.lease_duration - c.retry_period,
        "{failover:?}"
    );
    assert!(
        failover <= c.failover_bound() + Duration::from_millis(20),
        "{failover:?}"
    );
}

/// A crashed driver's leader work is still told to stop, at the end of its term.
#[tokio::test(start_paused = true)]
async fn the_work_of_an_aborted_leader_stops_at_the_end_of_its_term() {
    let stopped_at = Arc::new(Mutex::new(None));
    let s = stopped_at.clone();
    let handle = LeaderElector::builder(fast("a"), MemoryLock::new())
        .on_started_leading(move |leader| {
            let s = s.clone();
            async move {
                leader.cancel.cancelled().await;
                *s.lock().expect("not poisoned") = Some(Instant::now());
            }
        })
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn();
    sleep(Duration::from_millis(500)).await;
    let crash = Instant::now();
    handle.abort();
    sleep(Duration::from_secs(3)).await;
    let stopped = stopped_at
        .lock()
        .expect("not poisoned")
        .expect("the work was told to stop");
    // The last renewal was issued at most one retry period before the crash.
    assert!(
        stopped - crash <= Duration::from_millis(1500),
        "{:?}",
        stopped - crash
    );
    assert!(
        stopped - crash >= Duration::from_millis(1300),
        "{:?}",
        stopped - crash
    );
}

#[tokio::test(start_paused = true)]
async fn graceful_handover_when_watching_is_immediate() {
    let lock = MemoryLock::new();
    let log = Log::default();
    let watching = |n: &str| Config {
        observation: Observation::Watch,
        ..fast(n)
    };
    let mut handles: Vec<Handle> = ["a", "b", "c"]
        .iter()
        .map(|n| spawn(watching(n), lock.clone(), &log))
        .collect();
    until(&handles, Duration::from_secs(1), |l| l.is_some()).await;
    let leader = leader_of(&handles).await.expect("a leader");
    let start = Instant::now();
    handles.remove(leader).shutdown().await;
    let handover = start.elapsed() + until(&handles, Duration::from_secs(5), |l| l.is_some()).await;
    assert!(
        handover <= Duration::from_millis(20),
        "one step of the watchers: {handover:?}"
    );
}

/// The release waits for the leader work to return, and the work's token fires first.
#[tokio::test(start_paused = true)]
async fn release_happens_after_the_leader_work_returns() {
    let lock = MemoryLock::new();
    let seen_at_return = Arc::new(Mutex::new(None));
    let (lock2, seen) = (lock.clone(), seen_at_return.clone());
    let handle = LeaderElector::builder(fast("a"), lock.clone())
        .on_started_leading(move |leader| {
            let (lock, seen) = (lock2.clone(), seen.clone());
            async move {
                leader.cancel.cancelled().await;
                sleep(Duration::from_millis(300)).await; // winding down
                *seen.lock().expect("not poisoned") = lock.get().map(|r| r.value.holder);
            }
        })
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn();
    sleep(Duration::from_millis(500)).await;
    assert!(handle.is_leader());
    handle.shutdown().await;
    assert_eq!(
        *seen_at_return.lock().expect("not poisoned"),
        Some(Some(id("a"))),
        "still held while the work winds down"
    );
    assert_eq!(
        lock.get().map(|r| r.value.holder),
        Some(None),
        "released after"
    );
}

#[tokio::test(start_paused = true)]
async fn callbacks_follow_client_go() {
    let lock = MemoryLock::new();
    lock.create(leasehold::LeaderElectionRecord {
        holder: Some(id("other")),
        lease_duration_seconds: 3600,
        ..Default::default()
    })
    .expect("absent");
    let stopped = Arc::new(AtomicUsize::new(0));
    let leaders = Arc::new(Mutex::new(Vec::new()));
    let (s, l) = (stopped.clone(), leaders.clone());
    let handle = LeaderElector::builder(fast("a"), lock)
        .on_started_leading(|_| async {})
        .on_stopped_leading(move || {
            s.fetch_add(1, Ordering::SeqCst);
        })
        .on_new_leader(move |who| l.lock().expect("not poisoned").push(who.cloned()))
        .build()
        .expect("valid")
        .spawn();
    sleep(Duration::from_secs(1)).await;
    assert!(!handle.is_leader());
    assert_eq!(handle.leader(), Some(id("other")));
    handle.shutdown().await;
    assert_eq!(
        stopped.load(Ordering::SeqCst),
        1,
        "called at exit even without leading"
    );
    assert_eq!(
        *leaders.lock().expect("not poisoned"),
        vec![Some(id("other"))]
    );
}

#[tokio::test]
async fn the_builder_requires_client_go_s_callbacks_and_a_valid_config() {
    let err = LeaderElector::builder(fast("a"), MemoryLock::new())
        .on_stopped_leading(|| {})
        .build()
        .err();
    assert_eq!(
        err.map(|e| e.to_string()),
        Some(
            "on_started_leading is required (client-go: OnStartedLeading callback must not be nil)"
                .to_string()
        )
    );
    let err = LeaderElector::builder(fast("a"), MemoryLock::new())
        .on_started_leading(|_| async {})
        .build()
        .err();
    assert_eq!(
        err.map(|e| e.to_string()),
        Some(
            "on_stopped_leading is required (client-go: OnStoppedLeading callback must not be nil)"
                .to_string()
        )
    );
    let mut bad = fast("a");
    bad.renew_deadline = bad.lease_duration;
    let err = LeaderElector::builder(bad, MemoryLock::new())
        .on_started_leading(|_| async {})
        .on_stopped_leading(|| {})
        .build()
        .err();
    assert!(matches!(err, Some(BuildError::Config(_))));
}

// ---- the Lease API test server, real time ---------------------------------------------------

/// Candidates on the Lease `ctl`, each with a client of its own user (`cand-N`, so that its
/// requests can be counted).
async fn lease_candidates(
    b: &Backend,
    names: &[&str],
    config: impl Fn(&str) -> Config,
    log: &Log,
) -> Vec<Handle> {
    let mut handles = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let client = b.client_as(&format!("cand-{i}")).await;
        handles.push(spawn(config(n), LeaseLock::new(client, b.ns(), "ctl"), log));
    }
    handles
}

async fn lease_three_candidates_one_leader_and_crash_failover(b: &Backend) {
    let log = Log::default();
    let mut handles = lease_candidates(b, &["a", "b", "c"], fast, &log).await;
    until(&handles, Duration::from_secs(3), |l| l.is_some()).await;
    sleep(Duration::from_millis(500)).await;
    let leader = leader_of(&handles).await.expect("a leader");
    handles.remove(leader).abort();
    let failover = until(&handles, Duration::from_secs(10), |l| l.is_some()).await;
    eprintln!("lease failover after abort, polling: {failover:?}");
    assert!(failover >= Duration::from_millis(1500), "{failover:?}");
    assert!(failover <= Duration::from_millis(3000), "{failover:?}");
}

async fn lease_graceful_handover_when_watching(b: &Backend) {
    let log = Log::default();
    let watching = |n: &str| Config {
        observation: Observation::Watch,
        ..fast(n)
    };
    let mut handles = lease_candidates(b, &["a", "b", "c"], watching, &log).await;
    until(&handles, Duration::from_secs(3), |l| l.is_some()).await;
    sleep(Duration::from_millis(500)).await;
    let leader = leader_of(&handles).await.expect("a leader");
    let start = Instant::now();
    handles.remove(leader).shutdown().await;
    let released = start.elapsed();
    let handover = released + until(&handles, Duration::from_secs(5), |l| l.is_some()).await;
    eprintln!("lease handover after graceful shutdown, watching: {handover:?}");
    assert!(
        handover <= Duration::from_millis(500),
        "a few round trips: {handover:?}"
    );
    let stored = b.object(Kind::Lease, "ctl").await.expect("stored");
    assert_ne!(stored["spec"]["holderIdentity"], "");
}

/// An API outage longer than the renew deadline: the leader steps down by its own clock, before
/// anyone else could take over (nobody can reach the API), and nobody leads during it.
async fn lease_outage_longer_than_the_renew_deadline(b: &Backend) {
    let log = Log::default();
    let recontending = |n: &str| Config {
        after_loss: AfterLoss::Recontend,
        ..fast(n)
    };
    let handles = lease_candidates(b, &["a", "b", "c"], recontending, &log).await;
    until(&handles, Duration::from_secs(3), |l| l.is_some()).await;
    sleep(Duration::from_millis(300)).await;
    b.hang(true);
    let outage = Instant::now();
    let stepped_down = until(&handles, Duration::from_secs(3), |l| l.is_none()).await;
    assert!(
        stepped_down <= Duration::from_millis(1500),
        "within RD: {stepped_down:?}"
    );
    sleep(Duration::from_secs(3)).await;
    assert_eq!(
        leader_of(&handles).await,
        None,
        "nobody leads while the API is down"
    );
    b.hang(false);
    let back = until(&handles, Duration::from_secs(10), |l| l.is_some()).await;
    eprintln!(
        "outage: stepped down after {stepped_down:?}, leader again {back:?} after the API returned ({:?} in all)",
        outage.elapsed()
    );
    for h in handles {
        h.shutdown().await;
    }
}

/// 500s on every third request and 429s on every fifth: the leader keeps leading (failed
/// renewals fall back to the slow path and retry within the renew deadline). One candidate, so
/// that the faults hit the leader's own requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_intermittent_errors_do_not_cost_leadership() {
    for (every, code) in [(3, 500), (5, 429)] {
        let b = Backend::double("intermittent").await;
        let server = b.double_server().expect("the double injects the errors");
        let log = Log::default();
        let handles = lease_candidates(&b, &["a"], fast, &log).await;
        until(&handles, Duration::from_secs(3), |l| l.is_some()).await;
        let leader = leader_of(&handles).await;
        server.fail_every(Some((every, code)));
        for _ in 0..300 {
            assert_eq!(leader_of(&handles).await, leader, "{code} every {every}");
            sleep(Duration::from_millis(10)).await;
        }
        server.fail_every(None);
        let slow = handles[leader.expect("a leader")]
            .state()
            .slow_path_renewals;
        assert!(slow > 0, "failed renewals went the slow path");
        for h in handles {
            h.shutdown().await;
        }
    }
}

/// A hang shorter than the renew deadline costs nothing: the hung renewal times out at its
/// deadline and a retry gets through.
async fn lease_short_hang_is_survived(b: &Backend) {
    let log = Log::default();
    let handles = lease_candidates(b, &["a", "b"], fast, &log).await;
    until(&handles, Duration::from_secs(3), |l| l.is_some()).await;
    let leader = leader_of(&handles).await;
    b.hang(true);
    sleep(Duration::from_millis(400)).await;
    b.hang(false);
    for _ in 0..200 {
        assert_eq!(leader_of(&handles).await, leader);
        sleep(Duration::from_millis(10)).await;
    }
    assert!(
        handles[leader.expect("a leader")]
            .check(Duration::from_secs(1))
            .is_ok()
    );
    for h in handles {
        h.shutdown().await;
    }
}

/// A lock that cannot watch: asked to watch, the followers poll instead.
struct NoWatch(MemoryLock);

impl Lock for NoWatch {
    async fn get(&self) -> Result<leasehold::lock::Sighting, leasehold::LockError> {
        Lock::get(&self.0).await
    }
    async fn create(
        &self,
        record: leasehold::LeaderElectionRecord,
    ) -> Result<leasehold::Version, leasehold::LockError> {
        Lock::create(&self.0, record).await
    }
    async fn update(
        &self,
        expected: leasehold::Version,
        record: leasehold::LeaderElectionRecord,
    ) -> Result<leasehold::Version, leasehold::LockError> {
        Lock::update(&self.0, expected, record).await
    }
    fn describe(&self) -> String {
        "no-watch".into()
    }
}

#[tokio::test(start_paused = true)]
async fn watching_a_lock_that_cannot_watch_falls_back_to_polling() {
    let lock = MemoryLock::new();
    let log = Log::default();
    let watching = |n: &str| Config {
        observation: Observation::Watch,
        ..fast(n)
    };
    let mut handles: Vec<Handle> = ["a", "b"]
        .iter()
        .map(|n| spawn(watching(n), NoWatch(lock.clone()), &log))
        .collect();
    until(&handles, Duration::from_secs(1), |l| l.is_some()).await;
    let leader = leader_of(&handles).await.expect("a leader");
    handles.remove(leader).shutdown().await;
    // Polling sees the release within one jittered retry period (not a whole lease).
    let handover = until(&handles, Duration::from_secs(5), |l| l.is_some()).await;
    assert!(handover <= fast("x").max_retry_interval(), "{handover:?}");
}

/// Without release too, `shutdown` returns only once the leader work has stopped.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_leader_work() {
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let config = Config {
        release_on_cancel: false,
        ..fast("a")
    };
    let handle = LeaderElector::builder(config, MemoryLock::new())
        .on_started_leading(move |leader| {
            let d = d.clone();
            async move {
                leader.cancel.cancelled().await;
                sleep(Duration::from_millis(300)).await;
                d.store(1, Ordering::SeqCst);
            }
        })
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn();
    sleep(Duration::from_millis(100)).await;
    assert!(handle.is_leader());
    handle.shutdown().await;
    assert_eq!(done.load(Ordering::SeqCst), 1);
}

#[derive(Clone, Default)]
struct Metrics(Arc<Mutex<Vec<String>>>);

impl leasehold::LeaderMetrics for Metrics {
    fn on(&mut self, name: &str) {
        self.0
            .lock()
            .expect("not poisoned")
            .push(format!("on {name}"));
    }
    fn off(&mut self, name: &str) {
        self.0
            .lock()
            .expect("not poisoned")
            .push(format!("off {name}"));
    }
    fn slowpath_exercised(&mut self, name: &str) {
        self.0
            .lock()
            .expect("not poisoned")
            .push(format!("slowpath {name}"));
    }
}

/// client-go's metrics: status off at start, on while leading, off at the end; one slow-path
/// count per renewal that had to read first.
#[tokio::test(start_paused = true)]
async fn metrics_follow_client_go() {
    let lock = MemoryLock::new();
    let metrics = Metrics::default();
    let config = Config {
        name: "ns/ctl".into(),
        ..fast("a")
    };
    let handle = LeaderElector::builder(config, lock.clone())
        .on_started_leading(|leader| async move { leader.cancel.cancelled().await })
        .on_stopped_leading(|| {})
        .metrics(metrics.clone())
        .build()
        .expect("valid")
        .spawn();
    sleep(Duration::from_millis(100)).await;
    // A foreign write (say, a label change) makes the next fast-path renewal conflict.
    lock.touch();
    sleep(Duration::from_millis(500)).await;
    assert!(handle.is_leader());
    handle.shutdown().await;
    let log = metrics.0.lock().expect("not poisoned").clone();
    assert_eq!(log.first().map(String::as_str), Some("off ns/ctl"));
    assert_eq!(log.get(1).map(String::as_str), Some("on ns/ctl"));
    assert_eq!(
        log.iter().filter(|l| *l == "slowpath ns/ctl").count(),
        1,
        "{log:?}"
    );
    assert_eq!(log.last().map(String::as_str), Some("off ns/ctl"));
}

/// Re-contending after a loss: the next term starts only after the last term's work returned,
/// even when that work ignores its cancellation for a while (before: two works at once, both
/// with fencing token 0).
#[tokio::test(start_paused = true)]
async fn a_recontending_driver_never_runs_two_terms_work_at_once() {
    let lock = MemoryLock::new();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let terms = Arc::new(AtomicUsize::new(0));
    let config = Config {
        after_loss: AfterLoss::Recontend,
        ..fast("a")
    };
    let (r, m, t) = (running.clone(), most.clone(), terms.clone());
    let handle = LeaderElector::builder(config, lock.clone())
        .on_started_leading(move |leader| {
            let (r, m) = (r.clone(), m.clone());
            t.fetch_add(1, Ordering::SeqCst);
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                leader.cancel.cancelled().await;
                // Slow to stop: three more seconds after the term ended.
                sleep(Duration::from_secs(3)).await;
                r.fetch_sub(1, Ordering::SeqCst);
            }
        })
        .on_stopped_leading(|| {})
        .seed(7)
        .build()
        .expect("valid")
        .spawn();
    sleep(Duration::from_millis(100)).await;
    assert!(handle.is_leader());
    // Someone takes the lock and hands it straight back (a released record).
    let current = lock.get().expect("exists");
    let mut taken = current.value.clone();
    taken.holder = Some(id("intruder"));
    taken.leader_transitions += 1;
    let v = lock.update(&current.version, taken).expect("current");
    let mut released = lock.get().expect("exists").value;
    released.holder = None;
    lock.update(&v, released).expect("current");
    // The renewal finds the lock taken; the work takes 3 s to stop; only then a new term.
    sleep(Duration::from_secs(2)).await;
    assert!(!handle.is_leader(), "no new term while the old work runs");
    sleep(Duration::from_secs(3)).await;
    assert!(handle.is_leader(), "contends again once the work returned");
    assert_eq!(terms.load(Ordering::SeqCst), 2);
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two works at once");
    handle.shutdown().await;
}

/// A lock that refuses everything, as an API server does without RBAC.
struct Refusing;

impl Lock for Refusing {
    async fn get(&self) -> Result<leasehold::lock::Sighting, leasehold::LockError> {
        Err(refused())
    }
    async fn create(
        &self,
        _: leasehold::LeaderElectionRecord,
    ) -> Result<leasehold::Version, leasehold::LockError> {
        Err(refused())
    }
    async fn update(
        &self,
        _: leasehold::Version,
        _: leasehold::LeaderElectionRecord,
    ) -> Result<leasehold::Version, leasehold::LockError> {
        Err(refused())
    }
    fn describe(&self) -> String {
        "refusing".into()
    }
}

fn refused() -> leasehold::LockError {
    leasehold::LockError::new(
        leasehold::LockErrorKind::Unauthorized,
        "leases.coordination.k8s.io \"x\" is forbidden",
    )
}

/// A leader work that panics ends the term at once: the driver steps down, releases, calls
/// `on_stopped_leading`, reports the panic on the handle, and finishes (before: it kept
/// renewing forever with no work running).
#[tokio::test(start_paused = true)]
async fn a_panicking_leader_work_ends_the_term_and_releases() {
    let lock = MemoryLock::new();
    let stopped = Arc::new(AtomicUsize::new(0));
    let s = stopped.clone();
    let handle = LeaderElector::builder(fast("a"), lock.clone())
        .on_started_leading(|_| async { panic!("the work broke") })
        .on_stopped_leading(move || {
            s.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .expect("valid")
        .spawn();
    tokio::time::timeout(Duration::from_secs(5), handle.finished())
        .await
        .expect("finishes by itself");
    assert_eq!(stopped.load(Ordering::SeqCst), 1);
    let state = handle.state();
    assert_eq!(state.work_panicked.as_deref(), Some("the work broke"));
    assert_eq!(state.role, Role::Finished);
    let record = lock.get().expect("exists").value;
    assert_eq!(record.holder, None, "released");
}

/// Dropping the handle steps down and releases; the elector stops writing (before: it ran on
/// forever, renewing).
#[tokio::test(start_paused = true)]
async fn dropping_the_handle_steps_down_and_releases() {
    let lock = MemoryLock::new();
    let log = Log::default();
    let handle = spawn(fast("a"), lock.clone(), &log);
    sleep(Duration::from_millis(100)).await;
    assert!(handle.is_leader());
    drop(handle);
    sleep(Duration::from_millis(100)).await;
    let released = lock.get().expect("exists");
    assert_eq!(released.value.holder, None);
    sleep(Duration::from_secs(60)).await;
    assert_eq!(
        lock.get().expect("exists").version,
        released.version,
        "no more writes"
    );
    assert_eq!(log.count("a stopped"), 1);
}

/// A detached handle leaves the elector running.
#[tokio::test(start_paused = true)]
async fn a_detached_elector_runs_on() {
    let lock = MemoryLock::new();
    let log = Log::default();
    spawn(fast("a"), lock.clone(), &log).detach();
    sleep(Duration::from_secs(10)).await;
    assert_eq!(lock.get().expect("exists").value.holder, Some(id("a")));
}

/// `finished` borrows the handle, so it can race a signal in `select!`, and after a loss in
/// one-shot mode it returns only once the leader work has stopped.
#[tokio::test(start_paused = true)]
async fn finished_waits_for_the_work_and_leaves_the_handle_usable() {
    let lock = MemoryLock::new();
    let work_done = Arc::new(AtomicUsize::new(0));
    let w = work_done.clone();
    let handle = LeaderElector::builder(fast("a"), lock.clone())
        .on_started_leading(move |leader| {
            let w = w.clone();
            async move {
                leader.cancel.cancelled().await;
                sleep(Duration::from_millis(150)).await; // tidying up
                w.fetch_add(1, Ordering::SeqCst);
            }
        })
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn();
    sleep(Duration::from_millis(100)).await;
    // Someone takes the lock: one-shot mode finishes after the loss.
    let current = lock.get().expect("exists");
    let mut taken = current.value;
    taken.holder = Some(id("b"));
    taken.leader_transitions += 1;
    lock.update(&current.version, taken).expect("current");
    tokio::select! {
        () = handle.finished() => {}
        () = sleep(Duration::from_secs(30)) => panic!("not finished"),
    }
    assert_eq!(work_done.load(Ordering::SeqCst), 1, "the work had stopped");
    assert!(handle.is_finished());
    handle.shutdown().await; // still usable, and harmless now
}

/// Work that ignores its cancellation: shutdown returns at the end of the term (the release is
/// given up), not a renew deadline later.
#[tokio::test(start_paused = true)]
async fn shutdown_returns_at_the_end_of_the_term_when_the_work_ignores_it() {
    let lock = MemoryLock::new();
    let handle = LeaderElector::builder(fast("a"), lock.clone())
        .on_started_leading(|_| async { sleep(Duration::from_secs(3600)).await })
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn();
    sleep(Duration::from_millis(100)).await;
    let until = handle.state().leader_until.expect("leading");
    let start = Instant::now();
    handle.shutdown().await;
    let took = start.elapsed();
    assert!(
        Instant::from_std(until) <= Instant::now() + Duration::from_millis(1),
        "waited for the term's end"
    );
    assert!(took <= Duration::from_millis(1600), "{took:?}");
}

/// Errors are on the handle: the last one and how many in a row, and the readiness check fails
/// for a candidate that cannot read the lock (its liveness check does not: a restart would not
/// help).
#[tokio::test(start_paused = true)]
async fn errors_are_visible_on_the_handle() {
    let handle = LeaderElector::builder(fast("a"), Refusing)
        .on_started_leading(|_| async {})
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn();
    sleep(Duration::from_secs(10)).await;
    let state = handle.state();
    let report = state.last_error.expect("an error");
    assert_eq!(report.error.kind, leasehold::LockErrorKind::Unauthorized);
    assert!(report.in_a_row >= 10, "{}", report.in_a_row);
    assert_eq!(handle.check(Duration::from_secs(2)), Ok(()), "alive");
    let check = handle
        .check_ready(Duration::from_secs(2))
        .expect_err("not ready")
        .to_string();
    assert!(check.contains("forbidden"), "{check}");
    handle.shutdown().await;
}

/// No task is left behind: watchdogs end with their term, event tasks are bounded.
#[tokio::test(start_paused = true)]
async fn no_task_outlives_a_shutdown() {
    let lock = MemoryLock::new();
    let log = Log::default();
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    for round in 0..20 {
        let handle = spawn(fast(&format!("n{round}")), lock.clone(), &log);
        sleep(Duration::from_millis(300)).await;
        handle.shutdown().await;
    }
    sleep(Duration::from_millis(10)).await;
    let alive = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    assert_eq!(alive, baseline, "tasks left behind");
}

/// A missing namespace: GET says absent, POST says 404 `namespaces ... not found`. Before:
/// about 2,000 requests a second from one candidate, nothing logged, nothing on the handle.
/// Now: no more than the elector's pace allows, and the error on the handle.
async fn lease_missing_namespace_costs_a_few_requests_and_says_so(b: &Backend) {
    let gone = b.missing_namespace().await;
    let log = Log::default();
    let config = fast("a");
    let rp = config.retry_period;
    let client = b.client_as("cand-0").await;
    let handle = spawn(config, LeaseLock::new(client, &gone, "ctl"), &log);
    let run = Duration::from_secs(3);
    sleep(run).await;
    let requests = b.requests_of("cand-0").await.len();
    let bound =
        leasehold::elector::MAX_OPS_PER_RETRY_PERIOD * (run.as_millis() / rp.as_millis()) as usize;
    assert!(
        requests <= bound,
        "{requests} requests in {run:?} (bound {bound})"
    );
    assert!(requests >= 10, "it keeps trying: {requests}");
    let state = handle.state();
    let report = state.last_error.expect("the error is on the handle");
    assert!(
        report
            .error
            .message
            .contains(&format!("namespaces \"{gone}\" not found")),
        "{report:?}"
    );
    handle.shutdown().await;
}

/// RBAC refuses updates: every renewal gets 403; the leader loses its term, the error is on the
/// handle, and the request rate stays paced.
async fn lease_forbidden_updates_are_paced_and_visible(b: &Backend) {
    // The unprivileged user may do all but update.
    b.grant("coordination.k8s.io", "leases", &["get", "create"])
        .await;
    let log = Log::default();
    let mut config = fast("a");
    config.after_loss = AfterLoss::Recontend;
    let rp = config.retry_period;
    let handle = spawn(
        config,
        LeaseLock::new(b.client_as("alice").await, b.ns(), "ctl"),
        &log,
    );
    let run = Duration::from_secs(3);
    sleep(run).await;
    let requests = b.requests_of("alice").await.len();
    let bound =
        leasehold::elector::MAX_OPS_PER_RETRY_PERIOD * (run.as_millis() / rp.as_millis()) as usize;
    assert!(requests <= bound, "{requests} requests");
    let state = handle.state();
    let report = state.last_error.expect("the error is on the handle");
    assert_eq!(report.error.kind, leasehold::LockErrorKind::Unauthorized);
    handle.shutdown().await;
}

/// The API server restarts on the same port (every connection, the watches too, cut): a short
/// restart costs nothing, a long one costs the term and is recovered from once it is back.
async fn lease_api_server_restarts_are_survived(b: &Backend) {
    let log = Log::default();
    let watching = |n: &str| Config {
        observation: Observation::Watch,
        after_loss: AfterLoss::Recontend,
        ..fast(n)
    };
    let handles = lease_candidates(b, &["a", "b"], watching, &log).await;
    until(&handles, Duration::from_secs(3), |l| l.is_some()).await;
    let leader = leader_of(&handles).await.expect("a leader");
    b.restart_server(Duration::from_millis(300)).await;
    sleep(Duration::from_millis(500)).await;
    assert_eq!(
        leader_of(&handles).await,
        Some(leader),
        "a short restart costs nothing"
    );
    b.restart_server(Duration::from_secs(3)).await;
    until(&handles, Duration::from_secs(10), |l| l.is_some()).await;
    for h in handles {
        h.shutdown().await;
    }
}

/// A panic in `on_started_leading` before the work's first await is handled like a panic of
/// the work (before: it killed the driver task, with no release and no report).
#[tokio::test(start_paused = true)]
async fn a_panic_before_the_work_starts_is_the_work_s_panic() {
    let lock = MemoryLock::new();
    let handle = LeaderElector::builder(fast("a"), lock.clone())
        .on_started_leading(|leader| {
            let n: u32 = "not a number".parse().expect("the work's own bug");
            async move {
                let _ = n;
                leader.cancel.cancelled().await;
            }
        })
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn();
    tokio::time::timeout(Duration::from_secs(5), handle.finished())
        .await
        .expect("finishes");
    let state = handle.state();
    assert!(state.work_panicked.is_some());
    assert_eq!(lock.get().expect("exists").value.holder, None, "released");
}

on_both!(
    lease_three_candidates_one_leader_and_crash_failover,
    lease_graceful_handover_when_watching,
    lease_missing_namespace_costs_a_few_requests_and_says_so,
    lease_forbidden_updates_are_paced_and_visible,
);

on_both!(exclusive:
    lease_outage_longer_than_the_renew_deadline,
    lease_short_hang_is_survived,
    lease_api_server_restarts_are_survived,
);
