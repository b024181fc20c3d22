//! Kubernetes locks over kube-rs (feature `kube`).
//!
//! * [`LeaseLock`]: a `coordination.k8s.io/v1` Lease, the lock client-go uses today.
//! * [`EndpointsLock`] and [`ConfigMapLock`]: the record as JSON in the annotation
//!   [`ANNOTATION_KEY`] of a core/v1 object, as the seed package
//!   and client-go before 1.24 did.
//! * [`MultiLock`]: a primary and a secondary lock kept in step, for migrating between them.
//!
//! Every write is a `PUT` carrying `metadata.resourceVersion` (a compare-and-swap: 409 when
//! someone else wrote first) or a `POST` that fails when the object exists. An object whose
//! record cannot be decoded is reported as [`LockErrorKind::InvalidRecord`] and never written.
//! The lock's labels are merged into the object's on every write, keeping everyone else's, as
//! client-go's `NewWithLabels` does.
//!
//! `Api` calls carry no timeout of their own here: the driver gives every operation the
//! elector's deadline.

mod candidate;
pub mod members;
mod multi;

pub use candidate::{
    CandidateVersions, LeaseCandidateRegistration, OLDEST_EMULATION_VERSION, RENEW_EVERY,
};
pub use members::MemberLeases;
pub use multi::MultiLock;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Mutex, MutexGuard, PoisonError};

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::lock::{Lock, LockError, LockErrorKind, Sighting};
use crate::record::{
    ANNOTATION_KEY, Identity, LeaderElectionRecord, MAX_INT32, RecordError, Version, Versioned,
};
use crate::time::Timestamp;

/// A Lease lock (`coordination.k8s.io/v1`).
pub type LeaseLock = ObjectLock<Lease>;
/// An Endpoints annotation lock (core/v1).
pub type EndpointsLock = ObjectLock<Endpoints>;
/// A ConfigMap annotation lock (core/v1).
pub type ConfigMapLock = ObjectLock<ConfigMap>;

/// A Kubernetes object that can hold a leader-election record.
pub trait LockObject:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Default
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The record this object holds.
    ///
    /// # Errors
    /// A [`RecordError`] naming the field that cannot be decoded.
    fn record(&self) -> Result<LeaderElectionRecord, RecordError>;

    /// Stores `record` in the object, leaving everything else as it is.
    fn set_record(&mut self, record: &LeaderElectionRecord);

    /// Which field makes `raw` (the object as JSON) impossible to decode as `Self`: the typed
    /// decoder only says where in the text it stopped.
    fn diagnose(raw: &serde_json::Value) -> Option<RecordError>;

    /// The finest step of time the object stores in the record's times.
    const TIME_PRECISION: std::time::Duration;
}

impl LockObject for Lease {
    /// `MicroTime`.
    const TIME_PRECISION: std::time::Duration = std::time::Duration::from_micros(1);

    /// A Lease without a spec holds the empty record, as in client-go (whose spec is a value).
    fn record(&self) -> Result<LeaderElectionRecord, RecordError> {
        match &self.spec {
            Some(spec) => lease_spec_to_record(spec),
            None => Ok(LeaderElectionRecord::default()),
        }
    }

    fn set_record(&mut self, record: &LeaderElectionRecord) {
        self.spec = Some(record_to_lease_spec(record));
    }

