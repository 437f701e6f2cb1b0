//! Services with a router replica group (dstack's `router: {type: sglang | dynamo}` on one of the
//! `replicas:` groups), done as dstack does them:
//! - the proxy sends the service's requests to the router group's replica only, and only on the
//!   paths dstack lets through to a router (`/generate`, `/v1/...`, `/chat/completions`; any other
//!   is `403`, so the router's `/workers` API is not public);
//! - `sglang`: every [`SYNC_PERIOD`] the coordinator reconciles the router's worker list with the
//!   worker replicas that run (and pass their probes) — dstack's worker sync: `GET /workers` on the
//!   router, `GET /server_info` on each worker (it counts once it answers `status: "ready"`; its
//!   `disaggregation_mode` gives the role, prefill with its bootstrap port), `POST /workers` with
//!   `{url, worker_type, connection_mode: "http", runtime_type: "sglang"[, bootstrap_port]}` for
//!   each new one and `DELETE /workers/{id}` for each listed one that no longer runs. All of it
//!   through the agents' tunnels, as the proxy's requests go.
//! - `dynamo`: each worker replica gets the router's address in `DSTACK_ROUTER_INTERNAL_IP` (and
//!   `CORRAL_ROUTER_ADDRESS`); the Dynamo frontend finds the workers itself.
//!
//! A worker's address, as the router's container reaches it, is its container's name
//! (`corral-<job>`) on the run's Docker network (`corral-run-<run>`, see `shim::network`), which
//! Docker's DNS resolves for containers of that network. A run's network is per node, so the
//! scheduler places each worker replica on its router's node ([`pin`]; with named volumes, only
//! where both allow); were one to run elsewhere, it would not be registered, and the coordinator's
//! log says so once per replica. Corral has no network that spans nodes for service replicas yet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use corral_proto::config::{Configuration, RouterType, ServiceConfig};
use corral_proto::ids::{JobId, NodeId, RunId};
use corral_proto::job::{JobSpec, JobState};

use crate::State;
use crate::store::ActiveService;

/// How often the SGLang routers' worker lists are reconciled (dstack: at least every 5 s).
pub const SYNC_PERIOD: Duration = Duration::from_secs(2);
/// One router's whole reconciliation, and each request of it.
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// What is read of the answers (dstack's limits).
const MAX_WORKERS_BYTES: usize = 2 * 1024 * 1024;
const MAX_SERVER_INFO_BYTES: usize = 256 * 1024;
const MAX_WORKERS_LISTED: usize = 8192;

/// The paths a service with a router takes (dstack's `ROUTER_WHITELISTED_PATHS`): one ending in
/// `/` is a prefix, the others are exact.
const ROUTER_PATHS: [&str; 3] = ["/generate", "/v1/", "/chat/completions"];

/// Whether replica number `num` of `cfg` takes the service's requests: every replica, or only the
/// router group's when the service has one.
pub fn takes_traffic(cfg: &ServiceConfig, num: u32) -> bool {
    match cfg.router_group() {
        None => true,
        Some((router, _)) => cfg.group_of(num).is_some_and(|(g, _)| g == router),
    }
}

/// Whether a request for `path` (below the service's prefix, with its leading `/`) may go to the
/// service: always, unless it has a router, which takes only dstack's inference paths.
pub fn path_allowed(cfg: &ServiceConfig, path: &str) -> bool {
    cfg.router_group().is_none()
        || ROUTER_PATHS.iter().any(|p| if p.ends_with('/') { path.starts_with(p) } else { path == *p })
}

/// The host name a replica's container has on its run's network.
pub fn container_host(job: &JobId) -> String {
    format!("corral-{job}")
}

/// The variables a Dynamo worker replica gets: the router replica's address, once the router has
/// a job. `None`: the service has no Dynamo router, or `num` is the router's own replica.
pub fn dynamo_env(cfg: &ServiceConfig, num: u32, router_job: Option<&JobId>) -> Option<Vec<(String, String)>> {
    let (router, g) = cfg.router_group()?;
    if g.router != Some(RouterType::Dynamo) || cfg.group_of(num).is_some_and(|(i, _)| i == router) {
        return None;
    }
    let host = container_host(router_job?);
    Some(vec![("DSTACK_ROUTER_INTERNAL_IP".to_owned(), host.clone()), ("CORRAL_ROUTER_ADDRESS".to_owned(), host)])
}

