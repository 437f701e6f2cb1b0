//! What `corral apply` shows of a heterogeneous run before it submits it: each node group's or
//! replica group's size and resources.

use corral_proto::config::Configuration;

use crate::commands::resources_line;

/// Prints one line per group (to stderr, with the rest of the plan); `false` when the run has no
/// groups (its one `Resources:` line says it all).
pub fn plan(cfg: &Configuration) -> bool {
    let lines: Vec<String> = match cfg {
        Configuration::Task(t) => t
            .groups
            .iter()
            .map(|g| format!("{}: {} node(s), {}", g.name, g.nodes, resources_line(&g.resources)))
            .collect(),
        Configuration::Service(s) => s
            .groups
            .iter()
            .map(|g| {
                let router = if g.router.is_some() { ", router" } else { "" };
                format!("{}: {} replica(s), {}{router}", g.name, g.replicas, resources_line(&g.resources))
            })
            .collect(),
        _ => Vec::new(),
    };
    if lines.is_empty() {
        return false;
    }
    eprintln!("Groups:    {}", lines.join("\n           "));
    true
}
