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
