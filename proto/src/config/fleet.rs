//! `type: fleet`: a named group of nodes — hosts reached over SSH (`ssh_config`), or instances a cloud
//! backend provisions (`nodes`, `resources`) — with placement and GPU blocks.

use serde::{Deserialize, Serialize};

use crate::resources::ResourcesSpec;

use super::EnvVar;
use super::common::{self, Provisioning, RetrySpec, each};
use super::fields::{Issue, Object, Res, bounded, choice, integer, string};
use super::limits::{MAX_BLOCKS, MAX_FLEET_NODES, out_of_range};
use super::resources::resources;
use super::values::{env, port, resource_name};
use super::yaml::{Node, Value};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetConfig {
    pub name: Option<String>,
    /// How many instances to provision; `None` for an SSH fleet (its hosts are the nodes).
    pub nodes: Option<FleetNodes>,
    pub placement: Placement,
    /// Split each node into this many blocks, so that several jobs share it by GPUs.
    pub blocks: Blocks,
    pub resources: Option<ResourcesSpec>,
    pub ssh_config: Option<SshConfig>,
    /// Set on the fleet's hosts (e.g. `HTTP_PROXY`).
    pub env: Vec<EnvVar>,
    pub retry: Option<RetrySpec>,
    pub provisioning: Provisioning,
}

