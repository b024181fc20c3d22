//! Shard ownership: N shards among the live members of a group, at most one owner each, with
//! one Lease per member.
//!
//! Each member holds its own Lease through an unchanged [`Elector`]: its term there is its
//! **membership term**, and every write it makes to that Lease also carries, in the
//! [`MEMBER_ANNOTATION`](claims::MEMBER_ANNOTATION), the shards it claims. Members read the
//! whole group through one watch (or list) of the Leases labelled with the group, pick the
//! shards they should own by rendezvous hashing over the live members ([`hash`]), and take a
//! shard only through a protocol whose safety does not depend on hashing, views or timing of
//! anyone's watch:
//!
//! 1. **Intent.** The shard goes into `pending` in the member's next write. A write that
//!    succeeded within the term *commits* the intent.
//! 2. **Fence.** A list of the group, sent after the intent committed (a consistent read of the
//!    store: it contains every write committed before it was sent), in which every other Lease
//!    either does not claim the shard, is released, or is *confirmed expired*: the list still
//!    shows the version of it that this member first saw at least a lease duration before the
//!    list was sent. Its holder's term, anchored at a write made before that version was seen,
//!    ended before the list was answered, by the same clock-rate bound that makes the elector
//!    safe (rule F below).
//! 3. **Activation.** The shard moves to `active` in the next write, which also carries the
//!    group epoch τ = 1 + the largest epoch the fence list showed; if that write succeeds
//!    before its deadline and within the term, [`ShardEvent::ShardStarted`] with token τ.
//!
//! A shard stops before it is given up: it stays in `active` until the driver reports its work
//! stopped ([`ShardInput::ShardsStopped`]); only the next write drops it. Every shard stops at
//! the end of the membership term at the latest, and no new term starts (and no release is
//! written) until every stop is reported.
//!
//! # Safety theorem
//!
//! If every write to a member Lease is a compare-and-swap on its version, the store is
//! linearizable (etcd), member Leases are deleted only through their finalizer
//! ([`MEMBER_FINALIZER`](claims::MEMBER_FINALIZER)), the drivers stop each shard's work at
//! its `ShardStopped` or at the end of the membership term, whichever comes first, report a
//! run stopped only once its work has stopped, and the
//! ratio of the fastest to the slowest clock rate among members stays below
//! `lease_duration / renew_deadline`, then at any real time at most one member runs a shard's
//! work, and successive owners of a shard get strictly rising tokens while no member Lease is
//! deleted.
//!
//! *Proof.* Take runs of shard k by members X and Y, on different Leases (runs on one Lease are
//! disjoint: across terms by the elector's theorem, within a term because a shard is intended
//! again only once its stop was reported). Let I_X and I_Y be the writes from which each claims
//! k without a gap until its run has stopped, and say I_X committed first. Y started after a
//! fence list L sent after I_Y committed, so L is a cut of the store after I_X. X's first write
//! that drops k is issued after X's run stopped; if the runs overlap, that is after L was
//! answered, so L shows a record of X that claims k (a member Lease cannot be absent: deletion
//! waits for the finalizer, which only a release removes, and a release is written only after
//! every shard stopped). So Y's fence accepted that record W of X only as confirmed expired:
//! Y first saw it at `o`, which is after W committed and so after X issued W, and sent L at
//! `w ≥ o + LD` by Y's clock. X's term anchored at W ends `RD` after X issued W by X's clock;
//! any later write of X in that term had a deadline within it, and would have committed before
//! L was answered (clock rates within `LD/RD`), so L would show it instead of W. Hence X's term
//! ended before L was answered, and with it X's run (by the stop at the end of the term):
//! before Y started, a contradiction. Tokens: Y's list shows X's Lease at or after X's
//! activation (if the activation had committed after L, X's term would have ended before, by
//! the same argument, and X would never have started), whose epoch is X's token τ_X, and
//! epochs never go down on a Lease; so τ_Y ≥ 1 + τ_X. ∎
//!
//! A deletion (after the release, through the finalizer) takes the Lease's epoch with it:
//! tokens still rise across it when a member that saw the epoch wrote since (every write
//! carries the largest epoch its writer has seen, so in a group of several members that is
//! a retry period later), but a member that was alone, deleted and restarted starts again
//! from the epochs that remain. Overlap is unaffected; a store fenced by tokens would refuse
//! such a member's writes.
//!
//! Nothing in the proof uses which member hashing picks, what a watch showed, or how old a
//! view is: stale views, lagging watches, lost answers and any rate of joins and leaves only
//! delay a fence. Outside the guarantee: a finalizer removed by hand, writes to a member Lease
//! by anyone but its member, shard work that outlives its cancellation, and changing the shard
//! count, the hash or the group in place (start a new group instead).
//!
//! # Driving contract
//!
//! As for the [`Elector`]: after [`ShardMember::new`] and every
//! [`ShardMember::handle_input`], call [`ShardMember::poll_action`] until it returns
//! [`ShardAction::SleepUntil`] or [`ShardAction::Done`], and carry out every action. Deliver
//! every change of the group's Leases as [`ShardInput::Observed`] (one watch for the whole
//! group, a [`GroupChange::Snapshot`] after every relist), or none at all: without a watch the
//! member lists the group every retry period. Report stopped shard work with
//! [`ShardInput::ShardsStopped`], naming each run by its shard and token, and stop every
//! shard's work at `member_until` (the end of the term, from [`ShardEvent::Member`]) even if
//! no input arrives then; a run cut off that way while the term went on (a renewal came in as
//! the watchdog fired) is reported too, and the member takes the shard again.
//!
//! # Costs
//!
//! With a watch, a member in a stable group writes its Lease once per retry period, whatever
//! the number of shards, and lists nothing. A change of the group costs each member one
//! rendezvous pass (N × M weights) and, for the shards that move, two extra writes and a list
//! on the taker's side and one extra write on the giver's. At most
//! [`MAX_LISTS_PER_RETRY_PERIOD`] lists and
//! [`MAX_MEMBER_OPS_PER_RETRY_PERIOD`] operations in all go out in any retry period.

