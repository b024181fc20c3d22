//! `leasehold run`: the command runs only while this candidate leads. The election runs here;
//! the end of each term is enforced by a guard process (see [`crate::guard`]) that does not
//! need this process to be scheduled, and by this process too, as a second line.

use std::ffi::OsString;
use std::time::Duration;

use leasehold::lock::Lock;
use leasehold::tokio::LeaderContext;
use leasehold::{Config, FencingToken};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};

use crate::guard::{FromGuard, GRACE_ENV, SOCKET_ENV, ToGuard, UNTIL_ENV};
use crate::procs::{self, to_monotonic};
use crate::{Fatal, RunArgs};

/// The least time between two starts of the command under `--restart`.
const RESTART_FLOOR: Duration = Duration::from_secs(1);

/// How long a guard has to connect after it was started.
const GUARD_CONNECT: Duration = Duration::from_secs(5);

/// How long past the end of a term this process waits for the guard to have ended the command
/// before it kills what is left itself.
const BACKUP_MARGIN: Duration = Duration::from_millis(100);
const BACKUP_ROUND: Duration = Duration::from_millis(200);

/// What the command is and how it is run.
#[derive(Debug, Clone)]
struct Spec {
    command: Vec<OsString>,
    identity: String,
    lease: String,
    grace: Duration,
    restart: bool,
}

/// The command ended the run: with this exit code for leasehold.
#[derive(Debug)]
enum Ended {
    /// It exited by itself (or died) with this status.
    Exited(u8),
    /// It could not be started (127: not found, 126: not executable).
    NotRunnable(u8, String),
    /// The guard died without a word (SIGKILL): processes the command left outside its group
    /// may live on, re-parented out of reach, so the lock must not be released to a successor.
    GuardDied(u8),
}

pub(crate) async fn run(args: RunArgs) -> Result<u8, Fatal> {
    // Flags and the program first: a usage error must not wait for (or fail on) the cluster.
    let precision = crate::time_precision(args.election.lock.lock);
    let draft = args.election.config("", precision)?;
    check_grace(args.grace, &draft)?;
    let program = args
        .command
        .first()
        .map(OsString::as_os_str)
        .unwrap_or_default();
    procs::find_program(program)
        .and_then(|_| procs::fits_one_exec(&args.command))
        .map_err(|e| Fatal {
            code: e.code,
            message: e.message,
        })?;
    if !procs::proc_is_ours() {
        tracing::warn!(
            "/proc shows another PID namespace: processes the command starts outside its own process cannot be found and killed; mount this namespace's /proc"
        );
    }
    let (client, namespace) = crate::client(&args.election.lock).await?;
    let config = args.election.config(&namespace, precision)?;
    let lease = format!("{namespace}/{}", args.election.lock.lease);
    let spec = Spec {
        command: args.command.clone(),
        identity: config.identity.to_string(),
        lease,
        grace: args.grace,
        restart: args.restart,
    };
    let client_for_candidate = client.clone();
    crate::with_lock!(args.election.lock, client, namespace, |lock| {
        let registration = args
            .election
            .registration(&client_for_candidate, &namespace, &config);
        let mut config = config;
        crate::preflight(&lock, &mut config, registration.as_ref()).await?;
        elect(
            lock,
            config,
            registration,
            spec,
            args.http,
            args.election.healthz_tolerance,
        )
        .await
    })
}

/// `--grace` must leave a healthy leader's renewals alone: between two renewals the remaining
/// term shrinks to `renew_deadline` minus the renewal interval (the retry period, or the lock's
/// time precision if coarser: an annotation lock is renewed once a second at most), so a
/// grace period that long stops the command between healthy renewals.
fn check_grace(grace: Duration, config: &Config) -> Result<(), Fatal> {
    let interval = config.retry_period.max(config.time_precision);
    let room = config.renew_deadline.saturating_sub(interval);
    if grace >= room {
        return Err(Fatal::usage(format!(
            "--grace ({}) must be shorter than --renew-deadline minus --retry-period (or the lock's time precision, if coarser) ({}): a healthy leader's term shrinks to that between two renewals, so a longer grace period would stop the command while the lease is fine",
            humantime::format_duration(grace),
            humantime::format_duration(room),
        )));
    }
    Ok(())
}

