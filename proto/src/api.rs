//! The coordinator's HTTP API: request and response bodies (JSON). Runs live under a project:
//! `/api/projects/{project}/runs/...`; a `main` project always exists.

use serde::{Deserialize, Serialize};

use crate::config::limits::{LimitError, MAX_DURATION_SECS};
use crate::config::{Configuration, is_valid_name};
use crate::ids::{JobId, NodeId, RunId};
use crate::inventory::HostInventory;
use crate::job::{JobState, TerminationReason};
use crate::resources::Allocation;

mod volumes;
pub use volumes::{SubmitVolume, Volume, VolumeStatus};

pub const DEFAULT_PROJECT: &str = "main";

/// The largest JSON request body the API reads: a run or fleet submission carries the
/// configuration twice (typed, and the file's text). Above it the coordinator answers
/// `413 Payload Too Large`; the CLI checks before it sends. Streamed uploads (`corral image push`,
/// `PUT /api/uploads/{sha256}`) are not bound by it.
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// What a name in an API path names, for its rule and its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    Run,
    Fleet,
    Project,
    Node,
    Volume,
    User,
}

impl NameKind {
    fn word(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Fleet => "fleet",
            Self::Project => "project",
            Self::Node => "node",
            Self::Volume => "volume",
            Self::User => "user",
        }
    }
}

/// Checks a name taken from a request: runs, fleets and projects follow dstack's rule
/// ([`is_valid_name`]); node names are what the coordinator makes of a host name (lowercase
/// letters, digits and hyphens, 1 to 63 of them). `Err` is the message a client sees.
pub fn check_name(kind: NameKind, name: &str) -> Result<(), String> {
    let (valid, rule) = match kind {
        NameKind::Node => (
            (1..=63).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "1 to 63 lowercase letters, digits and hyphens",
        ),
        _ => (is_valid_name(name), "2 to 41 lowercase letters, digits and hyphens, starting with a letter"),
    };
    if valid {
        return Ok(());
    }
    let shown: String = name.chars().take(64).collect();
    let more = if shown.len() < name.len() { "..." } else { "" };
    Err(format!("not a valid {} name: {shown:?}{more} (use {rule})", kind.word()))
}

/// `POST /api/projects/{project}/runs`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubmitRun {
    pub configuration: Configuration,
    /// The file's text, kept for `corral ps --json` and later audits.
    pub source: Option<String>,
    /// Set when the user did not name the run; the coordinator picks a name.
    pub name: Option<String>,
}

impl SubmitRun {
    /// The configuration's limits ([`Configuration::check_limits`]) and the name's rule: what the
    /// coordinator checks before it admits a run, whoever sent it.
    pub fn check(&self) -> Result<(), LimitError> {
        self.configuration.check_limits()?;
        match &self.name {
            Some(name) => {
                check_name(NameKind::Run, name).map_err(|message| LimitError { field: "name".into(), message })
            }
            None => Ok(()),
        }
    }
}

/// The registry part of the names a project's stored images have on nodes
/// (`corral.local/<project>/<config digest>`); nothing is pulled from it, and no configuration
/// may name it.
pub const LOCAL_IMAGE_REGISTRY: &str = "corral.local";

/// How many items a list answers when the request names no `limit`.
pub const DEFAULT_PAGE: u32 = 100;

/// `GET /api/projects/{project}/runs/plan`-style preview, and the reply to a submission.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    pub id: RunId,
    pub name: String,
    pub project: String,
    pub state: JobState,
    pub submitted_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub configuration: Configuration,
    pub jobs: Vec<Job>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub job_num: u32,
    pub state: JobState,
    pub node_id: Option<NodeId>,
    pub node_name: Option<String>,
    pub allocation: Option<Allocation>,
    pub exit_code: Option<i64>,
    pub termination_reason: Option<TerminationReason>,
    /// Why it waits (pending) or what went wrong (failed), in words.
    pub status_message: Option<String>,
    pub submitted_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// 0 for the first attempt; each retry counts one up.
    #[serde(default)]
    pub submission: u32,
    /// The image it runs, once placed (the coordinator's base image for a run that names none).
    #[serde(default)]
    pub image: Option<String>,
}

