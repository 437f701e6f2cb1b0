//! One Docker network per run on each host. Docker isolates user-defined bridge networks from one
//! another, so a run's containers cannot reach another run's (a service with `auth: true` is
//! reached only through the coordinator's proxy, which checks the token), while the host — and so
//! the agent's tunnels — reaches every one. Multi-node runs use the host's network instead.

use std::collections::HashMap;

use bollard::models::NetworkCreateRequest;
use corral_proto::ids::RunId;
use corral_proto::job::JobSpec;

use crate::Shim;
use crate::error::{ShimError, daemon_message, status_of};
use crate::spec::{LABEL_NODE, LABEL_RUN};

/// The network of `run` on this host.
pub fn network_name(run: &RunId) -> String {
    format!("corral-run-{run}")
}

/// Where a job's container is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// The host's own network (multi-node runs).
    Host,
    /// The run's own network.
    Run(String),
    /// Docker's default bridge: the daemon had no address pool left for a network of the run's
    /// own. Said in the job's status, with what to change.
    DefaultBridge(String),
}

impl Shim {
    /// The network `spec`'s container joins, made for its run if missing.
    pub async fn run_network(&self, spec: &JobSpec) -> Result<Attachment, ShimError> {
        if spec.host_network {
            return Ok(Attachment::Host);
        }
        let docker = self.client().await?;
        let name = network_name(&spec.run_id);
        if docker.inspect_network(&name, None).await.is_ok() {
            return Ok(Attachment::Run(name));
        }
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".to_owned()),
            labels: Some(HashMap::from([
                (LABEL_RUN.to_owned(), spec.run_id.to_string()),
                (LABEL_NODE.to_owned(), spec.node_id.to_string()),
            ])),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => Ok(Attachment::Run(name)),
            // Another job of the run made it meanwhile.
            Err(e) if status_of(&e) == Some(409) => Ok(Attachment::Run(name)),
            Err(e) if daemon_message(&e).contains("address pool") => Ok(Attachment::DefaultBridge(format!(
                "Docker has no address pool left for a network of this run's own ({}); it runs on the default \
                 bridge, where other runs' containers can reach it: give Docker more pools \
                 (`default-address-pools` in /etc/docker/daemon.json)",
                daemon_message(&e)
            ))),
            Err(e) => Err(ShimError::Unexpected {
                op: "creating the network of",
                subject: format!("run {}", spec.run_id),
                detail: daemon_message(&e),
            }),
        }
    }

    /// Removes this node's run networks that no container uses any more (left by an agent that
    /// stopped between removing a run's last container and its network). Returns how many.
    pub async fn prune_run_networks(&self, node: &corral_proto::ids::NodeId) -> usize {
        let Ok(docker) = self.client().await else { return 0 };
        let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL_NODE}={node}")])]);
        let options = bollard::query_parameters::ListNetworksOptionsBuilder::default().filters(&filters).build();
        let Ok(networks) = docker.list_networks(Some(options)).await else { return 0 };
        let mut pruned = 0;
        for run in networks.iter().filter_map(|n| n.labels.as_ref()?.get(LABEL_RUN).cloned()) {
            if self.release_run_network(&run).await {
                pruned += 1;
            }
        }
        pruned
    }

    /// Removes the run's network on this host once no container of the run is left, in any state:
    /// Docker would also remove a network that a created, not yet started container is to join.
    pub(crate) async fn release_run_network(&self, run: &str) -> bool {
        let Ok(docker) = self.client().await else { return false };
        let _networks = self.lock_networks().await;
        let filters = HashMap::from([("label".to_owned(), vec![format!("{LABEL_RUN}={run}")])]);
        let options =
            bollard::query_parameters::ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        match docker.list_containers(Some(options)).await {
            Ok(left) if left.is_empty() => {}
            Ok(_) => return false,
            Err(e) => {
                tracing::warn!(run, "cannot list the run's containers: {}", daemon_message(&e));
                return false;
            }
        }
        let name = format!("corral-run-{run}");
        match docker.remove_network(&name).await {
            Ok(()) => {
                tracing::debug!(network = %name, "removed the run's network");
                true
            }
            // Still in use by another job of the run, or gone already.
            Err(e) if matches!(status_of(&e), Some(403 | 404 | 409)) => false,
            Err(e) => {
                tracing::warn!(network = %name, "cannot remove the run's network: {}", daemon_message(&e));
                false
            }
        }
    }
}
