//! The pure, deterministic elector.
//!
//! All of leasehold's timing model lives in this module; drivers only carry out its
//! [`Action`]s. The model, in one place:
//!
//! * **Observation.** The elector keeps the last record it saw, its version, and `observed_at`:
//!   the local instant the read (or watch event) that first showed this *record* was received.
//!   A new version with the same record (someone changed labels, other annotations, an
//!   Endpoints object's subsets) is no sign of life: failover follows the record, as in
//!   client-go. This is safe because every write of the elector changes the record (see
//!   *Writes*). Record timestamps are never used for decisions, only their change.
//! * **Writes.** Every record the elector writes differs from the one it replaces at the lock's
//!   time precision ([`Config::time_precision`](crate::Config#structfield.time_precision)):
//!   times are truncated to it, a renewal's `renewTime` strictly increases, takeovers and
//!   creations raise `leaderTransitions` above any value seen or written, releases drop the
//!   holder. So no write can be an API
//!   server no-op, and no renewal can look unchanged. A write answered with the version it was
//!   conditional on changed nothing: it counts as a failure and anchors nothing.
//! * **Expiry.** For a follower the lock is free when it names no holder, or at
//!   `observed_at + lease`, where `lease` is the record's `leaseDurationSeconds` (the holder's
//!   own setting, as client-go since 1.27) or, when the record says 0, this elector's
//!   `lease_duration` (a held lock with no duration is bad input; waiting our own lease is the
//!   conservative reading, client-go would take it at once).
//! * **Absence.** A lock found absent after it was seen present counts as held until one lease
//!   duration (the larger of the last record's and ours) after the absence was first seen:
//!   a leader whose last write preceded the deletion stops within its renew deadline of it.
//!   A recreated lock continues `leaderTransitions` from the last record seen. An elector that
//!   never saw the lock present creates it at once.
//! * **Acquire.** A follower reads the lock; creates it when absent; CAS-updates it when free,
//!   incrementing `leaderTransitions` only when the holder changes. When its last observation
//!   already shows the lock free it writes directly with the observed version, without a read:
//!   the compare-and-swap fails if anything changed since. Attempts start every
//!   `retry_period * (1 + jitter * u)` after the previous one started; a follower also wakes
//!   exactly at expiry, and an observation that shows the lock free starts an attempt at once.
//! * **Records naming this candidate.** Only a record this elector wrote (one of its latest
//!   writes, up to the fields the election controller writes) is its own to renew or release.
//!   A record naming it that it did not write (an earlier incarnation's, after a restart; an
//!   administrator's edit; a second candidate given the same identity) is another holder's:
//!   the elector waits for it to expire and takes it with `leaderTransitions + 1`, so a new
//!   process never starts a term while its predecessor's work may still run, and fencing
//!   tokens always rise. In coordinated election a record handed to it by the controller (seen
//!   naming another holder, or absent, before) is taken up at once. A read that shows a
//!   renewal under its identity that it did not write, replacing a record of its identity that
//!   had not expired, raises [`Alert::IdentityClash`] and ends a term.
//! * **Pace.** An operation is brought forward of its schedule at most once per
//!   `retry_period` for each of two causes: a lost race (conflict, already exists, not found
//!   on an update; one immediate retry; a create answered not found is a missing namespace,
//!   not a race), and news (an
//!   observation or an expiry that shows the lock free or changed). Otherwise it waits for the
//!   schedule. Observations never postpone an attempt. An attempt is at most a read and a
//!   write, so an elector issues at most [`MAX_OPS_PER_RETRY_PERIOD`] operations in any
//!   `retry_period`, whatever the lock answers.
//! * **Leadership.** A term is anchored at the instant the last *successful* write was
//!   *issued*: `leader_until = issued_at + renew_deadline`. At `leader_until` the elector emits
//!   [`Event::StoppedLeading`] even if a renewal is in flight; every operation of a leader has a
//!   deadline no later than `leader_until`, so that renewal is then abandoned too.
//! * **Renew.** Every `retry_period` after the last successful write was issued (and not before
//!   the wall clock has passed its `renewTime` at the lock's precision, so a coarse lock is
//!   renewed once per precision step), the leader CAS-updates its own last write (the fast
//!   path: no read). After a failure it reads first (the slow path) and retries every
//!   `retry_period` until `leader_until`. A read that shows another holder, or no lock, ends
//!   the term at once.
//! * **Leader work.** After every [`Event::StoppedLeading`] the elector waits for
//!   [`Input::LeaderWorkStopped`] before it starts another term or releases: one process never
//!   runs two terms' work at once, and a release never lets a successor start while this
//!   term's work still runs.
//! * **Release.** On [`Input::Shutdown`] a leader first stops leading, then waits for
//!   [`Input::LeaderWorkStopped`] (until `leader_until` at the latest, else it gives the release
//!   up), then reads the lock and writes client-go's release record only if the fresh read
//!   still names it, retrying on conflict until `renew_deadline` has passed.

mod io;
pub(crate) mod rng;
mod view;

pub use io::{
    Action, Alert, Event, FencingToken, Input, Now, OpId, Role, StopReason, Unhealthy, WakeReason,
};

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::{AfterLoss, Config, ConfigError, Observation, mul_f64_saturating};
use crate::lock::{LockError, LockErrorKind, LockRequest, LockResponse, LockResult};
use crate::record::{Identity, LeaderElectionRecord, MAX_INT32, Version, Versioned};
use crate::time::{Instant, Timestamp};
use rng::Rng;
use view::{Observed, Origin, View};

/// The most lock operations an elector issues in any interval of one `retry_period` on its
/// own clock, whatever the lock answers and whatever it observes: a scheduled attempt, an
/// immediate retry after a lost race and an early attempt on news (each a read and a write),
/// the write of an attempt begun before the interval, and the read and write of a release.
/// The simulator checks it in every run, the elector tests under persistent faults.
pub const MAX_OPS_PER_RETRY_PERIOD: usize = 9;

/// How many renewals [`Elector::write_soon`] may bring forward in one retry period (crate
/// private: only shard members use it, and their budget counts these on top of
/// [`MAX_OPS_PER_RETRY_PERIOD`]).
pub(crate) const HURRIED_WRITES_PER_RETRY_PERIOD: usize = 3;

