//! The tokio driver of a shard group member on the in-memory group, in paused time: work that
//! ends on its own is taken again (at a bounded rate), and a deleted member Lease ends the
//! member after its shards stopped.
#![cfg(feature = "tokio")]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold::shards::{MAX_LISTS_PER_RETRY_PERIOD, MemoryGroup, ShardConfig};
use leasehold::tokio::ShardedMember;
use leasehold::{Config, FencingToken, Identity, Observation};

fn config(name: &str, shards: u32) -> ShardConfig {
    let mut config = Config::new(Identity::new(name).expect("non-empty"));
    config.observation = Observation::Watch;
    ShardConfig::new(config, "g", shards)
}

#[tokio::test(start_paused = true)]
async fn work_that_panics_once_runs_again_with_a_higher_token() {
    let group = MemoryGroup::new();
    let config = config("a", 1);
    let lease = group.member(config.lease_name.clone());
    let tokens: Arc<Mutex<Vec<FencingToken>>> = Arc::default();
    let seen = tokens.clone();
    let handle = ShardedMember::new(config, lease, move |ctx| {
        let first = {
            let mut seen = seen.lock().expect("not poisoned");
            seen.push(ctx.token);
            seen.len() == 1
        };
        async move {
            assert!(!first, "a transient failure in shard {}", ctx.shard);
            ctx.cancel.cancelled().await;
        }
    })
    .expect("valid")
    .spawn();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let tokens = tokens.lock().expect("not poisoned").clone();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert!(tokens[1] > tokens[0], "{tokens:?}");
    assert_eq!(handle.owned_shards(), vec![(0, tokens[1])]);
    handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn work_that_always_returns_at_once_is_restarted_at_most_a_few_times_a_retry_period() {
    let group = MemoryGroup::new();
    let config = config("a", 2);
    let retry_period = config.member.retry_period;
    let lease = group.member(config.lease_name.clone());
    let starts = Arc::new(AtomicUsize::new(0));
    let counted = starts.clone();
    let handle = ShardedMember::new(config, lease, move |_| {
        counted.fetch_add(1, SeqCst);
        async {}
    })
    .expect("valid")
    .spawn();
    let span = Duration::from_secs(60);
    tokio::time::sleep(span).await;
    let starts = starts.load(SeqCst);
    // Every start needs a fence list after the shard was intended again, and lists have a
    // budget per retry period.
    let periods = (span.as_millis() / retry_period.as_millis()) as usize + 1;
    assert!(starts >= 4, "{starts} starts");
    assert!(
        starts <= periods * MAX_LISTS_PER_RETRY_PERIOD,
        "{starts} starts in {span:?}"
    );
    handle.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_deleted_member_lease_stops_every_shard_and_ends_the_member() {
    let group = MemoryGroup::new();
    let config = config("a", 4);
    let lease = group.member(config.lease_name.clone());
    let running = Arc::new(AtomicUsize::new(0));
    let counted = running.clone();
    let handle = ShardedMember::new(config, lease, move |ctx| {
        let running = counted.clone();
        running.fetch_add(1, SeqCst);
        async move {
            ctx.cancel.cancelled().await;
            running.fetch_sub(1, SeqCst);
        }
    })
    .expect("valid")
    .spawn();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(handle.owned_shards().len(), 4);
    assert_eq!(running.load(SeqCst), 4);
    // `kubectl delete lease g-a`: the finalizer holds the Lease until the member released it.
    group.delete("g-a");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(handle.is_finished());
    assert_eq!(running.load(SeqCst), 0);
    assert!(handle.owned_shards().is_empty());
    assert!(group.list().is_empty(), "{:?}", group.list());
}

#[tokio::test(start_paused = true)]
async fn work_handed_to_a_task_is_told_to_stop_once_its_run_is_reported_stopped() {
    let group = MemoryGroup::new();
    let config = config("a", 1);
    let lease = group.member(config.lease_name.clone());
    let alive = Arc::new(AtomicUsize::new(0));
    let counted = alive.clone();
    let handle = ShardedMember::new(config, lease, move |ctx| {
        let alive = counted.clone();
        async move {
            // The shard's work in a task of its own, stopping when told to.
            alive.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                ctx.cancel.cancelled().await;
                alive.fetch_sub(1, SeqCst);
            });
        }
    })
    .expect("valid")
    .spawn();
    tokio::time::sleep(Duration::from_secs(60)).await;
    // Every run but the newest was reported stopped and replaced by a run with a new token.
    // Today: one task per restart, all still running (a dozen or more after 60 s).
    let n = alive.load(SeqCst);
    assert!(n <= 1, "{n} runs of shard 0 alive at once on one member");
    handle.shutdown().await;
}
