//! A container's output read back from Docker's log driver (after an agent restart), each entry
//! once and in order, whatever Docker's follow does.
//!
//! Docker's `follow` is not enough on its own: when a json-file log rotates while the follow is
//! still sending its backlog (a slow reader, a big log), it goes on watching the rotated file and
//! sends nothing more, however much the container writes. So the reader keeps a cursor (the
//! timestamp of the last entry it passed on, and how many it passed with that timestamp), and
//! reads again from the cursor when the follow ends, or falls silent while Docker's newest entry
//! is past the cursor.

use std::time::Duration;

use bollard::query_parameters::LogsOptionsBuilder;
use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;

use crate::Shim;
use crate::error::ShimError;

/// Pieces read ahead of the consumer, and the most bytes in one.
const READ_AHEAD: usize = 16;
const BATCH: usize = 256 * 1024;
/// The first wait for an entry before the follow is checked; doubled while it stays quiet.
const QUIET_CHECK: Duration = Duration::from_secs(2);
const QUIET_CHECK_MAX: Duration = Duration::from_secs(60);
/// Passes that may end with nothing new while the container still runs (a daemon that closes
/// its follows) before the reader gives up.
const IDLE_PASSES: u32 = 30;

/// A Docker log timestamp: seconds since the epoch and nanoseconds.
type Stamp = (i64, u32);

/// How far the reader has got: the last entry's timestamp and how many entries carried it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cursor {
    at: Option<Stamp>,
    count: usize,
}

/// One pass over Docker's log from the cursor's second on: which of its entries are new.
struct Pass<'a> {
    cursor: &'a mut Cursor,
    /// Entries with the cursor's timestamp met in this pass.
    equal: usize,
}

impl Pass<'_> {
    /// Whether the entry stamped `at` is new, moving the cursor past it if so. Entries come in the
    /// order Docker wrote them; one with no readable stamp is passed on.
    fn admit(&mut self, at: Option<Stamp>) -> bool {
        let Some(at) = at else { return true };
        match self.cursor.at {
            Some(c) if at < c => false,
            Some(c) if at == c => {
                self.equal += 1;
                if self.equal <= self.cursor.count {
                    return false;
                }
                self.cursor.count += 1;
                true
            }
            _ => {
                *self.cursor = Cursor { at: Some(at), count: 1 };
                self.equal = 1;
                true
            }
        }
    }
}

impl Cursor {
    fn pass(&mut self) -> Pass<'_> {
        Pass { cursor: self, equal: 0 }
    }

    /// The `since` (whole seconds) to ask Docker for: the cursor's second, or `from`.
    fn since(&self, from: i64) -> i32 {
        let s = self.at.map_or(from, |(secs, _)| secs);
        i32::try_from(s.max(0)).unwrap_or(i32::MAX)
    }
}

/// `<RFC 3339 nano> <bytes>`, as Docker sends entries with `timestamps`: the stamp and the bytes.
fn split_stamp(entry: Bytes) -> (Option<Stamp>, Bytes) {
    match entry.iter().position(|&b| b == b' ') {
        Some(i) => match std::str::from_utf8(&entry[..i]).ok().and_then(crate::list::unix_nanos) {
            Some(at) => (Some(at), entry.slice(i + 1..)),
            None => (None, entry),
        },
        None => (None, entry),
    }
}

impl Shim {
    /// The container's stdout and stderr, merged in the order written, from the start; follows a
    /// running container until it exits. The stream owns its own handle, so it may outlive `self`.
    pub fn logs(&self, container: &str) -> impl Stream<Item = Result<Bytes, ShimError>> + Send + use<> {
        self.logs_since(container, None)
    }

