//! What the nodes measured: a run's figures (`corral metrics RUN`), a GPU returned to service
//! (`corral node gpu enable`), and `/metrics` for Prometheus.

use axum::Json;
use axum::extract::{Path, State as Extract};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use corral_proto::api;

use super::{AppState, Error, err, find_run};

/// `GET /api/projects/{project}/runs/{name}/metrics`.
pub(super) async fn run_metrics(
    Extract(state): Extract<AppState>,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<api::RunMetrics>, Error> {
    let run = find_run(&state, &project, &name)?;
    let jobs = run
        .jobs
        .iter()
        .map(|j| {
            let mut out = api::JobMetrics::unreported(j.id.clone(), j.job_num, j.node_name.clone());
            let Some(view) = state.metrics.job(&j.id) else { return out };
            let c = &view.latest;
            out.at_ms = Some(view.updated_ms);
            out.cpu_millicores = c.cpu_millicores;
            out.memory_used = Some(c.memory_used);
            out.memory_limit = Some(c.memory_limit);
            out.network_rx = Some(c.network_rx);
            out.network_tx = Some(c.network_tx);
            out.disk_read = Some(c.disk_read);
            out.disk_write = Some(c.disk_write);
            out.history = view
                .points
                .iter()
                .map(|p| api::MetricsPoint {
                    at_ms: p.at_ms,
                    cpu_millicores: p.cpu_millicores(),
                    memory_used: p.memory_used,
                })
                .collect();
            out.gpus = view
                .gpus
                .iter()
                .map(|(index, latest, history)| api::GpuMetrics {
                    index: *index,
                    uuid: latest.as_ref().map(|g| g.uuid.clone()).unwrap_or_default(),
                    utilization: latest.as_ref().and_then(|g| g.utilization),
                    memory_used: latest.as_ref().and_then(|g| g.memory_used),
                    memory_total: latest.as_ref().and_then(|g| g.memory_total),
                    temperature: latest.as_ref().and_then(|g| g.temperature),
                    power_mw: latest.as_ref().and_then(|g| g.power_mw),
                    history: history
                        .iter()
                        .map(|p| api::GpuPoint {
                            at_ms: p.at_ms,
                            utilization: p.utilization(),
                            memory_used: p.memory_used(),
                        })
                        .collect(),
                })
                .collect();
            out
        })
        .collect();
    Ok(Json(api::RunMetrics { run: run.name, jobs }))
}

/// `POST /api/nodes/{name}/gpus/{index}/enable`: an operator returns a GPU to service. Should its
/// fault still show in the node's next report, it goes out again.
pub(super) async fn enable_gpu(
    Extract(state): Extract<AppState>,
    Path((name, index)): Path<(String, u32)>,
) -> Result<Json<api::GpuEnabled>, Error> {
    let Some(node) = state.store.node_by_name(&name)? else {
        return Err(err(StatusCode::NOT_FOUND, format!("no node named {name:?} (see `corral node list`)")));
    };
    let gpus = node.inventory.as_ref().map_or(0, |i| i.gpus.len());
    if index as usize >= gpus {
        return Err(err(
            StatusCode::NOT_FOUND,
            format!("node {} has no GPU {index} (it has {gpus}: 0 to {})", node.name, gpus.saturating_sub(1)),
        ));
    }
    let was_out = state.store.unmark_gpu(&node.id, index)?;
    state.health.enable(&node.id, index);
    if was_out {
        tracing::info!(node = %node.name, gpu = index, "GPU returned to service by an operator");
        state.scheduler.node_changed(&node.id);
    }
    Ok(Json(api::GpuEnabled { node: node.name, index, was_out }))
}

/// `GET /metrics`: Prometheus' text format.
pub(crate) async fn prometheus(Extract(state): Extract<AppState>) -> Result<Response, Error> {
    let text = tokio::task::spawn_blocking(move || crate::metrics::prometheus::render(&state))
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e}")))?
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot gather the metrics: {e:#}")))?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::prometheus::CONTENT_TYPE)], text).into_response())
}

/// A listener for `/metrics` alone, without authentication (`--metrics-listen`): for a Prometheus
/// on a network the operator trusts.
pub async fn serve_open(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let app = axum::Router::new().route("/metrics", axum::routing::get(prometheus)).with_state(state);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await {
        tracing::error!("the metrics listener failed: {e}");
    }
}
