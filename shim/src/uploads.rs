//! What is put into a job's container after it is created and before it starts: the run's local
//! repo and `files` (uploads the agent fetched from the coordinator) and repositories the agent
//! cloned, each a tar whose entries sit under one top-level name. That name is replaced by the
//! destination, so the tar unpacks at its path, through Docker's archive API at `/` (Docker makes
//! the missing parent directories and resolves every path inside the container). Relative paths are
//! relative to the container's working directory; `~` is its user's home, read from its
//! `/etc/passwd`. What is unpacked belongs to the container's user (its uid and gid from the
//! image's `/etc/passwd` and `/etc/group`), as dstack's runner chowns it. `if_exists` is dstack's: a file, or a directory that is not empty, at the path
//! fails the job (`error`) or is kept as it is (`skip`); `files` replace what is there.

use std::io::{Read, Write};
use std::path::PathBuf;

use bollard::query_parameters::{DownloadFromContainerOptionsBuilder, UploadToContainerOptionsBuilder};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::Shim;
use crate::error::ShimError;

/// What happens when something is already at an archive's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfExists {
    /// A file, or a directory that is not empty: the job fails, naming the path.
    Error,
    /// A file, or a directory that is not empty: left as it is, nothing is unpacked.
    Skip,
    /// Unpacked over it (its files replace the ones of the same name).
    Replace,
}

/// A tar to unpack in a container before it starts.
#[derive(Clone, Debug)]
pub struct Archive {
    /// On this host; its entries all sit under one top-level name.
    pub tar: PathBuf,
    /// Absolute, relative to the working directory, or `~/...` (the container user's home).
    pub path: String,
    pub if_exists: IfExists,
    /// For messages: `repos[0]`, `files[1]`.
    pub what: String,
}

/// `path` in the container: `~` and `~/x` under `home`, a relative path under `working_dir`,
/// cleaned as Go's `path.Clean` (as dstack's runner does). `~user` is refused, as in dstack.
pub fn container_path(path: &str, working_dir: &str, home: &str) -> Result<String, String> {
    let joined = if path == "~" {
        home.to_owned()
    } else if let Some(rest) = path.strip_prefix("~/") {
        format!("{home}/{rest}")
    } else if path.starts_with('~') {
        return Err(format!("\"{path}\": `~user` is not supported (use `~/` or an absolute path)"));
    } else if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{working_dir}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// The home directory of `user` (`name`, `uid`, `name:group` or `uid:gid`; empty: root) in
/// `passwd`; `/root` for root when `passwd` does not say.
pub fn home_of(passwd: &str, user: &str) -> Option<String> {
    let who = user.split(':').next().unwrap_or("");
    let who = if who.is_empty() { "root" } else { who };
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 6 && (fields[0] == who || fields[2] == who) {
            return Some(fields[5].to_owned()).filter(|h| h.starts_with('/'));
        }
    }
    (who == "root" || who == "0").then(|| "/root".to_owned())
}

/// The uid and gid that `user` (`name`, `uid`, `name:group`, `uid:gid`; empty: root) runs as,
/// from the image's `passwd` and `group`; `None` when a name is in neither.
pub fn owner_of(passwd: &str, group: &str, user: &str) -> Option<(u64, u64)> {
    let (who, grp) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let who = if who.is_empty() { "root" } else { who };
    let entry =
        passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() >= 4 && (f[0] == who || f[2] == who));
    let uid = match who.parse::<u64>() {
        Ok(uid) => uid,
        Err(_) if who == "root" => 0,
        Err(_) => entry.as_ref()?.get(2)?.parse().ok()?,
    };
    let gid = match grp {
        Some(g) => match g.parse::<u64>() {
            Ok(gid) => gid,
            Err(_) => group.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() >= 3 && f[0] == g)?[2]
                .parse()
                .ok()?,
        },
        // Docker's rule: the user's primary group, else 0.
        None => entry.and_then(|f| f.get(3)?.parse().ok()).unwrap_or(0),
    };
    Some((uid, gid))
}

