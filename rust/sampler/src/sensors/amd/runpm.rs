//! An AMD GPU's runtime power management: whether it is asleep (runtime-suspended) now.
//!
//! # What the driver does
//!
//! A discrete AMD GPU with nothing to do (no display lit, no program holding it) is put to
//! sleep by the kernel's runtime power management after 5 s idle (the autosuspend delay the
//! amdgpu driver sets): the SMU turns the chip off and only the PCI bus interface stays alive
//! (BACO, "bus active, chip off"), or the platform cuts the card's power (BOCO, D3cold, on
//! hybrid-graphics laptops). The PCI device's `power/runtime_status` then reads `suspended`
//! (`Documentation/ABI/testing/sysfs-devices-power`: `suspended`, `suspending`, `resuming`,
//! `active`, `error` for a fatal error, `unsupported` where runtime PM is disabled). Reading it
//! never touches the device. The file shows `error` while the device's `runtime_error` is set
//! and `unsupported` while runtime PM is disabled for it (`disable_depth`), whatever its
//! power state underneath (`runtime_status_show`, `drivers/base/power/sysfs.c`); in both the
//! PM core resumes nothing (`rpm_resume` fails at once: `-EINVAL` on an error, `-EACCES`
//! disabled unless active; `pm_runtime_get_if_active` gives `-EINVAL` disabled), so a read
//! cannot wake the GPU: it is read, and a failure is an error.
//!
//! The amdgpu hwmon power files answer only while the GPU is awake. Since a late-2024 change to
//! `drivers/gpu/drm/amd/pm/amdgpu_pm.c` ("don't wake up the GPU for reading pm values") a read
//! takes a runtime-PM reference only if the device is active (`pm_runtime_get_if_active`, in
//! `amdgpu_pm_get_access_if_active` today) and otherwise fails with `EPERM`; the same `EPERM`
//! comes while the GPU is in reset or the system is suspending (`amdgpu_in_reset`,
//! `in_suspend` without `in_runpm`). Older kernels resume the GPU to answer the read
//! (`pm_runtime_get_sync`), so a read of a sleeping GPU wakes it.
//!
//! # What is done here
//!
//! The status is read before each power read; while it says the GPU sleeps (`suspended`, or on
//! its way in or out: `suspending`, `resuming`, where an older kernel's read would wait for the
//! transition and then resume it) the power file is not read at all, so reading never wakes
//! the GPU on any kernel, and the GPU reads as asleep: [`ASLEEP_W`]. The status is read again
//! at every read, nothing is remembered: a GPU that wakes is read at the sampler's next read
//! of it. A read that fails with `EPERM` is asleep too where the status, read again, says so
//! (the GPU fell asleep between the two reads); with the status `active` it is an error, as
//! before (reset, system suspend). Where there is no status file (no `CONFIG_PM`), the power
//! file is read as it is.
//!
//! # What an asleep GPU is taken to draw
//!
//! [`ASLEEP_W`], 0 W: the chip is off, which is what the driver's figure (the SMU's socket
//! power) measures while the GPU is awake. The card around it may still draw a little: AMD gave
//! under 3 W for a whole card with the chip off (ZeroCore Power, BACO), and about nothing with
//! the bus off too (BOCO). So the figure for a sleeping GPU is low by at most
//! [`ASLEEP_BOUND_W`] (3 W) for as long as it sleeps, never high. The source says so for each
//! reading ([`unread_low_w`]) and the sampler adds that power times the time between reads
//! with the GPU asleep at either end to the source's uncertainty (`timeline::spread::Unread`):
//! a region the GPU slept through reads 0 J ± at least 3 W × its length. The truth is one-sided
//! (above the figure), the uncertainty a ± half-width: the whole bound is added to it, so the
//! energy is not moved and the interval covers the truth. The bound is stated in the label of
//! every GPU that has a runtime PM status (awake at discovery or not).
//!
//! During `suspending` and `resuming` (milliseconds to a few hundred) the chip may be partly
//! powered, above the bound, and is not read either: such a transition counts only as far as
//! the firmware's counter (AMD SMI) counted it, or, for power, as the trapezoid between the
//! last reading asleep and the first awake (whose spread covers that step); the bound is not
//! widened for it.
//!
//! Reading the power of an awake GPU counts as use: the driver marks it busy after each read,
//! so a GPU read more often than its autosuspend delay stays awake while measured. That is
//! how the driver works, not something this module can avoid while measuring an awake GPU.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The power an asleep (runtime-suspended) GPU is read as, in watts.
pub(super) const ASLEEP_W: f64 = 0.0;
/// How much more than [`ASLEEP_W`] a sleeping card may draw, in watts (see the module
/// documentation). An assumption, not a measurement: AMD's figure for ZeroCore Power (the
/// chip off, a small bus control block kept alive, BACO) at the Radeon HD 7970's launch in
/// December 2011, as the launch reviews report it (a whole card from 15 W idle to under 3 W).
/// The kernel's amdgpu documentation defines BACO and BOCO (the chip powered down while still
/// on the bus; the entire chip powered off) but states no power, and no AMD document found
/// states one for later cards. A board partner's card may draw more: one review of a dual-GPU
/// card measured 8 W at the connectors of its powered-off GPU.
pub(super) const ASLEEP_BOUND_W: f64 = 3.0;

