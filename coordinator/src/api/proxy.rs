//! Traffic into containers, through tunnels over the agents' own connections:
//! - `/proxy/services/<project>/<run>/...`: a service's HTTP endpoint, balanced over its running
//!   replicas, with the service's `auth` and `strip_prefix`; upgrades (WebSockets) and streamed
//!   bodies pass through;
//! - `GET /api/projects/<project>/runs/<run>/tunnel?port=P`: a raw byte pipe to a port of a run's
//!   container (HTTP `Upgrade: corral-tunnel`), what `corral attach` forwards local ports over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use corral_proto::api::TUNNEL_PROTOCOL;
use corral_proto::config::Configuration;
use corral_proto::ids::{JobId, NodeId, RunId};
use corral_proto::job::JobState;

use super::{AppState, Error, bearer_token, check_project, err};
use crate::State;
use crate::nodes::tunnel::{self, Tunnel};
use crate::secrets::sha256_hex;
use crate::store::ActiveService;

/// How long the proxy trusts what it read of a service (its newest run, its ready replicas): a
/// request reads the store at most this often per service. A replica that went away meanwhile
/// fails its tunnel, and the request goes to the next one.
const ROUTE_TTL: Duration = Duration::from_millis(250);

/// A service as the proxy sees it: its newest deployment and the replicas that take traffic.
struct Route {
    service: ActiveService,
    /// The service has a desired replica count (it was not stopped and did not fail).
    active: bool,
    ready: Vec<(NodeId, JobId, u16)>,
}

/// (project, service name)
type ServiceKey = (String, String);

/// Where requests go: what the proxy read of each service lately, and where the next request of
/// each goes (round robin over its ready replicas).
#[derive(Default)]
pub struct Balancer {
    next: Mutex<HashMap<RunId, usize>>,
    routes: Mutex<HashMap<ServiceKey, (tokio::time::Instant, Arc<Route>)>>,
    /// Tokens found valid lately (by hash), so that a request does not read the store for them.
    tokens: Mutex<HashMap<String, tokio::time::Instant>>,
    /// Services' `rate_limits`.
    limits: super::ratelimit::RateLimits,
}

impl Balancer {
    /// The service `name` of `project` (`None`: there is none), from the store at most every
    /// [`ROUTE_TTL`].
    fn route(&self, state: &State, project: &str, name: &str) -> Result<Option<Arc<Route>>, Error> {
        let key = (project.to_owned(), name.to_owned());
        if let Some((at, route)) = self.routes.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && at.elapsed() < ROUTE_TTL
        {
            return Ok(Some(route.clone()));
        }
        check_project(state, project)?;
        let Some((run, Configuration::Service(config), submitted_ms)) = state.store.run_by_name(project, name)? else {
            return Ok(None);
        };
        let desired = state.store.replicas(&run)?;
        let ready = if desired.is_some() { ready_replicas(state, project, name)? } else { Vec::new() };
        let service = ActiveService {
            run,
            project: project.to_owned(),
            name: name.to_owned(),
            config,
            replicas: desired.unwrap_or(0),
            submitted_ms,
        };
        let route = Arc::new(Route { service, active: desired.is_some(), ready });
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes.len() > 10_000 {
            routes.retain(|_, (at, _)| at.elapsed() < ROUTE_TTL);
        }
        routes.insert(key, (tokio::time::Instant::now(), route.clone()));
        Ok(Some(route))
    }

    /// Forgets what was read of a service (none of its replicas answered).
    fn forget(&self, project: &str, name: &str) {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&(project.to_owned(), name.to_owned()));
    }

    fn pick(&self, run: &RunId, n: usize) -> usize {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let i = next.entry(run.clone()).or_insert(0);
        let pick = *i % n.max(1);
        *i = i.wrapping_add(1);
        pick
    }
}

/// A request to `<run>.<services domain>` (any path) is the service `<run>` of the default project,
/// which sees the path as sent.
#[derive(Clone, Copy)]
struct ByHost;

