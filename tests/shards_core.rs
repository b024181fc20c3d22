//! The shard member's rules, driven by hand on the in-memory group: stop before release, no
//! start on a record that moved on, and garbage input.

use std::time::Duration;

use leasehold::record::LeaderElectionRecord;
use leasehold::shards::{
    GroupChange, GroupRequest, GroupResponse, MemberSighting, MemoryGroup, MemoryMember,
    ShardAction, ShardConfig, ShardEvent, ShardInput, ShardMember,
};
use leasehold::{Config, Identity, Instant, LockError, LockErrorKind, Now, OpId, Timestamp, Version};
use proptest::prelude::*;

fn at(ms: u64) -> Now {
    Now::new(
        Instant::from_millis(ms),
        Timestamp::from_unix_micros(1_700_000_000_000_000 + ms as i64 * 1000)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

fn member(group: &MemoryGroup, name: &str, shards: u32) -> (ShardMember, MemoryMember) {
    let mut config = Config::new(Identity::new(name).expect("non-empty"));
    config.time_precision = Duration::from_micros(1);
    config.observation = leasehold::Observation::Watch;
    let config = ShardConfig::new(config, "g", shards);
    let lease = group.member(config.lease_name.clone());
    (ShardMember::new(config, at(0), 7).expect("valid"), lease)
}

/// Carries out operations at once; returns the events.
fn drain(m: &mut ShardMember, lease: &MemoryMember, now: Now) -> Vec<ShardEvent> {
    let mut events = Vec::new();
    loop {
        match m.poll_action() {
            ShardAction::Op { op, request, .. } => {
                let result = lease.execute(&request);
                m.handle_input(ShardInput::Result { now, op, result });
            }
            ShardAction::Emit(e) => events.push(e),
            ShardAction::SleepUntil { .. } | ShardAction::Done => return events,
        }
    }
}

fn started(events: &[ShardEvent]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            ShardEvent::ShardStarted { shard, .. } => Some(*shard),
            _ => None,
        })
        .collect()
}

#[test]
fn a_lone_member_owns_every_shard_and_a_joiner_waits_for_the_stop() {
    let group = MemoryGroup::new();
    let (mut a, la) = member(&group, "a", 8);
    let events = drain(&mut a, &la, at(0));
    assert_eq!(started(&events).len(), 8, "{events:?}");
    // b joins: it sees a claiming everything, so it starts nothing yet.
    let (mut b, lb) = member(&group, "b", 8);
    let events = drain(&mut b, &lb, at(10));
    assert!(started(&events).is_empty(), "{events:?}");
    // a learns of b (a list, as a poll would bring) and is told to stop b's shards.
    a.handle_input(ShardInput::Observed {
        now: at(20),
        change: GroupChange::Snapshot(group.list()),
    });
    let events = drain(&mut a, &la, at(20));
    let stopping: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            ShardEvent::ShardStopped { shard, .. } => Some(*shard),
            _ => None,
        })
        .collect();
    assert!(!stopping.is_empty(), "{events:?}");
    // Until a reports the stops, b's fences fail, however often it lists.
    for t in [30, 2_000, 4_000] {
        b.handle_input(ShardInput::Observed {
            now: at(t),
            change: GroupChange::Snapshot(group.list()),
        });
        b.handle_input(ShardInput::Timeout(at(t)));
        assert!(started(&drain(&mut b, &lb, at(t))).is_empty());
        a.handle_input(ShardInput::Timeout(at(t)));
        drain(&mut a, &la, at(t));
    }
    a.handle_input(ShardInput::ShardsStopped {
        now: at(4_100),
        shards: stopping.clone(),
    });
    drain(&mut a, &la, at(4_100));
    b.handle_input(ShardInput::Observed {
        now: at(4_200),
        change: GroupChange::Snapshot(group.list()),
    });
    let mut got = started(&drain(&mut b, &lb, at(4_200)));
    got.sort_unstable();
    let mut want = stopping;
    want.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn a_record_that_moved_on_is_not_expired() {
    // b sees a's record, then nothing for longer than a lease (a stalled watch); a list shows
    // a newer version of a: b must not take a's shards.
    let group = MemoryGroup::new();
    let (mut a, la) = member(&group, "a", 4);
    drain(&mut a, &la, at(0));
    let (mut b, lb) = member(&group, "b", 4);
    b.handle_input(ShardInput::Observed {
        now: at(1),
        change: GroupChange::Snapshot(group.list()),
    });
    drain(&mut b, &lb, at(1));
    // Both run on; a renews (its record changes), but b's watch has stalled and tells it
    // nothing. Past a's lease as b saw it, b lists to fence a's shards, and finds a renewed.
    for t in (500..=40_000).step_by(500) {
        a.handle_input(ShardInput::Timeout(at(t)));
        drain(&mut a, &la, at(t));
        b.handle_input(ShardInput::Timeout(at(t)));
        let events = drain(&mut b, &lb, at(t));
        assert!(started(&events).is_empty(), "at {t} ms: {events:?}");
    }
    // (a, which lists the group itself, has meanwhile been told to stop b's share; it never
    // reported those stops, so they stay claimed and b can never take them.)
}

