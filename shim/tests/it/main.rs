//! The shim against the real Docker engine. Nothing is skipped: without a reachable daemon every
//! test fails and says so. The image `corral-test/busybox:latest` is built once per process by
//! `scripts/build-test-image.sh` (no registry needed).
//!
//! Tests run in parallel with each other and with other suites: every container is named after a
//! unique job id, and each test removes only the containers it created, also when it fails.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use corral_proto::ids::JobId;
use corral_proto::job::JobSpec;
use corral_proto::resources::Allocation;
use corral_shim::{Shim, container_name};
use futures_util::StreamExt;

mod jobs;
mod lifecycle;

const TEST_IMAGE: &str = "corral-test/busybox:latest";

/// Generous bound for anything that should take a second or two, so that a hang fails the test
/// instead of the CI job.
const DEADLINE: Duration = Duration::from_secs(60);

/// A connected shim, after making sure the test image exists.
fn shim() -> anyhow::Result<Shim> {
    test_image().map_err(|e| anyhow::anyhow!("{e}"))?;
    Shim::connect().context("the shim tests need a running Docker engine")
}

/// Builds the test image once per process; every test sees the same outcome.
fn test_image() -> Result<(), &'static str> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-test-image.sh");
            let out =
                Command::new("bash").arg(&script).output().map_err(|e| format!("running {}: {e}", script.display()))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{} failed ({}); is Docker running and reachable?\n{}{}",
                    script.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .as_ref()
        .map_err(String::as_str)
        .copied()
}

/// A job id no other test, process or suite will use: Docker names are global to the host.
fn unique_job_id(tag: &str) -> JobId {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    JobId(format!("shim-it-{}-{}-{nanos}-{tag}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// A job running `commands` in the test image, and the guard that removes its container.
fn job(tag: &str, commands: &[&str]) -> (JobSpec, Cleanup) {
    let job_id = unique_job_id(tag);
    let cleanup =
        Cleanup(container_name(&job_id), corral_shim::network::network_name(&format!("run-{job_id}").as_str().into()));
    let spec = JobSpec {
        node_id: format!("node-{job_id}").as_str().into(),
        run_id: format!("run-{job_id}").as_str().into(),
        job_id,
        run_name: format!("shim-it-{tag}"),
        project: "shim-it".to_owned(),
        image: TEST_IMAGE.to_owned(),
        commands: commands.iter().map(|c| (*c).to_owned()).collect(),
        env: vec![],
        working_dir: None,
        allocation: Allocation::default(),
        max_duration_secs: None,
        stop_grace_secs: 2,
        host_network: false,
        container: Default::default(),
    };
    (spec, cleanup)
}

/// Removes a test's container and its run's network when the test ends, passed or failed.
/// Through the CLI, because `Drop` cannot await and may run while the test's runtime is gone.
pub(crate) struct Cleanup(pub(crate) String, pub(crate) String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "--force", "--volumes", &self.0]).output();
        let _ = Command::new("docker").args(["network", "rm", &self.1]).output();
    }
}

/// Everything the container wrote, once the log stream has ended (the container exited).
async fn logs(shim: &Shim, container: &str) -> anyhow::Result<String> {
    let mut stream = std::pin::pin!(shim.logs(container));
    let mut text = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            text.extend_from_slice(&chunk.context("reading logs")?);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(DEADLINE, read).await.context("the log stream did not end")??;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

async fn wait(shim: &Shim, container: &str) -> anyhow::Result<i64> {
    tokio::time::timeout(DEADLINE, shim.wait(container))
        .await
        .context("the container did not exit")?
        .context("waiting for the container")
}

/// Polls until the container runs; a bounded, level-triggered wait.
async fn until_running(shim: &Shim, container: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if shim.inspect_state(container).await?.running {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("container {container} did not start running within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
