//! Simulated CPU energy hardware, for tests, benchmarks and users' own tests.
//!
//! A [`SimMachine`] lays out a file tree that looks like the parts of `/sys`, `/dev` and `/proc`
//! the CPU backends read, and (once [`SimMachine::start`]ed) a writer thread named
//! `carbonctx-sim` keeps its energy counters moving along known power traces
//! ([`SquareWave`]s). Point the real backends at [`SimMachine::roots`] and compare what they
//! measure with [`SimMachine::truth_j`], the exact integral of the trace.
//!
//! ```no_run
//! use carbonctx_sampler::sim::{SimMachine, SimSpec, SimZone, SquareWave};
//! use carbonctx_sampler::Domain;
//!
//! let dir = std::env::temp_dir().join("carbonctx-sim-example");
//! let wave = SquareWave { low_w: 40.0, high_w: 120.0, period_ns: 50_000_000, duty: 0.5 };
//! let spec = SimSpec::new(&dir, 1)
//!     .with_zone(SimZone::new(Domain::Package, 0, wave))
//!     .with_zone(SimZone::new(Domain::Dram, 0, SquareWave::constant(5.0)));
//! let mut sim = SimMachine::new(spec).unwrap();
//! sim.start().unwrap();
//! let found = carbonctx_sampler::powercap::discover(&sim.roots());
//! // ... read the sources, then:
//! let (a, b) = (sim.t0_ns(), carbonctx_sampler::now_ns());
//! let joules = sim.truth_j(Domain::Package, 0, a, b).unwrap();
//! sim.stop();
//! ```
//!
//! # Layout written
//!
//! Under `root` (all optional parts are on by default):
//!
//! * powercap: real directories in `sys/devices/virtual/powercap/intel-rapl/intel-rapl:N` with
//!   sub-zones nested inside (`intel-rapl:N:M`), and symlinks to every zone in
//!   `sys/class/powercap/`, as sysfs shows them. Each zone has `name`, `energy_uj`,
//!   `max_energy_range_uj` and `enabled`. Sub-zones of a package are numbered in the order
//!   core, uncore, dram among those present, so a server (dram only) gets `intel-rapl:N:0` =
//!   dram and a client (core, uncore, dram) gets `:0` core, `:1` uncore, `:2` dram, as real
//!   machines do. A psys zone becomes the top-level zone `intel-rapl:P` after the `P` packages.
//!   `energy_uj` is mode 0644 here (real hardware: 0400) so that tests not run as root can
//!   read it.
//! * MSR: sparse files `dev/cpu/C/msr` for every CPU, holding 8 little-endian bytes at each
//!   register's address: the unit register 0x606 (energy status unit
//!   [`SimSpec::energy_status_unit`], 14 by default) and the 32-bit counters 0x611 (package),
//!   0x639 (core), 0x641 (uncore), 0x619 (dram, in 2^-16 J units on the server models that
//!   use that fixed unit) and 0x64D (psys, package 0 only).
//! * topology: `sys/devices/system/cpu/cpuC/topology/{physical_package_id,core_id}` and
//!   `sys/devices/system/cpu/online`; CPUs are numbered package by package.
//! * `proc/cpuinfo` (vendor GenuineIntel, family 6, [`SimSpec::cpu_model`],
//!   [`SimSpec::model_name`]) and a static `proc/stat`.
//! * perf: the power PMU's description under `sys/bus/event_source/devices/power` (`type`,
//!   `cpumask`, `format/event`, `events/energy-*{,.scale,.unit}`). Its `type` is
//!   [`SIM_PERF_TYPE`], which no kernel hands out, so the parsing succeeds and opening the
//!   events fails cleanly.
//!
//! # Counter values
//!
//! At every update (every [`SimSpec::update_period_ns`], sleeping to absolute deadlines) the
//! writer takes the *actual* current time `t` and writes each zone's energy
//! `E = offset_j + wave.energy_j(t − t0)`: `energy_uj` as `floor(E / 1 µJ) mod
//! (max_energy_range_uj + 1)`, zero-padded to the width of `max_energy_range_uj` plus a newline
//! (a fixed length, so a reader never sees a shorter number), and each MSR as
//! `floor(E / unit) mod 2^32`. The time of every write is kept ([`SimMachine::write_times`]).
//! `t0` is the moment [`SimMachine::new`] returned; the files hold `E(t0)` until the first
//! update.
//!
//! Unlike sysfs, a regular file rewritten in place can be read half-written: a single `pwrite`
//! racing a `pread` lets the reader see some bytes of the old number and some of the new (a
//! value off by a carry, seen about once in 10^6 reads of a file updated every 10 µs). So
//! `energy_uj` is updated in three writes that leave it unparseable in between (see
//! `write_guarded`), and the powercap reader reads again when a value does not parse. The MSR
//! files are written with one `pwrite` each: on x86-64 a counter inside one aligned 8-byte
//! word is not torn, which holds for every register but psys (0x64D).
//!
//! # Failures
//!
//! [`SimMachine::remove_zone`] makes a zone vanish (its `energy_uj` is emptied, so readers that
//! keep it open get an error, and its directory and symlink are removed).
//! [`SimMachine::fail_reads`] makes `energy_uj` read as non-numeric text. Tests often run as
//! root, for whom file modes do not stop reads, so `chmod 000` is no way to simulate an
//! unreadable file there; [`SimMachine::energy_path`] gives the path for tests that want to
//! try it when not root.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::Error;
use crate::msr;
use crate::now_ns;
use crate::source::{Domain, Roots};

