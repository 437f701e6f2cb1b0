//! Each limit as a user meets it: the file, line, column, field and the words; and the same check on
//! a typed configuration, as the coordinator runs it.

use proptest::prelude::*;

use super::*;
use crate::config::{ConfigError, parse};

fn err(text: &str) -> ConfigError {
    match parse(text, "big.dstack.yml") {
        Ok(c) => panic!("expected an error, parsed {c:?}"),
        Err(e) => e,
    }
}

fn ok(text: &str) -> Configuration {
    parse(text, "big.dstack.yml").unwrap_or_else(|e| panic!("{e}"))
}

/// (line, column, field, message).
fn at(e: &ConfigError) -> (usize, usize, &str, &str) {
    (e.line, e.column, e.field.as_str(), e.message.as_str())
}

const TASK: &str = "type: task\ncommands: [x]\n";
const SERVICE: &str = "type: service\nimage: x\nport: 80\n";

fn task(extra: &str) -> String {
    format!("{TASK}{extra}")
}

#[test]
fn nodes_are_at_most_1024() {
    let e = err(&task("nodes: 4294967295\n"));
    assert_eq!(at(&e), (3, 8, "nodes", "must be between 1 and 1024, found 4294967295"));
    assert_eq!(e.to_string(), "big.dstack.yml:3:8: nodes: must be between 1 and 1024, found 4294967295");
    assert_eq!(err(&task("nodes: 100000\n")).message, "must be between 1 and 1024, found 100000");
    assert!(matches!(ok(&task("nodes: 1024\n")), Configuration::Task(t) if t.nodes == 1024));
    assert_eq!(err(&task("nodes: 99999999999999999999\n")).field, "nodes");
}

#[test]
fn replicas_are_at_most_1024() {
    let e = err(&format!("{SERVICE}replicas: 2000\n"));
    assert_eq!(at(&e), (4, 11, "replicas", "at most 1024 replicas, found 2000"));
    let e = err(&format!("{SERVICE}replicas: 0..100000\nscaling: {{metric: rps, target: 5}}\n"));
    assert_eq!(at(&e), (4, 11, "replicas", "at most 1024 replicas, found 0..100000"));
    ok(&format!("{SERVICE}replicas: 0..1024\nscaling: {{metric: rps, target: 5}}\n"));
}

#[test]
fn commands_are_bounded_in_lines_and_bytes() {
    let line = format!("  - echo {}\n", "x".repeat(895));
    let e = err(&format!("type: task\nimage: x\ncommands:\n{}", line.repeat(1000)));
    assert_eq!((e.line, e.column, e.field.as_str()), (4, 3, "commands"));
    assert_eq!(
        e.message,
        "879.9 KiB in all, more than the limit of 64 KiB: put the commands in a script (in the image or the repo) and run that"
    );
    let e = err(&format!("type: task\nimage: x\ncommands:\n{}", "  - x\n".repeat(1025)));
    assert_eq!(e.message, "at most 1024 lines, found 1025");
    ok(&format!("type: task\nimage: x\ncommands:\n{}", "  - x\n".repeat(1024)));
    // A dev environment's `setup` and `init` run as one script.
    let e = err(&format!("type: dev-environment\nimage: x\ninit:\n{}", line.repeat(100)));
    assert_eq!(e.field, "init");
}

#[test]
fn env_is_bounded_in_entries_and_bytes() {
    let vars: String = (0..257).map(|i| format!("  - V{i}=1\n")).collect();
    let e = err(&task(&format!("env:\n{vars}")));
    assert_eq!(at(&e), (4, 3, "env", "at most 256 variables, found 257"));
    let e = err(&task(&format!("env:\n  A: 1\n  BIG: {}\n", "y".repeat(40_000))));
    assert_eq!((e.line, e.column, e.field.as_str()), (5, 3, "env[1]"));
    assert_eq!(e.message, "the value of `BIG` is 39.1 KiB, more than the limit of 32 KiB: put it in a file");
    let vars: String = (0..10).map(|i| format!("  - V{i}={}\n", "z".repeat(30_000))).collect();
    let e = err(&task(&format!("env:\n{vars}")));
    assert_eq!((e.field.as_str(), e.message.as_str()), ("env", "293.0 KiB in all, more than the limit of 256 KiB"));
}

#[test]
fn lists_of_ports_volumes_and_files_are_bounded() {
    let ports: String = (1..=65).map(|p| format!("  - {p}\n")).collect();
    assert_eq!(at(&err(&task(&format!("ports:\n{ports}")))), (4, 3, "ports", "at most 64 ports, found 65"));
    let volumes: String = (0..65).map(|i| format!("  - /d{i}:/d{i}\n")).collect();
    assert_eq!(err(&task(&format!("volumes:\n{volumes}"))).message, "at most 64 volumes, found 65");
    let files: String = (0..65).map(|i| format!("  - f{i}\n")).collect();
    assert_eq!(err(&task(&format!("files:\n{files}"))).message, "at most 64 files, found 65");
    let fleets: String = (0..65).map(|i| format!("  - f{i}\n")).collect();
    assert_eq!(err(&task(&format!("fleets:\n{fleets}"))).message, "at most 64 fleets, found 65");
}

