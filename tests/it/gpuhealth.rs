//! What nodes measure and what a faulty GPU does: a job's CPU, memory and GPU figures reach
//! `corral metrics` and `/metrics` (parsed by an independent parser of Prometheus' text format,
//! with DCGM's names and the run on the GPU); a GPU that reports uncorrectable ECC errors ends its
//! job `gpu_error`, leaves placement, and the job's retry lands on the other GPU; an Xid on the last
//! healthy GPU cordons the node; an operator returns a GPU. The fake NVML's control files (`gpus`,
//! `utilization`) beside this test's own copy of the library say what the agent reads.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use corral_proto::api::{self, Run, RunMetrics};
use corral_proto::job::JobState;

use crate::harness::*;

/// `/metrics` read and parsed; `token` as a bearer when given.
async fn scrape(url: &str, token: Option<&str>) -> anyhow::Result<(u16, Option<prometheus_parse::Scrape>)> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Ok((status, None));
    }
    let text = resp.text().await?;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .with_context(|| format!("cannot parse /metrics:\n{text}"))?;
    Ok((status, Some(scrape)))
}

/// The value of the sample `name` whose labels include every one of `labels`.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples.iter().find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))).map(|x| {
        match x.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        }
    })
}

fn gpu_of(r: &Run) -> anyhow::Result<u32> {
    let a = r.jobs.first().and_then(|j| j.allocation.clone()).context("placed")?;
    ensure!(a.gpu_indices.len() == 1, "{a:?}");
    Ok(a.gpu_indices[0])
}

/// How a job ended, as the coordinator's database has it.
fn ended(coord: &Coordinator, job: &str) -> anyhow::Result<(String, String)> {
    let db = rusqlite::Connection::open_with_flags(
        coord.data.join("corral.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    Ok(db.query_row("SELECT termination_reason, status_message FROM jobs WHERE id = ?1", [job], |r| {
        Ok((r.get::<_, Option<String>>(0)?.unwrap_or_default(), r.get::<_, Option<String>>(1)?.unwrap_or_default()))
    })?)
}

