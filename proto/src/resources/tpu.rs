//! Google TPUs in placement: what `gpu: v5litepod-8` asks of a host's chips, and which chips it gets.
//!
//! A TPU is named by its slice, `<generation>-<number>`. For v2, v3, v4 and v5p the number counts
//! TensorCores, two to a chip (`v3-8` is four chips); for v5e (`v5litepod-8`, `v5e-8`) and v6e it
//! counts chips. A host reports each chip as a device node ([`crate::inventory::TpuInfo`]) and,
//! where sysfs has it, its PCI device id, which tells the generation.
//!
//! Reserved chips share [`Allocation::gpu_indices`](super::Allocation) with GPUs, numbered from
//! [`TPU_INDEX_BASE`] (chip `i` of the host's list is `TPU_INDEX_BASE + i`), so that the store, the
//! scheduler's index and the wire carry them without a new field, and two jobs never hold one chip.

use crate::inventory::{HostInventory, TpuInfo};

use super::GpuSpec;

/// The first index of a TPU chip in an allocation's `gpu_indices`; below it, NVIDIA GPU indices.
pub const TPU_INDEX_BASE: u32 = 1 << 16;

/// A TPU generation, as slice names and PCI ids tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    V2,
    V3,
    V4,
    V4Lite,
    V5e,
    V5p,
    V6e,
}

impl Generation {
    /// The word users write: `v5e` for `v5litepod`.
    pub fn word(self) -> &'static str {
        match self {
            Self::V2 => "v2",
            Self::V3 => "v3",
            Self::V4 => "v4",
            Self::V4Lite => "v4lite",
            Self::V5e => "v5e",
            Self::V5p => "v5p",
            Self::V6e => "v6e",
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        Some(match word {
            "v2" => Self::V2,
            "v3" => Self::V3,
            "v4" => Self::V4,
            "v4lite" => Self::V4Lite,
            "v5e" | "v5litepod" | "v5lite" => Self::V5e,
            "v5p" => Self::V5p,
            "v6e" => Self::V6e,
            _ => return None,
        })
    }

    /// Whether slice names count TensorCores (two per chip) rather than chips.
    fn counts_cores(self) -> bool {
        matches!(self, Self::V2 | Self::V3 | Self::V4 | Self::V5p)
    }
}

/// The generations a chip's PCI device id may be (`0x0027` is v2 and v3 alike; their subsystem id
/// tells them apart, which the inventory does not carry). Empty: unknown, any generation.
pub fn generations_of(pci_device_id: Option<&str>) -> &'static [Generation] {
    match pci_device_id.map(str::to_ascii_lowercase).as_deref() {
        Some("0x0027") => &[Generation::V2, Generation::V3],
        Some("0x005e") => &[Generation::V4],
        Some("0x0056") => &[Generation::V4Lite],
        Some("0x0063") => &[Generation::V5e],
        Some("0x0062") => &[Generation::V5p],
        Some("0x006f") => &[Generation::V6e],
        _ => &[],
    }
}

/// What one accepted TPU name asks for: chips of a generation (`None`: any, for a generation
/// Corral does not know).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceWant {
    pub generation: Option<Generation>,
    pub chips: u32,
}

/// `v5litepod-8` → 8 v5e chips; `v3-8` → 4 v3 chips; `v7x-4` → 4 chips of any generation.
pub fn slice_want(name: &str) -> Option<SliceWant> {
    let lower = name.to_ascii_lowercase();
    let lower = lower.strip_prefix("tpu-").unwrap_or(&lower);
    let (generation, number) = lower.split_once('-')?;
    let number: u32 = number.parse().ok()?;
    let generation = Generation::from_word(generation);
    let chips = match generation {
        Some(g) if g.counts_cores() => number.div_ceil(2),
        _ => number,
    };
    (chips > 0).then_some(SliceWant { generation, chips })
}

fn accepts(want: Option<Generation>, chip: &TpuInfo) -> bool {
    let known = generations_of(chip.pci_device_id.as_deref());
    want.is_none_or(|g| known.is_empty() || known.contains(&g))
}

