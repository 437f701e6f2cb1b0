//! The scheduler: a queue of runs waiting for nodes, ordered by `priority` (high first) and then
//! submission time, and the [`placement::Index`] of what every node has free. A pass walks the
//! queue and places every run that fits — a run that does not fit never blocks smaller ones behind
//! it — then writes all assignments in one transaction and sends the nodes their jobs.
//!
//! The index and the queue live in memory and follow events (submission, job end, node connect,
//! inventory). They are rebuilt from the store on start and every [`RESYNC`] regardless, so a missed
//! event costs a little time, never a double booking for long.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use corral_proto::config::{Configuration, RetryEvent, StartupOrder, TaskConfig};
use corral_proto::ids::{JobId, NodeId, RunId};
use corral_proto::job::{JobSpec, TerminationReason};
use corral_proto::resources::Allocation;
use corral_proto::wire::CoordinatorMessage;

use crate::State;
use crate::scheduling::handle::{Command, Inbox};
use crate::scheduling::placement::{Index, Request};
use crate::store::{JobRow, Store};

/// Passes run at least this often even when nothing pokes the scheduler.
const PERIOD: Duration = Duration::from_secs(2);
/// How often the in-memory view is rebuilt from the store.
const RESYNC: Duration = Duration::from_secs(30);
/// Grace between SIGTERM and SIGKILL for `stop_duration: off` ("as long as it takes"): a day.
pub const UNBOUNDED_STOP_GRACE_SECS: u64 = 24 * 3600;
/// Reasons rewritten per pass for runs that already wait (a new run's reason is always written):
/// when the cluster changes under a long queue, the new words reach the store over a few passes
/// instead of one long write.
const REASON_UPDATES_PER_PASS: usize = 2_000;
/// Jobs placed per pass at most. Each pass writes its placements in one transaction while it
/// holds the scheduler's lock; chunks keep that short when a long queue meets free nodes (100,000
/// jobs onto 10,000 nodes), so reports, submissions and finished jobs get their turn between them.
const JOBS_PER_PASS: usize = 4_096;
/// Where a multi-node job finds its MPI hostfile.
const MPI_HOSTFILE: &str = "/tmp/corral-mpi-hostfile";

#[cfg(test)]
mod tests;

pub async fn run(state: Arc<State>, shutdown: CancellationToken) {
    loop {
        let pass = state.scheduler.begin_pass();
        // A pass is synchronous work (the index, SQLite) that can take a while with a long queue:
        // off the runtime's workers, so that it never delays heartbeats or requests.
        let s = state.clone();
        match tokio::task::spawn_blocking(move || schedule_once(&s)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("scheduling pass failed: {e:#}"),
            Err(e) => tracing::error!("scheduling pass panicked: {e}"),
        }
        state.scheduler.end_pass(pass);
        tokio::select! {
            () = state.scheduler.woken(PERIOD) => {}
            () = shutdown.cancelled() => break,
        }
    }
}

/// Queue order: higher priority first, then older first. The last part tells a service's replicas
/// apart (each is placed on its own); it is 0 for a task, whose ranks are placed together.
type QueueKey = (Reverse<u8>, i64, RunId, u32);

struct Queued {
    run_name: String,
    project: String,
    /// The run's jobs by rank, as they are queued (a rank still ending from an earlier attempt is
    /// not, yet).
    jobs: Vec<Option<JobId>>,
    task: TaskConfig,
    request: Request,
    /// Requests alike share a key: once one fails, the others are not tried again until the
    /// index changes in a way that can make room.
    shape: u64,
    /// The reason last written to the store, to write only changes.
    reason: Option<String>,
    /// A retry waits for its backoff.
    not_before_ms: Option<i64>,
    /// A dev environment's `inactivity_duration`.
    inactivity: Option<Duration>,
    /// The named volumes its jobs mount (they decide where it goes).
    volumes: crate::volumes::RunVolumes,
    /// A service replica of a router service: it may have to go on its router's node.
    routed: bool,
}

