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

use carbonctx_sampler::Roots;

/// The stand-in's source.
pub fn source_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../python/carbonctx/_fakes/fake_nvml.c")
}

/// Compiles the stand-in into `dir/libnvidia-ml.so.1` with `cc` from PATH and returns that path.
pub fn build_fake_nvml(dir: &Path) -> Result<PathBuf, String> {
    let out = dir.join("libnvidia-ml.so.1");
    let tmp = dir.join(format!("libnvidia-ml.so.1.{}.tmp", std::process::id()));
    let result = Command::new("cc")
        .args([
            "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
        ])
        .arg(&tmp)
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
    LIB.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-nvml");
        std::fs::create_dir_all(&dir).expect("create the build directory for fake_nvml");
        build_fake_nvml(&dir).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// One copy of the stand-in with its own configuration.
pub struct FakeNvml {
    pub dir: tempfile::TempDir,
    pub lib: PathBuf,
}

impl FakeNvml {
    /// A copy configured by `config` (`key=value` lines; see `tests/fakes/README.md`).
    pub fn new(config: &str) -> FakeNvml {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let lib = dir.path().join("libnvidia-ml.so.1");
        std::fs::copy(built(), &lib).expect("copy the fake NVML library");
        std::fs::write(dir.path().join("fake_nvml.conf"), config).expect("write fake_nvml.conf");
        FakeNvml { dir, lib }
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

/// The trace the stand-in simulates, for expected values.
#[derive(Clone, Copy, Debug)]
pub struct Trace {
    pub low_w: f64,
    pub high_w: f64,
    pub period_ms: f64,
    pub duty: f64,
    pub base_mj: u64,
}

impl Trace {
    /// Power (W) `ms` after t0.
    pub fn power_w(&self, ms: f64) -> f64 {
        let phase = ms - (ms / self.period_ms).floor() * self.period_ms;
        if phase < self.duty * self.period_ms {
            self.high_w
        } else {
            self.low_w
        }
    }

    /// Energy (mJ, without the base) from t0 to `ms` after it.
    pub fn energy_mj(&self, ms: f64) -> f64 {
        let high_ms = self.duty * self.period_ms;
        let per_period = self.high_w * high_ms + self.low_w * (self.period_ms - high_ms);
        let n = (ms / self.period_ms).floor();
        let rem = ms - n * self.period_ms;
        let part = if rem < high_ms {
            self.high_w * rem
        } else {
            self.high_w * high_ms + self.low_w * (rem - high_ms)
        };
        n * per_period + part
    }

    /// The counter the stand-in reports at `ms` after t0, with updates every `update_ms`.
    pub fn counter_mj(&self, ms: f64, update_ms: f64) -> u64 {
        let q = (ms / update_ms).floor() * update_ms;
        self.base_mj + self.energy_mj(q).floor() as u64
    }

    /// The config lines for GPU `k` following this trace.
    pub fn config(&self, k: u32) -> String {
        format!(
            "gpu{k}.low_w={}\ngpu{k}.high_w={}\ngpu{k}.period_ms={}\ngpu{k}.duty={}\ngpu{k}.base_mj={}\n",
            self.low_w, self.high_w, self.period_ms, self.duty, self.base_mj
        )
    }
}

/// Milliseconds from `t0_ns` to `t_ns` (0 before it).
pub fn ms_since(t0_ns: u64, t_ns: u64) -> f64 {
    t_ns.saturating_sub(t0_ns) as f64 / 1e6
}
