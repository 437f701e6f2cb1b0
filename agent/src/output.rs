//! A job's output on this host: spooled to a file in the state dir as the container writes it, and
//! shipped from there to the coordinator, which says how much it has stored. The spool goes only
//! with the container, after the coordinator confirmed the whole output on its disk: a link that
//! is down, a coordinator that restarts, or Docker's log rotation lose no byte of it.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

use corral_proto::ids::JobId;
use corral_proto::wire::io::{read_frame, write_frame};
use corral_proto::wire::{AgentMessage, CoordinatorMessage, LogFrame};
use corral_shim::ShimError;

/// Largest piece of output sent in one frame (frames are bounded at 4 MiB).
const CHUNK: usize = 256 * 1024;
/// How long the coordinator may take to confirm a finished log (it syncs the file first).
const ACK_WAIT: Duration = Duration::from_secs(60);

/// How far the spool has got: bytes in the file, and whether the container's output has ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub len: u64,
    pub closed: bool,
}

/// One job's spooled output.
pub struct Spool {
    path: PathBuf,
    progress: watch::Sender<Progress>,
}

impl Spool {
    /// The spool of `job` in `dir`, with what an earlier agent process left in it (an agent
    /// restart keeps it); created empty when there is none.
    pub fn open(dir: &Path, job: &JobId) -> std::io::Result<Arc<Self>> {
        create_private_dir(dir)?;
        let path = dir.join(file_name(job));
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        Ok(Arc::new(Self { path, progress: watch::Sender::new(Progress { len, closed: false }) }))
    }

    /// A fresh spool for a container that is about to start: anything under its name is stale.
    pub fn create(dir: &Path, job: &JobId) -> std::io::Result<Arc<Self>> {
        let spool = Self::open(dir, job)?;
        open_private(&spool.path, true)?;
        spool.progress.send_replace(Progress::default());
        Ok(spool)
    }

    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the container's output as it comes, leaving out its first `skip` bytes (already
    /// here: an adopted container's output read again from Docker), then syncs and closes the
    /// spool. A read that fails ends the spool with a line saying so, so the user knows where the
    /// output stops and why.
    pub async fn fill<S>(self: Arc<Self>, output: S, mut skip: u64)
    where
        S: Stream<Item = Result<Bytes, ShimError>> + Send,
    {
        let mut output = std::pin::pin!(output);
        let result = async {
            let mut file = tokio::fs::File::from_std(open_private(&self.path, false)?);
            while let Some(chunk) = output.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) if e.is_not_found() => break,
                    Err(e) => {
                        let note =
                            format!("\n[corral: the container's output could not be read past this point: {e}]\n");
                        self.append(&mut file, note.as_bytes()).await?;
                        break;
                    }
                };
                let fresh = if skip >= chunk.len() as u64 {
                    skip -= chunk.len() as u64;
                    continue;
                } else {
                    let from = skip as usize;
                    skip = 0;
                    chunk.slice(from..)
                };
                self.append(&mut file, &fresh).await?;
            }
            file.sync_all().await?;
            std::io::Result::Ok(())
        }
        .await;
        if let Err(e) = result {
            // The host's disk: the container's output past here is lost to Corral, said in the log.
            tracing::error!(path = %self.path.display(), "cannot spool a job's output: {e}");
        }
        self.close();
    }

    async fn append(&self, file: &mut tokio::fs::File, bytes: &[u8]) -> std::io::Result<()> {
        file.write_all(bytes).await?;
        file.flush().await?;
        self.progress.send_modify(|p| p.len += bytes.len() as u64);
        Ok(())
    }

    /// No more output will come (the container ended, or it was never started).
    pub fn close(&self) {
        self.progress.send_modify(|p| p.closed = true);
    }

    /// Removes the spool of a job this agent no longer tracks, if there is one.
    pub fn discard(dir: &Path, job: &JobId) {
        let _ = std::fs::remove_file(dir.join(file_name(job)));
    }

    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), "cannot remove a spooled log: {e}");
        }
    }
}

