//! The pure, deterministic elector.
//!
//! All of leasehold's timing model lives in this module; drivers only carry out its
//! [`Action`]s. The model, in one place:
//!
//! * **Observation.** The elector keeps the last record it saw, its version, and `observed_at`:
//!   the local instant the read (or watch event) that first showed this version and content was
//!   *received*. Record timestamps are never used for decisions.
//! * **Expiry.** For a follower the lock is free when it names no holder, or at
//!   `observed_at + lease`, where `lease` is the record's `leaseDurationSeconds` (the holder's
//!   own setting, as client-go since 1.27) or, when the record says 0, this elector's
//!   `lease_duration` (a held lock with no duration is bad input; waiting our own lease is the
//!   conservative reading, client-go would take it at once).
//! * **Acquire.** A follower reads the lock; creates it when absent; CAS-updates it when free,
//!   incrementing `leaderTransitions` only when the holder changes. When its last observation
//!   already shows the lock free it writes directly with the observed version, without a read:
//!   the compare-and-swap fails if anything changed since. Attempts repeat every
//!   `retry_period * (1 + jitter * u)`, and a follower also wakes exactly at expiry.
//! * **Leadership.** A term is anchored at the instant the last *successful* write was
//!   *issued*: `leader_until = issued_at + renew_deadline`. At `leader_until` the elector emits
//!   [`Event::StoppedLeading`] even if a renewal is in flight; every operation of a leader has a
//!   deadline no later than `leader_until`, so that renewal is then abandoned too.
//! * **Renew.** Every `retry_period` after the last successful write was issued, the leader
//!   CAS-updates its own last write (the fast path: no read). After a failure it reads first
//!   (the slow path) and retries every `retry_period` until `leader_until`. A read that shows
//!   another holder, or no lock, ends the term at once.
//! * **Release.** On [`Input::Shutdown`] a leader first stops leading, then waits for
//!   [`Input::LeaderWorkStopped`] (until `leader_until` at the latest, else it gives the release
//!   up), then reads the lock and writes client-go's release record only if the fresh read
//!   still names it, retrying on conflict until `renew_deadline` has passed.

mod io;
pub(crate) mod rng;

pub use io::{Action, Event, FencingToken, Input, Now, OpId, Role, StopReason, WakeReason};

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::{AfterLoss, Config, ConfigError, Observation, mul_f64_saturating};
use crate::lock::{LockError, LockErrorKind, LockRequest, LockResponse, LockResult};
use crate::record::{Identity, LeaderElectionRecord, Version, Versioned};
use crate::time::{Instant, Timestamp};
use rng::Rng;

/// A lease-based leader elector with no I/O, no clock and no threads.
///
/// # Driving contract
///
/// After [`Elector::new`] and after every [`Elector::handle_input`], call
/// [`Elector::poll_action`] until it returns [`Action::SleepUntil`] or [`Action::Done`], and
/// carry out each action as it comes:
///
/// * [`Action::Lock`]: perform the request right away (the term of a resulting lease is
///   anchored at the instant it was polled) and feed its result back with its [`OpId`]; give up
///   at its deadline.
/// * [`Action::Emit`]: tell the application. After [`StopReason::Shutdown`], feed
///   [`Input::LeaderWorkStopped`] once the guarded work has stopped.
/// * [`Action::SleepUntil`]: wait until that instant, a lock result, or any other input.
///
/// Misuse is harmless: an early [`Input::Timeout`] is a no-op, an instant earlier than one
/// already seen is treated as the latest one seen, and a result with an unknown or stale
/// [`OpId`] is ignored. No input makes the elector panic.
#[derive(Debug, Clone)]
pub struct Elector {
    config: Config,
    rng: Rng,
    /// The latest instant seen; inputs never move it backwards.
    now: Instant,
    /// The latest wall-clock reading, for stamping records.
    wall: Timestamp,
    phase: Phase,
    /// INVARIANT: at most one operation is outstanding, and it is this one.
    in_flight: Option<InFlight>,
    /// What the lock looked like when last seen, `None` when absent or never read.
    observed: Option<Observed>,
    /// The holder last reported with [`Event::NewLeader`].
    reported_leader: Option<Identity>,
    next_op: u64,
    slow_path_renewals: u64,
    actions: VecDeque<Action>,
}