/// The `max_energy_range_uj` of real RAPL package zones, used unless a zone says otherwise.
pub const DEFAULT_MAX_ENERGY_RANGE_UJ: u64 = 262_143_328_850;

/// The perf PMU type written into the simulated power PMU: a number no kernel allocates, so
/// `perf_event_open` on it fails (ENOENT) instead of counting something else.
pub const SIM_PERF_TYPE: u32 = 0x7fff_fff0;

/// How many write times are kept (the oldest are dropped first): about 17 minutes at 1 kHz.
pub const WRITE_TIMES_KEPT: usize = 1 << 20;

/// A power trace: `high_w` for the first `duty · period_ns` of every period, `low_w` for the
/// rest, starting at `t0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SquareWave {
    /// Power in the low part of the period, watts.
    pub low_w: f64,
    /// Power in the high part of the period, watts.
    pub high_w: f64,
    /// Length of one period, nanoseconds. 0 means a constant `mean_w()`.
    pub period_ns: u64,
    /// Fraction of each period spent at `high_w`, in 0..=1.
    pub duty: f64,
}

impl SquareWave {
    /// A constant power.
    pub fn constant(watts: f64) -> SquareWave {
        SquareWave {
            low_w: watts,
            high_w: watts,
            period_ns: 0,
            duty: 1.0,
        }
    }

    /// Mean power over a whole period, watts.
    pub fn mean_w(&self) -> f64 {
        let d = self.duty.clamp(0.0, 1.0);
        self.high_w * d + self.low_w * (1.0 - d)
    }

    fn high_ns(&self) -> f64 {
        self.duty.clamp(0.0, 1.0) * self.period_ns as f64
    }

    /// Power at `elapsed_ns` after `t0`, watts.
    pub fn power_w(&self, elapsed_ns: u64) -> f64 {
        if self.period_ns == 0 {
            return self.mean_w();
        }
        if ((elapsed_ns % self.period_ns) as f64) < self.high_ns() {
            self.high_w
        } else {
            self.low_w
        }
    }

    /// Energy from `t0` to `t0 + elapsed_ns`, joules: the exact integral of [`Self::power_w`].
    pub fn energy_j(&self, elapsed_ns: u64) -> f64 {
        if self.period_ns == 0 {
            return self.mean_w() * elapsed_ns as f64 * 1e-9;
        }
        let period = self.period_ns as f64;
        let high = self.high_ns();
        let full = (elapsed_ns / self.period_ns) as f64;
        let rem = (elapsed_ns % self.period_ns) as f64;
        let per_period = self.high_w * high + self.low_w * (period - high);
        let partial = if rem <= high {
            self.high_w * rem
        } else {
            self.high_w * high + self.low_w * (rem - high)
        };
        (full * per_period + partial) * 1e-9
    }

    fn validate(&self) -> Result<(), Error> {
        let ok = self.low_w.is_finite()
            && self.high_w.is_finite()
            && self.low_w >= 0.0
            && self.high_w >= 0.0
            && (0.0..=1.0).contains(&self.duty);
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "invalid square wave {self:?}: powers must be finite and >= 0, duty in 0..=1"
            )))
        }
    }
}

/// One simulated RAPL zone.
#[derive(Clone, Debug, PartialEq)]
pub struct SimZone {
    /// `Package`, `Core`, `Uncore`, `Dram` or `Psys`.
    pub domain: Domain,
    /// The package it belongs to (for `Psys`, 0: there is one per machine).
    pub package: u32,
    /// Its power trace.
    pub wave: SquareWave,
    /// The powercap counter counts `0..=max_energy_range_uj` µJ, then restarts at 0. Use a
    /// small value to make it wrap quickly.
    pub max_energy_range_uj: u64,
    /// Energy already counted at `t0`, joules (counters do not start at 0 on real machines;
    /// a counter reading 0 would also make the MSR backend think the domain absent).
    pub offset_j: f64,
}

