//! What goes into an [`Elector`](super::Elector) and what comes out of it.

use std::fmt;

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

impl Input {
    /// The clocks this input carries.
    pub fn now(&self) -> Now {
        match self {
            Input::Timeout(now)
            | Input::LockResult { now, .. }
            | Input::Observed { now, .. }
            | Input::LeaderWorkStopped(now)
            | Input::Shutdown(now) => *now,
        }
    }
}

/// What the driver must do next. A drain of [`Elector::poll_action`](super::Elector::poll_action)
/// ends with `SleepUntil` or `Done`.
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
