//! The shard member's rules, driven by hand on the in-memory group: stop before release, no
//! start on a record that moved on, and garbage input.

use std::time::Duration;

use leasehold::record::LeaderElectionRecord;
use leasehold::shards::claims::{MAX_COUNTER, MemberClaims};
use leasehold::shards::{
    GroupChange, GroupRequest, GroupResponse, GroupResult, MemberRecord, MemberSighting,
    MemoryGroup, MemoryMember, ShardAction, ShardConfig, ShardConfigError, ShardEvent, ShardInput,
    ShardMember,
};
use leasehold::{
    Config, FencingToken, Identity, Instant, LockError, LockErrorKind, Now, OpId, Timestamp,
    Version,
};
use proptest::prelude::*;

fn at(ms: u64) -> Now {
    Now::new(
        Instant::from_millis(ms),
        Timestamp::from_unix_micros(1_700_000_000_000_000 + ms as i64 * 1000)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

fn member(group: &MemoryGroup, name: &str, shards: u32) -> (ShardMember, MemoryMember) {
    member_observing(group, name, shards, leasehold::Observation::Watch)
}

fn member_observing(
    group: &MemoryGroup,
    name: &str,
    shards: u32,
    observation: leasehold::Observation,
) -> (ShardMember, MemoryMember) {
    let mut config = Config::new(Identity::new(name).expect("non-empty"));
    config.time_precision = Duration::from_micros(1);
    config.observation = observation;
    let config = ShardConfig::new(config, "g", shards);
    let lease = group.member(config.lease_name.clone());
    (ShardMember::new(config, at(0), 7).expect("valid"), lease)
}

/// Carries out operations at once, and wakes the member for what it wants done within a
/// millisecond of `now` (a renewal waits for `renewTime` to move on by the time precision);
/// returns the events.
fn drain(m: &mut ShardMember, lease: &MemoryMember, now: Now) -> Vec<ShardEvent> {
    let mut events = Vec::new();
    let mut now = now;
    let until = now.instant + Duration::from_millis(1);
    loop {
        match m.poll_action() {
            ShardAction::Op { op, request, .. } => {
                let result = lease.execute(&request);
                m.handle_input(ShardInput::Result { now, op, result });
            }
            ShardAction::Emit(e) => events.push(e),
            ShardAction::SleepUntil { at } if at <= until => {
                let ahead = at.saturating_duration_since(now.instant);
                now = Now::new(at, now.wall.saturating_add(ahead));
                m.handle_input(ShardInput::Timeout(now));
            }
            ShardAction::SleepUntil { .. } | ShardAction::Done => return events,
        }
    }
}

/// The runs told to stop.
fn stopped(events: &[ShardEvent]) -> Vec<(u32, FencingToken)> {
    events
        .iter()
        .filter_map(|e| match e {
            ShardEvent::ShardStopped { shard, token, .. } => Some((*shard, *token)),
            _ => None,
        })
        .collect()
}

/// The shards the Lease `name` claims as active, as the store has it.
fn claimed_active(group: &MemoryGroup, name: &str, shards: u32) -> Vec<u32> {
    let seen = group.list();
    let Some(s) = seen.iter().find(|s| s.name == name) else {
        return Vec::new();
    };
    let text = s.annotation.as_deref().expect("a member annotation");
    let claims = MemberClaims::decode(text, "g", shards).expect("readable claims");
    (0..shards).filter(|&k| claims.active.contains(k)).collect()
}

fn snapshot(m: &mut ShardMember, group: &MemoryGroup, now: Now) {
    m.handle_input(ShardInput::Observed {
        now,
        change: GroupChange::Snapshot(group.list()),
    });
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
    let stopping = stopped(&events);
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
    let mut want: Vec<u32> = stopping.iter().map(|&(k, _)| k).collect();
    want.sort_unstable();
    assert_eq!(got, want);
}

/// Runs `m` from `from` to `to` ms in steps of 100 ms, each with the group as it stands (a
/// watch that delivers everything) and a timeout; returns the events.
fn run(
    m: &mut ShardMember,
    lease: &MemoryMember,
    group: &MemoryGroup,
    from: u64,
    to: u64,
) -> Vec<ShardEvent> {
    let mut events = Vec::new();
    for t in (from..to).step_by(100) {
        snapshot(m, group, at(t));
        m.handle_input(ShardInput::Timeout(at(t)));
        events.extend(drain(m, lease, at(t)));
    }
    events
}

#[test]
fn a_late_report_of_an_earlier_stop_releases_nothing() {
    // a runs shard k, gives it to b, takes it back when b leaves, and is told to stop it again
    // when b returns. A repeated report of the first stop (its token is the first run's) must
    // leave the second run claimed, or b would start k while a still runs it.
    let group = MemoryGroup::new();
    let (mut a, la) = member(&group, "a", 8);
    run(&mut a, &la, &group, 0, 1_000);
    let (mut b, lb) = member(&group, "b", 8);
    run(&mut b, &lb, &group, 1_000, 1_100);
    let first = stopped(&run(&mut a, &la, &group, 1_100, 1_200));
    let &(k, first_token) = first.first().expect("a gives b some shards");
    a.handle_input(ShardInput::ShardsStopped {
        now: at(1_200),
        shards: first.clone(),
    });
    run(&mut a, &la, &group, 1_200, 3_000);
    assert!(started(&run(&mut b, &lb, &group, 3_000, 6_000)).contains(&k));
    // b leaves (and releases, having stopped its shards); a takes k back.
    b.handle_input(ShardInput::Shutdown(at(6_000)));
    let events = drain(&mut b, &lb, at(6_000));
    b.handle_input(ShardInput::ShardsStopped {
        now: at(6_100),
        shards: stopped(&events),
    });
    drain(&mut b, &lb, at(6_100));
    let events = run(&mut a, &la, &group, 6_200, 10_000);
    assert!(started(&events).contains(&k), "{events:?}");
    // b comes back; a is told to stop k again, under its second token.
    let (mut b, lb) = member(&group, "b", 8);
    run(&mut b, &lb, &group, 10_000, 10_100);
    let second = stopped(&run(&mut a, &la, &group, 10_100, 10_200));
    let &(_, second_token) = second
        .iter()
        .find(|&&(s, _)| s == k)
        .expect("k moves to b again");
    assert!(second_token > first_token);
    // The stale report: k stays claimed as active, and b cannot start it.
    a.handle_input(ShardInput::ShardsStopped {
        now: at(10_200),
        shards: vec![(k, first_token)],
    });
    run(&mut a, &la, &group, 10_200, 13_000);
    assert!(claimed_active(&group, "g-a", 8).contains(&k));
    assert!(!started(&run(&mut b, &lb, &group, 13_000, 14_000)).contains(&k));
    // The true report lets it go.
    a.handle_input(ShardInput::ShardsStopped {
        now: at(14_000),
        shards: second,
    });
    run(&mut a, &la, &group, 14_000, 17_000);
    assert!(!claimed_active(&group, "g-a", 8).contains(&k));
    assert!(started(&run(&mut b, &lb, &group, 17_000, 20_000)).contains(&k));
}

#[test]
fn a_run_cut_off_by_the_driver_is_taken_again_with_a_new_token() {
    // The driver's end-of-term watchdog fired just as a renewal came in: the work of a
    // running shard stopped though the term goes on. Reported, the shard restarts.
    let group = MemoryGroup::new();
    let (mut a, la) = member(&group, "a", 2);
    let events = run(&mut a, &la, &group, 0, 1_000);
    let first = events
        .iter()
        .find_map(|e| match e {
            ShardEvent::ShardStarted { shard: 0, token } => Some(*token),
            _ => None,
        })
        .expect("shard 0 starts");
    a.handle_input(ShardInput::ShardsStopped {
        now: at(1_000),
        shards: vec![(0, first)],
    });
    let events = run(&mut a, &la, &group, 1_000, 5_000);
    let again = events
        .iter()
        .find_map(|e| match e {
            ShardEvent::ShardStarted { shard: 0, token } => Some(*token),
            _ => None,
        })
        .expect("shard 0 starts again");
    assert!(again > first);
    assert_eq!(a.owned_shards().count(), 2);
}

/// The tokens the runs of `shard` started with.
fn tokens_of(events: &[ShardEvent], shard: u32) -> Vec<FencingToken> {
    events
        .iter()
        .filter_map(|e| match e {
            ShardEvent::ShardStarted { shard: s, token } if *s == shard => Some(*token),
            _ => None,
        })
        .collect()
}

/// The annotation of a member of group `g` claiming `active`, with `seq` and `epoch`.
fn annotation_with(seq: u64, epoch: u64, shards: u32, active: &[u32]) -> String {
    let mut claims = MemberClaims::empty(shards);
    claims.seq = seq;
    claims.epoch = epoch;
    for &k in active {
        claims.active.insert(k);
    }
    claims.encode("g")
}

#[test]
fn counters_beyond_two_to_the_53_are_garbage() {
    // The own Lease says seq = u64::MAX (a write counter that would overflow at the next
    // write); another Lease says epoch = u64::MAX (tokens that would saturate into equal
    // ones, and let a repeated stop report of one run release the next).
    let group = MemoryGroup::new();
    for (name, seq, epoch) in [("g-a", u64::MAX, 0), ("g-z", 1, u64::MAX)] {
        let record = MemberRecord {
            record: LeaderElectionRecord {
                lease_duration_seconds: 15,
                ..Default::default()
            },
            annotation: annotation_with(seq, epoch, 2, &[]),
        };
        group
            .execute(name, &GroupRequest::Create(record))
            .expect("created");
    }
    let (mut a, la) = member(&group, "a", 2);
    let first = tokens_of(&run(&mut a, &la, &group, 0, 1_000), 0);
    assert_eq!(first.len(), 1, "shard 0 starts");
    a.handle_input(ShardInput::ShardsStopped {
        now: at(1_000),
        shards: vec![(0, first[0])],
    });
    let second = tokens_of(&run(&mut a, &la, &group, 1_000, 5_000), 0);
    assert_eq!(second.len(), 1, "shard 0 starts again");
    assert!(second[0] > first[0], "{first:?} then {second:?}");
    // A repeated report of the first run leaves the second running and claimed.
    a.handle_input(ShardInput::ShardsStopped {
        now: at(5_000),
        shards: vec![(0, first[0])],
    });
    let events = run(&mut a, &la, &group, 5_000, 9_000);
    assert!(tokens_of(&events, 0).is_empty(), "{events:?}");
    assert!(claimed_active(&group, "g-a", 2).contains(&0));
}

#[test]
fn a_late_list_showing_an_earlier_write_costs_no_read() {
    // A list served before a's last renewal, answered after it, shows a's Lease as it was.
    // The elector must not spend a read on it (on a slow link that read can cost the term).
    let group = MemoryGroup::new();
    let (mut a, la) = member(&group, "a", 4);
    run(&mut a, &la, &group, 0, 3_000);
    let stale = group.list();
    let mut requests = Vec::new();
    for t in (3_000..6_000).step_by(100) {
        a.handle_input(ShardInput::Timeout(at(t)));
        loop {
            match a.poll_action() {
                ShardAction::Op { op, request, .. } => {
                    let result = la.execute(&request);
                    requests.push(request);
                    a.handle_input(ShardInput::Result {
                        now: at(t),
                        op,
                        result,
                    });
                }
                ShardAction::Emit(_) => {}
                ShardAction::SleepUntil { .. } | ShardAction::Done => break,
            }
        }
    }
    assert!(
        requests
            .iter()
            .any(|r| matches!(r, GroupRequest::Update { .. })),
        "a renewed: {requests:?}"
    );
    requests.clear();
    a.handle_input(ShardInput::Observed {
        now: at(6_000),
        change: GroupChange::Snapshot(stale),
    });
    for t in (6_000..7_000).step_by(100) {
        a.handle_input(ShardInput::Timeout(at(t)));
        loop {
            match a.poll_action() {
                ShardAction::Op { op, request, .. } => {
                    let result = la.execute(&request);
                    requests.push(request);
                    a.handle_input(ShardInput::Result {
                        now: at(t),
                        op,
                        result,
                    });
                }
                ShardAction::Emit(_) => {}
                ShardAction::SleepUntil { .. } | ShardAction::Done => break,
            }
        }
    }
    assert!(!requests.contains(&GroupRequest::Get), "{requests:?}");
    assert_eq!(a.owned_shards().count(), 4);
}

/// Operations held back, to answer when a test says so. Lease operations reach the store at
/// once (so it orders them as issued); lists reach it when the test says.
struct Held {
    ops: Vec<(OpId, GroupRequest, Option<GroupResult>)>,
}

impl Held {
    /// Drains `m`, waking it for what it wants done within a millisecond (see [`drain`]) and
    /// advancing `now`; returns the events.
    fn drain(
        &mut self,
        m: &mut ShardMember,
        lease: &MemoryMember,
        now: &mut Now,
    ) -> Vec<ShardEvent> {
        let mut events = Vec::new();
        let until = now.instant + Duration::from_millis(1);
        loop {
            match m.poll_action() {
                ShardAction::Op { op, request, .. } => {
                    let result = (request != GroupRequest::List).then(|| lease.execute(&request));
                    self.ops.push((op, request, result));
                }
                ShardAction::Emit(e) => events.push(e),
                ShardAction::SleepUntil { at } if at <= until => {
                    let ahead = at.saturating_duration_since(now.instant);
                    *now = Now::new(at, now.wall.saturating_add(ahead));
                    m.handle_input(ShardInput::Timeout(*now));
                }
                ShardAction::SleepUntil { .. } | ShardAction::Done => return events,
            }
        }
    }

    /// The store serves the lists held.
    fn serve_lists(&mut self, group: &MemoryGroup) {
        for (_, request, result) in &mut self.ops {
            if result.is_none() {
                *result = Some(Ok(GroupResponse::Listed(group.list())));
            }
            let _ = request;
        }
    }

    /// The first answer of a list (`list`) or of a Lease operation, if its request was served.
    fn take(&mut self, list: bool) -> Option<(OpId, GroupResult)> {
        let i = self
            .ops
            .iter()
            .position(|(_, r, result)| (*r == GroupRequest::List) == list && result.is_some())?;
        let (op, _, result) = self.ops.remove(i);
        Some((op, result?))
    }
}

#[test]
fn a_fence_uses_only_a_list_sent_after_the_intent_committed() {
    // Without a watch, b's first poll of the group goes out with its first operations, and
    // the store serves it after b's Lease exists but before the intents commit. Its answer,
    // arriving at the same instant as the intents' success, shows b's Lease claiming nothing:
    // b must list again before it starts anything.
    let group = MemoryGroup::new();
    let (mut b, lb) = member_observing(&group, "b", 4, leasehold::Observation::Poll);
    let mut now = at(0);
    let mut held = Held { ops: Vec::new() };
    held.drain(&mut b, &lb, &mut now);
    let mut events = Vec::new();
    while let Some((op, result)) = held.take(false) {
        b.handle_input(ShardInput::Result { now, op, result });
        if !group.list().is_empty() {
            held.serve_lists(&group);
        }
        events.extend(held.drain(&mut b, &lb, &mut now));
    }
    assert!(started(&events).is_empty(), "{events:?}");
    let claims = group.list()[0].annotation.clone().expect("claims");
    let claims = MemberClaims::decode(&claims, "g", 4).expect("readable");
    assert!((0..4).all(|k| claims.pending.contains(k)), "{claims:?}");
    // The poll's answer: b's own Lease, claiming nothing. It may fence nothing.
    let (poll, polled) = held.take(true).expect("the first poll, served");
    let Ok(GroupResponse::Listed(cut)) = &polled else {
        panic!("a list: {polled:?}")
    };
    assert!(cut[0].annotation.as_deref().is_some_and(|a| {
        MemberClaims::decode(a, "g", 4).is_ok_and(|c| (0..4).all(|k| !c.pending.contains(k)))
    }));
    b.handle_input(ShardInput::Result {
        now,
        op: poll,
        result: polled,
    });
    let events = held.drain(&mut b, &lb, &mut now);
    assert!(started(&events).is_empty(), "{events:?}");
    assert!(
        held.ops.iter().any(|(_, r, _)| *r == GroupRequest::List),
        "b lists again for its fence"
    );
    // That list, sent after the intents committed, fences them.
    held.serve_lists(&group);
    let mut events = Vec::new();
    while let Some((op, result)) = held.take(true).or_else(|| held.take(false)) {
        b.handle_input(ShardInput::Result { now, op, result });
        held.serve_lists(&group);
        events.extend(held.drain(&mut b, &lb, &mut now));
    }
    assert_eq!(started(&events).len(), 4, "{events:?}");
}

#[test]
fn answers_slower_than_a_retry_period_still_start_shards() {
    // Every answer comes 2.5 s after its request, past the next renewal (retry period 2 s):
    // the write that carried an intent must still commit it, though the elector's next
    // renewal goes out as soon as the answer is in.
    let group = MemoryGroup::new();
    let (mut a, la) = member(&group, "a", 4);
    let mut held: Vec<(u64, OpId, GroupResult)> = Vec::new();
    let mut events = Vec::new();
    for t in (0..=60_000u64).step_by(100) {
        let due: Vec<(u64, OpId, GroupResult)> = held.extract_if(.., |(at, ..)| *at <= t).collect();
        for (_, op, result) in due {
            a.handle_input(ShardInput::Result {
                now: at(t),
                op,
                result,
            });
        }
        a.handle_input(ShardInput::Timeout(at(t)));
        loop {
            match a.poll_action() {
                ShardAction::Op { op, request, .. } => {
                    held.push((t + 2_500, op, la.execute(&request)));
                }
                ShardAction::Emit(e) => events.push(e),
                ShardAction::SleepUntil { .. } | ShardAction::Done => break,
            }
        }
        if t % 1_000 == 0 {
            snapshot(&mut a, &group, at(t));
        }
    }
    assert_eq!(started(&events).len(), 4, "{events:?}");
}

#[test]
fn coordinated_membership_is_refused() {
    let mut config = Config::new(Identity::new("a").expect("non-empty"));
    config.coordinated = true;
    let config = ShardConfig::new(config, "g", 4);
    assert_eq!(config.validate(), Err(ShardConfigError::Coordinated));
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

/// Counters near and beyond the largest an annotation may carry.
fn counter() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..4,
        Just(MAX_COUNTER - 1),
        Just(MAX_COUNTER),
        Just(MAX_COUNTER + 1),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

/// Annotations: noise, or well-formed claims with any counters.
fn annotation_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        (
            counter(),
            counter(),
            proptest::collection::vec(0u32..16, 0..4)
        )
            .prop_map(|(seq, epoch, active)| annotation_with(seq, epoch, 16, &active)),
    ]
}

fn sighting_strategy() -> impl Strategy<Value = MemberSighting> {
    (
        prop_oneof![Just("me".to_owned()), "[a-z]{1,3}"],
        "[0-9]{1,3}",
        proptest::option::of(prop_oneof![Just("me".to_owned()), "[a-z]{1,4}"]),
        0u32..40,
        proptest::option::of(annotation_strategy()),
        any::<bool>(),
    )
        .prop_map(
            |(name, version, holder, ld, annotation, terminating)| MemberSighting {
                name: format!("g-{name}"),
                version: Version::new(version),
                record: LeaderElectionRecord {
                    holder: holder.and_then(|h| Identity::new(h).ok()),
                    lease_duration_seconds: ld,
                    ..Default::default()
                },
                annotation,
                terminating,
            },
        )
}

#[derive(Debug, Clone)]
enum Garbage {
    Timeout(u64),
    Observed(u64, Vec<MemberSighting>),
    Applied(u64, MemberSighting),
    Deleted(u64, String),
    Result(u64, u64, u8),
    Stopped(u64, Vec<(u32, u64)>),
    Broken(u64),
    Shutdown(u64),
}

fn garbage() -> impl Strategy<Value = Garbage> {
    prop_oneof![
        (0u64..100_000).prop_map(Garbage::Timeout),
        (
            0u64..100_000,
            proptest::collection::vec(sighting_strategy(), 0..4)
        )
            .prop_map(|(t, s)| Garbage::Observed(t, s)),
        (0u64..100_000, sighting_strategy()).prop_map(|(t, s)| Garbage::Applied(t, s)),
        (0u64..100_000, "[a-z-]{0,6}").prop_map(|(t, n)| Garbage::Deleted(t, n)),
        (0u64..100_000, any::<u64>(), 0u8..5).prop_map(|(t, op, k)| Garbage::Result(t, op, k)),
        (
            0u64..100_000,
            proptest::collection::vec((any::<u32>(), 0u64..4), 0..4)
        )
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
                Garbage::Stopped(t, s) => ShardInput::ShardsStopped {
                    now: at(t),
                    shards: s.into_iter().map(|(k, token)| (k, FencingToken(token))).collect(),
                },
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

/// A released Lease `name` with the given counters, as a departed member (or a hand edit, or a
/// foreign writer) could leave it.
fn released_at(group: &MemoryGroup, name: &str, seq: u64, epoch: u64, shards: u32) {
    let record = MemberRecord {
        record: LeaderElectionRecord {
            lease_duration_seconds: 15,
            ..Default::default()
        },
        annotation: annotation_with(seq, epoch, shards, &[]),
    };
    group
        .execute(name, &GroupRequest::Create(record))
        .expect("created");
}

/// Whether the Lease `name` can be read back by the group.
fn readable(group: &MemoryGroup, name: &str, shards: u32) -> Result<MemberClaims, String> {
    let seen = group.list();
    let s = seen.iter().find(|s| s.name == name).ok_or("absent")?;
    let text = s.annotation.as_deref().ok_or("no annotation")?;
    MemberClaims::decode(text, "g", shards).map_err(|e| format!("{e}: {text}"))
}

#[test]
fn an_epoch_at_the_cap_leaves_the_takers_own_lease_readable() {
    let group = MemoryGroup::new();
    released_at(&group, "g-z", 1, MAX_COUNTER, 2);
    let (mut a, la) = member(&group, "a", 2);
    let events = run(&mut a, &la, &group, 0, 1_000);
    assert_eq!(started(&events).len(), 2, "{events:?}");
    // Today: a's activation carried epoch MAX_COUNTER + 1 = 2^53, which decode rejects.
    assert!(
        readable(&group, "g-a", 2).is_ok(),
        "{:?}",
        readable(&group, "g-a", 2)
    );
}

#[test]
fn a_seq_at_the_cap_leaves_the_own_lease_readable() {
    // The member's own (released) Lease says seq = MAX_COUNTER: accepted, and the next write
    // saturating_add(1)s it to 2^53.
    let group = MemoryGroup::new();
    released_at(&group, "g-a", MAX_COUNTER, 0, 2);
    let (mut a, la) = member(&group, "a", 2);
    run(&mut a, &la, &group, 0, 1_000);
    assert!(
        readable(&group, "g-a", 2).is_ok(),
        "{:?}",
        readable(&group, "g-a", 2)
    );
}
