//! Nodes: enrollment, revocation, inventory, cordons, when they were last seen, and what is
//! placed on each.

use rusqlite::{OptionalExtension, params};

use corral_proto::ids::NodeId;
use corral_proto::inventory::HostInventory;
use corral_proto::resources::Allocation;

use super::{NodeLoad, NodeRow, Result, Store, StoreError, json, now_ms, opt_json_col};

impl Store {
    /// Removes a node from the cluster: its certificate is refused from now on.
    pub fn revoke_node(&self, id: &NodeId) -> Result<()> {
        self.execute("UPDATE nodes SET revoked = 1, cordoned = 1 WHERE id = ?1", owned![id.0])?;
        Ok(())
    }

    pub fn add_node(&self, id: &NodeId, name: &str, fleet: Option<&str>, fingerprint: &str) -> Result<()> {
        self.execute(
            "INSERT INTO nodes (id, name, fleet, cert_fingerprint, enrolled_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            owned![id.0, name, fleet, fingerprint, now_ms()],
        )?;
        Ok(())
    }

    pub fn node_by_fingerprint(&self, fingerprint: &str) -> Result<Option<NodeRow>> {
        self.query_nodes("WHERE cert_fingerprint = ?1", [fingerprint]).map(|mut v| v.pop())
    }

    pub fn nodes(&self) -> Result<Vec<NodeRow>> {
        self.query_nodes("WHERE revoked = 0 ORDER BY name, id", [])
    }

    /// Up to `limit` nodes by name (then id: names may repeat), after the node `after`.
    pub fn nodes_page(&self, after: Option<&NodeId>, limit: u32) -> Result<Vec<NodeRow>> {
        let Some(after) = after else {
            return self.query_nodes("WHERE revoked = 0 ORDER BY name, id LIMIT ?1", [limit]);
        };
        self.query_nodes(
            "WHERE revoked = 0 AND (name, id) > (SELECT name, id FROM nodes WHERE id = ?1) ORDER BY name, id LIMIT ?2",
            params![after.0, limit],
        )
    }

