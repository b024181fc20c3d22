//! A deterministic simulator: many real [`Elector`](crate::Elector)s, one linearizable lock,
//! clocks running at different rates, latency, loss, partitions, pauses, crashes, restarts and
//! graceful shutdowns, all derived from one seed.
//!
//! Use it to check your own timing configuration before you ship it:
//!
//! ```
//! use std::time::Duration;
//! use leasehold::{Config, Identity};
//! use leasehold::sim::{self, Scenario};
//!
//! let mut config = Config::new(Identity::new("template")?);
//! config.lease_duration = Duration::from_secs(30);
//! config.renew_deadline = Duration::from_secs(20);
//! let mut scenario = Scenario::new(config);
//! scenario.clock_rate_ratio = Some(1.4); // our clocks may run up to 40 % apart
//! let report = sim::check(&scenario, 0..20);
//! assert_eq!(report.violations(), 0, "{report}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What a run is
//!
//! A run has two phases. In the *fault phase* every fault the [`Params`] enable strikes at
//! random; in addition the leader is crashed (no release) at 30 % of the phase and shut down
//! gracefully at 60 %, which gives the failover and handover samples. In the *liveness phase*
//! faults stop: partitions heal, pauses end, crashed processes restart, nothing is dropped.
//!
//! The lock behaves like the Kubernetes API server, not like a kinder store: an update that
//! changes nothing is a no-op answered with the unchanged version; times are stored at the
//! lock's precision (whole seconds in some runs, like the annotation locks); an administrator
//! deletes the lock, foreign tools write the object without touching the record (labels, other
//! annotations), and in some runs every create fails with NotFound during the fault phase, as
//! for a missing namespace. Wall clocks step back and forth.
//!
//! # What is checked
//!
//! * **Safety**: the real-time intervals during which each identity believes it leads
//!   (`is_leader` on its own clock, from [`Event::StartedLeading`](crate::Event) until its
//!   `leader_until`, or until it stops or crashes if earlier) never overlap between different
//!   identities.
//! * The lock's versions only rise; an elector never has two operations outstanding; fencing
//!   tokens strictly rise from one identity's term to the next's.
//! * **Load**: no elector issues more than
//!   [`MAX_OPS_PER_RETRY_PERIOD`](crate::elector::MAX_OPS_PER_RETRY_PERIOD) operations within
//!   one retry period of its clock, whatever the faults: no busy loop.
//! * **Liveness**: once faults stop, some candidate leads within [`Params::liveness_bound`],
//!   and from then on leadership is stable: from the end of that bound to the end of the run
//!   (one lease duration) one term lasts throughout. A leader that never renews, or terms that
//!   keep ending, fail this.
//!
//! Safety must hold whenever the clock-rate ratio is below `lease_duration / renew_deadline`
//! (see the crate docs for the proof); above it, some seeds find overlaps, which shows the
//! checker is not vacuous.
//!
//! # Reproducing a failure
//!
//! Every run is a pure function of its [`Params`], and `Params` of the scenario and the seed.
//! A failing run's [`Outcome`] prints the seed and every derived parameter; `--seed N
//! --timeline` on the `simulate` example replays it with a readable timeline.

mod clock;
mod world;

pub mod shards;
pub mod strategy;

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use crate::config::{Config, Observation};
use crate::elector::rng::Rng;

