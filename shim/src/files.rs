//! Files in a running container through Docker's archive API (what `docker cp` uses): Docker
//! resolves every path inside the container's own filesystem, so nothing here can reach the host's
//! files, whatever links the container holds. The agent's SFTP server (`scp`, `sftp`) stands on it.

use bollard::query_parameters::{
    ContainerArchiveInfoOptionsBuilder, DownloadFromContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;

use crate::Shim;
use crate::error::ShimError;

/// What `stat` says of a path in a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathStat {
    pub name: String,
    pub size: u64,
    /// POSIX mode: type bits (`S_IFDIR`, `S_IFREG`, `S_IFLNK`) and permissions.
    pub mode: u32,
    /// Seconds since the epoch.
    pub mtime: Option<u32>,
}

impl PathStat {
    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Go's `os.FileMode` (what Docker reports) as a POSIX mode.
fn posix_mode(go: u32) -> u32 {
    let kind = if go & (1 << 31) != 0 {
        S_IFDIR
    } else if go & (1 << 27) != 0 {
        S_IFLNK
    } else {
        S_IFREG
    };
    kind | (go & 0o7777)
}

/// An RFC 3339 time (`2026-11-27T18:00:00.123Z`) as seconds since the epoch; `None` when unreadable.
fn epoch_secs(rfc3339: &str) -> Option<u32> {
    let (date, time) = rfc3339.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let hms: String = time.chars().take(8).collect();
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    // Days from the civil date (Howard Hinnant's algorithm); the offset is taken as UTC, as
    // Docker reports it.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u32::try_from(days * 86_400 + h * 3600 + min * 60 + s).ok()
}

impl Shim {
    /// Where the container's commands start (its working directory; `/` when the image sets none).
    pub async fn working_dir(&self, container: &str) -> Result<String, ShimError> {
        let docker = self.client().await?;
        let inspected = docker
            .inspect_container(container, None)
            .await
            .map_err(|e| self.container_error("inspecting", container, e))?;
        let dir = inspected.config.and_then(|c| c.working_dir).filter(|d| d.starts_with('/'));
        Ok(dir.unwrap_or_else(|| "/".to_owned()))
    }

    /// Runs a short command in the container (no input) and returns its exit code and its error
    /// output: for file operations the archive API lacks (remove, rename).
    pub async fn run_in(&self, container: &str, command: Vec<String>) -> Result<(i64, String), ShimError> {
        let crate::Exec { id, mut output, input } = self.exec(container, command, false, None, Vec::new()).await?;
        drop(input);
        let mut errors = String::new();
        while let Some(chunk) = output.next().await {
            if let crate::ExecOutput::Stderr(b) = chunk? {
                errors.push_str(&String::from_utf8_lossy(&b));
            }
        }
        Ok((self.exec_exit_code(&id).await?.unwrap_or(-1), errors))
    }

    /// The path's kind, size, mode and time; `None` when it does not exist.
    pub async fn stat(&self, container: &str, path: &str) -> Result<Option<PathStat>, ShimError> {
        let docker = self.client().await?;
        let opts = ContainerArchiveInfoOptionsBuilder::default().path(path).build();
        match docker.get_container_archive_info(container, Some(opts)).await {
            Ok(s) => Ok(Some(PathStat {
                name: s.name,
                size: u64::try_from(s.size).unwrap_or(0),
                mode: posix_mode(s.file_mode),
                mtime: s.modification_time.as_deref().and_then(epoch_secs),
            })),
            Err(e) if crate::error::status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.container_error("stat in", container, e)),
        }
    }

    /// The tar archive Docker makes of `path` (a file, or a directory and all below it).
    async fn archive(&self, container: &str, path: &str) -> Result<Vec<u8>, ShimError> {
        let docker = self.client().await?;
        let opts = DownloadFromContainerOptionsBuilder::default().path(path).build();
        let mut stream = docker.download_from_container(container, Some(opts));
        let mut tar = Vec::new();
        while let Some(chunk) = stream.next().await {
            tar.extend_from_slice(&chunk.map_err(|e| self.container_error("copy from", container, e))?);
        }
        Ok(tar)
    }