    fn diagnose(raw: &serde_json::Value) -> Option<RecordError> {
        use serde_json::Value;
        let spec = match raw.get("spec") {
            None | Some(Value::Null) => return None,
            Some(Value::Object(spec)) => spec,
            Some(_) => return Some(RecordError::new("spec", "expected an object")),
        };
        let field = |name: &str| spec.get(name).filter(|v| !v.is_null());
        for name in ["holderIdentity", "strategy", "preferredHolder"] {
            if field(name).is_some_and(|v| !v.is_string()) {
                return Some(RecordError::new(spec_field(name), "expected a string"));
            }
        }
        for name in ["leaseDurationSeconds", "leaseTransitions"] {
            if let Some(v) = field(name)
                && v.as_i64().and_then(|n| i32::try_from(n).ok()).is_none()
            {
                return Some(RecordError::new(
                    spec_field(name),
                    format!("expected an int32, got {v}"),
                ));
            }
        }
        for name in ["acquireTime", "renewTime"] {
            if let Some(v) = field(name) {
                let parsed = v.as_str().map(Timestamp::parse_rfc3339);
                match parsed {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Some(RecordError::new(spec_field(name), e.to_string())),
                    None => {
                        return Some(RecordError::new(spec_field(name), "expected a time string"));
                    }
                }
            }
        }
        None
    }
}

fn spec_field(name: &str) -> &'static str {
    match name {
        "holderIdentity" => "spec.holderIdentity",
        "strategy" => "spec.strategy",
        "preferredHolder" => "spec.preferredHolder",
        "leaseDurationSeconds" => "spec.leaseDurationSeconds",
        "leaseTransitions" => "spec.leaseTransitions",
        "acquireTime" => "spec.acquireTime",
        _ => "spec.renewTime",
    }
}

/// The annotation locks: annotations must be a map of strings.
fn diagnose_annotations(raw: &serde_json::Value) -> Option<RecordError> {
    match raw.pointer("/metadata/annotations") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(map)) => map
            .values()
            .any(|v| !v.is_string())
            .then(|| RecordError::new("metadata.annotations", "expected string values")),
        Some(_) => Some(RecordError::new(
            "metadata.annotations",
            "expected an object",
        )),
    }
}

/// The annotation locks (Endpoints, ConfigMap) keep the record as JSON in [`ANNOTATION_KEY`].
macro_rules! annotation_lock_object {
    ($($kind:ty),*) => {$(
        impl LockObject for $kind {
            /// The annotation's JSON holds `metav1.Time`: whole seconds.
            const TIME_PRECISION: std::time::Duration = std::time::Duration::from_secs(1);

            fn record(&self) -> Result<LeaderElectionRecord, RecordError> {
                annotation_record(self.annotations())
            }

            fn set_record(&mut self, record: &LeaderElectionRecord) {
                self.annotations_mut()
                    .insert(ANNOTATION_KEY.to_string(), record.to_json());
            }

            fn diagnose(raw: &serde_json::Value) -> Option<RecordError> {
                diagnose_annotations(raw)
            }
        }
    )*};
}

annotation_lock_object!(Endpoints, ConfigMap);

/// The annotation locks: a missing annotation is the empty record (client-go), anything else
/// must decode.
fn annotation_record(
    annotations: &BTreeMap<String, String>,
) -> Result<LeaderElectionRecord, RecordError> {
    match annotations.get(ANNOTATION_KEY) {
        None => Ok(LeaderElectionRecord::default()),
        Some(json) => LeaderElectionRecord::from_json(json),
    }
}

/// Converts a Lease spec to a record (client-go's `LeaseSpecToLeaderElectionRecord`), checking
/// what client-go does not: negative durations or transitions and times outside years
/// 0000-9999 are errors naming the field.
///
/// # Errors
/// A [`RecordError`] naming the `spec.*` field at fault.
pub fn lease_spec_to_record(spec: &LeaseSpec) -> Result<LeaderElectionRecord, RecordError> {
    let non_negative = |field: &'static str, v: Option<i32>| -> Result<u32, RecordError> {
        match v {
            None => Ok(0),
            Some(v) => {
                u32::try_from(v).map_err(|_| RecordError::new(field, format!("{v} is negative")))
            }
        }
    };
    let time =
        |field: &'static str, t: &Option<MicroTime>| -> Result<Option<Timestamp>, RecordError> {
            t.as_ref()
                .map(|t| {
                    Timestamp::from_unix_micros(t.0.as_microsecond())
                        .map_err(|e| RecordError::new(field, e.to_string()))
                })
                .transpose()
        };
    let identity = |s: &Option<String>| s.as_deref().and_then(|s| Identity::new(s).ok());
    Ok(LeaderElectionRecord {
        holder: identity(&spec.holder_identity),
        lease_duration_seconds: non_negative(
            "spec.leaseDurationSeconds",
            spec.lease_duration_seconds,
        )?,
        acquire_time: time("spec.acquireTime", &spec.acquire_time)?,
        renew_time: time("spec.renewTime", &spec.renew_time)?,
        leader_transitions: non_negative("spec.leaseTransitions", spec.lease_transitions)?,
        strategy: spec.strategy.clone().unwrap_or_default(),
        preferred_holder: identity(&spec.preferred_holder),
    })
}

