//! `corral backend list` and `corral offer`.

use axum::Json;
use axum::extract::{Query, State as Extract};
use axum::http::StatusCode;
use serde::Deserialize;

use corral_proto::api;
use corral_proto::config::{parse_cpu, parse_gpu, parse_memory_range};
use corral_proto::resources::ResourcesSpec;

use super::{AppState, Error, err};
use crate::cloud::backends::{OfferQuery, on_prem_offers, sort_offers};

pub(super) async fn list(Extract(state): Extract<AppState>) -> Json<Vec<api::BackendInfo>> {
    Json(state.backends.list())
}

#[derive(Deserialize)]
pub(super) struct OfferParams {
    gpu: Option<String>,
    cpu: Option<String>,
    memory: Option<String>,
    #[serde(default)]
    spot: bool,
    max_price: Option<f64>,
}

/// `GET /api/offers?gpu=A100:8&cpu=..&memory=..&spot=true&max_price=P`: on-prem nodes first (price
/// 0), then cloud instance types that fit, by price. A region that fails is named in `warnings`;
/// the others still answer.
pub(super) async fn offers(
    Extract(state): Extract<AppState>,
    Query(p): Query<OfferParams>,
) -> Result<Json<api::Offers>, Error> {
    let bad = |field: &str, e: String| err(StatusCode::BAD_REQUEST, format!("--{field}: {e}"));
    let mut spec = ResourcesSpec { disk: None, ..ResourcesSpec::default() };
    if let Some(gpu) = &p.gpu {
        spec.gpu = Some(parse_gpu(gpu).map_err(|e| bad("gpu", e))?);
    }
    if let Some(cpu) = &p.cpu {
        spec.cpu = parse_cpu(cpu).map_err(|e| bad("cpu", e))?;
    }
    if let Some(memory) = &p.memory {
        spec.memory = parse_memory_range(memory).map_err(|e| bad("memory", e))?;
    }
    let q = OfferQuery { spec, spot: p.spot, max_price: p.max_price };
    let nodes: Vec<_> = state
        .store
        .nodes()?
        .into_iter()
        .filter(|n| !n.revoked)
        .filter_map(|n| n.inventory.map(|inv| (n.name, inv)))
        .collect();
    let mut offers = on_prem_offers(&nodes, &q);
    let (cloud, warnings) = state.backends.offers(&q).await;
    offers.extend(cloud);
    sort_offers(&mut offers);
    Ok(Json(api::Offers { offers, warnings }))
}
