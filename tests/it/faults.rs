//! The fault suite: each case breaks something under load — a `kill -9` of the coordinator, a full
//! disk, output larger than Docker keeps — and prints what it checked and the numbers
//! (docs/reliability.md keeps them). The daemons are real processes here, so a kill is a real one.
//! `CORRAL_FAULT_RUNS` sets how many runs the hollow nodes hold through the coordinator's crash
//! (default 1,000); `CORRAL_FAULT_OUTPUT_MB` the size of the big-output case (default 200).

mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use corral_proto::api;
use corral_proto::job::JobState;
use corral_tests::hollow::{HollowFleet, HollowOptions, h100_host};

use crate::harness::{IMAGE, ensure_image, wait_for};

use cluster::*;

/// `kill -9` of the coordinator with runs in flight: hollow nodes hold `CORRAL_FAULT_RUNS` runs, a
/// real agent runs real containers, some of which end (one with an error) while the coordinator
/// is down. After the restart nothing may be lost: no container killed, no run in a wrong state,
/// every log whole, the real exit codes recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_kill_9_under_load_loses_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    if std::env::var_os("CORRAL_FAULT_KEEP").is_some() {
        println!("faults: keeping {}", dir.path().display());
    }
    let (mut coord, client, agent) = one_agent(dir.path()).await?;

    let hollow_runs = env_usize("CORRAL_FAULT_RUNS", 1000);
    let token: corral_proto::token::JoinToken = coord.join_token()?.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let quic = coord.quic.parse()?;
    let opts = HollowOptions { run_time: None, concurrency: 64, name_prefix: "hollow".into(), fleet: None };
    let fleet = HollowFleet::start(quic, &token, hollow_runs.div_ceil(8), h100_host, opts).await?;
    fleet.wait_connected(hollow_runs.div_ceil(8), Duration::from_secs(60)).await?;

    // Real jobs: `long-*` outlive the outage; `short-*` end during it, each after printing 1,000
    // numbered lines; `bad` ends during it with exit code 3.
    let (long, short) = (4usize, 4usize);
    let end_at = now_unix() + 25;
    let wait_until_end = shell_wait_until(end_at);
    let real = |name: &str, tail: &str| real(name, &format!("start {name}"), tail);
    for i in 0..long {
        submit(&client, &real(&format!("long-{i}"), "sleep 600"), "long").await?;
    }
    for i in 0..short {
        let tail = format!("{wait_until_end}; seq 1 1000; echo end short-{i}");
        submit(&client, &real(&format!("short-{i}"), &tail), "short").await?;
    }
    submit(&client, &real("bad", &format!("{wait_until_end}; echo failing; exit 3")), "bad").await?;
    let hollow = "type: task\nname: h\nimage: busybox\ncommands:\n  - sleep 600\nresources:\n  gpu: H100:1\n";
    let started = Instant::now();
    for chunk in (0..hollow_runs).collect::<Vec<_>>().chunks(50) {
        let submits = chunk.iter().map(|i| {
            let text = hollow.replace("name: h", &format!("name: h{i:05}"));
            let client = client.clone();
            async move { submit(&client, &text, "hollow").await }
        });
        for r in futures_util::future::join_all(submits).await {
            r?;
        }
    }
    let total = hollow_runs + long + short + 1;
    wait_for(&format!("{total} runs running"), Duration::from_secs(120), || async {
        let runs = all_runs(&client).await?;
        let running = runs.iter().filter(|r| r.state == JobState::Running).count();
        Ok((running == total).then_some(()))
    })
    .await?;
    println!("faults: {total} runs running {:.1}s after the first submission", started.elapsed().as_secs_f64());
    anyhow::ensure!(
        now_unix() + 2 < end_at,
        "submitting took too long for the outage to come before the short jobs end"
    );

    // What the real containers are before the crash, to tell a restarted or killed one after.
    let before = all_runs(&client).await?;
    let containers: Vec<(String, String, String)> = before
        .iter()
        .filter(|r| r.name.starts_with("long-"))
        .map(|r| {
            let c = format!("corral-{}", r.jobs[0].id);
            let started = docker_state(&c).map(|s| s.1).unwrap_or_default();
            (r.name.clone(), c, started)
        })
        .collect();

    // The crash: 2 s before the short jobs end, back 3 s after.
    sleep_until_unix(end_at - 2).await;
    coord.kill9();
    let killed_at = Instant::now();
    sleep_until_unix(end_at + 3).await;
    let down = killed_at.elapsed();
    coord.restart().await?;
    let restarted = Instant::now();

    // Every node back: the real agent, then the hollow ones.
    let ready = async |name: Option<&str>| -> anyhow::Result<usize> {
        let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
        Ok(nodes.iter().filter(|n| n.status == api::NodeStatus::Ready && name.is_none_or(|x| n.name == x)).count())
    };
    wait_for("the real agent connected again", Duration::from_secs(60), || async {
        Ok((ready(Some("real")).await? == 1).then_some(()))
    })
    .await?;
    let agent_back = restarted.elapsed();
    wait_for("every node connected again", Duration::from_secs(60), || async {
        Ok((ready(None).await? == 1 + hollow_runs.div_ceil(8)).then_some(()))
    })
    .await?;
    let reconnected = restarted.elapsed();

    // Reconciled: the short jobs done with their whole output, `bad` failed with its own code,
    // everything else still running.
    let expected_log = |i: usize| {
        format!("start short-{i}\n{}end short-{i}\n", (1..=1000).map(|n| format!("{n}\n")).collect::<String>())
    };
    wait_for("every run reconciled", Duration::from_secs(60), || async {
        let runs = all_runs(&client).await?;
        let settled = runs.iter().all(|r| match r.name.as_str() {
            n if n.starts_with("short-") => r.state == JobState::Done,
            "bad" => r.state == JobState::Failed,
            _ => r.state == JobState::Running,
        });
        Ok(settled.then_some(()))
    })
    .await
    .with_context(|| format!("after the restart: {:#?}", "see the runs"))?;
    let reconciled = restarted.elapsed();

    let runs = all_runs(&client).await?;
    let mut wrong = Vec::new();
    for r in &runs {
        let ok = match r.name.as_str() {
            n if n.starts_with("short-") => r.state == JobState::Done && r.jobs[0].exit_code == Some(0),
            "bad" => r.state == JobState::Failed && r.jobs[0].exit_code == Some(3),
            _ => r.state == JobState::Running && r.jobs.len() == 1 && r.jobs[0].submission == 0,
        };
        if !ok {
            wrong.push(format!("{}: {} {:?} {:?}", r.name, r.state, r.jobs[0].exit_code, r.jobs[0].termination_reason));
        }
    }
    let mut lost_bytes = 0i64;
    for i in 0..short {
        let want = expected_log(i);
        let got = wait_for(&format!("the whole log of short-{i}"), Duration::from_secs(30), || async {
            let text = crate::harness::logs(&client, &format!("short-{i}")).await?;
            Ok((text.len() >= want.len()).then_some(text))
        })
        .await
        .unwrap_or_default();
        lost_bytes += want.len() as i64 - got.len() as i64;
        assert_eq!(got, want, "the log of short-{i}, which ended while the coordinator was down");
    }
    let bad_log = crate::harness::logs(&client, "bad").await?;
    assert_eq!(bad_log, "start bad\nfailing\n");
    let mut killed = Vec::new();
    for (name, container, started) in &containers {
        match docker_state(container) {
            Some((true, now)) if &now == started => {}
            other => killed.push(format!("{name}: {other:?}")),
        }
    }
    let hollow_running = fleet.jobs_running();
    println!(
        "faults: coordinator kill -9 with {total} runs in flight ({hollow_runs} on {} hollow nodes, {} real \
         containers): down {:.1}s; the real agent back {:.1}s and every node {:.1}s after the restart, all \
         reconciled after {:.1}s; runs in a wrong state {}, containers killed {}, log bytes lost {lost_bytes}, hollow jobs running {hollow_running}",
        hollow_runs.div_ceil(8),
        long + short + 1,
        down.as_secs_f64(),
        agent_back.as_secs_f64(),
        reconnected.as_secs_f64(),
        reconciled.as_secs_f64(),
        wrong.len(),
        killed.len(),
    );
    assert!(wrong.is_empty(), "runs in a wrong state after the restart: {wrong:#?}");
    assert!(killed.is_empty(), "containers killed or restarted by the coordinator's crash: {killed:#?}");
    assert_eq!(hollow_running, hollow_runs, "the hollow nodes' jobs all still run");

    fleet.shutdown().await;
    drop(agent);
    if std::env::var_os("CORRAL_FAULT_KEEP").is_some() {
        let _ = dir.keep();
    }
    Ok(())
}

