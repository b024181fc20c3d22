//! A Kubernetes API test server: the subset of the API the locks use, on 127.0.0.1, started by
//! the tests themselves, so kube-rs talks real HTTP to something that behaves like an API
//! server.
//!
//! # What it implements
//!
//! * Resources: `coordination.k8s.io/v1` leases and `v1beta1` leasecandidates, core/v1
//!   endpoints, configmaps and pods (namespaced), and `events.k8s.io/v1` events.
//! * Verbs: GET (object or list, with `fieldSelector=metadata.name=<name>` and equality label
//!   selectors), GET with `watch=true` (without a version: the current objects as ADDED, then
//!   live; from a version: the events since, or one `ERROR` event `410 Expired` when it is older
//!   than the kept window of 1000 events, or after `compact`), POST (validated before the
//!   AlreadyExists check), PUT (a Lease or LeaseCandidate update needs `resourceVersion`: 422
//!   without; a missing Lease, LeaseCandidate or Endpoints is created by a PUT without one, 409
//!   with one; a stale one is 409 `Conflict`; an update that leaves the object as stored is a
//!   no-op answered with the unchanged `resourceVersion` and no watch event), DELETE (the
//!   DELETED event carries the deletion's version), and JSON merge patches of pods and
//!   ConfigMaps (a `metadata.resourceVersion` in the patch is a precondition; no-ops
//!   when unchanged).
//! * Validation as the real server does it for these kinds: MicroTime's exact form (400,
//!   normalised to UTC), `int32` fields (400), object names (422), `leaseDurationSeconds > 0`
//!   and `leaseTransitions >= 0` (422), and a LeaseCandidate's versions, strategy and lease
//!   name (422), with the server's messages and `Status` details (group, plural, causes).
//! * `resourceVersion`: one counter for the whole server, bumped by every write; objects get a
//!   UUID-shaped `uid` and their `creationTimestamp` on create; list items carry no kind.
//! * Users: the bearer token names the user (none: `admin`); `alice` may do only what `grant`
//!   allows, everyone else everything `deny` does not refuse; 403 messages as the server's.
//! * Faults on demand: latency, failing the next N requests or every Nth with a status (429
//!   and 503 carry `Retry-After` and `details.retryAfterSeconds`), failing PATCHes, hanging
//!   requests until released, black-holing requests for good, dropping connections without an
//!   answer, bursts of writes by a foreign writer, a deleted namespace (reads 404, creates and
//!   updates 404 `namespaces "x" not found`), RBAC refusing verbs, restarts on the same port,
//!   and a stand-in for the coordinated election controller (`start_election_controller`).
//! * Namespaces (GET one), SelfSubjectAccessReviews, discovery of
//!   `coordination.k8s.io/v1beta1`, and dry-run creates (validated, not stored).
//!
//! `tests/fidelity.rs` sends one script of requests to this server and to a real one and
//! compares the answers field by field.
//!
//! # What it does not
//!
//! Authentication (tokens are names), server-side apply, strategic-merge or JSON patches,
//! bookmarks, watch timeouts, pagination, `managedFields`, admission, garbage collection, the
//! `Status` of a successful DELETE (it answers the object), and any resource other than the
//! ones above.
#![allow(dead_code)]
// The test server is a stand-in for a real API server: it reads the real clocks.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

/// The kinds of object the server stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Only for `Status` details (namespaces are not stored).
    Namespace,
    Lease,
    LeaseCandidate,
    Pod,
    Endpoints,
    ConfigMap,
    Event,
}

impl Kind {
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Lease => "coordination.k8s.io/v1",
            Kind::LeaseCandidate => "coordination.k8s.io/v1beta1",
            Kind::Endpoints | Kind::ConfigMap | Kind::Pod | Kind::Namespace => "v1",
            Kind::Event => "events.k8s.io/v1",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Lease => "Lease",
            Kind::LeaseCandidate => "LeaseCandidate",
            Kind::Endpoints => "Endpoints",
            Kind::Pod => "Pod",
            Kind::Namespace => "Namespace",
            Kind::ConfigMap => "ConfigMap",
            Kind::Event => "Event",
        }
    }

    /// The API group (`""` for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::Lease | Kind::LeaseCandidate => "coordination.k8s.io",
            Kind::Event => "events.k8s.io",
            Kind::Endpoints | Kind::ConfigMap | Kind::Pod | Kind::Namespace => "",
        }
    }

    /// The plural, as URLs and `Status` details name it.
    pub fn plural(self) -> &'static str {
        self.resource().split('.').next().unwrap_or_default()
    }

    pub fn resource(self) -> &'static str {
        match self {
            Kind::Lease => "leases.coordination.k8s.io",
            Kind::LeaseCandidate => "leasecandidates.coordination.k8s.io",
            Kind::Endpoints => "endpoints",
            Kind::ConfigMap => "configmaps",
            Kind::Pod => "pods",
            Kind::Namespace => "namespaces",
            Kind::Event => "events.events.k8s.io",
        }
    }
}

type Key = (Kind, String, String);

/// How many events the watch history keeps.
const HISTORY: usize = 1000;
type Body = BoxBody<Bytes, Infallible>;

struct Watcher {
    kind: Kind,
    namespace: String,
    name: Option<String>,
    tx: mpsc::UnboundedSender<Bytes>,
}

#[derive(Default)]
struct Faults {
    latency: Duration,
    fail_next: VecDeque<u16>,
    fail_every: Option<(u64, u16)>,
    hang: bool,
    drop_next: u32,
    /// The next this many requests are never answered (until the server stops).
    black_hole_next: u32,
    /// The next this many PATCH requests are answered 500.
    fail_patches: u32,
}