impl Queued {
    fn new(task: TaskConfig, project: &str, run_name: &str) -> Self {
        let (resources, ranks) = crate::scheduling::node_groups::rank_resources(&task);
        let request = Request {
            resources,
            ranks,
            nodes: task.nodes.max(1),
            fleets: task.provisioning.fleets.iter().map(|f| f.name.clone()).collect(),
            instances: task.provisioning.instances.clone(),
            pinned: Vec::new(),
            project: Some(project.to_owned()),
        };
        let volumes = crate::volumes::RunVolumes::of(&task, project, task.nodes);
        let shape = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&request, &volumes).hash(&mut h);
            h.finish()
        };
        Self {
            run_name: run_name.to_owned(),
            project: project.to_owned(),
            jobs: Vec::new(),
            task,
            request,
            shape,
            reason: None,
            not_before_ms: None,
            inactivity: None,
            volumes,
            routed: false,
        }
    }

    /// The run's jobs by rank, once every rank is queued.
    fn gang(&self) -> Option<Vec<JobId>> {
        if self.jobs.len() != self.request.nodes as usize {
            return None;
        }
        self.jobs.iter().cloned().collect()
    }
}

/// A run a pass placed: its jobs by rank and where each goes (reserved in the index).
struct Placement {
    key: QueueKey,
    jobs: Vec<JobId>,
    allocs: Vec<(NodeId, Allocation)>,
}

/// What a pass decides, before anything is written or sent ([`Scheduler::plan`]).
#[derive(Default)]
struct Plan {
    /// Runs placed, in queue order (still in the queue: taken out as their placement is stored).
    placed: Vec<Placement>,
    /// Jobs that wait, and why: only reasons not yet written.
    waits: Vec<(JobId, String)>,
    /// Runs that waited past their no-capacity retry window: they fail, with this message
    /// ([`Scheduler::take_expired`], once the pass's waits are written).
    expired: Vec<(QueueKey, String)>,
    /// The pass stopped at [`JOBS_PER_PASS`]: another follows at once.
    more: bool,
    /// It looked at the whole queue, not only at what was new.
    full: bool,
}

pub struct Scheduler {
    index: Index,
    queue: BTreeMap<QueueKey, Queued>,
    addresses: HashMap<NodeId, String>,
    synced_at: Option<tokio::time::Instant>,
    /// Queue entries added since the last pass.
    fresh: Vec<QueueKey>,
    /// The index generation and time of the last pass over the whole queue.
    full_pass: Option<(u64, tokio::time::Instant)>,
    /// Shapes that did not fit since that pass, and why: while the index has not changed, they
    /// still do not, so a pass needs to look at fresh entries only.
    failed: HashMap<u64, Arc<str>>,
    /// Where named volumes are: runs that mount one are placed on its node.
    volumes: crate::volumes::Homes,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new()
    }
}

impl Scheduler {
    pub fn new() -> Self {
        Self {
            index: Index::new(),
            queue: BTreeMap::new(),
            addresses: HashMap::new(),
            synced_at: None,
            fresh: Vec::new(),
            full_pass: None,
            failed: HashMap::new(),
            volumes: crate::volumes::Homes::default(),
        }
    }