fn sighting_strategy() -> impl Strategy<Value = MemberSighting> {
    (
        "[a-z]{1,3}",
        "[0-9]{1,3}",
        proptest::option::of("[a-z]{1,4}"),
        0u32..40,
        proptest::option::of(".{0,40}"),
        any::<bool>(),
    )
        .prop_map(|(name, version, holder, ld, annotation, terminating)| MemberSighting {
            name: format!("g-{name}"),
            version: Version::new(version),
            record: LeaderElectionRecord {
                holder: holder.and_then(|h| Identity::new(h).ok()),
                lease_duration_seconds: ld,
                ..Default::default()
            },
            annotation,
            terminating,
        })
}

#[derive(Debug, Clone)]
enum Garbage {
    Timeout(u64),
    Observed(u64, Vec<MemberSighting>),
    Applied(u64, MemberSighting),
    Deleted(u64, String),
    Result(u64, u64, u8),
    Stopped(u64, Vec<u32>),
    Broken(u64),
    Shutdown(u64),
}

fn garbage() -> impl Strategy<Value = Garbage> {
    prop_oneof![
        (0u64..100_000).prop_map(Garbage::Timeout),
        (0u64..100_000, proptest::collection::vec(sighting_strategy(), 0..4))
            .prop_map(|(t, s)| Garbage::Observed(t, s)),
        (0u64..100_000, sighting_strategy()).prop_map(|(t, s)| Garbage::Applied(t, s)),
        (0u64..100_000, "[a-z-]{0,6}").prop_map(|(t, n)| Garbage::Deleted(t, n)),
        (0u64..100_000, any::<u64>(), 0u8..5).prop_map(|(t, op, k)| Garbage::Result(t, op, k)),
        (0u64..100_000, proptest::collection::vec(any::<u32>(), 0..4))
            .prop_map(|(t, s)| Garbage::Stopped(t, s)),
        (0u64..100_000).prop_map(Garbage::Broken),
        (0u64..100_000).prop_map(Garbage::Shutdown),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any input, in any order, with any clock: no panic, and the drain always ends.
    #[test]
    fn never_panics_on_any_input(inputs in proptest::collection::vec(garbage(), 0..40)) {
        let group = MemoryGroup::new();
        let (mut m, lease) = member(&group, "me", 16);
        for g in inputs {
            let input = match g {
                Garbage::Timeout(t) => ShardInput::Timeout(at(t)),
                Garbage::Observed(t, s) => ShardInput::Observed { now: at(t), change: GroupChange::Snapshot(s) },
                Garbage::Applied(t, s) => ShardInput::Observed { now: at(t), change: GroupChange::Applied(s) },
                Garbage::Deleted(t, n) => ShardInput::Observed { now: at(t), change: GroupChange::Deleted(n) },
                Garbage::Result(t, op, k) => ShardInput::Result {
                    now: at(t),
                    op: OpId(op),
                    result: match k {
                        0 => Ok(GroupResponse::Written(Version::new("1"))),
                        1 => Ok(GroupResponse::Listed(group.list())),
                        2 => Ok(GroupResponse::Member(None)),
                        3 => Err(LockError::new(LockErrorKind::Timeout, "late")),
                        _ => lease.execute(&GroupRequest::Get),
                    },
                },
                Garbage::Stopped(t, s) => ShardInput::ShardsStopped { now: at(t), shards: s },
                Garbage::Broken(t) => ShardInput::WatchBroken(at(t)),
                Garbage::Shutdown(t) => ShardInput::Shutdown(at(t)),
            };
            m.handle_input(input);
            let mut n = 0;
            loop {
                n += 1;
                prop_assert!(n < 10_000, "the drain does not end");
                match m.poll_action() {
                    ShardAction::Op { op, request, .. } => {
                        let result = lease.execute(&request);
                        m.handle_input(ShardInput::Result { now: at(0), op, result });
                    }
                    ShardAction::Emit(_) => {}
                    ShardAction::SleepUntil { .. } | ShardAction::Done => break,
                }
            }
        }
    }
}