#[derive(Debug, Clone)]
enum Phase {
    /// Contending: the next attempt is due at `next_attempt` (unless an operation is in flight).
    Following {
        next_attempt: Instant,
        why: WakeReason,
    },
    /// Leading until `leader_until`, on the strength of the write `lease`.
    Leading {
        /// Our last successful write: what the fast path compares against.
        lease: Versioned<LeaderElectionRecord>,
        token: FencingToken,
        leader_until: Instant,
        next_renew: Instant,
        /// Read before writing: the last attempt failed, or something else may have written.
        slow_path: bool,
    },
    /// Shut down while leading: waiting for the leader work to stop before releasing.
    Draining {
        leader_until: Instant,
    },
    /// Releasing: read, then CAS the release record if the lock still names us.
    Releasing {
        /// When the release began: operations issued before it are not release attempts.
        since: Instant,
        next_attempt: Instant,
        deadline: Instant,
    },
    Finished,
}

#[derive(Debug, Clone)]
struct InFlight {
    op: OpId,
    issued_at: Instant,
    deadline: Instant,
    /// The record written, or `None` for a read.
    writing: Option<LeaderElectionRecord>,
}

#[derive(Debug, Clone)]
struct Observed {
    version: Version,
    record: LeaderElectionRecord,
    observed_at: Instant,
    /// A write conditional on `version` lost a race: the store has moved on, so read before
    /// writing again.
    outdated: bool,
}

impl Elector {
    /// An elector for `config` that starts contending at once. `seed` drives the jitter of
    /// retries; give each elector its own.
    ///
    /// # Errors
    /// The first rule of [`Config::validate`] the configuration breaks.
    pub fn new(config: Config, now: Now, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut elector = Elector {
            config,
            rng: Rng::new(seed),
            now: now.instant,
            wall: now.wall,
            phase: Phase::Following {
                next_attempt: now.instant,
                why: WakeReason::RetryAcquire,
            },
            in_flight: None,
            observed: None,
            reported_leader: None,
            next_op: 0,
            slow_path_renewals: 0,
            actions: VecDeque::new(),
        };
        elector.drive();
        Ok(elector)
    }

    /// Feeds one input. Never panics; see the driving contract on [`Elector`].
    pub fn handle_input(&mut self, input: Input) {
        if matches!(self.phase, Phase::Finished) {
            return;
        }
        // Time first: a result that arrives at or after its operation's deadline, or after the
        // term it would renew has ended, finds the operation already timed out.
        self.advance(input.now());
        self.run_timers();
        if matches!(self.phase, Phase::Finished) {
            return;
        }
        match input {
            Input::Timeout(_) => {}
            Input::LockResult { op, result, .. } => match self.in_flight.take() {
                Some(f) if f.op == op => self.handle_result(f, result),
                other => self.in_flight = other,
            },
            Input::Observed { record, .. } => self.handle_observed(record),
            Input::LeaderWorkStopped(_) => {
                if matches!(self.phase, Phase::Draining { .. }) {
                    self.start_release();
                }
            }
            Input::Shutdown(_) => self.handle_shutdown(),
        }
        self.drive();
    }

    /// The next action. Call until it returns [`Action::SleepUntil`] or [`Action::Done`].
    #[must_use = "actions must be carried out, or the elector stalls"]
    pub fn poll_action(&mut self) -> Action {
        if let Some(action) = self.actions.pop_front() {
            return action;
        }
        match self.next_wake() {
            Some((at, reason)) => Action::SleepUntil { at, reason },
            None => Action::Done,
        }
    }

