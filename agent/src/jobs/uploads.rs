//! What a job puts into its container before it starts: its run's uploads (a local repo, `files`),
//! fetched from the coordinator over the link and kept in `<state dir>/uploads/<sha256>` (checked
//! against their digest; reused by later jobs; dropped after a day unused), and repositories cloned
//! on this host with `git` (`repos: [{url}]`), tarred for the container and removed after. The
//! shim unpacks them between the container's create and its start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ring::digest::{Context as Digest, SHA256};
use tokio::io::AsyncWriteExt;

use corral_proto::job::{GitClone, JobSpec, JobState, Upload};
use corral_proto::wire::io::{read_frame, write_frame};
use corral_proto::wire::{AgentMessage, CoordinatorMessage, ImageReply};
use corral_shim::uploads::{Archive, IfExists};

use super::{IMAGE_FETCH_ATTEMPTS, IMAGE_LINK_WAIT, Jobs};

/// Cached uploads not used for this long are removed (when the next job prepares).
const CACHE_KEEP: Duration = Duration::from_secs(24 * 3600);
/// A clone that takes longer than this fails the job.
const CLONE_TIMEOUT: Duration = Duration::from_secs(600);

/// The archives for one job; the clones' files go when it is dropped.
pub(super) struct Prepared {
    pub archives: Vec<Archive>,
    /// The working directory the job gets when it and its image set none and something of the
    /// run goes to a relative path ([`corral_shim::uploads::DEFAULT_WORKING_DIR`]).
    pub working_dir: Option<String>,
    scratch: Vec<PathBuf>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        for path in &self.scratch {
            let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
        }
    }
}

