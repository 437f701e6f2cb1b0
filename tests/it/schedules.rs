//! Scheduled runs (`schedule: {cron: ...}`): `apply` registers one and says when it starts, the
//! coordinator starts it at that time as if it had been applied then, `ps` shows the next start,
//! `stop` removes the schedule, and a restart keeps it (a time missed while down starts once).
//!
//! The coordinator's schedule clock is moved so that a cron's next minute is seconds away: the tests
//! wait for conditions, never for the minute.

use std::time::Duration;

use corral_coordinator::scheduling::schedules::Clock;
use corral_proto::api;
use corral_proto::job::JobState;

use crate::harness::*;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The next whole minute at least `margin_ms` away from now (system clock).
fn next_minute_after(margin_ms: i64) -> i64 {
    (now_ms() + margin_ms + 59_999) / 60_000 * 60_000
}

fn task(name: &str) -> String {
    format!(
        "type: task\nname: {name}\nimage: {IMAGE}\nschedule:\n  cron: \"* * * * *\"\ncommands:\n  - echo started by the schedule\n"
    )
}

async fn ps(client: &corral_cli::client::Client, all: bool) -> anyhow::Result<String> {
    let mut out = Vec::new();
    corral_cli::commands::ps(client, all, false, None, &mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

async fn runs_named(client: &corral_cli::client::Client, name: &str) -> anyhow::Result<Vec<api::Run>> {
    let runs: Vec<api::Run> = client.get(&client.project_path("runs?all=true")).await?;
    Ok(runs.into_iter().filter(|r| r.name == name).collect())
}

async fn schedule(client: &corral_cli::client::Client, name: &str) -> anyhow::Result<Option<api::ScheduledRun>> {
    let all = corral_cli::schedules::list(client).await?;
    Ok(all.into_iter().find(|s| s.name == name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_run_starts_at_its_time_and_ps_shows_the_next_start() -> anyhow::Result<()> {
    let clock = Clock::default();
    let c = OneNode::start_with(|config| config.schedule_clock = clock.clone()).await?;
    // Four seconds before a whole minute, on the coordinator's schedule clock.
    let minute = next_minute_after(4_000);
    let ahead = minute - 4_000 - now_ms();
    clock.set_ahead_ms(ahead);

    let (code, out) = apply(&c.client, &write_config(c.dir.path(), "nightly", &task("nightly")), true).await?;
    assert_eq!(code, 0, "{out}");
    let at = corral_cli::schedules::utc(minute);
    assert!(out.contains(&format!("scheduled run nightly: next start {at} (in ")), "{out}");
    assert!(runs_named(&c.client, "nightly").await?.is_empty(), "nothing starts when it is applied");
    let listed = ps(&c.client, false).await?;
    assert!(listed.contains("scheduled") && listed.contains(&format!("next start {at}")), "{listed}");

    // At its time the run is submitted, runs like any other, and ends.
    let run = wait_for("the scheduled run to start and end", Duration::from_secs(40), || async {
        Ok(runs_named(&c.client, "nightly").await?.into_iter().find(|r| r.state == JobState::Done))
    })
    .await?;
    assert!(run.submitted_at_ms + ahead >= minute, "submitted at its time, not before");
    assert_eq!(logs(&c.client, "nightly").await?, "started by the schedule\n");
    assert_eq!(runs_named(&c.client, "nightly").await?.len(), 1);

    // The next start is reckoned from the end: the following minute.
    let next = corral_cli::schedules::utc(minute + 60_000);
    let s = wait_for("the next start", Duration::from_secs(10), || async {
        Ok(schedule(&c.client, "nightly").await?.filter(|s| s.next_start_ms.is_some()))
    })
    .await?;
    assert_eq!(s.next_start_ms, Some(minute + 60_000));
    assert_eq!(s.last_run.as_ref(), Some(&run.id));
    let listed = ps(&c.client, false).await?;
    assert!(listed.contains(&format!("next start {next}")), "{listed}");

    // A run of that name applied by hand would be the schedule's: refused, saying what to do.
    let plain = write_config(c.dir.path(), "plain", &task("nightly").replace("schedule:\n  cron: \"* * * * *\"\n", ""));
    let e = apply(&c.client, &plain, true).await.expect_err("the name is the schedule's");
    assert!(format!("{e:#}").contains("is a scheduled run: `corral stop nightly` removes its schedule"), "{e:#}");

    // `stop` removes the schedule; the run it started stays in `ps -a`.
    let mut out = Vec::new();
    let code = corral_cli::commands::stop(&c.client, "nightly", true, false, &mut out).await?;
    assert_eq!(code, 0);
    assert!(String::from_utf8_lossy(&out).contains("schedule of nightly removed"));
    assert!(schedule(&c.client, "nightly").await?.is_none());
    assert!(!ps(&c.client, false).await?.contains("nightly"));
    assert!(ps(&c.client, true).await?.contains("nightly"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_missed_while_the_coordinator_was_down_starts_once_after_a_restart() -> anyhow::Result<()> {
    ensure_image();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("coord");
    let clock = Clock::default();
    let config = || corral_coordinator::Config {
        data_dir: data.clone(),
        http_listen: "127.0.0.1:0".parse().expect("an address"),
        quic_listen: "127.0.0.1:0".parse().expect("an address"),
        heartbeat_secs: 1,
        http_tls: corral_coordinator::HttpTls::Off,
        schedule_clock: clock.clone(),
        ..Default::default()
    };
    // Registered a minute before its time, and the coordinator goes down.
    let minute = next_minute_after(60_000);
    clock.set_ahead_ms(minute - 60_000 - now_ms());
    let coord = Coordinator::start_config(config()).await?;
    let (code, out) = apply(&coord.client(), &write_config(dir.path(), "report", &task("report")), true).await?;
    assert_eq!(code, 0, "{out}");
    coord.stop().await;

    // It comes back two and a half minutes later: three starts were missed; one is made.
    clock.set_ahead_ms(minute + 150_000 - now_ms());
    let coord = Coordinator::start_config(config()).await?;
    let client = coord.client();
    let _agent =
        Agent::start(&coord, &dir.path().join("agent"), AgentOptions { name: "node-a".into(), ..Default::default() });
    nodes_ready(&client, 1).await?;
    let s = wait_for("the missed start, made and ended", Duration::from_secs(40), || async {
        Ok(schedule(&client, "report").await?.filter(|s| s.last_run.is_some() && s.next_start_ms.is_some()))
    })
    .await?;
    let runs = runs_named(&client, "report").await?;
    assert_eq!(runs.len(), 1, "one start for the missed times: {runs:#?}");
    assert_eq!(runs[0].state, JobState::Done);
    assert_eq!(s.next_start_ms, Some(minute + 180_000), "the next one after the run ended");
    assert_eq!(logs(&client, "report").await?, "started by the schedule\n");
    coord.stop().await;
    Ok(())
}
