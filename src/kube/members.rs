//! The member Leases of a shard group on a Kubernetes API server: [`MemberLeases`], the
//! [`GroupLock`] of one member (see [`crate::shards`] for the protocol).
//!
//! Every member of group `G` holds one `coordination.k8s.io/v1` Lease, labelled
//! [`GROUP_LABEL`]`=G`, whose spec is the member's election record and whose
//! [`MEMBER_ANNOTATION`] holds its claims. While the record names a holder the Lease carries
//! the [`MEMBER_FINALIZER`], so a deletion asked for by anyone leaves it terminating (still
//! visible, still claiming) until the member's release removes the finalizer.
//!
//! What each request is on the wire:
//!
//! * `Get`: a GET of the member's own Lease.
//! * `Create`: a POST (409 `AlreadyExists` when it exists).
//! * `Update`: a PUT carrying `metadata.resourceVersion` (409 `Conflict` when someone wrote
//!   first) of the object as last read or written, with the spec, the annotation, the group
//!   label and our finalizer set; every other label, annotation and finalizer is kept. When
//!   the Lease is terminating and the PUT removes its last finalizer, the API server deletes
//!   it instead of writing it, and answers 200 with the object as sent (see
//!   [`GroupLock::execute`] on [`MemberLeases`]).
//! * `List`: a LIST of the group's label with `resourceVersion` unset: a consistent read.
//! * The watch: kube-rs's `watcher` on the same selector, relisting with consistent lists.
//!
//! Lists and the watch decode each Lease on its own: a Lease whose spec cannot be read is
//! never dropped (it might claim shards) but reported as held by an unreadable holder with no
//! claims annotation, which the member treats as claiming every shard until it stays
//! unchanged for a lease duration.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Client, Resource};

use super::{
    LockObject, PREFLIGHT_TIMEOUT, PreflightError, capped, check_access, classify,
    is_namespace_name, is_object_name, lease_spec_to_record, record_to_lease_spec, role_yaml,
};
use crate::lock::{LockError, LockErrorKind};
use crate::record::{Identity, LeaderElectionRecord, Version};
use crate::shards::claims::{GROUP_LABEL, MEMBER_ANNOTATION, MEMBER_FINALIZER};
use crate::shards::{
    GroupChange, GroupLock, GroupRequest, GroupResponse, GroupResult, MemberRecord, MemberSighting,
};

/// One member's view of its group's Leases on a Kubernetes API server: its own Lease
/// (`namespace/lease_name`) and every Lease labelled with the group in the namespace.
///
/// Names are checked before any request: with an invalid namespace, Lease name or group
/// every request fails with a [`LockErrorKind::Other`] saying why, and
/// [`watch`](GroupLock::watch) returns `None`.
pub struct MemberLeases {
    /// Every request goes through untyped objects: a list or watch event decodes Lease by
    /// Lease, so one unreadable Lease cannot hide the others (or fail the whole list).
    api: Api<DynamicObject>,
    resource: ApiResource,
    namespace: String,
    group: String,
    lease_name: String,
    labels: BTreeMap<String, String>,
    /// The own Lease as last read or written: `Update` replaces it whole, so labels,
    /// annotations and finalizers others put there survive.
    cached: Mutex<Option<DynamicObject>>,
}

