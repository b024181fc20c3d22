//! The guard: the process between `leasehold run` and the command. It ends the command's term
//! by itself, so that the end of a term does not depend on leasehold's own thread being
//! scheduled (a paused `leasehold`, a blocked log pipe, a crash):
//!
//! ```text
//! leasehold run ──(socket: deadlines)──> leasehold __guard ──> leasehold __exec ══exec══> COMMAND
//!   the election                          subreaper, own group    parent-death signal,
//!                                                                 leasehold's group
//! ```
//!
//! * The wrapper tells the guard until when the term lasts (a `CLOCK_MONOTONIC` instant, which
//!   both processes read alike) at the start and after every renewal, and when to stop early.
//! * The guard sends SIGTERM to everything the command started a grace period before an
//!   unrenewed term ends (or at once when told to stop), and SIGKILL when the term ends. If the
//!   wrapper dies (the socket closes), it kills everything at once.
//! * The guard is a child subreaper: whatever the command starts and orphans, daemons that
//!   `setsid` and double-fork included, is re-parented to it, found (in `/proc`, zombie-state
//!   thread-group leaders included) and killed with the command, and reaped. While killing, it
//!   kills its own children again at every child's exit, to catch chains that fork and exit.
//!   When the command exits by itself, what it left behind gets SIGTERM and, after the grace
//!   period (within the term), SIGKILL; the guard exits when nothing is left.
//! * The guard has a process group of its own, so neither Ctrl-Z nor a signal to leasehold's
//!   group stops or kills it, and it catches every signal that would end it (a stray `pkill`)
//!   and treats it as "stop the command now": it never dies with the command's processes alive,
//!   but to SIGKILL. The command joins leasehold's process group: with leasehold it is one job
//!   for a terminal (it may read it in the foreground; Ctrl-Z and Ctrl-C reach both).
//! * `__exec` arms a parent-death signal (SIGKILL when the guard dies) and becomes the command
//!   through `std`'s exec, which resets the signal mask and SIGPIPE (Rust ignores it) to their
//!   defaults.

use std::ffi::OsString;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep, sleep_until};

use crate::procs::{self, from_monotonic};

/// The abstract socket name on which the wrapper waits for its guard.
pub(crate) const SOCKET_ENV: &str = "LEASEHOLD_GUARD_SOCKET";
/// The end of the term when the command starts (`CLOCK_MONOTONIC` nanoseconds).
pub(crate) const UNTIL_ENV: &str = "LEASEHOLD_GUARD_UNTIL";
/// The grace period, in nanoseconds.
pub(crate) const GRACE_ENV: &str = "LEASEHOLD_GUARD_GRACE";
/// The guard's process id, for `__exec` to check that its parent-death signal was armed in time.
const PARENT_ENV: &str = "LEASEHOLD_EXEC_PARENT";

/// How often a guard that is killing sends SIGKILL again to what is left (processes forked
/// meanwhile), and how often it looks for leftovers at all.
const KILL_ROUND: Duration = Duration::from_millis(20);
const TICK: Duration = Duration::from_secs(1);

/// From the wrapper to the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToGuard {
    /// The term lasts until this `CLOCK_MONOTONIC` instant (a renewal moved it).
    Until(u64),
    /// Stop now: SIGTERM at once, SIGKILL at this instant (or the term's end, if earlier).
    Stop(u64),
}

/// From the guard to the wrapper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FromGuard {
    /// The command runs with this process id (its process group too).
    Started(i32),
    /// The command could not be started: the shell's status (127, 126) and why.
    Failed { code: u8, message: String },
    /// The command and everything it started are gone: its status as an exit code, and
    /// whether it was stopped (by the term or by the wrapper) rather than exiting by itself.
    Exited { code: u8, stopped: bool },
}

impl ToGuard {
    pub(crate) fn line(self) -> String {
        match self {
            ToGuard::Until(at) => format!("until {at}\n"),
            ToGuard::Stop(at) => format!("stop {at}\n"),
        }
    }

    fn parse(line: &str) -> Option<Self> {
        let (verb, at) = line.trim().split_once(' ')?;
        let at = at.parse().ok()?;
        match verb {
            "until" => Some(ToGuard::Until(at)),
            "stop" => Some(ToGuard::Stop(at)),
            _ => None,
        }
    }
}