/// `nodes: 2` is 2..2; `nodes: 0..4` keeps 0, may grow to 4; `{min, target, max}` says all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetNodes {
    pub min: u32,
    /// How many to provision when the fleet is applied.
    pub target: u32,
    /// `None`: no upper bound.
    pub max: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    #[default]
    Any,
    /// All nodes in one interconnected cluster (for multi-node tasks).
    Cluster,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blocks {
    /// As many blocks as the node has GPUs.
    Auto,
    Count(u32),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshKey {
    pub public: String,
    pub private: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshProxy {
    pub hostname: String,
    pub port: Option<u16>,
    pub user: String,
    pub identity_file: String,
    pub ssh_key: Option<SshKey>,
}

/// One host; unset fields fall back to the `ssh_config` ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshHost {
    pub hostname: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub identity_file: Option<String>,
    pub proxy_jump: Option<SshProxy>,
    pub internal_ip: Option<String>,
    pub ssh_key: Option<SshKey>,
    pub blocks: Option<Blocks>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshConfig {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<String>,
    pub ssh_key: Option<SshKey>,
    pub proxy_jump: Option<SshProxy>,
    pub hosts: Vec<SshHost>,
    /// `<ip>/<netmask>`: the network the hosts use among themselves.
    pub network: Option<String>,
}

const FLEET_FIELDS: [&str; 19] = [
    "type",
    "name",
    "placement",
    "blocks",
    "nodes",
    "reservation",
    "resources",
    "backends",
    "regions",
    "availability_zones",
    "instance_types",
    "spot_policy",
    "retry",
    "max_price",
    "idle_duration",
    "tags",
    "backend_options",
    "ssh_config",
    "env",
];

pub(crate) fn fleet(doc: &Node) -> Res<FleetConfig> {
    let o = super::object(doc, "fleet", &FLEET_FIELDS)?;
    // `backend_options` only apply to vast.ai offers, which Corral never has: accepted and ignored.
    Ok(FleetConfig {
        name: o.map("name", resource_name)?,
        nodes: o.map("nodes", nodes)?,
        placement: o
            .map("placement", |n, p| {
                Ok(if choice(n, p, &["any", "cluster"])? == "cluster" { Placement::Cluster } else { Placement::Any })
            })?
            .unwrap_or_default(),
        blocks: o.map("blocks", blocks)?.unwrap_or(Blocks::Count(1)),
        resources: o.map("resources", resources)?,
        ssh_config: o.map("ssh_config", ssh_config)?,
        env: o.map("env", env)?.unwrap_or_default(),
        retry: o.map("retry", common::retry)?.flatten(),
        provisioning: common::provisioning(&o)?,
    })
}

fn nodes(node: &Node, path: &str) -> Res<FleetNodes> {
    let count = |n: &Node, p: &str| bounded::<u32>(n, p, 0, MAX_FLEET_NODES.into());
    let spec = match &node.value {
        Value::Map(_) => {
            let o = Object::new(node, path, "nodes", &["min", "target", "max"])?;
            let min = o.map("min", count)?.unwrap_or(0);
            FleetNodes { min, target: o.map("target", count)?.unwrap_or(min), max: o.map("max", count)? }
        }
        Value::Str(s) if s.contains("..") => {
            let r = super::resources::parse_count_range(s).map_err(|m| Issue::invalid(node.mark, path, m))?;
            let min = r.min.unwrap_or(0);
            FleetNodes { min, target: min, max: r.max }
        }
        _ => {
            let n = count(node, path)?;
            FleetNodes { min: n, target: n, max: Some(n) }
        }
    };
    if spec.target < spec.min || spec.max.is_some_and(|m| m < spec.target) {
        return Err(Issue::invalid(node.mark, path, "need `min` <= `target` <= `max`"));
    }
    Ok(spec)
}

fn blocks(node: &Node, path: &str) -> Res<Blocks> {
    if matches!(&node.value, Value::Str(s) if s == "auto") {
        return Ok(Blocks::Auto);
    }
    let n = integer(node, path).map_err(|e| Issue { message: "expected a number of blocks or `auto`".into(), ..e })?;
    if n < 1 || n > i64::from(MAX_BLOCKS) {
        return Err(Issue::invalid(node.mark, path, out_of_range(1, MAX_BLOCKS.into(), n)));
    }
    Ok(Blocks::Count(n as u32))
}

fn ssh_key(node: &Node, path: &str) -> Res<SshKey> {
    let o = Object::new(node, path, "ssh_key", &["public", "private"])?;
    Ok(SshKey { public: o.require("public", string)?, private: o.string("private")? })
}

fn proxy(node: &Node, path: &str) -> Res<SshProxy> {
    let o = Object::new(node, path, "proxy_jump", &["hostname", "port", "user", "identity_file", "ssh_key"])?;
    Ok(SshProxy {
        hostname: o.require("hostname", string)?,
        port: o.map("port", port)?,
        user: o.require("user", string)?,
        identity_file: o.require("identity_file", string)?,
        ssh_key: o.map("ssh_key", ssh_key)?,
    })
}

fn host(node: &Node, path: &str) -> Res<SshHost> {
    if !matches!(node.value, Value::Map(_)) {
        let hostname = string(node, path)?;
        return Ok(SshHost {
            hostname,
            port: None,
            user: None,
            identity_file: None,
            proxy_jump: None,
            internal_ip: None,
            ssh_key: None,
            blocks: None,
        });
    }
    let known = ["hostname", "port", "user", "identity_file", "proxy_jump", "internal_ip", "ssh_key", "blocks"];
    let o = Object::new(node, path, "host", &known)?;
    Ok(SshHost {
        hostname: o.require("hostname", string)?,
        port: o.map("port", port)?,
        user: o.string("user")?,
        identity_file: o.string("identity_file")?,
        proxy_jump: o.map("proxy_jump", proxy)?,
        internal_ip: o.string("internal_ip")?,
        ssh_key: o.map("ssh_key", ssh_key)?,
        blocks: o.map("blocks", blocks)?,
    })
}

fn ssh_config(node: &Node, path: &str) -> Res<SshConfig> {
    let known = ["user", "port", "identity_file", "ssh_key", "proxy_jump", "hosts", "network"];
    let o = Object::new(node, path, "ssh_config", &known)?;
    let network = o.string("network")?;
    if let Some(net) = &network {
        let ok =
            net.split_once('/').is_some_and(|(ip, mask)| !ip.is_empty() && mask.parse::<u8>().is_ok_and(|m| m <= 128));
        if !ok {
            return Err(Issue::invalid(
                o.key_mark("network"),
                o.path("network"),
                format!("\"{net}\" is not `<ip>/<netmask>`, e.g. 10.0.0.0/24"),
            ));
        }
    }
    Ok(SshConfig {
        user: o.string("user")?,
        port: o.map("port", port)?,
        identity_file: o.string("identity_file")?,
        ssh_key: o.map("ssh_key", ssh_key)?,
        proxy_jump: o.map("proxy_jump", proxy)?,
        hosts: o.require("hosts", |n, p| each(n, p, host))?,
        network,
    })
}
