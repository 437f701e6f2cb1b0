//! The HTTP API. Handlers parse the request, call the store, and answer JSON; every error is
//! `{"error": "..."}` with a status that fits. Each route is added with the rule that says who may
//! call it, applied before its handler ([`access`]); under `/proxy/services/` each service's `auth`
//! decides ([`proxy`]), and `/proxy/models/` checks the caller itself ([`models`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, RawPathParams, Request, State as Extract};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use corral_proto::api::{self, ApiError, NameKind, StopRun, SubmitRun};
use corral_proto::ids::{JobId, RunId};
use corral_proto::job::TerminationReason;

use crate::State;
use crate::secrets::{now_ms, random_hex};
use crate::store;

pub mod access;
mod backends;
mod cluster;
mod exec;
mod images;
mod install;
pub mod metrics;
mod models;
mod proxy;
mod ratelimit;
mod schedules;
mod secrets;
mod teams;
mod tls;
mod tokens;
mod uploads;
mod volumes;

pub use install::AgentDist;
pub use proxy::Balancer;

type AppState = Arc<State>;

/// Serves the API on `listener`, over TLS when given its configuration.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<rustls::ServerConfig>,
    state: AppState,
    shutdown: CancellationToken,
) {
    // The peer's address reaches handlers (services' `rate_limits` count per client IP).
    let app = router(state);
    let result = match tls {
        Some(config) => match tls::TlsListener::new(listener, config, shutdown.child_token()) {
            Ok(listener) => {
                let app = app.into_make_service_with_connect_info::<ratelimit::PeerAddr>();
                axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
            }
            Err(e) => Err(e),
        },
        None => {
            // Without TCP_NODELAY a response written in two parts (head, body) waits on the
            // client's delayed ACK: tens of milliseconds on proxied requests.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY: {e}");
                }
            });
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
        }
    };
    if let Err(e) = result {
        tracing::error!("http server failed: {e}");
    }
}

/// Every route, with its rule ([`access::Rule`]) and action, and the middleware that applies them.
pub fn router(state: AppState) -> Router {
    router_and_table(state).0
}

/// Every route as the router serves it: method, path pattern, rule and action (for the
/// authorization matrix test, and for the docs).
pub fn route_table(state: AppState) -> Vec<access::Route> {
    router_and_table(state).1
}

