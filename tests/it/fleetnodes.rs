//! What fleets say about their nodes, end to end: `env` in every job, `resources` refusing a host
//! that lacks them, `blocks` sharing a host, a run's `instances`, and TPU chips found on a host.

use std::path::{Path, PathBuf};

use anyhow::Context;
use std::time::Duration;

use corral_proto::api;
use corral_proto::job::JobState;

use crate::harness::*;

/// A coordinator and agents in fleets; drops agents first (their guards remove the containers).
struct Cluster {
    _agents: Vec<Agent>,
    coord: Coordinator,
    client: corral_cli::client::Client,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Applies `fleet` (a fleet file's text), then starts agents named `names` in it.
    async fn start(fleet: &str, names: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(fleet, names, None).await
    }

    /// With TPU device nodes under `device_root`. This host's Docker refuses privileged containers
    /// (as a rootless or user-namespaced daemon does): the coordinator runs TPU jobs without it.
    async fn start_with(fleet: &str, names: &[&str], device_root: Option<PathBuf>) -> anyhow::Result<Self> {
        ensure_image();
        let dir = tempfile::tempdir()?;
        let coord = Coordinator::start_config(corral_coordinator::Config {
            data_dir: dir.path().join("coord"),
            http_listen: "127.0.0.1:0".parse()?,
            quic_listen: "127.0.0.1:0".parse()?,
            heartbeat_secs: 1,
            http_tls: corral_coordinator::HttpTls::Off,
            tpu_privileged: device_root.is_none(),
            ..Default::default()
        })
        .await?;
        let client = coord.client();
        let file = write_config(dir.path(), "fleet", fleet);
        let (code, out) = apply(&client, &file, true).await?;
        anyhow::ensure!(code == 0, "fleet apply failed: {out}");
        let agents = names
            .iter()
            .map(|name| {
                Agent::start(
                    &coord,
                    &dir.path().join(name),
                    AgentOptions {
                        name: (*name).to_owned(),
                        fleet: Some("rack".into()),
                        device_root: device_root.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        Ok(Self { _agents: agents, coord, client, dir })
    }

    fn task(&self, name: &str, body: &str) -> PathBuf {
        write_config(self.dir.path(), name, &format!("type: task\nname: {name}\nimage: {IMAGE}\n{body}"))
    }

    async fn submit(&self, name: &str, body: &str) -> anyhow::Result<()> {
        let (code, out) = apply(&self.client, &self.task(name, body), true).await?;
        anyhow::ensure!(code == 0, "apply {name} failed: {out}");
        Ok(())
    }
}

async fn done(client: &corral_cli::client::Client, name: &str) -> anyhow::Result<api::Run> {
    wait_state(client, name, |r| r.state.is_finished(), Duration::from_secs(60)).await
}

async fn pending_reason(client: &corral_cli::client::Client, name: &str) -> anyhow::Result<String> {
    let r = wait_state(
        client,
        name,
        |r| r.state == JobState::Pending && r.jobs[0].status_message.is_some(),
        Duration::from_secs(30),
    )
    .await?;
    Ok(r.jobs[0].status_message.clone().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_env_reaches_every_job_and_the_run_s_own_value_wins() -> anyhow::Result<()> {
    let fleet = "type: fleet\nname: rack\nenv:\n  - FLEET_PROXY=http://proxy.rack:3128\n  - SHARED=from-fleet\n";
    let c = Cluster::start(fleet, &["node-a"]).await?;
    nodes_ready(&c.client, 1).await?;
    let file = c.task("envs", "env:\n  - SHARED=from-run\ncommands:\n  - echo \"proxy=$FLEET_PROXY shared=$SHARED\"\n");
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("proxy=http://proxy.rack:3128 shared=from-run\n"), "output: {out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_short_of_the_fleet_s_resources_is_refused_saying_why() -> anyhow::Result<()> {
    let fleet = "type: fleet\nname: rack\nresources:\n  gpu: A100:8\n";
    let c = Cluster::start(fleet, &["node-a"]).await?;
    let nodes = nodes_ready(&c.client, 1).await?;
    let why = "gpu: the fleet wants A100:8, the host has no GPUs";
    assert_eq!(nodes[0].refused.as_deref(), Some(why), "{:?}", nodes[0]);
    // What `corral node list` shows.
    let mut out = Vec::new();
    corral_cli::commands::node_list(&c.client, false, &mut out).await?;
    let out = String::from_utf8(out)?;
    assert!(out.contains("ready,refused") && out.contains(&format!("node-a is refused by fleet rack: {why}")), "{out}");
    let mut out = Vec::new();
    corral_cli::nodeinfo::node_get(&c.client, "node-a", false, &mut out).await?;
    let out = String::from_utf8(out)?;
    assert!(out.contains("status:  ready, refused\n") && out.contains(&format!("refused: {why}\n")), "{out}");
    // What the install script (and so `corral apply` of an ssh fleet) reads once the host joined.
    let url = format!("{}/api/join/node?id={}", c.coord.url(), nodes[0].id);
    let text = reqwest::Client::new().get(url).bearer_auth(c.coord.join_token.to_string()).send().await?.text().await?;
    assert!(text.starts_with(&format!("refused: {why}\n")), "{text}");
    // A run waits, saying why; the fleet applied again without the requirement takes the host.
    c.submit("waits", "commands: [\"echo ran\"]\n").await?;
    let reason = pending_reason(&c.client, "waits").await?;
    assert!(reason.contains(&format!("1 refused by its fleet (e.g. node-a: {why})")), "{reason}");
    let (code, out) =
        apply(&c.client, &write_config(c.dir.path(), "fleet2", "type: fleet\nname: rack\n"), true).await?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(done(&c.client, "waits").await?.state, JobState::Done);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_share_a_host_split_into_two_blocks() -> anyhow::Result<()> {
    let c = Cluster::start("type: fleet\nname: rack\nblocks: 2\n", &["node-a"]).await?;
    let nodes = nodes_ready(&c.client, 1).await?;
    let inv = nodes[0].inventory.clone().expect("inventory");
    anyhow::ensure!(inv.cpu_cores % 2 == 0, "this test needs an even number of CPUs, the host has {}", inv.cpu_cores);
    for name in ["one", "two", "three"] {
        c.submit(name, "commands:\n  - sleep 600\n").await?;
    }
    // Each gets one block — half the CPUs and half the memory — and both run at once.
    for name in ["one", "two"] {
        let r = wait_state(&c.client, name, |r| r.state == JobState::Running, Duration::from_secs(60)).await?;
        let a = r.jobs[0].allocation.clone().expect("allocation");
        assert_eq!((a.cpus, a.memory.bytes()), (inv.cpu_cores / 2, inv.memory.bytes() / 2), "{name}: {a:?}");
    }
    // The third waits for a block.
    let reason = pending_reason(&c.client, "three").await?;
    assert!(reason.contains("busy"), "{reason}");
    let mut out = Vec::new();
    corral_cli::commands::stop(&c.client, "one", true, true, &mut out).await?;
    wait_state(&c.client, "three", |r| r.state == JobState::Running, Duration::from_secs(60)).await?;
    for name in ["two", "three"] {
        corral_cli::commands::stop(&c.client, name, true, true, &mut out).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_place_a_run_on_the_named_node() -> anyhow::Result<()> {
    let c = Cluster::start("type: fleet\nname: rack\n", &["node-a", "node-b"]).await?;
    nodes_ready(&c.client, 2).await?;
    for i in 0..3 {
        let name = format!("pinned-{i}");
        c.submit(&name, "instances: [node-b]\ncommands: [\"echo here\"]\n").await?;
        let r = done(&c.client, &name).await?;
        assert_eq!((&r.state, r.jobs[0].node_name.as_deref()), (&JobState::Done, Some("node-b")), "{r:?}");
    }
    c.submit("nowhere", "instances: [node-c]\ncommands: [\"echo never\"]\n").await?;
    let reason = pending_reason(&c.client, "nowhere").await?;
    assert_eq!(reason, "no nodes named in `instances` (node-c) (see `corral node list`)");
    let mut ps = Vec::new();
    corral_cli::commands::ps(&c.client, false, false, None, &mut ps).await?;
    let ps = String::from_utf8(ps)?;
    assert!(ps.contains("no nodes named in `instances` (node-c)"), "ps: {ps}");
    Ok(())
}

/// Device nodes as a TPU VM has them (`/dev/accelN` with Google's PCI ids in sysfs), under a
/// root the agent is told to scan. They are character devices like `/dev/null` (1:3): Docker
/// gives a container only device nodes.
fn fake_tpu_host(root: &Path, chips: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("dev"))?;
    for i in 0..chips {
        let node = root.join(format!("dev/accel{i}"));
        let made = std::process::Command::new("mknod").arg(&node).args(["c", "1", "3"]).status()?;
        anyhow::ensure!(
            made.success(),
            "mknod {} failed (the TPU test makes device nodes: run it as root)",
            node.display()
        );
        let pci = root.join(format!("sys/class/accel/accel{i}/device"));
        std::fs::create_dir_all(&pci)?;
        std::fs::write(pci.join("vendor"), "0x1ae0\n")?;
        std::fs::write(pci.join("device"), "0x0063\n")?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpu_job_gets_its_chips_and_the_next_waits_for_them() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    fake_tpu_host(root.path(), 2)?;
    let c = Cluster::start_with("type: fleet\nname: rack\n", &["tpu-vm"], Some(root.path().to_owned())).await?;
    let nodes = nodes_ready(&c.client, 1).await?;
    let tpus = &nodes[0].inventory.as_ref().expect("inventory").tpus;
    assert_eq!(tpus.len(), 2, "{tpus:?}");
    assert_eq!(tpus[0].pci_device_id.as_deref(), Some("0x0063"));

    let body = "resources:\n  gpu: v5litepod-2\ncommands:\n  - ls /dev/accel0 /dev/accel1\n  - echo \"visible=${TPU_VISIBLE_CHIPS:-all}\"\n  - sleep 600\n";
    c.submit("first", body).await?;
    let first = wait_state(&c.client, "first", |r| r.state == JobState::Running, Duration::from_secs(60)).await?;
    assert_eq!(first.jobs[0].allocation.as_ref().map(|a| a.tpu_chips()), Some(vec![0, 1]));
    let log = wait_for("the first job's output", Duration::from_secs(30), || async {
        let log = logs(&c.client, "first").await?;
        Ok(log.contains("visible=").then_some(log))
    })
    .await?;
    assert!(log.contains("/dev/accel0\n/dev/accel1\nvisible=all\n"), "{log:?}");

    // Both chips are held: a second TPU job waits, and says so.
    c.submit(
        "second",
        "resources:\n  gpu: tpu-v5e-1\ncommands:\n  - ls /dev/accel0\n  - echo \"visible=$TPU_VISIBLE_CHIPS\"\n",
    )
    .await?;
    let reason = pending_reason(&c.client, "second").await?;
    assert!(reason.contains("TPU v5e-1") && reason.contains("busy"), "{reason}");
    // A job for another generation has nowhere to go.
    c.submit("v5p", "resources:\n  gpu: v5p-8\ncommands: [\"true\"]\n").await?;
    let reason = pending_reason(&c.client, "v5p").await?;
    assert!(reason.contains("no node has TPU v5p-8") && reason.contains("no v5p TPU chips"), "{reason}");

    let mut out = Vec::new();
    corral_cli::commands::stop(&c.client, "first", true, true, &mut out).await?;
    let second = done(&c.client, "second").await?;
    assert_eq!(second.state, JobState::Done, "{second:?}");
    let log = logs(&c.client, "second").await?;
    assert!(log.contains("/dev/accel0\nvisible=0\n"), "one chip of two, named for libtpu: {log:?}");
    corral_cli::commands::stop(&c.client, "v5p", true, true, &mut out).await?;
    Ok(())
}

/// `ssh_config.network`: two hosts (network namespaces) that the coordinator sees on one network
/// and that also have addresses on a second; the fleet names the second, so multi-node jobs get
/// those. The fleet is stored through the API (no SSH here): its hosts are the nodes' names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_s_network_gives_multi_node_jobs_their_addresses() -> anyhow::Result<()> {
    use crate::netns::{Hosts, NodeContainers};
    ensure_image();
    let dir = tempfile::tempdir()?;
    let mut hosts = Hosts::create(2)?;
    let coord = Coordinator::start_on(&dir.path().join("coord"), "127.0.0.1:0".parse()?, "0.0.0.0:0".parse()?).await?;
    let client = coord.client();
    // The second network: 10.214.<k>.0/24 beside the hosts' 10.213.<k>.0/24.
    let second: Vec<String> = hosts.addresses.iter().map(|a| a.replacen("10.213.", "10.214.", 1)).collect();
    for (i, a) in second.iter().enumerate() {
        hosts.add_address(i, &format!("{a}/24"))?;
    }
    let network = format!("{}.0/24", second[0].rsplit_once('.').map_or("", |(net, _)| net));
    let yaml = format!(
        "type: fleet\nname: rack\nplacement: cluster\nssh_config:\n  user: root\n  identity_file: ~/.ssh/id\n  network: {network}\n  hosts:\n    - host-0\n    - hostname: host-1\n      blocks: 2\n"
    );
    let corral_proto::config::Configuration::Fleet(configuration) = corral_proto::config::parse(&yaml, "rack.yml")?
    else {
        anyhow::bail!("a fleet");
    };
    let _: api::Fleet =
        client.post(&client.project_api(&["fleets"])?, &api::SubmitFleet { configuration, source: None }).await?;

    let states = [dir.path().join("h0"), dir.path().join("h1")];
    let _cleanup = NodeContainers(states.to_vec());
    let dial = format!("{}:{}", hosts.gateway, coord.quic.port());
    for (i, state) in states.iter().enumerate() {
        hosts.start_agent(i, &dial, &coord.join_token.to_string(), state, &format!("host-{i}"), "rack")?;
    }
    let nodes = nodes_ready(&client, 2).await?;
    for n in &nodes {
        assert_eq!(n.refused, None, "{n:?}");
        assert!(hosts.addresses.contains(n.address.as_ref().expect("address")), "seen on the first network: {n:?}");
    }
    let task = write_config(
        dir.path(),
        "ranks",
        &format!(
            "type: task\nname: ranks\nimage: {IMAGE}\nnodes: 2\ncommands:\n  - echo \"master=$DSTACK_MASTER_NODE_IP ips=$(echo $DSTACK_NODES_IPS)\"\n"
        ),
    );
    let (code, out) = apply(&client, &task, true).await?;
    assert_eq!(code, 0, "{out}");
    let done = done(&client, "ranks").await?;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    let address_of = |job: usize| {
        let name = done.jobs[job].node_name.clone().unwrap_or_default();
        let i: usize = name.trim_start_matches("host-").parse().unwrap_or(0);
        second[i].clone()
    };
    let log = logs(&client, "ranks").await?;
    let want = format!("master={} ips={} {}\n", address_of(0), address_of(0), address_of(1));
    assert!(log.contains(&want), "want {want:?} in {log:?}");

    // dstack's instance name `<fleet>-<index of its host>` picks host-1.
    let pinned = write_config(
        dir.path(),
        "pinned",
        &format!("type: task\nname: pinned\nimage: {IMAGE}\ninstances: [rack-1]\ncommands: [\"echo here\"]\n"),
    );
    apply(&client, &pinned, true).await?;
    let r = crate::fleetnodes::done(&client, "pinned").await?;
    assert_eq!(r.jobs[0].node_name.as_deref(), Some("host-1"), "{r:?}");
    // host-1's own `blocks: 2`: the job got one of its two blocks.
    let inv = nodes.iter().find(|n| n.name == "host-1").and_then(|n| n.inventory.clone()).context("host-1")?;
    let a = r.jobs[0].allocation.clone().context("allocation")?;
    assert_eq!((a.cpus, a.memory.bytes()), (inv.cpu_cores / 2, inv.memory.bytes() / 2), "{a:?}");
    Ok(())
}
