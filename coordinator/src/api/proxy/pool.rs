//! Connections to service replicas kept alive between requests, as a model server keeps them: a
//! request that finds one idle skips opening a tunnel (a QUIC stream to the agent, the agent's
//! TCP connect to the replica) and the HTTP handshake.
//!
//! A connection comes back once its answer has been read to the end, and stays at most
//! [`IDLE_FOR`] — under the keep-alive of common servers (uvicorn's is 5 s), so that a kept
//! connection is rarely one the replica is closing — then it is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

use corral_proto::ids::JobId;

/// How long a connection waits idle for its next request.
pub const IDLE_FOR: Duration = Duration::from_secs(4);
/// Idle connections kept per replica port at most.
const PER_REPLICA: usize = 64;

/// A replica's port, by its job.
type Key = (JobId, u16);

struct Idle {
    id: u64,
    sender: SendRequest<Body>,
    since: Instant,
}

#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
    ids: AtomicU64,
}

impl Pool {
    /// An idle connection to the replica's port that can take a request now, if one is kept.
    pub fn take(&self, job: &JobId, port: u16) -> Option<SendRequest<Body>> {
        let mut idle = self.lock();
        let key = (job.clone(), port);
        let kept = idle.get_mut(&key)?;
        let mut found = None;
        // The newest first: the one least likely to be closing.
        while let Some(c) = kept.pop() {
            if c.since.elapsed() < IDLE_FOR && c.sender.is_ready() {
                found = Some(c.sender);
                break;
            }
        }
        if kept.is_empty() {
            idle.remove(&key);
        }
        found
    }

    /// Keeps `sender` once the answer it carries has been read to the end (and the replica kept
    /// the connection open); closes it after [`IDLE_FOR`] unused.
    pub fn give_back(self: &Arc<Self>, job: JobId, port: u16, mut sender: SendRequest<Body>) {
        let pool = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_err() {
                return; // closed by either side
            }
            let id = pool.ids.fetch_add(1, Ordering::Relaxed);
            let key = (job, port);
            {
                let mut idle = pool.lock();
                let kept = idle.entry(key.clone()).or_default();
                if kept.len() >= PER_REPLICA {
                    return;
                }
                kept.push(Idle { id, sender, since: Instant::now() });
            }
            tokio::time::sleep(IDLE_FOR).await;
            pool.expire(&key, id);
        });
    }

    /// Closes the connection `id` if it is still idle.
    fn expire(&self, key: &Key, id: u64) {
        let mut idle = self.lock();
        if let Some(kept) = idle.get_mut(key) {
            kept.retain(|c| c.id != id);
            if kept.is_empty() {
                idle.remove(key);
            }
        }
    }

    /// Idle connections kept now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keep-alive HTTP/1.1 server on one end of an in-memory pipe, and a client connection on
    /// the other, as the proxy has it over a tunnel.
    async fn connection(answers: usize) -> (SendRequest<Body>, tokio::task::JoinHandle<usize>) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(async move {
            let mut server = tokio::io::BufReader::new(server);
            let mut n = 0;
            let mut line = String::new();
            while n < answers {
                line.clear();
                if server.read_line(&mut line).await.unwrap_or(0) == 0 {
                    break;
                }
                if line == "\r\n" {
                    n += 1;
                    let _ = server.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
                }
            }
            n
        });
        let sender = crate::nodes::tunnel::http1(client).await.expect("handshake");
        (sender, served)
    }

    fn get() -> axum::http::Request<Body> {
        axum::http::Request::builder().uri("/").header("host", "r").body(Body::empty()).expect("request")
    }

    #[tokio::test]
    async fn a_connection_comes_back_after_its_answer_is_read_and_serves_the_next_request() {
        let pool = Arc::new(Pool::default());
        let job = JobId("j".into());
        let (mut sender, served) = connection(2).await;
        let resp = sender.send_request(get()).await.expect("answered");
        pool.give_back(job.clone(), 80, sender);
        assert!(pool.take(&job, 80).is_none(), "kept before its answer was read");
        let body = axum::body::to_bytes(Body::new(resp.into_body()), 1024).await.expect("body");
        assert_eq!(&body[..], b"ok");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut again = loop {
            if let Some(s) = pool.take(&job, 80) {
                break s;
            }
            assert!(Instant::now() < deadline, "the connection never came back");
            tokio::task::yield_now().await;
        };
        assert!(pool.take(&job, 80).is_none(), "taken once");
        assert!(pool.take(&job, 81).is_none(), "kept for its own port only");
        let resp = again.send_request(get()).await.expect("the kept connection answers");
        assert_eq!(resp.status(), 200);
        drop((again, resp));
        assert_eq!(served.await.expect("server"), 2, "both requests went over one connection");
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_its_time() {
        let pool = Arc::new(Pool::default());
        let job = JobId("j".into());
        let (mut sender, _served) = connection(1).await;
        let resp = sender.send_request(get()).await.expect("answered");
        axum::body::to_bytes(Body::new(resp.into_body()), 1024).await.expect("body");
        pool.give_back(job.clone(), 80, sender);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.len() == 0 {
            assert!(Instant::now() < deadline, "never kept");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The idle time is what is tested: the connection must be gone once it has passed.
        tokio::time::sleep(IDLE_FOR + Duration::from_millis(200)).await;
        assert_eq!(pool.len(), 0, "still kept past its idle time");
        assert!(pool.take(&job, 80).is_none());
    }
}