/// Converts a record to a Lease spec as client-go's `LeaderElectionRecordToLeaseSpec` does:
/// holder (even empty), duration, times and transitions always; strategy and preferred holder
/// only when set. Values beyond `int32` (which decoding never produces) saturate.
pub fn record_to_lease_spec(record: &LeaderElectionRecord) -> LeaseSpec {
    let int32 = |v: u32| i32::try_from(v.min(MAX_INT32)).unwrap_or(i32::MAX);
    let micro = |t: Option<Timestamp>| {
        t.and_then(|t| jiff::Timestamp::from_microsecond(t.unix_micros()).ok())
            .map(MicroTime)
    };
    LeaseSpec {
        holder_identity: Some(
            record
                .holder
                .as_ref()
                .map_or(String::new(), |h| h.as_str().to_string()),
        ),
        lease_duration_seconds: Some(int32(record.lease_duration_seconds)),
        acquire_time: micro(record.acquire_time),
        renew_time: micro(record.renew_time),
        lease_transitions: Some(int32(record.leader_transitions)),
        strategy: (!record.strategy.is_empty()).then(|| record.strategy.clone()),
        preferred_holder: record
            .preferred_holder
            .as_ref()
            .map(|h| h.as_str().to_string()),
    }
}

/// A lock kept in one namespaced Kubernetes object of kind `K`.
pub struct ObjectLock<K: LockObject> {
    api: Api<K>,
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    /// The object as last read or written: `update` replaces it whole, so labels, annotations
    /// and owner references others put there survive.
    cached: Mutex<Option<K>>,
    events: Option<(Recorder, Identity)>,
}

impl<K: LockObject> ObjectLock<K> {
    /// The lock `namespace/name`, reached through `client`.
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        ObjectLock {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            labels: BTreeMap::new(),
            cached: Mutex::new(None),
            events: None,
        }
    }

    /// The lock's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The lock object's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client the lock talks through.
    pub fn client(&self) -> Client {
        self.api.clone().into_client()
    }

    /// Labels to put on the object: set on create, merged on every write (other keys kept).
    pub fn with_labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.labels = labels;
        self
    }

    /// Records "`<identity>` became leader" / "stopped leading" Events (reason `LeaderElection`)
    /// on the lock object, reported as `reporter`.
    pub fn with_events(mut self, client: Client, reporter: Reporter, identity: Identity) -> Self {
        self.events = Some((Recorder::new(client, reporter), identity));
        self
    }

    fn cache(&self) -> MutexGuard<'_, Option<K>> {
        // The cache is only ever replaced whole: a poisoned lock still holds a valid value.
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sighting(&self, object: &K) -> Result<Versioned<LeaderElectionRecord>, LockError> {
        let version = object.resource_version().ok_or_else(|| {
            LockError::new(
                LockErrorKind::InvalidRecord,
                format!("{} has no metadata.resourceVersion", self.describe()),
            )
        })?;
        let record = object.record().map_err(|e| {
            LockError::new(
                LockErrorKind::InvalidRecord,
                format!("{} holds an unreadable record: {e}", self.describe()),
            )
        })?;
        Ok(Versioned {
            version: Version::new(version),
            value: record,
        })
    }

    fn merge_labels(&self, object: &mut K) {
        if !self.labels.is_empty() {
            let labels = object.labels_mut();
            for (k, v) in &self.labels {
                labels.insert(k.clone(), v.clone());
            }
        }
    }

    fn written(&self, object: K) -> Result<Version, LockError> {
        let version = object.resource_version().ok_or_else(|| {
            LockError::new(
                LockErrorKind::Other,
                format!(
                    "{}: the server returned no resourceVersion",
                    self.describe()
                ),
            )
        })?;
        *self.cache() = Some(object);
        Ok(Version::new(version))
    }
}

