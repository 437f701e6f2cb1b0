//! Convergence after things went wrong while nobody was looking: stops that race placement, aborts
//! while a node is away, containers Corral does not know.

use std::time::Duration;

use corral_proto::job::{JobState, TerminationReason};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_pending_run_ends_it() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let file = write_config(
        c.dir.path(),
        "waiter",
        &format!("type: task\nname: waiter\nimage: {IMAGE}\ncommands:\n  - echo hi\nresources:\n  gpu: H100:8\n"),
    );
    apply(&c.client, &file, true).await?;
    wait_state(&c.client, "waiter", |r| r.state == JobState::Pending, Duration::from_secs(15)).await?;
    let mut out = Vec::new();
    assert_eq!(corral_cli::commands::stop(&c.client, "waiter", true, false, &mut out).await?, 0);
    let r = run(&c.client, "waiter").await?;
    assert_eq!(r.state, JobState::Stopped);
    assert_eq!(r.jobs[0].termination_reason, Some(TerminationReason::StoppedByUser));
    // The name is free again.
    apply(&c.client, &file, true).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_while_the_node_is_away_ends_the_run_and_the_container_goes_when_it_returns() -> anyhow::Result<()> {
    let OneNode { dir, coord, mut agent, client } = OneNode::start().await?;
    let file = write_config(
        dir.path(),
        "stranded",
        &format!("type: task\nname: stranded\nimage: {IMAGE}\ncommands:\n  - sleep 600\n"),
    );
    apply(&client, &file, true).await?;
    let r = wait_state(&client, "stranded", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    let container = format!("corral-{}", r.jobs[0].id);
    agent.stop().await?;
    wait_for("the node to be offline", Duration::from_secs(10), || async {
        let nodes: Vec<corral_proto::api::Node> = client.get("/api/nodes").await?;
        Ok(nodes.iter().all(|n| n.status == corral_proto::api::NodeStatus::Offline).then_some(()))
    })
    .await?;

    let mut out = Vec::new();
    assert_eq!(corral_cli::commands::stop(&client, "stranded", true, true, &mut out).await?, 0);
    let r = run(&client, "stranded").await?;
    assert_eq!(r.state, JobState::Aborted);
    assert!(docker_running(&container), "nobody could kill it yet");

    let _agent = Agent::start(
        &coord,
        &agent.state.clone(),
        AgentOptions { name: "node-a".into(), nvml: None, fleet: None, ..Default::default() },
    );
    wait_for("the stranded container to be removed", Duration::from_secs(30), || async {
        Ok((!docker_exists(&container)).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_corral_does_not_know_is_removed() -> anyhow::Result<()> {
    let OneNode { dir: _dir, coord, mut agent, client: _client } = OneNode::start().await?;
    agent.stop().await?;
    let node: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(agent.state.join("node.json"))?)?;
    let node = node["node_id"].as_str().expect("node id").to_owned();
    let ghost = format!("corral-ghost{}", std::process::id());
    let made = std::process::Command::new("docker")
        .args(["run", "-d", "--name", &ghost])
        .args(["--label", &format!("corral.job=ghost{}", std::process::id()), "--label", "corral.run=r0"])
        .args(["--label", &format!("corral.node={node}"), IMAGE, "sleep", "600"])
        .output()?;
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let _agent = Agent::start(
        &coord,
        &agent.state.clone(),
        AgentOptions { name: "node-a".into(), nvml: None, fleet: None, ..Default::default() },
    );
    let gone = wait_for("the unknown container to be removed", Duration::from_secs(30), || async {
        Ok((!docker_exists(&ghost)).then_some(()))
    })
    .await;
    let _ = std::process::Command::new("docker").args(["rm", "-f", &ghost]).output();
    gone
}
