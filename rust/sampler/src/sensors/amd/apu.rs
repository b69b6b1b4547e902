//! AMD APUs: GPUs that share their package with the CPU cores (Ryzen processors with Radeon
//! graphics, Strix Halo, the Instinct MI300A).
//!
//! # What an APU's figures cover
//!
//! The amdgpu driver reports socket power: its hwmon documentation (`amdgpu_pm.c`, rendered in
//! the kernel's `Documentation/gpu/amdgpu/thermal.rst`) says of `power1_average` and
//! `power1_input` "power used by the SoC in microWatts. On APUs this includes the CPU". AMD SMI
//! reads the same firmware figures (`current_socket_power`, `average_socket_power`,
//! `socket_power`, and the energy accumulator beside them). On an APU each of them is the whole
//! socket: CPU cores, GPU and the rest of the SoC. Added to the CPU package counter (RAPL) they
//! would count the CPU twice.
//!
//! So an APU's source measures [`Domain::Module`], like a psys zone over a package: shown
//! beside the components, never added to the totals. The integrated GPU gets no figure of its
//! own. Subtracting the package counter from the socket figure to make one is not done: AMD
//! documents no relation between the two (RAPL's package counter on an APU covers the cores on
//! some parts and nearly the whole SoC on others, by what users measure), they come from
//! different firmware paths on different clocks (a counter, and a power averaged over a window),
//! and their difference can be negative over a short region; clamping it would invent a figure.
//!
//! # How an APU is told
//!
//! Any one of these, for the GPU at a PCI address:
//!
//! 1. Its amdgpu hwmon directory has `in1_label` `vddnb`: the driver shows the northbridge
//!    voltage on APUs only (`hwmon_attributes_visible` in `amdgpu_pm.c`: "only APUs have
//!    vddnb"; the MI300A, GC 9.4.3, excepted).
//! 2. Its KFD topology node (`class/kfd/kfd/topology/nodes/N/properties`, matched by
//!    `location_id` and `domain`) has CPU cores: `cpu_cores_count` is "the number of latency
//!    (= CPU) cores present on this HSA node ... 0 for a node with no such cores, e.g. a
//!    discrete HSA GPU" (the KFD topology's sysfs ABI). APUs described by the firmware's CRAT
//!    table have such a node; newer kernels give an APU's GPU a node of its own.
//! 3. AMD SMI types the processor `AMDSMI_PROCESSOR_TYPE_AMD_APU`.
//! 4. The MI300A, which none of the above shows: its PCI device id (vendor `0x1002`, device
//!    `0x74a0`, or `0x74b4` for its virtual function, as AMD SMI's own table of names has
//!    them), or AMD SMI's market name containing `MI300A`.

use std::fs;
use std::path::Path;

use super::sysfs;
use crate::sensors::{Domain, SourceInfo};

/// PCI device ids of the Instinct MI300A (physical function, virtual function).
const MI300A_DEVICE_IDS: [u32; 2] = [0x74a0, 0x74b4];
const AMD_PCI_VENDOR: u32 = 0x1002;

/// What shows that the GPU at `bdf` is an APU, in words, or `None` for a discrete GPU.
/// `hwmon_dir` is its amdgpu hwmon directory, `smi_apu` whether AMD SMI types it as an APU,
/// `smi_name` AMD SMI's market name.
pub(super) fn evidence(
    sys: &Path,
    bdf: &str,
    hwmon_dir: Option<&Path>,
    smi_apu: bool,
    smi_name: Option<&str>,
) -> Option<String> {
    if let Some(dir) = hwmon_dir {
        let label = fs::read_to_string(dir.join("in1_label")).unwrap_or_default();
        if label.trim() == "vddnb" {
            return Some(
                "its amdgpu hwmon directory shows the northbridge voltage (vddnb), which the \
                 driver shows on APUs only"
                    .into(),
            );
        }
    }
    if let Some(k) = sysfs::kfd_gpus(sys)
        .into_iter()
        .find(|k| k.bdf == bdf && k.cpu_cores > 0)
    {
        return Some(format!(
            "its KFD topology node has {} CPU cores beside its SIMDs",
            k.cpu_cores
        ));
    }
    if smi_apu {
        return Some("AMD SMI types it as an APU".into());
    }
    if let Some(id) = mi300a_device(sys, bdf) {
        return Some(format!(
            "PCI device {id:#06x} is the Instinct MI300A, an APU"
        ));
    }
    if smi_name.is_some_and(|n| n.to_ascii_uppercase().contains("MI300A")) {
        return Some("AMD SMI names it an MI300A, an APU".into());
    }
    None
}

/// The PCI device id at `bdf` where it is an MI300A's.
fn mi300a_device(sys: &Path, bdf: &str) -> Option<u32> {
    let dir = sys.join("bus/pci/devices").join(bdf);
    let hex = |file: &str| -> Option<u32> {
        let text = fs::read_to_string(dir.join(file)).ok()?;
        u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
    };
    let device = hex("device")?;
    (hex("vendor") == Some(AMD_PCI_VENDOR) && MI300A_DEVICE_IDS.contains(&device)).then_some(device)
}

/// Makes an APU's source what it measures: the whole socket, beside the package.
pub(super) fn mark(info: &mut SourceInfo, why: &str) {
    info.domain = Domain::Module;
    info.label.push_str(&format!(
        " (APU socket power: CPU cores, GPU and SoC together, as {why}; it contains the CPU \
         package, so it is shown beside it and never added to totals, and the integrated GPU \
         has no figure of its own)"
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mi300a_by_pci_id_only_for_amd() {
        let d = std::env::temp_dir().join(format!("carbonctx-apu-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let dev = |bdf: &str, vendor: &str, device: &str| {
            let p = d.join("bus/pci/devices").join(bdf);
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("vendor"), vendor).unwrap();
            fs::write(p.join("device"), device).unwrap();
        };
        dev("0000:02:00.0", "0x1002\n", "0x74a0\n");
        dev("0000:03:00.0", "0x1002\n", "0x74a1\n");
        dev("0000:04:00.0", "0x10de\n", "0x74b4\n");
        assert_eq!(mi300a_device(&d, "0000:02:00.0"), Some(0x74a0));
        assert_eq!(mi300a_device(&d, "0000:03:00.0"), None, "an MI300X");
        assert_eq!(mi300a_device(&d, "0000:04:00.0"), None, "not AMD's");
        assert!(evidence(&d, "0000:03:00.0", None, false, Some("AMD Instinct MI300X")).is_none());
        assert!(evidence(&d, "0000:03:00.0", None, false, Some("MI300A")).is_some());
        fs::remove_dir_all(&d).unwrap();
    }
}
