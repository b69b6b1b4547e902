//! The utilisation × TDP model: CPU power for machines without energy counters.
//!
//! The estimate is `TDP × packages × utilisation`, where utilisation is the busy share of all
//! CPU time in `/proc/stat` since the previous read (busy = total − idle − iowait). It is a
//! model, not a measurement: every figure it produces is labelled [`Method::Estimate`], and the
//! label says which TDP was used and where it came from.
//!
//! The TDP per package comes from, in order:
//! 1. the `CARBONCTX_CPU_TDP_W` setting (watts per package), which the caller passes to
//!    [`discover`] as text (this crate reads no environment variable);
//! 2. the embedded table `data/cpu-tdp.csv` matched against `model name` in `/proc/cpuinfo`
//!    (see [`lookup_tdp`]);
//! 3. [`DEFAULT_TDP_W`].
//!
//! The table is compiled from Intel and AMD product specifications and taken from the
//! CodeCarbon project's `data/hardware/cpu_power.csv` (MIT licence, copyright 2019 Mila, BCG
//! Gamma, CometML, Haverford College); see `data/SOURCES.md`.
//!
//! In a virtual machine the model name is the host's processor while the utilisation is that of
//! the guest's virtual CPUs: the TDP is scaled to the guest's share where the package's size is
//! known, and the label says the figure is an upper bound (see [`vm`]).

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Error;
use crate::sensors::{
    Domain, EnergySource, Found, Method, Reading, Roots, SourceInfo, Unavailable,
};

mod table;
mod vm;
pub use table::{lookup_tdp, normalise_model};
pub use vm::{cores_in_name, VmShare};

const BACKEND: &str = "estimate";

/// The setting that overrides the TDP per package, in watts.
pub const TDP_SETTING: &str = "CARBONCTX_CPU_TDP_W";

/// TDP per package used when the model is not in the table and no setting is given: a round
/// figure between desktop parts (65–125 W) and server parts (150–350 W).
pub const DEFAULT_TDP_W: f64 = 100.0;

/// What `/proc/cpuinfo` says about the processor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// `vendor_id` of the first processor, e.g. `GenuineIntel`.
    pub vendor_id: Option<String>,
    /// `cpu family` of the first processor.
    pub family: Option<u32>,
    /// `model` of the first processor.
    pub model: Option<u32>,
    /// `model name` of the first processor.
    pub model_name: Option<String>,
    /// Number of distinct `physical id` values, at least 1.
    pub packages: u32,
    /// Number of `processor` entries (logical CPUs).
    pub logical: u32,
    /// The `hypervisor` flag is set: a virtual machine.
    pub hypervisor: bool,
}

/// Parses the text of `/proc/cpuinfo`.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut ids = BTreeSet::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        match key {
            "vendor_id" if info.vendor_id.is_none() => info.vendor_id = Some(value.to_string()),
            "cpu family" if info.family.is_none() => info.family = value.parse().ok(),
            "model" if info.model.is_none() => info.model = value.parse().ok(),
            "model name" if info.model_name.is_none() => info.model_name = Some(value.to_string()),
            "physical id" => {
                ids.insert(value.to_string());
            }
            "processor" => info.logical += 1,
            "flags" if !info.hypervisor => {
                info.hypervisor = value.split_whitespace().any(|f| f == "hypervisor");
            }
            _ => {}
        }
    }
    info.packages = (ids.len() as u32).max(1);
    info
}

/// Aggregate CPU time from the `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq + steal.
    pub busy: u64,
    /// busy + idle + iowait (guest time is already inside user and nice).
    pub total: u64,
}

/// Parses the aggregate `cpu` line of `/proc/stat`.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<Vec<u64>>>()?;
    if fields.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let total = fields
        .iter()
        .take(8)
        .try_fold(0u64, |a, &v| a.checked_add(v))?;
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Busy share of CPU time between two snapshots, in 0..=1; `None` when no time passed.
pub fn utilisation(prev: CpuTimes, now: CpuTimes) -> Option<f64> {
    let total = now.total.checked_sub(prev.total)?;
    if total == 0 {
        return None;
    }
    let busy = now.busy.saturating_sub(prev.busy);
    Some((busy as f64 / total as f64).clamp(0.0, 1.0))
}

/// Where the TDP came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdpSource {
    /// The `CARBONCTX_CPU_TDP_W` setting.
    Setting,
    /// The embedded table.
    Table,
    /// [`DEFAULT_TDP_W`]: the model was not found.
    Default,
}

