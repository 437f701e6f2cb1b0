//! `corral-proto`: the types every part of Corral shares.
//!
//! - [`wire`]: the agent↔coordinator protocol (framing, messages, version negotiation);
//! - [`config`]: the dstack-compatible configuration language (YAML text → typed specs, with errors
//!   that name file, line and field);
//! - [`api`]: the HTTP API's requests and responses, so the CLI depends on this crate alone;
//! - domain types: [`ids`], [`resources`] (and placement fit), [`inventory`], [`job`], [`metrics`]
//!   (what nodes measure, and a GPU's health judged from it).
//!
//! Pure and deterministic: no sockets, no async runtime, no Docker ([`paths`] alone reads the
//! environment, to pick the daemons' default state dirs).

pub mod admission;
pub mod api;
pub mod config;
pub mod ids;
pub mod inventory;
pub mod job;
pub mod metrics;
pub mod paths;
pub mod resources;
pub mod token;
pub mod wire;
