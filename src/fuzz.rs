//! Fuzz targets, shared by the cargo-fuzz crate in `fuzz/` and the corpus replay in `cargo test`
//! (feature `fuzz`; not part of the supported API).
//!
//! Each function takes arbitrary bytes and panics only when leasehold breaks a promise: a panic
//! on input, a lost field, an invariant of the elector, or overlapping terms in the simulator.

use std::time::Duration;

use crate::config::{AfterLoss, Config, Observation};
use crate::elector::{Action, Elector, Event, Input, Now, OpId};
use crate::lock::{LockError, LockErrorKind, LockRequest, LockResponse, LockResult};
use crate::record::{Identity, LeaderElectionRecord, Version, Versioned};
use crate::sim::{self, Scenario, Violation};
use crate::time::{Instant, Timestamp};

/// Reads numbers from the fuzzer's bytes; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) << 32 | u64::from(self.u32())
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Record JSON: decoding never panics, and what decodes re-encodes to the same record (at the
/// whole-second precision of the annotation form).
pub fn record_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Timestamp::parse_rfc3339(text);
    let Ok(record) = LeaderElectionRecord::from_json(text) else {
        return;
    };
    let encoded = record.to_json();
    let again = LeaderElectionRecord::from_json(&encoded)
        .unwrap_or_else(|e| panic!("re-decoding {encoded}: {e}"));
    let expected = LeaderElectionRecord {
        acquire_time: record.acquire_time.map(Timestamp::truncated_to_seconds),
        renew_time: record.renew_time.map(Timestamp::truncated_to_seconds),
        ..record
    };
    assert_eq!(again, expected, "round trip of {text}");
    assert_eq!(again.to_json(), encoded, "encoding is stable");
}

/// Lease spec conversion: any JSON the Kubernetes types accept converts without panicking, and
/// a spec that converts round-trips through the record.
pub fn lease_spec(data: &[u8]) {
    use crate::kube::{LockObject, lease_spec_to_record, record_to_lease_spec};
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = <Lease as LockObject>::diagnose(&serde_json::json!({ "spec": value.clone() }));
    let Ok(spec) = serde_json::from_value::<LeaseSpec>(value) else {
        return;
    };
    let Ok(record) = lease_spec_to_record(&spec) else {
        return;
    };
    let back = record_to_lease_spec(&record);
    assert_eq!(
        lease_spec_to_record(&back),
        Ok(record),
        "round trip of {spec:?}"
    );
}

fn record_from(b: &mut Bytes<'_>) -> LeaderElectionRecord {
    let names = ["", "me", "bing", "qux", crate::record::UNKNOWN_LEADER];
    let holder = names[usize::from(b.u8()) % names.len()];
    let lease = match b.u8() % 4 {
        0 => 0,
        1 => u32::from(b.u8() % 30),
        2 => crate::record::MAX_INT32,
        _ => b.u32() % (crate::record::MAX_INT32 + 1),
    };
    let transitions = match b.u8() % 3 {
        0 => u32::from(b.u8()),
        1 => crate::record::MAX_INT32,
        _ => b.u32() % (crate::record::MAX_INT32 + 1),
    };
    LeaderElectionRecord {
        holder: Identity::new(holder).ok(),
        lease_duration_seconds: lease,
        leader_transitions: transitions,
        preferred_holder: if b.bool() {
            Identity::new("qux").ok()
        } else {
            None
        },
        ..Default::default()
    }
}

fn result_from(b: &mut Bytes<'_>) -> LockResult {
    let version = Version::new(u32::from(b.u8() % 8).to_string());
    match b.u8() % 9 {
        0 => Ok(LockResponse::Record(None)),
        1 | 2 => Ok(LockResponse::Record(Some(Versioned {
            version,
            value: record_from(b),
        }))),
        3 | 4 => Ok(LockResponse::Written(version)),
        5 => Err(LockError::new(LockErrorKind::Conflict, "fuzz")),
        6 => Err(LockError::new(LockErrorKind::AlreadyExists, "fuzz")),
        7 => Err(LockError::new(LockErrorKind::InvalidRecord, "fuzz")),
        _ => Err(LockError::new(LockErrorKind::Timeout, "fuzz")),
    }
}

