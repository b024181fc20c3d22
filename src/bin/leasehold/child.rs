//! `leasehold run`: the command runs only while this candidate leads, in a process group of
//! its own, and dies with the term (or with leasehold).

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use leasehold::lock::Lock;
use leasehold::tokio::LeaderContext;
use leasehold::{Config, FencingToken};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::{Fatal, RunArgs};

/// The environment variable through which the guard learns its parent.
const PARENT: &str = "LEASEHOLD_GUARD_PARENT";

/// The least time between two starts of the command under `--restart`.
const RESTART_FLOOR: Duration = Duration::from_secs(1);

/// What the command is and how it is run.
#[derive(Debug, Clone)]
struct Spec {
    command: Vec<OsString>,
    identity: String,
    lease: String,
    grace: Duration,
    restart: bool,
}

/// The command exited by itself (with this exit code for leasehold), or could not start.
#[derive(Debug)]
struct Ended(u8);

pub(crate) async fn run(args: RunArgs) -> Result<u8, Fatal> {
    // Flags first: a usage error must not wait for (or fail on) the cluster.
    args.election.config("")?;
    if args.grace >= args.election.renew_deadline {
        return Err(Fatal::usage(format!(
            "--grace ({:?}) must be shorter than --renew-deadline ({:?})",
            args.grace, args.election.renew_deadline
        )));
    }
    let (client, namespace) = crate::client(&args.election.lock).await?;
    let config = args.election.config(&namespace)?;
    let lease = format!("{namespace}/{}", args.election.lock.lease);
    let spec = Spec {
        command: args.command.clone(),
        identity: config.identity.to_string(),
        lease,
        grace: args.grace,
        restart: args.restart,
    };
    crate::with_lock!(args.election.lock, client, namespace, |lock| {
        crate::preflight(&lock, args.election.watch).await?;
        elect(lock, config, spec, args.http).await
    })
}

async fn elect<L: Lock>(
    lock: L,
    config: Config,
    spec: Spec,
    http: Option<std::net::SocketAddr>,
) -> Result<u8, Fatal> {
    let name = config.name.clone();
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<Ended>();
    let mut signals = crate::StopSignals::catch()?;
    let handle = crate::start(config, lock, move |leader| {
        lead(spec.clone(), leader, ended_tx.clone())
    })?;
    if let Some(addr) = http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Fatal::runtime(format!("--http {addr}: {e}")))?;
        tokio::spawn(crate::http::serve_on(listener, handle.clone(), name));
    }
    let code = tokio::select! {
        Some(Ended(code)) = ended.recv() => code,
        () = signals.recv() => 0,
        () = handle.finished() => {
            return Err(Fatal::runtime("the election stopped (see the log above)"));
        }
    };
    // Step down: the command gets SIGTERM (if it still runs) and at most the grace period;
    // then the lock is released.
    handle.stop();
    handle.finished().await;
    Ok(code)
}

