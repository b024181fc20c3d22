//! `examples/operator.rs` on an API server: copies of the operator as processes (this test
//! binary, run again with `operator_process` selected), ConfigMaps for them to stamp, a handover
//! on SIGTERM and a takeover from a paused leader. Only one term's reconciles ever write at a
//! time, and a paused leader writes nothing once it resumes.
#![cfg(all(feature = "kube", feature = "tokio", feature = "prometheus"))]
#![allow(clippy::disallowed_methods)] // these tests read the real clock and spawn processes

mod apiserver;
mod backend;
mod envtest;

#[path = "../examples/operator.rs"]
#[allow(dead_code)]
mod operator;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backend::Backend;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::time::sleep;

/// The operator's arguments, for a copy started by [`Copy::start`].
const ARGS: &str = "LEASEHOLD_OPERATOR_ARGS";

/// Not a test: one copy of the operator, as a process. The tests below run this binary again
/// with this test selected and the operator's arguments in `LEASEHOLD_OPERATOR_ARGS`; without
/// them it does nothing.
#[test]
#[ignore = "a copy of the operator, started by the other tests"]
fn operator_process() {
    let Ok(args) = std::env::var(ARGS) else {
        return;
    };
    // The test that started this copy holds its stdin: if that test dies (even by SIGKILL),
    // the copy follows at once instead of contending forever.
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(3);
    });
    // libtest has written "test operator_process ... " without a newline: end that line, so
    // that the operator's own lines start at the start of one.
    println!();
    operator::install_logging();
    let flags = operator::Flags::parse(args.split('\n').map(String::from)).expect("valid flags");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let code = match runtime.block_on(operator::run(flags, operator::terminated())) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("operator: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// What a copy printed, parsed.
#[derive(Debug, Clone, PartialEq)]
enum Said {
    Serving(String),
    TermStarted {
        token: u64,
        at: u128,
    },
    Reconciled {
        token: u64,
        cm: String,
        start: u128,
        end: u128,
    },
    TermEnded {
        token: u64,
        at: u128,
    },
}

fn parse(line: &str) -> Option<Said> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let n = |i: usize| words.get(i).and_then(|w| w.parse::<u128>().ok());
    match *words.first()? {
        "serving" => Some(Said::Serving(
            words.get(1)?.trim_start_matches("http://").into(),
        )),
        "term-started" => Some(Said::TermStarted {
            token: u64::try_from(n(2)?).ok()?,
            at: n(3)?,
        }),
        "reconciled" => Some(Said::Reconciled {
            token: u64::try_from(n(2)?).ok()?,
            cm: (*words.get(3)?).to_string(),
            start: n(4)?,
            end: n(5)?,
        }),
        "term-ended" => Some(Said::TermEnded {
            token: u64::try_from(n(2)?).ok()?,
            at: n(3)?,
        }),
        _ => None,
    }
}

/// A copy of the operator, running as a process, and what it printed so far.
struct Copy {
    identity: String,
    child: Child,
    said: Arc<Mutex<Vec<Said>>>,
    /// Reads the copy's stdout until it closes.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Copy {
    fn start(b: &Backend, identity: &str) -> Copy {
        let kubeconfig = b.kubeconfig("admin").display().to_string();
        let args = [
            "--kubeconfig",
            &kubeconfig,
            "--namespace",
            b.ns(),
            "--lease",
            "operator",
            "--identity",
            identity,
            "--http",
            "127.0.0.1:0",
            // Room for a loaded machine: a 3 s renew deadline.
            "--timings-ms",
            "4000,3000,400",
        ]
        .join("\n");
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args([
                "operator_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ARGS, args)
            .env(
                "RUST_LOG",
                std::env::var("OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("a copy starts");
        let said = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("piped");
        let into = said.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(s) = parse(&line) {
                    into.lock().expect("not poisoned").push(s);
                }
            }
        });
        Copy {
            identity: identity.into(),
            child,
            said,
            reader: Some(reader),
        }
    }

    fn said(&self) -> Vec<Said> {
        self.said.lock().expect("not poisoned").clone()
    }

    /// The token of the term this copy began last, if it began one.
    fn last_term(&self) -> Option<(u64, u128)> {
        self.said().iter().rev().find_map(|s| match s {
            Said::TermStarted { token, at } => Some((*token, *at)),
            _ => None,
        })
    }

    fn address(&self) -> Option<String> {
        self.said().iter().find_map(|s| match s {
            Said::Serving(a) => Some(a.clone()),
            _ => None,
        })
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// SIGSTOP, returning once every thread of the copy has stopped: `kill` returns once the
    /// signal is queued, and under load a thread already running keeps running until another
    /// thread of the process got a CPU to begin the stop (the test saw b reconcile after it).
    async fn pause(&self) {
        self.signal("STOP");
        let tasks = format!("/proc/{}/task", self.child.id());
        until("the copy stops", Duration::from_secs(10), || {
            std::fs::read_dir(&tasks).is_ok_and(|threads| {
                threads.flatten().all(|t| {
                    // The state follows the parenthesised command name: `pid (comm) S ...`.
                    std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                        stat.rsplit_once(") ")
                            .is_some_and(|(_, rest)| rest.starts_with(['T', 't']))
                    })
                })
            })
        })
        .await;
    }

