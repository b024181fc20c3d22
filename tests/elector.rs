//! The elector's own guarantees: the timing model, op ids and deadlines, observation, fencing,
//! re-contention, and robustness against arbitrary input sequences.

mod common;

use std::time::Duration;

use common::*;
use leasehold::{
    AfterLoss, Config, Event, FencingToken, Input, Instant, LeaderElectionRecord, LockErrorKind,
    LockRequest, LockResponse, MemoryLock, Observation, OpId, Role, StopReason, Version,
    WakeReason,
};

fn recontend() -> Config {
    Config {
        after_loss: AfterLoss::Recontend,
        ..config()
    }
}

fn lead(h: &mut Harness) {
    h.answer(absent());
    h.answer(written("1"));
    assert!(h.is_leader());
    h.take_events();
}

#[test]
fn term_is_anchored_at_issue_not_at_answer() {
    let mut h = Harness::new(config());
    h.answer(absent());
    assert_eq!(h.pending.as_ref().map(|p| p.at), Some(secs(0)));
    h.advance_to(millis(900)); // a slow answer
    h.answer(written("1"));
    assert_eq!(h.elector.leader_until(), Some(secs(5)), "issued at 0 + RD");
    // The renewal is due one retry period after the write was issued, not after the answer.
    assert_eq!(h.sleep, Some((secs(2), WakeReason::Renew)));
}

#[test]
fn stops_leading_at_leader_until_while_a_renewal_is_in_flight() {
    let mut h = Harness::new(config());
    lead(&mut h);
    // The renewal at 2 s hangs. The operation timeout is max(1 s, RD / 2) = 2.5 s; the retry
    // that follows is cut off at leader_until = 5 s.
    h.wake();
    let first = h.pending.clone().expect("renewal");
    assert_eq!(first.at, secs(2));
    assert_eq!(first.deadline, millis(4500));
    h.advance_to(millis(4500)); // timed out: retry on the slow path
    let second = h.pending.clone().expect("retry");
    assert_eq!(second.request, LockRequest::Get);
    assert_eq!(
        second.deadline,
        secs(5),
        "a leader's deadlines never pass leader_until"
    );
    h.advance_to(millis(4999));
    assert!(h.is_leader());
    h.advance_to(secs(5));
    assert!(!h.is_leader());
    assert_eq!(
        h.take_events(),
        vec![Event::StoppedLeading {
            reason: StopReason::RenewDeadlineExceeded
        }]
    );
    // The answer to the abandoned read arrives late: ignored.
    let now = h.now();
    h.input(Input::LockResult {
        now,
        op: second.op,
        result: found("1", record("baz", 10)),
    });
    assert!(h.take_events().is_empty());
    assert!(h.done, "one-shot by default");
}

#[test]
fn stale_and_unknown_op_ids_are_ignored() {
    let mut h = Harness::new(config());
    let first = h.pending.clone().expect("get");
    let now = h.now();
    h.input(Input::LockResult {
        now,
        op: OpId(999),
        result: absent(),
    });
    assert_eq!(h.issued.len(), 1, "an unknown op changes nothing");
    h.answer(found("1", record("bing", 10)));
    h.input(Input::LockResult {
        now,
        op: first.op,
        result: absent(),
    });
    assert!(h.pending.is_none(), "a duplicate answer changes nothing");
    assert_eq!(h.issued.len(), 1);
}

#[test]
fn a_mismatched_answer_is_a_failure_not_a_panic() {
    let mut h = Harness::new(config());
    h.answer(written("5")); // a write answer to a read
    assert!(h.pending.is_none());
    assert_eq!(h.elector.role(), Role::Follower);
    h.wake();
    h.answer(absent());
    h.answer(Ok(LockResponse::Record(None))); // a read answer to a create
    assert!(!h.is_leader());
}

#[test]
fn early_timeouts_and_backward_time_are_harmless() {
    let mut h = Harness::new(config());
    h.answer(found("1", record("bing", 10)));
    let sleep = h.sleep;
    h.advance_to(millis(1));
    h.advance_to(millis(1));
    assert_eq!(h.sleep, sleep, "an early timeout is a no-op");
    // Time going backwards counts as the latest instant seen.
    h.now = millis(5000);
    h.advance_to(millis(5000));
    let before = h.elector.poll_timeout();
    let now = wall_now(millis(10));
    h.elector.handle_input(Input::Timeout(now));
    h.drain();
    assert_eq!(h.elector.poll_timeout(), before);
}

