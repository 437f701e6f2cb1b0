//! The configuration language: dstack-compatible `.dstack.yml` text → typed specs.
//!
//! [`parse`] reads one file into a [`Configuration`]: a task, a service, a dev environment or a fleet.
//! A file that dstack 0.22.5 accepts is either read into the same meaning, or refused with a
//! [`ConfigError`] whose `unsupported` flag is set and whose message names the field and why Corral
//! does not have it. Every error names the file, line, column and the field path (`resources.gpu`,
//! `env[2]`), and says what to write instead. The per-field decisions are listed in `docs/config.md`.
//!
//! Layout: `config/yaml.rs` builds a tree with positions from `yaml-rust2`'s events; `fields.rs` reads
//! typed values out of it; `values.rs` and `resources.rs` hold the small syntaxes (durations, env,
//! ports, GPU specs); `run.rs`, `service.rs` and `fleet.rs` build each configuration type; `common.rs`
//! and `mounts.rs` hold the parts they share.
//!
//! What the rest of Corral must know:
//! - [`EnvVar::value`] `None` is dstack's `- HF_TOKEN`: the CLI fills it from its own environment at
//!   apply time (and refuses to submit when it is unset there).
//! - `python: "3.12"` is kept as the version string in `python`; with no `image`, Corral picks its own
//!   base image for that Python (and with `nvcc: true`, one that has the CUDA compiler).
//! - Strings may hold dstack interpolations (`${{ env.NAME }}`, `${{ secrets.name }}`,
//!   `${{ dstack.node_rank }}`); they are kept as written, for the CLI and the coordinator to expand.
//! - Durations are seconds. `max_duration_secs: None` is no limit; `stop_duration_secs: None` is no
//!   limit (`off`) and is `Some(300)` when the file says nothing, dstack's default.

mod common;
mod fields;
mod fleet;
mod groups;
pub mod limits;
mod mounts;
mod resources;
mod run;
mod schedule;
mod service;
mod values;
mod volume;
mod yaml;

use serde::{Deserialize, Serialize};

pub use common::{
    CreationPolicy, FleetRef, IdleDuration, InstanceSelector, Provisioning, RegistryAuth, RetryEvent, RetrySpec,
    SpotPolicy, UtilizationPolicy,
};
pub use fleet::{Blocks, FleetConfig, FleetNodes, Placement, SshConfig, SshHost, SshKey, SshProxy};
pub use groups::{
    GroupRef, NodeGroup, RankGroup, RefMember, ReplicaGroup, RouterType, group_refs, substitute_node_addresses,
};
pub use mounts::{FileMapping, InstanceMount, NamedMount, RepoExistsAction, RepoSpec, UploadRef, VolumeMount};
pub use resources::{
    TB, format_gpu, format_memory, format_range, parse_count_range, parse_cpu, parse_gpu, parse_memory,
    parse_memory_range,
};
pub use run::{DevEnvironmentConfig, Ide, StartupOrder, StopCriteria, TaskConfig};
pub use schedule::{Schedule, cron as parse_cron};
pub use service::{HttpMethod, ModelSpec, ProbeSpec, RateLimit, RateLimitKey, ScalingSpec, ServiceConfig};
pub use values::{PYTHON_VERSIONS, is_valid_name, parse_duration, parse_port_mapping};
pub use volume::{VolumeBackend, VolumeConfig};

use fields::{Issue, Object, Res};
use yaml::Value;

/// One parsed configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "spec", rename_all = "kebab-case")]
pub enum Configuration {
    Task(TaskConfig),
    Service(ServiceConfig),
    DevEnvironment(DevEnvironmentConfig),
    Fleet(FleetConfig),
    /// A named volume (`corral apply` registers or creates it; runs mount it by name).
    Volume(VolumeConfig),
}

/// What [`Configuration::redacted`] puts in place of a secret.
pub const REDACTED: &str = "<redacted>";

impl Configuration {
    /// The configuration as the API shows it: registry passwords replaced by `<redacted>` (the
    /// coordinator keeps them to pull the image; nobody reads them back).
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        let auth = match &mut c {
            Self::Task(t) => t.registry_auth.as_mut(),
            Self::Service(s) => s.registry_auth.as_mut(),
            Self::DevEnvironment(d) => d.registry_auth.as_mut(),
            _ => None,
        };
        if let Some(a) = auth {
            a.password = REDACTED.to_owned();
        }
        c
    }

    /// The `type:` value this configuration was written with.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Task(_) => "task",
            Self::Service(_) => "service",
            Self::DevEnvironment(_) => "dev-environment",
            Self::Fleet(_) => "fleet",
            Self::Volume(_) => "volume",
        }
    }

    /// The `schedule:` field of a run configuration: when the coordinator starts it by itself.
    pub fn schedule(&self) -> Option<&Schedule> {
        match self {
            Self::Task(c) => c.schedule.as_ref(),
            Self::Service(c) => c.schedule.as_ref(),
            Self::DevEnvironment(c) => c.schedule.as_ref(),
            _ => None,
        }
    }

    /// The `name:` field, when the file gives one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Task(c) => c.name.as_deref(),
            Self::Service(c) => c.name.as_deref(),
            Self::DevEnvironment(c) => c.name.as_deref(),
            Self::Fleet(c) => c.name.as_deref(),
            Self::Volume(c) => c.name.as_deref(),
        }
    }
}

