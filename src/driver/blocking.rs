//! The blocking driver (feature `blocking`): plain std threads, no async in sight.
//!
//! ```
//! use std::time::Duration;
//! use leasehold::blocking::LeaderElector;
//! use leasehold::{Config, Identity, MemoryLock};
//!
//! let mut config = Config::new(Identity::new("worker-1")?);
//! config.release_on_cancel = true;
//! let handle = LeaderElector::builder(config, MemoryLock::new())
//!     .on_started_leading(|leader| {
//!         // The leader work, on a thread of its own: return when `stop` fires.
//!         while !leader.stop.wait_timeout(Duration::from_millis(50)) {
//!             // ... one unit of work, fenced with leader.token ...
//!         }
//!     })
//!     .on_stopped_leading(|| {})
//!     .build()?
//!     .spawn();
//! std::thread::sleep(Duration::from_millis(100));
//! assert!(handle.is_leader());
//! handle.shutdown(); // stops the work, waits for it, releases the lock
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Kubernetes locks are async (kube-rs); [`RemoteLock`] runs one on a small private runtime on
//! its own thread, as `reqwest::blocking` does, so the caller never sees tokio.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

pub use super::BuildError;
use super::{Core, Effect, ErrorLog, LeaderState, NewLeaderFn, Shared, StoppedFn};
use crate::config::{Config, Observation};
use crate::elector::{Action, FencingToken, Input, OpId, Unhealthy};
use crate::lock::{
    LockError, LockErrorKind, LockRequest, LockResponse, LockResult, MemoryLock, Sighting,
};
use crate::record::{Identity, LeaderElectionRecord, Version};

/// A lock store for the blocking driver: the twin of [`crate::lock::Lock`].
pub trait BlockingLock: Send + Sync + 'static {
    /// Reads the record and its version (`None` when the object is absent).
    ///
    /// # Errors
    /// A classified [`LockError`].
    fn get(&self) -> Result<Sighting, LockError>;

    /// Creates the lock object holding `record`.
    ///
    /// # Errors
    /// [`LockErrorKind::AlreadyExists`] when it exists, or another classified error.
    fn create(&self, record: LeaderElectionRecord) -> Result<Version, LockError>;

    /// Replaces the record if the object's version is still `expected`.
    ///
    /// # Errors
    /// [`LockErrorKind::Conflict`] when it moved on, or another classified error.
    fn update(&self, expected: Version, record: LeaderElectionRecord)
    -> Result<Version, LockError>;

    /// "namespace/name" or similar, for messages.
    fn describe(&self) -> String;

    /// The finest step of time the lock stores (see [`crate::lock::Lock::time_precision`]'s
    /// twin rule: the default, 1 s, is right for every lock).
    fn time_precision(&self) -> Duration {
        crate::config::DEFAULT_TIME_PRECISION
    }

    /// Every change of the lock, if the store can push them (default: `None`, the elector polls).
    fn watch(&self) -> Option<Receiver<Result<Sighting, LockError>>> {
        None
    }

    /// Records a Kubernetes-style event about the lock; the default does nothing.
    fn record_event(&self, message: &str) {
        let _ = message;
    }

    /// Performs `request`, giving up at `deadline` with [`LockErrorKind::Timeout`]. A lock
    /// whose calls can hang (a remote store) should override this; the default calls
    /// [`BlockingLock::execute`] and cannot cut it short. The driver runs every call on a
    /// thread of its own, so even a call that hangs past its deadline never delays the next.
    fn execute_until(&self, request: LockRequest, deadline: std::time::Instant) -> LockResult {
        let _ = deadline;
        self.execute(request)
    }

    /// Performs `request`.
    fn execute(&self, request: LockRequest) -> LockResult {
        match request {
            LockRequest::Get => self.get().map(LockResponse::Record),
            LockRequest::Create(record) => self.create(record).map(LockResponse::Written),
            LockRequest::Update { expected, record } => {
                self.update(expected, record).map(LockResponse::Written)
            }
        }
    }
}

impl BlockingLock for MemoryLock {
    fn get(&self) -> Result<Sighting, LockError> {
        Ok(MemoryLock::get(self))
    }

    fn create(&self, record: LeaderElectionRecord) -> Result<Version, LockError> {
        MemoryLock::create(self, record)
    }

