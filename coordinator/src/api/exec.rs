//! `GET /api/projects/<project>/runs/<run>/exec?command=[...]&job=K&tty=..`, upgraded to
//! `corral-exec`: runs a command in the job's container. Once switched, the connection carries
//! [`corral_proto::wire::ExecFrame`]s straight between the CLI and the agent.

use axum::extract::{Path, Query, Request, State as Extract};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use corral_proto::api::EXEC_PROTOCOL;
use corral_proto::wire::{ExecRequest, TermSize};

use super::proxy::{expect_upgrade, running_job, switch, tunnel_error};
use super::{AppState, Error, err};
use crate::nodes::tunnel;

#[derive(Deserialize)]
pub(super) struct ExecQuery {
    /// The command and its arguments, as a JSON array of strings.
    command: String,
    #[serde(default)]
    job: u32,
    #[serde(default)]
    tty: bool,
    rows: Option<u16>,
    cols: Option<u16>,
}

pub(super) async fn exec(
    Extract(state): Extract<AppState>,
    Path((project, name)): Path<(String, String)>,
    Query(q): Query<ExecQuery>,
    mut req: Request,
) -> Result<Response, Error> {
    expect_upgrade(&req, EXEC_PROTOCOL)?;
    let command: Vec<String> = serde_json::from_str(&q.command)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("command: not a JSON array of strings: {e}")))?;
    if command.is_empty() {
        return Err(err(StatusCode::BAD_REQUEST, "command: give the command to run"));
    }
    let (node, job_id) = running_job(&state, &project, &name, q.job)?;
    let size = q.rows.zip(q.cols).map(|(rows, cols)| TermSize { rows, cols });
    let connected = state.activity.connect(&job_id);
    let request = ExecRequest { job_id, command, tty: q.tty, size };
    let stream = tunnel::open_exec(&state, &node, request).await.map_err(tunnel_error)?;
    Ok(switch(&mut req, EXEC_PROTOCOL, stream, connected))
}
