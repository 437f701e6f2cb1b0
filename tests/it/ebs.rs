//! EBS volumes against the EC2 emulator (`moto_server`, as in `aws`): `corral apply` of a
//! `type: volume` with `backend: aws` creates the volume; a run that mounts it is placed on the
//! AWS fleet's node in its zone and the volume is attached to that node's instance; once the run
//! ends it is detached; `corral volume delete` deletes it. Each step is read back from the EC2 API.

use std::time::Duration;

use anyhow::Context;

use corral_proto::api;
use corral_tests::procs::wait_until;

use crate::aws::{Coord, agent, apply, cli, ec2, emulator_ami, moto, user_data_args, wait_for_instances, xml_values};

/// The volume's `<volumeSet>` item, as DescribeVolumes answers.
async fn describe(moto: &crate::aws::Moto, id: &str) -> anyhow::Result<String> {
    ec2(moto, &format!("Action=DescribeVolumes&VolumeId.1={id}")).await
}

fn volumes(c: &Coord) -> anyhow::Result<Vec<api::Volume>> {
    let out = cli(c, &["volume", "list", "--json"])?;
    anyhow::ensure!(out.status.success(), "volume list: {}", String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ebs_volume_is_created_attached_to_the_run_s_instance_detached_after_and_deleted() -> anyhow::Result<()> {
    crate::harness::ensure_image();
    let moto = moto().await?;
    let dir = tempfile::tempdir()?;
    let ami = emulator_ami(&moto).await?;
    let c = Coord::start(dir.path(), &moto.url, &["--aws-ami", &ami, "--elastic-every", "1s"]).await?;

    // An AWS fleet of one instance; a real agent plays the instance (emulated ones do not boot).
    apply(&c, dir.path(), "cloud", "type: fleet\nname: cloud\nnodes: 1\nbackends: [aws]\n", false)?;
    let instance = wait_for_instances(&moto, "cloud", 1).await?.remove(0);
    let (token, node) = user_data_args(&moto, &instance).await?;
    let state = dir.path().join("agent");
    let _containers = crate::harness::ContainerGuard::for_state(&state);
    let _agent = agent(&c.quic, &token, &node, &state)?;
    let xml = ec2(&moto, &format!("Action=DescribeInstances&InstanceId.1={instance}")).await?;
    let zone = xml_values(&xml, "availabilityZone").into_iter().next().context("the instance's zone")?;

    // Applied: created in the cloud, in the zone asked, of the size asked.
    apply(
        &c,
        dir.path(),
        "ckpt",
        &format!("type: volume\nname: ckpt\nbackend: aws\nregion: us-east-1\navailability_zone: {zone}\nsize: 2GB\n"),
        false,
    )?;
    let listed = volumes(&c)?;
    let id = listed[0].volume_id.clone().context("an EBS id")?;
    assert_eq!((listed[0].status, listed[0].size), (api::VolumeStatus::Active, Some(2 << 30)), "{listed:?}");
    let xml = describe(&moto, &id).await?;
    assert_eq!(xml_values(&xml, "size").first().map(String::as_str), Some("2"), "{xml}");
    assert_eq!(xml_values(&xml, "availabilityZone").first(), Some(&zone), "{xml}");
    assert!(xml.contains("<key>corral:volume</key>") && xml.contains("<value>ckpt</value>"), "tagged: {xml}");

    // A run that mounts it: attached to the node's instance while the job is placed.
    apply(
        &c,
        dir.path(),
        "train",
        &format!(
            "type: task\nname: train\nimage: {}\nvolumes: [\"ckpt:/ckpt\"]\ncommands: [\"ls /ckpt\"]\n",
            crate::harness::IMAGE
        ),
        true,
    )?;
    wait_until(Duration::from_secs(60), async || {
        describe(&moto, &id).await.is_ok_and(|x| {
            xml_values(&x, "instanceId").contains(&instance) && xml_values(&x, "status").iter().any(|s| s == "attached")
        })
    })
    .await
    .with_context(|| format!("{id} attached to {instance}"))?;
    let listed = volumes(&c)?;
    assert_eq!(listed[0].node.as_deref(), Some(node.as_str()), "{listed:?}");
    assert_eq!(listed[0].in_use_by, ["train"], "{listed:?}");
    let refused = cli(&c, &["volume", "delete", "ckpt", "-y"])?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use by run(s) train"), "{refused:?}");

    // The run ends: detached.
    let stop = cli(&c, &["stop", "train", "-y", "--abort"])?;
    anyhow::ensure!(stop.status.success(), "stop: {}", String::from_utf8_lossy(&stop.stderr));
    wait_until(Duration::from_secs(60), async || {
        describe(&moto, &id).await.is_ok_and(|x| !xml_values(&x, "instanceId").contains(&instance))
    })
    .await
    .with_context(|| format!("{id} detached"))?;

    // Deleted: gone from the cloud and from the list.
    let deleted = cli(&c, &["volume", "delete", "ckpt", "-y"])?;
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    assert!(String::from_utf8_lossy(&deleted.stdout).contains("volume ckpt deleted"));
    let xml = describe(&moto, &id).await?;
    assert!(xml_values(&xml, "volumeId").is_empty(), "the EBS volume is gone: {xml}");
    assert!(volumes(&c)?.is_empty());
    Ok(())
}
