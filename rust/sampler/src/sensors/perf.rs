//! RAPL energy counters through the perf power PMU (`perf_event_open`).
//!
//! The kernel describes the PMU under `<sys>/bus/event_source/devices/power`: its `type`, a
//! `cpumask` with one CPU per package (per die on Intel parts whose dies have their own
//! counters; see [`super::rapl_cpus`] for which are read), and events such as `events/energy-pkg` (`event=0x02`)
//! with `.scale` (joules per count, 2^-32 on Intel and AMD) and `.unit` (`Joules`) files. The
//! counts are 64-bit and never wrap in practice. System-wide events need
//! `kernel.perf_event_paranoid` ≤ 0, `CAP_PERFMON` or root, but unlike powercap's `energy_uj`
//! they are not restricted to root by default on every kernel.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::rapl_cpus::{self, topology_number, RaplCpu};
use crate::error::Error;
use crate::sensors::{
    CounterSpec, Domain, EnergySource, Found, Method, Reading, Roots, SourceInfo, Unavailable,
};

const BACKEND: &str = "perf";

/// The power PMU's events this backend reads, and what each measures.
pub const EVENTS: [(&str, Domain); 5] = [
    ("energy-pkg", Domain::Package),
    ("energy-cores", Domain::Core),
    ("energy-gpu", Domain::Uncore),
    ("energy-ram", Domain::Dram),
    ("energy-psys", Domain::Psys),
];

const PERMISSION_HINT: &str = "System-wide perf events need kernel.perf_event_paranoid <= 0 \
(`sysctl kernel.perf_event_paranoid=0`, as root) or CAP_PERFMON (Linux 5.8+; CAP_SYS_ADMIN \
before); in a container the seccomp profile may also forbid perf_event_open.";

const READ_HINT: &str = "The perf event stopped answering (CPU offlined or PMU driver \
unloaded); restart the measurement once it is back.";

/// One event of the power PMU, as its description files give it.
#[derive(Clone, Debug, PartialEq)]
pub struct PerfEvent {
    /// `energy-pkg`, `energy-ram`, ...
    pub name: &'static str,
    /// What it measures.
    pub domain: Domain,
    /// `perf_event_attr.config`, from `event=0x..`.
    pub config: u64,
    /// Joules per count, from `<name>.scale`.
    pub scale: f64,
    /// From `<name>.unit`, normally `Joules`.
    pub unit: String,
}

/// The power PMU, as its description files give it.
#[derive(Clone, Debug, PartialEq)]
pub struct PowerPmu {
    /// The PMU directory.
    pub dir: PathBuf,
    /// `perf_event_attr.type`.
    pub pmu_type: u32,
    /// (CPU, its physical package) for each CPU of `cpumask`; see [`counter_cpus`] for which
    /// the events are opened on.
    pub cpus: Vec<(u32, u32)>,
    /// The known events that parsed.
    pub events: Vec<PerfEvent>,
    /// Known events whose description did not parse, with why.
    pub problems: Vec<Unavailable>,
}

/// Parses an event description such as `event=0x02` into its config value. Only the `event`
/// term is understood (the power PMU's format is `config:0-7`).
pub fn parse_event_config(text: &str) -> Option<u64> {
    let mut config = None;
    for term in text.trim().split(',').filter(|t| !t.is_empty()) {
        let (key, value) = term.split_once('=')?;
        if key.trim() != "event" {
            return None;
        }
        let value = value.trim();
        let v = match value
            .strip_prefix("0x")
            .or_else(|| value.strip_prefix("0X"))
        {
            Some(hex) => u64::from_str_radix(hex, 16).ok()?,
            None => value.parse().ok()?,
        };
        config = Some(v);
    }
    config
}

