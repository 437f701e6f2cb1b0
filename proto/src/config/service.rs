//! `type: service`: a long-running HTTP endpoint with replicas, autoscaling, auth, probes and rate
//! limits, served through the coordinator's proxy.

use serde::{Deserialize, Serialize};

use crate::resources::{Range, ResourcesSpec};

use super::EnvVar;
use super::common::{self, Provisioning, RegistryAuth, RetrySpec, UtilizationPolicy, each};
use super::fields::{Issue, Object, Res, boolean, bounded, choice, number, string};
use super::limits::{MAX_BURST, MAX_READY_AFTER};
use super::mounts::{FileMapping, RepoSpec, VolumeMount};
use super::resources::count_range;
use super::run::{RUN_FIELDS, common, require_commands_or_image};
use super::values::{parse_port_mapping, port, secs};
use super::yaml::{Node, Value};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceConfig {
    pub name: Option<String>,
    pub image: Option<String>,
    pub commands: Vec<String>,
    pub env: Vec<EnvVar>,
    pub working_dir: Option<String>,
    /// The port the application listens on in the container.
    pub port: u16,
    /// How many replicas; a range (`0..4`) comes with `scaling`. `1` when the file says nothing.
    pub replicas: Range<u32>,
    pub scaling: Option<ScalingSpec>,
    /// Requests need a Corral token (dstack's default: yes).
    pub auth: bool,
    /// Strip `/proxy/services/<project>/<run>/` before forwarding (default: yes).
    pub strip_prefix: bool,
    /// The model served at an OpenAI-compatible API, for the coordinator's model endpoint.
    pub model: Option<ModelSpec>,
    /// `None`: the default probes (a `/v1/chat/completions` probe when `model` is set, none otherwise);
    /// `Some(vec![])`: explicitly none.
    pub probes: Option<Vec<ProbeSpec>>,
    pub rate_limits: Vec<RateLimit>,
    pub max_duration_secs: Option<u64>,
    pub stop_duration_secs: Option<u64>,
    pub resources: ResourcesSpec,
    pub priority: Option<u8>,
    pub python: Option<String>,
    pub nvcc: bool,
    pub docker: bool,
    pub dstack: bool,
    pub user: Option<String>,
    pub privileged: bool,
    pub entrypoint: Option<String>,
    pub shell: Option<String>,
    pub registry_auth: Option<RegistryAuth>,
    pub volumes: Vec<VolumeMount>,
    pub repos: Vec<RepoSpec>,
    pub files: Vec<FileMapping>,
    pub retry: Option<RetrySpec>,
    pub utilization_policy: Option<UtilizationPolicy>,
    pub provisioning: Provisioning,
    /// When the coordinator starts the service by itself (UTC); `None`: when applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<super::Schedule>,
    /// Replica groups (`replicas:` as a list): each with its own count or autoscaled range,
    /// commands, resources and container ([`ServiceConfig::replica_task_of`]). With groups,
    /// `replicas` is their sum and `scaling` is `None`. Empty: one group of `replicas`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<super::ReplicaGroup>,
}

impl ServiceConfig {
    /// What one replica runs: a single-node task with the service's container, resources and
    /// limits. The scheduler places each replica on its own.
    pub fn replica_task(&self) -> super::TaskConfig {
        super::TaskConfig {
            name: self.name.clone(),
            image: self.image.clone(),
            commands: self.commands.clone(),
            env: self.env.clone(),
            working_dir: self.working_dir.clone(),
            ports: Vec::new(),
            max_duration_secs: self.max_duration_secs,
            stop_duration_secs: self.stop_duration_secs,
            resources: self.resources.clone(),
            nodes: 1,
            priority: self.priority,
            python: self.python.clone(),
            nvcc: self.nvcc,
            docker: self.docker,
            dstack: self.dstack,
            user: self.user.clone(),
            privileged: self.privileged,
            entrypoint: self.entrypoint.clone(),
            shell: self.shell.clone(),
            registry_auth: self.registry_auth.clone(),
            volumes: self.volumes.clone(),
            repos: self.repos.clone(),
            files: self.files.clone(),
            retry: self.retry.clone(),
            utilization_policy: self.utilization_policy.clone(),
            startup_order: super::StartupOrder::Any,
            stop_criteria: super::StopCriteria::AllDone,
            provisioning: self.provisioning.clone(),
            schedule: self.schedule.clone(),
            groups: Vec::new(),
        }
    }
}

