//! NVIDIA MIG: a GPU's instances, and how many of the GPU's slices each holds.
//!
//! The instances are listed through `nvmlDeviceGetMigMode`, `nvmlDeviceGetMaxMigDeviceCount`
//! and `nvmlDeviceGetMigDeviceHandleByIndex` (R450 drivers and later). An instance's share of
//! its GPU is counted in GPU slices: `gpuInstanceSliceCount` of `nvmlDeviceGetAttributes_v2` on
//! the instance's (MIG device) handle, out of the GPU's slices, which are the `sliceCount` of
//! the largest GPU-instance profile the GPU supports (`nvmlDeviceGetGpuInstanceProfileInfo` over
//! the `NVML_GPU_INSTANCE_PROFILE_*` constants: the profile that spans the whole GPU, 7 slices
//! on an A100 or H100, 4 on an A30). Both counts are in the same unit, the GPU instance's
//! compute slices, and are immutable while the MIG mode stays.

use std::ffi::{c_int, c_uint, c_ulonglong};

use libloading::Library;

use super::ffi::{error_message, symbol, Device, Handle, Nvml, SUCCESS};

/// `NVML_DEVICE_MIG_ENABLE`: the current MIG mode of a GPU partitioned into instances.
const MIG_ENABLE: c_uint = 1;
/// More MIG device slots than any GPU has (seven on an A100 or H100): a bound on the loop over
/// what `nvmlDeviceGetMaxMigDeviceCount` says.
const MAX_MIG_SLOTS: c_uint = 64;
/// More `NVML_GPU_INSTANCE_PROFILE_*` constants than nvml.h defines (17 in recent headers); a
/// constant the driver does not know is refused, and skipped.
const PROFILE_CONSTANTS: c_uint = 32;

/// `nvmlDeviceGetMigMode(device, *currentMode, *pendingMode)`.
type MigModeFn = unsafe extern "C" fn(Device, *mut c_uint, *mut c_uint) -> c_int;
/// `nvmlDeviceGetMaxMigDeviceCount(device, *count)`, and the same shape for
/// `nvmlDeviceGetGpuInstanceId` and `nvmlDeviceGetComputeInstanceId` on a MIG handle.
type UintFn = unsafe extern "C" fn(Device, *mut c_uint) -> c_int;
/// `nvmlDeviceGetMigDeviceHandleByIndex(device, index, *migDevice)`.
type MigByIndexFn = unsafe extern "C" fn(Device, c_uint, *mut Device) -> c_int;
/// `nvmlDeviceGetAttributes_v2(device, *attributes)`.
type AttributesFn = unsafe extern "C" fn(Device, *mut Attributes) -> c_int;
/// `nvmlDeviceGetGpuInstanceProfileInfo(device, profile, *info)`.
type ProfileInfoFn = unsafe extern "C" fn(Device, c_uint, *mut ProfileInfo) -> c_int;

/// `nvmlDeviceAttributes_t` (nvml.h), as `nvmlDeviceGetAttributes_v2` fills it. (The
/// unversioned `nvmlDeviceGetAttributes` of R450 fills only the first six fields: never called.)
#[repr(C)]
#[derive(Default)]
#[allow(dead_code)] // every field is part of the layout; few are read
struct Attributes {
    multiprocessor_count: c_uint,
    shared_copy_engine_count: c_uint,
    shared_decoder_count: c_uint,
    shared_encoder_count: c_uint,
    shared_jpeg_count: c_uint,
    shared_ofa_count: c_uint,
    gpu_instance_slice_count: c_uint,
    compute_instance_slice_count: c_uint,
    memory_size_mb: c_ulonglong,
}

/// `nvmlGpuInstanceProfileInfo_t` (nvml.h).
#[repr(C)]
#[derive(Default)]
#[allow(dead_code)] // every field is part of the layout; few are read
struct ProfileInfo {
    id: c_uint,
    is_p2p_supported: c_uint,
    slice_count: c_uint,
    instance_count: c_uint,
    multiprocessor_count: c_uint,
    copy_engine_count: c_uint,
    decoder_count: c_uint,
    encoder_count: c_uint,
    jpeg_count: c_uint,
    ofa_count: c_uint,
    memory_size_mb: c_ulonglong,
}

