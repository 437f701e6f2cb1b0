//! The scheduler's pass as [`Scheduler::plan`] decides it: no store, no nodes, no clock.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;
use corral_proto::inventory::{GpuInfo, HostInventory};
use corral_proto::resources::{GpuVendor, Memory};

fn task(yaml: &str) -> TaskConfig {
    let text = format!("type: task\nimage: busybox\ncommands: [\"true\"]\n{yaml}");
    match corral_proto::config::parse(&text, "t.dstack.yml").expect("valid") {
        Configuration::Task(t) => t,
        other => panic!("not a task: {other:?}"),
    }
}

fn gpus(n: u32) -> String {
    if n == 0 { String::new() } else { format!("resources:\n  gpu: {n}\n") }
}

fn host(gpus: u32) -> HostInventory {
    HostInventory {
        hostname: "h".into(),
        cpu_cores: 64,
        arch: "x86_64".into(),
        memory: Memory::gb(512),
        disk: Memory::gb(1000),
        gpus: (0..gpus)
            .map(|i| GpuInfo {
                index: i,
                vendor: GpuVendor::Nvidia,
                name: "NVIDIA A100-SXM4-80GB".into(),
                memory: Memory::gb(80),
                uuid: format!("GPU-{i}"),
                pci_bus_id: String::new(),
            })
            .collect(),
        ..Default::default()
    }
}

fn add_node(s: &mut Scheduler, name: &str, gpus: u32) -> NodeId {
    let id = NodeId(name.to_owned());
    s.index.upsert(&id, name, Some("rack".to_owned()), true, 1, host(gpus));
    s.index.set_connected(&id, true);
    id
}

/// Queues run `run` (its jobs `<run>-<rank>`) as a submission would.
fn queue(s: &mut Scheduler, run: &str, priority: u8, submitted_ms: i64, t: TaskConfig) -> QueueKey {
    let key = (Reverse(priority), submitted_ms, RunId(run.to_owned()), 0);
    let mut q = Queued::new(t, "main", run);
    q.jobs = (0..q.request.nodes).map(|rank| Some(JobId(format!("{run}-{rank}")))).collect();
    s.queue.insert(key.clone(), q);
    s.fresh.push(key.clone());
    key
}

fn plan(s: &mut Scheduler, now_ms: i64) -> Plan {
    s.plan(now_ms, tokio::time::Instant::now(), &HashMap::new())
}

fn placed_runs(p: &Plan) -> Vec<&str> {
    p.placed.iter().map(|p| p.key.2.as_str()).collect()
}

#[test]
fn a_run_that_does_not_fit_never_blocks_smaller_ones_behind_it() {
    let mut s = Scheduler::new();
    add_node(&mut s, "a", 2);
    queue(&mut s, "small", 0, 1, task(&gpus(1)));
    queue(&mut s, "huge", 0, 2, task(&gpus(8)));
    queue(&mut s, "later", 0, 3, task(&gpus(1)));
    let p = plan(&mut s, 10);
    assert!(p.full);
    assert_eq!(placed_runs(&p), ["small", "later"]);
    assert_eq!(p.waits.len(), 1);
    assert_eq!(p.waits[0].0, JobId("huge-0".into()));
    assert!(p.waits[0].1.contains("GPU"), "{}", p.waits[0].1);
    // The placed runs reserved both GPUs, each its own.
    let mut used: Vec<u32> = p.placed.iter().flat_map(|p| p.allocs[0].1.gpu_indices.clone()).collect();
    used.sort_unstable();
    assert_eq!(used, [0, 1]);

    // Nothing changed: the next pass looks at nothing new and writes no reason again.
    let again = plan(&mut s, 20);
    assert!(!again.full);
    assert!(again.placed.is_empty() && again.waits.is_empty());
}

#[test]
fn a_higher_priority_goes_first_however_late_it_came() {
    let mut s = Scheduler::new();
    add_node(&mut s, "a", 1);
    queue(&mut s, "old", 0, 1, task(&gpus(1)));
    queue(&mut s, "urgent", 9, 5, task(&format!("priority: 9\n{}", gpus(1))));
    assert_eq!(placed_runs(&plan(&mut s, 10)), ["urgent"]);
}

