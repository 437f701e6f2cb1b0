//! Held connections at scale: the release `corral-coordinator` as a child process, N hollow nodes
//! (simulated agents, `corral_tests::hollow`, 8× H100 each) in this process on one shared QUIC
//! endpoint. Measures the time to enroll and connect them all, the coordinator's memory and CPU, and
//! the heartbeat round trip the nodes see at the coordinator's default heartbeat interval (5 s).
//! Goals: coordinator RSS ≤ 1 GiB and heartbeat p99 ≤ 100 ms with 10,000 nodes.
//!
//! ```text
//! cargo build --release --bin corral-coordinator
//! CORRAL_BENCH_NODES=1000 cargo bench -p corral-tests --bench scale
//! ```
//!
//! Then placement throughput: every node is cordoned, `CORRAL_BENCH_JOBS` single-GPU runs are
//! submitted through the HTTP API (they queue), and all nodes are uncordoned in one request; the
//! time from that request until the hollow nodes have received every `StartJob` that fits (8 per
//! node) is the placement time: queue walk, bin-packing, one transaction for all assignments, the
//! commands over QUIC. Goal: ≥ 20,000 placements/s.
//!
//! Then metrics: every node reports its 8 GPUs every `CORRAL_BENCH_METRICS_SECS` (10; 0 skips it),
//! and the coordinator's CPU over a window as long as the hold's is set beside the hold's, with its
//! memory before and after and the time of a `/metrics` scrape. Goals: ≤ 10 % of one core and
//! ≤ 200 MiB more, a scrape ≤ 250 ms at 10,000 nodes.
//!
//! Knobs (environment): `CORRAL_BENCH_NODES` (10000), `CORRAL_BENCH_JOBS` (10 per node; 0 skips
//! the placement phase), `CORRAL_BENCH_HOLD_SECS` (20: the window
//! heartbeats are measured in), `CORRAL_BENCH_CONCURRENCY` (64 enrollments or handshakes at once),
//! `CORRAL_BENCH_KILL` (10 nodes killed at the end, to time how long the coordinator takes to call
//! them offline; 0 skips it), `CORRAL_BENCH_LATE` (100 more nodes enrolled once all are connected,
//! to time enrollment against a full node table; 0 skips it), `CORRAL_BENCH_LOG` (the
//! coordinator's log filter, `warn`; its log is kept in the temp dir when it is set or anything
//! went wrong),
//! `CORRAL_BIN_DIR` (where the release binaries are).
//!
//! Both processes share this machine's cores, so the round trips include the hollow side's own
//! scheduling delay: they are an upper bound on what the coordinator adds.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use corral_cli::client::Client;
use corral_proto::api;
use corral_tests::hollow::{HollowFleet, HollowOptions, RttSummary, h100_host};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("CORRAL_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release"));
    dir.join(name)
}

fn env_num(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).context("bad status line")?.parse()?)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// CPU time (user + system) a process has used.
fn cpu_time(pid: u32, ticks_per_sec: u64) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("bad stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (f[11].parse()?, f[12].parse()?);
    Ok(Duration::from_millis((utime + stime) * 1000 / ticks_per_sec.max(1)))
}

fn ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The time of day (UTC), to line phases up with the coordinator's log.
fn utc() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{:02}:{:02}:{:02}Z", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// What the metrics phase measured.
struct MetricsPhase {
    cpu_pct: f64,
    reports: u64,
    rss_before: u64,
    rss_after: u64,
    scrape: Duration,
    bytes: usize,
    gpu_series: usize,
    rtts: Option<RttSummary>,
}

