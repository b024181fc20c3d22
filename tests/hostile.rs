//! Hostile and inconsistent records, in the shapes reported upstream (kube-lease-manager#31,
//! actor-ts#598, kubernetes#88194, kubert's MissingSpec). Each gets a clear error or a
//! documented conservative decision, and a record that cannot be decoded is never written.

mod common;

use common::*;
use leasehold::{LeaderElectionRecord, LockErrorKind, LockRequest, Timestamp};

fn ts(s: &str) -> Option<Timestamp> {
    Some(Timestamp::parse_rfc3339(s).expect("valid"))
}

/// Holder empty but renewTime set: nobody holds it. Decision (client-go's): an empty holder is
/// free at once, whatever the times say.
#[test]
fn empty_holder_with_a_fresh_renew_time_is_free() {
    let mut h = Harness::new(config());
    let odd = LeaderElectionRecord {
        renew_time: ts("2099-01-01T00:00:00Z"),
        acquire_time: ts("2099-01-01T00:00:00Z"),
        lease_duration_seconds: 3600,
        ..Default::default()
    };
    h.answer(found("1", odd));
    assert!(
        matches!(h.request(), LockRequest::Update { .. }),
        "taken at once"
    );
}

/// A renewTime in the future (or the past) changes nothing: record times are never trusted,
/// only the record's change is. The lease expires one lease after it was last seen to change.
#[test]
fn renew_time_in_the_future_is_ignored() {
    for when in ["2999-12-31T23:59:59Z", "1970-01-01T00:00:00Z"] {
        let mut h = Harness::new(config());
        let r = LeaderElectionRecord {
            holder: Some(id("bing")),
            lease_duration_seconds: 10,
            renew_time: ts(when),
            ..Default::default()
        };
        h.answer(found("1", r.clone()));
        loop {
            if let Some(p) = &h.pending {
                if p.request != LockRequest::Get {
                    break;
                }
                h.answer(found("1", r.clone()));
            } else {
                h.wake();
            }
        }
        assert_eq!(h.now, secs(10), "{when}");
    }
}

/// An absurd leaseDurationSeconds (the int32 maximum, 68 years). Decision: honoured as written:
/// it is indistinguishable from a deliberately long lease, and trusting the holder's duration is
/// what keeps mixed configurations safe (kubernetes#47671). A human must fix such a lock; the
/// elector never takes it over early.
#[test]
fn an_absurd_lease_duration_is_honoured() {
    let mut h = Harness::new(config());
    let pinned = LeaderElectionRecord {
        holder: Some(id("bing")),
        lease_duration_seconds: leasehold::record::MAX_INT32,
        ..Default::default()
    };
    h.answer(found("1", pinned.clone()));
    for _ in 0..2000 {
        if let Some(p) = &h.pending {
            assert_eq!(p.request, LockRequest::Get, "never written");
            h.answer(found("1", pinned.clone()));
        } else {
            h.wake();
        }
    }
    assert!(
        h.now > secs(1800),
        "polled for over half an hour: {}",
        h.now
    );
}

/// Zero duration with a holder: decision, wait our own lease (client-go would take it at once).
/// Negative: a decoding error naming the field.
#[test]
fn zero_and_negative_durations() {
    let mut h = Harness::new(config());
    h.answer(found("1", record("bing", 0)));
    assert!(h.pending.is_none(), "not taken at once");
    let err =
        LeaderElectionRecord::from_json(r#"{"holderIdentity":"bing","leaseDurationSeconds":-1}"#)
            .expect_err("negative");
    assert_eq!(err.field, "leaseDurationSeconds");
    assert!(err.to_string().contains("negative"), "{err}");
}

/// A lock object that cannot be decoded reaches the elector as `InvalidRecord`: it keeps reading
/// (with backoff) and never writes.
#[test]
fn an_undecodable_record_is_never_written() {
    let mut h = Harness::new(config());
    for _ in 0..100 {
        if h.pending.is_some() {
            h.answer(failed(LockErrorKind::InvalidRecord));
        } else {
            h.wake();
        }
    }
    assert!(h.issued.iter().all(|i| i.request == LockRequest::Get));
    assert!(h.now > secs(60));
}

/// Huge strings: a megabyte identity decodes (the API server bounds object size, not this
/// field), and a megabyte of garbage in a time gives an error whose text stays short.
#[test]
fn huge_strings() {
    let big = "x".repeat(1 << 20);
    let r = LeaderElectionRecord::from_json(&format!(r#"{{"holderIdentity":"{big}"}}"#))
        .expect("decodes");
    assert_eq!(r.holder.map(|h| h.as_str().len()), Some(1 << 20));
    let err = LeaderElectionRecord::from_json(&format!(r#"{{"renewTime":"{big}"}}"#))
        .expect_err("garbage");
    assert!(
        err.to_string().len() < 300,
        "bounded message: {} bytes",
        err.to_string().len()
    );
    let deep = "[".repeat(100_000);
    let err = LeaderElectionRecord::from_json(&deep).expect_err("too deep");
    assert_eq!(err.field, "record");
}

/// A Lease without a spec (created by hand or by a tool): decision (client-go's), the empty
/// record, free to take.
#[cfg(feature = "kube")]
#[test]
fn a_lease_without_a_spec_is_an_empty_record() {
    use k8s_openapi::api::coordination::v1::Lease;
    use leasehold::kube::LockObject;
    assert_eq!(
        Lease::default().record(),
        Ok(LeaderElectionRecord::default())
    );
    let mut h = Harness::new(config());
    h.answer(found("1", LeaderElectionRecord::default()));
    assert!(matches!(h.request(), LockRequest::Update { .. }));
}
