//! The simulator for shard ownership: real [`ShardMember`]s on one linearizable group of
//! member Leases, with the elector simulator's faults (clock rates, latency, loss, pauses,
//! partitions, crashes and restarts) plus joins, graceful leaves, watch stalls and breaks, and
//! administrators deleting member Leases.
//!
//! ```
//! use std::time::Duration;
//! use leasehold::{Config, Identity};
//! use leasehold::sim::shards::{self, ShardScenario};
//!
//! let mut config = Config::new(Identity::new("template")?);
//! config.lease_duration = Duration::from_secs(30);
//! config.renew_deadline = Duration::from_secs(20);
//! let scenario = ShardScenario::new(config, 64);
//! let report = shards::check(&scenario, 0..3);
//! assert_eq!(report.violations(), 0, "{report}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What is checked
//!
//! * **Safety** ([`ShardViolation::Overlap`]): a shard's work runs, in true time, from its
//!   [`ShardEvent::ShardStarted`] until the earliest of its stop (the simulated work stops
//!   some time after [`ShardEvent::ShardStopped`]), the instant the member's clock reaches
//!   the end of its membership term (the driver's watchdog), and a crash. No two runs of one
//!   shard by different members (or incarnations) overlap. Pauses do not extend a run: as in
//!   the elector simulator, work is taken to stop at the end of the term even if the process
//!   is frozen then.
//! * **Tokens** ([`ShardViolation::TokenNotRising`]): each run of a shard has a higher token
//!   than every earlier run, except across an administrator's deletion of a member Lease
//!   (which can take the highest epoch with it; see the crate docs).
//! * **Load** ([`ShardViolation::TooManyOperations`]): no member issues more than
//!   [`MAX_MEMBER_OPS_PER_RETRY_PERIOD`] operations within one retry period of its clock.
//! * **Liveness** ([`ShardViolation::Unowned`], [`ShardViolation::Misplaced`],
//!   [`ShardViolation::Unstable`]): once the faults stop, within
//!   [`ShardParams::liveness_bound`] every shard runs on exactly the member rendezvous
//!   hashing gives it among the live members, and nothing starts or stops from then on to the
//!   end of the run (one lease duration later).
//! * **Quiet** ([`ShardViolation::SteadyStateLoad`]): in that settled window, a watching
//!   member lists nothing and writes about once per retry period.
//!
//! Every run is a pure function of its [`ShardParams`]; a failure prints them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use super::clock::{LocalClock, PPB};
use crate::config::{Config, Observation};
use crate::elector::rng::Rng;
use crate::elector::{Event, FencingToken, Now, OpId};
use crate::record::Identity;
use crate::shards::hash::Members;
use crate::shards::{
    GroupChange, GroupRequest, GroupResult, MAX_MEMBER_OPS_PER_RETRY_PERIOD, MemoryGroup,
    ShardAction, ShardConfig, ShardEvent, ShardInput, ShardMember,
};
use crate::time::{Instant, Timestamp};

/// What to simulate; every `None` is derived from the seed.
#[derive(Debug, Clone)]
pub struct ShardScenario {
    /// The membership configuration; each member gets a copy with its own identity.
    pub member: Config,
    /// The number of shards.
    pub shards: u32,
    /// Members at the start (derived: 2 to 5).
    pub members: Option<usize>,
    /// The largest ratio of clock rates (derived: up to 99 % of the safe bound).
    pub clock_rate_ratio: Option<f64>,
    /// One-way latency range (derived: 1 ms to 5-100 ms).
    pub latency: Option<(Duration, Duration)>,
    /// Members watch the group (derived: 3 seeds in 4).
    pub watch: Option<bool>,
    /// Random faults during the fault phase.
    pub faults: bool,
    /// Length of the fault phase (derived: 6 to 14 lease durations).
    pub fault_phase: Option<Duration>,
    /// Keep a timeline.
    pub timeline: bool,
}

impl ShardScenario {
    /// A scenario for `member` and `shards`, faults on, the rest derived.
    pub fn new(member: Config, shards: u32) -> Self {
        ShardScenario {
            member,
            shards,
            members: None,
            clock_rate_ratio: None,
            latency: None,
            watch: None,
            faults: true,
            fault_phase: None,
            timeline: false,
        }
    }

