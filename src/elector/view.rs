//! What the elector knows of the lock: the last record it saw and since when, or that the lock
//! was absent and how long that absence must still be treated as a held lock.

use std::time::Duration;

use crate::record::{LeaderElectionRecord, Version, Versioned};
use crate::time::Instant;

/// The lock as last seen.
#[derive(Debug, Clone, Default)]
pub(super) enum View {
    /// Never seen.
    #[default]
    Unread,
    /// Seen absent.
    Absent(Absence),
    /// Seen holding a record.
    Present(Observed),
}

/// A record, its version, and when it was first seen.
#[derive(Debug, Clone)]
pub(super) struct Observed {
    pub(super) version: Version,
    pub(super) record: LeaderElectionRecord,
    /// The local instant the first read or watch event showing this *record* was received.
    /// A new version with the same record (a write to labels, other annotations, an
    /// Endpoints object's subsets) keeps it: failover follows the record, as in client-go.
    /// INVARIANT (for safety): every write of an elector changes the record, so a renewal
    /// always moves `observed_at`.
    pub(super) observed_at: Instant,
    /// Who wrote the record, as far as this elector can tell (it matters only for a record that
    /// names this candidate).
    pub(super) origin: Origin,
    /// The longest `leaseDurationSeconds` any record of this term (same holder, acquire time
    /// and transitions) showed: an edit that shortens the lease mid-term (by hand, say) must
    /// not shorten the wait for a leader whose term rests on the longer one.
    pub(super) term_lease_seconds: u32,
}

/// Whether two records belong to the same term: the same holder, acquired at the same time,
/// with the same transitions.
fn same_term(a: &LeaderElectionRecord, b: &LeaderElectionRecord) -> bool {
    a.holder == b.holder
        && a.acquire_time == b.acquire_time
        && a.leader_transitions == b.leader_transitions
}

/// Who wrote a record that names this candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// This elector, in this incarnation: it may renew it.
    Ours,
    /// Someone else, who moved the lock to this candidate from another holder (or none): in
    /// coordinated election, the election controller's choice.
    Handed,
    /// Someone else, or no telling: an earlier incarnation of this candidate (a restart), a
    /// candidate with the same identity, or a record that does not name this candidate. Such a
    /// record is another holder's: it expires as any other does.
    Foreign,
}

/// The lock was found absent.
#[derive(Debug, Clone, Default)]
pub(super) struct Absence {
    /// Until when the absent lock counts as held: set when the lock was seen present before.
    /// Some leader's term may rest on a write made before the deletion that this elector never
    /// saw, and that term ends within its renew deadline of the deletion: waiting a lease
    /// duration from the first sight of the absence covers it, as a lease expiry would.
    pub(super) held_until: Option<Instant>,
}

impl View {
    /// The view after seeing `seen` at `now`, written by `origin`; `lease_duration` is this
    /// elector's own.
    pub(super) fn seen(
        self,
        seen: Option<Versioned<LeaderElectionRecord>>,
        origin: Origin,
        now: Instant,
        lease_duration: Duration,
    ) -> View {
        match (seen, self) {
            (Some(seen), View::Present(o)) if o.record == seen.value => View::Present(Observed {
                version: seen.version,
                ..o
            }),
            (Some(seen), previous) => {
                let term_lease_seconds = match previous {
                    View::Present(o) if same_term(&o.record, &seen.value) => {
                        o.term_lease_seconds.max(seen.value.lease_duration_seconds)
                    }
                    _ => seen.value.lease_duration_seconds,
                };
                View::Present(Observed {
                    version: seen.version,
                    record: seen.value,
                    observed_at: now,
                    origin,
                    term_lease_seconds,
                })
            }
            (None, View::Present(o)) => {
                let lease =
                    Duration::from_secs(u64::from(o.term_lease_seconds)).max(lease_duration);
                View::Absent(Absence {
                    held_until: Some(now + lease),
                })
            }
            (None, View::Absent(a)) => View::Absent(a),
            (None, View::Unread) => View::Absent(Absence::default()),
        }
    }

    /// The record, when the lock was last seen present.
    pub(super) fn present(&self) -> Option<&Observed> {
        match self {
            View::Present(o) => Some(o),
            _ => None,
        }
    }
}
