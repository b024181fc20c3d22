//! The member Leases of a shard group ([`MemberLeases`]) on a real kube-apiserver: the
//! semantics the shard protocol relies on (compare-and-swap writes, lists that are cuts of the
//! whole group and only the group, deletion through the member finalizer, a watch in commit
//! order, unreadable Leases listed and not dropped, preflight), pinned against the server
//! itself. Skipped (with a note) without `KUBEBUILDER_ASSETS`; run with
//! `KUBEBUILDER_ASSETS=../shared/envtest LEASEHOLD_REQUIRE_REAL_APISERVER=1`.
#![cfg(feature = "kube")]
#![allow(clippy::disallowed_methods)] // these tests read the real clock

mod envtest;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use leasehold::kube::{MemberLeases, PreflightError};
use leasehold::shards::claims::{GROUP_LABEL, MEMBER_ANNOTATION, MEMBER_FINALIZER, MemberClaims};
use leasehold::shards::{
    GroupChange, GroupLock, GroupRequest, GroupResponse, GroupResult, MemberRecord, MemberSighting,
    ShardAction, ShardConfig, ShardEvent, ShardInput, ShardMember,
};
use leasehold::{
    Config, Identity, Instant, LeaderElectionRecord, LockError, LockErrorKind, Now, Timestamp,
    Version,
};
use serde_json::json;

const SHARDS: u32 = 8;

type Watch = BoxStream<'static, Result<GroupChange, LockError>>;

/// A test's share of the control plane: its namespace and an admin client in it.
struct Env {
    plane: &'static envtest::ControlPlane,
    ns: String,
    admin: kube::Client,
    _turn: envtest::Turn,
    _logs: envtest::LogsOnFailure,
}

impl Env {
    async fn new(test: &str) -> Option<Env> {
        let plane = envtest::control_plane(test)?;
        let turn = plane.turn(false);
        let logs = plane.logs_on_failure();
        let ns = plane.namespace(test).await;
        let admin = plane.client_in("admin", &ns).await;
        Some(Env {
            plane,
            ns,
            admin,
            _turn: turn,
            _logs: logs,
        })
    }

    fn member(&self, group: &str, lease: &str) -> MemberLeases {
        MemberLeases::new(self.admin.clone(), &self.ns, group, lease)
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    async fn lease(&self, name: &str) -> Option<Lease> {
        self.leases().get_opt(name).await.expect("readable")
    }
}

fn id(s: &str) -> Identity {
    Identity::new(s).expect("non-empty")
}

/// A member's write: held by `holder` (or a release), with a valid claims annotation whose
/// `seq` tells writes apart.
fn record(group: &str, holder: Option<&str>, seq: u64) -> MemberRecord {
    let mut claims = MemberClaims::empty(SHARDS);
    claims.seq = seq;
    MemberRecord {
        record: LeaderElectionRecord {
            holder: holder.map(id),
            lease_duration_seconds: 15,
            acquire_time: Some(
                Timestamp::parse_rfc3339("2024-01-02T03:04:05.123456Z").expect("valid"),
            ),
            renew_time: Some(
                Timestamp::parse_rfc3339("2024-01-02T03:04:06.654321Z").expect("valid"),
            ),
            ..Default::default()
        },
        annotation: claims.encode(group),
    }
}

fn written(r: GroupResult) -> Version {
    match r {
        Ok(GroupResponse::Written(v)) => v,
        other => panic!("expected a write, got {other:?}"),
    }
}

fn member(r: GroupResult) -> Option<MemberSighting> {
    match r {
        Ok(GroupResponse::Member(m)) => m,
        other => panic!("expected a get, got {other:?}"),
    }
}

fn listed(r: GroupResult) -> Vec<MemberSighting> {
    match r {
        Ok(GroupResponse::Listed(cut)) => cut,
        other => panic!("expected a list, got {other:?}"),
    }
}

fn names(cut: &[MemberSighting]) -> Vec<&str> {
    cut.iter().map(|s| s.name.as_str()).collect()
}

fn find<'a>(cut: &'a [MemberSighting], name: &str) -> &'a MemberSighting {
    cut.iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} in {:?}", names(cut)))
}

fn error(r: GroupResult) -> LockError {
    match r {
        Err(e) => e,
        Ok(other) => panic!("expected an error, got {other:?}"),
    }
}

/// A resourceVersion as the etcd revision it is on this server (opaque to the code under
/// test; the tests read it only to know the commit order of their own writes).
fn revision(v: &Version) -> u64 {
    v.as_str().parse().expect("an etcd revision")
}

async fn next(watch: &mut Watch) -> GroupChange {
    match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
        Ok(Some(Ok(change))) => change,
        Ok(Some(Err(e))) => panic!("the watch failed: {e}"),
        Ok(None) => panic!("the watch ended"),
        Err(_) => panic!("nothing on the watch within 10 s"),
    }
}

