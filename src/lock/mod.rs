//! The boundary between the elector and a lock store: requests, results, errors, and the
//! in-memory store.
//!
//! The elector asks for one of three operations ([`LockRequest`]); a driver performs it on some
//! store and hands back a [`LockResult`]. Every write is a compare-and-swap: `Create` succeeds
//! only if the object is absent, `Update` only if its version is still the one expected.

mod memory;

pub use memory::MemoryLock;

use std::fmt;
#[cfg(feature = "async")]
use std::future::Future;

use crate::record::{LeaderElectionRecord, Version, Versioned};

/// An operation on the lock, emitted by the elector in [`crate::Action::Lock`].
///
/// Exhaustive on purpose: every lock must carry out every request, so a new kind of request
/// is a breaking change that a lock implementation should fail to compile against, not a
/// wildcard arm that answers it wrongly at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockRequest {
    /// Read the current record and its version. Absent is a normal answer, not an error.
    Get,
    /// Create the lock object holding `record`; fails with [`LockErrorKind::AlreadyExists`]
    /// if it exists.
    Create(LeaderElectionRecord),
    /// Replace the record, only if the object's version is still `expected`; fails with
    /// [`LockErrorKind::Conflict`] otherwise.
    Update {
        /// The version the write is conditional on.
        expected: Version,
        /// The record to write.
        record: LeaderElectionRecord,
    },
}

/// A successful answer to a [`LockRequest`].
///
/// Exhaustive, like [`LockRequest`]: a new answer comes with a new request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockResponse {
    /// The answer to `Get`: the record and its version, or `None` when the object is absent.
    Record(Option<Versioned<LeaderElectionRecord>>),
    /// The answer to `Create` and `Update`: the object's new version.
    Written(Version),
}

/// The outcome of a lock operation, handed to the elector as [`crate::Input::LockResult`].
pub type LockResult = Result<LockResponse, LockError>;

/// Why a lock operation failed, classified so the elector reacts correctly; the store's own
/// message is kept for people, and the client's error, when there is one, as the
/// [`source`](std::error::Error::source) (a `kube::Error` for the Kubernetes locks).
/// Two errors are equal when their kind, message and `retry_after` are: the source is a
/// report, not part of what the elector acts on.
#[derive(Debug, Clone)]
pub struct LockError {
    /// The class of failure.
    pub kind: LockErrorKind,
    /// What the store said.
    pub message: String,
    /// How long the store asked to wait before the next request (HTTP `Retry-After`, a
    /// Kubernetes `Status`'s `details.retryAfterSeconds`). The elector honours it, but never
    /// past the end of a term or of a release.
    pub retry_after: Option<std::time::Duration>,
    /// The client's own error.
    pub source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync>>,
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for LockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The client's error itself (not the Arc around it), so that it downcasts.
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl PartialEq for LockError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.message == other.message
            && self.retry_after == other.retry_after
    }
}

impl Eq for LockError {}

impl LockError {
    /// A failure of class `kind` with the store's `message`.
    pub fn new(kind: LockErrorKind, message: impl Into<String>) -> Self {
        LockError {
            kind,
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }

    /// The same failure, with the client's error as its source.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(std::sync::Arc::new(source));
        self
    }

    /// The same failure, with the store's request to wait `retry_after` before retrying.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: std::time::Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }
}

/// Classes of lock failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum LockErrorKind {
    /// The object does not exist (an `Update` after someone deleted it).
    NotFound,
    /// The object's version is no longer the one expected: someone else wrote first.
    Conflict,
    /// `Create` found the object already there: someone else created it first.
    AlreadyExists,
    /// The operation did not finish before its deadline. Whether a write took effect is unknown.
    Timeout,
    /// The store refused the credentials or the permission (HTTP 401 / 403).
    Unauthorized,
    /// The object exists but does not hold a record leasehold can read. It is never overwritten.
    InvalidRecord,
    /// The store is overloaded or failing (HTTP 429, 5xx); worth retrying.
    Unavailable,
    /// Anything else: transport errors, unexpected answers.
    Other,
}