pub mod claims;
pub mod hash;
mod io;
mod store;
mod view;

pub use io::{
    GroupChange, GroupRequest, GroupResponse, GroupResult, MemberRecord, MemberSighting,
    ShardAction, ShardEvent, ShardInput, ShardStopReason,
};
#[cfg(feature = "async")]
pub use store::GroupLock;
pub use store::{MemoryGroup, MemoryMember};

use std::collections::{BTreeMap, VecDeque};

use self::claims::{MAX_SHARDS, MemberClaims, ShardSet};
use self::view::{Claimed, GroupView};
use crate::config::{Config, ConfigError, Observation};
use crate::elector::{
    Action, Elector, Event, FencingToken, Input, MAX_OPS_PER_RETRY_PERIOD, Now, OpId,
};
use crate::lock::{LockError, LockErrorKind, LockRequest, LockResponse, LockResult};
use crate::record::{Identity, Versioned};
use crate::time::{Instant, Timestamp};

/// At most this many lists of the group go out in any retry period: fences and, without a
/// watch, the polls of the group.
pub const MAX_LISTS_PER_RETRY_PERIOD: usize = 4;

/// At most this many operations go out in any retry period: the elector's
/// [`MAX_OPS_PER_RETRY_PERIOD`], the renewals brought forward to carry claims (3), and the
/// lists.
pub const MAX_MEMBER_OPS_PER_RETRY_PERIOD: usize = MAX_OPS_PER_RETRY_PERIOD
    + crate::elector::HURRIED_WRITES_PER_RETRY_PERIOD
    + MAX_LISTS_PER_RETRY_PERIOD;

/// List operations are told apart from the elector's by this bit of their [`OpId`].
const LIST_OP: u64 = 1 << 63;

/// How a member takes part in a group.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardConfig {
    /// The membership term: the elector's configuration for the member's own Lease. Its
    /// `identity` is the member's identity in the group and in the hashing.
    pub member: Config,
    /// The group's name (the value of the [`GROUP_LABEL`](claims::GROUP_LABEL)): a label value
    /// of at most 63 characters.
    pub group: String,
    /// The number of shards, 1 to [`MAX_SHARDS`]. Every member of a group must agree.
    pub shards: u32,
    /// The name of this member's Lease: `<group>-<identity>` unless set otherwise.
    pub lease_name: String,
}

impl ShardConfig {
    /// A member of `group` with `shards` shards, its Lease named `<group>-<identity>`.
    ///
    /// The membership term is set to release the Lease on shutdown (so a graceful leave hands
    /// its shards over at once) and to re-contend after a lost term (so a member cut off for a
    /// while comes back); change `member` afterwards to do otherwise.
    pub fn new(mut member: Config, group: impl Into<String>, shards: u32) -> Self {
        member.release_on_cancel = true;
        member.after_loss = crate::config::AfterLoss::Recontend;
        let group = group.into();
        let lease_name = format!("{group}-{}", member.identity.as_str());
        ShardConfig {
            member,
            group,
            shards,
            lease_name,
        }
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// The first rule it breaks.
    pub fn validate(&self) -> Result<(), ShardConfigError> {
        self.member.validate().map_err(ShardConfigError::Member)?;
        if self.member.coordinated {
            return Err(ShardConfigError::Coordinated);
        }
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return Err(ShardConfigError::Shards(self.shards));
        }
        if !is_label_value(&self.group) || self.group.is_empty() {
            return Err(ShardConfigError::Group(self.group.clone()));
        }
        if !is_object_name(&self.lease_name) {
            return Err(ShardConfigError::LeaseName(self.lease_name.clone()));
        }
        Ok(())
    }
}

