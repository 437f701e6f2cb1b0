//! What this coordinator can run. The configuration language accepts everything dstack accepts;
//! a field whose feature Corral does not have yet is refused here, by name, rather than silently
//! ignored — running without it would not be what the user asked for.

use crate::config::{Configuration, FleetConfig, ServiceConfig, SpotPolicy, TaskConfig};

mod groups;
mod interpolations;
mod volumes;
pub use volumes::{NODE_RANK, check_volume, expand as volume_name};

/// Why a configuration is not admitted: where — the field's path as the user wrote it
/// (`resources.gpu`, `env[0]`, `groups[1].image`) — and what is wrong, with what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct Refused {
    pub field: String,
    pub why: String,
}

impl Refused {
    pub fn new(field: impl Into<String>, why: impl Into<String>) -> Self {
        Self { field: field.into(), why: why.into() }
    }

    /// The same refusal of a field inside `outer` (`groups[1]`): its path gets the prefix.
    fn within(self, outer: &str, why_suffix: &str) -> Self {
        Self { field: format!("{outer}.{}", self.field), why: format!("{}{why_suffix}", self.why) }
    }
}

impl From<crate::config::limits::LimitError> for Refused {
    fn from(e: crate::config::limits::LimitError) -> Self {
        Self { field: e.field, why: e.message }
    }
}

/// An admitted run: what each of its jobs runs, and how many jobs it starts with — a task's `nodes`
/// (one gang), or a service's replicas (each placed on its own).
#[derive(Debug)]
pub struct Admitted {
    pub task: TaskConfig,
    pub jobs: u32,
    /// A service's desired replica count (it starts with `jobs`); `None` for a task.
    pub replicas: Option<u32>,
    /// The number of each job it starts with, when they are not `0..jobs`: a service with replica
    /// groups starts the lowest numbers of each group's block.
    pub job_nums: Vec<u32>,
}

/// `Err` names the first unsupported field, or the first past a limit, and says why.
pub fn check(cfg: &Configuration) -> Result<Admitted, Refused> {
    // Counts and sizes first: a run of 2^32 nodes is refused before anything is made for it.
    cfg.check_limits()?;
    interpolations::check(cfg)?;
    match cfg {
        Configuration::Task(t) => {
            check_task(t)?;
            groups::check_task_groups(t, check_task)?;
            Ok(Admitted { task: t.clone(), jobs: t.nodes.max(1), replicas: None, job_nums: Vec::new() })
        }
        Configuration::Service(s) if !s.groups.is_empty() => {
            check_service(s)?;
            let job_nums = groups::check_service_groups(s, check_task)?;
            let n = job_nums.len() as u32;
            Ok(Admitted {
                task: s.replica_task_of(job_nums.first().copied().unwrap_or(0)),
                jobs: n,
                replicas: Some(n),
                job_nums,
            })
        }
        Configuration::Service(s) => {
            groups::check_replica_refs("commands", &s.commands)?;
            let replicas = check_service(s)?;
            let task = s.replica_task();
            check_task(&task)?;
            Ok(Admitted { task, jobs: replicas, replicas: Some(replicas), job_nums: Vec::new() })
        }
        Configuration::DevEnvironment(d) => {
            let task = d.as_task();
            check_task(&task)?;
            Ok(Admitted { task, jobs: 1, replicas: None, job_nums: Vec::new() })
        }
        Configuration::Fleet(_) => Err(Refused::new("type", "fleet — apply fleets with `corral apply`, not as a run")),
        Configuration::Volume(_) => {
            Err(Refused::new("type", "volume — apply volumes with `corral apply`, not as a run"))
        }
    }
}

/// The service-only fields; returns the number of replicas it starts with (an autoscaled service
/// starts with its minimum, and with one when that is zero, so that it comes up when applied).
fn check_service(s: &ServiceConfig) -> Result<u32, Refused> {
    // As dstack: a scheduled service starts its replicas at its times, and one that may scale to
    // zero would have nothing to start.
    if s.schedule.is_some() && s.replicas.min == Some(0) {
        return Err(Refused::new(
            "schedule",
            "a scheduled service cannot scale to zero (give `replicas` a minimum of 1)",
        ));
    }
    match (&s.scaling, s.replicas.max.unwrap_or(1)) {
        (_, 0) => Err(Refused::new("replicas", "a service needs at least one replica")),
        (Some(_), _) => Ok(s.replicas.min.unwrap_or(0).max(1)),
        (None, n) => Ok(n),
    }
}