impl TdpSource {
    /// `setting`, `table` or `default`.
    pub fn as_str(self) -> &'static str {
        match self {
            TdpSource::Setting => "setting",
            TdpSource::Table => "table",
            TdpSource::Default => "default",
        }
    }
}

/// The processor and the TDP the estimate uses, for people to read.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTdp {
    /// `model name` from cpuinfo, or `unknown`.
    pub model: String,
    /// Physical packages counted in cpuinfo.
    pub packages: u32,
    /// TDP per package, watts.
    pub tdp_w: f64,
    /// The most the estimate counts: `tdp_w × packages`, or in a virtual machine whose
    /// package's size is known, `tdp_w ×` its share ([`VmShare::packages_share`]).
    pub total_w: f64,
    /// Where `tdp_w` came from.
    pub source: TdpSource,
    /// The table entry matched, when `source` is `Table`.
    pub matched: Option<&'static str>,
    /// The guest's view in a virtual machine (not with a TDP setting, which is taken as given).
    pub vm: Option<VmShare>,
}

impl CpuTdp {
    /// A label saying it is an estimate, the TDP used and where it came from.
    pub fn label(&self) -> String {
        let per = if self.packages > 1 {
            format!("{} × {} W", self.packages, fmt_w(self.tdp_w))
        } else {
            format!("{} W", fmt_w(self.tdp_w))
        };
        let origin = match self.source {
            TdpSource::Setting => format!("from {TDP_SETTING}"),
            TdpSource::Table => format!(
                "TDP table entry {:?}",
                self.matched.unwrap_or(self.model.as_str())
            ),
            TdpSource::Default => format!(
                "model {:?} not in the TDP table, default {} W per package; set {TDP_SETTING} \
                 to the processor's TDP in watts",
                self.model,
                fmt_w(DEFAULT_TDP_W)
            ),
        };
        let vm = self
            .vm
            .as_ref()
            .map(|v| v.describe(self.tdp_w, self.packages))
            .unwrap_or_default();
        format!("estimate: CPU utilisation × TDP {per} ({origin}{vm})")
    }
}

fn fmt_w(w: f64) -> String {
    if w.fract() == 0.0 {
        format!("{w:.0}")
    } else {
        format!("{w}")
    }
}

/// Parses a TDP setting: a positive, finite number of watts.
pub fn parse_tdp_setting(text: &str) -> Option<f64> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|w| w.is_finite() && *w > 0.0)
}

/// The TDP choice for the processor under `roots`, with an explicit setting (the value of
/// `CARBONCTX_CPU_TDP_W`, if any). The second value reports a setting that did not parse.
pub fn choose_tdp(roots: &Roots, setting: Option<&str>) -> (CpuTdp, Option<Unavailable>) {
    let info = std::fs::read_to_string(roots.proc.join("cpuinfo"))
        .map(|t| parse_cpuinfo(&t))
        .unwrap_or(CpuInfo {
            packages: 1,
            ..CpuInfo::default()
        });
    let model = info
        .model_name
        .clone()
        .unwrap_or_else(|| "unknown".to_string());
    let mut problem = None;
    if let Some(text) = setting {
        match parse_tdp_setting(text) {
            Some(w) => {
                return (
                    CpuTdp {
                        model,
                        packages: info.packages,
                        tdp_w: w,
                        total_w: w * f64::from(info.packages),
                        source: TdpSource::Setting,
                        matched: None,
                        vm: None,
                    },
                    None,
                )
            }
            None => {
                problem = Some(Unavailable {
                    backend: BACKEND,
                    what: TDP_SETTING.to_string(),
                    reason: format!(
                        "{TDP_SETTING}={text:?} is not a positive number of watts; it is ignored"
                    ),
                    hint: format!(
                        "Set {TDP_SETTING} to the TDP of one processor package in watts, e.g. 125."
                    ),
                });
            }
        }
    }
    let (tdp_w, source, matched) = match lookup_tdp(&model) {
        Some((name, w)) => (w, TdpSource::Table, Some(name)),
        None => (DEFAULT_TDP_W, TdpSource::Default, None),
    };
    let vm = VmShare::detect(&info);
    let share = vm.as_ref().and_then(|v| v.packages_share(info.packages));
    (
        CpuTdp {
            model,
            packages: info.packages,
            tdp_w,
            total_w: tdp_w * share.unwrap_or(f64::from(info.packages)),
            source,
            matched,
            vm,
        },
        problem,
    )
}

