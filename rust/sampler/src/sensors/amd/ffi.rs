//! AMD SMI's C interface (`libamd_smi.so`): the library loaded with `dlopen`, its entry points
//! resolved by name, and safe calls over them, with the layouts of `include/amd_smi/amdsmi.h`.
//!
//! Layouts that changed between releases are read from a zeroed buffer larger than any of them,
//! at offsets chosen by the library's version (see [`PowerLayout`]).

use std::ffi::{c_char, c_float, c_uint, c_void, CStr};
use std::path::PathBuf;

use libloading::Library;

use super::layout::{decode_power, layout_of, u32_at, PowerField, PowerLayout};
use super::BACKEND;
use crate::error::Error;
use crate::sensors::Unavailable;

const DEFAULT_LIBRARY: &str = "libamd_smi.so";

/// `amdsmi_status_t`, a C enum.
pub(super) type Status = c_uint;
pub(super) const SUCCESS: Status = 0;
pub(super) const STATUS_NOT_SUPPORTED: Status = 2;
/// `AMDSMI_INIT_AMD_GPUS`.
const INIT_AMD_GPUS: u64 = 1 << 1;
/// `AMDSMI_PROCESSOR_TYPE_AMD_GPU` in `processor_type_t`.
const PROCESSOR_TYPE_AMD_GPU: c_uint = 1;
/// `AMDSMI_PROCESSOR_TYPE_AMD_APU`: "Combination of AMDSMI_PROCESSOR_TYPE_AMD_CPU and integrated
/// GPU on single die" (`amdsmi.h`).
const PROCESSOR_TYPE_AMD_APU: c_uint = 6;
/// `AMDSMI_GPU_UUID_SIZE` is 38; room to spare.
const UUID_BUFFER: usize = 64;
/// Larger than `amdsmi_power_info_t` (at most 8 + 4 + 4 + 3 × 8 + 4 + 4 + 18 × 8 bytes) and
/// `amdsmi_asic_info_t` (at most 896 bytes) in every release.
const STRUCT_BUFFER: usize = 2048;
/// `amdsmi_asic_info_t` begins with `char market_name[256]` in every release.
const MARKET_NAME_LEN: usize = 256;

type Handle = *mut c_void;
type InitFn = unsafe extern "C" fn(u64) -> Status;
type ShutDownFn = unsafe extern "C" fn() -> Status;
type StatusStringFn = unsafe extern "C" fn(Status, *mut *const c_char) -> Status;
type VersionFn = unsafe extern "C" fn(*mut u8) -> Status;
type SocketsFn = unsafe extern "C" fn(*mut u32, *mut Handle) -> Status;
type ProcessorsFn = unsafe extern "C" fn(Handle, *mut u32, *mut Handle) -> Status;
type TypeFn = unsafe extern "C" fn(Handle, *mut c_uint) -> Status;
type BdfFn = unsafe extern "C" fn(Handle, *mut u64) -> Status;
type UuidFn = unsafe extern "C" fn(Handle, *mut c_uint, *mut c_char) -> Status;
type StructFn = unsafe extern "C" fn(Handle, *mut u8) -> Status;
type EnergyFn = unsafe extern "C" fn(Handle, *mut u64, *mut c_float, *mut u64) -> Status;

/// The entry points used. Plain function pointers, valid while `AmdSmi::_lib` is loaded.
struct Fns {
    shut_down: ShutDownFn,
    status_string: Option<StatusStringFn>,
    sockets: SocketsFn,
    processors: ProcessorsFn,
    processor_type: Option<TypeFn>,
    bdf: Option<BdfFn>,
    uuid: Option<UuidFn>,
    asic_info: Option<StructFn>,
    power_info: Option<StructFn>,
    energy: Option<EnergyFn>,
}

