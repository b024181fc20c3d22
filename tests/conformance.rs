//! client-go's leader-election tests, restated as scenarios on the pure `Elector`.
//!
//! Each test names the client-go test (and the section of the reference account in
//! `shared/reference/client-go-leaderelection.md`) it restates. client-go's harness calls
//! `tryAcquireOrRenew` once with a fake clientset; here the test plays the lock and the clock.
//! Where leasehold deliberately behaves differently, the test says so and why.

mod common;

use std::time::Duration;

use common::*;
use leasehold::{
    AfterLoss, Config, ConfigError, Event, FencingToken, Identity, Input, LeaderElectionRecord,
    LockErrorKind, LockRequest, MemoryLock, Observation, StopReason, Timestamp, Unhealthy, Version,
};

fn ts_at(t: leasehold::Instant) -> Option<Timestamp> {
    Some(wall_now(t).wall)
}

fn assert_update(h: &Harness, expected: &str) -> LeaderElectionRecord {
    match h.request() {
        LockRequest::Update {
            expected: v,
            record,
        } => {
            assert_eq!(v, &Version::new(expected), "CAS on the observed version");
            record.clone()
        }
        other => panic!("expected an update, got {other:?}"),
    }
}

// ---- TestTryAcquireOrRenew (reference 3.2) -------------------------------------------------

/// Case 1, "acquire from no object": get -> NotFound, create -> ok. Holder baz, transitions 0,
/// two calls.
#[test]
fn acquire_from_no_object() {
    let mut h = Harness::new(config());
    assert_eq!(h.request(), &LockRequest::Get);
    h.answer(absent());
    let LockRequest::Create(created) = h.request().clone() else {
        panic!("expected a create, got {:?}", h.request());
    };
    assert_eq!(created.holder, Some(id("baz")));
    assert_eq!(created.leader_transitions, 0);
    assert_eq!(created.lease_duration_seconds, 10);
    assert_eq!(created.acquire_time, ts_at(h.now));
    assert_eq!(created.renew_time, ts_at(h.now));
    h.answer(written("1"));
    assert_eq!(h.issued.len(), 2);
    assert!(h.is_leader());
    assert_eq!(
        h.take_events(),
        vec![
            Event::NewLeader(Some(id("baz"))),
            Event::StartedLeading {
                token: FencingToken(0),
                leader_until: secs(5),
            },
        ]
    );
}

/// Case 2, "acquire from object without annotations": a lock object whose record is all zero
/// values. Update with transitions 1, two calls.
#[test]
fn acquire_from_object_without_annotations() {
    let mut h = Harness::new(config());
    h.answer(found("7", LeaderElectionRecord::default()));
    let record = assert_update(&h, "7");
    assert_eq!(record.holder, Some(id("baz")));
    assert_eq!(record.leader_transitions, 1);
    h.answer(written("8"));
    assert_eq!(h.issued.len(), 2);
    assert!(h.is_leader());
    assert_eq!(h.elector.leader(), Some(&id("baz")));
}

/// Case 3, "acquire from led object with the lease duration seconds": a record held by bing
/// with `leaseDurationSeconds: 3` (our own lease is 10 s). Not acquired at first; acquired once
/// 3 s have passed without the record changing (the record's duration wins, KK#114872).
///
/// Difference: client-go reads again after sleeping (get, get, update). leasehold wakes exactly
/// at expiry and writes with the version it observed; the compare-and-swap fails if the record
/// changed meanwhile, so the extra read buys nothing.
#[test]
fn acquire_from_led_object_with_the_lease_duration_seconds() {
    let mut h = Harness::new(config());
    let bing = record("bing", 3);
    h.answer(found("1", bing.clone()));
    assert!(
        h.pending.is_none(),
        "no write to a lease held for 3 more seconds"
    );
    assert_eq!(h.take_events(), vec![Event::NewLeader(Some(id("bing")))]);
    // Every poll before expiry sees the same version: no write, and the expiry does not move.
    while h.pending.is_none() || h.request() == &LockRequest::Get {
        if h.pending.is_some() {
            assert!(h.now < secs(3));
            h.answer(found("1", bing.clone()));
        } else {
            h.wake();
        }
    }
    assert_eq!(h.now, secs(3), "the write is issued exactly at expiry");
    let record = assert_update(&h, "1");
    assert_eq!(record.leader_transitions, 1);
    h.answer(written("2"));
    assert!(h.is_leader());
}

