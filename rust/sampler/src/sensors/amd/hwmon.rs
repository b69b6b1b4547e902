//! AMD GPU power from the amdgpu driver's hwmon files, where AMD SMI is absent.
//!
//! Each amdgpu device has a hwmon directory (`<sys>/class/hwmon/hwmonN`, `name` = `amdgpu`)
//! whose `device` link points at the GPU's PCI device. Its socket power is in microwatts:
//! `power1_input` (the current socket power, on recent parts and kernels) or `power1_average`
//! (a short-window average, on older ones). There is no energy counter: the power is integrated
//! ([`Method::IntegratedPower`]).
//!
//! # Which channel
//!
//! `amdgpu_pm.c` (rendered in the kernel's `Documentation/gpu/amdgpu/thermal.rst`, "hwmon
//! interfaces for GPU power") documents `power1_average` and `power1_input` as the power used
//! by the SoC, and labels channel 1 `PPT`. On the one part with two power limits (GC 10.3.1,
//! Van Gogh, the Steam Deck's APU) channel 1 is the sustained limit, labelled `slowPPT`, and a
//! second channel (`power2_cap*`, `power2_label` `fastPPT`, and on kernels up to late 2025 a
//! `power2_average` that reads the same sensor as `power1_average`) is the fast limit's. So the
//! channel read is the one labelled `PPT` or `slowPPT`; else the lowest-numbered channel not
//! labelled `fastPPT` (kernels before the labels: channel 1). A `fastPPT` channel is never read:
//! it is a limit's, and where it reads at all it repeats the socket's figure.
//!
//! # Files that fail or read 0
//!
//! Both files can be present while only one answers: kernels before the driver hid the sensor
//! a GPU's firmware lacks (`amdgpu_pm.c`, "not all products support both average and
//! instantaneous") publish both, and a read of the missing one fails (`EOPNOTSUPP`); an RDNA 3
//! card has no average, most older ones no instantaneous power. So every file present is tried,
//! in order of preference, and the first that reads more than 0 W is measured. Only where every
//! file that reads says 0 W is the GPU a die whose package reports on a partner.
//!
//! # A GPU asleep
//!
//! See [`super::runpm`]: while the GPU is runtime-suspended its power file is not read, and it
//! reads as asleep; a GPU asleep at discovery is kept, and read normally once it wakes.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::runpm::{self, State, Status, ASLEEP_W};
use crate::error::Error;
use crate::sensors::powercap::parse_counter;
use crate::sensors::sysfs::NumberFile;
use crate::sensors::{Domain, EnergySource, Method, Reading, SourceInfo, Unavailable};

/// The power files of a channel, in order of preference.
const POWER_KINDS: [&str; 2] = ["input", "average"];
/// What `powerN_label` says of the socket's channel (`PPT`; `slowPPT` where there are two).
const SOCKET_LABELS: [&str; 2] = ["PPT", "slowPPT"];
/// The label of the fast power limit's channel, never read.
const FAST_LABEL: &str = "fastPPT";
const BACKEND: &str = "hwmon";
/// Each hwmon power read asks the GPU's firmware.
const INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// One amdgpu hwmon directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct AmdgpuHwmon {
    /// `<sys>/class/hwmon/hwmonN`.
    pub(super) dir: PathBuf,
    /// The GPU's PCI address (`dddd:bb:dd.f`), from the `device` link.
    pub(super) bdf: String,
    /// The socket power's channel (the `N` of `powerN_*`).
    pub(super) channel: u32,
    /// The power files of that channel, in order of preference ([`POWER_KINDS`]).
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
            let (channel, powers) = socket_channel(&dir);
            Some(AmdgpuHwmon {
                dir,
                bdf,
                channel,
                powers,
            })
        })
        .collect();
    out.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    out
}

/// The socket power's channel and its files (see the module documentation); channel 1 with no
/// files where there is none.
fn socket_channel(dir: &Path) -> (u32, Vec<PathBuf>) {
    let mut channels: Vec<u32> = fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let (n, kind) = name.strip_prefix("power")?.split_once('_')?;
                    POWER_KINDS.contains(&kind).then(|| n.parse().ok())?
                })
                .collect()
        })
        .unwrap_or_default();
    channels.sort_unstable();
    channels.dedup();
    let label = |n: u32| {
        fs::read_to_string(dir.join(format!("power{n}_label")))
            .ok()
            .map(|t| t.trim().to_string())
    };
    let labels: Vec<Option<String>> = channels.iter().map(|&n| label(n)).collect();
    let socket = channels
        .iter()
        .zip(&labels)
        .find(|(_, l)| {
            l.as_deref()
                .is_some_and(|l| SOCKET_LABELS.iter().any(|s| s.eq_ignore_ascii_case(l)))
        })
        .or_else(|| {
            channels.iter().zip(&labels).find(|(_, l)| {
                !l.as_deref()
                    .is_some_and(|l| l.eq_ignore_ascii_case(FAST_LABEL))
            })
        })
        .map(|(&n, _)| n);
    let Some(n) = socket else {
        return (1, Vec::new());
    };
    let files = POWER_KINDS
        .iter()
        .map(|k| dir.join(format!("power{n}_{k}")))
        .filter(|p| p.exists())
        .collect();
    (n, files)
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
fn read_watts(file: &File, path: &Path) -> Result<f64, Error> {
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

const REFUSED_HINT: &str = "the driver refuses power reads while the GPU is in reset or the \
system is suspending; the reading comes back once the GPU answers again";

/// Whether a failed read is the driver refusing it (`EPERM`, as [`read_open`] gives it).
fn refused(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if runpm::refused(source))
}

