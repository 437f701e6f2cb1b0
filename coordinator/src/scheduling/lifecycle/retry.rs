//! Whether a run whose jobs have all ended is retried, and when: a function of how its jobs
//! ended, its attempts so far, its `retry` policy and the time.

use std::time::Duration;

use corral_proto::config::{RetryEvent, RetrySpec};
use corral_proto::job::TerminationReason;

/// How long a run keeps being retried when `retry` sets no `duration`.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// First backoff before retrying after an error; doubles per attempt up to [`MAX_BACKOFF`].
pub const ERROR_BACKOFF: Duration = Duration::from_secs(5);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The run's last attempt, once all of its jobs have ended.
#[derive(Clone, Debug)]
pub struct Attempt<'a> {
    /// How each job ended (a job with no recorded reason is left out).
    pub reasons: &'a [TerminationReason],
    /// The attempt's number: 0 for the first submission.
    pub number: u32,
    /// When the run was first submitted, and now (ms since the epoch).
    pub first_submitted_ms: i64,
    pub now_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Submitted again as attempt `attempt`, to start no sooner than `backoff` from now.
    Retry { attempt: u32, event: RetryEvent, backoff: Duration },
    /// Every job succeeded.
    Succeeded,
    /// A job was stopped on purpose (by a user, `max_duration`, ...): never retried.
    Stopped,
    /// The run failed of an event its policy does not cover.
    NotCovered(RetryEvent),
    /// The policy's duration has passed since the first submission.
    WindowOver,
}

