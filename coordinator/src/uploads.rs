//! The upload store: what `corral apply` sends of a run's local repo and `files`, kept by
//! content. Each upload is a tar archive named by its SHA-256 under `uploads/` in the data dir
//! (written to `uploads/tmp/`, its digest checked, then renamed: a file there is always whole),
//! so applying again sends nothing the store has. A run names its uploads in its configuration
//! (`repos[].upload`, `files[].upload`); a submission whose uploads are missing is refused, and
//! the scheduler puts them into the job's [`ContainerSpec`](corral_proto::job::ContainerSpec)
//! ([`container_parts`]). Agents fetch them over their link (`AgentMessage::FetchUpload`).

use std::path::{Path, PathBuf};

use corral_proto::config::limits::MAX_UPLOAD_BYTES;
use corral_proto::config::{Configuration, FileMapping, RepoExistsAction, RepoSpec, TaskConfig, UploadRef};
use corral_proto::job::{GitClone, Upload};

use crate::secrets::random_hex;

pub struct UploadStore {
    dir: PathBuf,
}

impl UploadStore {
    /// Opens (makes) `dir`; uploads a restart cut off are removed.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        crate::datadir::create_dir_all(dir)?;
        let tmp = dir.join("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        crate::datadir::create_dir_all(&tmp)?;
        Ok(Self { dir: dir.to_owned() })
    }

    /// Where the upload `sha256` is kept; `None` for what cannot be a digest (it names a file).
    pub fn path(&self, sha256: &str) -> Option<PathBuf> {
        UploadRef::is_digest(sha256).then(|| self.dir.join(sha256))
    }

    /// Its size, when the store has it.
    pub fn size(&self, sha256: &str) -> Option<u64> {
        let path = self.path(sha256)?;
        std::fs::metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len())
    }

    /// A fresh path for an upload in progress.
    pub fn tmp_path(&self) -> PathBuf {
        self.dir.join("tmp").join(random_hex(8))
    }

    /// Keeps the received `tmp` as `sha256` (the caller checked the digest). `Ok(false)`: the
    /// store had it already (a concurrent upload of the same content), and `tmp` is dropped.
    pub fn commit(&self, tmp: &Path, sha256: &str) -> std::io::Result<bool> {
        let Some(path) = self.path(sha256) else {
            return Err(std::io::Error::other("not a digest"));
        };
        if path.exists() {
            let _ = std::fs::remove_file(tmp);
            return Ok(false);
        }
        std::fs::rename(tmp, &path)?;
        Ok(true)
    }
}

/// The uploads a run's configuration names, with the field each is for.
fn named(cfg: &Configuration) -> Vec<(String, Option<&UploadRef>)> {
    let (repos, files): (&[RepoSpec], &[FileMapping]) = match cfg {
        Configuration::Task(t) => (&t.repos, &t.files),
        Configuration::Service(s) => (&s.repos, &s.files),
        Configuration::DevEnvironment(d) => (&d.repos, &d.files),
        Configuration::Fleet(_) | Configuration::Volume(_) => (&[], &[]),
    };
    let repos = repos
        .iter()
        .enumerate()
        .filter(|(_, r)| r.url.is_none())
        .map(|(i, r)| (format!("repos[{i}] ({})", r.local_path.as_deref().unwrap_or(".")), r.upload.as_ref()));
    let files = files.iter().enumerate().map(|(i, f)| (format!("files[{i}] ({})", f.local_path), f.upload.as_ref()));
    repos.chain(files).collect()
}

/// Whether every local repo and file of `cfg` is in the store, as uploaded; `Err` names the
/// first that is not, and what to do.
pub fn check_present(store: &UploadStore, cfg: &Configuration) -> Result<(), String> {
    for (field, upload) in named(cfg) {
        let Some(u) = upload else {
            return Err(format!(
                "{field}: not uploaded: a local repo or file travels with the run only through `corral apply`, which uploads it first"
            ));
        };
        if u.size > MAX_UPLOAD_BYTES {
            return Err(format!("{field}: an upload is at most 2 GiB, found {} bytes", u.size));
        }
        match store.size(&u.sha256) {
            Some(size) if size == u.size => {}
            Some(size) => {
                return Err(format!(
                    "{field}: the coordinator's upload {} has {size} bytes, not {}: apply again",
                    u.sha256, u.size
                ));
            }
            None => {
                return Err(format!(
                    "{field}: the coordinator has no upload {}: apply again with `corral apply`, which uploads it",
                    u.sha256
                ));
            }
        }
    }
    Ok(())
}