/// What to simulate. Every `None` is derived from the seed ("swarm" testing: each seed also
/// picks its own fault mix).
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The configuration under test; each node gets a copy with its own identity. Its
    /// `observation` decides polling or watching unless [`Scenario::watch`] overrides it.
    pub elector: Config,
    /// Candidates (derived: 2 to 5).
    pub nodes: Option<usize>,
    /// The largest ratio of the fastest to the slowest clock rate; every node's rate stays in
    /// `[1, ratio]`, even when rates change (derived: up to 99 % of the safe bound).
    pub clock_rate_ratio: Option<f64>,
    /// Per-message latency, uniform in `[min, max]` (derived: 1-5 ms up to 20-200 ms).
    pub latency: Option<(Duration, Duration)>,
    /// Probability that a request, and separately a response, is lost (derived: up to 10 % with
    /// faults on, none with faults off).
    pub loss: Option<f64>,
    /// Followers watch the lock (overrides the config's `observation`).
    pub watch: Option<bool>,
    /// Random faults (crashes, pauses, partitions, shutdowns, clock-rate changes, watch
    /// anomalies) during the fault phase. The scheduled leader crash and shutdown happen either
    /// way.
    pub faults: bool,
    /// Length of the fault phase (derived: 8 to 20 lease durations).
    pub fault_phase: Option<Duration>,
    /// Keep a readable timeline of the run in [`Outcome::timeline`].
    pub timeline: bool,
    /// An administrator deletes the lock now and then during the fault phase (derived: half
    /// the seeds with faults on).
    pub deletions: Option<bool>,
    /// Foreign tools write the lock object without changing its record (derived: half the
    /// seeds with faults on).
    pub foreign_writes: Option<bool>,
    /// Every create answers NotFound during the fault phase, as for a missing namespace
    /// (derived: one seed in eight with faults on).
    pub missing_namespace: Option<bool>,
    /// The lock stores whole seconds, like the annotation locks, when the configuration allows
    /// it (derived: half the seeds).
    pub coarse_times: Option<bool>,
    /// Wall clocks step back and forth during the fault phase (derived: half the seeds with
    /// faults on).
    pub wall_steps: Option<bool>,
}

impl Scenario {
    /// A scenario for `elector` with everything else derived from the seed and faults on.
    pub fn new(elector: Config) -> Self {
        Scenario {
            elector,
            nodes: None,
            clock_rate_ratio: None,
            latency: None,
            loss: None,
            watch: None,
            faults: true,
            fault_phase: None,
            timeline: false,
            deletions: None,
            foreign_writes: None,
            missing_namespace: None,
            coarse_times: None,
            wall_steps: None,
        }
    }

    /// The concrete parameters of the run with `seed`.
    pub fn params(&self, seed: u64) -> Params {
        let mut rng = Rng::new(seed ^ 0x5EED_5EED_5EED_5EED);
        let mut pick = |lo: f64, hi: f64| lo + (hi - lo) * rng.next_f64();
        let mut elector = self.elector.clone();
        if let Some(watch) = self.watch {
            elector.observation = if watch {
                Observation::Watch
            } else {
                Observation::Poll
            };
        }
        let bound = elector.tolerated_clock_rate_ratio();
        let nodes = self.nodes.unwrap_or(2 + (pick(0.0, 4.0) as usize).min(3));
        let clock_rate_ratio = self
            .clock_rate_ratio
            .unwrap_or_else(|| 1.0 + (bound - 1.0).max(0.0) * pick(0.0, 0.99))
            .max(1.0);
        let latency = self.latency.unwrap_or_else(|| {
            let max = Duration::from_millis(pick(5.0, 200.0) as u64);
            (Duration::from_millis(1).min(max), max)
        });
        let (lo, hi) = (latency.0.min(latency.1), latency.1.max(latency.0));
        let derived_loss = if self.faults { pick(0.0, 0.1) } else { 0.0 };
        let loss = self.loss.unwrap_or(derived_loss).clamp(0.0, 1.0);
        let f = if self.faults { 1.0 } else { 0.0 };
        let ld = elector.lease_duration;
        // Mean time between faults of each kind, in lease durations; zero disables it.
        let mut every = |on: bool, lo: f64, hi: f64| {
            let x = pick(lo, hi);
            if on && f > 0.0 && x > 0.0 {
                Some(ld.mul_f64(x))
            } else {
                None
            }
        };
        let crash_every = every(true, 1.0, 6.0);
        let pause_every = every(true, 1.0, 6.0);
        let partition_every = every(true, 1.0, 6.0);
        let shutdown_every = every(true, 2.0, 8.0);
        let rate_change_every = every(true, 0.5, 4.0);
        let watch_anomalies = if self.faults { pick(0.0, 0.2) } else { 0.0 };
        let fault_phase = self
            .fault_phase
            .unwrap_or_else(|| ld.mul_f64(pick(8.0, 20.0)));
        let mut rates = Vec::with_capacity(nodes);
        for i in 0..nodes {
            // Pin the extremes on two nodes so the full ratio is in play, the rest uniform.
            let r = match i {
                0 => 1.0,
                1 => clock_rate_ratio,
                _ => pick(1.0, clock_rate_ratio),
            };
            rates.push(r);
        }
        // Shuffle which node is slow and which is fast.
        for i in (1..nodes).rev() {
            let j = (pick(0.0, (i + 1) as f64) as usize).min(i);
            rates.swap(i, j);
        }
        // Drawn last, so the parameters above stay what they were for every seed.
        let mut choose = |set: Option<bool>, p: f64| {
            let x = pick(0.0, 1.0);
            set.unwrap_or(self.faults && x < p)
        };
        let deletions = choose(self.deletions, 0.5);
        let foreign_writes = choose(self.foreign_writes, 0.5);
        let missing_namespace = choose(self.missing_namespace, 0.125);
        let wall_steps = choose(self.wall_steps, 0.5);
        let coarse = self.coarse_times.unwrap_or(pick(0.0, 1.0) < 0.5);
        let mut coarse_config = elector.clone();
        coarse_config.time_precision = Duration::from_secs(1);
        elector.time_precision = if coarse && coarse_config.validate().is_ok() {
            Duration::from_secs(1)
        } else {
            Duration::from_micros(1)
        };
        let mut every = |on: bool, lo: f64, hi: f64| on.then(|| ld.mul_f64(pick(lo, hi)));
        let delete_every = every(deletions, 2.0, 8.0);
        let foreign_write_every = every(foreign_writes, 0.05, 0.5);
        let wall_step_every = every(wall_steps, 0.5, 4.0);
        Params {
            seed,
            time_precision: elector.time_precision,
            delete_every,
            foreign_write_every,
            missing_namespace,
            wall_step_every,
            renewals_conflict: false,
            elector,
            nodes,
            clock_rate_ratio,
            initial_rates: rates,
            latency: (lo, hi),
            request_loss: loss,
            response_loss: loss,
            crash_every,
            pause_every,
            partition_every,
            shutdown_every,
            rate_change_every,
            watch_anomalies,
            fault_phase,
            restart_delay: Duration::from_millis(pick(0.0, 1000.0) as u64),
            work_stop_delay: ld.mul_f64(pick(0.0, 0.2)),
            timeline: self.timeline,
        }
    }
}