/// Whether `name` is a valid name for most Kubernetes objects (a DNS subdomain, RFC 1123):
/// at most 253 lowercase letters, digits, `-` and `.`, starting and ending with a letter or
/// digit.
pub fn is_object_name(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    // Dot-separated labels, each starting and ending with a letter or digit (so no empty
    // label: `a..b` and `a.-b` are refused, as the API server refuses them).
    let label = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| alnum(c) || c == '-')
            && l.starts_with(alnum)
            && l.ends_with(alnum)
    };
    name.len() <= 253 && name.split('.').all(label)
}

/// Whether `name` is a valid namespace name (a DNS label, RFC 1123): at most 63 lowercase
/// letters, digits and `-`, starting and ending with a letter or digit.
pub fn is_namespace_name(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && is_object_name(name)
}

impl<K: LockObject> ObjectLock<K> {
    /// An error unless the namespace and the name are valid: an invalid name is never sent
    /// (kube-rs would paste it into the URL, where `x?dryRun=All` would name `x`).
    fn check_names(&self) -> Result<(), LockError> {
        if !is_namespace_name(&self.namespace) {
            return Err(LockError::new(
                LockErrorKind::Other,
                format!("{:?} is not a valid namespace name", self.namespace),
            ));
        }
        if !is_object_name(&self.name) {
            return Err(LockError::new(
                LockErrorKind::Other,
                format!(
                    "{:?} is not a valid object name (lowercase letters, digits, '-' and '.')",
                    self.name
                ),
            ));
        }
        Ok(())
    }
}

impl<K: LockObject> Lock for ObjectLock<K> {
    async fn get(&self) -> Result<Sighting, LockError> {
        self.check_names()?;
        let object = match self.api.get_opt(&self.name).await {
            Ok(object) => object,
            Err(kube::Error::SerdeError(e)) => return Err(self.explain_undecodable(&e).await),
            Err(e) => return Err(classify(&self.describe(), e)),
        };
        let Some(object) = object else {
            return Ok(None);
        };
        let seen = self.sighting(&object)?;
        *self.cache() = Some(object);
        Ok(Some(seen))
    }

    async fn create(&self, record: LeaderElectionRecord) -> Result<Version, LockError> {
        self.check_names()?;
        let mut object = K::default();
        object.meta_mut().name = Some(self.name.clone());
        object.meta_mut().namespace = Some(self.namespace.clone());
        self.merge_labels(&mut object);
        object.set_record(&record);
        let created = self
            .api
            .create(&PostParams::default(), &object)
            .await
            .map_err(|e| classify(&self.describe(), e))?;
        self.written(created)
    }

