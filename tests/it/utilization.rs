//! `utilization_policy`: a job whose GPU stays below the minimum for the whole window is stopped
//! with `terminated_due_to_utilization_policy` and a message naming the GPU; one whose GPU gets
//! busy before its window ends keeps running; one without GPUs is told the policy has nothing to
//! measure. GPU utilization comes from the fake NVML's `utilization` file, next to a copy of the
//! library that only this test loads, so the test can change it while the agent samples.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use corral_proto::job::{JobState, TerminationReason};

use crate::harness::*;

/// Builds the fake NVML (two A100s) into `dir`, apart from the one other tests share.
fn own_fake_nvml(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("tests/fake-nvml/build.sh"))
        .arg(dir)
        .output()
        .context("cannot run tests/fake-nvml/build.sh")?;
    ensure!(out.status.success(), "building the fake NVML failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(dir.join("libnvidia-ml.so.1"))
}

/// Each GPU's utilization, one line per GPU in index order.
fn set_utilization(dir: &Path, percents: &[u32; 2]) -> anyhow::Result<()> {
    let text: String = percents.iter().map(|p| format!("{p}\n")).collect();
    // Written whole, then renamed: the library never reads half a file.
    let tmp = dir.join("utilization.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join("utilization"))?;
    Ok(())
}

fn task(name: &str, gpu: bool) -> String {
    let resources = if gpu { "resources:\n  gpu: 1\n" } else { "" };
    format!(
        "type: task\nname: {name}\nimage: {IMAGE}\nstop_duration: 3s\ncommands:\n  - sleep 3600\n{resources}\
         utilization_policy:\n  min_gpu_utilization: 10\n  time_window: 5m\n"
    )
}

/// The real 5-minute window (dstack's least): about 5½ minutes of wall time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gpu_stops_its_job_after_the_window_and_a_busy_one_keeps_running() -> anyhow::Result<()> {
    ensure_image();
    let dir = tempfile::tempdir()?;
    let nvml_dir = dir.path().join("nvml");
    let nvml = own_fake_nvml(&nvml_dir)?;
    set_utilization(&nvml_dir, &[3, 3])?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let client = coord.client();
    let _agent = Agent::start(
        &coord,
        &dir.path().join("agent"),
        AgentOptions { name: "gpu-node".into(), nvml: Some(nvml), ..Default::default() },
    );
    nodes_ready(&client, 1).await?;

    // `busy` starts first: had its GPU stayed at 3 %, its window would end before `idle`'s.
    let running = |r: &corral_proto::api::Run| r.state == JobState::Running;
    apply(&client, &write_config(dir.path(), "busy", &task("busy", true)), true).await?;
    let busy = wait_state(&client, "busy", running, Duration::from_secs(60)).await?;
    apply(&client, &write_config(dir.path(), "idle", &task("idle", true)), true).await?;
    let idle = wait_state(&client, "idle", running, Duration::from_secs(60)).await?;
    let gpu_of = |r: &corral_proto::api::Run| -> anyhow::Result<u32> {
        let alloc = r.jobs[0].allocation.clone().context("placed")?;
        ensure!(alloc.gpu_indices.len() == 1, "{alloc:?}");
        Ok(alloc.gpu_indices[0])
    };
    let (busy_gpu, idle_gpu) = (gpu_of(&busy)?, gpu_of(&idle)?);
    ensure!(busy_gpu != idle_gpu);

    // Two minutes into its window (twelve low samples), `busy`'s GPU gets to work.
    let started = busy.jobs[0].started_at_ms.context("busy started")?;
    wait_for("busy to have run two minutes", Duration::from_secs(150), || async {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
        Ok((now - started >= 120_000).then_some(()))
    })
    .await?;
    let mut percents = [3, 3];
    percents[busy_gpu as usize] = 50;
    set_utilization(&nvml_dir, &percents)?;

    let idle = wait_state(&client, "idle", |r| r.state.is_finished(), Duration::from_secs(7 * 60)).await?;
    let job = &idle.jobs[0];
    assert_eq!(job.termination_reason, Some(TerminationReason::TerminatedDueToUtilizationPolicy), "{job:?}");
    assert_eq!(job.state, JobState::Stopped);
    let message = job.status_message.clone().unwrap_or_default();
    assert!(message.contains(&format!("GPU {idle_gpu} was below 10% for 5m (at most 3%")), "{message}");
    let ran_ms = job.finished_at_ms.unwrap_or_default() - job.started_at_ms.unwrap_or_default();
    assert!(ran_ms >= 300_000, "stopped after {ran_ms} ms, before its window ended");
    assert!(!docker_running(&format!("corral-{}", job.id)), "the idle job's container still runs");

    // `busy` started before `idle` and read 3 % at first: only its busy GPU kept it running.
    let busy = run(&client, "busy").await?;
    assert_eq!(busy.state, JobState::Running, "{:?}", busy.jobs);
    assert!(
        !busy.jobs[0].status_message.clone().unwrap_or_default().contains("was below"),
        "{:?}",
        busy.jobs[0].status_message
    );
    // A job without GPUs (on the CPU `idle` freed: this host may have two): nothing to measure,
    // and its status says so.
    apply(&client, &write_config(dir.path(), "cpu", &task("cpu", false)), true).await?;
    let cpu = wait_state(
        &client,
        "cpu",
        |r| r.jobs[0].status_message.as_deref().is_some_and(|m| m.contains("utilization_policy")),
        Duration::from_secs(60),
    )
    .await?;
    let note = cpu.jobs[0].status_message.clone().unwrap_or_default();
    assert!(note.contains("the job has no GPUs"), "{note}");
    assert_eq!(cpu.state, JobState::Running);

    let mut out = Vec::new();
    for name in ["busy", "cpu"] {
        corral_cli::commands::stop(&client, name, true, true, &mut out).await?;
    }
    Ok(())
}