    /// When the elector next needs an [`Input::Timeout`], or `None` once it has finished.
    /// A pure getter: it equals the `SleepUntil` that ends the current drain.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_wake().map(|(at, _)| at)
    }

    /// Whether this candidate leads at `now`: `now < leader_until`.
    pub fn is_leader(&self, now: Instant) -> bool {
        self.leader_until().is_some_and(|until| now < until)
    }

    /// The end of the current term, while leading.
    pub fn leader_until(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Leading { leader_until, .. } => Some(*leader_until),
            _ => None,
        }
    }

    /// The fencing token of the current term, while leading.
    pub fn fencing_token(&self) -> Option<FencingToken> {
        match &self.phase {
            Phase::Leading { token, .. } => Some(*token),
            _ => None,
        }
    }

    /// The holder named by the last observed record (client-go's `GetLeader`).
    pub fn leader(&self) -> Option<&Identity> {
        self.observed.as_ref()?.record.holder.as_ref()
    }

    /// The last observed record and its version.
    pub fn observed_record(&self) -> Option<(&Version, &LeaderElectionRecord)> {
        self.observed.as_ref().map(|o| (&o.version, &o.record))
    }

    /// The role, for state reports.
    pub fn role(&self) -> Role {
        match self.phase {
            Phase::Following { .. } => Role::Follower,
            Phase::Leading { .. } => Role::Leader,
            Phase::Draining { .. } | Phase::Releasing { .. } => Role::Stopping,
            Phase::Finished => Role::Finished,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// How many renewals went the slow path (a read before the write): client-go's
    /// `leader_election_slowpath_total`.
    pub fn slow_path_renewals(&self) -> u64 {
        self.slow_path_renewals
    }

    /// client-go's healthz `Check`: an error when the last observed record names this candidate
    /// and was last seen to change more than `lease_duration + max_tolerable_expired` before
    /// `now`, which means the process is wedged and should be restarted. Followers are healthy.
    ///
    /// # Errors
    /// A message naming the lock when the check fails.
    pub fn check(&self, now: Instant, max_tolerable_expired: Duration) -> Result<(), String> {
        let Some(o) = &self.observed else {
            return Ok(());
        };
        if !o.record.is_held_by(&self.config.identity) {
            return Ok(());
        }
        let limit = self
            .config
            .lease_duration
            .saturating_add(max_tolerable_expired);
        if now.saturating_duration_since(o.observed_at) > limit {
            return Err(format!(
                "failed election to renew leadership on lease {}",
                self.config.name
            ));
        }
        Ok(())
    }

    // ---- inputs -------------------------------------------------------------------------

    fn advance(&mut self, now: Now) {
        self.now = self.now.max(now.instant);
        self.wall = now.wall;
    }

    fn handle_result(&mut self, f: InFlight, result: LockResult) {
        match (f.writing.clone(), result) {
            (None, Ok(LockResponse::Record(seen))) => self.handle_read(seen),
            (Some(record), Ok(LockResponse::Written(version))) => {
                self.handle_written(
                    &f,
                    Versioned {
                        version,
                        value: record,
                    },
                );
            }
            (_, Ok(other)) => self.handle_failure(
                &f,
                &LockError::new(
                    LockErrorKind::Other,
                    format!("the lock answered {other:?} to the wrong kind of request"),
                ),
            ),
            (_, Err(e)) => self.handle_failure(&f, &e),
        }
    }

    /// A read succeeded.
    fn handle_read(&mut self, seen: Option<Versioned<LeaderElectionRecord>>) {
        self.observe(seen.clone());
        let now = self.now;
        match (&self.phase, seen) {
            (Phase::Following { .. }, None) => {
                if self.config.coordinated {
                    self.wait_to_follow();
                } else {
                    let record = self.acquire_record(None);
                    self.issue(LockRequest::Create(record));
                }
            }
            (Phase::Following { .. }, Some(current)) => {
                if self.may_acquire(now) {
                    let record = self.acquire_record(Some(&current.value));
                    self.issue(LockRequest::Update {
                        expected: current.version,
                        record,
                    });
                } else {
                    self.wait_to_follow();
                }
            }
            (Phase::Leading { .. }, None) => self.stop_leading(StopReason::LockDeleted),
            (Phase::Leading { .. }, Some(current)) => {
                if !current.value.is_held_by(&self.config.identity) {
                    self.stop_leading(StopReason::LockTaken(current.value.holder));
                } else if let Some(preferred) = self.yield_to(&current.value) {
                    self.stop_leading(StopReason::Yielded(preferred));
                } else {
                    self.slow_path_renewals += 1;
                    let record = self.renew_record(&current.value);
                    self.issue(LockRequest::Update {
                        expected: current.version,
                        record,
                    });
                }
            }
            (Phase::Releasing { .. }, Some(current))
                if current.value.is_held_by(&self.config.identity) =>
            {
                let record = self.release_record(&current.value);
                self.issue(LockRequest::Update {
                    expected: current.version,
                    record,
                });
            }
            // The fresh read does not name us: there is nothing of ours to release, and writing
            // would clobber whoever holds it now.
            (Phase::Releasing { .. }, _) => self.phase = Phase::Finished,
            (Phase::Draining { .. } | Phase::Finished, _) => {}
        }
    }

    /// A write succeeded: the store now holds `lease`.
    fn handle_written(&mut self, f: &InFlight, lease: Versioned<LeaderElectionRecord>) {
        self.observe(Some(lease.clone()));
        let now = self.now;
        let leader_until = f.issued_at + self.config.renew_deadline;
        let next_renew = f.issued_at + self.config.retry_period;
        match &mut self.phase {
            Phase::Following { .. } => {
                if now < leader_until {
                    let token = FencingToken(u64::from(lease.value.leader_transitions));
                    self.phase = Phase::Leading {
                        lease,
                        token,
                        leader_until,
                        next_renew,
                        slow_path: false,
                    };
                    self.emit(Event::StartedLeading {
                        token,
                        leader_until,
                    });
                } else {
                    // The answer came too late to lead on; the lock names us, so the next
                    // attempt renews it at once.
                    self.wait_to_follow();
                }
            }
            Phase::Leading {
                lease: held,
                leader_until: until,
                next_renew: renew,
                slow_path,
                ..
            } => {
                *held = lease;
                *until = (*until).max(leader_until);
                *renew = next_renew;
                *slow_path = false;
                let leader_until = *until;
                self.emit(Event::Renewed { leader_until });
            }
            Phase::Releasing { .. } if lease.value.holder.is_none() => {
                self.emit(Event::Released);
                self.phase = Phase::Finished;
            }
            // A write issued before the shutdown took effect: the lock names us, release it.
            Phase::Releasing { next_attempt, .. } => *next_attempt = now,
            // A write issued before the shutdown; the release reads the lock afresh anyway.
            Phase::Draining { .. } | Phase::Finished => {}
        }
    }

    fn handle_failure(&mut self, f: &InFlight, error: &LockError) {
        let now = self.now;
        let lost_race = error.kind.is_lost_race();
        let retry_at = if lost_race {
            now
        } else {
            (f.issued_at + self.config.retry_period).max(now)
        };
        match &mut self.phase {
            Phase::Following { .. } => {
                if lost_race {
                    self.phase = Phase::Following {
                        next_attempt: now,
                        why: WakeReason::RetryAcquire,
                    };
                    if let Some(o) = &mut self.observed {
                        o.outdated = true;
                    }
                } else {
                    self.wait_to_follow();
                }
            }
            Phase::Leading {
                next_renew,
                slow_path,
                ..
            } => {
                *next_renew = retry_at;
                *slow_path = true;
            }
            Phase::Releasing {
                since,
                next_attempt,
                ..
            } => {
                // An operation from before the release is no release attempt: read at once.
                *next_attempt = if f.issued_at < *since { now } else { retry_at };
            }
            Phase::Draining { .. } | Phase::Finished => {}
        }
    }

    fn handle_observed(&mut self, seen: Option<Versioned<LeaderElectionRecord>>) {
        let now = self.now;
        match &mut self.phase {
            Phase::Leading {
                lease,
                next_renew,
                slow_path,
                ..
            } => {
                // Anything but our own last write may mean someone else wrote (or it is a stale
                // event): verify with a read now rather than trusting it either way.
                if seen.as_ref().map(|s| &s.version) != Some(&lease.version) {
                    *slow_path = true;
                    *next_renew = now;
                }
                self.observe(seen);
            }
            Phase::Following { .. } => {
                self.observe(seen);
                if self.in_flight.is_none() {
                    self.wait_to_follow();
                    if self.may_acquire(now) {
                        self.phase = Phase::Following {
                            next_attempt: now,
                            why: WakeReason::RetryAcquire,
                        };
                    }
                }
            }
            _ => self.observe(seen),
        }
    }

    fn handle_shutdown(&mut self) {
        match &self.phase {
            Phase::Leading { leader_until, .. } => {
                let leader_until = *leader_until;
                self.emit(Event::StoppedLeading {
                    reason: StopReason::Shutdown,
                });
                self.phase = if self.config.release_on_cancel {
                    Phase::Draining { leader_until }
                } else {
                    Phase::Finished
                };
            }
            Phase::Following { .. } => {
                // A follower may hold the lock without knowing it (an acquiring write whose
                // answer was lost): with release configured it reads and releases that too.
                if self.config.release_on_cancel {
                    self.start_release();
                } else {
                    self.phase = Phase::Finished;
                }
            }
            Phase::Draining { .. } | Phase::Releasing { .. } | Phase::Finished => {}
        }
    }

    // ---- decisions ----------------------------------------------------------------------

    /// Fires what is due at `self.now`: the deadline of the operation in flight, the end of
    /// the term, the end of the drain and of the release. Idempotent.
    fn run_timers(&mut self) {
        let now = self.now;
        if self.in_flight.as_ref().is_some_and(|f| now >= f.deadline)
            && let Some(f) = self.in_flight.take()
        {
            let e = LockError::new(
                LockErrorKind::Timeout,
                format!("{} did not answer before its deadline", f.op),
            );
            self.handle_failure(&f, &e);
        }
        match &self.phase {
            Phase::Leading { leader_until, .. } if now >= *leader_until => {
                self.stop_leading(StopReason::RenewDeadlineExceeded);
            }
            // The leader work did not stop within the term: releasing now could hand the lock
            // to someone else while it still runs. Let the lease expire instead.
            Phase::Draining { leader_until } if now >= *leader_until => {
                self.phase = Phase::Finished;
            }
            Phase::Releasing { deadline, .. } if now >= *deadline => self.phase = Phase::Finished,
            _ => {}
        }
    }

    /// Runs the timers, then issues the next operation if one is due and none is in flight.
    /// Called after every input.
    fn drive(&mut self) {
        self.run_timers();
        let now = self.now;
        if self.in_flight.is_some() {
            return;
        }
        match &self.phase {
            Phase::Following { next_attempt, .. } if now >= *next_attempt => self.attempt(),
            Phase::Leading {
                next_renew,
                slow_path,
                lease,
                ..
            } if now >= *next_renew => {
                if *slow_path {
                    self.issue(LockRequest::Get);
                } else {
                    let request = LockRequest::Update {
                        expected: lease.version.clone(),
                        record: self.renew_record(&lease.value),
                    };
                    self.issue(request);
                }
            }
            Phase::Releasing { next_attempt, .. } if now >= *next_attempt => {
                self.issue(LockRequest::Get);
            }
            _ => {}
        }
    }

    /// A follower's attempt: write at once when the last observation shows the lock free
    /// (the CAS fails if it changed since), read otherwise.
    fn attempt(&mut self) {
        let now = self.now;
        match &self.observed {
            Some(o) if !o.outdated && self.may_acquire(now) => {
                let expected = o.version.clone();
                let record = self.acquire_record(Some(&o.record));
                self.issue(LockRequest::Update { expected, record });
            }
            _ => self.issue(LockRequest::Get),
        }
    }

    /// Whether a follower may write the observed record as its own at `now`.
    fn may_acquire(&self, now: Instant) -> bool {
        let Some(o) = &self.observed else {
            return false;
        };
        let me = &self.config.identity;
        let ours = o.record.is_held_by(me);
        let expired = now >= self.expires_at(o);
        if self.config.coordinated {
            // The API server picks the holder; we only renew what names us, until it expires
            // or names someone else as preferred.
            return ours && !expired && self.yield_to(&o.record).is_none();
        }
        if !ours && o.record.leader_transitions >= crate::record::MAX_INT32 {
            // leaderTransitions cannot grow: taking over would repeat a fencing token.
            return false;
        }
        ours || o.record.holder.is_none() || expired
    }

    /// When the observed lease expires for a follower.
    fn expires_at(&self, o: &Observed) -> Instant {
        let lease = match o.record.lease_duration_seconds {
            0 => self.config.lease_duration,
            secs => Duration::from_secs(u64::from(secs)),
        };
        o.observed_at + lease
    }

    /// Coordinated election: the preferred holder to yield to, if any.
    fn yield_to(&self, record: &LeaderElectionRecord) -> Option<Identity> {
        let preferred = record.preferred_holder.as_ref()?;
        (self.config.coordinated && preferred != &self.config.identity).then(|| preferred.clone())
    }

    /// Sets the follower's next attempt: polling, one jittered retry period from now (or at
    /// expiry if sooner); watching a held lock, at expiry.
    fn wait_to_follow(&mut self) {
        let now = self.now;
        let retry = now + self.jittered_retry_period();
        let expiry = self
            .observed
            .as_ref()
            .filter(|o| o.record.holder.is_some() && !o.record.is_held_by(&self.config.identity))
            .map(|o| self.expires_at(o))
            .filter(|&at| at > now);
        let (next_attempt, why) = match (self.config.observation, expiry) {
            (Observation::Watch, Some(at)) => (at, WakeReason::LeaseExpiry),
            (Observation::Poll, Some(at)) if at < retry => (at, WakeReason::LeaseExpiry),
            _ => (retry, WakeReason::RetryAcquire),
        };
        self.phase = Phase::Following { next_attempt, why };
    }

    fn jittered_retry_period(&mut self) -> Duration {
        let rp = self.config.retry_period;
        let u = self.rng.next_f64();
        rp.saturating_add(mul_f64_saturating(rp, self.config.jitter * u))
    }

    fn stop_leading(&mut self, reason: StopReason) {
        self.emit(Event::StoppedLeading { reason });
        match self.config.after_loss {
            AfterLoss::Finish => self.phase = Phase::Finished,
            AfterLoss::Recontend => self.wait_to_follow(),
        }
    }

    fn start_release(&mut self) {
        self.phase = Phase::Releasing {
            since: self.now,
            next_attempt: self.now,
            deadline: self.now + self.config.renew_deadline,
        };
    }

    /// Records what the lock looks like now and reports a change of holder.
    fn observe(&mut self, seen: Option<Versioned<LeaderElectionRecord>>) {
        let now = self.now;
        self.observed = seen.map(|seen| match self.observed.take() {
            Some(o) if o.version == seen.version && o.record == seen.value => Observed {
                outdated: false,
                ..o
            },
            _ => Observed {
                version: seen.version,
                record: seen.value,
                observed_at: now,
                outdated: false,
            },
        });
        let holder = self.leader().cloned();
        if holder != self.reported_leader {
            self.reported_leader.clone_from(&holder);
            self.emit(Event::NewLeader(holder));
        }
    }

    // ---- records ------------------------------------------------------------------------

    fn lease_seconds(&self) -> u32 {
        // Config::validate guarantees a whole number of seconds no larger than an int32.
        u32::try_from(self.config.lease_duration.as_secs()).unwrap_or(crate::record::MAX_INT32)
    }

    /// The record a follower writes to take `current` (or to create the lock).
    fn acquire_record(&self, current: Option<&LeaderElectionRecord>) -> LeaderElectionRecord {
        let me = self.config.identity.clone();
        match current {
            Some(current) if current.is_held_by(&me) => self.renew_record(current),
            Some(current) => LeaderElectionRecord {
                holder: Some(me),
                lease_duration_seconds: self.lease_seconds(),
                acquire_time: Some(self.wall),
                renew_time: Some(self.wall),
                leader_transitions: current.leader_transitions.saturating_add(1),
                strategy: current.strategy.clone(),
                preferred_holder: current.preferred_holder.clone(),
            },
            None => LeaderElectionRecord {
                holder: Some(me),
                lease_duration_seconds: self.lease_seconds(),
                acquire_time: Some(self.wall),
                renew_time: Some(self.wall),
                ..Default::default()
            },
        }
    }

    /// `current` renewed: our holder and duration, a fresh renew time, everything else kept.
    fn renew_record(&self, current: &LeaderElectionRecord) -> LeaderElectionRecord {
        LeaderElectionRecord {
            holder: Some(self.config.identity.clone()),
            lease_duration_seconds: self.lease_seconds(),
            renew_time: Some(self.wall),
            acquire_time: current.acquire_time.or(Some(self.wall)),
            ..current.clone()
        }
    }

    /// client-go's release record: no holder, a 1 s lease, times stamped, transitions kept.
    fn release_record(&self, current: &LeaderElectionRecord) -> LeaderElectionRecord {
        LeaderElectionRecord {
            holder: None,
            lease_duration_seconds: 1,
            acquire_time: Some(self.wall),
            renew_time: Some(self.wall),
            leader_transitions: current.leader_transitions,
            strategy: String::new(),
            preferred_holder: None,
        }
    }

    // ---- output -------------------------------------------------------------------------

    fn issue(&mut self, request: LockRequest) {
        debug_assert!(self.in_flight.is_none(), "one operation in flight at most");
        let now = self.now;
        let bound = match &self.phase {
            Phase::Leading { leader_until, .. } => *leader_until,
            Phase::Releasing { deadline, .. } => *deadline,
            _ => Instant::MAX,
        };
        let op = OpId(self.next_op);
        self.next_op += 1;
        let deadline = (now + self.config.operation_timeout()).min(bound);
        let writing = match &request {
            LockRequest::Get => None,
            LockRequest::Create(r) | LockRequest::Update { record: r, .. } => Some(r.clone()),
        };
        self.in_flight = Some(InFlight {
            op,
            issued_at: now,
            deadline,
            writing,
        });
        self.actions.push_back(Action::Lock {
            op,
            request,
            deadline,
        });
    }

    fn emit(&mut self, event: Event) {
        self.actions.push_back(Action::Emit(event));
    }

    fn next_wake(&self) -> Option<(Instant, WakeReason)> {
        let op = self
            .in_flight
            .as_ref()
            .map(|f| (f.deadline, WakeReason::OperationDeadline));
        let idle = self.in_flight.is_none();
        let phase = match &self.phase {
            Phase::Following { next_attempt, why } => idle.then_some((*next_attempt, *why)),
            Phase::Leading {
                leader_until,
                next_renew,
                ..
            } => Some(if idle && next_renew < leader_until {
                (*next_renew, WakeReason::Renew)
            } else {
                (*leader_until, WakeReason::LeaderUntil)
            }),
            Phase::Draining { leader_until } => {
                Some((*leader_until, WakeReason::LeaderWorkDeadline))
            }
            Phase::Releasing {
                next_attempt,
                deadline,
                ..
            } => Some(if idle && next_attempt < deadline {
                (*next_attempt, WakeReason::RetryRelease)
            } else {
                (*deadline, WakeReason::ReleaseDeadline)
            }),
            Phase::Finished => return None,
        };
        [op, phase].into_iter().flatten().min_by_key(|(at, _)| *at)
    }
}
