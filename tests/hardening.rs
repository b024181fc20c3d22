//! The elector against a store as harsh as a real API server: no-op updates, deletions, foreign
//! writes, persistent lost races, repeated observations, leader work that outlives its term.
//! Each test failed before the elector was hardened against it.

mod common;

use std::time::Duration;

use common::*;
use leasehold::elector::MAX_OPS_PER_RETRY_PERIOD;
use leasehold::{
    AfterLoss, Config, Elector, Event, Input, Instant, LeaderElectionRecord, LockErrorKind,
    LockRequest, LockResponse, MemoryLock, Now, Observation, Role, StopReason, Timestamp,
};

fn recontend() -> Config {
    Config {
        after_loss: AfterLoss::Recontend,
        ..config()
    }
}

/// The records the elector wrote, in order.
fn written_records(h: &Harness) -> Vec<LeaderElectionRecord> {
    h.issued
        .iter()
        .filter_map(|i| writes_holder(&i.request).cloned())
        .collect()
}

/// The most operations issued within any `window` (half-open) of the harness's clock.
fn max_ops_within(h: &Harness, window: Duration) -> usize {
    let at: Vec<Instant> = h.issued.iter().map(|i| i.at).collect();
    (0..at.len())
        .map(|i| at[i..].iter().take_while(|&&t| t < at[i] + window).count())
        .max()
        .unwrap_or(0)
}

// ---- 1. no-op updates ----------------------------------------------------------------------

#[test]
fn renewals_on_a_whole_second_lock_change_the_record_every_time() {
    // Retry period 200 ms on a lock that keeps whole seconds: before, two renewals within a
    // second wrote the same record, the store answered the unchanged version, and the elector
    // extended its term on a write nobody saw.
    let lock = MemoryLock::with_time_precision(Duration::from_secs(1));
    let mut c = fast("baz");
    c.time_precision = lock.time_precision();
    let mut h = Harness::new(c);
    let mut answers = Vec::new();
    while h.now < secs(20) {
        if let Some(p) = h.pending.take() {
            let result = lock.execute(&p.request);
            if let (LockRequest::Update { expected, .. }, Ok(LockResponse::Written(v))) =
                (&p.request, &result)
            {
                answers.push((expected.clone(), v.clone()));
            }
            let now = h.now();
            h.input(Input::LockResult {
                now,
                op: p.op,
                result,
            });
        } else {
            h.wake();
        }
    }
    assert!(h.is_leader(), "renewed throughout");
    assert!(
        answers.len() >= 15,
        "about one renewal a second: {}",
        answers.len()
    );
    assert!(
        answers.iter().all(|(expected, got)| expected != got),
        "no renewal was an API-server no-op"
    );
    let renewed: Vec<Timestamp> = written_records(&h)
        .iter()
        .filter_map(|r| r.renew_time)
        .collect();
    assert!(
        renewed.windows(2).all(|w| w[0] < w[1]),
        "renewTime strictly increases"
    );
    assert!(
        renewed.iter().all(|t| t.unix_micros() % 1_000_000 == 0),
        "written at the lock's precision"
    );
    // The renewTime never runs ahead of the wall clock by more than a precision step.
    let last = renewed.last().expect("renewed").unix_micros();
    assert!(last <= h.now().wall.unix_micros() + 1_000_000);
}

#[test]
fn a_write_answered_with_the_unchanged_version_extends_nothing() {
    let mut h = Harness::new(config());
    h.answer(absent());
    h.answer(written("1"));
    let started_until = h.elector.leader_until().expect("leading");
    h.wake(); // the renewal
    assert!(matches!(h.request(), LockRequest::Update { .. }));
    h.answer(written("1")); // the store wrote nothing
    assert!(
        !h.events.iter().any(|e| matches!(e, Event::Renewed { .. })),
        "a no-op is no renewal"
    );
    assert_eq!(h.elector.leader_until(), Some(started_until));
    assert!(h.pending.is_none());
    h.wake();
    assert_eq!(h.request(), &LockRequest::Get, "the slow path reads first");
}