/// Every parameter of one run, derived from a [`Scenario`] and a seed. Printed in full when a
/// run fails, so the run can be replayed.
#[derive(Debug, Clone)]
pub struct Params {
    /// The seed everything in the run derives from.
    pub seed: u64,
    /// The configuration each node runs (with its own identity, `node-<i>`).
    pub elector: Config,
    /// Number of candidates.
    pub nodes: usize,
    /// The band `[1, ratio]` every clock rate stays in.
    pub clock_rate_ratio: f64,
    /// Each node's clock rate at the start (local seconds per true second).
    pub initial_rates: Vec<f64>,
    /// One-way message latency, uniform in this range.
    pub latency: (Duration, Duration),
    /// Probability that a request is lost before reaching the lock.
    pub request_loss: f64,
    /// Probability that a response is lost after the lock applied the request.
    pub response_loss: f64,
    /// Mean time between crashes (no release; restart after `restart_delay`).
    pub crash_every: Option<Duration>,
    /// Mean time between process pauses (inputs queue up while paused).
    pub pause_every: Option<Duration>,
    /// Mean time between partitions of one node from the lock.
    pub partition_every: Option<Duration>,
    /// Mean time between graceful shutdowns.
    pub shutdown_every: Option<Duration>,
    /// Mean time between clock-rate changes (within the band).
    pub rate_change_every: Option<Duration>,
    /// Probability that a watch event is duplicated, and separately that a stale one arrives late.
    pub watch_anomalies: f64,
    /// Length of the fault phase.
    pub fault_phase: Duration,
    /// How long a process that crashed or exited stays down.
    pub restart_delay: Duration,
    /// The longest the leader work takes to stop after a shutdown.
    pub work_stop_delay: Duration,
    /// Keep a readable timeline.
    pub timeline: bool,
    /// The precision the lock stores times at (the elector's configuration says the same).
    pub time_precision: Duration,
    /// Mean time between deletions of the lock by an administrator.
    pub delete_every: Option<Duration>,
    /// Mean time between writes of a foreign tool that leave the record alone.
    pub foreign_write_every: Option<Duration>,
    /// Every create answers NotFound during the fault phase.
    pub missing_namespace: bool,
    /// Mean time between steps of a node's wall clock (up to 3 s, mostly back).
    pub wall_step_every: Option<Duration>,
    /// A broken store: every renewal (an update of a record that names the writer) answers
    /// Conflict, in both phases. Never derived from a seed: leaders cannot stay leaders, so
    /// the liveness checker must report the run. Set it to see that it does.
    pub renewals_conflict: bool,
}

