//! The bounds on every count and size a user gives, in one place, and the check of a typed
//! configuration against them.
//!
//! Each bound keeps a configuration inside what the rest of Corral can carry: a job spec fits a wire
//! frame, a container's command line fits the kernel's argument limits, a duration added to a clock
//! cannot overflow it, a count of jobs or replicas cannot make the coordinator allocate without
//! bound. The parser ([`super::parse`]) runs [`Configuration::check_limits`] on what it read and
//! names the file, line and column of the field at fault; the coordinator runs the same check on
//! every configuration it is sent, so a request that bypasses the CLI meets the same limits and the
//! same words. `docs/config.md` lists them ("Limits").

use crate::resources::{CpuSpec, GpuSpec, Memory, Range, ResourcesSpec};

use super::common::{FleetRef, IdleDuration, InstanceSelector, Provisioning, RetrySpec, UtilizationPolicy};
use super::fleet::{Blocks, FleetConfig};
use super::mounts::{FileMapping, RepoSpec, VolumeMount};
use super::resources::{TB, format_memory, format_range};
use super::service::{ProbeSpec, RateLimit, ServiceConfig};
use super::volume::VolumeConfig;
use super::{Configuration, EnvVar, PortMapping, is_valid_name};

/// Nodes of one multi-node task (`nodes`): each is a job, placed together as one gang.
pub const MAX_NODES: u32 = 1024;
/// A service's replicas (`replicas`, either end of a range).
pub const MAX_REPLICAS: u32 = 1024;
/// A fleet's instances (`nodes` and its `min`/`target`/`max`) and its `ssh_config.hosts`.
pub const MAX_FLEET_NODES: u32 = 1024;
/// Lines of `commands` (and of `setup` + `init` for a dev environment).
pub const MAX_COMMANDS: usize = 1024;
/// Bytes of all `commands` together, a newline after each. They run as one `sh -c` argument, and
/// Linux refuses a single argument over 128 KiB (`argument list too long`); this leaves room for
/// the lines Corral adds and for interpolations that grow when expanded.
pub const MAX_COMMANDS_BYTES: usize = 64 * 1024;
/// Entries of `env`.
pub const MAX_ENV_VARS: usize = 256;
/// Bytes of one `env` value (each `NAME=value` is one string of the container's environment).
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// Bytes of all of `env` together (`NAME=value` strings); with the commands, well under the
/// kernel's 2 MiB for a process's arguments and environment.
pub const MAX_ENV_BYTES: usize = 256 * 1024;
/// Entries of `ports`.
pub const MAX_PORTS: usize = 64;
/// Entries of `volumes`.
pub const MAX_VOLUMES: usize = 64;
/// Entries of `files`.
pub const MAX_FILES: usize = 64;
/// Entries of `repos` (one, as in dstack).
pub const MAX_REPOS: usize = 1;
/// Bytes of one upload (a local repo, or one entry of `files`, as the tar `corral apply` sends):
/// 2 GiB. dstack's 2 MB default is too small for code with its data, and an upload travels
/// whole through the coordinator's disk; larger data belongs in a volume or the image.
pub const MAX_UPLOAD_BYTES: u64 = 2 << 30;
/// Items of the other lists: `fleets`, `instances`, `backends`, `regions`, `availability_zones`,
/// `instance_types`, `tags`, `retry.on_events`, `resources.gpu.name`.
pub const MAX_LIST_ITEMS: usize = 64;
/// Bytes of any other single string (an image, a path, a URL, a user, a tag value).
pub const MAX_STRING_BYTES: usize = 4096;
/// `priority`: 0 to 100, as in dstack.
pub const MAX_PRIORITY: u8 = 100;
/// Every duration (`max_duration`, `stop_duration`, `inactivity_duration`, `idle_duration`,
/// `retry.duration`, `utilization_policy.time_window`, probe timeouts and intervals, scaling
/// delays): a year.
pub const MAX_DURATION_SECS: u64 = 365 * 24 * 3600;
/// `utilization_policy.time_window` is at least 5 minutes, as in dstack.
pub const MIN_UTILIZATION_WINDOW_SECS: u64 = 300;
/// CPUs asked for (`resources.cpu`, either end of a range).
pub const MAX_CPUS: u32 = 4096;
/// GPUs asked for on one node (`resources.gpu` count, either end of a range).
pub const MAX_GPUS: u32 = 64;
/// `resources.memory`, `shm_size`, and a GPU's `memory` or `total_memory`.
pub const MAX_MEMORY_BYTES: u64 = 64 * TB;
/// `resources.disk`.
pub const MAX_DISK_BYTES: u64 = 1024 * TB;
/// `blocks` of a fleet or of one host.
pub const MAX_BLOCKS: u32 = 128;
/// `max_price`, dollars per hour.
pub const MAX_PRICE: f64 = 10_000.0;
/// `scaling.target`, requests per second per replica.
pub const MAX_SCALING_TARGET: f64 = 1_000_000.0;
/// `probes` of a service.
pub const MAX_PROBES: usize = 16;
/// `probes[].ready_after`.
pub const MAX_READY_AFTER: u32 = 1000;
/// `rate_limits` of a service.
pub const MAX_RATE_LIMITS: usize = 64;
/// `rate_limits[].burst`.
pub const MAX_BURST: u64 = 1_000_000;
/// Expressions in `schedule.cron`.
pub const MAX_CRONS: usize = 32;
/// Bytes of one `schedule.cron` expression.
pub const MAX_CRON_BYTES: usize = 256;

