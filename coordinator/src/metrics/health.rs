//! GPU health: a GPU whose report shows a fault ([`corral_proto::metrics::faults`]: a fatal Xid,
//! uncorrectable ECC errors, pages waiting to be retired, a failed row remap, a lost GPU) is taken
//! out of service. The scheduler places nothing on it, the jobs on it end `gpu_error` (and are
//! retried elsewhere per their `retry`), an event says what happened, and a node whose GPUs are all
//! out is cordoned. It comes back when an operator says so (`corral node gpu enable NODE INDEX`),
//! or by itself when the coordinator runs with `--gpu-auto-return` and the fault was a condition
//! that the node's reports show cleared (an Xid is an event and never clears by itself).
//!
//! [`Health`] keeps the marks in memory, as the store has them, and decides from each report
//! without I/O ([`Health::assess`]); [`apply`] carries out what it decided.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use corral_proto::ids::NodeId;
use corral_proto::job::TerminationReason;
use corral_proto::metrics::{GpuSample, faults};
use corral_proto::wire::CoordinatorMessage;

use crate::State;
use crate::store::{GpuMark, Store, StoreError};

/// What a report changes about a node's GPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Out of service, for `reason`.
    Out { gpu: u32, uuid: String, reason: String, condition: bool },
    /// Its fault cleared and the coordinator returns GPUs by themselves.
    Back { gpu: u32, uuid: String },
}

/// The GPUs out of service, per node.
pub struct Health {
    marks: Mutex<HashMap<NodeId, BTreeMap<u32, GpuMark>>>,
    /// Whether a GPU whose fault cleared comes back without an operator (`--gpu-auto-return`).
    auto_return: bool,
}

