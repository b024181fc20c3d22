//! What goes into an [`Elector`](super::Elector) and what comes out of it.

use std::fmt;
use std::time::Duration;

use crate::lock::{LockRequest, LockResult};
use crate::record::{Identity, LeaderElectionRecord, Versioned};
use crate::time::{Instant, Timestamp};

/// The driver's clocks, read once per input: the monotonic instant decides everything, the wall
/// clock only stamps `acquireTime` / `renewTime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// The monotonic clock.
    pub instant: Instant,
    /// The wall clock.
    pub wall: Timestamp,
}

impl Now {
    /// Both readings.
    pub fn new(instant: Instant, wall: Timestamp) -> Self {
        Now { instant, wall }
    }
}

/// Identifies one lock operation, so a result that arrives late (after its deadline, after a
/// shutdown) is recognised and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub u64);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op#{}", self.0)
    }
}

/// An input to the elector. Every input carries the driver's clocks.
///
/// `#[non_exhaustive]`: drivers construct inputs and need not match them; a new input will be
/// one a driver may send, never one the elector waits for from drivers that predate it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Input {
    /// Time has passed. Calling this early, or often, is harmless.
    Timeout(Now),
    /// The result of the operation `op` from an [`Action::Lock`].
    LockResult {
        /// The clocks when the result was received.
        now: Now,
        /// The operation this answers.
        op: OpId,
        /// What the store said.
        result: LockResult,
    },
    /// The lock as a watch (or any other source) saw it: `None` when it was deleted.
    /// Accepted at any time; stale or duplicate observations are harmless.
    Observed {
        /// The clocks when the observation was received.
        now: Now,
        /// The record and its version, or `None` for an absent lock.
        record: Option<Versioned<LeaderElectionRecord>>,
    },
    /// The work guarded by leadership has stopped after an [`Event::StoppedLeading`]; the
    /// elector may now start another term, or release the lock after a shutdown (see
    /// [`crate::Config::release_on_cancel`]). Ignored unless a stop awaits it, so a stale or
    /// duplicate report cannot release the lock or start a term while the work still runs.
    LeaderWorkStopped(Now),
    /// Stop: step down if leading, release if configured, then finish.
    Shutdown(Now),
    /// The watch that delivers [`Input::Observed`] failed or ended: until the next
    /// observation, a follower polls every retry period as with
    /// [`Observation::Poll`](crate::Observation::Poll), instead of trusting a silence that may
    /// only mean the watch is broken (it would otherwise see a release only when the lease
    /// runs out).
    WatchBroken(Now),
}

impl Input {
    /// The clocks this input carries.
    pub fn now(&self) -> Now {
        match self {
            Input::Timeout(now)
            | Input::LockResult { now, .. }
            | Input::Observed { now, .. }
            | Input::LeaderWorkStopped(now)
            | Input::WatchBroken(now)
            | Input::Shutdown(now) => *now,
        }
    }
}

/// What the driver must do next. A drain of [`Elector::poll_action`](super::Elector::poll_action)
/// ends with `SleepUntil` or `Done`.
///
/// Exhaustive on purpose: a driver must carry out every action, so a new kind of action is a
/// breaking change that a custom driver should fail to compile against.
#[must_use = "an action the driver does not carry out stalls the elector"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Perform `request` on the lock and hand back its result as [`Input::LockResult`] with
    /// `op`. Give up at `deadline` (the elector then treats the operation as timed out).
    /// At most one operation is outstanding: the next one is issued only after this one
    /// answered or its deadline passed.
    Lock {
        /// The operation's id.
        op: OpId,
        /// What to do.
        request: LockRequest,
        /// When to give up.
        deadline: Instant,
    },
    /// Tell the application.
    Emit(Event),
    /// Nothing to do before `at` unless another input arrives: feed [`Input::Timeout`] then.
    SleepUntil {
        /// When to wake.
        at: Instant,
        /// Why, for traces and logs.
        reason: WakeReason,
    },
    /// The elector has finished; it ignores further inputs.
    Done,
}

/// What happened, for the application.
///
/// `#[non_exhaustive]`: new events will be reports a driver may ignore (a wildcard arm is
/// right for them); anything a driver must act on comes as a new [`Action`] or as a breaking
/// change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// This candidate leads until `leader_until` unless renewed (then [`Event::Renewed`]).
    /// Start the guarded work; stop it at [`Event::StoppedLeading`] at the latest.
    StartedLeading {
        /// The fencing token of this term (see [`FencingToken`]).
        token: FencingToken,
        /// The local instant at which this term ends without a renewal.
        leader_until: Instant,
    },
    /// A renewal succeeded: the term now lasts until `leader_until`.
    Renewed {
        /// The new end of the term.
        leader_until: Instant,
    },
    /// This candidate no longer leads. Emitted at `leader_until` at the latest, even while a
    /// renewal is in flight. Stop the guarded work and feed [`Input::LeaderWorkStopped`] when
    /// it has stopped.
    StoppedLeading {
        /// Why.
        reason: StopReason,
    },
    /// The observed holder of the lock changed (`None`: the lock was released). Like client-go's
    /// `OnNewLeader`, also reported for this candidate itself.
    NewLeader(Option<Identity>),
    /// The lock was released: its record now names no holder.
    Released,
    /// Something the elector cannot resolve by itself, for a person to see (see [`Alert`]).
    /// Reported when it arises; [`Elector::alert`](super::Elector::alert) tells whether it
    /// still holds.
    Alert(Alert),
}