/// Case 4, "acquire from unled object": the annotation `{}`.
#[test]
fn acquire_from_unled_object() {
    let mut h = Harness::new(config());
    let unled = LeaderElectionRecord::from_json("{}").expect("valid");
    h.answer(found("1", unled));
    let record = assert_update(&h, "1");
    assert_eq!(record.holder, Some(id("baz")));
    assert_eq!(record.leader_transitions, 1);
    h.answer(written("2"));
    assert!(h.is_leader());
    assert_eq!(h.issued.len(), 2);
}

/// Case 5, "acquire from led, unacked object": bing's record was first observed long ago and has
/// not changed since, so it has expired and baz takes it (transitions 1).
///
/// Difference: the fixture's record has `leaseDurationSeconds: 0`, which client-go treats as
/// expired at once. leasehold waits its own lease duration for such a record (a held lock with
/// no duration is bad input; waiting is the conservative reading), so "long ago" here means
/// more than 10 s.
#[test]
fn acquire_from_led_unacked_object() {
    let mut h = Harness::new(config());
    let bing = record("bing", 0);
    h.answer(found("1", bing.clone()));
    assert!(h.pending.is_none());
    h.advance_to(secs(9));
    if h.pending.is_some() {
        h.answer(found("1", bing.clone()));
    }
    assert!(
        h.pending.is_none(),
        "9 s after observation the lease still holds"
    );
    h.advance_to(secs(10));
    // An unchanged record keeps its first observation time, so the lease expired at 10 s.
    let request = h.request().clone();
    if request == LockRequest::Get {
        h.answer(found("1", bing));
    }
    let record = assert_update(&h, "1");
    assert_eq!(record.leader_transitions, 1);
    h.answer(written("2"));
    assert!(h.is_leader());
}

/// Case 6, "acquire from empty led, acked object": a record with an empty holder, just observed,
/// can be taken at once (KK#71490).
#[test]
fn acquire_from_empty_led_acked_object() {
    let mut h = Harness::new(config());
    let released = record("", 10);
    h.answer(found("1", released));
    let record = assert_update(&h, "1");
    assert_eq!(record.leader_transitions, 1);
    h.answer(written("2"));
    assert!(h.is_leader());
}

/// Case 7, "don't acquire from led, acked object": bing's record just observed. No write,
/// holder bing, OnNewLeader("bing"), one call.
#[test]
fn dont_acquire_from_led_acked_object() {
    let mut h = Harness::new(config());
    h.answer(found("1", record("bing", 10)));
    assert!(h.pending.is_none());
    assert_eq!(h.issued.len(), 1);
    assert!(!h.is_leader());
    assert_eq!(h.elector.leader(), Some(&id("bing")));
    assert_eq!(h.take_events(), vec![Event::NewLeader(Some(id("bing")))]);
}

/// Case 8, "renew already acquired object": the lock already names baz (client-go: observed at
/// `future`). client-go's fast path has no cached object, falls back to get + update, succeeds,
/// transitions stay 0.
///
/// Difference: leasehold renews at once only a record this elector wrote itself. A fresh
/// elector that finds the lock naming it (a restarted process, an administrator's edit, a
/// second candidate with the same identity) treats it as another holder's: it waits for the
/// lease to expire, then takes it with `leaderTransitions + 1`, so that the program of the
/// previous holder has stopped and fencing tokens rise.
#[test]
fn renew_already_acquired_object() {
    let mut h = Harness::new(config());
    h.answer(found("4", record("baz", 10)));
    assert!(
        h.pending.is_none(),
        "a record naming us that we did not write"
    );
    while h.pending.is_none() || h.request() == &LockRequest::Get {
        if h.pending.is_some() {
            h.answer(found("4", record("baz", 10)));
        } else {
            h.wake();
        }
    }
    assert_eq!(h.now, secs(10), "taken once it expired");
    let record = assert_update(&h, "4");
    assert_eq!(record.leader_transitions, 1, "a new term: the token rises");
    h.answer(written("5"));
    assert!(h.is_leader());

    // A record it wrote itself (here: its lost term, in re-contend mode) is taken at once,
    // and (leasehold) with a token of the new term's own: every term has its own token.
    let mut h = Harness::new(Config {
        after_loss: AfterLoss::Recontend,
        ..config()
    });
    h.answer(absent());
    h.answer(written("1"));
    let ours = h.last_write();
    h.advance_to(secs(5)); // the term ends unrenewed
    assert!(!h.is_leader());
    h.input(Input::LeaderWorkStopped(h.now()));
    while h.pending.is_none() {
        h.wake();
    }
    if h.request() == &LockRequest::Get {
        h.answer(found("1", ours));
    }
    let record = assert_update(&h, "1");
    assert_eq!(record.leader_transitions, 1, "a new term, a new token");
    h.answer(written("2"));
    assert!(h.is_leader());
}