/// A shard configuration that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ShardConfigError {
    /// The membership term's configuration.
    #[error(transparent)]
    Member(ConfigError),
    /// The membership term asked for coordinated election: a member Lease has one candidate,
    /// its member, and no coordinator would ever pick it.
    #[error(
        "coordinated election does not apply to a shard group member's own Lease: set member.coordinated to false"
    )]
    Coordinated,
    /// The shard count is outside 1 to 65,536.
    #[error("the number of shards must be between 1 and {MAX_SHARDS}, got {0}")]
    Shards(u32),
    /// The group is not a valid label value.
    #[error(
        "the group name must be a Kubernetes label value (1 to 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit), got {0:?}"
    )]
    Group(String),
    /// The Lease name is not a valid object name.
    #[error(
        "the member Lease name must be a DNS subdomain (lowercase letters, digits, '-', '.', at most 253), got {0:?}; choose an identity that makes one, or set lease_name"
    )]
    LeaseName(String),
}

fn is_label_value(v: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    v.len() <= 63
        && (v.is_empty()
            || (v.starts_with(alnum)
                && v.ends_with(alnum)
                && v.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))))
}

fn is_object_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let label = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| alnum(c) || c == '-')
            && l.starts_with(alnum)
            && l.ends_with(alnum)
    };
    name.len() <= 253 && name.split('.').all(label)
}

/// One shard, as this member knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shard {
    /// Not claimed by this member.
    Idle,
    /// Wanted: in `pending` from the next write. `carried`: the write in flight that carries
    /// it; `committed`: the mark of the answer by which a write carrying it succeeded within
    /// this term.
    Intended {
        carried: Option<OpId>,
        committed: Option<Mark>,
    },
    /// The fence passed: goes into `active` with the next write (`carried`), whose success
    /// starts it with `token`.
    Fenced {
        token: FencingToken,
        carried: Option<OpId>,
        committed: Mark,
    },
    /// Running, with its token.
    Active { token: FencingToken },
    /// Told to stop; still claimed until the stop of the run with `token` is reported.
    Stopping { token: FencingToken },
}

/// A point in this member's own order of events: the answer that committed an intent, the
/// sending of a list. Instants cannot order them (two inputs may carry the same instant); a
/// fence needs its list sent strictly after the intent committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Mark(u64);

/// The elector's write in flight.
#[derive(Debug, Clone)]
struct IssuedWrite {
    op: OpId,
    deadline: Instant,
    /// The membership term it was issued in (`None`: none ran).
    term: Option<FencingToken>,
    /// The request, to translate the answer.
    kind: RequestKind,
    /// The write counter it carries (a get: the counter's value when it was sent).
    seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestKind {
    Get,
    Write,
}

/// The list in flight.
#[derive(Debug, Clone, Copy)]
struct IssuedList {
    op: OpId,
    /// The list's witness: every write committed before this instant is in its answer.
    issued_at: Instant,
    /// Every intent committed at an earlier mark is in its answer.
    sent: Mark,
    deadline: Instant,
}

/// A member of a shard group: a pure state machine, like the [`Elector`] it contains (see the
/// [module docs](self) for the protocol, its proof and the driving contract).
#[derive(Debug, Clone)]
pub struct ShardMember {
    config: ShardConfig,
    elector: Elector,
    now: Instant,
    wall: Timestamp,
    view: GroupView,
    /// INVARIANT: one per shard.
    shards: Vec<Shard>,
    /// The shards hashing gives this member among `live`.
    targets: ShardSet,
    /// The live identities `targets` was computed from (sorted), or `None` when stale.
    live: Option<Vec<String>>,
    /// The membership term runs (the elector leads).
    member: bool,
    /// A `StoppedLeading` awaits `LeaderWorkStopped`: sent once no shard is stopping.
    owe_work_stopped: bool,
    /// The last `seq` and the largest epoch this member wrote or saw on its own Lease; the
    /// epoch also takes every epoch it saw on others.
    seq: u64,
    epoch: u64,
    /// The write counter of the last write of this member that succeeded: a record of the own
    /// Lease with a lower counter is older than what the elector knows (a list answered late).
    written_seq: u64,
    write: Option<IssuedWrite>,
    list: Option<IssuedList>,
    /// When the lists of the last retry period went out. INVARIANT: at most
    /// [`MAX_LISTS_PER_RETRY_PERIOD`].
    lists: VecDeque<Instant>,
    /// A watch delivers the group (it delivered, and has not broken since).
    watching: bool,
    /// Without a watch: when the next list of the group is due.
    next_poll: Instant,
    next_list_op: u64,
    /// The last [`Mark`] handed out.
    mark: Mark,
    /// The incompatible Leases already reported, with the reason.
    reported: BTreeMap<String, String>,
    actions: VecDeque<ShardAction>,
    done: bool,
}

impl ShardMember {
    /// A member that starts joining at once. `seed` drives the elector's jitter.
    ///
    /// # Errors
    /// The first rule of [`ShardConfig::validate`] the configuration breaks.
    pub fn new(config: ShardConfig, now: Now, seed: u64) -> Result<Self, ShardConfigError> {
        config.validate()?;
        let elector =
            Elector::new(config.member.clone(), now, seed).map_err(ShardConfigError::Member)?;
        let n = config.shards;
        let mut member = ShardMember {
            shards: vec![Shard::Idle; n as usize],
            targets: ShardSet::new(n),
            config,
            elector,
            now: now.instant,
            wall: now.wall,
            view: GroupView::default(),
            live: None,
            member: false,
            owe_work_stopped: false,
            seq: 0,
            epoch: 0,
            written_seq: 0,
            write: None,
            list: None,
            lists: VecDeque::new(),
            watching: false,
            next_poll: now.instant,
            next_list_op: 0,
            mark: Mark(0),
            reported: BTreeMap::new(),
            actions: VecDeque::new(),
            done: false,
        };
        member.step();
        Ok(member)
    }

