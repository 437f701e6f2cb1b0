//! Agent self-upgrade: the coordinator serves a new binary, the agent (a real process running from
//! a copy of its binary) fetches it over its link, checks it, swaps it in and re-executes itself,
//! while its task's container keeps running; a binary that fails its check changes nothing.

use std::process::{Command, Stdio};
use std::time::Duration;

use corral_proto::api;
use corral_proto::job::JobState;

use crate::harness::{Coordinator, IMAGE, apply, ensure_image, wait_for, wait_state, write_config};

const AGENT: &str = env!("CARGO_BIN_EXE_corral-test-agent");

fn sha12(path: &std::path::Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path)?;
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    Ok(d.as_ref().iter().take(6).map(|b| format!("{b:02x}")).collect())
}

/// Puts `bytes` at `path` the way an operator drops in a new binary: written aside, renamed over.
fn replace(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

async fn node_version(client: &corral_cli::client::Client) -> anyhow::Result<Option<String>> {
    let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
    Ok(nodes.into_iter().find(|n| n.status == api::NodeStatus::Ready).and_then(|n| n.agent_version))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_upgrades_itself_without_stopping_its_task_and_refuses_a_broken_binary() -> anyhow::Result<()> {
    ensure_image();
    let dir = tempfile::tempdir()?;
    let (bin, served) = (dir.path().join("bin"), dir.path().join("served"));
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&served)?;
    let original = std::fs::read(AGENT)?;
    let (exe, served_exe) = (bin.join("corral-agent"), served.join("corral-agent"));
    replace(&exe, &original)?;
    replace(&served_exe, &original)?;

    let coord = Coordinator::start_config(corral_coordinator::Config {
        data_dir: dir.path().join("coord"),
        http_listen: "127.0.0.1:0".parse()?,
        quic_listen: "127.0.0.1:0".parse()?,
        heartbeat_secs: 1,
        http_tls: corral_coordinator::HttpTls::Off,
        agent_binary: Some(served_exe.clone()),
        upgrade_timeout: Duration::from_secs(8),
        ..Default::default()
    })
    .await?;
    let client = coord.client();
    let state = dir.path().join("agent");
    let mut agent = corral_tests::procs::Proc(
        Command::new(&exe)
            .args([
                "--coordinator",
                &coord.quic.to_string(),
                "--token",
                &coord.join_token.to_string(),
                "--name",
                "upgrading",
            ])
            .arg("--state-dir")
            .arg(&state)
            .arg("--nvml-library")
            .arg(state.join("no-libnvidia-ml.so"))
            .env("CORRAL_LOG", "info")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let _containers = crate::harness::ContainerGuard::for_state(&state);
    let first = sha12(&exe)?;
    let v =
        wait_for("the agent to report its binary", Duration::from_secs(30), || async { node_version(&client).await })
            .await?;
    assert_eq!(v, format!("{}+{first}", env!("CARGO_PKG_VERSION")), "the same binary as served: no upgrade");

    let file = write_config(
        dir.path(),
        "long",
        &format!("type: task\nname: long\nimage: {IMAGE}\ncommands:\n  - sleep 600\n"),
    );
    assert_eq!(apply(&client, &file, true).await?.0, 0);
    let run = wait_state(&client, "long", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    let container = format!("corral-{}", run.jobs[0].id);
    let started = |c: &str| -> anyhow::Result<String> {
        let out =
            Command::new("docker").args(["inspect", "-f", "{{.State.StartedAt}} {{.State.Running}}", c]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let before = started(&container)?;
    assert!(before.ends_with("true"), "{before}");

    // A new binary at the served path: the agent upgrades to it, in place (same process).
    let mut upgraded = original.clone();
    upgraded.extend_from_slice(b"\ncorral upgrade test: the same program, another digest\n");
    replace(&served_exe, &upgraded)?;
    let second = sha12(&served_exe)?;
    let want = format!("{}+{second}", env!("CARGO_PKG_VERSION"));
    wait_for("the agent to come back on the new binary", Duration::from_secs(60), || async {
        Ok(node_version(&client).await?.filter(|v| *v == want))
    })
    .await?;
    assert!(agent.0.try_wait()?.is_none(), "the agent process re-executed itself, it did not exit");
    assert_eq!(sha12(&exe)?, second, "the new binary is in place");
    assert_eq!(sha12(&bin.join("corral-agent.prev"))?, first, "the previous one is kept");
    assert!(!state.join("upgrade.json").exists(), "the new binary confirmed the upgrade");
    assert_eq!(started(&container)?, before, "the task's container was not restarted");
    let run = crate::harness::run(&client, "long").await?;
    assert_eq!(run.state, JobState::Running);

    // A binary that runs but cannot join (it fails its --check): nothing changes.
    replace(
        &served_exe,
        b"#!/bin/sh\n[ \"$1\" = --version ] && { echo corral-agent 0.1.0; exit 0; }\necho broken >&2\nexit 1\n",
    )?;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(node_version(&client).await?.as_deref(), Some(want.as_str()), "still on the good binary");
    assert_eq!(sha12(&exe)?, second);
    assert!(!bin.join("corral-agent.new").exists(), "the rejected download is removed");
    assert!(agent.0.try_wait()?.is_none());
    assert_eq!(started(&container)?, before);
    drop(agent);
    Ok(())
}
