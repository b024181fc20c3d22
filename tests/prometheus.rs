//! The `prometheus` feature: the elector's metrics in an application's prometheus-client
//! `Registry`, scraped as the text format and parsed.
#![cfg(all(feature = "prometheus", feature = "tokio"))]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{fast, record};
use leasehold::lock::Lock;
use leasehold::tokio::LeaderElector;
use leasehold::{LeaderElectionRecord, LockError, LockErrorKind, MemoryLock, Version};
use prometheus_client::registry::Registry;
use tokio::time::sleep;

/// Each sample of the text format: `name{labels}` (labels as written) and its value.
fn scrape(registry: &Registry) -> BTreeMap<String, f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encodes");
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
        samples.insert(series.to_string(), value);
    }
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text: {text}");
    samples
}

#[tokio::test(start_paused = true)]
async fn the_metrics_are_in_the_applications_registry() {
    let lock = MemoryLock::new();
    let mut registry = Registry::default();
    let handle = LeaderElector::builder(fast("a"), lock.clone())
        .on_started_leading(|leader| async move { leader.cancel.cancelled().await })
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn();
    leasehold::prometheus::register(&mut registry, handle.probe());
    sleep(Duration::from_secs(1)).await;
    let m = scrape(&registry);
    assert_eq!(
        m["leader_election_master_status{name=\"memory\"}"], 1.0,
        "{m:?}"
    );
    assert_eq!(m["leader_election_slowpath_total{name=\"memory\"}"], 0.0);
    assert_eq!(m["leasehold_fencing_token{name=\"memory\"}"], 0.0);
    assert_eq!(m["leasehold_terms_started_total{name=\"memory\"}"], 1.0);
    assert!(
        m["leasehold_seconds_since_renewal{name=\"memory\"}"] < 0.3,
        "{m:?}"
    );
    // Someone else takes the lock: the term is lost, by that reason.
    let current = lock.get().expect("present");
    lock.update(&current.version, record("other", 2))
        .expect("taken");
    sleep(Duration::from_secs(1)).await;
    let m = scrape(&registry);
    assert_eq!(m["leader_election_master_status{name=\"memory\"}"], 0.0);
    assert!(!m.contains_key("leasehold_fencing_token{name=\"memory\"}"));
    assert_eq!(
        m["leasehold_terms_lost_total{name=\"memory\",reason=\"lock_taken\"}"], 1.0,
        "{m:?}"
    );
    handle.shutdown().await;
}

/// A lock that refuses everything.
struct Refusing;

impl Lock for Refusing {
    async fn get(&self) -> Result<leasehold::lock::Sighting, LockError> {
        Err(LockError::new(LockErrorKind::Unauthorized, "forbidden"))
    }
    async fn create(&self, _: LeaderElectionRecord) -> Result<Version, LockError> {
        Err(LockError::new(LockErrorKind::Unauthorized, "forbidden"))
    }
    async fn update(&self, _: Version, _: LeaderElectionRecord) -> Result<Version, LockError> {
        Err(LockError::new(LockErrorKind::Unauthorized, "forbidden"))
    }
    fn describe(&self) -> String {
        "ns/refusing".into()
    }
}

#[tokio::test(start_paused = true)]
async fn lock_errors_are_counted_by_kind_and_names_tell_electors_apart() {
    let mut registry = Registry::default();
    let refused = LeaderElector::builder(fast("a"), Refusing)
        .on_started_leading(|_| async {})
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn();
    let fine = LeaderElector::builder(fast("b"), MemoryLock::new())
        .on_started_leading(|leader| async move { leader.cancel.cancelled().await })
        .on_stopped_leading(|| {})
        .build()
        .expect("valid")
        .spawn();
    leasehold::prometheus::register(&mut registry, refused.probe());
    leasehold::prometheus::register(&mut registry, fine.probe());
    sleep(Duration::from_secs(2)).await;
    let m = scrape(&registry);
    let errors = m["leasehold_lock_errors_total{name=\"ns/refusing\",kind=\"unauthorized\"}"];
    assert!(errors >= 5.0, "{m:?}");
    assert_eq!(
        m["leader_election_master_status{name=\"ns/refusing\"}"],
        0.0
    );
    assert_eq!(m["leader_election_master_status{name=\"memory\"}"], 1.0);
    assert_eq!(
        refused.probe().name(),
        "ns/refusing",
        "named after the lock"
    );
    refused.shutdown().await;
    fine.shutdown().await;
}
