//! Heterogeneous runs: a task's node `groups` and a service's replica groups (`replicas:` as a
//! list, or `groups:`), and the `${{ groups[i].nodes[j].IP_ADDRESS }}` references their commands
//! may hold.
//!
//! A task with groups is one gang: its ranks come from the groups in order (group 0's nodes
//! first), each rank with its own group's commands, resources and ports. A service with groups is
//! a set of replica groups, each with its own count (or autoscaled range), commands, resources and
//! container; replica numbers are given out in one block per group ([`ServiceConfig::group_of`]).

use serde::{Deserialize, Serialize};

use crate::resources::{Range, ResourcesSpec};

use super::common::{self, SpotPolicy, each};
use super::fields::{Issue, Object, Res, at, bounded, choice, string};
use super::limits::{MAX_NODES, MAX_REPLICAS};
use super::resources::resources;
use super::service::{ScalingSpec, replicas, scaling};
use super::values::{ports, python_version};
use super::yaml::{Mark, Node, Value};
use super::{PortMapping, ServiceConfig, TaskConfig};

/// One group of a multi-node task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeGroup {
    /// `^[a-z0-9][a-z0-9-]{0,39}$`; `"0"`, `"1"`, ... by position when the file gives none.
    pub name: String,
    pub nodes: u32,
    pub commands: Vec<String>,
    /// Not inherited from the task's `resources` (dstack's rule).
    pub resources: ResourcesSpec,
    pub ports: Vec<PortMapping>,
}

/// One group of a service's replicas. `None` fields are the service's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaGroup {
    pub name: String,
    /// A count, or a range that comes with `scaling`.
    pub replicas: Range<u32>,
    pub scaling: Option<ScalingSpec>,
    /// Not inherited from the service's `resources`.
    pub resources: ResourcesSpec,
    pub commands: Vec<String>,
    pub image: Option<String>,
    pub python: Option<String>,
    pub nvcc: Option<bool>,
    /// Docker inside the container (dstack's docker-in-docker image; privileged).
    pub docker: Option<bool>,
    pub privileged: Option<bool>,
    pub spot_policy: Option<SpotPolicy>,
    pub reservation: Option<String>,
    /// The group runs the service's router: requests go to it, and it sends them on to the other
    /// groups' replicas.
    pub router: Option<RouterType>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterType {
    /// SGLang's router (dstack 0.22 calls it `smg`, the Shepherd Model Gateway): dstack registers
    /// the worker replicas with it.
    Sglang,
    /// NVIDIA Dynamo's frontend: the workers find it themselves (`DSTACK_ROUTER_INTERNAL_IP`).
    Dynamo,
}

/// The part of a rank's job that comes from its group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankGroup<'a> {
    pub index: usize,
    pub name: &'a str,
    /// The rank's place within its group.
    pub job_index: u32,
    pub group: Option<&'a NodeGroup>,
}

impl TaskConfig {
    /// Which group rank `rank` of the gang belongs to (group 0's nodes are the first ranks). A task
    /// without `groups` is one group named `"0"`, as in dstack.
    pub fn rank_group(&self, rank: u32) -> RankGroup<'_> {
        let mut first = 0;
        for (index, g) in self.groups.iter().enumerate() {
            if rank < first + g.nodes {
                return RankGroup { index, name: &g.name, job_index: rank - first, group: Some(g) };
            }
            first += g.nodes;
        }
        RankGroup { index: 0, name: "0", job_index: rank, group: None }
    }

    /// What rank `rank` runs: the task with its group's commands, resources and ports.
    pub fn for_rank(&self, rank: u32) -> TaskConfig {
        let mut t = self.clone();
        if let Some(g) = self.rank_group(rank).group {
            t.commands = g.commands.clone();
            t.resources = g.resources.clone();
            t.ports = g.ports.clone();
        }
        t.groups = Vec::new();
        t
    }

    /// The nodes of each group, in order (one group of `nodes` without `groups`).
    pub fn group_sizes(&self) -> Vec<u32> {
        if self.groups.is_empty() { vec![self.nodes.max(1)] } else { self.groups.iter().map(|g| g.nodes).collect() }
    }
}