/// Copies the tar `src` to `out` with its top-level name replaced by `dest` (relative to `/`,
/// without a leading slash; empty for `/` itself, whose own entry is then left out), every entry
/// owned by `owner` (uid, gid). Entries that do not share one top-level name, or that climb out
/// with `..`, are refused.
pub fn rewrite(src: impl Read, dest: &str, owner: (u64, u64), out: impl Write) -> std::io::Result<()> {
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let mut archive = tar::Archive::new(src);
    let mut builder = tar::Builder::new(out);
    let mut top: Option<String> = None;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let mut parts = Vec::new();
        for c in path.components() {
            match c {
                std::path::Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
                std::path::Component::CurDir => {}
                _ => return Err(bad(format!("the archive's entry {} leaves its directory", path.display()))),
            }
        }
        let Some((first, rest)) = parts.split_first() else { continue };
        match &top {
            None => top = Some(first.clone()),
            Some(t) if t != first => {
                return Err(bad(format!("the archive has two top-level entries, {t} and {first}")));
            }
            Some(_) => {}
        }
        let name: Vec<&str> =
            std::iter::once(dest).filter(|d| !d.is_empty()).chain(rest.iter().map(String::as_str)).collect();
        if name.is_empty() {
            continue;
        }
        let name = name.join("/");
        let mut header = entry.header().clone();
        header.set_uid(owner.0);
        header.set_gid(owner.1);
        let kind = header.entry_type();
        if kind.is_hard_link() {
            return Err(bad(format!("the archive's entry {} is a hard link", path.display())));
        }
        if kind.is_symlink() {
            let target = entry.link_name()?.map(|t| t.into_owned()).unwrap_or_default();
            builder.append_link(&mut header, &name, target)?;
        } else if kind.is_file() || kind.is_dir() {
            builder.append_data(&mut header, &name, &mut entry)?;
        }
        // Anything else (devices, fifos, pax globals) is left out.
    }
    builder.into_inner()?.flush()
}

/// A `Write` that hands what it is given to a channel in chunks, for a streamed request body.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 * 1024;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::other("docker stopped reading the archive"))
    }
}

/// Where relative paths of a run's repo and files go when neither the run (`working_dir`) nor the
/// image (`WORKDIR`) names a working directory: dstack's repo directory before 0.20, rather than
/// `/` (where `repos: [.]` would always find something already there).
pub const DEFAULT_WORKING_DIR: &str = "/workflow";

impl Shim {
    /// The image's own working directory (`WORKDIR`), when it sets one.
    pub async fn image_working_dir(&self, image: &str) -> Result<Option<String>, ShimError> {
        let docker = self.client().await?;
        let inspected = docker
            .inspect_image(image)
            .await
            .map_err(|e| ShimError::ImageUnavailable { image: image.to_owned(), reason: e.to_string() })?;
        Ok(inspected.config.and_then(|c| c.working_dir).filter(|d| d.starts_with('/') && d != "/"))
    }

