//! What a fleet's configuration says about each of its nodes, and gives each job on them:
//!
//! - `resources` (a fleet without backends): a host that does not fit is refused — kept enrolled
//!   and connected, given no jobs, and shown refused with the reason (`corral node list`, the
//!   install script, `corral apply` of an `ssh_config` fleet); applying a fleet that fits it
//!   takes it in again;
//! - `blocks` (the fleet's, or a host's in `ssh_config.hosts`): how many equal shares the host is
//!   split into, by dstack's rule (`auto`: one per GPU, or per CPU without GPUs; a count that does
//!   not divide the host's CPUs and GPUs refuses the host, as dstack's "cannot split into blocks");
//! - `ssh_config.network` and a host's `internal_ip`: the address its multi-node jobs use
//!   (`DSTACK_MASTER_NODE_IP`, `DSTACK_NODES_IPS`), from the interface addresses its agent reports
//!   ([`Interfaces`]);
//! - the node's dstack instance number and host names, which a run's `instances` match;
//! - `env`, and for TPU jobs their chips' devices, privileged and the host's network
//!   ([`decorate`]).
//!
//! The node's `ssh_config` host is the one its name came from: `corral apply` enrolls each host
//! under its `hostname`, which the coordinator makes a node name (`10.0.0.1` → `10-0-0-1`, with
//! `-2`... when taken).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use corral_proto::config::{Blocks, FleetConfig, Placement, SshHost};
use corral_proto::ids::NodeId;
use corral_proto::inventory::HostInventory;
use corral_proto::job::JobSpec;
use corral_proto::resources::{ResourcesSpec, describe_gpu, tpu};

use crate::State;
use crate::scheduling::placement::{Index, NodeProfile};
use crate::store::NodeRow;

/// The interface addresses (`ip/prefix`) each connected agent reported, in memory: an agent
/// reports them on every connection, before its inventory.
#[derive(Default)]
pub struct Interfaces(Mutex<HashMap<NodeId, Vec<String>>>);

impl Interfaces {
    pub fn set(&self, node: &NodeId, addresses: Vec<String>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(node.clone(), addresses);
    }

    pub fn get(&self, node: &NodeId) -> Option<Vec<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(node).cloned()
    }
}

/// A node as its fleet shapes it, for the scheduler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Its fleet has `placement: cluster`.
    pub cluster: bool,
    pub blocks: u32,
    pub profile: NodeProfile,
    /// The address its multi-node jobs use, when the fleet chooses one (`network`, `internal_ip`).
    pub address: Option<String>,
}

/// The node's shape from its fleet's stored configuration.
pub fn shape(state: &State, node: &NodeRow, inv: &HostInventory) -> Shape {
    let cfg = node.fleet.as_deref().and_then(|f| state.store.fleet_config(f).ok().flatten());
    let interfaces = state.interfaces.get(&node.id);
    let mut shape = shape_of(cfg.as_ref(), &node.name, node.address.as_deref(), inv, interfaces.as_deref());
    if let Some(fleet) = &node.fleet {
        match state.store.fleet_projects(fleet) {
            Ok(projects) => shape.profile.projects = projects,
            Err(e) => {
                // Not knowing whose it is, the node takes no jobs rather than anyone's.
                shape.profile.refused = Some(format!("cannot read which project fleet {fleet} is in: {e}"));
            }
        }
    }
    shape
}

/// Why the node's fleet refuses it, if it does (for the API: the node list, the install script).
pub fn refusal(state: &State, node: &NodeRow) -> Option<String> {
    Refusals::new(state).of(node)
}

/// [`refusal`] for many nodes, reading each fleet's configuration once.
pub struct Refusals<'a> {
    state: &'a State,
    fleets: HashMap<String, Option<FleetConfig>>,
}

impl<'a> Refusals<'a> {
    pub fn new(state: &'a State) -> Self {
        Self { state, fleets: HashMap::new() }
    }

    pub fn of(&mut self, node: &NodeRow) -> Option<String> {
        let inv = node.inventory.as_ref()?;
        let state = self.state;
        let cfg = node.fleet.as_ref().and_then(|f| {
            self.fleets.entry(f.clone()).or_insert_with(|| state.store.fleet_config(f).ok().flatten()).as_ref()
        });
        let interfaces = state.interfaces.get(&node.id);
        shape_of(cfg, &node.name, node.address.as_deref(), inv, interfaces.as_deref()).profile.refused
    }
}

/// The node name `corral apply` gets for an `ssh_config` host (as the coordinator sanitizes it).
fn node_name(hostname: &str) -> String {
    crate::nodes::agents::sanitize_name(hostname)
}