async fn elect<L: Lock>(
    lock: L,
    config: Config,
    registration: Option<leasehold::kube::LeaseCandidateRegistration>,
    spec: Spec,
    http: Option<std::net::SocketAddr>,
    tolerance: Duration,
) -> Result<u8, Fatal> {
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<Ended>();
    let mut signals = crate::StopSignals::catch()?;
    let election = crate::start(config, lock, registration, move |leader| {
        lead(spec.clone(), leader, ended_tx.clone())
    })?;
    if let Some(addr) = http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Fatal::runtime(format!("--http {addr}: {e}")))?;
        tokio::spawn(crate::http::serve_on(
            listener,
            election.handle.clone(),
            tolerance,
        ));
    }
    let code = tokio::select! {
        Some(end) = ended.recv() => match end {
            Ended::Exited(code) => code,
            Ended::NotRunnable(code, message) => {
                election.stop(&mut signals).await?;
                return Err(Fatal { code, message });
            }
            Ended::GuardDied(code) => {
                election.handle.abort();
                return Err(Fatal {
                    code,
                    message: "the command's guard was killed: the lock is left to expire rather than released, since what the command started may live on out of reach".into(),
                });
            }
        },
        _ = signals.recv() => 0,
        trouble = election.trouble() => {
            // The trouble is what to report; a failed release after it is a consequence.
            if let Err(e) = election.stop(&mut signals).await {
                tracing::warn!("{}", e.message);
            }
            return Err(trouble);
        }
    };
    // Step down: the command gets SIGTERM (if it still runs) and at most the grace period;
    // then the lock is released.
    election.stop(&mut signals).await?;
    Ok(code)
}

