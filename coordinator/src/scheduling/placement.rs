//! The placement index: every node's capacity and what is reserved on it, and the choice of where a
//! job goes. Pure and synchronous — no store, no clock — so property tests and benchmarks drive it
//! directly; [`crate::scheduling::scheduler`] keeps it in step with the store.
//!
//! Bin-packing: among the nodes where a job fits, the one left with the fewest free GPUs wins, so
//! that whole nodes stay free for large jobs. Nodes sit in buckets by
//! their number of free GPUs, so a job that needs `g` GPUs looks at the buckets `g, g+1, ...` and
//! the first node that fits is the tightest fit: placement costs a few bucket probes, not a scan
//! of the cluster.

use std::collections::{BTreeSet, HashMap};

use corral_proto::config::InstanceSelector;
use corral_proto::ids::NodeId;
use corral_proto::inventory::HostInventory;
use corral_proto::resources::{Allocation, Memory, Range, ResourcesSpec, TPU_INDEX_BASE, fit};

mod select;
pub use select::NodeProfile;

pub struct NodeSlot {
    pub id: NodeId,
    pub name: String,
    pub fleet: Option<String>,
    /// The node's fleet has `placement: cluster`: its nodes reach each other (multi-node jobs).
    pub cluster: bool,
    /// The node is split into this many equal blocks (its fleet's `blocks`); jobs get whole blocks.
    pub blocks: u32,
    pub inventory: HostInventory,
    pub connected: bool,
    pub cordoned: bool,
    /// What its fleet says of it beyond its hardware ([`NodeProfile`]).
    pub profile: NodeProfile,
    used_cpus: u32,
    used_memory: Memory,
    used_gpus: Vec<u32>,
}

impl NodeSlot {
    fn schedulable(&self) -> bool {
        self.connected && !self.cordoned && self.profile.refused.is_none()
    }

    /// Free NVIDIA GPUs (TPU chips, reserved from [`TPU_INDEX_BASE`] on, are not counted).
    fn free_gpus(&self) -> usize {
        let used = self.used_gpus.iter().filter(|&&g| g < TPU_INDEX_BASE).count();
        self.inventory.gpus.len().saturating_sub(used)
    }

    /// Whether the node is open to the request's project: it is in no project's fleet, or in one
    /// of that project's.
    fn open_to(&self, req: &Request) -> bool {
        self.profile.projects.is_empty() || req.project.as_ref().is_none_or(|p| self.profile.projects.contains(p))
    }

    /// Whether `req.instances` (if any) names this node.
    fn named_by(&self, req: &Request) -> bool {
        req.instances.is_empty()
            || req.instances.iter().any(|s| select::matches(s, &self.name, self.fleet.as_deref(), &self.profile))
    }

    pub fn used_gpus(&self) -> &[u32] {
        &self.used_gpus
    }

    /// What `spec` amounts to on this node: with blocks, the request grows to whole blocks (a
    /// block is an equal share of the node's GPUs, CPUs and memory), as dstack's `blocks` does.
    fn in_blocks(&self, spec: &ResourcesSpec) -> Option<ResourcesSpec> {
        if self.blocks <= 1 {
            return None;
        }
        let b = u64::from(self.blocks);
        let inv = &self.inventory;
        let gpb = inv.gpus.len() as u64 / b;
        let cpb = (u64::from(inv.cpu_cores) / b).max(1);
        let mpb = inv.memory.0 / b;
        // TPU chips are not divided into blocks: they are taken as the spec names them.
        let want_gpus = u64::from(spec.gpu.as_ref().filter(|g| !g.is_tpu()).map_or(0, |g| g.min_count()));
        let want_cpus = u64::from(spec.cpu.count.min.unwrap_or(1));
        let want_mem = spec.memory.min.map_or(0, |m| m.0);
        let k = [
            want_gpus.div_ceil(gpb.max(1)),
            want_cpus.div_ceil(cpb),
            if mpb > 0 { want_mem.div_ceil(mpb) } else { 1 },
            1,
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let mut out = spec.clone();
        out.cpu.count = Range::exactly((k * cpb) as u32);
        out.memory = Range { min: Some(Memory(k * mpb)), max: None };
        if let Some(g) = out.gpu.as_mut().filter(|_| want_gpus > 0) {
            g.count = Range::exactly((k * gpb) as u32);
        }
        Some(out)
    }
}

/// What a job asks of the cluster. Requests alike hash alike: the scheduler keys what did not
/// fit by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    pub resources: ResourcesSpec,
    /// How many nodes, all or none (a gang).
    pub nodes: u32,
    /// Only nodes of these fleets; empty: any fleet.
    pub fleets: Vec<String>,
    /// Only the nodes these name (a run's `instances`); empty: any node.
    pub instances: Vec<InstanceSelector>,
    /// Per rank, the only nodes it may go to (where its named volumes are); a rank with `None`,
    /// or past the end, may go anywhere.
    pub pinned: Vec<Option<Vec<NodeId>>>,
    /// Per rank, what it needs, when the ranks differ (a task's node `groups`); empty: every rank
    /// needs `resources`.
    pub ranks: Vec<ResourcesSpec>,
    /// The run's project: nodes of another project's fleets are not its. `None`: any node.
    pub project: Option<String>,
}

