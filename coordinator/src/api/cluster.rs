//! Nodes and fleets: listing, cordon / uncordon / drain, and fleet configurations.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State as Extract};
use axum::http::StatusCode;

use corral_proto::api::{self, CordonNodes, DrainNode, NodeStatus, SubmitFleet};
use corral_proto::ids::NodeId;
use corral_proto::job::TerminationReason;

use super::{AppState, Error, check_project, err};
use crate::State;
use crate::scheduling::handle::Command;
use crate::store::NodeRow;

#[derive(serde::Deserialize)]
pub(super) struct NodePage {
    /// At most this many nodes (1 to 1,000); none: every node.
    limit: Option<u32>,
    /// The id of the last node of the previous page.
    after: Option<NodeId>,
}

/// `GET /api/nodes?limit=&after=`: nodes by name, a page at a time when `limit` is given.
pub(super) async fn list_nodes(
    Extract(state): Extract<AppState>,
    Query(q): Query<NodePage>,
) -> Result<Json<Vec<api::Node>>, Error> {
    let max = crate::store::MAX_PAGE;
    if let Some(limit) = q.limit.filter(|l| !(1..=max).contains(l)) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("limit={limit}: a page holds 1 to {max} nodes (the next page: after=<the last node's id>)"),
        ));
    }
    if let Some(after) = &q.after
        && state.store.node(after)?.is_none_or(|n| n.revoked)
    {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("after={after}: no node with that id (pass the id of the last node of a page)"),
        ));
    }
    let (rows, loads) = if q.limit.is_none() && q.after.is_none() {
        (state.store.nodes()?, state.store.node_loads(None)?)
    } else {
        let rows = state.store.nodes_page(q.after.as_ref(), q.limit.unwrap_or(u32::MAX))?;
        let ids: Vec<_> = rows.iter().map(|n| n.id.clone()).collect();
        (rows, state.store.node_loads(Some(&ids))?)
    };
    let connected = state.sessions.connected();
    // Connected nodes' heartbeats are in memory only (see `seen`).
    let heard = crate::nodes::seen::last_seen_ms(&state);
    let mut refusals = crate::nodes::fleet_nodes::Refusals::new(&state);
    let nodes = rows
        .into_iter()
        .map(|n| {
            let load = loads.get(&n.id).cloned().unwrap_or_default();
            let last_seen_ms = n.last_seen_ms.max(heard.get(&n.id).copied());
            let refused = refusals.of(&n);
            let gpus_out_of_service = state
                .health
                .marks(&n.id)
                .into_iter()
                .map(|m| api::GpuOutOfService { index: m.gpu, uuid: m.uuid, reason: m.reason, since_ms: m.since_ms })
                .collect();
            api::Node {
                status: if connected.contains(&n.id) { NodeStatus::Ready } else { NodeStatus::Offline },
                busy_gpus: load.gpus,
                running_jobs: load.jobs,
                id: n.id,
                name: n.name,
                fleet: n.fleet,
                address: n.address,
                agent_version: n.agent_version,
                enrolled_at_ms: n.enrolled_ms,
                last_seen_ms,
                inventory: n.inventory,
                cordoned: n.cordoned,
                refused,
                gpus_out_of_service,
            }
        })
        .collect();
    Ok(Json(nodes))
}

fn node_by_name(state: &State, name: &str) -> Result<NodeRow, Error> {
    state
        .store
        .node_by_name(name)?
        .ok_or_else(|| err(StatusCode::NOT_FOUND, format!("no node named {name:?} (see `corral node list`)")))
}

fn set_cordon(state: &State, name: &str, cordoned: bool) -> Result<NodeRow, Error> {
    let node = node_by_name(state, name)?;
    state.store.set_cordoned(&node.id, cordoned)?;
    state.scheduler.node_changed(&node.id);
    tracing::info!(node = %node.name, cordoned, "node cordon changed");
    Ok(node)
}

pub(super) async fn cordon(Extract(state): Extract<AppState>, Path(name): Path<String>) -> Result<Json<()>, Error> {
    set_cordon(&state, &name, true)?;
    Ok(Json(()))
}

pub(super) async fn uncordon(Extract(state): Extract<AppState>, Path(name): Path<String>) -> Result<Json<()>, Error> {
    set_cordon(&state, &name, false)?;
    Ok(Json(()))
}

/// Cordons or uncordons many nodes in one request (`corral node cordon --all`, `--fleet F`).
pub(super) async fn cordon_many(
    Extract(state): Extract<AppState>,
    Json(sel): Json<CordonNodes>,
) -> Result<Json<Vec<String>>, Error> {
    sel.check().map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))?;
    let chosen = usize::from(sel.all) + usize::from(sel.fleet.is_some()) + usize::from(!sel.nodes.is_empty());
    if chosen != 1 {
        return Err(err(StatusCode::BAD_REQUEST, "name nodes, or give either `fleet` or `all` (one of the three)"));
    }
    let changed = match state.store.set_cordoned_many(&sel)? {
        Ok(changed) => changed,
        Err(name) => {
            return Err(err(StatusCode::NOT_FOUND, format!("no node named {name:?} (see `corral node list`)")));
        }
    };
    let ids: Vec<_> = changed.iter().map(|(id, _)| id.clone()).collect();
    state.scheduler.send(Command::Cordon { nodes: ids, cordoned: sel.cordoned });
    tracing::info!(nodes = changed.len(), cordoned = sel.cordoned, "nodes cordon changed");
    Ok(Json(changed.into_iter().map(|(_, name)| name).collect()))
}

