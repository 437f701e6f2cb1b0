//! `corral-tests`: end-to-end tests (`it/`), benchmarks (`benches/`), and the test-only pieces they
//! share:
//!
//! - [`hollow`]: hollow nodes, simulated agents that speak the real protocol to a real coordinator
//!   with an in-memory container runtime, thousands to one process (as Kubernetes' kubemark does);
//! - [`procs`]: the release binaries as real processes, for benchmarks.
//!
//! Nothing here is part of a shipped binary.

pub mod hollow;
pub mod procs;
