//! The OpenAI-compatible model route: `/proxy/models/<project>/v1/...` serves every running service
//! of the project that has a `model`, picking the service by the request's `model` field, so that
//! one base URL (`http://COORDINATOR/proxy/models/<project>/v1`) reaches all of a project's models.
//! `GET .../v1/models` lists them. A token of a project member, or a service's token (for that
//! service's model), is always needed.

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State as Extract};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::proxy::{authorized, to_replicas};
use super::{AppState, Error, check_project, err};
use crate::State;

/// Largest request body the route reads to find the `model` field.
const MAX_BODY: usize = 64 << 20;

pub(super) async fn models(Extract(state): Extract<AppState>, req: Request) -> Response {
    match serve(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(state: &State, req: Request) -> Result<Response, Error> {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix("/proxy/models/").unwrap_or_default();
    let (project, below) = rest.split_once('/').unwrap_or((rest, ""));
    check_project(state, project)?;
    authorized(state, req.headers(), project, None).map_err(|e| {
        if e.0 == StatusCode::UNAUTHORIZED {
            err(
                StatusCode::UNAUTHORIZED,
                "the model route needs the Corral token of a project member or a service token: send `Authorization: Bearer <token>`",
            )
        } else {
            e
        }
    })?;
    let Some(api_path) = below.strip_prefix("v1") else {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("use /proxy/models/{project}/v1/... (an OpenAI-compatible API)"),
        ));
    };
    let services: Vec<_> = state
        .store
        .active_services()?
        .into_iter()
        .filter(|s| s.project == project && s.config.model.is_some())
        .collect();
    if req.method() == Method::GET && api_path.trim_end_matches('/') == "/models" {
        let data: Vec<_> = services
            .iter()
            .filter_map(|s| s.config.model.as_ref().map(|m| (m, s)))
            .map(|(m, s)| json!({"id": m.name, "object": "model", "owned_by": project, "created": s.submitted_ms / 1000}))
            .collect();
        return Ok(Json(json!({"object": "list", "data": data})).into_response());
    }

    let (mut parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| err(StatusCode::PAYLOAD_TOO_LARGE, format!("cannot read the request body: {e}")))?;
    let model = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_owned))
        .ok_or_else(|| err(StatusCode::BAD_REQUEST, "the request body needs a JSON `model` field"))?;
    let Some(service) = services.into_iter().find(|s| s.config.model.as_ref().is_some_and(|m| m.name == model)) else {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("no running service in project {project:?} serves model {model:?}"),
        ));
    };
    // A service token calls its own service only.
    authorized(state, &parts.headers, project, Some(&service.name))?;
    let prefix = service.config.model.as_ref().map_or("/v1", |m| m.prefix.as_str()).trim_end_matches('/');
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    parts.uri = format!("{prefix}{api_path}{query}")
        .parse::<Uri>()
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("bad path: {e}")))?;
    parts.headers.remove(axum::http::header::AUTHORIZATION);
    let req = Request::from_parts(parts, Body::from(bytes));
    to_replicas(state, &service, Vec::new(), req).await
}