    async fn update(
        &self,
        expected: Version,
        record: LeaderElectionRecord,
    ) -> Result<Version, LockError> {
        self.check_names()?;
        let cached = self
            .cache()
            .clone()
            .filter(|o| o.resource_version().as_deref() == Some(expected.as_str()));
        let mut object = match cached {
            Some(object) => object,
            // We know the version (say, from a watch) but not the object: read it, and refuse
            // at once if it moved on, as the server would.
            None => {
                let current = self
                    .api
                    .get_opt(&self.name)
                    .await
                    .map_err(|e| classify(&self.describe(), e))?
                    .ok_or_else(|| {
                        LockError::new(
                            LockErrorKind::NotFound,
                            format!("{} is gone", self.describe()),
                        )
                    })?;
                if current.resource_version().as_deref() != Some(expected.as_str()) {
                    return Err(LockError::new(
                        LockErrorKind::Conflict,
                        format!("{} is no longer at version {expected}", self.describe()),
                    ));
                }
                current
            }
        };
        object.set_record(&record);
        self.merge_labels(&mut object);
        object.meta_mut().resource_version = Some(expected.as_str().to_string());
        let replaced = self
            .api
            .replace(&self.name, &PostParams::default(), &object)
            .await
            .map_err(|e| classify(&self.describe(), e))?;
        self.written(replaced)
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn time_precision(&self) -> std::time::Duration {
        K::TIME_PRECISION
    }

    fn watch(&self) -> Option<BoxStream<'static, Result<Sighting, LockError>>> {
        // With invalid names every read fails and says why; nothing is watched.
        self.check_names().ok()?;
        let describe = self.describe();
        // With backoff, a broken watch is retried after a pause, not in a tight loop.
        let stream = kube::runtime::watcher::watch_object(self.api.clone(), &self.name)
            .default_backoff()
            .map(move |event| match event {
                Ok(None) => Ok(None),
                Ok(Some(object)) => {
                    let version = object.resource_version().ok_or_else(|| {
                        LockError::new(
                            LockErrorKind::InvalidRecord,
                            format!("{describe} has no metadata.resourceVersion"),
                        )
                    })?;
                    let record = object.record().map_err(|e| {
                        LockError::new(
                            LockErrorKind::InvalidRecord,
                            format!("{describe} holds an unreadable record: {e}"),
                        )
                    })?;
                    Ok(Some(Versioned {
                        version: Version::new(version),
                        value: record,
                    }))
                }
                Err(e) => Err(LockError::new(
                    LockErrorKind::Other,
                    format!("watching {describe}: {e}"),
                )),
            });
        Some(stream.boxed())
    }

    async fn record_event(&self, message: &str) {
        let Some((recorder, identity)) = &self.events else {
            return;
        };
        let reference = self
            .cache()
            .as_ref()
            .map_or_else(|| self.reference_by_name(), |o| o.object_ref(&()));
        let event = KubeEvent {
            type_: EventType::Normal,
            reason: "LeaderElection".into(),
            note: Some(format!("{identity} {message}")),
            action: "LeaderElection".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(lock = %self.describe(), error = %e, "could not record a leader election event");
        }
    }
}

impl<K: LockObject> ObjectLock<K> {
    /// The object exists but does not decode: fetch it as plain JSON to name the field.
    async fn explain_undecodable(&self, e: &serde_json::Error) -> LockError {
        let request = kube::core::Request::new(K::url_path(&(), Some(&self.namespace)))
            .get(&self.name, &kube::api::GetParams::default());
        let raw = match request {
            Ok(request) => self
                .api
                .clone()
                .into_client()
                .request_text(request)
                .await
                .ok(),
            Err(_) => None,
        };
        let field = raw
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|value| K::diagnose(&value));
        let detail = field.map_or_else(|| capped(e.to_string()), |f| capped(f.to_string()));
        LockError::new(
            LockErrorKind::InvalidRecord,
            format!("{} holds an unreadable record: {detail}", self.describe()),
        )
    }

    fn reference_by_name(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: Some(self.name.clone()),
            namespace: Some(self.namespace.clone()),
            ..Default::default()
        }
    }
}