    /// SIGTERM, and the exit code.
    async fn terminate(mut self) -> (Option<i32>, Vec<Said>) {
        self.signal("TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waits") {
                // Every line it printed: its stdout is closed now.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return (status.code(), self.said());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} did not exit on SIGTERM",
                self.identity
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET path` from its HTTP endpoint: the status code and the body.
    fn get(&self, path: &str) -> (u16, String) {
        let address = self.address().expect("serving");
        let mut stream = std::net::TcpStream::connect(address).expect("connects");
        write!(stream, "GET {path} HTTP/1.0\r\n\r\n").expect("sends");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("reads");
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_string());
        (code, body)
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn until<F: FnMut() -> bool>(what: &str, limit: Duration, mut f: F) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(20)).await;
    }
}

fn data(value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("greeting".to_string(), value.to_string())])
}

/// The annotations the operator writes on `name`: (digest, reconciled-by).
async fn stamp(api: &Api<ConfigMap>, name: &str) -> (Option<String>, Option<String>) {
    let cm = api.get(name).await.expect("exists");
    let annotations = cm.metadata.annotations.unwrap_or_default();
    (
        annotations.get(operator::DIGEST).cloned(),
        annotations.get(operator::RECONCILED_BY).cloned(),
    )
}

/// Waits until every managed ConfigMap carries `by` and the digest of its data.
async fn all_stamped(api: &Api<ConfigMap>, names: &[&str], by: &str) {
    let start = Instant::now();
    loop {
        let mut done = true;
        for name in names {
            let cm = api.get(name).await.expect("exists");
            let annotations = cm.metadata.annotations.clone().unwrap_or_default();
            done &= annotations.get(operator::RECONCILED_BY).map(String::as_str) == Some(by)
                && annotations.get(operator::DIGEST) == Some(&operator::digest(cm.data.as_ref()));
        }
        if done {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "not all stamped by {by}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Every reconcile of a term ends before any reconcile of a later term starts, and lies within
/// its own term as far as that term's copy saw it.
fn assert_one_term_writes_at_a_time(all: &[(String, Vec<Said>)]) {
    let mut writes: Vec<(u64, u128, u128, String)> = Vec::new();
    for (identity, said) in all {
        for s in said {
            if let Said::Reconciled {
                token, start, end, ..
            } = s
            {
                let began = said.iter().find_map(|t| match t {
                    Said::TermStarted { token: t, at } if t == token => Some(*at),
                    _ => None,
                });
                assert!(
                    began.is_some_and(|b| b <= *start),
                    "{identity} reconciled outside a term: {s:?}"
                );
                writes.push((*token, *start, *end, identity.clone()));
            }
        }
    }
    // Every write of a later term starts after every write of every earlier term ended.
    for later in &writes {
        for earlier in writes.iter().filter(|w| w.0 < later.0) {
            assert!(
                earlier.2 <= later.1,
                "term {} ({}) wrote until {} after term {} ({}) began writing at {}",
                earlier.0,
                earlier.3,
                earlier.2,
                later.0,
                later.3,
                later.1
            );
        }
    }
}

async fn two_copies_one_controller_a_handover_and_a_paused_leader(b: &Backend) {
    let client = b.client().await;
    let api: Api<ConfigMap> = Api::namespaced(client, b.ns());
    let managed = ["cm-0", "cm-1", "cm-2"];
    for name in managed.iter().chain(&["unmanaged"]) {
        let mut cm = ConfigMap {
            data: Some(data("hello")),
            ..Default::default()
        };
        cm.metadata.name = Some((*name).into());
        if *name != "unmanaged" {
            cm.metadata.labels = Some(BTreeMap::from([(
                "leasehold.dev/example".to_string(),
                "operator".to_string(),
            )]));
        }
        api.create(&PostParams::default(), &cm)
            .await
            .expect("created");
    }
    let mut finished: Vec<(String, Vec<Said>)> = Vec::new();

    // a alone leads; b follows.
    let a = Copy::start(b, "a");
    until("a leads", Duration::from_secs(15), || {
        a.last_term().is_some()
    })
    .await;
    let copy_b = Copy::start(b, "b");
    let (token_a, _) = a.last_term().expect("leading");
    all_stamped(&api, &managed, &format!("a {token_a}")).await;
    assert_eq!(stamp(&api, "unmanaged").await, (None, None), "not selected");
    until("b serves", Duration::from_secs(5), || {
        copy_b.address().is_some()
    })
    .await;
    assert!(copy_b.last_term().is_none(), "one leader");

    // Health and metrics: both alive; only a leads.
    assert_eq!(a.get("/healthz").0, 200);
    assert_eq!(copy_b.get("/healthz").0, 200);
    let lock = format!("name=\"{}/operator\"", b.ns());
    let (code, metrics) = a.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains(&format!("leader_election_master_status{{{lock}}} 1")),
        "{metrics}"
    );
    let (_, metrics) = copy_b.get("/metrics");
    assert!(
        metrics.contains(&format!("leader_election_master_status{{{lock}}} 0")),
        "{metrics}"
    );

    // A change is reconciled by the leader.
    api.patch(
        "cm-0",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"greeting": "changed"}})),
    )
    .await
    .expect("patched");
    all_stamped(&api, &managed, &format!("a {token_a}")).await;

    // SIGTERM to the leader: it stops its controller, releases, exits 0; b takes over at once.
    let terminated = Instant::now();
    let (code, said_a) = a.terminate().await;
    assert_eq!(code, Some(0), "a clean exit");
    assert!(
        said_a
            .iter()
            .any(|s| matches!(s, Said::TermEnded { token, .. } if *token == token_a)),
        "the controller stopped: {said_a:?}"
    );
    until("b leads", Duration::from_secs(10), || {
        copy_b.last_term().is_some()
    })
    .await;
    let handover = terminated.elapsed();
    eprintln!("handover on SIGTERM ({}): {handover:?}", b.name());
    let (token_b, b_began) = copy_b.last_term().expect("leading");
    assert!(token_b > token_a, "tokens rise");
    let a_ended = said_a.iter().find_map(|s| match s {
        Said::TermEnded { at, .. } => Some(*at),
        _ => None,
    });
    assert!(
        a_ended.is_some_and(|e| e <= b_began),
        "a's controller stopped before b's started"
    );
    all_stamped(&api, &managed, &format!("b {token_b}")).await;
    finished.push(("a".into(), said_a));

    // b is paused past its lease; a (restarted) takes over. A change made meanwhile is queued
    // in b's watch; once b resumes, its term is over and it writes nothing.
    let a = Copy::start(b, "a");
    until("a follows", Duration::from_secs(5), || {
        a.address().is_some()
    })
    .await;
    copy_b.pause().await;
    let paused = nanos();
    api.patch(
        "cm-1",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"greeting": "while b sleeps"}})),
    )
    .await
    .expect("patched");
    until("a leads again", Duration::from_secs(15), || {
        a.last_term().is_some()
    })
    .await;
    let (token_a2, _) = a.last_term().expect("leading");
    assert!(token_a2 > token_b);
    all_stamped(&api, &managed, &format!("a {token_a2}")).await;
    copy_b.signal("CONT");
    until("b's controller stops", Duration::from_secs(10), || {
        copy_b
            .said()
            .iter()
            .any(|s| matches!(s, Said::TermEnded { token, .. } if *token == token_b))
    })
    .await;
    sleep(Duration::from_secs(1)).await;
    let late: Vec<Said> = copy_b
        .said()
        .into_iter()
        .filter(|s| matches!(s, Said::Reconciled { start, .. } if *start > paused))
        .collect();
    assert!(late.is_empty(), "b wrote after its pause: {late:?}");
    all_stamped(&api, &managed, &format!("a {token_a2}")).await;

    for copy in [a, copy_b] {
        let identity = copy.identity.clone();
        let (code, said) = copy.terminate().await;
        assert_eq!(code, Some(0), "{identity} exits cleanly");
        finished.push((identity, said));
    }
    assert_one_term_writes_at_a_time(&finished);
}

on_both!(two_copies_one_controller_a_handover_and_a_paused_leader);
