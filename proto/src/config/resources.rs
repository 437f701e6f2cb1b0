//! dstack's `resources` syntax: `cpu: x86:8..`, `memory: 32GB..`, `shm_size: 16GB`, `disk: 100GB..`,
//! and `gpu:` in all its forms (`A100:80GB:2`, `24GB..:1..2`, `RTX4090,A6000:2`, `amd:MI300X:8`,
//! `v5litepod-8`, a count alone, or a mapping).
//!
//! The string parsers are public so that the CLI can read the same syntax from flags; `format_*` write
//! it back (`parse_gpu(&format_gpu(&g)) == g`).

use crate::resources::{
    CpuArch, CpuSpec, GB, GpuSpec, GpuVendor, MB, Memory, Range, ResourcesSpec,
};

use super::fields::{Issue, Object, Res, bounded, describe, join, string};
use super::yaml::{Node, Value};

pub const TB: u64 = 1 << 40;

/// `resources:` (a mapping). Fields left out keep Corral's defaults ([`ResourcesSpec::default`]).
pub(crate) fn resources(node: &Node, path: &str) -> Res<ResourcesSpec> {
    let o = Object::new(
        node,
        path,
        "resources",
        &["cpu", "memory", "shm_size", "gpu", "disk"],
    )?;
    let mut spec = ResourcesSpec::default();
    if let Some(cpu) = o.map("cpu", cpu)? {
        spec.cpu = cpu;
    }
    if let Some(memory) = o.map("memory", memory_range)? {
        spec.memory = memory;
    }
    spec.shm_size = o.map("shm_size", memory)?;
    spec.gpu = o.map("gpu", gpu)?;
    spec.disk = o.map("disk", disk)?;
    Ok(spec)
}

fn scalar_text(node: &Node) -> Option<&str> {
    match node.value {
        Value::Str(_) | Value::Int(_) | Value::Float(_) => Some(&node.text),
        _ => None,
    }
}

fn cpu(node: &Node, path: &str) -> Res<CpuSpec> {
    if let Some(text) = scalar_text(node) {
        return parse_cpu(text).map_err(|m| Issue::invalid(node.mark, path, m));
    }
    let o = Object::new(node, path, "cpu", &["arch", "count", "min", "max"])?;
    let range_form = o.has("min") || o.has("max");
    if range_form && (o.has("arch") || o.has("count")) {
        return Err(Issue::invalid(
            o.mark(),
            path,
            "use either `min`/`max` or `arch`/`count`, not both",
        ));
    }
    if range_form {
        return Ok(CpuSpec {
            arch: None,
            count: count_range(node, path)?,
        });
    }
    let arch = o.map("arch", |n, p| {
        let s = string(n, p)?;
        parse_arch(&s).ok_or_else(|| {
            Issue::invalid(
                n.mark,
                p,
                format!("unknown CPU architecture \"{s}\", expected x86 or arm"),
            )
        })
    })?;
    let count = o
        .map("count", count_range)?
        .unwrap_or_else(|| CpuSpec::default().count);
    Ok(CpuSpec {
        arch,
        count: if count == Range::default() {
            Range::at_least(1)
        } else {
            count
        },
    })
}

/// A count or a range of counts: `2`, `"1..4"`, `{min: 1, max: 4}`.
pub(crate) fn count_range(node: &Node, path: &str) -> Res<Range<u32>> {
    if let Some(text) = scalar_text(node) {
        return parse_count_range(text).map_err(|m| Issue::invalid(node.mark, path, m));
    }
    let o = Object::new(node, path, "range", &["min", "max"])?;
    let min = o.map("min", |n, p| bounded::<u32>(n, p, 0, u32::MAX.into()))?;
    let max = o.map("max", |n, p| bounded::<u32>(n, p, 0, u32::MAX.into()))?;
    check_range(Range { min, max }, |v| v.to_string())
        .map_err(|m| Issue::invalid(node.mark, path, m))
}