/// A value past one of the limits: the path of the field (`nodes`, `env[3]`, `resources.gpu`) and
/// what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct LimitError {
    pub field: String,
    pub message: String,
}

type Checked = Result<(), LimitError>;

fn fail(field: impl Into<String>, message: impl Into<String>) -> Checked {
    Err(LimitError { field: field.into(), message: message.into() })
}

/// The message for a whole number outside `min..=max`; the parser's number reader says the same.
pub(crate) fn out_of_range(min: i64, max: i64, found: i64) -> String {
    if found < min {
        format!("must be at least {min}, found {found}")
    } else if max >= i64::from(u32::MAX) {
        format!("must be at most {max}, found {found}")
    } else {
        format!("must be between {min} and {max}, found {found}")
    }
}

impl Configuration {
    /// Checks every count and size against the limits above; `Err` names the first field past one.
    pub fn check_limits(&self) -> Result<(), LimitError> {
        if let Some(s) = self.schedule() {
            s.check()?;
        }
        match self {
            Self::Task(t) => {
                number(&"nodes", u64::from(t.nodes), 1, MAX_NODES.into())?;
                groups::task(t)?;
                run(&Run {
                    name: t.name.as_deref(),
                    strings: &[
                        ("image", &t.image),
                        ("working_dir", &t.working_dir),
                        ("python", &t.python),
                        ("user", &t.user),
                        ("entrypoint", &t.entrypoint),
                        ("shell", &t.shell),
                    ],
                    commands: ("commands", &t.commands),
                    env: &t.env,
                    ports: &t.ports,
                    durations: &[("max_duration", t.max_duration_secs), ("stop_duration", t.stop_duration_secs)],
                    resources: &t.resources,
                    priority: t.priority,
                    volumes: &t.volumes,
                    repos: &t.repos,
                    files: &t.files,
                    retry: t.retry.as_ref(),
                    utilization: t.utilization_policy.as_ref(),
                    provisioning: &t.provisioning,
                })
            }
            Self::Service(s) => {
                service(s)?;
                groups::service(s)?;
                run(&Run {
                    name: s.name.as_deref(),
                    strings: &[
                        ("image", &s.image),
                        ("working_dir", &s.working_dir),
                        ("python", &s.python),
                        ("user", &s.user),
                        ("entrypoint", &s.entrypoint),
                        ("shell", &s.shell),
                    ],
                    commands: ("commands", &s.commands),
                    env: &s.env,
                    ports: &[],
                    durations: &[("max_duration", s.max_duration_secs), ("stop_duration", s.stop_duration_secs)],
                    resources: &s.resources,
                    priority: s.priority,
                    volumes: &s.volumes,
                    repos: &s.repos,
                    files: &s.files,
                    retry: s.retry.as_ref(),
                    utilization: s.utilization_policy.as_ref(),
                    provisioning: &s.provisioning,
                })
            }
            Self::DevEnvironment(d) => run(&Run {
                name: d.name.as_deref(),
                strings: &[
                    ("image", &d.image),
                    ("working_dir", &d.working_dir),
                    ("python", &d.python),
                    ("user", &d.user),
                    ("shell", &d.shell),
                    ("version", &d.version),
                ],
                commands: ("init", &d.init),
                env: &d.env,
                ports: &d.ports,
                durations: &[
                    ("max_duration", d.max_duration_secs),
                    ("stop_duration", d.stop_duration_secs),
                    ("inactivity_duration", d.inactivity_duration_secs),
                ],
                resources: &d.resources,
                priority: d.priority,
                volumes: &d.volumes,
                repos: &d.repos,
                files: &d.files,
                retry: d.retry.as_ref(),
                utilization: d.utilization_policy.as_ref(),
                provisioning: &d.provisioning,
            }),
            Self::Fleet(f) => f.check_limits(),
            Self::Volume(v) => v.check_limits(),
        }
    }
}

