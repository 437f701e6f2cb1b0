//! The state store: one SQLite file in the data dir (WAL), migrations applied on open. The coordinator
//! alone writes it. Calls are short and synchronous. Writes go through one connection behind a
//! mutex; reads that need no transaction go to a small pool of read-only connections (WAL lets
//! them read while a write is under way), so a token check or a page of runs never waits behind a
//! scheduling pass's transaction. Callers see typed methods only: no SQL leaves this module.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use corral_proto::config::Configuration;
use corral_proto::ids::{JobId, NodeId, RunId};
use corral_proto::inventory::HostInventory;
use corral_proto::job::{JobSpec, JobState, TerminationReason};
use corral_proto::resources::Allocation;

use crate::secrets::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot create the database {path}")]
    Create {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a write was lost: the store's writer could not do it (see the coordinator's log)")]
    WriteLost,
    #[error("stored {what} is unreadable")]
    Corrupt {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// The database could not grow: the data dir's disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Sql(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DiskFull)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

// The job states as the queries group them, as SQL lists: the one place they are spelled, checked
// against `JobState` by `store::tests::the_state_lists_are_the_job_states`. Macros, so that a
// query stays one literal (`concat!`).

/// Waiting for a node.
macro_rules! queued_states {
    () => {
        "('submitted', 'pending')"
    };
}
/// On a node: holding its resources.
macro_rules! placed_states {
    () => {
        "('provisioning', 'pulling', 'running', 'terminating')"
    };
}
/// Not yet ended (`IN` this list can use `jobs_by_state`; `NOT IN` the finished ones reads every job).
macro_rules! active_states {
    () => {
        "('submitted', 'pending', 'provisioning', 'pulling', 'running', 'terminating')"
    };
}
/// Ended.
macro_rules! finished_states {
    () => {
        "('done', 'failed', 'stopped', 'aborted')"
    };
}
/// A statement's parameters as owned values, for [`Store::execute`] on the writer thread.
macro_rules! owned {
    ($($p:expr),* $(,)?) => {
        vec![$($crate::store::owned_value(&$p)),*]
    };
}
// For the test that checks them against `JobState`.
#[cfg(test)]
use {active_states, finished_states, placed_states, queued_states};

const FINISHED_STATES: &str = finished_states!();
const ACTIVE_STATES: &str = active_states!();

/// What [`Store::insert_run`] stores.
#[derive(Clone, Copy)]
pub struct NewRun<'a> {
    pub id: &'a RunId,
    pub project: &'a str,
    pub name: &'a str,
    pub configuration: &'a Configuration,
    pub source: Option<&'a str>,
    /// One job per rank (a task) or per replica it starts with (a service).
    pub jobs: &'a [JobId],
    /// The number of each of `jobs`; empty: 0, 1, 2, ... (a service with replica groups starts
    /// numbers from each group's block).
    pub job_nums: &'a [u32],
    /// A service's desired replica count.
    pub replicas: Option<u32>,
    /// A new deployment of an active service of that name: stored next to it.
    pub replacing_service: bool,
}

mod access;
mod fleets;
mod gpus;
mod images;
mod migrations;
mod nodes;
mod run_views;
mod schedules;
mod secrets;
mod services;
#[cfg(test)]
mod tests;
mod tokens;
mod volumes;
mod writer;

pub use access::{Bootstrap, Caller};
pub use gpus::GpuMark;
pub use run_views::{MAX_PAGE, RunPage, run_state};
pub use schedules::ScheduleRow;
pub use secrets::SecretRow;
pub use services::ActiveService;
pub use tokens::DefaultToken;
pub use volumes::VolumeRow;

pub struct Store {
    /// Read-only connections, taken round robin.
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    /// The thread that owns the write connection (declared last: dropped after the readers, it
    /// commits what was sent before it ends).
    writer: writer::Writer,
}

/// Read-only connections kept open beside the writer.
const READERS: usize = 4;

/// A job as the coordinator keeps it.
#[derive(Clone, Debug)]
pub struct JobBrief {
    pub run_id: RunId,
    pub node_id: Option<NodeId>,
    pub state: JobState,
    pub termination_reason: Option<TerminationReason>,
    /// Another job of its run is placed but not started (`startup_order` holds it back).
    pub held_sibling: bool,
}

/// What is placed on a node ([`Store::node_loads`]).
#[derive(Clone, Debug, Default)]
pub struct NodeLoad {
    pub jobs: u32,
    pub gpus: Vec<u32>,
}

