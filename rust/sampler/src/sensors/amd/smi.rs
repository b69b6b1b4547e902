//! One GPU read through AMD SMI: its source (kept asleep while runtime PM holds the GPU
//! suspended, see [`runpm`]), and what discovery makes of its first readings (a source, a
//! paired die's zeros, or why it cannot be used).

use std::path::Path;
use std::sync::Arc;

use super::ffi::{self, AmdSmi, Processor};
use super::layout::{self, PowerField};
use super::runpm;
use super::{label, Gpu, BACKEND, INTERVAL};
use crate::error::Error;
use crate::sensors::{CounterSpec, Domain, EnergySource, Method, Reading, SourceInfo, Unavailable};

/// One GPU read through AMD SMI.
pub(super) struct SmiGpu {
    smi: Arc<AmdSmi>,
    dev: Processor,
    power: Option<PowerField>,
    pub(super) info: SourceInfo,
    /// Its PCI device's runtime PM status: while it sleeps AMD SMI is not asked (see
    /// [`runpm`]).
    status: runpm::Status,
    /// The energy count, kept continuous across the GPU's sleeps.
    count: runpm::SleepCounter,
    /// The latest reading is of the GPU asleep, not read (see [`runpm::unread_low_w`]).
    asleep: bool,
}

impl SmiGpu {
    /// What a sleeping GPU reads as: its counter where it stood, or [`runpm::ASLEEP_W`].
    fn asleep(&mut self) -> Reading {
        self.asleep = true;
        match self.power {
            None => Reading::Counter(self.count.asleep()),
            Some(_) => Reading::Power(runpm::ASLEEP_W),
        }
    }
}

impl EnergySource for SmiGpu {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read(&mut self) -> Result<Reading, Error> {
        // Asleep: AMD SMI is not asked (its reads go through the driver, which wakes the GPU
        // on older kernels and refuses the read on newer ones).
        if self.status.read().asleep() {
            return Ok(self.asleep());
        }
        self.asleep = false;
        let read = match self.power {
            None => match self.smi.energy(self.dev) {
                Ok((count, _)) => Ok(Reading::Counter(self.count.awake(count, crate::now_ns()))),
                Err(rc) => {
                    self.count.failed();
                    Err(self.smi.error("amdsmi_get_energy_count", rc))
                }
            },
            Some(field) => self
                .smi
                .power_field(self.dev, field)
                .map(Reading::Power)
                .map_err(|rc| self.smi.error("amdsmi_get_power_info", rc)),
        };
        match read {
            // It fell asleep between the status and the call.
            Err(_) if self.status.read().asleep() => Ok(self.asleep()),
            r => r,
        }
    }

    fn unread_low_w(&self) -> f64 {
        runpm::unread_low_w(self.asleep)
    }
}

/// Whether an accumulator's count is a count: not 0 (a die that reports on another), nor
/// `UINT32_MAX` (what amdgpu puts in the metrics table where the firmware's counter is not to be
/// trusted, as on some RDNA3 and RDNA4 firmware) or `UINT64_MAX` (AMD SMI's "not supported").
fn counts(count: u64) -> bool {
    count != 0 && count != u64::from(u32::MAX) && count != u64::MAX
}

pub(super) enum Probe {
    Source(Box<SmiGpu>),
    /// Every reading is 0: a die whose package reports on another.
    Zero,
    Unusable(Box<Unavailable>),
}

