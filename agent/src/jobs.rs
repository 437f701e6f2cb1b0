//! The jobs on this host: starting them through the shim, supervising them (exit, stop, time
//! limit), shipping their output, and remembering the latest word on each so that a reconnect can
//! repeat it. Docker is the truth about containers; this map is rebuilt from it on start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use corral_proto::ids::{JobId, NodeId};
use corral_proto::job::{JobSpec, JobState, RegistryCredentials, TerminationReason};
use corral_proto::wire::io::write_frame;
use corral_proto::wire::{ContainerReport, JobUpdate};
use corral_shim::{GpuPassthrough, RunOptions, Shim, ShimError, container_name};

use crate::output::{OVERLAP_WINDOW, Spool, after_overlap};

mod uploads;
mod utilization;
mod volumes;

/// How far before the spool's last write a re-adopted container's log is read back from Docker.
const READ_BACK_MARGIN_SECS: i64 = 15;
/// How long a job's final update waits for its log to be confirmed stored.
const LOG_DRAIN_WAIT: Duration = Duration::from_secs(10);
/// How long an ended container's output may take to reach its end in the spool.
const OUTPUT_END_WAIT: Duration = Duration::from_secs(30);
/// How often a container kept for its unconfirmed log is said to be waiting.
const FORGET_NAG: Duration = Duration::from_secs(600);
/// Transfers of an image from the coordinator tried before the job fails.
const IMAGE_FETCH_ATTEMPTS: u32 = 5;
/// How long a job that needs an image waits for a link to the coordinator to fetch it over.
const IMAGE_LINK_WAIT: Duration = Duration::from_secs(60);
/// Stop grace for an adopted container that carries no grace label.
const DEFAULT_GRACE_SECS: u64 = 10;

/// A stop request: abort (kill at once) or not, and the reason to record.
type StopRequest = Option<(bool, TerminationReason)>;

struct Tracked {
    update: JobUpdate,
    /// Not yet sent on the current connection.
    dirty: bool,
    stop: watch::Sender<StopRequest>,
    /// True once the coordinator confirmed the container's whole output stored (or there is no
    /// container).
    shipped: watch::Sender<bool>,
    /// The container's output on this host's disk, until the coordinator has it all.
    spool: Option<Arc<Spool>>,
    /// A `ForgetJob` is being carried out (it waits for the log).
    forgetting: bool,
    /// Where this host reaches the container, once a tunnel asked (it does not change while the
    /// container runs, and asking Docker costs a round trip per tunnel).
    address: Option<std::net::IpAddr>,
}

pub struct Jobs {
    shim: Shim,
    node: NodeId,
    gpu_passthrough: GpuPassthrough,
    /// Where jobs' output is spooled (`<state dir>/logs`).
    spool_dir: PathBuf,
    jobs: Mutex<HashMap<JobId, Tracked>>,
    /// Poked when an update is waiting to be sent.
    pub changed: Notify,
    /// The current connection to the coordinator, for log streams.
    conn: watch::Sender<Option<quinn::Connection>>,
    shutdown: CancellationToken,
    /// The SSH server's settings (its host key), once the agent has loaded them.
    ssh: std::sync::OnceLock<Arc<russh::server::Config>>,
    /// A spot interruption notice (action, time), repeated on every connection.
    interruption: Mutex<Option<(String, String)>>,
    /// Reads GPU utilization for jobs with a `utilization_policy`.
    utilization: std::sync::OnceLock<Arc<utilization::Sampler>>,
    /// This host's named volumes, measured and waiting to be sent (`volumes`).
    volume_report: Mutex<Option<Vec<corral_proto::wire::VolumeReport>>>,
}