impl ServiceConfig {
    /// The replica groups with their first replica number: group `g` owns the numbers
    /// `first..first + max` (its maximum count), so a replica's number says its group. A service
    /// without groups is one group of every number.
    pub fn group_blocks(&self) -> Vec<(u32, &ReplicaGroup)> {
        let mut first = 0;
        self.groups
            .iter()
            .map(|g| {
                let at = first;
                first += g.replicas.max.unwrap_or(0);
                (at, g)
            })
            .collect()
    }

    /// The group of replica number `num` (its index and the group); `None` without groups, or
    /// for a number no group owns.
    pub fn group_of(&self, num: u32) -> Option<(usize, &ReplicaGroup)> {
        self.group_blocks()
            .into_iter()
            .enumerate()
            .find(|(_, (first, g))| num >= *first && num < first + g.replicas.max.unwrap_or(0))
            .map(|(i, (_, g))| (i, g))
    }

    /// The group that runs the router, if one does.
    pub fn router_group(&self) -> Option<(usize, &ReplicaGroup)> {
        self.groups.iter().enumerate().find(|(_, g)| g.router.is_some())
    }

    /// How many replicas each group starts with: its minimum; when that makes none at all, one
    /// replica of the first group that may have one, so that the service comes up when applied
    /// (as a service with one autoscaled range does).
    pub fn initial_group_replicas(&self) -> Vec<u32> {
        let mut counts: Vec<u32> = self.groups.iter().map(|g| g.replicas.min.unwrap_or(0)).collect();
        if counts.iter().all(|&n| n == 0)
            && let Some(i) = self.groups.iter().position(|g| g.replicas.max.unwrap_or(0) > 0)
        {
            counts[i] = 1;
        }
        counts
    }

    /// The replica numbers a grouped service starts with: the lowest of each group's block.
    pub fn initial_replica_numbers(&self) -> Vec<u32> {
        self.group_blocks()
            .into_iter()
            .zip(self.initial_group_replicas())
            .flat_map(|((first, _), n)| first..first + n)
            .collect()
    }
}

/// A task's `nodes` or `groups` (with dstack's rules between them and the top-level fields), and
/// the nodes in all: `(groups, nodes)`, groups empty without `groups:`.
pub(crate) fn task_groups(o: &Object, commands: &[String], c: &super::run::Common) -> Res<(Vec<NodeGroup>, u32)> {
    check_env_refs(o, &c.env)?;
    let Some(groups) = o.map("groups", node_groups)? else {
        let nodes = o.map("nodes", |n, p| bounded(n, p, 1, MAX_NODES.into()))?.unwrap_or(1);
        check_refs(o.key_mark("commands"), "commands", commands, RefMember::Nodes, &[nodes])?;
        return Ok((Vec::new(), nodes));
    };
    // dstack's rule: an empty `commands` or `ports` list is as good as none.
    let empty_list = |key: &str| o.get(key).is_some_and(|n| matches!(&n.value, Value::Seq(items) if items.is_empty()));
    for key in ["nodes", "commands", "ports", "entrypoint"] {
        if o.has(key) && !empty_list(key) {
            let message = if key == "nodes" {
                "`nodes` and `groups` are mutually exclusive: give each group its `nodes`".to_owned()
            } else {
                format!(
                    "not allowed with `groups`: give each group its own `{}`",
                    if key == "entrypoint" { "commands" } else { key }
                )
            };
            return Err(Issue::invalid(o.key_mark(key), key, message));
        }
    }
    let sizes: Vec<u32> = groups.iter().map(|g| g.nodes).collect();
    for (i, g) in groups.iter().enumerate() {
        let path = format!("{}.commands", at("groups", i));
        if g.commands.is_empty() && c.image.is_none() {
            return Err(Issue::invalid(
                o.key_mark("groups"),
                path,
                format!("node group \"{}\" has nothing to run: give it `commands`, or the task an `image`", g.name),
            ));
        }
        check_refs(o.key_mark("groups"), &path, &g.commands, RefMember::Nodes, &sizes)?;
    }
    let nodes = sizes.iter().fold(0u64, |n, &s| n + u64::from(s));
    if nodes > u64::from(MAX_NODES) {
        return Err(Issue::invalid(
            o.key_mark("groups"),
            "groups",
            format!("at most {MAX_NODES} nodes in all groups together, found {nodes}"),
        ));
    }
    Ok((groups, nodes as u32))
}