    /// The parameters of the run for `seed`.
    pub fn params(&self, seed: u64) -> ShardParams {
        let mut rng = Rng::new(seed ^ 0x5AAD_5AAD_5AAD_5AAD);
        let mut pick = |lo: f64, hi: f64| lo + (hi - lo) * rng.next_f64();
        let mut member = self.member.clone();
        let watch = self.watch.unwrap_or(pick(0.0, 1.0) < 0.75);
        member.observation = if watch {
            Observation::Watch
        } else {
            Observation::Poll
        };
        member.time_precision = Duration::from_micros(1);
        let bound = member.tolerated_clock_rate_ratio();
        let members = self.members.unwrap_or(2 + (pick(0.0, 4.0) as usize).min(3));
        let clock_rate_ratio = self
            .clock_rate_ratio
            .unwrap_or_else(|| 1.0 + (bound - 1.0).max(0.0) * pick(0.0, 0.99))
            .max(1.0);
        let slow = pick(0.0, 1.0) < 0.1;
        let latency = self.latency.unwrap_or_else(|| {
            let max = if slow {
                // A slow link: answers come up to one and a half retry periods after the
                // request, but within the operation timeout as the fastest clock measures it
                // (beyond that every election times out: a liveness limit of the elector's,
                // not of shard ownership).
                let within_timeout = member
                    .operation_timeout()
                    .div_f64(2.0 * clock_rate_ratio.max(1.0))
                    .mul_f64(0.9);
                member
                    .retry_period
                    .mul_f64(pick(0.5, 0.75))
                    .min(within_timeout)
            } else {
                Duration::from_millis(pick(5.0, 100.0) as u64)
            };
            (Duration::from_millis(1).min(max), max)
        });
        let ld = member.lease_duration;
        let f = self.faults;
        let mut every = |lo: f64, hi: f64| f.then(|| ld.mul_f64(pick(lo, hi)));
        let crash_every = every(1.0, 6.0);
        let pause_every = every(1.0, 6.0);
        let partition_every = every(1.0, 6.0);
        let leave_every = every(1.0, 6.0);
        let join_every = every(1.0, 6.0);
        let rate_change_every = every(0.5, 4.0);
        let watch_fault_every = every(0.5, 4.0);
        let delete_every = every(3.0, 12.0);
        let loss = if f { pick(0.0, 0.1) } else { 0.0 };
        let fault_phase = self
            .fault_phase
            .unwrap_or_else(|| ld.mul_f64(pick(6.0, 14.0)));
        ShardParams {
            seed,
            member,
            shards: self.shards,
            members,
            max_members: members + 3,
            clock_rate_ratio,
            latency,
            loss,
            crash_every,
            pause_every,
            partition_every,
            leave_every,
            join_every,
            rate_change_every,
            watch_fault_every,
            delete_every,
            fault_phase,
            restart_delay: Duration::from_millis(pick(0.0, 1000.0) as u64),
            work_stop_delay: ld.mul_f64(pick(0.0, 0.1)),
            timeline: self.timeline,
        }
    }
}

/// Every parameter of one run.
#[derive(Debug, Clone)]
pub struct ShardParams {
    /// The seed.
    pub seed: u64,
    /// The membership configuration (identities are `m-<i>`).
    pub member: Config,
    /// The number of shards.
    pub shards: u32,
    /// Members at the start.
    pub members: usize,
    /// Members never exceed this many.
    pub max_members: usize,
    /// Clock rates stay in `[1, ratio]`.
    pub clock_rate_ratio: f64,
    /// One-way latency range.
    pub latency: (Duration, Duration),
    /// Probability that a request, and separately a response, is lost.
    pub loss: f64,
    /// Mean time between crashes.
    pub crash_every: Option<Duration>,
    /// Mean time between pauses.
    pub pause_every: Option<Duration>,
    /// Mean time between partitions.
    pub partition_every: Option<Duration>,
    /// Mean time between graceful leaves.
    pub leave_every: Option<Duration>,
    /// Mean time between joins (a new identity, or one that left coming back).
    pub join_every: Option<Duration>,
    /// Mean time between clock-rate changes.
    pub rate_change_every: Option<Duration>,
    /// Mean time between watch faults (a stall of up to two lease durations, or a break).
    pub watch_fault_every: Option<Duration>,
    /// Mean time between administrators deleting a member Lease.
    pub delete_every: Option<Duration>,
    /// Length of the fault phase.
    pub fault_phase: Duration,
    /// How long a crashed member stays down.
    pub restart_delay: Duration,
    /// The longest a shard's work takes to stop.
    pub work_stop_delay: Duration,
    /// Keep a timeline.
    pub timeline: bool,
}

impl ShardParams {
    /// The time after the faults stop within which every shard must run on its rendezvous
    /// owner: `op_timeout + restart_delay + failover_bound + 3 * retry_period +
    /// work_stop_delay + 12 * max_latency`.
    ///
    /// Why: within `op_timeout` lost operations have timed out; crashed members are back
    /// after `restart_delay`; a member restarted under its identity takes its own Lease back
    /// after one lease duration (it did not write the record it finds), and every member sees
    /// every Lease within a retry period (polling) or a latency (watching), so within
    /// `failover_bound` every live member is a member and every dead one is past its lease
    /// for everyone. Then intents go out (one retry period at worst, when the hurried writes
    /// are spent), owners stop moving shards (`work_stop_delay`) and drop them (a write), the
    /// fence lists pass and the activations land (a retry period when lists are spent), and
    /// each step costs round trips, at most twelve in all.
    pub fn liveness_bound(&self) -> Duration {
        let c = &self.member;
        c.operation_timeout()
            + self.restart_delay
            + c.failover_bound()
            + c.retry_period * 3
            + self.work_stop_delay
            + self.latency.1 * 12
    }
}

