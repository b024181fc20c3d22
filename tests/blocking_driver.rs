//! The blocking driver, mirroring the tokio driver's scenarios: on the in-memory lock, and
//! against the Lease API test server through `RemoteLock`. Real time, short timings.
#![cfg(all(feature = "blocking", feature = "kube"))]
#![allow(clippy::disallowed_methods)] // these tests read the real clock

mod apiserver;
mod backend;
mod common;
mod envtest;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use apiserver::Kind;
use backend::Backend;
use common::{fast, id};
use leasehold::blocking::{BlockingLock, BuildError, Handle, LeaderElector, RemoteLock};
use leasehold::kube::LeaseLock;
use leasehold::lock::Sighting;
use leasehold::{
    Config, LeaderElectionRecord, LockError, LockErrorKind, MemoryLock, Observation, Version,
};

fn spawn<L: BlockingLock>(config: Config, lock: L) -> Handle {
    LeaderElector::builder(config, lock)
        .on_started_leading(|leader| leader.stop.wait())
        .on_stopped_leading(|| {})
        .seed(3)
        .build()
        .expect("valid")
        .spawn()
}

fn leader_of(handles: &[Handle]) -> Option<usize> {
    let leaders: Vec<usize> = (0..handles.len())
        .filter(|&i| handles[i].is_leader())
        .collect();
    assert!(leaders.len() <= 1, "two leaders: {leaders:?}");
    leaders.first().copied()
}

fn until(handles: &[Handle], limit: Duration, f: impl Fn(Option<usize>) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f(leader_of(handles)) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not within {limit:?}");
        sleep(Duration::from_millis(5));
    }
}

/// A lock that can be cut off from one candidate (a partition).
struct Cuttable {
    lock: MemoryLock,
    cut: Arc<AtomicBool>,
}

impl BlockingLock for Cuttable {
    fn get(&self) -> Result<Sighting, LockError> {
        self.check()?;
        BlockingLock::get(&self.lock)
    }
    fn create(&self, record: LeaderElectionRecord) -> Result<Version, LockError> {
        self.check()?;
        BlockingLock::create(&self.lock, record)
    }
    fn update(
        &self,
        expected: Version,
        record: LeaderElectionRecord,
    ) -> Result<Version, LockError> {
        self.check()?;
        BlockingLock::update(&self.lock, expected, record)
    }
    fn describe(&self) -> String {
        "cuttable".into()
    }
}

impl Cuttable {
    fn check(&self) -> Result<(), LockError> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(LockError::new(LockErrorKind::Unavailable, "cut off"));
        }
        Ok(())
    }
}

#[test]
fn three_candidates_exactly_one_leader() {
    let lock = MemoryLock::new();
    let handles: Vec<Handle> = ["a", "b", "c"]
        .iter()
        .map(|n| spawn(fast(n), lock.clone()))
        .collect();
    until(&handles, Duration::from_secs(1), |l| l.is_some());
    let first = leader_of(&handles);
    for _ in 0..300 {
        assert_eq!(leader_of(&handles), first);
        sleep(Duration::from_millis(5));
    }
    for h in handles {
        h.shutdown();
    }
}

#[test]
fn a_partitioned_leader_steps_down_before_another_takes_over() {
    let lock = MemoryLock::new();
    let cuts: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::default()).collect();
    let handles: Vec<Handle> = ["a", "b", "c"]
        .iter()
        .zip(&cuts)
        .map(|(n, cut)| {
            let lock = Cuttable {
                lock: lock.clone(),
                cut: cut.clone(),
            };
            spawn(fast(n), lock)
        })
        .collect();
    until(&handles, Duration::from_secs(1), |l| l.is_some());
    sleep(Duration::from_millis(300));
    let leader = leader_of(&handles).expect("a leader");
    cuts[leader].store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let stepped_down = until(&handles, Duration::from_secs(3), |l| l != Some(leader));
    assert!(
        stepped_down <= Duration::from_millis(1500),
        "within RD: {stepped_down:?}"
    );
    let failover = cut_at.elapsed() + until(&handles, Duration::from_secs(5), |l| l.is_some());
    // Followers last saw a renewal at most one jittered retry period (440 ms) before the cut.
    assert!(failover >= Duration::from_millis(1500), "{failover:?}");
    assert!(failover <= Duration::from_millis(2700), "{failover:?}");
    for h in handles {
        h.shutdown();
    }
}

