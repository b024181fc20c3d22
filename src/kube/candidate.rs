//! Coordinated leader election (KEP-4355): this candidate's `LeaseCandidate`
//! (`coordination.k8s.io/v1beta1`), from which an election controller in kube-apiserver picks
//! the holder of the Lease.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1beta1::{LeaseCandidate, LeaseCandidateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::WatchStreamExt;
use tokio::time::{Instant, sleep_until};

use crate::record::Identity;

/// How often the registration is renewed when nobody pings it (the controller garbage-collects
/// candidates not renewed for hours; client-go renews only when pinged).
pub const RENEW_EVERY: Duration = Duration::from_secs(120);

/// How long one registration call may take.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// The strategy coordinated election uses today.
pub const OLDEST_EMULATION_VERSION: &str = "OldestEmulationVersion";

/// What a candidate registers with: its binary and emulation versions (semver, no leading
/// `v`) and the strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateVersions {
    /// The binary version, e.g. `1.36.2`.
    pub binary_version: String,
    /// The emulation version (required by [`OLDEST_EMULATION_VERSION`]), at most the binary
    /// version.
    pub emulation_version: Option<String>,
    /// The election strategy.
    pub strategy: String,
}

impl CandidateVersions {
    /// `binary_version` as both versions, with the `OldestEmulationVersion` strategy.
    pub fn new(binary_version: impl Into<String>) -> Self {
        let binary_version = binary_version.into();
        CandidateVersions {
            emulation_version: Some(binary_version.clone()),
            binary_version,
            strategy: OLDEST_EMULATION_VERSION.to_string(),
        }
    }

    /// The API server's rules, checked before anything is sent (it would refuse every attempt
    /// with 422): both versions semantic versions without a leading `v` (`1.36.2`, not `1.36`
    /// or `v1.36.2`), the emulation version at most the binary version and present with
    /// `OldestEmulationVersion`, and a strategy.
    ///
    /// # Errors
    /// What is wrong, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let binary = Semver::parse(&self.binary_version)
            .map_err(|why| format!("binaryVersion {:?}: {why}", self.binary_version))?;
        if self.strategy.is_empty() {
            return Err("strategy: required".into());
        }
        match &self.emulation_version {
            Some(emulation) => {
                let parsed = Semver::parse(emulation)
                    .map_err(|why| format!("emulationVersion {emulation:?}: {why}"))?;
                if parsed > binary {
                    return Err(format!(
                        "emulationVersion {emulation:?} must be at most binaryVersion {:?}",
                        self.binary_version
                    ));
                }
            }
            None if self.strategy == OLDEST_EMULATION_VERSION => {
                return Err(format!(
                    "emulationVersion: required with the strategy {OLDEST_EMULATION_VERSION}"
                ));
            }
            None => {}
        }
        Ok(())
    }
}

/// A semantic version (semver 2.0: `MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]`), ordered by
/// precedence (build metadata ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Semver {
    core: [u64; 3],
    pre: Vec<String>,
}

impl Semver {
    fn parse(text: &str) -> Result<Semver, &'static str> {
        if text.starts_with('v') {
            return Err("no leading 'v' allowed");
        }
        let text = match text.split_once('+') {
            Some((_, "")) => return Err("an empty build"),
            Some((version, _)) => version,
            None => text,
        };
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (text, None),
        };
        let numeric = |part: &str| -> Result<u64, &'static str> {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err("expected MAJOR.MINOR.PATCH, numbers");
            }
            if part.len() > 1 && part.starts_with('0') {
                return Err("no leading zeros allowed");
            }
            part.parse().map_err(|_| "a number too large")
        };
        let parts: Vec<&str> = core.split('.').collect();
        let [major, minor, patch] = parts[..] else {
            return Err("expected MAJOR.MINOR.PATCH");
        };
        let core = [numeric(major)?, numeric(minor)?, numeric(patch)?];
        let pre = match pre {
            None => Vec::new(),
            Some(pre) => {
                let ids: Vec<String> = pre.split('.').map(str::to_string).collect();
                for id in &ids {
                    let ok = !id.is_empty()
                        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !(id.len() > 1
                            && id.starts_with('0')
                            && id.bytes().all(|b| b.is_ascii_digit()));
                    if !ok {
                        return Err("an invalid pre-release");
                    }
                }
                ids
            }
        };
        Ok(Semver { core, pre })
    }
}

impl PartialOrd for Semver {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Semver {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        self.core
            .cmp(&other.core)
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                (true, true) => Ordering::Equal,
                // A pre-release comes before its release.
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    for (a, b) in self.pre.iter().zip(&other.pre) {
                        let order = match (a.parse::<u64>(), b.parse::<u64>()) {
                            (Ok(a), Ok(b)) => a.cmp(&b),
                            (Ok(_), Err(_)) => Ordering::Less,
                            (Err(_), Ok(_)) => Ordering::Greater,
                            (Err(_), Err(_)) => a.cmp(b),
                        };
                        if order != Ordering::Equal {
                            return order;
                        }
                    }
                    self.pre.len().cmp(&other.pre.len())
                }
            })
    }
}

