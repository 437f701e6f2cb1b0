//! What the node measures for the coordinator: its GPUs through NVML, its jobs' containers through
//! Docker, the host through sysinfo. One report per interval ([`NodeMetrics`]), sent by the link
//! while it is connected (protocol 3).
//!
//! A thread of its own ([`gpus`]) reads every GPU every [`SAMPLE_EVERY`] and, between readings,
//! waits on NVML's event set for Xid errors; it adds what it reads to the interval's sums. Every
//! interval a task closes the interval: the GPUs' sums become their samples, the containers and the
//! host are read once (CPU rates from the previous reading), and the report waits for the link. A
//! report the link has not taken when the next is ready is replaced by it, but its Xids are carried
//! into the next: an Xid is an event, and is never dropped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corral_proto::ids::JobId;
use corral_proto::metrics::{ContainerSample, HostSample, NodeMetrics};
use corral_shim::{Shim, Stats, container_name};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::jobs::Jobs;

mod gpus;

/// How often each GPU is read within an interval.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How often a report is made, unless the agent is told otherwise (`--metrics-interval`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The bounds of `--metrics-interval`, in seconds.
pub const INTERVAL_SECS: std::ops::RangeInclusive<u64> = 1..=300;
/// Containers read at once (Docker answers each stats call in a few milliseconds).
const STATS_AT_ONCE: usize = 16;

/// The reports and where they wait for the link.
pub struct Collector {
    gpus: Arc<gpus::Sums>,
    pending: Mutex<Option<NodeMetrics>>,
    /// Poked when a report waits.
    pub ready: Notify,
}

impl Collector {
    /// The report waiting to be sent, if any.
    pub fn take(&self) -> Option<NodeMetrics> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Puts a report up for the link; Xids of one it never took go with it.
    fn offer(&self, mut report: NodeMetrics) {
        let mut slot = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(unsent) = slot.take() {
            for old in unsent.gpus.into_iter().filter(|g| !g.xids.is_empty()) {
                match report.gpus.iter_mut().find(|g| g.index == old.index) {
                    Some(g) => {
                        let mut xids = old.xids;
                        xids.append(&mut g.xids);
                        g.xids = xids;
                    }
                    None => report.gpus.push(old),
                }
            }
        }
        *slot = Some(report);
        drop(slot);
        self.ready.notify_one();
    }
}

/// Starts measuring: the GPU thread and the interval task, until `shutdown`.
pub fn start(
    jobs: Arc<Jobs>,
    shim: Shim,
    nvml_library: Option<PathBuf>,
    interval: Duration,
    shutdown: CancellationToken,
) -> Arc<Collector> {
    let sums = Arc::new(gpus::Sums::default());
    gpus::spawn_reader(nvml_library, interval.min(SAMPLE_EVERY), sums.clone(), shutdown.clone());
    let collector = Arc::new(Collector { gpus: sums, pending: Mutex::new(None), ready: Notify::new() });
    let this = collector.clone();
    tokio::spawn(async move { this.run(jobs, shim, interval, shutdown).await });
    collector
}

