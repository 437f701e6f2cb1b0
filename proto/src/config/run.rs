//! Run configurations: the fields tasks, services and dev environments share, and the task and
//! dev-environment types themselves (services are in `service.rs`).

use serde::{Deserialize, Serialize};

use crate::resources::ResourcesSpec;

use super::common::{self, Provisioning, RegistryAuth, RetrySpec, UtilizationPolicy, each};
use super::fields::{Issue, Object, Res, bounded, choice, string};
use super::limits::MAX_PRIORITY;
use super::mounts::{self, FileMapping, RepoSpec, VolumeMount};
use super::resources::resources;
use super::values::{Duration, duration, env, off_duration, ports, python_version, resource_name};
use super::yaml::Node;
use super::{EnvVar, PortMapping};

/// Fields every run configuration has (dstack's `BaseRunConfiguration` and `ProfileParams`).
pub(crate) const RUN_FIELDS: [&str; 42] = [
    "type",
    "name",
    "image",
    "user",
    "privileged",
    "entrypoint",
    "working_dir",
    "home_dir",
    "registry_auth",
    "python",
    "nvcc",
    "single_branch",
    "env",
    "shell",
    "resources",
    "priority",
    "volumes",
    "docker",
    "repos",
    "files",
    "dstack",
    "setup",
    "backends",
    "regions",
    "availability_zones",
    "instance_types",
    "reservation",
    "spot_policy",
    "retry",
    "max_duration",
    "stop_duration",
    "max_price",
    "creation_policy",
    "idle_duration",
    "utilization_policy",
    "startup_order",
    "stop_criteria",
    "schedule",
    "fleets",
    "instances",
    "tags",
    "backend_options",
];

