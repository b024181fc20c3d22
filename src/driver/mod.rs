//! What the tokio and blocking drivers share: the clock, the elector behind a mutex (so other
//! threads can ask it questions), and the published state.
//!
//! Drivers decide nothing about leadership: they read clocks, perform the elector's lock
//! operations, run timers, and turn its events into callbacks.
#![allow(clippy::disallowed_methods)] // drivers are where the real clocks are read

#[cfg(feature = "blocking")]
pub mod blocking;
#[cfg(feature = "prometheus")]
pub mod prometheus;
#[cfg(feature = "tokio")]
pub(crate) mod shards;
#[cfg(feature = "tokio")]
pub mod tokio;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::elector::{
    Alert, Elector, Event, FencingToken, Input, Now, Role, StopReason, Unhealthy,
};
use crate::lock::{LockError, LockErrorKind, LockRequest};
use crate::record::Identity;
use crate::time::{Instant, Timestamp};

/// The monotonic clock a driver reads, with its origin. Under tokio it is tokio's clock, so
/// tests with paused time run in simulated time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    #[cfg(feature = "tokio")]
    origin: ::tokio::time::Instant,
    #[cfg(not(feature = "tokio"))]
    origin: std::time::Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            #[cfg(feature = "tokio")]
            origin: ::tokio::time::Instant::now(),
            #[cfg(not(feature = "tokio"))]
            origin: std::time::Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> Now {
        let elapsed = self.origin.elapsed();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_micros()).ok())
            .and_then(|micros| Timestamp::from_unix_micros(micros).ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        Now::new(
            Instant::from_nanos(crate::time::duration_nanos(elapsed)),
            wall,
        )
    }

    /// How long from now until `at` (zero if past).
    #[cfg_attr(not(feature = "blocking"), allow(dead_code))]
    pub(crate) fn until(&self, at: Instant) -> Duration {
        at - self.now().instant
    }

    /// The std instant of `at`.
    pub(crate) fn std_instant(&self, at: Instant) -> std::time::Instant {
        let origin = {
            #[cfg(feature = "tokio")]
            {
                self.origin.into_std()
            }
            #[cfg(not(feature = "tokio"))]
            {
                self.origin
            }
        };
        origin
            .checked_add(Duration::from_nanos(at.as_nanos()))
            .unwrap_or_else(|| origin + Duration::from_secs(86_400 * 365 * 30))
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn tokio_instant(&self, at: Instant) -> ::tokio::time::Instant {
        let at = Duration::from_nanos(at.as_nanos());
        self.origin
            .checked_add(at)
            .unwrap_or_else(|| self.origin + Duration::from_secs(86_400 * 365 * 30))
    }
}

/// A snapshot of an elector's state. `#[non_exhaustive]`: it will report more.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaderState {
    /// Follower, leader, stopping or finished.
    pub role: Role,
    /// The holder last observed on the lock.
    pub leader: Option<Identity>,
    /// The fencing token of the current term, while leading.
    pub token: Option<FencingToken>,
    /// When the current term ends unless renewed, while leading.
    pub leader_until: Option<std::time::Instant>,
    /// Renewals that had to read first (client-go's `leader_election_slowpath_total`).
    pub slow_path_renewals: u64,
    /// The last failed lock operation and how many failed in a row; `None` once the lock
    /// answers again. A lost race is an answer, not an error.
    pub last_error: Option<ErrorReport>,
    /// The leader work panicked, with this message: the driver stepped down (releasing the
    /// lock if configured) and stopped, as client-go's process would have died.
    pub work_panicked: Option<String>,
    /// A condition a person should look at ([`Alert`]), while it holds.
    pub alert: Option<Alert>,
    /// Coordinated election: why the LeaseCandidate registration fails, until it succeeds
    /// again (without a registration nobody is picked).
    pub registration_error: Option<String>,
}

/// A lock error as [`LeaderState`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorReport {
    /// The last error.
    pub error: LockError,
    /// How many operations failed in a row.
    pub in_a_row: u64,
}

/// What the drivers count, for metrics.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counts {
    pub(crate) terms_started: u64,
    /// Terms ended, by reason.
    pub(crate) terms_lost: BTreeMap<&'static str, u64>,
    /// Failed lock operations (lost races not counted), by kind.
    pub(crate) lock_errors: BTreeMap<&'static str, u64>,
    /// When the current term began or was last renewed.
    pub(crate) renewed_at: Option<Instant>,
}

