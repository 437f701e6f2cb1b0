//! `corral node ...` and `corral fleet ...`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};

use corral_proto::api::{self, DrainNode, SubmitFleet};
use corral_proto::config::FleetConfig;

use crate::client::Client;
use crate::commands::{confirm, node_list};
use crate::output::{ago, table};
use crate::{FleetCommand, NodeCommand, NodeSelection};

type Out<'a> = &'a mut (dyn Write + Send);

pub async fn node(client: &Client, command: NodeCommand, out: Out<'_>) -> anyhow::Result<i32> {
    match command {
        NodeCommand::List { json } => node_list(client, json, out).await,
        NodeCommand::Cordon(which) => cordon(client, which, true, out).await,
        NodeCommand::Uncordon(which) => cordon(client, which, false, out).await,
        NodeCommand::Drain { node, deadline } => drain(client, &node, deadline.as_deref(), out).await,
    }
}

async fn cordon(client: &Client, which: NodeSelection, cordoned: bool, out: Out<'_>) -> anyhow::Result<i32> {
    let sel = api::CordonNodes { cordoned, nodes: which.nodes, fleet: which.fleet, all: which.all };
    let changed: Vec<String> = client.post("/api/nodes/cordon", &sel).await?;
    let what = if cordoned { "cordoned: it takes no new jobs" } else { "takes new jobs again" };
    match changed.as_slice() {
        [] => writeln!(out, "no node changed: {}", if cordoned { "already cordoned" } else { "none was cordoned" })?,
        [one] => writeln!(out, "node {one} {what}")?,
        many => {
            let what = if cordoned { "cordoned: they take no new jobs" } else { "take new jobs again" };
            writeln!(out, "{} nodes {what}: {}", many.len(), many.join(", "))?
        }
    }
    Ok(0)
}

/// Cordons the node and waits until its jobs have ended; past the deadline the coordinator stops
/// them (it keeps going if this command is interrupted).
async fn drain(client: &Client, node: &str, deadline: Option<&str>, out: Out<'_>) -> anyhow::Result<i32> {
    let deadline_secs = deadline
        .map(|d| {
            corral_proto::config::parse_duration(d).with_context(|| format!("--deadline {d:?}: use e.g. 90s, 10m, 1h"))
        })
        .transpose()?;
    let _: () = client.post(&format!("/api/nodes/{node}/drain"), &DrainNode { deadline_secs }).await?;
    writeln!(out, "node {node} cordoned; waiting for its jobs to end")?;
    let mut last = u32::MAX;
    loop {
        let nodes: Vec<api::Node> = client.get("/api/nodes").await?;
        let Some(n) = nodes.iter().find(|n| n.name == node || n.id.as_str() == node) else {
            bail!("node {node} vanished");
        };
        if n.running_jobs == 0 {
            writeln!(out, "node {node} drained")?;
            return Ok(0);
        }
        if n.running_jobs != last {
            eprintln!("{} job(s) still on {node}", n.running_jobs);
            last = n.running_jobs;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn fleet(client: &Client, command: FleetCommand, out: Out<'_>) -> anyhow::Result<i32> {
    match command {
        FleetCommand::List { json } => {
            let fleets: Vec<api::Fleet> = client.get(&client.project_path("fleets")).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&fleets)?)?;
                return Ok(0);
            }
            let mut t = table(&["FLEET", "PLACEMENT", "NODES", "READY", "CREATED"]);
            for f in &fleets {
                t.add_row(vec![
                    f.name.clone(),
                    format!("{:?}", f.placement).to_lowercase(),
                    if f.nodes.is_empty() { "-".to_owned() } else { f.nodes.join(", ") },
                    f.ready_nodes.to_string(),
                    ago(f.created_at_ms),
                ]);
            }
            writeln!(out, "{t}")?;
            Ok(0)
        }
        FleetCommand::Get { name, json } => {
            let f: api::Fleet = client.get(&client.project_path(&format!("fleets/{name}"))).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&f)?)?;
            } else {
                writeln!(out, "fleet:     {}", f.name)?;
                writeln!(out, "placement: {:?}", f.placement)?;
                writeln!(out, "nodes:     {} ({} ready)", f.nodes.join(", "), f.ready_nodes)?;
            }
            Ok(0)
        }
        FleetCommand::Delete { name, yes } => {
            if !yes && !confirm(&format!("Delete fleet {name}? (its nodes stay enrolled)"))? {
                return Ok(1);
            }
            let _: () = client.delete(&client.project_path(&format!("fleets/{name}"))).await?;
            writeln!(out, "fleet {name} deleted")?;
            Ok(0)
        }
    }
}

/// `corral apply` of a `type: fleet` file.
pub async fn apply_fleet(
    client: &Client,
    configuration: FleetConfig,
    source: String,
    out: Out<'_>,
) -> anyhow::Result<i32> {
    let f: api::Fleet =
        client.post(&client.project_path("fleets"), &SubmitFleet { configuration, source: Some(source) }).await?;
    writeln!(out, "fleet {} applied (placement: {:?})", f.name, f.placement)?;
    if f.nodes.is_empty() {
        writeln!(out, "no nodes yet: start `corral-agent --fleet {}` on each host", f.name)?;
    } else {
        writeln!(out, "nodes: {} ({} ready)", f.nodes.join(", "), f.ready_nodes)?;
    }
    Ok(0)
}
