//! The main example: leader election with the tokio driver.
//!
//! By default, three candidates in this process contend for an in-memory lock with short
//! timings. The example shows an election, a graceful handover (the leader shuts down and
//! releases), and a crash failover (the next leader dies without releasing), printing a
//! timeline with the measured times. It checks throughout that no two candidates lead at once
//! and exits non-zero if they ever do.
//!
//! ```text
//! cargo run --example election
//! ```
//!
//! Against a real cluster, one candidate on a Lease, until Ctrl-C (then it releases):
//!
//! ```text
//! cargo run --example election -- --kubeconfig ~/.kube/config --namespace default \
//!     --lease my-operator --identity "$(hostname)-$$"
//! ```
//!
//! With `KUBECONFIG` set `--kubeconfig` can be left out; in a pod, pass `--cluster`: kube's
//! standard configuration inference finds the cluster.
#![allow(clippy::disallowed_methods)] // an application reads the real clock

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasehold::kube::LeaseLock;
use leasehold::tokio::{Handle, LeaderElector};
use leasehold::{Config, Identity, MemoryLock, Observation};
use tokio::time::{Instant, sleep};

#[derive(Clone)]
struct Timeline {
    start: Instant,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Timeline {
    fn say(&self, what: impl AsRef<str>) {
        let line = format!(
            "[{:>7.3}s] {}",
            self.start.elapsed().as_secs_f64(),
            what.as_ref()
        );
        println!("{line}");
        self.lines.lock().map(|mut l| l.push(line)).ok();
    }
}

fn candidate<L: leasehold::lock::Lock>(config: Config, lock: L, timeline: &Timeline) -> Handle {
    let name = config.identity.to_string();
    let (t1, t2, t3) = (timeline.clone(), timeline.clone(), timeline.clone());
    let (n1, n2, n3) = (name.clone(), name.clone(), name);
    LeaderElector::builder(config, lock)
        .on_started_leading(move |leader| {
            t1.say(format!(
                "{n1}: started leading, fencing token {}",
                leader.token
            ));
            let t = t1.clone();
            let n = n1.clone();
            async move {
                // The leader work: here it just waits to be told to stop.
                leader.cancel.cancelled().await;
                t.say(format!("{n}: leader work stopped"));
            }
        })
        .on_stopped_leading(move || t2.say(format!("{n2}: stopped leading")))
        .on_new_leader(move |who| match who {
            Some(who) => t3.say(format!("{n3}: sees {who} as leader")),
            None => t3.say(format!("{n3}: sees the lock released")),
        })
        .build()
        .expect("the example's configuration is valid")
        .spawn()
}

/// The one candidate of `handles` that leads, checking there is at most one.
fn leader(handles: &[Option<Handle>]) -> Result<Option<usize>, String> {
    let leading: Vec<usize> = (0..handles.len())
        .filter(|&i| handles[i].as_ref().is_some_and(Handle::is_leader))
        .collect();
    match leading.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(format!("two leaders at once: {many:?}")),
    }
}

/// Waits (checking every 5 ms) until a candidate other than `not` leads; returns it and how long
/// that took.
async fn next_leader(
    handles: &[Option<Handle>],
    not: Option<usize>,
) -> Result<(usize, Duration), String> {
    let start = Instant::now();
    loop {
        if let Some(l) = leader(handles)?
            && Some(l) != not
        {
            return Ok((l, start.elapsed()));
        }
        if start.elapsed() > Duration::from_secs(20) {
            return Err("no leader within 20 s".into());
        }
        sleep(Duration::from_millis(5)).await;
    }
}