/// Nothing more arrives on the watch within a moment.
async fn quiet(watch: &mut Watch) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(700), watch.next()).await {
        panic!("unexpected on the watch: {item:?}");
    }
}

fn finalizers(lease: &Lease) -> Vec<String> {
    lease.metadata.finalizers.clone().unwrap_or_default()
}

// ---- 1. create, get, update with compare-and-swap ----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_update_are_compare_and_swap_and_keep_foreign_metadata() {
    let Some(env) = Env::new("shard create get update").await else {
        return;
    };
    let a = env
        .member("g", "g-a")
        .with_labels(BTreeMap::from([("app".to_string(), "orders".to_string())]));
    assert_eq!(a.describe(), format!("{}/g-a", env.ns));
    assert_eq!(a.time_precision(), Duration::from_micros(1));
    assert_eq!(member(a.execute(GroupRequest::Get).await), None);

    let v1 = written(
        a.execute(GroupRequest::Create(record("g", Some("a"), 1)))
            .await,
    );
    let again = error(
        a.execute(GroupRequest::Create(record("g", Some("a"), 2)))
            .await,
    );
    assert_eq!(again.kind, LockErrorKind::AlreadyExists, "{again}");

    let seen = member(a.execute(GroupRequest::Get).await).expect("present");
    assert_eq!(seen.name, "g-a");
    assert_eq!(seen.version, v1);
    assert_eq!(
        seen.record,
        record("g", Some("a"), 1).record,
        "µs precision kept"
    );
    assert_eq!(seen.annotation, Some(record("g", Some("a"), 1).annotation));
    assert!(!seen.terminating);

    // On the object itself: the group label (and ours), the annotation, the finalizer, the
    // spec as client-go writes it.
    let stored = env.lease("g-a").await.expect("stored");
    let labels = stored.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(GROUP_LABEL).map(String::as_str), Some("g"));
    assert_eq!(labels.get("app").map(String::as_str), Some("orders"));
    assert_eq!(
        stored
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(MEMBER_ANNOTATION)),
        Some(&record("g", Some("a"), 1).annotation)
    );
    assert_eq!(finalizers(&stored), [MEMBER_FINALIZER]);
    assert_eq!(
        stored
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref()),
        Some("a")
    );

    let v2 = written(
        a.execute(GroupRequest::Update {
            expected: v1.clone(),
            record: record("g", Some("a"), 2),
        })
        .await,
    );
    assert!(revision(&v2) > revision(&v1));
    // A stale version, with the object cached at v2: refused before sending.
    let stale = error(
        a.execute(GroupRequest::Update {
            expected: v1.clone(),
            record: record("g", Some("a"), 3),
        })
        .await,
    );
    assert_eq!(stale.kind, LockErrorKind::Conflict, "{stale}");

    // An administrator adds a label, an annotation and a finalizer of their own: our cached
    // object is stale now, and the server itself refuses our PUT with 409.
    let patch = json!({"metadata": {
        "labels": {"team": "x"},
        "annotations": {"example.com/note": "keep"},
        "finalizers": [MEMBER_FINALIZER, "example.com/keep"],
    }});
    let patched = env
        .leases()
        .patch("g-a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patched");
    let v3 = Version::new(
        patched
            .metadata
            .resource_version
            .clone()
            .expect("a version"),
    );
    let conflict = error(
        a.execute(GroupRequest::Update {
            expected: v2.clone(),
            record: record("g", Some("a"), 3),
        })
        .await,
    );
    assert_eq!(conflict.kind, LockErrorKind::Conflict, "{conflict}");
    assert!(
        conflict.message.contains("409"),
        "the server's answer: {conflict}"
    );

    // Our write at the current version keeps everything of theirs.
    let v4 = written(
        a.execute(GroupRequest::Update {
            expected: v3.clone(),
            record: record("g", Some("a"), 4),
        })
        .await,
    );
    let stored = env.lease("g-a").await.expect("stored");
    assert_eq!(
        stored.metadata.resource_version.as_deref(),
        Some(v4.as_str())
    );
    let labels = stored.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("x"));
    assert_eq!(labels.get(GROUP_LABEL).map(String::as_str), Some("g"));
    let annotations = stored.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("example.com/note").map(String::as_str),
        Some("keep")
    );
    assert_eq!(
        annotations.get(MEMBER_ANNOTATION),
        Some(&record("g", Some("a"), 4).annotation)
    );
    assert_eq!(finalizers(&stored), [MEMBER_FINALIZER, "example.com/keep"]);

    // A release removes our finalizer only; holding again puts it back.
    let v5 = written(
        a.execute(GroupRequest::Update {
            expected: v4,
            record: record("g", None, 5),
        })
        .await,
    );
    let stored = env.lease("g-a").await.expect("stored");
    assert_eq!(finalizers(&stored), ["example.com/keep"]);
    assert_eq!(
        stored
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref()),
        Some("")
    );
    // A fresh handle (nothing cached) writes through a read of the object.
    let fresh = env.member("g", "g-a");
    let v6 = written(
        fresh
            .execute(GroupRequest::Update {
                expected: v5,
                record: record("g", Some("a"), 6),
            })
            .await,
    );
    let stored = env.lease("g-a").await.expect("stored");
    assert_eq!(finalizers(&stored), ["example.com/keep", MEMBER_FINALIZER]);
    assert_eq!(
        stored.metadata.labels.unwrap_or_default().get("app"),
        Some(&"orders".to_string()),
        "labels from the other handle are kept"
    );
    // A stale version through the fresh handle: Conflict from the read.
    let stale = error(
        fresh
            .execute(GroupRequest::Update {
                expected: v3,
                record: record("g", Some("a"), 7),
            })
            .await,
    );
    assert_eq!(stale.kind, LockErrorKind::Conflict, "{stale}");

    // Updating a Lease that does not exist: NotFound.
    let nobody = env.member("g", "g-nobody");
    let missing = error(
        nobody
            .execute(GroupRequest::Update {
                expected: v6,
                record: record("g", Some("n"), 1),
            })
            .await,
    );
    assert_eq!(missing.kind, LockErrorKind::NotFound, "{missing}");
}

