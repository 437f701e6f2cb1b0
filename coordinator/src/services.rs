//! Services: how many replicas each has and making it so ([`autoscale`]), which replicas are ready
//! ([`probes`]), router replicas and their workers ([`router_groups`]). Their traffic comes in
//! through the API's proxy (`api/proxy` for `/proxy/services/`, `api/models` for the
//! OpenAI-compatible `/proxy/models/`), balanced over ready replicas and carried by
//! [`crate::nodes::tunnel`]; their desired counts are stored in `store/services`.

pub mod autoscale;
pub mod probes;
pub mod router_groups;