impl FromGuard {
    fn line(&self) -> String {
        match self {
            FromGuard::Started(pid) => format!("started {pid}\n"),
            FromGuard::Failed { code, message } => {
                format!("failed {code} {}\n", message.replace('\n', " "))
            }
            FromGuard::Exited { code, stopped } => {
                format!("exited {code} {}\n", u8::from(*stopped))
            }
        }
    }

    pub(crate) fn parse(line: &str) -> Option<Self> {
        let mut parts = line.trim_end().splitn(3, ' ');
        match (parts.next()?, parts.next()?, parts.next()) {
            ("started", pid, None) => Some(FromGuard::Started(pid.parse().ok()?)),
            ("failed", code, message) => Some(FromGuard::Failed {
                code: code.parse().ok()?,
                message: message.unwrap_or_default().to_string(),
            }),
            ("exited", code, Some(stopped)) => Some(FromGuard::Exited {
                code: code.parse().ok()?,
                stopped: stopped == "1",
            }),
            _ => None,
        }
    }
}

/// `leasehold __guard -- COMMAND...`: see the module docs. Its exit status is the command's.
pub(crate) fn guard(command: Vec<OsString>) -> ExitCode {
    let setting = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let (Some(until), Some(grace), Ok(socket)) = (
        setting(UNTIL_ENV),
        setting(GRACE_ENV),
        std::env::var(SOCKET_ENV),
    ) else {
        eprintln!("leasehold: __guard is started by `leasehold run`, not by hand");
        return ExitCode::from(125);
    };
    // Without the subreaper, escaped processes would outlive the term unseen: refuse to run.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("leasehold: the guard cannot become a child subreaper: {e}");
        return ExitCode::from(125);
    }
    let stream = SocketAddr::from_abstract_name(socket.as_bytes())
        .and_then(|addr| UnixStream::connect_addr(&addr))
        .and_then(|s| s.set_nonblocking(true).map(|()| s));
    let Ok(stream) = stream else {
        // The wrapper is gone already: nothing may run.
        return ExitCode::from(125);
    };
    // One thread: the command's parent-death signal follows the thread that spawned it.
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::from(125);
    };
    let code = runtime.block_on(async move {
        match tokio::net::UnixStream::from_std(stream) {
            Ok(stream) => {
                let term = Term {
                    until,
                    grace: Duration::from_nanos(grace),
                };
                Guard::new(stream).run(command, term).await
            }
            Err(_) => 125,
        }
    });
    ExitCode::from(code)
}

/// The term as the guard knows it.
#[derive(Debug, Clone, Copy)]
struct Term {
    /// `CLOCK_MONOTONIC` nanoseconds.
    until: u64,
    grace: Duration,
}

/// A stop under way: everything got SIGTERM; SIGKILL follows at `kill_at`.
#[derive(Debug, Clone, Copy)]
struct Stopping {
    kill_at: Instant,
    /// Stopped by the term or the wrapper, not exiting by itself.
    stopped: bool,
}

struct Guard {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>,
    report: tokio::net::unix::OwnedWriteHalf,
    me: Pid,
    /// `/proc` shows this PID namespace: the descendants can be found there. (If it shows
    /// another, its numbers name other processes, and only the command itself is signalled.)
    proc_is_ours: bool,
}

impl Guard {
    fn new(stream: tokio::net::UnixStream) -> Self {
        let (read, report) = stream.into_split();
        Guard {
            lines: tokio::io::BufReader::new(read).lines(),
            report,
            me: nix::unistd::getpid(),
            proc_is_ours: procs::proc_is_ours(),
        }
    }

    /// Tells the wrapper, if it listens (bounded: a stopped wrapper must not hold up the
    /// guard).
    async fn tell(&mut self, message: FromGuard) {
        let line = message.line();
        let _ = tokio::time::timeout(
            Duration::from_millis(200),
            self.report.write_all(line.as_bytes()),
        )
        .await;
    }

