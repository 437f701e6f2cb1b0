//! The install command on a fresh host: a container of the busybox image plus curl (no Rust, no
//! Corral), on the host network so it reaches the coordinator on loopback, with the machine's Docker
//! socket as its Docker. The install script comes from the coordinator over HTTPS, checks the CA
//! against the token, downloads the agent, joins, and the node runs a task.

use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};

use corral_proto::api;

use crate::harness::{Coordinator, apply, ensure_image, nodes_ready, repo_root, wait_for, write_config};

const AGENT: &str = env!("CARGO_BIN_EXE_corral-test-agent");
const CLI: &str = env!("CARGO_BIN_EXE_corral-test-cli");
const COORDINATOR: &str = env!("CARGO_BIN_EXE_corral-test-coordinator");
const HOST_IMAGE: &str = "corral-test/host:latest";

/// Builds the fresh-host image once per test process.
fn ensure_host_image() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        ensure_image();
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/build-host-image.sh"))
            .arg(AGENT)
            .arg(COORDINATOR)
            .output()
            .map_err(|e| format!("cannot run scripts/build-host-image.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("scripts/build-host-image.sh failed:\n{}", String::from_utf8_lossy(&out.stderr)))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// Fresh-host containers, and the job containers of the nodes they became: removed on drop.
#[derive(Default)]
struct Hosts {
    names: Vec<String>,
    nodes: Vec<String>,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let mut ids = self.names.clone();
        for node in &self.nodes {
            if let Ok(out) =
                Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=corral.node={node}")]).output()
            {
                ids.extend(String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned));
            }
        }
        if !ids.is_empty() {
            let _ = Command::new("docker").arg("rm").arg("-f").args(&ids).output();
        }
        for node in &self.nodes {
            crate::harness::remove_node_networks(node);
        }
    }
}

impl Hosts {
    fn name(&mut self, what: &str) -> String {
        let name = format!("corral-test-host-{}-{what}", std::process::id());
        let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        self.names.push(name.clone());
        name
    }

