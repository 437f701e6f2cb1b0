//! The QUIC endpoint agents dial: enrollment, mutual-TLS sessions, job commands, reports and logs.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use quinn::crypto::rustls::QuicServerConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use corral_proto::ids::{JobId, NodeId, RunId};
use corral_proto::inventory::HostInventory;
use corral_proto::job::{JobState, TerminationReason};
use corral_proto::wire::io::{read_frame, write_frame};
use corral_proto::wire::{
    AgentMessage, ContainerReport, CoordinatorMessage, EnrollRequest, Enrollment, Hello, JobUpdate, Refusal,
    RefusalCode, Welcome, negotiate,
};

use crate::nodes::sessions::{Reset, Session};
use crate::secrets::{random_hex, sha256_hex};
use crate::store::{JobRow, NodeRow};
use crate::{State, VERSION};

mod reconcile;
mod streams;
use streams::{receive_logs, serve_stream};

/// Bi-streams one agent may have open at once (its jobs' logs, fetches).
const AGENT_STREAMS: u32 = 8192;
/// What a connection starts with. quinn keeps state for every stream the peer is allowed to open,
/// about 0.7 KiB each: 8,192 from the start cost 7 GiB at 10,000 nodes. A node that uses most of
/// its allowance gets twice as many (see `session`), up to [`AGENT_STREAMS`].
const AGENT_STREAMS_AT_FIRST: u32 = 128;
/// How close to its allowance a node may come before it is raised.
const AGENT_STREAMS_HEADROOM: u32 = 32;

pub fn bind(state: &State, addr: SocketAddr) -> anyhow::Result<quinn::Endpoint> {
    let tls = state.pki.quic_server_config()?;
    let crypto = QuicServerConfig::try_from(tls).context("tls configuration unusable for QUIC")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
    // Streams an agent opens: one per job's log for the job's whole life, plus image and binary
    // fetches. A node with many jobs is allowed more as it needs them (`session`).
    transport.max_concurrent_bidi_streams(AGENT_STREAMS_AT_FIRST.into());
    config.transport_config(Arc::new(transport));
    let socket =
        std::net::UdpSocket::bind(addr).with_context(|| format!("cannot listen for agents (QUIC) on {addr}"))?;
    enlarge_receive_buffer(&socket);
    let endpoint_config = endpoint_config(&state.config.data_dir)?;
    quinn::Endpoint::new(endpoint_config, Some(config), socket, Arc::new(quinn::TokioRuntime))
        .with_context(|| format!("cannot listen for agents (QUIC) on {addr}"))
}

/// The endpoint's keys are kept in the data dir (`quic-reset-key`): after a restart the coordinator
/// still recognizes the connection ids it issued before (they carry a check made with the key) and
/// answers an agent's packets for a connection it no longer has with a stateless reset the agent
/// can verify (its token is derived from the key and the connection id). The agent reconnects at
/// once instead of waiting out its idle timeout.
fn endpoint_config(dir: &std::path::Path) -> anyhow::Result<quinn::EndpointConfig> {
    let (secret, _) = crate::read_or_create(&dir.join("quic-reset-key"), || Ok(random_hex(32)))?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("connection ids {secret}").as_bytes());
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&digest.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    // Every node's first packet after a restart asks for a reset: 10,000 of them must not wait
    // behind a rate limit meant for one peer (a reset is always smaller than what caused it).
    config.min_reset_interval(Duration::from_micros(50));
    Ok(config)
}

/// The receive buffer the agents' socket asks for. Every node's datagrams arrive at this one
/// socket: when thousands of nodes answer at once (80,000 jobs starting), the kernel's default
/// (208 KiB, a few hundred datagrams) overflows and drops them, and each drop costs a
/// retransmission a round trip or more later.
const RECEIVE_BUFFER: usize = 4 << 20;