impl std::fmt::Debug for MemberLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberLeases")
            .field("namespace", &self.namespace)
            .field("group", &self.group)
            .field("lease_name", &self.lease_name)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl MemberLeases {
    /// The member of `group` whose Lease is `namespace/lease_name`, reached through `client`.
    pub fn new(client: Client, namespace: &str, group: &str, lease_name: &str) -> Self {
        let resource = ApiResource::erase::<Lease>(&());
        MemberLeases {
            api: Api::namespaced_with(client, namespace, &resource),
            resource,
            namespace: namespace.to_string(),
            group: group.to_string(),
            lease_name: lease_name.to_string(),
            labels: BTreeMap::new(),
            cached: Mutex::new(None),
        }
    }

    /// Extra labels to put on the member's Lease: set on create, merged on every write (other
    /// keys kept). The [`GROUP_LABEL`] is always set to the group, whatever these say.
    pub fn with_labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.labels = labels;
        self
    }

    /// The namespace of the group's Leases.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The group (the value of the [`GROUP_LABEL`]).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The name of this member's Lease.
    pub fn lease_name(&self) -> &str {
        &self.lease_name
    }

    /// The extra labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// The label selector of the group: `leasehold.dev/shard-group=<group>`.
    pub fn selector(&self) -> String {
        format!("{GROUP_LABEL}={}", self.group)
    }

    /// The client the Leases are reached through.
    pub fn client(&self) -> Client {
        self.api.clone().into_client()
    }

    fn cache(&self) -> MutexGuard<'_, Option<DynamicObject>> {
        // The cache is only ever replaced whole: a poisoned lock still holds a valid value.
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn describe_lease(&self) -> String {
        format!("{}/{}", self.namespace, self.lease_name)
    }

    /// An error unless the namespace, the Lease name and the group are valid: an invalid name
    /// is never sent (kube-rs would paste it into the URL or the selector).
    fn check_names(&self) -> Result<(), LockError> {
        let invalid = |what: String| Err(LockError::new(LockErrorKind::Other, what));
        if !is_namespace_name(&self.namespace) {
            return invalid(format!(
                "{:?} is not a valid namespace name",
                self.namespace
            ));
        }
        if !is_object_name(&self.lease_name) {
            return invalid(format!(
                "{:?} is not a valid Lease name (lowercase letters, digits, '-' and '.')",
                self.lease_name
            ));
        }
        if !is_group_name(&self.group) {
            return invalid(format!(
                "{:?} is not a valid shard group: it must be a label value (1 to 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit)",
                self.group
            ));
        }
        Ok(())
    }

    async fn get(&self) -> GroupResult {
        let object = self
            .api
            .get_opt(&self.lease_name)
            .await
            .map_err(|e| classify(&self.describe_lease(), e))?;
        let Some(object) = object else {
            return Ok(GroupResponse::Member(None));
        };
        let seen = own_sighting(&object, &self.describe_lease())?;
        *self.cache() = Some(object);
        Ok(GroupResponse::Member(Some(seen)))
    }

    async fn create(&self, record: &MemberRecord) -> GroupResult {
        let object = new_member_object(
            &self.resource,
            &self.namespace,
            &self.lease_name,
            &self.group,
            &self.labels,
            record,
        );
        let created = self
            .api
            .create(&PostParams::default(), &object)
            .await
            .map_err(|e| classify(&self.describe_lease(), e))?;
        self.written(created)
    }

    async fn update(&self, expected: &Version, record: &MemberRecord) -> GroupResult {
        let cached = self
            .cache()
            .clone()
            .filter(|o| o.metadata.resource_version.as_deref() == Some(expected.as_str()));
        let object = match cached {
            Some(object) => object,
            // We know the version (from a list or the watch) but not the object: read it, and
            // refuse at once if it moved on, as the server would.
            None => {
                let current = self
                    .api
                    .get_opt(&self.lease_name)
                    .await
                    .map_err(|e| classify(&self.describe_lease(), e))?
                    .ok_or_else(|| {
                        LockError::new(
                            LockErrorKind::NotFound,
                            format!("{} is gone", self.describe_lease()),
                        )
                    })?;
                if current.metadata.resource_version.as_deref() != Some(expected.as_str()) {
                    return Err(LockError::new(
                        LockErrorKind::Conflict,
                        format!(
                            "{} is no longer at version {expected}",
                            self.describe_lease()
                        ),
                    ));
                }
                // A Lease whose record cannot be read is never overwritten.
                own_sighting(&current, &self.describe_lease())?;
                current
            }
        };
        let object = updated_member_object(object, &self.group, &self.labels, expected, record);
        let replaced = self
            .api
            .replace(&self.lease_name, &PostParams::default(), &object)
            .await
            .map_err(|e| classify(&self.describe_lease(), e))?;
        // When this PUT removed the last finalizer of a terminating Lease, the server deleted
        // the Lease instead of writing it, and answered 200 with the object as sent: its
        // resourceVersion is `expected`. The release is done all the same, and the watch
        // reports the deletion. Nothing is cached then, so a later write with that version
        // reads the Lease first and is answered `NotFound` (a PUT of the cached object would
        // be answered 409: its UID no longer matches anything).
        if replaced.metadata.deletion_timestamp.is_some()
            && replaced
                .metadata
                .finalizers
                .as_ref()
                .is_none_or(Vec::is_empty)
        {
            tracing::debug!(lease = %self.describe_lease(), "the release completed the Lease's deletion");
            let version = self.written(replaced);
            *self.cache() = None;
            return version;
        }
        self.written(replaced)
    }

    async fn list(&self) -> GroupResult {
        // `resourceVersion` unset: a consistent (quorum) read. The API server answers from
        // etcd, or (ConsistentListFromCache, Kubernetes 1.31 and later) from its watch cache
        // only once the cache has caught up with etcd's revision read when the request
        // arrived; either way the answer holds every write committed before it was sent,
        // which is what a fence needs. No limit: one page, one cut.
        let params = ListParams::default().labels(&self.selector());
        let list = self.api.list(&params).await.map_err(|e| {
            classify(
                &format!("listing group {:?} in {}", self.group, self.namespace),
                e,
            )
        })?;
        let cut = list
            .items
            .iter()
            .map(group_sighting)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GroupResponse::Listed(cut))
    }

    fn written(&self, object: DynamicObject) -> GroupResult {
        let version = object.metadata.resource_version.clone().ok_or_else(|| {
            LockError::new(
                LockErrorKind::Other,
                format!(
                    "{}: the server returned no resourceVersion",
                    self.describe_lease()
                ),
            )
        })?;
        *self.cache() = Some(object);
        Ok(GroupResponse::Written(Version::new(version)))
    }

    /// Checks, before joining, what would otherwise surface only as a stream of failed
    /// operations: that this identity may get, create and update its Lease, and list (and
    /// `watch`, when the member will watch the group) Leases in the namespace
    /// (SelfSubjectAccessReviews; get, create and update name the Lease, so a Role limited to
    /// it by `resourceNames` passes for them, but list and watch of a label selector are
    /// namespace-wide and cannot be limited by name), and that the namespace exists (a dry-run
    /// create of the Lease, which writes nothing).
    ///
    /// # Errors
    /// [`PreflightError`], with a Role to apply when permissions are missing (one error naming
    /// every refused verb).
    pub async fn preflight(&self, watch: bool) -> Result<(), PreflightError> {
        self.check_names()
            .map_err(|e| PreflightError::Refused(e.message))?;
        let group = Lease::group(&());
        let plural = Lease::plural(&());
        let client = self.client();
        let wide: &[&str] = if watch { &["list", "watch"] } else { &["list"] };
        let named = check_access(
            client.clone(),
            &self.namespace,
            &group,
            &plural,
            Some(&self.lease_name),
            &["get", "create", "update"],
        )
        .await;
        let wide_answer = check_access(client, &self.namespace, &group, &plural, None, wide).await;
        let mut refused = Vec::new();
        for answer in [named, wide_answer] {
            match answer {
                Ok(()) => {}
                Err(PreflightError::Forbidden { verbs, .. }) => refused.extend(verbs),
                Err(e) => return Err(e),
            }
        }
        if !refused.is_empty() {
            let all: &[&str] = if watch {
                &["get", "list", "watch", "create", "update"]
            } else {
                &["get", "list", "create", "update"]
            };
            let verbs = all
                .iter()
                .filter(|v| refused.iter().any(|r| r == *v))
                .map(|v| (*v).to_string())
                .collect();
            return Err(PreflightError::Forbidden {
                namespace: self.namespace.clone(),
                resource: format!("{plural}.{group}"),
                verbs,
                role: role_yaml(&self.namespace, &group, &plural, all),
            });
        }
        let probe = new_member_object(
            &self.resource,
            &self.namespace,
            &self.lease_name,
            &self.group,
            &self.labels,
            &MemberRecord {
                record: LeaderElectionRecord {
                    lease_duration_seconds: 1,
                    ..Default::default()
                },
                annotation: String::new(),
            },
        );
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

impl GroupLock for MemberLeases {
    /// Carries out `request` (see the [module docs](self) for what each is on the wire).
    ///
    /// An `Update` that removes the last finalizer of a terminating Lease (a release after a
    /// deletion was asked for) deletes it: the API server answers 200 with the object as
    /// sent, whose `resourceVersion` is `expected`, and that is the version returned. No
    /// object has that version any more: a later `Update` with it is answered `NotFound`.
    ///
    /// An `Update` of a Lease someone else deleted meanwhile is answered `Conflict` when this
    /// handle still holds the object (the server checks the UID it carries), `NotFound` when
    /// it must read it first: both are lost races to the elector.
    async fn execute(&self, request: GroupRequest) -> GroupResult {
        self.check_names()?;
        match &request {
            GroupRequest::Get => self.get().await,
            GroupRequest::Create(record) => self.create(record).await,
            GroupRequest::Update { expected, record } => self.update(expected, record).await,
            GroupRequest::List => self.list().await,
        }
    }

    fn watch(&self) -> Option<BoxStream<'static, Result<GroupChange, LockError>>> {
        // With invalid names every request fails and says why; nothing is watched.
        self.check_names().ok()?;
        let what = format!("watching group {:?} in {}", self.group, self.namespace);
        // The initial list, and every relist after the watch broke (410 Gone, say), is a
        // consistent read (`resourceVersion` unset), not `resourceVersion=0` (whatever the
        // API server's cache holds, possibly older than what this member already saw): a
        // relist's snapshot then never goes back in time, and the member's view with it.
        let config = watcher::Config::default()
            .labels(&self.selector())
            .list_semantic(watcher::ListSemantic::MostRecent);
        // With backoff, a broken watch is retried after a pause, not in a tight loop.
        let stream = watcher::watcher(self.api.clone(), config)
            .default_backoff()
            .scan(WatchTranslator::default(), move |t, event| {
                std::future::ready(Some(t.translate(event, &what)))
            })
            .filter_map(std::future::ready);
        Some(stream.boxed())
    }

    fn describe(&self) -> String {
        self.describe_lease()
    }

    fn time_precision(&self) -> std::time::Duration {
        <Lease as LockObject>::TIME_PRECISION
    }
}

