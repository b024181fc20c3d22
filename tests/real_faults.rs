//! Real faults on a real API server (its own test binary, so that its control plane can be
//! killed without disturbing other tests): kube-apiserver killed (SIGKILL) and restarted on the
//! same etcd while a leader renews and a follower watches, and etcd stopped for longer than the
//! renew deadline. Both drivers take part. Checked: never two leaders at once, the leader
//! keeps or loses its term by the rules, both recover without a restart of the process, and no
//! busy loop while the server is away (connection attempts counted by a TCP proxy in front of
//! the apiserver, requests by the apiserver's audit log).
#![cfg(all(feature = "tokio", feature = "blocking", feature = "kube"))]
#![allow(clippy::disallowed_methods)] // these tests read the real clock

mod apiserver;
mod backend;
mod common;
mod envtest;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backend::Backend;
use common::id;
use leasehold::kube::LeaseLock;
use leasehold::{AfterLoss, Config, Observation};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::sleep;

/// A TCP proxy in front of the apiserver that counts the connections clients open (the
/// attempts made while the apiserver is down included: the proxy accepts them, finds nobody
/// behind, and closes them).
struct Proxy {
    url: String,
    connections: Arc<AtomicU64>,
}

async fn proxy(upstream: SocketAddr) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
    let port = listener.local_addr().expect("bound").port();
    let connections = Arc::new(AtomicU64::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    Proxy {
        url: format!("https://127.0.0.1:{port}"),
        connections,
    }
}

/// 3 s lease, 2 s renew deadline, 250 ms retry period: a renew deadline that an apiserver
/// restart (about 2 s) may or may not fit in.
fn timings(name: &str) -> Config {
    let mut c = Config::new(id(name));
    c.lease_duration = Duration::from_secs(3);
    c.renew_deadline = Duration::from_secs(2);
    c.retry_period = Duration::from_millis(250);
    c.release_on_cancel = true;
    c.observation = Observation::Watch;
    c.after_loss = AfterLoss::Recontend;
    c
}

