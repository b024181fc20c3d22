//! `leasehold status`: the lock as a person (or a script) wants to see it.

use std::time::Duration;

use leasehold::lock::Lock;
use leasehold::{LeaderElectionRecord, Timestamp};

use crate::{Fatal, Output, StatusArgs};

pub(crate) async fn show(args: StatusArgs) -> Result<u8, Fatal> {
    args.lock.check()?;
    let (client, namespace) = crate::client(&args.lock).await?;
    let kind = format!("{:?}", args.lock.lock).to_lowercase();
    let where_ = format!("{namespace}/{}", args.lock.lease);
    let seen = crate::with_lock!(args.lock, client, namespace, |lock| lock.get().await);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_micros()).ok())
        .unwrap_or(0);
    // Positive: in the past; negative: in the future (the writer's clock is ahead of ours).
    let age = |t: Option<Timestamp>| t.map(|t| now.saturating_sub(t.unix_micros()));
    let seen = match (args.output, seen) {
        (_, Ok(seen)) => seen,
        // Scripts get JSON whatever happens: an unreadable record is a state worth showing.
        (Output::Json, Err(e)) => {
            println!(
                "{}",
                serde_json::json!({"lock": where_, "kind": kind, "error": e.message, "errorKind": e.kind.to_string()})
            );
            return Ok(1);
        }
        (Output::Text, Err(e)) => return Err(Fatal::runtime(format!("{where_}: {e}"))),
    };
    match (args.output, seen) {
        (Output::Json, None) => {
            println!(
                "{}",
                serde_json::json!({"lock": where_, "kind": kind, "exists": false})
            );
        }
        (Output::Text, None) => println!("{where_} ({kind}) does not exist"),
        (Output::Json, Some(seen)) => {
            let r = &seen.value;
            let json = serde_json::json!({
                "lock": where_,
                "kind": kind,
                "exists": true,
                "resourceVersion": seen.version.as_str(),
                "holderIdentity": r.holder.as_ref().map(ToString::to_string),
                "leaseDurationSeconds": r.lease_duration_seconds,
                "acquireTime": r.acquire_time.map(|t| t.to_rfc3339_micros()),
                "renewTime": r.renew_time.map(|t| t.to_rfc3339_micros()),
                // Negative when renewTime is in the future.
                "renewedSecondsAgo": age(r.renew_time).map(|micros| micros as f64 / 1e6),
                "leaderTransitions": r.leader_transitions,
                "preferredHolder": r.preferred_holder.as_ref().map(ToString::to_string),
                "strategy": (!r.strategy.is_empty()).then_some(r.strategy.as_str()),
            });
            println!("{json}");
        }
        (Output::Text, Some(seen)) => print!("{}", text(&where_, &kind, &seen.value, age)),
    }
    Ok(0)
}

fn text(
    where_: &str,
    kind: &str,
    r: &LeaderElectionRecord,
    age: impl Fn(Option<Timestamp>) -> Option<i64>,
) -> String {
    let when = |t: Option<Timestamp>| match (t, age(t)) {
        (Some(t), Some(micros)) if micros >= 0 => {
            format!("{} ({} ago)", t.to_rfc3339_micros(), human(micros))
        }
        (Some(t), Some(micros)) => format!(
            "{} (in {}: in the future, the writer's clock is ahead)",
            t.to_rfc3339_micros(),
            human(micros.saturating_neg())
        ),
        (Some(t), None) => t.to_rfc3339_micros(),
        (None, _) => "-".into(),
    };
    let holder = r.holder.as_ref().map_or_else(
        || "(nobody: released)".to_string(),
        |h| printable(h.as_str()),
    );
    let mut out = format!(
        "lock:         {where_} ({kind})\nholder:       {holder}\ntransitions:  {}\nacquired:     {}\nrenewed:      {}\nlease:        {}s\n",
        r.leader_transitions,
        when(r.acquire_time),
        when(r.renew_time),
        r.lease_duration_seconds,
    );
    if !r.strategy.is_empty() {
        out.push_str(&format!("strategy:     {}\n", printable(&r.strategy)));
    }
    if let Some(preferred) = &r.preferred_holder {
        out.push_str(&format!(
            "preferred:    {}\n",
            printable(preferred.as_str())
        ));
    }
    out
}

/// Text from the lock, safe to print on a terminal: control characters (which could rewrite
/// the screen) are escaped.
fn printable(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.escape_debug().to_string()
    } else {
        s.to_string()
    }
}

/// `1h2m`, `3m4s`, `5.2s`, from microseconds.
fn human(micros: i64) -> String {
    let d = Duration::from_micros(u64::try_from(micros).unwrap_or(0));
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_future_times_said() {
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("pod-0"), "pod-0");
        let record = LeaderElectionRecord {
            holder: leasehold::Identity::new("x\ny").ok(),
            renew_time: Timestamp::from_unix_micros(10_000_000).ok(),
            strategy: "OldestEmulationVersion".into(),
            ..Default::default()
        };
        let shown = text("ns/l", "lease", &record, |_| Some(-3_000_000));
        assert!(shown.contains("holder:       x\\ny"), "{shown}");
        assert!(shown.contains("in 3.0s: in the future"), "{shown}");
        assert!(
            shown.contains("strategy:     OldestEmulationVersion"),
            "{shown}"
        );
    }
}
