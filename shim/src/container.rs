//! The verbs on one job's container: create and start, wait, stop, kill, remove (its logs:
//! [`crate::logs`]).

use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bytes::Bytes;
use corral_proto::job::JobSpec;
use futures_util::{Stream, StreamExt};

use crate::Shim;
use crate::error::{ShimError, daemon_message, status_of};
use crate::network::Attachment;
use crate::spec::{LABEL_RUN, RunOptions, container_config, container_name};
use crate::uploads::Archive;

/// A container's output as it is written: stdout and stderr merged, in order.
pub type Output = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, ShimError>> + Send>>;

/// How long `stop` waits for the container to be gone after SIGKILL before it reports failure.
/// The daemon itself waits for a killed container, so this is a backstop.
const AFTER_KILL: Duration = Duration::from_secs(30);

impl Shim {
    /// Creates the job's container (`corral-<job id>`) and starts it; returns the container id.
    /// The image must be present ([`Shim::ensure_image`]). If the start fails, the container is
    /// removed again so that a retry does not collide with it.
    pub async fn create_and_start(&self, spec: &JobSpec, opts: &RunOptions) -> Result<String, ShimError> {
        Ok(self.create_start(spec, opts, false, &[]).await?.0)
    }

    /// The container of `spec` joins its run's own network on this host (or the host's network
    /// for multi-node runs); `Some` note when it had to make do with Docker's default bridge.
    async fn network_for(&self, spec: &JobSpec) -> Result<(Option<String>, Option<String>), ShimError> {
        Ok(match self.run_network(spec).await? {
            Attachment::Host => (Some("host".to_owned()), None),
            Attachment::Run(name) => (Some(name), None),
            Attachment::DefaultBridge(note) => {
                tracing::warn!(job = %spec.job_id, "{note}");
                (None, Some(note))
            }
        })
    }

    /// Like [`Shim::create_and_start`], attached to the container's stdout and stderr before it
    /// starts: the stream carries every byte it writes, from the first, in the order written, and
    /// ends when the container exits. Docker's log driver and its rotation play no part: nothing is
    /// cut, split or dropped, whatever the host's log options (a reader that falls behind slows the
    /// container's writes instead).
    pub async fn create_and_start_attached(
        &self,
        spec: &JobSpec,
        opts: &RunOptions,
    ) -> Result<(String, Output, Option<String>), ShimError> {
        self.create_and_start_prepared(spec, opts, &[]).await
    }

    /// Like [`Shim::create_and_start_attached`], with `archives` unpacked in the container after
    /// it is created and before it starts (a run's repo and files, [`crate::uploads`]). A failure
    /// to put one removes the container, and its message names the archive and the path.
    pub async fn create_and_start_prepared(
        &self,
        spec: &JobSpec,
        opts: &RunOptions,
        archives: &[Archive],
    ) -> Result<(String, Output, Option<String>), ShimError> {
        let (id, output, note) = self.create_start(spec, opts, true, archives).await?;
        let output = output.ok_or_else(|| ShimError::Unexpected {
            op: "attaching to",
            subject: container_name(&spec.job_id),
            detail: "no output stream".to_owned(),
        })?;
        Ok((id, output, note))
    }

    async fn create_start(
        &self,
        spec: &JobSpec,
        opts: &RunOptions,
        attach: bool,
        archives: &[Archive],
    ) -> Result<(String, Option<Output>, Option<String>), ShimError> {
        let docker = self.client().await?;
        let name = container_name(&spec.job_id);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let networks = self.lock_networks().await;
        let (network, note) = self.network_for(spec).await?;
        let mut config = container_config(spec, opts);
        if let Some(host) = config.host_config.as_mut() {
            host.network_mode = network;
        }
        let created = docker.create_container(Some(options), config).await;
        drop(networks);
        let created = created.map_err(|e| match status_of(&e) {
            Some(404) => ShimError::ImageUnavailable {
                image: spec.image.clone(),
                reason: format!("it is not present locally ({})", daemon_message(&e)),
            },
            Some(409) => ShimError::ContainerExists { job: spec.job_id.clone(), name: name.clone(), source: e },
            _ => self.classify(e, |source| ShimError::Create {
                job: spec.job_id.clone(),
                image: spec.image.clone(),
                source,
            }),
        })?;
        for warning in &created.warnings {
            tracing::warn!(job = %spec.job_id, container = %name, warning, "docker warned on create");
        }
        // The run's repo and files, before anything in the container runs.
        if let Err(e) = self.put_archives(&created.id, spec.container.user.as_deref(), archives).await {
            if let Err(cleanup) = self.remove(&created.id).await {
                tracing::warn!(job = %spec.job_id, container = %name, error = %cleanup, "removing unstarted container");
            }
            return Err(e);
        }

        let output = if attach {
            let options = AttachContainerOptionsBuilder::default().stdout(true).stderr(true).stream(true).build();
            match docker.attach_container(&created.id, Some(options)).await {
                Ok(attached) => {
                    let (shim, container) = (self.clone(), name.clone());
                    let output: Output = Box::pin(attached.output.map(move |chunk| {
                        chunk
                            .map(LogOutput::into_bytes)
                            .map_err(|e| shim.container_error("reading the output of", &container, e))
                    }));
                    Some(output)
                }
                Err(e) => {
                    let err = self.container_error("attaching to", &name, e);
                    if let Err(cleanup) = self.remove(&created.id).await {
                        tracing::warn!(job = %spec.job_id, container = %name, error = %cleanup, "removing unstarted container");
                    }
                    return Err(err);
                }
            }
        } else {
            None
        };

        if let Err(e) = docker.start_container(&created.id, None).await {
            let err = self.classify(e, |source| ShimError::Start {
                job: spec.job_id.clone(),
                container: name.clone(),
                source,
            });
            if let Err(cleanup) = self.remove(&created.id).await {
                tracing::warn!(job = %spec.job_id, container = %name, error = %cleanup, "removing unstarted container");
            }
            return Err(err);
        }
        tracing::info!(job = %spec.job_id, container = %name, id = %created.id, "container started");
        Ok((created.id, output, note))
    }

