//! AMD GPUs against the AMD SMI stand-in (`python/carbonctx/_fakes/fake_amdsmi.c`) and simulated
//! sysfs trees (the KFD topology and amdgpu hwmon directories).

mod common_nvml;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::Duration;

use carbonctx_sampler::amd::{self, AmdOptions};
use carbonctx_sampler::discover::{self, Options, TdpModelUse};
use carbonctx_sampler::{now_ns, Domain, Found, Method, Reading};
use carbonctx_sim::SimMachine;
use common_nvml::{ms_since, sim_with_gpus, FakeNvml, Trace};

const TRACE: Trace = Trace {
    low_w: 40.0,
    high_w: 120.0,
    period_ms: 50.0,
    duty: 0.4,
    base_mj: 1_000_000,
};

/// The stand-in, built once for this test binary.
fn built() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-amdsmi");
        fs::create_dir_all(&dir).expect("create the build directory");
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../python/carbonctx/_fakes/fake_amdsmi.c");
        let tmp = dir.join(format!("libamd_smi.so.{}.tmp", std::process::id()));
        let out = Command::new("cc")
            .args([
                "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
            ])
            .arg(&tmp)
            .arg(&src)
            .output()
            .expect("run cc (a C compiler is needed for the AMD SMI tests)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lib = dir.join("libamd_smi.so");
        fs::rename(&tmp, &lib).expect("move the library into place");
        lib
    })
}

/// A machine: a copy of the stand-in with its configuration, and a sysfs tree.
struct Machine {
    dir: tempfile::TempDir,
    lib: PathBuf,
}

impl Machine {
    fn new(config: &str) -> Machine {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let lib = dir.path().join("libamd_smi.so");
        fs::copy(built(), &lib).expect("copy the stand-in");
        fs::write(dir.path().join("fake_amdsmi.conf"), config).expect("write the configuration");
        fs::create_dir_all(dir.path().join("sys")).expect("create sys");
        Machine { dir, lib }
    }

    /// A copy whose GPUs follow the simulated GPUs `slots` publishes.
    fn for_sim(sim: &SimMachine, slots: &[u32], extra: &str) -> Machine {
        let state = sim.nvml_dir().join("gpus.state");
        let mut config = format!(
            "devices={}\nt0_ns={}\nstate={}\n",
            slots.len(),
            sim.t0_ns(),
            state.display()
        );
        for (k, s) in slots.iter().enumerate() {
            config.push_str(&format!("gpu{k}.slot={s}\n"));
        }
        Machine::new(&format!("{config}{extra}"))
    }

    fn sys(&self) -> PathBuf {
        self.dir.path().join("sys")
    }

    /// A KFD topology: a CPU node, then one GPU node per (address, unique id) in that order.
    fn kfd(&self, gpus: &[(&str, u64)]) {
        let nodes = self.sys().join("class/kfd/kfd/topology/nodes");
        let node = |n: usize, text: String| {
            fs::create_dir_all(nodes.join(n.to_string())).unwrap();
            fs::write(nodes.join(n.to_string()).join("properties"), text).unwrap();
        };
        node(
            0,
            "cpu_cores_count 64\nsimd_count 0\nlocation_id 0\n".into(),
        );
        for (k, (bdf, id)) in gpus.iter().enumerate() {
            let p: Vec<u64> = bdf
                .split([':', '.'])
                .map(|x| u64::from_str_radix(x, 16).unwrap())
                .collect();
            let location = (p[1] << 8) | (p[2] << 3) | p[3];
            node(
                k + 1,
                format!(
                    "cpu_cores_count 0\nsimd_count 440\nlocation_id {location}\ndomain {}\n\
                     unique_id {id}\n",
                    p[0]
                ),
            );
        }
    }