impl SimZone {
    /// A zone with the real-hardware wrap range and a 1000 J starting offset.
    pub fn new(domain: Domain, package: u32, wave: SquareWave) -> SimZone {
        SimZone {
            domain,
            package,
            wave,
            max_energy_range_uj: DEFAULT_MAX_ENERGY_RANGE_UJ,
            offset_j: 1000.0,
        }
    }

    /// The same zone with another wrap range.
    pub fn with_max_energy_range_uj(mut self, max_uj: u64) -> SimZone {
        self.max_energy_range_uj = max_uj;
        self
    }

    /// The same zone with another starting offset.
    pub fn with_offset_j(mut self, offset_j: f64) -> SimZone {
        self.offset_j = offset_j;
        self
    }
}

/// What to simulate.
#[derive(Clone, Debug, PartialEq)]
pub struct SimSpec {
    /// Directory the tree is written under (created if missing).
    pub root: PathBuf,
    /// Number of physical packages.
    pub packages: u32,
    /// CPUs in each package (default 2).
    pub cpus_per_package: u32,
    /// The zones; at most one per (domain, package).
    pub zones: Vec<SimZone>,
    /// Time between counter updates, nanoseconds (default 1 ms, RAPL's update rate).
    pub update_period_ns: u64,
    /// Write the powercap tree (default true).
    pub powercap: bool,
    /// Write MSR device files (default true).
    pub msr: bool,
    /// Write the perf power PMU description (default true).
    pub perf: bool,
    /// `model name` in cpuinfo.
    pub model_name: String,
    /// Intel family-6 `model` in cpuinfo (default 0x6A, Ice Lake-X, whose DRAM counter uses
    /// the fixed 2^-16 J unit).
    pub cpu_model: u32,
    /// Energy status unit written into MSR 0x606: one unit is 2^-ESU J (default 14).
    pub energy_status_unit: u32,
}

impl SimSpec {
    /// A machine with `packages` packages, no zones yet, and the defaults above.
    pub fn new(root: impl Into<PathBuf>, packages: u32) -> SimSpec {
        SimSpec {
            root: root.into(),
            packages,
            cpus_per_package: 2,
            zones: Vec::new(),
            update_period_ns: 1_000_000,
            powercap: true,
            msr: true,
            perf: true,
            model_name: "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz".to_string(),
            cpu_model: 0x6A,
            energy_status_unit: 14,
        }
    }

    /// Adds a zone.
    pub fn with_zone(mut self, zone: SimZone) -> SimSpec {
        self.zones.push(zone);
        self
    }

    /// A server: every package has a package zone and a dram zone with the given traces.
    pub fn server(
        root: impl Into<PathBuf>,
        packages: u32,
        package: SquareWave,
        dram: SquareWave,
    ) -> SimSpec {
        let mut spec = SimSpec::new(root, packages);
        for p in 0..packages {
            spec.zones.push(SimZone::new(Domain::Package, p, package));
            spec.zones.push(SimZone::new(Domain::Dram, p, dram));
        }
        spec
    }

    fn validate(&self) -> Result<(), Error> {
        if self.packages == 0 || self.cpus_per_package == 0 {
            return Err(Error::Invalid(
                "a simulated machine needs at least one package and one CPU per package".into(),
            ));
        }
        if self.update_period_ns == 0 {
            return Err(Error::Invalid(
                "the update period must be above 0 ns".into(),
            ));
        }
        if self.energy_status_unit > 31 {
            return Err(Error::Invalid(
                "the energy status unit must be 0..=31".into(),
            ));
        }
        for (i, z) in self.zones.iter().enumerate() {
            z.wave.validate()?;
            if z.domain == Domain::Gpu {
                return Err(Error::Invalid("a simulated CPU has no GPU zone".into()));
            }
            if z.package >= self.packages {
                return Err(Error::Invalid(format!(
                    "zone {} of package {} but the machine has {} packages",
                    z.domain.as_str(),
                    z.package,
                    self.packages
                )));
            }
            if z.domain == Domain::Psys && z.package != 0 {
                return Err(Error::Invalid("the psys zone belongs to package 0".into()));
            }
            if z.max_energy_range_uj == 0 || !z.offset_j.is_finite() || z.offset_j < 0.0 {
                return Err(Error::Invalid(format!(
                    "zone {} of package {}: the range must be above 0 and the offset finite and >= 0",
                    z.domain.as_str(),
                    z.package
                )));
            }
            if self.zones[..i]
                .iter()
                .any(|o| o.domain == z.domain && o.package == z.package)
            {
                return Err(Error::Invalid(format!(
                    "two {} zones for package {}",
                    z.domain.as_str(),
                    z.package
                )));
            }
        }
        Ok(())
    }
}