/// A configuration from the fuzzer's bytes: one of four timings, release and after-loss.
fn config_from(b: &mut Bytes<'_>, identity: &str) -> Config {
    let mut config = Config::new(Identity(identity.into()));
    let (ld, rd, rp) = match b.u8() % 4 {
        0 => (15_000, 10_000, 2_000),
        1 => (4_000, 3_000, 500),
        2 => (2_000, 1_500, 100),
        _ => (60_000, 20_000, 5_000),
    };
    config.lease_duration = Duration::from_millis(ld);
    config.renew_deadline = Duration::from_millis(rd);
    config.retry_period = Duration::from_millis(rp);
    config.release_on_cancel = b.bool();
    config.after_loss = if b.bool() {
        AfterLoss::Recontend
    } else {
        AfterLoss::Finish
    };
    config
}

/// Arbitrary input sequences against the elector's invariants: no panic; at most one operation
/// outstanding; every deadline within the operation timeout and, for a leader, within its term;
/// `leader_until` never later than a successful write's issue plus the renew deadline;
/// `StartedLeading` only right after a successful write; started and stopped strictly
/// alternating; a term never outliving its end; nothing after `Done`.
pub fn elector_inputs(data: &[u8]) {
    let mut b = Bytes(data);
    let mut config = config_from(&mut b, "me");
    config.observation = if b.bool() {
        Observation::Watch
    } else {
        Observation::Poll
    };
    config.coordinated = b.u8() % 8 == 0;
    let rd = config.renew_deadline;
    let op_timeout = config.operation_timeout();
    let wall = |t: Instant| {
        let micros = i64::try_from(t.as_nanos() / 1000).unwrap_or(i64::MAX);
        Now::new(
            t,
            Timestamp::from_unix_micros(micros).unwrap_or(Timestamp::UNIX_EPOCH),
        )
    };
    let mut now = Instant::from_nanos(u64::from(b.u32()));
    let Ok(mut e) = Elector::new(config, wall(now), b.u64()) else {
        return;
    };
    // op, issued at, is a write, deadline
    let mut pending: Option<(OpId, Instant, bool, Instant)> = None;
    let mut last_success_issue: Option<Instant> = None;
    let mut answered_write_ok = false;
    let mut leading = false;
    let mut done = false;
    let mut steps = 0;
    loop {
        steps += 1;
        loop {
            match e.poll_action() {
                Action::Lock {
                    op,
                    request,
                    deadline,
                } => {
                    assert!(!done, "an operation after Done");
                    assert!(
                        pending.is_none(),
                        "{op} issued while {pending:?} is outstanding"
                    );
                    assert!(
                        deadline > now && deadline <= now + op_timeout,
                        "deadline {deadline} at {now}"
                    );
                    if let Some(until) = e.leader_until() {
                        assert!(deadline <= until, "a leader's operation outlives its term");
                    }
                    pending = Some((op, now, request != LockRequest::Get, deadline));
                }
                Action::Emit(Event::StartedLeading { leader_until, .. }) => {
                    assert!(!leading, "started twice");
                    assert!(answered_write_ok, "started without a successful write");
                    let issued = last_success_issue.expect("a write succeeded");
                    assert_eq!(leader_until, issued + rd);
                    leading = true;
                }
                Action::Emit(Event::Renewed { leader_until }) => {
                    assert!(leading, "renewed while not leading");
                    let issued = last_success_issue.expect("a write succeeded");
                    assert!(leader_until <= issued + rd);
                }
                Action::Emit(Event::StoppedLeading { .. }) => {
                    assert!(leading, "stopped without starting");
                    leading = false;
                }
                Action::Emit(_) => {}
                Action::SleepUntil { at, .. } => {
                    assert_eq!(e.poll_timeout(), Some(at));
                    break;
                }
                Action::Done => {
                    assert!(!leading, "finished while leading");
                    assert_eq!(e.poll_timeout(), None);
                    done = true;
                    break;
                }
            }
        }
        answered_write_ok = false;
        assert_eq!(leading, e.leader_until().is_some());
        if let Some(until) = e.leader_until() {
            assert!(until > now, "a term past its end was not stopped");
        }
        if b.is_empty() || steps >= 400 {
            break;
        }
        match b.u8() % 12 {
            0..=2 => {
                now = now + Duration::from_millis(u64::from(b.u16()) * 4);
                if pending.is_some_and(|(.., deadline)| now >= deadline) {
                    pending = None;
                }
                e.handle_input(Input::Timeout(wall(now)));
            }
            3 => {
                let back = now.saturating_sub(Duration::from_millis(u64::from(b.u16())));
                e.handle_input(Input::Timeout(wall(back)));
            }
            4..=6 => {
                if let Some((op, issued, is_write, _)) = pending.take() {
                    let result = result_from(&mut b);
                    if is_write && matches!(result, Ok(LockResponse::Written(_))) {
                        last_success_issue = Some(issued);
                        answered_write_ok = true;
                    }
                    e.handle_input(Input::LockResult {
                        now: wall(now),
                        op,
                        result,
                    });
                }
            }
            7 => {
                let op = OpId(u64::from(b.u8()));
                if pending.is_none_or(|(p, ..)| p != op) {
                    let result = result_from(&mut b);
                    e.handle_input(Input::LockResult {
                        now: wall(now),
                        op,
                        result,
                    });
                }
            }
            8 | 9 => {
                let record = b.bool().then(|| Versioned {
                    version: Version::new(u32::from(b.u8() % 8).to_string()),
                    value: record_from(&mut b),
                });
                e.handle_input(Input::Observed {
                    now: wall(now),
                    record,
                });
            }
            10 => e.handle_input(Input::LeaderWorkStopped(wall(now))),
            _ if b.bool() => e.handle_input(Input::WatchBroken(wall(now))),
            _ => e.handle_input(Input::Shutdown(wall(now))),
        }
    }
    // Then time runs out: every term must end.
    now = now + Duration::from_secs(3600);
    e.handle_input(Input::Timeout(wall(now)));
    for _ in 0..64 {
        if let Action::SleepUntil { .. } | Action::Done = e.poll_action() {
            break;
        }
    }
    assert!(!e.is_leader(now), "leading an hour after the last input");
}

