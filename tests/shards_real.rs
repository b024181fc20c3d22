//! Shard ownership on a real kube-apiserver, with replicas as separate OS processes (this test
//! binary, run again with `replica_process` selected): `ShardedMember` over `MemberLeases`,
//! group `stamps`, 64 shards, scaled 3 → 5 → 2 (two graceful leaves and one SIGKILL).
//!
//! Every shard's work appends `<replica> <shard> <unix_micros> <token>` to a shared file every
//! 50 ms until its `cancel` fires. From that file: no shard ever runs on two replicas at
//! overlapping times (and tokens rise from run to run), every shard is run again within a
//! bound after each change, and at the end every shard runs on exactly one of the survivors.
//! Printed: each replica's requests per minute by verb (from the audit log, one `cand-N`
//! user per replica) and the hand-over gaps.
//!
//! Skipped (with a note) without `KUBEBUILDER_ASSETS`; run with
//! `KUBEBUILDER_ASSETS=../shared/envtest LEASEHOLD_REQUIRE_REAL_APISERVER=1`.
#![cfg(all(feature = "kube", feature = "tokio"))]
#![allow(clippy::disallowed_methods)] // these tests read the real clock and spawn processes

mod envtest;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leasehold::kube::MemberLeases;
use leasehold::shards::ShardConfig;
use leasehold::tokio::{ShardContext, ShardedMember};
use leasehold::{Config, Identity, Observation};
use tokio::time::sleep;

/// A replica's arguments (kubeconfig, namespace, identity, stamp file; one a line), for a
/// process started by [`Replica::start`].
const ARGS: &str = "LEASEHOLD_SHARDS_REAL_ARGS";
const GROUP: &str = "stamps";
const SHARDS: u32 = 64;
const LEASE: Duration = Duration::from_secs(4);
const RENEW_DEADLINE: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_millis(500);
const STAMP_EVERY: Duration = Duration::from_millis(50);
/// How long a graceful hand-over may leave a shard without a run.
const GRACEFUL_BOUND: Duration = Duration::from_secs(4 + 3);
/// How long a shard of a SIGKILLed replica (or one waiting for it) may go without a run.
const KILL_BOUND: Duration = Duration::from_secs(4 + 4);
/// How long after the first three replicas start every shard must have run.
const START_BOUND: Duration = Duration::from_secs(15);

fn micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// Not a test: one replica, as a process. `real_shards_scale_3_5_2` runs this binary again
/// with this test selected and the replica's arguments in `LEASEHOLD_SHARDS_REAL_ARGS`;
/// without them it does nothing.
#[test]
#[ignore = "a replica, started by real_shards_scale_3_5_2"]
fn replica_process() {
    let Ok(args) = std::env::var(ARGS) else {
        return;
    };
    // The test that started this replica holds its stdin: if that test dies (even by
    // SIGKILL), the replica follows at once.
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(3);
    });
    // libtest wrote "test replica_process ... " without a newline: end that line.
    println!();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let args: Vec<String> = args.split('\n').map(String::from).collect();
    let [kubeconfig, namespace, identity, stamps] = args.as_slice() else {
        panic!("four arguments: {args:?}");
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(replica(
        Path::new(kubeconfig),
        namespace,
        identity,
        Path::new(stamps),
    ));
    std::process::exit(0);
}

/// Runs one member until SIGTERM, then leaves the group (every shard stopped, Lease
/// released).
async fn replica(kubeconfig: &Path, namespace: &str, identity: &str, stamps: &Path) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).expect("a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a client configuration");
    let client = kube::Client::try_from(config).expect("a client");
    let mut member = Config::new(Identity::new(identity).expect("non-empty"));
    member.lease_duration = LEASE;
    member.renew_deadline = RENEW_DEADLINE;
    member.retry_period = RETRY;
    member.observation = Observation::Watch;
    let config = ShardConfig::new(member, GROUP, SHARDS);
    let leases = MemberLeases::new(client, namespace, &config.group, &config.lease_name);
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stamps)
            .expect("the stamp file opens"),
    );
    let me = identity.to_string();
    let seed = identity.bytes().map(u64::from).sum();
    let handle = ShardedMember::new(config, leases, move |ctx: ShardContext| {
        let file = file.clone();
        let me = me.clone();
        async move {
            // A stamp is taken only while not cancelled: every stamp precedes the report
            // that the work stopped, and so the next owner's start.
            while !ctx.cancel.is_cancelled() {
                let line = format!("{me} {} {} {}\n", ctx.shard, micros(), ctx.token);
                // One write(2) of one line, on a file opened for appending.
                (&*file)
                    .write_all(line.as_bytes())
                    .expect("the stamp is written");
                tokio::select! {
                    () = ctx.cancel.cancelled() => break,
                    () = sleep(STAMP_EVERY) => {}
                }
            }
        }
    })
    .expect("a valid configuration")
    .seed(seed)
    .spawn();
    println!("running {identity}");
    term.recv().await;
    handle.shutdown().await;
    println!("left {identity}");
}