#[test]
fn unchanged_records_keep_their_first_observation_time() {
    let mut h = Harness::new(config());
    h.answer(found("1", record("bing", 10)));
    h.advance_to(secs(6));
    if h.pending.is_some() {
        h.answer(found("1", record("bing", 10)));
    }
    // Same version and content: expiry stays at 10 s.
    h.run_until_write(secs(10), |_| found("1", record("bing", 10)));
    assert_eq!(h.now, secs(10));
}

#[test]
fn a_new_record_resets_the_observation() {
    for (version, content) in [
        ("2", {
            let mut r = record("bing", 10);
            r.renew_time = wall_now(secs(6)).wall.into();
            r
        }),
        ("1", {
            let mut r = record("bing", 10);
            r.renew_time = wall_now(secs(6)).wall.into();
            r
        }),
    ] {
        let mut h = Harness::new(config());
        h.answer(found("1", record("bing", 10)));
        h.advance_to(secs(6));
        if h.pending.is_none() {
            h.wake();
        }
        h.answer(found(version, content.clone()));
        h.run_until_write(secs(20), |_| found(version, content.clone()));
        assert!(
            h.now >= secs(16),
            "expiry moved to 6 s + 10 s, now {}",
            h.now
        );
    }
}

impl Harness {
    /// Answers reads with `answer` and sleeps until the elector writes (or `limit`).
    fn run_until_write(
        &mut self,
        limit: Instant,
        answer: impl Fn(&LockRequest) -> leasehold::LockResult,
    ) {
        loop {
            if let Some(p) = &self.pending {
                if p.request != LockRequest::Get {
                    return;
                }
                let r = answer(&p.request);
                self.answer(r);
            } else if self.sleep.is_some_and(|(at, _)| at <= limit) {
                self.wake();
            } else {
                return;
            }
        }
    }
}

#[test]
fn a_held_record_without_duration_waits_our_lease() {
    let mut h = Harness::new(config());
    h.answer(found("1", record("bing", 0)));
    h.run_until_write(secs(60), |_| found("1", record("bing", 0)));
    assert_eq!(h.now, secs(10), "leaseDurationSeconds 0 counts as our 10 s");
}

#[test]
fn the_holders_longer_lease_is_honoured() {
    let mut h = Harness::new(config());
    h.answer(found("1", record("bing", 60)));
    h.run_until_write(secs(600), |_| found("1", record("bing", 60)));
    assert_eq!(h.now, secs(60));
}

#[test]
fn polling_followers_retry_within_the_jittered_period() {
    for seed in 0..20 {
        let mut h = Harness::with_seed(config(), seed);
        h.answer(found("1", record("bing", 3600)));
        for _ in 0..10 {
            let start = h.now;
            let (at, reason) = h.sleep.expect("sleeping");
            assert_eq!(reason, WakeReason::RetryAcquire);
            let wait = at - start;
            assert!(
                wait >= Duration::from_secs(2) && wait < Duration::from_millis(4400),
                "{wait:?}"
            );
            h.wake();
            h.answer(found("1", record("bing", 3600)));
        }
    }
    // The same seed gives the same schedule; different seeds differ.
    let schedule = |seed| {
        let mut h = Harness::with_seed(config(), seed);
        h.answer(found("1", record("bing", 3600)));
        h.sleep
    };
    assert_eq!(schedule(7), schedule(7));
    assert_ne!(schedule(7), schedule(8));
}

#[test]
fn fencing_tokens_rise_across_holders() {
    let lock = MemoryLock::new();
    let mut a = Harness::new(Config::new(id("a")));
    a.run(&lock, secs(1));
    assert!(a.events.contains(&Event::StartedLeading {
        token: FencingToken(0),
        leader_until: secs(10)
    }));
    // a crashes; b takes over after the lease, then c after b crashes.
    let mut tokens = vec![0];
    for (name, t) in [("b", 100), ("c", 200)] {
        let mut h = Harness::new(Config::new(id(name)));
        h.now = secs(t);
        h.advance_to(secs(t));
        h.run(&lock, secs(t + 40));
        let token = h.events.iter().find_map(|e| match e {
            Event::StartedLeading { token, .. } => Some(token.0),
            _ => None,
        });
        tokens.push(token.expect("took over"));
    }
    assert_eq!(tokens, [0, 1, 2]);
}