/// An initialised AMD SMI. Shared by every source it produced; the last one to drop it shuts
/// the library down, and only then is the library unloaded (fields drop after `Drop::drop`).
pub(super) struct AmdSmi {
    fns: Fns,
    pub(super) path: PathBuf,
    pub(super) layout: PowerLayout,
    /// The release as the library states it (`year.major.minor`, or `major.minor.release`).
    pub(super) version: String,
    _lib: Library,
}

impl Drop for AmdSmi {
    fn drop(&mut self) {
        // SAFETY: `shut_down` comes from `_lib`, still loaded here, and an `AmdSmi` exists
        // only after a successful amdsmi_init, which this balances.
        unsafe { (self.fns.shut_down)() };
    }
}

/// A processor handle.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Processor(Handle);

// SAFETY: an amdsmi_processor_handle is an opaque identifier that stays valid while the library
// is initialised, which every holder guarantees by holding an `Arc<AmdSmi>` next to it; AMD SMI
// serialises its calls internally, so a handle may be used from any thread.
unsafe impl Send for Processor {}
// SAFETY: as above; the handle is never written through.
unsafe impl Sync for Processor {}

/// Resolves `name` in `lib` as a function pointer of type `T`.
///
/// # Safety
/// `T` must be the function's true C signature, and the pointer must not be called after `lib`
/// is unloaded.
unsafe fn symbol<T: Copy>(lib: &Library, name: &str) -> Option<T> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    // SAFETY: the caller promises `T` matches the symbol's type.
    unsafe { lib.get::<T>(&bytes).ok().map(|s| *s) }
}

/// What to do about a status code.
pub(super) fn hint_for(code: Status) -> &'static str {
    match code {
        2 | 3 => "this GPU or driver does not offer this reading; a newer ROCm may",
        4 | 5 | 18 | 34 => {
            "load the amdgpu kernel driver and check that amd-smi works (amd-smi list)"
        }
        10 => {
            "the process may not read this GPU: check the permissions of /dev/kfd and \
             /dev/dri/renderD* (the video and render groups) and, in a container, that the \
             devices are passed through"
        }
        6 | 12 | 14 => "the driver did not answer: check amd-smi and dmesg for amdgpu errors",
        8 | 9 | 30 => "the GPU was busy; if it keeps happening check amd-smi and dmesg",
        _ => "check that the amdgpu driver and ROCm work (amd-smi list)",
    }
}

