//! Tests of the resource syntax parsers and their round trips.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

fn gb(n: u64) -> Memory {
    Memory::gb(n)
}

fn gpu(text: &str) -> GpuSpec {
    parse_gpu(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn cpu_syntax() {
    assert_eq!(parse_cpu("4").unwrap(), CpuSpec { arch: None, count: Range::exactly(4) });
    assert_eq!(parse_cpu("8..").unwrap(), CpuSpec { arch: None, count: Range::at_least(8) });
    assert_eq!(parse_cpu("..64").unwrap().count, Range { min: None, max: Some(64) });
    assert_eq!(parse_cpu("x86:8..").unwrap(), CpuSpec { arch: Some(CpuArch::X86), count: Range::at_least(8) });
    assert_eq!(parse_cpu("arm:4").unwrap(), CpuSpec { arch: Some(CpuArch::Arm), count: Range::exactly(4) });
    assert_eq!(parse_cpu("arm").unwrap(), CpuSpec { arch: Some(CpuArch::Arm), count: Range::at_least(1) });
    assert!(parse_cpu("risc:4").unwrap_err().contains("unknown CPU architecture \"risc\""));
    assert!(parse_cpu("8..4").unwrap_err().contains("backwards"));
}

#[test]
fn memory_syntax() {
    assert_eq!(parse_memory("512MB").unwrap(), Memory(512 * MB));
    assert_eq!(parse_memory("16GB").unwrap(), gb(16));
    assert_eq!(parse_memory("16gb").unwrap(), gb(16));
    assert_eq!(parse_memory("1TB").unwrap(), gb(1024));
    assert_eq!(parse_memory("8").unwrap(), gb(8));
    assert_eq!(parse_memory("1.5GB").unwrap(), Memory(3 * GB / 2));
    assert_eq!(parse_memory("100 GB").unwrap(), gb(100));
    assert_eq!(parse_memory_range("32GB..").unwrap(), Range::at_least(gb(32)));
    assert_eq!(parse_memory_range("16GB..64GB").unwrap(), Range { min: Some(gb(16)), max: Some(gb(64)) });
    assert_eq!(parse_memory_range("..64GB").unwrap(), Range { min: None, max: Some(gb(64)) });
    assert_eq!(parse_memory("80GX").unwrap_err(), "unknown memory unit \"GX\" in \"80GX\" (use MB, GB or TB)");
    assert!(parse_memory("GB").is_err());
    assert!(parse_memory("-1GB").is_err());
    assert!(parse_memory_range("..").unwrap_err().contains("empty range"));
    assert!(parse_memory_range("64GB..16GB").unwrap_err().contains("64GB..16GB is backwards"));
}

#[test]
fn gpu_syntax() {
    let a100 = gpu("A100");
    assert_eq!((a100.names.clone(), a100.count, a100.memory), (vec!["A100".to_owned()], Range::at_least(1), None));
    let g = gpu("A100:80GB:2");
    assert_eq!(
        (g.names, g.memory, g.count),
        (vec!["A100".to_owned()], Some(Range::exactly(gb(80))), Range::exactly(2))
    );
    let g = gpu("24GB..");
    assert_eq!((g.names.len(), g.memory, g.count), (0, Some(Range::at_least(gb(24))), Range::at_least(1)));
    let g = gpu("24GB..:1..2");
    assert_eq!((g.memory, g.count), (Some(Range::at_least(gb(24))), Range { min: Some(1), max: Some(2) }));
    let g = gpu("40GB..80GB:2..4");
    assert_eq!(
        (g.memory, g.count),
        (Some(Range { min: Some(gb(40)), max: Some(gb(80)) }), Range { min: Some(2), max: Some(4) })
    );
    let g = gpu("RTX4090,A6000:2");
    assert_eq!((g.names, g.count), (vec!["RTX4090".to_owned(), "A6000".to_owned()], Range::exactly(2)));
    assert_eq!(gpu("H100:8").count, Range::exactly(8));
    let g = gpu("2");
    assert_eq!((g.names.len(), g.vendor, g.count), (0, None, Range::exactly(2)));
    let g = gpu("nvidia:2");
    assert_eq!((g.vendor, g.count), (Some(GpuVendor::Nvidia), Range::exactly(2)));
    let g = gpu("amd:MI300X:8");
    assert_eq!((g.vendor, g.names, g.count), (Some(GpuVendor::Amd), vec!["MI300X".to_owned()], Range::exactly(8)));
    let g = gpu("nvidia:4:16GB");
    assert_eq!(
        (g.vendor, g.memory, g.count),
        (Some(GpuVendor::Nvidia), Some(Range::exactly(gb(16))), Range::exactly(4))
    );
    let g = gpu("tpu-v5e-8");
    assert_eq!((g.vendor, g.names), (Some(GpuVendor::Google), vec!["v5e-8".to_owned()]));
    let g = gpu("v5litepod-8");
    assert_eq!((g.vendor, g.names), (Some(GpuVendor::Google), vec!["v5litepod-8".to_owned()]));
    assert_eq!(gpu("tpu:v2-8").vendor, Some(GpuVendor::Google));
    assert_eq!(gpu("tt-galaxy-wh:32").vendor, None);
    assert_eq!(gpu("0").count, Range::exactly(0));
}

#[test]
fn gpu_errors() {
    assert_eq!(parse_gpu("A100:80GX").unwrap_err(), "unknown memory unit \"GX\" in \"A100:80GX\" (use MB, GB or TB)");
    assert!(parse_gpu("A100:H100").unwrap_err().contains("name twice"));
    assert!(parse_gpu("A100::2").unwrap_err().contains("empty part"));
    assert!(parse_gpu("2:4").unwrap_err().contains("count twice"));
    assert!(parse_gpu("A100,:2").unwrap_err().contains("empty GPU name"));
    assert!(parse_gpu("amd:v5litepod-8").unwrap_err().contains("Google TPU"));
    assert!(parse_gpu("A100:4..2").unwrap_err().contains("backwards"));
}

#[test]
fn formatting() {
    assert_eq!(format_memory(gb(80)), "80GB");
    assert_eq!(format_memory(Memory(2 * TB)), "2TB");
    assert_eq!(format_memory(Memory(512 * MB)), "512MB");
    assert_eq!(format_memory(Memory(1536 * MB)), "1536MB");
    assert_eq!(format_gpu(&gpu("A100:80GB:2")), "A100:80GB:2");
    assert_eq!(format_gpu(&gpu("amd:MI300X:8")), "amd:MI300X:8");
    assert_eq!(format_gpu(&gpu("24GB..")), "24GB..:1..");
}

fn memory_strategy() -> impl Strategy<Value = Memory> + Clone {
    prop_oneof![(0u64..8 * 1024 * 1024).prop_map(|mb| Memory(mb * MB)), (0u64..1 << 45).prop_map(Memory)]
}

fn range_strategy<T: std::fmt::Debug + Clone + PartialOrd + 'static>(
    value: impl Strategy<Value = T> + Clone,
) -> impl Strategy<Value = Range<T>> + Clone {
    (proptest::option::of(value.clone()), proptest::option::of(value))
        .prop_filter("non-empty, ordered", |(a, b)| {
            (a.is_some() || b.is_some()) && !matches!((a, b), (Some(a), Some(b)) if a > b)
        })
        .prop_map(|(min, max)| Range { min, max })
}

fn gpu_strategy() -> impl Strategy<Value = GpuSpec> {
    let vendor = proptest::option::of(prop_oneof![
        Just(GpuVendor::Nvidia),
        Just(GpuVendor::Amd),
        Just(GpuVendor::Intel),
        Just(GpuVendor::Tenstorrent)
    ]);
    let names = proptest::collection::vec("[A-Z][A-Z0-9]{0,6}", 0..3);
    let memory = proptest::option::of(range_strategy(memory_strategy().prop_filter("non-zero", |m| m.0 > 0)));
    let count = range_strategy(0u32..64);
    (vendor, names, memory, count).prop_map(|(vendor, names, memory, count)| GpuSpec {
        vendor,
        names,
        memory,
        total_memory: None,
        count,
        compute_capability: None,
    })
}

proptest! {
    #[test]
    fn memory_round_trips(m in memory_strategy()) {
        prop_assert_eq!(parse_memory(&format_memory(m)), Ok(m));
    }

    #[test]
    fn memory_ranges_round_trip(r in range_strategy(memory_strategy())) {
        prop_assert_eq!(parse_memory_range(&format_range(&r, format_memory)), Ok(r));
    }

    #[test]
    fn gpu_specs_round_trip(g in gpu_strategy()) {
        let text = format_gpu(&g);
        prop_assert_eq!(parse_gpu(&text), Ok(g), "{}", text);
    }

    #[test]
    fn parsers_never_panic(s in "\\PC{0,24}") {
        let _ = (parse_gpu(&s), parse_cpu(&s), parse_memory_range(&s), parse_count_range(&s));
    }
}
