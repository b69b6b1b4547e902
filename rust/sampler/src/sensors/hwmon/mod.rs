//! Energy and power through the kernel's hwmon class (`/sys/class/hwmon/hwmon*`).
//!
//! Each `hwmonN` directory has a `name` (the driver's prefix) and a `device` link to the
//! device it belongs to. Drivers read here (`chips.rs` says what their files mean):
//!
//! - `i915`, `xe` (Intel discrete GPUs): `energyN_input` µJ counters, labelled `card` and
//!   `pkg` by xe → GPU;
//! - `amd_energy`: `energyN_input` µJ counters labelled `EsocketN` and `EcoreNNN` → package,
//!   and the cores summed per package → core (`amd_energy.rs`);
//! - `power_meter` (ACPI): `power1_average` µW → the node's power, or for NVIDIA Grace (named
//!   in `power1_oem_info`) module, package, core or uncore; read on a thread of its own, since
//!   the firmware may take long to answer (`background.rs`);
//! - `ina3221` (Jetson): `inN_input` mV × `currN_input` mA, named by `inN_label` → rail, or
//!   module for the module's input (`VDD_IN`).
//!
//! Module, rail and node figures contain or overlap the components and are shown beside them,
//! never added to totals. Source ids are `hwmon:<name>:<device>:<channel>`, where `<device>`
//! is the name of the device the `device` link points at (a PCI address, `amd_energy.0`,
//! `ACPI000D:00`, `1-0040`): stable across reboots, unlike `hwmonN`.
//!
//! GPUs are numbered after the GPUs other backends found (`gpu_index_base`), in order of
//! their device names, so that an Intel GPU never pairs with an NVIDIA one as two views of one
//! device. `amdgpu` is not read here.

mod amd_energy;
mod background;
mod chips;
mod read;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

pub use amd_energy::ranges as amd_energy_ranges;
pub use chips::grace_meter;
pub use read::parse_int;

use crate::error::Error;
use crate::sensors::{CounterSpec, Domain, Found, Method, Roots, SourceInfo, Unavailable};
use background::Background;
use chips::{Kind, Plan};
use read::{Attr, HwmonSource, Probe, Unwrap};

const BACKEND: &str = "hwmon";

/// What to do when an hwmon file cannot be read for lack of permission.
pub const PERMISSION_HINT: &str = "The file is readable by root only (amd_energy's counters \
are, because of the PLATYPUS power side-channel, CVE-2020-8694). Run as root, or make the file \
readable by a group you are in with a udev rule or chgrp/chmod g+r at boot; widen access only \
knowingly.";

/// One `hwmonN` directory.
#[derive(Debug)]
pub(super) struct Chip {
    /// Where its attributes are: `<sys>/class/hwmon/hwmonN`, or its `device` directory for
    /// drivers on the old interface (no `name` in `hwmonN`).
    pub dir: PathBuf,
    /// Its `name`.
    pub name: String,
    /// The name of the device it belongs to (the `device` link's target), else `hwmonN`.
    pub device: String,
}

/// Finds the hwmon channels this crate can read under `<roots.sys>/class/hwmon`.
///
/// Never fails and never panics on what it finds: a missing class directory means no hwmon
/// source (nothing is reported); a chip or channel that cannot be used is reported in
/// [`Found::unavailable`] with the reason and what to do.
pub fn discover(roots: &Roots, gpu_index_base: u32) -> Found {
    discover_with(roots, gpu_index_base, true)
}