fn check_task(task: &TaskConfig) -> Result<(), Refused> {
    let refuse = |field: &str, why: &str| Err(Refused::new(field, why));
    // With no `image`, the coordinator's base image runs (dstack's, or the site's `--base-image`).
    if let Some(image) = &task.image
        && image.trim().starts_with(&format!("{}/", crate::api::LOCAL_IMAGE_REGISTRY))
    {
        return refuse(
            "image",
            &format!(
                "{image}: names an image as the coordinator hands it to nodes; write the name it was pushed as (see `corral image list`)"
            ),
        );
    }
    if let Some(ep) = &task.entrypoint
        && shlex::split(ep).is_none_or(|words| words.is_empty())
    {
        return refuse("entrypoint", "cannot be split into words (an unclosed quote?)");
    }
    if let Some(e) = task.env.iter().find(|e| e.value.is_none()) {
        return refuse(&format!("env.{}", e.name), "has no value (set it in the environment of `corral apply`)");
    }
    volumes::check_mounts(task)?;
    let p = &task.provisioning;
    let cloud = "choosing cloud instances per run is not supported yet: runs go to enrolled nodes, and an AWS fleet (`type: fleet` with `backends: [aws]`) grows for runs that fit its offers";
    let unsupported = [
        ("backends", !p.backends.is_empty(), cloud),
        ("regions", !p.regions.is_empty(), cloud),
        ("instance_types", !p.instance_types.is_empty(), cloud),
        ("spot_policy", p.spot_policy == Some(SpotPolicy::Spot), cloud),
        (
            "resources.gpu.compute_capability",
            task.resources.gpu.as_ref().is_some_and(|g| g.compute_capability.is_some()),
            "nodes do not report their GPUs' compute capability yet, so it cannot be matched: name the GPU models instead",
        ),
    ];
    if let Some((field, _, why)) = unsupported.iter().find(|(_, used, _)| *used) {
        return refuse(field, why);
    }
    Ok(())
}

/// What an on-prem fleet can be today: a named group of enrolled nodes, with `placement`. Nodes join
/// it with a join token scoped to it: the install script on each host, or `corral apply` of an
/// `ssh_config` fleet, which runs that script on each host over SSH.
pub fn check_fleet(cfg: &FleetConfig) -> Result<&FleetConfig, Refused> {
    cfg.check_limits()?;
    let p = &cfg.provisioning;
    let ssh = cfg.ssh_config.as_ref();
    let unsupported = [
        ("name", cfg.name.is_none(), "a fleet needs a name (nodes join it by name)"),
        ("ssh_config.hosts", ssh.is_some_and(|s| s.hosts.is_empty()), "list the hosts to enroll"),
        (
            "ssh_config.ssh_key",
            ssh.is_some_and(|s| s.ssh_key.is_some() || s.hosts.iter().any(|h| h.ssh_key.is_some())),
            "inline keys are not supported: use identity_file",
        ),
        ("backends", p.backends.iter().any(|b| b != "aws"), "the only cloud backend is aws"),
        (
            "nodes",
            p.backends.iter().any(|b| b == "aws") && cfg.nodes.is_none(),
            "an aws fleet needs nodes: MIN..MAX (how many instances)",
        ),
        // As dstack: an SSH fleet's hosts are given, so the fields that choose cloud instances
        // are refused rather than ignored.
        (
            "regions",
            ssh.is_some() && !p.regions.is_empty(),
            "an ssh_config fleet's hosts are listed: regions choose cloud instances (dstack refuses it too)",
        ),
        (
            "instance_types",
            ssh.is_some() && !p.instance_types.is_empty(),
            "an ssh_config fleet's hosts are listed: instance_types choose cloud instances (dstack refuses it too)",
        ),
    ];
    if let Some(e) = cfg.env.iter().find(|e| e.value.is_none()) {
        return Err(Refused::new(
            format!("env.{}", e.name),
            "has no value (set it in the environment of `corral apply`)",
        ));
    }
    match unsupported.iter().find(|(_, used, _)| *used) {
        Some((field, _, why)) => Err(Refused::new(*field, *why)),
        None => Ok(cfg),
    }
}