    /// `curl URL/install.sh | sh -s -- ARGS` on a new fresh host; returns its output when it ends.
    fn install_once(&mut self, what: &str, url: &str, args: &str, docker: bool) -> anyhow::Result<Output> {
        let name = self.name(what);
        let mut cmd = Command::new("docker");
        cmd.args(["run", "--name", &name, "--network", "host"]);
        if docker {
            cmd.args(["-v", "/var/run/docker.sock:/var/run/docker.sock"]);
        }
        let script = format!(
            "curl -fsSLk {url}/install.sh | sh -s -- {args}; echo \"install-exit=$?\"; ls /usr/local/bin /etc/corral 2>&1"
        );
        Ok(cmd.args([HOST_IMAGE, "sh", "-c", &script]).output()?)
    }
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output().context("cannot run docker")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("docker {args:?} failed: {text}");
    }
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_command_joins_a_fresh_host_that_then_runs_a_task_and_uninstalls() -> anyhow::Result<()> {
    ensure_host_image();
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start_https(&dir.path().join("coord"), Some(AGENT.into())).await?;
    let client = coord.client();
    let mut hosts = Hosts::default();
    let host = hosts.name("a");
    let node_name = format!("fresh-{}", std::process::id());
    // The host keeps running after its agent stops (`sleep`), as a machine would.
    let script = format!(
        "curl -fsSLk {}/install.sh | sh -s -- --token {} --name {node_name} --foreground --min-disk-gib 1; exec sleep 600",
        coord.url(),
        coord.join_token
    );
    docker(&[
        "run",
        "-d",
        "--init",
        "--name",
        &host,
        "--network",
        "host",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        HOST_IMAGE,
        "sh",
        "-c",
        &script,
    ])?;

    let nodes = nodes_ready(&client, 1).await.with_context(|| docker(&["logs", &host]).unwrap_or_default())?;
    let node = nodes.iter().find(|n| n.name == node_name).context("the fresh host joined under its name")?;
    hosts.nodes.push(node.id.to_string());
    // The script prints the node as the coordinator sees it.
    let printed = wait_for("the install script to print the node", Duration::from_secs(30), || async {
        let logs = docker(&["logs", &host])?;
        Ok(logs.contains("docker:").then_some(logs))
    })
    .await?;
    assert!(printed.contains("CA matches the token, token accepted"), "{printed}");
    assert!(printed.contains(&format!("installed corral-agent {}", env!("CARGO_PKG_VERSION"))), "{printed}");
    assert!(printed.contains(&format!("node {node_name} ({})", node.id)), "{printed}");
    assert!(printed.contains("gpus:   none"), "{printed}");

    // The node runs a task (the CLI talks HTTPS to the coordinator, pinning its CA).
    let file = write_config(
        dir.path(),
        "hello",
        &format!(
            "type: task\nname: fresh-hello\nimage: {}\ncommands:\n  - echo hello from a fresh host\n",
            crate::harness::IMAGE
        ),
    );
    let (code, out) = apply(&client, &file, false).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("hello from a fresh host"), "{out}");

    // The uninstall script removes the agent, its files and its containers (a running one here).
    let file = write_config(
        dir.path(),
        "sleep",
        &format!("type: task\nname: fresh-sleep\nimage: {}\ncommands:\n  - sleep 600\n", crate::harness::IMAGE),
    );
    let (code, out) = apply(&client, &file, true).await?;
    assert_eq!(code, 0, "{out}");
    crate::harness::wait_state(
        &client,
        "fresh-sleep",
        |r| r.state == corral_proto::job::JobState::Running,
        Duration::from_secs(30),
    )
    .await?;
    // Running the install command again upgrades in place: same node, its task untouched (here
    // without --foreground: no systemd in the container, so the agent runs detached).
    let again = docker(&[
        "exec",
        &host,
        "sh",
        "-c",
        &format!(
            "curl -fsSLk {}/install.sh | sh -s -- --token {} --name {node_name} --min-disk-gib 1 2>&1",
            coord.url(),
            coord.join_token
        ),
    ])?;
    assert!(again.contains("upgraded /usr/local/bin/corral-agent to corral-agent"), "{again}");
    assert!(again.contains(&format!("node {node_name} ({})", node.id)), "{again}");
    let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let run = crate::harness::run(&client, "fresh-sleep").await?;
    assert_eq!(run.state, corral_proto::job::JobState::Running);

    let job_containers = docker(&["ps", "-aq", "--filter", &format!("label=corral.node={}", node.id)])?;
    assert!(!job_containers.trim().is_empty(), "the task's container is there before uninstalling");
    let out = docker(&["exec", &host, "/usr/local/bin/corral-agent-uninstall"])?;
    assert!(out.contains("removed the containers Corral ran (1)"), "{out}");
    assert!(out.contains("removed /var/lib/corral-agent"), "{out}");
    let left = docker(&[
        "exec",
        &host,
        "sh",
        "-c",
        "ls /usr/local/bin /etc; for d in /proc/[0-9]*; do [ \"$(cat $d/comm)\" = corral-agent ] && grep State $d/status; done; echo listed",
    ])?;
    assert!(!left.contains("corral-agent\n") && !left.contains("corral\n"), "{left}");
    assert!(left.contains("listed") && !left.contains("State"), "no agent process left: {left}");
    assert_eq!(docker(&["ps", "-aq", "--filter", &format!("label=corral.node={}", node.id)])?.trim(), "");
    wait_for("the node to go offline", Duration::from_secs(20), || async {
        let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
        Ok(nodes.iter().any(|n| n.id == node.id && n.status == api::NodeStatus::Offline).then_some(()))
    })
    .await?;
    coord.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_ca_hash_or_a_revoked_token_installs_nothing() -> anyhow::Result<()> {
    ensure_host_image();
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start_https(&dir.path().join("coord"), Some(AGENT.into())).await?;
    let mut hosts = Hosts::default();

    // One hex digit of the CA hash changed: the script stops before downloading anything.
    let good = coord.join_token.to_string();
    let flipped = if coord.join_token.ca_hash.starts_with('0') { "1" } else { "0" };
    let tampered = good.replacen(&format!(".{}", &coord.join_token.ca_hash[..1]), &format!(".{flipped}"), 1);
    assert_ne!(tampered, good);
    let out = hosts.install_once("tampered", &coord.url(), &format!("--token {tampered} --foreground"), true)?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("it is not the coordinator the token was made for"), "{text}");
    assert!(text.contains("install-exit=1"), "{text}");
    assert!(!text.contains("corral-agent"), "nothing installed: {text}");
    assert!(text.contains("/etc/corral: No such file"), "{text}");

    // A revoked token: refused by the coordinator, by name.
    let client = coord.client();
    let created: api::JoinTokenInfo = client.post("/api/tokens", &api::CreateJoinToken::default()).await?;
    let token = created.token.context("a new token comes with its secret")?;
    let _: serde_json::Value = client.post(&format!("/api/tokens/{}/revoke", created.id), &()).await?;
    let out = hosts.install_once("revoked", &coord.url(), &format!("--token {token} --foreground"), true)?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("the coordinator refuses this token: 403 /api/join/check: this join token was revoked"),
        "{text}"
    );
    assert!(text.contains("install-exit=1") && !text.contains("corral-agent"), "{text}");

    // No Docker on the host: the preflight says so.
    let out = hosts.install_once("nodocker", &coord.url(), &format!("--token {good} --foreground"), false)?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Docker is not running here"), "{text}");
    assert!(text.contains("install-exit=1") && !text.contains("corral-agent"), "{text}");
    coord.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_pins_the_coordinators_ca_by_its_hash() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start_https(&dir.path().join("coord"), None).await?;
    let config = dir.path().join("cli.json");
    let cli = |args: &[&str]| {
        Command::new(CLI)
            .args(args)
            .env("CORRAL_CONFIG", &config)
            .env_remove("CORRAL_URL")
            .env_remove("CORRAL_TOKEN")
            .output()
    };
    let text = |o: &Output| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));

    // A wrong hash: refused, nothing pinned.
    let wrong = "ab".repeat(32);
    let out = cli(&["config", "--url", &coord.url(), "--token", &coord.admin_token, "--ca-hash", &wrong])?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("it is not the coordinator you meant"), "{}", text(&out));
    // Without the CA, the system's roots do not trust the coordinator.
    let out = cli(&["config", "--url", &coord.url(), "--token", &coord.admin_token])?;
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&["node", "list"])?;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cannot reach the coordinator"), "{}", text(&out));

    // The right hash: pinned, and every command works over HTTPS.
    let out = cli(&["config", "--ca-hash", &coord.join_token.ca_hash])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("pinned the coordinator's CA {}", coord.join_token.ca_hash)),
        "{}",
        text(&out)
    );
    let out = cli(&["node", "list", "--json"])?;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(serde_json::from_slice::<Vec<api::Node>>(&out.stdout)?.len(), 0);
    let out = cli(&["config"])?;
    assert!(text(&out).contains(&format!("ca: {} (pinned)", coord.join_token.ca_hash)), "{}", text(&out));

    // Plain HTTP to the HTTPS port gets nothing.
    let plain = corral_cli::client::Client::new(&format!("http://{}", coord.http), &coord.admin_token, "main");
    assert!(plain.get::<Vec<api::Node>>("/api/nodes").await.is_err());
    coord.stop().await;
    Ok(())
}