#[test]
fn a_stalled_or_stepped_back_wall_clock_still_moves_renew_time() {
    let frozen = Timestamp::from_unix_micros(WALL_ORIGIN_MICROS).expect("in range");
    let mut c = config();
    c.time_precision = Duration::from_micros(1);
    let lock = MemoryLock::new();
    let mut e = Elector::new(c, Now::new(Instant::ZERO, frozen), 7).expect("valid");
    let mut t = Instant::ZERO;
    let mut renewed = Vec::new();
    for step in 0..40u64 {
        // The wall clock stalls, then steps back by a minute.
        let wall = if step < 20 {
            frozen
        } else {
            Timestamp::from_unix_micros(WALL_ORIGIN_MICROS - 60_000_000).expect("in range")
        };
        let now = Now::new(t, wall);
        loop {
            match e.poll_action() {
                leasehold::Action::Lock { op, request, .. } => {
                    if let LockRequest::Update { record, .. } = &request {
                        renewed.extend(record.renew_time);
                    }
                    let result = lock.execute(&request);
                    e.handle_input(Input::LockResult { now, op, result });
                }
                leasehold::Action::Emit(_) => {}
                leasehold::Action::SleepUntil { .. } | leasehold::Action::Done => break,
            }
        }
        t = t + Duration::from_millis(500);
        e.handle_input(Input::Timeout(Now::new(t, wall)));
    }
    assert!(e.is_leader(t), "still leading on a frozen clock");
    assert!(renewed.len() >= 8, "{}", renewed.len());
    assert!(renewed.windows(2).all(|w| w[0] < w[1]), "{renewed:?}");
}

// ---- 2. deleted lock -----------------------------------------------------------------------

#[test]
fn a_deleted_lock_is_not_recreated_within_a_lease_of_seeing_it_gone() {
    let mut h = Harness::new(config());
    let mut held = record("bing", 10);
    held.leader_transitions = 4;
    h.answer(found("1", held));
    h.advance_to(secs(3));
    if h.pending.is_none() {
        h.wake();
    }
    // Someone deleted the lock; the old holder may have renewed unseen before that.
    let gone_at = h.now;
    h.answer(absent());
    while h.now < secs(30) {
        if let Some(p) = &h.pending {
            if matches!(p.request, LockRequest::Create(_)) {
                break;
            }
            h.answer(absent());
        } else {
            h.wake();
        }
    }
    let create = h.issued.last().expect("issued").clone();
    let LockRequest::Create(record) = &create.request else {
        panic!("the follower recreates the lock: {:?}", create.request);
    };
    assert!(
        create.at >= gone_at + Duration::from_secs(10),
        "created at {} though the absence was first seen at {gone_at}",
        create.at
    );
    assert_eq!(record.leader_transitions, 5, "transitions continue");
    h.answer(written("9"));
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::StartedLeading {
            token: leasehold::FencingToken(5),
            ..
        }
    )));
}

#[test]
fn a_candidate_that_never_saw_the_lock_creates_it_at_once() {
    let mut h = Harness::new(config());
    h.answer(absent());
    assert!(matches!(h.request(), LockRequest::Create(r) if r.leader_transitions == 0));
}

// ---- 3. re-contending waits for the leader work --------------------------------------------

#[test]
fn no_new_term_and_no_release_until_the_last_terms_work_stopped() {
    let lock = MemoryLock::new();
    let mut c = recontend();
    c.release_on_cancel = true;
    let mut h = Harness::new(c);
    h.run(&lock, secs(1));
    assert!(h.is_leader());
    // Someone takes the lock over, then releases it at once.
    let current = lock.get().expect("exists");
    let taken = lock
        .update(&current.version, record("bing", 10))
        .expect("current");
    h.run(&lock, secs(8)); // the renewal finds it taken
    assert!(h.take_events().contains(&Event::StoppedLeading {
        reason: StopReason::LockTaken(Some(id("bing")))
    }));
    lock.update(&taken, LeaderElectionRecord::default())
        .expect("released");
    let before = h.issued.len();
    h.run(&lock, secs(60));
    assert!(
        h.issued[before..]
            .iter()
            .all(|i| writes_holder(&i.request).is_none()),
        "no write while the work runs"
    );
    assert!(!h.is_leader());
    h.input(Input::LeaderWorkStopped(h.now()));
    h.run(&lock, secs(70));
    assert!(h.is_leader(), "contends again once the work stopped");
}

