//! `utilization_policy`: a job whose GPU stays below the minimum for the whole window is stopped
//! with `terminated_due_to_utilization_policy` and a message naming the GPU, and the rest of its
//! gang with it; one whose GPU gets busy before its window ends keeps running; one without GPUs is
//! told the policy has nothing to measure. GPU utilization comes from the fake NVML's
//! `utilization` file, next to a copy of the library that only one agent of this test loads, so
//! the test can change it while the agents sample.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use corral_proto::api::Run;
use corral_proto::job::{JobState, TerminationReason};

use crate::harness::*;

/// What each node's GPUs read, by node name: one percentage per GPU, in index order (`None`: the
/// reading fails).
struct Gpus {
    dirs: HashMap<String, PathBuf>,
    percents: HashMap<String, [Option<u32>; 2]>,
}

impl Gpus {
    fn set(&mut self, node: &str, gpu: u32, percent: Option<u32>) -> anyhow::Result<()> {
        let p = self.percents.get_mut(node).context("a node of the test")?;
        p[gpu as usize] = percent;
        let text: String = p.iter().map(|p| p.map_or("error\n".to_owned(), |p| format!("{p}\n"))).collect();
        write_whole(&self.dirs[node].join("utilization"), &text)
    }
}

fn task(name: &str, extra: &str) -> String {
    format!(
        "type: task\nname: {name}\nimage: {IMAGE}\nstop_duration: 3s\ncommands:\n  - sleep 3600\n{extra}\
         utilization_policy:\n  min_gpu_utilization: 10\n  time_window: 5m\n"
    )
}

/// The node and GPU of a run's rank.
fn placed(r: &Run, rank: usize) -> anyhow::Result<(String, u32)> {
    let job = r.jobs.iter().find(|j| j.job_num as usize == rank).context("the rank")?;
    let alloc = job.allocation.clone().context("placed")?;
    ensure!(alloc.gpu_indices.len() == 1, "{alloc:?}");
    Ok((job.node_name.clone().context("a node")?, alloc.gpu_indices[0]))
}

/// The real 5-minute window (dstack's least): about 5½ minutes of wall time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gpu_stops_its_gang_after_the_window_and_a_busy_one_keeps_running() -> anyhow::Result<()> {
    ensure_image();
    let dir = tempfile::tempdir()?;
    let coord = Coordinator::start(&dir.path().join("coord")).await?;
    let client = coord.client();
    let mut out = Vec::new();
    let fleet = write_config(dir.path(), "rack", "type: fleet\nname: rack\nplacement: cluster\n");
    corral_cli::commands::apply(&client, &fleet, true, true, None, &mut out).await?;
    let mut gpus = Gpus { dirs: HashMap::new(), percents: HashMap::new() };
    let mut agents = Vec::new();
    for name in ["node-a", "node-b"] {
        let nvml_dir = dir.path().join(format!("nvml-{name}"));
        let nvml = own_fake_nvml(&nvml_dir)?;
        gpus.dirs.insert(name.to_owned(), nvml_dir);
        gpus.percents.insert(name.to_owned(), [Some(3), Some(3)]);
        gpus.set(name, 0, Some(3))?;
        let opts =
            AgentOptions { name: name.into(), nvml: Some(nvml), fleet: Some("rack".into()), ..Default::default() };
        agents.push(Agent::start(&coord, &dir.path().join(name), opts));
    }
    nodes_ready(&client, 2).await?;

    // `busy` starts first: had its GPU stayed at 3 %, its window would end before `idle`'s.
    let running = |r: &Run| r.state == JobState::Running;
    apply(&client, &write_config(dir.path(), "busy", &task("busy", "resources:\n  gpu: 1\n")), true).await?;
    let busy = wait_state(&client, "busy", running, Duration::from_secs(60)).await?;
    let idle_config = task("idle", "nodes: 2\nresources:\n  gpu: 1\n");
    apply(&client, &write_config(dir.path(), "idle", &idle_config), true).await?;
    let idle = wait_state(&client, "idle", running, Duration::from_secs(60)).await?;
    let (busy_node, busy_gpu) = placed(&busy, 0)?;
    let (idle_node, idle_gpu) = placed(&idle, 0)?;
    // Rank 1 of `idle` works from the start: only rank 0 idles.
    let (worker_node, worker_gpu) = placed(&idle, 1)?;
    gpus.set(&worker_node, worker_gpu, Some(80))?;

    // Two minutes into its window (twelve low samples), `busy`'s GPU gets to work.
    let started = busy.jobs[0].started_at_ms.context("busy started")?;
    wait_for("busy to have run two minutes", Duration::from_secs(150), || async {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
        Ok((now - started >= 120_000).then_some(()))
    })
    .await?;
    gpus.set(&busy_node, busy_gpu, Some(50))?;

    let idle = wait_state(&client, "idle", |r| r.state.is_finished(), Duration::from_secs(7 * 60)).await?;
    let rank = |n: u32| idle.jobs.iter().find(|j| j.job_num == n).context("rank");
    let (master, worker) = (rank(0)?, rank(1)?);
    assert_eq!(master.termination_reason, Some(TerminationReason::TerminatedDueToUtilizationPolicy), "{master:?}");
    assert_eq!(master.state, JobState::Stopped);
    let message = master.status_message.clone().unwrap_or_default();
    assert!(message.contains(&format!("GPU {idle_gpu} was below 10% for 5m (at most 3%")), "{idle_node}: {message}");
    let ran_ms = master.finished_at_ms.unwrap_or_default() - master.started_at_ms.unwrap_or_default();
    assert!(ran_ms >= 300_000, "stopped after {ran_ms} ms, before its window ended");
    assert!(!docker_running(&format!("corral-{}", master.id)), "the idle rank's container still runs");
    // The busy rank goes with its gang, as dstack ends the whole run.
    assert_eq!(worker.termination_reason, Some(TerminationReason::GangMemberFailed), "{worker:?}");

    // `busy` started before `idle` and read 3 % at first: only its busy GPU kept it running.
    let busy = run(&client, "busy").await?;
    assert_eq!(busy.state, JobState::Running, "{:?}", busy.jobs);
    assert!(
        !busy.jobs[0].status_message.clone().unwrap_or_default().contains("was below"),
        "{:?}",
        busy.jobs[0].status_message
    );

    // A job without GPUs: nothing to measure, and its status says so.
    apply(&client, &write_config(dir.path(), "cpu", &task("cpu", "")), true).await?;
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

    // GPUs NVML cannot read: the job is told, once, and not stopped for it.
    for node in ["node-a", "node-b"] {
        for gpu in 0..2 {
            if (node, gpu) != (busy_node.as_str(), busy_gpu) {
                gpus.set(node, gpu, None)?;
            }
        }
    }
    apply(&client, &write_config(dir.path(), "blind", &task("blind", "resources:\n  gpu: 1\n")), true).await?;
    let blind = wait_state(
        &client,
        "blind",
        |r| r.jobs[0].status_message.as_deref().is_some_and(|m| m.contains("utilization_policy")),
        Duration::from_secs(60),
    )
    .await?;
    let note = blind.jobs[0].status_message.clone().unwrap_or_default();
    assert!(note.contains("cannot read GPU utilization (GPU "), "{note}");
    assert!(note.contains("the job is not stopped while readings are missing"), "{note}");
    assert_eq!(blind.state, JobState::Running);

    for name in ["busy", "cpu", "blind"] {
        corral_cli::commands::stop(&client, name, true, true, &mut out).await?;
    }
    drop(agents);
    Ok(())
}
