//! `corral-coordinator`: keeps the desired state and drives the agents toward it.
//!
//! Its parts, one folder each, so that a change has one room to go to:
//! - [`nodes`]: the QUIC endpoint agents dial ([`nodes::agents`]: one task per connection reads its
//!   control stream, a writer task drains the node's bounded command channel, one task per log
//!   stream appends to [`logs`]; on a runtime of its own, so that the synchronous store work of the
//!   API and the scheduler never delays a heartbeat), the connected nodes and the one policy for
//!   sending them commands ([`nodes::sessions`]), tunnels into containers.
//! - [`scheduling`]: the scheduler places queued jobs on nodes where they fit. The rest of the
//!   coordinator sends its handle commands (a run stored, a job ended, a node changed), each of
//!   which wakes it, and it passes every few seconds regardless (level-triggered); a pass takes
//!   its inbox, is planned without I/O and then applied. A job's end, gangs, retries, lost nodes.
//! - [`services`]: each active service's replica count (autoscaling, scale to zero and back),
//!   readiness probes through tunnels, router replicas.
//! - [`api`]: the HTTP API (axum) for the CLI, and the proxy that carries service traffic and
//!   forwarded ports into containers through tunnels over the agents' own connections.
//! - [`cloud`]: cloud backends, offers and elastic fleets; [`volumes`]: named volumes.
//! - [`metrics`]: what the nodes measured (GPUs, containers, hosts), kept in memory for a while;
//!   GPU health, which takes a faulty GPU out of placement; `/metrics` for Prometheus.
//! - [`store`] (SQLite) holds runs, jobs, nodes, users and tokens; which nodes are connected lives
//!   in memory ([`State::sessions`]) and is rebuilt as agents reconnect.

pub mod api;
pub mod cli;
pub mod cloud;
pub mod container;
pub mod datadir;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod nodes;
pub mod pki;
pub mod scheduling;
pub mod secrets;
pub mod services;
pub mod store;
pub mod uploads;
pub mod vault;
pub mod volumes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use corral_proto::ids::NodeId;
use corral_proto::token::JoinToken;
use corral_proto::wire::CoordinatorMessage;

use crate::logs::LogStore;
use crate::pki::Pki;
use crate::secrets::{random_hex, sha256_hex};
use crate::store::Store;

use cloud::backends;
#[cfg(feature = "aws")]
use cloud::elastic;
use nodes::{agents, fleet_nodes, seen, sessions, upgrade};
use scheduling::{activity, lifecycle, scheduler, schedules};
use services::{autoscale, probes, router_groups};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub quic_listen: SocketAddr,
    /// Seconds between agent heartbeats.
    pub heartbeat_secs: u32,
    /// A node not heard from for this long is unreachable; its jobs are interrupted.
    pub node_timeout: Duration,
    /// After a start, how long every node the store knows has to reconnect before it counts as
    /// unreachable (at least `node_timeout`).
    pub restart_grace: Duration,
    /// With a domain, a request whose `Host` is `<run>.<domain>` goes to the service `<run>` of the
    /// default project (a wildcard DNS record points `*.<domain>` at the coordinator).
    pub services_domain: Option<String>,
    /// How the HTTP API is served.
    pub http_tls: HttpTls,
    /// The agent binary served to installing hosts (`/download/corral-agent-<arch>`); agents that
    /// run another binary upgrade to it, one node at a time.
    pub agent_binary: Option<PathBuf>,
    /// How long a node has to come back on the new binary before its upgrade counts as failed.
    pub upgrade_timeout: Duration,
    /// The AWS backend, when configured.
    pub aws: Option<backends::AwsSettings>,
    /// The URL instances reach the coordinator at (their install command's), for elastic fleets.
    pub public_url: Option<String>,
    /// How often elastic fleets are reconciled with the cloud.
    pub elastic_every: Duration,
    /// A cloud instance whose node has not enrolled this long after launch is terminated.
    pub enroll_timeout: Duration,
    /// What runs with no `image` get.
    pub base_images: container::BaseImages,
    /// TPU jobs run privileged, as dstack runs them (`false`: only their chips' devices and the
    /// host's network, for nodes whose Docker refuses privileged containers).
    pub tpu_privileged: bool,
    /// The time scheduled runs read: the system's, but in tests, which move it to put a cron's
    /// time seconds away rather than wait for it.
    pub schedule_clock: schedules::Clock,
    /// How long the audit trail keeps an event.
    pub events_retention: Duration,
    /// A GPU taken out of service for a condition (ECC errors, pending retirement, ...) comes back
    /// by itself once the node's reports show it cleared; otherwise only an operator returns it.
    pub gpu_auto_return: bool,
    /// Also serve `/metrics` here, without authentication (for a Prometheus on a trusted network).
    pub metrics_listen: Option<SocketAddr>,
}

