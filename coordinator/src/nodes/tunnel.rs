//! Tunnels into containers over an agent's own connection: a bi-stream opened by the coordinator,
//! one `OpenTunnel { job, port }` frame, the agent's `TunnelReply`, then raw bytes both ways. The
//! service proxy and port forwarding (`corral attach`) both stand on [`open`]; `corral exec` and
//! SSH open the same way with another first frame.

use std::time::Duration;

use corral_proto::ids::{JobId, NodeId};
use corral_proto::wire::io::{read_frame, write_frame};
use corral_proto::wire::{
    AgentMessage, CoordinatorMessage, ExecRequest, HEADER_LEN, TunnelReply, decode_header, decode_payload,
};

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
    let session = state.sessions.get(node).ok_or_else(|| TunnelError::NodeOffline(node.to_string()))?;
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

/// A tunnel opened without waiting for the agent's answer: the first bytes (a request) travel
/// with `OpenTunnel`, saving a round trip. The answer is read before the first byte back; a refusal
/// surfaces there as an error of kind `ConnectionRefused` carrying the agent's words.
pub type PipelinedTunnel = tokio::io::Join<ReplyFirst<quinn::RecvStream>, quinn::SendStream>;

/// Opens a tunnel to `port` of `job`'s container on `node` without waiting for the agent.
pub async fn open_pipelined(
    state: &State,
    node: &NodeId,
    job: &JobId,
    port: u16,
) -> Result<PipelinedTunnel, TunnelError> {
    let session = state.sessions.get(node).ok_or_else(|| TunnelError::NodeOffline(node.to_string()))?;
    let stream_err = |why: String| TunnelError::Stream { node: session.name.clone(), why };
    let (mut send, recv) = session.conn.open_bi().await.map_err(|e| stream_err(e.to_string()))?;
    write_frame(&mut send, &CoordinatorMessage::OpenTunnel { job_id: job.clone(), port })
        .await
        .map_err(|e| stream_err(e.to_string()))?;
    Ok(tokio::io::join(ReplyFirst::new(recv), send))
}

/// The receiving side of a pipelined tunnel: the agent's `TunnelReply` frame, then the bytes.
pub struct ReplyFirst<R> {
    recv: R,
    header: [u8; HEADER_LEN],
    filled: usize,
    /// The reply's payload once the header is in: (bytes so far, length).
    payload: Option<(Vec<u8>, usize)>,
    open: bool,
}

impl<R> ReplyFirst<R> {
    pub fn new(recv: R) -> Self {
        Self { recv, header: [0; HEADER_LEN], filled: 0, payload: None, open: false }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for ReplyFirst<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::io::{Error, ErrorKind};
        use std::task::Poll;
        let this = &mut *self;
        while !this.open {
            // One read at a time into the header, then into the payload: never past the reply.
            let (target, at): (&mut [u8], usize) = match &mut this.payload {
                None => (&mut this.header[..], this.filled),
                Some((bytes, len)) => {
                    let at = bytes.len();
                    bytes.resize(*len, 0);
                    (&mut bytes[..], at)
                }
            };
            let mut rb = tokio::io::ReadBuf::new(&mut target[at..]);
            match std::pin::Pin::new(&mut this.recv).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if let Some((bytes, _)) = &mut this.payload {
                        bytes.truncate(at);
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Err(Error::new(
                    ErrorKind::UnexpectedEof,
                    "the node closed the tunnel before answering",
                )));
            }
            match &mut this.payload {
                None => {
                    this.filled += n;
                    if this.filled == HEADER_LEN {
                        let len = decode_header(&this.header).map_err(|e| Error::new(ErrorKind::InvalidData, e))?;
                        this.payload = Some((Vec::with_capacity(len as usize), len as usize));
                    }
                }
                Some((bytes, len)) => {
                    bytes.truncate(at + n);
                    if bytes.len() == *len {
                        match decode_payload::<AgentMessage>(bytes) {
                            Ok(AgentMessage::TunnelReply(TunnelReply::Connected)) => this.open = true,
                            Ok(AgentMessage::TunnelReply(TunnelReply::Failed { message })) => {
                                return Poll::Ready(Err(Error::new(ErrorKind::ConnectionRefused, message)));
                            }
                            Ok(other) => {
                                return Poll::Ready(Err(Error::new(
                                    ErrorKind::InvalidData,
                                    format!("unexpected answer {other:?}"),
                                )));
                            }
                            Err(e) => return Poll::Ready(Err(Error::new(ErrorKind::InvalidData, e))),
                        }
                    }
                }
            }
        }
        std::pin::Pin::new(&mut this.recv).poll_read(cx, buf)
    }
}

/// An HTTP/1.1 client connection over a tunnel (upgrades allowed), driven by a task of its own.
pub async fn http1<T>(tunnel: T) -> Result<hyper::client::conn::http1::SendRequest<axum::body::Body>, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tunnel)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("tunnelled HTTP connection ended: {e}");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::wire::encode;
    use tokio::io::AsyncReadExt;

    /// A reader that hands out one byte per read, to walk every state of the reply's parsing.
    struct Trickle(std::io::Cursor<Vec<u8>>);

    impl tokio::io::AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let mut one = [0u8; 1];
            let n = std::io::Read::read(&mut self.0, &mut one)?;
            buf.put_slice(&one[..n]);
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn reply(r: TunnelReply) -> Vec<u8> {
        encode(&AgentMessage::TunnelReply(r)).expect("encodes")
    }

    #[tokio::test]
    async fn the_reply_is_read_first_then_the_bytes_pass() {
        let mut bytes = reply(TunnelReply::Connected);
        bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        for whole in [true, false] {
            let mut out = String::new();
            if whole {
                ReplyFirst::new(&bytes[..]).read_to_string(&mut out).await.expect("reads");
            } else {
                ReplyFirst::new(Trickle(std::io::Cursor::new(bytes.clone())))
                    .read_to_string(&mut out)
                    .await
                    .expect("reads");
            }
            assert_eq!(out, "HTTP/1.1 200 OK\r\n\r\n");
        }
    }

    #[tokio::test]
    async fn a_refusal_is_an_error_with_the_agent_s_words() {
        let bytes = reply(TunnelReply::Failed { message: "port 80 is closed".into() });
        let mut out = Vec::new();
        let e = ReplyFirst::new(Trickle(std::io::Cursor::new(bytes))).read_to_end(&mut out).await.expect_err("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(e.to_string(), "port 80 is closed");
        let e = ReplyFirst::new(&b"CRRL"[..]).read_to_end(&mut out).await.expect_err("cut short");
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
        let e = ReplyFirst::new(&b"GARBAGE-BYTES"[..]).read_to_end(&mut out).await.expect_err("not a frame");
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }
}