// nvml.h's sizes on every LP64 target: 8 unsigned ints and a 64-bit count (40 bytes); 10 and
// one (48). The unversioned `nvmlDeviceGetGpuInstanceProfileInfo` fills this first layout; the
// versioned ones (`...InfoV`, `_v2`/`_v3` structures with a leading `version` and a name) are not
// called.
const _: () = assert!(std::mem::size_of::<Attributes>() == 40);
const _: () = assert!(std::mem::size_of::<ProfileInfo>() == 48);

/// The MIG calls. The three that list instances are all there or the whole is `None`; the
/// others are optional (newer drivers).
#[derive(Clone, Copy)]
pub(super) struct MigFns {
    mode: MigModeFn,
    count: UintFn,
    by_index: MigByIndexFn,
    gpu_instance_id: Option<UintFn>,
    compute_instance_id: Option<UintFn>,
    attributes: Option<AttributesFn>,
    profile_info: Option<ProfileInfoFn>,
}

/// The MIG calls, where the library has the three that list instances.
///
/// # Safety
/// As for [`symbol`].
pub(super) unsafe fn mig_fns(lib: &Library) -> Option<MigFns> {
    // SAFETY: each type alias is the documented C signature of the named function.
    unsafe {
        Some(MigFns {
            mode: symbol(lib, "nvmlDeviceGetMigMode")?,
            count: symbol(lib, "nvmlDeviceGetMaxMigDeviceCount")?,
            by_index: symbol(lib, "nvmlDeviceGetMigDeviceHandleByIndex")?,
            gpu_instance_id: symbol(lib, "nvmlDeviceGetGpuInstanceId"),
            compute_instance_id: symbol(lib, "nvmlDeviceGetComputeInstanceId"),
            attributes: symbol(lib, "nvmlDeviceGetAttributes_v2"),
            profile_info: symbol(lib, "nvmlDeviceGetGpuInstanceProfileInfo"),
        })
    }
}

/// One MIG instance of a GPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigInstance {
    /// `MIG-…` (or, from drivers before R470, `MIG-GPU-<uuid>/<gi>/<ci>`).
    pub uuid: String,
    /// The driver's name for it, with its profile (`… MIG 3g.40gb`), where NVML gives it.
    pub name: Option<String>,
    /// Its GPU instance and compute instance ids (as the legacy UUID form names them).
    pub gpu_instance_id: Option<u32>,
    pub compute_instance_id: Option<u32>,
    /// Its GPU instance's slices (`gpuInstanceSliceCount`); `None` with `slices_error` saying
    /// why where NVML does not tell.
    pub slices: Option<u32>,
    /// Its compute instance's slices (`computeInstanceSliceCount`): fewer than its GPU
    /// instance's where that is split into several compute instances (several MIG devices).
    pub compute_slices: Option<u32>,
    pub slices_error: Option<String>,
}

impl Nvml {
    /// The MIG instances of GPU `dev`, in NVML's order of their slots. Empty when MIG is off or
    /// not supported there, or the library lacks the MIG calls. A slot without an instance
    /// (`NVML_ERROR_NOT_FOUND`) or one this process may not query (a container shown only its
    /// own instance) is skipped. The instances share the GPU's energy counter: NVML has none per
    /// instance.
    pub(super) fn mig_instances(&self, dev: Handle) -> Vec<MigInstance> {
        let Some(mig) = self.fns.mig else {
            return Vec::new();
        };
        let (mut current, mut pending): (c_uint, c_uint) = (0, 0);
        // SAFETY: `dev` came from this initialised NVML; both are valid out-pointers.
        let rc = unsafe { (mig.mode)(dev.0, &mut current, &mut pending) };
        if rc != SUCCESS || current != MIG_ENABLE {
            return Vec::new();
        }
        let mut slots: c_uint = 0;
        // SAFETY: as above.
        if unsafe { (mig.count)(dev.0, &mut slots) } != SUCCESS {
            return Vec::new();
        }
        (0..slots.min(MAX_MIG_SLOTS))
            .filter_map(|i| {
                let mut inst: Device = std::ptr::null_mut();
                // SAFETY: as above; `inst` is a valid out-pointer.
                let rc = unsafe { (mig.by_index)(dev.0, i, &mut inst) };
                if rc != SUCCESS || inst.is_null() {
                    return None;
                }
                let inst = Handle(inst);
                // A MIG handle answers nvmlDeviceGetUUID with the instance's own UUID.
                let uuid = self.string(self.fns.uuid, inst)?;
                let (slices, compute_slices, slices_error) = match self.instance_slices(&mig, inst)
                {
                    Ok((gi, ci)) => (Some(gi), (ci > 0).then_some(ci), None),
                    Err(e) => (None, None, Some(e)),
                };
                Some(MigInstance {
                    uuid,
                    name: self.string(self.fns.name, inst),
                    gpu_instance_id: uint(mig.gpu_instance_id, inst),
                    compute_instance_id: uint(mig.compute_instance_id, inst),
                    slices,
                    compute_slices,
                    slices_error,
                })
            })
            .collect()
    }

