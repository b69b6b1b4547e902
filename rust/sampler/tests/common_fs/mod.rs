//! Fixture trees for the CPU backend tests: where they are, and roots that point at one.

use std::path::{Path, PathBuf};

use carbonctx_sampler::Roots;

/// A tree under `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Roots with `sys`, `dev` and `proc` under `root`, and no NVML library.
pub fn roots_at(root: &Path) -> Roots {
    Roots {
        sys: root.join("sys"),
        dev: root.join("dev"),
        proc: root.join("proc"),
        nvml_library: None,
    }
}
