//! Resource requirements as users write them (dstack's `resources` syntax, already parsed) and the
//! matching of those requirements against a host's inventory.

use serde::{Deserialize, Serialize};

use crate::inventory::{GpuInfo, HostInventory};

pub mod tpu;
pub use tpu::TPU_INDEX_BASE;

/// A closed or half-open range such as `8..`, `..2`, `1..2`, or an exact value (`min == max`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Range<T> {
    pub min: Option<T>,
    pub max: Option<T>,
}

impl<T: PartialOrd + Copy> Range<T> {
    pub fn exactly(v: T) -> Self {
        Self { min: Some(v), max: Some(v) }
    }

    pub fn at_least(v: T) -> Self {
        Self { min: Some(v), max: None }
    }

    pub fn contains(&self, v: T) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }
}

impl<T: std::fmt::Display + PartialEq> std::fmt::Display for Range<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.min, &self.max) {
            (Some(a), Some(b)) if a == b => write!(f, "{a}"),
            (Some(a), Some(b)) => write!(f, "{a}..{b}"),
            (Some(a), None) => write!(f, "{a}.."),
            (None, Some(b)) => write!(f, "..{b}"),
            (None, None) => f.write_str(".."),
        }
    }
}

/// Bytes, printed the way dstack prints memory (`80GB`, `512MB`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Memory(pub u64);

pub const MB: u64 = 1 << 20;
pub const GB: u64 = 1 << 30;

