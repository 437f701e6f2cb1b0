//! How many replicas each active service has, and making it so. A service's desired count lives in
//! `runs.replicas` (NULL once the service is stopped or has failed); every second, and when a
//! request waits for a replica, this reconciler
//! - for a service with `scaling`, turns the requests per second the proxy saw over the `window`
//!   into a target (`ceil(rps / target)` within `replicas`), and moves the desired count to it once
//!   the target has held for `scale_up_delay` / `scale_down_delay`; a request waiting at a service
//!   scaled to zero raises it to one at once;
//! - converges the replicas on the desired count: new replicas take the lowest free replica
//!   numbers (a new attempt of a number whose job ended), extra ones are stopped, those not yet
//!   running first, as `scaled_down`.
//!
//! - rolls a re-applied service out: see [`roll_out`].
//!
//! Level-triggered: each pass reads the store; a missed poke costs a second.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use corral_proto::config::ServiceConfig;
use corral_proto::ids::{JobId, RunId};
use corral_proto::job::{JobState, TerminationReason};

use crate::State;
use crate::scheduling::handle::Command;
use crate::secrets::{now_ms, random_hex};
use crate::store::{ActiveService, JobRow};

mod groups;

/// Seconds of request counts kept per service (the longest `window`).
const KEPT_SECS: u64 = 300;
/// A replica that failed is replaced no sooner than this after its end.
const REPLACE_BACKOFF_MS: i64 = 5_000;

#[derive(Default)]
struct Traffic {
    /// Requests per second, newest last, as (unix second, count).
    seconds: VecDeque<(u64, u32)>,
    /// Requests waiting for a replica right now.
    waiting: u32,
}

#[derive(Default)]
pub struct Autoscaler {
    traffic: Mutex<HashMap<RunId, Traffic>>,
    /// A target that differs from the desired count, and since when (for the delays).
    pending: Mutex<HashMap<RunId, (u32, Instant)>>,
    pub wake: Notify,
    /// Services whose new deployment is being checked (`project/name`).
    rolling: Mutex<HashSet<String>>,
    /// Replicas of retired deployments: out of rotation, about to stop.
    draining: Mutex<HashSet<JobId>>,
    /// As `pending`, per replica group (run, group index).
    group_pending: Mutex<HashMap<(RunId, usize), (u32, Instant)>>,
}

fn unix_secs() -> u64 {
    u64::try_from(now_ms() / 1000).unwrap_or(0)
}

