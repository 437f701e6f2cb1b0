//! Who is connected to which job — SSH sessions, `corral exec`, forwarded ports — and the dev
//! environments that stop after `inactivity_duration` with no one connected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use corral_proto::ids::JobId;

#[derive(Default)]
pub struct Activity {
    jobs: Mutex<HashMap<JobId, Watch>>,
}

struct Watch {
    /// Connections open now.
    open: u32,
    /// When the last one closed (or the job started).
    idle_since: Instant,
    /// Stop the job after this long idle (a dev environment's `inactivity_duration`).
    limit: Option<Duration>,
}

impl Watch {
    fn new(limit: Option<Duration>) -> Self {
        Self { open: 0, idle_since: Instant::now(), limit }
    }
}

/// One open connection to a job; dropping it closes it.
pub struct Connected {
    activity: Arc<Activity>,
    job: JobId,
}

impl Drop for Connected {
    fn drop(&mut self) {
        let mut jobs = self.activity.lock();
        if let Some(w) = jobs.get_mut(&self.job) {
            w.open = w.open.saturating_sub(1);
            if w.open == 0 {
                w.idle_since = Instant::now();
                if w.limit.is_none() {
                    jobs.remove(&self.job);
                }
            }
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Watch>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a connection to `job` until the returned guard is dropped.
    pub fn connect(self: &Arc<Self>, job: &JobId) -> Connected {
        self.lock().entry(job.clone()).or_insert_with(|| Watch::new(None)).open += 1;
        Connected { activity: self.clone(), job: job.clone() }
    }

    /// Stops `job` once it has had no connection for `limit` (counted from now, or from its start).
    pub fn watch(&self, job: &JobId, limit: Duration) {
        let mut jobs = self.lock();
        let w = jobs.entry(job.clone()).or_insert_with(|| Watch::new(None));
        w.limit = Some(limit);
        w.idle_since = Instant::now();
    }

    /// A watched job started running: its idle time counts from now (not from an image pull).
    pub fn started(&self, job: &JobId) {
        if let Some(w) = self.lock().get_mut(job) {
            w.idle_since = Instant::now();
        }
    }

    pub fn forget(&self, job: &JobId) {
        self.lock().remove(job);
    }

    /// Connections open to `job` now.
    pub fn open(&self, job: &JobId) -> u32 {
        self.lock().get(job).map_or(0, |w| w.open)
    }

    /// Watched jobs idle past their limit; they are forgotten (each is reported once).
    pub fn take_idle(&self) -> Vec<(JobId, Duration)> {
        let mut jobs = self.lock();
        let idle: Vec<(JobId, Duration)> = jobs
            .iter()
            .filter_map(|(id, w)| {
                let limit = w.limit?;
                (w.open == 0 && w.idle_since.elapsed() >= limit).then(|| (id.clone(), limit))
            })
            .collect();
        for (id, _) in &idle {
            jobs.remove(id);
        }
        idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_watched_job_is_idle_only_with_no_connection_for_its_limit() {
        let a = Arc::new(Activity::default());
        let job = JobId("dev".into());
        a.watch(&job, Duration::from_secs(60));
        let conn = a.connect(&job);
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(a.take_idle().is_empty(), "connected for two minutes: not idle");
        drop(conn);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(a.take_idle().is_empty(), "idle for 59 s of 60");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(a.take_idle(), vec![(job.clone(), Duration::from_secs(60))]);
        assert!(a.take_idle().is_empty(), "reported once");
    }

    #[tokio::test(start_paused = true)]
    async fn unwatched_jobs_are_counted_and_then_forgotten() {
        let a = Arc::new(Activity::default());
        let job = JobId("task".into());
        let (one, two) = (a.connect(&job), a.connect(&job));
        assert_eq!(a.open(&job), 2);
        drop(one);
        assert_eq!(a.open(&job), 1);
        drop(two);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(a.take_idle().is_empty(), "no limit, never stopped");
        assert!(a.lock().is_empty(), "nothing kept for a job no one watches");
    }
}
