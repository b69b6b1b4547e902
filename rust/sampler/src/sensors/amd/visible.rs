//! Which AMD GPUs this process may see, the way the ROCm runtime reads the variables (values
//! come from the caller; this crate reads no environment variable):
//!
//! 1. `ROCR_VISIBLE_DEVICES` (ROCr, first): unset means every GPU, an empty value none;
//!    otherwise a comma-separated list of indices (in ROCr's numbering of all GPUs; `0x` hex
//!    accepted, as `strtol` reads it) or UUIDs (`GPU-` and a unique prefix of the 16 hex digits,
//!    any case). The list ends at its first entry that names no GPU or one already listed, and
//!    at most as many entries as there are GPUs are read. The GPUs are numbered in list order.
//! 2. `HIP_VISIBLE_DEVICES` (HIP, then; `CUDA_VISIBLE_DEVICES` where it is unset, then
//!    `GPU_DEVICE_ORDINAL`, as HIP reads them: the caller passes whichever applies) picks among
//!    the GPUs ROCr left, by their new numbers (or UUIDs), with the same rules.

use crate::sensors::Unavailable;

/// The GPUs chosen, as indices into the machine's GPUs, in the order the process numbers them.
pub(super) struct Selection {
    pub(super) indices: Vec<u32>,
    pub(super) unavailable: Vec<Unavailable>,
}

/// `gpus[i]` is the UUID of the GPU with index `i` (None: unknown).
pub(super) fn select(gpus: &[Option<String>], rocr: Option<&str>, hip: Option<&str>) -> Selection {
    let mut sel = Selection {
        indices: (0..gpus.len() as u32).collect(),
        unavailable: Vec::new(),
    };
    for (var, value) in [("ROCR_VISIBLE_DEVICES", rocr), ("HIP_VISIBLE_DEVICES", hip)] {
        let Some(value) = value else { continue };
        let seen: Vec<Option<String>> = sel
            .indices
            .iter()
            .map(|&i| gpus[i as usize].clone())
            .collect();
        let (picked, problem) = pick(&seen, value);
        if let Some((entry, rest)) = problem {
            sel.unavailable.push(Unavailable {
                backend: super::BACKEND,
                what: format!("{var} entry {entry:?}"),
                reason: format!(
                    "it names no GPU (or one already listed), so the ROCm runtime ignores it and \
                     every entry after it ({rest:?}); {} GPU(s) are visible to it",
                    seen.len()
                ),
                hint: "use indices below the GPU count or UUIDs from rocminfo (GPU-...), each \
                       once"
                    .into(),
            });
        }
        sel.indices = picked.into_iter().map(|k| sel.indices[k]).collect();
    }
    sel
}

/// The positions among `seen` that `value` lists, and the first entry that ended the list early
/// (with the entries it cut off).
#[allow(clippy::type_complexity)]
fn pick(seen: &[Option<String>], value: &str) -> (Vec<usize>, Option<(String, String)>) {
    let mut out: Vec<usize> = Vec::new();
    if value.trim().is_empty() {
        return (out, None);
    }
    let entries: Vec<String> = value
        .split(',')
        .map(|e| e.trim().to_ascii_uppercase())
        .collect();
    for (pos, entry) in entries.iter().enumerate().take(seen.len()) {
        let found = if entry.starts_with('G') {
            by_uuid(seen, entry)
        } else {
            parse_index(entry).filter(|&i| i < seen.len())
        };
        match found {
            Some(k) if !out.contains(&k) => out.push(k),
            _ => return (out, Some((entry.clone(), entries[pos..].join(",")))),
        }
    }
    (out, None)
}

/// An index as `strtol(s, &end, 0)` reads it with nothing left over: decimal, `0x` hex, or
/// octal with a leading `0`.
fn parse_index(s: &str) -> Option<usize> {
    let (digits, radix) = if let Some(h) = s.strip_prefix("0X") {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    usize::from_str_radix(digits, radix).ok()
}

/// The one GPU whose UUID starts with `entry` (5 to 20 characters, as ROCr accepts).
fn by_uuid(seen: &[Option<String>], entry: &str) -> Option<usize> {
    if !(5..=20).contains(&entry.len()) {
        return None;
    }
    let matches: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, u)| {
            u.as_deref()
                .is_some_and(|u| u.to_ascii_uppercase().starts_with(entry))
        })
        .map(|(i, _)| i)
        .collect();
    match matches[..] {
        [one] => Some(one),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus() -> Vec<Option<String>> {
        vec![
            Some("GPU-AAAA000000000000".into()),
            Some("GPU-BBBB000000000001".into()),
            None,
            Some("GPU-BBBC000000000003".into()),
        ]
    }

    #[test]
    fn unset_means_all_and_empty_means_none() {
        assert_eq!(select(&gpus(), None, None).indices, [0, 1, 2, 3]);
        assert!(select(&gpus(), Some(""), None).indices.is_empty());
        assert!(select(&gpus(), None, Some(" ")).indices.is_empty());
    }

    #[test]
    fn hip_indexes_what_rocr_left() {
        let s = select(&gpus(), Some("3,1"), Some("1"));
        assert_eq!(s.indices, [1]);
        let s = select(&gpus(), Some("gpu-bbbc,0x0"), None);
        assert_eq!(s.indices, [3, 0]);
        assert!(s.unavailable.is_empty());
    }

    #[test]
    fn the_list_ends_at_the_first_bad_entry() {
        let s = select(&gpus(), Some("2,7,1"), None);
        assert_eq!(s.indices, [2]);
        assert_eq!(s.unavailable.len(), 1);
        assert!(s.unavailable[0].reason.contains("7,1"));
        // An ambiguous prefix names no GPU; a repeat ends the list.
        assert_eq!(select(&gpus(), Some("GPU-BBB,0"), None).indices, []);
        assert_eq!(select(&gpus(), None, Some("1,1,2")).indices, [1]);
    }
}
