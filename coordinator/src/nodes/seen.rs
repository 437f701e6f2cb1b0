//! When each node was last heard from. A heartbeat touches memory only ([`State::heard`]): the node
//! list answers from there for connected nodes ([`last_seen_ms`]), and [`run`] writes the times to
//! the store at most every [`PERSIST_EVERY`] per node, within a [`TICK`] of a node's disconnection,
//! and on shutdown, so that after a restart `SEEN` is off by no more than that. 10,000 nodes cost one
//! transaction every few seconds, never a write per heartbeat.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use corral_proto::ids::NodeId;

use crate::State;
use crate::secrets::now_ms;

/// A connected node's time in the store is at most this much older than the one in memory.
pub const PERSIST_EVERY: Duration = Duration::from_secs(30);
/// How often the times are compared with what was written.
pub const TICK: Duration = Duration::from_secs(5);

/// When connected nodes were last heard from, as wall-clock milliseconds.
pub fn last_seen_ms(state: &State) -> HashMap<NodeId, i64> {
    let connected = state.sessions.connected();
    let heard = state.sessions.heard();
    let (now, now_ms) = (Instant::now(), now_ms());
    connected.into_iter().filter_map(|n| heard.get(&n).map(|&at| (n, wall_ms(at, now, now_ms)))).collect()
}

/// The wall-clock time of `at`, given the time now on both clocks. An instant in the future (a
/// restart's grace) reads as now.
fn wall_ms(at: Instant, now: Instant, now_ms: i64) -> i64 {
    now_ms - i64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(i64::MAX)
}

/// Writes the nodes' last-heard times to the store (see the module's doc) until `shutdown`, then
/// once more. A failed write is retried on the next tick. What `heard` holds when this is called
/// counts as written (a restart's grace for nodes with jobs, which no one heard yet).
pub fn run(state: Arc<State>, shutdown: CancellationToken) -> impl Future<Output = ()> {
    let mut writer = Writer::new(state.sessions.heard());
    async move {
        loop {
            let last = tokio::select! {
                () = tokio::time::sleep(TICK) => false,
                () = shutdown.cancelled() => true,
            };
            let heard = state.sessions.heard();
            let due = writer.due(&heard, &state.sessions.connected(), last);
            if !due.is_empty() {
                let (now, now_ms) = (Instant::now(), now_ms());
                let rows: Vec<(NodeId, i64)> =
                    due.iter().map(|(n, at)| (n.clone(), wall_ms(*at, now, now_ms))).collect();
                match state.store.nodes_seen(&rows) {
                    Ok(()) => writer.wrote(due),
                    Err(e) => tracing::warn!(nodes = rows.len(), "cannot store when nodes were last seen: {e:#}"),
                }
            }
            if last {
                break;
            }
        }
    }
}

/// The heard time last written per node, to decide what is due. No store, no clock: tested on
/// its own.
struct Writer {
    written: HashMap<NodeId, Instant>,
}

impl Writer {
    fn new(written: HashMap<NodeId, Instant>) -> Self {
        Self { written }
    }

    /// The nodes whose time is to be written: those heard since it was written, when they are
    /// disconnected, when [`PERSIST_EVERY`] passed, or on the `last` pass. A connected node first
    /// met here counts as written: its connection wrote its time (`Store::node_connected`).
    fn due(
        &mut self,
        heard: &HashMap<NodeId, Instant>,
        connected: &HashSet<NodeId>,
        last: bool,
    ) -> Vec<(NodeId, Instant)> {
        let mut due = Vec::new();
        for (node, &at) in heard {
            let connected = connected.contains(node);
            match self.written.get(node) {
                Some(&written) if written == at => {}
                Some(&written) => {
                    if last || !connected || at.saturating_duration_since(written) >= PERSIST_EVERY {
                        due.push((node.clone(), at));
                    }
                }
                None if connected && !last => {
                    self.written.insert(node.clone(), at);
                }
                None => due.push((node.clone(), at)),
            }
        }
        // Nodes gone for good (unreachable, removed) are forgotten.
        self.written.retain(|n, _| heard.contains_key(n));
        due.sort_by(|a, b| a.0.0.cmp(&b.0.0));
        due
    }

    fn wrote(&mut self, due: Vec<(NodeId, Instant)>) {
        for (node, at) in due {
            self.written.insert(node, at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId(n.into())
    }

    #[test]
    fn heartbeats_are_written_every_interval_at_disconnection_and_at_shutdown() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut w = Writer::new(HashMap::new());
        let both: HashSet<NodeId> = [node("a"), node("b")].into();
        let heard = |a: u64, b: u64| HashMap::from([(node("a"), at(a)), (node("b"), at(b))]);

        assert!(w.due(&heard(0, 0), &both, false).is_empty(), "connecting wrote the first time");
        assert!(w.due(&heard(29, 29), &both, false).is_empty(), "not due before the interval");
        let due = w.due(&heard(30, 12), &both, false);
        assert_eq!(due, vec![(node("a"), at(30))], "a is due, b's heartbeats stopped");
        w.wrote(due);
        assert!(w.due(&heard(35, 12), &both, false).is_empty(), "a was written at 30");

        // b disconnects: its last time is written on the next pass, once.
        let only_a: HashSet<NodeId> = [node("a")].into();
        let due = w.due(&heard(40, 13), &only_a, false);
        assert_eq!(due, vec![(node("b"), at(13))]);
        w.wrote(due);
        assert!(w.due(&heard(45, 13), &only_a, false).is_empty());

        // Shutdown: whatever is newer than the store.
        assert_eq!(w.due(&heard(46, 13), &only_a, true), vec![(node("a"), at(46))]);
    }

    #[test]
    fn nodes_between_two_passes_and_a_restart_s_grace() {
        let t0 = Instant::now();
        let grace = t0 + Duration::from_secs(20);
        // A node with jobs before the restart: its grace is no sighting.
        let mut w = Writer::new(HashMap::from([(node("old"), grace)]));
        // "brief" connected and left between two passes; "new" is connected.
        let new: HashSet<NodeId> = [node("new")].into();
        let heard = HashMap::from([(node("old"), grace), (node("brief"), t0), (node("new"), t0)]);
        let due = w.due(&heard, &new, false);
        assert_eq!(due, vec![(node("brief"), t0)], "a connected node's connection wrote its time");
        w.wrote(due);
        // Shutdown: "new" was heard since.
        let later = t0 + Duration::from_secs(3);
        let heard = HashMap::from([(node("old"), grace), (node("brief"), t0), (node("new"), later)]);
        assert_eq!(w.due(&heard, &new, true), vec![(node("new"), later)]);
    }

    #[test]
    fn a_failed_write_is_due_again_and_a_lost_node_forgotten() {
        let t0 = Instant::now();
        let mut w = Writer::new(HashMap::new());
        let a: HashSet<NodeId> = [node("a")].into();
        w.due(&HashMap::from([(node("a"), t0)]), &a, false);
        let later = HashMap::from([(node("a"), t0 + PERSIST_EVERY)]);
        assert_eq!(w.due(&later, &a, false).len(), 1);
        assert_eq!(w.due(&later, &a, false).len(), 1, "not written: still due");
        w.due(&HashMap::new(), &HashSet::new(), false);
        assert!(w.written.is_empty(), "a node no longer heard of is forgotten");
    }

    #[test]
    fn wall_clock_of_an_instant() {
        let now = Instant::now();
        assert_eq!(wall_ms(now - Duration::from_millis(1500), now, 10_000), 8_500);
        assert_eq!(wall_ms(now + Duration::from_secs(20), now, 10_000), 10_000, "a grace in the future reads as now");
    }
}
