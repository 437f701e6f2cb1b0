//! A cluster in one test process: coordinator + agents on loopback, each with its own temp dirs and
//! cancellation token. Containers a test's agents made are removed when the test ends, pass or fail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use corral_cli::client::Client;
use corral_proto::api;

pub const IMAGE: &str = "corral-test/busybox:latest";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the test image once per test process (no registry is reachable: it is made locally).
pub fn ensure_image() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(repo_root().join("scripts/build-test-image.sh"))
            .output()
            .map_err(|e| format!("cannot run scripts/build-test-image.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/build-test-image.sh failed (is Docker running?):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// The image with Python 3 and bash (scripts/build-test-python-image.sh), built once per test
/// process; returns its name and its Python's version (`3.11`).
pub fn python_image() -> (&'static str, String) {
    const PYTHON_IMAGE: &str = "corral-test/python:latest";
    static DONE: OnceLock<Result<String, String>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        ensure_image();
        let script = repo_root().join("scripts/build-test-python-image.sh");
        let out = std::process::Command::new("bash").arg(&script).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "scripts/build-test-python-image.sh failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let label = std::process::Command::new("docker")
            .args(["image", "inspect", "--format", "{{ index .Config.Labels \"corral.python\" }}", PYTHON_IMAGE])
            .output()
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&label.stdout).trim().to_owned())
    });
    match r {
        Ok(version) => (PYTHON_IMAGE, version.clone()),
        Err(e) => panic!("{e}"),
    }
}

