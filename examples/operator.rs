//! A small operator whose controller runs only while this replica leads.
//!
//! The controller (kube-runtime's `Controller`) watches the ConfigMaps labelled
//! `leasehold.dev/example=operator` in one namespace and stamps each with two annotations: a
//! digest of its data (`leasehold.dev/data-digest`) and the term that wrote it
//! (`leasehold.dev/reconciled-by`: the identity and the fencing token). Around it:
//!
//! * leader election on a Lease with the tokio driver, re-contending after a lost term, the
//!   followers watching the lock (a release is taken over at once);
//! * a preflight check that says in the first second what is wrong (a missing namespace or
//!   permission, with the Role to apply; an unreachable server is waited for);
//! * `/healthz` (liveness, from `Probe::check`), `/readyz` (`Probe::check_ready`) and
//!   `/metrics` (the elector's metrics in the application's prometheus-client `Registry`);
//! * on SIGTERM or Ctrl-C: the controller is stopped (running reconciles finish, no new one
//!   starts), then the lock is released, so that another replica takes over at once.
//!
//! A reconcile writes only while its term lasts, as far as a client can tell: it checks the
//! term's deadline (on its own reading of the clock) just before it sends, gives up at that
//! deadline, and makes the write conditional on the resourceVersion it read. A write still in
//! flight when the term ends (a pause between the check and the send, a slow API server) can
//! land afterwards; the precondition then keeps it from overwriting anything written since it
//! read the object, and the next leader's own conditional reconcile re-reads and restamps.
//! Where a deposed leader's late write must be refused outright, the system written to has to
//! check the fencing token (here in the annotation): no client-side rule can.
//!
//! ```text
//! cargo run --example operator -- --kubeconfig ~/.kube/config --namespace default
//! kubectl create configmap demo --from-literal=greeting=hello
//! kubectl label configmap demo leasehold.dev/example=operator
//! kubectl get configmap demo -o jsonpath='{.metadata.annotations}'
//! ```
//!
//! Run two copies (with different `--identity` and `--http`) and stop the leader with Ctrl-C:
//! the other one takes over and stamps its own term. It needs this Role (and a RoleBinding to
//! the operator's identity):
//!
//! ```yaml
//! rules:
//!   - apiGroups: ["coordination.k8s.io"]
//!     resources: ["leases"]
//!     verbs: ["get", "create", "update", "list", "watch"]
//!   - apiGroups: [""]
//!     resources: ["configmaps"]
//!     verbs: ["get", "list", "watch", "patch"]
//! ```
//!
//! On stdout it prints one line per event, for scripts and for its test
//! (`tests/operator.rs`): `term-started ID TOKEN NANOS`, `reconciled ID TOKEN CONFIGMAP
//! START_NANOS END_NANOS` and `term-ended ID TOKEN NANOS`, the times in nanoseconds since the
//! Unix epoch. Logs go to stderr (warnings by default; `RUST_LOG=info` for more).
#![allow(clippy::disallowed_methods)] // an application reads the real clock

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use leasehold::kube::LeaseLock;
use leasehold::tokio::{CancellationToken, LeaderContext, LeaderElector};
use leasehold::{AfterLoss, Config, FencingToken, Identity, Observation, Probe};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The label that selects the ConfigMaps this operator manages.
pub const SELECTOR: &str = "leasehold.dev/example=operator";
/// The annotation holding the digest of a ConfigMap's data.
pub const DIGEST: &str = "leasehold.dev/data-digest";
/// The annotation naming the term that wrote it: `IDENTITY TOKEN`.
pub const RECONCILED_BY: &str = "leasehold.dev/reconciled-by";

/// What the operator is told on its command line.
#[derive(Debug, Clone)]
pub struct Flags {
    /// A kubeconfig file; without it, kube's inference (`$KUBECONFIG`, `~/.kube/config`, the
    /// pod's service account).
    pub kubeconfig: Option<String>,
    /// The namespace of the lock and of the ConfigMaps.
    pub namespace: String,
    /// The Lease's name.
    pub lease: String,
    /// This replica's identity (an object name, so that coordinated election could use it).
    pub identity: String,
    /// Where `/healthz`, `/readyz` and `/metrics` are served (port 0: any free port, printed).
    pub http: SocketAddr,
    /// The lease duration, renew deadline and retry period.
    pub timings: [Duration; 3],
}