impl VolumeConfig {
    /// The volume's part of [`Configuration::check_limits`].
    pub fn check_limits(&self) -> Checked {
        name("name", self.name.as_deref())?;
        for (field, value) in
            [("region", &self.region), ("availability_zone", &self.availability_zone), ("volume_id", &self.volume_id)]
        {
            string(&field, value.as_deref())?;
        }
        if let Some(size) = self.size {
            memory_range("size", &Range { min: Some(size), max: None }, MAX_DISK_BYTES)?;
        }
        count("tags", self.tags.len(), MAX_LIST_ITEMS, "tags")?;
        for (k, v) in &self.tags {
            string(&"tags", Some(k))?;
            string(&"tags", Some(v))?;
        }
        Ok(())
    }
}

impl FleetConfig {
    /// The fleet's part of [`Configuration::check_limits`].
    pub fn check_limits(&self) -> Result<(), LimitError> {
        name("name", self.name.as_deref())?;
        if let Some(n) = &self.nodes {
            for (key, v) in [("min", Some(n.min)), ("target", Some(n.target)), ("max", n.max)] {
                if let Some(v) = v {
                    number(&format_args!("nodes.{key}"), v.into(), 0, MAX_FLEET_NODES.into())?;
                }
            }
            if n.target < n.min || n.max.is_some_and(|m| m < n.target) {
                return fail("nodes", "need `min` <= `target` <= `max`");
            }
        }
        blocks("blocks", self.blocks)?;
        if let Some(r) = &self.resources {
            resources(r)?;
        }
        if let Some(ssh) = &self.ssh_config {
            count("ssh_config.hosts", ssh.hosts.len(), MAX_FLEET_NODES as usize, "hosts")?;
            for (key, v) in [("user", &ssh.user), ("identity_file", &ssh.identity_file), ("network", &ssh.network)] {
                string(&format_args!("ssh_config.{key}"), v.as_deref())?;
            }
            for (i, h) in ssh.hosts.iter().enumerate() {
                let field = |key: &str| format!("ssh_config.hosts[{i}].{key}");
                string(&field("hostname"), Some(&h.hostname))?;
                for (key, v) in
                    [("user", &h.user), ("identity_file", &h.identity_file), ("internal_ip", &h.internal_ip)]
                {
                    string(&field(key), v.as_deref())?;
                }
                if let Some(b) = h.blocks {
                    blocks(&field("blocks"), b)?;
                }
            }
        }
        env(&self.env)?;
        if let Some(r) = &self.retry {
            retry(r)?;
        }
        provisioning(&self.provisioning)
    }
}