/// How many of its latest writes an elector remembers, to recognise its own records when it
/// reads them back (a record naming it that is none of these was written by someone else).
const OWN_WRITES: usize = 16;

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
/// * [`Action::Emit`]: tell the application. After every [`Event::StoppedLeading`], whatever
///   its reason, feed [`Input::LeaderWorkStopped`] once the guarded work has stopped: until
///   then the elector neither starts another term nor releases the lock.
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
    /// What the lock looked like when last seen.
    view: View,
    /// A write conditional on the view lost a race: the store has moved on, so read before
    /// writing again.
    view_outdated: bool,
    /// The watch failed or ended (`Input::WatchBroken`) and has delivered nothing since: a
    /// watching follower polls meanwhile.
    watch_broken: bool,
    /// The highest `leaderTransitions` seen on the lock or written to it (a stale watch event
    /// may show a lower one after a higher; a write whose answer was lost may have landed): a
    /// recreated lock continues from it, so fencing tokens keep rising.
    transitions_seen: Option<u32>,
    /// The leader work of the last term. INVARIANT: unless idle, no new term starts and no
    /// release is written.
    work: Work,
    /// What follows a release: the end (a shutdown), or contending again (a coordinated
    /// hand-over in re-contend mode).
    after_release: AfterLoss,
    /// When an operation was last brought forward of its schedule, for each cause.
    /// INVARIANT: at most once per `retry_period` for each.
    hurried_at: [Option<Instant>; 2],
    /// When the last renewals asked for by [`Elector::write_soon`] were brought forward.
    /// INVARIANT: at most [`HURRIED_WRITES_PER_RETRY_PERIOD`], all within the last
    /// `retry_period`.
    hurried_writes: VecDeque<Instant>,
    /// The last instant the lock answered (a success, a lost race, or an observation): how
    /// long the elector has been cut off, for [`Elector::check`].
    last_contact: Instant,
    /// The last failure and how many failures in a row led to it; cleared by any contact, but
    /// a write refused (not a timeout or an overload) only by a write that gets through: reads
    /// that answer between refused writes (a missing namespace: absent, then 404 on create;
    /// 403 on update) must not hide the refusal.
    last_failure: Option<(LockError, u64)>,
    /// `last_failure` is a refused write.
    failure_is_refused_write: bool,
    /// The holder last reported with [`Event::NewLeader`].
    reported_leader: Option<Identity>,
    /// The records this elector wrote (issued) most recently, oldest first: a record naming
    /// this candidate is its own only if it is one of these. INVARIANT: at most [`OWN_WRITES`].
    own_writes: VecDeque<LeaderElectionRecord>,
    /// The record the last read (or successful write) showed, and when one first showed it: a
    /// renewal by someone else under our identity is judged against it. Reads only: a watch
    /// event may lag behind a read, and a stale event must not look like a renewal.
    last_read: Option<(LeaderElectionRecord, Instant)>,
    /// The alert in force, and when it was last seen.
    alert: Option<(Alert, Instant)>,
    next_op: u64,
    slow_path_renewals: u64,
    actions: VecDeque<Action>,
}

#[derive(Debug, Clone)]
enum Phase {
    /// Contending (see [`Follow`]).
    Following(Follow),
    /// Leading until `leader_until`, on the strength of the write `lease`.
    Leading {
        /// Our last successful write: what the fast path compares against.
        lease: Versioned<LeaderElectionRecord>,
        token: FencingToken,
        leader_until: Instant,
        next_renew: Instant,
        /// The earliest instant a renewal can move `renewTime` on at the lock's precision
        /// (see [`Write::renew_pause`]): a hurried renewal ([`Elector::write_soon`]) waits for it.
        renewable_from: Instant,
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

/// A follower's schedule. The next attempt starts at `next_poll`; news that the lock may be
/// free brings it forward (see [`Elector::follower_due`]); nothing postpones it.
#[derive(Debug, Clone)]
struct Follow {
    next_poll: Instant,
    /// When the last attempt started.
    attempted_at: Option<Instant>,
    /// Since the last attempt started, an observation arrived: if the lock now looks free,
    /// try at once rather than at `next_poll`.
    news: bool,
    /// The last attempt lost a race: retry at once.
    raced: bool,
    /// The store asked to wait until then (`Retry-After`): no attempt before, early or not.
    not_before: Instant,
}

/// The leader work, as the elector knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// None runs.
    Idle,
    /// A term started it.
    Running,
    /// The term ended ([`Event::StoppedLeading`]); the driver has not yet reported it stopped.
    Stopping,
}

/// Why an operation is brought forward of its schedule. Each cause may do so once per
/// `retry_period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Early {
    /// A lost race (conflict, already exists, not found): one immediate retry.
    LostRace = 0,
    /// An observation, or an expiry, says the lock may be free or may have changed.
    News = 1,
}

impl Follow {
    fn at(next_poll: Instant) -> Self {
        Follow {
            next_poll,
            attempted_at: None,
            news: false,
            raced: false,
            not_before: Instant::ZERO,
        }
    }
}

#[derive(Debug, Clone)]
struct InFlight {
    op: OpId,
    issued_at: Instant,
    deadline: Instant,
    /// `None` for a read.
    write: Option<Write>,
}

impl InFlight {
    /// Whether `error` means someone else changed the lock first (see
    /// [`LockErrorKind::is_lost_race_on`]).
    fn lost_race(&self, error: &LockError) -> bool {
        let create = self.write.as_ref().is_some_and(|w| w.expected.is_none());
        error.kind.is_lost_race_on(create)
    }
}