impl Flags {
    /// Parses the command line (without the program name).
    ///
    /// # Errors
    /// A usage message.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Flags, String> {
        let mut flags = Flags {
            kubeconfig: None,
            namespace: "default".into(),
            lease: "configmap-stamper".into(),
            identity: std::env::var("POD_NAME").unwrap_or_default(),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            timings: [15, 10, 2].map(Duration::from_secs),
        };
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--kubeconfig" => flags.kubeconfig = Some(value()?),
                "--namespace" => flags.namespace = value()?,
                "--lease" => flags.lease = value()?,
                "--identity" => flags.identity = value()?,
                "--http" => {
                    let v = value()?;
                    flags.http = v.parse().map_err(|e| format!("--http {v}: {e}"))?;
                }
                "--timings-ms" => {
                    let v = value()?;
                    let ms: Vec<u64> = v
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("--timings-ms {v}: {e}"))?;
                    let [ld, rd, rp] = ms[..] else {
                        return Err(format!("--timings-ms {v}: three numbers: LD,RD,RP"));
                    };
                    flags.timings = [ld, rd, rp].map(Duration::from_millis);
                }
                other => return Err(format!("unknown flag {other}")),
            }
        }
        if flags.identity.is_empty() {
            flags.identity = format!("operator-{}", std::process::id());
        }
        Ok(flags)
    }
}

/// What every reconcile of one term shares.
struct Term {
    configmaps: Api<ConfigMap>,
    identity: String,
    token: FencingToken,
    /// Fires when the term ends.
    cancel: CancellationToken,
    /// The instant the term ends unless renewed.
    until: watch::Receiver<tokio::time::Instant>,
}

impl Term {
    /// Whether the term still runs: not cancelled and not past its deadline, judged by this
    /// task's own reading of the clock (the elector's task may not have run for a while).
    fn lasts(&self) -> bool {
        !self.cancel.is_cancelled() && tokio::time::Instant::now() < *self.until.borrow()
    }
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error("the ConfigMap has no name")]
    Unnamed,
    #[error("the term ended before the write was answered")]
    TermEnded,
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Stamps one ConfigMap with the digest of its data and this term.
async fn reconcile(cm: Arc<ConfigMap>, term: Arc<Term>) -> Result<Action, ReconcileError> {
    let name = cm.metadata.name.clone().ok_or(ReconcileError::Unnamed)?;
    let digest = digest(cm.data.as_ref());
    let by = format!("{} {}", term.identity, term.token);
    let annotations = cm.metadata.annotations.clone().unwrap_or_default();
    if annotations.get(DIGEST) == Some(&digest) && annotations.get(RECONCILED_BY) == Some(&by) {
        return Ok(Action::await_change());
    }
    if !term.lasts() {
        return Ok(Action::await_change());
    }
    let start = nanos();
    // Conditional on the version read: a write sent late (after a pause) fails with a conflict
    // instead of overwriting what the next leader wrote.
    let patch = serde_json::json!({
        "metadata": {
            "resourceVersion": cm.metadata.resource_version,
            "annotations": { DIGEST: digest, RECONCILED_BY: by },
        }
    });
    let deadline = *term.until.borrow();
    let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
    let write = term.configmaps.patch(&name, &params, &patch);
    match tokio::time::timeout_at(deadline, write).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(ReconcileError::TermEnded),
    }
    println!(
        "reconciled {} {} {name} {start} {}",
        term.identity,
        term.token,
        nanos()
    );
    Ok(Action::await_change())
}

