//! Which GPUs this process may see: `CUDA_VISIBLE_DEVICES` resolved against NVML's indices
//! and UUIDs, the way CUDA reads it (see the [`super`] module documentation). The values come
//! from the caller; this crate reads no environment variable.

use super::ffi::{Device, Nvml, SUCCESS};
use crate::sensors::Unavailable;

/// The NVML indices `CUDA_VISIBLE_DEVICES` makes visible, in its order.
pub(super) struct Selection {
    /// NVML index, and whether it was chosen by index (so CUDA's ordering matters).
    pub(super) indices: Vec<(u32, bool)>,
    pub(super) unavailable: Vec<Unavailable>,
}

pub(super) fn select(nvml: &Nvml, count: u32, visible: Option<&str>) -> Selection {
    choose(
        count,
        || all_uuids(nvml, count),
        |entry| by_uuid(nvml, entry, count),
        visible,
    )
}

/// `CUDA_VISIBLE_DEVICES` resolved against `count` GPUs whose UUIDs `uuids` gives (asked for
/// only when an entry names a UUID; `None` where unknown), the way CUDA reads it; `exact`
/// finds a GPU by full UUID where the list does not (NVML's own lookup, or nothing). The one
/// place the variable is interpreted: discovery uses it with NVML, and a process sharing the
/// node's sampler uses it with the GPUs that sampler published
/// ([`crate::nvml::visible_among`]).
pub(super) fn choose(
    count: u32,
    uuids: impl FnOnce() -> Vec<Option<String>>,
    exact: impl Fn(&str) -> Option<u32>,
    visible: Option<&str>,
) -> Selection {
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
    let mut uuids_fn = Some(uuids);
    let mut uuids: Option<Vec<Option<String>>> = None;
    for (pos, entry) in entries.iter().enumerate() {
        let resolved = if entry.starts_with("MIG-") {
            sel.unavailable.push(unavailable(
                format!("CUDA_VISIBLE_DEVICES entry {entry}"),
                "a MIG instance cannot be measured on its own: NVML's energy and power cover \
                 the whole GPU"
                    .into(),
                "list the parent GPU's UUID in CUDA_VISIBLE_DEVICES to measure the whole GPU"
                    .into(),
            ));
            continue;
        } else if entry.starts_with("GPU-") {
            let uuids = uuids.get_or_insert_with(|| uuids_fn.take().map_or_else(Vec::new, |f| f()));
            resolve_uuid(entry, uuids, &exact).map(|i| (i, false))
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
                sel.unavailable.push(unavailable(
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

fn unavailable(what: String, reason: String, hint: String) -> Unavailable {
    Unavailable {
        backend: "nvml",
        what,
        reason,
        hint,
    }
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
fn resolve_uuid(
    entry: &str,
    uuids: &[Option<String>],
    exact: impl Fn(&str) -> Option<u32>,
) -> Option<u32> {
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
    // Not among the UUIDs read (the call may be missing): ask for an exact match.
    exact(entry)
}

/// NVML's exact lookup of a UUID, as an index below `count`.
fn by_uuid(nvml: &Nvml, entry: &str, count: u32) -> Option<u32> {
    let by_uuid = nvml.fns.by_uuid?;
    let c = std::ffi::CString::new(entry).ok()?;
    let mut dev: Device = std::ptr::null_mut();
    // SAFETY: NVML is initialised; `c` is NUL-terminated and `dev` a valid out-pointer.
    let rc = unsafe { by_uuid(c.as_ptr(), &mut dev) };
    if rc != SUCCESS {
        return None;
    }
    (0..count).find(|&i| nvml.handle(i).is_ok_and(|h| h.0 == dev))
}
