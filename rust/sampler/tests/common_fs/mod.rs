//! Fixture trees for the CPU backend tests: where they are, roots that point at one, and what a
//! counter source found there reads.

use std::path::{Path, PathBuf};

use carbonctx_sampler::{Domain, Found, Reading, Roots};

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

/// The counter that source `id` of `found` reads (the powercap and MSR tests use it).
#[allow(dead_code)]
pub fn counter(found: &mut Found, id: &str) -> u64 {
    let src = found
        .sources
        .iter_mut()
        .find(|s| s.info().id == id)
        .unwrap_or_else(|| panic!("no source {id}"));
    match src.read().expect("read") {
        Reading::Counter(v) => v,
        other => panic!("unexpected {other:?}"),
    }
}

/// Each source found: its id, domain, index and label.
#[allow(dead_code)] // not every test file includes it for this
pub fn summary(found: &Found) -> Vec<(String, Domain, u32, String)> {
    found
        .sources
        .iter()
        .map(|s| {
            let i = s.info();
            (i.id.clone(), i.domain, i.index, i.label.clone())
        })
        .collect()
}