#[test]
fn a_gang_goes_whole_onto_distinct_nodes_or_waits_whole() {
    let mut s = Scheduler::new();
    add_node(&mut s, "a", 1);
    let key = queue(&mut s, "pair", 0, 1, task(&format!("nodes: 2\n{}", gpus(1))));
    let p = plan(&mut s, 10);
    assert!(p.placed.is_empty());
    assert_eq!(p.waits.iter().map(|w| w.0.as_str()).collect::<Vec<_>>(), ["pair-0", "pair-1"]);

    add_node(&mut s, "b", 1);
    // A rank still ending from an earlier attempt: the gang is not placed without it.
    s.queue.get_mut(&key).expect("queued").jobs[1] = None;
    assert!(plan(&mut s, 20).placed.is_empty());
    s.queue.get_mut(&key).expect("queued").jobs[1] = Some(JobId("pair-1".into()));
    s.fresh.push(key.clone()); // as `enqueue_job` does
    let p = plan(&mut s, 30);
    let nodes: HashSet<&str> = p.placed[0].allocs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes, HashSet::from(["a", "b"]));
    assert_eq!(p.placed[0].jobs, [JobId("pair-0".into()), JobId("pair-1".into())]);
}

#[test]
fn a_retry_waits_for_its_backoff_and_a_capacity_window_runs_out() {
    let mut s = Scheduler::new();
    add_node(&mut s, "a", 1);
    let key = queue(&mut s, "retry", 0, 1, task(&gpus(1)));
    s.queue.get_mut(&key).expect("queued").not_before_ms = Some(5_000);
    assert!(plan(&mut s, 4_999).placed.is_empty());
    // Past its backoff (a full pass: every `PERIOD`, or when the index changed).
    s.full_pass = None;
    assert_eq!(placed_runs(&plan(&mut s, 5_000)), ["retry"]);

    let mut s = Scheduler::new();
    add_node(&mut s, "a", 0);
    let retry = "retry:\n  on_events: [no-capacity]\n  duration: 10s\n";
    queue(&mut s, "hopeful", 0, 1_000, task(&format!("{retry}{}", gpus(1))));
    let p = plan(&mut s, 11_000);
    assert!(p.expired.is_empty(), "within its window, it waits");
    assert_eq!(p.waits.len(), 1);
    s.full_pass = None;
    let p = plan(&mut s, 11_001);
    assert_eq!(p.expired.len(), 1);
    assert!(p.expired[0].1.starts_with("no capacity within the retry duration: "), "{}", p.expired[0].1);
    let ended = s.take_expired(&p.expired);
    assert_eq!(ended, [(JobId("hopeful-0".into()), p.expired[0].1.clone())]);
    assert!(s.queue.is_empty(), "an expired run leaves the queue");
}

#[test]
fn a_pinned_replica_goes_on_its_router_node_or_waits_saying_why() {
    let mut s = Scheduler::new();
    add_node(&mut s, "a", 1);
    let router = add_node(&mut s, "b", 1);
    let key = queue(&mut s, "worker", 0, 1, task(&gpus(1)));
    let waiting = HashMap::from([(key.clone(), Err("waiting for the service's router replica".to_owned()))]);
    let p = s.plan(10, tokio::time::Instant::now(), &waiting);
    assert!(p.placed.is_empty());
    assert_eq!(p.waits[0].1, "waiting for the service's router replica");
    let pinned = HashMap::from([(key, Ok(router.clone()))]);
    s.full_pass = None;
    let p = s.plan(20, tokio::time::Instant::now(), &pinned);
    assert_eq!(p.placed[0].allocs[0].0, router);
}

#[test]
fn a_pass_places_at_most_a_chunk_and_asks_for_another() {
    let mut s = Scheduler::new();
    for n in 0..70 {
        add_node(&mut s, &format!("n{n}"), 0); // 64 one-CPU jobs each
    }
    for i in 0..JOBS_PER_PASS + 3 {
        queue(&mut s, &format!("r{i:05}"), 0, i as i64, task(""));
    }
    let p = plan(&mut s, 0);
    assert_eq!(p.placed.len(), JOBS_PER_PASS);
    assert!(p.more);
    assert!(s.full_pass.is_none(), "the next pass looks at the whole queue");
}

