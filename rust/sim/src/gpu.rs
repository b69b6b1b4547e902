//! Simulated NVIDIA GPUs, published for the fake `libnvidia-ml` (`python/carbonctx/_fakes`).
//!
//! The fake library computes no waveform. The writer thread publishes, for every GPU, what it
//! reports at each tick of [`GPU_TICK_NS`] since `t0` ([`GpuTick`]), in a state file the fake
//! reads with `pread`; a read picks the slot of the tick it falls in. The writer publishes
//! [`LOOKAHEAD_TICKS`] ahead of time (the trace is known in advance), so a reader never waits on
//! a late writer; after the writer stops, readers see the last published tick (the counters stop,
//! as the CPU counters' files keep their last values).
//!
//! # The state file (`<root>/nvml/gpus.state`)
//!
//! Native-endian `u64` words. A 64-byte header: magic [`STATE_MAGIC`], version 1, tick length
//! (ns), `t0` (CLOCK_MONOTONIC ns), number of GPUs, slots per GPU ([`RING_SLOTS`]), the last
//! tick published plus one (0: none), reserved. Then, per GPU, a ring of [`RING_SLOTS`] slots of
//! 64 bytes; tick `k` of GPU `g` lives at slot `k mod RING_SLOTS`: tick plus one (0 while being
//! written), energy counter (mJ), power (mW, what `nvmlDeviceGetPowerUsage` says), instantaneous
//! power (mW, field 186), busy (1 while the wave is in its high part), three reserved words.
//!
//! A slot is written whole (one `pwrite`) before the header's last-tick word (one aligned 8-byte
//! `pwrite`) moves past it, and is rewritten only [`RING_SLOTS`] ticks later, a second after any
//! reader could want it; a reader takes the header's last tick, reads the slot, and reads again
//! when its first word is not that tick plus one.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use carbonctx_sampler::Error;

use crate::spec::SimSpec;
use crate::tree::{create_rw, mkdir};
use crate::wave::SquareWave;

/// The most GPUs the fake library models.
pub const MAX_GPUS: usize = 64;
/// Time resolution of the published trace: 1 ms.
pub const GPU_TICK_NS: u64 = 1_000_000;
/// Slots per GPU in the state file.
pub const RING_SLOTS: u64 = 2048;
/// How far ahead of the present the writer publishes, in ticks (1 s).
pub const LOOKAHEAD_TICKS: u64 = 1000;
/// The first word of the state file.
pub const STATE_MAGIC: u64 = u64::from_le_bytes(*b"CCXGPU01");
/// The state file's name, in `<root>/nvml/`.
pub const STATE_FILE: &str = "gpus.state";
/// The fake library's configuration file, in `<root>/nvml/` next to the library.
pub const CONFIG_FILE: &str = "fake_nvml.conf";

const HEADER_BYTES: u64 = 64;
const SLOT_BYTES: u64 = 64;
const LAST_TICK_WORD: u64 = 6;

/// One simulated GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct SimGpu {
    /// Device name NVML reports.
    pub name: String,
    /// Its power trace.
    pub wave: SquareWave,
    /// Whether it has the total-energy counter (Volta and later); without it, power only.
    pub energy_counter: bool,
    /// The energy counter's value at `t0`, mJ.
    pub base_mj: u64,
}

impl SimGpu {
    /// A GPU named `Simulated GPU` with an energy counter starting at 1000 J.
    pub fn new(wave: SquareWave) -> SimGpu {
        SimGpu {
            name: "Simulated GPU".to_string(),
            wave,
            energy_counter: true,
            base_mj: 1_000_000,
        }
    }
}

/// What a GPU reports during one tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuTick {
    /// Total energy counter, mJ: `base_mj + floor(1000 · energy_j(q))` with `q` the tick's start
    /// rounded down to a multiple of the energy update period.
    pub energy_mj: u64,
    /// Power, mW, at the tick's start rounded down to a multiple of the power update period.
    pub power_mw: u64,
    /// Power at the tick's start, mW.
    pub instant_mw: u64,
    /// Whether the wave is in its high part (never for a constant wave).
    pub busy: bool,
}

fn milliwatts(w: f64) -> u64 {
    (w * 1000.0 + 0.5) as u64
}

/// `t` rounded down to a multiple of `step` (0: `t` itself).
fn round_down(t: u64, step: u64) -> u64 {
    t.checked_div(step).map_or(t, |n| n * step)
}

/// What `gpu` reports during tick `k` (from `k · GPU_TICK_NS` after `t0`).
pub fn gpu_tick(gpu: &SimGpu, k: u64, energy_update_ns: u64, power_update_ns: u64) -> GpuTick {
    let t = k.saturating_mul(GPU_TICK_NS);
    let w = &gpu.wave;
    let energy_j = w.energy_j(round_down(t, energy_update_ns));
    GpuTick {
        energy_mj: gpu.base_mj + (energy_j * 1e3).floor() as u64,
        power_mw: milliwatts(w.power_w(round_down(t, power_update_ns))),
        instant_mw: milliwatts(w.power_w(t)),
        busy: w.period_ns > 0 && w.power_w(t) == w.high_w,
    }
}

/// The published state of a machine's GPUs.
pub(crate) struct GpuFiles {
    file: File,
    path: PathBuf,
    gpus: Vec<SimGpu>,
    energy_update_ns: u64,
    power_update_ns: u64,
    t0: u64,
    /// The first tick not yet published.
    next_tick: u64,
}