/// A scheduled run (`schedule:`): `POST /api/projects/{project}/schedules` (a [`SubmitRun`] whose
/// configuration has a `schedule`) registers one and answers it, `GET` lists them, and `DELETE
/// .../schedules/{name}` removes one (the runs it started stay).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScheduledRun {
    pub name: String,
    pub project: String,
    /// The cron expressions, UTC.
    pub cron: Vec<String>,
    /// `task`, `service` or `dev-environment`.
    pub kind: String,
    /// When the coordinator submits it next; `None` while the run it started last is active (the
    /// next time is reckoned once that run ends).
    pub next_start_ms: Option<i64>,
    /// The coordinator's clock when it answered, for "in 5m" whatever the client's clock says.
    pub now_ms: i64,
    /// The run it started last.
    pub last_run: Option<RunId>,
    /// Why the last start failed, when it did.
    pub last_error: Option<String>,
    pub created_at_ms: i64,
}

/// `POST /api/projects/{project}/runs/{name}/stop`
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StopRun {
    pub abort: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    Ready,
    Offline,
}

/// `GET /api/nodes`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub name: String,
    pub fleet: Option<String>,
    pub status: NodeStatus,
    pub address: Option<String>,
    pub agent_version: Option<String>,
    pub enrolled_at_ms: i64,
    pub last_seen_ms: Option<i64>,
    pub inventory: Option<HostInventory>,
    /// GPU indices in use by jobs.
    pub busy_gpus: Vec<u32>,
    pub running_jobs: u32,
    /// Takes no new jobs (`corral node cordon` / `drain`).
    #[serde(default)]
    pub cordoned: bool,
    /// Why its fleet takes no jobs on it (it lacks the fleet's `resources`, cannot be split into
    /// its `blocks`, has no address in its `ssh_config.network`).
    #[serde(default)]
    pub refused: Option<String>,
    /// Its GPUs taken out of service for a fault, and why (`corral node gpu enable` returns one).
    #[serde(default)]
    pub gpus_out_of_service: Vec<GpuOutOfService>,
}

/// A GPU out of service ([`Node::gpus_out_of_service`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuOutOfService {
    pub index: u32,
    pub uuid: String,
    /// What its node reported (`Xid 79 (fallen off the bus)`, `3 uncorrectable ECC error(s) ...`).
    pub reason: String,
    pub since_ms: i64,
}

/// `POST /api/nodes/{name}/gpus/{index}/enable`: the GPU is back in service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuEnabled {
    pub node: String,
    pub index: u32,
    /// Whether it was out of service.
    pub was_out: bool,
}

/// `GET /api/projects/{project}/runs/{name}/metrics`: what the run's jobs use, as their nodes
/// reported it (the latest interval, and the last few minutes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMetrics {
    pub run: String,
    pub jobs: Vec<JobMetrics>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMetrics {
    pub job_id: JobId,
    pub job_num: u32,
    pub node: Option<String>,
    /// When its node last reported it; `None`: no report (yet, or any more).
    pub at_ms: Option<i64>,
    /// Thousandths of a core over the last interval.
    pub cpu_millicores: Option<u32>,
    pub memory_used: Option<u64>,
    pub memory_limit: Option<u64>,
    pub network_rx: Option<u64>,
    pub network_tx: Option<u64>,
    pub disk_read: Option<u64>,
    pub disk_write: Option<u64>,
    pub gpus: Vec<GpuMetrics>,
    /// Oldest first.
    pub history: Vec<MetricsPoint>,
}