#[derive(Default)]
struct State {
    resource_version: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<(u64, Key, &'static str, Value)>,
    /// Watches from before this version get `410 Expired` (the history is a window).
    compacted_to: u64,
    watchers: Vec<Watcher>,
    faults: Faults,
    requests: Vec<String>,
    served: u64,
    /// Updates that changed nothing (answered with the unchanged version).
    no_op_updates: u64,
    /// Namespaces that do not exist (every other one does).
    missing_namespaces: std::collections::BTreeSet<String>,
    /// (verb, resource) pairs RBAC refuses: 403 on the request, `allowed: false` in a
    /// SelfSubjectAccessReview.
    denied: std::collections::BTreeSet<(String, String)>,
    /// `coordination.k8s.io/v1beta1` is not served (the feature gate off).
    no_coordination_beta: bool,
    /// Who sent each request of `requests` (the bearer token is the user's name; none: admin).
    request_users: Vec<String>,
    /// What unprivileged users may do: (user, verb, resource). Only `alice` is unprivileged;
    /// every other user is an administrator.
    grants: std::collections::BTreeSet<(String, String, String)>,
}

/// The user who sent `req`: the bearer token is the name (no token: `admin`).
fn user_of<B>(req: &Request<B>) -> String {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map_or_else(|| "admin".to_string(), str::to_string)
}

impl State {
    /// Whether RBAC lets `user` use `verb` on `resource` (a plural).
    fn allows(&self, user: &str, verb: &str, resource: &str) -> bool {
        if self
            .denied
            .contains(&(verb.to_string(), resource.to_string()))
        {
            return false;
        }
        user != "alice"
            || self
                .grants
                .contains(&(user.to_string(), verb.to_string(), resource.to_string()))
    }
}

struct Shared {
    state: Mutex<State>,
    unhang: Notify,
}

/// A running test server; it stops when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept loop; it owns the connections, so aborting it closes them all.
    task: Mutex<tokio::task::JoinHandle<()>>,
    /// The election controller's stand-in, when started.
    controller: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .abort();
        if let Some(c) = self
            .controller
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            c.abort();
        }
    }
}