impl Request {
    /// The NVIDIA GPUs one member needs (a TPU request needs chips, not GPUs).
    fn min_gpus(&self) -> usize {
        self.resources.gpu.as_ref().filter(|g| !g.is_tpu()).map_or(0, |g| g.min_count() as usize)
    }
}

#[derive(Default)]
pub struct Index {
    slots: Vec<NodeSlot>,
    pos: HashMap<NodeId, usize>,
    /// `buckets[k]`: schedulable nodes with exactly `k` free GPUs, by slot number.
    buckets: Vec<BTreeSet<usize>>,
    /// Counts the changes that can make room (a node added, connected, uncordoned or changed, a
    /// reservation released); reserving does not count. A request that did not fit still does not
    /// while it is unchanged.
    generation: u64,
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn node(&self, id: &NodeId) -> Option<&NodeSlot> {
        self.pos.get(id).map(|&i| &self.slots[i])
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeSlot> {
        self.slots.iter()
    }

    fn unbucket(&mut self, i: usize) {
        let k = self.slots[i].free_gpus();
        if let Some(b) = self.buckets.get_mut(k) {
            b.remove(&i);
        }
    }

    fn rebucket(&mut self, i: usize) {
        if !self.slots[i].schedulable() {
            return;
        }
        let k = self.slots[i].free_gpus();
        if self.buckets.len() <= k {
            self.buckets.resize_with(k + 1, BTreeSet::new);
        }
        self.buckets[k].insert(i);
    }

    /// Adds a node or refreshes what is known of it (reservations are kept).
    pub fn upsert(
        &mut self,
        id: &NodeId,
        name: &str,
        fleet: Option<String>,
        cluster: bool,
        blocks: u32,
        inventory: HostInventory,
    ) {
        self.generation += 1;
        match self.pos.get(id) {
            Some(&i) => {
                self.unbucket(i);
                let s = &mut self.slots[i];
                s.name = name.to_owned();
                s.fleet = fleet;
                s.cluster = cluster;
                s.blocks = blocks;
                s.inventory = inventory;
                self.rebucket(i);
            }
            None => {
                let i = self.slots.len();
                self.slots.push(NodeSlot {
                    id: id.clone(),
                    name: name.to_owned(),
                    fleet,
                    cluster,
                    blocks,
                    inventory,
                    connected: false,
                    cordoned: false,
                    profile: NodeProfile::default(),
                    used_cpus: 0,
                    used_memory: Memory(0),
                    used_gpus: Vec::new(),
                });
                self.pos.insert(id.clone(), i);
            }
        }
    }

    fn update(&mut self, id: &NodeId, f: impl FnOnce(&mut NodeSlot)) {
        if let Some(&i) = self.pos.get(id) {
            self.unbucket(i);
            f(&mut self.slots[i]);
            self.rebucket(i);
        }
    }

    pub fn set_connected(&mut self, id: &NodeId, connected: bool) {
        self.generation += 1;
        self.update(id, |s| s.connected = connected);
    }

    pub fn set_cordoned(&mut self, id: &NodeId, cordoned: bool) {
        self.generation += 1;
        self.update(id, |s| s.cordoned = cordoned);
    }

    /// Sets what the node's fleet says of it (a refusal takes it out of placement).
    pub fn set_profile(&mut self, id: &NodeId, profile: NodeProfile) {
        if self.node(id).is_some_and(|s| s.profile == profile) {
            return;
        }
        self.generation += 1;
        self.update(id, |s| s.profile = profile);
    }

    /// Records an allocation made earlier (on start, from the store).
    pub fn reserve(&mut self, id: &NodeId, a: &Allocation) {
        self.update(id, |s| {
            s.used_cpus += a.cpus;
            s.used_memory = Memory(s.used_memory.0 + a.memory.0);
            for g in &a.gpu_indices {
                if !s.used_gpus.contains(g) {
                    s.used_gpus.push(*g);
                }
            }
        });
    }

    pub fn release(&mut self, id: &NodeId, a: &Allocation) {
        self.generation += 1;
        self.update(id, |s| {
            s.used_cpus = s.used_cpus.saturating_sub(a.cpus);
            s.used_memory = Memory(s.used_memory.0.saturating_sub(a.memory.0));
            s.used_gpus.retain(|g| !a.gpu_indices.contains(g));
        });
    }

    /// Forgets every reservation (before re-reading them all from the store).
    pub fn clear_reservations(&mut self) {
        self.generation += 1;
        for i in 0..self.slots.len() {
            self.unbucket(i);
            let s = &mut self.slots[i];
            s.used_cpus = 0;
            s.used_memory = Memory(0);
            s.used_gpus.clear();
            self.rebucket(i);
        }
    }

    fn eligible(&self, i: usize, req: &Request) -> bool {
        let s = &self.slots[i];
        s.schedulable()
            && (req.fleets.is_empty() || s.fleet.as_ref().is_some_and(|f| req.fleets.contains(f)))
            && s.open_to(req)
            && s.named_by(req)
    }

    /// The tightest node (not in `skip`) where one member of `req` fits, and what it would get:
    /// the first fit in the lowest bucket that has one.
    fn best_fit(
        &self,
        req: &Request,
        skip: &[usize],
        fleet: Option<&str>,
        only: Option<&[NodeId]>,
    ) -> Option<(usize, Allocation)> {
        for bucket in self.buckets.iter().skip(req.min_gpus()) {
            for &i in bucket {
                if skip.contains(&i) || !self.eligible(i, req) {
                    continue;
                }
                let s = &self.slots[i];
                if only.is_some_and(|o| !o.contains(&s.id)) {
                    continue;
                }
                if fleet.is_some_and(|f| s.fleet.as_deref() != Some(f)) {
                    continue;
                }
                let blocked = s.in_blocks(&req.resources);
                let spec = blocked.as_ref().unwrap_or(&req.resources);
                if let Ok(a) = fit(spec, &s.inventory, s.used_cpus, s.used_memory, &s.used_gpus) {
                    return Some((i, a));
                }
            }
        }
        None
    }

    /// Places a request: reserves and returns one allocation per node, or says why it waits.
    pub fn place(&mut self, req: &Request) -> Result<Vec<(NodeId, Allocation)>, String> {
        let picked = if req.nodes <= 1 {
            self.best_fit(req, &[], None, pinned(req, 0)).map(|p| vec![p])
        } else {
            self.place_gang(req)
        };
        let Some(picked) = picked else {
            return Err(self.explain(req));
        };
        let mut out = Vec::with_capacity(picked.len());
        for (i, a) in picked {
            let id = self.slots[i].id.clone();
            self.reserve(&id, &a);
            out.push((id, a));
        }
        Ok(out)
    }

    /// `nodes: N`: N distinct nodes of one `placement: cluster` fleet, or nothing.
    fn place_gang(&self, req: &Request) -> Option<Vec<(usize, Allocation)>> {
        let mut fleets: Vec<&str> = self
            .slots
            .iter()
            .filter(|s| s.cluster && s.schedulable())
            .filter_map(|s| s.fleet.as_deref())
            .filter(|f| req.fleets.is_empty() || req.fleets.iter().any(|r| r == f))
            .collect();
        fleets.sort_unstable();
        fleets.dedup();
        'fleets: for fleet in fleets {
            // Ranks pinned to nodes (by their volumes) choose first, so that another rank does not
            // take the node one of them needs; the answer is in rank order.
            // Ranks that differ (node groups): those that need more GPUs choose before those
            // that need fewer, which take the nodes with the fewest free GPUs first anyway.
            let mut ranks: Vec<usize> = (0..req.nodes as usize).collect();
            let gpus = |r: usize| {
                req.ranks.get(r).and_then(|spec| spec.gpu.as_ref()).filter(|g| !g.is_tpu()).map_or(0, |g| g.min_count())
            };
            ranks.sort_by_key(|&r| (pinned(req, r).is_none(), std::cmp::Reverse(gpus(r))));
            let mut chosen: Vec<Option<(usize, Allocation)>> = vec![None; ranks.len()];
            for rank in ranks {
                let skip: Vec<usize> = chosen.iter().flatten().map(|c| c.0).collect();
                let own = rank_request(req, rank);
                match self.best_fit(own.as_ref().unwrap_or(req), &skip, Some(fleet), pinned(req, rank)) {
                    Some(p) => chosen[rank] = Some(p),
                    None => continue 'fleets,
                }
            }
            return chosen.into_iter().collect();
        }
        None
    }

