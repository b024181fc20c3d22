//! Where member Leases live: the async [`GroupLock`] the tokio driver uses, and the in-memory
//! group ([`MemoryGroup`]) for tests, examples and the simulator.

use std::collections::BTreeMap;
#[cfg(feature = "async")]
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::io::{
    GroupChange, GroupRequest, GroupResponse, GroupResult, MemberRecord, MemberSighting,
};
use crate::lock::{LockError, LockErrorKind};
use crate::record::{LeaderElectionRecord, Version};

/// The member Leases of one group, as one member's driver sees them: operations on this
/// member's own Lease, lists of the group, and one watch of the whole group.
#[cfg(feature = "async")]
pub trait GroupLock: Send + Sync + 'static {
    /// Performs `request` (see [`GroupRequest`] for what each must guarantee).
    fn execute(&self, request: GroupRequest) -> impl Future<Output = GroupResult> + Send;

    /// Every change of the group's Leases, in the order the store committed them, starting
    /// with a [`GroupChange::Snapshot`] (and another after every relist). Errors are reported
    /// and the stream keeps going. `None`: the member lists the group every retry period.
    fn watch(
        &self,
    ) -> Option<futures_util::stream::BoxStream<'static, Result<GroupChange, LockError>>> {
        None
    }

    /// The member's Lease, for messages (`namespace/name`).
    fn describe(&self) -> String;

    /// The finest step of time the store keeps in records (1 µs for a Lease).
    fn time_precision(&self) -> std::time::Duration {
        std::time::Duration::from_micros(1)
    }
}

/// One Lease in a [`MemoryGroup`].
#[derive(Debug, Clone)]
struct Stored {
    revision: u64,
    record: LeaderElectionRecord,
    annotation: Option<String>,
    finalizer: bool,
    terminating: bool,
}

#[derive(Debug, Default)]
struct Store {
    /// The store's revision: every write raises it, and a version is the revision of the
    /// write that made it.
    revision: u64,
    leases: BTreeMap<String, Stored>,
    #[cfg(feature = "tokio")]
    watchers: Vec<tokio::sync::mpsc::UnboundedSender<GroupChange>>,
    sync_watchers: Vec<std::sync::mpsc::Sender<GroupChange>>,
}

impl Store {
    fn sighting(name: &str, s: &Stored) -> MemberSighting {
        MemberSighting {
            name: name.to_owned(),
            version: Version::new(s.revision.to_string()),
            record: s.record.clone(),
            annotation: s.annotation.clone(),
            terminating: s.terminating,
        }
    }

    fn snapshot(&self) -> Vec<MemberSighting> {
        self.leases
            .iter()
            .map(|(name, s)| Self::sighting(name, s))
            .collect()
    }

    fn tell(&mut self, change: &GroupChange) {
        #[cfg(feature = "tokio")]
        self.watchers.retain(|w| w.send(change.clone()).is_ok());
        self.sync_watchers
            .retain(|w| w.send(change.clone()).is_ok());
    }

    fn put(&mut self, name: &str, record: MemberRecord, terminating: bool) -> Version {
        self.revision += 1;
        let finalizer = record.keeps_finalizer();
        let stored = Stored {
            revision: self.revision,
            record: record.record,
            annotation: Some(record.annotation),
            finalizer,
            terminating,
        };
        if terminating && !finalizer {
            // The last finalizer went: the deletion asked for completes.
            self.leases.remove(name);
            self.tell(&GroupChange::Deleted(name.to_owned()));
        } else {
            let seen = Self::sighting(name, &stored);
            self.leases.insert(name.to_owned(), stored);
            self.tell(&GroupChange::Applied(seen));
        }
        Version::new(self.revision.to_string())
    }
}

/// A group of member Leases in memory, shared by clones: one global revision, compare-and-swap
/// writes, consistent lists, ordered watches, and the member finalizer (a deletion of a held
/// Lease waits for its release), as the Kubernetes API server with etcd behaves.
#[derive(Debug, Clone, Default)]
pub struct MemoryGroup {
    inner: Arc<Mutex<Store>>,
}

impl MemoryGroup {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // A panic elsewhere while holding the lock leaves consistent data (every change is
        // made in one step), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The handle of the member whose Lease is `lease_name`.
    pub fn member(&self, lease_name: impl Into<String>) -> MemoryMember {
        MemoryMember {
            group: self.clone(),
            name: lease_name.into(),
        }
    }

    /// Performs `request` for the member whose Lease is `lease_name`, at once.
    pub fn execute(&self, lease_name: &str, request: &GroupRequest) -> GroupResult {
        let mut store = self.store();
        match request {
            GroupRequest::Get => Ok(GroupResponse::Member(
                store
                    .leases
                    .get(lease_name)
                    .map(|s| Store::sighting(lease_name, s)),
            )),
            GroupRequest::List => Ok(GroupResponse::Listed(store.snapshot())),
            GroupRequest::Create(record) => {
                if store.leases.contains_key(lease_name) {
                    return Err(LockError::new(
                        LockErrorKind::AlreadyExists,
                        format!("lease {lease_name} already exists"),
                    ));
                }
                Ok(GroupResponse::Written(store.put(
                    lease_name,
                    record.clone(),
                    false,
                )))
            }
            GroupRequest::Update { expected, record } => {
                let Some(current) = store.leases.get(lease_name) else {
                    return Err(LockError::new(
                        LockErrorKind::NotFound,
                        format!("lease {lease_name} not found"),
                    ));
                };
                if current.revision.to_string() != expected.as_str() {
                    return Err(LockError::new(
                        LockErrorKind::Conflict,
                        format!("lease {lease_name} is no longer at version {expected}"),
                    ));
                }
                let terminating = current.terminating;
                Ok(GroupResponse::Written(store.put(
                    lease_name,
                    record.clone(),
                    terminating,
                )))
            }
        }
    }

