use super::*;
use crate::config::{Configuration, parse};

fn task(text: &str) -> TaskConfig {
    match parse(text, "t.yml") {
        Ok(Configuration::Task(t)) => t,
        other => panic!("not a task: {other:?}"),
    }
}

fn service(text: &str) -> ServiceConfig {
    match parse(text, "s.yml") {
        Ok(Configuration::Service(s)) => s,
        other => panic!("not a service: {other:?}"),
    }
}

fn error(text: &str) -> String {
    parse(text, "t.yml").expect_err("refused").to_string()
}

const RAY: &str = "type: task
python: 3.12
groups:
  - name: head
    commands:
      - ray start --head --port=6379
    resources:
      cpu: 2
    ports: [8265]
  - name: workers
    nodes: 2
    commands:
      - ray start --address=${{ groups[0].nodes[0].IP_ADDRESS }}:6379
    resources:
      gpu: H100:8
";

#[test]
fn task_groups_are_ranks_in_order_with_their_own_commands_and_resources() {
    let t = task(RAY);
    assert_eq!(t.nodes, 3, "the gang is every group's nodes");
    assert_eq!(t.group_sizes(), vec![1, 2]);
    let head = t.for_rank(0);
    assert_eq!(head.commands, vec!["ray start --head --port=6379"]);
    assert_eq!(head.resources.cpu.count, Range::exactly(2));
    assert!(head.resources.gpu.is_none(), "resources are the group's own");
    assert_eq!(head.ports.len(), 1);
    let worker = t.for_rank(2);
    assert!(worker.commands[0].contains("groups[0].nodes[0]"));
    assert_eq!(worker.resources.gpu.as_ref().map(|g| g.names.clone()), Some(vec!["H100".to_owned()]));
    assert!(worker.ports.is_empty());
    assert_eq!(t.rank_group(2), RankGroup { index: 1, name: "workers", job_index: 1, group: Some(&t.groups[1]) });
    let plain = task("type: task\nimage: i\nnodes: 2\ncommands: [x]\n");
    assert_eq!(plain.rank_group(1).name, "0", "a task without groups is group \"0\"");
    assert_eq!(plain.for_rank(1), plain);
}

#[test]
fn unnamed_groups_are_named_by_position() {
    let t = task("type: task\nimage: i\ngroups:\n  - nodes: 1\n  - nodes: 2\n    commands: [w]\n");
    assert_eq!(t.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["0", "1"]);
}

#[test]
fn task_group_mistakes_are_refused_with_the_field() {
    let e = error("type: task\nimage: i\nnodes: 2\ngroups:\n  - commands: [x]\n");
    assert!(e.contains("nodes: `nodes` and `groups` are mutually exclusive"), "{e}");
    let e = error("type: task\nimage: i\ncommands: [x]\ngroups:\n  - commands: [x]\n");
    assert!(e.starts_with("t.yml:3:1: commands: not allowed with `groups`"), "{e}");
    task("type: task\nimage: i\ncommands: []\nports: []\ngroups:\n  - commands: [x]\n"); // empty is none, as in dstack
    let e = error("type: task\ngroups:\n  - name: a\n    nodes: 1\n");
    assert!(e.contains("groups[0].commands: node group \"a\" has nothing to run"), "{e}");
    let e = error("type: task\nimage: i\ngroups:\n  - name: a\n  - name: a\n");
    assert!(e.contains("groups[1].name: the group name \"a\" is used twice"), "{e}");
    let e = error("type: task\nimage: i\ngroups: []\n");
    assert!(e.contains("groups: cannot be an empty list"), "{e}");
    let e = error("type: task\nimage: i\ngroups:\n  - name: Head\n");
    assert!(e.contains("is not a group name"), "{e}");
    let e = error("type: task\nimage: i\ngroups:\n  - nodes: 1000\n  - nodes: 1000\n");
    assert!(e.contains("groups: at most 1024 nodes in all groups together, found 2000"), "{e}");
}

