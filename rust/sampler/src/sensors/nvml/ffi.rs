//! NVML's C interface: the library loaded with `dlopen`, its entry points resolved by name, and
//! safe calls over them. Error codes come back as [`Error::Nvml`] with NVML's own message and a
//! hint for each code.

use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr};
use std::path::PathBuf;

use libloading::Library;

use super::mig::{mig_fns, MigFns};
use super::BACKEND;
use crate::error::Error;
use crate::sensors::{Roots, Unavailable};

const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";

pub(super) const SUCCESS: c_int = 0;
pub(super) const ERROR_NOT_SUPPORTED: c_int = 3;
/// nvmlDeviceGetSamples: no sample newer than the time asked for.
pub(super) const ERROR_NOT_FOUND: c_int = 6;
/// nvmlDeviceGetSamples: a driver that refuses a buffer smaller than what it holds (the header
/// says it fills what fits; this is not relied on).
pub(super) const ERROR_INSUFFICIENT_SIZE: c_int = 7;
/// The library is older than the call.
pub(super) const ERROR_FUNCTION_NOT_FOUND: c_int = 13;
/// `nvmlSamplingType_t` of the board's power (the driver's own buffer of timed samples).
const TOTAL_POWER_SAMPLES: c_int = 0;
/// Large enough for any name or UUID NVML returns (its own v2 buffer sizes are 96).
const STRING_BUFFER: usize = 96;

pub(super) type Device = *mut c_void;
type InitFn = unsafe extern "C" fn() -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;
type CountFn = unsafe extern "C" fn(*mut c_uint) -> c_int;
type ByIndexFn = unsafe extern "C" fn(c_uint, *mut Device) -> c_int;
type ByUuidFn = unsafe extern "C" fn(*const c_char, *mut Device) -> c_int;
type StringFn = unsafe extern "C" fn(Device, *mut c_char, c_uint) -> c_int;
type EnergyFn = unsafe extern "C" fn(Device, *mut c_ulonglong) -> c_int;
type PowerFn = unsafe extern "C" fn(Device, *mut c_uint) -> c_int;
/// `nvmlDeviceGetSamples(device, type, lastSeenTimeStamp, *sampleValType, *sampleCount,
/// *samples)`.
type SamplesFn = unsafe extern "C" fn(
    Device,
    c_int,
    c_ulonglong,
    *mut c_int,
    *mut c_uint,
    *mut RawSample,
) -> c_int;

/// `nvmlSample_t`: a CPU timestamp (CLOCK_REALTIME, µs) and an 8-byte `nvmlValue_t` union,
/// kept here as its raw bits and read according to the value type the call returns.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct RawSample {
    pub(super) time_us: c_ulonglong,
    pub(super) value: u64,
}

/// One sample's value as a number, given `nvmlValueType_t` (0 double, 1 unsigned int,
/// 2 unsigned long, 3 unsigned long long, 4 signed long long, 5 signed int, 6 unsigned short);
/// `None` for a type this code does not know.
pub(super) fn sample_value(value_type: c_int, bits: u64) -> Option<f64> {
    // The union's members all start at its first byte; on a little- or big-endian machine the
    // narrower ones are read from the same bytes as NVML wrote them.
    let b = bits.to_ne_bytes();
    let u32_of = || u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    Some(match value_type {
        0 => f64::from_bits(bits),
        1 => f64::from(u32_of()),
        2 | 3 => bits as f64,
        4 => (bits as i64) as f64,
        5 => f64::from(u32_of() as i32),
        6 => f64::from(u16::from_ne_bytes([b[0], b[1]])),
        _ => return None,
    })
}

/// The NVML entry points this module calls. Plain function pointers, valid while `Nvml::_lib`
/// is loaded.
pub(super) struct Fns {
    pub(super) shutdown: InitFn,
    pub(super) error_string: ErrorStringFn,
    pub(super) count: CountFn,
    pub(super) by_index: ByIndexFn,
    pub(super) by_uuid: Option<ByUuidFn>,
    pub(super) name: Option<StringFn>,
    pub(super) uuid: Option<StringFn>,
    pub(super) energy: Option<EnergyFn>,
    pub(super) power: Option<PowerFn>,
    pub(super) samples: Option<SamplesFn>,
    /// The MIG calls (R450 drivers and later); the three that list instances, or none.
    pub(super) mig: Option<MigFns>,
}

