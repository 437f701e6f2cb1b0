//! Corral's release binaries as real processes, for benchmarks: the coordinator and agents, their
//! memory, and cleanup of what they leave behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use corral_cli::client::Client;
use corral_proto::api;

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A release binary (`scripts/bench.sh` builds them), or from `$CORRAL_BIN_DIR`.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("CORRAL_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    dir.join(name)
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("bad VmRSS")?.parse()?)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `f` every 5 ms until it says yes, or fails after `limit`.
pub async fn wait_until<F: AsyncFnMut() -> bool>(limit: Duration, mut f: F) -> anyhow::Result<()> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("timed out after {limit:?}")
}

/// `corral-coordinator` on loopback ports of its own, with a client for its API.
pub struct CoordinatorProc {
    pub proc: Proc,
    pub quic: String,
    pub join_token: String,
    pub client: Client,
}

impl CoordinatorProc {
    pub async fn start(data: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let (http, quic) = (free_port()?, free_port()?);
        let proc = Proc(
            Command::new(bin("corral-coordinator"))
                .arg("--data-dir")
                .arg(data)
                .args(["--http-listen", &format!("127.0.0.1:{http}"), "--quic-listen", &format!("127.0.0.1:{quic}")])
                // benchmarks compare with earlier runs over plain HTTP
                .arg("--no-tls")
                .args(extra)
                .env("CORRAL_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .context(
                    "cannot start corral-coordinator: run scripts/bench.sh, it builds the release binaries first",
                )?,
        );
        let (token_file, admin_file) = (data.join("join-token"), data.join("admin-token"));
        wait_until(Duration::from_secs(10), async || token_file.exists() && admin_file.exists()).await?;
        let admin = std::fs::read_to_string(&admin_file)?;
        let client = Client::new(&format!("http://127.0.0.1:{http}"), admin.trim(), "main");
        wait_until(Duration::from_secs(10), async || client.get::<Vec<api::Node>>("/api/nodes").await.is_ok()).await?;
        Ok(Self {
            proc,
            quic: format!("127.0.0.1:{quic}"),
            join_token: std::fs::read_to_string(&token_file)?.trim().to_owned(),
            client,
        })
    }

    /// Starts `corral-agent` enrolled with this coordinator.
    pub fn agent(&self, state: &Path, name: &str) -> anyhow::Result<Proc> {
        Ok(Proc(
            Command::new(bin("corral-agent"))
                .args(["--coordinator", &self.quic, "--token", &self.join_token, "--name", name, "--state-dir"])
                .arg(state)
                .arg("--nvml-library")
                .arg(state.join("no-libnvidia-ml.so"))
                .env("CORRAL_LOG", "warn")
                .spawn()?,
        ))
    }

    /// Waits until `n` nodes are ready with their inventory.
    pub async fn nodes_ready(&self, n: usize, limit: Duration) -> anyhow::Result<()> {
        wait_until(limit, async || {
            self.client.get::<Vec<api::Node>>("/api/nodes").await.is_ok_and(|nodes| {
                nodes.iter().filter(|x| x.status == api::NodeStatus::Ready && x.inventory.is_some()).count() >= n
            })
        })
        .await
    }
}

/// Removes the containers of the node enrolled from `state` (benchmarks clean up after themselves).
pub fn remove_node_containers(state: &Path) {
    let Ok(text) = std::fs::read_to_string(state.join("node.json")) else { return };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return };
    if let Some(id) = v["node_id"].as_str() {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "docker ps -aq --filter label=corral.node={id} | xargs -r docker rm -f >/dev/null; \
                 docker network ls -q --filter label=corral.node={id} | xargs -r docker network rm >/dev/null 2>&1"
            ))
            .status();
    }
}