    /// Rebuilds the index and the queue from the store.
    fn resync(&mut self, state: &State) -> anyhow::Result<()> {
        let connected = state.sessions.connected();
        let mut index = Index::new();
        self.addresses.clear();
        for n in state.store.nodes()? {
            let Some(inv) = n.inventory.clone() else { continue };
            let inv = in_service(state, &n.id, inv);
            let shape = crate::nodes::fleet_nodes::shape(state, &n, &inv);
            index.upsert(&n.id, &n.name, n.fleet.clone(), shape.cluster, shape.blocks, inv);
            index.set_profile(&n.id, shape.profile);
            index.set_connected(&n.id, connected.contains(&n.id));
            index.set_cordoned(&n.id, n.cordoned);
            if let Some(a) = shape.address.or(n.address) {
                self.addresses.insert(n.id, a);
            }
        }
        for (node, a) in state.store.placed_allocations()? {
            index.reserve(&node, &a);
        }
        self.index = index;
        self.volumes.reload(&state.store)?;
        // The queue: entries whose jobs are all still queued stay as they are (their configuration
        // is not read again); the runs of the other queued jobs are read from the store.
        let queued = state.store.queued_job_ids()?;
        let still: std::collections::HashSet<&JobId> = queued.iter().map(|(j, _)| j).collect();
        let mut covered = std::collections::HashSet::new();
        for (key, q) in std::mem::take(&mut self.queue) {
            if !q.jobs.is_empty() && q.jobs.iter().all(|j| j.as_ref().is_some_and(|j| still.contains(j))) {
                covered.extend(q.jobs.iter().flatten().cloned());
                self.queue.insert(key, q);
            }
        }
        let missing: std::collections::HashSet<&RunId> =
            queued.iter().filter(|(j, _)| !covered.contains(j)).map(|(_, r)| r).collect();
        for run in missing {
            self.enqueue(&state.store, run)?;
        }
        self.synced_at = Some(tokio::time::Instant::now());
        self.full_pass = None;
        Ok(())
    }

    fn enqueue_job(&mut self, mut job: JobRow) {
        let (task, replica) = match &job.configuration {
            Configuration::Task(task) => (task.clone(), None),
            Configuration::Service(svc) => (svc.replica_task_of(job.job_num), Some(job.job_num)),
            Configuration::DevEnvironment(d) => (d.as_task(), None),
            Configuration::Fleet(_) | Configuration::Volume(_) => return,
        };
        let key = (Reverse(task.priority.unwrap_or(0)), job.submitted_ms, job.run_id.clone(), replica.unwrap_or(0));
        if replica.is_some() {
            job.job_num = 0; // the one job of its queue entry
        }
        // New, or a gang that may now be whole: the next pass looks at it.
        self.fresh.push(key.clone());
        let entry = self.queue.entry(key).or_insert_with(|| {
            let routed = matches!(&job.configuration, Configuration::Service(s) if s.router_group().is_some());
            let mut q = Queued::new(task, &job.project, &job.run_name);
            q.not_before_ms = job.not_before_ms;
            q.inactivity = inactivity_limit(&job.configuration);
            q.routed = routed;
            q
        });
        let rank = job.job_num as usize;
        if entry.jobs.len() <= rank {
            entry.jobs.resize(rank + 1, None);
        }
        entry.jobs[rank] = Some(job.id);
    }

    /// Adds a newly stored run's jobs to the queue.
    fn enqueue(&mut self, store: &Store, run: &RunId) -> anyhow::Result<()> {
        for job in store.queued_jobs_of(run)? {
            self.enqueue_job(job);
        }
        Ok(())
    }

    /// Applies what the inbox says, in the order it was sent. A release whose `epoch` is older than
    /// `epoch` (a rebuild may have read its job's end already) is not applied. Returns the runs
    /// to queue, whose jobs are read from the store.
    fn apply(&mut self, commands: Vec<Command>, epoch: u64) -> Vec<RunId> {
        let mut enqueue = Vec::new();
        for command in commands {
            match command {
                Command::Enqueue(run) => enqueue.push(run),
                Command::Dequeue(run) => {
                    enqueue.retain(|r| *r != run);
                    self.queue.retain(|(_, _, id, _), _| *id != run);
                }
                Command::Release { node, allocation, epoch: at } => {
                    if at >= epoch {
                        self.index.release(&node, &allocation);
                    }
                }
                Command::Cordon { nodes, cordoned } => {
                    for n in &nodes {
                        self.index.set_cordoned(n, cordoned);
                    }
                }
                Command::VolumeHome { project, name, home } => self.volumes.set(&project, &name, home),
                Command::CloudNodes(cloud) => self.volumes.set_cloud_nodes(cloud),
            }
        }
        enqueue
    }