/// Whether `group` can be the group's label value: 1 to 63 letters, digits, `-`, `_`, `.`,
/// starting and ending with a letter or digit.
fn is_group_name(group: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !group.is_empty()
        && group.len() <= 63
        && group.starts_with(alnum)
        && group.ends_with(alnum)
        && group
            .chars()
            .all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// The election record in a Lease's spec (`data` is the object's JSON beyond its metadata).
/// A missing or null spec is the empty record (no holder), as for [`LockObject::record`].
///
/// # Errors
/// What makes the spec unreadable, naming the field where possible.
fn record_of(data: &serde_json::Value) -> Result<LeaderElectionRecord, String> {
    let spec = match data.get("spec") {
        None | Some(serde_json::Value::Null) => return Ok(LeaderElectionRecord::default()),
        Some(spec) => spec,
    };
    let typed: LeaseSpec = serde_json::from_value(spec.clone()).map_err(|e| {
        <Lease as LockObject>::diagnose(&serde_json::json!({ "spec": spec }))
            .map_or_else(|| capped(e.to_string()), |f| f.to_string())
    })?;
    lease_spec_to_record(&typed).map_err(|e| e.to_string())
}

/// The record a list or the watch reports for a Lease whose spec cannot be read: held (by a
/// holder no member has), with no claims annotation, so that every member treats it as
/// claiming every shard until it stays unchanged for a lease duration (its own or the
/// member's, the longer; this record's is 0). Dropping it instead could hide a member that
/// still runs shards.
fn unreadable_record(name: &str) -> LeaderElectionRecord {
    LeaderElectionRecord {
        holder: Identity::new(format!("<unreadable lease {name}>")).ok(),
        ..Default::default()
    }
}

/// A Lease of the group as a list or the watch shows it. A spec that cannot be read gives
/// [`unreadable_record`] and no annotation, never an error.
///
/// # Errors
/// [`LockErrorKind::InvalidRecord`] when the object has no name or no `resourceVersion`
/// (no API server sends such a Lease): nothing could tell its versions apart, so the whole
/// answer is refused rather than the Lease dropped.
fn group_sighting(object: &DynamicObject) -> Result<MemberSighting, LockError> {
    let meta = &object.metadata;
    let name = meta.name.clone().ok_or_else(|| {
        LockError::new(
            LockErrorKind::InvalidRecord,
            "a Lease of the group has no metadata.name",
        )
    })?;
    let version = meta.resource_version.clone().ok_or_else(|| {
        LockError::new(
            LockErrorKind::InvalidRecord,
            format!("Lease {name} has no metadata.resourceVersion"),
        )
    })?;
    let (record, annotation) = match record_of(&object.data) {
        Ok(record) => (record, member_annotation(meta)),
        Err(reason) => {
            tracing::debug!(lease = %name, %reason, "a Lease of the group holds an unreadable record: it counts as claiming every shard");
            (unreadable_record(&name), None)
        }
    };
    Ok(MemberSighting {
        name,
        version: Version::new(version),
        record,
        annotation,
        terminating: meta.deletion_timestamp.is_some(),
    })
}

/// The member's own Lease as read.
///
/// # Errors
/// [`LockErrorKind::InvalidRecord`] when it has no `resourceVersion` or its record cannot be
/// read: like every leasehold lock, an unreadable record is reported and never overwritten.
fn own_sighting(object: &DynamicObject, describe: &str) -> Result<MemberSighting, LockError> {
    let meta = &object.metadata;
    let version = meta.resource_version.clone().ok_or_else(|| {
        LockError::new(
            LockErrorKind::InvalidRecord,
            format!("{describe} has no metadata.resourceVersion"),
        )
    })?;
    let record = record_of(&object.data).map_err(|e| {
        LockError::new(
            LockErrorKind::InvalidRecord,
            format!("{describe} holds an unreadable record: {e}"),
        )
    })?;
    Ok(MemberSighting {
        name: meta.name.clone().unwrap_or_default(),
        version: Version::new(version),
        record,
        annotation: member_annotation(meta),
        terminating: meta.deletion_timestamp.is_some(),
    })
}

fn member_annotation(meta: &ObjectMeta) -> Option<String> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(MEMBER_ANNOTATION))
        .cloned()
}