    fn update(
        &self,
        expected: Version,
        record: LeaderElectionRecord,
    ) -> Result<Version, LockError> {
        MemoryLock::update(self, &expected, record)
    }

    fn describe(&self) -> String {
        "memory".into()
    }

    fn time_precision(&self) -> Duration {
        MemoryLock::time_precision(self)
    }

    fn watch(&self) -> Option<Receiver<Result<Sighting, LockError>>> {
        Some(self.subscribe())
    }
}

/// Tells the leader work to stop: set by the driver when the term ends, and by the clock at
/// the end of the term even if the driver is stuck.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    inner: Arc<(Mutex<StopState>, Condvar)>,
}

#[derive(Debug, Default)]
struct StopState {
    stopped: bool,
    /// The end of the term: past it, the work must stop whatever the driver says.
    deadline: Option<std::time::Instant>,
}

impl StopSignal {
    fn state(&self) -> std::sync::MutexGuard<'_, StopState> {
        self.inner.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the work must stop now.
    #[allow(clippy::disallowed_methods)] // the stop signal reads the clock for its deadline
    pub fn is_stopped(&self) -> bool {
        let st = self.state();
        st.stopped || st.deadline.is_some_and(|d| std::time::Instant::now() >= d)
    }

    /// Waits up to `timeout` for the signal; returns whether the work must stop.
    #[allow(clippy::disallowed_methods)]
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let start = std::time::Instant::now();
        let mut st = self.state();
        loop {
            let now = std::time::Instant::now();
            if st.stopped || st.deadline.is_some_and(|d| now >= d) {
                return true;
            }
            let mut left = timeout.saturating_sub(now - start);
            if left.is_zero() {
                return false;
            }
            if let Some(d) = st.deadline {
                left = left.min(d - now);
            }
            st = self
                .inner
                .1
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until the work must stop.
    pub fn wait(&self) {
        while !self.wait_timeout(Duration::from_secs(3600)) {}
    }

    fn stop(&self) {
        self.state().stopped = true;
        self.inner.1.notify_all();
    }

    fn set_deadline(&self, deadline: std::time::Instant) {
        self.state().deadline = Some(deadline);
        self.inner.1.notify_all();
    }
}

/// What the leader work gets.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LeaderContext {
    /// The fencing token of this term.
    pub token: FencingToken,
    /// Fires when the term ends (at its end at the latest).
    pub stop: StopSignal,
}

type StartedFn = Arc<dyn Fn(LeaderContext) + Send + Sync>;

/// Builds a blocking [`LeaderElector`]: from [`LeaderElector::builder`], then
/// `on_started_leading` and [`on_stopped_leading`](super::Builder::on_stopped_leading) (both
/// required), optionally
/// [`on_new_leader`](super::Builder::on_new_leader), [`metrics`](super::Builder::metrics),
/// [`seed`](super::Builder::seed), and in coordinated election `coordinated` (on a
/// `RemoteLock` around a Lease) or `lease_candidate` (feature `kube`); then `build`. The
/// methods shared by both drivers are documented on [`driver::Builder`](super::Builder).
pub type Builder<L> = super::Builder<L, StartedFn>;

#[cfg(feature = "kube")]
impl Builder<RemoteLock> {
    /// Coordinated leader election on the Lease this `RemoteLock` wraps (see
    /// [`lease_candidate`](super::Builder::lease_candidate)), with the LeaseCandidate derived
    /// from it (its client, which lives on the lock's own runtime, its namespace and name) and
    /// from the configuration's identity. `build` fails if the lock is no `LeaseLock` (a lock
    /// of your own around one included: use `lease_candidate` with a registration whose
    /// client lives on a runtime that outlives the elector).
    pub fn coordinated(self, versions: crate::kube::CandidateVersions) -> Self {
        match self.lock.lease() {
            Some((client, namespace, name)) => {
                let registration = crate::kube::LeaseCandidateRegistration::new(
                    client.clone(),
                    namespace,
                    &self.config.identity,
                    name,
                    versions,
                );
                self.lease_candidate(registration)
            }
            None => {
                let lock = self.lock.describe();
                self.refuse(BuildError::NotALease { lock })
            }
        }
    }
}

