use proptest::prelude::*;

use super::*;
use corral_proto::inventory::GpuInfo;
use corral_proto::resources::{CpuSpec, GpuSpec, GpuVendor, Range};

fn host(gpus: &[(&str, u64)], cpus: u32) -> HostInventory {
    HostInventory {
        hostname: "h".into(),
        cpu_cores: cpus,
        arch: "x86_64".into(),
        memory: Memory::gb(512),
        disk: Memory::gb(1000),
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(i, (name, gb))| GpuInfo {
                index: i as u32,
                vendor: GpuVendor::Nvidia,
                name: (*name).to_owned(),
                memory: Memory::gb(*gb),
                uuid: format!("GPU-{i}"),
                pci_bus_id: String::new(),
            })
            .collect(),
        ..Default::default()
    }
}

fn gpu_req(names: &[&str], count: u32) -> Request {
    Request {
        resources: ResourcesSpec {
            cpu: CpuSpec { arch: None, count: Range::at_least(1) },
            gpu: Some(GpuSpec {
                names: names.iter().map(|s| (*s).to_owned()).collect(),
                count: Range::exactly(count),
                ..Default::default()
            }),
            ..Default::default()
        },
        nodes: 1,
        fleets: vec![],
        instances: vec![],
        pinned: vec![],
        ranks: vec![],
        project: None,
    }
}

fn node(ix: &mut Index, name: &str, inv: HostInventory, fleet: Option<&str>, cluster: bool) -> NodeId {
    let id = NodeId(name.to_owned());
    ix.upsert(&id, name, fleet.map(str::to_owned), cluster, 1, inv);
    ix.set_connected(&id, true);
    id
}

const A100: (&str, u64) = ("NVIDIA A100-SXM4-80GB", 80);
const H100: (&str, u64) = ("NVIDIA H100 80GB HBM3", 80);

#[test]
fn packs_the_fullest_node_first() {
    let mut ix = Index::new();
    let a = node(&mut ix, "a", host(&[A100; 8], 64), None, false);
    let b = node(&mut ix, "b", host(&[A100; 8], 64), None, false);
    let first = ix.place(&gpu_req(&[], 2)).expect("fits");
    let second = ix.place(&gpu_req(&[], 2)).expect("fits");
    assert_eq!(first[0].0, second[0].0, "the partly used node is filled before a fresh one");
    // A 8-GPU job still finds a whole node.
    let big = ix.place(&gpu_req(&[], 8)).expect("fits");
    assert_ne!(big[0].0, first[0].0);
    assert!([a, b].contains(&big[0].0));
}

#[test]
fn names_and_counts_are_honoured() {
    let mut ix = Index::new();
    node(&mut ix, "a100", host(&[A100; 2], 16), None, false);
    let h = node(&mut ix, "h100", host(&[H100; 4], 16), None, false);
    let p = ix.place(&gpu_req(&["H100"], 3)).expect("fits");
    assert_eq!(p[0].0, h);
    assert_eq!(p[0].1.gpu_indices.len(), 3);
    let why = ix.place(&gpu_req(&["H100"], 2)).expect_err("one H100 left");
    assert!(why.contains("1 node(s) have them busy"), "{why}");
    let why = ix.place(&gpu_req(&["MI300X"], 1)).expect_err("none");
    assert!(why.contains("no node has"), "{why}");
}

#[test]
fn gangs_are_all_or_nothing_within_one_cluster_fleet() {
    let mut ix = Index::new();
    node(&mut ix, "a", host(&[A100; 8], 64), Some("rack"), true);
    node(&mut ix, "b", host(&[A100; 8], 64), Some("rack"), true);
    node(&mut ix, "c", host(&[A100; 8], 64), Some("loose"), false);
    let mut req = gpu_req(&[], 8);
    req.nodes = 2;
    let p = ix.place(&req).expect("two rack nodes");
    assert_eq!(p.len(), 2);
    assert_ne!(p[0].0, p[1].0);
    // A second gang does not fit: nothing is reserved for it.
    let why = ix.place(&req).expect_err("rack is full");
    assert!(!why.is_empty());
    let c = ix.node(&NodeId::from("c")).expect("c");
    assert!(c.used_gpus().is_empty(), "a failed gang reserves nothing");
}

