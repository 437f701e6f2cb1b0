//! Jobs: what the coordinator asks an agent to run, and the states a job passes through.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{JobId, NodeId, RunId};
use crate::resources::Allocation;

/// Everything an agent needs to run one job's container. Built by the coordinator from a run's
/// configuration and the scheduler's allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub job_id: JobId,
    pub run_id: RunId,
    pub run_name: String,
    pub project: String,
    pub node_id: NodeId,
    pub image: String,
    /// Run in order by `/bin/sh` in the container; the first failure ends the job with its code.
    /// Empty: the image's own entrypoint and command run.
    pub commands: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub allocation: Allocation,
    /// The job is stopped (`max_duration_exceeded`) once it has run this long.
    pub max_duration_secs: Option<u64>,
    /// How long `stop` waits after SIGTERM before it kills.
    pub stop_grace_secs: u64,
    /// Share the host's network (multi-node jobs: ranks reach each other at the nodes' addresses).
    pub host_network: bool,
    /// Everything else about the container (protocol 2). Last, so that an agent of protocol 1
    /// still reads the fields above; the coordinator sends a protocol-1 agent only jobs whose
    /// `container` is the default ([`ContainerSpec::needs_protocol_2`]).
    #[serde(default)]
    pub container: ContainerSpec,
}

/// How a job's container is made, beyond its image and commands: the shell, the user, mounts,
/// what is put in it before it starts, devices.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerSpec {
    /// Runs `commands`: `bash`, `sh` or an absolute path. `None`: `bash` when the image has it,
    /// `sh` otherwise.
    pub shell: Option<String>,
    /// `name`, `uid` or `uid:gid` (Docker's `--user`); `None`: the image's.
    pub user: Option<String>,
    pub privileged: bool,
    /// Replaces the image's entrypoint (split as a shell would); `commands`, when given, become
    /// its arguments.
    pub entrypoint: Option<Vec<String>>,
    /// Credentials for pulling `image` from its registry.
    pub registry_auth: Option<RegistryCredentials>,
    pub mounts: Vec<Mount>,
    /// Put in the container before it starts, in order.
    pub uploads: Vec<Upload>,
    /// Git repositories cloned on the node and put in the container before it starts.
    pub clones: Vec<GitClone>,
    /// `"3.12"`: the commands run with this Python (a `uv` venv at `DSTACK_VENV_DIR`, or the
    /// image's own `python3` when its version matches).
    pub python: Option<String>,
    /// Host device paths given to the container (TPU chips: `/dev/accel0`, `/dev/vfio/0`).
    pub devices: Vec<String>,
    /// Start `dockerd` in the container before the commands (`docker: true`; runs privileged).
    pub docker: bool,
    /// `utilization_policy`: the agent samples the job's GPUs and stops the job
    /// (`terminated_due_to_utilization_policy`) once one of them stayed below the minimum for
    /// the whole window.
    pub utilization_policy: Option<crate::config::UtilizationPolicy>,
}

impl ContainerSpec {
    /// Whether an agent must speak protocol 2 to run this: anything but the default.
    pub fn needs_protocol_2(&self) -> bool {
        *self != Self::default()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// Something mounted into a job's container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mount {
    /// A directory or file of the host (an instance volume). `optional`: skipped when the host
    /// path does not exist; otherwise the job fails naming it.
    Host { host_path: String, path: String, optional: bool },
    /// A named volume: a Docker volume on this node (`docker_name`), made when missing.
    Volume { name: String, docker_name: String, path: String },
    /// A named EBS volume the coordinator attaches to this node's instance: the agent waits for its
    /// device, makes an ext4 file system on it when it has none, mounts it on the host and binds
    /// that into the container.
    Ebs { name: String, volume_id: String, path: String },
}

/// A tar archive the coordinator keeps (by its SHA-256), unpacked in the container at `path`
/// before the container starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub sha256: String,
    pub size: u64,
    /// Absolute, or relative to the working directory.
    pub path: String,
    /// `false`: a file, or a directory that is not empty, already at `path` in the image makes
    /// the job fail (dstack's `if_exists: error`); `true`: it is left as it is and nothing is
    /// unpacked (a repo's `if_exists: skip`).
    pub skip_if_exists: bool,
    /// `files`: what the image has at `path` is replaced, whatever `skip_if_exists` says (dstack
    /// replaces it too). The upload's files overwrite the image's; a directory keeps the image's
    /// other files.
    #[serde(default)]
    pub replace: bool,
}

/// A repository the node clones (`repos: [{url: ...}]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitClone {
    pub url: String,
    pub branch: Option<String>,
    pub hash: Option<String>,
    pub path: String,
    pub skip_if_exists: bool,
}

/// Where a job is in its life. Terminal states carry why the job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Stored, not yet looked at by the scheduler.
    Submitted,
    /// Waiting for a node where it fits; `reason` says why none does.
    Pending,
    /// Placed on a node; the agent has not yet confirmed the container.
    Provisioning,
    /// The agent is fetching the image.
    Pulling,
    Running,
    /// Stop requested, the container is being stopped.
    Terminating,
    Done,
    Failed,
    Stopped,
    Aborted,
}

