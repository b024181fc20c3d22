//! `leasehold status`: the lock as a person (or a script) wants to see it.

use std::time::Duration;

use leasehold::lock::Lock;
use leasehold::{LeaderElectionRecord, Timestamp};

use crate::{Fatal, Output, StatusArgs};

pub(crate) async fn show(args: StatusArgs) -> Result<u8, Fatal> {
    let (client, namespace) = crate::client(&args.lock).await?;
    let kind = format!("{:?}", args.lock.lock).to_lowercase();
    let where_ = format!("{namespace}/{}", args.lock.lease);
    let seen = crate::with_lock!(args.lock, client, namespace, |lock| lock.get().await)
        .map_err(|e| Fatal::runtime(format!("{where_}: {e}")))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_micros()).ok())
        .unwrap_or(0);
    let ago = |t: Option<Timestamp>| {
        t.map(|t| Duration::from_micros(u64::try_from(now - t.unix_micros()).unwrap_or(0)))
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
                "renewedSecondsAgo": ago(r.renew_time).map(|d| d.as_secs_f64()),
                "leaderTransitions": r.leader_transitions,
                "preferredHolder": r.preferred_holder.as_ref().map(ToString::to_string),
                "strategy": (!r.strategy.is_empty()).then_some(r.strategy.as_str()),
            });
            println!("{json}");
        }
        (Output::Text, Some(seen)) => print!("{}", text(&where_, &kind, &seen.value, ago)),
    }
    Ok(0)
}

fn text(
    where_: &str,
    kind: &str,
    r: &LeaderElectionRecord,
    ago: impl Fn(Option<Timestamp>) -> Option<Duration>,
) -> String {
    let when = |t: Option<Timestamp>| match (t, ago(t)) {
        (Some(t), Some(d)) => format!("{} ({} ago)", t.to_rfc3339_micros(), human(d)),
        (Some(t), None) => t.to_rfc3339_micros(),
        (None, _) => "-".into(),
    };
    let holder = r
        .holder
        .as_ref()
        .map_or_else(|| "(nobody: released)".to_string(), ToString::to_string);
    let mut out = format!(
        "lock:         {where_} ({kind})\nholder:       {holder}\ntransitions:  {}\nacquired:     {}\nrenewed:      {}\nlease:        {}s\n",
        r.leader_transitions,
        when(r.acquire_time),
        when(r.renew_time),
        r.lease_duration_seconds,
    );
    if let Some(preferred) = &r.preferred_holder {
        out.push_str(&format!("preferred:    {preferred}\n"));
    }
    out
}

/// `1h2m`, `3m4s`, `5.2s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{:.1}s", d.as_secs_f64()),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}