/// One size: `16GB`, `512MB`, `1TB`, `8` (GB).
pub(crate) fn memory(node: &Node, path: &str) -> Res<Memory> {
    let text = scalar_text(node).ok_or_else(|| {
        Issue::invalid(
            node.mark,
            path,
            format!("expected a size such as 16GB, found {}", node.kind()),
        )
    })?;
    parse_memory(text).map_err(|m| Issue::invalid(node.mark, path, m))
}

/// A size or a range of sizes: `32GB`, `"16GB..64GB"`, `{min: 16GB, max: 64GB}`.
pub(crate) fn memory_range(node: &Node, path: &str) -> Res<Range<Memory>> {
    if let Some(text) = scalar_text(node) {
        return parse_memory_range(text).map_err(|m| Issue::invalid(node.mark, path, m));
    }
    let o = Object::new(node, path, "range", &["min", "max"])?;
    let range = Range {
        min: o.map("min", memory)?,
        max: o.map("max", memory)?,
    };
    check_range(range, format_memory).map_err(|m| Issue::invalid(node.mark, path, m))
}

fn disk(node: &Node, path: &str) -> Res<Range<Memory>> {
    if matches!(node.value, Value::Map(_)) {
        let o = Object::new(node, path, "disk", &["size"])?;
        return o.require("size", memory_range);
    }
    memory_range(node, path)
}

fn gpu(node: &Node, path: &str) -> Res<GpuSpec> {
    if let Some(text) = scalar_text(node) {
        return parse_gpu(text).map_err(|m| Issue::invalid(node.mark, path, m));
    }
    let known = [
        "vendor",
        "name",
        "count",
        "memory",
        "total_memory",
        "compute_capability",
    ];
    let o = Object::new(node, path, "gpu", &known)?;
    let mut spec = GpuSpec {
        count: Range::at_least(1),
        ..GpuSpec::default()
    };
    spec.vendor = o.map("vendor", |n, p| {
        let s = string(n, p)?;
        parse_vendor(&s).ok_or_else(|| {
            Issue::invalid(n.mark, p, format!("unknown GPU vendor \"{s}\", expected nvidia, amd, google (or tpu), intel or tenstorrent"))
        })
    })?;
    spec.names = match o.get("name") {
        None => Vec::new(),
        Some(n) if matches!(n.value, Value::Seq(_)) => super::fields::strings(n, &o.path("name"))?,
        Some(n) => vec![string(n, &o.path("name"))?],
    };
    if let Some(count) = o.map("count", count_range)? {
        spec.count = count;
    }
    spec.memory = o.map("memory", memory_range)?;
    spec.total_memory = o.map("total_memory", memory_range)?;
    spec.compute_capability = o.map("compute_capability", compute_capability)?;
    infer_tpu(&mut spec).map_err(|m| Issue::invalid(o.key_mark("name"), join(path, "name"), m))?;
    Ok(spec)
}

/// `7.5`, `"7.5"`, `[7, 5]` → "7.5".
fn compute_capability(node: &Node, path: &str) -> Res<String> {
    let bad = || {
        Issue::invalid(
            node.mark,
            path,
            format!(
                "expected a compute capability such as 7.5, found {}",
                describe(node)
            ),
        )
    };
    let (major, minor) = match &node.value {
        Value::Float(_) | Value::Str(_) => node.text.trim().split_once('.').ok_or_else(bad)?,
        Value::Seq(items)
            if items.len() == 2 && items.iter().all(|i| matches!(i.value, Value::Int(_))) =>
        {
            (items[0].text.as_str(), items[1].text.as_str())
        }
        _ => return Err(bad()),
    };
    match (major.parse::<u32>(), minor.parse::<u32>()) {
        (Ok(a), Ok(b)) => Ok(format!("{a}.{b}")),
        _ => Err(bad()),
    }
}

fn parse_arch(s: &str) -> Option<CpuArch> {
    match s.to_ascii_lowercase().as_str() {
        "x86" | "x86_64" | "amd64" => Some(CpuArch::X86),
        "arm" | "arm64" | "aarch64" => Some(CpuArch::Arm),
        _ => None,
    }
}