/// Turns every node's reports on, waits until all report, then measures the coordinator's CPU over
/// `window`, its memory, heartbeats meanwhile and three `/metrics` scrapes; turns them off.
async fn measure_metrics(
    fleet: &HollowFleet,
    pid: u32,
    tck: u64,
    window: Duration,
    every: Duration,
    http: u16,
    token: &str,
) -> anyhow::Result<MetricsPhase> {
    let rss_before = status_kib(pid, "VmRSS:")?;
    eprintln!("{} every node reports metrics every {} s…", utc(), every.as_secs());
    fleet.report_metrics(Some(every));
    // Nodes start within a heartbeat (5 s), each at its own offset in the interval.
    tokio::time::sleep(every + Duration::from_secs(6)).await;
    let _ = fleet.take_heartbeat_rtts();
    let (cpu_before, sent_before) = (cpu_time(pid, tck)?, fleet.metrics_sent());
    tokio::time::sleep(window).await;
    let cpu = cpu_time(pid, tck)?.saturating_sub(cpu_before);
    let reports = fleet.metrics_sent() - sent_before;
    let rtts = RttSummary::of(fleet.take_heartbeat_rtts());
    let rss_after = status_kib(pid, "VmRSS:")?;
    let http_client = reqwest::Client::new();
    let mut took = Vec::new();
    let (mut bytes, mut gpu_series) = (0, 0);
    for _ in 0..3 {
        let t = Instant::now();
        let text = http_client
            .get(format!("http://127.0.0.1:{http}/metrics"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        took.push(t.elapsed());
        bytes = text.len();
        gpu_series = text.lines().filter(|l| l.starts_with("DCGM_FI_DEV_GPU_UTIL{")).count();
    }
    took.sort();
    fleet.report_metrics(None);
    Ok(MetricsPhase {
        cpu_pct: cpu.as_secs_f64() * 100.0 / window.as_secs_f64(),
        reports,
        rss_before,
        rss_after,
        scrape: took[1],
        bytes,
        gpu_series,
        rtts,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nodes = env_num("CORRAL_BENCH_NODES", 10_000)? as usize;
    let hold = Duration::from_secs(env_num("CORRAL_BENCH_HOLD_SECS", 20)?);
    let concurrency = env_num("CORRAL_BENCH_CONCURRENCY", 64)? as usize;
    let kills = (env_num("CORRAL_BENCH_KILL", 10)? as usize).min(nodes);
    let late = env_num("CORRAL_BENCH_LATE", 100)? as usize;
    let jobs = env_num("CORRAL_BENCH_JOBS", nodes as u64 * 10)? as usize;
    let log_level = std::env::var("CORRAL_BENCH_LOG").unwrap_or_else(|_| "warn".to_owned());
    let tck = ticks_per_sec();

    let dir = tempfile::tempdir()?;
    let (http, quic) = (free_port()?, free_port()?);
    let log_path = dir.path().join("coordinator.log");
    let log = std::fs::File::create(&log_path)?;
    let coordinator = Proc(
        Command::new(bin("corral-coordinator"))
            .arg("--data-dir")
            .arg(dir.path().join("coord"))
            .args(["--http-listen", &format!("127.0.0.1:{http}"), "--quic-listen", &format!("127.0.0.1:{quic}")])
            .arg("--no-tls")
            .env("CORRAL_LOG", &log_level)
            // The log goes to stdout.
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("build it first: cargo build --release --bin corral-coordinator")?,
    );
    let pid = coordinator.0.id();
    let (token_file, admin_file) = (dir.path().join("coord/join-token"), dir.path().join("coord/admin-token"));
    let ready = Instant::now();
    while !(token_file.exists() && admin_file.exists()) {
        if ready.elapsed() > Duration::from_secs(10) {
            bail!("the coordinator did not start; see {}", log_path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let token: corral_proto::token::JoinToken = std::fs::read_to_string(&token_file)?.trim().parse()?;
    let client = Client::new(&format!("http://127.0.0.1:{http}"), std::fs::read_to_string(&admin_file)?.trim(), "main");
    let rss_idle = status_kib(pid, "VmRSS:")?;

    eprintln!("{} enrolling {nodes} hollow nodes, {concurrency} at a time…", utc());
    let started = Instant::now();
    let opts = HollowOptions { concurrency, ..HollowOptions::default() };
    let addr = format!("127.0.0.1:{quic}").parse()?;
    let fleet = HollowFleet::start(addr, &token, nodes, h100_host, opts).await?;
    let enrolled_in = fleet.enrolled_in();
    let rss_enrolled = status_kib(pid, "VmRSS:")?;
    eprintln!("{} enrolled {} in {:.1} s; connecting…", utc(), fleet.stats().enrolled, enrolled_in.as_secs_f64());

    // Connect: until all are up, or no progress for a minute (then measure what is there).
    let connecting = Instant::now();
    let (mut last, mut last_change) = (0, Instant::now());
    let mut last_report = Instant::now();
    let mut coordinator = coordinator;
    let connected_in = loop {
        let s = fleet.stats();
        if s.connected >= s.enrolled {
            break Some(connecting.elapsed());
        }
        if let Some(status) = coordinator.0.try_wait()? {
            bail!("the coordinator exited ({status}) with {} nodes connected; see {}", s.connected, log_path.display());
        }
        if s.connected != last {
            (last, last_change) = (s.connected, Instant::now());
        }
        if last_change.elapsed() > Duration::from_secs(60) {
            eprintln!("no progress for 60 s: {s:?}; first errors: {:#?}", fleet.errors());
            break None;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  {:>6.1} s: {} connected, coordinator RSS {:.0} MiB, {} errors",
                connecting.elapsed().as_secs_f64(),
                s.connected,
                mib(status_kib(pid, "VmRSS:")?),
                s.errors
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let total_in = started.elapsed();
    let rss_connected = status_kib(pid, "VmRSS:")?;

    // Hold: heartbeats at the default interval, measured over one window.
    eprintln!("{} holding {} connections for {} s…", utc(), fleet.stats().connected, hold.as_secs());
    let before = fleet.stats();
    let _ = fleet.take_heartbeat_rtts();
    let cpu_before = cpu_time(pid, tck)?;
    let mut rtts = Vec::new();
    let held = Instant::now();
    while held.elapsed() < hold {
        tokio::time::sleep((hold - held.elapsed()).min(Duration::from_secs(5))).await;
        let window = fleet.take_heartbeat_rtts();
        if let Some(r) = RttSummary::of(window.clone()) {
            eprintln!(
                "  {:>5.1} s held: rtt p50 {} p99 {} max {} ({} samples)",
                held.elapsed().as_secs_f64(),
                ms(r.p50),
                ms(r.p99),
                ms(r.max),
                r.samples
            );
        }
        rtts.extend(window);
    }
    let cpu_used = cpu_time(pid, tck)?.saturating_sub(cpu_before);
    let rtts = RttSummary::of(rtts);
    let after = fleet.stats();
    let (rss_held, rss_peak) = (status_kib(pid, "VmRSS:")?, status_kib(pid, "VmHWM:")?);
    let bench_rss = status_kib(std::process::id(), "VmRSS:")?;

    // Metrics: every node reports its 8 GPUs every `CORRAL_BENCH_METRICS_SECS`, measured over a
    // window as long as the hold's, beside it.
    let metrics_every = Duration::from_secs(env_num("CORRAL_BENCH_METRICS_SECS", 10)?);
    let metrics = if metrics_every.is_zero() {
        None
    } else {
        Some(measure_metrics(&fleet, pid, tck, hold, metrics_every, http, client.token()).await?)
    };

    let listed = Instant::now();
    let listing: Vec<api::Node> = client.get("/api/nodes").await?;
    let list_took = listed.elapsed();
    let ready = listing.iter().filter(|n| n.status == api::NodeStatus::Ready).count();

    // Late joiners: enrollment with a full node table (every row carrying its inventory).
    let mut joined = None;
    if late > 0 {
        eprintln!("{} {late} late joiners…", utc());
        let opts = HollowOptions { concurrency, name_prefix: "late".to_owned(), ..HollowOptions::default() };
        let _ = fleet.take_heartbeat_rtts();
        let lost_before = fleet.stats().sessions_lost;
        let joining = Instant::now();
        let joiners = HollowFleet::start(addr, &token, late, h100_host, opts).await?;
        let enrolled = joiners.stats().enrolled;
        let connected = joiners.wait_connected(enrolled, Duration::from_secs(120)).await;
        // At least one heartbeat interval (5 s by default), so that every node is sampled.
        tokio::time::sleep(Duration::from_secs(6).saturating_sub(joining.elapsed())).await;
        let meanwhile = RttSummary::of(fleet.take_heartbeat_rtts());
        let lost = fleet.stats().sessions_lost - lost_before;
        joined = Some((joiners.enrolled_in(), enrolled, connected, meanwhile, lost));
        for e in joiners.errors().iter().take(5) {
            eprintln!("late joiner error: {e}");
        }
        joiners.shutdown().await;
    }

    // Kill a few: how long until the coordinator calls them offline.
    let mut detect = None;
    if kills > 0 {
        eprintln!("{} killing {kills} nodes…", utc());
        let names: Vec<String> = (0..kills).filter_map(|i| fleet.node(i).map(|(n, _)| n.to_owned())).collect();
        let killed = Instant::now();
        for i in 0..kills {
            fleet.kill(i);
        }
        while killed.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let listing: Vec<api::Node> = client.get("/api/nodes").await?;
            let offline =
                listing.iter().filter(|n| names.contains(&n.name) && n.status != api::NodeStatus::Ready).count();
            if offline == kills {
                detect = Some(killed.elapsed());
                break;
            }
        }
    }

    let placement = if jobs > 0 { Some(place_queued(&client, &fleet, jobs, concurrency).await?) } else { None };

    let end = fleet.stats();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();

    let goal = |ok: bool| if ok { "✅" } else { "❌" };
    let s = after;
    println!("| measure ({nodes} hollow nodes, 8× H100 each) | value | goal |");
    println!("|---|---|---|");
    println!("| nodes connected (hollow side / coordinator `Ready`) | {} / {ready} of {nodes} | all |", s.connected);
    println!(
        "| enroll all, {concurrency} at a time | {:.1} s ({:.0}/s) | — |",
        enrolled_in.as_secs_f64(),
        s.enrolled as f64 / enrolled_in.as_secs_f64()
    );
    match connected_in {
        Some(c) => println!(
            "| then connect all (mTLS + Hello/Welcome + reports); enroll + connect | {:.1} s; {:.1} s | — |",
            c.as_secs_f64(),
            total_in.as_secs_f64()
        ),
        None => println!("| then connect all | stalled at {} | — |", before.connected),
    }
    println!(
        "| coordinator RSS: idle → enrolled → connected → after {} s held (peak) | {:.0} → {:.0} → {:.0} → {:.0} MiB ({:.0}) | {} ≤ 1 GiB |",
        hold.as_secs(),
        mib(rss_idle),
        mib(rss_enrolled),
        mib(rss_connected),
        mib(rss_held),
        mib(rss_peak),
        goal(rss_peak <= 1024 * 1024)
    );
    println!(
        "| coordinator CPU while holding | {:.0} % of one core | — |",
        cpu_used.as_secs_f64() * 100.0 / hold.as_secs_f64()
    );
    match rtts {
        Some(r) => println!(
            "| heartbeat RTT p50 / p99 / max ({} samples, {} s) | {} / {} / {} | {} p99 ≤ 100 ms |",
            r.samples,
            hold.as_secs(),
            ms(r.p50),
            ms(r.p99),
            ms(r.max),
            goal(r.p99 <= Duration::from_millis(100))
        ),
        None => println!("| heartbeat RTT | no samples | ❌ p99 ≤ 100 ms |"),
    }
    println!(
        "| heartbeats sent / acked while holding; sessions lost (whole run) | {} / {}; {} | — |",
        s.heartbeats_sent - before.heartbeats_sent,
        s.heartbeats_acked - before.heartbeats_acked,
        s.sessions_lost
    );
    if let Some(m) = &metrics {
        let hold_pct = cpu_used.as_secs_f64() * 100.0 / hold.as_secs_f64();
        let more = m.cpu_pct - hold_pct;
        println!(
            "| coordinator CPU: holding / with every node reporting 8 GPUs every {} s ({} reports in {} s) | {:.1} % / {:.1} % of one core: {:+.1} points | {} ≤ +10 |",
            metrics_every.as_secs(),
            m.reports,
            hold.as_secs(),
            hold_pct,
            m.cpu_pct,
            more,
            goal(more <= 10.0)
        );
        let grew = mib(m.rss_after.saturating_sub(m.rss_before));
        println!(
            "| coordinator RSS before / after the reports | {:.0} / {:.0} MiB: +{grew:.0} MiB | {} ≤ +200 MiB |",
            mib(m.rss_before),
            mib(m.rss_after),
            goal(grew <= 200.0)
        );
        println!(
            "| `/metrics` scrape ({} GPU series, {:.1} MB), median of 3 | {} | {} ≤ 250 ms |",
            m.gpu_series,
            m.bytes as f64 / 1e6,
            ms(m.scrape),
            goal(m.scrape <= Duration::from_millis(250))
        );
        if let Some(r) = &m.rtts {
            println!(
                "| heartbeat RTT p50 / p99 while reporting | {} / {} | {} p99 ≤ 100 ms |",
                ms(r.p50),
                ms(r.p99),
                goal(r.p99 <= Duration::from_millis(100))
            );
        }
    }
    println!("| `GET /api/nodes` ({} nodes) | {} | — |", listing.len(), ms(list_took));
    if let Some((took, enrolled, connected, meanwhile, lost)) = &joined {
        println!(
            "| {late} more nodes enroll with {} connected; then connect | {enrolled} in {:.1} s ({:.0}/s); {} | — |",
            s.connected,
            took.as_secs_f64(),
            *enrolled as f64 / took.as_secs_f64(),
            match connected {
                Ok(d) => format!("{:.1} s", d.as_secs_f64()),
                Err(e) => format!("failed: {e:#}"),
            }
        );
        if let Some(r) = meanwhile {
            println!(
                "| meanwhile (≥ 6 s), the {} connected nodes: heartbeat RTT p50 / p99 / max; sessions lost | {} / {} / {}; {lost} | {} p99 ≤ 100 ms; 0 |",
                s.connected,
                ms(r.p50),
                ms(r.p99),
                ms(r.max),
                goal(r.p99 <= Duration::from_millis(100) && *lost == 0)
            );
        } else {
            println!("| meanwhile, the connected nodes: heartbeat RTT | no samples; {lost} sessions lost | ❌ |");
        }
    }
    if kills > 0 {
        println!(
            "| {kills} nodes killed → all `offline` at the coordinator | {} | — |",
            detect.map_or_else(|| "not within 120 s".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
        );
    }
    if let Some(p) = &placement {
        println!(
            "| {jobs} single-GPU runs submitted over HTTP while all nodes are cordoned, {concurrency} at a time | {:.1} s ({:.0}/s) | — |",
            p.submitted_in.as_secs_f64(),
            jobs as f64 / p.submitted_in.as_secs_f64()
        );
        let rate = p.placed as f64 / p.placed_in.as_secs_f64();
        println!(
            "| uncordon all → every fitting job's `StartJob` at its node ({} placed, {} wait) | {:.2} s: {:.0} placements/s | {} ≥ 20,000/s |",
            p.placed,
            jobs - p.placed,
            p.placed_in.as_secs_f64(),
            rate,
            goal(rate >= 20_000.0 && p.complete)
        );
        let at = |m: Option<Duration>| m.map_or("—".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
        println!(
            "| the same: 50 % / 90 % / 99 % of them placed after | {} / {} / {} | — |",
            at(p.milestones[0]),
            at(p.milestones[1]),
            at(p.milestones[2])
        );
        println!(
            "| coordinator RSS after placement (peak) | {:.0} MiB ({:.0}) | {} ≤ 1 GiB |",
            mib(status_kib(pid, "VmRSS:")?),
            mib(status_kib(pid, "VmHWM:")?),
            goal(status_kib(pid, "VmHWM:")? <= 1024 * 1024)
        );
    }
    println!("| bench process RSS (hollow nodes) | {:.0} MiB | — |", mib(bench_rss));
    println!(
        "| at the end: sessions lost; hollow-side errors; coordinator WARN/ERROR lines (kills warn by design) | {}; {}; {} | 0; 0; — |",
        end.sessions_lost,
        end.errors,
        warnings.len()
    );
    for e in fleet.errors().iter().take(5) {
        eprintln!("hollow error: {e}");
    }
    for w in warnings.iter().take(10) {
        eprintln!("coordinator: {w}");
    }
    if end.errors > 0 || !warnings.is_empty() || std::env::var_os("CORRAL_BENCH_LOG").is_some() {
        let keep = std::env::temp_dir().join(format!("corral-scale-{}.log", std::process::id()));
        if std::fs::copy(&log_path, &keep).is_ok() {
            eprintln!("coordinator log kept in {}", keep.display());
        }
    }
    fleet.shutdown().await;
    drop(coordinator);
    Ok(())
}

struct Placement {
    submitted_in: Duration,
    /// Jobs started on the hollow nodes when measuring ended.
    placed: usize,
    placed_in: Duration,
    /// Every job that fits was placed (rather than the wait timing out).
    complete: bool,
    /// When half, 90 % and 99 % of them had been: a slow tail (a stalled session, retransmissions)
    /// shows apart from a slow pace.
    milestones: [Option<Duration>; 3],
}

/// Cordons every node, queues `jobs` single-GPU runs, uncordons every node in one request and times
/// how long until every job that fits has reached its node.
async fn place_queued(
    client: &Client,
    fleet: &HollowFleet,
    jobs: usize,
    concurrency: usize,
) -> anyhow::Result<Placement> {
    use futures_util::{StreamExt, TryStreamExt};

    let cordon = |cordoned| api::CordonNodes { cordoned, all: true, ..Default::default() };
    let _: Vec<String> = client.post("/api/nodes/cordon", &cordon(true)).await?;
    let running_before = fleet.jobs_running();
    let fits = (fleet.stats().connected * 8).saturating_sub(running_before).min(jobs);

    eprintln!("{} submitting {jobs} runs, {concurrency} at a time…", utc());
    let text = "type: task\nimage: busybox\ncommands:\n  - sleep 600\nresources:\n  gpu: H100:1\n";
    let configuration = corral_proto::config::parse(text, "bench").map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = client.project_path("runs");
    let submitting = Instant::now();
    futures_util::stream::iter(0..jobs)
        .map(|i| {
            let submit =
                api::SubmitRun { configuration: configuration.clone(), source: None, name: Some(format!("q-{i:06}")) };
            let path = &path;
            async move { client.post::<_, api::Run>(path, &submit).await.map(|_| ()) }
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await?;
    let submitted_in = submitting.elapsed();

    eprintln!("{} uncordoning all; {fits} jobs fit…", utc());
    let placing = Instant::now();
    let _: Vec<String> = client.post("/api/nodes/cordon", &cordon(false)).await?;
    let mut complete = false;
    let mut milestones = [None; 3];
    while placing.elapsed() < Duration::from_secs(300) {
        let placed = fleet.jobs_running().saturating_sub(running_before);
        for (m, share) in milestones.iter_mut().zip([0.5, 0.9, 0.99]) {
            if m.is_none() && placed as f64 >= fits as f64 * share {
                *m = Some(placing.elapsed());
            }
        }
        if placed >= fits {
            complete = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let placed_in = placing.elapsed();
    let placed = fleet.jobs_running() - running_before;
    Ok(Placement { submitted_in, placed, placed_in, complete, milestones })
}