/// A service's replicas: a count or range with top-level `scaling`, or replica groups
/// (`replicas:` as a list, or `groups:`), with dstack's rules between them and the service's own
/// fields. Returns `(groups, replicas, scaling)`; with groups, `replicas` is their sum.
pub(crate) fn service_groups(
    o: &Object,
    commands: &[String],
    c: &super::run::Common,
) -> Res<(Vec<ReplicaGroup>, Range<u32>, Option<ScalingSpec>)> {
    check_env_refs(o, &c.env)?;
    let listed = o.get("replicas").filter(|n| matches!(n.value, Value::Seq(_)));
    if listed.is_some() && o.has("groups") {
        return Err(Issue::invalid(
            o.key_mark("groups"),
            "groups",
            "`replicas` (as a list) and `groups` are the same field: give one",
        ));
    }
    let key = if listed.is_some() { "replicas" } else { "groups" };
    let Some(groups) = o.map(key, replica_groups)? else {
        let replicas = o.map("replicas", replicas)?.unwrap_or(Range::exactly(1));
        let scaling = o.map("scaling", scaling)?;
        if replicas.min != replicas.max && scaling.is_none() {
            return Err(Issue::invalid(
                o.key_mark("replicas"),
                "replicas",
                "a range of replicas needs `scaling` (e.g. `scaling: {metric: rps, target: 10}`)",
            ));
        }
        if replicas.max == Some(0) && scaling.is_some() {
            return Err(Issue::invalid(
                o.key_mark("replicas"),
                "replicas",
                "an autoscaled service needs a maximum above 0, e.g. `0..4`",
            ));
        }
        if replicas.min == replicas.max && scaling.is_some() {
            return Err(Issue::invalid(
                o.key_mark("scaling"),
                "scaling",
                "`scaling` needs `replicas` to be a range, e.g. `0..4`",
            ));
        }
        check_refs(o.key_mark("commands"), "commands", commands, RefMember::Replicas, &[replicas.min.unwrap_or(0)])?;
        return Ok((Vec::new(), replicas, scaling));
    };
    let empty_list = |key: &str| o.get(key).is_some_and(|n| matches!(&n.value, Value::Seq(items) if items.is_empty()));
    for field in ["scaling", "commands"] {
        if o.has(field) && !empty_list(field) {
            return Err(Issue::invalid(
                o.key_mark(field),
                field,
                format!("not allowed with replica groups: give each group its own `{field}`"),
            ));
        }
    }
    // dstack's rule: these are set for the whole service or per group, never both.
    let p = &c.provisioning;
    let service_level = [
        ("image", c.image.is_some()),
        ("docker", c.docker),
        ("privileged", c.privileged),
        ("python", c.python.is_some()),
        ("nvcc", c.nvcc),
        ("spot_policy", p.spot_policy.is_some()),
        ("reservation", p.reservation.is_some()),
    ];
    for (i, g) in groups.iter().enumerate() {
        let group_level = [
            ("image", g.image.is_some()),
            ("docker", g.docker.is_some()),
            ("privileged", g.privileged.is_some()),
            ("python", g.python.is_some()),
            ("nvcc", g.nvcc.is_some()),
            ("spot_policy", g.spot_policy.is_some()),
            ("reservation", g.reservation.is_some()),
        ];
        for &(field, _) in service_level.iter().filter(|(_, set)| *set) {
            for &(gfield, _) in group_level.iter().filter(|(_, set)| *set) {
                if !clashes(field, gfield) {
                    continue;
                }
                let message = if gfield == field {
                    format!("`{field}` is set for the service and for group \"{}\": set it in one place only", g.name)
                } else {
                    format!(
                        "the service's `{field}` and group \"{}\"'s `{gfield}` are mutually exclusive (both choose the image)",
                        g.name
                    )
                };
                return Err(Issue::invalid(o.key_mark(key), format!("{}.{gfield}", at(key, i)), message));
            }
        }
        if g.commands.is_empty() && g.image.is_none() && c.image.is_none() {
            return Err(Issue::invalid(
                o.key_mark(key),
                format!("{}.commands", at(key, i)),
                format!(
                    "replica group \"{}\" has nothing to run: give it `commands` or an `image`, or the service an `image`",
                    g.name
                ),
            ));
        }
    }
    let sizes: Vec<u32> = groups.iter().map(|g| g.replicas.min.unwrap_or(0)).collect();
    for (i, g) in groups.iter().enumerate() {
        check_refs(o.key_mark(key), &format!("{}.commands", at(key, i)), &g.commands, RefMember::Replicas, &sizes)?;
    }
    let sum = |f: fn(&ReplicaGroup) -> u32| groups.iter().fold(0u64, |n, g| n + u64::from(f(g)));
    let (min, max) = (sum(|g| g.replicas.min.unwrap_or(0)), sum(|g| g.replicas.max.unwrap_or(0)));
    if max > u64::from(MAX_REPLICAS) {
        return Err(Issue::invalid(
            o.key_mark(key),
            key,
            format!("at most {MAX_REPLICAS} replicas in all groups together, found {max}"),
        ));
    }
    if max == 0 {
        return Err(Issue::invalid(
            o.key_mark(key),
            key,
            "the groups allow no replica at all: give one a count above 0",
        ));
    }
    Ok((groups, Range { min: Some(min as u32), max: Some(max as u32) }, None))
}