    /// What is placed on each node (of `nodes`, or every node): its jobs' count and GPUs, read
    /// without their specs.
    pub fn node_loads(&self, nodes: Option<&[NodeId]>) -> Result<std::collections::HashMap<NodeId, NodeLoad>> {
        let list =
            nodes.map(|n| serde_json::Value::from(n.iter().map(|i| i.0.as_str()).collect::<Vec<_>>()).to_string());
        let conn = self.read();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT node_id, allocation FROM jobs WHERE node_id IS NOT NULL AND state IN ",
            placed_states!(),
            " AND (?1 IS NULL OR node_id IN (SELECT value FROM json_each(?1)))"
        ))?;
        let mut rows = stmt.query([list])?;
        let mut loads: std::collections::HashMap<NodeId, NodeLoad> = std::collections::HashMap::new();
        while let Some(r) = rows.next()? {
            let load = loads.entry(NodeId(r.get(0)?)).or_default();
            load.jobs += 1;
            if let Some(a) = r.get::<_, Option<String>>(1)? {
                let a: Allocation = serde_json::from_str(&a)
                    .map_err(|source| StoreError::Corrupt { what: "a job's allocation".into(), source })?;
                load.gpus.extend(a.gpu_indices);
            }
        }
        Ok(loads)
    }

    fn query_nodes<P: rusqlite::Params>(&self, filter: &str, p: P) -> Result<Vec<NodeRow>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT id, name, fleet, enrolled_ms, last_seen_ms, address, agent_version, inventory, revoked, cordoned FROM nodes {filter}"
        ))?;
        let nodes = stmt
            .query_map(p, |r| {
                Ok(NodeRow {
                    id: NodeId(r.get(0)?),
                    name: r.get(1)?,
                    fleet: r.get(2)?,
                    enrolled_ms: r.get(3)?,
                    last_seen_ms: r.get(4)?,
                    address: r.get(5)?,
                    agent_version: r.get(6)?,
                    inventory: opt_json_col(r, 7)?,
                    revoked: r.get(8)?,
                    cordoned: r.get(9)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(nodes)
    }

    /// Every node's id, name and cordon, without its inventory (for `/metrics`).
    pub fn node_flags(&self) -> Result<Vec<(NodeId, String, bool)>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached("SELECT id, name, cordoned FROM nodes WHERE revoked = 0")?;
        let rows = stmt.query_map([], |r| Ok((NodeId(r.get(0)?), r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// A node's name, by its id (a primary-key lookup: run views call it per job).
    pub fn node_name(&self, id: &NodeId) -> Result<Option<String>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached("SELECT name FROM nodes WHERE id = ?1")?;
        Ok(stmt.query_row([&id.0], |r| r.get(0)).optional()?)
    }

    /// The names in use that are `base` or `base-N`, for picking a free one.
    pub fn node_names_like(&self, base: &str) -> Result<Vec<String>> {
        let conn = self.read();
        // A removed node's name is free again (its host may enroll anew).
        let mut stmt =
            conn.prepare_cached("SELECT name FROM nodes WHERE revoked = 0 AND (name = ?1 OR name LIKE ?1 || '-%')")?;
        let names = stmt.query_map([base], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        Ok(names)
    }

    /// A node by name or id (not revoked).
    pub fn node_by_name(&self, name: &str) -> Result<Option<NodeRow>> {
        self.query_nodes("WHERE revoked = 0 AND (name = ?1 OR id = ?1) ORDER BY name = ?1 DESC LIMIT 1", [name])
            .map(|mut v| v.pop())
    }

    pub fn node(&self, id: &NodeId) -> Result<Option<NodeRow>> {
        self.query_nodes("WHERE id = ?1", [&id.0]).map(|mut v| v.pop())
    }

    /// Cordons or uncordons the nodes a selector names (`nodes` by name or id, or a `fleet`'s, or
    /// `all`), in one transaction. `Err(name)` inside: a named node does not exist, and nothing
    /// changed. Returns the nodes whose flag changed.
    pub fn set_cordoned_many(
        &self,
        sel: &corral_proto::api::CordonNodes,
    ) -> Result<std::result::Result<Vec<(NodeId, String)>, String>> {
        let sel = sel.clone();
        self.write(move |conn| {
            let sel = &sel;
            let tx = conn.savepoint()?;
            let mut changed = Vec::new();
            {
                let mut update = tx.prepare_cached(
                    "UPDATE nodes SET cordoned = ?1 WHERE revoked = 0 AND cordoned != ?1 \
                 AND (?2 OR fleet = ?3 OR name = ?4 OR id = ?4) RETURNING id, name",
                )?;
                let mut run = |all: bool, fleet: Option<&str>, name: Option<&str>| -> Result<()> {
                    let rows = update.query_map(params![sel.cordoned, all, fleet, name], |r| {
                        Ok((NodeId(r.get(0)?), r.get::<_, String>(1)?))
                    })?;
                    for row in rows {
                        changed.push(row?);
                    }
                    Ok(())
                };
                if sel.all || sel.fleet.is_some() {
                    run(sel.all, sel.fleet.as_deref(), None)?;
                }
                for name in &sel.nodes {
                    let exists: bool = tx.query_row(
                        "SELECT EXISTS(SELECT 1 FROM nodes WHERE revoked = 0 AND (name = ?1 OR id = ?1))",
                        [name],
                        |r| r.get(0),
                    )?;
                    if !exists {
                        return Ok(Err(name.clone()));
                    }
                    run(false, None, Some(name))?;
                }
            }
            tx.commit()?;
            Ok(Ok(changed))
        })
    }

    pub fn set_cordoned(&self, id: &NodeId, cordoned: bool) -> Result<()> {
        self.execute("UPDATE nodes SET cordoned = ?2 WHERE id = ?1", owned![id.0, cordoned])?;
        Ok(())
    }

    pub fn node_connected(&self, id: &NodeId, address: &str, agent_version: &str) -> Result<()> {
        self.execute(
            "UPDATE nodes SET address = ?2, agent_version = ?3, last_seen_ms = ?4 WHERE id = ?1",
            owned![id.0, address, agent_version, now_ms()],
        )?;
        Ok(())
    }

    /// When nodes were last heard from (wall-clock ms), in one transaction.
    pub fn nodes_seen(&self, seen: &[(NodeId, i64)]) -> Result<()> {
        let seen = seen.to_vec();
        self.write(move |conn| {
            let seen = &seen[..];
            let tx = conn.savepoint()?;
            {
                // Never backwards: a connection (`node_connected`) may have written a later time.
                let mut stmt = tx
                    .prepare_cached("UPDATE nodes SET last_seen_ms = max(ifnull(last_seen_ms, 0), ?2) WHERE id = ?1")?;
                for (id, ms) in seen {
                    stmt.execute(params![id.0, ms])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    pub fn set_inventory(&self, id: &NodeId, inv: &HostInventory) -> Result<()> {
        self.execute("UPDATE nodes SET inventory = ?2 WHERE id = ?1", owned![id.0, json(inv)])?;
        Ok(())
    }
}