/// The `${{ … }}` interpolations in `s`, dstack's grammar: each one's byte range and what is
/// inside the braces, trimmed. `$${{` is an escape; an unclosed one ends the list.
pub fn interpolations(s: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = s[from..].find("${{") {
        let start = from + pos;
        from = start + 3;
        if start > 0 && s.as_bytes()[start - 1] == b'$' {
            continue;
        }
        let Some(close) = s[from..].find("}}") else { break };
        let end = from + close + 2;
        out.push((start..end, s[from..from + close].trim()));
        from = end;
    }
    out
}

/// `s` with each `$${{` (dstack's escape) turned into the literal `${{` it stands for: what the
/// container gets once the interpolations are expanded.
pub fn unescape_interpolations(s: &str) -> String {
    if s.contains("$${{") { s.replace("$${{", "${{") } else { s.to_owned() }
}

/// Whether `s` has a `${{` that is neither an escape (`$${{`) nor closed by `}}`.
pub fn has_unclosed_interpolation(s: &str) -> bool {
    let opened = s.match_indices("${{").filter(|(i, _)| *i == 0 || s.as_bytes()[i - 1] != b'$').count();
    opened > interpolations(s).len()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    /// `None`: dstack's `- HF_TOKEN` form, the value is taken from the environment of `corral apply`.
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The port on the user's machine (`corral apply` forwards it); `None` for `"*:8000"`, any free port.
    pub local: Option<u16>,
    pub container: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The path of the field at fault: `resources.gpu`, `env[2]`, `volumes[0].name`; `yaml` for a syntax
    /// error, `configuration` for the document as a whole.
    pub field: String,
    pub message: String,
    /// The file is valid for dstack, but uses something Corral deliberately does not have.
    pub unsupported: bool,
}

/// The configuration types dstack has, and what Corral says about the ones it does not take.
const TYPES: [&str; 7] = ["task", "service", "dev-environment", "fleet", "gateway", "volume", "preset"];

/// Parses one `.dstack.yml` file. `file` is used in error messages only.
pub fn parse(text: &str, file: &str) -> Result<Configuration, ConfigError> {
    let doc = yaml::load(text).map_err(|issue| issue.into_error(file))?;
    let configuration = parse_tree(&doc).map_err(|issue| issue.into_error(file))?;
    // The limits are checked on the typed configuration, the same check the coordinator runs on
    // what it is sent; the field path it names leads back to where the file wrote it.
    configuration.check_limits().map_err(|e| {
        let mark = yaml::locate(&doc, &e.field).mark;
        Issue::invalid(mark, e.field, e.message).into_error(file)
    })?;
    Ok(configuration)
}

/// Where `text` writes the field `path` (`resources.gpu`, `env[2]`, `groups[1].image`): its line and
/// column, or its deepest parent's when the field is left to its default. `None` when the text is
/// not YAML.
pub fn position_of(text: &str, path: &str) -> Option<(usize, usize)> {
    let doc = yaml::load(text).ok()?;
    let mark = yaml::locate(&doc, path).mark;
    Some((mark.line, mark.column))
}

fn parse_tree(doc: &yaml::Node) -> Res<Configuration> {
    let Value::Map(entries) = &doc.value else {
        let message = if doc.is_null() {
            "the file is empty; a configuration starts with `type: task` (or service, dev-environment, fleet)"
                .to_owned()
        } else {
            format!("expected a mapping of fields (`type: task`, ...), found {}", doc.kind())
        };
        return Err(Issue::invalid(doc.mark, "configuration", message));
    };
    let Some((_, type_node)) = entries.iter().find(|(k, _)| k.text == "type") else {
        return Err(Issue::invalid(
            doc.mark,
            "type",
            "missing required field; set `type:` to task, service, dev-environment or fleet",
        ));
    };
    let kind = fields::choice(type_node, "type", &TYPES)?;
    let unsupported = |why: &str| Err(Issue::unsupported(type_node.mark, "type", why));
    match kind {
        "task" => run::task(doc).map(Configuration::Task),
        "service" => service::service(doc).map(Configuration::Service),
        "dev-environment" => run::dev_environment(doc).map(Configuration::DevEnvironment),
        "fleet" => fleet::fleet(doc).map(Configuration::Fleet),
        "gateway" => unsupported("`gateway` is not needed: the Corral coordinator proxies services itself"),
        "volume" => volume::volume(doc).map(Configuration::Volume),
        _ => unsupported("`preset` (dstack's model endpoint presets) is not supported by Corral"),
    }
}

/// The top-level mapping of a `what` configuration, whose fields must be among `known`.
pub(crate) fn object<'a>(doc: &'a yaml::Node, what: &str, known: &[&str]) -> Res<Object<'a>> {
    Object::new(doc, "", what, known)
}

#[cfg(test)]
mod tests;