    /// Every Lease of the group.
    pub fn list(&self) -> Vec<MemberSighting> {
        self.store().snapshot()
    }

    /// Deletes a Lease as an administrator would: one with the member finalizer becomes
    /// terminating (its member then leaves, and its release completes the deletion); one
    /// without goes at once.
    pub fn delete(&self, lease_name: &str) {
        let mut store = self.store();
        let Some(current) = store.leases.get(lease_name).cloned() else {
            return;
        };
        if current.finalizer {
            if !current.terminating {
                store.revision += 1;
                let stored = Stored {
                    revision: store.revision,
                    terminating: true,
                    ..current
                };
                let seen = Store::sighting(lease_name, &stored);
                store.leases.insert(lease_name.to_owned(), stored);
                store.tell(&GroupChange::Applied(seen));
            }
        } else {
            store.revision += 1;
            store.leases.remove(lease_name);
            store.tell(&GroupChange::Deleted(lease_name.to_owned()));
        }
    }

    /// Every change from now on, starting with a snapshot, on a std channel.
    pub fn subscribe(&self) -> std::sync::mpsc::Receiver<GroupChange> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut store = self.store();
        let _ = tx.send(GroupChange::Snapshot(store.snapshot()));
        store.sync_watchers.push(tx);
        rx
    }
}

/// One member's handle on a [`MemoryGroup`] (a [`GroupLock`] with the `async` feature).
#[derive(Debug, Clone)]
pub struct MemoryMember {
    group: MemoryGroup,
    name: String,
}

impl MemoryMember {
    /// Performs `request` at once.
    pub fn execute(&self, request: &GroupRequest) -> GroupResult {
        self.group.execute(&self.name, request)
    }

    /// The group.
    pub fn group(&self) -> &MemoryGroup {
        &self.group
    }
}

#[cfg(feature = "async")]
impl GroupLock for MemoryMember {
    async fn execute(&self, request: GroupRequest) -> GroupResult {
        MemoryMember::execute(self, &request)
    }

    #[cfg(feature = "tokio")]
    fn watch(
        &self,
    ) -> Option<futures_util::stream::BoxStream<'static, Result<GroupChange, LockError>>> {
        use futures_util::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        {
            let mut store = self.group.store();
            let _ = tx.send(GroupChange::Snapshot(store.snapshot()));
            store.watchers.push(tx);
        }
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|change| (Ok(change), rx))
        });
        Some(stream.boxed())
    }

    fn describe(&self) -> String {
        format!("memory/{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Identity;

    fn record(holder: Option<&str>) -> MemberRecord {
        MemberRecord {
            record: LeaderElectionRecord {
                holder: holder.and_then(|h| Identity::new(h).ok()),
                lease_duration_seconds: 15,
                ..Default::default()
            },
            annotation: "{}".into(),
        }
    }

    fn written(r: GroupResult) -> Version {
        match r {
            Ok(GroupResponse::Written(v)) => v,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn writes_are_compare_and_swap_and_lists_are_cuts() {
        let g = MemoryGroup::new();
        let a = g.member("g-a");
        let v1 = written(a.execute(&GroupRequest::Create(record(Some("a")))));
        assert!(matches!(
            a.execute(&GroupRequest::Create(record(Some("a")))),
            Err(e) if e.kind == LockErrorKind::AlreadyExists
        ));
        let v2 = written(a.execute(&GroupRequest::Update {
            expected: v1.clone(),
            record: record(Some("a")),
        }));
        assert!(matches!(
            a.execute(&GroupRequest::Update { expected: v1, record: record(Some("a")) }),
            Err(e) if e.kind == LockErrorKind::Conflict
        ));
        let b = g.member("g-b");
        written(b.execute(&GroupRequest::Create(record(Some("b")))));
        match a.execute(&GroupRequest::List) {
            Ok(GroupResponse::Listed(cut)) => {
                assert_eq!(cut.len(), 2);
                assert_eq!(cut[0].version, v2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deletion_waits_for_the_release() {
        let g = MemoryGroup::new();
        let a = g.member("g-a");
        let watch = g.subscribe();
        let v = written(a.execute(&GroupRequest::Create(record(Some("a")))));
        g.delete("g-a");
        let listed = g.list();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].terminating);
        // The old version is gone: the deletion wrote.
        assert!(
            a.execute(&GroupRequest::Update {
                expected: v,
                record: record(None)
            })
            .is_err()
        );
        let current = listed[0].version.clone();
        written(a.execute(&GroupRequest::Update {
            expected: current,
            record: record(None),
        }));
        assert!(g.list().is_empty());
        let changes: Vec<GroupChange> = watch.try_iter().collect();
        assert!(matches!(changes.first(), Some(GroupChange::Snapshot(s)) if s.is_empty()));
        assert!(matches!(changes.last(), Some(GroupChange::Deleted(n)) if n == "g-a"));
        // A Lease without a holder (no finalizer) goes at once.
        written(a.execute(&GroupRequest::Create(record(None))));
        g.delete("g-a");
        assert!(g.list().is_empty());
    }
}
