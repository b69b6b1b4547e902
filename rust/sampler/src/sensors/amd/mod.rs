//! AMD GPUs: AMD SMI (`libamd_smi.so`, loaded at run time), else the amdgpu driver's hwmon
//! files.
//!
//! # Sources
//!
//! Each AMD GPU the process may see becomes one source, numbered as the ROCm runtime numbers
//! every AMD GPU of the machine (KFD topology order, which `ROCR_VISIBLE_DEVICES` indices
//! follow; PCI order for GPUs the topology does not list):
//!
//! - `amdsmi:<index>`, through AMD SMI: the energy accumulator (`amdsmi_get_energy_count`;
//!   joules = count × `counter_resolution` µJ; 64 bits on MI200 and later Instincts, but 32 in
//!   the firmware of RDNA parts and the MI100, so on a part not known to keep 64 bits a count
//!   that fits in 32 bits and steps back as a wrap would is carried past 2^32, and any other
//!   step back is a reset) as a [`Method::Counter`]; where there
//!   is no counter (or it reads `UINT32_MAX`, amdgpu's mark of a counter not to be trusted), the
//!   socket power of `amdsmi_get_power_info` (whole watts) integrated,
//!   [`Method::IntegratedPower`].
//!   While the GPU sleeps (runtime-suspended, see `runpm.rs`) AMD SMI is not asked: the counter
//!   stands where it was (and continues from there where the firmware counts again from 0 after
//!   the sleep), power reads 0 W.
//! - `hwmon:amdgpu:<pci address>:power<N>`, where AMD SMI is absent or does not list the GPU:
//!   the socket power in `powerN_input` or `powerN_average` (µW) of the channel labelled `PPT`
//!   or `slowPPT` (channel 1 on every part known; never `fastPPT`), integrated (see `hwmon.rs`).
//!   Where AMD SMI measures the same GPU (same PCI address) the hwmon source is an alternative,
//!   never added. A GPU asleep (runtime-suspended) is kept, read as asleep without waking it,
//!   and read normally once it wakes (see `runpm.rs`).
//!
//! On an APU these figures are the whole socket's, CPU cores included: the source then measures
//! [`Domain::Module`] and is never added to the package (see [`apu`]).
//!
//! Each source's [`SourceInfo::uuid`] is ROCr's UUID (`GPU-` and 16 hex digits, from the
//! topology's or the PCI device's `unique_id`), which the visible-device variables accept.
//!
//! # Paired dies
//!
//! Some parts hold two or more GPUs in one package and report the package's energy and power on
//! one of them: the MI250X's second GCD reads 0, and the partitions of an MI300X in a
//! partitioned mode (which share its PCI address) other than the first read 0 or nothing. The
//! rule: a GPU whose every reading (energy count and power) is 0 at discovery, or that has no
//! reading at all while a lower-numbered GPU at its PCI address is measured, is no measurement.
//! It is reported as unavailable, naming its partner die (the nearest lower-numbered measured
//! GPU of the same name for a zero reader, at the same address for one without readings), and
//! the partner's label says that it covers the package. The partitions of one device share its
//! one energy counter and power whatever each reads (AMD SMI may give every partition the
//! device's figures): a partition at the PCI address of a measured one is counted there, and a
//! partition measured alone is labelled as the whole device. So nothing is counted twice, and
//! no zero is shown as a GPU that used no energy. Through hwmon, a zero means every power file that
//! reads says 0 W (one file at 0 beside another that reads is a measured GPU). A GPU asleep
//! (its PCI device's `power/runtime_status` says so) is never taken for a paired die, whatever
//! AMD SMI reads for it.
//!
//! # Which GPUs are visible
//!
//! As the ROCm runtime reads the variables (the caller passes their values):
//!
//! 1. `ROCR_VISIBLE_DEVICES` first: unset means every GPU, empty none; otherwise indices (ROCr's
//!    numbering of every GPU; `0x` hex as `strtol` reads it) or UUIDs (`GPU-` and a unique
//!    prefix of the 16 hex digits, any case), the GPUs then numbered in list order. The list ends
//!    at its first entry that names no GPU or repeats one (reported as unavailable).
//! 2. Then HIP's list (`HIP_VISIBLE_DEVICES`, else `CUDA_VISIBLE_DEVICES`, else
//!    `GPU_DEVICE_ORDINAL`) picks among the GPUs ROCr left, by their new numbers, same rules.