fn word(v: u64) -> [u8; 8] {
    v.to_ne_bytes()
}

impl GpuFiles {
    /// Creates `<root>/nvml/gpus.state` (nothing when the spec has no GPU) and publishes the
    /// first [`LOOKAHEAD_TICKS`] ticks.
    pub(crate) fn create(spec: &SimSpec, t0: u64) -> Result<Option<GpuFiles>, Error> {
        if spec.gpus.is_empty() {
            return Ok(None);
        }
        let dir = spec.root.join("nvml");
        mkdir(&dir)?;
        let path = dir.join(STATE_FILE);
        let file = create_rw(&path)?;
        let len = HEADER_BYTES + spec.gpus.len() as u64 * RING_SLOTS * SLOT_BYTES;
        file.set_len(len).map_err(|e| Error::io(&path, e, ""))?;
        let header = [
            STATE_MAGIC,
            1,
            GPU_TICK_NS,
            t0,
            spec.gpus.len() as u64,
            RING_SLOTS,
            0,
            0,
        ];
        let bytes: Vec<u8> = header.iter().flat_map(|w| word(*w)).collect();
        file.write_all_at(&bytes, 0)
            .map_err(|e| Error::io(&path, e, ""))?;
        let mut files = GpuFiles {
            file,
            path,
            gpus: spec.gpus.clone(),
            energy_update_ns: spec.gpu_energy_update_ns,
            power_update_ns: spec.gpu_power_update_ns,
            t0,
            next_tick: 0,
        };
        files
            .publish(t0)
            .map_err(|e| Error::io(&files.path, e, ""))?;
        Ok(Some(files))
    }

    /// The state file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Publishes every tick up to [`LOOKAHEAD_TICKS`] after the one `t` falls in.
    pub(crate) fn publish(&mut self, t: u64) -> io::Result<()> {
        let now_tick = t.saturating_sub(self.t0) / GPU_TICK_NS;
        let upto = now_tick + LOOKAHEAD_TICKS;
        if self.next_tick + (RING_SLOTS - LOOKAHEAD_TICKS) < now_tick {
            // Far behind (the writer was stopped for a while): what was skipped is in the past.
            self.next_tick = now_tick;
        }
        if self.next_tick > upto {
            return Ok(());
        }
        for k in self.next_tick..=upto {
            for (g, gpu) in self.gpus.iter().enumerate() {
                let v = gpu_tick(gpu, k, self.energy_update_ns, self.power_update_ns);
                let at = HEADER_BYTES + (g as u64 * RING_SLOTS + k % RING_SLOTS) * SLOT_BYTES;
                let words = [
                    k + 1,
                    v.energy_mj,
                    v.power_mw,
                    v.instant_mw,
                    u64::from(v.busy),
                    0,
                    0,
                    0,
                ];
                let mut slot = [0u8; SLOT_BYTES as usize];
                for (chunk, w) in slot.chunks_exact_mut(8).zip(words) {
                    chunk.copy_from_slice(&word(w));
                }
                // One write per slot: no reader looks at a slot until the header's last tick
                // has moved past it, which happens after this write.
                self.file.write_all_at(&slot, at)?;
            }
        }
        self.file
            .write_all_at(&word(upto + 1), LAST_TICK_WORD * 8)?;
        self.next_tick = upto + 1;
        Ok(())
    }

    /// The fake library's configuration for these GPUs: `key=value` lines.
    pub(crate) fn config(&self) -> String {
        let mut text = format!(
            "# Written by carbonctx-sim: the GPUs' traces are in the state file.\n\
             devices={}\nt0_ns={}\nstate={}\n",
            self.gpus.len(),
            self.t0,
            self.path.display()
        );
        for (k, g) in self.gpus.iter().enumerate() {
            text.push_str(&format!(
                "gpu{k}.name={}\ngpu{k}.has_energy={}\n",
                g.name,
                u8::from(g.energy_counter)
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_the_wave_with_update_periods() {
        let gpu = SimGpu {
            name: "g".into(),
            wave: SquareWave {
                low_w: 40.0,
                high_w: 120.0,
                period_ns: 50_000_000,
                duty: 0.4,
            },
            energy_counter: true,
            base_mj: 1_000,
        };
        // 25 ms: in the low part; the energy counter last changed at 20 ms (2.4 J).
        let v = gpu_tick(&gpu, 25, 20_000_000, 10_000_000);
        assert_eq!(v.energy_mj, 1_000 + 2_400);
        assert_eq!(v.power_mw, 40_000);
        assert_eq!(v.instant_mw, 40_000);
        assert!(!v.busy);
        // 55 ms: the counter last changed at 40 ms (2.4 J high, then 0.8 J low); power from 50 ms.
        let v = gpu_tick(&gpu, 55, 20_000_000, 10_000_000);
        assert_eq!(v.energy_mj, 1_000 + 3_200);
        assert_eq!(v.power_mw, 120_000);
        assert!(v.busy);
    }

    #[test]
    fn a_constant_wave_reports_its_mean_and_is_never_busy() {
        let gpu = SimGpu::new(SquareWave {
            low_w: 40.0,
            high_w: 120.0,
            period_ns: 0,
            duty: 0.25,
        });
        let v = gpu_tick(&gpu, 1_000, 0, 0);
        assert_eq!(v.power_mw, 60_000);
        assert_eq!(v.instant_mw, 60_000);
        assert_eq!(v.energy_mj, 1_000_000 + 60_000);
        assert!(!v.busy);
    }
}
