//! `corral-agent`: the host daemon.
//!
//! - [`inventory`]: what the host has (sysinfo, NVML, TPU device nodes, Docker's runtimes);
//! - [`identity`]: the node's key and certificate, and TLS that pins the coordinator's CA;
//! - [`link`]: enrollment and the QUIC session (commands in, reports and heartbeats out);
//! - [`jobs`]: containers through the shim, their supervision and their log streams;
//! - [`output`]: each job's output spooled on disk and shipped until the coordinator confirms it;
//! - [`tunnel`]: byte pipes from the coordinator into containers' ports, over the session's streams;
//! - [`ssh`]: an SSH server for each job's container, on such a stream (no sshd in the image);
//! - [`metrics`]: what the GPUs (NVML), the containers (Docker) and the host use, every interval;
//! - [`upgrade`]: replacing its own binary with the one the coordinator serves.
//!
//! Tasks: the link task owns the session; one task per job supervises its container and one ships
//! its output; per session one task accepts tunnels, and one task per tunnel pipes it. All stop on the root `CancellationToken`; containers keep running when the agent
//! stops, and are re-adopted by label when it starts again.

pub mod cli;
pub mod exec;
pub mod identity;
pub mod inventory;
pub mod jobs;
pub mod link;
pub mod metrics;
pub mod output;
pub mod sftp;
pub mod spot;
pub mod ssh;
pub mod tunnel;
pub mod upgrade;

use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use corral_proto::token::JoinToken;
use corral_shim::{GpuPassthrough, Shim};

use crate::identity::Identity;
use crate::jobs::Jobs;

#[derive(Clone, Debug)]
pub struct Config {
    /// `HOST:PORT` of the coordinator's QUIC endpoint.
    pub coordinator: String,
    /// Needed only until the node has enrolled.
    pub token: Option<JoinToken>,
    pub state_dir: PathBuf,
    /// The name to enroll under (the host name by default).
    pub name: Option<String>,
    pub fleet: Option<String>,
    /// NVML library to load instead of the loader's default `libnvidia-ml.so.1`.
    pub nvml_library: Option<PathBuf>,
    /// A mirror of Docker Hub (`host[:port]`) to pull images through first.
    pub registry_mirror: Option<String>,
    /// The instance metadata service to watch for spot interruptions (`None`: EC2's address).
    pub imds_url: Option<String>,
    /// Where TPU chips' device nodes are looked for: `<root>/dev` and `<root>/sys` instead of
    /// `/dev` and `/sys` (a host that mounts them elsewhere; tests).
    pub device_root: Option<PathBuf>,
    /// How often the node reports what it measured ([`metrics::DEFAULT_INTERVAL`] by default).
    pub metrics_interval: std::time::Duration,
}

/// Enrolls if needed, re-adopts this node's containers and keeps the link up until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let shim = Shim::connect().context("the agent needs Docker")?.with_registry_mirror(config.registry_mirror.clone());
    let stats_shim = shim.clone();
    let docker = shim.docker_info().await.context("the agent needs Docker")?;
    let gpu_passthrough = if docker.nvidia_runtime { GpuPassthrough::DeviceRequests } else { GpuPassthrough::EnvOnly };
    let (nvml, devices) = (config.nvml_library.clone(), config.device_root.clone());
    let inventory =
        tokio::task::spawn_blocking(move || inventory::collect(docker, nvml.as_deref(), devices.as_deref())).await?;
    if !inventory.gpus.is_empty() && gpu_passthrough == GpuPassthrough::EnvOnly {
        tracing::warn!(
            "this host has GPUs but Docker has no nvidia runtime: jobs see GPU indices in their env only (install the NVIDIA Container Toolkit)"
        );
    }

    let identity = match Identity::load(&config.state_dir)? {
        Some(id) => id,
        None => {
            let token =
                config.token.as_ref().context("this node is not enrolled yet: pass --token with a join token")?;
            let name = config.name.clone().unwrap_or_else(|| inventory.hostname.clone());
            link::enroll(&config.coordinator, token, &config.state_dir, &name, config.fleet.clone()).await?
        }
    };
    let spool = config.state_dir.join("logs");
    let jobs = Jobs::new(shim, identity.node.node_id.clone(), gpu_passthrough, spool, shutdown.clone());
    jobs.set_nvml_library(config.nvml_library.clone());
    jobs.set_ssh_config(ssh::server_config(&config.state_dir).context("cannot set up the SSH host key")?);
    let adopted = jobs.adopt().await.context("cannot list this node's containers")?;
    let imds = config.imds_url.clone().unwrap_or_else(|| spot::DEFAULT_IMDS.to_owned());
    tokio::spawn(spot::watch(imds, jobs.clone(), shutdown.clone()));
    if adopted > 0 {
        tracing::info!(containers = adopted, "re-adopted containers from an earlier run");
    }
    let metrics = metrics::start(
        jobs.clone(),
        stats_shim,
        config.nvml_library.clone(),
        config.metrics_interval,
        shutdown.clone(),
    );
    link::run(&identity, &config.coordinator, &inventory, jobs, metrics, shutdown).await
}