/// The service `name` of `project` when `run` is its run and has a router group (what each run is
/// is read once and remembered, so that placing other runs costs a map lookup).
fn routed(state: &State, project: &str, name: &str, run: &RunId) -> Option<Arc<ServiceConfig>> {
    static ROUTED: OnceLock<Mutex<HashMap<RunId, Option<Arc<ServiceConfig>>>>> = OnceLock::new();
    let known = ROUTED.get_or_init(Default::default);
    if let Some(cfg) = known.lock().unwrap_or_else(|e| e.into_inner()).get(run) {
        return cfg.clone();
    }
    let cfg = match state.store.run_by_name(project, name) {
        Ok(Some((id, Configuration::Service(s), _))) if id == *run => s.router_group().is_some().then(|| Arc::new(s)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(%run, "cannot read the run for its router: {e:#}");
            return None;
        }
    };
    let mut known = known.lock().unwrap_or_else(|e| e.into_inner());
    if known.len() > 100_000 {
        known.clear();
    }
    known.insert(run.clone(), cfg.clone());
    cfg
}

/// Where worker replica `num` of a router service may be placed: on its router's node (the run's
/// network, which the router reaches it on, is per node), or not yet (`Err`: why it waits).
/// `None`: any node (not a router service, or the router itself).
pub fn pin(state: &State, project: &str, name: &str, run: &RunId, num: u32) -> Option<Result<NodeId, String>> {
    let cfg = routed(state, project, name, run)?;
    if takes_traffic(&cfg, num) {
        return None;
    }
    let jobs = match state.store.latest_jobs(run) {
        Ok(jobs) => jobs,
        Err(e) => return Some(Err(format!("cannot read the service's router replica: {e:#}"))),
    };
    let Some(router) = jobs.iter().find(|j| takes_traffic(&cfg, j.job_num)) else {
        return Some(Err("waiting for the service's router replica: its workers run on its node".to_owned()));
    };
    Some(match (&router.state, &router.node_id) {
        (s, _) if s.is_finished() => {
            Err(format!("the service's router replica has ended ({s}): its workers run on its node"))
        }
        (_, Some(node)) => Ok(node.clone()),
        (_, None) => {
            Err("waiting for the service's router replica to be placed: its workers run on its node".to_owned())
        }
    })
}

/// Adds the router's address to the spec of a placed Dynamo worker replica (replica `num` of the
/// run `run`, the service `name` of `project`).
pub fn decorate(state: &State, project: &str, name: &str, run: &RunId, num: u32, gang: &mut [(NodeId, JobSpec)]) {
    let Some(cfg) = routed(state, project, name, run) else { return };
    if cfg.router_group().is_none_or(|(_, g)| g.router != Some(RouterType::Dynamo)) {
        return;
    }
    let router_job = match state.store.latest_jobs(run) {
        Ok(jobs) => jobs.into_iter().find(|j| takes_traffic(&cfg, j.job_num)).map(|j| j.id),
        Err(e) => {
            tracing::warn!(%run, "cannot read the run's router replica: {e:#}");
            return;
        }
    };
    if let Some(env) = dynamo_env(&cfg, num, router_job.as_ref()) {
        for (_, spec) in gang.iter_mut() {
            spec.env.extend(env.iter().cloned());
        }
    }
}

/// A worker as the router is told of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Worker {
    pub url: String,
    /// `regular`, `prefill` or `decode`.
    pub worker_type: String,
    pub bootstrap_port: Option<u64>,
}

impl Worker {
    /// The body of its `POST /workers` (dstack's, for an HTTP SGLang worker).
    pub fn body(&self) -> Value {
        let mut b = json!({
            "url": self.url,
            "worker_type": self.worker_type,
            "connection_mode": "http",
            "runtime_type": "sglang",
        });
        if let Some(port) = self.bootstrap_port {
            b["bootstrap_port"] = json!(port);
        }
        b
    }
}