    /// Feeds one input. Never panics; misuse (stale results, unknown shards, early timeouts)
    /// is ignored.
    pub fn handle_input(&mut self, input: ShardInput) {
        if self.done {
            return;
        }
        let now = input.now();
        self.now = self.now.max(now.instant);
        self.wall = now.wall;
        let now = Now::new(self.now, self.wall);
        match input {
            ShardInput::Timeout(_) => self.elector.handle_input(Input::Timeout(now)),
            ShardInput::Result { op, result, .. } => {
                if op.0 & LIST_OP != 0 {
                    self.handle_listed(op, result);
                } else {
                    self.handle_written(op, result);
                }
            }
            ShardInput::Observed { change, .. } => self.handle_observed(change),
            ShardInput::WatchBroken(_) => {
                self.watching = false;
                self.next_poll = self.now;
                self.elector.handle_input(Input::WatchBroken(now));
            }
            ShardInput::ShardsStopped { shards, .. } => self.handle_stopped(&shards),
            ShardInput::Shutdown(_) => self.elector.handle_input(Input::Shutdown(now)),
        }
        self.step();
    }

    /// The next action; call until [`ShardAction::SleepUntil`] or [`ShardAction::Done`].
    #[must_use = "actions must be carried out, or the member stalls"]
    pub fn poll_action(&mut self) -> ShardAction {
        if let Some(action) = self.actions.pop_front() {
            return action;
        }
        if self.done {
            return ShardAction::Done;
        }
        ShardAction::SleepUntil {
            at: self.poll_timeout().unwrap_or(Instant::MAX),
        }
    }

    /// When the member next needs a [`ShardInput::Timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let mut at = self.elector.poll_timeout();
        let mut consider = |t: Instant| {
            if t > self.now {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        };
        if let Some(list) = &self.list {
            consider(list.deadline);
        }
        if !self.watching && self.list.is_none() {
            consider(self.next_poll.max(self.list_budget_free_at()));
        }
        if self.member {
            // Tentative expiries change the live members, and may let a fence pass.
            let ld = self.config.member.lease_duration;
            for (name, e) in &self.view.entries {
                if name != &self.config.lease_name && e.holder().is_some() {
                    consider(e.expires_at(ld));
                }
            }
            for v in self.view.vanished.values() {
                consider(v.absent_since + v.last.lease_duration(ld));
            }
            if self.list.is_none() {
                consider(self.list_budget_free_at());
            }
        }
        at
    }

    /// The configuration.
    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// The end of the membership term, while one runs.
    pub fn member_until(&self) -> Option<Instant> {
        self.elector.leader_until()
    }

    /// The shards this member runs (started and not yet told to stop), with their tokens.
    pub fn owned_shards(&self) -> impl Iterator<Item = (u32, FencingToken)> + '_ {
        self.shards.iter().enumerate().filter_map(|(k, s)| match s {
            Shard::Active { token } => Some((u32::try_from(k).ok()?, *token)),
            _ => None,
        })
    }

    /// Who runs `shard`, as far as this member knows: itself if it runs it, else the holder
    /// of a Lease whose last record seen has it `active`.
    pub fn owner_of(&self, shard: u32) -> Option<Identity> {
        if let Some(Shard::Active { .. }) = self.shards.get(shard as usize) {
            return Some(self.config.member.identity.clone());
        }
        self.view
            .entries
            .iter()
            .find_map(|(name, e)| match &e.claimed {
                Claimed::Known(c)
                    if name != &self.config.lease_name
                        && c.active.contains(shard)
                        && e.is_live(self.now, self.config.member.lease_duration) =>
                {
                    e.holder().cloned()
                }
                _ => None,
            })
    }

    /// The shards rendezvous hashing gives this member among the live members it sees (what
    /// it is working towards owning).
    pub fn target_shards(&self) -> &ShardSet {
        &self.targets
    }

