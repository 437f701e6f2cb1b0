//! A job's mounts: host paths bound into its container, and Corral's named volumes — Docker
//! volumes labelled `corral.volume` (made before the container, so that they carry the label;
//! removed with `corral volume delete`).

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::models::{Mount as DockerMount, MountType, VolumeCreateRequest};
use corral_proto::ids::NodeId;
use corral_proto::job::{JobSpec, Mount};

use crate::Shim;
use crate::error::{ShimError, daemon_message, status_of};
use crate::spec::{LABEL_NODE, LABEL_PROJECT};

/// Marks a Docker volume as a Corral named volume; the value is the volume's name.
pub const LABEL_VOLUME: &str = "corral.volume";

/// One of Corral's Docker volumes on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedVolume {
    pub docker_name: String,
    /// Where Docker keeps its files on the host.
    pub mountpoint: PathBuf,
}

/// The container's mounts for `spec`, as Docker takes them.
pub(crate) fn container_mounts(spec: &JobSpec) -> Option<Vec<DockerMount>> {
    let mounts: Vec<DockerMount> = spec
        .container
        .mounts
        .iter()
        .filter_map(|m| match m {
            Mount::Host { host_path, path, .. } => Some(DockerMount {
                typ: Some(MountType::BIND),
                source: Some(host_path.clone()),
                target: Some(path.clone()),
                ..Default::default()
            }),
            Mount::Volume { docker_name, path, .. } => Some(DockerMount {
                typ: Some(MountType::VOLUME),
                source: Some(docker_name.clone()),
                target: Some(path.clone()),
                ..Default::default()
            }),
            // The agent mounts it on the host and passes it on as a host path.
            Mount::Ebs { .. } => None,
        })
        .collect();
    (!mounts.is_empty()).then_some(mounts)
}

impl Shim {
    /// Makes a named volume's Docker volume, unless it exists.
    pub async fn ensure_volume(
        &self,
        docker_name: &str,
        name: &str,
        project: &str,
        node: &NodeId,
    ) -> Result<(), ShimError> {
        let docker = self.client().await?;
        if docker.inspect_volume(docker_name).await.is_ok() {
            return Ok(());
        }
        let request = VolumeCreateRequest {
            name: Some(docker_name.to_owned()),
            driver: Some("local".to_owned()),
            labels: Some(HashMap::from([
                (LABEL_VOLUME.to_owned(), name.to_owned()),
                (LABEL_PROJECT.to_owned(), project.to_owned()),
                (LABEL_NODE.to_owned(), node.to_string()),
            ])),
            ..Default::default()
        };
        docker.create_volume(request).await.map(|_| ()).map_err(|e| ShimError::Unexpected {
            op: "creating the volume",
            subject: docker_name.to_owned(),
            detail: daemon_message(&e),
        })
    }

    /// Removes a named volume's Docker volume; one that is not there is already removed.
    pub async fn remove_volume(&self, docker_name: &str) -> Result<(), ShimError> {
        let docker = self.client().await?;
        match docker.remove_volume(docker_name, None::<bollard::query_parameters::RemoveVolumeOptions>).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(ShimError::Unexpected {
                op: "removing the volume",
                subject: docker_name.to_owned(),
                detail: daemon_message(&e),
            }),
        }
    }

    /// The host paths bound into a container (an agent that restarts finds its jobs' mounted
    /// EBS volumes by them). A container Docker cannot inspect has none.
    pub async fn bind_sources(&self, container: &str) -> Vec<PathBuf> {
        let Ok(docker) = self.client().await else { return Vec::new() };
        let Ok(inspected) = docker.inspect_container(container, None).await else { return Vec::new() };
        inspected.mounts.unwrap_or_default().into_iter().filter_map(|m| m.source.map(PathBuf::from)).collect()
    }

    /// Corral's named volumes on this host.
    pub async fn named_volumes(&self) -> Result<Vec<NamedVolume>, ShimError> {
        let docker = self.client().await?;
        let filters = HashMap::from([("label".to_owned(), vec![LABEL_VOLUME.to_owned()])]);
        let options = bollard::query_parameters::ListVolumesOptions { filters: Some(filters) };
        let list = docker.list_volumes(Some(options)).await.map_err(|e| ShimError::Unexpected {
            op: "listing",
            subject: "the volumes".to_owned(),
            detail: daemon_message(&e),
        })?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| NamedVolume { docker_name: v.name, mountpoint: PathBuf::from(v.mountpoint) })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_binds_and_named_volumes_docker_volumes() {
        let mut spec = JobSpec {
            job_id: "j1".into(),
            run_id: "r1".into(),
            run_name: "train".to_owned(),
            project: "main".to_owned(),
            node_id: "n1".into(),
            image: "corral-test/busybox:latest".to_owned(),
            commands: vec![],
            env: vec![],
            working_dir: None,
            allocation: Default::default(),
            max_duration_secs: None,
            stop_grace_secs: 10,
            host_network: false,
            container: Default::default(),
        };
        assert_eq!(container_mounts(&spec), None);
        spec.container.mounts = vec![
            Mount::Host { host_path: "/srv/data".into(), path: "/data".into(), optional: false },
            Mount::Volume { name: "ckpt".into(), docker_name: "corral-vol-main-ckpt".into(), path: "/ckpt".into() },
        ];
        let m = container_mounts(&spec).expect("mounts");
        assert_eq!(m[0].typ, Some(MountType::BIND));
        assert_eq!((m[0].source.as_deref(), m[0].target.as_deref()), (Some("/srv/data"), Some("/data")));
        assert_eq!(m[1].typ, Some(MountType::VOLUME));
        assert_eq!((m[1].source.as_deref(), m[1].target.as_deref()), (Some("corral-vol-main-ckpt"), Some("/ckpt")));
    }
}
