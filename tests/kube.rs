//! The Kubernetes locks over real HTTP through kube-rs: each scenario runs on the test double
//! and on a real kube-apiserver (`on_both!`), except the faults only the double can make.
#![cfg(feature = "kube")]

mod apiserver;
mod backend;
mod envtest;

use std::collections::BTreeMap;
use std::time::Duration;

use apiserver::{ApiServer, Kind};
use backend::Backend;
use futures_util::StreamExt;
use leasehold::kube::{ConfigMapLock, EndpointsLock, LeaseLock, MultiLock};
use leasehold::lock::Lock;
use leasehold::record::ANNOTATION_KEY;
use leasehold::{
    Action, Config, Elector, Event, Identity, Input, Instant, LeaderElectionRecord, LockErrorKind,
    Now, Observation, Timestamp,
};
use serde_json::{Value, json};

const NS: &str = "default";

fn id(s: &str) -> Identity {
    Identity::new(s).expect("non-empty")
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).expect("valid time")
}

fn record(holder: &str) -> LeaderElectionRecord {
    LeaderElectionRecord {
        holder: Identity::new(holder).ok(),
        lease_duration_seconds: 15,
        acquire_time: Some(ts("2017-10-10T00:08:42.123456Z")),
        renew_time: Some(ts("2018-03-14T03:01:42.654321Z")),
        leader_transitions: 2,
        ..Default::default()
    }
}

/// create / get / update / conflict / already-exists, for any lock.
async fn crud(lock: &impl Lock, precise_times: bool) {
    assert_eq!(lock.get().await.expect("readable"), None);
    let v1 = lock.create(record("baz")).await.expect("created");
    let seen = lock.get().await.expect("readable").expect("present");
    assert_eq!(seen.version, v1);
    let mut expected = record("baz");
    if !precise_times {
        expected.acquire_time = expected.acquire_time.map(Timestamp::truncated_to_seconds);
        expected.renew_time = expected.renew_time.map(Timestamp::truncated_to_seconds);
    }
    assert_eq!(seen.value, expected);
    let v2 = lock
        .update(v1.clone(), record("qux"))
        .await
        .expect("current version");
    assert_ne!(v1, v2);
    let stale = lock
        .update(v1, record("zed"))
        .await
        .expect_err("stale version");
    assert_eq!(stale.kind, LockErrorKind::Conflict, "{stale}");
    let again = lock.create(record("zed")).await.expect_err("exists");
    assert_eq!(again.kind, LockErrorKind::AlreadyExists, "{again}");
    let current = lock.get().await.expect("readable").expect("present");
    assert_eq!(current.version, v2);
    assert_eq!(current.value.holder, Some(id("qux")));
}

async fn lease_lock_create_get_update_conflict(b: &Backend) {
    let lock = LeaseLock::new(b.client().await, b.ns(), "ctl");
    crud(&lock, true).await;
    assert_eq!(lock.describe(), format!("{}/ctl", b.ns()));
}

async fn endpoints_and_configmap_locks_create_get_update_conflict(b: &Backend) {
    crud(&EndpointsLock::new(b.client().await, b.ns(), "ep"), false).await;
    crud(&ConfigMapLock::new(b.client().await, b.ns(), "cm"), false).await;
    let ep = b.object(Kind::Endpoints, "ep").await.expect("stored");
    assert!(ep["metadata"]["annotations"][ANNOTATION_KEY].is_string());
}

/// What leasehold writes into a Lease is what client-go writes: the five fields always present
/// (strategy and preferredHolder only when set), MicroTime with six fractional digits.
async fn a_lease_written_by_leasehold_is_what_client_go_writes(b: &Backend) {
    let lock = LeaseLock::new(b.client().await, b.ns(), "golden");
    lock.create(record("baz")).await.expect("created");
    let stored = b.object(Kind::Lease, "golden").await.expect("stored");
    assert_eq!(
        stored["spec"],
        json!({
            "holderIdentity": "baz",
            "leaseDurationSeconds": 15,
            "acquireTime": "2017-10-10T00:08:42.123456Z",
            "renewTime": "2018-03-14T03:01:42.654321Z",
            "leaseTransitions": 2,
        })
    );
    assert_eq!(stored["apiVersion"], "coordination.k8s.io/v1");
}