fn router_and_table(state: AppState) -> (Router, Vec<access::Route>) {
    use access::Method::{Any, Delete, Get, Post, Put};
    use access::Rule::{Admin, Open, Project, SelfOrAdmin, Token, User};
    use corral_proto::api::ProjectRole::{Admin as ProjectAdmin, Manager, User as Member};
    let (api, mut table) = access::Routes::new()
        .route(Get, "/api/whoami", Token, "whoami", teams::whoami)
        .route(Post, "/api/users", Admin, "user.create", teams::create_user)
        .route(Get, "/api/users", Admin, "user.list", teams::list_users)
        .route(Delete, "/api/users/{user}", Admin, "user.delete", teams::delete_user)
        .route(Post, "/api/users/{user}/token", SelfOrAdmin, "user.token", teams::rotate_token)
        .route(Post, "/api/projects", User, "project.create", teams::create_project)
        .route(Get, "/api/projects", User, "project.list", teams::list_projects)
        .route(Delete, "/api/projects/{project}", Project(ProjectAdmin), "project.delete", teams::delete_project)
        .route(Get, "/api/projects/{project}/members", Project(Member), "member.list", teams::list_members)
        .route(Put, "/api/projects/{project}/members/{user}", Project(Manager), "member.set", teams::set_member)
        .route(
            Delete,
            "/api/projects/{project}/members/{user}",
            Project(Manager),
            "member.remove",
            teams::remove_member,
        )
        .route(
            Post,
            "/api/projects/{project}/service-tokens",
            Project(Member),
            "service-token.create",
            teams::create_service_token,
        )
        .route(
            Get,
            "/api/projects/{project}/service-tokens",
            Project(Member),
            "service-token.list",
            teams::list_service_tokens,
        )
        .route(
            Delete,
            "/api/projects/{project}/service-tokens/{id}",
            Project(Member),
            "service-token.delete",
            teams::delete_service_token,
        )
        .route(Get, "/api/projects/{project}/events", Project(Member), "event.list", teams::project_events)
        .route(Get, "/api/events", Admin, "event.list", teams::all_events)
        .route(Post, "/api/projects/{project}/runs", Project(Member), "run.apply", submit_run)
        .route(Get, "/api/projects/{project}/runs", Project(Member), "run.list", list_runs)
        .route(Get, "/api/projects/{project}/runs/{name}", Project(Member), "run.get", get_run)
        .route(Post, "/api/projects/{project}/runs/{name}/stop", Project(Member), "run.stop", stop_run)
        .route(Get, "/api/projects/{project}/runs/{name}/logs", Project(Member), "run.logs", run_logs)
        .route(Get, "/api/projects/{project}/runs/{name}/metrics", Project(Member), "run.metrics", metrics::run_metrics)
        .route(Get, "/api/projects/{project}/runs/{name}/tunnel", Project(Member), "run.tunnel", proxy::port_tunnel)
        .route(Get, "/api/projects/{project}/runs/{name}/exec", Project(Member), "run.exec", exec::exec)
        .route(Get, "/api/projects/{project}/runs/{name}/ssh", Project(Member), "run.ssh", proxy::ssh_tunnel)
        .route(Post, "/api/projects/{project}/schedules", Project(Member), "schedule.apply", schedules::register)
        .route(Get, "/api/projects/{project}/schedules", Project(Member), "schedule.list", schedules::list)
        .route(
            Delete,
            "/api/projects/{project}/schedules/{name}",
            Project(Member),
            "schedule.delete",
            schedules::remove,
        )
        .route(Post, "/api/projects/{project}/fleets", Project(Manager), "fleet.apply", cluster::put_fleet)
        .route(Get, "/api/projects/{project}/fleets", Project(Member), "fleet.list", cluster::list_fleets)
        .route(Get, "/api/projects/{project}/fleets/{name}", Project(Member), "fleet.get", cluster::get_fleet)
        .route(Delete, "/api/projects/{project}/fleets/{name}", Project(Manager), "fleet.delete", cluster::delete_fleet)
        .route(Get, "/api/projects/{project}/secrets", Project(Manager), "secret.list", secrets::list)
        .route(Put, "/api/projects/{project}/secrets/{name}", Project(Manager), "secret.set", secrets::set)
        .route(Delete, "/api/projects/{project}/secrets/{name}", Project(Manager), "secret.delete", secrets::remove)
        .route(Post, "/api/projects/{project}/volumes", Project(Manager), "volume.apply", volumes::put_volume)
        .route(Get, "/api/projects/{project}/volumes", Project(Member), "volume.list", volumes::list_volumes)
        .route(Get, "/api/projects/{project}/volumes/{name}", Project(Member), "volume.get", volumes::get_volume)
        .route(
            Delete,
            "/api/projects/{project}/volumes/{name}",
            Project(Manager),
            "volume.delete",
            volumes::delete_volume,
        )
        .route(Get, "/api/nodes", User, "node.list", cluster::list_nodes)
        .route(Delete, "/api/nodes/{name}", Admin, "node.remove", tokens::remove_node)
        .route(Post, "/api/nodes/cordon", Admin, "node.cordon", cluster::cordon_many)
        .route(Post, "/api/nodes/{name}/cordon", Admin, "node.cordon", cluster::cordon)
        .route(Post, "/api/nodes/{name}/uncordon", Admin, "node.uncordon", cluster::uncordon)
        .route(Post, "/api/nodes/{name}/drain", Admin, "node.drain", cluster::drain)
        .route(Post, "/api/nodes/{name}/gpus/{index}/enable", Admin, "node.gpu.enable", metrics::enable_gpu)
        .route(Get, "/metrics", Admin, "metrics", metrics::prometheus)
        .route(Post, "/api/tokens", Admin, "token.create", tokens::create)
        .route(Get, "/api/tokens", Admin, "token.list", tokens::list)
        .route(Post, "/api/tokens/{id}/revoke", Admin, "token.revoke", tokens::revoke)
        .route(Get, "/api/backends", User, "backend.list", backends::list)
        .route(Get, "/api/offers", User, "offer.list", backends::offers)
        .route(Post, "/api/projects/{project}/images", Project(Member), "image.push", images::push)
        .route(Get, "/api/projects/{project}/images", Project(Member), "image.list", images::list)
        .route(Delete, "/api/projects/{project}/images", Project(Member), "image.remove", images::remove)
        .route(Post, "/api/images", Admin, "image.push", images::push_shared)
        .route(Get, "/api/images", User, "image.list", images::list_shared)
        .route(Delete, "/api/images", Admin, "image.remove", images::remove_shared)
        .route(Post, "/api/uploads/check", User, "upload.check", uploads::check)
        .route(Put, "/api/uploads/{sha256}", User, "upload.put", uploads::put)
        .finish(&state);
    let api = api.route_layer(middleware::from_fn(check_path_names)).layer(DefaultBodyLimit::max(api::MAX_BODY_BYTES));
    let (open, open_table) = access::Routes::new()
        .route(Get, "/api/health", Open, "health", || async { "ok" })
        .route(Get, "/api/time", Open, "time", install::time)
        .route(Get, "/api/join/check", Open, "join.check", install::check)
        .route(Get, "/api/join/node", Open, "join.node", install::joined_node)
        .route(Get, "/ca.pem", Open, "ca", install::ca_pem)
        .route(Get, "/install.sh", Open, "install", install::install_sh)
        .route(Get, "/uninstall.sh", Open, "uninstall", install::uninstall_sh)
        .route(Get, "/download/{file}", Open, "download", install::download)
        .route(Any, "/proxy/services/{project}/{name}", Open, "service.call", proxy::service)
        .route(Any, "/proxy/services/{project}/{name}/", Open, "service.call", proxy::service)
        .route(Any, "/proxy/services/{project}/{name}/{*rest}", Open, "service.call", proxy::service)
        .route(Any, "/proxy/models/{project}/{*rest}", Open, "model.call", models::models)
        .finish(&state);
    table.extend(open_table);
    let router = open
        .route_layer(middleware::from_fn(check_path_names))
        .merge(api)
        .layer(middleware::from_fn_with_state(state.clone(), proxy::by_host))
        .with_state(state);
    (router, table)
}

