//! RAPL energy counters through the Linux powercap framework (`/sys/class/powercap`).
//!
//! The `intel_rapl` drivers (which also serve AMD processors) publish one zone per package (or
//! per die), sub-zones inside it (`core`, `uncore`, `dram`), platform zones (`psys`, `psys-N`),
//! and on some client parts a second copy of the package counter through MMIO
//! (`intel-rapl-mmio`). Each zone has an `energy_uj` counter in microjoules that counts up to
//! `max_energy_range_uj` and then starts again at 0. [`zones`] says how the kernel lays the tree
//! out and names its zones.
//!
//! [`discover`] finds every zone under `<roots.sys>/class/powercap` (under
//! `<roots.sys>/devices/virtual/powercap` where the class directory is missing or links no
//! zone), keeps the `energy_uj` of
//! each one it measures open, lists every other zone with the reason it is not read, and
//! returns a [`PowercapSource`] per measured zone, which re-reads its counter with `pread` at
//! offset 0.

mod find;
pub mod zones;

pub use find::{die_of, discover, domain_of_name, CONTAINER_HINT};

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::sensors::sysfs::NumberFile;
use crate::sensors::{EnergySource, Reading, SourceInfo, Unavailable};

const BACKEND: &str = "powercap";

const DRIVER_HINT: &str = "Check that the intel_rapl driver is healthy (dmesg).";

/// What to do when `energy_uj` cannot be read for lack of permission.
pub const PERMISSION_HINT: &str = "Since Linux 5.10 (and the stable updates of older kernels \
from November 2020) energy_uj is readable by root only: world-readable access was closed \
because of the PLATYPUS power side-channel (CVE-2020-8694). \
Use the perf power PMU instead (kernel.perf_event_paranoid <= 0, or CAP_PERFMON), or make \
energy_uj readable by a group you are in with a udev rule or chgrp/chmod g+r at boot; widen \
access only knowingly, since the counters leak information about other processes.";

/// What to do when there is no powercap tree at all.
pub const MISSING_HINT: &str = "The RAPL powercap driver is not loaded or the machine does not \
expose RAPL (virtual machines usually do not). On bare metal try `modprobe intel_rapl_msr` \
(Intel and recent AMD kernels) or `modprobe intel_rapl_common`; otherwise the CPU energy will be \
estimated.";

/// Hint for errors while reading a zone that was usable at discovery.
const READ_HINT: &str = "The powercap zone stopped answering (driver unloaded or zone removed); \
restart the measurement once the zone is back.";

/// How many times a counter that does not parse is read again before the error is reported.
pub const PARSE_RETRIES: u32 = 5;

/// One powercap zone's energy counter, kept open.
#[derive(Debug)]
pub struct PowercapSource {
    info: SourceInfo,
    file: File,
    path: PathBuf,
}

impl PowercapSource {
    /// Opens `<zone_dir>/energy_uj` for a zone already described by `info`, and checks that it
    /// reads as a number.
    fn open(info: SourceInfo, energy_path: PathBuf) -> Result<Self, Error> {
        let file =
            File::open(&energy_path).map_err(|e| Error::io(&energy_path, e, PERMISSION_HINT))?;
        let mut src = PowercapSource {
            info,
            file,
            path: energy_path,
        };
        src.read_uj()?;
        Ok(src)
    }

    /// Reads the counter. A value that does not parse is read again, up to
    /// [`PARSE_RETRIES`] times (after yielding twice, then sleeping 20 µs, 200 µs and 2 ms)
    /// before it is reported: a file rewritten in place (as the simulated machine does) can be
    /// caught between two writes; sysfs never is. Only a counter that stays unparseable costs
    /// the wait (about 2.2 ms).
    fn read_uj(&mut self) -> Result<u64, Error> {
        COUNTER_FILE.read(&self.file, &self.path, parse_counter)
    }
}