/// And a Lease written by client-go (kube-controller-manager's, say) reads as client-go meant.
async fn a_lease_written_by_client_go_reads_back(b: &Backend) {
    b.put_raw(
        Kind::Lease,
        "kcm",
        json!({"spec": {
            "holderIdentity": "master-1_6b0b4a0e-0000-4000-8000-000000000000",
            "leaseDurationSeconds": 15,
            "acquireTime": "2024-05-01T10:00:00.000000Z",
            "renewTime": "2024-05-01T10:05:00.123456Z",
            "leaseTransitions": 3,
            "strategy": "OldestEmulationVersion",
            "preferredHolder": "master-2"
        }}),
    )
    .await;
    let lock = LeaseLock::new(b.client().await, b.ns(), "kcm");
    let seen = lock.get().await.expect("readable").expect("present");
    assert_eq!(
        seen.value,
        LeaderElectionRecord {
            holder: Identity::new("master-1_6b0b4a0e-0000-4000-8000-000000000000").ok(),
            lease_duration_seconds: 15,
            acquire_time: Some(ts("2024-05-01T10:00:00Z")),
            renew_time: Some(ts("2024-05-01T10:05:00.123456Z")),
            leader_transitions: 3,
            strategy: "OldestEmulationVersion".into(),
            preferred_holder: Identity::new("master-2").ok(),
        }
    );
}

