//! APUs: the socket power of an APU (which includes the CPU) is a module beside the package,
//! through AMD SMI or, without it, amdgpu hwmon; discrete GPUs beside it stay GPUs.

use std::fs;

use carbonctx_sampler::{amd, discover};
use carbonctx_sampler::{Domain, Reading};

use super::{ids, Machine};
use crate::common_nvml::reasons;

/// An APU's amdgpu hwmon directory as `amdgpu_pm.c` lays it out: `vddgfx` and `vddnb` (the
/// northbridge voltage, which the driver shows on APUs only), and the socket power `PPT`, which
/// on an APU includes the CPU ("power used by the SoC ... On APUs this includes the CPU").
fn apu_hwmon(m: &Machine, n: u32, bdf: &str, microwatts: u64) {
    let hw = m.hwmon(n, bdf, Some(("power1_input", microwatts)));
    for (f, v) in [
        ("in0_label", "vddgfx\n"),
        ("in0_input", "1210\n"),
        ("in1_label", "vddnb\n"),
        ("in1_input", "1190\n"),
        ("power1_label", "PPT\n"),
    ] {
        fs::write(hw.join(f), v).unwrap();
    }
}

/// A PCI device's `vendor` and `device` files.
fn pci_ids(m: &Machine, bdf: &str, vendor: &str, device: &str) {
    let dir = m.sys().join("bus/pci/devices").join(bdf);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("vendor"), format!("{vendor}\n")).unwrap();
    fs::write(dir.join("device"), format!("{device}\n")).unwrap();
}

#[test]
fn an_apus_socket_is_a_module_beside_the_package_and_discrete_gpus_stay_gpus() {
    let m = Machine::new(
        "devices=4\n\
         gpu0.name=AMD Radeon 8060S\ngpu0.bdf=0000:c4:00.0\n\
         gpu1.name=AMD Radeon RX 7900 XTX\ngpu1.bdf=0000:03:00.0\n\
         gpu2.name=AMD Instinct\ngpu2.bdf=0000:02:00.0\n\
         gpu3.name=AMD Radeon Graphics\ngpu3.bdf=0000:05:00.0\ngpu3.processor_type=apu\n",
    );
    m.kfd(&[
        ("0000:c4:00.0", 0xA0),
        ("0000:03:00.0", 0xA1),
        ("0000:02:00.0", 0xA2),
        ("0000:05:00.0", 0xA3),
    ]);
    // GPU 0: a Strix Halo-like APU, told by its hwmon's vddnb.
    apu_hwmon(&m, 2, "0000:c4:00.0", 48_000_000);
    // GPU 1: a discrete card: vddgfx only, and a PCI id of no APU.
    let card = m.hwmon(3, "0000:03:00.0", Some(("power1_average", 250_000_000)));
    fs::write(card.join("in0_label"), "vddgfx\n").unwrap();
    pci_ids(&m, "0000:03:00.0", "0x1002", "0x744c");
    // GPU 2: an MI300A, told by its PCI device id (its driver hides vddnb).
    pci_ids(&m, "0000:02:00.0", "0x1002", "0x74a0");
    // GPU 3: AMD SMI types it as an APU.
    // A package counter, as on any of these machines.
    let zone = m.sys().join("class/powercap/intel-rapl:0");
    fs::create_dir_all(&zone).unwrap();
    fs::write(zone.join("name"), "package-0\n").unwrap();
    fs::write(zone.join("energy_uj"), "1000\n").unwrap();
    fs::write(zone.join("max_energy_range_uj"), "65532610987\n").unwrap();
    let mut opts = m.options();
    opts.cpu_backends = vec!["powercap".into()];
    let d = discover::discover(&opts);
    let chosen: Vec<_> = d.chosen.iter().map(|s| s.info().clone()).collect();
    let by_id = |id: &str| {
        chosen
            .iter()
            .find(|i| i.id == id)
            .unwrap_or_else(|| panic!("no {id} in {chosen:?}; {:?}", d.unavailable))
    };
    assert_eq!(by_id("powercap:intel-rapl:0").domain, Domain::Package);
    for (id, why) in [
        ("amdsmi:0", "vddnb"),
        ("amdsmi:2", "PCI device 0x74a0 is the Instinct MI300A"),
        ("amdsmi:3", "AMD SMI types it as an APU"),
    ] {
        let i = by_id(id);
        assert_eq!(i.domain, Domain::Module, "{i:?}");
        assert!(i.label.contains("APU socket power"), "{i:?}");
        assert!(i.label.contains(why), "{i:?}");
        assert!(i.label.contains("never added"), "{i:?}");
        // Still numbered, made visible and owned as the AMD GPU it is.
        assert!(amd::is_amd_gpu(i), "{i:?}");
        assert_eq!(discover::same_device(i).2, "amd");
    }
    assert_eq!(
        by_id("amdsmi:0").uuid.as_deref(),
        Some("GPU-00000000000000A0")
    );
    let card = by_id("amdsmi:1");
    assert_eq!(card.domain, Domain::Gpu, "a discrete GPU is unchanged");
    assert!(!card.label.contains("APU"), "{card:?}");
    // The APU's hwmon file is the alternative of the APU's AMD SMI source, not a second figure.
    let alts: Vec<(String, Domain)> = d
        .alternatives
        .iter()
        .map(|i| (i.id.clone(), i.domain))
        .collect();
    assert!(
        alts.contains(&("hwmon:amdgpu:0000:c4:00.0:power1".into(), Domain::Module)),
        "{alts:?}"
    );
    // The visible-device variables still pick an APU by ROCr's index.
    let found = m.discover(Some("2"), None);
    assert_eq!(ids(&found), ["amdsmi:2"], "{}", reasons(&found));
    assert_eq!(found.sources[0].info().domain, Domain::Module);
}

