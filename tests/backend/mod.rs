//! One scenario, two API servers: the test double (`tests/apiserver`) and a real kube-apiserver
//! (`tests/envtest`). A scenario takes a [`Backend`] and runs unchanged on both;
//! [`on_both!`](crate::on_both) makes the two tests. What only the double can do (black holes,
//! injected statuses) is reached through [`Backend::double`] in tests of the double alone.
#![allow(dead_code)]
#![allow(clippy::disallowed_methods)] // tests read clocks

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::apiserver::{ApiServer, Kind};
use crate::envtest::{ControlPlane, LogsOnFailure, Turn};

/// Runs each scenario `async fn NAME(backend: &Backend)` as two tests, `NAME::double` and
/// `NAME::real` (skipped, with a note on stderr, without `KUBEBUILDER_ASSETS`). Scenarios
/// listed after `exclusive:` pause or restart the server and run alone on the real one.
#[macro_export]
macro_rules! on_both {
    (exclusive: $($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn double() {
                let backend = $crate::backend::Backend::double(stringify!($scenario)).await;
                super::$scenario(&backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real() {
                let Some(backend) = $crate::backend::Backend::real_exclusive(stringify!($scenario)).await else {
                    return;
                };
                super::$scenario(&backend).await;
            }
        }
    )*};
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn double() {
                let backend = $crate::backend::Backend::double(stringify!($scenario)).await;
                super::$scenario(&backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn real() {
                let Some(backend) = $crate::backend::Backend::real(stringify!($scenario)).await else {
                    return;
                };
                super::$scenario(&backend).await;
            }
        }
    )*};
}

/// An API server to run a scenario against, with a namespace of the scenario's own.
pub struct Backend {
    namespace: String,
    server: Server,
}

enum Server {
    Double(ApiServer),
    Real {
        plane: &'static ControlPlane,
        _logs: LogsOnFailure,
        _turn: Turn,
    },
}

impl Backend {
    /// The test double, started for this test.
    pub async fn double(test: &str) -> Backend {
        Backend {
            // A namespace name is at most 63 characters, and `missing_namespace` adds 5.
            namespace: format!(
                "{}-ns",
                test.replace('_', "-").chars().take(50).collect::<String>()
            ),
            server: Server::Double(ApiServer::start().await),
        }
    }

    /// The real API server of this test binary, with a fresh namespace; `None` when it is not
    /// available (see `envtest::control_plane`).
    pub async fn real(test: &str) -> Option<Backend> {
        Self::real_with(test, false).await
    }

    /// The real API server for a test that pauses, kills or restarts its processes: it runs
    /// alone (see `ControlPlane::turn`).
    pub async fn real_exclusive(test: &str) -> Option<Backend> {
        Self::real_with(test, true).await
    }

    async fn real_with(test: &str, exclusive: bool) -> Option<Backend> {
        let plane = crate::envtest::control_plane(test)?;
        // Waiting for the turn blocks this thread: let the runtime's other tasks run meanwhile.
        let turn = tokio::task::block_in_place(|| plane.turn(exclusive));
        let namespace = plane.namespace(test).await;
        Some(Backend {
            namespace,
            server: Server::Real {
                plane,
                _logs: plane.logs_on_failure(),
                _turn: turn,
            },
        })
    }

    /// Pauses the API server (`on`) or lets it go on: requests get no answer meanwhile. On the
    /// real server this is a SIGSTOP of kube-apiserver (the test must be exclusive).
    pub fn hang(&self, on: bool) {
        match &self.server {
            Server::Double(server) => server.hang(on),
            Server::Real { plane, .. } => plane.signal_apiserver(if on { "STOP" } else { "CONT" }),
        }
    }

