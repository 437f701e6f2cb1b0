//! What happens around a job's end: stopping a job wherever it is, stopping the rest of a gang when
//! one member fails, retrying a run as its `retry` policy allows, and declaring nodes that stop
//! answering unreachable (their jobs are interrupted, and retried elsewhere when the policy covers
//! `interruption`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use corral_proto::config::{Configuration, StartupOrder, StopCriteria};
use corral_proto::ids::{JobId, NodeId};
use corral_proto::job::{JobState, TerminationReason};
use corral_proto::wire::CoordinatorMessage;

use crate::State;
use crate::nodes::sessions::Reset;
use crate::scheduling::handle::Command;
use crate::secrets::{now_ms, random_hex};
use crate::store::{JobRow, StoreError};

mod retry;

impl State {
    /// Stops one job wherever it is: a queued job ends at once; a placed one is asked to stop on its
    /// node (and, for an abort while the node is away, ends at once — the container is killed when
    /// the node reports it).
    pub fn stop_job(&self, id: &JobId, reason: TerminationReason, abort: bool) -> Result<(), StoreError> {
        if self.store.cancel_queued(id, reason)? {
            if let Some(job) = self.store.job(id)? {
                self.scheduler.send(Command::Dequeue(job.run_id));
            }
            return Ok(());
        }
        let Some(job) = self.store.job(id)? else {
            return Ok(());
        };
        let Some(node) = job.node_id.clone() else {
            return Ok(());
        };
        if !self.store.set_terminating(id, reason)? {
            return Ok(());
        }
        let sent = self.send(&node, CoordinatorMessage::StopJob { job_id: id.clone(), abort, reason });
        if !sent && abort {
            self.finish_job(id, reason, None, Some("aborted while its node was offline"))?;
        }
        Ok(())
    }
}

/// Whether a placed job of a gang may be started now, by the run's `startup_order`: the master
/// (rank 0) first, or the workers first, each side once the other is running.
pub fn may_start(job: &JobRow, gang: &[JobRow]) -> bool {
    let Configuration::Task(task) = &job.configuration else {
        return true;
    };
    let running = |j: &JobRow| matches!(j.state, JobState::Running) || j.state.is_finished();
    match task.startup_order {
        StartupOrder::Any => true,
        StartupOrder::MasterFirst => job.job_num == 0 || gang.iter().filter(|j| j.job_num == 0).all(running),
        StartupOrder::WorkersFirst => job.job_num != 0 || gang.iter().filter(|j| j.job_num != 0).all(running),
    }
}

/// Sends `StartJob` to the gang's placed jobs that may start now. Idempotent: the agent ignores a
/// job it already runs.
pub fn start_allowed(state: &State, run: &corral_proto::ids::RunId) -> Result<(), StoreError> {
    // Most runs have no job waiting to start (a single job, or a gang started at once): one
    // indexed count instead of reading the run's jobs and configuration.
    if !state.store.has_provisioning(run)? {
        return Ok(());
    }
    let gang = state.store.latest_jobs(run)?;
    for job in gang.iter().filter(|j| j.state == JobState::Provisioning) {
        if let (Some(node), Some(spec)) = (&job.node_id, &job.spec)
            && may_start(job, &gang)
        {
            state.send(node, CoordinatorMessage::StartJob(Box::new(spec.clone())));
        }
    }
    Ok(())
}

/// A service replica ended. A failure that `retry` covers is repaired by the autoscaler (a new
/// replica, after a short backoff); one it does not cover ends the whole service as failed, as a
/// failed rank ends a task.
fn replica_ended(
    state: &State,
    job: &JobRow,
    svc: &corral_proto::config::ServiceConfig,
    reason: TerminationReason,
) -> Result<(), StoreError> {
    // `utilization_policy` ends the whole service, never retried (as in dstack, where the run fails).
    if reason != TerminationReason::TerminatedDueToUtilizationPolicy {
        let Some(event) = reason.retry_event() else {
            return Ok(()); // stopped, scaled down, or done
        };
        if svc.retry.as_ref().is_some_and(|r| r.on_events.contains(&event)) {
            state.autoscaler.wake.notify_one();
            return Ok(());
        }
    }
    if state.store.replicas(&job.run_id)?.is_none() {
        return Ok(());
    }
    tracing::info!(run = %job.run_name, job = %job.id, %reason, "a replica failed: the service ends");
    state.store.set_replicas(&job.run_id, None)?;
    for other in state.store.latest_jobs(&job.run_id)?.iter().filter(|j| j.id != job.id && !j.state.is_finished()) {
        state.stop_job(&other.id, TerminationReason::GangMemberFailed, false)?;
    }
    Ok(())
}

