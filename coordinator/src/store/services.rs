//! Services in the store: `runs.replicas` is an active service's desired replica count (NULL once
//! it was stopped or failed), and new replicas are new attempts of a replica number.

use rusqlite::{OptionalExtension, params};

use corral_proto::config::Configuration;
use corral_proto::ids::{JobId, RunId};

use super::{Result, Store, from_json, now_ms};

/// A service that runs (or is scaled to zero), as the autoscaler and the model route see it.
#[derive(Clone, Debug)]
pub struct ActiveService {
    pub run: RunId,
    pub project: String,
    pub name: String,
    pub config: corral_proto::config::ServiceConfig,
    /// How many replicas it should have now.
    pub replicas: u32,
    pub submitted_ms: i64,
}

impl Store {
    /// The active services, with their desired replica counts.
    pub fn active_services(&self) -> Result<Vec<ActiveService>> {
        self.query_services("", [])
    }

    /// The active deployments of one service, oldest first (more than one while a re-applied
    /// service rolls out).
    pub fn active_deployments(&self, project: &str, name: &str) -> Result<Vec<ActiveService>> {
        self.query_services("AND project = ?1 AND name = ?2 ORDER BY submitted_ms, rowid", params![project, name])
    }

    fn query_services<P: rusqlite::Params>(&self, filter: &str, p: P) -> Result<Vec<ActiveService>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT id, project, name, configuration, replicas, submitted_ms FROM runs WHERE replicas IS NOT NULL {filter}"
        ))?;
        type Row = (String, String, String, String, u32, i64);
        let rows = stmt
            .query_map(p, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?
            .collect::<rusqlite::Result<Vec<Row>>>()?;
        let mut out = Vec::new();
        for (id, project, name, cfg, replicas, submitted_ms) in rows {
            if let Configuration::Service(config) = from_json("run configuration", &cfg)? {
                out.push(ActiveService { run: RunId(id), project, name, config, replicas, submitted_ms });
            }
        }
        Ok(out)
    }

    /// A service's desired replica count; `None` once it was stopped or failed (or for a task).
    pub fn replicas(&self, run: &RunId) -> Result<Option<u32>> {
        let n: Option<Option<u32>> =
            self.read().query_row("SELECT replicas FROM runs WHERE id = ?1", [&run.0], |r| r.get(0)).optional()?;
        Ok(n.flatten())
    }

    /// Sets a service's desired replica count; `None` ends the service (stopped or failed).
    pub fn set_replicas(&self, run: &RunId, replicas: Option<u32>) -> Result<()> {
        self.execute("UPDATE runs SET replicas = ?2 WHERE id = ?1", owned![run.0, replicas])?;
        Ok(())
    }

    /// A service with replica groups: each group's desired count; `None` when none was written
    /// (each group still has its initial count).
    pub fn group_replicas(&self, run: &RunId) -> Result<Option<Vec<u32>>> {
        let text: Option<Option<String>> = self
            .read()
            .query_row("SELECT group_replicas FROM runs WHERE id = ?1", [&run.0], |r| r.get(0))
            .optional()?;
        match text.flatten() {
            Some(t) => Ok(Some(from_json("group replica counts", &t)?)),
            None => Ok(None),
        }
    }

    /// Sets each group's desired count, and the service's (their sum), while the service is
    /// active.
    pub fn set_group_replicas(&self, run: &RunId, counts: &[u32]) -> Result<()> {
        let total: u32 = counts.iter().sum();
        self.execute(
            "UPDATE runs SET group_replicas = ?2, replicas = ?3 WHERE id = ?1 AND replicas IS NOT NULL",
            owned![run.0, super::json(&counts), total],
        )?;
        Ok(())
    }

    /// Queues new replicas of an active service: `(replica number, submission, not before ms)`
    /// each, in one transaction; `Ok(false)` (and nothing added) when the service is no longer
    /// active or a replica number is taken by then.
    pub fn add_replicas(&self, run: &RunId, slots: &[(u32, u32, i64)], ids: &[JobId]) -> Result<bool> {
        let run = run.clone();
        let slots = slots.to_vec();
        let ids = ids.to_vec();
        self.write(move |conn| {
            let run = &run;
            let slots = &slots[..];
            let ids = &ids[..];
            let tx = conn.savepoint()?;
            let active: bool = tx
                .query_row("SELECT replicas IS NOT NULL FROM runs WHERE id = ?1", [&run.0], |r| r.get(0))
                .optional()?
                .unwrap_or(false);
            if !active || slots.is_empty() {
                return Ok(false);
            }
            let now = now_ms();
            for (&(num, submission, not_before), id) in slots.iter().zip(ids) {
                let n = tx.execute(
                    "INSERT INTO jobs (id, run_id, job_num, state, submitted_ms, submission, not_before_ms) \
                 SELECT ?1, ?2, ?3, 'submitted', ?4, ?5, ?6 \
                 WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = ?2 AND job_num = ?3 AND submission >= ?5)",
                    params![id.0, run.0, num, now, submission, (not_before > now).then_some(not_before)],
                )?;
                if n == 0 {
                    return Ok(false);
                }
            }
            tx.commit()?;
            Ok(true)
        })
    }
}
