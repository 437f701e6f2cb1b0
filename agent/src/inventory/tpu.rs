//! Google TPUs, found from their device nodes and sysfs.
//!
//! Older TPU VMs (v2–v4) expose each chip as `/dev/accelN`, with its PCI device under
//! `/sys/class/accel/accelN/device`. Newer ones (v5e, v5p, v6e) hand each chip to VFIO: the node
//! is `/dev/vfio/<iommu group>` and the chip is the PCI device in
//! `/sys/kernel/iommu_groups/<group>/devices/`.

use std::fs;
use std::path::Path;

use corral_proto::inventory::TpuInfo;

/// Google's PCI vendor id.
const GOOGLE_VENDOR_ID: u16 = 0x1ae0;

/// Lists the TPU chips under `dev_root` (normally `/dev`), reading their PCI ids from `sys_root`
/// (normally `/sys`). Unreadable entries are skipped: a host without TPUs has none of these paths.
pub fn collect_tpus(dev_root: &Path, sys_root: &Path) -> Vec<TpuInfo> {
    let mut tpus = accel_tpus(dev_root, sys_root);
    tpus.extend(vfio_tpus(dev_root, sys_root));
    tpus
}

/// `/dev/accelN`. The accel subsystem also serves other NPUs (Intel's, Habana's), so a device whose
/// sysfs names another vendor is left out; one without sysfs is kept, as old TPU drivers lack it.
fn accel_tpus(dev_root: &Path, sys_root: &Path) -> Vec<TpuInfo> {
    let mut found: Vec<(u32, TpuInfo)> = numbered_entries(dev_root, "accel")
        .into_iter()
        .filter_map(|(n, name)| {
            let pci = sys_root.join("class/accel").join(&name).join("device");
            match read_pci_id(&pci.join("vendor")) {
                Some(vendor) if vendor != GOOGLE_VENDOR_ID => return None,
                _ => {}
            }
            let device = dev_root.join(&name).display().to_string();
            Some((n, TpuInfo { device, pci_device_id: read_pci_id(&pci.join("device")).map(format_pci_id) }))
        })
        .collect();
    found.sort_by_key(|(n, _)| *n);
    found.into_iter().map(|(_, tpu)| tpu).collect()
}

/// `/dev/vfio/<group>`. VFIO passes through any PCI device (NICs, GPUs), so a group counts only
/// when sysfs shows a Google device in it.
fn vfio_tpus(dev_root: &Path, sys_root: &Path) -> Vec<TpuInfo> {
    let vfio = dev_root.join("vfio");
    let mut found: Vec<(u32, TpuInfo)> = numbered_entries(&vfio, "")
        .into_iter()
        .filter_map(|(group, name)| {
            let members = sys_root.join("kernel/iommu_groups").join(&name).join("devices");
            let device_id = fs::read_dir(&members)
                .ok()?
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.path())
                .filter(|pci| read_pci_id(&pci.join("vendor")) == Some(GOOGLE_VENDOR_ID))
                .map(|pci| read_pci_id(&pci.join("device")))
                .min()?;
            let device = vfio.join(&name).display().to_string();
            Some((group, TpuInfo { device, pci_device_id: device_id.map(format_pci_id) }))
        })
        .collect();
    found.sort_by_key(|(n, _)| *n);
    found.into_iter().map(|(_, tpu)| tpu).collect()
}

/// Entries of `dir` named `<prefix><number>`, with their number.
fn numbered_entries(dir: &Path, prefix: &str) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let n = name.strip_prefix(prefix)?;
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((n.parse().ok()?, name))
        })
        .collect()
}

/// A sysfs PCI id file: `0x1ae0\n`.
fn read_pci_id(path: &Path) -> Option<u16> {
    let text = fs::read_to_string(path).ok()?;
    let hex = text.trim().strip_prefix("0x")?;
    u16::from_str_radix(hex, 16).ok()
}