#[test]
fn blocks_split_a_node_into_equal_shares() {
    let mut ix = Index::new();
    let id = NodeId::from("big");
    ix.upsert(&id, "big", Some("shared".into()), false, 4, host(&[A100; 8], 64));
    ix.set_connected(&id, true);
    // One GPU asked, one block given: 2 GPUs, a quarter of the CPUs and memory.
    let p = ix.place(&gpu_req(&[], 1)).expect("fits");
    assert_eq!(p[0].1.gpu_indices.len(), 2);
    assert_eq!(p[0].1.cpus, 16);
    assert_eq!(p[0].1.memory, Memory::gb(128));
    // Three GPUs take two blocks.
    assert_eq!(ix.place(&gpu_req(&[], 3)).expect("fits")[0].1.gpu_indices.len(), 4);
    assert!(ix.place(&gpu_req(&[], 1)).is_ok());
    assert!(ix.place(&gpu_req(&[], 1)).is_err(), "four blocks are taken");
}

#[test]
fn offline_and_cordoned_nodes_take_nothing() {
    let mut ix = Index::new();
    let a = node(&mut ix, "a", host(&[A100; 1], 8), None, false);
    ix.set_cordoned(&a, true);
    assert!(ix.place(&gpu_req(&[], 1)).expect_err("cordoned").contains("cordoned"));
    ix.set_cordoned(&a, false);
    ix.set_connected(&a, false);
    assert!(ix.place(&gpu_req(&[], 1)).expect_err("offline").contains("offline"));
    ix.set_connected(&a, true);
    assert!(ix.place(&gpu_req(&[], 1)).is_ok());
}

proptest! {
    /// Whatever is placed and released, in whatever order: no GPU is ever given to two live jobs,
    /// and a request never waits while some node could take it.
    #[test]
    fn no_double_booking_and_no_needless_waiting(
        hosts in proptest::collection::vec((0usize..=8, 1u32..=32), 1..6),
        ops in proptest::collection::vec((0u32..=4, any::<bool>(), 0usize..100), 1..80),
    ) {
        let mut ix = Index::new();
        for (n, (gpus, cpus)) in hosts.iter().enumerate() {
            node(&mut ix, &format!("n{n}"), host(&vec![A100; *gpus], *cpus), None, false);
        }
        let mut live: Vec<(NodeId, Allocation)> = Vec::new();
        for (gpus, release, pick) in ops {
            if release && !live.is_empty() {
                let (id, a) = live.remove(pick % live.len());
                ix.release(&id, &a);
                continue;
            }
            let req = gpu_req(&[], gpus);
            let req = if gpus == 0 { Request { resources: ResourcesSpec::default(), ..req } } else { req };
            match ix.place(&req) {
                Ok(p) => live.extend(p),
                Err(_) => {
                    // Waiting is only allowed when no node has room, checked the slow way.
                    for s in ix.nodes() {
                        let used: Vec<u32> = live.iter().filter(|(id, _)| id == &s.id).flat_map(|(_, a)| a.gpu_indices.clone()).collect();
                        let cpus: u32 = live.iter().filter(|(id, _)| id == &s.id).map(|(_, a)| a.cpus).sum();
                        prop_assert!(fit(&req.resources, &s.inventory, cpus, Memory(0), &used).is_err(),
                            "{} could take {:?} but the request waits", s.name, req.resources.gpu);
                    }
                }
            }
            for s in ix.nodes() {
                let mut seen: Vec<u32> = live.iter().filter(|(id, _)| id == &s.id).flat_map(|(_, a)| a.gpu_indices.clone()).collect();
                let n = seen.len();
                seen.sort_unstable();
                seen.dedup();
                prop_assert_eq!(seen.len(), n, "a GPU of {} is double-booked", &s.name);
                prop_assert!(seen.iter().all(|g| (*g as usize) < s.inventory.gpus.len()));
            }
        }
    }
}

fn tpu_host(chips: usize, pci: &str) -> HostInventory {
    HostInventory {
        tpus: (0..chips)
            .map(|i| corral_proto::inventory::TpuInfo {
                device: format!("/dev/vfio/{i}"),
                pci_device_id: Some(pci.to_owned()),
            })
            .collect(),
        ..host(&[], 96)
    }
}

fn tpu_req(name: &str) -> Request {
    let gpu = GpuSpec { vendor: Some(GpuVendor::Google), names: vec![name.to_owned()], ..Default::default() };
    Request { resources: ResourcesSpec { gpu: Some(gpu), ..Default::default() }, ..gpu_req(&[], 0) }
}

