//! Coordinated leader election over HTTP: LeaseCandidate registration, answers to pings, the
//! election controller's choice (a stand-in in the Lease API test server), yielding to a
//! better late candidate with a release, shutdown, and no controller at all.
#![cfg(all(feature = "tokio", feature = "kube"))]
#![allow(clippy::disallowed_methods)] // these tests read the real clock

mod apiserver;
mod backend;
mod common;
mod envtest;

use std::time::{Duration, Instant};

use apiserver::{ApiServer, Kind};
use backend::Backend;
use common::{fast, id};
use leasehold::kube::{CandidateVersions, LeaseCandidateRegistration, LeaseLock};
use leasehold::tokio::{Handle, LeaderElector};
use leasehold::{AfterLoss, Config, FencingToken, Observation};
use tokio::time::sleep;

const NS: &str = "default";

fn candidate_config(name: &str) -> Config {
    Config {
        observation: Observation::Watch,
        after_loss: AfterLoss::Recontend,
        ..fast(name)
    }
}

async fn spawn(b: &Backend, name: &str, version: &str) -> Handle {
    // The registration derived from the lock and the identity.
    LeaderElector::builder(
        candidate_config(name),
        LeaseLock::new(b.client().await, b.ns(), "ctl"),
    )
    .coordinated(CandidateVersions::new(version))
    .on_started_leading(|leader| async move { leader.cancel.cancelled().await })
    .on_stopped_leading(|| {})
    .build()
    .expect("valid")
    .spawn()
}