fn format_pci_id(id: u16) -> String {
    format!("0x{id:04x}")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    struct Host {
        _dir: tempfile::TempDir,
        dev: PathBuf,
        sys: PathBuf,
    }

    fn host() -> Host {
        let dir = tempfile::tempdir().expect("temp dir");
        let dev = dir.path().join("dev");
        let sys = dir.path().join("sys");
        fs::create_dir_all(&dev).expect("mkdir dev");
        fs::create_dir_all(&sys).expect("mkdir sys");
        Host { _dir: dir, dev, sys }
    }

    fn write(path: PathBuf, text: &str) {
        fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    fn pci(dir: PathBuf, vendor: &str, device: &str) {
        write(dir.join("vendor"), &format!("{vendor}\n"));
        write(dir.join("device"), &format!("{device}\n"));
    }

    fn tpu(device: &Path, id: Option<&str>) -> TpuInfo {
        TpuInfo { device: device.display().to_string(), pci_device_id: id.map(str::to_owned) }
    }

    #[test]
    fn accel_devices_in_numeric_order_with_their_pci_ids() {
        let h = host();
        for n in [0, 1, 2, 10] {
            write(h.dev.join(format!("accel{n}")), "");
            pci(h.sys.join(format!("class/accel/accel{n}/device")), "0x1ae0", "0x005e");
        }
        // An Intel NPU on the same subsystem, and an accel node without sysfs.
        write(h.dev.join("accel3"), "");
        pci(h.sys.join("class/accel/accel3/device"), "0x8086", "0x7d1d");
        write(h.dev.join("accel4"), "");
        write(h.dev.join("accelerator"), "");

        let tpus = collect_tpus(&h.dev, &h.sys);

        assert_eq!(
            tpus,
            [
                tpu(&h.dev.join("accel0"), Some("0x005e")),
                tpu(&h.dev.join("accel1"), Some("0x005e")),
                tpu(&h.dev.join("accel2"), Some("0x005e")),
                tpu(&h.dev.join("accel4"), None),
                tpu(&h.dev.join("accel10"), Some("0x005e")),
            ]
        );
    }

    #[test]
    fn vfio_groups_holding_a_google_device() {
        let h = host();
        write(h.dev.join("vfio/vfio"), "");
        for (group, bdf) in [("0", "0000:00:04.0"), ("1", "0000:00:05.0"), ("12", "0000:00:06.0")] {
            write(h.dev.join("vfio").join(group), "");
            pci(h.sys.join("kernel/iommu_groups").join(group).join("devices").join(bdf), "0x1ae0", "0x0062");
        }
        // A NIC passed through to a guest: VFIO, but not a TPU.
        write(h.dev.join("vfio/7"), "");
        pci(h.sys.join("kernel/iommu_groups/7/devices/0000:00:08.0"), "0x8086", "0x1572");
        // A group node whose sysfs is gone.
        write(h.dev.join("vfio/9"), "");

        let tpus = collect_tpus(&h.dev, &h.sys);

        let vfio = h.dev.join("vfio");
        assert_eq!(
            tpus,
            [
                tpu(&vfio.join("0"), Some("0x0062")),
                tpu(&vfio.join("1"), Some("0x0062")),
                tpu(&vfio.join("12"), Some("0x0062")),
            ]
        );
    }

    #[test]
    fn no_tpus_without_device_nodes() {
        let h = host();
        assert!(collect_tpus(&h.dev, &h.sys).is_empty());
        assert!(collect_tpus(&h.dev.join("missing"), &h.sys.join("missing")).is_empty());
    }

    #[test]
    fn pci_ids_parse_from_sysfs_text() {
        let h = host();
        let id = h.sys.join("id");
        for (text, want) in [("0x1ae0\n", Some(0x1ae0)), ("0x0062", Some(0x62)), ("1ae0\n", None), ("0xzz\n", None)] {
            write(id.clone(), text);
            assert_eq!(read_pci_id(&id), want, "{text:?}");
        }
        assert_eq!(format_pci_id(0x62), "0x0062");
    }
}