mod apu;
mod ffi;
mod hwmon;
mod layout;
mod pairs;
mod runpm;
mod smi;
mod sysfs;
mod visible;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::sensors::{Domain, Found, SourceInfo, Unavailable};
use ffi::Processor;
use pairs::{pair_dies, Measured, Unmeasured};
use smi::{asleep_probe, smi_source, Probe, SmiGpu};

const BACKEND: &str = "amdsmi";
const HWMON_BACKEND: &str = "hwmon";
/// The id prefix of the hwmon sources of this module.
pub const HWMON_ID_PREFIX: &str = "hwmon:amdgpu:";
/// AMD SMI reads the driver's metrics table; its counters move about every millisecond, but a
/// call costs tens of microseconds to milliseconds, as NVML's do.
const INTERVAL: Duration = Duration::from_millis(20);

/// What AMD GPU discovery needs; the caller fills it from its settings (this crate reads no
/// environment variable).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AmdOptions<'a> {
    /// `libamd_smi.so` through the loader's search path when `None`.
    pub library: Option<&'a Path>,
    /// `ROCR_VISIBLE_DEVICES` (`None`: unset).
    pub rocr_visible_devices: Option<&'a str>,
    /// What HIP reads: `HIP_VISIBLE_DEVICES`, else `CUDA_VISIBLE_DEVICES`, else
    /// `GPU_DEVICE_ORDINAL` (`None`: all unset).
    pub hip_visible_devices: Option<&'a str>,
}

/// Whether a source is an AMD GPU of this module (AMD SMI or amdgpu hwmon), an APU's socket
/// ([`Domain::Module`]) included: numbered, made visible and owned as the GPUs are.
pub fn is_amd_gpu(info: &SourceInfo) -> bool {
    matches!(info.domain, Domain::Gpu | Domain::Module)
        && (info.backend == BACKEND
            || (info.backend == HWMON_BACKEND && info.id.starts_with(HWMON_ID_PREFIX)))
}

/// The AMD GPUs among `gpus` (index and UUID of each, as a node's sampler published them) that
/// the two variables make visible, read as [`discover`] reads them; and the entries that name
/// nothing.
pub fn visible_among(
    gpus: &[(u32, Option<String>)],
    rocr_visible_devices: Option<&str>,
    hip_visible_devices: Option<&str>,
) -> (Vec<u32>, Vec<Unavailable>) {
    let count = gpus.iter().map(|g| g.0 + 1).max().unwrap_or(0);
    let uuids: Vec<Option<String>> = (0..count)
        .map(|i| gpus.iter().find(|g| g.0 == i).and_then(|g| g.1.clone()))
        .collect();
    let sel = visible::select(&uuids, rocr_visible_devices, hip_visible_devices);
    (sel.indices, sel.unavailable)
}

/// An AMD GPU as discovery first sees it.
struct Gpu {
    bdf: String,
    index: u32,
    uuid: Option<String>,
    smi: Option<(Processor, String)>,
    /// AMD SMI's own UUID, for labels where ROCr's is unknown.
    smi_uuid: Option<String>,
    /// AMD SMI types it as an APU.
    smi_apu: bool,
    hwmon: Option<hwmon::AmdgpuHwmon>,
}

