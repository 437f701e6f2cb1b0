//! Services with replica groups (`replicas:` as a list). Each group owns a block of replica numbers
//! ([`corral_proto::config::ServiceConfig::group_blocks`]) and has a desired count of its own (`runs.group_replicas`,
//! their sum in `runs.replicas`): a fixed group keeps its count; a group with `scaling` moves
//! within its range toward `ceil(rps / its target)`, from the requests per second of the whole
//! service (as dstack does: one measure, each group its own target and delays). A request waiting
//! at a service scaled to zero starts one replica of the first group that may have one.

use std::time::Duration;

use tokio::time::Instant;

use corral_proto::config::ReplicaGroup;
use corral_proto::ids::RunId;

use super::{Autoscaler, converge_block};
use crate::State;
use crate::store::{ActiveService, JobRow};

/// One pass over a service with groups: decide each group's count, write what changed, and start or
/// stop replicas in each group's block.
pub(super) fn reconcile(state: &State, s: &ActiveService) -> anyhow::Result<()> {
    let current = desired(state, s)?;
    let mut want: Vec<u32> = s
        .config
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| state.autoscaler.decide_group(&s.run, i, g, current[i]))
        .collect();
    if want.iter().all(|&n| n == 0)
        && state.autoscaler.waiting(&s.run)
        && let Some(i) = s.config.groups.iter().position(|g| g.replicas.max.unwrap_or(0) > 0)
    {
        want[i] = 1; // a cold request: one replica, now
    }
    if want != current {
        tracing::info!(service = %s.name, from = ?current, to = ?want, "scaling service groups");
        state.store.set_group_replicas(&s.run, &want)?;
    }
    let jobs = state.store.latest_jobs(&s.run)?;
    for ((first, g), n) in s.config.group_blocks().into_iter().zip(want) {
        converge_block(state, &s.run, &jobs, first..first + g.replicas.max.unwrap_or(0), n)?;
    }
    Ok(())
}

/// Each group's desired count: as stored, or its initial count.
fn desired(state: &State, s: &ActiveService) -> anyhow::Result<Vec<u32>> {
    let stored = state.store.group_replicas(&s.run)?.filter(|c| c.len() == s.config.groups.len());
    Ok(stored.unwrap_or_else(|| s.config.initial_group_replicas()))
}

/// Whether the replicas of a new deployment that take traffic are all there: as many as it wants
/// in all (one at least), and with groups as many as each group wants.
pub(super) fn enough_ready(state: &State, s: &ActiveService, ready: &[JobRow]) -> anyhow::Result<bool> {
    if s.config.groups.is_empty() {
        return Ok(ready.len() >= s.replicas.max(1) as usize);
    }
    let want = desired(state, s)?;
    let enough = s.config.group_blocks().into_iter().zip(want).all(|((first, g), n)| {
        let block = first..first + g.replicas.max.unwrap_or(0);
        ready.iter().filter(|j| block.contains(&j.job_num)).count() >= n as usize
    });
    Ok(enough && !ready.is_empty())
}

impl Autoscaler {
    /// Group `index`'s count after this pass: its autoscaling target, once that has held for the
    /// group's delay; a fixed group keeps its count.
    fn decide_group(&self, run: &RunId, index: usize, g: &ReplicaGroup, desired: u32) -> u32 {
        let (min, max) = (g.replicas.min.unwrap_or(0), g.replicas.max.unwrap_or(0));
        let Some(scaling) = &g.scaling else { return max };
        let rps = self.rps(run, scaling.window_secs.unwrap_or(60));
        let target = ((rps / scaling.target).ceil() as u32).clamp(min, max.max(min));
        let key = (run.clone(), index);
        let mut pending = self.group_pending.lock().unwrap_or_else(|e| e.into_inner());
        if target == desired {
            pending.remove(&key);
            return desired;
        }
        let delay = if target > desired { scaling.scale_up_delay_secs } else { scaling.scale_down_delay_secs };
        let now = Instant::now();
        match pending.get(&key) {
            Some(&(t, since)) if (t > desired) == (target > desired) => {
                if now.duration_since(since) >= Duration::from_secs(delay) {
                    pending.remove(&key);
                    return target;
                }
                pending.insert(key, (target, since));
            }
            _ => {
                pending.insert(key, (target, now));
            }
        }
        desired
    }
}
