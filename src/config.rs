//! Configuration of an elector, its validation, and the numbers it implies.

use std::time::Duration;

use crate::record::{Identity, MAX_INT32, UNKNOWN_LEADER};

/// client-go's `JitterFactor`: a follower waits `retry_period * (1 + jitter * u)`, `u` uniform
/// in `[0, 1)`, between attempts to acquire.
pub const DEFAULT_JITTER: f64 = 1.2;
/// client-go's default lease duration.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// client-go's default renew deadline.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// client-go's default retry period.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// client-go's fixed `JitterFactor`, which its validation always uses: `renewDeadline` must
/// exceed `1.2 * retryPeriod` whatever jitter is configured.
pub const CLIENT_GO_JITTER: f64 = 1.2;
/// The coarsest time precision of any lock (the annotation locks store whole seconds); the
/// default of [`Config::time_precision`](Config#structfield.time_precision).
pub const DEFAULT_TIME_PRECISION: Duration = Duration::from_secs(1);

/// What an elector does once it has lost leadership.
///
/// `#[non_exhaustive]`, as every configuration choice: more policies may come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AfterLoss {
    /// Finish, as client-go's one-shot `Run` does: the process is expected to exit.
    #[default]
    Finish,
    /// Go back to contending for the lock.
    Recontend,
}

/// How a follower learns that the lock changed.
///
/// `#[non_exhaustive]`, as every configuration choice: more ways of observing may come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Observation {
    /// The elector reads the lock every retry period (jittered), as client-go does.
    #[default]
    Poll,
    /// The driver delivers every change of the lock as [`crate::Input::Observed`]. Followers
    /// stop polling a held lock and wake exactly when it expires. If the stream silently stops,
    /// the elector stays safe and still live: it then reads the lock once per lease duration.
    Watch,
}

/// How an elector contends. Build one with [`Config::new`] and adjust the public fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// This candidate's identity, written as `holderIdentity`. Must be unique per process.
    pub identity: Identity,
    /// A name for the lock in messages and metrics (client-go's `Name`), e.g. `"ns/name"`.
    pub name: String,
    /// How long followers wait after they last saw the record change before they take over.
    /// Written to the record in whole seconds, so it must be a whole number of seconds.
    pub lease_duration: Duration,
    /// How long after issuing its last successful write a leader keeps leading. A leader stops
    /// at that instant even if a renewal is still in flight.
    pub renew_deadline: Duration,
    /// The interval between attempts: renewals, and (jittered) attempts to acquire.
    pub retry_period: Duration,
    /// The jitter factor of the acquire loop (client-go's `JitterFactor`).
    pub jitter: f64,
    /// The deadline of a single lock operation. `None` means client-go's HTTP timeout,
    /// `max(1s, renew_deadline / 2)`, so one hung request cannot cost leadership.
    pub operation_timeout: Option<Duration>,
    /// Release the lock on shutdown (client-go's `ReleaseOnCancel`), after the leader work has
    /// stopped and only if the lock still names this candidate.
    pub release_on_cancel: bool,
    /// What to do after losing leadership.
    pub after_loss: AfterLoss,
    /// How followers learn of changes.
    pub observation: Observation,
    /// Coordinated leader election (client-go's `Coordinated`, KEP-4355): the API server picks
    /// the holder; this candidate never creates or takes over the lock, only renews it while
    /// the lock names it, and steps down when the lock names a preferred holder.
    pub coordinated: bool,
    /// The finest step of time the lock stores in `renewTime` and `acquireTime`: 1 µs for a
    /// Lease and the in-memory lock, 1 s for the Endpoints and ConfigMap annotation locks.
    /// Every record the elector writes differs from the one it replaces at this precision (a
    /// renewal's `renewTime` strictly increases; takeovers and releases change the holder), so
    /// no write of the elector can be an API-server no-op and no renewal can look unchanged
    /// to a follower. The drivers set it from the lock;
    /// the default, 1 s, is right for every lock.
    pub time_precision: Duration,
}

