//! AMD GPU power from the amdgpu driver's hwmon files, where AMD SMI is absent.
//!
//! Each amdgpu device has a hwmon directory (`<sys>/class/hwmon/hwmonN`, `name` = `amdgpu`)
//! whose `device` link points at the GPU's PCI device. Its board power is in microwatts:
//! `power1_input` (the current socket power, on recent parts and kernels) or `power1_average`
//! (a short-window average, on older ones). There is no energy counter: the power is integrated
//! ([`Method::IntegratedPower`]).
//!
//! Both files can be present while only one answers: kernels before the driver hid the sensor
//! a GPU's firmware lacks (`amdgpu_pm.c`, "not all products support both average and
//! instantaneous") publish both, and a read of the missing one fails (`EOPNOTSUPP`); an RDNA 3
//! card has no average, most older ones no instantaneous power. So every file present is tried,
//! in order of preference, and the first that reads is measured.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::sensors::powercap::parse_counter;
use crate::sensors::sysfs::NumberFile;
use crate::sensors::{EnergySource, Reading, SourceInfo};

/// The power files read, in order of preference.
pub(super) const POWER_FILES: [&str; 2] = ["power1_input", "power1_average"];

/// One amdgpu hwmon directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct AmdgpuHwmon {
    /// `<sys>/class/hwmon/hwmonN`.
    pub(super) dir: PathBuf,
    /// The GPU's PCI address (`dddd:bb:dd.f`), from the `device` link.
    pub(super) bdf: String,
    /// The power files this directory has, in order of preference ([`POWER_FILES`]).
    pub(super) powers: Vec<PathBuf>,
}

/// Every hwmon directory named `amdgpu` that belongs to a PCI device, by PCI address.
pub(super) fn find(sys: &Path) -> Vec<AmdgpuHwmon> {
    let Ok(entries) = fs::read_dir(sys.join("class/hwmon")) else {
        return Vec::new();
    };
    let mut out: Vec<AmdgpuHwmon> = entries
        .flatten()
        .filter_map(|e| {
            let dir = e.path();
            let name = fs::read_to_string(dir.join("name")).ok()?;
            if name.trim() != "amdgpu" {
                return None;
            }
            let bdf = pci_address(&dir.join("device"))?;
            let powers = POWER_FILES
                .iter()
                .map(|f| dir.join(f))
                .filter(|p| p.exists())
                .collect();
            Some(AmdgpuHwmon { dir, bdf, powers })
        })
        .collect();
    out.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    out
}

/// The PCI address a `device` link resolves to (its last component, `dddd:bb:dd.f`).
fn pci_address(link: &Path) -> Option<String> {
    let target = fs::canonicalize(link)
        .ok()
        .or_else(|| fs::read_link(link).ok())?;
    let last = target.file_name()?.to_str()?.to_ascii_lowercase();
    let parts: Vec<&str> = last.split([':', '.']).collect();
    let ok = parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then_some(last)
}

/// Reads a file of microwatts as watts.
pub(super) fn read_watts(file: &File, path: &Path) -> Result<f64, Error> {
    POWER_FILE
        .read(file, path, parse_counter)
        .map(|uw| uw as f64 * 1e-6)
}

/// How a power file is read (see [`crate::sensors::sysfs`]).
const POWER_FILE: NumberFile = NumberFile {
    retries: 4,
    base_us: 50,
    what: "microwatts",
    empty: "the power file is empty: the GPU was removed or its driver unloaded",
    hint: READ_HINT,
};

const READ_HINT: &str = "the amdgpu hwmon file stopped answering (driver reset or GPU removed); \
restart the measurement once the GPU is back";

/// One GPU's board power from hwmon, kept open.
pub(super) struct HwmonGpu {
    pub(super) info: SourceInfo,
    pub(super) file: File,
    pub(super) path: PathBuf,
}

impl EnergySource for HwmonGpu {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read(&mut self) -> Result<Reading, Error> {
        read_watts(&self.file, &self.path).map(Reading::Power)
    }
}

/// Opens the first of `powers` that reads, with its watts: a kernel may publish both files, of
/// which the firmware answers one. Otherwise why each failed (one sentence) and what to do.
pub(super) fn open_first(powers: &[PathBuf]) -> Result<(PathBuf, File, f64), (String, String)> {
    let mut failed: Vec<(String, Error)> = Vec::new();
    for path in powers {
        let read = File::open(path)
            .map_err(|e| Error::io(path, e, ""))
            .and_then(|file| match read_watts(&file, path) {
                Ok(w) => Ok((file, w)),
                // The file opened, so this is the driver refusing the read (EPERM while the
                // GPU is in reset or suspended), not the file's mode.
                Err(Error::Permission { .. }) => Err(Error::Io {
                    path: path.clone(),
                    source: std::io::Error::from_raw_os_error(libc::EPERM),
                }),
                Err(e) => Err(e),
            });
        match read {
            Ok((file, watts)) => return Ok((path.clone(), file, watts)),
            Err(e) => failed.push((path.display().to_string(), e)),
        }
    }
    let reasons: Vec<String> = failed
        .iter()
        .map(|(p, e)| match e {
            Error::Io { source, .. } => format!("{p}: {}", read_error(source)),
            other => other.to_string(),
        })
        .collect();
    let hint = match failed.first().map(|(_, e)| e) {
        Some(Error::Permission { .. }) => "make the file readable by this user".to_string(),
        Some(e) => e.hint().into_owned(),
        None => String::new(),
    };
    Err((reasons.join("; "), hint))
}

/// What a failed read of an amdgpu power file means.
pub(super) fn read_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => {
            format!("{e} (the GPU's firmware has no such sensor; the driver still lists it)")
        }
        Some(libc::ENODATA) => format!("{e} (the sensor has no value now)"),
        Some(libc::EPERM) => {
            format!("{e} (the driver refuses reads while the GPU is in reset or suspended)")
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_only() {
        let d = std::env::temp_dir().join(format!("carbonctx-amdhw-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let pci = d.join("devices/pci0000:00/0000:00:01.1/0000:C1:00.0");
        fs::create_dir_all(&pci).unwrap();
        fs::create_dir_all(d.join("virt")).unwrap();
        std::os::unix::fs::symlink(&pci, d.join("gpu")).unwrap();
        std::os::unix::fs::symlink(d.join("virt"), d.join("other")).unwrap();
        assert_eq!(pci_address(&d.join("gpu")).as_deref(), Some("0000:c1:00.0"));
        assert_eq!(pci_address(&d.join("other")), None);
        fs::remove_dir_all(&d).unwrap();
    }
}
