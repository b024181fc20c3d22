//! Processes, as the command needs them: the monotonic clock the wrapper and its guard share,
//! the descendants of a process (found in `/proc`), killing them, reaping zombies, and finding
//! the program to run as a shell would.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::time::{ClockId, clock_gettime};
use nix::unistd::Pid;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock the wrapper and its guard both read, so that a
/// deadline one of them computes means the same instant to the other. (Rust's `Instant` is
/// this clock on Linux, but cannot be sent to another process.)
pub(crate) fn monotonic_nanos() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .ok()
        .and_then(|t| {
            let secs = u64::try_from(t.tv_sec()).ok()?;
            let nanos = u64::try_from(t.tv_nsec()).ok()?;
            secs.checked_mul(1_000_000_000)?.checked_add(nanos)
        })
        // The monotonic clock cannot fail on Linux; were it to, "now" is the safe reading for a
        // deadline being converted (it expires at once), and the guard reads it the same way.
        .unwrap_or(0)
}

/// The `CLOCK_MONOTONIC` reading of the tokio instant `at`, never later than it: the monotonic
/// clock is read first, then tokio's, so the conversion errs early.
pub(crate) fn to_monotonic(at: tokio::time::Instant) -> u64 {
    let mono = monotonic_nanos();
    let now = tokio::time::Instant::now();
    let ahead = u64::try_from(at.saturating_duration_since(now).as_nanos()).unwrap_or(u64::MAX);
    mono.saturating_add(ahead)
}

/// The tokio instant of the `CLOCK_MONOTONIC` reading `at`, never later than it: tokio's clock is
/// read first, then the monotonic clock.
pub(crate) fn from_monotonic(at: u64) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let mono = monotonic_nanos();
    let ahead = Duration::from_nanos(at.saturating_sub(mono));
    now.checked_add(ahead)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

/// One process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proc {
    pub(crate) pid: Pid,
    pub(crate) ppid: Pid,
    pub(crate) zombie: bool,
}

/// Every process in `/proc` (those that vanish while being read are left out).
pub(crate) fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let entry = entry.ok()?;
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read(entry.path().join("stat")).ok()?;
        parse_stat(pid, &stat)
    })
    .collect()
}

/// `PID (COMM) STATE PPID ...`; the command name may hold spaces and parentheses, so the fields
/// are read after its last `)`.
fn parse_stat(pid: i32, stat: &[u8]) -> Option<Proc> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let ppid: i32 = fields.next()?.parse().ok()?;
    Some(Proc {
        pid: Pid::from_raw(pid),
        ppid: Pid::from_raw(ppid),
        zombie: state == "Z",
    })
}

/// Whether `/proc` shows this process's own PID namespace (a `/proc` mounted from another
/// namespace would name other processes by the numbers the guard looks for).
pub(crate) fn proc_is_ours() -> bool {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse::<i32>().ok())
        == Some(nix::unistd::getpid().as_raw())
}

/// The descendants of `root` (not `root` itself), found by following parents in `/proc`.
/// Zombie-state entries count: a process whose main thread has exited shows as a zombie while
/// its other threads run on (a signal still reaches them; to a true zombie it is harmless).
/// A process forked while the table is read may be missed: callers repeat until none is left.
pub(crate) fn descendants(root: Pid) -> Vec<Pid> {
    let all = processes();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(all.iter().filter(|p| p.ppid == parent).map(|p| p.pid));
        i += 1;
    }
    found.remove(0);
    found
}

/// This process's own children, from `/proc/self/task/*/children` (one small read per
/// thread, much faster than the whole process table: fast enough to catch most processes
/// that fork and exit in a chain, whose every new link is re-parented to the subreaper).
pub(crate) fn own_children() -> Vec<Pid> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .map(Pid::from_raw)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Sends `signal` to every descendant of `root` (its own children first, read the fast way);
/// whether there were any.
pub(crate) fn signal_descendants(root: Pid, signal: Signal) -> bool {
    if root == nix::unistd::getpid() {
        for pid in own_children() {
            let _ = kill(pid, signal);
        }
    }
    let found = descendants(root);
    for &pid in &found {
        let _ = kill(pid, signal);
        if signal == Signal::SIGTERM {
            // A stopped process would keep SIGTERM pending until it is continued.
            let _ = kill(pid, Signal::SIGCONT);
        }
    }
    !found.is_empty()
}

/// As PID 1 (a container's entrypoint), leasehold inherits every process orphaned in its PID
/// namespace (the command's own orphans go to its guard, a subreaper; these are the others,
/// such as what `kubectl exec` leaves behind). Reaps them for as long as it runs: a zombie that
/// nobody has waited for within a second of being seen is waited for here. (The grace second
/// leaves leasehold's own children, whose exit statuses other code waits for, alone.)
pub(crate) async fn reap_orphans() {
    use std::collections::BTreeMap;
    use tokio::signal::unix::{SignalKind, signal};
    let me = nix::unistd::getpid();
    let mut exits = signal(SignalKind::child()).ok();
    let mut first_seen: BTreeMap<Pid, tokio::time::Instant> = BTreeMap::new();
    loop {
        let tick = tokio::time::sleep(Duration::from_secs(1));
        match &mut exits {
            Some(exits) => {
                tokio::select! {
                    _ = exits.recv() => {}
                    () = tick => {}
                }
            }
            None => tick.await,
        }
        let now = tokio::time::Instant::now();
        let zombies: Vec<Pid> = processes()
            .into_iter()
            .filter(|p| p.zombie && p.ppid == me)
            .map(|p| p.pid)
            .collect();
        first_seen.retain(|pid, _| zombies.contains(pid));
        for pid in zombies {
            let since = *first_seen.entry(pid).or_insert(now);
            if now.duration_since(since) >= Duration::from_secs(1) {
                let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
                first_seen.remove(&pid);
            }
        }
    }
}

