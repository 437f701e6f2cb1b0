//! The QUIC link to the coordinator: enrollment, then one mutual-TLS session at a time, redialed
//! with backoff whenever it drops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use quinn::crypto::rustls::QuicClientConfig;
use tokio_util::sync::CancellationToken;

use corral_proto::inventory::HostInventory;
use corral_proto::token::JoinToken;
use corral_proto::wire::io::{read_frame, write_frame};
use corral_proto::wire::{
    AGENT_PROTOCOL_MIN, AgentMessage, COORDINATOR_SERVER_NAME, CoordinatorMessage, EnrollRequest, Hello, PROTOCOL_MAX,
    RefusalCode, Welcome,
};

use crate::identity::{Identity, NodeFile, PinnedCaVerifier};
use crate::jobs::Jobs;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the link gave up for good: retrying would not help.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("the coordinator refused this node: {0}")]
    Refused(String),
    /// The node was removed from the cluster (`corral node remove`).
    #[error("the coordinator refused this node: {0}")]
    Revoked(String),
    #[error("enrollment failed: {0}")]
    Enroll(String),
}

/// A client endpoint on an ephemeral UDP port.
pub fn endpoint() -> anyhow::Result<quinn::Endpoint> {
    quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0))).context("cannot open a UDP socket")
}

/// Streams the coordinator may open at once: each tunnelled connection (service request, forwarded
/// port) is one.
const MAX_TUNNELS: u32 = 1024;

/// How long the link may be silent before the agent counts it lost. Well under the
/// coordinator's node timeout (10 s by default): after a coordinator restart the agent must be back
/// before the coordinator would miss it. A restarted coordinator usually answers sooner still,
/// with a stateless reset.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(6);
/// Keep-alives on an idle link, a few per idle timeout.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// How long one attempt to connect may take (a coordinator that is down does not answer at all).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between attempts to reconnect.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// QUIC over `tls`. A session (`keep_alive`) has a keep-alive every 2 s and a 6 s idle timeout;
/// anything else (enrollment, a probe, simulated nodes that must fall silent when killed) 15 s.
pub fn quic_config(tls: rustls::ClientConfig, keep_alive: bool) -> anyhow::Result<quinn::ClientConfig> {
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    let idle = if keep_alive { IDLE_TIMEOUT } else { Duration::from_secs(15) };
    transport.max_idle_timeout(Some(idle.try_into()?));
    transport.max_concurrent_bidi_streams(MAX_TUNNELS.into());
    if keep_alive {
        transport.keep_alive_interval(Some(KEEP_ALIVE));
    }
    config.transport_config(Arc::new(transport));
    Ok(config)
}

pub async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve the coordinator address {addr:?}"))?
        .next()
        .with_context(|| format!("the coordinator address {addr:?} resolves to nothing"))
}

/// Enrolls with a join token: checks the coordinator's CA against the token, sends the secret with
/// a certificate request, and stores the certificate it gets back.
pub async fn enroll(
    coordinator: &str,
    token: &JoinToken,
    state_dir: &std::path::Path,
    hostname: &str,
    fleet: Option<String>,
) -> anyhow::Result<Identity> {
    let addr = resolve(coordinator).await?;
    let verifier = Arc::new(PinnedCaVerifier::new(&token.ca_hash));
    let config = quic_config(verifier.client_config()?, false)?;
    let endpoint = endpoint()?;
    let conn = match endpoint.connect_with(config, addr, COORDINATOR_SERVER_NAME)?.await {
        Ok(c) => c,
        Err(e) => {
            let why = verifier.failure.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return Err(
                Fatal::Enroll(why.unwrap_or_else(|| format!("cannot reach the coordinator at {addr}: {e}"))).into()
            );
        }
    };
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Hello {
        protocol_min: AGENT_PROTOCOL_MIN,
        protocol_max: PROTOCOL_MAX,
        agent_version: crate::upgrade::agent_version(),
        enroll: Some(EnrollRequest {
            secret: token.secret.clone(),
            csr_der: csr.der().to_vec(),
            hostname: hostname.to_owned(),
            fleet,
        }),
    };
    write_frame(&mut send, &AgentMessage::Hello(hello)).await?;
    let reply = read_frame::<CoordinatorMessage, _>(&mut recv).await.context("no answer to the enrollment request")?;
    conn.close(0u32.into(), b"enrolled");
    match reply {
        Some(CoordinatorMessage::Enrolled(e)) => {
            let node = NodeFile { node_id: e.node_id, coordinator: coordinator.to_owned() };
            Identity::save(state_dir, &node, &key, &e.certificate_pem, &e.ca_pem)?;
            tracing::info!(node = %node.node_id, "enrolled");
            Ok(Identity::load(state_dir)?.context("the identity just written cannot be read back")?)
        }
        Some(CoordinatorMessage::Refused(r)) => Err(Fatal::Enroll(r.message).into()),
        other => Err(Fatal::Enroll(format!("unexpected answer: {other:?}")).into()),
    }
}