/// A condition the elector cannot resolve by itself and that a person should see. It is
/// reported once with [`Event::Alert`] when it arises, kept by
/// [`Elector::alert`](super::Elector::alert) while it holds, and fails
/// [`Elector::check`](super::Elector::check).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Alert {
    /// Someone else renews the lock under this candidate's identity: two candidates were given
    /// the same identity (or the lock is being edited by hand). Seen as a read that shows a
    /// renewal naming this candidate that it did not write, while the record the previous read
    /// showed, also naming it, had not expired. A leader that sees it ends its term; a follower
    /// does not take the lock while the other keeps renewing it. Give every candidate its own
    /// identity.
    IdentityClash(Identity),
    /// The lock's `leaderTransitions` is at its largest value (2147483647, the API's `int32`
    /// maximum) and the lock is free or expired: taking it would have to repeat a fencing
    /// token, so the elector does not. Delete the lock object and restart the candidates
    /// (tokens then start again from 0, which is safe only once the old leader's work is known
    /// to have stopped).
    TransitionsExhausted,
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Alert::IdentityClash(identity) => write!(
                f,
                "another candidate renews the lock under this candidate's identity {identity:?}: give every candidate its own identity"
            ),
            Alert::TransitionsExhausted => write!(
                f,
                "the lock's leaderTransitions is at its maximum (2147483647): it cannot change hands without repeating a fencing token; delete the lock object and restart the candidates"
            ),
        }
    }
}

/// Why a term ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// No renewal succeeded within the renew deadline of the last successful write.
    RenewDeadlineExceeded,
    /// The lock was found naming another holder (`None`: nobody), so someone else wrote it.
    LockTaken(Option<Identity>),
    /// The lock object was found deleted.
    LockDeleted,
    /// Coordinated election: the lock names a preferred holder, so this candidate yields.
    Yielded(Identity),
    /// Someone else renewed the lock under this candidate's identity ([`Alert::IdentityClash`]).
    IdentityClash,
    /// [`Input::Shutdown`].
    Shutdown,
}

/// Why the elector sleeps until a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WakeReason {
    /// The next attempt to acquire (or to read the lock).
    RetryAcquire,
    /// The observed lease expires: the lock becomes free for this follower.
    LeaseExpiry,
    /// The leader's next renewal.
    Renew,
    /// The deadline of the operation in flight.
    OperationDeadline,
    /// The end of the current term.
    LeaderUntil,
    /// The latest the leader work may stop before the release is given up.
    LeaderWorkDeadline,
    /// The next attempt to release.
    RetryRelease,
    /// The deadline of the whole release.
    ReleaseDeadline,
    /// Nothing is due until the last term's leader work is reported stopped
    /// ([`Input::LeaderWorkStopped`]); the instant is [`Instant::MAX`].
    LeaderWorkStopped,
}

/// A number that strictly increases from one holder to the next, handed out with
/// [`Event::StartedLeading`]. Pass it with every write the guarded work makes, and have the
/// downstream system reject writes carrying a token lower than one it has seen: a deposed
/// leader then cannot clobber its successor's work.
///
/// It is the record's `leaderTransitions` after the acquiring write, which every client
/// (client-go included) increments when the holder changes. It stays the same when the same
/// identity re-acquires its own lock. When the lock object is deleted, an elector that saw it
/// before recreates it with the last transitions it saw plus one, so tokens keep rising; a
/// process that never saw the lock before its deletion starts again from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The elector's role, for state reports.
///
/// `#[non_exhaustive]`: a report may learn finer roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// Contending (or, in coordinated mode, waiting to be picked).
    Follower,
    /// Leading.
    Leader,
    /// Shutting down: waiting for the leader work to stop, or releasing.
    Stopping,
    /// Done.
    Finished,
}

/// Why [`Elector::check`](super::Elector::check) or
/// [`Elector::check_ready`](super::Elector::check_ready) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unhealthy {
    /// client-go's healthz failure: the lock names this candidate as it last wrote it, and the
    /// record has not changed for longer than the lease duration plus the tolerance: a leader
    /// that cannot renew (or a driver that is stuck).
    #[error("failed election to renew leadership on lease {lock}")]
    RenewalOverdue {
        /// The lock's name ([`Config::name`](crate::Config::name)).
        lock: String,
    },
    /// The lock has not answered for longer than the lease duration plus the tolerance
    /// (readiness only).
    #[error("no answer from the lock {lock} for {:.1}s{}", silent.as_secs_f64(), last_error.as_ref().map_or_else(String::new, |(e, n)| format!(": {e} ({n} failures in a row)")))]
    NoAnswer {
        /// The lock's name.
        lock: String,
        /// How long since the lock last answered.
        silent: Duration,
        /// The last error and how many operations failed in a row.
        last_error: Option<(crate::lock::LockError, u64)>,
    },
    /// An [`Alert`] is in force.
    #[error("{0}")]
    Alert(Alert),
    /// The elector has finished (readiness only).
    #[error("the election has finished")]
    Finished,
    /// Coordinated election: the LeaseCandidate registration fails (for liveness, only when
    /// retrying cannot heal it), so the election controller never picks this candidate.
    #[error("{0}")]
    Registration(String),
}
