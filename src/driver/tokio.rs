//! The tokio driver (feature `tokio`).
//!
//! ```no_run
//! # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use leasehold::{Config, Identity};
//! use leasehold::kube::LeaseLock;
//! use leasehold::tokio::LeaderElector;
//!
//! let mut config = Config::new(Identity::new("my-operator-7d9f-2b1c")?);
//! config.release_on_cancel = true;
//! let lock = LeaseLock::new(client, "default", "my-operator");
//! let handle = LeaderElector::builder(config, lock)
//!     .on_started_leading(|leader| async move {
//!         // Do the work; stop when `leader.cancel` fires. Pass `leader.token` along with
//!         // every write so downstream systems can fence off a deposed leader.
//!         leader.cancel.cancelled().await;
//!     })
//!     .on_stopped_leading(|| eprintln!("no longer leading"))
//!     .build()?
//!     .spawn();
//! // ... later: step down, wait for the work, release the lock.
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ::tokio::sync::watch;
use ::tokio::task::JoinHandle;
use ::tokio::time::{sleep_until, timeout_at};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
/// The leader work's cancellation token (`LeaderContext::cancel`), re-exported so that the
/// work's signature needs no direct dependency on `tokio-util`.
pub use tokio_util::sync::CancellationToken;

pub use super::BuildError;
pub use super::shards::{ShardContext, ShardHandle, ShardedMember};
use super::{Core, Effect, ErrorLog, LeaderState, NewLeaderFn, Shared, StoppedFn};
use crate::config::{Config, Observation};
use crate::elector::{Action, FencingToken, Input, OpId, Unhealthy};
use crate::lock::{Lock, LockError, LockErrorKind, LockRequest, LockResult, Sighting};
use crate::record::Identity;

/// What the leader work gets: its fencing token and a token that is cancelled the moment
/// leadership ends (at `leader_until` at the latest, even if the driver itself is stuck).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LeaderContext {
    /// The fencing token of this term.
    pub token: FencingToken,
    /// Cancelled when this term ends.
    pub cancel: CancellationToken,
    /// The instant the term ends unless renewed, moved on by every renewal: for work that
    /// wants to wind down before an unrenewed term ends (`leasehold run` warns its command
    /// a grace period ahead).
    pub until: watch::Receiver<::tokio::time::Instant>,
}

/// The operation in flight: its id, the request (for the error log) and the call, already
/// bounded by its deadline.
type PendingOp = (
    OpId,
    LockRequest,
    Pin<Box<dyn Future<Output = LockResult> + Send>>,
);
type StartedFn = Box<dyn FnMut(LeaderContext) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Builds a tokio [`LeaderElector`]: from [`LeaderElector::builder`], then
/// `on_started_leading` and [`on_stopped_leading`](super::Builder::on_stopped_leading) (both
/// required), optionally
/// [`on_new_leader`](super::Builder::on_new_leader), [`metrics`](super::Builder::metrics),
/// [`seed`](super::Builder::seed), and in coordinated election
/// `coordinated` or `lease_candidate` (feature `kube`); then `build`. The methods shared by
/// both drivers are documented on [`driver::Builder`](super::Builder).
pub type Builder<L> = super::Builder<L, StartedFn>;

