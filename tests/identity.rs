//! Records that name this candidate but that it did not write: a restart under the same
//! identity, an administrator's edit, two candidates given the same identity, and the election
//! controller's choice in coordinated mode. Also the end of `leaderTransitions`.

mod common;

use std::time::Duration;

use common::*;
use leasehold::{
    AfterLoss, Alert, Config, Event, FencingToken, Input, LeaderElectionRecord, LockRequest,
    MemoryLock, StopReason, Unhealthy,
};

const TOLERANCE: Duration = Duration::from_secs(20);

fn recontend() -> Config {
    Config {
        after_loss: AfterLoss::Recontend,
        ..config()
    }
}

fn started(events: &[Event]) -> Option<FencingToken> {
    events.iter().find_map(|e| match e {
        Event::StartedLeading { token, .. } => Some(*token),
        _ => None,
    })
}

/// (a) A process restarted under the same identity (after a SIGKILL, say) finds the lock naming
/// it. It waits for the lease to expire, as any follower would (the previous incarnation's
/// work may still run), and takes it with `leaderTransitions + 1`.
#[test]
fn a_restarted_candidate_waits_for_its_old_lease_and_raises_the_token() {
    let lock = MemoryLock::new();
    let mut before = Harness::new(config());
    before.run(&lock, secs(3));
    assert!(before.is_leader());
    assert_eq!(started(&before.take_events()), Some(FencingToken(0)));
    // Killed at 3 s: its last renewal was issued at 2 s. Restarted at once.
    let mut after = Harness::new(config());
    after.run(&lock, secs(1));
    assert!(
        !after.is_leader(),
        "no term on a record this process did not write"
    );
    assert!(after.issued.iter().all(|i| i.request == LockRequest::Get));
    after.run(&lock, secs(30));
    assert!(after.is_leader());
    let events = after.take_events();
    assert_eq!(started(&events), Some(FencingToken(1)), "the token rises");
    // Its first write came one lease (10 s) after it first read the record, not before.
    let first_write = after
        .issued
        .iter()
        .find(|i| i.request != LockRequest::Get)
        .expect("it wrote");
    assert_eq!(first_write.at, secs(10));
    assert_eq!(
        after.elector.alert(after.now),
        None,
        "a restart is no clash"
    );
}

/// (b) An administrator's PUT names follower b while a leads: b does not start a term on it at
/// once (a is still stopping), but waits for the lease and takes it with a higher token; a
/// steps down as soon as it sees the lock taken.
#[test]
fn an_administrators_edit_naming_a_follower_does_not_make_it_lead_at_once() {
    let lock = MemoryLock::new();
    let mut a = Harness::new(Config {
        identity: id("a"),
        ..config()
    });
    a.run(&lock, secs(1));
    assert!(a.is_leader());
    let mut b = Harness::new(Config {
        identity: id("baz"),
        ..config()
    });
    b.run(&lock, secs(1));
    assert!(!b.is_leader());
    // The edit, at 1 s.
    let current = lock.get().expect("present");
    lock.update(&current.version, record("baz", 10))
        .expect("the edit lands");
    b.run(&lock, secs(5));
    assert!(!b.is_leader(), "b waits: a record it did not write");
    a.run(&lock, secs(5));
    assert!(!a.is_leader(), "a sees the lock taken");
    b.run(&lock, secs(30));
    assert!(b.is_leader());
    assert_eq!(started(&b.take_events()), Some(FencingToken(1)));
}

