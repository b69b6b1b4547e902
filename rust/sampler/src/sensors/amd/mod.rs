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
//!   joules = count × `counter_resolution` µJ, a 64-bit count, so no wrap in practice: a step
//!   back is handled as a reset) as a [`Method::Counter`]; where there is no counter, the socket
//!   power of `amdsmi_get_power_info` (whole watts) integrated, [`Method::IntegratedPower`].
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
//! the partner's label says that it covers the package. So nothing is counted twice, and no zero
//! is shown as a GPU that used no energy. Through hwmon, a zero means every power file that
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
mod sysfs;
mod visible;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::sensors::{
    CounterSpec, Domain, EnergySource, Found, Method, Reading, SourceInfo, Unavailable,
};
use ffi::{AmdSmi, Processor};
use layout::PowerField;
use pairs::{pair_dies, Measured, Unmeasured};

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

/// One GPU read through AMD SMI.
struct SmiGpu {
    smi: Arc<AmdSmi>,
    dev: Processor,
    power: Option<PowerField>,
    info: SourceInfo,
    /// Its PCI device's runtime PM status: while it sleeps AMD SMI is not asked (see
    /// [`runpm`]).
    status: runpm::Status,
    /// The energy count, kept continuous across the GPU's sleeps.
    count: runpm::SleepCounter,
    /// The latest reading is of the GPU asleep, not read (see [`runpm::unread_low_w`]).
    asleep: bool,
}

impl SmiGpu {
    /// What a sleeping GPU reads as: its counter where it stood, or [`runpm::ASLEEP_W`].
    fn asleep(&mut self) -> Reading {
        self.asleep = true;
        match self.power {
            None => Reading::Counter(self.count.asleep()),
            Some(_) => Reading::Power(runpm::ASLEEP_W),
        }
    }
}

impl EnergySource for SmiGpu {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read(&mut self) -> Result<Reading, Error> {
        // Asleep: AMD SMI is not asked (its reads go through the driver, which wakes the GPU
        // on older kernels and refuses the read on newer ones).
        if self.status.read().asleep() {
            return Ok(self.asleep());
        }
        self.asleep = false;
        let read = match self.power {
            None => self
                .smi
                .energy(self.dev)
                .map(|(count, _)| Reading::Counter(self.count.awake(count)))
                .map_err(|rc| self.smi.error("amdsmi_get_energy_count", rc)),
            Some(field) => self
                .smi
                .power_field(self.dev, field)
                .map(Reading::Power)
                .map_err(|rc| self.smi.error("amdsmi_get_power_info", rc)),
        };
        match read {
            // It fell asleep between the status and the call.
            Err(_) if self.status.read().asleep() => Ok(self.asleep()),
            r => r,
        }
    }