/// What [`ObjectLock::preflight`] found wrong: a misconfiguration to fix before contending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PreflightError {
    /// The lock's namespace does not exist.
    #[error("namespace {namespace:?} does not exist: create it, or point the lock elsewhere")]
    NamespaceMissing {
        /// The namespace.
        namespace: String,
    },
    /// RBAC does not let this identity use the lock.
    #[error(
        "this identity may not {} {resource} in namespace {namespace:?}; bind it to a Role like this one:\n{role}",
        verbs.join(", ")
    )]
    Forbidden {
        /// The namespace.
        namespace: String,
        /// The resource, e.g. `leases.coordination.k8s.io`.
        resource: String,
        /// The verbs refused.
        verbs: Vec<String>,
        /// A Role that grants what the lock needs, as YAML.
        role: String,
    },
    /// The API server refused the lock object itself (an invalid name, an admission webhook,
    /// a quota).
    #[error("the API server refuses the lock object: {0}")]
    Refused(String),
    /// The API server does not accept this client's credentials (401).
    #[error("the API server does not accept this client's credentials: {0}")]
    Unauthorized(String),
    /// The API server could not be asked, or failed to answer (a 5xx, a timeout).
    #[error("the preflight check could not ask the API server: {0}")]
    Unreachable(String),
}

impl PreflightError {
    /// Whether the API server could not be asked at all: worth waiting for, unlike a
    /// misconfiguration.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, PreflightError::Unreachable(_))
    }

    pub(crate) fn no_answer() -> Self {
        PreflightError::Unreachable(format!("no answer within {}s", PREFLIGHT_TIMEOUT.as_secs()))
    }

    /// The preflight error for a failed request: a refusal that will not heal, or an outage.
    pub(crate) fn of_request(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) if status.code == 401 => {
                PreflightError::Unauthorized(explain(&kube::Error::Api(status)))
            }
            kube::Error::Api(status) if (400..500).contains(&status.code) && status.code != 429 => {
                PreflightError::Refused(status.message)
            }
            e => PreflightError::Unreachable(explain(&e)),
        }
    }
}

impl<K: LockObject> ObjectLock<K> {
    /// Checks, before contending, what would otherwise surface only as a stream of failed
    /// operations: that this identity may get, create and update the lock (and list and watch
    /// it, when `observation` is [`Observation::Watch`](crate::Observation::Watch)) in its namespace (SelfSubjectAccessReviews, which every
    /// authenticated user may make; they name the lock, so a Role limited to it by
    /// `resourceNames` passes), and that the namespace exists (a dry-run create of the lock,
    /// which needs no other permission and writes nothing).
    ///
    /// # Errors
    /// [`PreflightError`], with a Role to apply when permissions are missing.
    pub async fn preflight(&self, observation: crate::Observation) -> Result<(), PreflightError> {
        self.check_names()
            .map_err(|e| PreflightError::Refused(e.message))?;
        let verbs: &[&str] = if observation == crate::Observation::Watch {
            &["get", "list", "watch", "create", "update"]
        } else {
            &["get", "create", "update"]
        };
        check_access(
            self.api.clone().into_client(),
            &self.namespace,
            &K::group(&()),
            &K::plural(&()),
            Some(&self.name),
            verbs,
        )
        .await?;
        let mut probe = K::default();
        probe.meta_mut().name = Some(self.name.clone());
        probe.meta_mut().namespace = Some(self.namespace.clone());
        probe.set_record(&LeaderElectionRecord {
            lease_duration_seconds: 1,
            ..Default::default()
        });
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        match tokio::time::timeout(PREFLIGHT_TIMEOUT, self.api.create(&dry_run, &probe)).await {
            Err(_) => Err(PreflightError::no_answer()),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(kube::Error::Api(status))) if status.code == 409 => Ok(()),
            Ok(Err(kube::Error::Api(status))) if status.code == 404 => {
                Err(PreflightError::NamespaceMissing {
                    namespace: self.namespace.clone(),
                })
            }
            Ok(Err(e)) => Err(PreflightError::of_request(e)),
        }
    }
}