/// Why a program cannot be run, as a shell says it, with the shell's exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotRunnable {
    pub(crate) message: String,
    /// 127: not found; 126: found, but not an executable file.
    pub(crate) code: u8,
}

/// Finds `program` as `execvp` would: a name with a `/` as it is, any other along `$PATH`.
pub(crate) fn find_program(program: &OsStr) -> Result<PathBuf, NotRunnable> {
    let shown = program.to_string_lossy();
    if program.is_empty() {
        return Err(NotRunnable {
            message: "the command is empty".into(),
            code: 127,
        });
    }
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return match runnable(&path) {
            Ok(()) => Ok(path),
            Err(why) => Err(NotRunnable {
                message: format!("{shown}: {why}"),
                code: if path.exists() { 126 } else { 127 },
            }),
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    let mut denied = None;
    for dir in std::env::split_paths(&search) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(program);
        if !candidate.exists() {
            continue;
        }
        match runnable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(why) => denied = denied.or(Some(format!("{}: {why}", candidate.display()))),
        }
    }
    Err(match denied {
        Some(message) => NotRunnable { message, code: 126 },
        None => NotRunnable {
            message: format!("{shown}: command not found"),
            code: 127,
        },
    })
}

/// Whether `args` (with the environment) fit one exec: the kernel refuses an argument longer
/// than 128 KiB, and all of them with the environment beyond `ARG_MAX`, with E2BIG.
pub(crate) fn fits_one_exec(args: &[OsString]) -> Result<(), NotRunnable> {
    const MAX_ARG_STRLEN: usize = 32 * 4096;
    if let Some(long) = args.iter().find(|a| a.len() >= MAX_ARG_STRLEN) {
        return Err(NotRunnable {
            message: format!(
                "an argument of {} bytes: argument list too long (at most {MAX_ARG_STRLEN})",
                long.len()
            ),
            code: 126,
        });
    }
    let pointer = std::mem::size_of::<usize>();
    let env: usize = std::env::vars_os()
        .map(|(k, v)| k.len() + v.len() + 2 + pointer)
        .sum();
    let argv: usize = args.iter().map(|a| a.len() + 1 + pointer).sum();
    let limit = nix::unistd::sysconf(nix::unistd::SysconfVar::ARG_MAX)
        .ok()
        .flatten()
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(2 * 1024 * 1024);
    // Room for what leasehold adds on the way (its own path, `__exec --`, its variables).
    let margin = 4096;
    if env + argv + margin > limit {
        return Err(NotRunnable {
            message: format!(
                "the command and the environment take {} bytes: argument list too long (at most {limit})",
                env + argv
            ),
            code: 126,
        });
    }
    Ok(())
}

fn runnable(path: &Path) -> Result<(), &'static str> {
    let meta = std::fs::metadata(path).map_err(|_| "no such file or directory")?;
    if meta.is_dir() {
        return Err("is a directory");
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).map_err(|_| "permission denied")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_awkward_names() {
        let p = parse_stat(42, b"42 (a) b (c)) S 7 42 42 0").expect("parsed");
        assert_eq!((p.pid.as_raw(), p.ppid.as_raw(), p.zombie), (42, 7, false));
        let z = parse_stat(9, b"9 (sh) Z 1 9 9").expect("parsed");
        assert!(z.zombie);
        assert_eq!(parse_stat(1, b"garbage"), None);
        assert_eq!(parse_stat(1, b"1 (x)"), None);
        assert_eq!(parse_stat(1, b"1 (x) S notanumber"), None);
        assert_eq!(parse_stat(1, &[0xff, b')', b' ', b'S']), None);
    }

    #[test]
    fn programs_are_found_as_a_shell_finds_them() {
        assert!(find_program(OsStr::new("sh")).is_ok());
        let missing = find_program(OsStr::new("surely-no-such-program-here")).expect_err("missing");
        assert_eq!(missing.code, 127);
        assert!(missing.message.contains("command not found"));
        let dir = find_program(OsStr::new("/")).expect_err("a directory");
        assert_eq!(dir.code, 126);
        let none = find_program(OsStr::new("/no/such/file")).expect_err("missing");
        assert_eq!(none.code, 127);
        assert_eq!(find_program(OsStr::new("")).expect_err("empty").code, 127);
    }

    #[test]
    fn the_clock_conversions_err_early() {
        let at = tokio::time::Instant::now() + Duration::from_secs(5);
        let there = to_monotonic(at);
        let back = from_monotonic(there);
        assert!(back <= at, "{back:?} > {at:?}");
        assert!(at - back < Duration::from_millis(50));
    }
}
