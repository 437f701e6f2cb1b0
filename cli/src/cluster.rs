//! `corral node ...` and `corral fleet ...`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};

use corral_proto::api::{self, DrainNode, SubmitFleet};
use corral_proto::config::FleetConfig;

use crate::client::{Client, api_path};
use crate::commands::{confirm, node_list};
use crate::output::{ago, table};
use crate::{FleetCommand, GpuCommand, NodeCommand, NodeSelection, TokenCommand};

type Out<'a> = &'a mut (dyn Write + Send);

pub async fn node(client: &Client, command: NodeCommand, out: Out<'_>) -> anyhow::Result<i32> {
    match command {
        NodeCommand::List { json } => node_list(client, json, out).await,
        NodeCommand::Get { node, json } => crate::nodeinfo::node_get(client, &node, json, out).await,
        NodeCommand::Cordon(which) => cordon(client, which, true, out).await,
        NodeCommand::Uncordon(which) => cordon(client, which, false, out).await,
        NodeCommand::Drain { node, deadline } => drain(client, &node, deadline.as_deref(), out).await,
        NodeCommand::Remove { node, yes } => {
            if !yes
                && !confirm(&format!("Remove node {node}? Its certificate is revoked and its jobs are interrupted"))?
            {
                return Ok(1);
            }
            let jobs: usize = client.delete(&api_path(&["api", "nodes", &node])?).await?;
            writeln!(out, "node {node} removed: its agent is refused from now on ({jobs} job(s) interrupted)")?;
            writeln!(out, "to enroll the host again, remove the agent's state dir and run it with a new join token")?;
            Ok(0)
        }
        NodeCommand::Gpu { command: GpuCommand::Enable { node, index } } => {
            let path = api_path(&["api", "nodes", &node, "gpus", &index.to_string(), "enable"])?;
            let r: corral_proto::api::GpuEnabled = client.post(&path, &()).await?;
            if r.was_out {
                writeln!(out, "GPU {} of node {} is back in service", r.index, r.node)?;
            } else {
                writeln!(out, "GPU {} of node {} was not out of service", r.index, r.node)?;
            }
            Ok(0)
        }
    }
}

pub async fn token(client: &Client, command: TokenCommand, out: Out<'_>) -> anyhow::Result<i32> {
    match command {
        TokenCommand::Create { service: Some(run), .. } => crate::teams::create_service_token(client, &run, out).await,
        TokenCommand::List { service: true, json } => crate::teams::list_service_tokens(client, json, out).await,
        TokenCommand::Revoke { id, service: true } => crate::teams::revoke_service_token(client, &id, out).await,
        TokenCommand::Create { service: None, fleet, ttl, uses } => {
            let ttl_secs = ttl
                .as_deref()
                .map(|d| {
                    corral_proto::config::parse_duration(d)
                        .with_context(|| format!("--ttl {d:?}: use e.g. 30m, 1h, 7d"))
                })
                .transpose()?;
            let t: api::JoinTokenInfo =
                client.post("/api/tokens", &api::CreateJoinToken { fleet, ttl_secs, uses }).await?;
            writeln!(out, "{}", t.token.as_deref().unwrap_or_default())?;
            let mut terms = Vec::new();
            if let Some(f) = &t.fleet {
                terms.push(format!("joins fleet {f}"));
            }
            if let Some(u) = t.uses_left {
                terms.push(format!("{u} enrollment(s)"));
            }
            if let Some(e) = t.expires_ms {
                terms.push(format!("expires in {}", until(e)));
            }
            eprintln!(
                "token {}{}",
                t.id,
                if terms.is_empty() { String::new() } else { format!(": {}", terms.join(", ")) }
            );
            eprintln!(
                "enroll a host (as root): curl -fsSLk {}/install.sh | sh -s -- --token <the token above>",
                client.url
            );
            Ok(0)
        }
        TokenCommand::List { service: false, json } => {
            let tokens: Vec<api::JoinTokenInfo> = client.get("/api/tokens").await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&tokens)?)?;
                return Ok(0);
            }
            let now = now_ms();
            let mut t = table(&["ID", "FLEET", "USES LEFT", "EXPIRES", "STATUS", "CREATED"]);
            for k in &tokens {
                let status = if k.revoked {
                    "revoked"
                } else if k.expires_ms.is_some_and(|e| e <= now) {
                    "expired"
                } else if k.uses_left.is_some_and(|u| u <= 0) {
                    "used up"
                } else {
                    "valid"
                };
                t.add_row(vec![
                    k.id.clone(),
                    k.fleet.clone().unwrap_or_else(|| "-".into()),
                    k.uses_left.map_or_else(|| "unlimited".into(), |u| u.to_string()),
                    k.expires_ms.map_or_else(|| "never".into(), |e| if e <= now { "-".into() } else { until(e) }),
                    if k.default { format!("{status} (default)") } else { status.to_owned() },
                    ago(k.created_ms),
                ]);
            }
            writeln!(out, "{t}")?;
            if let Some(k) = tokens.iter().find(|k| k.default && !k.revoked) {
                writeln!(
                    out,
                    "{} is the coordinator's default token (its data dir's join-token): it never expires and has \
                     unlimited uses. Once your hosts are enrolled, revoke it (corral token revoke {}); \
                     corral token create --ttl 1h --uses 3 makes scoped ones.",
                    k.id, k.id
                )?;
            }
            Ok(0)
        }
        TokenCommand::Revoke { id, service: false } => {
            let revoked: String = client.post(&api_path(&["api", "tokens", &id, "revoke"])?, &()).await?;
            writeln!(out, "token {revoked} revoked: it enrolls no more nodes (enrolled ones stay)")?;
            Ok(0)
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// "in 59m", "in 6d" style, for a time ahead.
fn until(ms: i64) -> String {
    let s = ((ms - now_ms()) / 1000).max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
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
    let _: () = client.post(&api_path(&["api", "nodes", node, "drain"])?, &DrainNode { deadline_secs }).await?;
    writeln!(out, "node {node} cordoned; waiting for its jobs to end")?;
    let mut last = u32::MAX;
    loop {
        let nodes: Vec<api::Node> = client.nodes().await?;
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
            let fleets: Vec<api::Fleet> = client.get(&client.project_api(&["fleets"])?).await?;
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
            let f: api::Fleet = client.get(&client.project_api(&["fleets", &name])?).await?;
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
            let _: () = client.delete(&client.project_api(&["fleets", &name])?).await?;
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
    let ssh = configuration.ssh_config.clone();
    let notes = corral_proto::admission::fleet_notes(&configuration);
    let mut f: api::Fleet =
        client.post(&client.project_api(&["fleets"])?, &SubmitFleet { configuration, source: Some(source) }).await?;
    writeln!(out, "fleet {} applied (placement: {:?})", f.name, f.placement)?;
    for note in notes {
        writeln!(out, "note: {note}")?;
    }
    let mut failed = 0;
    if let Some(ssh) = ssh {
        failed = crate::sshfleet::enroll(client, &f.name, &ssh, out).await?;
        f = client.get(&client.project_api(&["fleets", &f.name])?).await?;
    }
    if f.nodes.is_empty() {
        writeln!(
            out,
            "no nodes yet: run the install command on each host with a token for this fleet (corral token create --fleet {})",
            f.name
        )?;
    } else {
        writeln!(out, "nodes: {} ({} ready)", f.nodes.join(", "), f.ready_nodes)?;
    }
    if failed > 0 {
        writeln!(out, "{failed} host(s) not enrolled: fix what is said above and apply again")?;
        return Ok(1);
    }
    Ok(0)
}