/// Reads a file already open. A permission error then is the driver refusing the read
/// (`EPERM`), not the file's mode (checked at open): it is given as `EPERM`.
fn read_open(file: &File, path: &Path) -> Result<f64, Error> {
    read_watts(file, path).map_err(|e| match e {
        Error::Permission { .. } => Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        },
        e => e,
    })
}

/// Opens `path` and reads it.
fn open_read(path: &Path) -> Result<(File, f64), Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e, ""))?;
    let w = read_open(&file, path)?;
    Ok((file, w))
}

/// One GPU's socket power from hwmon: the file that answered kept open, or (a GPU asleep at
/// discovery) the files to try once it wakes.
pub(super) struct HwmonGpu {
    pub(super) info: SourceInfo,
    powers: Vec<PathBuf>,
    open: Option<(usize, File)>,
    status: Status,
    /// The latest reading is of the GPU asleep, not read (see [`runpm::unread_low_w`]).
    asleep: bool,
}

impl HwmonGpu {
    /// The first file that reads more than 0 W, kept (as at discovery: a file at 0 W beside
    /// one that reads is the sensor the firmware lacks); where the files that read all say
    /// 0 W, 0 W with none kept, so that the choice is made again at the next read; else the
    /// first failure (a refusal first: it may mean the GPU fell asleep).
    fn open_now(&mut self) -> Result<f64, Error> {
        let mut failed: Vec<Error> = Vec::new();
        let mut zero = false;
        for (i, path) in self.powers.iter().enumerate() {
            match open_read(path) {
                Ok((file, w)) if w > 0.0 => {
                    self.open = Some((i, file));
                    return Ok(w);
                }
                Ok(_) => zero = true,
                Err(e) => failed.push(e),
            }
        }
        if zero {
            return Ok(0.0);
        }
        let k = failed.iter().position(refused).unwrap_or(0);
        Err(failed.into_iter().nth(k).unwrap_or_else(|| {
            Error::Invalid("the amdgpu hwmon directory has no power file".into())
        }))
    }
}

impl EnergySource for HwmonGpu {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read(&mut self) -> Result<Reading, Error> {
        // Asleep: not read (a read would wake it on kernels before late 2024).
        self.asleep = self.status.read().asleep();
        if self.asleep {
            return Ok(Reading::Power(ASLEEP_W));
        }
        let read = match &self.open {
            Some((i, file)) => read_open(file, &self.powers[*i]),
            None => self.open_now(),
        };
        match read {
            Ok(w) => Ok(Reading::Power(w)),
            // Fell asleep between the status and the read.
            Err(e) if refused(&e) && self.status.read().asleep() => {
                self.asleep = true;
                Ok(Reading::Power(ASLEEP_W))
            }
            Err(e) if refused(&e) => Err(Error::Permission {
                path: self
                    .open
                    .as_ref()
                    .map_or_else(|| self.powers[0].clone(), |(i, _)| self.powers[*i].clone()),
                hint: REFUSED_HINT.into(),
            }),
            Err(e) => Err(e),
        }
    }

    fn unread_low_w(&self) -> f64 {
        runpm::unread_low_w(self.asleep)
    }
}

/// What reading each power file at discovery found.
enum Probe {
    /// The first file that reads more than 0 W.
    Reads(usize, File),
    /// Every file that reads says 0 W (the rest fail).
    Zero(PathBuf),
    /// No file reads: each one's error.
    Failed(Vec<(PathBuf, Error)>),
}

fn probe(powers: &[PathBuf]) -> Probe {
    let mut failed: Vec<(PathBuf, Error)> = Vec::new();
    let mut zero: Option<PathBuf> = None;
    for (i, path) in powers.iter().enumerate() {
        match open_read(path) {
            Ok((file, w)) if w > 0.0 => return Probe::Reads(i, file),
            Ok(_) => zero = zero.or_else(|| Some(path.clone())),
            Err(e) => failed.push((path.clone(), e)),
        }
    }
    match zero {
        Some(p) => Probe::Zero(p),
        None => Probe::Failed(failed),
    }
}

/// The GPU a hwmon directory belongs to, as discovery numbers and names it.
pub(super) struct Owner<'a> {
    pub(super) sys: &'a Path,
    pub(super) index: u32,
    pub(super) uuid: Option<String>,
    /// `AMD GPU [uuid] (PCI bdf)`.
    pub(super) label: String,
}