/// Puts what a member write sets into `meta`, keeping everything else: the extra labels and
/// then the group label (which wins), the claims annotation, and the member finalizer added
/// or removed as `record` asks (no other finalizer is touched).
fn stamp(
    meta: &mut ObjectMeta,
    group: &str,
    labels: &BTreeMap<String, String>,
    record: &MemberRecord,
) {
    let all = meta.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in labels {
        all.insert(k.clone(), v.clone());
    }
    all.insert(GROUP_LABEL.to_string(), group.to_string());
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(MEMBER_ANNOTATION.to_string(), record.annotation.clone());
    let mut finalizers = meta.finalizers.take().unwrap_or_default();
    if record.keeps_finalizer() {
        if !finalizers.iter().any(|f| f == MEMBER_FINALIZER) {
            finalizers.push(MEMBER_FINALIZER.to_string());
        }
    } else {
        finalizers.retain(|f| f != MEMBER_FINALIZER);
    }
    meta.finalizers = (!finalizers.is_empty()).then_some(finalizers);
}

fn set_spec(object: &mut DynamicObject, record: &LeaderElectionRecord) {
    let spec = serde_json::to_value(record_to_lease_spec(record))
        .unwrap_or_else(|_| serde_json::Value::Object(serde_json::Map::new()));
    if !object.data.is_object() {
        object.data = serde_json::Value::Object(serde_json::Map::new());
    }
    object.data["spec"] = spec;
}

