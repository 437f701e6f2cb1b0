//! The jobs on this host: starting them through the shim, supervising them (exit, stop, time
//! limit), shipping their output, and remembering the latest word on each so that a reconnect can
//! repeat it. Docker is the truth about containers; this map is rebuilt from it on start.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use corral_proto::ids::{JobId, NodeId};
use corral_proto::job::{JobSpec, JobState, TerminationReason};
use corral_proto::wire::io::write_frame;
use corral_proto::wire::{ContainerReport, JobUpdate, LogFrame};
use corral_shim::{GpuPassthrough, RunOptions, Shim, ShimError, container_name};

/// How long a job's final update waits for its log to be shipped.
const LOG_DRAIN_WAIT: Duration = Duration::from_secs(10);
/// Largest log chunk sent in one frame.
const LOG_CHUNK: usize = 64 * 1024;

struct Tracked {
    update: JobUpdate,
    /// Not yet sent on the current connection.
    dirty: bool,
    /// Set to stop the job: `Some(abort)`.
    stop: watch::Sender<Option<(bool, TerminationReason)>>,
    has_container: bool,
}

pub struct Jobs {
    shim: Shim,
    node: NodeId,
    gpu_passthrough: GpuPassthrough,
    jobs: Mutex<HashMap<JobId, Tracked>>,
    /// Poked when an update is waiting to be sent.
    pub changed: Notify,
    /// The current connection to the coordinator, for log streams.
    conn: watch::Sender<Option<quinn::Connection>>,
    shutdown: CancellationToken,
}