impl JobMetrics {
    /// A job no report speaks of.
    pub fn unreported(job_id: JobId, job_num: u32, node: Option<String>) -> Self {
        Self {
            job_id,
            job_num,
            node,
            at_ms: None,
            cpu_millicores: None,
            memory_used: None,
            memory_limit: None,
            network_rx: None,
            network_tx: None,
            disk_read: None,
            disk_write: None,
            gpus: Vec::new(),
            history: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuMetrics {
    pub index: u32,
    pub uuid: String,
    /// Percent.
    pub utilization: Option<u8>,
    pub memory_used: Option<u64>,
    pub memory_total: Option<u64>,
    /// °C.
    pub temperature: Option<u32>,
    pub power_mw: Option<u32>,
    /// Oldest first.
    pub history: Vec<GpuPoint>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsPoint {
    pub at_ms: i64,
    pub cpu_millicores: Option<u32>,
    pub memory_used: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuPoint {
    pub at_ms: i64,
    pub utilization: Option<u8>,
    pub memory_used: Option<u64>,
}

/// Every error the API returns: `{"error": "..."}` with a fitting status code.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// `POST /api/projects/{project}/fleets`: creates or updates a fleet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubmitFleet {
    pub configuration: crate::config::FleetConfig,
    pub source: Option<String>,
}

impl SubmitFleet {
    /// The fleet configuration's limits ([`crate::config::FleetConfig::check_limits`]).
    pub fn check(&self) -> Result<(), LimitError> {
        self.configuration.check_limits()
    }
}

/// A fleet: a named group of nodes; `placement: cluster` marks nodes that reach each other.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fleet {
    pub name: String,
    pub project: String,
    pub placement: crate::config::Placement,
    /// Names of the enrolled nodes that belong to it.
    pub nodes: Vec<String>,
    pub ready_nodes: u32,
    pub created_at_ms: i64,
    pub configuration: crate::config::FleetConfig,
}

/// The `Upgrade` protocol of `GET /api/projects/{project}/runs/{name}/tunnel?port=P&job=K`: after
/// `101 Switching Protocols` the connection is a raw byte pipe to that port of the job's container.
pub const TUNNEL_PROTOCOL: &str = "corral-tunnel";

/// The `Upgrade` protocol of `GET /api/projects/{project}/runs/{name}/exec?command=[..]`: after
/// `101 Switching Protocols` the connection carries `wire::ExecFrame`s (framed as on the QUIC link).
pub const EXEC_PROTOCOL: &str = "corral-exec";

/// `POST /api/nodes/cordon`: cordons or uncordons many nodes at once — the ones named, a fleet's, or
/// all. Answers the names of the nodes it changed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CordonNodes {
    pub cordoned: bool,
    #[serde(default)]
    pub nodes: Vec<String>,
    #[serde(default)]
    pub fleet: Option<String>,
    #[serde(default)]
    pub all: bool,
}

impl CordonNodes {
    /// Each node and fleet named follows its rule.
    pub fn check(&self) -> Result<(), LimitError> {
        let bad = |field: String| move |message| LimitError { field, message };
        for (i, node) in self.nodes.iter().enumerate() {
            check_name(NameKind::Node, node).map_err(bad(format!("nodes[{i}]")))?;
        }
        match &self.fleet {
            Some(fleet) => check_name(NameKind::Fleet, fleet).map_err(bad("fleet".into())),
            None => Ok(()),
        }
    }
}

/// `POST /api/nodes/{name}/drain`: cordon, then stop what still runs after the deadline.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DrainNode {
    /// Seconds to wait for jobs to end by themselves; then they are stopped. `None`: wait for ever.
    pub deadline_secs: Option<u64>,
}

impl DrainNode {
    /// The deadline is at most a year, as every duration ([`MAX_DURATION_SECS`]).
    pub fn check(&self) -> Result<(), LimitError> {
        match self.deadline_secs {
            Some(s) if s > MAX_DURATION_SECS => Err(LimitError {
                field: "deadline_secs".into(),
                message: format!("must be at most {MAX_DURATION_SECS} (a year), found {s}"),
            }),
            _ => Ok(()),
        }
    }
}

/// `POST /api/tokens`: a join token for enrolling nodes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CreateJoinToken {
    /// Nodes enrolled with it join this fleet.
    #[serde(default)]
    pub fleet: Option<String>,
    /// It stops working after this long; `None`: never.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// It enrolls at most this many nodes; `None`: any number.
    #[serde(default)]
    pub uses: Option<u32>,
}

