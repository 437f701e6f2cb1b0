//! Named volumes: where each one lives, so that the scheduler places a run that mounts it there;
//! the mounts of a placed job; deletion; and what agents report of the Docker volumes they have.
//!
//! An on-prem named volume is a Docker volume (`corral-vol-<project>-<name>`) on one node. It is
//! made on the node where a run first mounts it (the agent creates it before the container), and
//! from then on every run that mounts it goes to that node. [`Homes`] is the scheduler's view of
//! where volumes are: rebuilt from the store with the rest of its state, and updated in the pass
//! that places a first use, so that two runs of one pass cannot make the same volume on two nodes.

use std::collections::HashMap;

use corral_proto::api::{self, VolumeStatus};
use corral_proto::config::{TaskConfig, VolumeMount};
use corral_proto::ids::NodeId;
use corral_proto::job::{JobSpec, Mount};
use corral_proto::resources::Allocation;
use corral_proto::wire::{CoordinatorMessage, VolumeReport};

use crate::State;
use crate::scheduling::handle::Command;
use crate::scheduling::placement::{Index, Request};
use crate::store::{Store, StoreError, VolumeRow};

/// The Docker volume that holds a project's named volume.
pub fn docker_name(project: &str, name: &str) -> String {
    format!("corral-vol-{project}-{name}")
}

/// The named volumes a queued run's jobs mount, rank by rank, with names expanded
/// (`data-${{ dstack.node_rank }}` is `data-0` for rank 0).
#[derive(Clone, Debug, Default, Hash)]
pub struct RunVolumes {
    project: String,
    /// Per rank, per named mount: the names it may mount (one, or dstack's list of alternatives).
    ranks: Vec<Vec<Vec<String>>>,
    /// Per rank, the volume chosen for each named mount when the run was placed: its name, and
    /// its EBS id for a cloud volume.
    chosen: Vec<Vec<(String, Option<String>)>>,
}

impl RunVolumes {
    pub fn of(task: &TaskConfig, project: &str, ranks: u32) -> Self {
        let named: Vec<&Vec<String>> = task
            .volumes
            .iter()
            .filter_map(|v| match v {
                VolumeMount::Named(m) => Some(&m.names),
                VolumeMount::Instance(_) => None,
            })
            .collect();
        if named.is_empty() {
            return Self::default();
        }
        let ranks = (0..ranks.max(1))
            .map(|rank| {
                named
                    .iter()
                    .map(|names| names.iter().map(|n| corral_proto::admission::volume_name(n, rank)).collect())
                    .collect()
            })
            .collect();
        Self { project: project.to_owned(), ranks, chosen: Vec::new() }
    }

    fn is_empty(&self) -> bool {
        self.ranks.is_empty()
    }
}

/// Where a named volume is, as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Home {
    /// A Docker volume on this node.
    Node(NodeId),
    /// Being deleted: runs that mount it wait.
    Deleting,
    /// An EBS volume (its id): attached to an AWS instance of its zone where a run mounts it.
    Cloud(String),
}

/// Where every named volume that exists somewhere is, by (project, name). A volume that is not
/// here is made where a run first mounts it.
#[derive(Debug, Default)]
pub struct Homes {
    map: HashMap<(String, String), Home>,
    /// EBS volumes: the nodes in their zone.
    cloud: HashMap<(String, String), Vec<NodeId>>,
}

impl Homes {
    /// Reads every volume's home from the store again; the EBS volumes' nodes (which only the
    /// cloud knows) are kept.
    pub fn reload(&mut self, store: &Store) -> Result<(), StoreError> {
        let cloud = std::mem::take(&mut self.cloud);
        *self = Self::load(store)?;
        self.cloud = cloud;
        Ok(())
    }

    pub fn load(store: &Store) -> Result<Self, StoreError> {
        let mut map = HashMap::new();
        for v in store.volumes(None)? {
            let home = match (v.status, &v.node_id) {
                (VolumeStatus::Deleting, _) => Home::Deleting,
                _ if v.backend.is_some() => match &v.volume_id {
                    Some(id) if v.status == VolumeStatus::Active => Home::Cloud(id.clone()),
                    _ => Home::Deleting,
                },
                (_, Some(node)) => Home::Node(node.clone()),
                _ => continue,
            };
            map.insert((v.project, v.name), home);
        }
        Ok(Self { map, cloud: HashMap::new() })
    }