    async fn run(mut self, command: Vec<OsString>, mut term: Term) -> u8 {
        let Some(program) = command.first() else {
            return 125;
        };
        if let Err(e) = procs::find_program(program) {
            self.tell(FromGuard::Failed {
                code: e.code,
                message: e.message,
            })
            .await;
            return e.code;
        }
        let (Ok(mut exits), Some(mut signals)) = (signal(SignalKind::child()), Signals::catch())
        else {
            return 125;
        };
        // The command joins the wrapper's process group, so that it and `leasehold` are one job
        // for a terminal (Ctrl-Z and Ctrl-C reach both; a command in the foreground may read
        // it) and for whoever signals the group. The guard keeps a group of its own.
        let job = nix::unistd::getpgid(Some(nix::unistd::getppid())).unwrap_or(self.me);
        let spawned = std::env::current_exe().and_then(|exe| {
            std::process::Command::new(exe)
                .arg("__exec")
                .arg("--")
                .args(&command)
                .env(PARENT_ENV, self.me.to_string())
                .env_remove(SOCKET_ENV)
                .env_remove(UNTIL_ENV)
                .env_remove(GRACE_ENV)
                .process_group(job.as_raw())
                .spawn()
        });
        let child = match spawned {
            // The guard reaps its children itself (`waitpid(-1)`): the handle is not needed.
            Ok(child) => Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX)),
            Err(e) => {
                let message = format!("cannot start {}: {e}", program.to_string_lossy());
                self.tell(FromGuard::Failed { code: 126, message }).await;
                return 126;
            }
        };
        self.tell(FromGuard::Started(child.as_raw())).await;
        let mut status: Option<u8> = None;
        let mut stopping: Option<Stopping> = None;
        let mut wrapper_gone = false;
        let code = loop {
            // Reap everything that ended: the command, and any orphan re-parented here.
            let mut children_left = true;
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                        status = Some(u8::try_from(code).unwrap_or(1));
                    }
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                        status = Some(u8::try_from(128 + sig as i32).unwrap_or(1));
                    }
                    Ok(WaitStatus::StillAlive) => break,
                    Ok(_) => {}
                    Err(_) => {
                        children_left = false;
                        break;
                    }
                }
            }
            if let (Some(code), false) = (status, children_left) {
                break code;
            }
            // The command exited by itself: what it left behind goes too.
            if status.is_some() && stopping.is_none() {
                stopping = Some(self.stop(child, term, false));
            }
            let killing = stopping.is_some_and(|s| Instant::now() >= s.kill_at);
            let soft = from_monotonic(term.until).checked_sub(term.grace);
            tokio::select! {
                biased;
                line = self.lines.next_line(), if !wrapper_gone => match line.ok().flatten().as_deref().and_then(ToGuard::parse) {
                    Some(ToGuard::Until(at)) => term.until = term.until.max(at),
                    Some(ToGuard::Stop(at)) => {
                        let kill_at = from_monotonic(at.min(term.until));
                        let s = stopping.get_or_insert_with(|| self.stop(child, term, true));
                        s.kill_at = s.kill_at.min(kill_at);
                        s.stopped = true;
                    }
                    // The wrapper is gone (or speaks nonsense): nobody renews, so nothing may
                    // run on. Kill everything now.
                    None => {
                        wrapper_gone = true;
                        let s = stopping.get_or_insert_with(|| self.stop(child, term, true));
                        s.kill_at = Instant::now();
                        s.stopped = true;
                    }
                },
                // Told to stop (`pkill`, a supervisor): stop everything, then go. The guard
                // never dies with the command's descendants alive.
                () = signals.recv() => {
                    let s = stopping.get_or_insert_with(|| self.stop(child, term, true));
                    s.stopped = true;
                }
                // While killing, a child's exit is the moment to kill what was re-parented here
                // (the next link of a chain that forks and exits).
                _ = exits.recv() => {
                    if killing {
                        self.kill_all(child);
                    }
                }
                () = sleep_until(soft.unwrap_or_else(Instant::now)), if stopping.is_none() => {
                    stopping = Some(self.stop(child, term, true));
                }
                () = sleep_until(stopping.map_or_else(Instant::now, |s| s.kill_at)), if stopping.is_some() => {
                    self.kill_all(child);
                    if let Some(s) = &mut stopping {
                        s.kill_at = Instant::now() + KILL_ROUND;
                    }
                }
                () = sleep(TICK) => {}
            }
        };
        let stopped = stopping.is_some_and(|s| s.stopped);
        self.tell(FromGuard::Exited { code, stopped }).await;
        code
    }

    /// SIGTERM (and SIGCONT, for a stopped process) to the command and everything below the
    /// guard; SIGKILL is due at the end of the term, or a grace period from now if that is
    /// earlier.
    fn stop(&self, child: Pid, term: Term, stopped: bool) -> Stopping {
        let _ = kill(child, Signal::SIGTERM);
        let _ = kill(child, Signal::SIGCONT);
        if self.proc_is_ours {
            procs::signal_descendants(self.me, Signal::SIGTERM);
        }
        let kill_at = from_monotonic(term.until).min(Instant::now() + term.grace);
        Stopping { kill_at, stopped }
    }

    /// SIGKILL to the command and everything below the guard.
    fn kill_all(&self, child: Pid) {
        let _ = kill(child, Signal::SIGKILL);
        if self.proc_is_ours {
            procs::signal_descendants(self.me, Signal::SIGKILL);
        }
    }
}

