//! `corral image push|list|rm`: the coordinator's own image store, for sites with no registry. A
//! project's members push and remove its images (`/api/projects/{project}/images`); global admins
//! push and remove the shared ones every project can use (`/api/images`).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State as Extract};
use axum::http::StatusCode;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use corral_proto::api;

use super::{AppState, Error, check_project, err};
use crate::images::ImageError;

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Invalid(msg) => err(StatusCode::BAD_REQUEST, msg),
            other => {
                tracing::error!("{other:#}");
                err(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}

/// `POST /api/projects/{project}/images`: the body is a `docker save` tar, streamed to disk, then
/// imported into the project.
pub(super) async fn push(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
    body: Body,
) -> Result<Json<Vec<api::ImageInfo>>, Error> {
    check_project(&state, &project)?;
    import(state, Some(project), body).await
}

/// `POST /api/images`: a shared image.
pub(super) async fn push_shared(
    Extract(state): Extract<AppState>,
    body: Body,
) -> Result<Json<Vec<api::ImageInfo>>, Error> {
    import(state, None, body).await
}

async fn import(state: AppState, project: Option<String>, body: Body) -> Result<Json<Vec<api::ImageInfo>>, Error> {
    let path = state.images.upload_path();
    let io = |e: std::io::Error| err(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the upload: {e}"));
    let received = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(crate::datadir::FILE_MODE)
            .open(&path)
            .await
            .map_err(io)?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| err(StatusCode::BAD_REQUEST, format!("the upload was cut off: {e}")))?;
            file.write_all(&chunk).await.map_err(io)?;
            state.telemetry.image_bytes.inc_by(chunk.len() as u64);
        }
        file.flush().await.map_err(io)
    }
    .await;
    let result = match received {
        Ok(()) => {
            let (state, tar) = (state.clone(), path.clone());
            tokio::task::spawn_blocking(move || state.images.import(&state.store, project.as_deref(), &tar))
                .await
                .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
                .and_then(|r| r.map_err(Error::from))
        }
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&path).await;
    Ok(Json(result?))
}

/// `GET /api/projects/{project}/images`: the images the project's runs can use, its own and the
/// shared ones.
pub(super) async fn list(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
) -> Result<Json<Vec<api::ImageInfo>>, Error> {
    check_project(&state, &project)?;
    Ok(Json(state.store.image_infos(Some(&project))?))
}

/// `GET /api/images`: the shared images.
pub(super) async fn list_shared(Extract(state): Extract<AppState>) -> Result<Json<Vec<api::ImageInfo>>, Error> {
    Ok(Json(state.store.image_infos(None)?))
}

#[derive(Deserialize)]
pub(super) struct Name {
    name: String,
}

/// `DELETE /api/projects/{project}/images?name=N`: forgets the project's image and the layers only
/// it used.
pub(super) async fn remove(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
    Query(q): Query<Name>,
) -> Result<Json<String>, Error> {
    check_project(&state, &project)?;
    forget(state, Some(project), q.name).await
}

/// `DELETE /api/images?name=N`: a shared image.
pub(super) async fn remove_shared(
    Extract(state): Extract<AppState>,
    Query(q): Query<Name>,
) -> Result<Json<String>, Error> {
    forget(state, None, q.name).await
}

async fn forget(state: AppState, project: Option<String>, name: String) -> Result<Json<String>, Error> {
    let (state2, project2, name2) = (state.clone(), project.clone(), name.clone());
    let removed = tokio::task::spawn_blocking(move || state2.images.remove(&state2.store, project2.as_deref(), &name2))
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    if !removed {
        let whose = match &project {
            Some(p) => format!("project {p}'s images"),
            None => "the shared images".to_owned(),
        };
        return Err(err(StatusCode::NOT_FOUND, format!("no image {name:?} among {whose} (see `corral image list`)")));
    }
    Ok(Json(crate::images::normalize(&name)))
}
