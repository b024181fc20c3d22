//! What shard ownership costs: N = 10,000 shards over M = 10 members in one process. Run with
//! `cargo bench --bench shards`.
//!
//! * a view change: a member sees another join (or leave) and recomputes its shards
//!   (rendezvous hashing over N × M weights, then the shards that move);
//! * a renewal: the member's Lease write with its claims annotation (two bitmaps of N bits);
//! * memory per shard, from the process's resident set before and after building 100 members.
//!
//! Std-only timing (no benchmark framework); numbers depend on the machine.
#![allow(clippy::disallowed_methods)] // a benchmark reads the real clock and /proc

use std::hint::black_box;
use std::time::{Duration, Instant as StdInstant};

use leasehold::record::LeaderElectionRecord;
use leasehold::shards::claims::MemberClaims;
use leasehold::shards::hash::Members;
use leasehold::shards::{
    GroupChange, MemberSighting, MemoryGroup, MemoryMember, ShardAction, ShardConfig, ShardInput,
    ShardMember,
};
use leasehold::{Config, Identity, Instant, Now, Observation, Timestamp, Version};

const N: u32 = 10_000;
const M: usize = 10;

fn now(ms: u64) -> Now {
    Now::new(
        Instant::from_millis(ms),
        Timestamp::from_unix_micros(1_700_000_000_000_000 + ms as i64 * 1000)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

fn member(name: &str) -> (ShardMember, MemoryMember) {
    let mut config = Config::new(Identity::new(name).expect("non-empty"));
    config.observation = Observation::Watch;
    config.time_precision = Duration::from_micros(1);
    let config = ShardConfig::new(config, "bench", N);
    let lease = MemoryGroup::new().member(config.lease_name.clone());
    (ShardMember::new(config, now(0), 1).expect("valid"), lease)
}

/// Carries out the member's operations at once; returns how many there were.
fn drain(m: &mut ShardMember, lease: &MemoryMember, at: Now) -> usize {
    let mut ops = 0;
    loop {
        match m.poll_action() {
            ShardAction::Op { op, request, .. } => {
                ops += 1;
                let result = lease.execute(&request);
                m.handle_input(ShardInput::Result {
                    now: at,
                    op,
                    result,
                });
            }
            ShardAction::Emit(_) => {}
            ShardAction::SleepUntil { .. } | ShardAction::Done => return ops,
        }
    }
}

fn sighting(i: usize, version: u64) -> MemberSighting {
    let mut claims = MemberClaims::empty(N);
    claims.epoch = 1;
    MemberSighting {
        name: format!("bench-peer-{i}"),
        version: Version::new(format!("p{i}-{version}")),
        record: LeaderElectionRecord {
            holder: Identity::new(format!("peer-{i}")).ok(),
            lease_duration_seconds: 15,
            ..Default::default()
        },
        annotation: Some(claims.encode("bench")),
        terminating: false,
    }
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn main() {
    // Hashing alone: who owns what among M members, for all N shards.
    let members = Members::new((0..M).map(|i| format!("peer-{i}")));
    let start = StdInstant::now();
    let mut rounds = 0u32;
    while start.elapsed() < Duration::from_secs(1) {
        black_box(members.owned_by("peer-3", N));
        rounds += 1;
    }
    let per = start.elapsed() / rounds;
    println!(
        "rendezvous owned_by, N={N} M={M}: {per:?} ({:.1} µs per 1,000 shards)",
        per.as_secs_f64() * 1e6 / (f64::from(N) / 1000.0)
    );

    // A member of a group of M: join, see the others.
    let (mut m, lease) = member("peer-0");
    drain(&mut m, &lease, now(0));
    let peers: Vec<MemberSighting> = (1..M).map(|i| sighting(i, 0)).collect();
    m.handle_input(ShardInput::Observed {
        now: now(1),
        change: GroupChange::Snapshot(peers),
    });
    drain(&mut m, &lease, now(1));

    // View changes: a peer leaves (its Lease is released) and comes back, alternately.
    let mut t = 2u64;
    let mut changes = 0u32;
    let start = StdInstant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let mut s = sighting(M - 1, u64::from(changes));
        if changes.is_multiple_of(2) {
            s.record.holder = None;
        }
        let at = now(t);
        m.handle_input(ShardInput::Observed {
            now: at,
            change: GroupChange::Applied(s),
        });
        black_box(drain(&mut m, &lease, at));
        changes += 1;
        t += 1;
    }
    let per = start.elapsed() / changes;
    println!(
        "view change (a member leaves or joins), N={N} M={M}: {per:?} ({:.1} µs per 1,000 shards)",
        per.as_secs_f64() * 1e6 / (f64::from(N) / 1000.0)
    );

    // Renewals: time passes a retry period at a time; each renewal writes the claims.
    let (mut m, lease) = member("peer-0");
    drain(&mut m, &lease, now(0));
    let mut t = 0u64;
    let mut writes = 0usize;
    let start = StdInstant::now();
    while start.elapsed() < Duration::from_secs(1) {
        t += 2_000;
        let at = now(t);
        m.handle_input(ShardInput::Timeout(at));
        writes += drain(&mut m, &lease, at);
    }
    let per = start.elapsed() / u32::try_from(writes.max(1)).unwrap_or(u32::MAX);
    let annotation = MemberClaims {
        active: leasehold::shards::claims::ShardSet::full(N),
        ..MemberClaims::empty(N)
    }
    .encode("bench");
    println!(
        "renewal with claims, N={N} (all {N} owned: {} bytes of annotation): {per:?} per write",
        annotation.len()
    );

    // Memory: 100 members of N shards each.
    if let Some(before) = rss_bytes() {
        let many: Vec<(ShardMember, MemoryMember)> =
            (0..100).map(|i| member(&format!("m-{i}"))).collect();
        let after = rss_bytes().unwrap_or(before);
        let per_shard = after.saturating_sub(before) as f64 / (100.0 * f64::from(N));
        println!("memory: {per_shard:.1} bytes per shard (resident set, 100 members of {N})");
        black_box(many);
    }
}