#[test]
fn durations_are_at_most_a_year() {
    let e = err(&task("max_duration: 400d\n"));
    assert_eq!(at(&e), (3, 15, "max_duration", "must be at most 365d, found 400d"));
    assert_eq!(err(&task("stop_duration: 99999999999\n")).field, "stop_duration");
    let e = err(&task("retry:\n  duration: 9999w\n"));
    assert_eq!(at(&e), (4, 13, "retry.duration", "must be at most 365d, found 69993d"));
    assert_eq!(err(&task("idle_duration: 1000d\n")).field, "idle_duration");
    assert_eq!(err("type: dev-environment\nimage: x\ninactivity_duration: 53w\n").field, "inactivity_duration");
    let probe = "probes:\n  - type: http\n    interval: 400d\n";
    assert_eq!(err(&format!("{SERVICE}{probe}")).field, "probes[0].interval");
    ok(&task("max_duration: 365d\nretry:\n  duration: 52w\n"));
}

#[test]
fn resources_are_bounded() {
    let e = err(&task("resources:\n  gpu: A100:100\n"));
    assert_eq!(at(&e), (4, 8, "resources.gpu.count", "at most 64 GPUs, found 100"));
    let e = err(&task("resources:\n  gpu: {name: A100, count: {min: 1, max: 65}}\n"));
    assert_eq!(at(&e), (4, 28, "resources.gpu.count", "at most 64 GPUs, found 1..65"));
    let e = err(&task("resources:\n  memory: 100TB..\n"));
    assert_eq!(at(&e), (4, 11, "resources.memory", "must be at most 64TB, found 100TB.."));
    assert_eq!(err(&task("resources:\n  shm_size: 65TB\n")).field, "resources.shm_size");
    assert_eq!(err(&task("resources:\n  disk: 2000TB\n")).message, "must be at most 1024TB, found 2000TB");
    assert_eq!(err(&task("resources:\n  cpu: 5000..\n")).message, "at most 4096 CPUs, found 5000..");
    ok(&task("resources:\n  gpu: H100:80GB:8\n  memory: 2TB\n  disk: 100TB\n  cpu: 256\n"));
}

#[test]
fn service_numbers_are_bounded() {
    let scaled = "replicas: 0..4\nscaling:\n  metric: rps\n  target: 10000000\n";
    let e = err(&format!("{SERVICE}{scaled}"));
    assert_eq!(
        at(&e),
        (7, 11, "scaling.target", "must be more than 0 and at most 1000000 requests a second, found 10000000")
    );
    let probes: String = (0..17).map(|i| format!("  - {{type: http, url: /p{i}}}\n")).collect();
    assert_eq!(err(&format!("{SERVICE}probes:\n{probes}")).message, "at most 16 probes, found 17");
    let e = err(&format!("{SERVICE}probes:\n  - {{type: http, ready_after: 5000}}\n"));
    assert_eq!(
        (e.field.as_str(), e.message.as_str()),
        ("probes[0].ready_after", "must be between 1 and 1000, found 5000")
    );
    let e = err(&format!("{SERVICE}rate_limits:\n  - {{rps: 5, burst: 9999999999}}\n"));
    assert_eq!(e.message, "must be between 0 and 1000000, found 9999999999");
}

#[test]
fn fleet_numbers_are_bounded() {
    let e = err("type: fleet\nname: ff\nnodes: 5000\n");
    assert_eq!(at(&e), (3, 8, "nodes", "must be between 0 and 1024, found 5000"));
    assert_eq!(err("type: fleet\nname: ff\nnodes: 0..5000\n").field, "nodes.max");
    let e = err("type: fleet\nname: ff\nblocks: 200\n");
    assert_eq!(at(&e), (3, 9, "blocks", "must be between 1 and 128, found 200"));
    assert_eq!(err("type: fleet\nmax_price: 1000000\n").field, "max_price");
}

#[test]
fn long_strings_are_refused() {
    let e = err(&task(&format!("image: {}\n", "a".repeat(5000))));
    assert_eq!(at(&e), (3, 8, "image", "4.9 KiB long, more than the limit of 4 KiB"));
}

fn parsed_task(text: &str) -> TaskConfig {
    match ok(text) {
        Configuration::Task(t) => t,
        other => panic!("not a task: {other:?}"),
    }
}

use crate::config::TaskConfig;

