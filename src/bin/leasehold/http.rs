//! `leasehold serve`, and `--http` on `run`: the leader over HTTP, a health check, readiness,
//! and client-go's two leader-election metrics.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use leasehold::Config;
use leasehold::lock::Lock;
use leasehold::tokio::{Handle, LeaderContext};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Fatal, ServeArgs};

/// The label `--label-pod` puts on this pod while it leads.
const LEADER_LABEL: &str = "leasehold.dev/leader";

/// The annotation that names the lock of the election a labelled pod takes part in.
const LEASE_ANNOTATION: &str = "leasehold.dev/lease";

/// How long one change of the pods' labels may take, and how often the labels are checked
/// again when all is well.
const LABEL_TIMEOUT: Duration = Duration::from_secs(5);
const LABEL_RESYNC: Duration = Duration::from_secs(30);

/// How many connections the endpoints keep at once (a new one closes the oldest), and how long
/// one may stay open.
const MAX_CONNECTIONS: usize = 64;
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn serve(args: ServeArgs) -> Result<u8, Fatal> {
    // Flags first: a usage error must not wait for (or fail on) the cluster.
    let precision = crate::time_precision(args.election.lock.lock);
    args.election.config("", precision)?;
    let pod_name = match args.label_pod {
        true => Some(
            std::env::var("POD_NAME")
                .ok()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| Fatal::usage("--label-pod needs $POD_NAME (the downward API)"))?,
        ),
        false => None,
    };
    let (client, namespace) = crate::client(&args.election.lock).await?;
    let config = args.election.config(&namespace, precision)?;
    let label = match pod_name {
        Some(name) => {
            let pod_namespace = std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| namespace.clone());
            let label = PodLabel {
                pods: kube::Api::namespaced(client.clone(), &pod_namespace),
                namespace: pod_namespace,
                name,
                lease: config.name.clone(),
            };
            label.preflight(client.clone()).await?;
            Some(label)
        }
        None => None,
    };
    let listener = TcpListener::bind(args.http)
        .await
        .map_err(|e| Fatal::runtime(format!("--http {}: {e}", args.http)))?;
    let status_file = StatusFile {
        path: args.status_file.clone(),
        identity: config.identity.to_string(),
    };
    // A status file left by a leasehold that died while leading would route to a follower:
    // clear it before contending (the label is reconciled from the start).
    status_file.mark(false);
    let client_for_candidate = client.clone();
    crate::with_lock!(args.election.lock, client, namespace, |lock| {
        let registration = args
            .election
            .registration(&client_for_candidate, &namespace, &config);
        let mut config = config;
        crate::preflight(&lock, &mut config, registration.as_ref()).await?;
        let tolerance = args.election.healthz_tolerance;
        elect(
            lock,
            config,
            registration,
            listener,
            status_file,
            label,
            tolerance,
        )
        .await
    })
}

/// `--status-file`: holds this candidate's identity while it leads, absent otherwise.
#[derive(Clone)]
struct StatusFile {
    path: Option<PathBuf>,
    identity: String,
}

impl StatusFile {
    fn mark(&self, leading: bool) {
        let Some(path) = &self.path else { return };
        let written = if leading {
            // Whole or not at all: written aside, then renamed into place.
            let aside = path.with_extension("leasehold-tmp");
            std::fs::write(&aside, format!("{}\n", self.identity))
                .and_then(|()| std::fs::rename(&aside, path))
        } else {
            std::fs::remove_file(path).or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        };
        if let Err(e) = written {
            tracing::error!(path = %path.display(), error = %e, "status file");
        }
    }
}

/// `--label-pod`: this pod carries `leasehold.dev/leader=true` exactly while it leads, and its
/// lock's name in the annotation `leasehold.dev/lease`; a leader removes the label from other
/// pods of the same lock that still carry it (one that lost its term during a partition).
struct PodLabel {
    pods: kube::Api<Pod>,
    namespace: String,
    name: String,
    /// The lock (`namespace/name`), which scopes the clean-up to this election's pods.
    lease: String,
}

impl PodLabel {
    /// What the reconciliation needs: get and patch this pod, list and patch the others.
    async fn preflight(&self, client: kube::Client) -> Result<(), Fatal> {
        let checks = [
            (Some(self.name.as_str()), &["get", "patch"][..]),
            (None, &["list", "patch"][..]),
        ];
        for (name, verbs) in checks {
            match leasehold::kube::check_access(
                client.clone(),
                &self.namespace,
                "",
                "pods",
                name,
                verbs,
            )
            .await
            {
                Ok(()) => {}
                Err(e) if e.is_unreachable() => {
                    tracing::warn!(error = %e, "preflight of --label-pod: the API server does not answer");
                    return Ok(());
                }
                Err(e) => return Err(Fatal::runtime(format!("--label-pod: {e}"))),
            }
        }
        Ok(())
    }

