//! Placement: each pass takes the queued jobs oldest first and puts each on the first connected node
//! where it fits, reserving GPUs by index so that no two jobs share one. A job that fits nowhere
//! stays `pending` with the reason, per node, in its status message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use corral_proto::config::{Configuration, TaskConfig};
use corral_proto::ids::NodeId;
use corral_proto::inventory::HostInventory;
use corral_proto::job::JobSpec;
use corral_proto::resources::{Allocation, Memory, fit};
use corral_proto::wire::CoordinatorMessage;

use crate::State;
use crate::store::JobRow;

/// Passes run at least this often even when nothing pokes the scheduler.
const PERIOD: Duration = Duration::from_secs(2);
/// Grace between SIGTERM and SIGKILL for `stop_duration: off` ("as long as it takes"): a day.
pub const UNBOUNDED_STOP_GRACE_SECS: u64 = 24 * 3600;

pub async fn run(state: Arc<State>, shutdown: CancellationToken) {
    loop {
        if let Err(e) = schedule_once(&state) {
            tracing::error!("scheduling pass failed: {e:#}");
        }
        tokio::select! {
            () = state.wake_scheduler.notified() => {}
            () = tokio::time::sleep(PERIOD) => {}
            () = shutdown.cancelled() => break,
        }
    }
}

#[derive(Default)]
struct Usage {
    cpus: u32,
    memory: Memory,
    gpus: Vec<u32>,
}

impl Usage {
    fn add(&mut self, a: &Allocation) {
        self.cpus += a.cpus;
        self.memory = Memory(self.memory.0 + a.memory.0);
        self.gpus.extend(&a.gpu_indices);
    }
}

pub fn schedule_once(state: &State) -> anyhow::Result<()> {
    let _pass = state.placement.lock().unwrap_or_else(|e| e.into_inner());
    let queued = state.store.queued_jobs()?;
    if queued.is_empty() {
        return Ok(());
    }
    let connected = state.connected_nodes();
    let mut nodes: Vec<(NodeId, String, HostInventory)> = state
        .store
        .nodes()?
        .into_iter()
        .filter(|n| connected.contains(&n.id))
        .filter_map(|n| Some((n.id, n.name, n.inventory?)))
        .collect();
    nodes.sort_by(|a, b| a.1.cmp(&b.1));
    let mut usage: HashMap<NodeId, Usage> = HashMap::new();
    for job in state.store.placed_jobs()? {
        if let (Some(node), Some(alloc)) = (&job.node_id, &job.allocation) {
            usage.entry(node.clone()).or_default().add(alloc);
        }
    }

    for job in queued {
        let Configuration::Task(task) = &job.configuration else {
            continue;
        };
        if nodes.is_empty() {
            state
                .store
                .set_pending(&job.id, "no nodes are connected (see `corral node list`)")?;
            continue;
        }
        let mut misfits = Vec::new();
        let mut placed = None;
        for (id, name, inv) in &nodes {
            let used = usage.entry(id.clone()).or_default();
            match fit(&task.resources, inv, used.cpus, used.memory, &used.gpus) {
                Ok(alloc) => {
                    placed = Some((id.clone(), alloc));
                    break;
                }
                Err(why) => misfits.push(format!("{name}: {why}")),
            }
        }
        let Some((node, alloc)) = placed else {
            state
                .store
                .set_pending(&job.id, &format!("no node fits: {}", misfits.join("; ")))?;
            continue;
        };
        let spec = job_spec(&job, task, &node, alloc);
        if state.store.assign(&job.id, &node, &spec)? {
            usage.entry(node.clone()).or_default().add(&spec.allocation);
            tracing::info!(job = %job.id, run = %job.run_name, %node, gpus = ?spec.allocation.gpu_indices, "job placed");
            state.send(&node, CoordinatorMessage::StartJob(Box::new(spec)));
        }
    }
    Ok(())
}

/// What the agent is told to run: the task's configuration plus the allocation and the variables
/// every job sees (`CORRAL_*`, with dstack's `DSTACK_*` names as aliases).
fn job_spec(job: &JobRow, task: &TaskConfig, node: &NodeId, allocation: Allocation) -> JobSpec {
    let gpus = allocation.gpu_indices.len();
    let mut env: Vec<(String, String)> = task
        .env
        .iter()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect();
    for (name, value) in [
        ("RUN_NAME", job.run_name.clone()),
        ("RUN_ID", job.run_id.to_string()),
        ("JOB_ID", job.id.to_string()),
        ("NODE_RANK", job.job_num.to_string()),
        ("NODES_NUM", "1".to_owned()),
        ("GPUS_PER_NODE", gpus.to_string()),
        ("GPUS_NUM", gpus.to_string()),
    ] {
        env.push((format!("CORRAL_{name}"), value.clone()));
        env.push((format!("DSTACK_{name}"), value));
    }
    JobSpec {
        job_id: job.id.clone(),
        run_id: job.run_id.clone(),
        run_name: job.run_name.clone(),
        project: job.project.clone(),
        node_id: node.clone(),
        image: task.image.clone().unwrap_or_default(),
        commands: task.commands.clone(),
        env,
        working_dir: task.working_dir.clone(),
        allocation,
        max_duration_secs: task.max_duration_secs,
        stop_grace_secs: task.stop_duration_secs.unwrap_or(UNBOUNDED_STOP_GRACE_SECS),
    }
}