impl JobState {
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Stopped | Self::Aborted)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::Pending => "pending",
            Self::Provisioning => "provisioning",
            Self::Pulling => "pulling",
            Self::Running => "running",
            Self::Terminating => "terminating",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
            Self::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "submitted" => Self::Submitted,
            "pending" => Self::Pending,
            "provisioning" => Self::Provisioning,
            "pulling" => Self::Pulling,
            "running" => Self::Running,
            "terminating" => Self::Terminating,
            "done" => Self::Done,
            "failed" => Self::Failed,
            "stopped" => Self::Stopped,
            "aborted" => Self::Aborted,
            _ => return None,
        })
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job ended, recorded on the job and shown by `corral ps -a`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminationReason {
    /// The commands finished with exit code 0.
    Done,
    /// A command failed: the container exited with a non-zero code.
    ContainerExitedWithError,
    /// The image is absent and could not be pulled.
    ImageUnavailable,
    /// Docker refused to create or start the container.
    ContainerCreationFailed,
    StoppedByUser,
    AbortedByUser,
    MaxDurationExceeded,
    /// The container disappeared while the agent was away.
    ContainerLost,
    /// The agent failed for another reason (message says which).
    AgentError,
    /// The node stopped answering (heartbeats) for longer than the coordinator's timeout.
    NodeUnreachable,
    /// Another job of the same multi-node run failed or was lost, so the whole gang stopped.
    GangMemberFailed,
    /// No node could take it within its `retry` duration (with `on_events: [no-capacity]`).
    NoCapacity,
    /// A service replica stopped because the service scaled down.
    ScaledDown,
    /// A service replica stopped because a newer deployment of the service took over.
    Redeployed,
    /// A dev environment had no SSH, exec or port connection for its `inactivity_duration`.
    InactivityDurationExceeded,
    /// The cloud is taking the node's instance back (a spot interruption notice).
    Interrupted,
    /// A GPU of the job stayed below `utilization_policy.min_gpu_utilization` for its whole
    /// `time_window` (the agent's sampler decided; the message names the GPU).
    TerminatedDueToUtilizationPolicy,
    /// A GPU of the job was taken out of service (a fatal Xid, uncorrectable ECC errors, a lost
    /// GPU, ...: the message says which). Protocol 3.
    GpuError,
}

impl TerminationReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::ContainerExitedWithError => "container_exited_with_error",
            Self::ImageUnavailable => "image_unavailable",
            Self::ContainerCreationFailed => "container_creation_failed",
            Self::StoppedByUser => "stopped_by_user",
            Self::AbortedByUser => "aborted_by_user",
            Self::MaxDurationExceeded => "max_duration_exceeded",
            Self::ContainerLost => "container_lost",
            Self::AgentError => "agent_error",
            Self::NodeUnreachable => "node_unreachable",
            Self::GangMemberFailed => "gang_member_failed",
            Self::NoCapacity => "no_capacity",
            Self::ScaledDown => "scaled_down",
            Self::Redeployed => "redeployed",
            Self::InactivityDurationExceeded => "inactivity_duration_exceeded",
            Self::Interrupted => "interrupted",
            Self::TerminatedDueToUtilizationPolicy => "terminated_due_to_utilization_policy",
            Self::GpuError => "gpu_error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Done,
            Self::ContainerExitedWithError,
            Self::ImageUnavailable,
            Self::ContainerCreationFailed,
            Self::StoppedByUser,
            Self::AbortedByUser,
            Self::MaxDurationExceeded,
            Self::ContainerLost,
            Self::AgentError,
            Self::NodeUnreachable,
            Self::GangMemberFailed,
            Self::NoCapacity,
            Self::ScaledDown,
            Self::Redeployed,
            Self::InactivityDurationExceeded,
            Self::Interrupted,
            Self::TerminatedDueToUtilizationPolicy,
            Self::GpuError,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// Which `retry.on_events` event this ending is, if any: `interruption` when the job was cut off
    /// by something outside it (a lost node, a spot reclaim, a GPU taken out of service), `error` when it failed by itself. Endings asked for (stop, abort,
    /// max_duration) are never retried.
    pub fn retry_event(&self) -> Option<crate::config::RetryEvent> {
        use crate::config::RetryEvent;
        match self {
            Self::NodeUnreachable
            | Self::ContainerLost
            | Self::GangMemberFailed
            | Self::Interrupted
            | Self::GpuError => Some(RetryEvent::Interruption),
            Self::ContainerExitedWithError
            | Self::ImageUnavailable
            | Self::ContainerCreationFailed
            | Self::AgentError => Some(RetryEvent::Error),
            Self::Done
            | Self::StoppedByUser
            | Self::AbortedByUser
            | Self::MaxDurationExceeded
            | Self::NoCapacity
            | Self::ScaledDown
            | Self::Redeployed
            | Self::InactivityDurationExceeded
            | Self::TerminatedDueToUtilizationPolicy => None,
        }
    }

    /// The state a job ends in for this reason.
    pub fn final_state(&self) -> JobState {
        match self {
            Self::Done => JobState::Done,
            Self::StoppedByUser
            | Self::MaxDurationExceeded
            | Self::ScaledDown
            | Self::Redeployed
            | Self::InactivityDurationExceeded
            | Self::TerminatedDueToUtilizationPolicy => JobState::Stopped,
            Self::AbortedByUser => JobState::Aborted,
            _ => JobState::Failed,
        }
    }
}

impl fmt::Display for TerminationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