    /// Unpacks each archive in the created (not yet started) `container`, in order.
    pub(crate) async fn put_archives(
        &self,
        container: &str,
        user: Option<&str>,
        archives: &[Archive],
    ) -> Result<(), ShimError> {
        if archives.is_empty() {
            return Ok(());
        }
        let fail = |why: String| ShimError::Prepare { container: container.to_owned(), why };
        let docker = self.client().await?;
        let inspected = docker
            .inspect_container(container, None)
            .await
            .map_err(|e| self.container_error("inspecting", container, e))?;
        let config = inspected.config.unwrap_or_default();
        let working_dir = config.working_dir.filter(|d| d.starts_with('/')).unwrap_or_else(|| "/".to_owned());
        let user = user.map(str::to_owned).or(config.user).unwrap_or_default();
        let root = matches!(user.as_str(), "" | "root" | "0" | "0:0" | "root:root");
        let needs_home = archives.iter().any(|a| a.path.starts_with('~'));
        let passwd = if needs_home || !root {
            String::from_utf8_lossy(&self.read_file(container, "/etc/passwd").await.unwrap_or_default()).into_owned()
        } else {
            String::new()
        };
        let home = if needs_home {
            home_of(&passwd, &user).ok_or_else(|| {
                fail(format!("cannot find the home of user {user:?} in the image's /etc/passwd (for a `~` path)"))
            })?
        } else {
            "/root".to_owned()
        };
        // Owned by the container's user, as dstack's runner chowns what it puts there.
        let owner = if root {
            (0, 0)
        } else {
            let group = String::from_utf8_lossy(&self.read_file(container, "/etc/group").await.unwrap_or_default())
                .into_owned();
            owner_of(&passwd, &group, &user).unwrap_or_else(|| {
                tracing::warn!(
                    container,
                    user,
                    "the user is not in the image's passwd: the repo and files stay root's"
                );
                (0, 0)
            })
        };
        for a in archives {
            let dest = container_path(&a.path, &working_dir, &home).map_err(|e| fail(format!("{}: {e}", a.what)))?;
            if a.if_exists != IfExists::Replace && self.occupied(container, &dest).await? {
                if a.if_exists == IfExists::Skip {
                    tracing::info!(container, path = %dest, what = %a.what, "already in the image: skipped (if_exists: skip)");
                    continue;
                }
                return Err(fail(format!(
                    "{}: {dest} already exists in the container and is not empty (if_exists: error); set `if_exists: skip` to keep what the image has there, or choose another `path`",
                    a.what
                )));
            }
            let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
            let (tar, rel) = (a.tar.clone(), dest.trim_start_matches('/').to_owned());
            let writer = tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&tar)?;
                let mut out = ChannelWriter { tx: tx.clone(), buf: Vec::new() };
                let result = rewrite(std::io::BufReader::new(file), &rel, owner, &mut out);
                if let Err(e) = &result {
                    let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
                }
                result
            });
            let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            // Docker keeps the entries' owners as the tar gives them.
            let options = UploadToContainerOptionsBuilder::default().path("/").build();
            let uploaded = docker.upload_to_container(container, Some(options), bollard::body_try_stream(body)).await;
            let written = writer.await.map_err(|e| fail(e.to_string()))?;
            if let Err(e) = written {
                return Err(fail(format!("{}: cannot unpack it at {dest}: {e}", a.what)));
            }
            uploaded.map_err(|e| fail(format!("{}: docker cannot unpack it at {dest}: {e}", a.what)))?;
            tracing::info!(container, path = %dest, what = %a.what, "put into the container");
        }
        Ok(())
    }

    /// Whether `path` holds a file, or a directory with something in it. Reads Docker's archive of
    /// it only as far as its second entry.
    async fn occupied(&self, container: &str, path: &str) -> Result<bool, ShimError> {
        let Some(stat) = self.stat(container, path).await? else { return Ok(false) };
        if !stat.is_dir() {
            return Ok(true);
        }
        let docker = self.client().await?;
        let opts = DownloadFromContainerOptionsBuilder::default().path(path).build();
        let mut stream = docker.download_from_container(container, Some(opts));
        let mut tar = Vec::new();
        while let Some(chunk) = stream.next().await {
            tar.extend_from_slice(&chunk.map_err(|e| self.container_error("copy from", container, e))?);
            if entries_in(&tar) >= 2 {
                return Ok(true);
            }
        }
        Ok(entries_in(&tar) >= 2)
    }
}