/// [`discover`], reading GPUs (the Intel GPUs' chips) only where `gpus` is set.
pub fn discover_with(roots: &Roots, gpu_index_base: u32, gpus: bool) -> Found {
    let mut found = Found::default();
    let mut chips = list_chips(&roots.sys.join("class").join("hwmon"));
    chips.sort_by(|a, b| (&a.name, &a.device, &a.dir).cmp(&(&b.name, &b.device, &b.dir)));
    let mut plans: Vec<(&Chip, Plan)> = Vec::new();
    for chip in &chips {
        let mut out = Vec::new();
        match chip.name.as_str() {
            "i915" | "xe" if !gpus => continue,
            "i915" | "xe" => chips::intel_gpu(chip, &mut out, &mut found.unavailable),
            "amd_energy" => amd_energy::plans(chip, &roots.sys, &mut out, &mut found.unavailable),
            "power_meter" => chips::power_meter(chip, &mut out, &mut found.unavailable),
            "ina3221" => chips::ina3221(chip, &mut out, &mut found.unavailable),
            _ => continue,
        }
        plans.extend(out.into_iter().map(|p| (chip, p)));
    }
    number(&mut plans, gpu_index_base);
    for (chip, plan) in plans {
        match open(chip, plan) {
            Ok(src) => found.sources.push(Box::new(src)),
            Err(u) => found.unavailable.push(*u),
        }
    }
    found
}

/// Gives every plan without an index one: GPUs by device (a device's channels share it),
/// modules, rails and nodes in order, after the indices already taken in their domain.
fn number(plans: &mut [(&Chip, Plan)], gpu_index_base: u32) {
    let mut gpus: BTreeMap<String, u32> = BTreeMap::new();
    for (chip, plan) in plans.iter_mut() {
        if plan.domain == Domain::Gpu && plan.index.is_none() {
            let next = gpu_index_base.saturating_add(gpus.len() as u32);
            let key = format!("{}\0{}", chip.device, chip.dir.display());
            plan.index = Some(*gpus.entry(key).or_insert(next));
        }
    }
    let mut taken: Vec<(Domain, u32)> = plans
        .iter()
        .filter_map(|(_, p)| p.index.map(|i| (p.domain, i)))
        .collect();
    for (_, plan) in plans.iter_mut() {
        if plan.index.is_none() {
            let i = (0..)
                .find(|i| !taken.contains(&(plan.domain, *i)))
                .unwrap_or(0);
            taken.push((plan.domain, i));
            plan.index = Some(i);
        }
    }
}

/// Opens a plan's files and describes the source.
fn open(chip: &Chip, plan: Plan) -> Result<HwmonSource, Box<Unavailable>> {
    let id = format!("hwmon:{}:{}:{}", chip.name, chip.device, plan.channel);
    let fail = |path: &Path, e: Error| Box::new(unavailable_from_error(path, e));
    let (probe, method, counter, path) = match plan.kind {
        Kind::Energy(path) => {
            let (a, _) = open_counter(&path).map_err(|e| fail(&path, e))?;
            let spec = CounterSpec {
                joules_per_unit: 1e-6,
                wrap: None,
            };
            (Probe::Counter(a), Method::Counter, Some(spec), path)
        }
        Kind::EnergySum {
            paths,
            ranges,
            max_watts,
        } => {
            let mut parts = Vec::with_capacity(paths.len());
            for path in &paths {
                let (a, raw) = open_counter(path).map_err(|e| fail(path, e))?;
                parts.push((a, Unwrap::new(ranges.clone(), 1e6, max_watts, raw)));
            }
            let spec = CounterSpec {
                joules_per_unit: 1e-6,
                wrap: None,
            };
            let first = paths.into_iter().next().unwrap_or_default();
            (Probe::Sum(parts), Method::Counter, Some(spec), first)
        }
        Kind::Meter(path, window) => {
            let (a, v) = Attr::open_acpi_meter(&path).map_err(|e| fail(&path, e))?;
            // The average stands for the middle of its window; for windows of many poll
            // intervals, at most 4 intervals back, so that (with the reader thread's age) a
            // region waits no longer for the meter than the sampler waits for any source.
            let half = (window.unwrap_or_default() / 2).min(plan.interval * 4);
            let probe = match Background::start(a, v, plan.interval, &chip.device) {
                Ok(b) => Probe::AverageBackground(b, half),
                // No thread to be had: read it in the sampler's thread.
                Err(_) => Probe::Average(
                    Attr::open_acpi_meter(&path).map_err(|e| fail(&path, e))?.0,
                    half,
                ),
            };
            (probe, Method::IntegratedPower, None, path)
        }
        Kind::VoltsAmps(v, i) => {
            let (va, _) = Attr::open(&v).map_err(|e| fail(&v, e))?;
            let (ia, _) = Attr::open(&i).map_err(|e| fail(&i, e))?;
            (Probe::VoltsAmps(va, ia), Method::IntegratedPower, None, i)
        }
    };
    Ok(HwmonSource {
        info: SourceInfo {
            id,
            backend: BACKEND,
            domain: plan.domain,
            index: plan.index.unwrap_or(0),
            label: plan.label,
            method,
            counter,
            interval: plan.interval,
            path: Some(path),
            uuid: None,
        },
        probe,
    })
}