/// Called once per job end (after the store recorded it).
pub fn job_ended(state: &State, job: &JobRow, reason: TerminationReason) -> Result<(), StoreError> {
    if let Configuration::Service(svc) = &job.configuration {
        return replica_ended(state, job, svc, reason);
    }
    let Configuration::Task(task) = &job.configuration else {
        return Ok(());
    };
    let latest = state.store.latest_jobs(&job.run_id)?;
    if !latest.iter().any(|j| j.id == job.id) {
        return Ok(()); // an older attempt
    }
    if reason == TerminationReason::Done && job.job_num == 0 && task.stop_criteria == StopCriteria::MasterDone {
        // `stop_criteria: master-done`: the master's success ends the run; the workers stop as done.
        for other in latest.iter().filter(|j| j.id != job.id && !j.state.is_finished()) {
            state.stop_job(&other.id, TerminationReason::Done, false)?;
        }
    }
    // A rank stopped by `utilization_policy` ends the run too (dstack terminates the whole run).
    let failed = reason.retry_event().is_some() || reason == TerminationReason::TerminatedDueToUtilizationPolicy;
    if failed {
        for other in latest.iter().filter(|j| j.id != job.id && !j.state.is_finished()) {
            tracing::info!(job = %other.id, run = %job.run_name, "stopping the rest of the gang");
            state.stop_job(&other.id, TerminationReason::GangMemberFailed, false)?;
        }
    }
    if !latest.iter().all(|j| j.state.is_finished()) {
        return Ok(()); // the last member to end decides about a retry
    }
    let Some(policy) = &task.retry else {
        return Ok(());
    };
    let reasons: Vec<TerminationReason> = latest.iter().filter_map(|j| j.termination_reason).collect();
    let attempt = retry::Attempt {
        reasons: &reasons,
        number: latest.iter().map(|j| j.submission).max().unwrap_or(0),
        first_submitted_ms: state.store.run_submitted_ms(&job.run_id)?.unwrap_or(job.submitted_ms),
        now_ms: now_ms(),
    };
    let (attempt, event, backoff) = match retry::decide(policy, &attempt) {
        retry::Decision::Retry { attempt, event, backoff } => (attempt, event, backoff),
        retry::Decision::WindowOver => {
            tracing::info!(run = %job.run_name, "retry window over; the run stays failed");
            return Ok(());
        }
        _ => return Ok(()),
    };
    let ids: Vec<JobId> = latest.iter().map(|_| JobId(random_hex(8))).collect();
    if state.store.resubmit(&latest, now_ms() + backoff.as_millis() as i64, &ids)? {
        tracing::info!(run = %job.run_name, attempt, ?event, ?backoff, "retrying the run");
        let event = match event {
            corral_proto::config::RetryEvent::Error => "an error",
            corral_proto::config::RetryEvent::Interruption => "an interruption",
            corral_proto::config::RetryEvent::NoCapacity => "no capacity",
        };
        let detail = format!("attempt {attempt} after {event} (retry.on_events), starting in {}s", backoff.as_secs());
        if let Err(e) =
            state.store.record_event(None, Some(&job.project), "run.retry", Some(&job.run_name), Some(&detail))
        {
            tracing::warn!(run = %job.run_name, "cannot record the retry in the events: {e}");
        }
        state.scheduler.send(Command::Enqueue(job.run_id.clone()));
    }
    Ok(())
}