    fn get(&self, project: &str, name: &str) -> Option<&Home> {
        self.map.get(&(project.to_owned(), name.to_owned()))
    }

    /// The nodes an EBS volume can attach to: AWS instances of its zone.
    fn cloud_nodes(&self, project: &str, name: &str) -> Vec<NodeId> {
        self.cloud.get(&(project.to_owned(), name.to_owned())).cloned().unwrap_or_default()
    }

    /// Sets the nodes an EBS volume can attach to (the EBS reconciler, from the cloud's word).
    pub fn set_cloud_nodes(&mut self, cloud: HashMap<(String, String), Vec<NodeId>>) {
        self.cloud = cloud;
    }

    pub(crate) fn set(&mut self, project: &str, name: &str, home: Option<Home>) {
        let key = (project.to_owned(), name.to_owned());
        match home {
            Some(h) => self.map.insert(key, h),
            None => self.map.remove(&key),
        };
    }
}

/// Places a queued run: each rank with named volumes only on the node where they are (volumes
/// that do not exist yet are made where the rank goes). On success, `vols` remembers which name
/// each rank mounts, and `homes` where the new volumes are.
pub(crate) fn place(
    index: &mut Index,
    homes: &mut Homes,
    request: &Request,
    vols: &mut RunVolumes,
) -> Result<Vec<(NodeId, Allocation)>, String> {
    if vols.is_empty() {
        return index.place(request);
    }
    let mut pinned = Vec::with_capacity(vols.ranks.len());
    for (rank, mounts) in vols.ranks.iter().enumerate() {
        // A rank pinned already (a router's worker on its router's node) keeps to those nodes too.
        let before = request.pinned.get(rank).cloned().flatten();
        let pin = match (before, allowed_nodes(homes, &vols.project, mounts)?) {
            (Some(a), Some(b)) => Some(a.into_iter().filter(|n| b.contains(n)).collect()),
            (a, b) => a.or(b),
        };
        pinned.push(pin);
    }
    let mut req = request.clone();
    req.pinned = pinned;
    let placed = index.place(&req).map_err(|why| match where_they_are(index, &req.pinned) {
        Some(nodes) => format!("{why} (its volumes are on {nodes})"),
        None => why,
    })?;
    vols.chosen = placed
        .iter()
        .zip(&vols.ranks)
        .map(|((node, _), mounts)| {
            mounts
                .iter()
                .map(|names| {
                    let here = names.iter().find_map(|n| match homes.get(&vols.project, n) {
                        Some(Home::Node(at)) if at == node => Some((n.clone(), None)),
                        Some(Home::Cloud(id)) if homes.cloud_nodes(&vols.project, n).contains(node) => {
                            Some((n.clone(), Some(id.clone())))
                        }
                        _ => None,
                    });
                    here.unwrap_or_else(|| {
                        // None of them is here, so one that exists nowhere yet: made here.
                        let new = names.iter().find(|n| homes.get(&vols.project, n).is_none());
                        let name = new.unwrap_or(&names[0]).clone();
                        homes.set(&vols.project, &name, Some(Home::Node(node.clone())));
                        (name, None)
                    })
                })
                .collect()
        })
        .collect();
    Ok(placed)
}

/// The nodes a rank may go to for its named mounts: `None` when any node will do (each mount has a
/// name that exists nowhere yet), or the nodes that hold a volume of every mount.
fn allowed_nodes(homes: &Homes, project: &str, mounts: &[Vec<String>]) -> Result<Option<Vec<NodeId>>, String> {
    let mut allowed: Option<Vec<NodeId>> = None;
    for names in mounts {
        let mut nodes = Vec::new();
        let mut anywhere = false;
        for name in names {
            match homes.get(project, name) {
                None => anywhere = true,
                Some(Home::Node(n)) => nodes.push(n.clone()),
                Some(Home::Deleting) => {}
                Some(Home::Cloud(_)) => nodes.extend(homes.cloud_nodes(project, name)),
            }
        }
        if anywhere {
            continue;
        }
        if nodes.is_empty() && names.iter().any(|n| matches!(homes.get(project, n), Some(Home::Cloud(_)))) {
            return Err(format!(
                "volume {} is an EBS volume: it attaches only to a ready node of an aws fleet in its availability zone",
                names.join(" / ")
            ));
        }
        if nodes.is_empty() {
            return Err(format!("volume {} is being deleted or not ready (`corral volume list`)", names.join(" / ")));
        }
        allowed = Some(match allowed {
            None => nodes,
            Some(before) => {
                let both: Vec<NodeId> = before.into_iter().filter(|n| nodes.contains(n)).collect();
                if both.is_empty() {
                    return Err(
                        "its volumes are on different nodes: a job can mount only volumes of one node".to_owned()
                    );
                }
                both
            }
        });
    }
    Ok(allowed)
}