    /// An amdgpu hwmon directory for the PCI device at `bdf` with `file` holding `microwatts`.
    fn hwmon(&self, n: u32, bdf: &str, file: Option<(&str, u64)>) -> PathBuf {
        let pci = self.sys().join("devices/pci0000:00").join(bdf);
        let hw = pci.join(format!("hwmon/hwmon{n}"));
        fs::create_dir_all(&hw).unwrap();
        fs::write(hw.join("name"), "amdgpu\n").unwrap();
        std::os::unix::fs::symlink(&pci, hw.join("device")).unwrap();
        if let Some((f, uw)) = file {
            fs::write(hw.join(f), format!("{uw}\n")).unwrap();
        }
        let class = self.sys().join("class/hwmon");
        fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(&hw, class.join(format!("hwmon{n}"))).unwrap();
        hw
    }

    fn discover(&self, rocr: Option<&str>, hip: Option<&str>) -> Found {
        let opts = AmdOptions {
            library: Some(&self.lib),
            rocr_visible_devices: rocr,
            hip_visible_devices: hip,
        };
        amd::discover(&self.sys(), &opts)
    }

    fn options(&self) -> Options {
        let mut roots = carbonctx_sampler::Roots {
            sys: self.sys(),
            ..Default::default()
        };
        roots.nvml_library = Some(self.dir.path().join("no-nvml.so"));
        Options {
            roots,
            cpu_backends: Vec::new(),
            nvml: false,
            tdp_model: TdpModelUse::Never,
            amdsmi_library: Some(self.lib.clone()),
            ..Options::default()
        }
    }

    fn init_count(&self) -> i32 {
        // SAFETY: this copy of the stand-in exports `int fake_amdsmi_init_count(void)`; loading
        // it again only raises the loader's count on the same instance.
        unsafe {
            let lib = libloading::Library::new(&self.lib).unwrap();
            let f = lib
                .get::<unsafe extern "C" fn() -> i32>(b"fake_amdsmi_init_count\0")
                .unwrap();
            f()
        }
    }
}

fn ids(found: &Found) -> Vec<String> {
    let mut v: Vec<String> = found.sources.iter().map(|s| s.info().id.clone()).collect();
    v.sort();
    v
}

fn reasons(found: &Found) -> String {
    found
        .unavailable
        .iter()
        .map(|u| format!("{} | {} | {} | {}", u.backend, u.what, u.reason, u.hint))
        .collect::<Vec<_>>()
        .join("\n")
}

const TWO_GPUS: &str = "devices=2\n\
    gpu0.name=AMD Instinct MI300X\ngpu0.bdf=0000:c1:00.0\n\
    gpu1.name=AMD Instinct MI300X\ngpu1.bdf=0000:03:00.0\n";

#[test]
fn gpus_are_numbered_as_rocr_numbers_them_with_its_uuids() {
    let m = Machine::new(TWO_GPUS);
    // The topology lists c1:00.0 first: ROCr's GPU 0, whatever the bus order.
    m.kfd(&[
        ("0000:c1:00.0", 0xd38b_8b5d_9ee2_ae01),
        ("0000:03:00.0", 0x42),
    ]);
    let found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0", "amdsmi:1"], "{}", reasons(&found));
    let by_index = |i: u32| {
        found
            .sources
            .iter()
            .find(|s| s.info().index == i)
            .unwrap()
            .info()
            .clone()
    };
    let a = by_index(0);
    assert_eq!(a.backend, "amdsmi");
    assert_eq!(a.domain, Domain::Gpu);
    assert_eq!(a.method, Method::Counter);
    assert_eq!(a.uuid.as_deref(), Some("GPU-D38B8B5D9EE2AE01"));
    assert_eq!(
        a.label,
        "AMD Instinct MI300X [GPU-D38B8B5D9EE2AE01] (PCI 0000:c1:00.0)"
    );
    let spec = a.counter.expect("a counter");
    assert!((spec.joules_per_unit - 15.259e-6).abs() < 1e-10, "{spec:?}");
    assert_eq!(spec.wrap, None);
    assert_eq!(by_index(1).uuid.as_deref(), Some("GPU-0000000000000042"));
}