/// The Lease a member creates.
fn new_member_object(
    resource: &ApiResource,
    namespace: &str,
    name: &str,
    group: &str,
    labels: &BTreeMap<String, String>,
    record: &MemberRecord,
) -> DynamicObject {
    let mut object = DynamicObject::new(name, resource).within(namespace);
    stamp(&mut object.metadata, group, labels, record);
    set_spec(&mut object, &record.record);
    object
}

/// `object` (as last read or written at `expected`) as a member's update replaces it.
fn updated_member_object(
    mut object: DynamicObject,
    group: &str,
    labels: &BTreeMap<String, String>,
    expected: &Version,
    record: &MemberRecord,
) -> DynamicObject {
    stamp(&mut object.metadata, group, labels, record);
    set_spec(&mut object, &record.record);
    object.metadata.resource_version = Some(expected.as_str().to_string());
    object
}

/// Turns the watcher's events into [`GroupChange`]s: the objects of a (re)list are gathered
/// into one [`GroupChange::Snapshot`].
#[derive(Debug, Default)]
struct WatchTranslator {
    /// The (re)list under way.
    buffer: Option<Vec<MemberSighting>>,
    /// A Lease of the (re)list under way could not be reported: no snapshot from it.
    broken: bool,
}

impl WatchTranslator {
    fn translate(
        &mut self,
        event: Result<watcher::Event<DynamicObject>, watcher::Error>,
        what: &str,
    ) -> Option<Result<GroupChange, LockError>> {
        match event {
            Ok(watcher::Event::Init) => {
                self.buffer = Some(Vec::new());
                self.broken = false;
                None
            }
            Ok(watcher::Event::InitApply(object)) => match group_sighting(&object) {
                Ok(seen) => {
                    self.buffer.get_or_insert_with(Vec::new).push(seen);
                    None
                }
                Err(e) => {
                    self.broken = true;
                    Some(Err(e))
                }
            },
            Ok(watcher::Event::InitDone) => {
                let cut = self.buffer.take().unwrap_or_default();
                if std::mem::take(&mut self.broken) {
                    Some(Err(LockError::new(
                        LockErrorKind::InvalidRecord,
                        format!(
                            "{what}: a Lease of the list could not be reported; no snapshot until the next list"
                        ),
                    )))
                } else {
                    Some(Ok(GroupChange::Snapshot(cut)))
                }
            }
            Ok(watcher::Event::Apply(object)) => {
                Some(group_sighting(&object).map(GroupChange::Applied))
            }
            Ok(watcher::Event::Delete(object)) => Some(
                object
                    .metadata
                    .name
                    .map(GroupChange::Deleted)
                    .ok_or_else(|| {
                        LockError::new(
                            LockErrorKind::InvalidRecord,
                            format!("{what}: a deleted Lease without metadata.name"),
                        )
                    }),
            ),
            Err(e) => Some(Err(watch_error(what, e))),
        }
    }
}