// ---- TestTryCoordinatedRenew (reference 3.3) -----------------------------------------------

fn coordinated() -> Config {
    Config {
        coordinated: true,
        ..config()
    }
}

#[test]
fn coordinated_dont_acquire_from_led_acked_object() {
    let mut h = Harness::new(coordinated());
    h.answer(found("1", record("bing", 10)));
    assert!(h.pending.is_none());
    assert_eq!(h.issued.len(), 1);
    assert_eq!(h.elector.leader(), Some(&id("bing")));
}

/// The election controller hands the lock to this candidate: the candidate saw it held by
/// another (or absent), then naming it.
fn handed(h: &mut Harness, record: LeaderElectionRecord) {
    h.answer(found("0", self::record("bing", 5)));
    h.input(Input::Observed {
        now: h.now(),
        record: Some(versioned("1", record)),
    });
}

#[test]
fn coordinated_renew_already_acquired_object() {
    let mut h = Harness::new(coordinated());
    let mut ours = record("baz", 5);
    ours.strategy = "OldestEmulationVersion".into();
    handed(&mut h, ours);
    let record = assert_update(&h, "1");
    // leasehold: the API server named us without counting a transition; the first write of
    // our term counts it, so fencing tokens rise in coordinated mode too (client-go: 0).
    assert_eq!(record.leader_transitions, 1);
    assert_eq!(record.strategy, "OldestEmulationVersion", "strategy kept");
    h.answer(written("2"));
    assert!(h.is_leader());
    assert_eq!(h.issued.len(), 2);
}

/// In coordinated mode the API server assigns the holder: a candidate never creates the lock,
/// never takes a released or expired one.
#[test]
fn coordinated_never_creates_or_takes_over() {
    let mut h = Harness::new(coordinated());
    h.answer(absent());
    assert!(h.pending.is_none(), "no create");
    h.wake();
    h.answer(found("1", record("", 5)));
    assert!(h.pending.is_none(), "no takeover of a released lock");
    let lock = MemoryLock::new();
    lock.create(record("bing", 1)).expect("absent");
    h.run(&lock, secs(60));
    assert!(h.issued.iter().all(|i| i.request == LockRequest::Get));
}

/// `preferredHolder` set by the election controller ends the term (client-go stops renewing and
/// lets the lease expire; leasehold steps down at once, giving the work the whole remaining
/// lease to stop).
#[test]
fn coordinated_leader_yields_to_preferred_holder() {
    let mut h = Harness::new(coordinated());
    handed(&mut h, record("baz", 5));
    let ours = h.last_write();
    h.answer(written("2"));
    h.wake(); // renew at 2 s
    assert!(matches!(h.request(), LockRequest::Update { .. }));
    h.answer(failed(LockErrorKind::Conflict));
    assert_eq!(h.request(), &LockRequest::Get, "slow path");
    let mut preferred = ours;
    preferred.preferred_holder = Some(id("qux"));
    h.answer(found("3", preferred));
    assert!(!h.is_leader());
    assert!(h.take_events().contains(&Event::StoppedLeading {
        reason: StopReason::Yielded(id("qux"))
    }));
}