fn parse_vendor(s: &str) -> Option<GpuVendor> {
    match s.to_ascii_lowercase().as_str() {
        "nvidia" => Some(GpuVendor::Nvidia),
        "amd" => Some(GpuVendor::Amd),
        "google" | "tpu" => Some(GpuVendor::Google),
        "intel" => Some(GpuVendor::Intel),
        "tenstorrent" => Some(GpuVendor::Tenstorrent),
        _ => None,
    }
}

fn vendor_word(v: GpuVendor) -> &'static str {
    match v {
        GpuVendor::Nvidia => "nvidia",
        GpuVendor::Amd => "amd",
        GpuVendor::Google => "google",
        GpuVendor::Intel => "intel",
        GpuVendor::Tenstorrent => "tenstorrent",
    }
}

/// `4`, `8..`, `..64`, `x86:8..`, `arm:4`.
pub fn parse_cpu(text: &str) -> Result<CpuSpec, String> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let mut spec = CpuSpec {
        arch: None,
        count: Range::at_least(1),
    };
    let mut count_seen = false;
    for token in compact.split(':') {
        if let Some(arch) = parse_arch(token) {
            if spec.arch.replace(arch).is_some() {
                return Err(format!("two CPU architectures in \"{text}\""));
            }
        } else if token.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(format!(
                "unknown CPU architecture \"{token}\" in \"{text}\", expected x86 or arm"
            ));
        } else {
            if count_seen {
                return Err(format!("two CPU counts in \"{text}\""));
            }
            spec.count = count_range_in(token, text)?;
            count_seen = true;
        }
    }
    Ok(spec)
}

/// `2`, `1..4`, `2..`, `..8`.
pub fn parse_count_range(text: &str) -> Result<Range<u32>, String> {
    count_range_in(text, text)
}

/// Parses `part`; messages quote `whole`, the text the user wrote.
fn count_range_in(part: &str, whole: &str) -> Result<Range<u32>, String> {
    let one = |s: &str| -> Result<Option<u32>, String> {
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<u32>()
            .map(Some)
            .map_err(|_| format!("cannot read \"{s}\" in \"{whole}\" as a count"))
    };
    let range = match part.trim().split_once("..") {
        Some((a, b)) => Range {
            min: one(a.trim())?,
            max: one(b.trim())?,
        },
        None => Range::exactly(one(part.trim())?.ok_or_else(|| "expected a count".to_owned())?),
    };
    check_range(range, |v| v.to_string())
}

/// `512MB`, `16GB`, `1TB`, `1.5GB`, `8` (a bare number is GB); units are case-insensitive.
pub fn parse_memory(text: &str) -> Result<Memory, String> {
    memory_in(text, text)
}

fn memory_in(part: &str, whole: &str) -> Result<Memory, String> {
    let compact: String = part.chars().filter(|c| !c.is_whitespace()).collect();
    let split = compact
        .find(|c: char| c.is_alphabetic())
        .unwrap_or(compact.len());
    let (number, unit) = compact.split_at(split);
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "gb" => GB,
        "mb" => MB,
        "tb" => TB,
        _ => {
            return Err(format!(
                "unknown memory unit \"{unit}\" in \"{whole}\" (use MB, GB or TB)"
            ));
        }
    };
    let n: f64 = number.parse().map_err(|_| {
        format!("cannot read \"{part}\" in \"{whole}\" as a size (e.g. 512MB, 80GB, 1TB)")
    })?;
    let bytes = (n * scale as f64).round();
    if !(0.0..1.8e19).contains(&bytes) {
        return Err(format!("\"{part}\" in \"{whole}\" is not a usable size"));
    }
    Ok(Memory(bytes as u64))
}

/// `32GB`, `16GB..64GB`, `32GB..`, `..64GB`.
pub fn parse_memory_range(text: &str) -> Result<Range<Memory>, String> {
    memory_range_in(text, text)
}

