//! A job spec turned into Docker's container configuration. Pure: no I/O, so every rule about names,
//! labels, environment and limits is unit-tested here.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, DeviceRequest, HostConfig};
use corral_proto::ids::JobId;
use corral_proto::job::JobSpec;

/// Labels that mark a container as Corral's and let a restarted agent re-adopt it and still enforce
/// its limits.
pub const LABEL_JOB: &str = "corral.job";
pub const LABEL_RUN: &str = "corral.run";
pub const LABEL_NODE: &str = "corral.node";
pub const LABEL_PROJECT: &str = "corral.project";
pub const LABEL_RUN_NAME: &str = "corral.run_name";
/// Seconds, present only when the job has a maximum duration.
pub const LABEL_MAX_DURATION: &str = "corral.max_duration";
/// Seconds between SIGTERM and SIGKILL when the job is stopped (its `stop_duration`).
pub const LABEL_STOP_GRACE: &str = "corral.stop_grace";
/// `MIN/WINDOW_SECS/GPU,GPU` (`10/300/0,1`), present only when the job has a `utilization_policy`:
/// a restarted agent goes on sampling those GPUs.
pub const LABEL_UTILIZATION: &str = "corral.utilization_policy";

/// How allocated GPUs reach the container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuPassthrough {
    /// A Docker device request for the `nvidia` driver naming the allocated indices, plus the
    /// visibility variables. Needs the NVIDIA Container Toolkit.
    #[default]
    DeviceRequests,
    /// Only `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES`: for hosts whose default runtime is
    /// `nvidia` (it reads the variable), and for tests on hosts without GPUs.
    EnvOnly,
}

/// How the agent wants containers run on this host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    pub gpu_passthrough: GpuPassthrough,
}

/// The container name of a job: one container per job, so the name is the job's.
pub fn container_name(job: &JobId) -> String {
    format!("corral-{job}")
}