/// Cordons the node, then, past the deadline, stops the jobs still on it. The coordinator does the
/// waiting, so the drain goes on when the CLI goes away.
pub(super) async fn drain(
    Extract(state): Extract<AppState>,
    Path(name): Path<String>,
    body: Option<Json<DrainNode>>,
) -> Result<Json<()>, Error> {
    if let Some(Json(b)) = &body {
        b.check().map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))?;
    }
    let node = set_cordon(&state, &name, true)?;
    if let Some(secs) = body.and_then(|b| b.deadline_secs) {
        let state2 = state.clone();
        state.tasks.spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let jobs = match state2.store.placed_jobs_on(&node.id) {
                Ok(j) => j,
                Err(e) => return tracing::error!("drain of {}: {e:#}", node.name),
            };
            for job in jobs.into_iter().filter(|j| j.node_id.as_ref() == Some(&node.id)) {
                tracing::info!(node = %node.name, job = %job.id, "drain deadline passed; stopping the job");
                if let Err(e) = state2.stop_job(&job.id, TerminationReason::StoppedByUser, false) {
                    tracing::error!("drain of {}: {e:#}", node.name);
                }
            }
        });
    }
    Ok(Json(()))
}

fn fleet_view(
    state: &State,
    project: &str,
    name: String,
    cfg: corral_proto::config::FleetConfig,
    created: i64,
) -> Result<api::Fleet, Error> {
    let connected = state.sessions.connected();
    let members: Vec<NodeRow> =
        state.store.nodes()?.into_iter().filter(|n| n.fleet.as_deref() == Some(name.as_str())).collect();
    Ok(api::Fleet {
        project: project.to_owned(),
        placement: cfg.placement,
        ready_nodes: members.iter().filter(|n| connected.contains(&n.id)).count() as u32,
        nodes: members.into_iter().map(|n| n.name).collect(),
        created_at_ms: created,
        configuration: cfg,
        name,
    })
}

pub(super) async fn put_fleet(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
    Json(req): Json<SubmitFleet>,
) -> Result<axum::response::Response, Error> {
    check_project(&state, &project)?;
    let cfg = corral_proto::admission::check_fleet(&req.configuration)
        .map_err(|e| err(StatusCode::BAD_REQUEST, e.to_string()))?;
    let name = cfg.name.clone().unwrap_or_default();
    // Nodes name their fleet, not its project: a fleet's name is the cluster's, once.
    if let Some(owner) = state.store.fleet_projects(&name)?.into_iter().find(|p| *p != project) {
        return Err(err(
            StatusCode::CONFLICT,
            format!(
                "fleet {name:?} is project {owner}'s (a fleet's name is unique in the cluster): choose another name"
            ),
        ));
    }
    state.store.put_fleet(&project, &name, cfg)?;
    // Which nodes are a cluster may have changed: refresh them for the scheduler.
    for n in state.store.nodes()?.into_iter().filter(|n| n.fleet.as_deref() == Some(name.as_str())) {
        state.scheduler.node_changed(&n.id);
    }
    tracing::info!(fleet = %name, placement = ?cfg.placement, "fleet applied");
    let created = state.store.fleets(&project)?.into_iter().find(|f| f.0 == name).map_or(0, |f| f.2);
    let view = fleet_view(&state, &project, name.clone(), cfg.clone(), created)?;
    Ok(super::access::naming(view, &name))
}

pub(super) async fn list_fleets(
    Extract(state): Extract<AppState>,
    Path(project): Path<String>,
) -> Result<Json<Vec<api::Fleet>>, Error> {
    check_project(&state, &project)?;
    let mut out = Vec::new();
    for (name, cfg, created) in state.store.fleets(&project)? {
        out.push(fleet_view(&state, &project, name, cfg, created)?);
    }
    Ok(Json(out))
}

pub(super) async fn get_fleet(
    Extract(state): Extract<AppState>,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<api::Fleet>, Error> {
    check_project(&state, &project)?;
    let Some((name, cfg, created)) = state.store.fleets(&project)?.into_iter().find(|f| f.0 == name) else {
        return Err(err(StatusCode::NOT_FOUND, format!("no fleet named {name:?} (see `corral fleet list`)")));
    };
    Ok(Json(fleet_view(&state, &project, name, cfg, created)?))
}

/// Deletes a fleet's configuration. Its nodes stay enrolled; they are no longer a cluster.
pub(super) async fn delete_fleet(
    Extract(state): Extract<AppState>,
    Path((project, name)): Path<(String, String)>,
) -> Result<Json<()>, Error> {
    check_project(&state, &project)?;
    if !state.store.delete_fleet(&project, &name)? {
        return Err(err(StatusCode::NOT_FOUND, format!("no fleet named {name:?}")));
    }
    for n in state.store.nodes()?.into_iter().filter(|n| n.fleet.as_deref() == Some(name.as_str())) {
        state.scheduler.node_changed(&n.id);
    }
    Ok(Json(()))
}