#[test]
fn a_typed_spec_meets_the_same_limits_with_the_same_words() {
    // What the coordinator receives from a client that skipped the CLI's parser.
    let mut t = parsed_task(TASK);
    t.nodes = u32::MAX;
    let e = Configuration::Task(t.clone()).check_limits().expect_err("refused");
    assert_eq!(e.to_string(), "nodes: must be between 1 and 1024, found 4294967295");
    assert_eq!(e.message, err(&task("nodes: 4294967295\n")).message, "the parser says the same");
    t.nodes = 0;
    assert_eq!(Configuration::Task(t.clone()).check_limits().expect_err("refused").field, "nodes");
    t.nodes = 2;
    t.priority = Some(200);
    assert_eq!(
        Configuration::Task(t.clone()).check_limits().expect_err("refused").to_string(),
        "priority: must be between 0 and 100, found 200"
    );
    t.priority = None;
    t.name = Some("../../nodes/x/cordon".into());
    let e = Configuration::Task(t).check_limits().expect_err("refused");
    assert_eq!(e.field, "name");
    assert!(e.message.contains("is not a valid name"), "{e}");

    let Configuration::Service(mut s) = ok(SERVICE) else { panic!("a service") };
    s.replicas = Range::exactly(u32::MAX);
    let e = Configuration::Service(s).check_limits().expect_err("refused");
    assert_eq!(e.to_string(), "replicas: at most 1024 replicas, found 4294967295");
}

#[test]
fn a_utilization_window_is_5m_to_a_year_in_the_file_and_over_the_api() {
    let e = err(&task("utilization_policy:\n  min_gpu_utilization: 10\n  time_window: 4m\n"));
    assert_eq!((e.field.as_str(), e.message.as_str()), ("utilization_policy.time_window", "must be at least 5m"));
    let mut t = parsed_task(&task("utilization_policy:\n  min_gpu_utilization: 10\n  time_window: 5m\n"));
    Configuration::Task(t.clone()).check_limits().expect("5m is the least");
    // What a client that skipped the parser may send.
    let policy = t.utilization_policy.as_mut().expect("parsed");
    policy.time_window_secs = 60;
    let e = Configuration::Task(t.clone()).check_limits().expect_err("refused");
    assert_eq!(e.to_string(), "utilization_policy.time_window: must be at least 5m");
    t.utilization_policy.as_mut().expect("parsed").time_window_secs = u64::MAX;
    let e = Configuration::Task(t.clone()).check_limits().expect_err("refused");
    assert_eq!(e.field, "utilization_policy.time_window");
    t.utilization_policy.as_mut().expect("parsed").min_gpu_utilization = 101;
    let e = Configuration::Task(t).check_limits().expect_err("refused");
    assert_eq!(e.field, "utilization_policy.min_gpu_utilization");
}

proptest! {
    /// Any number for `nodes`: a task with that many nodes when it is within the limit, else an
    /// error naming `nodes`; never a panic.
    #[test]
    fn any_u64_for_nodes(n in prop_oneof![any::<u64>(), 0u64..2048]) {
        match parse(&task(&format!("nodes: {n}\n")), "p.yml") {
            Ok(Configuration::Task(t)) => prop_assert!((1..=1024).contains(&n) && u64::from(t.nodes) == n),
            Ok(other) => prop_assert!(false, "not a task: {:?}", other),
            Err(e) => {
                prop_assert!(!(1..=1024).contains(&n), "{}", e);
                prop_assert_eq!(e.field, "nodes");
            }
        }
    }

    /// Any number for `replicas`, fixed or as the top of a range.
    #[test]
    fn any_u64_for_replicas(n in prop_oneof![any::<u64>(), 0u64..2048], ranged in any::<bool>()) {
        let text = if ranged {
            format!("{SERVICE}replicas: 0..{n}\nscaling: {{metric: rps, target: 1}}\n")
        } else {
            format!("{SERVICE}replicas: {n}\n")
        };
        match parse(&text, "p.yml") {
            Ok(Configuration::Service(s)) => prop_assert!(n <= 1024 && s.replicas.max == Some(n as u32)),
            Ok(other) => prop_assert!(false, "not a service: {:?}", other),
            Err(e) => {
                prop_assert!(n > 1024 || (ranged && n == 0), "{}", e);
                prop_assert_eq!(e.field, "replicas");
            }
        }
    }

    /// The typed check on any `nodes` and `replicas` the API could carry.
    #[test]
    fn typed_counts_are_checked(nodes in any::<u32>(), min in any::<u32>(), max in any::<u32>()) {
        let mut t = parsed_task(TASK);
        t.nodes = nodes;
        let r = Configuration::Task(t).check_limits();
        prop_assert_eq!(r.is_ok(), (1..=MAX_NODES).contains(&nodes));
        let Configuration::Service(mut s) = ok(SERVICE) else { panic!("a service") };
        s.replicas = Range { min: Some(min), max: Some(max) };
        let r = Configuration::Service(s).check_limits();
        prop_assert_eq!(r.is_ok(), min <= max && max <= MAX_REPLICAS);
        if let Err(e) = r {
            prop_assert_eq!(e.field, "replicas");
        }
    }
}
