//! Tunnels into containers. The coordinator opens a bi-stream on the agent's connection, sends one
//! `OpenTunnel { job, port }` frame, and this side connects to that port of the job's container and
//! answers `TunnelReply`; from then on the stream carries raw bytes both ways until either side
//! closes its half. The node accepts no inbound connection: everything rides the link it dialed.
//! One mechanism serves services, port forwarding, `corral exec` (a stream that opens with
//! `OpenExec` instead, see [`crate::exec`]) and SSH (`OpenSsh`, see [`crate::ssh`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use corral_proto::wire::io::{read_frame, write_frame};
use corral_proto::wire::{AgentMessage, CoordinatorMessage, TunnelReply};

use crate::jobs::Jobs;

/// How long the coordinator has to name the target, and the container to accept the connection.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes buffered per direction: a slow reader slows the writer (QUIC flow control does the rest).
const BUFFER: usize = 64 * 1024;

/// Serves the tunnels the coordinator opens on this connection until it closes.
pub async fn serve(conn: quinn::Connection, jobs: Arc<Jobs>) {
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return, // the session is over; the link redials
        };
        let jobs = jobs.clone();
        tokio::spawn(async move {
            if let Err(e) = tunnel(send, recv, jobs).await {
                tracing::debug!("tunnel ended: {e:#}");
            }
        });
    }
}

async fn tunnel(mut send: quinn::SendStream, mut recv: quinn::RecvStream, jobs: Arc<Jobs>) -> anyhow::Result<()> {
    let open = tokio::time::timeout(OPEN_TIMEOUT, read_frame::<CoordinatorMessage, _>(&mut recv)).await;
    let (job_id, port) = match open {
        Ok(Ok(Some(CoordinatorMessage::OpenTunnel { job_id, port }))) => (job_id, port),
        Ok(Ok(Some(CoordinatorMessage::OpenExec(req)))) => return crate::exec::serve(send, recv, req, &jobs).await,
        Ok(Ok(Some(CoordinatorMessage::OpenSsh { job_id, authorized_keys }))) => {
            return crate::ssh::serve(send, recv, job_id, authorized_keys, jobs).await;
        }
        Ok(Ok(other)) => anyhow::bail!("a stream must open with OpenTunnel, OpenExec or OpenSsh, got {other:?}"),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => anyhow::bail!("no OpenTunnel within {OPEN_TIMEOUT:?}"),
    };
    let connected = match jobs.address(&job_id).await {
        Ok(ip) => {
            let addr = SocketAddr::new(ip, port);
            match tokio::time::timeout(OPEN_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => Ok(tcp),
                Ok(Err(e)) => Err(format!("cannot connect to port {port} of job {job_id}'s container: {e}")),
                Err(_) => Err(format!("port {port} of job {job_id}'s container did not answer within 10 s")),
            }
        }
        Err(why) => Err(why),
    };
    let tcp = match connected {
        Ok(tcp) => {
            write_frame(&mut send, &AgentMessage::TunnelReply(TunnelReply::Connected)).await?;
            tcp
        }
        Err(message) => {
            tracing::debug!(job = %job_id, port, "tunnel refused: {message}");
            write_frame(&mut send, &AgentMessage::TunnelReply(TunnelReply::Failed { message })).await?;
            let _ = send.finish();
            return Ok(());
        }
    };
    let _ = tcp.set_nodelay(true);
    let (tcp_read, tcp_write) = tcp.into_split();
    pipe(recv, send, tcp_read, tcp_write).await
}

/// Copies both ways with bounded buffers; each direction closes its write half when its read half
/// ends (half-close), and the tunnel ends when both directions have.
pub async fn pipe(
    a_read: impl AsyncRead + Unpin,
    a_write: impl AsyncWrite + Unpin,
    b_read: impl AsyncRead + Unpin,
    b_write: impl AsyncWrite + Unpin,
) -> anyhow::Result<()> {
    async fn one_way(read: impl AsyncRead + Unpin, mut write: impl AsyncWrite + Unpin) -> std::io::Result<u64> {
        let mut read = BufReader::with_capacity(BUFFER, read);
        let n = tokio::io::copy_buf(&mut read, &mut write).await?;
        write.shutdown().await?;
        Ok(n)
    }
    let (up, down) = tokio::join!(one_way(a_read, b_write), one_way(b_read, a_write));
    up?;
    down?;
    Ok(())
}