/// Parses a kernel CPU list such as `0,18` or `0-3,8`.
pub fn parse_cpu_list(text: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if b < a {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    if cpus.is_empty() {
        None
    } else {
        Some(cpus)
    }
}

/// Parses a `.scale` file such as `2.3283064365386962890625e-10`.
pub fn parse_scale(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
}

fn unavailable(what: impl Into<String>, reason: impl Into<String>, hint: &str) -> Unavailable {
    let hint = if hint.is_empty() {
        "The kernel's description of the perf power PMU is incomplete or unusual; use the \
         powercap source where it exists, or report the files under \
         /sys/bus/event_source/devices/power."
    } else {
        hint
    };
    Unavailable {
        backend: BACKEND,
        what: what.into(),
        reason: reason.into(),
        hint: hint.to_string(),
    }
}

fn read_trimmed(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot read it: {e}"))
}

/// Reads the power PMU's description under `<sys>/bus/event_source/devices/power`. `Err` when
/// there is no usable PMU at all.
pub fn parse_pmu(sys: &Path) -> Result<PowerPmu, Unavailable> {
    let dir = sys.join("bus/event_source/devices/power");
    if !dir.is_dir() {
        return Err(unavailable(
            dir.display().to_string(),
            "there is no perf power PMU",
            "The kernel's RAPL perf driver is missing or the processor exposes no RAPL \
             (virtual machines usually do not).",
        ));
    }
    let type_path = dir.join("type");
    let pmu_type = read_trimmed(&type_path)
        .and_then(|t| {
            t.parse::<u32>()
                .map_err(|_| format!("not a PMU type: {t:?}"))
        })
        .map_err(|r| unavailable(type_path.display().to_string(), r, ""))?;
    let mask_path = dir.join("cpumask");
    let cpu_list = read_trimmed(&mask_path)
        .and_then(|t| parse_cpu_list(&t).ok_or_else(|| format!("not a CPU list: {t:?}")))
        .map_err(|r| unavailable(mask_path.display().to_string(), r, ""))?;
    let cpus = cpu_list
        .iter()
        .enumerate()
        .map(|(i, &cpu)| {
            let id = sys.join(format!(
                "devices/system/cpu/cpu{cpu}/topology/physical_package_id"
            ));
            let pkg = std::fs::read_to_string(id)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .unwrap_or(i as u32);
            (cpu, pkg)
        })
        .collect();

    let mut events = Vec::new();
    let mut problems = Vec::new();
    let ev_dir = dir.join("events");
    for (name, domain) in EVENTS {
        let path = ev_dir.join(name);
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // The part does not have this domain.
        };
        let Some(config) = parse_event_config(&text) else {
            problems.push(unavailable(
                path.display().to_string(),
                format!("cannot parse the event description {:?}", text.trim()),
                "",
            ));
            continue;
        };
        let scale_path = ev_dir.join(format!("{name}.scale"));
        let scale = match read_trimmed(&scale_path)
            .and_then(|t| parse_scale(&t).ok_or_else(|| format!("not a positive scale: {t:?}")))
        {
            Ok(s) => s,
            Err(r) => {
                problems.push(unavailable(scale_path.display().to_string(), r, ""));
                continue;
            }
        };
        let unit_path = ev_dir.join(format!("{name}.unit"));
        let unit = read_trimmed(&unit_path).unwrap_or_else(|_| "Joules".to_string());
        if unit != "Joules" {
            problems.push(unavailable(
                unit_path.display().to_string(),
                format!("the event counts {unit:?}, not Joules"),
                "",
            ));
            continue;
        }
        events.push(PerfEvent {
            name,
            domain,
            config,
            scale,
            unit,
        });
    }
    Ok(PowerPmu {
        dir,
        pmu_type,
        cpus,
        events,
        problems,
    })
}

/// The CPUs of the PMU's `cpumask` to open the events on, one per counter (see
/// [`super::rapl_cpus`]): one per die on Intel (the PMU's scope there), one per package on AMD
/// (`amd`), whose package counter some kernels offered once per CCD; those repeats come back as
/// [`Unavailable`] entries. A CPU's die is its `die_id`, else its rank among its package's CPUs
/// in the mask.
pub fn counter_cpus(pmu: &PowerPmu, sys: &Path, amd: bool) -> (Vec<RaplCpu>, Vec<Unavailable>) {
    let candidates: Vec<(u32, u32, Option<u32>)> = pmu
        .cpus
        .iter()
        .map(|&(cpu, pkg)| {
            let rank = pmu.cpus.iter().filter(|c| c.1 == pkg && c.0 < cpu).count();
            let die = topology_number(sys, cpu, "die_id").unwrap_or(rank as u32);
            (cpu, pkg, Some(die))
        })
        .collect();
    let (chosen, repeats) = rapl_cpus::choose(&candidates, amd);
    let skipped = repeats
        .into_iter()
        .map(|(r, first)| Unavailable {
            backend: BACKEND,
            what: format!("{} on cpu {}", pmu.dir.join("events").display(), r.cpu),
            reason: if amd {
                format!(
                    "cpu {} stands for a die of package {} in the PMU's cpumask, but AMD's \
                     energy counters are per package: its events read what cpu {first} reads, \
                     and are not counted twice",
                    r.cpu, r.package
                )
            } else {
                format!(
                    "cpu {} is in the same package and die as cpu {first}: its events read the \
                     same counters, and are not counted twice",
                    r.cpu
                )
            },
            hint: "Nothing to do: the package is measured once.".to_string(),
        })
        .collect();
    (chosen, skipped)
}