#[test]
fn a_shutdown_while_the_lost_terms_work_runs_does_not_release() {
    let lock = MemoryLock::new();
    let mut c = recontend();
    c.release_on_cancel = true;
    let mut h = Harness::new(c);
    h.run(&lock, secs(1));
    // The API stops answering: the term ends at its renew deadline, the lock still names us.
    while h.elector.role() == Role::Leader {
        if h.pending.is_some() {
            h.answer(failed(LockErrorKind::Unavailable));
        } else {
            h.wake();
        }
    }
    h.input(Input::Shutdown(h.now()));
    assert!(h.done, "finishes without releasing");
    assert!(h.pending.is_none());
    assert_eq!(lock.get().and_then(|v| v.value.holder), Some(id("baz")));
}

// ---- 4. lost-race storms -------------------------------------------------------------------

fn storm(mut answer: impl FnMut(&LockRequest) -> leasehold::LockResult) -> Harness {
    let mut h = Harness::new(config());
    while h.now < secs(120) && !h.done {
        if let Some(p) = &h.pending {
            let result = answer(&p.request);
            h.answer(result);
        } else {
            h.wake();
        }
    }
    h
}

#[test]
fn a_missing_namespace_costs_a_few_requests_per_retry_period_not_thousands() {
    // GET says absent, POST says 404 "namespaces ... not found", forever.
    let h = storm(|r| match r {
        LockRequest::Get => absent(),
        _ => failed(LockErrorKind::NotFound),
    });
    let rp = config().retry_period;
    assert!(max_ops_within(&h, rp) <= MAX_OPS_PER_RETRY_PERIOD);
    assert!(max_ops_within(&h, rp) <= 4, "{}", max_ops_within(&h, rp));
    // A create answered NotFound is no lost race (the namespace is missing): a read and a
    // create per jittered retry period, about 75 in 120 s (before: about 2,000 a second).
    assert!(
        h.issued.len() <= 120,
        "{} operations in 120 s",
        h.issued.len()
    );
    let (error, _) = h.elector.last_error().expect("visible");
    assert_eq!(error.kind, LockErrorKind::NotFound);
}

#[test]
fn persistent_conflicts_and_existing_objects_are_paced() {
    for kind in [LockErrorKind::Conflict, LockErrorKind::AlreadyExists] {
        let h = storm(|r| match r {
            LockRequest::Get => found("1", record("", 10)),
            _ => failed(kind),
        });
        let rp = config().retry_period;
        assert!(
            max_ops_within(&h, rp) <= 4,
            "{kind:?}: {}",
            max_ops_within(&h, rp)
        );
        assert!(h.issued.len() <= 240, "{kind:?}: {}", h.issued.len());
    }
}

#[test]
fn a_leader_whose_every_write_conflicts_is_paced_too() {
    let mut h = Harness::new(config());
    h.answer(absent());
    h.answer(written("1"));
    while h.now < secs(30) {
        if let Some(p) = &h.pending {
            let result = match p.request {
                LockRequest::Get => found("1", record("baz", 10)),
                _ => failed(LockErrorKind::Conflict),
            };
            h.answer(result);
        } else if h.done {
            break;
        } else {
            h.wake();
        }
    }
    assert!(max_ops_within(&h, config().retry_period) <= 4);
}

// ---- 5. repeated observations --------------------------------------------------------------

#[test]
fn observations_every_second_never_postpone_the_attempt() {
    for observation in [Observation::Poll, Observation::Watch] {
        let mut h = Harness::new(Config {
            observation,
            ..config()
        });
        h.answer(found("1", record("bing", 10)));
        // A re-listing watch reports the same record every second; the holder is dead.
        while h.now < secs(60) && h.pending.is_none() {
            let next = h.now + Duration::from_secs(1);
            match h.sleep {
                Some((at, _)) if at < next => h.wake(),
                _ => {
                    h.advance_to(next);
                    h.input(Input::Observed {
                        now: h.now(),
                        record: Some(versioned("1", record("bing", 10))),
                    });
                }
            }
        }
        let write = h.issued.last().expect("issued");
        assert!(
            write.at <= secs(10) + config().max_retry_interval(),
            "{observation:?}: first attempt after expiry at {}",
            write.at
        );
    }
}

