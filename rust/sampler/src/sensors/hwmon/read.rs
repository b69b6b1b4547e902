//! Reading hwmon attribute files: kept open, re-read with `pread`, parsed as the hwmon ABI
//! writes them (decimal integers, one per file), and turned into a [`Reading`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::background::Background;
use crate::error::Error;
use crate::sensors::sysfs::NumberFile;
use crate::sensors::{EnergySource, Reading, SourceInfo};

/// What to do when a file that was readable at discovery stops answering.
const READ_HINT: &str = "The hwmon device stopped answering (driver unloaded, device removed or \
in a low-power state that refuses reads); measuring goes on without it.";

/// How many times a value that does not parse is read again before the error is reported (a
/// file rewritten in place by a simulator can be caught between two writes; sysfs never is).
const PARSE_RETRIES: u32 = 4;

/// One attribute file, kept open.
#[derive(Debug)]
pub(super) struct Attr {
    file: File,
    path: PathBuf,
    /// An ACPI power meter's reading, which may say "unknown" ([`ACPI_UNKNOWN_UW`]).
    acpi_meter: bool,
}

/// What an ACPI power meter's `power1_average` shows when the firmware's `_PMM` answers
/// "unknown": ACPI (section 10.4, Power Meters) gives an unknown value as an integer with every
/// bit set, 32 or 64 bits wide, and kernels before the driver checked for it print it times
/// 1000 (`%llu` of `power * 1000`, the 64-bit one wrapped). Read as no value, never as watts.
pub(super) const ACPI_UNKNOWN_UW: [u64; 2] = [0xFFFF_FFFF * 1000, u64::MAX.wrapping_mul(1000)];

impl Attr {
    /// Opens `path` and reads it once, so that a file that cannot be read is found now.
    pub(super) fn open(path: &Path) -> Result<(Attr, i64), Error> {
        Self::open_as(path, false)
    }

    /// [`Attr::open`] for an ACPI power meter's `power1_average`: a reading the firmware says
    /// is unknown is an error, not a value.
    pub(super) fn open_acpi_meter(path: &Path) -> Result<(Attr, i64), Error> {
        Self::open_as(path, true)
    }

    fn open_as(path: &Path, acpi_meter: bool) -> Result<(Attr, i64), Error> {
        let file = File::open(path).map_err(|e| Error::io(path, e, READ_HINT))?;
        let mut attr = Attr {
            file,
            path: path.to_path_buf(),
            acpi_meter,
        };
        let v = attr.read()?;
        Ok((attr, v))
    }

    /// The file's path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file's integer (hwmon values are signed decimal integers).
    pub(super) fn read(&mut self) -> Result<i64, Error> {
        if !self.acpi_meter {
            return ATTR_FILE.read(&self.file, &self.path, parse_int);
        }
        let v = ATTR_FILE.read(&self.file, &self.path, |b| {
            match crate::sensors::powercap::parse_counter(b) {
                Some(u) if ACPI_UNKNOWN_UW.contains(&u) => Some(None),
                _ => parse_int(b).map(Some),
            }
        })?;
        v.ok_or_else(|| Error::Io {
            path: self.path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the meter reports its reading as unknown (the firmware's all-ones value): it \
                 has no measurement now",
            ),
        })
    }
}

/// How an attribute file is read (see [`crate::sensors::sysfs`]).
const ATTR_FILE: NumberFile = NumberFile {
    retries: PARSE_RETRIES,
    base_us: 50,
    what: "an integer",
    empty: "the file is empty: the device was removed or its driver unloaded",
    hint: READ_HINT,
};

