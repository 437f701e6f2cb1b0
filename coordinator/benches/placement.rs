//! Placement index alone: 100,000 single-GPU requests onto 10,000 nodes of 8 GPUs, and the same
//! queue against a naive first-fit scan of every node, measured side by side. The end-to-end
//! number (store writes, QUIC, hollow nodes) is in `tests/benches/scale.rs`.

use std::time::Instant;

use corral_coordinator::scheduling::placement::{Index, Request};
use corral_proto::ids::NodeId;
use corral_proto::inventory::{GpuInfo, HostInventory};
use corral_proto::resources::{CpuSpec, GpuSpec, GpuVendor, Memory, Range, ResourcesSpec, fit};

const NODES: usize = 10_000;
const JOBS: usize = 100_000;

fn host() -> HostInventory {
    HostInventory {
        hostname: "h".into(),
        cpu_cores: 128,
        arch: "x86_64".into(),
        memory: Memory::gb(2048),
        disk: Memory::gb(10_000),
        gpus: (0..8)
            .map(|i| GpuInfo {
                index: i,
                vendor: GpuVendor::Nvidia,
                name: "NVIDIA H100 80GB HBM3".into(),
                memory: Memory::gb(80),
                uuid: format!("GPU-{i}"),
                pci_bus_id: String::new(),
            })
            .collect(),
        ..Default::default()
    }
}

fn request() -> Request {
    Request {
        resources: ResourcesSpec {
            cpu: CpuSpec { arch: None, count: Range::at_least(1) },
            gpu: Some(GpuSpec { names: vec!["H100".into()], count: Range::exactly(1), ..Default::default() }),
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

fn main() {
    let inv = host();
    let req = request();

    let mut ix = Index::new();
    for n in 0..NODES {
        let id = NodeId(format!("n{n}"));
        ix.upsert(&id, &format!("node-{n}"), None, false, 1, inv.clone());
        ix.set_connected(&id, true);
    }
    let start = Instant::now();
    let mut placed = 0usize;
    let mut failed_shape = false;
    for _ in 0..JOBS {
        // As a pass does: once this shape failed, the rest of the same shape wait without a search.
        if failed_shape {
            continue;
        }
        match ix.place(&req) {
            Ok(_) => placed += 1,
            Err(_) => failed_shape = true,
        }
    }
    let indexed = start.elapsed();

    // Baseline: first fit over every node for every job, as a scheduler without an index would.
    let mut used: Vec<Vec<u32>> = vec![Vec::new(); NODES];
    let sample = 5_000; // the naive scan is quadratic (it slows as nodes fill): time the first jobs only
    let start = Instant::now();
    let mut naive_placed = 0usize;
    for _ in 0..sample {
        for u in used.iter_mut() {
            if let Ok(a) = fit(&req.resources, &inv, 0, Memory(0), u) {
                u.extend(a.gpu_indices);
                naive_placed += 1;
                break;
            }
        }
    }
    let naive = start.elapsed();

    let rate = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64();
    println!("| placement (index only) | jobs placed | time | placements/s |");
    println!("|---|---|---|---|");
    println!(
        "| GPU-bucket index, {JOBS} queued onto {NODES} nodes × 8 GPUs | {placed} (+{} wait) | {:.0} ms | {:.0} |",
        JOBS - placed,
        indexed.as_secs_f64() * 1000.0,
        rate(JOBS, indexed)
    );
    println!(
        "| naive first-fit scan, first {sample} jobs | {naive_placed} | {:.0} ms | {:.0} |",
        naive.as_secs_f64() * 1000.0,
        rate(sample, naive)
    );
    println!("ratio (index / naive): {:.1}×", rate(JOBS, indexed) / rate(sample, naive));
}