/// The fields every run type has, borrowed from a task, a service or a dev environment.
struct Run<'a> {
    name: Option<&'a str>,
    strings: &'a [(&'a str, &'a Option<String>)],
    /// `commands`, or a dev environment's `init` (which holds its `setup` too).
    commands: (&'a str, &'a [String]),
    env: &'a [EnvVar],
    ports: &'a [PortMapping],
    durations: &'a [(&'a str, Option<u64>)],
    resources: &'a ResourcesSpec,
    priority: Option<u8>,
    volumes: &'a [VolumeMount],
    repos: &'a [RepoSpec],
    files: &'a [FileMapping],
    retry: Option<&'a RetrySpec>,
    utilization: Option<&'a UtilizationPolicy>,
    provisioning: &'a Provisioning,
}

/// An upload a client names: a digest that can name a file, a size within [`MAX_UPLOAD_BYTES`].
fn upload_ref(field: &dyn std::fmt::Display, upload: Option<&super::UploadRef>) -> Checked {
    let Some(u) = upload else { return Ok(()) };
    if !super::UploadRef::is_digest(&u.sha256) {
        return Err(LimitError {
            field: field.to_string(),
            message: "the upload's sha256 must be 64 lowercase hex digits".into(),
        });
    }
    if u.size > MAX_UPLOAD_BYTES {
        return Err(LimitError {
            field: field.to_string(),
            message: format!("an upload is at most {} (2 GiB), found {} bytes", MAX_UPLOAD_BYTES, u.size),
        });
    }
    Ok(())
}

fn run(r: &Run) -> Checked {
    name("name", r.name)?;
    for (field, value) in r.strings {
        string(field, value.as_deref())?;
    }
    commands(r.commands.0, r.commands.1)?;
    env(r.env)?;
    count("ports", r.ports.len(), MAX_PORTS, "ports")?;
    for (field, secs) in r.durations {
        duration(field, *secs)?;
    }
    resources(r.resources)?;
    if let Some(p) = r.priority {
        number(&"priority", p.into(), 0, MAX_PRIORITY.into())?;
    }
    count("volumes", r.volumes.len(), MAX_VOLUMES, "volumes")?;
    for (i, v) in r.volumes.iter().enumerate() {
        match v {
            VolumeMount::Instance(m) => string(&format_args!("volumes[{i}]"), Some(&m.instance_path))?,
            VolumeMount::Named(m) => {
                count(&format!("volumes[{i}].name"), m.names.len(), MAX_LIST_ITEMS, "names")?;
                for n in &m.names {
                    string(&format_args!("volumes[{i}].name"), Some(n))?;
                }
            }
        }
        string(&format_args!("volumes[{i}]"), Some(v.path()))?;
    }
    count("repos", r.repos.len(), MAX_REPOS, "repo (as in dstack)")?;
    for (i, repo) in r.repos.iter().enumerate() {
        for v in [&repo.local_path, &repo.url, &repo.branch, &repo.hash] {
            string(&format_args!("repos[{i}]"), v.as_deref())?;
        }
        string(&format_args!("repos[{i}].path"), Some(&repo.path))?;
        upload_ref(&format_args!("repos[{i}]"), repo.upload.as_ref())?;
    }
    count("files", r.files.len(), MAX_FILES, "files")?;
    for (i, f) in r.files.iter().enumerate() {
        string(&format_args!("files[{i}]"), Some(&f.local_path))?;
        string(&format_args!("files[{i}]"), Some(&f.path))?;
        upload_ref(&format_args!("files[{i}]"), f.upload.as_ref())?;
    }
    if let Some(retry_spec) = r.retry {
        retry(retry_spec)?;
    }
    if let Some(u) = r.utilization {
        number(&"utilization_policy.min_gpu_utilization", u.min_gpu_utilization.into(), 0, 100)?;
        duration("utilization_policy.time_window", Some(u.time_window_secs))?;
        if u.time_window_secs < MIN_UTILIZATION_WINDOW_SECS {
            return fail("utilization_policy.time_window", "must be at least 5m");
        }
    }
    provisioning(r.provisioning)
}

