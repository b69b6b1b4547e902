//! External sources: power that the caller reads elsewhere and pushes in (the node's wall power
//! from its BMC over Redfish, fetched by the Python side every few seconds).
//!
//! A [`Feed`] is the caller's end: [`Feed::push`] hands over the latest reading in watts,
//! [`Feed::fail`] says why there is none. The sampler reads the other end, an
//! [`EnergySource`] made by [`Feed::source`], at its own short interval like any power
//! sensor: each read answers the latest reading (held between the caller's pushes; readings
//! pushed faster than that, one a read, in order) and the sampler integrates it as held (each
//! reading from its instant until the next one's, never re-timed: see [`is_fed`]), so the
//! source's timeline covers every instant up to its last read and regions resolve as promptly
//! as with any other source. A reading older than the feed's `stale` bound is not held any
//! longer: reads fail, and after the sampler's usual failure threshold the source is failed (a
//! gap, never invented energy) until pushes resume.
//!
//! [`Feed::wanted`] tells the caller whether a sampler in this process reads the feed: in a
//! job that shares one sampler per node, only the owner's sampler does, so only the owner's
//! process needs to fetch anything (and takes over fetching when it takes over the node).
//!
//! A reading may say when its power stood ([`Feed::push_at`]: a BMC's own timestamp, or the
//! middle of the window it averages over), in the sampler's clock (CLOCK_MONOTONIC). A feed
//! made with a `lag` ([`Feed::lagged`]) keeps its source's timeline that far behind its
//! reads: each read answers the power that stood `lag` before it (a reading holds from its own
//! instant until the next one's), so a reading that arrives within `lag` of its instant is
//! placed there, not where it arrived. The timeline cannot be revised once it has passed an
//! instant, so a reading that arrives later than that is placed at the earliest instant still
//! open (its read less `lag`) and counted ([`Feed::late`]). An instant in the future is taken
//! as now, one before the previous reading's as that one's, each counted
//! ([`Feed::clamped`]): nothing is refused for its time. The sampler's settling time covers
//! the lag ([`EnergySource::lag`]), so regions resolve once the timeline has passed them,
//! `lag` later than they would without it.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::Error;
use crate::sensors::{EnergySource, Reading, SourceInfo};

/// The backends a fed source goes by (the node's BMC over Redfish: the only one the Python
/// side makes; `external` for a caller of this crate that names none).
pub const BACKENDS: [&str; 2] = ["redfish", "external"];

/// Whether `info` is a fed source's (see [`BACKENDS`]): each reading says the instant it
/// stands for and holds from then until the next one's, so the sampler neither re-times it
/// (no learned hold, no re-read of a slow read: a read takes a pushed reading off the queue)
/// nor samples it at the read, and integrates it as held (see
/// [`crate::timeline::Accumulator::held`]).
pub fn is_fed(info: &SourceInfo) -> bool {
    BACKENDS.contains(&info.backend)
}

/// Readings pushed and not yet reached by the timeline, at most (pushes come every second
/// or more and are placed within `lag`, a few seconds: a handful at a time). Past this, the
/// oldest is dropped (counted late: its instant is passed over).
const MAX_QUEUED: usize = 64;

/// One pushed reading: watts and the instant it stands for (CLOCK_MONOTONIC ns).
#[derive(Clone, Copy, Debug)]
struct Timed {
    watts: f64,
    at_ns: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Readings pushed whose instant the timeline has not reached yet, in order.
    queue: VecDeque<Timed>,
    /// The reading in force at the timeline's end (the latest one placed).
    held: Option<Timed>,
    /// The held reading went stale: the next one is placed at its own instant, as a first.
    afresh: bool,
    /// The instant the last read placed the timeline's end at (0: none yet).
    placed_ns: u64,
    /// The instant of the latest push (readings are kept in order of their instants).
    last_at_ns: u64,
    /// When the latest reading was pushed (0: never): it is stale `stale` after that.
    pushed_ns: u64,
    /// Readings placed later than their instant (they arrived after the timeline passed it).
    late: u64,
    /// Readings whose instant was moved: in the future (taken as now), or before the previous
    /// reading's (taken as that one's).
    clamped: u64,
    /// Why there is no usable reading (the caller's words), if it said.
    error: Option<String>,
    /// Given up for good: every read fails from now on.
    closed: bool,
    /// When a sampler last read the feed (0: never).
    read_ns: u64,
    /// Reads so far.
    reads: u64,
}

