//! NVIDIA GPUs through NVML, loaded at run time.
//!
//! The library (`libnvidia-ml.so.1`, or `Roots::nvml_library`) is opened with `dlopen` when
//! [`discover`] runs; nothing links against it, so a machine without the driver simply reports
//! the backend as unavailable. Each visible GPU becomes one source, `nvml:<index>` with NVML's
//! index:
//!
//! - where the GPU has the total-energy counter (Volta and later), a [`Method::Counter`] source
//!   reading millijoules;
//! - otherwise a [`Method::IntegratedPower`] source reading board power in watts.
//!
//! # Which GPUs are visible
//!
//! `CUDA_VISIBLE_DEVICES` is honoured the way CUDA reads it: unset means every GPU; an empty
//! value means none; otherwise a comma-separated list of indices, `GPU-…` UUIDs or unique UUID
//! prefixes, and the list ends at the first entry that names no GPU. `MIG-…` entries are
//! reported as unavailable: NVML's energy and power cover the whole GPU, not one instance.
//!
//! Indices are read in NVML's order, which is PCI bus order. CUDA's default order
//! (`CUDA_DEVICE_ORDER=FASTEST_FIRST`) can differ on machines with unlike GPUs, so index `0`
//! may name a different GPU for CUDA than for NVML unless `CUDA_DEVICE_ORDER=PCI_BUS_ID` is
//! set. UUIDs are exact; where indices select GPUs and the order is not `PCI_BUS_ID`, each
//! source's label says so.

use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libloading::Library;

use crate::error::Error;
use crate::source::{
    CounterSpec, Domain, EnergySource, Found, Method, Reading, Roots, SourceInfo, Unavailable,
};

const BACKEND: &str = "nvml";
const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";
/// NVML calls serialise in the driver; polling faster buys little and slows other users.
const INTERVAL: Duration = Duration::from_millis(20);

const SUCCESS: c_int = 0;
const ERROR_NOT_SUPPORTED: c_int = 3;
/// Large enough for any name or UUID NVML returns (its own v2 buffer sizes are 96).
const STRING_BUFFER: usize = 96;

type Device = *mut c_void;
type InitFn = unsafe extern "C" fn() -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;
type CountFn = unsafe extern "C" fn(*mut c_uint) -> c_int;
type ByIndexFn = unsafe extern "C" fn(c_uint, *mut Device) -> c_int;
type ByUuidFn = unsafe extern "C" fn(*const c_char, *mut Device) -> c_int;
type StringFn = unsafe extern "C" fn(Device, *mut c_char, c_uint) -> c_int;
type EnergyFn = unsafe extern "C" fn(Device, *mut c_ulonglong) -> c_int;
type PowerFn = unsafe extern "C" fn(Device, *mut c_uint) -> c_int;

/// The NVML entry points this module calls. Plain function pointers, valid while `Nvml::_lib`
/// is loaded.
struct Fns {
    shutdown: InitFn,
    error_string: ErrorStringFn,
    count: CountFn,
    by_index: ByIndexFn,
    by_uuid: Option<ByUuidFn>,
    name: Option<StringFn>,
    uuid: Option<StringFn>,
    energy: Option<EnergyFn>,
    power: Option<PowerFn>,
}

/// An initialised NVML. Shared by every source it produced; the last one to drop it shuts NVML
/// down, and only then is the library unloaded (fields drop after `Drop::drop`).
struct Nvml {
    fns: Fns,
    path: PathBuf,
    _lib: Library,
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: `shutdown` was resolved from `_lib`, which is still loaded (fields drop after
        // this body), and `Nvml` exists only after a successful nvmlInit, so this balances it.
        unsafe { (self.fns.shutdown)() };
    }
}