/// TLS for the HTTP API.
#[derive(Clone, Debug)]
pub enum HttpTls {
    /// Plain HTTP: on loopback, or behind a proxy that terminates TLS.
    Off,
    /// A certificate from the coordinator's own CA, also naming these host names and addresses.
    Own(Vec<String>),
    /// The operator's certificate chain and private key, PEM files.
    Files { cert: PathBuf, key: PathBuf },
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("corral-data"),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            quic_listen: SocketAddr::from(([0, 0, 0, 0], 7071)),
            heartbeat_secs: 5,
            node_timeout: Duration::from_secs(10),
            restart_grace: Duration::from_secs(30),
            services_domain: None,
            http_tls: HttpTls::Own(Vec::new()),
            agent_binary: None,
            upgrade_timeout: Duration::from_secs(180),
            aws: None,
            public_url: None,
            elastic_every: Duration::from_secs(10),
            enroll_timeout: Duration::from_secs(600),
            base_images: container::BaseImages::default(),
            tpu_privileged: true,
            schedule_clock: schedules::Clock::default(),
            events_retention: Duration::from_secs(30 * 24 * 3600),
            gpu_auto_return: false,
            metrics_listen: None,
        }
    }
}

/// `msg` as an agent of `protocol` can carry it out, or `None`. A job that needs protocol 2 is not
/// sent to an older agent: it stays placed (`provisioning`) and is sent when the node reconnects
/// after its upgrade (reconciliation sends placed jobs the agent does not have). An agent before
/// protocol 3 knows no `gpu_error` (nor reports GPU faults): it is told `agent_error`.
pub(crate) fn for_protocol(node: &str, protocol: u16, msg: CoordinatorMessage) -> Option<CoordinatorMessage> {
    use corral_proto::job::TerminationReason;
    match msg {
        CoordinatorMessage::StartJob(spec) if protocol < 2 && spec.container.needs_protocol_2() => {
            tracing::warn!(
                node,
                job = %spec.job_id,
                "the node's agent speaks protocol {protocol}: the job waits for it to upgrade (it needs protocol 2)"
            );
            None
        }
        CoordinatorMessage::StopJob { job_id, abort, reason: TerminationReason::GpuError } if protocol < 3 => {
            Some(CoordinatorMessage::StopJob { job_id, abort, reason: TerminationReason::AgentError })
        }
        other => Some(other),
    }
}

