//! `CUDA_VISIBLE_DEVICES`: indices in the order given, UUIDs and their prefixes, the list ending
//! at an invalid or ambiguous entry, and an empty value meaning no GPU.

use carbonctx_sampler::nvml::discover;

use super::ids;
use crate::common_nvml::{reasons, FakeNvml};

/// Four GPUs with distinct UUIDs, for `CUDA_VISIBLE_DEVICES`.
fn four_gpus() -> FakeNvml {
    FakeNvml::new(
        "devices=4\n\
         gpu0.uuid=GPU-aaaa0000-0000-0000-0000-000000000000\n\
         gpu1.uuid=GPU-bbbb0000-0000-0000-0000-000000000001\n\
         gpu2.uuid=GPU-bbbc0000-0000-0000-0000-000000000002\n\
         gpu3.uuid=GPU-cccc0000-0000-0000-0000-000000000003\n",
    )
}

#[test]
fn cuda_visible_devices_indices_keep_their_order() {
    let fake = four_gpus();
    let found = discover(&fake.roots(), Some("2, 0"), None);
    assert!(found.unavailable.is_empty(), "{}", reasons(&found));
    assert_eq!(ids(&found), ["nvml:2", "nvml:0"]);
    // Indices are read in PCI order, which CUDA follows only when told to.
    let label = &found.sources[0].info().label;
    assert!(label.contains("CUDA_DEVICE_ORDER=PCI_BUS_ID"), "{label}");
    let found = discover(&fake.roots(), Some("2,0"), Some("PCI_BUS_ID"));
    assert_eq!(ids(&found), ["nvml:2", "nvml:0"]);
    let label = &found.sources[0].info().label;
    assert!(!label.contains("CUDA_DEVICE_ORDER"), "{label}");
}

#[test]
fn cuda_visible_devices_uuids_and_prefixes() {
    let fake = four_gpus();
    let found = discover(
        &fake.roots(),
        Some("GPU-cccc0000-0000-0000-0000-000000000003,GPU-aaaa"),
        None,
    );
    assert!(found.unavailable.is_empty(), "{}", reasons(&found));
    assert_eq!(ids(&found), ["nvml:3", "nvml:0"]);
    assert!(!found.sources[0].info().label.contains("CUDA_DEVICE_ORDER"));

    // `GPU-bbb` matches two GPUs: ambiguous, so the list ends there.
    let found = discover(&fake.roots(), Some("1,GPU-bbb,0"), None);
    assert_eq!(ids(&found), ["nvml:1"]);
    assert!(reasons(&found).contains("GPU-bbb"), "{}", reasons(&found));
    let found = discover(&fake.roots(), Some("GPU-bbbc"), None);
    assert_eq!(ids(&found), ["nvml:2"]);
}

#[test]
fn cuda_visible_devices_stops_at_an_invalid_entry() {
    let fake = four_gpus();
    let found = discover(&fake.roots(), Some("1,7,2"), None);
    assert_eq!(ids(&found), ["nvml:1"]);
    assert_eq!(found.unavailable.len(), 1);
    let u = &found.unavailable[0];
    assert!(u.what.contains("\"7\""), "{}", u.what);
    assert!(u.reason.contains("7,2"), "{}", u.reason);
    assert!(!u.hint.is_empty());

    for value in ["-1", "none", "0,0,1", "GPU-ffff"] {
        let found = discover(&fake.roots(), Some(value), None);
        let expected: &[&str] = if value == "0,0,1" { &["nvml:0"] } else { &[] };
        assert_eq!(ids(&found), expected, "CUDA_VISIBLE_DEVICES={value:?}");
        assert!(!found.unavailable.is_empty(), "{value:?}");
    }
}

#[test]
fn empty_cuda_visible_devices_means_no_gpu() {
    let fake = four_gpus();
    let found = discover(&fake.roots(), Some(""), None);
    assert!(found.sources.is_empty());
    assert_eq!(found.unavailable.len(), 1);
    let u = &found.unavailable[0];
    assert!(u.reason.contains("CUDA_VISIBLE_DEVICES"), "{}", u.reason);
    assert!(u.hint.contains("unset CUDA_VISIBLE_DEVICES"), "{}", u.hint);
    assert_eq!(fake.init_count(), 0);
}
