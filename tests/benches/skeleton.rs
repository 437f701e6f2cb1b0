//! First numbers, measured side by side in one run (see docs/benchmarks.md):
//! - submit→output latency of a task whose image is present, against a plain `docker run` of the
//!   same image and command (ratio; goal ≤ 1.25×);
//! - idle RSS of the coordinator and the agent (goals ≤ 40 MiB and ≤ 20 MiB);
//! - release binary sizes.
//!
//! Runs the release binaries as real processes: `scripts/bench.sh` builds them and runs this.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use corral_cli::client::Client;
use corral_proto::api;
use corral_tests::procs::{CoordinatorProc, bin, remove_node_containers, rss_kib};

const IMAGE: &str = "corral-test/busybox:latest";
const ROUNDS: usize = 10;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `docker run --rm IMAGE sh -c 'echo ready'`, from spawn to the first byte of output.
fn docker_run_once() -> anyhow::Result<Duration> {
    use std::io::Read;
    let start = Instant::now();
    let mut child = Command::new("docker")
        .args(["run", "--rm", IMAGE, "/bin/sh", "-c", "echo ready"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().context("no stdout")?;
    let mut byte = [0u8; 1];
    out.read_exact(&mut byte)?;
    let took = start.elapsed();
    child.wait()?;
    Ok(took)
}

/// Submit a task through the API and time until its first output byte reaches a log follower.
async fn corral_once(client: &Client, dir: &Path, i: usize) -> anyhow::Result<Duration> {
    let file = dir.join(format!("bench-{i}.dstack.yml"));
    std::fs::write(&file, format!("type: task\nname: bench-{i}\nimage: {IMAGE}\ncommands:\n  - echo ready\n"))?;
    let text = std::fs::read_to_string(&file)?;
    let configuration = corral_proto::config::parse(&text, "bench").map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = Instant::now();
    let _: api::Run =
        client.post(&client.project_path("runs"), &api::SubmitRun { configuration, source: None, name: None }).await?;
    let mut resp = client.logs(&format!("bench-{i}"), 0, 0, true).await?;
    loop {
        match resp.chunk().await? {
            Some(c) if !c.is_empty() => return Ok(start.elapsed()),
            Some(_) => continue,
            None => bail!("log ended without output"),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coordinator = CoordinatorProc::start(&dir.path().join("coord"), &[]).await?;
    let agent_state = dir.path().join("agent");
    let agent = coordinator.agent(&agent_state, "bench-node")?;
    coordinator.nodes_ready(1, Duration::from_secs(20)).await?;
    let client = coordinator.client.clone();

    // Idle: connected, nothing running, after a few heartbeats.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let coord_rss = rss_kib(coordinator.proc.pid())?;
    let agent_rss = rss_kib(agent.pid())?;

    // Warm both paths once, then alternate rounds so drift hits both alike.
    docker_run_once()?;
    corral_once(&client, dir.path(), 0).await?;
    let (mut docker, mut corral) = (Vec::new(), Vec::new());
    for i in 1..=ROUNDS {
        docker.push(docker_run_once()?);
        corral.push(corral_once(&client, dir.path(), i).await?);
    }
    let (d, c) = (median(docker), median(corral));
    let size = |n: &str| std::fs::metadata(bin(n)).map(|m| m.len() as f64 / (1024.0 * 1024.0)).unwrap_or(f64::NAN);

    println!("| measure | Corral | baseline | ratio / goal |");
    println!("|---|---|---|---|");
    println!(
        "| submit → first output, image present (median of {ROUNDS}) | {:.0} ms | `docker run` {:.0} ms | {:.2}× (goal ≤ 1.25×) |",
        c.as_secs_f64() * 1000.0,
        d.as_secs_f64() * 1000.0,
        c.as_secs_f64() / d.as_secs_f64()
    );
    println!("| coordinator idle RSS | {:.1} MiB | — | goal ≤ 40 MiB |", coord_rss as f64 / 1024.0);
    println!("| agent idle RSS | {:.1} MiB | — | goal ≤ 20 MiB |", agent_rss as f64 / 1024.0);
    for n in ["corral", "corral-coordinator", "corral-agent"] {
        println!("| `{n}` release binary | {:.1} MiB | — | — |", size(n));
    }
    drop(agent);
    remove_node_containers(&agent_state);
    drop(coordinator);
    Ok(())
}