fn serve(listener: TcpListener, shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            while connections.try_join_next().is_some() {}
            let shared = shared.clone();
            connections.spawn(async move {
                let service = service_fn(move |req| handle(shared.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

impl ApiServer {
    /// Starts a server on a free port of 127.0.0.1.
    pub async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            unhang: Notify::new(),
        });
        let task = Mutex::new(serve(listener, shared.clone()));
        ApiServer {
            addr,
            shared,
            task,
            controller: Mutex::new(None),
        }
    }

    /// Starts a stand-in for kube-apiserver's coordinated leader election controller, as
    /// observed on 1.36: for a Lease that is absent, released or expired and has
    /// LeaseCandidates, it pings the candidates not renewed in the last 5 s (`pingTime`), waits
    /// up to 5 s for them, and names the best fresh one (oldest emulation version, then binary
    /// version, then the older candidate) as `holderIdentity`, with `leaseDurationSeconds: 5`,
    /// a fresh `renewTime`, no `acquireTime` or `preferredHolder`, `leaseTransitions` untouched;
    /// it leaves an expired Lease alone when its holder is the best already. While the Lease is
    /// held, a better candidate renewed within the last 5 s becomes its `preferredHolder`.
    pub fn start_election_controller(&self) {
        let shared = self.shared.clone();
        let task = tokio::spawn(async move {
            let mut pings: BTreeMap<(String, String), i64> = BTreeMap::new();
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                shared
                    .state
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .elect(&mut pings);
            }
        });
        *self
            .controller
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    /// Stops answering (every connection closed, new ones refused) for `down`, then listens
    /// again on the same port with the same objects, as a restarted API server backed by the
    /// same etcd does.
    pub async fn restart(&self, down: Duration) {
        self.task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .abort();
        tokio::time::sleep(down).await;
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("the same port again");
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) =
            serve(listener, self.shared.clone());
    }

    /// A kube client for this server (call it inside a tokio runtime).
    pub fn client(&self) -> kube::Client {
        client_for(&self.url())
    }

    /// A kube client that authenticates as `user` (`alice` may do only what `grant` allows).
    pub fn client_as(&self, user: &str) -> kube::Client {
        let url: hyper::Uri = self.url().parse().expect("valid url");
        let mut config = kube::Config::new(url);
        config.default_retry = false;
        config.auth_info.token = Some(user.to_string().into());
        kube::Client::try_from(config).expect("client")
    }

    /// A kubeconfig for `user` with `namespace` as its default, in a temporary file.
    pub fn kubeconfig(&self, user: &str, namespace: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "leasehold-double-{}-{}-{user}-{namespace}.kubeconfig",
            std::process::id(),
            self.addr.port()
        ));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\nusers:\n- name: {user}\n  user:\n    token: {user}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\n    namespace: {namespace}\ncurrent-context: test\n",
            self.url()
        );
        std::fs::write(&path, text).expect("kubeconfig written");
        path
    }

    /// Lets `user` use `verb` on `resource` (a plural, e.g. "leases").
    pub fn grant(&self, user: &str, verb: &str, resource: &str) {
        self.state()
            .grants
            .insert((user.to_string(), verb.to_string(), resource.to_string()));
    }

    /// The stored objects of `kind` in `namespace`.
    pub fn objects(&self, kind: Kind, namespace: &str) -> Vec<Value> {
        self.state()
            .objects
            .iter()
            .filter(|((k, ns, _), _)| *k == kind && ns == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The requests `user` sent, as "METHOD path?query".
    pub fn requests_of(&self, user: &str) -> Vec<String> {
        let st = self.state();
        st.requests
            .iter()
            .zip(&st.request_users)
            .filter(|(_, u)| *u == user)
            .map(|(r, _)| r.clone())
            .collect()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The stored object, if any.
    pub fn object(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.state()
            .objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Stores `object` as is (no validation), as a foreign writer or a corrupt store might.
    /// Metadata (name, namespace, resourceVersion) is filled in.
    pub fn put_raw(&self, kind: Kind, namespace: &str, name: &str, mut object: Value) {
        let mut st = self.state();
        let key = (kind, namespace.to_string(), name.to_string());
        let event = if st.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.resource_version += 1;
        let rv = st.resource_version;
        stamp(&mut object, kind, namespace, name, rv);
        st.commit(key, event, object);
    }

    /// Deletes the object, as an administrator might.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut st = self.state();
        let key = (kind, namespace.to_string(), name.to_string());
        if let Some(mut object) = st.objects.remove(&key) {
            st.resource_version += 1;
            object["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
            st.notify(&key, "DELETED", &object);
        }
    }

    /// `count` writes by a foreign writer, each changing an annotation (and the version).
    pub fn foreign_writes(&self, kind: Kind, namespace: &str, name: &str, count: u32) {
        for i in 0..count {
            let Some(mut object) = self.object(kind, namespace, name) else {
                return;
            };
            object["metadata"]["annotations"]["example.com/foreign-writer"] = json!(i.to_string());
            self.put_raw(kind, namespace, name, object);
        }
    }

    pub fn set_latency(&self, latency: Duration) {
        self.state().faults.latency = latency;
    }

    /// Answers the next requests with these statuses, in order.
    pub fn fail_next(&self, statuses: &[u16]) {
        self.state().faults.fail_next.extend(statuses);
    }

    /// Forgets the watch history, as the watch cache's window moves on: watches from an older
    /// version get `410 Expired`.
    pub fn compact(&self) {
        let mut st = self.state();
        st.compacted_to = st.resource_version;
        st.history.clear();
    }

    /// Stops serving `coordination.k8s.io/v1beta1` (as with the feature gate off).
    pub fn disable_coordination_beta(&self) {
        self.state().no_coordination_beta = true;
    }

    /// Answers the next `n` PATCH requests with 500.
    pub fn fail_patches(&self, n: u32) {
        self.state().faults.fail_patches += n;
    }

    /// Answers every `n`th request with `status` (`None` to stop).
    pub fn fail_every(&self, every: Option<(u64, u16)>) {
        self.state().faults.fail_every = every;
    }

    /// While on, requests get no answer (they wait); turning it off releases them.
    /// Deletes namespace `ns`: its objects are gone, reads answer 404, creates answer 404
    /// `namespaces "ns" not found`, as the API server does.
    pub fn remove_namespace(&self, ns: &str) {
        let mut st = self.state();
        st.missing_namespaces.insert(ns.to_string());
        st.objects.retain(|(_, namespace, _), _| namespace != ns);
    }

    /// RBAC refuses `verb` on `resource` (e.g. "update", "leases"): requests get 403, and a
    /// SelfSubjectAccessReview says not allowed.
    pub fn deny(&self, verb: &str, resource: &str) {
        self.state()
            .denied
            .insert((verb.to_string(), resource.to_string()));
    }

    /// The next `n` requests are never answered, not even when the hang is lifted.
    pub fn black_hole_next(&self, n: u32) {
        self.state().faults.black_hole_next += n;
    }

    pub fn hang(&self, on: bool) {
        self.state().faults.hang = on;
        if !on {
            self.shared.unhang.notify_waiters();
        }
    }

    /// Closes the connection of the next `n` requests without answering.
    pub fn drop_next(&self, n: u32) {
        self.state().faults.drop_next += n;
    }

    /// How many updates changed nothing and were answered with the unchanged version.
    pub fn no_op_updates(&self) -> u64 {
        self.state().no_op_updates
    }

    /// Every request served so far, as "METHOD path?query".
    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    /// The events recorded through events.k8s.io.
    pub fn events(&self) -> Vec<Value> {
        self.state()
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == Kind::Event)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// A kube client for the server at `url` (call it inside a tokio runtime).
pub fn client_for(url: &str) -> kube::Client {
    let url: hyper::Uri = url.parse().expect("valid url");
    let mut config = kube::Config::new(url);
    // Faults must reach the code under test, not be retried away inside the client.
    config.default_retry = false;
    kube::Client::try_from(config).expect("client")
}

/// Microseconds since the epoch, now.
fn wall_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_micros()).ok())
        .unwrap_or(0)
}

fn micro_time(micros: i64) -> Value {
    json!(
        leasehold::Timestamp::from_unix_micros(micros)
            .unwrap_or(leasehold::Timestamp::UNIX_EPOCH)
            .to_rfc3339_micros()
    )
}

fn micros_of(v: &Value) -> Option<i64> {
    v.as_str()
        .and_then(|s| leasehold::Timestamp::parse_rfc3339(s).ok())
        .map(leasehold::Timestamp::unix_micros)
}

/// A version for ordering (semver; unparsable ones last).
fn version_key(v: &Value) -> (bool, (u64, u64, u64, bool, String)) {
    match parse_semver(v.as_str().unwrap_or("")) {
        Some(parsed) => (false, parsed),
        None => (true, (0, 0, 0, false, String::new())),
    }
}

impl State {
    /// One round of the election controller's stand-in (see
    /// [`ApiServer::start_election_controller`]); `pings` holds when each Lease's stale
    /// candidates were pinged.
    fn elect(&mut self, pings: &mut BTreeMap<(String, String), i64>) {
        let now = wall_micros();
        let mut groups: BTreeMap<(String, String), Vec<(String, Value)>> = BTreeMap::new();
        for ((kind, ns, name), object) in &self.objects {
            if *kind == Kind::LeaseCandidate
                && let Some(lease) = object["spec"]["leaseName"].as_str()
            {
                groups
                    .entry((ns.clone(), lease.to_string()))
                    .or_default()
                    .push((name.clone(), object.clone()));
            }
        }
        for ((ns, lease), candidates) in groups {
            let key = (Kind::Lease, ns.clone(), lease.clone());
            let current = self.objects.get(&key).cloned();
            let named = current.as_ref().and_then(|l| {
                l["spec"]["holderIdentity"]
                    .as_str()
                    .filter(|h| !h.is_empty())
                    .map(str::to_string)
            });
            let expired = current.as_ref().is_none_or(|l| {
                let spec = &l["spec"];
                let renewed = micros_of(&spec["renewTime"]).unwrap_or(0);
                let lds = spec["leaseDurationSeconds"].as_i64().unwrap_or(0);
                renewed + lds * 1_000_000 <= now
            });
            // Fresh: renewed within the last 5 s.
            let fresh = |c: &Value| {
                micros_of(&c["spec"]["renewTime"]).is_some_and(|r| r >= now - 5_000_000)
            };
            // Oldest emulation version, then binary version, then the older candidate.
            let best = |among: &[&(String, Value)]| {
                among
                    .iter()
                    .min_by_key(|(name, c)| {
                        (
                            version_key(&c["spec"]["emulationVersion"]),
                            version_key(&c["spec"]["binaryVersion"]),
                            c["metadata"]["creationTimestamp"]
                                .as_str()
                                .unwrap_or("")
                                .to_string(),
                            name.clone(),
                        )
                    })
                    .map(|(name, c)| (name.clone(), c["spec"]["strategy"].clone()))
            };
            let eligible: Vec<&(String, Value)> =
                candidates.iter().filter(|(_, c)| fresh(c)).collect();
            match (&named, expired) {
                // Held: a better fresh candidate (or the holder's candidate gone) makes
                // itself the preferred holder.
                (Some(holder), false) => {
                    pings.remove(&(ns.clone(), lease.clone()));
                    if let Some((better, _)) = best(&eligible)
                        && better != *holder
                        && let Some(mut l) = current
                        && l["spec"]["preferredHolder"].as_str() != Some(better.as_str())
                    {
                        l["spec"]["preferredHolder"] = json!(better);
                        self.write(key, l);
                    }
                }
                // Absent, released or expired: ping the stale candidates (once), wait up to
                // 5 s for their answers, then name the best fresh one.
                _ => {
                    let stale: Vec<&(String, Value)> =
                        candidates.iter().filter(|(_, c)| !fresh(c)).collect();
                    let pinged = pings.get(&(ns.clone(), lease.clone())).copied();
                    if !stale.is_empty() && pinged.is_none() {
                        for (name, c) in stale {
                            let mut c = c.clone();
                            c["spec"]["pingTime"] = micro_time(now);
                            self.write((Kind::LeaseCandidate, ns.clone(), name.clone()), c);
                        }
                        pings.insert((ns.clone(), lease.clone()), now);
                        continue;
                    }
                    let waiting =
                        !stale.is_empty() && pinged.is_some_and(|at| now < at + 5_000_000);
                    if waiting {
                        continue;
                    }
                    pings.remove(&(ns.clone(), lease.clone()));
                    let Some((chosen, strategy)) = best(&eligible) else {
                        continue;
                    };
                    // The best is the holder of the expired lease already: left as it is.
                    if named.as_deref() == Some(chosen.as_str()) {
                        continue;
                    }
                    let mut l = current.unwrap_or_else(|| json!({"spec": {}}));
                    let spec = &mut l["spec"];
                    spec["holderIdentity"] = json!(chosen);
                    spec["leaseDurationSeconds"] = json!(5);
                    spec["renewTime"] = micro_time(now);
                    spec["strategy"] = strategy;
                    if let Some(spec) = spec.as_object_mut() {
                        spec.remove("preferredHolder");
                        spec.remove("acquireTime");
                    }
                    self.write(key, l);
                }
            }
        }
    }

    /// Stores `object` under `key` as the server would: a new version, ADDED or MODIFIED.
    fn write(&mut self, key: Key, mut object: Value) {
        let event = if self.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.resource_version += 1;
        let rv = self.resource_version;
        let (kind, ns, name) = key.clone();
        stamp(&mut object, kind, &ns, &name, rv);
        self.commit(key, event, object);
    }

    fn commit(&mut self, key: Key, event: &'static str, object: Value) {
        self.notify(&key, event, &object);
        self.objects.insert(key, object);
    }

    fn notify(&mut self, key: &Key, event: &'static str, object: &Value) {
        let rv = self.resource_version;
        self.history.push((rv, key.clone(), event, object.clone()));
        // The watch cache keeps a window of recent events; older versions are "too old".
        if self.history.len() > HISTORY {
            let dropped = self.history.len() - HISTORY;
            self.compacted_to = self.history[dropped - 1].0;
            self.history.drain(..dropped);
        }
        let line = watch_line(event, object);
        self.watchers.retain(|w| {
            if w.kind == key.0
                && w.namespace == key.1
                && w.name.as_ref().is_none_or(|n| *n == key.2)
            {
                w.tx.send(line.clone()).is_ok()
            } else {
                !w.tx.is_closed()
            }
        });
    }
}

fn watch_line(event: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": event, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn stamp(object: &mut Value, kind: Kind, namespace: &str, name: &str, rv: u64) {
    if !object.is_object() {
        *object = json!({});
    }
    object["apiVersion"] = json!(kind.api_version());
    object["kind"] = json!(kind.name());
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    let meta = &mut object["metadata"];
    meta["name"] = json!(name);
    meta["namespace"] = json!(namespace);
    meta["resourceVersion"] = json!(rv.to_string());
    if meta.get("uid").is_none() {
        // A UUID-shaped uid, and the creation time in whole seconds.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write(name.as_bytes());
        h.write_u64(rv);
        let (a, b) = (h.finish(), h.finish().rotate_left(17) ^ rv);
        meta["uid"] = json!(format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b & 0xfff,
            (b >> 16) & 0xffff_ffff_ffff
        ));
        let seconds = wall_micros() / 1_000_000 * 1_000_000;
        meta["creationTimestamp"] = json!(
            leasehold::Timestamp::from_unix_micros(seconds)
                .map(leasehold::Timestamp::to_rfc3339_seconds)
                .unwrap_or_default()
        );
    }
}

