//! Named volumes in the HTTP API: `POST/GET /api/projects/{project}/volumes`,
//! `GET/DELETE /api/projects/{project}/volumes/{name}`.

use serde::{Deserialize, Serialize};

use crate::config::limits::LimitError;
use crate::config::{VolumeBackend, VolumeConfig};

/// `POST /api/projects/{project}/volumes`: registers (or, with a backend, creates) a volume.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubmitVolume {
    pub configuration: VolumeConfig,
    pub source: Option<String>,
}

impl SubmitVolume {
    /// The volume configuration's limits.
    pub fn check(&self) -> Result<(), LimitError> {
        self.configuration.check_limits()
    }
}

/// Where a volume is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeStatus {
    /// Registered; made on the node where a run first uses it.
    Pending,
    /// It exists (on its node, or in the cloud).
    Active,
    /// `corral volume delete` asked its node (or the cloud) to remove it.
    Deleting,
    /// The cloud refused to create it (`status_message` says why).
    Failed,
}

impl VolumeStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Deleting => "deleting",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Active, Self::Deleting, Self::Failed].into_iter().find(|v| v.as_str() == s)
    }
}

/// A named volume as `corral volume list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub project: String,
    /// `None`: a Docker volume on one node.
    pub backend: Option<VolumeBackend>,
    /// The node it lives on (a Docker volume), or the one it is attached to (EBS).
    pub node: Option<String>,
    pub region: Option<String>,
    pub availability_zone: Option<String>,
    /// The Docker volume's name, or the EBS volume's id.
    pub volume_id: Option<String>,
    /// Bytes used (a Docker volume, as its node last measured) or provisioned (EBS).
    pub size: Option<u64>,
    pub status: VolumeStatus,
    pub status_message: Option<String>,
    /// The active runs that mount it.
    pub in_use_by: Vec<String>,
    pub created_at_ms: i64,
}
