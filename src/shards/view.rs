//! The group as this member has seen it: each member Lease's last record, what it claims, and
//! when this member first saw that version of it.
//!
//! Nothing here reads a clock: `first_seen` is the instant of the input that first showed a
//! version. It is never earlier than the write that made the version (a record is seen only
//! after it was committed), which is all the fence needs (see [`super`], rule F).

use std::collections::BTreeMap;
use std::time::Duration;

use super::claims::MemberClaims;
use super::io::MemberSighting;
use crate::record::{Identity, LeaderElectionRecord, Version};
use crate::time::Instant;

/// What a member Lease claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Claimed {
    /// Its annotation, decoded.
    Known(MemberClaims),
    /// An annotation this member cannot read, or none on a held Lease: it claims every shard.
    Incompatible(String),
}

/// One member Lease, as last seen.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub version: Version,
    pub record: LeaderElectionRecord,
    pub claimed: Claimed,
    pub terminating: bool,
    /// When this member first saw `version`.
    pub first_seen: Instant,
}

impl Entry {
    pub fn from_sighting(s: MemberSighting, now: Instant, group: &str, shards: u32) -> Entry {
        let claimed = match (&s.record.holder, s.annotation.as_deref()) {
            // A released Lease claims nothing, whatever its annotation says; its epoch still
            // counts (the last owner's tokens must stay below the next one's).
            (None, text) => {
                let mut c = MemberClaims::empty(shards);
                if let Some(old) = text.and_then(|t| MemberClaims::decode(t, group, shards).ok()) {
                    c.epoch = old.epoch;
                    c.seq = old.seq;
                }
                Claimed::Known(c)
            }
            (Some(_), None) => Claimed::Incompatible("a holder but no shard annotation".into()),
            (Some(_), Some(text)) => match MemberClaims::decode(text, group, shards) {
                Ok(c) => Claimed::Known(c),
                Err(e) => Claimed::Incompatible(e.to_string()),
            },
        };
        Entry {
            version: s.version,
            record: s.record,
            claimed,
            terminating: s.terminating,
            first_seen: now,
        }
    }

    /// The member's identity, if the Lease names a holder.
    pub fn holder(&self) -> Option<&Identity> {
        self.record.holder.as_ref()
    }

    /// Whether the Lease claims `shard`: a held Lease claims its `active` and `pending`
    /// shards, or every shard if this member cannot read it.
    pub fn claims(&self, shard: u32) -> bool {
        self.holder().is_some()
            && match &self.claimed {
                Claimed::Known(c) => c.active.contains(shard) || c.pending.contains(shard),
                Claimed::Incompatible(_) => true,
            }
    }

    /// Whether the Lease claims any shard.
    pub fn claims_any(&self) -> bool {
        self.holder().is_some()
            && match &self.claimed {
                Claimed::Known(c) => !c.active.is_empty() || !c.pending.is_empty(),
                Claimed::Incompatible(_) => true,
            }
    }

    /// The epoch the Lease carries (0 if unreadable, or above
    /// [`MAX_ADOPTED_COUNTER`](super::claims::MAX_ADOPTED_COUNTER)).
    pub fn epoch(&self) -> u64 {
        match &self.claimed {
            Claimed::Known(c) => super::claims::adopted(c.epoch),
            Claimed::Incompatible(_) => 0,
        }
    }

    /// How long after `first_seen` the holder's term (anchored at a write no later than the
    /// record) has certainly ended, by this member's clock: the longer of the record's lease
    /// duration and ours (a record of 0 s counts as ours, as the elector does).
    pub fn lease_duration(&self, ours: Duration) -> Duration {
        Duration::from_secs(u64::from(self.record.lease_duration_seconds)).max(ours)
    }

    /// The instant from which a cut witnessed no earlier shows this version's holder as
    /// certainly gone (if the cut still shows this version).
    pub fn expires_at(&self, ours: Duration) -> Instant {
        self.first_seen + self.lease_duration(ours)
    }

    /// Whether this version is the one the member would want to count as alive: held,
    /// readable, not terminating, not leaving, and not yet past its lease as seen from here.
    pub fn is_live(&self, now: Instant, ours: Duration) -> bool {
        self.holder().is_some()
            && !self.terminating
            && matches!(&self.claimed, Claimed::Known(c) if !c.leaving)
            && now < self.expires_at(ours)
    }
}

/// A member Lease that disappeared while it claimed shards (deleted around its finalizer):
/// it still claims them until a cut witnessed a lease duration after the absence was first
/// seen shows it still absent.
#[derive(Debug, Clone)]
pub(super) struct Vanished {
    pub last: Entry,
    pub absent_since: Instant,
}

/// The group: every member Lease last seen, by name.
#[derive(Debug, Clone, Default)]
pub(super) struct GroupView {
    pub entries: BTreeMap<String, Entry>,
    pub vanished: BTreeMap<String, Vanished>,
}

impl GroupView {
    /// Records a sighting: a new version is dated `now`; a version already seen keeps its
    /// first date.
    pub fn apply(&mut self, s: MemberSighting, now: Instant, group: &str, shards: u32) {
        if let Some(old) = self.entries.get(&s.name)
            && old.version == s.version
        {
            let first_seen = old.first_seen;
            let mut entry = Entry::from_sighting(s.clone(), now, group, shards);
            entry.first_seen = first_seen;
            self.entries.insert(s.name, entry);
            return;
        }
        self.vanished.remove(&s.name);
        let name = s.name.clone();
        self.entries
            .insert(name, Entry::from_sighting(s, now, group, shards));
    }

    /// Records that `name` is absent.
    pub fn remove(&mut self, name: &str, now: Instant) {
        if let Some(last) = self.entries.remove(name)
            && last.claims_any()
        {
            self.vanished.entry(name.to_owned()).or_insert(Vanished {
                last,
                absent_since: now,
            });
        }
    }

    /// Replaces the view with a whole cut of the group.
    pub fn replace(&mut self, cut: Vec<MemberSighting>, now: Instant, group: &str, shards: u32) {
        let present: std::collections::BTreeSet<&str> =
            cut.iter().map(|s| s.name.as_str()).collect();
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|name| !present.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove(&name, now);
        }
        for s in cut {
            self.apply(s, now, group, shards);
        }
    }

    /// Forgets vanished Leases whose claims a cut witnessed at `witness` has shown to be over.
    pub fn forget_vanished(&mut self, witness: Instant, ours: Duration) {
        self.vanished
            .retain(|_, v| witness < v.absent_since + v.last.lease_duration(ours));
    }

    /// The largest epoch any Lease in the view carries.
    pub fn max_epoch(&self) -> u64 {
        self.entries
            .values()
            .chain(self.vanished.values().map(|v| &v.last))
            .map(Entry::epoch)
            .max()
            .unwrap_or(0)
    }
}