/// How many whole entries the start of a tar holds (a directory's own entry comes first).
fn entries_in(tar: &[u8]) -> usize {
    let mut archive = tar::Archive::new(std::io::Cursor::new(tar));
    let Ok(entries) = archive.entries() else { return 0 };
    entries.take_while(Result::is_ok).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_in_the_container() {
        assert_eq!(container_path(".", "/workflow", "/root"), Ok("/workflow".into()));
        assert_eq!(container_path("src/a.txt", "/w", "/root"), Ok("/w/src/a.txt".into()));
        assert_eq!(container_path("../x", "/w/sub", "/root"), Ok("/w/x".into()));
        assert_eq!(container_path("~/.ssh/id", "/w", "/home/u"), Ok("/home/u/.ssh/id".into()));
        assert_eq!(container_path("~", "/w", "/home/u"), Ok("/home/u".into()));
        assert_eq!(container_path("/../../etc/", "/w", "/root"), Ok("/etc".into()));
        assert_eq!(container_path(".", "/", "/root"), Ok("/".into()));
        assert!(container_path("~bob/x", "/w", "/root").is_err());
    }

    #[test]
    fn owners_from_passwd_and_group() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nu:x:1000:1001::/home/u:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:u\n";
        assert_eq!(owner_of(passwd, group, ""), Some((0, 0)));
        assert_eq!(owner_of(passwd, group, "u"), Some((1000, 1001)));
        assert_eq!(owner_of(passwd, group, "u:staff"), Some((1000, 50)));
        assert_eq!(owner_of(passwd, group, "1000:7"), Some((1000, 7)));
        assert_eq!(owner_of("", "", "4242"), Some((4242, 0)));
        assert_eq!(owner_of(passwd, group, "bob"), None);
        assert_eq!(owner_of(passwd, group, "u:nogroup"), None);
    }

    #[test]
    fn homes_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\nnohome:x:7:7::x:/bin/sh\n";
        assert_eq!(home_of(passwd, ""), Some("/root".into()));
        assert_eq!(home_of(passwd, "u"), Some("/home/u".into()));
        assert_eq!(home_of(passwd, "1000:1000"), Some("/home/u".into()));
        assert_eq!(home_of(passwd, "nohome"), None);
        assert_eq!(home_of("", "0"), Some("/root".into()));
        assert_eq!(home_of("", "42"), None);
    }

    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, name, *d).expect("appends");
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, name, &[][..]).expect("appends");
                }
            }
        }
        b.into_inner().expect("tar")
    }

    fn names(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut a = tar::Archive::new(std::io::Cursor::new(tar));
        a.entries()
            .expect("entries")
            .map(|e| {
                let mut e = e.expect("entry");
                let mut data = Vec::new();
                e.read_to_end(&mut data).expect("reads");
                (e.path().expect("path").to_string_lossy().into_owned(), data)
            })
            .collect()
    }

    #[test]
    fn the_top_level_name_becomes_the_destination() {
        let src = tar_of(&[("repo", None), ("repo/a.txt", Some(b"a")), ("repo/sub", None), ("repo/sub/b", Some(b"b"))]);
        let mut out = Vec::new();
        rewrite(&src[..], "workflow/src", (1000, 100), &mut out).expect("rewrites");
        let got = names(&out);
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["workflow/src", "workflow/src/a.txt", "workflow/src/sub", "workflow/src/sub/b"]);
        assert_eq!(got[3].1, b"b");
        let mut a = tar::Archive::new(std::io::Cursor::new(&out));
        let first = a.entries().expect("entries").next().expect("one").expect("entry");
        assert_eq!((first.header().uid().expect("uid"), first.header().gid().expect("gid")), (1000, 100));
        // At `/`: the top entry itself is left out.
        let mut out = Vec::new();
        rewrite(&src[..], "", (0, 0), &mut out).expect("rewrites");
        assert_eq!(names(&out)[0].0, "a.txt");
        // A single file.
        let mut out = Vec::new();
        rewrite(&tar_of(&[("train.py", Some(b"print(1)"))])[..], "w/train.py", (0, 0), &mut out).expect("rewrites");
        assert_eq!(names(&out), vec![("w/train.py".to_owned(), b"print(1)".to_vec())]);
        let two = tar_of(&[("a", Some(b"1")), ("b", Some(b"2"))]);
        assert!(rewrite(&two[..], "x", (0, 0), &mut Vec::new()).is_err(), "one top-level name only");
    }

    #[test]
    fn entries_are_counted_as_far_as_they_are_whole() {
        let tar = tar_of(&[("d", None), ("d/a", Some(b"abc"))]);
        assert_eq!(entries_in(&tar), 2);
        assert_eq!(entries_in(&tar[..512]), 1);
        assert_eq!(entries_in(&[]), 0);
    }
}