    /// Why nothing fits, in words a user can act on, counting nodes rather than listing them.
    pub fn explain(&self, req: &Request) -> String {
        // Ranks that differ: the one the fewest nodes could take speaks for the gang.
        let hardest = (0..req.ranks.len()).filter_map(|r| rank_request(req, r).map(|q| (r, q))).min_by_key(|(_, q)| {
            self.slots
                .iter()
                .filter(|s| s.schedulable() && fit(&q.resources, &s.inventory, 0, Memory(0), &[]).is_ok())
                .count()
        });
        if let Some((rank, q)) = hardest {
            return format!("{} (rank {rank} of the gang)", self.explain(&Request { nodes: req.nodes, ..q }));
        }
        let candidates: Vec<&NodeSlot> = self
            .slots
            .iter()
            .filter(|s| req.fleets.is_empty() || s.fleet.as_ref().is_some_and(|f| req.fleets.contains(f)))
            .filter(|s| s.named_by(req))
            .collect();
        let others = candidates.iter().filter(|s| !s.open_to(req)).count();
        let candidates: Vec<&NodeSlot> = candidates.into_iter().filter(|s| s.open_to(req)).collect();
        let mut scope =
            if req.fleets.is_empty() { String::new() } else { format!(" in fleet(s) {}", req.fleets.join(", ")) };
        if !req.instances.is_empty() {
            scope.push_str(&format!(" named in `instances` ({})", select::describe(&req.instances)));
        }
        if candidates.is_empty() {
            if others > 0 {
                let project = req.project.as_deref().unwrap_or_default();
                return format!(
                    "no nodes{scope} for project {project}: {others} node(s) are in other projects' fleets (see `corral node list`)"
                );
            }
            return format!("no nodes{scope} (see `corral node list`)");
        }
        let usable: Vec<&&NodeSlot> = candidates.iter().filter(|s| s.schedulable()).collect();
        if usable.is_empty() {
            let offline = candidates.iter().filter(|s| !s.connected).count();
            let refused: Vec<&&NodeSlot> =
                candidates.iter().filter(|s| s.connected && s.profile.refused.is_some()).collect();
            let cordoned = candidates.len() - offline - refused.len();
            let mut why = format!("no node{scope} is ready: {offline} offline, {cordoned} cordoned");
            if let Some(first) = refused.first() {
                let reason = first.profile.refused.as_deref().unwrap_or_default();
                why.push_str(&format!(", {} refused by its fleet (e.g. {}: {reason})", refused.len(), first.name));
            }
            return why;
        }
        if req.nodes > 1 {
            let cluster = usable.iter().filter(|s| s.cluster).count();
            if cluster < req.nodes as usize {
                return format!(
                    "nodes: {} needs that many ready nodes of one fleet with `placement: cluster`; {cluster} available",
                    req.nodes
                );
            }
        }
        // Would it fit on an empty node? Then the nodes are busy, not unsuitable.
        let empty_fit = |s: &NodeSlot| fit(&req.resources, &s.inventory, 0, Memory(0), &[]).is_ok();
        let could = usable.iter().filter(|s| empty_fit(s)).count();
        let what = match &req.resources.gpu {
            Some(g) if g.is_tpu() => {
                let names = if g.names.is_empty() { format!("{} chip(s)", g.min_count()) } else { g.names.join("/") };
                format!("TPU {names}")
            }
            Some(g) if g.min_count() > 0 => {
                let mut kind: Vec<String> = Vec::new();
                if !g.names.is_empty() {
                    kind.push(g.names.join("/"));
                } else if let Some(v) = g.vendor {
                    kind.push(format!("{v:?}").to_lowercase());
                }
                if let Some(m) = &g.memory {
                    kind.push(m.to_string());
                }
                let kind = if kind.is_empty() { String::new() } else { format!(" {}", kind.join(" ")) };
                format!("{}{kind} GPU(s)", g.min_count())
            }
            _ => format!("cpu {} and memory {}", req.resources.cpu.count, req.resources.memory),
        };
        if could == 0 {
            // Say why for one node, as an example of the misfit.
            let example = usable
                .iter()
                .find_map(|s| {
                    fit(&req.resources, &s.inventory, 0, Memory(0), &[]).err().map(|e| format!("{}: {e}", s.name))
                })
                .unwrap_or_default();
            format!("no node{scope} has {what} (e.g. {example})")
        } else {
            format!("no node{scope} with {what} free; {could} node(s) have them busy")
        }
    }
}

/// Rank `rank`'s own request, when the ranks of `req` differ: one node with that rank's resources,
/// of the same fleets and instances.
fn rank_request(req: &Request, rank: usize) -> Option<Request> {
    let resources = req.ranks.get(rank)?.clone();
    Some(Request {
        resources,
        nodes: 1,
        fleets: req.fleets.clone(),
        instances: req.instances.clone(),
        pinned: Vec::new(),
        ranks: Vec::new(),
        project: req.project.clone(),
    })
}

/// The nodes rank `rank` of `req` may go to, when it is pinned.
fn pinned(req: &Request, rank: usize) -> Option<&[NodeId]> {
    req.pinned.get(rank).and_then(|p| p.as_deref())
}

#[cfg(test)]
mod tests;