    /// The live members this member sees, itself included while it is a member, sorted.
    pub fn live_members(&self) -> Vec<String> {
        self.live.clone().unwrap_or_default()
    }

    /// The membership elector (its state, its health checks).
    pub fn elector(&self) -> &Elector {
        &self.elector
    }

    /// The group epoch this member last wrote or saw.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    // ----- inputs -----

    fn handle_observed(&mut self, change: GroupChange) {
        self.watching = self.config.member.observation == Observation::Watch;
        let (group, n) = (self.config.group.clone(), self.config.shards);
        let own = self.config.lease_name.clone();
        let mut own_seen = None;
        match change {
            GroupChange::Snapshot(cut) => {
                own_seen = Some(cut.iter().find(|s| s.name == own).cloned());
                self.view.replace(cut, self.now, &group, n);
            }
            GroupChange::Applied(s) => {
                if s.name == own {
                    own_seen = Some(Some(s.clone()));
                }
                self.view.apply(s, self.now, &group, n);
            }
            GroupChange::Deleted(name) => {
                if name == own {
                    own_seen = Some(None);
                }
                self.view.remove(&name, self.now);
            }
        }
        if let Some(seen) = own_seen {
            self.observe_own(seen);
        }
        self.live = None;
    }

    /// Takes over the counters of the own Lease as read: writes continue its `seq`, tokens
    /// its `epoch` (each only up to [`claims::MAX_ADOPTED_COUNTER`]).
    fn adopt(&mut self, own: &MemberClaims) {
        self.seq = self.seq.max(claims::adopted(own.seq));
        self.epoch = self.epoch.max(claims::adopted(own.epoch));
    }

    /// Hands this member's own Lease, as seen, to the elector.
    fn observe_own(&mut self, seen: Option<MemberSighting>) {
        let mut older = false;
        if let Some(s) = &seen
            && let Some(text) = &s.annotation
            && let Ok(c) = MemberClaims::decode(text, &self.config.group, self.config.shards)
        {
            self.adopt(&c);
            older = c.seq < self.written_seq;
        }
        if seen.as_ref().is_some_and(|s| s.terminating) && self.member {
            // Deletion was asked for: leave (stop everything, release, which lets it go).
            self.elector
                .handle_input(Input::Shutdown(Now::new(self.now, self.wall)));
        }
        if older {
            // An earlier write of ours (a list served before our last write, answered after
            // it): the elector knows better, and would spend a read on it, which on a slow
            // link can cost the term. Whatever may have changed since, its next compare-and-
            // swap finds out.
            return;
        }
        let record = seen.map(|s| Versioned {
            version: s.version,
            value: s.record,
        });
        self.elector.handle_input(Input::Observed {
            now: Now::new(self.now, self.wall),
            record,
        });
    }

    fn handle_written(&mut self, op: OpId, result: GroupResult) {
        let issued = self.write.take_if(|w| w.op == op);
        let kind = issued.as_ref().map_or(RequestKind::Write, |w| w.kind);
        let lock_result: LockResult = match (kind, result) {
            (RequestKind::Get, Ok(GroupResponse::Member(seen))) => {
                if let Some(s) = &seen {
                    self.view
                        .apply(s.clone(), self.now, &self.config.group, self.config.shards);
                }
                if let Some(s) = &seen
                    && let Some(text) = &s.annotation
                    && let Ok(c) =
                        MemberClaims::decode(text, &self.config.group, self.config.shards)
                {
                    self.adopt(&c);
                }
                Ok(LockResponse::Record(seen.map(|s| Versioned {
                    version: s.version,
                    value: s.record,
                })))
            }
            (RequestKind::Write, Ok(GroupResponse::Written(v))) => Ok(LockResponse::Written(v)),
            (_, Ok(other)) => Err(LockError::new(
                LockErrorKind::Other,
                format!("the store answered {other:?} to an operation on the member's Lease"),
            )),
            (_, Err(e)) => Err(e),
        };
        let succeeded = matches!(lock_result, Ok(LockResponse::Written(_)));
        if let Some(w) = &issued
            && succeeded
            && w.kind == RequestKind::Write
        {
            self.written_seq = self.written_seq.max(w.seq);
        }
        self.elector.handle_input(Input::LockResult {
            now: Now::new(self.now, self.wall),
            op,
            result: lock_result,
        });
        // The shards this write carried, before the elector's next write (which an answer
        // that came late may call for at once) carries them instead.
        if let Some(issued) = issued
            && issued.kind == RequestKind::Write
        {
            self.settle_carried(&issued, succeeded);
        }
        self.pump_elector();
    }