impl Autoscaler {
    fn traffic(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Traffic>> {
        self.traffic.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a replica belongs to a deployment being retired (it takes no new requests).
    pub fn is_draining(&self, job: &JobId) -> bool {
        self.draining.lock().unwrap_or_else(|e| e.into_inner()).contains(job)
    }

    /// Counts one request to a service.
    pub fn record(&self, run: &RunId) {
        let now = unix_secs();
        let mut all = self.traffic();
        let t = all.entry(run.clone()).or_default();
        match t.seconds.back_mut() {
            Some((s, n)) if *s == now => *n += 1,
            _ => t.seconds.push_back((now, 1)),
        }
        while t.seconds.front().is_some_and(|(s, _)| *s + KEPT_SECS < now) {
            t.seconds.pop_front();
        }
    }

    /// Mean requests per second over the last `window` seconds.
    fn rps(&self, run: &RunId, window: u64) -> f64 {
        let now = unix_secs();
        let all = self.traffic();
        let Some(t) = all.get(run) else { return 0.0 };
        let n: u32 = t.seconds.iter().filter(|(s, _)| *s + window > now).map(|(_, n)| n).sum();
        f64::from(n) / window.max(1) as f64
    }

    fn waiting(&self, run: &RunId) -> bool {
        self.traffic().get(run).is_some_and(|t| t.waiting > 0)
    }

    /// Marks a request as waiting for a replica until the guard is dropped, and pokes the
    /// reconciler (a service scaled to zero starts one at once).
    pub fn wait_for_replica(self: &Arc<Self>, run: &RunId) -> WaitingGuard {
        self.traffic().entry(run.clone()).or_default().waiting += 1;
        self.wake.notify_one();
        WaitingGuard { scaler: self.clone(), run: run.clone() }
    }

    /// The desired count after this pass: the autoscaling target, once it has held long enough.
    fn decide(&self, run: &RunId, cfg: &ServiceConfig, desired: u32) -> u32 {
        let Some(scaling) = &cfg.scaling else { return desired };
        let (min, max) = (cfg.replicas.min.unwrap_or(0), cfg.replicas.max.unwrap_or(1));
        let rps = self.rps(run, scaling.window_secs.unwrap_or(60));
        let mut target = ((rps / scaling.target).ceil() as u32).clamp(min, max.max(min));
        if self.waiting(run) {
            if desired == 0 {
                return 1; // a cold request: one replica, now
            }
            target = target.max(1);
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if target == desired {
            pending.remove(run);
            return desired;
        }
        let delay = if target > desired { scaling.scale_up_delay_secs } else { scaling.scale_down_delay_secs };
        let now = Instant::now();
        match pending.get(run) {
            // The target moved in the same direction: the delay counts from the first sign.
            Some(&(t, since)) if (t > desired) == (target > desired) => {
                if now.duration_since(since) >= Duration::from_secs(delay) {
                    pending.remove(run);
                    return target;
                }
                pending.insert(run.clone(), (target, since));
            }
            _ => {
                pending.insert(run.clone(), (target, now));
            }
        }
        desired
    }
}

/// A request waiting for a replica; dropping it ends the wait.
pub struct WaitingGuard {
    scaler: Arc<Autoscaler>,
    run: RunId,
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        if let Some(t) = self.scaler.traffic().get_mut(&self.run) {
            t.waiting = t.waiting.saturating_sub(1);
        }
    }
}

pub async fn run(state: Arc<State>, shutdown: CancellationToken) {
    loop {
        if let Err(e) = reconcile(&state) {
            tracing::warn!("scaling services failed: {e:#}");
        }
        tokio::select! {
            () = state.autoscaler.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One pass over every active service.
pub fn reconcile(state: &Arc<State>) -> anyhow::Result<()> {
    let services = state.store.active_services()?;
    let live: std::collections::HashSet<&RunId> = services.iter().map(|s| &s.run).collect();
    state.autoscaler.traffic().retain(|id, _| live.contains(id));
    state.autoscaler.pending.lock().unwrap_or_else(|e| e.into_inner()).retain(|id, _| live.contains(id));
    state.autoscaler.group_pending.lock().unwrap_or_else(|e| e.into_inner()).retain(|(id, _), _| live.contains(id));
    for s in &services {
        if !s.config.groups.is_empty() {
            groups::reconcile(state, s)?;
            continue;
        }
        let want = state.autoscaler.decide(&s.run, &s.config, s.replicas);
        if want != s.replicas {
            tracing::info!(service = %s.name, from = s.replicas, to = want, "scaling service");
            state.store.set_replicas(&s.run, Some(want))?;
        }
        converge(state, &s.run, want)?;
    }
    roll_out(state, &services);
    Ok(())
}

/// Starts or stops replicas until `desired` are active.
fn converge(state: &State, run: &RunId, desired: u32) -> anyhow::Result<()> {
    let jobs = state.store.latest_jobs(run)?;
    converge_block(state, run, &jobs, 0..u32::MAX, desired)
}

/// Starts or stops replicas numbered in `block` (all of them, or one replica group's) until
/// `desired` of them are active.
fn converge_block(
    state: &State,
    run: &RunId,
    jobs: &[JobRow],
    block: std::ops::Range<u32>,
    desired: u32,
) -> anyhow::Result<()> {
    let jobs: Vec<&JobRow> = jobs.iter().filter(|j| block.contains(&j.job_num)).collect();
    let active: Vec<&JobRow> = jobs.iter().copied().filter(|j| !j.state.is_finished()).collect();
    let desired = desired as usize;
    if active.len() < desired {
        let now = now_ms();
        let mut slots: Vec<(u32, u32, i64)> = Vec::new();
        for num in block {
            if slots.len() == desired - active.len() {
                break;
            }
            match jobs.iter().find(|j| j.job_num == num) {
                None => slots.push((num, 0, now)),
                Some(j) if j.state.is_finished() => {
                    let failed = j.termination_reason.is_some_and(|r| r.retry_event().is_some());
                    let not_before = match (failed, j.finished_ms) {
                        (true, Some(f)) => f + REPLACE_BACKOFF_MS,
                        _ => now,
                    };
                    slots.push((num, j.submission + 1, not_before));
                }
                Some(_) => {}
            }
        }
        let ids: Vec<JobId> = slots.iter().map(|_| JobId(random_hex(8))).collect();
        if state.store.add_replicas(run, &slots, &ids)? {
            state.scheduler.send(Command::Enqueue(run.clone()));
        }
    } else if active.len() > desired {
        let mut extra = active;
        // Replicas not running yet go first, then the highest numbers.
        extra.sort_by_key(|j| (j.state == JobState::Running, std::cmp::Reverse(j.job_num)));
        for j in extra.iter().take(extra.len() - desired) {
            state.stop_job(&j.id, TerminationReason::ScaledDown, false)?;
        }
    }
    Ok(())
}

/// How long a replaced deployment's replicas stay out of rotation before they are stopped, so that
/// requests already sent to them finish.
const DRAIN: Duration = Duration::from_secs(2);

/// Re-applying a service makes a new deployment (a new run of the same name) next to the old one;
/// traffic goes to the ready replicas of both. Once every replica the newest one wants answers on
/// its port (and passes its probes), the older deployments leave the rotation, and after
/// [`DRAIN`] their replicas stop as `redeployed`.
fn roll_out(state: &Arc<State>, services: &[ActiveService]) {
    let mut by_name: HashMap<(&str, &str), Vec<&ActiveService>> = HashMap::new();
    for s in services {
        by_name.entry((s.project.as_str(), s.name.as_str())).or_default().push(s);
    }
    for ((project, name), mut deployments) in by_name {
        if deployments.len() < 2 {
            continue;
        }
        deployments.sort_by_key(|s| s.submitted_ms);
        let newest = deployments[deployments.len() - 1].clone();
        let older: Vec<ActiveService> = deployments[..deployments.len() - 1].iter().map(|s| (*s).clone()).collect();
        let key = format!("{project}/{name}");
        if !state.autoscaler.rolling.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone()) {
            continue; // a check of this service is already under way
        }
        let state = state.clone();
        tokio::spawn(async move {
            match newest_ready(&state, &newest).await {
                Ok(true) => {
                    for old in &older {
                        if let Err(e) = retire(&state, old).await {
                            tracing::warn!(service = %old.name, "retiring the old deployment failed: {e:#}");
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(service = %newest.name, "checking the new deployment failed: {e:#}"),
            }
            state.autoscaler.rolling.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        });
    }
}

/// Whether the newest deployment has all the replicas it wants running, passing their probes, and
/// accepting connections on their port.
async fn newest_ready(state: &State, s: &ActiveService) -> anyhow::Result<bool> {
    let probes = s.config.probes.as_deref().unwrap_or_default();
    let ready: Vec<JobRow> = state
        .store
        .latest_jobs(&s.run)?
        .into_iter()
        .filter(|j| j.state == JobState::Running && state.probes.is_ready(&j.id, probes))
        .collect();
    if !groups::enough_ready(state, s, &ready)? {
        return Ok(false);
    }
    for j in &ready {
        let Some(node) = &j.node_id else { return Ok(false) };
        if crate::nodes::tunnel::open(state, node, &j.id, s.config.port).await.is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Takes an old deployment out of rotation, then stops its replicas.
async fn retire(state: &State, old: &ActiveService) -> anyhow::Result<()> {
    tracing::info!(service = %old.name, run = %old.run, "a newer deployment is ready: retiring this one");
    state.store.set_replicas(&old.run, None)?;
    let jobs: Vec<JobId> =
        state.store.latest_jobs(&old.run)?.into_iter().filter(|j| !j.state.is_finished()).map(|j| j.id).collect();
    state.autoscaler.draining.lock().unwrap_or_else(|e| e.into_inner()).extend(jobs.iter().cloned());
    tokio::time::sleep(DRAIN).await;
    for id in &jobs {
        state.stop_job(id, TerminationReason::Redeployed, false)?;
    }
    let mut draining = state.autoscaler.draining.lock().unwrap_or_else(|e| e.into_inner());
    for id in &jobs {
        draining.remove(id);
    }
    Ok(())
}