#[test]
fn a_deleted_lock_ends_the_term_at_once() {
    let mut h = Harness::new(config());
    lead(&mut h);
    h.wake();
    h.answer(failed(LockErrorKind::NotFound));
    assert_eq!(h.request(), &LockRequest::Get);
    h.answer(absent());
    assert!(!h.is_leader());
    assert_eq!(
        h.take_events(),
        vec![
            Event::NewLeader(None),
            Event::StoppedLeading {
                reason: StopReason::LockDeleted
            }
        ]
    );
}

#[test]
fn a_lock_taken_by_another_ends_the_term_at_once() {
    let mut h = Harness::new(recontend());
    lead(&mut h);
    h.wake();
    h.answer(failed(LockErrorKind::Conflict));
    h.answer(found("7", record("qux", 10)));
    assert!(!h.is_leader());
    assert_eq!(
        h.take_events(),
        vec![
            Event::NewLeader(Some(id("qux"))),
            Event::StoppedLeading {
                reason: StopReason::LockTaken(Some(id("qux")))
            }
        ]
    );
    assert_eq!(h.elector.role(), Role::Follower, "re-contends");
}

#[test]
fn recontend_after_an_outage_retakes_its_own_lock() {
    let lock = MemoryLock::new();
    let mut h = Harness::new(recontend());
    h.run(&lock, secs(1));
    // The API is unreachable past the renew deadline.
    while h.elector.role() == Role::Leader {
        if h.pending.is_some() {
            h.answer(failed(LockErrorKind::Unavailable));
        } else {
            h.wake();
        }
    }
    assert!(h.take_events().contains(&Event::StoppedLeading {
        reason: StopReason::RenewDeadlineExceeded
    }));
    h.input(Input::LeaderWorkStopped(h.now()));
    // The lock still names us: once the API is back we take it without waiting a lease, with
    // a token of the new term's own.
    let back = h.now;
    h.run(&lock, back + Duration::from_secs(5));
    assert!(h.is_leader());
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::StartedLeading {
            token: FencingToken(1),
            ..
        }
    )));
    let retaken = h.issued.last().expect("issued").at;
    assert!(
        retaken - back <= Duration::from_millis(4400),
        "one jittered retry period"
    );
}

#[test]
fn a_lost_create_race_reads_again_at_once() {
    let mut h = Harness::new(config());
    h.answer(absent());
    h.answer(failed(LockErrorKind::AlreadyExists));
    assert_eq!(h.request(), &LockRequest::Get);
    assert_eq!(h.now, secs(0));
}

#[test]
fn a_lost_update_race_reads_before_writing_again() {
    let mut h = Harness::new(config());
    h.answer(found("1", record("", 10)));
    h.answer(failed(LockErrorKind::Conflict));
    assert_eq!(
        h.request(),
        &LockRequest::Get,
        "no second write on a stale version"
    );
}

#[test]
fn a_write_answered_after_the_renew_deadline_does_not_start_a_term() {
    let mut c = config();
    c.operation_timeout = Some(Duration::from_secs(5));
    let mut h = Harness::new(c);
    h.answer(absent());
    h.now = secs(5); // the answer arrives exactly at the deadline
    h.answer(written("1"));
    assert!(!h.is_leader());
    assert!(
        !h.events
            .iter()
            .any(|e| matches!(e, Event::StartedLeading { .. }))
    );
}

#[test]
fn watch_observation_of_a_release_acquires_at_once() {
    let mut h = Harness::new(Config {
        observation: Observation::Watch,
        ..config()
    });
    h.answer(found("1", record("bing", 10)));
    h.advance_to(secs(3));
    let now = h.now();
    h.input(Input::Observed {
        now,
        record: Some(versioned("2", record("", 1))),
    });
    assert_eq!(
        h.request(),
        &LockRequest::Update {
            expected: Version::new("2"),
            record: LeaderElectionRecord {
                holder: Some(id("baz")),
                lease_duration_seconds: 10,
                acquire_time: Some(now.wall),
                renew_time: Some(now.wall),
                leader_transitions: 1,
                ..Default::default()
            }
        }
    );
    assert!(h.events.contains(&Event::NewLeader(None)));
}

#[test]
fn a_leader_verifies_a_foreign_observation_with_a_read() {
    let mut h = Harness::new(config());
    lead(&mut h);
    h.advance_to(millis(500));
    let now = h.now();
    // Our own write echoed back: nothing to do.
    h.input(Input::Observed {
        now,
        record: h
            .elector
            .observed_record()
            .map(|(v, r)| versioned(v.as_str(), r.clone())),
    });
    assert!(h.pending.is_none());
    // A foreign (or stale) event: read now.
    h.input(Input::Observed {
        now,
        record: Some(versioned("0", record("qux", 10))),
    });
    assert_eq!(h.request(), &LockRequest::Get);
    let ours = h.last_write();
    h.answer(found("1", ours));
    assert!(matches!(h.request(), LockRequest::Update { .. }));
    h.answer(written("2"));
    assert!(h.is_leader(), "a stale event costs one read, not the term");
}