impl LockErrorKind {
    /// Whether the failure means "someone else changed the lock first": the elector then
    /// re-reads at once instead of waiting a retry period.
    pub fn is_lost_race(self) -> bool {
        matches!(self, Self::Conflict | Self::AlreadyExists | Self::NotFound)
    }

    /// Whether the failure of a request (a create when `create`) means someone else changed
    /// the lock first. A create answered NotFound is not one: the namespace (or the resource)
    /// is missing, a misconfiguration that no retry at once can mend. The elector and the
    /// drivers' logs both go by this rule.
    pub fn is_lost_race_on(self, create: bool) -> bool {
        self.is_lost_race() && !(create && self == Self::NotFound)
    }
}

impl LockErrorKind {
    /// A snake_case name, for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::AlreadyExists => "already_exists",
            Self::Timeout => "timeout",
            Self::Unauthorized => "unauthorized",
            Self::InvalidRecord => "invalid_record",
            Self::Unavailable => "unavailable",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for LockErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotFound => "not found",
            Self::Conflict => "conflict",
            Self::AlreadyExists => "already exists",
            Self::Timeout => "timed out",
            Self::Unauthorized => "unauthorized",
            Self::InvalidRecord => "invalid record",
            Self::Unavailable => "unavailable",
            Self::Other => "error",
        })
    }
}

/// What a watch reports: the lock's record and version, or `None` when the object is absent.
pub type Sighting = Option<Versioned<LeaderElectionRecord>>;

/// A lock store the async drivers can use.
///
/// `create` must be create-if-absent and `update` a compare-and-swap on the version; `get`
/// reports an absent object as `Ok(None)`. Every failure is classified ([`LockErrorKind`]) so
/// the elector reacts correctly. A lock that can push changes implements [`Lock::watch`].
#[cfg(feature = "async")]
pub trait Lock: Send + Sync + 'static {
    /// Reads the record and its version.
    fn get(&self) -> impl Future<Output = Result<Sighting, LockError>> + Send;

    /// Creates the lock object holding `record`.
    fn create(
        &self,
        record: LeaderElectionRecord,
    ) -> impl Future<Output = Result<Version, LockError>> + Send;

    /// Replaces the record if the object's version is still `expected`.
    fn update(
        &self,
        expected: Version,
        record: LeaderElectionRecord,
    ) -> impl Future<Output = Result<Version, LockError>> + Send;

    /// "namespace/name" or similar, for messages.
    fn describe(&self) -> String;

    /// The finest step of time the lock stores in the record's times (1 µs for a Lease, 1 s
    /// for the annotation locks). The drivers set
    /// [`Config::time_precision`](crate::Config#structfield.time_precision) from it. The
    /// default, 1 s, is right for every lock.
    fn time_precision(&self) -> std::time::Duration {
        crate::config::DEFAULT_TIME_PRECISION
    }

    /// A stream of every change of the lock, if the store can push them. Each item is the lock
    /// as seen then; errors are reported and the stream keeps going (the store re-establishes
    /// it). The default is `None`: the elector polls.
    fn watch(
        &self,
    ) -> Option<futures_util::stream::BoxStream<'static, Result<Sighting, LockError>>> {
        None
    }

    /// Records a Kubernetes-style event about the lock ("became leader", "stopped leading"),
    /// if the lock is set up to. The default does nothing.
    fn record_event(&self, message: &str) -> impl Future<Output = ()> + Send {
        let _ = message;
        std::future::ready(())
    }

    /// Performs `request`, as a driver does with [`crate::Action::Lock`].
    fn execute(&self, request: LockRequest) -> impl Future<Output = LockResult> + Send {
        async move {
            match request {
                LockRequest::Get => self.get().await.map(LockResponse::Record),
                LockRequest::Create(record) => self.create(record).await.map(LockResponse::Written),
                LockRequest::Update { expected, record } => self
                    .update(expected, record)
                    .await
                    .map(LockResponse::Written),
            }
        }
    }
}