/// A zone's files and state inside the running simulation.
struct ZoneState {
    spec: SimZone,
    /// Zone directory (the real one, not the symlink) and the symlink, when powercap is on.
    dir: Option<PathBuf>,
    link: Option<PathBuf>,
    energy: Option<File>,
    width: usize,
    wrap_uj: u64,
    msr_address: u64,
    msr_unit_j: f64,
    msr_cpus: Vec<usize>,
    removed: bool,
    failing: bool,
    /// What `energy_uj` holds: `Some(Some(µJ))`, `Some(None)` for the failing text, `None`
    /// before the first write. Unchanged content is not rewritten.
    written: Option<Option<u64>>,
}

struct Inner {
    t0: u64,
    zones: Vec<ZoneState>,
    msr_files: Vec<File>,
    write_times: VecDeque<u64>,
    writes: u64,
    last_error: Option<String>,
}

impl Inner {
    fn write_at(&mut self, t: u64) -> Result<(), Error> {
        let elapsed = t.saturating_sub(self.t0);
        let mut first_err = None;
        for z in &mut self.zones {
            let e = z.spec.offset_j + z.spec.wave.energy_j(elapsed);
            if let (Some(file), false) = (&z.energy, z.removed) {
                let content = if z.failing {
                    None
                } else {
                    Some(((e * 1e6).floor() as u64) % z.wrap_uj)
                };
                if z.written != Some(content) {
                    let mut buf = [b' '; 32];
                    let len = match content {
                        None => {
                            let text = b"error";
                            buf[..text.len()].copy_from_slice(text);
                            z.width
                        }
                        Some(uj) => write_padded(&mut buf, uj, z.width),
                    };
                    buf[len] = b'\n';
                    match write_guarded(file, &buf[..=len]) {
                        Ok(()) => z.written = Some(content),
                        Err(err) => {
                            first_err.get_or_insert_with(|| {
                                Error::io(
                                    z.dir.clone().unwrap_or_default().join("energy_uj"),
                                    err,
                                    "",
                                )
                            });
                        }
                    }
                }
            }
            let raw = ((e / z.msr_unit_j).floor() as u64) & (msr::COUNTER_WRAP - 1);
            for &cpu in &z.msr_cpus {
                if let Err(err) = self.msr_files[cpu].write_at(&raw.to_le_bytes(), z.msr_address) {
                    first_err.get_or_insert_with(|| Error::Io {
                        path: PathBuf::from(format!("msr of cpu {cpu}")),
                        source: err,
                    });
                }
            }
        }
        self.writes += 1;
        if self.write_times.len() == WRITE_TIMES_KEPT {
            self.write_times.pop_front();
        }
        self.write_times.push_back(t);
        match first_err {
            Some(e) => {
                self.last_error = Some(e.to_string());
                Err(e)
            }
            None => Ok(()),
        }
    }
}

/// Replaces the content of a counter file (always the same length, ending in a newline) so
/// that a concurrent reader sees the old value, the new value, or text that does not parse, but
/// never a mix of the two numbers' digits. One `pwrite` can be torn against a concurrent
/// `pread` (the reader may copy some bytes before the write and some after), so the update
/// takes three: the newline becomes `x` (one byte, which cannot be torn; from here the content
/// does not parse), the digits are written, the newline comes back (one byte: the new value).
/// The reader reads again when a value does not parse ([`crate::powercap::PARSE_RETRIES`]).
/// This relies on a reader that sees a later store also seeing the earlier ones, which holds on
/// x86-64; on weaker memory orders a torn read stays possible, if far rarer.
fn write_guarded(file: &File, text: &[u8]) -> io::Result<()> {
    let Some(last) = text.len().checked_sub(1) else {
        return Ok(());
    };
    file.write_at(b"x", last as u64)?;
    file.write_at(&text[..last], 0)?;
    file.write_at(&text[last..], last as u64)?;
    Ok(())
}

/// Writes `v` zero-padded to `width` digits at the start of `buf`; returns the length written.
fn write_padded(buf: &mut [u8; 32], mut v: u64, width: usize) -> usize {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let len = width.max(n).min(30);
    for (i, slot) in buf[..len].iter_mut().enumerate() {
        let from_right = len - 1 - i;
        *slot = if from_right < n {
            digits[from_right]
        } else {
            b'0'
        };
    }
    len
}