/// The library's own words for `code` (`amdsmi_status_code_to_string`).
fn message_with(f: Option<StatusStringFn>, code: Status) -> String {
    let Some(f) = f else {
        return format!("AMD SMI status {code}");
    };
    let mut ptr: *const c_char = std::ptr::null();
    // SAFETY: the call takes any code and needs no initialisation; it writes a pointer to a
    // static string.
    let rc = unsafe { f(code, &mut ptr) };
    if rc != SUCCESS || ptr.is_null() {
        return format!("AMD SMI status {code}");
    }
    // SAFETY: non-null, NUL-terminated, static for the life of the library; copied now.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

impl AmdSmi {
    /// The library's own words for `code`.
    pub(super) fn message(&self, code: Status) -> String {
        message_with(self.fns.status_string, code)
    }

    pub(super) fn error(&self, call: &str, code: Status) -> Error {
        Error::Invalid(format!(
            "AMD SMI {call} failed: {} (status {code}). {}",
            self.message(code),
            hint_for(code)
        ))
    }

    pub(super) fn unavailable(&self, what: String, reason: String, hint: &str) -> Unavailable {
        Unavailable {
            backend: BACKEND,
            what,
            reason,
            hint: hint.to_string(),
        }
    }

    /// Every AMD GPU, socket by socket, in the library's order, each with whether the library
    /// types it as an APU.
    pub(super) fn gpus(&self) -> Result<Vec<(Processor, bool)>, (&'static str, Status)> {
        let sockets = list(|n, out| {
            // SAFETY: `n` and `out` (NULL, or room for `*n` handles) are valid for the call.
            unsafe { (self.fns.sockets)(n, out) }
        })
        .map_err(|rc| ("amdsmi_get_socket_handles", rc))?;
        let mut gpus = Vec::new();
        for socket in sockets {
            let procs = list(|n, out| {
                // SAFETY: as above; `socket` came from the library.
                unsafe { (self.fns.processors)(socket, n, out) }
            })
            .map_err(|rc| ("amdsmi_get_processor_handles", rc))?;
            for p in procs {
                if let Some(apu) = self.gpu_kind(p) {
                    gpus.push((Processor(p), apu));
                }
            }
        }
        Ok(gpus)
    }

    /// `None` for a processor that is no AMD GPU; else whether it is typed as an APU.
    fn gpu_kind(&self, p: Handle) -> Option<bool> {
        let Some(f) = self.fns.processor_type else {
            // Initialised with AMDSMI_INIT_AMD_GPUS only: every processor is a GPU.
            return Some(false);
        };
        let mut t: c_uint = 0;
        // SAFETY: `p` came from the library; `t` is a valid out-pointer.
        let rc = unsafe { f(p, &mut t) };
        match (rc, t) {
            (SUCCESS, PROCESSOR_TYPE_AMD_APU) => Some(true),
            (SUCCESS, PROCESSOR_TYPE_AMD_GPU) => Some(false),
            (SUCCESS, _) => None,
            _ => Some(false),
        }
    }

    /// The PCI address, `dddd:bb:dd.f` in lower case.
    pub(super) fn bdf(&self, p: Processor) -> Option<String> {
        let f = self.fns.bdf?;
        let mut raw: u64 = 0;
        // SAFETY: `amdsmi_bdf_t` is a union over one uint64_t; `raw` is a valid out-pointer.
        let rc = unsafe { f(p.0, &mut raw) };
        (rc == SUCCESS).then(|| format_bdf(raw))
    }

    pub(super) fn uuid(&self, p: Processor) -> Option<String> {
        let f = self.fns.uuid?;
        let mut buf = [0 as c_char; UUID_BUFFER];
        let mut len = (UUID_BUFFER - 1) as c_uint;
        // SAFETY: `buf` is writable for `len` bytes plus a spare NUL, as the library is told.
        let rc = unsafe { f(p.0, &mut len, buf.as_mut_ptr()) };
        if rc != SUCCESS {
            return None;
        }
        buf[UUID_BUFFER - 1] = 0;
        // SAFETY: NUL-terminated (forced above) and alive through this call.
        let s = unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .trim()
            .to_string();
        (!s.is_empty()).then_some(s)
    }

    /// The market name from `amdsmi_get_gpu_asic_info`.
    pub(super) fn name(&self, p: Processor) -> Option<String> {
        let buf = self.read_struct(self.fns.asic_info?, p).ok()?;
        let raw = &buf[..MARKET_NAME_LEN];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(MARKET_NAME_LEN);
        let s = String::from_utf8_lossy(&raw[..end]).trim().to_string();
        (!s.is_empty()).then_some(s)
    }

    fn read_struct(&self, f: StructFn, p: Processor) -> Result<Vec<u8>, Status> {
        let mut buf = vec![0u8; STRUCT_BUFFER];
        // SAFETY: `buf` is zeroed and larger than the struct in any release; `p` came from
        // the library.
        let rc = unsafe { f(p.0, buf.as_mut_ptr()) };
        if rc == SUCCESS {
            Ok(buf)
        } else {
            Err(rc)
        }
    }

    /// The energy accumulator and its resolution in µJ per count.
    pub(super) fn energy(&self, p: Processor) -> Result<(u64, f32), Status> {
        let Some(f) = self.fns.energy else {
            return Err(STATUS_NOT_SUPPORTED);
        };
        let (mut acc, mut res, mut ts) = (0u64, 0f32, 0u64);
        // SAFETY: `p` came from the library; the three out-pointers are valid.
        let rc = unsafe { f(p.0, &mut acc, &mut res, &mut ts) };
        if rc == SUCCESS {
            Ok((acc, res))
        } else {
            Err(rc)
        }
    }

    /// Every power field this release lays out, with its value in watts; `None` where the
    /// library marks it unsupported.
    pub(super) fn power(&self, p: Processor) -> Result<Vec<(PowerField, Option<f64>)>, Status> {
        let Some(f) = self.fns.power_info else {
            return Err(STATUS_NOT_SUPPORTED);
        };
        if self.layout == PowerLayout::Unknown {
            return Err(STATUS_NOT_SUPPORTED);
        }
        let buf = self.read_struct(f, p)?;
        Ok(decode_power(&buf, self.layout, &self.version))
    }

    /// One power field in watts.
    pub(super) fn power_field(&self, p: Processor, field: PowerField) -> Result<f64, Status> {
        let all = self.power(p)?;
        all.into_iter()
            .find(|(f, _)| *f == field)
            .and_then(|(_, w)| w)
            .ok_or(STATUS_NOT_SUPPORTED)
    }
}

/// `amdsmi_bdf_t`: function in bits 0-2, device 3-7, bus 8-15, domain 16-63.
pub(super) fn format_bdf(raw: u64) -> String {
    format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        raw >> 16,
        (raw >> 8) & 0xff,
        (raw >> 3) & 0x1f,
        raw & 0x7
    )
}

