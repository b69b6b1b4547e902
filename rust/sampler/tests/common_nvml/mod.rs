//! The NVML stand-in (`python/carbonctx/_fakes/fake_nvml.c`), built for tests.
//!
//! The library is compiled once per test binary. Each [`FakeNvml`] copies it into a directory
//! of its own next to a `fake_nvml.conf`, which the stand-in reads at `nvmlInit`; separate
//! copies are separate libraries to the dynamic loader, so tests with different configurations
//! run in parallel without touching the environment.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use carbonctx_sampler::{Found, Roots};
use carbonctx_sim::{SimGpu, SimMachine, SimSpec, SquareWave};

/// The stand-in's source.
pub fn source_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/carbonctx/_fakes/fake_nvml.c")
}

/// Compiles the stand-in into `dir/libnvidia-ml.so.1` with `cc` from PATH and returns that path.
pub fn build_fake_nvml(dir: &Path) -> Result<PathBuf, String> {
    build_with(dir, &[])
}

/// The same, with `flags` for the compiler (`-DFAKE_NVML_NO_MIG`: a driver without MIG calls;
/// `-DFAKE_NVML_NO_MIG_SLICES`: without the calls that give an instance's slices).
fn build_with(dir: &Path, flags: &[&str]) -> Result<PathBuf, String> {
    let out = dir.join("libnvidia-ml.so.1");
    let tmp = dir.join(format!("libnvidia-ml.so.1.{}.tmp", std::process::id()));
    let result = Command::new("cc")
        .args([
            "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
        ])
        .arg(&tmp)
        .args(flags)
        .arg(source_path())
        .output()
        .map_err(|e| format!("cannot run cc (a C compiler is needed for the NVML tests): {e}"))?;
    if !result.status.success() {
        return Err(format!(
            "cc failed to build {}: {}",
            source_path().display(),
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    // Renamed into place so concurrent test binaries never load a half-written file.
    std::fs::rename(&tmp, &out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

/// The stand-in, built once for this test binary.
pub fn built() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| built_in("fake-nvml", &[]))
}

/// The stand-in as a driver older than MIG builds it: without the MIG calls.
pub fn built_without_mig() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| built_in("fake-nvml-no-mig", &["-DFAKE_NVML_NO_MIG"]))
}

/// The stand-in as a driver with the MIG calls that list instances but not those that give
/// their slices (`nvmlDeviceGetAttributes_v2`, `nvmlDeviceGetGpuInstanceProfileInfo`).
pub fn built_without_mig_slices() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| built_in("fake-nvml-no-mig-slices", &["-DFAKE_NVML_NO_MIG_SLICES"]))
}

fn built_in(name: &str, flags: &[&str]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).expect("create the build directory for fake_nvml");
    build_with(&dir, flags).unwrap_or_else(|e| panic!("{e}"))
}

/// One copy of the stand-in with its own configuration.
pub struct FakeNvml {
    pub dir: tempfile::TempDir,
    pub lib: PathBuf,
}

impl FakeNvml {
    /// A copy configured by `config` (`key=value` lines; see `python/carbonctx/_fakes/README.md`).
    pub fn new(config: &str) -> FakeNvml {
        FakeNvml::of(built(), config)
    }

    /// A copy of the library `built` (one of the builds above) configured by `config`.
    pub fn of(built: &Path, config: &str) -> FakeNvml {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let lib = dir.path().join("libnvidia-ml.so.1");
        std::fs::copy(built, &lib).expect("copy the fake NVML library");
        std::fs::write(dir.path().join("fake_nvml.conf"), config).expect("write fake_nvml.conf");
        FakeNvml { dir, lib }
    }

    /// A copy whose GPUs are those `sim` publishes, with `extra` configuration lines.
    pub fn for_sim(sim: &SimMachine, extra: &str) -> FakeNvml {
        let config = sim.nvml_config().expect("the simulated machine has GPUs");
        FakeNvml::new(&format!("{config}{extra}"))
    }

    /// Roots that point NVML at this copy.
    pub fn roots(&self) -> Roots {
        Roots {
            nvml_library: Some(self.lib.clone()),
            ..Roots::default()
        }
    }

