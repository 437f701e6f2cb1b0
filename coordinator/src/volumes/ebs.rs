//! EBS volumes (`type: volume` with `backend: aws`): created (or registered by `volume_id`) when
//! applied, attached to the instance of an AWS fleet's node while a job that mounts it is placed
//! there, detached once none is, deleted with `corral volume delete` (a registered one is only
//! forgotten, as dstack does).
//!
//! [`run`] reconciles from the cloud's own record every few seconds: which of this coordinator's
//! instances (tagged `corral:node`) are in each volume's zone — the nodes a run that mounts it may
//! be placed on — and, per volume, whether it is attached where a placed job wants it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification, VolumeAttachmentState, VolumeType};
use tokio_util::sync::CancellationToken;

use corral_proto::api::VolumeStatus;
use corral_proto::config::VolumeBackend;
use corral_proto::ids::NodeId;
use corral_proto::job::Mount;

use crate::State;
use crate::scheduling::handle::Command;
use crate::store::VolumeRow;

/// How often attachments are reconciled.
const EVERY: Duration = Duration::from_secs(3);
/// The device names offered to `AttachVolume` (Nitro instances show NVMe names whatever is asked;
/// the agent finds the volume by its id).
const DEVICES: [&str; 10] = [
    "/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi", "/dev/sdj", "/dev/sdk", "/dev/sdl", "/dev/sdm", "/dev/sdn",
    "/dev/sdo",
];

fn said(e: impl std::error::Error) -> String {
    DisplayErrorContext(e).to_string()
}

fn region_of(v: &VolumeRow) -> Result<&str, String> {
    v.region.as_deref().ok_or_else(|| format!("volume {} has no region", v.name))
}

fn aws(state: &State) -> Result<&crate::cloud::backends::aws::Aws, String> {
    state.backends.aws.as_ref().ok_or_else(|| {
        "this coordinator has no AWS backend: start it with --aws-region REGION to use EBS volumes".to_owned()
    })
}

/// Creates the EBS volume of a newly applied configuration (or checks a registered `volume_id`),
/// and records its id, zone and size.
pub(super) async fn apply(state: &State, v: &VolumeRow) -> Result<(), String> {
    let cfg = v.configuration.clone().unwrap_or_else(|| unreachable_config(v));
    let region = region_of(v)?;
    let ec2 = aws(state)?.ec2(region)?;
    let fail = |e: String| {
        let _ = state.store.set_volume_status(&v.project, &v.name, VolumeStatus::Failed, Some(&e));
        e
    };
    let id = match (&cfg.volume_id, &v.volume_id) {
        (Some(id), _) => id.clone(),
        (None, Some(id)) => id.clone(),
        (None, None) => {
            let zone = match &cfg.availability_zone {
                Some(z) => z.clone(),
                None => first_zone(ec2).await.map_err(fail)?,
            };
            // Whole GiB, rounded up (admission made sure there is a size).
            let gib = cfg.size.map_or(1, |s| s.0.div_ceil(1 << 30)).max(1);
            let mut tags = vec![
                Tag::builder().key("corral:coordinator").value(crate::cloud::elastic::coordinator_tag(state)).build(),
                Tag::builder().key("corral:project").value(&v.project).build(),
                Tag::builder().key("corral:volume").value(&v.name).build(),
                Tag::builder().key("Name").value(&v.name).build(),
            ];
            tags.extend(cfg.tags.iter().map(|(k, val)| Tag::builder().key(k).value(val).build()));
            let out = ec2
                .create_volume()
                .availability_zone(&zone)
                .size(i32::try_from(gib).map_err(|_| fail(format!("size: {gib} GiB is more than EBS takes")))?)
                .volume_type(VolumeType::Gp3)
                .tag_specifications(
                    TagSpecification::builder().resource_type(ResourceType::Volume).set_tags(Some(tags)).build(),
                )
                .send()
                .await
                .map_err(|e| fail(format!("CreateVolume in {zone}: {}", said(e))))?;
            let id = out.volume_id().ok_or_else(|| fail("CreateVolume answered without a volume id".into()))?;
            tracing::info!(volume = %v.name, ebs = id, %zone, gib, "EBS volume created");
            id.to_owned()
        }
    };
    let described = ec2
        .describe_volumes()
        .volume_ids(&id)
        .send()
        .await
        .map_err(|e| fail(format!("DescribeVolumes {id}: {}", said(e))))?;
    let Some(found) = described.volumes().first() else {
        return Err(fail(format!("no EBS volume {id} in {region}")));
    };
    let size = found.size().map(|g| g.max(0) as u64 * (1 << 30));
    state
        .store
        .set_volume_cloud(&v.project, &v.name, &id, found.availability_zone(), size, v.node_id.as_ref())
        .map_err(|e| e.to_string())?;
    state.scheduler.send(Command::VolumeHome {
        project: v.project.clone(),
        name: v.name.clone(),
        home: Some(super::Home::Cloud(id)),
    });
    Ok(())
}