/// Resolves `name` (no trailing NUL) in `lib` as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the function's true C signature, and the pointer must not be called after `lib`
/// is unloaded.
unsafe fn symbol<T: Copy>(lib: &Library, name: &str) -> Option<T> {
    let mut bytes = Vec::with_capacity(name.len() + 1);
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    // SAFETY: the caller promises `T` matches the symbol's type.
    unsafe { lib.get::<T>(&bytes).ok().map(|s| *s) }
}

/// The first of `names` that `lib` exports.
///
/// # Safety
/// As for [`symbol`], for every name.
unsafe fn first_symbol<T: Copy>(lib: &Library, names: &[&str]) -> Option<T> {
    // SAFETY: forwarded to the caller.
    names.iter().find_map(|n| unsafe { symbol(lib, n) })
}

/// NVML's own words for `code`.
fn error_message(f: ErrorStringFn, code: c_int) -> String {
    // SAFETY: nvmlErrorString takes any code, needs no initialisation, and returns a pointer to
    // a static NUL-terminated string (or NULL, checked below).
    let ptr = unsafe { f(code) };
    if ptr.is_null() {
        return format!("NVML error {code}");
    }
    // SAFETY: non-null, NUL-terminated, static for the life of the library, copied at once.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// What to do about an NVML error code.
fn hint_for(code: c_int) -> String {
    match code {
        1 => "NVML was shut down while in use; start measuring again",
        2 => "this looks like a bug in carbonctx; please report it with the GPU model",
        3 => "this GPU or driver does not offer this reading; a newer driver may",
        4 => {
            "the process may not query this GPU: check the permissions of /dev/nvidia* and, \
              in a container, that the GPU is passed through"
        }
        9 => "load the NVIDIA kernel driver (nvidia-smi should work first)",
        10 => {
            "the driver did not answer in time; if it keeps happening check the GPU's health \
               with nvidia-smi and dmesg"
        }
        12 => "install the NVIDIA driver, or set CARBONCTX_NVML_LIBRARY to libnvidia-ml.so.1",
        13 => "the NVML library is older than this call; update the NVIDIA driver",
        15 => {
            "the GPU has fallen off the bus: check dmesg for Xid errors, then reset the GPU \
               or reboot"
        }
        16 => "reset the GPU (nvidia-smi -r) or reboot",
        17 => {
            "the operating system or a cgroup blocks access: give the process access to \
               /dev/nvidia*"
        }
        18 => {
            "the NVML library and the kernel driver differ in version, usually after a driver \
               upgrade: reboot, or reload the nvidia kernel modules"
        }
        999 => {
            "an internal driver error: check dmesg for Xid errors; reloading the driver or \
                rebooting may be needed"
        }
        _ => "check that the NVIDIA driver works (nvidia-smi)",
    }
    .to_string()
}

impl Nvml {
    fn error(&self, call: &'static str, code: c_int) -> Error {
        Error::Nvml {
            call,
            code,
            message: error_message(self.fns.error_string, code),
            hint: hint_for(code),
        }
    }

    fn unavailable(&self, what: String, reason: String, hint: String) -> Unavailable {
        Unavailable {
            backend: BACKEND,
            what,
            reason,
            hint,
        }
    }

    fn count(&self) -> Result<u32, Error> {
        let mut n: c_uint = 0;
        // SAFETY: NVML is initialised and `n` is a valid out-pointer.
        let rc = unsafe { (self.fns.count)(&mut n) };
        if rc == SUCCESS {
            Ok(n)
        } else {
            Err(self.error("nvmlDeviceGetCount_v2", rc))
        }
    }

    fn handle(&self, index: u32) -> Result<Handle, Error> {
        let mut dev: Device = std::ptr::null_mut();
        // SAFETY: NVML is initialised and `dev` is a valid out-pointer.
        let rc = unsafe { (self.fns.by_index)(index, &mut dev) };
        if rc == SUCCESS {
            Ok(Handle(dev))
        } else {
            Err(self.error("nvmlDeviceGetHandleByIndex_v2", rc))
        }
    }

    /// A string property; `None` where NVML lacks the call or refuses it.
    fn string(&self, f: Option<StringFn>, dev: Handle) -> Option<String> {
        let f = f?;
        let mut buf = [0 as c_char; STRING_BUFFER];
        // SAFETY: `dev` came from this initialised NVML; `buf` is writable for its full length,
        // which is what NVML is told.
        let rc = unsafe { f(dev.0, buf.as_mut_ptr(), STRING_BUFFER as c_uint) };
        if rc != SUCCESS {
            return None;
        }
        buf[STRING_BUFFER - 1] = 0;
        // SAFETY: `buf` is NUL-terminated (forced above) and lives through this call.
        Some(
            unsafe { CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
        )
    }

    fn read_energy(&self, dev: Handle) -> Result<u64, c_int> {
        let Some(f) = self.fns.energy else {
            return Err(ERROR_NOT_SUPPORTED);
        };
        let mut mj: c_ulonglong = 0;
        // SAFETY: `dev` came from this initialised NVML; `mj` is a valid out-pointer.
        let rc = unsafe { f(dev.0, &mut mj) };
        if rc == SUCCESS {
            Ok(mj)
        } else {
            Err(rc)
        }
    }

    fn read_power(&self, dev: Handle) -> Result<f64, c_int> {
        let Some(f) = self.fns.power else {
            return Err(ERROR_NOT_SUPPORTED);
        };
        let mut mw: c_uint = 0;
        // SAFETY: `dev` came from this initialised NVML; `mw` is a valid out-pointer.
        let rc = unsafe { f(dev.0, &mut mw) };
        if rc == SUCCESS {
            Ok(f64::from(mw) / 1000.0)
        } else {
            Err(rc)
        }
    }
}

/// An NVML device handle.
#[derive(Clone, Copy)]
struct Handle(Device);

// SAFETY: an nvmlDevice_t is an opaque identifier that stays valid while NVML is initialised,
// which every holder guarantees by holding an `Arc<Nvml>` next to it. NVML documents itself as
// thread-safe, so a handle may be used from any thread, and from several at once.
unsafe impl Send for Handle {}
// SAFETY: as above; the handle is never written through.
unsafe impl Sync for Handle {}

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
}

/// Finds the GPUs NVML can measure, honouring `CUDA_VISIBLE_DEVICES` and `CUDA_DEVICE_ORDER`
/// from the environment (see the module documentation).
///
/// Never fails: a missing library, driver or GPU is reported in [`Found::unavailable`] with
/// what to do about it.
pub fn discover(roots: &Roots) -> Found {
    let visible =
        std::env::var_os("CUDA_VISIBLE_DEVICES").map(|v| v.to_string_lossy().into_owned());
    let order = std::env::var_os("CUDA_DEVICE_ORDER").map(|v| v.to_string_lossy().into_owned());
    discover_with(roots, visible.as_deref(), order.as_deref())
}

/// [`discover`] with the values of `CUDA_VISIBLE_DEVICES` and `CUDA_DEVICE_ORDER` given
/// (`None`: unset) instead of read from the environment.
pub fn discover_with(
    roots: &Roots,
    cuda_visible_devices: Option<&str>,
    cuda_device_order: Option<&str>,
) -> Found {
    let mut found = Found::default();
    let nvml = match open(roots) {
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

    let selection = select(&nvml, count, cuda_visible_devices);
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
        match gpu_source(&nvml, index, by_index && !pci_order) {
            Ok(s) => found.sources.push(Box::new(s)),
            Err(u) => found.unavailable.push(*u),
        }
    }
    found
}

fn nvml_code(e: &Error) -> c_int {
    match e {
        Error::Nvml { code, .. } => *code,
        _ => 999,
    }
}

/// Loads the library, resolves the calls, and initialises NVML.
fn open(roots: &Roots) -> Result<Nvml, Box<Unavailable>> {
    let path = roots
        .nvml_library
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LIBRARY));
    let what = path.display().to_string();
    let fail = |reason: String, hint: &str| {
        Box::new(Unavailable {
            backend: BACKEND,
            what: what.clone(),
            reason,
            hint: hint.to_string(),
        })
    };
    // SAFETY: loading runs the library's initialisers; NVML's (and the test stand-in's) do
    // nothing beyond setting up their own state.
    let lib = match unsafe { Library::new(&path) } {
        Ok(lib) => lib,
        Err(e) => {
            return Err(fail(
                format!("cannot load the NVML library: {e}"),
                "install the NVIDIA driver (it provides libnvidia-ml.so.1), or set \
                 CARBONCTX_NVML_LIBRARY to the library's path",
            ))
        }
    };
    // SAFETY (all resolutions below): each type alias is the documented C signature of the
    // named NVML function, and the pointers are stored in `Nvml` next to `lib`, which keeps the
    // library loaded for as long as they can be called.
    let init: Option<InitFn> = unsafe { first_symbol(&lib, &["nvmlInit_v2", "nvmlInit"]) };
    let shutdown: Option<InitFn> = unsafe { symbol(&lib, "nvmlShutdown") };
    let error_string: Option<ErrorStringFn> = unsafe { symbol(&lib, "nvmlErrorString") };
    let count: Option<CountFn> =
        unsafe { first_symbol(&lib, &["nvmlDeviceGetCount_v2", "nvmlDeviceGetCount"]) };
    let by_index: Option<ByIndexFn> = unsafe {
        first_symbol(
            &lib,
            &[
                "nvmlDeviceGetHandleByIndex_v2",
                "nvmlDeviceGetHandleByIndex",
            ],
        )
    };
    let (Some(init), Some(shutdown), Some(error_string), Some(count), Some(by_index)) =
        (init, shutdown, error_string, count, by_index)
    else {
        return Err(fail(
            "the library lacks the basic NVML calls (nvmlInit_v2, nvmlShutdown, \
             nvmlErrorString, nvmlDeviceGetCount_v2, nvmlDeviceGetHandleByIndex_v2)"
                .into(),
            "point CARBONCTX_NVML_LIBRARY at libnvidia-ml.so.1 from the NVIDIA driver, or \
             update the driver",
        ));
    };
    let fns = Fns {
        shutdown,
        error_string,
        count,
        by_index,
        // SAFETY: as above.
        by_uuid: unsafe { symbol(&lib, "nvmlDeviceGetHandleByUUID") },
        // SAFETY: as above.
        name: unsafe { symbol(&lib, "nvmlDeviceGetName") },
        // SAFETY: as above.
        uuid: unsafe { symbol(&lib, "nvmlDeviceGetUUID") },
        // SAFETY: as above.
        energy: unsafe { symbol(&lib, "nvmlDeviceGetTotalEnergyConsumption") },
        // SAFETY: as above.
        power: unsafe { symbol(&lib, "nvmlDeviceGetPowerUsage") },
    };
    if fns.energy.is_none() && fns.power.is_none() {
        return Err(fail(
            "the library offers neither nvmlDeviceGetTotalEnergyConsumption nor \
             nvmlDeviceGetPowerUsage"
                .into(),
            "update the NVIDIA driver",
        ));
    }
    // SAFETY: nvmlInit_v2 takes no arguments and may be called from any thread.
    let rc = unsafe { init() };
    if rc != SUCCESS {
        return Err(fail(
            format!(
                "nvmlInit_v2 failed: {} (code {rc})",
                error_message(error_string, rc)
            ),
            &hint_for(rc),
        ));
    }
    Ok(Nvml {
        fns,
        path,
        _lib: lib,
    })
}

