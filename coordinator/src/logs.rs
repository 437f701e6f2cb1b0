//! Job logs: one file per job under `<data-dir>/logs/`, appended from the agents' log streams, and
//! followed live by any number of HTTP readers. Offsets make appends idempotent: an agent that
//! replays a log after a reconnect adds only the bytes the coordinator does not have yet.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use corral_proto::ids::JobId;

pub struct LogStore {
    dir: PathBuf,
    jobs: Mutex<HashMap<JobId, Arc<JobLog>>>,
}

pub struct JobLog {
    path: PathBuf,
    file: Mutex<Option<File>>,
    /// Bytes stored so far; readers wait on changes.
    len: watch::Sender<u64>,
    /// The agent said the container's output is all here.
    complete: AtomicBool,
}

impl JobLog {
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.len.subscribe()
    }

    pub fn stored(&self) -> u64 {
        *self.len.borrow()
    }

    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    /// The agent sent everything (`total` bytes). The log is complete only if all of them are here;
    /// either way the file is closed until more arrives.
    pub fn finish(&self, total: u64) {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        *guard = None;
        if total == self.stored() {
            self.complete.store(true, Ordering::Release);
        } else {
            tracing::warn!(path = %self.path.display(), total, have = self.stored(), "log ended with bytes missing; waiting for a replay");
        }
        self.len.send_modify(|_| {});
    }

    /// Like [`JobLog::finish`], after syncing the file to disk: `Ok(true)` when the whole output
    /// (`total` bytes) is stored and will survive a crash of this host.
    pub fn finish_synced(&self, total: u64) -> std::io::Result<bool> {
        {
            let guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                Some(f) => f.sync_all()?,
                // Nothing appended by this process: what is there may not have been synced yet.
                None if self.path.exists() => File::open(&self.path)?.sync_all()?,
                None => {}
            }
        }
        self.finish(total);
        Ok(self.is_complete())
    }

    /// Appends the part of `data` (which starts at `offset` of the job's output) not stored yet;
    /// returns how many bytes that was.
    pub fn append(&self, offset: u64, data: &[u8]) -> std::io::Result<usize> {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let have = self.stored();
        let Some(end) = offset.checked_add(data.len() as u64) else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "log offset out of range"));
        };
        if end <= have {
            return Ok(0);
        }
        if offset > have {
            // A gap: bytes in between were lost in transit. The agent replays from the start on its
            // next connection, which fills it; until then keep the file contiguous.
            tracing::warn!(path = %self.path.display(), have, offset, "log chunk past the end; waiting for a replay");
            return Ok(0);
        }
        let fresh = &data[(have - offset) as usize..];
        if guard.is_none() {
            *guard = Some(crate::datadir::private_file().create(true).append(true).open(&self.path)?);
        }
        if let Some(f) = guard.as_mut()
            && let Err(e) = f.write_all(fresh)
        {
            // A full disk can take part of a write: cut the file back to what is counted, so the
            // agent's retry appends where the log really ends.
            let _ = f.set_len(have);
            *guard = None;
            return Err(e);
        }
        self.len.send_replace(end);
        Ok(fresh.len())
    }

    /// Reads up to `max` bytes from `offset`.
    pub fn read_at(&self, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let len = self.stored();
        if offset >= len {
            return Ok(Vec::new());
        }
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(offset))?;
        let n = ((len - offset) as usize).min(max);
        let mut buf = vec![0u8; n];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }
}

impl LogStore {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        crate::datadir::create_dir_all(dir)?;
        Ok(Self { dir: dir.to_owned(), jobs: Mutex::new(HashMap::new()) })
    }

    /// Forgets a job's log and removes its file (its project was deleted).
    pub fn remove(&self, id: &JobId) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        let path = self.dir.join(format!("{}.log", id.as_str()));
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), "cannot remove a log: {e}");
        }
    }

    pub fn job(&self, id: &JobId) -> Arc<JobLog> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.entry(id.clone())
            .or_insert_with(|| {
                // Job ids are generated by the coordinator (hex), so they are safe as file names.
                let path = self.dir.join(format!("{}.log", id.as_str()));
                let len = std::fs::metadata(&path).map_or(0, |m| m.len());
                Arc::new(JobLog {
                    path,
                    file: Mutex::new(None),
                    len: watch::Sender::new(len),
                    complete: AtomicBool::new(false),
                })
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_deduplicated_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::new(dir.path()).expect("store");
        let log = store.job(&JobId::from("j1"));
        log.append(0, b"hello ").expect("append");
        log.append(0, b"hello world\n").expect("replay overlaps");
        log.append(20, b"gap").expect("gap is ignored");
        assert!(log.append(u64::MAX, b"x").is_err(), "an offset past u64 is refused, not a panic");
        log.finish(100);
        assert!(!log.is_complete(), "bytes are missing");
        log.finish(12);
        assert!(log.is_complete());
        assert_eq!(log.read_at(0, 100).expect("read"), b"hello world\n");
        assert_eq!(log.read_at(6, 3).expect("read"), b"wor");

        let reopened = LogStore::new(dir.path()).expect("store");
        assert_eq!(reopened.job(&JobId::from("j1")).stored(), 12);
    }
}