/// Finds the AMD GPUs this process may see. Never fails: what cannot be used is in
/// [`Found::unavailable`] with what to do about it. A machine with neither the library (at its
/// default name) nor any sign of an AMD GPU in sysfs (the amdgpu driver, a KFD GPU node) has
/// nothing to report.
pub fn discover(sys: &Path, opts: &AmdOptions<'_>) -> Found {
    let mut found = Found::default();
    let smi = match ffi::open(opts.library) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            // No library and no sign of an AMD GPU: nothing to measure, nothing to explain.
            if e.loaded || opts.library.is_some() || sysfs::amd_gpu_present(sys) {
                found.unavailable.push(*e.unavailable);
            }
            None
        }
    };
    let mut listed: Vec<Listed> = Vec::new();
    if let Some(smi) = &smi {
        match smi.gpus() {
            Ok(procs) => {
                for (k, (p, apu)) in procs.into_iter().enumerate() {
                    let bdf = smi.bdf(p).unwrap_or_else(|| format!("unknown-{k}"));
                    let name = smi.name(p).unwrap_or_else(|| "AMD GPU".into());
                    listed.push((p, bdf, name, smi.uuid(p), apu));
                }
            }
            Err((call, rc)) => found.unavailable.push(smi.unavailable(
                smi.path.display().to_string(),
                format!("{call} failed: {} (status {rc})", smi.message(rc)),
                ffi::hint_for(rc),
            )),
        }
    }
    let gpus = machine_gpus(sys, listed, hwmon::find(sys));
    if gpus.is_empty() {
        if smi.is_some() {
            found.unavailable.push(Unavailable {
                backend: BACKEND,
                what: opts
                    .library
                    .map_or("libamd_smi.so".into(), |p| p.display().to_string()),
                reason: "AMD SMI lists no AMD GPU".into(),
                hint: "check that the GPUs are visible to this machine or container (amd-smi \
                       list)"
                    .into(),
            });
        }
        return found;
    }
    let uuids: Vec<Option<String>> = gpus.iter().map(|g| g.uuid.clone()).collect();
    let sel = visible::select(&uuids, opts.rocr_visible_devices, opts.hip_visible_devices);
    found.unavailable.extend(sel.unavailable);
    if sel.indices.is_empty()
        && (opts.rocr_visible_devices.is_some() || opts.hip_visible_devices.is_some())
    {
        found.unavailable.push(Unavailable {
            backend: BACKEND,
            what: format!(
                "ROCR_VISIBLE_DEVICES={:?}, HIP_VISIBLE_DEVICES={:?}",
                opts.rocr_visible_devices, opts.hip_visible_devices
            ),
            reason: "the visible-device variables leave no AMD GPU visible to this process".into(),
            hint: "unset them or list the GPUs to measure".into(),
        });
    }
    // Measured GPUs with their names, for pairing the dies that read zero.
    let mut measured: Vec<Measured> = Vec::new();
    let mut unmeasured: Vec<Unmeasured> = Vec::new();
    let mut from_hwmon: Vec<hwmon::HwmonGpu> = Vec::new();
    for &i in &sel.indices {
        let g = &gpus[i as usize];
        let apu = apu::evidence(
            sys,
            &g.bdf,
            g.hwmon.as_ref().map(|h| h.dir.as_path()),
            g.smi_apu,
            g.smi.as_ref().map(|s| s.1.as_str()),
        );
        let mut paired = false;
        if let (Some(_), Some((_, name))) = (&smi, &g.smi) {
            // A partition of a device already measured (an MI300X in CPX mode): the device has
            // one energy counter, which every partition may read; counted once.
            if measured.iter().any(|m| m.bdf == g.bdf) {
                unmeasured.push(Unmeasured {
                    index: g.index,
                    name: name.clone(),
                    bdf: g.bdf.clone(),
                    label: label(name, g),
                    unusable: None,
                    shared: true,
                });
                continue;
            }
        }
        if let (Some(smi), Some((p, name))) = (&smi, &g.smi) {
            match smi_source(smi, *p, g, sys, name) {
                Probe::Source(mut s) => {
                    if let Some(why) = &apu {
                        apu::mark(&mut s.info, why);
                    }
                    let partitions = gpus.iter().filter(|o| o.bdf == g.bdf).count();
                    if partitions > 1 {
                        s.info.label.push_str(&format!(
                            " (the whole device: its {partitions} partitions share one energy \
                             counter)"
                        ));
                    }
                    measured.push(Measured {
                        name: name.clone(),
                        bdf: g.bdf.clone(),
                        source: *s,
                    })
                }
                probe => {
                    let probe = asleep_probe(probe, sys, g, smi, name);
                    paired = matches!(probe, Probe::Zero);
                    unmeasured.push(Unmeasured {
                        index: g.index,
                        name: name.clone(),
                        bdf: g.bdf.clone(),
                        label: label(name, g),
                        unusable: match probe {
                            Probe::Unusable(u) => Some(u),
                            _ => None,
                        },
                        shared: false,
                    })
                }
            }
        }
        // A die that AMD SMI reads as 0 reports on its partner: hwmon must not count it either.
        if let (Some(h), false) = (&g.hwmon, paired) {
            let owner = hwmon::Owner {
                sys,
                index: g.index,
                uuid: g.uuid.clone(),
                label: label("AMD GPU", g),
            };
            match hwmon::source(h, &owner) {
                Ok(mut s) => {
                    if let Some(why) = &apu {
                        apu::mark(&mut s.info, why);
                    }
                    from_hwmon.push(s)
                }
                Err(u) => found.unavailable.push(*u),
            }
        }
    }
    pair_dies(&mut found.unavailable, &mut measured, unmeasured);
    // AMD SMI's first: discovery keeps the first source of a device and lists the rest as
    // alternatives.
    for m in measured {
        found.sources.push(Box::new(m.source));
    }
    for s in from_hwmon {
        found.sources.push(Box::new(s));
    }
    found
}