/// A row with a backend always has the configuration it was applied with.
fn unreachable_config(v: &VolumeRow) -> corral_proto::config::VolumeConfig {
    corral_proto::config::VolumeConfig {
        name: Some(v.name.clone()),
        backend: Some(VolumeBackend::Aws),
        region: v.region.clone(),
        availability_zone: v.availability_zone.clone(),
        size: None,
        volume_id: v.volume_id.clone(),
        tags: Default::default(),
    }
}

async fn first_zone(ec2: &aws_sdk_ec2::Client) -> Result<String, String> {
    let zones = ec2
        .describe_availability_zones()
        .send()
        .await
        .map_err(|e| format!("DescribeAvailabilityZones: {}", said(e)))?;
    zones
        .availability_zones()
        .iter()
        .filter_map(|z| z.zone_name())
        .min()
        .map(str::to_owned)
        .ok_or_else(|| "the region has no availability zone".to_owned())
}

/// Deletes a volume Corral created (detaching it first); a registered one is only forgotten.
pub(super) async fn delete(state: &State, v: &VolumeRow) -> Result<(), String> {
    let registered = v.configuration.as_ref().is_some_and(|c| c.volume_id.is_some());
    let Some(id) = v.volume_id.clone() else { return Ok(()) };
    if registered {
        tracing::info!(volume = %v.name, ebs = %id, "registered EBS volume forgotten (it stays in the cloud)");
        return Ok(());
    }
    let ec2 = aws(state)?.ec2(region_of(v)?)?;
    // Detached first (no job uses it: the caller checked), then deleted once EC2 says it is free.
    for _ in 0..60 {
        let d = ec2
            .describe_volumes()
            .volume_ids(&id)
            .send()
            .await
            .map_err(|e| format!("DescribeVolumes {id}: {}", said(e)))?;
        let Some(vol) = d.volumes().first() else { return Ok(()) };
        let attached = vol.attachments().iter().any(|a| a.state() != Some(&VolumeAttachmentState::Detached));
        if !attached {
            ec2.delete_volume().volume_id(&id).send().await.map_err(|e| format!("DeleteVolume {id}: {}", said(e)))?;
            tracing::info!(volume = %v.name, ebs = %id, "EBS volume deleted");
            return Ok(());
        }
        if vol.attachments().iter().any(|a| a.state() == Some(&VolumeAttachmentState::Attached)) {
            ec2.detach_volume().volume_id(&id).send().await.map_err(|e| format!("DetachVolume {id}: {}", said(e)))?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!("EBS volume {id} did not detach within a minute: try again"))
}

/// The attach/detach reconciler (a no-op without the AWS backend).
pub async fn run(state: Arc<State>, shutdown: CancellationToken) {
    if state.backends.aws.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(e) = reconcile(&state).await {
            tracing::warn!("EBS volumes: {e}");
        }
    }
}

/// An instance of this coordinator, by the node name its agent enrolled under.
struct Instance {
    id: String,
    zone: String,
}

