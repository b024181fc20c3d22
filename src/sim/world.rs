//! The discrete-event loop: nodes, the lock, the network, faults, and the checkers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use super::clock::{LocalClock, PPB};
use super::{Outcome, Params, Violation};
use crate::elector::rng::Rng;
use crate::elector::{Action, Elector, Event, Input, MAX_OPS_PER_RETRY_PERIOD, Now, OpId};
use crate::lock::{LockError, LockErrorKind, LockRequest, LockResponse, LockResult, MemoryLock};
use crate::record::{Identity, LeaderElectionRecord, Versioned};
use crate::time::{Instant, Timestamp};

/// True time, in nanoseconds since the start of the run.
type T = u64;

/// 2020-01-01T00:00:00Z: the wall clocks start near here.
const WALL_ORIGIN_MICROS: i64 = 1_577_836_800_000_000;

fn nanos(d: Duration) -> u64 {
    crate::time::duration_nanos(d)
}

fn secs(t: T) -> f64 {
    t as f64 / 1e9
}

#[derive(Debug, Clone)]
enum Ev {
    Wake {
        node: usize,
        seq: u64,
    },
    Request {
        node: usize,
        inc: u32,
        op: OpId,
        request: LockRequest,
        /// The highest version the sender had seen when it sent this.
        seen: u64,
    },
    Response {
        node: usize,
        inc: u32,
        op: OpId,
        result: LockResult,
    },
    Watch {
        node: usize,
        inc: u32,
        record: Option<Versioned<LeaderElectionRecord>>,
    },
    WorkStopped {
        node: usize,
        inc: u32,
    },
    Restart {
        node: usize,
    },
    Resume {
        node: usize,
    },
    Heal {
        node: usize,
    },
    Fault(Fault),
    CrashLeader,
    ShutdownLeader,
    FaultsEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Crash,
    Pause,
    Partition,
    Shutdown,
    RateChange,
    /// An administrator deletes the lock.
    Delete,
    /// A foreign tool writes the object, leaving the record alone.
    ForeignWrite,
    /// A node's wall clock steps.
    WallStep,
}

/// An input for a node that may have to wait while the node is paused.
#[derive(Debug, Clone)]
enum Delivery {
    Timeout,
    Result(OpId, LockResult),
    Observed(Option<Versioned<LeaderElectionRecord>>),
    WorkStopped,
    Shutdown,
}

struct Node {
    identity: Identity,
    clock: LocalClock,
    /// The wall clock's offset from true time, in microseconds.
    wall_offset: i64,
    elector: Option<Elector>,
    /// Bumped at every crash or exit: messages for an earlier incarnation are dropped.
    inc: u32,
    /// Only the wake with this sequence number is current.
    wake_seq: u64,
    paused: bool,
    inbox: VecDeque<Delivery>,
    partitioned: bool,
    /// The operation the driver considers outstanding, and its local deadline.
    outstanding: Option<(OpId, Instant)>,
    term: Option<Term>,
    up_since: Option<T>,
    /// Local instants of the operations this incarnation issued within the last retry period.
    recent_ops: VecDeque<Instant>,
    /// Whether this node already broke the operation-rate bound (reported once).
    too_many_ops: bool,
    /// The highest version of the lock this incarnation has seen present (0: none).
    seen_version: u64,
    /// The lock object (generation) this node's last applied write went to.
    write_generation: usize,
}

struct Term {
    start: T,
    /// The lock object (generation) the term's acquiring write went to.
    generation: usize,
    leader_until: Instant,
    /// The true time at which the node's clock reaches `leader_until` (kept current across
    /// rate changes until it has passed).
    ends_by: T,
}

/// A closed term: identity, true start, true end.
struct Span {
    identity: Identity,
    start: T,
    end: T,
    generation: usize,
}

/// A lock object recreated after a deletion is covered by the guarantee only as far as its
/// creator saw the deleted object (see the crate docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Exempt {
    /// The creator never saw the deleted object present: terms on this object may overlap
    /// terms on earlier ones.
    overlap: bool,
    /// The creator did not see the deleted object's last record: tokens restart here.
    token: bool,
}