impl Params {
    /// The time after the faults stop within which some candidate must lead:
    /// `op_timeout + restart_delay + 2 * max_retry_interval + lease_duration + 6 * max_latency`.
    ///
    /// Why: within `max(op_timeout, max_latency)` every lost operation has timed out and every
    /// message in flight has landed; crashed or exited processes are back after
    /// `restart_delay`; within one jittered retry period plus a round trip every follower has
    /// read the lock; the holder it names either renews (a leader exists) or not, and then the
    /// followers take over one lease duration (true time never exceeds local time, as rates are
    /// at least 1) and a round trip later, one more retry period if a race cost a read. The
    /// leader work of a node shut down at the end of the fault phase stops within
    /// `work_stop_delay`, which the second retry period covers.
    pub fn liveness_bound(&self) -> Duration {
        let c = &self.elector;
        c.operation_timeout()
            + self.restart_delay
            + c.max_retry_interval() * 2
            + c.lease_duration
            + self.work_stop_delay
            + self.latency.1 * 6
    }

    /// The longest failover after a leader crash with no other fault, in true time: the
    /// config's [`Config::failover_bound`] plus two round trips.
    pub fn failover_bound(&self) -> Duration {
        self.elector.failover_bound() + self.latency.1 * 4
    }

    /// The longest handover after a graceful shutdown with release and no other fault, in true
    /// time from the moment the leader work stopped: the release is read and written (two round
    /// trips), then a follower sees it (at once when watching, else within one jittered retry
    /// period and a round trip) and writes (one more round trip).
    pub fn handover_bound(&self) -> Duration {
        let seen = match self.elector.observation {
            Observation::Watch => self.latency.1,
            Observation::Poll => self.elector.max_retry_interval() + self.latency.1 * 2,
        };
        self.latency.1 * 6 + seen
    }
}

/// Something that must never happen.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Violation {
    /// Two identities believed they led at the same true time.
    Overlap {
        /// The earlier term: identity, true start and end in seconds.
        first: (String, f64, f64),
        /// The later term, which started before the earlier one ended.
        second: (String, f64, f64),
    },
    /// An elector issued an operation while another was outstanding.
    TwoOperationsInFlight {
        /// The node.
        node: usize,
        /// True time in seconds.
        at: f64,
    },
    /// The lock's version did not rise on a write.
    VersionWentBack {
        /// True time in seconds.
        at: f64,
    },
    /// A new identity's term started with a fencing token not above its predecessor's.
    FencingTokenNotIncreasing {
        /// The predecessor's identity and token.
        previous: (String, u64),
        /// The new term's identity and token.
        next: (String, u64),
    },
    /// No candidate led within the liveness bound after the faults stopped.
    NoLeaderAfterFaults {
        /// The bound, in seconds.
        bound: f64,
    },
    /// Once the liveness bound had passed, leadership was not held by one term to the end of
    /// the run: a term ended, or nobody led for a while.
    Unstable {
        /// True time in seconds when leadership changed hands or lapsed.
        at: f64,
    },
    /// An elector issued more operations within one retry period than
    /// [`MAX_OPS_PER_RETRY_PERIOD`](crate::elector::MAX_OPS_PER_RETRY_PERIOD) allows.
    TooManyOperations {
        /// The node.
        node: usize,
        /// Operations within the retry period.
        count: usize,
        /// True time in seconds.
        at: f64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Overlap { first, second } => write!(
                f,
                "overlap: {} led {:.3}s..{:.3}s, {} led {:.3}s..{:.3}s",
                first.0, first.1, first.2, second.0, second.1, second.2
            ),
            Violation::TwoOperationsInFlight { node, at } => {
                write!(f, "node-{node} had two operations in flight at {at:.3}s")
            }
            Violation::VersionWentBack { at } => write!(f, "lock version went back at {at:.3}s"),
            Violation::FencingTokenNotIncreasing { previous, next } => write!(
                f,
                "fencing token did not rise: {} had {}, then {} got {}",
                previous.0, previous.1, next.0, next.1
            ),
            Violation::NoLeaderAfterFaults { bound } => {
                write!(f, "no leader within {bound:.3}s after the faults stopped")
            }
            Violation::Unstable { at } => write!(
                f,
                "leadership changed hands or lapsed at {at:.3}s, after the liveness bound"
            ),
            Violation::TooManyOperations { node, count, at } => write!(
                f,
                "node-{node} issued {count} operations within one retry period at {at:.3}s"
            ),
        }
    }
}

