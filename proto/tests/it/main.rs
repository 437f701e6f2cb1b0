//! corral-proto's integration tests, one binary so the crate links once.

mod conformance;
mod examples;