/// The names of the nodes that pins allow, for a reason that says why a run waits.
fn where_they_are(index: &Index, pinned: &[Option<Vec<NodeId>>]) -> Option<String> {
    let mut names: Vec<String> = pinned
        .iter()
        .flatten()
        .flatten()
        .map(|n| index.node(n).map_or_else(|| n.to_string(), |s| s.name.clone()))
        .collect();
    names.sort();
    names.dedup();
    (!names.is_empty()).then(|| format!("node {}", names.join(", ")))
}

/// The mounts of the job of `rank`: host paths as the configuration says, named volumes as the
/// placement chose them.
pub fn mounts(task: &TaskConfig, vols: &RunVolumes, rank: usize) -> Vec<Mount> {
    let mut chosen = vols.chosen.get(rank).map(|c| c.iter()).into_iter().flatten();
    task.volumes
        .iter()
        .filter_map(|v| match v {
            VolumeMount::Instance(m) => {
                Some(Mount::Host { host_path: m.instance_path.clone(), path: m.path.clone(), optional: m.optional })
            }
            VolumeMount::Named(m) => chosen.next().map(|(name, ebs)| match ebs {
                Some(volume_id) => {
                    Mount::Ebs { name: name.clone(), volume_id: volume_id.clone(), path: m.path.clone() }
                }
                None => Mount::Volume {
                    name: name.clone(),
                    docker_name: docker_name(&vols.project, name),
                    path: m.path.clone(),
                },
            }),
        })
        .collect()
}

/// Records the named volumes of a placed gang as living on their nodes (their first use makes
/// them there).
pub fn placed(state: &State, gang: &[(NodeId, JobSpec)]) {
    for (node, spec) in gang {
        let volumes: Vec<(&str, &str, &str)> = spec
            .container
            .mounts
            .iter()
            .filter_map(|m| match m {
                Mount::Volume { name, docker_name, .. } => {
                    Some((spec.project.as_str(), name.as_str(), docker_name.as_str()))
                }
                Mount::Host { .. } | Mount::Ebs { .. } => None,
            })
            .collect();
        if volumes.is_empty() {
            continue;
        }
        if let Err(e) = state.store.volumes_placed(node, &volumes) {
            // The scheduler's view has them; the next resync reads the store again, and the
            // agent's report of its volumes records them.
            tracing::error!(%node, "cannot record where the run's volumes are: {e:#}");
        }
    }
}

/// A node's report of its Docker volumes: sizes; a deletion that is done removes the volume's row
/// (and a new one may be made where a run mounts the name next); one its agent missed is asked again.
pub fn reported(
    state: &State,
    node: &NodeId,
    link: &crate::nodes::sessions::Session,
    reports: &[VolumeReport],
) -> anyhow::Result<()> {
    let present: Vec<(String, Option<u64>)> = reports.iter().map(|r| (r.docker_name.clone(), r.size)).collect();
    let (gone, left) = state.store.volumes_reported(node, &present)?;
    if !gone.is_empty() {
        for v in gone {
            tracing::info!(volume = %v.name, project = %v.project, %node, "volume deleted");
            state.scheduler.send(Command::VolumeHome { project: v.project, name: v.name, home: None });
        }
    }
    for v in left {
        if let Some(docker_name) = v.volume_id {
            link.send(CoordinatorMessage::DeleteVolume { docker_name });
        }
    }
    Ok(())
}

/// The runs with a job that is not finished and mounts each volume, by (project, name).
pub fn users(state: &State) -> Result<HashMap<(String, String), Vec<String>>, StoreError> {
    let mut out: HashMap<(String, String), Vec<String>> = HashMap::new();
    let mut add = |project: &str, name: &str, run: &str| {
        let runs = out.entry((project.to_owned(), name.to_owned())).or_default();
        if !runs.iter().any(|r| r == run) {
            runs.push(run.to_owned());
        }
    };
    for job in state.store.placed_jobs()? {
        for m in job.spec.iter().flat_map(|s| &s.container.mounts) {
            if let Mount::Volume { name, .. } | Mount::Ebs { name, .. } = m {
                add(&job.project, name, &job.run_name);
            }
        }
    }
    for job in state.store.queued_jobs()? {
        let Some(task) = run_task(&job.configuration) else { continue };
        let vols = RunVolumes::of(&task, &job.project, task.nodes);
        for name in vols.ranks.iter().flatten().flatten() {
            add(&job.project, name, &job.run_name);
        }
    }
    Ok(out)
}

