//! Hollow nodes against an in-process coordinator: they enroll, report their hardware, run and stop
//! jobs the scheduler places on them, time heartbeats, and fall silent when killed.

use std::time::Duration;

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use corral_cli::client::Client;
use corral_proto::api;
use corral_proto::job::{JobState, TerminationReason};

use super::*;

struct Cluster {
    _dir: tempfile::TempDir,
    shutdown: CancellationToken,
    running: corral_coordinator::Running,
    client: Client,
}

impl Cluster {
    async fn start() -> anyhow::Result<Self> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir()?;
        let shutdown = CancellationToken::new();
        let config = corral_coordinator::Config {
            data_dir: dir.path().join("coord"),
            http_listen: "127.0.0.1:0".parse()?,
            quic_listen: "127.0.0.1:0".parse()?,
            heartbeat_secs: 1,
            http_tls: corral_coordinator::HttpTls::Off,
            ..corral_coordinator::Config::default()
        };
        let running = corral_coordinator::start(config, shutdown.clone()).await?;
        let client = Client::new(&format!("http://{}", running.http_addr), &running.admin_token, "main");
        Ok(Self { _dir: dir, shutdown, running, client })
    }

    async fn fleet(&self, count: usize, opts: HollowOptions) -> anyhow::Result<HollowFleet> {
        let fleet =
            HollowFleet::start(self.running.quic_addr, &self.running.join_token, count, h100_host, opts).await?;
        fleet.wait_connected(count, Duration::from_secs(20)).await?;
        Ok(fleet)
    }

    async fn submit(&self, name: &str, gpus: u32) -> anyhow::Result<()> {
        let text = format!(
            "type: task\nname: {name}\nimage: busybox\ncommands:\n  - sleep 600\nresources:\n  gpu: H100:{gpus}\n"
        );
        let configuration = corral_proto::config::parse(&text, name).map_err(|e| anyhow::anyhow!("{e}"))?;
        let submit = api::SubmitRun { configuration, source: None, name: None };
        let _: api::Run = self.client.post(&self.client.project_path("runs"), &submit).await?;
        Ok(())
    }

    async fn wait_run(&self, name: &str, pred: impl Fn(&api::Run) -> bool) -> anyhow::Result<api::Run> {
        let path = self.client.project_path(&format!("runs/{name}"));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let run: api::Run = self.client.get(&path).await?;
            if pred(&run) {
                return Ok(run);
            }
            if Instant::now() > deadline {
                bail!("run {name} never reached the expected state: {run:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn node(&self, name: &str) -> anyhow::Result<api::Node> {
        let nodes: Vec<api::Node> = self.client.get("/api/nodes").await?;
        nodes
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow::anyhow!("the coordinator does not know {name}"))
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.running.wait()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hollow_nodes_report_hardware_run_and_stop_jobs() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let fleet = c.fleet(3, HollowOptions::default()).await?;

    let node = c.node("hollow-00001").await?;
    assert_eq!(node.status, api::NodeStatus::Ready);
    let inv = node.inventory.ok_or_else(|| anyhow::anyhow!("no inventory"))?;
    assert_eq!(inv.gpus.len(), 8);
    assert_eq!(inv.gpus[7].name, "NVIDIA H100 80GB HBM3");

    c.submit("train", 8).await?;
    let run = c.wait_run("train", |r| r.state == JobState::Running).await?;
    assert!(run.jobs[0].node_name.as_deref().is_some_and(|n| n.starts_with("hollow-")));
    assert_eq!(fleet.stats().jobs_running, 1);

    let stop = api::StopRun { abort: false };
    let _: api::Run = c.client.post(&c.client.project_path("runs/train/stop"), &stop).await?;
    let run = c.wait_run("train", |r| r.state.is_finished()).await?;
    assert_eq!(run.state, JobState::Stopped);
    assert_eq!(run.jobs[0].termination_reason, Some(TerminationReason::StoppedByUser));
    assert_eq!(run.jobs[0].exit_code, Some(143));
    assert_eq!(fleet.stats().jobs_running, 0);

    // Heartbeats flow every second and each is timed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = fleet.stats();
    assert!(s.heartbeats_acked >= 6, "{s:?}");
    let rtt = RttSummary::of(fleet.heartbeat_rtts()).ok_or_else(|| anyhow::anyhow!("no rtt"))?;
    assert!(rtt.max < Duration::from_secs(1), "{rtt:?}");
    assert_eq!((s.errors, s.sessions_lost), (0, 0), "{:?}", fleet.errors());

    fleet.shutdown().await;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_end_by_themselves_after_the_run_time() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let opts = HollowOptions { run_time: Some(Duration::from_millis(500)), ..HollowOptions::default() };
    let fleet = c.fleet(1, opts).await?;
    c.submit("short", 2).await?;
    let run = c.wait_run("short", |r| r.state.is_finished()).await?;
    assert_eq!(run.state, JobState::Done);
    assert_eq!(run.jobs[0].exit_code, Some(0));
    fleet.shutdown().await;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_falls_silent_without_closing() -> anyhow::Result<()> {
    let c = Cluster::start().await?;
    let fleet = c.fleet(2, HollowOptions::default()).await?;
    // Datagrams the coordinator has received on each node's connection.
    let received = |i: usize| {
        let id = fleet.node(i).and_then(|(_, id)| id.cloned());
        id.and_then(|id| c.running.state.sessions.get(&id)).map(|s| s.conn.stats().udp_rx.datagrams)
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(fleet.kill(0));
    assert!(!fleet.kill(0), "a node dies once");
    // Let what was in flight land (an ack is delayed by up to 25 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (dead, alive) = (received(0), received(1));
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Not a datagram for 2.5 s at a 1 s heartbeat, and no CONNECTION_CLOSE or FIN either: the
    // coordinator still holds the session, as it would for a host that lost power.
    assert!(dead.is_some(), "{:?} {:?}", fleet.stats(), fleet.errors());
    assert_eq!(received(0), dead, "the killed node sent something");
    assert!(received(1) > alive, "the other node heartbeats on");
    assert_eq!(c.node("hollow-00000").await?.status, api::NodeStatus::Ready);
    let s = fleet.stats();
    assert_eq!((s.connected, s.killed), (1, 1), "{s:?}");

    fleet.shutdown().await;
    c.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cordoned_nodes_take_no_jobs_until_uncordoned() -> anyhow::Result<()> {
    use corral_cli::{NodeCommand, NodeSelection, cluster::node};
    let c = Cluster::start().await?;
    let fleet = c.fleet(2, HollowOptions::default()).await?;
    let which = |nodes: &[&str], all: bool| NodeSelection {
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        fleet: None,
        all,
    };

    let mut out = Vec::new();
    assert_eq!(node(&c.client, NodeCommand::Cordon(which(&[], true)), &mut out).await?, 0);
    let said = String::from_utf8_lossy(&out);
    assert!(said.contains("2 nodes cordoned") && said.contains("hollow-00001"), "{said}");
    assert!(c.node("hollow-00000").await?.cordoned);

    c.submit("waits", 1).await?;
    let run = c.wait_run("waits", |r| r.jobs[0].status_message.is_some()).await?;
    assert_eq!(run.state, JobState::Pending);
    let why = run.jobs[0].status_message.clone().unwrap_or_default();
    assert!(why.contains("2 cordoned"), "{why}");

    let mut out = Vec::new();
    node(&c.client, NodeCommand::Uncordon(which(&["hollow-00001"], false)), &mut out).await?;
    assert_eq!(String::from_utf8_lossy(&out), "node hollow-00001 takes new jobs again\n");
    let run = c.wait_run("waits", |r| r.state == JobState::Running).await?;
    assert_eq!(run.jobs[0].node_name.as_deref(), Some("hollow-00001"));
    assert!(c.node("hollow-00000").await?.cordoned);

    // A name that does not exist changes nothing, and says so.
    let e = node(&c.client, NodeCommand::Uncordon(which(&["hollow-00000", "nope"], false)), &mut Vec::new())
        .await
        .expect_err("an unknown node is refused");
    assert!(format!("{e:#}").contains("no node named \"nope\""), "{e:#}");
    assert!(c.node("hollow-00000").await?.cordoned);

    fleet.shutdown().await;
    c.stop().await;
    Ok(())
}

/// The one send policy (`sessions::Session::send`): a node that does not take its commands as fast
/// as they come has its session reset — a command is refused, never queued without bound nor
/// dropped with the session left as it was — and it comes back on a new session, ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_keep_up_is_reset_and_comes_back() -> anyhow::Result<()> {
    use anyhow::Context;
    use corral_proto::wire::CoordinatorMessage;
    let c = Cluster::start().await?;
    let fleet = c.fleet(1, HollowOptions::default()).await?;
    let id = fleet.node(0).and_then(|(_, id)| id.cloned()).context("the node enrolled")?;
    let session = c.running.state.sessions.get(&id).context("the node is connected")?;
    let before = fleet.stats().sessions;
    // A patient sender (the updates thread's, off the runtime) gets a burst of 8 queues' worth
    // through without a reset: it waits for room.
    let patient = session.patient();
    let burst = corral_coordinator::nodes::sessions::COMMAND_QUEUE * 8;
    let sent = tokio::task::spawn_blocking(move || {
        (0..burst).filter(|_| patient.send(CoordinatorMessage::HeartbeatAck { seq: 0 })).count()
    })
    .await?;
    assert_eq!(sent, burst);
    assert!(session.conn.close_reason().is_none(), "a patient burst reset the session");
    assert_eq!(fleet.stats().sessions, before);
    // Far more than the queue holds, faster than any connection drains it.
    let refused = (0..100_000).filter(|_| !session.send(CoordinatorMessage::HeartbeatAck { seq: 0 })).count();
    assert!(refused > 0, "100,000 commands at once never filled the queue");
    let closed = tokio::time::timeout(Duration::from_secs(5), session.conn.closed()).await?;
    assert!(matches!(closed, quinn::ConnectionError::LocallyClosed), "{closed}");

    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet.stats().sessions <= before || !c.running.state.sessions.is_connected(&id) {
        if Instant::now() > deadline {
            bail!("the node did not come back: {:?} {:?}", fleet.stats(), fleet.errors());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = c.running.state.sessions.get(&id).context("connected again")?;
    assert_ne!(again.conn.stable_id(), session.conn.stable_id(), "a new connection");
    assert!(again.send(CoordinatorMessage::HeartbeatAck { seq: 0 }), "the new session takes commands");
    assert_eq!(c.node("hollow-00000").await?.status, api::NodeStatus::Ready);
    fleet.shutdown().await;
    c.stop().await;
    Ok(())
}