async fn reconcile(state: &State) -> Result<(), String> {
    let volumes: Vec<VolumeRow> = state
        .store
        .volumes(None)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|v| v.backend.is_some() && v.volume_id.is_some() && v.status == VolumeStatus::Active)
        .collect();
    if volumes.is_empty() {
        return Ok(());
    }
    let aws = aws(state)?;
    let tag = crate::cloud::elastic::coordinator_tag(state);
    let nodes: HashMap<String, NodeId> = state
        .store
        .nodes()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|n| !n.revoked)
        .map(|n| (n.name, n.id))
        .collect();
    // Where each placed job that mounts an EBS volume wants it.
    let mut wanted: HashMap<String, NodeId> = HashMap::new();
    for job in state.store.placed_jobs().map_err(|e| e.to_string())? {
        let Some(node) = job.node_id.clone() else { continue };
        for m in job.spec.iter().flat_map(|s| &s.container.mounts) {
            if let Mount::Ebs { volume_id, .. } = m {
                wanted.insert(volume_id.clone(), node.clone());
            }
        }
    }
    let mut regions: Vec<&str> = volumes.iter().filter_map(|v| v.region.as_deref()).collect();
    regions.sort_unstable();
    regions.dedup();
    let mut cloud_nodes: HashMap<(String, String), Vec<NodeId>> = HashMap::new();
    for region in regions {
        let ec2 = aws.ec2(region)?;
        let instances = instances(ec2, &tag).await?;
        for v in volumes.iter().filter(|v| v.region.as_deref() == Some(region)) {
            let id = v.volume_id.clone().unwrap_or_default();
            let d = ec2
                .describe_volumes()
                .volume_ids(&id)
                .send()
                .await
                .map_err(|e| format!("DescribeVolumes {id}: {}", said(e)))?;
            let Some(vol) = d.volumes().first() else {
                let _ = state.store.set_volume_status(
                    &v.project,
                    &v.name,
                    VolumeStatus::Failed,
                    Some("the EBS volume is gone from the cloud"),
                );
                continue;
            };
            let zone = vol.availability_zone().unwrap_or_default();
            let here: Vec<NodeId> =
                instances.iter().filter(|(_, i)| i.zone == zone).filter_map(|(n, _)| nodes.get(n).cloned()).collect();
            cloud_nodes.insert((v.project.clone(), v.name.clone()), here);
            let attached: Vec<(&str, &VolumeAttachmentState)> = vol
                .attachments()
                .iter()
                .filter_map(|a| Some((a.instance_id()?, a.state()?)))
                .filter(|(_, s)| **s != VolumeAttachmentState::Detached)
                .collect();
            let want = wanted.get(&id).and_then(|node| {
                let name = nodes.iter().find(|(_, n)| *n == node).map(|(name, _)| name.clone())?;
                instances.iter().find(|(n, _)| *n == name).map(|(_, i)| (node.clone(), i.id.clone()))
            });
            for (instance, s) in &attached {
                if want.as_ref().is_some_and(|(_, w)| w == instance) || **s != VolumeAttachmentState::Attached {
                    continue;
                }
                // No placed job wants it there any more.
                tracing::info!(volume = %v.name, ebs = %id, instance, "detaching EBS volume");
                ec2.detach_volume()
                    .volume_id(&id)
                    .instance_id(*instance)
                    .send()
                    .await
                    .map_err(|e| format!("DetachVolume {id}: {}", said(e)))?;
            }
            match &want {
                Some((node, instance)) if attached.is_empty() => {
                    let used = devices_in_use(ec2, instance).await?;
                    let Some(device) = DEVICES.iter().find(|d| !used.iter().any(|u| u == *d)) else {
                        return Err(format!("instance {instance} has no free device name for {id}"));
                    };
                    tracing::info!(volume = %v.name, ebs = %id, instance, node = %node, "attaching EBS volume");
                    ec2.attach_volume()
                        .volume_id(&id)
                        .instance_id(instance)
                        .device(*device)
                        .send()
                        .await
                        .map_err(|e| format!("AttachVolume {id} to {instance}: {}", said(e)))?;
                    let _ = state.store.set_volume_cloud(&v.project, &v.name, &id, Some(zone), None, Some(node));
                }
                None if attached.is_empty() && v.node_id.is_some() => {
                    let _ = state.store.set_volume_cloud(&v.project, &v.name, &id, Some(zone), None, None);
                }
                _ => {}
            }
        }
    }
    state.scheduler.send(Command::CloudNodes(cloud_nodes));
    Ok(())
}

/// The device names of the volumes attached to an instance.
async fn devices_in_use(ec2: &aws_sdk_ec2::Client, instance: &str) -> Result<Vec<String>, String> {
    let d = ec2
        .describe_volumes()
        .filters(Filter::builder().name("attachment.instance-id").values(instance).build())
        .send()
        .await
        .map_err(|e| format!("DescribeVolumes on {instance}: {}", said(e)))?;
    Ok(d.volumes().iter().flat_map(|v| v.attachments()).filter_map(|a| a.device()).map(str::to_owned).collect())
}

/// This coordinator's live instances in a region, by the node name they enroll under.
async fn instances(ec2: &aws_sdk_ec2::Client, tag: &str) -> Result<Vec<(String, Instance)>, String> {
    let mut out = Vec::new();
    let mut pages = ec2
        .describe_instances()
        .filters(Filter::builder().name("tag:corral:coordinator").values(tag).build())
        .filters(Filter::builder().name("instance-state-name").values("pending").values("running").build())
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| format!("DescribeInstances: {}", said(e)))?;
        for i in page.reservations().iter().flat_map(|r| r.instances()) {
            let node = i.tags().iter().find(|t| t.key() == Some("corral:node")).and_then(|t| t.value());
            let (Some(node), Some(id)) = (node, i.instance_id()) else { continue };
            let zone = i.placement().and_then(|p| p.availability_zone()).unwrap_or_default().to_owned();
            out.push((node.to_owned(), Instance { id: id.to_owned(), zone }));
        }
    }
    Ok(out)
}
