//! The streams an agent opens on its connection: job logs (acknowledged once stored) and fetches
//! of images, uploads and agent binaries.

use anyhow::Context;

use corral_proto::ids::{JobId, NodeId};
use corral_proto::wire::io::{read_frame, write_frame};
use corral_proto::wire::{AgentMessage, CoordinatorMessage, ImageReply, LogFrame};

use crate::State;

/// Answers a stream an agent opened: `OpenLog` (a job's output, acknowledged once stored),
/// `FetchImage` (the image as a `docker load` tar, or `NotStored`) or `FetchAgent` (the binary's
/// bytes, or nothing).
pub(super) async fn serve_stream(
    state: &State,
    node: &NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let image = match read_frame::<AgentMessage, _>(&mut recv).await? {
        Some(AgentMessage::OpenLog { job_id }) => return store_log(state, node, job_id, send, recv).await,
        Some(AgentMessage::FetchImage { image }) => image,
        Some(AgentMessage::FetchUpload { sha256 }) => return send_upload(state, &sha256, send).await,
        Some(AgentMessage::FetchAgent { sha256 }) => {
            if let Some(binary) = state.agent_dist.by_digest(&sha256) {
                send.write_all(&binary.bytes).await?;
            }
            send.finish()?;
            return Ok(());
        }
        _ => anyhow::bail!("a stream that did not start with OpenLog, FetchImage, FetchUpload or FetchAgent"),
    };
    // A project's image goes only to a node that runs one of that project's jobs, tagged as the
    // node asked for it; a shared one is tagged with its stored name.
    let stored = match crate::images::unqualified(&image) {
        Some((project, config)) if state.store.node_runs_project(node, project)? => {
            state.store.image_by_config(project, config)?.map(|i| (i, image.clone()))
        }
        Some(_) => None,
        None => state.store.image(None, &crate::images::normalize(&image))?.map(|i| {
            let tag = i.name.clone();
            (i, tag)
        }),
    };
    let plan = stored.as_ref().map(|(i, tag)| state.images.plan(i, tag)).transpose()?;
    let Some(tar) = plan else {
        write_frame(&mut send, &CoordinatorMessage::ImageReply(ImageReply::NotStored)).await?;
        send.finish()?;
        return Ok(());
    };
    tracing::info!(image, size = tar.size, "sending an image");
    write_frame(&mut send, &CoordinatorMessage::ImageReply(ImageReply::Stored { size: tar.size })).await?;
    tar.send(&mut send).await?;
    send.finish()?;
    Ok(())
}

/// An upload from the store: `ImageReply::Stored { size }` and its bytes, or `NotStored`.
async fn send_upload(state: &State, sha256: &str, mut send: quinn::SendStream) -> anyhow::Result<()> {
    let file = match state.uploads.path(sha256) {
        Some(path) => tokio::fs::File::open(&path).await.ok(),
        None => None,
    };
    let Some(mut file) = file else {
        write_frame(&mut send, &CoordinatorMessage::ImageReply(ImageReply::NotStored)).await?;
        send.finish()?;
        return Ok(());
    };
    let size = file.metadata().await?.len();
    tracing::info!(sha256, size, "sending an upload");
    write_frame(&mut send, &CoordinatorMessage::ImageReply(ImageReply::Stored { size })).await?;
    tokio::io::copy(&mut file, &mut send).await?;
    send.finish()?;
    Ok(())
}

/// One job's output on an acknowledged log stream: says how much is stored, appends what follows,
/// and at the end confirms the whole output synced to disk, after which the agent may remove the
/// container. Only a job placed on this node may be written to: the job id comes from the peer
/// and names a file.
async fn store_log(
    state: &State,
    node: &NodeId,
    job_id: JobId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let placed_here = state.store.job(&job_id)?.is_some_and(|j| j.node_id.as_ref() == Some(node));
    if !placed_here {
        // Nothing to keep, so nothing for the agent to keep either.
        tracing::warn!(job = %job_id, "discarding the log of a job not placed on this node");
        write_frame(&mut send, &CoordinatorMessage::LogStored { offset: 0, complete: true }).await?;
        let _ = send.finish();
        return Ok(());
    }
    let log = state.logs.job(&job_id);
    write_frame(&mut send, &CoordinatorMessage::LogStored { offset: log.stored(), complete: log.is_complete() })
        .await?;
    while let Some(frame) = read_frame::<LogFrame, _>(&mut recv).await? {
        match frame {
            LogFrame::Chunk { offset, data } => {
                let stored = log.append(offset, &data).with_context(|| format!("cannot store logs of job {job_id}"))?;
                state.telemetry.log_bytes.inc_by(stored as u64);
            }
            LogFrame::End { total } => {
                // Syncing a large log takes a while: never on the thread that carries heartbeats.
                let syncing = log.clone();
                let complete = tokio::task::spawn_blocking(move || syncing.finish_synced(total))
                    .await?
                    .with_context(|| format!("cannot sync logs of job {job_id}"))?;
                write_frame(&mut send, &CoordinatorMessage::LogStored { offset: log.stored(), complete }).await?;
                let _ = send.finish();
                // The agent reads the answer before it closes the stream.
                let _ = send.stopped().await;
                return Ok(());
            }
            LogFrame::Open { .. } => anyhow::bail!("an Open on an acknowledged log stream"),
        }
    }
    Ok(())
}

/// A log stream of an agent that does not wait for acknowledgement (older agents).
pub(super) async fn receive_logs(state: &State, node: &NodeId, mut stream: quinn::RecvStream) -> anyhow::Result<()> {
    let Some(LogFrame::Open { job_id }) = read_frame::<LogFrame, _>(&mut stream).await? else {
        anyhow::bail!("log stream did not start with Open");
    };
    let placed_here = state.store.job(&job_id)?.is_some_and(|j| j.node_id.as_ref() == Some(node));
    if !placed_here {
        // Read it to the end without storing it: the agent then knows it may drop the container.
        tracing::warn!(job = %job_id, "discarding the log of a job not placed on this node");
        while read_frame::<LogFrame, _>(&mut stream).await?.is_some() {}
        return Ok(());
    }
    let log = state.logs.job(&job_id);
    while let Some(frame) = read_frame::<LogFrame, _>(&mut stream).await? {
        match frame {
            LogFrame::Chunk { offset, data } => {
                let stored = log.append(offset, &data).with_context(|| format!("cannot store logs of job {job_id}"))?;
                state.telemetry.log_bytes.inc_by(stored as u64);
            }
            LogFrame::End { total } => log.finish(total),
            LogFrame::Open { .. } => anyhow::bail!("a second Open on one log stream"),
        }
    }
    Ok(())
}