/// What one run found and measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The parameters, for reproduction.
    pub params: Params,
    /// Everything that went wrong (empty for a good run).
    pub violations: Vec<Violation>,
    /// A hash of the whole trace: the same parameters always give the same hash.
    pub trace_hash: u64,
    /// Time from the scheduled leader crash to the next term's start.
    pub failover: Option<Duration>,
    /// Time from the scheduled graceful shutdown of the leader (from the moment its leader work
    /// stopped, when it releases) to the next term's start.
    pub handover: Option<Duration>,
    /// Time from the end of the faults until some candidate led (zero if one already did).
    pub time_to_leader_after_faults: Option<Duration>,
    /// Total time candidates were up, summed over nodes.
    pub elector_time: Duration,
    /// Terms started.
    pub terms: usize,
    /// The timeline, when asked for.
    pub timeline: Vec<String>,
}

impl Outcome {
    /// Whether nothing went wrong.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Outcome {
    /// The verdict, then the seed and every parameter: enough to replay the run.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| d.as_millis().to_string());
        if self.ok() {
            writeln!(
                f,
                "seed {}: ok ({} terms, failover {} ms, handover {} ms)",
                self.params.seed,
                self.terms,
                ms(self.failover),
                ms(self.handover)
            )?;
        } else {
            writeln!(
                f,
                "seed {}: {} violation(s)",
                self.params.seed,
                self.violations.len()
            )?;
            for v in &self.violations {
                writeln!(f, "  {v}")?;
            }
        }
        writeln!(
            f,
            "reproduce with seed={} and {:#?}",
            self.params.seed, self.params
        )
    }
}

/// Runs one simulation.
pub fn run(params: &Params) -> Outcome {
    world::World::new(params.clone()).run()
}

/// Runs `scenario` for every seed in `seeds` and summarises.
pub fn check(scenario: &Scenario, seeds: Range<u64>) -> Report {
    let mut report = Report::default();
    for seed in seeds {
        report.add(run(&scenario.params(seed)));
    }
    report
}

/// A summary of many runs.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Runs made.
    pub runs: usize,
    /// The runs that found violations, in full.
    pub failures: Vec<Outcome>,
    /// Every failover sample.
    pub failovers: Vec<Duration>,
    /// Every handover sample.
    pub handovers: Vec<Duration>,
    /// Total simulated candidate time.
    pub elector_time: Duration,
}

impl Report {
    /// Adds one run.
    pub fn add(&mut self, outcome: Outcome) {
        self.runs += 1;
        self.elector_time += outcome.elector_time;
        self.failovers.extend(outcome.failover);
        self.handovers.extend(outcome.handover);
        if !outcome.ok() {
            self.failures.push(outcome);
        }
    }

    /// Total violations found.
    pub fn violations(&self) -> usize {
        self.failures.iter().map(|o| o.violations.len()).sum()
    }

    /// The `p`-th percentile (0-100) of `samples`, by nearest rank.
    pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
        let mut s = samples.to_vec();
        s.sort();
        let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
        s.get(rank.clamp(1, s.len().max(1)) - 1).copied()
    }
}

impl fmt::Display for Report {
    /// One summary line: `runs=.. violations=.. elector_hours=.. failover_ms p50=.. p99=..
    /// handover_ms p50=.. p99=..`; then each failing run with its reproduction.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| d.as_millis().to_string());
        write!(
            f,
            "runs={} violations={} failed_runs={} elector_hours={:.1} failover_ms p50={} p99={} max={} (n={}) handover_ms p50={} p99={} max={} (n={})",
            self.runs,
            self.violations(),
            self.failures.len(),
            self.elector_time.as_secs_f64() / 3600.0,
            ms(Self::percentile(&self.failovers, 50.0)),
            ms(Self::percentile(&self.failovers, 99.0)),
            ms(self.failovers.iter().max().copied()),
            self.failovers.len(),
            ms(Self::percentile(&self.handovers, 50.0)),
            ms(Self::percentile(&self.handovers, 99.0)),
            ms(self.handovers.iter().max().copied()),
            self.handovers.len(),
        )?;
        for failure in &self.failures {
            write!(f, "\n{failure}")?;
        }
        Ok(())
    }
}
