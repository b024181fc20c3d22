//! The tokio driver of a shard group member (features `tokio`; the Kubernetes member Leases
//! need `kube` too): runs a [`ShardMember`] and each owned shard's work in a task of its own.
//!
//! ```no_run
//! # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use leasehold::kube::MemberLeases;
//! use leasehold::shards::ShardConfig;
//! use leasehold::tokio::ShardedMember;
//! use leasehold::{Config, Identity, Observation};
//!
//! let mut member = Config::new(Identity::new(std::env::var("POD_NAME")?)?);
//! member.observation = Observation::Watch;
//! let config = ShardConfig::new(member, "orders", 64);
//! let leases = MemberLeases::new(client, "default", &config.group, &config.lease_name);
//! let handle = ShardedMember::new(config, leases, |shard| async move {
//!     // Work on shard.shard until shard.cancel fires; pass shard.token with every write.
//!     shard.cancel.cancelled().await;
//! })?
//! .spawn();
//! let mine = handle.shard_for("default/my-object");
//! // ... on SIGTERM: stop every shard, release the Lease.
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use ::tokio::sync::watch;
use ::tokio::task::JoinHandle;
use ::tokio::time::{sleep_until, timeout_at};
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, FuturesUnordered};
use tokio_util::sync::CancellationToken;

use super::Clock;
use crate::elector::{Event, FencingToken, OpId};
use crate::lock::{LockError, LockErrorKind};
use crate::record::Identity;
use crate::shards::{
    GroupChange, GroupLock, GroupResult, ShardAction, ShardConfig, ShardConfigError, ShardEvent,
    ShardInput, ShardMember, hash,
};

/// What a shard's work gets.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ShardContext {
    /// The shard.
    pub shard: u32,
    /// Its fencing token: higher than every earlier owner's. Pass it with every write.
    pub token: FencingToken,
    /// Cancelled when the shard must stop: it moved, or the membership term ended (at the
    /// end of the term at the latest, even if the driver is stuck).
    pub cancel: CancellationToken,
}

type WorkFn = Box<dyn FnMut(ShardContext) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;
type OpFuture = Pin<Box<dyn Future<Output = (OpId, GroupResult)> + Send>>;

/// What the handle shows.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    owned: Vec<(u32, FencingToken)>,
    owners: Vec<Option<Identity>>,
    member: bool,
    live: Vec<String>,
}

/// A member of a shard group, driven by tokio.
pub struct ShardedMember<G> {
    config: ShardConfig,
    lock: Arc<G>,
    work: WorkFn,
    seed: u64,
}

