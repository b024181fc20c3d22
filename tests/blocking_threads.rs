//! The blocking driver leaves no thread behind: a test binary of its own, so that the
//! process's thread count is this test's alone.
#![cfg(feature = "blocking")]
#![allow(clippy::disallowed_methods)] // this test reads the real clock

mod common;

use std::thread::sleep;
use std::time::{Duration, Instant};

use common::fast;
use leasehold::blocking::LeaderElector;
use leasehold::{Config, MemoryLock, Observation};

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Fifty watching followers and their leader shut down: every driver, watch, call and work
/// thread has ended (before: one watch thread per follower stayed until the lock next changed).
#[test]
fn shutdown_leaves_no_thread_behind() {
    let baseline = threads();
    if baseline == 0 {
        return; // not Linux: no /proc to count with
    }
    let lock = MemoryLock::new();
    let handles: Vec<_> = (0..51)
        .map(|i| {
            let config = Config {
                observation: Observation::Watch,
                ..fast(&format!("n{i}"))
            };
            LeaderElector::builder(config, lock.clone())
                .on_started_leading(|leader| leader.stop.wait())
                .on_stopped_leading(|| {})
                .build()
                .expect("valid")
                .spawn()
        })
        .collect();
    sleep(Duration::from_millis(500));
    assert!(threads() > baseline + 100, "watch threads are running");
    for h in handles {
        h.shutdown();
    }
    let start = Instant::now();
    while threads() > baseline && start.elapsed() < Duration::from_secs(2) {
        sleep(Duration::from_millis(20));
    }
    assert_eq!(threads(), baseline, "threads left behind");
}