/// A replica, running as a process.
struct Replica {
    name: String,
    child: Child,
    started: u128,
    ended: Option<u128>,
    code: Option<i32>,
    stderr: PathBuf,
    said: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    fn start(
        plane: &envtest::ControlPlane,
        ns: &str,
        index: usize,
        dir: &Path,
        stamps: &Path,
    ) -> Replica {
        let name = format!("r-{index}");
        let kubeconfig = plane.kubeconfig(&format!("cand-{index}"), ns);
        let args = [
            kubeconfig.display().to_string(),
            ns.to_string(),
            name.clone(),
            stamps.display().to_string(),
        ]
        .join("\n");
        let stderr = dir.join(format!("{name}.stderr"));
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args([
                "replica_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ARGS, args)
            .env(
                "RUST_LOG",
                std::env::var("REPLICA_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("a stderr file"))
            .spawn()
            .expect("a replica starts");
        let said = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped");
        let into = said.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                into.lock().expect("not poisoned").push(line);
            }
        });
        Replica {
            name,
            child,
            started: micros(),
            ended: None,
            code: None,
            stderr,
            said,
            reader: Some(reader),
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// SIGKILL.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().expect("waits");
        self.ended = Some(micros());
        self.code = status.code();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }

    /// Notes the exit, if it has happened.
    fn poll(&mut self) -> bool {
        if self.ended.is_some() {
            return true;
        }
        match self.child.try_wait().expect("waits") {
            Some(status) => {
                self.ended = Some(micros());
                self.code = status.code();
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                true
            }
            None => false,
        }
    }

    fn said(&self) -> Vec<String> {
        self.said.lock().expect("not poisoned").clone()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if self.ended.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sleeps `d`, noting the exits of the replicas meanwhile.
async fn run_for(d: Duration, replicas: &mut [Replica]) {
    let start = Instant::now();
    while start.elapsed() < d {
        for r in replicas.iter_mut() {
            r.poll();
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the replicas `which` have exited (at most `limit`).
async fn exited(which: &[usize], limit: Duration, replicas: &mut [Replica]) {
    let start = Instant::now();
    loop {
        let mut all = true;
        for &i in which {
            all &= replicas[i].poll();
        }
        if all {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "not all of {which:?} exited within {limit:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, Clone, Copy)]
struct Stamp {
    replica: usize,
    shard: u32,
    at: u128,
    token: u64,
}

fn parse(line: &str) -> Option<Stamp> {
    let mut w = line.split(' ');
    let replica = w.next()?.strip_prefix("r-")?.parse().ok()?;
    let shard = w.next()?.parse().ok()?;
    let at = w.next()?.parse().ok()?;
    let token = w.next()?.parse().ok()?;
    w.next().is_none().then_some(Stamp {
        replica,
        shard,
        at,
        token,
    })
}

/// One run of a shard's work: one replica, one token, its first and last stamp.
#[derive(Debug, Clone, Copy)]
struct Run {
    replica: usize,
    token: u64,
    first: u128,
    last: u128,
    stamps: usize,
    /// The longest time between two of its stamps.
    stall: u128,
}

/// `2025-01-02T03:04:05.123456Z` as unix micros.
fn rfc3339_micros(s: &str) -> Option<u128> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, min, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
    let frac: i64 = frac.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60 + sec;
    u128::try_from(secs * 1_000_000 + frac).ok()
}

fn ms(us: u128) -> String {
    format!("{:.0}ms", us as f64 / 1000.0)
}

fn p50_max(v: &mut [u128]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort_unstable();
    format!(
        "n={} p50={} p90={} max={} ({} over 1s)",
        v.len(),
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[v.len() - 1]),
        v.iter().filter(|&&g| g > 1_000_000).count()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_shards_scale_3_5_2() {
    let Some(plane) = envtest::control_plane("real_shards_scale_3_5_2") else {
        return;
    };
    let _turn = plane.turn(false);
    let _logs = plane.logs_on_failure();
    let ns = plane.namespace("real-shards-scale").await;
    let dir = std::env::temp_dir().join(format!("leasehold-shards-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let stamps = dir.join("stamps.log");
    let _ = std::fs::remove_file(&stamps);
    let audit_from: Vec<usize> = (0..5)
        .map(|i| plane.requests_of(&format!("cand-{i}")).len())
        .collect();

    let mut replicas: Vec<Replica> = Vec::new();
    // 3 replicas.
    let t_start = micros();
    for i in 0..3 {
        replicas.push(Replica::start(plane, &ns, i, &dir, &stamps));
    }
    run_for(Duration::from_secs(8), &mut replicas).await;
    // 5 replicas.
    let t_up = micros();
    for i in 3..5 {
        replicas.push(Replica::start(plane, &ns, i, &dir, &stamps));
    }
    run_for(Duration::from_secs(8), &mut replicas).await;
    for r in &mut replicas {
        assert!(
            !r.poll(),
            "{} exited early: {:?}\n{}",
            r.name,
            r.code,
            r.stderr()
        );
    }
    // 2 replicas: r-0 and r-3 leave gracefully, r-1 is killed.
    let t_down = micros();
    replicas[0].signal("TERM");
    replicas[1].kill();
    replicas[3].signal("TERM");
    exited(&[0, 3], Duration::from_secs(10), &mut replicas).await;
    let left = micros();
    run_for(
        Duration::from_secs(12).saturating_sub(Duration::from_micros(
            u64::try_from(left - t_down).unwrap_or(0),
        )),
        &mut replicas,
    )
    .await;
    let t_final = micros();
    replicas[2].signal("TERM");
    replicas[4].signal("TERM");
    exited(&[2, 4], Duration::from_secs(10), &mut replicas).await;
    let t_gone = micros();

    for r in &replicas {
        if r.name != "r-1" {
            assert_eq!(
                r.code,
                Some(0),
                "{} exits cleanly on SIGTERM; said {:?}\n{}",
                r.name,
                r.said(),
                r.stderr()
            );
        }
        let stderr = r.stderr();
        let warnings = stderr.lines().filter(|l| l.contains("WARN")).count();
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("panicked"))
            .collect();
        eprintln!(
            "{}: ran {} to {} (s after the start), exit {:?}, {warnings} warnings in its log",
            r.name,
            ms(r.started - t_start),
            ms(r.ended.unwrap_or(t_gone) - t_start),
            r.code
        );
        assert!(
            errors.is_empty(),
            "{}: errors:\n{}",
            r.name,
            errors.join("\n")
        );
    }
    eprintln!(
        "phases (ms after the start): 5 replicas at {}, down to 2 at {} (r-0, r-3 gone at {}), final SIGTERM at {}",
        ms(t_up - t_start),
        ms(t_down - t_start),
        ms(left - t_start),
        ms(t_final - t_start)
    );

    // The stamps.
    let text = std::fs::read_to_string(&stamps).expect("the stamp file");
    let mut torn = Vec::new();
    let mut by_shard: BTreeMap<u32, Vec<Stamp>> = BTreeMap::new();
    for line in text.lines() {
        match parse(line) {
            Some(s) if s.shard < SHARDS && s.replica < 5 => {
                by_shard.entry(s.shard).or_default().push(s)
            }
            _ => torn.push(line.to_string()),
        }
    }
    assert!(torn.is_empty(), "unreadable stamp lines: {torn:?}");
    eprintln!("{} stamps", text.lines().count());
    assert_eq!(
        by_shard.len(),
        SHARDS as usize,
        "every shard ran: {:?}",
        by_shard.keys().collect::<Vec<_>>()
    );

    let mut problems: Vec<String> = Vec::new();
    // Hand-over gaps by class: at the start, scale-up, graceful leaves during the scale-down,
    // and the SIGKILLed replica's shards.
    let mut gaps: BTreeMap<&str, Vec<u128>> = BTreeMap::new();
    let mut stalls: Vec<u128> = Vec::new();
    let mut first_runs: Vec<u128> = Vec::new();
    for (&shard, stamps) in &mut by_shard {
        stamps.sort_by_key(|s| s.at);
        // Runs: (replica, token) → first, last.
        let mut runs: BTreeMap<(usize, u64), Run> = BTreeMap::new();
        for s in stamps.iter() {
            let run = runs.entry((s.replica, s.token)).or_insert(Run {
                replica: s.replica,
                token: s.token,
                first: s.at,
                last: s.at,
                stamps: 0,
                stall: 0,
            });
            run.stall = run.stall.max(s.at - run.last);
            run.last = s.at;
            run.stamps += 1;
        }
        let mut runs: Vec<Run> = runs.into_values().collect();
        runs.sort_by_key(|r| r.first);
        stalls.extend(runs.iter().map(|r| r.stall));
        first_runs.push(runs[0].first - t_start);
        if runs[0].first - t_start > START_BOUND.as_micros() {
            problems.push(format!(
                "shard {shard}: first run only {} after the start",
                ms(runs[0].first - t_start)
            ));
        }
        // (a) Runs are disjoint in time and their tokens rise.
        let mut latest_end = 0;
        let mut latest: Option<Run> = None;
        for r in &runs {
            if let Some(prev) = latest
                && r.first <= latest_end
            {
                problems.push(format!(
                    "shard {shard}: DOUBLE OWNER: r-{} (token {}) stamped {}..{} and r-{} (token {}) stamped {}..{} (ms after the start)",
                    prev.replica,
                    prev.token,
                    ms(prev.first - t_start),
                    ms(prev.last - t_start),
                    r.replica,
                    r.token,
                    ms(r.first - t_start),
                    ms(r.last - t_start)
                ));
            }
            if let Some(prev) = latest
                && r.token <= prev.token
            {
                problems.push(format!(
                    "shard {shard}: token of r-{} ({}) not above the one before, r-{} ({})",
                    r.replica, r.token, prev.replica, prev.token
                ));
            }
            if r.last >= latest_end {
                latest_end = r.last;
                latest = Some(*r);
            }
        }
        // (b) Hand-overs within their bounds.
        for pair in runs.windows(2) {
            let (old, new) = (pair[0], pair[1]);
            let gap = new.first.saturating_sub(old.last);
            // By the change that moved it: the last before the new run's start.
            let (class, bound) = if new.first < t_up {
                ("start (among r-0..r-2)", GRACEFUL_BOUND)
            } else if new.first < t_down {
                ("scale-up 3->5 (graceful)", GRACEFUL_BOUND)
            } else if old.replica == 1 {
                ("scale-down: from SIGKILLed r-1", KILL_BOUND)
            } else {
                ("scale-down: from SIGTERMed r-0/r-3", GRACEFUL_BOUND)
            };
            gaps.entry(class).or_default().push(gap);
            if gap > bound.as_micros() {
                problems.push(format!(
                    "shard {shard}: {class}: no run for {} (r-{} last at {}, r-{} first at {}; bound {bound:?})",
                    ms(gap),
                    old.replica,
                    ms(old.last - t_start),
                    new.replica,
                    ms(new.first - t_start)
                ));
            }
        }
        // Runs until the final shutdown.
        let last = stamps.last().map_or(0, |s| s.at);
        if last + 500_000 < t_final {
            problems.push(format!(
                "shard {shard}: NEVER RE-OWNED: last stamp at {} by r-{}, the final SIGTERM at {}",
                ms(last - t_start),
                stamps.last().map_or(9, |s| s.replica),
                ms(t_final - t_start)
            ));
        }
        // The last 3 s: exactly one replica, r-2 or r-4.
        let mut at_end: Vec<usize> = stamps
            .iter()
            .filter(|s| s.at + 3_000_000 >= t_final && s.at < t_final)
            .map(|s| s.replica)
            .collect();
        at_end.sort_unstable();
        at_end.dedup();
        if at_end.len() != 1 || !(at_end[0] == 2 || at_end[0] == 4) {
            problems.push(format!(
                "shard {shard}: in the last 3 s before the final SIGTERM stamped by {at_end:?}, not by exactly one of r-2, r-4"
            ));
        }
        // Nothing of r-1 after its SIGKILL, of anyone after its exit.
        for s in stamps.iter() {
            let r = &replicas[s.replica];
            if r.ended.is_some_and(|e| s.at > e) {
                problems.push(format!(
                    "shard {shard}: r-{} stamped at {} after it exited at {}",
                    s.replica,
                    ms(s.at - t_start),
                    ms(r.ended.unwrap_or(0) - t_start)
                ));
            }
        }
    }

    // Who ran what at the end of each phase (the last second before each change).
    for (what, at) in [
        ("3 replicas", t_up),
        ("5 replicas", t_down),
        ("2 replicas", t_final),
    ] {
        let mut load: BTreeMap<String, usize> = BTreeMap::new();
        let mut idle = 0;
        for stamps in by_shard.values() {
            let mut who: Vec<usize> = stamps
                .iter()
                .filter(|s| s.at + 1_000_000 >= at && s.at < at)
                .map(|s| s.replica)
                .collect();
            who.sort_unstable();
            who.dedup();
            match who.as_slice() {
                [] => idle += 1,
                [one] => *load.entry(format!("r-{one}")).or_default() += 1,
                _ => *load.entry("several".into()).or_default() += 1,
            }
        }
        eprintln!(
            "end of {what}: shards per replica {load:?}, {idle} without a stamp in the last second"
        );
    }

    // (c) Requests per replica per minute, by verb.
    for (i, r) in replicas.iter().enumerate() {
        let user = format!("cand-{i}");
        let events = plane.requests_of(&user);
        let events = &events[audit_from[i].min(events.len())..];
        let lived = (r.ended.unwrap_or(t_gone) - r.started) as f64 / 60e6;
        let mut verbs: BTreeMap<String, usize> = BTreeMap::new();
        for e in events {
            *verbs
                .entry(e["verb"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
        let rates: Vec<String> = verbs
            .iter()
            .map(|(v, n)| format!("{v} {:.0}/min ({n})", *n as f64 / lived))
            .collect();
        eprintln!(
            "{} ({user}): {} requests in {:.1}s: {}",
            r.name,
            events.len(),
            lived * 60.0,
            rates.join(", ")
        );
        // In the stable group of two (from 8 s after the scale-down to the final SIGTERM).
        if i == 2 || i == 4 {
            let (from, to) = (t_down + 8_000_000, t_final);
            let mut verbs: BTreeMap<String, usize> = BTreeMap::new();
            for e in events {
                let at = e["requestReceivedTimestamp"]
                    .as_str()
                    .and_then(rfc3339_micros)
                    .unwrap_or(0);
                if at >= from && at < to {
                    *verbs
                        .entry(e["verb"].as_str().unwrap_or("?").to_string())
                        .or_default() += 1;
                }
            }
            let window = (to.saturating_sub(from)) as f64 / 60e6;
            let rates: Vec<String> = verbs
                .iter()
                .map(|(v, n)| format!("{v} {:.0}/min ({n})", *n as f64 / window))
                .collect();
            eprintln!(
                "  {} steady, 2 members, last {:.1}s: {}",
                r.name,
                window * 60.0,
                rates.join(", ")
            );
        }
    }

    // Hand-over gaps.
    first_runs.sort_unstable();
    eprintln!(
        "first run of a shard after the start: p50 {} max {}",
        ms(first_runs[first_runs.len() / 2]),
        ms(first_runs[first_runs.len() - 1])
    );
    for (class, v) in &mut gaps {
        eprintln!("hand-over gaps, {class}: {}", p50_max(v));
    }
    eprintln!(
        "longest pause between two stamps of one run: {}",
        ms(stalls.iter().copied().max().unwrap_or(0))
    );

    if !problems.is_empty() {
        for r in &replicas {
            let stderr = r.stderr();
            let lines: Vec<&str> = stderr.lines().collect();
            eprintln!(
                "---- {} stderr (last 30 lines)\n{}",
                r.name,
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        panic!(
            "{} problems (stamps in {}):\n{}",
            problems.len(),
            stamps.display(),
            problems.join("\n")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