impl Health {
    /// The marks the store keeps.
    pub fn load(store: &Store, auto_return: bool) -> Result<Self, StoreError> {
        let mut marks: HashMap<NodeId, BTreeMap<u32, GpuMark>> = HashMap::new();
        for (node, mark) in store.gpu_marks()? {
            marks.entry(node).or_default().insert(mark.gpu, mark);
        }
        Ok(Self { marks: Mutex::new(marks), auto_return })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, BTreeMap<u32, GpuMark>>> {
        self.marks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a node's report changes, at `now_ms`; the marks are updated at once (a report that
    /// follows does not decide again), the store by [`apply`].
    pub fn assess(&self, node: &NodeId, gpus: &[GpuSample], now_ms: i64) -> Vec<Change> {
        let mut all = self.lock();
        let mut changes = Vec::new();
        for g in gpus.iter().filter(|g| super::was_read(g)) {
            let found = faults(g);
            // Most reports of most nodes: no fault and no mark, and nothing is written.
            match (all.get(node).and_then(|m| m.get(&g.index)), found.is_empty()) {
                (None, false) => {
                    let reason = found.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                    let condition = found.iter().all(|f| f.is_condition());
                    let mark = GpuMark {
                        gpu: g.index,
                        uuid: g.uuid.clone(),
                        reason: reason.clone(),
                        since_ms: now_ms,
                        condition,
                    };
                    all.entry(node.clone()).or_default().insert(g.index, mark);
                    changes.push(Change::Out { gpu: g.index, uuid: g.uuid.clone(), reason, condition });
                }
                // Cleared: only a condition, only when it was read (a lost GPU reads nothing), only
                // when the operator allowed it.
                (Some(m), true) if m.condition && self.auto_return && condition_read(g) => {
                    changes.push(Change::Back { gpu: g.index, uuid: m.uuid.clone() });
                    if let Some(marks) = all.get_mut(node) {
                        marks.remove(&g.index);
                        if marks.is_empty() {
                            all.remove(node);
                        }
                    }
                }
                _ => {}
            }
        }
        changes
    }

    /// Every GPU out of service, by node (for `/metrics`).
    pub fn all_marks(&self) -> Vec<(NodeId, GpuMark)> {
        let all = self.lock();
        all.iter().flat_map(|(n, m)| m.values().map(move |mark| (n.clone(), mark.clone()))).collect()
    }

    /// The node's GPUs out of service (their indices).
    pub fn out_of_service(&self, node: &NodeId) -> Vec<u32> {
        self.lock().get(node).map(|m| m.keys().copied().collect()).unwrap_or_default()
    }

    /// Every mark of a node.
    pub fn marks(&self, node: &NodeId) -> Vec<GpuMark> {
        self.lock().get(node).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Returns a GPU to service (the operator's word): its mark is gone from memory; the caller
    /// removes it from the store. Whether it was out.
    pub fn enable(&self, node: &NodeId, gpu: u32) -> bool {
        let mut all = self.lock();
        let removed = all.get_mut(node).and_then(|m| m.remove(&gpu)).is_some();
        if all.get(node).is_some_and(BTreeMap::is_empty) {
            all.remove(node);
        }
        removed
    }

    /// Forgets a removed node's marks.
    pub fn forget(&self, node: &NodeId) {
        self.lock().remove(node);
    }
}

/// Whether a sample read the conditions a fault could be (its counters were answered).
fn condition_read(g: &GpuSample) -> bool {
    !g.lost && (g.ecc.is_some() || g.retired_pages_pending.is_some() || g.remapped_rows.is_some())
}

/// Carries out a report's changes: the store's marks, a cordon when every GPU of the node is out,
/// the scheduler told — all before the jobs on a GPU taken out end `gpu_error` (their containers
/// stopped), so that no retry of theirs is placed on it — and the events. Blocking (the store).
pub fn apply(state: &State, node: &NodeId, changes: &[Change]) -> anyhow::Result<()> {
    let name = state.store.node_name(node)?.unwrap_or_else(|| node.to_string());
    for change in changes {
        match change {
            Change::Out { gpu, uuid, reason, condition } => {
                let mark = GpuMark {
                    gpu: *gpu,
                    uuid: uuid.clone(),
                    reason: reason.clone(),
                    since_ms: crate::secrets::now_ms(),
                    condition: *condition,
                };
                state.store.mark_gpu(node, &mark)?;
                tracing::error!(node = %name, gpu, %uuid, "GPU out of service: {reason}");
            }
            Change::Back { gpu, uuid } => {
                state.store.unmark_gpu(node, *gpu)?;
                tracing::info!(node = %name, gpu, %uuid, "GPU back in service: its fault cleared");
                let detail = format!("{uuid}: the fault cleared (--gpu-auto-return)");
                state.store.record_event(
                    None,
                    None,
                    "gpu.healthy",
                    Some(&format!("{name}/gpu{gpu}")),
                    Some(&detail),
                )?;
            }
        }
    }
    let mut cordoned = None;
    if changes.iter().any(|c| matches!(c, Change::Out { .. })) {
        let total = state.store.node(node)?.and_then(|n| n.inventory).map_or(0, |i| i.gpus.len());
        let out = state.health.out_of_service(node).len();
        if total > 0 && out >= total && state.store.cordon_node(node)? {
            tracing::error!(node = %name, "every GPU of the node is out of service: cordoned");
            cordoned = Some(format!("all {total} GPUs are out of service"));
        }
    }
    state.scheduler.node_changed(node);
    for change in changes {
        let Change::Out { gpu, uuid, reason, .. } = change else { continue };
        let mut ended = Vec::new();
        for job in state.store.placed_jobs_on(node)? {
            if !job.allocation.as_ref().is_some_and(|a| a.gpu_indices.contains(gpu)) {
                continue;
            }
            let message = format!("GPU {gpu} ({uuid}) of node {name} was taken out of service: {reason}");
            if state.finish_job(&job.id, TerminationReason::GpuError, None, Some(&message))? {
                ended.push(format!("{}/{}", job.run_name, job.job_num));
            }
            state.send(
                node,
                CoordinatorMessage::StopJob {
                    job_id: job.id.clone(),
                    abort: true,
                    reason: TerminationReason::GpuError,
                },
            );
        }
        let mut detail = format!("{uuid}: {reason}");
        if !ended.is_empty() {
            detail.push_str(&format!("; ended gpu_error: {}", ended.join(", ")));
        }
        state.store.record_event(None, None, "gpu.unhealthy", Some(&format!("{name}/gpu{gpu}")), Some(&detail))?;
    }
    if let Some(detail) = cordoned {
        state.store.record_event(None, None, "node.cordon", Some(&name), Some(&detail))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use corral_proto::metrics::{EccCounts, RemappedRows};

    use super::*;

    fn health(auto_return: bool) -> Health {
        Health { marks: Mutex::default(), auto_return }
    }

    fn gpu(index: u32) -> GpuSample {
        GpuSample {
            index,
            uuid: format!("GPU-{index}"),
            utilization: Some(50),
            ecc: Some(EccCounts::default()),
            retired_pages_pending: Some(false),
            remapped_rows: Some(RemappedRows::default()),
            ..GpuSample::default()
        }
    }

    fn ecc(index: u32, n: u64) -> GpuSample {
        GpuSample { ecc: Some(EccCounts { uncorrected_volatile: n, ..EccCounts::default() }), ..gpu(index) }
    }

    #[test]
    fn a_fault_takes_a_gpu_out_once_and_only_an_operator_returns_it() {
        let h = health(false);
        let n = NodeId("n1".into());
        assert_eq!(h.assess(&n, &[gpu(0), gpu(1)], 1), []);
        let changes = h.assess(&n, &[gpu(0), ecc(1, 3)], 2);
        assert_eq!(
            changes,
            [Change::Out {
                gpu: 1,
                uuid: "GPU-1".into(),
                reason: "3 uncorrectable ECC error(s) since the driver loaded".into(),
                condition: true
            }]
        );
        assert_eq!(h.assess(&n, &[gpu(0), ecc(1, 4)], 3), [], "decided once");
        assert_eq!(h.assess(&n, &[gpu(0), gpu(1)], 4), [], "cleared, but no auto return");
        assert_eq!(h.out_of_service(&n), [1]);
        assert!(h.enable(&n, 1) && !h.enable(&n, 1));
        assert_eq!(h.out_of_service(&n), Vec::<u32>::new());
        assert!(
            matches!(h.assess(&n, &[ecc(1, 4)], 5).as_slice(), [Change::Out { gpu: 1, .. }]),
            "still faulty: out again"
        );
    }

    #[test]
    fn with_auto_return_a_cleared_condition_comes_back_but_an_xid_does_not() {
        let h = health(true);
        let n = NodeId("n1".into());
        let xid = GpuSample { xids: vec![13, 79], ..gpu(0) };
        let out = h.assess(&n, &[xid, ecc(1, 1)], 1);
        assert!(
            matches!(&out[..], [Change::Out { gpu: 0, condition: false, reason, .. }, Change::Out { gpu: 1, condition: true, .. }] if reason == "Xid 79 (fallen off the bus)"),
            "{out:?}"
        );
        let lost = GpuSample { lost: true, ..GpuSample::default() };
        assert_eq!(
            h.assess(&n, &[gpu(0), GpuSample { index: 1, ..lost.clone() }], 2),
            [],
            "a lost GPU reads no condition"
        );
        assert_eq!(
            h.assess(&n, &[gpu(0), GpuSample { index: 1, ..GpuSample::default() }], 3),
            [],
            "not read this interval"
        );
        assert_eq!(h.assess(&n, &[gpu(0), gpu(1)], 4), [Change::Back { gpu: 1, uuid: "GPU-1".into() }]);
        assert_eq!(h.out_of_service(&n), [0], "the Xid stays");
        let l = h.assess(&n, &[GpuSample { index: 2, uuid: "GPU-2".into(), ..lost }], 5);
        assert!(matches!(&l[..], [Change::Out { gpu: 2, condition: true, .. }]), "{l:?}");
    }
}