/// Two candidates with the same identity: the one that leads keeps leading, the other sees
/// renewals under its name that it did not write, raises `IdentityClash`, fails its health
/// check, and never takes the lock while the first renews it.
#[test]
fn two_candidates_with_one_identity_never_lead_together_and_the_clash_is_reported() {
    let lock = MemoryLock::new();
    let mut first = Harness::new(recontend());
    first.run(&lock, secs(1));
    assert!(first.is_leader());
    let mut twin = Harness::with_seed(recontend(), 7);
    let mut t = secs(1);
    let mut alerted = false;
    while t < secs(60) {
        t = t + Duration::from_millis(500);
        first.run(&lock, t);
        twin.run(&lock, t);
        assert!(first.is_leader(), "the first keeps its term");
        assert!(!twin.is_leader(), "never two terms under one name");
        alerted |= twin
            .take_events()
            .contains(&Event::Alert(Alert::IdentityClash(id("baz"))));
    }
    assert!(alerted, "the clash was reported");
    assert_eq!(
        twin.elector.alert(twin.now),
        Some(&Alert::IdentityClash(id("baz")))
    );
    assert!(matches!(
        twin.elector.check(twin.now, TOLERANCE),
        Err(Unhealthy::Alert(Alert::IdentityClash(_)))
    ));
    assert!(twin.issued.iter().all(|i| i.request == LockRequest::Get));
    assert_eq!(first.elector.alert(first.now), None);
}

/// A leader whose renewal conflicts and whose read shows a renewal under its own name that it
/// did not write (a twin running older code, or an edit by hand) ends its term.
#[test]
fn a_leader_that_sees_a_renewal_it_did_not_write_under_its_name_ends_its_term() {
    let mut h = Harness::new(config());
    h.answer(absent());
    h.answer(written("1"));
    assert!(h.is_leader());
    h.take_events();
    h.wake(); // the renewal at 2 s
    h.answer(failed(leasehold::LockErrorKind::Conflict));
    assert_eq!(h.request(), &LockRequest::Get);
    let mut other = h.last_write();
    other.renew_time = other
        .renew_time
        .map(|t| t.saturating_add(Duration::from_secs(1)));
    h.answer(found("2", other));
    assert!(!h.is_leader());
    let events = h.take_events();
    assert!(events.contains(&Event::StoppedLeading {
        reason: StopReason::IdentityClash
    }));
    assert!(events.contains(&Event::Alert(Alert::IdentityClash(id("baz")))));
    assert!(h.pending.is_none(), "no write over it");
    // Reported once, and in force for a lease duration from its last sight.
    assert!(h.elector.alert(h.now + Duration::from_secs(9)).is_some());
    assert!(h.elector.alert(h.now + Duration::from_secs(10)).is_none());
}

/// A stale watch event showing the leader's own earlier renewal is no clash.
#[test]
fn a_stale_event_of_its_own_earlier_renewal_is_no_clash() {
    let lock = MemoryLock::new();
    let mut h = Harness::new(config());
    h.run(&lock, secs(1));
    let early = lock.get().expect("present");
    h.run(&lock, secs(9)); // several renewals
    let now = h.now();
    h.input(Input::Observed {
        now,
        record: Some(early),
    });
    h.run(&lock, secs(12));
    assert!(h.is_leader());
    assert_eq!(h.elector.alert(h.now), None);
}

/// Coordinated election: the controller hands the lock to a candidate (held by another, then
/// naming it): taken up at once. A record naming it at first sight (a restart) is not.
#[test]
fn coordinated_takes_a_handed_lock_at_once_but_not_one_found_naming_it() {
    let coordinated = Config {
        coordinated: true,
        ..config()
    };
    let mut h = Harness::new(coordinated.clone());
    h.answer(found("1", record("bing", 5)));
    h.input(Input::Observed {
        now: h.now(),
        record: Some(versioned("2", record("baz", 5))),
    });
    assert!(matches!(h.request(), LockRequest::Update { .. }), "at once");

    let mut h = Harness::new(coordinated);
    h.answer(found("2", record("baz", 5)));
    assert!(h.pending.is_none(), "a restart waits for the lease");
    while h.pending.is_none() || h.request() == &LockRequest::Get {
        if h.pending.is_some() {
            h.answer(found("2", record("baz", 5)));
        } else {
            h.wake();
        }
    }
    assert_eq!(h.now, secs(5), "taken up once it expired");
    let LockRequest::Update { record: r, .. } = h.request().clone() else {
        panic!("an update");
    };
    assert_eq!(r.leader_transitions, 1, "a new term");
}

