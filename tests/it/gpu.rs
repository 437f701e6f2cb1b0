//! GPU placement: a GPU task waits on a node without GPUs and runs on one whose (fake) NVML
//! reports them, with the reserved indices visible in the container.

use std::time::Duration;

use corral_proto::job::JobState;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_task_waits_then_runs_on_the_gpu_node() -> anyhow::Result<()> {
    ensure_image();
    let nvml = fake_nvml();
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let client = coord.client();
    let _cpu_node = Agent::start(
        &coord,
        &dir.path().join("cpu"),
        AgentOptions { name: "cpu-node".into(), nvml: None, fleet: None, ..Default::default() },
    );
    nodes_ready(&client, 1).await?;

    let file = write_config(
        dir.path(),
        "train",
        &format!(
            "type: task\nname: train\nimage: {IMAGE}\ncommands:\n  - echo \"cuda=$CUDA_VISIBLE_DEVICES nvidia=$NVIDIA_VISIBLE_DEVICES gpus=$DSTACK_GPUS_NUM\"\nresources:\n  gpu: A100:80GB:1\n"
        ),
    );
    let (code, _) = apply(&client, &file, true).await?;
    assert_eq!(code, 0);
    let pending = wait_state(&client, "train", |r| r.state == JobState::Pending, Duration::from_secs(15)).await?;
    let why = pending.jobs[0].status_message.clone().unwrap_or_default();
    assert!(why.contains("cpu-node: has no GPUs"), "pending reason: {why}");

    let gpu_node = Agent::start(
        &coord,
        &dir.path().join("gpu"),
        AgentOptions { name: "gpu-node".into(), nvml: Some(nvml), fleet: None, ..Default::default() },
    );
    let nodes = nodes_ready(&client, 2).await?;
    let gpu =
        nodes.iter().find(|n| n.name == "gpu-node").and_then(|n| n.inventory.clone()).expect("gpu node inventory");
    assert_eq!(gpu.gpus.len(), 2);
    assert_eq!(gpu.gpus[0].name, "NVIDIA A100-SXM4-80GB");

    let done = wait_state(&client, "train", |r| r.state.is_finished(), Duration::from_secs(60)).await?;
    assert_eq!(done.state, JobState::Done, "{done:?}");
    assert_eq!(done.jobs[0].node_name.as_deref(), Some("gpu-node"));
    let alloc = done.jobs[0].allocation.clone().expect("allocation");
    assert_eq!(alloc.gpu_indices.len(), 1);
    let idx = alloc.gpu_indices[0];
    let out = wait_for("the task's output", Duration::from_secs(10), || async {
        let text = logs(&client, "train").await?;
        Ok((!text.is_empty()).then_some(text))
    })
    .await?;
    assert_eq!(out.trim(), format!("cuda={idx} nvidia={idx} gpus=1"));
    drop(gpu_node);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gpu_tasks_never_share_a_gpu() -> anyhow::Result<()> {
    ensure_image();
    let nvml = fake_nvml();
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let client = coord.client();
    let _node = Agent::start(
        &coord,
        &dir.path().join("gpu"),
        AgentOptions { name: "gpu-node".into(), nvml: Some(nvml), fleet: None, ..Default::default() },
    );
    nodes_ready(&client, 1).await?;
    for name in ["job-a", "job-b", "job-c"] {
        let file = write_config(
            dir.path(),
            name,
            &format!("type: task\nname: {name}\nimage: {IMAGE}\ncommands:\n  - sleep 600\nresources:\n  gpu: 1\n"),
        );
        apply(&client, &file, true).await?;
    }
    let a = wait_state(&client, "job-a", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    let b = wait_state(&client, "job-b", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    let c = wait_state(&client, "job-c", |r| r.state == JobState::Pending, Duration::from_secs(30)).await?;
    let ga = a.jobs[0].allocation.clone().expect("a placed").gpu_indices;
    let gb = b.jobs[0].allocation.clone().expect("b placed").gpu_indices;
    assert_eq!(ga.len(), 1);
    assert_ne!(ga, gb, "two jobs were given the same GPU");
    assert!(
        c.jobs[0]
            .status_message
            .clone()
            .unwrap_or_default()
            .contains("no node with 1 GPU(s) free; 1 node(s) have them busy"),
        "{:?}",
        c.jobs[0].status_message
    );
    // Freeing a GPU lets the waiting job in.
    let mut out = Vec::new();
    corral_cli::commands::stop(&client, "job-a", true, true, &mut out).await?;
    let c = wait_state(&client, "job-c", |r| r.state == JobState::Running, Duration::from_secs(30)).await?;
    assert_eq!(c.jobs[0].allocation.clone().expect("c placed").gpu_indices, ga);
    for name in ["job-b", "job-c"] {
        corral_cli::commands::stop(&client, name, true, true, &mut out).await?;
    }
    Ok(())
}