/// What a job of `task` puts into its container before it starts: its local repo and files (from
/// the store), and its repo to clone on the node (`url`).
pub fn container_parts(task: &TaskConfig) -> (Vec<Upload>, Vec<GitClone>) {
    let mut uploads = Vec::new();
    let mut clones = Vec::new();
    for repo in &task.repos {
        let skip_if_exists = repo.if_exists == RepoExistsAction::Skip;
        match (&repo.url, &repo.upload) {
            (Some(url), _) => clones.push(GitClone {
                url: url.clone(),
                branch: repo.branch.clone(),
                hash: repo.hash.clone(),
                path: repo.path.clone(),
                skip_if_exists,
            }),
            (None, Some(u)) => uploads.push(Upload {
                sha256: u.sha256.clone(),
                size: u.size,
                path: repo.path.clone(),
                skip_if_exists,
                replace: false,
            }),
            // Refused at submission ([`check_present`]).
            (None, None) => {}
        }
    }
    for f in &task.files {
        if let Some(u) = &f.upload {
            uploads.push(Upload {
                sha256: u.sha256.clone(),
                size: u.size,
                path: f.path.clone(),
                skip_if_exists: false,
                replace: true,
            });
        }
    }
    (uploads, clones)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(text: &str) -> TaskConfig {
        match corral_proto::config::parse(text, "t.yml").expect("valid") {
            Configuration::Task(t) => t,
            other => panic!("not a task: {other:?}"),
        }
    }

    #[test]
    fn repos_and_files_become_uploads_and_clones() {
        let digest = "ab".repeat(32);
        let mut t = task(
            "type: task\nimage: busybox\nrepos:\n  - local_path: .\n    path: /src\n    if_exists: skip\nfiles: [\"a.txt:/etc/a.txt\"]\ncommands: [x]\n",
        );
        t.repos[0].upload = Some(UploadRef { sha256: digest.clone(), size: 10 });
        t.files[0].upload = Some(UploadRef { sha256: digest.clone(), size: 10 });
        let (uploads, clones) = container_parts(&t);
        assert!(clones.is_empty());
        assert_eq!(
            uploads,
            vec![
                Upload { sha256: digest.clone(), size: 10, path: "/src".into(), skip_if_exists: true, replace: false },
                Upload { sha256: digest, size: 10, path: "/etc/a.txt".into(), skip_if_exists: false, replace: true },
            ]
        );
        let t = task("type: task\nimage: busybox\nrepos: [\"https://example.com/r.git:/r\"]\ncommands: [x]\n");
        let (uploads, clones) = container_parts(&t);
        assert!(uploads.is_empty());
        assert_eq!(clones[0].url, "https://example.com/r.git");
        assert_eq!((clones[0].path.as_str(), clones[0].skip_if_exists), ("/r", false));
    }

    #[test]
    fn a_submission_names_uploads_the_store_has() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = UploadStore::open(dir.path()).expect("opens");
        let cfg = |upload: Option<UploadRef>| {
            let mut t = task("type: task\nimage: busybox\nfiles: [\"a.txt\"]\ncommands: [x]\n");
            t.files[0].upload = upload;
            Configuration::Task(t)
        };
        let e = check_present(&store, &cfg(None)).expect_err("refused");
        assert!(e.starts_with("files[0] (a.txt): not uploaded"), "{e}");
        let digest = "cd".repeat(32);
        let e = check_present(&store, &cfg(Some(UploadRef { sha256: digest.clone(), size: 3 }))).expect_err("refused");
        assert!(e.contains("has no upload"), "{e}");
        let tmp = store.tmp_path();
        std::fs::write(&tmp, b"abc").expect("writes");
        assert!(store.commit(&tmp, &digest).expect("kept"));
        assert!(check_present(&store, &cfg(Some(UploadRef { sha256: digest.clone(), size: 3 }))).is_ok());
        assert!(check_present(&store, &cfg(Some(UploadRef { sha256: digest, size: 4 }))).is_err());
        assert_eq!(store.path("../../etc/passwd"), None);
    }
}