// ---- 2. lists are cuts of the group, and only the group ----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_is_a_cut_of_the_whole_group_and_only_the_group() {
    let Some(env) = Env::new("shard list is a cut").await else {
        return;
    };
    let a = env.member("g", "g-a");
    let b = env.member("g", "g-b");
    let other = env.member("other", "other-a");
    let mut va = written(
        a.execute(GroupRequest::Create(record("g", Some("a"), 1)))
            .await,
    );
    let mut vb = written(b.execute(GroupRequest::Create(record("g", None, 1))).await);
    written(
        other
            .execute(GroupRequest::Create(record("other", Some("o"), 1)))
            .await,
    );
    // Not in the group: no label, and another label.
    for (name, labels) in [
        ("g-stray", None),
        (
            "g-wrong",
            Some(BTreeMap::from([("app".to_string(), "g".to_string())])),
        ),
    ] {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels,
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("x".into()),
                ..Default::default()
            }),
        };
        env.leases()
            .create(&PostParams::default(), &lease)
            .await
            .expect("created");
    }
    // The same group in another namespace.
    let elsewhere = env.plane.namespace("shard list elsewhere").await;
    let far = MemberLeases::new(env.admin.clone(), &elsewhere, "g", "g-far");
    written(
        far.execute(GroupRequest::Create(record("g", Some("f"), 1)))
            .await,
    );

    let cut = listed(a.execute(GroupRequest::List).await);
    assert_eq!(names(&cut), ["g-a", "g-b"]);
    assert_eq!(find(&cut, "g-a").version, va);
    assert_eq!(find(&cut, "g-b").version, vb);
    assert_eq!(find(&cut, "g-b").record.holder, None);
    assert_eq!(find(&cut, "g-a").record.holder, Some(id("a")));
    let cut = listed(other.execute(GroupRequest::List).await);
    assert_eq!(names(&cut), ["other-a"]);

    // A list sent after a write succeeded shows that write (or a later one), whoever wrote.
    for seq in 2..12 {
        va = written(
            a.execute(GroupRequest::Update {
                expected: va,
                record: record("g", Some("a"), seq),
            })
            .await,
        );
        let cut = listed(b.execute(GroupRequest::List).await);
        assert_eq!(
            find(&cut, "g-a").version,
            va,
            "b's list after a's write {seq}"
        );
        assert_eq!(
            find(&cut, "g-a").annotation,
            Some(record("g", Some("a"), seq).annotation)
        );
        vb = written(
            b.execute(GroupRequest::Update {
                expected: vb,
                record: record("g", Some("b"), seq),
            })
            .await,
        );
        let cut = listed(a.execute(GroupRequest::List).await);
        assert_eq!(
            find(&cut, "g-b").version,
            vb,
            "a's list after b's write {seq}"
        );
    }
    // A member that joins later is in the next list.
    let c = env.member("g", "g-c");
    let vc = written(
        c.execute(GroupRequest::Create(record("g", Some("c"), 1)))
            .await,
    );
    let cut = listed(a.execute(GroupRequest::List).await);
    assert_eq!(names(&cut), ["g-a", "g-b", "g-c"]);
    assert_eq!(find(&cut, "g-c").version, vc);
}