/// `url` without the credentials it may carry (`https://user:token@host/...`), for messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Jobs {
    fn state_dir(&self) -> PathBuf {
        self.spool_dir.parent().map_or_else(|| self.spool_dir.clone(), Path::to_path_buf)
    }

    /// Fetches the job's uploads and clones its repositories; `Err` is the job's failure message.
    pub(super) async fn prepare(self: &Arc<Self>, spec: &JobSpec) -> Result<Prepared, String> {
        let c = &spec.container;
        let mut prepared = Prepared { archives: Vec::new(), working_dir: None, scratch: Vec::new() };
        if c.uploads.is_empty() && c.clones.is_empty() {
            return Ok(prepared);
        }
        let relative = c
            .uploads
            .iter()
            .map(|u| &u.path)
            .chain(c.clones.iter().map(|g| &g.path))
            .any(|p| !p.starts_with(['/', '~']));
        if relative && spec.working_dir.as_deref().is_none_or(str::is_empty) {
            let image_dir = self.shim.image_working_dir(&spec.image).await.map_err(|e| e.to_string())?;
            if image_dir.is_none() {
                prepared.working_dir = Some(corral_shim::uploads::DEFAULT_WORKING_DIR.to_owned());
            }
        }
        let cache = self.state_dir().join("uploads");
        std::fs::create_dir_all(&cache).map_err(|e| format!("cannot make {}: {e}", cache.display()))?;
        evict(&cache);
        for u in &c.uploads {
            let what = if u.replace { format!("files ({})", u.path) } else { format!("repos ({})", u.path) };
            let tar = self.cached_upload(&spec.job_id, &cache, u).await.map_err(|e| format!("{what}: {e}"))?;
            let if_exists = match (u.replace, u.skip_if_exists) {
                (true, _) => IfExists::Replace,
                (false, true) => IfExists::Skip,
                (false, false) => IfExists::Error,
            };
            prepared.archives.push(Archive { tar, path: u.path.clone(), if_exists, what });
        }
        let clones = self.state_dir().join("clones");
        for (i, g) in c.clones.iter().enumerate() {
            let what = format!("repos ({})", redact(&g.url));
            self.note(&spec.job_id, JobState::Pulling, format!("cloning {}", redact(&g.url)));
            let dir = clones.join(format!("{}-{i}", spec.job_id));
            let tar = clones.join(format!("{}-{i}.tar", spec.job_id));
            prepared.scratch.extend([dir.clone(), tar.clone()]);
            clone(g, &dir, &tar).await.map_err(|e| format!("{what}: {e}"))?;
            let if_exists = if g.skip_if_exists { IfExists::Skip } else { IfExists::Error };
            prepared.archives.push(Archive { tar, path: g.path.clone(), if_exists, what });
        }
        Ok(prepared)
    }

    /// The upload in the cache, fetched first when it is not there.
    async fn cached_upload(
        self: &Arc<Self>,
        job: &corral_proto::ids::JobId,
        cache: &Path,
        u: &Upload,
    ) -> Result<PathBuf, String> {
        if !corral_proto::config::UploadRef::is_digest(&u.sha256) {
            return Err(format!("{:?} is not an upload's SHA-256", u.sha256));
        }
        let path = cache.join(&u.sha256);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == u.size) {
            // Used now: kept for another day.
            let _ = std::fs::File::options()
                .append(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return Ok(path);
        }
        let mut conn_rx = self.conn.subscribe();
        let mut last = String::from("no connection to the coordinator");
        for attempt in 1..=IMAGE_FETCH_ATTEMPTS {
            let wait = conn_rx.wait_for(|c| c.as_ref().is_some_and(|c| c.close_reason().is_none()));
            let conn = match tokio::time::timeout(IMAGE_LINK_WAIT, wait).await {
                Ok(Ok(conn)) => conn.clone(),
                _ => break,
            };
            let Some(conn) = conn else { break };
            let mib = u.size as f64 / (1 << 20) as f64;
            self.note(job, JobState::Pulling, format!("fetching an upload from the coordinator ({mib:.1} MiB)"));
            match fetch(&conn, cache, u).await {
                Ok(()) => return Ok(path),
                Err(Fetch::Missing) => {
                    return Err(format!("the coordinator has no upload {} any more: apply the run again", u.sha256));
                }
                Err(Fetch::Failed(e)) => {
                    tracing::warn!(%job, sha256 = %u.sha256, attempt, "upload transfer failed: {e}");
                    last = e;
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Err(format!("cannot fetch the upload {} from the coordinator: {last}", u.sha256))
    }
}

enum Fetch {
    Missing,
    Failed(String),
}

/// One transfer of the upload into `<cache>/<sha256>`: written to a temporary file, its size and
/// digest checked, then renamed.
async fn fetch(conn: &quinn::Connection, cache: &Path, u: &Upload) -> Result<(), Fetch> {
    let failed = |e: &dyn std::fmt::Display| Fetch::Failed(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(&e))?;
    write_frame(&mut send, &AgentMessage::FetchUpload { sha256: u.sha256.clone() }).await.map_err(|e| failed(&e))?;
    let _ = send.finish();
    let size = match read_frame::<CoordinatorMessage, _>(&mut recv).await.map_err(|e| failed(&e))? {
        Some(CoordinatorMessage::ImageReply(ImageReply::Stored { size })) => size,
        Some(CoordinatorMessage::ImageReply(ImageReply::NotStored)) => return Err(Fetch::Missing),
        other => return Err(Fetch::Failed(format!("unexpected answer {other:?}"))),
    };
    if size != u.size {
        return Err(Fetch::Failed(format!("the coordinator has {size} bytes of it, the run says {}", u.size)));
    }
    // Two jobs may fetch the same upload at once: each into a file of its own.
    static FETCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = FETCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = cache.join(format!(".{}.{}.{n}", u.sha256, std::process::id()));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| failed(&e))?;
        let mut digest = Digest::new(&SHA256);
        let mut done = 0u64;
        while let Some(chunk) = recv.read_chunk(256 * 1024, true).await.map_err(|e| failed(&e))? {
            done += chunk.bytes.len() as u64;
            if done > size {
                return Err(Fetch::Failed(format!("more than the {size} bytes announced")));
            }
            digest.update(&chunk.bytes);
            file.write_all(&chunk.bytes).await.map_err(|e| failed(&e))?;
        }
        if done != size {
            return Err(Fetch::Failed(format!("cut off after {done} of {size} bytes")));
        }
        file.sync_all().await.map_err(|e| failed(&e))?;
        let got = hex(digest.finish().as_ref());
        if got != u.sha256 {
            return Err(Fetch::Failed(format!("its SHA-256 is {got}, not {}", u.sha256)));
        }
        tokio::fs::rename(&tmp, cache.join(&u.sha256)).await.map_err(|e| failed(&e))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// Removes cached uploads unused for [`CACHE_KEEP`], and transfers a crash left behind.
fn evict(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else { return };
    for entry in entries.flatten() {
        let old =
            entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().unwrap_or_default() > CACHE_KEEP);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Runs `git` with `args`; `Err` says what failed, with git's own words (credentials taken out).
async fn git(args: &[&str], url: &str) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.args(args)
        // Never wait for a password on a terminal nobody watches.
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(CLONE_TIMEOUT, cmd.output()).await {
        Err(_) => return Err(format!("git took more than {} s", CLONE_TIMEOUT.as_secs())),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("git is not installed on this node: install it on the host to clone repos by URL".into());
        }
        Ok(Err(e)) => return Err(format!("cannot run git: {e}")),
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        return Ok(());
    }
    let mut words = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if url != redact(url) {
        words = words.replace(url, &redact(url));
        if let Some(secret) = url.split_once("://").and_then(|(_, r)| r.split('/').next()?.rsplit_once('@')) {
            words = words.replace(secret.0, "***");
        }
    }
    Err(format!("git {} failed: {words}", args.first().copied().unwrap_or("")))
}

/// Clones `g` into `dir` and tars it (with its `.git`) into `tar`, under the name `repo`.
async fn clone(g: &GitClone, dir: &Path, tar: &Path) -> Result<(), String> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
    }
    let _ = std::fs::remove_dir_all(dir);
    let dir_s = dir.to_string_lossy().into_owned();
    let mut args = vec!["clone", "--quiet"];
    if let Some(b) = &g.branch {
        args.extend(["--branch", b.as_str()]);
    }
    // `--` so that a URL is never read as an option.
    args.extend(["--", g.url.as_str(), dir_s.as_str()]);
    git(&args, &g.url).await.map_err(|e| format!("cannot clone {}: {e}", redact(&g.url)))?;
    if let Some(hash) = &g.hash {
        if hash.starts_with('-') {
            return Err(format!("hash {hash:?} is not a commit"));
        }
        git(&["-C", &dir_s, "checkout", "--quiet", hash.as_str(), "--"], &g.url)
            .await
            .map_err(|e| format!("cannot check out {hash}: {e}"))?;
    }
    let (dir, tar) = (dir.to_owned(), tar.to_owned());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut b = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(&tar)?));
        b.follow_symlinks(false);
        b.append_dir_all("repo", &dir)?;
        b.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot pack the clone: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        assert_eq!(redact("https://user:tok@github.com/a/b.git"), "https://***@github.com/a/b.git");
        assert_eq!(redact("https://github.com/a/b@c.git"), "https://github.com/a/b@c.git");
        assert_eq!(redact("git@github.com:a/b.git"), "git@github.com:a/b.git");
        assert_eq!(redact("file:///srv/r.git"), "file:///srv/r.git");
    }
}