/// Enrolls like [`enroll`], over an endpoint the caller owns, and returns the identity without
/// writing any file. For simulated nodes (tests, benchmarks), thousands of which share one endpoint.
pub async fn enroll_in_memory(
    endpoint: &quinn::Endpoint,
    remote: SocketAddr,
    token: &JoinToken,
    hostname: &str,
    fleet: Option<String>,
) -> anyhow::Result<Identity> {
    let verifier = Arc::new(PinnedCaVerifier::new(&token.ca_hash));
    let config = quic_config(verifier.client_config()?, false)?;
    let conn = match endpoint.connect_with(config, remote, COORDINATOR_SERVER_NAME)?.await {
        Ok(c) => c,
        Err(e) => {
            let why = verifier.failure.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return Err(
                Fatal::Enroll(why.unwrap_or_else(|| format!("cannot reach the coordinator at {remote}: {e}"))).into()
            );
        }
    };
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = Hello {
        protocol_min: AGENT_PROTOCOL_MIN,
        protocol_max: PROTOCOL_MAX,
        agent_version: crate::upgrade::agent_version(),
        enroll: Some(EnrollRequest {
            secret: token.secret.clone(),
            csr_der: csr.der().to_vec(),
            hostname: hostname.to_owned(),
            fleet,
        }),
    };
    write_frame(&mut send, &AgentMessage::Hello(hello)).await?;
    let reply = read_frame::<CoordinatorMessage, _>(&mut recv).await.context("no answer to the enrollment request")?;
    conn.close(0u32.into(), b"enrolled");
    match reply {
        Some(CoordinatorMessage::Enrolled(e)) => {
            let node = NodeFile { node_id: e.node_id, coordinator: remote.to_string() };
            Ok(Identity::from_enrollment(node, &key, &e.certificate_pem, &e.ca_pem)?)
        }
        Some(CoordinatorMessage::Refused(r)) => Err(Fatal::Enroll(r.message).into()),
        other => Err(Fatal::Enroll(format!("unexpected answer: {other:?}")).into()),
    }
}

/// Keeps a session with the coordinator up until shutdown, redialing with exponential backoff.
pub async fn run(
    identity: &Identity,
    addr: &str,
    inventory: &HostInventory,
    jobs: Arc<Jobs>,
    metrics: Arc<crate::metrics::Collector>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = quic_config(identity.client_config()?, true)?;
    let endpoint = endpoint()?;
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        let started = tokio::time::Instant::now();
        let result = session(&endpoint, config.clone(), addr, inventory, &jobs, &metrics, &shutdown).await;
        jobs.set_connection(None);
        match result {
            Ok(()) => {}
            Err(e) => match e.downcast::<Fatal>() {
                Ok(Fatal::Revoked(why)) => {
                    // Removed from the cluster: its jobs were interrupted there (and may run
                    // elsewhere now), so nothing here may keep running them.
                    let removed = jobs.remove_all().await;
                    tracing::error!(
                        containers = removed,
                        "this node was removed from the cluster; its containers are removed"
                    );
                    return Err(Fatal::Revoked(why).into());
                }
                Ok(fatal) => return Err(fatal.into()),
                Err(e) => tracing::warn!("link to the coordinator lost: {e:#}"),
            },
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        tokio::select! {
            () = tokio::time::sleep(jitter(backoff)) => {}
            () = shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    endpoint.close(0u32.into(), b"agent shutting down");
    Ok(())
}

/// `d` give or take a quarter, so that a thousand nodes that lost their coordinator at once do not
/// come back in the same instant.
pub fn jitter(d: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte);
    d.mul_f64(0.75 + f64::from(byte[0]) / 510.0)
}

/// Dials the coordinator with the node's certificate and exchanges Hello/Welcome.
pub async fn handshake(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: &str,
) -> anyhow::Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream, Welcome)> {
    let remote = resolve(addr).await?;
    let attempt = async {
        let conn = endpoint.connect_with(config, remote, COORDINATOR_SERVER_NAME)?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let hello = Hello {
            protocol_min: AGENT_PROTOCOL_MIN,
            protocol_max: PROTOCOL_MAX,
            agent_version: crate::upgrade::agent_version(),
            enroll: None,
        };
        write_frame(&mut send, &AgentMessage::Hello(hello)).await?;
        let answer = read_frame::<CoordinatorMessage, _>(&mut recv).await?;
        anyhow::Ok((conn, send, recv, answer))
    };
    let attempt = async {
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))
    };
    let (conn, send, recv, answer) = attempt.await.map_err(|e| explain(e, remote))?;
    match answer {
        Some(CoordinatorMessage::Welcome(w)) => Ok((conn, send, recv, w)),
        Some(CoordinatorMessage::Refused(r)) => {
            conn.close(0u32.into(), b"refused");
            match r.code {
                RefusalCode::Revoked => Err(Fatal::Revoked(r.message).into()),
                RefusalCode::UnknownNode | RefusalCode::UnsupportedProtocol => Err(Fatal::Refused(r.message).into()),
                _ => anyhow::bail!("refused: {}", r.message),
            }
        }
        other => anyhow::bail!("unexpected first answer: {other:?}"),
    }
}

