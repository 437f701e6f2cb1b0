//! The host's hardware, as the agent reports it to the coordinator: CPU, memory, disk, NVIDIA GPUs
//! (through NVML, [`nvidia`]) and Google TPUs (from `/dev` and `/sys`, [`tpu`]).
//!
//! Everything here is blocking and reads the OS: call it from `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use corral_proto::inventory::{DockerInfo, HostInventory};
use corral_proto::resources::Memory;
use sysinfo::{CpuRefreshKind, DiskRefreshKind, Disks, System};

mod nvidia;
mod tpu;

#[cfg(test)]
pub(crate) use nvidia::build_fake_nvml;
pub use nvidia::{DEFAULT_NVML_LIBRARY, NvidiaInfo, NvmlUnavailable, collect_gpus};
pub use tpu::collect_tpus;

/// Where to load NVML from instead of the loader's default search.
pub const NVML_LIBRARY_ENV: &str = "CORRAL_NVML_LIBRARY";

/// Docker's data directory: images and containers use the disk that holds it.
const DOCKER_ROOT: &str = "/var/lib/docker";

/// Whether "no NVIDIA GPUs" has been logged: the agent collects on every (re)connect, and the
/// reason does not change between them.
static NO_GPUS_LOGGED: AtomicBool = AtomicBool::new(false);

/// Collects the host's hardware. `docker` is given by the caller (the shim queries Docker).
///
/// NVML is loaded from `nvml_path` when given (the agent's `--nvml-library`, or
/// `$CORRAL_NVML_LIBRARY`), else from the loader's default search. Without it the host reports no NVIDIA GPUs,
/// and says why in the log the first time only. TPU chips are looked for under `device_root`'s
/// `dev` and `sys` (the agent's `--device-root`), or `/dev` and `/sys`.
pub fn collect(docker: DockerInfo, nvml_path: Option<&Path>, device_root: Option<&Path>) -> HostInventory {
    let mut inventory = collect_host();
    inventory.docker = docker;

    match collect_gpus(nvml_path) {
        Ok(nvidia) => {
            inventory.gpus = nvidia.gpus;
            inventory.gpu_driver_version = Some(nvidia.driver_version);
            inventory.cuda_version = nvidia.cuda_version;
        }
        Err(error) => {
            if !NO_GPUS_LOGGED.swap(true, Ordering::Relaxed) {
                log_no_gpus(error, nvml_path.is_some());
            }
        }
    }

    inventory.tpus = match device_root {
        Some(root) => collect_tpus(&root.join("dev"), &root.join("sys")),
        None => collect_tpus(Path::new("/dev"), Path::new("/sys")),
    };
    inventory
}

/// The host's interface addresses as `ip/prefix` (`10.0.0.5/24`), sorted, for fleets that pick a
/// node's address by network.
pub fn interface_addresses() -> Vec<String> {
    let networks = sysinfo::Networks::new_with_refreshed_list();
    let mut out: Vec<String> = networks
        .values()
        .flat_map(|data| data.ip_networks().iter().map(|n| format!("{}/{}", n.addr, n.prefix)))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn log_no_gpus(error: NvmlUnavailable, configured: bool) {
    // No library at the default place is a host without NVIDIA GPUs; anything else is a driver or
    // a configured path that does not work, which the operator wants to hear about.
    let expected = !configured && error.is_library_missing();
    let error = error_chain(&error);
    if expected {
        tracing::info!(%error, "no nvidia gpus: nvml not found");
    } else {
        tracing::warn!(%error, "no nvidia gpus: nvml unusable");
    }
}

/// `{:#}` of the error chain, skipping a cause the message before it already quotes (nvml-wrapper's
/// errors both print and return their source).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// CPU, memory, disk and names; no accelerators.
fn collect_host() -> HostInventory {
    let mut sys = System::new();
    sys.refresh_cpu_list(CpuRefreshKind::nothing());
    sys.refresh_memory();
    let cpus = sys.cpus();
    let cpu_cores = match u32::try_from(cpus.len()) {
        Ok(n) if n > 0 => n,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    };
    let cpu_model = cpus.first().map(|c| c.brand().trim().to_owned()).filter(|b| !b.is_empty());

    HostInventory {
        hostname: System::host_name().unwrap_or_else(|| "unknown".to_owned()),
        os: System::long_os_version().or_else(System::name).unwrap_or_else(|| std::env::consts::OS.to_owned()),
        cpu_model: cpu_model.unwrap_or_else(|| "unknown".to_owned()),
        cpu_cores,
        arch: std::env::consts::ARCH.to_owned(),
        memory: Memory(sys.total_memory()),
        disk: Memory(docker_disk_size()),
        ..HostInventory::default()
    }
}

/// Size of the filesystem holding Docker's data, or `/` when Docker has none here.
fn docker_disk_size() -> u64 {
    let docker = Path::new(DOCKER_ROOT);
    let target = if docker.exists() {
        // Resolve symlinks: a relocated data root is often a link to another disk.
        docker.canonicalize().unwrap_or_else(|_| docker.to_path_buf())
    } else {
        PathBuf::from("/")
    };
    let disks = Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage());
    size_of_fs_holding(&target, disks.list().iter().map(|d| (d.mount_point(), d.total_space()))).unwrap_or(0)
}

