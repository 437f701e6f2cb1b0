//! Heterogeneous runs against real agents: a task's node `groups` (one gang, each rank running its
//! own group's commands, with the other nodes' addresses put in) and a service's replica groups
//! (each group's replicas answering through the proxy).

use std::collections::BTreeSet;
use std::time::Duration;

use corral_proto::job::JobState;

use crate::harness::*;
use crate::netns::{Hosts, NodeContainers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_groups_run_their_own_commands_and_see_the_head_s_address() -> anyhow::Result<()> {
    ensure_image();
    let dir = tempfile::tempdir()?;
    let mut hosts = Hosts::create(2)?;
    let coord = Coordinator::start_on(&dir.path().join("coord"), "127.0.0.1:0".parse()?, "0.0.0.0:0".parse()?).await?;
    let client = coord.client();
    let fleet = write_config(dir.path(), "rack", "type: fleet\nname: rack\nplacement: cluster\n");
    let mut out = Vec::new();
    corral_cli::commands::apply(&client, &fleet, true, true, None, &mut out).await?;
    let states = [dir.path().join("h0"), dir.path().join("h1")];
    let _cleanup = NodeContainers(states.to_vec());
    let dial = format!("{}:{}", hosts.gateway, coord.quic.port());
    for (i, state) in states.iter().enumerate() {
        hosts.start_agent(i, &dial, &coord.join_token.to_string(), state, &format!("host-{i}"), "rack")?;
    }
    let nodes = nodes_ready(&client, 2).await?;

    // The worker asks for more memory than the head: each rank is placed with its own group's
    // resources (both hosts have it; what is checked is that each job ran its own commands).
    let text = "type: task
name: ray
image: IMAGE
env:
  - SHARED=everyone
groups:
  - name: head
    nodes: 1
    commands:
      - echo \"head ran rank=$DSTACK_NODE_RANK group=$CORRAL_NODE_GROUP of=$DSTACK_NODES_NUM shared=$SHARED\"
    resources:
      cpu: 1
  - name: workers
    nodes: 1
    commands:
      - echo \"worker ran rank=$DSTACK_NODE_RANK group=$CORRAL_NODE_GROUP head=${{ groups[0].nodes[0].IP_ADDRESS }} master=$DSTACK_MASTER_NODE_IP\"
    resources:
      cpu: 1
      memory: 16MB..
"
    .replace("IMAGE", IMAGE);
    corral_cli::commands::apply(&client, &write_config(dir.path(), "ray", &text), true, true, None, &mut out).await?;
    let done = wait_state(&client, "ray", |r| r.state.is_finished(), Duration::from_secs(60)).await?;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    assert_eq!(done.jobs.len(), 2, "one gang of both groups' nodes");
    assert_ne!(done.jobs[0].node_id, done.jobs[1].node_id, "one rank per node");
    let address_of = |job: usize| {
        let id = done.jobs[job].node_id.clone();
        nodes.iter().find(|n| Some(&n.id) == id.as_ref()).and_then(|n| n.address.clone()).expect("node address")
    };
    let head = address_of(0);
    let log = |rank: u32| {
        let client = &client;
        async move {
            let mut log = Vec::new();
            corral_cli::commands::logs(client, "ray", rank, false, &mut log).await?;
            anyhow::Ok(String::from_utf8(log)?)
        }
    };
    let head_log = log(0).await?;
    assert!(head_log.contains("head ran rank=0 group=head of=2 shared=everyone\n"), "{head_log}");
    assert!(!head_log.contains("worker ran"), "the head runs its own group's commands only: {head_log}");
    let worker_log = log(1).await?;
    assert!(
        worker_log.contains(&format!("worker ran rank=1 group=workers head={head} master={head}\n")),
        "{worker_log}"
    );
    assert!(!worker_log.contains("head ran"), "{worker_log}");
    Ok(())
}

/// A busybox web server on port 8000 whose index page says `text`.
fn httpd(text: &str) -> String {
    format!("      - mkdir -p /www\n      - echo \"{text}\" > /www/index.html\n      - httpd -f -p 8000 -h /www\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_group_answers_through_the_proxy() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let text = format!(
        "type: service\nname: mixed\nimage: {IMAGE}\nport: 8000\nauth: false\nreplicas:\n  - name: small\n    count: 1\n    commands:\n{}  - name: big\n    count: 1..2\n    scaling:\n      metric: rps\n      target: 1000\n    commands:\n{}",
        httpd("small $CORRAL_JOB_ID"),
        httpd("big $CORRAL_JOB_ID"),
    );
    let (code, out) = apply(&c.client, &write_config(c.dir.path(), "mixed", &text), true).await?;
    assert_eq!(code, 0, "{out}");
    let running = |r: &corral_proto::api::Run| r.jobs.len() == 2 && r.jobs.iter().all(|j| j.state == JobState::Running);
    let run = wait_state(&c.client, "mixed", running, Duration::from_secs(30)).await?;
    // Each group's replicas are numbered from its own block: `small` owns 0, `big` 1 and 2.
    let nums: BTreeSet<u32> = run.jobs.iter().map(|j| j.job_num).collect();
    assert_eq!(nums, BTreeSet::from([0, 1]), "{run:?}");
    let id_of = |num: u32| run.jobs.iter().find(|j| j.job_num == num).map(|j| j.id.to_string()).unwrap_or_default();
    let want = BTreeSet::from([format!("small {}\n", id_of(0)), format!("big {}\n", id_of(1))]);

    let http = reqwest::Client::new();
    let url = format!("http://{}/proxy/services/main/mixed/index.html", c.coord.http);
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 && tokio::time::Instant::now() < deadline {
        match http.get(&url).send().await {
            Ok(r) if r.status() == 200 => {
                seen.insert(r.text().await?);
            }
            // A server still starting: ask again shortly.
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(seen, want, "both groups' replicas take requests, each running its own group's commands");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaled_group_grows_and_shrinks_on_its_own_and_a_grouped_service_rolls() -> anyhow::Result<()> {
    use corral_proto::job::TerminationReason;
    let c = OneNode::start().await?;
    let service = |version: &str| {
        format!(
            "type: service\nname: tiers\nimage: {IMAGE}\nport: 8000\nauth: false\nreplicas:\n  - name: steady\n    count: 1\n    resources: {{cpu: 1}}\n    commands:\n{}  - name: burst\n    count: 0..1\n    scaling: {{metric: rps, target: 1, window: 30s, scale_up_delay: 1s, scale_down_delay: 2s}}\n    resources: {{cpu: 1}}\n    commands:\n{}",
            httpd(&format!("steady {version}")),
            httpd(&format!("burst {version}")),
        )
    };
    let (code, out) = apply(&c.client, &write_config(c.dir.path(), "tiers-v1", &service("v1")), true).await?;
    assert_eq!(code, 0, "{out}");
    let running =
        |r: &corral_proto::api::Run, num: u32| r.jobs.iter().any(|j| j.job_num == num && j.state == JobState::Running);
    let r = wait_state(&c.client, "tiers", |r| running(r, 0), Duration::from_secs(30)).await?;
    assert_eq!(r.jobs.len(), 1, "the scaled group starts at its minimum, none: {:?}", r.jobs);

    // 60 requests: 2 a second over the 30 s window against a target of 1: the burst group grows
    // to its maximum (replica number 1, its block's first); the steady one keeps its count.
    let http = reqwest::Client::new();
    let url = format!("http://{}/proxy/services/main/tiers/", c.coord.http);
    for _ in 0..60 {
        let resp = http.get(&url).send().await?;
        assert_eq!(resp.status(), 200);
    }
    wait_state(&c.client, "tiers", |r| running(r, 0) && running(r, 1), Duration::from_secs(30)).await?;

    // Idle: the burst group goes back to none, the steady one stays.
    let idle = wait_state(
        &c.client,
        "tiers",
        |r| r.jobs.iter().any(|j| j.job_num == 1 && j.termination_reason == Some(TerminationReason::ScaledDown)),
        Duration::from_secs(90),
    )
    .await?;
    assert!(running(&idle, 0), "the steady group is not scaled: {:?}", idle.jobs);

    // Applied again: the new deployment's groups come up next to the old one, which then leaves.
    let (code, out) = apply(&c.client, &write_config(c.dir.path(), "tiers-v2", &service("v2")), true).await?;
    assert_eq!(code, 0, "{out}");
    wait_for("the old deployment to be replaced", Duration::from_secs(60), || async {
        let runs: Vec<corral_proto::api::Run> = c.client.get(&c.client.project_path("runs?all=true")).await?;
        let old = runs.iter().filter(|r| r.name == "tiers" && r.state.is_finished()).count();
        Ok((old == 1).then_some(()))
    })
    .await?;
    let body = http.get(&url).send().await?.text().await?;
    assert_eq!(body, "steady v2\n");
    Ok(())
}
