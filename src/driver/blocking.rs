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

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

pub use super::BuildError;
use super::{Core, Effect, LeaderState, NewLeaderFn, Shared, StoppedFn};
use crate::config::{Config, Observation};
use crate::elector::{Action, FencingToken, Input, OpId};
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
pub struct LeaderContext {
    /// The fencing token of this term.
    pub token: FencingToken,
    /// Fires when the term ends (at its end at the latest).
    pub stop: StopSignal,
}

type StartedFn = Arc<dyn Fn(LeaderContext) + Send + Sync>;

/// Builds a blocking [`LeaderElector`].
pub type Builder<L> = super::Builder<L, StartedFn>;

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
    pub fn build(self) -> Result<LeaderElector<L>, BuildError> {
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
            state: Arc::new(Mutex::new(parts.shared.state())),
            shared: parts.shared,
            changes,
            tx,
            rx,
            on_started: parts.on_started,
            on_stopped: parts.on_stopped,
            on_new_leader: parts.on_new_leader,
            core: parts.core,
        })
    }
}

/// What reaches the driver thread.
enum Message {
    Result(OpId, LockResult),
    Observed(Sighting),
    WorkStopped(u64),
    Shutdown,
}

/// A leader elector on std threads.
pub struct LeaderElector<L> {
    config: Config,
    lock: Arc<L>,
    changes: Option<Receiver<Result<Sighting, LockError>>>,
    shared: Shared,
    state: Arc<Mutex<LeaderState>>,
    tx: Sender<Message>,
    rx: Receiver<Message>,
    on_started: StartedFn,
    on_stopped: StoppedFn,
    on_new_leader: Option<NewLeaderFn>,
    core: Core,
}

/// The running elector, usable from any thread.
pub struct Handle {
    shared: Shared,
    state: Arc<Mutex<LeaderState>>,
    tx: Sender<Message>,
    thread: JoinHandle<()>,
}

impl Handle {
    /// The state after the driver's last step.
    pub fn state(&self) -> LeaderState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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

    /// client-go's healthz check (see [`crate::Elector::check`]).
    ///
    /// # Errors
    /// A message naming the lock.
    pub fn check(&self, max_tolerable_expired: Duration) -> Result<(), String> {
        self.shared.check(max_tolerable_expired)
    }

    /// Whether the elector has finished.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Steps down, waits for the leader work, releases if configured, and returns when the
    /// elector has finished.
    pub fn shutdown(self) {
        let _ = self.tx.send(Message::Shutdown);
        let _ = self.thread.join();
    }

    /// Waits until the elector finishes on its own.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

struct Term {
    id: u64,
    stop: StopSignal,
}

impl<L: BlockingLock> LeaderElector<L> {
    /// Starts building an elector for `config` on `lock`.
    pub fn builder(config: Config, lock: L) -> Builder<L> {
        Builder::new(config, lock)
    }

    /// Runs on a thread of its own.
    pub fn spawn(self) -> Handle {
        let (shared, state, tx) = (self.shared.clone(), self.state.clone(), self.tx.clone());
        let thread = std::thread::spawn(move || self.run());
        Handle {
            shared,
            state,
            tx,
            thread,
        }
    }