    fn unread_low_w(&self) -> f64 {
        runpm::unread_low_w(self.asleep)
    }
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
        if let (Some(smi), Some((p, name))) = (&smi, &g.smi) {
            match smi_source(smi, *p, g, sys, name) {
                Probe::Source(mut s) => {
                    if let Some(why) = &apu {
                        apu::mark(&mut s.info, why);
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

enum Probe {
    Source(Box<SmiGpu>),
    /// Every reading is 0: a die whose package reports on another.
    Zero,
    Unusable(Box<Unavailable>),
}

fn smi_source(smi: &Arc<AmdSmi>, p: Processor, g: &Gpu, sys: &Path, name: &str) -> Probe {
    let status = runpm::Status::of(sys, &g.bdf, g.hwmon.as_ref().map(|h| h.dir.as_path()));
    let base = label(name, g);
    // What it counts while asleep, where runtime PM may put it to sleep.
    let note = runpm::sleep_bias_note(&status.read()).map_or_else(String::new, |n| format!(" {n}"));
    let info = |method, counter, label: String| SourceInfo {
        id: format!("amdsmi:{}", g.index),
        backend: BACKEND,
        domain: Domain::Gpu,
        index: g.index,
        label,
        method,
        counter,
        interval: INTERVAL,
        path: Some(smi.path.clone()),
        uuid: g.uuid.clone(),
    };
    let energy = smi.energy(p);
    if let Ok((count, res)) = energy {
        if count > 0 && res.is_finite() && res > 0.0 {
            let spec = CounterSpec {
                joules_per_unit: f64::from(res) * 1e-6,
                wrap: None,
            };
            return Probe::Source(Box::new(SmiGpu {
                smi: Arc::clone(smi),
                dev: p,
                power: None,
                info: info(Method::Counter, Some(spec), format!("{base}{note}")),
                status,
                count: runpm::SleepCounter::new(count),
                asleep: false,
            }));
        }
    }
    let power = smi.power(p);
    if let Ok(fields) = &power {
        // The first field that reads something; else the first supported one (it reads 0).
        if let Some((field, _)) = fields.iter().find(|(_, w)| w.is_some_and(|w| w > 0.0)) {
            let label = format!("{base} (power only: {} integrated){note}", field.name());
            return Probe::Source(Box::new(SmiGpu {
                smi: Arc::clone(smi),
                dev: p,
                power: Some(*field),
                info: info(Method::IntegratedPower, None, label),
                status,
                count: runpm::SleepCounter::new(0),
                asleep: false,
            }));
        }
    }
    let energy_zero = matches!(energy, Ok((0, _)));
    let power_zero = match &power {
        Ok(f) => f.iter().any(|(_, w)| w.is_some()),
        Err(_) => false,
    };
    if energy_zero || power_zero {
        return Probe::Zero;
    }
    let why = |r: Result<(), ffi::Status>| match r {
        Ok(()) => "unsupported".to_string(),
        Err(rc) => format!("{} (status {rc})", smi.message(rc)),
    };
    let energy_rc = energy.map(|_| ());
    let power_rc = power.map(|_| ());
    let code = energy_rc
        .err()
        .or(power_rc.err())
        .unwrap_or(ffi::STATUS_NOT_SUPPORTED);
    let layout_note = if smi.layout == layout::PowerLayout::Unknown {
        format!(
            " (power is not read from AMD SMI {}: its power structure is not known here)",
            smi.version
        )
    } else {
        String::new()
    };
    Probe::Unusable(Box::new(smi.unavailable(
        format!("{base} ({})", smi.path.display()),
        format!(
            "neither the energy counter nor power can be read: amdsmi_get_energy_count: {}; \
             amdsmi_get_power_info: {}{layout_note}",
            why(energy_rc),
            why(power_rc)
        ),
        ffi::hint_for(code),
    )))
}

/// A GPU AMD SMI does not measure because it is asleep (runtime-suspended, see [`runpm`]) is no
/// paired die: its zeros or failures say so, and its hwmon source (if any) measures it.
fn asleep_probe(probe: Probe, sys: &Path, g: &Gpu, smi: &AmdSmi, name: &str) -> Probe {
    let state = runpm::Status::of(sys, &g.bdf, g.hwmon.as_ref().map(|h| h.dir.as_path())).read();
    let runpm::State::Asleep(word) = &state else {
        return probe;
    };
    let then = if g.hwmon.is_some() {
        "its amdgpu hwmon source measures it, as asleep until it wakes"
    } else {
        "it has no amdgpu hwmon directory to measure it by"
    };
    let note = format!("the GPU is asleep (runtime PM status {word}): {then}");
    match probe {
        Probe::Zero => Probe::Unusable(Box::new(smi.unavailable(
            format!("{} ({})", label(name, g), smi.path.display()),
            format!("AMD SMI reads 0 for it, not as a paired die: {note}"),
            "",
        ))),
        Probe::Unusable(mut u) => {
            u.reason.push_str(&format!(" ({note})"));
            Probe::Unusable(u)
        }
        p => p,
    }
}