    /// Like [`Shim::logs`], only what Docker logged at or after `since` (seconds since the epoch),
    /// when given: Docker's log, rotated or not, read from a point in time rather than a byte.
    pub fn logs_since(
        &self,
        container: &str,
        since: Option<i64>,
    ) -> impl Stream<Item = Result<Bytes, ShimError>> + Send + use<> {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let (shim, name) = (self.clone(), container.to_owned());
        tokio::spawn(async move {
            if let Err(e) = shim.read_log(&name, since.unwrap_or(0), &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
    }

    /// Sends the log's new entries to `tx` until the container has exited and a last pass found
    /// nothing more; `Ok` also when the receiver went away.
    async fn read_log(
        &self,
        name: &str,
        from: i64,
        tx: &mpsc::Sender<Result<Bytes, ShimError>>,
    ) -> Result<(), ShimError> {
        let mut cursor = Cursor::default();
        let mut idle = 0;
        loop {
            let before = cursor;
            let running = self.inspect_state(name).await.map(|s| s.running);
            let running = match running {
                Ok(r) => r,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e),
            };
            // Followed while it runs; once it has exited, one plain pass reads what is left.
            if !self.log_pass(name, cursor.since(from), running, &mut cursor, tx).await? {
                return Ok(());
            }
            if !running {
                return Ok(());
            }
            idle = if cursor == before { idle + 1 } else { 0 };
            if idle >= IDLE_PASSES {
                return Err(ShimError::Unexpected {
                    op: "reading logs of",
                    subject: name.to_owned(),
                    detail: "Docker ended its log stream again and again with nothing new".to_owned(),
                });
            }
        }
    }

    /// One request for the log from `since`, passing on the entries after the cursor. A follow
    /// that falls silent while Docker's newest entry is past the cursor has stopped seeing the
    /// log: the pass ends, for the caller to read again. `Ok(false)`: the receiver went away.
    async fn log_pass(
        &self,
        name: &str,
        since: i32,
        follow: bool,
        cursor: &mut Cursor,
        tx: &mpsc::Sender<Result<Bytes, ShimError>>,
    ) -> Result<bool, ShimError> {
        let docker = self.client().await?.clone();
        let options = LogsOptionsBuilder::default()
            .follow(follow)
            .stdout(true)
            .stderr(true)
            .since(since)
            .timestamps(true)
            .build();
        tracing::debug!(container = name, since, follow, "reading the log");
        let mut entries = docker.logs(name, Some(options));
        let mut pass = cursor.pass();
        let mut quiet = QUIET_CHECK;
        loop {
            let entry = match tokio::time::timeout(quiet, entries.next()).await {
                Ok(Some(entry)) => entry.map_err(|e| self.container_error("reading logs of", name, e))?,
                Ok(None) => {
                    tracing::debug!(container = name, "the log read ended");
                    return Ok(true);
                }
                Err(_) => {
                    // Quiet: a follow that no longer sees the log (Docker's newest entry is past
                    // the cursor or, with nothing passed on yet, at or after `since`), or one that
                    // does not end although the container has: read again.
                    let seen = pass.cursor.at.map_or((i64::from(since), 0), |(s, n)| (s, n.saturating_add(1)));
                    if self.newest_entry(name).await.is_some_and(|newest| newest >= seen) {
                        return Ok(true);
                    }
                    if follow && !self.inspect_state(name).await.is_ok_and(|s| s.running) {
                        return Ok(true);
                    }
                    quiet = (quiet * 2).min(QUIET_CHECK_MAX);
                    continue;
                }
            };
            quiet = QUIET_CHECK;
            // This entry and those already here, sent on as one piece (Docker sends one per line).
            let mut batch = bytes::BytesMut::new();
            let mut ended = false;
            let mut next = Some(entry);
            while let Some(entry) = next.take() {
                let (at, bytes) = split_stamp(entry.into_bytes());
                if pass.admit(at) {
                    batch.extend_from_slice(&bytes);
                }
                if batch.len() >= BATCH {
                    break;
                }
                match entries.next().now_or_never() {
                    Some(Some(entry)) => {
                        next = Some(entry.map_err(|e| self.container_error("reading logs of", name, e))?)
                    }
                    Some(None) => ended = true,
                    None => {}
                }
            }
            if !batch.is_empty() && tx.send(Ok(batch.freeze())).await.is_err() {
                return Ok(false);
            }
            if ended {
                return Ok(true);
            }
        }
    }

    /// The timestamp of the newest entry in the container's log (`tail=1`, cheap for Docker).
    async fn newest_entry(&self, name: &str) -> Option<Stamp> {
        let docker = self.client().await.ok()?.clone();
        let options = LogsOptionsBuilder::default().stdout(true).stderr(true).tail("1").timestamps(true).build();
        let last = docker.logs(name, Some(options)).collect::<Vec<_>>().await.pop()?.ok()?;
        split_stamp(last.into_bytes()).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_admits_each_entry_once() {
        let mut cursor = Cursor::default();
        let mut first = cursor.pass();
        let stamps = [(10, 5), (10, 5), (10, 7), (11, 0)];
        assert_eq!(stamps.map(|s| first.admit(Some(s))), [true; 4]);
        assert_eq!(cursor, Cursor { at: Some((11, 0)), count: 1 });
        // Read again from second 10 on: only what follows (11, 0) is new, a second entry stamped
        // (11, 0) included.
        let mut again = cursor.pass();
        let more = [(10, 5), (10, 5), (10, 7), (11, 0), (11, 0), (12, 0)];
        assert_eq!(more.map(|s| again.admit(Some(s))), [false, false, false, false, true, true]);
        assert_eq!(cursor, Cursor { at: Some((12, 0)), count: 1 });
        // Two entries with one stamp, then a pass that sees both and a third.
        let mut cursor = Cursor { at: Some((5, 1)), count: 2 };
        let mut pass = cursor.pass();
        assert_eq!([(5, 1), (5, 1), (5, 1)].map(|s| pass.admit(Some(s))), [false, false, true]);
        assert_eq!(cursor.count, 3);
        assert!(cursor.pass().admit(None), "an entry with no stamp is passed on");
    }

    #[test]
    fn since_starts_at_the_cursor_s_second() {
        assert_eq!(Cursor::default().since(1_700_000_000), 1_700_000_000);
        assert_eq!(Cursor { at: Some((1_700_000_123, 999)), count: 1 }.since(5), 1_700_000_123);
        assert_eq!(Cursor::default().since(-3), 0);
    }

    #[test]
    fn entries_lose_their_stamp() {
        let (at, bytes) = split_stamp(Bytes::from_static(b"2026-12-01T16:39:45.123456789Z hello world\n"));
        assert_eq!(bytes, Bytes::from_static(b"hello world\n"));
        assert_eq!(at, Some((1_796_143_185, 123_456_789)));
        let (at, bytes) = split_stamp(Bytes::from_static(b"no stamp here\n"));
        assert_eq!((at, bytes), (None, Bytes::from_static(b"no stamp here\n")));
    }
}
