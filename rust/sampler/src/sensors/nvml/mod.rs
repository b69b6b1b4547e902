//! NVIDIA GPUs through NVML, loaded at run time.
//!
//! The library (`libnvidia-ml.so.1`, or `Roots::nvml_library`) is opened with `dlopen` when
//! [`discover`] runs; nothing links against it, so a machine without the driver simply reports
//! the backend as unavailable. Each visible GPU becomes one source, `nvml:<index>` with NVML's
//! index:
//!
//! - where the GPU has the total-energy counter (Volta and later), a [`Method::Counter`] source
//!   reading millijoules;
//! - otherwise a [`Method::IntegratedPower`] source reading board power in watts
//!   (`nvmlDeviceGetPowerUsage`: instantaneous on the GPUs before Volta, which are the ones
//!   without the counter; nvml.h gives a one-second average only from Ampere, which has it).
//!
//! The counter moves only about every 100 ms; where the driver also offers its buffer of timed
//! power samples (about every 20 ms, `nvmlDeviceGetSamples`), [`EnergySource::shape`] uses them
//! to place each update's energy in time (see `samples`).
//!
//! # Which GPUs are visible
//!
//! `CUDA_VISIBLE_DEVICES` is honoured the way CUDA reads it: unset means every GPU; an empty
//! value means none; otherwise a comma-separated list of indices, `GPU-…` UUIDs or unique UUID
//! prefixes, and the list ends at the first entry that names no GPU. A MIG instance (`MIG-…`,
//! or the legacy `MIG-GPU-…/<gi>/<ci>`) stands for its parent GPU, measured whole: NVML's energy
//! counter and power are the physical GPU's, which its instances share (the source's label says
//! so). The instances are found through NVML (`nvmlDeviceGetMigMode`,
//! `nvmlDeviceGetMaxMigDeviceCount`, `nvmlDeviceGetMigDeviceHandleByIndex`, and
//! `nvmlDeviceGetUUID` on each instance's handle); a `MIG-…` entry that names none of them is
//! reported as unavailable, and ends the list as CUDA would. CUDA gives a process one MIG
//! instance, the first listed (NVIDIA's MIG user guide): another GPU's instance listed after it
//! is not measured, and is reported as unavailable. [`list_gpus`] gives every GPU with
//! its instances and their slices (see `mig`), for the caller to give each process on an
//! instance its instance's share of the GPU.
//!
//! Indices are read in NVML's order, which is PCI bus order. CUDA's default order
//! (`CUDA_DEVICE_ORDER=FASTEST_FIRST`) can differ on machines with unlike GPUs, so index `0`
//! may name a different GPU for CUDA than for NVML unless `CUDA_DEVICE_ORDER=PCI_BUS_ID` is
//! set. UUIDs are exact; where indices select GPUs and the order is not `PCI_BUS_ID`, each
//! source's label says so.

mod ffi;
mod mig;
mod samples;
mod visible;

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::sensors::{
    CounterSpec, Domain, EnergySource, Found, Method, Reading, Roots, SourceInfo, Unavailable,
};
use ffi::{
    error_message, hint_for, nvml_code, Handle, Nvml, RawSample, ERROR_FUNCTION_NOT_FOUND,
    ERROR_INSUFFICIENT_SIZE, ERROR_NOT_SUPPORTED,
};
pub use mig::MigInstance;
use samples::PowerSamples;

const BACKEND: &str = "nvml";
/// NVML calls serialise in the driver; polling faster buys little and slows other users.
const INTERVAL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Energy,
    Power,
}

/// One GPU, read through NVML.
struct GpuSource {
    nvml: Arc<Nvml>,
    dev: Handle,
    kind: Kind,
    info: SourceInfo,
    /// The driver's power samples; `None` once the library or GPU turned out not to offer them.
    samples: Option<PowerSamples>,
    buf: Vec<RawSample>,
}

