//! What sysfs says about AMD GPUs, for numbering them as the ROCm runtime does: the KFD
//! topology (`<sys>/class/kfd/kfd/topology/nodes/N/properties`) lists GPU nodes in the order
//! ROCr enumerates them, with each one's PCI location and `unique_id`, from which ROCr makes the
//! UUID that `ROCR_VISIBLE_DEVICES` accepts (`GPU-` and 16 upper-case hex digits).

use std::fs;
use std::path::Path;

/// One GPU node of the KFD topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct KfdGpu {
    /// `dddd:bb:dd.f`.
    pub(super) bdf: String,
    /// `GPU-XXXXXXXXXXXXXXXX`, where the node has a unique id.
    pub(super) uuid: Option<String>,
    /// `cpu_cores_count`: the CPU ("latency") cores of the node, 0 for a discrete GPU (see
    /// [`super::apu`]).
    pub(super) cpu_cores: u64,
}

/// The GPU nodes of the KFD topology in node order (CPU nodes, which have no SIMDs, left out);
/// empty where there is no topology to read.
pub(super) fn kfd_gpus(sys: &Path) -> Vec<KfdGpu> {
    let dir = sys.join("class/kfd/kfd/topology/nodes");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut nodes: Vec<(u32, KfdGpu)> = entries
        .flatten()
        .filter_map(|e| {
            let n: u32 = e.file_name().to_str()?.parse().ok()?;
            let text = fs::read_to_string(e.path().join("properties")).ok()?;
            let get = |key: &str| -> Option<u64> {
                text.lines().find_map(|l| {
                    let mut it = l.split_whitespace();
                    (it.next()? == key).then(|| it.next()?.parse().ok())?
                })
            };
            if get("simd_count").unwrap_or(0) == 0 {
                return None;
            }
            let location = get("location_id")?;
            let domain = get("domain").unwrap_or(0);
            let bdf = format!(
                "{:04x}:{:02x}:{:02x}.{:x}",
                domain,
                (location >> 8) & 0xff,
                (location >> 3) & 0x1f,
                location & 0x7
            );
            let uuid = get("unique_id").filter(|&u| u != 0).map(rocr_uuid);
            let cpu_cores = get("cpu_cores_count").unwrap_or(0);
            Some((
                n,
                KfdGpu {
                    bdf,
                    uuid,
                    cpu_cores,
                },
            ))
        })
        .collect();
    nodes.sort_by_key(|(n, _)| *n);
    nodes.into_iter().map(|(_, g)| g).collect()
}

/// Whether sysfs shows an AMD GPU: the amdgpu driver loaded, or a GPU node in the KFD topology.
pub(super) fn amd_gpu_present(sys: &Path) -> bool {
    sys.join("module/amdgpu").exists() || !kfd_gpus(sys).is_empty()
}

/// ROCr's UUID for a unique id.
pub(super) fn rocr_uuid(unique_id: u64) -> String {
    format!("GPU-{unique_id:016X}")
}

/// The unique id the amdgpu driver publishes for a PCI device (`<sys>/bus/pci/devices/BDF/
/// unique_id`, hex), as ROCr's UUID.
pub(super) fn pci_uuid(sys: &Path, bdf: &str) -> Option<String> {
    let text = fs::read_to_string(sys.join("bus/pci/devices").join(bdf).join("unique_id")).ok()?;
    let id = u64::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()?;
    (id != 0).then(|| rocr_uuid(id))
}

/// A GPU as the runtime numbers it: its index among every AMD GPU of the machine (before any
/// `*_VISIBLE_DEVICES`), and ROCr's UUID where known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Numbered {
    pub(super) index: u32,
    pub(super) uuid: Option<String>,
}

/// Numbers the GPUs at `bdfs` (repeats allowed: partitions of one device share its address) as
/// ROCr does: in KFD topology order where the topology lists them, then the rest in PCI order.
pub(super) fn number(sys: &Path, bdfs: &[String]) -> Vec<Numbered> {
    let kfd = kfd_gpus(sys);
    let mut used = vec![false; kfd.len()];
    // The KFD node each entry matches (the k-th entry at an address takes its k-th node).
    let slots: Vec<Option<usize>> = bdfs
        .iter()
        .map(|b| {
            let i = (0..kfd.len()).find(|&i| !used[i] && kfd[i].bdf == *b)?;
            used[i] = true;
            Some(i)
        })
        .collect();
    let mut order: Vec<usize> = (0..bdfs.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| {
            (
                slots[i].is_none(),
                slots[i].unwrap_or(0),
                bdfs[i].clone(),
                i,
            )
        };
        key(a).cmp(&key(b))
    });
    let mut out = vec![
        Numbered {
            index: 0,
            uuid: None
        };
        bdfs.len()
    ];
    for (index, &i) in order.iter().enumerate() {
        let uuid = slots[i]
            .and_then(|k| kfd[k].uuid.clone())
            .or_else(|| pci_uuid(sys, &bdfs[i]));
        out[i] = Numbered {
            index: index as u32,
            uuid,
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(dir: &Path, n: u32, text: &str) {
        let d = dir.join(format!("class/kfd/kfd/topology/nodes/{n}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("properties"), text).unwrap();
    }

    #[test]
    fn numbers_follow_the_kfd_topology() {
        let tmp = tempfile_dir();
        let sys = tmp.as_path();
        node(
            sys,
            0,
            "cpu_cores_count 64\nsimd_count 0\nlocation_id 0\ndomain 0\n",
        );
        // Node 1 is the GPU at c1:00.0, node 2 the one at 03:00.0 (order not by bus).
        node(
            sys,
            1,
            "simd_count 440\nlocation_id 49408\ndomain 0\nunique_id 1311768467463790320\n",
        );
        node(
            sys,
            2,
            "simd_count 440\nlocation_id 768\ndomain 0\nunique_id 0\n",
        );
        let bdfs = vec![
            "0000:03:00.0".to_string(),
            "0000:c1:00.0".to_string(),
            "0000:e1:00.0".to_string(),
        ];
        let n = number(sys, &bdfs);
        assert_eq!(n[1].index, 0);
        assert_eq!(n[1].uuid.as_deref(), Some("GPU-123456789ABCDEF0"));
        assert_eq!(n[0].index, 1);
        assert_eq!(n[0].uuid, None);
        assert_eq!(n[2].index, 2, "not in the topology: after those that are");
        fs::remove_dir_all(sys).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("carbonctx-kfd-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }
}