impl<L: Lock> Builder<L> {
    /// The leader work: called in a task of its own at the start of every term. It must stop
    /// when `LeaderContext::cancel` fires. Required.
    pub fn on_started_leading<F, Fut>(self, mut f: F) -> Self
    where
        F: FnMut(LeaderContext) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.set_on_started(Box::new(move |ctx| Box::pin(f(ctx))))
    }

    /// Validates and builds. With `Observation::Watch`, the lock's watch stream is opened here;
    /// a lock that cannot watch makes followers poll.
    ///
    /// # Errors
    /// An invalid configuration, or a missing callback, with client-go's messages.
    pub fn build(mut self) -> Result<LeaderElector<L>, BuildError> {
        self.name_after_the_lock(self.lock.describe());
        let watch = match self.config.observation {
            Observation::Watch => self.lock.watch(),
            Observation::Poll => None,
        };
        let precision = self.lock.time_precision();
        let parts = self.into_parts(watch.is_some(), precision)?;
        let (state_tx, _) = watch::channel(parts.shared.state());
        let (done_tx, _) = watch::channel(false);
        Ok(LeaderElector {
            config: parts.config,
            lock: Arc::new(parts.lock),
            shared: parts.shared,
            state_tx,
            done_tx,
            errors: parts.errors,
            #[cfg(feature = "kube")]
            candidate: parts.candidate,
            watch,
            on_started: parts.on_started,
            on_stopped: parts.on_stopped,
            on_new_leader: parts.on_new_leader,
            core: parts.core,
        })
    }
}

/// A leader elector driven by tokio.
pub struct LeaderElector<L> {
    config: Config,
    lock: Arc<L>,
    shared: Shared,
    state_tx: watch::Sender<LeaderState>,
    /// Set to true when `run` returns.
    done_tx: watch::Sender<bool>,
    watch: Option<BoxStream<'static, Result<Sighting, LockError>>>,
    on_started: StartedFn,
    on_stopped: StoppedFn,
    on_new_leader: Option<NewLeaderFn>,
    core: Core,
    errors: ErrorLog,
    #[cfg(feature = "kube")]
    candidate: Option<crate::kube::LeaseCandidateRegistration>,
}

/// The running elector: its state, and a way to stop it.
///
/// Dropping the handle steps down and releases the lock (if configured), as
/// [`Handle::shutdown`] does but without waiting; [`Handle::detach`] lets the elector run on
/// unattended instead.
pub struct Handle {
    shared: Shared,
    state: watch::Receiver<LeaderState>,
    done: watch::Receiver<bool>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
    /// Dropping the handle leaves the elector alone.
    detached: bool,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if !self.detached {
            self.cancel.cancel();
        }
    }
}

impl Handle {
    /// A cheap, cloneable view of this elector (state, checks, metrics), for a health endpoint
    /// or a metrics registry that must not own the handle.
    pub fn probe(&self) -> super::Probe {
        super::Probe::new(self.shared.clone())
    }

    /// The state now (as the blocking driver's `Handle::state` and [`Probe::state`](super::Probe::state)).
    pub fn state(&self) -> LeaderState {
        self.shared.state()
    }