    /// Waits until the container is not running and returns its exit code (at once if it already
    /// exited).
    pub async fn wait(&self, container: &str) -> Result<i64, ShimError> {
        let docker = self.client().await?;
        let options = WaitContainerOptionsBuilder::default().condition("not-running").build();
        match docker.wait_container(container, Some(options)).next().await {
            Some(Ok(exit)) => Ok(exit.status_code),
            // bollard reports a non-zero exit as an error; for Corral it is the job's result.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(self.container_error("waiting for", container, e)),
            None => Err(ShimError::Unexpected {
                op: "waiting for",
                subject: container.to_owned(),
                detail: "the wait ended without an exit code".to_owned(),
            }),
        }
    }

    /// Sends SIGTERM, gives the container `grace` to exit, then kills it. Ok when it is already
    /// stopped or gone. Returns once the container is no longer running.
    pub async fn stop(&self, container: &str, grace: Duration) -> Result<(), ShimError> {
        match self.signal(container, "SIGTERM").await {
            Ok(()) => {}
            Err(ShimError::ContainerNotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
        match tokio::time::timeout(grace, self.wait(container)).await {
            Ok(Ok(_) | Err(ShimError::ContainerNotFound { .. })) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {}
        }
        tracing::info!(container, grace_secs = grace.as_secs(), "grace period over, killing container");
        match self.kill(container).await {
            Ok(()) | Err(ShimError::ContainerNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        match tokio::time::timeout(AFTER_KILL, self.wait(container)).await {
            Ok(Ok(_) | Err(ShimError::ContainerNotFound { .. })) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ShimError::Unexpected {
                op: "stopping",
                subject: container.to_owned(),
                detail: format!("still running {}s after SIGKILL", AFTER_KILL.as_secs()),
            }),
        }
    }

    /// Kills the container with SIGKILL. Ok when it is not running.
    pub async fn kill(&self, container: &str) -> Result<(), ShimError> {
        self.signal(container, "SIGKILL").await
    }

    /// Removes the container, running or not, with its anonymous volumes. Ok when it is already gone.
    /// The run's network goes with its last container on this host.
    pub async fn remove(&self, container: &str) -> Result<(), ShimError> {
        let docker = self.client().await?;
        let run = match docker.inspect_container(container, None).await {
            Ok(c) => c.config.and_then(|c| c.labels).and_then(|mut l| l.remove(LABEL_RUN)),
            Err(_) => None,
        };
        let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        let removed = docker.remove_container(container, Some(options)).await;
        if removed.is_ok()
            && let Some(run) = run
        {
            let _ = self.release_run_network(&run).await;
        }
        match removed {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            // Someone else is removing it already; the outcome is the one asked for.
            Err(e) if status_of(&e) == Some(409) && daemon_message(&e).contains("already in progress") => Ok(()),
            Err(e) => Err(self.container_error("removing", container, e)),
        }
    }

    /// Sends `signal`; a container that is not running is left alone.
    async fn signal(&self, container: &str, signal: &str) -> Result<(), ShimError> {
        let docker = self.client().await?;
        let options = KillContainerOptionsBuilder::default().signal(signal).build();
        match docker.kill_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(409) && daemon_message(&e).contains("not running") => Ok(()),
            Err(e) => Err(self.container_error("signalling", container, e)),
        }
    }
}