async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// `until` for a condition that asks the server.
async fn until_async<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> Duration {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

async fn candidate(b: &Backend, name: &str) -> Option<serde_json::Value> {
    b.object(Kind::LeaseCandidate, name).await
}

async fn the_registration_answers_pings_and_is_deleted_on_stop(b: &Backend) {
    let registration = LeaseCandidateRegistration::new(
        b.client().await,
        b.ns(),
        &id("a"),
        "ctl",
        CandidateVersions::new("1.36.0"),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(registration.run(async move {
        let _ = stopped.await;
    }));
    until_async(Duration::from_secs(3), || async {
        candidate(b, "a").await.is_some()
    })
    .await;
    let c = candidate(b, "a").await.expect("registered");
    assert_eq!(c["spec"]["leaseName"], "ctl");
    assert_eq!(c["spec"]["binaryVersion"], "1.36.0");
    assert_eq!(c["spec"]["emulationVersion"], "1.36.0");
    assert_eq!(c["spec"]["strategy"], "OldestEmulationVersion");
    // The controller pings: pingTime after renewTime. The answer comes at once.
    let renewed = c["spec"]["renewTime"]
        .as_str()
        .expect("renewed")
        .to_string();
    let mut pinged = c.clone();
    pinged["spec"]["pingTime"] = serde_json::json!("2999-01-01T00:00:00.000000Z");
    b.put_raw(Kind::LeaseCandidate, "a", pinged).await;
    let answered = until_async(Duration::from_secs(2), || async {
        candidate(b, "a")
            .await
            .is_some_and(|c| c["spec"]["renewTime"].as_str() != Some(renewed.as_str()))
    })
    .await;
    assert!(
        answered < Duration::from_secs(1),
        "answered in {answered:?}"
    );
    // Stamped no earlier than the ping, so the controller counts it even if our clock lags;
    // and answered once, not in a loop.
    let answer = candidate(b, "a").await.expect("registered");
    assert_eq!(answer["spec"]["renewTime"], "2999-01-01T00:00:00.000000Z");
    let version = answer["metadata"]["resourceVersion"].clone();
    sleep(Duration::from_millis(300)).await;
    assert_eq!(
        candidate(b, "a").await.expect("registered")["metadata"]["resourceVersion"],
        version,
        "one answer per ping"
    );
    // Someone deletes it: registered again.
    b.delete(Kind::LeaseCandidate, "a").await;
    until_async(Duration::from_secs(3), || async {
        candidate(b, "a").await.is_some()
    })
    .await;
    // A graceful stop deletes it, so that no election waits for it.
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(6), task)
        .await
        .expect("stops")
        .expect("no panic");
    assert!(candidate(b, "a").await.is_none());
}

async fn the_controller_picks_the_oldest_version_and_tokens_rise(b: &Backend) {
    b.election_controller();
    let newer = spawn(b, "b", "1.37.0").await;
    let older = spawn(b, "a", "1.36.0").await;
    until(Duration::from_secs(5), || older.is_leader()).await;
    assert!(!newer.is_leader());
    let token = older.probe().state().token.expect("leading");
    assert!(
        token >= FencingToken(1),
        "a coordinated term counts a transition: {token}"
    );
    let lease = b.object(Kind::Lease, "ctl").await.expect("created");
    assert_eq!(lease["spec"]["holderIdentity"], "a");
    older.shutdown().await;
    newer.shutdown().await;
    assert!(candidate(b, "a").await.is_none() && candidate(b, "b").await.is_none());
}

async fn a_better_late_candidate_leads_within_a_second_or_so(b: &Backend) {
    b.election_controller();
    let newer = spawn(b, "b", "1.37.0").await;
    until(Duration::from_secs(5), || newer.is_leader()).await;
    let first = newer.probe().state().token.expect("leading");
    // An older version joins: the controller prefers it; the leader yields and releases.
    let joined = Instant::now();
    let older = spawn(b, "a", "1.36.0").await;
    until(Duration::from_secs(5), || older.is_leader()).await;
    let handover = joined.elapsed();
    eprintln!(
        "coordinated handover to a better late candidate ({}): {handover:?}",
        b.name()
    );
    assert!(
        handover < Duration::from_secs(3),
        "handover took {handover:?}"
    );
    assert!(!newer.is_leader());
    let second = older.probe().state().token.expect("leading");
    assert!(second > first, "tokens rise: {first} then {second}");
    older.shutdown().await;
    newer.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_controller_nobody_leads() {
    let backend = Backend::double("without_the_controller").await;
    let a = spawn(&backend, "a", "1.36.0").await;
    let b = spawn(&backend, "b", "1.37.0").await;
    until_async(Duration::from_secs(3), || async {
        candidate(&backend, "a").await.is_some() && candidate(&backend, "b").await.is_some()
    })
    .await;
    sleep(Duration::from_secs(3)).await;
    assert!(!a.is_leader() && !b.is_leader());
    assert!(
        backend.object(Kind::Lease, "ctl").await.is_none(),
        "never created"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Builds a coordinated elector named `identity` with a candidate named `candidate`.
fn build(
    server: &ApiServer,
    identity: &str,
    candidate: &str,
) -> Result<LeaderElector<LeaseLock>, leasehold::tokio::BuildError> {
    let registration = LeaseCandidateRegistration::new(
        server.client(),
        NS,
        &id(candidate),
        "ctl",
        CandidateVersions::new("1.36.0"),
    );
    LeaderElector::builder(
        candidate_config(identity),
        LeaseLock::new(server.client(), NS, "ctl"),
    )
    .lease_candidate(registration)
    .on_started_leading(|_| async {})
    .on_stopped_leading(|| {})
    .build()
}

#[tokio::test]
async fn the_candidate_must_be_named_as_the_identity_a_valid_object_name() {
    let server = ApiServer::start().await;
    let Err(mismatch) = build(&server, "a", "other") else {
        panic!("another name");
    };
    assert!(
        matches!(
            mismatch,
            leasehold::tokio::BuildError::CandidateIdentity { .. }
        ),
        "{mismatch}"
    );
    let Err(invalid) = build(&server, "Host_1", "Host_1") else {
        panic!("not an object name");
    };
    assert_eq!(
        invalid,
        leasehold::tokio::BuildError::CandidateName {
            identity: "Host_1".into()
        }
    );
    assert!(
        invalid.to_string().contains("valid object name"),
        "{invalid}"
    );
    assert!(build(&server, "host-1.example", "host-1.example").is_ok());
}

/// The blocking driver runs the registration too.
async fn the_blocking_driver_registers_and_leads_when_picked(b: &Backend) {
    use leasehold::blocking::{LeaderElector as Blocking, RemoteLock};
    b.election_controller();
    let source = b.client_source("admin");
    let ns = b.ns().to_string();
    // The only runtime is the lock's own: the registration derived from the lock uses its
    // client there.
    let handle = tokio::task::spawn_blocking(move || {
        let configmap = RemoteLock::spawn({
            let (source, ns) = (source.clone(), ns.clone());
            move || async move {
                Ok::<_, String>(leasehold::kube::ConfigMapLock::new(
                    source.client().await,
                    &ns,
                    "ctl",
                ))
            }
        })
        .expect("the lock starts");
        let Err(refused) = Blocking::builder(candidate_config("a"), configmap)
            .coordinated(CandidateVersions::new("1.36.0"))
            .on_started_leading(|leader| leader.stop.wait())
            .on_stopped_leading(|| {})
            .build()
        else {
            panic!("no Lease");
        };
        assert!(
            matches!(refused, leasehold::blocking::BuildError::NotALease { .. }),
            "{refused}"
        );
        let lock = RemoteLock::spawn(move || async move {
            Ok::<_, String>(LeaseLock::new(source.client().await, &ns, "ctl"))
        })
        .expect("the lock starts");
        Blocking::builder(candidate_config("a"), lock)
            .coordinated(CandidateVersions::new("1.36.0"))
            .on_started_leading(|leader| leader.stop.wait())
            .on_stopped_leading(|| {})
            .build()
            .expect("valid")
            .spawn()
    })
    .await
    .expect("built");
    until(Duration::from_secs(5), || handle.is_leader()).await;
    assert!(candidate(b, "a").await.is_some());
    tokio::task::spawn_blocking(move || handle.shutdown())
        .await
        .expect("shut down");
    assert!(candidate(b, "a").await.is_none(), "deleted on shutdown");
}

/// Versions the API server would refuse (422 on every attempt) are refused when building.
#[tokio::test]
async fn invalid_versions_are_refused_when_building() {
    let server = ApiServer::start().await;
    for (binary, emulation, says) in [
        ("v1.36", Some("1.36.0"), "binaryVersion"),
        ("banana", Some("1.36.0"), "binaryVersion"),
        ("1.36", Some("1.36.0"), "binaryVersion"),
        ("1.36.0", Some("1.37.0"), "at most binaryVersion"),
        ("1.36.0", None, "required"),
        ("1.36.0", Some("01.2.3"), "emulationVersion"),
    ] {
        let versions = CandidateVersions {
            emulation_version: emulation.map(str::to_string),
            ..CandidateVersions::new(binary)
        };
        let registration =
            LeaseCandidateRegistration::new(server.client(), NS, &id("a"), "ctl", versions);
        let built = LeaderElector::builder(
            candidate_config("a"),
            LeaseLock::new(server.client(), NS, "ctl"),
        )
        .lease_candidate(registration)
        .on_started_leading(|_| async {})
        .on_stopped_leading(|| {})
        .build();
        match built {
            Err(leasehold::tokio::BuildError::CandidateVersions(message)) => {
                assert!(message.contains(says), "{binary} {emulation:?}: {message}")
            }
            Err(e) => panic!("{binary}: {e}"),
            Ok(_) => panic!("{binary} {emulation:?} accepted"),
        }
    }
    for ok in ["1.36.0", "1.36.2-rc.1", "1.36.2+build.5", "0.0.0"] {
        assert_eq!(CandidateVersions::new(ok).validate(), Ok(()), "{ok}");
    }
}

/// The preflight finds a missing API and missing permissions; a registration refused at run
/// time is in the state and fails the health checks.
/// The preflight finds missing permissions (and, on the double, a missing API); a registration
/// refused at run time is in the state and fails the health checks. As the unprivileged user,
/// who may use the Lease and read LeaseCandidates, but not create one.
async fn registration_errors_are_found_early_and_visible(b: &Backend) {
    let alice = b.client_as("alice").await;
    b.grant(
        "coordination.k8s.io",
        "leases",
        &["get", "list", "watch", "create", "update"],
    )
    .await;
    b.grant(
        "coordination.k8s.io",
        "leasecandidates",
        &["get", "list", "watch", "update", "delete"],
    )
    .await;
    let registration = || {
        LeaseCandidateRegistration::new(
            alice.clone(),
            b.ns(),
            &id("a"),
            "ctl",
            CandidateVersions::new("1.36.0"),
        )
    };
    let refused = registration().preflight().await.expect_err("forbidden");
    assert!(refused.to_string().contains("may not create"), "{refused}");
    assert!(refused.to_string().contains("leasecandidates"), "{refused}");

    // Refused at run time: visible on the handle, and the health checks fail.
    let handle = LeaderElector::builder(
        candidate_config("a"),
        LeaseLock::new(alice.clone(), b.ns(), "ctl"),
    )
    .lease_candidate(registration())
    .on_started_leading(|leader| async move { leader.cancel.cancelled().await })
    .on_stopped_leading(|| {})
    .build()
    .expect("valid")
    .spawn();
    until(Duration::from_secs(5), || {
        handle.state().registration_error.is_some()
    })
    .await;
    let state = handle.state();
    assert!(
        state
            .registration_error
            .as_deref()
            .is_some_and(|e| e.contains("403")),
        "{state:?}"
    );
    assert!(handle.check(Duration::from_secs(20)).is_err());
    assert!(handle.check_ready(Duration::from_secs(20)).is_err());
    handle.shutdown().await;

    if let Some(server) = b.double_server() {
        server.disable_coordination_beta();
        let missing = LeaseCandidateRegistration::new(
            b.client().await,
            b.ns(),
            &id("a"),
            "ctl",
            CandidateVersions::new("1.36.0"),
        )
        .preflight()
        .await
        .expect_err("not served");
        assert!(
            missing.to_string().contains("CoordinatedLeaderElection"),
            "{missing}"
        );
    }
}

on_both!(
    the_registration_answers_pings_and_is_deleted_on_stop,
    the_controller_picks_the_oldest_version_and_tokens_rise,
    a_better_late_candidate_leads_within_a_second_or_so,
    the_blocking_driver_registers_and_leads_when_picked,
    registration_errors_are_found_early_and_visible,
);

/// The registration's preflight refuses a name that is no object name before it sends
/// anything.
#[tokio::test]
async fn the_registration_preflight_refuses_an_invalid_name_before_any_request() {
    let server = ApiServer::start().await;
    let before = server.requests().len();
    let registration = LeaseCandidateRegistration::new(
        server.client(),
        NS,
        &id("Host_1"),
        "ctl",
        CandidateVersions::new("1.36.0"),
    );
    let refused = registration.preflight().await.expect_err("refused");
    assert!(
        refused.to_string().contains("valid object name"),
        "{refused}"
    );
    assert_eq!(server.requests().len(), before, "nothing was sent");
}