    /// What the answer to the write `issued` means for the shards it carried.
    fn settle_carried(&mut self, issued: &IssuedWrite, succeeded: bool) {
        let op = issued.op;
        // The write counts only if it answered before its deadline, within the term it was
        // issued in (which then still runs).
        let counts = succeeded
            && self.now < issued.deadline
            && issued.term.is_some()
            && self.elector.fencing_token() == issued.term
            && self.elector.is_leader(self.now);
        let mark = self.next_mark();
        for k in 0..self.shards.len() {
            let shard = &mut self.shards[k];
            match *shard {
                Shard::Intended {
                    carried: Some(c),
                    committed,
                } if c == op => {
                    *shard = Shard::Intended {
                        carried: None,
                        committed: if counts {
                            committed.or(Some(mark))
                        } else {
                            committed
                        },
                    };
                }
                Shard::Fenced {
                    token,
                    carried: Some(c),
                    committed,
                } if c == op => {
                    if counts {
                        *shard = Shard::Active { token };
                        let shard = u32::try_from(k).unwrap_or(u32::MAX);
                        self.actions
                            .push_back(ShardAction::Emit(ShardEvent::ShardStarted {
                                shard,
                                token,
                            }));
                    } else {
                        // Perhaps written, perhaps not: fence again, for a fresh token.
                        *shard = Shard::Intended {
                            carried: None,
                            committed: Some(committed),
                        };
                    }
                }
                _ => {}
            }
        }
    }

    fn handle_listed(&mut self, op: OpId, result: GroupResult) {
        let Some(list) = self.list.take_if(|l| l.op == op) else {
            return;
        };
        let cut = match result {
            Ok(GroupResponse::Listed(cut)) => cut,
            // A failed list is retried when a fence or a poll next wants one.
            _ => return,
        };
        let own = cut
            .iter()
            .find(|s| s.name == self.config.lease_name)
            .cloned();
        self.view
            .replace(cut, self.now, &self.config.group, self.config.shards);
        let ld = self.config.member.lease_duration;
        self.view.forget_vanished(list.issued_at, ld);
        self.live = None;
        self.observe_own(own);
        self.pump_elector();
        self.fence(list.issued_at, list.sent);
    }

    fn handle_stopped(&mut self, shards: &[(u32, FencingToken)]) {
        for &(k, token) in shards {
            // Only the run reported: a late or repeated report of an earlier run's stop must
            // not release a later run. A run reported stopped while still `Active` was cut off
            // by the driver (its end-of-term watchdog fired as a renewal came in): its claim
            // goes too, and the shard is taken again, with a new token.
            if let Some(s) = self.shards.get_mut(k as usize)
                && (*s == (Shard::Stopping { token }) || *s == (Shard::Active { token }))
            {
                *s = Shard::Idle;
            }
        }
        // A shard that moved back while it stopped is wanted again.
        self.live = None;
        self.elector_write_soon();
    }

    // ----- the elector -----

    /// Carries out the elector's actions: its lock operations become operations on the own
    /// Lease, with the claims as they stand now; its events drive the shards.
    fn pump_elector(&mut self) {
        loop {
            match self.elector.poll_action() {
                Action::Lock {
                    op,
                    request,
                    deadline,
                } => self.issue_own(op, request, deadline),
                Action::Emit(event) => self.handle_member_event(event),
                Action::SleepUntil { .. } => break,
                Action::Done => {
                    self.done = true;
                    self.actions.push_back(ShardAction::Done);
                    break;
                }
            }
        }
    }

    fn issue_own(&mut self, op: OpId, request: LockRequest, deadline: Instant) {
        let term = self
            .elector
            .fencing_token()
            .filter(|_| self.elector.is_leader(self.now));
        let (kind, request) = match request {
            LockRequest::Get => (RequestKind::Get, GroupRequest::Get),
            LockRequest::Create(record) => {
                let annotation = self.annotation(op, record.holder.is_some());
                (
                    RequestKind::Write,
                    GroupRequest::Create(MemberRecord { record, annotation }),
                )
            }
            LockRequest::Update { expected, record } => {
                let annotation = self.annotation(op, record.holder.is_some());
                (
                    RequestKind::Write,
                    GroupRequest::Update {
                        expected,
                        record: MemberRecord { record, annotation },
                    },
                )
            }
        };
        self.write = Some(IssuedWrite {
            op,
            deadline,
            term,
            kind,
            seq: self.seq,
        });
        self.actions.push_back(ShardAction::Op {
            op,
            request,
            deadline,
        });
    }

