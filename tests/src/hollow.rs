//! Hollow nodes: simulated agents that speak the real protocol (enrollment, mutual TLS, the control
//! stream) to a real coordinator, with configurable hardware and an in-memory container runtime.
//! Like Kubernetes' kubemark, they load the coordinator as a large cluster would, without the
//! hosts: 10,000 fit in one process because they share a few quinn client endpoints (one UDP socket
//! per 100 nodes).
//! They live in the tests crate only; no shipped binary contains them.
//!
//! A hollow node:
//! - enrolls with the agent's own code ([`corral_agent::link::enroll_in_memory`]) and keeps its key
//!   and certificate in memory; enrollments and handshakes run [`HollowOptions::concurrency`] at a
//!   time;
//! - on each connection sends `Inventory`, the full `Containers` report and its latest word on each
//!   job, then a `Heartbeat` at the interval `Welcome` names, timing each until its `HeartbeatAck`;
//! - on `StartJob` reports `pulling` then `running` at once, and `done` (exit code 0) after
//!   [`HollowOptions::run_time`] when set; on `StopJob` it reports the end with the reason given
//!   (exit code 143, or 137 for an abort); `ForgetJob` drops a finished job;
//! - redials with the agent's backoff (0.5 s → 5 s, with jitter) when its session drops; gives up only when
//!   refused for good (revoked, unknown).
//!
//! [`HollowFleet::kill`] simulates the loss of a host: the node stops sending at once and neither
//! closes its connection nor finishes its streams, so the coordinator hears nothing more and ends
//! the session on its QUIC idle timeout (15 s for a dial without keep-alives). Hollow nodes therefore
//! dial without QUIC keep-alives; a real agent sends one every 2 s on an idle link (6 s idle
//! timeout), a little more traffic than hollow nodes make between their heartbeats. One
//! difference from a dead host remains: a killed node's QUIC stack still acknowledges what the
//! coordinator sends it, which restarts the coordinator's idle timer each time it sends something.
//!
//! Tasks: one per node (its sessions, redialed) and one frame reader per live session, all tracked
//! by one `TaskTracker` and stopped by the fleet's `CancellationToken`. Statistics are shared
//! atomics plus a list of heartbeat round trips.

mod node;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use corral_proto::ids::NodeId;
use corral_proto::inventory::{DockerInfo, GpuInfo, HostInventory};
use corral_proto::resources::{GpuVendor, Memory};
use corral_proto::token::JoinToken;

#[derive(Clone, Debug)]
pub struct HollowOptions {
    /// How long a started job runs before it reports `done` with exit code 0; `None`: until stopped.
    pub run_time: Option<Duration>,
    /// Enrollments, and connection handshakes, in flight at once.
    pub concurrency: usize,
    /// Node `i` enrolls as `{name_prefix}-{i:05}`.
    pub name_prefix: String,
    pub fleet: Option<String>,
}

impl Default for HollowOptions {
    fn default() -> Self {
        Self { run_time: None, concurrency: 64, name_prefix: "hollow".to_owned(), fleet: None }
    }
}

/// A snapshot of the whole fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// Nodes asked for.
    pub nodes: usize,
    pub enrolled: usize,
    /// Nodes with a live session (Welcome received, not killed).
    pub connected: usize,
    pub jobs_running: usize,
    /// Sessions established, reconnections included.
    pub sessions: u64,
    /// Sessions that ended other than by a kill or the fleet's shutdown.
    pub sessions_lost: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_acked: u64,
    pub killed: usize,
    /// Nodes that gave up for good (enrollment failed, refused).
    pub failed: usize,
    /// Errors seen, all nodes together; [`HollowFleet::errors`] has the first ones in words.
    pub errors: u64,
}