/// A snake_case label for why a term ended.
pub(crate) fn stop_label(reason: &StopReason) -> &'static str {
    match reason {
        StopReason::RenewDeadlineExceeded => "renew_deadline_exceeded",
        StopReason::LockTaken(_) => "lock_taken",
        StopReason::LockDeleted => "lock_deleted",
        StopReason::Yielded(_) => "yielded",
        StopReason::IdentityClash => "identity_clash",
        StopReason::Shutdown => "shutdown",
    }
}

/// The elector, shared between the driver and its handle.
#[derive(Clone)]
pub(crate) struct Shared {
    elector: Arc<Mutex<Elector>>,
    pub(crate) clock: Clock,
    /// The lock's name for logs and metrics ([`Config::name`](crate::Config::name)).
    pub(crate) name: String,
    pub(crate) counts: Arc<Mutex<Counts>>,
    /// The panic message of a leader work, once one panicked.
    panicked: Arc<Mutex<Option<String>>>,
    /// The LeaseCandidate registration, for its errors.
    #[cfg(feature = "kube")]
    registration: Option<crate::kube::LeaseCandidateRegistration>,
}

impl Shared {
    pub(crate) fn new(elector: Elector, clock: Clock) -> Self {
        Shared {
            name: elector.config().name.clone(),
            counts: Arc::default(),
            elector: Arc::new(Mutex::new(elector)),
            clock,
            panicked: Arc::default(),
            #[cfg(feature = "kube")]
            registration: None,
        }
    }

    /// The registration's failure since its last success, and whether retrying cannot heal it.
    fn registration_error(&self) -> Option<(String, bool)> {
        #[cfg(feature = "kube")]
        if let Some(e) = self.registration.as_ref().and_then(|r| r.last_error()) {
            return Some((
                format!("the LeaseCandidate registration fails: {}", e.message),
                e.permanent,
            ));
        }
        None
    }

    /// The counts so far.
    pub(crate) fn counts(&self) -> Counts {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records that the leader work panicked with `message`, and logs it.
    pub(crate) fn work_panicked(&self, lock: &str, message: String) {
        tracing::error!(lock, panic = %message, "the leader work panicked: stepping down");
        *self.panicked.lock().unwrap_or_else(PoisonError::into_inner) = Some(message);
    }

    pub(crate) fn elector(&self) -> MutexGuard<'_, Elector> {
        // The elector never panics while the lock is held, so a poisoned lock still guards a
        // consistent elector.
        self.elector.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Feeds `make(now)` to the elector.
    pub(crate) fn input(&self, make: impl FnOnce(Now) -> Input) {
        let now = self.clock.now();
        self.elector().handle_input(make(now));
    }

    pub(crate) fn state(&self) -> LeaderState {
        let now = self.clock.now().instant;
        let e = self.elector();
        LeaderState {
            role: e.role(),
            leader: e.leader().cloned(),
            token: e.fencing_token(),
            leader_until: e
                .leader_until()
                .filter(|&u| u > now)
                .map(|u| self.clock.std_instant(u)),
            slow_path_renewals: e.slow_path_renewals(),
            last_error: e.last_error().map(|(error, in_a_row)| ErrorReport {
                error: error.clone(),
                in_a_row,
            }),
            work_panicked: self
                .panicked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            alert: e.alert(now).cloned(),
            registration_error: self.registration_error().map(|(message, _)| message),
        }
    }

    /// Whether this candidate leads right now, by the elector's own clock rule.
    pub(crate) fn is_leader(&self) -> bool {
        let now = self.clock.now().instant;
        self.elector().is_leader(now)
    }

    /// The elector's liveness check, and a registration that retrying cannot heal.
    pub(crate) fn check(&self, max_tolerable_expired: Duration) -> Result<(), Unhealthy> {
        let now = self.clock.now().instant;
        self.elector().check(now, max_tolerable_expired)?;
        match self.registration_error() {
            Some((message, true)) => Err(Unhealthy::Registration(message)),
            _ => Ok(()),
        }
    }

    /// The elector's readiness check, and any registration failure.
    pub(crate) fn check_ready(&self, max_tolerable_expired: Duration) -> Result<(), Unhealthy> {
        let now = self.clock.now().instant;
        self.elector().check_ready(now, max_tolerable_expired)?;
        match self.registration_error() {
            Some((message, _)) => Err(Unhealthy::Registration(message)),
            None => Ok(()),
        }
    }
}

/// A cheap, cloneable view of a running elector for health endpoints, metrics and logs: what
/// its handle answers, without the handle (which `shutdown` consumes). From `Handle::probe`.
#[derive(Clone)]
pub struct Probe {
    pub(crate) shared: Shared,
}

impl Probe {
    pub(crate) fn new(shared: Shared) -> Self {
        Probe { shared }
    }