/// The runtime PM state of a device, as `power/runtime_status` says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// `active`.
    Active,
    /// `suspended`, `suspending` or `resuming`: asleep, or on its way in or out.
    Asleep(String),
    /// `error`, `unsupported` or anything else: read the GPU as if awake.
    Other(String),
    /// No status file, or it could not be read.
    Unknown,
}

impl State {
    pub(super) fn asleep(&self) -> bool {
        matches!(self, State::Asleep(_))
    }

    fn parse(text: &str) -> State {
        match text.trim() {
            "active" => State::Active,
            s @ ("suspended" | "suspending" | "resuming") => State::Asleep(s.to_string()),
            s => State::Other(s.to_string()),
        }
    }
}

/// A GPU's `power/runtime_status` file, kept open.
pub(super) struct Status {
    file: Option<File>,
}

impl Status {
    /// The status of the PCI device at `bdf`: through its hwmon directory's `device` link where
    /// it has one (the same device), else `<sys>/bus/pci/devices/<bdf>`.
    pub(super) fn of(sys: &Path, bdf: &str, hwmon_dir: Option<&Path>) -> Status {
        let path = match hwmon_dir {
            Some(dir) if dir.join("device/power").is_dir() => {
                dir.join("device/power/runtime_status")
            }
            _ => sys
                .join("bus/pci/devices")
                .join(bdf)
                .join("power/runtime_status"),
        };
        Status {
            file: File::open(path).ok(),
        }
    }

    /// The state now (one `pread`; never touches the device).
    pub(super) fn read(&self) -> State {
        let Some(file) = &self.file else {
            return State::Unknown;
        };
        let mut buf = [0u8; 32];
        match file.read_at(&mut buf, 0) {
            Ok(n) if n > 0 && n < buf.len() => State::parse(&String::from_utf8_lossy(&buf[..n])),
            _ => State::Unknown,
        }
    }
}

/// An energy counter of a GPU that may sleep, kept continuous across its sleeps: it stands
/// while the GPU sleeps, and where the count after a sleep is below the count before it (the
/// firmware that keeps it was powered off with the chip, and counts again from 0), the count
/// before is added from then on, so that a sleep reads as no energy, not as a reset that loses
/// the interval.
///
/// The firmware of RDNA parts (and the MI100) keeps the accumulator in 32 bits (the
/// `EnergyAccumulator` of their SMU metrics table is a `uint32_t`, which the driver widens to 64
/// bits without carrying): at 15.3 µJ a count it wraps every 65.7 kJ, under four minutes at
/// 300 W. So where the part may keep it in 32 bits (not an Instinct MI200 or later, whose
/// firmware keeps 64: a fresh MI300 reads below 2^32 for its first minutes, and a reset then
/// must not be taken for a wrap) and while every count seen fits in 32 bits, a step back
/// without a sleep or a failed read between (a GPU reset or driver reload makes reads fail,
/// then the firmware counts again from 0) that a wrap explains (less than half the 32-bit range since the count before, at no more than
/// [`MAX_GPU_W`] over the time between the two reads) adds 2^32 from then on. Any other step
/// back (a driver reload, a reset) is passed on as it is, for the sampler to take as a reset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct SleepCounter {
    raw: u64,
    /// When `raw` was read (CLOCK_MONOTONIC ns).
    at_ns: u64,
    offset: u64,
    slept: bool,
    /// The part may keep the counter in 32 bits, and every count seen fits in them.
    narrow: bool,
    /// A read failed since `raw` was read.
    failed: bool,
    joules_per_count: f64,
}

