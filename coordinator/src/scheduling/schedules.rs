//! Scheduled runs (`schedule:`), as dstack keeps them: `corral apply` of a configuration with a
//! `schedule` registers it ([`crate::api`]'s `/schedules` routes) instead of starting it, and
//! [`run`] submits it at each time, through the same path as `POST /runs` ([`crate::api::submit`]),
//! so that a started run is in every way an applied one.
//!
//! One time at a time, as dstack: after a start the schedule waits for that run to end, and only
//! then reckons its next time, the first one after the end. Times that pass while the run is still
//! going are skipped, never queued; a time missed while the coordinator was down is due when it
//! comes back, and starts once (the next one is reckoned from then). `corral stop` of the run or of
//! the name removes the schedule (dstack: a run stopped by the user is not scheduled again).
//!
//! The state is the store's `schedules` table; [`run`] is level-triggered (a pass every second reads
//! what is due), so a restart loses nothing. Its clock ([`Clock`]) is the system's, but in tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use corral_proto::api;
use corral_proto::ids::RunId;

use crate::State;
use crate::store::{ScheduleRow, StoreError};

/// How often due schedules are looked for: a run starts within this of its time.
const EVERY: Duration = Duration::from_secs(1);

/// The time scheduled runs go by: the system's clock, moved by a set amount — zero, but in tests,
/// which put a cron's next time seconds away (and past it, across a restart). Clones share it.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    ahead_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Reads the system's time moved by `ms` (negative: behind) from now on.
    pub fn set_ahead_ms(&self, ms: i64) {
        self.ahead_ms.store(ms, Ordering::Relaxed);
    }

    /// Milliseconds since the epoch (UTC).
    pub fn now_ms(&self) -> i64 {
        crate::secrets::now_ms().saturating_add(self.ahead_ms.load(Ordering::Relaxed))
    }
}

/// The schedules' time now, milliseconds since the epoch (UTC).
pub fn now_ms(state: &State) -> i64 {
    state.config.schedule_clock.now_ms()
}

/// Submits each scheduled run at its time, until `shutdown`.
pub async fn run(state: Arc<State>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = pass(&state) {
            tracing::warn!("scheduled runs: {e:#}");
        }
    }
}

/// One pass: next times for schedules whose run ended, then the starts that are due.
pub fn pass(state: &State) -> Result<(), StoreError> {
    let now = now_ms(state);
    for s in state.store.schedules_waiting_on_runs()? {
        if run_active(state, s.run.as_ref())? {
            continue;
        }
        let next = s.request.configuration.schedule().and_then(|c| c.next_after_ms(now));
        state.store.set_schedule_next(&s.project, &s.name, next)?;
    }
    for s in state.store.due_schedules(now)? {
        let Some(at) = s.next_ms else { continue };
        // Re-applied or removed since it was read: that request is not the one to start.
        if !state.store.claim_schedule(&s.project, &s.name, at)? {
            continue;
        }
        match crate::api::submit(state, &s.project, &s.request) {
            Ok(run) => {
                tracing::info!(run = %s.name, id = %run, project = %s.project, "scheduled run submitted");
                state.store.schedule_started(&s.project, &s.name, Some(&run), None)?;
                state.scheduler.wake();
            }
            Err(e) => {
                // Nothing started; the next time is reckoned on the next pass.
                tracing::warn!(run = %s.name, project = %s.project, "scheduled run not submitted: {}", e.message());
                state.store.schedule_started(&s.project, &s.name, None, Some(e.message()))?;
            }
        }
    }
    Ok(())
}

/// Whether the run has jobs that have not ended (a service: until it is stopped or fails).
pub(crate) fn run_active(state: &State, run: Option<&RunId>) -> Result<bool, StoreError> {
    let Some(run) = run else { return Ok(false) };
    Ok(state.store.run_view(run)?.is_some_and(|r| !r.state.is_finished()))
}

/// The API's view of a stored schedule.
pub(crate) fn view(state: &State, s: &ScheduleRow) -> api::ScheduledRun {
    api::ScheduledRun {
        name: s.name.clone(),
        project: s.project.clone(),
        cron: s.request.configuration.schedule().map(|c| c.cron.clone()).unwrap_or_default(),
        kind: s.request.configuration.kind().to_owned(),
        next_start_ms: s.next_ms,
        now_ms: now_ms(state),
        last_run: s.run.clone(),
        last_error: s.error.clone(),
        created_at_ms: s.created_ms,
    }
}