    /// The lock's name ([`Config::name`](crate::Config::name)).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Whether this candidate leads right now (false from `leader_until` on, even if the
    /// driver is stuck).
    pub fn is_leader(&self) -> bool {
        self.shared.is_leader()
    }

    /// The holder last observed.
    pub fn leader(&self) -> Option<Identity> {
        self.shared.elector().leader().cloned()
    }

    /// The state now.
    pub fn state(&self) -> LeaderState {
        self.shared.state()
    }

    /// The liveness check (see [`crate::Elector::check`]); client-go's usual tolerance is
    /// 20 s.
    ///
    /// # Errors
    /// What is wrong, naming the lock.
    pub fn check(&self, max_tolerable_expired: Duration) -> Result<(), Unhealthy> {
        self.shared.check(max_tolerable_expired)
    }

    /// The readiness check (see [`crate::Elector::check_ready`]).
    ///
    /// # Errors
    /// What is wrong, naming the lock.
    pub fn check_ready(&self, max_tolerable_expired: Duration) -> Result<(), Unhealthy> {
        self.shared.check_ready(max_tolerable_expired)
    }

    /// How long since the current term began or was last renewed (`None` before the first
    /// term).
    pub fn since_renewal(&self) -> Option<Duration> {
        let now = self.shared.clock.now().instant;
        self.shared.counts().renewed_at.map(|at| now - at)
    }
}

/// client-go's `LeaderMetric`: feed `leader_election_master_status{name}` (1 while leading,
/// 0 otherwise) and `leader_election_slowpath_total{name}` to your metrics system. `name` is
/// [`Config::name`](crate::Config::name). Unlike client-go, the status goes back to 0 on every
/// way out, a shutdown during the pause between renewals included.
pub trait LeaderMetrics: Send + 'static {
    /// This candidate leads.
    fn on(&mut self, name: &str);
    /// This candidate does not lead (also called once when the driver starts and when it exits).
    fn off(&mut self, name: &str);
    /// A renewal had to read the lock first.
    fn slowpath_exercised(&mut self, name: &str);
}

#[cfg(feature = "kube")]
impl<W> Builder<crate::kube::LeaseLock, W> {
    /// Coordinated leader election on this Lease (see [`lease_candidate`](Self::lease_candidate)),
    /// with the LeaseCandidate derived from the lock (its client, namespace and Lease name) and
    /// from the configuration's identity (its name, which must then be a valid object name):
    ///
    /// ```no_run
    /// # async fn example(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use leasehold::kube::{CandidateVersions, LeaseLock};
    /// use leasehold::tokio::LeaderElector;
    /// use leasehold::{Config, Identity};
    ///
    /// let config = Config::new(Identity::new("my-operator-0")?);
    /// let handle = LeaderElector::builder(config, LeaseLock::new(client, "ns", "my-operator"))
    ///     .coordinated(CandidateVersions::new("1.36.2"))
    ///     .on_started_leading(|leader| async move { leader.cancel.cancelled().await })
    ///     .on_stopped_leading(|| {})
    ///     .build()?
    ///     .spawn();
    /// # Ok(()) }
    /// ```
    ///
    /// (The blocking driver has its own `coordinated`, on a `RemoteLock` around a Lease.)
    pub fn coordinated(self, versions: crate::kube::CandidateVersions) -> Self {
        let registration = crate::kube::LeaseCandidateRegistration::new(
            self.lock.client(),
            self.lock.namespace(),
            &self.config.identity,
            self.lock.name(),
            versions,
        );
        self.lease_candidate(registration)
    }
}