#[test]
fn the_energy_accumulator_follows_the_trace() {
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true)], 20, 20);
    let t0 = sim.t0_ns();
    let m = Machine::for_sim(&sim, &[0], "");
    let mut found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0"], "{}", reasons(&found));
    let spec = found.sources[0].info().counter.unwrap();
    let src = &mut found.sources[0];
    let mut last = 0.0;
    for _ in 0..6 {
        let before = ms_since(t0, now_ns());
        let Reading::Counter(count) = src.read().expect("read the accumulator") else {
            panic!("a counter source reads a counter");
        };
        let mj = count as f64 * spec.joules_per_unit * 1e3;
        let exact = TRACE.base_mj as f64 + TRACE.energy_mj(before);
        // The published counter lags by at most one 20 ms update, and the count is floored to
        // the resolution.
        assert!(
            (mj - exact).abs() <= TRACE.high_w * 20.0 + 1.0,
            "{mj} mJ vs {exact} mJ exact"
        );
        assert!(mj >= last, "the counter went backwards");
        last = mj;
        sleep(Duration::from_millis(37));
    }
}

#[test]
fn power_only_gpus_integrate_the_field_their_release_fills() {
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true), TRACE.gpu(true)], 20, 10);
    for (version, field) in [
        ("24.7.1", "average"),
        ("26.1.0", "socket"),
        ("25.3.0", "current"),
    ] {
        let extra = format!(
            "version={version}\ngpu0.has_energy=0\ngpu0.power_field={field}\n\
             gpu1.has_energy=0\ngpu1.has_power=0\n"
        );
        let m = Machine::for_sim(&sim, &[0, 1], &extra);
        let mut found = m.discover(None, None);
        assert_eq!(ids(&found), ["amdsmi:0"], "{version}: {}", reasons(&found));
        let info = found.sources[0].info().clone();
        assert_eq!(info.method, Method::IntegratedPower);
        assert!(info.label.contains(field), "{}", info.label);
        let before = ms_since(sim.t0_ns(), now_ns());
        let Reading::Power(w) = found.sources[0].read().unwrap() else {
            panic!("a power source reads power")
        };
        let after = ms_since(sim.t0_ns(), now_ns());
        let ok = [before - 10.0, after]
            .iter()
            .any(|&t| (TRACE.power_w(t.max(0.0)) - w).abs() < 1.0)
            || w == TRACE.low_w
            || w == TRACE.high_w;
        assert!(ok, "{w} W is not on the trace");
        // The GPU with neither reading is explained.
        assert!(
            reasons(&found).contains("neither the energy counter nor power"),
            "{}",
            reasons(&found)
        );
    }
    // A release whose power structure is not known here: power is not read, and it says why.
    let m = Machine::for_sim(&sim, &[0], "version=23.4.0\ngpu0.has_energy=0\n");
    let found = m.discover(None, None);
    assert!(found.sources.is_empty());
    assert!(reasons(&found).contains("23.4.0"), "{}", reasons(&found));
}

#[test]
fn a_die_that_reads_zero_is_no_measurement_and_names_its_partner() {
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true)], 20, 20);
    // An MI250X: two GCDs, the package's energy on the first; a third GPU elsewhere.
    let extra = "gpu0.name=AMD Instinct MI250X\ngpu0.bdf=0000:29:00.0\n\
                 gpu1.name=AMD Instinct MI250X\ngpu1.bdf=0000:2c:00.0\ngpu1.zero=1\n\
                 gpu2.name=AMD Instinct MI250X\ngpu2.bdf=0000:2f:00.0\n";
    let m = Machine::for_sim(&sim, &[0, 0, 0], extra);
    // Even where the zero die's hwmon reads something, the die is not counted.
    m.hwmon(5, "0000:2c:00.0", Some(("power1_average", 5_000_000)));
    let found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0", "amdsmi:2"], "{}", reasons(&found));
    let zero = found
        .unavailable
        .iter()
        .find(|u| u.what.contains("0000:2c:00.0"))
        .expect("the zero die is explained");
    assert!(
        zero.reason
            .contains("energy reported on its partner die, GPU 0"),
        "{}",
        zero.reason
    );
    let partner = found.sources.iter().find(|s| s.info().index == 0).unwrap();
    assert!(
        partner.info().label.contains("paired die(s) GPU 1"),
        "{}",
        partner.info().label
    );
    // Alone (its partner hidden by ROCR_VISIBLE_DEVICES), it still is no measurement.
    let found = m.discover(Some("1"), None);
    assert!(found.sources.is_empty());
    assert!(
        reasons(&found).contains("partner is not visible"),
        "{}",
        reasons(&found)
    );
}

