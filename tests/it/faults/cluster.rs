//! The fault suite's cluster: the coordinator and agents as real processes, and the runs the
//! cases submit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use corral_cli::client::Client;
use corral_proto::api;
use corral_tests::procs::{Proc, free_port, wait_until};

use crate::harness::{IMAGE, ensure_image};

const COORDINATOR: &str = env!("CARGO_BIN_EXE_corral-test-coordinator");
const AGENT: &str = env!("CARGO_BIN_EXE_corral-test-agent");

/// `corral-coordinator` as a process that can be killed and started again on the same data dir
/// and ports.
pub struct Coord {
    proc: Option<Proc>,
    pub http: String,
    pub quic: String,
    pub data: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
}

impl Coord {
    pub async fn start(dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let mut c = Self {
            proc: None,
            http: format!("127.0.0.1:{}", free_port()?),
            quic: format!("127.0.0.1:{}", free_port()?),
            data: dir.join("coord"),
            log: dir.join("coordinator.log"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        c.restart().await?;
        Ok(c)
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.proc = None;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        self.proc = Some(Proc(
            Command::new(COORDINATOR)
                .args(["--http-listen", &self.http, "--quic-listen", &self.quic, "--no-tls"])
                .args(&self.extra)
                .arg("--data-dir")
                .arg(&self.data)
                .env("CORRAL_LOG", "info")
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        ));
        let url = format!("http://{}/api/health", self.http);
        wait_until(Duration::from_secs(60), async || reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()))
            .await
            .context("the coordinator did not start")
    }

    /// SIGKILL: no shutdown, no goodbye to the agents.
    pub fn kill9(&mut self) {
        self.proc = None;
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        let token = std::fs::read_to_string(self.data.join("admin-token"))?;
        Ok(Client::new(&format!("http://{}", self.http), token.trim(), "main"))
    }

    pub fn join_token(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.data.join("join-token"))?.trim().to_owned())
    }

    /// The agent binary as a process, enrolled with this coordinator; its containers are removed
    /// when the returned guard goes.
    pub fn agent(&self, dir: &Path, name: &str, fleet: &str) -> anyhow::Result<AgentProc> {
        let state = dir.join(name);
        std::fs::create_dir_all(&state)?;
        let mut agent = AgentProc {
            proc: None,
            state,
            log: dir.join(format!("{name}.log")),
            args: vec![
                "--coordinator".into(),
                self.quic.clone(),
                "--token".into(),
                self.join_token()?,
                "--name".into(),
                name.into(),
                "--fleet".into(),
                fleet.into(),
                // The coordinator serves the tests' own agent binary, which is not this one.
                "--no-self-upgrade".into(),
            ],
        };
        agent.restart()?;
        Ok(agent)
    }
}

pub struct AgentProc {
    proc: Option<Proc>,
    state: PathBuf,
    log: PathBuf,
    args: Vec<String>,
}

impl AgentProc {
    /// Starts the agent again on its state dir (it is enrolled: the token is not used again).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.proc = None;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        self.proc = Some(Proc(
            Command::new(AGENT)
                .args(&self.args)
                .arg("--state-dir")
                .arg(&self.state)
                .arg("--nvml-library")
                .arg(self.state.join("no-libnvidia-ml.so"))
                .env("CORRAL_LOG", "info")
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        ));
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map_or(0, Proc::pid)
    }

    /// SIGKILL of the agent alone: its containers keep running.
    pub fn kill9(&mut self) {
        self.proc = None;
    }

    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        corral_tests::procs::remove_node_containers(&self.state);
    }
}

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub async fn submit(client: &Client, text: &str, name: &str) -> anyhow::Result<()> {
    let configuration = corral_proto::config::parse(text, name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let submit = api::SubmitRun { configuration, source: None, name: None };
    let _: api::Run = client.post(&client.project_path("runs"), &submit).await?;
    Ok(())
}

pub async fn all_runs(client: &Client) -> anyhow::Result<Vec<api::Run>> {
    client.runs(true).await
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Docker's view of a container: (running, started at).
pub fn docker_state(container: &str) -> Option<(bool, String)> {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}} {{.State.StartedAt}}", container])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (running, started) = text.trim().split_once(' ')?;
    out.status.success().then(|| (running == "true", started.to_owned()))
}

/// A coordinator and one agent (`real`, in fleet `real`), ready.
pub async fn one_agent(dir: &Path) -> anyhow::Result<(Coord, Client, AgentProc)> {
    ensure_image();
    let coord = Coord::start(dir, &[]).await?;
    let client = coord.client()?;
    let agent = coord.agent(dir, "real", "real")?;
    crate::harness::nodes_ready(&client, 1).await?;
    Ok((coord, client, agent))
}

/// A task on the real agents' fleet that reserves no CPU (a 2-core host holds them all), running
/// `commands`, with `extra` top-level lines.
pub fn real_task(name: &str, image: &str, extra: &str, commands: &[&str]) -> String {
    let commands: String = commands.iter().map(|c| format!("  - {c}\n")).collect();
    format!(
        "type: task\nname: {name}\nimage: {image}\nfleets: [real]\nresources:\n  cpu: 0\n{extra}commands:\n{commands}"
    )
}

/// `real_task` in the test image, starting with `echo {first}`.
pub fn real(name: &str, first: &str, tail: &str) -> String {
    real_task(name, IMAGE, "", &[&format!("echo {first}"), tail])
}

/// A shell loop that waits until the wall clock reaches `t` (seconds since the epoch).
pub fn shell_wait_until(t: u64) -> String {
    format!("while [ $(date +%s) -lt {t} ]; do sleep 0.2; done")
}

/// Waits here until the wall clock reaches `t`.
pub async fn sleep_until_unix(t: u64) {
    while now_unix() < t {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
