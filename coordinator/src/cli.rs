//! The `corral-coordinator` command line, as a library function so that test harnesses can run the
//! same binary behaviour under another name: parse flags, set up logging, run until
//! SIGINT/SIGTERM, drain.

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
    /// After this coordinator starts, every node it knew gets this long (at least the node
    /// timeout) to reconnect before it counts as unreachable: a restart is not a node loss.
    #[arg(long, env = "CORRAL_RESTART_GRACE", default_value = "30s", value_parser = parse_secs)]
    restart_grace: u64,
    /// Serve each service of the default project at `<run>.<DOMAIN>` too (by the `Host` header;
    /// point a wildcard DNS record `*.<DOMAIN>` at this host).
    #[arg(long, env = "CORRAL_SERVICES_DOMAIN")]
    services_domain: Option<String>,
    /// Another host name or IP address for the HTTPS certificate (repeatable); the host's name,
    /// `localhost` and the listen address are always in it.
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_sans: Vec<String>,
    /// Serve HTTPS with this certificate chain (PEM) instead of one from Corral's own CA.
    #[arg(long, requires = "tls_key", env = "CORRAL_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert", env = "CORRAL_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP (behind a proxy that terminates TLS).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_sans"])]
    no_tls: bool,
    /// The agent binary installing hosts download [default: corral-agent beside this program].
    /// Binaries for other architectures sit beside it as corral-agent-<arch> (aarch64, ...).
    #[arg(long, env = "CORRAL_AGENT_BINARY")]
    agent_binary: Option<PathBuf>,
    /// Rent instances from AWS in this region (repeatable). Credentials come from the usual chain:
    /// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the instance role.
    #[arg(long = "aws-region", value_name = "REGION", env = "CORRAL_AWS_REGIONS", value_delimiter = ',')]
    aws_regions: Vec<String>,
    /// The subnet AWS instances are launched in (default: the region's default VPC).
    #[arg(long, env = "CORRAL_AWS_SUBNET")]
    aws_subnet: Option<String>,
    /// The security group of AWS instances (they need no inbound port: agents dial out).
    #[arg(long, env = "CORRAL_AWS_SECURITY_GROUP")]
    aws_security_group: Option<String>,
    /// The AMI of AWS instances (default: one with Docker and the NVIDIA drivers, per region).
    #[arg(long, env = "CORRAL_AWS_AMI")]
    aws_ami: Option<String>,
    /// The URL cloud instances reach this coordinator at (their install command fetches from it),
    /// e.g. https://coord.example:7070.
    #[arg(long, env = "CORRAL_PUBLIC_URL")]
    public_url: Option<String>,
    /// How often elastic fleets are compared with the cloud (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    elastic_every: u64,
    /// A cloud instance whose agent has not enrolled this long after launch is terminated.
    #[arg(long, default_value = "10m", value_parser = parse_secs)]
    enroll_timeout: u64,
    /// How long the audit trail (`corral event`) keeps what happened, e.g. 30d, 1y.
    #[arg(long, env = "CORRAL_EVENTS_RETENTION", default_value = "30d", value_parser = parse_secs)]
    events_retention: u64,
    /// Return a GPU taken out of service for a condition (uncorrectable ECC errors, pages waiting
    /// to be retired, a failed row remap, a lost GPU) once its node's reports show it cleared;
    /// without it, only `corral node gpu enable` returns one. An Xid never clears by itself.
    #[arg(long, env = "CORRAL_GPU_AUTO_RETURN")]
    gpu_auto_return: bool,
    /// Also serve `/metrics` on this address without authentication, for a Prometheus on a
    /// network you trust (on the API's address it needs a global admin's token).
    #[arg(long, env = "CORRAL_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// An EC2 key pair for SSH into instances (not needed by Corral).
    #[arg(long, env = "CORRAL_AWS_KEY_NAME")]
    aws_key_name: Option<String>,
    /// The image of runs that name none (dstack's default; a registry mirror's or one pushed with
    /// `corral image push` serves it in an air-gapped site).
    #[arg(long, env = "CORRAL_BASE_IMAGE", default_value = crate::container::BASE_IMAGE)]
    base_image: String,
    /// The image of runs that name none and set `nvcc: true` (it has the CUDA compiler).
    #[arg(long, env = "CORRAL_BASE_IMAGE_DEVEL", default_value = crate::container::BASE_IMAGE_DEVEL)]
    base_image_devel: String,
    /// The image of `docker: true` runs (Docker inside the container; it must have `dockerd` and
    /// `start-dockerd`, as dstack's has).
    #[arg(long, env = "CORRAL_DIND_IMAGE", default_value = crate::container::DIND_IMAGE)]
    dind_image: String,
    /// Give TPU jobs their chips' devices and the host's network but not privileged mode (dstack
    /// runs them privileged), for nodes whose Docker refuses privileged containers.
    #[arg(long, env = "CORRAL_NO_TPU_PRIVILEGED")]
    no_tpu_privileged: bool,
}