pub struct Error(StatusCode, String);

impl Error {
    /// What the client is told.
    pub(crate) fn message(&self) -> &str {
        &self.1
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!("store: {e:#}");
        if e.is_disk_full() {
            // Nothing was written; what is stored stays. The operator frees space, the user retries.
            return Self(
                StatusCode::INSUFFICIENT_STORAGE,
                "the coordinator's disk is full: nothing was changed; free space in its data dir and try again"
                    .to_owned(),
            );
        }
        Self(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e}"))
    }
}

pub(crate) fn err(status: StatusCode, msg: impl Into<String>) -> Error {
    Error(status, msg.into())
}

/// Refuses a request whose path names a run, fleet, project or node by a name that cannot be one,
/// before a handler sees it. A name is one path segment, and a client that encodes `/` as `%2F`
/// gets it back decoded here: `corral stop '../../nodes/x/cordon'` must reach no other route and
/// no lookup, only this 400.
async fn check_path_names(
    params: Result<RawPathParams, RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Result<Response, Response> {
    let params = match params {
        Ok(params) => params,
        Err(RawPathParamsRejection::MissingPathParams(_)) => return Ok(next.run(req).await),
        Err(e) => return Err(e.into_response()),
    };
    let path = req.uri().path();
    for (key, value) in &params {
        if let Some(kind) = path_name_kind(path, key) {
            api::check_name(kind, value).map_err(|e| err(StatusCode::BAD_REQUEST, e).into_response())?;
        }
    }
    Ok(next.run(req).await)
}

/// What the `{key}` parameter of a request for `path` names, when it is a name with a rule. The
/// literal segments of the (still encoded) path say which route it is: a parameter is one segment.
fn path_name_kind(path: &str, key: &str) -> Option<NameKind> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (key, segments.as_slice()) {
        ("project", _) => Some(NameKind::Project),
        ("name", ["api", "projects", _, "runs" | "schedules", ..] | ["proxy", "services", ..]) => Some(NameKind::Run),
        ("name", ["api", "projects", _, "fleets", ..]) => Some(NameKind::Fleet),
        ("name", ["api", "projects", _, "volumes", ..]) => Some(NameKind::Volume),
        ("name", ["api", "nodes", ..]) => Some(NameKind::Node),
        ("user", _) => Some(NameKind::User),
        _ => None,
    }
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

pub(crate) fn check_project(state: &State, project: &str) -> Result<(), Error> {
    if state.store.project_exists(project)? {
        Ok(())
    } else {
        Err(err(StatusCode::NOT_FOUND, format!("project {project:?} does not exist")))
    }
}

/// Node names for run views, looked up by id as the view needs them.
const ADJECTIVES: &[&str] = &[
    "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "kind", "lively", "proud", "quick", "silly",
    "witty", "zesty",
];
const ANIMALS: &[&str] = &[
    "otter", "falcon", "panda", "lynx", "heron", "koala", "yak", "bison", "gecko", "moose", "orca", "raven", "tapir",
    "wombat",
];

pub(crate) fn generated_name() -> String {
    let r = random_hex(4);
    let n = u32::from_str_radix(&r, 16).unwrap_or(0) as usize;
    format!("{}-{}-{}", ADJECTIVES[n % ADJECTIVES.len()], ANIMALS[(n / 16) % ANIMALS.len()], n % 100)
}

async fn submit_run(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
    Json(req): Json<SubmitRun>,
) -> Result<Response, Error> {
    check_project(&state, &project)?;
    // A scheduled configuration is registered, not started (`POST .../schedules`); and a name that
    // has a schedule is that schedule's to start.
    if req.configuration.schedule().is_some() {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!(
                "the configuration has a `schedule`: register it with POST /api/projects/{project}/schedules (what `corral apply` does)"
            ),
        ));
    }
    if let Some(name) = req.name.as_deref().or(req.configuration.name())
        && state.store.schedule(&project, name)?.is_some()
    {
        return Err(err(
            StatusCode::CONFLICT,
            format!(
                "{name:?} is a scheduled run: `corral stop {name}` removes its schedule, or apply it under another name"
            ),
        ));
    }
    let run_id = submit(&state, &project, &req)?;
    // Wait for a placement pass, so that `apply` shows where the run went. The run is stored and
    // queued either way: a slow or failed pass only means the answer says `submitted`.
    state.scheduler.pass_after(Duration::from_secs(2)).await;
    let run = state.store.run_view(&run_id)?.ok_or_else(|| err(StatusCode::INTERNAL_SERVER_ERROR, "run vanished"))?;
    let name = run.name.clone();
    Ok(access::naming(run, &name))
}

