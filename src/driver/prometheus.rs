//! Leader-election metrics in a [`prometheus_client`] `Registry` the application owns
//! (feature `prometheus`), read from a [`Probe`] at every scrape.
//!
//! ```
//! # #[cfg(feature = "tokio")]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use leasehold::{Config, Identity, MemoryLock};
//! use leasehold::tokio::LeaderElector;
//! use prometheus_client::registry::Registry;
//!
//! let mut registry = Registry::default();
//! let handle = LeaderElector::builder(Config::new(Identity::new("a")?), MemoryLock::new())
//!     .on_started_leading(|leader| async move { leader.cancel.cancelled().await })
//!     .on_stopped_leading(|| {})
//!     .build()?
//!     .spawn();
//! leasehold::prometheus::register(&mut registry, handle.probe());
//! let mut text = String::new();
//! prometheus_client::encoding::text::encode(&mut text, &registry)?;
//! # handle.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Every series carries the lock's name as the label `name` ([`Config::name`](crate::Config::name),
//! by default the lock's `namespace/name`):
//!
//! | metric | type | what |
//! |---|---|---|
//! | `leader_election_master_status` | gauge | 1 while this candidate leads, else 0 (client-go's) |
//! | `leader_election_slowpath_total` | counter | renewals that had to read first (client-go's) |
//! | `leasehold_fencing_token` | gauge | the current term's fencing token (only while leading) |
//! | `leasehold_seconds_since_renewal` | gauge | since the current or last term began or was renewed |
//! | `leasehold_terms_started_total` | counter | terms this candidate began |
//! | `leasehold_terms_lost_total` | counter | terms ended, by `reason` (`renew_deadline_exceeded`, `lock_taken`, `lock_deleted`, `yielded`, `identity_clash`, `shutdown`) |
//! | `leasehold_lock_errors_total` | counter | failed lock operations, by `kind` (`timeout`, `unauthorized`, `unavailable`, ...; lost races are not errors) |

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::Probe;

/// Registers the metrics of the elector behind `probe` in `registry`. Register one probe per
/// elector (several electors, on different locks, may share a registry: the `name` label
/// tells them apart).
pub fn register(registry: &mut Registry, probe: Probe) {
    registry.register_collector(Box::new(Metrics { probe }));
}

/// The collector: reads the probe at every scrape.
struct Metrics {
    probe: Probe,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("name", &self.probe.name())
            .finish()
    }
}

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let name = self.probe.name();
        let labels = [("name", name)];
        let state = self.probe.state();
        let counts = self.probe.shared.counts();

        let gauge = ConstGauge::new(i64::from(self.probe.is_leader()));
        gauge.encode(
            encoder
                .encode_descriptor(
                    "leader_election_master_status",
                    "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease.",
                    None,
                    gauge.metric_type(),
                )?
                .encode_family(&labels)?,
        )?;

        let counter = ConstCounter::new(state.slow_path_renewals);
        counter.encode(
            encoder
                .encode_descriptor(
                    "leader_election_slowpath",
                    "Total number of slow path exercised in renewing leader leases. 'name' is the string used to identify the lease.",
                    None,
                    counter.metric_type(),
                )?
                .encode_family(&labels)?,
        )?;

        if let Some(token) = state.token {
            let gauge = ConstGauge::new(i64::try_from(token.0).unwrap_or(i64::MAX));
            gauge.encode(
                encoder
                    .encode_descriptor(
                        "leasehold_fencing_token",
                        "The fencing token of the current term, while this candidate leads.",
                        None,
                        gauge.metric_type(),
                    )?
                    .encode_family(&labels)?,
            )?;
        }

        if let Some(since) = self.probe.since_renewal() {
            let gauge = ConstGauge::new(since.as_secs_f64());
            gauge.encode(
                encoder
                    .encode_descriptor(
                        "leasehold_seconds_since_renewal",
                        "Seconds since the current or last term began or was renewed.",
                        None,
                        gauge.metric_type(),
                    )?
                    .encode_family(&labels)?,
            )?;
        }

        let counter = ConstCounter::new(counts.terms_started);
        counter.encode(
            encoder
                .encode_descriptor(
                    "leasehold_terms_started",
                    "Terms this candidate began.",
                    None,
                    counter.metric_type(),
                )?
                .encode_family(&labels)?,
        )?;

        let mut lost = encoder.encode_descriptor(
            "leasehold_terms_lost",
            "Terms that ended, by reason.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, n) in &counts.terms_lost {
            ConstCounter::new(*n)
                .encode(lost.encode_family(&[("name", name), ("reason", reason)])?)?;
        }

        let mut errors = encoder.encode_descriptor(
            "leasehold_lock_errors",
            "Failed lock operations (lost races are not errors), by kind.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (kind, n) in &counts.lock_errors {
            ConstCounter::new(*n)
                .encode(errors.encode_family(&[("name", name), ("kind", kind)])?)?;
        }
        Ok(())
    }
}