impl<L: BlockingLock> Builder<L> {
    /// The leader work, run on a thread of its own at the start of every term; it must return
    /// when `LeaderContext::stop` fires. Required.
    pub fn on_started_leading(self, f: impl Fn(LeaderContext) + Send + Sync + 'static) -> Self {
        self.set_on_started(Arc::new(f))
    }

    /// Validates and builds. With `Observation::Watch`, the lock's watch is opened here; a
    /// lock that cannot watch makes followers poll.
    ///
    /// # Errors
    /// An invalid configuration, or a missing callback, with client-go's messages.
    pub fn build(mut self) -> Result<LeaderElector<L>, BuildError> {
        self.name_after_the_lock(self.lock.describe());
        let changes = match self.config.observation {
            Observation::Watch => self.lock.watch(),
            Observation::Poll => None,
        };
        let precision = self.lock.time_precision();
        let parts = self.into_parts(changes.is_some(), precision)?;
        let (tx, rx) = mpsc::channel();
        Ok(LeaderElector {
            config: parts.config,
            lock: Arc::new(parts.lock),
            shared: parts.shared,
            changes,
            tx,
            rx,
            on_started: parts.on_started,
            on_stopped: parts.on_stopped,
            on_new_leader: parts.on_new_leader,
            core: parts.core,
            errors: parts.errors,
            done: Done::default(),
            #[cfg(feature = "kube")]
            candidate: parts.candidate,
        })
    }
}

/// What reaches the driver thread.
enum Message {
    Result(OpId, LockRequest, LockResult),
    Observed(Sighting),
    WatchError(LockError),
    /// The lock's watch ended.
    WatchEnded,
    /// The work of term `id` returned, or panicked with this message.
    WorkEnded(u64, Option<String>),
    Shutdown,
}

/// A leader elector on std threads.
pub struct LeaderElector<L> {
    config: Config,
    lock: Arc<L>,
    changes: Option<Receiver<Result<Sighting, LockError>>>,
    shared: Shared,
    tx: Sender<Message>,
    rx: Receiver<Message>,
    on_started: StartedFn,
    on_stopped: StoppedFn,
    on_new_leader: Option<NewLeaderFn>,
    core: Core,
    errors: ErrorLog,
    done: Done,
    #[cfg(feature = "kube")]
    candidate: Option<crate::kube::LeaseCandidateRegistration>,
}

/// Set when the driver has returned; waited on by [`Handle::finished`].
#[derive(Debug, Clone, Default)]
struct Done(Arc<(Mutex<bool>, Condvar)>);

impl Done {
    fn set(&self) {
        *self.0.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.0.1.notify_all();
    }

