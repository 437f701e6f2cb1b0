//! `corral image push|list|rm`: the coordinator's own image store, for sites with no registry.

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State as Extract};
use axum::http::StatusCode;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use corral_proto::api;

use super::{AppState, Error, err};
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

/// `POST /api/images`: the body is a `docker save` tar, streamed to disk, then imported.
pub(super) async fn push(Extract(state): Extract<AppState>, body: Body) -> Result<Json<Vec<api::ImageInfo>>, Error> {
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
        }
        file.flush().await.map_err(io)
    }
    .await;
    let result = match received {
        Ok(()) => {
            let (state, tar) = (state.clone(), path.clone());
            tokio::task::spawn_blocking(move || state.images.import(&state.store, &tar))
                .await
                .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
                .and_then(|r| r.map_err(Error::from))
        }
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&path).await;
    Ok(Json(result?))
}

pub(super) async fn list(Extract(state): Extract<AppState>) -> Result<Json<Vec<api::ImageInfo>>, Error> {
    Ok(Json(state.store.image_infos()?))
}

#[derive(Deserialize)]
pub(super) struct Name {
    name: String,
}

/// `DELETE /api/images?name=N`: forgets the image and the layers only it used.
pub(super) async fn remove(Extract(state): Extract<AppState>, Query(q): Query<Name>) -> Result<Json<String>, Error> {
    let state2 = state.clone();
    let name = q.name.clone();
    let removed = tokio::task::spawn_blocking(move || state2.images.remove(&state2.store, &name))
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    if !removed {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("no image {:?} in the store (see `corral image list`)", q.name),
        ));
    }
    Ok(Json(crate::images::normalize(&q.name)))
}