fn enlarge_receive_buffer(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(RECEIVE_BUFFER);
    match sock.recv_buffer_size() {
        // Linux grants at most `net.core.rmem_max` and reports twice what it granted.
        Ok(got) if got >= RECEIVE_BUFFER => {}
        // Harmless for a few nodes, so said quietly; a large cluster's operator finds it here.
        Ok(got) => tracing::info!(
            "the agents' UDP receive buffer is {} KiB (asked for {} KiB): with thousands of nodes, \
             datagrams may be dropped; raise the limit with `sysctl -w net.core.rmem_max={RECEIVE_BUFFER}`",
            got / 1024,
            RECEIVE_BUFFER / 1024
        ),
        Err(e) => tracing::warn!("cannot read the agents' UDP receive buffer size: {e}"),
    }
}

pub async fn serve(endpoint: quinn::Endpoint, state: Arc<State>, shutdown: CancellationToken, tasks: TaskTracker) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let state = state.clone();
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    let remote = incoming.remote_address();
                    if let Err(e) = handle_connection(incoming, state, shutdown).await {
                        tracing::warn!(%remote, "agent connection ended: {e:#}");
                    }
                });
            }
            () = shutdown.cancelled() => break,
        }
    }
    endpoint.close(0u32.into(), b"coordinator shutting down");
    endpoint.wait_idle().await;
}

fn peer_fingerprint(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| sha256_hex(c))
}

async fn refuse(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    code: RefusalCode,
    message: String,
) -> anyhow::Result<()> {
    tracing::warn!(remote = %conn.remote_address(), ?code, "refused agent: {message}");
    write_frame(send, &CoordinatorMessage::Refused(Refusal { code, message })).await?;
    let _ = send.finish();
    // Give the agent a moment to read the refusal before the connection goes.
    let _ = tokio::time::timeout(Duration::from_secs(3), conn.closed()).await;
    Ok(())
}

async fn handle_connection(
    incoming: quinn::Incoming,
    state: Arc<State>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let remote = incoming.remote_address();
    let conn = incoming.await.map_err(|e| {
        // A TLS alert travels as a QUIC crypto error, 0x100 + the alert (RFC 9001 4.8): sent by
        // the agent when it refused this side, raised here when this side refused the agent's.
        // Only the certificate alerts (42 to 46, 48 unknown CA, 51 a signature that does not
        // verify, 116 none given) say so.
        let crypto = |code: quinn::TransportErrorCode| {
            u64::from(code).checked_sub(0x100).is_some_and(|alert| matches!(alert, 42..=46 | 48 | 51 | 116))
        };
        let why = match &e {
            quinn::ConnectionError::ConnectionClosed(c) if crypto(c.error_code) => {
                "the agent refused this coordinator's certificate (it trusts another coordinator's CA)"
            }
            quinn::ConnectionError::TransportError(t) if crypto(t.code) => {
                "refused an agent whose certificate is not signed by this coordinator's CA (enrolled elsewhere?)"
            }
            _ => "handshake failed",
        };
        anyhow::Error::new(e).context(why)
    })?;
    let fingerprint = peer_fingerprint(&conn);
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
        .await
        .context("agent opened no control stream")??;
    let hello = tokio::time::timeout(Duration::from_secs(10), read_frame::<AgentMessage, _>(&mut recv))
        .await
        .context("agent sent no Hello within 10 s")?;
    let hello = match hello? {
        Some(AgentMessage::Hello(h)) => h,
        _ => {
            return refuse(&conn, &mut send, RefusalCode::BadRequest, "the first message must be Hello".into()).await;
        }
    };
    let Some(protocol) = negotiate(hello.protocol_min, hello.protocol_max) else {
        let msg = format!(
            "agent speaks protocol {}..{}, this coordinator {}..{}: upgrade the older side",
            hello.protocol_min,
            hello.protocol_max,
            corral_proto::wire::PROTOCOL_MIN,
            corral_proto::wire::PROTOCOL_MAX
        );
        return refuse(&conn, &mut send, RefusalCode::UnsupportedProtocol, msg).await;
    };
    match (fingerprint, &hello.enroll) {
        (None, Some(req)) => enroll(&state, &conn, &mut send, req).await,
        (None, None) => {
            let msg = "no client certificate: enroll this node with a join token first".to_owned();
            refuse(&conn, &mut send, RefusalCode::NoCertificate, msg).await
        }
        (Some(fp), _) => match state.store.node_by_fingerprint(&fp)? {
            None => {
                let msg = "this node's certificate is unknown to the coordinator (its data was reset?): enroll again with a join token".to_owned();
                refuse(&conn, &mut send, RefusalCode::UnknownNode, msg).await
            }
            Some(node) if node.revoked => {
                let msg = format!("node {} was removed from the cluster; its certificate is revoked", node.name);
                refuse(&conn, &mut send, RefusalCode::Revoked, msg).await
            }
            Some(node) => {
                let span = tracing::info_span!("agent", node = %node.name);
                session(state, conn, node, protocol, &hello, send, recv, remote, shutdown).instrument(span).await
            }
        },
    }
}

