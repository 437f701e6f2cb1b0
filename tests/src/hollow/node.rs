//! One hollow node: its sessions with the coordinator, redialed, and its in-memory jobs.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use corral_agent::identity::Identity;
use corral_agent::link;
use corral_proto::ids::JobId;
use corral_proto::inventory::HostInventory;
use corral_proto::job::{JobSpec, JobState, TerminationReason};
use corral_proto::metrics::{ContainerSample, EccCounts, GpuSample, HostSample, NodeMetrics, RemappedRows};
use corral_proto::wire::io::{read_frame, write_frame};
use corral_proto::wire::{AgentMessage, ContainerReport, CoordinatorMessage, JobUpdate, Welcome};

use super::Shared;

/// What all nodes of a fleet share.
pub(super) struct Ctx {
    pub endpoint: quinn::Endpoint,
    pub coordinator: String,
    /// Bounds the handshakes in flight (a whole fleet redialing at once after a coordinator restart).
    pub permits: Arc<Semaphore>,
    pub shared: Arc<Shared>,
    pub run_time: Option<Duration>,
}

/// Heartbeats awaiting their ack; older ones are forgotten (their ack was lost with a session).
const HEARTBEATS_IN_FLIGHT: usize = 64;

/// How a session ended, when not by an error.
enum End {
    Shutdown,
    /// The coordinator finished the control stream.
    Closed,
    /// The node was killed: what it must hold, unclosed, until the connection times out (nothing
    /// when it was killed before it connected).
    Killed(Option<Remains>),
}

/// A killed node's connection and streams. Dropping them would send CONNECTION_CLOSE, a FIN and a
/// STOP_SENDING: a dead host sends nothing.
struct Remains {
    conn: quinn::Connection,
    _send: quinn::SendStream,
    _recv: Option<quinn::RecvStream>,
}

/// Runs a node until the fleet shuts down, the node is killed, or it is refused for good.
pub(super) async fn run(
    ctx: Arc<Ctx>,
    name: String,
    identity: Identity,
    inventory: HostInventory,
    kill: CancellationToken,
    shutdown: CancellationToken,
) {
    let shared = &ctx.shared;
    // No keep-alive: a killed node must fall silent (see the module doc).
    let config =
        match identity.client_config().map_err(anyhow::Error::new).and_then(|tls| link::quic_config(tls, false)) {
            Ok(c) => c,
            Err(e) => {
                shared.error(&name, &e.context("tls setup"));
                shared.failed.fetch_add(1, Relaxed);
                return;
            }
        };
    let mut jobs = Jobs::default();
    let mut backoff = Duration::from_millis(500);
    loop {
        let started = Instant::now();
        let result = session(&ctx, &name, config.clone(), &inventory, &mut jobs, &kill, &shutdown).await;
        match result {
            Ok(End::Shutdown) => break,
            Ok(End::Killed(remains)) => {
                // The host is gone, and its jobs with it.
                shared.jobs_running.fetch_sub(jobs.running, Relaxed);
                if let Some(remains) = remains {
                    tokio::select! {
                        _ = remains.conn.closed() => {}
                        () = shutdown.cancelled() => {}
                    }
                }
                return;
            }
            Ok(End::Closed) => {}
            Err(e) => {
                let fatal = e.downcast_ref::<link::Fatal>().is_some();
                shared.error(&name, &e);
                if fatal {
                    shared.failed.fetch_add(1, Relaxed);
                    break;
                }
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        tokio::select! {
            () = tokio::time::sleep(link::jitter(backoff)) => {}
            () = kill.cancelled() => break,
            () = shutdown.cancelled() => break,
        }
        backoff = (backoff * 2).min(link::MAX_BACKOFF);
    }
    shared.jobs_running.fetch_sub(jobs.running, Relaxed);
}

/// Counts a node as connected while alive.
struct Online<'a>(&'a Shared);

impl<'a> Online<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.connected.fetch_add(1, Relaxed);
        shared.sessions.fetch_add(1, Relaxed);
        Self(shared)
    }
}

