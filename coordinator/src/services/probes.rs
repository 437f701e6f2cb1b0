//! Readiness probes of service replicas. A replica of a service with `probes` takes traffic only once
//! every probe has answered 2xx `ready_after` times in a row; a failure makes it unready again
//! (unless the probe is `until_ready` and the replica was ready once). Probes are HTTP requests sent
//! through the same tunnels as service traffic, so they test the path users take.
//!
//! One task ticks every second and starts the probes that are due, each in a task of its own; the
//! results live in memory (a coordinator restart probes again from scratch, as dstack does).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use corral_proto::config::{Configuration, HttpMethod, ProbeSpec};
use corral_proto::ids::{JobId, NodeId};

use crate::State;

/// Consecutive successes of each probe of one replica, and when each is next due.
struct Replica {
    successes: Vec<u32>,
    ready_after: Vec<u32>,
    ready_once: bool,
    next_at: Vec<Instant>,
    in_flight: Vec<bool>,
}

#[derive(Default)]
pub struct Probes {
    replicas: Mutex<HashMap<JobId, Replica>>,
}

impl Probes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Replica>> {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a running replica of a service with these probes may take traffic.
    pub fn is_ready(&self, job: &JobId, probes: &[ProbeSpec]) -> bool {
        if probes.is_empty() {
            return true;
        }
        self.lock().get(job).is_some_and(|r| ready(r, probes))
    }
}

fn ready(r: &Replica, probes: &[ProbeSpec]) -> bool {
    probes.iter().zip(&r.successes).all(|(p, &n)| n >= p.ready_after || (p.until_ready && r.ready_once))
}

/// The probes of a service, dstack's defaults applied (none unless the file names some).
pub fn of(cfg: &Configuration) -> &[ProbeSpec] {
    match cfg {
        Configuration::Service(s) => s.probes.as_deref().unwrap_or_default(),
        _ => &[],
    }
}

pub async fn run(state: Arc<State>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = start_due(&state) {
            tracing::warn!("probing replicas failed: {e:#}");
        }
    }
}

/// Starts every probe that is due, and forgets replicas that no longer run.
fn start_due(state: &Arc<State>) -> anyhow::Result<()> {
    let running = state.store.running_replicas()?;
    let now = Instant::now();
    let mut live = HashSet::new();
    let mut due = Vec::new();
    {
        let mut replicas = state.probes.lock();
        for job in &running {
            let probes = of(&job.configuration);
            let (Configuration::Service(svc), Some(node)) = (&job.configuration, &job.node_id) else { continue };
            if probes.is_empty() {
                continue;
            }
            live.insert(job.id.clone());
            let r = replicas.entry(job.id.clone()).or_insert_with(|| Replica {
                successes: vec![0; probes.len()],
                ready_after: probes.iter().map(|p| p.ready_after).collect(),
                ready_once: false,
                next_at: vec![now; probes.len()],
                in_flight: vec![false; probes.len()],
            });
            for (i, p) in probes.iter().enumerate() {
                let settled = p.until_ready && r.ready_once;
                if !r.in_flight[i] && !settled && r.next_at[i] <= now {
                    r.in_flight[i] = true;
                    due.push((node.clone(), job.id.clone(), svc.port, i, p.clone()));
                }
            }
        }
        replicas.retain(|id, _| live.contains(id));
    }
    for (node, job, port, i, probe) in due {
        let state = state.clone();
        tokio::spawn(async move {
            let ok = match tokio::time::timeout(
                Duration::from_secs(probe.timeout_secs),
                once(&state, &node, &job, port, &probe),
            )
            .await
            {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::debug!(job = %job, url = %probe.url, "probe failed: {e:#}");
                    false
                }
                Err(_) => false,
            };
            let mut replicas = state.probes.lock();
            let Some(r) = replicas.get_mut(&job) else { return };
            r.in_flight[i] = false;
            r.next_at[i] = Instant::now() + Duration::from_secs(probe.interval_secs);
            r.successes[i] = if ok { r.successes[i].saturating_add(1) } else { 0 };
            if !r.ready_once && r.successes.iter().zip(&r.ready_after).all(|(n, want)| n >= want) {
                tracing::info!(job = %job, "replica ready: its probes passed");
                r.ready_once = true;
            }
        });
    }
    Ok(())
}

/// The job's variables, its secrets in: what `${{ env.NAME }}` in a probe's URL, header or body
/// names.
fn job_env(state: &State, job: &JobId) -> anyhow::Result<Vec<(String, String)>> {
    let spec = state.store.job(job)?.and_then(|j| j.spec).ok_or_else(|| anyhow::anyhow!("the job has no spec yet"))?;
    Ok(crate::vault::with_secrets(state, &spec).map_err(anyhow::Error::msg)?.env)
}

/// One probe request through a tunnel; `Ok` on a 2xx answer.
async fn once(state: &State, node: &NodeId, job: &JobId, port: u16, probe: &ProbeSpec) -> anyhow::Result<()> {
    let tunnel = crate::nodes::tunnel::open(state, node, job, port).await?;
    let mut sender = crate::nodes::tunnel::http1(tunnel).await?;
    let method = match probe.method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Head => Method::HEAD,
    };
    let interpolated = std::iter::once(probe.url.as_str())
        .chain(probe.body.as_deref())
        .chain(probe.headers.iter().map(|(_, v)| v.as_str()))
        .any(|v| v.contains("${{"));
    let env = if interpolated { job_env(state, job)? } else { Vec::new() };
    let expand = |what: &str, v: &str| {
        crate::vault::with_env(v, &env).map_err(|name| anyhow::anyhow!("probe {what}: the job has no variable {name}"))
    };
    let mut req = Request::builder().method(method).uri(expand("url", &probe.url)?).header("host", "localhost");
    for (k, v) in &probe.headers {
        req = req.header(k, expand(&format!("header {k}"), v)?);
    }
    let body = probe.body.as_deref().map(|b| expand("body", b)).transpose()?;
    let req = req.body(body.map(Body::from).unwrap_or_else(Body::empty))?;
    let resp = sender.send_request(req).await?;
    anyhow::ensure!(resp.status().is_success(), "answered {}", resp.status());
    Ok(())
}
