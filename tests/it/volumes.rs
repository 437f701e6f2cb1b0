//! Volumes through the whole path: host paths bound into containers (`/host:/container`,
//! `{instance_path, path, optional}`), and named volumes — Docker volumes that live on one node,
//! outlive runs, draw the runs that mount them to their node, and go with `corral volume delete`.

use std::time::Duration;

use corral_cli::client::Client;
use corral_proto::api;
use corral_proto::job::{JobState, TerminationReason};

use crate::harness::*;

/// Removes the named volumes' Docker volumes a test made (pass or fail).
struct DockerVolumes(Vec<String>);

impl Drop for DockerVolumes {
    fn drop(&mut self) {
        for v in &self.0 {
            let _ = std::process::Command::new("docker").args(["volume", "rm", "-f", v]).output();
        }
    }
}

fn docker_volume_exists(name: &str) -> bool {
    std::process::Command::new("docker").args(["volume", "inspect", name]).output().is_ok_and(|o| o.status.success())
}

/// A volume name no other test (or earlier run of this one) uses: Docker's names are the host's.
fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{:x}{:x}", std::process::id(), n)
}

async fn volumes(client: &Client) -> anyhow::Result<Vec<api::Volume>> {
    client.get(&client.project_api(&["volumes"])?).await
}