pub(super) fn smi_source(
    smi: &Arc<AmdSmi>,
    p: Processor,
    g: &Gpu,
    sys: &Path,
    name: &str,
) -> Probe {
    let status = runpm::Status::of(sys, &g.bdf, g.hwmon.as_ref().map(|h| h.dir.as_path()));
    let base = label(name, g);
    // What it counts while asleep, where runtime PM may put it to sleep.
    let note = runpm::sleep_bias_note(&status.read()).map_or_else(String::new, |n| format!(" {n}"));
    let info = |method, counter, label: String| SourceInfo {
        id: format!("amdsmi:{}", g.index),
        backend: BACKEND,
        domain: Domain::Gpu,
        index: g.index,
        label,
        method,
        counter,
        interval: INTERVAL,
        path: Some(smi.path.clone()),
        uuid: g.uuid.clone(),
    };
    let energy = smi.energy(p);
    if let Ok((count, res)) = energy {
        if counts(count) && res.is_finite() && res > 0.0 {
            let spec = CounterSpec {
                joules_per_unit: f64::from(res) * 1e-6,
                wrap: None,
            };
            return Probe::Source(Box::new(SmiGpu {
                smi: Arc::clone(smi),
                dev: p,
                power: None,
                info: info(Method::Counter, Some(spec), format!("{base}{note}")),
                status,
                count: runpm::SleepCounter::new(
                    count,
                    crate::now_ns(),
                    spec.joules_per_unit,
                    runpm::keeps_64_bits(name),
                ),
                asleep: false,
            }));
        }
    }
    let power = smi.power(p);
    if let Ok(fields) = &power {
        // The first field that reads something; else the first supported one (it reads 0).
        if let Some((field, _)) = fields.iter().find(|(_, w)| w.is_some_and(|w| w > 0.0)) {
            let label = format!("{base} (power only: {} integrated){note}", field.name());
            return Probe::Source(Box::new(SmiGpu {
                smi: Arc::clone(smi),
                dev: p,
                power: Some(*field),
                info: info(Method::IntegratedPower, None, label),
                status,
                count: runpm::SleepCounter::new(0, 0, 0.0, true),
                asleep: false,
            }));
        }
    }
    let energy_zero = matches!(energy, Ok((0, _)));
    let power_zero = match &power {
        Ok(f) => f.iter().any(|(_, w)| w.is_some()),
        Err(_) => false,
    };
    if energy_zero || power_zero {
        return Probe::Zero;
    }
    let why = |r: Result<(), ffi::Status>| match r {
        Ok(()) => "unsupported".to_string(),
        Err(rc) => format!("{} (status {rc})", smi.message(rc)),
    };
    let energy_rc = energy.map(|_| ());
    let power_rc = power.map(|_| ());
    let code = energy_rc
        .err()
        .or(power_rc.err())
        .unwrap_or(ffi::STATUS_NOT_SUPPORTED);
    let layout_note = if smi.layout == layout::PowerLayout::Unknown {
        format!(
            " (power is not read from AMD SMI {}: its power structure is not known here)",
            smi.version
        )
    } else {
        String::new()
    };
    Probe::Unusable(Box::new(smi.unavailable(
        format!("{base} ({})", smi.path.display()),
        format!(
            "neither the energy counter nor power can be read: amdsmi_get_energy_count: {}; \
             amdsmi_get_power_info: {}{layout_note}",
            why(energy_rc),
            why(power_rc)
        ),
        ffi::hint_for(code),
    )))
}

/// A GPU AMD SMI does not measure because it is asleep (runtime-suspended, see [`runpm`]) is no
/// paired die: its zeros or failures say so, and its hwmon source (if any) measures it.
pub(super) fn asleep_probe(probe: Probe, sys: &Path, g: &Gpu, smi: &AmdSmi, name: &str) -> Probe {
    let state = runpm::Status::of(sys, &g.bdf, g.hwmon.as_ref().map(|h| h.dir.as_path())).read();
    let runpm::State::Asleep(word) = &state else {
        return probe;
    };
    let then = if g.hwmon.is_some() {
        "its amdgpu hwmon source measures it, as asleep until it wakes"
    } else {
        "it has no amdgpu hwmon directory to measure it by"
    };
    let note = format!("the GPU is asleep (runtime PM status {word}): {then}");
    match probe {
        Probe::Zero => Probe::Unusable(Box::new(smi.unavailable(
            format!("{} ({})", label(name, g), smi.path.display()),
            format!("AMD SMI reads 0 for it, not as a paired die: {note}"),
            "",
        ))),
        Probe::Unusable(mut u) => {
            u.reason.push_str(&format!(" ({note})"));
            Probe::Unusable(u)
        }
        p => p,
    }
}
