//! Lease-based leader election with a pure, deterministic core, wire-compatible with
//! Kubernetes client-go's `tools/leaderelection`.
//!
//! # Quick start
//!
//! An operator on tokio and kube-rs (features `tokio` and `kube`): the work runs while this
//! replica leads and must stop when `leader.cancel` fires (at the end of the term at the
//! latest); `shutdown` stops it and then releases the Lease, so another replica takes over at
//! once. `examples/operator.rs` is a complete operator with a kube-runtime controller, health
//! endpoints and metrics.
//!
//! ```no_run
//! # #[cfg(all(feature = "tokio", feature = "kube"))]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use leasehold::kube::LeaseLock;
//! use leasehold::tokio::LeaderElector;
//! use leasehold::{AfterLoss, Config, Identity, Observation};
//!
//! let client = kube::Client::try_default().await?;
//! let mut config = Config::new(Identity::new(std::env::var("POD_NAME")?)?);
//! config.release_on_cancel = true;
//! config.after_loss = AfterLoss::Recontend;
//! config.observation = Observation::Watch;
//! let lock = LeaseLock::new(client, "my-namespace", "my-operator");
//! lock.preflight(config.observation).await?; // a missing namespace or permission, said now
//! let handle = LeaderElector::builder(config, lock)
//!     .on_started_leading(|leader| async move {
//!         // Run the controllers; pass `leader.token` (the fencing token) with their writes.
//!         leader.cancel.cancelled().await;
//!     })
//!     .on_stopped_leading(|| {})
//!     .build()?
//!     .spawn();
//! // ... on SIGTERM:
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Without tokio, the `blocking` driver does the same on std threads; without a cluster,
//! [`MemoryLock`] stands in for the Lease; and `leasehold run -- COMMAND` (feature `cli`) puts
//! any program under leader election.
//!
//! # The core
//!
//! The heart of the crate is the [`Elector`]: a state machine that takes observed lock records,
//! local monotonic instants and the results of lock operations as [`Input`]s, and returns
//! [`Action`]s: perform this lock operation, emit this [`Event`], sleep until this instant.
//! It performs no I/O, reads no clock and spawns nothing, so the same code runs under a tokio
//! driver, a plain loop (see `examples/custom_driver.rs`), a simulator or a fuzzer, and given the
//! same inputs and seed it produces the same outputs.
//!
//! Driven by hand, on the in-memory lock:
//!
//! ```
//! use leasehold::{Action, Config, Elector, Identity, Input, Instant, MemoryLock, Now, Timestamp};
//!
//! let lock = MemoryLock::new();
//! let config = Config::new(Identity::new("pod-a")?);
//! let now = Now::new(Instant::ZERO, Timestamp::UNIX_EPOCH);
//! let mut elector = Elector::new(config, now, 42)?;
//! let mut events = Vec::new();
//! loop {
//!     match elector.poll_action() {
//!         Action::Lock { op, request, .. } => {
//!             let result = lock.execute(&request);
//!             elector.handle_input(Input::LockResult { now, op, result });
//!         }
//!         Action::Emit(event) => events.push(event),
//!         Action::SleepUntil { .. } | Action::Done => break,
//!     }
//! }
//! assert!(elector.is_leader(now.instant));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The driving contract
//!
//! After [`Elector::new`] and after every [`Elector::handle_input`], call
//! [`Elector::poll_action`] until it returns [`Action::SleepUntil`] or [`Action::Done`]:
//!
//! * [`Action::Lock`]: perform the request at once and feed its result back as
//!   [`Input::LockResult`] with the same [`OpId`]. Give up at its deadline; the elector will
//!   have counted it as timed out, and a result that still arrives is ignored. The elector has
//!   at most one operation outstanding. (Sending late costs liveness, not safety: a term is
//!   anchored at the instant the action was polled, which is never after the request left.)
//! * [`Action::Emit`]: hand the [`Event`] to the application. Start the guarded work on
//!   [`Event::StartedLeading`], stop it on [`Event::StoppedLeading`]. After *every* stop,
//!   whatever its reason, feed [`Input::LeaderWorkStopped`] once the work has stopped: only
//!   then does the elector start another term or release the lock, so one process never runs
//!   two terms' work at once.
//! * [`Action::SleepUntil`]: feed [`Input::Timeout`] at that instant, unless a lock result,
//!   a watch observation ([`Input::Observed`]) or a shutdown comes first.
//!
//! Every input carries [`Now`]: the monotonic instant, which decides everything, and the wall
//! clock, which only stamps `acquireTime` / `renewTime`. Misuse is harmless: early timeouts are
//! no-ops, an instant earlier than one already seen counts as the latest one seen, stale op ids
//! are ignored, and no input makes the elector panic.
//!
//! # The timing model
//!
//! With LD the lease duration, RD the renew deadline and RP the retry period (15 s, 10 s and
//! 2 s by default, as client-go):
//!
//! * A follower keeps the last record it saw and the local instant it *received* it
//!   (`observed_at`). It may take the lock when the record names no holder, or once
//!   `observed_at + LD_record` has passed without the *record* changing, where `LD_record` is
//!   the `leaseDurationSeconds` the holder wrote. Writes that leave the record alone (labels,
//!   other annotations) do not count, as in client-go. Record timestamps are never trusted.
//! * Every write is a compare-and-swap on the lock object's version, and every record the
//!   elector writes differs from the one it replaces at the lock's time precision
//!   (`renewTime` strictly increases): no write can be an API-server no-op, and a write answered
//!   with the unchanged version anchors nothing.
//! * A lock found absent after it was seen present counts as held for one more LD from the
//!   first sight of its absence; the recreated lock continues `leaderTransitions`.
//! * After a lost race an elector retries at once at most once per RP; otherwise it keeps its
//!   schedule, so it never issues more than [`elector::MAX_OPS_PER_RETRY_PERIOD`] operations
//!   in one RP.
//! * A leader's term is anchored at the instant its last successful write was *issued*:
//!   `leader_until = issued_at + RD`. It emits [`Event::StoppedLeading`] at `leader_until` at
//!   the latest, whether or not a renewal is still in flight.
//!
//! The full model is documented once, on the [`elector`] module.
//!
//! # The safety theorem
//!
//! **If every write is a compare-and-swap on the lock's version, and the ratio of the fastest to
//! the slowest clock rate among the candidates stays below `LD / RD`, then the terms of
//! different candidates never overlap in real time.**
//!
//! Proof sketch. Measure clock rates `r` in local seconds per real second. Let leader A's last
//! successful write W be issued at real time `t_i` and commit at `t_c >= t_i`. A's term ends
//! when its clock has advanced RD past `t_i`: at real time `t_i + RD / r_A`. For B to start a
//! term after W, B's compare-and-swap must be conditional on the version W wrote (any earlier
//! version fails), so B received an observation of W's record at some real time
//! `t_o >= t_c >= t_i` and then waited until its clock advanced LD: B starts no earlier than
//! `t_i + LD / r_B`. (B dates an observation by the first receipt of its *record*, not its
//! version. That receipt is of W or of a later write that left W's record alone, never of an
//! earlier write, because no write of an elector repeats an earlier record of the lock: a
//! renewal moves `renewTime` forward at the lock's precision, a takeover or a creation raises
//! `leaderTransitions` above every value the elector has seen or written, and a release names
//! no holder with the transitions of the term it ends, which no other release shares.) The terms
//! are disjoint when `LD / r_B >= RD / r_A`, that is when `r_B / r_A <= LD / RD`, which the
//! assumption guarantees for every pair. Latency only delays `t_o`: it costs liveness, never
//! safety. A released lock is no exception: the release record is written after the term ended.
//! Nor is a deleted lock, recreated by a follower that saw the deleted object present: A's last
//! write preceded the deletion, which preceded B's sight of the absence (by a read), and B
//! waits LD from that sight before it creates the lock.
//!
//! What stays outside the guarantee:
//!
//! * a lock object recreated by a candidate that never saw the deleted object (it creates the
//!   lock at once; a leader of the deleted object may still lead until its term ends, and the
//!   new fencing tokens start again from 0, or from the last value that candidate saw);
//! * a deletion when candidates use different lease durations and the follower never saw the
//!   record of a holder whose lease is longer than its own and the last one it saw;
//! * foreign writers whose writes do not change the record (client-go's annotation-lock
//!   renewals within one wall-clock second are API-server no-ops), and watch streams that
//!   replay older records after newer ones (that delays failover, never safety).
//!
//! The derived numbers are on [`Config`]: [`Config::tolerated_clock_rate_ratio`] (1.5 by
//! default) and [`Config::failover_bound`]. client-go's leader keeps leading until its last
//! success *plus* RP plus RD, so its margin is smaller; leasehold reaches the bound.
//!
//! # Drivers and locks
//!
//! * `leasehold::tokio` (feature `tokio`): `LeaderElector` with client-go's callbacks, made
//!   safer: the leader work gets a cancellation token that fires at the end of the term at the
//!   latest, even if the driver is stuck, and the lock is released only after the work returned.
//! * `leasehold::blocking` (feature `blocking`): the same on std threads, with a `BlockingLock`
//!   twin of the lock interface and `RemoteLock` to run a Kubernetes lock on a private runtime.
//! * `leasehold::kube` (feature `kube`): Lease, Endpoints and ConfigMap locks and MultiLock over
//!   kube-rs, with Kubernetes events.
//! * [`MemoryLock`]: a linearizable in-memory lock for tests, examples and single-host use.
//!
//! The modules `leasehold::tokio` and `leasehold::kube` are named after the crates they build
//! on. Import items from them (`use leasehold::tokio::LeaderElector;`) rather than the modules
//! themselves: `use leasehold::tokio;` shadows the `tokio` crate in that scope (write `::tokio`
//! for the crate there).
//!
//! # Shard ownership
//!
//! [`shards::ShardMember`] spreads N shards over the live members of a group, one Lease per
//! member whatever N, on the same timing model: its membership term is an [`Elector`] on its
//! own Lease, and a shard starts only after an intent, a fence on a consistent list of the
//! group and an activation. The module docs state the contract and prove that at most one
//! member runs a shard at any real time under the same clock-rate bound; the simulator
//! ([`sim::shards`], feature `sim`) checks it, the tokio driver runs it
//! (`leasehold::tokio::ShardedMember`), and `leasehold::kube::MemberLeases` keeps the member
//! Leases on Kubernetes.
//!
//! # The `leasehold` command
//!
//! The `cli` feature builds `leasehold`, which puts any program under leader election
//! (`leasehold run -- COMMAND`). Its promise: the command, and every process it starts (those
//! that leave its process group or daemonize included), runs only while the wrapper's term
//! lasts: SIGTERM a grace period before an unrenewed term ends, SIGKILL at its end. A guard
//! process, a child subreaper in a process group of its own, enforces the end of each term by
//! itself (the wrapper tells it the end after every renewal), so a paused, stuck or killed
//! wrapper cannot keep the command running; the wrapper enforces it too, as a second line. A
//! restarted wrapper waits out its predecessor's lease, so the two never overlap and the
//! fencing token rises. Under the safety theorem's assumptions no two wrappers' commands run
//! at once. Outside the promise: a guard that is itself stopped or killed, processes started
//! outside the command's tree or under another user, effects already in flight when the
//! command is killed (use the fencing token), and clocks outside the rate bound. The README
//! gives the details.
//!
//! # Checking the theorem, and your configuration
//!
//! The `sim` feature adds `leasehold::sim`: a deterministic simulator that runs many real
//! electors against one linearizable lock, with per-node clock rates, latency, loss,
//! partitions, pauses, crashes and graceful shutdowns, and checks that terms never overlap,
//! that a leader emerges once faults stop, and more. `sim::check(&scenario, seeds)` runs your
//! own configuration; `sim::strategy` has proptest strategies for your own property tests. With
//! the defaults, 2000 seeds with every fault on find no overlap at a clock-rate ratio of 1.49,
//! and dozens at 1.7.
//!
//! # Where leasehold differs from client-go, on purpose
//!
//! * A leader stops at `issued_at + RD` of its last successful write (client-go: up to RP
//!   later), and a lock found deleted, or naming someone else, ends the term at once (client-go
//!   would recreate a deleted lock and keep leading).
//! * Every write changes the record at the lock's precision, so renewals within one second on
//!   an annotation lock, or under a stalled wall clock, are never API-server no-ops (client-go
//!   then believes it renewed while followers see nothing), and a no-op never extends a term.
//! * A deleted lock is recreated only a lease duration after its absence was first seen, with
//!   `leaderTransitions` continued (client-go recreates it at once, from 0).
//! * A candidate renews only records it wrote itself. A record naming it that it did not write
//!   (its previous incarnation's after a restart, an administrator's edit, a twin with the
//!   same identity) is waited out like any other holder's and taken with a higher fencing
//!   token: a restarted candidate leads again only a lease duration after it first read the
//!   lock (client-go renews at once, while the previous process may still be at work). Two
//!   candidates with one identity never lead together: the one that sees the other's renewals
//!   raises [`Alert::IdentityClash`].
//! * `leaderTransitions` is an `int32`: at its maximum the lock never changes hands (a token
//!   would repeat); [`Alert::TransitionsExhausted`] says so.
//! * After every term the elector waits for the leader work to stop before it contends again.
//! * Release waits for the leader work to stop and writes only if the fresh read still names
//!   this candidate (client-go can clobber a new leader).
//! * A held record with `leaseDurationSeconds: 0` counts as our own lease duration, not as
//!   expired. Records that cannot be decoded are never overwritten.
//! * Renewals keep `strategy` and `preferredHolder` (client-go's fast path drops them).
//! * Coordinated election: a leader that sees `preferredHolder` naming another steps down at
//!   once and, with release configured, releases once its work stopped (client-go lets the
//!   lease run out); the first write of a coordinated term counts a transition, so fencing
//!   tokens rise although the election controller never counts them. The
//!   `kube::LeaseCandidateRegistration` answers pings at once and deletes itself on shutdown.
//!   In coordinated mode the controller, not the candidates, decides when a lease has expired,
//!   from `renewTime` and its own clock: the safety theorem above then also needs the
//!   leader's wall clock to agree with the API server's to within `LD - RD`.
//! * Sub-second or fractional-second lease durations are rejected ([`ConfigError`]).
//!
//! # Stability
//!
//! Enums that will grow are `#[non_exhaustive]`: reports and errors ([`Event`], [`Alert`],
//! [`StopReason`], [`WakeReason`], [`Role`], [`Unhealthy`], [`LockErrorKind`],
//! [`ConfigError`], the drivers' `BuildError`, `kube::PreflightError`, `sim::Violation`), the
//! configuration choices ([`AfterLoss`], [`Observation`]) and the elector's [`Input`] (a new
//! input will be one a driver may send, never one it must). Two are exhaustive on purpose:
//! [`Action`] and [`LockRequest`] (with its [`LockResponse`]), because a driver must carry out
//! every action and a lock must answer every request: a new kind is a breaking change that
//! custom drivers and locks should fail to compile against, rather than a wildcard arm that
//! does the wrong thing at run time. The reports the drivers hand out (`LeaderState`,
//! `ErrorReport`, `LeaderContext`) and [`EmptyIdentity`] are `#[non_exhaustive]` structs.
//! [`Config`] has public fields: a new field breaks struct literals that name every field, so
//! build it with [`Config::new`] and assign (or with `..` from another value).

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
#[cfg(any(feature = "tokio", feature = "blocking"))]
pub mod driver;
pub mod elector;
#[cfg(feature = "fuzz")]
#[doc(hidden)]
pub mod fuzz;
#[cfg(feature = "kube")]
pub mod kube;
pub mod lock;
pub mod record;
pub mod shards;
#[cfg(feature = "sim")]
pub mod sim;
pub mod time;

/// The README's Rust snippets, compiled (and the runnable ones run) as doc tests.
#[cfg(all(doctest, feature = "tokio", feature = "kube", feature = "prometheus"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use config::{AfterLoss, Config, ConfigError, Observation};
#[cfg(feature = "blocking")]
pub use driver::blocking;
#[cfg(all(feature = "prometheus", any(feature = "tokio", feature = "blocking")))]
pub use driver::prometheus;
#[cfg(feature = "tokio")]
pub use driver::tokio;
#[cfg(any(feature = "tokio", feature = "blocking"))]
pub use driver::{LeaderMetrics, LeaderState, Probe};
pub use elector::{
    Action, Alert, Elector, Event, FencingToken, Input, Now, OpId, Role, StopReason, Unhealthy,
    WakeReason,
};
pub use lock::{LockError, LockErrorKind, LockRequest, LockResponse, LockResult, MemoryLock};
pub use record::{EmptyIdentity, Identity, LeaderElectionRecord, RecordError, Version, Versioned};
pub use time::{Instant, Timestamp, TimestampError};