#[test]
fn address_references_are_checked_against_the_groups() {
    let e = error("type: task\nimage: i\ngroups:\n  - commands: ['echo ${{ groups[1].nodes[0].IP_ADDRESS }}']\n");
    assert!(e.contains("groups[0].commands[0]: ${{ groups[1].nodes[0].IP_ADDRESS }}: there is no group 1"), "{e}");
    let e = error("type: task\nimage: i\ngroups:\n  - commands: ['echo ${{ groups[0].nodes[1].IP_ADDRESS }}']\n");
    assert!(e.contains("out of range, group 0 has 1"), "{e}");
    let e = error("type: task\nimage: i\nnodes: 2\ncommands: ['echo ${{ groups[0].node[0].IP_ADDRESS }}']\n");
    assert!(e.contains("commands[0]: illegal reference name: groups[0].node[0].IP_ADDRESS"), "{e}");
    let e = error("type: task\nimage: i\ncommands: ['echo ${{ groups[0].replicas[0].IP_ADDRESS }}']\n");
    assert!(e.contains("a task has nodes, not replicas"), "{e}");
    let e = error("type: task\nimage: i\nenv: ['HEAD=${{ groups[0].nodes[0].IP_ADDRESS }}']\ncommands: [x]\n");
    assert!(e.contains("env.HEAD: group address references are only substituted in commands"), "{e}");
    // A plain multi-node task is group 0 (dstack's rule), and `$${{` is an escape.
    task(
        "type: task\nimage: i\nnodes: 2\ncommands: ['echo ${{ groups[0].nodes[1].IP_ADDRESS }} $${{ groups[9].x }}']\n",
    );
}

#[test]
fn addresses_are_substituted_where_the_references_are() {
    let ips = vec![vec!["10.0.0.1".to_owned()], vec!["10.0.0.2".to_owned(), "10.0.0.3".to_owned()]];
    let s = "ray --address=${{ groups[0].nodes[0].IP_ADDRESS }}:6379 --peer ${{groups[1].nodes[1].IP_ADDRESS}} ${{ env.X }}";
    assert_eq!(substitute_node_addresses(s, &ips), "ray --address=10.0.0.1:6379 --peer 10.0.0.3 ${{ env.X }}");
    assert_eq!(substitute_node_addresses("no refs", &ips), "no refs");
    assert_eq!(
        substitute_node_addresses("$${{ groups[0].nodes[0].IP_ADDRESS }}", &ips),
        "$${{ groups[0].nodes[0].IP_ADDRESS }}"
    );
}

const PD: &str = "type: service
name: pd
image: sglang
port: 8000
replicas:
  - count: 1
    commands: [router]
    resources:
      cpu: 4
    router:
      type: sglang
  - name: prefill
    count: 1..4
    scaling:
      metric: rps
      target: 3
    commands: [prefill]
    resources:
      gpu: H200
  - replicas: 0..8
    scaling: {metric: rps, target: 2}
    commands: [decode]
";

#[test]
fn replica_groups_own_blocks_of_replica_numbers() {
    let s = service(PD);
    assert_eq!(s.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["0", "prefill", "2"]);
    assert_eq!(s.replicas, Range { min: Some(2), max: Some(13) }, "the sum of the groups");
    assert!(s.scaling.is_none());
    let firsts: Vec<u32> = s.group_blocks().iter().map(|(f, _)| *f).collect();
    assert_eq!(firsts, [0, 1, 5]);
    assert_eq!(s.group_of(0).map(|(i, _)| i), Some(0));
    assert_eq!(s.group_of(4).map(|(i, _)| i), Some(1));
    assert_eq!(s.group_of(12).map(|(i, _)| i), Some(2));
    assert_eq!(s.group_of(13), None);
    assert_eq!(s.router_group().map(|(i, g)| (i, g.router)), Some((0, Some(RouterType::Sglang))));
    assert_eq!(s.initial_group_replicas(), [1, 1, 0]);
    assert_eq!(s.initial_replica_numbers(), [0, 1]);
    let prefill = s.replica_task_of(2);
    assert_eq!(prefill.commands, ["prefill"]);
    assert_eq!(prefill.image.as_deref(), Some("sglang"), "the service's image");
    assert!(prefill.resources.gpu.is_some());
    assert_eq!(s.replica_task_of(0).resources.cpu.count, Range::exactly(4));
}

