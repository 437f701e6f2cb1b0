//! One function per verb. Data goes to `out`; progress and prompts go to stderr.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;

use corral_proto::api::{self, StopRun, SubmitRun};
use corral_proto::config::{self, Configuration};
use corral_proto::job::JobState;
use corral_proto::resources::{Memory, describe_gpu, fit};

use crate::client::{CliConfig, Client, api_path};
use crate::output::{self, ago, table};

type Out<'a> = &'a mut (dyn Write + Send);

fn parse_file(path: &Path) -> anyhow::Result<Configuration> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    config::parse(&text, &path.display().to_string()).map_err(|e| anyhow::anyhow!("{e}"))
}

/// dstack's `- NAME` env form takes the value from where `apply` runs.
fn env_from_shell(configuration: &mut Configuration, file: &Path) -> anyhow::Result<()> {
    let env = match configuration {
        Configuration::Task(t) => &mut t.env,
        Configuration::Service(s) => &mut s.env,
        Configuration::DevEnvironment(d) => &mut d.env,
        Configuration::Fleet(f) => &mut f.env,
        _ => return Ok(()),
    };
    for var in env {
        if var.value.is_none() {
            let v = std::env::var(&var.name).with_context(|| {
                format!("{}: env {}: not set in this shell (export it or give a value)", file.display(), var.name)
            })?;
            var.value = Some(v);
        }
    }
    Ok(())
}

