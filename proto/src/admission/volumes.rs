//! What the coordinator takes of volumes: a run's `volumes` entries, and `type: volume`
//! configurations.

use super::Refused;
use crate::config::{TaskConfig, VolumeBackend, VolumeConfig, VolumeMount};

/// The one interpolation a volume name may hold: each node of a multi-node run gets its own volume.
pub const NODE_RANK: &str = "${{ dstack.node_rank }}";

/// A run's `volumes`: names whose only interpolation is the node rank, and no two mounts at one
/// path.
pub(super) fn check_mounts(task: &TaskConfig) -> Result<(), Refused> {
    for (i, v) in task.volumes.iter().enumerate() {
        if let VolumeMount::Named(m) = v {
            for name in &m.names {
                let plain = expand(name, 0);
                if plain.contains("${{") {
                    return Err(Refused::new(
                        format!("volumes[{i}].name"),
                        format!("\"{name}\" — the only interpolation a volume name may hold is {NODE_RANK}"),
                    ));
                }
                if !crate::config::is_valid_name(&plain) {
                    return Err(Refused::new(
                        format!("volumes[{i}].name"),
                        format!(
                            "\"{name}\" is not a valid volume name: use 2 to 41 lowercase letters, \
                             digits and hyphens, starting with a letter"
                        ),
                    ));
                }
            }
        }
        if task.volumes[..i].iter().any(|w| w.path() == v.path()) {
            return Err(Refused::new(format!("volumes[{i}].path"), format!("\"{}\" is mounted twice", v.path())));
        }
    }
    Ok(())
}

/// A volume name of a run's configuration for the job of node `rank`: `${{ dstack.node_rank }}` and
/// its alias `${{ dstack.job_num }}`, however spaced, are the rank; anything else stays as written
/// (for [`check_mounts`] to refuse).
pub fn expand(name: &str, rank: u32) -> String {
    let mut out = String::with_capacity(name.len());
    let mut last = 0;
    for (range, inner) in crate::config::interpolations(name) {
        if matches!(inner, "dstack.node_rank" | "dstack.job_num") {
            out.push_str(&name[last..range.start]);
            out.push_str(&rank.to_string());
            last = range.end;
        }
    }
    out.push_str(&name[last..]);
    out
}

/// A `type: volume` configuration: with no backend, a Docker volume made on the node where a run
/// first uses it (`size` is not a limit there); with `backend: aws`, an EBS volume in `region`,
/// created with `size` or registered by `volume_id`.
pub fn check_volume(cfg: &VolumeConfig) -> Result<&VolumeConfig, Refused> {
    cfg.check_limits()?;
    let aws = cfg.backend == Some(VolumeBackend::Aws);
    let refused = [
        ("name", cfg.name.is_none(), "a volume needs a name (runs mount it by name)"),
        ("region", !aws && cfg.region.is_some(), "a region is for cloud volumes: add `backend: aws`"),
        (
            "availability_zone",
            !aws && cfg.availability_zone.is_some(),
            "an availability zone is for cloud volumes: add `backend: aws`",
        ),
        ("volume_id", !aws && cfg.volume_id.is_some(), "a volume_id names an EBS volume: add `backend: aws`"),
        ("region", aws && cfg.region.is_none(), "an aws volume needs a region"),
        (
            "size",
            aws && cfg.size.is_none() && cfg.volume_id.is_none(),
            "an aws volume needs a size (or the volume_id of an existing EBS volume)",
        ),
    ];
    match refused.iter().find(|(_, bad, _)| *bad) {
        Some((field, _, why)) => Err(Refused::new(*field, *why)),
        None => Ok(cfg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Configuration, parse};

    fn volume(text: &str) -> VolumeConfig {
        match parse(text, "v.yml").expect("valid") {
            Configuration::Volume(v) => v,
            other => panic!("not a volume: {other:?}"),
        }
    }

    fn task(text: &str) -> TaskConfig {
        match parse(text, "t.yml").expect("valid") {
            Configuration::Task(t) => t,
            other => panic!("not a task: {other:?}"),
        }
    }

    #[test]
    fn on_prem_and_aws_volumes_are_admitted() {
        assert!(check_volume(&volume("type: volume\nname: data\n")).is_ok());
        assert!(check_volume(&volume("type: volume\nname: data\nsize: 10GB\n")).is_ok());
        let aws = "type: volume\nname: my-volume\nbackend: aws\nregion: eu-central-1\nsize: 100GB\n";
        assert!(check_volume(&volume(aws)).is_ok());
        let registered = "type: volume\nname: my-volume\nbackend: aws\nregion: eu-central-1\nvolume_id: vol1235\n";
        assert!(check_volume(&volume(registered)).is_ok());
    }

    #[test]
    fn volumes_missing_what_they_need_are_refused_by_field() {
        let e = check_volume(&volume("type: volume\nsize: 1GB\n")).expect_err("refused").to_string();
        assert!(e.starts_with("name:"), "{e}");
        let e =
            check_volume(&volume("type: volume\nname: data\nregion: us-east-1\n")).expect_err("refused").to_string();
        assert!(e.starts_with("region:"), "{e}");
        let e = check_volume(&volume("type: volume\nname: data\nbackend: aws\nsize: 1GB\n"))
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("region:"), "{e}");
        let e = check_volume(&volume("type: volume\nname: d1\nbackend: aws\nregion: r\n"))
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("size:"), "{e}");
    }

    #[test]
    fn other_clouds_are_refused_when_parsed() {
        let e = parse("type: volume\nname: v1\nbackend: kubernetes\nsize: 100GB\n", "v.yml").expect_err("refused");
        assert!(e.unsupported && e.field == "backend", "{e}");
    }

    #[test]
    fn mount_names_take_only_the_node_rank() {
        let t = task(
            "type: task\nimage: i\ncommands: [x]\nvolumes:\n  - name: data-${{ dstack.node_rank }}\n    path: /d\n",
        );
        assert!(check_mounts(&t).is_ok());
        assert_eq!(expand("data-${{ dstack.node_rank }}", 3), "data-3");
        assert_eq!(expand("d-${{dstack.job_num}}-${{  dstack.node_rank }}", 12), "d-12-12");
        assert_eq!(expand("d-${{ dstack.other }}", 1), "d-${{ dstack.other }}");
        let t = task("type: task\nimage: i\ncommands: [x]\nvolumes:\n  - name: d-${{ run.name }}\n    path: /d\n");
        assert!(check_mounts(&t).expect_err("refused").to_string().starts_with("volumes[0].name:"));
        let t = task("type: task\nimage: i\ncommands: [x]\nvolumes: [\"/a:/d\", \"data:/d\"]\n");
        assert!(check_mounts(&t).expect_err("refused").to_string().starts_with("volumes[1].path:"));
    }
}
