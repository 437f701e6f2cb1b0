//! What a node measures, every interval: its GPUs (NVML), its jobs' containers (Docker) and the
//! host (protocol 3, [`crate::wire::AgentMessage::Metrics`]); and how the coordinator judges a GPU's
//! health from it ([`faults`]).
//!
//! A report sums up one interval (by default 10 s of samples taken every 2 s): utilization and
//! power are the interval's means, temperature its highest reading, the rest the last reading.
//! Counters (ECC errors, network and disk bytes, CPU time) are the totals as read, never deltas,
//! so a lost report loses no count.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::JobId;

/// One node's interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMetrics {
    /// The interval's end, in milliseconds since the epoch by the node's clock.
    pub at_ms: i64,
    /// How long the interval was.
    pub interval_ms: u32,
    pub host: HostSample,
    pub gpus: Vec<GpuSample>,
    pub containers: Vec<ContainerSample>,
}

/// The host as a whole.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSample {
    /// CPU time used in the interval, in thousandths of a core (2,000: two cores busy).
    pub cpu_millicores: u32,
    pub memory_used: u64,
    pub memory_total: u64,
}

/// One GPU over the interval. A reading NVML refused (not supported on this model, or failed) is
/// `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuSample {
    pub index: u32,
    pub uuid: String,
    /// NVML says the GPU fell off the bus (`NVML_ERROR_GPU_IS_LOST`).
    pub lost: bool,
    /// Percent of the interval a kernel ran (the mean of the samples).
    pub utilization: Option<u8>,
    /// Percent of the interval device memory was read or written.
    pub memory_utilization: Option<u8>,
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
    /// Degrees Celsius, the highest of the interval.
    pub temperature: Option<u32>,
    /// Milliwatts, the mean of the interval.
    pub power_mw: Option<u32>,
    pub sm_clock_mhz: Option<u32>,
    pub memory_clock_mhz: Option<u32>,
    /// NVML's clock throttle reasons (`nvmlClocksThrottleReason*` bits).
    pub throttle_reasons: Option<u64>,
    pub ecc: Option<EccCounts>,
    /// Pages waiting to be retired at the next reboot (older GPUs' answer to a memory fault).
    pub retired_pages_pending: Option<bool>,
    pub remapped_rows: Option<RemappedRows>,
    /// Xid critical errors NVML delivered during the interval, in order (an Xid is sent once).
    pub xids: Vec<u64>,
}

/// ECC error counts: volatile since the driver loaded, aggregate over the GPU's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EccCounts {
    pub corrected_volatile: u64,
    pub uncorrected_volatile: u64,
    pub corrected_aggregate: u64,
    pub uncorrected_aggregate: u64,
}

/// Row remapping (Ampere and later): rows of memory replaced after errors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemappedRows {
    pub correctable: u32,
    pub uncorrectable: u32,
    /// A remap waits for the GPU's next reset.
    pub pending: bool,
    /// A remap failed: the GPU has a row it cannot replace.
    pub failure: bool,
}

/// One job's container over the interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSample {
    pub job_id: JobId,
    /// CPU time used in the interval, in thousandths of a core; `None` for the first sample of a
    /// container (a rate needs two readings).
    pub cpu_millicores: Option<u32>,
    /// Memory in use, without the page cache it could give back (as `docker stats` shows it).
    pub memory_used: u64,
    /// Its memory limit (the host's memory when it has none).
    pub memory_limit: u64,
    /// Bytes since the container started.
    pub network_rx: u64,
    pub network_tx: u64,
    pub disk_read: u64,
    pub disk_write: u64,
}

/// The Xids that mean a GPU can no longer be trusted with work, as NVIDIA's Xid catalog and DCGM's
/// health checks read them: 48 (double-bit ECC error), 63 and 64 (a page retirement or row remap
/// recorded, or failing to be), 74 (NVLink error), 79 (fallen off the bus), 94 and 95 (contained
/// and uncontained ECC errors), 119 and 120 (the GPU's system processor stopped answering).
pub const FATAL_XIDS: &[u64] = &[48, 63, 64, 74, 79, 94, 95, 119, 120];