/// This candidate's `LeaseCandidate`: created (or wholly replaced, so that a restart under the
/// same name never keeps an old lease name or old versions), renewed at once whenever the
/// controller pings it and every [`RENEW_EVERY`] otherwise, recreated if someone deletes it,
/// and deleted on a graceful stop so that no election waits for a candidate that is gone.
///
/// The object's name is the candidate's identity: the controller writes it as the Lease's
/// `holderIdentity`, which the elector must recognise as its own. The drivers run it next to
/// the elector (`Builder::lease_candidate`); [`LeaseCandidateRegistration::run`] runs it alone.
#[derive(Clone)]
pub struct LeaseCandidateRegistration {
    api: Api<LeaseCandidate>,
    name: String,
    lease_name: String,
    versions: CandidateVersions,
    /// The last failure since the last success, shared by the clones (the driver reports it).
    failure: Arc<Mutex<Option<RegistrationError>>>,
}

/// Why the registration fails, until it succeeds again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationError {
    /// The API server's answer, or what went wrong.
    pub message: String,
    /// A refusal that retrying will not heal (a 4xx other than a conflict or throttling: a
    /// missing permission, an invalid object, a missing API or namespace).
    pub permanent: bool,
    /// How many attempts failed in a row.
    pub in_a_row: u32,
}

impl LeaseCandidateRegistration {
    /// The candidate `identity` for the Lease `lease_name` in `namespace`.
    pub fn new(
        client: Client,
        namespace: &str,
        identity: &Identity,
        lease_name: &str,
        versions: CandidateVersions,
    ) -> Self {
        LeaseCandidateRegistration {
            api: Api::namespaced(client, namespace),
            name: identity.as_str().to_string(),
            lease_name: lease_name.to_string(),
            versions,
            failure: Arc::default(),
        }
    }

    /// The last failure since the last successful registration, if any.
    pub fn last_error(&self) -> Option<RegistrationError> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The versions this candidate registers with.
    pub fn versions(&self) -> &CandidateVersions {
        &self.versions
    }

    /// Checks, before contending, what would otherwise fail every registration: that the API
    /// server serves `coordination.k8s.io/v1beta1` LeaseCandidates (the
    /// `CoordinatedLeaderElection` feature gate and `--runtime-config`), and that this client
    /// may get, list, watch, create, update and delete its LeaseCandidate.
    ///
    /// # Errors
    /// [`PreflightError`](super::PreflightError): `Refused` when the API is not served,
    /// `Forbidden` with the Role to apply.
    pub async fn preflight(&self) -> Result<(), super::PreflightError> {
        // An invalid name is refused before any request (it names the LeaseCandidate).
        if !self.has_valid_name() {
            return Err(super::PreflightError::Refused(format!(
                "the identity {:?} names the LeaseCandidate, so it must be a valid object name (lowercase letters, digits, '-' and '.')",
                self.name
            )));
        }
        let client = self.api.clone().into_client();
        let served = tokio::time::timeout(
            CALL_LIMIT,
            client.list_api_group_resources("coordination.k8s.io/v1beta1"),
        )
        .await;
        match served {
            Ok(Ok(list)) if list.resources.iter().any(|r| r.name == "leasecandidates") => {}
            Ok(Ok(_)) | Ok(Err(kube::Error::Api(_))) => {
                return Err(super::PreflightError::Refused(
                    "the API server does not serve coordination.k8s.io/v1beta1 leasecandidates: coordinated leader election needs the CoordinatedLeaderElection feature gate and --runtime-config=coordination.k8s.io/v1beta1=true".into(),
                ));
            }
            Ok(Err(e)) => return Err(super::PreflightError::Unreachable(super::explain(&e))),
            Err(_) => {
                return Err(super::PreflightError::Unreachable(
                    "no answer within 10 s".into(),
                ));
            }
        }
        let namespace = self.api.namespace().unwrap_or("default").to_string();
        super::check_access(
            client,
            &namespace,
            "coordination.k8s.io",
            "leasecandidates",
            Some(&self.name),
            &["get", "list", "watch", "create", "update", "delete"],
        )
        .await
    }