    /// The annotation of the write `op`: what this member claims now (nothing if the write
    /// releases the Lease), and the shards it carries.
    fn annotation(&mut self, op: OpId, held: bool) -> String {
        let n = self.config.shards;
        // Adopted counters are at most MAX_ADOPTED_COUNTER: 2^52 writes from reaching
        // MAX_COUNTER, so this never saturates (nor writes an unreadable seq) in practice.
        self.seq = self.seq.saturating_add(1);
        self.epoch = self.epoch.max(self.view.max_epoch());
        let mut claims = MemberClaims::empty(n);
        claims.seq = self.seq;
        claims.epoch = self.epoch;
        if held && self.member {
            for (k, shard) in self.shards.iter_mut().enumerate() {
                let k = u32::try_from(k).unwrap_or(u32::MAX);
                match shard {
                    Shard::Idle => {}
                    Shard::Intended { carried, .. } => {
                        *carried = Some(op);
                        claims.pending.insert(k);
                    }
                    Shard::Fenced { carried, .. } => {
                        *carried = Some(op);
                        claims.active.insert(k);
                    }
                    Shard::Active { .. } | Shard::Stopping { .. } => {
                        claims.active.insert(k);
                    }
                }
            }
        } else if held {
            // Not a member (yet): only shards still stopping from an earlier term.
            for (k, shard) in self.shards.iter().enumerate() {
                if matches!(shard, Shard::Stopping { .. }) {
                    claims.active.insert(u32::try_from(k).unwrap_or(u32::MAX));
                }
            }
        }
        claims.encode(&self.config.group)
    }

    fn handle_member_event(&mut self, event: Event) {
        match &event {
            Event::StartedLeading { .. } => {
                self.member = true;
                self.live = None;
            }
            Event::StoppedLeading { reason } => {
                self.member = false;
                self.live = None;
                self.owe_work_stopped = true;
                for k in 0..self.shards.len() {
                    let shard = &mut self.shards[k];
                    match *shard {
                        Shard::Active { token } => {
                            *shard = Shard::Stopping { token };
                            let shard = u32::try_from(k).unwrap_or(u32::MAX);
                            self.actions
                                .push_back(ShardAction::Emit(ShardEvent::ShardStopped {
                                    shard,
                                    token,
                                    reason: ShardStopReason::TermEnded(reason.clone()),
                                }));
                        }
                        Shard::Intended { .. } | Shard::Fenced { .. } => *shard = Shard::Idle,
                        Shard::Idle | Shard::Stopping { .. } => {}
                    }
                }
            }
            _ => {}
        }
        self.actions
            .push_back(ShardAction::Emit(ShardEvent::Member(event)));
    }

    fn elector_write_soon(&mut self) {
        // The elector's clock first: it last heard of time at its own last input, and a
        // renewal brought forward must be weighed against now.
        self.elector
            .handle_input(Input::Timeout(Now::new(self.now, self.wall)));
        self.elector.write_soon();
        self.pump_elector();
    }

    // ----- the protocol -----

    /// After every input: the elector's actions, the targets, the fences, the polls.
    fn step(&mut self) {
        self.pump_elector();
        if self.owe_work_stopped
            && !self
                .shards
                .iter()
                .any(|s| matches!(s, Shard::Stopping { .. }))
        {
            self.owe_work_stopped = false;
            self.elector
                .handle_input(Input::LeaderWorkStopped(Now::new(self.now, self.wall)));
            self.pump_elector();
        }
        self.expire_list();
        self.report_incompatible();
        if self.member {
            self.retarget();
            self.maybe_fence_list();
        }
        self.maybe_poll_list();
    }

    fn expire_list(&mut self) {
        if self.list.is_some_and(|l| self.now >= l.deadline) {
            self.list = None;
        }
    }

    fn report_incompatible(&mut self) {
        for (name, e) in &self.view.entries {
            if let Claimed::Incompatible(reason) = &e.claimed
                && e.holder().is_some()
                && self.reported.get(name) != Some(reason)
            {
                self.reported.insert(name.clone(), reason.clone());
                self.actions
                    .push_back(ShardAction::Emit(ShardEvent::IncompatibleMember {
                        name: name.clone(),
                        reason: reason.clone(),
                    }));
            }
        }
    }

    /// Recomputes the targets when the live members changed, and moves the shards towards
    /// them: new targets are intended, shards no longer targeted are dropped (if not started)
    /// or told to stop.
    fn retarget(&mut self) {
        let ld = self.config.member.lease_duration;
        let me = self.config.member.identity.as_str();
        let mut live: Vec<String> = self
            .view
            .entries
            .iter()
            .filter(|(name, e)| *name != &self.config.lease_name && e.is_live(self.now, ld))
            .filter_map(|(_, e)| e.holder().map(|h| h.as_str().to_owned()))
            .filter(|h| h != me)
            .collect();
        live.push(me.to_owned());
        live.sort();
        live.dedup();
        if self.live.as_ref() == Some(&live) {
            return;
        }
        self.targets =
            hash::Members::new(live.iter().map(String::as_str)).owned_by(me, self.config.shards);
        self.live = Some(live);
        let mut changed = false;
        for k in 0..self.shards.len() {
            let kk = u32::try_from(k).unwrap_or(u32::MAX);
            let wanted = self.targets.contains(kk);
            let shard = &mut self.shards[k];
            match (*shard, wanted) {
                (Shard::Idle, true) => {
                    *shard = Shard::Intended {
                        carried: None,
                        committed: None,
                    };
                    changed = true;
                }
                (Shard::Intended { .. } | Shard::Fenced { .. }, false) => {
                    *shard = Shard::Idle;
                    changed = true;
                }
                (Shard::Active { token }, false) => {
                    *shard = Shard::Stopping { token };
                    self.actions
                        .push_back(ShardAction::Emit(ShardEvent::ShardStopped {
                            shard: kk,
                            token,
                            reason: ShardStopReason::Moved,
                        }));
                }
                _ => {}
            }
        }
        if changed {
            self.elector_write_soon();
        }
    }