#[test]
fn without_amd_smi_an_apus_hwmon_power_is_the_socket() {
    let m = Machine::new("devices=0\n");
    apu_hwmon(&m, 5, "0000:c4:00.0", 31_500_000);
    // A Kaveri-like APU described by the firmware's CRAT table: one KFD node holding the CPU
    // cores and the GPU's SIMDs, at the GPU's PCI location (0000:00:01.0); its hwmon has no
    // vddnb here, so the topology tells.
    let kaveri = m.hwmon(6, "0000:00:01.0", Some(("power1_average", 20_000_000)));
    fs::write(kaveri.join("in0_label"), "vddgfx\n").unwrap();
    let node = m.sys().join("class/kfd/kfd/topology/nodes/0");
    fs::create_dir_all(&node).unwrap();
    fs::write(
        node.join("properties"),
        "cpu_cores_count 4\nsimd_count 32\nlocation_id 8\ndomain 0\nunique_id 0\n",
    )
    .unwrap();
    let mut opts = m.options();
    opts.amdsmi_library = Some(m.dir.path().join("missing/libamd_smi.so"));
    let mut d = discover::discover(&opts);
    let chosen: Vec<_> = d.chosen.iter().map(|s| s.info().clone()).collect();
    assert_eq!(chosen.len(), 2, "{chosen:?} {:?}", d.unavailable);
    let strix = chosen
        .iter()
        .position(|i| i.id == "hwmon:amdgpu:0000:c4:00.0:power1")
        .expect("the APU's hwmon source");
    assert_eq!(chosen[strix].domain, Domain::Module);
    assert!(chosen[strix].label.contains("vddnb"), "{chosen:?}");
    assert_eq!(d.chosen[strix].read().unwrap(), Reading::Power(31.5));
    let k = chosen
        .iter()
        .find(|i| i.id == "hwmon:amdgpu:0000:00:01.0:power1")
        .expect("the Kaveri-like APU");
    assert_eq!(k.domain, Domain::Module);
    assert!(
        k.label.contains("KFD topology node has 4 CPU cores"),
        "{k:?}"
    );
}
