//! What each hwmon driver's files mean: which channels measure energy or power, of what part of
//! the machine, in what units, and how they are labelled.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::read::read_text;
use super::{Chip, Unavailable, BACKEND};
use crate::sensors::Domain;

/// A channel to read, before its files are opened.
#[derive(Debug)]
pub(super) struct Plan {
    /// The channel's name in the source id (`energy1`, `Esocket0`, `power1`, `in1`).
    pub channel: String,
    pub domain: Domain,
    /// `None`: numbered by discovery (GPUs per device; rails, nodes and modules in order).
    pub index: Option<u32>,
    pub label: String,
    pub kind: Kind,
    pub interval: Duration,
}

#[derive(Debug)]
pub(super) enum Kind {
    /// A microjoule counter that never wraps in practice.
    Energy(PathBuf),
    /// The sum of microjoule counters that each wrap at one of `ranges` (µJ) and each show
    /// at most `max_watts`.
    EnergySum {
        paths: Vec<PathBuf>,
        ranges: Vec<u64>,
        max_watts: f64,
    },
    /// An ACPI meter's power in microwatts (read on a thread of its own: such reads can block),
    /// averaged over the window given (`power1_average_interval`; `None`: not said).
    Meter(PathBuf, Option<Duration>),
    /// Bus voltage (mV) and current (mA).
    VoltsAmps(PathBuf, PathBuf),
}

/// Channels numbered `<prefix>N<suffix>` in `dir`, in order of N.
pub(super) fn channels(dir: &Path, prefix: &str, suffix: &str) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            let n = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.len() > 4 {
                return None;
            }
            n.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

pub(super) fn unavailable(what: &Path, reason: &str, hint: &str) -> Unavailable {
    Unavailable {
        backend: BACKEND,
        what: what.display().to_string(),
        reason: reason.to_string(),
        hint: hint.to_string(),
    }
}

/// Intel discrete GPUs (`i915`, `xe`): `energyN_input` in µJ. i915 has one channel, the whole
/// device; xe labels its channels (`energyN_label`): `card` (the board) and `pkg` (the GPU
/// package, inside the card's figure). The card comes first, so that the package counter is
/// listed as an alternative of the same GPU.
pub(super) fn intel_gpu(chip: &Chip, out: &mut Vec<Plan>, un: &mut Vec<Unavailable>) {
    let driver = chip.name.as_str();
    let found = channels(&chip.dir, "energy", "_input");
    if found.is_empty() {
        un.push(unavailable(
            &chip.dir,
            &format!(
                "the {driver} GPU {} exposes no energy counter (energyN_input)",
                chip.device
            ),
            "Only some Intel GPUs publish energy through hwmon (discrete cards, Linux 6.2 for \
             i915 and 6.5 for xe); a newer kernel may add it.",
        ));
        return;
    }
    let mut plans: Vec<(u8, Plan)> = Vec::new();
    for n in found {
        let label = read_text(&chip.dir.join(format!("energy{n}_label")));
        let scope = match (label.as_deref(), driver, n) {
            (Some(l), _, _) => l.to_ascii_lowercase(),
            (None, "xe", 2) => "pkg".into(),
            (None, _, _) => "card".into(),
        };
        let (order, what) = match scope.as_str() {
            "card" => (0, "card".to_string()),
            "pkg" => (1, "package".to_string()),
            other => (2, other.to_string()),
        };
        plans.push((
            order,
            Plan {
                channel: format!("energy{n}"),
                domain: Domain::Gpu,
                index: None,
                label: format!("Intel GPU {} {what} ({driver})", chip.device),
                kind: Kind::Energy(chip.dir.join(format!("energy{n}_input"))),
                interval: Duration::from_millis(10),
            },
        ));
    }
    plans.sort_by_key(|(o, _)| *o);
    out.extend(plans.into_iter().map(|(_, p)| p));
}

/// What an NVIDIA Grace meter's `power1_oem_info` (`<Kind> Power Socket <N>`) says it
/// measures: the domain, the socket and a label.
pub fn grace_meter(oem: &str) -> Option<(Domain, u32, String)> {
    let mut words = oem.split_whitespace();
    let kind = words.next()?;
    if !words.next()?.eq_ignore_ascii_case("power") || !words.next()?.eq_ignore_ascii_case("socket")
    {
        return None;
    }
    let socket: u32 = words.next()?.parse().ok()?;
    if words.next().is_some() {
        return None;
    }
    let (domain, what) = match kind.to_ascii_lowercase().as_str() {
        // The whole superchip module: CPU, GPU, memory and the module's regulators.
        "module" => (Domain::Module, "Grace module power"),
        // The Grace socket: its CPU and SysIO rails and its LPDDR5X memory (no DRAM source
        // of its own on Grace, so nothing is counted twice).
        "grace" => (Domain::Package, "Grace CPU power"),
        "cpu" => (Domain::Core, "Grace CPU rail"),
        "sysio" => (Domain::Uncore, "Grace SysIO rail"),
        _ => return None,
    };
    Some((domain, socket, format!("{what} (socket {socket})")))
}

