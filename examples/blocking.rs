//! Leader election in plain synchronous Rust: the blocking driver on std threads.
//!
//! By default two candidates share an in-memory lock; the first leader shuts down gracefully and
//! the other takes over at once. With `--kubeconfig PATH` (or `KUBECONFIG` set) and
//! `--namespace`, `--lease`, `--identity`, one candidate runs on a real Lease for `--seconds`
//! seconds (default 30), then releases it.
//!
//! ```text
//! cargo run --example blocking
//! ```
#![allow(clippy::disallowed_methods)] // an application reads the real clock

use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant};

use leasehold::blocking::{BlockingLock, Handle, LeaderElector, RemoteLock};
use leasehold::kube::LeaseLock;
use leasehold::{Config, Identity, MemoryLock, Observation};

fn candidate(config: Config, lock: impl BlockingLock, start: Instant) -> Handle {
    let name = config.identity.to_string();
    let (n1, n2) = (name.clone(), name);
    LeaderElector::builder(config, lock)
        .on_started_leading(move |leader| {
            println!(
                "[{:>6.3}s] {n1}: started leading (fencing token {})",
                start.elapsed().as_secs_f64(),
                leader.token
            );
            // The leader work: one unit every 100 ms until told to stop.
            while !leader.stop.wait_timeout(Duration::from_millis(100)) {}
            println!(
                "[{:>6.3}s] {n1}: leader work stopped",
                start.elapsed().as_secs_f64()
            );
        })
        .on_stopped_leading(move || {
            println!(
                "[{:>6.3}s] {n2}: stopped leading",
                start.elapsed().as_secs_f64()
            )
        })
        .build()
        .expect("the example's configuration is valid")
        .spawn()
}

fn in_memory() -> Result<(), String> {
    let start = Instant::now();
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
    let mut handles = vec![
        Some(candidate(config("a"), lock.clone(), start)),
        Some(candidate(config("b"), lock.clone(), start)),
    ];
    let leader = wait_for_leader(&handles, None)?;
    sleep(Duration::from_secs(1));
    println!(
        "[{:>6.3}s] {}: shutting down gracefully",
        start.elapsed().as_secs_f64(),
        ["a", "b"][leader]
    );
    let shutdown = Instant::now();
    if let Some(h) = handles[leader].take() {
        h.shutdown();
    }
    wait_for_leader(&handles, Some(leader))?;
    let handover = shutdown.elapsed();
    sleep(Duration::from_millis(500));
    for h in handles.iter_mut().filter_map(Option::take) {
        h.shutdown();
    }
    println!(
        "\nhandover: {} ms (graceful shutdown with release, watching)",
        handover.as_millis()
    );
    Ok(())
}

fn wait_for_leader(handles: &[Option<Handle>], not: Option<usize>) -> Result<usize, String> {
    let start = Instant::now();
    loop {
        let leading: Vec<usize> = (0..handles.len())
            .filter(|&i| handles[i].as_ref().is_some_and(Handle::is_leader))
            .collect();
        if leading.len() > 1 {
            return Err(format!("two leaders at once: {leading:?}"));
        }
        if let Some(&l) = leading.first()
            && Some(l) != not
        {
            return Ok(l);
        }
        if start.elapsed() > Duration::from_secs(20) {
            return Err("no leader within 20 s".into());
        }
        sleep(Duration::from_millis(5));
    }
}

fn in_cluster(
    kubeconfig: Option<String>,
    namespace: String,
    lease: String,
    identity: String,
    seconds: u64,
) -> Result<(), String> {
    let (ns, name) = (namespace.clone(), lease.clone());
    let lock = RemoteLock::spawn(move || async move {
        let client = match kubeconfig {
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
        Ok::<_, String>(LeaseLock::new(client, &ns, &name))
    })
    .map_err(|e| e.to_string())?;
    let mut config = Config::new(Identity::new(identity).map_err(|e| e.to_string())?);
    config.name = format!("{namespace}/{lease}");
    config.release_on_cancel = true;
    config.observation = Observation::Watch;
    let start = Instant::now();
    println!(
        "contending for lease {} as {} for {seconds} s",
        config.name, config.identity
    );
    let handle = candidate(config, lock, start);
    sleep(Duration::from_secs(seconds));
    handle.shutdown();
    Ok(())
}

fn main() -> ExitCode {
    // Logs to stderr: warnings by default (lock errors, an unreachable server), RUST_LOG to
    // change.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let mut kubeconfig = None;
    let mut cluster = std::env::var_os("KUBECONFIG").is_some();
    let (mut namespace, mut lease) = ("default".to_string(), "leasehold-example".to_string());
    let mut identity = format!("leasehold-blocking-{}", std::process::id());
    let mut seconds = 30;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--kubeconfig", Some(v)) => {
                kubeconfig = Some(v);
                cluster = true;
            }
            ("--namespace", Some(v)) => namespace = v,
            ("--lease", Some(v)) => lease = v,
            ("--identity", Some(v)) => identity = v,
            ("--seconds", Some(v)) => match v.parse() {
                Ok(s) => seconds = s,
                Err(e) => {
                    eprintln!("blocking: --seconds: {e}");
                    return ExitCode::from(2);
                }
            },
            (other, _) => {
                eprintln!(
                    "blocking: unknown or incomplete flag {other}\nusage: blocking [--kubeconfig PATH] [--namespace NS] [--lease NAME] [--identity ID] [--seconds N]"
                );
                return ExitCode::from(2);
            }
        }
    }
    let result = if cluster {
        in_cluster(kubeconfig, namespace, lease, identity, seconds)
    } else {
        in_memory()
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blocking: {e}");
            ExitCode::FAILURE
        }
    }
}