/// leasehold: with release configured, the yielding leader hands the lock over at once, once
/// its work has stopped (client-go's leader lets it expire: 12 to 22 s), and in re-contend
/// mode goes back to following.
#[test]
fn coordinated_leader_yields_and_releases_for_a_fast_handover() {
    let mut h = Harness::new(Config {
        release_on_cancel: true,
        after_loss: AfterLoss::Recontend,
        ..coordinated()
    });
    handed(&mut h, record("baz", 5));
    let ours = h.last_write();
    h.answer(written("2"));
    h.wake();
    h.answer(failed(LockErrorKind::Conflict));
    let mut preferred = ours;
    preferred.preferred_holder = Some(id("qux"));
    h.answer(found("3", preferred.clone()));
    assert!(h.take_events().contains(&Event::StoppedLeading {
        reason: StopReason::Yielded(id("qux"))
    }));
    assert!(h.pending.is_none(), "no release while the work runs");
    h.input(Input::LeaderWorkStopped(h.now()));
    assert_eq!(h.request(), &LockRequest::Get, "a fresh read first");
    h.answer(found("3", preferred));
    let LockRequest::Update { record, .. } = h.request().clone() else {
        panic!("the release write");
    };
    assert_eq!(record.holder, None);
    h.answer(written("4"));
    assert!(h.events.contains(&Event::Released));
    assert!(!h.done, "follows again in re-contend mode");
    assert_eq!(h.elector.role(), leasehold::Role::Follower);
}

// ---- release (reference 3.5, 3.6) -----------------------------------------------------------

fn releasing() -> Config {
    Config {
        release_on_cancel: true,
        ..config()
    }
}

fn lead(h: &mut Harness) {
    assert_eq!(h.request(), &LockRequest::Get);
    h.answer(absent());
    h.answer(written("1"));
    assert!(h.is_leader());
    h.take_events();
}

/// "release acquired lock from no object" (testReleaseLease) and TestReleaseMethodCallsGet:
/// release reads first, then writes client-go's release record. OnNewLeader fires "baz", then
/// "" (here `None`).
#[test]
fn release_acquired_lock() {
    let mut h = Harness::new(releasing());
    lead(&mut h);
    h.advance_to(millis(1500));
    h.input(Input::Shutdown(h.now()));
    assert_eq!(
        h.take_events(),
        vec![Event::StoppedLeading {
            reason: StopReason::Shutdown
        }]
    );
    assert!(
        h.pending.is_none(),
        "no release before the leader work stopped"
    );
    h.advance_to(secs(2));
    h.input(Input::LeaderWorkStopped(h.now()));
    assert_eq!(
        h.request(),
        &LockRequest::Get,
        "release reads first (KK#132849)"
    );
    // leasehold releases only its own record: the one it last wrote.
    let held = h.last_write();
    h.answer(found("1", held));
    let release = assert_update(&h, "1");
    assert_eq!(
        release,
        LeaderElectionRecord {
            holder: None,
            lease_duration_seconds: 1,
            acquire_time: ts_at(secs(2)),
            renew_time: ts_at(secs(2)),
            leader_transitions: 0,
            ..Default::default()
        }
    );
    h.answer(written("2"));
    assert_eq!(
        h.take_events(),
        vec![Event::NewLeader(None), Event::Released]
    );
    assert!(h.done);
    assert_eq!(h.issued.len(), 4, "get, create, get, update");
}

/// TestReleaseRetriesOnConflict: the first release write conflicts, the second succeeds.
#[test]
fn release_retries_on_conflict() {
    let mut h = Harness::new(releasing());
    lead(&mut h);
    h.input(Input::Shutdown(h.now()));
    h.input(Input::LeaderWorkStopped(h.now()));
    let ours = h.last_write();
    h.answer(found("1", ours.clone()));
    assert_update(&h, "1");
    h.answer(failed(LockErrorKind::Conflict));
    assert_eq!(h.request(), &LockRequest::Get, "re-read after a conflict");
    h.answer(found("2", ours));
    assert_update(&h, "2");
    h.answer(written("3"));
    assert!(h.take_events().contains(&Event::Released));
    assert!(h.done);
}

/// "A late release must not clobber a new leader" (reference 1.9 hazard): client-go checks the
/// previously observed record, not the one just read. leasehold writes only if the fresh read
/// still names it.
#[test]
fn late_release_does_not_clobber_a_new_leader() {
    let mut h = Harness::new(releasing());
    lead(&mut h);
    h.input(Input::Shutdown(h.now()));
    h.input(Input::LeaderWorkStopped(h.now()));
    h.answer(found("9", record("qux", 10)));
    assert!(h.pending.is_none(), "no write over qux");
    assert!(h.done);
    assert!(!h.take_events().contains(&Event::Released));
}

