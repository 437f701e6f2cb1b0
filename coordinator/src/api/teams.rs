//! Users, projects and their members, service tokens, and the audit trail: `corral user`,
//! `corral project`, `corral token create --service`, `corral event`. Who may call each is the
//! route's rule ([`super::access`]); what is left here are the rules about the change itself (the
//! last admin stays, a manager does not make admins).

use axum::Json;
use axum::extract::{Extension, Path, Query, State as Extract};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use corral_proto::api::{self, GlobalRole, NameKind, ProjectRole};

use super::access::{Audit, with_audit};
use super::{AppState, Error, check_project, err};
use crate::secrets::{now_ms, random_hex, sha256_hex};
use crate::store::Caller;

/// A new API token: `crl_` and 40 hex digits (160 random bits).
pub(crate) fn new_token() -> String {
    format!("crl_{}", random_hex(20))
}

/// The answer, with what the audit trail adds to its entry.
fn audited<T: serde::Serialize>(body: T, detail: String) -> Response {
    with_audit(body, Audit { detail: Some(detail), ..Audit::default() })
}

fn check(kind: NameKind, name: &str) -> Result<(), Error> {
    api::check_name(kind, name).map_err(|e| err(StatusCode::BAD_REQUEST, e))
}

fn user_name(caller: &Caller) -> Option<&str> {
    match caller {
        Caller::User { name, .. } => Some(name),
        Caller::Service { .. } => None,
    }
}