/// Why a driver could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A required callback is missing (client-go's rules 6 and 7, with its messages).
    #[error("{0}")]
    MissingCallback(&'static str),
    /// The LeaseCandidate's versions would be refused by the API server (see
    /// `CandidateVersions::validate`).
    #[error("the LeaseCandidate's versions: {0}")]
    CandidateVersions(String),
    /// The LeaseCandidate registers under another name than the elector's identity (so the
    /// election controller's choice would never be recognised).
    #[error(
        "the LeaseCandidate {candidate:?} must be named as the elector's identity {identity:?}"
    )]
    CandidateIdentity {
        /// The candidate's name.
        candidate: String,
        /// The elector's identity.
        identity: String,
    },
    /// In coordinated election the identity names the LeaseCandidate, so it must be a valid
    /// object name (lowercase letters, digits, `-` and `.`, at most 253 characters).
    #[error(
        "the identity {identity:?} names the LeaseCandidate in coordinated election, so it must be a valid object name (lowercase letters, digits, '-' and '.', at most 253 characters)"
    )]
    CandidateName {
        /// The elector's identity.
        identity: String,
    },
    /// Coordinated election was asked of a lock that is no Lease.
    #[error("coordinated election needs a Lease lock, not {lock}")]
    NotALease {
        /// The lock's description.
        lock: String,
    },
}

pub(crate) type StoppedFn = Box<dyn FnMut() + Send>;
pub(crate) type NewLeaderFn = Box<dyn FnMut(Option<&Identity>) + Send>;

/// Builds a driver: `leasehold::tokio::Builder` and `leasehold::blocking::Builder` are this
/// type with their own kind of leader work `W`, and add `on_started_leading` and `build`.
pub struct Builder<L, W> {
    config: crate::config::Config,
    lock: L,
    seed: Option<u64>,
    on_started: Option<W>,
    on_stopped: Option<StoppedFn>,
    on_new_leader: Option<NewLeaderFn>,
    metrics: Option<Box<dyn LeaderMetrics>>,
    #[cfg(feature = "kube")]
    candidate: Option<crate::kube::LeaseCandidateRegistration>,
    /// An error found by a builder method that returns `Self`, reported by `build`.
    refused: Option<BuildError>,
}

/// A validated builder, taken apart by a driver's `build`.
pub(crate) struct Parts<L, W> {
    pub(crate) config: crate::config::Config,
    pub(crate) lock: L,
    pub(crate) shared: Shared,
    pub(crate) on_started: W,
    pub(crate) on_stopped: StoppedFn,
    pub(crate) on_new_leader: Option<NewLeaderFn>,
    pub(crate) core: Core,
    pub(crate) errors: ErrorLog,
    #[cfg(feature = "kube")]
    pub(crate) candidate: Option<crate::kube::LeaseCandidateRegistration>,
}

impl<L, W> Builder<L, W> {
    pub(crate) fn new(config: crate::config::Config, lock: L) -> Self {
        Builder {
            config,
            lock,
            seed: None,
            on_started: None,
            on_stopped: None,
            on_new_leader: None,
            metrics: None,
            #[cfg(feature = "kube")]
            candidate: None,
            refused: None,
        }
    }

    /// Makes `build` fail with `error` (for builder methods that return `Self`).
    pub(crate) fn refuse(mut self, error: BuildError) -> Self {
        self.refused.get_or_insert(error);
        self
    }

    /// An empty `Config::name` becomes the lock's own description (`namespace/name`), for
    /// logs, events and metrics.
    pub(crate) fn name_after_the_lock(&mut self, describe: String) {
        if self.config.name.is_empty() {
            self.config.name = describe;
        }
    }

    pub(crate) fn set_on_started(mut self, work: W) -> Self {
        self.on_started = Some(work);
        self
    }

    /// Called when a term ends, and once at exit if the elector never led (client-go's
    /// `OnStoppedLeading`). Required. Keep it short: it runs on the driver.
    pub fn on_stopped_leading(mut self, f: impl FnMut() + Send + 'static) -> Self {
        self.on_stopped = Some(Box::new(f));
        self
    }

    /// Called on every observed change of holder (`None`: released). Optional; keep it short.
    pub fn on_new_leader(mut self, f: impl FnMut(Option<&Identity>) + Send + 'static) -> Self {
        self.on_new_leader = Some(Box::new(f));
        self
    }

    /// The seed of the retry jitter (default: random).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Coordinated leader election: registers `candidate` (a `LeaseCandidate` named as this
    /// elector's identity) while the elector runs and deletes it when it stops, and makes the
    /// elector coordinated (it never creates or takes the lock; the election controller in
    /// kube-apiserver names the holder). Needs the `CoordinatedLeaderElection` feature gate and
    /// the `coordination.k8s.io/v1beta1` API on the cluster; without the controller nobody
    /// leads.
    #[cfg(feature = "kube")]
    pub fn lease_candidate(mut self, candidate: crate::kube::LeaseCandidateRegistration) -> Self {
        self.config.coordinated = true;
        self.candidate = Some(candidate);
        self
    }