fn status(
    code: u16,
    reason: &str,
    message: String,
    kind: Option<Kind>,
    name: &str,
) -> Response<Body> {
    // As the API server: the name when there is one, the group when not the core group, and
    // the plural as the kind.
    let mut details = serde_json::Map::new();
    if !name.is_empty() {
        details.insert("name".into(), json!(name));
    }
    if let Some(kind) = kind {
        if !kind.group().is_empty() {
            details.insert("group".into(), json!(kind.group()));
        }
        details.insert("kind".into(), json!(kind.plural()));
    }
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if !details.is_empty() {
        body["details"] = Value::Object(details);
    }
    respond(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    )
}

fn injected(code: u16) -> Response<Body> {
    let reason = match code {
        404 => "NotFound",
        409 => "Conflict",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        401 => "Unauthorized",
        403 => "Forbidden",
        _ => "Unknown",
    };
    let message = format!("injected fault: {reason}");
    if !matches!(code, 429 | 503) {
        return status(code, reason, message, None, "");
    }
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": {"retryAfterSeconds": INJECTED_RETRY_AFTER_SECONDS},
        "code": code,
    });
    let mut response = respond(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    );
    {
        // What the API server's max-in-flight and priority-and-fairness filters send.
        response.headers_mut().insert(
            "retry-after",
            hyper::header::HeaderValue::from(INJECTED_RETRY_AFTER_SECONDS),
        );
    }
    response
}