#[test]
fn tpu_jobs_go_where_the_chips_are_and_never_share_one() {
    let mut ix = Index::new();
    node(&mut ix, "gpu-box", host(&[A100; 8], 64), None, false);
    let v4 = node(&mut ix, "v4", tpu_host(4, "0x005e"), None, false);
    let v5e = node(&mut ix, "v5e", tpu_host(8, "0x0063"), None, false);
    // The generation picks the node; a TPU job takes chips, not GPUs.
    let p = ix.place(&tpu_req("v5litepod-4")).expect("fits");
    assert_eq!(p[0].0, v5e);
    assert_eq!(p[0].1.tpu_chips(), vec![0, 1, 2, 3]);
    assert!(p[0].1.gpus().is_empty());
    let q = ix.place(&tpu_req("tpu-v5e-4")).expect("the other half");
    assert_eq!((q[0].0.clone(), q[0].1.tpu_chips()), (v5e.clone(), vec![4, 5, 6, 7]));
    // Every v5e chip is held: the next waits, and says why.
    let why = ix.place(&tpu_req("v5litepod-1")).expect_err("busy");
    assert!(why.contains("TPU v5litepod-1") && why.contains("busy"), "{why}");
    // v3-8 is four chips of v2/v3: none here; v4-8 is four v4 chips.
    assert!(ix.place(&tpu_req("v3-8")).expect_err("no v3").contains("no node has TPU v3-8"));
    let r = ix.place(&tpu_req("v4-8")).expect("the v4 node");
    assert_eq!((r[0].0.clone(), r[0].1.tpu_chips().len()), (v4, 4));
    // Released chips are placed again; the GPU node's GPUs were never touched.
    ix.release(&v5e, &p[0].1);
    assert_eq!(ix.place(&tpu_req("v5litepod-2")).expect("freed")[0].1.tpu_chips(), vec![0, 1]);
    let gpus = ix.node(&NodeId::from("gpu-box")).expect("node").used_gpus().len();
    assert_eq!(gpus, 0);
    assert!(ix.place(&gpu_req(&["A100"], 8)).is_ok(), "GPU jobs still see all 8 GPUs");
}

#[test]
fn instances_restrict_a_run_to_the_named_nodes() {
    use corral_proto::config::{FleetRef, InstanceSelector};
    let mut ix = Index::new();
    let a = node(&mut ix, "a", host(&[], 8), Some("rack"), false);
    let b = node(&mut ix, "b", host(&[], 8), Some("rack"), false);
    ix.set_profile(&b, NodeProfile { instance: Some(1), hostnames: vec!["10.0.0.2".into()], ..Default::default() });
    ix.set_profile(&a, NodeProfile { instance: Some(0), hostnames: vec!["10.0.0.1".into()], ..Default::default() });
    let only = |sel: InstanceSelector| Request { instances: vec![sel], ..gpu_req(&[], 0) };
    for sel in [
        InstanceSelector::Name("b".into()),
        InstanceSelector::Name("rack-1".into()),
        InstanceSelector::Hostname("10.0.0.2".into()),
        InstanceSelector::FleetInstance { fleet: FleetRef { project: None, name: "rack".into() }, instance: 1 },
    ] {
        for _ in 0..3 {
            let p = ix.place(&only(sel.clone())).expect("fits on b");
            assert_eq!(p[0].0, b, "{sel:?}");
            ix.release(&p[0].0, &p[0].1);
        }
    }
    let why = ix.place(&only(InstanceSelector::Name("c".into()))).expect_err("no such node");
    assert_eq!(why, "no nodes named in `instances` (c) (see `corral node list`)");
    ix.set_cordoned(&b, true);
    let why = ix.place(&only(InstanceSelector::Name("b".into()))).expect_err("cordoned");
    assert!(why.starts_with("no node named in `instances` (b) is ready"), "{why}");
}

#[test]
fn refused_nodes_take_nothing_and_say_why() {
    let mut ix = Index::new();
    let a = node(&mut ix, "a", host(&[], 8), Some("rack"), false);
    ix.set_profile(
        &a,
        NodeProfile { refused: Some("cpu: the fleet wants 16.., the host has 8".into()), ..Default::default() },
    );
    let why = ix.place(&gpu_req(&[], 0)).expect_err("refused");
    assert!(why.contains("1 refused by its fleet (e.g. a: cpu: the fleet wants 16.., the host has 8)"), "{why}");
    ix.set_profile(&a, NodeProfile::default());
    assert!(ix.place(&gpu_req(&[], 0)).is_ok(), "taken again once its fleet fits it");
}