struct Shared {
    inner: Mutex<Inner>,
    stop: Mutex<bool>,
    wake: Condvar,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock cannot leave the state inconsistent in a way that matters
    // for a simulation, so a poisoned lock is simply taken over.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A simulated machine: its file tree and the thread that moves its counters.
pub struct SimMachine {
    spec: SimSpec,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SimMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMachine")
            .field("spec", &self.spec)
            .field("running", &self.thread.is_some())
            .finish()
    }
}

fn mkdir(path: &Path) -> Result<(), Error> {
    fs::create_dir_all(path).map_err(|e| Error::io(path, e, ""))
}

fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    fs::write(path, text).map_err(|e| Error::io(path, e, ""))
}

/// Removes what is at `path` (file, symlink or directory), ignoring "not there".
fn remove_any(path: &Path) -> Result<(), Error> {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e, "")),
    }
}

fn msr_address(domain: Domain) -> u64 {
    match domain {
        Domain::Package => msr::MSR_PKG_ENERGY_STATUS,
        Domain::Core => msr::MSR_PP0_ENERGY_STATUS,
        Domain::Uncore => msr::MSR_PP1_ENERGY_STATUS,
        Domain::Dram => msr::MSR_DRAM_ENERGY_STATUS,
        Domain::Psys | Domain::Gpu => msr::MSR_PLATFORM_ENERGY_STATUS,
    }
}

fn perf_event_name(domain: Domain) -> (&'static str, u32) {
    match domain {
        Domain::Core => ("energy-cores", 1),
        Domain::Package => ("energy-pkg", 2),
        Domain::Dram => ("energy-ram", 3),
        Domain::Uncore | Domain::Gpu => ("energy-gpu", 4),
        Domain::Psys => ("energy-psys", 5),
    }
}