#[test]
fn partitions_without_readings_of_their_own_point_at_the_first() {
    // An MI300X in a partitioned mode: four processors at one PCI address, only the first
    // reading; and another device whose only GPU reads nothing (its own reason stays).
    let mut config = String::from("devices=5\n");
    for k in 0..4 {
        config.push_str(&format!(
            "gpu{k}.name=AMD Instinct MI300X\ngpu{k}.bdf=0000:05:00.0\n"
        ));
        if k > 0 {
            config.push_str(&format!("gpu{k}.has_energy=0\ngpu{k}.has_power=0\n"));
        }
    }
    config.push_str("gpu4.bdf=0000:85:00.0\ngpu4.has_energy=0\ngpu4.has_power=0\n");
    let m = Machine::new(&config);
    let found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0"], "{}", reasons(&found));
    let label = &found.sources[0].info().label;
    assert!(label.contains("paired die(s) GPU 1, 2, 3"), "{label}");
    let r = reasons(&found);
    assert_eq!(
        r.matches("energy reported on its partner die, GPU 0")
            .count(),
        3,
        "{r}"
    );
    assert!(r.contains("0000:85:00.0") && r.contains("neither the energy counter nor power"));
}

#[test]
fn rocr_filters_first_and_hip_indexes_what_is_left() {
    let m = Machine::new(
        "devices=4\ngpu0.bdf=0000:03:00.0\ngpu1.bdf=0000:23:00.0\n\
         gpu2.bdf=0000:43:00.0\ngpu3.bdf=0000:63:00.0\n",
    );
    m.kfd(&[
        ("0000:03:00.0", 0xaaaa),
        ("0000:23:00.0", 0xbbbb),
        ("0000:43:00.0", 0xcccc),
        ("0000:63:00.0", 0xdddd),
    ]);
    let indices = |f: &Found| {
        let mut v: Vec<u32> = f.sources.iter().map(|s| s.info().index).collect();
        v.sort();
        v
    };
    assert_eq!(indices(&m.discover(Some("3,1"), Some("1"))), [1]);
    assert_eq!(indices(&m.discover(Some("GPU-000000000000CC"), None)), [2]);
    assert_eq!(indices(&m.discover(None, Some("0,2"))), [0, 2]);
    let found = m.discover(Some("2,9,0"), None);
    assert_eq!(indices(&found), [2]);
    assert!(reasons(&found).contains("ROCR_VISIBLE_DEVICES entry \"9\""));
    let found = m.discover(Some(""), None);
    assert!(found.sources.is_empty());
    assert!(reasons(&found).contains("leave no AMD GPU visible"));
    // What a process sharing the node's sampler sees among the published GPUs.
    let published: Vec<(u32, Option<String>)> = (0..4)
        .map(|i| {
            (
                i,
                Some(format!(
                    "GPU-000000000000{}",
                    ["AAAA", "BBBB", "CCCC", "DDDD"][i as usize]
                )),
            )
        })
        .collect();
    let (v, _) = amd::visible_among(&published, Some("GPU-000000000000DD,0"), Some("1"));
    assert_eq!(v, [0]);
}

