//! The writer thread: at every update it writes each zone's counter (powercap `energy_uj` and
//! MSRs) and each GPU's published state, all from the one wave definition.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use carbonctx_sampler::{msr, now_ns, Error};

use crate::gpu::GpuFiles;
use crate::spec::SimZone;

/// How many write times are kept (the oldest are dropped first): about 17 minutes at 1 kHz.
pub const WRITE_TIMES_KEPT: usize = 1 << 20;

/// A zone's files and state inside the running simulation.
pub(crate) struct ZoneState {
    pub(crate) spec: SimZone,
    /// Zone directory (the real one, not the symlink) and the symlink, when powercap is on.
    pub(crate) dir: Option<PathBuf>,
    pub(crate) link: Option<PathBuf>,
    pub(crate) energy: Option<File>,
    pub(crate) width: usize,
    pub(crate) wrap_uj: u64,
    pub(crate) msr_address: u64,
    pub(crate) msr_unit_j: f64,
    pub(crate) msr_cpus: Vec<usize>,
    pub(crate) removed: bool,
    pub(crate) failing: bool,
    /// Joules the counters lost to resets (they start again from zero at a reset).
    pub(crate) reset_j: f64,
    /// What `energy_uj` holds: `Some(Some(µJ))`, `Some(None)` for the failing text, `None`
    /// before the first write. Unchanged content is not rewritten.
    pub(crate) written: Option<Option<u64>>,
}

pub(crate) struct Inner {
    pub(crate) t0: u64,
    pub(crate) zones: Vec<ZoneState>,
    pub(crate) msr_files: Vec<File>,
    pub(crate) write_times: VecDeque<u64>,
    pub(crate) writes: u64,
    pub(crate) last_error: Option<String>,
    /// The GPUs' published state, when the machine has GPUs.
    pub(crate) gpus: Option<GpuFiles>,
}

impl Inner {
    pub(crate) fn write_at(&mut self, t: u64) -> Result<(), Error> {
        let elapsed = t.saturating_sub(self.t0);
        let mut first_err = None;
        for z in &mut self.zones {
            let e = (z.spec.offset_j + z.spec.wave.energy_j(elapsed) - z.reset_j).max(0.0);
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
        if let Some(g) = &mut self.gpus {
            if let Err(err) = g.publish(t) {
                first_err.get_or_insert_with(|| Error::io(g.path(), err, ""));
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
/// The reader reads again when a value does not parse ([`carbonctx_sampler::powercap::PARSE_RETRIES`]).
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

pub(crate) struct Shared {
    pub(crate) inner: Mutex<Inner>,
    pub(crate) stop: Mutex<bool>,
    pub(crate) wake: Condvar,
}

pub(crate) fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // A panic while holding the lock cannot leave the state inconsistent in a way that matters
    // for a simulation, so a poisoned lock is simply taken over.
    m.lock().unwrap_or_else(|p| p.into_inner())
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

/// The writer thread: update at absolute deadlines until told to stop.
pub(crate) fn writer(shared: &Shared, period_ns: u64) {
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
}