/// Heartbeat round trips in a few numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RttSummary {
    pub samples: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl RttSummary {
    /// `None` without samples.
    pub fn of(mut samples: Vec<Duration>) -> Option<Self> {
        samples.sort_unstable();
        let n = samples.len();
        let at = |p: f64| samples[((n as f64 * p).ceil() as usize).clamp(1, n) - 1];
        (n > 0).then(|| Self { samples: n, p50: at(0.50), p99: at(0.99), max: samples[n - 1] })
    }
}

/// What every node of a fleet updates.
#[derive(Default)]
struct Shared {
    connected: AtomicUsize,
    jobs_running: AtomicI64,
    sessions: AtomicU64,
    sessions_lost: AtomicU64,
    heartbeats_sent: AtomicU64,
    heartbeats_acked: AtomicU64,
    failed: AtomicUsize,
    errors: AtomicU64,
    /// Heartbeat → HeartbeatAck round trips, in microseconds.
    rtts_us: Mutex<Vec<u32>>,
    /// The first errors in words: bounded, 10,000 nodes failing alike say the same thing.
    first_errors: Mutex<Vec<String>>,
    /// Every node reports what it measured this often, in milliseconds (0: never).
    metrics_every_ms: AtomicU64,
    metrics_sent: AtomicU64,
}

const KEPT_ERRORS: usize = 100;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data behind the lock: a panic elsewhere cannot leave it inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn error(&self, node: &str, e: &anyhow::Error) {
        self.errors.fetch_add(1, Relaxed);
        tracing::debug!(node, "hollow node: {e:#}");
        let mut kept = lock(&self.first_errors);
        if kept.len() < KEPT_ERRORS {
            kept.push(format!("{node}: {e:#}"));
        }
    }

    fn rtt(&self, d: Duration) {
        let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        lock(&self.rtts_us).push(us);
    }
}

/// One node as the fleet knows it.
struct Member {
    name: String,
    node_id: Option<NodeId>,
    kill: CancellationToken,
}

/// Hollow nodes per client endpoint (UDP socket). A real node has a socket (and a machine) of its
/// own; 10,000 nodes behind one socket drop datagrams at its receive buffer under a burst, which
/// is the bench's loss, not the coordinator's.
const NODES_PER_SOCKET: usize = 100;

/// Many hollow nodes on a few shared client endpoints. Dropping it stops them all (connections
/// close as the endpoints go); [`HollowFleet::shutdown`] closes them cleanly and waits.
pub struct HollowFleet {
    members: Vec<Member>,
    shared: Arc<Shared>,
    endpoints: Vec<quinn::Endpoint>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    enrolled_in: Duration,
}