impl Drop for Online<'_> {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Relaxed);
    }
}

/// Dials (one of the fleet's bounded handshakes), then runs the session.
async fn session(
    ctx: &Ctx,
    name: &str,
    config: quinn::ClientConfig,
    inventory: &HostInventory,
    jobs: &mut Jobs,
    kill: &CancellationToken,
    shutdown: &CancellationToken,
) -> anyhow::Result<End> {
    let (conn, send, recv, welcome) = {
        let _permit = tokio::select! {
            p = ctx.permits.acquire() => p.context("the fleet's handshake permits are gone")?,
            () = kill.cancelled() => return Ok(End::Killed(None)),
            () = shutdown.cancelled() => return Ok(End::Shutdown),
        };
        tokio::select! {
            r = link::handshake(&ctx.endpoint, config, &ctx.coordinator) => r?,
            () = kill.cancelled() => return Ok(End::Killed(None)),
            () = shutdown.cancelled() => return Ok(End::Shutdown),
        }
    };
    let online = Online::new(&ctx.shared);
    let end = established(ctx, conn, send, recv, &welcome, inventory, jobs, kill, shutdown).await;
    drop(online);
    if !matches!(end, Ok(End::Shutdown | End::Killed(_))) {
        ctx.shared.sessions_lost.fetch_add(1, Relaxed);
    }
    end.with_context(|| format!("session as {name} ({})", welcome.node_id))
}

/// Aborts the frame reader when the session ends, unless it was handed back first.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the coordinator's frames into a channel: a frame read is not cancel-safe, so it gets a
/// task of its own. On a kill it stops reading (mid-frame or not: the session is over) and hands
/// the stream back, unclosed.
fn spawn_reader(
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<CoordinatorMessage>,
    kill: CancellationToken,
) -> JoinHandle<(quinn::RecvStream, anyhow::Result<()>)> {
    tokio::spawn(async move {
        let result = loop {
            let msg = tokio::select! {
                biased;
                () = kill.cancelled() => break Ok(()),
                r = read_frame::<CoordinatorMessage, _>(&mut recv) => r,
            };
            let msg = match msg {
                Ok(Some(m)) => m,
                Ok(None) => break Ok(()),
                Err(e) => break Err(anyhow::Error::new(e).context("reading from the coordinator")),
            };
            tokio::select! {
                r = tx.send(msg) => if r.is_err() { break Ok(()) },
                () = kill.cancelled() => break Ok(()),
            }
        };
        (recv, result)
    })
}