/// A GPU AMD SMI lists: handle, PCI address, name, AMD SMI's UUID, typed as an APU.
type Listed = (Processor, String, String, Option<String>, bool);

/// Every AMD GPU of the machine, from AMD SMI and hwmon, one entry per GPU (hwmon joined to
/// AMD SMI by PCI address), indexed as the runtime numbers them.
fn machine_gpus(sys: &Path, listed: Vec<Listed>, hw: Vec<hwmon::AmdgpuHwmon>) -> Vec<Gpu> {
    let mut gpus: Vec<Gpu> = Vec::new();
    for (p, bdf, name, smi_uuid, smi_apu) in listed {
        gpus.push(Gpu {
            bdf,
            index: 0,
            uuid: None,
            smi: Some((p, name)),
            smi_uuid,
            smi_apu,
            hwmon: None,
        });
    }
    for h in hw {
        // Partitions share an address: hwmon belongs to the device, i.e. the first of them.
        match gpus.iter_mut().find(|g| g.bdf == h.bdf) {
            Some(g) if g.hwmon.is_none() => g.hwmon = Some(h),
            Some(_) => {}
            None => gpus.push(Gpu {
                bdf: h.bdf.clone(),
                index: 0,
                uuid: None,
                smi: None,
                smi_uuid: None,
                smi_apu: false,
                hwmon: Some(h),
            }),
        }
    }
    let bdfs: Vec<String> = gpus.iter().map(|g| g.bdf.clone()).collect();
    for (g, n) in gpus.iter_mut().zip(sysfs::number(sys, &bdfs)) {
        g.index = n.index;
        g.uuid = n.uuid;
    }
    gpus.sort_by_key(|g| g.index);
    gpus
}

fn label(name: &str, g: &Gpu) -> String {
    match g.uuid.as_ref().or(g.smi_uuid.as_ref()) {
        Some(u) => format!("{name} [{u}] (PCI {})", g.bdf),
        None => format!("{name} [index {}] (PCI {})", g.index, g.bdf),
    }
}
