//! Rolling agent upgrades: when the agent binary this coordinator serves differs from the one a
//! node runs (agents report `VERSION+<digest>`), the node is told to upgrade — one node at a time,
//! the next only once the last came back on the new binary. A node that does not within
//! `upgrade_timeout` (its agent keeps or restores its old binary) is left alone for an hour. Never
//! a downgrade: a node on a newer version than the one served keeps it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use corral_proto::ids::NodeId;
use corral_proto::wire::CoordinatorMessage;

use crate::State;

const EVERY: Duration = Duration::from_secs(2);
/// A node whose upgrade failed is not asked again for this long.
const FAILED_BACKOFF: Duration = Duration::from_secs(3600);

struct InFlight {
    node: NodeId,
    name: String,
    since: Instant,
}

/// `0.10.2` > `0.9.7`: numeric parts compared in order.
fn newer(a: &str, b: &str) -> bool {
    let parts = |v: &str| v.split(['.', '-']).map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>();
    parts(a) > parts(b)
}

/// Which connected node to upgrade next: one whose agent upgrades itself, runs another binary
/// than `digest`, is not newer than `version`, and has not failed lately.
fn next_candidate<'a>(
    sessions: &'a [(NodeId, String, String)],
    digest: &str,
    version: &str,
    failed: &HashMap<NodeId, Instant>,
) -> Option<&'a (NodeId, String, String)> {
    sessions.iter().find(|(id, _, reported)| match reported.split_once('+') {
        Some((v, d)) => d != digest && !newer(v, version) && !failed.contains_key(id),
        None => false,
    })
}

pub async fn run(state: Arc<State>, shutdown: CancellationToken) {
    if state.config.agent_binary.is_none() {
        return;
    }
    let mut tick = tokio::time::interval(EVERY);
    let mut in_flight: Option<InFlight> = None;
    let mut failed: HashMap<NodeId, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let dist = state.agent_dist.clone();
        let Ok(Ok(served)) = tokio::task::spawn_blocking(move || dist.get(std::env::consts::ARCH)).await else {
            continue;
        };
        let Some(version) = served.version.clone() else { continue };
        let digest = &served.sha256[..12];
        // (node, name, reported version)
        let sessions = state.sessions.versions();
        if let Some(f) = &in_flight {
            let now_on = sessions.iter().find(|(id, _, _)| *id == f.node).map(|(_, _, v)| v.as_str());
            if now_on.and_then(|v| v.split_once('+')).is_some_and(|(_, d)| d == digest) {
                tracing::info!(node = %f.name, %version, "agent upgraded");
                in_flight = None;
            } else if f.since.elapsed() > state.config.upgrade_timeout {
                tracing::warn!(
                    node = %f.name,
                    "the agent did not come back on the new binary within {:?}; not asking it again for an hour",
                    state.config.upgrade_timeout
                );
                failed.insert(f.node.clone(), Instant::now());
                in_flight = None;
            } else {
                continue;
            }
        }
        failed.retain(|_, at| at.elapsed() < FAILED_BACKOFF);
        let Some((node, name, reported)) = next_candidate(&sessions, digest, &version, &failed) else { continue };
        // Only this architecture's binary has a known version (others: a later rollout's work).
        let arch = state.store.node(node).ok().flatten().and_then(|n| n.inventory).map(|i| i.arch);
        if arch.as_deref().is_some_and(|a| a != std::env::consts::ARCH) {
            failed.insert(node.clone(), Instant::now());
            continue;
        }
        let message = CoordinatorMessage::Upgrade {
            version: version.clone(),
            sha256: served.sha256.clone(),
            size: served.bytes.len() as u64,
        };
        if state.sessions.send(node, message) {
            tracing::info!(node = %name, from = %reported, to = %format!("{version}+{digest}"), "upgrading the agent");
            in_flight = Some(InFlight { node: node.clone(), name: name.clone(), since: Instant::now() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_upgrade_themselves_run_another_binary_and_are_not_newer() {
        let s = |id: &str, v: &str| (NodeId::from(id), id.to_owned(), v.to_owned());
        let sessions = vec![
            s("hollow", "0.1.0"),
            s("same", "0.1.0+aaaaaaaaaaaa"),
            s("newer", "0.2.0+cccccccccccc"),
            s("failed", "0.1.0+bbbbbbbbbbbb"),
            s("older", "0.0.9+bbbbbbbbbbbb"),
        ];
        let mut failed = HashMap::new();
        failed.insert(NodeId::from("failed"), Instant::now());
        let next = next_candidate(&sessions, "aaaaaaaaaaaa", "0.1.0", &failed).map(|c| c.1.as_str());
        assert_eq!(next, Some("older"));
        assert!(newer("0.10.0", "0.9.9") && !newer("0.1.0", "0.1.0") && !newer("0.1.0", "0.2.0"));
    }
}