    /// The UUIDs of GPU `dev`'s MIG instances (see [`Nvml::mig_instances`]).
    pub(super) fn mig_uuids(&self, dev: Handle) -> Vec<String> {
        self.mig_instances(dev)
            .into_iter()
            .map(|m| m.uuid)
            .collect()
    }

    /// The instance's GPU instance slices and compute instance slices.
    fn instance_slices(&self, mig: &MigFns, inst: Handle) -> Result<(u32, u32), String> {
        let f = mig
            .attributes
            .ok_or("the NVML library lacks nvmlDeviceGetAttributes_v2 (drivers before R455)")?;
        let mut a = Attributes::default();
        // SAFETY: `inst` is a MIG handle of this initialised NVML; `a` has the layout of
        // nvmlDeviceAttributes_t, which the _v2 call fills.
        let rc = unsafe { f(inst.0, &mut a) };
        if rc != SUCCESS {
            return Err(format!(
                "nvmlDeviceGetAttributes_v2 failed: {} (code {rc})",
                error_message(self.fns.error_string, rc)
            ));
        }
        if a.gpu_instance_slice_count == 0 {
            return Err("nvmlDeviceGetAttributes_v2 gives 0 GPU instance slices".into());
        }
        Ok((a.gpu_instance_slice_count, a.compute_instance_slice_count))
    }

    /// GPU `dev`'s slices: the largest `sliceCount` among the GPU-instance profiles it
    /// supports (the profile of the whole GPU); why not, where NVML does not tell.
    pub(super) fn gpu_slices(&self, dev: Handle) -> Result<u32, String> {
        let f = self.fns.mig.and_then(|m| m.profile_info).ok_or(
            "the NVML library lacks nvmlDeviceGetGpuInstanceProfileInfo (drivers before R450)",
        )?;
        // The answer for the first constant (the 1-slice profile every MIG GPU has) says most.
        let mut first_rc = SUCCESS;
        let most = (0..PROFILE_CONSTANTS)
            .filter_map(|p| {
                let mut info = ProfileInfo::default();
                // SAFETY: `dev` came from this initialised NVML; `info` has the layout of
                // nvmlGpuInstanceProfileInfo_t.
                let rc = unsafe { f(dev.0, p, &mut info) };
                if rc != SUCCESS && first_rc == SUCCESS {
                    first_rc = rc;
                }
                (rc == SUCCESS).then_some(info.slice_count)
            })
            .max()
            .unwrap_or(0);
        if most > 0 {
            return Ok(most);
        }
        Err(format!(
            "nvmlDeviceGetGpuInstanceProfileInfo names no profile with slices (first answer: {} \
             (code {first_rc}))",
            error_message(self.fns.error_string, first_rc)
        ))
    }
}

/// An unsigned property of a MIG handle; `None` where the call is missing or refused.
fn uint(f: Option<UintFn>, dev: Handle) -> Option<u32> {
    let f = f?;
    let mut v: c_uint = 0;
    // SAFETY: `dev` came from an initialised NVML; `v` is a valid out-pointer.
    (unsafe { f(dev.0, &mut v) } == SUCCESS).then_some(v)
}