pub struct State {
    pub config: Config,
    pub store: Store,
    pub pki: Pki,
    pub logs: LogStore,
    /// The connected nodes and the one policy for sending them commands.
    pub sessions: sessions::Sessions,
    /// The scheduler: what changed goes in as commands, the number of the last pass comes out.
    pub scheduler: scheduling::handle::Handle,
    /// Every task of this coordinator, drained on shutdown.
    pub tasks: TaskTracker,
    /// Round robin over each service's replicas.
    pub balancer: api::Balancer,
    /// Which service replicas passed their readiness probes.
    pub probes: probes::Probes,
    /// Services' request rates and replica counts.
    pub autoscaler: Arc<autoscale::Autoscaler>,
    /// Open SSH, exec and port connections per job; dev environments' inactivity.
    pub activity: Arc<activity::Activity>,
    /// Agents' job reports on their way to the updates thread ([`agents::apply_updates`]).
    pub updates: std::sync::mpsc::Sender<agents::QueuedReport>,
    /// Reports queued and not yet applied (bounded by [`agents::UPDATES_QUEUED`]).
    pub updates_waiting: std::sync::atomic::AtomicUsize,
    /// Whether the HTTP API is served over TLS.
    pub https: bool,
    /// The UDP port agents dial, once bound.
    pub quic_port: std::sync::OnceLock<u16>,
    /// The TCP port of the HTTP API, once bound.
    pub http_port: std::sync::OnceLock<u16>,
    /// Agent binaries for installing hosts.
    pub agent_dist: Arc<api::AgentDist>,
    /// Images pushed to the coordinator, for nodes with no registry.
    pub images: images::ImageStore,
    /// Runs' local repos and files, as `corral apply` uploaded them.
    pub uploads: uploads::UploadStore,
    /// Cloud backends and the price catalog.
    pub backends: backends::Backends,
    /// Connected agents' interface addresses, for fleets' `ssh_config.network`.
    pub interfaces: fleet_nodes::Interfaces,
    /// Seals and opens the projects' secrets.
    pub vault: vault::Vault,
    /// What the nodes measured, kept in memory for a while.
    pub metrics: metrics::Metrics,
    /// The GPUs out of service.
    pub health: metrics::health::Health,
    /// What the coordinator counts as it works (for `/metrics`).
    pub telemetry: metrics::prometheus::Telemetry,
}

impl State {
    pub fn quic_port(&self) -> u16 {
        self.quic_port.get().copied().unwrap_or(self.config.quic_listen.port())
    }

    /// Records a job's end (the first word stands), gives its resources back to the scheduler and
    /// wakes it. Returns false when the job had already ended.
    pub fn finish_job(
        &self,
        id: &corral_proto::ids::JobId,
        reason: corral_proto::job::TerminationReason,
        exit_code: Option<i64>,
        message: Option<&str>,
    ) -> Result<bool, store::StoreError> {
        let epoch = self.scheduler.epoch();
        let job = self.store.job(id)?;
        if !self.store.finish(id, reason, exit_code, message)? {
            return Ok(false);
        }
        self.activity.forget(id);
        if let Some(job) = &job {
            // The run's history (`corral ps RUN`, `corral event`): how each job ended, and why.
            let state = reason.final_state();
            let mut detail = format!("job {}: {state} ({reason})", job.job_num);
            if let Some(code) = exit_code {
                detail.push_str(&format!(", exit code {code}"));
            }
            if let Some(m) = message.filter(|m| !m.is_empty()) {
                detail.push_str(&format!(": {m}"));
            }
            // The end is recorded either way: a history line that cannot be written is only logged.
            if let Err(e) =
                self.store.record_event(None, Some(&job.project), "job.end", Some(&job.run_name), Some(&detail))
            {
                tracing::warn!(job = %id, "cannot record the job's end in the events: {e}");
            }
        }
        if let Some(job) = job {
            if let (Some(node), Some(a)) = (&job.node_id, &job.allocation)
                && !job.state.is_finished()
            {
                let release = scheduling::handle::Command::Release { node: node.clone(), allocation: a.clone(), epoch };
                self.scheduler.send(release);
            }
            lifecycle::job_ended(self, &job, reason)?;
        }
        self.scheduler.wake();
        Ok(true)
    }