/// The leader work: the command, run (again, with `--restart`) while the term lasts.
async fn lead(spec: Spec, leader: LeaderContext, ended: mpsc::UnboundedSender<Ended>) {
    loop {
        if leader.cancel.is_cancelled() {
            return;
        }
        let started = Instant::now();
        let mut guard = match Guarded::start(&spec, &leader).await {
            Ok(guard) => guard,
            // Out of processes, say: try again (at the restart floor) while the term lasts.
            Err(e) => {
                tracing::error!(error = %e, "cannot start the command's guard: trying again");
                tokio::select! {
                    () = leader.cancel.cancelled() => return,
                    () = sleep_until(started + RESTART_FLOOR) => continue,
                }
            }
        };
        match guard.supervise(&leader, spec.grace).await {
            Outcome::Exited(code) => {
                let term_over =
                    leader.cancel.is_cancelled() || Instant::now() >= *leader.until.borrow();
                if !spec.restart {
                    let _ = ended.send(Ended::Exited(code));
                    return;
                }
                if term_over {
                    return; // contend again; the command runs when leading again
                }
                // A floor under restarts: a command that fails at once must not spin.
                tokio::select! {
                    () = leader.cancel.cancelled() => return,
                    () = sleep_until(started + RESTART_FLOOR) => {}
                }
            }
            Outcome::NotRunnable(code, message) => {
                let _ = ended.send(Ended::NotRunnable(code, message));
                return;
            }
            Outcome::GuardDied(code) => {
                let _ = ended.send(Ended::GuardDied(code));
                return;
            }
            // Stopped before the term's end for want of a renewal: run again only once a
            // renewal moved the end past the one it was stopped for (a receiver that merely
            // has an unseen older value must not restart it at once).
            Outcome::Stopped { end } => {
                let mut until = leader.until.clone();
                tokio::select! {
                    biased;
                    () = leader.cancel.cancelled() => return,
                    renewed = until.wait_for(|u| *u > end) => {
                        if renewed.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

enum Outcome {
    /// The command exited by itself with this status.
    Exited(u8),
    /// It was stopped: the term ended, or was about to end unrenewed at `end`.
    Stopped { end: Instant },
    /// It could not be started.
    NotRunnable(u8, String),
    /// The guard died without reporting (with this status).
    GuardDied(u8),
}

/// A command under its guard.
struct Guarded {
    child: tokio::process::Child,
    pid: Pid,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>,
    orders: tokio::net::unix::OwnedWriteHalf,
    /// The command's process id, once the guard reported it.
    command: Option<Pid>,
}

impl Guarded {
    /// Starts the guard (which starts the command) and waits for it to connect.
    async fn start(spec: &Spec, leader: &LeaderContext) -> std::io::Result<Guarded> {
        let (listener, socket) = crate::guard::listen()?;
        let until = *leader.until.borrow();
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .arg("__guard")
            .arg("--")
            .args(&spec.command)
            .env(SOCKET_ENV, &socket)
            .env(UNTIL_ENV, to_monotonic(until).to_string())
            .env(GRACE_ENV, spec.grace.as_nanos().to_string())
            .env("LEASEHOLD_FENCING_TOKEN", token(leader.token))
            .env("LEASEHOLD_IDENTITY", &spec.identity)
            .env("LEASEHOLD_LEASE", &spec.lease)
            // Its own group: Ctrl-Z or a signal to leasehold's group does not reach it.
            .process_group(0)
            .spawn()?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
            .ok_or_else(|| std::io::Error::other("the guard has no process id"))?;
        let connected = timeout(GUARD_CONNECT, async {
            loop {
                let (stream, _) = listener.accept().await?;
                // Anyone on the host can connect to an abstract socket: only our guard counts.
                let peer = nix::sys::socket::getsockopt(
                    &stream,
                    nix::sys::socket::sockopt::PeerCredentials,
                )
                .map_err(std::io::Error::from)?;
                if peer.pid() == pid.as_raw() {
                    return Ok::<_, std::io::Error>(stream);
                }
            }
        })
        .await;
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let _ = child.start_kill();
                return Err(e);
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(std::io::Error::other(
                    "the guard did not connect within 5 s",
                ));
            }
        };
        let (read, orders) = stream.into_split();
        let mut guarded = Guarded {
            child,
            pid,
            lines: tokio::io::BufReader::new(read).lines(),
            orders,
            command: None,
        };
        // A renewal may have come while the guard started.
        let until = *leader.until.borrow();
        guarded.order(ToGuard::Until(to_monotonic(until))).await;
        Ok(guarded)
    }

    /// Sends an order, bounded: a guard that does not read (stopped) must not hold this
    /// process up; it ends the term on its own anyway.
    async fn order(&mut self, order: ToGuard) {
        let line = order.line();
        let _ = timeout(
            Duration::from_millis(100),
            self.orders.write_all(line.as_bytes()),
        )
        .await;
    }

    /// Runs until the command and everything it started are gone: passes renewals on, orders a
    /// stop when the term ends, and at the end of the term kills what is left itself should
    /// the guard not have.
    async fn supervise(&mut self, leader: &LeaderContext, grace: Duration) -> Outcome {
        let mut until = leader.until.clone();
        let mut stop_ordered = false;
        // The next time this process kills what is left itself, if the guard has not ended it.
        let mut backup_at = None;
        loop {
            let end = *until.borrow_and_update();
            let backup = backup_at.unwrap_or(end + BACKUP_MARGIN);
            tokio::select! {
                biased;
                line = self.lines.next_line() => {
                    match line.ok().flatten().as_deref().and_then(FromGuard::parse) {
                        Some(FromGuard::Started(pid)) => {
                            self.command = Some(Pid::from_raw(pid));
                            tracing::info!(pid, token = %leader.token, "leading: the command runs");
                        }
                        Some(FromGuard::Failed { code, message }) => {
                            let _ = self.child.wait().await;
                            return Outcome::NotRunnable(code, message);
                        }
                        Some(FromGuard::Exited { code, stopped }) => {
                            let _ = self.child.wait().await;
                            tracing::info!(code, stopped, "the command ended");
                            return if stopped { Outcome::Stopped { end } } else { Outcome::Exited(code) };
                        }
                        // The guard is gone without a word (SIGKILL): so is the command (its
                        // parent-death signal); what it started goes too, as far as it can
                        // still be found.
                        None => {
                            self.kill_tree();
                            let status = self.child.wait().await;
                            let code = status.map_or(1, exit_code);
                            tracing::error!(code, "the command's guard died");
                            return Outcome::GuardDied(code);
                        }
                    }
                }
                () = leader.cancel.cancelled(), if !stop_ordered => {
                    stop_ordered = true;
                    tracing::info!("the term ended: stopping the command");
                    let kill_at = end.min(Instant::now() + grace);
                    self.order(ToGuard::Stop(to_monotonic(kill_at))).await;
                }
                changed = until.changed() => {
                    if changed.is_ok() {
                        let renewed = *until.borrow();
                        backup_at = None;
                        self.order(ToGuard::Until(to_monotonic(renewed))).await;
                    }
                    // Else the driver is gone; the last known end stands, and the cancellation
                    // (which the driver's watchdog fires by it) orders the stop.
                }
                // The second line: the guard should have ended it all by now.
                () = sleep_until(backup) => {
                    if self.kill_tree() {
                        tracing::warn!("the guard had not ended the command by the end of the term: killed it");
                    }
                    // Again in a moment, for what was forked meanwhile.
                    backup_at = Some(Instant::now() + BACKUP_ROUND);
                }
            }
        }
    }

    /// SIGKILL to the command and everything below the guard; whether any was found.
    fn kill_tree(&self) -> bool {
        if let Some(command) = self.command {
            let _ = nix::sys::signal::kill(command, Signal::SIGKILL);
        }
        procs::proc_is_ours() && procs::signal_descendants(self.pid, Signal::SIGKILL)
    }
}

fn token(token: FencingToken) -> String {
    token.to_string()
}

/// leasehold's exit code for a process's status: its code, or 128 + the signal.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}
