//! `corral apply`'s uploads: a run's local repo (`repos: [.]`, `{local_path}`) and its `files`,
//! each packed as one tar and sent to the coordinator's upload store, named by its SHA-256.
//! Local paths are relative to the configuration file's directory (as in dstack); `~` is this
//! user's home. A directory in a Git work tree sends what Git would: the tracked files and the
//! untracked ones `.gitignore` does not exclude (`git ls-files -co --exclude-standard`); any other
//! directory goes whole; a file goes as it is. Every entry of the tar sits under one top-level name
//! ([`TOP`]), which the node replaces with the destination path. Uploads the coordinator already
//! has are not sent again; each is at most [`MAX_UPLOAD_BYTES`].

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use ring::digest::{Context as Digest, SHA256};

use corral_proto::api;
use corral_proto::config::limits::MAX_UPLOAD_BYTES;
use corral_proto::config::{Configuration, UploadRef};

use crate::client::Client;

/// The top-level name of every entry of an upload's tar.
pub const TOP: &str = "upload";

/// A packed upload, in a temporary file until it is sent.
pub struct Packed {
    pub file: tempfile::NamedTempFile,
    pub sha256: String,
    pub size: u64,
    /// Files (and links) in it.
    pub files: usize,
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W: Write> {
    inner: W,
    digest: Digest,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.digest.update(&data[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `local` as this machine reads it: `~/x` under the home directory, a relative path under `base`
/// (the configuration file's directory).
pub fn resolve(local: &str, base: &Path) -> anyhow::Result<PathBuf> {
    let home = || std::env::var_os("HOME").map(PathBuf::from).context("`~` in a local path, and HOME is not set");
    Ok(if local == "~" {
        home()?
    } else if let Some(rest) = local.strip_prefix("~/") {
        home()?.join(rest)
    } else {
        base.join(local)
    })
}

/// The files to send of the directory `dir`, relative to it, sorted: what Git would keep when
/// `dir` is in a work tree, everything otherwise (no `.git`).
pub fn list_dir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let in_git = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--is-inside-work-tree"])
        .stderr(std::process::Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"true"));
    let mut files = if in_git {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
            .output()
            .with_context(|| format!("cannot run git in {}", dir.display()))?;
        if !out.status.success() {
            bail!("git ls-files in {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        let mut files = Vec::new();
        for name in out.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let rel = PathBuf::from(String::from_utf8_lossy(name).into_owned());
            let path = dir.join(&rel);
            match std::fs::symlink_metadata(&path) {
                // A submodule: its files as they are checked out.
                Ok(m) if m.is_dir() => walk(dir, &rel, &mut files)?,
                Ok(_) => files.push(rel),
                // Tracked, but deleted in the work tree: as Git's next commit would, left out.
                Err(_) => {}
            }
        }
        files
    } else {
        let mut files = Vec::new();
        walk(dir, Path::new(""), &mut files)?;
        files
    };
    files.sort();
    files.dedup();
    Ok(files)
}

/// Everything under `root/rel` (directories too, so that empty ones are kept), without `.git`.
fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let dir = root.join(rel);
    let entries = std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        if entry.file_name() == ".git" {
            continue;
        }
        let child = rel.join(entry.file_name());
        let kind = entry.file_type().with_context(|| format!("cannot read {}", root.join(&child).display()))?;
        out.push(child.clone());
        if kind.is_dir() {
            walk(root, &child, out)?;
        }
    }
    Ok(())
}

fn too_large(what: &str, size: u64) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}: {:.1} GiB to upload, more than the limit of {} GiB: leave large files out (.gitignore, or a narrower path) or put them in a volume",
        size as f64 / (1u64 << 30) as f64,
        MAX_UPLOAD_BYTES >> 30
    )
}