/// The worker a replica at `url` is, from its `/server_info` answer; `None` until it says it is
/// ready (dstack's rule).
pub fn worker_from_server_info(url: &str, info: &Value) -> Option<Worker> {
    if info.get("status").and_then(Value::as_str) != Some("ready") {
        return None;
    }
    let mode = info.get("disaggregation_mode").and_then(Value::as_str).unwrap_or_default();
    let worker_type = if mode == "prefill" || mode == "decode" { mode } else { "regular" };
    let bootstrap_port =
        if mode == "prefill" { info.get("disaggregation_bootstrap_port").and_then(Value::as_u64) } else { None };
    Some(Worker { url: url.to_owned(), worker_type: worker_type.to_owned(), bootstrap_port })
}

/// A worker the router lists: its id (for `DELETE /workers/{id}`) and URL.
#[derive(Clone, Debug, PartialEq)]
pub struct Listed {
    pub id: Option<String>,
    pub url: String,
}

/// The router's `GET /workers` answer: `{"workers": [{"id", "url", ...}]}`.
pub fn listed_workers(answer: &Value) -> Vec<Listed> {
    let Some(workers) = answer.get("workers").and_then(Value::as_array) else { return Vec::new() };
    workers
        .iter()
        .take(MAX_WORKERS_LISTED)
        .filter_map(|w| {
            let url = w.get("url")?.as_str().filter(|u| !u.is_empty())?.to_owned();
            let id = w.get("id").and_then(Value::as_str).filter(|i| !i.is_empty()).map(str::to_owned);
            Some(Listed { id, url })
        })
        .collect()
}

/// One call to the router's API.
#[derive(Clone, Debug, PartialEq)]
pub enum Call {
    /// `POST /workers` with the body.
    Add(Value),
    /// `DELETE /workers/{id}` (the worker at `url`).
    Remove { id: String, url: String },
}

fn normalize(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

/// The calls that make the router's list (`current`) the running workers (`target`): each
/// target it lacks is added, and each it lists that is not a target is removed (by id; one
/// without an id cannot be, and is left). Both in URL order.
pub fn calls(current: &[Listed], target: &[Worker]) -> Vec<Call> {
    let listed: BTreeMap<String, Option<&String>> =
        current.iter().map(|l| (normalize(&l.url), l.id.as_ref())).collect();
    let wanted: BTreeMap<String, &Worker> = target.iter().map(|w| (normalize(&w.url), w)).collect();
    let mut out: Vec<Call> =
        wanted.iter().filter(|(url, _)| !listed.contains_key(*url)).map(|(_, w)| Call::Add(w.body())).collect();
    for (url, id) in &listed {
        if !wanted.contains_key(url) {
            match id {
                Some(id) => out.push(Call::Remove { id: (*id).clone(), url: url.clone() }),
                None => tracing::warn!(url, "the router lists a worker without an id: it cannot be removed"),
            }
        }
    }
    out
}

/// Reconciles every SGLang router's worker list every [`SYNC_PERIOD`].
pub async fn run(state: Arc<State>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SYNC_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let services = match state.store.active_services() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("reading services for their routers failed: {e:#}");
                continue;
            }
        };
        let syncs = services
            .iter()
            .filter(|s| s.config.router_group().is_some_and(|(_, g)| g.router == Some(RouterType::Sglang)))
            .map(|s| async {
                match tokio::time::timeout(SYNC_TIMEOUT, sync(&state, s)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(service = %s.name, "router worker sync: {e:#}"),
                    Err(_) => tracing::debug!(service = %s.name, "router worker sync took over {SYNC_TIMEOUT:?}"),
                }
            });
        futures_util::future::join_all(syncs).await;
    }
}

/// Workers on another node than their router, already said in the log.
fn said_elsewhere() -> &'static Mutex<HashSet<JobId>> {
    static SAID: OnceLock<Mutex<HashSet<JobId>>> = OnceLock::new();
    SAID.get_or_init(Default::default)
}

