//! The `corral-agent` command line, as a library function so that test harnesses can run the same
//! binary behaviour under another name.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use corral_proto::token::JoinToken;

#[derive(Parser)]
#[command(name = "corral-agent", version, about = "Corral's host agent: reports hardware, runs jobs in Docker")]
struct Args {
    /// The coordinator's QUIC address, HOST:PORT.
    #[arg(long, env = "CORRAL_COORDINATOR")]
    coordinator: String,
    /// Join token printed by the coordinator (needed only for the first start).
    #[arg(long, env = "CORRAL_JOIN_TOKEN")]
    token: Option<String>,
    /// Where the node's identity lives [default: /var/lib/corral-agent as root,
    /// ~/.local/share/corral-agent otherwise].
    #[arg(long, env = "CORRAL_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Name of this node (default: the host name).
    #[arg(long, env = "CORRAL_NODE_NAME")]
    name: Option<String>,
    /// Fleet to join, when the token does not name one.
    #[arg(long, env = "CORRAL_FLEET")]
    fleet: Option<String>,
    /// NVML library to load (default: the system's libnvidia-ml.so.1).
    #[arg(long, env = "CORRAL_NVML_LIBRARY")]
    nvml_library: Option<PathBuf>,
    /// Pull Docker Hub images through this mirror first (`host[:port]`), e.g. a registry in the
    /// site's own network; images pushed to the coordinator (`corral image push`) need none.
    #[arg(long, env = "CORRAL_REGISTRY_MIRROR")]
    registry_mirror: Option<String>,
    /// The instance metadata service to watch for spot interruptions [default: EC2's,
    /// http://169.254.169.254; where none answers, nothing is watched].
    #[arg(long, env = "CORRAL_IMDS_URL")]
    imds_url: Option<String>,
    /// Look for TPU device nodes under DIR/dev and DIR/sys instead of /dev and /sys.
    #[arg(long, env = "CORRAL_DEVICE_ROOT", value_name = "DIR")]
    device_root: Option<PathBuf>,
    /// Seconds between the node's reports of what its GPUs, containers and host use (1..=300).
    #[arg(long, env = "CORRAL_METRICS_INTERVAL", value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    metrics_interval: u64,
    /// Connect once with this node's identity and exit: 0 when the coordinator accepts it.
    #[arg(long)]
    check: bool,
    /// Never replace this binary with the one the coordinator serves.
    #[arg(long, env = "CORRAL_NO_SELF_UPGRADE")]
    no_self_upgrade: bool,
}

/// The `corral-agent` command: flags, logging, run until SIGINT/SIGTERM.
pub async fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse_from(args);
    let token = match args.token.as_deref().map(str::parse::<JoinToken>).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: --token: {e}");
            return ExitCode::from(2);
        }
    };
    let state_dir = args.state_dir.clone().unwrap_or_else(|| corral_proto::paths::default_dir("corral-agent"));
    if args.check {
        return check(&state_dir, &args.coordinator).await;
    }
    if !args.no_self_upgrade
        && let Err(e) = crate::upgrade::enable(&state_dir)
    {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let config = crate::Config {
        coordinator: args.coordinator,
        token,
        state_dir,
        name: args.name,
        fleet: args.fleet,
        nvml_library: args.nvml_library,
        registry_mirror: args.registry_mirror,
        imds_url: args.imds_url,
        device_root: args.device_root,
        metrics_interval: std::time::Duration::from_secs(args.metrics_interval),
    };
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal as unix_signal};
        match unix_signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        signal.cancel();
    });
    match crate::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--check`: the node's identity, accepted by the coordinator?
async fn check(state_dir: &std::path::Path, coordinator: &str) -> ExitCode {
    let identity = match crate::identity::Identity::load(state_dir) {
        Ok(Some(id)) => id,
        Ok(None) => {
            eprintln!("error: no node identity in {}: this host has not enrolled", state_dir.display());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match crate::link::probe(&identity, coordinator).await {
        Ok(welcome) => {
            println!("node {} is accepted by the coordinator at {coordinator}", welcome.node_id);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
