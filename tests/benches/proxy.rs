//! Traffic into containers, measured side by side in one run against a direct connection to the
//! same container (its bridge address, from this host):
//! - proxy overhead: the same small page fetched through `/proxy/services/...` (auth on: token
//!   check, tunnel over the agent's QUIC connection, HTTP/1.1 to the replica) and directly;
//!   sequential requests for latency (p50/p99), then concurrent ones for throughput, the two paths
//!   alternating in rounds so that the machine's drift hits both alike. Goals: added
//!   p50 ≤ 0.5 ms, throughput ≥ 80 % of direct;
//! - tunnel bulk throughput: 1 GiB read from a container port through `corral attach`'s forwarder
//!   (local TCP → coordinator → QUIC → agent → container) and directly.
//!
//! ```text
//! cargo build --release --bin corral-coordinator --bin corral-agent
//! cargo bench -p corral-tests --bench proxy
//! ```
//! Knobs: `CORRAL_BENCH_REQUESTS` (2000 per path), `CORRAL_BENCH_CONCURRENCY` (16),
//! `CORRAL_BENCH_SECS` (5 per throughput window), `CORRAL_BENCH_BULK_MIB` (1024).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::AsyncReadExt;

use corral_cli::attach::Forwarder;
use corral_cli::client::Client;
use corral_proto::api;
use corral_proto::config::{PortMapping, parse};
use corral_proto::job::JobState;
use corral_tests::procs::{CoordinatorProc, remove_node_containers, wait_until};