#[derive(Clone, Debug)]
pub struct JobRow {
    pub id: JobId,
    pub run_id: RunId,
    pub run_name: String,
    pub project: String,
    pub job_num: u32,
    pub state: JobState,
    pub node_id: Option<NodeId>,
    pub allocation: Option<Allocation>,
    pub spec: Option<JobSpec>,
    pub exit_code: Option<i64>,
    pub termination_reason: Option<TerminationReason>,
    pub status_message: Option<String>,
    pub submitted_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub configuration: Configuration,
    /// 0 for the first attempt; a retry is a new row with the next number.
    pub submission: u32,
    /// A retry waits until then (backoff).
    pub not_before_ms: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct NodeRow {
    pub id: NodeId,
    pub name: String,
    pub fleet: Option<String>,
    pub enrolled_ms: i64,
    pub last_seen_ms: Option<i64>,
    pub address: Option<String>,
    pub agent_version: Option<String>,
    pub inventory: Option<HostInventory>,
    pub revoked: bool,
    pub cordoned: bool,
}

impl NodeRow {
    /// A copy without the inventory (the large part), for what only needs the node's identity.
    pub fn without_inventory(&self) -> NodeRow {
        NodeRow {
            id: self.id.clone(),
            name: self.name.clone(),
            fleet: self.fleet.clone(),
            enrolled_ms: self.enrolled_ms,
            last_seen_ms: self.last_seen_ms,
            address: self.address.clone(),
            agent_version: self.agent_version.clone(),
            inventory: None,
            revoked: self.revoked,
            cordoned: self.cordoned,
        }
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let applied: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in migrations::MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// A parameter as an owned value. What we bind is our own plain data; a value SQLite cannot take
/// (none today) becomes NULL, and the statement's constraints refuse it.
pub(crate) fn owned_value(p: &dyn rusqlite::ToSql) -> rusqlite::types::Value {
    use rusqlite::types::{ToSqlOutput, Value};
    match p.to_sql() {
        Ok(ToSqlOutput::Borrowed(v)) => v.into(),
        Ok(ToSqlOutput::Owned(v)) => v,
        _ => Value::Null,
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    // Serializing our own plain data types to JSON cannot fail (no maps with non-string keys).
    serde_json::to_string(v).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|source| StoreError::Corrupt { what: what.to_owned(), source })
}

const JOB_COLUMNS: &str = "j.id, j.run_id, r.name, r.project, j.job_num, j.state, j.node_id, j.allocation, j.spec, \
     j.exit_code, j.termination_reason, j.status_message, j.submitted_ms, j.started_ms, j.finished_ms, r.configuration, \
     j.submission, j.not_before_ms";

/// A JSON column decoded into our type; a stored value we cannot read is a conversion error.
fn json_col<T: serde::de::DeserializeOwned>(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let s: String = row.get(idx)?;
    serde_json::from_str(&s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e)))
}

fn opt_json_col<T: serde::de::DeserializeOwned>(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Option<T>> {
    match row.get_ref(idx)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => json_col(row, idx).map(Some),
    }
}

fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let state: String = row.get(5)?;
    let reason: Option<String> = row.get(10)?;
    Ok(JobRow {
        id: JobId(row.get(0)?),
        run_id: RunId(row.get(1)?),
        run_name: row.get(2)?,
        project: row.get(3)?,
        job_num: row.get(4)?,
        state: JobState::parse(&state).unwrap_or(JobState::Failed),
        node_id: row.get::<_, Option<String>>(6)?.map(NodeId),
        allocation: opt_json_col(row, 7)?,
        spec: opt_json_col(row, 8)?,
        exit_code: row.get(9)?,
        termination_reason: reason.as_deref().and_then(TerminationReason::parse),
        status_message: row.get(11)?,
        submitted_ms: row.get(12)?,
        started_ms: row.get(13)?,
        finished_ms: row.get(14)?,
        configuration: json_col(row, 15)?,
        submission: row.get(16)?,
        not_before_ms: row.get(17)?,
    })
}

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        // SQLite makes the WAL and the shared-memory file with the database's own mode: a database
        // created 0600 keeps the job environments in all three out of other users' reach.
        if let Err(e) = crate::datadir::private_file().write(true).create(true).truncate(false).open(path) {
            return Err(StoreError::Create { path: path.to_owned(), source: e });
        }
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // 32 MiB of pages in memory (SQLite's default is 2 MiB): a node row carries its inventory,
        // and 10,000 of them do not fit the default.
        conn.pragma_update(None, "cache_size", -32 * 1024)?;
        // Every query text the coordinator uses, prepared once.
        conn.set_prepared_statement_cache_capacity(128);
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = Connection::open(path)?;
            reader.pragma_update(None, "query_only", "ON")?;
            reader.pragma_update(None, "cache_size", -16 * 1024)?;
            reader.set_prepared_statement_cache_capacity(128);
            reader.busy_timeout(std::time::Duration::from_secs(5))?;
            readers.push(Mutex::new(reader));
        }
        let writer =
            writer::Writer::start(conn).map_err(|source| StoreError::Create { path: path.to_owned(), source })?;
        Ok(Self { readers, next_reader: Default::default(), writer })
    }

    /// A read-only connection: the first free one from the next in turn, else (all busy) that one
    /// once it is free. What it reads is every write committed before the call.
    fn read(&self) -> MutexGuard<'_, Connection> {
        use std::sync::atomic::Ordering;
        let n = self.readers.len();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            match self.readers[(start + i) % n].try_lock() {
                Ok(guard) => return guard,
                // A panic while holding a reader cannot leave SQLite inconsistent: a read writes nothing.
                Err(std::sync::TryLockError::Poisoned(e)) => return e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {}
            }
        }
        self.readers[start % n].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the writer thread, in a transaction it may share with other writes (in a
    /// savepoint of its own: a nested `savepoint()` works, `transaction()` does not), and returns
    /// once that transaction is committed. What `f` uses it owns: the writer outlives the call.
    fn write<R: Send + 'static>(&self, f: impl FnOnce(&mut Connection) -> Result<R> + Send + 'static) -> Result<R> {
        self.writer.write(f)
    }

    /// One statement on the writer; `params` made with [`owned!`].
    fn execute(&self, sql: &'static str, params: Vec<rusqlite::types::Value>) -> Result<usize> {
        self.write(move |conn| Ok(conn.prepare_cached(sql)?.execute(rusqlite::params_from_iter(params))?))
    }

    /// Writes sent to the writer and the transactions that committed them, since it started.
    pub fn write_stats(&self) -> (u64, u64) {
        self.writer.stats()
    }

    pub fn project_exists(&self, name: &str) -> Result<bool> {
        Ok(self.read().query_row("SELECT 1 FROM projects WHERE name = ?1", [name], |_| Ok(())).optional()?.is_some())
    }

    // --- runs and jobs ---

    /// Stores a run and its jobs (state `submitted`) in one transaction. `Ok(false)`: a run of that
    /// name is still active in the project, and nothing was stored.
    pub fn insert_run(&self, run: &NewRun<'_>) -> Result<bool> {
        let NewRun { id, project, name, configuration: cfg, source, jobs, job_nums, replicas, replacing_service } =
            *run;
        let (id, project, name, source) =
            (id.0.clone(), project.to_owned(), name.to_owned(), source.map(str::to_owned));
        let (cfg, jobs) = (json(cfg), jobs.iter().map(|j| j.0.clone()).collect::<Vec<_>>());
        let job_nums = job_nums.to_vec();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            // Checked in the same transaction as the insert, so two submissions cannot both win. A
            // service is active while it has a desired replica count, even at zero replicas; a new
            // deployment of an active service goes in next to it (`replacing_service`).
            let active: bool = !replacing_service && tx
            .query_row(
                concat!(
                    "SELECT 1 FROM runs r WHERE r.project = ?1 AND r.name = ?2 AND (r.replicas IS NOT NULL OR EXISTS \
                     (SELECT 1 FROM jobs j WHERE j.run_id = r.id AND j.state NOT IN ",
                    finished_states!(),
                    ")) LIMIT 1"
                ),
                params![project, name],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
            if active {
                return Ok(false);
            }
            let now = now_ms();
            tx.prepare_cached(
                "INSERT INTO runs (id, project, name, configuration, source, submitted_ms, replicas) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![id, project, name, cfg, source, now, replicas])?;
            for (num, job) in jobs.iter().enumerate() {
                tx.prepare_cached(
                    "INSERT INTO jobs (id, run_id, job_num, state, submitted_ms) VALUES (?1, ?2, ?3, 'submitted', ?4)",
                )?
                .execute(params![job, id, job_nums.get(num).copied().unwrap_or(num as u32), now])?;
            }
            tx.commit()?;
            Ok(true)
        })
    }

    /// Jobs matching an SQL filter over `j` (jobs) and `r` (runs): the typed methods' one query.
    fn jobs_where<P: rusqlite::Params>(&self, filter: &str, p: P) -> Result<Vec<JobRow>> {
        let conn = self.read();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs j JOIN runs r ON r.id = j.run_id {filter}"))?;
        let jobs = stmt.query_map(p, job_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(jobs)
    }

    /// What an agent's progress report needs of a job, without reading its configuration or spec.
    pub fn job_brief(&self, id: &JobId) -> Result<Option<JobBrief>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT run_id, node_id, state, termination_reason, \
             EXISTS (SELECT 1 FROM jobs g WHERE g.run_id = j.run_id AND g.state = 'provisioning' AND g.id <> j.id) \
             FROM jobs j WHERE id = ?1",
        )?;
        let row = stmt
            .query_row([&id.0], |r| {
                let (state, reason): (String, Option<String>) = (r.get(2)?, r.get(3)?);
                Ok(JobBrief {
                    run_id: RunId(r.get(0)?),
                    node_id: r.get::<_, Option<String>>(1)?.map(NodeId),
                    state: JobState::parse(&state).unwrap_or(JobState::Failed),
                    termination_reason: reason.as_deref().and_then(TerminationReason::parse),
                    held_sibling: r.get(4)?,
                })
            })
            .optional()?;
        Ok(row)
    }

    pub fn job(&self, id: &JobId) -> Result<Option<JobRow>> {
        Ok(self.jobs_where("WHERE j.id = ?1", [&id.0])?.pop())
    }

    /// Jobs waiting for a node, oldest first.
    pub fn queued_jobs(&self) -> Result<Vec<JobRow>> {
        self.jobs_where(concat!("WHERE j.state IN ", queued_states!(), " ORDER BY j.submitted_ms, j.id"), [])
    }

    /// A run's jobs waiting for a node.
    pub fn queued_jobs_of(&self, run: &RunId) -> Result<Vec<JobRow>> {
        self.jobs_where(concat!("WHERE j.run_id = ?1 AND j.state IN ", queued_states!()), [&run.0])
    }

    /// The jobs holding resources on one node (an index lookup: reconnects and node loss at scale).
    pub fn placed_jobs_on(&self, node: &NodeId) -> Result<Vec<JobRow>> {
        self.jobs_where(concat!("WHERE j.node_id = ?1 AND j.state IN ", placed_states!()), [&node.0])
    }

    /// Whether a job of `project` holds resources on `node` (who may load the project's images).
    pub fn node_runs_project(&self, node: &NodeId, project: &str) -> Result<bool> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT EXISTS (SELECT 1 FROM jobs j JOIN runs r ON r.id = j.run_id WHERE j.node_id = ?1 \
                 AND r.project = ?2 AND j.state IN ",
            placed_states!(),
            ")"
        ))?;
        Ok(stmt.query_row(params![node.0, project], |r| r.get(0))?)
    }

    /// The running replicas of active services (what readiness probes look at).
    /// Running jobs of active services. From the services' side (`CROSS JOIN` fixes the order):
    /// with 100,000 running tasks, starting from the jobs would read them all every second.
    pub fn running_replicas(&self) -> Result<Vec<JobRow>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM runs r CROSS JOIN jobs j ON j.run_id = r.id \
             WHERE r.replicas IS NOT NULL AND j.state = 'running'"
        ))?;
        let jobs = stmt.query_map([], job_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(jobs)
    }

    /// What placed jobs hold, node by node, without reading their configurations (the scheduler's
    /// resync, with 100,000 jobs).
    pub fn placed_allocations(&self) -> Result<Vec<(NodeId, corral_proto::resources::Allocation)>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(concat!(
            "SELECT node_id, allocation FROM jobs WHERE node_id IS NOT NULL AND allocation IS NOT NULL \
                 AND state IN ",
            placed_states!()
        ))?;
        let rows =
            stmt.query_map([], |r| Ok((NodeId(r.get(0)?), json_col(r, 1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The ids of the queued jobs and their runs, without reading configurations.
    pub fn queued_job_ids(&self) -> Result<Vec<(JobId, RunId)>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(concat!("SELECT id, run_id FROM jobs WHERE state IN ", queued_states!()))?;
        let rows =
            stmt.query_map([], |r| Ok((JobId(r.get(0)?), RunId(r.get(1)?))))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Jobs holding resources on nodes (placed and not finished).
    pub fn placed_jobs(&self) -> Result<Vec<JobRow>> {
        self.jobs_where(concat!("WHERE j.node_id IS NOT NULL AND j.state IN ", placed_states!()), [])
    }

    /// Assigns placed gangs in one transaction. Each gang (the jobs of one run) is assigned whole or
    /// not at all: a job that is no longer queued (stopped meanwhile) voids its gang. Returns, per
    /// gang, whether it was assigned.
    pub fn assign_gangs(&self, gangs: &[Vec<(NodeId, JobSpec)>]) -> Result<Vec<bool>> {
        // One job; false (nothing written) when it is no longer queued.
        struct Assignment {
            job: String,
            node: String,
            allocation: String,
            spec: String,
        }
        fn assign(tx: &Connection, a: &Assignment) -> Result<bool> {
            let n = tx
                .prepare_cached(concat!(
                    "UPDATE jobs SET state = 'provisioning', node_id = ?2, allocation = ?3, spec = ?4, \
                         status_message = NULL WHERE id = ?1 AND state IN ",
                    queued_states!()
                ))?
                .execute(params![a.job, a.node, a.allocation, a.spec])?;
            Ok(n == 1)
        }
        // Serialized here, on the caller's thread: the writer only binds and writes.
        let gangs: Vec<Vec<Assignment>> = gangs
            .iter()
            .map(|g| {
                g.iter()
                    .map(|(node, spec)| Assignment {
                        job: spec.job_id.0.clone(),
                        node: node.0.clone(),
                        allocation: json(&spec.allocation),
                        spec: json(spec),
                    })
                    .collect()
            })
            .collect();
        self.write(move |conn| {
            let mut tx = conn.savepoint()?;
            let mut out = Vec::with_capacity(gangs.len());
            for gang in gangs {
                if let [a] = gang.as_slice() {
                    // One job is all or nothing already: no savepoint needed.
                    out.push(assign(&tx, a)?);
                    continue;
                }
                let sp = tx.savepoint()?;
                let mut all = true;
                for a in gang.iter() {
                    all &= assign(&sp, a)?;
                }
                if all {
                    sp.commit()?;
                } else {
                    drop(sp); // rolls the gang back
                }
                out.push(all);
            }
            tx.commit()?;
            Ok(out)
        })
    }

    /// Records why queued jobs wait, in one transaction.
    pub fn set_pending_many(&self, waits: &[(JobId, String)]) -> Result<()> {
        let waits = waits.to_vec();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            {
                let mut stmt = tx.prepare_cached(concat!(
                    "UPDATE jobs SET state = 'pending', status_message = ?2 WHERE id = ?1 AND state IN ",
                    queued_states!()
                ))?;
                for (id, reason) in &waits {
                    stmt.execute(params![id.0, reason])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Records non-final states reported by agents, in one transaction. Never moves a finished job
    /// back.
    pub fn set_progress_many(&self, reports: &[(JobId, JobState, Option<String>)]) -> Result<()> {
        let now = now_ms();
        let reports = reports.to_vec();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            {
                let mut stmt = tx.prepare_cached(concat!(
                    "UPDATE jobs SET state = CASE WHEN state = 'terminating' THEN state ELSE ?2 END, \
                 started_ms = CASE WHEN ?2 = 'running' AND started_ms IS NULL THEN ?3 ELSE started_ms END, \
                 status_message = COALESCE(?4, status_message) \
                 WHERE id = ?1 AND state NOT IN ",
                    finished_states!()
                ))?;
                for (id, state, message) in &reports {
                    stmt.execute(params![id.0, state.as_str(), now, message])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Records how a job ended. Returns false when it had already ended (the first word stands).
    pub fn finish(
        &self,
        id: &JobId,
        reason: TerminationReason,
        exit_code: Option<i64>,
        message: Option<&str>,
    ) -> Result<bool> {
        let n = self.execute(
            concat!(
                "UPDATE jobs SET state = ?2, termination_reason = ?3, exit_code = ?4, status_message = COALESCE(?5, status_message), \
                 finished_ms = ?6, started_ms = CASE WHEN ?4 IS NOT NULL THEN COALESCE(started_ms, ?6) ELSE started_ms END \
                 WHERE id = ?1 AND state NOT IN ",
                finished_states!()
            ),
            owned![id.0, reason.final_state().as_str(), reason.as_str(), exit_code, message, now_ms()],
        )?;
        Ok(n == 1)
    }

    /// Marks a placed job as being stopped, remembering how (the reason says whether to abort), so
    /// that reconciliation can repeat the same request. Returns false when the job was not placed.
    pub fn set_terminating(&self, id: &JobId, reason: TerminationReason) -> Result<bool> {
        let n = self.execute(
            concat!(
                "UPDATE jobs SET state = 'terminating', termination_reason = ?2 WHERE id = ?1 AND state IN ",
                placed_states!()
            ),
            owned![id.0, reason.as_str()],
        )?;
        Ok(n == 1)
    }

    /// Ends a job that was never placed. Returns false when the scheduler placed it meanwhile.
    pub fn cancel_queued(&self, id: &JobId, reason: TerminationReason) -> Result<bool> {
        let n = self.execute(
            concat!(
                "UPDATE jobs SET state = ?2, termination_reason = ?3, finished_ms = ?4 WHERE id = ?1 AND state IN ",
                queued_states!()
            ),
            owned![id.0, reason.final_state().as_str(), reason.as_str(), now_ms()],
        )?;
        Ok(n == 1)
    }

    /// The newest run of that name in the project.
    pub fn run_by_name(&self, project: &str, name: &str) -> Result<Option<(RunId, Configuration, i64)>> {
        let row: Option<(String, String, i64)> = self
            .read()
            .query_row(
                "SELECT id, configuration, submitted_ms FROM runs WHERE project = ?1 AND name = ?2 ORDER BY submitted_ms DESC, rowid DESC LIMIT 1",
                params![project, name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(id, cfg, ms)| Ok((RunId(id), from_json("run configuration", &cfg)?, ms))).transpose()
    }

    pub fn run_in_project(&self, id: &RunId, project: &str) -> Result<bool> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM runs WHERE id = ?1 AND project = ?2)")?;
        Ok(stmt.query_row(params![id.0, project], |r| r.get(0))?)
    }

    pub fn run_ids(&self, project: &str) -> Result<Vec<RunId>> {
        let conn = self.read();
        let mut stmt = conn.prepare("SELECT id FROM runs WHERE project = ?1 ORDER BY submitted_ms DESC, rowid DESC")?;
        let ids = stmt.query_map([project], |r| Ok(RunId(r.get(0)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(ids)
    }

    /// Starts a new attempt of some of a run's jobs (a retry): new rows, same ranks, next
    /// submission number, queued no earlier than `not_before_ms`.
    pub fn resubmit(&self, previous: &[JobRow], not_before_ms: i64, new_ids: &[JobId]) -> Result<bool> {
        let rows: Vec<(String, String, u32, u32)> = previous
            .iter()
            .zip(new_ids)
            .map(|(old, id)| (id.0.clone(), old.run_id.0.clone(), old.job_num, old.submission + 1))
            .collect();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let now = now_ms();
            for (id, run, job_num, submission) in &rows {
                // Two job ends racing to retry the same run make one retry, not two.
                let n = tx.execute(
                    "INSERT INTO jobs (id, run_id, job_num, state, submitted_ms, submission, not_before_ms) \
                 SELECT ?1, ?2, ?3, 'submitted', ?4, ?5, ?6 \
                 WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = ?2 AND job_num = ?3 AND submission >= ?5)",
                    params![id, run, job_num, now, submission, not_before_ms],
                )?;
                if n == 0 {
                    return Ok(false); // dropping the savepoint rolls back
                }
            }
            tx.commit()?;
            Ok(true)
        })
    }

    pub fn run_submitted_ms(&self, run: &RunId) -> Result<Option<i64>> {
        Ok(self.read().query_row("SELECT submitted_ms FROM runs WHERE id = ?1", [&run.0], |r| r.get(0)).optional()?)
    }

    /// The newest attempt of each of a run's jobs, by rank.
    /// Whether a job of the run is placed and not yet started.
    pub fn has_provisioning(&self, run: &RunId) -> Result<bool> {
        let conn = self.read();
        let mut stmt =
            conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM jobs WHERE run_id = ?1 AND state = 'provisioning')")?;
        Ok(stmt.query_row([&run.0], |r| r.get(0))?)
    }

    pub fn latest_jobs(&self, run: &RunId) -> Result<Vec<JobRow>> {
        self.jobs_where(
            "WHERE j.run_id = ?1 AND j.submission = (SELECT MAX(k.submission) FROM jobs k WHERE k.run_id = j.run_id AND k.job_num = j.job_num) \
             ORDER BY j.job_num",
            [&run.0],
        )
    }
}
