//! Runs as the API shows them: a run with the newest attempt of each of its jobs. A page of runs
//! is read in three queries whatever its size (its ids, their rows, their jobs), newest first,
//! and the next page starts after the last run of this one (keyset paging: as fast at the
//! 100,000th run as at the first).

use rusqlite::{OptionalExtension, params};

use corral_proto::api;
use corral_proto::config::Configuration;
use corral_proto::ids::{JobId, NodeId, RunId};
use corral_proto::job::{JobState, TerminationReason};

use super::{ACTIVE_STATES, Result, Store, StoreError};

/// The most runs one page holds.
pub const MAX_PAGE: u32 = 1000;

/// Which of a project's runs [`Store::run_page`] lists.
#[derive(Clone, Copy, Debug)]
pub struct RunPage<'a> {
    pub project: &'a str,
    /// Finished runs too (`corral ps -a`); otherwise only active ones.
    pub all: bool,
    /// The last run of the previous page.
    pub after: Option<&'a RunId>,
    /// At most this many (1 to [`MAX_PAGE`]).
    pub limit: u32,
}

impl Store {
    /// A page of a project's runs, newest first.
    pub fn run_page(&self, page: RunPage<'_>) -> Result<Vec<api::Run>> {
        let ids = {
            let conn = self.read();
            // Where the previous page ended: the index gives the range up to it.
            let after: Option<(i64, i64)> = match page.after {
                Some(id) => {
                    let mut stmt = conn.prepare_cached("SELECT submitted_ms, rowid FROM runs WHERE id = ?1")?;
                    match stmt.query_row([&id.0], |r| Ok((r.get(0)?, r.get(1)?))).optional()? {
                        Some(at) => Some(at),
                        None => return Ok(Vec::new()),
                    }
                }
                None => None,
            };
            // Active runs are found from their jobs' states (few, by `jobs_by_state`, named: with
            // statistics SQLite would rather scan every job) and services with a replica count,
            // then sorted; all runs are read from `runs_by_time` in order. The cursor is a range
            // of that index; spelled with `?2 IS NULL OR` it would not be.
            let (from, filter) = if page.all {
                ("r.project = ?1", String::new())
            } else {
                (
                    "+r.project = ?1",
                    format!(
                        "AND r.id IN (SELECT run_id FROM jobs INDEXED BY jobs_by_state WHERE state IN {ACTIVE_STATES}
                           UNION SELECT id FROM runs WHERE replicas IS NOT NULL)"
                    ),
                )
            };
            let cursor = if after.is_some() {
                "AND r.submitted_ms <= ?2 AND (r.submitted_ms < ?2 OR r.rowid < ?3)"
            } else {
                "AND ?2 IS NULL AND ?3 IS NULL"
            };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT r.id FROM runs r WHERE {from} {filter} {cursor}
                 ORDER BY r.submitted_ms DESC, r.rowid DESC LIMIT ?4"
            ))?;
            let (at_ms, at_row) = (after.map(|a| a.0), after.map(|a| a.1));
            let rows = stmt.query_map(params![page.project, at_ms, at_row, page.limit.min(MAX_PAGE)], |r| r.get(0))?;
            rows.map(|r| r.map(RunId)).collect::<rusqlite::Result<Vec<_>>>()?
        };
        self.run_views(&ids)
    }

    pub fn run_view(&self, id: &RunId) -> Result<Option<api::Run>> {
        Ok(self.run_views(std::slice::from_ref(id))?.pop())
    }

    /// The runs `ids`, in that order (a service at zero replicas may have no jobs yet).
    pub fn run_views(&self, ids: &[RunId]) -> Result<Vec<api::Run>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = serde_json::Value::from(ids.iter().map(|i| i.0.as_str()).collect::<Vec<_>>()).to_string();
        let conn = self.read();
        // One snapshot for both queries (a write may commit between them otherwise).
        let _snapshot = conn.unchecked_transaction()?;
        let mut runs = std::collections::HashMap::with_capacity(ids.len());
        let mut stmt = conn.prepare_cached(
            "SELECT id, name, project, configuration, submitted_ms, replicas FROM runs
             WHERE id IN (SELECT value FROM json_each(?1))",
        )?;
        let mut rows = stmt.query([&list])?;
        while let Some(r) = rows.next()? {
            let id: String = r.get(0)?;
            let configuration: String = r.get(3)?;
            let configuration: Configuration = serde_json::from_str(&configuration)
                .map_err(|source| StoreError::Corrupt { what: format!("configuration of run {id}"), source })?;
            let replicas: Option<u32> = r.get(5)?;
            let run = api::Run {
                id: RunId(id.clone()),
                name: r.get(1)?,
                project: r.get(2)?,
                state: JobState::Done,
                submitted_at_ms: r.get(4)?,
                finished_at_ms: None,
                configuration: configuration.redacted(),
                jobs: Vec::new(),
            };
            runs.insert(id, (run, replicas));
        }
        let mut stmt = conn.prepare_cached(
            "SELECT j.run_id, j.id, j.job_num, j.state, j.node_id, n.name, j.allocation, j.exit_code,
                    j.termination_reason, j.status_message, j.submitted_ms, j.submission,
                    json_extract(j.spec, '$.image'), j.started_ms, j.finished_ms
             FROM jobs j LEFT JOIN nodes n ON n.id = j.node_id
             WHERE j.run_id IN (SELECT value FROM json_each(?1))
               AND j.submission = (SELECT MAX(k.submission) FROM jobs k WHERE k.run_id = j.run_id AND k.job_num = j.job_num)
             ORDER BY j.run_id, j.job_num",
        )?;
        let mut rows = stmt.query([&list])?;
        while let Some(r) = rows.next()? {
            let run_id: String = r.get(0)?;
            let Some((run, _)) = runs.get_mut(&run_id) else { continue };
            let state: String = r.get(3)?;
            let reason: Option<String> = r.get(8)?;
            let allocation: Option<String> = r.get(6)?;
            let allocation = allocation.map(|a| serde_json::from_str(&a)).transpose().map_err(|source| {
                StoreError::Corrupt { what: format!("allocation of a job of run {run_id}"), source }
            })?;
            run.jobs.push(api::Job {
                id: JobId(r.get(1)?),
                job_num: r.get(2)?,
                state: JobState::parse(&state).unwrap_or(JobState::Failed),
                node_id: r.get::<_, Option<String>>(4)?.map(NodeId),
                node_name: r.get(5)?,
                allocation,
                exit_code: r.get(7)?,
                termination_reason: reason.as_deref().and_then(TerminationReason::parse),
                status_message: r.get(9)?,
                submitted_at_ms: r.get(10)?,
                submission: r.get(11)?,
                image: r.get(12)?,
                started_at_ms: r.get(13)?,
                finished_at_ms: r.get(14)?,
            });
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some((mut run, replicas)) = runs.remove(&id.0) else { continue };
            let states: Vec<&JobState> = run.jobs.iter().map(|j| &j.state).collect();
            run.state = match replicas {
                // An active service runs while any replica does, and at zero replicas too.
                Some(_) if states.contains(&&JobState::Running) => JobState::Running,
                Some(_) => states.iter().find(|s| !s.is_finished()).map_or(JobState::Running, |s| (*s).clone()),
                None => run_state(&states),
            };
            if run.state.is_finished() {
                run.finished_at_ms = run.jobs.iter().filter_map(|j| j.finished_at_ms).max();
            }
            out.push(run);
        }
        Ok(out)
    }
}

