//! EBS volumes (`type: volume` with `backend: aws`).

use crate::State;
use crate::store::VolumeRow;

pub(super) async fn apply(_state: &State, _v: &VolumeRow) -> Result<(), String> {
    Err("EBS volumes are not built yet".to_owned())
}

pub(super) async fn delete(_state: &State, _v: &VolumeRow) -> Result<(), String> {
    Err("EBS volumes are not built yet".to_owned())
}