/// Says in words why a connection with the node's certificate failed, when TLS is the reason:
/// read from quinn's error (a TLS alert is a QUIC crypto error), not from its text.
fn explain(e: anyhow::Error, remote: SocketAddr) -> anyhow::Error {
    let tls = e.chain().find_map(|c| c.downcast_ref::<quinn::ConnectionError>()).and_then(tls_refusal);
    match tls {
        Some(TlsRefusal::ByPeer) => e.context(format!(
            "the coordinator at {remote} refused this node's certificate: the node was enrolled with another \
             coordinator, or that coordinator's data was reset; enroll again with a join token and a fresh state dir"
        )),
        Some(TlsRefusal::OfPeer) => e.context(format!(
            "the coordinator at {remote} presented a certificate not signed by the CA this node enrolled with: \
             is this the right coordinator? (to join another one, enroll again with its join token and a fresh state dir)"
        )),
        None => e.context(format!("cannot talk to the coordinator at {remote}")),
    }
}

/// Which side's TLS refused the handshake.
#[derive(Debug, PartialEq, Eq)]
enum TlsRefusal {
    /// The coordinator closed the connection with a TLS alert: it refused this node.
    ByPeer,
    /// This side's TLS refused the coordinator (its certificate).
    OfPeer,
}

fn tls_refusal(e: &quinn::ConnectionError) -> Option<TlsRefusal> {
    // QUIC carries a TLS alert as a crypto error, 0x100 + the alert (RFC 9001, 4.8). Only the
    // alerts about a certificate: bad, unsupported, revoked, expired or unknown (42 to 46), an
    // unknown CA (48), a signature that does not verify (51, a CA of the same name), none given
    // (116). Another alert (a protocol version, ALPN) is not a question of enrollment.
    let crypto = |code: quinn::TransportErrorCode| {
        u64::from(code).checked_sub(0x100).is_some_and(|alert| matches!(alert, 42..=46 | 48 | 51 | 116))
    };
    match e {
        quinn::ConnectionError::ConnectionClosed(c) if crypto(c.error_code) => Some(TlsRefusal::ByPeer),
        quinn::ConnectionError::TransportError(t) if crypto(t.code) => Some(TlsRefusal::OfPeer),
        _ => None,
    }
}

/// Connects once with the node's identity and says whether the coordinator accepts it
/// (`corral-agent --check`, and tests).
pub async fn probe(identity: &Identity, addr: &str) -> anyhow::Result<Welcome> {
    let config = quic_config(identity.client_config()?, false)?;
    let endpoint = endpoint()?;
    let (conn, _, _, welcome) = handshake(&endpoint, config, addr).await?;
    conn.close(0u32.into(), b"probe done");
    Ok(welcome)
}

