//! A job's mounts on this host: its host paths are checked (a missing optional one is left out
//! and said in the job's status; a missing required one fails the job, naming it), its named
//! volumes made as Docker volumes before the container. And this host's report of its named
//! volumes (with their sizes) to the coordinator: on every connection, after a job that mounted
//! one ended, and after `corral volume delete` removed one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use corral_proto::job::{JobSpec, Mount};
use corral_proto::wire::VolumeReport;

use super::Jobs;

/// Files counted when measuring a volume; past this its size is reported unknown rather than
/// taking the host's disk for minutes.
const SIZE_WALK_LIMIT: u64 = 1_000_000;

impl Jobs {
    /// Gets the job's mounts ready. `Ok` carries what its status should say (host paths left out);
    /// `Err` the reason the job fails.
    pub(super) async fn prepare_mounts(&self, spec: &mut JobSpec) -> Result<Option<String>, String> {
        let mut skipped = Vec::new();
        let mut kept = Vec::with_capacity(spec.container.mounts.len());
        for m in std::mem::take(&mut spec.container.mounts) {
            match &m {
                Mount::Host { host_path, optional, .. } => {
                    if !tokio::fs::try_exists(host_path).await.unwrap_or(false) {
                        if *optional {
                            skipped.push(host_path.clone());
                            continue;
                        }
                        return Err(format!(
                            "volumes: the host path {host_path} does not exist on this node: create it there, or \
                             mark the volume `optional: true` to run without it"
                        ));
                    }
                }
                Mount::Volume { name, docker_name, .. } => {
                    self.shim
                        .ensure_volume(docker_name, name, &spec.project, &self.node)
                        .await
                        .map_err(|e| format!("volumes: cannot make the volume {name}: {e}"))?;
                }
                Mount::Ebs { name, volume_id, path } => {
                    let at = self.mount_ebs(name, volume_id).await?;
                    kept.push(Mount::Host { host_path: at.display().to_string(), path: path.clone(), optional: false });
                    continue;
                }
            }
            kept.push(m);
        }
        spec.container.mounts = kept;
        Ok((!skipped.is_empty()).then(|| {
            format!("optional volume(s) not mounted: the host path {} does not exist on this node", skipped.join(", "))
        }))
    }

    /// Measures this host's named volumes and queues the report for the coordinator.
    pub fn refresh_volumes(self: &Arc<Self>) {
        let this = self.clone();
        tokio::spawn(async move {
            let volumes = match this.shim.named_volumes().await {
                Ok(v) => v,
                Err(e) => return tracing::warn!("cannot list this host's volumes: {e}"),
            };
            let sizes = tokio::task::spawn_blocking(move || {
                volumes
                    .into_iter()
                    .map(|v| VolumeReport { size: size_of(&v.mountpoint), docker_name: v.docker_name })
                    .collect::<Vec<_>>()
            })
            .await;
            if let Ok(report) = sizes {
                *this.volume_report.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
                this.changed.notify_one();
            }
        });
    }

    /// The volume report not yet sent, if any.
    pub fn take_volume_report(&self) -> Option<Vec<VolumeReport>> {
        self.volume_report.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Removes a named volume (`corral volume delete`), then reports what is left.
    pub async fn delete_volume(self: &Arc<Self>, docker_name: &str) {
        match self.shim.remove_volume(docker_name).await {
            Ok(()) => tracing::info!(volume = docker_name, "volume removed"),
            Err(e) => tracing::error!(volume = docker_name, "cannot remove the volume: {e}"),
        }
        self.refresh_volumes();
    }
}

/// Whether a job mounts a named volume (its end changes what the volume holds).
pub(super) fn mounts_volume(spec: &JobSpec) -> bool {
    spec.container.mounts.iter().any(|m| matches!(m, Mount::Volume { .. } | Mount::Ebs { .. }))
}

/// The EBS volumes a job mounts (to unmount when it ends).
pub(super) fn ebs_volumes(spec: &JobSpec) -> Vec<String> {
    spec.container
        .mounts
        .iter()
        .filter_map(|m| match m {
            Mount::Ebs { volume_id, .. } => Some(volume_id.clone()),
            _ => None,
        })
        .collect()
}

impl Jobs {
    /// Where this host mounts an EBS volume.
    fn ebs_mountpoint(&self, volume_id: &str) -> PathBuf {
        self.spool_dir.parent().unwrap_or(Path::new("/")).join("volumes").join(volume_id)
    }

