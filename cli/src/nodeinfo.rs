//! `corral node get NAME`: one node as the coordinator sees it — its hardware, jobs, and why its
//! fleet refuses it when it does.

use std::io::Write;

use anyhow::bail;

use corral_proto::api;

use crate::client::Client;
use crate::output::ago;

type Out<'a> = &'a mut (dyn Write + Send);

pub async fn node_get(client: &Client, name: &str, json: bool, out: Out<'_>) -> anyhow::Result<i32> {
    let nodes: Vec<api::Node> = client.nodes().await?;
    let Some(n) = nodes.into_iter().find(|n| n.name == name || n.id.as_str() == name) else {
        bail!("no node named {name:?} (see `corral node list`)");
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&n)?)?;
        return Ok(0);
    }
    let status = match (n.refused.is_some(), n.cordoned) {
        (true, _) => format!("{:?}, refused", n.status),
        (_, true) => format!("{:?}, cordoned", n.status),
        _ => format!("{:?}", n.status),
    }
    .to_lowercase();
    writeln!(out, "node {} ({})", n.name, n.id)?;
    writeln!(out, "  fleet:   {}", n.fleet.as_deref().unwrap_or("-"))?;
    writeln!(out, "  status:  {status}")?;
    if let Some(why) = &n.refused {
        writeln!(out, "  refused: {why}")?;
    }
    writeln!(out, "  address: {}", n.address.as_deref().unwrap_or("-"))?;
    writeln!(out, "  agent:   {}", n.agent_version.as_deref().unwrap_or("-"))?;
    if let Some(seen) = n.last_seen_ms {
        writeln!(out, "  seen:    {}", ago(seen))?;
    }
    writeln!(out, "  jobs:    {}", n.running_jobs)?;
    let Some(i) = &n.inventory else {
        writeln!(out, "  (no inventory yet)")?;
        return Ok(0);
    };
    writeln!(out, "  cpu:     {} x {} ({})", i.cpu_cores, i.cpu_model, i.arch)?;
    writeln!(out, "  memory:  {}", i.memory)?;
    writeln!(out, "  disk:    {}", i.disk)?;
    for g in &i.gpus {
        let busy = if n.busy_gpus.contains(&g.index) { ", busy" } else { "" };
        let health = match n.gpus_out_of_service.iter().find(|o| o.index == g.index) {
            Some(o) => format!(", out of service since {}: {}", ago(o.since_ms), o.reason),
            None => String::new(),
        };
        writeln!(out, "  gpu {}:   {} {} {}{busy}{health}", g.index, g.name, g.memory, g.uuid)?;
    }
    if !n.gpus_out_of_service.is_empty() {
        let healthy = i.gpus.len().saturating_sub(n.gpus_out_of_service.len());
        writeln!(
            out,
            "  {healthy}/{} GPUs healthy: `corral node gpu enable {} INDEX` returns one",
            i.gpus.len(),
            n.name
        )?;
    }
    for (k, t) in i.tpus.iter().enumerate() {
        let busy =
            if n.busy_gpus.contains(&(corral_proto::resources::TPU_INDEX_BASE + k as u32)) { ", busy" } else { "" };
        let id = t.pci_device_id.as_deref().unwrap_or("unknown id");
        writeln!(out, "  tpu {k}:   {} ({id}){busy}", t.device)?;
    }
    Ok(0)
}
