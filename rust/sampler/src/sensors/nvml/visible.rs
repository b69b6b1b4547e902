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
/// instance of a GPU already listed adds nothing; one of another GPU after the first instance
/// is not this process's (CUDA enumerates one MIG instance per process) and is reported.
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
    // The MIG instance CUDA gives this process: it enumerates one, the first listed.
    let mut first_mig: Option<&str> = None;
    for (pos, entry) in entries.iter().enumerate() {
        let ignored = || entries[pos..].join(",");
        if is_mig(entry) {
            let listed = migs.get().as_deref().unwrap_or_default();
            match resolve_mig(entry, listed, uuids.get(), &exact) {
                Some(i) => {
                    let listed_already = sel.indices.iter().any(|&(j, _)| j == i);
                    if let (Some(first), false) = (first_mig, listed_already) {
                        sel.unavailable.push(unavailable(
                            format!("CUDA_VISIBLE_DEVICES entry {entry}"),
                            format!(
                                "CUDA gives a process one MIG instance, the first listed \
                                 ({first}): this one, of GPU {i}, is not this process's, so \
                                 GPU {i} is not measured for it"
                            ),
                            "list one MIG instance per process (start one process per \
                             instance), or the GPU setting to measure other GPUs"
                                .into(),
                        ));
                        continue;
                    }
                    first_mig.get_or_insert(entry);
                    if !listed_already {
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

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "MIG-5e1f0c2a-8d3b-5a7e-9c4d-2b6f1e8a7c30";
    const B: &str = "MIG-9a4c7e21-3f6d-5b8a-8e2c-7d1b4f9a6e52";
    const C: &str = "MIG-0b7d2e64-1c5a-5f3e-a9d8-4e2c6b1f7a93";

    fn pick(visible: &str) -> Selection {
        let uuids = || vec![Some("GPU-aaaa".to_string()), Some("GPU-bbbb".to_string())];
        // GPU 0 has instances A and C, GPU 1 has B.
        let migs = || {
            Some(vec![
                vec![A.to_string(), C.to_string()],
                vec![B.to_string()],
            ])
        };
        choose(2, uuids, migs, |_| None, Some(visible))
    }

    #[test]
    fn cuda_gives_a_process_its_first_mig_instance_only() {
        let sel = pick(&format!("{B},{A}"));
        assert_eq!(sel.indices, [(1, false)]);
        assert_eq!(sel.mig, [(1, B.to_string())]);
        let [u] = &sel.unavailable[..] else {
            panic!("{:?}", sel.unavailable)
        };
        assert!(u.what.contains(A) && u.reason.contains(B), "{u:?}");
        assert!(u.reason.contains("GPU 0 is not measured"), "{u:?}");
        // Another instance of the GPU already measured changes nothing.
        let sel = pick(&format!("{A},{C}"));
        assert_eq!(sel.indices, [(0, false)]);
        assert!(sel.unavailable.is_empty(), "{:?}", sel.unavailable);
    }
}