impl Jobs {
    pub fn new(
        shim: Shim,
        node: NodeId,
        gpu_passthrough: GpuPassthrough,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            shim,
            node,
            gpu_passthrough,
            jobs: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            conn: watch::Sender::new(None),
            shutdown,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Tracked>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_connection(&self, conn: Option<quinn::Connection>) {
        self.conn.send_replace(conn);
        // A new connection hears everything again: level-triggered, not edge-triggered.
        for t in self.lock().values_mut() {
            t.dirty = true;
        }
        self.changed.notify_one();
    }

    fn record(&self, update: JobUpdate) {
        if let Some(t) = self.lock().get_mut(&update.job_id) {
            if t.update.reason.is_some() {
                return; // the first final word stands
            }
            t.update = update;
            t.dirty = true;
        }
        self.changed.notify_one();
    }

    /// Updates not yet sent on the current connection.
    pub fn take_dirty(&self) -> Vec<JobUpdate> {
        self.lock()
            .values_mut()
            .filter_map(|t| std::mem::take(&mut t.dirty).then(|| t.update.clone()))
            .collect()
    }

    /// The full set of this node's jobs, for the report on every connection.
    pub async fn report(&self) -> Vec<ContainerReport> {
        let tracked: Vec<ContainerReport> = self
            .lock()
            .iter()
            .map(|(id, t)| ContainerReport {
                job_id: id.clone(),
                running: t.update.reason.is_none(),
                exit_code: t.update.exit_code,
            })
            .collect();
        tracked
    }

    /// Re-adopts the containers Docker has for this node (after an agent restart).
    pub async fn adopt(self: &Arc<Self>) -> Result<usize, ShimError> {
        let found = self.shim.list(Some(&self.node)).await?;
        let n = found.len();
        for c in found {
            if self.lock().contains_key(&c.job_id) {
                continue;
            }
            tracing::info!(job = %c.job_id, running = c.running, "re-adopting container");
            let deadline = match (c.max_duration_secs, c.started_at_unix) {
                (Some(max), Some(started)) => Some(started + max as i64),
                _ => None,
            };
            let rx = self.track(&c.job_id, JobState::Running, true);
            let this = self.clone();
            tokio::spawn(async move { this.supervise(c.job_id, deadline, rx).await });
        }
        Ok(n)
    }

    fn track(
        &self,
        id: &JobId,
        state: JobState,
        has_container: bool,
    ) -> watch::Receiver<Option<(bool, TerminationReason)>> {
        let (stop, rx) = watch::channel(None);
        self.lock().insert(
            id.clone(),
            Tracked {
                update: JobUpdate {
                    job_id: id.clone(),
                    state,
                    exit_code: None,
                    reason: None,
                    message: None,
                },
                dirty: true,
                stop,
                has_container,
            },
        );
        self.changed.notify_one();
        rx
    }

    /// Starts a job; a job already known is left alone (the coordinator may repeat itself).
    pub fn start(self: &Arc<Self>, spec: JobSpec) {
        if self.lock().contains_key(&spec.job_id) {
            return;
        }
        let rx = self.track(&spec.job_id, JobState::Provisioning, false);
        let this = self.clone();
        tokio::spawn(async move { this.run(spec, rx).await });
    }

    fn progress(&self, id: &JobId, state: JobState, message: Option<String>) {
        self.record(JobUpdate {
            job_id: id.clone(),
            state,
            exit_code: None,
            reason: None,
            message,
        });
    }

    fn finish(
        &self,
        id: &JobId,
        reason: TerminationReason,
        exit_code: Option<i64>,
        message: Option<String>,
    ) {
        tracing::info!(job = %id, %reason, ?exit_code, "job ended");
        self.record(JobUpdate {
            job_id: id.clone(),
            state: reason.final_state(),
            exit_code,
            reason: Some(reason),
            message,
        });
    }

    async fn run(
        self: Arc<Self>,
        spec: JobSpec,
        stop: watch::Receiver<Option<(bool, TerminationReason)>>,
    ) {
        let id = spec.job_id.clone();
        self.progress(&id, JobState::Pulling, None);
        if let Err(e) = self.shim.ensure_image(&spec.image).await {
            let reason = match e {
                ShimError::ImageUnavailable { .. } => TerminationReason::ImageUnavailable,
                _ => TerminationReason::AgentError,
            };
            return self.finish(&id, reason, None, Some(e.to_string()));
        }
        if let Some((_, reason)) = *stop.borrow() {
            return self.finish(&id, reason, None, None);
        }
        let opts = RunOptions {
            gpu_passthrough: self.gpu_passthrough,
        };
        if let Err(e) = self.shim.create_and_start(&spec, &opts).await {
            if let Some(t) = self.lock().get_mut(&id) {
                t.has_container = true; // may exist half-made: let ForgetJob remove it
            }
            return self.finish(
                &id,
                TerminationReason::ContainerCreationFailed,
                None,
                Some(e.to_string()),
            );
        }
        if let Some(t) = self.lock().get_mut(&id) {
            t.has_container = true;
        }
        self.progress(&id, JobState::Running, None);
        let deadline = spec.max_duration_secs.map(|m| now_unix() + m as i64);
        self.supervise_with_grace(id, deadline, stop, spec.stop_grace_secs)
            .await;
    }

    async fn supervise(
        self: Arc<Self>,
        id: JobId,
        deadline: Option<i64>,
        stop: watch::Receiver<Option<(bool, TerminationReason)>>,
    ) {
        self.supervise_with_grace(id, deadline, stop, 10).await;
    }

    /// Follows a started container to its end: exit, stop request, or time limit.
    async fn supervise_with_grace(
        self: Arc<Self>,
        id: JobId,
        deadline: Option<i64>,
        mut stop: watch::Receiver<Option<(bool, TerminationReason)>>,
        grace_secs: u64,
    ) {
        let container = container_name(&id);
        let shipper = tokio::spawn(self.clone().ship_logs(id.clone()));
        let until_deadline = async {
            match deadline {
                Some(d) => {
                    tokio::time::sleep(Duration::from_secs(
                        d.saturating_sub(now_unix()).max(0) as u64
                    ))
                    .await
                }
                None => std::future::pending().await,
            }
        };
        let stop_requested = async {
            loop {
                if let Some(s) = *stop.borrow_and_update() {
                    return s;
                }
                if stop.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        };
        let ending = tokio::select! {
            code = self.shim.wait(&container) => match code {
                Ok(0) => (TerminationReason::Done, Some(0), None),
                Ok(code) => (TerminationReason::ContainerExitedWithError, Some(code), Some(format!("exited with code {code}"))),
                Err(e) if e.is_not_found() => (TerminationReason::ContainerLost, None, Some("the container vanished".to_owned())),
                Err(e) => (TerminationReason::AgentError, None, Some(e.to_string())),
            },
            () = until_deadline => {
                let _ = self.shim.stop(&container, Duration::from_secs(grace_secs)).await;
                (TerminationReason::MaxDurationExceeded, self.exit_code(&container).await, Some("max_duration exceeded".to_owned()))
            }
            (abort, reason) = stop_requested => {
                let r = if abort { self.shim.kill(&container).await } else { self.shim.stop(&container, Duration::from_secs(grace_secs)).await };
                if let Err(e) = r {
                    if !e.is_not_found() {
                        tracing::warn!(job = %id, "stopping failed: {e}");
                    }
                }
                (reason, self.exit_code(&container).await, None)
            }
        };
        // Ship the tail of the output before saying the job ended, but never wait long.
        let _ = tokio::time::timeout(LOG_DRAIN_WAIT, shipper).await;
        self.finish(&id, ending.0, ending.1, ending.2);
    }

    async fn exit_code(&self, container: &str) -> Option<i64> {
        self.shim
            .inspect_state(container)
            .await
            .ok()
            .and_then(|s| s.exit_code)
    }

    /// Asks a job to stop. Unknown jobs (a container the coordinator no longer wants) are removed.
    pub async fn stop(&self, id: &JobId, abort: bool, reason: TerminationReason) {
        let known = self
            .lock()
            .get(id)
            .map(|t| t.stop.send_replace(Some((abort, reason))));
        if known.is_none() {
            let name = container_name(id);
            let _ = self.shim.kill(&name).await;
            let _ = self.shim.remove(&name).await;
        }
    }

    /// The coordinator has the job's end and its logs: remove the container.
    pub async fn forget(&self, id: &JobId) {
        let finished = self
            .lock()
            .get(id)
            .is_none_or(|t| t.update.reason.is_some());
        if !finished {
            return;
        }
        if let Err(e) = self.shim.remove(&container_name(id)).await {
            tracing::warn!(job = %id, "cannot remove container: {e}");
            return;
        }
        self.lock().remove(id);
    }

    /// Streams the container's output to the coordinator, one QUIC stream per job. When the
    /// connection drops it waits for the next one and replays from the start; the coordinator keeps
    /// only the bytes it does not have.
    async fn ship_logs(self: Arc<Self>, id: JobId) {
        let container = container_name(&id);
        let mut conn_rx = self.conn.subscribe();
        loop {
            let conn = loop {
                if let Some(c) = conn_rx.borrow_and_update().clone() {
                    break c;
                }
                tokio::select! {
                    r = conn_rx.changed() => if r.is_err() { return },
                    () = self.shutdown.cancelled() => return,
                }
            };
            match self.ship_once(&conn, &id, &container).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(job = %id, "log stream interrupted: {e:#}");
                    // Wait for a different connection before replaying.
                    tokio::select! {
                        r = conn_rx.changed() => if r.is_err() { return },
                        () = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn ship_once(
        &self,
        conn: &quinn::Connection,
        id: &JobId,
        container: &str,
    ) -> anyhow::Result<()> {
        let mut send = conn.open_uni().await?;
        write_frame(&mut send, &LogFrame::Open { job_id: id.clone() }).await?;
        let mut offset = 0u64;
        let mut logs = std::pin::pin!(self.shim.logs(container));
        while let Some(chunk) = logs.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) if e.is_not_found() => break,
                Err(e) => return Err(e.into()),
            };
            for piece in chunk.chunks(LOG_CHUNK) {
                write_frame(
                    &mut send,
                    &LogFrame::Chunk {
                        offset,
                        data: piece.to_vec(),
                    },
                )
                .await?;
                offset += piece.len() as u64;
            }
        }
        write_frame(&mut send, &LogFrame::End { total: offset }).await?;
        send.finish()?;
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
        Ok(())
    }

    pub fn has_job(&self, id: &JobId) -> bool {
        self.lock().contains_key(id)
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
