//! Shard ownership on the in-memory group: 64 shards among members that join and leave.
//!
//! Three members start; two more join; three leave gracefully. After each change the example
//! prints who owns how many shards, and how long the moved shards went without an owner
//! (from the old owner's stop to the new owner's start). Every shard's work records itself in
//! a shared table while it runs: if a shard ever ran on two members at once, the example says
//! so and exits with status 1.
//!
//! ```text
//! cargo run --example shards
//! ```

#![allow(clippy::disallowed_methods)] // an application reads the real clock

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leasehold::shards::{MemoryGroup, ShardConfig};
use leasehold::tokio::{ShardHandle, ShardedMember};
use leasehold::{Config, Identity, Observation};

const SHARDS: u32 = 64;

/// Who runs each shard now, when the last run of each shard stopped, and the double owners.
#[derive(Default)]
struct Table {
    running: BTreeMap<u32, String>,
    stopped_at: BTreeMap<u32, Instant>,
    gaps: Vec<Duration>,
    double_owners: Vec<String>,
}

fn member(group: &MemoryGroup, name: &str, table: &Arc<Mutex<Table>>) -> ShardHandle {
    let mut config = Config::new(Identity::new(name).expect("a non-empty identity"));
    config.lease_duration = Duration::from_secs(4);
    config.renew_deadline = Duration::from_secs(3);
    config.retry_period = Duration::from_millis(500);
    config.observation = Observation::Watch;
    let config = ShardConfig::new(config, "demo", SHARDS);
    let lease = group.member(config.lease_name.clone());
    let table = table.clone();
    let me = name.to_owned();
    ShardedMember::new(config, lease, move |shard| {
        let table = table.clone();
        let me = me.clone();
        async move {
            {
                let mut t = table.lock().expect("not poisoned");
                if let Some(other) = t.running.insert(shard.shard, me.clone()) {
                    let line = format!("shard {} ran on {other} and {me} at once", shard.shard);
                    t.double_owners.push(line);
                }
                if let Some(stopped) = t.stopped_at.remove(&shard.shard) {
                    t.gaps.push(stopped.elapsed());
                }
            }
            // The work: here, nothing but waiting to be told to stop.
            shard.cancel.cancelled().await;
            let mut t = table.lock().expect("not poisoned");
            if t.running.get(&shard.shard) == Some(&me) {
                t.running.remove(&shard.shard);
            }
            t.stopped_at.insert(shard.shard, Instant::now());
        }
    })
    .expect("a valid configuration")
    .seed(name.len() as u64)
    .spawn()
}

async fn settle(what: &str, table: &Arc<Mutex<Table>>) {
    // Long enough for every shard to move: a few round trips in memory, and for a crashed
    // member a lease duration; here everything is graceful.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut t = table.lock().expect("not poisoned");
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for owner in t.running.values() {
        *load.entry(owner.as_str()).or_default() += 1;
    }
    let owned: usize = load.values().sum();
    let worst = t.gaps.iter().max().copied().unwrap_or_default();
    println!(
        "{what}: {owned}/{SHARDS} shards owned {load:?}; {} shards moved, longest without an owner {worst:?}",
        t.gaps.len()
    );
    t.gaps.clear();
}

#[tokio::main]
async fn main() {
    let group = MemoryGroup::new();
    let table = Arc::new(Mutex::new(Table::default()));
    let mut members: BTreeMap<String, ShardHandle> = BTreeMap::new();
    for name in ["alpha", "bravo", "charlie"] {
        members.insert(name.into(), member(&group, name, &table));
    }
    settle("three members", &table).await;
    for name in ["delta", "echo"] {
        members.insert(name.into(), member(&group, name, &table));
    }
    settle("five members", &table).await;
    for name in ["alpha", "charlie", "echo"] {
        if let Some(handle) = members.remove(name) {
            handle.shutdown().await;
        }
    }
    settle("two members", &table).await;
    for handle in members.into_values() {
        handle.shutdown().await;
    }
    let t = table.lock().expect("not poisoned");
    if t.double_owners.is_empty() {
        println!("no shard ever ran on two members at once");
    } else {
        for line in &t.double_owners {
            eprintln!("{line}");
        }
        std::process::exit(1);
    }
}
