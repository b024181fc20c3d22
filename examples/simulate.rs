//! Runs the deterministic simulator over many seeds and prints a summary.
//!
//! ```text
//! cargo run --release --features sim --example simulate -- --seeds 2000 --clock-rate-ratio 1.45
//! cargo run --release --features sim --example simulate -- --seed 17 --timeline
//! ```
//!
//! Flags (every parameter not given is derived from each seed):
//!
//! * `--seeds N` runs seeds `S..S+N` (default 100), `--seed S` sets `S` (default 0)
//! * `--nodes N`, `--clock-rate-ratio R`, `--latency-ms MIN-MAX` (or one number), `--loss P`
//! * `--watch` or `--poll`, `--no-faults` (only the scheduled crash and shutdown)
//! * `--no-release` (shutdowns do not release the lock), `--recontend` (re-contend after a loss
//!   instead of exiting and restarting)
//! * `--lease-duration S`, `--renew-deadline S`, `--retry-period S` (seconds, fractions allowed)
//! * `--fault-phase S` (seconds of faults before the liveness phase)
//! * the lock's own faults, each `on` or `off` (derived per seed when not given):
//!   `--deletions` (an administrator deletes the lock), `--foreign-writes` (writes that leave
//!   the record alone), `--missing-namespace` (every create answers NotFound during the fault
//!   phase), `--coarse-times` (whole-second times, like the annotation locks), `--wall-steps`
//!   (wall clocks step back and forth)
//! * `--timeline` prints a readable timeline of the first seed
//!
//! The last line is the summary: `runs=.. violations=.. failover_ms p50=.. p99=.. handover_ms
//! ...`. The exit code is 1 when any run found a violation, 2 for bad flags.

use std::process::ExitCode;
use std::time::Duration;

use leasehold::sim::{self, Report, Scenario};
use leasehold::{Config, Identity, Observation};

struct Flags {
    scenario: Scenario,
    first_seed: u64,
    seeds: u64,
}

fn parse() -> Result<Flags, String> {
    let identity = Identity::new("template").map_err(|e| e.to_string())?;
    let mut config = Config::new(identity);
    // Graceful shutdowns release the lock unless --no-release.
    config.release_on_cancel = true;
    let mut scenario = Scenario::new(config.clone());
    let (mut first_seed, mut seeds) = (0, 100);
    let mut args = std::env::args().skip(1);
    let secs = |v: String| -> Result<Duration, String> {
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("not a number of seconds: {v}"))
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seeds" => seeds = value()?.parse().map_err(|e| format!("--seeds: {e}"))?,
            "--seed" => {
                first_seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?;
                if seeds == 100 {
                    seeds = 1;
                }
            }
            "--nodes" => {
                let n: usize = value()?.parse().map_err(|e| format!("--nodes: {e}"))?;
                if !(1..=64).contains(&n) {
                    return Err("--nodes must be between 1 and 64".into());
                }
                scenario.nodes = Some(n);
            }
            "--clock-rate-ratio" => {
                let r: f64 = value()?
                    .parse()
                    .map_err(|e| format!("--clock-rate-ratio: {e}"))?;
                if !(1.0..=100.0).contains(&r) {
                    return Err("--clock-rate-ratio must be between 1 and 100".into());
                }
                scenario.clock_rate_ratio = Some(r);
            }
            "--latency-ms" => {
                let v = value()?;
                let (lo, hi) = v.split_once('-').unwrap_or((&v, &v));
                let ms = |s: &str| {
                    s.trim()
                        .parse::<u64>()
                        .map_err(|e| format!("--latency-ms: {e}"))
                };
                scenario.latency = Some((
                    Duration::from_millis(ms(lo)?),
                    Duration::from_millis(ms(hi)?),
                ));
            }
            "--loss" => {
                let p: f64 = value()?.parse().map_err(|e| format!("--loss: {e}"))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err("--loss must be between 0 and 1".into());
                }
                scenario.loss = Some(p);
            }
            "--watch" => scenario.watch = Some(true),
            "--poll" => scenario.watch = Some(false),
            "--no-faults" => scenario.faults = false,
            "--no-release" => config.release_on_cancel = false,
            "--recontend" => config.after_loss = leasehold::AfterLoss::Recontend,
            "--timeline" => scenario.timeline = true,
            "--lease-duration" => config.lease_duration = secs(value()?)?,
            "--renew-deadline" => config.renew_deadline = secs(value()?)?,
            "--retry-period" => config.retry_period = secs(value()?)?,
            "--fault-phase" => scenario.fault_phase = Some(secs(value()?)?),
            "--deletions" => scenario.deletions = Some(on_off(&flag, value()?)?),
            "--foreign-writes" => scenario.foreign_writes = Some(on_off(&flag, value()?)?),
            "--missing-namespace" => {
                scenario.missing_namespace = Some(on_off(&flag, value()?)?);
            }
            "--coarse-times" => scenario.coarse_times = Some(on_off(&flag, value()?)?),
            "--wall-steps" => scenario.wall_steps = Some(on_off(&flag, value()?)?),
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    config
        .validate()
        .map_err(|e| format!("invalid timing: {e}"))?;
    if config.observation == Observation::Watch && scenario.watch.is_none() {
        scenario.watch = Some(true);
    }
    scenario.elector = config;
    Ok(Flags {
        scenario,
        first_seed,
        seeds,
    })
}

fn on_off(flag: &str, value: String) -> Result<bool, String> {
    match value.as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{flag} takes on or off, not {value}")),
    }
}

fn main() -> ExitCode {
    let flags = match parse() {
        Ok(flags) => flags,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("simulate: {e}");
            }
            eprintln!(
                "usage: simulate [--seeds N] [--seed S] [--nodes N] [--clock-rate-ratio R] [--latency-ms A-B] [--loss P] [--watch|--poll] [--no-faults] [--no-release] [--recontend] [--lease-duration S] [--renew-deadline S] [--retry-period S] [--fault-phase S] [--deletions|--foreign-writes|--missing-namespace|--coarse-times|--wall-steps on|off] [--timeline]"
            );
            return ExitCode::from(2);
        }
    };
    let end = flags.first_seed.saturating_add(flags.seeds);
    let mut report = Report::default();
    for seed in flags.first_seed..end {
        let outcome = sim::run(&flags.scenario.params(seed));
        if flags.scenario.timeline && seed == flags.first_seed {
            for line in &outcome.timeline {
                println!("{line}");
            }
            println!("{outcome}");
        }
        report.add(outcome);
    }
    let ratio = flags
        .scenario
        .clock_rate_ratio
        .map_or("derived".to_string(), |r| r.to_string());
    println!(
        "seeds={}..{end} clock_rate_ratio={ratio} safe_below={:.3} {report}",
        flags.first_seed,
        flags.scenario.elector.tolerated_clock_rate_ratio()
    );
    if report.violations() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