/// Autoscaling on requests per second (dstack's only metric, `rps`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalingSpec {
    /// Requests per second per replica to aim for.
    pub target: f64,
    /// The window the rate is measured over: 30, 60 or 300 s; `None`: 60 s.
    pub window_secs: Option<u64>,
    pub scale_up_delay_secs: u64,
    pub scale_down_delay_secs: u64,
}

/// An OpenAI-compatible chat model (`model: meta-llama/Llama-3.1-8B` is `{name, prefix: /v1}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    /// Where the OpenAI API is mounted in the service, `/v1` by default.
    pub prefix: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Delete,
    Patch,
    Head,
}

/// An HTTP probe, dstack's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    pub url: String,
    pub method: HttpMethod,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub timeout_secs: u64,
    pub interval_secs: u64,
    pub ready_after: u32,
    pub until_ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    IpAddress,
    Header(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    pub prefix: String,
    pub key: RateLimitKey,
    pub rps: f64,
    pub burst: u64,
}

const SERVICE_FIELDS: [&str; 12] = [
    "port",
    "gateway",
    "strip_prefix",
    "model",
    "https",
    "auth",
    "scaling",
    "rate_limits",
    "probes",
    "replicas",
    "groups",
    "commands",
];

pub(crate) fn service(doc: &Node) -> Res<ServiceConfig> {
    let known: Vec<&str> = RUN_FIELDS.iter().copied().chain(SERVICE_FIELDS).collect();
    let o = super::object(doc, "service", &known)?;
    if let Some(g) = o.get("gateway").filter(|g| !matches!(g.value, Value::Bool(false))) {
        return Err(Issue::unsupported(
            g.mark,
            "gateway",
            "Corral has no gateways: the coordinator proxies services itself; remove `gateway`",
        ));
    }
    // `https` only matters with a gateway, which Corral refuses above; read it to check its type.
    o.map("https", |n, p| if matches!(n.value, Value::Str(ref s) if s == "auto") { Ok(true) } else { boolean(n, p) })?;
    let c = common(&o)?;
    let commands = common::commands(&o, "commands")?;
    let (groups, replicas, scaling) = super::groups::service_groups(&o, &commands, &c)?;
    if groups.is_empty() {
        require_commands_or_image(&o, &commands, &c.image)?;
    }
    let probes = o.map("probes", |n, p| each(n, p, probe))?;
    let list = probes.as_deref().unwrap_or_default();
    if let Some(i) = (1..list.len()).find(|&i| list[..i].contains(&list[i])) {
        return Err(Issue::invalid(o.key_mark("probes"), format!("probes[{i}]"), "the same probe is given twice"));
    }
    let rate_limits = o.map("rate_limits", |n, p| each(n, p, rate_limit))?.unwrap_or_default();
    if let Some(i) =
        (1..rate_limits.len()).find(|&i| rate_limits[..i].iter().any(|r| r.prefix == rate_limits[i].prefix))
    {
        return Err(Issue::invalid(
            o.key_mark("rate_limits"),
            format!("rate_limits[{i}]"),
            format!("prefix \"{}\" has two limits; give each prefix one", rate_limits[i].prefix),
        ));
    }
    Ok(ServiceConfig {
        name: c.name,
        image: c.image,
        commands,
        env: c.env,
        working_dir: c.working_dir,
        port: o.require("port", service_port)?,
        replicas,
        scaling,
        auth: o.boolean("auth")?.unwrap_or(true),
        strip_prefix: o.boolean("strip_prefix")?.unwrap_or(true),
        model: o.map("model", model)?,
        probes,
        rate_limits,
        max_duration_secs: c.max_duration_secs,
        stop_duration_secs: c.stop_duration_secs,
        resources: c.resources,
        priority: c.priority,
        python: c.python,
        nvcc: c.nvcc,
        docker: c.docker,
        dstack: c.dstack,
        user: c.user,
        privileged: c.privileged,
        entrypoint: c.entrypoint,
        shell: c.shell,
        registry_auth: c.registry_auth,
        volumes: c.volumes,
        repos: c.repos,
        files: c.files,
        retry: c.retry,
        utilization_policy: c.utilization_policy,
        provisioning: c.provisioning,
        schedule: c.schedule,
        groups,
    })
}

