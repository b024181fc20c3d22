//! MultiLock: two locks kept in step, for moving from one kind of lock to another.

use crate::lock::{Lock, LockError, LockErrorKind, Sighting};
use crate::record::{Identity, LeaderElectionRecord, UNKNOWN_LEADER, Version, Versioned};

/// A primary and a secondary lock treated as one, as client-go's MultiLock (used to migrate
/// from Endpoints or ConfigMap locks to Leases while old and new clients run side by side).
///
/// * `get` reads both. A missing secondary is not an error: the primary's record stands (an
///   old client that knows only the primary holds it, or our own write of the secondary
///   failed, which the next update repairs by creating it), and the same for a missing
///   primary. When the two name different holders, the record names [`UNKNOWN_LEADER`],
///   which nobody can be, so nobody takes over until it expires; a renewal of either object
///   changes the combined record, so a client that writes only one of them is seen alive.
/// * `create` creates the primary, then the secondary. Either one existing is a lost race
///   (client-go ignores an existing primary and goes on to lead next to whoever created it).
/// * `update` writes each object conditional on the version the elector saw of it (creating
///   one that was absent), primary first.
///
/// The version is both objects' versions together; a change in either is a change.
pub struct MultiLock<P, S> {
    primary: P,
    secondary: S,
}

impl<P: Lock, S: Lock> MultiLock<P, S> {
    /// Combines `primary` and `secondary`.
    pub fn new(primary: P, secondary: S) -> Self {
        MultiLock { primary, secondary }
    }
}

/// Both records as one: the holder when they agree, else [`UNKNOWN_LEADER`]; and a record
/// that changes whenever either does (the later renew time, the longer lease, the higher
/// transitions), so that a client that renews only the secondary is seen alive, as client-go
/// sees it by comparing both raw records.
fn combined(
    mut primary: LeaderElectionRecord,
    secondary: &LeaderElectionRecord,
) -> LeaderElectionRecord {
    if primary.holder != secondary.holder {
        primary.holder = Some(Identity(UNKNOWN_LEADER.to_string()));
    }
    primary.renew_time = primary.renew_time.max(secondary.renew_time);
    primary.lease_duration_seconds = primary
        .lease_duration_seconds
        .max(secondary.lease_duration_seconds);
    primary.leader_transitions = primary.leader_transitions.max(secondary.leader_transitions);
    primary
}

/// The combined version: `primary|secondary` (either empty when absent).
fn join(primary: &Version, secondary: Option<&Version>) -> Version {
    Version::new(format!(
        "{}|{}",
        primary.as_str(),
        secondary.map_or("", Version::as_str)
    ))
}

fn split(version: &Version) -> Option<(Version, Option<Version>)> {
    let (p, s) = version.as_str().split_once('|')?;
    Some((Version::new(p), (!s.is_empty()).then(|| Version::new(s))))
}

impl<P: Lock, S: Lock> Lock for MultiLock<P, S> {
    async fn get(&self) -> Result<Sighting, LockError> {
        let primary = self.primary.get().await?;
        let secondary = self.secondary.get().await?;
        Ok(match (primary, secondary) {
            (None, None) => None,
            // Held by an old client that does not know the secondary, or by us after a failed
            // write of the secondary: the primary rules, and our next update creates it.
            (Some(primary), None) => Some(Versioned {
                version: join(&primary.version, None),
                value: primary.value,
            }),
            // A secondary whose primary was deleted (or a new-only client): it rules, and an
            // update recreates the primary.
            (None, Some(secondary)) => Some(Versioned {
                version: join(&Version::new(""), Some(&secondary.version)),
                value: secondary.value,
            }),
            (Some(primary), Some(secondary)) => Some(Versioned {
                version: join(&primary.version, Some(&secondary.version)),
                value: combined(primary.value, &secondary.value),
            }),
        })
    }

    async fn create(&self, record: LeaderElectionRecord) -> Result<Version, LockError> {
        // Either object already there is a lost race: someone (perhaps an old, primary-only
        // client) created it first. client-go ignores an existing primary and leads alongside.
        let primary = self.primary.create(record.clone()).await?;
        let secondary = self.secondary.create(record).await?;
        Ok(join(&primary, Some(&secondary)))
    }

    async fn update(
        &self,
        expected: Version,
        record: LeaderElectionRecord,
    ) -> Result<Version, LockError> {
        let Some((primary_expected, secondary_expected)) = split(&expected) else {
            return Err(LockError::new(
                LockErrorKind::Conflict,
                format!("{expected} is not a version of {}", self.describe()),
            ));
        };
        // Each write is conditional on what the elector saw of that object: a renewal of
        // either by someone else since then makes it fail.
        let primary = if primary_expected.as_str().is_empty() {
            self.primary.create(record.clone()).await?
        } else {
            self.primary
                .update(primary_expected, record.clone())
                .await?
        };
        let secondary = match secondary_expected {
            None => self.secondary.create(record).await?,
            Some(v) => self.secondary.update(v, record).await?,
        };
        Ok(join(&primary, Some(&secondary)))
    }

