//! Parts shared by several configuration types: registry credentials, mounts, repos, files, retry,
//! utilization policy, and the provisioning knobs (fleets, backends, spot, price, idle time).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::fields::{Issue, Object, Res, at, bounded, choice, list, number, string, strings};
use super::limits::MAX_FLEET_NODES;
use super::values::{Duration, duration, secs};
use super::yaml::{Node, Value};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    pub username: String,
    /// Often an interpolation such as `${{ secrets.ngc_api_key }}`, expanded before the image is pulled.
    pub password: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryEvent {
    NoCapacity,
    Interruption,
    Error,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrySpec {
    /// The events that cause a retry; `retry: true` means all three.
    pub on_events: Vec<RetryEvent>,
    /// How long to keep retrying; `None` leaves it to the coordinator's default.
    pub duration_secs: Option<u64>,
}

/// Stop a run whose GPUs stay below `min_gpu_utilization` percent for a whole `time_window`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UtilizationPolicy {
    pub min_gpu_utilization: u8,
    pub time_window_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpotPolicy {
    Spot,
    OnDemand,
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CreationPolicy {
    Reuse,
    ReuseOrCreate,
}

/// `idle_duration`: how long an idle provisioned instance is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleDuration {
    /// Never terminated for being idle (`off`, `false`, `-1`).
    Off,
    Secs(u64),
}

/// `my-fleet`, or `team-a/my-fleet` for a fleet imported from another project.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FleetRef {
    pub project: Option<String>,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceSelector {
    Name(String),
    Hostname(String),
    FleetInstance { fleet: FleetRef, instance: u32 },
}

/// Where and how capacity may be found. Empty lists and `None` mean "no constraint".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provisioning {
    pub fleets: Vec<FleetRef>,
    pub instances: Vec<InstanceSelector>,
    /// Only `aws` and `remote` (enrolled nodes): Corral has no other backend.
    pub backends: Vec<String>,
    pub regions: Vec<String>,
    pub availability_zones: Vec<String>,
    pub instance_types: Vec<String>,
    pub reservation: Option<String>,
    pub spot_policy: Option<SpotPolicy>,
    /// Dollars per hour.
    pub max_price: Option<f64>,
    pub creation_policy: Option<CreationPolicy>,
    /// `None`: the default (dstack: 5 minutes for runs, 3 days for fleets).
    pub idle_duration: Option<IdleDuration>,
    pub tags: BTreeMap<String, String>,
}

/// The provisioning fields, as many of them as `o` allows (a fleet has no `fleets` or `instances`).
pub(crate) fn provisioning(o: &Object) -> Res<Provisioning> {
    Ok(Provisioning {
        fleets: o.map("fleets", |n, p| each(n, p, fleet_ref))?.unwrap_or_default(),
        instances: o.map("instances", |n, p| each(n, p, instance_selector))?.unwrap_or_default(),
        backends: o.map("backends", backends)?.unwrap_or_default(),
        regions: o.strings("regions")?,
        availability_zones: o.strings("availability_zones")?,
        instance_types: o.strings("instance_types")?,
        reservation: o.string("reservation")?,
        spot_policy: o.map("spot_policy", |n, p| {
            Ok(match choice(n, p, &["spot", "on-demand", "auto"])? {
                "spot" => SpotPolicy::Spot,
                "on-demand" => SpotPolicy::OnDemand,
                _ => SpotPolicy::Auto,
            })
        })?,
        max_price: o.map("max_price", |n, p| {
            let v = number(n, p)?;
            if v <= 0.0 {
                return Err(Issue::invalid(n.mark, p, "must be more than 0"));
            }
            Ok(v)
        })?,
        creation_policy: o.map("creation_policy", |n, p| {
            Ok(match choice(n, p, &["reuse", "reuse-or-create"])? {
                "reuse" => CreationPolicy::Reuse,
                _ => CreationPolicy::ReuseOrCreate,
            })
        })?,
        idle_duration: o.map("idle_duration", idle_duration)?.flatten(),
        tags: o.map("tags", tags)?.unwrap_or_default(),
    })
}

/// Applies `read` to each item of a list, with `path[i]` paths.
pub(crate) fn each<T>(node: &Node, path: &str, read: impl Fn(&Node, &str) -> Res<T>) -> Res<Vec<T>> {
    list(node, path)?.iter().enumerate().map(|(i, item)| read(item, &at(path, i))).collect()
}

const BACKENDS: [&str; 26] = [
    "amddevcloud",
    "aws",
    "azure",
    "cloudrift",
    "crusoe",
    "cudo",
    "datacrunch",
    "daytona",
    "digitalocean",
    "dstack",
    "gcp",
    "hotaisle",
    "jarvislabs",
    "kubernetes",
    "lambda",
    "lium",
    "remote",
    "nebius",
    "oci",
    "runpod",
    "seeweb",
    "tensordock",
    "vastai",
    "verda",
    "vultr",
    "slurm",
];

