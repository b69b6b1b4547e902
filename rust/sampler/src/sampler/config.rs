//! How the sampler runs: poll intervals, timeline size, settling, failure and quiet-mode
//! thresholds. Every field has a working default.

use std::time::Duration;

use crate::sensors::SourceInfo;

/// How the sampler runs. Every field has a working default.
#[derive(Clone, Debug)]
pub struct Config {
    /// Poll interval per backend (`powercap`, `msr`, `perf`, `nvml`, `estimate`); a backend not
    /// listed uses its source's own default.
    pub intervals: Vec<(String, Duration)>,
    /// Points kept per source (memory is fixed: 16 bytes a point).
    pub timeline_capacity: usize,
    /// A source whose counter shows no change for this long after a mark is taken to have been
    /// idle: the mark resolves with the last value. At least ten poll intervals are used.
    pub settle: Duration,
    /// A source counts as failed after this many consecutive read errors spanning at least
    /// `fail_time` (a single bad read, or a short stall of whatever updates it, is retried).
    pub fail_after: u32,
    pub fail_time: Duration,
    /// Learn when each counter updates and poll just after (see [`crate::sampler::phase`]); when off,
    /// counters are polled at their fixed interval.
    pub phase_lock: bool,
    /// While no region mark has come for `fast_hold`, phase-locked counters are read about this
    /// often instead of at every update (the phase and period are kept, so the first mark after
    /// a quiet spell is timed as precisely as any; the mark wakes the thread, which reads every
    /// counter at once). Zero: always read every update. Read sparsely while regions are marked
    /// (`fast_reads` off, `predict_marks`), counters are read at most 20 ms apart.
    pub quiet_interval: Duration,
    pub fast_hold: Duration,
    /// Read counters at region marks (within a budget of about 1 % of a core; see
    /// `sampler::marks`): a counter that updates more finely than it is polled at each mark, and
    /// (unless `fast_reads`) a phase-locked one at the mark and just after its next update.
    pub mark_reads: bool,
    /// While regions are being marked, read phase-locked counters at every update (the
    /// default; a counter whose read costs more than 1 % of a core at that rate and whose
    /// updates the source's power samples place is read in pairs around one update in several
    /// instead, see `sampler::costly`). Off: read them every quiet interval and at each mark (a read at the mark and
    /// one just after the counter's next update bracket it), at a quarter of the CPU with
    /// 20 ms regions; a machine that wakes the thread late sends it back to every update for
    /// a while. Its worst single regions are worse on a loaded machine (see
    /// `benches/results/marks.md`), so it is not the default.
    pub fast_reads: bool,
    /// While regions are being marked at a steady, repeating pattern (training steps), read
    /// phase-locked counters every quiet interval and at every update only around each
    /// predicted mark (see `sampler::predict`); marks with no steady pattern are read as
    /// `fast_reads` says. Off by default: with every core busy its worst single regions were
    /// not always as good as reading every update (see `benches/results/sampler-predict.md`).
    pub predict_marks: bool,
    /// How often a failed source is tried again.
    pub retry: Duration,
    /// Resolved regions kept for the caller to drain; beyond it the newest of a pass are
    /// dropped and counted in [`crate::Stats::dropped_regions`]. Regions wait as marks while
    /// more than [`crate::sampler::BACKLOG_HIGH`] rows are undrained, and a pass resolves at
    /// most two marks a row of room, so only a cap below three times that mark ever drops.
    /// A caller that never drains therefore keeps every mark it makes (memory grows with
    /// them, as with spans) rather than losing regions it may still drain.
    pub max_resolved: usize,
    /// Place each counter update's energy in time by the device's finer timed power samples,
    /// where a source offers them ([`crate::sensors::EnergySource::shape`]: NVML's 20 ms power
    /// samples); when off, energy is spread evenly between counter updates.
    pub power_samples: bool,
    /// While regions are open or marked, a source that reports power sampled at the read (a GPU
    /// without an energy counter) is read about this often, at random instants, within a
    /// budget of CPU time (see `sampler::power`); zero: at its interval.
    pub power_interval: Duration,
    /// Share of one core that the reads of each such source may take while regions are open
    /// or marked (the read, and a wake-up of its own when it cannot share one); its slots are
    /// lengthened to keep within it (see `sampler::power`).
    pub power_share: f64,
    /// Run the sampler thread in the real-time class (SCHED_FIFO 1) where the process may,
    /// else at nice 10 below its own; off: only the latter (see `sampler::priority`). What it
    /// got is [`crate::Sampler::scheduling`].
    pub realtime: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            intervals: Vec::new(),
            timeline_capacity: 1 << 16,
            settle: Duration::from_millis(100),
            fail_after: 5,
            fail_time: Duration::from_millis(250),
            phase_lock: true,
            quiet_interval: Duration::from_millis(50),
            fast_hold: Duration::from_secs(2),
            mark_reads: true,
            fast_reads: true,
            predict_marks: false,
            retry: Duration::from_secs(1),
            max_resolved: 1 << 20,
            power_samples: true,
            power_interval: Duration::from_millis(1),
            power_share: 0.003,
            realtime: true,
        }
    }
}

/// The poll interval for a source: its backend's entry in [`Config::intervals`], else the
/// source's own default; never below 50 µs.
pub(crate) fn interval_for(info: &SourceInfo, config: &Config) -> Duration {
    config
        .intervals
        .iter()
        .find(|(b, _)| b == info.backend)
        .map(|(_, d)| *d)
        .unwrap_or(info.interval)
        .max(Duration::from_micros(50))
}