    /// Runs on the calling thread until the elector finishes.
    pub fn run(mut self) {
        let clock = self.shared.clock;
        // Lock operations run on a thread of their own, so a hung call cannot stall the timers.
        let (ops_tx, ops_rx) = mpsc::channel::<(OpId, LockRequest, std::time::Instant)>();
        let (lock, results) = (self.lock.clone(), self.tx.clone());
        let io = std::thread::spawn(move || {
            #[allow(clippy::disallowed_methods)] // skipping requests whose deadline passed
            for (op, request, deadline) in ops_rx {
                let result = if std::time::Instant::now() >= deadline {
                    Err(LockError::new(
                        LockErrorKind::Timeout,
                        "not started before its deadline",
                    ))
                } else {
                    lock.execute(request)
                };
                if results.send(Message::Result(op, result)).is_err() {
                    return;
                }
            }
        });
        if let Some(changes) = self.changes.take() {
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                for change in changes {
                    match change {
                        Ok(seen) => {
                            if tx.send(Message::Observed(seen)).is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing_warn(&e),
                    }
                }
            });
        }
        let mut term: Option<Term> = None;
        let mut awaiting_work: Option<u64> = None;
        let mut next_term = 0u64;
        loop {
            let wake = loop {
                let action = self.shared.elector().poll_action();
                match action {
                    Action::Lock {
                        op,
                        request,
                        deadline,
                    } => {
                        let _ = ops_tx.send((op, request, clock.std_instant(deadline)));
                    }
                    Action::Emit(event) => {
                        for effect in self.core.effects(&event) {
                            self.apply(effect, &mut term, &mut awaiting_work, &mut next_term);
                        }
                    }
                    Action::SleepUntil { at, .. } => break Some(at),
                    Action::Done => break None,
                }
            };
            let state = self.shared.state();
            self.core.observe(&state);
            *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
            let Some(wake) = wake else { break };
            match self.rx.recv_timeout(clock.until(wake)) {
                Ok(Message::Result(op, result)) => {
                    self.shared
                        .input(|now| Input::LockResult { now, op, result });
                }
                Ok(Message::Observed(record)) => {
                    self.shared.input(|now| Input::Observed { now, record });
                }
                Ok(Message::WorkStopped(id)) => {
                    if awaiting_work == Some(id) {
                        awaiting_work = None;
                        self.shared.input(Input::LeaderWorkStopped);
                    }
                }
                Ok(Message::Shutdown) => self.shared.input(Input::Shutdown),
                Err(RecvTimeoutError::Timeout) => self.shared.input(Input::Timeout),
                // INVARIANT: `self.tx` lives as long as `self`, so the channel cannot close.
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Return only once the leader work has stopped (it has been told to), giving it at most
        // a renew deadline.
        let work = term.take().map(|t| {
            t.stop.stop();
            t.id
        });
        if let Some(id) = work.or(awaiting_work) {
            let give_up = clock.now().instant + self.config.renew_deadline;
            loop {
                match self.rx.recv_timeout(clock.until(give_up)) {
                    Ok(Message::WorkStopped(done)) if done == id => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        if self.core.exit() {
            (self.on_stopped)();
        }
        drop(ops_tx);
        // The I/O thread ends once its queue is drained; a call hung in the lock is left behind.
        if io.is_finished() {
            let _ = io.join();
        }
    }

    fn apply(
        &mut self,
        effect: Effect,
        term: &mut Option<Term>,
        awaiting_work: &mut Option<u64>,
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
                stop.set_deadline(clock.std_instant(leader_until));
                let (work, tx, ctx) = (
                    self.on_started.clone(),
                    self.tx.clone(),
                    LeaderContext {
                        token,
                        stop: stop.clone(),
                    },
                );
                std::thread::spawn(move || {
                    work(ctx);
                    let _ = tx.send(Message::WorkStopped(id));
                });
                *term = Some(Term { id, stop });
            }
            Effect::ExtendWork { leader_until } => {
                if let Some(t) = term {
                    t.stop.set_deadline(clock.std_instant(leader_until));
                }
            }
            Effect::StopWork => {
                let stopped = term.take().map(|t| {
                    t.stop.stop();
                    t.id
                });
                match stopped {
                    Some(id) => *awaiting_work = Some(id),
                    None => self.shared.input(Input::LeaderWorkStopped),
                }
            }
            Effect::Stopped => (self.on_stopped)(),
            Effect::NewLeader(leader) => {
                if let Some(f) = &mut self.on_new_leader {
                    f(leader.as_ref());
                }
            }
        }
    }
}

fn tracing_warn(e: &LockError) {
    #[cfg(feature = "kube")]
    tracing::warn!(error = %e, "watch");
    #[cfg(not(feature = "kube"))]
    let _ = e;
}

#[cfg(feature = "kube")]
pub use remote::RemoteLock;

#[cfg(feature = "kube")]
mod remote {
    use std::fmt::Display;
    use std::future::Future;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::BlockingLock;
    use crate::lock::{
        Lock, LockError, LockErrorKind, LockRequest, LockResponse, LockResult, Sighting,
    };
    use crate::record::{LeaderElectionRecord, Version};

    enum Job {
        Execute(LockRequest, mpsc::Sender<LockResult>),
        Watch(mpsc::Sender<Option<mpsc::Receiver<Result<Sighting, LockError>>>>),
        Event(String),
    }

    /// An async [`Lock`] (a Kubernetes lock) run on a private single-threaded runtime on its
    /// own thread, behind the [`BlockingLock`] interface.
    pub struct RemoteLock {
        jobs: ::tokio::sync::mpsc::UnboundedSender<Job>,
        describe: String,
        precision: Duration,
    }

    impl RemoteLock {
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
        /// # Ok::<(), String>(())
        /// ```
        ///
        /// # Errors
        /// The runtime could not start, or `make` failed.
        pub fn spawn<L, F, Fut, E>(make: F) -> Result<Self, String>
        where
            L: Lock,
            F: FnOnce() -> Fut + Send + 'static,
            Fut: Future<Output = Result<L, E>>,
            E: Display,
        {
            let (ready_tx, ready_rx) = mpsc::channel::<Result<(String, Duration), String>>();
            let (jobs, mut queue) = ::tokio::sync::mpsc::unbounded_channel::<Job>();
            std::thread::spawn(move || {
                let runtime = match ::tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start a runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let lock = match make().await {
                        Ok(lock) => std::sync::Arc::new(lock),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok((lock.describe(), lock.time_precision())));
                    while let Some(job) = queue.recv().await {
                        let lock = lock.clone();
                        match job {
                            Job::Execute(request, reply) => {
                                ::tokio::spawn(async move {
                                    let _ = reply.send(lock.execute(request).await);
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
                            Job::Event(message) => {
                                ::tokio::spawn(async move { lock.record_event(&message).await });
                            }
                        }
                    }
                });
            });
            let (describe, precision) = ready_rx
                .recv()
                .map_err(|_| "the lock's runtime thread ended".to_string())??;
            Ok(RemoteLock {
                jobs,
                describe,
                precision,
            })
        }

        fn call(&self, request: LockRequest) -> LockResult {
            let (tx, rx) = mpsc::channel();
            self.jobs
                .send(Job::Execute(request, tx))
                .map_err(|_| gone())?;
            rx.recv().map_err(|_| gone())?
        }
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
            let _ = self.jobs.send(Job::Event(message.to_string()));
        }
    }
}