/// The numbered lines `seq 1 n` prints.
fn seq_output(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.extend_from_slice(i.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// The smallest `n` for which `seq 1 n` prints at least `bytes`.
fn seq_lines_for(bytes: u64) -> u64 {
    let (mut n, mut total) = (0u64, 0u64);
    while total < bytes {
        n += 1;
        total += n.to_string().len() as u64 + 1;
    }
    n
}

/// Output larger than the host's Docker keeps (json-file rotated at 10 MB × 3 on these machines),
/// a 10 MB line without a newline, and the last bytes of a container: `corral logs` returns what
/// the container wrote, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_output_arrives_whole_whatever_docker_keeps() -> anyhow::Result<()> {
    let crate::harness::OneNode { dir, coord: _coord, agent: _agent, client } =
        crate::harness::OneNode::start().await?;
    let mb = env_usize("CORRAL_FAULT_OUTPUT_MB", 200) as u64;
    let lines = seq_lines_for(mb * 1_000_000);
    let line = 10_000_000usize;
    let script = format!("head -c {line} /dev/zero | tr '\\000' x; seq 1 {lines}; printf 'no newline at the end'");
    let mut want = vec![b'x'; line];
    want.extend_from_slice(&seq_output(lines));
    want.extend_from_slice(b"no newline at the end");

    // Raw Docker, side by side: the same command, its output read by an attached client.
    let raw = Instant::now();
    let status =
        Command::new("docker").args(["run", "--rm", IMAGE, "sh", "-c", &script]).stdout(Stdio::null()).status()?;
    anyhow::ensure!(status.success(), "docker run failed");
    let raw = raw.elapsed();

    // In YAML's single quotes, a quote is written twice.
    let yaml = format!("type: task\nname: big\nimage: {IMAGE}\ncommands:\n  - '{}'\n", script.replace('\'', "''"));
    let file = crate::harness::write_config(dir.path(), "big", &yaml);
    let began = Instant::now();
    let (code, _) = crate::harness::apply(&client, &file, true).await?;
    assert_eq!(code, 0);
    crate::harness::wait_state(&client, "big", |r| r.state.is_finished(), Duration::from_secs(600)).await?;
    let mut got = Vec::new();
    let _ = wait_for("the whole log", Duration::from_secs(120), || async {
        let mut out = Vec::new();
        corral_cli::commands::logs(&client, "big", 0, false, &mut out).await?;
        Ok((out.len() >= want.len()).then_some(out))
    })
    .await
    .map(|out| got = out);
    if got.is_empty() {
        corral_cli::commands::logs(&client, "big", 0, false, &mut got).await?;
    }
    let corral = began.elapsed();
    println!(
        "faults: big output: {:.1} MB (a {line}-byte line, {lines} lines, no final newline): stored {} of {} bytes; \
         docker run attached {:.1}s, corral run to a whole log {:.1}s ({:.2}x)",
        want.len() as f64 / 1e6,
        got.len(),
        want.len(),
        raw.as_secs_f64(),
        corral.as_secs_f64(),
        corral.as_secs_f64() / raw.as_secs_f64(),
    );
    assert_eq!(got.len(), want.len(), "bytes stored");
    assert!(got == want, "the stored log differs from what the container wrote");
    Ok(())
}

/// Removes a locally built image, also when the test fails.
struct LocalImage(String);

impl Drop for LocalImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// A `Write` into a buffer another task can read while it is written.
#[derive(Clone, Default)]
struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedBuf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

/// `kill -9` of the coordinator while a node loads an image from it, and again while a user
/// follows a run's log: the image transfer starts over on the next connection and the job runs;
/// the follower, reconnecting, prints every line once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_kill_9_during_an_image_transfer_and_a_log_follow() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut coord, client, agent) = one_agent(dir.path()).await?;

    // An image of 150 MB that only the coordinator has.
    let image = LocalImage(format!("corral-test/fault-transfer-{}:1", std::process::id()));
    let ctx = dir.path().join("image");
    std::fs::create_dir_all(&ctx)?;
    let blob = std::fs::File::create(ctx.join("blob"))?;
    let made = Command::new("head").args(["-c", "150000000", "/dev/urandom"]).stdout(blob).status()?;
    anyhow::ensure!(made.success(), "cannot write the image's data");
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {IMAGE}\nCOPY blob /blob\n"))?;
    let built =
        Command::new("docker").args(["build", "-q", "-t", &image.0]).arg(&ctx).env("DOCKER_BUILDKIT", "0").output()?;
    anyhow::ensure!(built.status.success(), "docker build: {}", String::from_utf8_lossy(&built.stderr));
    // The node's copy, named by the project and the image's config digest (Docker's id of it).
    let id = Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", &image.0]).output()?;
    let id = String::from_utf8_lossy(&id.stdout).trim().trim_start_matches("sha256:").to_owned();
    let _loaded = LocalImage(format!("corral.local/main/{id}:latest"));
    let token = std::fs::read_to_string(coord.data.join("admin-token"))?;
    let pushed = Command::new(env!("CARGO_BIN_EXE_corral-test-cli"))
        .args(["image", "push", &image.0])
        .env("CORRAL_URL", format!("http://{}", coord.http))
        .env("CORRAL_TOKEN", token.trim())
        .env("CORRAL_CONFIG", dir.path().join("cli.json"))
        .output()?;
    anyhow::ensure!(pushed.status.success(), "image push: {}", String::from_utf8_lossy(&pushed.stderr));
    let removed = Command::new("docker").args(["rmi", "-f", &image.0]).output()?;
    anyhow::ensure!(removed.status.success(), "docker rmi: {}", String::from_utf8_lossy(&removed.stderr));

    let lines = 40;
    let text =
        real_task("pulled", &image.0, "", &[&format!("for i in $(seq 1 {lines}); do echo line-$i; sleep 0.25; done")]);
    submit(&client, &text, "pulled").await?;
    wait_for("the image transfer under way", Duration::from_secs(60), || async {
        let run = crate::harness::run(&client, "pulled").await?;
        let message = run.jobs[0].status_message.clone().unwrap_or_default();
        Ok(message.contains("loading the image from the coordinator").then_some(()))
    })
    .await?;
    coord.kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    coord.restart().await?;
    let restarted = Instant::now();
    let run = crate::harness::wait_state(&client, "pulled", |r| r.state == JobState::Running, Duration::from_secs(120))
        .await?;
    let transfer = restarted.elapsed();
    let message = run.jobs[0].status_message.clone().unwrap_or_default();
    assert!(message.contains("loaded the image from the coordinator"), "{message}");
    let agent_log = std::fs::read_to_string(dir.path().join("real.log"))?;
    assert!(agent_log.contains("image transfer interrupted, trying again"), "the kill came after the transfer");

    // Follow the log, and kill the coordinator under the follower.
    let out = SharedBuf::default();
    let follower = {
        let (client, mut out) = (client.clone(), out.clone());
        tokio::spawn(async move { corral_cli::commands::logs(&client, "pulled", 0, true, &mut out).await })
    };
    wait_for("the follower to print line-5", Duration::from_secs(30), || async {
        Ok(out.text().contains("line-5\n").then_some(()))
    })
    .await?;
    coord.kill9();
    let seen_before = out.text().lines().count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    coord.restart().await?;
    let followed = tokio::time::timeout(Duration::from_secs(90), follower).await.context("the follower never ended")?;
    followed??;
    let want: String = (1..=lines).map(|i| format!("line-{i}\n")).collect();
    let got = out.text();
    println!(
        "faults: coordinator kill -9 during a 150 MB image transfer: the job ran {:.1}s after the restart; \
         during a log follow ({seen_before} of {lines} lines seen): {} of {lines} lines printed, {} repeated",
        transfer.as_secs_f64(),
        got.lines().count(),
        got.lines().count().saturating_sub(lines),
    );
    assert_eq!(got, want, "what the follower printed across the coordinator's restart");
    let done = crate::harness::run(&client, "pulled").await?;
    assert_eq!((done.state, done.jobs[0].exit_code), (JobState::Done, Some(0)));
    drop(agent);
    Ok(())
}

