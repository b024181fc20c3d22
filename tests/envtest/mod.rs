//! A real Kubernetes control plane for the tests: etcd and kube-apiserver from the directory
//! `KUBEBUILDER_ASSETS` names (the envtest convention: controller-runtime's `setup-envtest`
//! lays assets out this way, and `../shared/envtest` holds v1.36.2).
//!
//! * One control plane per test binary, started by the first test that asks, shared by the
//!   others; each test gets a namespace of its own.
//! * Without `KUBEBUILDER_ASSETS` a real-server test says on stderr that it was skipped and
//!   why; with `LEASEHOLD_REQUIRE_REAL_APISERVER=1` a missing or broken asset fails it.
//! * etcd and kube-apiserver run on free loopback ports in a fresh temporary directory, with
//!   RBAC, a static token file (an admin; `alice`, who may do only what a Role grants her; and
//!   `cand-0` to `cand-15`, admins whose requests are told apart in the audit log), a
//!   generated service-account key, the serving certificate from `--cert-dir`, coordinated
//!   leader election (its feature gate and `coordination.k8s.io/v1beta1`), and an audit log of
//!   the `cand-*` users' requests.
//! * Nothing is left running when the binary exits, even after a panic: both processes sit in
//!   the process group of a small sitter process that kills the group once the test binary is
//!   gone.
//! * The apiserver can be killed and restarted on the same etcd data (a real crash), and etcd
//!   stopped and started again.
//! * The logs of both processes are printed when a test fails ([`ControlPlane::logs_on_failure`]).
#![allow(dead_code)]
#![allow(clippy::disallowed_methods)] // a harness reads clocks, the environment, and spawns

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Set to `1` to make a missing or broken control plane a test failure instead of a skip.
pub const REQUIRE: &str = "LEASEHOLD_REQUIRE_REAL_APISERVER";

/// How many `cand-N` users the token file holds.
pub const CANDIDATE_USERS: usize = 16;

pub struct ControlPlane {
    dir: PathBuf,
    assets: PathBuf,
    etcd_url: String,
    etcd_peer_url: String,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    ca_file: PathBuf,
    /// The sitter's process group, which etcd and the apiserver join.
    group: i32,
    sitter: Mutex<Child>,
    etcd: Mutex<Option<Child>>,
    apiserver: Mutex<Option<Child>>,
    tokens: Vec<(String, String)>,
    namespaces: AtomicU64,
    /// Tests that pause, kill or restart a process of the control plane hold this exclusively;
    /// every other test holds it shared, so faults never reach a test that did not ask for
    /// them.
    faults: std::sync::RwLock<()>,
}

