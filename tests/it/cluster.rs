//! Cluster scheduling with real agents: node loss and retry elsewhere, no duplicate after a
//! partitioned node returns, priority order.

use std::time::Duration;

use corral_proto::job::{JobState, TerminationReason};

use crate::harness::*;

async fn two_nodes(node_timeout: Duration) -> anyhow::Result<(tempfile::TempDir, Coordinator, Agent, Agent)> {
    ensure_image();
    let dir = tempfile::tempdir()?;
    let any = "127.0.0.1:0".parse()?;
    let coord = Coordinator::start_with(&dir.path().join("coord"), any, any, node_timeout).await?;
    let a = Agent::start(
        &coord,
        &dir.path().join("a"),
        AgentOptions { name: "node-a".into(), nvml: None, fleet: None, ..Default::default() },
    );
    let b = Agent::start(
        &coord,
        &dir.path().join("b"),
        AgentOptions { name: "node-b".into(), nvml: None, fleet: None, ..Default::default() },
    );
    nodes_ready(&coord.client(), 2).await?;
    Ok((dir, coord, a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_s_job_is_retried_elsewhere_and_the_old_copy_is_killed_on_return() -> anyhow::Result<()> {
    let (dir, coord, mut a, mut b) = two_nodes(Duration::from_secs(3)).await?;
    let client = coord.client();
    let file = write_config(
        dir.path(),
        "resilient",
        &format!(
            "type: task\nname: resilient\nimage: {IMAGE}\nretry:\n  on_events: [interruption]\n  duration: 10m\ncommands:\n  - sleep 600\n"
        ),
    );
    apply(&client, &file, true).await?;
    let first = wait_state(&client, "resilient", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    let first_node = first.jobs[0].node_name.clone().expect("placed");
    let old_container = format!("corral-{}", first.jobs[0].id);

    // The node goes away and its containers keep running, as on a partitioned host.
    let lost = tokio::time::Instant::now();
    let (gone, stays) = if first_node == "node-a" { (&mut a, &b) } else { (&mut b, &a) };
    gone.stop().await?;
    let retried = wait_state(
        &client,
        "resilient",
        |r| r.jobs[0].submission == 1 && r.state == JobState::Running,
        Duration::from_secs(30),
    )
    .await?;
    let took = lost.elapsed();
    assert_ne!(retried.jobs[0].node_name.as_deref(), Some(first_node.as_str()), "retried on the other node");
    assert!(took < Duration::from_secs(15), "node loss → running elsewhere took {took:?}");
    assert!(docker_running(&old_container), "the lost node's container still runs while it is away");

    // The node returns: its old copy is stopped, the retry keeps running.
    let gone_state = gone.state.clone();
    let _back = Agent::start(
        &coord,
        &gone_state,
        AgentOptions { name: first_node.clone(), nvml: None, fleet: None, ..Default::default() },
    );
    wait_for("the stale copy to be removed", Duration::from_secs(30), || async {
        Ok((!docker_exists(&old_container)).then_some(()))
    })
    .await?;
    let r = run(&client, "resilient").await?;
    assert_eq!(r.state, JobState::Running);
    assert_eq!(r.jobs[0].id, retried.jobs[0].id);
    let _ = stays;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retry_a_lost_node_fails_the_run() -> anyhow::Result<()> {
    let (dir, coord, mut a, mut b) = two_nodes(Duration::from_secs(2)).await?;
    let client = coord.client();
    // Pin it to node-a by making node-b unable to take it: node-a is the only node now.
    b.stop_for_test().await?;
    let file = write_config(
        dir.path(),
        "fragile",
        &format!("type: task\nname: fragile\nimage: {IMAGE}\ncommands:\n  - sleep 600\n"),
    );
    apply(&client, &file, true).await?;
    wait_state(&client, "fragile", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    // The agent goes away for good (its container runs on; the test removes it at the end).
    a.stop_for_test().await?;
    let r = wait_state(&client, "fragile", |r| r.state.is_finished(), Duration::from_secs(20)).await?;
    assert_eq!(r.state, JobState::Failed);
    assert_eq!(r.jobs[0].termination_reason, Some(TerminationReason::NodeUnreachable));
    assert!(r.jobs[0].status_message.clone().unwrap_or_default().contains("stopped answering"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_runs_first() -> anyhow::Result<()> {
    ensure_image();
    let nvml = fake_nvml();
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let client = coord.client();
    let _node = Agent::start(
        &coord,
        &dir.path().join("gpu"),
        AgentOptions { name: "gpu-node".into(), nvml: Some(nvml), fleet: None, ..Default::default() },
    );
    nodes_ready(&client, 1).await?;
    let task = |name: &str, priority: u8| {
        write_config(
            dir.path(),
            name,
            &format!(
                "type: task\nname: {name}\nimage: {IMAGE}\npriority: {priority}\ncommands:\n  - sleep 600\nresources:\n  gpu: 2\n"
            ),
        )
    };
    apply(&client, &task("blocker", 50), true).await?;
    wait_state(&client, "blocker", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    apply(&client, &task("low", 10), true).await?;
    apply(&client, &task("high", 90), true).await?;
    wait_state(&client, "high", |r| r.state == JobState::Pending, Duration::from_secs(10)).await?;
    let mut out = Vec::new();
    corral_cli::commands::stop(&client, "blocker", true, true, &mut out).await?;
    wait_state(&client, "high", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    let low = run(&client, "low").await?;
    assert_eq!(low.state, JobState::Pending, "the later but higher-priority run went first");
    for name in ["high", "low"] {
        corral_cli::commands::stop(&client, name, true, true, &mut out).await?;
    }
    Ok(())
}

/// Two in-process agents in a `placement: cluster` fleet.
async fn rack() -> anyhow::Result<(tempfile::TempDir, Coordinator, Agent, Agent)> {
    ensure_image();
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let client = coord.client();
    let fleet = write_config(dir.path(), "rack", "type: fleet\nname: rack\nplacement: cluster\n");
    let mut out = Vec::new();
    corral_cli::commands::apply(&client, &fleet, true, true, None, &mut out).await?;
    let opts =
        |name: &str| AgentOptions { name: name.into(), nvml: None, fleet: Some("rack".into()), ..Default::default() };
    let a = Agent::start(&coord, &dir.path().join("a"), opts("node-a"));
    let b = Agent::start(&coord, &dir.path().join("b"), opts("node-b"));
    nodes_ready(&client, 2).await?;
    Ok((dir, coord, a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_rank_stops_the_whole_gang() -> anyhow::Result<()> {
    let (dir, coord, _a, _b) = rack().await?;
    let client = coord.client();
    let file = write_config(
        dir.path(),
        "gang",
        &format!(
            "type: task\nname: gang\nimage: {IMAGE}\nnodes: 2\ncommands:\n  - if [ \"$DSTACK_NODE_RANK\" = 1 ]; then sleep 1; exit 5; fi\n  - sleep 600\n"
        ),
    );
    apply(&client, &file, true).await?;
    let r = wait_state(&client, "gang", |r| r.state.is_finished(), Duration::from_secs(60)).await?;
    assert_eq!(r.state, JobState::Failed);
    assert_eq!(r.jobs[1].exit_code, Some(5));
    assert_eq!(r.jobs[1].termination_reason, Some(TerminationReason::ContainerExitedWithError));
    assert_eq!(r.jobs[0].termination_reason, Some(TerminationReason::GangMemberFailed));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_first_start_and_master_done_stop() -> anyhow::Result<()> {
    let (dir, coord, _a, _b) = rack().await?;
    let client = coord.client();
    let file = write_config(
        dir.path(),
        "ordered",
        &format!(
            "type: task\nname: ordered\nimage: {IMAGE}\nnodes: 2\nstartup_order: master-first\nstop_criteria: master-done\ncommands:\n  - if [ \"$DSTACK_NODE_RANK\" = 0 ]; then sleep 2; echo master finished; exit 0; fi\n  - sleep 600\n"
        ),
    );
    apply(&client, &file, true).await?;
    let r = wait_state(&client, "ordered", |r| r.state.is_finished(), Duration::from_secs(60)).await?;
    assert_eq!(r.state, JobState::Done, "{:#?}", r.jobs);
    let started = |k: usize| r.jobs[k].started_at_ms.expect("started");
    assert!(started(1) >= started(0), "the worker started after the master");
    assert_eq!(r.jobs[1].termination_reason, Some(TerminationReason::Done), "the worker ends with the master");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_capacity_fails_only_when_retry_says_so() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let bounded = write_config(
        c.dir.path(),
        "bounded",
        &format!(
            "type: task\nname: bounded\nimage: {IMAGE}\nretry:\n  on_events: [no-capacity]\n  duration: 2s\ncommands:\n  - echo hi\nresources:\n  gpu: H100:8\n"
        ),
    );
    let patient = write_config(
        c.dir.path(),
        "patient",
        &format!("type: task\nname: patient\nimage: {IMAGE}\ncommands:\n  - echo hi\nresources:\n  gpu: H100:8\n"),
    );
    apply(&c.client, &bounded, true).await?;
    apply(&c.client, &patient, true).await?;
    let r = wait_state(&c.client, "bounded", |r| r.state.is_finished(), Duration::from_secs(20)).await?;
    assert_eq!(r.state, JobState::Failed);
    assert_eq!(r.jobs[0].termination_reason, Some(TerminationReason::NoCapacity));
    assert_eq!(run(&c.client, "patient").await?.state, JobState::Pending, "without retry a run waits");
    Ok(())
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_seen_follows_heartbeats_and_survives_a_restart() -> anyhow::Result<()> {
    // The temp dir outlives the coordinator and the agent (bindings drop in reverse order).
    let OneNode { dir: _dir, mut agent, coord, client } = OneNode::start().await?;
    let seen = |nodes: &[corral_proto::api::Node]| nodes.first().and_then(|n| n.last_seen_ms).unwrap_or(0);
    let connected = seen(&nodes_ready(&client, 1).await?);
    // Heartbeats every second (the harness's): three of them move SEEN on from the connection.
    let fresh = wait_for("last_seen to follow the heartbeats", Duration::from_secs(15), || async {
        let nodes: Vec<corral_proto::api::Node> = client.get("/api/nodes").await?;
        Ok((seen(&nodes) >= connected + 3_000).then(|| seen(&nodes)))
    })
    .await?;
    assert!(wall_ms() - fresh < 3_000, "a ready node was seen {} ms ago", wall_ms() - fresh);

    // The last time heard is in the store for the next start (written at disconnection and on
    // shutdown, not only every 30 s).
    agent.stop().await?;
    let stopped = wall_ms();
    let data = coord.data.clone();
    coord.stop().await;
    let coord = Coordinator::start(&data).await?;
    let nodes: Vec<corral_proto::api::Node> = coord.client().get("/api/nodes").await?;
    assert_eq!(nodes[0].status, corral_proto::api::NodeStatus::Offline);
    // (Within a few ms: the monotonic clock is read as wall-clock time at two moments.)
    assert!(seen(&nodes) >= fresh - 50, "stored {} < {fresh} (connected at {connected})", seen(&nodes));
    assert!(stopped - seen(&nodes) < 3_000, "stored {} ms before the agent stopped", stopped - seen(&nodes));
    Ok(())
}