#[test]
fn without_amd_smi_hwmon_measures_and_with_it_hwmon_is_an_alternative() {
    let m = Machine::new("devices=1\ngpu0.bdf=0000:c1:00.0\n");
    m.kfd(&[("0000:c1:00.0", 0x77)]);
    m.hwmon(2, "0000:c1:00.0", Some(("power1_average", 187_000_000)));
    // A second amdgpu whose hwmon has no power file (a paired die's), and one reading 0.
    m.hwmon(3, "0000:c4:00.0", None);
    m.hwmon(4, "0000:c7:00.0", Some(("power1_input", 0)));
    let mut opts = m.options();
    opts.amdsmi_library = Some(m.dir.path().join("missing/libamd_smi.so"));
    let mut d = discover::discover(&opts);
    let chosen: Vec<_> = d.chosen.iter().map(|s| s.info().clone()).collect();
    assert_eq!(chosen.len(), 1, "{:?}", d.unavailable);
    let h = &chosen[0];
    assert_eq!(h.id, "hwmon:amdgpu:0000:c1:00.0:power1");
    assert_eq!(h.backend, "hwmon");
    assert_eq!(h.method, Method::IntegratedPower);
    assert_eq!(h.uuid.as_deref(), Some("GPU-0000000000000077"));
    assert_eq!(d.chosen[0].read().unwrap(), Reading::Power(187.0));
    let text: Vec<String> = d.unavailable.iter().map(|u| u.reason.clone()).collect();
    assert!(
        text.iter()
            .any(|r| r.contains("cannot load the AMD SMI library")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|r| r.contains("no power1_input or power1_average")),
        "{text:?}"
    );
    assert!(text.iter().any(|r| r.contains("reads 0 W")), "{text:?}");
    // With AMD SMI: it measures; hwmon is listed as the alternative for the same GPU.
    let d = discover::discover(&m.options());
    let chosen: Vec<String> = d.chosen.iter().map(|s| s.info().id.clone()).collect();
    assert_eq!(chosen, ["amdsmi:0"]);
    let alts: Vec<String> = d.alternatives.iter().map(|i| i.id.clone()).collect();
    assert_eq!(alts, ["hwmon:amdgpu:0000:c1:00.0:power1"]);
}

#[test]
fn an_amd_and_an_nvidia_gpu_with_the_same_index_are_both_measured() {
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true), TRACE.gpu(true)], 20, 20);
    let nv = FakeNvml::new(&format!("{}devices=1\n", sim.nvml_config().expect("gpus")));
    let m = Machine::for_sim(&sim, &[1], "");
    let mut opts = m.options();
    opts.nvml = true;
    opts.roots.nvml_library = Some(nv.lib.clone());
    let d = discover::discover(&opts);
    let mut chosen: Vec<(String, u32)> = d
        .chosen
        .iter()
        .map(|s| (s.info().id.clone(), s.info().index))
        .collect();
    chosen.sort();
    assert_eq!(
        chosen,
        [("amdsmi:0".to_string(), 0), ("nvml:0".to_string(), 0)]
    );
    assert!(d.alternatives.is_empty());
}

#[test]
fn failures_are_reasons_and_read_errors_carry_the_status() {
    let m = Machine::new("init_error=34\n");
    let found = m.discover(None, None);
    assert!(found.sources.is_empty());
    let r = reasons(&found);
    assert!(
        r.contains("amdsmi_init(AMDSMI_INIT_AMD_GPUS) failed"),
        "{r}"
    );
    assert!(r.contains("DRIVER_NOT_LOADED"), "{r}");
    assert!(r.contains("load the amdgpu kernel driver"), "{r}");

    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true)], 20, 20);
    let m = Machine::for_sim(
        &sim,
        &[0],
        "gpu0.energy_error=10\ngpu0.energy_error_after_ms=0\n",
    );
    let found = m.discover(None, None);
    // Probing the counter failed: power is used instead.
    assert_eq!(found.sources[0].info().method, Method::IntegratedPower);
    let m = Machine::for_sim(
        &sim,
        &[0],
        "gpu0.energy_error=10\ngpu0.energy_error_after_ms=300000000\n",
    );
    {
        let mut found = m.discover(None, None);
        assert!(found.sources[0].read().is_ok());
        assert_eq!(
            m.init_count(),
            1,
            "the sources hold the library initialised"
        );
    }
    assert_eq!(m.init_count(), 0, "the last source shuts the library down");
    let late = format!(
        "gpu0.energy_error=10\ngpu0.energy_error_after_ms={}\n",
        ms_since(sim.t0_ns(), now_ns()) + 150.0
    );
    let m = Machine::for_sim(&sim, &[0], &late);
    let mut found = m.discover(None, None);
    sleep(Duration::from_millis(200));
    let err = found.sources[0].read().unwrap_err().to_string();
    assert!(err.contains("amdsmi_get_energy_count failed"), "{err}");
    assert!(err.contains("NO_PERM"), "{err}");
    assert!(err.contains("/dev/kfd"), "{err}");
}