    /// Waits for the EBS volume's device (the coordinator attaches it to this instance), makes an
    /// ext4 file system on it when it has none, and mounts it under the state dir.
    async fn mount_ebs(&self, name: &str, volume_id: &str) -> Result<PathBuf, String> {
        let at = self.ebs_mountpoint(volume_id);
        if is_mounted(&at) {
            return Ok(at);
        }
        // Nitro instances name an EBS volume's NVMe device by its id, without the dash.
        let device =
            PathBuf::from(format!("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{}", volume_id.replace('-', "")));
        let deadline = tokio::time::Instant::now() + EBS_DEVICE_WAIT;
        while !tokio::fs::try_exists(&device).await.unwrap_or(false) {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "volumes: the EBS volume {name} ({volume_id}) did not appear on this node within {} min                      (looked for {})",
                    EBS_DEVICE_WAIT.as_secs() / 60,
                    device.display()
                ));
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let fs = run("blkid", &["-o", "value", "-s", "TYPE", &device.display().to_string()]).await.unwrap_or_default();
        if fs.trim().is_empty() {
            run("mkfs.ext4", &["-q", &device.display().to_string()])
                .await
                .map_err(|e| format!("volumes: cannot make a file system on {name} ({volume_id}): {e}"))?;
        }
        tokio::fs::create_dir_all(&at).await.map_err(|e| format!("volumes: cannot create {}: {e}", at.display()))?;
        run("mount", &[&device.display().to_string(), &at.display().to_string()])
            .await
            .map_err(|e| format!("volumes: cannot mount {name} ({volume_id}): {e}"))?;
        Ok(at)
    }

    /// After an agent restart: the EBS volumes a re-adopted container has mounted, unmounted when
    /// it ends (the guard), and those mounted for no container any more unmounted now.
    pub(super) async fn adopted_ebs(self: &Arc<Self>, containers: &[String]) -> HashMap<String, EbsMounts> {
        let root = self.ebs_mountpoint("");
        let mut guards = HashMap::new();
        let mut in_use = Vec::new();
        for c in containers {
            let ids: Vec<String> = self
                .shim
                .bind_sources(c)
                .await
                .into_iter()
                .filter(|p| p.parent() == Some(root.as_path()))
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            in_use.extend(ids.iter().cloned());
            guards.insert(c.clone(), EbsMounts::new(self, ids));
        }
        let Ok(entries) = std::fs::read_dir(&root) else { return guards };
        let stale: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|id| !in_use.contains(id) && is_mounted(&self.ebs_mountpoint(id)))
            .collect();
        self.unmount_ebs(&stale).await;
        guards
    }

    /// Unmounts the EBS volumes a job mounted (before the coordinator detaches them).
    async fn unmount_ebs(&self, volumes: &[String]) {
        for id in volumes {
            let at = self.ebs_mountpoint(id);
            if is_mounted(&at)
                && let Err(e) = run("umount", &[&at.display().to_string()]).await
            {
                tracing::warn!(volume = %id, "cannot unmount the EBS volume: {e}");
            }
        }
    }
}

/// Unmounts a job's EBS volumes when dropped (the job ended, whichever way).
pub(super) struct EbsMounts {
    jobs: Arc<Jobs>,
    volumes: Vec<String>,
}

impl EbsMounts {
    pub(super) fn new(jobs: &Arc<Jobs>, volumes: Vec<String>) -> Self {
        Self { jobs: jobs.clone(), volumes }
    }
}

impl Drop for EbsMounts {
    fn drop(&mut self) {
        if self.volumes.is_empty() {
            return;
        }
        let (jobs, volumes) = (self.jobs.clone(), std::mem::take(&mut self.volumes));
        tokio::spawn(async move { jobs.unmount_ebs(&volumes).await });
    }
}

/// How long a job waits for its EBS volume's device to appear.
const EBS_DEVICE_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

fn is_mounted(at: &Path) -> bool {
    let target = at.display().to_string();
    std::fs::read_to_string("/proc/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(target.as_str())))
}

/// Runs a host command; `Err` carries what it said.
async fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Bytes of the files under `dir`; `None` when it cannot be read (Docker's data root is out of
/// this agent's reach) or holds too many files to count.
fn size_of(dir: &Path) -> Option<u64> {
    let mut total = 0u64;
    let mut seen = 0u64;
    let mut stack = vec![std::fs::read_dir(dir).ok()?];
    while let Some(entries) = stack.last_mut() {
        let Some(entry) = entries.next() else {
            stack.pop();
            continue;
        };
        seen += 1;
        if seen > SIZE_WALK_LIMIT {
            return None;
        }
        let Ok(entry) = entry else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            if let Ok(d) = std::fs::read_dir(entry.path()) {
                stack.push(d);
            }
        } else {
            total = total.saturating_add(meta.len());
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_count_the_files_below() {
        let dir = std::env::temp_dir().join(format!("corral-size-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).expect("dirs");
        std::fs::write(dir.join("one"), [0u8; 100]).expect("file");
        std::fs::write(dir.join("a/b/two"), [0u8; 23]).expect("file");
        assert_eq!(size_of(&dir), Some(123));
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(size_of(&dir), None, "gone: unknown");
    }
}