/// A coordinator on plain HTTP as the test wants it, and one node with two fake A100s whose NVML
/// reads `gpus` (the returned folder holds the library's control files).
async fn cluster(
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut corral_coordinator::Config),
    gpus: &str,
) -> anyhow::Result<(Coordinator, Agent, std::path::PathBuf)> {
    let mut config = corral_coordinator::Config {
        data_dir: dir.join("coord"),
        http_listen: "127.0.0.1:0".parse()?,
        quic_listen: "127.0.0.1:0".parse()?,
        heartbeat_secs: 1,
        http_tls: corral_coordinator::HttpTls::Off,
        ..Default::default()
    };
    tweak(&mut config);
    let coord = Coordinator::start_config(config).await?;
    let nvml_dir = dir.join("nvml");
    let nvml = own_fake_nvml(&nvml_dir)?;
    write_whole(&nvml_dir.join("gpus"), gpus)?;
    let opts = AgentOptions { name: "gpu-node".into(), nvml: Some(nvml), ..Default::default() };
    let agent = Agent::start(&coord, &dir.join("gpu-node"), opts);
    nodes_ready(&coord.client(), 1).await?;
    Ok((coord, agent, nvml_dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_gpu_ends_its_job_leaves_placement_and_its_figures_reach_prometheus() -> anyhow::Result<()> {
    ensure_image();
    let dir = tempfile::tempdir()?;
    let open: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    let gpus = "0 mem_used_mib=1024 temp=61\n1 mem_used_mib=2048\n";
    let (coord, _agent, nvml_dir) = cluster(dir.path(), |c| c.metrics_listen = Some(open), gpus).await?;
    write_whole(&nvml_dir.join("utilization"), "7\n42\n")?;
    let client = coord.client();

    let config = format!(
        "type: task\nname: train\nimage: {IMAGE}\ncommands:\n  - sleep 3600\nresources:\n  gpu: 1\n\
         retry:\n  on_events: [interruption]\n  duration: 10m\n"
    );
    apply(&client, &write_config(dir.path(), "train", &config), true).await?;
    let first = wait_state(&client, "train", |r| r.state == JobState::Running, Duration::from_secs(60)).await?;
    assert_eq!(gpu_of(&first)?, 0, "the first free GPU");
    let first_job = first.jobs[0].id.to_string();

    // The job's figures, as `corral metrics` reads them.
    let path = client.project_api(&["runs", "train", "metrics"])?;
    let m = wait_for("the job's CPU, memory and GPU figures", Duration::from_secs(30), || async {
        let m: RunMetrics = client.get(&path).await?;
        let j = &m.jobs[0];
        let ready = j.cpu_millicores.is_some()
            && j.memory_limit.is_some_and(|l| l > 0)
            && j.gpus.first().is_some_and(|g| g.utilization == Some(7));
        Ok(ready.then_some(m))
    })
    .await?;
    let g = &m.jobs[0].gpus[0];
    assert_eq!((g.index, g.memory_used, g.temperature), (0, Some(1024 << 20), Some(61)), "{g:?}");
    assert_eq!(g.uuid, "GPU-fa4e0000-0000-4000-8000-000000000000");
    assert!(!m.jobs[0].history.is_empty() && !g.history.is_empty(), "{m:?}");
    let mut out = Vec::new();
    corral_cli::metrics::metrics(&client, "train", false, false, &mut out).await?;
    let text = String::from_utf8(out)?;
    let row: Vec<&str> = text.lines().nth(1).context("a row")?.split_whitespace().collect();
    assert_eq!((row[0], row[1], row[4], row[5], row[6]), ("0", "gpu-node", "#0", "7%", "1GB/80GB"), "{text}");

    // Prometheus: a global admin's token on the API's address; none on the operator's own.
    let url = format!("{}/metrics", coord.url());
    assert_eq!(scrape(&url, None).await?.0, 401);
    let (_, s) = scrape(&url, Some(&coord.admin_token)).await?;
    let s = s.context("parsed")?;
    let on_gpu = [("Hostname", "gpu-node"), ("gpu", "0"), ("run", "train"), ("project", "main")];
    assert_eq!(value(&s, "DCGM_FI_DEV_GPU_UTIL", &on_gpu), Some(7.0));
    assert_eq!(value(&s, "DCGM_FI_DEV_FB_USED", &on_gpu), Some(1024.0));
    assert_eq!(value(&s, "DCGM_FI_DEV_GPU_TEMP", &on_gpu), Some(61.0));
    assert_eq!(value(&s, "DCGM_FI_DEV_POWER_USAGE", &on_gpu), Some(61.0));
    let idle = s.samples.iter().find(|x| x.metric == "DCGM_FI_DEV_GPU_UTIL" && x.labels.get("gpu") == Some("1"));
    let idle = idle.context("GPU 1's utilization")?;
    assert!(idle.labels.get("run").is_none(), "an idle GPU has no run: {:?}", idle.labels);
    assert_eq!(value(&s, "DCGM_FI_DEV_GPU_UTIL", &[("gpu", "1")]), Some(42.0));
    assert_eq!(value(&s, "corral_jobs", &[("state", "running")]), Some(1.0));
    assert_eq!(value(&s, "corral_nodes", &[("status", "ready")]), Some(1.0));
    assert!(
        value(&s, "corral_job_memory_limit_bytes", &[("run", "train"), ("job", &first_job)]).is_some_and(|v| v > 0.0)
    );
    assert!(value(&s, "corral_submissions_total", &[]).is_some_and(|v| v >= 1.0));
    let open = format!("http://{}/metrics", coord.metrics.context("the open listener")?);
    let (status, open) = scrape(&open, None).await?;
    assert_eq!(status, 200);
    assert_eq!(value(&open.context("parsed")?, "DCGM_FI_DEV_GPU_UTIL", &on_gpu), Some(7.0));

    // GPU 0 reports uncorrectable ECC errors: its job ends `gpu_error` and its retry takes GPU 1.
    write_whole(&nvml_dir.join("gpus"), "0 ecc_uncorrected_volatile=3\n")?;
    let retry = wait_state(
        &client,
        "train",
        |r| r.jobs.first().is_some_and(|j| j.submission == 1) && r.state == JobState::Running,
        Duration::from_secs(60),
    )
    .await?;
    assert_eq!(gpu_of(&retry)?, 1, "the retry on the other GPU");
    let (reason, message) = ended(&coord, &first_job)?;
    assert_eq!(reason, "gpu_error");
    assert!(
        message.contains("GPU 0 (GPU-fa4e0000-0000-4000-8000-000000000000) of node gpu-node was taken out of service: 3 uncorrectable ECC error(s)"),
        "{message}"
    );
    wait_for("the first attempt's container to stop", Duration::from_secs(30), || async {
        Ok((!docker_running(&format!("corral-{first_job}"))).then_some(()))
    })
    .await?;
    let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
    let out_of_service = &nodes[0].gpus_out_of_service;
    assert_eq!(out_of_service.len(), 1, "{out_of_service:?}");
    assert_eq!(out_of_service[0].index, 0);
    assert_eq!(out_of_service[0].reason, "3 uncorrectable ECC error(s) since the driver loaded");
    assert!(!nodes[0].cordoned, "one GPU is still healthy");
    let mut out = Vec::new();
    corral_cli::cluster::node(&client, corral_cli::NodeCommand::List { json: false }, &mut out).await?;
    let list = String::from_utf8(out)?;
    assert!(list.contains("1 busy, 1/2 healthy"), "{list}");
    assert!(list.contains("gpu-node: GPU 0 out of service since"), "{list}");
    let events: Vec<api::Event> = client.get("/api/events").await?;
    let e = events.iter().find(|e| e.action == "gpu.unhealthy").context("a gpu.unhealthy event")?;
    assert_eq!(e.object.as_deref(), Some("gpu-node/gpu0"));
    let detail = e.detail.clone().unwrap_or_default();
    assert!(detail.contains("3 uncorrectable ECC error(s)") && detail.contains("ended gpu_error: train/0"), "{detail}");
    // The figures follow within an interval or two of the node's reports.
    wait_for("/metrics to show GPU 0 out and the retry on GPU 1", Duration::from_secs(15), || async {
        let (_, s) = scrape(&url, Some(&coord.admin_token)).await?;
        let s = s.context("parsed")?;
        let now = (
            value(&s, "corral_gpu_out_of_service", &[("node", "gpu-node"), ("gpu", "0")]),
            value(&s, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", &[("gpu", "0")]),
            value(&s, "DCGM_FI_DEV_GPU_UTIL", &[("gpu", "1"), ("run", "train")]),
            value(&s, "DCGM_FI_DEV_GPU_UTIL", &[("gpu", "0"), ("run", "train")]),
        );
        ensure!(now == (Some(1.0), Some(3.0), Some(42.0), None), "{now:?}");
        Ok(Some(()))
    })
    .await?;

    // An Xid on the last healthy GPU: the retry ends too, and the node, all of its GPUs out, is
    // cordoned; the next attempt waits.
    write_whole(&nvml_dir.join("gpus"), "0 ecc_uncorrected_volatile=3\n1 xids=79\n")?;
    let waiting = wait_state(
        &client,
        "train",
        |r| r.jobs.first().is_some_and(|j| j.submission == 2 && j.state == JobState::Pending),
        Duration::from_secs(60),
    )
    .await?;
    let why = waiting.jobs[0].status_message.clone().unwrap_or_default();
    assert!(why.contains("cordoned"), "{why}");
    let (_, s) = scrape(&url, Some(&coord.admin_token)).await?;
    let s = s.context("parsed")?;
    assert_eq!(value(&s, "corral_jobs_waiting", &[("reason", "not_ready")]), Some(1.0));
    assert_eq!(value(&s, "corral_runs", &[("state", "pending")]), Some(1.0));
    assert_eq!(value(&s, "corral_queue_depth", &[]), Some(1.0));
    let (reason, message) = ended(&coord, &retry.jobs[0].id.to_string())?;
    assert_eq!(reason, "gpu_error");
    assert!(message.contains("Xid 79 (fallen off the bus)"), "{message}");
    let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
    assert!(nodes[0].cordoned, "every GPU out: cordoned");
    let events: Vec<api::Event> = client.get("/api/events").await?;
    let cordon = events.iter().find(|e| e.action == "node.cordon").context("a node.cordon event")?;
    assert_eq!(cordon.detail.as_deref(), Some("all 2 GPUs are out of service"));
    let mut out = Vec::new();
    corral_cli::nodeinfo::node_get(&client, "gpu-node", false, &mut out).await?;
    let get = String::from_utf8(out)?;
    assert!(get.contains("0/2 GPUs healthy"), "{get}");
    assert!(get.contains("out of service since") && get.contains("Xid 79 (fallen off the bus)"), "{get}");

    // The ECC errors clear (the driver reloaded); the operator returns GPU 0 and uncordons the node:
    // the run goes on there. GPU 1's Xid keeps it out.
    write_whole(&nvml_dir.join("gpus"), "1 xids=79\n")?;
    let mut out = Vec::new();
    let enable =
        corral_cli::NodeCommand::Gpu { command: corral_cli::GpuCommand::Enable { node: "gpu-node".into(), index: 0 } };
    corral_cli::cluster::node(&client, enable, &mut out).await?;
    assert_eq!(String::from_utf8(out)?.trim(), "GPU 0 of node gpu-node is back in service");
    let uncordon = corral_cli::NodeCommand::Uncordon(corral_cli::NodeSelection {
        nodes: vec!["gpu-node".into()],
        fleet: None,
        all: false,
    });
    corral_cli::cluster::node(&client, uncordon, &mut Vec::new()).await?;
    let back = wait_state(&client, "train", |r| r.state == JobState::Running, Duration::from_secs(60)).await?;
    assert_eq!((back.jobs[0].submission, gpu_of(&back)?), (2, 0));
    let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
    let still: HashMap<u32, String> =
        nodes[0].gpus_out_of_service.iter().map(|g| (g.index, g.reason.clone())).collect();
    assert_eq!(still.len(), 1, "{still:?}");
    assert_eq!(still.get(&1).map(String::as_str), Some("Xid 79 (fallen off the bus)"));

    // The run's history says how each attempt ended and why it ran again.
    let mut out = Vec::new();
    corral_cli::commands::ps_run(&client, "train", false, &mut out).await?;
    let ps = String::from_utf8(out)?;
    assert!(ps.contains("job.end job 0: failed (gpu_error): GPU 0 ("), "{ps}");
    assert!(ps.contains("run.retry attempt 1 after an interruption (retry.on_events), starting in 0s"), "{ps}");
    assert!(ps.contains("run.retry attempt 2 after an interruption"), "{ps}");
    let history: Vec<api::Event> = client.get(&format!("{}?object=train", client.project_path("events"))).await?;
    let actions: Vec<&str> = history.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["run.apply", "job.end", "run.retry", "job.end", "run.retry"], "{history:#?}");

    // `corral metrics -w` follows the run until it ends.
    let mut watched = Vec::new();
    let (watch, stop) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(60),
            corral_cli::metrics::metrics(&client, "train", true, false, &mut watched)
        ),
        async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            corral_cli::commands::stop(&client, "train", true, true, &mut Vec::new()).await
        }
    );
    stop?;
    assert_eq!(watch.context("metrics -w did not end with its run")??, 0);
    let watched = String::from_utf8(watched)?;
    assert!(watched.matches("JOB").count() >= 2, "read again while it ran: {watched}");
    assert!(watched.trim_end().ends_with("run train ended (aborted)"), "{watched}");
    Ok(())
}