impl HollowFleet {
    /// Enrolls `count` nodes with the coordinator's QUIC endpoint at `coordinator`, node `i` with
    /// hardware `inventory(i)`, then starts their sessions and returns. Enrollment failures do not
    /// fail the call: they are counted in [`FleetStats::failed`] and kept in [`Self::errors`].
    pub async fn start(
        coordinator: SocketAddr,
        token: &JoinToken,
        count: usize,
        inventory: impl Fn(usize) -> HostInventory,
        opts: HollowOptions,
    ) -> anyhow::Result<Self> {
        let endpoints = (0..count.div_ceil(NODES_PER_SOCKET).max(1))
            .map(|_| corral_agent::link::endpoint())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let endpoint_of = |i: usize| endpoints[i / NODES_PER_SOCKET].clone();
        let shared = Arc::new(Shared::default());
        let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
        let name = |i: usize| format!("{}-{i:05}", opts.name_prefix);

        let started = Instant::now();
        let mut enrolling = tokio::task::JoinSet::new();
        for i in 0..count {
            let (endpoint, token, permits) = (endpoint_of(i), token.clone(), permits.clone());
            let (name, fleet) = (name(i), opts.fleet.clone());
            enrolling.spawn(async move {
                // The semaphore is never closed, so acquiring cannot fail.
                let _permit = permits.acquire_owned().await;
                let began = Instant::now();
                let r = corral_agent::link::enroll_in_memory(&endpoint, coordinator, &token, &name, fleet)
                    .await
                    .with_context(|| format!("enrollment failed after {:?}", began.elapsed()));
                (i, r)
            });
        }
        let mut identities: Vec<Option<corral_agent::identity::Identity>> = (0..count).map(|_| None).collect();
        while let Some(joined) = enrolling.join_next().await {
            match joined {
                Ok((i, Ok(identity))) => identities[i] = Some(identity),
                Ok((i, Err(e))) => shared.error(&name(i), &e),
                Err(e) => shared.error("fleet", &anyhow::Error::new(e).context("enrollment task")),
            }
        }
        let enrolled_in = started.elapsed();

        let contexts: Vec<Arc<node::Ctx>> = endpoints
            .iter()
            .map(|endpoint| {
                Arc::new(node::Ctx {
                    endpoint: endpoint.clone(),
                    coordinator: coordinator.to_string(),
                    permits: permits.clone(),
                    shared: shared.clone(),
                    run_time: opts.run_time,
                })
            })
            .collect();
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut members = Vec::with_capacity(count);
        for (i, identity) in identities.into_iter().enumerate() {
            let kill = CancellationToken::new();
            let Some(identity) = identity else {
                shared.failed.fetch_add(1, Relaxed);
                members.push(Member { name: name(i), node_id: None, kill });
                continue;
            };
            let mut inv = inventory(i);
            if inv.hostname.is_empty() {
                inv.hostname = name(i);
            }
            members.push(Member { name: name(i), node_id: Some(identity.node.node_id.clone()), kill: kill.clone() });
            let ctx = contexts[i / NODES_PER_SOCKET].clone();
            tasks.spawn(node::run(ctx, name(i), identity, inv, kill, shutdown.clone()));
        }
        tasks.close();
        Ok(Self { members, shared, endpoints, shutdown, tasks, enrolled_in })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// How long enrolling every node took.
    pub fn enrolled_in(&self) -> Duration {
        self.enrolled_in
    }

    /// Node `i`'s name (what it enrolled as) and id (`None` when its enrollment failed).
    pub fn node(&self, i: usize) -> Option<(&str, Option<&NodeId>)> {
        self.members.get(i).map(|m| (m.name.as_str(), m.node_id.as_ref()))
    }

    pub fn stats(&self) -> FleetStats {
        let s = &self.shared;
        FleetStats {
            nodes: self.members.len(),
            enrolled: self.members.iter().filter(|m| m.node_id.is_some()).count(),
            connected: s.connected.load(Relaxed),
            jobs_running: usize::try_from(s.jobs_running.load(Relaxed)).unwrap_or(0),
            sessions: s.sessions.load(Relaxed),
            sessions_lost: s.sessions_lost.load(Relaxed),
            heartbeats_sent: s.heartbeats_sent.load(Relaxed),
            heartbeats_acked: s.heartbeats_acked.load(Relaxed),
            killed: self.members.iter().filter(|m| m.kill.is_cancelled()).count(),
            failed: s.failed.load(Relaxed),
            errors: s.errors.load(Relaxed),
        }
    }

    /// Jobs running on the fleet now: [`Self::stats`]' count without its walk over every node, for
    /// polling.
    pub fn jobs_running(&self) -> usize {
        usize::try_from(self.shared.jobs_running.load(Relaxed)).unwrap_or(0)
    }

    /// The heartbeat round trips measured so far (all nodes), leaving them in place.
    pub fn heartbeat_rtts(&self) -> Vec<Duration> {
        let us = lock(&self.shared.rtts_us);
        us.iter().map(|&u| Duration::from_micros(u.into())).collect()
    }

    /// The heartbeat round trips measured since the last call, to measure one window of time.
    pub fn take_heartbeat_rtts(&self) -> Vec<Duration> {
        let us = std::mem::take(&mut *lock(&self.shared.rtts_us));
        us.into_iter().map(|u| Duration::from_micros(u.into())).collect()
    }

    /// The first errors the nodes met (at most 100), each prefixed with the node's name.
    /// Has every node report metrics (8 GPUs and its running jobs' containers) this often, or stop.
    pub fn report_metrics(&self, every: Option<Duration>) {
        let ms = every.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
        self.shared.metrics_every_ms.store(ms, Relaxed);
    }

    /// Metrics reports sent so far.
    pub fn metrics_sent(&self) -> u64 {
        self.shared.metrics_sent.load(Relaxed)
    }

    pub fn errors(&self) -> Vec<String> {
        lock(&self.shared.first_errors).clone()
    }

    /// Waits until at least `n` nodes are connected; returns how long that took. Fails after `limit`,
    /// or as soon as too few nodes are left that could still connect.
    pub async fn wait_connected(&self, n: usize, limit: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let s = self.stats();
            if s.connected >= n {
                return Ok(start.elapsed());
            }
            if s.nodes.saturating_sub(s.failed + s.killed) < n {
                bail!(
                    "only {} of {} nodes can still connect, {n} wanted: {s:?}; first errors: {:#?}",
                    s.nodes.saturating_sub(s.failed + s.killed),
                    s.nodes,
                    self.errors()
                );
            }
            if start.elapsed() >= limit {
                bail!(
                    "timed out after {limit:?} waiting for {n} connected nodes: {s:?}; first errors: {:#?}",
                    self.errors()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Simulates the sudden loss of node `i`'s host (see the module doc). `false` when there is no
    /// such node or it was already killed.
    pub fn kill(&self, i: usize) -> bool {
        match self.members.get(i) {
            Some(m) if !m.kill.is_cancelled() => {
                m.kill.cancel();
                true
            }
            _ => false,
        }
    }

    /// Closes every session cleanly (as agents shutting down do) and waits for the nodes' tasks.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if tokio::time::timeout(Duration::from_secs(30), self.tasks.wait()).await.is_err() {
            tracing::warn!("hollow nodes did not stop within 30 s");
        }
        for endpoint in &self.endpoints {
            endpoint.close(0u32.into(), b"hollow fleet shut down");
        }
        for endpoint in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
        }
    }
}

impl Drop for HollowFleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A host with `count` GPUs of one model (`uuid`s made unique by `seed`), 2 TiB of memory and
/// 224 cores, Docker with the NVIDIA runtime: a DGX-class server.
pub fn gpu_host(seed: usize, count: u32, model: &str, gpu_memory: Memory) -> HostInventory {
    HostInventory {
        hostname: String::new(),
        os: "Ubuntu 22.04.4 LTS".to_owned(),
        cpu_model: "Intel(R) Xeon(R) Platinum 8480C".to_owned(),
        cpu_cores: 224,
        arch: "x86_64".to_owned(),
        memory: Memory::gb(2048),
        disk: Memory::gb(30 * 1024),
        gpus: (0..count)
            .map(|g| GpuInfo {
                index: g,
                vendor: GpuVendor::Nvidia,
                name: model.to_owned(),
                memory: gpu_memory,
                uuid: format!("GPU-{seed:08x}-{g:04x}-4000-8000-00000000h011"),
                pci_bus_id: format!("00000000:{:02X}:00.0", 0x18 + g * 0x10),
            })
            .collect(),
        gpu_driver_version: Some("550.90.07".to_owned()),
        cuda_version: Some("12.4".to_owned()),
        tpus: Vec::new(),
        docker: DockerInfo { version: "27.3.1".to_owned(), nvidia_runtime: true },
    }
}

/// 8× "NVIDIA H100 80GB HBM3": a DGX H100. Fits [`HollowFleet::start`]'s `inventory` argument.
pub fn h100_host(i: usize) -> HostInventory {
    gpu_host(i, 8, "NVIDIA H100 80GB HBM3", Memory::gb(80))
}

#[cfg(test)]
mod tests;
