//! Named volumes: `corral apply` of a `type: volume` configuration, `corral volume list` and
//! `corral volume delete`.

use axum::Json;
use axum::extract::{Path, State as Extract};
use axum::http::StatusCode;

use corral_proto::api::{self, SubmitVolume};

use super::{AppState, Error, check_project, err};
use crate::volumes::{self, DeleteError};

/// Registers a volume. Without a backend it is made on the node where a run first mounts it;
/// applying it again keeps where it is and what it holds.
pub(super) async fn put_volume(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
    Json(req): Json<SubmitVolume>,
) -> Result<axum::response::Response, Error> {
    check_project(&state, &project)?;
    req.check().map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))?;
    let cfg = corral_proto::admission::check_volume(&req.configuration)
        .map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))?;
    let name = cfg.name.clone().unwrap_or_default();
    if let Some(old) = state.store.volume(&project, &name)?
        && old.backend != cfg.backend
    {
        return Err(err(
            StatusCode::CONFLICT,
            format!("volume {name:?} exists with another backend: delete it first (`corral volume delete {name}`)"),
        ));
    }
    if cfg.backend.is_some() {
        volumes::cloud_ready(&state, cfg.region.as_deref()).map_err(|e| err(StatusCode::BAD_REQUEST, e))?;
    }
    let row = state.store.put_volume(&project, &name, cfg)?;
    if cfg.backend.is_some() {
        volumes::cloud_apply(&state, &row).await.map_err(|e| err(StatusCode::BAD_GATEWAY, e))?;
    }
    tracing::info!(volume = %name, %project, "volume applied");
    let row = state
        .store
        .volume(&project, &name)?
        .ok_or_else(|| err(StatusCode::INTERNAL_SERVER_ERROR, "volume vanished"))?;
    let view = volumes::view(&state, row, &volumes::users(&state)?);
    let name = view.name.clone();
    Ok(super::access::naming(view, &name))
}

pub(super) async fn list_volumes(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
) -> Result<Json<Vec<api::Volume>>, Error> {
    check_project(&state, &project)?;
    let users = volumes::users(&state)?;
    let rows = state.store.volumes(Some(&project))?;
    Ok(Json(rows.into_iter().map(|v| volumes::view(&state, v, &users)).collect()))
}

pub(super) async fn get_volume(
    Extract(state): Extract<AppState>,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<api::Volume>, Error> {
    check_project(&state, &project)?;
    let Some(row) = state.store.volume(&project, &name)? else {
        return Err(not_found(&name));
    };
    Ok(Json(volumes::view(&state, row, &volumes::users(&state)?)))
}

/// Deletes a volume no run uses: at once when it was never made; otherwise its node (or the
/// cloud) removes it, and it leaves the list when that is done (`202`, `deleting`).
pub(super) async fn delete_volume(
    Extract(state): Extract<AppState>,
    Path((project, name)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Option<api::Volume>>), Error> {
    check_project(&state, &project)?;
    let gone = match volumes::delete(&state, &project, &name).await {
        Ok(gone) => gone,
        Err(DeleteError::NotFound) => return Err(not_found(&name)),
        Err(e @ (DeleteError::InUse(_) | DeleteError::OldAgent(_))) => {
            return Err(err(StatusCode::CONFLICT, format!("volume {name:?} is {e}")));
        }
        Err(DeleteError::Cloud(e)) => return Err(err(StatusCode::BAD_GATEWAY, e)),
        Err(DeleteError::Store(e)) => return Err(e.into()),
    };
    tracing::info!(volume = %name, %project, gone, "volume deletion asked");
    if gone {
        return Ok((StatusCode::OK, Json(None)));
    }
    let row = state.store.volume(&project, &name)?;
    let users = volumes::users(&state)?;
    Ok((StatusCode::ACCEPTED, Json(row.map(|v| volumes::view(&state, v, &users)))))
}

fn not_found(name: &str) -> Error {
    err(StatusCode::NOT_FOUND, format!("no volume named {name:?} (see `corral volume list`)"))
}