/// The NVML indices `CUDA_VISIBLE_DEVICES` makes visible, in its order.
struct Selection {
    /// NVML index, and whether it was chosen by index (so CUDA's ordering matters).
    indices: Vec<(u32, bool)>,
    unavailable: Vec<Unavailable>,
}

fn select(nvml: &Nvml, count: u32, visible: Option<&str>) -> Selection {
    let mut sel = Selection {
        indices: Vec::new(),
        unavailable: Vec::new(),
    };
    let Some(visible) = visible else {
        sel.indices = (0..count).map(|i| (i, false)).collect();
        return sel;
    };
    if visible.trim().is_empty() {
        return sel;
    }
    let entries: Vec<&str> = visible.split(',').map(str::trim).collect();
    let mut uuids: Option<Vec<Option<String>>> = None;
    for (pos, entry) in entries.iter().enumerate() {
        let resolved = if entry.starts_with("MIG-") {
            sel.unavailable.push(
                nvml.unavailable(
                    format!("CUDA_VISIBLE_DEVICES entry {entry}"),
                    "a MIG instance cannot be measured on its own: NVML's energy and power cover \
                 the whole GPU"
                        .into(),
                    "list the parent GPU's UUID in CUDA_VISIBLE_DEVICES to measure the whole GPU"
                        .into(),
                ),
            );
            continue;
        } else if entry.starts_with("GPU-") {
            let uuids = uuids.get_or_insert_with(|| all_uuids(nvml, count));
            resolve_uuid(nvml, entry, uuids).map(|i| (i, false))
        } else if let Ok(i) = entry.parse::<u32>() {
            (i < count).then_some((i, true))
        } else {
            None
        };
        match resolved {
            Some((i, by_index)) if !sel.indices.iter().any(|&(j, _)| j == i) => {
                sel.indices.push((i, by_index))
            }
            _ => {
                let ignored = entries[pos..].join(",");
                sel.unavailable.push(nvml.unavailable(
                    format!("CUDA_VISIBLE_DEVICES entry {entry:?}"),
                    format!(
                        "it names no GPU (or one already listed), so CUDA ignores it and every \
                         entry after it ({ignored:?}); {count} GPU(s) are present"
                    ),
                    "use indices below the GPU count or UUIDs from nvidia-smi -L, each once".into(),
                ));
                break;
            }
        }
    }
    sel
}