/// `8000`, `"80:8000"`, `{container_port: 8000}`: only the container port matters, as in dstack.
fn service_port(node: &Node, path: &str) -> Res<u16> {
    match &node.value {
        Value::Str(s) => parse_port_mapping(s)
            .map(|m| m.container)
            .ok_or_else(|| Issue::invalid(node.mark, path, format!("cannot read \"{s}\" as a port"))),
        Value::Map(_) => {
            let o = Object::new(node, path, "port mapping", &["local_port", "container_port"])?;
            o.map("local_port", port)?;
            o.require("container_port", port)
        }
        _ => port(node, path),
    }
}

pub(crate) fn replicas(node: &Node, path: &str) -> Res<Range<u32>> {
    let mut r = count_range(node, path)?;
    if r.max.is_none() {
        return Err(Issue::invalid(node.mark, path, "give the maximum number of replicas, e.g. `0..4`"));
    }
    r.min.get_or_insert(0);
    Ok(r)
}

pub(crate) fn scaling(node: &Node, path: &str) -> Res<ScalingSpec> {
    let o = Object::new(node, path, "scaling", &["metric", "target", "window", "scale_up_delay", "scale_down_delay"])?;
    o.require("metric", |n, p| choice(n, p, &["rps"]))?;
    let target = o.require("target", number)?;
    if target <= 0.0 {
        return Err(Issue::invalid(o.key_mark("target"), o.path("target"), "must be more than 0"));
    }
    let window_secs = o.map("window", secs)?;
    if let Some(w) = window_secs.filter(|w| ![30, 60, 300].contains(w)) {
        return Err(Issue::invalid(
            o.key_mark("window"),
            o.path("window"),
            format!("{w}s is not allowed: use 30s, 60s or 300s"),
        ));
    }
    Ok(ScalingSpec {
        target,
        window_secs,
        scale_up_delay_secs: o.map("scale_up_delay", secs)?.unwrap_or(300),
        scale_down_delay_secs: o.map("scale_down_delay", secs)?.unwrap_or(600),
    })
}

fn model(node: &Node, path: &str) -> Res<ModelSpec> {
    if !matches!(node.value, Value::Map(_)) {
        return Ok(ModelSpec { name: string(node, path)?, prefix: "/v1".into() });
    }
    let o = Object::new(node, path, "model", &["type", "name", "format", "prefix", "chat_template", "eos_token"])?;
    o.map("type", |n, p| choice(n, p, &["chat"]))?;
    // TGI (1.4 and later) serves OpenAI's chat API itself at `/v1`: the proxy passes requests
    // to it as they are, where dstack's gateway translated them to TGI's `/generate`.
    let tgi = o.require("format", |n, p| choice(n, p, &["openai", "tgi"]))? == "tgi";
    for key in ["chat_template", "eos_token"] {
        if o.has(key) && !tgi {
            return Err(Issue::invalid(o.key_mark(key), o.path(key), "only used with `format: tgi`"));
        }
        if o.has(key) {
            return Err(Issue::unsupported(
                o.key_mark(key),
                o.path(key),
                "TGI's own chat API applies the model's template: Corral does not rewrite prompts, so a custom template or end token cannot be given here (set it in TGI's launcher instead)",
            ));
        }
    }
    Ok(ModelSpec { name: o.require("name", string)?, prefix: o.string("prefix")?.unwrap_or_else(|| "/v1".into()) })
}