fn memory_range_in(part: &str, whole: &str) -> Result<Range<Memory>, String> {
    let one = |s: &str| -> Result<Option<Memory>, String> {
        if s.trim().is_empty() {
            Ok(None)
        } else {
            memory_in(s, whole).map(Some)
        }
    };
    let range = match part.split_once("..") {
        Some((a, b)) => Range {
            min: one(a)?,
            max: one(b)?,
        },
        None => Range::exactly(memory_in(part, whole)?),
    };
    check_range(range, format_memory)
}

fn check_range<T: PartialOrd + Copy>(
    range: Range<T>,
    show: impl Fn(T) -> String,
) -> Result<Range<T>, String> {
    match (range.min, range.max) {
        (None, None) => {
            Err("empty range `..`: give a lower bound, an upper bound or both".to_owned())
        }
        (Some(a), Some(b)) if a > b => Err(format!("range {}..{} is backwards", show(a), show(b))),
        _ => Ok(range),
    }
}

/// dstack's short GPU syntax: `:`-separated parts in any order, each a vendor (`nvidia`, `amd`,
/// `google`/`tpu`, `intel`, `tenstorrent`), names (`A100` or `RTX4090,A6000`: starts with a letter),
/// memory (`80GB`, `24GB..`: has a unit), or a count (`2`, `1..8`). A bare count is `gpu: 2`.
pub fn parse_gpu(text: &str) -> Result<GpuSpec, String> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let mut spec = GpuSpec {
        count: Range::at_least(1),
        ..GpuSpec::default()
    };
    let (mut names_seen, mut count_seen) = (false, false);
    for token in compact.split(':') {
        let conflict = |what: &str| Err(format!("\"{text}\" gives the GPU {what} twice"));
        if token.is_empty() {
            return Err(format!("empty part in GPU spec \"{text}\""));
        }
        if let Some(vendor) = parse_vendor(token) {
            if spec.vendor.replace(vendor).is_some() {
                return conflict("vendor");
            }
        } else if token.starts_with(|c: char| c.is_alphabetic()) {
            if std::mem::replace(&mut names_seen, true) {
                return conflict("name");
            }
            spec.names = token.split(',').map(str::to_owned).collect();
            if spec.names.iter().any(String::is_empty) {
                return Err(format!("empty GPU name in \"{text}\""));
            }
        } else if token.contains(|c: char| c.is_alphabetic()) {
            if spec.memory.is_some() {
                return conflict("memory");
            }
            spec.memory = Some(memory_range_in(token, text)?);
        } else {
            if std::mem::replace(&mut count_seen, true) {
                return conflict("count");
            }
            spec.count = count_range_in(token, text)?;
        }
    }
    infer_tpu(&mut spec)?;
    Ok(spec)
}

/// TPUs are named by their slice (`v5litepod-8`, `v2-8`; `tpu-v5e-8` is the old spelling): such names
/// mean vendor google, as in dstack.
fn infer_tpu(spec: &mut GpuSpec) -> Result<(), String> {
    let mut tpu = false;
    for name in &mut spec.names {
        if let Some(rest) = name.strip_prefix("tpu-") {
            *name = rest.to_owned();
            tpu = true;
        }
        tpu |= is_tpu_name(name);
    }
    if tpu {
        match spec.vendor {
            None | Some(GpuVendor::Google) => spec.vendor = Some(GpuVendor::Google),
            Some(v) => {
                return Err(format!(
                    "{} is a Google TPU, not a {} device",
                    spec.names.join(","),
                    vendor_word(v)
                ));
            }
        }
    }
    Ok(())
}

/// `v2-8`, `v3-32`, `v5e-8`, `v5p-16`, `v5litepod-4`, `v6e-8`.
fn is_tpu_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let Some((generation, cores)) = lower.split_once('-') else {
        return false;
    };
    let mut g = generation.chars();
    g.next() == Some('v')
        && g.next().is_some_and(|c| c.is_ascii_digit())
        && g.all(|c| c.is_ascii_alphanumeric())
        && !cores.is_empty()
        && cores.bytes().all(|b| b.is_ascii_digit())
}

