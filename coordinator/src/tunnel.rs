//! Tunnels into containers over an agent's own connection: a bi-stream opened by the coordinator,
//! one `OpenTunnel { job, port }` frame, the agent's `TunnelReply`, then raw bytes both ways. The
//! service proxy and port forwarding (`corral attach`) both stand on [`open`]; `corral exec` and
//! SSH open the same way with another first frame.

use std::time::Duration;

use corral_proto::ids::{JobId, NodeId};
use corral_proto::wire::io::{read_frame, write_frame};
use corral_proto::wire::{AgentMessage, CoordinatorMessage, ExecRequest, TunnelReply};

use crate::State;

/// How long the agent has to connect to the container and answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("node {0} is not connected")]
    NodeOffline(String),
    #[error("cannot open a stream to node {node}: {why}")]
    Stream { node: String, why: String },
    #[error("node {node} did not answer the tunnel request within {OPEN_TIMEOUT:?}")]
    Timeout { node: String },
    /// The agent could not reach the port (closed, container gone): its words.
    #[error("{0}")]
    Refused(String),
}

/// A byte pipe to a port of a job's container.
pub type Tunnel = tokio::io::Join<quinn::RecvStream, quinn::SendStream>;

/// Opens a tunnel to `port` of `job`'s container on `node`.
pub async fn open(state: &State, node: &NodeId, job: &JobId, port: u16) -> Result<Tunnel, TunnelError> {
    open_stream(state, node, CoordinatorMessage::OpenTunnel { job_id: job.clone(), port }).await
}

/// Starts a command in a job's container on `node`; the stream then carries
/// [`corral_proto::wire::ExecFrame`]s between the user and the agent.
pub async fn open_exec(state: &State, node: &NodeId, req: ExecRequest) -> Result<Tunnel, TunnelError> {
    open_stream(state, node, CoordinatorMessage::OpenExec(req)).await
}

/// Has the agent serve SSH for `job`'s container on a new stream; only `authorized_keys` (OpenSSH
/// public key lines) may log in. The stream then carries the SSH protocol.
pub async fn open_ssh(
    state: &State,
    node: &NodeId,
    job: &JobId,
    authorized_keys: Vec<String>,
) -> Result<Tunnel, TunnelError> {
    open_stream(state, node, CoordinatorMessage::OpenSsh { job_id: job.clone(), authorized_keys }).await
}

/// Opens a bi-stream to the node, sends `first`, and waits for the agent's `TunnelReply`.
async fn open_stream(state: &State, node: &NodeId, first: CoordinatorMessage) -> Result<Tunnel, TunnelError> {
    let session = state.session(node).ok_or_else(|| TunnelError::NodeOffline(node.to_string()))?;
    let stream_err = |why: String| TunnelError::Stream { node: session.name.clone(), why };
    let attempt = async {
        let (mut send, mut recv) = session.conn.open_bi().await.map_err(|e| stream_err(e.to_string()))?;
        write_frame(&mut send, &first).await.map_err(|e| stream_err(e.to_string()))?;
        match read_frame::<AgentMessage, _>(&mut recv).await {
            Ok(Some(AgentMessage::TunnelReply(TunnelReply::Connected))) => Ok(tokio::io::join(recv, send)),
            Ok(Some(AgentMessage::TunnelReply(TunnelReply::Failed { message }))) => Err(TunnelError::Refused(message)),
            Ok(other) => Err(stream_err(format!("unexpected answer {other:?}"))),
            Err(e) => Err(stream_err(e.to_string())),
        }
    };
    tokio::time::timeout(OPEN_TIMEOUT, attempt)
        .await
        .map_err(|_| TunnelError::Timeout { node: session.name.clone() })?
}

/// An HTTP/1.1 client connection over a tunnel (upgrades allowed), driven by a task of its own.
pub async fn http1(tunnel: Tunnel) -> Result<hyper::client::conn::http1::SendRequest<axum::body::Body>, hyper::Error> {
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tunnel)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("tunnelled HTTP connection ended: {e}");
        }
    });
    Ok(sender)
}