/// How `energy_uj` is read (see [`crate::sensors::sysfs`]).
const COUNTER_FILE: NumberFile = NumberFile {
    retries: PARSE_RETRIES,
    base_us: 20,
    what: "an energy counter in microjoules",
    empty: "the counter file is empty: the zone was removed or its driver unloaded",
    hint: READ_HINT,
};

impl EnergySource for PowercapSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read(&mut self) -> Result<Reading, Error> {
        self.read_uj().map(Reading::Counter)
    }
}

/// Parses an unsigned decimal counter surrounded by optional ASCII whitespace; leading zeros are
/// accepted (as are trailing NUL bytes). `None` for anything else (empty, signs, other
/// characters, more than fits in `u64`).
pub fn parse_counter(bytes: &[u8]) -> Option<u64> {
    let trimmed = trim_ascii(bytes);
    if trimmed.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in trimmed {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace() && *b != 0)
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace() && *b != 0)
        .map_or(start, |p| p + 1);
    &bytes[start..end.max(start)]
}

/// Turns an error met while opening or probing `energy_uj` into an [`Unavailable`] entry; a
/// permission error says who may read the file and carries [`PERMISSION_HINT`].
pub fn unavailable_from_error(path: &Path, err: Error) -> Unavailable {
    match err {
        Error::Permission { .. } => Unavailable {
            backend: BACKEND,
            what: path.display().to_string(),
            reason: format!(
                "permission denied reading the energy counter{}",
                mode_of(path)
            ),
            hint: PERMISSION_HINT.to_string(),
        },
        Error::Io { source, .. } => unavailable_io(path, &source, "cannot read the energy counter"),
        Error::Parse { text, .. } => Unavailable {
            backend: BACKEND,
            what: path.display().to_string(),
            reason: format!("the energy counter does not read as a number: {text:?}"),
            hint: DRIVER_HINT.to_string(),
        },
        other => Unavailable {
            backend: BACKEND,
            what: path.display().to_string(),
            reason: other.to_string(),
            hint: String::new(),
        },
    }
}

/// ` (mode 0400, owner uid 0)` for a file that can be looked at; empty otherwise.
fn mode_of(path: &Path) -> String {
    fs::metadata(path).map_or_else(
        |_| String::new(),
        |m| {
            let root_only = if m.mode() & 0o044 == 0 && m.uid() == 0 {
                ": readable by root only"
            } else {
                ""
            };
            format!(
                " (mode {:04o}, owner uid {}{root_only})",
                m.mode() & 0o7777,
                m.uid()
            )
        },
    )
}

pub(super) fn unavailable_io(path: &Path, e: &io::Error, what_failed: &str) -> Unavailable {
    if e.kind() == io::ErrorKind::PermissionDenied {
        return Unavailable {
            backend: BACKEND,
            what: path.display().to_string(),
            reason: format!("{what_failed}: permission denied{}", mode_of(path)),
            hint: PERMISSION_HINT.to_string(),
        };
    }
    Unavailable {
        backend: BACKEND,
        what: path.display().to_string(),
        reason: format!("{what_failed}: {e}"),
        hint: DRIVER_HINT.to_string(),
    }
}

pub(super) fn read_number(path: &Path) -> Result<u64, String> {
    let text = fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    parse_counter(&text).ok_or_else(|| {
        format!(
            "it does not read as a number: {:?}",
            String::from_utf8_lossy(&text)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters() {
        assert_eq!(parse_counter(b"123\n"), Some(123));
        assert_eq!(parse_counter(b"  0000042 \n"), Some(42));
        assert_eq!(parse_counter(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_counter(b"18446744073709551616"), None);
        assert_eq!(parse_counter(b""), None);
        assert_eq!(parse_counter(b"\n"), None);
        assert_eq!(parse_counter(b"-1"), None);
        assert_eq!(parse_counter(b"12a"), None);
        assert_eq!(parse_counter(b"1 2"), None);
    }
}