fn error_policy(_: Arc<ConfigMap>, error: &ReconcileError, _: Arc<Term>) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// A digest of a ConfigMap's data: 64-bit FNV-1a over the sorted keys and values, the same in
/// every build (replicas built apart must agree, or each new leader would rewrite them all).
pub fn digest(data: Option<&BTreeMap<String, String>>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (key, value) in data.into_iter().flatten() {
        for byte in key.bytes().chain([0]).chain(value.bytes()).chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The leader work of one term: the controller, until the term ends.
async fn lead(configmaps: Api<ConfigMap>, identity: String, leader: LeaderContext) {
    let token = leader.token;
    println!("term-started {identity} {token} {}", nanos());
    let term = Arc::new(Term {
        configmaps: configmaps.clone(),
        identity: identity.clone(),
        token,
        cancel: leader.cancel.clone(),
        until: leader.until,
    });
    // A fresh controller per term: its cache and queue start from what the server holds now.
    Controller::new(configmaps, watcher::Config::default().labels(SELECTOR))
        .graceful_shutdown_on(leader.cancel.cancelled_owned())
        .run(reconcile, error_policy, term)
        .for_each(|_| async {})
        .await;
    // Running reconciles have finished (each is bounded by the term's deadline).
    println!("term-ended {identity} {token} {}", nanos());
}

/// `/healthz`, `/readyz` and `/metrics`.
async fn serve(listener: TcpListener, probe: Probe, registry: Arc<Registry>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (probe, registry) = (probe.clone(), registry.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let response = answer(request.uri().path(), &probe, &registry);
                async move { Ok::<_, Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

fn answer(path: &str, probe: &Probe, registry: &Registry) -> Response<Full<Bytes>> {
    // client-go's usual tolerance: a leader that could not renew for 20 s past its deadline.
    let tolerance = Duration::from_secs(20);
    let (status, body) = match path {
        "/healthz" => health(probe.check(tolerance)),
        "/readyz" => health(probe.check_ready(tolerance)),
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (StatusCode::OK, text),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

fn health(check: Result<(), leasehold::Unhealthy>) -> (StatusCode, String) {
    match check {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// A kube client from `--kubeconfig`, or from kube's inference.
async fn client(kubeconfig: Option<&str>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("--kubeconfig {path}: {e}"))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| format!("--kubeconfig {path}: {e}"))?
        }
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    kube::Client::try_from(config).map_err(|e| e.to_string())
}

/// Runs the operator until `stop` completes (then it stops the controller and releases), or
/// until the election fails for good.
///
/// # Errors
/// What prevented it from starting, or from releasing.
pub async fn run(flags: Flags, stop: impl Future<Output = ()>) -> Result<(), String> {
    let client = client(flags.kubeconfig.as_deref()).await?;
    let identity = Identity::new(flags.identity.clone()).map_err(|e| format!("--identity: {e}"))?;
    let mut config = Config::new(identity);
    [
        config.lease_duration,
        config.renew_deadline,
        config.retry_period,
    ] = flags.timings;
    config.release_on_cancel = true;
    config.after_loss = AfterLoss::Recontend;
    config.observation = Observation::Watch;
    let lock = LeaseLock::new(client.clone(), &flags.namespace, &flags.lease);
    // Said in the first second: a missing namespace or permission (with the Role to apply). A
    // server that does not answer is waited for, so that a restarted replica does not
    // crash-loop through a control-plane outage.
    match lock.preflight(config.observation).await {
        Ok(()) => {}
        Err(e) if e.is_unreachable() => tracing::warn!(error = %e, "contending anyway"),
        Err(e) => return Err(e.to_string()),
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(client, &flags.namespace);
    let name = flags.identity.clone();
    let handle = LeaderElector::builder(config, lock)
        .on_started_leading(move |leader| lead(configmaps.clone(), name.clone(), leader))
        .on_stopped_leading(|| tracing::info!("stopped leading"))
        .on_new_leader(|leader| tracing::info!(?leader, "new leader"))
        .build()
        .map_err(|e| e.to_string())?
        .spawn();

    let mut registry = Registry::default();
    leasehold::prometheus::register(&mut registry, handle.probe());
    let listener = TcpListener::bind(flags.http)
        .await
        .map_err(|e| format!("--http {}: {e}", flags.http))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    println!("serving http://{address}");
    let server = tokio::spawn(serve(listener, handle.probe(), Arc::new(registry)));

    tokio::select! {
        () = stop => {}
        () = handle.finished() => {}
    }
    // Stops the controller (its reconciles finish), then releases the lock.
    let probe = handle.probe();
    handle.shutdown().await;
    server.abort();
    if probe.leader().as_ref().map(Identity::as_str) == Some(flags.identity.as_str()) {
        let why = probe
            .state()
            .last_error
            .map_or_else(String::new, |e| format!(": {}", e.error));
        return Err(format!(
            "the lock was not released{why} (the next leader waits for the lease to expire)"
        ));
    }
    Ok(())
}

/// SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Logs to stderr: warnings by default, `RUST_LOG` to change.
pub fn install_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[tokio::main]
async fn main() -> ExitCode {
    install_logging();
    let flags = match Flags::parse(std::env::args().skip(1)) {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!(
                "operator: {e}\nusage: operator [--kubeconfig PATH] [--namespace NS] [--lease NAME] [--identity ID] [--http ADDR] [--timings-ms LD,RD,RP]"
            );
            return ExitCode::from(2);
        }
    };
    match run(flags, terminated()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("operator: {e}");
            ExitCode::FAILURE
        }
    }
}