#[test]
fn cpu_blocks_let_jobs_share_a_host_without_gpus() {
    let mut ix = Index::new();
    let id = NodeId::from("cpu");
    ix.upsert(&id, "cpu", Some("shared".into()), false, 2, host(&[], 8));
    ix.set_connected(&id, true);
    let first = ix.place(&gpu_req(&[], 0)).expect("one block");
    assert_eq!((first[0].1.cpus, first[0].1.memory), (4, Memory::gb(256)));
    assert!(ix.place(&gpu_req(&[], 0)).is_ok(), "the second block");
    assert!(ix.place(&gpu_req(&[], 0)).is_err(), "both blocks are taken");
}

/// A gang of node groups: a CPU head and GPU workers, each rank with its own resources.
fn grouped(head: ResourcesSpec, workers: u32, gpus: u32) -> Request {
    let worker = gpu_req(&[], gpus).resources;
    let mut ranks = vec![head.clone()];
    ranks.extend(std::iter::repeat_n(worker, workers as usize));
    Request { resources: head, nodes: 1 + workers, ranks, ..gpu_req(&[], 0) }
}

#[test]
fn each_rank_of_a_grouped_gang_gets_its_own_resources() {
    let mut ix = Index::new();
    let cpu = node(&mut ix, "cpu", host(&[], 8), Some("rack"), true);
    let g1 = node(&mut ix, "g1", host(&[A100; 4], 32), Some("rack"), true);
    let g2 = node(&mut ix, "g2", host(&[A100; 4], 32), Some("rack"), true);
    let head = ResourcesSpec { cpu: CpuSpec { arch: None, count: Range::exactly(2) }, ..Default::default() };
    let p = ix.place(&grouped(head.clone(), 2, 4)).expect("fits");
    assert_eq!(p.len(), 3, "in rank order");
    assert_eq!((&p[0].0, p[0].1.cpus, p[0].1.gpu_indices.len()), (&cpu, 2, 0), "the head: 2 CPUs, no GPU");
    let workers: BTreeSet<&NodeId> = [&p[1].0, &p[2].0].into_iter().collect();
    assert_eq!(workers, BTreeSet::from([&g1, &g2]), "each worker on a GPU node");
    assert!(p[1..].iter().all(|(_, a)| a.gpu_indices.len() == 4));
}

#[test]
fn a_gpu_rank_is_not_left_without_the_gpu_node_a_cpu_rank_could_have_taken() {
    // Only GPU nodes: the CPU head must not take the node a worker needs whole.
    let mut ix = Index::new();
    node(&mut ix, "g1", host(&[A100; 4], 32), Some("rack"), true);
    node(&mut ix, "g2", host(&[A100; 2], 32), Some("rack"), true);
    let head = ResourcesSpec::default();
    let p = ix.place(&grouped(head, 1, 4)).expect("the worker takes the 4-GPU node, the head the other");
    assert_eq!(p[1].0, NodeId::from("g1"));
    assert_eq!(p[0].0, NodeId::from("g2"));
}

#[test]
fn a_grouped_gang_that_cannot_fit_names_the_rank_that_does_not() {
    let mut ix = Index::new();
    node(&mut ix, "a", host(&[], 8), Some("rack"), true);
    node(&mut ix, "b", host(&[], 8), Some("rack"), true);
    let why = ix.place(&grouped(ResourcesSpec::default(), 1, 2)).expect_err("no GPU node");
    assert!(why.contains("no node in") || why.contains("no node has"), "{why}");
    assert!(why.ends_with("(rank 1 of the gang)"), "{why}");
    assert!(ix.nodes().all(|s| s.used_gpus().is_empty()), "nothing reserved");
}

#[test]
fn a_project_s_fleet_takes_only_that_project_s_runs() {
    let mut ix = Index::new();
    let theirs = node(&mut ix, "rack-1", host(&[A100; 8], 64), Some("rack"), false);
    ix.set_profile(&theirs, NodeProfile { projects: vec!["vision".into()], ..NodeProfile::default() });
    let req = |project: &str, gpus| Request { project: Some(project.to_owned()), ..gpu_req(&[], gpus) };
    let why = ix.place(&req("speech", 1)).expect_err("rack is vision's");
    assert_eq!(why, "no nodes for project speech: 1 node(s) are in other projects' fleets (see `corral node list`)");
    assert_eq!(ix.place(&req("vision", 1)).expect("vision's own fleet")[0].0, theirs);
    // A node in no project's fleet takes anyone's runs.
    let open = node(&mut ix, "spare", host(&[A100; 1], 8), None, false);
    assert_eq!(ix.place(&req("speech", 1)).expect("the open node")[0].0, open);
}