/// Calls a two-step list function (count with NULL, then fill) and returns the handles.
fn list(mut call: impl FnMut(*mut u32, *mut Handle) -> Status) -> Result<Vec<Handle>, Status> {
    let mut n: u32 = 0;
    let rc = call(&mut n, std::ptr::null_mut());
    if rc != SUCCESS {
        return Err(rc);
    }
    let mut out: Vec<Handle> = vec![std::ptr::null_mut(); n as usize];
    if n == 0 {
        return Ok(out);
    }
    let rc = call(&mut n, out.as_mut_ptr());
    if rc != SUCCESS {
        return Err(rc);
    }
    out.truncate(n as usize);
    Ok(out)
}

/// The release from `amdsmi_get_lib_version`, and the power layout it implies. The struct is
/// `{uint32_t year, major, minor, release; const char *build}` in 6.x and `{uint32_t major,
/// minor, release; const char *build}` from 7.0; the first word is the leading number either way
/// (24 for ROCm 6.1 to 6.3, 25 for 6.4, 26 and up for 7.x).
fn version(f: Option<VersionFn>) -> (String, PowerLayout) {
    let Some(f) = f else {
        return ("unknown".into(), PowerLayout::Unknown);
    };
    let mut buf = [0u8; 64];
    // SAFETY: `buf` is zeroed and larger than amdsmi_version_t in any release.
    let rc = unsafe { f(buf.as_mut_ptr()) };
    if rc != SUCCESS {
        return ("unknown".into(), PowerLayout::Unknown);
    }
    let (a, b, c) = (u32_at(&buf, 0), u32_at(&buf, 4), u32_at(&buf, 8));
    (format!("{a}.{b}.{c}"), layout_of(a))
}

/// Why the library could not be used; `loaded` is false when it could not even be loaded.
pub(super) struct OpenError {
    pub(super) loaded: bool,
    pub(super) unavailable: Box<Unavailable>,
}