#[test]
fn a_service_whose_groups_all_scale_to_zero_starts_with_one_replica() {
    let s = service(
        "type: service\nimage: i\nport: 80\nreplicas:\n  - count: 0..2\n    scaling: {metric: rps, target: 1}\n  - count: 0..3\n    scaling: {metric: rps, target: 1}\n",
    );
    assert_eq!(s.initial_replica_numbers(), [0]);
    let s = service(
        "type: service\nport: 80\ngroups:\n  - count: 2\n    image: a\n  - count: 1\n    image: b\n    privileged: true\n",
    );
    assert_eq!(s.initial_replica_numbers(), [0, 1, 2]);
    let b = s.replica_task_of(2);
    assert_eq!((b.image.as_deref(), b.privileged), (Some("b"), true));
}

#[test]
fn replica_group_mistakes_are_refused_with_the_field() {
    let base = "type: service\nimage: i\nport: 80\n";
    let e = error(&format!("{base}scaling: {{metric: rps, target: 1}}\nreplicas:\n  - count: 1\n"));
    assert!(e.contains("scaling: not allowed with replica groups"), "{e}");
    let e = error(&format!("{base}replicas:\n  - count: 1..2\n"));
    assert!(e.contains("replicas[0].count: a range of replicas needs `scaling` in the group"), "{e}");
    let e = error(&format!("{base}replicas:\n  - count: 2\n    router: {{type: sglang}}\n"));
    assert!(e.contains("must have exactly 1 replica"), "{e}");
    let e = error(&format!(
        "{base}replicas:\n  - count: 1\n    router: {{}}\n  - count: 1\n    router: {{type: dynamo}}\n"
    ));
    assert!(e.contains("replicas[1].router: at most one replica group"), "{e}");
    let e = error(&format!("{base}replicas:\n  - count: 1\n    image: j\n"));
    assert!(e.contains("replicas[0].image: `image` is set for the service and for group \"0\""), "{e}");
    let e = error(&format!("{base}replicas:\n  - count: 1\n    python: 3.12\n"));
    assert!(e.contains("the service's `image` and group \"0\"'s `python` are mutually exclusive"), "{e}");
    let e = error("type: service\nport: 80\nreplicas:\n  - count: 1\n");
    assert!(e.contains("replicas[0].commands: replica group \"0\" has nothing to run"), "{e}");
    let e = error(&format!("{base}replicas:\n  - count: 1\n    replicas: 2\n"));
    assert!(e.contains("`count` and `replicas` are the same field"), "{e}");
    let e = error(&format!("{base}replicas:\n  - count: 1\n    docker: true\n    privileged: false\n"));
    assert!(e.contains("needs privileged mode"), "{e}");
    let e = error(&format!(
        "{base}replicas:\n  - count: 0..1\n    scaling: {{metric: rps, target: 1}}\n    commands: ['x ${{{{ groups[0].replicas[0].IP_ADDRESS }}}}']\n"
    ));
    assert!(e.contains("the group scales to zero"), "{e}");
    let e = error(&format!("{base}groups:\n  - count: 1\nreplicas:\n  - count: 1\n"));
    assert!(e.contains("are the same field: give one"), "{e}");
    let e = error(&format!("{base}replicas:\n  - count: 1000\n  - count: 1000\n"));
    assert!(e.contains("at most 1024 replicas in all groups together, found 2000"), "{e}");
}
