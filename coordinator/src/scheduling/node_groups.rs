//! Heterogeneous gangs, a task's node `groups`: what each rank asks of placement, and the parts of
//! its job that come from its group — its commands, with `${{ groups[i].nodes[j].IP_ADDRESS }}`
//! replaced by the address of the node that rank `offset(i) + j` was placed on (the ranks are the
//! groups' nodes in order), and the variables that name its group.

use corral_proto::config::{TaskConfig, substitute_node_addresses};
use corral_proto::resources::ResourcesSpec;

/// What the gang asks of placement: the first rank's resources, and every rank's when they come
/// from groups (empty otherwise: every rank asks for the task's).
pub fn rank_resources(task: &TaskConfig) -> (ResourcesSpec, Vec<ResourcesSpec>) {
    if task.groups.is_empty() {
        return (task.resources.clone(), Vec::new());
    }
    let ranks: Vec<ResourcesSpec> =
        task.groups.iter().flat_map(|g| std::iter::repeat_n(&g.resources, g.nodes as usize)).cloned().collect();
    (ranks.first().cloned().unwrap_or_default(), ranks)
}

/// The addresses of the placed gang by group and by node within it, for the references.
pub fn addresses_by_group(task: &TaskConfig, ips: &[String]) -> Vec<Vec<String>> {
    let mut rest = ips;
    task.group_sizes()
        .into_iter()
        .map(|n| {
            let (mine, after) = rest.split_at((n as usize).min(rest.len()));
            rest = after;
            mine.to_vec()
        })
        .collect()
}

/// Rank `rank`'s commands: its group's, with the gang's node addresses put in, and
/// `${{ run.args }}` empty (dstack's run arguments: `corral apply` takes none).
pub fn rank_commands(task: &TaskConfig, rank: u32, addresses: &[Vec<String>]) -> Vec<String> {
    let commands = match task.rank_group(rank).group {
        Some(g) => &g.commands,
        None => &task.commands,
    };
    commands
        .iter()
        .map(|c| {
            corral_proto::config::unescape_interpolations(&without_run_args(&substitute_node_addresses(c, addresses)))
        })
        .collect()
}

fn without_run_args(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for (range, inner) in corral_proto::config::interpolations(s) {
        if inner == "run.args" {
            out.push_str(&s[at..range.start]);
            at = range.end;
        }
    }
    out.push_str(&s[at..]);
    out
}

/// The variables that say which group a rank is in (Corral's own; dstack has none): its name and
/// its place within the group.
pub fn group_vars(task: &TaskConfig, rank: u32) -> Vec<(String, String)> {
    if task.groups.is_empty() {
        return Vec::new();
    }
    let g = task.rank_group(rank);
    vec![
        ("CORRAL_NODE_GROUP".to_owned(), g.name.to_owned()),
        ("CORRAL_NODE_GROUP_INDEX".to_owned(), g.index.to_string()),
        ("CORRAL_NODE_GROUP_RANK".to_owned(), g.job_index.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_proto::config::{Configuration, parse};

    fn task(text: &str) -> TaskConfig {
        match parse(text, "t.yml") {
            Ok(Configuration::Task(t)) => t,
            other => panic!("not a task: {other:?}"),
        }
    }

    const GROUPS: &str = "type: task\nimage: i\ngroups:\n  - name: head\n    commands: [serve]\n    resources: {cpu: 2}\n  - name: workers\n    nodes: 2\n    commands: ['join ${{ groups[0].nodes[0].IP_ADDRESS }} after ${{ groups[1].nodes[0].IP_ADDRESS }}']\n    resources: {gpu: 1}\n";

    #[test]
    fn each_rank_asks_for_its_group_s_resources() {
        let t = task(GROUPS);
        let (first, ranks) = rank_resources(&t);
        assert_eq!(ranks.len(), 3);
        assert!(first.gpu.is_none() && ranks[0].gpu.is_none());
        assert!(ranks[1].gpu.is_some() && ranks[2].gpu.is_some());
        let plain = task("type: task\nimage: i\nnodes: 3\ncommands: [x]\n");
        assert_eq!(rank_resources(&plain).1, Vec::new(), "a plain gang: one request for all");
    }

    #[test]
    fn commands_get_the_addresses_of_the_nodes_they_name() {
        let t = task(GROUPS);
        let ips: Vec<String> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"].map(String::from).to_vec();
        let by_group = addresses_by_group(&t, &ips);
        assert_eq!(by_group, vec![vec!["10.0.0.1".to_owned()], vec!["10.0.0.2".to_owned(), "10.0.0.3".to_owned()]]);
        assert_eq!(rank_commands(&t, 0, &by_group), ["serve"]);
        assert_eq!(rank_commands(&t, 2, &by_group), ["join 10.0.0.1 after 10.0.0.2"]);
        let vars = group_vars(&t, 2);
        assert!(vars.contains(&("CORRAL_NODE_GROUP".to_owned(), "workers".to_owned())));
        assert!(vars.contains(&("CORRAL_NODE_GROUP_RANK".to_owned(), "1".to_owned())));
        let plain = task("type: task\nimage: i\nnodes: 2\ncommands: ['ping ${{ groups[0].nodes[1].IP_ADDRESS }}']\n");
        let by_group = addresses_by_group(&plain, &ips[..2]);
        assert_eq!(rank_commands(&plain, 0, &by_group), ["ping 10.0.0.2"], "a plain gang is group 0");
        let args = task(
            "type: task\nimage: i\ncommands: ['python train.py --merge ${{ run.args }}', 'echo $${{ run.args }}']\n",
        );
        assert_eq!(rank_commands(&args, 0, &[]), ["python train.py --merge ", "echo ${{ run.args }}"]);
        assert!(group_vars(&plain, 0).is_empty());
    }
}