pub(super) async fn whoami(
    Extract(state): Extract<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<api::WhoAmI>, Error> {
    Ok(Json(match caller {
        Caller::User { name, role } => {
            api::WhoAmI { projects: state.store.memberships(&name)?, user: Some(name), role: Some(role), service: None }
        }
        Caller::Service { project, run } => {
            api::WhoAmI { user: None, role: None, projects: Vec::new(), service: Some(format!("{project}/{run}")) }
        }
    }))
}

// --- users ---

pub(super) async fn create_user(
    Extract(state): Extract<AppState>,
    Json(req): Json<api::CreateUser>,
) -> Result<Response, Error> {
    check(NameKind::User, &req.name)?;
    let token = new_token();
    if !state.store.create_user(&req.name, req.role, &sha256_hex(token.as_bytes()))? {
        return Err(err(
            StatusCode::CONFLICT,
            format!("user {:?} exists (`corral user token {} --rotate` gives it a new token)", req.name, req.name),
        ));
    }
    tracing::info!(user = %req.name, role = req.role.as_str(), "user created");
    let audit = Audit {
        object: Some(req.name.clone()),
        detail: Some(format!("role {}", req.role.as_str())),
        ..Audit::default()
    };
    Ok(with_audit(api::UserToken { user: req.name, token }, audit))
}

pub(super) async fn list_users(Extract(state): Extract<AppState>) -> Result<Json<Vec<api::User>>, Error> {
    Ok(Json(state.store.users()?))
}

pub(super) async fn delete_user(
    Extract(state): Extract<AppState>,
    Extension(caller): Extension<Caller>,
    Path(user): Path<String>,
) -> Result<Json<String>, Error> {
    let Some(role) = state.store.user_role(&user)? else {
        return Err(err(StatusCode::NOT_FOUND, format!("no user named {user:?} (see `corral user list`)")));
    };
    if user_name(&caller) == Some(user.as_str()) {
        return Err(err(StatusCode::CONFLICT, "a user cannot delete itself: another global admin can"));
    }
    if user == "admin" {
        return Err(err(
            StatusCode::CONFLICT,
            "admin is the data dir's admin-token, which it gets back at every start: rotate its token instead (`corral user token admin --rotate`)",
        ));
    }
    let sole = state.store.sole_admin_of(&user)?;
    if !sole.is_empty() {
        return Err(err(
            StatusCode::CONFLICT,
            format!("{user} is the only admin of project(s) {}: make another admin there first", sole.join(", ")),
        ));
    }
    if role == GlobalRole::Admin && state.store.global_admins()? <= 1 {
        return Err(err(StatusCode::CONFLICT, format!("{user} is the last global admin: make another first")));
    }
    state.store.delete_user(&user)?;
    tracing::info!(%user, "user deleted");
    Ok(Json(user))
}

/// `POST /api/users/{user}/token`: a new token for the user; its old ones stop working. A new
/// token for `admin` is also written to the data dir's `admin-token`, which stays the admin's.
pub(super) async fn rotate_token(
    Extract(state): Extract<AppState>,
    Path(user): Path<String>,
) -> Result<Json<api::UserToken>, Error> {
    if state.store.user_role(&user)?.is_none() {
        return Err(err(StatusCode::NOT_FOUND, format!("no user named {user:?} (see `corral user list`)")));
    }
    let token = new_token();
    // `admin`'s token is also the data dir's admin-token: written beside it first, put in place once
    // the database took it, so that the file never holds a token the database lacks, or half one.
    let file = (user == "admin").then(|| state.config.data_dir.join("admin-token"));
    let cannot = |path: &std::path::Path, e: std::io::Error| {
        err(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot write {}: {e}", path.display()))
    };
    let staged = match &file {
        Some(path) => {
            let staged = path.with_extension("new");
            crate::datadir::write_private(&staged, format!("{token}\n").as_bytes()).map_err(|e| cannot(&staged, e))?;
            Some(staged)
        }
        None => None,
    };
    if !state.store.replace_user_token(&user, &sha256_hex(token.as_bytes()))? {
        return Err(err(StatusCode::NOT_FOUND, format!("no user named {user:?} (see `corral user list`)")));
    }
    if let (Some(staged), Some(path)) = (staged, &file) {
        std::fs::rename(&staged, path).map_err(|e| cannot(path, e))?;
    }
    tracing::info!(%user, "user token rotated");
    Ok(Json(api::UserToken { user, token }))
}

// --- projects ---

pub(super) async fn create_project(
    Extract(state): Extract<AppState>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<api::CreateProject>,
) -> Result<Response, Error> {
    check(NameKind::Project, &req.name)?;
    let owner = user_name(&caller);
    if !state.store.create_project(&req.name, owner)? {
        return Err(err(StatusCode::CONFLICT, format!("project {:?} exists", req.name)));
    }
    tracing::info!(project = %req.name, ?owner, "project created");
    let audit = Audit { object: Some(req.name.clone()), project: Some(req.name.clone()), ..Audit::default() };
    let made = api::Project {
        name: req.name,
        created_ms: now_ms(),
        members: u32::from(owner.is_some()),
        role: owner.map(|_| ProjectRole::Admin),
    };
    Ok(with_audit(made, audit))
}

/// The projects the caller is a member of; a global admin sees all.
pub(super) async fn list_projects(
    Extract(state): Extract<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<api::Project>>, Error> {
    let (name, admin) = match &caller {
        Caller::User { name, role } => (name.as_str(), *role == GlobalRole::Admin),
        Caller::Service { .. } => return Ok(Json(Vec::new())),
    };
    let mut projects = state.store.projects(name)?;
    if !admin {
        projects.retain(|p| p.role.is_some());
    }
    Ok(Json(projects))
}

pub(super) async fn delete_project(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
) -> Result<Json<String>, Error> {
    check_project(&state, &project)?;
    if project == "main" {
        return Err(err(StatusCode::CONFLICT, "project main is the default project and stays"));
    }
    let (runs, fleets, volumes) = state.store.project_contents(&project)?;
    if runs + fleets + volumes > 0 {
        return Err(err(
            StatusCode::CONFLICT,
            format!(
                "project {project} still has {runs} active run(s), {fleets} fleet(s) and {volumes} volume(s): stop and delete them first"
            ),
        ));
    }
    for job in state.store.delete_project(&project)? {
        state.logs.remove(&job);
    }
    // The blobs only its images used.
    let images = state.clone();
    tokio::task::spawn_blocking(move || images.images.collect(&images.store))
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    tracing::info!(%project, "project deleted");
    Ok(Json(project))
}

// --- members ---

pub(super) async fn list_members(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
) -> Result<Json<Vec<api::Member>>, Error> {
    check_project(&state, &project)?;
    Ok(Json(state.store.members(&project)?))
}

/// Whether the caller may change what `user` is in the project: a manager adds and changes users
/// and managers; making, changing or removing an admin takes a project or global admin.
fn may_touch(
    state: &AppState,
    caller: &Caller,
    project: &str,
    target: Option<ProjectRole>,
    new: Option<ProjectRole>,
) -> Result<(), Error> {
    let (name, global) = match caller {
        Caller::User { name, role } => (name.as_str(), *role),
        Caller::Service { .. } => return Err(err(StatusCode::FORBIDDEN, "a service token manages no members")),
    };
    let concerns_admin = target == Some(ProjectRole::Admin) || new == Some(ProjectRole::Admin);
    if !concerns_admin
        || global == GlobalRole::Admin
        || state.store.member_role(project, name)? == Some(ProjectRole::Admin)
    {
        return Ok(());
    }
    Err(err(
        StatusCode::FORBIDDEN,
        format!(
            "member.set: making, changing or removing an admin of project {project} needs its admin role; {name} is a manager"
        ),
    ))
}

pub(super) async fn set_member(
    Extract(state): Extract<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, user)): Path<(String, String)>,
    Json(req): Json<api::SetMember>,
) -> Result<Response, Error> {
    check_project(&state, &project)?;
    if state.store.user_role(&user)?.is_none() {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("no user named {user:?} (a global admin makes one: `corral user create {user}`)"),
        ));
    }
    let before = state.store.member_role(&project, &user)?;
    may_touch(&state, &caller, &project, before, Some(req.role))?;
    if before == Some(ProjectRole::Admin) && req.role != ProjectRole::Admin {
        last_admin_stays(&state, &project, &user)?;
    }
    state.store.set_member(&project, &user, req.role)?;
    tracing::info!(%project, %user, role = req.role.as_str(), "member set");
    let was = before.map_or("not a member".to_owned(), |r| r.as_str().to_owned());
    Ok(audited(api::Member { user, role: req.role }, format!("role {} (was {was})", req.role.as_str())))
}

