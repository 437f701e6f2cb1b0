//! GPUs out of service ([`crate::metrics::health`]): one row per GPU taken out, until an operator
//! (or `--gpu-auto-return`) returns it.

use corral_proto::ids::NodeId;

use super::{Result, Store};

/// A GPU out of service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuMark {
    pub gpu: u32,
    pub uuid: String,
    /// What the node's report showed (`Xid 79 (fallen off the bus)`).
    pub reason: String,
    pub since_ms: i64,
    /// Every fault was a condition that a later report can show cleared (no Xid).
    pub condition: bool,
}

impl Store {
    /// Every GPU out of service, by node.
    pub fn gpu_marks(&self) -> Result<Vec<(NodeId, GpuMark)>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT node_id, gpu, uuid, reason, since_ms, clears FROM gpu_marks ORDER BY node_id, gpu",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    NodeId(r.get(0)?),
                    GpuMark {
                        gpu: r.get(1)?,
                        uuid: r.get(2)?,
                        reason: r.get(3)?,
                        since_ms: r.get(4)?,
                        condition: r.get(5)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Takes a GPU out of service (a mark already there stands).
    pub fn mark_gpu(&self, node: &NodeId, m: &GpuMark) -> Result<bool> {
        let n = self.execute(
            "INSERT INTO gpu_marks (node_id, gpu, uuid, reason, since_ms, clears) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (node_id, gpu) DO NOTHING",
            owned![node.0, m.gpu, m.uuid, m.reason, m.since_ms, m.condition],
        )?;
        Ok(n > 0)
    }

    /// Returns a GPU to service; whether it was out.
    pub fn unmark_gpu(&self, node: &NodeId, gpu: u32) -> Result<bool> {
        Ok(self.execute("DELETE FROM gpu_marks WHERE node_id = ?1 AND gpu = ?2", owned![node.0, gpu])? > 0)
    }

    /// Forgets a removed node's GPUs.
    pub fn unmark_gpus_of(&self, node: &NodeId) -> Result<usize> {
        self.execute("DELETE FROM gpu_marks WHERE node_id = ?1", owned![node.0])
    }

    /// Cordons a node that is not; whether it changed.
    pub fn cordon_node(&self, node: &NodeId) -> Result<bool> {
        Ok(self.execute("UPDATE nodes SET cordoned = 1 WHERE id = ?1 AND cordoned = 0", owned![node.0])? > 0)
    }
}
