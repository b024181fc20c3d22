//! A driver in plain synchronous Rust: the model for writing your own.
//!
//! Three candidates share one in-memory lock. A single loop drives all three electors in real
//! time. At 3 s the leader crashes (we simply stop driving it, without a release); another takes
//! over once the lease has run out. At 8 s the new leader shuts down gracefully and releases;
//! the third takes over within a retry period. The program checks, every few milliseconds,
//! that no two candidates believe they lead, and exits non-zero if they ever do.
//!
//! Run it with `cargo run --example custom_driver`.
#![allow(clippy::disallowed_methods)] // a driver is where the real clocks are read

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leasehold::{
    Action, Config, Elector, Event, Identity, Input, Instant, MemoryLock, Now, Timestamp,
};

/// The driver's clocks, converted to the core's types once per input.
struct Clock {
    origin: std::time::Instant,
    wall_origin_micros: i64,
}

impl Clock {
    fn now(&self) -> Now {
        let elapsed = self.origin.elapsed();
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let micros = i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX);
        let wall = Timestamp::from_unix_micros(self.wall_origin_micros.saturating_add(micros))
            .unwrap_or(Timestamp::UNIX_EPOCH);
        Now::new(Instant::from_nanos(nanos), wall)
    }
}

struct Node {
    name: &'static str,
    elector: Elector,
    wake: Instant,
    crashed: bool,
    finished: bool,
}

impl Node {
    /// Carries out actions until the elector sleeps: the whole driving contract.
    fn drain(&mut self, lock: &MemoryLock, clock: &Clock, log: &mut Vec<(Instant, String)>) {
        loop {
            match self.elector.poll_action() {
                // The in-memory lock answers at once, so the result goes straight back.
                Action::Lock { op, request, .. } => {
                    let result = lock.execute(&request);
                    let now = clock.now();
                    self.elector
                        .handle_input(Input::LockResult { now, op, result });
                }
                Action::Emit(event) => {
                    let stopped = matches!(event, Event::StoppedLeading { .. });
                    if !matches!(event, Event::Renewed { .. }) {
                        log.push((
                            clock.now().instant,
                            format!("{}: {}", self.name, describe(&event)),
                        ));
                    }
                    // After every stop, whatever its reason: this example's "leader work" stops
                    // instantly; a real driver would cancel it and feed this input once it has
                    // returned (until then the elector neither contends again nor releases).
                    if stopped {
                        self.elector
                            .handle_input(Input::LeaderWorkStopped(clock.now()));
                    }
                }
                Action::SleepUntil { at, .. } => {
                    self.wake = at;
                    return;
                }
                Action::Done => {
                    self.finished = true;
                    return;
                }
            }
        }
    }
}

fn describe(event: &Event) -> String {
    match event {
        Event::StartedLeading { token, .. } => format!("started leading (fencing token {token})"),
        Event::StoppedLeading { reason } => format!("stopped leading ({reason:?})"),
        Event::NewLeader(Some(who)) => format!("sees {who} as leader"),
        Event::NewLeader(None) => "sees the lock released".into(),
        Event::Released => "released the lock".into(),
        other => format!("{other:?}"),
    }
}

fn main() -> ExitCode {
    let clock = Clock {
        origin: std::time::Instant::now(),
        wall_origin_micros: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(0)),
    };
    let lock = MemoryLock::new();
    let mut log = Vec::new();
    let mut nodes: Vec<Node> = ["a", "b", "c"]
        .into_iter()
        .enumerate()
        .map(|(seed, name)| {
            let mut config = Config::new(Identity::new(name).expect("non-empty"));
            config.lease_duration = Duration::from_secs(2);
            config.renew_deadline = Duration::from_millis(1500);
            config.retry_period = Duration::from_millis(250);
            config.release_on_cancel = true;
            let elector = Elector::new(config, clock.now(), seed as u64).expect("valid config");
            Node {
                name,
                elector,
                wake: Instant::ZERO,
                crashed: false,
                finished: false,
            }
        })
        .collect();
    for node in &mut nodes {
        node.drain(&lock, &clock, &mut log);
    }

    let (crash_at, shutdown_at, end_at) = (
        Instant::from_secs(3),
        Instant::from_secs(8),
        Instant::from_secs(12),
    );
    let (mut crashed_leader, mut stopped_leader) = (None, None);
    let mut last_leader: Option<usize> = None;
    let mut changes = Vec::new(); // (instant, new leader)
    loop {
        let now = clock.now();
        if now.instant >= end_at {
            break;
        }
        let leading: Vec<usize> = (0..nodes.len())
            .filter(|&i| !nodes[i].crashed && nodes[i].elector.is_leader(now.instant))
            .collect();
        if leading.len() > 1 {
            eprintln!("two leaders at {}: {leading:?}", now.instant);
            return ExitCode::FAILURE;
        }
        if let Some(&i) = leading.first()
            && last_leader != Some(i)
        {
            changes.push((now.instant, i));
            last_leader = Some(i);
        }
        // The scenario: crash the first leader, then gracefully stop the second.
        if crashed_leader.is_none()
            && now.instant >= crash_at
            && let Some(&i) = leading.first()
        {
            nodes[i].crashed = true;
            crashed_leader = Some((i, now.instant));
            log.push((
                now.instant,
                format!("{}: CRASHED (no release)", nodes[i].name),
            ));
        }
        if stopped_leader.is_none()
            && now.instant >= shutdown_at
            && let Some(&i) = leading.first()
        {
            stopped_leader = Some((i, now.instant));
            log.push((
                now.instant,
                format!("{}: shutting down gracefully", nodes[i].name),
            ));
            nodes[i].elector.handle_input(Input::Shutdown(now));
            nodes[i].drain(&lock, &clock, &mut log);
        }
        // Wake every elector whose timer is due.
        for node in nodes.iter_mut().filter(|n| !n.crashed && !n.finished) {
            if now.instant >= node.wake {
                node.elector.handle_input(Input::Timeout(now));
                node.drain(&lock, &clock, &mut log);
            }
        }
        // Sleep until the next timer, but look at the world at least every 5 ms.
        let next = nodes
            .iter()
            .filter(|n| !n.crashed && !n.finished)
            .map(|n| n.wake)
            .min()
            .unwrap_or(end_at);
        let nap = (next - clock.now().instant).min(Duration::from_millis(5));
        std::thread::sleep(nap);
    }

    for (at, line) in &log {
        println!("[{:>8}] {line}", at.to_string());
    }
    let after = |t: Instant| {
        changes
            .iter()
            .find(|(at, _)| *at > t)
            .map(|(at, _)| *at - t)
    };
    let (Some((_, crash)), Some((_, stop))) = (crashed_leader, stopped_leader) else {
        eprintln!("the scenario did not run: no leader to crash or stop");
        return ExitCode::FAILURE;
    };
    match (after(crash), after(stop)) {
        (Some(failover), Some(handover)) => {
            println!(
                "failover after crash:      {:>6} ms (lease 2 s + up to one jittered retry)",
                failover.as_millis()
            );
            println!(
                "handover after shutdown:   {:>6} ms (release, seen at the next retry)",
                handover.as_millis()
            );
            println!(
                "leaders, in order: {}",
                changes
                    .iter()
                    .map(|(_, i)| nodes[*i].name)
                    .collect::<Vec<_>>()
                    .join(" -> ")
            );
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("no failover or handover observed");
            ExitCode::FAILURE
        }
    }
}