impl Jobs {
    pub fn new(
        shim: Shim,
        node: NodeId,
        gpu_passthrough: GpuPassthrough,
        spool_dir: PathBuf,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            shim,
            node,
            gpu_passthrough,
            spool_dir,
            jobs: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            conn: watch::Sender::new(None),
            shutdown,
            ssh: std::sync::OnceLock::new(),
            interruption: Mutex::new(None),
            utilization: std::sync::OnceLock::new(),
            volume_report: Mutex::new(None),
        })
    }

    /// The cloud takes this instance back: the link reports it.
    pub fn set_interruption(&self, action: String, time: String) {
        *self.interruption.lock().unwrap_or_else(|e| e.into_inner()) = Some((action, time));
        self.changed.notify_one();
    }

    pub fn interruption(&self) -> Option<(String, String)> {
        self.interruption.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Lets `OpenSsh` streams be served, with this host key and settings.
    pub fn set_ssh_config(&self, config: Arc<russh::server::Config>) {
        let _ = self.ssh.set(config);
    }

    pub fn ssh_config(&self) -> Option<Arc<russh::server::Config>> {
        self.ssh.get().cloned()
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

    fn record(&self, mut update: JobUpdate) {
        if let Some(t) = self.lock().get_mut(&update.job_id) {
            if t.update.reason.is_some() {
                return; // the first final word stands
            }
            // A status message stands until another replaces it (as the coordinator keeps it), so
            // one that was not sent yet survives the next update.
            if update.message.is_none() {
                update.message = t.update.message.take();
            }
            t.update = update;
            t.dirty = true;
        }
        self.changed.notify_one();
    }

    /// Updates not yet sent on the current connection.
    pub fn take_dirty(&self) -> Vec<JobUpdate> {
        self.lock().values_mut().filter_map(|t| std::mem::take(&mut t.dirty).then(|| t.update.clone())).collect()
    }

    /// The jobs whose containers run here now.
    pub fn running(&self) -> Vec<JobId> {
        self.lock().iter().filter(|(_, t)| t.update.reason.is_none()).map(|(id, _)| id.clone()).collect()
    }

    /// The full set of this node's jobs, for the report on every connection.
    pub fn report(&self) -> Vec<ContainerReport> {
        self.lock()
            .iter()
            .map(|(id, t)| ContainerReport {
                job_id: id.clone(),
                running: t.update.reason.is_none(),
                exit_code: t.update.exit_code,
            })
            .collect()
    }

    /// Re-adopts the containers Docker has for this node (after an agent restart).
    pub async fn adopt(self: &Arc<Self>) -> Result<usize, ShimError> {
        let pruned = self.shim.prune_run_networks(&self.node).await;
        if pruned > 0 {
            tracing::info!(networks = pruned, "removed run networks no container uses");
        }
        let found = self.shim.list(Some(&self.node)).await?;
        let n = found.len();
        // The EBS volumes re-adopted containers have mounted: unmounted when each ends.
        let untracked: Vec<String> =
            found.iter().filter(|c| !self.lock().contains_key(&c.job_id)).map(|c| container_name(&c.job_id)).collect();
        let mut ebs = self.adopted_ebs(&untracked).await;
        for c in found {
            if self.lock().contains_key(&c.job_id) {
                continue;
            }
            if !c.running && c.started_at_unix.is_none() {
                // Created but never started: the agent went away in between. Its commands never
                // ran, so it did not succeed, whatever Docker's exit code says.
                tracing::warn!(job = %c.job_id, "found a container that never started");
                self.track(&c.job_id, JobState::Provisioning);
                self.mark_shipped(&c.job_id);
                let msg = "the agent stopped before the container started".to_owned();
                self.finish(&c.job_id, TerminationReason::ContainerCreationFailed, None, Some(msg));
                continue;
            }
            tracing::info!(job = %c.job_id, running = c.running, "re-adopting container");
            let deadline = match (c.max_duration_secs, c.started_at_unix) {
                (Some(max), Some(started)) => Some(started.saturating_add(max as i64)),
                _ => None,
            };
            let grace = c.stop_grace_secs.unwrap_or(DEFAULT_GRACE_SECS);
            let rx = self.track(&c.job_id, JobState::Running);
            // What the container wrote while no agent listened is read back from Docker's log
            // driver, from a little before the spool's last write (by time, so a rotated log
            // lines up too); the part the spool has is taken off where the two meet.
            match Spool::open(&self.spool_dir, &c.job_id) {
                Ok(spool) => {
                    let name = container_name(&c.job_id);
                    let tail = if spool.progress().len > 0 { spool.tail(OVERLAP_WINDOW).ok() } else { None };
                    // Docker's log can be seconds ahead of the spool (its timestamps are when the
                    // daemon read the output, the spool's when the agent did), so from well before.
                    let since = spool.modified_unix().map(|t| t.saturating_sub(READ_BACK_MARGIN_SECS));
                    let output: corral_shim::Output = match (tail, since) {
                        (Some(tail), Some(since)) => {
                            Box::pin(after_overlap(Box::pin(self.shim.logs_since(&name, Some(since))), tail))
                        }
                        _ => Box::pin(self.shim.logs(&name)),
                    };
                    tokio::spawn(spool.clone().fill(output));
                    self.set_spool(&c.job_id, spool);
                }
                Err(e) => tracing::error!(job = %c.job_id, "cannot spool the output of an adopted container: {e}"),
            }
            if let Some((policy, gpus)) = c.utilization.clone().filter(|_| c.running) {
                self.watch_utilization(&c.job_id, policy, gpus);
            }
            let this = self.clone();
            let unmount = ebs.remove(&container_name(&c.job_id));
            tokio::spawn(async move {
                let _unmount = unmount;
                this.supervise(c.job_id, deadline, rx, grace).await
            });
        }
        Ok(n)
    }

    fn track(&self, id: &JobId, state: JobState) -> watch::Receiver<StopRequest> {
        let (stop, rx) = watch::channel(None);
        let update = JobUpdate { job_id: id.clone(), state, exit_code: None, reason: None, message: None };
        let tracked = Tracked {
            update,
            dirty: true,
            stop,
            shipped: watch::Sender::new(false),
            spool: None,
            forgetting: false,
            address: None,
        };
        self.lock().insert(id.clone(), tracked);
        self.changed.notify_one();
        rx
    }

    fn mark_shipped(&self, id: &JobId) {
        if let Some(t) = self.lock().get(id) {
            t.shipped.send_replace(true);
        }
    }

    /// Ships the spool from now on (a shipper task per job, for as long as it takes).
    fn set_spool(self: &Arc<Self>, id: &JobId, spool: Arc<Spool>) {
        if let Some(t) = self.lock().get_mut(id) {
            t.spool = Some(spool.clone());
        }
        tokio::spawn(self.clone().ship_logs(id.clone(), spool));
    }

    /// Starts a job; a job already known is left alone (the coordinator may repeat itself).
    pub fn start(self: &Arc<Self>, spec: JobSpec) {
        if self.lock().contains_key(&spec.job_id) {
            return;
        }
        let rx = self.track(&spec.job_id, JobState::Provisioning);
        let this = self.clone();
        tokio::spawn(async move { this.run(spec, rx).await });
    }

    fn progress(&self, id: &JobId, state: JobState) {
        self.record(JobUpdate { job_id: id.clone(), state, exit_code: None, reason: None, message: None });
    }

    /// A job still under way, with a word for its status.
    fn note(&self, id: &JobId, state: JobState, message: String) {
        self.record(JobUpdate { job_id: id.clone(), state, exit_code: None, reason: None, message: Some(message) });
    }

    fn finish(&self, id: &JobId, reason: TerminationReason, exit_code: Option<i64>, message: Option<String>) {
        tracing::info!(job = %id, %reason, ?exit_code, "job ended");
        let update =
            JobUpdate { job_id: id.clone(), state: reason.final_state(), exit_code, reason: Some(reason), message };
        self.record(update);
    }

    async fn run(self: Arc<Self>, spec: JobSpec, mut stop: watch::Receiver<StopRequest>) {
        let id = spec.job_id.clone();
        self.progress(&id, JobState::Pulling);
        // A stop during a long pull ends the job at once.
        let pulled = tokio::select! {
            r = self.obtain_image(&id, &spec.image, spec.container.registry_auth.as_ref()) => Ok(r),
            (_, reason) = stop_requested(&mut stop) => Err(reason),
        };
        let failure = match pulled {
            Ok(Ok(())) => None,
            Ok(Err(e @ ShimError::ImageUnavailable { .. })) => {
                Some((TerminationReason::ImageUnavailable, Some(e.to_string())))
            }
            Ok(Err(e)) => Some((TerminationReason::AgentError, Some(e.to_string()))),
            Err(reason) => Some((reason, None)),
        };
        if let Some((reason, message)) = failure {
            self.mark_shipped(&id);
            return self.finish(&id, reason, None, message);
        }
        // Host paths checked, named volumes made; optional paths that are missing are left out.
        let mut spec = spec;
        let ebs = volumes::ebs_volumes(&spec);
        // Whatever way the job ends from here, its EBS volumes are unmounted after it.
        let _unmount = volumes::EbsMounts::new(&self, ebs.clone());
        let mounted = tokio::select! {
            r = self.prepare_mounts(&mut spec) => r.map_err(|m| (TerminationReason::ContainerCreationFailed, Some(m))),
            (_, reason) = stop_requested(&mut stop) => Err((reason, None)),
        };
        match mounted {
            Ok(None) => {}
            Ok(Some(note)) => self.note(&id, JobState::Pulling, note),
            Err((reason, message)) => {
                self.mark_shipped(&id);
                return self.finish(&id, reason, None, message);
            }
        }
        // The run's uploads and clones, ready to be put into the container before it starts.
        let prepared = tokio::select! {
            r = self.prepare(&spec) => r.map_err(|m| (TerminationReason::ContainerCreationFailed, Some(m))),
            (_, reason) = stop_requested(&mut stop) => Err((reason, None)),
        };
        let mut prepared = match prepared {
            Ok(p) => p,
            Err((reason, message)) => {
                self.mark_shipped(&id);
                return self.finish(&id, reason, None, message);
            }
        };
        if let Some(dir) = prepared.working_dir.take() {
            spec.working_dir = Some(dir);
        }
        let spool = match Spool::create(&self.spool_dir, &id) {
            Ok(s) => s,
            Err(e) => {
                self.mark_shipped(&id);
                let message = format!("cannot spool the job's output in {}: {e}", self.spool_dir.display());
                return self.finish(&id, TerminationReason::AgentError, None, Some(message));
            }
        };
        let opts = RunOptions { gpu_passthrough: self.gpu_passthrough };
        let started = self.shim.create_and_start_prepared(&spec, &opts, &prepared.archives).await;
        drop(prepared);
        match started {
            Ok((_, output, note)) => {
                tokio::spawn(spool.clone().fill(output));
                self.set_spool(&id, spool);
                if let Some(note) = note {
                    self.note(&id, JobState::Running, note);
                }
            }
            Err(e) => {
                spool.remove();
                self.mark_shipped(&id);
                return self.finish(
                    &id,
                    TerminationReason::ContainerCreationFailed,
                    None,
                    Some(crate::inventory::error_chain(&e)),
                );
            }
        }
        self.progress(&id, JobState::Running);
        if let Some(policy) = spec.container.utilization_policy.clone() {
            self.watch_utilization(&id, policy, spec.allocation.gpus());
        }
        let deadline = spec.max_duration_secs.map(|m| now_unix().saturating_add(m as i64));
        let this = (volumes::mounts_volume(&spec) || !ebs.is_empty()).then(|| self.clone());
        self.supervise(id, deadline, stop, spec.stop_grace_secs).await;
        if let Some(this) = this {
            this.refresh_volumes();
        }
    }

    /// The job's image: already here; or from the coordinator's store, when it has it (sites with no
    /// registry), with progress in the job's status; or pulled from its registry.
    async fn obtain_image(
        self: &Arc<Self>,
        id: &JobId,
        image: &str,
        auth: Option<&RegistryCredentials>,
    ) -> Result<(), ShimError> {
        if self.shim.image_present(image).await? {
            return Ok(());
        }
        // A transfer cut short (the link dropped, the coordinator restarted) starts again on the
        // next connection; a link that is down is waited for a while, since in a site without a
        // registry the coordinator is the only place the image can come from.
        let mut conn_rx = self.conn.subscribe();
        for attempt in 1..=IMAGE_FETCH_ATTEMPTS {
            // A live connection: the one a transfer just failed on may not be cleared yet.
            let wait = conn_rx.wait_for(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none()));
            let conn = match tokio::time::timeout(IMAGE_LINK_WAIT, wait).await {
                Ok(Ok(conn)) => conn.clone(),
                _ => break,
            };
            let Some(conn) = conn else { break };
            match self.fetch_image(&conn, id, image).await {
                Ok(true) => return Ok(()),
                Ok(false) => break,
                Err(e) if attempt < IMAGE_FETCH_ATTEMPTS => {
                    tracing::warn!(job = %id, image, attempt, "image transfer interrupted, trying again: {e}");
                    self.note(id, JobState::Pulling, format!("the image transfer was interrupted ({e}); trying again"));
                    // On the next connection, or this one again after a moment.
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
        self.shim.ensure_image_with(image, auth).await
    }

    /// Loads `image` from the coordinator's store. `Ok(false)`: it has no such image.
    async fn fetch_image(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        id: &JobId,
        image: &str,
    ) -> Result<bool, ShimError> {
        use corral_proto::wire::io::read_frame;
        use corral_proto::wire::{AgentMessage, CoordinatorMessage, ImageReply};
        let unavailable = |why: String| ShimError::ImageUnavailable {
            image: image.to_owned(),
            reason: format!("fetching it from the coordinator: {why}"),
        };
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| unavailable(e.to_string()))?;
        write_frame(&mut send, &AgentMessage::FetchImage { image: image.to_owned() })
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let _ = send.finish();
        let size = match read_frame::<CoordinatorMessage, _>(&mut recv).await.map_err(|e| unavailable(e.to_string()))? {
            Some(CoordinatorMessage::ImageReply(ImageReply::Stored { size })) => size,
            Some(CoordinatorMessage::ImageReply(ImageReply::NotStored)) => return Ok(false),
            other => return Err(unavailable(format!("unexpected answer {other:?}"))),
        };
        tracing::info!(job = %id, image, size, "loading the image from the coordinator");
        let mib = size as f64 / (1 << 20) as f64;
        let report = move |done: u64| {
            let pct = (done * 100).checked_div(size).unwrap_or(100);
            format!("loading the image from the coordinator: {pct}% of {mib:.1} MiB")
        };
        let (this, job) = (self.clone(), id.clone());
        let mut reported = std::time::Instant::now();
        // The tar as it arrives, its progress in the job's status about once a second; a stream
        // cut short is an error, so Docker never loads half an image as a whole one.
        let tar = futures_util::stream::unfold(Some((recv, 0u64)), move |state| {
            let (this, job) = (this.clone(), job.clone());
            let progress = if reported.elapsed() >= Duration::from_secs(1) {
                reported = std::time::Instant::now();
                state.as_ref().map(|(_, done)| report(*done))
            } else {
                None
            };
            async move {
                let (mut recv, done) = state?;
                if let Some(message) = progress {
                    this.note(&job, JobState::Pulling, message);
                }
                match recv.read_chunk(256 * 1024, true).await {
                    Ok(Some(chunk)) => {
                        let done = done + chunk.bytes.len() as u64;
                        Some((Ok(chunk.bytes), Some((recv, done))))
                    }
                    Ok(None) if done == size => None,
                    Ok(None) => {
                        Some((Err(std::io::Error::other(format!("cut off after {done} of {size} bytes"))), None))
                    }
                    Err(e) => Some((Err(std::io::Error::other(e)), None)),
                }
            }
        });
        self.shim.load_image(image, tar).await?;
        self.note(id, JobState::Pulling, format!("loaded the image from the coordinator ({mib:.1} MiB)"));
        Ok(true)
    }

    /// Follows a started container to its end: exit, stop request, or time limit.
    async fn supervise(
        self: Arc<Self>,
        id: JobId,
        deadline: Option<i64>,
        mut stop: watch::Receiver<StopRequest>,
        grace_secs: u64,
    ) {
        let container = container_name(&id);
        let grace = Duration::from_secs(grace_secs);
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep(Duration::from_secs(d.saturating_sub(now_unix()).max(0) as u64)).await,
                None => std::future::pending().await,
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
                if let Err(e) = self.shim.stop(&container, grace).await {
                    tracing::warn!(job = %id, "stopping at max_duration failed: {e}");
                }
                (TerminationReason::MaxDurationExceeded, self.exit_code(&container).await, Some("max_duration exceeded".to_owned()))
            }
            (abort, reason) = stop_requested(&mut stop) => {
                let r = if abort { self.shim.kill(&container).await } else { self.shim.stop(&container, grace).await };
                if let Err(e) = r
                    && !e.is_not_found() {
                        tracing::warn!(job = %id, "stopping failed: {e}");
                    }
                (reason, self.exit_code(&container).await, None)
            }
        };
        // The output ends with the container; a reader that never saw its end (Docker's follow can
        // hang on a removed daemon) is closed after a while, so the log can still be confirmed.
        let (spool, mut shipped) = match self.lock().get(&id) {
            Some(t) => (t.spool.clone(), t.shipped.subscribe()),
            None => return,
        };
        if let Some(spool) = spool {
            // Closed only after the output has been silent a while: a re-adopted container's
            // log read back from Docker may take long, but it keeps moving.
            let mut progress = spool.subscribe();
            while !progress.borrow_and_update().closed {
                if tokio::time::timeout(OUTPUT_END_WAIT, progress.changed()).await.is_err() {
                    tracing::warn!(job = %id, "the container's output did not end with it; closing its log");
                    spool.close();
                    break;
                }
            }
        }
        // Ship the tail of the output before saying the job ended, but never wait long: the
        // coordinator records the end either way, and the shipper goes on.
        let _ = tokio::time::timeout(LOG_DRAIN_WAIT, shipped.wait_for(|s| *s)).await;
        self.finish(&id, ending.0, ending.1, ending.2);
    }

    async fn exit_code(&self, container: &str) -> Option<i64> {
        self.shim.inspect_state(container).await.ok().and_then(|s| s.exit_code)
    }

    /// Where this host reaches the job's container, for tunnels: only a job this agent runs, and
    /// only while it runs. `Err` says why not, in words for the user.
    pub async fn address(&self, id: &JobId) -> Result<std::net::IpAddr, String> {
        match self.lock().get(id).map(|t| (t.update.state.clone(), t.address)) {
            Some((JobState::Running, Some(ip))) => return Ok(ip),
            Some((JobState::Running, None)) => {}
            Some((state, _)) => return Err(format!("job {id} is {state} on this node, not running")),
            None => return Err(format!("job {id} does not run on this node")),
        }
        let ip = self.shim.address(&container_name(id)).await.map_err(|e| format!("job {id}: {e}"))?;
        if let Some(t) = self.lock().get_mut(id) {
            t.address = Some(ip);
        }
        Ok(ip)
    }

    pub fn shim(&self) -> &Shim {
        &self.shim
    }

    /// Starts a command in a job's running container. `Err` says why not, in words for the user.
    pub async fn exec(&self, req: &corral_proto::wire::ExecRequest) -> Result<corral_shim::Exec, String> {
        let size = req.size.map(|s| (s.rows, s.cols));
        self.exec_in(&req.job_id, req.command.clone(), req.tty, size, Vec::new()).await
    }

    /// Starts `command` in a job's running container, with `env` (`NAME=value`) added to the
    /// container's own; with `tty`, in a terminal of `size` (rows, cols).
    pub async fn exec_in(
        &self,
        id: &JobId,
        command: Vec<String>,
        tty: bool,
        size: Option<(u16, u16)>,
        env: Vec<String>,
    ) -> Result<corral_shim::Exec, String> {
        match self.lock().get(id).map(|t| t.update.state.clone()) {
            Some(JobState::Running) => {}
            Some(state) => return Err(format!("job {id} is {state} on this node, not running")),
            None => return Err(format!("job {id} does not run on this node")),
        }
        if command.is_empty() {
            return Err("no command to run".to_owned());
        }
        self.shim.exec(&container_name(id), command, tty, size, env).await.map_err(|e| format!("job {id}: {e}"))
    }

    /// Kills and removes every container of this node's jobs (the node was removed from the
    /// cluster). Returns how many there were.
    pub async fn remove_all(&self) -> usize {
        let jobs: Vec<(JobId, Option<Arc<Spool>>)> = self.lock().drain().map(|(id, t)| (id, t.spool)).collect();
        for (id, spool) in &jobs {
            let name = container_name(id);
            let _ = self.shim.kill(&name).await;
            let _ = self.shim.remove(&name).await;
            match spool {
                Some(spool) => spool.remove(),
                None => Spool::discard(&self.spool_dir, id),
            }
        }
        jobs.len()
    }

    /// Asks a job to stop. Unknown jobs (a container the coordinator no longer wants) are removed.
    pub async fn stop(&self, id: &JobId, abort: bool, reason: TerminationReason) {
        let known = self.lock().get(id).map(|t| t.stop.send_replace(Some((abort, reason))));
        if known.is_none() {
            let name = container_name(id);
            let _ = self.shim.kill(&name).await;
            let _ = self.shim.remove(&name).await;
            Spool::discard(&self.spool_dir, id);
        }
    }

    /// The coordinator has recorded the job's end: remove the container once the coordinator has
    /// confirmed its whole output stored (a replay after a reconnect may still be running). Until
    /// then the container and its spool stay, however long that takes: output is never dropped.
    pub async fn forget(&self, id: &JobId) {
        let shipped = match self.lock().get_mut(id) {
            Some(t) if t.update.reason.is_none() => return, // still running here: not ours to drop
            Some(t) if t.forgetting => return,              // a repeated ForgetJob: one is waiting
            Some(t) => {
                t.forgetting = true;
                Some(t.shipped.subscribe())
            }
            None => None,
        };
        if let Some(mut shipped) = shipped {
            while tokio::time::timeout(FORGET_NAG, shipped.wait_for(|s| *s)).await.is_err() {
                tracing::warn!(job = %id, "keeping the container: the coordinator has not confirmed its whole log yet");
            }
        }
        if let Err(e) = self.shim.remove(&container_name(id)).await {
            tracing::warn!(job = %id, "cannot remove container: {e}");
            if let Some(t) = self.lock().get_mut(id) {
                t.forgetting = false;
            }
            return;
        }
        let spool = self.lock().remove(id).and_then(|t| t.spool);
        match spool {
            Some(spool) => spool.remove(),
            None => Spool::discard(&self.spool_dir, id),
        }
    }

    /// Ships the job's spooled output to the coordinator until it confirms all of it stored: on
    /// every connection, from the offset the coordinator has, again after any failure.
    async fn ship_logs(self: Arc<Self>, id: JobId, spool: Arc<Spool>) {
        let mut conn_rx = self.conn.subscribe();
        let mut backoff = Duration::from_millis(500);
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
            match crate::output::ship(&conn, &id, &spool).await {
                Ok(()) => {
                    self.mark_shipped(&id);
                    return;
                }
                Err(e) => {
                    tracing::debug!(job = %id, "log stream interrupted: {e:#}");
                    // On a new connection at once; on this one again after a while (the
                    // coordinator may be out of disk space).
                    tokio::select! {
                        r = conn_rx.changed() => if r.is_err() { return },
                        () = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(10)),
                        () = self.shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
}

/// Resolves when a stop is requested (at once if it already was).
async fn stop_requested(stop: &mut watch::Receiver<StopRequest>) -> (bool, TerminationReason) {
    loop {
        if let Some(s) = *stop.borrow_and_update() {
            return s;
        }
        if stop.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