    /// Takes the inbox: after a rebuild from the store, only what the store does not hold (the
    /// cloud's word on EBS volumes); otherwise everything.
    fn take_inbox(&mut self, state: &State) -> anyhow::Result<()> {
        let Inbox { commands, changed } = state.scheduler.take();
        if self.synced_at.is_none_or(|t| t.elapsed() > RESYNC) {
            let (cloud, _): (Vec<Command>, Vec<Command>) =
                commands.into_iter().partition(|c| matches!(c, Command::CloudNodes(_)));
            self.apply(cloud, 0);
            // Should the rebuild fail, the next pass tries it again (it is still due).
            self.resync(state)?;
            state.scheduler.rebuilt();
            return Ok(());
        }
        for run in self.apply(commands, state.scheduler.epoch()) {
            if let Err(e) = self.enqueue(&state.store, &run) {
                tracing::error!(%run, "cannot queue the run: {e:#}");
            }
        }
        for node in &changed {
            if let Err(e) = self.node_changed(state, node) {
                tracing::warn!(%node, "cannot refresh the node for scheduling: {e:#}");
            }
        }
        Ok(())
    }

    fn node_changed(&mut self, state: &State, node: &NodeId) -> anyhow::Result<()> {
        let Some(n) = state.store.node(node)? else {
            return Ok(());
        };
        let mut address = None;
        if let Some(inv) = n.inventory.clone() {
            let inv = in_service(state, &n.id, inv);
            let shape = crate::nodes::fleet_nodes::shape(state, &n, &inv);
            self.index.upsert(&n.id, &n.name, n.fleet.clone(), shape.cluster, shape.blocks, inv);
            self.index.set_profile(&n.id, shape.profile);
            address = shape.address;
        }
        self.index.set_connected(&n.id, state.sessions.is_connected(&n.id));
        self.index.set_cordoned(&n.id, n.cordoned);
        if let Some(a) = address.or(n.address) {
            self.addresses.insert(n.id, a);
        }
        Ok(())
    }
}

/// A node's hardware as placement sees it: without its GPUs out of service
/// ([`crate::metrics::health`]).
fn in_service(
    state: &State,
    node: &NodeId,
    mut inv: corral_proto::inventory::HostInventory,
) -> corral_proto::inventory::HostInventory {
    let out = state.health.out_of_service(node);
    if !out.is_empty() {
        inv.gpus.retain(|g| !out.contains(&g.index));
    }
    inv
}

/// How long a run's job may go without a connection before it stops: a dev environment's
/// `inactivity_duration`.
pub fn inactivity_limit(cfg: &Configuration) -> Option<Duration> {
    match cfg {
        Configuration::DevEnvironment(d) => d.inactivity_duration_secs.map(Duration::from_secs),
        _ => None,
    }
}

/// One pass: takes the inbox, places what fits, records why the rest waits. Passes are
/// serialized by the scheduler's lock.
pub fn schedule_once(state: &State) -> anyhow::Result<()> {
    // Runs that waited past their no-capacity retry window end once the pass is over.
    let expired = place(state)?;
    for (job, message) in expired {
        state.finish_job(&job, TerminationReason::NoCapacity, None, Some(&message))?;
    }
    Ok(())
}

/// How long a waiting run may wait before it fails with `no_capacity`: only when its `retry`
/// covers `no-capacity` (then for the retry duration); otherwise it waits as long as it takes, as a
/// queue on one's own machines should.
fn capacity_deadline(task: &TaskConfig, submitted_ms: i64) -> Option<i64> {
    let retry = task.retry.as_ref().filter(|r| r.on_events.contains(&RetryEvent::NoCapacity))?;
    Some(submitted_ms + retry.duration_secs.unwrap_or(3600) as i64 * 1000)
}