/// The annotation locks write exactly client-go's annotation JSON, and read the real one.
async fn annotation_json_is_client_go_s(b: &Backend) {
    b.put_raw(Kind::ConfigMap,
        "old",
        json!({"metadata": {"annotations": {ANNOTATION_KEY: r#"{"holderIdentity":"bananapi","leaseDurationSeconds":15,"acquireTime":"2017-10-10T00:08:42Z","renewTime":"2018-03-14T03:01:42Z","leaderTransitions":0}"#}}}),
    ).await;
    let lock = ConfigMapLock::new(b.client().await, b.ns(), "old");
    let seen = lock.get().await.expect("readable").expect("present");
    assert_eq!(seen.value.holder, Some(id("bananapi")));
    lock.update(seen.version, seen.value)
        .await
        .expect("current");
    let stored = b.object(Kind::ConfigMap, "old").await.expect("stored");
    assert_eq!(
        stored["metadata"]["annotations"][ANNOTATION_KEY],
        r#"{"holderIdentity":"bananapi","leaseDurationSeconds":15,"acquireTime":"2017-10-10T00:08:42Z","renewTime":"2018-03-14T03:01:42Z","leaderTransitions":0,"strategy":"","preferredHolder":""}"#
    );
    // A ConfigMap without the annotation is an unheld lock.
    b.put_raw(Kind::ConfigMap, "bare", json!({"data": {"k": "v"}}))
        .await;
    let bare = ConfigMapLock::new(b.client().await, b.ns(), "bare");
    let seen = bare.get().await.expect("readable").expect("present");
    assert_eq!(seen.value, LeaderElectionRecord::default());
    bare.update(seen.version, record("baz"))
        .await
        .expect("current");
    let stored = b.object(Kind::ConfigMap, "bare").await.expect("stored");
    assert_eq!(stored["data"], json!({"k": "v"}), "other contents survive");
}

async fn lock_labels_merge_with_foreign_labels(b: &Backend) {
    b.put_raw(
        Kind::Lease,
        "labelled",
        json!({"metadata": {"labels": {"team": "infra", "app": "old"}}, "spec": {}}),
    )
    .await;
    let labels = BTreeMap::from([("app".to_string(), "ctl".to_string())]);
    let lock = LeaseLock::new(b.client().await, b.ns(), "labelled").with_labels(labels.clone());
    let seen = lock.get().await.expect("readable").expect("present");
    lock.update(seen.version, record("baz"))
        .await
        .expect("current");
    let stored = b.object(Kind::Lease, "labelled").await.expect("stored");
    assert_eq!(
        stored["metadata"]["labels"],
        json!({"team": "infra", "app": "ctl"})
    );
    let fresh = LeaseLock::new(b.client().await, b.ns(), "fresh").with_labels(labels);
    fresh.create(record("baz")).await.expect("created");
    let stored = b.object(Kind::Lease, "fresh").await.expect("stored");
    assert_eq!(stored["metadata"]["labels"], json!({"app": "ctl"}));
}

async fn a_foreign_writer_racing_us_makes_our_write_conflict(b: &Backend) {
    let lock = LeaseLock::new(b.client().await, b.ns(), "race");
    let v1 = lock.create(record("baz")).await.expect("created");
    b.foreign_writes(Kind::Lease, "race", 3).await;
    let err = lock.update(v1, record("baz")).await.expect_err("stale");
    assert_eq!(err.kind, LockErrorKind::Conflict);
    assert!(
        err.message.contains("the object has been modified"),
        "{err}"
    );
    // Reading again gives the new version, and the write goes through; the foreign annotation
    // survives it.
    let seen = lock.get().await.expect("readable").expect("present");
    lock.update(seen.version, record("baz"))
        .await
        .expect("current");
    let stored = b.object(Kind::Lease, "race").await.expect("stored");
    assert_eq!(
        stored["metadata"]["annotations"]["example.com/foreign-writer"],
        "2"
    );
}

/// Updating with a version learnt elsewhere (a watch) reads the object first and refuses if it
/// moved on.
async fn update_with_a_version_the_lock_has_not_cached(b: &Backend) {
    let writer = LeaseLock::new(b.client().await, b.ns(), "w");
    let v1 = writer.create(record("baz")).await.expect("created");
    let other = LeaseLock::new(b.client().await, b.ns(), "w");
    let v2 = other
        .update(v1.clone(), record("qux"))
        .await
        .expect("current");
    assert_eq!(
        other.update(v1, record("zed")).await.map_err(|e| e.kind),
        Err(LockErrorKind::Conflict)
    );
    other.update(v2, record("zed")).await.expect("current");
}

/// Garbage in the lock object is a clear error, and the elector never overwrites it.
#[tokio::test]
async fn garbage_lease_contents_are_errors_and_never_overwritten() {
    let cases = [
        (
            json!({"spec": {"holderIdentity": "x", "renewTime": "yesterday"}}),
            "spec.renewTime",
        ),
        (
            json!({"spec": {"holderIdentity": "x", "leaseDurationSeconds": "15"}}),
            "spec.leaseDurationSeconds",
        ),
        (
            json!({"spec": {"holderIdentity": "x", "leaseDurationSeconds": -3}}),
            "spec.leaseDurationSeconds",
        ),
        (
            json!({"spec": {"holderIdentity": 7}}),
            "spec.holderIdentity",
        ),
        (
            json!({"spec": {"acquireTime": "2024-02-30T00:00:00Z"}}),
            "spec.acquireTime",
        ),
        (
            json!({"spec": {"leaseDurationSeconds": 99999999999i64}}),
            "spec.leaseDurationSeconds",
        ),
        (
            json!({"spec": {"leaseTransitions": -1}}),
            "spec.leaseTransitions",
        ),
        (json!({"spec": "not an object"}), "spec"),
    ];
    for (i, (object, needle)) in cases.into_iter().enumerate() {
        let server = ApiServer::start().await;
        let name = format!("garbage-{i}");
        server.put_raw(Kind::Lease, NS, &name, object);
        let before = server.object(Kind::Lease, NS, &name).expect("stored");
        let lock = LeaseLock::new(server.client(), NS, &name);
        let err = lock.get().await.expect_err("unreadable");
        assert_eq!(err.kind, LockErrorKind::InvalidRecord, "{err}");
        assert!(
            err.message.contains(needle),
            "{err} should mention {needle}"
        );
        let writes = run_elector(&lock, 60).await.writes;
        assert_eq!(writes, 0, "case {i}: never written");
        assert_eq!(server.object(Kind::Lease, NS, &name), Some(before));
    }
}

async fn garbage_annotations_are_errors_and_never_overwritten(b: &Backend) {
    b.put_raw(Kind::Endpoints,
        "bad",
        json!({"metadata": {"annotations": {ANNOTATION_KEY: r#"{"holderIdentity":"x","renewTime":"2018-02-30T00:00:00Z"}"#}}}),
    ).await;
    let lock = EndpointsLock::new(b.client().await, b.ns(), "bad");
    let err = lock.get().await.expect_err("unreadable");
    assert_eq!(err.kind, LockErrorKind::InvalidRecord);
    assert!(err.message.contains("renewTime"), "{err}");
    let before = b.object(Kind::Endpoints, "bad").await;
    assert_eq!(run_elector(&lock, 60).await.writes, 0);
    assert_eq!(b.object(Kind::Endpoints, "bad").await, before);
}

#[tokio::test]
async fn server_errors_are_classified() {
    let server = ApiServer::start().await;
    let lock = LeaseLock::new(server.client(), NS, "e");
    for (code, kind) in [
        (500, LockErrorKind::Unavailable),
        (429, LockErrorKind::Unavailable),
        (403, LockErrorKind::Unauthorized),
        (401, LockErrorKind::Unauthorized),
        (504, LockErrorKind::Timeout),
        (422, LockErrorKind::Other),
    ] {
        // kube-client retries 429 and 5xx by itself, so fail every request for a moment.
        server.fail_every(Some((1, code)));
        let err = lock.get().await.expect_err("injected");
        server.fail_every(None);
        assert_eq!(err.kind, kind, "{code}: {err}");
        assert!(
            err.message.contains("injected fault"),
            "the server's message is kept: {err}"
        );
    }
    server.drop_next(1);
    let err = lock.get().await.expect_err("dropped");
    assert_eq!(err.kind, LockErrorKind::Other, "{err}");
    assert_eq!(lock.get().await.map_err(|e| e.kind), Ok(None), "recovers");
}

#[tokio::test]
async fn a_hung_request_is_cut_off_by_the_caller_deadline() {
    let server = ApiServer::start().await;
    let lock = LeaseLock::new(server.client(), NS, "h");
    server.hang(true);
    let hung = tokio::time::timeout(Duration::from_millis(300), lock.get()).await;
    assert!(hung.is_err(), "still waiting at the deadline");
    server.hang(false);
    assert_eq!(lock.get().await.map_err(|e| e.kind), Ok(None));
}

/// The API server refuses `leaseDurationSeconds: 0` (the bug client-go's release once had);
/// leasehold's release record uses 1, and goes through.
async fn the_release_record_passes_validation(b: &Backend) {
    let zeroed = LeaseLock::new(b.client().await, b.ns(), "zeroed");
    let v = zeroed.create(record("baz")).await.expect("created");
    let mut zero = record("");
    zero.lease_duration_seconds = 0;
    let err = zeroed.update(v.clone(), zero).await.expect_err("invalid");
    assert_eq!(err.kind, LockErrorKind::Other);
    assert!(err.message.contains("must be greater than 0"), "{err}");

    // The elector creates the lock, leads, and releases it on shutdown.
    let lock = LeaseLock::new(b.client().await, b.ns(), "rel");
    let mut config = Config::new(id("baz"));
    config.release_on_cancel = true;
    let outcome = run_elector_with(config, &lock, 5, true).await;
    assert!(
        outcome.events.contains(&Event::Released),
        "{:?}",
        outcome.events
    );
    let stored = b.object(Kind::Lease, "rel").await.expect("stored");
    assert_eq!(stored["spec"]["holderIdentity"], "");
    assert_eq!(stored["spec"]["leaseDurationSeconds"], 1);
}

/// The API server answers an update that changes nothing with the unchanged version.
async fn an_identical_update_is_a_no_op_answered_with_the_unchanged_version(b: &Backend) {
    let lease = LeaseLock::new(b.client().await, b.ns(), "same");
    let configmap = ConfigMapLock::new(b.client().await, b.ns(), "same");
    for lock in [&lease as &dyn NoOpProbe, &configmap] {
        lock.probe().await;
    }
    if let Some(server) = b.double_server() {
        assert_eq!(server.no_op_updates(), 2);
    }
}

trait NoOpProbe {
    fn probe(&self) -> futures_util::future::BoxFuture<'_, ()>;
}

impl<L: Lock> NoOpProbe for L {
    fn probe(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let v1 = self.create(record("baz")).await.expect("created");
            let v2 = self
                .update(v1.clone(), record("baz"))
                .await
                .expect("current");
            assert_eq!(
                v1,
                v2,
                "{}: nothing changed, nothing written",
                self.describe()
            );
        })
    }
}

/// Renewals every 200 ms on a lock that keeps whole seconds, with the wall clock frozen: every
/// renewal still changes the stored object, so none is an API-server no-op, and the leader
/// keeps leading.
async fn renewals_on_an_annotation_lock_are_never_no_ops(b: &Backend) {
    let lock = ConfigMapLock::new(b.client().await, b.ns(), "coarse");
    let mut config = Config::new(id("baz"));
    config.lease_duration = Duration::from_secs(2);
    config.renew_deadline = Duration::from_millis(1500);
    config.retry_period = Duration::from_millis(200);
    config.time_precision = lock.time_precision();
    assert_eq!(config.time_precision, Duration::from_secs(1));
    let run = run_elector_with(config, &lock, 10, false).await;
    assert!(run.leading);
    let renewals = run
        .events
        .iter()
        .filter(|e| matches!(e, Event::Renewed { .. }))
        .count();
    assert!(renewals >= 8, "about one a second: {renewals}");
    if let Some(server) = b.double_server() {
        assert_eq!(server.no_op_updates(), 0);
    }
}

async fn the_elector_leads_through_a_lease_lock(b: &Backend) {
    let lock = LeaseLock::new(b.client_as("cand-0").await, b.ns(), "lead");
    let outcome = run_elector(&lock, 30).await;
    assert!(outcome.leading);
    let renewals = outcome
        .events
        .iter()
        .filter(|e| matches!(e, Event::Renewed { .. }))
        .count();
    assert_eq!(renewals, 15, "one fast-path renewal every 2 s for 30 s");
    let stored = b.object(Kind::Lease, "lead").await.expect("stored");
    assert_eq!(stored["spec"]["holderIdentity"], "baz");
    let requests = b.requests_of("cand-0").await;
    assert_eq!(
        requests.iter().filter(|(verb, _)| verb == "get").count(),
        1,
        "the fast path renews without reading: {requests:?}"
    );
    assert_eq!(
        requests.iter().filter(|(verb, _)| verb == "update").count(),
        15,
        "{requests:?}"
    );
}

async fn watch_reports_changes_and_deletion(b: &Backend) {
    let lock = LeaseLock::new(b.client().await, b.ns(), "watched");
    let mut stream = lock.watch().expect("the Lease lock can watch");

    assert_eq!(next(&mut stream).await.map_err(|e| e.kind), Ok(None));
    let v1 = lock.create(record("baz")).await.expect("created");
    let seen = next(&mut stream).await.expect("readable").expect("present");
    assert_eq!(seen.version, v1);
    let v2 = lock.update(v1, record("qux")).await.expect("current");
    let seen = next(&mut stream).await.expect("readable").expect("present");
    assert_eq!((seen.version, seen.value.holder), (v2, Some(id("qux"))));
    // A record kube decodes but leasehold refuses (the real server refuses to store it).
    if b.double_server().is_some() {
        b.put_raw(
            Kind::Lease,
            "watched",
            json!({"spec": {"leaseDurationSeconds": -3}}),
        )
        .await;
        let err = next(&mut stream)
            .await
            .expect_err("garbage is reported, not swallowed");
        assert_eq!(err.kind, LockErrorKind::InvalidRecord);
    }
    b.delete(Kind::Lease, "watched").await;
    // Then the deletion.
    let deleted = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(Ok(None)) = stream.next().await {
                return;
            }
        }
    })
    .await;
    assert!(deleted.is_ok(), "the deletion is reported");
}

async fn events_are_recorded_on_the_lock_object(b: &Backend) {
    let reporter = kube::runtime::events::Reporter {
        controller: "leasehold-test".into(),
        instance: Some("baz".into()),
    };
    let lock = LeaseLock::new(b.client().await, b.ns(), "ev").with_events(
        b.client().await,
        reporter,
        id("baz"),
    );
    lock.create(record("baz")).await.expect("created");
    lock.record_event("became leader").await;
    let events = b.events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["reason"], "LeaderElection");
    assert_eq!(e["note"], "baz became leader");
    assert_eq!(e["type"], "Normal");
    assert_eq!(e["regarding"]["kind"], "Lease");
    assert_eq!(e["regarding"]["name"], "ev");
}

async fn multilock_over_endpoints_and_lease(b: &Backend) {
    let lock = MultiLock::new(
        EndpointsLock::new(b.client().await, b.ns(), "m"),
        LeaseLock::new(b.client().await, b.ns(), "m"),
    );
    assert!(run_elector(&lock, 3).await.leading);
    assert!(b.object(Kind::Endpoints, "m").await.is_some());
    assert_eq!(
        b.object(Kind::Lease, "m")
            .await
            .map(|l| l["spec"]["holderIdentity"].clone()),
        Some(Value::from("baz"))
    );
}

async fn next(
    stream: &mut futures_util::stream::BoxStream<
        'static,
        Result<leasehold::lock::Sighting, leasehold::LockError>,
    >,
) -> Result<leasehold::lock::Sighting, leasehold::LockError> {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
}

// ---- a minimal driver for these tests: simulated instants, real lock calls ----------------

struct Run {
    leading: bool,
    writes: usize,
    events: Vec<Event>,
}

async fn run_elector(lock: &impl Lock, secs: u64) -> Run {
    run_elector_with(Config::new(id("baz")), lock, secs, false).await
}

/// Drives an elector for `secs` simulated seconds, performing its lock operations for real (no
/// real waiting between them), then shuts it down if asked.
async fn run_elector_with(config: Config, lock: &impl Lock, secs: u64, shutdown: bool) -> Run {
    let now_at = |t: Instant| Now::new(t, Timestamp::UNIX_EPOCH);
    let mut now = now_at(Instant::ZERO);
    let mut e = Elector::new(config, now, 7).expect("valid");
    let mut run = Run {
        leading: false,
        writes: 0,
        events: Vec::new(),
    };
    let end = Instant::from_secs(secs);
    let mut shut = false;
    loop {
        match e.poll_action() {
            Action::Lock { op, request, .. } => {
                if !matches!(request, leasehold::LockRequest::Get) {
                    run.writes += 1;
                }
                let result = lock.execute(request).await;
                e.handle_input(Input::LockResult { now, op, result });
            }
            Action::Emit(Event::StoppedLeading {
                reason: leasehold::StopReason::Shutdown,
            }) => {
                run.events.push(Event::StoppedLeading {
                    reason: leasehold::StopReason::Shutdown,
                });
                e.handle_input(Input::LeaderWorkStopped(now));
            }
            Action::Emit(event) => run.events.push(event),
            Action::SleepUntil { at, .. } if at <= end => {
                now = now_at(at);
                e.handle_input(Input::Timeout(now));
            }
            Action::SleepUntil { .. } if shutdown && !shut => {
                run.leading = e.is_leader(now.instant);
                shut = true;
                e.handle_input(Input::Shutdown(now));
            }
            Action::SleepUntil { .. } | Action::Done => break,
        }
    }
    if !shut {
        run.leading = e.is_leader(now.instant);
    }
    run
}

/// A 429 with `Retry-After` reaches the elector as a pause to honour.
#[tokio::test]
async fn retry_after_is_read_from_the_status() {
    let server = ApiServer::start().await;
    let lock = LeaseLock::new(server.client(), NS, "busy");
    server.fail_next(&[429]);
    let error = lock.get().await.expect_err("overloaded");
    assert_eq!(error.kind, LockErrorKind::Unavailable);
    assert_eq!(
        error.retry_after,
        Some(Duration::from_secs(u64::from(
            apiserver::INJECTED_RETRY_AFTER_SECONDS
        )))
    );
}

// ---- preflight and misconfiguration ------------------------------------------------------

async fn preflight_passes_when_all_is_well_and_writes_nothing(b: &Backend) {
    let lock = LeaseLock::new(b.client().await, b.ns(), "pre");
    lock.preflight(Observation::Watch)
        .await
        .expect("all is well");
    assert!(b.object(Kind::Lease, "pre").await.is_none(), "dry run only");
    lock.create(record("baz")).await.expect("created");
    lock.preflight(Observation::Watch)
        .await
        .expect("an existing lock is fine too");
}

async fn preflight_names_a_missing_namespace(b: &Backend) {
    let gone = b.missing_namespace().await;
    let lock = LeaseLock::new(b.client().await, &gone, "pre");
    let error = lock
        .preflight(Observation::Watch)
        .await
        .expect_err("missing namespace");
    assert_eq!(
        error,
        leasehold::kube::PreflightError::NamespaceMissing {
            namespace: gone.clone()
        }
    );
    // And the lock itself says so on create.
    let create = lock.create(record("baz")).await.expect_err("no namespace");
    assert!(
        create
            .message
            .contains(&format!("namespaces \"{gone}\" not found")),
        "{create}"
    );
    assert_eq!(create.kind, LockErrorKind::NotFound);
}

/// RBAC refusals, with the unprivileged user: nothing without a Role; with a Role granting
/// some verbs, exactly the others are named, with the Role to apply.
async fn preflight_names_missing_permissions_and_the_role_to_grant(b: &Backend) {
    let alice = b.client_as("alice").await;
    let lock = LeaseLock::new(alice, b.ns(), "pre");
    let nothing = lock.get().await.expect_err("no Role: 403");
    assert_eq!(nothing.kind, LockErrorKind::Unauthorized, "{nothing}");
    // The client's own error is kept as the source, for `?` into anyhow and for inspection.
    let source = std::error::Error::source(&nothing).expect("a source");
    assert!(
        matches!(source.downcast_ref::<kube::Error>(), Some(kube::Error::Api(status)) if status.code == 403),
        "{source:?}"
    );
    assert!(nothing.message.contains("403"), "{nothing}");
    let error = lock
        .preflight(Observation::Watch)
        .await
        .expect_err("forbidden");
    assert!(
        error
            .to_string()
            .contains("may not get, list, watch, create, update leases"),
        "{error}"
    );
    b.grant("coordination.k8s.io", "leases", &["get", "list", "create"])
        .await;
    let error = lock
        .preflight(Observation::Watch)
        .await
        .expect_err("forbidden");
    let text = error.to_string();
    assert!(
        text.contains("may not watch, update leases.coordination.k8s.io"),
        "{text}"
    );
    // Polling needs no watch: only the update is missing then.
    let polling = lock
        .preflight(Observation::Poll)
        .await
        .expect_err("forbidden")
        .to_string();
    assert!(polling.contains("may not update leases"), "{polling}");
    assert!(text.contains("kind: Role"), "{text}");
    assert!(
        text.contains("apiGroups: [\"coordination.k8s.io\"]"),
        "{text}"
    );
    // The refused verb fails for real, classified as such.
    let v = lock.create(record("baz")).await.expect("create is allowed");
    let update = lock.update(v, record("baz")).await.expect_err("403");
    assert_eq!(update.kind, LockErrorKind::Unauthorized);
}

on_both!(
    lease_lock_create_get_update_conflict,
    endpoints_and_configmap_locks_create_get_update_conflict,
    a_lease_written_by_leasehold_is_what_client_go_writes,
    a_lease_written_by_client_go_reads_back,
    annotation_json_is_client_go_s,
    lock_labels_merge_with_foreign_labels,
    a_foreign_writer_racing_us_makes_our_write_conflict,
    update_with_a_version_the_lock_has_not_cached,
    garbage_annotations_are_errors_and_never_overwritten,
    the_release_record_passes_validation,
    an_identical_update_is_a_no_op_answered_with_the_unchanged_version,
    renewals_on_an_annotation_lock_are_never_no_ops,
    the_elector_leads_through_a_lease_lock,
    watch_reports_changes_and_deletion,
    events_are_recorded_on_the_lock_object,
    multilock_over_endpoints_and_lease,
    preflight_passes_when_all_is_well_and_writes_nothing,
    preflight_names_a_missing_namespace,
    preflight_names_missing_permissions_and_the_role_to_grant,
);

/// Names as the API server judges them (DNS subdomains and labels): garbage is refused before
/// it can reach a URL.
#[test]
fn object_and_namespace_names_follow_the_api_servers_rules() {
    use leasehold::kube::{is_namespace_name, is_object_name};
    let longest = "a".repeat(253);
    for ok in ["a", "a-b", "a.b", "0", "a1.b2-c", longest.as_str()] {
        assert!(is_object_name(ok), "{ok}");
    }
    let too_long = "a".repeat(254);
    for bad in [
        "",
        "A",
        "a_b",
        "-a",
        "a-",
        ".a",
        "a.",
        "a..b",
        "a.-b",
        "a-.b",
        "x?dryRun=All",
        "a/b",
        "é",
        too_long.as_str(),
    ] {
        assert!(!is_object_name(bad), "{bad:?}");
    }
    assert!(is_namespace_name("kube-system"));
    assert!(!is_namespace_name("a.b"));
    assert!(!is_namespace_name(&"a".repeat(64)));
}