/// A small tmpfs mounted for the test (the tests run as root, as CI does), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(path)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "cannot mount a tmpfs for the full-disk case (it needs root, as CI has): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Fills the file system holding `path` with one file until a write fails for lack of space.
fn fill_disk(path: &Path) -> anyhow::Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => return Err(e.into()),
        }
    }
    Ok(written)
}

/// The coordinator's disk fills while a job writes output: new work is refused with a clear
/// error, the job's output waits on its node, and once there is space again the log arrives
/// whole and the job is recorded with its real exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_work_and_loses_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let disk = Tmpfs::mount(&dir.path().join("coord"), "48m")?;
    let (mut coord, client, agent) = one_agent(dir.path()).await?;

    let lines = 300_000u64;
    let writer = |name: &str, tail: &str| real(name, "begin", tail);
    submit(&client, &writer("writer", &format!("sleep 4; seq 1 {lines}; echo end")), "writer").await?;
    let run = crate::harness::wait_state(&client, "writer", |r| r.state == JobState::Running, Duration::from_secs(60))
        .await?;
    let filler = disk.0.join("filler");
    let filled = fill_disk(&filler)?;
    let container = format!("corral-{}", run.jobs[0].id);
    wait_for("the job's container to exit", Duration::from_secs(60), || async {
        Ok(docker_state(&container).is_some_and(|(running, _)| !running).then_some(()))
    })
    .await?;

    // Full: new work is refused, saying why.
    let refused = submit(&client, &writer("later", "echo later"), "later").await;
    let refusal = format!("{:#}", refused.as_ref().err().context("a run was accepted on a full disk")?);
    assert!(refusal.contains("disk is full"), "{refusal}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut want = String::from("begin\n");
    for i in 1..=lines {
        want.push_str(&format!("{i}\n"));
    }
    want.push_str("end\n");
    let held = crate::harness::logs(&client, "writer").await.unwrap_or_default();
    assert!(held.len() < want.len(), "the disk filled too late: the whole log was stored already");
    let state_while_full = crate::harness::run(&client, "writer").await?.state;

    // Space again: everything converges.
    std::fs::remove_file(&filler)?;
    let freed = Instant::now();
    wait_for("the job recorded and its whole log stored", Duration::from_secs(90), || async {
        let r = crate::harness::run(&client, "writer").await?;
        if r.state != JobState::Done {
            return Ok(None);
        }
        let text = crate::harness::logs(&client, "writer").await?;
        Ok((text.len() >= want.len()).then_some(()))
    })
    .await?;
    let converged = freed.elapsed();
    let r = crate::harness::run(&client, "writer").await?;
    assert_eq!(r.jobs[0].exit_code, Some(0));
    let text = crate::harness::logs(&client, "writer").await?;
    assert!(text == want, "the log after the disk was freed differs from what the job wrote");
    submit(&client, &writer("later", "echo later"), "later").await?;
    // Ended before the agent goes, so that its container is not left behind half made.
    crate::harness::wait_state(&client, "later", |r| r.state.is_finished(), Duration::from_secs(60)).await?;
    println!(
        "faults: coordinator disk full ({:.1} MB filler on a 48 MB tmpfs): new run refused ({refusal}); \
         {} of {} log bytes stored while full, the run {state_while_full} meanwhile; after freeing, the run \
         done with its log whole in {:.1}s; log bytes lost 0",
        filled as f64 / 1e6,
        held.len(),
        want.len(),
        converged.as_secs_f64(),
    );
    drop(agent);
    coord.kill9();
    drop(disk);
    Ok(())
}

