//! `corral-agent`: the host daemon.
pub mod inventory;
