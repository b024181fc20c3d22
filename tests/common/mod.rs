//! A scripted driver for one `Elector`: the test plays the lock and the clock by hand.
#![allow(dead_code)]

use std::time::Duration;

use leasehold::{
    Action, Config, Elector, Event, Identity, Input, Instant, LeaderElectionRecord, LockError,
    LockErrorKind, LockRequest, LockResponse, LockResult, MemoryLock, Now, OpId, Timestamp,
    Version, Versioned, WakeReason,
};

/// 2017-10-10T00:08:42Z, the wall clock at instant zero.
pub const WALL_ORIGIN_MICROS: i64 = 1_507_594_122_000_000;

pub fn id(s: &str) -> Identity {
    Identity::new(s).expect("test identities are non-empty")
}

/// client-go's test configuration: identity "baz", a 10 s lease (5 s / 2 s for the rest).
pub fn config() -> Config {
    let mut c = Config::new(id("baz"));
    c.name = "foo/bar".into();
    c.lease_duration = Duration::from_secs(10);
    c.renew_deadline = Duration::from_secs(5);
    c.retry_period = Duration::from_secs(2);
    c
}

/// Short timings for the driver tests: 2 s lease, 1.5 s renew deadline, 200 ms retry period,
/// release on shutdown.
pub fn fast(name: &str) -> Config {
    let mut c = Config::new(id(name));
    c.lease_duration = Duration::from_secs(2);
    c.renew_deadline = Duration::from_millis(1500);
    c.retry_period = Duration::from_millis(200);
    c.release_on_cancel = true;
    c
}

pub fn record(holder: &str, lease_seconds: u32) -> LeaderElectionRecord {
    LeaderElectionRecord {
        holder: Identity::new(holder).ok(),
        lease_duration_seconds: lease_seconds,
        ..Default::default()
    }
}

pub fn versioned(version: &str, value: LeaderElectionRecord) -> Versioned<LeaderElectionRecord> {
    Versioned {
        version: Version::new(version),
        value,
    }
}

pub fn found(version: &str, value: LeaderElectionRecord) -> LockResult {
    Ok(LockResponse::Record(Some(versioned(version, value))))
}

pub fn absent() -> LockResult {
    Ok(LockResponse::Record(None))
}

pub fn written(version: &str) -> LockResult {
    Ok(LockResponse::Written(Version::new(version)))
}

pub fn failed(kind: LockErrorKind) -> LockResult {
    Err(LockError::new(kind, "injected by the test"))
}

pub fn secs(s: u64) -> Instant {
    Instant::from_secs(s)
}

pub fn millis(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// One operation the elector issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub op: OpId,
    pub request: LockRequest,
    pub deadline: Instant,
    pub at: Instant,
}

pub struct Harness {
    pub elector: Elector,
    pub now: Instant,
    /// The operation awaiting an answer, if any.
    pub pending: Option<Issued>,
    /// Every operation issued, in order.
    pub issued: Vec<Issued>,
    /// Events not yet taken by the test.
    pub events: Vec<Event>,
    /// The `SleepUntil` that ended the last drain.
    pub sleep: Option<(Instant, WakeReason)>,
    pub done: bool,
}

impl Harness {
    pub fn new(config: Config) -> Self {
        Self::with_seed(config, 1)
    }

    pub fn with_seed(config: Config, seed: u64) -> Self {
        let now = Instant::ZERO;
        let elector = Elector::new(config, wall_now(now), seed).expect("valid config");
        let mut h = Harness {
            elector,
            now,
            pending: None,
            issued: Vec::new(),
            events: Vec::new(),
            sleep: None,
            done: false,
        };
        h.drain();
        h
    }

    pub fn now(&self) -> Now {
        wall_now(self.now)
    }

    /// Polls actions until the elector sleeps or finishes.
    pub fn drain(&mut self) {
        for _ in 0..1000 {
            match self.elector.poll_action() {
                Action::Lock {
                    op,
                    request,
                    deadline,
                } => {
                    assert!(
                        self.pending.is_none(),
                        "a second operation was issued while {:?} is outstanding",
                        self.pending
                    );
                    let issued = Issued {
                        op,
                        request,
                        deadline,
                        at: self.now,
                    };
                    self.issued.push(issued.clone());
                    self.pending = Some(issued);
                }
                Action::Emit(e) => self.events.push(e),
                Action::SleepUntil { at, reason } => {
                    assert_eq!(self.elector.poll_timeout(), Some(at), "poll_timeout agrees");
                    self.sleep = Some((at, reason));
                    return;
                }
                Action::Done => {
                    assert_eq!(self.elector.poll_timeout(), None);
                    self.done = true;
                    self.sleep = None;
                    return;
                }
            }
        }
        panic!("the elector did not settle within 1000 actions");
    }

    pub fn input(&mut self, input: Input) {
        self.elector.handle_input(input);
        self.drain();
    }

    /// The outstanding request (panics if none: a test bug).
    pub fn request(&self) -> &LockRequest {
        &self
            .pending
            .as_ref()
            .expect("an operation is outstanding")
            .request
    }

    /// Answers the outstanding operation.
    pub fn answer(&mut self, result: LockResult) {
        let issued = self.pending.take().expect("an operation is outstanding");
        let now = self.now();
        self.input(Input::LockResult {
            now,
            op: issued.op,
            result,
        });
    }

    /// Answers the outstanding operation from `lock`.
    pub fn answer_from(&mut self, lock: &MemoryLock) {
        let result = lock.execute(self.request());
        self.answer(result);
    }

    /// Moves the clock to `t` and delivers a timeout. The outstanding operation, if its deadline
    /// passed, is forgotten as the elector forgets it.
    pub fn advance_to(&mut self, t: Instant) {
        self.now = self.now.max(t);
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.deadline <= self.now)
        {
            self.pending = None;
        }
        let now = self.now();
        self.input(Input::Timeout(now));
    }

    pub fn advance_by(&mut self, d: Duration) {
        self.advance_to(self.now + d);
    }

    /// Sleeps to the next wake-up.
    pub fn wake(&mut self) {
        let (at, _) = self.sleep.expect("the elector is sleeping");
        self.advance_to(at);
    }

    /// Runs against `lock` with instant answers until `until`, or until done.
    pub fn run(&mut self, lock: &MemoryLock, until: Instant) {
        while !self.done {
            if self.pending.is_some() {
                self.answer_from(lock);
                continue;
            }
            match self.sleep {
                Some((at, _)) if at <= until => self.advance_to(at),
                _ => break,
            }
        }
        if self.now < until && !self.done {
            self.advance_to(until);
        }
    }

    /// The record of the last write the elector issued (the test's stand-in for reading back
    /// what the elector wrote).
    pub fn last_write(&self) -> LeaderElectionRecord {
        self.issued
            .iter()
            .rev()
            .find_map(|i| writes_holder(&i.request).cloned())
            .expect("the elector wrote")
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub fn is_leader(&self) -> bool {
        self.elector.is_leader(self.now)
    }
}

pub fn wall_now(t: Instant) -> Now {
    let micros = i64::try_from(t.as_nanos() / 1000).unwrap_or(i64::MAX);
    let wall = Timestamp::from_unix_micros(WALL_ORIGIN_MICROS + micros).expect("in range");
    Now::new(t, wall)
}

/// Whether an `Update` or `Create` writes a record naming `holder`.
pub fn writes_holder(request: &LockRequest) -> Option<&LeaderElectionRecord> {
    match request {
        LockRequest::Get => None,
        LockRequest::Create(r) | LockRequest::Update { record: r, .. } => Some(r),
    }
}
