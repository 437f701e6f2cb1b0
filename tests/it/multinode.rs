//! A 2-node task on two real agents, each on a host (network namespace) with its own address.

use std::time::Duration;

use corral_proto::job::JobState;

use crate::harness::*;
use crate::netns::{Hosts, NodeContainers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_task_gets_ranks_and_the_master_address() -> anyhow::Result<()> {
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
    for n in &nodes {
        assert!(hosts.addresses.contains(n.address.as_ref().expect("address")), "{n:?}");
        assert_eq!(n.fleet.as_deref(), Some("rack"));
    }

    let task = write_config(
        dir.path(),
        "ranks",
        &format!(
            "type: task\nname: ranks\nimage: {IMAGE}\nnodes: 2\ncommands:\n  - echo \"rank=$DSTACK_NODE_RANK of=$DSTACK_NODES_NUM master=$DSTACK_MASTER_NODE_IP\"\n  - echo \"ips=$(echo $DSTACK_NODES_IPS)\"\n  - cat $DSTACK_MPI_HOSTFILE\n"
        ),
    );
    corral_cli::commands::apply(&client, &task, true, true, None, &mut out).await?;
    let done = wait_state(&client, "ranks", |r| r.state.is_finished(), Duration::from_secs(60)).await?;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    assert_eq!(done.jobs.len(), 2);
    assert_ne!(done.jobs[0].node_id, done.jobs[1].node_id, "one rank per node");
    let address_of = |job: usize| {
        let id = done.jobs[job].node_id.clone();
        nodes.iter().find(|n| Some(&n.id) == id.as_ref()).and_then(|n| n.address.clone()).expect("node address")
    };
    let master = address_of(0);
    let ips = format!("{} {}", address_of(0), address_of(1));
    for rank in 0..2u32 {
        let mut log = Vec::new();
        corral_cli::commands::logs(&client, "ranks", rank, false, &mut log).await?;
        let log = String::from_utf8(log)?;
        assert!(log.contains(&format!("rank={rank} of=2 master={master}\n")), "rank {rank}: {log}");
        assert!(log.contains(&format!("ips={ips}\n")), "rank {rank}: {log}");
        assert!(log.contains(&format!("{} slots=1\n{} slots=1\n", address_of(0), address_of(1))), "rank {rank}: {log}");
    }
    Ok(())
}