/// Declares nodes unreachable when they have not been heard from for `node_timeout`, and
/// interrupts their jobs; stops dev environments idle past their `inactivity_duration`. Runs every
/// second; idempotent.
pub async fn watch_nodes(state: Arc<State>, shutdown: CancellationToken) {
    let timeout = state.config.node_timeout;
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = shutdown.cancelled() => break,
        }
        for node in state.sessions.silent_for(timeout) {
            if let Err(e) = node_unreachable(&state, &node) {
                tracing::error!(%node, "cannot handle the loss of the node: {e:#}");
            }
        }
        for (job, limit) in state.activity.take_idle() {
            tracing::info!(%job, ?limit, "no one connected for the inactivity duration; stopping");
            if let Err(e) = state.stop_job(&job, TerminationReason::InactivityDurationExceeded, false) {
                tracing::error!(%job, "cannot stop the inactive job: {e:#}");
            }
        }
    }
}

fn node_unreachable(state: &State, node: &NodeId) -> Result<(), StoreError> {
    let name = disconnect(state, node, Reset::Silent);
    let jobs: Vec<JobRow> = state.store.placed_jobs_on(node)?;
    tracing::warn!(node = %name, jobs = jobs.len(), "node unreachable");
    let detail =
        format!("not heard from for {}s; {} job(s) interrupted", state.config.node_timeout.as_secs(), jobs.len());
    if let Err(e) = state.store.record_event(None, None, "node.unreachable", Some(&name), Some(&detail)) {
        tracing::warn!(node = %name, "cannot record the node's loss in the events: {e}");
    }
    let message = format!("node {name} stopped answering");
    for job in jobs {
        state.finish_job(&job.id, TerminationReason::NodeUnreachable, None, Some(&message))?;
    }
    Ok(())
}

/// The cloud takes the node's instance back (a spot interruption notice): the node is cordoned, its
/// jobs end `interrupted` now (retried elsewhere when their `retry` covers `interruption`) and their
/// containers get SIGTERM while the instance still lives. Returns how many jobs it had.
pub fn spot_interrupted(
    state: &State,
    node: &NodeId,
    name: &str,
    action: &str,
    time: &str,
) -> Result<usize, StoreError> {
    state.store.set_cordoned(node, true)?;
    state.scheduler.node_changed(node);
    let jobs: Vec<JobRow> = state.store.placed_jobs_on(node)?;
    tracing::warn!(node = %name, jobs = jobs.len(), %action, %time, "spot interruption notice");
    let message = format!("spot interruption: the cloud will {action} node {name} at {time}");
    let session = state.sessions.get(node);
    for job in &jobs {
        state.finish_job(&job.id, TerminationReason::Interrupted, None, Some(&message))?;
        if let Some(s) = &session {
            s.send(CoordinatorMessage::StopJob {
                job_id: job.id.clone(),
                abort: false,
                reason: TerminationReason::Interrupted,
            });
        }
    }
    Ok(jobs.len())
}

/// Removes a node from the cluster (`corral node remove`): its certificate is revoked, so the
/// agent is cut off now and refused from now on, and its jobs are interrupted (retried elsewhere
/// when their `retry` covers `interruption`). Returns how many jobs it had.
pub fn remove_node(state: &State, node: &NodeId, name: &str) -> Result<usize, StoreError> {
    state.store.revoke_node(node)?;
    state.store.unmark_gpus_of(node)?;
    state.health.forget(node);
    disconnect(state, node, Reset::Removed);
    let jobs: Vec<JobRow> = state.store.placed_jobs_on(node)?;
    tracing::warn!(node = %name, jobs = jobs.len(), "node removed");
    let message = format!("node {name} was removed from the cluster");
    for job in &jobs {
        state.finish_job(&job.id, TerminationReason::NodeUnreachable, None, Some(&message))?;
    }
    Ok(jobs.len())
}

/// Ends the node's session, saying why; returns its name.
fn disconnect(state: &State, node: &NodeId, why: Reset) -> String {
    let name = state.sessions.cut(node, why).unwrap_or_else(|| node.to_string());
    state.scheduler.node_changed(node);
    name
}