/// The TDP choice [`discover`] would make with the TDP setting `setting` (the value of
/// `CARBONCTX_CPU_TDP_W`, if any). `None` when `/proc/cpuinfo` cannot be read.
pub fn describe(roots: &Roots, setting: Option<&str>) -> Option<CpuTdp> {
    if !roots.proc.join("cpuinfo").is_file() {
        return None;
    }
    Some(choose_tdp(roots, setting.filter(|s| !s.is_empty())).0)
}

/// The estimated CPU power of the whole machine.
///
/// Each read returns the mean power since the previous read: `TDP total × utilisation`.
/// Discovery takes the first `/proc/stat` snapshot, so the first read covers the time since
/// discovery. When no clock tick passed between two reads (reads closer than the kernel's tick),
/// the previous value is returned again (0 W before any).
#[derive(Debug)]
pub struct TdpModelSource {
    info: SourceInfo,
    tdp: CpuTdp,
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    last: CpuTimes,
    last_w: f64,
}

impl TdpModelSource {
    /// Opens `<proc>/stat` and takes the first snapshot.
    pub fn open(proc: &Path, tdp: CpuTdp) -> Result<TdpModelSource, Error> {
        let path = proc.join("stat");
        let file = File::open(&path).map_err(|e| Error::io(&path, e, ""))?;
        let mut buf = vec![0u8; 4096];
        let last = read_times(&file, &path, &mut buf)?;
        let info = SourceInfo {
            id: "estimate:cpu".to_string(),
            backend: BACKEND,
            domain: Domain::Package,
            index: 0,
            label: tdp.label(),
            method: Method::Estimate,
            counter: None,
            interval: Duration::from_millis(100),
            path: Some(path.clone()),
            uuid: None,
        };
        Ok(TdpModelSource {
            info,
            tdp,
            file,
            path,
            buf,
            last,
            last_w: 0.0,
        })
    }

    /// The TDP this source uses.
    pub fn tdp(&self) -> &CpuTdp {
        &self.tdp
    }
}

fn read_times(file: &File, path: &Path, buf: &mut [u8]) -> Result<CpuTimes, Error> {
    let n = file.read_at(buf, 0).map_err(|e| Error::io(path, e, ""))?;
    let text = String::from_utf8_lossy(&buf[..n]);
    // The aggregate line comes first and is far shorter than the buffer; require its newline so
    // that a cut line is never parsed.
    let line = text
        .lines()
        .next()
        .filter(|_| text.contains('\n'))
        .unwrap_or("");
    parse_proc_stat(line).ok_or_else(|| {
        if n == 0 {
            Error::Io {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "the file is empty"),
            }
        } else {
            Error::Parse {
                path: path.to_path_buf(),
                what: "the aggregate cpu line",
                text: line.chars().take(200).collect(),
            }
        }
    })
}

impl EnergySource for TdpModelSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read(&mut self) -> Result<Reading, Error> {
        let now = read_times(&self.file, &self.path, &mut self.buf)?;
        if let Some(u) = utilisation(self.last, now) {
            self.last_w = self.tdp.total_w * u;
            self.last = now;
        } else if now.total < self.last.total {
            // The counters went back (they should not): start again from here.
            self.last = now;
        }
        Ok(Reading::Power(self.last_w))
    }
}

/// The model's source for the machine under `roots`, with the TDP setting `tdp_setting` (the
/// text of `CARBONCTX_CPU_TDP_W`, if set; empty counts as unset). A setting that does not parse
/// is reported in [`Found::unavailable`] and the table or default is used.
pub fn discover(roots: &Roots, tdp_setting: Option<&str>) -> Found {
    let mut found = Found::default();
    let (tdp, problem) = choose_tdp(roots, tdp_setting.filter(|s| !s.is_empty()));
    found.unavailable.extend(problem);
    match TdpModelSource::open(&roots.proc, tdp) {
        Ok(src) => found.sources.push(Box::new(src)),
        Err(e) => found.unavailable.push(Unavailable {
            backend: BACKEND,
            what: roots.proc.join("stat").display().to_string(),
            reason: format!("cannot read CPU utilisation: {e}"),
            hint: "The CPU estimate needs a readable /proc/stat (is /proc mounted?).".to_string(),
        }),
    }
    found
}