proptest! {
    /// Whatever the nodes and the queue: no GPU is given twice, no node more than it has, a gang's
    /// ranks land on distinct nodes, every whole run is placed or waits (and says why), and of runs
    /// asking the same, a later one is never placed while an earlier one waits.
    #[test]
    fn a_plan_never_overcommits_and_leaves_no_run_unexplained(
        nodes in prop::collection::vec(0u32..9, 1..6),
        runs in prop::collection::vec((0u32..5, 1u32..4, 0u8..3), 1..24),
    ) {
        let mut s = Scheduler::new();
        let mut capacity = HashMap::new();
        for (i, g) in nodes.iter().enumerate() {
            capacity.insert(add_node(&mut s, &format!("n{i}"), *g), *g);
        }
        let mut asks = HashMap::new();
        for (i, (g, n, priority)) in runs.iter().enumerate() {
            let yaml = format!("priority: {priority}\nnodes: {n}\n{}", gpus(*g));
            let key = queue(&mut s, &format!("r{i:02}"), *priority, i as i64, task(&yaml));
            asks.insert(key, (*g, *n));
        }
        let p = plan(&mut s, 0);
        let mut used: HashMap<&NodeId, HashSet<u32>> = HashMap::new();
        for placed in &p.placed {
            let (g, n) = asks[&placed.key];
            prop_assert_eq!(placed.allocs.len(), n as usize);
            let distinct: HashSet<&NodeId> = placed.allocs.iter().map(|(node, _)| node).collect();
            prop_assert_eq!(distinct.len(), n as usize);
            for (node, a) in &placed.allocs {
                prop_assert_eq!(a.gpu_indices.len(), g as usize);
                for i in &a.gpu_indices {
                    prop_assert!(*i < capacity[node]);
                    prop_assert!(used.entry(node).or_default().insert(*i), "GPU {} of {} given twice", i, node);
                }
            }
        }
        let placed: HashSet<&RunId> = p.placed.iter().map(|p| &p.key.2).collect();
        let waiting: HashSet<String> = p.waits.iter().map(|(j, _)| j.as_str().rsplit_once('-').expect("run-rank").0.to_owned()).collect();
        for key in asks.keys() {
            prop_assert!(placed.contains(&key.2) != waiting.contains(key.2.as_str()), "run {} placed and waiting, or neither", key.2);
        }
        for (a, ask_a) in &asks {
            for (b, ask_b) in &asks {
                if ask_a == ask_b && a < b && !placed.contains(&a.2) {
                    prop_assert!(!placed.contains(&b.2), "{} placed before {}, which asks the same", b.2, a.2);
                }
            }
        }
    }
}

/// A job's end gives its room back once, however it reaches the scheduler: a release sent before
/// a rebuild from the store that may have read the end is not applied again.
#[test]
fn a_release_gives_room_back_once_and_a_stale_one_not_at_all() {
    let mut s = Scheduler::new();
    let node = add_node(&mut s, "a", 1);
    let first = queue(&mut s, "first", 0, 1, task(&gpus(1)));
    let p = plan(&mut s, 10);
    assert_eq!(placed_runs(&p), ["first"]);
    let allocation = p.placed[0].allocs[0].1.clone();
    s.queue.remove(&first);
    queue(&mut s, "second", 0, 2, task(&gpus(1)));
    assert!(plan(&mut s, 20).placed.is_empty(), "the GPU is taken");

    // Sent at epoch 0, applied after a rebuild (epoch 1): the rebuild already counted it.
    let stale = Command::Release { node: node.clone(), allocation: allocation.clone(), epoch: 0 };
    assert!(s.apply(vec![stale], 1).is_empty());
    assert!(plan(&mut s, 30).placed.is_empty(), "a stale release freed the GPU");

    let current = Command::Release { node, allocation, epoch: 1 };
    s.apply(vec![current], 1);
    assert_eq!(placed_runs(&plan(&mut s, 40)), ["second"]);
}

/// Commands apply in the order they were sent: a run queued and then stopped is not read again.
#[test]
fn a_run_queued_then_dequeued_in_one_inbox_is_not_queued() {
    let mut s = Scheduler::new();
    queue(&mut s, "old", 0, 1, task(""));
    let (a, b) = (RunId("new".into()), RunId("old".into()));
    let to_read = s.apply(vec![Command::Enqueue(a.clone()), Command::Dequeue(b), Command::Enqueue(a.clone())], 0);
    assert_eq!(to_read, [a.clone(), a.clone()]);
    assert!(s.queue.is_empty(), "the dequeued run is gone");
    let to_read = s.apply(vec![Command::Enqueue(a.clone()), Command::Dequeue(a)], 0);
    assert!(to_read.is_empty());
}