#[test]
fn transitions_at_the_int32_limit_block_a_takeover() {
    let mut h = Harness::new(config());
    let mut full = record("", 10);
    full.leader_transitions = leasehold::record::MAX_INT32;
    h.answer(found("1", full));
    assert!(
        h.pending.is_none(),
        "taking over would repeat a fencing token"
    );
}

#[test]
fn new_leader_is_reported_on_changes_only() {
    let lock = MemoryLock::new();
    let mut h = Harness::new(config());
    h.run(&lock, secs(30));
    let reports: Vec<_> = h
        .events
        .iter()
        .filter(|e| matches!(e, Event::NewLeader(_)))
        .collect();
    assert_eq!(reports, [&Event::NewLeader(Some(id("baz")))]);
}

/// Three electors on one in-memory lock, driven in lockstep with instant answers: exactly one
/// leads at any instant after the first election, and a crash hands over within the bound.
#[test]
fn three_candidates_one_leader_and_failover_within_the_bound() {
    let lock = MemoryLock::new();
    let mut hs: Vec<Harness> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, n)| Harness::with_seed(Config::new(id(n)), i as u64))
        .collect();
    let mut crashed: Option<(usize, Instant)> = None;
    let mut failover = None;
    let mut t = Instant::ZERO;
    while t < secs(120) {
        for (i, h) in hs.iter_mut().enumerate() {
            if crashed.is_some_and(|(c, _)| c == i) {
                continue;
            }
            if h.sleep.is_some_and(|(at, _)| at <= t) {
                h.advance_to(t);
            }
            while h.pending.is_some() {
                h.answer_from(&lock);
            }
        }
        let leaders: Vec<usize> = (0..3)
            .filter(|&i| crashed.is_none_or(|(c, _)| c != i) && hs[i].elector.is_leader(t))
            .collect();
        assert!(leaders.len() <= 1, "two leaders at {t}: {leaders:?}");
        match crashed {
            None if t >= secs(30) => crashed = Some((leaders[0], t)),
            Some((_, at)) if failover.is_none() && !leaders.is_empty() => failover = Some(t - at),
            _ => {}
        }
        t = t + Duration::from_millis(10);
    }
    let failover = failover.expect("someone took over");
    let defaults = Config::new(id("x"));
    assert!(
        failover <= defaults.failover_bound() + Duration::from_millis(20),
        "failover {failover:?}"
    );
    assert!(
        failover >= defaults.lease_duration - defaults.retry_period,
        "not before a lease had passed since the last renewal: {failover:?}"
    );
}

// Arbitrary input sequences against the elector's invariants: `leasehold::fuzz::elector_inputs`,
// run by the fuzzer (fuzz/) and on random bytes and the committed corpus by tests/fuzz_replay.rs.

/// A watching follower trusts the watch's silence and sleeps until the lease would run out;
/// once the driver reports the watch broken it polls every retry period instead (a release
/// is seen within one), until the watch delivers again.
#[test]
fn a_broken_watch_makes_a_watching_follower_poll_until_it_delivers_again() {
    let mut h = Harness::new(Config {
        observation: Observation::Watch,
        ..config()
    });
    h.answer(found("1", record("bing", 10)));
    assert_eq!(
        h.sleep,
        Some((secs(10), WakeReason::LeaseExpiry)),
        "a healthy watch: nothing until the lease runs out"
    );
    h.advance_to(secs(1));
    let now = h.now();
    h.input(Input::WatchBroken(now));
    let (at, reason) = h.sleep.expect("sleeping");
    assert_eq!(reason, WakeReason::RetryAcquire);
    assert!(at < secs(4), "polls within a retry period: {at:?}");
    h.wake();
    assert_eq!(h.request(), &LockRequest::Get);
    h.answer(found("1", record("bing", 10)));
    // The watch delivers again: back to trusting it.
    let now = h.now();
    h.input(Input::Observed {
        now,
        record: Some(versioned("1", record("bing", 10))),
    });
    assert_eq!(h.sleep.map(|(_, why)| why), Some(WakeReason::LeaseExpiry));
}