fn probe(node: &Node, path: &str) -> Res<ProbeSpec> {
    let known = ["type", "url", "method", "headers", "body", "timeout", "interval", "ready_after", "until_ready"];
    let o = Object::new(node, path, "probe", &known)?;
    o.require("type", |n, p| choice(n, p, &["http"]))?;
    let url = o.string("url")?.unwrap_or_else(|| "/".into());
    if !url.starts_with('/') || url.len() > 2048 || url.chars().any(char::is_control) {
        return Err(Issue::invalid(
            o.key_mark("url"),
            o.path("url"),
            "must be a path starting with `/`, printable, at most 2048 characters",
        ));
    }
    let method = match o.map("method", |n, p| choice(n, p, &["get", "post", "put", "delete", "patch", "head"]))? {
        None | Some("get") => HttpMethod::Get,
        Some("post") => HttpMethod::Post,
        Some("put") => HttpMethod::Put,
        Some("delete") => HttpMethod::Delete,
        Some("patch") => HttpMethod::Patch,
        Some(_) => HttpMethod::Head,
    };
    let headers = o.map("headers", |n, p| each(n, p, header))?.unwrap_or_default();
    if headers.len() > 16 {
        return Err(Issue::invalid(o.key_mark("headers"), o.path("headers"), "at most 16 headers"));
    }
    let body = o.string("body")?;
    if let Some(b) = &body {
        if b.is_empty() || b.len() > 2048 {
            return Err(Issue::invalid(o.key_mark("body"), o.path("body"), "must be 1 to 2048 characters"));
        }
        if matches!(method, HttpMethod::Get | HttpMethod::Head) {
            return Err(Issue::invalid(
                o.key_mark("body"),
                o.path("body"),
                "a GET or HEAD probe cannot have a body; set `method: post`",
            ));
        }
    }
    let at_least_1s = |n: &Node, p: &str| -> Res<u64> {
        let s = secs(n, p)?;
        if s < 1 { Err(Issue::invalid(n.mark, p, "must be at least 1s")) } else { Ok(s) }
    };
    Ok(ProbeSpec {
        url,
        method,
        headers,
        body,
        timeout_secs: o.map("timeout", at_least_1s)?.unwrap_or(10),
        interval_secs: o.map("interval", at_least_1s)?.unwrap_or(15),
        ready_after: o.map("ready_after", |n, p| bounded(n, p, 1, MAX_READY_AFTER.into()))?.unwrap_or(1),
        until_ready: o.boolean("until_ready")?.unwrap_or(false),
    })
}

fn header(node: &Node, path: &str) -> Res<(String, String)> {
    let o = Object::new(node, path, "header", &["name", "value"])?;
    let name = o.require("name", string)?;
    let value = o.require("value", string)?;
    if name.is_empty() || name.len() > 256 || value.is_empty() || value.len() > 2048 {
        return Err(Issue::invalid(
            o.mark(),
            path,
            "a header needs a name (1 to 256 characters) and a value (1 to 2048)",
        ));
    }
    Ok((name, value))
}

fn rate_limit(node: &Node, path: &str) -> Res<RateLimit> {
    let o = Object::new(node, path, "rate limit", &["prefix", "key", "rps", "burst"])?;
    let prefix = o.string("prefix")?.unwrap_or_else(|| "/".into());
    if !prefix.starts_with('/')
        || prefix.len() > 4094
        || prefix.contains(|c: char| c.is_whitespace() || "\\{}".contains(c))
    {
        return Err(Issue::invalid(
            o.key_mark("prefix"),
            o.path("prefix"),
            "must be a path starting with `/`, without spaces, `\\`, `{` or `}`",
        ));
    }
    let key = match o.get("key") {
        None => RateLimitKey::IpAddress,
        Some(n) => {
            let k = Object::new(n, &o.path("key"), "rate limit key", &["type", "header"])?;
            match k.require("type", |n, p| choice(n, p, &["ip_address", "header"]))? {
                "ip_address" => {
                    k.refuse("header", "only used with `type: header`")
                        .map_err(|e| Issue { unsupported: false, ..e })?;
                    RateLimitKey::IpAddress
                }
                _ => {
                    let h = k.require("header", string)?;
                    if h.is_empty()
                        || h.len() > 500
                        || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        return Err(Issue::invalid(
                            k.key_mark("header"),
                            k.path("header"),
                            "a header name is letters, digits, `-` and `_`",
                        ));
                    }
                    RateLimitKey::Header(h)
                }
            }
        }
    };
    let rps = o.require("rps", number)?;
    if !(1.0 / 60.0..=(i64::MAX / 60) as f64).contains(&rps) {
        return Err(Issue::invalid(o.key_mark("rps"), o.path("rps"), "must be at least 1/60 (one request a minute)"));
    }
    let burst = o.map("burst", |n, p| bounded(n, p, 0, MAX_BURST as i64))?.unwrap_or(0);
    Ok(RateLimit { prefix, key, rps, burst })
}