/// Builds the fake NVML library (two A100s by default) once per test process.
pub fn fake_nvml() -> PathBuf {
    static LIB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let r = LIB.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("corral-fake-nvml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("bash")
            .arg(repo_root().join("tests/fake-nvml/build.sh"))
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run tests/fake-nvml/build.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building the fake NVML failed (a C compiler is needed): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(dir.join("libnvidia-ml.so.1"))
    });
    match r {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// Builds the fake NVML into `dir`, apart from the copy other tests share: its control files
/// (`utilization`, `gpus`) beside it are this test's alone.
pub fn own_fake_nvml(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("tests/fake-nvml/build.sh"))
        .arg(dir)
        .output()
        .context("cannot run tests/fake-nvml/build.sh")?;
    anyhow::ensure!(out.status.success(), "building the fake NVML failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(dir.join("libnvidia-ml.so.1"))
}

/// Replaces a file whole (written, then renamed): a reader never sees half of it.
pub fn write_whole(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub fn init_tracing() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

pub struct Coordinator {
    pub data: PathBuf,
    pub http: SocketAddr,
    pub quic: SocketAddr,
    /// `/metrics` without authentication, when started with `metrics_listen`.
    pub metrics: Option<SocketAddr>,
    pub admin_token: String,
    pub join_token: corral_proto::token::JoinToken,
    /// Serves HTTPS with a certificate from its own CA (`data/ca.pem`).
    pub https: bool,
    shutdown: CancellationToken,
    running: Option<corral_coordinator::Running>,
}

impl Coordinator {
    pub async fn start(data: &Path) -> anyhow::Result<Self> {
        Self::start_on(data, "127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?).await
    }

    pub async fn start_on(data: &Path, http: SocketAddr, quic: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(data, http, quic, Duration::from_secs(10)).await
    }

    /// With heartbeats every second and the given node timeout.
    pub async fn start_with(
        data: &Path,
        http: SocketAddr,
        quic: SocketAddr,
        node_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Self::start_config(corral_coordinator::Config {
            data_dir: data.to_owned(),
            http_listen: http,
            quic_listen: quic,
            heartbeat_secs: 1,
            node_timeout,
            restart_grace: Duration::from_secs(30),
            services_domain: Some("svc.corral.test".to_owned()),
            http_tls: corral_coordinator::HttpTls::Off,
            agent_binary: None,
            upgrade_timeout: Duration::from_secs(180),
            aws: None,
            public_url: None,
            elastic_every: Duration::from_secs(10),
            enroll_timeout: Duration::from_secs(600),
            ..Default::default()
        })
        .await
    }

    /// Serving HTTPS from its own CA, and `agent_binary` to installing hosts.
    pub async fn start_https(data: &Path, agent_binary: Option<PathBuf>) -> anyhow::Result<Self> {
        Self::start_config(corral_coordinator::Config {
            data_dir: data.to_owned(),
            http_listen: "127.0.0.1:0".parse()?,
            quic_listen: "127.0.0.1:0".parse()?,
            heartbeat_secs: 1,
            http_tls: corral_coordinator::HttpTls::Own(Vec::new()),
            agent_binary,
            ..Default::default()
        })
        .await
    }

    pub async fn start_config(config: corral_coordinator::Config) -> anyhow::Result<Self> {
        init_tracing();
        let shutdown = CancellationToken::new();
        let data = config.data_dir.clone();
        let https = !matches!(config.http_tls, corral_coordinator::HttpTls::Off);
        let running = corral_coordinator::start(config, shutdown.clone()).await?;
        Ok(Self {
            https,
            data,
            http: running.http_addr,
            quic: running.quic_addr,
            metrics: running.metrics_addr,
            admin_token: running.admin_token.clone(),
            join_token: running.join_token.clone(),
            shutdown,
            running: Some(running),
        })
    }

    pub fn url(&self) -> String {
        format!("{}://{}", if self.https { "https" } else { "http" }, self.http)
    }

    pub fn client(&self) -> Client {
        if self.https {
            let ca = std::fs::read_to_string(self.data.join("ca.pem")).expect("the coordinator's ca.pem");
            Client::with_ca(&self.url(), &self.admin_token, "main", &ca).expect("a client pinning the CA")
        } else {
            Client::new(&self.url(), &self.admin_token, "main")
        }
    }

    /// Every route of its API with its rule.
    pub fn route_table(&self) -> Vec<corral_coordinator::api::access::Route> {
        let state = self.running.as_ref().map(|r| r.state.clone()).expect("a running coordinator");
        corral_coordinator::api::route_table(state)
    }

    /// Stops it the way SIGTERM does, and waits for its tasks.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), r.wait()).await;
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Agent {
    pub state: PathBuf,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    guard: ContainerGuard,
}

#[derive(Default)]
pub struct AgentOptions {
    pub name: String,
    pub nvml: Option<PathBuf>,
    pub fleet: Option<String>,
    pub registry_mirror: Option<String>,
    pub imds_url: Option<String>,
    /// TPU device nodes under `<root>/dev` (the agent's `--device-root`).
    pub device_root: Option<PathBuf>,
    /// How often it reports what it measured (default 1 s: tests wait on what it reports).
    pub metrics_interval: Option<Duration>,
}

impl Agent {
    pub fn start(coord: &Coordinator, state: &Path, opts: AgentOptions) -> Self {
        let config = corral_agent::Config {
            coordinator: coord.quic.to_string(),
            token: Some(coord.join_token.clone()),
            state_dir: state.to_owned(),
            name: Some(opts.name),
            fleet: opts.fleet,
            // A path that does not exist means "no NVIDIA GPUs on this host".
            nvml_library: Some(opts.nvml.unwrap_or_else(|| state.join("no-libnvidia-ml.so"))),
            registry_mirror: opts.registry_mirror,
            // Nothing answers there: no metadata service in tests unless one is given.
            imds_url: Some(opts.imds_url.unwrap_or_else(|| "http://127.0.0.1:9".into())),
            device_root: opts.device_root,
            metrics_interval: opts.metrics_interval.unwrap_or(Duration::from_secs(1)),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(corral_agent::run(config, shutdown.clone()));
        Self {
            state: state.to_owned(),
            shutdown,
            task: Some(task),
            guard: ContainerGuard { state: state.to_owned(), armed: true },
        }
    }

    /// Stops the agent and removes what it ran (a node leaving for good, in a test's setup).
    pub async fn stop_for_test(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.guard.armed = true;
        Ok(())
    }

    /// Stops the agent process (containers keep running) and waits for it.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.guard.armed = false;
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), t).await.context("agent did not stop")???;
        }
        Ok(())
    }
}

fn node_id_of(state: &Path) -> Option<String> {
    let text = std::fs::read_to_string(state.join("node.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["node_id"].as_str().map(str::to_owned)
}

/// Removes every container labelled with the agent's node id when dropped.
pub struct ContainerGuard {
    state: PathBuf,
    /// A stopped agent leaves its containers to the agent that takes over its state dir.
    armed: bool,
}

impl ContainerGuard {
    /// Removes, when dropped, the containers of the node enrolled from `state`.
    pub fn for_state(state: &Path) -> Self {
        Self { state: state.to_owned(), armed: true }
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Some(node) = node_id_of(&self.state) else {
            return;
        };
        let out = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=corral.node={node}")])
            .output();
        if let Ok(out) = out {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker").arg("rm").arg("-f").args(&ids).output();
            }
        }
        remove_node_networks(&node);
    }
}

/// Removes the runs' networks a node left behind.
pub fn remove_node_networks(node: &str) {
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker network ls -q --filter label=corral.node={node} | xargs -r docker network rm >/dev/null 2>&1"
        ))
        .status();
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `check` until it returns `Some`, or fails after `limit` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            match last_err {
                Some(e) => bail!("timed out after {limit:?} waiting for {what}; last error: {e:#}"),
                None => bail!("timed out after {limit:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(client: &Client, name: &str) -> anyhow::Result<api::Run> {
    client.get(&client.project_path(&format!("runs/{name}"))).await
}

pub async fn nodes_ready(client: &Client, n: usize) -> anyhow::Result<Vec<api::Node>> {
    wait_for(&format!("{n} ready node(s) with inventory"), Duration::from_secs(30), || async {
        let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
        let ready = nodes.iter().filter(|x| x.status == api::NodeStatus::Ready && x.inventory.is_some()).count();
        Ok((ready >= n).then_some(nodes))
    })
    .await
}

pub async fn wait_state(
    client: &Client,
    name: &str,
    pred: impl Fn(&api::Run) -> bool,
    limit: Duration,
) -> anyhow::Result<api::Run> {
    let waited = wait_for(&format!("run {name} to reach the expected state"), limit, || async {
        let r = run(client, name).await?;
        Ok(pred(&r).then_some(r))
    })
    .await;
    match waited {
        Ok(r) => Ok(r),
        Err(e) => {
            // Say where it was when time ran out.
            let last = run(client, name).await.map(|r| format!("{:#?}", r.jobs)).unwrap_or_default();
            Err(e.context(format!("last seen: {last}")))
        }
    }
}

/// Writes a configuration file for a test.
pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(format!("{name}.dstack.yml"));
    std::fs::write(&p, text).expect("write config");
    p
}

/// Runs `corral apply -f FILE -y` (attached unless `detach`) and returns (exit code, stdout).
pub async fn apply(client: &Client, file: &Path, detach: bool) -> anyhow::Result<(i32, String)> {
    let mut out = Vec::new();
    let code = corral_cli::commands::apply(client, file, true, detach, None, &mut out).await?;
    Ok((code, String::from_utf8_lossy(&out).into_owned()))
}

pub async fn logs(client: &Client, name: &str) -> anyhow::Result<String> {
    let mut out = Vec::new();
    corral_cli::commands::logs(client, name, 0, false, &mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

pub fn docker_exists(container: &str) -> bool {
    std::process::Command::new("docker")
        .args(["inspect", container])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn docker_running(container: &str) -> bool {
    std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", container])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
        .unwrap_or(false)
}

/// A single-node cluster: one coordinator, one agent without GPUs, ready.
/// Fields drop in this order: the agent (its guard removes the node's containers, which needs the
/// node id in the state dir), the coordinator, and the temp dir last.
pub struct OneNode {
    pub agent: Agent,
    pub coord: Coordinator,
    pub client: Client,
    pub dir: tempfile::TempDir,
}

impl OneNode {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// With the coordinator's configuration changed by `configure` first.
    pub async fn start_with(configure: impl FnOnce(&mut corral_coordinator::Config)) -> anyhow::Result<Self> {
        ensure_image();
        let dir = tempfile::tempdir()?;
        let mut config = corral_coordinator::Config {
            data_dir: dir.path().join("coord"),
            http_listen: "127.0.0.1:0".parse()?,
            quic_listen: "127.0.0.1:0".parse()?,
            heartbeat_secs: 1,
            services_domain: Some("svc.corral.test".to_owned()),
            http_tls: corral_coordinator::HttpTls::Off,
            ..Default::default()
        };
        configure(&mut config);
        let coord = Coordinator::start_config(config).await?;
        let agent = Agent::start(
            &coord,
            &dir.path().join("agent"),
            AgentOptions { name: "node-a".into(), nvml: None, fleet: None, ..Default::default() },
        );
        let client = coord.client();
        nodes_ready(&client, 1).await?;
        Ok(Self { dir, coord, agent, client })
    }
}