/// Sends the spool to the coordinator on one stream of `conn`, from the offset the coordinator
/// says it has, following it as it grows until the container's output ends. `Ok` once the
/// coordinator confirmed the whole output stored.
pub async fn ship(conn: &quinn::Connection, job: &JobId, spool: &Spool) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(&mut send, &AgentMessage::OpenLog { job_id: job.clone() }).await?;
    let (mut offset, complete) = match read_frame::<CoordinatorMessage, _>(&mut recv).await? {
        Some(CoordinatorMessage::LogStored { offset, complete }) => (offset, complete),
        other => anyhow::bail!("unexpected answer to OpenLog: {other:?}"),
    };
    if complete {
        return Ok(());
    }
    let mut progress = spool.subscribe();
    let mut file = tokio::fs::File::open(&spool.path).await.context("opening the spooled log")?;
    file.seek(SeekFrom::Start(offset)).await?;
    let mut buf = vec![0u8; CHUNK];
    let total = loop {
        let now = *progress.borrow_and_update();
        if offset < now.len {
            let n = ((now.len - offset) as usize).min(CHUNK);
            file.read_exact(&mut buf[..n]).await.context("reading the spooled log")?;
            write_frame(&mut send, &LogFrame::Chunk { offset, data: buf[..n].to_vec() }).await?;
            offset += n as u64;
            continue;
        }
        if now.closed {
            // When the coordinator has more than this spool (its output was read again from
            // Docker after a restart of this agent, from further back), it has it all.
            break offset.max(now.len);
        }
        tokio::select! {
            r = progress.changed() => r.context("the spool went away")?,
            e = conn.closed() => return Err(anyhow::Error::new(e).context("the connection closed")),
        }
    };
    write_frame(&mut send, &LogFrame::End { total }).await?;
    send.finish()?;
    match tokio::time::timeout(ACK_WAIT, read_frame::<CoordinatorMessage, _>(&mut recv)).await {
        Ok(Ok(Some(CoordinatorMessage::LogStored { complete: true, .. }))) => Ok(()),
        Ok(Ok(Some(CoordinatorMessage::LogStored { offset, .. }))) => {
            anyhow::bail!("the coordinator stored {offset} of {total} bytes")
        }
        Ok(Ok(other)) => anyhow::bail!("unexpected answer to the end of a log: {other:?}"),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("waiting for the coordinator to confirm the log")),
        Err(_) => anyhow::bail!("the coordinator did not confirm the log within {}s", ACK_WAIT.as_secs()),
    }
}

/// Job ids come from the coordinator; anything but `[A-Za-z0-9_-]` is written out in hex, so no id
/// names a path outside the spool dir.
fn file_name(job: &JobId) -> String {
    let id = job.as_str();
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        format!("{id}.log")
    } else {
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x{hex}.log")
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Opens the spool for appending, readable by this user only; `truncate` empties it.
fn open_private(path: &Path, truncate: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).mode(0o600);
    if truncate {
        options.write(true).truncate(true);
    } else {
        options.append(true);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_never_leave_the_spool_dir() {
        assert_eq!(file_name(&JobId::from("a1b2-c3_d")), "a1b2-c3_d.log");
        assert_eq!(file_name(&JobId::from("../x")), "x2e2e2f78.log");
        assert_eq!(file_name(&JobId::from("")), "x.log");
    }

    #[tokio::test]
    async fn fill_skips_what_is_spooled_and_keeps_every_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let job = JobId::from("j1");
        let spool = Spool::create(dir.path(), &job).expect("spool");
        let chunks: Vec<Result<Bytes, ShimError>> =
            vec![Ok(Bytes::from_static(b"hello ")), Ok(Bytes::from_static(b"world"))];
        spool.clone().fill(futures_util::stream::iter(chunks), 0).await;
        assert_eq!(spool.progress(), Progress { len: 11, closed: true });

        // An agent restart: the spool is kept, and the output read again from the start adds
        // only what is new.
        let again = Spool::open(dir.path(), &job).expect("reopen");
        assert_eq!(again.progress().len, 11);
        let replay: Vec<Result<Bytes, ShimError>> =
            vec![Ok(Bytes::from_static(b"hello wo")), Ok(Bytes::from_static(b"rld and more\n"))];
        again.clone().fill(futures_util::stream::iter(replay), 11).await;
        assert_eq!(std::fs::read(again.path()).expect("read"), b"hello world and more\n");
        assert_eq!(again.progress(), Progress { len: 21, closed: true });

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(again.path()).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "output may hold secrets: private to the agent's user");
        again.remove();
        assert!(!again.path().exists());
    }
}