/// What becomes of a run whose jobs all ended, by its `retry` policy. An error is retried after
/// a backoff that doubles with each attempt; an interruption (a lost node, a spot reclaim) at once.
pub fn decide(policy: &RetrySpec, attempt: &Attempt<'_>) -> Decision {
    let reasons = attempt.reasons;
    if reasons.iter().any(|r| r.retry_event().is_none() && *r != TerminationReason::Done) {
        return Decision::Stopped;
    }
    if reasons.iter().all(|r| *r == TerminationReason::Done) {
        return Decision::Succeeded;
    }
    let event = if reasons.iter().any(|r| r.retry_event() == Some(RetryEvent::Error)) {
        RetryEvent::Error
    } else {
        RetryEvent::Interruption
    };
    if !policy.on_events.contains(&event) {
        return Decision::NotCovered(event);
    }
    let window = policy.duration_secs.map_or(DEFAULT_WINDOW, Duration::from_secs);
    let elapsed = attempt.now_ms.saturating_sub(attempt.first_submitted_ms);
    if i128::from(elapsed) > window.as_millis() as i128 {
        return Decision::WindowOver;
    }
    let backoff = match event {
        RetryEvent::Error => ERROR_BACKOFF.saturating_mul(1 << attempt.number.min(10)).min(MAX_BACKOFF),
        _ => Duration::ZERO,
    };
    Decision::Retry { attempt: attempt.number.saturating_add(1), event, backoff }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TerminationReason::*;
    use proptest::prelude::*;

    fn policy(on_events: &[RetryEvent], duration_secs: Option<u64>) -> RetrySpec {
        RetrySpec { on_events: on_events.to_vec(), duration_secs }
    }

    fn attempt(reasons: &[TerminationReason], number: u32, elapsed_s: i64) -> Attempt<'_> {
        Attempt { reasons, number, first_submitted_ms: 1_000_000, now_ms: 1_000_000 + elapsed_s * 1000 }
    }

    #[test]
    fn an_error_is_retried_with_a_doubling_backoff_up_to_five_minutes() {
        let p = policy(&[RetryEvent::Error], None);
        let backoff = |n| match decide(&p, &attempt(&[ContainerExitedWithError], n, 10)) {
            Decision::Retry { backoff, attempt, .. } => {
                assert_eq!(attempt, n + 1);
                backoff
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX - 1), MAX_BACKOFF);
    }

    #[test]
    fn a_gang_with_a_lost_node_is_retried_at_once_and_an_error_wins_over_it() {
        let p = policy(&[RetryEvent::Interruption], None);
        let lost = [NodeUnreachable, GangMemberFailed];
        assert_eq!(
            decide(&p, &attempt(&lost, 0, 1)),
            Decision::Retry { attempt: 1, event: RetryEvent::Interruption, backoff: Duration::ZERO }
        );
        let failed = [ContainerExitedWithError, GangMemberFailed];
        assert_eq!(decide(&p, &attempt(&failed, 0, 1)), Decision::NotCovered(RetryEvent::Error));
    }

    #[test]
    fn success_a_stop_and_the_window_end_the_run() {
        let p = policy(&[RetryEvent::Error, RetryEvent::Interruption], Some(60));
        assert_eq!(decide(&p, &attempt(&[Done, Done], 0, 1)), Decision::Succeeded);
        assert_eq!(decide(&p, &attempt(&[StoppedByUser, GangMemberFailed], 0, 1)), Decision::Stopped);
        assert_eq!(decide(&p, &attempt(&[MaxDurationExceeded], 0, 1)), Decision::Stopped);
        assert!(matches!(decide(&p, &attempt(&[ContainerExitedWithError], 0, 60)), Decision::Retry { .. }));
        assert_eq!(decide(&p, &attempt(&[ContainerExitedWithError], 0, 61)), Decision::WindowOver);
        // No duration: an hour.
        let p = policy(&[RetryEvent::Error], None);
        assert_eq!(decide(&p, &attempt(&[AgentError], 3, 3601)), Decision::WindowOver);
    }

    fn any_reason() -> impl Strategy<Value = TerminationReason> {
        prop::sample::select(vec![
            Done,
            StoppedByUser,
            AbortedByUser,
            MaxDurationExceeded,
            NodeUnreachable,
            ContainerLost,
            GangMemberFailed,
            Interrupted,
            ContainerExitedWithError,
            ImageUnavailable,
            ContainerCreationFailed,
            AgentError,
            TerminatedDueToUtilizationPolicy,
        ])
    }

    fn any_event() -> impl Strategy<Value = RetryEvent> {
        prop::sample::select(vec![RetryEvent::NoCapacity, RetryEvent::Interruption, RetryEvent::Error])
    }

    proptest! {
        /// A retry happens only for a failure the policy covers, within its window, and never
        /// waits longer than the longest backoff; nothing a user stopped is ever retried.
        #[test]
        fn a_retry_is_always_one_the_policy_allows(
            reasons in prop::collection::vec(any_reason(), 1..8),
            events in prop::collection::vec(any_event(), 0..3),
            duration_secs in prop::option::of(0u64..100_000),
            number in any::<u32>(),
            first in -1_000_000i64..i64::MAX / 2,
            elapsed in -1_000i64..200_000_000,
        ) {
            let p = policy(&events, duration_secs);
            let a = Attempt { reasons: &reasons, number, first_submitted_ms: first, now_ms: first + elapsed };
            let stopped = reasons.iter().any(|r| r.retry_event().is_none() && *r != Done);
            match decide(&p, &a) {
                Decision::Retry { attempt, event, backoff } => {
                    prop_assert!(!stopped);
                    prop_assert!(p.on_events.contains(&event));
                    prop_assert!(reasons.iter().any(|r| r.retry_event() == Some(event)));
                    let window = duration_secs.map_or(DEFAULT_WINDOW, Duration::from_secs);
                    prop_assert!(elapsed <= window.as_millis() as i64);
                    prop_assert!(backoff <= MAX_BACKOFF);
                    prop_assert_eq!(backoff.is_zero(), event != RetryEvent::Error);
                    prop_assert_eq!(attempt, number.saturating_add(1));
                }
                Decision::Stopped => prop_assert!(stopped),
                Decision::Succeeded => prop_assert!(reasons.iter().all(|r| *r == Done)),
                Decision::NotCovered(event) => prop_assert!(!p.on_events.contains(&event)),
                Decision::WindowOver => prop_assert!(!stopped),
            }
        }
    }
}
