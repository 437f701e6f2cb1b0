//! NVIDIA GPUs, as NVML reports them.

use std::path::{Path, PathBuf};

use corral_proto::inventory::GpuInfo;
use corral_proto::resources::{GpuVendor, Memory};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

/// The name `Nvml::init()` asks the dynamic loader for (nvml-wrapper's default on Linux).
pub const DEFAULT_NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// What NVML says about the host's NVIDIA GPUs and driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvidiaInfo {
    pub gpus: Vec<GpuInfo>,
    /// e.g. `550.54.15`.
    pub driver_version: String,
    /// The CUDA version the driver supports, e.g. `12.4`; `None` when NVML cannot tell (it asks
    /// `libcuda.so.1`, which a driver install can lack) — the GPUs are still usable then.
    pub cuda_version: Option<String>,
}

/// Why the host's NVIDIA GPUs cannot be listed; the node then reports none.
#[derive(Debug, thiserror::Error)]
pub enum NvmlUnavailable {
    #[error("cannot load the NVIDIA management library {}", library.display())]
    Load {
        library: PathBuf,
        #[source]
        source: NvmlError,
    },
    #[error("the NVIDIA management library {} failed to report {query}", library.display())]
    Query {
        library: PathBuf,
        query: &'static str,
        #[source]
        source: NvmlError,
    },
}

impl NvmlUnavailable {
    /// Whether the library itself is absent: the normal state of a host without NVIDIA GPUs, as
    /// opposed to a driver that is installed but broken.
    pub fn is_library_missing(&self) -> bool {
        matches!(self, Self::Load { source: NvmlError::LibloadingError(_), .. })
    }
}

/// Lists the NVIDIA GPUs through NVML, loaded from `nvml_path` or, when `None`, from the loader's
/// default search for [`DEFAULT_NVML_LIBRARY`].
///
/// Blocking: NVML's initialisation can take seconds on a host with many GPUs. A GPU that fails to
/// answer (fallen off the bus, for one) is left out with a warning rather than failing the rest.
pub fn collect_gpus(nvml_path: Option<&Path>) -> Result<NvidiaInfo, NvmlUnavailable> {
    let library = nvml_path.map_or_else(|| PathBuf::from(DEFAULT_NVML_LIBRARY), Path::to_path_buf);
    let nvml = match nvml_path {
        Some(path) => Nvml::builder().lib_path(path.as_os_str()).init(),
        None => Nvml::init(),
    }
    .map_err(|source| NvmlUnavailable::Load { library: library.clone(), source })?;
    let query_err = |query| {
        let library = library.clone();
        move |source| NvmlUnavailable::Query { library, query, source }
    };

    let driver_version = nvml.sys_driver_version().map_err(query_err("the driver version"))?;
    let cuda_version = match nvml.sys_cuda_driver_version() {
        Ok(v) => Some(format_cuda_version(v)),
        Err(error) => {
            tracing::warn!(error = %error, "nvml does not report the cuda version");
            None
        }
    };
    let count = nvml.device_count().map_err(query_err("the number of GPUs"))?;
    let mut gpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        match nvml.device_by_index(index).and_then(|device| gpu_info(index, &device)) {
            Ok(gpu) => gpus.push(gpu),
            Err(error) => tracing::warn!(gpu = index, error = %error, "gpu left out of inventory"),
        }
    }
    Ok(NvidiaInfo { gpus, driver_version, cuda_version })
}

fn gpu_info(index: u32, device: &Device<'_>) -> Result<GpuInfo, NvmlError> {
    Ok(GpuInfo {
        index,
        vendor: GpuVendor::Nvidia,
        name: device.name()?,
        memory: Memory(device.memory_info()?.total),
        uuid: device.uuid()?,
        pci_bus_id: device.pci_info()?.bus_id,
    })
}

/// NVML's `12040` → `12.4`.
fn format_cuda_version(v: i32) -> String {
    format!("{}.{}", nvml_wrapper::cuda_driver_version_major(v), nvml_wrapper::cuda_driver_version_minor(v))
}