fn run_task(cfg: &corral_proto::config::Configuration) -> Option<TaskConfig> {
    use corral_proto::config::Configuration;
    match cfg {
        Configuration::Task(t) => Some(t.clone()),
        Configuration::Service(s) => Some(s.replica_task()),
        Configuration::DevEnvironment(d) => Some(d.as_task()),
        Configuration::Fleet(_) | Configuration::Volume(_) => None,
    }
}

/// The API's view of a volume.
pub fn view(state: &State, v: VolumeRow, users: &HashMap<(String, String), Vec<String>>) -> api::Volume {
    let node = v.node_id.as_ref().map(|n| state.store.node_name(n).ok().flatten().unwrap_or_else(|| n.to_string()));
    api::Volume {
        in_use_by: users.get(&(v.project.clone(), v.name.clone())).cloned().unwrap_or_default(),
        name: v.name,
        project: v.project,
        backend: v.backend,
        node,
        region: v.region,
        availability_zone: v.availability_zone,
        volume_id: v.volume_id,
        size: v.size,
        status: v.status,
        status_message: v.status_message,
        created_at_ms: v.created_ms,
    }
}

/// Why a volume cannot be deleted now, or `Ok` once its deletion has begun: `Ok(true)` when it
/// is gone already (never made, or an EBS volume deleted), `Ok(false)` when its node was asked to
/// remove it.
pub async fn delete(state: &State, project: &str, name: &str) -> Result<bool, DeleteError> {
    let home = |home: Option<Home>| Command::VolumeHome { project: project.to_owned(), name: name.to_owned(), home };
    // Between passes: no pass can place a run on it between the check and the mark (the next pass
    // takes the mark before it plans).
    let v = state.scheduler.between_passes(|| -> Result<Result<VolumeRow, bool>, DeleteError> {
        let Some(v) = state.store.volume(project, name)? else { return Err(DeleteError::NotFound) };
        if let Some(runs) = users(state)?.remove(&(project.to_owned(), name.to_owned())) {
            return Err(DeleteError::InUse(runs));
        }
        if v.backend.is_none() {
            let (Some(node), Some(docker_name)) = (v.node_id.clone(), v.volume_id.clone()) else {
                // Registered, never made anywhere.
                state.store.delete_volume(project, name)?;
                state.scheduler.send(home(None));
                return Ok(Err(true));
            };
            if let Some(s) = state.sessions.get(&node)
                && s.protocol < 2
            {
                return Err(DeleteError::OldAgent(s.name));
            }
            state.store.set_volume_status(project, name, VolumeStatus::Deleting, None)?;
            state.scheduler.send(home(Some(Home::Deleting)));
            // An offline node is asked when it reconnects (its report still lists the volume).
            state.send(&node, CoordinatorMessage::DeleteVolume { docker_name });
            return Ok(Err(false));
        }
        state.store.set_volume_status(project, name, VolumeStatus::Deleting, None)?;
        state.scheduler.send(home(Some(Home::Deleting)));
        Ok(Ok(v))
    })?;
    let v = match v {
        Ok(v) => v,
        Err(done) => return Ok(done),
    };
    match cloud_delete(state, &v).await {
        Ok(()) => {
            state.store.delete_volume(project, name)?;
            state.scheduler.send(home(None));
            Ok(true)
        }
        Err(e) => {
            state.store.set_volume_status(project, name, VolumeStatus::Active, Some(&e))?;
            if let Some(id) = v.volume_id.clone() {
                state.scheduler.send(home(Some(Home::Cloud(id))));
            }
            Err(DeleteError::Cloud(e))
        }
    }
}

