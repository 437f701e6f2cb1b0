//! What an agent reports about its host.

use serde::{Deserialize, Serialize};

use crate::resources::{CpuArch, GpuVendor, Memory};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInventory {
    pub hostname: String,
    pub os: String,
    pub cpu_model: String,
    /// Logical CPUs.
    pub cpu_cores: u32,
    /// As Rust names it: `x86_64`, `aarch64`.
    pub arch: String,
    pub memory: Memory,
    /// Space on the disk that holds Docker's data (or `/`).
    pub disk: Memory,
    pub gpus: Vec<GpuInfo>,
    pub gpu_driver_version: Option<String>,
    /// e.g. `12.4`.
    pub cuda_version: Option<String>,
    pub tpus: Vec<TpuInfo>,
    pub docker: DockerInfo,
}

impl HostInventory {
    pub fn cpu_arch(&self) -> Option<CpuArch> {
        match self.arch.as_str() {
            "x86_64" | "x86" | "amd64" => Some(CpuArch::X86),
            "aarch64" | "arm64" | "arm" => Some(CpuArch::Arm),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    /// The device index as NVML numbers it; what `CUDA_VISIBLE_DEVICES` and Docker's device requests use.
    pub index: u32,
    pub vendor: GpuVendor,
    /// e.g. "NVIDIA A100-SXM4-80GB".
    pub name: String,
    pub memory: Memory,
    pub uuid: String,
    /// e.g. "00000000:07:00.0".
    pub pci_bus_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpuInfo {
    /// `/dev/accel0` or `/dev/vfio/0`.
    pub device: String,
    /// The PCI device id from sysfs, when known (e.g. `0x0063` for v5e, `0x0062` for v5p).
    pub pci_device_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerInfo {
    pub version: String,
    /// Whether Docker lists the `nvidia` runtime (NVIDIA Container Toolkit installed).
    pub nvidia_runtime: bool,
}