/// Compiles tests/fake-nvml into `dir` (for the agent's NVML tests). No C compiler is a failure,
/// not a skip: these tests are the only check of the NVML path on hosts without a GPU.
#[cfg(test)]
pub(crate) fn build_fake_nvml(dir: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    const FAKE_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fake-nvml/fake_nvml.c");
    let lib = dir.join("libnvidia-ml.so.1");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&lib)
        .arg(FAKE_SOURCE)
        .status()
        .context("cannot run `cc` to build the fake NVML library (install a C compiler)")?;
    anyhow::ensure!(status.success(), "`cc` failed to build {FAKE_SOURCE}: {status}");
    Ok(lib)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use anyhow::{Context, bail, ensure};

    use super::*;

    #[test]
    fn fake_nvml_reports_two_a100s() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let lib = build_fake_nvml(dir.path())?;

        let info = collect_gpus(Some(&lib)).with_context(|| format!("collecting from {}", lib.display()))?;

        assert_eq!(info.driver_version, "550.54.15");
        assert_eq!(info.cuda_version.as_deref(), Some("12.4"));
        let a100 = |index: u32, uuid: &str, bus: &str| GpuInfo {
            index,
            vendor: GpuVendor::Nvidia,
            name: "NVIDIA A100-SXM4-80GB".to_owned(),
            memory: Memory(81920 * 1024 * 1024),
            uuid: uuid.to_owned(),
            pci_bus_id: bus.to_owned(),
        };
        assert_eq!(
            info.gpus,
            [
                a100(0, "GPU-fa4e0000-0000-4000-8000-000000000000", "00000000:07:00.0"),
                a100(1, "GPU-fa4e0000-0000-4000-8000-000000000001", "00000000:0F:00.0"),
            ]
        );
        assert_eq!(info.gpus[0].memory.to_string(), "80GB");
        Ok(())
    }

    /// The fake's GPU count comes from `FAKE_NVML_GPU_COUNT`, read inside the library. Setting it
    /// here would race with the other tests, so the check runs in a child copy of this test binary.
    #[test]
    fn fake_nvml_gpu_count_follows_env() -> anyhow::Result<()> {
        if let Some(lib) = std::env::var_os("CORRAL_FAKE_NVML_CHILD") {
            // The child: report what NVML sees for the parent to check.
            let info = collect_gpus(Some(Path::new(&lib)))?;
            let buses: Vec<&str> = info.gpus.iter().map(|g| g.pci_bus_id.as_str()).collect();
            println!("fake-nvml gpus: {} buses: {}", info.gpus.len(), buses.join(","));
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let lib = build_fake_nvml(dir.path())?;
        let exe = std::env::current_exe()?;
        for (count, buses) in
            [("0", ""), ("1", "00000000:07:00.0"), ("3", "00000000:07:00.0,00000000:0F:00.0,00000000:47:00.0")]
        {
            let out = Command::new(&exe)
                .args(["--exact", "inventory::nvidia::tests::fake_nvml_gpu_count_follows_env", "--nocapture"])
                .env("CORRAL_FAKE_NVML_CHILD", &lib)
                .env("FAKE_NVML_GPU_COUNT", count)
                .output()?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let Some(line) = stdout.lines().find(|l| l.starts_with("fake-nvml gpus:")) else {
                bail!(
                    "child run printed no result ({}):\n{stdout}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            assert_eq!(line, format!("fake-nvml gpus: {count} buses: {buses}"));
        }
        Ok(())
    }

    #[test]
    fn missing_library_means_no_gpus_and_names_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let lib = dir.path().join("absent").join("libnvidia-ml.so.1");

        let err = collect_gpus(Some(&lib)).expect_err("no library there");

        assert!(err.is_library_missing(), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&lib.display().to_string()), "message does not name the path: {msg}");
    }

    #[test]
    fn library_without_nvml_symbols_is_not_missing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let src = dir.path().join("empty.c");
        std::fs::write(&src, "int not_nvml(void) { return 0; }\n")?;
        let lib = dir.path().join("libnvidia-ml.so.1");
        let status = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&lib).arg(&src).status()?;
        ensure!(status.success(), "cc failed: {status}");

        let err = collect_gpus(Some(&lib)).expect_err("no nvmlInit_v2 in it");

        assert!(matches!(err, NvmlUnavailable::Load { source: NvmlError::FailedToLoadSymbol(_), .. }), "{err:?}");
        assert!(!err.is_library_missing());
        Ok(())
    }

    #[test]
    fn cuda_version_is_major_dot_minor() {
        assert_eq!(format_cuda_version(12040), "12.4");
        assert_eq!(format_cuda_version(11080), "11.8");
        assert_eq!(format_cuda_version(12000), "12.0");
    }

    /// Runs against the host's real driver when asked (`CORRAL_TEST_REAL_NVML=1`), on a GPU machine.
    #[test]
    fn real_nvml_lists_gpus() {
        if std::env::var("CORRAL_TEST_REAL_NVML").as_deref() != Ok("1") {
            println!("real NVML test not requested (set CORRAL_TEST_REAL_NVML=1 on a GPU host)");
            return;
        }
        let info = match collect_gpus(None) {
            Ok(info) => info,
            Err(e) => panic!("real NVML: {}", crate::inventory::error_chain(&e)),
        };
        println!("{info:#?}");
        assert!(!info.gpus.is_empty(), "NVML loaded but reported no GPUs");
        for gpu in &info.gpus {
            assert!(!gpu.name.is_empty() && !gpu.uuid.is_empty(), "{gpu:?}");
            assert!(gpu.uuid.starts_with("GPU-"), "{gpu:?}");
            assert!(gpu.memory.bytes() > 0, "{gpu:?}");
        }
        assert!(!info.driver_version.is_empty());
    }
}