    /// Whether `k` passes the fence in the view (a cut when just listed) witnessed at
    /// `witness`: no other Lease claims it, unless released or confirmed expired, and no
    /// vanished Lease may still claim it.
    fn passes(&self, k: u32, witness: Instant) -> bool {
        let ld = self.config.member.lease_duration;
        let others_clear = self.view.entries.iter().all(|(name, e)| {
            name == &self.config.lease_name || !e.claims(k) || witness >= e.expires_at(ld)
        });
        let vanished_clear = self.view.vanished.iter().all(|(name, v)| {
            name == &self.config.lease_name
                || !v.last.claims(k)
                || witness >= v.absent_since + v.last.lease_duration(ld)
        });
        others_clear && vanished_clear
    }

    /// The shards whose intent committed before `sent` (strictly: the list must have gone
    /// out after the answer that committed it).
    fn fence_candidates(&self, sent: Mark) -> impl Iterator<Item = u32> + '_ {
        self.shards
            .iter()
            .enumerate()
            .filter_map(move |(k, s)| match s {
                Shard::Intended {
                    committed: Some(c), ..
                } if *c < sent => u32::try_from(k).ok(),
                _ => None,
            })
    }

    /// The next mark.
    fn next_mark(&mut self) -> Mark {
        self.mark = Mark(self.mark.0 + 1);
        self.mark
    }

    /// The fence, on a list sent at `witness` (and at mark `sent`) whose answer is now the
    /// view.
    fn fence(&mut self, witness: Instant, sent: Mark) {
        if !self.member {
            return;
        }
        let own_is_ours = self
            .view
            .entries
            .get(&self.config.lease_name)
            .is_some_and(|e| e.holder() == Some(&self.config.member.identity));
        if !own_is_ours {
            return;
        }
        self.retarget();
        let passed: Vec<u32> = self
            .fence_candidates(sent)
            .filter(|&k| self.passes(k, witness))
            .collect();
        if passed.is_empty() {
            return;
        }
        let token = self.epoch.max(self.view.max_epoch()).saturating_add(1);
        self.epoch = token;
        for k in passed {
            if let Some(shard @ Shard::Intended { .. }) = self.shards.get_mut(k as usize)
                && let Shard::Intended {
                    committed: Some(committed),
                    ..
                } = *shard
            {
                *shard = Shard::Fenced {
                    token: FencingToken(token),
                    carried: None,
                    committed,
                };
            }
        }
        self.elector_write_soon();
    }

    /// Lists the group for a fence when the view suggests some committed intent would pass.
    fn maybe_fence_list(&mut self) {
        if self.list.is_some() {
            return;
        }
        let now = self.now;
        let next = Mark(self.mark.0 + 1);
        let hopeful = self.fence_candidates(next).any(|k| self.passes(k, now));
        if hopeful {
            self.issue_list();
        }
    }

    /// Without a watch, lists the group every retry period.
    fn maybe_poll_list(&mut self) {
        if self.watching || self.list.is_some() || self.now < self.next_poll {
            return;
        }
        if self.issue_list() {
            self.next_poll = self.now + self.config.member.retry_period;
        }
    }

    /// When the list budget next allows a list (now, if it does).
    fn list_budget_free_at(&self) -> Instant {
        let rp = self.config.member.retry_period;
        let recent: Vec<Instant> = self
            .lists
            .iter()
            .copied()
            .filter(|&at| self.now < at + rp)
            .collect();
        if recent.len() < MAX_LISTS_PER_RETRY_PERIOD {
            self.now
        } else {
            recent[recent.len() - MAX_LISTS_PER_RETRY_PERIOD] + rp
        }
    }

    /// Sends a list if the budget allows; whether it did.
    fn issue_list(&mut self) -> bool {
        let rp = self.config.member.retry_period;
        while self.lists.front().is_some_and(|&at| self.now >= at + rp) {
            self.lists.pop_front();
        }
        if self.lists.len() >= MAX_LISTS_PER_RETRY_PERIOD || self.done {
            return false;
        }
        self.lists.push_back(self.now);
        self.next_list_op += 1;
        let op = OpId(LIST_OP | self.next_list_op);
        let deadline = self.now + self.config.member.operation_timeout();
        let sent = self.next_mark();
        self.list = Some(IssuedList {
            op,
            issued_at: self.now,
            sent,
            deadline,
        });
        self.actions.push_back(ShardAction::Op {
            op,
            request: GroupRequest::List,
            deadline,
        });
        true
    }
}