#[test]
fn absence_reported_every_second_does_not_stall_a_fresh_follower() {
    let mut h = Harness::new(Config {
        observation: Observation::Watch,
        ..config()
    });
    h.answer(absent());
    h.answer(failed(LockErrorKind::Timeout));
    let before = h.issued.len();
    for s in 1..30 {
        h.advance_to(secs(s));
        h.input(Input::Observed {
            now: h.now(),
            record: None,
        });
        if h.pending.is_some() {
            break;
        }
    }
    assert!(h.issued.len() > before, "an attempt within 30 s");
    assert!(h.issued.last().expect("issued").at <= secs(5));
}

// ---- 6. writes that leave the record alone -------------------------------------------------

#[test]
fn foreign_writes_to_the_object_do_not_keep_a_dead_leader_alive() {
    let lock = MemoryLock::new();
    lock.create(record("bing", 10)).expect("absent");
    let mut h = Harness::new(config());
    let mut touched = secs(0);
    while h.now < secs(60) && !h.is_leader() {
        if h.now >= touched + Duration::from_secs(5) {
            lock.touch(); // another tool edits a label every 5 s
            touched = h.now;
        }
        if h.pending.is_some() {
            h.answer_from(&lock);
        } else {
            h.wake();
        }
    }
    assert!(h.is_leader());
    assert!(
        h.now <= secs(10) + config().max_retry_interval(),
        "took over at {}",
        h.now
    );
}

// ---- errors are visible --------------------------------------------------------------------

#[test]
fn a_follower_that_cannot_read_the_lock_fails_its_readiness_check_only() {
    let mut h = Harness::new(config());
    let tolerance = Duration::from_secs(20);
    while h.now < secs(40) {
        if h.pending.is_some() {
            h.answer(failed(LockErrorKind::Unauthorized));
        } else {
            h.wake();
        }
    }
    let (error, times) = h.elector.last_error().expect("an error");
    assert_eq!(error.kind, LockErrorKind::Unauthorized);
    assert!(times >= 10, "{times}");
    assert_eq!(
        h.elector.check(h.now, tolerance),
        Ok(()),
        "alive: a restart helps nobody"
    );
    let report = h
        .elector
        .check_ready(h.now, tolerance)
        .expect_err("not ready")
        .to_string();
    assert!(report.contains("unauthorized"), "{report}");
    // One answer and it is healthy again, the error gone.
    while h.pending.is_none() {
        h.wake();
    }
    h.answer(absent());
    assert_eq!(h.elector.last_error(), None);
    assert_eq!(h.elector.check_ready(h.now, tolerance), Ok(()));
}

#[test]
fn a_stale_work_stopped_report_does_not_disarm_the_wait_for_the_work() {
    let mut h = Harness::new(recontend());
    h.answer(absent());
    h.answer(written("1"));
    assert!(h.is_leader());
    h.input(Input::LeaderWorkStopped(h.now())); // stale: the work still runs
    h.advance_to(secs(2));
    h.answer(failed(LockErrorKind::Conflict));
    h.answer(found("3", record("bing", 10)));
    assert!(h.events.contains(&Event::StoppedLeading {
        reason: StopReason::LockTaken(Some(id("bing")))
    }));
    // The lock is released at once; the old term's work has not been reported stopped.
    h.input(Input::Observed {
        now: h.now(),
        record: Some(versioned("4", LeaderElectionRecord::default())),
    });
    assert!(h.pending.is_none(), "no write while the work may run");
    h.input(Input::LeaderWorkStopped(h.now()));
    h.advance_by(Duration::from_secs(5));
    while h.pending.is_some() {
        let r = h.request().clone();
        match r {
            LockRequest::Get => h.answer(found("4", LeaderElectionRecord::default())),
            _ => h.answer(written("5")),
        }
    }
    assert!(h.is_leader());
}

#[test]
fn a_recreation_never_repeats_a_write_whose_answer_was_lost() {
    // The takeover write landed but its answer was lost; then the lock was deleted. The
    // recreation must not write the same record (transitions 5) again.
    let mut h = Harness::new(config());
    let mut held = record("bing", 10);
    held.leader_transitions = 4;
    h.answer(found("1", held));
    h.advance_to(secs(10));
    if h.pending.is_none() {
        h.wake();
    }
    assert!(
        matches!(h.request(), LockRequest::Update { record, .. } if record.leader_transitions == 5)
    );
    h.answer(failed(LockErrorKind::Timeout));
    while h.now < secs(60) {
        match h.pending.as_ref().map(|p| p.request.clone()) {
            Some(LockRequest::Create(record)) => {
                assert_eq!(record.leader_transitions, 6);
                return;
            }
            Some(_) => h.answer(absent()),
            None => h.wake(),
        }
    }
    panic!("no recreation within 60 s");
}