    fn call<T>(&self, name: &[u8]) -> T {
        // SAFETY: the path is this copy of the stand-in, which exports the named functions with
        // the signature `extern "C" fn() -> T` that callers ask for; loading it again only raises
        // the loader's reference count on the same instance.
        unsafe {
            let lib = libloading::Library::new(&self.lib).expect("load the fake NVML library");
            let f = lib
                .get::<unsafe extern "C" fn() -> T>(name)
                .expect("fake NVML symbol");
            f()
        }
    }

    /// How many NVML calls this copy has served.
    pub fn call_count(&self) -> u64 {
        self.call(b"fake_nvml_call_count\0")
    }

    /// nvmlInit calls not yet balanced by nvmlShutdown.
    pub fn init_count(&self) -> i32 {
        self.call(b"fake_nvml_init_count\0")
    }
}

/// A GPU power trace in the units the tests think in (ms, mJ), for expected values. Its wave is
/// `carbonctx_sim::SquareWave`, the one definition the stand-in's published state comes from.
#[derive(Clone, Copy, Debug)]
pub struct Trace {
    pub low_w: f64,
    pub high_w: f64,
    pub period_ms: f64,
    pub duty: f64,
    pub base_mj: u64,
}

fn ms_to_ns(ms: f64) -> u64 {
    carbonctx_sim::secs_to_ns(ms * 1e-3)
}

impl Trace {
    pub fn wave(&self) -> SquareWave {
        SquareWave {
            low_w: self.low_w,
            high_w: self.high_w,
            period_ns: ms_to_ns(self.period_ms),
            duty: self.duty,
        }
    }

    /// Power (W) `ms` after t0.
    pub fn power_w(&self, ms: f64) -> f64 {
        self.wave().power_w(ms_to_ns(ms))
    }

    /// Energy (mJ, without the base) from t0 to `ms` after it.
    pub fn energy_mj(&self, ms: f64) -> f64 {
        self.wave().energy_j(ms_to_ns(ms)) * 1e3
    }

    /// The counter the stand-in reports at `ms` after t0, with updates every `update_ms`.
    pub fn counter_mj(&self, ms: f64, update_ms: f64) -> u64 {
        let q = (ms / update_ms).floor() * update_ms;
        self.base_mj + self.energy_mj(q).floor() as u64
    }

    /// A simulated GPU following this trace.
    pub fn gpu(&self, energy_counter: bool) -> SimGpu {
        SimGpu {
            name: "Fake GPU".to_string(),
            wave: self.wave(),
            energy_counter,
            base_mj: self.base_mj,
        }
    }
}

/// A running simulated machine (one package, no CPU zone) publishing `gpus`, with the GPUs'
/// energy and power update periods.
pub fn sim_with_gpus(
    gpus: Vec<SimGpu>,
    energy_update_ms: u64,
    power_update_ms: u64,
) -> (tempfile::TempDir, SimMachine) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let mut spec = SimSpec::new(dir.path(), 1);
    spec.gpus = gpus;
    spec.gpu_energy_update_ns = energy_update_ms * 1_000_000;
    spec.gpu_power_update_ns = power_update_ms * 1_000_000;
    let mut sim = SimMachine::new(spec).expect("simulate GPUs");
    sim.start().expect("start the writer");
    (dir, sim)
}

/// Milliseconds from `t0_ns` to `t_ns` (0 before it).
pub fn ms_since(t0_ns: u64, t_ns: u64) -> f64 {
    t_ns.saturating_sub(t0_ns) as f64 / 1e6
}

/// The trace the stand-in tests' GPUs follow (NVML's and AMD SMI's alike).
pub const TRACE: Trace = Trace {
    low_w: 40.0,
    high_w: 120.0,
    period_ms: 50.0,
    duty: 0.4,
    base_mj: 1_000_000,
};

/// What discovery found unavailable, a line each: backend | what | reason | hint.
pub fn reasons(found: &Found) -> String {
    found
        .unavailable
        .iter()
        .map(|u| format!("{} | {} | {} | {}", u.backend, u.what, u.reason, u.hint))
        .collect::<Vec<_>>()
        .join("\n")
}
