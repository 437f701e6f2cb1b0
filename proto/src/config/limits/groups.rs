//! The limits of a task's node groups and a service's replica groups: how many groups, and the
//! same bounds on each group's fields as on the run's own.

use super::super::{ServiceConfig, TaskConfig};
use super::{
    Checked, LimitError, MAX_NODES, MAX_PORTS, MAX_REPLICAS, MAX_SCALING_TARGET, commands, count, duration, fail,
    number, range_of, resources, string,
};

/// Groups of one task or service (`groups`, or `replicas` as a list).
pub const MAX_GROUPS: usize = 64;

/// `groups[3]` + `resources.gpu` → `groups[3].resources.gpu`.
fn within(prefix: &str, e: LimitError) -> LimitError {
    LimitError { field: format!("{prefix}.{}", e.field), ..e }
}

pub(super) fn task(t: &TaskConfig) -> Checked {
    if t.groups.is_empty() {
        return Ok(());
    }
    count("groups", t.groups.len(), MAX_GROUPS, "groups")?;
    let mut total = 0u64;
    for (i, g) in t.groups.iter().enumerate() {
        let at = format!("groups[{i}]");
        string(&format_args!("{at}.name"), Some(&g.name))?;
        number(&format_args!("{at}.nodes"), g.nodes.into(), 1, MAX_NODES.into())?;
        total += u64::from(g.nodes);
        commands(&format!("{at}.commands"), &g.commands)?;
        count(&format!("{at}.ports"), g.ports.len(), MAX_PORTS, "ports")?;
        resources(&g.resources).map_err(|e| within(&at, e))?;
    }
    if total != u64::from(t.nodes) {
        return fail("nodes", format!("must be the groups' nodes in all ({total}), found {}", t.nodes));
    }
    Ok(())
}

pub(super) fn service(s: &ServiceConfig) -> Checked {
    if s.groups.is_empty() {
        return Ok(());
    }
    count("replicas", s.groups.len(), MAX_GROUPS, "replica groups")?;
    let mut total = 0u64;
    for (i, g) in s.groups.iter().enumerate() {
        let at = format!("replicas[{i}]");
        string(&format_args!("{at}.name"), Some(&g.name))?;
        if g.replicas.max.is_none() {
            return fail(format!("{at}.count"), "give the maximum number of replicas, e.g. `0..4`");
        }
        range_of(&format!("{at}.count"), &g.replicas, MAX_REPLICAS, "replicas")?;
        total += u64::from(g.replicas.max.unwrap_or(0));
        if let Some(sc) = &g.scaling {
            if !(sc.target > 0.0 && sc.target <= MAX_SCALING_TARGET) {
                return fail(
                    format!("{at}.scaling.target"),
                    format!(
                        "must be more than 0 and at most {MAX_SCALING_TARGET} requests a second, found {}",
                        sc.target
                    ),
                );
            }
            duration(&format!("{at}.scaling.window"), sc.window_secs)?;
            duration(&format!("{at}.scaling.scale_up_delay"), Some(sc.scale_up_delay_secs))?;
            duration(&format!("{at}.scaling.scale_down_delay"), Some(sc.scale_down_delay_secs))?;
        }
        for (key, v) in [("image", &g.image), ("python", &g.python), ("reservation", &g.reservation)] {
            string(&format_args!("{at}.{key}"), v.as_deref())?;
        }
        commands(&format!("{at}.commands"), &g.commands)?;
        resources(&g.resources).map_err(|e| within(&at, e))?;
    }
    if total > u64::from(MAX_REPLICAS) {
        return fail("replicas", format!("at most {MAX_REPLICAS} replicas in all groups together, found {total}"));
    }
    Ok(())
}
