//! `leasehold`, the command: leader election for any program, as a wrapper (`leasehold run --
//! COMMAND`) and as a sidecar (`leasehold serve`), on the crate's own tokio driver and
//! Kubernetes locks. `leasehold status` shows a lock as a person wants to see it.
//!
//! Exit codes: the command's own status when it exits by itself under `run`; 0 after a clean
//! shutdown; 1 when the election cannot go on (the lock is unusable, the namespace or the
//! permissions are missing); 2 for bad flags or an invalid configuration.
#![forbid(unsafe_code)]
// The command is an application: it reads the environment, the clocks, and spawns processes.
#![allow(clippy::disallowed_methods)]

mod guard;
mod http;
mod procs;
mod run;
mod status;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::future::Future;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use leasehold::kube::{LockObject, ObjectLock};
use leasehold::lock::Lock;
use leasehold::tokio::{Handle, LeaderContext, LeaderElector};
use leasehold::{AfterLoss, Alert, Config, Identity, Observation};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Leader election for any program, on a Kubernetes Lease (or a ConfigMap or Endpoints lock),
/// compatible with client-go's leader election.
#[derive(Debug, Parser)]
#[command(name = "leasehold", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Contend for the lock; while leading, run COMMAND. The command is dead by the end of the
    /// term: SIGTERM a grace period before it ends without a renewal (or at once on any other
    /// loss), SIGKILL at its end at the latest; if leasehold itself dies, the command is killed
    /// with it. When the command exits by itself, leasehold steps down, releases, and exits
    /// with the command's status.
    Run(RunArgs),
    /// Contend for the lock and serve the leader over HTTP: `GET /` as {"name": LEADER},
    /// /healthz, /readyz and /metrics (Prometheus text).
    Serve(ServeArgs),
    /// Show the lock: holder, transitions, acquired, renewed, lease duration.
    Status(StatusArgs),
    /// Internal: the guard between `run` and its command (see guard.rs).
    #[command(name = "__guard", hide = true)]
    Guard {
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Internal: becomes COMMAND, dying with the guard (a parent-death signal).
    #[command(name = "__exec", hide = true)]
    Exec {
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
}

/// Which lock, where.
#[derive(Debug, Clone, Args)]
struct LockArgs {
    /// Path to a kubeconfig (default: $KUBECONFIG, ~/.kube/config, or the pod's service account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Namespace of the lock (default: $POD_NAMESPACE, then the kubeconfig's).
    #[arg(long, short = 'n', env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// Name of the lock object.
    #[arg(long)]
    lease: String,
    /// Kind of lock object.
    #[arg(long, value_enum, default_value_t = LockKind::Lease)]
    lock: LockKind,
}

impl LockArgs {
    /// Names the API server would refuse (or that would not stay in their place in a URL) are
    /// usage errors, found before the cluster is asked.
    fn check(&self) -> Result<(), Fatal> {
        if !leasehold::kube::is_object_name(&self.lease) {
            return Err(Fatal::usage(format!(
                "--lease {:?}: not a valid object name (at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)",
                self.lease
            )));
        }
        if let Some(namespace) = self.namespace.as_deref().filter(|n| !n.is_empty())
            && !leasehold::kube::is_namespace_name(namespace)
        {
            return Err(Fatal::usage(format!(
                "--namespace {namespace:?}: not a valid namespace name (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)"
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LockKind {
    /// A coordination.k8s.io/v1 Lease.
    Lease,
    /// A ConfigMap annotation (legacy).
    Configmap,
    /// An Endpoints annotation (legacy).
    Endpoints,
}

/// How to contend.
#[derive(Debug, Clone, Args)]
struct ElectionArgs {
    #[command(flatten)]
    lock: LockArgs,
    /// This candidate's identity (default: $POD_NAME, then HOSTNAME_RANDOM).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long followers wait after the record last changed (whole seconds).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "15s")]
    lease_duration: Duration,
    /// How long a leader leads after issuing its last successful write.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    renew_deadline: Duration,
    /// Interval between renewals and attempts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    retry_period: Duration,
    /// Watch the lock (the default): a follower sees a release at once, and sends nothing
    /// while the lock is held. Falls back to polling when list or watch is not permitted.
    #[arg(long, conflicts_with = "poll")]
    watch: bool,
    /// Poll the lock every retry period instead of watching it.
    #[arg(long)]
    poll: bool,
    /// Coordinated leader election: register this candidate as a LeaseCandidate (named as the
    /// identity) and let kube-apiserver's election controller pick the holder (the oldest
    /// emulation version leads). Needs the CoordinatedLeaderElection feature gate and
    /// coordination.k8s.io/v1beta1, and a Lease lock.
    #[arg(long, requires = "binary_version")]
    coordinated: bool,
    /// The binary version this candidate registers with (semver, e.g. 1.36.2).
    #[arg(long, requires = "coordinated")]
    binary_version: Option<String>,
    /// The emulation version this candidate registers with (default: the binary version).
    #[arg(long, requires = "coordinated")]
    emulation_version: Option<String>,
    /// Do not release the lock on shutdown (followers then wait out the lease).
    #[arg(long)]
    no_release: bool,
    /// How long past its lease a leader may go unrenewed before /healthz fails (client-go's
    /// healthz adaptor timeout).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    healthz_tolerance: Duration,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    election: ElectionArgs,
    /// How long before the end of an unrenewed term the command gets SIGTERM, and how long a
    /// shutdown waits for it before SIGKILL.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s")]
    grace: Duration,
    /// Run the command again when it exits, while still leading.
    #[arg(long)]
    restart: bool,
    /// Also serve the sidecar's HTTP endpoints on this address.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<OsString>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    election: ElectionArgs,
    /// Address of the HTTP endpoints.
    #[arg(long, default_value = "0.0.0.0:4040")]
    http: SocketAddr,
    /// A file that holds this candidate's identity while it leads, and is absent otherwise.
    #[arg(long)]
    status_file: Option<PathBuf>,
    /// Label this pod ($POD_NAME in $POD_NAMESPACE) `leasehold.dev/leader=true` while it leads.
    #[arg(long)]
    label_pod: bool,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    lock: LockArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// For people.
    Text,
    /// For scripts.
    Json,
}

/// A failure that ends leasehold, with its exit code.
#[derive(Debug)]
struct Fatal {
    code: u8,
    message: String,
}

impl Fatal {
    fn usage(message: impl Into<String>) -> Self {
        Fatal {
            code: 2,
            message: message.into(),
        }
    }

    fn runtime(message: impl Into<String>) -> Self {
        Fatal {
            code: 1,
            message: message.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Guard { command } => return guard::guard(command),
        Command::Exec { command } => return guard::exec(command),
        _ => {}
    }
    // A background process that writes to a terminal with `stty tostop` is stopped by SIGTTOU:
    // blocked, the write goes through (the command's own mask is reset at its exec). Before
    // any thread starts, so that every thread has it blocked.
    let mut ttou = nix::sys::signal::SigSet::empty();
    ttou.add(nix::sys::signal::Signal::SIGTTOU);
    let _ = ttou.thread_block();
    // Logs go through a non-blocking writer (lines are dropped while stderr is not drained): a
    // stalled log pipe must never block the thread that runs the election.
    let (writer, _flush_at_exit) = tracing_appender::non_blocking(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(
            // kube-client logs a whole response body when it cannot decode one; leasehold
            // reports the error itself, briefly.
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,kube_client::client=error")
            }),
        )
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One thread: the command is spawned from it, and its parent-death signal follows the
    // spawning thread, which must live as long as leasehold.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leasehold: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async move {
        if nix::unistd::getpid().as_raw() == 1 {
            tokio::spawn(procs::reap_orphans());
        }
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Serve(args) => http::serve(args).await,
            Command::Status(args) => status::show(args).await,
            Command::Guard { .. } | Command::Exec { .. } => Ok(0),
        }
    });
    // Leave at once: a blocked DNS lookup or a stalled request must not hold up the exit.
    runtime.shutdown_background();
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(fatal) => {
            eprintln!("leasehold: {}", fatal.message);
            ExitCode::from(fatal.code)
        }
    }
}

/// A kube client from `--kubeconfig`, or inferred (KUBECONFIG, ~/.kube/config, in-cluster),
/// and the namespace to use.
async fn client(args: &LockArgs) -> Result<(kube::Client, String), Fatal> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Fatal::usage(format!("--kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| Fatal::usage(format!("--kubeconfig {}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Fatal::runtime(format!("no cluster configuration found: {e}")))?,
    };
    let namespace = args
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| config.default_namespace.clone());
    if !leasehold::kube::is_namespace_name(&namespace) {
        return Err(Fatal::usage(format!(
            "the namespace {namespace:?} (from the kubeconfig) is not a valid namespace name"
        )));
    }
    let client = kube::Client::try_from(config)
        .map_err(|e| Fatal::runtime(format!("cannot build a client: {e}")))?;
    Ok((client, namespace))
}

impl ElectionArgs {
    /// The elector's configuration, validated at the lock's time precision (a bad one is a
    /// usage error).
    fn config(&self, namespace: &str, time_precision: Duration) -> Result<Config, Fatal> {
        self.lock.check()?;
        // An empty $POD_NAME (a downward API typo) is no identity: fall back as if unset.
        let identity = match self.identity.as_deref().filter(|id| !id.is_empty()) {
            Some(id) => id.to_string(),
            None => hostname_random(),
        };
        let identity =
            Identity::new(identity).map_err(|e| Fatal::usage(format!("--identity: {e}")))?;
        let mut config = Config::new(identity);
        config.name = format!("{namespace}/{}", self.lock.lease);
        config.lease_duration = self.lease_duration;
        config.renew_deadline = self.renew_deadline;
        config.retry_period = self.retry_period;
        config.time_precision = time_precision;
        config.release_on_cancel = !self.no_release;
        config.after_loss = AfterLoss::Recontend;
        config.observation = if self.poll {
            Observation::Poll
        } else {
            Observation::Watch
        };
        config.coordinated = self.coordinated;
        if let Some(versions) = self.versions() {
            versions
                .validate()
                .map_err(|e| Fatal::usage(format!("--binary-version/--emulation-version: {e}")))?;
            if self.lock.lock != LockKind::Lease {
                return Err(Fatal::usage("--coordinated needs --lock lease"));
            }
            if !leasehold::kube::is_object_name(config.identity.as_str()) {
                return Err(Fatal::usage(format!(
                    "--identity {:?}: coordinated election names a LeaseCandidate after the identity, which must be an object name (lowercase letters, digits, '-' and '.')",
                    config.identity.as_str()
                )));
            }
        }
        config
            .validate()
            .map_err(|e| Fatal::usage(format!("invalid timing: {e}")))?;
        Ok(config)
    }
}

impl ElectionArgs {
    /// The versions a coordinated candidate registers with.
    fn versions(&self) -> Option<leasehold::kube::CandidateVersions> {
        let binary = self.binary_version.clone().filter(|_| self.coordinated)?;
        let mut versions = leasehold::kube::CandidateVersions::new(binary);
        if let Some(emulation) = &self.emulation_version {
            versions.emulation_version = Some(emulation.clone());
        }
        Some(versions)
    }

    /// The LeaseCandidate registration, in coordinated election.
    fn registration(
        &self,
        client: &kube::Client,
        namespace: &str,
        config: &Config,
    ) -> Option<leasehold::kube::LeaseCandidateRegistration> {
        let versions = self.versions()?;
        Some(leasehold::kube::LeaseCandidateRegistration::new(
            client.clone(),
            namespace,
            &config.identity,
            &self.lock.lease,
            versions,
        ))
    }
}

/// The finest time step the lock kind stores: the elector's timings are validated against it.
fn time_precision(kind: LockKind) -> Duration {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{ConfigMap, Endpoints};
    match kind {
        LockKind::Lease => Lease::TIME_PRECISION,
        LockKind::Configmap => ConfigMap::TIME_PRECISION,
        LockKind::Endpoints => Endpoints::TIME_PRECISION,
    }
}

/// A default identity: the host name, a dash, a random suffix (a valid object name, as
/// coordinated election needs, where client-go's underscore is not).
fn hostname_random() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "leasehold".into());
    format!("{host}-{:012x}", random_u64() & 0xffff_ffff_ffff)
}