/// Something a run could be placed on: an on-prem node (price 0) or a cloud instance type, as
/// `corral offer` lists them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Offer {
    /// `on-prem`, or the cloud backend (`aws`).
    pub backend: String,
    /// The node's name, or the instance type.
    pub name: String,
    /// The cloud region (none on-prem).
    pub region: Option<String>,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// e.g. `x86_64`, `aarch64`.
    pub arch: String,
    pub gpu_count: u32,
    /// e.g. `A100`.
    pub gpu_name: Option<String>,
    pub gpu_memory_bytes: Option<u64>,
    pub spot: bool,
    /// US dollars per hour; `None` where the catalog has no price.
    pub price: Option<f64>,
}

/// `GET /api/offers`: what fits, and what could not be asked (a region that failed).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Offers {
    pub offers: Vec<Offer>,
    pub warnings: Vec<String>,
}

/// A configured cloud backend and whether it works.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendInfo {
    pub name: String,
    pub regions: Vec<String>,
    /// `None` when it answers; else what is wrong, as the cloud said it.
    pub error: Option<String>,
}

/// An image in the coordinator's own store (`corral image push`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageInfo {
    /// As Docker names it: `team/app:1`, `busybox:latest`.
    pub name: String,
    /// The project it belongs to; `None`: shared by every project (pushed with `--shared`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Bytes of its config and layers (layers shared with other images count in each).
    pub size: u64,
    pub layers: u32,
    pub pushed_ms: i64,
}

/// A project's secret as the API shows it: never its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub name: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// `PUT /api/projects/{project}/secrets/{name}`: the value to seal.
#[derive(Clone, Serialize, Deserialize)]
pub struct SetSecret {
    pub value: String,
}

/// `POST /api/uploads/check`: which of these uploads (SHA-256s of the tars `corral apply` would
/// send) the coordinator lacks. Answered with [`MissingUploads`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckUploads {
    pub sha256: Vec<String>,
}

impl CheckUploads {
    /// As many as one run can name (its repo and its `files`), each a digest.
    pub fn check(&self) -> Result<(), LimitError> {
        use crate::config::limits::{MAX_FILES, MAX_REPOS};
        if self.sha256.len() > MAX_FILES + MAX_REPOS {
            return Err(LimitError {
                field: "sha256".into(),
                message: format!("at most {} uploads, found {}", MAX_FILES + MAX_REPOS, self.sha256.len()),
            });
        }
        match self.sha256.iter().position(|d| !crate::config::UploadRef::is_digest(d)) {
            Some(i) => Err(LimitError { field: format!("sha256[{i}]"), message: "not 64 lowercase hex digits".into() }),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MissingUploads {
    pub missing: Vec<String>,
}

/// The answer to `PUT /api/uploads/{sha256}` (the body is the tar, streamed; at most
/// [`crate::config::limits::MAX_UPLOAD_BYTES`]): stored, its digest checked.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredUpload {
    pub sha256: String,
    pub size: u64,
    /// False when the store already had it (nothing was written).
    #[serde(default)]
    pub new: bool,
}

/// A join token as `corral token list` shows it: never its secret, which only its creation returns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinTokenInfo {
    /// The first 12 hex digits of the secret's SHA-256: what `corral token revoke` takes.
    pub id: String,
    pub fleet: Option<String>,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub uses_left: Option<i64>,
    pub revoked: bool,
    /// The coordinator's own token, made at its first start (the data dir's `join-token`): it
    /// never expires and enrolls any number of hosts until it is revoked.
    #[serde(default)]
    pub default: bool,
    /// The token itself (`corral1.<ca hash>.<secret>`), only in the answer to its creation.
    #[serde(default)]
    pub token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_paths() {
        assert_eq!(check_name(NameKind::Run, "train-1"), Ok(()));
        assert_eq!(check_name(NameKind::Node, "10-0-0-1"), Ok(()));
        assert_eq!(
            check_name(NameKind::Run, "../../../nodes/node2/cordon?x="),
            Err("not a valid run name: \"../../../nodes/node2/cordon?x=\" (use 2 to 41 lowercase letters, digits and hyphens, starting with a letter)".into())
        );
        let e = check_name(NameKind::Node, "gpu/1").expect_err("refused");
        assert_eq!(e, "not a valid node name: \"gpu/1\" (use 1 to 63 lowercase letters, digits and hyphens)");
        assert!(check_name(NameKind::Fleet, &"a".repeat(100)).expect_err("refused").contains("\"... (use"));
        assert!(check_name(NameKind::Node, "").is_err());
    }

    #[test]
    fn request_checks() {
        let drain = DrainNode { deadline_secs: Some(u64::MAX) };
        assert_eq!(drain.check().expect_err("refused").field, "deadline_secs");
        let cordon = CordonNodes { cordoned: true, nodes: vec!["a".into(), "../x".into()], ..Default::default() };
        assert_eq!(cordon.check().expect_err("refused").field, "nodes[1]");
    }
}

/// A user's role in the whole cluster: a global `admin` manages users, nodes, join tokens and
/// images, and has every right in every project; a `user` has the rights its projects give it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GlobalRole {
    #[default]
    User,
    Admin,
}