#[test]
fn no_busy_loop_at_the_end_of_time() {
    let now = Now::new(Instant::MAX, Timestamp::UNIX_EPOCH);
    let mut e = Elector::new(config(), now, 1).expect("valid");
    let mut ops = 0;
    for _ in 0..50 {
        while let leasehold::Action::Lock { op, .. } = e.poll_action() {
            ops += 1;
            e.handle_input(Input::LockResult {
                now,
                op,
                result: Ok(LockResponse::Record(None)),
            });
        }
        e.handle_input(Input::Timeout(now));
    }
    assert!(ops <= MAX_OPS_PER_RETRY_PERIOD, "{ops}");
}

// ---- Retry-After ---------------------------------------------------------------------------

fn overloaded(secs: u64) -> leasehold::LockResult {
    Err(
        leasehold::LockError::new(LockErrorKind::Unavailable, "429 Too Many Requests")
            .with_retry_after(Duration::from_secs(secs)),
    )
}

#[test]
fn a_follower_waits_as_long_as_the_server_asks() {
    let mut h = Harness::new(config()); // a 10 s lease
    h.answer(overloaded(8));
    let failed_at = h.now;
    while h.pending.is_none() {
        h.wake();
    }
    assert!(
        h.now >= failed_at + Duration::from_secs(8),
        "retried at {}",
        h.now
    );
}

#[test]
fn a_leader_waits_as_asked_but_still_retries_within_its_term() {
    let mut c = Config::new(id("baz")); // LD 15 s, RD 10 s, operation timeout 5 s
    c.retry_period = Duration::from_secs(1);
    let mut h = Harness::new(c.clone());
    h.answer(absent());
    h.answer(written("1"));
    let until = h.elector.leader_until().expect("leading");
    h.wake(); // renewal at 1 s
    h.answer(overloaded(60));
    let failed_at = h.now;
    while h.pending.is_none() {
        h.wake();
    }
    assert!(
        h.now > failed_at + c.retry_period,
        "waited longer than usual"
    );
    assert!(
        h.now + c.operation_timeout() <= until,
        "but still within the term: {} vs {until}",
        h.now
    );
    assert!(h.is_leader());
}

#[test]
fn a_follower_waits_at_most_a_lease_whatever_the_server_asks() {
    let mut h = Harness::new(config());
    h.answer(overloaded(u64::from(u32::MAX)));
    let failed_at = h.now;
    while h.pending.is_none() {
        h.wake();
    }
    assert!(
        h.now <= failed_at + config().lease_duration,
        "retried at {}",
        h.now
    );
}

/// A refused write stays on the record while reads between the attempts answer: a missing
/// namespace (absent, then 404 on create) is visible at every moment, not half of the time.
#[test]
fn a_refused_write_stays_visible_while_reads_answer() {
    let mut h = Harness::new(config());
    let mut reads_after_a_refusal = 0;
    while h.now < secs(20) {
        match h.pending.as_ref().map(|p| p.request.clone()) {
            Some(LockRequest::Get) => {
                h.answer(absent());
                if h.elector.last_error().is_some() {
                    reads_after_a_refusal += 1;
                    let (error, _) = h.elector.last_error().expect("still there");
                    assert_eq!(error.kind, LockErrorKind::NotFound);
                }
            }
            Some(_) => h.answer(failed(LockErrorKind::NotFound)),
            None => h.wake(),
        }
    }
    assert!(reads_after_a_refusal >= 5, "{reads_after_a_refusal}");
    // A timeout, by contrast, is cleared by the next answer.
    let mut h = Harness::new(config());
    h.answer(failed(LockErrorKind::Timeout));
    assert!(h.elector.last_error().is_some());
    h.wake();
    h.answer(absent());
    assert!(h.elector.last_error().is_none());
}
