//! What goes into a [`ShardMember`](super::ShardMember) and what comes out of it, and the
//! operations on the group's member Leases that a driver carries out for it.

use crate::elector::{Event, FencingToken, Now, OpId, StopReason};
use crate::lock::LockError;
use crate::record::{LeaderElectionRecord, Version};
use crate::time::Instant;

/// One member Lease as a list or a watch showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSighting {
    /// The Lease's name (unique in the group).
    pub name: String,
    /// Its version (`resourceVersion`).
    pub version: Version,
    /// The election record in its spec.
    pub record: LeaderElectionRecord,
    /// The text of its [`MEMBER_ANNOTATION`](super::claims::MEMBER_ANNOTATION), if any.
    pub annotation: Option<String>,
    /// Deletion was asked for (`deletionTimestamp` is set) and waits for the member's
    /// finalizer: the Lease still counts as what it claims.
    pub terminating: bool,
}

/// A change of the group, as the driver's one watch of all member Leases reports it, in the
/// order the store committed them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupChange {
    /// The whole group: every member Lease that exists (a list or a watch's initial state).
    Snapshot(Vec<MemberSighting>),
    /// A member Lease was created or changed.
    Applied(MemberSighting),
    /// The member Lease of this name was deleted.
    Deleted(String),
}

/// What a member writes to its own Lease: the election record and the claims annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// The election record (the spec).
    pub record: LeaderElectionRecord,
    /// The text of the [`MEMBER_ANNOTATION`](super::claims::MEMBER_ANNOTATION).
    pub annotation: String,
}

impl MemberRecord {
    /// Whether the Lease should carry the member finalizer: while it names a holder. A
    /// release (no holder) removes it, so an asked-for deletion completes only after the
    /// member stopped every shard.
    pub fn keeps_finalizer(&self) -> bool {
        self.record.holder.is_some()
    }
}

/// An operation on the group's member Leases, from [`ShardAction::Op`].
///
/// Exhaustive on purpose, like [`LockRequest`](crate::LockRequest): a store must carry out
/// every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRequest {
    /// Read this member's own Lease. Absent is a normal answer.
    Get,
    /// Create this member's own Lease (labelled with the group, with the member finalizer
    /// while it names a holder); fails with `AlreadyExists` if it exists.
    Create(MemberRecord),
    /// Replace this member's own Lease if its version is still `expected` (a
    /// compare-and-swap); fails with `Conflict` otherwise. Keeps the object's other labels,
    /// annotations and finalizers.
    Update {
        /// The version the write is conditional on.
        expected: Version,
        /// What to write.
        record: MemberRecord,
    },
    /// List every member Lease of the group in one consistent read of the store, served by
    /// the store itself, not a cache (for Kubernetes: a LIST with `resourceVersion` unset). The
    /// answer must reflect every write committed before the request was sent.
    List,
}

/// A successful answer to a [`GroupRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupResponse {
    /// The answer to `Get`.
    Member(Option<MemberSighting>),
    /// The answer to `Create` and `Update`: the Lease's new version.
    Written(Version),
    /// The answer to `List`.
    Listed(Vec<MemberSighting>),
}

/// The outcome of a [`GroupRequest`].
pub type GroupResult = Result<GroupResponse, LockError>;

/// An input to a [`ShardMember`](super::ShardMember). Every input carries the driver's clocks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardInput {
    /// Time has passed.
    Timeout(Now),
    /// The result of the operation `op` from a [`ShardAction::Op`].
    Result {
        /// The clocks when the result was received.
        now: Now,
        /// The operation this answers.
        op: OpId,
        /// What the store said.
        result: GroupResult,
    },
    /// The group's watch reported a change.
    Observed {
        /// The clocks when it was received.
        now: Now,
        /// The change.
        change: GroupChange,
    },
    /// The group's watch failed or ended: until it delivers again, the member lists the
    /// group every retry period.
    WatchBroken(Now),
    /// The work of these runs has stopped, after their [`ShardEvent::ShardStopped`] or
    /// because the driver cut them off at the end of the term. Until a run's stop is reported
    /// its shard stays claimed; until every stop is, the member neither starts another term
    /// nor releases its Lease. A running shard reported stopped is given up and taken again;
    /// reports of other runs (stale, repeated) are ignored.
    ShardsStopped {
        /// The clocks.
        now: Now,
        /// The runs whose work has stopped: each shard with the token of its
        /// [`ShardEvent::ShardStopped`].
        shards: Vec<(u32, FencingToken)>,
    },
    /// Leave the group: stop every shard, release the Lease, finish.
    Shutdown(Now),
}

impl ShardInput {
    /// The clocks this input carries.
    pub fn now(&self) -> Now {
        match self {
            ShardInput::Timeout(now)
            | ShardInput::Result { now, .. }
            | ShardInput::Observed { now, .. }
            | ShardInput::WatchBroken(now)
            | ShardInput::ShardsStopped { now, .. }
            | ShardInput::Shutdown(now) => *now,
        }
    }
}

/// What the driver must do next. A drain of
/// [`ShardMember::poll_action`](super::ShardMember::poll_action) ends with `SleepUntil` or
/// `Done`.
///
/// Exhaustive on purpose, like [`Action`](crate::Action).
#[must_use = "an action the driver does not carry out stalls the member"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardAction {
    /// Perform `request` and hand back its result as [`ShardInput::Result`] with `op`; give up
    /// at `deadline`. Up to two operations may be outstanding at once (one on the member's own
    /// Lease, one list); perform them concurrently or in order, as the store allows.
    Op {
        /// The operation's id.
        op: OpId,
        /// What to do.
        request: GroupRequest,
        /// When to give up.
        deadline: Instant,
    },
    /// Tell the application.
    Emit(ShardEvent),
    /// Nothing to do before `at` unless another input arrives: feed [`ShardInput::Timeout`]
    /// then.
    SleepUntil {
        /// When to wake.
        at: Instant,
    },
    /// The member has left the group; it ignores further inputs.
    Done,
}

/// What happened, for the application and the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardEvent {
    /// An event of the membership term (the elector on the member's own Lease):
    /// `StartedLeading` is a joined group, `Renewed` moves the end of the term
    /// (`member_until`), `StoppedLeading` ends it. The driver cancels every shard's work at
    /// the end of the term even if no input arrives then.
    Member(Event),
    /// Start the work of `shard`; stop it at [`ShardEvent::ShardStopped`], or at the end of the
    /// membership term at the latest.
    ShardStarted {
        /// The shard.
        shard: u32,
        /// Its fencing token: higher than every earlier owner's token for this shard.
        token: FencingToken,
    },
    /// Stop the work of `shard`, then report it with [`ShardInput::ShardsStopped`].
    ShardStopped {
        /// The shard.
        shard: u32,
        /// The token of the run to stop (the one it started with).
        token: FencingToken,
        /// Why.
        reason: ShardStopReason,
    },
    /// A member Lease of the group is one this member cannot read (another version of
    /// leasehold, another shard count or hash, or a foreign writer): it counts as claiming
    /// every shard until it is released or expires.
    IncompatibleMember {
        /// The Lease's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why a shard's work must stop.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardStopReason {
    /// The live members changed and the shard belongs to another now.
    Moved,
    /// The membership term ended (the same reason as the `StoppedLeading` event).
    TermEnded(StopReason),
}
