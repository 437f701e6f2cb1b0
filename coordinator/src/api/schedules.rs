//! `/api/projects/{project}/schedules`: scheduled runs ([`crate::scheduling::schedules`]). Registering one takes
//! the same request as `POST /runs`, checked the same way, and starts nothing.

use axum::Json;
use axum::extract::{Path, State as Extract};
use axum::http::StatusCode;

use corral_proto::api::{self, NameKind, SubmitRun};

use super::{AppState, Error, check_project, err, generated_name};
use crate::scheduling::schedules::{self, run_active, view};

/// `POST`: registers a scheduled run, or replaces the one of that name (its configuration and
/// times); answers it with its next start.
pub(super) async fn register(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
    Json(mut req): Json<SubmitRun>,
) -> Result<axum::response::Response, Error> {
    check_project(&state, &project)?;
    req.check().map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))?;
    // What a start would refuse is refused now, not at 3 a.m.
    corral_proto::admission::check(&req.configuration).map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))?;
    let Some(schedule) = req.configuration.schedule().cloned() else {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("the configuration has no `schedule`: submit it with POST /api/projects/{project}/runs"),
        ));
    };
    let name = req.name.clone().or_else(|| req.configuration.name().map(str::to_owned)).unwrap_or_else(generated_name);
    api::check_name(NameKind::Run, &name).map_err(|e| err(StatusCode::BAD_REQUEST, format!("name: {e}")))?;
    let existing = state.store.schedule(&project, &name)?;
    let last_run = match &existing {
        Some(s) => s.run.clone(),
        // A run applied by hand under that name is not this schedule's to wait for.
        None => state.store.run_by_name(&project, &name)?.map(|(id, _, _)| id),
    };
    let busy = run_active(&state, last_run.as_ref())?;
    if busy && existing.is_none() {
        return Err(err(
            StatusCode::CONFLICT,
            format!("run {name:?} is still active: stop it first (`corral stop {name}`)"),
        ));
    }
    // While its last run goes on, the next time is reckoned when that run ends.
    let next = if busy { None } else { schedule.next_after_ms(schedules::now_ms(&state)) };
    req.name = Some(name.clone());
    state.store.put_schedule(&project, &name, &req, next)?;
    tracing::info!(run = %name, project = %project, next_ms = ?next, "scheduled run registered");
    let row = state
        .store
        .schedule(&project, &name)?
        .ok_or_else(|| err(StatusCode::INTERNAL_SERVER_ERROR, "schedule vanished"))?;
    let view = view(&state, &row);
    let name = view.name.clone();
    Ok(super::access::naming(view, &name))
}

/// `GET`: the project's scheduled runs.
pub(super) async fn list(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
) -> Result<Json<Vec<api::ScheduledRun>>, Error> {
    check_project(&state, &project)?;
    Ok(Json(state.store.schedules(&project)?.iter().map(|s| view(&state, s)).collect()))
}

/// `DELETE .../{name}`: removes a schedule; the runs it started stay (and go on, if one does).
pub(super) async fn remove(
    Extract(state): Extract<AppState>,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<api::ScheduledRun>, Error> {
    check_project(&state, &project)?;
    let Some(row) = state.store.schedule(&project, &name)? else {
        return Err(err(StatusCode::NOT_FOUND, format!("no scheduled run named {name:?} in project {project:?}")));
    };
    state.store.delete_schedule(&project, &name)?;
    tracing::info!(run = %name, project = %project, "schedule removed");
    Ok(Json(view(&state, &row)))
}
