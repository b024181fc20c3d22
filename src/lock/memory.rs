//! A linearizable in-memory lock store, for tests, examples, simulators and single-host use.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{LockError, LockErrorKind, LockRequest, LockResponse, LockResult};
use crate::record::{LeaderElectionRecord, Version, Versioned};

/// A lock object held in memory and shared by clones (`Arc<Mutex<..>>` inside).
///
/// Every operation takes the mutex once, so operations are linearizable. Versions are decimal
/// numbers that only rise, even across [`MemoryLock::delete`], so a stale version never matches
/// a recreated object.
#[derive(Debug, Clone, Default)]
pub struct MemoryLock {
    inner: Arc<Mutex<Store>>,
}

#[derive(Debug, Default)]
struct Store {
    current: Option<Versioned<LeaderElectionRecord>>,
    last_version: u64,
    /// Watchers, created by the first `watch`.
    #[cfg(feature = "tokio")]
    changes: Option<tokio::sync::watch::Sender<super::Sighting>>,
    /// Blocking watchers.
    #[cfg(feature = "blocking")]
    subscribers: Vec<std::sync::mpsc::Sender<Result<super::Sighting, LockError>>>,
}

impl Store {
    fn next_version(&mut self) -> Version {
        self.last_version += 1;
        Version::new(self.last_version.to_string())
    }

    fn set(&mut self, current: Option<Versioned<LeaderElectionRecord>>) {
        self.current = current;
        #[cfg(feature = "tokio")]
        if let Some(changes) = &self.changes {
            changes.send_replace(self.current.clone());
        }
        #[cfg(feature = "blocking")]
        {
            let current = self.current.clone();
            self.subscribers
                .retain(|s| s.send(Ok(current.clone())).is_ok());
        }
    }
}

impl MemoryLock {
    /// An empty store: the lock object does not exist yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        // No operation can leave the store half-updated, so a poisoned mutex is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Performs `request`, as a driver does with [`crate::Action::Lock`].
    pub fn execute(&self, request: &LockRequest) -> LockResult {
        match request {
            LockRequest::Get => Ok(LockResponse::Record(self.get())),
            LockRequest::Create(record) => self.create(record.clone()).map(LockResponse::Written),
            LockRequest::Update { expected, record } => self
                .update(expected, record.clone())
                .map(LockResponse::Written),
        }
    }

    /// The current record and version, or `None` when the object does not exist.
    pub fn get(&self) -> Option<Versioned<LeaderElectionRecord>> {
        self.store().current.clone()
    }

    /// Creates the object.
    ///
    /// # Errors
    /// [`LockErrorKind::AlreadyExists`] when it exists.
    pub fn create(&self, record: LeaderElectionRecord) -> Result<Version, LockError> {
        let mut store = self.store();
        if let Some(current) = &store.current {
            return Err(LockError::new(
                LockErrorKind::AlreadyExists,
                format!("lock already exists at version {}", current.version),
            ));
        }
        let version = store.next_version();
        store.set(Some(Versioned {
            version: version.clone(),
            value: record,
        }));
        Ok(version)
    }

    /// Replaces the record if the object is still at version `expected`.
    ///
    /// # Errors
    /// [`LockErrorKind::NotFound`] when the object is absent, [`LockErrorKind::Conflict`] when
    /// its version is not `expected`.
    pub fn update(
        &self,
        expected: &Version,
        record: LeaderElectionRecord,
    ) -> Result<Version, LockError> {
        let mut store = self.store();
        match &store.current {
            None => Err(LockError::new(
                LockErrorKind::NotFound,
                "lock does not exist",
            )),
            Some(current) if &current.version != expected => Err(LockError::new(
                LockErrorKind::Conflict,
                format!(
                    "lock is at version {}, not {expected}: it was modified",
                    current.version
                ),
            )),
            Some(_) => {
                let version = store.next_version();
                store.set(Some(Versioned {
                    version: version.clone(),
                    value: record,
                }));
                Ok(version)
            }
        }
    }