#[test]
fn graceful_handover_when_watching() {
    let lock = MemoryLock::new();
    let watching = |n: &str| Config {
        observation: Observation::Watch,
        ..fast(n)
    };
    let mut handles: Vec<Handle> = ["a", "b", "c"]
        .iter()
        .map(|n| spawn(watching(n), lock.clone()))
        .collect();
    until(&handles, Duration::from_secs(1), |l| l.is_some());
    let leader = leader_of(&handles).expect("a leader");
    let start = Instant::now();
    handles.remove(leader).shutdown();
    let handover = start.elapsed() + until(&handles, Duration::from_secs(5), |l| l.is_some());
    assert!(handover <= Duration::from_millis(250), "{handover:?}");
    for h in handles {
        h.shutdown();
    }
}

#[test]
fn release_happens_after_the_leader_work_returns() {
    let lock = MemoryLock::new();
    let seen = Arc::new(Mutex::new(None));
    let (lock2, seen2) = (lock.clone(), seen.clone());
    let handle = LeaderElector::builder(fast("a"), lock.clone())
        .on_started_leading(move |leader| {
            leader.stop.wait();
            sleep(Duration::from_millis(200));
            *seen2.lock().expect("not poisoned") = lock2.get().map(|r| r.value.holder);
        })
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn();
    sleep(Duration::from_millis(300));
    assert!(handle.is_leader());
    assert!(handle.check(Duration::from_secs(1)).is_ok());
    handle.shutdown();
    assert_eq!(*seen.lock().expect("not poisoned"), Some(Some(id("a"))));
    assert_eq!(lock.get().map(|r| r.value.holder), Some(None));
}

#[test]
fn callbacks_and_builder_follow_client_go() {
    let lock = MemoryLock::new();
    lock.create(LeaderElectionRecord {
        holder: Some(id("other")),
        lease_duration_seconds: 3600,
        ..Default::default()
    })
    .expect("absent");
    let stopped = Arc::new(AtomicUsize::new(0));
    let leaders = Arc::new(Mutex::new(Vec::new()));
    let (s, l) = (stopped.clone(), leaders.clone());
    let handle = LeaderElector::builder(fast("a"), lock.clone())
        .on_started_leading(|_| {})
        .on_stopped_leading(move || {
            s.fetch_add(1, Ordering::SeqCst);
        })
        .on_new_leader(move |who| l.lock().expect("not poisoned").push(who.cloned()))
        .build()
        .expect("valid")
        .spawn();
    sleep(Duration::from_millis(300));
    assert_eq!(handle.leader(), Some(id("other")));
    assert_eq!(handle.state().leader, Some(id("other")));
    handle.shutdown();
    assert_eq!(stopped.load(Ordering::SeqCst), 1);
    assert_eq!(
        *leaders.lock().expect("not poisoned"),
        vec![Some(id("other"))]
    );

    let missing = LeaderElector::builder(fast("a"), lock.clone())
        .on_stopped_leading(|| {})
        .build();
    assert_eq!(
        missing.err().map(|e| e.to_string()),
        Some(
            "on_started_leading is required (client-go: OnStartedLeading callback must not be nil)"
                .into()
        )
    );
    let mut bad = fast("a");
    bad.retry_period = Duration::from_secs(5);
    let invalid = LeaderElector::builder(bad, lock)
        .on_started_leading(|_| {})
        .on_stopped_leading(|| {})
        .build();
    assert!(matches!(invalid.err(), Some(BuildError::Config(_))));
}

// ---- against an API server (the double and the real one), through RemoteLock -------------

/// A backend on a runtime of its own (the blocking driver's tests are sync).
struct Server {
    backend: Backend,
    runtime: tokio::runtime::Runtime,
}

impl Server {
    fn double(test: &str) -> Server {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let backend = runtime.block_on(Backend::double(test));
        Server { backend, runtime }
    }