/// Samples asked for in one call (five seconds' worth at one every 20 ms).
const SAMPLE_BUFFER: usize = 256;
/// The most room made for a driver that will not fill a smaller buffer (see `fetch_samples`).
const MAX_SAMPLE_BUFFER: usize = 16_384;

impl GpuSource {
    /// Fetches the samples newer than the last one seen. A library or GPU without them turns
    /// shaping off for good; any other failure leaves the samples as they are.
    fn fetch_samples(&mut self) {
        let Some(samples) = self.samples.as_mut() else {
            return;
        };
        // The realtime clock's offset from the monotonic one, read between two monotonic reads.
        let m0 = crate::now_ns();
        let rt = realtime_ns();
        let m1 = crate::now_ns();
        let mono = m0 + (m1 - m0) / 2;
        samples.clock(rt as i64 - mono as i64, mono);
        // A full buffer may leave newer samples behind: ask again, a few times at most.
        for _ in 0..4 {
            let got = self
                .nvml
                .power_samples(self.dev, samples.last_seen_us, &mut self.buf);
            match got {
                Ok((n, value_type)) => {
                    for s in &self.buf[..n] {
                        // A value of a type this code does not know is refused like a bad one
                        // (and not asked for again).
                        let mw = ffi::sample_value(value_type, s.value).unwrap_or(f64::NAN);
                        samples.add(s.time_us, mw);
                    }
                    if n < self.buf.len() {
                        return;
                    }
                }
                // A driver that refuses a buffer smaller than what it holds: as nvml.h says,
                // ask how many there are (samples NULL) and make room, up to a bound; where
                // even that is too small the samples cannot be fetched, and are not asked for.
                Err(ERROR_INSUFFICIENT_SIZE) => {
                    let need = self.nvml.power_sample_count(self.dev, samples.last_seen_us);
                    match need {
                        Ok(n) if n > MAX_SAMPLE_BUFFER => {
                            self.samples = None;
                            return;
                        }
                        // Room to spare for the samples taken meanwhile.
                        Ok(n) if n >= self.buf.len() => {
                            let room = (n + n / 4 + 16).min(MAX_SAMPLE_BUFFER);
                            self.buf.resize(room, RawSample::default());
                        }
                        _ => return,
                    }
                }
                Err(rc) => {
                    if rc == ERROR_NOT_SUPPORTED || rc == ERROR_FUNCTION_NOT_FOUND {
                        self.samples = None;
                    }
                    return;
                }
            }
        }
    }
}

/// CLOCK_REALTIME in ns, the clock NVML stamps its samples with.
fn realtime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl EnergySource for GpuSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read(&mut self) -> Result<Reading, Error> {
        match self.kind {
            Kind::Energy => self
                .nvml
                .read_energy(self.dev)
                .map(Reading::Counter)
                .map_err(|rc| self.nvml.error("nvmlDeviceGetTotalEnergyConsumption", rc)),
            Kind::Power => self
                .nvml
                .read_power(self.dev)
                .map(Reading::Power)
                .map_err(|rc| self.nvml.error("nvmlDeviceGetPowerUsage", rc)),
        }
    }

    fn shape(&mut self, from_ns: u64, to_ns: u64) -> Option<Vec<(u64, f64)>> {
        if self.kind != Kind::Energy {
            return None;
        }
        self.fetch_samples();
        self.samples.as_ref()?.shape(from_ns, to_ns)
    }
}