impl Scheduler {
    /// Decides one pass, without I/O: which runs go where (their room reserved in the index), which
    /// wait and why, which waited too long (taken out of the queue). `pins` says where the queue's
    /// router services' worker replicas must go ([`crate::services::router_groups::pin`]); an entry it lacks
    /// may go anywhere.
    fn plan(
        &mut self,
        now_ms: i64,
        tick: tokio::time::Instant,
        pins: &HashMap<QueueKey, Result<NodeId, String>>,
    ) -> Plan {
        // Over the whole queue when the index changed in a way that can make room (or every
        // `PERIOD`, for backoffs and retry windows that ran out); otherwise only over what is new,
        // since what did not fit before still does not.
        let generation = self.index.generation();
        let full = self.full_pass.is_none_or(|(g, at)| g != generation || tick.duration_since(at) >= PERIOD);
        let fresh = std::mem::take(&mut self.fresh);
        if full {
            self.failed.clear();
            self.full_pass = Some((generation, tick));
        }
        let mut plan = Plan { full, ..Plan::default() };
        let (mut placed_jobs, mut rewrites) = (0usize, 0usize);
        let Scheduler { index, queue, failed, volumes, .. } = self;
        let mut visit = |key: &QueueKey, q: &mut Queued| {
            if q.not_before_ms.is_some_and(|t| t > now_ms) {
                return;
            }
            if placed_jobs >= JOBS_PER_PASS {
                // The rest is for the next pass, which follows at once.
                return;
            }
            // Not all of the run's jobs are queued (a rank still ending from an earlier attempt):
            // a later pass or the resync sees the whole gang.
            let Some(jobs) = q.gang() else { return };
            let pin = pins.get(key);
            let outcome = match (pin, failed.get(&q.shape)) {
                (Some(Err(why)), _) => Err(Arc::<str>::from(why.as_str())),
                (Some(Ok(node)), _) => {
                    let mut request = q.request.clone();
                    request.pinned = vec![Some(vec![node.clone()])];
                    crate::volumes::place(index, volumes, &request, &mut q.volumes)
                        .map_err(|why| Arc::<str>::from(format!("{why} (on its router's node {node})")))
                }
                (None, Some(reason)) => Err(reason.clone()),
                (None, None) => {
                    crate::volumes::place(index, volumes, &q.request, &mut q.volumes).map_err(Arc::<str>::from)
                }
            };
            match outcome {
                Ok(allocs) => {
                    placed_jobs += allocs.len();
                    plan.placed.push(Placement { key: key.clone(), jobs, allocs });
                }
                Err(reason) => {
                    // A pinned replica's outcome is its own, not its shape's.
                    if pin.is_none() {
                        failed.entry(q.shape).or_insert_with(|| reason.clone());
                    }
                    if capacity_deadline(&q.task, key.1).is_some_and(|d| now_ms > d) {
                        plan.expired.push((key.clone(), format!("no capacity within the retry duration: {reason}")));
                        return;
                    }
                    if q.reason.as_deref() != Some(&*reason) {
                        if q.reason.is_some() {
                            if rewrites >= REASON_UPDATES_PER_PASS {
                                return;
                            }
                            rewrites += 1;
                        }
                        plan.waits.extend(jobs.into_iter().map(|j| (j, reason.to_string())));
                        q.reason = Some(reason.to_string());
                    }
                }
            }
        };
        if full {
            for (key, q) in queue.iter_mut() {
                visit(key, q);
            }
        } else {
            let mut fresh = fresh;
            fresh.sort_unstable();
            fresh.dedup();
            for key in &fresh {
                if let Some(q) = queue.get_mut(key) {
                    visit(key, q);
                }
            }
        }
        // A full chunk: the next pass looks at the whole queue, since what this one did not reach
        // may fit (placing takes room, so it leaves the index generation as it is).
        plan.more = placed_jobs >= JOBS_PER_PASS;
        if plan.more {
            self.full_pass = None;
        }
        plan
    }
}

impl Scheduler {
    /// Takes the runs a plan found expired out of the queue: their jobs, to end with the message.
    fn take_expired(&mut self, expired: &[(QueueKey, String)]) -> Vec<(JobId, String)> {
        let mut ended = Vec::new();
        for (key, message) in expired {
            if let Some(q) = self.queue.remove(key) {
                ended.extend(q.jobs.into_iter().flatten().map(|j| (j, message.clone())));
            }
        }
        ended
    }
}

