//! [`SimMachine`]: a simulated machine's file tree, its writer thread, and the truth to compare
//! measurements with.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use carbonctx_sampler::{now_ns, Domain, Error, Roots};

use crate::gpu::{GpuFiles, CONFIG_FILE};
use crate::spec::SimSpec;
use crate::tree::{self, remove_any};
use crate::writer::{lock, writer, Inner, Shared};

/// A simulated machine: its file tree and the thread that moves its counters.
///
/// After a `fork` the child has a copy of this object but not the writer thread, and the copy
/// of a lock that thread held at the fork stays held forever. So in any process but the one
/// that made the machine, nothing waits on its locks: reads answer from the copy when it is
/// free, changes are refused with an error, and stopping (or dropping) it leaves the thread to
/// its own process.
pub struct SimMachine {
    spec: SimSpec,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The process that made the machine (and runs its writer thread).
    owner_pid: u32,
    t0: u64,
}

impl std::fmt::Debug for SimMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMachine")
            .field("spec", &self.spec)
            .field("running", &self.thread.is_some())
            .finish()
    }
}

impl SimMachine {
    /// Writes the file tree described by `spec` (first removing the simulated parts an earlier
    /// machine left under the same root) and sets `t0` to now. The counters do not move until
    /// [`Self::start`] (or [`Self::write_at`]).
    pub fn new(spec: SimSpec) -> Result<SimMachine, Error> {
        spec.validate()?;
        let (zones, msr_files) = tree::build(&spec)?;
        let t0 = now_ns();
        let mut inner = Inner {
            t0,
            zones,
            msr_files,
            write_times: VecDeque::new(),
            writes: 0,
            last_error: None,
            gpus: GpuFiles::create(&spec, t0)?,
        };
        if let Some(g) = &inner.gpus {
            tree::write_file(&spec.root.join("nvml").join(CONFIG_FILE), &g.config())?;
        }
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
            owner_pid: std::process::id(),
            t0,
        })
    }

    /// Whether this is the process that made the machine (not a forked child).
    pub fn is_owner(&self) -> bool {
        std::process::id() == self.owner_pid
    }

    /// The machine's state, for a change: refused in a forked child.
    fn inner_mut(&self) -> Result<std::sync::MutexGuard<'_, Inner>, Error> {
        if self.is_owner() {
            return Ok(lock(&self.shared.inner));
        }
        Err(Error::Invalid(format!(
            "this simulated machine belongs to process {}: a forked child ({}) can read it but \
             not start, stop or change it (its writer thread runs there)",
            self.owner_pid,
            std::process::id()
        )))
    }

    /// Reads the machine's state; in a forked child, from its copy when no lock is stuck.
    fn peek<T>(&self, f: impl FnOnce(&Inner) -> T, stuck: T) -> T {
        if self.is_owner() {
            return f(&lock(&self.shared.inner));
        }
        match self.shared.inner.try_lock() {
            Ok(g) => f(&g),
            Err(std::sync::TryLockError::Poisoned(p)) => f(&p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => stuck,
        }
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

    /// The start of every trace, monotonic nanoseconds (see [`carbonctx_sampler::now_ns`]).
    pub fn t0_ns(&self) -> u64 {
        self.t0
    }

    /// Starts the writer thread. Does nothing when it already runs.
    pub fn start(&mut self) -> Result<(), Error> {
        if self.thread.is_some() && self.is_owner() {
            return Ok(());
        }
        drop(self.inner_mut()?);
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
        if !self.is_owner() {
            // The thread is not in this process: joining it would fail, waking it would wait
            // on a lock it may have held at the fork. Forget the handle.
            if let Some(handle) = self.thread.take() {
                std::mem::forget(handle);
            }
            return;
        }
        if let Some(handle) = self.thread.take() {
            *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
            self.shared.wake.notify_all();
            let _ = handle.join();
        }
    }

    /// Whether the writer thread runs.
    pub fn is_running(&self) -> bool {
        self.thread.is_some() && self.is_owner()
    }

    /// Writes every counter as of monotonic time `t_ns`, by hand (for step-by-step tests with
    /// the thread stopped). Times before `t0` count as `t0`.
    pub fn write_at(&self, t_ns: u64) -> Result<(), Error> {
        self.inner_mut()?.write_at(t_ns)
    }

    /// The times of the writes so far (the latest [`crate::WRITE_TIMES_KEPT`]).
    pub fn write_times(&self) -> Vec<u64> {
        self.peek(|i| i.write_times.iter().copied().collect(), Vec::new())
    }

    /// How many updates have been written since [`Self::new`].
    pub fn write_count(&self) -> u64 {
        self.peek(|i| i.writes, 0)
    }

    /// The last error the writer met, if any (it keeps going).
    pub fn last_error(&self) -> Option<String> {
        self.peek(|i| i.last_error.clone(), None)
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

    /// The exact energy of GPU `index`'s trace between two monotonic instants, joules (its
    /// energy counter lags this by up to one update period). Instants before `t0` count as `t0`.
    pub fn gpu_truth_j(&self, index: usize, t_a: u64, t_b: u64) -> Result<f64, Error> {
        let gpu = self.spec.gpus.get(index).ok_or_else(|| {
            Error::Invalid(format!(
                "the simulated machine has {} GPUs, not one numbered {index}",
                self.spec.gpus.len()
            ))
        })?;
        let t0 = self.t0_ns();
        let wave = gpu.wave;
        Ok(wave.energy_j(t_b.saturating_sub(t0)) - wave.energy_j(t_a.saturating_sub(t0)))
    }

    /// The directory of the GPUs' files (`<root>/nvml`): the state file and the fake library's
    /// configuration; the fake library goes here too, so that it finds its configuration.
    pub fn nvml_dir(&self) -> PathBuf {
        self.spec.root.join("nvml")
    }

    /// The fake library's configuration for this machine's GPUs (also written to
    /// `<root>/nvml/fake_nvml.conf`); `None` without GPUs.
    pub fn nvml_config(&self) -> Option<String> {
        self.peek(|i| i.gpus.as_ref().map(|g| g.config()), None)
    }

    /// The powercap counter value the machine writes for a zone at time `t_ns`, µJ.
    pub fn counter_uj_at(&self, domain: Domain, package: u32, t_ns: u64) -> Result<u64, Error> {
        let i = self.zone_index(domain, package)?;
        let z = &self.spec.zones[i];
        let reset_j = self.peek(|inner| inner.zones[i].reset_j, 0.0);
        let e =
            (z.offset_j + z.wave.energy_j(t_ns.saturating_sub(self.t0_ns())) - reset_j).max(0.0);
        Ok(((e * 1e6).floor() as u64) % z.max_energy_range_uj.saturating_add(1))
    }

    /// The powercap zone directory of a zone (the real directory the class symlink points to).
    pub fn zone_dir(&self, domain: Domain, package: u32) -> Result<PathBuf, Error> {
        let i = self.zone_index(domain, package)?;
        self.peek(|inner| inner.zones[i].dir.clone(), None)
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
        let mut inner = self.inner_mut()?;
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
        let mut inner = self.inner_mut()?;
        inner.zones[i].failing = fail;
        let now = now_ns();
        if self.thread.is_none() {
            // Rewrite at once; the thread is not there to do it.
            inner.write_at(now)?;
        }
        Ok(())
    }

    /// Makes a zone's counters (powercap and MSR) start again from zero now, as a firmware
    /// reset or a driver reload does: a step back that is no wraparound. The truth is
    /// unchanged (the energy was drawn; the counter forgot it).
    pub fn reset_counter(&self, domain: Domain, package: u32) -> Result<(), Error> {
        let i = self.zone_index(domain, package)?;
        let mut inner = self.inner_mut()?;
        let now = now_ns();
        let elapsed = now.saturating_sub(inner.t0);
        let z = &mut inner.zones[i];
        z.reset_j = z.spec.offset_j + z.spec.wave.energy_j(elapsed);
        inner.write_at(now)
    }
}

impl Drop for SimMachine {
    fn drop(&mut self) {
        self.stop();
    }
}