/// TestReleaseOnCancellation "release acquired lock on cancellation of update": a renewal hangs
/// when the run is cancelled. Events: became leader, stopped leading; then the release happens.
/// leasehold stops leading at once, waits for the hung renewal (one operation in flight at
/// most), then releases.
#[test]
fn release_on_cancellation_of_update() {
    let mut h = Harness::new(releasing());
    h.answer(absent());
    h.answer(written("1"));
    h.wake(); // renew at 2 s: hangs
    assert!(matches!(h.request(), LockRequest::Update { .. }));
    h.advance_to(millis(2500));
    h.input(Input::Shutdown(h.now()));
    h.input(Input::LeaderWorkStopped(h.now()));
    let events = h.take_events();
    assert!(matches!(
        events[..],
        [
            Event::NewLeader(_),
            Event::StartedLeading { .. },
            Event::StoppedLeading {
                reason: StopReason::Shutdown
            }
        ]
    ));
    assert_eq!(
        h.issued.len(),
        3,
        "nothing new while the renewal is outstanding"
    );
    h.answer(failed(LockErrorKind::Other)); // context canceled
    assert_eq!(h.request(), &LockRequest::Get);
    let renewal = h.last_write(); // it may have landed
    h.answer(found("1", renewal));
    assert_update(&h, "1");
    h.answer(written("2"));
    assert!(h.take_events().contains(&Event::Released));
}

/// TestReleaseOnCancellation "release acquired lock on cancellation of get": every read fails
/// after the cancellation. The release is retried until its deadline (the renew deadline), then
/// given up; the events are still "became leader", "stopped leading".
#[test]
fn release_on_cancellation_of_get() {
    let mut h = Harness::new(releasing());
    lead(&mut h);
    h.input(Input::Shutdown(h.now()));
    h.input(Input::LeaderWorkStopped(h.now()));
    let start = h.now;
    let mut reads = 0;
    while !h.done {
        if h.pending.is_some() {
            reads += 1;
            h.answer(failed(LockErrorKind::Other));
        } else {
            h.wake();
        }
    }
    assert!(
        h.now <= start + Duration::from_secs(5),
        "bounded by the renew deadline"
    );
    assert!(
        (2..=4).contains(&reads),
        "retried every retry period: {reads}"
    );
    assert!(!h.events.contains(&Event::Released));
}

/// leasehold: if the leader work does not stop within the term, the release is given up:
/// releasing would hand the lock over while the work still runs.
#[test]
fn no_release_while_leader_work_runs_past_the_term() {
    let mut h = Harness::new(releasing());
    lead(&mut h);
    h.input(Input::Shutdown(h.now()));
    h.advance_to(secs(5));
    assert!(h.done);
    assert_eq!(h.issued.len(), 2);
}

/// A follower shutting down with release on still reads the lock: an acquiring write whose
/// answer was lost may have made it the holder.
#[test]
fn follower_releases_a_lock_it_holds_unknowingly() {
    let mut h = Harness::new(releasing());
    h.answer(found("1", record("", 10)));
    h.advance_to(secs(5)); // the acquiring write times out: unknown outcome
    h.input(Input::Shutdown(h.now()));
    assert_eq!(h.request(), &LockRequest::Get);
    let landed = h.last_write();
    h.answer(found("2", landed));
    assert_update(&h, "2");
    h.answer(written("3"));
    assert!(h.done);
}

/// leasehold: a record naming this candidate that it did not write (a previous incarnation's)
/// is not its to release.
#[test]
fn no_release_of_a_record_this_elector_did_not_write() {
    let mut h = Harness::new(releasing());
    h.answer(found("1", record("baz", 10)));
    h.input(Input::Shutdown(h.now()));
    assert_eq!(h.request(), &LockRequest::Get);
    h.answer(found("1", record("baz", 10)));
    assert!(h.pending.is_none(), "no write");
    assert!(h.done);
}

/// Without release, shutdown stops leading and finishes with no lock operation.
#[test]
fn shutdown_without_release() {
    let mut h = Harness::new(config());
    lead(&mut h);
    h.input(Input::Shutdown(h.now()));
    assert!(h.done);
    assert_eq!(
        h.take_events(),
        vec![Event::StoppedLeading {
            reason: StopReason::Shutdown
        }]
    );
    assert_eq!(h.issued.len(), 2);
}

// ---- TestFastPathLeaderElection (reference 3.7) --------------------------------------------