/// Parses a decimal integer with an optional sign, surrounded by optional ASCII whitespace
/// (and trailing NUL bytes); leading zeros are accepted. `None` for anything else.
pub fn parse_int(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    let (neg, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut v: i64 = 0;
    for b in digits.bytes() {
        v = v.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

/// Reads a small text file (a name or a label), trimmed; `None` when it cannot be read or is
/// not text.
pub(super) fn read_text(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() > 4096 {
        return None;
    }
    let text = String::from_utf8(bytes).ok()?;
    let text = text
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .to_string();
    // Labels end up in ids and reports: printable characters only.
    if text.chars().any(|c| c.is_control()) {
        return None;
    }
    Some(text)
}

/// Undoes the wraparound of a counter whose range is not published but is one of a known set
/// (see [`super::amd_energy`]). The extended value counts on from where the raw
/// one wrapped; a step back that no candidate range and no plausible power explains is a
/// reset, passed on as a step back (so that the sampler records a gap and invents nothing).
#[derive(Debug)]
pub(super) struct Unwrap {
    /// Candidate ranges in counter units, ascending.
    ranges: Vec<u64>,
    /// Counter units per joule.
    units_per_joule: f64,
    /// The most power the counter can plausibly show, in watts.
    max_watts: f64,
    last_raw: u64,
    last_at: Instant,
    offset: u64,
}

impl Unwrap {
    pub(super) fn new(ranges: Vec<u64>, units_per_joule: f64, max_watts: f64, raw: u64) -> Self {
        Unwrap {
            ranges,
            units_per_joule,
            max_watts,
            last_raw: raw,
            last_at: Instant::now(),
            offset: 0,
        }
    }

    /// The extended value for a new raw reading taken at `at`.
    pub(super) fn push(&mut self, raw: u64, at: Instant) -> u64 {
        let prev = self.last_raw;
        let elapsed = at.saturating_duration_since(self.last_at).as_secs_f64();
        self.last_raw = raw;
        self.last_at = at;
        if raw < prev {
            // The range is above every value seen; the smallest such candidate is the one the
            // counter wrapped at, if the energy it implies is plausible.
            let allowed = self.max_watts * elapsed.max(0.1) * self.units_per_joule;
            match self.ranges.iter().find(|&&r| r > prev) {
                Some(&range) if ((range - prev).saturating_add(raw) as f64) <= allowed => {
                    self.offset = self.offset.saturating_add(range);
                }
                _ => self.offset = 0,
            }
        }
        self.offset.saturating_add(raw)
    }
}

/// How a source's reading is made from its files.
#[derive(Debug)]
pub(super) enum Probe {
    /// An energy counter in the units of the source's `CounterSpec`.
    Counter(Attr),
    /// The sum of energy counters whose wraparound is undone here (its spec says it never
    /// wraps; a counter reset shows as a step back of the sum).
    Sum(Vec<(Attr, Unwrap)>),
    /// A meter's average power in microwatts over a window whose middle lies the given time
    /// before the read.
    Average(Attr, Duration),
    /// The same, read on a thread of its own (a meter whose reads can block): its middle lies
    /// that much before the thread's last read.
    AverageBackground(Background, Duration),
    /// Bus voltage in millivolts and current in milliamperes (power = V × I).
    VoltsAmps(Attr, Attr),
}

/// One hwmon channel, read through its open files.
#[derive(Debug)]
pub(super) struct HwmonSource {
    pub(super) info: SourceInfo,
    pub(super) probe: Probe,
}

impl EnergySource for HwmonSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read(&mut self) -> Result<Reading, Error> {
        match &mut self.probe {
            Probe::Counter(a) => Ok(Reading::Counter(counter(a)?)),
            Probe::Sum(parts) => {
                let now = Instant::now();
                let mut total: u64 = 0;
                for (a, u) in parts.iter_mut() {
                    total = total.saturating_add(u.push(counter(a)?, now));
                }
                Ok(Reading::Counter(total))
            }
            Probe::Average(a, half) => Ok(power_at(a.read()?, *half)),
            Probe::AverageBackground(b, half) => {
                let (uw, age) = b.latest_aged()?;
                Ok(power_at(uw, *half + age))
            }
            Probe::VoltsAmps(v, i) => {
                let mv = v.read()? as f64;
                let ma = i.read()? as f64;
                Ok(Reading::Power(mv * ma * 1e-6))
            }
        }
    }
}

fn power_at(microwatts: i64, ago: Duration) -> Reading {
    Reading::PowerAt {
        watts: microwatts as f64 * 1e-6,
        ago_ns: ago.as_nanos().min(u128::from(u64::MAX)) as u64,
    }
}

fn counter(a: &mut Attr) -> Result<u64, Error> {
    let v = a.read()?;
    u64::try_from(v).map_err(|_| Error::Parse {
        path: a.path.clone(),
        what: "an energy counter (not negative)",
        text: v.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_integers() {
        assert_eq!(parse_int(b"123\n"), Some(123));
        assert_eq!(parse_int(b"-45\n"), Some(-45));
        assert_eq!(parse_int(b"+7"), Some(7));
        assert_eq!(parse_int(b" 00042 \0\0"), Some(42));
        assert_eq!(parse_int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(parse_int(b""), None);
        assert_eq!(parse_int(b"-"), None);
        assert_eq!(parse_int(b"1.5"), None);
        assert_eq!(parse_int(b"1 2"), None);
        assert_eq!(parse_int(&[0xff, b'1']), None);
    }

    #[test]
    fn an_acpi_meter_that_turns_unknown_is_an_error_until_it_measures_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("power1_average");
        std::fs::write(&path, "180000000\n").unwrap();
        let (mut meter, v) = Attr::open_acpi_meter(&path).unwrap();
        assert_eq!(v, 180_000_000);
        for unknown in ["4294967295000\n", "18446744073709550616\n"] {
            std::fs::write(&path, unknown).unwrap();
            let e = meter.read().unwrap_err().to_string();
            assert!(e.contains("unknown"), "{e}");
        }
        std::fs::write(&path, "181000000\n").unwrap();
        assert_eq!(meter.read().unwrap(), 181_000_000);
        // Other attributes read the same digits as the number they are.
        std::fs::write(&path, "4294967295000\n").unwrap();
        assert_eq!(Attr::open(&path).unwrap().1, 4_294_967_295_000);
    }

    #[test]
    fn unwraps_at_the_smallest_range_above_what_was_seen() {
        let t0 = Instant::now();
        // Ranges of 1000 and 2000 units, 1 unit per joule, at most 100 W.
        let mut u = Unwrap::new(vec![1_000, 2_000], 1.0, 100.0, 900);
        u.last_at = t0;
        assert_eq!(u.push(990, t0 + Duration::from_secs(1)), 990);
        // 990 → 5: wrapped at 1000 (15 J in a second is plausible).
        assert_eq!(u.push(5, t0 + Duration::from_secs(2)), 1_005);
        assert_eq!(u.push(50, t0 + Duration::from_secs(3)), 1_050);
    }

    #[test]
    fn an_implausible_step_back_is_a_reset() {
        let t0 = Instant::now();
        let mut u = Unwrap::new(vec![1_000, 2_000], 1.0, 100.0, 100);
        u.last_at = t0;
        assert_eq!(u.push(990, t0 + Duration::from_secs(10)), 990);
        // Back from 990 to 500 within a second: 510 J would be needed.
        let v = u.push(500, t0 + Duration::from_secs(11));
        assert!(v < 990, "a reset shows as a step back, got {v}");
        assert_eq!(u.push(600, t0 + Duration::from_secs(12)), 600);
    }
}