async fn enroll(
    state: &State,
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    req: &EnrollRequest,
) -> anyhow::Result<()> {
    let node_id = NodeId(format!("n{}", random_hex(6)));
    // The request is checked (and signed) before a use of the token is spent on it.
    let signed = state.pki.sign_node(&req.csr_der, node_id.as_str());
    let token_hash = sha256_hex(req.secret.as_bytes());
    let token_fleet = match state.store.use_join_token(&token_hash)? {
        Ok(fleet) => fleet,
        Err(why) => return refuse(conn, send, RefusalCode::WrongSecret, why.to_owned()).await,
    };
    let (cert_pem, fingerprint) = match signed {
        Ok(v) => v,
        Err(e) => {
            return refuse(conn, send, RefusalCode::BadRequest, format!("bad certificate request: {e}")).await;
        }
    };
    let base = sanitize_name(&req.hostname);
    let taken: HashSet<String> = state.store.node_names_like(&base)?.into_iter().collect();
    let name = (1..)
        .map(|i| if i == 1 { base.clone() } else { format!("{base}-{i}") })
        .find(|n| !taken.contains(n))
        .unwrap_or(base);
    let fleet = token_fleet.or_else(|| req.fleet.clone());
    state.store.add_node(&node_id, &name, fleet.as_deref(), &fingerprint)?;
    tracing::info!(node = %name, id = %node_id, remote = %conn.remote_address(), "node enrolled");
    let detail = format!("with join token {} from {}", &token_hash[..12], conn.remote_address());
    if let Err(e) = state.store.record_event(None, None, "node.enroll", Some(&name), Some(&detail)) {
        tracing::error!(node = %name, "cannot record the enrollment: {e:#}");
    }
    let reply = CoordinatorMessage::Enrolled(Enrollment {
        node_id,
        certificate_pem: cert_pem,
        ca_pem: state.pki.ca_pem().to_owned(),
    });
    write_frame(send, &reply).await?;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    Ok(())
}

