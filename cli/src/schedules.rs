//! Scheduled runs (`schedule:`) in the CLI: `apply` registers one and says when it starts,
//! `ps` lists them with their next start, `stop` removes one.

use std::io::Write;

use chrono::{DateTime, Utc};

use corral_proto::api::{self, SubmitRun};

use crate::client::Client;

type Out<'a> = &'a mut (dyn Write + Send);

/// `corral apply` of a configuration with a `schedule`: registers it (nothing starts now) and
/// prints when it will. Exit code 0.
pub async fn register(client: &Client, request: SubmitRun, out: Out<'_>) -> anyhow::Result<i32> {
    let s: api::ScheduledRun = client.post(&client.project_api(&["schedules"])?, &request).await?;
    writeln!(out, "scheduled run {}: {}", s.name, next_start(&s))?;
    writeln!(out, "  cron (UTC): {}", s.cron.join(", "))?;
    writeln!(out, "  `corral ps` shows its next start; `corral stop {}` removes the schedule", s.name)?;
    Ok(0)
}

/// The project's scheduled runs (none from a coordinator that predates them).
pub async fn list(client: &Client) -> anyhow::Result<Vec<api::ScheduledRun>> {
    match client.get(&client.project_api(&["schedules"])?).await {
        Ok(list) => Ok(list),
        Err(e) if format!("{e:#}").contains("404") => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Removes the schedule named `name`: `Ok(true)` when there was one.
pub async fn remove(client: &Client, name: &str) -> anyhow::Result<bool> {
    let path = client.project_api(&["schedules", name])?;
    match client.delete::<api::ScheduledRun>(&path).await {
        Ok(_) => Ok(true),
        Err(e) if format!("{e:#}").contains("no scheduled run named") => Ok(false),
        Err(e) => Err(e),
    }
}

/// `next start 2026-12-01 13:05:00 UTC (in 4m 10s)`, or why there is none yet.
pub fn next_start(s: &api::ScheduledRun) -> String {
    let mut line = match s.next_start_ms {
        Some(at) => format!("next start {} (in {})", utc(at), until(at - s.now_ms)),
        None if s.last_run.is_some() => "runs now; the next start is reckoned when this run ends".to_owned(),
        None => "no next start".to_owned(),
    };
    if let Some(e) = &s.last_error {
        line.push_str(&format!("; the last start failed: {e}"));
    }
    line
}

/// `2026-12-01 13:05:00 UTC`.
pub fn utc(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

/// `4m 10s`, `2h 5m`, `3d 4h`; `now` for a time that has come.
fn until(ms: i64) -> String {
    let s = (ms + 999) / 1000;
    match s {
        ..=0 => "now".to_owned(),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_and_rounded_up() {
        assert_eq!(utc(1_796_130_300_000), "2026-12-01 13:05:00 UTC");
        assert_eq!(until(250_100), "4m 11s");
        assert_eq!(until(3_000), "3s");
        assert_eq!(until(-5), "now");
        assert_eq!(until(90_061_000), "1d 1h");
    }
}