/// Whether this coordinator can make a cloud volume in `region` (before anything is stored).
pub fn cloud_ready(state: &State, region: Option<&str>) -> Result<(), String> {
    #[cfg(feature = "aws")]
    {
        let aws = state.backends.aws.as_ref().ok_or_else(|| {
            "backend: this coordinator has no AWS backend (start it with --aws-region REGION)".to_owned()
        })?;
        let region = region.unwrap_or_default();
        if !aws.region_names().iter().any(|r| r == region) {
            return Err(format!(
                "region: {region} is not one of this coordinator's AWS regions ({}): add --aws-region {region}",
                aws.region_names().join(", ")
            ));
        }
        Ok(())
    }
    #[cfg(not(feature = "aws"))]
    {
        let _ = (state, region);
        Err(NO_AWS.to_owned())
    }
}

/// Creates (or registers) a cloud volume once its configuration is stored.
pub async fn cloud_apply(state: &State, v: &VolumeRow) -> Result<(), String> {
    #[cfg(feature = "aws")]
    return ebs::apply(state, v).await;
    #[cfg(not(feature = "aws"))]
    {
        let _ = (state, v);
        Err(NO_AWS.to_owned())
    }
}

async fn cloud_delete(state: &State, v: &VolumeRow) -> Result<(), String> {
    #[cfg(feature = "aws")]
    return ebs::delete(state, v).await;
    #[cfg(not(feature = "aws"))]
    {
        let _ = (state, v);
        Err(NO_AWS.to_owned())
    }
}

#[cfg(feature = "aws")]
mod ebs;
#[cfg(feature = "aws")]
pub use ebs::run as ebs_reconciler;