impl SimMachine {
    /// Writes the file tree described by `spec` (first removing the simulated parts an earlier
    /// machine left under the same root) and sets `t0` to now. The counters do not move until [`Self::start`] (or
    /// [`Self::write_at`]).
    pub fn new(spec: SimSpec) -> Result<SimMachine, Error> {
        spec.validate()?;
        let root = &spec.root;
        refuse_live_system(root)?;
        let sys = root.join("sys");
        let cpu_count = (spec.packages * spec.cpus_per_package) as usize;

        // Clear what an earlier machine under the same root left.
        let cpu_dir = sys.join("devices/system/cpu");
        let virt = sys.join("devices/virtual/powercap/intel-rapl");
        let class = sys.join("class/powercap");
        let pmu = sys.join("bus/event_source/devices/power");
        for dir in [&cpu_dir, &virt, &class, &pmu, &root.join("dev/cpu")] {
            remove_any(dir)?;
        }

        // Topology, cpuinfo, stat.
        mkdir(&cpu_dir)?;
        write_file(&cpu_dir.join("online"), &format!("0-{}\n", cpu_count - 1))?;
        let mut cpuinfo = String::new();
        let mut stat = String::from("cpu  1000 0 500 10000 100 0 0 0 0 0\n");
        for cpu in 0..cpu_count {
            let pkg = cpu as u32 / spec.cpus_per_package;
            let core = cpu as u32 % spec.cpus_per_package;
            let topo = cpu_dir.join(format!("cpu{cpu}/topology"));
            write_file(&topo.join("physical_package_id"), &format!("{pkg}\n"))?;
            write_file(&topo.join("core_id"), &format!("{core}\n"))?;
            cpuinfo.push_str(&format!(
                "processor\t: {cpu}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: {}\n\
                 model name\t: {}\nstepping\t: 6\nphysical id\t: {pkg}\nsiblings\t: {}\n\
                 core id\t\t: {core}\ncpu cores\t: {}\n\n",
                spec.cpu_model, spec.model_name, spec.cpus_per_package, spec.cpus_per_package
            ));
            stat.push_str(&format!("cpu{cpu} 500 0 250 5000 50 0 0 0 0 0\n"));
        }
        write_file(&root.join("proc/cpuinfo"), &cpuinfo)?;
        write_file(&root.join("proc/stat"), &stat)?;

        // Zones, numbered as real machines number them.
        if spec.powercap {
            mkdir(&virt)?;
            mkdir(&class)?;
            write_file(&virt.join("enabled"), "1\n")?;
            symlink(&virt, &class.join("intel-rapl"))?;
        }
        let esu_unit_j = (2.0f64).powi(-(spec.energy_status_unit as i32));
        let dram_unit_j = if msr::has_fixed_dram_unit(6, spec.cpu_model) {
            msr::FIXED_DRAM_UNIT_J
        } else {
            esu_unit_j
        };
        let mut zones = Vec::new();
        for z in &spec.zones {
            let (dir, link) = if spec.powercap {
                let (dir, name) = match z.domain {
                    Domain::Package => (
                        virt.join(format!("intel-rapl:{}", z.package)),
                        format!("package-{}", z.package),
                    ),
                    Domain::Psys => (
                        virt.join(format!("intel-rapl:{}", spec.packages)),
                        "psys".to_string(),
                    ),
                    d => {
                        let order = [Domain::Core, Domain::Uncore, Domain::Dram];
                        let sub = order
                            .iter()
                            .filter(|o| {
                                **o < d
                                    && spec
                                        .zones
                                        .iter()
                                        .any(|x| x.domain == **o && x.package == z.package)
                            })
                            .count();
                        // Core < Uncore < Dram in `Domain`'s order, as in `order`.
                        let parent = virt.join(format!("intel-rapl:{}", z.package));
                        (
                            parent.join(format!("intel-rapl:{}:{}", z.package, sub)),
                            d.as_str().to_string(),
                        )
                    }
                };
                mkdir(&dir)?;
                write_file(&dir.join("name"), &format!("{name}\n"))?;
                write_file(
                    &dir.join("max_energy_range_uj"),
                    &format!("{}\n", z.max_energy_range_uj),
                )?;
                write_file(&dir.join("enabled"), "1\n")?;
                let link = class.join(dir.file_name().unwrap_or_default());
                symlink(&dir, &link)?;
                (Some(dir), Some(link))
            } else {
                (None, None)
            };
            let energy = match &dir {
                Some(dir) => {
                    let path = dir.join("energy_uj");
                    let f = create_rw(&path)?;
                    f.set_permissions(fs::Permissions::from_mode(0o644))
                        .map_err(|e| Error::io(&path, e, ""))?;
                    Some(f)
                }
                None => None,
            };
            let msr_cpus = if spec.msr {
                let first = (z.package * spec.cpus_per_package) as usize;
                (first..first + spec.cpus_per_package as usize).collect()
            } else {
                Vec::new()
            };
            zones.push(ZoneState {
                spec: z.clone(),
                dir,
                link,
                energy,
                width: z.max_energy_range_uj.to_string().len(),
                wrap_uj: z.max_energy_range_uj.saturating_add(1),
                msr_address: msr_address(z.domain),
                msr_unit_j: if z.domain == Domain::Dram {
                    dram_unit_j
                } else {
                    esu_unit_j
                },
                msr_cpus,
                removed: false,
                failing: false,
                written: None,
            });
        }

        // MSR devices.
        let mut msr_files = Vec::new();
        if spec.msr {
            let unit_value: u64 = (10 << 16) | (u64::from(spec.energy_status_unit) << 8) | 3;
            for cpu in 0..cpu_count {
                let path = root.join(format!("dev/cpu/{cpu}/msr"));
                if let Some(parent) = path.parent() {
                    mkdir(parent)?;
                }
                let f = create_rw(&path)?;
                f.write_at(&unit_value.to_le_bytes(), msr::MSR_RAPL_POWER_UNIT)
                    .map_err(|e| Error::io(&path, e, ""))?;
                msr_files.push(f);
            }
        }

        // The perf power PMU's description.
        if spec.perf {
            write_file(&pmu.join("type"), &format!("{SIM_PERF_TYPE}\n"))?;
            let mask: Vec<String> = (0..spec.packages)
                .map(|p| (p * spec.cpus_per_package).to_string())
                .collect();
            write_file(&pmu.join("cpumask"), &format!("{}\n", mask.join(",")))?;
            write_file(&pmu.join("format/event"), "config:0-7\n")?;
            for z in &spec.zones {
                let (name, event) = perf_event_name(z.domain);
                let ev = pmu.join("events");
                write_file(&ev.join(name), &format!("event=0x{event:02x}\n"))?;
                write_file(
                    &ev.join(format!("{name}.scale")),
                    "2.3283064365386962890625e-10\n",
                )?;
                write_file(&ev.join(format!("{name}.unit")), "Joules\n")?;
            }
        }

        let t0 = now_ns();
        let mut inner = Inner {
            t0,
            zones,
            msr_files,
            write_times: VecDeque::new(),
            writes: 0,
            last_error: None,
        };
        inner.write_at(t0)?;
        inner.write_times.clear();
        inner.writes = 0;
        Ok(SimMachine {
            spec,
            shared: Arc::new(Shared {
                inner: Mutex::new(inner),
                stop: Mutex::new(false),
                wake: Condvar::new(),
            }),
            thread: None,
        })
    }

    /// The spec this machine was built from.
    pub fn spec(&self) -> &SimSpec {
        &self.spec
    }