/// The signals that would end the guard: caught, so that a stray `pkill` makes it stop the
/// command (and everything below) instead of dying and leaving escaped processes to init. Job
/// control signals are caught too, so that nothing stops the guard but SIGSTOP.
struct Signals {
    stop: Vec<tokio::signal::unix::Signal>,
    _ignored: Vec<tokio::signal::unix::Signal>,
}

impl Signals {
    fn catch() -> Option<Signals> {
        use nix::libc;
        let catch = |kinds: &[i32]| -> Option<Vec<tokio::signal::unix::Signal>> {
            kinds
                .iter()
                .map(|&k| signal(SignalKind::from_raw(k)).ok())
                .collect()
        };
        Some(Signals {
            stop: catch(&[
                libc::SIGTERM,
                libc::SIGINT,
                libc::SIGHUP,
                libc::SIGQUIT,
                libc::SIGUSR1,
                libc::SIGUSR2,
                libc::SIGALRM,
                libc::SIGVTALRM,
                libc::SIGPROF,
                libc::SIGXCPU,
                libc::SIGXFSZ,
                libc::SIGPWR,
            ])?,
            _ignored: catch(&[libc::SIGPIPE, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU])?,
        })
    }

    /// One of the stopping signals arrived.
    async fn recv(&mut self) {
        let arrivals = self.stop.iter_mut().map(|s| Box::pin(s.recv()));
        futures_util::future::select_all(arrivals).await;
    }
}

/// `leasehold __exec -- COMMAND...`: arms a parent-death signal (SIGKILL when the guard dies),
/// then becomes the command through `std`'s exec, which resets the signal mask and SIGPIPE.
pub(crate) fn exec(command: Vec<OsString>) -> ExitCode {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        eprintln!("leasehold: cannot arm the parent-death signal: {e}");
        return ExitCode::from(126);
    }
    // The guard may have died before the signal was armed: then it would never come.
    let parent = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok());
    if parent != Some(nix::unistd::getppid().as_raw()) {
        return ExitCode::from(137);
    }
    let Some((program, args)) = command.split_first() else {
        return ExitCode::from(127);
    };
    let error = std::process::Command::new(program)
        .args(args)
        .env_remove(PARENT_ENV)
        .exec();
    eprintln!(
        "leasehold: cannot run {}: {error}",
        program.to_string_lossy()
    );
    let code = if error.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    ExitCode::from(code)
}

/// The wrapper's end of a guard's socket, before the guard connects: an abstract socket (no file
/// to create or clean up) with a name nobody guesses.
pub(crate) fn listen() -> std::io::Result<(tokio::net::UnixListener, String)> {
    let name = format!(
        "leasehold-guard-{}-{:016x}",
        std::process::id(),
        crate::random_u64()
    );
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    listener.set_nonblocking(true)?;
    Ok((tokio::net::UnixListener::from_std(listener)?, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        for m in [ToGuard::Until(5), ToGuard::Stop(u64::MAX)] {
            assert_eq!(ToGuard::parse(&m.line()), Some(m));
        }
        for m in [
            FromGuard::Started(42),
            FromGuard::Failed {
                code: 127,
                message: "x: command not found".into(),
            },
            FromGuard::Exited {
                code: 143,
                stopped: true,
            },
            FromGuard::Exited {
                code: 0,
                stopped: false,
            },
        ] {
            assert_eq!(FromGuard::parse(&m.line()), Some(m));
        }
        for garbage in ["", "until", "until x", "stop -1", "nonsense 5", "until 5 6"] {
            assert_eq!(ToGuard::parse(garbage), None, "{garbage:?}");
        }
        for garbage in [
            "",
            "started",
            "started x",
            "exited 300 1",
            "failed",
            "what 1 2",
        ] {
            assert_eq!(FromGuard::parse(garbage), None, "{garbage:?}");
        }
    }
}
