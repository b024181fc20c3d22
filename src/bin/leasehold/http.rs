//! `leasehold serve`, and `--http` on `run`: the leader over HTTP, a health check, readiness,
//! and client-go's two leader-election metrics.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use leasehold::lock::Lock;
use leasehold::tokio::{Handle, LeaderContext};
use leasehold::{Config, Role};
use tokio::net::TcpListener;

use crate::{Fatal, ServeArgs};

/// How long past its lease a leader may go unrenewed before `/healthz` fails (client-go's
/// usual `NewLeaderHealthzAdaptor(20 * time.Second)`).
const HEALTHZ_TOLERANCE: Duration = Duration::from_secs(20);

/// The label `--label-pod` puts on this pod while it leads.
const LEADER_LABEL: &str = "leasehold.dev/leader";

/// How long one change of the pod's label may take.
const LABEL_TIMEOUT: Duration = Duration::from_secs(5);

/// How many connections the endpoints serve at once, and how long one may stay open.
const MAX_CONNECTIONS: usize = 64;
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn serve(args: ServeArgs) -> Result<u8, Fatal> {
    // Flags first: a usage error must not wait for (or fail on) the cluster.
    let precision = crate::time_precision(args.election.lock.lock);
    args.election.config("", precision)?;
    let (client, namespace) = crate::client(&args.election.lock).await?;
    let config = args.election.config(&namespace, precision)?;
    let pod = if args.label_pod {
        let name = std::env::var("POD_NAME")
            .map_err(|_| Fatal::usage("--label-pod needs $POD_NAME (the downward API)"))?;
        let pod_namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| namespace.clone());
        Some((
            kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
                client.clone(),
                &pod_namespace,
            ),
            name,
        ))
    } else {
        None
    };
    let listener = TcpListener::bind(args.http)
        .await
        .map_err(|e| Fatal::runtime(format!("--http {}: {e}", args.http)))?;
    let side = SideEffects {
        status_file: args.status_file.clone(),
        pod,
        identity: config.identity.to_string(),
    };
    // A status file or label left by a leasehold that died while leading would route to a
    // follower: clear them before contending.
    side.mark(false).await;
    crate::with_lock!(args.election.lock, client, namespace, |lock| {
        crate::preflight(&lock, &config).await?;
        elect(lock, config, listener, side).await
    })
}

/// What a serving leader does besides answering HTTP.
#[derive(Clone)]
struct SideEffects {
    status_file: Option<PathBuf>,
    pod: Option<(kube::Api<k8s_openapi::api::core::v1::Pod>, String)>,
    identity: String,
}

impl SideEffects {
    async fn lead(self, leader: LeaderContext) {
        // Marking must not outlive the term (a hung API server): it races the term's end.
        tokio::select! {
            () = self.mark(true) => {}
            () = leader.cancel.cancelled() => {}
        }
        leader.cancel.cancelled().await;
        self.mark(false).await;
    }

    /// Shows (or stops showing) that this candidate leads: the status file at once, the pod
    /// label within a bounded time (a removal is retried a few times).
    async fn mark(&self, leading: bool) {
        if let Some(path) = &self.status_file {
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
        if let Some((pods, name)) = &self.pod {
            let value = if leading {
                serde_json::json!("true")
            } else {
                serde_json::Value::Null
            };
            let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: value}}});
            let params = kube::api::PatchParams::default();
            let tries = if leading { 1 } else { 3 };
            let merge = kube::api::Patch::Merge(&patch);
            for attempt in 1..=tries {
                let call = pods.patch(name, &params, &merge);
                match tokio::time::timeout(LABEL_TIMEOUT, call).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => {
                        tracing::error!(pod = %name, error = %e, attempt, "labelling the pod")
                    }
                    Err(_) => tracing::error!(pod = %name, attempt, "labelling the pod: no answer"),
                }
                if attempt < tries {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

async fn elect<L: Lock>(
    lock: L,
    config: Config,
    listener: TcpListener,
    side: SideEffects,
) -> Result<u8, Fatal> {
    let name = config.name.clone();
    let cleanup = side.clone();
    let mut signals = crate::StopSignals::catch()?;
    let election = crate::start(config, lock, move |leader| side.clone().lead(leader))?;
    tokio::spawn(serve_on(listener, election.handle.clone(), name));
    let trouble = tokio::select! {
        _ = signals.recv() => None,
        fatal = election.trouble() => Some(fatal),
    };
    let stopped = election.stop(&mut signals).await;
    // A work given up at the end of its term may not have cleaned up.
    cleanup.mark(false).await;
    match trouble {
        Some(fatal) => Err(fatal),
        None => stopped.map(|()| 0),
    }
}

/// Serves the endpoints until the process ends: at most [`MAX_CONNECTIONS`] at once, each
/// for at most [`CONNECTION_TIMEOUT`], headers within 5 s, so that slow or idle clients
/// cannot exhaust the process's file descriptors (which the lock needs).
pub(crate) async fn serve_on(listener: TcpListener, handle: Arc<Handle>, name: String) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: a floor under the retries.
                tracing::warn!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (handle, name) = (handle.clone(), name.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let answer = answer(&req, &handle, &name);
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}

fn answer(
    req: &Request<hyper::body::Incoming>,
    handle: &Handle,
    name: &str,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    let state = handle.state().borrow().clone();
    match req.uri().path() {
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
        "/healthz" => match handle.check(HEALTHZ_TOLERANCE) {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        // Ready while the election runs and the lock answers (no failure since its last
        // answer).
        "/readyz" => {
            let running = !matches!(state.role, Role::Finished);
            match (&state.last_error, running) {
                (None, true) => text(StatusCode::OK, "ok\n".into()),
                (Some(e), _) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the lock does not answer: {}\n", e.error),
                ),
                (None, false) => text(StatusCode::SERVICE_UNAVAILABLE, "stopped\n".into()),
            }
        }
        "/metrics" => {
            let leading = u8::from(handle.is_leader());
            let name = name.replace('\\', "\\\\").replace('"', "\\\"");
            let body = format!(
                "# HELP leader_election_master_status Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease.\n\
                 # TYPE leader_election_master_status gauge\n\
                 leader_election_master_status{{name=\"{name}\"}} {leading}\n\
                 # HELP leader_election_slowpath_total Total number of slow path exercised in renewing leader leases. 'name' is the string used to identify the lease.\n\
                 # TYPE leader_election_slowpath_total counter\n\
                 leader_election_slowpath_total{{name=\"{name}\"}} {}\n",
                state.slow_path_renewals
            );
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
