//! The scheduler as the rest of the coordinator sees it: [`Command`]s in, the number of the last
//! finished pass out. The queue and the placement index are the scheduler task's own; whoever
//! changes something it must know (a run stored, a job ended, a node cordoned, a volume moved)
//! sends a command and goes on. Nobody waits for a pass to queue a run or give room back: the
//! next pass takes what its inbox holds before it plans.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use corral_proto::ids::{NodeId, RunId};
use corral_proto::resources::Allocation;

use crate::scheduling::scheduler::Scheduler;
use crate::volumes::Home;

/// What the scheduler is told. Each is sent after the store records it, so that a pass that
/// rebuilds its view from the store has it already.
#[derive(Debug)]
pub enum Command {
    /// A run was stored with queued jobs (new, a retry, more replicas).
    Enqueue(RunId),
    /// A run's queued jobs ended before they were placed.
    Dequeue(RunId),
    /// A placed job ended: its room on the node is free again. `epoch` is [`Handle::epoch`] as it
    /// was before the job's end was stored.
    Release { node: NodeId, allocation: Allocation, epoch: u64 },
    /// Nodes cordoned or uncordoned.
    Cordon { nodes: Vec<NodeId>, cordoned: bool },
    /// Where a named volume is now (`None`: nowhere; it is made where a run first mounts it).
    VolumeHome { project: String, name: String, home: Option<Home> },
    /// The nodes each EBS volume can attach to, by (project, name): the cloud's word.
    CloudNodes(HashMap<(String, String), Vec<NodeId>>),
}

/// What a pass takes from the inbox.
#[derive(Default)]
pub(super) struct Inbox {
    pub commands: Vec<Command>,
    /// Nodes that came, went or changed: the pass reads each again, once however often it changed.
    pub changed: HashSet<NodeId>,
}

pub struct Handle {
    inbox: Mutex<Inbox>,
    wake: Notify,
    started: AtomicU64,
    finished: watch::Sender<u64>,
    /// Rebuilds of the view from the store, counted once each has read it.
    epoch: AtomicU64,
    /// The queue and the index; held by a pass from start to end, so passes never overlap.
    core: Mutex<Scheduler>,
}

impl Default for Handle {
    fn default() -> Self {
        Self {
            inbox: Mutex::default(),
            wake: Notify::new(),
            started: AtomicU64::new(0),
            finished: watch::Sender::new(0),
            epoch: AtomicU64::new(0),
            core: Mutex::new(Scheduler::new()),
        }
    }
}

impl Handle {
    /// Tells the scheduler and wakes it.
    pub fn send(&self, command: Command) {
        self.lock_inbox().commands.push(command);
        self.wake.notify_one();
    }

    /// A node came, went, or changed; the next pass reads it again.
    pub fn node_changed(&self, node: &NodeId) {
        self.lock_inbox().changed.insert(node.clone());
        self.wake.notify_one();
    }

    /// Asks for a pass now (something changed that the pass reads from the store).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The number of rebuilds from the store so far: read it before storing a job's end, and send it
    /// with the job's [`Command::Release`]. A rebuild that may have read the end already makes the
    /// release stale, and a stale one is not applied: room is never given back twice (at worst, it
    /// is given back by the next rebuild).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Wakes the scheduler and waits (at most `limit`) until a pass that began after this call has
    /// finished. Many callers at once share one pass: a pass walks the whole queue, so running one
    /// per submission would cost the square of the queue's length.
    pub async fn pass_after(&self, limit: Duration) {
        let target = self.started.load(Ordering::SeqCst) + 1;
        let mut finished = self.finished.subscribe();
        self.wake.notify_one();
        let _ = tokio::time::timeout(limit, finished.wait_for(|&n| n >= target)).await;
    }

    /// The number of the last pass finished, as it changes.
    pub fn passes(&self) -> watch::Receiver<u64> {
        self.finished.subscribe()
    }

    /// Runs `f` with no pass running: for a check that must hold until what it decides reaches the
    /// inbox (a volume that no queued run mounts is marked for deletion before any pass can place
    /// one on it).
    pub fn between_passes<R>(&self, f: impl FnOnce() -> R) -> R {
        let _core = self.lock_core();
        f()
    }

    /// Waits until woken or `period` has passed.
    pub(super) async fn woken(&self, period: Duration) {
        tokio::select! {
            () = self.wake.notified() => {}
            () = tokio::time::sleep(period) => {}
        }
    }

    pub(super) fn begin_pass(&self) -> u64 {
        self.started.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub(super) fn end_pass(&self, pass: u64) {
        self.finished.send_replace(pass);
    }

    /// A rebuild from the store has read it.
    pub(super) fn rebuilt(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn take(&self) -> Inbox {
        std::mem::take(&mut *self.lock_inbox())
    }

    pub(super) fn lock_core(&self) -> MutexGuard<'_, Scheduler> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_takes_the_commands_in_order_and_each_changed_node_once() {
        let h = Handle::default();
        h.send(Command::Enqueue(RunId("a".into())));
        h.node_changed(&NodeId("n".into()));
        h.send(Command::Dequeue(RunId("a".into())));
        h.node_changed(&NodeId("n".into()));
        let inbox = h.take();
        let order: Vec<String> = inbox.commands.iter().map(|c| format!("{c:?}")).collect();
        assert_eq!(order, ["Enqueue(RunId(\"a\"))", "Dequeue(RunId(\"a\"))"]);
        assert_eq!(inbox.changed.len(), 1);
        assert!(h.take().commands.is_empty(), "taken once");
    }

    #[tokio::test]
    async fn a_caller_waits_for_a_pass_that_began_after_it() {
        let h = std::sync::Arc::new(Handle::default());
        let first = h.begin_pass();
        let waiter = tokio::spawn({
            let h = h.clone();
            async move { h.pass_after(Duration::from_secs(10)).await }
        });
        // The pass under way when the caller came does not answer it.
        h.end_pass(first);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "answered by a pass that began before it");
        let second = h.begin_pass();
        h.end_pass(second);
        tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("answered").expect("join");
        assert_eq!(*h.passes().borrow(), second);
    }
}