    /// A `StartJob` as its node gets it: the project's secrets expanded into it (only what is sent
    /// carries them) and its image named as the project's store has it ([`images::for_node`]);
    /// `None` when a secret is no longer set: the job waits, and starts once it is set again (the
    /// node's next reconciliation sends it).
    pub(crate) fn for_node(&self, msg: CoordinatorMessage) -> Option<CoordinatorMessage> {
        match msg {
            CoordinatorMessage::StartJob(spec) => match vault::with_secrets(self, &spec).and_then(|spec| {
                images::for_node(&self.store, spec).map_err(|e| format!("reading its project's images: {e}"))
            }) {
                Ok(spec) => Some(CoordinatorMessage::StartJob(Box::new(spec))),
                Err(e) => {
                    tracing::error!(job = %spec.job_id, run = %spec.run_name, "the job cannot start: {e}");
                    None
                }
            },
            other => Some(other),
        }
    }

    /// Sends a command to a node if it is connected, as [`sessions`] does, once it is prepared for
    /// the node ([`State::for_node`]). A command that cannot be sent now is not lost:
    /// reconciliation on the node's next connection sends what is still needed.
    pub fn send(&self, node: &NodeId, msg: CoordinatorMessage) -> bool {
        self.sessions.get(node).is_some_and(|s| self.send_on(&s, msg))
    }

    /// Sends a command on a node's session, prepared for it ([`for_protocol`], [`State::for_node`]):
    /// not at all when its agent could not carry it out, or a secret it needs is no longer set.
    pub fn send_on(&self, session: &sessions::Session, msg: CoordinatorMessage) -> bool {
        for_protocol(&session.name, session.protocol, msg)
            .and_then(|msg| self.for_node(msg))
            .is_some_and(|msg| session.send(msg))
    }
}

/// A started coordinator: where it listens and the credentials it printed.
pub struct Running {
    pub http_addr: SocketAddr,
    pub quic_addr: SocketAddr,
    /// Where `/metrics` is served without authentication (`--metrics-listen`).
    pub metrics_addr: Option<SocketAddr>,
    pub admin_token: String,
    pub join_token: JoinToken,
    pub state: Arc<State>,
    pub tasks: TaskTracker,
    /// The runtime the agents' connections live on (see [`start`]).
    agents_runtime: AgentsRuntime,
}

/// A runtime owned by an async context: dropped without blocking (its threads end on their own).
struct AgentsRuntime(Option<tokio::runtime::Runtime>);

impl Drop for AgentsRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Running {
    /// Waits for every task to end after the shutdown token was cancelled.
    pub async fn wait(self) {
        self.tasks.close();
        self.tasks.wait().await;
        drop(self.agents_runtime);
    }
}

pub(crate) fn read_or_create(
    path: &Path,
    create: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<(String, bool)> {
    if let Ok(s) = std::fs::read_to_string(path)
        && !s.trim().is_empty()
    {
        return Ok((s.trim().to_owned(), false));
    }
    let value = create()?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{value}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok((value, true))
}

/// The admin API token and the join token kept as files in the data dir (what the operator reads).
/// The database must accept what the files say: their hashes are inserted if missing (a database
/// restored from elsewhere), and a join token naming another CA (a regenerated CA) is replaced.
fn bootstrap_tokens(dir: &Path, store: &Store, ca_hash: &str) -> anyhow::Result<(String, JoinToken)> {
    let (admin_token, created) = read_or_create(&dir.join("admin-token"), || Ok(format!("crl_{}", random_hex(20))))?;
    match store.bootstrap_admin(&sha256_hex(admin_token.as_bytes()))? {
        store::Bootstrap::Known => {}
        store::Bootstrap::Created => tracing::info!("made the global admin `admin`"),
        store::Bootstrap::Added => {
            tracing::warn!("the data dir's admin-token was unknown to the database: it is the admin's again")
        }
    }
    if created {
        tracing::info!(path = %dir.join("admin-token").display(), "created the admin API token");
    }
    let path = dir.join("join-token");
    let current = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<JoinToken>().ok());
    let join_token = match current {
        Some(t) if t.ca_hash == ca_hash => t,
        _ => {
            let t = JoinToken { ca_hash: ca_hash.to_owned(), secret: random_hex(16) };
            let _ = std::fs::remove_file(&path);
            read_or_create(&path, || Ok(t.to_string()))?;
            t
        }
    };
    if store.ensure_default_join_token(&sha256_hex(join_token.secret.as_bytes()))? == store::DefaultToken::Revoked {
        tracing::warn!("the default join token is revoked and enrolls no host: make one with `corral token create`");
    }
    Ok((admin_token, join_token))
}