/// Asks the API server whether this client may use each of `verbs` on `plural` (of API group
/// `group`, `""` for the core group) in `namespace`, with SelfSubjectAccessReviews (which every
/// authenticated user may make). A review names `name` for every verb but `create` (which
/// cannot be limited to a name), so a Role limited by `resourceNames` passes.
///
/// # Errors
/// [`PreflightError::Forbidden`] listing the refused verbs, with a Role that grants `verbs`;
/// [`PreflightError::Unauthorized`] or [`PreflightError::Unreachable`] when the server cannot
/// be asked.
pub async fn check_access(
    client: Client,
    namespace: &str,
    group: &str,
    plural: &str,
    name: Option<&str>,
    verbs: &[&str],
) -> Result<(), PreflightError> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client);
    let mut refused = Vec::new();
    for verb in verbs {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_string()),
                    verb: Some((*verb).to_string()),
                    group: Some(group.to_string()),
                    resource: Some(plural.to_string()),
                    name: name.filter(|_| *verb != "create").map(str::to_string),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = bounded(reviews.create(&PostParams::default(), &review)).await?;
        if !answer.status.is_some_and(|s| s.allowed) {
            refused.push((*verb).to_string());
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    let resource = if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    };
    Err(PreflightError::Forbidden {
        namespace: namespace.to_string(),
        resource,
        verbs: refused,
        role: role_yaml(namespace, group, plural, verbs),
    })
}

/// How long one preflight request may take.
pub(crate) const PREFLIGHT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A preflight request, bounded by [`PREFLIGHT_TIMEOUT`].
async fn bounded<T>(
    request: impl std::future::Future<Output = kube::Result<T>>,
) -> Result<T, PreflightError> {
    match tokio::time::timeout(PREFLIGHT_TIMEOUT, request).await {
        Ok(answer) => answer.map_err(PreflightError::of_request),
        Err(_) => Err(PreflightError::no_answer()),
    }
}

/// A Role granting `verbs` on `group`/`plural` in `namespace`.
pub(crate) fn role_yaml(namespace: &str, group: &str, plural: &str, verbs: &[&str]) -> String {
    let verbs = verbs
        .iter()
        .map(|v| format!("\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: leader-election\n  namespace: {namespace}\nrules:\n  - apiGroups: [\"{group}\"]\n    resources: [\"{plural}\"]\n    verbs: [{verbs}]\n"
    )
}

/// `text`, cut to a length a log line can carry (a decoding error may quote a whole object).
pub(crate) fn capped(text: String) -> String {
    const MAX: usize = 1024;
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes)", &text[..end], text.len() - end)
}

/// A kube error as a person reads it: for an API error the code, the reason and the server's
/// message (kube-rs's own text repeats the whole `Status` as debug output).
pub(crate) fn explain(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                String::new()
            } else {
                format!(" {}", status.reason)
            };
            let message = if status.message.is_empty() {
                "no message"
            } else {
                status.message.as_str()
            };
            format!("{}{reason}: {message}", status.code)
        }
        e => e.to_string(),
    }
}