/// Opens an energy counter and checks that it reads as one (not negative).
fn open_counter(path: &Path) -> Result<(Attr, u64), Error> {
    let (a, v) = Attr::open(path)?;
    let raw = u64::try_from(v).map_err(|_| Error::Parse {
        path: path.to_path_buf(),
        what: "an energy counter (not negative)",
        text: v.to_string(),
    })?;
    Ok((a, raw))
}

/// Every `hwmon*` entry of the class directory that has a readable name.
fn list_chips(base: &Path) -> Vec<Chip> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Vec::new();
    };
    let mut chips = Vec::new();
    for entry in entries.flatten() {
        let Some(dir_name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !dir_name.starts_with("hwmon") {
            continue;
        }
        let hwmon_dir = entry.path();
        let device = std::fs::read_link(hwmon_dir.join("device"))
            .ok()
            .and_then(|t| t.file_name().and_then(|n| n.to_str()).map(str::to_string))
            .filter(|d| !d.is_empty() && !d.chars().any(char::is_control))
            .unwrap_or_else(|| dir_name.clone());
        // Drivers on the old registration interface put `name` and their attributes on the
        // parent device (the hwmon ABI lets a chip's attributes live in either directory):
        // where the `name` is, the attributes are.
        let on_device = hwmon_dir.join("device");
        let (dir, name) = match read::read_text(&hwmon_dir.join("name")) {
            Some(name) => (hwmon_dir, name),
            None => match read::read_text(&on_device.join("name")) {
                Some(name) => (on_device, name),
                None => continue,
            },
        };
        chips.push(Chip { dir, name, device });
    }
    chips
}

/// Turns an error met while opening or probing a file into an [`Unavailable`] entry.
fn unavailable_from_error(path: &Path, err: Error) -> Unavailable {
    let what = path.display().to_string();
    let (reason, hint) = match err {
        Error::Permission { .. } => (
            "permission denied reading it".to_string(),
            PERMISSION_HINT.to_string(),
        ),
        Error::Io { source, .. } => (
            format!("cannot read it: {source}"),
            io_hint(&source).to_string(),
        ),
        Error::Parse { text, .. } => (
            format!("it does not read as a number: {text:?}"),
            "The driver wrote something unexpected; check it with cat and dmesg.".to_string(),
        ),
        other => (other.to_string(), other.hint().into_owned()),
    };
    Unavailable {
        backend: BACKEND,
        what,
        reason,
        hint,
    }
}

fn io_hint(e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::InvalidData {
        // An ACPI meter's all-ones "unknown" reading (see `read::ACPI_UNKNOWN_UW`).
        return "The firmware (or the BMC behind it) has no power reading now; check the meter \
                in the BMC's interface. Everything else is measured without it.";
    }
    match e.raw_os_error() {
        // ENODATA: hwmon's "no value now" (a disabled or unpowered channel).
        Some(libc::ENODATA) => "The channel has no value now (disabled, or its device is off).",
        // The driver lists the attribute, but the device's firmware has no such sensor.
        Some(libc::EOPNOTSUPP) => {
            "The device does not support this reading although its driver lists it; nothing \
             to do (a newer kernel hides it)."
        }
        Some(libc::EIO) | Some(libc::ETIMEDOUT) => {
            "The device did not answer (firmware, bus or sensor error): see dmesg; measuring \
             goes on without it."
        }
        Some(libc::EAGAIN) | Some(libc::EBUSY) => {
            "The device was busy when it was asked; restart the measurement to look for it \
             again."
        }
        _ => "Check that the file is readable (cat it); a device or driver error shows in dmesg.",
    }
}