/// Something that must never happen.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ShardViolation {
    /// Two members ran a shard at the same true time.
    Overlap {
        /// The shard.
        shard: u32,
        /// The earlier run: member, incarnation, true start and end in seconds.
        first: (String, u64, f64, f64),
        /// The later run.
        second: (String, u64, f64, f64),
    },
    /// A run's token was not above an earlier run's.
    TokenNotRising {
        /// The shard.
        shard: u32,
        /// The earlier token and the later one.
        tokens: (u64, u64),
    },
    /// A member issued too many operations in one retry period.
    TooManyOperations {
        /// The member.
        member: String,
        /// How many.
        count: usize,
    },
    /// After the liveness bound a shard ran nowhere.
    Unowned {
        /// The shard.
        shard: u32,
    },
    /// After the liveness bound a shard ran on a member hashing does not give it to.
    Misplaced {
        /// The shard.
        shard: u32,
        /// Where it ran.
        owner: String,
        /// Where it should.
        expected: String,
    },
    /// A shard started or stopped after the liveness bound.
    Unstable {
        /// The shard.
        shard: u32,
        /// When, in true seconds.
        at: f64,
    },
    /// The run processed more events than any sane schedule needs: something spins.
    Busy {
        /// Events processed before the run was cut short.
        events: u64,
    },
    /// A settled, watching member listed the group or wrote more than once per retry period.
    SteadyStateLoad {
        /// The member.
        member: String,
        /// Its writes and lists in the settled window.
        writes: usize,
        /// Lists.
        lists: usize,
        /// The most writes allowed.
        allowed: usize,
    },
}

impl fmt::Display for ShardViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

/// What one run found and measured.
#[derive(Debug, Clone)]
pub struct ShardOutcome {
    /// The parameters, for reproduction.
    pub params: ShardParams,
    /// Everything that went wrong.
    pub violations: Vec<ShardViolation>,
    /// Runs of shard work started.
    pub runs: usize,
    /// Hand-overs of a shard from a member that stopped it to the next start, true time.
    pub handovers: Vec<Duration>,
    /// The largest load over the mean at the end of the run (1.0 is perfect balance).
    pub balance: f64,
    /// Simulated member time.
    pub member_time: Duration,
    /// A readable timeline, when asked for.
    pub timeline: Vec<String>,
}

impl ShardOutcome {
    /// Whether nothing went wrong.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for ShardOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ok() {
            writeln!(f, "seed {}: ok ({} runs)", self.params.seed, self.runs)?;
        } else {
            writeln!(
                f,
                "seed {}: {} violation(s)",
                self.params.seed,
                self.violations.len()
            )?;
            for v in self.violations.iter().take(10) {
                writeln!(f, "  {v}")?;
            }
        }
        writeln!(f, "reproduce with {:#?}", self.params)?;
        for line in &self.timeline {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// A summary of many runs.
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    /// Runs made.
    pub runs: usize,
    /// The failing runs, in full.
    pub failures: Vec<ShardOutcome>,
    /// Every hand-over sample.
    pub handovers: Vec<Duration>,
    /// The worst balance seen at the end of a run.
    pub worst_balance: f64,
    /// Simulated member time.
    pub member_time: Duration,
}

impl ShardReport {
    /// Adds one run.
    pub fn add(&mut self, outcome: ShardOutcome) {
        self.runs += 1;
        self.handovers.extend(&outcome.handovers);
        self.worst_balance = self.worst_balance.max(outcome.balance);
        self.member_time += outcome.member_time;
        if !outcome.ok() {
            self.failures.push(outcome);
        }
    }

    /// Total violations.
    pub fn violations(&self) -> usize {
        self.failures.iter().map(|o| o.violations.len()).sum()
    }
}

impl fmt::Display for ShardReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| d.as_millis().to_string());
        let p = |q: f64| super::Report::percentile(&self.handovers, q);
        write!(
            f,
            "runs={} violations={} failed_runs={} member_hours={:.1} handover_ms p50={} p99={} max={} (n={}) worst_balance={:.3}",
            self.runs,
            self.violations(),
            self.failures.len(),
            self.member_time.as_secs_f64() / 3600.0,
            ms(p(50.0)),
            ms(p(99.0)),
            ms(self.handovers.iter().max().copied()),
            self.handovers.len(),
            self.worst_balance,
        )?;
        for failure in self.failures.iter().take(3) {
            write!(f, "\n{failure}")?;
        }
        Ok(())
    }
}

/// Runs one simulation.
pub fn run(params: &ShardParams) -> ShardOutcome {
    World::new(params.clone()).run()
}

/// Runs `scenario` for every seed in `seeds`.
pub fn check(scenario: &ShardScenario, seeds: Range<u64>) -> ShardReport {
    let mut report = ShardReport::default();
    for seed in seeds {
        report.add(run(&scenario.params(seed)));
    }
    report
}

// ----- the world -----

/// A run that processes more events than this is spinning: a member wakes or sends in a loop.
const MAX_EVENTS: u64 = 5_000_000;

