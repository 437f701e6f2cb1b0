//! `corral volume list|delete`, and `corral apply` of a `type: volume` configuration.

use std::time::Duration;

use corral_proto::api::{self, SubmitVolume, VolumeStatus};
use corral_proto::config::{VolumeBackend, VolumeConfig};

use crate::VolumeCommand;
use crate::client::Client;
use crate::commands::confirm;
use crate::output::{ago, table};

type Out<'a> = &'a mut (dyn std::io::Write + Send);

/// How long `delete` waits for a node to say it removed the volume.
const DELETE_WAIT: Duration = Duration::from_secs(60);

pub async fn apply_volume(
    client: &Client,
    configuration: VolumeConfig,
    source: String,
    out: Out<'_>,
) -> anyhow::Result<i32> {
    let v: api::Volume =
        client.post(&client.project_api(&["volumes"])?, &SubmitVolume { configuration, source: Some(source) }).await?;
    match (v.backend, &v.node) {
        (Some(VolumeBackend::Aws), _) => writeln!(
            out,
            "volume {} applied: EBS {} in {} ({}), {}",
            v.name,
            v.volume_id.as_deref().unwrap_or("-"),
            v.availability_zone.as_deref().or(v.region.as_deref()).unwrap_or("-"),
            v.status.as_str(),
            size(v.size),
        )?,
        (None, Some(node)) => writeln!(out, "volume {} applied: a Docker volume on node {node}", v.name)?,
        (None, None) => writeln!(
            out,
            "volume {} applied: it is made on the node where a run first mounts it (`volumes: [{}:/path]`)",
            v.name, v.name
        )?,
    }
    Ok(0)
}

pub async fn volume(client: &Client, command: VolumeCommand, out: Out<'_>) -> anyhow::Result<i32> {
    match command {
        VolumeCommand::List { json } => {
            let volumes: Vec<api::Volume> = client.get(&client.project_api(&["volumes"])?).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&volumes)?)?;
                return Ok(0);
            }
            let mut t = table(&["NAME", "PROJECT", "BACKEND", "NODE", "SIZE", "STATUS", "IN USE BY", "CREATED"]);
            for v in &volumes {
                let backend = match v.backend {
                    Some(VolumeBackend::Aws) => {
                        format!("aws ({})", v.availability_zone.as_deref().or(v.region.as_deref()).unwrap_or("-"))
                    }
                    None => "docker".to_owned(),
                };
                let mut status = v.status.as_str().to_owned();
                if let Some(m) = &v.status_message {
                    status.push_str(&format!(": {m}"));
                }
                t.add_row(vec![
                    v.name.clone(),
                    v.project.clone(),
                    backend,
                    v.node.clone().unwrap_or_else(|| "-".to_owned()),
                    size(v.size),
                    status,
                    if v.in_use_by.is_empty() { "-".to_owned() } else { v.in_use_by.join(", ") },
                    ago(v.created_at_ms),
                ]);
            }
            writeln!(out, "{t}")?;
            Ok(0)
        }
        VolumeCommand::Delete { name, yes } => {
            if !yes && !confirm(&format!("Delete volume {name} and everything on it?"))? {
                return Ok(1);
            }
            let left: Option<api::Volume> = client.delete(&client.project_api(&["volumes", &name])?).await?;
            let Some(v) = left else {
                writeln!(out, "volume {name} deleted")?;
                return Ok(0);
            };
            let node = v.node.unwrap_or_default();
            let deadline = tokio::time::Instant::now() + DELETE_WAIT;
            loop {
                let volumes: Vec<api::Volume> = client.get(&client.project_api(&["volumes"])?).await?;
                match volumes.iter().find(|w| w.name == name) {
                    None => {
                        writeln!(out, "volume {name} deleted (removed from node {node})")?;
                        return Ok(0);
                    }
                    Some(w) if w.status != VolumeStatus::Deleting => {
                        anyhow::bail!(
                            "volume {name} was not deleted: {}",
                            w.status_message.as_deref().unwrap_or("see `corral volume list`")
                        );
                    }
                    Some(_) if tokio::time::Instant::now() >= deadline => {
                        writeln!(out, "volume {name} is being deleted: node {node} removes it when it is back")?;
                        return Ok(0);
                    }
                    Some(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
    }
}

fn size(bytes: Option<u64>) -> String {
    match bytes {
        None => "-".to_owned(),
        Some(b) if b < 1 << 20 => format!("{:.1}KB", b as f64 / 1024.0),
        Some(b) if b < 1 << 30 => format!("{:.1}MB", b as f64 / (1 << 20) as f64),
        Some(b) => format!("{:.1}GB", b as f64 / (1 << 30) as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(None), "-");
        assert_eq!(size(Some(6)), "0.0KB");
        assert_eq!(size(Some(4096)), "4.0KB");
        assert_eq!(size(Some(100 << 30)), "100.0GB");
    }
}