/// dstack's default `stop_duration`.
const DEFAULT_STOP_DURATION_SECS: u64 = 300;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartupOrder {
    #[default]
    Any,
    MasterFirst,
    WorkersFirst,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopCriteria {
    /// The run is done when every node's job is.
    #[default]
    AllDone,
    /// The run is done when the master node's job is.
    MasterDone,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskConfig {
    pub name: Option<String>,
    pub image: Option<String>,
    pub commands: Vec<String>,
    pub env: Vec<EnvVar>,
    pub working_dir: Option<String>,
    pub ports: Vec<PortMapping>,
    /// `None`: no limit.
    pub max_duration_secs: Option<u64>,
    /// Grace between SIGTERM and SIGKILL; `None`: wait as long as it takes (`off`).
    pub stop_duration_secs: Option<u64>,
    pub resources: ResourcesSpec,
    /// Nodes of a multi-node task; 1 for a single node.
    pub nodes: u32,
    pub priority: Option<u8>,
    /// `"3.12"`: run in Corral's base image with this Python (only when `image` is unset).
    pub python: Option<String>,
    /// Use the base image that has the CUDA compiler.
    pub nvcc: bool,
    /// Docker inside the container: dstack's docker-in-docker image, privileged, `dockerd`
    /// started before the commands.
    pub docker: bool,
    /// The coordinator's API is made known inside the run (its URL, project and CA; no token).
    pub dstack: bool,
    pub user: Option<String>,
    pub privileged: bool,
    pub entrypoint: Option<String>,
    /// `sh`, `bash`, or an absolute path; `None`: `/bin/sh` with an image, `/bin/bash` without.
    pub shell: Option<String>,
    pub registry_auth: Option<RegistryAuth>,
    pub volumes: Vec<VolumeMount>,
    pub repos: Vec<RepoSpec>,
    pub files: Vec<FileMapping>,
    pub retry: Option<RetrySpec>,
    pub utilization_policy: Option<UtilizationPolicy>,
    pub startup_order: StartupOrder,
    pub stop_criteria: StopCriteria,
    pub provisioning: Provisioning,
    /// When the coordinator starts the run by itself (UTC); `None`: when applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<super::Schedule>,
    /// Heterogeneous nodes (`groups:`): the gang's ranks, group by group, each with its group's
    /// commands, resources and ports ([`TaskConfig::for_rank`]); `nodes` is their total. Empty:
    /// every rank runs `commands` with `resources`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<super::NodeGroup>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ide {
    Vscode,
    Cursor,
    Windsurf,
    Zed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DevEnvironmentConfig {
    pub name: Option<String>,
    pub image: Option<String>,
    pub env: Vec<EnvVar>,
    pub working_dir: Option<String>,
    pub ports: Vec<PortMapping>,
    pub resources: ResourcesSpec,
    pub priority: Option<u8>,
    /// `None`: no IDE, SSH only.
    pub ide: Option<Ide>,
    pub version: Option<String>,
    /// Run at startup; dstack's deprecated `setup` comes first.
    pub init: Vec<String>,
    /// Stop after this long without an SSH/IDE connection; `None`: never.
    pub inactivity_duration_secs: Option<u64>,
    pub max_duration_secs: Option<u64>,
    pub stop_duration_secs: Option<u64>,
    pub python: Option<String>,
    pub nvcc: bool,
    pub docker: bool,
    pub dstack: bool,
    pub user: Option<String>,
    pub privileged: bool,
    pub shell: Option<String>,
    pub registry_auth: Option<RegistryAuth>,
    pub volumes: Vec<VolumeMount>,
    pub repos: Vec<RepoSpec>,
    pub files: Vec<FileMapping>,
    pub retry: Option<RetrySpec>,
    pub utilization_policy: Option<UtilizationPolicy>,
    pub provisioning: Provisioning,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<super::Schedule>,
}

impl DevEnvironmentConfig {
    /// What the dev environment's one job runs: `init`, then it stays up (until stopped, its
    /// `max_duration`, or its `inactivity_duration`) for the user to SSH, exec or attach into.
    pub fn as_task(&self) -> TaskConfig {
        let mut commands = self.init.clone();
        commands.push("while :; do sleep 3600; done".to_owned());
        TaskConfig {
            name: self.name.clone(),
            image: self.image.clone(),
            commands,
            env: self.env.clone(),
            working_dir: self.working_dir.clone(),
            ports: self.ports.clone(),
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
            entrypoint: None,
            shell: self.shell.clone(),
            registry_auth: self.registry_auth.clone(),
            volumes: self.volumes.clone(),
            repos: self.repos.clone(),
            files: self.files.clone(),
            retry: self.retry.clone(),
            utilization_policy: self.utilization_policy.clone(),
            startup_order: StartupOrder::Any,
            stop_criteria: StopCriteria::AllDone,
            provisioning: self.provisioning.clone(),
            schedule: self.schedule.clone(),
            groups: Vec::new(),
        }
    }
}

/// The shared fields, read and checked once for every run type.
pub(crate) struct Common {
    pub name: Option<String>,
    pub image: Option<String>,
    pub user: Option<String>,
    pub privileged: bool,
    pub entrypoint: Option<String>,
    pub working_dir: Option<String>,
    pub registry_auth: Option<RegistryAuth>,
    pub python: Option<String>,
    pub nvcc: bool,
    pub docker: bool,
    pub dstack: bool,
    pub env: Vec<EnvVar>,
    pub shell: Option<String>,
    pub resources: ResourcesSpec,
    pub priority: Option<u8>,
    pub volumes: Vec<VolumeMount>,
    pub repos: Vec<RepoSpec>,
    pub files: Vec<FileMapping>,
    pub setup: Vec<String>,
    pub retry: Option<RetrySpec>,
    pub max_duration_secs: Option<u64>,
    pub stop_duration_secs: Option<u64>,
    pub utilization_policy: Option<UtilizationPolicy>,
    pub startup_order: StartupOrder,
    pub stop_criteria: StopCriteria,
    pub provisioning: Provisioning,
    pub schedule: Option<super::Schedule>,
}

/// Reads the fields in [`RUN_FIELDS`], refusing those Corral does not have.
pub(crate) fn common(o: &Object) -> Res<Common> {
    // `home_dir` and `single_branch` have no effect in dstack 0.22.5; `backend_options` apply to
    // vast.ai offers only, which Corral never has. They are accepted and ignored.
    let image = o.string("image")?;
    let python = o.map("python", python_version)?;
    if image.is_some() && python.is_some() {
        return Err(Issue::invalid(
            o.key_mark("python"),
            "python",
            "`image` and `python` are mutually exclusive: the image decides which Python there is",
        ));
    }
    let nvcc = o.boolean("nvcc")?.unwrap_or(false);
    let docker = o.boolean("docker")?.unwrap_or(false);
    // dstack's rule: the docker-in-docker image is the image.
    for (field, set) in [("image", image.is_some()), ("python", python.is_some()), ("nvcc", nvcc)] {
        if docker && set {
            return Err(Issue::invalid(
                o.key_mark("docker"),
                "docker",
                format!("`docker: true` runs dstack's docker-in-docker image: it cannot be combined with `{field}`"),
            ));
        }
    }
    let repos = o.map("repos", |n, p| each(n, p, mounts::repo))?.unwrap_or_default();
    if repos.len() > 1 {
        return Err(Issue::invalid(o.key_mark("repos"), "repos[1]", "only one repo is supported (as in dstack)"));
    }
    let stop_duration_secs = match o.map("stop_duration", duration)? {
        None | Some(Duration::Default) => Some(DEFAULT_STOP_DURATION_SECS),
        Some(Duration::Off) => None,
        Some(Duration::Secs(s)) => Some(s),
    };
    Ok(Common {
        name: o.map("name", resource_name)?,
        image,
        user: o.string("user")?,
        privileged: o.boolean("privileged")?.unwrap_or(false),
        entrypoint: o.string("entrypoint")?,
        working_dir: o.string("working_dir")?,
        registry_auth: o.map("registry_auth", common::registry_auth)?,
        python,
        nvcc,
        docker,
        dstack: o.boolean("dstack")?.unwrap_or(false),
        env: o.map("env", env)?.unwrap_or_default(),
        shell: o.map("shell", shell)?,
        resources: o.map("resources", resources)?.unwrap_or_default(),
        priority: o.map("priority", |n, p| bounded(n, p, 0, MAX_PRIORITY.into()))?,
        volumes: o.map("volumes", |n, p| each(n, p, mounts::volume))?.unwrap_or_default(),
        repos,
        files: o.map("files", |n, p| each(n, p, mounts::file))?.unwrap_or_default(),
        setup: common::commands(o, "setup")?,
        retry: o.map("retry", common::retry)?.flatten(),
        max_duration_secs: o.map("max_duration", off_duration)?.flatten(),
        stop_duration_secs,
        utilization_policy: o.map("utilization_policy", common::utilization_policy)?,
        startup_order: o
            .map("startup_order", |n, p| {
                Ok(match choice(n, p, &["any", "master-first", "workers-first"])? {
                    "master-first" => StartupOrder::MasterFirst,
                    "workers-first" => StartupOrder::WorkersFirst,
                    _ => StartupOrder::Any,
                })
            })?
            .unwrap_or_default(),
        stop_criteria: o
            .map("stop_criteria", |n, p| {
                Ok(if choice(n, p, &["all-done", "master-done"])? == "master-done" {
                    StopCriteria::MasterDone
                } else {
                    StopCriteria::AllDone
                })
            })?
            .unwrap_or_default(),
        provisioning: common::provisioning(o)?,
        schedule: o.map("schedule", super::schedule::schedule)?,
    })
}

fn shell(node: &Node, path: &str) -> Res<String> {
    let s = string(node, path)?;
    if s == "sh" || s == "bash" || s.starts_with('/') {
        return Ok(s);
    }
    Err(Issue::invalid(node.mark, path, format!("\"{s}\" is not a shell: use `sh`, `bash`, or an absolute path")))
}

/// dstack's rule for tasks and services: something must run.
pub(crate) fn require_commands_or_image(o: &Object, commands: &[String], image: &Option<String>) -> Res<()> {
    if commands.is_empty() && image.is_none() {
        return Err(Issue::invalid(o.mark(), "commands", "set `commands`, `image`, or both: there is nothing to run"));
    }
    Ok(())
}

pub(crate) fn task(doc: &Node) -> Res<TaskConfig> {
    let known: Vec<&str> = RUN_FIELDS.iter().copied().chain(["nodes", "groups", "ports", "commands"]).collect();
    let o = super::object(doc, "task", &known)?;
    let c = common(&o)?;
    let commands = common::commands(&o, "commands")?;
    let (groups, nodes) = super::groups::task_groups(&o, &commands, &c)?;
    if groups.is_empty() {
        require_commands_or_image(&o, &commands, &c.image)?;
    }
    Ok(TaskConfig {
        name: c.name,
        image: c.image,
        commands,
        env: c.env,
        working_dir: c.working_dir,
        ports: o.map("ports", ports)?.unwrap_or_default(),
        max_duration_secs: c.max_duration_secs,
        stop_duration_secs: c.stop_duration_secs,
        resources: c.resources,
        nodes,
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
        startup_order: c.startup_order,
        stop_criteria: c.stop_criteria,
        provisioning: c.provisioning,
        schedule: c.schedule,
        groups,
    })
}

pub(crate) fn dev_environment(doc: &Node) -> Res<DevEnvironmentConfig> {
    let known: Vec<&str> =
        RUN_FIELDS.iter().copied().chain(["ide", "version", "init", "inactivity_duration", "ports"]).collect();
    let o = super::object(doc, "dev-environment", &known)?;
    let c = common(&o)?;
    if c.entrypoint.is_some() {
        return Err(Issue::invalid(
            o.key_mark("entrypoint"),
            "entrypoint",
            "a dev environment has no entrypoint (dstack refuses it too)",
        ));
    }
    let ide = o.map("ide", |n, p| {
        Ok(match choice(n, p, &["vscode", "cursor", "windsurf", "zed"])? {
            "vscode" => Ide::Vscode,
            "cursor" => Ide::Cursor,
            "windsurf" => Ide::Windsurf,
            _ => Ide::Zed,
        })
    })?;
    let version = o.string("version")?;
    if let (Some(Ide::Windsurf), Some(v)) = (ide, &version) {
        let ok = v.split_once('@').is_some_and(|(ver, commit)| {
            !ver.is_empty()
                && !commit.is_empty()
                && commit.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if !ok {
            return Err(Issue::invalid(
                o.key_mark("version"),
                "version",
                format!("\"{v}\" is not a Windsurf version: use `version@commit`, e.g. 1.106.0@8951cd3a"),
            ));
        }
    }
    let mut init = c.setup;
    init.extend(common::commands(&o, "init")?);
    Ok(DevEnvironmentConfig {
        name: c.name,
        image: c.image,
        env: c.env,
        working_dir: c.working_dir,
        ports: o.map("ports", ports)?.unwrap_or_default(),
        resources: c.resources,
        priority: c.priority,
        ide,
        version,
        init,
        inactivity_duration_secs: o.map("inactivity_duration", off_duration)?.flatten(),
        max_duration_secs: c.max_duration_secs,
        stop_duration_secs: c.stop_duration_secs,
        python: c.python,
        nvcc: c.nvcc,
        docker: c.docker,
        dstack: c.dstack,
        user: c.user,
        privileged: c.privileged,
        shell: c.shell,
        registry_auth: c.registry_auth,
        volumes: c.volumes,
        repos: c.repos,
        files: c.files,
        retry: c.retry,
        utilization_policy: c.utilization_policy,
        provisioning: c.provisioning,
        schedule: c.schedule,
    })
}