async fn volume_cmd(client: &Client, command: corral_cli::VolumeCommand) -> anyhow::Result<String> {
    let mut out = Vec::new();
    corral_cli::volumes::volume(client, command, &mut out).await?;
    Ok(String::from_utf8(out)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_a_job_writes_through_a_host_volume_is_on_the_host() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let out_dir = c.dir.path().join("host-out");
    let in_dir = c.dir.path().join("host-in");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::create_dir_all(&in_dir)?;
    std::fs::write(in_dir.join("input.txt"), "from the host\n")?;
    let file = write_config(
        c.dir.path(),
        "hostvol",
        &format!(
            "type: task\nname: hostvol\nimage: {IMAGE}\nvolumes:\n  - {}:/out\n  - instance_path: {}\n    path: /in\ncommands:\n  - cat /in/input.txt\n  - printf 'bytes\\000\\001\\377 end' > /out/result.bin\n",
            out_dir.display(),
            in_dir.display()
        ),
    );
    let (code, out) = apply(&c.client, &file, false).await?;
    assert_eq!(code, 0, "output was: {out}");
    assert!(out.contains("from the host\n"), "the job read the host's file: {out}");
    let written = std::fs::read(out_dir.join("result.bin"))?;
    assert_eq!(written, b"bytes\x00\x01\xff end", "the host has the job's bytes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_optional_host_path_is_skipped_and_a_required_one_fails_the_job_naming_it() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let missing = c.dir.path().join("no-such-dir");
    let optional = write_config(
        c.dir.path(),
        "optional",
        &format!(
            "type: task\nname: optional\nimage: {IMAGE}\nvolumes:\n  - instance_path: {}\n    path: /cache\n    optional: true\ncommands:\n  - echo ran without it\n  - test ! -e /cache/anything\n",
            missing.display()
        ),
    );
    let (code, out) = apply(&c.client, &optional, false).await?;
    assert_eq!(code, 0, "output was: {out}");
    assert!(out.contains("ran without it"), "{out}");
    let r = run(&c.client, "optional").await?;
    assert_eq!(r.state, JobState::Done);
    let said = r.jobs[0].status_message.clone().unwrap_or_default();
    assert!(said.contains("not mounted") && said.contains(&missing.display().to_string()), "status: {said:?}");
    assert!(!missing.exists(), "nothing was made at the host path");

    let required = write_config(
        c.dir.path(),
        "required",
        &format!(
            "type: task\nname: required\nimage: {IMAGE}\nvolumes:\n  - {}:/data\ncommands:\n  - echo never\n",
            missing.display()
        ),
    );
    let (code, out) = apply(&c.client, &required, false).await?;
    assert_ne!(code, 0, "output was: {out}");
    assert!(!out.contains("never"), "{out}");
    let r = wait_state(&c.client, "required", |r| r.state.is_finished(), Duration::from_secs(30)).await?;
    assert_eq!(r.state, JobState::Failed);
    assert_eq!(r.jobs[0].termination_reason, Some(TerminationReason::ContainerCreationFailed));
    let said = r.jobs[0].status_message.clone().unwrap_or_default();
    assert!(said.contains(&format!("the host path {} does not exist", missing.display())), "status: {said:?}");
    assert!(said.contains("optional: true"), "it says what to do: {said:?}");
    let mut ps = Vec::new();
    corral_cli::commands::ps(&c.client, true, false, None, &mut ps).await?;
    let ps = String::from_utf8(ps)?;
    assert!(ps.contains(&missing.display().to_string()), "`corral ps -a` names the path: {ps}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_volume_lives_on_its_node_outlives_runs_and_is_deleted_once_unused() -> anyhow::Result<()> {
    ensure_image();
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let client = coord.client();
    let name = unique("data");
    let docker_name = format!("corral-vol-main-{name}");
    // Dropped after the agents (whose guards remove the containers that use it).
    let _cleanup = DockerVolumes(vec![docker_name.clone()]);
    let a = Agent::start(&coord, &dir.path().join("a"), AgentOptions { name: "node-a".into(), ..Default::default() });
    let b = Agent::start(&coord, &dir.path().join("b"), AgentOptions { name: "node-b".into(), ..Default::default() });
    nodes_ready(&client, 2).await?;

    // Registered with `corral apply`: made where a run first mounts it.
    let vol = write_config(dir.path(), "vol", &format!("type: volume\nname: {name}\n"));
    let (code, out) = apply(&client, &vol, true).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("made on the node where a run first mounts it"), "{out}");
    let listed = volumes(&client).await?;
    assert_eq!((listed.len(), listed[0].status), (1, api::VolumeStatus::Pending), "{listed:?}");
    assert!(!docker_volume_exists(&docker_name));

    // The first run goes to node-b (node-a takes nothing for now): the volume is made there.
    let _: () = client.post("/api/nodes/node-a/cordon", &()).await?;
    let payload = "checkpoint \u{1F4BE} 0123456789";
    let write = write_config(
        dir.path(),
        "writer",
        &format!(
            "type: task\nname: writer\nimage: {IMAGE}\nvolumes: [\"{name}:/data\"]\ncommands:\n  - printf '{payload}' > /data/ckpt\n"
        ),
    );
    let (code, out) = apply(&client, &write, false).await?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(run(&client, "writer").await?.jobs[0].node_name.as_deref(), Some("node-b"));
    assert!(docker_volume_exists(&docker_name), "the Docker volume exists after the run");
    let _: () = client.post("/api/nodes/node-a/uncordon", &()).await?;

    // Later runs read what the first wrote, on node-b, though node-a is free again.
    for i in 0..3 {
        let reader = format!("reader-{i}");
        let read = write_config(
            dir.path(),
            &reader,
            &format!(
                "type: task\nname: {reader}\nimage: {IMAGE}\nvolumes:\n  - name: {name}\n    path: /mnt/v\ncommands:\n  - cat /mnt/v/ckpt\n"
            ),
        );
        let (code, out) = apply(&client, &read, false).await?;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(payload), "run {i} read the bytes: {out:?}");
        assert_eq!(run(&client, &reader).await?.jobs[0].node_name.as_deref(), Some("node-b"), "run {i}");
    }

    // The list: node, the size its node measured, status.
    let size = payload.len() as u64;
    wait_for("the volume's size", Duration::from_secs(20), || async {
        let v = volumes(&client).await?;
        Ok((v[0].size == Some(size)).then_some(()))
    })
    .await?;
    let table = volume_cmd(&client, corral_cli::VolumeCommand::List { json: false }).await?;
    let row = table.lines().find(|l| l.contains(&name)).unwrap_or_default().to_owned();
    for word in ["main", "docker", "node-b", &format!("{:.1}KB", size as f64 / 1024.0), "active"] {
        assert!(row.contains(word), "`corral volume list` row lacks {word:?}: {table}");
    }

    // In use: refused, and the list says by which run.
    let hold = write_config(
        dir.path(),
        "holder",
        &format!("type: task\nname: holder\nimage: {IMAGE}\nvolumes: [\"{name}:/data\"]\ncommands:\n  - sleep 300\n"),
    );
    apply(&client, &hold, true).await?;
    wait_state(&client, "holder", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    let refused = volume_cmd(&client, corral_cli::VolumeCommand::Delete { name: name.clone(), yes: true }).await;
    let why = format!("{:#}", refused.expect_err("in use"));
    assert!(why.contains("in use by run(s) holder"), "{why}");
    let table = volume_cmd(&client, corral_cli::VolumeCommand::List { json: false }).await?;
    assert!(table.lines().any(|l| l.contains(&name) && l.contains("holder")), "{table}");
    assert!(docker_volume_exists(&docker_name));

    // Unused: its node removes the Docker volume, and it leaves the list.
    let mut stop = Vec::new();
    corral_cli::commands::stop(&client, "holder", true, true, &mut stop).await?;
    wait_state(&client, "holder", |r| r.state.is_finished(), Duration::from_secs(30)).await?;
    let said = volume_cmd(&client, corral_cli::VolumeCommand::Delete { name: name.clone(), yes: true }).await?;
    assert!(said.contains(&format!("volume {name} deleted")), "{said}");
    assert!(!docker_volume_exists(&docker_name), "the Docker volume is gone");
    assert!(volumes(&client).await?.is_empty());
    drop((a, b));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_deleted_while_its_node_is_away_goes_when_the_node_returns() -> anyhow::Result<()> {
    let OneNode { dir, coord, mut agent, client } = OneNode::start().await?;
    let name = unique("away");
    let docker_name = format!("corral-vol-main-{name}");
    let _cleanup = DockerVolumes(vec![docker_name.clone()]);
    let write = write_config(
        dir.path(),
        "first",
        &format!(
            "type: task\nname: first\nimage: {IMAGE}\nvolumes: [\"{name}:/data\"]\ncommands:\n  - echo old > /data/f\n"
        ),
    );
    let (code, out) = apply(&client, &write, false).await?;
    assert_eq!(code, 0, "{out}");
    agent.stop().await?;
    wait_for("the node to be offline", Duration::from_secs(10), || async {
        let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
        Ok(nodes.iter().all(|n| n.status == api::NodeStatus::Offline).then_some(()))
    })
    .await?;

    // Asked while the node is away: marked, and runs that mount the name wait for it.
    let left: Option<api::Volume> = client.delete(&client.project_api(&["volumes", &name])?).await?;
    assert_eq!(left.map(|v| v.status), Some(api::VolumeStatus::Deleting));
    assert!(docker_volume_exists(&docker_name), "nobody could remove it yet");
    let read = write_config(
        dir.path(),
        "second",
        &format!(
            "type: task\nname: second\nimage: {IMAGE}\nvolumes: [\"{name}:/data\"]\ncommands:\n  - test ! -e /data/f\n  - echo fresh\n"
        ),
    );
    apply(&client, &read, true).await?;
    let waiting = wait_state(&client, "second", |r| r.state == JobState::Pending, Duration::from_secs(10)).await?;
    let why = waiting.jobs[0].status_message.clone().unwrap_or_default();
    assert!(why.contains("being deleted"), "{why}");

    // Back: its agent removes the Docker volume, the volume leaves the list, and the waiting run
    // gets a new, empty one.
    let _back =
        Agent::start(&coord, &agent.state.clone(), AgentOptions { name: "node-a".into(), ..Default::default() });
    let done = wait_state(&client, "second", |r| r.state.is_finished(), Duration::from_secs(60)).await?;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    assert!(logs(&client, "second").await?.contains("fresh"));
    let listed = volumes(&client).await?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].status, api::VolumeStatus::Active);
    Ok(())
}