fn service(s: &ServiceConfig) -> Checked {
    number(&"port", s.port.into(), 1, u16::MAX.into())?;
    if s.replicas.max.is_none() {
        return fail("replicas", "give the maximum number of replicas, e.g. `0..4`");
    }
    range_of("replicas", &s.replicas, MAX_REPLICAS, "replicas")?;
    if let Some(sc) = &s.scaling {
        if !(sc.target > 0.0 && sc.target <= MAX_SCALING_TARGET) {
            return fail(
                "scaling.target",
                format!("must be more than 0 and at most {MAX_SCALING_TARGET} requests a second, found {}", sc.target),
            );
        }
        duration("scaling.window", sc.window_secs)?;
        duration("scaling.scale_up_delay", Some(sc.scale_up_delay_secs))?;
        duration("scaling.scale_down_delay", Some(sc.scale_down_delay_secs))?;
    }
    if let Some(m) = &s.model {
        string(&"model.name", Some(&m.name))?;
        string(&"model.prefix", Some(&m.prefix))?;
    }
    if let Some(probes) = &s.probes {
        count("probes", probes.len(), MAX_PROBES, "probes")?;
        for (i, p) in probes.iter().enumerate() {
            probe(i, p)?;
        }
    }
    count("rate_limits", s.rate_limits.len(), MAX_RATE_LIMITS, "rate limits")?;
    for (i, r) in s.rate_limits.iter().enumerate() {
        rate_limit(i, r)?;
    }
    Ok(())
}

fn probe(i: usize, p: &ProbeSpec) -> Checked {
    let field = |key: &str| format!("probes[{i}].{key}");
    if p.url.len() > 2048 {
        return fail(field("url"), "must be at most 2048 characters");
    }
    count(&field("headers"), p.headers.len(), 16, "headers")?;
    for (name, value) in &p.headers {
        if name.len() > 256 || value.len() > 2048 {
            return fail(field("headers"), "a header needs a name (1 to 256 characters) and a value (1 to 2048)");
        }
    }
    if p.body.as_ref().is_some_and(|b| b.len() > 2048) {
        return fail(field("body"), "must be 1 to 2048 characters");
    }
    for (key, secs) in [("timeout", p.timeout_secs), ("interval", p.interval_secs)] {
        if secs < 1 {
            return fail(field(key), "must be at least 1s");
        }
        duration(&field(key), Some(secs))?;
    }
    number(&field("ready_after"), p.ready_after.into(), 1, MAX_READY_AFTER.into())
}

fn rate_limit(i: usize, r: &RateLimit) -> Checked {
    let field = |key: &str| format!("rate_limits[{i}].{key}");
    string(&field("prefix"), Some(&r.prefix))?;
    if let super::RateLimitKey::Header(h) = &r.key {
        string(&field("key.header"), Some(h))?;
    }
    if !(1.0 / 60.0..=(i64::MAX / 60) as f64).contains(&r.rps) {
        return fail(field("rps"), "must be at least 1/60 (one request a minute)");
    }
    number(&field("burst"), r.burst, 0, MAX_BURST)
}

fn commands(field: &str, lines: &[String]) -> Checked {
    count(field, lines.len(), MAX_COMMANDS, "lines")?;
    let bytes = lines.iter().fold(0usize, |n, l| n.saturating_add(l.len()).saturating_add(1));
    if bytes > MAX_COMMANDS_BYTES {
        return fail(
            field,
            format!(
                "{} in all, more than the limit of {}: put the commands in a script (in the image or the repo) and run that",
                size(bytes),
                size(MAX_COMMANDS_BYTES)
            ),
        );
    }
    Ok(())
}