/// A run is as far along as its least advanced job; once all ended, the worst ending wins.
pub fn run_state(jobs: &[&JobState]) -> JobState {
    if let Some(active) = jobs.iter().find(|s| !s.is_finished()) {
        return (*active).clone();
    }
    for s in [JobState::Failed, JobState::Aborted, JobState::Stopped] {
        if jobs.contains(&&s) {
            return s;
        }
    }
    JobState::Done
}

impl Store {
    /// How many jobs are in each state (every attempt, finished ones included), from the state index.
    pub fn job_counts_by_state(&self) -> Result<Vec<(String, u64)>> {
        let conn = self.read();
        let mut stmt =
            conn.prepare_cached("SELECT state, COUNT(*) FROM jobs INDEXED BY jobs_by_state GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The active runs' states, as their jobs in active states make them ([`run_state`]), by run.
    pub fn active_run_states(&self) -> Result<Vec<JobState>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT run_id, state FROM jobs INDEXED BY jobs_by_state WHERE state IN ",
            active_states!()
        ))?;
        let mut by_run: std::collections::HashMap<String, Vec<JobState>> = std::collections::HashMap::new();
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let state: String = r.get(1)?;
            by_run.entry(r.get(0)?).or_default().push(JobState::parse(&state).unwrap_or(JobState::Failed));
        }
        Ok(by_run.values().map(|states| run_state(&states.iter().collect::<Vec<_>>())).collect())
    }

    /// The waiting jobs' reasons, each with how many jobs wait for it.
    pub fn pending_reasons(&self) -> Result<Vec<(Option<String>, u64)>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT status_message, COUNT(*) FROM jobs INDEXED BY jobs_by_state \
             WHERE state IN ('submitted', 'pending') GROUP BY status_message",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// How many runs are stored.
    pub fn run_count(&self) -> Result<u64> {
        let n: i64 = self.read().query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }
}
