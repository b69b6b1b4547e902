//! carbonctx-sim: simulated energy hardware, for tests, benchmarks and users' own tests.
//!
//! A [`SimMachine`] lays out a file tree that looks like the parts of `/sys`, `/dev` and `/proc`
//! the CPU backends read, and (once [`SimMachine::start`]ed) a writer thread named
//! `carbonctx-sim` keeps its energy counters moving along known power traces
//! ([`SquareWave`]s). Point the real backends at [`SimMachine::roots`] and compare what they
//! measure with [`SimMachine::truth_j`], the exact integral of the trace.
//!
//! ```no_run
//! use carbonctx_sim::{SimMachine, SimSpec, SimZone, SquareWave};
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
//! The crate holds the one definition of the simulated waveforms ([`wave`]); the writer thread
//! ([`writer`]) writes CPU counters and GPU state from it, the fake `libnvidia-ml` reads the GPU
//! state ([`gpu`]), and Python's `carbonctx.testing.Wave` calls it through the native module.
//!
//! - [`wave`]: [`SquareWave`], its exact integral, and the seconds-to-nanoseconds conversion;
//! - [`spec`]: [`SimSpec`], [`SimZone`] (what to simulate);
//! - [`tree`]: the sysfs, MSR, perf and `/proc` trees;
//! - [`writer`]: the thread that moves the counters;
//! - [`gpu`]: [`SimGpu`] and the state file the fake `libnvidia-ml` reads;
//! - [`machine`]: [`SimMachine`], which ties them together and gives the truth.
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
//!   use that fixed unit) and 0x64D (psys, package 0 only; in joules on Sapphire and Emerald
//!   Rapids); on the Silvermont and Airmont Atoms a unit is 2^ESU µJ.
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
//!
//! # GPUs
//!
//! With [`SimSpec::gpus`], `<root>/nvml/` holds `gpus.state` (see [`gpu`]) and
//! `fake_nvml.conf`, which points the fake library at it. Put the fake library (built from
//! `python/carbonctx/_fakes/fake_nvml.c`) in that directory and give its path as
//! [`carbonctx_sampler::Roots::nvml_library`]; [`SimMachine::gpu_truth_j`] is the exact truth.

pub mod gpu;
pub mod machine;
pub mod spec;
pub mod tree;
pub mod wave;
pub mod writer;

pub use gpu::{gpu_tick, GpuTick, SimGpu};
pub use machine::SimMachine;
pub use spec::{SimSpec, SimZone, DEFAULT_MAX_ENERGY_RANGE_UJ};
pub use tree::SIM_PERF_TYPE;
pub use wave::{secs_to_ns, SquareWave};
pub use writer::WRITE_TIMES_KEPT;