#[test]
fn processes_sharing_the_nodes_sampler_report_the_amd_gpus_they_see() {
    use carbonctx_sampler::{Config, NodeConfig, Role, Sampler};
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true), TRACE.gpu(true)], 20, 20);
    let m = Machine::for_sim(
        &sim,
        &[0, 1],
        "gpu0.bdf=0000:03:00.0\ngpu1.bdf=0000:83:00.0\n",
    );
    m.kfd(&[("0000:03:00.0", 0xaa), ("0000:83:00.0", 0xbb)]);
    let shm = tempfile::tempdir().unwrap();
    let node = NodeConfig {
        takeover_poll: Duration::from_millis(100),
        ..NodeConfig::new("job-amd alice boot-x").in_dir(shm.path())
    };
    let start = |rocr: Option<&str>, hip: Option<&str>| {
        let opts = Options {
            rocr_visible_devices: rocr.map(str::to_string),
            hip_visible_devices: hip.map(str::to_string),
            ..m.options()
        };
        let (s, unavailable) =
            Sampler::start_on_node(opts, Config::default(), node.clone()).expect("start");
        (s, unavailable)
    };
    let gpu_ids = |s: &Sampler| -> Vec<String> {
        s.sources()
            .iter()
            .filter(|i| i.domain == Domain::Gpu)
            .map(|i| i.id.clone())
            .collect()
    };
    // The owner reads every GPU of the node; this process reports only the one it sees.
    let (owner, _) = start(Some("1"), None);
    assert_eq!(owner.node_status().unwrap().role, Role::Owner);
    assert_eq!(owner.node_status().unwrap().node_sources.len(), 2);
    assert_eq!(gpu_ids(&owner), ["amdsmi:1"]);
    let (by_uuid, _) = start(Some("GPU-00000000000000AA"), None);
    assert_eq!(by_uuid.node_status().unwrap().role, Role::Follower);
    assert_eq!(gpu_ids(&by_uuid), ["amdsmi:0"]);
    let (hip, _) = start(None, Some("1,0"));
    assert_eq!(gpu_ids(&hip), ["amdsmi:0", "amdsmi:1"]);
    let (bad, unavailable) = start(Some("5"), None);
    assert!(gpu_ids(&bad).is_empty());
    assert!(
        unavailable
            .iter()
            .any(|u| u.what.contains("ROCR_VISIBLE_DEVICES entry")),
        "{unavailable:?}"
    );
    for s in [&bad, &hip, &by_uuid, &owner] {
        s.stop();
    }
}

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