impl State {
    fn has_reading(&self) -> bool {
        self.held.is_some() || !self.queue.is_empty()
    }

    /// The power to answer a read at `t_ns` with, and the instant it stands for: the reading
    /// in force `lag_ns` before the read (one newly reached at its own instant, or at the
    /// earliest instant still open where the timeline has passed it); the first reading at
    /// its own instant.
    ///
    /// One reading a read: where several were reached since the last read (pushed faster than
    /// the sampler reads), the oldest is placed and the timeline's end stays at its instant,
    /// so that the next reads place the others at theirs (each held until the next one's: none
    /// is passed over). Readings for one instant: the last pushed stands. Once one is late, the
    /// newest reached stands (the others' instants are passed too).
    fn place(&mut self, t_ns: u64, lag_ns: u64) -> Option<(f64, u64)> {
        let tau = t_ns.saturating_sub(lag_ns);
        let mut newest = None;
        if self.held.is_none() || (self.afresh && !self.queue.is_empty()) {
            self.afresh = false;
            newest = self.queue.pop_front();
        } else if self.queue.front().is_some_and(|r| r.at_ns <= tau) {
            newest = self.queue.pop_front();
        }
        while let (Some(r), Some(next)) = (newest, self.queue.front()) {
            let late = self.placed_ns != 0 && r.at_ns <= self.placed_ns && next.at_ns <= tau;
            if next.at_ns > r.at_ns && !late {
                break;
            }
            newest = self.queue.pop_front();
        }
        match newest {
            Some(r) => {
                let at = if self.placed_ns != 0 && r.at_ns <= self.placed_ns {
                    self.late += 1;
                    tau.max(self.placed_ns)
                } else {
                    r.at_ns.min(t_ns)
                };
                self.held = Some(r);
                self.placed_ns = at;
            }
            None => self.placed_ns = self.placed_ns.max(tau),
        }
        self.held.map(|r| (r.watts, self.placed_ns))
    }
}

#[derive(Debug)]
struct Inner {
    info: SourceInfo,
    stale_ns: u64,
    /// How far behind its reads the source's timeline is kept (see the module's doc).
    lag_ns: u64,
    /// The first read waits for the first push until this instant (the feed's making plus
    /// `first_wait`): a sampler started with the feed waits, one that takes a node over
    /// later does not hold its locks for it.
    first_by_ns: u64,
    state: Mutex<State>,
    changed: Condvar,
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// The caller's end of an external source. Cloning gives another handle to the same feed.
#[derive(Clone, Debug)]
pub struct Feed(Arc<Inner>);

impl Feed {
    /// A feed for the source described by `info` (its `method` should be
    /// [`crate::Method::IntegratedPower`] and `counter` `None`; `interval` is how often the
    /// sampler reads the held value). A reading is held for at most `stale` after its push; a
    /// sampler's first read waits for the first push until `first_wait` after the feed was
    /// made. Its timeline follows its reads (no lag; see [`Feed::lagged`]).
    pub fn new(info: SourceInfo, stale: Duration, first_wait: Duration) -> Feed {
        Feed::lagged(info, stale, first_wait, Duration::ZERO)
    }