/// A coordinated candidate leaving (release configured) reads the lock once more: if the
/// controller handed it the lock meanwhile (its view of the candidates lags the deletion of
/// this one's registration), no term runs on that record and it releases it, so that the
/// controller picks another candidate at once. A record found naming it at first sight (an
/// earlier incarnation's) is not released: that incarnation's work may still run.
#[test]
fn a_leaving_coordinated_candidate_releases_a_lock_handed_to_it_but_no_earlier_one() {
    let leaving = Config {
        coordinated: true,
        release_on_cancel: true,
        ..config()
    };
    let mut h = Harness::new(leaving.clone());
    h.answer(found("1", record("bing", 5)));
    h.input(Input::Shutdown(h.now()));
    assert_eq!(h.request(), &LockRequest::Get, "it reads before leaving");
    h.answer(found("2", record("baz", 5)));
    let LockRequest::Update {
        expected,
        record: r,
    } = h.request().clone()
    else {
        panic!("a release");
    };
    assert_eq!(expected.as_str(), "2", "only over the handed record");
    assert_eq!(r.holder, None);
    assert!(
        h.take_events()
            .iter()
            .all(|e| !matches!(e, Event::StartedLeading { .. })),
        "no term"
    );

    let mut h = Harness::new(leaving);
    h.answer(found("2", record("baz", 5)));
    h.input(Input::Shutdown(h.now()));
    if h.pending.is_some() {
        assert_eq!(h.request(), &LockRequest::Get);
        h.answer(found("2", record("baz", 5)));
    }
    assert!(h.pending.is_none(), "not released: {:?}", h.pending);
}

/// The controller hands the lock to a candidate and, before it took it up, already prefers
/// another one (it joined meanwhile): the candidate hands the lock back at once instead of
/// sitting on it until its lease runs out, and starts no term.
#[test]
fn a_lock_handed_over_while_another_is_preferred_is_handed_back_at_once() {
    let mut h = Harness::new(Config {
        coordinated: true,
        ..config()
    });
    h.answer(found("1", record("bing", 5)));
    let handed = LeaderElectionRecord {
        preferred_holder: Some(id("other")),
        ..record("baz", 5)
    };
    h.input(Input::Observed {
        now: h.now(),
        record: Some(versioned("2", handed)),
    });
    let LockRequest::Update {
        expected,
        record: r,
    } = h.request().clone()
    else {
        panic!("an update");
    };
    assert_eq!(expected.as_str(), "2");
    assert_eq!(r.holder, None, "handed back");
    assert_eq!(r.leader_transitions, 0, "no term: no transition");
    h.answer(written("3"));
    assert!(!h.is_leader());
    assert!(
        h.take_events()
            .iter()
            .all(|e| !matches!(e, Event::StartedLeading { .. })),
        "no term"
    );
}

/// A record of our name that changed hands with a new term (`leaderTransitions` raised) was
/// taken up by a candidate of our name (a twin), not handed by the controller (which leaves
/// the count alone): it is waited out, neither taken up at once nor handed back.
#[test]
fn a_twins_take_up_is_not_mistaken_for_the_controllers_choice() {
    let mut h = Harness::new(Config {
        coordinated: true,
        release_on_cancel: true,
        ..config()
    });
    h.answer(found("1", record("bing", 5)));
    let taken_up = LeaderElectionRecord {
        leader_transitions: 1,
        preferred_holder: Some(id("other")),
        ..record("baz", 5)
    };
    h.input(Input::Observed {
        now: h.now(),
        record: Some(versioned("2", taken_up)),
    });
    assert!(h.pending.is_none(), "no write at once: {:?}", h.pending);
    // Leaving, it does not release the twin's record either.
    h.input(Input::Shutdown(h.now()));
    if h.pending.is_some() {
        assert_eq!(h.request(), &LockRequest::Get);
        let taken_up = LeaderElectionRecord {
            leader_transitions: 1,
            ..record("baz", 5)
        };
        h.answer(found("2", taken_up));
    }
    assert!(h.pending.is_none(), "not released: {:?}", h.pending);
}

