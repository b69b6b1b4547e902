//! Which GPUs this process may see: `CUDA_VISIBLE_DEVICES` resolved against NVML's indices
//! and UUIDs, the way CUDA reads it (see the [`super`] module documentation). The values come
//! from the caller; this crate reads no environment variable.

use super::ffi::{Device, Nvml, SUCCESS};
use crate::sensors::Unavailable;

/// The NVML indices `CUDA_VISIBLE_DEVICES` makes visible, in its order.
pub(super) struct Selection {
    /// NVML index, and whether it was chosen by index (so CUDA's ordering matters).
    pub(super) indices: Vec<(u32, bool)>,
    /// The GPUs chosen through one of their MIG instances, with the entry that named it.
    pub(super) mig: Vec<(u32, String)>,
    pub(super) unavailable: Vec<Unavailable>,
}

pub(super) fn select(nvml: &Nvml, count: u32, visible: Option<&str>) -> Selection {
    choose(
        count,
        || all_uuids(nvml, count),
        || Some(all_migs(nvml, count)),
        |entry| by_uuid(nvml, entry, count),
        visible,
    )
}

/// `CUDA_VISIBLE_DEVICES` resolved against `count` GPUs whose UUIDs `uuids` gives (`None` where
/// unknown) and whose MIG instances' UUIDs `migs` gives (`None`: not known here), each asked
/// for only when an entry needs it, the way CUDA reads it; `exact` finds a GPU by full UUID
/// where the list does not (NVML's own lookup, or nothing). The one place the variable is
/// interpreted: discovery uses it with NVML, and a process sharing the node's sampler uses it
/// with the GPUs that sampler published ([`crate::nvml::visible_among`]).
///
/// A MIG instance (`MIG-<uuid>`, or the legacy `MIG-GPU-<uuid>/<gi>/<ci>`) stands for its
/// parent GPU: NVML's energy counter and power cover the whole GPU, not one instance. Another
/// instance of a GPU already listed adds nothing.
pub(super) fn choose(
    count: u32,
    uuids: impl FnOnce() -> Vec<Option<String>>,
    migs: impl FnOnce() -> Option<Vec<Vec<String>>>,
    exact: impl Fn(&str) -> Option<u32>,
    visible: Option<&str>,
) -> Selection {
    let mut sel = Selection {
        indices: Vec::new(),
        mig: Vec::new(),
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
    let mut uuids = Lazy::new(uuids);
    let mut migs = Lazy::new(migs);
    for (pos, entry) in entries.iter().enumerate() {
        let ignored = || entries[pos..].join(",");
        if is_mig(entry) {
            let listed = migs.get().as_deref().unwrap_or_default();
            match resolve_mig(entry, listed, uuids.get(), &exact) {
                Some(i) => {
                    if !sel.indices.iter().any(|&(j, _)| j == i) {
                        sel.indices.push((i, false));
                        sel.mig.push((i, entry.to_string()));
                    }
                    continue;
                }
                None => {
                    let among = match migs.get() {
                        Some(m) => format!(
                            "of the {count} GPU(s) NVML lists ({} instance(s) found)",
                            m.iter().map(Vec::len).sum::<usize>()
                        ),
                        None => "known here (the node's sampler publishes its GPUs, not their \
                                 instances)"
                            .into(),
                    };
                    sel.unavailable.push(unavailable(
                        format!("CUDA_VISIBLE_DEVICES entry {entry}"),
                        format!(
                            "it names no MIG instance {among}, so CUDA ignores it and every \
                             entry after it ({:?})",
                            ignored()
                        ),
                        "use a MIG UUID that nvidia-smi -L lists, or the parent GPU's UUID: a \
                         MIG instance is measured as its whole GPU, whose energy counter its \
                         instances share"
                            .into(),
                    ));
                    break;
                }
            }
        }
        let resolved = if entry.starts_with("GPU-") {
            resolve_uuid(entry, uuids.get(), &exact).map(|i| (i, false))
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
                sel.unavailable.push(unavailable(
                    format!("CUDA_VISIBLE_DEVICES entry {entry:?}"),
                    format!(
                        "it names no GPU (or one already listed), so CUDA ignores it and every \
                         entry after it ({:?}); {count} GPU(s) are present",
                        ignored()
                    ),
                    "use indices below the GPU count or UUIDs from nvidia-smi -L, each once".into(),
                ));
                break;
            }
        }
    }
    sel
}

/// A value computed on first use.
struct Lazy<T, F: FnOnce() -> T> {
    make: Option<F>,
    value: Option<T>,
}

impl<T: Default, F: FnOnce() -> T> Lazy<T, F> {
    fn new(make: F) -> Self {
        Lazy {
            make: Some(make),
            value: None,
        }
    }

    fn get(&mut self) -> &T {
        let make = &mut self.make;
        self.value
            .get_or_insert_with(|| make.take().map_or_else(T::default, |f| f()))
    }
}

fn is_mig(entry: &str) -> bool {
    entry
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("MIG-"))
}

/// The GPU a MIG entry stands for: the one whose instances include it (UUIDs compare without
/// regard to case, as nvidia-smi prints them in either), else, for the legacy form
/// `MIG-GPU-<uuid>/<gi>/<ci>`, the GPU of that UUID.
fn resolve_mig(
    entry: &str,
    migs: &[Vec<String>],
    uuids: &[Option<String>],
    exact: impl Fn(&str) -> Option<u32>,
) -> Option<u32> {
    if let Some(i) = migs
        .iter()
        .position(|m| m.iter().any(|u| u.eq_ignore_ascii_case(entry)))
    {
        return Some(i as u32);
    }
    let mut parts = entry[4..].split('/');
    let parent = parts.next()?;
    let legacy = parent
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("GPU-"))
        && parts.clone().count() == 2
        && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !legacy {
        return None;
    }
    uuids
        .iter()
        .position(|u| u.as_deref().is_some_and(|u| u.eq_ignore_ascii_case(parent)))
        .map(|i| i as u32)
        .or_else(|| exact(parent))
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

/// The UUIDs of each GPU's MIG instances.
fn all_migs(nvml: &Nvml, count: u32) -> Vec<Vec<String>> {
    (0..count)
        .map(|i| {
            nvml.handle(i)
                .map(|h| nvml.mig_uuids(h))
                .unwrap_or_default()
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