    /// `double` or `real`, for messages.
    pub fn name(&self) -> &'static str {
        match self.server {
            Server::Double(_) => "double",
            Server::Real { .. } => "real",
        }
    }

    /// The test double, when this is it.
    pub fn double_server(&self) -> Option<&ApiServer> {
        match &self.server {
            Server::Double(server) => Some(server),
            Server::Real { .. } => None,
        }
    }

    /// The real control plane, when this is it.
    pub fn plane(&self) -> Option<&'static ControlPlane> {
        match &self.server {
            Server::Real { plane, .. } => Some(plane),
            Server::Double(_) => None,
        }
    }

    /// The scenario's namespace.
    pub fn ns(&self) -> &str {
        &self.namespace
    }

    /// An administrator's client.
    pub async fn client(&self) -> kube::Client {
        self.client_as("admin").await
    }

    /// A client for `user`: `admin`, `alice` (who may do only what [`Backend::grant`] gives
    /// her), or `cand-0` to `cand-15` (administrators whose requests are counted apart).
    pub async fn client_as(&self, user: &str) -> kube::Client {
        match &self.server {
            Server::Double(server) => server.client_as(user),
            Server::Real { plane, .. } => plane.client_in(user, &self.namespace).await,
        }
    }

    /// A kubeconfig for `user`, with the scenario's namespace as its default.
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        match &self.server {
            Server::Double(server) => server.kubeconfig(user, &self.namespace),
            Server::Real { plane, .. } => plane.kubeconfig(user, &self.namespace),
        }
    }

    /// Lets `alice` use `verbs` on `resource` (a plural, e.g. `leases`) of `group` in the
    /// scenario's namespace, and waits until the grant is in force.
    pub async fn grant(&self, group: &str, resource: &str, verbs: &[&str]) {
        match &self.server {
            Server::Double(server) => {
                for verb in verbs {
                    server.grant("alice", verb, resource);
                }
            }
            Server::Real { .. } => {
                let name = format!("alice-{resource}-{}", verbs.join("-"));
                let role = json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "Role",
                    "metadata": {"name": name, "namespace": self.namespace},
                    "rules": [{"apiGroups": [group], "resources": [resource], "verbs": verbs}],
                });
                let binding = json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": name, "namespace": self.namespace},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}],
                });
                let base = format!(
                    "/apis/rbac.authorization.k8s.io/v1/namespaces/{}",
                    self.namespace
                );
                self.raw("POST", &format!("{base}/roles"), Some(role)).await;
                self.raw("POST", &format!("{base}/rolebindings"), Some(binding))
                    .await;
                // RBAC is served from a cache: wait until alice's reviews say yes.
                let alice = self.client_as("alice").await;
                for verb in verbs {
                    let start = std::time::Instant::now();
                    while !allowed(&alice, &self.namespace, group, resource, verb).await {
                        assert!(
                            start.elapsed() < Duration::from_secs(10),
                            "the grant took effect"
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    /// The API server goes away for `down` (every connection and watch cut) and comes back
    /// with the same state: on the real server a SIGKILL of kube-apiserver and a restart on the
    /// same etcd data (the test must be exclusive).
    pub async fn restart_server(&self, down: Duration) {
        match &self.server {
            Server::Double(server) => server.restart(down).await,
            Server::Real { plane, .. } => {
                plane.kill_apiserver();
                tokio::time::sleep(down).await;
                let plane: &'static ControlPlane = plane;
                tokio::task::spawn_blocking(move || plane.start_apiserver())
                    .await
                    .expect("the restart did not panic")
                    .expect("the apiserver starts again");
            }
        }
    }

    /// Makes sure coordinated leader election's controller runs: kube-apiserver's own on the
    /// real server (always, with its feature gate), the double's stand-in otherwise.
    pub fn election_controller(&self) {
        if let Server::Double(server) = &self.server {
            server.start_election_controller();
        }
    }

    /// A namespace that does not exist.
    pub async fn missing_namespace(&self) -> String {
        let name = format!("{}-gone", self.namespace);
        if let Server::Double(server) = &self.server {
            server.remove_namespace(&name);
        }
        name
    }

    /// The object as the server stores it (`None` if absent).
    pub async fn object(&self, kind: Kind, name: &str) -> Option<Value> {
        match &self.server {
            Server::Double(server) => server.object(kind, &self.namespace, name),
            Server::Real { .. } => {
                let (code, body) = self
                    .raw("GET", &path(kind, &self.namespace, Some(name)), None)
                    .await;
                (code == 200).then_some(body)
            }
        }
    }

    /// Writes the object as an administrator would (`kubectl replace`): created if absent,
    /// replaced whole (no version check) otherwise.
    pub async fn put_raw(&self, kind: Kind, name: &str, mut object: Value) {
        match &self.server {
            Server::Double(server) => server.put_raw(kind, &self.namespace, name, object),
            Server::Real { .. } => {
                object["apiVersion"] = json!(kind.api_version());
                object["kind"] = json!(kind.name());
                object["metadata"]["name"] = json!(name);
                object["metadata"]["namespace"] = json!(self.namespace);
                if let Some(current) = self.object(kind, name).await {
                    object["metadata"]["resourceVersion"] =
                        current["metadata"]["resourceVersion"].clone();
                    let (code, body) = self
                        .raw(
                            "PUT",
                            &path(kind, &self.namespace, Some(name)),
                            Some(object),
                        )
                        .await;
                    assert_eq!(code, 200, "replacing {name}: {body}");
                } else {
                    let (code, body) = self
                        .raw("POST", &path(kind, &self.namespace, None), Some(object))
                        .await;
                    assert_eq!(code, 201, "creating {name}: {body}");
                }
            }
        }
    }

    /// Deletes the object, as an administrator might.
    pub async fn delete(&self, kind: Kind, name: &str) {
        match &self.server {
            Server::Double(server) => server.delete(kind, &self.namespace, name),
            Server::Real { .. } => {
                self.raw("DELETE", &path(kind, &self.namespace, Some(name)), None)
                    .await;
            }
        }
    }

    /// `count` writes by another tool, each changing an annotation (and the version).
    pub async fn foreign_writes(&self, kind: Kind, name: &str, count: u32) {
        for i in 0..count {
            let Some(mut object) = self.object(kind, name).await else {
                return;
            };
            object["metadata"]["annotations"]["example.com/foreign-writer"] = json!(i.to_string());
            self.put_raw(kind, name, object).await;
        }
    }

    /// The `events.k8s.io/v1` events in the scenario's namespace.
    pub async fn events(&self) -> Vec<Value> {
        match &self.server {
            Server::Double(server) => server.objects(Kind::Event, &self.namespace),
            Server::Real { .. } => {
                let (_, list) = self
                    .raw("GET", &path(Kind::Event, &self.namespace, None), None)
                    .await;
                list["items"].as_array().cloned().unwrap_or_default()
            }
        }
    }

    /// A raw request as an administrator: status code and JSON body (`Null` if none).
    pub async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let client = self.client().await;
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(
                "content-type",
                if method == "PATCH" {
                    "application/merge-patch+json"
                } else {
                    "application/json"
                },
            )
            .body(body.map(|b| b.to_string().into_bytes()).unwrap_or_default())
            .expect("a valid request");
        let response = client
            .send(request.map(Into::into))
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let code = response.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// Whether a SelfSubjectAccessReview of `client` allows `verb` on `resource`.
async fn allowed(client: &kube::Client, ns: &str, group: &str, resource: &str, verb: &str) -> bool {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let api: kube::Api<SelfSubjectAccessReview> = kube::Api::all(client.clone());
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.to_string()),
                verb: Some(verb.to_string()),
                group: Some(group.to_string()),
                resource: Some(resource.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&Default::default(), &review)
        .await
        .ok()
        .and_then(|r| r.status)
        .is_some_and(|s| s.allowed)
}

/// The API path of `kind` objects in `ns` (and of `name`).
pub fn path(kind: Kind, ns: &str, name: Option<&str>) -> String {
    let version = kind.api_version();
    let base = if version.contains('/') {
        format!("/apis/{version}")
    } else {
        format!("/api/{version}")
    };
    let plural = kind.resource().split('.').next().unwrap_or_default();
    match name {
        Some(name) => format!("{base}/namespaces/{ns}/{plural}/{name}"),
        None => format!("{base}/namespaces/{ns}/{plural}"),
    }
}

impl Backend {
    /// The requests `user` sent, as (Kubernetes verb, request URI), in order.
    pub async fn requests_of(&self, user: &str) -> Vec<(String, String)> {
        match &self.server {
            Server::Double(server) => server
                .requests_of(user)
                .into_iter()
                .map(|r| {
                    let (method, uri) = r.split_once(' ').unwrap_or((&r, ""));
                    let path = uri.split('?').next().unwrap_or_default();
                    // .../namespaces/NS/RESOURCE[/NAME]
                    let segments: Vec<&str> = path.split('/').collect();
                    let named = segments
                        .iter()
                        .position(|s| *s == "namespaces")
                        .is_some_and(|i| segments.len() > i + 3);
                    let verb = match method {
                        "GET" if uri.contains("watch=true") || uri.contains("watch=1") => "watch",
                        "GET" if named => "get",
                        "GET" => "list",
                        "POST" => "create",
                        "PUT" => "update",
                        "PATCH" => "patch",
                        "DELETE" => "delete",
                        other => other,
                    };
                    (verb.to_string(), uri.to_string())
                })
                .collect(),
            Server::Real { plane, .. } => {
                // The audit log is written as responses complete: let the last ones land.
                tokio::time::sleep(Duration::from_millis(200)).await;
                plane
                    .requests_of(user)
                    .into_iter()
                    .map(|e| {
                        (
                            e["verb"].as_str().unwrap_or_default().to_string(),
                            e["requestURI"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            }
        }
    }
}

/// How to make a client for one user, for code that builds its client on a runtime of its own
/// (`RemoteLock`, a blocking driver's LeaseCandidate registration).
#[derive(Clone)]
pub enum ClientSource {
    Double {
        url: String,
        user: String,
    },
    Real {
        plane: &'static ControlPlane,
        user: String,
        namespace: String,
    },
}

impl ClientSource {
    /// A client (call it inside the runtime that will use it).
    pub async fn client(&self) -> kube::Client {
        match self {
            ClientSource::Double { url, user } => {
                let url: hyper::Uri = url.parse().expect("valid url");
                let mut config = kube::Config::new(url);
                config.default_retry = false;
                config.auth_info.token = Some(user.clone().into());
                kube::Client::try_from(config).expect("client")
            }
            ClientSource::Real {
                plane,
                user,
                namespace,
            } => plane.client_in(user, namespace).await,
        }
    }
}

impl Backend {
    /// A [`ClientSource`] for `user`.
    pub fn client_source(&self, user: &str) -> ClientSource {
        match &self.server {
            Server::Double(server) => ClientSource::Double {
                url: server.url(),
                user: user.to_string(),
            },
            Server::Real { plane, .. } => ClientSource::Real {
                plane,
                user: user.to_string(),
                namespace: self.namespace.clone(),
            },
        }
    }
}