pub(crate) struct World {
    p: Params,
    rng: Rng,
    now: T,
    seq: u64,
    queue: BinaryHeap<Reverse<(T, u64, usize)>>,
    events: Vec<Option<Ev>>,
    nodes: Vec<Node>,
    lock: MemoryLock,
    last_version: u64,
    /// The version at which the current (or last deleted) lock object was created.
    object_since: Option<u64>,
    /// The version at which the current (or last deleted) lock object got its record.
    record_since: Option<u64>,
    /// Every lock object created so far (its generation is its index; 0 stands for none yet),
    /// with what the guarantee does not cover about it.
    generations: Vec<Exempt>,
    /// The record before the last write, for late (stale) watch events.
    previous: Option<Versioned<LeaderElectionRecord>>,
    faults_on: bool,
    fault_end: T,
    spans: Vec<Span>,
    /// The last term's identity, token and lock object (generation).
    last_term: Option<(Identity, u64, usize)>,
    violations: Vec<Violation>,
    hash: u64,
    crash_at: Option<T>,
    shutdown_at: Option<T>,
    /// The node shut down for the handover sample: it stays down until after the handover.
    held_down: Option<usize>,
    failover: Option<Duration>,
    handover: Option<Duration>,
    leader_after_faults: Option<Duration>,
    elector_time: Duration,
    terms: usize,
    timeline: Vec<String>,
}

impl World {
    pub(crate) fn new(p: Params) -> Self {
        let mut rng = Rng::new(p.seed);
        let nodes = (0..p.nodes)
            .map(|i| {
                let rate = (p.initial_rates.get(i).copied().unwrap_or(1.0) * PPB as f64) as u64;
                let offset = rng.next_u64() >> 24; // up to ~12 days of uptime
                let wall_offset = (rng.next_f64() * 600e6) as i64 - 300_000_000; // +-5 min
                Node {
                    identity: Identity(format!("node-{i}")),
                    clock: LocalClock::new(0, offset, rate),
                    wall_offset,
                    elector: None,
                    inc: 0,
                    wake_seq: 0,
                    paused: false,
                    inbox: VecDeque::new(),
                    partitioned: false,
                    outstanding: None,
                    term: None,
                    up_since: None,
                    recent_ops: VecDeque::new(),
                    too_many_ops: false,
                    seen_version: 0,
                    write_generation: 0,
                }
            })
            .collect();
        let fault_end = nanos(p.fault_phase);
        World {
            faults_on: true,
            fault_end,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            nodes,
            lock: MemoryLock::with_time_precision(p.time_precision),
            last_version: 0,
            previous: None,
            object_since: None,
            record_since: None,
            generations: vec![Exempt::default()],
            spans: Vec::new(),
            last_term: None,
            violations: Vec::new(),
            hash: 0xcbf2_9ce4_8422_2325,
            crash_at: None,
            shutdown_at: None,
            held_down: None,
            failover: None,
            handover: None,
            leader_after_faults: None,
            elector_time: Duration::ZERO,
            terms: 0,
            timeline: Vec::new(),
            p,
        }
    }

    pub(crate) fn run(mut self) -> Outcome {
        for node in 0..self.nodes.len() {
            self.start(node);
        }
        let phase = self.fault_end;
        self.schedule_at(phase * 3 / 10, Ev::CrashLeader);
        self.schedule_at(phase * 6 / 10, Ev::ShutdownLeader);
        self.schedule_at(phase, Ev::FaultsEnd);
        for fault in [
            Fault::Crash,
            Fault::Pause,
            Fault::Partition,
            Fault::Shutdown,
            Fault::RateChange,
            Fault::Delete,
            Fault::ForeignWrite,
            Fault::WallStep,
        ] {
            self.schedule_fault(fault);
        }
        let bound = nanos(self.p.liveness_bound());
        let horizon = self.fault_end + bound + nanos(self.p.elector.lease_duration);
        while let Some(Reverse((t, _, slot))) = self.queue.pop() {
            if t > horizon {
                break;
            }
            self.now = t;
            let Some(ev) = self.events.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.step(ev);
            if !self.faults_on && self.leader_after_faults.is_none() && self.leader_now().is_some()
            {
                self.leader_after_faults = Some(Duration::from_nanos(self.now - self.fault_end));
            }
        }
        self.now = horizon;
        self.finish(bound)
    }