/// A random number, different in every process and call.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}

/// The election, as the command runs it: the handle, and what the command needs to say at the
/// end.
pub(crate) struct Election {
    pub(crate) handle: Arc<Handle>,
    identity: Identity,
    release: bool,
}

/// Starts the elector with `work` as the leader work and the command's logging callbacks (and,
/// in coordinated election, the LeaseCandidate `registration`).
fn start<L, F, Fut>(
    config: Config,
    lock: L,
    registration: Option<leasehold::kube::LeaseCandidateRegistration>,
    work: F,
) -> Result<Election, Fatal>
where
    L: Lock,
    F: FnMut(LeaderContext) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let identity = config.identity.clone();
    let release = config.release_on_cancel;
    let led = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut work = work;
    let leading = led.clone();
    let builder = LeaderElector::builder(config, lock);
    let builder = match registration {
        Some(registration) => builder.lease_candidate(registration),
        None => builder,
    };
    let handle = builder
        .on_started_leading(move |leader| {
            leading.store(true, std::sync::atomic::Ordering::Relaxed);
            work(leader)
        })
        // Also called once at the end for a candidate that never led (client-go's rule).
        .on_stopped_leading(move || {
            if led.load(std::sync::atomic::Ordering::Relaxed) {
                tracing::info!("stopped leading");
            }
        })
        .on_new_leader(|leader| {
            // The identity comes from the lock: escaped, so it cannot forge log lines.
            let leader = leader.map_or_else(
                || "nobody".to_string(),
                |l| l.as_str().escape_debug().to_string(),
            );
            tracing::info!(%leader, "the lock names a new holder");
        })
        .build()
        .map_err(|e| Fatal::usage(e.to_string()))?
        .spawn();
    Ok(Election {
        handle: Arc::new(handle),
        identity,
        release,
    })
}

