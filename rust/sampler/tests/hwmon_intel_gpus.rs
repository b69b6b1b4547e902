//! The hwmon backend for Intel GPUs (i915, xe), on temporary sysfs trees laid out as the kernel
//! makes them: xe's card and package channels as one GPU, unlabelled channels by the ABI's
//! numbering, i915 GPUs numbered after other GPUs by PCI address.

// Each test file uses part of the shared helpers.
#[allow(dead_code)]
mod common_fs;
#[allow(dead_code)]
mod common_hwmon;

use carbonctx_sampler::discover;
use carbonctx_sampler::hwmon;
use carbonctx_sampler::{Domain, Method, Reading};
use common_fs::{roots_at, summary};
use common_hwmon::{chip, options, read};

const XE_CARD: &str = "pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:01.0/0000:03:00.0";

#[test]
fn xe_card_and_package_are_one_gpu() {
    let tmp = tempfile::tempdir().unwrap();
    chip(
        tmp.path(),
        XE_CARD,
        3,
        &[
            (false, "name", "xe\n"),
            (false, "energy1_input", "123456789\n"),
            (false, "energy1_label", "card\n"),
            (false, "energy2_input", "100000000\n"),
            (false, "energy2_label", "pkg\n"),
            (false, "power1_max", "150000000\n"),
            (false, "in1_input", "880\n"),
        ],
    );
    let mut found = hwmon::discover(&roots_at(tmp.path()), 0);
    assert!(found.unavailable.is_empty(), "{:?}", found.unavailable);
    assert_eq!(
        summary(&found),
        vec![
            (
                "hwmon:xe:0000:03:00.0:energy1".into(),
                Domain::Gpu,
                0,
                "Intel GPU 0000:03:00.0 card (xe)".into()
            ),
            (
                "hwmon:xe:0000:03:00.0:energy2".into(),
                Domain::Gpu,
                0,
                "Intel GPU 0000:03:00.0 package (xe)".into()
            ),
        ]
    );
    let info = found.sources[0].info();
    assert_eq!(info.backend, "hwmon");
    assert_eq!(info.method, Method::Counter);
    let spec = info.counter.unwrap();
    assert_eq!((spec.joules_per_unit, spec.wrap), (1e-6, None));
    assert_eq!(
        read(&mut found, "hwmon:xe:0000:03:00.0:energy1"),
        Reading::Counter(123_456_789)
    );

    // Through discovery: the card is read, the package listed as the same GPU's alternative.
    let d = discover::discover(&options(tmp.path()));
    let chosen: Vec<_> = d.chosen.iter().map(|s| s.info().id.clone()).collect();
    assert_eq!(chosen, vec!["hwmon:xe:0000:03:00.0:energy1".to_string()]);
    let alts: Vec<_> = d.alternatives.iter().map(|i| i.id.clone()).collect();
    assert_eq!(alts, vec!["hwmon:xe:0000:03:00.0:energy2".to_string()]);
}

#[test]
fn unlabelled_xe_channels_follow_the_abi_numbering() {
    let tmp = tempfile::tempdir().unwrap();
    // A kernel that labels nothing: energy1 is the card, energy2 the package.
    chip(
        tmp.path(),
        XE_CARD,
        0,
        &[
            (false, "name", "xe\n"),
            (false, "energy2_input", "5\n"),
            (false, "energy1_input", "7\n"),
        ],
    );
    let found = hwmon::discover(&roots_at(tmp.path()), 0);
    let labels: Vec<_> = summary(&found).into_iter().map(|s| s.3).collect();
    assert_eq!(
        labels,
        vec![
            "Intel GPU 0000:03:00.0 card (xe)".to_string(),
            "Intel GPU 0000:03:00.0 package (xe)".to_string()
        ]
    );
}

#[test]
fn i915_gpus_are_numbered_after_other_gpus_by_pci_address() {
    let tmp = tempfile::tempdir().unwrap();
    let energy = |v: &'static str| {
        vec![
            (false, "name", "i915\n"),
            (false, "energy1_input", v),
            (false, "power1_rated_max", "190000000\n"),
        ]
    };
    chip(
        tmp.path(),
        "pci0000:80/0000:80:01.0/0000:8a:00.0",
        5,
        &energy("2000\n"),
    );
    chip(
        tmp.path(),
        "pci0000:00/0000:00:01.0/0000:03:00.0",
        7,
        &energy("1000\n"),
    );
    // The gt-level counter lies inside the device's figure: not a source of its own.
    chip(
        tmp.path(),
        "pci0000:00/0000:00:01.0/0000:03:00.0/gt0",
        8,
        &[
            (false, "name", "i915_gt0\n"),
            (false, "energy1_input", "9\n"),
        ],
    );
    // An integrated GPU publishes no energy: said so.
    chip(
        tmp.path(),
        "pci0000:00/0000:00:02.0",
        1,
        &[(false, "name", "i915\n"), (false, "in0_input", "700\n")],
    );
    let found = hwmon::discover(&roots_at(tmp.path()), 2);
    assert_eq!(
        summary(&found)
            .into_iter()
            .map(|s| (s.0, s.2))
            .collect::<Vec<_>>(),
        vec![
            ("hwmon:i915:0000:03:00.0:energy1".to_string(), 2),
            ("hwmon:i915:0000:8a:00.0:energy1".to_string(), 3),
        ]
    );
    assert_eq!(found.unavailable.len(), 1, "{:?}", found.unavailable);
    let u = &found.unavailable[0];
    assert_eq!(u.backend, "hwmon");
    assert!(u.reason.contains("0000:00:02.0"), "{u:?}");
    assert!(u.reason.contains("no energy counter"), "{u:?}");
    assert!(!u.hint.is_empty());
}
