//! The store's one writer: a thread that owns the write connection, takes the writes callers send
//! it and commits them in batches. Whatever is waiting when the thread is free goes into one
//! transaction (at most [`BATCH`]), each write inside its own savepoint, so a write that fails is
//! undone alone and the others still commit; a caller gets its answer once the batch is
//! committed. Under load (a flood of submissions, an agents' burst of reports) the commits — where
//! SQLite writes the pages a write touched to the WAL — are shared by many writes.
//!
//! The write methods of [`super::Store`] are closures over owned values sent here: a store with
//! another engine behind the same methods (PostgreSQL, for several coordinators on one database)
//! changes nothing for their callers.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use rusqlite::Connection;

use super::{Result, StoreError};

/// At most this many writes share a transaction.
pub(super) const BATCH: usize = 256;

/// A write: runs against the connection inside its savepoint, says whether it failed (its
/// savepoint is then rolled back) and leaves what answers its caller once the batch's commit is
/// known.
type Work = Box<dyn FnOnce(&mut Connection) -> (bool, Answer) + Send>;
type Answer = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;

pub(super) struct Writer {
    work: Option<mpsc::Sender<Work>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: std::sync::Arc<Stats>,
}

/// Counted by the thread, read by tests and benchmarks.
#[derive(Default)]
pub(super) struct Stats {
    /// Writes handed to the thread (some may still wait for it).
    pub sent: AtomicU64,
    /// Writes committed or refused.
    pub writes: AtomicU64,
    pub commits: AtomicU64,
}

impl Writer {
    pub(super) fn start(conn: Connection) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Work>();
        let stats = std::sync::Arc::new(Stats::default());
        let counted = stats.clone();
        let thread = std::thread::Builder::new().name("store-writer".into()).spawn(move || run(conn, &rx, &counted))?;
        Ok(Self { work: Some(tx), thread: Some(thread), stats })
    }

    /// Runs `f` on the writer inside a transaction it may share with others; returns its result
    /// once that transaction is committed (or the commit's error).
    pub(super) fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (reply, answer) = mpsc::sync_channel::<Result<R>>(1);
        let work: Work = Box::new(move |conn| {
            let out = f(conn);
            let failed = out.is_err();
            let answer: Answer = Box::new(move |commit| {
                let _ = reply.send(match commit {
                    None => out,
                    Some(e) => Err(StoreError::Sql(copy_error(e))),
                });
            });
            (failed, answer)
        });
        let sent = self.work.as_ref().is_some_and(|w| w.send(work).is_ok());
        if !sent {
            return Err(StoreError::WriteLost);
        }
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        // A write that panicked drops its reply: the caller hears that, not a hang.
        answer.recv().unwrap_or(Err(StoreError::WriteLost))
    }

    /// Writes done and the transactions that committed them.
    pub(super) fn stats(&self) -> (u64, u64) {
        (self.stats.writes.load(Ordering::Relaxed), self.stats.commits.load(Ordering::Relaxed))
    }

    /// Writes handed to the thread so far.
    #[cfg(test)]
    pub(super) fn sent(&self) -> u64 {
        self.stats.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    /// Writes already sent are committed before the thread ends.
    fn drop(&mut self) {
        drop(self.work.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut conn: Connection, rx: &mpsc::Receiver<Work>, stats: &Stats) {
    let mut batch: Vec<Work> = Vec::with_capacity(BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(work) => batch.push(work),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let answers = commit(&mut conn, batch.drain(..));
        stats.writes.fetch_add(n, Ordering::Relaxed);
        stats.commits.fetch_add(1, Ordering::Relaxed);
        let (answers, outcome) = answers;
        for answer in answers {
            answer(outcome.as_ref());
        }
    }
}

/// One transaction for the batch: each write in a savepoint of its own. Returns the answers and
/// the transaction's error, if it could not begin or commit.
fn commit(conn: &mut Connection, batch: impl Iterator<Item = Work>) -> (Vec<Answer>, Option<rusqlite::Error>) {
    let mut answers = Vec::new();
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        // Nothing can be written: none runs, and each caller hears that the writer failed.
        tracing::error!("store: cannot begin a transaction: {e}");
        drop(batch.collect::<Vec<_>>());
        return (answers, Some(e));
    }
    for work in batch {
        if let Err(e) = conn.execute_batch("SAVEPOINT write") {
            drop(work);
            tracing::error!("store: cannot open a savepoint: {e}");
            continue;
        }
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| work(&mut *conn)));
        let keep = match ran {
            Ok((failed, answer)) => {
                answers.push(answer);
                !failed
            }
            Err(_) => {
                tracing::error!("store: a write panicked; it is undone");
                false
            }
        };
        let end = if keep { "RELEASE write" } else { "ROLLBACK TO write; RELEASE write" };
        if let Err(e) = conn.execute_batch(end) {
            tracing::error!("store: cannot end a savepoint: {e}");
        }
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => (answers, None),
        Err(e) => {
            // A full disk, say: nothing of the batch stands, and every write says so.
            let _ = conn.execute_batch("ROLLBACK");
            (answers, Some(e))
        }
    }
}

/// The same error again, for each write of a batch whose commit failed; SQLite's code is kept, so
/// that [`StoreError::is_disk_full`] still tells a full disk.
fn copy_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => rusqlite::Error::SqliteFailure(*code, message.clone()),
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(format!("commit failed: {other}")),
        ),
    }
}