/// Whether a service-level `field` and a group-level `gfield` may not both be set (dstack's
/// rules): the same field, or two that each choose the image (`python` with `nvcc` is fine).
fn clashes(field: &str, gfield: &str) -> bool {
    let image_source = |f: &str| ["image", "docker", "python", "nvcc"].contains(&f);
    let python_nvcc = matches!((field, gfield), ("python", "nvcc") | ("nvcc", "python"));
    field == gfield || (image_source(field) && image_source(gfield) && !python_nvcc)
}

impl ServiceConfig {
    /// What replica number `num` runs: [`ServiceConfig::replica_task`], with its group's
    /// commands, resources and container when the service has groups.
    pub fn replica_task_of(&self, num: u32) -> TaskConfig {
        let mut t = self.replica_task();
        let Some((_, g)) = self.group_of(num) else { return t };
        t.commands = g.commands.clone();
        t.resources = g.resources.clone();
        if g.image.is_some() {
            t.image = g.image.clone();
            t.python = None;
        }
        if g.python.is_some() {
            t.python = g.python.clone();
        }
        if let Some(nvcc) = g.nvcc {
            t.nvcc = nvcc;
        }
        if let Some(docker) = g.docker {
            t.docker = docker;
        }
        if let Some(privileged) = g.privileged {
            t.privileged = privileged;
        }
        if g.spot_policy.is_some() {
            t.provisioning.spot_policy = g.spot_policy;
        }
        if g.reservation.is_some() {
            t.provisioning.reservation = g.reservation.clone();
        }
        t
    }
}

const NODE_GROUP_FIELDS: [&str; 5] = ["name", "nodes", "resources", "commands", "ports"];