// ---- 3. deletion through the finalizer ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_waits_for_the_release_and_the_watch_sees_it_all() {
    let Some(env) = Env::new("shard deletion waits").await else {
        return;
    };
    let a = env.member("g", "g-a");
    let v1 = written(
        a.execute(GroupRequest::Create(record("g", Some("a"), 1)))
            .await,
    );
    let mut watch = a.watch().expect("valid names: a watch");
    match next(&mut watch).await {
        GroupChange::Snapshot(cut) => {
            assert_eq!(names(&cut), ["g-a"]);
            assert_eq!(cut[0].version, v1);
        }
        other => panic!("a snapshot first, got {other:?}"),
    }

    // An administrator deletes it: it stays, terminating, everywhere.
    let answer = env
        .leases()
        .delete("g-a", &DeleteParams::default())
        .await
        .expect("deleted");
    let terminating = answer.left().expect("the object, still there");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    let v2 = Version::new(
        terminating
            .metadata
            .resource_version
            .clone()
            .expect("a version"),
    );
    assert!(revision(&v2) > revision(&v1), "the deletion is a write");
    let seen = member(a.execute(GroupRequest::Get).await).expect("still there");
    assert!(seen.terminating);
    assert_eq!(seen.version, v2);
    assert_eq!(seen.record.holder, Some(id("a")), "still claiming");
    let cut = listed(a.execute(GroupRequest::List).await);
    assert!(find(&cut, "g-a").terminating);
    match next(&mut watch).await {
        GroupChange::Applied(s) => {
            assert_eq!(s.name, "g-a");
            assert!(s.terminating);
            assert_eq!(s.version, v2);
        }
        other => panic!("the deletion as a change, got {other:?}"),
    }
    // Deleting it again writes nothing.
    let again = env
        .leases()
        .delete("g-a", &DeleteParams::default())
        .await
        .expect("deleted again");
    let again = again.left().expect("the object, still there");
    assert_eq!(
        again.metadata.resource_version.as_deref(),
        Some(v2.as_str())
    );
    // A stale write, from before the deletion, conflicts.
    let stale = error(
        a.execute(GroupRequest::Update {
            expected: v1,
            record: record("g", Some("a"), 2),
        })
        .await,
    );
    assert_eq!(stale.kind, LockErrorKind::Conflict, "{stale}");
    // Nobody can create it anew while it is terminating.
    let b = env.member("g", "g-a");
    let exists = error(
        b.execute(GroupRequest::Create(record("g", Some("b"), 1)))
            .await,
    );
    assert_eq!(exists.kind, LockErrorKind::AlreadyExists, "{exists}");
    // A renewal while terminating keeps it terminating (and claiming).
    let v3 = written(
        a.execute(GroupRequest::Update {
            expected: v2,
            record: record("g", Some("a"), 3),
        })
        .await,
    );
    match next(&mut watch).await {
        GroupChange::Applied(s) => {
            assert!(s.terminating);
            assert_eq!(s.version, v3);
        }
        other => panic!("{other:?}"),
    }

    // The release removes the finalizer and so completes the deletion: the server answers
    // 200 with the object as sent, at the version the write was conditional on.
    let v4 = written(
        a.execute(GroupRequest::Update {
            expected: v3.clone(),
            record: record("g", None, 4),
        })
        .await,
    );
    assert_eq!(
        v4, v3,
        "the answer to a PUT that deleted: the object as sent"
    );
    assert!(env.lease("g-a").await.is_none(), "gone");
    assert_eq!(member(a.execute(GroupRequest::Get).await), None);
    assert!(listed(a.execute(GroupRequest::List).await).is_empty());
    assert_eq!(next(&mut watch).await, GroupChange::Deleted("g-a".into()));
    quiet(&mut watch).await;
    // That version names nothing now.
    let gone = error(
        a.execute(GroupRequest::Update {
            expected: v4,
            record: record("g", Some("a"), 5),
        })
        .await,
    );
    assert_eq!(gone.kind, LockErrorKind::NotFound, "{gone}");

    // Without a holder there is no finalizer: a deletion is immediate.
    let v5 = written(a.execute(GroupRequest::Create(record("g", None, 6))).await);
    match next(&mut watch).await {
        GroupChange::Applied(s) => assert_eq!(s.version, v5),
        other => panic!("{other:?}"),
    }
    let stored = env.lease("g-a").await.expect("stored");
    assert!(finalizers(&stored).is_empty());
    let answer = env
        .leases()
        .delete("g-a", &DeleteParams::default())
        .await
        .expect("deleted");
    assert!(answer.is_right(), "deleted at once: {answer:?}");
    assert_eq!(next(&mut watch).await, GroupChange::Deleted("g-a".into()));
    assert_eq!(member(a.execute(GroupRequest::Get).await), None);
    // A write from a handle that still holds the deleted object: the server refuses it with
    // 409, its UID precondition failing (a memory group says NotFound; both are lost races).
    let b = env.member("g", "g-a");
    let v6 = written(b.execute(GroupRequest::Create(record("g", None, 7))).await);
    env.leases()
        .delete("g-a", &DeleteParams::default())
        .await
        .expect("deleted");
    let stale = error(
        b.execute(GroupRequest::Update {
            expected: v6,
            record: record("g", None, 8),
        })
        .await,
    );
    assert_eq!(stale.kind, LockErrorKind::Conflict, "{stale}");
    assert!(stale.message.contains("UID"), "{stale}");
    assert!(stale.kind.is_lost_race());
}