/// Loads the library, resolves the calls, and initialises it for AMD GPUs.
pub(super) fn open(library: Option<&std::path::Path>) -> Result<AmdSmi, OpenError> {
    let path = library.map_or_else(|| PathBuf::from(DEFAULT_LIBRARY), |p| p.to_path_buf());
    let what = path.display().to_string();
    let fail = |reason: String, hint: &str| OpenError {
        loaded: true,
        unavailable: Box::new(Unavailable {
            backend: BACKEND,
            what: what.clone(),
            reason,
            hint: hint.to_string(),
        }),
    };
    // SAFETY: loading runs the library's initialisers, which set up its own state only.
    let lib = match unsafe { Library::new(&path) } {
        Ok(lib) => lib,
        Err(e) => {
            return Err(OpenError {
                loaded: false,
                ..fail(
                    format!("cannot load the AMD SMI library: {e}"),
                    "install ROCm's amd-smi-lib (it provides libamd_smi.so, usually in \
                     /opt/rocm/lib), or set CARBONCTX_AMDSMI_LIBRARY to its path",
                )
            })
        }
    };
    // SAFETY (every resolution below): each type alias is the C signature of the named
    // function in amdsmi.h, and the pointers are kept next to `lib` in `AmdSmi`, which keeps
    // the library loaded for as long as they can be called.
    let init: Option<InitFn> = unsafe { symbol(&lib, "amdsmi_init") };
    let shut_down: Option<ShutDownFn> = unsafe { symbol(&lib, "amdsmi_shut_down") };
    let sockets: Option<SocketsFn> = unsafe { symbol(&lib, "amdsmi_get_socket_handles") };
    let processors: Option<ProcessorsFn> = unsafe { symbol(&lib, "amdsmi_get_processor_handles") };
    let (Some(init), Some(shut_down), Some(sockets), Some(processors)) =
        (init, shut_down, sockets, processors)
    else {
        return Err(fail(
            "the library lacks the basic AMD SMI calls (amdsmi_init, amdsmi_shut_down, \
             amdsmi_get_socket_handles, amdsmi_get_processor_handles)"
                .into(),
            "point CARBONCTX_AMDSMI_LIBRARY at libamd_smi.so from ROCm",
        ));
    };
    let fns = Fns {
        shut_down,
        // SAFETY: as above.
        status_string: unsafe { symbol(&lib, "amdsmi_status_code_to_string") },
        sockets,
        processors,
        // SAFETY: as above.
        processor_type: unsafe { symbol(&lib, "amdsmi_get_processor_type") },
        // SAFETY: as above.
        bdf: unsafe { symbol(&lib, "amdsmi_get_gpu_device_bdf") },
        // SAFETY: as above.
        uuid: unsafe { symbol(&lib, "amdsmi_get_gpu_device_uuid") },
        // SAFETY: as above.
        asic_info: unsafe { symbol(&lib, "amdsmi_get_gpu_asic_info") },
        // SAFETY: as above.
        power_info: unsafe { symbol(&lib, "amdsmi_get_power_info") },
        // SAFETY: as above.
        energy: unsafe { symbol(&lib, "amdsmi_get_energy_count") },
    };
    if fns.energy.is_none() && fns.power_info.is_none() {
        return Err(fail(
            "the library offers neither amdsmi_get_energy_count nor amdsmi_get_power_info".into(),
            "update ROCm's amd-smi-lib",
        ));
    }
    // SAFETY: amdsmi_init takes a flag word and may be called from any thread.
    let rc = unsafe { init(INIT_AMD_GPUS) };
    if rc != SUCCESS {
        // Not initialised: nothing to shut down; the library is unloaded as `lib` drops.
        return Err(fail(
            format!(
                "amdsmi_init(AMDSMI_INIT_AMD_GPUS) failed: {} (status {rc})",
                message_with(fns.status_string, rc)
            ),
            hint_for(rc),
        ));
    }
    // SAFETY: as above.
    let (version, layout) = version(unsafe { symbol(&lib, "amdsmi_get_lib_version") });
    Ok(AmdSmi {
        fns,
        path,
        layout,
        version,
        _lib: lib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_fields() {
        // domain 0x0001, bus 0xc1, device 0x1f, function 3
        let raw = (1u64 << 16) | (0xc1 << 8) | (0x1f << 3) | 3;
        assert_eq!(format_bdf(raw), "0001:c1:1f.3");
    }
}