    fn real(test: &str, exclusive: bool) -> Option<Server> {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let backend = runtime.block_on(async {
            if exclusive {
                Backend::real_exclusive(test).await
            } else {
                Backend::real(test).await
            }
        })?;
        Some(Server { backend, runtime })
    }

    /// The Lease `ctl` through a `RemoteLock` whose client is `user`'s.
    fn remote(&self, user: &str) -> RemoteLock {
        let source = self.backend.client_source(user);
        let ns = self.backend.ns().to_string();
        RemoteLock::spawn(move || async move {
            Ok::<_, String>(LeaseLock::new(source.client().await, &ns, "ctl"))
        })
        .expect("the lock starts")
    }

    fn lease(&self) -> Option<serde_json::Value> {
        self.runtime
            .block_on(self.backend.object(Kind::Lease, "ctl"))
    }
}

/// Runs a scenario `fn NAME(server: &Server)` on the double and on the real server.
macro_rules! blocking_on_both {
    ($exclusive:literal: $($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn double() {
                super::$scenario(&super::Server::double(stringify!($scenario)));
            }

            #[test]
            fn real() {
                if let Some(server) = super::Server::real(stringify!($scenario), $exclusive) {
                    super::$scenario(&server);
                }
            }
        }
    )*};
}

fn lease_one_leader_and_graceful_handover(s: &Server) {
    let mut handles: Vec<Handle> = ["a", "b"]
        .iter()
        .map(|n| {
            let config = Config {
                observation: Observation::Watch,
                ..fast(n)
            };
            spawn(config, s.remote("admin"))
        })
        .collect();
    until(&handles, Duration::from_secs(3), |l| l.is_some());
    sleep(Duration::from_millis(300));
    let leader = leader_of(&handles).expect("a leader");
    let start = Instant::now();
    handles.remove(leader).shutdown();
    let handover = start.elapsed() + until(&handles, Duration::from_secs(5), |l| l.is_some());
    eprintln!("blocking driver, lease handover when watching: {handover:?}");
    assert!(handover <= Duration::from_millis(500), "{handover:?}");
    let stored = s.lease().expect("stored");
    assert_ne!(stored["spec"]["holderIdentity"], "");
    for h in handles {
        h.shutdown();
    }
}

/// A hung API: the lock calls hang, the driver's timers do not. The leader steps down within
/// the renew deadline; nobody leads until the API answers again.
fn lease_hang_does_not_stall_the_driver(s: &Server) {
    let handles: Vec<Handle> = ["a", "b"]
        .iter()
        .map(|n| spawn(fast(n), s.remote("admin")))
        .collect();
    until(&handles, Duration::from_secs(3), |l| l.is_some());
    sleep(Duration::from_millis(300));
    s.backend.hang(true);
    let stepped_down = until(&handles, Duration::from_secs(3), |l| l.is_none());
    assert!(
        stepped_down <= Duration::from_millis(1500),
        "{stepped_down:?}"
    );
    sleep(Duration::from_secs(2));
    assert_eq!(leader_of(&handles), None);
    s.backend.hang(false);
    until(&handles, Duration::from_secs(10), |l| l.is_some());
    for h in handles {
        h.shutdown();
    }
}

/// Without release too, `shutdown` returns only once the leader work has stopped.
#[test]
fn shutdown_waits_for_the_leader_work() {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let config = Config {
        release_on_cancel: false,
        ..fast("a")
    };
    let handle = LeaderElector::builder(config, MemoryLock::new())
        .on_started_leading(move |leader| {
            leader.stop.wait();
            sleep(Duration::from_millis(200));
            d.store(true, Ordering::SeqCst);
        })
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn();
    sleep(Duration::from_millis(100));
    assert!(handle.is_leader());
    handle.shutdown();
    assert!(done.load(Ordering::SeqCst));
}