/// The `Retry-After` (header and `details.retryAfterSeconds`) of an injected 429 or 503.
pub const INJECTED_RETRY_AFTER_SECONDS: u32 = 3;

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi * 16 + lo);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Path -> (kind, namespace, name).
fn route(path: &str) -> Option<(Kind, String, Option<String>)> {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (kind, rest) = match seg.as_slice() {
        ["apis", "coordination.k8s.io", "v1", "namespaces", rest @ ..] => (Kind::Lease, rest),
        [
            "apis",
            "coordination.k8s.io",
            "v1beta1",
            "namespaces",
            rest @ ..,
        ] => (Kind::LeaseCandidate, rest),
        ["apis", "events.k8s.io", "v1", "namespaces", rest @ ..] => (Kind::Event, rest),
        ["api", "v1", "namespaces", rest @ ..] => match rest.get(1) {
            Some(&"endpoints") => (Kind::Endpoints, rest),
            Some(&"configmaps") => (Kind::ConfigMap, rest),
            Some(&"pods") => (Kind::Pod, rest),
            _ => return None,
        },
        _ => return None,
    };
    let plural = kind.plural();
    match rest {
        [ns, p] if *p == plural => Some((kind, ns.to_string(), None)),
        [ns, p, name] if *p == plural => Some((kind, ns.to_string(), Some(name.to_string()))),
        _ => None,
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let method = req.method().clone();
    let user = user_of(&req);
    let path = req.uri().path().to_string();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();

    // Faults first.
    let (latency, injected_status, hang, drop, black_hole) = {
        let mut st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.served += 1;
        st.requests.push(format!("{method} {}", req.uri()));
        st.request_users.push(user.clone());
        let served = st.served;
        let f = &mut st.faults;
        let drop = f.drop_next > 0;
        if drop {
            f.drop_next -= 1;
        }
        let black_hole = f.black_hole_next > 0;
        if black_hole {
            f.black_hole_next -= 1;
        }
        let failed_patch = method == Method::PATCH && f.fail_patches > 0;
        if failed_patch {
            f.fail_patches -= 1;
        }
        let status = failed_patch
            .then_some(500)
            .or_else(|| f.fail_next.pop_front())
            .or_else(|| {
                f.fail_every
                    .and_then(|(n, code)| (n > 0 && served.is_multiple_of(n)).then_some(code))
            });
        (f.latency, status, f.hang, drop, black_hole)
    };
    if black_hole {
        // A request lost in the network: no answer, no error, ever.
        std::future::pending::<()>().await;
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if hang {
        loop {
            let notified = shared.unhang.notified();
            if !shared
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .faults
                .hang
            {
                break;
            }
            notified.await;
        }
    }
    if drop {
        return Err(std::io::Error::other("injected: connection dropped"));
    }
    if let Some(code) = injected_status {
        return Ok(injected(code));
    }

    let req = match namespace_or_review(&shared, &method, &path, req).await {
        Ok(answer) => return Ok(answer),
        Err(req) => req,
    };
    let Some((kind, namespace, name)) = route(&path) else {
        return Ok(status(
            404,
            "NotFound",
            format!("the server could not find {path}"),
            None,
            "",
        ));
    };
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let mut st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    let verb = match (&method, &name) {
        (&Method::GET, _) if query.get("watch").is_some_and(|w| w == "true") => "watch",
        (&Method::GET, Some(_)) => "get",
        (&Method::GET, None) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, _) => "delete",
        _ => "",
    };
    let plural = kind.resource().split('.').next().unwrap_or_default();
    if !st.allows(&user, verb, plural) {
        return Ok(status(
            403,
            "Forbidden",
            match name.as_deref().filter(|_| verb != "create") {
                Some(name) => format!(
                    "{} \"{name}\" is forbidden: User \"{user}\" cannot {verb} resource \"{plural}\" in API group \"{}\" in the namespace \"{namespace}\"",
                    kind.resource(),
                    kind.group(),
                ),
                None => format!(
                    "{} is forbidden: User \"{user}\" cannot {verb} resource \"{plural}\" in API group \"{}\" in the namespace \"{namespace}\"",
                    kind.resource(),
                    kind.group(),
                ),
            },
            Some(kind),
            name.as_deref().filter(|_| verb != "create").unwrap_or(""),
        ));
    }
    if st.missing_namespaces.contains(&namespace) && (verb == "create" || verb == "update") {
        return Ok(status(
            404,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
            Some(Kind::Namespace),
            &namespace,
        ));
    }

    Ok(match (method, name) {
        (Method::GET, Some(name)) => match st.objects.get(&(kind, namespace.clone(), name.clone()))
        {
            Some(object) => respond(StatusCode::OK, object),
            None => not_found(kind, &name),
        },
        (Method::GET, None) => {
            let only = query
                .get("fieldSelector")
                .and_then(|f| f.strip_prefix("metadata.name="))
                .map(str::to_string);
            // Equality-based label selectors only (`k=v,k2=v2`).
            let labelled: Vec<(String, String)> = query
                .get("labelSelector")
                .map(|selector| {
                    selector
                        .split(',')
                        .filter_map(|term| term.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
                .unwrap_or_default();
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                let from: u64 = query
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let (tx, rx) = mpsc::unbounded_channel();
                let matches = |key: &Key| {
                    key.0 == kind && key.1 == namespace && only.as_ref().is_none_or(|n| *n == key.2)
                };
                if from == 0 {
                    // No version: the objects as they are now, then what follows.
                    for (key, object) in &st.objects {
                        if matches(key) {
                            let _ = tx.send(watch_line("ADDED", object));
                        }
                    }
                } else if from < st.compacted_to {
                    // Older than the kept history: one ERROR event, and the stream ends.
                    let line = watch_line(
                        "ERROR",
                        &json!({
                            "kind": "Status",
                            "apiVersion": "v1",
                            "metadata": {},
                            "status": "Failure",
                            "message": format!("too old resource version: {from} ({})", st.compacted_to),
                            "reason": "Expired",
                            "code": 410,
                        }),
                    );
                    let stream = futures_util::stream::once(async move {
                        Ok::<_, Infallible>(Frame::data(line))
                    });
                    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
                    response.headers_mut().insert(
                        "content-type",
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    return Ok(response);
                } else {
                    for (rv, key, event, object) in &st.history {
                        if *rv > from && matches(key) {
                            let _ = tx.send(watch_line(event, object));
                        }
                    }
                }
                st.watchers.push(Watcher {
                    kind,
                    namespace,
                    name: only,
                    tx,
                });
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|line| (Ok::<_, Infallible>(Frame::data(line)), rx))
                });
                let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
                response.headers_mut().insert(
                    "content-type",
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                response
            } else {
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((k, ns, n), object)| {
                        *k == kind
                            && *ns == namespace
                            && only.as_ref().is_none_or(|o| o == n)
                            && labelled
                                .iter()
                                .all(|(l, v)| object["metadata"]["labels"][l] == v.as_str())
                    })
                    .map(|(_, v)| {
                        // List items carry no kind or apiVersion.
                        let mut item = v.clone();
                        if let Some(item) = item.as_object_mut() {
                            item.remove("kind");
                            item.remove("apiVersion");
                        }
                        item
                    })
                    .collect();
                respond(
                    StatusCode::OK,
                    &json!({
                        "apiVersion": kind.api_version(),
                        "kind": format!("{}List", kind.name()),
                        "metadata": {"resourceVersion": st.resource_version.to_string()},
                        "items": items,
                    }),
                )
            }
        }
        (Method::POST, None) => {
            let Some(mut object) = parsed.filter(Value::is_object) else {
                return Ok(not_an_object(kind, ""));
            };
            let Some(name) = object["metadata"]["name"].as_str().map(str::to_string) else {
                return Ok(status(
                    422,
                    "Invalid",
                    "metadata.name: Required value".into(),
                    Some(kind),
                    "",
                ));
            };
            let key = (kind, namespace.clone(), name.clone());
            // The server validates before it looks for the name.
            if let Some(invalid) = validate(kind, &mut object, &name) {
                return Ok(invalid);
            }
            if st.objects.contains_key(&key) {
                return Ok(status(
                    409,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", kind.resource()),
                    Some(kind),
                    &name,
                ));
            }
            if let Some(meta) = object["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
                meta.remove("uid");
            }
            if query.contains_key("dryRun") {
                // Validated, not stored.
                stamp(&mut object, kind, &namespace, &name, st.resource_version);
                return Ok(respond(StatusCode::CREATED, &object));
            }
            st.resource_version += 1;
            let rv = st.resource_version;
            stamp(&mut object, kind, &namespace, &name, rv);
            st.commit(key, "ADDED", object.clone());
            respond(StatusCode::CREATED, &object)
        }
        (Method::PUT, Some(name)) => {
            let Some(mut object) = parsed.filter(Value::is_object) else {
                return Ok(not_an_object(kind, &name));
            };
            let key = (kind, namespace.clone(), name.clone());
            let sent_rv = object["metadata"]["resourceVersion"]
                .as_str()
                .filter(|v| !v.is_empty())
                .map(str::to_string);
            let conflict = || modified(kind, &name);
            // Leases, LeaseCandidates and Endpoints are created by an update (their strategies
            // allow create-on-update), with or without a version.
            let creates_on_update =
                matches!(kind, Kind::Lease | Kind::LeaseCandidate | Kind::Endpoints);
            if let Some(sent) = object["metadata"]["name"].as_str()
                && sent != name
            {
                return Ok(status(
                    400,
                    "BadRequest",
                    format!(
                        "the name of the object ({sent}) does not match the name on the URL ({name})"
                    ),
                    None,
                    "",
                ));
            }
            let Some(current) = st.objects.get(&key) else {
                if !creates_on_update {
                    return Ok(not_found(kind, &name));
                }
                if let Some(invalid) = validate(kind, &mut object, &name) {
                    return Ok(invalid);
                }
                st.resource_version += 1;
                let rv = st.resource_version;
                stamp(&mut object, kind, &namespace, &name, rv);
                st.commit(key, "ADDED", object.clone());
                return Ok(respond(StatusCode::CREATED, &object));
            };
            // A Lease or LeaseCandidate update must say which version it replaces.
            if sent_rv.is_none() && matches!(kind, Kind::Lease | Kind::LeaseCandidate) {
                return Ok(respond(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": format!("{} \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0: must be specified for an update", kind.resource()),
                        "reason": "Invalid",
                        "details": {"name": name, "group": kind.group(), "kind": kind.plural(), "causes": [{"reason": "FieldValueInvalid", "message": "Invalid value: 0: must be specified for an update", "field": "metadata.resourceVersion"}]},
                        "code": 422,
                    }),
                ));
            }
            let current_rv = current["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let uid = current["metadata"]["uid"].clone();
            let created = current["metadata"]["creationTimestamp"].clone();
            if sent_rv.as_ref().is_some_and(|sent| *sent != current_rv) {
                return Ok(conflict());
            }
            if let Some(invalid) = validate(kind, &mut object, &name) {
                return Ok(invalid);
            }
            object["metadata"]["uid"] = uid;
            object["metadata"]["creationTimestamp"] = created;
            // The API server writes nothing for an update that leaves the stored object as it
            // is (etcd3 store, GuaranteedUpdate): 200 with the unchanged resourceVersion, no
            // watch event.
            let current_rv: u64 = current_rv.parse().unwrap_or(0);
            let mut unchanged = object.clone();
            stamp(&mut unchanged, kind, &namespace, &name, current_rv);
            if Some(&unchanged) == st.objects.get(&key) {
                st.no_op_updates += 1;
                return Ok(respond(StatusCode::OK, &unchanged));
            }
            st.resource_version += 1;
            let rv = st.resource_version;
            stamp(&mut object, kind, &namespace, &name, rv);
            st.commit(key, "MODIFIED", object.clone());
            respond(StatusCode::OK, &object)
        }
        // A JSON merge patch (RFC 7386) of a pod (what `leasehold serve --label-pod` sends) or
        // a ConfigMap (what the operator example sends); one that changes nothing is a no-op,
        // as on the real server, and one that names a `metadata.resourceVersion` other than the
        // stored one is a 409 conflict (a precondition, as on the real server).
        (Method::PATCH, Some(name)) if matches!(kind, Kind::Pod | Kind::ConfigMap) => {
            let key = (kind, namespace.clone(), name.clone());
            let Some(before) = st.objects.get(&key).cloned() else {
                return Ok(not_found(kind, &name));
            };
            let patch = parsed.as_ref().unwrap_or(&Value::Null);
            if let Some(expected) = patch["metadata"]["resourceVersion"].as_str()
                && Some(expected) != before["metadata"]["resourceVersion"].as_str()
            {
                return Ok(modified(kind, &name));
            }
            let mut object = before.clone();
            merge_patch(&mut object, patch);
            if object == before {
                return Ok(respond(StatusCode::OK, &before));
            }
            st.resource_version += 1;
            let rv = st.resource_version;
            stamp(&mut object, kind, &namespace, &name, rv);
            st.commit(key, "MODIFIED", object.clone());
            respond(StatusCode::OK, &object)
        }
        (Method::PATCH, Some(name)) if kind == Kind::Event => respond(
            StatusCode::OK,
            &parsed.unwrap_or_else(|| json!({"metadata": {"name": name}})),
        ),
        (Method::DELETE, Some(name)) => {
            let key = (kind, namespace, name.clone());
            match st.objects.remove(&key) {
                Some(mut object) => {
                    // The DELETED event carries the deletion's revision.
                    st.resource_version += 1;
                    object["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
                    st.notify(&key, "DELETED", &object);
                    if kind == Kind::Pod {
                        respond(StatusCode::OK, &object)
                    } else {
                        // Everything else is answered with a Status of success.
                        let mut details = json!({"name": name, "kind": kind.plural(), "uid": object["metadata"]["uid"]});
                        if !kind.group().is_empty() {
                            details["group"] = json!(kind.group());
                        }
                        respond(
                            StatusCode::OK,
                            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
                        )
                    }
                }
                None => not_found(kind, &name),
            }
        }
        (m, _) => status(
            405,
            "MethodNotAllowed",
            format!("{m} is not supported here"),
            Some(kind),
            "",
        ),
    })
}

fn not_an_object(kind: Kind, name: &str) -> Response<Body> {
    status(
        400,
        "BadRequest",
        "the body is not a JSON object".into(),
        Some(kind),
        name,
    )
}

/// The real server's 409 for a write conditional on a version that is no longer current.
fn modified(kind: Kind, name: &str) -> Response<Body> {
    status(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            kind.resource()
        ),
        Some(kind),
        name,
    )
}