/// What `apply` would meet, without a coordinator: the parser, the values `env` takes from this
/// shell, and what a coordinator of this version admits (`corral_proto::admission`).
pub fn validate(files: &[PathBuf], out: Out<'_>) -> anyhow::Result<i32> {
    let mut failed = 0;
    for f in files {
        match validate_file(f) {
            Ok(()) => writeln!(out, "{}: ok", f.display())?,
            Err(e) => {
                eprintln!("{e:#}");
                failed += 1;
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// One file as [`validate`] checks it; `Err` says where: `file:line:column: field: what is wrong`.
pub fn validate_file(f: &Path) -> anyhow::Result<()> {
    let mut configuration = parse_file(f)?;
    env_from_shell(&mut configuration, f)?;
    let admitted = match &configuration {
        Configuration::Fleet(fleet) => corral_proto::admission::check_fleet(fleet).map(|_| ()),
        Configuration::Volume(volume) => corral_proto::admission::check_volume(volume).map(|_| ()),
        other => corral_proto::admission::check(other).map(|_| ()),
    };
    admitted.map_err(|refused| {
        // Where the file writes the refused field, as for a parse error.
        let at = std::fs::read_to_string(f)
            .ok()
            .and_then(|text| corral_proto::config::position_of(&text, &refused.field))
            .map_or_else(String::new, |(line, column)| format!(":{line}:{column}"));
        anyhow::anyhow!("{}{at}: {}: a coordinator would refuse it: {}", f.display(), refused.field, refused.why)
    })
}

/// What `corral config` changes.
pub struct ConfigChange {
    pub url: Option<String>,
    pub token: Option<String>,
    pub project: Option<String>,
    pub ca_hash: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
}

pub async fn config(change: ConfigChange, out: Out<'_>) -> anyhow::Result<i32> {
    let mut cfg = CliConfig::load()?;
    let ConfigChange { url, token, project, ca_hash, ca_file } = change;
    if url.is_none() && token.is_none() && project.is_none() && ca_hash.is_none() && ca_file.is_none() {
        writeln!(out, "url: {}", cfg.url.as_deref().unwrap_or("(not set)"))?;
        writeln!(out, "token: {}", if cfg.token.is_some() { "(set)" } else { "(not set)" })?;
        writeln!(out, "project: {}", cfg.project.as_deref().unwrap_or(api::DEFAULT_PROJECT))?;
        match cfg.ca_cert.as_deref().map(crate::tls::ca_hash) {
            Some(Ok(hash)) => writeln!(out, "ca: {hash} (pinned)")?,
            _ => writeln!(out, "ca: (the system's)")?,
        }
        return Ok(0);
    }
    cfg.url = url.or(cfg.url);
    cfg.token = token.or(cfg.token);
    cfg.project = project.or(cfg.project);
    if let Some(hash) = ca_hash {
        let url = cfg.url.as_deref().context("--ca-hash needs the coordinator's --url")?;
        cfg.ca_cert = Some(crate::tls::fetch_ca(url, &hash).await?);
        writeln!(out, "pinned the coordinator's CA {hash}")?;
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let hash = crate::tls::ca_hash(&pem).with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        cfg.ca_cert = Some(pem);
        writeln!(out, "pinned the coordinator's CA {hash}")?;
    }
    let path = cfg.save()?;
    writeln!(out, "saved {}", path.display())?;
    Ok(0)
}

pub(crate) fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("{question} — not asking without a terminal: pass -y to confirm");
    }
    eprint!("{question} [y/n] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub(crate) fn resources_line(r: &corral_proto::resources::ResourcesSpec) -> String {
    let mut parts = vec![format!("cpu={}", r.cpu.count)];
    if r.memory.min.is_some() || r.memory.max.is_some() {
        parts.push(format!("mem={}", r.memory));
    }
    if let Some(g) = &r.gpu {
        parts.push(format!("gpu={}", describe_gpu(g)));
    }
    if let Some(s) = r.shm_size {
        parts.push(format!("shm={s}"));
    }
    if let Some(d) = &r.disk {
        parts.push(format!("disk={d}"));
    }
    parts.join(" ")
}

fn alloc_line(a: &corral_proto::resources::Allocation) -> String {
    let mut s = format!("{} CPU", a.cpus);
    if a.memory > Memory(0) {
        s.push_str(&format!(", {}", a.memory));
    }
    if !a.gpu_indices.is_empty() {
        let ids: Vec<String> = a.gpu_indices.iter().map(u32::to_string).collect();
        s.push_str(&format!(", GPU {}", ids.join(",")));
    }
    s
}

pub async fn apply(
    client: &Client,
    file: &Path,
    yes: bool,
    detach: bool,
    name: Option<String>,
    out: Out<'_>,
) -> anyhow::Result<i32> {
    let source = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut configuration = config::parse(&source, &file.display().to_string()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Configuration::Fleet(fleet) = configuration {
        return crate::cluster::apply_fleet(client, fleet, source, out).await;
    }
    if let Configuration::Volume(volume) = configuration {
        return crate::volumes::apply_volume(client, volume, source, out).await;
    }
    env_from_shell(&mut configuration, file)?;
    // What each job runs (a service's replicas each run its replica task).
    let (task, service) = match &configuration {
        Configuration::Task(t) => (t.clone(), None),
        Configuration::Service(s) => (s.replica_task(), Some(s.clone())),
        Configuration::DevEnvironment(d) => (d.as_task(), None),
        Configuration::Fleet(_) | Configuration::Volume(_) => unreachable!("fleets and volumes are applied above"),
    };
    let dev = matches!(configuration, Configuration::DevEnvironment(_));
    let run_name = name.clone().or(task.name.clone());

    // The plan: which nodes could take it now.
    let nodes: Vec<api::Node> = client.nodes().await?;
    let mut plan = table(&["NODE", "STATUS", "FITS"]);
    let mut fitting = 0;
    for n in &nodes {
        let verdict = match (&n.inventory, n.status) {
            (_, api::NodeStatus::Offline) => "offline".to_owned(),
            (None, _) => "no inventory yet".to_owned(),
            (Some(_), _) if n.refused.is_some() => {
                format!("no: refused by its fleet: {}", n.refused.as_deref().unwrap_or_default())
            }
            (Some(inv), _) => match fit(&task.resources, inv, 0, Memory(0), &n.busy_gpus) {
                Ok(a) => {
                    fitting += 1;
                    format!("yes: {}", alloc_line(&a))
                }
                Err(why) => format!("no: {why}"),
            },
        };
        plan.add_row(vec![n.name.clone(), format!("{:?}", n.status).to_lowercase(), verdict]);
    }
    eprintln!("Run:       {}", run_name.as_deref().unwrap_or("(name picked by the coordinator)"));
    eprintln!("Project:   {}", client.project);
    eprintln!("Image:     {}", task.image.as_deref().unwrap_or("the coordinator's base image (dstack's default)"));
    if !crate::groups::plan(&configuration) {
        eprintln!("Resources: {}", resources_line(&task.resources));
    }
    if let Some(m) = task.max_duration_secs {
        eprintln!("Max time:  {m}s");
    }
    if nodes.is_empty() {
        eprintln!("Nodes:     none enrolled — the run will wait for one");
    } else {
        eprintln!("{plan}");
        if fitting == 0 {
            eprintln!("No node fits now: the run will wait as pending.");
        }
    }
    if !yes && !confirm("Submit the run?")? {
        eprintln!("not submitted");
        return Ok(1);
    }
    // The local repo and files go to the coordinator first; the run names them by digest.
    crate::uploads::upload(client, file, &mut configuration).await?;
    if configuration.schedule().is_some() {
        // Registered, not started: the coordinator submits it at its times.
        return crate::schedules::register(client, SubmitRun { configuration, source: Some(source), name }, out).await;
    }
    let run: api::Run =
        client.post(&client.project_api(&["runs"])?, &SubmitRun { configuration, source: Some(source), name }).await?;
    eprintln!("submitted run {}", run.name);
    if let Some(svc) = &service {
        let url = format!("{}{}/", client.url, api_path(&["proxy", "services", &client.project, &run.name])?);
        let replicas = if svc.groups.is_empty() {
            svc.replicas.max.unwrap_or(1).to_string()
        } else {
            format!("{} to {}", svc.replicas.min.unwrap_or(0), svc.replicas.max.unwrap_or(0))
        };
        let auth = if svc.auth { " (send `Authorization: Bearer <your Corral token>`)" } else { "" };
        eprintln!("Service:   {url}{auth}, {replicas} replica(s) on port {}", svc.port);
    }
    if detach {
        writeln!(out, "{}", run.name)?;
        return Ok(0);
    }
    if dev {
        // A dev environment is for connecting to: wait for it, set up `ssh RUN`, print the IDE
        // link and forward its ports until Ctrl-C (the environment keeps running).
        return crate::attach::attach(client, &run.name, 0, Vec::new(), out).await;
    }
    attach(client, &run.name, out).await
}

/// Streams a run's logs until it ends, reporting state changes on stderr, and returns the exit code
/// of its job.
async fn attach(client: &Client, run: &str, out: Out<'_>) -> anyhow::Result<i32> {
    let path = client.project_api(&["runs", run])?;
    let watcher = {
        let client = client.clone();
        let run = run.to_owned();
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                if let Ok(r) = client.get::<api::Run>(&path).await
                    && let Some(j) = r.jobs.first()
                {
                    let line = match (&j.state, &j.status_message, &j.node_name) {
                        (JobState::Pending, Some(m), _) => format!("pending: {m}"),
                        (JobState::Pulling, Some(m), _) => format!("pulling: {m}"),
                        (JobState::Running, _, Some(n)) => format!("running on {n}"),
                        (s, _, _) => s.to_string(),
                    };
                    if line != last && !j.state.is_finished() {
                        eprintln!("{run}: {line}");
                        last = line;
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let streamed = logs(client, run, 0, true, out).await;
    watcher.abort();
    streamed?;
    let r: api::Run = wait_finished(client, run, Duration::from_secs(10)).await?;
    let job = r.jobs.first();
    let code = job.and_then(|j| j.exit_code);
    let reason = job.and_then(|j| j.termination_reason).map(|r| r.to_string()).unwrap_or_default();
    let message = job.and_then(|j| j.status_message.clone()).map(|m| format!(": {m}")).unwrap_or_default();
    eprintln!("run {run} {} ({reason}{message})", r.state);
    Ok(match (&r.state, code) {
        (JobState::Done, _) => 0,
        (_, Some(c)) if c != 0 => i32::try_from(c).unwrap_or(1),
        _ => 1,
    })
}

async fn wait_finished(client: &Client, run: &str, patience: Duration) -> anyhow::Result<api::Run> {
    let deadline = tokio::time::Instant::now() + patience;
    let path = client.project_api(&["runs", run])?;
    loop {
        let r: api::Run = client.get(&path).await?;
        if r.state.is_finished() || tokio::time::Instant::now() >= deadline {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints a run's logs. Following survives a dropped connection: it reconnects from the byte it
/// reached, so nothing is missed or repeated.
pub async fn logs(client: &Client, run: &str, job: u32, follow: bool, out: Out<'_>) -> anyhow::Result<()> {
    let mut offset = 0u64;
    let mut failures = 0;
    loop {
        let resp = match client.logs(run, job, offset, follow).await {
            Ok(r) => r,
            Err(e) if follow && failures < 30 && e.to_string().contains("cannot reach") => {
                failures += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut body = resp.bytes_stream();
        let mut broken = false;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    out.write_all(&bytes)?;
                    out.flush()?;
                    offset += bytes.len() as u64;
                    failures = 0;
                }
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if !broken || !follow {
            return Ok(());
        }
        failures += 1;
        if failures > 30 {
            bail!("lost the log stream of {run} and could not get it back");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub async fn ps(client: &Client, all: bool, json: bool, limit: Option<u32>, out: Out<'_>) -> anyhow::Result<i32> {
    let limit = limit.unwrap_or(api::DEFAULT_PAGE);
    let runs: Vec<api::Run> =
        client.get(&format!("{}?all={all}&limit={limit}", client.project_api(&["runs"])?)).await?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&runs)?)?;
        return Ok(0);
    }
    let mut t = table(&["NAME", "NODE", "RESOURCES", "STATE", "SUBMITTED", "EXIT", "REASON"]);
    for r in &runs {
        for j in &r.jobs {
            t.add_row(vec![
                if r.jobs.len() > 1 { format!("{} [rank {}]", r.name, j.job_num) } else { r.name.clone() },
                j.node_name.clone().unwrap_or_else(|| "-".into()),
                j.allocation.as_ref().map(alloc_line).unwrap_or_else(|| "-".into()),
                job_state(j),
                ago(r.submitted_at_ms),
                j.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                job_reason(j),
            ]);
        }
    }
    // Scheduled runs, with their next start (the runs they started are rows above).
    for s in crate::schedules::list(client).await? {
        t.add_row(vec![
            s.name.clone(),
            "-".into(),
            "-".into(),
            "scheduled".into(),
            ago(s.created_at_ms),
            String::new(),
            format!("{} (cron {})", crate::schedules::next_start(&s), s.cron.join(", ")),
        ]);
    }
    writeln!(out, "{t}")?;
    if runs.len() as u32 == limit {
        writeln!(out, "(the newest {limit} runs; `--limit N` shows up to 1000)")?;
    }
    Ok(0)
}

/// A job's state as `ps` shows it, with its attempt.
fn job_state(j: &api::Job) -> String {
    if j.submission > 0 {
        format!("{} (retry {})", output::state(&j.state), j.submission)
    } else {
        output::state(&j.state)
    }
}

/// Why a job ended or waits, in words.
fn job_reason(j: &api::Job) -> String {
    match (&j.termination_reason, &j.status_message) {
        (Some(t), Some(m)) => format!("{t}: {m}"),
        (Some(t), None) => t.to_string(),
        (None, Some(m)) => m.clone(),
        (None, None) => String::new(),
    }
}

/// How many of a run's events `corral ps RUN` shows.
const RUN_EVENTS: u32 = 8;

/// `corral ps RUN`: one run's jobs, and the last things that happened to it.
pub async fn ps_run(client: &Client, run: &str, json: bool, out: Out<'_>) -> anyhow::Result<i32> {
    let r: api::Run = client.get(&client.project_api(&["runs", run])?).await?;
    let query = format!("?limit={RUN_EVENTS}&object={}", crate::client::query_value(run));
    let events: Vec<api::Event> = client.get(&format!("{}{query}", client.project_path("events"))).await?;
    if json {
        let both = serde_json::json!({ "run": r, "events": events });
        writeln!(out, "{}", serde_json::to_string_pretty(&both)?)?;
        return Ok(0);
    }
    writeln!(out, "run {} ({}), submitted {}", r.name, output::state(&r.state), ago(r.submitted_at_ms))?;
    let mut t = table(&["JOB", "NODE", "RESOURCES", "STATE", "EXIT", "REASON"]);
    for j in &r.jobs {
        t.add_row(vec![
            j.job_num.to_string(),
            j.node_name.clone().unwrap_or_else(|| "-".into()),
            j.allocation.as_ref().map(alloc_line).unwrap_or_else(|| "-".into()),
            job_state(j),
            j.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            job_reason(j),
        ]);
    }
    writeln!(out, "{t}")?;
    if events.is_empty() {
        return Ok(0);
    }
    writeln!(out, "events (the last {RUN_EVENTS}; `corral event --object {run}` for all):")?;
    for e in &events {
        let detail = e.detail.as_deref().map(|d| format!(" {d}")).unwrap_or_default();
        writeln!(out, "  {:>8}  {}{detail}", ago(e.ms), e.action)?;
    }
    Ok(0)
}

pub async fn stop(client: &Client, run: &str, yes: bool, abort: bool, out: Out<'_>) -> anyhow::Result<i32> {
    let verb = if abort { "Abort" } else { "Stop" };
    if !yes && !confirm(&format!("{verb} run {run}?"))? {
        return Ok(1);
    }
    // A stopped run is not started again by its schedule: the schedule goes first.
    if crate::schedules::remove(client, run).await? {
        writeln!(out, "schedule of {run} removed")?;
        let active = match client.get::<api::Run>(&client.project_api(&["runs", run])?).await {
            Ok(r) => !r.state.is_finished(),
            Err(_) => false, // it never started
        };
        if !active {
            return Ok(0);
        }
    }
    let stopping: api::Run = client.post(&client.project_api(&["runs", run, "stop"])?, &StopRun { abort }).await?;
    // Wait for the end: the grace period (`stop_duration`, dstack's default 5 minutes, capped at
    // 10 here) plus time for the node to report.
    let grace = match &stopping.configuration {
        Configuration::Task(t) => t.stop_duration_secs.unwrap_or(600).min(600),
        _ => 300,
    };
    let patience = if abort { 15 } else { grace + 30 };
    let r = wait_finished(client, run, Duration::from_secs(patience)).await?;
    if r.state.is_finished() {
        writeln!(out, "run {run} {}", r.state)?;
        Ok(0)
    } else {
        writeln!(out, "run {run} is {} (the stop was sent; the node has not confirmed yet)", r.state)?;
        Ok(1)
    }
}

pub async fn node_list(client: &Client, json: bool, out: Out<'_>) -> anyhow::Result<i32> {
    let nodes: Vec<api::Node> = client.nodes().await?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&nodes)?)?;
        return Ok(0);
    }
    let mut t = table(&["NAME", "FLEET", "STATUS", "CPU", "MEMORY", "DISK", "GPU", "JOBS", "ADDRESS", "SEEN"]);
    for n in &nodes {
        let (cpu, mem, disk, gpu) = match &n.inventory {
            Some(i) => {
                let gpu = match i.gpus.first() {
                    None if i.tpus.is_empty() => "-".to_owned(),
                    None => format!("{}×TPU", i.tpus.len()),
                    Some(g) => {
                        let mut text =
                            format!("{}×{} ({}), {} busy", i.gpus.len(), g.name, g.memory, n.busy_gpus.len());
                        let out = n.gpus_out_of_service.len();
                        if out > 0 {
                            let total = i.gpus.len();
                            text.push_str(&format!(", {}/{total} healthy", total.saturating_sub(out)));
                        }
                        text
                    }
                };
                (format!("{}×{}", i.cpu_cores, i.arch), i.memory.to_string(), i.disk.to_string(), gpu)
            }
            None => ("?".into(), "?".into(), "?".into(), "?".into()),
        };
        let status = format!("{:?}", n.status).to_lowercase();
        t.add_row(vec![
            n.name.clone(),
            n.fleet.clone().unwrap_or_else(|| "-".into()),
            match (n.cordoned, n.refused.is_some()) {
                (_, true) => format!("{status},refused"),
                (true, _) => format!("{status},cordoned"),
                _ => status,
            },
            cpu,
            mem,
            disk,
            gpu,
            n.running_jobs.to_string(),
            n.address.clone().unwrap_or_default(),
            n.last_seen_ms.map(ago).unwrap_or_default(),
        ]);
    }
    writeln!(out, "{t}")?;
    for n in nodes.iter().filter(|n| n.refused.is_some()) {
        let why = n.refused.as_deref().unwrap_or_default();
        writeln!(out, "{} is refused by fleet {}: {why}", n.name, n.fleet.as_deref().unwrap_or("-"))?;
    }
    for n in &nodes {
        for g in &n.gpus_out_of_service {
            writeln!(
                out,
                "{}: GPU {} out of service since {}: {} (corral node gpu enable {} {} returns it)",
                n.name,
                g.index,
                ago(g.since_ms),
                g.reason,
                n.name,
                g.index
            )?;
        }
    }
    Ok(0)
}