fn env(vars: &[EnvVar]) -> Checked {
    count("env", vars.len(), MAX_ENV_VARS, "variables")?;
    let mut total = 0usize;
    for (i, v) in vars.iter().enumerate() {
        let value = v.value.as_deref().unwrap_or_default();
        if v.name.len() > MAX_STRING_BYTES {
            return fail(format!("env[{i}]"), format!("a variable name is at most {}", size(MAX_STRING_BYTES)));
        }
        if value.len() > MAX_ENV_VALUE_BYTES {
            return fail(
                format!("env[{i}]"),
                format!(
                    "the value of `{}` is {}, more than the limit of {}: put it in a file",
                    v.name,
                    size(value.len()),
                    size(MAX_ENV_VALUE_BYTES)
                ),
            );
        }
        total = total.saturating_add(v.name.len() + value.len() + 2);
    }
    if total > MAX_ENV_BYTES {
        return fail("env", format!("{} in all, more than the limit of {}", size(total), size(MAX_ENV_BYTES)));
    }
    Ok(())
}

fn resources(r: &ResourcesSpec) -> Checked {
    let CpuSpec { count: cpus, .. } = &r.cpu;
    range_of("resources.cpu", cpus, MAX_CPUS, "CPUs")?;
    memory_range("resources.memory", &r.memory, MAX_MEMORY_BYTES)?;
    if let Some(shm) = r.shm_size {
        memory_range("resources.shm_size", &Range::exactly(shm), MAX_MEMORY_BYTES)?;
    }
    if let Some(disk) = &r.disk {
        memory_range("resources.disk", disk, MAX_DISK_BYTES)?;
    }
    if let Some(g) = &r.gpu {
        gpu(g)?;
    }
    Ok(())
}

fn gpu(g: &GpuSpec) -> Checked {
    range_of("resources.gpu.count", &g.count, MAX_GPUS, "GPUs")?;
    count("resources.gpu.name", g.names.len(), MAX_LIST_ITEMS, "names")?;
    for n in &g.names {
        string(&"resources.gpu.name", Some(n))?;
    }
    if let Some(m) = &g.memory {
        memory_range("resources.gpu.memory", m, MAX_MEMORY_BYTES)?;
    }
    if let Some(m) = &g.total_memory {
        memory_range("resources.gpu.total_memory", m, MAX_MEMORY_BYTES)?;
    }
    string(&"resources.gpu.compute_capability", g.compute_capability.as_deref())
}

fn retry(r: &RetrySpec) -> Checked {
    count("retry.on_events", r.on_events.len(), MAX_LIST_ITEMS, "events")?;
    duration("retry.duration", r.duration_secs)
}

fn provisioning(p: &Provisioning) -> Checked {
    count("fleets", p.fleets.len(), MAX_LIST_ITEMS, "fleets")?;
    for (i, f) in p.fleets.iter().enumerate() {
        fleet_ref(&format!("fleets[{i}]"), f)?;
    }
    count("instances", p.instances.len(), MAX_LIST_ITEMS, "instances")?;
    for (i, sel) in p.instances.iter().enumerate() {
        let field = format!("instances[{i}]");
        match sel {
            InstanceSelector::Name(s) | InstanceSelector::Hostname(s) => string(&field, Some(s))?,
            InstanceSelector::FleetInstance { fleet, instance } => {
                fleet_ref(&field, fleet)?;
                number(&format_args!("{field}.instance"), (*instance).into(), 0, MAX_FLEET_NODES.into())?;
            }
        }
    }
    for (field, list) in [
        ("backends", &p.backends),
        ("regions", &p.regions),
        ("availability_zones", &p.availability_zones),
        ("instance_types", &p.instance_types),
    ] {
        count(field, list.len(), MAX_LIST_ITEMS, "items")?;
        for (i, s) in list.iter().enumerate() {
            string(&format_args!("{field}[{i}]"), Some(s))?;
        }
    }
    string(&"reservation", p.reservation.as_deref())?;
    if let Some(price) = p.max_price
        && !(price > 0.0 && price <= MAX_PRICE)
    {
        return fail(
            "max_price",
            format!("must be more than 0 and at most {MAX_PRICE} dollars an hour, found {price}"),
        );
    }
    if let Some(IdleDuration::Secs(s)) = p.idle_duration {
        duration("idle_duration", Some(s))?;
    }
    count("tags", p.tags.len(), MAX_LIST_ITEMS, "tags")?;
    for (k, v) in &p.tags {
        // AWS's limits, where tags end up.
        if k.is_empty() || k.len() > 128 || v.len() > 256 {
            return fail(format!("tags.{k}"), "a tag is a name of 1 to 128 characters and a value of at most 256");
        }
    }
    Ok(())
}