impl Config {
    /// client-go's defaults (15 s / 10 s / 2 s, jitter 1.2, one-shot, polling) for `identity`.
    pub fn new(identity: Identity) -> Self {
        Config {
            identity,
            name: String::new(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
            jitter: DEFAULT_JITTER,
            operation_timeout: None,
            release_on_cancel: false,
            after_loss: AfterLoss::Finish,
            observation: Observation::Poll,
            coordinated: false,
            time_precision: DEFAULT_TIME_PRECISION,
        }
    }

    /// Checks the configuration: first client-go's rules in client-go's order, with equivalent
    /// messages, then leasehold's own (see [`ConfigError`]).
    ///
    /// # Errors
    /// The first rule the configuration breaks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (ld, rd, rp) = (self.lease_duration, self.renew_deadline, self.retry_period);
        // client-go's rules, in its order (leaderelection.go, NewLeaderElector). Rules 6 and 7
        // (nil callbacks) are the driver builders' (same messages); rule 8 (nil lock) cannot be
        // broken in Rust: the types require a lock.
        if ld <= rd {
            return Err(ConfigError::LeaseNotLongerThanRenewDeadline);
        }
        if !self.jitter.is_finite() || self.jitter < 0.0 {
            return Err(ConfigError::InvalidJitter(self.jitter));
        }
        // client-go checks with its fixed factor, whatever jitter it is given.
        if rd.as_secs_f64() <= CLIENT_GO_JITTER * rp.as_secs_f64() {
            return Err(ConfigError::RenewDeadlineNotAboveJitteredRetry);
        }
        if ld.is_zero() {
            return Err(ConfigError::ZeroLeaseDuration);
        }
        if rd.is_zero() {
            return Err(ConfigError::ZeroRenewDeadline);
        }
        if rp.is_zero() {
            return Err(ConfigError::ZeroRetryPeriod);
        }
        // Rule 9 ("Lock identity is empty") is enforced by `Identity::new`.

        // leasehold's own rules.
        if ld.subsec_nanos() != 0 {
            return Err(ConfigError::LeaseNotWholeSeconds(ld));
        }
        if ld.as_secs() > u64::from(MAX_INT32) {
            return Err(ConfigError::LeaseTooLong(ld));
        }
        if self.identity.as_str() == UNKNOWN_LEADER {
            return Err(ConfigError::ReservedIdentity);
        }
        if rd.as_secs_f64() <= self.jitter * rp.as_secs_f64() {
            return Err(ConfigError::RenewDeadlineNotAboveConfiguredJitter(
                self.jitter,
            ));
        }
        let precision = self.time_precision;
        if precision < Duration::from_micros(1) || precision > DEFAULT_TIME_PRECISION {
            return Err(ConfigError::TimePrecision(precision));
        }
        // A renewal waits until the wall clock has moved past the last renewTime at the lock's
        // precision, so the leader renews every max(retry_period, time_precision) at worst.
        if rd.as_secs_f64() <= CLIENT_GO_JITTER * precision.as_secs_f64() {
            return Err(ConfigError::RenewDeadlineNotAboveTimePrecision(precision));
        }
        let op = self.operation_timeout();
        if op.is_zero() || op > rd {
            return Err(ConfigError::OperationTimeout { op, rd });
        }
        Ok(())
    }

    /// The deadline of one lock operation (see [`Config::operation_timeout`](Self#structfield.operation_timeout)).
    pub fn operation_timeout(&self) -> Duration {
        self.operation_timeout
            .unwrap_or_else(|| (self.renew_deadline / 2).max(Duration::from_secs(1)))
    }

    /// The largest ratio of the fastest to the slowest clock *rate* among the candidates under
    /// which leadership terms of different candidates never overlap: `lease_duration /
    /// renew_deadline` (see the crate docs for the proof). 1.5 with the defaults: clocks may
    /// run up to 50 % apart.
    pub fn tolerated_clock_rate_ratio(&self) -> f64 {
        self.lease_duration.as_secs_f64() / self.renew_deadline.as_secs_f64()
    }

