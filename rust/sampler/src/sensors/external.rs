//! External sources: power that the caller reads elsewhere and pushes in (the node's wall power
//! from its BMC over Redfish, fetched by the Python side every few seconds).
//!
//! A [`Feed`] is the caller's end: [`Feed::push`] hands over the latest reading in watts,
//! [`Feed::fail`] says why there is none. The sampler reads the other end, an
//! [`EnergySource`] made by [`Feed::source`], at its own short interval like any power
//! sensor: each read answers the latest reading (held between the caller's pushes) and the
//! sampler integrates it, so the source's timeline covers every instant up to its last read
//! and regions resolve as promptly as with any other source. A reading older than the
//! feed's `stale` bound is not held any longer: reads fail, and after the sampler's usual
//! failure threshold the source is failed (a gap, never invented energy) until pushes resume.
//!
//! [`Feed::wanted`] tells the caller whether a sampler in this process reads the feed: in a
//! job that shares one sampler per node, only the owner's sampler does, so only the owner's
//! process needs to fetch anything (and takes over fetching when it takes over the node).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::Error;
use crate::sensors::{EnergySource, Reading, SourceInfo};

#[derive(Debug, Default)]
struct State {
    /// The latest reading (watts) and when it was pushed (CLOCK_MONOTONIC ns).
    watts: Option<(f64, u64)>,
    /// Why there is no usable reading (the caller's words), if it said.
    error: Option<String>,
    /// Given up for good: every read fails from now on.
    closed: bool,
    /// When a sampler last read the feed (0: never).
    read_ns: u64,
    /// Reads so far.
    reads: u64,
}

#[derive(Debug)]
struct Inner {
    info: SourceInfo,
    stale_ns: u64,
    /// The first read waits for the first push until this instant (the feed's making plus
    /// `first_wait`): a sampler started with the feed waits, one that takes a node over
    /// later does not hold its locks for it.
    first_by_ns: u64,
    state: Mutex<State>,
    changed: Condvar,
}

/// The caller's end of an external source. Cloning gives another handle to the same feed.
#[derive(Clone, Debug)]
pub struct Feed(Arc<Inner>);

impl Feed {
    /// A feed for the source described by `info` (its `method` should be
    /// [`crate::Method::IntegratedPower`] and `counter` `None`; `interval` is how often the
    /// sampler reads the held value). A reading is held for at most `stale`; a sampler's
    /// first read waits for the first push until `first_wait` after the feed was made.
    pub fn new(info: SourceInfo, stale: Duration, first_wait: Duration) -> Feed {
        Feed(Arc::new(Inner {
            info,
            stale_ns: stale.as_nanos().min(u128::from(u64::MAX)) as u64,
            first_by_ns: crate::now_ns()
                .saturating_add(first_wait.as_nanos().min(u128::from(u64::MAX)) as u64),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }))
    }

    pub fn info(&self) -> &SourceInfo {
        &self.0.info
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The latest reading, in watts, taken now. A value that is not a finite non-negative
    /// number is refused (the previous reading keeps ageing).
    pub fn push(&self, watts: f64) -> bool {
        if !(watts.is_finite() && watts >= 0.0) {
            return false;
        }
        let mut st = self.state();
        st.watts = Some((watts, crate::now_ns()));
        st.error = None;
        drop(st);
        self.0.changed.notify_all();
        true
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
        if first && st.watts.is_none() && !st.closed && !wait.is_zero() {
            // The first read (the sampler's start) waits a little for the caller's first
            // reading, so that the first region is covered.
            st = inner
                .changed
                .wait_timeout_while(st, wait, |st| {
                    st.watts.is_none() && !st.closed && st.error.is_none()
                })
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let why = || st.error.clone().unwrap_or_default();
        if st.closed {
            return Err(Error::Invalid(format!(
                "{} stopped: {}",
                self.info.label,
                why()
            )));
        }
        match st.watts {
            Some((w, at)) if crate::now_ns().saturating_sub(at) <= inner.stale_ns => {
                Ok(Reading::Power(w))
            }
            Some((_, at)) => Err(Error::Invalid(format!(
                "{}: no new reading for {:.0} s{}",
                self.info.label,
                crate::now_ns().saturating_sub(at) as f64 * 1e-9,
                match why() {
                    e if e.is_empty() => String::new(),
                    e => format!(" ({e})"),
                }
            ))),
            None => Err(Error::Invalid(format!(
                "{}: no reading yet{}",
                self.info.label,
                match why() {
                    e if e.is_empty() => String::new(),
                    e => format!(" ({e})"),
                }
            ))),
        }
    }

    fn retry_first_read(&self) -> bool {
        true
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

    #[test]
    fn reads_hold_the_latest_push_until_it_is_stale() {
        let feed = Feed::new(info(), Duration::from_millis(200), Duration::ZERO);
        let mut src = feed.source();
        assert!(src.read().is_err(), "nothing pushed yet");
        assert!(feed.push(250.0));
        assert!(!feed.push(f64::NAN));
        assert!(!feed.push(-1.0));
        assert_eq!(src.read().unwrap(), Reading::Power(250.0));
        std::thread::sleep(Duration::from_millis(250));
        feed.fail("HTTP 503");
        let e = src.read().unwrap_err().to_string();
        assert!(
            e.contains("no new reading") && e.contains("HTTP 503"),
            "{e}"
        );
        feed.push(300.0);
        assert_eq!(src.read().unwrap(), Reading::Power(300.0));
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
        assert_eq!(src.read().unwrap(), Reading::Power(123.0));
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