fn last_admin_stays(state: &AppState, project: &str, user: &str) -> Result<(), Error> {
    let admins = state.store.members(project)?.into_iter().filter(|m| m.role == ProjectRole::Admin).count();
    if admins <= 1 {
        return Err(err(
            StatusCode::CONFLICT,
            format!("{user} is the last admin of project {project}: make another admin first"),
        ));
    }
    Ok(())
}

pub(super) async fn remove_member(
    Extract(state): Extract<AppState>,
    Extension(caller): Extension<Caller>,
    Path((project, user)): Path<(String, String)>,
) -> Result<Response, Error> {
    check_project(&state, &project)?;
    let Some(before) = state.store.member_role(&project, &user)? else {
        return Err(err(StatusCode::NOT_FOUND, format!("{user} is not a member of project {project}")));
    };
    may_touch(&state, &caller, &project, Some(before), None)?;
    if before == ProjectRole::Admin {
        last_admin_stays(&state, &project, &user)?;
    }
    state.store.remove_member(&project, &user)?;
    tracing::info!(%project, %user, "member removed");
    Ok(audited(user, format!("was {}", before.as_str())))
}

// --- service tokens ---

pub(super) async fn create_service_token(
    Extract(state): Extract<AppState>,
    Extension(caller): Extension<Caller>,
    Path(project): Path<String>,
    Json(req): Json<api::CreateServiceToken>,
) -> Result<Response, Error> {
    check_project(&state, &project)?;
    check(NameKind::Run, &req.run)?;
    let Some((_, configuration, _)) = state.store.run_by_name(&project, &req.run)? else {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("no run named {:?} in project {project} (see `corral ps -a`)", req.run),
        ));
    };
    if !matches!(configuration, corral_proto::config::Configuration::Service(_)) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("{} is not a service: a service token calls a service", req.run),
        ));
    }
    let token = new_token();
    let hash = sha256_hex(token.as_bytes());
    let maker = user_name(&caller);
    state.store.create_service_token(&hash, &project, &req.run, maker)?;
    tracing::info!(%project, run = %req.run, id = &hash[..12], "service token created");
    let audit =
        Audit { object: Some(req.run.clone()), detail: Some(format!("id {}", &hash[..12])), ..Audit::default() };
    let made = api::ServiceToken {
        id: hash[..12].to_owned(),
        run: req.run,
        created_ms: now_ms(),
        created_by: maker.map(str::to_owned),
        token: Some(token),
    };
    Ok(with_audit(made, audit))
}

pub(super) async fn list_service_tokens(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
) -> Result<Json<Vec<api::ServiceToken>>, Error> {
    check_project(&state, &project)?;
    Ok(Json(state.store.service_tokens(&project)?))
}

pub(super) async fn delete_service_token(
    Extract(state): Extract<AppState>,
    Path((project, id)): Path<(String, String)>,
) -> Result<Json<String>, Error> {
    super::tokens::check_token_id(&id, "corral token list --service")?;
    match state.store.delete_service_token(&project, &id)?.as_slice() {
        [] => Err(err(StatusCode::NOT_FOUND, format!("no service token with id {id} in project {project}"))),
        [one] => Ok(Json(one.clone())),
        many => Err(err(StatusCode::CONFLICT, format!("{id} matches {} tokens: give more of the id", many.len()))),
    }
}

// --- events ---

#[derive(Deserialize)]
pub(super) struct EventQuery {
    /// Events at or after this time (ms since the epoch).
    #[serde(default)]
    since_ms: i64,
    #[serde(default = "default_limit")]
    limit: u32,
    /// Events older than this one (its id): the page before the one that started with it.
    before: Option<i64>,
    /// Only those of this run (or user, node, ...: what the event was done to).
    object: Option<String>,
}

fn default_limit() -> u32 {
    1000
}

/// At most this many events in one answer.
const MAX_EVENTS: u32 = 10_000;

pub(super) async fn project_events(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
    Query(q): Query<EventQuery>,
) -> Result<Json<Vec<api::Event>>, Error> {
    check_project(&state, &project)?;
    Ok(Json(state.store.events(Some(&project), q.object.as_deref(), q.since_ms, q.before, q.limit.min(MAX_EVENTS))?))
}

pub(super) async fn all_events(
    Extract(state): Extract<AppState>,
    Query(q): Query<EventQuery>,
) -> Result<Json<Vec<api::Event>>, Error> {
    Ok(Json(state.store.events(None, q.object.as_deref(), q.since_ms, q.before, q.limit.min(MAX_EVENTS))?))
}