/// `kill -9` of an agent while its jobs run, some of which end (one with an error) before it is
/// back: the containers keep running, the agent re-adopts them, what they wrote while no agent
/// listened comes from Docker's log, and every run ends with its own exit code and whole log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kill_9_loses_no_job_and_no_output() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (_coord, client, mut agent) = one_agent(dir.path()).await?;

    let end_at = now_unix() + 20;
    let wait = shell_wait_until;
    let real = |name: &str, tail: &str| real(name, &format!("begin {name}"), tail);
    let numbered = "seq 1 20000";
    submit(&client, &real("during", &format!("{}; {numbered}; echo end during", wait(end_at))), "during").await?;
    // `after` writes a million lines before the kill, more than Docker keeps (10 MB × 3 of JSON
    // here, about 380,000 short lines): its log read back after the restart must still line up.
    let big = 1_000_000;
    submit(
        &client,
        &real("after", &format!("seq 1 {big}; {}; {numbered}; echo end after", wait(end_at + 10))),
        "after",
    )
    .await?;
    submit(&client, &real("bad", &format!("{}; echo failing; exit 3", wait(end_at))), "bad").await?;
    wait_for("3 runs running", Duration::from_secs(60), || async {
        let runs = all_runs(&client).await?;
        Ok((runs.iter().filter(|r| r.state == JobState::Running).count() == 3).then_some(()))
    })
    .await?;
    // Docker's log driver takes seconds for a million lines: all of them stored before the kill.
    let begin_and_big = format!("begin after\n{}", (1..=big).map(|n| format!("{n}\n")).collect::<String>());
    wait_for("`after` wrote its million lines", Duration::from_secs(60), || async {
        Ok((crate::harness::logs(&client, "after").await?.len() >= begin_and_big.len()).then_some(()))
    })
    .await?;
    anyhow::ensure!(now_unix() + 2 < end_at, "the jobs wrote their output too late for the agent's outage");
    sleep_until_unix(end_at - 2).await;
    agent.kill9();
    let killed = Instant::now();
    sleep_until_unix(end_at + 3).await;
    agent.restart()?;
    let down = killed.elapsed();
    let restarted = Instant::now();

    let seq: String = (1..=20000).map(|n| format!("{n}\n")).collect();
    let big_seq = &begin_and_big["begin after\n".len()..];
    let want = |name: &str| {
        let before = if name == "after" { big_seq } else { "" };
        format!("begin {name}\n{before}{seq}end {name}\n")
    };
    wait_for("every run ended with its whole log", Duration::from_secs(90), || async {
        let runs = all_runs(&client).await?;
        if !runs.iter().all(|r| r.state.is_finished()) {
            return Ok(None);
        }
        for name in ["during", "after"] {
            if crate::harness::logs(&client, name).await?.len() < want(name).len() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;
    let converged = restarted.elapsed();
    let mut wrong = Vec::new();
    for r in all_runs(&client).await? {
        let expected = if r.name == "bad" { (JobState::Failed, Some(3)) } else { (JobState::Done, Some(0)) };
        if (r.state.clone(), r.jobs[0].exit_code) != expected || r.jobs.len() != 1 {
            wrong.push(format!("{}: {} {:?} {:?}", r.name, r.state, r.jobs[0].exit_code, r.jobs[0].termination_reason));
        }
    }
    for name in ["during", "after"] {
        let (got, want) = (crate::harness::logs(&client, name).await?, want(name));
        let at = got.bytes().zip(want.bytes()).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        let around = |t: &str| t.get(at.saturating_sub(40)..(at + 40).min(t.len())).unwrap_or("").to_owned();
        assert!(
            got == want,
            "the log of {name}: {} bytes, want {}; first difference at {at}: {:?} vs {:?}",
            got.len(),
            want.len(),
            around(&got),
            around(&want)
        );
    }
    assert_eq!(crate::harness::logs(&client, "bad").await?, "begin bad\nfailing\n");
    println!(
        "faults: agent kill -9 with 3 jobs running (2 ending while it was down, one with exit code 3, one with \
         a million lines written before it): down \
         {:.1}s, every run ended with its whole log {:.1}s after the agent's restart; runs in a wrong state {}, \
         log bytes lost 0",
        down.as_secs_f64(),
        converged.as_secs_f64(),
        wrong.len(),
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
    Ok(())
}

/// A partition of one agent longer than the node timeout (`SIGSTOP`): its job is declared lost and
/// runs again on the other node (its `retry` covers interruptions); when the agent comes back its
/// stale copy is stopped, and the new one is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_agent_s_job_moves_and_its_stale_copy_goes() -> anyhow::Result<()> {
    ensure_image();
    let dir = tempfile::tempdir()?;
    let coord = Coord::start(dir.path(), &[]).await?;
    let client = coord.client()?;
    let agents = [coord.agent(dir.path(), "node-a", "real")?, coord.agent(dir.path(), "node-b", "real")?];
    crate::harness::nodes_ready(&client, 2).await?;
    let text = real_task("moving", IMAGE, "retry:\n  on_events: [interruption]\n", &["echo attempt", "sleep 600"]);
    submit(&client, &text, "moving").await?;
    let first =
        crate::harness::wait_state(&client, "moving", |r| r.state == JobState::Running, Duration::from_secs(60))
            .await?;
    let node = first.jobs[0].node_name.clone().context("placed nowhere")?;
    let (stopped, other) = if node == "node-a" { (&agents[0], "node-b") } else { (&agents[1], "node-a") };
    let stale = format!("corral-{}", first.jobs[0].id);

    stopped.signal("STOP")?;
    let cut = Instant::now();
    let moved = crate::harness::wait_state(
        &client,
        "moving",
        |r| r.state == JobState::Running && r.jobs.iter().any(|j| j.submission == 1 && j.state == JobState::Running),
        Duration::from_secs(60),
    )
    .await?;
    let elsewhere = cut.elapsed();
    let new = moved.jobs.iter().find(|j| j.submission == 1).context("no second attempt")?;
    assert_eq!(new.node_name.as_deref(), Some(other));
    let new_container = format!("corral-{}", new.id);

    stopped.signal("CONT")?;
    let back = Instant::now();
    wait_for("the stale copy stopped", Duration::from_secs(60), || async {
        Ok(docker_state(&stale).is_none_or(|(running, _)| !running).then_some(()))
    })
    .await?;
    let cleaned = back.elapsed();
    let still = docker_state(&new_container).is_some_and(|(running, _)| running);
    println!(
        "faults: agent partitioned (SIGSTOP) past the 10 s node timeout: its job running on {other} {:.1}s after \
         the cut; the stale copy stopped {:.1}s after the agent came back; the new copy untouched: {still}",
        elsewhere.as_secs_f64(),
        cleaned.as_secs_f64(),
    );
    assert!(still, "the new copy must keep running");
    let _ = corral_cli::commands::stop(&client, "moving", true, true, &mut Vec::new()).await;
    Ok(())
}
