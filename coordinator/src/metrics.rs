//! What the nodes measured (their GPUs, their jobs' containers, the hosts), as they report it every
//! interval (protocol 3), kept in memory for a while: the latest report per node, and a bounded
//! history per GPU and per job ([`POINTS`] intervals each). Nothing here touches the store; the
//! history is not kept across a restart (the nodes report again within an interval).
//!
//! - [`health`]: a GPU's faults, judged from each report, take it out of placement;
//! - [`prometheus`]: `/metrics`, the cluster's state and the nodes' GPUs in Prometheus' text format.

pub mod health;
pub mod prometheus;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use corral_proto::ids::{JobId, NodeId};
use corral_proto::metrics::{ContainerSample, GpuSample, MAX_CONTAINERS, MAX_GPUS, MAX_XIDS, NodeMetrics};

/// How many intervals of history are kept per GPU and per job (10 minutes at the agents' default
/// 10 s). At 10,000 nodes of 8 GPUs with a job on each, about 200 MB.
pub const POINTS: usize = 60;
/// A node or job not reported for this long is forgotten.
pub const FORGET_AFTER_MS: i64 = 10 * 60 * 1000;

/// One GPU at the end of an interval, packed (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuPoint {
    pub at_ms: i64,
    /// MiB; `u32::MAX`: not read.
    memory_used_mib: u32,
    /// Watts; `u16::MAX`: not read.
    power_w: u16,
    /// Percent; `u8::MAX`: not read.
    utilization: u8,
    /// °C; `u8::MAX`: not read.
    temperature: u8,
}

impl GpuPoint {
    fn of(at_ms: i64, s: &GpuSample) -> Self {
        Self {
            at_ms,
            memory_used_mib: s.memory_used.map_or(u32::MAX, |b| u32::try_from(b >> 20).unwrap_or(u32::MAX - 1)),
            power_w: s.power_mw.map_or(u16::MAX, |mw| u16::try_from(mw / 1000).unwrap_or(u16::MAX - 1)),
            utilization: s.utilization.map_or(u8::MAX, |u| u.min(100)),
            temperature: s.temperature.map_or(u8::MAX, |t| u8::try_from(t).unwrap_or(u8::MAX - 1)),
        }
    }

    pub fn utilization(&self) -> Option<u8> {
        (self.utilization != u8::MAX).then_some(self.utilization)
    }

    pub fn memory_used(&self) -> Option<u64> {
        (self.memory_used_mib != u32::MAX).then(|| u64::from(self.memory_used_mib) << 20)
    }

    pub fn power_mw(&self) -> Option<u32> {
        (self.power_w != u16::MAX).then(|| u32::from(self.power_w) * 1000)
    }

    pub fn temperature(&self) -> Option<u32> {
        (self.temperature != u8::MAX).then_some(u32::from(self.temperature))
    }
}

/// One job's container at the end of an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobPoint {
    pub at_ms: i64,
    pub memory_used: u64,
    /// Thousandths of a core; `u32::MAX`: no rate yet.
    cpu_millicores: u32,
}

impl JobPoint {
    pub fn cpu_millicores(&self) -> Option<u32> {
        (self.cpu_millicores != u32::MAX).then_some(self.cpu_millicores)
    }
}

/// A node's latest report and its GPUs' history.
pub struct NodeSeries {
    pub latest: Arc<NodeMetrics>,
    /// When the coordinator received it (its own clock).
    pub received_ms: i64,
    pub gpus: BTreeMap<u32, VecDeque<GpuPoint>>,
}

/// What a job is, for labelling its figures: read from the store once, on its first report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobLabels {
    pub node: NodeId,
    pub gpus: Vec<u32>,
    pub run: String,
    pub project: String,
    pub job_num: u32,
}

pub struct JobSeries {
    pub labels: JobLabels,
    pub latest: ContainerSample,
    pub updated_ms: i64,
    pub points: VecDeque<JobPoint>,
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<NodeId, NodeSeries>,
    jobs: HashMap<JobId, JobSeries>,
}

/// The nodes' reports, kept in memory.
#[derive(Default)]
pub struct Metrics {
    inner: RwLock<Inner>,
}