/// One reconciliation of a service's SGLang router with its running workers.
async fn sync(state: &State, service: &ActiveService) -> anyhow::Result<()> {
    let cfg = &service.config;
    let probes = cfg.probes.as_deref().unwrap_or_default();
    let jobs = state.store.latest_jobs(&service.run)?;
    let running = |j: &&crate::store::JobRow| j.state == JobState::Running && j.node_id.is_some();
    let Some(router) = jobs.iter().filter(running).find(|j| takes_traffic(cfg, j.job_num)) else { return Ok(()) };
    let Some(router_node) = router.node_id.clone() else { return Ok(()) };
    let current = match get_json(state, &router_node, &router.id, cfg.port, "/workers", MAX_WORKERS_BYTES).await {
        Ok(answer) => listed_workers(&answer),
        // Not serving yet (starting): the next round asks again.
        Err(e) => anyhow::bail!("the router does not answer GET /workers yet: {e:#}"),
    };
    let mut asks = Vec::new();
    for j in jobs.iter().filter(running).filter(|j| !takes_traffic(cfg, j.job_num)) {
        if !state.probes.is_ready(&j.id, probes) || state.autoscaler.is_draining(&j.id) {
            continue;
        }
        let Some(node) = &j.node_id else { continue };
        if *node != router_node {
            let mut said = said_elsewhere().lock().unwrap_or_else(|e| e.into_inner());
            if said.len() > 100_000 {
                said.clear();
            }
            if said.insert(j.id.clone()) {
                tracing::warn!(
                    service = %service.name, job = %j.id, %node, router_node = %router_node,
                    "worker replica runs on another node than the service's router: not registered \
                     (a run's network does not span nodes)"
                );
            }
            continue;
        }
        let url = format!("http://{}:{}", container_host(&j.id), cfg.port);
        asks.push(async move {
            match get_json(state, node, &j.id, cfg.port, "/server_info", MAX_SERVER_INFO_BYTES).await {
                Ok(info) => worker_from_server_info(&url, &info),
                Err(e) => {
                    tracing::debug!(job = %j.id, "worker not ready (GET /server_info): {e:#}");
                    None
                }
            }
        });
    }
    // All workers at once: one slow worker does not hold up the others' registration.
    let target: Vec<Worker> = futures_util::future::join_all(asks).await.into_iter().flatten().collect();
    for call in calls(&current, &target) {
        let (method, path, body) = match &call {
            Call::Add(body) => (Method::POST, "/workers".to_owned(), Some(body.clone())),
            Call::Remove { id, .. } => (Method::DELETE, format!("/workers/{id}"), None),
        };
        match request(state, &router_node, &router.id, cfg.port, method, &path, body, 64 * 1024).await {
            Ok((status, _)) if status.is_success() => {
                tracing::info!(service = %service.name, ?call, "router worker list updated");
            }
            Ok((status, answer)) => tracing::warn!(
                service = %service.name, ?call, %status,
                "the router refused: {}", String::from_utf8_lossy(&answer)
            ),
            Err(e) => tracing::warn!(service = %service.name, ?call, "the router did not answer: {e:#}"),
        }
    }
    Ok(())
}

/// `GET path` on a replica's port, answered `200` with JSON.
async fn get_json(
    state: &State,
    node: &NodeId,
    job: &JobId,
    port: u16,
    path: &str,
    limit: usize,
) -> anyhow::Result<Value> {
    let (status, body) = request(state, node, job, port, Method::GET, path, None, limit).await?;
    anyhow::ensure!(status == StatusCode::OK, "answered {status}");
    Ok(serde_json::from_slice(&body)?)
}

/// One HTTP/1.1 request to a replica's port through a tunnel; the status and at most `limit`
/// bytes of the answer.
#[allow(clippy::too_many_arguments)]
async fn request(
    state: &State,
    node: &NodeId,
    job: &JobId,
    port: u16,
    method: Method,
    path: &str,
    body: Option<Value>,
    limit: usize,
) -> anyhow::Result<(StatusCode, bytes::Bytes)> {
    let once = async {
        let tunnel = crate::nodes::tunnel::open(state, node, job, port).await?;
        let mut sender = crate::nodes::tunnel::http1(tunnel).await?;
        let req = Request::builder().method(method).uri(path).header("host", "localhost");
        let req = match body {
            Some(b) => req.header("content-type", "application/json").body(Body::from(serde_json::to_vec(&b)?))?,
            None => req.body(Body::empty())?,
        };
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = axum::body::to_bytes(Body::new(resp.into_body()), limit).await?;
        anyhow::Ok((status, bytes))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, once)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests;