/// A GPU AMD SMI reads as 0 while its PCI device is runtime-suspended (`power/runtime_status`
/// `suspended`) is asleep, not a die reporting on a partner: AMD SMI's entry says so, and its
/// amdgpu hwmon directory keeps it measured, as asleep (0 W) until it wakes. The awake die
/// beside it with the same name is not labelled as covering it.
#[test]
fn a_gpu_asleep_is_no_paired_die_and_hwmon_measures_it() {
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true)], 20, 20);
    let extra = "gpu0.name=AMD Radeon PRO W7900\ngpu0.bdf=0000:29:00.0\n\
                 gpu1.name=AMD Radeon PRO W7900\ngpu1.bdf=0000:2c:00.0\ngpu1.zero=1\n";
    let m = Machine::for_sim(&sim, &[0, 0], extra);
    let hw = m.hwmon(5, "0000:2c:00.0", Some(("power1_input", 5_000_000)));
    fs::create_dir_all(hw.join("device/power")).unwrap();
    fs::write(hw.join("device/power/runtime_status"), "suspended\n").unwrap();
    let mut found = m.discover(None, None);
    assert_eq!(
        ids(&found),
        ["amdsmi:0", "hwmon:amdgpu:0000:2c:00.0:power1"],
        "{}",
        reasons(&found)
    );
    let entry = found
        .unavailable
        .iter()
        .find(|u| u.what.contains("0000:2c:00.0"))
        .expect("AMD SMI's view of the sleeping GPU is explained");
    assert!(
        entry.reason.contains("not as a paired die"),
        "{}",
        entry.reason
    );
    assert!(entry.reason.contains("asleep"), "{}", entry.reason);
    assert!(!reasons(&found).contains("partner"), "{}", reasons(&found));
    let awake = found.sources.iter().find(|s| s.info().index == 0).unwrap();
    assert!(
        !awake.info().label.contains("paired die"),
        "{}",
        awake.info().label
    );
    let asleep = found
        .sources
        .iter_mut()
        .find(|s| s.info().index == 1)
        .unwrap();
    assert!(asleep.info().label.contains("asleep at discovery"));
    assert_eq!(asleep.read().unwrap(), Reading::Power(0.0));
    fs::write(hw.join("device/power/runtime_status"), "active\n").unwrap();
    assert_eq!(asleep.read().unwrap(), Reading::Power(5.0));
}

/// A GPU AMD SMI measures that falls asleep (runtime-suspended) during the run: AMD SMI is no
/// longer asked (its reads go through the driver, which on kernels since late 2024 refuses them
/// for a GPU that is not active, `NO_PERM` here, and on older ones wakes the GPU to answer).
/// The counter stands where it was and power reads 0 W, as through hwmon; the label states
/// the bias of that (up to 3 W low); an error while it is awake is still an error.
#[test]
fn an_amd_smi_gpu_that_falls_asleep_is_read_as_asleep_not_as_failed() {
    // The stand-in first (compiled once per run): the errors below start 150 ms from now.
    built();
    let (_dir, sim) = sim_with_gpus(vec![TRACE.gpu(true), TRACE.gpu(true)], 20, 20);
    let after = ms_since(sim.t0_ns(), now_ns()) + 150.0;
    let extra = format!(
        "gpu0.bdf=0000:29:00.0\ngpu0.energy_error=10\ngpu0.energy_error_after_ms={after}\n\
         gpu1.bdf=0000:2c:00.0\ngpu1.has_energy=0\ngpu1.power_field=current\n\
         gpu1.power_error=10\ngpu1.power_error_after_ms={after}\n"
    );
    let m = Machine::for_sim(&sim, &[0, 1], &extra);
    let status = |bdf: &str, text: &str| {
        let dir = m.sys().join("bus/pci/devices").join(bdf).join("power");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("runtime_status"), text).unwrap();
    };
    status("0000:29:00.0", "active\n");
    status("0000:2c:00.0", "active\n");
    let mut found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0", "amdsmi:1"], "{}", reasons(&found));
    assert_eq!(found.sources[0].info().method, Method::Counter);
    assert_eq!(found.sources[1].info().method, Method::IntegratedPower);
    for s in &found.sources {
        let label = &s.info().label;
        assert!(
            label.contains("runtime-suspended") && label.contains("up to 3 W"),
            "{label}"
        );
    }
    let Reading::Counter(count) = found.sources[0].read().unwrap() else {
        panic!("a counter source reads a counter");
    };
    assert!(matches!(found.sources[1].read().unwrap(), Reading::Power(w) if w > 0.0));
    status("0000:29:00.0", "suspended\n");
    status("0000:2c:00.0", "suspending\n");
    sleep(Duration::from_millis(200));
    for _ in 0..3 {
        assert_eq!(found.sources[0].read().unwrap(), Reading::Counter(count));
        assert_eq!(found.sources[1].read().unwrap(), Reading::Power(0.0));
    }
    // Awake again, the library's refusal is an error as before.
    status("0000:29:00.0", "active\n");
    let err = found.sources[0].read().unwrap_err().to_string();
    assert!(err.contains("amdsmi_get_energy_count failed"), "{err}");
}

