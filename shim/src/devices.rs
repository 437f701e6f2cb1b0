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
    use super::*;

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