/// `groups:` of a task.
pub(crate) fn node_groups(node: &Node, path: &str) -> Res<Vec<NodeGroup>> {
    let groups = each(node, path, |n, p| {
        let o = Object::new(n, p, "node group", &NODE_GROUP_FIELDS)?;
        Ok(NodeGroup {
            name: o.map("name", group_name)?.unwrap_or_default(),
            nodes: o.map("nodes", |n, p| bounded(n, p, 1, MAX_NODES.into()))?.unwrap_or(1),
            commands: common::commands(&o, "commands")?,
            resources: o.map("resources", resources)?.unwrap_or_default(),
            ports: o.map("ports", ports)?.unwrap_or_default(),
        })
    })?;
    name_groups(node, path, groups, |g| &mut g.name)
}

const REPLICA_GROUP_FIELDS: [&str; 14] = [
    "name",
    "replicas",
    "count",
    "scaling",
    "resources",
    "spot_policy",
    "reservation",
    "commands",
    "image",
    "python",
    "nvcc",
    "docker",
    "privileged",
    "router",
];

/// A service's `replicas:` list (or `groups:`).
pub(crate) fn replica_groups(node: &Node, path: &str) -> Res<Vec<ReplicaGroup>> {
    let groups = each(node, path, |n, p| {
        let o = Object::new(n, p, "replica group", &REPLICA_GROUP_FIELDS)?;
        // `count` is dstack's other name for `replicas` (the one its docs use).
        if o.has("count") && o.has("replicas") {
            return Err(Issue::invalid(
                o.key_mark("count"),
                o.path("count"),
                "`count` and `replicas` are the same field: give one",
            ));
        }
        let key = if o.has("count") { "count" } else { "replicas" };
        let count = o.require(key, replicas)?;
        let scaling = o.map("scaling", scaling)?;
        if count.min != count.max && scaling.is_none() {
            return Err(Issue::invalid(
                o.key_mark(key),
                o.path(key),
                "a range of replicas needs `scaling` in the group (e.g. `scaling: {metric: rps, target: 10}`)",
            ));
        }
        if count.min == count.max && scaling.is_some() {
            return Err(Issue::invalid(
                o.key_mark("scaling"),
                o.path("scaling"),
                "`scaling` needs the group's replicas to be a range, e.g. `1..4`",
            ));
        }
        let image = o.string("image")?;
        let python = o.map("python", python_version)?;
        if image.is_some() && python.is_some() {
            return Err(Issue::invalid(
                o.key_mark("python"),
                o.path("python"),
                "`image` and `python` are mutually exclusive within a replica group",
            ));
        }
        let docker = o.boolean("docker")?;
        if docker == Some(true) {
            for (other, set) in [("image", image.is_some()), ("python", python.is_some()), ("nvcc", o.has("nvcc"))] {
                if set {
                    return Err(Issue::invalid(
                        o.key_mark("docker"),
                        o.path("docker"),
                        format!("`{other}` and `docker` are mutually exclusive within a replica group"),
                    ));
                }
            }
            if o.boolean("privileged")? == Some(false) {
                return Err(Issue::invalid(
                    o.key_mark("privileged"),
                    o.path("privileged"),
                    "`docker: true` needs privileged mode; remove `privileged: false`",
                ));
            }
        }
        let router = o.map("router", |n, p| {
            let r = Object::new(n, p, "router", &["type"])?;
            Ok(match r.map("type", |n, p| choice(n, p, &["sglang", "smg", "dynamo"]))? {
                Some("dynamo") => RouterType::Dynamo,
                _ => RouterType::Sglang,
            })
        })?;
        if router.is_some() && count != Range::exactly(1) {
            return Err(Issue::invalid(
                o.key_mark(key),
                o.path(key),
                "the replica group with `router` must have exactly 1 replica (dstack's rule)",
            ));
        }
        Ok(ReplicaGroup {
            name: o.map("name", group_name)?.unwrap_or_default(),
            replicas: count,
            scaling,
            resources: o.map("resources", resources)?.unwrap_or_default(),
            commands: common::commands(&o, "commands")?,
            image,
            python,
            nvcc: o.boolean("nvcc")?,
            docker,
            privileged: o.boolean("privileged")?,
            spot_policy: o.map("spot_policy", spot_policy)?,
            reservation: o.string("reservation")?,
            router,
        })
    })?;
    let groups = name_groups(node, path, groups, |g| &mut g.name)?;
    if let Some(second) = groups.iter().filter(|g| g.router.is_some()).nth(1) {
        let i = groups.iter().position(|g| std::ptr::eq(g, second)).unwrap_or(0);
        return Err(Issue::invalid(
            node.mark,
            format!("{}.router", at(path, i)),
            "at most one replica group may have a `router`",
        ));
    }
    Ok(groups)
}