#[cfg(not(feature = "aws"))]
const NO_AWS: &str = "this coordinator was built without the aws feature: it has no EBS volumes";

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("no such volume")]
    NotFound,
    #[error("in use by run(s) {}: stop them first", .0.join(", "))]
    InUse(Vec<String>),
    #[error("on node {0}, whose agent is too old to delete volumes: upgrade it first")]
    OldAgent(String),
    #[error("{0}")]
    Cloud(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::inventory::HostInventory;
    use corral_proto::resources::{Memory, ResourcesSpec};

    fn task(text: &str) -> TaskConfig {
        match corral_proto::config::parse(text, "t.yml").expect("valid") {
            corral_proto::config::Configuration::Task(t) => t,
            other => panic!("not a task: {other:?}"),
        }
    }

    fn index(nodes: &[&str]) -> Index {
        let mut ix = Index::new();
        for n in nodes {
            let id = NodeId((*n).to_owned());
            let inv = HostInventory { cpu_cores: 8, memory: Memory::gb(16), ..Default::default() };
            ix.upsert(&id, n, None, false, 1, inv);
            ix.set_connected(&id, true);
        }
        ix
    }

    fn request(nodes: u32) -> Request {
        Request {
            resources: ResourcesSpec::default(),
            nodes,
            fleets: vec![],
            instances: vec![],
            pinned: vec![],
            ranks: vec![],
            project: None,
        }
    }

    #[test]
    fn a_new_volume_is_made_where_its_first_run_goes_and_later_runs_follow_it() {
        let t = task("type: task\nimage: i\ncommands: [x]\nvolumes: [\"data:/data\", \"/cache:/cache\"]\n");
        let mut ix = index(&["a", "b"]);
        let mut homes = Homes::default();
        let mut first = RunVolumes::of(&t, "main", 1);
        let placed = place(&mut ix, &mut homes, &request(1), &mut first).expect("fits");
        let node = placed[0].0.clone();
        assert_eq!(homes.get("main", "data"), Some(&Home::Node(node.clone())));
        let m = mounts(&t, &first, 0);
        assert_eq!(
            m,
            vec![
                Mount::Volume { name: "data".into(), docker_name: "corral-vol-main-data".into(), path: "/data".into() },
                Mount::Host { host_path: "/cache".into(), path: "/cache".into(), optional: false },
            ]
        );
        for _ in 0..4 {
            let mut later = RunVolumes::of(&t, "main", 1);
            let p = place(&mut ix, &mut homes, &request(1), &mut later).expect("fits");
            assert_eq!(p[0].0, node, "every run that mounts it goes where it is");
        }
    }

    #[test]
    fn a_run_waits_for_its_volume_s_node_and_for_a_deletion() {
        let t = task("type: task\nimage: i\ncommands: [x]\nvolumes: [\"data:/data\"]\n");
        let mut ix = index(&["a", "b"]);
        let mut homes = Homes::default();
        homes.set("main", "data", Some(Home::Node(NodeId("b".into()))));
        ix.set_cordoned(&NodeId("b".into()), true);
        let why = place(&mut ix, &mut homes, &request(1), &mut RunVolumes::of(&t, "main", 1)).expect_err("waits");
        assert!(why.ends_with("(its volumes are on node b)"), "{why}");
        homes.set("main", "data", Some(Home::Deleting));
        let why = place(&mut ix, &mut homes, &request(1), &mut RunVolumes::of(&t, "main", 1)).expect_err("waits");
        assert!(why.contains("being deleted"), "{why}");
        // Another project's volume of that name is another volume.
        assert!(place(&mut ix, &mut homes, &request(1), &mut RunVolumes::of(&t, "team", 1)).is_ok());
    }

    #[test]
    fn each_rank_goes_to_its_own_volume() {
        let t = task(
            "type: task\nimage: i\nnodes: 2\ncommands: [x]\nvolumes:\n  - name: shard-${{ dstack.node_rank }}\n    path: /d\n",
        );
        let mut ix = Index::new();
        for n in ["a", "b", "c"] {
            let id = NodeId(n.to_owned());
            let inv = HostInventory { cpu_cores: 8, memory: Memory::gb(16), ..Default::default() };
            ix.upsert(&id, n, Some("rack".into()), true, 1, inv);
            ix.set_connected(&id, true);
        }
        let mut homes = Homes::default();
        homes.set("main", "shard-0", Some(Home::Node(NodeId("c".into()))));
        homes.set("main", "shard-1", Some(Home::Node(NodeId("a".into()))));
        let mut vols = RunVolumes::of(&t, "main", 2);
        let p = place(&mut ix, &mut homes, &request(2), &mut vols).expect("fits");
        assert_eq!((p[0].0.0.as_str(), p[1].0.0.as_str()), ("c", "a"), "rank order is kept");
        assert_eq!(
            mounts(&t, &vols, 1)[0],
            Mount::Volume { name: "shard-1".into(), docker_name: "corral-vol-main-shard-1".into(), path: "/d".into() }
        );
    }

    #[test]
    fn of_a_list_of_names_the_one_where_the_run_goes_is_mounted() {
        let t = task("type: task\nimage: i\ncommands: [x]\nvolumes:\n  - name: [east, west]\n    path: /d\n");
        let mut ix = index(&["a", "b"]);
        let mut homes = Homes::default();
        homes.set("main", "east", Some(Home::Node(NodeId("a".into()))));
        homes.set("main", "west", Some(Home::Node(NodeId("b".into()))));
        ix.set_cordoned(&NodeId("a".into()), true);
        let mut vols = RunVolumes::of(&t, "main", 1);
        let p = place(&mut ix, &mut homes, &request(1), &mut vols).expect("fits");
        assert_eq!(p[0].0, NodeId("b".into()));
        assert!(matches!(&mounts(&t, &vols, 0)[0], Mount::Volume { name, .. } if name == "west"));
    }

    #[test]
    fn a_rank_pinned_already_keeps_to_its_nodes() {
        let t = task("type: task\nimage: i\ncommands: [x]\nvolumes: [\"fresh:/d\"]\n");
        let mut ix = index(&["a", "b"]);
        let mut homes = Homes::default();
        let req = Request { pinned: vec![Some(vec![NodeId("b".into())])], ..request(1) };
        let p = place(&mut ix, &mut homes, &req, &mut RunVolumes::of(&t, "main", 1)).expect("fits");
        assert_eq!(p[0].0, NodeId("b".into()), "a new volume is made on the node the rank was pinned to");
        homes.set("main", "fresh", Some(Home::Node(NodeId("a".into()))));
        assert!(place(&mut ix, &mut homes, &req, &mut RunVolumes::of(&t, "main", 1)).is_err(), "no node is both");
    }

    #[test]
    fn volumes_on_two_nodes_cannot_be_mounted_together() {
        let t = task("type: task\nimage: i\ncommands: [x]\nvolumes: [\"one:/1\", \"two:/2\"]\n");
        let mut ix = index(&["a", "b"]);
        let mut homes = Homes::default();
        homes.set("main", "one", Some(Home::Node(NodeId("a".into()))));
        homes.set("main", "two", Some(Home::Node(NodeId("b".into()))));
        let why = place(&mut ix, &mut homes, &request(1), &mut RunVolumes::of(&t, "main", 1)).expect_err("waits");
        assert!(why.contains("different nodes"), "{why}");
    }
}