async fn in_memory() -> Result<(), String> {
    let timeline = Timeline {
        start: Instant::now(),
        lines: Arc::default(),
    };
    let lock = MemoryLock::new();
    let config = |name: &str| {
        let mut c = Config::new(Identity::new(name).expect("non-empty"));
        c.lease_duration = Duration::from_secs(2);
        c.renew_deadline = Duration::from_millis(1500);
        c.retry_period = Duration::from_millis(200);
        c.release_on_cancel = true;
        c.observation = Observation::Watch;
        c
    };
    timeline
        .say("three candidates, lease 2 s, renew deadline 1.5 s, retry 200 ms, watching the lock");
    let mut handles: Vec<Option<Handle>> = ["a", "b", "c"]
        .iter()
        .map(|n| Some(candidate(config(n), lock.clone(), &timeline)))
        .collect();

    let (first, elected) = next_leader(&handles, None).await?;
    timeline.say(format!("election took {} ms", elected.as_millis()));
    sleep(Duration::from_secs(1)).await;

    timeline.say(format!(
        "{}: shutting down gracefully",
        ["a", "b", "c"][first]
    ));
    let shutdown = Instant::now();
    if let Some(h) = handles[first].take() {
        h.shutdown().await;
    }
    let (second, _) = next_leader(&handles, Some(first)).await?;
    let handover = shutdown.elapsed();
    timeline.say(format!("handover took {} ms", handover.as_millis()));
    sleep(Duration::from_secs(1)).await;

    timeline.say(format!("{}: CRASH (no release)", ["a", "b", "c"][second]));
    let crash = Instant::now();
    if let Some(h) = handles[second].take() {
        h.abort();
    }
    let (_, _) = next_leader(&handles, Some(second)).await?;
    let failover = crash.elapsed();
    timeline.say(format!("failover took {} ms", failover.as_millis()));
    sleep(Duration::from_secs(1)).await;

    for h in handles.iter_mut().filter_map(Option::take) {
        h.shutdown().await;
    }
    println!();
    println!("election: {:>5} ms", elected.as_millis());
    println!(
        "handover: {:>5} ms (graceful shutdown with release, watching)",
        handover.as_millis()
    );
    println!(
        "failover: {:>5} ms (crash; the lease must run out: 2 s)",
        failover.as_millis()
    );
    Ok(())
}

struct ClusterFlags {
    kubeconfig: Option<String>,
    namespace: String,
    lease: String,
    identity: String,
}

async fn in_cluster(flags: ClusterFlags) -> Result<(), String> {
    let client = match &flags.kubeconfig {
        Some(path) => {
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| e.to_string())?;
            kube::Client::try_from(config).map_err(|e| e.to_string())?
        }
        None => kube::Client::try_default()
            .await
            .map_err(|e| e.to_string())?,
    };
    let identity = Identity::new(flags.identity).map_err(|e| e.to_string())?;
    let mut config = Config::new(identity);
    config.name = format!("{}/{}", flags.namespace, flags.lease);
    config.release_on_cancel = true;
    config.observation = Observation::Watch;
    let timeline = Timeline {
        start: Instant::now(),
        lines: Arc::default(),
    };
    let lock = LeaseLock::new(client, &flags.namespace, &flags.lease);
    // Said in the first second: a missing namespace or permission (with the Role to apply). A
    // server that does not answer is waited for (the election logs its errors).
    match lock.preflight(config.observation).await {
        Ok(()) => {}
        Err(e) if e.is_unreachable() => tracing::warn!(error = %e, "contending anyway"),
        Err(e) => return Err(e.to_string()),
    }
    timeline.say(format!(
        "contending for lease {} as {}; Ctrl-C to stop",
        config.name, config.identity
    ));
    let handle = candidate(config, lock, &timeline);
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    timeline.say("stopping: stepping down and releasing");
    handle.shutdown().await;
    Ok(())
}

fn parse() -> Result<Option<ClusterFlags>, String> {
    let mut flags = ClusterFlags {
        kubeconfig: None,
        namespace: "default".into(),
        lease: "leasehold-example".into(),
        identity: String::new(),
    };
    let mut cluster = std::env::var_os("KUBECONFIG").is_some();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--kubeconfig" => {
                flags.kubeconfig = Some(value()?);
                cluster = true;
            }
            "--namespace" => flags.namespace = value()?,
            "--lease" => flags.lease = value()?,
            "--identity" => flags.identity = value()?,
            "--cluster" => cluster = true,
            "--in-memory" => cluster = false,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if flags.identity.is_empty() {
        flags.identity = format!("leasehold-example-{}", std::process::id());
    }
    Ok(cluster.then_some(flags))
}

#[tokio::main]
async fn main() -> ExitCode {
    // Logs to stderr: warnings by default (lock errors, an unreachable server), RUST_LOG to
    // change.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match parse() {
        Ok(Some(flags)) => in_cluster(flags).await,
        Ok(None) => in_memory().await,
        Err(e) => {
            eprintln!(
                "election: {e}\nusage: election [--in-memory | --cluster] [--kubeconfig PATH] [--namespace NS] [--lease NAME] [--identity ID]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("election: {e}");
            ExitCode::FAILURE
        }
    }
}