/// An initialised NVML. Shared by every source it produced; the last one to drop it shuts NVML
/// down, and only then is the library unloaded (fields drop after `Drop::drop`).
pub(super) struct Nvml {
    pub(super) fns: Fns,
    pub(super) path: PathBuf,
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
pub(super) unsafe fn symbol<T: Copy>(lib: &Library, name: &str) -> Option<T> {
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
pub(super) fn error_message(f: ErrorStringFn, code: c_int) -> String {
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
pub(super) fn hint_for(code: c_int) -> String {
    match code {
        1 => "NVML was shut down while in use; start measuring again",
        2 => "this looks like a bug in carbonctx; please report it with the GPU model",
        3 => "this GPU or driver does not offer this reading; a newer driver may",
        4 => {
            "the process may not query this GPU: check the permissions of /dev/nvidia* and, \
              in a container, that the GPU is passed through"
        }
        8 => "attach the GPU's external power cables properly",
        9 => "load the NVIDIA kernel driver (nvidia-smi should work first)",
        10 => {
            "the driver did not answer in time; if it keeps happening check the GPU's health \
               with nvidia-smi and dmesg"
        }
        12 => "install the NVIDIA driver, or set CARBONCTX_NVML_LIBRARY to libnvidia-ml.so.1",
        13 => "the NVML library is older than this call; update the NVIDIA driver",
        14 => "the GPU's infoROM is corrupted: see nvidia-smi -q, and reflash or replace it",
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
        20 | 23 => "the driver ran out of memory or resources: check nvidia-smi and dmesg",
        27 => {
            "the driver is not ready (still initialising, or a reset is in progress): measure \
             again shortly"
        }
        28 => {
            "NVML finds no GPU: check that the GPUs are visible to this machine or container \
             (nvidia-smi)"
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
    pub(super) fn error(&self, call: &'static str, code: c_int) -> Error {
        Error::Nvml {
            call,
            code,
            message: error_message(self.fns.error_string, code),
            hint: hint_for(code),
        }
    }

    pub(super) fn unavailable(&self, what: String, reason: String, hint: String) -> Unavailable {
        Unavailable {
            backend: BACKEND,
            what,
            reason,
            hint,
        }
    }

    pub(super) fn count(&self) -> Result<u32, Error> {
        let mut n: c_uint = 0;
        // SAFETY: NVML is initialised and `n` is a valid out-pointer.
        let rc = unsafe { (self.fns.count)(&mut n) };
        if rc == SUCCESS {
            Ok(n)
        } else {
            Err(self.error("nvmlDeviceGetCount_v2", rc))
        }
    }

    pub(super) fn handle(&self, index: u32) -> Result<Handle, Error> {
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
    pub(super) fn string(&self, f: Option<StringFn>, dev: Handle) -> Option<String> {
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

    pub(super) fn read_energy(&self, dev: Handle) -> Result<u64, c_int> {
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

    pub(super) fn read_power(&self, dev: Handle) -> Result<f64, c_int> {
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

impl Nvml {
    /// How many power samples newer than `last_seen_us` the driver holds (the call with
    /// `samples` NULL, as nvml.h says to size the buffer).
    pub(super) fn power_sample_count(
        &self,
        dev: Handle,
        last_seen_us: u64,
    ) -> Result<usize, c_int> {
        let Some(f) = self.fns.samples else {
            return Err(ERROR_NOT_SUPPORTED);
        };
        let mut value_type: c_int = -1;
        let mut count: c_uint = 0;
        // SAFETY: `dev` came from this initialised NVML; with `samples` NULL NVML writes only
        // the two valid out-pointers.
        let rc = unsafe {
            f(
                dev.0,
                TOTAL_POWER_SAMPLES,
                last_seen_us,
                &mut value_type,
                &mut count,
                std::ptr::null_mut(),
            )
        };
        match rc {
            SUCCESS => Ok(count as usize),
            ERROR_NOT_FOUND => Ok(0),
            _ => Err(rc),
        }
    }

    /// The board's power samples newer than `last_seen_us` (CLOCK_REALTIME µs) into `buf`: how
    /// many were written, and their value type. No new sample is `Ok((0, _))`; a library
    /// without the call is `Err(ERROR_NOT_SUPPORTED)`.
    pub(super) fn power_samples(
        &self,
        dev: Handle,
        last_seen_us: u64,
        buf: &mut [RawSample],
    ) -> Result<(usize, c_int), c_int> {
        let Some(f) = self.fns.samples else {
            return Err(ERROR_NOT_SUPPORTED);
        };
        let mut value_type: c_int = -1;
        let mut count = buf.len().min(c_uint::MAX as usize) as c_uint;
        // SAFETY: `dev` came from this initialised NVML; `buf` holds `count` writable
        // `nvmlSample_t`s (same layout: a u64 then an 8-byte union), which is what NVML is told;
        // the other two are valid out-pointers.
        let rc = unsafe {
            f(
                dev.0,
                TOTAL_POWER_SAMPLES,
                last_seen_us,
                &mut value_type,
                &mut count,
                buf.as_mut_ptr(),
            )
        };
        match rc {
            SUCCESS => Ok(((count as usize).min(buf.len()), value_type)),
            ERROR_NOT_FOUND => Ok((0, value_type)),
            _ => Err(rc),
        }
    }
}

/// An NVML device handle.
#[derive(Clone, Copy)]
pub(super) struct Handle(pub(super) Device);

// SAFETY: an nvmlDevice_t is an opaque identifier that stays valid while NVML is initialised,
// which every holder guarantees by holding an `Arc<Nvml>` next to it. NVML documents itself as
// thread-safe, so a handle may be used from any thread, and from several at once.
unsafe impl Send for Handle {}
// SAFETY: as above; the handle is never written through.
unsafe impl Sync for Handle {}

pub(super) fn nvml_code(e: &Error) -> c_int {
    match e {
        Error::Nvml { code, .. } => *code,
        _ => 999,
    }
}

/// Loads the library, resolves the calls, and initialises NVML.
pub(super) fn open(roots: &Roots) -> Result<Nvml, Box<Unavailable>> {
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
        // SAFETY: as above.
        samples: unsafe { symbol(&lib, "nvmlDeviceGetSamples") },
        // SAFETY: as above.
        mig: unsafe { mig_fns(&lib) },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codes_a_sampler_meets_have_hints_of_their_own() {
        let generic = hint_for(-1);
        // nvml.h's codes for a GPU or driver in trouble each say what to do.
        for code in [
            1, 3, 4, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18, 20, 23, 27, 28, 999,
        ] {
            assert_ne!(hint_for(code), generic, "code {code}");
        }
        assert!(hint_for(27).contains("again"));
        assert!(hint_for(28).contains("visible"));
    }
}
