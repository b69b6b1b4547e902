//! Imports run one way through the crate's layers: a layer may use the ones before it in
//! `LAYERS`, never those after (the flow of data: sensors, timeline, regions, the node's shared timelines, sampler).

use std::fs;
use std::path::{Path, PathBuf};

/// Folders or files under `src`, lowest first, and the `crate::` paths that name each.
const LAYERS: [(&str, &[&str]); 6] = [
    ("error.rs", &["crate::error"]),
    (
        "sensors",
        &[
            "crate::sensors",
            "crate::discover",
            "crate::msr",
            "crate::nvml",
            "crate::amd",
        ],
    ),
    ("timeline", &["crate::timeline"]),
    ("regions.rs", &["crate::regions"]),
    ("shared", &["crate::shared", "crate::NodeConfig"]),
    (
        "sampler",
        &["crate::sampler", "crate::Sampler", "crate::Config"],
    ),
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in fs::read_dir(path).expect("read a source folder") {
            rust_files(&entry.expect("a directory entry").path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn lower_layers_never_import_higher_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    for (i, (layer, _)) in LAYERS.iter().enumerate() {
        let mut files = Vec::new();
        rust_files(&src.join(layer), &mut files);
        assert!(!files.is_empty(), "no sources for layer {layer}");
        for file in files {
            let text = fs::read_to_string(&file).expect("read a source file");
            for (line_no, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                for (higher, names) in &LAYERS[i + 1..] {
                    for name in *names {
                        if code.contains(name) {
                            problems.push(format!(
                                "{}:{}: {layer} uses {name} (layer {higher} is above it)",
                                file.display(),
                                line_no + 1
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