/// Stores a run and queues it: what `POST /runs` does before it waits for a placement pass, and what
/// a scheduled run does at its time ([`crate::scheduling::schedules`]), so that both are the same run.
pub(crate) fn submit(state: &State, project: &str, req: &SubmitRun) -> Result<RunId, Error> {
    // The same limits `corral validate` checks: a client that skips the CLI meets them here.
    req.check().map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))?;
    let admitted =
        corral_proto::admission::check(&req.configuration).map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))?;
    // A local repo or file runs only with its upload in the store.
    crate::uploads::check_present(&state.uploads, &req.configuration).map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
    // Every `${{ secrets.NAME }}` set in the project, and only where it is expanded.
    crate::vault::check_run(state, project, &req.configuration).map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
    let name = req.name.clone().or_else(|| admitted.task.name.clone()).unwrap_or_else(generated_name);
    api::check_name(NameKind::Run, &name).map_err(|e| err(StatusCode::BAD_REQUEST, format!("name: {e}")))?;
    // Applying a service again deploys the new configuration next to the running one, which
    // leaves once the new replicas are ready (a rolling update).
    let replacing = admitted.replicas.is_some() && !state.store.active_deployments(project, &name)?.is_empty();
    let run_id = RunId(random_hex(8));
    let jobs: Vec<JobId> = (0..admitted.jobs).map(|_| JobId(random_hex(8))).collect();
    let stored = state.store.insert_run(&crate::store::NewRun {
        id: &run_id,
        project,
        name: &name,
        configuration: &req.configuration,
        source: req.source.as_deref(),
        jobs: &jobs,
        job_nums: &admitted.job_nums,
        replicas: admitted.replicas,
        replacing_service: replacing,
    })?;
    if !stored {
        return Err(err(
            StatusCode::CONFLICT,
            format!("run {name:?} is still active: stop it first (`corral stop {name}`)"),
        ));
    }
    tracing::info!(run = %name, id = %run_id, "run submitted");
    state.telemetry.submissions.inc();
    state.scheduler.send(crate::scheduling::handle::Command::Enqueue(run_id.clone()));
    Ok(run_id)
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    all: bool,
    /// At most this many runs (default 100, at most 1,000).
    limit: Option<u32>,
    /// The id of the last run of the previous page.
    after: Option<String>,
}