/// More than any one GPU package draws (the largest accelerators are rated at about 1.4 kW): a
/// 32-bit wrap that needs more power than this to be real is a reset. Kept tight, since a reset
/// taken for a wrap would invent the rest of the range.
const MAX_GPU_W: f64 = 2_000.0;
const RANGE_32: u64 = 1 << 32;

impl SleepCounter {
    /// A counter first read as `raw` at `at_ns`, `joules_per_count` each; `wide`: the part is
    /// known to keep it in 64 bits (see [`keeps_64_bits`]), so it never wraps at 2^32.
    pub(super) fn new(raw: u64, at_ns: u64, joules_per_count: f64, wide: bool) -> SleepCounter {
        SleepCounter {
            raw,
            at_ns,
            offset: 0,
            slept: false,
            narrow: !wide && raw < RANGE_32,
            failed: false,
            joules_per_count,
        }
    }

    /// The count while the GPU sleeps: where it stood.
    pub(super) fn asleep(&mut self) -> u64 {
        self.slept = true;
        self.raw.saturating_add(self.offset)
    }

    /// A read that failed: the next step back is no wrap (the GPU may have been reset).
    pub(super) fn failed(&mut self) {
        self.failed = true;
    }

    /// The count for a read of `raw` at `at_ns` while awake.
    pub(super) fn awake(&mut self, raw: u64, at_ns: u64) -> u64 {
        if raw < self.raw {
            if self.slept {
                self.offset = self.offset.saturating_add(self.raw);
            } else if self.narrow && !self.failed && raw < RANGE_32 && self.wrapped(raw, at_ns) {
                self.offset = self.offset.saturating_add(RANGE_32);
            }
        }
        self.narrow &= raw < RANGE_32;
        self.slept = false;
        self.failed = false;
        self.raw = raw;
        self.at_ns = at_ns;
        raw.saturating_add(self.offset)
    }

    /// Whether a 32-bit wrap explains the step back from `self.raw` to `raw` by `at_ns`.
    fn wrapped(&self, raw: u64, at_ns: u64) -> bool {
        let delta = RANGE_32 - self.raw + raw;
        let secs = at_ns.saturating_sub(self.at_ns) as f64 * 1e-9;
        delta < RANGE_32 / 2 && delta as f64 * self.joules_per_count <= MAX_GPU_W * secs
    }
}

/// Whether the GPU AMD SMI names `name` keeps its energy accumulator in 64 bits: an Instinct
/// MI200 or later (model number 200 and up: the MI200 series' firmware keeps `EnergyAcc64bit`,
/// the MI300 and later a 64-bit `SocketEnergyAcc`). The MI100 and older Instincts, the Radeon
/// parts, and a name without a model number may keep it in 32 bits.
pub(super) fn keeps_64_bits(name: &str) -> bool {
    let b = name.as_bytes();
    (0..b.len()).any(|i| {
        let word_start = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        let digits: String = b[i..]
            .iter()
            .skip(2)
            .take_while(|c| c.is_ascii_digit())
            .map(|&c| char::from(c))
            .collect();
        word_start && b[i..].starts_with(b"MI") && digits.parse::<u32>().is_ok_and(|n| n >= 200)
    })
}

/// How many watts a GPU's latest reading may be low by: [`ASLEEP_BOUND_W`] where it was asleep
/// (not read, counted at [`ASLEEP_W`]), else 0 (see [`crate::EnergySource::unread_low_w`]).
pub(super) fn unread_low_w(asleep: bool) -> f64 {
    if asleep {
        ASLEEP_BOUND_W
    } else {
        0.0
    }
}

/// Whether a failed read is the driver refusing it (`EPERM`): what a read of a sleeping GPU
/// gets on kernels that do not wake it, and a GPU in reset on every kernel. `PermissionDenied`
/// from a file already open is the driver's answer, not the file's mode.
pub(super) fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EPERM)
}