/// Packs `path` (a file or directory) as an upload's tar; `what` names it in errors.
pub fn pack(path: &Path, what: &str) -> anyhow::Result<Packed> {
    let meta = std::fs::metadata(path).with_context(|| format!("{what}: cannot read {}", path.display()))?;
    let entries: Vec<PathBuf> = if meta.is_dir() { list_dir(path)? } else { Vec::new() };
    // Sizes first: a file past the limit is refused before a byte of it is read.
    let mut total = meta.len();
    for rel in &entries {
        if let Ok(m) = std::fs::symlink_metadata(path.join(rel)) {
            total += m.len();
            if total > MAX_UPLOAD_BYTES {
                return Err(too_large(what, total));
            }
        }
    }
    if total > MAX_UPLOAD_BYTES {
        return Err(too_large(what, total));
    }
    let file = tempfile::NamedTempFile::new().context("cannot make a temporary file for the upload")?;
    let writer = Hashing { inner: std::io::BufWriter::new(file.reopen()?), digest: Digest::new(&SHA256), size: 0 };
    let mut tar = tar::Builder::new(writer);
    tar.follow_symlinks(false);
    let io = |p: &Path| format!("{what}: cannot pack {}", p.display());
    let mut files = 0;
    if meta.is_dir() {
        append(&mut tar, path, Path::new(TOP)).with_context(|| io(path))?;
        // Git lists files only: their directories go first, once each, with their own modes.
        let mut dirs = std::collections::BTreeSet::new();
        for rel in &entries {
            for parent in rel.ancestors().skip(1).filter(|p| !p.as_os_str().is_empty()) {
                dirs.insert(parent.to_path_buf());
            }
        }
        let mut done = std::collections::HashSet::new();
        for rel in &entries {
            let mut parents: Vec<&Path> =
                rel.ancestors().skip(1).filter(|p| !p.as_os_str().is_empty() && dirs.contains(*p)).collect();
            parents.reverse();
            for p in parents {
                if done.insert(p.to_path_buf()) {
                    append(&mut tar, &path.join(p), &Path::new(TOP).join(p)).with_context(|| io(&path.join(p)))?;
                }
            }
            if done.insert(rel.clone()) {
                let full = path.join(rel);
                if !std::fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir()) {
                    files += 1;
                }
                append(&mut tar, &full, &Path::new(TOP).join(rel)).with_context(|| io(&full))?;
            }
            if tar.get_ref().size > MAX_UPLOAD_BYTES {
                return Err(too_large(what, tar.get_ref().size));
            }
        }
    } else {
        files = 1;
        append(&mut tar, path, Path::new(TOP)).with_context(|| io(path))?;
    }
    let mut writer = tar.into_inner().with_context(|| io(path))?;
    writer.flush().with_context(|| io(path))?;
    if writer.size > MAX_UPLOAD_BYTES {
        return Err(too_large(what, writer.size));
    }
    let sha256 = writer.digest.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Packed { file, sha256, size: writer.size, files })
}

/// One file, directory (its own entry only) or symlink, as it is on disk, owned by root.
fn append<W: Write>(tar: &mut tar::Builder<W>, path: &Path, name: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
    // Deterministic mode drops the time; a build that looks at times gets the real ones.
    header.set_mtime(
        meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs()),
    );
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path)?;
        header.set_size(0);
        tar.append_link(&mut header, name, target)
    } else if meta.is_dir() {
        header.set_size(0);
        tar.append_data(&mut header, name, std::io::empty())
    } else if meta.is_file() {
        let file = std::fs::File::open(path)?;
        tar.append_data(&mut header, name, file)
    } else {
        // Sockets, fifos, devices: nothing to send.
        Ok(())
    }
}

/// One thing to upload: where its upload reference goes in the configuration.
struct Wanted {
    what: String,
    path: PathBuf,
    slot: Slot,
}

