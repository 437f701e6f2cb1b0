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

    /// Appends the container's output as it comes, then syncs and closes the spool. A read that fails ends the spool with a line saying so, so the user knows where the
    /// output stops and why.
    pub async fn fill<S>(self: Arc<Self>, output: S)
    where
        S: Stream<Item = Result<Bytes, ShimError>> + Send,
    {
        let mut output = std::pin::pin!(coalesce(output));
        let result = async {
            let mut file = tokio::fs::File::from_std(open_private(&self.path, false)?);
            while let Some(chunk) = output.next().await {
                if self.progress().closed {
                    // Closed by the supervisor: nothing may land after the shipper's end.
                    break;
                }
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
                self.append(&mut file, &chunk).await?;
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

    /// When the spool was last written, in seconds since the epoch.
    pub fn modified_unix(&self) -> Option<i64> {
        let modified = std::fs::metadata(&self.path).ok()?.modified().ok()?;
        Some(modified.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64)
    }

    /// The spool's last `max` bytes.
    pub fn tail(&self, max: usize) -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Seek};
        let mut f = std::fs::File::open(&self.path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(max as u64)))?;
        let mut out = Vec::new();
        f.read_to_end(&mut out)?;
        Ok(out)
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

/// Output chunks joined into one, at most this many at a time.
const COALESCE: usize = 256;

/// The chunks of `output` that are ready together joined into one: a container that writes many
/// short lines (Docker's log gives one chunk per line) costs one write to the spool and one frame
/// to the coordinator per batch, not per line. An error is passed on after the bytes before it.
fn coalesce<S>(output: S) -> impl Stream<Item = Result<Bytes, ShimError>> + Send
where
    S: Stream<Item = Result<Bytes, ShimError>> + Send,
{
    output.ready_chunks(COALESCE).flat_map(|items| {
        if items.len() == 1 {
            return futures_util::stream::iter(items);
        }
        let mut out = Vec::with_capacity(1);
        let mut joined = bytes::BytesMut::new();
        for item in items {
            match item {
                Ok(b) => joined.extend_from_slice(&b),
                Err(e) => {
                    if !joined.is_empty() {
                        out.push(Ok(joined.split().freeze()));
                    }
                    out.push(Err(e));
                }
            }
        }
        if !joined.is_empty() {
            out.push(Ok(joined.freeze()));
        }
        futures_util::stream::iter(out)
    })
}

/// How much of a spool's end is compared with Docker's log of a re-adopted container.
pub const OVERLAP_WINDOW: usize = 1 << 20;
/// Bytes that must match for a place in Docker's log to count as where the spool ends.
const ANCHOR: usize = 64;
/// How far into Docker's log the spool's end is looked for before everything is kept.
const SCAN_LIMIT: usize = 256 << 20;

/// A re-adopted container's output read back from Docker's log from a little before the spool's
/// last write (`tail` is the spool's end): the part the spool already has is taken off where the
/// two meet, so that what the container wrote while no agent listened follows the spool exactly.
/// Where no meeting point is found, everything read back is kept after a line in the log that
/// says output is missing there (Docker rotated it away) or may repeat.
pub fn after_overlap<S>(output: S, tail: Vec<u8>) -> impl Stream<Item = Result<Bytes, ShimError>> + Send
where
    S: Stream<Item = Result<Bytes, ShimError>> + Send + Unpin,
{
    enum Phase<S> {
        Meet(S, Vec<u8>),
        Rest(S),
        Fail(ShimError),
        Done,
    }
    futures_util::stream::unfold(Phase::Meet(output, tail), |phase| async move {
        match phase {
            Phase::Meet(mut output, tail) => {
                let mut buf = Vec::new();
                let mut next = None;
                let mut from = 0;
                let met = loop {
                    if let Some(j) = meeting(&tail, &buf, from) {
                        break Some(j);
                    }
                    from = buf.len() + 1;
                    if buf.len() >= SCAN_LIMIT {
                        break None;
                    }
                    match tokio::time::timeout(Duration::from_secs(2), output.next()).await {
                        Ok(Some(Ok(b))) => buf.extend_from_slice(&b),
                        Ok(Some(Err(e))) => {
                            next = Some(Phase::Fail(e));
                            break None;
                        }
                        Ok(None) => {
                            next = Some(Phase::Done);
                            break None;
                        }
                        // Quiet for a while: all there is to compare has come.
                        Err(_) => break None,
                    }
                };
                let met = met.or_else(|| Some(short_meeting(&tail, &buf)).filter(|&k| k > 0));
                let mut fresh = Vec::new();
                if met.is_none() && !tail.is_empty() {
                    // Read back from well before the spool's end: Docker's log no longer reaches
                    // back that far (it keeps its newest files only), or it is too long to search.
                    let note = if buf.len() >= SCAN_LIMIT {
                        "some output may repeat here: the agent restarted and what it had saved could not be \
                         found in Docker's log"
                    } else {
                        "some output is missing here: the agent restarted, and Docker's log no longer held what \
                         the container wrote just before (it keeps only its newest log files)"
                    };
                    tracing::warn!(read_back = buf.len(), "{note}");
                    fresh.extend_from_slice(format!("\n[corral: {note}]\n").as_bytes());
                }
                fresh.extend_from_slice(&buf[met.unwrap_or(0)..]);
                let fresh = Bytes::from(fresh);
                Some((Ok(fresh), next.unwrap_or(Phase::Rest(output))))
            }
            Phase::Rest(mut output) => output.next().await.map(|item| (item, Phase::Rest(output))),
            Phase::Fail(e) => Some((Err(e), Phase::Done)),
            Phase::Done => None,
        }
    })
}

/// The first place `j ≥ from` in `read` where the `ANCHOR` bytes before it end `spooled`, and so
/// does all that comes before it (up to the length of `spooled`): where the spool ends.
fn meeting(spooled: &[u8], read: &[u8], from: usize) -> Option<usize> {
    if spooled.is_empty() {
        return Some(0);
    }
    let anchor = ANCHOR.min(spooled.len());
    let end = &spooled[spooled.len() - anchor..];
    let last = end[anchor - 1];
    (from.max(anchor)..=read.len()).find(|&j| {
        let m = j.min(spooled.len());
        read[j - 1] == last && &read[j - anchor..j] == end && spooled.ends_with(&read[j - m..j])
    })
}

/// A meeting shorter than the anchor, at the very start of `read`: only when no longer one is.
fn short_meeting(spooled: &[u8], read: &[u8]) -> usize {
    let most = ANCHOR.min(spooled.len()).min(read.len() + 1);
    (1..most).rev().find(|&k| spooled.ends_with(&read[..k])).unwrap_or(0)
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
    fn meeting_finds_where_the_spool_ends_in_docker_s_log() {
        let spooled: Vec<u8> = (0..500_000).flat_map(|i| format!("{i}\n").into_bytes()).collect();
        // Docker's log from further back than the window compared, past the spool's end.
        let tail = &spooled[spooled.len() - 100_000..];
        let mut read = spooled[spooled.len() - 1_000_000..].to_vec();
        read.extend_from_slice(b"500000\n500001\n");
        let j = meeting(tail, &read, 0).expect("found");
        assert!(read[j..] == *b"500000\n500001\n", "met at {j} of {}", read.len());
        // From within the window, and a spool that ends in the middle of a line.
        assert_eq!(short_meeting(b"abc\nde", b"c\ndef\n"), 4);
        assert_eq!(meeting(b"", b"new", 0), Some(0));
        // A short match at the start does not win over the real, longer one.
        let mut early = b"9\n".to_vec();
        early.extend_from_slice(&read);
        let j = meeting(tail, &early, 0).expect("found");
        assert!(early[j..] == *b"500000\n500001\n", "met at {j} of {}", early.len());
        // Not there (yet): nothing is taken off.
        assert_eq!(
            meeting(&spooled, b"something else entirely, longer than the anchor of sixty-four bytes ...", 0),
            None
        );
    }

    #[tokio::test]
    async fn after_overlap_keeps_only_what_is_new() {
        let chunks: Vec<Result<Bytes, ShimError>> =
            vec![Ok(Bytes::from_static(b"lo wor")), Ok(Bytes::from_static(b"ld\nand more\n"))];
        let out = after_overlap(futures_util::stream::iter(chunks), b"hello wor".to_vec());
        let got: Vec<u8> = out.map(|c| c.expect("ok")).collect::<Vec<_>>().await.concat();
        assert_eq!(got, b"ld\nand more\n");
    }

    #[tokio::test]
    async fn output_docker_no_longer_has_is_said_where_it_is_missing() {
        // The spool ends at line 10; Docker's log (rotated meanwhile) starts at line 500.
        let spooled: Vec<u8> = (1..=10).flat_map(|n| format!("line {n}\n").into_bytes()).collect();
        let docker: Vec<u8> = (500..=600).flat_map(|n| format!("line {n}\n").into_bytes()).collect();
        let chunks: Vec<Result<Bytes, ShimError>> = docker.chunks(7).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let out = after_overlap(futures_util::stream::iter(chunks), spooled);
        let got = String::from_utf8(out.map(|c| c.expect("ok")).collect::<Vec<_>>().await.concat()).expect("utf-8");
        let (note, rest) = got.split_once("]\n").expect("a note first");
        assert!(note.starts_with("\n[corral: some output is missing here"), "{note}");
        assert!(note.contains("Docker's log no longer held"), "{note}");
        assert_eq!(rest.as_bytes(), docker, "everything Docker still had follows the note");
    }

    #[tokio::test]
    async fn short_chunks_ready_together_are_written_as_one() {
        let lines: Vec<Result<Bytes, ShimError>> = (0..1000).map(|n| Ok(Bytes::from(format!("{n}\n")))).collect();
        let want: Vec<u8> = (0..1000).flat_map(|n| format!("{n}\n").into_bytes()).collect();
        let batches: Vec<Bytes> = coalesce(futures_util::stream::iter(lines)).map(|c| c.expect("ok")).collect().await;
        assert_eq!(batches.len(), 1000_usize.div_ceil(COALESCE), "one batch per {COALESCE} ready chunks");
        assert_eq!(batches.concat(), want);
        // An error ends the batch before it and is passed on, in order.
        let mixed: Vec<Result<Bytes, ShimError>> = vec![
            Ok(Bytes::from_static(b"a")),
            Ok(Bytes::from_static(b"b")),
            Err(ShimError::Unexpected { op: "reading", subject: "c".into(), detail: "gone".into() }),
            Ok(Bytes::from_static(b"d")),
        ];
        let out: Vec<_> = coalesce(futures_util::stream::iter(mixed)).collect().await;
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].as_ref().expect("ok"), &Bytes::from_static(b"ab"));
        assert!(out[1].is_err());
        assert_eq!(out[2].as_ref().expect("ok"), &Bytes::from_static(b"d"));
    }

    #[test]
    fn job_ids_never_leave_the_spool_dir() {
        assert_eq!(file_name(&JobId::from("a1b2-c3_d")), "a1b2-c3_d.log");
        assert_eq!(file_name(&JobId::from("../x")), "x2e2e2f78.log");
        assert_eq!(file_name(&JobId::from("")), "x.log");
    }

    #[tokio::test]
    async fn a_reopened_spool_adds_only_what_is_new_and_keeps_every_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let job = JobId::from("j1");
        let spool = Spool::create(dir.path(), &job).expect("spool");
        let chunks: Vec<Result<Bytes, ShimError>> =
            vec![Ok(Bytes::from_static(b"hello ")), Ok(Bytes::from_static(b"world"))];
        spool.clone().fill(futures_util::stream::iter(chunks)).await;
        assert_eq!(spool.progress(), Progress { len: 11, closed: true });

        // An agent restart: the spool is kept, and the output read again from the start adds
        // only what is new.
        let again = Spool::open(dir.path(), &job).expect("reopen");
        assert_eq!(again.progress().len, 11);
        let replay: Vec<Result<Bytes, ShimError>> =
            vec![Ok(Bytes::from_static(b"hello wo")), Ok(Bytes::from_static(b"rld and more\n"))];
        let tail = again.tail(OVERLAP_WINDOW).expect("tail");
        again.clone().fill(after_overlap(futures_util::stream::iter(replay), tail)).await;
        assert_eq!(std::fs::read(again.path()).expect("read"), b"hello world and more\n");
        assert_eq!(again.progress(), Progress { len: 21, closed: true });

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(again.path()).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "output may hold secrets: private to the agent's user");
        again.remove();
        assert!(!again.path().exists());
    }
}