/// A record of our name found at first sight that asks its holder to yield is, once expired,
/// handed back rather than taken up: no term starts on a record whose renewals would never
/// notice the request.
#[test]
fn an_expired_record_that_prefers_another_is_handed_back_not_taken() {
    let mut h = Harness::new(Config {
        coordinated: true,
        ..config()
    });
    let found_naming_us = LeaderElectionRecord {
        preferred_holder: Some(id("other")),
        ..record("baz", 5)
    };
    h.answer(found("1", found_naming_us.clone()));
    assert!(h.pending.is_none(), "a first sight is waited out");
    while h.pending.is_none() || h.request() == &LockRequest::Get {
        if h.pending.is_some() {
            h.answer(found("1", found_naming_us.clone()));
        } else {
            h.wake();
        }
    }
    assert_eq!(h.now, secs(5), "once it expired");
    let LockRequest::Update { record: r, .. } = h.request().clone() else {
        panic!("an update");
    };
    assert_eq!(r.holder, None, "handed back");
    h.answer(written("2"));
    assert!(!h.is_leader());
}

/// `leaderTransitions` is an `int32` in the API. At its maximum a free or expired lock cannot
/// change hands without repeating a fencing token: the elector does not take it, raises
/// `TransitionsExhausted` (logged by the drivers, failing the health check) and keeps polling
/// at its usual pace. The holder itself may still renew.
#[test]
fn transitions_at_the_int32_limit_raise_an_alert_and_block_a_takeover() {
    let mut h = Harness::new(config());
    let mut full = record("bing", 10);
    full.leader_transitions = leasehold::record::MAX_INT32;
    while h.now < secs(60) {
        if h.pending.is_some() {
            assert_eq!(h.request(), &LockRequest::Get, "never a write");
            h.answer(found("1", full.clone()));
        } else {
            h.wake();
        }
    }
    let alerts = h
        .events
        .iter()
        .filter(|e| matches!(e, Event::Alert(Alert::TransitionsExhausted)))
        .count();
    assert_eq!(alerts, 1, "reported once while it holds");
    assert!(h.issued.len() <= 60 / 2 + 1, "polled at its pace");
    assert!(matches!(
        h.elector.check(h.now, TOLERANCE),
        Err(Unhealthy::Alert(Alert::TransitionsExhausted))
    ));

    // A takeover that reaches the limit is fine, and the holder renews its record there.
    let lock = MemoryLock::new();
    let mut almost = record("bing", 10);
    almost.leader_transitions = leasehold::record::MAX_INT32 - 1;
    lock.create(almost).expect("absent");
    let mut holder = Harness::new(config());
    holder.run(&lock, secs(40));
    assert!(holder.is_leader());
    assert_eq!(
        started(&holder.take_events()),
        Some(FencingToken(u64::from(leasehold::record::MAX_INT32)))
    );
    assert!(holder.issued.len() > 10, "renewing");
    assert_eq!(holder.elector.alert(holder.now), None);
}

/// The same with a watching twin: it reads when it sees a record of its name change.
#[test]
fn a_watching_twin_reads_and_reports_the_clash() {
    let lock = MemoryLock::new();
    let mut first = Harness::new(recontend());
    first.run(&lock, secs(1));
    let mut twin = Harness::with_seed(
        Config {
            observation: leasehold::Observation::Watch,
            ..recontend()
        },
        7,
    );
    let mut t = secs(1);
    let mut alerted = false;
    while t < secs(30) && !alerted {
        t = t + Duration::from_millis(500);
        first.run(&lock, t);
        let now = twin.now();
        twin.input(Input::Observed {
            now,
            record: lock.get(),
        });
        twin.run(&lock, t);
        assert!(!twin.is_leader());
        alerted |= twin
            .take_events()
            .contains(&Event::Alert(Alert::IdentityClash(id("baz"))));
    }
    assert!(alerted, "the clash was reported");
}

