//! Where and when jobs run: the queue and its passes ([`scheduler`]: planned without I/O, then
//! applied; the rest of the coordinator tells it what changed through its [`handle`]), the placement index ([`placement`], pure), node groups' ranks ([`node_groups`]), a
//! job's end and what follows it — gangs, retries, lost nodes ([`lifecycle`]) —, dev environments'
//! inactivity ([`activity`]) and scheduled runs ([`schedules`]).

pub mod activity;
pub mod handle;
pub mod lifecycle;
pub mod node_groups;
pub mod placement;
pub mod scheduler;
pub mod schedules;