    /// The longest time, after a leader crashes, before a follower that reads the lock with no
    /// latency starts leading, measured on the follower's clock: the leader's last write is seen
    /// within one jittered retry period (or at once, when watching), the follower then waits one
    /// lease duration. Add twice the worst operation latency for a real API server.
    /// 19.4 s with the defaults (15 s when watching).
    pub fn failover_bound(&self) -> Duration {
        let seen_within = match self.observation {
            Observation::Poll => self.max_retry_interval(),
            Observation::Watch => Duration::ZERO,
        };
        self.lease_duration.saturating_add(seen_within)
    }

    /// The longest interval between two attempts of a follower: `retry_period * (1 + jitter)`.
    pub fn max_retry_interval(&self) -> Duration {
        self.retry_period
            .saturating_add(mul_f64_saturating(self.retry_period, self.jitter))
    }
}

/// `d * f` for finite non-negative `f`, saturating instead of panicking.
pub(crate) fn mul_f64_saturating(d: Duration, f: f64) -> Duration {
    let nanos = d.as_nanos() as f64 * f;
    if nanos.is_finite() && nanos >= 0.0 {
        // `as` saturates for floats beyond u64.
        Duration::from_nanos(nanos as u64)
    } else {
        Duration::ZERO
    }
}

/// A configuration that is unsafe or cannot work. The first six mirror client-go's checks
/// (with the same messages); the rest are leasehold's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// client-go rule 1.
    #[error("leaseDuration must be greater than renewDeadline")]
    LeaseNotLongerThanRenewDeadline,
    /// client-go rule 2 (with the configured jitter).
    #[error("renewDeadline must be greater than retryPeriod*JitterFactor")]
    RenewDeadlineNotAboveJitteredRetry,
    /// client-go rule 3.
    #[error("leaseDuration must be greater than zero")]
    ZeroLeaseDuration,
    /// client-go rule 4.
    #[error("renewDeadline must be greater than zero")]
    ZeroRenewDeadline,
    /// client-go rule 5.
    #[error("retryPeriod must be greater than zero")]
    ZeroRetryPeriod,
    /// The jitter factor is negative or not a number.
    #[error("jitter must be a finite number >= 0, got {0}")]
    InvalidJitter(f64),
    /// client-go writes `int(leaseDuration / 1s)`: 1.5 s becomes a 1 s lease (shorter than the
    /// leader assumes) and anything under a second becomes 0, which the Lease API rejects.
    #[error(
        "leaseDuration must be a whole number of seconds (it is written as leaseDurationSeconds), got {0:?}"
    )]
    LeaseNotWholeSeconds(Duration),
    /// More seconds than a Lease's `int32` field can hold.
    #[error("leaseDuration must be at most 2147483647 seconds, got {0:?}")]
    LeaseTooLong(Duration),
    /// The renew deadline must also exceed `jitter * retry_period` for the configured jitter
    /// (client-go's own rule uses its fixed factor 1.2, checked first).
    #[error("renewDeadline must be greater than retryPeriod*jitter ({0})")]
    RenewDeadlineNotAboveConfiguredJitter(f64),
    /// The time precision must be between 1 µs and 1 s.
    #[error("timePrecision must be between 1µs and 1s, got {0:?}")]
    TimePrecision(Duration),
    /// A leader whose lock stores times at this precision renews at most once per precision
    /// step (so that every renewal changes `renewTime`); the renew deadline must leave room
    /// for that, like client-go's rule for the retry period.
    #[error(
        "renewDeadline must be greater than timePrecision*1.2 ({0:?}): the lock stores times at that precision"
    )]
    RenewDeadlineNotAboveTimePrecision(Duration),
    /// The identity MultiLock uses to mean "the locks disagree".
    #[error("identity {UNKNOWN_LEADER:?} is reserved")]
    ReservedIdentity,
    /// A per-operation deadline of zero never lets an operation finish; one longer than the
    /// renew deadline lets a single hung request cost leadership.
    #[error(
        "operationTimeout must be greater than zero and at most renewDeadline ({rd:?}), got {op:?}"
    )]
    OperationTimeout {
        /// The configured operation timeout.
        op: Duration,
        /// The renew deadline.
        rd: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new(Identity::new("me").expect("non-empty"))
    }

    #[test]
    fn defaults_are_client_go_s_and_valid() {
        let c = config();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        assert_eq!(c.jitter, 1.2);
        assert_eq!(c.operation_timeout(), Duration::from_secs(5));
        assert_eq!(c.tolerated_clock_rate_ratio(), 1.5);
        assert_eq!(c.max_retry_interval(), Duration::from_millis(4400));
        assert_eq!(c.failover_bound(), Duration::from_millis(19_400));
        let watch = Config {
            observation: Observation::Watch,
            ..c
        };
        assert_eq!(watch.failover_bound(), Duration::from_secs(15));
    }

    #[test]
    fn operation_timeout_default_follows_client_go() {
        let mut c = config();
        c.lease_duration = Duration::from_secs(2);
        c.renew_deadline = Duration::from_millis(1500);
        c.retry_period = Duration::from_millis(100);
        assert_eq!(c.operation_timeout(), Duration::from_secs(1));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn client_go_rule_uses_its_fixed_factor_whatever_the_jitter() {
        // Before: a jitter below 1 let retry_period >= renew_deadline through, and such a
        // leader never renews in time.
        let mut c = config();
        c.jitter = 0.5;
        c.retry_period = c.renew_deadline;
        assert_eq!(
            c.validate(),
            Err(ConfigError::RenewDeadlineNotAboveJitteredRetry)
        );
        c.retry_period = Duration::from_millis(8_400); // 1.2 * 8.4 s = 10.08 s > 10 s
        assert_eq!(
            c.validate(),
            Err(ConfigError::RenewDeadlineNotAboveJitteredRetry)
        );
        c.retry_period = Duration::from_millis(8_300);
        assert_eq!(c.validate(), Ok(()));
        // A larger jitter tightens the rule further.
        c.jitter = 2.0;
        c.retry_period = Duration::from_secs(5);
        assert_eq!(
            c.validate(),
            Err(ConfigError::RenewDeadlineNotAboveConfiguredJitter(2.0))
        );
    }

    #[test]
    fn time_precision_is_checked_against_the_renew_deadline() {
        let mut c = config();
        c.lease_duration = Duration::from_secs(2);
        c.renew_deadline = Duration::from_millis(1100);
        c.retry_period = Duration::from_millis(200);
        assert_eq!(
            c.validate(),
            Err(ConfigError::RenewDeadlineNotAboveTimePrecision(
                Duration::from_secs(1)
            ))
        );
        c.time_precision = Duration::from_micros(1);
        assert_eq!(c.validate(), Ok(()));
        for bad in [
            Duration::ZERO,
            Duration::from_nanos(999),
            Duration::from_secs(2),
        ] {
            c.time_precision = bad;
            assert_eq!(c.validate(), Err(ConfigError::TimePrecision(bad)));
        }
    }

    #[test]
    fn garbage_durations_are_errors_not_panics() {
        let mut c = config();
        c.lease_duration = Duration::MAX;
        c.renew_deadline = Duration::MAX / 2;
        c.retry_period = Duration::MAX / 4;
        assert!(c.validate().is_err());
        let _ = c.failover_bound();
        let _ = c.max_retry_interval();
        c.jitter = f64::NAN;
        assert_eq!(
            c.validate()
                .map_err(|e| matches!(e, ConfigError::InvalidJitter(_))),
            Err(true)
        );
        c.jitter = f64::INFINITY;
        assert!(c.validate().is_err());
        c.jitter = -1.0;
        assert!(c.validate().is_err());
        assert_eq!(
            mul_f64_saturating(Duration::MAX, 2.0),
            Duration::from_nanos(u64::MAX)
        );
        assert_eq!(
            mul_f64_saturating(Duration::from_secs(1), f64::NAN),
            Duration::ZERO
        );
    }
}