impl Election {
    /// Resolves when the election cannot go on: another candidate renews under this one's
    /// identity, or the elector stopped by itself.
    async fn trouble(&self) -> Fatal {
        let mut state = self.handle.watch_state();
        let clash = async {
            let seen = state
                .wait_for(|s| matches!(s.alert, Some(Alert::IdentityClash(_))))
                .await
                .ok()
                .and_then(|s| s.alert.clone());
            match seen {
                Some(alert) => alert.to_string(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = clash => Fatal::runtime(message),
            () = self.handle.finished() => Fatal::runtime("the election stopped (see the log above)"),
        }
    }

    /// Steps down (the leader work is told to stop), waits for the end and the release, and
    /// says whether the release failed. A second stop signal ends the wait at once.
    async fn stop(&self, signals: &mut StopSignals) -> Result<(), Fatal> {
        self.handle.stop();
        tokio::select! {
            () = self.handle.finished() => {}
            signal = signals.recv() => {
                return Err(Fatal {
                    code: 128u8.saturating_add(signal),
                    message: "a second stop signal: exiting at once, without releasing the lock".into(),
                });
            }
        }
        let state = self.handle.state();
        if self.release && state.leader.as_ref() == Some(&self.identity) {
            let why = state
                .last_error
                .map_or_else(String::new, |e| format!(": {}", e.error));
            return Err(Fatal::runtime(format!(
                "the lock still names this candidate: it was not released{why} (followers take it once its lease expires)"
            )));
        }
        Ok(())
    }
}

/// SIGTERM, SIGINT and SIGHUP, caught from the start of the election.
struct StopSignals {
    term: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl StopSignals {
    fn catch() -> Result<Self, Fatal> {
        let catch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| Fatal::runtime(format!("cannot catch {name}: {e}")))
        };
        Ok(StopSignals {
            term: catch(SignalKind::terminate(), "SIGTERM")?,
            interrupt: catch(SignalKind::interrupt(), "SIGINT")?,
            hangup: catch(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// One of them arrived: its number.
    async fn recv(&mut self) -> u8 {
        tokio::select! {
            _ = self.term.recv() => 15,
            _ = self.interrupt.recv() => 2,
            _ = self.hangup.recv() => 1,
        }
    }
}

/// Checks the namespace and the permissions (and, in coordinated election, the LeaseCandidate
/// API and permissions), and says what to fix. Watching needs list and watch: without them the
/// election falls back to polling, and says so once. A server that does not answer is no
/// reason to stop: the election waits for it (and says so in its log), so that a restarted
/// candidate does not crash-loop through a control-plane outage.
async fn preflight<K: LockObject>(
    lock: &ObjectLock<K>,
    config: &mut Config,
    registration: Option<&leasehold::kube::LeaseCandidateRegistration>,
) -> Result<(), Fatal> {
    let unreachable = |e: &leasehold::kube::PreflightError| {
        tracing::warn!(error = %e, "preflight: the API server does not answer; contending anyway");
    };
    let watching = config.observation == Observation::Watch;
    match lock.preflight(config.observation).await {
        Ok(()) => {}
        Err(e) if e.is_unreachable() => {
            unreachable(&e);
            return Ok(());
        }
        Err(leasehold::kube::PreflightError::Forbidden { verbs, .. })
            if watching && verbs.iter().all(|v| v == "list" || v == "watch") =>
        {
            match lock.preflight(Observation::Poll).await {
                Ok(()) => {}
                Err(e) if e.is_unreachable() => unreachable(&e),
                Err(e) => return Err(Fatal::runtime(e.to_string())),
            }
            tracing::warn!(
                refused = %verbs.join(", "),
                "this identity may not list or watch the lock: polling it instead (a handover then waits for the next poll); grant list and watch to watch it"
            );
            config.observation = Observation::Poll;
        }
        Err(e) => return Err(Fatal::runtime(e.to_string())),
    }
    if let Some(registration) = registration {
        match registration.preflight().await {
            Ok(()) => {}
            Err(e) if e.is_unreachable() => unreachable(&e),
            Err(e) => return Err(Fatal::runtime(format!("--coordinated: {e}"))),
        }
    }
    Ok(())
}

/// Runs `f` with the lock the flags name (the three kinds are different types).
macro_rules! with_lock {
    ($args:expr, $client:expr, $namespace:expr, |$lock:ident| $body:expr) => {
        match $args.lock {
            $crate::LockKind::Lease => {
                let $lock = ::leasehold::kube::LeaseLock::new($client, &$namespace, &$args.lease);
                $body
            }
            $crate::LockKind::Configmap => {
                let $lock =
                    ::leasehold::kube::ConfigMapLock::new($client, &$namespace, &$args.lease);
                $body
            }
            $crate::LockKind::Endpoints => {
                let $lock =
                    ::leasehold::kube::EndpointsLock::new($client, &$namespace, &$args.lease);
                $body
            }
        }
    };
}
pub(crate) use with_lock;