/// A Docker network with no way out, removed on drop (after the containers on it).
struct Airgap {
    network: String,
    hosts: Hosts,
}

impl Drop for Airgap {
    fn drop(&mut self) {
        // The containers first: a network with endpoints cannot be removed.
        std::mem::take(&mut self.hosts);
        let _ = Command::new("docker").args(["network", "rm", &self.network]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_installs_coordinator_and_agent_with_no_network_beyond_their_own() -> anyhow::Result<()> {
    ensure_host_image();
    let dir = tempfile::tempdir()?;
    // A release directory: the three binaries under their release names.
    let bin = dir.path().join("release");
    std::fs::create_dir_all(&bin)?;
    for (from, to) in [(AGENT, "corral-agent"), (COORDINATOR, "corral-coordinator"), (CLI, "corral")] {
        if std::fs::hard_link(from, bin.join(to)).is_err() {
            std::fs::copy(from, bin.join(to))?;
        }
    }
    let bundle = dir.path().join("corral.tar.gz");
    let out = Command::new(CLI)
        .args(["bundle", "create", "-o"])
        .arg(&bundle)
        .arg("--bin-dir")
        .arg(&bin)
        .args(["--image", crate::harness::IMAGE])
        .output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("agent, coordinator and CLI for x86_64, 1 image(s)"), "{text}");

    let pid = std::process::id();
    let mut gap = Airgap { network: format!("corral-test-airgap-{pid}"), hosts: Hosts::default() };
    let _ = Command::new("docker").args(["network", "rm", &gap.network]).output();
    docker(&["network", "create", "--internal", &gap.network])?;
    let mount = format!("{}:/corral.tar.gz:ro", bundle.display());
    let root = format!("/opt/corral-{}", env!("CARGO_PKG_VERSION"));

    // The coordinator, from the bundle, on the isolated network.
    let coord = gap.hosts.name("airgap-coord");
    let start = format!(
        "mkdir -p /opt && tar -xzf /corral.tar.gz -C /opt && exec {root}/bin/x86_64/corral-coordinator \
         --data-dir /var/lib/corral --http-listen 0.0.0.0:7070 --quic-listen 0.0.0.0:7071"
    );
    docker(&["run", "-d", "--name", &coord, "--network", &gap.network, "-v", &mount, HOST_IMAGE, "sh", "-c", &start])?;
    let ip = docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", &coord])?;
    let ip = ip.trim().to_owned();
    let token = wait_for("the coordinator's join token", Duration::from_secs(60), || async {
        Ok(docker(&["exec", &coord, "cat", "/var/lib/corral/join-token"]).ok().map(|t| t.trim().to_owned()))
    })
    .await
    .with_context(|| docker(&["logs", &coord]).unwrap_or_default())?;

    // A host on the same network: the install script and the agent come from the bundle.
    let host = gap.hosts.name("airgap-host");
    let install = format!(
        "tar -xzf /corral.tar.gz -C /tmp {root_rel}/install.sh && sh /tmp/{root_rel}/install.sh --bundle /corral.tar.gz \
         --url https://{ip}:7070 --token {token} --name airgapped --foreground --min-disk-gib 1; exec sleep 600",
        root_rel = root.trim_start_matches("/opt/"),
    );
    docker(&[
        "run",
        "-d",
        "--name",
        &host,
        "--network",
        &gap.network,
        "-v",
        &mount,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        HOST_IMAGE,
        "sh",
        "-c",
        &install,
    ])?;

    // The bundled CLI, inside the isolated network, sees the node and runs a task on it.
    let cli = |cmd: &str| {
        docker(&[
            "exec",
            &coord,
            "sh",
            "-c",
            &format!(
                "export CORRAL_URL=https://127.0.0.1:7070 CORRAL_TOKEN=$(cat /var/lib/corral/admin-token) \
                 CORRAL_CA_CERT=/var/lib/corral/ca.pem CORRAL_CONFIG=/tmp/cli.json; {root}/bin/x86_64/corral {cmd}"
            ),
        ])
    };
    let nodes = wait_for("the airgapped node", Duration::from_secs(60), || async {
        let nodes: Vec<api::Node> = serde_json::from_str(&cli("node list --json")?)?;
        Ok(nodes.into_iter().find(|n| n.name == "airgapped" && n.status == api::NodeStatus::Ready))
    })
    .await
    .with_context(|| docker(&["logs", &host]).unwrap_or_default())?;
    gap.hosts.nodes.push(nodes.id.to_string());
    let logs = docker(&["logs", &host])?;
    assert!(logs.contains("the agent comes from /corral.tar.gz (nothing downloaded)"), "{logs}");
    assert!(logs.contains("CA matches the token"), "{logs}");

    // As the bundle says: shared, as a site's base image is, for every project's runs.
    let pushed = cli(&format!("image push --shared --file {root}/images/corral-test_busybox_latest.tar"))?;
    assert!(pushed.contains("pushed corral-test/busybox:latest for every project"), "{pushed}");
    let run = cli(&format!(
        "apply -y -f /dev/stdin <<'EOF'\ntype: task\nname: airgapped\nimage: {}\ncommands:\n  - echo hello from the airgap\nEOF",
        crate::harness::IMAGE
    ))?;
    assert!(run.contains("hello from the airgap"), "{run}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_config_fleet_enrolls_its_hosts_over_ssh_and_says_why_one_could_not() -> anyhow::Result<()> {
    ensure_host_image();
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start_config(corral_coordinator::Config {
        data_dir: dir.path().join("coord"),
        http_listen: "0.0.0.0:0".parse()?,
        quic_listen: "0.0.0.0:0".parse()?,
        heartbeat_secs: 1,
        http_tls: corral_coordinator::HttpTls::Own(Vec::new()),
        agent_binary: Some(AGENT.into()),
        ..Default::default()
    })
    .await?;

    // The user's key, and three hosts running sshd that accept it (root on two, `ubuntu` without
    // sudo on the third).
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh"))?;
    let key = home.join(".ssh/id_ed25519");
    let made = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).output()?;
    anyhow::ensure!(made.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&made.stderr));
    let public = format!("{}.pub", key.display());
    let mut hosts = Hosts::default();
    let mut ips = Vec::new();
    for what in ["ssh-a", "ssh-b", "ssh-c"] {
        let name = hosts.name(what);
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            HOST_IMAGE,
            "/usr/sbin/sshd",
            "-D",
            "-e",
        ])?;
        docker(&["cp", &public, &format!("{name}:/root/.ssh/authorized_keys")])?;
        docker(&["cp", &public, &format!("{name}:/home/ubuntu/.ssh/authorized_keys")])?;
        ips.push(docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &name])?.trim().to_owned());
    }
    // The hosts sit on Docker's default bridge; they reach the coordinator at the bridge's gateway.
    let gateway = docker(&["inspect", "-f", "{{.NetworkSettings.Gateway}}", &hosts.names[0]])?.trim().to_owned();
    let url = format!("https://{gateway}:{}", coord.http.port());
    // ssh reads known_hosts from the user's real home whatever $HOME says: a wrapper keeps this
    // test's host keys to itself.
    let wrapper = dir.path().join("ssh");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec ssh -o UserKnownHostsFile={} \"$@\"\n", dir.path().join("known_hosts").display()),
    )?;
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let cli = |file: &std::path::Path| {
        Command::new(CLI)
            .args(["apply", "-y", "-f"])
            .arg(file)
            .env("HOME", &home)
            .env("CORRAL_SSH", &wrapper)
            .env("CORRAL_URL", &url)
            .env("CORRAL_TOKEN", &coord.admin_token)
            .env("CORRAL_CA_CERT", coord.data.join("ca.pem"))
            .env("CORRAL_CONFIG", dir.path().join("cli.json"))
            .output()
    };

    let fleet = crate::harness::write_config(
        dir.path(),
        "onprem",
        &format!(
            "type: fleet\nname: onprem\nssh_config:\n  user: root\n  identity_file: {}\n  hosts:\n    - {}\n    - hostname: {}\n      port: 22\n",
            key.display(),
            ips[0],
            ips[1]
        ),
    );
    let out = cli(&fleet)?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("enrolling 2 host(s) over SSH into fleet onprem: {}, {}", ips[0], ips[1])),
        "{text}"
    );
    // Node names are host names made DNS-safe: 172.17.0.2 joins as 172-17-0-2.
    for ip in &ips[..2] {
        assert!(text.contains(&format!("✓ {ip}")), "{text}");
        assert!(
            text.contains(&format!("node {} (", ip.replace('.', "-"))),
            "the node as the coordinator sees it: {text}"
        );
    }
    let client = coord.client();
    let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
    for ip in &ips[..2] {
        let name = ip.replace('.', "-");
        let n = nodes.iter().find(|n| n.name == name).with_context(|| format!("node {name} in {nodes:?}"))?;
        assert_eq!(n.fleet.as_deref(), Some("onprem"));
        assert_eq!(n.status, api::NodeStatus::Ready);
        hosts.nodes.push(n.id.to_string());
    }

    // A user that is not root and may not sudo, and a host with no SSH server: each said by name;
    // nothing else fails.
    let fleet = crate::harness::write_config(
        dir.path(),
        "more",
        &format!(
            "type: fleet\nname: more\nssh_config:\n  identity_file: {}\n  hosts:\n    - hostname: {}\n      user: ubuntu\n    - hostname: 127.0.0.1\n      port: 1\n",
            key.display(),
            ips[2]
        ),
    );
    let out = cli(&fleet)?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("✗ {}: corral: user ubuntu is not root and cannot sudo without a password", ips[2])),
        "{text}"
    );
    assert!(text.contains("✗ 127.0.0.1: cannot connect over SSH"), "{text}");
    assert!(text.contains("2 host(s) not enrolled"), "{text}");

    // A host short of the fleet's resources joins, and the fleet refuses it: `apply` says why.
    let fleet = crate::harness::write_config(
        dir.path(),
        "big",
        &format!(
            "type: fleet\nname: big\nresources:\n  gpu: A100:8\nssh_config:\n  user: root\n  identity_file: {}\n  hosts:\n    - {}\n",
            key.display(),
            ips[2]
        ),
    );
    let out = cli(&fleet)?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "✗ {}: error: the fleet refuses this host: gpu: the fleet wants A100:8, the host has no GPUs",
            ips[2]
        )),
        "{text}"
    );
    let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
    let refused = nodes.iter().find(|n| n.name == ips[2].replace('.', "-")).context("the refused node")?;
    hosts.nodes.push(refused.id.to_string());
    assert_eq!(refused.refused.as_deref(), Some("gpu: the fleet wants A100:8, the host has no GPUs"));
    coord.stop().await;
    Ok(())
}