/// The chips (as allocation indices) a TPU spec takes on `host`, given the indices already used,
/// or why none fit. Without names, `gpu: tpu:4` asks for four chips of any generation. With
/// names, each is tried, the fewest chips first; a count asks for that many slices.
pub fn fit_tpus(gpu: &GpuSpec, host: &HostInventory, used: &[u32]) -> Result<Vec<u32>, String> {
    if host.tpus.is_empty() {
        return Err("has no TPUs".to_owned());
    }
    let slices = gpu.count.min.unwrap_or(1).max(1);
    let mut wants: Vec<(String, SliceWant)> = if gpu.names.is_empty() {
        vec![("tpu".to_owned(), SliceWant { generation: None, chips: gpu.min_count().max(1) })]
    } else {
        let mut w = Vec::new();
        for name in &gpu.names {
            let Some(s) = slice_want(name) else {
                return Err(format!("{name} is not a TPU slice name (e.g. v5litepod-8)"));
            };
            w.push((name.clone(), SliceWant { chips: s.chips.saturating_mul(slices), ..s }));
        }
        w
    };
    wants.sort_by_key(|(_, w)| w.chips);
    let mut why = String::new();
    for (name, want) in &wants {
        let matching: Vec<u32> =
            (0..host.tpus.len() as u32).filter(|&i| accepts(want.generation, &host.tpus[i as usize])).collect();
        let free: Vec<u32> = matching.iter().map(|i| TPU_INDEX_BASE + i).filter(|i| !used.contains(i)).collect();
        if free.len() as u32 >= want.chips {
            return Ok(free.into_iter().take(want.chips as usize).collect());
        }
        if why.is_empty() {
            why = if matching.is_empty() {
                let mut found: Vec<&str> = host
                    .tpus
                    .iter()
                    .filter_map(|t| generations_of(t.pci_device_id.as_deref()).first())
                    .map(|g| g.word())
                    .collect();
                found.dedup();
                let wanted = want.generation.map_or("", |g| g.word());
                format!("has no {wanted} TPU chips (its {} chip(s) are {})", host.tpus.len(), found.join(", "))
            } else {
                format!("needs {} TPU chip(s) for {name}, {} of {} free", want.chips, free.len(), matching.len())
            };
        }
    }
    Err(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chips(n: usize, id: Option<&str>) -> HostInventory {
        HostInventory {
            cpu_cores: 8,
            tpus: (0..n)
                .map(|i| TpuInfo { device: format!("/dev/accel{i}"), pci_device_id: id.map(str::to_owned) })
                .collect(),
            ..HostInventory::default()
        }
    }

    fn spec(names: &[&str]) -> GpuSpec {
        GpuSpec { names: names.iter().map(|n| (*n).to_owned()).collect(), ..GpuSpec::default() }
    }

    #[test]
    fn slice_names_count_chips_or_cores() {
        assert_eq!(slice_want("v5litepod-8"), Some(SliceWant { generation: Some(Generation::V5e), chips: 8 }));
        assert_eq!(slice_want("tpu-v5e-4"), Some(SliceWant { generation: Some(Generation::V5e), chips: 4 }));
        assert_eq!(slice_want("v3-8"), Some(SliceWant { generation: Some(Generation::V3), chips: 4 }));
        assert_eq!(slice_want("v5p-8"), Some(SliceWant { generation: Some(Generation::V5p), chips: 4 }));
        assert_eq!(slice_want("v7x-2"), Some(SliceWant { generation: None, chips: 2 }));
        assert_eq!(slice_want("A100"), None);
        assert_eq!(slice_want("v5e-0"), None);
    }

    #[test]
    fn chips_of_the_generation_are_taken_and_others_refused() {
        let v5e = chips(8, Some("0x0063"));
        assert_eq!(fit_tpus(&spec(&["v5litepod-8"]), &v5e, &[]).expect("fits").len(), 8);
        let four = fit_tpus(&spec(&["v5litepod-4"]), &v5e, &[]).expect("fits");
        assert_eq!(four, (0..4).map(|i| TPU_INDEX_BASE + i).collect::<Vec<_>>());
        // The other four are still free; then none.
        assert_eq!(fit_tpus(&spec(&["v5litepod-4"]), &v5e, &four).expect("fits")[0], TPU_INDEX_BASE + 4);
        let all: Vec<u32> = (0..8).map(|i| TPU_INDEX_BASE + i).collect();
        let e = fit_tpus(&spec(&["v5litepod-4"]), &v5e, &all).expect_err("busy");
        assert!(e.contains("0 of 8 free"), "{e}");
        let e = fit_tpus(&spec(&["v5p-8"]), &v5e, &[]).expect_err("another generation");
        assert!(e.contains("no v5p TPU chips") && e.contains("v5e"), "{e}");
        // Unknown PCI ids: the generation cannot be told, the count decides.
        assert!(fit_tpus(&spec(&["v5p-8"]), &chips(4, None), &[]).is_ok());
        assert_eq!(
            fit_tpus(&spec(&["v5litepod-16"]), &v5e, &[]).expect_err("too few"),
            "needs 16 TPU chip(s) for v5litepod-16, 8 of 8 free"
        );
        assert_eq!(fit_tpus(&spec(&["v5litepod-1"]), &HostInventory::default(), &[]).expect_err("none"), "has no TPUs");
    }

    #[test]
    fn any_chips_without_a_name() {
        let g = GpuSpec { count: crate::resources::Range::exactly(2), ..GpuSpec::default() };
        assert_eq!(fit_tpus(&g, &chips(4, Some("0x005e")), &[]).expect("fits").len(), 2);
    }
}
