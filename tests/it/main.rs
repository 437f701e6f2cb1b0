//! End-to-end tests: a real coordinator (SQLite file, QUIC, HTTP), real agents and the CLI's own
//! command functions, against the real Docker engine. Docker missing is a failure, never a skip.

mod aws;
mod cluster;
mod datadir;
mod devenv;
mod ebs;
mod enroll;
mod faults;
mod fleetnodes;
mod gpu;
mod gpuhealth;
mod groups;
mod harness;
mod images;
mod install;
mod limits;
mod multinode;
mod netns;
mod ratelimits;
mod reconcile;
mod restart;
mod routers;
mod runfields;
mod schedules;
mod secrets;
mod services;
mod tasks;
mod teams;
mod upgrade;
mod uploads;
mod utilization;
mod volumes;