    /// Roots pointing into the simulated tree (`<root>/sys`, `<root>/dev`, `<root>/proc`).
    pub fn roots(&self) -> Roots {
        Roots {
            sys: self.spec.root.join("sys"),
            dev: self.spec.root.join("dev"),
            proc: self.spec.root.join("proc"),
            nvml_library: None,
        }
    }

    /// The start of every trace, monotonic nanoseconds (see [`crate::now_ns`]).
    pub fn t0_ns(&self) -> u64 {
        lock(&self.shared.inner).t0
    }

    /// Starts the writer thread. Does nothing when it already runs.
    pub fn start(&mut self) -> Result<(), Error> {
        if self.thread.is_some() {
            return Ok(());
        }
        *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()) = false;
        let shared = Arc::clone(&self.shared);
        let period = self.spec.update_period_ns;
        let handle = std::thread::Builder::new()
            .name("carbonctx-sim".to_string())
            .spawn(move || writer(&shared, period))
            .map_err(|e| Error::Thread(format!("carbonctx-sim: {e}")))?;
        self.thread = Some(handle);
        Ok(())
    }

    /// Stops the writer thread and waits for it. The files keep their last values.
    pub fn stop(&mut self) {
        if let Some(handle) = self.thread.take() {
            *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
            self.shared.wake.notify_all();
            let _ = handle.join();
        }
    }

    /// Whether the writer thread runs.
    pub fn is_running(&self) -> bool {
        self.thread.is_some()
    }

    /// Writes every counter as of monotonic time `t_ns`, by hand (for step-by-step tests with
    /// the thread stopped). Times before `t0` count as `t0`.
    pub fn write_at(&self, t_ns: u64) -> Result<(), Error> {
        lock(&self.shared.inner).write_at(t_ns)
    }

    /// The times of the writes so far (the latest [`WRITE_TIMES_KEPT`]).
    pub fn write_times(&self) -> Vec<u64> {
        lock(&self.shared.inner)
            .write_times
            .iter()
            .copied()
            .collect()
    }

    /// How many updates have been written since [`Self::new`].
    pub fn write_count(&self) -> u64 {
        lock(&self.shared.inner).writes
    }

    /// The last error the writer met, if any (it keeps going).
    pub fn last_error(&self) -> Option<String> {
        lock(&self.shared.inner).last_error.clone()
    }

    fn zone_index(&self, domain: Domain, package: u32) -> Result<usize, Error> {
        self.spec
            .zones
            .iter()
            .position(|z| z.domain == domain && z.package == package)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "the simulated machine has no {} zone for package {package}",
                    domain.as_str()
                ))
            })
    }

    /// The exact energy of a zone's trace between two monotonic instants, joules. Instants
    /// before `t0` count as `t0`. Negative when `t_b < t_a`.
    pub fn truth_j(&self, domain: Domain, package: u32, t_a: u64, t_b: u64) -> Result<f64, Error> {
        let i = self.zone_index(domain, package)?;
        let t0 = self.t0_ns();
        let wave = self.spec.zones[i].wave;
        Ok(wave.energy_j(t_b.saturating_sub(t0)) - wave.energy_j(t_a.saturating_sub(t0)))
    }

    /// The powercap counter value the machine writes for a zone at time `t_ns`, µJ.
    pub fn counter_uj_at(&self, domain: Domain, package: u32, t_ns: u64) -> Result<u64, Error> {
        let i = self.zone_index(domain, package)?;
        let z = &self.spec.zones[i];
        let e = z.offset_j + z.wave.energy_j(t_ns.saturating_sub(self.t0_ns()));
        Ok(((e * 1e6).floor() as u64) % z.max_energy_range_uj.saturating_add(1))
    }

    /// The powercap zone directory of a zone (the real directory the class symlink points to).
    pub fn zone_dir(&self, domain: Domain, package: u32) -> Result<PathBuf, Error> {
        let i = self.zone_index(domain, package)?;
        lock(&self.shared.inner).zones[i]
            .dir
            .clone()
            .ok_or_else(|| Error::Invalid("the powercap tree is not simulated".into()))
    }

    /// `energy_uj` of a zone.
    pub fn energy_path(&self, domain: Domain, package: u32) -> Result<PathBuf, Error> {
        Ok(self.zone_dir(domain, package)?.join("energy_uj"))
    }

    /// Makes a zone vanish, as when its driver is unloaded: its `energy_uj` is emptied (readers
    /// holding it open read nothing), and its directory and class symlink are removed. Removing
    /// a package zone removes its sub-zones too. Its MSR counters keep moving.
    pub fn remove_zone(&self, domain: Domain, package: u32) -> Result<(), Error> {
        let i = self.zone_index(domain, package)?;
        let mut inner = lock(&self.shared.inner);
        let Some(dir) = inner.zones[i].dir.clone() else {
            return Err(Error::Invalid("the powercap tree is not simulated".into()));
        };
        for z in inner.zones.iter_mut() {
            let inside = z.dir.as_ref().is_some_and(|d| d.starts_with(&dir));
            if inside && !z.removed {
                z.removed = true;
                if let Some(f) = &z.energy {
                    let _ = f.set_len(0);
                }
                if let Some(link) = &z.link {
                    remove_any(link)?;
                }
            }
        }
        remove_any(&dir)
    }

    /// Makes a zone's `energy_uj` read as non-numeric text from the next update on (`true`), or
    /// as its counter again (`false`). Effective at once when the thread is stopped.
    pub fn fail_reads(&self, domain: Domain, package: u32, fail: bool) -> Result<(), Error> {
        let i = self.zone_index(domain, package)?;
        let mut inner = lock(&self.shared.inner);
        inner.zones[i].failing = fail;
        let now = now_ns();
        if self.thread.is_none() {
            // Rewrite at once; the thread is not there to do it.
            inner.write_at(now)?;
        }
        Ok(())
    }
}

