//! What a node is beyond its hardware, for placement: the names a run's `instances` may call it
//! by, whether its fleet refused it, and what its fleet gives every job (`env`). Built from the
//! node's fleet by [`crate::nodes::fleet_nodes`]; pure here.

use corral_proto::config::InstanceSelector;

/// A node's fleet-given facts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeProfile {
    /// Its number in its fleet (dstack's instance number): for an `ssh_config` fleet, the index of
    /// its host in `hosts`. Its dstack instance name is `<fleet>-<number>`.
    pub instance: Option<u32>,
    /// Host names and addresses it answers to (`instances: [{hostname: ...}]`), lower case.
    pub hostnames: Vec<String>,
    /// Why its fleet does not take it (it does not fit the fleet's `resources`, cannot be split
    /// into its `blocks`, has no address in `ssh_config.network`); it is given no jobs.
    pub refused: Option<String>,
    /// The fleet's `env`: given to every job on the node (a run's own variable of a name wins).
    pub env: Vec<(String, String)>,
    /// The projects whose fleet the node is in: only their runs go there. Empty: any project's.
    pub projects: Vec<String>,
}

/// Whether the node `name` of `fleet` with `profile` is one that `selector` names, as dstack
/// matches instances: by name (the node's, or `<fleet>-<number>`), by host name or address, or by
/// fleet and number. A selector's project is not checked: fleet names are per coordinator here.
pub fn matches(selector: &InstanceSelector, name: &str, fleet: Option<&str>, profile: &NodeProfile) -> bool {
    match selector {
        InstanceSelector::Name(n) => {
            n == name || fleet.zip(profile.instance).is_some_and(|(f, i)| *n == format!("{f}-{i}"))
        }
        InstanceSelector::Hostname(h) => profile.hostnames.iter().any(|x| x.eq_ignore_ascii_case(h)),
        InstanceSelector::FleetInstance { fleet: f, instance } => {
            fleet == Some(f.name.as_str()) && profile.instance == Some(*instance)
        }
    }
}

/// `instances` as a user wrote them, for messages.
pub fn describe(selectors: &[InstanceSelector]) -> String {
    selectors
        .iter()
        .map(|s| match s {
            InstanceSelector::Name(n) => n.clone(),
            InstanceSelector::Hostname(h) => format!("hostname {h}"),
            InstanceSelector::FleetInstance { fleet, instance } => format!("{} instance {instance}", fleet.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