fn not_found(kind: Kind, name: &str) -> Response<Body> {
    status(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", kind.resource()),
        Some(kind),
        name,
    )
}

/// What the real API server says of a body before it stores it: a 400 when it cannot decode
/// it (times not in MicroTime's exact form, numbers that are no `int32`), a 422 when it is
/// invalid (names, lease fields, a LeaseCandidate's versions). Times come back normalised (UTC,
/// six fractional digits), as the server stores them.
fn validate(kind: Kind, object: &mut Value, name: &str) -> Option<Response<Body>> {
    let type_name = kind.name();
    let cannot = |detail: String| {
        status(
            400,
            "BadRequest",
            format!(
                "{type_name} in version \"{}\" cannot be handled as a {type_name}: {detail}",
                kind.api_version().rsplit('/').next().unwrap_or("v1")
            ),
            None,
            "",
        )
    };
    let (times, ints): (&[&str], &[&str]) = match kind {
        Kind::Lease => (
            &["acquireTime", "renewTime"],
            &["leaseDurationSeconds", "leaseTransitions"],
        ),
        Kind::LeaseCandidate => (&["pingTime", "renewTime"], &[]),
        _ => (&[], &[]),
    };
    let spec_type = format!("{type_name}Spec");
    for field in times {
        let value = &object["spec"][*field];
        if value.is_null() {
            continue;
        }
        let Some(text) = value.as_str() else {
            return Some(cannot(format!(
                "json: cannot unmarshal {} into Go struct field {spec_type}.spec.{field} of type string",
                json_type(value)
            )));
        };
        match micro_time_text(text) {
            Ok(normal) => object["spec"][*field] = json!(normal),
            Err(tail) => {
                return Some(cannot(format!(
                    "parsing time \"{text}\" as \"2006-01-02T15:04:05.000000Z07:00\": {tail}"
                )));
            }
        }
    }
    for field in ints {
        let value = &object["spec"][*field];
        if value.is_null() {
            continue;
        }
        let fits = value.as_i64().is_some_and(|n| i32::try_from(n).is_ok());
        if !fits {
            let what = if value.is_number() {
                format!("number {value}")
            } else {
                json_type(value).to_string()
            };
            return Some(cannot(format!(
                "json: cannot unmarshal {what} into Go struct field {spec_type}.spec.{field} of type int32"
            )));
        }
    }
    for field in [
        "holderIdentity",
        "preferredHolder",
        "strategy",
        "leaseName",
        "binaryVersion",
        "emulationVersion",
    ] {
        let value = &object["spec"][field];
        if !value.is_null()
            && !value.is_string()
            && matches!(kind, Kind::Lease | Kind::LeaseCandidate)
        {
            return Some(cannot(format!(
                "json: cannot unmarshal {} into Go struct field {spec_type}.spec.{field} of type string",
                json_type(value)
            )));
        }
    }
    let mut causes: Vec<(&str, String, String)> = Vec::new();
    let invalid = |field: &str, value: &str, why: &str| {
        (
            "FieldValueInvalid",
            field.to_string(),
            format!("Invalid value: {value}: {why}"),
        )
    };
    if kind == Kind::LeaseCandidate {
        let key = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if name.is_empty() || name.len() > 253 || !name.chars().all(key) {
            causes.push(invalid("metadata.name", &format!("{name:?}"), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
        }
    } else if name.len() > 253 {
        causes.push(invalid(
            "metadata.name",
            &format!("{name:?}"),
            "must be no more than 253 characters",
        ));
    } else if !leasehold::kube::is_object_name(name) {
        causes.push(invalid("metadata.name", &format!("{name:?}"), "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"));
    }
    let spec = &object["spec"];
    match kind {
        Kind::Lease => {
            if let Some(n) = spec["leaseDurationSeconds"].as_i64().filter(|n| *n <= 0) {
                causes.push(invalid(
                    "spec.leaseDurationSeconds",
                    &n.to_string(),
                    "must be greater than 0",
                ));
            }
            if let Some(n) = spec["leaseTransitions"].as_i64().filter(|n| *n < 0) {
                causes.push(invalid(
                    "spec.leaseTransitions",
                    &n.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
        }
        Kind::LeaseCandidate => {
            let text = |f: &str| spec[f].as_str().unwrap_or("").to_string();
            let (lease, binary, emulation, strategy) = (
                text("leaseName"),
                text("binaryVersion"),
                text("emulationVersion"),
                text("strategy"),
            );
            let required = |field: &str, why: &str| {
                (
                    "FieldValueRequired",
                    field.to_string(),
                    format!("Required value{why}"),
                )
            };
            if lease.is_empty() {
                causes.push(required("spec.leaseName", ""));
            }
            let emulation_parsed = parse_semver(&emulation);
            if !emulation.is_empty() && emulation_parsed.is_none() {
                causes.push(invalid(
                    "spec.emulationVersion",
                    &format!("{emulation:?}"),
                    "must be a valid semantic version",
                ));
            }
            let binary_parsed = parse_semver(&binary);
            if binary.is_empty() {
                causes.push(required("spec.binaryVersion", ""));
            } else if binary_parsed.is_none() {
                causes.push(invalid(
                    "spec.binaryVersion",
                    &format!("{binary:?}"),
                    "must be a valid semantic version",
                ));
            }
            let zero = (0, 0, 0, true, String::new());
            if !binary.is_empty()
                && !emulation.is_empty()
                && binary_parsed.clone().unwrap_or(zero.clone())
                    < emulation_parsed.clone().unwrap_or(zero.clone())
            {
                causes.push(invalid(
                    "spec.binaryVersion",
                    &format!("{binary:?}"),
                    "must be greater than or equal to `emulationVersion`",
                ));
            }
            if strategy.is_empty() {
                causes.push(required("spec.strategy", ""));
            } else if strategy == "OldestEmulationVersion"
                && emulation_parsed.unwrap_or(zero.clone()) == zero
            {
                causes.push(required(
                    "spec.emulationVersion",
                    ": must be specified when `strategy` is 'OldestEmulationVersion'",
                ));
            } else if strategy != "OldestEmulationVersion" && !strategy.contains('/') {
                causes.push(("FieldValueNotSupported", "spec.strategy.strategy".into(), format!("Unsupported value: {strategy:?}: supported values: \"OldestEmulationVersion\"")));
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        return None;
    }
    let texts: Vec<String> = causes
        .iter()
        .map(|(_, field, why)| format!("{field}: {why}"))
        .collect();
    let what = if texts.len() == 1 {
        texts[0].clone()
    } else {
        format!("[{}]", texts.join(", "))
    };
    let qualified = if kind.group().is_empty() {
        type_name.to_string()
    } else {
        format!("{type_name}.{}", kind.group())
    };
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("{qualified} \"{name}\" is invalid: {what}"),
        "reason": "Invalid",
        "details": {
            "name": name,
            "kind": type_name,
            "causes": causes.iter().map(|(reason, field, why)| json!({"reason": reason, "message": why, "field": field})).collect::<Vec<_>>(),
        },
        "code": 422,
    });
    if !kind.group().is_empty() {
        body["details"]["group"] = json!(kind.group());
    }
    Some(respond(StatusCode::UNPROCESSABLE_ENTITY, &body))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// MicroTime's exact form (`2006-01-02T15:04:05.000000Z07:00`), normalised to UTC with six
/// digits; else the tail of Go's parse error.
fn micro_time_text(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|b| b.iter().all(u8::is_ascii_digit))
    };
    let date_ok = text.len() >= 19
        && digits(0..4)
        && bytes[4] == b'-'
        && digits(5..7)
        && bytes[7] == b'-'
        && digits(8..10)
        && bytes[10] == b'T'
        && digits(11..13)
        && bytes[13] == b':'
        && digits(14..16)
        && bytes[16] == b':'
        && digits(17..19);
    if !date_ok {
        return Err(format!("cannot parse {text:?} as \"2006\""));
    }
    let rest = &text[19..];
    let fraction = rest
        .strip_prefix('.')
        .map_or(0, |f| f.bytes().take_while(u8::is_ascii_digit).count());
    if fraction < 6 {
        return Err(format!("cannot parse {rest:?} as \".000000\""));
    }
    if fraction > 6 {
        return Err(format!("cannot parse {:?} as \"Z07:00\"", &text[26..]));
    }
    leasehold::Timestamp::parse_rfc3339(text)
        .map(|t| t.to_rfc3339_micros())
        .map_err(|_| format!("cannot parse {:?} as \"Z07:00\"", &text[26..]))
}

/// blang/semver's strict form: `MAJOR.MINOR.PATCH[-PRE][+BUILD]`, ordered (a release after its
/// pre-releases).
fn parse_semver(text: &str) -> Option<(u64, u64, u64, bool, String)> {
    let text = text.split('+').next()?;
    let (core, pre) = match text.split_once('-') {
        Some((core, pre)) if !pre.is_empty() => (core, Some(pre)),
        Some(_) => return None,
        None => (text, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    let [a, b, c] = parts[..] else { return None };
    let number = |p: &str| {
        (!p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && !(p.len() > 1 && p.starts_with('0')))
        .then(|| p.parse().ok())
        .flatten()
    };
    Some((
        number(a)?,
        number(b)?,
        number(c)?,
        pre.is_none(),
        pre.unwrap_or("").to_string(),
    ))
}

/// Namespaces (`GET /api/v1/namespaces/NAME`) and SelfSubjectAccessReviews, for preflight
/// checks; `Err` hands back a request that is neither.
async fn namespace_or_review(
    shared: &Shared,
    method: &Method,
    path: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, Request<Incoming>> {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, seg.as_slice()) {
        // Discovery of the one group version a client asks about (coordinated election).
        (&Method::GET, ["apis", "coordination.k8s.io", "v1beta1"]) => {
            let st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            Ok(if st.no_coordination_beta {
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource".into(),
                    None,
                    "",
                )
            } else {
                respond(
                    StatusCode::OK,
                    &json!({
                        "kind": "APIResourceList",
                        "apiVersion": "v1",
                        "groupVersion": "coordination.k8s.io/v1beta1",
                        "resources": [{
                            "name": "leasecandidates",
                            "singularName": "leasecandidate",
                            "namespaced": true,
                            "kind": "LeaseCandidate",
                            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                        }],
                    }),
                )
            })
        }
        (&Method::GET, ["api", "v1", "namespaces", ns]) => {
            let st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            Ok(if st.missing_namespaces.contains(*ns) {
                status(
                    404,
                    "NotFound",
                    format!("namespaces \"{ns}\" not found"),
                    None,
                    ns,
                )
            } else {
                respond(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                )
            })
        }
        (
            &Method::POST,
            [
                "apis",
                "authorization.k8s.io",
                "v1",
                "selfsubjectaccessreviews",
            ],
        ) => {
            let user = user_of(&req);
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut review: Value = serde_json::from_slice(&body).unwrap_or_else(|_| json!({}));
            let attributes = &review["spec"]["resourceAttributes"];
            let verb = attributes["verb"].as_str().unwrap_or("").to_string();
            let resource = attributes["resource"].as_str().unwrap_or("").to_string();
            let st = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            let allowed = st.allows(&user, &verb, &resource);
            drop(st);
            review["status"] = json!({"allowed": allowed});
            Ok(respond(StatusCode::CREATED, &review))
        }
        _ => Err(req),
    }
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}