/// A watcher error as a [`LockError`], classified like a request's.
fn watch_error(what: &str, e: watcher::Error) -> LockError {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => classify(what, e),
        watcher::Error::WatchError(status) => classify(what, kube::Error::Api(status)),
        e @ watcher::Error::NoResourceVersion => {
            LockError::new(LockErrorKind::Other, format!("{what}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap_or_else(|e| panic!("a DynamicObject: {e}"))
    }

    fn member(holder: Option<&str>, annotation: &str) -> MemberRecord {
        MemberRecord {
            record: LeaderElectionRecord {
                holder: holder.and_then(|h| Identity::new(h).ok()),
                lease_duration_seconds: 15,
                ..Default::default()
            },
            annotation: annotation.into(),
        }
    }

    #[test]
    fn a_readable_lease_is_seen_with_its_annotation_and_deletion() {
        let seen = group_sighting(&object(json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": "g-a",
                "resourceVersion": "42",
                "deletionTimestamp": "2024-01-01T00:00:00Z",
                "annotations": {MEMBER_ANNOTATION: "{\"v\":1}", "other": "x"},
            },
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
        })))
        .expect("readable");
        assert_eq!(seen.name, "g-a");
        assert_eq!(seen.version, Version::new("42"));
        assert_eq!(seen.record.holder, Identity::new("a").ok());
        assert_eq!(seen.record.lease_duration_seconds, 15);
        assert_eq!(seen.annotation.as_deref(), Some("{\"v\":1}"));
        assert!(seen.terminating);
    }

    #[test]
    fn no_spec_is_the_empty_record_and_no_annotation_is_none() {
        for data in [json!({}), json!({"spec": null})] {
            let mut o = object(json!({"metadata": {"name": "g-a", "resourceVersion": "1"}}));
            o.data = data;
            let seen = group_sighting(&o).expect("readable");
            assert_eq!(seen.record, LeaderElectionRecord::default());
            assert_eq!(seen.annotation, None);
            assert!(!seen.terminating);
            let own = own_sighting(&o, "ns/g-a").expect("readable");
            assert_eq!(own, seen);
        }
    }

    #[test]
    fn unreadable_specs_are_held_by_nobody_known_and_never_dropped() {
        for spec in [
            json!({"holderIdentity": "a", "leaseDurationSeconds": -5}),
            json!({"leaseTransitions": -1}),
            json!({"holderIdentity": 7}),
            json!({"renewTime": "yesterday"}),
            json!({"leaseDurationSeconds": 1e12}),
            json!("not an object"),
        ] {
            let o = object(json!({
                "metadata": {
                    "name": "g-x",
                    "resourceVersion": "9",
                    "annotations": {MEMBER_ANNOTATION: "{}"},
                },
                "spec": spec,
            }));
            let seen = group_sighting(&o).expect("never an error, never dropped");
            assert_eq!(seen.name, "g-x");
            assert_eq!(seen.version, Version::new("9"));
            assert_eq!(
                seen.record.holder.as_ref().map(Identity::as_str),
                Some("<unreadable lease g-x>"),
                "{spec}"
            );
            assert_eq!(seen.annotation, None, "{spec}");
            // The own Lease: an error, never overwritten.
            let own = own_sighting(&o, "ns/g-x").expect_err("unreadable");
            assert_eq!(own.kind, LockErrorKind::InvalidRecord);
            assert!(own.message.contains("unreadable record"), "{own}");
        }
        let negative = group_sighting(&object(json!({
            "metadata": {"name": "g-x", "resourceVersion": "9"},
            "spec": {"leaseDurationSeconds": -5},
        })));
        assert!(negative.is_ok());
        let own = own_sighting(
            &object(json!({
                "metadata": {"name": "g-x", "resourceVersion": "9"},
                "spec": {"leaseDurationSeconds": -5},
            })),
            "ns/g-x",
        )
        .expect_err("negative");
        assert!(own.message.contains("spec.leaseDurationSeconds"), "{own}");
    }

    #[test]
    fn objects_without_a_version_or_a_name_are_errors() {
        let no_version = object(json!({"metadata": {"name": "g-a"}, "spec": {}}));
        let e = group_sighting(&no_version).expect_err("no version");
        assert_eq!(e.kind, LockErrorKind::InvalidRecord);
        assert!(e.message.contains("resourceVersion"), "{e}");
        let e = own_sighting(&no_version, "ns/g-a").expect_err("no version");
        assert_eq!(e.kind, LockErrorKind::InvalidRecord);
        let no_name = object(json!({"metadata": {"resourceVersion": "3"}}));
        assert!(group_sighting(&no_name).is_err());
    }

    #[test]
    fn updates_keep_foreign_labels_annotations_and_finalizers() {
        let resource = ApiResource::erase::<Lease>(&());
        let current = object(json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": "g-a",
                "namespace": "ns",
                "resourceVersion": "7",
                "labels": {"team": "x", GROUP_LABEL: "stale"},
                "annotations": {"note": "keep", MEMBER_ANNOTATION: "old"},
                "finalizers": ["example.com/keep", MEMBER_FINALIZER],
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}],
            },
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
        }));
        let extra = BTreeMap::from([
            ("app".to_string(), "orders".to_string()),
            (GROUP_LABEL.to_string(), "not-this".to_string()),
        ]);
        let released = updated_member_object(
            current.clone(),
            "g",
            &extra,
            &Version::new("7"),
            &member(None, "new"),
        );
        let meta = &released.metadata;
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("team").map(String::as_str), Some("x"));
        assert_eq!(labels.get("app").map(String::as_str), Some("orders"));
        assert_eq!(labels.get(GROUP_LABEL).map(String::as_str), Some("g"));
        let annotations = meta.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.get("note").map(String::as_str), Some("keep"));
        assert_eq!(
            annotations.get(MEMBER_ANNOTATION).map(String::as_str),
            Some("new")
        );
        assert_eq!(
            meta.finalizers,
            Some(vec!["example.com/keep".to_string()]),
            "only ours removed"
        );
        assert_eq!(meta.owner_references.as_ref().map(Vec::len), Some(1));
        assert_eq!(meta.resource_version.as_deref(), Some("7"));
        assert_eq!(released.data["spec"]["holderIdentity"], json!(""));
        // Held again: ours comes back once, the foreign one stays first.
        let held = updated_member_object(
            released,
            "g",
            &BTreeMap::new(),
            &Version::new("8"),
            &member(Some("a"), "x"),
        );
        assert_eq!(
            held.metadata.finalizers,
            Some(vec![
                "example.com/keep".to_string(),
                MEMBER_FINALIZER.to_string()
            ])
        );
        let again = updated_member_object(
            held,
            "g",
            &BTreeMap::new(),
            &Version::new("9"),
            &member(Some("a"), "x"),
        );
        assert_eq!(again.metadata.finalizers.map(|f| f.len()), Some(2));
        // Only ours, removed: no finalizers at all.
        let mut only_ours = current;
        only_ours.metadata.finalizers = Some(vec![MEMBER_FINALIZER.to_string()]);
        let gone = updated_member_object(
            only_ours,
            "g",
            &BTreeMap::new(),
            &Version::new("7"),
            &member(None, ""),
        );
        assert_eq!(gone.metadata.finalizers, None);
        // A new Lease.
        let created =
            new_member_object(&resource, "ns", "g-b", "g", &extra, &member(Some("b"), "c"));
        let value = serde_json::to_value(&created).expect("serializes");
        assert_eq!(value["apiVersion"], json!("coordination.k8s.io/v1"));
        assert_eq!(value["kind"], json!("Lease"));
        assert_eq!(value["metadata"]["name"], json!("g-b"));
        assert_eq!(value["metadata"]["namespace"], json!("ns"));
        assert_eq!(value["metadata"]["labels"][GROUP_LABEL], json!("g"));
        assert_eq!(value["metadata"]["labels"]["app"], json!("orders"));
        assert_eq!(
            value["metadata"]["annotations"][MEMBER_ANNOTATION],
            json!("c")
        );
        assert_eq!(value["metadata"]["finalizers"], json!([MEMBER_FINALIZER]));
        assert_eq!(value["spec"]["holderIdentity"], json!("b"));
        assert_eq!(value["spec"]["leaseDurationSeconds"], json!(15));
        let released = new_member_object(&resource, "ns", "g-b", "g", &extra, &member(None, ""));
        assert!(released.metadata.finalizers.is_none());
        assert_eq!(
            own_sighting(&object(json!({"metadata": {"name": "g-b", "resourceVersion": "1"}, "spec": value["spec"]})), "ns/g-b")
                .map(|s| s.record.holder),
            Ok(Identity::new("b").ok())
        );
    }

    #[test]
    fn watch_events_become_group_changes() {
        let lease = |name: &str, rv: &str| {
            object(
                json!({"metadata": {"name": name, "resourceVersion": rv}, "spec": {"holderIdentity": name}}),
            )
        };
        let mut t = WatchTranslator::default();
        let w = "watching";
        assert!(t.translate(Ok(watcher::Event::Init), w).is_none());
        assert!(
            t.translate(Ok(watcher::Event::InitApply(lease("a", "1"))), w)
                .is_none()
        );
        assert!(
            t.translate(Ok(watcher::Event::InitApply(lease("b", "2"))), w)
                .is_none()
        );
        match t.translate(Ok(watcher::Event::InitDone), w) {
            Some(Ok(GroupChange::Snapshot(cut))) => {
                assert_eq!(
                    cut.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
                    ["a", "b"]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t.translate(Ok(watcher::Event::Apply(lease("a", "3"))), w),
            Some(Ok(GroupChange::Applied(s))) if s.version == Version::new("3")
        ));
        assert!(matches!(
            t.translate(Ok(watcher::Event::Delete(lease("b", "4"))), w),
            Some(Ok(GroupChange::Deleted(n))) if n == "b"
        ));
        // An empty relist is an empty snapshot.
        assert!(t.translate(Ok(watcher::Event::Init), w).is_none());
        assert!(matches!(
            t.translate(Ok(watcher::Event::InitDone), w),
            Some(Ok(GroupChange::Snapshot(cut))) if cut.is_empty()
        ));
        // A relist with a Lease that cannot be reported gives no snapshot, only errors.
        assert!(t.translate(Ok(watcher::Event::Init), w).is_none());
        let bad = object(json!({"metadata": {"name": "c"}}));
        assert!(matches!(
            t.translate(Ok(watcher::Event::InitApply(bad)), w),
            Some(Err(_))
        ));
        assert!(matches!(
            t.translate(Ok(watcher::Event::InitDone), w),
            Some(Err(e)) if e.kind == LockErrorKind::InvalidRecord
        ));
        // The next relist is whole again.
        assert!(t.translate(Ok(watcher::Event::Init), w).is_none());
        assert!(matches!(
            t.translate(Ok(watcher::Event::InitDone), w),
            Some(Ok(GroupChange::Snapshot(_)))
        ));
        // An unreadable Lease in a watch event is reported, not dropped.
        let garbage = object(
            json!({"metadata": {"name": "z", "resourceVersion": "5"}, "spec": {"leaseTransitions": -3}}),
        );
        assert!(matches!(
            t.translate(Ok(watcher::Event::Apply(garbage)), w),
            Some(Ok(GroupChange::Applied(s))) if s.record.holder.is_some() && s.annotation.is_none()
        ));
        // Errors go through, classified.
        let status = kube::core::Status::failure("too old", "Expired").with_code(410);
        assert!(matches!(
            t.translate(Err(watcher::Error::WatchError(Box::new(status))), w),
            Some(Err(e)) if e.kind == LockErrorKind::Other && e.message.contains("410")
        ));
    }

    #[test]
    fn names_are_checked() {
        assert!(is_group_name("orders"));
        assert!(is_group_name("A_b.c-1"));
        assert!(is_group_name(&"a".repeat(63)));
        for bad in ["", "-a", "a-", "a/b", "a b", "é", &"a".repeat(64)] {
            assert!(!is_group_name(bad), "{bad:?}");
        }
    }
}