/// Adds a line to the timeline, when one is kept (the text is built only then).
macro_rules! note {
    ($w:expr, $($arg:tt)*) => {
        if $w.p.timeline {
            let text = format!($($arg)*);
            $w.push_note(text);
        }
    };
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn secs(t: u64) -> f64 {
    t as f64 / 1e9
}

#[derive(Debug, Clone)]
enum Ev {
    Wake {
        node: usize,
        inc: u64,
    },
    Arrive {
        node: usize,
        inc: u64,
        op: OpId,
        request: GroupRequest,
    },
    Reply {
        node: usize,
        inc: u64,
        op: OpId,
        result: GroupResult,
    },
    Deliver {
        node: usize,
        inc: u64,
        change: GroupChange,
    },
    WatchRestored {
        node: usize,
        inc: u64,
    },
    WorkStopped {
        node: usize,
        inc: u64,
        shard: u32,
        token: FencingToken,
    },
    Watchdog {
        node: usize,
        inc: u64,
    },
    Restart {
        node: usize,
    },
    Fault(Fault),
    /// The end of the fault phase.
    Heal,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Crash,
    Pause,
    Partition,
    Leave,
    Join,
    RateChange,
    Watch,
    Delete,
}

struct Run {
    shard: u32,
    node: usize,
    inc: u64,
    token: u64,
    start: u64,
    end: Option<u64>,
}

struct Node {
    id: String,
    lease: String,
    inc: u64,
    member: Option<Box<ShardMember>>,
    clock: LocalClock,
    paused_until: u64,
    partitioned_until: u64,
    watch_held_until: u64,
    last_delivery: u64,
    sub: Option<Receiver<GroupChange>>,
    /// Open runs: shard -> index in `World::runs`.
    running: BTreeMap<u32, usize>,
    member_until: Option<Instant>,
    /// Local issue instants of recent operations.
    ops: VecDeque<Instant>,
    /// Operations in the settled window: writes, lists.
    settled_ops: (usize, usize),
    /// The member left (or was told to) and stays away until a join brings it back.
    away: bool,
    up_since: u64,
}

struct World {
    p: ShardParams,
    rng: Rng,
    t: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    group: MemoryGroup,
    nodes: Vec<Node>,
    runs: Vec<Run>,
    violations: Vec<ShardViolation>,
    /// True times of administrators' deletions.
    deletions: Vec<u64>,
    /// When each shard's last run ended, for hand-over samples.
    last_end: BTreeMap<u32, u64>,
    handovers: Vec<Duration>,
    faults_end: u64,
    settle_from: u64,
    end: u64,
    member_time: Duration,
    timeline: Vec<String>,
}

impl World {
    fn new(p: ShardParams) -> World {
        let ld = p.member.lease_duration;
        let faults_end = nanos(p.fault_phase);
        let settle_from = faults_end + nanos(p.liveness_bound());
        let end = settle_from + nanos(ld);
        let mut w = World {
            rng: Rng::new(p.seed),
            t: 0,
            seq: 0,
            queue: BTreeMap::new(),
            group: MemoryGroup::new(),
            nodes: Vec::new(),
            runs: Vec::new(),
            violations: Vec::new(),
            deletions: Vec::new(),
            last_end: BTreeMap::new(),
            handovers: Vec::new(),
            faults_end,
            settle_from,
            end,
            member_time: Duration::ZERO,
            timeline: Vec::new(),
            p,
        };
        for _ in 0..w.p.members {
            let node = w.add_node();
            w.start(node);
        }
        let kinds = [
            (w.p.crash_every, Fault::Crash),
            (w.p.pause_every, Fault::Pause),
            (w.p.partition_every, Fault::Partition),
            (w.p.leave_every, Fault::Leave),
            (w.p.join_every, Fault::Join),
            (w.p.rate_change_every, Fault::RateChange),
            (w.p.watch_fault_every, Fault::Watch),
            (w.p.delete_every, Fault::Delete),
        ];
        w.at(faults_end, Ev::Heal);
        for (every, kind) in kinds {
            if let Some(every) = every {
                let at = w.exp(every);
                w.at(at, Ev::Fault(kind));
            }
        }
        w
    }

    fn push_note(&mut self, text: String) {
        let line = format!("{:>10.3} {text}", secs(self.t));
        self.timeline.push(line);
    }

    fn exp(&mut self, mean: Duration) -> u64 {
        let u = self.rng.next_f64().max(1e-12);
        self.t + (-(u.ln()) * mean.as_nanos() as f64) as u64
    }

    /// Whether a message is lost: only while faults strike.
    fn lossy(&mut self) -> bool {
        self.t < self.faults_end && self.chance(self.p.loss)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.next_f64() < p
    }

    fn latency(&mut self) -> u64 {
        let (lo, hi) = (nanos(self.p.latency.0), nanos(self.p.latency.1));
        lo + (self.rng.next_f64() * (hi.saturating_sub(lo)) as f64) as u64
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t.max(self.t), self.seq), ev);
    }

    fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let rate = 1.0 + (self.p.clock_rate_ratio - 1.0) * self.rng.next_f64();
        let rate = if i == 0 {
            1.0
        } else if i == 1 {
            self.p.clock_rate_ratio
        } else {
            rate
        };
        let offset = self.rng.next_u64() % (1 << 40);
        let id = format!("m-{i}");
        self.nodes.push(Node {
            lease: format!("g-{id}"),
            id,
            inc: 0,
            member: None,
            clock: LocalClock::new(self.t, offset, (rate * PPB as f64) as u64),
            paused_until: 0,
            partitioned_until: 0,
            watch_held_until: 0,
            last_delivery: 0,
            sub: None,
            running: BTreeMap::new(),
            member_until: None,
            ops: VecDeque::new(),
            settled_ops: (0, 0),
            away: false,
            up_since: 0,
        });
        i
    }

    fn now_of(&self, node: usize) -> Now {
        let local = self.nodes[node].clock.local(self.t);
        let wall = Timestamp::from_unix_micros(1_700_000_000_000_000 + (self.t / 1000) as i64)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        Now::new(local, wall)
    }

    /// Starts (or restarts) a member on `node`.
    fn start(&mut self, node: usize) {
        let now = self.now_of(node);
        let seed = self.rng.next_u64();
        let n = &mut self.nodes[node];
        n.inc += 1;
        n.away = false;
        n.up_since = self.t;
        n.member_until = None;
        n.ops.clear();
        let mut config = self.p.member.clone();
        config.identity = Identity::new(n.id.clone()).unwrap_or_else(|_| config.identity.clone());
        config.name = n.lease.clone();
        let config = ShardConfig::new(config, "g", self.p.shards);
        match ShardMember::new(config, now, seed) {
            Ok(m) => n.member = Some(Box::new(m)),
            Err(_) => return,
        }
        if self.p.member.observation == Observation::Watch {
            n.sub = Some(self.group.subscribe());
            n.last_delivery = self.t;
        }
        note!(self, "{} starts", self.nodes[node].id);
        self.flush_watches();
        self.drive(node);
    }

    /// Ends the runs of `node`: every run, or the one of `shard` with `token`.
    fn stop_runs(&mut self, node: usize, run: Option<(u32, FencingToken)>) {
        let t = self.t;
        let n = &mut self.nodes[node];
        let which: Vec<u32> = match run {
            Some((k, token)) => n
                .running
                .get(&k)
                .filter(|&&i| self.runs[i].token == token.0)
                .map(|_| k)
                .into_iter()
                .collect(),
            None => n.running.keys().copied().collect(),
        };
        for k in which {
            if let Some(i) = n.running.remove(&k) {
                self.runs[i].end = Some(t);
                self.last_end.insert(k, t);
            }
        }
    }

    fn crash(&mut self, node: usize) {
        if self.nodes[node].member.is_none() {
            return;
        }
        note!(self, "{} crashes", self.nodes[node].id);
        self.stop_runs(node, None);
        let n = &mut self.nodes[node];
        n.member = None;
        n.sub = None;
        n.member_until = None;
        let delay = nanos(self.p.restart_delay);
        self.at(self.t + delay, Ev::Restart { node });
    }

    /// Carries out the member's actions.
    fn drive(&mut self, node: usize) {
        loop {
            let Some(member) = self.nodes[node].member.as_mut() else {
                return;
            };
            let action = member.poll_action();
            let inc = self.nodes[node].inc;
            match action {
                ShardAction::Op { op, request, .. } => {
                    self.count_op(node, &request);
                    let t = self.t;
                    let n = &self.nodes[node];
                    if t < n.partitioned_until || self.lossy() {
                        continue;
                    }
                    let lat = self.latency();
                    self.at(
                        t + lat,
                        Ev::Arrive {
                            node,
                            inc,
                            op,
                            request,
                        },
                    );
                }
                ShardAction::Emit(event) => self.handle_event(node, event),
                ShardAction::SleepUntil { at } => {
                    if at != Instant::MAX {
                        let t = self.nodes[node].clock.true_time_of(at, self.t);
                        self.at(t, Ev::Wake { node, inc });
                    }
                    return;
                }
                ShardAction::Done => {
                    note!(self, "{} has left", self.nodes[node].id);
                    let t = self.t;
                    let n = &mut self.nodes[node];
                    n.member = None;
                    n.sub = None;
                    if !n.away || t >= self.faults_end {
                        // It did not choose to leave (its Lease was deleted), or the faults
                        // are over: a supervisor starts it again.
                        n.away = false;
                        let delay = nanos(self.p.restart_delay);
                        self.at(t + delay, Ev::Restart { node });
                    }
                    return;
                }
            }
        }
    }

    fn count_op(&mut self, node: usize, request: &GroupRequest) {
        let local = self.nodes[node].clock.local(self.t);
        let rp = self.p.member.retry_period;
        let settled = self.t >= self.settle_from;
        let n = &mut self.nodes[node];
        if settled {
            if matches!(request, GroupRequest::List) {
                n.settled_ops.1 += 1;
            } else {
                n.settled_ops.0 += 1;
            }
        }
        n.ops.push_back(local);
        while n.ops.front().is_some_and(|&at| local >= at + rp) {
            n.ops.pop_front();
        }
        if n.ops.len() > MAX_MEMBER_OPS_PER_RETRY_PERIOD {
            let v = ShardViolation::TooManyOperations {
                member: n.id.clone(),
                count: n.ops.len(),
            };
            n.ops.clear();
            self.violations.push(v);
        }
    }

    fn handle_event(&mut self, node: usize, event: ShardEvent) {
        let inc = self.nodes[node].inc;
        match event {
            ShardEvent::ShardStarted { shard, token } => {
                note!(
                    self,
                    "{} starts shard {shard} ({token})",
                    self.nodes[node].id
                );
                let idx = self.runs.len();
                self.runs.push(Run {
                    shard,
                    node,
                    inc,
                    token: token.0,
                    start: self.t,
                    end: None,
                });
                self.nodes[node].running.insert(shard, idx);
                if let Some(&ended) = self.last_end.get(&shard) {
                    self.handovers.push(Duration::from_nanos(self.t - ended));
                    self.last_end.remove(&shard);
                }
            }
            ShardEvent::ShardStopped { shard, token, .. } => {
                note!(self, "{} stops shard {shard}", self.nodes[node].id);
                let delay = (self.rng.next_f64() * nanos(self.p.work_stop_delay) as f64) as u64;
                let stopped = Ev::WorkStopped {
                    node,
                    inc,
                    shard,
                    token,
                };
                self.at(self.t + delay, stopped.clone());
                if self.lossy() {
                    // A driver that reports the stop twice, the second time much later
                    // (when the shard may run again, with another token).
                    let ld = nanos(self.p.member.lease_duration);
                    let later = delay + (self.rng.next_f64() * ld as f64) as u64;
                    self.at(self.t + later, stopped);
                }
            }
            ShardEvent::Member(
                Event::StartedLeading { leader_until, .. } | Event::Renewed { leader_until },
            ) => {
                self.nodes[node].member_until = Some(leader_until);
                let t = self.nodes[node].clock.true_time_of(leader_until, self.t);
                self.at(t, Ev::Watchdog { node, inc });
            }
            ShardEvent::Member(Event::StoppedLeading { reason }) => {
                note!(self, "{} term ends: {reason:?}", self.nodes[node].id);
            }
            _ => {}
        }
    }

    /// Schedules every watch change the store produced.
    fn flush_watches(&mut self) {
        for node in 0..self.nodes.len() {
            let Some(sub) = &self.nodes[node].sub else {
                continue;
            };
            let changes: Vec<GroupChange> = sub.try_iter().collect();
            let inc = self.nodes[node].inc;
            for change in changes {
                let lat = self.latency();
                let n = &mut self.nodes[node];
                let at = (self.t + lat)
                    .max(n.last_delivery)
                    .max(n.watch_held_until)
                    .max(n.partitioned_until);
                n.last_delivery = at;
                self.at(at, Ev::Deliver { node, inc, change });
            }
        }
    }

    fn input(&mut self, node: usize, input: impl FnOnce(Now) -> ShardInput) {
        let now = self.now_of(node);
        let Some(member) = self.nodes[node].member.as_mut() else {
            return;
        };
        member.handle_input(input(now));
        self.drive(node);
    }

    fn run(mut self) -> ShardOutcome {
        let mut events = 0u64;
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            if t > self.end {
                break;
            }
            events += 1;
            if events > MAX_EVENTS {
                self.violations.push(ShardViolation::Busy { events });
                break;
            }
            self.t = t;
            self.step(ev);
        }
        self.t = self.end;
        self.finish()
    }

    fn heal(&mut self) {
        note!(self, "faults stop");
        let t = self.t;
        // Pauses, partitions and stalls were drawn to end by now.
        for node in 0..self.nodes.len() {
            let n = &mut self.nodes[node];
            if n.member.is_none() && n.away {
                // Those that left come back, so the final membership is every node.
                n.away = false;
                self.at(t, Ev::Restart { node });
            }
        }
    }

    /// A node's inputs wait while it is paused.
    fn deferred(&mut self, node: usize, ev: Ev) -> Option<Ev> {
        let until = self.nodes[node].paused_until;
        if self.t < until {
            self.at(until, ev);
            None
        } else {
            Some(ev)
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Wake { node, inc } if self.nodes[node].inc == inc => {
                if let Some(Ev::Wake { .. }) = self.deferred(node, Ev::Wake { node, inc }) {
                    self.input(node, ShardInput::Timeout);
                }
            }
            Ev::Arrive {
                node,
                inc,
                op,
                request,
            } => {
                let lease = self.nodes[node].lease.clone();
                let result = self.group.execute(&lease, &request);
                self.flush_watches();
                let lost = self.t < self.nodes[node].partitioned_until || self.lossy();
                if !lost {
                    let lat = self.latency();
                    self.at(
                        self.t + lat,
                        Ev::Reply {
                            node,
                            inc,
                            op,
                            result,
                        },
                    );
                }
            }
            Ev::Reply {
                node,
                inc,
                op,
                result,
            } if self.nodes[node].inc == inc => {
                if let Some(Ev::Reply { op, result, .. }) = self.deferred(
                    node,
                    Ev::Reply {
                        node,
                        inc,
                        op,
                        result,
                    },
                ) {
                    if let Err(e) = &result {
                        note!(self, "{} {op}: {e}", self.nodes[node].id);
                    }
                    self.input(node, |now| ShardInput::Result { now, op, result });
                }
            }
            Ev::Deliver { node, inc, change } if self.nodes[node].inc == inc => {
                if self.nodes[node].sub.is_none() {
                    return;
                }
                if let Some(Ev::Deliver { change, .. }) =
                    self.deferred(node, Ev::Deliver { node, inc, change })
                {
                    self.input(node, |now| ShardInput::Observed { now, change });
                }
            }
            Ev::WatchRestored { node, inc }
                if self.nodes[node].inc == inc && self.nodes[node].member.is_some() =>
            {
                self.nodes[node].sub = Some(self.group.subscribe());
                self.flush_watches();
            }
            Ev::WorkStopped {
                node,
                inc,
                shard,
                token,
            } if self.nodes[node].inc == inc => {
                self.stop_runs(node, Some((shard, token)));
                let stopped = Ev::WorkStopped {
                    node,
                    inc,
                    shard,
                    token,
                };
                if let Some(Ev::WorkStopped { shard, token, .. }) = self.deferred(node, stopped) {
                    self.input(node, |now| ShardInput::ShardsStopped {
                        now,
                        shards: vec![(shard, token)],
                    });
                }
            }
            Ev::Watchdog { node, inc } if self.nodes[node].inc == inc => {
                let local = self.nodes[node].clock.local(self.t);
                if self.nodes[node].member_until.is_some_and(|u| local >= u) {
                    // The work stops now; like the tokio driver, report the runs cut off.
                    let cut: Vec<(u32, FencingToken)> = self.nodes[node]
                        .running
                        .iter()
                        .map(|(&shard, &i)| (shard, FencingToken(self.runs[i].token)))
                        .collect();
                    self.stop_runs(node, None);
                    for (shard, token) in cut {
                        let t = self.t;
                        self.at(
                            t,
                            Ev::WorkStopped {
                                node,
                                inc,
                                shard,
                                token,
                            },
                        );
                    }
                }
            }
            Ev::Restart { node } if self.nodes[node].member.is_none() && !self.nodes[node].away => {
                self.start(node);
            }
            Ev::Fault(kind) => self.fault(kind),
            Ev::Heal => self.heal(),
            _ => {}
        }
    }

    fn random_up(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].member.is_some())
            .collect();
        if up.is_empty() {
            return None;
        }
        let i = (self.rng.next_u64() % up.len() as u64) as usize;
        Some(up[i])
    }

    fn fault(&mut self, kind: Fault) {
        if self.t >= self.faults_end {
            return;
        }
        let ld = self.p.member.lease_duration;
        let mean = match kind {
            Fault::Crash => self.p.crash_every,
            Fault::Pause => self.p.pause_every,
            Fault::Partition => self.p.partition_every,
            Fault::Leave => self.p.leave_every,
            Fault::Join => self.p.join_every,
            Fault::RateChange => self.p.rate_change_every,
            Fault::Watch => self.p.watch_fault_every,
            Fault::Delete => self.p.delete_every,
        };
        if let Some(mean) = mean {
            let next = self.exp(mean);
            self.at(next, Ev::Fault(kind));
        }
        let span = |w: &mut World, max: Duration| (w.rng.next_f64() * nanos(max) as f64) as u64;
        match kind {
            Fault::Crash => {
                if let Some(node) = self.random_up() {
                    self.crash(node);
                }
            }
            Fault::Pause => {
                if let Some(node) = self.random_up() {
                    let d = span(self, ld * 2).min(self.faults_end - self.t);
                    note!(self, "{} paused {:.3}s", self.nodes[node].id, secs(d));
                    self.nodes[node].paused_until = self.t + d;
                }
            }
            Fault::Partition => {
                if let Some(node) = self.random_up() {
                    let d = span(self, ld * 2).min(self.faults_end - self.t);
                    note!(self, "{} partitioned {:.3}s", self.nodes[node].id, secs(d));
                    self.nodes[node].partitioned_until = self.t + d;
                }
            }
            Fault::Leave => {
                if let Some(node) = self.random_up() {
                    note!(self, "{} leaves", self.nodes[node].id);
                    self.nodes[node].away = true;
                    self.input(node, ShardInput::Shutdown);
                }
            }
            Fault::Join => {
                let away: Vec<usize> = (0..self.nodes.len())
                    .filter(|&i| self.nodes[i].member.is_none() && self.nodes[i].away)
                    .collect();
                if !away.is_empty() && self.chance(0.5) {
                    let node = away[(self.rng.next_u64() % away.len() as u64) as usize];
                    self.nodes[node].away = false;
                    self.start(node);
                } else if self.nodes.len() < self.p.max_members {
                    let node = self.add_node();
                    self.start(node);
                }
            }
            Fault::RateChange => {
                if let Some(node) = self.random_up() {
                    let r = 1.0 + (self.p.clock_rate_ratio - 1.0) * self.rng.next_f64();
                    let t = self.t;
                    self.nodes[node].clock.set_rate(t, (r * PPB as f64) as u64);
                    if let Some(until) = self.nodes[node].member_until {
                        let at = self.nodes[node].clock.true_time_of(until, t);
                        let inc = self.nodes[node].inc;
                        self.at(at, Ev::Watchdog { node, inc });
                    }
                }
            }
            Fault::Watch => {
                if let Some(node) = self.random_up()
                    && self.nodes[node].sub.is_some()
                {
                    let d = span(self, ld * 2).min(self.faults_end - self.t);
                    let inc = self.nodes[node].inc;
                    if self.chance(0.5) {
                        note!(self, "{} watch stalls {:.3}s", self.nodes[node].id, secs(d));
                        self.nodes[node].watch_held_until = self.t + d;
                    } else {
                        note!(self, "{} watch breaks", self.nodes[node].id);
                        self.nodes[node].sub = None;
                        self.input(node, ShardInput::WatchBroken);
                        self.at(self.t + d, Ev::WatchRestored { node, inc });
                    }
                }
            }
            Fault::Delete => {
                // A deletion is a leave and a join of its member, which finish up to a lease
                // duration later (a restarted member waits out its old record first): none
                // is asked for within two lease durations of the end of the faults, so that
                // membership is stable when liveness is checked.
                let late = self.t + nanos(ld) * 2 >= self.faults_end;
                if !late && let Some(node) = self.random_up() {
                    note!(self, "an administrator deletes {}", self.nodes[node].lease);
                    self.deletions.push(self.t);
                    let lease = self.nodes[node].lease.clone();
                    self.group.delete(&lease);
                    self.flush_watches();
                }
            }
        }
    }

    fn finish(mut self) -> ShardOutcome {
        let end = self.end;
        // Open runs end at the end of the run, or of their member's term if that came first.
        for node in 0..self.nodes.len() {
            let until = self.nodes[node]
                .member_until
                .map(|u| self.nodes[node].clock.true_time_of(u, 0));
            let running: Vec<usize> = self.nodes[node].running.values().copied().collect();
            for i in running {
                let stop = until.map_or(end, |u| u.min(end));
                self.runs[i].end = Some(stop);
            }
            if let Some(m) = &self.nodes[node].member {
                let _ = m;
                self.member_time +=
                    Duration::from_nanos(end.saturating_sub(self.nodes[node].up_since));
            }
        }
        self.check_overlaps();
        self.check_liveness();
        self.check_quiet();
        let balance = self.balance();
        ShardOutcome {
            violations: self.violations,
            runs: self.runs.len(),
            handovers: self.handovers,
            balance,
            member_time: self.member_time,
            timeline: self.timeline,
            params: self.p,
        }
    }

    fn check_overlaps(&mut self) {
        let mut by_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, r) in self.runs.iter().enumerate() {
            by_shard.entry(r.shard).or_default().push(i);
        }
        for (shard, mut runs) in by_shard {
            runs.sort_by_key(|&i| (self.runs[i].start, i));
            let mut latest: Option<usize> = None;
            for &i in &runs {
                let r = &self.runs[i];
                let end = r.end.unwrap_or(self.end);
                if let Some(j) = latest {
                    let q = &self.runs[j];
                    let q_end = q.end.unwrap_or(self.end);
                    if (q.node, q.inc) != (r.node, r.inc) && r.start < q_end {
                        self.violations.push(ShardViolation::Overlap {
                            shard,
                            first: (
                                self.nodes[q.node].id.clone(),
                                q.inc,
                                secs(q.start),
                                secs(q_end),
                            ),
                            second: (
                                self.nodes[r.node].id.clone(),
                                r.inc,
                                secs(r.start),
                                secs(end),
                            ),
                        });
                    }
                    // A deleted member Lease can take the highest epoch with it (see the crate
                    // docs): its deletion completes up to a term after it was asked for.
                    let ld = nanos(self.p.member.lease_duration) * 2;
                    let deleted_between = self
                        .deletions
                        .iter()
                        .any(|&d| d <= r.start && d + ld >= q.start);
                    if r.token <= q.token && !deleted_between {
                        self.violations.push(ShardViolation::TokenNotRising {
                            shard,
                            tokens: (q.token, r.token),
                        });
                    }
                }
                if latest.is_none_or(|j| self.runs[j].end.unwrap_or(self.end) <= end) {
                    latest = Some(i);
                }
            }
        }
    }

    fn check_liveness(&mut self) {
        let live: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.member.is_some())
            .map(|n| n.id.clone())
            .collect();
        let members = Members::new(live.iter().map(String::as_str));
        let mut reported = BTreeSet::new();
        for r in &self.runs {
            let at = if r.start >= self.settle_from {
                Some(r.start)
            } else {
                r.end.filter(|&e| e >= self.settle_from && e < self.end)
            };
            if let Some(at) = at
                && reported.insert(r.shard)
            {
                self.violations.push(ShardViolation::Unstable {
                    shard: r.shard,
                    at: secs(at),
                });
            }
        }
        for shard in 0..self.p.shards {
            let owners: Vec<&Run> = self
                .runs
                .iter()
                .filter(|r| r.shard == shard && r.end.is_none_or(|e| e >= self.end))
                .collect();
            let Some(expected) = members.owner(shard) else {
                continue;
            };
            match owners.first() {
                None => self.violations.push(ShardViolation::Unowned { shard }),
                Some(r) if self.nodes[r.node].id != expected => {
                    self.violations.push(ShardViolation::Misplaced {
                        shard,
                        owner: self.nodes[r.node].id.clone(),
                        expected: expected.to_owned(),
                    });
                }
                Some(_) => {}
            }
        }
    }

    fn check_quiet(&mut self) {
        if self.p.member.observation != Observation::Watch {
            return;
        }
        let window = Duration::from_nanos(self.end - self.settle_from);
        let rp = self.p.member.retry_period;
        let allowed = (window.as_nanos() as f64 * self.p.clock_rate_ratio / rp.as_nanos() as f64)
            .ceil() as usize
            + 1;
        for n in &self.nodes {
            let (writes, lists) = n.settled_ops;
            if n.member.is_some() && (writes > allowed || lists > 0) {
                self.violations.push(ShardViolation::SteadyStateLoad {
                    member: n.id.clone(),
                    writes,
                    lists,
                    allowed,
                });
            }
        }
    }

    fn balance(&self) -> f64 {
        let mut load: BTreeMap<usize, usize> = BTreeMap::new();
        for r in &self.runs {
            if r.end.is_none_or(|e| e >= self.end) {
                *load.entry(r.node).or_default() += 1;
            }
        }
        let up = self
            .nodes
            .iter()
            .filter(|n| n.member.is_some())
            .count()
            .max(1);
        let mean = f64::from(self.p.shards) / up as f64;
        load.values().copied().max().unwrap_or(0) as f64 / mean
    }
}
