//! `corral apply`'s uploads (a run's local repo and `files`): which ones the coordinator lacks, and
//! each sent as a tar streamed to disk, its SHA-256 checked before it is kept ([`crate::uploads`]).

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt;
use ring::digest::{Context as Digest, SHA256};
use tokio::io::AsyncWriteExt;

use corral_proto::api;
use corral_proto::config::UploadRef;
use corral_proto::config::limits::MAX_UPLOAD_BYTES;

use super::{AppState, Error, err};

/// `POST /api/uploads/check`: the digests among those asked about that the store lacks.
pub(super) async fn check(
    Extract(state): Extract<AppState>,
    Json(req): Json<api::CheckUploads>,
) -> Result<Json<api::MissingUploads>, Error> {
    req.check().map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))?;
    let missing = req.sha256.into_iter().filter(|d| state.uploads.size(d).is_none()).collect();
    Ok(Json(api::MissingUploads { missing }))
}

fn too_large() -> Error {
    err(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "an upload is at most {} GiB: leave large data out of the repo (.gitignore) or put it in a volume",
            MAX_UPLOAD_BYTES >> 30
        ),
    )
}

/// `PUT /api/uploads/{sha256}`: the body (a tar) is streamed to a temporary file while hashed, and
/// kept only when its digest is the one named; never more than [`MAX_UPLOAD_BYTES`] is read.
pub(super) async fn put(
    Extract(state): Extract<AppState>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<api::StoredUpload>, Error> {
    if !UploadRef::is_digest(&sha256) {
        return Err(err(StatusCode::BAD_REQUEST, "an upload is named by its SHA-256: 64 lowercase hex digits"));
    }
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_UPLOAD_BYTES) {
        return Err(too_large());
    }
    if let Some(size) = state.uploads.size(&sha256) {
        return Ok(Json(api::StoredUpload { sha256, size, new: false }));
    }
    let tmp = state.uploads.tmp_path();
    let io = |e: std::io::Error| err(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the upload: {e}"));
    let received = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(crate::datadir::FILE_MODE)
            .open(&tmp)
            .await
            .map_err(io)?;
        let mut digest = Digest::new(&SHA256);
        let mut size = 0u64;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| err(StatusCode::BAD_REQUEST, format!("the upload was cut off: {e}")))?;
            size += chunk.len() as u64;
            if size > MAX_UPLOAD_BYTES {
                return Err(too_large());
            }
            digest.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        let got = crate::secrets::hex(digest.finish().as_ref());
        if got != sha256 {
            return Err(err(
                StatusCode::BAD_REQUEST,
                format!(
                    "the upload's SHA-256 is {got}, not {sha256}: it changed or was damaged on the way; apply again"
                ),
            ));
        }
        Ok(size)
    }
    .await;
    let size = match received {
        Ok(size) => size,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    let new = state.uploads.commit(&tmp, &sha256).map_err(io)?;
    tracing::info!(sha256, size, "upload stored");
    Ok(Json(api::StoredUpload { sha256, size, new }))
}