    /// Reports client-go's leader-election metrics (see [`LeaderMetrics`]).
    pub fn metrics(mut self, metrics: impl LeaderMetrics) -> Self {
        self.metrics = Some(Box::new(metrics));
        self
    }

    /// Validates the configuration and the callbacks (in client-go's order) and starts the
    /// elector. `can_watch` says whether the lock delivers changes: if not, followers poll
    /// whatever the configuration asks. `time_precision` is the lock's.
    pub(crate) fn into_parts(
        mut self,
        can_watch: bool,
        time_precision: Duration,
    ) -> Result<Parts<L, W>, BuildError> {
        self.config.time_precision = time_precision;
        if let Some(error) = self.refused {
            return Err(error);
        }
        self.config.validate()?;
        let on_started = self.on_started.ok_or(BuildError::MissingCallback(
            "on_started_leading is required (client-go: OnStartedLeading callback must not be nil)",
        ))?;
        let on_stopped = self.on_stopped.ok_or(BuildError::MissingCallback(
            "on_stopped_leading is required (client-go: OnStoppedLeading callback must not be nil)",
        ))?;
        if !can_watch {
            self.config.observation = crate::config::Observation::Poll;
        }
        #[cfg(feature = "kube")]
        if let Some(c) = &self.candidate {
            if c.identity() != self.config.identity.as_str() {
                return Err(BuildError::CandidateIdentity {
                    candidate: c.identity().to_string(),
                    identity: self.config.identity.to_string(),
                });
            }
            if !c.has_valid_name() {
                return Err(BuildError::CandidateName {
                    identity: self.config.identity.to_string(),
                });
            }
        }
        #[cfg(feature = "kube")]
        if let Some(c) = &self.candidate {
            c.versions()
                .validate()
                .map_err(BuildError::CandidateVersions)?;
        }
        let clock = Clock::new();
        let seed = self.seed.unwrap_or_else(random_seed);
        let elector = Elector::new(self.config.clone(), clock.now(), seed)?;
        let shared = Shared {
            #[cfg(feature = "kube")]
            registration: self.candidate.clone(),
            ..Shared::new(elector, clock)
        };
        let mut core = Core {
            name: self.config.name.clone(),
            metrics: self.metrics,
            terms_ended: 0,
            slow_paths: 0,
            shared: shared.clone(),
        };
        core.metric(|m, name| m.off(name));
        Ok(Parts {
            config: self.config,
            lock: self.lock,
            errors: ErrorLog {
                counts: shared.counts.clone(),
                ..ErrorLog::default()
            },
            shared,
            on_started,
            on_stopped,
            on_new_leader: self.on_new_leader,
            core,
            #[cfg(feature = "kube")]
            candidate: self.candidate,
        })
    }
}

/// What a driver does about an elector event. Both drivers carry these out the same way in
/// their own runtime; the policy lives here, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Record a Kubernetes event on the lock (client-go's messages).
    RecordEvent(&'static str),
    /// Start the leader work with this token; it must stop by `leader_until`.
    StartWork {
        token: FencingToken,
        leader_until: Instant,
    },
    /// The term now lasts until `leader_until`.
    ExtendWork { leader_until: Instant },
    /// Tell the leader work to stop, and feed `Input::LeaderWorkStopped` once it has returned
    /// (the elector starts another term, or releases, only then).
    StopWork,
    /// Call `on_stopped_leading`.
    Stopped,
    /// Call `on_new_leader`.
    NewLeader(Option<Identity>),
    /// Log an alert (it is in the state too).
    Alert(Alert),
}

/// The drivers' shared bookkeeping of callbacks and metrics.
pub(crate) struct Core {
    name: String,
    metrics: Option<Box<dyn LeaderMetrics>>,
    terms_ended: u64,
    slow_paths: u64,
    /// For the counts.
    shared: Shared,
}

impl Core {
    fn metric(&mut self, f: impl FnOnce(&mut dyn LeaderMetrics, &str)) {
        if let Some(m) = &mut self.metrics {
            f(m.as_mut(), &self.name);
        }
    }