/// Finds the GPUs NVML can measure, given the values of `CUDA_VISIBLE_DEVICES` and
/// `CUDA_DEVICE_ORDER` (`None`: unset; see the module documentation). The caller reads them
/// (the Python settings do); this crate reads no environment variable.
///
/// Never fails: a missing library, driver or GPU is reported in [`Found::unavailable`] with
/// what to do about it.
pub fn discover(
    roots: &Roots,
    cuda_visible_devices: Option<&str>,
    cuda_device_order: Option<&str>,
) -> Found {
    let mut found = Found::default();
    let nvml = match ffi::open(roots) {
        Ok(nvml) => Arc::new(nvml),
        Err(u) => {
            found.unavailable.push(*u);
            return found;
        }
    };
    let lib = nvml.path.display().to_string();
    let count = match nvml.count() {
        Ok(n) => n,
        Err(e) => {
            found.unavailable.push(nvml.unavailable(
                lib,
                format!("cannot count GPUs: {e}"),
                hint_for(nvml_code(&e)),
            ));
            return found;
        }
    };
    if count == 0 {
        found.unavailable.push(nvml.unavailable(
            lib,
            "NVML reports no GPU".into(),
            "check that the GPUs are visible to this machine or container (nvidia-smi)".into(),
        ));
        return found;
    }

    let selection = visible::select(&nvml, count, cuda_visible_devices);
    found.unavailable.extend(selection.unavailable);
    if selection.indices.is_empty() && cuda_visible_devices.is_some() {
        found.unavailable.push(nvml.unavailable(
            format!(
                "CUDA_VISIBLE_DEVICES={:?}",
                cuda_visible_devices.unwrap_or("")
            ),
            "CUDA_VISIBLE_DEVICES leaves no measurable GPU visible to this process".into(),
            "unset CUDA_VISIBLE_DEVICES or list the GPUs to measure in it".into(),
        ));
    }
    let pci_order = cuda_device_order.map(str::trim) == Some("PCI_BUS_ID");
    for (index, by_index) in selection.indices {
        let mig = selection
            .mig
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, entry)| entry.as_str());
        match gpu_source(&nvml, index, by_index && !pci_order, mig) {
            Ok(s) => found.sources.push(Box::new(s)),
            Err(u) => found.unavailable.push(*u),
        }
    }
    found
}

/// The GPUs among `gpus` (NVML index and UUID of each, as a node's sampler published them)
/// that `CUDA_VISIBLE_DEVICES` (`None`: unset) makes visible, in its order, read exactly as
/// [`discover`] reads it; and the entries that name nothing usable. Indices are NVML's.
pub fn visible_among(
    gpus: &[(u32, Option<String>)],
    cuda_visible_devices: Option<&str>,
) -> (Vec<u32>, Vec<Unavailable>) {
    let count = gpus.iter().map(|g| g.0 + 1).max().unwrap_or(0);
    let uuids = || {
        (0..count)
            .map(|i| gpus.iter().find(|g| g.0 == i).and_then(|g| g.1.clone()))
            .collect()
    };
    // The published GPUs say nothing of MIG instances: a `MIG-<uuid>` entry is resolved only
    // in its legacy form, which names the parent GPU's UUID.
    let sel = visible::choose(count, uuids, || None, |_| None, cuda_visible_devices);
    let indices = sel
        .indices
        .into_iter()
        .map(|(i, _)| i)
        .filter(|i| gpus.iter().any(|g| g.0 == *i))
        .collect();
    (indices, sel.unavailable)
}

/// One NVIDIA GPU as NVML lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuListing {
    /// NVML's index (PCI bus order).
    pub index: u32,
    /// `GPU-…`, where NVML gives it.
    pub uuid: Option<String>,
    pub name: Option<String>,
    /// The UUIDs (`MIG-…`) of its MIG instances in NVML's order of their slots; empty when MIG
    /// is off or not supported, or the driver lacks the MIG calls. They share the GPU's energy
    /// counter: NVML measures the GPU, not an instance.
    pub mig_uuids: Vec<String>,
    /// The same instances, with their ids and slices.
    pub mig_instances: Vec<MigInstance>,
    /// The GPU's slices (its largest GPU-instance profile's), asked for only where it has
    /// instances; `None` with `slices_error` saying why where NVML does not tell.
    pub slices: Option<u32>,
    pub slices_error: Option<String>,
}

