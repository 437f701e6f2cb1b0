//! Reconciliation, decided without I/O: given the jobs the store places on a node and the
//! containers the node reports (the full list it sends on every connection), what has to happen so
//! that the two agree. [`super::reconcile`] reads the inputs and carries out the actions.
//!
//! Every step is idempotent: a node reports its containers again on each connection, and the same
//! inputs give the same actions.

use std::collections::{HashMap, HashSet};

use corral_proto::ids::JobId;
use corral_proto::job::{JobState, TerminationReason};
use corral_proto::wire::ContainerReport;

/// A job the store places on the node.
#[derive(Clone, Debug)]
pub struct Placed {
    pub id: JobId,
    pub state: JobState,
    pub termination_reason: Option<TerminationReason>,
    /// Whether its run's `startup_order` lets it start now. Only read for a `provisioning` job
    /// whose container the node does not report.
    pub may_start: bool,
}

/// What the store says of a reported container's job that is not placed on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// The job ran here and has ended (its end is recorded).
    EndedHere(Option<TerminationReason>),
    /// Unknown, placed elsewhere, or not ended: a container this node should not have.
    NotHere,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask again for the stop a `terminating` job was asked for, the same way (it may not have
    /// arrived).
    RepeatStop { job: JobId, reason: TerminationReason, abort: bool },
    /// Send the job's start: the command was lost or never sent (the agent ignores duplicates).
    Start(JobId),
    /// The job's container is gone from the node: the job ends.
    End { job: JobId, reason: TerminationReason, message: &'static str },
    /// An ended job's container has exited: the agent may forget it (and remove it).
    Forget(JobId),
    /// An ended job's container still runs: killed without grace, its end already recorded.
    Kill { job: JobId, reason: TerminationReason },
    /// A container Corral does not want: killed and forgotten.
    Discard(JobId),
}

/// What converges the node's containers with the jobs placed on it. `known` says what the store
/// knows of reported containers that are not in `placed`; one it lacks is treated as
/// [`Known::NotHere`].
pub fn reconcile(placed: &[Placed], reported: &[ContainerReport], known: &HashMap<JobId, Known>) -> Vec<Action> {
    let on_node: HashSet<&JobId> = reported.iter().map(|r| &r.job_id).collect();
    let mut actions = Vec::new();
    for job in placed {
        if on_node.contains(&job.id) {
            if job.state == JobState::Terminating {
                let reason = job.termination_reason.unwrap_or(TerminationReason::StoppedByUser);
                actions.push(Action::RepeatStop {
                    job: job.id.clone(),
                    reason,
                    abort: reason == TerminationReason::AbortedByUser,
                });
            }
            continue;
        }
        match job.state {
            JobState::Provisioning if job.may_start => actions.push(Action::Start(job.id.clone())),
            JobState::Provisioning => {} // its startup order holds it back
            JobState::Terminating => actions.push(Action::End {
                job: job.id.clone(),
                reason: job.termination_reason.unwrap_or(TerminationReason::StoppedByUser),
                message: "the container was gone when the node came back",
            }),
            _ => actions.push(Action::End {
                job: job.id.clone(),
                reason: TerminationReason::ContainerLost,
                message: "the job's container vanished from the node",
            }),
        }
    }
    let placed_ids: HashSet<&JobId> = placed.iter().map(|j| &j.id).collect();
    let mut decided = HashSet::new();
    for r in reported {
        if placed_ids.contains(&r.job_id) || !decided.insert(&r.job_id) {
            continue;
        }
        actions.push(match known.get(&r.job_id).copied().unwrap_or(Known::NotHere) {
            // The agent reports the end itself (it repeats its last word on every connection);
            // the exited container is then forgotten.
            Known::EndedHere(_) if !r.running => Action::Forget(r.job_id.clone()),
            Known::EndedHere(reason) => {
                Action::Kill { job: r.job_id.clone(), reason: reason.unwrap_or(TerminationReason::AbortedByUser) }
            }
            Known::NotHere => Action::Discard(r.job_id.clone()),
        });
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> JobId {
        JobId(format!("j{n}"))
    }

    fn report(n: u8, running: bool) -> ContainerReport {
        ContainerReport { job_id: id(n), running, exit_code: None }
    }

    fn placed(n: u8, state: JobState) -> Placed {
        Placed { id: id(n), state, termination_reason: None, may_start: true }
    }

    #[test]
    fn a_node_back_with_everything_running_needs_nothing() {
        let jobs = [placed(1, JobState::Running), placed(2, JobState::Pulling)];
        assert_eq!(reconcile(&jobs, &[report(1, true), report(2, true)], &HashMap::new()), vec![]);
    }

    #[test]
    fn a_lost_start_is_sent_again_when_the_startup_order_allows() {
        let mut held = placed(2, JobState::Provisioning);
        held.may_start = false;
        let jobs = [placed(1, JobState::Provisioning), held];
        assert_eq!(reconcile(&jobs, &[], &HashMap::new()), vec![Action::Start(id(1))]);
    }

    #[test]
    fn a_vanished_container_ends_its_job_and_a_stopping_one_ends_as_asked() {
        let mut stopping = placed(2, JobState::Terminating);
        stopping.termination_reason = Some(TerminationReason::AbortedByUser);
        let actions = reconcile(&[placed(1, JobState::Running), stopping.clone()], &[], &HashMap::new());
        assert_eq!(
            actions,
            vec![
                Action::End {
                    job: id(1),
                    reason: TerminationReason::ContainerLost,
                    message: "the job's container vanished from the node"
                },
                Action::End {
                    job: id(2),
                    reason: TerminationReason::AbortedByUser,
                    message: "the container was gone when the node came back"
                },
            ]
        );
        // Still there: the abort is asked for again, as an abort.
        assert_eq!(
            reconcile(&[stopping], &[report(2, true)], &HashMap::new()),
            vec![Action::RepeatStop { job: id(2), reason: TerminationReason::AbortedByUser, abort: true }]
        );
    }

    #[test]
    fn containers_of_no_job_placed_here_go() {
        let known = HashMap::from([
            (id(1), Known::EndedHere(Some(TerminationReason::Done))),
            (id(2), Known::EndedHere(Some(TerminationReason::StoppedByUser))),
            (id(3), Known::NotHere),
        ]);
        let reported = [report(1, false), report(2, true), report(3, true), report(4, false)];
        assert_eq!(
            reconcile(&[], &reported, &known),
            vec![
                Action::Forget(id(1)),
                Action::Kill { job: id(2), reason: TerminationReason::StoppedByUser },
                Action::Discard(id(3)),
                Action::Discard(id(4)),
            ]
        );
    }

    fn any_state() -> impl Strategy<Value = JobState> {
        prop::sample::select(vec![JobState::Provisioning, JobState::Pulling, JobState::Running, JobState::Terminating])
    }

    fn any_reason() -> impl Strategy<Value = Option<TerminationReason>> {
        prop::option::of(prop::sample::select(vec![
            TerminationReason::Done,
            TerminationReason::StoppedByUser,
            TerminationReason::AbortedByUser,
            TerminationReason::ContainerExitedWithError,
        ]))
    }

    fn any_known() -> impl Strategy<Value = Option<Known>> {
        prop::option::of(prop_oneof![any_reason().prop_map(Known::EndedHere), Just(Known::NotHere)])
    }

    type Case = (Vec<Placed>, Vec<ContainerReport>, HashMap<JobId, Known>);

    /// Up to 12 jobs: some placed here, some reported, some both, some known to the store.
    fn any_case() -> impl Strategy<Value = Case> {
        prop::collection::vec(
            (
                prop::option::of((any_state(), any_reason(), any::<bool>())),
                prop::option::of(any::<bool>()),
                any_known(),
            ),
            0..12,
        )
        .prop_map(|jobs| {
            let mut case: Case = Default::default();
            for (n, (placed, reported, known)) in jobs.into_iter().enumerate() {
                let n = n as u8;
                if let Some((state, termination_reason, may_start)) = placed {
                    case.0.push(Placed { id: id(n), state, termination_reason, may_start });
                } else if let Some(known) = known {
                    case.2.insert(id(n), known);
                }
                if let Some(running) = reported {
                    case.1.push(report(n, running));
                }
            }
            case
        })
    }

    fn job_of(a: &Action) -> &JobId {
        match a {
            Action::RepeatStop { job, .. } | Action::End { job, .. } | Action::Kill { job, .. } => job,
            Action::Start(job) | Action::Forget(job) | Action::Discard(job) => job,
        }
    }

    proptest! {
        /// At most one action per job; none for a job neither placed nor reported; a container
        /// of no job placed here never stays as it is; a job placed here never loses its container
        /// to a discard; a job ends only when its container is gone.
        #[test]
        fn every_container_and_job_gets_one_fitting_action((placed, reported, known) in any_case()) {
            let actions = reconcile(&placed, &reported, &known);
            let mut seen = HashSet::new();
            for a in &actions {
                prop_assert!(seen.insert(job_of(a).clone()), "two actions for {}", job_of(a));
            }
            let is_reported = |j: &JobId| reported.iter().any(|r| &r.job_id == j);
            for a in &actions {
                let job = job_of(a);
                let here = placed.iter().find(|p| &p.id == job);
                match a {
                    Action::RepeatStop { .. } => {
                        prop_assert!(here.is_some_and(|p| p.state == JobState::Terminating) && is_reported(job));
                    }
                    Action::Start(_) => {
                        prop_assert!(here.is_some_and(|p| p.state == JobState::Provisioning && p.may_start));
                        prop_assert!(!is_reported(job));
                    }
                    Action::End { .. } => prop_assert!(here.is_some() && !is_reported(job)),
                    Action::Forget(_) | Action::Kill { .. } => {
                        prop_assert!(here.is_none());
                        prop_assert!(matches!(known.get(job), Some(Known::EndedHere(_))));
                        let running = reported.iter().any(|r| &r.job_id == job && r.running);
                        prop_assert_eq!(running, matches!(a, Action::Kill { .. }));
                    }
                    Action::Discard(_) => {
                        prop_assert!(here.is_none() && is_reported(job));
                        prop_assert!(!matches!(known.get(job), Some(Known::EndedHere(_))));
                    }
                }
            }
            for r in &reported {
                if !placed.iter().any(|p| p.id == r.job_id) {
                    prop_assert!(seen.contains(&r.job_id), "container {} left alone", r.job_id);
                }
            }
            for p in &placed {
                let waits = p.state == JobState::Provisioning && !p.may_start;
                if !is_reported(&p.id) && !waits {
                    prop_assert!(seen.contains(&p.id), "job {} without its container left alone", p.id);
                }
            }
        }

    }
}