async fn session(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: &str,
    inventory: &HostInventory,
    jobs: &Arc<Jobs>,
    metrics: &crate::metrics::Collector,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let (conn, mut send, recv, welcome) = handshake(endpoint, config, addr).await?;
    // Protocol 3 coordinators take what the node measured; older ones would not decode it.
    let send_metrics = welcome.protocol >= 3;
    let remote = conn.remote_address();
    tracing::info!(node = %welcome.node_id, coordinator = %remote, "connected");
    crate::upgrade::confirm();
    // Before the inventory, which makes the coordinator look at the node again (its fleet may
    // choose its address by `ssh_config.network`). Read again on every connection.
    let addresses = tokio::task::spawn_blocking(crate::inventory::interface_addresses).await.unwrap_or_default();
    write_frame(&mut send, &AgentMessage::Interfaces { addresses }).await?;
    write_frame(&mut send, &AgentMessage::Inventory(inventory.clone())).await?;
    write_frame(&mut send, &AgentMessage::Containers(jobs.report())).await?;
    jobs.refresh_volumes();
    jobs.set_connection(Some(conn.clone()));
    // Tunnels into containers ride streams the coordinator opens on this connection.
    let tunnels = tokio::spawn(crate::tunnel::serve(conn.clone(), jobs.clone()));
    let _tunnels_guard = AbortOnDrop(tunnels.abort_handle());

    let mut heartbeat = tokio::time::interval(Duration::from_secs(welcome.heartbeat_secs.max(1) as u64));
    // A notice is said once per connection (again after a reconnect: the coordinator may not have it).
    let mut notice_sent = false;
    if jobs.interruption().is_some() {
        jobs.changed.notify_one();
    }
    let mut seq = 0u64;
    // Frames are read by a task of their own: a read must never be cut short by another branch of
    // the select below, or the stream would lose its place between frames.
    let (commands_tx, mut commands) = tokio::sync::mpsc::channel::<CoordinatorMessage>(64);
    let mut recv = recv;
    let reader = tokio::spawn(async move {
        while let Some(msg) = read_frame::<CoordinatorMessage, _>(&mut recv).await? {
            if commands_tx.send(msg).await.is_err() {
                break;
            }
        }
        anyhow::Ok(())
    });
    let _reader_guard = AbortOnDrop(reader.abort_handle());
    loop {
        tokio::select! {
            msg = commands.recv() => {
                let Some(msg) = msg else {
                    return match reader.await {
                        Ok(Err(e)) => Err(e.context("reading from the coordinator")),
                        _ => Err(anyhow::anyhow!("the coordinator closed the session")),
                    };
                };
                handle(jobs, &conn, msg);
            }
            () = jobs.changed.notified() => {
                for update in jobs.take_dirty() {
                    write_frame(&mut send, &AgentMessage::JobUpdate(update)).await?;
                }
                if let Some(volumes) = jobs.take_volume_report() {
                    write_frame(&mut send, &AgentMessage::Volumes(volumes)).await?;
                }
                if !notice_sent && let Some((action, time)) = jobs.interruption() {
                    write_frame(&mut send, &AgentMessage::InterruptionNotice { action, time }).await?;
                    notice_sent = true;
                }
            }
            () = metrics.ready.notified() => {
                if let Some(report) = metrics.take().filter(|_| send_metrics) {
                    write_frame(&mut send, &AgentMessage::Metrics(Box::new(report))).await?;
                }
            }
            _ = heartbeat.tick() => {
                seq += 1;
                write_frame(&mut send, &AgentMessage::Heartbeat { seq }).await?;
            }
            () = shutdown.cancelled() => {
                conn.close(0u32.into(), b"agent shutting down");
                return Ok(());
            }
        }
    }
}

/// Aborts a task when the scope that owns it ends.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Acts on a command. Work that waits on Docker runs in its own task, so the session keeps reading.
fn handle(jobs: &Arc<Jobs>, conn: &quinn::Connection, msg: CoordinatorMessage) {
    match msg {
        CoordinatorMessage::StartJob(spec) => {
            tracing::info!(job = %spec.job_id, run = %spec.run_name, image = %spec.image, "starting job");
            jobs.start(*spec);
        }
        CoordinatorMessage::StopJob { job_id, abort, reason } => {
            tracing::info!(job = %job_id, abort, "stopping job");
            let jobs = jobs.clone();
            tokio::spawn(async move { jobs.stop(&job_id, abort, reason).await });
        }
        CoordinatorMessage::ForgetJob { job_id } => {
            let jobs = jobs.clone();
            tokio::spawn(async move { jobs.forget(&job_id).await });
        }
        CoordinatorMessage::HeartbeatAck { .. } => {}
        CoordinatorMessage::Upgrade { version, sha256, size } => {
            crate::upgrade::requested(conn.clone(), version, sha256, size);
        }
        CoordinatorMessage::DeleteVolume { docker_name } => {
            let jobs = jobs.clone();
            tokio::spawn(async move { jobs.delete_volume(&docker_name).await });
        }
        other => tracing::warn!("unexpected message: {other:?}"),
    }
}
