//! Listing runs a page at a time (see docs/benchmarks.md): `GET /api/projects/main/runs?all=true`
//! with a page of 100, at 1,000, 10,000 and 100,000 runs stored, plain HTTP with keep-alive, as
//! `corral ps -a` asks. Goal: p50 ≤ 1 ms, p99 ≤ 5 ms at 100,000 runs, and no growth with the
//! number stored (the ratio to the 1,000-run figure).
//!
//! The runs are written into the coordinator's database between its starts (finished runs of one
//! job each, as a busy cluster leaves them): the listing is what is measured, not submission.
//! Then nodes: `GET /api/nodes` with 10,000 enrolled (8 GPUs each), a page of 100 against all of
//! them in one answer (what every listing was before pages; goal ≤ 20 ms for a page).
//!
//! Runs the release binaries as real processes: `scripts/bench.sh lists`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use corral_proto::api;
use corral_tests::procs::CoordinatorProc;

const REQUESTS: usize = 300;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Adds finished runs until `total` are stored.
fn fill(db: &Path, from: usize, total: usize) -> anyhow::Result<()> {
    let configuration = corral_proto::config::parse(
        "type: task\nimage: busybox\nresources:\n  gpu: 1\ncommands:\n  - python train.py --epochs 3\n",
        "bench.dstack.yml",
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let configuration = serde_json::to_string(&configuration)?;
    let mut conn = rusqlite::Connection::open(db)?;
    let tx = conn.transaction()?;
    {
        let mut run = tx.prepare(
            "INSERT INTO runs (id, project, name, configuration, source, submitted_ms) VALUES (?1, 'main', ?2, ?3, NULL, ?4)",
        )?;
        let mut job = tx.prepare(
            "INSERT INTO jobs (id, run_id, job_num, state, submitted_ms, started_ms, finished_ms, exit_code, termination_reason)
             VALUES (?1, ?2, 0, 'done', ?3, ?3, ?3, 0, 'done')",
        )?;
        for i in from..total {
            let ms = 1_700_000_000_000i64 + i as i64 * 1000;
            run.execute(rusqlite::params![format!("run-{i}"), format!("bench-{i}"), configuration, ms])?;
            job.execute(rusqlite::params![format!("job-{i}"), format!("run-{i}"), ms])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Enrolls `n` nodes (offline: no agent runs), each with a host inventory of 8 H100s.
fn enroll(db: &Path, n: usize) -> anyhow::Result<()> {
    let mut conn = rusqlite::Connection::open(db)?;
    let tx = conn.transaction()?;
    {
        let mut node = tx.prepare(
            "INSERT INTO nodes (id, name, cert_fingerprint, enrolled_ms, inventory) VALUES (?1, ?2, ?1, 1700000000000, ?3)",
        )?;
        for i in 0..n {
            let inventory = serde_json::to_string(&corral_tests::hollow::h100_host(i))?;
            node.execute(rusqlite::params![format!("{i:064x}"), format!("node-{i:05}"), inventory])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// p50 and p99 of `REQUESTS` GETs of `path`, after a warm-up, and the bytes of one answer.
async fn measure(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<(f64, f64, usize)> {
    let get = async || -> anyhow::Result<usize> {
        let resp = http.get(url).bearer_auth(token).send().await?;
        anyhow::ensure!(resp.status().is_success(), "{url}: {}", resp.status());
        Ok(resp.bytes().await?.len())
    };
    for _ in 0..20 {
        get().await?;
    }
    let mut times = Vec::with_capacity(REQUESTS);
    let mut bytes = 0;
    for _ in 0..REQUESTS {
        let start = Instant::now();
        bytes = get().await?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99), bytes))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("coord");
    // The first start makes the database and project main.
    drop(CoordinatorProc::start(&data, &[]).await?);
    let token = std::fs::read_to_string(data.join("admin-token"))?.trim().to_owned();
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    let mut stored = 0;
    for total in [1_000, 10_000, 100_000] {
        fill(&data.join("corral.db"), stored, total).context("filling the database")?;
        stored = total;
        let coordinator = CoordinatorProc::start(&data, &[]).await?;
        let base = coordinator.client.project_api(&["runs"])?;
        let url = |q: &str| format!("{}{base}?{q}", coordinator.client.url());
        // The last page's first run is as far back as paging goes.
        let first: Vec<api::Run> = coordinator.client.get(&format!("{base}?all=true&limit=1")).await?;
        anyhow::ensure!(first.first().map(|r| r.name.as_str()) == Some(&*format!("bench-{}", total - 1)));
        let page = measure(&http, &url("all=true&limit=100"), &token).await?;
        let deep = measure(&http, &url(&format!("all=true&limit=100&after=run-{}", total / 2)), &token).await?;
        let active = measure(&http, &url("limit=100"), &token).await?;
        rows.push((total, page, deep, active));
        drop(coordinator);
    }
    enroll(&data.join("corral.db"), 10_000).context("enrolling nodes")?;
    let coordinator = CoordinatorProc::start(&data, &[]).await?;
    let nodes_url = |q: &str| format!("{}/api/nodes{q}", coordinator.client.url());
    let node_page = measure(&http, &nodes_url("?limit=100"), &token).await?;
    let node_all = measure(&http, &nodes_url(""), &token).await?;
    drop(coordinator);

    let base_p50 = rows[0].1.0;
    println!(
        "| runs stored | page of 100, newest (p50 / p99) | page of 100 from the middle (p50 / p99) | active runs only (p50 / p99) | bytes of a page | p50 vs 1,000 stored |"
    );
    println!("|---|---|---|---|---|---|");
    for (total, page, deep, active) in &rows {
        println!(
            "| {total} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {} | {:.2}× |",
            page.0,
            page.1,
            deep.0,
            deep.1,
            active.0,
            active.1,
            page.2,
            page.0 / base_p50
        );
    }
    println!();
    println!("| 10,000 nodes | p50 / p99 | bytes |");
    println!("|---|---|---|");
    println!("| a page of 100 | {:.2} / {:.2} ms | {} |", node_page.0, node_page.1, node_page.2);
    println!(
        "| all in one answer | {:.2} / {:.2} ms | {} ({:.1}× the page's p50) |",
        node_all.0,
        node_all.1,
        node_all.2,
        node_all.0 / node_page.0
    );
    let last = rows.last().context("no rows")?;
    println!("goal at 100,000 runs: p50 ≤ 1 ms ({:.2} ms), p99 ≤ 5 ms ({:.2} ms)", last.1.0, last.1.1);
    Ok(())
}