/// An edit by hand that shortens `leaseDurationSeconds` mid-term does not shorten a follower's
/// wait (the leader's term rests on the longer lease), and is no identity clash for the leader.
#[test]
fn a_shortened_lease_duration_does_not_shorten_the_wait_nor_count_as_a_clash() {
    let lock = MemoryLock::new();
    let mut leader = Harness::new(config());
    leader.run(&lock, secs(1));
    assert!(leader.is_leader());
    let mut follower = Harness::new(Config {
        identity: id("qux"),
        ..config()
    });
    follower.run(&lock, secs(1));
    // The leader is paused from here on (it issued its last renewal at 0 s: its term ends at
    // 5 s). At 1 s someone edits the lease down to 1 s.
    let current = lock.get().expect("present");
    let mut edited = current.value.clone();
    edited.lease_duration_seconds = 1;
    lock.update(&current.version, edited)
        .expect("the edit lands");
    follower.run(&lock, secs(9));
    assert!(
        !follower.is_leader(),
        "waits the term's 10 s lease from the edit, not 1 s"
    );
    // It first read the edit at its next poll (before 5 s): taken 10 s after that.
    follower.run(&lock, secs(16));
    assert!(follower.is_leader());

    // The leader that sees such an edit renews over it.
    let lock = MemoryLock::new();
    let mut h = Harness::new(config());
    h.run(&lock, secs(1));
    let current = lock.get().expect("present");
    let mut edited = current.value.clone();
    edited.lease_duration_seconds = 1;
    lock.update(&current.version, edited)
        .expect("the edit lands");
    h.run(&lock, secs(10));
    assert!(h.is_leader());
    assert_eq!(h.elector.alert(h.now), None);
}

/// A controller that hands the lock straight back after every hand-back (a preferred holder
/// that never takes it) cannot make the candidate exceed the elector's request floor.
#[test]
fn a_controller_that_keeps_handing_the_lock_back_costs_no_more_than_the_rate_floor() {
    let mut h = Harness::new(Config {
        coordinated: true,
        ..config()
    });
    h.answer(found("1", record("bing", 5)));
    let handed = LeaderElectionRecord {
        preferred_holder: Some(id("other")),
        ..record("baz", 5)
    };
    let mut version = 1u32;
    let mut next = || {
        version += 1;
        version.to_string()
    };
    for _ in 0..1000 {
        match h.pending.as_ref().map(|p| p.request.clone()) {
            Some(LockRequest::Get) => h.answer(found(&next(), handed.clone())),
            Some(_) => h.answer(written(&next())),
            None => {
                let now = h.now();
                h.input(Input::Observed {
                    now,
                    record: Some(versioned(&next(), handed.clone())),
                });
                h.advance_by(Duration::from_millis(10));
            }
        }
    }
    let hand_backs = h
        .issued
        .iter()
        .filter(
            |i| matches!(&i.request, LockRequest::Update { record, .. } if record.holder.is_none()),
        )
        .count();
    assert!(hand_backs >= 3, "it hands back: {hand_backs}");
    let rp = Duration::from_secs(2);
    for (i, first) in h.issued.iter().enumerate() {
        let within = h.issued[i..]
            .iter()
            .take_while(|later| later.at < first.at + rp)
            .count();
        assert!(
            within <= leasehold::elector::MAX_OPS_PER_RETRY_PERIOD,
            "{within} operations within a retry period from {:?}",
            first.at
        );
    }
    assert!(!h.is_leader());
}