    /// As [`Feed::new`], with the source's timeline kept `lag` behind its reads, so that a
    /// reading pushed within `lag` of the instant it stands for is placed at that instant.
    pub fn lagged(info: SourceInfo, stale: Duration, first_wait: Duration, lag: Duration) -> Feed {
        Feed(Arc::new(Inner {
            info,
            stale_ns: nanos(stale),
            lag_ns: nanos(lag),
            first_by_ns: crate::now_ns().saturating_add(nanos(first_wait)),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }))
    }

    pub fn info(&self) -> &SourceInfo {
        &self.0.info
    }

    /// How far behind its reads the source's timeline is kept.
    pub fn lag(&self) -> Duration {
        Duration::from_nanos(self.0.lag_ns)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest reading, in watts, standing for now. A value that is not a finite
    /// non-negative number is refused (the previous reading keeps ageing).
    pub fn push(&self, watts: f64) -> bool {
        self.push_at(watts, None)
    }

    /// The latest reading, in watts, standing for the instant `at_ns` (CLOCK_MONOTONIC ns;
    /// `None`: now). A value that is not a finite non-negative number is refused (false); an
    /// instant in the future is taken as now and one before the previous reading's as that
    /// one's (both counted, see [`Feed::clamped`]).
    pub fn push_at(&self, watts: f64, at_ns: Option<u64>) -> bool {
        if !(watts.is_finite() && watts >= 0.0) {
            return false;
        }
        let now = crate::now_ns();
        let mut st = self.state();
        let mut at = at_ns.unwrap_or(now);
        if at > now || at < st.last_at_ns {
            st.clamped += 1;
            at = at.min(now).max(st.last_at_ns);
        }
        if st.queue.len() >= MAX_QUEUED {
            st.queue.pop_front();
            st.late += 1;
        }
        st.queue.push_back(Timed { watts, at_ns: at });
        st.last_at_ns = at;
        st.pushed_ns = now;
        st.error = None;
        drop(st);
        self.0.changed.notify_all();
        true
    }

    /// Readings placed later than the instant they stand for (they arrived after the
    /// timeline had passed it).
    pub fn late(&self) -> u64 {
        self.state().late
    }

    /// Readings whose instant was moved (in the future, or before the previous reading's).
    pub fn clamped(&self) -> u64 {
        self.state().clamped
    }

    /// No reading could be had: `why` is what reads say while the held one is stale.
    pub fn fail(&self, why: &str) {
        self.state().error = Some(why.to_string());
        self.0.changed.notify_all();
    }

    /// Give up for good: every read fails from now on, with `why`.
    pub fn close(&self, why: &str) {
        let mut st = self.state();
        st.closed = true;
        st.error = Some(why.to_string());
        drop(st);
        self.0.changed.notify_all();
    }

    /// Whether a sampler read the feed within `within`; waits up to `timeout` for one to.
    pub fn wanted(&self, within: Duration, timeout: Duration) -> bool {
        let within_ns = within.as_nanos() as u64;
        let is_wanted =
            |st: &State| st.read_ns != 0 && crate::now_ns().saturating_sub(st.read_ns) <= within_ns;
        let st = self.state();
        if st.closed {
            return false;
        }
        let (st, _) = self
            .0
            .changed
            .wait_timeout_while(st, timeout, |st| !st.closed && !is_wanted(st))
            .unwrap_or_else(|p| p.into_inner());
        !st.closed && is_wanted(&st)
    }

    /// How many times a sampler read the feed.
    pub fn reads(&self) -> u64 {
        self.state().reads
    }

    /// The sampler's end.
    pub fn source(&self) -> Box<dyn EnergySource> {
        Box::new(External {
            feed: self.clone(),
            info: self.0.info.clone(),
        })
    }
}

/// The sampler's end of a [`Feed`].
struct External {
    feed: Feed,
    info: SourceInfo,
}

impl EnergySource for External {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn read(&mut self) -> Result<Reading, Error> {
        let inner = &self.feed.0;
        let mut st = self.feed.state();
        st.read_ns = crate::now_ns();
        st.reads += 1;
        let first = st.reads == 1;
        inner.changed.notify_all();
        let wait = Duration::from_nanos(inner.first_by_ns.saturating_sub(st.read_ns));
        if first && !st.has_reading() && !st.closed && !wait.is_zero() {
            // The first read (the sampler's start) waits a little for the caller's first
            // reading, so that the first region is covered.
            st = inner
                .changed
                .wait_timeout_while(st, wait, |st| {
                    !st.has_reading() && !st.closed && st.error.is_none()
                })
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let why = match &st.error {
            Some(e) if !e.is_empty() => format!(" ({e})"),
            _ => String::new(),
        };
        let label = &self.info.label;
        if st.closed {
            let e = st.error.as_deref().unwrap_or_default();
            return Err(Error::Invalid(format!("{label} stopped: {e}")));
        }
        let now = crate::now_ns();
        let age = now.saturating_sub(st.pushed_ns);
        if st.has_reading() && age > inner.stale_ns {
            // Not held any longer: the next reading starts afresh at its own instant.
            st.afresh = true;
            let s = age as f64 * 1e-9;
            return Err(Error::Invalid(format!(
                "{label}: no new reading for {s:.0} s{why}"
            )));
        }
        match st.place(now, inner.lag_ns) {
            // Without a lag, a reading placed now is the plain held power.
            Some((watts, at)) if at >= now => Ok(Reading::Power(watts)),
            Some((watts, at)) => Ok(Reading::PowerAt {
                watts,
                ago_ns: now - at,
            }),
            None => Err(Error::Invalid(format!("{label}: no reading yet{why}"))),
        }
    }