    /// After every step: report new slow-path renewals.
    pub(crate) fn observe(&mut self, state: &LeaderState) {
        while self.slow_paths < state.slow_path_renewals {
            self.slow_paths += 1;
            self.metric(|m, name| m.slowpath_exercised(name));
        }
    }

    pub(crate) fn effects(&mut self, event: &Event) -> Vec<Effect> {
        match event {
            Event::StartedLeading { .. } => self.metric(|m, name| m.on(name)),
            Event::StoppedLeading { .. } => self.metric(|m, name| m.off(name)),
            _ => {}
        }
        {
            let now = self.shared.clock.now().instant;
            let mut counts = self
                .shared
                .counts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match event {
                Event::StartedLeading { .. } => {
                    counts.terms_started += 1;
                    counts.renewed_at = Some(now);
                }
                Event::Renewed { .. } => counts.renewed_at = Some(now),
                Event::StoppedLeading { reason } => {
                    *counts.terms_lost.entry(stop_label(reason)).or_default() += 1;
                }
                _ => {}
            }
        }
        match event {
            Event::StartedLeading {
                token,
                leader_until,
            } => vec![
                Effect::RecordEvent("became leader"),
                Effect::StartWork {
                    token: *token,
                    leader_until: *leader_until,
                },
            ],
            Event::Renewed { leader_until } => vec![Effect::ExtendWork {
                leader_until: *leader_until,
            }],
            Event::StoppedLeading { .. } => {
                self.terms_ended += 1;
                vec![
                    Effect::StopWork,
                    Effect::RecordEvent("stopped leading"),
                    Effect::Stopped,
                ]
            }
            Event::NewLeader(leader) => vec![Effect::NewLeader(leader.clone())],
            Event::Released => Vec::new(),
            Event::Alert(alert) => vec![Effect::Alert(alert.clone())],
        }
    }

    /// At exit: the status metric goes to 0, and whether to call `on_stopped_leading` (client-go
    /// calls it whenever the elector exits; here it is called at the end of every term, and at
    /// exit only if no term ever ended).
    pub(crate) fn exit(&mut self) -> bool {
        self.metric(|m, name| m.off(name));
        self.terms_ended == 0
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Logs lock errors through `tracing` without flooding: the first error of each kind at once,
/// then at most one line per kind every [`ErrorLog::EVERY`], with how many were left out.
/// Lost races are normal contention and go to `debug`; a create answered NotFound means the
/// namespace (or the resource) is missing, an error like a refused permission or an
/// unreadable record; timeouts and overload are warnings.
#[derive(Debug, Default)]
pub(crate) struct ErrorLog {
    /// Per kind (and whether it was a create): when last logged, and how many since.
    seen: BTreeMap<(LockErrorKind, bool), (std::time::Instant, u64)>,
    /// Where the errors are counted (the elector's shared counts).
    counts: Arc<Mutex<Counts>>,
}

impl ErrorLog {
    const EVERY: Duration = Duration::from_secs(5);

    pub(crate) fn note(&mut self, lock: &str, request: &LockRequest, error: &LockError) {
        let create = matches!(request, LockRequest::Create(_));
        let level = match error.kind {
            kind if kind.is_lost_race_on(create) => tracing::Level::DEBUG,
            LockErrorKind::Timeout | LockErrorKind::Unavailable => tracing::Level::WARN,
            _ => tracing::Level::ERROR,
        };
        if level == tracing::Level::DEBUG {
            tracing::debug!(lock, %error, "lost a race for the lock");
            return;
        }
        *self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lock_errors
            .entry(error.kind.label())
            .or_default() += 1;
        #[allow(clippy::disallowed_methods)] // rate limiting reads the real clock
        let now = std::time::Instant::now();
        let key = (error.kind, create);
        let suppressed = match self.seen.get_mut(&key) {
            Some((last, count)) if now.duration_since(*last) < Self::EVERY => {
                *count += 1;
                return;
            }
            Some((last, count)) => {
                *last = now;
                std::mem::take(count)
            }
            None => {
                self.seen.insert(key, (now, 0));
                0
            }
        };
        if level == tracing::Level::ERROR {
            tracing::error!(lock, %error, suppressed, "lock operation failed");
        } else {
            tracing::warn!(lock, %error, suppressed, "lock operation failed");
        }
    }
}

/// A seed for the elector's jitter that differs between processes.
pub(crate) fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}