/// The `ssh_config` host a node was enrolled for, and its index: the host whose name is the
/// node's, or the node's without a `-N` the coordinator added to make it unique.
fn ssh_host<'a>(cfg: &'a FleetConfig, name: &str) -> Option<(usize, &'a SshHost)> {
    let hosts = &cfg.ssh_config.as_ref()?.hosts;
    hosts
        .iter()
        .position(|h| node_name(&h.hostname) == name)
        .or_else(|| {
            hosts.iter().position(|h| {
                name.strip_prefix(&node_name(&h.hostname))
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .map(|i| (i, &hosts[i]))
}

pub fn shape_of(
    cfg: Option<&FleetConfig>,
    name: &str,
    remote: Option<&str>,
    inv: &HostInventory,
    interfaces: Option<&[String]>,
) -> Shape {
    let mut hostnames: Vec<String> =
        [Some(inv.hostname.as_str()), remote].into_iter().flatten().map(str::to_owned).collect();
    let Some(cfg) = cfg else {
        let profile = NodeProfile { hostnames: lower(hostnames), ..NodeProfile::default() };
        return Shape { cluster: false, blocks: 1, profile, address: None };
    };
    let host = ssh_host(cfg, name);
    let mut refused = None;
    if cfg.provisioning.backends.is_empty()
        && let Some(want) = &cfg.resources
    {
        refused = misfit(want, inv);
    }
    let blocks = match split(host.and_then(|(_, h)| h.blocks).unwrap_or(cfg.blocks), inv) {
        Ok(n) => n,
        Err(why) => {
            refused.get_or_insert(why);
            1
        }
    };
    let address = match address(cfg, host, interfaces) {
        Ok(a) => a,
        Err(why) => {
            refused.get_or_insert(why);
            None
        }
    };
    if let Some((_, h)) = host {
        hostnames.push(h.hostname.clone());
        hostnames.extend(h.internal_ip.clone());
    }
    hostnames.extend(address.clone());
    let profile = NodeProfile {
        instance: host.map(|(i, _)| i as u32),
        hostnames: lower(hostnames),
        refused,
        env: cfg.env.iter().filter_map(|e| Some((e.name.clone(), e.value.clone()?))).collect(),
        projects: Vec::new(),
    };
    Shape { cluster: cfg.placement == Placement::Cluster, blocks, profile, address }
}

fn lower(mut names: Vec<String>) -> Vec<String> {
    for n in &mut names {
        n.make_ascii_lowercase();
    }
    names.sort();
    names.dedup();
    names.retain(|n| !n.is_empty());
    names
}

/// How many blocks the host is split into, as dstack decides: `auto` is one per GPU (at most one
/// per CPU), or one per CPU on a host without GPUs; the count must divide both evenly.
pub fn split(blocks: Blocks, inv: &HostInventory) -> Result<u32, String> {
    let (cpus, gpus) = (inv.cpu_cores, inv.gpus.len() as u32);
    let n = match blocks {
        Blocks::Count(1) => return Ok(1),
        Blocks::Auto if gpus == 0 => cpus,
        Blocks::Auto => cpus.min(gpus),
        Blocks::Count(n) => n,
    };
    if n == 0 || cpus % n != 0 || gpus % n != 0 {
        return Err(format!(
            "blocks: the host cannot be split into {n} equal blocks: it has {cpus} CPUs and {gpus} GPUs (each must divide evenly)"
        ));
    }
    Ok(n)
}

/// Why `inv` does not have what the fleet's `resources` ask, resource by resource; `None` when it
/// has. A host needs at least each minimum (a range's upper bound chooses cloud instances and
/// does not refuse a bigger host).
pub fn misfit(want: &ResourcesSpec, inv: &HostInventory) -> Option<String> {
    if let Some(arch) = want.cpu.arch
        && inv.cpu_arch() != Some(arch)
    {
        return Some(format!("cpu: the fleet wants {arch:?} CPUs, the host's are {}", inv.arch).to_lowercase());
    }
    if let Some(min) = want.cpu.count.min
        && inv.cpu_cores < min
    {
        return Some(format!("cpu: the fleet wants {}, the host has {} CPUs", want.cpu.count, inv.cpu_cores));
    }
    if let Some(min) = want.memory.min
        && inv.memory < min
    {
        return Some(format!("memory: the fleet wants {}, the host has {}", want.memory, inv.memory));
    }
    if let Some(disk) = &want.disk
        && let Some(min) = disk.min
        && inv.disk < min
    {
        return Some(format!("disk: the fleet wants {disk}, the host has {}", inv.disk));
    }
    let gpu = want.gpu.as_ref()?;
    if gpu.is_tpu() {
        let what = if gpu.names.is_empty() { format!("{} TPU chip(s)", gpu.min_count()) } else { gpu.names.join(",") };
        return tpu::fit_tpus(gpu, inv, &[]).err().map(|e| format!("gpu: the fleet wants {what}; the host {e}"));
    }
    let wanted = gpu.min_count();
    if wanted == 0 {
        return None;
    }
    let matching = inv.gpus.iter().filter(|g| gpu.accepts(g)).count() as u32;
    if matching >= wanted {
        return None;
    }
    let found = if inv.gpus.is_empty() {
        "no GPUs".to_owned()
    } else {
        let mut names: Vec<String> = inv.gpus.iter().map(|g| format!("{} {}", g.name, g.memory)).collect();
        names.dedup();
        format!("{matching} matching GPU(s) of {} ({})", inv.gpus.len(), names.join(", "))
    };
    Some(format!("gpu: the fleet wants {}, the host has {found}", describe_gpu(gpu)))
}

/// The address multi-node jobs use on this node: the host's `internal_ip`, else its interface
/// address in `ssh_config.network`, else `None` (the address the coordinator sees). As dstack:
/// the network must be a private IPv4 one, and an `internal_ip` must be one of the host's.
fn address(
    cfg: &FleetConfig,
    host: Option<(usize, &SshHost)>,
    interfaces: Option<&[String]>,
) -> Result<Option<String>, String> {
    let network = cfg.ssh_config.as_ref().and_then(|s| s.network.as_deref());
    let internal = host.and_then(|(i, h)| h.internal_ip.as_deref().map(|ip| (i, ip)));
    if network.is_none() && internal.is_none() {
        return Ok(None);
    }
    let Some(interfaces) = interfaces else {
        return Err(
            "ssh_config.network: the node's agent does not report its interface addresses (protocol 1): upgrade it"
                .to_owned(),
        );
    };
    let ips: Vec<Ipv4Addr> = interfaces.iter().filter_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok()).collect();
    let listed = || ips.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(", ");
    if let Some((i, ip)) = internal {
        if !ips.iter().any(|a| a.to_string() == ip) {
            return Err(format!(
                "ssh_config.hosts[{i}].internal_ip: {ip} is not an address of this host (it has {})",
                listed()
            ));
        }
        return Ok(Some(ip.to_owned()));
    }
    let Some(net) = network else { return Ok(None) };
    let (base, prefix) =
        parse_network(net).ok_or_else(|| format!("ssh_config.network: {net:?} is not an IPv4 network"))?;
    let private = base.is_private() || base.is_loopback() || base.is_link_local() || base.octets()[0] == 100;
    if !private {
        return Err(format!("ssh_config.network: {net} is not a private network"));
    }
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    ips.iter()
        .find(|ip| u32::from(**ip) & mask == u32::from(base) & mask)
        .map(|ip| Some(ip.to_string()))
        .ok_or_else(|| format!("ssh_config.network: none of this host's addresses ({}) is in {net}", listed()))
}

fn parse_network(net: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, prefix) = net.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((ip.parse().ok()?, prefix))
}

/// What a placed job gets from its node beyond the run's configuration: the fleet's `env` (a
/// variable the job already has wins), and for TPU chips their device nodes, the host's network,
/// a privileged container (as dstack runs TPU jobs; not with `privileged: false`, the
/// coordinator's `--no-tpu-privileged`) and, when it holds only some of the host's chips,
/// libtpu's variables naming them.
pub fn decorate(gang: &mut [(NodeId, JobSpec)], index: &Index, privileged: bool) {
    for (node, spec) in gang.iter_mut() {
        let Some(slot) = index.node(node) else { continue };
        for (name, value) in &slot.profile.env {
            if !spec.env.iter().any(|(n, _)| n == name) {
                spec.env.push((name.clone(), value.clone()));
            }
        }
        let chips = spec.allocation.tpu_chips();
        if chips.is_empty() {
            continue;
        }
        let devices: Vec<&str> =
            chips.iter().filter_map(|&i| slot.inventory.tpus.get(i)).map(|t| t.device.as_str()).collect();
        for d in &devices {
            push_device(&mut spec.container.devices, d);
            // A VFIO group is opened through the VFIO container node beside it.
            if let Some(dir) = d.rsplit_once('/').map(|(dir, _)| dir).filter(|dir| dir.ends_with("/vfio")) {
                push_device(&mut spec.container.devices, &format!("{dir}/vfio"));
            }
        }
        spec.container.privileged |= privileged;
        spec.host_network = true;
        if chips.len() < slot.inventory.tpus.len() {
            let visible = chips.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
            let mut vars = vec![("TPU_VISIBLE_CHIPS", visible), ("TPU_PROCESS_BOUNDS", "1,1,1".to_owned())];
            let bounds = match chips.len() {
                1 => Some("1,1,1"),
                2 => Some("1,2,1"),
                4 => Some("2,2,1"),
                _ => None,
            };
            vars.extend(bounds.map(|b| ("TPU_CHIPS_PER_PROCESS_BOUNDS", b.to_owned())));
            for (name, value) in vars {
                if !spec.env.iter().any(|(n, _)| n == name) {
                    spec.env.push((name.to_owned(), value));
                }
            }
        }
    }
}

/// A device for Docker (`HOST[:CONTAINER]`): a chip found under another root than `/dev` (an
/// agent's `--device-root`) appears in the container at its `/dev/...` path.
fn push_device(devices: &mut Vec<String>, host: &str) {
    let inside = host.rfind("/dev/").map_or(host, |i| &host[i..]);
    let entry = if inside == host { host.to_owned() } else { format!("{host}:{inside}") };
    if !devices.contains(&entry) {
        devices.push(entry);
    }
}

#[cfg(test)]
mod tests;