fn parse_secs(s: &str) -> Result<u64, String> {
    corral_proto::config::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration (use e.g. 10s, 1m)"))
}

/// The `corral-coordinator` command.
pub async fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // Whatever this process creates is the coordinator's alone: the data dir holds the CA key, the
    // tokens and job environments. Files are created 0600 in any case (`datadir`); the umask also
    // covers what a library makes (SQLite's journals) and what a later change forgets.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse_from(args);
    let services_domain = args.services_domain.map(|d| d.trim_matches('.').to_ascii_lowercase());
    let http_tls = if args.no_tls {
        crate::HttpTls::Off
    } else if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        crate::HttpTls::Files { cert, key }
    } else {
        let mut names = args.tls_sans;
        if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            names.push(host.trim().to_owned());
        }
        if !args.http_listen.ip().is_unspecified() {
            names.push(args.http_listen.ip().to_string());
        }
        if let Some(domain) = &services_domain {
            names.push(format!("*.{domain}"));
        }
        crate::HttpTls::Own(names)
    };
    let agent_binary = args.agent_binary.or_else(|| {
        let beside = std::env::current_exe().ok()?.parent()?.join("corral-agent");
        beside.exists().then_some(beside)
    });
    let aws = if args.aws_regions.is_empty() {
        None
    } else {
        Some(crate::cloud::backends::AwsSettings {
            regions: args.aws_regions,
            subnet_id: args.aws_subnet,
            security_group_id: args.aws_security_group,
            ami: args.aws_ami,
            key_name: args.aws_key_name,
        })
    };
    let config = crate::Config {
        data_dir: args.data_dir.unwrap_or_else(|| corral_proto::paths::default_dir("corral")),
        http_listen: args.http_listen,
        quic_listen: args.quic_listen,
        node_timeout: std::time::Duration::from_secs(args.node_timeout),
        restart_grace: std::time::Duration::from_secs(args.restart_grace),
        services_domain,
        http_tls,
        agent_binary,
        aws,
        public_url: args.public_url.map(|u| u.trim_end_matches('/').to_owned()),
        elastic_every: std::time::Duration::from_secs(args.elastic_every.max(1)),
        enroll_timeout: std::time::Duration::from_secs(args.enroll_timeout),
        events_retention: std::time::Duration::from_secs(args.events_retention.max(3600)),
        gpu_auto_return: args.gpu_auto_return,
        metrics_listen: args.metrics_listen,
        base_images: crate::container::BaseImages {
            base: args.base_image,
            devel: args.base_image_devel,
            dind: args.dind_image,
        },
        tpu_privileged: !args.no_tpu_privileged,
        ..Default::default()
    };
    let shutdown = CancellationToken::new();
    let running = match crate::start(config.clone(), shutdown.clone()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if matches!(config.http_tls, crate::HttpTls::Off) { "http" } else { "https" };
    let url = format!("{scheme}://{}", running.http_addr);
    println!("corral coordinator {}", crate::VERSION);
    println!("  HTTP API:    {url}");
    println!("  agents dial: {} (QUIC)", running.quic_addr);
    println!("  CA hash:     {}", running.join_token.ca_hash);
    println!("  admin token: {}  (also in {})", running.admin_token, config.data_dir.join("admin-token").display());
    let join_hash = crate::secrets::sha256_hex(running.join_token.secret.as_bytes());
    let join_usable = running.state.store.join_token_known(&join_hash).unwrap_or(true);
    if join_usable {
        println!("  join token:  {}  (also in {})", running.join_token, config.data_dir.join("join-token").display());
        println!(
            "               it never expires and has unlimited uses: once your hosts are enrolled, \
             revoke it (corral token revoke {}); corral token create --ttl 1h --uses 3 makes scoped ones",
            &join_hash[..12]
        );
    } else {
        println!(
            "  join token:  the default one ({}) is revoked; make a new one with `corral token create`",
            &join_hash[..12]
        );
    }
    println!(
        "use the CLI:     corral config --url {url} --token <admin token> --ca-hash {}",
        running.join_token.ca_hash
    );
    println!(
        "enroll a host:   curl -fsSLk {url}/install.sh | sh -s -- --token <{}>",
        if join_usable { "join token" } else { "a token from corral token create" }
    );
    if config.agent_binary.is_none() {
        println!("  (no agent binary to serve: start with --agent-binary PATH for the install script)");
    }

    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    if tokio::time::timeout(crate::SHUTDOWN_GRACE, running.wait()).await.is_err() {
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