/// The size of the deepest mount point that contains `path`.
fn size_of_fs_holding<'a>(path: &Path, mounts: impl IntoIterator<Item = (&'a Path, u64)>) -> Option<u64> {
    mounts
        .into_iter()
        .filter(|(mount, _)| path.starts_with(mount))
        .max_by_key(|(mount, _)| mount.components().count())
        .map(|(_, size)| size)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn host_facts_are_filled_in() {
        let host = collect_host();

        assert!(host.cpu_cores >= 1);
        assert!(!host.cpu_model.is_empty());
        assert_eq!(host.arch, std::env::consts::ARCH);
        assert!(host.cpu_arch().is_some(), "arch {} not recognised", host.arch);
        assert!(host.memory.bytes() >= 64 * 1024 * 1024, "{}", host.memory);
        assert!(host.disk.bytes() > 0, "no filesystem found for {DOCKER_ROOT} or /");
        assert!(!host.hostname.is_empty() && !host.os.is_empty());
    }

    #[test]
    fn interface_addresses_have_their_prefix_and_include_loopback() {
        let addresses = interface_addresses();
        assert!(addresses.iter().any(|a| a == "127.0.0.1/8"), "{addresses:?}");
        assert!(
            addresses.iter().all(|a| a
                .split_once('/')
                .is_some_and(|(ip, p)| ip.parse::<std::net::IpAddr>().is_ok() && p.parse::<u8>().is_ok())),
            "{addresses:?}"
        );
    }

    #[test]
    fn disk_is_the_deepest_mount_holding_the_path() {
        let mounts = [(Path::new("/"), 100), (Path::new("/var"), 200), (Path::new("/var/lib/docker"), 300)];
        assert_eq!(size_of_fs_holding(Path::new("/var/lib/docker"), mounts), Some(300));
        assert_eq!(size_of_fs_holding(Path::new("/var/log"), mounts), Some(200));
        assert_eq!(size_of_fs_holding(Path::new("/home"), mounts), Some(100));
        // Component-wise: `/variable` is not under `/var`.
        assert_eq!(size_of_fs_holding(Path::new("/variable"), mounts), Some(100));
        assert_eq!(size_of_fs_holding(Path::new("/x"), [(Path::new("/mnt"), 1)]), None);
    }

    #[test]
    fn error_chain_quotes_each_cause_once() {
        let err = collect_gpus(Some(Path::new("/nonexistent/libnvidia-ml.so.1"))).expect_err("no library there");
        let text = error_chain(&err);
        assert!(
            text.starts_with("cannot load the NVIDIA management library /nonexistent/libnvidia-ml.so.1: "),
            "{text}"
        );
        assert_eq!(text.matches("cannot open shared object file").count(), 1, "{text}");
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The only test that calls `collect`, so that it alone sees the once-only log.
    #[test]
    fn collect_reports_docker_and_logs_missing_gpus_once() {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let docker = DockerInfo { version: "28.0.1".to_owned(), nvidia_runtime: false };

        let (first, second) = tracing::subscriber::with_default(subscriber, || {
            (collect(docker.clone(), None, None), collect(docker.clone(), None, None))
        });

        assert_eq!(first.docker, docker);
        assert_eq!(first.cpu_cores, second.cpu_cores);
        let text = String::from_utf8_lossy(&logs.0.lock().expect("not poisoned")).into_owned();
        let logged = text.matches("no nvidia gpus").count();
        if first.gpus.is_empty() {
            assert_eq!(logged, 1, "logs:\n{text}");
            assert_eq!(first.gpu_driver_version, None);
        } else {
            // A GPU host: NVML answered, nothing to say.
            assert_eq!(logged, 0, "logs:\n{text}");
            assert!(first.gpu_driver_version.is_some());
        }
    }
}