/// The session after Welcome: reports, then commands in and heartbeats out.
#[allow(clippy::too_many_arguments)]
async fn established(
    ctx: &Ctx,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    welcome: &Welcome,
    inventory: &HostInventory,
    jobs: &mut Jobs,
    kill: &CancellationToken,
    shutdown: &CancellationToken,
) -> anyhow::Result<End> {
    let shared = &ctx.shared;
    write_frame(&mut send, &AgentMessage::Inventory(inventory.clone())).await?;
    write_frame(&mut send, &AgentMessage::Containers(jobs.report())).await?;
    // The latest word on every job, again: the previous session may have lost it.
    for update in jobs.latest.values() {
        write_frame(&mut send, &AgentMessage::JobUpdate(update.clone())).await?;
    }

    let (tx, mut commands) = mpsc::channel(64);
    let mut reader = spawn_reader(recv, tx, kill.clone());
    let _reader_guard = AbortOnDrop(reader.abort_handle());
    let mut heartbeat = tokio::time::interval(Duration::from_secs(welcome.heartbeat_secs.max(1).into()));
    let mut seq = 0u64;
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
    // Metrics, when the fleet asks for them: the first report at an offset of this node's own
    // within the interval, so that a fleet's reports spread over it as real agents' do.
    let mut next_metrics: Option<Instant> = None;
    let mut reports = 0u64;
    loop {
        let every = Duration::from_millis(shared.metrics_every_ms.load(Relaxed));
        if every.is_zero() {
            next_metrics = None;
        } else if next_metrics.is_none() {
            let offset =
                (welcome.node_id.as_str().bytes().map(u64::from).sum::<u64>() * 7919) % every.as_millis().max(1) as u64;
            next_metrics = Some(Instant::now() + Duration::from_millis(offset));
        }
        let deadline = jobs.next_deadline();
        let mut updates = Vec::new();
        // Biased: a kill must win over the reader's channel closing, which the kill itself causes
        // (ending the session that way would close the connection).
        tokio::select! {
            biased;
            () = kill.cancelled() => {
                let recv = match (&mut reader).await {
                    Ok((recv, _)) => Some(recv),
                    Err(_) => None,
                };
                return Ok(End::Killed(Some(Remains { conn, _send: send, _recv: recv })));
            }
            () = shutdown.cancelled() => {
                conn.close(0u32.into(), b"hollow node shutting down");
                return Ok(End::Shutdown);
            }
            msg = commands.recv() => {
                let Some(msg) = msg else {
                    // The reader ended: the stream finished, or failed.
                    return match (&mut reader).await {
                        Ok((_, Ok(()))) => Ok(End::Closed),
                        Ok((_, Err(e))) => Err(e),
                        Err(e) => Err(anyhow::Error::new(e).context("the frame reader died")),
                    };
                };
                match msg {
                    CoordinatorMessage::StartJob(spec) => updates = jobs.start(*spec, ctx.run_time, shared),
                    CoordinatorMessage::StopJob { job_id, abort, reason } => {
                        let code = if abort { 137 } else { 143 };
                        updates.extend(jobs.finish(&job_id, reason, Some(code), shared));
                    }
                    CoordinatorMessage::ForgetJob { job_id } => jobs.forget(&job_id),
                    CoordinatorMessage::HeartbeatAck { seq: acked } => {
                        while let Some(&(s, sent)) = in_flight.front() && s <= acked {
                            in_flight.pop_front();
                            if s == acked {
                                shared.rtt(sent.elapsed());
                                shared.heartbeats_acked.fetch_add(1, Relaxed);
                            }
                        }
                    }
                    other => anyhow::bail!("unexpected message in a session: {other:?}"),
                }
            }
            () = until(deadline) => updates = jobs.expire(Instant::now(), shared),
            () = until(next_metrics) => {
                next_metrics = next_metrics.map(|at| at + every);
                reports += 1;
                let report = jobs.metrics(inventory, reports);
                shared.metrics_sent.fetch_add(1, Relaxed);
                write_frame(&mut send, &AgentMessage::Metrics(Box::new(report))).await?;
            }
            _ = heartbeat.tick() => {
                seq += 1;
                if in_flight.len() == HEARTBEATS_IN_FLIGHT {
                    in_flight.pop_front();
                }
                in_flight.push_back((seq, Instant::now()));
                shared.heartbeats_sent.fetch_add(1, Relaxed);
                write_frame(&mut send, &AgentMessage::Heartbeat { seq }).await?;
            }
        }
        for update in updates {
            write_frame(&mut send, &AgentMessage::JobUpdate(update)).await?;
        }
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The in-memory container runtime: each job's latest update, kept until `ForgetJob`.
#[derive(Default)]
struct Jobs {
    latest: HashMap<JobId, JobUpdate>,
    /// When running jobs end by themselves (`run_time`).
    deadlines: Vec<(Instant, JobId)>,
    /// Jobs not yet ended, as counted in the fleet's `jobs_running`.
    running: i64,
}

fn update(job_id: &JobId, state: JobState) -> JobUpdate {
    JobUpdate { job_id: job_id.clone(), state, exit_code: None, reason: None, message: None }
}

impl Jobs {
    /// Starts a job: `pulling`, then `running` at once. A job already known is left alone (the
    /// coordinator may repeat itself).
    fn start(&mut self, spec: JobSpec, run_time: Option<Duration>, shared: &Shared) -> Vec<JobUpdate> {
        let id = spec.job_id;
        if self.latest.contains_key(&id) {
            return Vec::new();
        }
        let running = update(&id, JobState::Running);
        self.latest.insert(id.clone(), running.clone());
        self.running += 1;
        shared.jobs_running.fetch_add(1, Relaxed);
        if let Some(t) = run_time {
            self.deadlines.push((Instant::now() + t, id.clone()));
        }
        vec![update(&id, JobState::Pulling), running]
    }

    /// Ends a running job; `None` when it is unknown or already ended.
    fn finish(
        &mut self,
        id: &JobId,
        reason: TerminationReason,
        exit_code: Option<i64>,
        shared: &Shared,
    ) -> Option<JobUpdate> {
        let u = self.latest.get_mut(id).filter(|u| u.reason.is_none())?;
        *u = JobUpdate {
            job_id: id.clone(),
            state: reason.final_state(),
            exit_code,
            reason: Some(reason),
            message: None,
        };
        self.running -= 1;
        shared.jobs_running.fetch_sub(1, Relaxed);
        self.deadlines.retain(|(_, j)| j != id);
        Some(u.clone())
    }

    /// The jobs whose run time is up end with exit code 0.
    fn expire(&mut self, now: Instant, shared: &Shared) -> Vec<JobUpdate> {
        let due: Vec<JobId> = self.deadlines.iter().filter(|(at, _)| *at <= now).map(|(_, id)| id.clone()).collect();
        due.iter().filter_map(|id| self.finish(id, TerminationReason::Done, Some(0), shared)).collect()
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.iter().map(|(at, _)| *at).min()
    }

    /// Drops an ended job; a running one is not the coordinator's to drop.
    fn forget(&mut self, id: &JobId) {
        if self.latest.get(id).is_some_and(|u| u.reason.is_some()) {
            self.latest.remove(id);
        }
    }

    /// What a real agent would measure: the host's 8 GPUs, busy where jobs run, and a container
    /// sample per running job.
    fn metrics(&self, inventory: &HostInventory, n: u64) -> NodeMetrics {
        let gpus = inventory
            .gpus
            .iter()
            .map(|g| GpuSample {
                index: g.index,
                uuid: g.uuid.clone(),
                utilization: Some(((n * 7 + u64::from(g.index) * 13) % 101) as u8),
                memory_utilization: Some(40),
                memory_used: Some(g.memory.0 / 2),
                memory_total: Some(g.memory.0),
                temperature: Some(60),
                power_mw: Some(400_000),
                sm_clock_mhz: Some(1980),
                memory_clock_mhz: Some(2619),
                throttle_reasons: Some(0),
                ecc: Some(EccCounts::default()),
                retired_pages_pending: Some(false),
                remapped_rows: Some(RemappedRows::default()),
                ..GpuSample::default()
            })
            .collect();
        let containers = self
            .latest
            .values()
            .filter(|u| u.reason.is_none())
            .map(|u| ContainerSample {
                job_id: u.job_id.clone(),
                cpu_millicores: Some(1000),
                memory_used: 8 << 30,
                memory_limit: 64 << 30,
                network_rx: n << 20,
                network_tx: n << 19,
                disk_read: n << 21,
                disk_write: n << 18,
            })
            .collect();
        NodeMetrics {
            at_ms: 0,
            interval_ms: 10_000,
            host: HostSample { cpu_millicores: 8000, memory_used: 256 << 30, memory_total: 2048 << 30 },
            gpus,
            containers,
        }
    }

    /// The full set, for the report on every connection.
    fn report(&self) -> Vec<ContainerReport> {
        self.latest
            .values()
            .map(|u| ContainerReport { job_id: u.job_id.clone(), running: u.reason.is_none(), exit_code: u.exit_code })
            .collect()
    }
}