impl Collector {
    async fn run(self: Arc<Self>, jobs: Arc<Jobs>, shim: Shim, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let host = Arc::new(Mutex::new(sysinfo::System::new()));
        let mut previous: HashMap<JobId, (Instant, u64)> = HashMap::new();
        let mut started = Instant::now();
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let interval_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
            started = Instant::now();
            let gpus = self.gpus.close_interval();
            let host_sample = {
                let host = host.clone();
                tokio::task::spawn_blocking(move || read_host(&host)).await.unwrap_or_default()
            };
            let containers = read_containers(&shim, jobs.running(), &mut previous).await;
            let report = NodeMetrics { at_ms: now_ms(), interval_ms, host: host_sample, gpus, containers };
            self.offer(report);
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The host's CPU use since the last call, and its memory.
fn read_host(sys: &Mutex<sysinfo::System>) -> HostSample {
    let mut sys = sys.lock().unwrap_or_else(|e| e.into_inner());
    sys.refresh_cpu_usage();
    sys.refresh_memory();
    let cores = sys.cpus().len() as f64;
    let busy = f64::from(sys.global_cpu_usage()) / 100.0 * cores;
    HostSample {
        cpu_millicores: (busy * 1000.0).round().clamp(0.0, f64::from(u32::MAX)) as u32,
        memory_used: sys.used_memory(),
        memory_total: sys.total_memory(),
    }
}

/// Reads the running jobs' containers; `previous` keeps each one's last CPU reading for its rate.
async fn read_containers(
    shim: &Shim,
    running: Vec<JobId>,
    previous: &mut HashMap<JobId, (Instant, u64)>,
) -> Vec<ContainerSample> {
    use futures_util::StreamExt;
    let readings: Vec<(JobId, Result<Stats, corral_shim::ShimError>, Instant)> = futures_util::stream::iter(running)
        .map(|job| async move {
            let stats = shim.stats(&container_name(&job)).await;
            (job, stats, Instant::now())
        })
        .buffer_unordered(STATS_AT_ONCE)
        .collect()
        .await;
    let mut out = Vec::with_capacity(readings.len());
    let mut seen = HashMap::with_capacity(readings.len());
    for (job, stats, at) in readings {
        let stats = match stats {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%job, "no stats for the job's container: {e}");
                continue;
            }
        };
        let cpu_millicores = previous.get(&job).and_then(|&(then, ns)| cpu_rate(then, ns, at, stats.cpu_ns));
        seen.insert(job.clone(), (at, stats.cpu_ns));
        out.push(ContainerSample {
            job_id: job,
            cpu_millicores,
            memory_used: stats.memory_used,
            memory_limit: stats.memory_limit,
            network_rx: stats.network_rx,
            network_tx: stats.network_tx,
            disk_read: stats.disk_read,
            disk_write: stats.disk_write,
        });
    }
    *previous = seen;
    out.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    out
}

/// CPU time between two readings as thousandths of a core; `None` when the counter went back (a
/// restarted container) or no time passed.
fn cpu_rate(then: Instant, then_ns: u64, now: Instant, now_ns: u64) -> Option<u32> {
    let wall_ns = now.checked_duration_since(then)?.as_nanos();
    let used = u128::from(now_ns.checked_sub(then_ns)?);
    (wall_ns > 0).then(|| u32::try_from(used * 1000 / wall_ns).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use corral_proto::metrics::GpuSample;

    use super::*;

    fn report(gpus: Vec<(u32, Vec<u64>)>) -> NodeMetrics {
        NodeMetrics {
            gpus: gpus.into_iter().map(|(index, xids)| GpuSample { index, xids, ..GpuSample::default() }).collect(),
            ..NodeMetrics::default()
        }
    }

    #[test]
    fn an_unsent_report_is_replaced_but_its_xids_are_carried() {
        let c = Collector { gpus: Arc::default(), pending: Mutex::new(None), ready: Notify::new() };
        c.offer(report(vec![(0, vec![79]), (1, vec![]), (3, vec![48])]));
        c.offer(report(vec![(0, vec![13]), (1, vec![])]));
        let sent = c.take().expect("a report waits");
        let xids: Vec<(u32, Vec<u64>)> = sent.gpus.iter().map(|g| (g.index, g.xids.clone())).collect();
        assert_eq!(xids, [(0, vec![79, 13]), (1, vec![]), (3, vec![48])]);
        assert!(c.take().is_none(), "taken once");
        c.offer(report(vec![(0, vec![])]));
        assert_eq!(c.take().map(|r| r.gpus[0].xids.clone()), Some(vec![]), "a sent Xid is not sent again");
    }

    #[test]
    fn cpu_rates_are_thousandths_of_a_core() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(cpu_rate(t0, 0, t1, 3_000_000_000), Some(1500), "3 s of CPU in 2 s: one and a half cores");
        assert_eq!(cpu_rate(t0, 5, t1, 4), None, "a counter that went back");
        assert_eq!(cpu_rate(t1, 0, t0, 4), None, "time that went back");
    }
}