    fn finish(mut self, bound: u64) -> Outcome {
        for node in 0..self.nodes.len() {
            self.end_term(node, self.now);
            if let Some(since) = self.nodes[node].up_since.take() {
                self.elector_time += Duration::from_nanos(self.now.saturating_sub(since));
            }
        }
        self.check_overlaps();
        match self.leader_after_faults {
            Some(d) if nanos(d) <= bound => self.check_stable(self.fault_end + bound),
            _ => self
                .violations
                .push(Violation::NoLeaderAfterFaults { bound: secs(bound) }),
        }
        Outcome {
            violations: self.violations,
            trace_hash: self.hash,
            failover: self.failover,
            handover: self.handover,
            time_to_leader_after_faults: self.leader_after_faults,
            elector_time: self.elector_time,
            terms: self.terms,
            timeline: self.timeline,
            params: self.p,
        }
    }

    // ---- scheduling -----------------------------------------------------------------------

    fn schedule_at(&mut self, t: T, ev: Ev) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue
            .push(Reverse((t.max(self.now), self.seq, self.events.len() - 1)));
    }

    fn latency(&mut self) -> u64 {
        let (lo, hi) = (nanos(self.p.latency.0), nanos(self.p.latency.1));
        lo + ((hi - lo) as f64 * self.rng.next_f64()) as u64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.next_f64() < p
    }

    /// A fault probability: as configured during the fault phase, zero after it.
    fn while_faults(&self, p: f64) -> f64 {
        if self.faults_on { p } else { 0.0 }
    }

    fn schedule_fault(&mut self, fault: Fault) {
        let every = match fault {
            Fault::Crash => self.p.crash_every,
            Fault::Pause => self.p.pause_every,
            Fault::Partition => self.p.partition_every,
            Fault::Shutdown => self.p.shutdown_every,
            Fault::RateChange => self.p.rate_change_every,
            Fault::Delete => self.p.delete_every,
            Fault::ForeignWrite => self.p.foreign_write_every,
            Fault::WallStep => self.p.wall_step_every,
        };
        let Some(every) = every else { return };
        // Exponential inter-arrival times, capped so one run cannot stall.
        let u = self.rng.next_f64().max(1e-9);
        let wait = (-u.ln() * nanos(every) as f64).min(1e18) as u64;
        let at = self.now.saturating_add(wait);
        if at < self.fault_end {
            self.schedule_at(at, Ev::Fault(fault));
        }
    }

    // ---- events ---------------------------------------------------------------------------

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Wake { node, seq } => {
                if self.nodes[node].wake_seq == seq {
                    self.deliver(node, Delivery::Timeout);
                }
            }
            Ev::Request {
                node,
                inc,
                op,
                request,
                seen,
            } => self.handle_request(node, inc, op, &request, seen),
            Ev::Response {
                node,
                inc,
                op,
                result,
            } => {
                if self.nodes[node].inc == inc && !self.nodes[node].partitioned {
                    self.deliver(node, Delivery::Result(op, result));
                }
            }
            Ev::Watch { node, inc, record } => {
                if self.nodes[node].inc == inc && !self.nodes[node].partitioned {
                    self.deliver(node, Delivery::Observed(record));
                }
            }
            Ev::WorkStopped { node, inc } => {
                if self.nodes[node].inc == inc {
                    // The handover sample counts from here: how long the work takes to stop is
                    // the application's business, the rest is the elector's.
                    if self.held_down == Some(node) && self.shutdown_at.is_some() {
                        self.shutdown_at = Some(self.now);
                    }
                    self.deliver(node, Delivery::WorkStopped);
                }
            }
            Ev::Restart { node } => {
                if self.nodes[node].elector.is_none() {
                    self.start(node);
                }
            }
            Ev::Resume { node } => self.resume(node),
            Ev::Heal { node } => {
                self.nodes[node].partitioned = false;
                self.log(node, "partition healed");
            }
            Ev::Fault(fault) => {
                if self.faults_on {
                    self.fault(fault);
                    self.schedule_fault(fault);
                }
            }
            Ev::CrashLeader => {
                if let Some(leader) = self.leader_now() {
                    self.crash_at = Some(self.now);
                    // Stay down past the failover, which measures how the others take over
                    // (a restart under the same identity waits for the lease as they do).
                    self.crash(leader, self.p.failover_bound() * 2);
                }
            }
            Ev::ShutdownLeader => {
                if let Some(leader) = self.leader_now() {
                    self.shutdown_at = Some(self.now);
                    self.held_down = Some(leader);
                    self.log(leader, "graceful shutdown (measured handover)");
                    self.deliver(leader, Delivery::Shutdown);
                }
            }
            Ev::FaultsEnd => self.end_faults(),
        }
    }

    fn fault(&mut self, fault: Fault) {
        // Half the faults strike the leader, if there is one: that is where bugs hide.
        let target = match self.leader_now() {
            Some(leader) if self.chance(0.5) => leader,
            _ => (self.rng.next_u64() % self.nodes.len() as u64) as usize,
        };
        let ld = nanos(self.p.elector.lease_duration) as f64;
        match fault {
            Fault::Crash => {
                if self.nodes[target].elector.is_some() {
                    self.crash(target, self.p.restart_delay);
                }
            }
            Fault::Pause => {
                if !self.nodes[target].paused && self.nodes[target].elector.is_some() {
                    let d = (self.rng.next_f64() * 1.5 * ld) as u64;
                    self.nodes[target].paused = true;
                    self.log(target, &format!("paused for {:.3}s", secs(d)));
                    self.schedule_at(self.now + d, Ev::Resume { node: target });
                }
            }
            Fault::Partition => {
                if !self.nodes[target].partitioned {
                    let d = (self.rng.next_f64() * 2.0 * ld) as u64;
                    self.nodes[target].partitioned = true;
                    self.log(target, &format!("partitioned for {:.3}s", secs(d)));
                    self.schedule_at(self.now + d, Ev::Heal { node: target });
                }
            }
            Fault::Shutdown => {
                if self.nodes[target].elector.is_some() {
                    self.log(target, "graceful shutdown");
                    self.deliver(target, Delivery::Shutdown);
                }
            }
            Fault::RateChange => {
                let ratio = self.p.clock_rate_ratio;
                let rate = 1.0 + (ratio - 1.0) * self.rng.next_f64();
                self.set_rate(target, (rate * PPB as f64) as u64);
            }
            Fault::Delete => {
                self.previous = self.lock.get();
                self.lock.delete();
                self.timeline_line("an administrator deletes the lock".into());
                self.broadcast_watch();
            }
            Fault::ForeignWrite => {
                if self.lock.get().is_some() {
                    self.previous = self.lock.get();
                    self.lock.touch();
                    self.note_version();
                    self.timeline_line("a foreign tool writes the object, not the record".into());
                    self.broadcast_watch();
                }
            }
            Fault::WallStep => {
                // Mostly back (as after an NTP correction), sometimes forward, up to 3 s.
                let step = (self.rng.next_f64() * 3e6) as i64;
                let step = if self.chance(0.75) { -step } else { step };
                self.nodes[target].wall_offset += step;
                self.log(
                    target,
                    &format!("wall clock steps {:+.3}s", step as f64 / 1e6),
                );
            }
        }
    }

    fn end_faults(&mut self) {
        self.faults_on = false;
        self.timeline_line("faults stop".into());
        for node in 0..self.nodes.len() {
            self.nodes[node].partitioned = false;
            if self.nodes[node].paused {
                self.resume(node);
            }
        }
    }

    // ---- nodes ----------------------------------------------------------------------------

    fn now_for(&self, node: usize) -> Now {
        let n = &self.nodes[node];
        let instant = n.clock.local(self.now);
        let micros = i64::try_from(self.now / 1000).unwrap_or(i64::MAX);
        let wall = Timestamp::from_unix_micros(WALL_ORIGIN_MICROS + n.wall_offset + micros)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        Now::new(instant, wall)
    }

    fn start(&mut self, node: usize) {
        let mut config = self.p.elector.clone();
        config.identity = self.nodes[node].identity.clone();
        let seed = self.rng.next_u64();
        let now = self.now_for(node);
        match Elector::new(config, now, seed) {
            Ok(elector) => {
                let n = &mut self.nodes[node];
                n.elector = Some(elector);
                n.outstanding = None;
                n.up_since = Some(self.now);
                self.log(node, "started");
                self.drain(node);
            }
            Err(e) => {
                // The configuration under test is invalid: nothing to simulate.
                self.log(node, &format!("invalid configuration: {e}"));
            }
        }
    }

    fn crash(&mut self, node: usize, down_for: Duration) {
        self.go_down(node, "CRASHED", down_for);
    }

    /// The process is gone (crashed or exited): its term ends, its messages are dropped, and it
    /// restarts with fresh state after `down_for`.
    fn go_down(&mut self, node: usize, why: &str, down_for: Duration) {
        self.end_term(node, self.now);
        let n = &mut self.nodes[node];
        n.elector = None;
        n.inc += 1;
        n.wake_seq += 1;
        n.paused = false;
        n.inbox.clear();
        n.outstanding = None;
        n.recent_ops.clear();
        n.seen_version = 0;
        if let Some(since) = n.up_since.take() {
            self.elector_time += Duration::from_nanos(self.now - since);
        }
        self.log(node, why);
        self.schedule_at(self.now + nanos(down_for), Ev::Restart { node });
    }

    fn resume(&mut self, node: usize) {
        self.nodes[node].paused = false;
        self.log(node, "resumed");
        while let Some(d) = self.nodes[node].inbox.pop_front() {
            self.deliver(node, d);
        }
        // Timers that fired during the pause.
        self.deliver(node, Delivery::Timeout);
    }

    fn set_rate(&mut self, node: usize, rate_ppb: u64) {
        let now = self.now;
        let n = &mut self.nodes[node];
        n.clock.set_rate(now, rate_ppb);
        if let Some(term) = &mut n.term
            && term.ends_by > now
        {
            term.ends_by = n.clock.true_time_of(term.leader_until, now);
        }
        self.log(
            node,
            &format!("clock rate now {:.4}", rate_ppb as f64 / PPB as f64),
        );
        // Re-arm the timer under the new rate.
        if !self.nodes[node].paused
            && let Some(at) = self.nodes[node]
                .elector
                .as_ref()
                .and_then(Elector::poll_timeout)
        {
            self.arm(node, at);
        }
    }

    fn arm(&mut self, node: usize, at: Instant) {
        let n = &mut self.nodes[node];
        n.wake_seq += 1;
        let seq = n.wake_seq;
        let t = n.clock.true_time_of(at, self.now);
        self.schedule_at(t, Ev::Wake { node, seq });
    }

    /// Feeds an input to a node (or queues it while the node is paused), then drains.
    fn deliver(&mut self, node: usize, d: Delivery) {
        if self.nodes[node].elector.is_none() {
            return;
        }
        if self.nodes[node].paused {
            if !matches!(d, Delivery::Timeout) {
                self.nodes[node].inbox.push_back(d);
            }
            return;
        }
        let now = self.now_for(node);
        let n = &mut self.nodes[node];
        // The driver forgets an operation once its deadline has passed on the node's clock.
        if n.outstanding
            .is_some_and(|(_, deadline)| now.instant >= deadline)
        {
            n.outstanding = None;
        }
        let input = match d {
            Delivery::Timeout => Input::Timeout(now),
            Delivery::Result(op, result) => {
                if n.outstanding.is_some_and(|(o, _)| o == op) {
                    n.outstanding = None;
                }
                Input::LockResult { now, op, result }
            }
            Delivery::Observed(record) => Input::Observed { now, record },
            Delivery::WorkStopped => Input::LeaderWorkStopped(now),
            Delivery::Shutdown => Input::Shutdown(now),
        };
        if let Some(e) = &mut n.elector {
            e.handle_input(input);
            // What the elector took in (a late answer it ignored does not count).
            if let Some((version, _)) = e.observed_record() {
                let v = version.as_str().parse().unwrap_or(0);
                n.seen_version = n.seen_version.max(v);
            }
        }
        self.drain(node);
    }

    fn drain(&mut self, node: usize) {
        // Bounded: an elector settles within a handful of actions per input.
        for _ in 0..64 {
            let Some(action) = self.nodes[node].elector.as_mut().map(Elector::poll_action) else {
                return;
            };
            self.trace(node, &action);
            match action {
                Action::Lock {
                    op,
                    request,
                    deadline,
                } => self.send(node, op, request, deadline),
                Action::Emit(event) => self.on_event(node, event),
                Action::SleepUntil { at, .. } => {
                    self.arm(node, at);
                    return;
                }
                Action::Done => {
                    self.exit(node);
                    return;
                }
            }
        }
        self.log(node, "did not settle within 64 actions");
    }

    fn send(&mut self, node: usize, op: OpId, request: LockRequest, deadline: Instant) {
        let now = self.now_for(node).instant;
        let n = &mut self.nodes[node];
        if n.outstanding.is_some_and(|(_, d)| now < d) {
            self.violations.push(Violation::TwoOperationsInFlight {
                node,
                at: secs(self.now),
            });
        }
        n.outstanding = Some((op, deadline));
        // The load checker: operations within one retry period of this node's clock.
        let rp = self.p.elector.retry_period;
        while n.recent_ops.front().is_some_and(|&t| t + rp <= now) {
            n.recent_ops.pop_front();
        }
        n.recent_ops.push_back(now);
        if n.recent_ops.len() > MAX_OPS_PER_RETRY_PERIOD && !n.too_many_ops {
            n.too_many_ops = true;
            let count = n.recent_ops.len();
            self.violations.push(Violation::TooManyOperations {
                node,
                count,
                at: secs(self.now),
            });
        }
        let n = &mut self.nodes[node];
        let seen = n.seen_version;
        let inc = n.inc;
        let partitioned = n.partitioned;
        let loss = self.while_faults(self.p.request_loss);
        if partitioned || self.chance(loss) {
            return;
        }
        let at = self.now + self.latency();
        self.schedule_at(
            at,
            Ev::Request {
                node,
                inc,
                op,
                request,
                seen,
            },
        );
    }

    /// The lock applies the request at arrival: the linearization point.
    fn handle_request(
        &mut self,
        node: usize,
        inc: u32,
        op: OpId,
        request: &LockRequest,
        seen: u64,
    ) {
        if self.nodes[node].partitioned {
            return;
        }
        let before = self.lock.get();
        let result = if self.p.missing_namespace
            && self.faults_on
            && matches!(request, LockRequest::Create(_))
        {
            Err(LockError::new(
                LockErrorKind::NotFound,
                "namespaces \"sim\" not found",
            ))
        } else if self.p.renewals_conflict && self.is_renewal(node, request) {
            Err(LockError::new(
                LockErrorKind::Conflict,
                "renewals are refused",
            ))
        } else {
            self.lock.execute(request)
        };
        if let (LockRequest::Create(_), Ok(LockResponse::Written(v))) = (request, &result) {
            // The guarantee covers a recreation by a node that saw the deleted object before it
            // sent the create (no overlap), and its token only if it saw the object's last
            // record.
            let exempt = Exempt {
                overlap: self.object_since.is_some_and(|since| seen < since),
                token: self.record_since.is_some_and(|since| seen < since),
            };
            self.generations.push(exempt);
            self.object_since = v.as_str().parse().ok();
        }
        if matches!(result, Ok(LockResponse::Written(_))) {
            self.nodes[node].write_generation = self.generations.len() - 1;
        }
        if matches!(result, Ok(LockResponse::Written(_))) && self.lock.get() != before {
            self.note_version();
            self.record_since = Some(self.last_version);
            self.previous = before;
            self.broadcast_watch();
        }
        let loss = self.while_faults(self.p.response_loss);
        if self.chance(loss) {
            return;
        }
        let at = self.now + self.latency();
        self.schedule_at(
            at,
            Ev::Response {
                node,
                inc,
                op,
                result,
            },
        );
    }

    /// Whether `request` renews a record that names `node`.
    fn is_renewal(&self, node: usize, request: &LockRequest) -> bool {
        let me = &self.nodes[node].identity;
        matches!(request, LockRequest::Update { record, .. } if record.is_held_by(me))
            && self.lock.get().is_some_and(|v| v.value.is_held_by(me))
    }

    /// The versions checker, after every change of the stored object.
    fn note_version(&mut self) {
        let v: u64 = self
            .lock
            .get()
            .and_then(|v| v.version.as_str().parse().ok())
            .unwrap_or(0);
        if v <= self.last_version {
            self.violations
                .push(Violation::VersionWentBack { at: secs(self.now) });
        }
        self.last_version = v;
    }

    /// Watching nodes hear of every write, sometimes twice, sometimes with a stale record late.
    fn broadcast_watch(&mut self) {
        let current = self.lock.get();
        for node in 0..self.nodes.len() {
            if self.p.elector.observation != crate::Observation::Watch
                || self.nodes[node].elector.is_none()
            {
                continue;
            }
            let inc = self.nodes[node].inc;
            let at = self.now + self.latency();
            self.schedule_at(
                at,
                Ev::Watch {
                    node,
                    inc,
                    record: current.clone(),
                },
            );
            let anomalies = self.while_faults(self.p.watch_anomalies);
            if self.chance(anomalies) {
                let again = at + self.latency();
                self.schedule_at(
                    again,
                    Ev::Watch {
                        node,
                        inc,
                        record: current.clone(),
                    },
                );
            }
            if self.chance(anomalies) {
                let late = at + self.latency() * 10;
                let record = self.previous.clone();
                self.schedule_at(late, Ev::Watch { node, inc, record });
            }
        }
    }

    fn exit(&mut self, node: usize) {
        // The node shut down for the handover sample stays down past the handover.
        let down_for = if self.held_down == Some(node) {
            self.held_down = None;
            self.p.failover_bound() * 2
        } else {
            self.p.restart_delay
        };
        self.go_down(node, "exited", down_for);
    }

    fn on_event(&mut self, node: usize, event: Event) {
        match event {
            Event::StartedLeading {
                token,
                leader_until,
            } => {
                let now = self.now;
                let ends_by = self.nodes[node].clock.true_time_of(leader_until, now);
                let generation = self.nodes[node].write_generation;
                self.nodes[node].term = Some(Term {
                    start: now,
                    generation,
                    leader_until,
                    ends_by,
                });
                self.terms += 1;
                let identity = self.nodes[node].identity.clone();
                // A term on an older object than the last term's (its answer came late) is not
                // in that object's token sequence, and tokens restart with an object recreated
                // by a creator that had not seen the deleted object's last record.
                if let Some((prev, prev_token, prev_generation)) = &self.last_term
                    && generation >= *prev_generation
                    && !self.recreated_between(*prev_generation, generation, |e| e.token)
                {
                    // Every term has a token of its own, even the next term of the same
                    // candidate.
                    let rose = token.0 > *prev_token;
                    if !rose {
                        self.violations.push(Violation::FencingTokenNotIncreasing {
                            previous: (prev.to_string(), *prev_token),
                            next: (identity.to_string(), token.0),
                        });
                        self.log(node, "VIOLATION: fencing token did not rise");
                    }
                }
                self.last_term = Some((identity, token.0, generation));
                if let Some(at) = self.crash_at.take() {
                    self.failover = Some(Duration::from_nanos(now - at));
                }
                if let Some(at) = self.shutdown_at.take() {
                    self.handover = Some(Duration::from_nanos(now - at));
                }
                self.log(node, &format!("STARTED leading, token {token}"));
            }
            Event::Renewed { leader_until } => {
                let now = self.now;
                let n = &mut self.nodes[node];
                if let Some(term) = &mut n.term {
                    term.leader_until = leader_until;
                    term.ends_by = n.clock.true_time_of(leader_until, now);
                }
            }
            Event::StoppedLeading { reason } => {
                self.end_term(node, self.now);
                self.log(node, &format!("STOPPED leading: {reason:?}"));
                // The leader work takes a while to stop.
                let d = (nanos(self.p.work_stop_delay) as f64 * self.rng.next_f64()) as u64;
                let inc = self.nodes[node].inc;
                self.schedule_at(self.now + d, Ev::WorkStopped { node, inc });
            }
            Event::NewLeader(leader) => {
                let who = leader.map_or("nobody".to_string(), |l| l.to_string());
                self.log(node, &format!("sees leader {who}"));
            }
            Event::Released => self.log(node, "released the lock"),
            Event::Alert(alert) => self.log(node, &format!("ALERT: {alert}")),
        }
    }

    // ---- checkers -------------------------------------------------------------------------

    /// The node that leads at the current true time, if any.
    fn leader_now(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| {
            self.nodes[i].elector.is_some()
                && self.nodes[i]
                    .term
                    .as_ref()
                    .is_some_and(|t| self.now < t.ends_by)
        })
    }

    /// Closes a node's term at true time `t`, or earlier if its clock reached `leader_until`
    /// first (it stopped believing then, even if paused).
    fn end_term(&mut self, node: usize, t: T) {
        if let Some(term) = self.nodes[node].term.take() {
            self.spans.push(Span {
                identity: self.nodes[node].identity.clone(),
                start: term.start,
                end: t.min(term.ends_by),
                generation: term.generation,
            });
        }
    }

    /// From `settle` to the end of the run one term must last throughout: a term that ends
    /// (or starts) in between means leadership flapped or lapsed after the faults stopped.
    fn check_stable(&mut self, settle: T) {
        let horizon = self.now;
        let changes = self
            .spans
            .iter()
            .flat_map(|s| [s.start, s.end])
            .filter(|&t| t > settle && t < horizon)
            .min();
        let covered = self
            .spans
            .iter()
            .any(|s| s.start <= settle && s.end >= horizon);
        if let Some(at) = changes.or((!covered).then_some(settle)) {
            self.violations.push(Violation::Unstable { at: secs(at) });
        }
    }

    /// Whether an object created after generation `a` up to `b` (either order) was recreated
    /// outside the guarantee in the way `what` picks.
    fn recreated_between(&self, a: usize, b: usize, what: impl Fn(&Exempt) -> bool) -> bool {
        self.generations
            .get(a.min(b) + 1..=a.max(b))
            .is_some_and(|recreated| recreated.iter().any(what))
    }

    fn check_overlaps(&mut self) {
        self.spans.sort_by_key(|s| (s.start, s.end));
        let mut furthest: Option<usize> = None;
        for i in 0..self.spans.len() {
            if let Some(f) = furthest {
                let (a, b) = (&self.spans[f], &self.spans[i]);
                // Terms on objects separated by a recreation outside the guarantee.
                let exempt = self.recreated_between(a.generation, b.generation, |e| e.overlap);
                if b.start < a.end && a.identity != b.identity && !exempt {
                    self.violations.push(Violation::Overlap {
                        first: (a.identity.to_string(), secs(a.start), secs(a.end)),
                        second: (b.identity.to_string(), secs(b.start), secs(b.end)),
                    });
                }
            }
            if furthest.is_none_or(|f| self.spans[i].end > self.spans[f].end) {
                furthest = Some(i);
            }
        }
    }

    // ---- trace ----------------------------------------------------------------------------

    fn trace(&mut self, node: usize, action: &Action) {
        let line = format!("{} {node} {action:?}", self.now);
        for b in line.bytes() {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn log(&mut self, node: usize, what: &str) {
        if self.p.timeline {
            let rate = self.nodes[node].clock.rate_ppb() as f64 / PPB as f64;
            let line = format!("node-{node} (rate {rate:.3}): {what}");
            self.timeline_line(line);
        }
    }

    fn timeline_line(&mut self, line: String) {
        if self.p.timeline {
            self.timeline
                .push(format!("[{:>10.3}s] {line}", secs(self.now)));
        }
    }
}