fn all_uuids(nvml: &Nvml, count: u32) -> Vec<Option<String>> {
    (0..count)
        .map(|i| {
            nvml.handle(i)
                .ok()
                .and_then(|h| nvml.string(nvml.fns.uuid, h))
        })
        .collect()
}

/// A full UUID or a prefix that matches exactly one GPU, as CUDA accepts.
fn resolve_uuid(nvml: &Nvml, entry: &str, uuids: &[Option<String>]) -> Option<u32> {
    let lower = entry.to_ascii_lowercase();
    let matches: Vec<u32> = uuids
        .iter()
        .enumerate()
        .filter(|(_, u)| {
            u.as_deref()
                .is_some_and(|u| u.to_ascii_lowercase().starts_with(&lower))
        })
        .map(|(i, _)| i as u32)
        .collect();
    if let [one] = matches[..] {
        return Some(one);
    }
    if !matches.is_empty() {
        return None;
    }
    // Not among the UUIDs read (the call may be missing): ask NVML for an exact match.
    let by_uuid = nvml.fns.by_uuid?;
    let c = std::ffi::CString::new(entry).ok()?;
    let mut dev: Device = std::ptr::null_mut();
    // SAFETY: NVML is initialised; `c` is NUL-terminated and `dev` a valid out-pointer.
    let rc = unsafe { by_uuid(c.as_ptr(), &mut dev) };
    if rc != SUCCESS {
        return None;
    }
    (0..uuids.len() as u32).find(|&i| nvml.handle(i).is_ok_and(|h| h.0 == dev))
}

fn gpu_source(
    nvml: &Arc<Nvml>,
    index: u32,
    order_note: bool,
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
        },
    })
}