    fn note(&self, outcome: Result<(), &kube::Error>) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        *failure = match outcome {
            Ok(()) => None,
            Err(e) => Some(RegistrationError {
                message: super::explain(e),
                permanent: matches!(e, kube::Error::Api(s) if (400..500).contains(&s.code) && ![408, 409, 429].contains(&s.code)),
                in_a_row: failure.as_ref().map_or(1, |f| f.in_a_row.saturating_add(1)),
            }),
        };
    }

    /// The identity this candidate registers as.
    pub fn identity(&self) -> &str {
        &self.name
    }

    /// Whether the identity can name a LeaseCandidate: a Kubernetes object name (an RFC 1123
    /// subdomain). Any other is refused by the API server on every attempt.
    pub fn has_valid_name(&self) -> bool {
        super::is_object_name(&self.name)
    }

    /// Keeps the registration until `stop` completes, then deletes it (within 5 s). Errors are
    /// logged and retried with a growing pause (1 s up to a minute): never a busy loop.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut changes = kube::runtime::watcher::watch_object(self.api.clone(), &self.name)
            .default_backoff()
            .boxed();
        let mut next = Instant::now();
        let mut failures = 0u32;
        // The last ping answered: a ping is answered once, even if our clock lags the
        // controller's (then the answer is stamped with the ping's time, see `register`).
        let mut answered: Option<jiff::Timestamp> = None;
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = sleep_until(next) => match tokio::time::timeout(CALL_LIMIT, self.register()).await.unwrap_or_else(|_| Err(kube::Error::Service("no answer within 10 s".into()))) {
                    Ok(()) => {
                        self.note(Ok(()));
                        if failures > 0 {
                            tracing::info!(candidate = %self.name, "LeaseCandidate registered again");
                        }
                        failures = 0;
                        next = Instant::now() + RENEW_EVERY;
                    }
                    // A ping that raced our write: try again at once, once.
                    Err(kube::Error::Api(status)) if status.code == 409 && failures == 0 => {
                        failures = 1;
                        next = Instant::now();
                    }
                    Err(e) => {
                        self.note(Err(&e));
                        failures += 1;
                        if failures == 1 || failures.is_power_of_two() {
                            tracing::error!(candidate = %self.name, error = %super::explain(&e), failures, "registering the LeaseCandidate");
                        }
                        let pause = Duration::from_secs(1 << failures.min(6)).min(Duration::from_secs(60));
                        next = Instant::now() + pause;
                    }
                },
                change = changes.next() => match change {
                    // The controller asks whether we are alive: answer at once.
                    Some(Ok(Some(candidate))) if pinged(&candidate) && failures == 0 => {
                        let ping = candidate.spec.ping_time.as_ref().map(|p| p.0);
                        if ping != answered {
                            answered = ping;
                            next = Instant::now();
                        }
                    }
                    // Deleted (by someone else): register again at once.
                    Some(Ok(None)) if failures == 0 => next = Instant::now(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(candidate = %self.name, error = %e, "watching the LeaseCandidate"),
                    None => changes = futures_util::stream::pending().boxed(),
                },
            }
        }
        let params = DeleteParams::default();
        let delete = self.api.delete(&self.name, &params);
        match tokio::time::timeout(Duration::from_secs(5), delete).await {
            Ok(Ok(_)) => tracing::info!(candidate = %self.name, "LeaseCandidate deleted"),
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => {}
            Ok(Err(e)) => {
                tracing::warn!(candidate = %self.name, error = %super::explain(&e), "deleting the LeaseCandidate")
            }
            Err(_) => {
                tracing::warn!(candidate = %self.name, "deleting the LeaseCandidate: no answer")
            }
        }
    }

    /// Creates the object, or replaces it whole with a fresh `renewTime` (no earlier than the
    /// last ping, so that the controller counts the answer even if our clock lags its own).
    async fn register(&self) -> Result<(), kube::Error> {
        #[allow(clippy::disallowed_methods)] // renewTime is a wall-clock stamp
        let now = jiff::Timestamp::now();
        let mut candidate = LeaseCandidate {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..Default::default()
            },
            spec: LeaseCandidateSpec {
                lease_name: self.lease_name.clone(),
                binary_version: self.versions.binary_version.clone(),
                emulation_version: self.versions.emulation_version.clone(),
                strategy: self.versions.strategy.clone(),
                renew_time: Some(MicroTime(now)),
                ping_time: None,
            },
        };
        match self.api.get_opt(&self.name).await? {
            None => {
                self.api.create(&PostParams::default(), &candidate).await?;
            }
            // `leaseName` cannot change: a candidate that moved to another Lease starts over.
            Some(current) if current.spec.lease_name != self.lease_name => {
                self.api
                    .delete(&self.name, &DeleteParams::default())
                    .await?;
                self.api.create(&PostParams::default(), &candidate).await?;
            }
            Some(current) => {
                candidate.metadata.resource_version = current.metadata.resource_version;
                if let Some(ping) = &current.spec.ping_time {
                    candidate.spec.renew_time = Some(MicroTime(now.max(ping.0)));
                }
                candidate.spec.ping_time = current.spec.ping_time;
                self.api
                    .replace(&self.name, &PostParams::default(), &candidate)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Whether the controller pinged after our last renewal.
fn pinged(candidate: &LeaseCandidate) -> bool {
    match (&candidate.spec.ping_time, &candidate.spec.renew_time) {
        (Some(ping), Some(renew)) => ping.0 > renew.0,
        (Some(_), None) => true,
        (None, _) => false,
    }
}