fn spot_policy(node: &Node, path: &str) -> Res<SpotPolicy> {
    Ok(match choice(node, path, &["spot", "on-demand", "auto"])? {
        "spot" => SpotPolicy::Spot,
        "on-demand" => SpotPolicy::OnDemand,
        _ => SpotPolicy::Auto,
    })
}

/// `^[a-z0-9][a-z0-9-]{0,39}$`, dstack's rule for group names.
fn group_name(node: &Node, path: &str) -> Res<String> {
    let name = string(node, path)?;
    let ok = name.len() <= 40
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        return Ok(name);
    }
    Err(Issue::invalid(
        node.mark,
        path,
        format!(
            "\"{name}\" is not a group name: use 1 to 40 lowercase letters, digits and hyphens, not starting with a hyphen"
        ),
    ))
}

/// Fills in the names the file left out (`"0"`, `"1"`, ... by position) and refuses an empty list
/// and a name given twice.
fn name_groups<G>(node: &Node, path: &str, mut groups: Vec<G>, name: impl Fn(&mut G) -> &mut String) -> Res<Vec<G>> {
    if groups.is_empty() {
        return Err(Issue::invalid(node.mark, path, "cannot be an empty list: give at least one group"));
    }
    let mut seen: Vec<String> = Vec::new();
    for (i, g) in groups.iter_mut().enumerate() {
        let n = name(g);
        if n.is_empty() {
            *n = i.to_string();
        }
        if seen.contains(n) {
            let mark = match &node.value {
                Value::Seq(items) => items.get(i).map_or(node.mark, |item| item.mark),
                _ => node.mark,
            };
            return Err(Issue::invalid(
                mark,
                format!("{}.name", at(path, i)),
                format!("the group name \"{n}\" is used twice: give each group its own"),
            ));
        }
        seen.push(n.clone());
    }
    Ok(groups)
}

/// Which kind of group a reference names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefMember {
    Nodes,
    Replicas,
}

impl RefMember {
    fn word(self) -> &'static str {
        match self {
            Self::Nodes => "nodes",
            Self::Replicas => "replicas",
        }
    }
}

/// One `${{ groups[i].nodes[j].IP_ADDRESS }}` in a string: where it is and what it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupRef {
    /// Byte range of the whole `${{ ... }}`.
    pub start: usize,
    pub end: usize,
    pub group: usize,
    pub member: RefMember,
    pub index: usize,
}

/// The `${{ groups... }}` references in `s`, dstack's grammar: `groups[i].nodes[j].IP_ADDRESS` or
/// `groups[i].replicas[j].IP_ADDRESS`, spaces allowed inside the braces, `$${{` is an escape.
/// `Err` names a reference in the `groups` namespace that is not one of those.
pub fn group_refs(s: &str) -> Result<Vec<GroupRef>, String> {
    let mut out = Vec::new();
    for (range, inner) in super::interpolations(s) {
        let root = inner.split(['.', '[']).next().unwrap_or_default();
        if root != "groups" {
            continue;
        }
        let parsed = parse_ref(inner).ok_or_else(|| format!("illegal reference name: {inner}"))?;
        out.push(GroupRef { start: range.start, end: range.end, group: parsed.0, member: parsed.1, index: parsed.2 });
    }
    Ok(out)
}

