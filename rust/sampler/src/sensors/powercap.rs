//! RAPL energy counters through the Linux powercap framework (`/sys/class/powercap`).
//!
//! The `intel_rapl` drivers (which also serve AMD processors on recent kernels) publish one zone
//! per package (`intel-rapl:N`, named `package-N`), sub-zones inside it (`intel-rapl:N:M`, named
//! `core`, `uncore` or `dram`), sometimes a platform zone (`psys`), and on some client parts a
//! second copy of the package counter through MMIO (`intel-rapl-mmio:N`). Each zone has an
//! `energy_uj` counter in microjoules that counts up to `max_energy_range_uj` and then starts
//! again at 0.
//!
//! [`discover`] finds every zone under `<roots.sys>/class/powercap`, keeps its `energy_uj` open
//! and returns a [`PowercapSource`] that re-reads it with `pread` at offset 0.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;
use crate::sensors::{
    CounterSpec, Domain, EnergySource, Found, Method, Reading, Roots, SourceInfo, Unavailable,
};

const BACKEND: &str = "powercap";

/// Control types this module reads, in the order their zones are listed.
const CONTROLS: [&str; 2] = ["intel-rapl", "intel-rapl-mmio"];

/// What to do when `energy_uj` cannot be read for lack of permission.
pub const PERMISSION_HINT: &str = "Since Linux 5.10 energy_uj is readable by root only: \
world-readable access was closed because of the PLATYPUS power side-channel (CVE-2020-8694). \
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
        let mut buf = [0u8; 32];
        let mut attempt = 0;
        loop {
            let n = self
                .file
                .read_at(&mut buf, 0)
                .map_err(|e| Error::io(&self.path, e, READ_HINT))?;
            if n == 0 {
                return Err(Error::Io {
                    path: self.path.clone(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the counter file is empty: the zone was removed or its driver unloaded",
                    ),
                });
            }
            // A full buffer may hold a value cut short: no counter is that long.
            let parsed = if n == buf.len() {
                None
            } else {
                parse_counter(&buf[..n])
            };
            match parsed {
                Some(v) => return Ok(v),
                None if attempt < PARSE_RETRIES => {
                    // Give a writer caught half-way (perhaps preempted there) time to finish.
                    match attempt {
                        0 | 1 => std::thread::yield_now(),
                        n => std::thread::sleep(Duration::from_micros(20 * 10u64.pow(n - 2))),
                    }
                    attempt += 1;
                }
                None => {
                    return Err(Error::Parse {
                        path: self.path.clone(),
                        what: "an energy counter in microjoules",
                        text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                    })
                }
            }
        }
    }
}

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

/// A zone directory name taken apart: `intel-rapl:0:1` → (`intel-rapl`, 0, Some(1)).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ZoneName {
    control: usize,
    top: u32,
    sub: Option<u32>,
}