/// `GET /api/projects/{project}/runs?all=&limit=&after=`: newest first, a page at a time.
async fn list_runs(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<api::Run>>, Error> {
    check_project(&state, &project)?;
    let limit = q.limit.unwrap_or(api::DEFAULT_PAGE);
    if !(1..=store::MAX_PAGE).contains(&limit) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!(
                "limit={limit}: a page holds 1 to {} runs (the next page: after=<the last run's id>)",
                store::MAX_PAGE
            ),
        ));
    }
    let after = q.after.map(RunId);
    if let Some(after) = &after
        && !state.store.run_in_project(after, &project)?
    {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("after={after}: no run with that id in project {project} (pass the id of the last run of a page)"),
        ));
    }
    let page = store::RunPage { project: &project, all: q.all, after: after.as_ref(), limit };
    Ok(Json(state.store.run_page(page)?))
}

fn find_run(state: &State, project: &str, name: &str) -> Result<api::Run, Error> {
    check_project(state, project)?;
    let Some((id, _, _)) = state.store.run_by_name(project, name)? else {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("no run named {name:?} in project {project:?} (see `corral ps -a`)"),
        ));
    };
    state.store.run_view(&id)?.ok_or_else(|| err(StatusCode::NOT_FOUND, format!("run {name:?} has no jobs")))
}