fn ops(h: &Harness) -> Vec<&'static str> {
    h.issued
        .iter()
        .map(|i| match i.request {
            LockRequest::Get => "get",
            LockRequest::Create(_) => "create",
            LockRequest::Update { .. } => "update",
        })
        .collect()
}

/// (a) get, create, update, update: renewals go the fast path, no reads.
#[test]
fn fast_path_renewals_do_not_read() {
    let lock = MemoryLock::new();
    let mut h = Harness::new(config());
    h.run(&lock, millis(4500));
    assert_eq!(ops(&h), ["get", "create", "update", "update"]);
    assert!(h.is_leader());
    assert_eq!(h.elector.slow_path_renewals(), 0);
}

/// (b) the second renewal conflicts: get, create, update, update (conflict), get, update.
#[test]
fn fast_path_conflict_falls_back_to_the_slow_path() {
    let lock = MemoryLock::new();
    let mut h = Harness::new(config());
    h.run(&lock, millis(2500)); // get, create, update
    h.wake(); // renewal at 4 s
    // Someone touches the object (a label change, say): our cached version is stale.
    lock.touch();
    h.answer_from(&lock);
    h.run(&lock, millis(4500));
    assert_eq!(
        ops(&h),
        ["get", "create", "update", "update", "get", "update"]
    );
    assert!(h.is_leader());
    assert_eq!(h.elector.slow_path_renewals(), 1);
}

// ---- NewLeaderElector validation (reference 1.3, TestLeaderElectionConfigValidation) --------

#[test]
fn validation_follows_client_go_order_and_messages() {
    let ok = Config {
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_secs(1),
        ..config()
    };
    assert_eq!(ok.validate(), Ok(()));

    let with = |ld: u64, rd: u64, rp: u64| Config {
        lease_duration: Duration::from_millis(ld),
        renew_deadline: Duration::from_millis(rd),
        retry_period: Duration::from_millis(rp),
        ..config()
    };
    let cases = [
        // 1. leaseDuration <= renewDeadline (also what an all-zero config reports first).
        (
            with(0, 0, 0),
            "leaseDuration must be greater than renewDeadline",
        ),
        (
            with(10_000, 10_000, 1000),
            "leaseDuration must be greater than renewDeadline",
        ),
        // 2. renewDeadline <= retryPeriod * 1.2
        (
            with(15_000, 2400, 2000),
            "renewDeadline must be greater than retryPeriod*JitterFactor",
        ),
        // 5. retryPeriod < 1 (rules 3 and 4 are unreachable once 1 and 2 pass with durations that
        // cannot be negative: a zero renewDeadline fails rule 2, a zero leaseDuration rule 1).
        (
            with(15_000, 10_000, 0),
            "retryPeriod must be greater than zero",
        ),
    ];
    for (config, message) in cases {
        assert_eq!(
            config.validate().map_err(|e| e.to_string()),
            Err(message.to_string())
        );
    }
    // 6 and 7 (nil callbacks) are checked by the driver builders, with client-go's messages
    // (tests/tokio_driver.rs, tests/blocking_driver.rs); 8 (nil lock) cannot be expressed in
    // Rust. 9, "Lock identity is empty": an identity cannot be empty.
    assert!(Identity::new("").is_err());
}

#[test]
fn validation_adds_leaseholds_own_rules() {
    let fractional = Config {
        lease_duration: Duration::from_millis(1500),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(100),
        ..config()
    };
    assert!(matches!(
        fractional.validate(),
        Err(ConfigError::LeaseNotWholeSeconds(_))
    ));
    let sub_second = Config {
        lease_duration: Duration::from_millis(900),
        renew_deadline: Duration::from_millis(500),
        retry_period: Duration::from_millis(100),
        ..config()
    };
    assert!(matches!(
        sub_second.validate(),
        Err(ConfigError::LeaseNotWholeSeconds(_))
    ));
    let huge = Config {
        lease_duration: Duration::from_secs(1 << 40),
        ..config()
    };
    assert!(matches!(huge.validate(), Err(ConfigError::LeaseTooLong(_))));
    let reserved = Config::new(id("leaderelection.k8s.io/unknown"));
    assert_eq!(reserved.validate(), Err(ConfigError::ReservedIdentity));
    let slow_op = Config {
        operation_timeout: Some(Duration::from_secs(6)),
        ..config()
    };
    assert!(matches!(
        slow_op.validate(),
        Err(ConfigError::OperationTimeout { .. })
    ));
    let zero_op = Config {
        operation_timeout: Some(Duration::ZERO),
        ..config()
    };
    assert!(zero_op.validate().is_err());
    // Elector::new refuses what validate refuses.
    assert!(leasehold::Elector::new(zero_op, wall_now(secs(0)), 0).is_err());
}

