//! What a container uses, as Docker's stats endpoint reads it from its cgroup (`docker stats`).

use bollard::query_parameters::StatsOptions;
use futures_util::StreamExt;

use crate::{Shim, ShimError};

/// One reading of a container's counters. CPU time is cumulative: a rate needs two readings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// CPU time used since the container started, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use less the page cache the kernel can take back (`inactive_file`), as
    /// `docker stats` shows it.
    pub memory_used: u64,
    pub memory_limit: u64,
    pub network_rx: u64,
    pub network_tx: u64,
    pub disk_read: u64,
    pub disk_write: u64,
}

impl Shim {
    /// The container's counters now (one read, no stream: Docker answers at once with
    /// `one-shot`).
    pub async fn stats(&self, container: &str) -> Result<Stats, ShimError> {
        let docker = self.client().await?;
        let options = StatsOptions { stream: false, one_shot: true };
        let reading = match docker.stats(container, Some(options)).next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => return Err(self.container_error("reading the stats of", container, e)),
            None => {
                return Err(ShimError::Unexpected {
                    op: "reading the stats of",
                    subject: container.to_owned(),
                    detail: "Docker sent no reading".to_owned(),
                });
            }
        };
        let cpu_ns = reading.cpu_stats.and_then(|c| c.cpu_usage).and_then(|u| u.total_usage).unwrap_or(0);
        let (mut memory_used, mut memory_limit) = (0, 0);
        if let Some(m) = reading.memory_stats {
            // cgroup v2 names it `inactive_file`, v1 `total_inactive_file`.
            let cache = m
                .stats
                .as_ref()
                .and_then(|s| s.get("inactive_file").or_else(|| s.get("total_inactive_file")).copied())
                .unwrap_or(0);
            memory_used = m.usage.unwrap_or(0).saturating_sub(cache);
            memory_limit = m.limit.unwrap_or(0);
        }
        let (mut network_rx, mut network_tx) = (0u64, 0u64);
        for n in reading.networks.iter().flat_map(|n| n.values()) {
            network_rx = network_rx.saturating_add(n.rx_bytes.unwrap_or(0));
            network_tx = network_tx.saturating_add(n.tx_bytes.unwrap_or(0));
        }
        let (mut disk_read, mut disk_write) = (0u64, 0u64);
        let entries = reading.blkio_stats.and_then(|b| b.io_service_bytes_recursive).unwrap_or_default();
        for e in entries {
            let value = e.value.unwrap_or(0);
            match e.op.as_deref().map(str::to_ascii_lowercase).as_deref() {
                Some("read") => disk_read = disk_read.saturating_add(value),
                Some("write") => disk_write = disk_write.saturating_add(value),
                _ => {}
            }
        }
        Ok(Stats { cpu_ns, memory_used, memory_limit, network_rx, network_tx, disk_read, disk_write })
    }
}