/// A pass: plans it under the scheduler's lock ([`Scheduler::plan`]), then records the waits and
/// placements and sends the nodes their jobs. Returns the jobs whose wait expired.
fn place(state: &State) -> anyhow::Result<Vec<(JobId, String)>> {
    let began = std::time::Instant::now();
    let mut sched = state.scheduler.lock_core();
    sched.take_inbox(state)?;
    if sched.queue.is_empty() {
        return Ok(Vec::new());
    }
    let sched = &mut *sched;
    // A router service's worker replica goes on its router's node (see `router_groups`).
    let pins: HashMap<QueueKey, Result<NodeId, String>> = sched
        .queue
        .iter()
        .filter(|(_, q)| q.routed)
        .filter_map(|(key, q)| {
            Some((key.clone(), crate::services::router_groups::pin(state, &q.project, &q.run_name, &key.2, key.3)?))
        })
        .collect();
    let plan = sched.plan(crate::secrets::now_ms(), tokio::time::Instant::now(), &pins);
    if plan.more {
        // Another pass right after this one, with the lock released in between.
        state.scheduler.wake();
    }
    if !plan.waits.is_empty() {
        state.store.set_pending_many(&plan.waits)?;
    }
    let expired = sched.take_expired(&plan.expired);
    if plan.placed.is_empty() {
        return Ok(expired);
    }

    let placed_count: usize = plan.placed.iter().map(|p| p.allocs.len()).sum();
    state.telemetry.placements.inc_by(placed_count as u64);
    let gangs: Vec<Vec<(NodeId, JobSpec)>> = plan
        .placed
        .iter()
        .map(|p| {
            let (key, q) = (&p.key, &sched.queue[&p.key]);
            let mut gang = gang_specs(q, &key.2, &p.jobs, &p.allocs, &sched.addresses, &state.config);
            // The fleet's `env`, TPU devices (see `fleet_nodes`).
            crate::nodes::fleet_nodes::decorate(&mut gang, &sched.index, state.config.tpu_privileged);
            // A Dynamo worker replica: the router's address (see `router_groups`).
            crate::services::router_groups::decorate(state, &q.project, &q.run_name, &key.2, key.3, &mut gang);
            if q.task.dstack {
                for (node, spec) in &mut gang {
                    spec.env.extend(crate::container::server_env(state, node, &q.project));
                }
            }
            gang
        })
        .collect();
    let decided = began.elapsed();
    let assigned = state.store.assign_gangs(&gangs)?;
    for ((p, gang), ok) in plan.placed.into_iter().zip(gangs).zip(assigned) {
        let removed = sched.queue.remove(&p.key);
        let order = removed.as_ref().map(|q| q.task.startup_order);
        if ok && let Some(limit) = removed.as_ref().and_then(|q| q.inactivity) {
            for (_, spec) in &gang {
                state.activity.watch(&spec.job_id, limit);
            }
        }
        if !ok {
            // Stopped while being placed: give the resources back.
            for (node, a) in &p.allocs {
                sched.index.release(node, a);
            }
            continue;
        }
        crate::volumes::placed(state, &gang);
        let ordered = gang.len() > 1 && !matches!(order, Some(StartupOrder::Any) | None);
        for (node, spec) in gang {
            tracing::trace!(job = %spec.job_id, run = %spec.run_name, %node, gpus = ?spec.allocation.gpu_indices, "job placed");
            if !ordered {
                state.send(&node, CoordinatorMessage::StartJob(Box::new(spec)));
            }
        }
        if ordered {
            // `startup_order`: start the side that goes first; the rest follows its `running`.
            if let Err(e) = crate::scheduling::lifecycle::start_allowed(state, &p.key.2) {
                tracing::error!("cannot start the run's jobs: {e:#}");
            }
        }
    }
    tracing::debug!(
        placed = placed_count,
        queued = sched.queue.len(),
        full = plan.full,
        decide_ms = decided.as_millis() as u64,
        total_ms = began.elapsed().as_millis() as u64,
        "scheduling pass"
    );
    Ok(expired)
}