/// The simulator with fuzzer-chosen parameters below the safety bound: no overlap, no second
/// operation in flight, versions and fencing tokens rising, no more operations per retry period
/// than the elector's bound. (Liveness is not asserted: the fuzzer may pick a loss rate nothing
/// can get through.)
pub fn simulation(data: &[u8]) {
    let mut b = Bytes(data);
    let config = config_from(&mut b, "template");
    let bound = config.tolerated_clock_rate_ratio();
    let mut scenario = Scenario::new(config.clone());
    scenario.nodes = Some(1 + usize::from(b.u8() % 5));
    scenario.clock_rate_ratio = Some(1.0 + (bound - 1.0) * f64::from(b.u8()) / 256.0);
    let max_latency = u64::from(b.u16() % 400);
    scenario.latency = Some((Duration::ZERO, Duration::from_millis(max_latency)));
    scenario.loss = Some(f64::from(b.u8() % 64) / 128.0);
    scenario.watch = Some(b.bool());
    scenario.faults = !b.bool();
    scenario.fault_phase = Some(config.lease_duration * (2 + u32::from(b.u8() % 8)));
    let params = scenario.params(b.u64());
    let outcome = sim::run(&params);
    let unsafe_ = outcome.violations.iter().any(|v| {
        !matches!(
            v,
            Violation::NoLeaderAfterFaults { .. } | Violation::Unstable { .. }
        )
    });
    assert!(!unsafe_, "{outcome}");
}