/// Why a GPU is out of service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// A fatal Xid was delivered: an event, that stays until an operator returns the GPU.
    Xid(u64),
    /// Uncorrectable ECC errors since the driver loaded (the count).
    UncorrectableEcc(u64),
    /// Pages wait to be retired: the GPU needs a reboot.
    RetirementPending,
    /// A row remap failed.
    RemapFailure,
    /// NVML reports the GPU lost.
    Lost,
}

impl Fault {
    /// Whether the fault is a condition the next report can show cleared (an Xid happened once
    /// and never clears by itself).
    pub fn is_condition(&self) -> bool {
        !matches!(self, Self::Xid(_))
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Xid(x) => write!(f, "Xid {x}{}", xid_meaning(*x).map(|m| format!(" ({m})")).unwrap_or_default()),
            Self::UncorrectableEcc(n) => write!(f, "{n} uncorrectable ECC error(s) since the driver loaded"),
            Self::RetirementPending => f.write_str("memory pages wait to be retired (reboot the host)"),
            Self::RemapFailure => f.write_str("a memory row remap failed"),
            Self::Lost => f.write_str("the GPU fell off the bus (NVML reports it lost)"),
        }
    }
}

fn xid_meaning(xid: u64) -> Option<&'static str> {
    Some(match xid {
        48 => "double-bit ECC error",
        63 => "ECC page retirement or row remap recorded",
        64 => "ECC page retirement or row remap failed",
        74 => "NVLink error",
        79 => "fallen off the bus",
        94 => "contained ECC error",
        95 => "uncontained ECC error",
        119 | 120 => "GSP error",
        _ => return None,
    })
}

/// What in a GPU's sample takes it out of service; empty for a healthy GPU.
pub fn faults(sample: &GpuSample) -> Vec<Fault> {
    let mut out = Vec::new();
    if sample.lost {
        out.push(Fault::Lost);
    }
    for &x in &sample.xids {
        if FATAL_XIDS.contains(&x) && !out.contains(&Fault::Xid(x)) {
            out.push(Fault::Xid(x));
        }
    }
    if let Some(ecc) = sample.ecc
        && ecc.uncorrected_volatile > 0
    {
        out.push(Fault::UncorrectableEcc(ecc.uncorrected_volatile));
    }
    if sample.retired_pages_pending == Some(true) {
        out.push(Fault::RetirementPending);
    }
    if sample.remapped_rows.is_some_and(|r| r.failure) {
        out.push(Fault::RemapFailure);
    }
    out
}

/// Bounds on a report from a node: what the coordinator keeps of one that says more.
pub const MAX_GPUS: usize = 64;
pub const MAX_CONTAINERS: usize = 1024;
pub const MAX_XIDS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_gpu_has_no_faults_and_each_kind_is_found() {
        let ok = GpuSample {
            index: 0,
            uuid: "GPU-0".into(),
            ecc: Some(EccCounts {
                corrected_volatile: 12,
                corrected_aggregate: 40,
                uncorrected_aggregate: 1,
                ..Default::default()
            }),
            remapped_rows: Some(RemappedRows { correctable: 2, pending: true, ..Default::default() }),
            retired_pages_pending: Some(false),
            xids: vec![13, 31, 43],
            ..Default::default()
        };
        assert_eq!(faults(&ok), [], "application Xids, corrected errors, an old uncorrected one, a pending remap");
        let bad = GpuSample {
            lost: true,
            xids: vec![79, 13, 79],
            ecc: Some(EccCounts { uncorrected_volatile: 3, ..Default::default() }),
            retired_pages_pending: Some(true),
            remapped_rows: Some(RemappedRows { failure: true, ..Default::default() }),
            ..ok
        };
        assert_eq!(
            faults(&bad),
            [Fault::Lost, Fault::Xid(79), Fault::UncorrectableEcc(3), Fault::RetirementPending, Fault::RemapFailure]
        );
        assert_eq!(Fault::Xid(79).to_string(), "Xid 79 (fallen off the bus)");
        assert_eq!(Fault::UncorrectableEcc(3).to_string(), "3 uncorrectable ECC error(s) since the driver loaded");
        assert!(!Fault::Xid(48).is_condition() && Fault::UncorrectableEcc(1).is_condition());
    }
}