/// Every GPU NVML lists (whatever `CUDA_VISIBLE_DEVICES` says), with its MIG instances and
/// their slices (a MIG instance's share of its GPU is its slices over the GPU's); a
/// missing library or driver is the reason, with what to do about it. A GPU whose handle NVML
/// refuses is left out.
pub fn list_gpus(roots: &Roots) -> Result<Vec<GpuListing>, Box<Unavailable>> {
    let nvml = ffi::open(roots)?;
    let count = nvml.count().map_err(|e| {
        Box::new(nvml.unavailable(
            nvml.path.display().to_string(),
            format!("cannot count GPUs: {e}"),
            hint_for(nvml_code(&e)),
        ))
    })?;
    Ok((0..count)
        .filter_map(|index| {
            let dev = nvml.handle(index).ok()?;
            let mig_instances = nvml.mig_instances(dev);
            let (slices, slices_error) = if mig_instances.is_empty() {
                (None, None)
            } else {
                match nvml.gpu_slices(dev) {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e)),
                }
            };
            Some(GpuListing {
                index,
                uuid: nvml.string(nvml.fns.uuid, dev),
                name: nvml.string(nvml.fns.name, dev),
                mig_uuids: mig_instances.iter().map(|m| m.uuid.clone()).collect(),
                mig_instances,
                slices,
                slices_error,
            })
        })
        .collect())
}

fn gpu_source(
    nvml: &Arc<Nvml>,
    index: u32,
    order_note: bool,
    mig: Option<&str>,
) -> Result<GpuSource, Box<Unavailable>> {
    let what = format!("GPU {index} ({})", nvml.path.display());
    let dev = nvml.handle(index).map_err(|e| {
        Box::new(nvml.unavailable(what.clone(), e.to_string(), hint_for(nvml_code(&e))))
    })?;
    let name = nvml
        .string(nvml.fns.name, dev)
        .unwrap_or_else(|| "NVIDIA GPU".into());
    let uuid = nvml.string(nvml.fns.uuid, dev);
    let mut label = match &uuid {
        Some(u) => format!("{name} [{u}]"),
        None => format!("{name} [index {index}]"),
    };
    if order_note {
        label.push_str(
            " (chosen by CUDA_VISIBLE_DEVICES index in PCI order; set \
             CUDA_DEVICE_ORDER=PCI_BUS_ID or use UUIDs so CUDA agrees)",
        );
    }
    if let Some(entry) = mig {
        label.push_str(&format!(
            " (the whole GPU, for MIG instance {entry}: its instances share its energy counter)"
        ));
    }
    let (kind, method, counter) = match nvml.read_energy(dev) {
        Ok(_) => (
            Kind::Energy,
            Method::Counter,
            Some(CounterSpec {
                joules_per_unit: 1e-3,
                wrap: None,
            }),
        ),
        Err(energy_rc) => match nvml.read_power(dev) {
            Ok(_) => (Kind::Power, Method::IntegratedPower, None),
            Err(power_rc) => {
                let energy = error_message(nvml.fns.error_string, energy_rc);
                let power = error_message(nvml.fns.error_string, power_rc);
                let code = if power_rc == ERROR_NOT_SUPPORTED {
                    energy_rc
                } else {
                    power_rc
                };
                return Err(Box::new(nvml.unavailable(
                    format!("{label} ({})", nvml.path.display()),
                    format!(
                        "neither the energy counter nor power can be read: \
                         nvmlDeviceGetTotalEnergyConsumption: {energy} (code {energy_rc}); \
                         nvmlDeviceGetPowerUsage: {power} (code {power_rc})"
                    ),
                    hint_for(code),
                )));
            }
        },
    };
    Ok(GpuSource {
        nvml: Arc::clone(nvml),
        dev,
        kind,
        samples: nvml.fns.samples.map(|_| PowerSamples::default()),
        buf: vec![RawSample::default(); SAMPLE_BUFFER],
        info: SourceInfo {
            id: format!("nvml:{index}"),
            backend: BACKEND,
            domain: Domain::Gpu,
            index,
            label,
            method,
            counter,
            interval: INTERVAL,
            path: Some(nvml.path.clone()),
            uuid,
        },
    })
}