impl Memory {
    pub fn gb(v: u64) -> Self {
        Self(v * GB)
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        if b >= GB && b.is_multiple_of(GB) {
            write!(f, "{}GB", b / GB)
        } else if b >= GB {
            write!(f, "{:.1}GB", b as f64 / GB as f64)
        } else {
            write!(f, "{}MB", b / MB)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuArch {
    X86,
    Arm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuVendor {
    Nvidia,
    Amd,
    Google,
    Intel,
    Tenstorrent,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CpuSpec {
    pub arch: Option<CpuArch>,
    pub count: Range<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GpuSpec {
    pub vendor: Option<GpuVendor>,
    /// Accepted model names (`A100`, `RTX4090`), matched case-insensitively against the device name.
    pub names: Vec<String>,
    /// Memory of each GPU.
    pub memory: Option<Range<Memory>>,
    /// Memory of all GPUs together.
    pub total_memory: Option<Range<Memory>>,
    pub count: Range<u32>,
    pub compute_capability: Option<String>,
}

impl GpuSpec {
    /// The smallest number of GPUs this spec asks for (`gpu: 24GB` means one).
    pub fn min_count(&self) -> u32 {
        self.count.min.unwrap_or(1)
    }

    /// Google TPUs (`v5litepod-8`, `tpu:4`): chips from the host's TPU list ([`tpu`]), not GPUs.
    pub fn is_tpu(&self) -> bool {
        self.vendor == Some(GpuVendor::Google) && self.count.max != Some(0)
    }

    /// Whether one device satisfies the per-GPU part of the spec (vendor, name, memory).
    pub fn accepts(&self, gpu: &GpuInfo) -> bool {
        if let Some(v) = self.vendor
            && v != gpu.vendor
        {
            return false;
        }
        if !self.names.is_empty() && !self.names.iter().any(|n| gpu_name_matches(n, &gpu.name)) {
            return false;
        }
        if let Some(mem) = &self.memory {
            // Device memory as reported is a little under the marketing figure (80GB → 79.6GiB):
            // round to the nearest GB before comparing, as users write the marketing number.
            let rounded = Memory(gpu.memory.0.div_ceil(GB).max(1) * GB);
            let rounded =
                if gpu.memory.0 % GB > GB / 2 || gpu.memory.0 < GB { rounded } else { Memory(gpu.memory.0 / GB * GB) };
            if !mem.contains(rounded) {
                return false;
            }
        }
        true
    }
}

/// `A100` matches "NVIDIA A100-SXM4-80GB"; `RTX4090` matches "NVIDIA GeForce RTX 4090".
pub fn gpu_name_matches(wanted: &str, device: &str) -> bool {
    let norm = |s: &str| -> String {
        s.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase()
    };
    let w = norm(wanted);
    if w.is_empty() {
        return false;
    }
    // Compare token-wise so that "A10" does not match "A100".
    let tokens: Vec<String> = device
        .split([' ', '-', '_'])
        .map(norm)
        .filter(|t| !t.is_empty() && t != "nvidia" && t != "geforce" && t != "amd" && t != "instinct")
        .collect();
    (0..tokens.len()).any(|i| {
        let mut joined = String::new();
        for t in &tokens[i..] {
            joined.push_str(t);
            if joined == w {
                return true;
            }
            if joined.len() >= w.len() {
                break;
            }
        }
        false
    })
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResourcesSpec {
    pub cpu: CpuSpec,
    pub memory: Range<Memory>,
    pub shm_size: Option<Memory>,
    pub gpu: Option<GpuSpec>,
    pub disk: Option<Range<Memory>>,
}

impl Default for ResourcesSpec {
    /// dstack's defaults: `cpu: 2..`, `memory: 8GB..`, `disk: 100GB..`. Corral uses smaller floors for
    /// memory and disk so that a laptop-sized node can run the examples; see docs/ARCHITECTURE.md.
    fn default() -> Self {
        Self {
            cpu: CpuSpec { arch: None, count: Range::at_least(1) },
            memory: Range { min: None, max: None },
            shm_size: None,
            gpu: None,
            disk: None,
        }
    }
}

/// What the scheduler gives a job on a node: how much of the host it may use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub cpus: u32,
    pub memory: Memory,
    pub shm_size: Option<Memory>,
    /// Indices of the node's GPUs (as NVML numbers them) reserved for this job alone; TPU chips
    /// from [`TPU_INDEX_BASE`] on ([`tpu`]).
    pub gpu_indices: Vec<u32>,
}

impl Allocation {
    /// The NVIDIA GPU indices: what Docker's device requests and `CUDA_VISIBLE_DEVICES` name.
    pub fn gpus(&self) -> Vec<u32> {
        self.gpu_indices.iter().copied().filter(|&i| i < TPU_INDEX_BASE).collect()
    }

    /// The TPU chips, as positions in the host's [`HostInventory::tpus`].
    pub fn tpu_chips(&self) -> Vec<usize> {
        self.gpu_indices.iter().filter_map(|&i| i.checked_sub(TPU_INDEX_BASE)).map(|i| i as usize).collect()
    }
}

/// Why a node cannot take a job, in words a user can act on.
pub type Misfit = String;

/// Decides whether `spec` fits what is still free on `host`, and picks the resources to give.
/// `used_gpus` are indices already reserved; `used_cpus` and `used_memory` are already allocated.
pub fn fit(
    spec: &ResourcesSpec,
    host: &HostInventory,
    used_cpus: u32,
    used_memory: Memory,
    used_gpus: &[u32],
) -> Result<Allocation, Misfit> {
    if let Some(arch) = spec.cpu.arch
        && host.cpu_arch() != Some(arch)
    {
        return Err(format!("cpu architecture is {}", host.arch));
    }
    let free_cpus = host.cpu_cores.saturating_sub(used_cpus);
    let want_cpus = spec.cpu.count.min.unwrap_or(1);
    if free_cpus < want_cpus {
        return Err(format!("needs {want_cpus} CPUs, {free_cpus} of {} free", host.cpu_cores));
    }
    let cpus = match spec.cpu.count.max {
        Some(max) => max.min(free_cpus),
        None => want_cpus,
    };
    let free_mem = Memory(host.memory.0.saturating_sub(used_memory.0));
    let want_mem = spec.memory.min.unwrap_or(Memory(0));
    if free_mem < want_mem {
        return Err(format!("needs {want_mem} memory, {free_mem} of {} free", host.memory));
    }
    if let Some(disk) = &spec.disk
        && let Some(min) = disk.min
        && host.disk < min
    {
        return Err(format!("needs {min} disk, host has {}", host.disk));
    }
    let mut gpu_indices = Vec::new();
    if let Some(gpu) = spec.gpu.as_ref().filter(|g| g.is_tpu()) {
        gpu_indices = tpu::fit_tpus(gpu, host, used_gpus)?;
    } else if let Some(gpu) = &spec.gpu {
        let want = gpu.min_count();
        if want > 0 || gpu.count.max.is_some_and(|m| m > 0) {
            let matching: Vec<&GpuInfo> = host.gpus.iter().filter(|g| gpu.accepts(g)).collect();
            if matching.is_empty() {
                return Err(if host.gpus.is_empty() {
                    "has no GPUs".to_owned()
                } else {
                    format!("has no GPU matching {}", describe_gpu(gpu))
                });
            }
            let free: Vec<u32> = matching.iter().map(|g| g.index).filter(|i| !used_gpus.contains(i)).collect();
            if (free.len() as u32) < want {
                return Err(format!(
                    "needs {want} GPU(s) matching {}, {} of {} free",
                    describe_gpu(gpu),
                    free.len(),
                    matching.len()
                ));
            }
            let take = gpu.count.max.map_or(want, |m| m.min(free.len() as u32));
            gpu_indices = free.into_iter().take(take as usize).collect();
            if let Some(total) = &gpu.total_memory {
                let sum: u64 = gpu_indices
                    .iter()
                    .filter_map(|i| host.gpus.iter().find(|g| g.index == *i))
                    .map(|g| g.memory.0)
                    .sum();
                if let Some(min) = total.min
                    && sum < min.0 * 95 / 100
                {
                    return Err(format!("needs {min} total GPU memory, {} free", Memory(sum)));
                }
            }
        }
    }
    Ok(Allocation { cpus, memory: want_mem, shm_size: spec.shm_size, gpu_indices })
}

/// `A100:80GB:2`-style description of a GPU spec, for messages.
pub fn describe_gpu(gpu: &GpuSpec) -> String {
    let mut parts = Vec::new();
    if !gpu.names.is_empty() {
        parts.push(gpu.names.join(","));
    } else if let Some(v) = gpu.vendor {
        parts.push(format!("{v:?}").to_lowercase());
    }
    if let Some(m) = &gpu.memory {
        parts.push(m.to_string());
    }
    parts.push(gpu.count.to_string());
    parts.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_by_token() {
        assert!(gpu_name_matches("A100", "NVIDIA A100-SXM4-80GB"));
        assert!(!gpu_name_matches("A10", "NVIDIA A100-SXM4-80GB"));
        assert!(gpu_name_matches("a10", "NVIDIA A10"));
        assert!(gpu_name_matches("RTX4090", "NVIDIA GeForce RTX 4090"));
        assert!(gpu_name_matches("H100", "NVIDIA H100 80GB HBM3"));
        assert!(!gpu_name_matches("H100", "NVIDIA H200"));
        assert!(gpu_name_matches("MI300X", "AMD Instinct MI300X"));
    }

    #[test]
    fn ranges() {
        let r = Range { min: Some(2u32), max: None };
        assert!(r.contains(2) && r.contains(9) && !r.contains(1));
        assert_eq!(Range { min: Some(1u32), max: Some(2) }.to_string(), "1..2");
        assert_eq!(Memory::gb(80).to_string(), "80GB");
    }
}
