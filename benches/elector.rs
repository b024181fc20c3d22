//! How fast the pure parts are. Run with `cargo bench --bench elector --features sim`.
//!
//! Std-only timing (no benchmark framework): each case runs for about a second and prints the
//! mean time per iteration. Numbers depend on the machine; compare runs on the same one.
#![allow(clippy::disallowed_methods)] // a benchmark reads the real clock

use std::hint::black_box;
use std::time::{Duration, Instant as StdInstant};

use leasehold::{Action, Config, Elector, Identity, Input, Instant, MemoryLock, Now, Timestamp};

fn bench(name: &str, mut f: impl FnMut() -> u64) {
    // Warm up, then time batches until a second has passed.
    for _ in 0..1000 {
        black_box(f());
    }
    let start = StdInstant::now();
    let mut iterations = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        for _ in 0..1000 {
            black_box(f());
        }
        iterations += 1000;
    }
    let per = start.elapsed().as_nanos() as f64 / iterations as f64;
    println!("{name:<56} {per:>8.0} ns/iter  ({iterations} iterations)");
}

fn now(ms: u64) -> Now {
    Now::new(Instant::from_millis(ms), Timestamp::UNIX_EPOCH)
}

fn drain(e: &mut Elector, lock: &MemoryLock, at: Now) -> Instant {
    loop {
        match e.poll_action() {
            Action::Lock { op, request, .. } => {
                let result = lock.execute(&request);
                e.handle_input(Input::LockResult {
                    now: at,
                    op,
                    result,
                });
            }
            Action::Emit(_) => {}
            Action::SleepUntil { at, .. } => return at,
            Action::Done => return Instant::MAX,
        }
    }
}

fn main() {
    let config = Config::new(Identity::new("bench").expect("non-empty"));

    bench("elector: new + acquire on an in-memory lock", || {
        let lock = MemoryLock::new();
        let mut e = Elector::new(config.clone(), now(0), 1).expect("valid");
        drain(&mut e, &lock, now(0)).as_nanos()
    });

    let lock = MemoryLock::new();
    let mut e = Elector::new(config.clone(), now(0), 1).expect("valid");
    let mut wake = drain(&mut e, &lock, now(0));
    bench(
        "elector: one fast-path renewal (timeout, write, drain)",
        || {
            let at = Now::new(wake, Timestamp::UNIX_EPOCH);
            e.handle_input(Input::Timeout(at));
            wake = drain(&mut e, &lock, at);
            wake.as_nanos()
        },
    );

    let record = r#"{"holderIdentity":"bananapi","leaseDurationSeconds":15,"acquireTime":"2017-10-10T00:08:42Z","renewTime":"2018-03-14T03:01:42Z","leaderTransitions":0}"#;
    bench("record: decode the annotation JSON", || {
        let r = leasehold::LeaderElectionRecord::from_json(record).expect("valid");
        u64::from(r.lease_duration_seconds)
    });
    let decoded = leasehold::LeaderElectionRecord::from_json(record).expect("valid");
    bench("record: encode the annotation JSON", || {
        decoded.to_json().len() as u64
    });

    #[cfg(feature = "sim")]
    {
        let scenario = leasehold::sim::Scenario::new(config);
        let mut seed = 0;
        let start = StdInstant::now();
        let mut runs = 0u64;
        let mut simulated = Duration::ZERO;
        while start.elapsed() < Duration::from_secs(2) {
            let outcome = leasehold::sim::run(&scenario.params(seed));
            simulated += outcome.elector_time;
            seed += 1;
            runs += 1;
        }
        let per = start.elapsed().as_secs_f64() * 1e3 / runs as f64;
        let speedup = simulated.as_secs_f64() / start.elapsed().as_secs_f64();
        println!(
            "{:<56} {per:>8.3} ms/run   ({runs} runs, {speedup:.0}x real time, summed over electors)",
            "sim: one swarm run with every fault"
        );
    }
}