/// `struct perf_event_attr` up to its first published size (`PERF_ATTR_SIZE_VER0`, 64 bytes);
/// the kernel accepts that size and treats the later fields as zero.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

/// Opens a system-wide counting event on one CPU.
fn perf_event_open(pmu_type: u32, config: u64, cpu: u32) -> io::Result<File> {
    let attr = PerfEventAttr {
        type_: pmu_type,
        size: std::mem::size_of::<PerfEventAttr>() as u32,
        config,
        ..Default::default()
    };
    let cpu = libc::c_int::try_from(cpu).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `attr` is a valid, initialised perf_event_attr of the size it declares, and lives
    // across the call; the other arguments are plain integers.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            -1 as libc::pid_t,
            cpu,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Turns a `perf_event_open` failure into an [`Unavailable`] entry. `paranoid` is the content
/// of `perf_event_paranoid`, when it could be read. Returns whether the failure applies to
/// every event (a permission problem), so that discovery can stop.
pub fn open_error(what: &str, err: &io::Error, paranoid: Option<&str>) -> (Unavailable, bool) {
    let code = err.raw_os_error().unwrap_or(0);
    if code == libc::EACCES || code == libc::EPERM {
        let level = paranoid.map_or("unknown".to_string(), |p| p.trim().to_string());
        return (
            unavailable(
                what,
                format!(
                    "perf_event_open was refused ({err}); kernel.perf_event_paranoid is {level}"
                ),
                PERMISSION_HINT,
            ),
            true,
        );
    }
    let reason = if code == libc::ENOENT || code == libc::ENODEV || code == libc::EOPNOTSUPP {
        format!("perf_event_open: the kernel has no such power PMU event ({err})")
    } else {
        format!("perf_event_open failed: {err}")
    };
    (unavailable(what, reason, ""), false)
}

/// An open perf power event on one CPU.
#[derive(Debug)]
pub struct PerfSource {
    info: SourceInfo,
    file: File,
    path: PathBuf,
}

impl EnergySource for PerfSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read(&mut self) -> Result<Reading, Error> {
        let mut buf = [0u8; 8];
        // A perf event answers `read` with its current count whatever the file offset.
        let n = self
            .file
            .read(&mut buf)
            .map_err(|e| Error::io(&self.path, e, READ_HINT))?;
        if n != 8 {
            return Err(Error::Io {
                path: self.path.clone(),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short read of a perf count: {n} of 8 bytes"),
                ),
            });
        }
        Ok(Reading::Counter(u64::from_ne_bytes(buf)))
    }
}

/// Finds the perf power PMU under `<roots.sys>` and opens each of its energy events on one CPU
/// per counter ([`counter_cpus`]).
pub fn discover(roots: &Roots) -> Found {
    let mut found = Found::default();
    let pmu = match parse_pmu(&roots.sys) {
        Ok(p) => p,
        Err(u) => {
            found.unavailable.push(u);
            return found;
        }
    };
    found.unavailable.extend(pmu.problems.iter().cloned());
    let paranoid = std::fs::read_to_string(roots.proc.join("sys/kernel/perf_event_paranoid")).ok();
    let amd = super::powercap::zones::is_amd(&roots.proc);
    let (cpus, skipped) = counter_cpus(&pmu, &roots.sys, amd);
    found.unavailable.extend(skipped);
    for event in &pmu.events {
        for unit in &cpus {
            let cpu = unit.cpu;
            let path = pmu.dir.join("events").join(event.name);
            let what = format!("{} on cpu {cpu}", path.display());
            let file = match perf_event_open(pmu.pmu_type, event.config, cpu) {
                Ok(f) => f,
                Err(e) => {
                    let (u, fatal) = open_error(&what, &e, paranoid.as_deref());
                    found.unavailable.push(u);
                    if fatal {
                        return found;
                    }
                    // The other CPUs would fail the same way: one entry per event is enough.
                    break;
                }
            };
            let label = match event.domain {
                Domain::Package => format!("{} (perf)", unit.package_name()),
                d => format!("{} ({}, perf)", d.as_str(), unit.scope()),
            };
            found.sources.push(Box::new(PerfSource {
                info: SourceInfo {
                    id: format!("perf:{}:{}", event.name, unit.id()),
                    backend: BACKEND,
                    domain: event.domain,
                    index: unit.package,
                    label,
                    method: Method::Counter,
                    counter: Some(CounterSpec {
                        joules_per_unit: event.scale,
                        wrap: None,
                    }),
                    interval: Duration::from_millis(1),
                    path: Some(path.clone()),
                    uuid: None,
                },
                file,
                path,
            }));
        }
    }
    found
}

#[cfg(test)]
#[path = "perf_tests.rs"]
mod tests;
