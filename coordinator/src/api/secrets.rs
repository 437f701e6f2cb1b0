//! A project's secrets: `corral secret set`, `list` (names and dates) and `delete`. No route
//! returns a value.

use axum::Json;
use axum::extract::{Path, State as Extract};
use axum::http::StatusCode;

use corral_proto::api::{Secret, SetSecret};

use super::{AppState, Error, check_project, err};
use crate::vault;

pub(super) async fn set(
    Extract(state): Extract<AppState>,
    Path((project, name)): Path<(String, String)>,
    Json(req): Json<SetSecret>,
) -> Result<Json<Secret>, Error> {
    check_project(&state, &project)?;
    if !vault::valid_name(&name) {
        return Err(err(StatusCode::BAD_REQUEST, format!("{name:?}: a secret's name is 1 to 128 of A-Z a-z 0-9 _ -")));
    }
    if req.value.len() > vault::MAX_VALUE {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("the value is {} bytes; a secret holds at most {}", req.value.len(), vault::MAX_VALUE),
        ));
    }
    let sealed = state
        .vault
        .seal(&project, &name, req.value.as_bytes())
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    state.store.put_secret(&project, &name, &sealed)?;
    tracing::info!(secret = %name, %project, "secret set");
    let row = state.store.secrets(&project)?.into_iter().find(|r| r.name == name);
    let row = row.ok_or_else(|| err(StatusCode::INTERNAL_SERVER_ERROR, "the secret vanished"))?;
    Ok(Json(view(row)))
}

pub(super) async fn list(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
) -> Result<Json<Vec<Secret>>, Error> {
    check_project(&state, &project)?;
    let rows = state.store.secrets(&project)?;
    Ok(Json(rows.into_iter().map(view).collect()))
}

pub(super) async fn remove(
    Extract(state): Extract<AppState>,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, Error> {
    check_project(&state, &project)?;
    if !state.store.delete_secret(&project, &name)? {
        return Err(err(StatusCode::NOT_FOUND, format!("no secret {name:?} in project {project:?}")));
    }
    tracing::info!(secret = %name, %project, "secret deleted");
    Ok(Json(serde_json::json!({ "deleted": name })))
}

fn view(r: crate::store::SecretRow) -> Secret {
    Secret { name: r.name, created_ms: r.created_ms, updated_ms: r.updated_ms }
}
