//! `/metrics` in Prometheus' text format (0.0.4), through `prometheus-client`: the cluster's state
//! (jobs by state, nodes by status, GPUs out of service), the coordinator's own counters
//! ([`Telemetry`]: submissions, placements, proxied requests and their latency per service, log and
//! image bytes), and what the nodes reported, with the DCGM exporter's metric names for GPUs
//! (`DCGM_FI_DEV_GPU_UTIL`, `DCGM_FI_DEV_FB_USED`, ...) so that dashboards made for it work. GPU
//! figures are labelled as it labels them (`Hostname`, `gpu`, `UUID`), and by the project, run and
//! job on the GPU when one is.

use std::collections::HashMap;
use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use corral_proto::ids::NodeId;
use corral_proto::metrics::{GpuSample, NodeMetrics};

use crate::State;

/// The `Content-Type` of the answer.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A node's report is exported while it is at most this old.
const FRESH_MS: i64 = 60_000;

type ServiceLabels = [(&'static str, String); 2];
type CodeLabels = [(&'static str, String); 3];

fn latency_histogram() -> Histogram {
    // 0.25 ms to ~8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

/// What the coordinator counts as it works.
pub struct Telemetry {
    pub submissions: Counter,
    pub placements: Counter,
    pub log_bytes: Counter,
    pub image_bytes: Counter,
    pub proxy_requests: Family<CodeLabels, Counter>,
    pub proxy_latency: Family<ServiceLabels, Histogram, fn() -> Histogram>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            submissions: Counter::default(),
            placements: Counter::default(),
            log_bytes: Counter::default(),
            image_bytes: Counter::default(),
            proxy_requests: Family::default(),
            proxy_latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl Telemetry {
    /// A request proxied to a service, its answer's status and how long it took.
    pub fn proxied(&self, project: &str, service: &str, status: u16, seconds: f64) {
        let code = [("project", project.to_owned()), ("service", service.to_owned()), ("code", status.to_string())];
        self.proxy_requests.get_or_create(&code).inc();
        let labels = [("project", project.to_owned()), ("service", service.to_owned())];
        self.proxy_latency.get_or_create(&labels).observe(seconds);
    }
}

/// The answer to a scrape.
pub fn render(state: &State) -> anyhow::Result<String> {
    let t = &state.telemetry;
    let mut registry = Registry::default();
    registry.register("corral_submissions", "Runs submitted", t.submissions.clone());
    registry.register("corral_placements", "Jobs placed on nodes", t.placements.clone());
    registry.register("corral_log_bytes", "Bytes of job output stored", t.log_bytes.clone());
    registry.register("corral_image_bytes", "Bytes of images pushed to the coordinator", t.image_bytes.clone());
    registry.register("corral_proxy_requests", "Requests proxied to services, by answer", t.proxy_requests.clone());
    registry.register(
        "corral_proxy_request_duration_seconds",
        "Time from a proxied request to its answer's head",
        t.proxy_latency.clone(),
    );
    registry.register_collector(Box::new(Snapshot::take(state)?));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// What a scrape reads from the store and the nodes' reports, taken once.
struct Snapshot {
    jobs_by_state: Vec<(String, u64)>,
    /// Runs by state: the active ones by their jobs, the rest `finished`.
    runs_by_state: Vec<(String, u64)>,
    /// Waiting jobs by the kind of their reason ([`pending_kind`]).
    pending: Vec<(&'static str, u64)>,
    nodes_by_status: Vec<(&'static str, u64)>,
    names: HashMap<NodeId, String>,
    reports: Vec<(NodeId, std::sync::Arc<NodeMetrics>)>,
    gpu_jobs: HashMap<(NodeId, u32), (String, String, String)>,
    jobs: Vec<([(&'static str, String); 4], corral_proto::metrics::ContainerSample)>,
    out_of_service: Vec<(NodeId, u32, String)>,
    queued: u64,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot").field("nodes", &self.names.len()).finish_non_exhaustive()
    }
}

impl Snapshot {
    fn take(state: &State) -> anyhow::Result<Self> {
        let jobs_by_state = state.store.job_counts_by_state()?;
        let queued = jobs_by_state.iter().filter(|(s, _)| s == "submitted" || s == "pending").map(|(_, n)| n).sum();
        let active = state.store.active_run_states()?;
        let mut runs: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        for s in &active {
            *runs.entry(s.to_string()).or_default() += 1;
        }
        let finished = state.store.run_count()?.saturating_sub(active.len() as u64);
        runs.insert("finished".to_owned(), finished);
        let mut pending: std::collections::BTreeMap<&'static str, u64> = std::collections::BTreeMap::new();
        for (message, n) in state.store.pending_reasons()? {
            *pending.entry(pending_kind(message.as_deref())).or_default() += n;
        }
        let flags = state.store.node_flags()?;
        let connected = state.sessions.connected();
        let (mut ready, mut offline, mut cordoned) = (0, 0, 0);
        let mut names = HashMap::with_capacity(flags.len());
        for (id, name, is_cordoned) in flags {
            match (connected.contains(&id), is_cordoned) {
                (false, _) => offline += 1,
                (true, true) => cordoned += 1,
                (true, false) => ready += 1,
            }
            names.insert(id, name);
        }
        let since = crate::secrets::now_ms() - FRESH_MS;
        let reports = state.metrics.latest_since(since);
        let gpu_jobs = state
            .metrics
            .gpu_jobs()
            .into_iter()
            .map(|(k, (job, l))| (k, (l.run, job.to_string(), l.project)))
            .collect();
        let mut jobs: Vec<_> = state
            .metrics
            .current_jobs()
            .into_iter()
            .map(|(job, l, sample)| {
                let node_name = names.get(&l.node).cloned().unwrap_or_else(|| l.node.to_string());
                ([("node", node_name), ("project", l.project), ("run", l.run), ("job", job.to_string())], sample)
            })
            .collect();
        jobs.sort_by(|a, b| a.0[3].1.cmp(&b.0[3].1));
        let out_of_service = state.health.all_marks().into_iter().map(|(node, m)| (node, m.gpu, m.uuid)).collect();
        Ok(Self {
            jobs_by_state,
            runs_by_state: runs.into_iter().collect(),
            pending: pending.into_iter().collect(),
            nodes_by_status: vec![("ready", ready), ("offline", offline), ("cordoned", cordoned)],
            names,
            reports,
            gpu_jobs,
            jobs,
            out_of_service,
            queued,
        })
    }

    /// A GPU's labels, as the DCGM exporter names them (`Hostname`, `gpu`, `UUID`), and the
    /// project, run and job on it when one is.
    fn gpu_labels(&self, node: &NodeId, g: &GpuSample) -> Vec<(&'static str, String)> {
        let name = self.names.get(node).cloned().unwrap_or_else(|| node.to_string());
        let mut labels = vec![("Hostname", name), ("gpu", g.index.to_string()), ("UUID", g.uuid.clone())];
        if let Some((run, job, project)) = self.gpu_jobs.get(&(node.clone(), g.index)) {
            labels.extend([("project", project.clone()), ("run", run.clone()), ("job", job.clone())]);
        }
        labels
    }
}

/// What a waiting job's reason is, from a short fixed list (the words carry counts and names, which
/// would make a series per message): the kinds placement explains (`placement::Index::explain`).
fn pending_kind(message: Option<&str>) -> &'static str {
    let Some(m) = message else { return "not_looked_at_yet" };
    if m.starts_with("no nodes") && m.contains("other projects' fleets") {
        "other_projects"
    } else if m.starts_with("no nodes") {
        "no_nodes"
    } else if m.contains(" is ready: ") {
        "not_ready"
    } else if m.starts_with("nodes: ") {
        "no_cluster"
    } else if m.contains(" free; ") {
        "busy"
    } else if m.starts_with("no node") && m.contains(" has ") {
        "no_fit"
    } else {
        "other"
    }
}

/// A gauge per GPU, by DCGM's name; GPUs whose reading is `None` are left out.
struct GpuGauge {
    name: &'static str,
    help: &'static str,
    value: fn(&GpuSample) -> Option<f64>,
}

const GPU_GAUGES: &[GpuGauge] = &[
    GpuGauge { name: "DCGM_FI_DEV_GPU_UTIL", help: "GPU utilization (in %)", value: |g| g.utilization.map(f64::from) },
    GpuGauge {
        name: "DCGM_FI_DEV_MEM_COPY_UTIL",
        help: "Memory utilization (in %)",
        value: |g| g.memory_utilization.map(f64::from),
    },
    GpuGauge {
        name: "DCGM_FI_DEV_FB_USED",
        help: "Framebuffer memory used (in MiB)",
        value: |g| g.memory_used.map(|b| (b >> 20) as f64),
    },
    GpuGauge {
        name: "DCGM_FI_DEV_FB_FREE",
        help: "Framebuffer memory free (in MiB)",
        value: |g| Some((g.memory_total?.saturating_sub(g.memory_used?) >> 20) as f64),
    },
    GpuGauge { name: "DCGM_FI_DEV_GPU_TEMP", help: "GPU temperature (in C)", value: |g| g.temperature.map(f64::from) },
    GpuGauge {
        name: "DCGM_FI_DEV_POWER_USAGE",
        help: "Power draw (in W)",
        value: |g| g.power_mw.map(|mw| f64::from(mw) / 1000.0),
    },
    GpuGauge {
        name: "DCGM_FI_DEV_SM_CLOCK",
        help: "SM clock frequency (in MHz)",
        value: |g| g.sm_clock_mhz.map(f64::from),
    },
    GpuGauge {
        name: "DCGM_FI_DEV_MEM_CLOCK",
        help: "Memory clock frequency (in MHz)",
        value: |g| g.memory_clock_mhz.map(f64::from),
    },
    GpuGauge {
        name: "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
        help: "Current clock throttle reasons (NVML's bitmask)",
        value: |g| g.throttle_reasons.map(|r| r as f64),
    },
    GpuGauge {
        name: "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
        help: "Single-bit (corrected) ECC errors since the driver loaded",
        value: |g| g.ecc.map(|e| e.corrected_volatile as f64),
    },
    GpuGauge {
        name: "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        help: "Double-bit (uncorrectable) ECC errors since the driver loaded",
        value: |g| g.ecc.map(|e| e.uncorrected_volatile as f64),
    },
    GpuGauge {
        name: "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
        help: "Single-bit (corrected) ECC errors over the GPU's life",
        value: |g| g.ecc.map(|e| e.corrected_aggregate as f64),
    },
    GpuGauge {
        name: "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
        help: "Double-bit (uncorrectable) ECC errors over the GPU's life",
        value: |g| g.ecc.map(|e| e.uncorrected_aggregate as f64),
    },
    GpuGauge {
        name: "DCGM_FI_DEV_RETIRED_PENDING",
        help: "Pages pending retirement (1: some)",
        value: |g| g.retired_pages_pending.map(|p| f64::from(u8::from(p))),
    },
    GpuGauge {
        name: "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        help: "Rows remapped for correctable errors",
        value: |g| g.remapped_rows.map(|r| f64::from(r.correctable)),
    },
    GpuGauge {
        name: "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        help: "Rows remapped for uncorrectable errors",
        value: |g| g.remapped_rows.map(|r| f64::from(r.uncorrectable)),
    },
    GpuGauge {
        name: "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        help: "Whether a row remap failed (1: yes)",
        value: |g| g.remapped_rows.map(|r| f64::from(u8::from(r.failure))),
    },
    GpuGauge {
        name: "DCGM_FI_DEV_XID_ERRORS",
        help: "The last Xid error of the interval (0: none)",
        value: |g| Some(g.xids.last().copied().unwrap_or(0) as f64),
    },
];

type JobLabels4 = [(&'static str, String); 4];

/// A figure per job's container.
struct JobFigure {
    name: &'static str,
    help: &'static str,
    counter: bool,
    value: fn(&corral_proto::metrics::ContainerSample) -> Option<f64>,
}

const JOB_FIGURES: &[JobFigure] = &[
    JobFigure {
        name: "corral_job_cpu_cores",
        help: "CPU cores the job's container used over the last interval",
        counter: false,
        value: |c| c.cpu_millicores.map(|m| f64::from(m) / 1000.0),
    },
    JobFigure {
        name: "corral_job_memory_used_bytes",
        help: "Memory the job's container uses (without the page cache)",
        counter: false,
        value: |c| Some(c.memory_used as f64),
    },
    JobFigure {
        name: "corral_job_memory_limit_bytes",
        help: "The job's container's memory limit",
        counter: false,
        value: |c| Some(c.memory_limit as f64),
    },
    JobFigure {
        name: "corral_job_network_receive_bytes",
        help: "Bytes the job's container received",
        counter: true,
        value: |c| Some(c.network_rx as f64),
    },
    JobFigure {
        name: "corral_job_network_transmit_bytes",
        help: "Bytes the job's container sent",
        counter: true,
        value: |c| Some(c.network_tx as f64),
    },
    JobFigure {
        name: "corral_job_disk_read_bytes",
        help: "Bytes the job's container read from disk",
        counter: true,
        value: |c| Some(c.disk_read as f64),
    },
    JobFigure {
        name: "corral_job_disk_write_bytes",
        help: "Bytes the job's container wrote to disk",
        counter: true,
        value: |c| Some(c.disk_write as f64),
    },
];

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut m = encoder.encode_descriptor("corral_jobs", "Jobs by state", None, MetricType::Gauge)?;
        for (state, n) in &self.jobs_by_state {
            ConstGauge::new(*n as i64).encode(m.encode_family(&[("state", state.as_str())])?)?;
        }
        let mut m = encoder.encode_descriptor(
            "corral_runs",
            "Runs by state (active ones as their jobs make them; the rest finished)",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in &self.runs_by_state {
            ConstGauge::new(*n as i64).encode(m.encode_family(&[("state", state.as_str())])?)?;
        }
        let m = encoder.encode_descriptor("corral_queue_depth", "Jobs waiting for a node", None, MetricType::Gauge)?;
        ConstGauge::new(self.queued as i64).encode(m)?;
        let mut m = encoder.encode_descriptor(
            "corral_jobs_waiting",
            "Jobs waiting for a node, by why (the pending reason `corral ps` shows, by kind)",
            None,
            MetricType::Gauge,
        )?;
        for (kind, n) in &self.pending {
            ConstGauge::new(*n as i64).encode(m.encode_family(&[("reason", *kind)])?)?;
        }
        let mut m = encoder.encode_descriptor("corral_nodes", "Nodes by status", None, MetricType::Gauge)?;
        for (status, n) in &self.nodes_by_status {
            ConstGauge::new(*n as i64).encode(m.encode_family(&[("status", *status)])?)?;
        }
        let mut m = encoder.encode_descriptor(
            "corral_gpu_out_of_service",
            "GPUs taken out of service for a fault (1 each)",
            None,
            MetricType::Gauge,
        )?;
        for (node, gpu, uuid) in &self.out_of_service {
            let name = self.names.get(node).cloned().unwrap_or_else(|| node.to_string());
            let labels = [("node", name), ("gpu", gpu.to_string()), ("UUID", uuid.clone())];
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }
        let mut m = encoder.encode_descriptor(
            "corral_node_cpu_cores_used",
            "CPU cores the node used over the last interval",
            None,
            MetricType::Gauge,
        )?;
        for (node, r) in &self.reports {
            let name = self.names.get(node).cloned().unwrap_or_else(|| node.to_string());
            ConstGauge::new(f64::from(r.host.cpu_millicores) / 1000.0).encode(m.encode_family(&[("node", name)])?)?;
        }
        let mut m = encoder.encode_descriptor(
            "corral_node_memory_used_bytes",
            "Memory in use on the node",
            None,
            MetricType::Gauge,
        )?;
        for (node, r) in &self.reports {
            let name = self.names.get(node).cloned().unwrap_or_else(|| node.to_string());
            ConstGauge::new(r.host.memory_used as i64).encode(m.encode_family(&[("node", name)])?)?;
        }
        // Each GPU's labels once, for all of its gauges.
        let gpus: Vec<(Vec<(&'static str, String)>, &GpuSample)> = self
            .reports
            .iter()
            .flat_map(|(node, r)| {
                r.gpus.iter().filter(|g| super::was_read(g) && !g.lost).map(move |g| (self.gpu_labels(node, g), g))
            })
            .collect();
        for gauge in GPU_GAUGES {
            let mut m = encoder.encode_descriptor(gauge.name, gauge.help, None, MetricType::Gauge)?;
            for (labels, g) in &gpus {
                if let Some(v) = (gauge.value)(g) {
                    ConstGauge::new(v).encode(m.encode_family(labels)?)?;
                }
            }
        }
        for figure in JOB_FIGURES {
            let kind = if figure.counter { MetricType::Counter } else { MetricType::Gauge };
            let mut m = encoder.encode_descriptor(figure.name, figure.help, None, kind)?;
            for (labels, c) in &self.jobs {
                let labels: &JobLabels4 = labels;
                let Some(v) = (figure.value)(c) else { continue };
                let family = m.encode_family(labels)?;
                if figure.counter {
                    ConstCounter::new(v).encode(family)?;
                } else {
                    ConstGauge::new(v).encode(family)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::pending_kind;

    #[test]
    fn pending_reasons_fall_into_the_kinds_placement_explains() {
        let kind = |m: &str| pending_kind(Some(m));
        assert_eq!(kind("no node with 2 A100 GPU(s) free; 3 node(s) have them busy"), "busy");
        assert_eq!(kind("no node has 8 H100 GPU(s) (e.g. gpu-01: has no GPU matching H100)"), "no_fit");
        assert_eq!(kind("no node is ready: 1 offline, 2 cordoned"), "not_ready");
        assert_eq!(kind("no nodes in fleet(s) rack (see `corral node list`)"), "no_nodes");
        assert_eq!(
            kind("no nodes for project main: 1 node(s) are in other projects' fleets (see `corral node list`)"),
            "other_projects"
        );
        assert_eq!(
            kind("nodes: 4 needs that many ready nodes of one fleet with `placement: cluster`; 2 available"),
            "no_cluster"
        );
        assert_eq!(kind("no node with 1 GPU(s) free; 1 node(s) have them busy (rank 1 of the gang)"), "busy");
        assert_eq!(kind("something new"), "other");
        assert_eq!(pending_kind(None), "not_looked_at_yet");
    }
}