/// The hwmon source of a GPU, or why it cannot be one.
pub(super) fn source(h: &AmdgpuHwmon, g: &Owner<'_>) -> Result<HwmonGpu, Box<Unavailable>> {
    let unavailable = |what: String, reason: String, hint: &str| {
        Box::new(Unavailable {
            backend: BACKEND,
            what,
            reason,
            hint: hint.to_string(),
        })
    };
    let gpu = format!("GPU {} (PCI {})", g.index, h.bdf);
    if h.powers.is_empty() {
        return Err(unavailable(
            h.dir.display().to_string(),
            format!(
                "the amdgpu hwmon directory of {gpu} has no power{n}_input or power{n}_average \
                 (the socket power's channel, labelled PPT or slowPPT; on paired-die parts the \
                 second die has none: the package's power is on its partner)",
                n = h.channel
            ),
            "",
        ));
    }
    let status = Status::of(g.sys, &h.bdf, Some(&h.dir));
    let state = status.read();
    let mut src = HwmonGpu {
        info: info(h, g, &h.powers[0]),
        powers: h.powers.clone(),
        open: None,
        status,
        asleep: false,
    };
    // Asleep: kept without reading it (a read would wake it on older kernels).
    if state.asleep() {
        src.info.label.push(' ');
        src.info
            .label
            .push_str(&runpm::asleep_note(g.sys, &h.bdf, &state));
        return Ok(src);
    }
    match probe(&h.powers) {
        Probe::Reads(i, file) => {
            src.info = info(h, g, &h.powers[i]);
            if let Some(note) = runpm::sleep_bias_note(&state) {
                src.info.label.push(' ');
                src.info.label.push_str(&note);
            }
            src.open = Some((i, file));
            Ok(src)
        }
        Probe::Zero(path) => Err(unavailable(
            path.display().to_string(),
            format!(
                "reads 0 W: {gpu} is a die whose package reports its power on a partner die \
                 (every power file of it that reads says 0 W); not counted"
            ),
            "",
        )),
        Probe::Failed(failed) => {
            // It fell asleep between the status and the reads: kept, as asleep.
            let now = src.status.read();
            if failed.iter().any(|(_, e)| refused(e)) && now.asleep() {
                src.info.label.push(' ');
                src.info
                    .label
                    .push_str(&runpm::asleep_note(g.sys, &h.bdf, &now));
                return Ok(src);
            }
            let (reasons, hint) = explain(&failed, &state);
            Err(unavailable(
                h.dir.display().to_string(),
                format!("no power file of {gpu} can be read: {reasons}"),
                &hint,
            ))
        }
    }
}

fn info(h: &AmdgpuHwmon, g: &Owner<'_>, path: &Path) -> SourceInfo {
    let file_name = path
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    SourceInfo {
        id: format!("{}{}:power{}", super::HWMON_ID_PREFIX, h.bdf, h.channel),
        backend: BACKEND,
        domain: Domain::Gpu,
        index: g.index,
        label: format!("{} (amdgpu hwmon {file_name}, power integrated)", g.label),
        method: Method::IntegratedPower,
        counter: None,
        interval: INTERVAL,
        path: Some(path.to_path_buf()),
        uuid: g.uuid.clone(),
    }
}

/// Why each file failed (one sentence) and what to do.
fn explain(failed: &[(PathBuf, Error)], state: &State) -> (String, String) {
    let reasons: Vec<String> = failed
        .iter()
        .map(|(p, e)| match e {
            Error::Io { source, .. } => format!("{}: {}", p.display(), read_error(source, state)),
            other => other.to_string(),
        })
        .collect();
    let hint = match failed.first().map(|(_, e)| e) {
        Some(Error::Permission { .. }) => "make the file readable by this user".to_string(),
        Some(e) if refused(e) => REFUSED_HINT.to_string(),
        Some(e) => e.hint().into_owned(),
        None => String::new(),
    };
    (reasons.join("; "), hint)
}

/// What a failed read of an amdgpu power file means.
fn read_error(e: &std::io::Error, state: &State) -> String {
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => {
            format!("{e} (the GPU's firmware has no such sensor; the driver still lists it)")
        }
        Some(libc::ENODATA) => format!("{e} (the sensor has no value now)"),
        Some(libc::EPERM) => match state {
            State::Active => format!(
                "{e} (the driver refuses reads while the GPU is in reset or the system is \
                 suspending; its runtime PM status says active, so it is not asleep)"
            ),
            _ => format!("{e} (the driver refuses reads while the GPU is in reset or suspended)"),
        },
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

    #[test]
    fn an_eperm_read_is_a_refusal_and_says_what_the_status_was() {
        let eperm = std::io::Error::from_raw_os_error(libc::EPERM);
        assert!(refused(&Error::Io {
            path: "/p".into(),
            source: std::io::Error::from_raw_os_error(libc::EPERM)
        }));
        assert!(!refused(&Error::Io {
            path: "/p".into(),
            source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP)
        }));
        assert!(read_error(&eperm, &State::Active).contains("not asleep"));
        assert!(read_error(&eperm, &State::Unknown).contains("suspended"));
    }
}
