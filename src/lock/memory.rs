//! A linearizable in-memory lock store, for tests, examples, simulators and single-host use.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::{LockError, LockErrorKind, LockRequest, LockResponse, LockResult};
use crate::record::{LeaderElectionRecord, Version, Versioned};

/// A lock object held in memory and shared by clones (`Arc<Mutex<..>>` inside).
///
/// Every operation takes the mutex once, so operations are linearizable. Versions are decimal
/// numbers that only rise, even across [`MemoryLock::delete`], so a stale version never matches
/// a recreated object.
///
/// It keeps the Kubernetes API server's write semantics, so that code tested against it meets
/// no kinder store in production: an update that leaves the stored record unchanged is a
/// no-op that answers the *unchanged* version and notifies no watcher (the API server's
/// `GuaranteedUpdate` does the same for a byte-identical object), and times are stored at the
/// lock's precision ([`MemoryLock::with_time_precision`]; the annotation locks keep whole
/// seconds). [`MemoryLock::delete`] and [`MemoryLock::touch`] play an administrator and a
/// foreign writer.
#[derive(Debug, Clone, Default)]
pub struct MemoryLock {
    inner: Arc<Mutex<Store>>,
}

#[derive(Debug, Default)]
struct Store {
    current: Option<Versioned<LeaderElectionRecord>>,
    last_version: u64,
    /// The precision times are stored at; zero means one microsecond.
    precision: Duration,
    /// Watchers, created by the first `watch`.
    #[cfg(feature = "tokio")]
    changes: Option<tokio::sync::watch::Sender<super::Sighting>>,
    /// Blocking watchers.
    #[cfg(feature = "blocking")]
    subscribers: Vec<std::sync::mpsc::Sender<Result<super::Sighting, LockError>>>,
}

impl Store {
    /// `record` as this store keeps it: times truncated to its precision.
    fn stored(&self, mut record: LeaderElectionRecord) -> LeaderElectionRecord {
        let precision = self.precision;
        record.acquire_time = record.acquire_time.map(|t| t.truncated_to(precision));
        record.renew_time = record.renew_time.map(|t| t.truncated_to(precision));
        record
    }

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
    /// An empty store that keeps times to the microsecond, like a Lease: the lock object does
    /// not exist yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that keeps times truncated to `precision` (at least a microsecond), like
    /// the annotation locks' whole seconds.
    pub fn with_time_precision(precision: Duration) -> Self {
        let lock = Self::default();
        lock.store().precision = precision;
        lock
    }

    /// The precision it stores times at.
    pub fn time_precision(&self) -> Duration {
        self.store().precision.max(Duration::from_micros(1))
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
        let record = store.stored(record);
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

    /// Replaces the record if the object is still at version `expected`. A record that equals
    /// the stored one (at the store's time precision) writes nothing and answers the unchanged
    /// version, as the API server does.
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
        let record = store.stored(record);
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
            Some(current) if current.value == record => Ok(current.version.clone()),
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

    /// Writes the object without changing the record, as a tool that edits its labels or other
    /// annotations does: the version rises and watchers are told. Nothing if it is absent.
    pub fn touch(&self) {
        let mut store = self.store();
        if let Some(current) = store.current.clone() {
            let version = store.next_version();
            store.set(Some(Versioned {
                version,
                value: current.value,
            }));
        }
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

    fn time_precision(&self) -> Duration {
        MemoryLock::time_precision(self)
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
    fn an_update_that_changes_nothing_is_a_no_op_like_the_api_server_s() {
        let lock = MemoryLock::with_time_precision(Duration::from_secs(1));
        let at = |micros| crate::time::Timestamp::from_unix_micros(micros).ok();
        let mut r = record("a");
        r.renew_time = at(10_200_000);
        let v1 = lock.create(r.clone()).expect("absent");
        assert_eq!(lock.get().and_then(|v| v.value.renew_time), at(10_000_000));
        // 0.6 s later, within the same second: the stored object would not change.
        r.renew_time = at(10_800_000);
        assert_eq!(
            lock.update(&v1, r.clone()),
            Ok(v1.clone()),
            "unchanged version"
        );
        r.renew_time = at(11_000_000);
        let v2 = lock.update(&v1, r).expect("a new second is a change");
        assert_ne!(v1, v2);
    }

    #[test]
    fn touch_bumps_the_version_and_keeps_the_record() {
        let lock = MemoryLock::new();
        lock.touch();
        assert_eq!(lock.get(), None, "nothing to touch");
        let v1 = lock.create(record("a")).expect("absent");
        lock.touch();
        let now = lock.get().expect("present");
        assert_ne!(now.version, v1);
        assert_eq!(now.value, record("a"));
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