fn backends(node: &Node, path: &str) -> Res<Vec<String>> {
    each(node, path, |n, p| {
        let b = choice(n, p, &BACKENDS)?;
        if b != "aws" && b != "remote" {
            return Err(Issue::unsupported(
                n.mark,
                p,
                format!("Corral has no `{b}` backend: it runs on enrolled nodes (`remote`) and on AWS (`aws`)"),
            ));
        }
        Ok(b.to_owned())
    })
}

fn idle_duration(node: &Node, path: &str) -> Res<Option<IdleDuration>> {
    if matches!(node.value, Value::Int(-1)) {
        return Ok(Some(IdleDuration::Off));
    }
    Ok(match duration(node, path)? {
        Duration::Off => Some(IdleDuration::Off),
        Duration::Default => None,
        Duration::Secs(s) => Some(IdleDuration::Secs(s)),
    })
}

pub(crate) fn tags(node: &Node, path: &str) -> Res<BTreeMap<String, String>> {
    let Value::Map(entries) = &node.value else {
        return Err(Issue::invalid(
            node.mark,
            path,
            format!("expected a mapping of tag names to values, found {}", node.kind()),
        ));
    };
    entries.iter().map(|(k, v)| Ok((string(k, path)?, string(v, &super::fields::join(path, &k.text))?))).collect()
}

/// `my-fleet`, `team-a/my-fleet`, or `{project:, name:}`.
pub(crate) fn fleet_ref(node: &Node, path: &str) -> Res<FleetRef> {
    if matches!(node.value, Value::Map(_)) {
        let o = Object::new(node, path, "fleet reference", &["project", "name"])?;
        return Ok(FleetRef { project: o.string("project")?, name: o.require("name", string)? });
    }
    let s = string(node, path)?;
    Ok(match s.split_once('/') {
        Some((project, name)) => FleetRef { project: Some(project.to_owned()), name: name.to_owned() },
        None => FleetRef { project: None, name: s },
    })
}

fn instance_selector(node: &Node, path: &str) -> Res<InstanceSelector> {
    if !matches!(node.value, Value::Map(_)) {
        return Ok(InstanceSelector::Name(string(node, path)?));
    }
    let o = Object::new(node, path, "instance selector", &["name", "hostname", "fleet", "instance"])?;
    if let Some(name) = o.string("name")? {
        return Ok(InstanceSelector::Name(name));
    }
    if let Some(host) = o.string("hostname")? {
        return Ok(InstanceSelector::Hostname(host));
    }
    Ok(InstanceSelector::FleetInstance {
        fleet: o.require("fleet", fleet_ref)?,
        instance: o.require("instance", |n, p| bounded(n, p, 0, MAX_FLEET_NODES.into()))?,
    })
}

/// `retry: true`, `retry: false`, or `{on_events: [...], duration: 1h}`.
pub(crate) fn retry(node: &Node, path: &str) -> Res<Option<RetrySpec>> {
    let all = vec![RetryEvent::NoCapacity, RetryEvent::Interruption, RetryEvent::Error];
    if let Value::Bool(b) = node.value {
        return Ok(b.then_some(RetrySpec { on_events: all, duration_secs: None }));
    }
    let o = Object::new(node, path, "retry policy", &["on_events", "duration"])?;
    let on_events = match o.get("on_events") {
        None => all,
        Some(n) => {
            let events = each(n, &o.path("on_events"), |n, p| {
                Ok(match choice(n, p, &["no-capacity", "interruption", "error"])? {
                    "no-capacity" => RetryEvent::NoCapacity,
                    "interruption" => RetryEvent::Interruption,
                    _ => RetryEvent::Error,
                })
            })?;
            if events.is_empty() {
                return Err(Issue::invalid(
                    n.mark,
                    o.path("on_events"),
                    "cannot be empty; leave it out to retry on all events",
                ));
            }
            events
        }
    };
    Ok(Some(RetrySpec { on_events, duration_secs: o.map("duration", secs)? }))
}

pub(crate) fn registry_auth(node: &Node, path: &str) -> Res<RegistryAuth> {
    let o = Object::new(node, path, "registry_auth", &["username", "password"])?;
    Ok(RegistryAuth { username: o.require("username", string)?, password: o.require("password", string)? })
}

pub(crate) fn utilization_policy(node: &Node, path: &str) -> Res<UtilizationPolicy> {
    let o = Object::new(node, path, "utilization_policy", &["min_gpu_utilization", "time_window"])?;
    let time_window_secs = o.require("time_window", secs)?;
    if time_window_secs < 300 {
        return Err(Issue::invalid(o.key_mark("time_window"), o.path("time_window"), "must be at least 5m"));
    }
    Ok(UtilizationPolicy {
        min_gpu_utilization: o.require("min_gpu_utilization", |n, p| bounded(n, p, 0, 100))?,
        time_window_secs,
    })
}

/// A list of strings, for fields such as `commands`.
pub(crate) fn commands(o: &Object, key: &str) -> Res<Vec<String>> {
    Ok(o.map(key, strings)?.unwrap_or_default())
}