impl<G: GroupLock> ShardedMember<G> {
    /// A member running `work` for every shard it owns, in a task of its own; the work must
    /// stop when its `cancel` fires, and its future must not return before everything it
    /// started for the shard has stopped: a returned future is a stopped run (its `cancel`
    /// fires then, for whatever still holds it). Work that returns or panics early is logged, and
    /// the member gives the shard up and takes it again: a new run, with a new token, after
    /// a new fence (so at most [`MAX_LISTS_PER_RETRY_PERIOD`](crate::shards::MAX_LISTS_PER_RETRY_PERIOD)
    /// restarts a retry period).
    ///
    /// If an administrator deletes the member's Lease, the member stops every shard,
    /// releases (which lets the deletion complete) and finishes, as after
    /// [`ShardHandle::shutdown`]: [`ShardHandle::is_finished`] turns true, and rejoining is
    /// the application's choice (spawn a new member, or exit and let the pod restart).
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn new<F, Fut>(config: ShardConfig, lock: G, mut work: F) -> Result<Self, ShardConfigError>
    where
        F: FnMut(ShardContext) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut config = config;
        config.member.time_precision = lock.time_precision();
        config.validate()?;
        Ok(ShardedMember {
            config,
            lock: Arc::new(lock),
            work: Box::new(move |ctx| Box::pin(work(ctx))),
            seed: std::process::id().into(),
        })
    }

    /// The seed of the membership elector's jitter (default: the process id).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Runs on a task of its own.
    #[must_use = "dropping the handle leaves the group; keep it"]
    pub fn spawn(self) -> ShardHandle {
        let cancel = CancellationToken::new();
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let (done_tx, done) = watch::channel(false);
        let shards = NonZeroU32::new(self.config.shards).unwrap_or(NonZeroU32::MIN);
        let task = ::tokio::spawn(self.run(cancel.clone(), snapshot.clone(), done_tx));
        ShardHandle {
            snapshot,
            cancel,
            done,
            task: Some(task),
            shards,
        }
    }

    async fn run(
        mut self,
        cancel: CancellationToken,
        snapshot: Arc<Mutex<Snapshot>>,
        done: watch::Sender<bool>,
    ) {
        let clock = Clock::new();
        let describe = self.lock.describe();
        let mut member = match ShardMember::new(self.config.clone(), clock.now(), self.seed) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(member = %describe, error = %e, "cannot join the shard group");
                done.send_replace(true);
                return;
            }
        };
        let mut watch: Option<BoxStream<'static, Result<GroupChange, LockError>>> =
            match self.config.member.observation {
                crate::Observation::Watch => self.lock.watch(),
                _ => None,
            };
        let mut ops: FuturesUnordered<OpFuture> = FuturesUnordered::new();
        // The membership term's token (cancelled at its end by a watchdog) and its end.
        let mut term: Option<(CancellationToken, watch::Sender<::tokio::time::Instant>)> = None;
        // Each shard whose work runs: the run's fencing token and cancellation.
        let mut running: BTreeMap<u32, (FencingToken, CancellationToken)> = BTreeMap::new();
        type Work = Pin<Box<dyn Future<Output = (u32, FencingToken)> + Send>>;
        let mut works: FuturesUnordered<Work> = FuturesUnordered::new();
        let mut shutdown_sent = false;
        let mut watch_rests_until: Option<::tokio::time::Instant> = None;
        loop {
            let mut stopped_now = Vec::new();
            let wake = loop {
                match member.poll_action() {
                    ShardAction::Op {
                        op,
                        request,
                        deadline,
                    } => {
                        let lock = self.lock.clone();
                        let deadline = clock.tokio_instant(deadline);
                        ops.push(Box::pin(async move {
                            let result = match timeout_at(deadline, lock.execute(request)).await {
                                Ok(result) => result,
                                Err(_) => Err(LockError::new(
                                    LockErrorKind::Timeout,
                                    "no answer before the operation's deadline",
                                )),
                            };
                            (op, result)
                        }));
                    }
                    ShardAction::Emit(event) => {
                        tracing::debug!(member = %describe, ?event, "shard group");
                        match event {
                            ShardEvent::Member(Event::StartedLeading { leader_until, .. }) => {
                                let token = CancellationToken::new();
                                let (until_tx, until_rx) =
                                    watch::channel(clock.tokio_instant(leader_until));
                                ::tokio::spawn(super::tokio::watchdog(token.clone(), until_rx));
                                if let Some((old, _)) = term.replace((token, until_tx)) {
                                    old.cancel();
                                }
                            }
                            ShardEvent::Member(Event::Renewed { leader_until }) => {
                                let until = clock.tokio_instant(leader_until);
                                match &term {
                                    Some((token, tx)) if !token.is_cancelled() => {
                                        tx.send_replace(until);
                                    }
                                    Some(_) => {
                                        // The watchdog fired as this renewal came in: the
                                        // runs it cut off are reported (and taken again);
                                        // the term goes on, under a new token.
                                        let token = CancellationToken::new();
                                        let (tx, rx) = watch::channel(until);
                                        ::tokio::spawn(super::tokio::watchdog(token.clone(), rx));
                                        term = Some((token, tx));
                                    }
                                    None => {}
                                }
                            }
                            ShardEvent::Member(Event::StoppedLeading { reason }) => {
                                tracing::info!(member = %describe, ?reason, "left the group's membership term");
                                if let Some((token, _)) = term.take() {
                                    token.cancel();
                                }
                            }
                            ShardEvent::ShardStarted { shard, token } => {
                                let parent = term.as_ref().map(|(t, _)| t.child_token());
                                let cancel = parent.unwrap_or_else(|| {
                                    // INVARIANT: shards start only within a term; without
                                    // one, the work is cancelled from the start.
                                    let t = CancellationToken::new();
                                    t.cancel();
                                    t
                                });
                                let ctx = ShardContext {
                                    shard,
                                    token,
                                    cancel: cancel.clone(),
                                };
                                let started =
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        (self.work)(ctx)
                                    }));
                                let describe = describe.clone();
                                // A task of its own: shards run in parallel, and slow work
                                // does not hold up the membership's renewals.
                                let task = started.map(::tokio::spawn);
                                works.push(Box::pin(async move {
                                    let ran = match task {
                                        Ok(task) => task.await.is_ok(),
                                        Err(_) => false,
                                    };
                                    if !ran {
                                        tracing::error!(member = %describe, shard, "a shard's work panicked (or its task was aborted)");
                                    }
                                    (shard, token)
                                }));
                                running.insert(shard, (token, cancel));
                            }
                            ShardEvent::ShardStopped {
                                shard,
                                token,
                                reason,
                            } => {
                                tracing::debug!(member = %describe, shard, %token, ?reason, "stopping a shard");
                                match running.get(&shard) {
                                    // Reported when the work returns.
                                    Some((run, cancel)) if *run == token => cancel.cancel(),
                                    _ => stopped_now.push((shard, token)),
                                }
                            }
                            ShardEvent::IncompatibleMember { name, reason } => {
                                tracing::warn!(member = %describe, lease = %name, %reason, "a member Lease of the group cannot be read: it counts as claiming every shard");
                            }
                            _ => {}
                        }
                    }
                    ShardAction::SleepUntil { at } => break Some(at),
                    ShardAction::Done => break None,
                }
            };
            *snapshot.lock().unwrap_or_else(PoisonError::into_inner) = Snapshot {
                owned: member.owned_shards().collect(),
                owners: (0..self.config.shards)
                    .map(|k| member.owner_of(k))
                    .collect(),
                member: member.member_until().is_some(),
                live: member.live_members(),
            };
            if !stopped_now.is_empty() {
                member.handle_input(ShardInput::ShardsStopped {
                    now: clock.now(),
                    shards: stopped_now,
                });
                continue;
            }
            let Some(wake) = wake else { break };
            ::tokio::select! {
                biased;
                () = cancel.cancelled(), if !shutdown_sent => {
                    shutdown_sent = true;
                    member.handle_input(ShardInput::Shutdown(clock.now()));
                }
                Some((shard, token)) = works.next(), if !works.is_empty() => {
                    // A run's work returned. Reported at once: if it was not told to stop (it
                    // ended or panicked on its own), the member gives the shard up and takes
                    // it again with a new token, which restarts the work.
                    if let Some(cancel) = running.get(&shard).filter(|(run, _)| *run == token).map(|(_, c)| c.clone()) {
                        running.remove(&shard);
                        let told = cancel.is_cancelled();
                        // Whatever the work handed its context to hears it too.
                        cancel.cancel();
                        if !told {
                            tracing::warn!(member = %describe, shard, %token, "a shard's work ended before it was told to stop: the shard is taken again");
                        }
                        member.handle_input(ShardInput::ShardsStopped { now: clock.now(), shards: vec![(shard, token)] });
                    }
                }
                Some((op, result)) = ops.next(), if !ops.is_empty() => {
                    if let Err(e) = &result {
                        tracing::warn!(member = %describe, %op, error = %e, "shard group operation failed");
                    }
                    member.handle_input(ShardInput::Result { now: clock.now(), op, result });
                }
                seen = next(&mut watch), if watch.is_some() && watch_rests_until.is_none() => match seen {
                    Some(Ok(change)) => member.handle_input(ShardInput::Observed { now: clock.now(), change }),
                    Some(Err(e)) => {
                        tracing::warn!(member = %describe, error = %e, "the group's watch failed; listing meanwhile");
                        member.handle_input(ShardInput::WatchBroken(clock.now()));
                        watch_rests_until = Some(::tokio::time::Instant::now() + self.config.member.retry_period);
                    }
                    None => {
                        member.handle_input(ShardInput::WatchBroken(clock.now()));
                        watch = None;
                    }
                },
                () = rest(watch_rests_until), if watch_rests_until.is_some() => watch_rests_until = None,
                () = sleep_until(clock.tokio_instant(wake)) => member.handle_input(ShardInput::Timeout(clock.now())),
            }
        }
        // The member has left: every shard was reported stopped before the release.
        if let Some((token, _)) = term.take() {
            token.cancel();
        }
        snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .member = false;
        done.send_replace(true);
    }
}

