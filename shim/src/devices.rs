//! Host devices given to a job's container (`ContainerSpec::devices`: TPU chips' `/dev/accel*` or
//! `/dev/vfio/*`), in Docker's `--device` syntax: `HOST[:CONTAINER[:PERMISSIONS]]`.

use bollard::models::DeviceMapping;

/// Docker's device mappings; `None` when there are none. Read, write and mknod by default, as
/// `docker run --device` gives.
pub(crate) fn mappings(devices: &[String]) -> Option<Vec<DeviceMapping>> {
    if devices.is_empty() {
        return None;
    }
    Some(
        devices
            .iter()
            .map(|d| {
                let mut parts = d.splitn(3, ':');
                let host = parts.next().unwrap_or_default().to_owned();
                let inside = parts.next().filter(|p| !p.is_empty()).map_or_else(|| host.clone(), str::to_owned);
                let permissions = parts.next().filter(|p| !p.is_empty()).unwrap_or("rwm").to_owned();
                DeviceMapping {
                    path_on_host: Some(host),
                    path_in_container: Some(inside),
                    cgroup_permissions: Some(permissions),
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use corral_proto::job::JobSpec;
    use corral_proto::resources::{Allocation, TPU_INDEX_BASE};

    use super::*;
    use crate::spec::{RunOptions, container_config};

    #[test]
    fn tpu_chips_reach_docker_as_devices_not_as_nvidia_gpus() {
        let mut spec = JobSpec {
            job_id: "j1".into(),
            run_id: "r1".into(),
            run_name: "tpu".to_owned(),
            project: "main".to_owned(),
            node_id: "n1".into(),
            image: "corral-test/busybox:latest".to_owned(),
            commands: vec!["ls /dev/accel0".to_owned()],
            env: vec![],
            working_dir: None,
            allocation: Allocation { cpus: 1, gpu_indices: vec![TPU_INDEX_BASE], ..Allocation::default() },
            max_duration_secs: None,
            stop_grace_secs: 10,
            host_network: true,
            container: Default::default(),
        };
        spec.container.devices = vec!["/tmp/t/dev/accel0:/dev/accel0".to_owned()];
        let c = container_config(&spec, &RunOptions::default());
        let host = c.host_config.expect("host config");
        assert_eq!(host.device_requests, None, "no NVIDIA device request for a TPU chip");
        assert!(!c.env.unwrap_or_default().iter().any(|e| e.starts_with("CUDA_VISIBLE_DEVICES=")));
        let devices = host.devices.expect("devices");
        assert_eq!(devices[0].path_in_container.as_deref(), Some("/dev/accel0"));
    }

    #[test]
    fn docker_device_syntax() {
        assert_eq!(mappings(&[]), None);
        let m = mappings(&["/dev/accel0".into(), "/tmp/t/dev/vfio/0:/dev/vfio/0".into(), "/dev/x:/dev/y:r".into()])
            .expect("some");
        let triple = |d: &DeviceMapping| {
            (
                d.path_on_host.clone().unwrap_or_default(),
                d.path_in_container.clone().unwrap_or_default(),
                d.cgroup_permissions.clone().unwrap_or_default(),
            )
        };
        assert_eq!(triple(&m[0]), ("/dev/accel0".into(), "/dev/accel0".into(), "rwm".into()));
        assert_eq!(triple(&m[1]), ("/tmp/t/dev/vfio/0".into(), "/dev/vfio/0".into(), "rwm".into()));
        assert_eq!(triple(&m[2]), ("/dev/x".into(), "/dev/y".into(), "r".into()));
    }
}