impl ZoneName {
    fn parse(name: &str) -> Option<ZoneName> {
        let mut parts = name.split(':');
        let control_name = parts.next()?;
        let control = CONTROLS.iter().position(|c| *c == control_name)?;
        let top = parts.next()?.parse().ok()?;
        let sub = match parts.next() {
            Some(s) => Some(s.parse().ok()?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(ZoneName { control, top, sub })
    }

    fn dir_name(&self) -> String {
        match self.sub {
            Some(s) => format!("{}:{}:{}", CONTROLS[self.control], self.top, s),
            None => format!("{}:{}", CONTROLS[self.control], self.top),
        }
    }
}

/// Maps a zone's `name` file to a domain: `package-N` → (Package, Some(N)), `dram`, `core`,
/// `uncore`, `psys` → (domain, None). `None` for names this crate does not measure.
pub fn domain_of_name(name: &str) -> Option<(Domain, Option<u32>)> {
    let name = name.trim();
    if let Some(n) = name.strip_prefix("package-") {
        return n.parse().ok().map(|n| (Domain::Package, Some(n)));
    }
    match name {
        "dram" => Some((Domain::Dram, None)),
        "core" => Some((Domain::Core, None)),
        "uncore" => Some((Domain::Uncore, None)),
        "psys" => Some((Domain::Psys, None)),
        _ => None,
    }
}

/// Finds every RAPL zone under `<roots.sys>/class/powercap`.
///
/// Zones are returned in a stable order (control type, zone number, sub-zone number). Zones
/// whose `energy_uj` cannot be opened or read become [`Unavailable`] entries with a hint;
/// zones whose name is not a known domain are skipped.
pub fn discover(roots: &Roots) -> Found {
    let mut found = Found::default();
    let base = roots.sys.join("class").join("powercap");
    let zones = match list_zones(&base) {
        Ok(z) => z,
        Err(e) => {
            let reason = if e.kind() == io::ErrorKind::NotFound {
                "there is no powercap directory: the kernel exposes no RAPL zones".to_string()
            } else {
                format!("cannot list the powercap directory: {e}")
            };
            found.unavailable.push(Unavailable {
                backend: BACKEND,
                what: base.display().to_string(),
                reason,
                hint: MISSING_HINT.to_string(),
            });
            return found;
        }
    };
    if zones.is_empty() {
        found.unavailable.push(Unavailable {
            backend: BACKEND,
            what: base.display().to_string(),
            reason: "the powercap directory holds no intel-rapl zones".to_string(),
            hint: MISSING_HINT.to_string(),
        });
        return found;
    }

    let mut psys_count: u32 = 0;
    for (zone, dir) in &zones {
        let name_path = dir.join("name");
        let name = match std::fs::read_to_string(&name_path) {
            Ok(n) => n.trim().to_string(),
            Err(e) => {
                found.unavailable.push(unavailable_io(
                    &name_path,
                    &e,
                    "the zone has no readable name",
                ));
                continue;
            }
        };
        let Some((domain, own_index)) = domain_of_name(&name) else {
            continue;
        };
        let index = match (own_index, zone.sub) {
            (Some(n), _) => n,
            (None, Some(_)) => parent_package(&zones, zone).unwrap_or(zone.top),
            (None, None) if domain == Domain::Psys => {
                psys_count += 1;
                psys_count - 1
            }
            (None, None) => zone.top,
        };
        let dir_name = zone.dir_name();
        let control = CONTROLS[zone.control];
        let mut label = match (domain, zone.sub) {
            (Domain::Package, _) => format!("package-{index}"),
            (Domain::Psys, None) => "psys".to_string(),
            (d, _) => format!("{} (package {index})", d.as_str()),
        };
        if control != "intel-rapl" {
            label.push_str(&format!(" ({control})"));
        }

        let range_path = dir.join("max_energy_range_uj");
        let max_range = match read_number(&range_path) {
            Ok(v) => v,
            Err(reason) => {
                found.unavailable.push(Unavailable {
                    backend: BACKEND,
                    what: range_path.display().to_string(),
                    reason: format!("{reason}; without it the counter's wraparound is unknown"),
                    hint: "Check that the intel_rapl driver is healthy (dmesg).".to_string(),
                });
                continue;
            }
        };
        let energy_path = dir.join("energy_uj");
        let info = SourceInfo {
            id: format!("powercap:{dir_name}"),
            backend: BACKEND,
            domain,
            index,
            label,
            method: Method::Counter,
            counter: Some(CounterSpec {
                joules_per_unit: 1e-6,
                wrap: max_range.checked_add(1),
            }),
            interval: Duration::from_millis(1),
            path: Some(energy_path.clone()),
            uuid: None,
        };
        match PowercapSource::open(info, energy_path.clone()) {
            Ok(src) => found.sources.push(Box::new(src)),
            Err(e) => found
                .unavailable
                .push(unavailable_from_error(&energy_path, e)),
        }
    }
    found
}

/// Turns an error met while opening or probing `energy_uj` into an [`Unavailable`] entry; a
/// permission error carries [`PERMISSION_HINT`].
pub fn unavailable_from_error(path: &Path, err: Error) -> Unavailable {
    match err {
        Error::Permission { .. } => Unavailable {
            backend: BACKEND,
            what: path.display().to_string(),
            reason: "permission denied reading the energy counter".to_string(),
            hint: PERMISSION_HINT.to_string(),
        },
        Error::Io { source, .. } => unavailable_io(path, &source, "cannot read the energy counter"),
        Error::Parse { text, .. } => Unavailable {
            backend: BACKEND,
            what: path.display().to_string(),
            reason: format!("the energy counter does not read as a number: {text:?}"),
            hint: "Check that the intel_rapl driver is healthy (dmesg).".to_string(),
        },
        other => Unavailable {
            backend: BACKEND,
            what: path.display().to_string(),
            reason: other.to_string(),
            hint: String::new(),
        },
    }
}

fn unavailable_io(path: &Path, e: &io::Error, what_failed: &str) -> Unavailable {
    if e.kind() == io::ErrorKind::PermissionDenied {
        return Unavailable {
            backend: BACKEND,
            what: path.display().to_string(),
            reason: format!("{what_failed}: permission denied"),
            hint: PERMISSION_HINT.to_string(),
        };
    }
    Unavailable {
        backend: BACKEND,
        what: path.display().to_string(),
        reason: format!("{what_failed}: {e}"),
        hint: "Check that the intel_rapl driver is healthy (dmesg).".to_string(),
    }
}

fn read_number(path: &Path) -> Result<u64, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    parse_counter(&text).ok_or_else(|| {
        format!(
            "it does not read as a number: {:?}",
            String::from_utf8_lossy(&text)
        )
    })
}

/// The package index of a sub-zone's parent zone (from the parent's `package-N` name).
fn parent_package(zones: &[(ZoneName, PathBuf)], zone: &ZoneName) -> Option<u32> {
    let parent = zones
        .iter()
        .find(|(z, _)| z.control == zone.control && z.top == zone.top && z.sub.is_none())?;
    let name = std::fs::read_to_string(parent.1.join("name")).ok()?;
    match domain_of_name(&name)? {
        (Domain::Package, Some(n)) => Some(n),
        _ => None,
    }
}

/// Lists zones both as flat entries of the class directory (how sysfs shows them) and as
/// sub-directories of a top-level zone (how the device tree nests them), without duplicates.
fn list_zones(base: &Path) -> io::Result<Vec<(ZoneName, PathBuf)>> {
    let mut zones: Vec<(ZoneName, PathBuf)> = Vec::new();
    let push = |zones: &mut Vec<(ZoneName, PathBuf)>, z: ZoneName, p: PathBuf| {
        if !zones.iter().any(|(have, _)| *have == z) {
            zones.push((z, p));
        }
    };
    let mut tops = Vec::new();
    for entry in std::fs::read_dir(base)? {
        let Ok(entry) = entry else { continue };
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if let Some(z) = ZoneName::parse(&name) {
            let path = entry.path();
            if z.sub.is_none() {
                tops.push((z.clone(), path.clone()));
            }
            push(&mut zones, z, path);
        }
    }
    for (top, dir) in tops {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if let Some(z) = ZoneName::parse(&name) {
                if z.control == top.control && z.top == top.top && z.sub.is_some() {
                    push(&mut zones, z, entry.path());
                }
            }
        }
    }
    zones.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(zones)
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

    #[test]
    fn parses_zone_names() {
        assert_eq!(
            ZoneName::parse("intel-rapl:1:2"),
            Some(ZoneName {
                control: 0,
                top: 1,
                sub: Some(2)
            })
        );
        assert_eq!(
            ZoneName::parse("intel-rapl-mmio:0").map(|z| z.dir_name()),
            Some("intel-rapl-mmio:0".into())
        );
        assert_eq!(ZoneName::parse("intel-rapl"), None);
        assert_eq!(ZoneName::parse("dtpm:0"), None);
        assert_eq!(ZoneName::parse("intel-rapl:0:1:2"), None);
        assert_eq!(ZoneName::parse("intel-rapl:x"), None);
    }

    #[test]
    fn maps_domain_names() {
        assert_eq!(
            domain_of_name("package-3\n"),
            Some((Domain::Package, Some(3)))
        );
        assert_eq!(domain_of_name("dram"), Some((Domain::Dram, None)));
        assert_eq!(domain_of_name("psys"), Some((Domain::Psys, None)));
        assert_eq!(domain_of_name("package-x"), None);
        assert_eq!(domain_of_name("mystery"), None);
    }
}