/// A report cut to the bounds the coordinator keeps ([`MAX_GPUS`], [`MAX_CONTAINERS`],
/// [`MAX_XIDS`]): a node cannot make it hold more.
pub fn bounded(mut report: NodeMetrics) -> NodeMetrics {
    report.gpus.truncate(MAX_GPUS);
    report.containers.truncate(MAX_CONTAINERS);
    for g in &mut report.gpus {
        g.xids.truncate(MAX_XIDS);
        g.uuid.truncate(96);
    }
    report
}

fn push<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() == POINTS {
        q.pop_front();
    }
    q.push_back(v);
}

impl Metrics {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The jobs of a report whose labels are not known yet (the caller reads them from the store).
    pub fn unknown_jobs(&self, report: &NodeMetrics) -> Vec<JobId> {
        let inner = self.read();
        report.containers.iter().filter(|c| !inner.jobs.contains_key(&c.job_id)).map(|c| c.job_id.clone()).collect()
    }

    /// Keeps a node's report, at `now_ms`. `labels` are the jobs [`Metrics::unknown_jobs`] named
    /// that the store knows as placed on this node; a container of any other job is not kept.
    pub fn record(&self, node: &NodeId, report: NodeMetrics, labels: Vec<(JobId, JobLabels)>, now_ms: i64) {
        let mut inner = self.write();
        let mut labels: HashMap<JobId, JobLabels> = labels.into_iter().collect();
        for c in &report.containers {
            let point = JobPoint {
                at_ms: now_ms,
                memory_used: c.memory_used,
                cpu_millicores: c.cpu_millicores.unwrap_or(u32::MAX).min(u32::MAX - 1),
            };
            match inner.jobs.get_mut(&c.job_id) {
                Some(series) if series.labels.node == *node => {
                    push(&mut series.points, point);
                    series.latest = c.clone();
                    series.updated_ms = now_ms;
                }
                Some(_) => {}
                // A job first seen here: kept with its first sample, when the store placed it here.
                None => {
                    if let Some(l) = labels.remove(&c.job_id) {
                        let series = JobSeries {
                            labels: l,
                            latest: c.clone(),
                            updated_ms: now_ms,
                            points: VecDeque::from([point]),
                        };
                        inner.jobs.insert(c.job_id.clone(), series);
                    }
                }
            }
        }
        let series = inner.nodes.entry(node.clone()).or_insert_with(|| NodeSeries {
            latest: Arc::default(),
            received_ms: now_ms,
            gpus: BTreeMap::new(),
        });
        // A report recorded late (its jobs' labels were read first) does not replace a newer one.
        if report.at_ms < series.latest.at_ms {
            return;
        }
        for g in report.gpus.iter().filter(|g| was_read(g)) {
            push(series.gpus.entry(g.index).or_default(), GpuPoint::of(now_ms, g));
        }
        series.latest = Arc::new(report);
        series.received_ms = now_ms;
    }

    /// Forgets nodes and jobs not reported since `FORGET_AFTER_MS` before `now_ms`, and a node's
    /// series when it is removed.
    pub fn prune(&self, now_ms: i64) -> usize {
        let mut inner = self.write();
        let before = inner.nodes.len() + inner.jobs.len();
        inner.nodes.retain(|_, s| now_ms - s.received_ms < FORGET_AFTER_MS);
        inner.jobs.retain(|_, s| now_ms - s.updated_ms < FORGET_AFTER_MS);
        before - inner.nodes.len() - inner.jobs.len()
    }

    /// A job's latest figures and history, with its GPUs' history over the same time.
    pub fn job(&self, job: &JobId) -> Option<JobView> {
        let inner = self.read();
        let s = inner.jobs.get(job)?;
        let node = inner.nodes.get(&s.labels.node);
        let since = s.points.front().map_or(s.updated_ms, |p| p.at_ms);
        let gpus = s
            .labels
            .gpus
            .iter()
            .map(|&index| {
                let history: Vec<GpuPoint> = node
                    .and_then(|n| n.gpus.get(&index))
                    .map(|h| h.iter().filter(|p| p.at_ms >= since).copied().collect())
                    .unwrap_or_default();
                let latest = node.and_then(|n| n.latest.gpus.iter().find(|g| g.index == index).cloned());
                (index, latest, history)
            })
            .collect();
        Some(JobView {
            labels: s.labels.clone(),
            latest: s.latest.clone(),
            updated_ms: s.updated_ms,
            points: s.points.iter().copied().collect(),
            gpus,
        })
    }