/// With `--gpu-auto-return`, a GPU out for a condition comes back once its node reads it cleared;
/// a lost GPU is a condition too, and the audit trail says both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auto_return_a_gpu_whose_condition_clears_comes_back_by_itself() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let gpus = "0 retired_pending=1\n1 lost=1\n";
    let (coord, _agent, nvml_dir) = cluster(dir.path(), |c| c.gpu_auto_return = true, gpus).await?;
    let client = coord.client();
    let out = wait_for("both GPUs out of service", Duration::from_secs(30), || async {
        let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
        Ok((nodes[0].gpus_out_of_service.len() == 2).then(|| nodes[0].clone()))
    })
    .await?;
    let reasons: Vec<&str> = out.gpus_out_of_service.iter().map(|g| g.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["memory pages wait to be retired (reboot the host)", "the GPU fell off the bus (NVML reports it lost)"]
    );
    assert!(out.cordoned, "both GPUs out: cordoned");
    // The host rebooted: the pages retired, the GPU back on the bus.
    write_whole(&nvml_dir.join("gpus"), "")?;
    wait_for("both GPUs back", Duration::from_secs(30), || async {
        let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
        Ok(nodes[0].gpus_out_of_service.is_empty().then_some(()))
    })
    .await?;
    let events: Vec<api::Event> = client.get("/api/events").await?;
    let back: Vec<&str> =
        events.iter().filter(|e| e.action == "gpu.healthy").filter_map(|e| e.object.as_deref()).collect();
    assert_eq!(back.len(), 2, "{events:#?}");
    assert!(back.contains(&"gpu-node/gpu0") && back.contains(&"gpu-node/gpu1"), "{back:?}");
    Ok(())
}