/// The label's note for a GPU awake at discovery that runtime PM may put to sleep (it has a
/// status file): what its figure is while it sleeps, so that a region it slept through, which
/// reads 0 J with no spread, states its bias. `None` where runtime PM is not in use (no status
/// file, `unsupported`: the device is never suspended).
pub(super) fn sleep_bias_note(state: &State) -> Option<String> {
    matches!(state, State::Active | State::Asleep(_)).then(|| {
        format!(
            "(while runtime-suspended: not read, counted as {ASLEEP_W} W, which is up to \
             {ASLEEP_BOUND_W} W low for that time: added to its uncertainty)"
        )
    })
}

/// The label's note for a GPU asleep at discovery: what it is read as, and how to keep it
/// awake (for information only).
pub(super) fn asleep_note(sys: &Path, bdf: &str, state: &State) -> String {
    let word = match state {
        State::Asleep(s) => s.as_str(),
        _ => "suspended",
    };
    let control = sys.join("bus/pci/devices").join(bdf).join("power/control");
    format!(
        "(asleep at discovery: runtime PM status {word}; read as {ASLEEP_W} W while asleep, \
         the chip being off (a sleeping card may draw up to {ASLEEP_BOUND_W} W more: added \
         to its uncertainty, not to its energy), and measured normally once it wakes; reading never wakes it: it wakes when a \
         program uses it; to keep it awake while measuring, as root: echo on > {})",
        control.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        assert_eq!(State::parse("active\n"), State::Active);
        for s in ["suspended\n", "suspending", "resuming\n"] {
            assert!(State::parse(s).asleep(), "{s}");
        }
        assert!(!State::parse("unsupported\n").asleep());
        assert!(!State::parse("error\n").asleep());
    }

    #[test]
    fn the_bias_is_stated_only_where_runtime_pm_may_suspend_the_gpu() {
        let note = sleep_bias_note(&State::Active).unwrap();
        assert!(note.contains("up to 3 W"), "{note}");
        assert!(sleep_bias_note(&State::Asleep("suspended".into())).is_some());
        assert!(sleep_bias_note(&State::parse("unsupported\n")).is_none());
        assert!(sleep_bias_note(&State::Unknown).is_none());
    }

    #[test]
    fn a_counter_stands_while_asleep_and_continues_after_a_restart_at_wake() {
        let mut c = SleepCounter::new(1_000, 0, 15.3e-6, false);
        assert_eq!(c.awake(1_500, MS), 1_500);
        assert_eq!(c.asleep(), 1_500);
        assert_eq!(c.asleep(), 1_500);
        // Awake: the firmware counts again from 0.
        assert_eq!(c.awake(40, 10_000 * MS), 1_540);
        assert_eq!(c.awake(90, 10_001 * MS), 1_590);
        // A sleep after which it did not restart: as it is.
        c.asleep();
        assert_eq!(c.awake(100, 10_002 * MS), 1_600);
        // A step back without a sleep is passed on (the sampler's reset).
        assert_eq!(c.awake(10, 10_003 * MS), 1_510);
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn a_32_bit_accumulator_that_wraps_continues_past_2_to_the_32() {
        let top = u64::from(u32::MAX);
        // 300 W at 15.3 µJ a count: about 19.6 million counts a second.
        let mut c = SleepCounter::new(top - 3_000_000, 0, 15.3e-6, false);
        assert_eq!(c.awake(top - 1_000_000, 100 * MS), top - 1_000_000);
        // 100 ms later it wrapped: 2^32 is carried from then on.
        assert_eq!(c.awake(900_000, 200 * MS), (1 << 32) + 900_000);
        assert_eq!(c.awake(2_900_000, 300 * MS), (1 << 32) + 2_900_000);
        // A step back that would need more than any GPU draws is a reset, passed on.
        let mut r = SleepCounter::new(3_000_000_000, 0, 15.3e-6, false);
        assert_eq!(r.awake(5, 20 * MS), 5);
        // As is one that would need 2.3 kW (15 million counts in 100 ms).
        let mut r = SleepCounter::new(top - 10_000_000, 0, 15.3e-6, false);
        assert_eq!(r.awake(5_000_000, 100 * MS), 5_000_000);
        // Nor does a counter once past 2^32 (64 bits: an MI200 or MI300) wrap at it.
        let mut w = SleepCounter::new((1 << 32) + 10, 0, 15.3e-6, false);
        assert_eq!(w.awake(top - 5, 3_600_000 * MS), top - 5);
        assert_eq!(w.awake(7, 3_600_100 * MS), 7);
        // A restart after a sleep is no wrap, however near the top it stood.
        let mut s = SleepCounter::new(top - 100, 0, 15.3e-6, false);
        s.asleep();
        assert_eq!(s.awake(50, 100 * MS), top - 100 + 50);
    }

    #[test]
    fn a_64_bit_accumulator_still_below_2_to_the_32_is_not_carried_at_a_reset() {
        let top = u64::from(u32::MAX);
        // An MI300X minutes after boot: its 64-bit count is still below 2^32 when the GPU is
        // reset, by when a wrap would have explained the step back; it is passed on.
        let mut c = SleepCounter::new(top - 3_000_000, 0, 15.3e-6, true);
        assert_eq!(c.awake(top - 1_000_000, 100 * MS), top - 1_000_000);
        assert_eq!(c.awake(900_000, 200 * MS), 900_000);
        // The same reads on a part that may keep 32 bits are a wrap, but not after a read that
        // failed (a reset makes reads fail, then the firmware counts again from 0).
        let mut f = SleepCounter::new(top - 3_000_000, 0, 15.3e-6, false);
        f.awake(top - 1_000_000, 100 * MS);
        f.failed();
        assert_eq!(f.awake(900_000, 200 * MS), 900_000);
        assert_eq!(f.awake(1_900_000, 250 * MS), 1_900_000);
        // A good read after the failure clears it.
        let mut n = SleepCounter::new(top - 3_000_000, 0, 15.3e-6, false);
        n.failed();
        n.awake(top - 1_000_000, 100 * MS);
        assert_eq!(n.awake(900_000, 200 * MS), (1 << 32) + 900_000);
    }

    #[test]
    fn instinct_mi200_and_later_keep_64_bits() {
        for name in [
            "AMD Instinct MI300X",
            "AMD Instinct MI300X VF",
            "AMD Instinct MI250X / MI250",
            "AMD Instinct MI210",
            "AMD Instinct MI325X",
            "AMD Instinct MI355X",
            "Aqua Vanjaram [Instinct MI300A]",
        ] {
            assert!(keeps_64_bits(name), "{name}");
        }
        for name in [
            "AMD Instinct MI100",
            "AMD Radeon Instinct MI50",
            "Radeon Instinct MI25",
            "AMD Radeon RX 7900 XTX",
            "AMD Radeon PRO W7900",
            "AMD GPU",
            "MI",
            "XMI300",
        ] {
            assert!(!keeps_64_bits(name), "{name}");
        }
    }

    #[test]
    fn only_eperm_is_a_refusal() {
        assert!(refused(&io::Error::from_raw_os_error(libc::EPERM)));
        // EACCES is the file's mode (open), EOPNOTSUPP a sensor the firmware lacks.
        assert!(!refused(&io::Error::from_raw_os_error(libc::EACCES)));
        assert!(!refused(&io::Error::from_raw_os_error(libc::EOPNOTSUPP)));
    }

    #[test]
    fn status_through_the_hwmon_device_link_else_the_pci_bus() {
        let d = std::env::temp_dir().join(format!("carbonctx-runpm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let dev = d.join("devices/pci0000:00/0000:03:00.0");
        std::fs::create_dir_all(dev.join("power")).unwrap();
        std::fs::create_dir_all(dev.join("hwmon/hwmon1")).unwrap();
        std::os::unix::fs::symlink(&dev, dev.join("hwmon/hwmon1/device")).unwrap();
        std::fs::write(dev.join("power/runtime_status"), "suspended\n").unwrap();
        let s = Status::of(&d, "0000:03:00.0", Some(&dev.join("hwmon/hwmon1")));
        assert_eq!(s.read(), State::Asleep("suspended".into()));
        std::fs::write(dev.join("power/runtime_status"), "active\n").unwrap();
        assert_eq!(s.read(), State::Active, "read again at each call");
        // Without hwmon: the bus's link to the device.
        std::fs::create_dir_all(d.join("bus/pci/devices")).unwrap();
        std::os::unix::fs::symlink(&dev, d.join("bus/pci/devices/0000:03:00.0")).unwrap();
        assert_eq!(Status::of(&d, "0000:03:00.0", None).read(), State::Active);
        assert_eq!(Status::of(&d, "0000:04:00.0", None).read(), State::Unknown);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