/// The leader work: the command, run (again, with `--restart`) while the term lasts.
async fn lead(spec: Spec, leader: LeaderContext, ended: mpsc::UnboundedSender<Ended>) {
    loop {
        let started = Instant::now();
        let mut child = match spawn(&spec, leader.token) {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the command");
                let _ = ended.send(Ended(127));
                return;
            }
        };
        tracing::info!(pid = child.pgid.as_raw(), token = %leader.token, "leading: the command runs");
        match supervise(&mut child, &leader, spec.grace).await {
            Outcome::Exited(status) => {
                tracing::info!(%status, "the command exited");
                // What it left behind in its group goes with it.
                let _ = killpg(child.pgid, Signal::SIGKILL);
                let term_over =
                    leader.cancel.is_cancelled() || Instant::now() >= *leader.until.borrow();
                if spec.restart {
                    if term_over {
                        return; // contend again; the command runs when leading again
                    }
                    // A floor under restarts: a command that fails at once must not spin.
                    let floor = started + RESTART_FLOOR;
                    tokio::select! {
                        () = leader.cancel.cancelled() => return,
                        () = tokio::time::sleep_until(floor) => continue,
                    }
                }
                let _ = ended.send(Ended(exit_code(status)));
                return;
            }
            Outcome::Stopped if leader.cancel.is_cancelled() => return,
            // Stopped early for want of a renewal, and the term is renewed after all: run it
            // again, or stop when the term ends (the driver drops `until` then too).
            Outcome::Stopped => {
                let mut until = leader.until.clone();
                tokio::select! {
                    biased;
                    () = leader.cancel.cancelled() => return,
                    changed = until.changed() => {
                        if changed.is_err() || leader.cancel.is_cancelled() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

enum Outcome {
    /// The command exited by itself.
    Exited(ExitStatus),
    /// It was stopped: the term ended, or was about to without a renewal.
    Stopped,
}

/// Runs until the command exits, the term ends, or the term is about to end unrenewed.
async fn supervise(child: &mut Guarded, leader: &LeaderContext, grace: Duration) -> Outcome {
    let mut until = leader.until.clone();
    loop {
        let end = *until.borrow_and_update();
        let soft = end.checked_sub(grace).unwrap_or(end);
        tokio::select! {
            // The command's own exit first: if it exits as the term ends, its status counts
            // (a job that finished must not run again).
            biased;
            status = child.child.wait() => {
                return match status {
                    Ok(status) => Outcome::Exited(status),
                    Err(e) => {
                        tracing::error!(error = %e, "lost track of the command");
                        stop(child, end).await;
                        Outcome::Stopped
                    }
                };
            }
            () = leader.cancel.cancelled() => {
                tracing::info!("the term ended: stopping the command");
                stop(child, end.min(Instant::now() + grace)).await;
                return Outcome::Stopped;
            }
            () = sleep_until(soft) => {
                if *until.borrow() > end {
                    continue;
                }
                tracing::warn!(?grace, "no renewal: stopping the command before the term ends");
                stop(child, end).await;
                return Outcome::Stopped;
            }
            changed = until.changed() => {
                if changed.is_err() {
                    // The driver is gone: the last known end stands.
                    stop(child, end).await;
                    return Outcome::Stopped;
                }
            }
        }
    }
}

/// SIGTERM to the command's process group, SIGKILL at `deadline` if it has not exited.
async fn stop(child: &mut Guarded, deadline: Instant) {
    let _ = killpg(child.pgid, Signal::SIGTERM);
    tokio::select! {
        _ = child.child.wait() => {}
        () = sleep_until(deadline) => {
            tracing::warn!("the command did not stop in time: SIGKILL");
            let _ = killpg(child.pgid, Signal::SIGKILL);
            let _ = child.child.wait().await;
        }
    }
    // Whatever the command left behind in its group goes too.
    let _ = killpg(child.pgid, Signal::SIGKILL);
}

/// leasehold's exit code for the command's status: its code, or 128 + the signal.
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// The command, started through the guard in a process group of its own.
struct Guarded {
    child: tokio::process::Child,
    pgid: Pid,
}

fn spawn(spec: &Spec, token: FencingToken) -> std::io::Result<Guarded> {
    let exe = std::env::current_exe()?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("__guard")
        .arg("--")
        .args(&spec.command)
        .env("LEASEHOLD_FENCING_TOKEN", token.to_string())
        .env("LEASEHOLD_IDENTITY", &spec.identity)
        .env("LEASEHOLD_LEASE", &spec.lease)
        .env(PARENT, std::process::id().to_string())
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn()?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| std::io::Error::other("the command has no process id"))?;
    Ok(Guarded {
        child,
        pgid: Pid::from_raw(pid),
    })
}

/// The guard: arms a parent-death signal, so that the command is killed if leasehold dies
/// (SIGKILL, OOM), then becomes the command. It survives the exec.
pub(crate) fn guard(command: Vec<OsString>) -> ExitCode {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        eprintln!("leasehold: cannot arm the parent-death signal: {e}");
        return ExitCode::from(127);
    }
    // leasehold may have died before the signal was armed: then it would never come.
    let parent = std::env::var(PARENT)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    if parent.is_some_and(|p| nix::unistd::getppid().as_raw() != p) {
        return ExitCode::from(137);
    }
    let args: Result<Vec<CString>, _> =
        command.iter().map(|a| CString::new(a.as_bytes())).collect();
    let Ok(args) = args else {
        eprintln!("leasehold: the command contains a NUL byte");
        return ExitCode::from(127);
    };
    let Some(program) = args.first() else {
        return ExitCode::from(127);
    };
    let Err(e) = nix::unistd::execvp(program, &args);
    eprintln!("leasehold: cannot run {}: {e}", program.to_string_lossy());
    ExitCode::from(127)
}
