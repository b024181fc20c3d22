//! The test double against the real API server: one script of requests, sent to both, and the
//! answers compared field by field (status code and body), ignoring what must differ (uids,
//! versions, creation times, `managedFields`, the namespace's name). Every difference is a bug
//! in the double.
#![cfg(feature = "kube")]
#![allow(clippy::disallowed_methods)]

mod apiserver;
mod backend;
mod envtest;

use std::time::Duration;

use apiserver::Kind;
use backend::{Backend, path};
use serde_json::{Value, json};

const MICRO: &str = "2026-12-05T10:00:00.123456Z";

fn lease(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": spec,
    })
}

fn candidate(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1beta1",
        "kind": "LeaseCandidate",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// One answer: what, the status code, and the body with the volatile parts taken out.
type Answer = (String, u16, Value);

/// The script. It returns every answer, normalised.
async fn script(b: &Backend) -> Vec<Answer> {
    let ns = b.ns().to_string();
    let leases = path(Kind::Lease, &ns, None);
    let lease_at = |name: &str| path(Kind::Lease, &ns, Some(name));
    let mut log = Log {
        answers: Vec::new(),
        ns: ns.clone(),
    };
    let spec = json!({"holderIdentity": "a", "leaseDurationSeconds": 15, "acquireTime": MICRO, "renewTime": MICRO, "leaseTransitions": 2});
    log.send(b, "get a missing lease", "GET", lease_at("f1"), None)
        .await;
    log.send(
        b,
        "create",
        "POST",
        leases.clone(),
        Some(lease("f1", spec.clone())),
    )
    .await;
    log.send(
        b,
        "create again",
        "POST",
        leases.clone(),
        Some(lease("f1", spec.clone())),
    )
    .await;
    let first = b.object(Kind::Lease, "f1").await.expect("created");
    let mut moved = lease(
        "f1",
        json!({"holderIdentity": "b", "leaseDurationSeconds": 15}),
    );
    moved["metadata"]["resourceVersion"] = first["metadata"]["resourceVersion"].clone();
    log.send(b, "update", "PUT", lease_at("f1"), Some(moved))
        .await;
    let current = b.object(Kind::Lease, "f1").await.expect("created");
    let rv = current["metadata"]["resourceVersion"].clone();
    let mut stale = lease("f1", spec.clone());
    stale["metadata"]["resourceVersion"] = first["metadata"]["resourceVersion"].clone();
    log.send(
        b,
        "update with a stale version",
        "PUT",
        lease_at("f1"),
        Some(stale),
    )
    .await;
    log.send(
        b,
        "update without a version",
        "PUT",
        lease_at("f1"),
        Some(lease("f1", spec.clone())),
    )
    .await;
    let mut same = lease("f1", spec.clone());
    same["metadata"]["resourceVersion"] = rv.clone();
    log.send(
        b,
        "an update that changes nothing",
        "PUT",
        lease_at("f1"),
        Some(same),
    )
    .await;
    let after = b.object(Kind::Lease, "f1").await.expect("there");
    log.answers.push((
        "the version after an update that changes nothing".into(),
        0,
        json!(after["metadata"]["resourceVersion"] == rv),
    ));
    let mut offset = lease(
        "f1",
        json!({"holderIdentity": "b", "leaseDurationSeconds": 15, "renewTime": "2026-12-05T12:00:00.123456+02:00"}),
    );
    offset["metadata"]["resourceVersion"] = rv;
    log.send(
        b,
        "an update with a time offset (normalised)",
        "PUT",
        lease_at("f1"),
        Some(offset),
    )
    .await;
    log.send(
        b,
        "update a missing lease without a version",
        "PUT",
        lease_at("f2"),
        Some(lease("f2", spec.clone())),
    )
    .await;
    let mut versioned = lease("f3", spec.clone());
    versioned["metadata"]["resourceVersion"] = json!("5");
    log.send(
        b,
        "update a missing lease with a version",
        "PUT",
        lease_at("f3"),
        Some(versioned),
    )
    .await;
    for (what, name, bad) in [
        (
            "a zero lease duration",
            "v1",
            json!({"leaseDurationSeconds": 0}),
        ),
        (
            "negative transitions",
            "v2",
            json!({"leaseTransitions": -1}),
        ),
        (
            "transitions beyond int32",
            "v3",
            json!({"leaseTransitions": 2_147_483_648_i64}),
        ),
        (
            "a string duration",
            "v4",
            json!({"leaseDurationSeconds": "15"}),
        ),
        (
            "whole-second times",
            "v5",
            json!({"renewTime": "2026-12-05T10:00:01Z"}),
        ),
        (
            "millisecond times",
            "v6",
            json!({"renewTime": "2026-12-05T10:00:01.123Z"}),
        ),
        (
            "nanosecond times",
            "v7",
            json!({"renewTime": "2026-12-05T10:00:01.123456789Z"}),
        ),
        ("an uppercase name", "Upper", json!({})),
        ("an underscore in the name", "a_b", json!({})),
    ] {
        log.send(b, what, "POST", leases.clone(), Some(lease(name, bad)))
            .await;
    }
    log.send(
        b,
        "list by name",
        "GET",
        format!("{leases}?fieldSelector=metadata.name%3Df1"),
        None,
    )
    .await;
    log.send(
        b,
        "list by label (none)",
        "GET",
        format!("{leases}?labelSelector=app%3Dnone"),
        None,
    )
    .await;
    log.send(b, "delete", "DELETE", lease_at("f2"), None).await;
    log.send(b, "delete a missing lease", "DELETE", lease_at("f2"), None)
        .await;
    let gone = b.missing_namespace().await;
    log.send(
        b,
        "create in a missing namespace",
        "POST",
        path(Kind::Lease, &gone, None),
        Some(lease("f1", spec.clone())),
    )
    .await;
    log.send(
        b,
        "update in a missing namespace",
        "PUT",
        path(Kind::Lease, &gone, Some("f1")),
        Some(lease("f1", spec.clone())),
    )
    .await;
    // ConfigMaps: an update without a version is unconditional; a missing one is not created.
    let configmaps = path(Kind::ConfigMap, &ns, None);
    let configmap = |name: &str, data: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": data}});
    log.send(
        b,
        "create a configmap",
        "POST",
        configmaps.clone(),
        Some(configmap("c1", "v")),
    )
    .await;
    log.send(
        b,
        "update a configmap without a version",
        "PUT",
        path(Kind::ConfigMap, &ns, Some("c1")),
        Some(configmap("c1", "w")),
    )
    .await;
    log.send(
        b,
        "update a missing configmap",
        "PUT",
        path(Kind::ConfigMap, &ns, Some("c9")),
        Some(configmap("c9", "w")),
    )
    .await;
    log.send(
        b,
        "a name that is not the URL's",
        "PUT",
        path(Kind::ConfigMap, &ns, Some("c1")),
        Some(configmap("c2", "w")),
    )
    .await;
    // LeaseCandidates.
    let candidates = path(Kind::LeaseCandidate, &ns, None);
    let versions = |binary: &str, emulation: &str| json!({"leaseName": "f1", "binaryVersion": binary, "emulationVersion": emulation, "strategy": "OldestEmulationVersion", "renewTime": MICRO});
    log.send(
        b,
        "a valid candidate",
        "POST",
        candidates.clone(),
        Some(candidate("c-ok", versions("1.36.2", "1.36.2"))),
    )
    .await;
    for (what, name, spec) in [
        ("binaryVersion v1.36", "c-bv", versions("v1.36", "1.30.0")),
        ("emulationVersion 1.36", "c-ev", versions("1.36.2", "1.36")),
        (
            "emulation above binary",
            "c-gt",
            versions("1.36.2", "1.37.0"),
        ),
        (
            "no strategy",
            "c-ns",
            json!({"leaseName": "f1", "binaryVersion": "1.36.2"}),
        ),
        (
            "no lease name",
            "c-nl",
            json!({"binaryVersion": "1.36.2", "emulationVersion": "1.36.2", "strategy": "OldestEmulationVersion"}),
        ),
    ] {
        log.send(
            b,
            what,
            "POST",
            candidates.clone(),
            Some(candidate(name, spec)),
        )
        .await;
    }
    // A merge patch of a ConfigMap, with a resourceVersion as its precondition (what the
    // operator example sends).
    let configmaps = path(Kind::ConfigMap, &ns, None);
    let configmap_at = path(Kind::ConfigMap, &ns, Some("c1"));
    log.send(
        b,
        "create a configmap",
        "POST",
        configmaps,
        Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"}, "data": {"k": "v"}})),
    )
    .await;
    let rv = b.object(Kind::ConfigMap, "c1").await.expect("created")["metadata"]["resourceVersion"]
        .clone();
    log.send(
        b,
        "patch a configmap with a stale resourceVersion",
        "PATCH",
        configmap_at.clone(),
        Some(json!({"metadata": {"resourceVersion": "1", "annotations": {"x": "y"}}})),
    )
    .await;
    log.send(
        b,
        "patch a configmap with its resourceVersion",
        "PATCH",
        configmap_at.clone(),
        Some(json!({"metadata": {"resourceVersion": rv, "annotations": {"x": "y"}}})),
    )
    .await;
    log.send(
        b,
        "patch a configmap without a resourceVersion, changing nothing",
        "PATCH",
        configmap_at,
        Some(json!({"metadata": {"annotations": {"x": "y"}}})),
    )
    .await;
    // RBAC: the unprivileged user.
    let alice = b.client_as("alice").await;
    let request = http::Request::get(lease_at("f1"))
        .body(Vec::new())
        .expect("a request");
    let response = alice
        .send(request.map(Into::into))
        .await
        .expect("an answer");
    let code = response.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    log.answers.push((
        "a get refused by RBAC".into(),
        code,
        normalise(serde_json::from_slice(&bytes).unwrap_or(Value::Null), &ns),
    ));
    log.answers
}

/// The answers so far.
struct Log {
    answers: Vec<Answer>,
    ns: String,
}

impl Log {
    async fn send(
        &mut self,
        b: &Backend,
        what: &str,
        method: &str,
        url: String,
        body: Option<Value>,
    ) {
        let (code, value) = b.raw(method, &url, body).await;
        self.answers
            .push((what.to_string(), code, normalise(value, &self.ns)));
    }
}

/// The body without what must differ between two servers.
fn normalise(mut value: Value, ns: &str) -> Value {
    fn walk(value: &mut Value, ns: &str) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Object(meta)) = map.get_mut("metadata") {
                    for volatile in [
                        "uid",
                        "resourceVersion",
                        "creationTimestamp",
                        "managedFields",
                        "generation",
                        "selfLink",
                    ] {
                        meta.remove(volatile);
                    }
                }
                // A successful delete's Status names the object's uid.
                if let Some(Value::Object(details)) = map.get_mut("details") {
                    details.remove("uid");
                }
                for (_, v) in map.iter_mut() {
                    walk(v, ns);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, ns)),
            Value::String(s) => *s = s.replace(ns, "NS"),
            _ => {}
        }
    }
    walk(&mut value, ns);
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_double_answers_as_the_real_server_does() {
    let Some(real) = Backend::real("fidelity").await else {
        return;
    };
    let double = Backend::double("fidelity").await;
    let theirs = script(&real).await;
    let ours = script(&double).await;
    let mut differences = Vec::new();
    for ((what, real_code, real_body), (_, our_code, our_body)) in theirs.iter().zip(&ours) {
        if real_code != our_code || real_body != our_body {
            differences.push(format!(
                "{what}:\n  real:   {real_code} {real_body}\n  double: {our_code} {our_body}"
            ));
        }
    }
    assert_eq!(theirs.len(), ours.len());
    assert!(
        differences.is_empty(),
        "{} differences:\n{}",
        differences.len(),
        differences.join("\n")
    );
    // A watch without a version starts with the objects as they are.
    let first = first_watch_event(&real).await;
    assert_eq!(first_watch_event(&double).await, first);
}

/// The type of the first event of a watch of Lease f0 without a version (after creating it).
async fn first_watch_event(b: &Backend) -> String {
    b.put_raw(
        Kind::Lease,
        "f0",
        json!({"spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}),
    )
    .await;
    let client = b.client().await;
    let url = format!(
        "{}?watch=true&fieldSelector=metadata.name%3Df0",
        path(Kind::Lease, b.ns(), None)
    );
    let request = http::Request::get(url).body(Vec::new()).expect("a request");
    let response = client
        .send(request.map(Into::into))
        .await
        .expect("an answer");
    let mut body = response.into_body();
    let frame = tokio::time::timeout(
        Duration::from_secs(5),
        http_body_util::BodyExt::frame(&mut body),
    )
    .await
    .expect("an event in time")
    .expect("a frame")
    .expect("data");
    let bytes = frame.into_data().unwrap_or_default();
    let line: Value =
        serde_json::from_slice(bytes.split(|b| *b == b'\n').next().unwrap_or_default())
            .unwrap_or(Value::Null);
    line["type"].as_str().unwrap_or_default().to_string()
}