/// The raw exchange when a PUT removes the last finalizer of a terminating Lease, for the
/// record: status 200, and the body is the object as sent (deletionTimestamp set, no
/// finalizers, the resourceVersion the PUT was conditional on), though the object is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_put_that_removes_the_last_finalizer_deletes_and_answers_the_object_as_sent() {
    let Some(env) = Env::new("shard last finalizer").await else {
        return;
    };
    let a = env.member("g", "g-a");
    written(
        a.execute(GroupRequest::Create(record("g", Some("a"), 1)))
            .await,
    );
    env.leases()
        .delete("g-a", &DeleteParams::default())
        .await
        .expect("deleted");
    let current = env.lease("g-a").await.expect("terminating");
    let expected = current
        .metadata
        .resource_version
        .clone()
        .expect("a version");
    let mut body = serde_json::to_value(&current).expect("serializes");
    body["metadata"]["finalizers"] = json!([]);
    body["spec"]["holderIdentity"] = json!("");
    let request = http::Request::put(format!(
        "/apis/coordination.k8s.io/v1/namespaces/{}/leases/g-a",
        env.ns
    ))
    .header("content-type", "application/json")
    .body(kube::client::Body::from(
        serde_json::to_vec(&body).expect("serializes"),
    ))
    .expect("a request");
    let response = env.admin.send(request).await.expect("answered");
    let status = response.status();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("a body")
        .to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    eprintln!("PUT removing the last finalizer: {status}\n{answer:#}");
    assert_eq!(status.as_u16(), 200);
    assert_eq!(answer["kind"], "Lease");
    assert_eq!(answer["metadata"]["resourceVersion"], json!(expected));
    assert!(answer["metadata"]["deletionTimestamp"].is_string());
    assert!(
        answer["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    assert_eq!(answer["spec"]["holderIdentity"], json!(""));
    assert!(env.lease("g-a").await.is_none(), "gone");
}

/// A finalizer of someone else's keeps a released Lease terminating; the server then refuses
/// to put the member finalizer back (no finalizer may be added to a terminating object), so
/// such a Lease cannot be held again until it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_finalizer_keeps_a_released_lease_terminating_and_unholdable() {
    let Some(env) = Env::new("shard foreign finalizer").await else {
        return;
    };
    let a = env.member("g", "g-a");
    written(
        a.execute(GroupRequest::Create(record("g", Some("a"), 1)))
            .await,
    );
    let patch = json!({"metadata": {"finalizers": [MEMBER_FINALIZER, "example.com/keep"]}});
    env.leases()
        .patch("g-a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patched");
    env.leases()
        .delete("g-a", &DeleteParams::default())
        .await
        .expect("deleted");
    let seen = member(a.execute(GroupRequest::Get).await).expect("terminating");
    assert!(seen.terminating);
    let released = written(
        a.execute(GroupRequest::Update {
            expected: seen.version.clone(),
            record: record("g", None, 2),
        })
        .await,
    );
    assert!(
        revision(&released) > revision(&seen.version),
        "a real write this time"
    );
    let stored = env
        .lease("g-a")
        .await
        .expect("kept by the foreign finalizer");
    assert_eq!(finalizers(&stored), ["example.com/keep"]);
    let again = error(
        a.execute(GroupRequest::Update {
            expected: released,
            record: record("g", Some("a"), 3),
        })
        .await,
    );
    assert_eq!(again.kind, LockErrorKind::Other, "{again}");
    assert!(again.message.contains("422"), "{again}");
    assert!(again.message.contains("finalizers"), "{again}");
    // Clean up: the namespace would keep it forever.
    let patch = json!({"metadata": {"finalizers": null}});
    env.leases()
        .patch("g-a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patched");
    assert!(env.lease("g-a").await.is_none());
}

