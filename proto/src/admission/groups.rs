//! Admission of heterogeneous runs: a task's node `groups` and a service's replica groups. What
//! each group runs is checked as any run is; what Corral cannot do for groups yet is refused by
//! name. A group's `router` is admitted: the coordinator's `router_groups` does what dstack does.

use super::Refused;
use crate::config::{RefMember, ServiceConfig, TaskConfig, group_refs};

/// A task with groups: each group's ranks are checked as the task they run.
pub(super) fn check_task_groups(t: &TaskConfig, check: fn(&TaskConfig) -> Result<(), Refused>) -> Result<(), Refused> {
    let mut first = 0;
    for (i, g) in t.groups.iter().enumerate() {
        check(&t.for_rank(first))
            .map_err(|e| e.within(&format!("groups[{i}]"), &format!(" (node group {:?})", g.name)))?;
        first += g.nodes;
    }
    Ok(())
}

/// A service with replica groups: each group's replicas are checked as the task they run; returns
/// the replica numbers it starts with.
pub(super) fn check_service_groups(
    s: &ServiceConfig,
    check: fn(&TaskConfig) -> Result<(), Refused>,
) -> Result<Vec<u32>, Refused> {
    for (i, (first, g)) in s.group_blocks().into_iter().enumerate() {
        check_replica_refs(&format!("replicas[{i}].commands"), &g.commands)?;
        check(&s.replica_task_of(first))
            .map_err(|e| e.within(&format!("replicas[{i}]"), &format!(" (replica group {:?})", g.name)))?;
    }
    Ok(s.initial_replica_numbers())
}

/// `${{ groups[i].replicas[j].IP_ADDRESS }}` in a service's commands: refused, Corral does not
/// substitute replica addresses yet.
pub(super) fn check_replica_refs(field: &str, commands: &[String]) -> Result<(), Refused> {
    for (k, c) in commands.iter().enumerate() {
        if let Some(r) = group_refs(c).unwrap_or_default().into_iter().find(|r| r.member == RefMember::Replicas) {
            return Err(Refused::new(
                format!("{field}[{k}]"),
                format!("{}: replica addresses are not substituted in commands yet", &c[r.start..r.end]),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::admission::{Refused, check};
    use crate::config::{Configuration, parse};

    fn admit(text: &str) -> Result<crate::admission::Admitted, Refused> {
        check(&parse(text, "t.yml").expect("valid"))
    }

    #[test]
    fn task_groups_are_admitted_as_one_gang() {
        let a = admit("type: task\nimage: i\ngroups:\n  - commands: [a]\n  - nodes: 2\n    commands: [b]\n")
            .expect("admitted");
        assert_eq!((a.jobs, a.job_nums.len()), (3, 0), "one gang of every group's nodes, numbered 0..3");
    }

    #[test]
    fn replica_groups_start_the_lowest_numbers_of_each_block() {
        let svc = "type: service\nimage: i\nport: 80\nreplicas:\n  - count: 2\n    commands: [a]\n  - count: 1..3\n    scaling: {metric: rps, target: 1}\n    commands: [b]\n";
        let a = admit(svc).expect("admitted");
        assert_eq!(a.job_nums, [0, 1, 2]);
        assert_eq!((a.jobs, a.replicas), (3, Some(3)));
        let Configuration::Service(s) = parse(svc, "t.yml").expect("valid") else { panic!("a service") };
        assert_eq!(s.group_of(2).map(|(i, _)| i), Some(1), "number 2 is the second group's first");
    }

    #[test]
    fn routers_are_admitted_and_replica_addresses_refused_by_name() {
        for router in ["sglang", "dynamo"] {
            let svc = format!(
                "type: service\nimage: i\nport: 80\nreplicas:\n  - count: 1\n    router: {{type: {router}}}\n  - count: 1\n"
            );
            admit(&svc).expect("a router group runs (see the coordinator's router_groups)");
        }
        let e = admit("type: service\nimage: i\nport: 80\nreplicas:\n  - count: 1\n  - count: 1\n    commands: ['x ${{ groups[0].replicas[0].IP_ADDRESS }}']\n")
            .expect_err("refused").to_string();
        assert!(
            e.starts_with("replicas[1].commands[0]: ${{ groups[0].replicas[0].IP_ADDRESS }}: replica addresses"),
            "{e}"
        );
        let e = admit("type: service\nport: 80\nreplicas:\n  - count: 1\n    image: i\n    commands: [x]\nenv: [A]\n")
            .expect_err("refused")
            .to_string();
        assert!(e.contains("env.A: has no value"), "{e}");
    }

    #[test]
    fn a_group_s_refused_field_is_named_inside_its_group() {
        let e = admit("type: service\nport: 80\nreplicas:\n  - count: 1\n    image: i\n    commands: [x]\n  - count: 1\n    image: corral.local/main/0a1b:latest\n    commands: [y]\n")
            .expect_err("refused");
        assert_eq!(e.field, "replicas[1].image");
        assert!(e.why.contains("write the name it was pushed as") && e.why.ends_with("(replica group \"1\")"), "{e}");
    }
}
