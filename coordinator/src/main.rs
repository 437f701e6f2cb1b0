//! `corral-coordinator`: parse flags, set up logging, run until SIGINT/SIGTERM, drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "corral-coordinator",
    version,
    about = "Corral's coordinator: state, scheduler, agent endpoint, HTTP API"
)]
struct Args {
    /// Where the database, the CA, tokens and logs live [default: /var/lib/corral as root,
    /// ~/.local/share/corral otherwise].
    #[arg(long, env = "CORRAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the HTTP API (the CLI's endpoint).
    #[arg(long, env = "CORRAL_HTTP_LISTEN", default_value = "127.0.0.1:7070")]
    http_listen: SocketAddr,
    /// UDP address agents dial (QUIC).
    #[arg(long, env = "CORRAL_QUIC_LISTEN", default_value = "0.0.0.0:7071")]
    quic_listen: SocketAddr,
    /// A node silent this long (e.g. `10s`, `1m`) is unreachable; its jobs are interrupted.
    #[arg(long, env = "CORRAL_NODE_TIMEOUT", default_value = "10s", value_parser = parse_secs)]
    node_timeout: u64,
    /// Serve each service of the default project at `<run>.<DOMAIN>` too (by the `Host` header;
    /// point a wildcard DNS record `*.<DOMAIN>` at this host).
    #[arg(long, env = "CORRAL_SERVICES_DOMAIN")]
    services_domain: Option<String>,
}

fn parse_secs(s: &str) -> Result<u64, String> {
    corral_proto::config::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration (use e.g. 10s, 1m)"))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let config = corral_coordinator::Config {
        data_dir: args.data_dir.unwrap_or_else(|| corral_proto::paths::default_dir("corral")),
        http_listen: args.http_listen,
        quic_listen: args.quic_listen,
        node_timeout: std::time::Duration::from_secs(args.node_timeout),
        services_domain: args.services_domain.map(|d| d.trim_matches('.').to_ascii_lowercase()),
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let running = match corral_coordinator::start(config.clone(), shutdown.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("corral coordinator {}", corral_coordinator::VERSION);
    println!("  HTTP API:    http://{}", running.http_addr);
    println!("  agents dial: {} (QUIC)", running.quic_addr);
    println!("  admin token: {}  (also in {})", running.admin_token, config.data_dir.join("admin-token").display());
    println!("  join token:  {}  (also in {})", running.join_token, config.data_dir.join("join-token").display());
    println!("enroll a node:  corral-agent --coordinator HOST:{} --token <join token>", running.quic_addr.port());

    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    if tokio::time::timeout(corral_coordinator::SHUTDOWN_GRACE, running.wait()).await.is_err() {
        tracing::warn!("tasks did not stop within the grace period");
    }
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
