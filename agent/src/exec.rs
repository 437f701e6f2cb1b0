//! `corral exec`: a command in a job's running container, over a stream the coordinator opened with
//! `OpenExec`. After `TunnelReply::Connected`, [`ExecFrame`]s carry input and resizes in, output
//! out, and the exit code last.

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use corral_proto::wire::io::{read_frame, write_frame};
use corral_proto::wire::{AgentMessage, ExecFrame, ExecRequest, TunnelReply};

use corral_shim::ExecOutput;

use crate::jobs::Jobs;

pub async fn serve(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    req: ExecRequest,
    jobs: &Jobs,
) -> anyhow::Result<()> {
    let exec = match jobs.exec(&req).await {
        Ok(e) => e,
        Err(message) => {
            write_frame(&mut send, &AgentMessage::TunnelReply(TunnelReply::Failed { message })).await?;
            let _ = send.finish();
            return Ok(());
        }
    };
    tracing::info!(job = %req.job_id, command = ?req.command, tty = req.tty, "exec");
    write_frame(&mut send, &AgentMessage::TunnelReply(TunnelReply::Connected)).await?;
    let corral_shim::Exec { id, mut output, mut input } = exec;
    let shim = jobs.shim().clone();

    let exec_id = id.clone();
    let feed = async move {
        while let Some(frame) = read_frame::<ExecFrame, _>(&mut recv).await? {
            match frame {
                ExecFrame::Stdin(data) => input.write_all(&data).await?,
                ExecFrame::StdinEnd => input.shutdown().await?,
                ExecFrame::Resize(size) => {
                    if let Err(e) = shim.exec_resize(&exec_id, size.rows, size.cols).await {
                        tracing::debug!("resizing an exec terminal: {e}");
                    }
                }
                other => anyhow::bail!("unexpected frame from the user's side: {other:?}"),
            }
        }
        anyhow::Ok(())
    };
    let drain = async {
        while let Some(item) = output.next().await {
            let frame = match item? {
                ExecOutput::Stderr(data) => ExecFrame::Stderr(data.to_vec()),
                ExecOutput::Stdout(data) => ExecFrame::Stdout(data.to_vec()),
            };
            write_frame(&mut send, &frame).await?;
        }
        let code = jobs.shim().exec_exit_code(&id).await.ok().flatten();
        write_frame(&mut send, &ExecFrame::Exit { code }).await?;
        let _ = send.finish();
        anyhow::Ok(())
    };
    // The command's end ends the session. Input that ends first (end of file) leaves the output
    // going; a broken input side (the user went away) ends it.
    let feed = async {
        feed.await?;
        std::future::pending::<anyhow::Result<()>>().await
    };
    tokio::select! {
        r = drain => r,
        r = feed => r,
    }
}