/// A member's role in a project (dstack's): a `user` runs, stops, reads the logs of and attaches
/// to the project's runs; a `manager` also manages its members, fleets, volumes and secrets; an
/// `admin` also grants `admin` and deletes the project. Each role has the rights of those before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectRole {
    User,
    Manager,
    Admin,
}

impl ProjectRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Manager => "manager",
            Self::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::User, Self::Manager, Self::Admin].into_iter().find(|r| r.as_str() == text)
    }
}

impl GlobalRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::User, Self::Admin].into_iter().find(|r| r.as_str() == text)
    }
}

/// `GET /api/users`: a user and its projects (never its token: only a hash is kept).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: GlobalRole,
    pub created_ms: i64,
    pub projects: Vec<Membership>,
}

/// A project a user is a member of, and its role there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub project: String,
    pub role: ProjectRole,
}

/// `POST /api/users`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateUser {
    pub name: String,
    #[serde(default)]
    pub role: GlobalRole,
}

/// The answer to making a user or a new token for one: the token, shown this once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserToken {
    pub user: String,
    pub token: String,
}

/// `GET /api/whoami`: who the token is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// The user; `None` for a service token.
    pub user: Option<String>,
    pub role: Option<GlobalRole>,
    pub projects: Vec<Membership>,
    /// A service token's service, as `project/run`.
    pub service: Option<String>,
}

/// `GET /api/projects`: a project, with the asking user's role in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub name: String,
    pub created_ms: i64,
    pub members: u32,
    /// The asker's role; `None` for a global admin who is not a member.
    pub role: Option<ProjectRole>,
}

/// `POST /api/projects`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateProject {
    pub name: String,
}

/// `GET /api/projects/{project}/members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub user: String,
    pub role: ProjectRole,
}

/// `PUT /api/projects/{project}/members/{user}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetMember {
    pub role: ProjectRole,
}

/// A token that can call one service (`auth: true`) and nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceToken {
    /// The first 12 hex digits of the token's SHA-256: what `corral token revoke --service` takes.
    pub id: String,
    pub run: String,
    pub created_ms: i64,
    /// Who made it: it stops working when that user leaves the project.
    #[serde(default)]
    pub created_by: Option<String>,
    /// The token, only in the answer to its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `POST /api/projects/{project}/service-tokens`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateServiceToken {
    pub run: String,
}

/// An entry of the audit trail: who did what, when, where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub ms: i64,
    /// Who: a user, `service:PROJECT/RUN`, or `None` for the coordinator itself.
    pub user: Option<String>,
    pub project: Option<String>,
    /// What, e.g. `run.apply`, `member.set`, `secret.delete`, `node.enroll`.
    pub action: String,
    /// The run, user, node... it was done to.
    pub object: Option<String>,
    pub detail: Option<String>,
}
