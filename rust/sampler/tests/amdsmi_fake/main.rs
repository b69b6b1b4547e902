//! AMD GPUs against the AMD SMI stand-in (`python/carbonctx/_fakes/fake_amdsmi.c`) and simulated
//! sysfs trees (the KFD topology and amdgpu hwmon directories), one test binary so that the
//! stand-in is built once: what AMD SMI reads, which GPUs are measured and by what, APUs, and
//! GPUs asleep, each in a module beside this one. Here: the stand-in's build and a machine
//! around a copy of it.

#[path = "../common_nvml/mod.rs"]
mod common_nvml;

mod accumulator;
mod apu;
mod asleep;
mod readings;
mod selection;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use carbonctx_sampler::amd::{self, AmdOptions};
use carbonctx_sampler::discover::{Options, TdpModelUse};
use carbonctx_sampler::Found;
use carbonctx_sim::SimMachine;

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
