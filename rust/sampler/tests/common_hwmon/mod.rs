//! Temporary sysfs trees for the hwmon tests, laid out as the kernel makes them: devices under
//! `/sys/devices/...` with a `hwmon/hwmonN` directory, `class/hwmon/hwmonN` links to it and a
//! `device` link back.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use carbonctx_sampler::discover::{Options, TdpModelUse};
use carbonctx_sampler::{Found, Reading};

use crate::common_fs::roots_at;

/// Makes `<root>/sys/devices/<device_path>/hwmon/hwmon<n>`, links it from the class
/// directory, links its `device` to the device directory, and writes `files` into it (or into
/// the device directory for the `(true, ..)` entries, as drivers on the old hwmon interface
/// do). Returns the hwmon directory.
pub fn chip(root: &Path, device_path: &str, n: u32, files: &[(bool, &str, &str)]) -> PathBuf {
    let dev = root.join("sys/devices").join(device_path);
    let hw = dev.join("hwmon").join(format!("hwmon{n}"));
    fs::create_dir_all(&hw).unwrap();
    let class = root.join("sys/class/hwmon");
    fs::create_dir_all(&class).unwrap();
    symlink(
        format!("../../devices/{device_path}/hwmon/hwmon{n}"),
        class.join(format!("hwmon{n}")),
    )
    .unwrap();
    let dev_name = Path::new(device_path).file_name().unwrap();
    symlink(Path::new("../../..").join(dev_name), hw.join("device")).unwrap();
    assert!(
        hw.join("device").join("hwmon").is_dir(),
        "the device link leads back"
    );
    for (on_device, name, content) in files {
        let dir = if *on_device { &dev } else { &hw };
        fs::write(dir.join(name), content).unwrap();
    }
    hw
}

pub fn read(found: &mut Found, id: &str) -> Reading {
    let src = found
        .sources
        .iter_mut()
        .find(|s| s.info().id == id)
        .unwrap_or_else(|| panic!("no source {id}"));
    src.read().expect("read")
}

pub fn options(root: &Path) -> Options {
    Options {
        roots: roots_at(root),
        cpu_backends: vec!["powercap".into()],
        nvml: false,
        tdp_model: TdpModelUse::Never,
        ..Options::default()
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
