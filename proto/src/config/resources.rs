//! dstack's `resources` syntax: `cpu: x86:8..`, `memory: 32GB..`, `shm_size: 16GB`, `disk: 100GB..`,
//! and `gpu:` in all its forms (`A100:80GB:2`, `24GB..:1..2`, `RTX4090,A6000:2`, `amd:MI300X:8`,
//! `v5litepod-8`, a count alone, or a mapping).
//!
//! The string parsers are public so that the CLI can read the same syntax from flags; `format_*` write
//! it back (`parse_gpu(&format_gpu(&g)) == g`).

use crate::resources::{CpuArch, CpuSpec, GB, GpuSpec, GpuVendor, MB, Memory, Range, ResourcesSpec};

use super::fields::{Issue, Object, Res, bounded, describe, join, string};
use super::yaml::{Node, Value};

pub const TB: u64 = 1 << 40;

/// `resources:` (a mapping). Fields left out keep Corral's defaults ([`ResourcesSpec::default`]).
pub(crate) fn resources(node: &Node, path: &str) -> Res<ResourcesSpec> {
    let o = Object::new(node, path, "resources", &["cpu", "memory", "shm_size", "gpu", "disk"])?;
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
        return Err(Issue::invalid(o.mark(), path, "use either `min`/`max` or `arch`/`count`, not both"));
    }
    if range_form {
        return Ok(CpuSpec { arch: None, count: count_range(node, path)? });
    }
    let arch = o.map("arch", |n, p| {
        let s = string(n, p)?;
        parse_arch(&s)
            .ok_or_else(|| Issue::invalid(n.mark, p, format!("unknown CPU architecture \"{s}\", expected x86 or arm")))
    })?;
    let count = o.map("count", count_range)?.unwrap_or_else(|| CpuSpec::default().count);
    Ok(CpuSpec { arch, count: if count == Range::default() { Range::at_least(1) } else { count } })
}

/// A count or a range of counts: `2`, `"1..4"`, `{min: 1, max: 4}`.
pub(crate) fn count_range(node: &Node, path: &str) -> Res<Range<u32>> {
    if let Some(text) = scalar_text(node) {
        return parse_count_range(text).map_err(|m| Issue::invalid(node.mark, path, m));
    }
    let o = Object::new(node, path, "range", &["min", "max"])?;
    let min = o.map("min", |n, p| bounded::<u32>(n, p, 0, u32::MAX.into()))?;
    let max = o.map("max", |n, p| bounded::<u32>(n, p, 0, u32::MAX.into()))?;
    check_range(Range { min, max }, |v| v.to_string()).map_err(|m| Issue::invalid(node.mark, path, m))
}

/// One size: `16GB`, `512MB`, `1TB`, `8` (GB).
pub(crate) fn memory(node: &Node, path: &str) -> Res<Memory> {
    let text = scalar_text(node).ok_or_else(|| {
        Issue::invalid(node.mark, path, format!("expected a size such as 16GB, found {}", node.kind()))
    })?;
    parse_memory(text).map_err(|m| Issue::invalid(node.mark, path, m))
}

/// A size or a range of sizes: `32GB`, `"16GB..64GB"`, `{min: 16GB, max: 64GB}`.
pub(crate) fn memory_range(node: &Node, path: &str) -> Res<Range<Memory>> {
    if let Some(text) = scalar_text(node) {
        return parse_memory_range(text).map_err(|m| Issue::invalid(node.mark, path, m));
    }
    let o = Object::new(node, path, "range", &["min", "max"])?;
    let range = Range { min: o.map("min", memory)?, max: o.map("max", memory)? };
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
    let known = ["vendor", "name", "count", "memory", "total_memory", "compute_capability"];
    let o = Object::new(node, path, "gpu", &known)?;
    let mut spec = GpuSpec { count: Range::at_least(1), ..GpuSpec::default() };
    spec.vendor = o.map("vendor", |n, p| {
        let s = string(n, p)?;
        parse_vendor(&s).ok_or_else(|| {
            Issue::invalid(
                n.mark,
                p,
                format!("unknown GPU vendor \"{s}\", expected nvidia, amd, google (or tpu), intel or tenstorrent"),
            )
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
        Issue::invalid(node.mark, path, format!("expected a compute capability such as 7.5, found {}", describe(node)))
    };
    let (major, minor) = match &node.value {
        Value::Float(_) | Value::Str(_) => node.text.trim().split_once('.').ok_or_else(bad)?,
        Value::Seq(items) if items.len() == 2 && items.iter().all(|i| matches!(i.value, Value::Int(_))) => {
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
    let mut spec = CpuSpec { arch: None, count: Range::at_least(1) };
    let mut count_seen = false;
    for token in compact.split(':') {
        if let Some(arch) = parse_arch(token) {
            if spec.arch.replace(arch).is_some() {
                return Err(format!("two CPU architectures in \"{text}\""));
            }
        } else if token.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(format!("unknown CPU architecture \"{token}\" in \"{text}\", expected x86 or arm"));
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
        s.parse::<u32>().map(Some).map_err(|_| format!("cannot read \"{s}\" in \"{whole}\" as a count"))
    };
    let range = match part.trim().split_once("..") {
        Some((a, b)) => Range { min: one(a.trim())?, max: one(b.trim())? },
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
    let split = compact.find(|c: char| c.is_alphabetic()).unwrap_or(compact.len());
    let (number, unit) = compact.split_at(split);
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "gb" => GB,
        "mb" => MB,
        "tb" => TB,
        _ => {
            return Err(format!("unknown memory unit \"{unit}\" in \"{whole}\" (use MB, GB or TB)"));
        }
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("cannot read \"{part}\" in \"{whole}\" as a size (e.g. 512MB, 80GB, 1TB)"))?;
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
        if s.trim().is_empty() { Ok(None) } else { memory_in(s, whole).map(Some) }
    };
    let range = match part.split_once("..") {
        Some((a, b)) => Range { min: one(a)?, max: one(b)? },
        None => Range::exactly(memory_in(part, whole)?),
    };
    check_range(range, format_memory)
}

fn check_range<T: PartialOrd + Copy>(range: Range<T>, show: impl Fn(T) -> String) -> Result<Range<T>, String> {
    match (range.min, range.max) {
        (None, None) => Err("empty range `..`: give a lower bound, an upper bound or both".to_owned()),
        (Some(a), Some(b)) if a > b => Err(format!("range {}..{} is backwards", show(a), show(b))),
        _ => Ok(range),
    }
}

/// dstack's short GPU syntax: `:`-separated parts in any order, each a vendor (`nvidia`, `amd`,
/// `google`/`tpu`, `intel`, `tenstorrent`), names (`A100` or `RTX4090,A6000`: starts with a letter),
/// memory (`80GB`, `24GB..`: has a unit), or a count (`2`, `1..8`). A bare count is `gpu: 2`.
pub fn parse_gpu(text: &str) -> Result<GpuSpec, String> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let mut spec = GpuSpec { count: Range::at_least(1), ..GpuSpec::default() };
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
                return Err(format!("{} is a Google TPU, not a {} device", spec.names.join(","), vendor_word(v)));
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
mod tests;
