//! `type: volume`: a named volume that runs mount by name (`volumes: [name:/path]`). Without a
//! `backend` it is a Docker volume on the node where a run first uses it; with `backend: aws`, an
//! EBS volume in `region`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resources::Memory;

use super::common::tags;
use super::fields::{Issue, Res, choice, string};
use super::resources::memory;
use super::values::resource_name;
use super::yaml::Node;

const VOLUME_FIELDS: [&str; 13] = [
    "type",
    "name",
    "backend",
    "region",
    "availability_zone",
    "size",
    "volume_id",
    "auto_cleanup_duration",
    "tags",
    "claim_name",
    "storage_class_name",
    "access_modes",
    "read_only",
];

/// dstack's volume backends; Corral has `aws` (and on-prem volumes, with no backend).
const VOLUME_BACKENDS: [&str; 4] = ["aws", "gcp", "runpod", "kubernetes"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeBackend {
    /// An EBS volume.
    Aws,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeConfig {
    pub name: Option<String>,
    /// `None`: a Docker volume on one enrolled node.
    pub backend: Option<VolumeBackend>,
    pub region: Option<String>,
    pub availability_zone: Option<String>,
    /// The size of a volume to create (EBS rounds up to whole GiB).
    pub size: Option<Memory>,
    /// An existing EBS volume to register instead of creating one.
    pub volume_id: Option<String>,
    pub tags: BTreeMap<String, String>,
}

pub(crate) fn volume(doc: &Node) -> Res<VolumeConfig> {
    let o = super::object(doc, "volume", &VOLUME_FIELDS)?;
    let backend = match o.map("backend", |n, p| choice(n, p, &VOLUME_BACKENDS))? {
        None => None,
        Some("aws") => Some(VolumeBackend::Aws),
        Some(other) => {
            return Err(Issue::unsupported(
                o.key_mark("backend"),
                o.path("backend"),
                format!(
                    "Corral has no `{other}` backend: a volume is a Docker volume on an enrolled node (leave out \
                     `backend`) or an EBS volume (`backend: aws`)"
                ),
            ));
        }
    };
    o.refuse("auto_cleanup_duration", "volumes are not deleted automatically: they stay until `corral volume delete`")?;
    for k8s in ["claim_name", "storage_class_name", "access_modes", "read_only"] {
        o.refuse(k8s, "is a field of the kubernetes backend, which Corral does not have")?;
    }
    Ok(VolumeConfig {
        name: o.map("name", resource_name)?,
        backend,
        region: o.string("region")?,
        availability_zone: o.string("availability_zone")?,
        size: o.map("size", memory)?,
        volume_id: o.map("volume_id", string)?,
        tags: o.map("tags", tags)?.unwrap_or_default(),
    })
}
