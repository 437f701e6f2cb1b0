//! Scheduled runs (`schedule:`): the request that `corral apply` sent, kept per project and name,
//! with the next time the coordinator submits it. `next_ms` is `NULL` while the run it started
//! last is still active: the next time is reckoned when that run ends, as dstack does.

use rusqlite::{OptionalExtension, params};

use corral_proto::api::SubmitRun;
use corral_proto::ids::RunId;

use super::{Result, Store, json, json_col, now_ms};

/// One scheduled run as stored.
#[derive(Clone, Debug)]
pub struct ScheduleRow {
    pub project: String,
    pub name: String,
    /// What is submitted at each time, its `name` set.
    pub request: SubmitRun,
    pub created_ms: i64,
    /// The next start; `None` while `run` is active.
    pub next_ms: Option<i64>,
    /// The run it started last.
    pub run: Option<RunId>,
    /// Why the last start failed, when it did.
    pub error: Option<String>,
}

const COLUMNS: &str = "project, name, request, created_ms, next_ms, run_id, error";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ScheduleRow> {
    Ok(ScheduleRow {
        project: r.get(0)?,
        name: r.get(1)?,
        request: json_col(r, 2)?,
        created_ms: r.get(3)?,
        next_ms: r.get(4)?,
        run: r.get::<_, Option<String>>(5)?.map(RunId),
        error: r.get(6)?,
    })
}

impl Store {
    /// Registers a scheduled run, or replaces the request and next time of the one of that name
    /// (the run it started last stays known).
    pub fn put_schedule(&self, project: &str, name: &str, request: &SubmitRun, next_ms: Option<i64>) -> Result<()> {
        self.execute(
            "INSERT INTO schedules (project, name, request, created_ms, next_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (project, name) DO UPDATE SET request = excluded.request, next_ms = excluded.next_ms, error = NULL",
            owned![project, name, json(request), now_ms(), next_ms],
        )?;
        Ok(())
    }

    pub fn schedule(&self, project: &str, name: &str) -> Result<Option<ScheduleRow>> {
        let conn = self.read();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM schedules WHERE project = ?1 AND name = ?2"))?;
        Ok(stmt.query_row(params![project, name], row).optional()?)
    }

    pub fn schedules(&self, project: &str) -> Result<Vec<ScheduleRow>> {
        let conn = self.read();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM schedules WHERE project = ?1 ORDER BY name"))?;
        let rows = stmt.query_map([project], row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Those due at `now_ms` (a time missed while the coordinator was down is due once).
    pub fn due_schedules(&self, now_ms: i64) -> Result<Vec<ScheduleRow>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE next_ms IS NOT NULL AND next_ms <= ?1 ORDER BY next_ms"
        ))?;
        let rows = stmt.query_map([now_ms], row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Those whose last run may still be active (no next time yet).
    pub fn schedules_waiting_on_runs(&self) -> Result<Vec<ScheduleRow>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM schedules WHERE next_ms IS NULL"))?;
        let rows = stmt.query_map([], row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Takes the start at `next_ms` for the caller: `false` when the schedule changed or went
    /// meanwhile (re-applied, removed), and nothing must be started.
    pub fn claim_schedule(&self, project: &str, name: &str, next_ms: i64) -> Result<bool> {
        let n = self.execute(
            "UPDATE schedules SET next_ms = NULL WHERE project = ?1 AND name = ?2 AND next_ms = ?3",
            owned![project, name, next_ms],
        )?;
        Ok(n == 1)
    }

    /// Records what a start gave: the run, or why there is none.
    pub fn schedule_started(&self, project: &str, name: &str, run: Option<&RunId>, error: Option<&str>) -> Result<()> {
        self.execute(
            "UPDATE schedules SET run_id = COALESCE(?3, run_id), error = ?4 WHERE project = ?1 AND name = ?2",
            owned![project, name, run.map(|r| r.0.as_str()), error],
        )?;
        Ok(())
    }

    /// Sets the next start of a schedule that waits for none (its last run ended).
    pub fn set_schedule_next(&self, project: &str, name: &str, next_ms: Option<i64>) -> Result<()> {
        self.execute(
            "UPDATE schedules SET next_ms = ?3 WHERE project = ?1 AND name = ?2 AND next_ms IS NULL",
            owned![project, name, next_ms],
        )?;
        Ok(())
    }

    /// Removes a schedule (the runs it started stay, as runs do). `false`: there was none.
    pub fn delete_schedule(&self, project: &str, name: &str) -> Result<bool> {
        let n = self.execute("DELETE FROM schedules WHERE project = ?1 AND name = ?2", owned![project, name])?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use corral_proto::config::parse;

    use super::*;

    fn request(cron: &str) -> SubmitRun {
        let text = format!("type: task\nimage: busybox\ncommands: [x]\nschedule: {{cron: \"{cron}\"}}\n");
        SubmitRun { configuration: parse(&text, "t.yml").expect("parses"), source: None, name: Some("nightly".into()) }
    }

    #[test]
    fn a_start_is_claimed_once_and_a_re_apply_or_removal_wins() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(&dir.path().join("corral.db")).expect("open");
        store.put_schedule("main", "nightly", &request("0 1 * * *"), Some(1_000)).expect("put");
        assert!(store.due_schedules(999).expect("due").is_empty());
        let due = store.due_schedules(5_000).expect("due");
        assert_eq!(due.len(), 1, "a time long past is due, once");
        assert!(store.claim_schedule("main", "nightly", 1_000).expect("claim"));
        assert!(!store.claim_schedule("main", "nightly", 1_000).expect("claim"), "claimed once");
        assert!(store.due_schedules(5_000).expect("due").is_empty());
        store.schedule_started("main", "nightly", Some(&RunId("r1".into())), None).expect("started");
        let waiting = store.schedules_waiting_on_runs().expect("waiting");
        assert_eq!(waiting[0].run, Some(RunId("r1".into())));

        // The next time is set only while none is (a re-apply's stands).
        store.put_schedule("main", "nightly", &request("0 2 * * *"), Some(9_000)).expect("re-apply");
        store.set_schedule_next("main", "nightly", Some(7_000)).expect("next");
        let s = store.schedule("main", "nightly").expect("read").expect("there");
        assert_eq!((s.next_ms, s.run), (Some(9_000), Some(RunId("r1".into()))), "the re-apply keeps its last run");
        // Claimed against a time that is no longer the schedule's: nothing starts.
        assert!(!store.claim_schedule("main", "nightly", 1_000).expect("claim"));
        assert!(store.delete_schedule("main", "nightly").expect("delete"));
        assert!(!store.delete_schedule("main", "nightly").expect("delete"));
        assert!(store.due_schedules(i64::MAX).expect("due").is_empty());
    }
}