// ---- 4. the watch ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_starts_with_a_snapshot_then_reports_writes_in_commit_order() {
    let Some(env) = Env::new("shard watch order").await else {
        return;
    };
    let a = env.member("g", "g-a");
    let b = env.member("g", "g-b");
    let va = written(
        a.execute(GroupRequest::Create(record("g", Some("a"), 1)))
            .await,
    );
    let vb = written(
        b.execute(GroupRequest::Create(record("g", Some("b"), 1)))
            .await,
    );
    let other = env.member("other", "other-a");
    let mut watch = a.watch().expect("a watch");
    match next(&mut watch).await {
        GroupChange::Snapshot(cut) => {
            assert_eq!(names(&cut), ["g-a", "g-b"]);
            assert_eq!(find(&cut, "g-a").version, va);
            assert_eq!(find(&cut, "g-b").version, vb);
        }
        other => panic!("a snapshot first, got {other:?}"),
    }
    // Two members write at once, each on its own Lease; another group writes too.
    async fn renew(m: &MemberLeases, holder: &str, mut v: Version, n: u64) -> Vec<Version> {
        let mut versions = Vec::new();
        for seq in 2..2 + n {
            v = written(
                m.execute(GroupRequest::Update {
                    expected: v,
                    record: record("g", Some(holder), seq),
                })
                .await,
            );
            versions.push(v.clone());
        }
        versions
    }
    let (from_a, from_b, _) = tokio::join!(renew(&a, "a", va, 15), renew(&b, "b", vb, 15), async {
        written(
            other
                .execute(GroupRequest::Create(record("other", Some("o"), 1)))
                .await,
        )
    });
    let mut expected: Vec<(u64, &str)> = from_a
        .iter()
        .map(|v| (revision(v), "g-a"))
        .chain(from_b.iter().map(|v| (revision(v), "g-b")))
        .collect();
    expected.sort_unstable();
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        match next(&mut watch).await {
            GroupChange::Applied(s) => seen.push((revision(&s.version), s.name.clone())),
            other => panic!("only writes of the group, got {other:?}"),
        }
    }
    let seen: Vec<(u64, &str)> = seen.iter().map(|(r, n)| (*r, n.as_str())).collect();
    assert_eq!(seen, expected, "every write, in commit order");
    // b leaves: its release, then a deletion (immediate without the finalizer).
    let last = from_b.last().cloned().expect("written");
    let released = written(
        b.execute(GroupRequest::Update {
            expected: last,
            record: record("g", None, 99),
        })
        .await,
    );
    env.leases()
        .delete("g-b", &DeleteParams::default())
        .await
        .expect("deleted");
    match next(&mut watch).await {
        GroupChange::Applied(s) => {
            assert_eq!(s.version, released);
            assert_eq!(s.record.holder, None);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut watch).await, GroupChange::Deleted("g-b".into()));
    quiet(&mut watch).await;
    // A second watch starts from a snapshot of what is there now.
    let mut second = b.watch().expect("a watch");
    match next(&mut second).await {
        GroupChange::Snapshot(cut) => {
            assert_eq!(names(&cut), ["g-a"]);
            assert_eq!(
                find(&cut, "g-a").version,
                from_a.last().cloned().expect("written")
            );
        }
        other => panic!("{other:?}"),
    }
}

// ---- 5. garbage --------------------------------------------------------------------------

