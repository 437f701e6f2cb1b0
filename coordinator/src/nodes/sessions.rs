//! The connected nodes: each one's session (its command channel and connection), when each was
//! last heard from, and the one policy for sending a node a command.
//!
//! Sending never waits and never drops a command silently: a node whose queue is full is not
//! keeping up, and its session is reset. Its agent reconnects at once and reports everything it
//! has, and reconciliation ([`crate::nodes::agents`]) sends what is still needed. A command for a node
//! that is not connected is not lost either: the same reconciliation follows its next connection.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use corral_proto::ids::NodeId;
use corral_proto::wire::CoordinatorMessage;

/// Commands queued for one node before its session is reset.
pub const COMMAND_QUEUE: usize = 256;
/// How long a patient sender ([`Session::patient`]) waits for room in a full queue.
pub const PATIENCE: Duration = Duration::from_secs(1);

static CONN_IDS: AtomicU64 = AtomicU64::new(1);

/// Why a connection was closed, as the agent reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    /// The node did not take its commands fast enough.
    Overflow,
    /// No heartbeat within the node timeout.
    Silent,
    /// The node was removed from the cluster.
    Removed,
    /// A report could not be recorded: the agent repeats it on its new connection.
    Unrecorded,
}

impl Reset {
    fn code_and_reason(self) -> (u32, &'static str) {
        match self {
            Self::Overflow => (1, "command queue overflow"),
            Self::Silent => (2, "no heartbeat within the node timeout"),
            Self::Removed => (3, "this node was removed from the cluster; its certificate is revoked"),
            Self::Unrecorded => (4, "the coordinator could not record a report; reconnect and repeat it"),
        }
    }
}

/// One agent's connection. Cloning it is cheap; every clone sends on the same channel.
#[derive(Clone)]
pub struct Session {
    /// Tells a newer connection of the same node from the one it replaced.
    conn_id: u64,
    tx: mpsc::Sender<CoordinatorMessage>,
    pub name: String,
    pub conn: quinn::Connection,
    /// As the agent said in its Hello: `0.1.0+<binary digest>` for agents that upgrade themselves.
    pub agent_version: String,
    /// The protocol agreed in its Hello.
    pub protocol: u16,
    /// How long `send` waits for room in a full queue before the policy applies: none, unless
    /// this is a patient clone.
    patience: Option<Duration>,
}

impl Session {
    /// A session and the receiving end of its command queue, which the connection's writer drains.
    pub fn new(
        name: String,
        conn: quinn::Connection,
        agent_version: String,
        protocol: u16,
    ) -> (Self, mpsc::Receiver<CoordinatorMessage>) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let conn_id = CONN_IDS.fetch_add(1, Ordering::Relaxed);
        (Self { conn_id, tx, name, conn, agent_version, protocol, patience: None }, rx)
    }

    /// A clone that waits up to [`PATIENCE`] for room before it resets the session: for a sender
    /// on a thread of its own that sends a burst (the updates thread reconciling a node that came
    /// back with hundreds of containers), where a queue full for a moment is no sign of a node
    /// falling behind. Never for a sender on the async runtime, which the queue's writer needs.
    pub fn patient(&self) -> Self {
        Self { patience: Some(PATIENCE), ..self.clone() }
    }

    /// Queues a command, by the module's policy. False when it was not queued (the session ended,
    /// or was reset now).
    pub fn send(&self, msg: CoordinatorMessage) -> bool {
        let deadline = self.patience.map(|p| std::time::Instant::now() + p);
        let mut msg = msg;
        loop {
            match self.tx.try_send(msg) {
                Err(mpsc::error::TrySendError::Full(m))
                    if deadline.is_some_and(|d| std::time::Instant::now() < d)
                        && self.conn.close_reason().is_none() =>
                {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                other => return self.sent(other),
            }
        }
    }

    fn sent(&self, result: Result<(), mpsc::error::TrySendError<CoordinatorMessage>>) -> bool {
        match result {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Once: what follows until the session ends is refused quietly.
                if self.conn.close_reason().is_none() {
                    tracing::warn!(node = %self.name, "command queue full; resetting the session");
                    self.reset(Reset::Overflow);
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Closes the connection, saying why; the agent reconnects (unless it was removed).
    pub fn reset(&self, why: Reset) {
        let (code, reason) = why.code_and_reason();
        self.conn.close(code.into(), reason.as_bytes());
    }
}

/// The sessions of the connected nodes, and when every known node was last heard from.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<NodeId, Session>>,
    /// Any message counts; the liveness watch declares a node silent past the node timeout.
    heard: Mutex<HashMap<NodeId, Instant>>,
}

impl Sessions {
    /// A node connected: its session replaces any earlier one.
    pub fn open(&self, node: &NodeId, session: Session) {
        lock(&self.live).insert(node.clone(), session);
        self.heard_from(node);
    }

    /// A session ended; a newer one of the same node stays.
    pub fn close(&self, node: &NodeId, session: &Session) {
        let mut live = lock(&self.live);
        if live.get(node).is_some_and(|s| s.conn_id == session.conn_id) {
            live.remove(node);
        }
    }

    /// Cuts a node off: its session is reset and forgotten, and so is when it was heard from.
    /// Returns its name when it was connected.
    pub fn cut(&self, node: &NodeId, why: Reset) -> Option<String> {
        lock(&self.heard).remove(node);
        let session = lock(&self.live).remove(node)?;
        session.reset(why);
        Some(session.name)
    }

    /// Resets a node's session, if it has one (it reconnects).
    pub fn reset(&self, node: &NodeId, why: Reset) {
        if let Some(s) = self.get(node) {
            s.reset(why);
        }
    }

    pub fn get(&self, node: &NodeId) -> Option<Session> {
        lock(&self.live).get(node).cloned()
    }

    pub fn is_connected(&self, node: &NodeId) -> bool {
        lock(&self.live).contains_key(node)
    }

    pub fn connected(&self) -> HashSet<NodeId> {
        lock(&self.live).keys().cloned().collect()
    }

    /// Each connected node's name and the agent version it reported.
    pub fn versions(&self) -> Vec<(NodeId, String, String)> {
        lock(&self.live).iter().map(|(id, s)| (id.clone(), s.name.clone(), s.agent_version.clone())).collect()
    }

    /// Queues a command (as it goes on the wire) for a connected node, by the module's policy.
    pub fn send(&self, node: &NodeId, msg: CoordinatorMessage) -> bool {
        self.get(node).is_some_and(|s| s.send(msg))
    }

    pub fn heard_from(&self, node: &NodeId) {
        lock(&self.heard).insert(node.clone(), Instant::now());
    }

    /// Counts a node as heard from at `at` (in the future: a restart's grace for it to come back).
    pub fn expect(&self, node: &NodeId, at: Instant) {
        lock(&self.heard).insert(node.clone(), at);
    }

    /// When each node was last heard from.
    pub fn heard(&self) -> HashMap<NodeId, Instant> {
        lock(&self.heard).clone()
    }

    /// The nodes not heard from for longer than `timeout`.
    pub fn silent_for(&self, timeout: Duration) -> Vec<NodeId> {
        lock(&self.heard).iter().filter(|(_, t)| t.elapsed() > timeout).map(|(n, _)| n.clone()).collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