pub(super) async fn by_host(Extract(state): Extract<AppState>, mut req: Request, next: Next) -> Response {
    let run = state.config.services_domain.as_deref().and_then(|domain| {
        let host = req.headers().get(header::HOST)?.to_str().ok()?;
        let host =
            host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
        let run = host.to_ascii_lowercase().strip_suffix(domain)?.strip_suffix('.')?.to_owned();
        (!run.is_empty() && !run.contains('.')).then_some(run)
    });
    let Some(run) = run else { return next.run(req).await };
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let project = corral_proto::api::DEFAULT_PROJECT;
    match format!("/proxy/services/{project}/{run}{path_and_query}").parse::<Uri>() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("bad path: {e}")).into_response(),
    }
    req.extensions_mut().insert(ByHost);
    service(Extract(state), req).await
}

/// `/proxy/services/{project}/{run}` and everything below it.
pub(super) async fn service(Extract(state): Extract<AppState>, req: Request) -> Response {
    let started = std::time::Instant::now();
    let mut known = None;
    let response = match serve_service(&state, req, &mut known).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    // Counted per service that exists: a path naming none adds no series.
    if let Some((project, name)) = known {
        let seconds = started.elapsed().as_secs_f64();
        state.telemetry.proxied(&project, &name, response.status().as_u16(), seconds);
    }
    response
}

async fn serve_service(
    state: &State,
    mut req: Request,
    known: &mut Option<(String, String)>,
) -> Result<Response, Error> {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/proxy/services/").unwrap_or_default();
    let mut parts = rest.splitn(3, '/');
    let (project, name) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let below = parts.next();
    let Some(route) = state.balancer.route(state, project, name)? else {
        return Err(err(StatusCode::NOT_FOUND, format!("no service named {name:?} in project {project:?}")));
    };
    *known = Some((project.to_owned(), name.to_owned()));
    let cfg = &route.service.config;
    // Before auth, as nginx's `limit_req` is: a flood costs no token lookups.
    if !cfg.rate_limits.is_empty() {
        let peer = super::ratelimit::peer(req.extensions());
        let seen_as = format!("/{}", below.unwrap_or_default());
        if let Err(limited) =
            state.balancer.limits.check(&route.service.run, &cfg.rate_limits, &seen_as, peer, req.headers())
        {
            return Ok(too_many_requests(name, &limited));
        }
    }
    if cfg.auth {
        if let Err(refused) = authorized(state, req.headers(), project, Some(name)) {
            let unauthorized = refused.0 == StatusCode::UNAUTHORIZED;
            let mut e = if unauthorized {
                err(
                    StatusCode::UNAUTHORIZED,
                    format!(
                        "service {name:?} needs a Corral token of a member of project {project} or one made for it (`corral token create --service {name}`): send `Authorization: Bearer <token>`"
                    ),
                )
                .into_response()
            } else {
                refused.into_response()
            };
            if unauthorized {
                e.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return Ok(e);
        }
        // The token is the coordinator's business, not the application's.
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    // Reached by its own host name, a service sees the path as sent.
    let strip = cfg.strip_prefix || req.extensions().get::<ByHost>().is_some();
    let target = if strip { format!("/{}{query}", below.unwrap_or_default()) } else { format!("{path}{query}") };
    *req.uri_mut() = target.parse::<Uri>().map_err(|e| err(StatusCode::BAD_REQUEST, format!("bad path: {e}")))?;
    // A service with a router takes only the router's inference paths (dstack's rule).
    if !crate::services::router_groups::path_allowed(cfg, &format!("/{}", below.unwrap_or_default())) {
        return Err(err(StatusCode::FORBIDDEN, format!("path not allowed for service {name:?}: it has a router")));
    }
    if !route.active {
        return Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("service {name:?} is not running (see `corral ps -a`)"),
        ));
    }
    to_replicas(state, &route.service, route.ready.clone(), req).await
}