/// Leases of the group that no member wrote are listed, never dropped, and a member treats
/// the held ones it cannot read as incompatible (claiming every shard). The API server's own
/// validation keeps unreadable specs out (a negative duration is refused); the translation of
/// an unreadable spec is covered by the unit tests of `leasehold::kube::members`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_and_garbage_leases_of_the_group_are_listed_as_incompatible() {
    let Some(env) = Env::new("shard garbage").await else {
        return;
    };
    let a = env.member("g", "g-a");
    written(
        a.execute(GroupRequest::Create(record("g", Some("a"), 1)))
            .await,
    );
    let lease = |name: &str, annotation: Option<&str>, spec: Option<LeaseSpec>| Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(GROUP_LABEL.to_string(), "g".to_string())])),
            annotations: annotation
                .map(|a| BTreeMap::from([(MEMBER_ANNOTATION.to_string(), a.to_string())])),
            ..Default::default()
        },
        spec,
    };
    let held = |holder: &str| {
        Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(30),
            ..Default::default()
        })
    };
    let other_group = MemberClaims::empty(SHARDS).encode("not-g");
    let other_count = MemberClaims::empty(SHARDS * 2).encode("g");
    for object in [
        lease("g-garbage", Some("{not json"), held("mallory")),
        lease("g-bare", None, held("trudy")),
        lease("g-other-group", Some(&other_group), held("olivia")),
        lease("g-other-count", Some(&other_count), held("oscar")),
        lease("g-no-spec", Some("{not json"), None),
    ] {
        env.leases()
            .create(&PostParams::default(), &object)
            .await
            .expect("created");
    }
    // The server refuses what would not decode into a record.
    for spec in [
        json!({"holderIdentity": "eve", "leaseDurationSeconds": -5}),
        json!({"holderIdentity": "eve", "leaseTransitions": -1}),
        json!({"holderIdentity": 7}),
        json!({"renewTime": "yesterday"}),
    ] {
        let raw: Result<serde_json::Value, _> = env
            .admin
            .request(
                http::Request::post(format!(
                    "/apis/coordination.k8s.io/v1/namespaces/{}/leases",
                    env.ns
                ))
                .header("content-type", "application/json")
                .body(
                    serde_json::to_vec(&json!({
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {"name": "g-eve", "labels": {GROUP_LABEL: "g"}},
                        "spec": spec,
                    }))
                    .expect("serializes"),
                )
                .expect("a request"),
            )
            .await;
        match raw {
            Err(kube::Error::Api(status)) => {
                assert!(matches!(status.code, 400 | 422), "{spec}: {status:?}");
            }
            other => panic!("the server accepted {spec}: {other:?}"),
        }
    }

    let cut = listed(a.execute(GroupRequest::List).await);
    assert_eq!(
        names(&cut),
        [
            "g-a",
            "g-bare",
            "g-garbage",
            "g-no-spec",
            "g-other-count",
            "g-other-group"
        ],
        "nothing dropped"
    );
    assert_eq!(
        find(&cut, "g-garbage").annotation.as_deref(),
        Some("{not json")
    );
    assert_eq!(find(&cut, "g-garbage").record.holder, Some(id("mallory")));
    assert_eq!(find(&cut, "g-bare").annotation, None);
    assert_eq!(
        find(&cut, "g-no-spec").record,
        LeaderElectionRecord::default()
    );

    // The watch shows the same.
    let mut watch = a.watch().expect("a watch");
    match next(&mut watch).await {
        GroupChange::Snapshot(snapshot) => assert_eq!(snapshot, cut),
        other => panic!("{other:?}"),
    }

    // A member reading that cut reports every held Lease it cannot read, and no other.
    let mut config = Config::new(id("m"));
    config.lease_duration = Duration::from_secs(15);
    let mut m = ShardMember::new(
        ShardConfig::new(config, "g", SHARDS),
        Now::new(Instant::from_secs(1), Timestamp::UNIX_EPOCH),
        7,
    )
    .expect("a valid configuration");
    drain(&mut m);
    m.handle_input(ShardInput::Observed {
        now: Now::new(Instant::from_secs(2), Timestamp::UNIX_EPOCH),
        change: GroupChange::Snapshot(cut),
    });
    let mut incompatible: Vec<String> = drain(&mut m)
        .into_iter()
        .filter_map(|e| match e {
            ShardEvent::IncompatibleMember { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    incompatible.sort();
    assert_eq!(
        incompatible,
        ["g-bare", "g-garbage", "g-other-count", "g-other-group"]
    );
}

/// The events a member emits until it sleeps (its operations are left unanswered).
fn drain(m: &mut ShardMember) -> Vec<ShardEvent> {
    let mut events = Vec::new();
    loop {
        match m.poll_action() {
            ShardAction::Emit(e) => events.push(e),
            ShardAction::Op { .. } => {}
            ShardAction::SleepUntil { .. } | ShardAction::Done => return events,
        }
    }
}

// ---- 6. preflight and names --------------------------------------------------------------

async fn grant(env: &Env, name: &str, rules: Vec<PolicyRule>) {
    let roles: Api<Role> = Api::namespaced(env.admin.clone(), &env.ns);
    let bindings: Api<RoleBinding> = Api::namespaced(env.admin.clone(), &env.ns);
    let role = Role {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        rules: Some(rules),
    };
    roles
        .create(&PostParams::default(), &role)
        .await
        .expect("a Role");
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: "alice".into(),
            ..Default::default()
        }]),
    };
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("a RoleBinding");
}

fn rule(verbs: &[&str], names: Option<&[&str]>) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec!["coordination.k8s.io".into()]),
        resources: Some(vec!["leases".into()]),
        verbs: verbs.iter().map(|v| (*v).to_string()).collect(),
        resource_names: names.map(|n| n.iter().map(|s| (*s).to_string()).collect()),
        ..Default::default()
    }
}