fn env_num(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

async fn submit(client: &Client, text: &str) -> anyhow::Result<api::Run> {
    let configuration = parse(text, "bench").map_err(|e| anyhow::anyhow!("{e}"))?;
    let name = configuration.name().unwrap_or_default().to_owned();
    let _: api::Run =
        client.post(&client.project_path("runs"), &api::SubmitRun { configuration, source: None, name: None }).await?;
    let path = client.project_path(&format!("runs/{name}"));
    let mut run = None;
    wait_until(Duration::from_secs(60), async || {
        run = client.get::<api::Run>(&path).await.ok().filter(|r| r.jobs.iter().all(|j| j.state == JobState::Running));
        run.is_some()
    })
    .await
    .with_context(|| format!("run {name} did not start"))?;
    run.context("no run")
}

/// The container's address on the Docker bridge.
fn container_ip(job: &api::Job) -> anyhow::Result<String> {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"])
        .arg(format!("corral-{}", job.id))
        .output()?;
    let ip = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    anyhow::ensure!(!ip.is_empty(), "container of job {} has no address", job.id);
    Ok(ip)
}

struct Path {
    name: &'static str,
    url: String,
    token: Option<String>,
}

async fn get(http: &reqwest::Client, p: &Path) -> anyhow::Result<()> {
    let mut req = http.get(&p.url);
    if let Some(t) = &p.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    anyhow::ensure!(resp.status() == 200, "{}: {}", p.name, resp.status());
    resp.bytes().await?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// Requests done and time taken with `concurrency` loops for `window`.
async fn throughput(
    http: &reqwest::Client,
    p: &Arc<Path>,
    concurrency: usize,
    window: Duration,
) -> anyhow::Result<(u64, Duration)> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (http, p, done) = (http.clone(), p.clone(), done.clone());
        loops.spawn(async move {
            while start.elapsed() < window {
                get(&http, &p).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = loops.join_next().await {
        r??;
    }
    Ok((done.load(Ordering::Relaxed), start.elapsed()))
}

async fn read_all(addr: SocketAddr) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    Ok((total, start.elapsed()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests = env_num("CORRAL_BENCH_REQUESTS", 2000)? as usize;
    let concurrency = env_num("CORRAL_BENCH_CONCURRENCY", 16)? as usize;
    let window = Duration::from_secs(env_num("CORRAL_BENCH_SECS", 5)?);
    let bulk_mib = env_num("CORRAL_BENCH_BULK_MIB", 1024)?;

    let dir = tempfile::tempdir()?;
    let coord = CoordinatorProc::start(&dir.path().join("coord"), &[]).await?;
    let state = dir.path().join("agent");
    let _agent = coord.agent(&state, "bench-node")?;
    coord.nodes_ready(1, Duration::from_secs(30)).await?;
    let result = measure(&coord, &dir.path().join("coord"), requests, concurrency, window, bulk_mib).await;
    remove_node_containers(&state);
    result
}

async fn measure(
    coord: &CoordinatorProc,
    data: &std::path::Path,
    requests: usize,
    concurrency: usize,
    window: Duration,
    bulk_mib: u64,
) -> anyhow::Result<()> {
    let client = &coord.client;
    let page = "x".repeat(1000);
    let svc = submit(
        client,
        &format!(
            "type: service\nname: web\nimage: corral-test/busybox:latest\nport: 8000\ncommands:\n  - mkdir -p /www\n  - echo {page} > /www/index.html\n  - httpd -f -p 8000 -h /www\n"
        ),
    )
    .await?;
    let ip = container_ip(&svc.jobs[0])?;
    let token = std::fs::read_to_string(data.join("admin-token"))?.trim().to_owned();
    let direct = Arc::new(Path { name: "direct", url: format!("http://{ip}:8000/index.html"), token: None });
    let proxied = Arc::new(Path {
        name: "proxy",
        url: format!("{}/proxy/services/main/web/index.html", client.url),
        token: Some(token),
    });
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    for p in [&direct, &proxied] {
        wait_until(Duration::from_secs(30), async || get(&http, p).await.is_ok()).await.with_context(|| p.name)?;
    }

    // Latency: sequential requests, the two paths alternating in rounds so drift hits both alike.
    let mut lat: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let rounds = 20;
    for _ in 0..rounds {
        for (i, p) in [&direct, &proxied].into_iter().enumerate() {
            for _ in 0..requests / rounds {
                let t = Instant::now();
                get(&http, p).await?;
                lat[i].push(t.elapsed());
            }
        }
    }
    for l in &mut lat {
        l.sort_unstable();
    }
    let (d50, d99) = (percentile(&lat[0], 0.5), percentile(&lat[0], 0.99));
    let (p50, p99) = (percentile(&lat[1], 0.5), percentile(&lat[1], 0.99));

    // Throughput: the two paths alternate in ten slices of the window each, for the same reason.
    let mut totals = [(0u64, Duration::ZERO); 2];
    for _ in 0..10 {
        for (i, p) in [&direct, &proxied].into_iter().enumerate() {
            let (n, t) = throughput(&http, p, concurrency, window / 10).await?;
            totals[i].0 += n;
            totals[i].1 += t;
        }
    }
    let rps = |(n, t): (u64, Duration)| n as f64 / t.as_secs_f64();
    let (rps_direct, rps_proxy) = (rps(totals[0]), rps(totals[1]));

    // Bulk: a container that writes `bulk_mib` MiB of zeros to whoever connects to port 9000.
    let bulk = submit(
        client,
        &format!(
            "type: task\nname: bulk\nimage: corral-test/busybox:latest\nports: [9000]\ncommands:\n  - printf '#!/bin/sh\\nexec head -c {} /dev/zero\\n' > /bulk.sh\n  - chmod +x /bulk.sh\n  - nc -ll -p 9000 -e /bulk.sh\n",
            bulk_mib << 20
        ),
    )
    .await?;
    let bulk_ip: std::net::IpAddr = container_ip(&bulk.jobs[0])?.parse()?;
    let fwd = Forwarder::start(client, "bulk", 0, &[PortMapping { local: None, container: 9000 }]).await?;
    let forwarded = fwd.ports[0].0;
    let want = bulk_mib << 20;
    wait_until(Duration::from_secs(30), async || {
        tokio::net::TcpStream::connect(SocketAddr::new(bulk_ip, 9000)).await.is_ok()
    })
    .await?;
    let (got_direct, t_direct) = read_all(SocketAddr::new(bulk_ip, 9000)).await?;
    let (got_tunnel, t_tunnel) = read_all(forwarded).await?;
    anyhow::ensure!(got_direct == want && got_tunnel == want, "short reads: {got_direct} / {got_tunnel} of {want}");
    let mibps = |d: Duration| bulk_mib as f64 / d.as_secs_f64();

    let goal = |ok: bool| if ok { "✅" } else { "❌" };
    println!("| measure | through Corral | direct to the container | ratio / goal |");
    println!("|---|---|---|---|");
    println!(
        "| 1 KB page, sequential ({} requests each): p50 / p99 | {} / {} | {} / {} | +{} at p50 {} ≤ +0.5 ms |",
        requests,
        ms(p50),
        ms(p99),
        ms(d50),
        ms(d99),
        ms(p50.saturating_sub(d50)),
        goal(p50.saturating_sub(d50) <= Duration::from_micros(500))
    );
    println!(
        "| 1 KB page, {concurrency} concurrent, {} s | {rps_proxy:.0} req/s | {rps_direct:.0} req/s | {:.0} % {} ≥ 80 % |",
        window.as_secs(),
        rps_proxy * 100.0 / rps_direct,
        goal(rps_proxy >= 0.8 * rps_direct)
    );
    println!(
        "| {bulk_mib} MiB from a container port (`corral attach`) | {:.0} MiB/s ({:.1} s) | {:.0} MiB/s ({:.1} s) | {:.0} % |",
        mibps(t_tunnel),
        t_tunnel.as_secs_f64(),
        mibps(t_direct),
        t_direct.as_secs_f64(),
        mibps(t_tunnel) * 100.0 / mibps(t_direct)
    );
    drop(fwd);
    for run in ["web", "bulk"] {
        let _: api::Run =
            client.post(&client.project_path(&format!("runs/{run}/stop")), &api::StopRun { abort: true }).await?;
    }
    Ok(())
}