fn fleet_ref(field: &str, f: &FleetRef) -> Checked {
    if let Some(p) = &f.project {
        name(field, Some(p))?;
    }
    string(&field, Some(&f.name))
}

fn blocks(field: &str, b: Blocks) -> Checked {
    match b {
        Blocks::Auto => Ok(()),
        Blocks::Count(n) => number(&field, n.into(), 1, MAX_BLOCKS.into()),
    }
}

/// A run, fleet or project name (dstack's rule).
fn name(field: &str, name: Option<&str>) -> Checked {
    match name {
        Some(n) if !is_valid_name(n) => fail(
            field,
            format!(
                "\"{}\" is not a valid name: use 2 to 41 lowercase letters, digits and hyphens, starting with a letter",
                shorten(n)
            ),
        ),
        _ => Ok(()),
    }
}

fn number(field: &dyn std::fmt::Display, v: u64, min: u64, max: u64) -> Checked {
    if v < min || v > max {
        let clamp = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        return fail(field.to_string(), out_of_range(clamp(min), clamp(max), clamp(v)));
    }
    Ok(())
}

fn count(field: &str, n: usize, max: usize, what: &str) -> Checked {
    if n > max {
        return fail(field, format!("at most {max} {what}, found {n}"));
    }
    Ok(())
}

fn range_of(field: &str, r: &Range<u32>, max: u32, what: &str) -> Checked {
    if r.min.is_some_and(|v| v > max) || r.max.is_some_and(|v| v > max) {
        return fail(field, format!("at most {max} {what}, found {r}"));
    }
    if let (Some(a), Some(b)) = (r.min, r.max)
        && a > b
    {
        return fail(field, format!("range {r} is backwards"));
    }
    Ok(())
}

fn memory_range(field: &str, r: &Range<Memory>, max: u64) -> Checked {
    if r.min.is_some_and(|v| v.0 > max) || r.max.is_some_and(|v| v.0 > max) {
        return fail(
            field,
            format!("must be at most {}, found {}", format_memory(Memory(max)), format_range(r, format_memory)),
        );
    }
    Ok(())
}

fn duration(field: &str, secs: Option<u64>) -> Checked {
    match secs {
        Some(s) if s > MAX_DURATION_SECS => {
            fail(field, format!("must be at most {}, found {}", secs_text(MAX_DURATION_SECS), secs_text(s)))
        }
        _ => Ok(()),
    }
}

fn string(field: &dyn std::fmt::Display, s: Option<&str>) -> Checked {
    match s {
        Some(s) if s.len() > MAX_STRING_BYTES => fail(
            field.to_string(),
            format!("{} long, more than the limit of {}", size(s.len()), size(MAX_STRING_BYTES)),
        ),
        _ => Ok(()),
    }
}

/// The first characters of a long value, for a message.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(48) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// `65536` → "64 KiB".
pub(crate) fn size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else if bytes >= KIB {
        format!("{:.1} KiB", bytes as f64 / KIB as f64)
    } else {
        format!("{bytes} bytes")
    }
}

/// A number of seconds in the largest unit it is a whole number of: `365d`, `90m`, `45s`.
fn secs_text(s: u64) -> String {
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s >= n && s.is_multiple_of(n) {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

mod groups;
pub use groups::MAX_GROUPS;

#[cfg(test)]
mod tests;