/// An AMD SMI energy counter whose GPU sleeps inside a region (runtime-suspended, so AMD SMI is
/// not asked and the counter stands): the region's energy is what the counter says (it does not
/// move: the stand-in without a trace holds it), and its uncertainty holds up to 3 W for the time
/// the GPU slept, though the counter gave no new point then; for the node's sampler (the owner)
/// and for a process that follows it alike.
#[test]
fn an_amd_smi_counter_asleep_in_a_region_bounds_its_sleep_for_owner_and_follower() {
    use carbonctx_sampler::{Config, NodeConfig, Role, Sampler};

    let m = Machine::new("devices=1\ngpu0.bdf=0000:29:00.0\n");
    let status = |text: &str| {
        let dir = m.sys().join("bus/pci/devices/0000:29:00.0/power");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("runtime_status"), text).unwrap();
    };
    status("active\n");
    let found = m.discover(None, None);
    assert_eq!(ids(&found), ["amdsmi:0"], "{}", reasons(&found));
    assert_eq!(found.sources[0].info().method, Method::Counter);
    let shm = tempfile::tempdir().unwrap();
    let node = NodeConfig::new("job-amd-asleep alice boot-x").in_dir(shm.path());
    let start = || {
        let (s, unavailable) =
            Sampler::start_on_node(m.options(), Config::default(), node.clone()).expect("start");
        assert!(unavailable.is_empty(), "{unavailable:?}");
        assert_eq!(s.sources().len(), 1);
        s
    };
    let owner = start();
    let follower = start();
    assert_eq!(follower.node_status().unwrap().role, Role::Follower);
    let both = [&owner, &follower];
    let region = |f: &dyn Fn()| {
        let ids: Vec<u64> = both.iter().map(|s| s.begin()).collect();
        f();
        both.iter()
            .zip(ids)
            .map(|(s, id)| {
                let t = s.end(id);
                assert!(s.wait_until_resolved(t, Duration::from_secs(30)));
                s.drain().remove(0)
            })
            .collect::<Vec<_>>()
    };
    sleep(Duration::from_millis(100));
    // Read asleep from its first read after `asleep.0` until its first read after `asleep.1`.
    let asleep = std::cell::Cell::new((0, 0));
    let rows = region(&|| {
        sleep(Duration::from_millis(150));
        status("suspended\n");
        let t = now_ns();
        sleep(Duration::from_millis(300));
        asleep.set((t, now_ns()));
        status("active\n");
        sleep(Duration::from_millis(150));
    });
    let (t_asleep, t_wake) = asleep.get();
    let asleep_s = (t_wake - t_asleep) as f64 * 1e-9;
    for r in &rows {
        assert_eq!(r.joules[0], 0.0, "{r:?}");
        assert!(
            r.uncertainty[0] >= 3.0 * asleep_s - 1e-9,
            "± {} J for {asleep_s} s asleep",
            r.uncertainty[0]
        );
    }
    // A region after it woke: no bound left from the sleep.
    let rows = region(&|| sleep(Duration::from_millis(100)));
    for r in &rows {
        assert_eq!((r.joules[0], r.uncertainty[0]), (0.0, 0.0), "{r:?}");
    }
    follower.stop();
    owner.stop();
}