    /// The state as a watch channel, sent after every step of the driver: for code that waits
    /// for a change (`wait_for`, `changed`). It follows [`state`](Self::state) by a step.
    pub fn watch_state(&self) -> watch::Receiver<LeaderState> {
        self.state.clone()
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

    /// Steps down (the leader work is cancelled), waits for the leader work to stop, releases
    /// the lock if configured, and returns when the elector has finished.
    pub async fn shutdown(self) {
        self.stop();
        self.finished().await;
    }

    /// Starts what [`Handle::shutdown`] does, without waiting or consuming the handle (which
    /// may be shared); [`Handle::finished`] then waits for the end.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Whether the elector has finished (one-shot after a loss, or shut down) and its leader
    /// work has stopped or been given up.
    pub fn is_finished(&self) -> bool {
        *self.done.borrow()
    }

    /// Waits until the elector finishes (on its own, or after [`Handle::shutdown`] or a drop
    /// elsewhere) and its leader work has stopped or been given up. It does not consume the
    /// handle, so it can stand in a `select!` next to a signal that then calls `shutdown`.
    pub async fn finished(&self) {
        let mut done = self.done.clone();
        // An error means the driver is gone (aborted or panicked): finished too.
        let _ = done.wait_for(|done| *done).await;
    }

    /// Stops the driver at once, as a crash would: no release (followers wait for the lease to
    /// expire). The leader work's token still fires at `leader_until`. The handle stays usable
    /// for `state` and `finished`.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Lets the elector run on without this handle: dropping it then neither steps down nor
    /// releases. The elector stops on its own only in one-shot mode after a loss.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

struct Term {
    cancel: CancellationToken,
    until: watch::Sender<::tokio::time::Instant>,
    /// `None` once the work has returned (it may return before its term ends).
    work: Option<JoinHandle<()>>,
}

/// Work told to stop whose end the elector awaits, and until when the driver waits for it.
struct Stopping {
    work: JoinHandle<()>,
    wait_until: ::tokio::time::Instant,
}

impl<L: Lock> LeaderElector<L> {
    /// Starts building an elector for `config` on `lock`.
    pub fn builder(config: Config, lock: L) -> Builder<L> {
        Builder::new(config, lock)
    }

    /// Runs on a task of its own. Keep the handle: dropping it steps down and releases.
    #[must_use = "dropping the handle steps down and releases the lock; keep it, or call detach"]
    pub fn spawn(self) -> Handle {
        let cancel = CancellationToken::new();
        let shared = self.shared.clone();
        let state = self.state_tx.subscribe();
        let done = self.done_tx.subscribe();
        let task = ::tokio::spawn(self.run(cancel.clone()));
        Handle {
            shared,
            state,
            done,
            cancel,
            task,
            detached: false,
        }
    }

    /// Runs until the elector finishes: after losing leadership in one-shot mode, or after
    /// `cancel` fires (then it steps down, waits for the leader work, and releases if
    /// configured). Returns once the leader work has stopped, or has been given up: at the end
    /// of its term, or one retry period after it was told to stop if that is later. Work that
    /// ignores its cancellation then runs on unsupervised; the lock no longer protects it.
    pub async fn run(mut self, cancel: CancellationToken) {
        // The LeaseCandidate lives as long as the elector: deleted before the release (so the
        // controller does not pick or wait for a candidate that is leaving), and even if this
        // future is dropped (an abort, a panic): the guard then stops it.
        //
        // It starts once the elector has seen the lock: the controller may name this candidate
        // as soon as it registers, and a record naming a candidate at its first sight counts as
        // an earlier incarnation's (waited out), while one that changed hands to it after a
        // sight is the controller's choice (taken up at once).
        #[cfg(feature = "kube")]
        let mut unregistered = self.candidate.take();
        #[cfg(feature = "kube")]
        let mut registration: Option<(tokio_util::sync::DropGuard, JoinHandle<()>)> = None;
        let clock = self.shared.clock;
        let describe = self.lock.describe();
        let mut watch = self.watch.take();
        let mut pending: Option<PendingOp> = None;
        let mut term: Option<Term> = None;
        let mut stopping: Option<Stopping> = None;
        let mut shutdown_sent = false;
        // After a watch error the stream rests for a retry period: a stream that fails at once
        // again and again must not starve the timers.
        let mut watch_rests_until: Option<::tokio::time::Instant> = None;
        loop {
            // Carry out the actions; the drain ends with a sleep or with Done.
            let wake = loop {
                let action = self.shared.elector().poll_action();
                match action {
                    Action::Lock {
                        op,
                        request,
                        deadline,
                    } => {
                        let lock = self.lock.clone();
                        let deadline = clock.tokio_instant(deadline);
                        let call = request.clone();
                        pending = Some((
                            op,
                            request,
                            Box::pin(async move {
                                match timeout_at(deadline, lock.execute(call)).await {
                                    Ok(result) => result,
                                    Err(_) => Err(LockError::new(
                                        LockErrorKind::Timeout,
                                        "no answer before the operation's deadline",
                                    )),
                                }
                            }),
                        ));
                    }
                    Action::Emit(event) => {
                        tracing::debug!(lock = %describe, ?event, "leader election");
                        for effect in self.core.effects(&event) {
                            self.apply(effect, &mut term, &mut stopping);
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
                let stop = CancellationToken::new();
                let task = ::tokio::spawn(candidate.run(stop.clone().cancelled_owned()));
                registration = Some((stop.drop_guard(), task));
            }
            let state = self.shared.state();
            self.core.observe(&state);
            self.state_tx.send_replace(state);
            let Some(wake) = wake else { break };
            ::tokio::select! {
                biased;
                () = cancel.cancelled(), if !shutdown_sent => {
                    shutdown_sent = true;
                    #[cfg(feature = "kube")]
                    deregister(registration.take()).await;
                    self.shared.input(Input::Shutdown);
                }
                result = poll_pending(&mut pending), if pending.is_some() => {
                    if let Some((op, request, result)) = result {
                        if let Err(e) = &result {
                            self.errors.note(&describe, &request, e);
                        }
                        self.shared.input(|now| Input::LockResult { now, op, result });
                    }
                }
                seen = next_sighting(&mut watch), if watch.is_some() && watch_rests_until.is_none() => match seen {
                    Some(Ok(record)) => self.shared.input(|now| Input::Observed { now, record }),
                    Some(Err(e)) => {
                        self.errors.note(&describe, &LockRequest::Get, &e);
                        self.shared.input(Input::WatchBroken);
                        watch_rests_until = Some(::tokio::time::Instant::now() + self.config.retry_period);
                    }
                    None => {
                        self.shared.input(Input::WatchBroken);
                        watch = None;
                    }
                },
                () = rest(watch_rests_until), if watch_rests_until.is_some() => watch_rests_until = None,
                ended = work_of(&mut term), if term.as_ref().is_some_and(|t| t.work.is_some()) => {
                    // The work returned or panicked while its term runs. A return is the
                    // work's business (the term goes on, as in client-go); a panic ends the
                    // term at once, as it would end client-go's process.
                    if let Err(panic) = ended
                        && panic.is_panic()
                    {
                        self.shared.work_panicked(&describe, super::panic_message(panic.into_panic()));
                        shutdown_sent = true;
                        self.shared.input(Input::Shutdown);
                    }
                }
                // While the elector runs it waits for the work as long as it takes: no new term
                // and no release before it has stopped. Only the exit gives it up.
                ended = stopped_work(&mut stopping), if stopping.is_some() => {
                    if let Some(Err(panic)) = ended
                        && panic.is_panic()
                    {
                        self.shared.work_panicked(&describe, super::panic_message(panic.into_panic()));
                    }
                    self.shared.input(Input::LeaderWorkStopped);
                }
                () = sleep_until(clock.tokio_instant(wake)) => self.shared.input(Input::Timeout),
            }
        }
        // Return once the leader work has stopped (it has been told to), or has been given up.
        if let Some(t) = term.take() {
            t.cancel.cancel();
            if let Some(work) = t.work {
                let wait_until = self.give_up_at(&t.until);
                stopping = Some(Stopping { work, wait_until });
            }
        }
        if let Some(s) = stopping
            && let Ok(Err(panic)) = ::tokio::time::timeout_at(s.wait_until, s.work).await
            && panic.is_panic()
        {
            self.shared
                .work_panicked(&describe, super::panic_message(panic.into_panic()));
        }
        #[cfg(feature = "kube")]
        deregister(registration.take()).await;
        if self.core.exit() {
            (self.on_stopped)();
        }
        let state = self.shared.state();
        self.state_tx.send_replace(state);
        self.done_tx.send_replace(true);
    }

    /// Until when the driver waits for a work told to stop now: the end of its term, or one
    /// retry period from now if that is later.
    fn give_up_at(&self, until: &watch::Sender<::tokio::time::Instant>) -> ::tokio::time::Instant {
        let grace = ::tokio::time::Instant::now() + self.config.retry_period;
        (*until.borrow()).max(grace)
    }

    fn apply(&mut self, effect: Effect, term: &mut Option<Term>, stopping: &mut Option<Stopping>) {
        let clock = self.shared.clock;
        match effect {
            Effect::RecordEvent(message) => {
                // Bounded: a hung events API must not leave a task per transition behind.
                let lock = self.lock.clone();
                let limit = self.config.operation_timeout();
                ::tokio::spawn(async move {
                    let _ = ::tokio::time::timeout(limit, lock.record_event(message)).await;
                });
            }
            Effect::StartWork {
                token,
                leader_until,
            } => {
                let cancel = CancellationToken::new();
                let (until_tx, until_rx) = watch::channel(clock.tokio_instant(leader_until));
                ::tokio::spawn(watchdog(cancel.clone(), until_rx.clone()));
                let ctx = LeaderContext {
                    token,
                    cancel: cancel.clone(),
                    until: until_rx.clone(),
                };
                // A panic before the work's first await is the work's panic too.
                let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    (self.on_started)(ctx)
                }));
                let work = match started {
                    Ok(work) => ::tokio::spawn(work),
                    Err(panic) => ::tokio::spawn(async move { std::panic::resume_unwind(panic) }),
                };
                *term = Some(Term {
                    cancel,
                    until: until_tx,
                    work: Some(work),
                });
            }
            Effect::ExtendWork { leader_until } => {
                if let Some(t) = term {
                    t.until.send_replace(clock.tokio_instant(leader_until));
                }
            }
            Effect::StopWork => {
                let running = term.take().and_then(|t| {
                    t.cancel.cancel();
                    let wait_until = self.give_up_at(&t.until);
                    t.work.map(|work| Stopping { work, wait_until })
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

/// Cancels the term's token when its (possibly renewed) end arrives. If the driver goes away
/// (aborted, panicked), the last known end stands. Ends with the term: it never outlives it.
pub(super) async fn watchdog(
    cancel: CancellationToken,
    mut until: watch::Receiver<::tokio::time::Instant>,
) {
    loop {
        let at = *until.borrow_and_update();
        ::tokio::select! {
            () = cancel.cancelled() => return,
            changed = until.changed() => {
                if changed.is_err() {
                    ::tokio::select! {
                        () = cancel.cancelled() => {}
                        () = sleep_until(at) => cancel.cancel(),
                    }
                    return;
                }
            }
            () = sleep_until(at) => {
                if *until.borrow() <= at {
                    cancel.cancel();
                    return;
                }
            }
        }
    }
}

/// Stops the LeaseCandidate registration and waits for it to delete itself (within 5 s).
#[cfg(feature = "kube")]
async fn deregister(registration: Option<(tokio_util::sync::DropGuard, JoinHandle<()>)>) {
    if let Some((guard, task)) = registration {
        drop(guard);
        let _ = ::tokio::time::timeout(Duration::from_secs(16), task).await;
    }
}

async fn rest(until: Option<::tokio::time::Instant>) {
    if let Some(at) = until {
        sleep_until(at).await;
    }
}

/// The running term's work ending, whichever way.
async fn work_of(term: &mut Option<Term>) -> Result<(), ::tokio::task::JoinError> {
    let Some(work) = term.as_mut().and_then(|t| t.work.as_mut()) else {
        return std::future::pending().await;
    };
    let ended = work.await;
    if let Some(t) = term.as_mut() {
        t.work = None;
    }
    ended
}

/// The stopping work ending.
async fn stopped_work(
    stopping: &mut Option<Stopping>,
) -> Option<Result<(), ::tokio::task::JoinError>> {
    let s = stopping.as_mut()?;
    let ended = (&mut s.work).await;
    *stopping = None;
    Some(ended)
}

async fn poll_pending(pending: &mut Option<PendingOp>) -> Option<(OpId, LockRequest, LockResult)> {
    let (_, _, fut) = pending.as_mut()?;
    let result = fut.await;
    let (op, request, _) = pending.take()?;
    Some((op, request, result))
}

async fn next_sighting(
    watch: &mut Option<BoxStream<'static, Result<Sighting, LockError>>>,
) -> Option<Result<Sighting, LockError>> {
    watch.as_mut()?.next().await
}