/// Whether each candidate leads, sampled every 5 ms; fails on two leaders at once.
struct Watcher {
    overlap: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Watcher {
    fn start(leading: Vec<Box<dyn Fn() -> bool + Send + Sync>>) -> Watcher {
        let overlap = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (o, s) = (overlap.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if leading.iter().filter(|l| l()).count() > 1 {
                    o.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Watcher { overlap, stop }
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        assert!(!self.overlap.load(Ordering::Relaxed), "two leaders at once");
    }
}

/// A tokio candidate and a blocking candidate on the Lease `ctl`, through the proxy.
async fn candidates(
    b: &Backend,
    proxy: &Proxy,
) -> (leasehold::tokio::Handle, leasehold::blocking::Handle) {
    let plane = b.plane().expect("the real server");
    let client = plane.client_via("cand-0", b.ns(), &proxy.url).await;
    let tokio_handle = leasehold::tokio::LeaderElector::builder(
        timings("tokio"),
        LeaseLock::new(client, b.ns(), "ctl"),
    )
    .on_started_leading(|leader| async move { leader.cancel.cancelled().await })
    .on_stopped_leading(|| {})
    .build()
    .expect("valid")
    .spawn();
    let (ns, url) = (b.ns().to_string(), proxy.url.clone());
    let blocking_handle = tokio::task::spawn_blocking(move || {
        let lock = leasehold::blocking::RemoteLock::spawn(move || async move {
            let client = plane.client_via("cand-1", &ns, &url).await;
            Ok::<_, String>(LeaseLock::new(client, &ns, "ctl"))
        })
        .expect("the lock starts");
        leasehold::blocking::LeaderElector::builder(timings("blocking"), lock)
            .on_started_leading(|leader| leader.stop.wait())
            .on_stopped_leading(|| {})
            .build()
            .expect("valid")
            .spawn()
    })
    .await
    .expect("built");
    (tokio_handle, blocking_handle)
}

async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_killed_and_restarted_under_both_drivers() {
    let Some(b) = Backend::real_exclusive("apiserver_killed").await else {
        return;
    };
    let plane = b.plane().expect("the real server");
    let proxy = proxy(plane.addr()).await;
    let (t, k) = candidates(&b, &proxy).await;
    let (t, k) = (Arc::new(t), Arc::new(k));
    let (t2, k2) = (t.clone(), k.clone());
    let watcher = Watcher::start(vec![
        Box::new(move || t2.is_leader()),
        Box::new(move || k2.is_leader()),
    ]);
    until("a leader", Duration::from_secs(10), || {
        t.is_leader() || k.is_leader()
    })
    .await;
    sleep(Duration::from_secs(1)).await;
    // The crash, for longer than the renew deadline (2 s).
    let before = proxy.connections.load(Ordering::Relaxed);
    plane.kill_apiserver();
    let down = Instant::now();
    sleep(Duration::from_secs(3)).await;
    let attempts = proxy.connections.load(Ordering::Relaxed) - before;
    assert!(
        !t.is_leader() && !k.is_leader(),
        "the leader stepped down by its own clock"
    );
    // Two candidates, 3 s, a retry period of 250 ms: at most a few attempts per retry period
    // each (a reconnecting watch included), never a busy loop.
    let bound = 2 * 3 * 4 * 4;
    assert!(
        attempts <= bound,
        "{attempts} connection attempts while down (bound {bound})"
    );
    tokio::task::spawn_blocking(move || plane.start_apiserver())
        .await
        .expect("no panic")
        .expect("restarted");
    let back = down.elapsed();
    let again = until("a leader again", Duration::from_secs(20), || {
        t.is_leader() || k.is_leader()
    })
    .await;
    eprintln!(
        "apiserver killed: {attempts} connection attempts in 3 s while down; restarted after {back:?}, a leader again {again:?} later"
    );
    // Both recover: a handover from whichever leads to the other works.
    if t.is_leader() {
        t.stop();
        t.finished().await;
        until(
            "the blocking candidate leads",
            Duration::from_secs(10),
            || k.is_leader(),
        )
        .await;
    } else {
        k.stop();
        let waiting = k.clone();
        tokio::task::spawn_blocking(move || waiting.finished())
            .await
            .expect("finished");
        until("the tokio candidate leads", Duration::from_secs(10), || {
            t.is_leader()
        })
        .await;
    }
    watcher.finish();
    shut_down(&t, &k).await;
}

async fn shut_down(t: &leasehold::tokio::Handle, k: &Arc<leasehold::blocking::Handle>) {
    t.stop();
    t.finished().await;
    k.stop();
    let k = k.clone();
    tokio::task::spawn_blocking(move || k.finished())
        .await
        .expect("finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_for_longer_than_the_renew_deadline() {
    let Some(b) = Backend::real_exclusive("etcd_stopped").await else {
        return;
    };
    let plane = b.plane().expect("the real server");
    let proxy = proxy(plane.addr()).await;
    let (t, k) = candidates(&b, &proxy).await;
    let (t, k) = (Arc::new(t), Arc::new(k));
    let (t2, k2) = (t.clone(), k.clone());
    let watcher = Watcher::start(vec![
        Box::new(move || t2.is_leader()),
        Box::new(move || k2.is_leader()),
    ]);
    until("a leader", Duration::from_secs(10), || {
        t.is_leader() || k.is_leader()
    })
    .await;
    sleep(Duration::from_secs(1)).await;
    let requests_before = plane.requests_of("cand-0").len() + plane.requests_of("cand-1").len();
    plane.kill_etcd();
    let stepped_down = until("the leader steps down", Duration::from_secs(4), || {
        !t.is_leader() && !k.is_leader()
    })
    .await;
    assert!(
        stepped_down <= Duration::from_millis(2100),
        "within the renew deadline: {stepped_down:?}"
    );
    sleep(Duration::from_secs(4)).await;
    let requests =
        plane.requests_of("cand-0").len() + plane.requests_of("cand-1").len() - requests_before;
    // About 5 s without etcd: every request fails or times out, and is paced.
    let bound = 2 * 5 * 4 * leasehold::elector::MAX_OPS_PER_RETRY_PERIOD;
    assert!(
        requests <= bound,
        "{requests} requests while etcd was down (bound {bound})"
    );
    tokio::task::spawn_blocking(move || plane.start_etcd())
        .await
        .expect("no panic")
        .expect("etcd is back");
    let again = until("a leader again", Duration::from_secs(60), || {
        t.is_leader() || k.is_leader()
    })
    .await;
    eprintln!(
        "etcd stopped: stepped down after {stepped_down:?}, {requests} requests in about 5 s; a leader again {again:?} after etcd returned"
    );
    watcher.finish();
    shut_down(&t, &k).await;
}
