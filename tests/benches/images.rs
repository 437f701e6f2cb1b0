//! Images without a registry, measured side by side in one run (see docs/benchmarks.md): a node
//! that lacks an image loads it from the coordinator's store over its QUIC link, against a plain
//! `docker load` of the same `docker save` file on the same machine.
//!
//! For each round: the image is removed from Docker, then (alternating which goes first)
//! - raw: `docker load -i image.tar`, timed;
//! - Corral: a task with that image is submitted, timed from submission to its first output byte,
//!   minus the same measure for a task whose image is present (the rest of the path).
//!
//! Knobs: `CORRAL_BENCH_IMAGE_MIB` (size of the image's random layer, default 256),
//! `CORRAL_BENCH_ROUNDS` (default 3). Runs the release binaries: `scripts/bench.sh images`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use corral_cli::client::Client;
use corral_proto::api;
use corral_tests::procs::{CoordinatorProc, bin, remove_node_containers};

const BASE: &str = "corral-test/busybox:latest";

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker").args(args).output().context("cannot run docker")?;
    if !out.status.success() {
        bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Submits a task running `image` and times until its first output byte.
async fn first_output(client: &Client, name: &str, image: &str) -> anyhow::Result<Duration> {
    let text = format!("type: task\nname: {name}\nimage: {image}\ncommands:\n  - echo ready\n");
    let configuration = corral_proto::config::parse(&text, "bench").map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = Instant::now();
    let _: api::Run =
        client.post(&client.project_path("runs"), &api::SubmitRun { configuration, source: None, name: None }).await?;
    let mut resp = client.logs(name, 0, 0, true).await?;
    loop {
        match resp.chunk().await? {
            Some(c) if !c.is_empty() => return Ok(start.elapsed()),
            Some(_) => continue,
            None => bail!("{name}: the log ended without output (did the image load?)"),
        }
    }
}

/// An image of its own: the test image plus `mib` MiB of random bytes (incompressible, like
/// model weights).
fn build_image(dir: &Path, name: &str, mib: usize) -> anyhow::Result<()> {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx)?;
    let mut data = vec![0u8; mib << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in data.chunks_mut(8) {
        // xorshift: fast, and nothing compresses it
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(ctx.join("weights.bin"), data)?;
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {BASE}\nCOPY weights.bin /weights.bin\n"))?;
    let out =
        Command::new("docker").args(["build", "-q", "-t", name]).arg(&ctx).env("DOCKER_BUILDKIT", "0").output()?;
    if !out.status.success() {
        bail!("docker build: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mib: usize = std::env::var("CORRAL_BENCH_IMAGE_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let rounds: usize = std::env::var("CORRAL_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir()?;
    let image = format!("corral-bench/weights-{}:1", std::process::id());
    build_image(dir.path(), &image, mib)?;
    let tar = dir.path().join("image.tar");
    docker(&["save", "-o", tar.to_str().context("utf-8 path")?, &image])?;
    let tar_mib = std::fs::metadata(&tar)?.len() as f64 / (1 << 20) as f64;

    let coordinator = CoordinatorProc::start(&dir.path().join("coord"), &[]).await?;
    let agent_state = dir.path().join("agent");
    let _agent = coordinator.agent(&agent_state, "bench-node")?;
    coordinator.nodes_ready(1, Duration::from_secs(20)).await?;
    let client = coordinator.client.clone();
    let push = Command::new(bin("corral"))
        .args(["image", "push", "--file"])
        .arg(&tar)
        .env("CORRAL_URL", &client.url)
        .env("CORRAL_TOKEN", std::fs::read_to_string(dir.path().join("coord/admin-token"))?.trim())
        .env("CORRAL_CONFIG", dir.path().join("cli.json"))
        .output()?;
    if !push.status.success() {
        bail!("corral image push: {}", String::from_utf8_lossy(&push.stderr));
    }

    let (mut raw, mut corral, mut present) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // The rest of the path: a task whose image is here.
        present.push(first_output(&client, &format!("present-{round}"), BASE).await?);
        let order: [bool; 2] = if round % 2 == 0 { [true, false] } else { [false, true] };
        for raw_first in order {
            docker(&["rmi", "-f", &image])?;
            if raw_first {
                let start = Instant::now();
                docker(&["load", "-q", "-i", tar.to_str().context("utf-8 path")?])?;
                raw.push(start.elapsed());
            } else {
                corral.push(first_output(&client, &format!("fetch-{round}"), &image).await?);
            }
        }
    }
    remove_node_containers(&agent_state);
    let _ = docker(&["rmi", "-f", &image]);

    let (raw, corral, present) = (median(raw), median(corral), median(present));
    let fetch = corral.saturating_sub(present);
    let rate = |d: Duration| tar_mib / d.as_secs_f64();
    println!("image: {tar_mib:.0} MiB (docker save), {rounds} round(s), medians");
    println!("| path | time | MiB/s |");
    println!("|---|---|---|");
    println!("| `docker load -i` (raw) | {:.2} s | {:.0} |", raw.as_secs_f64(), rate(raw));
    println!(
        "| Corral: fetch from the coordinator + load (submit→output {:.2} s − {:.2} s with the image present) | {:.2} s | {:.0} |",
        corral.as_secs_f64(),
        present.as_secs_f64(),
        fetch.as_secs_f64(),
        rate(fetch)
    );
    println!("ratio Corral / raw: {:.2}×", fetch.as_secs_f64() / raw.as_secs_f64());
    Ok(())
}