impl Drop for SimMachine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Refuses a root that holds the running system's `/proc`, `/sys` or `/dev` (such as `/`):
/// the simulation writes and deletes files there, and writing to a real MSR device changes the
/// hardware.
fn refuse_live_system(root: &Path) -> Result<(), Error> {
    let canonical = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let live = canonical == Path::new("/")
        || root.join("proc/self/stat").exists()
        || root.join("sys/kernel").exists()
        || root.join("dev/null").exists();
    if live {
        return Err(Error::Invalid(format!(
            "{} holds a live system tree; give the simulated machine an empty directory",
            root.display()
        )));
    }
    Ok(())
}

fn symlink(target: &Path, link: &Path) -> Result<(), Error> {
    remove_any(link)?;
    std::os::unix::fs::symlink(target, link).map_err(|e| Error::io(link, e, ""))
}

/// The writer thread: update at absolute deadlines until told to stop.
/// Makes the calling thread update on time as hardware would: real-time priority where the
/// process may have it (root, CAP_SYS_NICE), and a 1 µs timer slack. Best effort.
/// Creates (or empties) a file the simulation writes and the backends read.
fn create_rw(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e, ""))
}

fn act_like_hardware() {
    // SAFETY: both calls affect only the calling thread and take plain values; failure is
    // reported through the return value, which is ignored (the writer then runs as before).
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000u64, 0u64, 0u64, 0u64);
        let param = libc::sched_param { sched_priority: 10 };
        libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param);
    }
}

fn writer(shared: &Shared, period_ns: u64) {
    act_like_hardware();
    let mut deadline = now_ns().saturating_add(period_ns);
    loop {
        {
            let mut stop = shared.stop.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if *stop {
                    return;
                }
                let now = now_ns();
                if now >= deadline {
                    break;
                }
                let wait = Duration::from_nanos(deadline - now);
                stop = match shared.wake.wait_timeout(stop, wait) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
        }
        let t = now_ns();
        // Errors are recorded in `last_error`; the writer keeps going.
        let _ = lock(&shared.inner).write_at(t);
        deadline = deadline.saturating_add(period_ns);
        let now = now_ns();
        if deadline <= now {
            // Fell behind (the machine was busy): skip the missed updates.
            deadline = now.saturating_add(period_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_numbers() {
        let mut buf = [0u8; 32];
        let n = write_padded(&mut buf, 42, 6);
        assert_eq!(&buf[..n], b"000042");
        let n = write_padded(&mut buf, 0, 3);
        assert_eq!(&buf[..n], b"000");
        let n = write_padded(&mut buf, 123_456, 3);
        assert_eq!(&buf[..n], b"123456");
        let n = write_padded(&mut buf, u64::MAX, 12);
        assert_eq!(&buf[..n], b"18446744073709551615");
    }

    #[test]
    fn square_wave_closed_form() {
        let w = SquareWave {
            low_w: 40.0,
            high_w: 120.0,
            period_ns: 50_000_000,
            duty: 0.4,
        };
        // One whole period: 20 ms at 120 W + 30 ms at 40 W.
        assert!((w.energy_j(50_000_000) - (2.4 + 1.2)).abs() < 1e-12);
        assert!((w.energy_j(10_000_000) - 1.2).abs() < 1e-12);
        assert!((w.energy_j(30_000_000) - (2.4 + 0.4)).abs() < 1e-12);
        assert_eq!(w.power_w(0), 120.0);
        assert_eq!(w.power_w(20_000_000), 40.0);
        assert_eq!(SquareWave::constant(10.0).energy_j(1_000_000_000), 10.0);
    }
}