#[derive(Debug, Clone)]
struct Write {
    record: LeaderElectionRecord,
    /// The version an update is conditional on (`None` for a create).
    expected: Option<Version>,
    /// How long after issuing this write the wall clock passes its `renewTime` at the lock's
    /// precision: the next renewal waits at least that long, so that its `renewTime` can
    /// move on without running ahead of the wall clock.
    renew_pause: Duration,
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
            phase: Phase::Following(Follow::at(now.instant)),
            in_flight: None,
            view: View::Unread,
            view_outdated: false,
            watch_broken: false,
            transitions_seen: None,
            last_contact: now.instant,
            last_failure: None,
            failure_is_refused_write: false,
            work: Work::Idle,
            after_release: AfterLoss::Finish,
            hurried_at: [None; 2],
            hurried_writes: VecDeque::new(),
            reported_leader: None,
            own_writes: VecDeque::with_capacity(OWN_WRITES),
            last_read: None,
            alert: None,
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
                Some(f) if f.op == op => {
                    self.note_answer(&f, &result);
                    self.handle_result(f, result);
                }
                other => self.in_flight = other,
            },
            Input::Observed { record, .. } => {
                self.watch_broken = false;
                self.note_contact(false);
                self.handle_observed(record);
            }
            Input::WatchBroken(_) => self.watch_broken = true,
            // Only an acknowledgement of a stop counts: a stale or duplicate report during a
            // term must not disarm the wait for that term's work.
            Input::LeaderWorkStopped(_) if self.work == Work::Stopping => {
                self.work = Work::Idle;
                if matches!(self.phase, Phase::Draining { .. }) {
                    self.start_release();
                }
            }
            Input::LeaderWorkStopped(_) => {}
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
        self.view.present()?.record.holder.as_ref()
    }

    /// Whether the lock has been seen at all (present or absent), by a read or an observation.
    pub fn lock_seen(&self) -> bool {
        !matches!(self.view, View::Unread)
    }

    /// The last observed record and its version (`None` when the lock was last seen absent,
    /// or never).
    pub fn observed_record(&self) -> Option<(&Version, &LeaderElectionRecord)> {
        self.view.present().map(|o| (&o.version, &o.record))
    }

    /// The role, for state reports.
    pub fn role(&self) -> Role {
        match self.phase {
            Phase::Following(_) => Role::Follower,
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

    /// The last failed lock operation and how many failed in a row, until the lock answers
    /// again (a lost race counts as an answer: someone else wrote first). A refused write
    /// (forbidden, a missing namespace, an invalid object) stays until a write gets through,
    /// even while reads answer.
    pub fn last_error(&self) -> Option<(&LockError, u64)> {
        self.last_failure.as_ref().map(|(e, n)| (e, *n))
    }

    /// The alert in force at `now`, if any: one seen within the last lease duration.
    pub fn alert(&self, now: Instant) -> Option<&Alert> {
        self.alert
            .as_ref()
            .filter(|(_, seen)| now < *seen + self.config.lease_duration)
            .map(|(alert, _)| alert)
    }

    /// client-go's healthz `Check`, for a liveness probe: an error when the last observed
    /// record names this candidate and has not changed for longer than `lease_duration +
    /// max_tolerable_expired` (a leader that cannot renew, or a driver that is stuck), or when
    /// an [`Alert`] is in force. A candidate cut off from the lock is *not* unhealthy here:
    /// restarting a whole fleet during a control-plane outage helps nobody (see
    /// [`Elector::check_ready`]). client-go's usual tolerance is 20 s.
    ///
    /// # Errors
    /// [`Unhealthy::RenewalOverdue`] or [`Unhealthy::Alert`].
    pub fn check(&self, now: Instant, max_tolerable_expired: Duration) -> Result<(), Unhealthy> {
        if matches!(self.phase, Phase::Finished) {
            return Ok(());
        }
        if let Some(alert) = self.alert(now) {
            return Err(Unhealthy::Alert(alert.clone()));
        }
        let limit = self
            .config
            .lease_duration
            .saturating_add(max_tolerable_expired);
        let overdue = self.view.present().is_some_and(|o| {
            o.record.is_held_by(&self.config.identity)
                && now.saturating_duration_since(o.observed_at) > limit
        });
        if overdue {
            return Err(Unhealthy::RenewalOverdue {
                lock: self.config.name.clone(),
            });
        }
        Ok(())
    }

    /// The stricter check, for a readiness probe: [`Elector::check`], and also an error once
    /// the elector has finished, or when the lock has not answered at all for longer than
    /// `lease_duration + max_tolerable_expired` (a candidate that cannot even read it, which
    /// client-go reports healthy).
    ///
    /// # Errors
    /// What [`Elector::check`] reports, [`Unhealthy::Finished`], or [`Unhealthy::NoAnswer`]
    /// with the last error.
    pub fn check_ready(
        &self,
        now: Instant,
        max_tolerable_expired: Duration,
    ) -> Result<(), Unhealthy> {
        if matches!(self.phase, Phase::Finished) {
            return Err(Unhealthy::Finished);
        }
        self.check(now, max_tolerable_expired)?;
        let limit = self
            .config
            .lease_duration
            .saturating_add(max_tolerable_expired);
        let silent = now.saturating_duration_since(self.last_contact);
        if silent > limit {
            return Err(Unhealthy::NoAnswer {
                lock: self.config.name.clone(),
                silent,
                last_error: self.last_failure.clone(),
            });
        }
        Ok(())
    }

    // ---- inputs -------------------------------------------------------------------------

    fn advance(&mut self, now: Now) {
        self.now = self.now.max(now.instant);
        self.wall = now.wall;
    }

    /// Keeps track of whether the lock answers, for [`Elector::check`] and
    /// [`Elector::last_error`].
    fn note_answer(&mut self, f: &InFlight, result: &LockResult) {
        match result {
            Err(e) if !f.lost_race(e) => {
                let n = self.last_failure.as_ref().map_or(0, |(_, n)| *n);
                self.last_failure = Some((e.clone(), n + 1));
                self.failure_is_refused_write = f.write.is_some()
                    && !matches!(e.kind, LockErrorKind::Timeout | LockErrorKind::Unavailable);
            }
            // A lost race on a write means the write was allowed.
            _ => self.note_contact(f.write.is_some()),
        }
    }

    /// The lock answered (`by_write`: a write got through, or lost a race).
    fn note_contact(&mut self, by_write: bool) {
        self.last_contact = self.now;
        if by_write || !self.failure_is_refused_write {
            self.last_failure = None;
            self.failure_is_refused_write = false;
        }
    }

    fn handle_result(&mut self, f: InFlight, result: LockResult) {
        match (&f.write, result) {
            (None, Ok(LockResponse::Record(seen))) => self.handle_read(seen),
            (Some(w), Ok(LockResponse::Written(version))) => {
                if w.expected.as_ref() == Some(&version) {
                    // The API server answers an update that changes nothing with the unchanged
                    // version: nobody saw a change, so it must not extend anything.
                    let e = LockError::new(
                        LockErrorKind::Other,
                        format!(
                            "the lock answered {version}, the version the write was conditional on: it wrote nothing"
                        ),
                    );
                    self.handle_failure(&f, &e);
                } else {
                    let lease = Versioned {
                        version,
                        value: w.record.clone(),
                    };
                    self.handle_written(&f, lease);
                }
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
        let clash = seen.as_ref().is_some_and(|s| self.is_clash(&s.value));
        self.last_read = match (&seen, self.last_read.take()) {
            (Some(s), Some((before, since))) if before == s.value => Some((before, since)),
            (Some(s), _) => Some((s.value.clone(), self.now)),
            (None, _) => None,
        };
        self.observe(seen.clone());
        let now = self.now;
        if clash {
            self.raise(Alert::IdentityClash(self.config.identity.clone()));
        }
        match (&self.phase, seen) {
            // Part of an attempt: write now if the lock is free, else wait.
            (Phase::Following(_), _) => {
                if self.work == Work::Idle && self.may_acquire(now) {
                    self.acquire();
                } else if self.transitions_exhausted(now) {
                    self.raise(Alert::TransitionsExhausted);
                }
            }
            (Phase::Leading { .. }, None) => self.stop_leading(StopReason::LockDeleted),
            (Phase::Leading { .. }, Some(current)) => {
                if !current.value.is_held_by(&self.config.identity) {
                    self.stop_leading(StopReason::LockTaken(current.value.holder));
                } else if clash {
                    self.stop_leading(StopReason::IdentityClash);
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
            // Only our own record: a record naming us that someone else wrote (an earlier
            // incarnation, a candidate with the same identity) is not ours to release. One
            // the election controller handed us is (even one handed to us as we were leaving,
            // from the controller's outdated view of the candidates): no term of ours or of
            // anyone else's runs on it, and releasing it lets the controller pick another
            // candidate at once instead of after its lease expires.
            (Phase::Releasing { .. }, Some(current))
                if current.value.is_held_by(&self.config.identity)
                    && (self.wrote(&current.value)
                        || self.view.present().is_some_and(|o| self.ours(o))) =>
            {
                let record = self.release_record(&current.value);
                self.issue(LockRequest::Update {
                    expected: current.version,
                    record,
                });
            }
            // The fresh read does not name us: there is nothing of ours to release, and writing
            // would clobber whoever holds it now.
            (Phase::Releasing { .. }, _) => self.end_release(),
            (Phase::Draining { .. } | Phase::Finished, _) => {}
        }
    }

    /// A write succeeded: the store now holds `lease`.
    fn handle_written(&mut self, f: &InFlight, lease: Versioned<LeaderElectionRecord>) {
        // A successful write is as good as a read of what it wrote.
        self.last_read = Some((lease.value.clone(), self.now));
        self.observe(Some(lease.clone()));
        let now = self.now;
        let leader_until = f.issued_at + self.config.renew_deadline;
        let pause = f
            .write
            .as_ref()
            .map_or(Duration::ZERO, |w| w.renew_pause)
            .max(self.config.retry_period);
        let next_renew = f.issued_at + pause;
        let renewable_from =
            f.issued_at + f.write.as_ref().map_or(Duration::ZERO, |w| w.renew_pause);
        match &mut self.phase {
            Phase::Following(_) => {
                // INVARIANT: a follower writes only while no term's work runs (see `drive`).
                // A write that names no holder handed the lock back: no term.
                if now < leader_until
                    && self.work == Work::Idle
                    && lease.value.is_held_by(&self.config.identity)
                {
                    let token = FencingToken(u64::from(lease.value.leader_transitions));
                    self.phase = Phase::Leading {
                        lease,
                        token,
                        leader_until,
                        next_renew,
                        renewable_from,
                        slow_path: false,
                    };
                    self.work = Work::Running;
                    self.emit(Event::StartedLeading {
                        token,
                        leader_until,
                    });
                }
                // Otherwise the answer came too late to lead on (if the write named us, the next
                // attempt renews it), or it handed the lock back.
            }
            Phase::Leading {
                lease: held,
                leader_until: until,
                next_renew: renew,
                renewable_from: renewable,
                slow_path,
                ..
            } => {
                *held = lease;
                *until = (*until).max(leader_until);
                *renew = next_renew;
                *renewable = renewable_from;
                *slow_path = false;
                let leader_until = *until;
                self.emit(Event::Renewed { leader_until });
            }
            Phase::Releasing { .. } if lease.value.holder.is_none() => {
                self.emit(Event::Released);
                self.end_release();
            }
            // A write issued before the shutdown took effect: the lock names us, release it.
            Phase::Releasing { next_attempt, .. } => *next_attempt = now,
            // A write issued before the shutdown; the release reads the lock afresh anyway.
            Phase::Draining { .. } | Phase::Finished => {}
        }
    }

    fn handle_failure(&mut self, f: &InFlight, error: &LockError) {
        let now = self.now;
        let lost_race = f.lost_race(error);
        // After a lost race the store has moved on; after any other failed write it may have
        // applied it. Either way, read before writing again.
        if lost_race || f.write.is_some() {
            self.view_outdated = true;
        }
        // A retry waits a retry period from the failed attempt; a lost race may be retried at
        // once, but only as often as `hurry` allows.
        let scheduled = (f.issued_at + self.config.retry_period).max(now);
        // The store asked for a pause: honour it, but a leader (or a release) still retries
        // while one operation can finish before its term (or the release) ends: a retry after
        // that would be moot, one before it may still save them.
        // A follower waits at most a lease duration, whatever the store says.
        let asked = error
            .retry_after
            .map(|d| now + d.min(self.config.lease_duration));
        let op = self.config.operation_timeout();
        let bound = match &self.phase {
            Phase::Leading { leader_until, .. } => leader_until.saturating_sub(op),
            Phase::Releasing { deadline, .. } => deadline.saturating_sub(op),
            _ => Instant::MAX,
        };
        let scheduled = scheduled.max(asked.map_or(scheduled, |at| at.min(bound)));
        let following = matches!(self.phase, Phase::Following(_));
        let retry_at = if lost_race && !following && asked.is_none() {
            self.hurry(scheduled, Early::LostRace)
        } else {
            scheduled
        };
        match &mut self.phase {
            // The attempt's schedule was set when it started; after a lost race `follower_due`
            // brings the next one forward if the pace allows. A pause the store asked for
            // postpones it, and cancels any early attempt.
            Phase::Following(follow) => {
                if let Some(at) = asked {
                    follow.next_poll = follow.next_poll.max(at);
                    follow.not_before = at;
                    follow.raced = false;
                    follow.news = false;
                } else {
                    follow.raced |= lost_race;
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
        if let Phase::Following(follow) = &mut self.phase {
            follow.news = true;
        }
        // A record of our name that we did not write replacing another of our name: perhaps
        // someone renewing under our identity. Only a read can tell (a watch may lag behind),
        // and a watching follower would otherwise not read before the lease expired.
        let me = &self.config.identity;
        let suspect = matches!(self.phase, Phase::Following(_))
            && seen.as_ref().is_some_and(|s| {
                s.value.is_held_by(me)
                    && !self.wrote(&s.value)
                    && self.view.present().is_some_and(|o| {
                        o.record.is_held_by(me) && !same_renewal(&o.record, &s.value)
                    })
            });
        if seen.is_none() && self.view.present().is_some() {
            // A watch event saying "absent" may be stale, and an absence starts a lease-long
            // wait from the moment it is first seen: only a read dates it. Read soon.
            self.view_outdated = true;
            if let Phase::Leading { next_renew, .. } = &self.phase {
                let at = self.hurry(*next_renew, Early::News);
                if let Phase::Leading {
                    next_renew,
                    slow_path,
                    ..
                } = &mut self.phase
                {
                    *next_renew = at;
                    *slow_path = true;
                }
            }
            return;
        }
        if let Phase::Leading { lease, .. } = &mut self.phase {
            match &seen {
                Some(s) if s.version == lease.version => {}
                // Our own record under a new version: someone changed only other parts of the
                // object. Renew on that version; the compare-and-swap still guards it.
                Some(s) if s.value == lease.value => lease.version = s.version.clone(),
                // Anything else may mean someone else wrote (or it is a stale event): verify
                // with a read rather than trusting it either way, as soon as the pace allows.
                _ => {
                    let scheduled = match &self.phase {
                        Phase::Leading { next_renew, .. } => *next_renew,
                        _ => self.now,
                    };
                    let at = self.hurry(scheduled, Early::News);
                    if let Phase::Leading {
                        next_renew,
                        slow_path,
                        ..
                    } = &mut self.phase
                    {
                        *next_renew = at;
                        *slow_path = true;
                    }
                }
            }
        }
        self.observe(seen);
        if suspect {
            self.view_outdated = true;
        }
    }

    fn handle_shutdown(&mut self) {
        // Whatever release follows, the elector finishes after it.
        self.after_release = AfterLoss::Finish;
        match &self.phase {
            Phase::Leading { leader_until, .. } => {
                let leader_until = *leader_until;
                self.work = Work::Stopping;
                self.emit(Event::StoppedLeading {
                    reason: StopReason::Shutdown,
                });
                self.phase = if self.config.release_on_cancel {
                    Phase::Draining { leader_until }
                } else {
                    Phase::Finished
                };
            }
            Phase::Following(_) => {
                // A follower may hold the lock without knowing it (an acquiring write whose
                // answer was lost): with release configured it reads and releases that too.
                // Not while an earlier term's work still runs: that term has ended, and a
                // release could start a successor alongside it. The lease expires instead.
                if self.config.release_on_cancel && self.work == Work::Idle {
                    self.start_release();
                } else {
                    self.phase = Phase::Finished;
                }
            }
            // A shutdown during a coordinated hand-over: it finishes once that is done.
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
            self.note_answer(&f, &Err(e.clone()));
            self.handle_failure(&f, &e);
        }
        match &self.phase {
            Phase::Leading { leader_until, .. } if now >= *leader_until => {
                self.stop_leading(StopReason::RenewDeadlineExceeded);
            }
            // The leader work did not stop within the term: releasing now could hand the lock
            // to someone else while it still runs. Let the lease expire instead.
            Phase::Draining { leader_until } if now >= *leader_until => self.end_release(),
            Phase::Releasing { deadline, .. } if now >= *deadline => self.end_release(),
            _ => {}
        }
    }

    /// Runs the timers, then issues the next operation if one is due and none is in flight.
    /// Called after every input.
    fn drive(&mut self) {
        self.run_timers();
        let now = self.now;
        // At the end of time (some 584 years of uptime) an operation's deadline would equal its
        // issue instant and every input would time it out: issue nothing rather than spin.
        if self.in_flight.is_some() || now + self.config.operation_timeout() == Instant::MAX {
            return;
        }
        match &self.phase {
            Phase::Following(follow) => {
                if let Some((at, _, early)) = self.follower_due(follow)
                    && now >= at
                {
                    if let Some(why) = early {
                        self.hurried_at[why as usize] = Some(now);
                    }
                    self.attempt();
                }
            }
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

    /// When a follower's next attempt is due, why, and (when early) on which budget: at the
    /// schedule `next_poll`, or at once when the lock looks free (or the view is outdated)
    /// and that is news since the last attempt (a lost race, an observation, an expiry) and
    /// the pace allows an early attempt; while the lock is held by another, when its lease
    /// expires if that comes first (always, when watching). `None` while the last term's work
    /// still runs.
    fn follower_due(&self, follow: &Follow) -> Option<(Instant, WakeReason, Option<Early>)> {
        if self.work != Work::Idle {
            return None;
        }
        let now = self.now;
        let next_poll = follow.next_poll;
        let expiry = self.expiry();
        if self.may_acquire(now) || (self.view_outdated && (follow.news || follow.raced)) {
            let freed_since_attempt =
                expiry.is_some_and(|at| follow.attempted_at.is_none_or(|attempted| at > attempted));
            let early = if now >= next_poll {
                None
            } else if follow.raced && self.may_hurry(Early::LostRace) {
                Some(Early::LostRace)
            } else if (follow.news || freed_since_attempt) && self.may_hurry(Early::News) {
                Some(Early::News)
            } else {
                return Some((next_poll, WakeReason::RetryAcquire, None));
            };
            if now < follow.not_before {
                return Some((follow.not_before, WakeReason::RetryAcquire, None));
            }
            return Some((now.min(next_poll), WakeReason::RetryAcquire, early));
        }
        let expiry = expiry.filter(|&at| at > now);
        let observation = if self.watch_broken {
            Observation::Poll
        } else {
            self.config.observation
        };
        Some(match (observation, expiry) {
            (Observation::Watch, Some(at)) => (at, WakeReason::LeaseExpiry, None),
            (Observation::Poll, Some(at)) if at < next_poll => (at, WakeReason::LeaseExpiry, None),
            _ => (next_poll, WakeReason::RetryAcquire, None),
        })
    }

    /// When the lock held by another, or absent after it was seen, becomes free by time.
    fn expiry(&self) -> Option<Instant> {
        match &self.view {
            View::Present(o) if o.record.holder.is_some() && !self.ours(o) => {
                Some(self.expires_at(o))
            }
            View::Absent(a) => a.held_until,
            _ => None,
        }
    }

    /// A follower's attempt: the next one is scheduled a jittered retry period from now. Write
    /// at once when the last observation shows the lock free (the compare-and-swap fails if it
    /// changed since), read otherwise.
    fn attempt(&mut self) {
        let now = self.now;
        let next_poll = now + self.jittered_retry_period();
        self.phase = Phase::Following(Follow {
            next_poll,
            attempted_at: Some(now),
            news: false,
            raced: false,
            not_before: Instant::ZERO,
        });
        if self.may_acquire(now) && !self.view_outdated {
            self.acquire();
        } else {
            self.issue(LockRequest::Get);
        }
    }

    /// Writes the lock as ours, as the view shows it (the caller checked `may_acquire`).
    fn acquire(&mut self) {
        match &self.view {
            // Coordinated election: a lock handed to us while the controller already prefers
            // another candidate is handed back at once (no term runs on it, ours or anyone
            // else's), so that the controller names the preferred one without waiting for this
            // lease to run out.
            View::Present(o) if self.hands_back(o, self.now) => {
                let expected = o.version.clone();
                let record = self.release_record(&o.record);
                self.issue(LockRequest::Update { expected, record });
            }
            // Every term gets a token of its own: even a record this elector wrote (an earlier
            // term of its own, a write whose answer was lost) is taken with a higher one.
            View::Present(o) => {
                let expected = o.version.clone();
                let record = self.takeover_record(&o.record);
                self.issue(LockRequest::Update { expected, record });
            }
            View::Absent(_) => {
                let record = self.create_record();
                self.issue(LockRequest::Create(record));
            }
            View::Unread => self.issue(LockRequest::Get),
        }
    }

    /// Coordinated election: whether a follower hands `o` back to the controller (see
    /// `acquire`) at `now`: it names us, the controller prefers another candidate, and no term
    /// can run on it (it is ours to renew, or it has expired). So no term ever starts on a
    /// record that asks its holder to yield (fast-path renewals would never notice).
    /// A record of our own (an earlier term's) is handed back only with release configured,
    /// as a release would be.
    fn hands_back(&self, o: &Observed, now: Instant) -> bool {
        o.record.is_held_by(&self.config.identity)
            && self.yield_to(&o.record).is_some()
            && match o.origin {
                Origin::Handed => true,
                Origin::Ours => self.config.release_on_cancel,
                Origin::Foreign => now >= self.expires_at(o),
            }
    }

    /// Whether a follower may write the lock (as its own, or handing it back) at `now`.
    fn may_acquire(&self, now: Instant) -> bool {
        match &self.view {
            View::Unread => false,
            // The API server picks the holder in coordinated mode: never create the lock.
            View::Absent(a) => {
                !self.config.coordinated
                    && a.held_until.is_none_or(|until| now >= until)
                    && self.next_transitions(0).is_some()
            }
            View::Present(o) => {
                let ours = self.ours(o);
                let expired = now >= self.expires_at(o);
                // A new term raises leaderTransitions: at its maximum it would repeat a fencing
                // token (see `Alert::TransitionsExhausted`).
                let room = self.next_transitions(o.record.leader_transitions).is_some();
                if self.config.coordinated {
                    // We only write what names us (the compare-and-swap fails if the
                    // controller has named someone else since), and yield to a preferred
                    // holder until the lease has run out without it taking over. An expired
                    // lease that still names us is taken up: the controller does not name the
                    // same holder twice, so nobody else would.
                    let named = o.record.is_held_by(&self.config.identity);
                    let at_once = ours && self.yield_to(&o.record).is_none();
                    return named && ((at_once || expired) && room || self.hands_back(o, now));
                }
                ours || ((o.record.holder.is_none() || expired) && room)
            }
        }
    }

    /// Whether the lock is free (or expired) for this follower, but taking it would repeat a
    /// fencing token: `leaderTransitions` is at its maximum.
    fn transitions_exhausted(&self, now: Instant) -> bool {
        let free = match &self.view {
            View::Unread => false,
            View::Absent(a) => {
                !self.config.coordinated && a.held_until.is_none_or(|until| now >= until)
            }
            View::Present(o) => {
                let named = o.record.is_held_by(&self.config.identity);
                let expired = now >= self.expires_at(o);
                !self.ours(o)
                    && if self.config.coordinated {
                        named && expired
                    } else {
                        o.record.holder.is_none() || expired
                    }
            }
        };
        free && !self.may_acquire(now)
    }

    /// Whether the observed record is this candidate's own to renew: one it wrote, or in
    /// coordinated election one the controller handed it.
    fn ours(&self, o: &Observed) -> bool {
        o.record.is_held_by(&self.config.identity)
            && match o.origin {
                Origin::Ours => true,
                Origin::Handed => self.config.coordinated,
                Origin::Foreign => false,
            }
    }

    /// Whether this elector wrote `record` (up to the fields the election controller writes).
    fn wrote(&self, record: &LeaderElectionRecord) -> bool {
        self.own_writes.iter().any(|w| same_renewal(w, record))
    }

    /// Who wrote `record`, judged against what this elector wrote and last saw.
    fn origin_of(&self, record: &LeaderElectionRecord) -> Origin {
        let me = &self.config.identity;
        if !record.is_held_by(me) {
            return Origin::Foreign;
        }
        if self.wrote(record) {
            return Origin::Ours;
        }
        match &self.view {
            // Only the election controller's fields changed (preferredHolder, strategy).
            View::Present(o) if same_renewal(&o.record, record) => o.origin,
            // The lock changed hands to us without our writing it, and without a new term: the
            // election controller names a holder leaving `leaderTransitions` alone, where a
            // take-up by a candidate of our name (a twin) raises it.
            View::Present(o)
                if !o.record.is_held_by(me)
                    && record.leader_transitions == o.record.leader_transitions =>
            {
                Origin::Handed
            }
            // Created naming us: in coordinated election no candidate creates the lock.
            View::Absent(_) => Origin::Handed,
            // The first sight, or a change from a record of our name to another: no telling.
            View::Present(_) | View::Unread => Origin::Foreign,
        }
    }

    /// Whether a read showing `record` shows someone else renewing under our identity: a
    /// record naming us that we did not write, replacing one that also named us and had not
    /// expired (the one our term rests on, for a leader).
    fn is_clash(&self, record: &LeaderElectionRecord) -> bool {
        let me = &self.config.identity;
        if !record.is_held_by(me) || self.wrote(record) {
            return false;
        }
        match &self.phase {
            Phase::Leading { lease, .. } => !same_renewal(&lease.value, record),
            _ => self.last_read.as_ref().is_some_and(|(before, since)| {
                let lease = match before.lease_duration_seconds {
                    0 => self.config.lease_duration,
                    secs => Duration::from_secs(u64::from(secs)),
                };
                before.is_held_by(me) && !same_renewal(before, record) && self.now < *since + lease
            }),
        }
    }

    /// The `leaderTransitions` of a takeover of a record with `current`: one more than any
    /// seen or written, so fencing tokens rise; `None` past the API's `int32`.
    fn next_transitions(&self, current: u32) -> Option<u32> {
        let next = self
            .transitions_seen
            .unwrap_or(0)
            .max(current)
            .checked_add(1)?;
        (next <= MAX_INT32).then_some(next)
    }

    /// Raises `alert` (reporting it if it was not already in force) as seen now.
    fn raise(&mut self, alert: Alert) {
        let now = self.now;
        if self.alert(now) != Some(&alert) {
            self.emit(Event::Alert(alert.clone()));
        }
        self.alert = Some((alert, now));
    }

    /// When the observed lease expires for a follower.
    fn expires_at(&self, o: &Observed) -> Instant {
        let lease = match o.term_lease_seconds {
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

    /// Brings the next renewal forward to now (or to when `renewTime` can move on), if this
    /// elector leads on the fast path and has brought fewer than
    /// [`HURRIED_WRITES_PER_RETRY_PERIOD`] renewals forward in the last retry period; otherwise
    /// the renewal keeps its schedule. For owners of data the renewal carries (the shard
    /// claims of [`crate::shards`]): the record written is the elector's own, unchanged.
    pub(crate) fn write_soon(&mut self) {
        let now = self.now;
        let rp = self.config.retry_period;
        while self
            .hurried_writes
            .front()
            .is_some_and(|&at| now >= at + rp)
        {
            self.hurried_writes.pop_front();
        }
        let budget_left = self.hurried_writes.len() < HURRIED_WRITES_PER_RETRY_PERIOD;
        if let Phase::Leading {
            next_renew,
            renewable_from,
            slow_path: false,
            leader_until,
            ..
        } = &mut self.phase
        {
            let at = now.max(*renewable_from);
            if at < *next_renew && at < *leader_until && budget_left {
                *next_renew = at;
                self.hurried_writes.push_back(now);
            }
        }
        self.drive();
    }

    /// Whether an operation may be brought forward of its schedule now, for `why`.
    fn may_hurry(&self, why: Early) -> bool {
        self.hurried_at[why as usize].is_none_or(|at| self.now >= at + self.config.retry_period)
    }

    /// `now` instead of `scheduled` if the pace allows bringing an operation forward for
    /// `why` (and records that it did), else `scheduled`.
    fn hurry(&mut self, scheduled: Instant, why: Early) -> Instant {
        if scheduled <= self.now {
            scheduled
        } else if self.may_hurry(why) {
            self.hurried_at[why as usize] = Some(self.now);
            self.now
        } else {
            scheduled
        }
    }

    fn jittered_retry_period(&mut self) -> Duration {
        let rp = self.config.retry_period;
        let u = self.rng.next_f64();
        rp.saturating_add(mul_f64_saturating(rp, self.config.jitter * u))
    }

    fn stop_leading(&mut self, reason: StopReason) {
        self.work = Work::Stopping;
        // Coordinated election: yielding to the preferred holder, with release configured,
        // hands the lock over at once (client-go lets it expire, 12 to 22 s).
        let handover = matches!(reason, StopReason::Yielded(_)) && self.config.release_on_cancel;
        let leader_until = self.leader_until();
        self.emit(Event::StoppedLeading { reason });
        if let (true, Some(leader_until)) = (handover, leader_until) {
            self.after_release = self.config.after_loss;
            self.phase = Phase::Draining { leader_until };
            return;
        }
        match self.config.after_loss {
            AfterLoss::Finish => self.phase = Phase::Finished,
            AfterLoss::Recontend => {
                let next_poll = self.now + self.jittered_retry_period();
                self.phase = Phase::Following(Follow::at(next_poll));
            }
        }
    }

    /// The release is over (done, not needed, or given up): finish, or contend again after a
    /// coordinated hand-over in re-contend mode.
    fn end_release(&mut self) {
        match self.after_release {
            AfterLoss::Finish => self.phase = Phase::Finished,
            AfterLoss::Recontend => {
                let next_poll = self.now + self.jittered_retry_period();
                self.phase = Phase::Following(Follow::at(next_poll));
            }
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
        let origin = seen
            .as_ref()
            .map_or(Origin::Foreign, |s| self.origin_of(&s.value));
        if let Some(seen) = &seen {
            self.note_transitions(seen.value.leader_transitions);
        }
        let view = std::mem::take(&mut self.view);
        self.view = view.seen(seen, origin, self.now, self.config.lease_duration);
        self.view_outdated = false;
        let holder = self.leader().cloned();
        if holder != self.reported_leader {
            self.reported_leader.clone_from(&holder);
            self.emit(Event::NewLeader(holder));
        }
    }

    fn note_transitions(&mut self, t: u32) {
        self.transitions_seen = Some(self.transitions_seen.map_or(t, |max| max.max(t)));
    }

    // ---- records ------------------------------------------------------------------------

    fn lease_seconds(&self) -> u32 {
        // Config::validate guarantees a whole number of seconds no larger than an int32.
        u32::try_from(self.config.lease_duration.as_secs()).unwrap_or(MAX_INT32)
    }

    /// The wall clock as the lock will store it.
    fn stamp(&self) -> Timestamp {
        self.wall.truncated_to(self.config.time_precision)
    }

    /// A `renewTime` later than `previous` at the lock's precision: the wall clock, or one
    /// precision step past `previous` when the wall clock has not moved past it (several
    /// renewals within one step of a coarse lock, a stalled or stepped-back clock).
    fn renew_time_after(&self, previous: Option<Timestamp>) -> Timestamp {
        let precision = self.config.time_precision;
        let now = self.stamp();
        match previous.map(|p| p.truncated_to(precision)) {
            Some(previous) if previous >= now => previous.saturating_add(precision),
            _ => now,
        }
    }

    /// The record a follower writes to take `current` from another holder, or from a holder
    /// of our name that is not this incarnation (a restart, a twin, an administrator's edit, the
    /// election controller's choice): a new term, so `leaderTransitions` rises (the caller
    /// checked that it can), and `renewTime` does not go back.
    fn takeover_record(&self, current: &LeaderElectionRecord) -> LeaderElectionRecord {
        LeaderElectionRecord {
            holder: Some(self.config.identity.clone()),
            lease_duration_seconds: self.lease_seconds(),
            acquire_time: Some(self.stamp()),
            renew_time: Some(self.renew_time_after(current.renew_time)),
            leader_transitions: self
                .next_transitions(current.leader_transitions)
                .unwrap_or(MAX_INT32),
            strategy: current.strategy.clone(),
            preferred_holder: current.preferred_holder.clone(),
        }
    }

    /// The record that creates the lock: transitions continue from the highest seen.
    fn create_record(&self) -> LeaderElectionRecord {
        LeaderElectionRecord {
            holder: Some(self.config.identity.clone()),
            lease_duration_seconds: self.lease_seconds(),
            acquire_time: Some(self.stamp()),
            renew_time: Some(self.stamp()),
            leader_transitions: self.transitions_seen.map_or(0, |t| t.saturating_add(1)),
            ..Default::default()
        }
    }

    /// `current` renewed: our holder and duration, a later renew time, everything else kept.
    fn renew_record(&self, current: &LeaderElectionRecord) -> LeaderElectionRecord {
        LeaderElectionRecord {
            holder: Some(self.config.identity.clone()),
            lease_duration_seconds: self.lease_seconds(),
            renew_time: Some(self.renew_time_after(current.renew_time)),
            acquire_time: current.acquire_time.or(Some(self.stamp())),
            ..current.clone()
        }
    }

    /// client-go's release record: no holder, a 1 s lease, times stamped, transitions kept.
    fn release_record(&self, current: &LeaderElectionRecord) -> LeaderElectionRecord {
        LeaderElectionRecord {
            holder: None,
            lease_duration_seconds: 1,
            acquire_time: Some(self.stamp()),
            renew_time: Some(self.stamp()),
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
        if let LockRequest::Create(r) | LockRequest::Update { record: r, .. } = &request {
            // A write whose answer is lost may still have landed: a recreation must not repeat
            // its record (nor its fencing token), and reading it back must show it as ours.
            self.note_transitions(r.leader_transitions);
            if self.own_writes.len() == OWN_WRITES {
                self.own_writes.pop_front();
            }
            self.own_writes.push_back(r.clone());
        }
        let write = match &request {
            LockRequest::Get => None,
            LockRequest::Create(record) => Some(self.write(record, None)),
            LockRequest::Update { expected, record } => {
                Some(self.write(record, Some(expected.clone())))
            }
        };
        self.in_flight = Some(InFlight {
            op,
            issued_at: now,
            deadline,
            write,
        });
        self.actions.push_back(Action::Lock {
            op,
            request,
            deadline,
        });
    }

    fn write(&self, record: &LeaderElectionRecord, expected: Option<Version>) -> Write {
        let precision = self.config.time_precision;
        let unit = i64::try_from(precision.as_micros()).unwrap_or(i64::MAX);
        let renew_pause = record.renew_time.map_or(Duration::ZERO, |renewed| {
            let ahead = renewed
                .unix_micros()
                .saturating_add(unit)
                .saturating_sub(self.wall.unix_micros())
                .clamp(0, unit);
            Duration::from_micros(u64::try_from(ahead).unwrap_or(0))
        });
        Write {
            record: record.clone(),
            expected,
            renew_pause,
        }
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
            Phase::Following(follow) => {
                if idle {
                    // With no timer (waiting for the leader work), sleep until an input.
                    Some(self.follower_due(follow).map_or(
                        (Instant::MAX, WakeReason::LeaderWorkStopped),
                        |(at, why, _)| (at, why),
                    ))
                } else {
                    None
                }
            }
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

/// Whether two records describe the same term and renewal: they differ at most in fields that
/// no renewal changes (the election controller's `preferredHolder` and `strategy`, or a
/// `leaseDurationSeconds` edited by hand). Only a renewal under our identity that we did not
/// write is a clash; an edit of those fields is not.
fn same_renewal(a: &LeaderElectionRecord, b: &LeaderElectionRecord) -> bool {
    a.holder == b.holder
        && a.acquire_time == b.acquire_time
        && a.renew_time == b.renew_time
        && a.leader_transitions == b.leader_transitions
}