    /// Every node's latest report received since `since_ms`, for `/metrics`.
    pub fn latest_since(&self, since_ms: i64) -> Vec<(NodeId, Arc<NodeMetrics>)> {
        let inner = self.read();
        let mut out: Vec<_> = inner
            .nodes
            .iter()
            .filter(|(_, s)| s.received_ms >= since_ms)
            .map(|(n, s)| (n.clone(), s.latest.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The job on each (node, GPU), for labelling the GPUs' figures: the jobs in their node's
    /// latest report (one that ended is no longer on its GPU).
    pub fn gpu_jobs(&self) -> HashMap<(NodeId, u32), (JobId, JobLabels)> {
        let inner = self.read();
        let mut out = HashMap::new();
        for (job, s) in &inner.jobs {
            let current = inner.nodes.get(&s.labels.node).is_some_and(|n| s.updated_ms >= n.received_ms);
            if !current {
                continue;
            }
            for &g in &s.labels.gpus {
                out.insert((s.labels.node.clone(), g), (job.clone(), s.labels.clone()));
            }
        }
        out
    }

    /// Every job in its node's latest report, with its labels and figures (for `/metrics`).
    pub fn current_jobs(&self) -> Vec<(JobId, JobLabels, ContainerSample)> {
        let inner = self.read();
        inner
            .jobs
            .iter()
            .filter(|(_, s)| inner.nodes.get(&s.labels.node).is_some_and(|n| s.updated_ms >= n.received_ms))
            .map(|(job, s)| (job.clone(), s.labels.clone(), s.latest.clone()))
            .collect()
    }

    /// How many nodes and jobs are kept.
    pub fn sizes(&self) -> (usize, usize) {
        let inner = self.read();
        (inner.nodes.len(), inner.jobs.len())
    }
}

/// A node's report, as it arrives: its GPUs judged and the report kept, in memory. What a GPU's
/// health changes is carried out off the calling thread ([`health::apply`]), and so is reading the
/// store for jobs the report names for the first time: the caller is the agents' runtime.
pub fn received(state: &Arc<crate::State>, node: &NodeId, report: NodeMetrics) {
    let report = bounded(report);
    let now = crate::secrets::now_ms();
    let changes = state.health.assess(node, &report.gpus, now);
    if !changes.is_empty() {
        let (state2, node) = (state.clone(), node.clone());
        state.tasks.spawn_blocking(move || {
            if let Err(e) = health::apply(&state2, &node, &changes) {
                tracing::error!(%node, "cannot take GPUs out of service or back: {e:#}");
            }
        });
    }
    let unknown = state.metrics.unknown_jobs(&report);
    if unknown.is_empty() {
        state.metrics.record(node, report, Vec::new(), now);
        return;
    }
    let (state2, node) = (state.clone(), node.clone());
    state.tasks.spawn_blocking(move || {
        let labels = labels_of(&state2, &node, unknown);
        state2.metrics.record(&node, report, labels, now);
    });
}

/// What the store says of jobs a node's report names: those placed on that node.
fn labels_of(state: &crate::State, node: &NodeId, jobs: Vec<JobId>) -> Vec<(JobId, JobLabels)> {
    let mut labels = Vec::with_capacity(jobs.len());
    for job in jobs {
        match state.store.job(&job) {
            Ok(Some(j)) if j.node_id.as_ref() == Some(node) => {
                let gpus = j.allocation.map_or_else(Vec::new, |a| {
                    a.gpu_indices.into_iter().filter(|&g| g < corral_proto::resources::TPU_INDEX_BASE).collect()
                });
                let l = JobLabels { node: node.clone(), gpus, run: j.run_name, project: j.project, job_num: j.job_num };
                labels.push((job, l));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%job, "cannot read the job of a container's figures: {e}"),
        }
    }
    labels
}

/// Whether NVML answered anything about the GPU in the interval (a sample of nothing is no news).
pub fn was_read(g: &GpuSample) -> bool {
    g.lost
        || g.utilization.is_some()
        || g.memory_used.is_some()
        || g.temperature.is_some()
        || g.ecc.is_some()
        || g.retired_pages_pending.is_some()
        || g.remapped_rows.is_some()
        || !g.xids.is_empty()
}

/// A job's figures as [`Metrics::job`] gives them.
pub struct JobView {
    pub labels: JobLabels,
    pub latest: ContainerSample,
    pub updated_ms: i64,
    pub points: Vec<JobPoint>,
    /// Its GPUs: index, the latest sample, the history.
    pub gpus: Vec<(u32, Option<GpuSample>, Vec<GpuPoint>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(util: u8, containers: &[(&str, u32)]) -> NodeMetrics {
        NodeMetrics {
            at_ms: 0,
            interval_ms: 10_000,
            gpus: (0..2)
                .map(|i| GpuSample {
                    index: i,
                    uuid: format!("GPU-{i}"),
                    utilization: Some(util + i as u8),
                    memory_used: Some(1 << 30),
                    ..GpuSample::default()
                })
                .collect(),
            containers: containers
                .iter()
                .map(|(job, cpu)| ContainerSample {
                    job_id: JobId((*job).into()),
                    cpu_millicores: Some(*cpu),
                    memory_used: 42,
                    memory_limit: 100,
                    network_rx: 0,
                    network_tx: 0,
                    disk_read: 0,
                    disk_write: 0,
                })
                .collect(),
            ..NodeMetrics::default()
        }
    }

    fn labels(node: &str, gpus: &[u32]) -> JobLabels {
        JobLabels {
            node: NodeId(node.into()),
            gpus: gpus.to_vec(),
            run: "train".into(),
            project: "main".into(),
            job_num: 0,
        }
    }

    #[test]
    fn history_is_bounded_and_a_job_sees_its_own_gpus_over_its_time() {
        let m = Metrics::default();
        let n = NodeId("n1".into());
        m.record(&n, report(10, &[]), vec![], 0);
        let first = report(20, &[("j1", 500)]);
        assert_eq!(m.unknown_jobs(&first), [JobId("j1".into())]);
        m.record(&n, first, vec![(JobId("j1".into()), labels("n1", &[1]))], 1_000);
        for t in 2..100 {
            m.record(&n, report(30, &[("j1", 700), ("stranger", 1)]), vec![], t * 1_000);
        }
        let view = m.job(&JobId("j1".into())).expect("kept");
        assert_eq!(view.points.len(), POINTS);
        assert_eq!(view.points.last().and_then(JobPoint::cpu_millicores), Some(700));
        assert_eq!(view.gpus.len(), 1);
        let (index, latest, history) = &view.gpus[0];
        assert_eq!((*index, latest.as_ref().and_then(|g| g.utilization)), (1, Some(31)));
        assert_eq!(history.len(), POINTS, "the GPU's points over the job's time");
        assert_eq!(history[0].at_ms, view.points[0].at_ms);
        assert_eq!(history.last().and_then(GpuPoint::memory_used), Some(1 << 30));
        assert!(m.job(&JobId("stranger".into())).is_none(), "a container the store did not place here");
        let jobs = m.gpu_jobs();
        assert_eq!(jobs.get(&(n.clone(), 1)).map(|(j, _)| j.as_str()), Some("j1"));
        assert!(!jobs.contains_key(&(n.clone(), 0)));
        m.record(&n, report(30, &[]), vec![], 100_000);
        assert!(m.gpu_jobs().is_empty(), "a job its node no longer reports is on no GPU");
        assert_eq!(m.prune(100_000 + FORGET_AFTER_MS), 2, "the node and the job, ten minutes on");
        assert_eq!(m.sizes(), (0, 0));
    }

    #[test]
    fn a_point_packs_what_was_read_and_says_what_was_not() {
        let s =
            GpuSample { utilization: Some(99), power_mw: Some(312_400), temperature: Some(81), ..GpuSample::default() };
        let p = GpuPoint::of(5, &s);
        assert_eq!(
            (p.utilization(), p.power_mw(), p.temperature(), p.memory_used()),
            (Some(99), Some(312_000), Some(81), None)
        );
        assert_eq!(std::mem::size_of::<GpuPoint>(), 16);
        assert!(!was_read(&GpuSample::default()));
        assert!(was_read(&GpuSample { lost: true, ..GpuSample::default() }));
    }
}
