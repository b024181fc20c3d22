//! The tokio driver (feature `tokio`).
//!
//! ```no_run
//! # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use leasehold::{Config, Identity};
//! use leasehold::kube::LeaseLock;
//! use leasehold::tokio::LeaderElector;
//!
//! let mut config = Config::new(Identity::new("my-operator-7d9f_2b1c")?);
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
use tokio_util::sync::CancellationToken;

pub use super::BuildError;
use super::{Core, Effect, LeaderState, NewLeaderFn, Shared, StoppedFn};
use crate::config::{Config, Observation};
use crate::elector::{Action, FencingToken, Input, OpId};
use crate::lock::{Lock, LockError, LockErrorKind, LockResult, Sighting};
use crate::record::Identity;

/// What the leader work gets: its fencing token and a token that is cancelled the moment
/// leadership ends (at `leader_until` at the latest, even if the driver itself is stuck).
#[derive(Debug, Clone)]
pub struct LeaderContext {
    /// The fencing token of this term.
    pub token: FencingToken,
    /// Cancelled when this term ends.
    pub cancel: CancellationToken,
}

/// The operation in flight: its id and the call, already bounded by its deadline.
type PendingOp = (OpId, Pin<Box<dyn Future<Output = LockResult> + Send>>);
type StartedFn = Box<dyn FnMut(LeaderContext) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Builds a tokio [`LeaderElector`].
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
    pub fn build(self) -> Result<LeaderElector<L>, BuildError> {
        let watch = match self.config.observation {
            Observation::Watch => self.lock.watch(),
            Observation::Poll => None,
        };
        let precision = self.lock.time_precision();
        let parts = self.into_parts(watch.is_some(), precision)?;
        let (state_tx, _) = watch::channel(parts.shared.state());
        Ok(LeaderElector {
            config: parts.config,
            lock: Arc::new(parts.lock),
            shared: parts.shared,
            state_tx,
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
    watch: Option<BoxStream<'static, Result<Sighting, LockError>>>,
    on_started: StartedFn,
    on_stopped: StoppedFn,
    on_new_leader: Option<NewLeaderFn>,
    core: Core,
}

/// The running elector: its state, and a way to stop it.
pub struct Handle {
    shared: Shared,
    state: watch::Receiver<LeaderState>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Handle {
    /// A receiver of the state, updated after every step.
    pub fn state(&self) -> watch::Receiver<LeaderState> {
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

    /// client-go's healthz check: an error when this candidate's lease was last seen renewed
    /// more than `lease_duration + max_tolerable_expired` ago (a wedged process).
    ///
    /// # Errors
    /// A message naming the lock.
    pub fn check(&self, max_tolerable_expired: Duration) -> Result<(), String> {
        self.shared.check(max_tolerable_expired)
    }

    /// Steps down (the leader work is cancelled), waits for the leader work to stop, releases
    /// the lock if configured, and returns when the elector has finished.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }

    /// Whether the elector has finished (one-shot after a loss, or shut down).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until the elector finishes on its own.
    pub async fn finished(self) {
        let _ = self.task.await;
    }

    /// Stops the driver at once, as a crash would: no release. The leader work's token still
    /// fires at `leader_until`.
    pub fn abort(self) {
        self.task.abort();
    }
}

struct Term {
    cancel: CancellationToken,
    until: watch::Sender<::tokio::time::Instant>,
    work: JoinHandle<()>,
}

impl<L: Lock> LeaderElector<L> {
    /// Starts building an elector for `config` on `lock`.
    pub fn builder(config: Config, lock: L) -> Builder<L> {
        Builder::new(config, lock)
    }

    /// Runs on a task of its own.
    pub fn spawn(self) -> Handle {
        let cancel = CancellationToken::new();
        let shared = self.shared.clone();
        let state = self.state_tx.subscribe();
        let task = ::tokio::spawn(self.run(cancel.clone()));
        Handle {
            shared,
            state,
            cancel,
            task,
        }
    }

    /// Runs until the elector finishes: after losing leadership in one-shot mode, or after
    /// `cancel` fires (then it steps down, waits for the leader work, and releases if
    /// configured).
    pub async fn run(mut self, cancel: CancellationToken) {
        let clock = self.shared.clock;
        let mut watch = self.watch.take();
        let mut pending: Option<PendingOp> = None;
        let mut term: Option<Term> = None;
        let mut awaiting_work: Option<JoinHandle<()>> = None;
        let mut shutdown_sent = false;
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
                        pending = Some((
                            op,
                            Box::pin(async move {
                                match timeout_at(deadline, lock.execute(request)).await {
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
                        tracing::debug!(lock = %self.lock.describe(), ?event, "leader election");
                        for effect in self.core.effects(&event) {
                            self.apply(effect, &mut term, &mut awaiting_work);
                        }
                    }
                    Action::SleepUntil { at, .. } => break Some(at),
                    Action::Done => break None,
                }
            };
            let state = self.shared.state();
            self.core.observe(&state);
            self.state_tx.send_replace(state);
            let Some(wake) = wake else { break };
            if awaiting_work.as_ref().is_some_and(JoinHandle::is_finished) {
                awaiting_work = None;
                self.shared.input(Input::LeaderWorkStopped);
                continue;
            }
            ::tokio::select! {
                biased;
                () = cancel.cancelled(), if !shutdown_sent => {
                    shutdown_sent = true;
                    self.shared.input(Input::Shutdown);
                }
                result = poll_pending(&mut pending), if pending.is_some() => {
                    if let Some((op, result)) = result {
                        self.shared.input(|now| Input::LockResult { now, op, result });
                    }
                }
                seen = next_sighting(&mut watch), if watch.is_some() => match seen {
                    Some(Ok(record)) => self.shared.input(|now| Input::Observed { now, record }),
                    Some(Err(e)) => tracing::warn!(lock = %self.lock.describe(), error = %e, "watch"),
                    None => watch = None,
                },
                _ = wait_for(&mut awaiting_work), if awaiting_work.is_some() => {
                    awaiting_work = None;
                    self.shared.input(Input::LeaderWorkStopped);
                }
                () = sleep_until(clock.tokio_instant(wake)) => self.shared.input(Input::Timeout),
            }
        }
        // Return only once the leader work has stopped (it has been told to), giving it at most
        // a renew deadline.
        let work = term.take().map(|t| {
            t.cancel.cancel();
            t.work
        });
        if let Some(work) = work.or(awaiting_work) {
            let _ = ::tokio::time::timeout(self.config.renew_deadline, work).await;
        }
        if self.core.exit() {
            (self.on_stopped)();
        }
    }

    fn apply(
        &mut self,
        effect: Effect,
        term: &mut Option<Term>,
        awaiting_work: &mut Option<JoinHandle<()>>,
    ) {
        let clock = self.shared.clock;
        match effect {
            Effect::RecordEvent(message) => {
                let lock = self.lock.clone();
                ::tokio::spawn(async move { lock.record_event(message).await });
            }
            Effect::StartWork {
                token,
                leader_until,
            } => {
                let cancel = CancellationToken::new();
                let (until_tx, until_rx) = watch::channel(clock.tokio_instant(leader_until));
                ::tokio::spawn(watchdog(cancel.clone(), until_rx));
                let work = ::tokio::spawn((self.on_started)(LeaderContext {
                    token,
                    cancel: cancel.clone(),
                }));
                *term = Some(Term {
                    cancel,
                    until: until_tx,
                    work,
                });
            }
            Effect::ExtendWork { leader_until } => {
                if let Some(t) = term {
                    t.until.send_replace(clock.tokio_instant(leader_until));
                }
            }
            Effect::StopWork => {
                let work = term.take().map(|t| {
                    t.cancel.cancel();
                    t.work
                });
                *awaiting_work = Some(work.unwrap_or_else(|| ::tokio::spawn(async {})));
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

/// Cancels the term's token when its (possibly renewed) end arrives. If the driver goes away
/// (aborted, panicked), the last known end stands.
async fn watchdog(cancel: CancellationToken, mut until: watch::Receiver<::tokio::time::Instant>) {
    loop {
        let at = *until.borrow_and_update();
        ::tokio::select! {
            () = cancel.cancelled() => return,
            changed = until.changed() => {
                if changed.is_err() {
                    sleep_until(at).await;
                    cancel.cancel();
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

async fn poll_pending(pending: &mut Option<PendingOp>) -> Option<(OpId, LockResult)> {
    let (op, fut) = pending.as_mut()?;
    let result = fut.await;
    let op = *op;
    *pending = None;
    Some((op, result))
}

async fn next_sighting(
    watch: &mut Option<BoxStream<'static, Result<Sighting, LockError>>>,
) -> Option<Result<Sighting, LockError>> {
    watch.as_mut()?.next().await
}

async fn wait_for(work: &mut Option<JoinHandle<()>>) {
    if let Some(handle) = work.as_mut() {
        let _ = handle.await;
    }
}