/// Docker's configuration for the container that runs `spec`.
pub(crate) fn container_config(spec: &JobSpec, opts: &RunOptions) -> ContainerCreateBody {
    let alloc = &spec.allocation;
    // NVIDIA GPUs only: TPU chips share `gpu_indices` and reach the container as `devices`.
    let nvidia = alloc.gpus();
    let gpus = nvidia.iter().map(u32::to_string).collect::<Vec<_>>().join(",");

    let device_requests = (opts.gpu_passthrough == GpuPassthrough::DeviceRequests && !nvidia.is_empty()).then(|| {
        vec![DeviceRequest {
            driver: Some("nvidia".to_owned()),
            device_ids: Some(nvidia.iter().map(u32::to_string).collect()),
            capabilities: Some(vec![vec!["gpu".to_owned()]]),
            ..Default::default()
        }]
    });

    let host_config = HostConfig {
        nano_cpus: (alloc.cpus > 0).then(|| i64::from(alloc.cpus) * 1_000_000_000),
        memory: (alloc.memory.bytes() > 0).then(|| saturating_i64(alloc.memory.bytes())),
        shm_size: alloc.shm_size.filter(|m| m.bytes() > 0).map(|m| saturating_i64(m.bytes())),
        device_requests,
        // The agent removes the container itself, after it has shipped the logs; and it decides
        // about retries, so Docker must not restart anything.
        auto_remove: Some(false),
        // A small init (Docker's tini) is process 1, so the user's shell is not: it gets SIGTERM on
        // `stop` with the default disposition, and zombies are reaped.
        init: Some(true),
        network_mode: spec.host_network.then(|| "host".to_owned()),
        privileged: spec.container.privileged.then_some(true),
        mounts: crate::volume::container_mounts(spec),
        devices: crate::devices::mappings(&spec.container.devices),
        ..Default::default()
    };

    let (entrypoint, cmd) = command(spec);

    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint,
        cmd,
        env: Some(environment(spec, &gpus)),
        working_dir: spec.working_dir.clone().filter(|d| !d.is_empty()),
        user: spec.container.user.clone(),
        labels: Some(labels(spec)),
        tty: Some(false),
        attach_stdin: Some(false),
        open_stdin: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// The container's entrypoint and command. With `commands`, the shell runs them as one script
/// (after the given `entrypoint`, they are its arguments instead); without, the image's own (or
/// the given entrypoint with no arguments).
fn command(spec: &JobSpec) -> (Option<Vec<String>>, Option<Vec<String>>) {
    let c = &spec.container;
    if let Some(entrypoint) = &c.entrypoint {
        return (Some(entrypoint.clone()), Some(spec.commands.clone()));
    }
    if spec.commands.is_empty() {
        return (None, None);
    }
    let mut script = script(&spec.commands, c.python.as_deref());
    if c.docker {
        // dstack's docker-in-docker image waits for its `dockerd` (and says so when the
        // container is not privileged).
        script.insert_str("set -e\n".len(), "start-dockerd\n");
    }
    let shell = |path: &str| (Some(vec![path.to_owned(), "-c".to_owned()]), Some(vec![script.clone()]));
    match c.shell.as_deref() {
        Some("bash") => shell("/bin/bash"),
        Some("sh") => shell("/bin/sh"),
        Some(path) => shell(path),
        // `bash` when the image has it, `sh` otherwise: `sh` looks, and runs the script (`$1`)
        // with the one it found.
        None => (
            Some(vec!["/bin/sh".to_owned(), "-c".to_owned(), PICK_SHELL.to_owned(), "corral-shell".to_owned()]),
            Some(vec![script]),
        ),
    }
}

const PICK_SHELL: &str = r#"if command -v bash >/dev/null 2>&1; then exec bash -c "$1"; else exec /bin/sh -c "$1"; fi"#;

/// The commands as one script: in order, and the first failure ends it with its exit code. With
/// `python`, that Python comes first on the `PATH` ([`python_prelude`]).
pub(crate) fn script(commands: &[String], python: Option<&str>) -> String {
    let mut s = String::from("set -e\n");
    if let Some(version) = python {
        s.push_str(&python_prelude(version));
    }
    for c in commands {
        s.push_str(c);
        s.push('\n');
    }
    s
}

/// Where `python: "3.X"` puts its virtual environment (dstack's `DSTACK_VENV_DIR`).
pub const VENV_DIR: &str = "/dstack/venv";

/// What gives the commands Python `version`, as dstack's base image does: a virtual environment
/// made by `uv` for that version at `DSTACK_VENV_DIR`, activated. Where `uv` is missing or cannot
/// make it (no network to fetch that Python), the image's own `python3` when its version is the
/// one asked for; otherwise the job fails, saying which version and what to do. The version was
/// checked by the parser (`3.9` to `3.15`), so it is safe to write into the script as it is.
pub(crate) fn python_prelude(version: &str) -> String {
    format!(
        r#"export DSTACK_VENV_DIR="${{DSTACK_VENV_DIR:-{VENV_DIR}}}"
if [ -x "$DSTACK_VENV_DIR/bin/python" ] && "$DSTACK_VENV_DIR/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != ({tuple}))' 2>/dev/null; then
  . "$DSTACK_VENV_DIR/bin/activate"
elif command -v uv >/dev/null 2>&1 && uv venv --quiet --seed --python {version} "$DSTACK_VENV_DIR" >/tmp/corral-uv.log 2>&1; then
  . "$DSTACK_VENV_DIR/bin/activate"
elif command -v python3 >/dev/null 2>&1 && [ "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "{version}" ]; then
  :
else
  echo "corral: this run asks for Python {version} (python: "{version}"), and the image has no way to give it:" >&2
  if command -v uv >/dev/null 2>&1; then echo "  uv could not make a {version} virtual environment: $(tail -n 3 /tmp/corral-uv.log 2>/dev/null)" >&2; else echo "  it has no uv" >&2; fi
  if command -v python3 >/dev/null 2>&1; then echo "  and its python3 is $(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" >&2; else echo "  and no python3" >&2; fi
  echo "  Use an image with Python {version} (image: ...), a python: that the image has, or let nodes reach the Python downloads uv uses (or a mirror: UV_PYTHON_INSTALL_MIRROR)." >&2
  exit 1
fi
"#,
        tuple = version.replace('.', ", "),
    )
}

fn environment(spec: &JobSpec, gpus: &str) -> Vec<String> {
    // The allocation decides which GPUs a job sees; a user's own value would let it use another
    // job's devices, so it is dropped.
    let reserved = |k: &str| k == "CUDA_VISIBLE_DEVICES" || k == "NVIDIA_VISIBLE_DEVICES";
    let mut env: Vec<String> = spec.env.iter().filter(|(k, _)| !reserved(k)).map(|(k, v)| format!("{k}={v}")).collect();
    if gpus.is_empty() {
        // CUDA images set NVIDIA_VISIBLE_DEVICES=all; on a host whose default runtime is `nvidia`
        // that would hand every GPU to a job that was given none.
        env.push("NVIDIA_VISIBLE_DEVICES=void".to_owned());
    } else {
        env.push(format!("CUDA_VISIBLE_DEVICES={gpus}"));
        env.push(format!("NVIDIA_VISIBLE_DEVICES={gpus}"));
    }
    env
}

fn labels(spec: &JobSpec) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (LABEL_JOB.to_owned(), spec.job_id.to_string()),
        (LABEL_RUN.to_owned(), spec.run_id.to_string()),
        (LABEL_NODE.to_owned(), spec.node_id.to_string()),
        (LABEL_PROJECT.to_owned(), spec.project.clone()),
        (LABEL_RUN_NAME.to_owned(), spec.run_name.clone()),
        (LABEL_STOP_GRACE.to_owned(), spec.stop_grace_secs.to_string()),
    ]);
    if let Some(secs) = spec.max_duration_secs {
        labels.insert(LABEL_MAX_DURATION.to_owned(), secs.to_string());
    }
    if let Some(p) = &spec.container.utilization_policy {
        let gpus = spec.allocation.gpus().iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        labels.insert(LABEL_UTILIZATION.to_owned(), format!("{}/{}/{gpus}", p.min_gpu_utilization, p.time_window_secs));
    }
    labels
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use corral_proto::resources::{Allocation, Memory};

    use super::*;

    fn spec() -> JobSpec {
        JobSpec {
            job_id: "j1".into(),
            run_id: "r1".into(),
            run_name: "train".to_owned(),
            project: "main".to_owned(),
            node_id: "n1".into(),
            image: "corral-test/busybox:latest".to_owned(),
            commands: vec!["echo a".to_owned(), "echo b".to_owned()],
            env: vec![("A".to_owned(), "1".to_owned()), ("CUDA_VISIBLE_DEVICES".to_owned(), "7".to_owned())],
            working_dir: Some("/work".to_owned()),
            allocation: Allocation {
                cpus: 2,
                memory: Memory::gb(1),
                shm_size: Some(Memory(64 << 20)),
                gpu_indices: vec![0, 1],
            },
            max_duration_secs: Some(3600),
            stop_grace_secs: 10,
            host_network: false,
            container: Default::default(),
        }
    }

    #[test]
    fn commands_run_as_one_script_that_stops_at_the_first_failure() {
        let c = container_config(&spec(), &RunOptions::default());
        let entrypoint = c.entrypoint.unwrap_or_default();
        assert_eq!(entrypoint[..2], ["/bin/sh", "-c"]);
        assert!(entrypoint[2].contains("command -v bash"), "{entrypoint:?}");
        assert_eq!(c.cmd, Some(vec!["set -e\necho a\necho b\n".to_owned()]));
    }

    #[test]
    fn a_named_shell_runs_the_script() {
        for (shell, path) in [("bash", "/bin/bash"), ("sh", "/bin/sh"), ("/usr/bin/zsh", "/usr/bin/zsh")] {
            let mut s = spec();
            s.container.shell = Some(shell.to_owned());
            let c = container_config(&s, &RunOptions::default());
            assert_eq!(c.entrypoint, Some(vec![path.to_owned(), "-c".to_owned()]), "{shell}");
            assert_eq!(c.cmd, Some(vec!["set -e\necho a\necho b\n".to_owned()]));
        }
    }

    #[test]
    fn an_entrypoint_takes_the_commands_as_arguments() {
        let mut s = spec();
        s.container.entrypoint = Some(vec!["python3".to_owned(), "-u".to_owned()]);
        let c = container_config(&s, &RunOptions::default());
        assert_eq!(c.entrypoint, Some(vec!["python3".to_owned(), "-u".to_owned()]));
        assert_eq!(c.cmd, Some(vec!["echo a".to_owned(), "echo b".to_owned()]));
    }

    #[test]
    fn python_comes_before_the_commands() {
        let mut s = spec();
        s.container.python = Some("3.11".to_owned());
        let script = container_config(&s, &RunOptions::default()).cmd.unwrap_or_default().concat();
        assert!(script.starts_with("set -e\nexport DSTACK_VENV_DIR="), "{script}");
        assert!(script.contains("uv venv --quiet --seed --python 3.11"), "{script}");
        assert!(script.contains("sys.version_info[:2] != (3, 11)"), "{script}");
        assert!(script.ends_with("fi\necho a\necho b\n"), "{script}");
    }

    #[test]
    fn docker_inside_starts_dockerd_before_the_commands() {
        let mut s = spec();
        s.container.docker = true;
        s.container.privileged = true;
        let c = container_config(&s, &RunOptions::default());
        assert_eq!(c.cmd, Some(vec!["set -e\nstart-dockerd\necho a\necho b\n".to_owned()]));
        assert_eq!(c.host_config.and_then(|h| h.privileged), Some(true));
    }

    #[test]
    fn user_and_privileged_reach_docker() {
        let mut s = spec();
        s.container.user = Some("1000:1000".to_owned());
        s.container.privileged = true;
        let c = container_config(&s, &RunOptions::default());
        assert_eq!(c.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.host_config.and_then(|h| h.privileged), Some(true));
        let c = container_config(&spec(), &RunOptions::default());
        assert_eq!((c.user, c.host_config.and_then(|h| h.privileged)), (None, None));
    }

    #[test]
    fn no_commands_keep_the_image_entrypoint() {
        let c = container_config(&JobSpec { commands: vec![], ..spec() }, &RunOptions::default());
        assert_eq!((c.entrypoint, c.cmd), (None, None));
    }

    #[test]
    fn labels_carry_what_readoption_needs() {
        let labels = container_config(&spec(), &RunOptions::default()).labels.unwrap_or_default();
        for (k, v) in [
            (LABEL_JOB, "j1"),
            (LABEL_RUN, "r1"),
            (LABEL_NODE, "n1"),
            (LABEL_PROJECT, "main"),
            (LABEL_RUN_NAME, "train"),
            (LABEL_MAX_DURATION, "3600"),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "{k}");
        }
        let unlimited = container_config(&JobSpec { max_duration_secs: None, ..spec() }, &RunOptions::default());
        assert!(!unlimited.labels.unwrap_or_default().contains_key(LABEL_MAX_DURATION));
        assert!(!labels.contains_key(LABEL_UTILIZATION));
        let mut watched = spec();
        watched.container.utilization_policy =
            Some(corral_proto::config::UtilizationPolicy { min_gpu_utilization: 10, time_window_secs: 300 });
        let labels = container_config(&watched, &RunOptions::default()).labels.unwrap_or_default();
        assert_eq!(labels.get(LABEL_UTILIZATION).map(String::as_str), Some("10/300/0,1"));
    }

    #[test]
    fn allocated_gpus_override_user_visibility_variables() {
        let env = container_config(&spec(), &RunOptions::default()).env.unwrap_or_default();
        assert_eq!(env, ["A=1", "CUDA_VISIBLE_DEVICES=0,1", "NVIDIA_VISIBLE_DEVICES=0,1"]);
    }

    #[test]
    fn jobs_without_gpus_see_none() {
        let mut s = spec();
        s.allocation.gpu_indices.clear();
        let c = container_config(&s, &RunOptions::default());
        assert_eq!(c.env.unwrap_or_default(), ["A=1", "NVIDIA_VISIBLE_DEVICES=void"]);
        assert_eq!(c.host_config.and_then(|h| h.device_requests), None);
    }

    #[test]
    fn device_requests_name_the_allocated_indices() {
        let host = container_config(&spec(), &RunOptions::default()).host_config.unwrap_or_default();
        let req = host.device_requests.unwrap_or_default();
        assert_eq!(req.len(), 1);
        assert_eq!(req[0].driver.as_deref(), Some("nvidia"));
        assert_eq!(req[0].device_ids, Some(vec!["0".to_owned(), "1".to_owned()]));
        assert_eq!(req[0].capabilities, Some(vec![vec!["gpu".to_owned()]]));

        let env_only = RunOptions { gpu_passthrough: GpuPassthrough::EnvOnly };
        let host = container_config(&spec(), &env_only).host_config.unwrap_or_default();
        assert_eq!(host.device_requests, None);
    }

    #[test]
    fn limits_follow_the_allocation() {
        let host = container_config(&spec(), &RunOptions::default()).host_config.unwrap_or_default();
        assert_eq!(host.nano_cpus, Some(2_000_000_000));
        assert_eq!(host.memory, Some(1 << 30));
        assert_eq!(host.shm_size, Some(64 << 20));
        assert_eq!(host.auto_remove, Some(false));
        assert_eq!(host.restart_policy, None);

        let mut s = spec();
        s.allocation = Allocation::default();
        let host = container_config(&s, &RunOptions::default()).host_config.unwrap_or_default();
        assert_eq!((host.nano_cpus, host.memory, host.shm_size), (None, None, None));
    }

    #[test]
    fn name_is_the_job_id() {
        assert_eq!(container_name(&"abc".into()), "corral-abc");
    }
}