async fn get_run(
    Extract(state): Extract<AppState>,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<api::Run>, Error> {
    Ok(Json(find_run(&state, &project, &name)?))
}

async fn stop_run(
    Extract(state): Extract<AppState>,
    Path((project, name)): Path<(String, String)>,
    body: Option<Json<StopRun>>,
) -> Result<Json<api::Run>, Error> {
    let abort = body.is_some_and(|b| b.abort);
    // A run stopped by the user is not started again by its schedule (as in dstack).
    if state.store.delete_schedule(&project, &name)? {
        tracing::info!(run = %name, project = %project, "schedule removed");
    }
    let run = find_run(&state, &project, &name)?;
    let reason = if abort { TerminationReason::AbortedByUser } else { TerminationReason::StoppedByUser };
    // A service ends first, so that no replica is started again meanwhile; so do the deployments
    // it was replacing.
    for deployment in state.store.active_deployments(&project, &name)? {
        state.store.set_replicas(&deployment.run, None)?;
        if deployment.run == run.id {
            continue; // its jobs are stopped below
        }
        for job in state.store.latest_jobs(&deployment.run)?.iter().filter(|j| !j.state.is_finished()) {
            state.stop_job(&job.id, reason, abort)?;
        }
    }
    for job in run.jobs.iter().filter(|j| !j.state.is_finished()) {
        state.stop_job(&job.id, reason, abort)?;
    }
    Ok(Json(find_run(&state, &project, &name)?))
}

#[derive(Deserialize)]
struct LogQuery {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    job: u32,
}

/// Streams a job's log from `offset`. With `follow`, the response stays open and carries new output
/// until the job has ended and its log is complete. A client that reconnects with the number of bytes
/// it already has misses nothing.
async fn run_logs(
    Extract(state): Extract<AppState>,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, Error> {
    let run = find_run(&state, &project, &name)?;
    let Some(job) = run.jobs.iter().find(|j| j.job_num == q.job) else {
        return Err(err(StatusCode::NOT_FOUND, format!("run {name:?} has no job {}", q.job)));
    };
    let job_id = job.id.clone();
    let log = state.logs.job(&job_id);
    let len_rx = log.subscribe();
    let follow = q.follow;
    let stream = futures_util::stream::unfold((q.offset, false, len_rx), move |(offset, done, mut len_rx)| {
        let state = state.clone();
        let log = log.clone();
        let job_id = job_id.clone();
        async move {
            if done {
                return None;
            }
            loop {
                len_rx.mark_unchanged();
                match log.read_at(offset, 64 * 1024) {
                    Ok(chunk) if !chunk.is_empty() => {
                        let next = offset + chunk.len() as u64;
                        return Some((Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)), (next, false, len_rx)));
                    }
                    Ok(_) => {}
                    Err(e) => return Some((Err(e), (offset, true, len_rx))),
                }
                if !follow || job_log_finished(&state, &job_id, log.is_complete()) {
                    return None;
                }
                tokio::select! {
                    _ = len_rx.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from_stream(stream))
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// A follower stops once the job has ended and the agent sent the end of its output, or a few
/// seconds after the end when that marker never comes (the node went away, or the job never ran).
fn job_log_finished(state: &State, id: &JobId, complete: bool) -> bool {
    match state.store.job(id) {
        Ok(Some(job)) if job.state.is_finished() => {
            if complete || job.started_ms.is_none() {
                return true;
            }
            // The agent has not sent the end of the output. While its node is connected it will
            // (a replay may take a while); when the node is away, give up after a few seconds.
            let connected = job.node_id.as_ref().is_some_and(|n| state.sessions.is_connected(n));
            let waited = job.finished_ms.map_or(i64::MAX, |f| now_ms() - f);
            waited > if connected { 120_000 } else { 3_000 }
        }
        Ok(Some(_)) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_routes_have_their_rules() {
        let kind = |path, key| path_name_kind(path, key);
        assert_eq!(kind("/api/projects/main/runs/..%2F..%2Fnodes%2Fx%2Fcordon/stop", "name"), Some(NameKind::Run));
        assert_eq!(kind("/api/projects/main/runs/train/stop", "project"), Some(NameKind::Project));
        assert_eq!(kind("/proxy/services/main/llama/v1/models", "name"), Some(NameKind::Run));
        assert_eq!(kind("/api/projects/main/fleets/rack", "name"), Some(NameKind::Fleet));
        assert_eq!(kind("/api/projects/main/volumes/data", "name"), Some(NameKind::Volume));
        assert_eq!(kind("/api/nodes/node-2/cordon", "name"), Some(NameKind::Node));
        assert_eq!(kind("/api/tokens/abcd/revoke", "id"), None);
        assert_eq!(kind("/download/corral-agent", "file"), None);
    }
}
