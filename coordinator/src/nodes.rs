//! The nodes: the QUIC endpoint agents dial and what comes over it ([`agents`]: enrollment,
//! sessions, reports, reconciliation, the streams agents open), the connected nodes and the one
//! policy for sending them commands ([`sessions`]), tunnels into containers over the agents' own
//! connections ([`tunnel`]), when nodes were last seen ([`seen`]), what fleets say of their nodes
//! ([`fleet_nodes`]) and rolling agent upgrades ([`upgrade`]).

pub mod agents;
pub mod fleet_nodes;
pub mod seen;
pub mod sessions;
pub mod tunnel;
pub mod upgrade;