/// The preflight's answer once RBAC (served from a cache) agrees with `want`.
async fn preflight_until(
    m: &MemberLeases,
    watch: bool,
    want: impl Fn(&Result<(), PreflightError>) -> bool,
) -> Result<(), PreflightError> {
    let start = std::time::Instant::now();
    loop {
        let answer = m.preflight(watch).await;
        if want(&answer) || start.elapsed() > Duration::from_secs(10) {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn refused(answer: &Result<(), PreflightError>) -> Vec<String> {
    match answer {
        Err(PreflightError::Forbidden { verbs, .. }) => verbs.clone(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_passes_for_an_admin_and_names_what_alice_may_not_do() {
    let Some(env) = Env::new("shard preflight").await else {
        return;
    };
    let admin = env.member("g", "g-a");
    admin.preflight(true).await.expect("all is well");
    admin.preflight(false).await.expect("all is well");
    assert!(env.lease("g-a").await.is_none(), "a dry run only");

    let alice = MemberLeases::new(
        env.plane.client_in("alice", &env.ns).await,
        &env.ns,
        "g",
        "g-a",
    );
    let nothing = alice.preflight(true).await;
    assert_eq!(
        refused(&nothing),
        ["get", "list", "watch", "create", "update"]
    );
    let text = nothing.expect_err("forbidden").to_string();
    assert!(
        text.contains("may not get, list, watch, create, update leases.coordination.k8s.io"),
        "{text}"
    );
    assert!(text.contains("kind: Role"), "{text}");
    assert!(
        text.contains("apiGroups: [\"coordination.k8s.io\"]"),
        "{text}"
    );
    assert!(text.contains(&format!("namespace: {}", env.ns)), "{text}");
    let denied = error(alice.execute(GroupRequest::List).await);
    assert_eq!(denied.kind, LockErrorKind::Unauthorized, "{denied}");

    // get and update limited to her Lease by name, create and list namespace-wide: all but
    // the watch.
    grant(
        &env,
        "alice-member",
        vec![
            rule(&["get", "update"], Some(&["g-a"])),
            rule(&["create", "list"], None),
        ],
    )
    .await;
    let answer = preflight_until(&alice, true, |a| refused(a) == ["watch"]).await;
    assert_eq!(refused(&answer), ["watch"], "{answer:?}");
    preflight_until(&alice, false, Result::is_ok)
        .await
        .expect("polling needs no watch");
    // What the preflight said holds for real.
    let v = written(
        alice
            .execute(GroupRequest::Create(record("g", Some("alice"), 1)))
            .await,
    );
    written(
        alice
            .execute(GroupRequest::Update {
                expected: v,
                record: record("g", Some("alice"), 2),
            })
            .await,
    );
    assert_eq!(
        names(&listed(alice.execute(GroupRequest::List).await)),
        ["g-a"]
    );
    // A list limited by name is no list of the group: a Role naming only her Lease for list
    // and watch would not do.
    let bob = MemberLeases::new(
        env.plane.client_in("alice", &env.ns).await,
        &env.ns,
        "g",
        "g-b",
    );
    let answer = bob.preflight(false).await;
    assert_eq!(refused(&answer), ["get", "update"], "{answer:?}");

    grant(&env, "alice-watch", vec![rule(&["watch"], None)]).await;
    preflight_until(&alice, true, Result::is_ok)
        .await
        .expect("everything granted");
    let mut watch = alice.watch().expect("a watch");
    assert!(matches!(next(&mut watch).await, GroupChange::Snapshot(cut) if names(&cut) == ["g-a"]));

    // A namespace that does not exist.
    let nowhere = MemberLeases::new(env.admin.clone(), "no-such-namespace-here", "g", "g-a");
    assert_eq!(
        nowhere.preflight(true).await,
        Err(PreflightError::NamespaceMissing {
            namespace: "no-such-namespace-here".into()
        })
    );
}

/// Invalid names are refused before any request, every time, and nothing is watched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_refused_before_any_request() {
    let Some(env) = Env::new("shard invalid names").await else {
        return;
    };
    let long_group = "g".repeat(64);
    for (ns, group, lease, says) in [
        (env.ns.as_str(), "bad group", "g-a", "shard group"),
        (env.ns.as_str(), "", "g-a", "shard group"),
        (env.ns.as_str(), long_group.as_str(), "g-a", "shard group"),
        (env.ns.as_str(), "g", "G-A", "Lease name"),
        (env.ns.as_str(), "g", "x?dryRun=All", "Lease name"),
        ("Bad_NS", "g", "g-a", "namespace"),
    ] {
        let m = MemberLeases::new(env.admin.clone(), ns, group, lease);
        for request in [
            GroupRequest::Get,
            GroupRequest::List,
            GroupRequest::Create(record("g", Some("a"), 1)),
            GroupRequest::Update {
                expected: Version::new("1"),
                record: record("g", Some("a"), 1),
            },
        ] {
            let e = error(m.execute(request).await);
            assert_eq!(e.kind, LockErrorKind::Other, "{e}");
            assert!(e.message.contains(says), "{says}: {e}");
        }
        assert!(m.watch().is_none(), "{group:?} {lease:?}");
        assert!(matches!(
            m.preflight(true).await,
            Err(PreflightError::Refused(text)) if text.contains(says)
        ));
    }
    assert!(
        env.leases()
            .list(&Default::default())
            .await
            .expect("listed")
            .items
            .is_empty()
    );
}