/// `groups[i].nodes[j].IP_ADDRESS` → (i, nodes, j).
fn parse_ref(inner: &str) -> Option<(usize, RefMember, usize)> {
    let rest = inner.strip_prefix("groups[")?;
    let (i, rest) = rest.split_once("].")?;
    let (member, rest) = rest.split_once('[')?;
    let (j, rest) = rest.split_once(']')?;
    if rest != ".IP_ADDRESS" {
        return None;
    }
    let number = |t: &str| {
        (!t.is_empty() && t.len() <= 6 && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok()).flatten()
    };
    let member = match member {
        "nodes" => RefMember::Nodes,
        "replicas" => RefMember::Replicas,
        _ => return None,
    };
    Some((number(i)?, member, number(j)?))
}

/// Checks every reference in `commands` against the groups' sizes (`member` is the kind this
/// run has: nodes for a task, replicas for a service), and refuses one in `env` (dstack
/// substitutes them in commands only).
pub(crate) fn check_refs(mark: Mark, path: &str, commands: &[String], member: RefMember, sizes: &[u32]) -> Res<()> {
    for (k, c) in commands.iter().enumerate() {
        let field = at(path, k);
        let refs = group_refs(c).map_err(|m| Issue::invalid(mark, &field, m))?;
        for r in refs {
            let text = &c[r.start..r.end];
            if r.member != member {
                return Err(Issue::invalid(
                    mark,
                    &field,
                    format!(
                        "{text}: a {} has {}, not {}",
                        if member == RefMember::Nodes { "task" } else { "service" },
                        member.word(),
                        r.member.word()
                    ),
                ));
            }
            match sizes.get(r.group) {
                None => {
                    return Err(Issue::invalid(
                        mark,
                        &field,
                        format!("{text}: there is no group {} (the run has {})", r.group, sizes.len()),
                    ));
                }
                Some(0) if member == RefMember::Replicas => {
                    return Err(Issue::invalid(
                        mark,
                        &field,
                        format!("{text}: the group scales to zero, so no replica is sure to be there"),
                    ));
                }
                Some(&n) if r.index >= n as usize => {
                    return Err(Issue::invalid(
                        mark,
                        &field,
                        format!("{text}: out of range, group {} has {n}", r.group),
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Refuses group references in `env`: dstack substitutes them in commands only.
pub(crate) fn check_env_refs(o: &Object, env: &[super::EnvVar]) -> Res<()> {
    for e in env {
        let value = e.value.as_deref().unwrap_or_default();
        if !matches!(group_refs(value), Ok(r) if r.is_empty()) {
            return Err(Issue::invalid(
                o.key_mark("env"),
                format!("env.{}", e.name),
                "group address references are only substituted in commands, not in `env`",
            ));
        }
    }
    Ok(())
}

/// `s` with each `${{ groups[i].nodes[j].IP_ADDRESS }}` replaced by that node's address
/// (`addresses[i][j]`); a reference to no known node is left as written (admission has checked
/// them against the groups' sizes).
pub fn substitute_node_addresses(s: &str, addresses: &[Vec<String>]) -> String {
    let Ok(refs) = group_refs(s) else { return s.to_owned() };
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for r in refs.iter().filter(|r| r.member == RefMember::Nodes) {
        if let Some(ip) = addresses.get(r.group).and_then(|g| g.get(r.index)) {
            out.push_str(&s[last..r.start]);
            out.push_str(ip);
            last = r.end;
        }
    }
    out.push_str(&s[last..]);
    out
}

#[cfg(test)]
mod tests;