/// The specs of a placed run's jobs: the task's configuration plus each rank's allocation and the
/// variables every job sees (`CORRAL_*`, with dstack's `DSTACK_*` names as aliases).
fn gang_specs(
    q: &Queued,
    run_id: &RunId,
    jobs: &[JobId],
    allocs: &[(NodeId, Allocation)],
    addresses: &HashMap<NodeId, String>,
    config: &crate::Config,
) -> Vec<(NodeId, JobSpec)> {
    let n = allocs.len();
    let ips: Vec<String> = allocs.iter().map(|(node, _)| addresses.get(node).cloned().unwrap_or_default()).collect();
    let gpus_per_node = allocs.first().map_or(0, |(_, a)| a.gpu_indices.len());
    let by_group = crate::scheduling::node_groups::addresses_by_group(&q.task, &ips);
    let gpus_total: usize = allocs.iter().map(|(_, a)| a.gpu_indices.len()).sum();
    let hostfile: String =
        ips.iter().zip(allocs).map(|(ip, (_, a))| format!("{ip} slots={}\n", a.gpu_indices.len().max(1))).collect();
    allocs
        .iter()
        .zip(jobs)
        .enumerate()
        .map(|(rank, ((node, allocation), job_id))| {
            let job_id = job_id.clone();
            let mut env: Vec<(String, String)> =
                q.task.env.iter().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect();
            let mut vars = vec![
                ("RUN_NAME", q.run_name.clone()),
                ("RUN_ID", run_id.to_string()),
                ("JOB_ID", job_id.to_string()),
                ("NODE_RANK", rank.to_string()),
                ("NODES_NUM", n.to_string()),
                // With node groups, a node's own (the groups may ask for different GPUs).
                (
                    "GPUS_PER_NODE",
                    if q.task.groups.is_empty() { gpus_per_node } else { allocation.gpu_indices.len() }.to_string(),
                ),
                ("GPUS_NUM", gpus_total.to_string()),
            ];
            if n > 1 {
                vars.push(("MASTER_NODE_IP", ips[0].clone()));
                vars.push(("NODES_IPS", ips.join("\n")));
                vars.push(("MPI_HOSTFILE", MPI_HOSTFILE.to_owned()));
            }
            for (name, value) in vars {
                env.push((format!("CORRAL_{name}"), value.clone()));
                env.push((format!("DSTACK_{name}"), value));
            }
            env.extend(crate::scheduling::node_groups::group_vars(&q.task, rank as u32));
            let mut commands = crate::scheduling::node_groups::rank_commands(&q.task, rank as u32, &by_group);
            if n > 1 && !commands.is_empty() {
                commands.insert(0, format!("printf '%s' '{hostfile}' > {MPI_HOSTFILE}"));
            }
            let mut spec = JobSpec {
                job_id,
                run_id: run_id.clone(),
                run_name: q.run_name.clone(),
                project: q.project.clone(),
                node_id: node.clone(),
                image: crate::container::image(&q.task, &config.base_images),
                commands,
                env,
                working_dir: q.task.working_dir.clone(),
                allocation: allocation.clone(),
                max_duration_secs: q.task.max_duration_secs,
                stop_grace_secs: q.task.stop_duration_secs.unwrap_or(UNBOUNDED_STOP_GRACE_SECS),
                host_network: n > 1,
                container: crate::container::container(&q.task),
            };
            // The local repo and files (from the upload store) and the repo cloned on the node.
            (spec.container.uploads, spec.container.clones) = crate::uploads::container_parts(&q.task);
            spec.container.mounts = crate::volumes::mounts(&q.task, &q.volumes, rank);
            (node.clone(), spec)
        })
        .collect()
}