    /// A regular file's content.
    pub async fn read_file(&self, container: &str, path: &str) -> Result<Vec<u8>, ShimError> {
        let tar = self.archive(container, path).await?;
        let bad = |why: String| ShimError::Exec { container: container.to_owned(), why };
        let mut archive = tar::Archive::new(std::io::Cursor::new(tar));
        for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
            let mut entry = entry.map_err(|e| bad(e.to_string()))?;
            if entry.header().entry_type().is_file() {
                let mut data = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
                std::io::Read::read_to_end(&mut entry, &mut data).map_err(|e| bad(e.to_string()))?;
                return Ok(data);
            }
        }
        Err(bad(format!("{path} is not a regular file")))
    }

    /// What a directory holds (its direct entries).
    pub async fn list_dir(&self, container: &str, path: &str) -> Result<Vec<PathStat>, ShimError> {
        let tar = self.archive(container, path).await?;
        let bad = |why: String| ShimError::Exec { container: container.to_owned(), why };
        let mut out = Vec::new();
        let mut archive = tar::Archive::new(std::io::Cursor::new(tar));
        for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
            let entry = entry.map_err(|e| bad(e.to_string()))?;
            let name = entry.path().map_err(|e| bad(e.to_string()))?.to_string_lossy().into_owned();
            // Entries are `<dir>/<child>[/...]`: keep the direct children.
            let parts: Vec<&str> = name.trim_end_matches('/').split('/').collect();
            if parts.len() != 2 {
                continue;
            }
            let h = entry.header();
            let kind = match h.entry_type() {
                tar::EntryType::Directory => S_IFDIR,
                tar::EntryType::Symlink => S_IFLNK,
                _ => S_IFREG,
            };
            out.push(PathStat {
                name: parts[1].to_owned(),
                size: h.size().unwrap_or(0),
                mode: kind | (h.mode().unwrap_or(0o644) & 0o7777),
                mtime: h.mtime().ok().and_then(|t| u32::try_from(t).ok()),
            });
        }
        Ok(out)
    }

    /// Writes `data` as the file `name` in the directory `dir` (replacing it), with `mode`.
    pub async fn write_file(
        &self,
        container: &str,
        dir: &str,
        name: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), ShimError> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(mode & 0o7777);
        header.set_mtime(now_secs());
        self.upload(container, dir, name, header, data).await
    }

    /// Makes the directory `name` in `dir`.
    pub async fn make_dir(&self, container: &str, dir: &str, name: &str, mode: u32) -> Result<(), ShimError> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        header.set_mode(mode & 0o7777);
        header.set_mtime(now_secs());
        self.upload(container, dir, name, header, &[]).await
    }

    async fn upload(
        &self,
        container: &str,
        dir: &str,
        name: &str,
        mut header: tar::Header,
        data: &[u8],
    ) -> Result<(), ShimError> {
        let bad = |why: String| ShimError::Exec { container: container.to_owned(), why };
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_data(&mut header, name, data).map_err(|e| bad(format!("{name}: {e}")))?;
        let tar = builder.into_inner().map_err(|e| bad(e.to_string()))?;
        let docker = self.client().await?;
        let opts = UploadToContainerOptionsBuilder::default().path(dir).build();
        docker
            .upload_to_container(container, Some(opts), bollard::body_full(tar.into()))
            .await
            .map_err(|e| self.container_error("copy into", container, e))
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_modes_and_times_read_as_posix() {
        assert_eq!(posix_mode((1 << 31) | 0o755), 0o040755);
        assert_eq!(posix_mode((1 << 27) | 0o777), 0o120777);
        assert_eq!(posix_mode(0o644), 0o100644);
        assert_eq!(epoch_secs("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(epoch_secs("2026-11-27T18:00:00.123456789Z"), Some(1_795_802_400));
        assert_eq!(epoch_secs("garbage"), None);
    }
}