/// `429 Too Many Requests`, with `Retry-After` (whole seconds) and which limit it met.
fn too_many_requests(name: &str, limited: &super::ratelimit::Limited) -> Response {
    let secs = limited.retry_after_secs();
    let burst = if limited.burst > 0 { format!(" + burst {}", limited.burst) } else { String::new() };
    let mut r = err(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "service {name:?}: rate limit for {} exceeded ({} requests per second{burst}); retry after {secs} s",
            limited.prefix, limited.rps
        ),
    )
    .into_response();
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Whether the request may call the service `project/run` (`run`: `None` for the project's model
/// route): `Err` is the refusal to answer (`401` without a valid token, `403` for a token of no
/// member). A token let in is remembered for [`ROUTE_TTL`] per service, so that a busy service
/// reads the store for it at most that often.
pub(super) fn authorized(state: &State, headers: &HeaderMap, project: &str, run: Option<&str>) -> Result<(), Error> {
    let token = bearer_token(headers).unwrap_or_default();
    let key = format!("{}\0{project}\0{}", sha256_hex(token.as_bytes()), run.unwrap_or_default());
    let tokens = &state.balancer.tokens;
    if tokens.lock().unwrap_or_else(|e| e.into_inner()).get(&key).is_some_and(|at| at.elapsed() < ROUTE_TTL) {
        return Ok(());
    }
    super::access::may_call_service(state, headers, project, run)?;
    let mut tokens = tokens.lock().unwrap_or_else(|e| e.into_inner());
    if tokens.len() > 10_000 {
        tokens.retain(|_, at| at.elapsed() < ROUTE_TTL);
    }
    tokens.insert(key, tokio::time::Instant::now());
    Ok(())
}

/// Sends a request (its path already the replica's) to one of a service's ready replicas (`ready`
/// as last read; empty: read them now), waiting for one when there is none yet. A replica that
/// cannot be reached (its container is gone, its server not listening yet) does not fail the
/// request: the next one is tried, and when none connects, all again for a few seconds.
pub(super) async fn to_replicas(
    state: &State,
    service: &ActiveService,
    mut ready: Vec<(NodeId, JobId, u16)>,
    req: Request,
) -> Result<Response, Error> {
    let (run_id, name) = (&service.run, service.name.as_str());
    state.autoscaler.record(run_id);
    // A request without a body can go out with the tunnel's opening (a round trip saved) and be
    // sent again to the next replica when the agent cannot connect; one with a body waits for
    // the tunnel, since its body can be sent only once.
    let resend = bodiless(&req);
    let deadline = tokio::time::Instant::now() + CONNECT_RETRY;
    loop {
        let replicas = match std::mem::take(&mut ready) {
            r if r.is_empty() => wait_ready(state, run_id, &service.project, name).await?,
            r => r,
        };
        let first = state.balancer.pick(run_id, replicas.len());
        let mut last = None;
        for k in 0..replicas.len() {
            let (node, job, port) = &replicas[(first + k) % replicas.len()];
            if let Some(copy) = resend.as_ref() {
                let attempt = match tunnel::open_pipelined(state, node, job, *port).await {
                    Ok(t) => forward(t, copy.request(), *port).await,
                    Err(e) => Err(Unreached(e)),
                };
                match attempt {
                    Err(Unreached(e)) => {
                        tracing::debug!(service = name, job = %job, "replica unreachable: {e}");
                        last = Some(e);
                    }
                    other => return other.map_err(|e| e.into_error()),
                }
                continue;
            }
            match tunnel::open(state, node, job, *port).await {
                Ok(t) => return forward(t, req, *port).await.map_err(|e| e.into_error()),
                Err(e) => {
                    tracing::debug!(service = name, job = %job, "replica unreachable: {e}");
                    last = Some(e);
                }
            }
        }
        state.balancer.forget(&service.project, name);
        if tokio::time::Instant::now() > deadline {
            let why = last.map(|e| e.to_string()).unwrap_or_default();
            return Err(err(StatusCode::BAD_GATEWAY, format!("no replica of service {name:?} answered: {why}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a request waits for a ready replica (a service scaled to zero starts one for it).
const REPLICA_WAIT: Duration = Duration::from_secs(300);
/// How long a request keeps trying when no ready replica accepts a connection.
const CONNECT_RETRY: Duration = Duration::from_secs(5);

/// The ready replicas; when there are none yet, waits for one rather than failing the request (a
/// service scaled to zero, replicas starting or not yet passing their probes).
async fn wait_ready(state: &State, run: &RunId, project: &str, name: &str) -> Result<Vec<(NodeId, JobId, u16)>, Error> {
    let ended =
        || err(StatusCode::SERVICE_UNAVAILABLE, format!("service {name:?} is not running (see `corral ps -a`)"));
    if state.store.replicas(run)?.is_none() {
        return Err(ended());
    }
    let replicas = ready_replicas(state, project, name)?;
    if !replicas.is_empty() {
        return Ok(replicas);
    }
    let _waiting = state.autoscaler.wait_for_replica(run);
    let deadline = tokio::time::Instant::now() + REPLICA_WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let replicas = ready_replicas(state, project, name)?;
        if !replicas.is_empty() {
            return Ok(replicas);
        }
        if state.store.replicas(run)?.is_none() {
            return Err(ended());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(err(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("service {name:?} has had no ready replica for {} s", REPLICA_WAIT.as_secs()),
            ));
        }
    }
}

/// The replicas that take traffic, as (node, job, port): those of every active deployment of the
/// service (more than one during a rolling update) that run, pass their probes and are not
/// draining.
fn ready_replicas(state: &State, project: &str, name: &str) -> Result<Vec<(NodeId, JobId, u16)>, Error> {
    let mut out = Vec::new();
    for d in state.store.active_deployments(project, name)? {
        let probes = d.config.probes.as_deref().unwrap_or_default();
        for j in state.store.latest_jobs(&d.run)? {
            if j.state == JobState::Running
                && state.probes.is_ready(&j.id, probes)
                && !state.autoscaler.is_draining(&j.id)
                && crate::services::router_groups::takes_traffic(&d.config, j.job_num)
                && let Some(node) = j.node_id
            {
                out.push((node, j.id, d.config.port));
            }
        }
    }
    Ok(out)
}

/// Headers that describe one hop and are not forwarded (RFC 9110 §7.6.1); `Connection` and
/// `Upgrade` travel with an upgrade request.
fn strip_hop_headers(headers: &mut HeaderMap, upgrading: bool) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .filter(|s| !upgrading || s != "upgrade")
        .collect();
    for h in named {
        headers.remove(h.as_str());
    }
    for h in ["keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding"] {
        headers.remove(h);
    }
    if !upgrading {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// What a bodiless request needs to be sent again.
struct Resend {
    method: axum::http::Method,
    uri: Uri,
    version: axum::http::Version,
    headers: HeaderMap,
}

impl Resend {
    fn request(&self) -> Request {
        let mut req = Request::new(Body::empty());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// A copy of the request when it has no body (and asks for no upgrade), for sending it again.
fn bodiless(req: &Request) -> Option<Resend> {
    let h = req.headers();
    let no_body = !h.contains_key(header::TRANSFER_ENCODING)
        && h.get(header::CONTENT_LENGTH).is_none_or(|v| v.as_bytes() == b"0")
        && !h.contains_key(header::UPGRADE);
    no_body.then(|| Resend {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: h.clone(),
    })
}

/// Why forwarding failed: the agent could not reach the replica (the request may go to another),
/// or the replica failed it.
enum ForwardError {
    Unreached(tunnel::TunnelError),
    Failed(Error),
}
use ForwardError::Unreached;

impl ForwardError {
    fn into_error(self) -> Error {
        match self {
            Unreached(e) => err(StatusCode::BAD_GATEWAY, e.to_string()),
            ForwardError::Failed(e) => e,
        }
    }
}

/// The agent's refusal inside a hyper error from a pipelined tunnel.
fn refusal(e: &hyper::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return Some(io.to_string());
        }
        source = s.source();
    }
    None
}

/// Sends one request over a fresh tunnel and streams the answer back; a `101 Switching Protocols`
/// joins the two upgraded connections.
async fn forward<T>(tunnel: T, mut req: Request, port: u16) -> Result<Response, ForwardError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let bad_gateway = |e: hyper::Error| match refusal(&e) {
        Some(words) => Unreached(tunnel::TunnelError::Refused(words)),
        None => ForwardError::Failed(err(StatusCode::BAD_GATEWAY, format!("replica on port {port}: {e}"))),
    };
    let mut sender = tunnel::http1(tunnel).await.map_err(bad_gateway)?;
    let upgrading = req.headers().contains_key(header::UPGRADE);
    let client_side = upgrading.then(|| hyper::upgrade::on(&mut req));
    strip_hop_headers(req.headers_mut(), upgrading);
    let mut resp = sender.send_request(req).await.map_err(bad_gateway)?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_side) = client_side
    {
        let replica_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client_side, replica_side) {
                Ok((client, replica)) => {
                    let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(replica)).await;
                }
                Err(e) => tracing::debug!("upgrade through the proxy failed: {e}"),
            }
        });
    } else {
        strip_hop_headers(resp.headers_mut(), false);
    }
    Ok(resp.map(Body::new))
}

#[derive(Deserialize)]
pub(super) struct TunnelQuery {
    port: u16,
    #[serde(default)]
    job: u32,
}

/// `GET /api/projects/{project}/runs/{name}/tunnel?port=P[&job=K]` with `Upgrade: corral-tunnel`:
/// answers `101` once the agent has connected to the port, then pipes bytes both ways.
pub(super) async fn port_tunnel(
    Extract(state): Extract<AppState>,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<TunnelQuery>,
    mut req: Request,
) -> Result<Response, Error> {
    expect_upgrade(&req, TUNNEL_PROTOCOL)?;
    let (node, job) = running_job(&state, &project, &name, q.job)?;
    let tunnel = tunnel::open(&state, &node, &job, q.port).await.map_err(tunnel_error)?;
    let connected = state.activity.connect(&job);
    Ok(switch(&mut req, TUNNEL_PROTOCOL, tunnel, connected))
}

#[derive(Deserialize)]
pub(super) struct SshQuery {
    #[serde(default)]
    job: u32,
    /// The user's public key, an OpenSSH `authorized_keys` line.
    key: String,
}

/// `GET /api/projects/{project}/runs/{name}/ssh?key=<public key>[&job=K]` with `Upgrade:
/// corral-tunnel`: the agent serves SSH for the job's container on the upgraded connection, and
/// lets in only that key. `corral ssh-proxy` (the `ProxyCommand` of `ssh RUN`) calls it.
pub(super) async fn ssh_tunnel(
    Extract(state): Extract<AppState>,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<SshQuery>,
    mut req: Request,
) -> Result<Response, Error> {
    expect_upgrade(&req, TUNNEL_PROTOCOL)?;
    let key = q.key.trim();
    if key.split_whitespace().count() < 2 || key.contains('\n') {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "key: give one OpenSSH public key line (`ssh-ed25519 AAAA... comment`)",
        ));
    }
    let (node, job) = running_job(&state, &project, &name, q.job)?;
    let tunnel = tunnel::open_ssh(&state, &node, &job, vec![key.to_owned()]).await.map_err(tunnel_error)?;
    let connected = state.activity.connect(&job);
    Ok(switch(&mut req, TUNNEL_PROTOCOL, tunnel, connected))
}