/// The shortest exact spelling of a size: `1TB`, `80GB`, `512MB`, or fractional GB (`0.0009765625GB`).
pub fn format_memory(m: Memory) -> String {
    let b = m.0;
    if b == 0 {
        "0GB".to_owned()
    } else if b.checked_rem(TB) == Some(0) {
        format!("{}TB", b / TB)
    } else if b.checked_rem(GB) == Some(0) {
        format!("{}GB", b / GB)
    } else if b.checked_rem(MB) == Some(0) {
        format!("{}MB", b / MB)
    } else {
        // Dividing by a power of two is exact in f64 below 2^53 bytes, and `{}` prints the shortest text
        // that reads back to the same f64.
        format!("{}GB", b as f64 / GB as f64)
    }
}

pub fn format_range<T: Copy + PartialEq>(range: &Range<T>, show: impl Fn(T) -> String) -> String {
    match (range.min, range.max) {
        (Some(a), Some(b)) if a == b => show(a),
        (Some(a), Some(b)) => format!("{}..{}", show(a), show(b)),
        (Some(a), None) => format!("{}..", show(a)),
        (None, Some(b)) => format!("..{}", show(b)),
        (None, None) => "..".to_owned(),
    }
}

/// A GPU spec in the short syntax, `vendor:names:memory:count`. `total_memory` and
/// `compute_capability` have no short form and are left out.
pub fn format_gpu(gpu: &GpuSpec) -> String {
    let mut parts = Vec::new();
    if let Some(v) = gpu.vendor {
        parts.push(vendor_word(v).to_owned());
    }
    if !gpu.names.is_empty() {
        parts.push(gpu.names.join(","));
    }
    if let Some(m) = &gpu.memory {
        parts.push(format_range(m, format_memory));
    }
    parts.push(format_range(&gpu.count, |c| c.to_string()));
    parts.join(":")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
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
        assert_eq!(
            parse_cpu("4").unwrap(),
            CpuSpec {
                arch: None,
                count: Range::exactly(4)
            }
        );
        assert_eq!(
            parse_cpu("8..").unwrap(),
            CpuSpec {
                arch: None,
                count: Range::at_least(8)
            }
        );
        assert_eq!(
            parse_cpu("..64").unwrap().count,
            Range {
                min: None,
                max: Some(64)
            }
        );
        assert_eq!(
            parse_cpu("x86:8..").unwrap(),
            CpuSpec {
                arch: Some(CpuArch::X86),
                count: Range::at_least(8)
            }
        );
        assert_eq!(
            parse_cpu("arm:4").unwrap(),
            CpuSpec {
                arch: Some(CpuArch::Arm),
                count: Range::exactly(4)
            }
        );
        assert_eq!(
            parse_cpu("arm").unwrap(),
            CpuSpec {
                arch: Some(CpuArch::Arm),
                count: Range::at_least(1)
            }
        );
        assert!(
            parse_cpu("risc:4")
                .unwrap_err()
                .contains("unknown CPU architecture \"risc\"")
        );
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
        assert_eq!(
            parse_memory_range("32GB..").unwrap(),
            Range::at_least(gb(32))
        );
        assert_eq!(
            parse_memory_range("16GB..64GB").unwrap(),
            Range {
                min: Some(gb(16)),
                max: Some(gb(64))
            }
        );
        assert_eq!(
            parse_memory_range("..64GB").unwrap(),
            Range {
                min: None,
                max: Some(gb(64))
            }
        );
        assert_eq!(
            parse_memory("80GX").unwrap_err(),
            "unknown memory unit \"GX\" in \"80GX\" (use MB, GB or TB)"
        );
        assert!(parse_memory("GB").is_err());
        assert!(parse_memory("-1GB").is_err());
        assert!(
            parse_memory_range("..")
                .unwrap_err()
                .contains("empty range")
        );
        assert!(
            parse_memory_range("64GB..16GB")
                .unwrap_err()
                .contains("64GB..16GB is backwards")
        );
    }

    #[test]
    fn gpu_syntax() {
        let a100 = gpu("A100");
        assert_eq!(
            (a100.names.clone(), a100.count, a100.memory),
            (vec!["A100".to_owned()], Range::at_least(1), None)
        );
        let g = gpu("A100:80GB:2");
        assert_eq!(
            (g.names, g.memory, g.count),
            (
                vec!["A100".to_owned()],
                Some(Range::exactly(gb(80))),
                Range::exactly(2)
            )
        );
        let g = gpu("24GB..");
        assert_eq!(
            (g.names.len(), g.memory, g.count),
            (0, Some(Range::at_least(gb(24))), Range::at_least(1))
        );
        let g = gpu("24GB..:1..2");
        assert_eq!(
            (g.memory, g.count),
            (
                Some(Range::at_least(gb(24))),
                Range {
                    min: Some(1),
                    max: Some(2)
                }
            )
        );
        let g = gpu("40GB..80GB:2..4");
        assert_eq!(
            (g.memory, g.count),
            (
                Some(Range {
                    min: Some(gb(40)),
                    max: Some(gb(80))
                }),
                Range {
                    min: Some(2),
                    max: Some(4)
                }
            )
        );
        let g = gpu("RTX4090,A6000:2");
        assert_eq!(
            (g.names, g.count),
            (
                vec!["RTX4090".to_owned(), "A6000".to_owned()],
                Range::exactly(2)
            )
        );
        assert_eq!(gpu("H100:8").count, Range::exactly(8));
        let g = gpu("2");
        assert_eq!(
            (g.names.len(), g.vendor, g.count),
            (0, None, Range::exactly(2))
        );
        let g = gpu("nvidia:2");
        assert_eq!(
            (g.vendor, g.count),
            (Some(GpuVendor::Nvidia), Range::exactly(2))
        );
        let g = gpu("amd:MI300X:8");
        assert_eq!(
            (g.vendor, g.names, g.count),
            (
                Some(GpuVendor::Amd),
                vec!["MI300X".to_owned()],
                Range::exactly(8)
            )
        );
        let g = gpu("nvidia:4:16GB");
        assert_eq!(
            (g.vendor, g.memory, g.count),
            (
                Some(GpuVendor::Nvidia),
                Some(Range::exactly(gb(16))),
                Range::exactly(4)
            )
        );
        let g = gpu("tpu-v5e-8");
        assert_eq!(
            (g.vendor, g.names),
            (Some(GpuVendor::Google), vec!["v5e-8".to_owned()])
        );
        let g = gpu("v5litepod-8");
        assert_eq!(
            (g.vendor, g.names),
            (Some(GpuVendor::Google), vec!["v5litepod-8".to_owned()])
        );
        assert_eq!(gpu("tpu:v2-8").vendor, Some(GpuVendor::Google));
        assert_eq!(gpu("tt-galaxy-wh:32").vendor, None);
        assert_eq!(gpu("0").count, Range::exactly(0));
    }

    #[test]
    fn gpu_errors() {
        assert_eq!(
            parse_gpu("A100:80GX").unwrap_err(),
            "unknown memory unit \"GX\" in \"A100:80GX\" (use MB, GB or TB)"
        );
        assert!(parse_gpu("A100:H100").unwrap_err().contains("name twice"));
        assert!(parse_gpu("A100::2").unwrap_err().contains("empty part"));
        assert!(parse_gpu("2:4").unwrap_err().contains("count twice"));
        assert!(parse_gpu("A100,:2").unwrap_err().contains("empty GPU name"));
        assert!(
            parse_gpu("amd:v5litepod-8")
                .unwrap_err()
                .contains("Google TPU")
        );
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
        prop_oneof![
            (0u64..8 * 1024 * 1024).prop_map(|mb| Memory(mb * MB)),
            (0u64..1 << 45).prop_map(Memory)
        ]
    }

    fn range_strategy<T: std::fmt::Debug + Clone + PartialOrd + 'static>(
        value: impl Strategy<Value = T> + Clone,
    ) -> impl Strategy<Value = Range<T>> + Clone {
        (
            proptest::option::of(value.clone()),
            proptest::option::of(value),
        )
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
        let memory = proptest::option::of(range_strategy(
            memory_strategy().prop_filter("non-zero", |m| m.0 > 0),
        ));
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
}