/// Re-contending after a loss: the next term starts only after the last term's work returned,
/// even when that work ignores its stop signal for a while.
#[test]
fn a_recontending_driver_never_runs_two_terms_work_at_once() {
    let lock = MemoryLock::new();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let terms = Arc::new(AtomicUsize::new(0));
    let config = Config {
        after_loss: leasehold::AfterLoss::Recontend,
        ..fast("a")
    };
    let (r, m, t) = (running.clone(), most.clone(), terms.clone());
    let handle = LeaderElector::builder(config, lock.clone())
        .on_started_leading(move |leader| {
            t.fetch_add(1, Ordering::SeqCst);
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            leader.stop.wait();
            sleep(Duration::from_millis(800)); // slow to stop
            r.fetch_sub(1, Ordering::SeqCst);
        })
        .on_stopped_leading(|| {})
        .seed(3)
        .build()
        .expect("valid")
        .spawn();
    let handles = [handle];
    until(&handles, Duration::from_secs(1), |l| l.is_some());
    // Someone takes the lock and hands it straight back (a released record).
    let current = lock.get().expect("exists");
    let mut taken = current.value.clone();
    taken.holder = Some(id("intruder"));
    taken.leader_transitions += 1;
    let v = lock.update(&current.version, taken).expect("current");
    let mut released = lock.get().expect("exists").value;
    released.holder = None;
    lock.update(&v, released).expect("current");
    until(&handles, Duration::from_secs(3), |l| l.is_none());
    until(&handles, Duration::from_secs(5), |l| l.is_some());
    assert_eq!(terms.load(Ordering::SeqCst), 2);
    assert_eq!(most.load(Ordering::SeqCst), 1, "never two works at once");
    let [handle] = handles;
    handle.shutdown();
}

/// One request black-holed by the network: the call is cut off at its deadline and later
/// calls go through, so the leader keeps (or regains) leadership (before: the I/O thread
/// waited forever and leadership was never regained).
#[test]
fn a_black_holed_request_does_not_wedge_the_driver() {
    let s = Server::double("black_hole");
    let mut config = fast("a");
    config.after_loss = leasehold::AfterLoss::Recontend;
    let handle = spawn(config, s.remote("admin"));
    let handles = [handle];
    until(&handles, Duration::from_secs(3), |l| l.is_some());
    s.backend
        .double_server()
        .expect("the double black-holes")
        .black_hole_next(1);
    sleep(Duration::from_secs(4));
    until(&handles, Duration::from_secs(3), |l| l.is_some());
    let before = s.lease().expect("exists")["metadata"]["resourceVersion"].clone();
    sleep(Duration::from_secs(1));
    let after = s.lease().expect("exists")["metadata"]["resourceVersion"].clone();
    assert_ne!(before, after, "still renewing");
    let [handle] = handles;
    handle.shutdown();
}