/// `426 Upgrade Required` unless the request asks to upgrade to `protocol`.
pub(super) fn expect_upgrade(req: &Request, protocol: &str) -> Result<(), Error> {
    let wants = req.headers().get(header::UPGRADE).and_then(|v| v.to_str().ok());
    if wants.is_some_and(|v| v.eq_ignore_ascii_case(protocol)) {
        Ok(())
    } else {
        Err(err(StatusCode::UPGRADE_REQUIRED, format!("send `Upgrade: {protocol}`")))
    }
}

/// The node and id of a run's job `job`, which must be running.
pub(super) fn running_job(state: &State, project: &str, name: &str, job: u32) -> Result<(NodeId, JobId), Error> {
    let run = super::find_run(state, project, name)?;
    let Some(j) = run.jobs.iter().find(|j| j.job_num == job) else {
        return Err(err(StatusCode::NOT_FOUND, format!("run {name:?} has no job {job}")));
    };
    match (&j.state, &j.node_id) {
        (JobState::Running, Some(node)) => Ok((node.clone(), j.id.clone())),
        (state, _) => Err(err(
            StatusCode::CONFLICT,
            format!("job {job} of run {name:?} is {state}, not running: nothing to connect to"),
        )),
    }
}

/// What the agent said when it could not connect, or why the node could not be asked.
pub(super) fn tunnel_error(e: tunnel::TunnelError) -> Error {
    match e {
        tunnel::TunnelError::Refused(m) => err(StatusCode::BAD_GATEWAY, m),
        other => err(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    }
}

/// Answers `101 Switching Protocols` and, once the client's side is upgraded, pipes it to `tunnel`.
/// The connection counts as someone connected to the job (`connected`) until it closes.
pub(super) fn switch(
    req: &mut Request,
    protocol: &'static str,
    tunnel: Tunnel,
    connected: crate::scheduling::activity::Connected,
) -> Response {
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let _connected = connected;
        match on_upgrade.await {
            Ok(client) => {
                let mut tunnel = tunnel;
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut tunnel).await;
            }
            Err(e) => tracing::debug!("upgrade failed: {e}"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(protocol));
    resp
}