enum Slot {
    Repo(usize),
    File(usize),
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Packs and uploads the configuration's local repo and files (those the coordinator lacks) and
/// names each upload in the configuration. `config_file` is the file `apply` read. Returns the
/// lines it said on stderr, one per upload (`... uploaded` or `... already on the coordinator`).
pub async fn upload(client: &Client, config_file: &Path, cfg: &mut Configuration) -> anyhow::Result<Vec<String>> {
    let (repos, files) = match cfg {
        Configuration::Task(t) => (&mut t.repos, &mut t.files),
        Configuration::Service(s) => (&mut s.repos, &mut s.files),
        Configuration::DevEnvironment(d) => (&mut d.repos, &mut d.files),
        _ => return Ok(Vec::new()),
    };
    let base = config_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut wanted = Vec::new();
    for (i, r) in repos.iter().enumerate() {
        if let Some(local) = &r.local_path {
            wanted.push(Wanted {
                what: format!("repos[{i}] ({local})"),
                path: resolve(local, base)?,
                slot: Slot::Repo(i),
            });
        }
    }
    for (i, f) in files.iter().enumerate() {
        let what = format!("files[{i}] ({})", f.local_path);
        wanted.push(Wanted { what, path: resolve(&f.local_path, base)?, slot: Slot::File(i) });
    }
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let mut packed = Vec::new();
    for w in wanted {
        let (path, what) = (w.path.clone(), w.what.clone());
        let p = tokio::task::spawn_blocking(move || pack(&path, &what)).await??;
        packed.push((w, p));
    }
    let check = api::CheckUploads { sha256: packed.iter().map(|(_, p)| p.sha256.clone()).collect() };
    let missing: api::MissingUploads = client.post("/api/uploads/check", &check).await?;
    let mut said = Vec::new();
    for (w, p) in &packed {
        let summary = format!("{} file{}, {}", p.files, if p.files == 1 { "" } else { "s" }, human(p.size));
        let line = if missing.missing.contains(&p.sha256) {
            send(client, p).await.with_context(|| format!("{}: cannot upload it", w.what))?;
            format!("{}: {summary}, uploaded", w.what)
        } else {
            format!("{}: {summary}, already on the coordinator", w.what)
        };
        eprintln!("{line}");
        said.push(line);
    }
    for (w, p) in packed {
        let upload = Some(UploadRef { sha256: p.sha256, size: p.size });
        match w.slot {
            Slot::Repo(i) => repos[i].upload = upload,
            Slot::File(i) => files[i].upload = upload,
        }
    }
    Ok(said)
}

/// Sends one upload, with a progress bar on a terminal for anything over a megabyte.
async fn send(client: &Client, p: &Packed) -> anyhow::Result<()> {
    let bar = if std::io::stderr().is_terminal() && p.size > 1 << 20 {
        let bar = indicatif::ProgressBar::new(p.size);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let file = tokio::fs::File::open(p.file.path()).await.context("cannot read the packed upload")?;
    let progress = bar.clone();
    let stream = futures_util::stream::unfold(Some(file), move |state| {
        let progress = progress.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let mut file = state?;
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    progress.inc(n as u64);
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    let path = crate::client::api_path(&["api", "uploads", &p.sha256])?;
    let stored: anyhow::Result<api::StoredUpload> =
        client.put_body(&path, reqwest::Body::wrap_stream(stream), p.size).await;
    bar.finish_and_clear();
    let stored = stored?;
    if stored.sha256 != p.sha256 || stored.size != p.size {
        bail!(
            "the coordinator stored {} bytes as {}, not {} bytes as {}",
            stored.size,
            stored.sha256,
            p.size,
            p.sha256
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
            .args(args)
            .output()
            .expect("git runs (install git to run these tests)")
            .status
            .success();
        assert!(ok, "git {args:?}");
    }

    fn entries(p: &Packed) -> Vec<(String, Vec<u8>)> {
        let mut a = tar::Archive::new(std::fs::File::open(p.file.path()).expect("opens"));
        a.entries()
            .expect("entries")
            .map(|e| {
                let mut e = e.expect("entry");
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).expect("reads");
                (e.path().expect("path").to_string_lossy().into_owned(), data)
            })
            .collect()
    }

    #[test]
    fn a_git_repo_sends_tracked_and_untracked_files_but_not_ignored_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        git(d, &["init", "-q"]);
        std::fs::write(d.join(".gitignore"), "*.log\nbuild/\n").expect("writes");
        std::fs::write(d.join("tracked.txt"), "tracked\n").expect("writes");
        std::fs::create_dir_all(d.join("src/deep")).expect("mkdir");
        std::fs::write(d.join("src/deep/lib.rs"), "fn x() {}\n").expect("writes");
        git(d, &["add", "."]);
        git(d, &["commit", "-qm", "one"]);
        std::fs::write(d.join("untracked.txt"), "new\n").expect("writes");
        std::fs::write(d.join("debug.log"), "noise\n").expect("writes");
        std::fs::create_dir_all(d.join("build")).expect("mkdir");
        std::fs::write(d.join("build/out.bin"), "bin").expect("writes");
        let files = list_dir(d).expect("lists");
        let names: Vec<String> = files.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        assert_eq!(names, [".gitignore", "src/deep/lib.rs", "tracked.txt", "untracked.txt"]);
        let packed = pack(d, "repos[0]").expect("packs");
        let got = entries(&packed);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "upload",
                "upload/.gitignore",
                "upload/src",
                "upload/src/deep",
                "upload/src/deep/lib.rs",
                "upload/tracked.txt",
                "upload/untracked.txt"
            ]
        );
        assert_eq!(got[6].1, b"new\n");
        assert_eq!(packed.files, 4);
        // The same content packs to the same digest: applying again finds it stored.
        assert_eq!(pack(d, "repos[0]").expect("packs").sha256, packed.sha256);
    }

    #[test]
    fn other_directories_go_whole_and_files_as_they_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("data/empty")).expect("mkdir");
        std::fs::write(d.join("data/.hidden"), "h").expect("writes");
        std::fs::write(d.join("data/x.log"), "kept: no git here").expect("writes");
        let names: Vec<String> =
            list_dir(&d.join("data")).expect("lists").iter().map(|p| p.to_string_lossy().into_owned()).collect();
        assert_eq!(names, [".hidden", "empty", "x.log"]);
        std::fs::write(d.join("one.txt"), "one").expect("writes");
        let packed = pack(&d.join("one.txt"), "files[0]").expect("packs");
        assert_eq!(entries(&packed), vec![("upload".to_owned(), b"one".to_vec())]);
        assert_eq!(packed.size, std::fs::metadata(packed.file.path()).expect("stat").len());
    }

    #[test]
    fn past_the_limit_nothing_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.bin");
        // Sparse: no disk used, and refused on its size alone.
        std::fs::File::create(&big).expect("creates").set_len(MAX_UPLOAD_BYTES + 1).expect("sized");
        let Err(e) = pack(&big, "files[0] (big.bin)") else { panic!("refused") };
        let e = e.to_string();
        assert!(e.starts_with("files[0] (big.bin): 2.0 GiB to upload, more than the limit of 2 GiB"), "{e}");
    }

    #[test]
    fn local_paths_are_relative_to_the_configuration() {
        assert_eq!(
            resolve("..", Path::new("/work/proj/examples")).expect("resolves"),
            Path::new("/work/proj/examples/..")
        );
        assert_eq!(resolve("/abs", Path::new("/x")).expect("resolves"), Path::new("/abs"));
    }
}