/// Maps a kube error onto the classes the elector acts on, keeping the server's message.
pub(crate) fn classify(what: &str, e: kube::Error) -> LockError {
    let kind = match &e {
        kube::Error::Api(status) => match status.code {
            404 => LockErrorKind::NotFound,
            409 if status.reason == "AlreadyExists" => LockErrorKind::AlreadyExists,
            409 => LockErrorKind::Conflict,
            401 | 403 => LockErrorKind::Unauthorized,
            408 | 504 => LockErrorKind::Timeout,
            429 | 500..=599 => LockErrorKind::Unavailable,
            _ => LockErrorKind::Other,
        },
        kube::Error::SerdeError(_) => LockErrorKind::InvalidRecord,
        _ => LockErrorKind::Other,
    };
    let retry_after = match &e {
        kube::Error::Api(status) => status
            .details
            .as_ref()
            .map(|d| d.retry_after_seconds)
            .filter(|&s| s > 0),
        _ => None,
    };
    let error = LockError::new(kind, format!("{what}: {}", capped(explain(&e)))).with_source(e);
    match retry_after {
        Some(secs) => error.with_retry_after(std::time::Duration::from_secs(u64::from(secs))),
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn full_record() -> LeaderElectionRecord {
        LeaderElectionRecord {
            holder: Identity::new("foo").ok(),
            lease_duration_seconds: 10,
            acquire_time: Some(ts("2024-01-02T03:04:05.123456Z")),
            renew_time: Some(ts("2024-01-02T03:04:06.654321Z")),
            leader_transitions: 1,
            strategy: "strategy".into(),
            preferred_holder: Identity::new("preferred-holder").ok(),
        }
    }

    /// client-go's TestLeaseSpecToLeaderElectionRecordRoundTrip and TestLeaseConversion: all
    /// seven fields survive record -> spec -> record, at microsecond precision.
    #[test]
    fn lease_spec_round_trip() {
        let record = full_record();
        let spec = record_to_lease_spec(&record);
        assert_eq!(spec.holder_identity.as_deref(), Some("foo"));
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(lease_spec_to_record(&spec), Ok(record));
        assert_eq!(
            record_to_lease_spec(&lease_spec_to_record(&spec).expect("valid")),
            spec
        );
    }

    #[test]
    fn empty_fields_follow_client_go() {
        let spec = record_to_lease_spec(&LeaderElectionRecord::default());
        assert_eq!(
            spec.holder_identity.as_deref(),
            Some(""),
            "holder always written"
        );
        assert_eq!(spec.lease_duration_seconds, Some(0));
        assert_eq!(spec.strategy, None, "only when set");
        assert_eq!(spec.preferred_holder, None);
        assert_eq!(spec.acquire_time, None);
        assert_eq!(
            lease_spec_to_record(&LeaseSpec::default()),
            Ok(LeaderElectionRecord::default())
        );
        assert_eq!(
            Lease::default().record(),
            Ok(LeaderElectionRecord::default())
        );
    }

    #[test]
    fn hostile_specs_are_errors_naming_the_field() {
        let negative = LeaseSpec {
            lease_duration_seconds: Some(-5),
            ..Default::default()
        };
        assert_eq!(
            lease_spec_to_record(&negative).map_err(|e| e.field),
            Err("spec.leaseDurationSeconds")
        );
        let transitions = LeaseSpec {
            lease_transitions: Some(i32::MIN),
            ..Default::default()
        };
        assert_eq!(
            lease_spec_to_record(&transitions).map_err(|e| e.field),
            Err("spec.leaseTransitions")
        );
        let ancient = LeaseSpec {
            renew_time: Some(MicroTime(
                jiff::Timestamp::from_second(-100_000_000_000).expect("in jiff's range"),
            )),
            ..Default::default()
        };
        assert_eq!(
            lease_spec_to_record(&ancient).map_err(|e| e.field),
            Err("spec.renewTime")
        );
    }

    #[test]
    fn annotation_records() {
        let mut cm = ConfigMap::default();
        assert_eq!(cm.record(), Ok(LeaderElectionRecord::default()));
        cm.set_record(&full_record());
        let json = cm
            .annotations()
            .get(ANNOTATION_KEY)
            .cloned()
            .unwrap_or_default();
        assert!(
            json.contains(r#""acquireTime":"2024-01-02T03:04:05Z""#),
            "{json}"
        );
        let back = cm.record().expect("decodes");
        assert_eq!(
            back.acquire_time,
            Some(ts("2024-01-02T03:04:05Z")),
            "whole seconds"
        );
        cm.annotations_mut()
            .insert(ANNOTATION_KEY.into(), "{not json".into());
        assert_eq!(cm.record().map_err(|e| e.field), Err("record"));
        let mut ep = Endpoints::default();
        ep.annotations_mut().insert(
            ANNOTATION_KEY.into(),
            r#"{"leaseDurationSeconds":-1}"#.into(),
        );
        assert_eq!(
            ep.record().map_err(|e| e.field),
            Err("leaseDurationSeconds")
        );
    }
}