    fn describe(&self) -> String {
        format!("{}+{}", self.primary.describe(), self.secondary.describe())
    }

    /// The coarser of the two: a write must change both records.
    fn time_precision(&self) -> std::time::Duration {
        self.primary
            .time_precision()
            .max(self.secondary.time_precision())
    }

    async fn record_event(&self, message: &str) {
        self.primary.record_event(message).await;
        self.secondary.record_event(message).await;
    }
}

#[cfg(test)]
mod tests {
    //! client-go's MultiLock cases (reference 3.10, v0.17-v0.27), on two in-memory locks with
    //! the elector in the loop where the case is about acquiring.

    use super::*;
    use crate::lock::MemoryLock;
    use crate::{Action, Config, Elector, Event, Input, Instant, Now, Timestamp};
    use std::time::Duration;

    fn record(holder: &str) -> LeaderElectionRecord {
        LeaderElectionRecord {
            holder: Identity::new(holder).ok(),
            lease_duration_seconds: 10,
            ..Default::default()
        }
    }

    fn baz() -> Identity {
        Identity::new("baz").expect("non-empty")
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        // These futures never wait: the in-memory lock answers at once.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    /// Drives an elector for `baz` against the lock for `secs` seconds (instant answers).
    fn drive(lock: &MultiLock<MemoryLock, MemoryLock>, secs: u64) -> (bool, Vec<Event>) {
        let mut config = Config::new(baz());
        config.lease_duration = Duration::from_secs(10);
        config.renew_deadline = Duration::from_secs(5);
        let mut now = Now::new(Instant::ZERO, Timestamp::UNIX_EPOCH);
        let mut e = Elector::new(config, now, 1).expect("valid");
        let mut events = Vec::new();
        loop {
            match e.poll_action() {
                Action::Lock { op, request, .. } => {
                    let result = block_on(lock.execute(request));
                    e.handle_input(Input::LockResult { now, op, result });
                }
                Action::Emit(ev) => events.push(ev),
                Action::SleepUntil { at, .. } if at <= Instant::from_secs(secs) => {
                    now = Now::new(at, Timestamp::UNIX_EPOCH);
                    e.handle_input(Input::Timeout(now));
                }
                Action::SleepUntil { .. } | Action::Done => break,
            }
        }
        (e.is_leader(now.instant), events)
    }

    fn multi() -> (MemoryLock, MemoryLock, MultiLock<MemoryLock, MemoryLock>) {
        let (p, s) = (MemoryLock::new(), MemoryLock::new());
        let m = MultiLock::new(p.clone(), s.clone());
        (p, s, m)
    }

    #[test]
    fn acquire_from_no_object_creates_both() {
        let (p, s, m) = multi();
        assert!(drive(&m, 0).0);
        assert!(p.get().is_some_and(|r| r.value.is_held_by(&baz())));
        assert!(s.get().is_some_and(|r| r.value.is_held_by(&baz())));
    }

    #[test]
    fn acquire_from_unled_old_object_creates_the_secondary() {
        let (p, s, m) = multi();
        p.create(LeaderElectionRecord::default()).expect("absent");
        assert!(drive(&m, 0).0);
        assert!(s.get().is_some_and(|r| r.value.is_held_by(&baz())));
    }

    #[test]
    fn acquire_from_unled_transition_object() {
        let (p, s, m) = multi();
        p.create(LeaderElectionRecord::default()).expect("absent");
        s.create(LeaderElectionRecord::default()).expect("absent");
        assert!(drive(&m, 0).0);
        assert_eq!(s.get().map(|r| r.value.leader_transitions), Some(1));
    }

    #[test]
    fn acquire_from_led_unacked_old_and_transition_objects() {
        // old object: only the primary, held by bing, never renewed
        let (p, _s, m) = multi();
        p.create(record("bing")).expect("absent");
        assert!(drive(&m, 20).0, "taken after the lease");
        // transition object: both held by bing
        let (p, s, m) = multi();
        p.create(record("bing")).expect("absent");
        s.create(record("bing")).expect("absent");
        assert!(drive(&m, 20).0);
    }

    #[test]
    fn conflicting_holders_read_as_unknown_and_block() {
        let (p, s, m) = multi();
        p.create(record("bing")).expect("absent");
        s.create(record("baz")).expect("absent");
        let seen = block_on(m.get()).expect("readable").expect("present");
        assert_eq!(
            seen.value.holder.as_ref().map(Identity::as_str),
            Some(UNKNOWN_LEADER)
        );
        let (leading, events) = drive(&m, 5);
        assert!(
            !leading,
            "acquire from conflict led, ack transition object: false"
        );
        assert!(events.contains(&Event::NewLeader(Identity::new(UNKNOWN_LEADER).ok())));
        // "acquire from led, unack unknown object": once the unknown holder's lease passes
        // unchanged, baz takes both.
        assert!(drive(&m, 30).0);
        assert!(p.get().is_some_and(|r| r.value.is_held_by(&baz())));
    }

    #[test]
    fn dont_acquire_from_led_acked_objects() {
        // old object
        let (p, _s, m) = multi();
        p.create(record("bing")).expect("absent");
        assert!(!drive(&m, 5).0);
        // new object, both held by bing
        let (p, s, m) = multi();
        p.create(record("bing")).expect("absent");
        s.create(record("bing")).expect("absent");
        let (leading, events) = drive(&m, 5);
        assert!(!leading);
        assert!(events.contains(&Event::NewLeader(Identity::new("bing").ok())));
    }

    #[test]
    fn renew_already_acquired_object() {
        // Records naming baz that this elector did not write: waited out (10 s), then taken
        // with a higher token, and renewed past one renew deadline.
        let (p, s, m) = multi();
        p.create(record("baz")).expect("absent");
        s.create(record("baz")).expect("absent");
        assert!(!drive(&m, 9).0, "not before the lease expired");
        assert!(drive(&m, 16).0, "taken, then renewed");
        assert_eq!(p.get().map(|r| r.value.leader_transitions), Some(1));
    }

    #[test]
    fn a_primary_created_by_an_old_client_first_is_a_lost_race() {
        // An old, primary-only client creates the primary between our read and our create:
        // before, our create ignored that and we led alongside it.
        let (p, s, m) = multi();
        p.create(record("bing")).expect("absent");
        let err = block_on(m.create(record("baz"))).expect_err("lost race");
        assert_eq!(err.kind, LockErrorKind::AlreadyExists);
        assert!(
            p.get()
                .is_some_and(|r| r.value.is_held_by(&Identity::new("bing").expect("id")))
        );
        assert_eq!(s.get(), None, "no secondary written");
    }

    #[test]
    fn a_missing_secondary_under_our_primary_is_repaired() {
        // Our create of the secondary failed once: before, every read then said NotFound and
        // the candidate never led again.
        let (p, s, m) = multi();
        p.create(record("baz")).expect("absent");
        let seen = block_on(m.get()).expect("readable").expect("present");
        assert!(seen.value.is_held_by(&baz()));
        // Another incarnation's record: taken once it expired, creating the secondary.
        assert!(drive(&m, 16).0, "takes it, creating the secondary");
        assert!(s.get().is_some_and(|r| r.value.is_held_by(&baz())));
    }

    #[test]
    fn a_client_that_renews_only_the_secondary_is_seen_alive() {
        // Migration: a Lease-only client (bing) leads and renews the secondary; the primary
        // still holds an old record. Before, the combined record never changed and a MultiLock
        // follower took over after one lease, next to the live leader.
        let (p, s, m) = multi();
        p.create(record("old")).expect("absent");
        let mut v = s.create(record("bing")).expect("absent");
        let mut config = Config::new(baz());
        config.lease_duration = Duration::from_secs(10);
        config.renew_deadline = Duration::from_secs(5);
        let wall = |t: u64| {
            Timestamp::from_unix_micros(
                1_700_000_000_000_000 + i64::try_from(t).unwrap_or(0) * 1_000_000,
            )
            .unwrap_or(Timestamp::UNIX_EPOCH)
        };
        let mut e = Elector::new(config, Now::new(Instant::ZERO, wall(0)), 1).expect("valid");
        for t in 0..60u64 {
            let now = Now::new(Instant::from_secs(t), wall(t));
            if t % 2 == 0 {
                let mut renewed = record("bing");
                renewed.renew_time = Some(wall(t));
                v = s.update(&v, renewed).expect("bing renews");
            }
            e.handle_input(Input::Timeout(now));
            loop {
                match e.poll_action() {
                    Action::Lock { op, request, .. } => {
                        let result = block_on(m.execute(request));
                        e.handle_input(Input::LockResult { now, op, result });
                    }
                    Action::Emit(_) => {}
                    Action::SleepUntil { .. } | Action::Done => break,
                }
            }
            assert!(
                !e.is_leader(now.instant),
                "took over a live leader at {t} s"
            );
        }
        let _ = p;
    }

    #[test]
    fn a_foreign_version_string_is_a_conflict() {
        let (_p, _s, m) = multi();
        let err = block_on(m.update(Version::new("no-separator"), record("baz")));
        assert_eq!(err.map_err(|e| e.kind), Err(LockErrorKind::Conflict));
    }
}