/// Forgets the audit trail's events older than the retention, hourly.
async fn prune_events(state: Arc<State>, shutdown: CancellationToken) {
    loop {
        let keep_ms = i64::try_from(state.config.events_retention.as_millis()).unwrap_or(i64::MAX);
        match state.store.prune_events(secrets::now_ms().saturating_sub(keep_ms)) {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "forgot events past the retention"),
            Err(e) => tracing::warn!("cannot prune events: {e:#}"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// Forgets what nodes and jobs no longer report, every minute.
async fn prune_metrics(state: Arc<State>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        state.metrics.prune(secrets::now_ms());
    }
}

/// Opens the data dir, binds both listeners and spawns every task. Returns once the coordinator
/// accepts connections; cancel `shutdown` to stop it, then [`Running::wait`].
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let dir = &config.data_dir;
    datadir::prepare(dir).context("cannot set up the data dir")?;
    let store = Store::open(&dir.join("corral.db"))
        .with_context(|| format!("cannot open the database in {}", dir.display()))?;
    let pki = Pki::load_or_create(dir).context("cannot set up the certificate authority")?;
    let logs = LogStore::new(&dir.join("logs")).context("cannot create the log dir")?;
    let images = images::ImageStore::open(&dir.join("images")).context("cannot open the image store")?;
    let uploads = uploads::UploadStore::open(&dir.join("uploads")).context("cannot open the upload store")?;
    let vault = vault::Vault::open_or_create(dir).context("cannot open the secrets' key")?;
    let backends = backends::Backends::start(config.aws.clone()).await?;

    let (admin_token, join_token) = bootstrap_tokens(dir, &store, &pki.ca_hash())?;
    let health = metrics::health::Health::load(&store, config.gpu_auto_return)?;

    let (updates, updates_rx) = std::sync::mpsc::channel();
    let state = Arc::new(State {
        config: config.clone(),
        store,
        pki,
        logs,
        sessions: sessions::Sessions::default(),
        scheduler: scheduling::handle::Handle::default(),
        tasks: TaskTracker::new(),
        balancer: api::Balancer::default(),
        probes: probes::Probes::default(),
        autoscaler: Arc::default(),
        activity: Arc::default(),
        updates,
        updates_waiting: std::sync::atomic::AtomicUsize::new(0),
        https: !matches!(config.http_tls, HttpTls::Off),
        quic_port: std::sync::OnceLock::new(),
        http_port: std::sync::OnceLock::new(),
        agent_dist: Arc::new(api::AgentDist::new(config.agent_binary.clone())),
        images,
        uploads,
        backends,
        interfaces: fleet_nodes::Interfaces::default(),
        vault,
        metrics: metrics::Metrics::default(),
        health,
        telemetry: metrics::prometheus::Telemetry::default(),
    });
    // A restart is not a node loss: nodes with jobs get the restart grace to come back (their
    // agents notice the restart within seconds, by a stateless reset or their idle timeout), and
    // dev environments their full inactivity time.
    let grace = tokio::time::Instant::now() + config.restart_grace.saturating_sub(config.node_timeout);
    for job in state.store.placed_jobs()? {
        if let Some(node) = &job.node_id {
            state.sessions.expect(node, grace);
        }
        if let Some(limit) = scheduler::inactivity_limit(&job.configuration) {
            state.activity.watch(&job.id, limit);
        }
    }

    let tasks = state.tasks.clone();
    {
        let (state, shutdown) = (state.clone(), shutdown.child_token());
        std::thread::Builder::new()
            .name("corral-updates".into())
            .spawn(move || agents::apply_updates(&state, updates_rx, &shutdown))
            .context("cannot start the updates thread")?;
    }
    // The agents' connections (the QUIC endpoint, every session, heartbeats) run on a runtime of
    // their own: the HTTP API and the scheduler do synchronous store work, and under load they must
    // never delay a heartbeat into a node declared unreachable.
    let agents_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("corral-agents")
        .enable_all()
        .build()
        .context("cannot start the agents' runtime")?;
    let endpoint = {
        let _inside = agents_runtime.enter();
        agents::bind(&state, config.quic_listen)?
    };
    let quic_addr = endpoint.local_addr().context("quic endpoint has no address")?;
    let _ = state.quic_port.set(quic_addr.port());
    agents_runtime.spawn(tasks.track_future(agents::serve(
        endpoint,
        state.clone(),
        shutdown.child_token(),
        tasks.clone(),
    )));

    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http_listen))?;
    let http_addr = listener.local_addr()?;
    let _ = state.http_port.set(http_addr.port());
    let tls = match &config.http_tls {
        HttpTls::Off => None,
        HttpTls::Own(names) => Some(state.pki.https_server_config(names).context("cannot make the HTTPS certificate")?),
        HttpTls::Files { cert, key } => {
            Some(pki::https_server_config_from_files(cert, key).context("cannot use the given HTTPS certificate")?)
        }
    };
    tasks.spawn(api::serve(listener, tls, state.clone(), shutdown.child_token()));
    tasks.spawn(scheduler::run(state.clone(), shutdown.child_token()));
    tasks.spawn(lifecycle::watch_nodes(state.clone(), shutdown.child_token()));
    tasks.spawn(seen::run(state.clone(), shutdown.child_token()));
    tasks.spawn(probes::run(state.clone(), shutdown.child_token()));
    tasks.spawn(autoscale::run(state.clone(), shutdown.child_token()));
    tasks.spawn(schedules::run(state.clone(), shutdown.child_token()));
    tasks.spawn(prune_events(state.clone(), shutdown.child_token()));
    tasks.spawn(prune_metrics(state.clone(), shutdown.child_token()));
    let mut metrics_addr = None;
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for /metrics on {addr}"))?;
        let bound = listener.local_addr()?;
        tracing::info!(addr = %bound, "serving /metrics without authentication");
        metrics_addr = Some(bound);
        tasks.spawn(api::metrics::serve_open(listener, state.clone(), shutdown.child_token()));
    }
    tasks.spawn(router_groups::run(state.clone(), shutdown.child_token()));
    tasks.spawn(upgrade::run(state.clone(), shutdown.child_token()));
    #[cfg(feature = "aws")]
    tasks.spawn(elastic::run(state.clone(), shutdown.child_token()));
    #[cfg(feature = "aws")]
    tasks.spawn(volumes::ebs_reconciler(state.clone(), shutdown.child_token()));

    let agents_runtime = AgentsRuntime(Some(agents_runtime));
    Ok(Running { http_addr, quic_addr, metrics_addr, admin_token, join_token, state, tasks, agents_runtime })
}

/// How long the coordinator waits for its tasks after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use corral_proto::job::TerminationReason;

    use super::*;

    #[test]
    fn an_agent_before_protocol_3_is_told_agent_error_for_gpu_error() {
        let stop = |reason| CoordinatorMessage::StopJob { job_id: "j1".into(), abort: true, reason };
        assert_eq!(for_protocol("n", 2, stop(TerminationReason::GpuError)), Some(stop(TerminationReason::AgentError)));
        assert_eq!(for_protocol("n", 3, stop(TerminationReason::GpuError)), Some(stop(TerminationReason::GpuError)));
        assert_eq!(
            for_protocol("n", 2, stop(TerminationReason::StoppedByUser)),
            Some(stop(TerminationReason::StoppedByUser))
        );
    }
}