async fn next(
    watch: &mut Option<BoxStream<'static, Result<GroupChange, LockError>>>,
) -> Option<Result<GroupChange, LockError>> {
    watch.as_mut()?.next().await
}

async fn rest(until: Option<::tokio::time::Instant>) {
    if let Some(at) = until {
        sleep_until(at).await;
    }
}

/// The handle of a running [`ShardedMember`]. Dropping it leaves the group (stops every shard,
/// releases the Lease) in the background.
pub struct ShardHandle {
    snapshot: Arc<Mutex<Snapshot>>,
    cancel: CancellationToken,
    done: watch::Receiver<bool>,
    task: Option<JoinHandle<()>>,
    shards: NonZeroU32,
}

impl ShardHandle {
    fn snapshot(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.snapshot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shards this member runs, with their tokens.
    pub fn owned_shards(&self) -> Vec<(u32, FencingToken)> {
        self.snapshot().owned.clone()
    }

    /// Who runs `shard`, as far as this member knows (see
    /// [`ShardMember::owner_of`]).
    pub fn owner_of(&self, shard: u32) -> Option<Identity> {
        self.snapshot()
            .owners
            .get(shard as usize)
            .cloned()
            .flatten()
    }

    /// The shard of `key`: [`hash::shard_for`], part of the wire contract.
    pub fn shard_for(&self, key: impl AsRef<[u8]>) -> u32 {
        hash::shard_for(key, self.shards)
    }

    /// Whether the membership term runs.
    pub fn is_member(&self) -> bool {
        self.snapshot().member
    }

    /// The live members this member sees.
    pub fn live_members(&self) -> Vec<String> {
        self.snapshot().live.clone()
    }

    /// Whether the member has left the group: after [`ShardHandle::shutdown`], or once its
    /// Lease was deleted and it released.
    pub fn is_finished(&self) -> bool {
        *self.done.borrow()
    }

    /// Leaves the group: stops every shard, waits for their work, releases the Lease.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ShardHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