pub(crate) fn sanitize_name(hostname: &str) -> String {
    let s: String = hostname
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_lowercase() } else { '-' })
        .take(40)
        .collect();
    if s.is_empty() { "node".into() } else { s }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    state: Arc<State>,
    conn: quinn::Connection,
    node: NodeRow,
    protocol: u16,
    hello: &Hello,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    remote: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let welcome = Welcome {
        protocol,
        node_id: node.id.clone(),
        coordinator_version: VERSION.to_owned(),
        heartbeat_secs: state.config.heartbeat_secs,
    };
    write_frame(&mut send, &CoordinatorMessage::Welcome(welcome)).await?;
    state.store.node_connected(&node.id, &remote.ip().to_string(), &hello.agent_version)?;

    let (link, mut rx) = Session::new(node.name.clone(), conn.clone(), hello.agent_version.clone(), protocol);
    state.sessions.open(&node.id, link.clone());
    tracing::info!(node = %node.name, %remote, "agent connected");
    let node = Arc::new(node.without_inventory());
    state.scheduler.node_changed(&node.id);

    let session_done = shutdown.child_token();
    let writer = {
        let done = session_done.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    msg = rx.recv() => {
                        let Some(msg) = msg else { break };
                        if write_frame(&mut send, &msg).await.is_err() { break; }
                    }
                    () = done.cancelled() => break,
                }
            }
        })
    };
    let log_acceptor = {
        let conn = conn.clone();
        let state = state.clone();
        let node_id = node.id.clone();
        let done = session_done.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    stream = conn.accept_uni() => {
                        let Ok(stream) = stream else { break };
                        let state2 = state.clone();
                        let node = node_id.clone();
                        state.tasks.spawn(async move {
                            if let Err(e) = receive_logs(&state2, &node, stream).await {
                                tracing::warn!("log stream ended: {e:#}");
                            }
                        });
                    }
                    () = done.cancelled() => break,
                }
            }
        })
    };

    // Streams the agent opens: job logs, image and binary fetches.
    let image_server = {
        let (conn, state, done) = (conn.clone(), state.clone(), session_done.clone());
        let (node_name, node_id) = (node.name.clone(), node.id.clone());
        tokio::spawn(async move {
            let open = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let mut allowed = AGENT_STREAMS_AT_FIRST;
            loop {
                tokio::select! {
                    stream = conn.accept_bi() => {
                        let Ok((send, recv)) = stream else { break };
                        let now_open = open.fetch_add(1, Ordering::Relaxed) + 1;
                        if now_open + AGENT_STREAMS_HEADROOM > allowed && allowed < AGENT_STREAMS {
                            allowed = (allowed * 2).min(AGENT_STREAMS);
                            conn.set_max_concurrent_bi_streams(allowed.into());
                        }
                        let (state2, node_name, node_id) = (state.clone(), node_name.clone(), node_id.clone());
                        let open = open.clone();
                        state.tasks.spawn(async move {
                            if let Err(e) = serve_stream(&state2, &node_id, send, recv).await {
                                tracing::warn!(node = %node_name, "transfer ended: {e:#}");
                            }
                            open.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    () = done.cancelled() => break,
                }
            }
        })
    };

    let result = async {
        loop {
            let msg = tokio::select! {
                msg = read_frame::<AgentMessage, _>(&mut recv) => msg?,
                () = session_done.cancelled() => None,
            };
            let Some(msg) = msg else { break };
            handle_message(&state, &node, &link, msg)?;
        }
        anyhow::Ok(())
    }
    .await;
    // An agent that closed the connection on purpose (shutdown, restart) ended the session cleanly.
    let closed_cleanly = matches!(conn.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == 0u32.into());
    let result = if closed_cleanly { Ok(()) } else { result };

    session_done.cancel();
    let _ = writer.await;
    let _ = log_acceptor.await;
    let _ = image_server.await;
    state.sessions.close(&node.id, &link);
    state.scheduler.node_changed(&node.id);
    conn.close(0u32.into(), b"session ended");
    tracing::info!(node = %node.name, "agent disconnected");
    result
}

fn handle_message(state: &Arc<State>, node: &Arc<NodeRow>, link: &Session, msg: AgentMessage) -> anyhow::Result<()> {
    state.sessions.heard_from(&node.id);
    let report = match msg {
        AgentMessage::Hello(_) => return Ok(()),
        AgentMessage::Heartbeat { seq } => {
            let _ = link.send(CoordinatorMessage::HeartbeatAck { seq });
            return Ok(());
        }
        AgentMessage::InterruptionNotice { action, time } => {
            crate::scheduling::lifecycle::spot_interrupted(state, &node.id, &node.name, &action, &time)?;
            return Ok(());
        }
        AgentMessage::FetchImage { .. }
        | AgentMessage::FetchAgent { .. }
        | AgentMessage::OpenLog { .. }
        | AgentMessage::FetchUpload { .. } => {
            tracing::warn!(node = %node.name, "a fetch on the control stream, ignored");
            return Ok(());
        }
        AgentMessage::TunnelReply(_) => {
            tracing::warn!(node = %node.name, "a tunnel reply on the control stream, ignored");
            return Ok(());
        }
        AgentMessage::Inventory(inv) => Report::Inventory(Box::new(inv)),
        AgentMessage::Containers(reports) => Report::Containers(reports),
        AgentMessage::JobUpdate(update) => Report::Job(update),
        AgentMessage::Volumes(volumes) => Report::Volumes(volumes),
        AgentMessage::Metrics(report) => {
            // Memory, but for a GPU's health changing (carried out off this thread).
            crate::metrics::received(state, &node.id, *report);
            return Ok(());
        }
        AgentMessage::Interfaces { addresses } => {
            // Memory only (sent on every connection, before the inventory that makes the scheduler
            // read the node again).
            state.interfaces.set(&node.id, addresses.into_iter().take(256).collect());
            state.scheduler.node_changed(&node.id);
            return Ok(());
        }
    };
    // Everything that touches the store goes to the updates thread, in arrival order, so that a
    // flood of reports (80,000 jobs starting) never holds up this thread's heartbeats; it is
    // applied here only when that queue is full.
    let q = QueuedReport { node: node.clone(), link: link.clone(), report };
    let waiting = state.updates_waiting.fetch_add(1, Ordering::Relaxed);
    let refused = if waiting < UPDATES_QUEUED { state.updates.send(q).err().map(|e| e.0) } else { Some(q) };
    if let Some(q) = refused {
        state.updates_waiting.fetch_sub(1, Ordering::Relaxed);
        let mut batch = Batch::default();
        batch.apply(state, q)?;
        batch.flush(state)?;
    }
    Ok(())
}

/// What an agent reported, waiting for the updates thread.
pub struct QueuedReport {
    node: Arc<NodeRow>,
    link: Session,
    report: Report,
}

enum Report {
    Job(JobUpdate),
    Inventory(Box<HostInventory>),
    Containers(Vec<ContainerReport>),
    Volumes(Vec<corral_proto::wire::VolumeReport>),
}

/// How many reports may wait for the updates thread (memory is taken only as they come).
pub const UPDATES_QUEUED: usize = 1_000_000;
/// Reports applied in one transaction at most.
const BATCH: usize = 1_024;

/// The updates thread: applies agents' reports in the order they came, until shutdown. Progress
/// reports (a job pulling, running) that arrive together are written in one transaction.
pub fn apply_updates(state: &State, rx: std::sync::mpsc::Receiver<QueuedReport>, shutdown: &CancellationToken) {
    let mut batch = Batch::default();
    while !shutdown.is_cancelled() {
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(q) => q,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let more = std::iter::from_fn(|| rx.try_recv().ok()).take(BATCH - 1);
        let mut reporters = Vec::new();
        for mut q in std::iter::once(first).chain(more) {
            state.updates_waiting.fetch_sub(1, Ordering::Relaxed);
            // This thread may wait a moment for room in a node's queue (a reconciliation's burst).
            q.link = q.link.patient();
            let node = q.node.clone();
            if !reporters.contains(&node.id) {
                reporters.push(node.id.clone());
            }
            if let Err(e) = batch.apply(state, q) {
                tracing::error!(node = %node.name, "applying an agent's report failed: {e:#}");
                repeat_reports(state, &node.id);
            }
        }
        if let Err(e) = batch.flush(state) {
            tracing::error!("recording jobs' progress failed: {e:#}");
            for node in &reporters {
                repeat_reports(state, node);
            }
        }
    }
}

/// A report could not be recorded (the disk is full, the database busy): the node's session is
/// reset, so that its agent reconnects and repeats everything it knows — nothing an agent said is
/// lost to a failed write.
fn repeat_reports(state: &State, node: &NodeId) {
    state.sessions.reset(node, Reset::Unrecorded);
}

/// Progress reports not yet written, and the runs whose start may follow from them.
#[derive(Default)]
struct Batch {
    progress: Vec<(JobId, JobState, Option<String>)>,
    /// The jobs with an entry in `progress`: a job's reports from its node in one batch (pulling,
    /// then running) become one write, of the last state and the last message, after one lookup.
    seen: HashMap<JobId, Seen>,
    started: Vec<RunId>,
}

/// What a batch knows of a job it holds reports of.
struct Seen {
    /// Its entry in `progress`.
    index: usize,
    /// The node that reported it, where it is placed (checked with its first report).
    node: NodeId,
    /// Stored as running, or reported so in this batch.
    running: bool,
    /// Its run, when a gang sibling waits for it to start (`startup_order`).
    held_run: Option<RunId>,
}

impl Batch {
    fn apply(&mut self, state: &State, q: QueuedReport) -> anyhow::Result<()> {
        let QueuedReport { node, link, report } = q;
        match report {
            Report::Job(u) if u.reason.is_none() => self.progress(state, &node, &link, u),
            other => {
                // Anything else reads or writes more than a job's state: what came before it
                // is written first.
                self.flush(state)?;
                match other {
                    Report::Job(u) => apply_update(state, &node, &link, u),
                    Report::Inventory(inv) => {
                        tracing::info!(node = %node.name, gpus = inv.gpus.len(), cpus = inv.cpu_cores, "inventory");
                        state.store.set_inventory(&node.id, &inv)?;
                        state.scheduler.node_changed(&node.id);
                        Ok(())
                    }
                    Report::Containers(reports) => reconcile(state, &node, &link, &reports),
                    Report::Volumes(volumes) => crate::volumes::reported(state, &node.id, &link, &volumes),
                }
            }
        }
    }

    /// A job's progress: queued for the batch's transaction.
    fn progress(&mut self, state: &State, node: &NodeRow, link: &Session, u: JobUpdate) -> anyhow::Result<()> {
        if self.seen.get(&u.job_id).is_none_or(|seen| seen.node != node.id) {
            let Some(job) = placed_here(state, node, link, &u.job_id)? else { return Ok(()) };
            if job.state.is_finished() {
                // The job ended here (stopped while it was being placed, say) but its container
                // lives: it holds resources nobody accounts for. Stop it.
                tracing::warn!(job = %u.job_id, node = %node.name, "container alive for a finished job; stopping it");
                let _ = link.send(CoordinatorMessage::StopJob {
                    job_id: u.job_id,
                    abort: true,
                    reason: job.termination_reason.unwrap_or(TerminationReason::AbortedByUser),
                });
                return Ok(());
            }
            let seen = Seen {
                index: self.progress.len(),
                node: node.id.clone(),
                running: job.state == JobState::Running,
                // Its siblings are placed with it, so whether any waits is known now.
                held_run: job.held_sibling.then_some(job.run_id),
            };
            self.progress.push((u.job_id.clone(), job.state, None));
            self.seen.insert(u.job_id.clone(), seen);
        }
        let Some(seen) = self.seen.get_mut(&u.job_id) else { return Ok(()) };
        if u.state == JobState::Running && !seen.running {
            // A gang member running may let the others start.
            seen.running = true;
            self.started.extend(seen.held_run.clone());
            state.activity.started(&u.job_id);
        }
        let entry = &mut self.progress[seen.index];
        entry.1 = u.state;
        if u.message.is_some() {
            entry.2 = u.message;
        }
        Ok(())
    }

    fn flush(&mut self, state: &State) -> anyhow::Result<()> {
        if !self.progress.is_empty() {
            state.store.set_progress_many(&self.progress)?;
            self.progress.clear();
            self.seen.clear();
        }
        let mut started = std::mem::take(&mut self.started);
        started.sort_unstable();
        started.dedup();
        for run in started {
            crate::scheduling::lifecycle::start_allowed(state, &run)?;
        }
        Ok(())
    }
}

/// The job a report names, when it is placed on the reporting node; otherwise its container is one
/// this node should not have (unknown, or placed elsewhere) and is removed.
fn placed_here(
    state: &State,
    node: &NodeRow,
    link: &Session,
    job: &JobId,
) -> anyhow::Result<Option<crate::store::JobBrief>> {
    let brief = state.store.job_brief(job)?.filter(|j| j.node_id.as_ref() == Some(&node.id));
    if brief.is_none() {
        tracing::warn!(%job, node = %node.name, "update for a job not placed here; removing its container");
        discard(link, job.clone());
    }
    Ok(brief)
}

/// A job's end, as its node reported it.
fn apply_update(state: &State, node: &NodeRow, link: &Session, u: JobUpdate) -> anyhow::Result<()> {
    if placed_here(state, node, link, &u.job_id)?.is_none() {
        return Ok(());
    }
    if let Some(reason) = u.reason {
        if state.finish_job(&u.job_id, reason, u.exit_code, u.message.as_deref())? {
            tracing::info!(job = %u.job_id, %reason, exit_code = ?u.exit_code, "job finished");
        }
        let _ = link.send(CoordinatorMessage::ForgetJob { job_id: u.job_id });
        state.scheduler.wake();
    }
    Ok(())
}

/// Has the agent kill and remove a container Corral does not want.
fn discard(link: &Session, job_id: JobId) {
    let _ = link.send(CoordinatorMessage::StopJob {
        job_id: job_id.clone(),
        abort: true,
        reason: TerminationReason::AbortedByUser,
    });
    let _ = link.send(CoordinatorMessage::ForgetJob { job_id });
}

/// Converges the node's containers with the jobs placed on it, from the full report the agent sends
/// on every connection: reads what [`reconcile::reconcile`] decides from, and carries it out.
fn reconcile(state: &State, node: &NodeRow, link: &Session, reports: &[ContainerReport]) -> anyhow::Result<()> {
    use reconcile::{Action, Known, Placed};
    let reported: HashSet<&JobId> = reports.iter().map(|r| &r.job_id).collect();
    let jobs: HashMap<JobId, JobRow> =
        state.store.placed_jobs_on(&node.id)?.into_iter().map(|j| (j.id.clone(), j)).collect();
    let mut placed = Vec::with_capacity(jobs.len());
    for job in jobs.values() {
        let may_start = job.state == JobState::Provisioning
            && !reported.contains(&job.id)
            && crate::scheduling::lifecycle::may_start(job, &state.store.latest_jobs(&job.run_id)?);
        placed.push(Placed {
            id: job.id.clone(),
            state: job.state.clone(),
            termination_reason: job.termination_reason,
            may_start,
        });
    }
    placed.sort_by(|a, b| a.id.cmp(&b.id));
    let mut known = HashMap::new();
    for r in reports.iter().filter(|r| !jobs.contains_key(&r.job_id)) {
        let job = state.store.job_brief(&r.job_id)?;
        let here = job.filter(|j| j.node_id.as_ref() == Some(&node.id) && j.state.is_finished());
        known.insert(r.job_id.clone(), here.map_or(Known::NotHere, |j| Known::EndedHere(j.termination_reason)));
    }
    for action in reconcile::reconcile(&placed, reports, &known) {
        match action {
            Action::RepeatStop { job, reason, abort } => {
                link.send(CoordinatorMessage::StopJob { job_id: job, abort, reason });
            }
            Action::Start(job) => {
                if let Some(spec) = jobs.get(&job).and_then(|j| j.spec.clone()) {
                    state.send_on(link, CoordinatorMessage::StartJob(Box::new(spec)));
                }
            }
            Action::End { job, reason, message } => {
                tracing::warn!(%job, node = %node.name, %reason, "{message}");
                state.finish_job(&job, reason, None, Some(message))?;
            }
            Action::Forget(job) => {
                link.send(CoordinatorMessage::ForgetJob { job_id: job });
            }
            Action::Kill { job, reason } => {
                link.send(CoordinatorMessage::StopJob { job_id: job, abort: true, reason });
            }
            Action::Discard(job) => discard(link, job),
        }
    }
    state.scheduler.wake();
    Ok(())
}
