//! Join tokens (`corral token create|list|revoke`) and removing nodes (`corral node remove`).

use axum::Json;
use axum::extract::{Path, State as Extract};
use axum::http::StatusCode;

use corral_proto::api::{CreateJoinToken, JoinTokenInfo};
use corral_proto::token::JoinToken;

use super::{AppState, Error, err};
use crate::secrets::{now_ms, random_hex, sha256_hex};

/// Join tokens live at most this long (a year): an enrollment secret should not outlive its use.
const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

pub(super) async fn create(
    Extract(state): Extract<AppState>,
    Json(req): Json<CreateJoinToken>,
) -> Result<Json<JoinTokenInfo>, Error> {
    if let Some(f) = &req.fleet
        && !corral_proto::config::is_valid_name(f)
    {
        return Err(err(StatusCode::BAD_REQUEST, format!("fleet: {f:?} is not a valid fleet name")));
    }
    if req.uses == Some(0) {
        return Err(err(StatusCode::BAD_REQUEST, "uses: a token must allow at least one enrollment"));
    }
    let ttl = req.ttl_secs.filter(|&t| t > 0);
    if req.ttl_secs == Some(0) || ttl.is_some_and(|t| t > MAX_TTL_SECS) {
        return Err(err(StatusCode::BAD_REQUEST, "ttl: give a duration between 1 s and a year"));
    }
    let token = JoinToken { ca_hash: state.pki.ca_hash(), secret: random_hex(16) };
    let hash = sha256_hex(token.secret.as_bytes());
    let expires_ms = ttl.map(|t| now_ms() + (t as i64) * 1000);
    state.store.create_join_token(&hash, req.fleet.as_deref(), expires_ms, req.uses)?;
    tracing::info!(id = &hash[..12], fleet = ?req.fleet, ?expires_ms, uses = ?req.uses, "join token created");
    Ok(Json(JoinTokenInfo {
        id: hash[..12].to_owned(),
        fleet: req.fleet,
        created_ms: now_ms(),
        expires_ms,
        uses_left: req.uses.map(i64::from),
        revoked: false,
        default: false,
        token: Some(token.to_string()),
    }))
}

pub(super) async fn list(Extract(state): Extract<AppState>) -> Result<Json<Vec<JoinTokenInfo>>, Error> {
    Ok(Json(state.store.join_tokens()?))
}

/// A token id as `revoke` takes it: 4 to 64 hex digits, from the list `listed_by` prints.
pub(super) fn check_token_id(id: &str, listed_by: &str) -> Result<(), Error> {
    if id.len() < 4 || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a token id: give at least 4 hex digits from `{listed_by}`"),
        ));
    }
    Ok(())
}

pub(super) async fn revoke(Extract(state): Extract<AppState>, Path(id): Path<String>) -> Result<Json<String>, Error> {
    check_token_id(&id, "corral token list")?;
    match state.store.join_token_ids_like(&id)?.as_slice() {
        [] => Err(err(StatusCode::NOT_FOUND, format!("no join token with id {id} (see `corral token list`)"))),
        [one] => {
            state.store.revoke_join_token(&id)?;
            tracing::info!(id = %one, "join token revoked");
            Ok(Json(one.clone()))
        }
        many => Err(err(StatusCode::CONFLICT, format!("{id} matches {} tokens: give more of the id", many.len()))),
    }
}

/// `DELETE /api/nodes/{name}`: revokes the node's certificate, cuts its agent off and interrupts
/// its jobs. Answers how many jobs it had.
pub(super) async fn remove_node(
    Extract(state): Extract<AppState>,
    Path(name): Path<String>,
) -> Result<Json<usize>, Error> {
    let node = state
        .store
        .node_by_name(&name)?
        .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no node named {name:?} (see `corral node list`)")))?;
    let jobs = crate::scheduling::lifecycle::remove_node(&state, &node.id, &node.name)?;
    Ok(Json(jobs))
}