    /// Every change from now on, starting with the current state (for the blocking driver).
    #[cfg(feature = "blocking")]
    pub(crate) fn subscribe(
        &self,
    ) -> std::sync::mpsc::Receiver<Result<super::Sighting, LockError>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut store = self.store();
        let _ = tx.send(Ok(store.current.clone()));
        store.subscribers.push(tx);
        rx
    }

    /// Deletes the object, as an administrator might.
    pub fn delete(&self) {
        self.store().set(None);
    }
}

#[cfg(feature = "async")]
impl super::Lock for MemoryLock {
    async fn get(&self) -> Result<super::Sighting, LockError> {
        Ok(MemoryLock::get(self))
    }

    async fn create(&self, record: LeaderElectionRecord) -> Result<Version, LockError> {
        MemoryLock::create(self, record)
    }

    async fn update(
        &self,
        expected: Version,
        record: LeaderElectionRecord,
    ) -> Result<Version, LockError> {
        MemoryLock::update(self, &expected, record)
    }

    fn describe(&self) -> String {
        "memory".into()
    }

    /// With the `tokio` feature the in-memory lock can be watched: every change, as it
    /// happens (intermediate states may be skipped when changes come faster than they are read).
    #[cfg(feature = "tokio")]
    fn watch(
        &self,
    ) -> Option<futures_util::stream::BoxStream<'static, Result<super::Sighting, LockError>>> {
        use futures_util::StreamExt;
        let mut store = self.store();
        let current = store.current.clone();
        let rx = store
            .changes
            .get_or_insert_with(|| tokio::sync::watch::channel(current).0)
            .subscribe();
        let stream = futures_util::stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let seen = rx.borrow_and_update().clone();
            Some((Ok(seen), (rx, false)))
        });
        Some(stream.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Identity;

    fn record(holder: &str) -> LeaderElectionRecord {
        LeaderElectionRecord {
            holder: Identity::new(holder).ok(),
            lease_duration_seconds: 15,
            ..Default::default()
        }
    }

    #[test]
    fn create_is_create_if_absent() {
        let lock = MemoryLock::new();
        assert_eq!(lock.get(), None);
        let v1 = lock.create(record("a")).expect("absent");
        let err = lock.create(record("b")).expect_err("present");
        assert_eq!(err.kind, LockErrorKind::AlreadyExists);
        assert_eq!(lock.get().map(|v| v.version), Some(v1));
    }

    #[test]
    fn update_is_compare_and_swap() {
        let lock = MemoryLock::new();
        let stale = Version::new("0");
        assert_eq!(
            lock.update(&stale, record("a")).map_err(|e| e.kind),
            Err(LockErrorKind::NotFound)
        );
        let v1 = lock.create(record("a")).expect("absent");
        let v2 = lock.update(&v1, record("b")).expect("current");
        assert_ne!(v1, v2);
        assert_eq!(
            lock.update(&v1, record("c")).map_err(|e| e.kind),
            Err(LockErrorKind::Conflict)
        );
        assert_eq!(lock.get().map(|v| v.value), Some(record("b")));
    }

    #[test]
    fn versions_never_repeat_across_delete() {
        let lock = MemoryLock::new();
        let v1 = lock.create(record("a")).expect("absent");
        lock.delete();
        let v2 = lock.create(record("a")).expect("absent again");
        assert_ne!(v1, v2);
        assert_eq!(
            lock.update(&v1, record("b")).map_err(|e| e.kind),
            Err(LockErrorKind::Conflict)
        );
    }

    #[test]
    fn execute_maps_requests() {
        let lock = MemoryLock::new();
        assert_eq!(
            lock.execute(&LockRequest::Get),
            Ok(LockResponse::Record(None))
        );
        let Ok(LockResponse::Written(v)) = lock.execute(&LockRequest::Create(record("a"))) else {
            panic!("create should succeed");
        };
        let update = LockRequest::Update {
            expected: v,
            record: record("b"),
        };
        assert!(matches!(
            lock.execute(&update),
            Ok(LockResponse::Written(_))
        ));
        assert!(matches!(lock.execute(&update), Err(e) if e.kind == LockErrorKind::Conflict));
    }
}