/// Held by a test while it uses the control plane: shared, or exclusive for a test that
/// injects real faults.
pub enum Turn {
    Shared(std::sync::RwLockReadGuard<'static, ()>),
    Exclusive(std::sync::RwLockWriteGuard<'static, ()>),
}

static PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The control plane of this test binary, started on first use. `None`, with a note on
/// stderr, when `KUBEBUILDER_ASSETS` is unset and the real server is not required.
///
/// # Panics
/// When [`REQUIRE`] is set and the assets are missing or the control plane does not start,
/// or when the assets are given and it does not start.
pub fn control_plane(test: &str) -> Option<&'static ControlPlane> {
    let required = std::env::var(REQUIRE).is_ok_and(|v| v == "1");
    let Some(assets) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|a| !a.is_empty()) else {
        assert!(
            !required,
            "{test}: {REQUIRE}=1 but KUBEBUILDER_ASSETS is not set (a directory with kube-apiserver and etcd)"
        );
        eprintln!(
            "{test}: skipped on the real API server: KUBEBUILDER_ASSETS is not set (see the README: setup-envtest, or ../shared/envtest)"
        );
        return None;
    };
    let plane = PLANE.get_or_init(|| {
        // A thread of its own: the start uses a runtime, and the caller may be inside one.
        let assets = PathBuf::from(assets);
        std::thread::spawn(move || ControlPlane::start(&assets))
            .join()
            .unwrap_or_else(|_| Err("the start of the control plane panicked".into()))
    });
    match plane {
        Ok(plane) => Some(plane),
        Err(e) => panic!("{test}: the real API server did not start: {e}"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    let a = h.finish();
    h.write_u64(a);
    format!("{a:016x}{:016x}", h.finish())
}

impl ControlPlane {
    fn start(assets: &Path) -> Result<ControlPlane, String> {
        for binary in ["etcd", "kube-apiserver"] {
            if !assets.join(binary).is_file() {
                return Err(format!("{} has no {binary}", assets.display()));
            }
        }
        let dir = std::env::temp_dir().join(format!(
            "leasehold-envtest-{}-{}",
            std::process::id(),
            &random_hex()[..8]
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
        };
        // Users: an admin, alice (no rights but what a Role grants), and admins for counting.
        let mut tokens = vec![
            ("admin".to_string(), random_hex()),
            ("alice".to_string(), random_hex()),
        ];
        tokens.extend((0..CANDIDATE_USERS).map(|i| (format!("cand-{i}"), random_hex())));
        let csv: String = tokens
            .iter()
            .map(|(user, token)| {
                let groups = if user == "alice" {
                    ""
                } else {
                    ",\"system:masters\""
                };
                format!("{token},{user},{user}-uid{groups}\n")
            })
            .collect();
        write("tokens.csv", &csv)?;
        let key = rcgen::KeyPair::generate().map_err(|e| format!("a key pair: {e}"))?;
        write("sa.key", &key.serialize_pem())?;
        write("sa.pub", &key.public_key_pem())?;
        let users: Vec<String> = (0..CANDIDATE_USERS)
            .map(|i| format!("\"cand-{i}\""))
            .collect();
        write(
            "audit.yaml",
            &format!(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [\"ResponseStarted\", \"ResponseComplete\", \"Panic\"]\nrules:\n  - level: Metadata\n    users: [{}]\n  - level: None\n",
                users.join(", ")
            ),
        )?;
        // The sitter: once this test binary is gone, however it ended, kills its process
        // group (itself, etcd, the apiserver) and, from outside the group, removes the data.
        let sitter = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {} 2>/dev/null; do sleep 0.2; done; setsid sh -c 'sleep 1; rm -rf {}' </dev/null >/dev/null 2>&1 & sleep 0.2; kill -9 0",
                std::process::id(),
                dir.display()
            ))
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("the sitter: {e}"))?;
        let group = i32::try_from(sitter.id()).map_err(|e| e.to_string())?;
        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let plane = ControlPlane {
            etcd_url: format!("http://127.0.0.1:{etcd_port}"),
            etcd_peer_url: format!("http://127.0.0.1:{peer_port}"),
            url: format!("https://127.0.0.1:{api_port}"),
            ca_file: dir.join("certs").join("apiserver.crt"),
            assets: assets.to_path_buf(),
            dir,
            group,
            sitter: Mutex::new(sitter),
            etcd: Mutex::new(None),
            apiserver: Mutex::new(None),
            tokens,
            namespaces: AtomicU64::new(0),
            faults: std::sync::RwLock::new(()),
        };
        let started = Instant::now();
        plane.start_etcd()?;
        plane.start_apiserver()?;
        eprintln!(
            "real API server {} ready in {:.1}s ({})",
            plane.url,
            started.elapsed().as_secs_f64(),
            plane.dir.display()
        );
        Ok(plane)
    }

    fn log(&self, name: &str) -> Result<std::fs::File, String> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(name))
            .map_err(|e| format!("{name}: {e}"))
    }

    /// Starts etcd on its data directory (a restart keeps the data) and waits until it
    /// answers.
    pub fn start_etcd(&self) -> Result<(), String> {
        let child = Command::new(self.assets.join("etcd"))
            .arg("--data-dir")
            .arg(self.dir.join("etcd"))
            .args(["--listen-client-urls", &self.etcd_url])
            .args(["--advertise-client-urls", &self.etcd_url])
            .args(["--listen-peer-urls", &self.etcd_peer_url])
            .arg("--unsafe-no-fsync")
            .process_group(self.group)
            .stdin(Stdio::null())
            .stdout(self.log("etcd.log")?)
            .stderr(self.log("etcd.log")?)
            .spawn()
            .map_err(|e| format!("etcd: {e}"))?;
        *self.etcd.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
        let addr = self
            .etcd_url
            .trim_start_matches("http://")
            .parse::<std::net::SocketAddr>()
            .map_err(|e| e.to_string())?;
        self.wait("etcd", Duration::from_secs(30), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        })
    }

    /// Kills etcd (SIGKILL): the apiserver answers with errors until it is started again.
    pub fn kill_etcd(&self) {
        if let Some(mut child) = self
            .etcd
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts kube-apiserver (a restart keeps its port, its certificate and etcd's data) and
    /// waits until it is ready and the `default` namespace exists.
    pub fn start_apiserver(&self) -> Result<(), String> {
        let port = self.url.rsplit(':').next().unwrap_or_default();
        let child = Command::new(self.assets.join("kube-apiserver"))
            .arg(format!("--etcd-servers={}", self.etcd_url))
            .arg(format!("--secure-port={port}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg(format!("--cert-dir={}", self.dir.join("certs").display()))
            .arg(format!(
                "--token-auth-file={}",
                self.dir.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!(
                "--service-account-key-file={}",
                self.dir.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                self.dir.join("sa.key").display()
            ))
            .args([
                "--service-cluster-ip-range=10.0.0.0/24",
                "--endpoint-reconciler-type=none",
                "--feature-gates=CoordinatedLeaderElection=true",
                "--runtime-config=coordination.k8s.io/v1beta1=true",
                // No controller-manager creates the `default` service account, which the
                // admission plugin would require of every pod.
                "--disable-admission-plugins=ServiceAccount",
            ])
            .arg(format!(
                "--audit-policy-file={}",
                self.dir.join("audit.yaml").display()
            ))
            .arg(format!(
                "--audit-log-path={}",
                self.dir.join("audit.log").display()
            ))
            .args(["--audit-log-format=json", "--audit-log-mode=blocking"])
            .process_group(self.group)
            .stdin(Stdio::null())
            .stdout(self.log("apiserver.log")?)
            .stderr(self.log("apiserver.log")?)
            .spawn()
            .map_err(|e| format!("kube-apiserver: {e}"))?;
        *self
            .apiserver
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(child);
        let ready = || {
            self.get_as("admin", "/readyz")
                .is_some_and(|(code, _)| code == 200)
        };
        self.wait("kube-apiserver /readyz", Duration::from_secs(60), ready)?;
        let default = || {
            self.get_as("admin", "/api/v1/namespaces/default")
                .is_some_and(|(code, _)| code == 200)
        };
        self.wait("the default namespace", Duration::from_secs(30), default)
    }

    /// Kills kube-apiserver (SIGKILL: a crash; connections and watches are cut).
    pub fn kill_apiserver(&self) {
        if let Some(mut child) = self
            .apiserver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to kube-apiserver: a paused server.
    pub fn signal_apiserver(&self, signal: &str) {
        if let Some(child) = &*self
            .apiserver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status();
        }
    }

    fn wait(
        &self,
        what: &str,
        limit: Duration,
        mut ok: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let start = Instant::now();
        while !ok() {
            if start.elapsed() > limit {
                return Err(format!(
                    "{what}: not within {limit:?}; last log lines:\n{}",
                    self.log_tails()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// A GET as `user` with curl (no runtime needed): status code and body, or `None` when the
    /// server did not answer.
    pub fn get_as(&self, user: &str, path: &str) -> Option<(u16, String)> {
        let out = Command::new("curl")
            .args([
                "-s",
                "-m",
                "5",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(&self.ca_file)
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", self.token(user)))
            .arg(format!("{}{path}", self.url))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n')?;
        let code: u16 = code.trim().parse().ok()?;
        (code != 0).then(|| (code, body.to_string()))
    }

    /// The bearer token of `user` (`admin`, `alice`, `cand-N`).
    pub fn token(&self, user: &str) -> &str {
        self.tokens
            .iter()
            .find(|(u, _)| u == user)
            .map_or("", |(_, t)| t.as_str())
    }

    /// A kube client for `user`, with `namespace` as its default.
    pub async fn client_in(&self, user: &str, namespace: &str) -> kube::Client {
        let kubeconfig =
            kube::config::Kubeconfig::from_yaml(&self.kubeconfig_text(user, namespace))
                .expect("a valid kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("a client configuration for the real API server");
        kube::Client::try_from(config).expect("a client for the real API server")
    }

    /// A kube client for `user`.
    pub async fn client(&self, user: &str) -> kube::Client {
        self.client_in(user, "default").await
    }

    fn kubeconfig_text(&self, user: &str, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: envtest\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    token: {}\ncontexts:\n- name: {user}\n  context:\n    cluster: envtest\n    user: {user}\n    namespace: {namespace}\ncurrent-context: {user}\n",
            self.url,
            self.ca_file.display(),
            self.token(user)
        )
    }

    /// A kubeconfig for `user` with `namespace` as its default, written next to the data.
    pub fn kubeconfig(&self, user: &str, namespace: &str) -> PathBuf {
        let path = self.dir.join(format!("{user}-{namespace}.kubeconfig"));
        std::fs::write(&path, self.kubeconfig_text(user, namespace)).expect("kubeconfig written");
        path
    }

    /// A fresh namespace for one test, named after it.
    pub async fn namespace(&self, test: &str) -> String {
        let n = self.namespaces.fetch_add(1, Ordering::Relaxed);
        let mut name: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        name.truncate(50);
        let name = format!("{}-{n}", name.trim_matches('-'));
        let api: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(self.client("admin").await);
        let namespace = k8s_openapi::api::core::v1::Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&kube::api::PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("namespace {name}: {e}"));
        name
    }

    /// The requests of `user` the apiserver received (each a JSON audit event, logged on
    /// arrival, whatever became of the request), in order.
    pub fn requests_of(&self, user: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["user"]["username"] == user && e["stage"] == "RequestReceived")
            .collect()
    }

    /// A kube client for `user` that reaches the apiserver at `url` (a proxy in front of it).
    pub async fn client_via(&self, user: &str, namespace: &str, url: &str) -> kube::Client {
        let text = self
            .kubeconfig_text(user, namespace)
            .replace(&self.url, url);
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&text).expect("a valid kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("a client configuration for the real API server");
        kube::Client::try_from(config).expect("a client for the real API server")
    }

    /// The apiserver's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url
            .trim_start_matches("https://")
            .parse()
            .expect("the apiserver listens on an address")
    }

    /// The sum of `apiserver_request_total` over the series whose labels contain all of
    /// `labels` (`resource="leases"`, say).
    pub fn request_total(&self, labels: &[&str]) -> f64 {
        let Some((200, metrics)) = self.get_as("admin", "/metrics") else {
            return f64::NAN;
        };
        metrics
            .lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
            .filter(|l| labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    fn log_tails(&self) -> String {
        ["etcd.log", "apiserver.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                format!("---- {name} (last 40 lines)\n{tail}\n")
            })
            .collect()
    }

    /// Waits for this test's turn: `exclusive` for a test that pauses, kills or restarts a
    /// process of the control plane.
    pub fn turn(&'static self, exclusive: bool) -> Turn {
        if exclusive {
            Turn::Exclusive(self.faults.write().unwrap_or_else(PoisonError::into_inner))
        } else {
            Turn::Shared(self.faults.read().unwrap_or_else(PoisonError::into_inner))
        }
    }

    /// A guard that prints the last lines of both logs if the test fails while it lives.
    pub fn logs_on_failure(&'static self) -> LogsOnFailure {
        LogsOnFailure(self)
    }
}

/// Prints the control plane's logs when dropped during a panic.
pub struct LogsOnFailure(&'static ControlPlane);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the real API server's logs ({}):\n{}",
                self.0.dir.display(),
                self.0.log_tails()
            );
        }
    }
}