// ---- the seed's tests (reference 3.10), on annotation records ------------------------------

/// The seed (client-go v5) ran these five cases against Endpoints and ConfigMap locks, whose
/// record is the annotation JSON; here the records come from decoding that JSON.
#[test]
fn seed_cases_on_annotation_records() {
    let annotation = |json: &str| LeaderElectionRecord::from_json(json).expect("valid annotation");

    // acquire from no object
    let mut h = Harness::new(config());
    h.answer(absent());
    assert!(matches!(h.request(), LockRequest::Create(_)));
    h.answer(written("1"));
    assert!(h.is_leader());

    // acquire from unled object (no annotation: the empty record)
    let mut h = Harness::new(config());
    h.answer(found("1", annotation("{}")));
    assert_eq!(assert_update(&h, "1").leader_transitions, 1);
    h.answer(written("2"));
    assert!(h.is_leader());

    // acquire from led, unacked object: {"holderIdentity":"bing"}, unchanged for a lease
    let mut h = Harness::new(config());
    let bing = annotation(r#"{"holderIdentity":"bing"}"#);
    h.answer(found("1", bing.clone()));
    h.advance_to(secs(10));
    if h.request() == &LockRequest::Get {
        h.answer(found("1", bing));
    }
    assert_eq!(assert_update(&h, "1").holder, Some(id("baz")));

    // don't acquire from led, acked object
    let mut h = Harness::new(config());
    h.answer(found(
        "1",
        annotation(r#"{"holderIdentity":"bing","leaseDurationSeconds":10}"#),
    ));
    assert!(h.pending.is_none());
    assert_eq!(h.elector.leader(), Some(&id("bing")));

    // renew already acquired object: not written by this elector, so taken as another
    // holder's once it expired (see renew_already_acquired_object)
    let mut h = Harness::new(config());
    let baz = annotation(r#"{"holderIdentity":"baz"}"#);
    h.answer(found("1", baz.clone()));
    assert!(h.pending.is_none());
    h.advance_to(secs(10));
    if h.request() == &LockRequest::Get {
        h.answer(found("1", baz));
    }
    assert_eq!(assert_update(&h, "1").leader_transitions, 1);
    h.answer(written("2"));
    assert!(h.is_leader());
}

// ---- TestLeaderElectionHealthChecker (reference 3.8) ----------------------------------------

#[test]
fn healthz_check() {
    let minute = Config {
        name: "foo".into(),
        lease_duration: Duration::from_secs(60),
        renew_deadline: Duration::from_secs(30),
        retry_period: Duration::from_secs(2),
        after_loss: AfterLoss::Recontend,
        ..config()
    };
    let timeout = Duration::from_secs(20);

    // before elector initialized: nothing observed yet. client-go: healthy, and so is
    // leasehold's liveness check, however long the lock stays silent (restarting a whole fleet
    // during a control-plane outage helps nobody); the readiness check fails once the lock has
    // not answered for longer than the lease plus the tolerance.
    let h = Harness::new(minute.clone());
    assert_eq!(h.elector.check(secs(80), timeout), Ok(()));
    assert_eq!(h.elector.check(secs(3600), timeout), Ok(()));
    assert_eq!(h.elector.check_ready(secs(80), timeout), Ok(()));
    assert_eq!(
        h.elector
            .check_ready(secs(3600), timeout)
            .map_err(|e| e.to_string()),
        Err("no answer from the lock foo for 3600.0s".to_string())
    );

    // far expired: the record names us, last seen to change an hour ago (a wedged process)
    let mut h = Harness::new(minute.clone());
    h.answer(absent());
    h.answer(written("2"));
    assert!(h.is_leader());
    assert_eq!(
        h.elector.check(secs(3600), timeout),
        Err(Unhealthy::RenewalOverdue { lock: "foo".into() })
    );
    assert_eq!(
        h.elector
            .check(secs(3600), timeout)
            .map_err(|e| e.to_string()),
        Err("failed election to renew leadership on lease foo".to_string())
    );
    // not expired
    assert_eq!(h.elector.check(secs(0), timeout), Ok(()));
    // expired, but within the tolerated time: observed + 1m1s < 1m + 20s
    assert_eq!(h.elector.check(secs(61), timeout), Ok(()));
    assert!(h.elector.check(secs(81), timeout).is_err());

    // far expired, held by another: not our lease. (leasehold: as long as the lock answers;
    // this harness stops answering after the first read, so check within the tolerance.)
    let mut h = Harness::new(minute);
    h.answer(found("1", record("otherServer", 60)));
    assert_eq!(h.elector.check(secs(80), timeout), Ok(()));
}

// ---- leasehold-only behaviour that client-go's tests pin in spirit ---------------------------

/// A watch-mode follower wakes exactly at expiry and writes with the watched version.
#[test]
fn watch_mode_follower_wakes_exactly_at_expiry() {
    let mut h = Harness::new(Config {
        observation: Observation::Watch,
        ..config()
    });
    h.answer(found("1", record("bing", 10)));
    assert_eq!(h.sleep.map(|s| s.0), Some(secs(10)));
    h.advance_to(secs(4));
    let renewed = LeaderElectionRecord {
        renew_time: Some(h.now().wall),
        ..record("bing", 10)
    };
    h.input(Input::Observed {
        now: h.now(),
        record: Some(versioned("2", renewed)),
    });
    assert_eq!(
        h.sleep.map(|s| s.0),
        Some(secs(14)),
        "a renewal pushes expiry"
    );
    h.wake();
    assert_eq!(h.now, secs(14));
    assert_update(&h, "2");
}

/// A shutdown after a coordinated hand-over (re-contend mode) still finishes: the hand-over's
/// "contend again" must not outlive it.
#[test]
fn a_shutdown_after_a_coordinated_handover_finishes() {
    let mut h = Harness::new(Config {
        release_on_cancel: true,
        after_loss: AfterLoss::Recontend,
        ..coordinated()
    });
    handed(&mut h, record("baz", 5));
    let ours = h.last_write();
    h.answer(written("2"));
    h.wake();
    h.answer(failed(LockErrorKind::Conflict));
    let mut preferred = ours;
    preferred.preferred_holder = Some(id("qux"));
    h.answer(found("3", preferred.clone()));
    h.input(Input::LeaderWorkStopped(h.now()));
    h.answer(found("3", preferred));
    h.answer(written("4"));
    // Named again by the controller, it leads again; then it is shut down.
    h.advance_by(Duration::from_secs(3));
    if h.pending.is_none() {
        h.wake();
    }
    // The controller leaves leaseTransitions as the release left it.
    let named_again = LeaderElectionRecord {
        leader_transitions: 1,
        ..record("baz", 5)
    };
    h.answer(found("5", named_again));
    h.answer(written("6"));
    assert!(h.is_leader());
    h.input(Input::Shutdown(h.now()));
    h.input(Input::LeaderWorkStopped(h.now()));
    let ours = h.last_write();
    h.answer(found("6", ours));
    h.answer(written("7"));
    assert!(h.done, "finished, not contending again");
}

/// leasehold: a coordinated candidate takes up an expired lease that still names it (after an
/// outage, say): the controller does not name the same holder twice, so nobody else would.
#[test]
fn coordinated_takes_up_an_expired_lease_that_names_it() {
    let mut h = Harness::new(coordinated());
    handed(&mut h, record("baz", 5));
    // The first write fails for longer than the lease.
    h.answer(failed(LockErrorKind::Unavailable));
    while h.now < secs(8) {
        match h.pending.as_ref().map(|p| p.request.clone()) {
            Some(LockRequest::Get) => h.answer(found("1", record("baz", 5))),
            Some(_) => h.answer(failed(LockErrorKind::Unavailable)),
            None => h.wake(),
        }
    }
    // The API is back; the record, unchanged, has long expired.
    while h.pending.is_none() {
        h.wake();
    }
    while !h.is_leader() && h.now < secs(20) {
        match h.pending.as_ref().map(|p| p.request.clone()) {
            Some(LockRequest::Get) => h.answer(found("1", record("baz", 5))),
            Some(_) => h.answer(written("2")),
            None => h.wake(),
        }
    }
    assert!(h.is_leader(), "takes it up");
}