    fn is_set(&self) -> bool {
        *self.0.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait(&self) {
        let mut done = self.0.0.lock().unwrap_or_else(PoisonError::into_inner);
        while !*done {
            done = self.0.1.wait(done).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The running elector, usable from any thread.
///
/// Dropping the handle steps down and releases the lock (if configured), as
/// [`Handle::shutdown`] does but without waiting; [`Handle::detach`] lets the elector run on.
pub struct Handle {
    shared: Shared,
    tx: Sender<Message>,
    thread: Option<JoinHandle<()>>,
    done: Done,
    detached: bool,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if !self.detached {
            let _ = self.tx.send(Message::Shutdown);
        }
    }
}

impl Handle {
    /// A cheap, cloneable view of this elector (state, checks, metrics), for a health endpoint
    /// or a metrics registry that must not own the handle.
    pub fn probe(&self) -> super::Probe {
        super::Probe::new(self.shared.clone())
    }

    /// The state now (as the tokio driver's `Handle::state` and
    /// [`Probe::state`](super::Probe::state)).
    pub fn state(&self) -> LeaderState {
        self.shared.state()
    }

    /// Whether this candidate leads right now (false from `leader_until` on, even if the
    /// driver is stuck).
    pub fn is_leader(&self) -> bool {
        self.shared.is_leader()
    }

    /// The holder last observed.
    pub fn leader(&self) -> Option<Identity> {
        self.shared.elector().leader().cloned()
    }

    /// client-go's healthz check, for a liveness probe (see [`crate::Elector::check`]): an
    /// error for a leader that cannot renew (or a stuck driver), and while an alert is in force.
    ///
    /// # Errors
    /// What is wrong, naming the lock.
    pub fn check(&self, max_tolerable_expired: Duration) -> Result<(), Unhealthy> {
        self.shared.check(max_tolerable_expired)
    }

    /// The stricter check, for a readiness probe (see [`crate::Elector::check_ready`]): also an
    /// error once the elector has finished, or when the lock has not answered for a lease and
    /// more.
    ///
    /// # Errors
    /// What is wrong, naming the lock.
    pub fn check_ready(&self, max_tolerable_expired: Duration) -> Result<(), Unhealthy> {
        self.shared.check_ready(max_tolerable_expired)
    }

    /// Whether the elector has finished and its leader work has stopped or been given up.
    pub fn is_finished(&self) -> bool {
        self.done.is_set()
    }

    /// Steps down, waits for the leader work, releases if configured, and returns when the
    /// elector has finished and its thread has ended.
    pub fn shutdown(mut self) {
        let _ = self.tx.send(Message::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Starts what [`Handle::shutdown`] does, without waiting or consuming the handle (which
    /// may be shared); [`Handle::finished`] then waits for the end.
    pub fn stop(&self) {
        let _ = self.tx.send(Message::Shutdown);
    }

    /// Waits until the elector finishes (on its own, or after a shutdown from another
    /// thread) and its leader work has stopped or been given up, without consuming the handle.
    pub fn finished(&self) {
        self.done.wait();
    }

    /// Waits until the elector finishes on its own and its thread has ended.
    pub fn join(mut self) {
        self.detached = true;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Lets the elector run on without this handle: dropping it then neither steps down nor
    /// releases. The elector stops on its own only in one-shot mode after a loss.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

struct Term {
    id: u64,
    stop: StopSignal,
    /// The work returned before the term ended.
    returned: bool,
    /// The end of the term.
    until: std::time::Instant,
}

/// A work told to stop whose end the elector awaits.
struct Stopping {
    id: u64,
    /// Until when the driver's exit waits for it.
    wait_until: std::time::Instant,
}

impl<L: BlockingLock> LeaderElector<L> {
    /// Starts building an elector for `config` on `lock`.
    pub fn builder(config: Config, lock: L) -> Builder<L> {
        Builder::new(config, lock)
    }

    /// Runs on a thread of its own. Keep the handle: dropping it steps down and releases.
    #[must_use = "dropping the handle steps down and releases the lock; keep it, or call detach"]
    pub fn spawn(self) -> Handle {
        let (shared, tx) = (self.shared.clone(), self.tx.clone());
        let done = self.done.clone();
        let thread = std::thread::spawn(move || self.run());
        Handle {
            shared,
            tx,
            thread: Some(thread),
            done,
            detached: false,
        }
    }

    /// Runs on the calling thread until the elector finishes, and returns once the leader
    /// work has stopped, or has been given up: at the end of its term, or one retry period
    /// after it was told to stop if that is later. Work that ignores its stop signal then runs
    /// on unsupervised; the lock no longer protects it. The driver's own threads (lock calls,
    /// the watch) have ended by then, except a call into a lock that ignores its deadline.
    pub fn run(mut self) {
        // Whatever happens below (a panicking callback included), `finished` returns.
        let _done = SetOnDrop(self.done.clone());
        // The LeaseCandidate lives as long as the elector, on a small runtime of its own (its
        // kube client must have been built in a runtime that outlives the elector, such as
        // the one `RemoteLock::spawn` builds the lock in). It starts once the elector has seen
        // the lock (see the tokio driver).
        #[cfg(feature = "kube")]
        let mut unregistered = self.candidate.take();
        #[cfg(feature = "kube")]
        let mut registration: Option<(::tokio::sync::oneshot::Sender<()>, JoinHandle<()>)> = None;
        let clock = self.shared.clock;
        let describe = self.lock.describe();
        let watching = Arc::new(AtomicBool::new(true));
        let watcher = self.changes.take().map(|changes| {
            let (tx, watching) = (self.tx.clone(), watching.clone());
            std::thread::spawn(move || forward_changes(&changes, &tx, &watching))
        });
        // Every lock call runs on a thread of its own, so one that hangs never delays the
        // next; a call into a lock that honours its deadline ends by then.
        let mut calls: Vec<(JoinHandle<()>, std::time::Instant)> = Vec::new();
        let mut term: Option<Term> = None;
        let mut stopping: Option<Stopping> = None;
        let mut next_term = 0u64;
        let mut shutdown_sent = false;
        loop {
            let wake = loop {
                let action = self.shared.elector().poll_action();
                match action {
                    Action::Lock {
                        op,
                        request,
                        deadline,
                    } => {
                        calls.retain(|(call, _)| !call.is_finished());
                        let (lock, tx) = (self.lock.clone(), self.tx.clone());
                        let deadline = clock.std_instant(deadline);
                        if calls.len() >= MAX_HUNG_CALLS {
                            // Calls into a lock that ignores its deadlines pile up: refuse new
                            // ones until some return, rather than spawn threads without end.
                            let busy = LockError::new(
                                LockErrorKind::Timeout,
                                format!(
                                    "{MAX_HUNG_CALLS} earlier calls into the lock have not returned; not calling it again"
                                ),
                            );
                            let _ = tx.send(Message::Result(op, request, Err(busy)));
                            continue;
                        }
                        let call = std::thread::spawn(move || {
                            let result = lock.execute_until(request.clone(), deadline);
                            let _ = tx.send(Message::Result(op, request, result));
                        });
                        calls.push((call, deadline));
                    }
                    Action::Emit(event) => {
                        for effect in self.core.effects(&event) {
                            self.apply(effect, &mut term, &mut stopping, &mut next_term);
                        }
                    }
                    Action::SleepUntil { at, .. } => break Some(at),
                    Action::Done => break None,
                }
            };
            #[cfg(feature = "kube")]
            if !shutdown_sent
                && unregistered.is_some()
                && self.shared.elector().lock_seen()
                && let Some(candidate) = unregistered.take()
            {
                registration = Some(register(candidate));
            }
            self.core.observe(&self.shared.state());
            let Some(wake) = wake else { break };
            match self.rx.recv_timeout(clock.until(wake)) {
                Ok(Message::Result(op, request, result)) => {
                    if let Err(e) = &result {
                        self.errors.note(&describe, &request, e);
                    }
                    self.shared
                        .input(|now| Input::LockResult { now, op, result });
                }
                Ok(Message::Observed(record)) => {
                    self.shared.input(|now| Input::Observed { now, record });
                }
                Ok(Message::WatchError(e)) => {
                    self.errors.note(&describe, &LockRequest::Get, &e);
                    self.shared.input(Input::WatchBroken);
                }
                Ok(Message::WatchEnded) => self.shared.input(Input::WatchBroken),
                Ok(Message::WorkEnded(id, panic)) => {
                    if let Some(message) = panic {
                        self.shared.work_panicked(&describe, message);
                        // A panic ends the term at once, as it would end client-go's process.
                        if term.as_ref().is_some_and(|t| t.id == id) && !shutdown_sent {
                            shutdown_sent = true;
                            self.shared.input(Input::Shutdown);
                        }
                    }
                    if let Some(t) = term.as_mut().filter(|t| t.id == id) {
                        t.returned = true;
                    }
                    // While the elector runs it waits for the work as long as it takes.
                    if stopping.as_ref().is_some_and(|s| s.id == id) {
                        stopping = None;
                        self.shared.input(Input::LeaderWorkStopped);
                    }
                }
                Ok(Message::Shutdown) => {
                    if !shutdown_sent {
                        shutdown_sent = true;
                        // The candidate goes before the release, so the controller neither
                        // picks nor waits for it.
                        #[cfg(feature = "kube")]
                        deregister(registration.take());
                        self.shared.input(Input::Shutdown);
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.shared.input(Input::Timeout),
                // INVARIANT: `self.tx` lives as long as `self`, so the channel cannot close.
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Return once the leader work has stopped (it has been told to), or has been given up.
        if let Some(t) = term.take() {
            t.stop.stop();
            if !t.returned {
                stopping = Some(Stopping {
                    id: t.id,
                    wait_until: self.give_up_at(t.until),
                });
            }
        }
        if let Some(s) = stopping {
            loop {
                match self.rx.recv_timeout(
                    s.wait_until
                        .saturating_duration_since(std::time::Instant::now()),
                ) {
                    Ok(Message::WorkEnded(id, panic)) if id == s.id => {
                        if let Some(message) = panic {
                            self.shared.work_panicked(&describe, message);
                        }
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        #[cfg(feature = "kube")]
        deregister(registration.take());
        if self.core.exit() {
            (self.on_stopped)();
        }
        watching.store(false, Ordering::SeqCst);
        if let Some(watcher) = watcher {
            let _ = watcher.join();
        }
        for (call, deadline) in calls {
            // A call into a lock that honours its deadline ends by then; one that does not is
            // left to finish on its own.
            while !call.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if call.is_finished() {
                let _ = call.join();
            }
        }
    }

    /// Until when the driver's exit waits for a work told to stop now: the end of its term,
    /// or one retry period from now if that is later.
    fn give_up_at(&self, until: std::time::Instant) -> std::time::Instant {
        until.max(std::time::Instant::now() + self.config.retry_period)
    }

    fn apply(
        &mut self,
        effect: Effect,
        term: &mut Option<Term>,
        stopping: &mut Option<Stopping>,
        next_term: &mut u64,
    ) {
        let clock = self.shared.clock;
        match effect {
            Effect::RecordEvent(message) => {
                let lock = self.lock.clone();
                std::thread::spawn(move || lock.record_event(message));
            }
            Effect::StartWork {
                token,
                leader_until,
            } => {
                *next_term += 1;
                let id = *next_term;
                let stop = StopSignal::default();
                let until = clock.std_instant(leader_until);
                stop.set_deadline(until);
                let (work, tx, ctx) = (
                    self.on_started.clone(),
                    self.tx.clone(),
                    LeaderContext {
                        token,
                        stop: stop.clone(),
                    },
                );
                std::thread::spawn(move || {
                    let ended =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(ctx)));
                    let panic = ended.err().map(super::panic_message);
                    let _ = tx.send(Message::WorkEnded(id, panic));
                });
                *term = Some(Term {
                    id,
                    stop,
                    returned: false,
                    until,
                });
            }
            Effect::ExtendWork { leader_until } => {
                if let Some(t) = term {
                    t.until = clock.std_instant(leader_until);
                    t.stop.set_deadline(t.until);
                }
            }
            Effect::StopWork => {
                let running = term.take().and_then(|t| {
                    t.stop.stop();
                    (!t.returned).then(|| Stopping {
                        id: t.id,
                        wait_until: self.give_up_at(t.until),
                    })
                });
                match running {
                    Some(s) => *stopping = Some(s),
                    // The work had already returned.
                    None => self.shared.input(Input::LeaderWorkStopped),
                }
            }
            Effect::Stopped => (self.on_stopped)(),
            Effect::NewLeader(leader) => {
                if let Some(f) = &mut self.on_new_leader {
                    f(leader.as_ref());
                }
            }
            Effect::Alert(alert) => {
                tracing::error!(lock = %self.lock.describe(), %alert, "leader election")
            }
        }
    }
}

/// Runs the LeaseCandidate registration on a thread with a small runtime of its own.
#[cfg(feature = "kube")]
fn register(
    candidate: crate::kube::LeaseCandidateRegistration,
) -> (::tokio::sync::oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, stopped) = ::tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        match ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(candidate.run(async move {
                let _ = stopped.await;
            })),
            Err(e) => tracing::error!(error = %e, "no runtime for the LeaseCandidate"),
        }
    });
    (stop, thread)
}

/// Stops the LeaseCandidate registration and waits for it to delete itself (its calls are
/// bounded: 10 s for one in flight, 5 s for the delete).
#[cfg(feature = "kube")]
fn deregister(registration: Option<(::tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>) {
    if let Some((stop, thread)) = registration {
        let _ = stop.send(());
        let _ = thread.join();
    }
}

/// How many calls into a lock may hang past their deadlines before the driver stops calling
/// it (a lock whose `execute_until` ignores the deadline).
const MAX_HUNG_CALLS: usize = 4;

/// Sets the done flag when dropped, even by a panic.
struct SetOnDrop(Done);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// The watch thread: forwards changes to the driver until the driver stops watching (checked
/// every 100 ms, so it ends promptly even when the lock never changes again).
fn forward_changes(
    changes: &Receiver<Result<Sighting, LockError>>,
    tx: &Sender<Message>,
    watching: &AtomicBool,
) {
    while watching.load(Ordering::SeqCst) {
        let message = match changes.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(seen)) => Message::Observed(seen),
            Ok(Err(e)) => Message::WatchError(e),
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                let _ = tx.send(Message::WatchEnded);
                return;
            }
        };
        if tx.send(message).is_err() {
            return;
        }
    }
}

#[cfg(feature = "kube")]
pub use remote::{RemoteLock, SpawnError};

#[cfg(feature = "kube")]
mod remote {
    use std::future::Future;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::BlockingLock;
    use crate::lock::{
        Lock, LockError, LockErrorKind, LockRequest, LockResponse, LockResult, Sighting,
    };
    use crate::record::{LeaderElectionRecord, Version};

    /// Why [`RemoteLock::spawn`] could not start the lock.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum SpawnError {
        /// The lock's runtime could not start.
        #[error("cannot start the lock's runtime: {0}")]
        Runtime(#[source] std::io::Error),
        /// The closure that makes the lock failed (its error is the source).
        #[error("cannot make the lock: {0}")]
        Make(#[source] Box<dyn std::error::Error + Send + Sync>),
        /// The closure that makes the lock panicked.
        #[error("the closure that makes the lock panicked")]
        Panicked,
    }

    enum Job {
        Execute(LockRequest, std::time::Instant, mpsc::Sender<LockResult>),
        Watch(mpsc::Sender<Option<mpsc::Receiver<Result<Sighting, LockError>>>>),
        Event(String, Duration),
        Stop,
    }

    /// How long a call made through the plain [`BlockingLock`] methods (`get`, `create`,
    /// `update`, no deadline of their own) may take.
    const CALL_LIMIT: Duration = Duration::from_secs(30);

    /// An async [`Lock`] (a Kubernetes lock) run on a private single-threaded runtime on its
    /// own thread, behind the [`BlockingLock`] interface. Every call is cut off at its
    /// deadline, on the runtime and on the caller's side. Dropping it stops the runtime and
    /// joins its thread.
    pub struct RemoteLock {
        jobs: ::tokio::sync::mpsc::UnboundedSender<Job>,
        describe: String,
        precision: Duration,
        /// A wrapped Lease lock's client (alive on this lock's runtime), namespace and name:
        /// what a coordinated candidate registers with.
        lease: Option<(kube::Client, String, String)>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for RemoteLock {
        fn drop(&mut self) {
            let _ = self.jobs.send(Job::Stop);
            if let Some(thread) = self.thread.take() {
                // The runtime stops at once: calls in flight are cancelled with it.
                let _ = thread.join();
            }
        }
    }

    impl RemoteLock {
        /// A wrapped Lease lock's client, namespace and name.
        pub(crate) fn lease(&self) -> Option<(&kube::Client, &str, &str)> {
            self.lease
                .as_ref()
                .map(|(client, namespace, name)| (client, namespace.as_str(), name.as_str()))
        }

        /// Starts the runtime thread and builds the lock there with `make` (kube clients must
        /// be created inside a runtime):
        ///
        /// ```no_run
        /// use leasehold::blocking::RemoteLock;
        /// use leasehold::kube::LeaseLock;
        ///
        /// let lock = RemoteLock::spawn(|| async {
        ///     let client = kube::Client::try_default().await?;
        ///     Ok::<_, kube::Error>(LeaseLock::new(client, "default", "my-lock"))
        /// })?;
        /// # Ok::<(), leasehold::blocking::SpawnError>(())
        /// ```
        ///
        /// # Errors
        /// The runtime could not start, or `make` failed (its error is the
        /// [`source`](std::error::Error::source)).
        pub fn spawn<L, F, Fut, E>(make: F) -> Result<Self, SpawnError>
        where
            L: Lock,
            F: FnOnce() -> Fut + Send + 'static,
            Fut: Future<Output = Result<L, E>>,
            E: Into<Box<dyn std::error::Error + Send + Sync>>,
        {
            type Ready = (String, Duration, Option<(kube::Client, String, String)>);
            let (ready_tx, ready_rx) = mpsc::channel::<Result<Ready, SpawnError>>();
            let (jobs, mut queue) = ::tokio::sync::mpsc::unbounded_channel::<Job>();
            let thread = std::thread::spawn(move || {
                let runtime = match ::tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(SpawnError::Runtime(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let lock = match make().await {
                        Ok(lock) => std::sync::Arc::new(lock),
                        Err(e) => {
                            let _ = ready_tx.send(Err(SpawnError::Make(e.into())));
                            return;
                        }
                    };
                    let lease = (lock.as_ref() as &dyn std::any::Any)
                        .downcast_ref::<crate::kube::LeaseLock>()
                        .map(|l| (l.client(), l.namespace().to_string(), l.name().to_string()));
                    let _ = ready_tx.send(Ok((lock.describe(), lock.time_precision(), lease)));
                    while let Some(job) = queue.recv().await {
                        let lock = lock.clone();
                        match job {
                            Job::Stop => return,
                            Job::Execute(request, deadline, reply) => {
                                ::tokio::spawn(async move {
                                    let deadline = ::tokio::time::Instant::from_std(deadline);
                                    let call = lock.execute(request);
                                    let result = ::tokio::time::timeout_at(deadline, call)
                                        .await
                                        .unwrap_or_else(|_| Err(timed_out()));
                                    let _ = reply.send(result);
                                });
                            }
                            Job::Watch(reply) => {
                                let Some(mut stream) = lock.watch() else {
                                    let _ = reply.send(None);
                                    continue;
                                };
                                let (tx, rx) = mpsc::channel();
                                let _ = reply.send(Some(rx));
                                ::tokio::spawn(async move {
                                    use futures_util::StreamExt;
                                    while let Some(item) = stream.next().await {
                                        if tx.send(item).is_err() {
                                            return;
                                        }
                                    }
                                });
                            }
                            Job::Event(message, limit) => {
                                ::tokio::spawn(async move {
                                    let event = lock.record_event(&message);
                                    let _ = ::tokio::time::timeout(limit, event).await;
                                });
                            }
                        }
                    }
                });
            });
            let (describe, precision, lease) =
                ready_rx.recv().map_err(|_| SpawnError::Panicked)??;
            Ok(RemoteLock {
                jobs,
                describe,
                precision,
                lease,
                thread: Some(thread),
            })
        }

        fn call(&self, request: LockRequest) -> LockResult {
            self.call_until(request, std::time::Instant::now() + CALL_LIMIT)
        }

        fn call_until(&self, request: LockRequest, deadline: std::time::Instant) -> LockResult {
            let (tx, rx) = mpsc::channel();
            self.jobs
                .send(Job::Execute(request, deadline, tx))
                .map_err(|_| gone())?;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(result) => result,
                Err(mpsc::RecvTimeoutError::Timeout) => Err(timed_out()),
                Err(mpsc::RecvTimeoutError::Disconnected) => Err(gone()),
            }
        }
    }

    fn timed_out() -> LockError {
        LockError::new(
            LockErrorKind::Timeout,
            "no answer before the operation's deadline",
        )
    }

    fn gone() -> LockError {
        LockError::new(LockErrorKind::Other, "the lock's runtime thread is gone")
    }

    fn unexpected(r: LockResponse) -> LockError {
        LockError::new(LockErrorKind::Other, format!("unexpected answer {r:?}"))
    }

    impl BlockingLock for RemoteLock {
        fn get(&self) -> Result<Sighting, LockError> {
            match self.call(LockRequest::Get)? {
                LockResponse::Record(seen) => Ok(seen),
                other => Err(unexpected(other)),
            }
        }

        fn create(&self, record: LeaderElectionRecord) -> Result<Version, LockError> {
            match self.call(LockRequest::Create(record))? {
                LockResponse::Written(v) => Ok(v),
                other => Err(unexpected(other)),
            }
        }

        fn update(
            &self,
            expected: Version,
            record: LeaderElectionRecord,
        ) -> Result<Version, LockError> {
            match self.call(LockRequest::Update { expected, record })? {
                LockResponse::Written(v) => Ok(v),
                other => Err(unexpected(other)),
            }
        }

        fn describe(&self) -> String {
            self.describe.clone()
        }

        fn time_precision(&self) -> Duration {
            self.precision
        }

        fn watch(&self) -> Option<mpsc::Receiver<Result<Sighting, LockError>>> {
            let (tx, rx) = mpsc::channel();
            self.jobs.send(Job::Watch(tx)).ok()?;
            rx.recv().ok().flatten()
        }

        fn record_event(&self, message: &str) {
            let _ = self.jobs.send(Job::Event(message.to_string(), CALL_LIMIT));
        }

        fn execute_until(&self, request: LockRequest, deadline: std::time::Instant) -> LockResult {
            self.call_until(request, deadline)
        }
    }
}