    fn retry_first_read(&self) -> bool {
        true
    }

    fn lag(&self) -> Duration {
        self.feed.lag()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensors::{Domain, Method};

    fn info() -> SourceInfo {
        SourceInfo {
            id: "redfish:node".into(),
            backend: "redfish",
            domain: Domain::Node,
            index: 0,
            label: "node (BMC, Redfish)".into(),
            method: Method::IntegratedPower,
            counter: None,
            interval: Duration::from_millis(100),
            path: None,
            uuid: None,
        }
    }

    fn watts(r: Reading) -> f64 {
        match r {
            Reading::Power(w) | Reading::PowerAt { watts: w, .. } => w,
            Reading::Counter(_) => panic!("a feed gives power"),
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn instants_out_of_bounds_are_clamped_and_late_readings_counted() {
        let feed = Feed::new(info(), Duration::from_secs(30), Duration::ZERO);
        let mut src = feed.source();
        let t0 = crate::now_ns();
        // In the future: taken as now; before the previous reading: as that one's.
        assert!(feed.push_at(100.0, Some(t0 + 3_600_000 * MS)));
        assert!(feed.push_at(110.0, Some(0)));
        assert_eq!((feed.clamped(), feed.late()), (2, 0));
        match src.read().unwrap() {
            Reading::PowerAt { watts, ago_ns } => {
                assert_eq!(watts, 110.0);
                assert!(ago_ns < 3_600_000 * MS);
            }
            r => assert_eq!(watts(r), 110.0),
        }
        // The timeline is at the read now (no lag): a reading for an instant it has passed
        // is placed at the next read, and counted late.
        let placed = feed.state().placed_ns;
        assert!(feed.push_at(200.0, Some(placed)));
        assert_eq!(src.read().unwrap(), Reading::Power(200.0));
        assert_eq!(feed.late(), 1);
        // A feed that lags holds the previous reading until a timed one's instant comes.
        let lagged = Feed::lagged(info(), Duration::from_secs(30), Duration::ZERO, 10 * SEC);
        let mut src = lagged.source();
        let t = crate::now_ns();
        lagged.push_at(100.0, Some(t - 20_000 * MS));
        assert!(
            matches!(src.read().unwrap(), Reading::PowerAt { watts, ago_ns }
            if watts == 100.0 && ago_ns >= 20_000 * MS)
        );
        lagged.push_at(300.0, Some(t - 5_000 * MS)); // not reached for 5 s
        assert!(
            matches!(src.read().unwrap(), Reading::PowerAt { watts, ago_ns }
            if watts == 100.0 && ago_ns == 10_000 * MS)
        );
        assert_eq!((lagged.late(), lagged.clamped()), (0, 0));
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn readings_pushed_faster_than_the_reads_are_each_placed_at_their_instant() {
        let feed = Feed::new(info(), Duration::from_secs(30), Duration::ZERO);
        let mut src = feed.source();
        let t = crate::now_ns() - 100 * MS;
        feed.push_at(100.0, Some(t));
        // The power a read answers, where it stands counted back from the read's end, and how
        // long the read took (it is that late at most).
        let mut read = || {
            let before = crate::now_ns();
            let r = src.read().unwrap();
            let after = crate::now_ns();
            match r {
                Reading::PowerAt { watts, ago_ns } => (watts, after - ago_ns, after - before),
                r => (watts(r), after, after - before),
            }
        };
        let mut pushes = vec![
            vec![],
            // Three between two reads, two of them for one instant (the last pushed stands):
            // one a read, each at its instant (late by the read's end at most), none passed
            // over.
            vec![(200.0, 10 * MS), (250.0, 20 * MS), (300.0, 20 * MS)],
            vec![],
        ]
        .into_iter();
        for (w, dt) in [(100.0, 0), (200.0, 10 * MS), (300.0, 20 * MS)] {
            for (w, dt) in pushes.next().unwrap() {
                feed.push_at(w, Some(t + dt));
            }
            let (got, placed, took) = read();
            assert_eq!(got, w);
            assert!(
                placed >= t + dt && placed - (t + dt) <= took,
                "{placed} {}",
                t + dt
            );
        }
        // Then held, at the read.
        assert!(matches!(src.read().unwrap(), Reading::Power(w) if w == 300.0));
        assert_eq!((feed.late(), feed.clamped()), (0, 0));
    }

    #[test]
    fn reads_hold_the_latest_push_until_it_is_stale() {
        let feed = Feed::new(info(), Duration::from_millis(200), Duration::ZERO);
        let mut src = feed.source();
        assert!(src.read().is_err(), "nothing pushed yet");
        assert!(feed.push(250.0));
        assert!(!feed.push(f64::NAN));
        assert!(!feed.push(-1.0));
        assert_eq!(watts(src.read().unwrap()), 250.0);
        std::thread::sleep(Duration::from_millis(250));
        feed.fail("HTTP 503");
        let e = src.read().unwrap_err().to_string();
        assert!(
            e.contains("no new reading") && e.contains("HTTP 503"),
            "{e}"
        );
        feed.push(300.0);
        assert_eq!(watts(src.read().unwrap()), 300.0);
        feed.close("credentials refused");
        assert!(src.read().unwrap_err().to_string().contains("refused"));
        assert!(src.retry_first_read());
    }

    #[test]
    fn the_first_read_waits_for_the_first_push_and_marks_the_feed_wanted() {
        let feed = Feed::new(info(), Duration::from_secs(10), Duration::from_secs(20));
        assert!(!feed.wanted(Duration::from_secs(1), Duration::ZERO));
        let pusher = feed.clone();
        let t = std::thread::spawn(move || {
            assert!(pusher.wanted(Duration::from_secs(1), Duration::from_secs(20)));
            pusher.push(123.0);
        });
        let mut src = feed.source();
        assert_eq!(watts(src.read().unwrap()), 123.0);
        t.join().unwrap();
        assert_eq!(feed.reads(), 1);
    }

    #[test]
    fn a_late_first_read_does_not_wait() {
        // A sampler that takes a node over long after the feed was made: no wait.
        let feed = Feed::new(info(), Duration::from_secs(10), Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(150));
        let t = std::time::Instant::now();
        assert!(feed.source().read().is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