/// What a coordinator does not do with an admitted fleet's fields, said when it is applied:
/// `regions` and `instance_types` of a fleet without backends choose cloud instances, and its
/// nodes are hosts that join with a token.
pub fn fleet_notes(cfg: &FleetConfig) -> Vec<String> {
    let p = &cfg.provisioning;
    let mut notes = Vec::new();
    if p.backends.is_empty() && cfg.ssh_config.is_none() {
        let unused: Vec<&str> = [("regions", !p.regions.is_empty()), ("instance_types", !p.instance_types.is_empty())]
            .into_iter()
            .filter_map(|(f, used)| used.then_some(f))
            .collect();
        if !unused.is_empty() {
            notes.push(format!(
                "{} ignored: they choose cloud instances, and this fleet has no backends (its nodes join with a join token; add `backends: [aws]` to provision)",
                unused.join(" and ")
            ));
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Configuration {
        crate::config::parse(text, "t.yml").expect("valid")
    }

    #[test]
    fn on_prem_fleets_are_admitted_and_cloud_fleets_refused() {
        let Configuration::Fleet(f) = parse("type: fleet\nname: rack\nplacement: cluster\n") else { panic!("a fleet") };
        assert!(check_fleet(&f).is_ok());
        let Configuration::Fleet(f) = parse("type: fleet\nname: rack\nnodes: 2\nresources:\n  gpu: 24GB\n") else {
            panic!("a fleet")
        };
        assert!(check_fleet(&f).is_ok(), "on-prem hosts that lack the resources are refused as they join");
        let ssh = "type: fleet\nname: rack\nssh_config:\n  user: ubuntu\n  hosts:\n    - 10.0.0.1\n    - hostname: 10.0.0.2\n      port: 2222\n";
        let Configuration::Fleet(f) = parse(ssh) else { panic!("a fleet") };
        assert!(check_fleet(&f).is_ok());
        let Configuration::Fleet(f) = parse("type: fleet\nname: rack\nssh_config:\n  hosts: []\n") else {
            panic!("a fleet")
        };
        assert!(check_fleet(&f).expect_err("refused").to_string().starts_with("ssh_config.hosts:"));
    }

    #[test]
    fn services_are_admitted_with_fixed_replicas() {
        let svc = "type: service\nimage: busybox\nport: 80\nreplicas: 2\ncommands: [\"httpd -f\"]\n";
        let a = check(&parse(svc)).expect("admitted");
        assert_eq!((a.jobs, a.task.nodes), (2, 1));
        let scaled = "type: service\nimage: busybox\nport: 80\nreplicas: 0..2\nscaling: {metric: rps, target: 5}\ncommands: [\"x\"]\n";
        let a = check(&parse(scaled)).expect("admitted");
        assert_eq!((a.jobs, a.replicas), (1, Some(1)), "an autoscaled service starts with one replica");
        let limited = "type: service\nimage: busybox\nport: 80\nrate_limits: [{rps: 5}]\ncommands: [\"x\"]\n";
        assert!(check(&parse(limited)).is_ok());
        let zero = "type: service\nimage: busybox\nport: 80\nreplicas: 0..2\nscaling: {metric: rps, target: 1}\n\
                    schedule: {cron: \"0 8 * * *\"}\ncommands: [\"x\"]\n";
        assert!(check(&parse(zero)).expect_err("refused").to_string().starts_with("schedule:"));
        let vols = "type: service\nimage: busybox\nport: 80\nvolumes: [\"/a:/b\", \"cache:/c\"]\ncommands: [\"x\"]\n";
        assert!(check(&parse(vols)).is_ok(), "host paths and named volumes are mounted");
    }

    #[test]
    fn what_no_node_can_say_is_refused_by_name() {
        let cc =
            "type: task\nimage: busybox\nresources: {gpu: {name: A100, compute_capability: \"8.0\"}}\ncommands: [x]\n";
        let e = check(&parse(cc)).expect_err("refused").to_string();
        assert!(e.starts_with("resources.gpu.compute_capability:"), "{e}");
        let e = check(&parse("type: task\nimage: busybox\nregions: [us-east-1]\ncommands: [x]\n"))
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("regions:"), "{e}");
    }

    #[test]
    fn plain_tasks_are_admitted_and_others_refused_by_field() {
        assert!(check(&parse("type: task\nimage: busybox\ncommands: [\"echo\"]\n")).is_ok());
        let e = check(&parse("type: task\nimage: corral.local/other/0123:latest\ncommands: [x]\n"))
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("image: corral.local/other/0123:latest: names an image as the coordinator"), "{e}");
        assert!(
            check(&parse("type: task\npython: \"3.12\"\ncommands: [\"echo\"]\n")).is_ok(),
            "the base image runs it"
        );
        let run_as = "type: task\nimage: busybox\nuser: 1000:1000\nprivileged: true\nshell: bash\ncommands: [id]\n";
        assert!(check(&parse(run_as)).is_ok());
        let e = check(&parse("type: task\nimage: busybox\nentrypoint: \"sh -c 'echo\"\n"))
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("entrypoint:"), "{e}");
        assert!(check(&parse("type: task\nimage: busybox\nnodes: 2\ncommands: [\"echo\"]\n")).is_ok());
        assert!(check(&parse("type: task\nimage: busybox\nretry: true\ncommands: [\"echo\"]\n")).is_ok());
        assert!(
            check(&parse("type: task\nimage: busybox\nvolumes: [\"/data:/data\"]\ncommands: [\"echo\"]\n")).is_ok()
        );
        let e = check(&parse("type: volume\nname: data\n")).expect_err("not a run").to_string();
        assert!(e.starts_with("type: volume"), "{e}");
        let dev = check(&parse("type: dev-environment\nimage: busybox\nide: vscode\ninit: [\"touch /ready\"]\n"))
            .expect("a dev environment is admitted");
        assert_eq!(dev.jobs, 1);
        assert_eq!(dev.task.commands.first().map(String::as_str), Some("touch /ready"), "init runs first");
        assert!(dev.task.commands.len() == 2, "then it stays up: {:?}", dev.task.commands);
        assert!(check(&parse("type: dev-environment\nide: vscode\n")).is_ok(), "in the base image");
    }

    #[test]
    fn specs_past_a_limit_are_refused_with_the_parser_s_words() {
        // What a client that skips the CLI could send: the parser would have refused both.
        let Configuration::Task(mut t) = parse("type: task\nimage: busybox\ncommands: [x]\n") else { panic!("a task") };
        t.nodes = u32::MAX;
        let e = check(&Configuration::Task(t)).expect_err("refused").to_string();
        assert_eq!(e, "nodes: must be between 1 and 1024, found 4294967295");
        let svc = "type: service\nimage: busybox\nport: 80\ncommands: [x]\n";
        let Configuration::Service(mut s) = parse(svc) else { panic!("a service") };
        s.replicas = crate::resources::Range::exactly(100_000);
        assert_eq!(
            check(&Configuration::Service(s)).expect_err("refused").to_string(),
            "replicas: at most 1024 replicas, found 100000"
        );
        let Configuration::Fleet(mut f) = parse("type: fleet\nname: rack\n") else { panic!("a fleet") };
        f.nodes = Some(crate::config::FleetNodes { min: 0, target: 0, max: Some(u32::MAX) });
        assert!(check_fleet(&f).expect_err("refused").to_string().starts_with("nodes.max: must be between 0 and 1024"));
    }

    #[test]
    fn fleet_env_blocks_network_and_ignored_cloud_fields() {
        let yaml = "type: fleet\nname: rack\nblocks: auto\nenv: [HTTP_PROXY=http://p:3128]\nresources:\n  gpu: A100:8\nssh_config:\n  user: u\n  identity_file: k\n  network: 10.0.0.0/24\n  hosts:\n    - hostname: 10.0.0.1\n      blocks: 4\n";
        let Configuration::Fleet(f) = parse(yaml) else { panic!("a fleet") };
        assert!(check_fleet(&f).is_ok());
        assert!(fleet_notes(&f).is_empty());
        let ssh_regions =
            "type: fleet\nname: rack\nregions: [us-east-1]\nssh_config:\n  user: u\n  identity_file: k\n  hosts: [a]\n";
        let Configuration::Fleet(f) = parse(ssh_regions) else { panic!("a fleet") };
        assert!(check_fleet(&f).expect_err("refused").to_string().starts_with("regions: an ssh_config fleet"));
        let Configuration::Fleet(f) = parse("type: fleet\nname: rack\nnodes: 2\ninstance_types: [g6.8xlarge]\n") else {
            panic!("a fleet")
        };
        assert!(check_fleet(&f).is_ok());
        assert!(fleet_notes(&f)[0].starts_with("instance_types ignored: they choose cloud instances"));
        let run = "type: task\nimage: busybox\ninstances: [node-b, {hostname: 10.0.0.2}]\ncommands: [x]\n";
        assert!(check(&parse(run)).is_ok());
    }
}