/// A panicking leader work ends the term: the driver steps down, releases, calls
/// `on_stopped_leading`, reports the panic and finishes (before: a zombie leader).
#[test]
fn a_panicking_leader_work_ends_the_term_and_releases() {
    let lock = MemoryLock::new();
    let stopped = Arc::new(AtomicUsize::new(0));
    let s = stopped.clone();
    let handle = LeaderElector::builder(fast("a"), lock.clone())
        .on_started_leading(|_| panic!("the work broke"))
        .on_stopped_leading(move || {
            s.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .expect("valid")
        .spawn();
    let start = Instant::now();
    while !handle.is_finished() {
        assert!(start.elapsed() < Duration::from_secs(5), "not finished");
        sleep(Duration::from_millis(5));
    }
    assert_eq!(stopped.load(Ordering::SeqCst), 1);
    assert_eq!(
        handle.state().work_panicked.as_deref(),
        Some("the work broke")
    );
    assert_eq!(lock.get().expect("exists").value.holder, None, "released");
    handle.shutdown();
}

/// Work that returns before it is told to stop does not hold up the release at shutdown
/// (before: about 20 s with default timings, and the lock still named the candidate).
#[test]
fn work_that_returned_early_does_not_delay_the_release() {
    let lock = MemoryLock::new();
    let mut config = Config::new(id("a"));
    config.release_on_cancel = true;
    let handle = LeaderElector::builder(config, lock.clone())
        .on_started_leading(|_| {})
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn();
    let handles = [handle];
    until(&handles, Duration::from_secs(1), |l| l.is_some());
    sleep(Duration::from_millis(50));
    let [handle] = handles;
    let start = Instant::now();
    handle.shutdown();
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(lock.get().expect("exists").value.holder, None, "released");
}

/// Dropping the handle steps down and releases.
#[test]
fn dropping_the_handle_steps_down_and_releases() {
    let lock = MemoryLock::new();
    let handle = spawn(fast("a"), lock.clone());
    let handles = [handle];
    until(&handles, Duration::from_secs(1), |l| l.is_some());
    drop(handles);
    let start = Instant::now();
    while lock.get().expect("exists").value.holder.is_some() {
        assert!(start.elapsed() < Duration::from_secs(2), "not released");
        sleep(Duration::from_millis(5));
    }
    let version = lock.get().expect("exists").version;
    sleep(Duration::from_secs(1));
    assert_eq!(
        lock.get().expect("exists").version,
        version,
        "no more writes"
    );
}

/// Work that ignores its stop signal: shutdown returns at the end of the term, not a renew
/// deadline later.
#[test]
fn shutdown_returns_at_the_end_of_the_term_when_the_work_ignores_it() {
    let lock = MemoryLock::new();
    let handle = LeaderElector::builder(fast("a"), lock)
        .on_started_leading(|_| sleep(Duration::from_secs(10)))
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn();
    let handles = [handle];
    until(&handles, Duration::from_secs(1), |l| l.is_some());
    let [handle] = handles;
    let start = Instant::now();
    handle.shutdown();
    assert!(
        start.elapsed() <= Duration::from_millis(1800),
        "{:?}",
        start.elapsed()
    );
}

/// Errors are on the handle, and the readiness check fails for a candidate that cannot read
/// (its liveness check does not: a restart would not help).
#[test]
fn errors_are_visible_on_the_handle() {
    let lock = Cuttable {
        lock: MemoryLock::new(),
        cut: Arc::new(AtomicBool::new(true)),
    };
    let mut config = fast("a");
    config.lease_duration = Duration::from_secs(2);
    let handle = spawn(config, lock);
    sleep(Duration::from_secs(3));
    let report = handle.state().last_error.expect("an error");
    assert!(report.in_a_row >= 5, "{}", report.in_a_row);
    assert!(handle.check(Duration::from_millis(500)).is_ok());
    assert!(handle.check_ready(Duration::from_millis(500)).is_err());
    handle.shutdown();
}

/// A lock whose calls hang and ignore their deadline (the default `execute_until`).
struct Stuck {
    calls: Arc<AtomicUsize>,
}

impl BlockingLock for Stuck {
    fn get(&self) -> Result<Sighting, LockError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        sleep(Duration::from_secs(20));
        Ok(None)
    }
    fn create(&self, _: LeaderElectionRecord) -> Result<Version, LockError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        sleep(Duration::from_secs(20));
        Err(LockError::new(LockErrorKind::Timeout, "stuck"))
    }
    fn update(&self, _: Version, _: LeaderElectionRecord) -> Result<Version, LockError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        sleep(Duration::from_secs(20));
        Err(LockError::new(LockErrorKind::Timeout, "stuck"))
    }
    fn describe(&self) -> String {
        "stuck".into()
    }
}

/// Calls into a lock that ignores its deadlines never pile up: after four hang, the driver
/// stops calling it (and says so) until some return.
#[test]
fn calls_that_hang_past_their_deadline_are_capped() {
    let calls = Arc::new(AtomicUsize::new(0));
    let lock = Stuck {
        calls: calls.clone(),
    };
    let handle = spawn(fast("a"), lock);
    // Each operation times out after 1 s and the next follows: without the cap, six calls
    // would hang after 6 s.
    sleep(Duration::from_secs(6));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "at most four calls hang at once"
    );
    let report = handle.state().last_error.expect("visible");
    assert!(
        report.error.message.contains("have not returned"),
        "{report:?}"
    );
    drop(handle);
}

blocking_on_both!(false: lease_one_leader_and_graceful_handover);
blocking_on_both!(true: lease_hang_does_not_stall_the_driver);
