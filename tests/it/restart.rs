//! Restarts lose nothing: the coordinator keeps runs and logs in its data dir; an agent restart
//! leaves containers running and re-adopts them.

use std::time::Duration;

use corral_proto::job::JobState;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_restart_keeps_history_and_logs() -> anyhow::Result<()> {
    let OneNode { dir, coord, agent: _agent, client } = OneNode::start().await?;
    let file = write_config(
        dir.path(),
        "history",
        &format!("type: task\nname: history\nimage: {IMAGE}\ncommands:\n  - echo remembered\n"),
    );
    let (code, _) = apply(&client, &file, false).await?;
    assert_eq!(code, 0);
    let before = run(&client, "history").await?;

    let (data, http, quic) = (coord.data.clone(), coord.http, coord.quic);
    coord.stop().await;
    let coord = Coordinator::start_on(&data, http, quic).await?;
    let client = coord.client();
    let after = run(&client, "history").await?;
    assert_eq!(after.id, before.id);
    assert_eq!(after.state, JobState::Done);
    assert_eq!(after.jobs[0].exit_code, Some(0));
    assert_eq!(logs(&client, "history").await?, "remembered\n");
    // The same admin token still works and the agent comes back on its own.
    nodes_ready(&client, 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_keeps_the_container_and_readopts_it() -> anyhow::Result<()> {
    let OneNode { dir, coord, mut agent, client } = OneNode::start().await?;
    let file = write_config(
        dir.path(),
        "survivor",
        &format!(
            "type: task\nname: survivor\nimage: {IMAGE}\ncommands:\n  - echo before\n  - sleep 4\n  - echo after\n"
        ),
    );
    apply(&client, &file, true).await?;
    let r = wait_state(&client, "survivor", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    let container = format!("corral-{}", r.jobs[0].id);

    agent.stop().await?;
    assert!(docker_running(&container), "the container outlives the agent");
    let _agent = Agent::start(
        &coord,
        &agent.state.clone(),
        AgentOptions { name: "node-a".into(), nvml: None, fleet: None, ..Default::default() },
    );
    let done = wait_state(&client, "survivor", |r| r.state.is_finished(), Duration::from_secs(60)).await?;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    let text = wait_for("the full log", Duration::from_secs(10), || async {
        let t = logs(&client, "survivor").await?;
        Ok(t.contains("after").then_some(t))
    })
    .await?;
    assert_eq!(text, "before\nafter\n");
    let nodes: Vec<corral_proto::api::Node> = client.get("/api/nodes").await?;
    assert_eq!(nodes.len(), 1, "the restarted agent is the same node");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_container_fails_its_job() -> anyhow::Result<()> {
    let OneNode { dir, coord, mut agent, client } = OneNode::start().await?;
    let file = write_config(
        dir.path(),
        "doomed",
        &format!("type: task\nname: doomed\nimage: {IMAGE}\ncommands:\n  - sleep 600\n"),
    );
    apply(&client, &file, true).await?;
    let r = wait_state(&client, "doomed", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    agent.stop().await?;
    let container = format!("corral-{}", r.jobs[0].id);
    let rm = std::process::Command::new("docker").args(["rm", "-f", &container]).output()?;
    assert!(rm.status.success());
    let _agent = Agent::start(
        &coord,
        &agent.state.clone(),
        AgentOptions { name: "node-a".into(), nvml: None, fleet: None, ..Default::default() },
    );
    let r = wait_state(&client, "doomed", |r| r.state.is_finished(), Duration::from_secs(30)).await?;
    assert_eq!(r.state, JobState::Failed);
    assert_eq!(r.jobs[0].termination_reason, Some(corral_proto::job::TerminationReason::ContainerLost));
    Ok(())
}