    /// Keeps the labels matching `leading` for as long as the process runs: after every change,
    /// again every retry period while a change fails, and every [`LABEL_RESYNC`] anyway (someone
    /// may edit the pods).
    async fn reconcile(self: Arc<Self>, mut leading: watch::Receiver<bool>, retry: Duration) {
        loop {
            let want = *leading.borrow_and_update();
            let done = self.apply(want).await;
            let wait = if done { LABEL_RESYNC } else { retry };
            tokio::select! {
                changed = leading.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass: this pod's label, and (leading) the other pods'. Whether all of it took.
    async fn apply(&self, leading: bool) -> bool {
        let value = if leading { json!("true") } else { Value::Null };
        let patch = json!({"metadata": {
            "labels": {LEADER_LABEL: value},
            "annotations": {LEASE_ANNOTATION: self.lease},
        }});
        let mut done = self.patch(&self.name, &patch).await;
        if leading {
            done &= self.clear_others().await;
        }
        done
    }

    async fn clear_others(&self) -> bool {
        let params = ListParams::default().labels(&format!("{LEADER_LABEL}=true"));
        let pods = match tokio::time::timeout(LABEL_TIMEOUT, self.pods.list(&params)).await {
            Ok(Ok(pods)) => pods,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "listing the pods labelled as leader");
                return false;
            }
            Err(_) => {
                tracing::warn!("listing the pods labelled as leader: no answer");
                return false;
            }
        };
        let mut done = true;
        for pod in pods {
            let Some(name) = pod.metadata.name.as_deref() else {
                continue;
            };
            let same_lock = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(LEASE_ANNOTATION))
                .is_some_and(|l| *l == self.lease);
            if name != self.name && same_lock {
                tracing::info!(pod = name, "removing a stale leader label");
                let patch = json!({"metadata": {"labels": {LEADER_LABEL: null}}});
                done &= self.patch(name, &patch).await;
            }
        }
        done
    }

    async fn patch(&self, name: &str, patch: &Value) -> bool {
        let (params, patch) = (PatchParams::default(), Patch::Merge(patch));
        match tokio::time::timeout(LABEL_TIMEOUT, self.pods.patch(name, &params, &patch)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::warn!(pod = name, error = %e, "labelling the pod");
                false
            }
            Err(_) => {
                tracing::warn!(pod = name, "labelling the pod: no answer");
                false
            }
        }
    }
}

async fn elect<L: Lock>(
    lock: L,
    config: Config,
    registration: Option<leasehold::kube::LeaseCandidateRegistration>,
    listener: TcpListener,
    status_file: StatusFile,
    label: Option<PodLabel>,
    tolerance: Duration,
) -> Result<u8, Fatal> {
    let retry = config.retry_period;
    let (leading_tx, leading) = watch::channel(false);
    let leading_tx = Arc::new(leading_tx);
    let label = label.map(Arc::new);
    let reconciler = label
        .clone()
        .map(|label| tokio::spawn(label.reconcile(leading, retry)));
    let work_file = status_file.clone();
    let mut signals = crate::StopSignals::catch()?;
    let election = crate::start(config, lock, registration, move |leader: LeaderContext| {
        let (file, leading) = (work_file.clone(), leading_tx.clone());
        async move {
            file.mark(true);
            leading.send_replace(true);
            leader.cancel.cancelled().await;
            leading.send_replace(false);
            file.mark(false);
        }
    })?;
    tokio::spawn(serve_on(listener, election.handle.clone(), tolerance));
    let trouble = tokio::select! {
        _ = signals.recv() => None,
        fatal = election.trouble() => Some(fatal),
    };
    let stopped = election.stop(&mut signals).await;
    // A work given up at the end of its term may not have cleaned up.
    status_file.mark(false);
    if let (Some(task), Some(label)) = (reconciler, label) {
        // The work has stopped: one last pass (a few tries); should it fail, the next
        // leader removes the label.
        task.abort();
        for _ in 0..3 {
            if label.apply(false).await {
                break;
            }
            tokio::time::sleep(retry).await;
        }
    }
    match trouble {
        Some(fatal) => Err(fatal),
        None => stopped.map(|()| 0),
    }
}

/// Serves the endpoints until the process ends. At most [`MAX_CONNECTIONS`] are kept: a new
/// connection closes the oldest, so idle or slow clients cannot starve the probes (which open a
/// connection each time); each lasts at most [`CONNECTION_TIMEOUT`], headers within 5 s.
pub(crate) async fn serve_on(listener: TcpListener, handle: Arc<Handle>, tolerance: Duration) {
    let mut registry = Registry::default();
    leasehold::prometheus::register(&mut registry, handle.probe());
    let registry = Arc::new(registry);
    let open: Arc<std::sync::Mutex<std::collections::VecDeque<(u64, CancellationToken)>>> =
        Arc::default();
    for id in 0u64.. {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: a floor under the retries.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let closed = CancellationToken::new();
        {
            let mut open = open
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if open.len() >= MAX_CONNECTIONS
                && let Some((_, oldest)) = open.pop_front()
            {
                oldest.cancel();
            }
            open.push_back((id, closed.clone()));
        }
        let (handle, registry, open) = (handle.clone(), registry.clone(), open.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = answer(&req, &handle, &registry, tolerance);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = closed.cancelled() => {}
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection) => {}
            }
            open.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|(i, _)| *i != id);
        });
    }
}

fn answer(
    req: &Request<hyper::body::Incoming>,
    handle: &Handle,
    registry: &Registry,
    tolerance: Duration,
) -> Response<Full<Bytes>> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    let state = handle.state();
    let mut response = match req.uri().path() {
        // What the original election sidecar served.
        "/" => {
            let leader = state.leader.map(|l| l.to_string()).unwrap_or_default();
            let body = serde_json::json!({ "name": leader }).to_string();
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        // Liveness, client-go's meaning: only a leader that cannot renew (or an alert such as
        // another candidate renewing under this identity) is unhealthy. A candidate cut off from
        // the API server is not: restarting a fleet during an outage helps nobody.
        "/healthz" => match handle.check(tolerance) {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        // Readiness, stricter: also not ready once the lock has not answered for a lease, or
        // the election has stopped.
        "/readyz" => match handle.check_ready(Duration::ZERO) {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
        },
        // The library's metrics (the `prometheus` feature), in OpenMetrics text.
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => {
                    let mut response = text(StatusCode::OK, body);
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    response
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    if head {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