/// ACPI power meters (`power_meter`): `power1_average` in µW, averaged over
/// `power1_average_interval` ms and given at the middle of that window (see
/// [`crate::Reading::PowerAt`]: integrated as read, the average would lag by half a window). Older kernels put these files on the ACPI device (the hwmon
/// directory's `device`), newer ones in the hwmon directory. NVIDIA Grace names its meters in
/// `power1_oem_info` ([`grace_meter`]); any other meter is taken as the node's power.
pub(super) fn power_meter(chip: &Chip, out: &mut Vec<Plan>, un: &mut Vec<Unavailable>) {
    let Some(dir) = [chip.dir.clone(), chip.dir.join("device")]
        .into_iter()
        .find(|d| d.join("power1_average").exists())
    else {
        un.push(unavailable(
            &chip.dir,
            &format!(
                "the ACPI power meter {} has no power1_average: it does not measure",
                chip.device
            ),
            "The firmware's meter offers capping or trip points only; nothing to do.",
        ));
        return;
    };
    let oem = read_text(&dir.join("power1_oem_info")).unwrap_or_default();
    let window = read_text(&dir.join("power1_average_interval"))
        .and_then(|t| t.parse::<u64>().ok())
        // All bits set is ACPI's "unknown" (32 or 64 bits wide): no window said.
        .filter(|ms| *ms > 0 && *ms != u64::from(u32::MAX) && *ms != u64::MAX)
        .map(Duration::from_millis);
    let interval = window.map_or(Duration::from_secs(1), |w| {
        w.clamp(Duration::from_millis(50), Duration::from_secs(1))
    });
    let (domain, index, label) = match grace_meter(&oem) {
        Some((d, socket, label)) => (d, Some(socket), label),
        None => {
            let mut label = format!("node power (ACPI power meter {})", chip.device);
            let battery = read_text(&dir.join("power1_is_battery")).is_some_and(|t| t == "1");
            if battery {
                label.push_str(" [battery]");
            }
            if !oem.is_empty() {
                label.push_str(&format!(" [{oem}]"));
            }
            (Domain::Node, None, label)
        }
    };
    out.push(Plan {
        channel: "power1".into(),
        domain,
        index,
        label,
        kind: Kind::Meter(dir.join("power1_average"), window),
        interval,
    });
}

/// Rail names that carry a Jetson module's whole input.
const MODULE_RAILS: [&str; 2] = ["VDD_IN", "POM_5V_IN"];

/// INA3221 (`ina3221`, Jetson boards): three channels, each `inN_input` (bus voltage, mV) and
/// `currN_input` (mA), named by `inN_label`; power is their product. Channels disabled
/// (`inN_enable` 0) or not connected (label `NC`) are left out. The module's input rail
/// (`VDD_IN`) is the module's power; the others are rails inside it.
pub(super) fn ina3221(chip: &Chip, out: &mut Vec<Plan>, un: &mut Vec<Unavailable>) {
    for ch in 1..=3u32 {
        let v = chip.dir.join(format!("in{ch}_input"));
        let i = chip.dir.join(format!("curr{ch}_input"));
        let enabled = read_text(&chip.dir.join(format!("in{ch}_enable")));
        if enabled.as_deref() == Some("0") {
            continue;
        }
        let label = read_text(&chip.dir.join(format!("in{ch}_label")));
        if label
            .as_deref()
            .is_some_and(|l| l.eq_ignore_ascii_case("NC"))
        {
            continue;
        }
        match (v.exists(), i.exists()) {
            (false, false) => continue,
            (true, true) => {}
            _ => {
                un.push(unavailable(
                    &chip.dir,
                    &format!("INA3221 channel {ch} has a voltage or a current but not both"),
                    "Check that the ina3221 driver is healthy (dmesg).",
                ));
                continue;
            }
        }
        let name = label.unwrap_or_else(|| format!("channel {ch} of {}", chip.device));
        let module = MODULE_RAILS.iter().any(|m| name.eq_ignore_ascii_case(m));
        let (domain, text) = if module {
            (Domain::Module, format!("module input {name}"))
        } else {
            (Domain::Rail, format!("rail {name}"))
        };
        out.push(Plan {
            channel: format!("in{ch}"),
            domain,
            index: None,
            label: text,
            kind: Kind::VoltsAmps(v, i),
            interval: Duration::from_millis(50),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grace_meter_names() {
        assert_eq!(
            grace_meter("Module Power Socket 0"),
            Some((Domain::Module, 0, "Grace module power (socket 0)".into()))
        );
        assert_eq!(
            grace_meter("Grace Power Socket 1"),
            Some((Domain::Package, 1, "Grace CPU power (socket 1)".into()))
        );
        assert_eq!(
            grace_meter("CPU Power Socket 3").map(|g| g.0),
            Some(Domain::Core)
        );
        assert_eq!(
            grace_meter("SysIO Power Socket 2").map(|g| (g.0, g.1)),
            Some((Domain::Uncore, 2))
        );
        assert_eq!(grace_meter("Module Power Socket"), None);
        assert_eq!(grace_meter("Module Power Socket 0 extra"), None);
        assert_eq!(grace_meter("Fan Power Socket 0"), None);
        assert_eq!(grace_meter(""), None);
    }
}
