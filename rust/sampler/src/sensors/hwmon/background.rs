//! Meters whose reads can block, read on a thread of their own.
//!
//! An ACPI power meter is evaluated by the firmware when its value is older than the meter's
//! sampling time; on some servers that goes through the BMC and takes tens to hundreds of
//! milliseconds. The sampler thread must not wait for it (it polls RAPL every millisecond), so
//! such a file is read every `period` by a small named thread, and [`Background::latest`]
//! returns the last value at once. A value older than ten periods (at least 5 s) is an error
//! (the meter stopped answering), so that a stuck meter is reported instead of repeated.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::read::Attr;
use crate::error::Error;

/// What the reader thread last saw.
#[derive(Debug)]
struct Latest {
    value: i64,
    at: Instant,
    error: Option<String>,
}

/// A file read every `period` on its own thread.
#[derive(Debug)]
pub(super) struct Background {
    latest: Arc<Mutex<Latest>>,
    stop: Arc<AtomicBool>,
    path: PathBuf,
    stale_after: Duration,
}

impl Background {
    /// Starts reading `attr` (whose first value, `value`, was read just now) every `period`.
    /// An error when no thread can be started (the caller then reads the file itself).
    pub(super) fn start(
        mut attr: Attr,
        value: i64,
        period: Duration,
        name: &str,
    ) -> Result<Background, Error> {
        let path = attr.path().to_path_buf();
        let latest = Arc::new(Mutex::new(Latest {
            value,
            at: Instant::now(),
            error: None,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (Arc::clone(&latest), Arc::clone(&stop));
        // Linux keeps 15 bytes of a thread's name.
        let thread_name: String = format!("cc-hwmon-{name}").chars().take(15).collect();
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(period);
                    if s.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = attr.read();
                    let mut latest = l.lock().unwrap_or_else(PoisonError::into_inner);
                    match r {
                        Ok(v) => {
                            *latest = Latest {
                                value: v,
                                at: Instant::now(),
                                error: None,
                            }
                        }
                        Err(e) => latest.error = Some(e.to_string()),
                    }
                }
            })
            .map_err(|e| Error::Thread(format!("a reader for {}: {e}", path.display())))?;
        Ok(Background {
            latest,
            stop,
            path,
            stale_after: (period * 10).max(Duration::from_secs(5)),
        })
    }

    /// The reader thread's last value, or why there is none.
    pub(super) fn latest(&self) -> Result<i64, Error> {
        let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        let age = latest.at.elapsed();
        if age > self.stale_after {
            let why = latest
                .error
                .clone()
                .unwrap_or_else(|| "a read has not returned".into());
            return Err(Error::Io {
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the meter has not given a value for {:.1} s ({why})",
                        age.as_secs_f64()
                    ),
                ),
            });
        }
        Ok(latest.value)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // The thread ends after its current sleep or read; it is not waited for, since a read
        // stuck in firmware must not hold up whoever drops the source.
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `f` until it holds, for at most 10 s (a bound, not a timing assertion).
    fn eventually(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn follows_the_file_and_reports_a_meter_that_stops_answering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("power1_average");
        std::fs::write(&path, "1000000\n").unwrap();
        let (attr, v) = Attr::open(&path).unwrap();
        let mut b = Background::start(attr, v, Duration::from_millis(10), "test").unwrap();
        assert_eq!(b.stale_after, Duration::from_secs(5));
        assert_eq!(b.latest().unwrap(), 1_000_000);
        std::fs::write(&path, "2500000\n").unwrap();
        assert!(eventually(|| b.latest().ok() == Some(2_500_000)));
        // The file stops reading as a number: the last value stands until it is stale.
        b.stale_after = Duration::from_millis(200);
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(eventually(|| b.latest().is_err()));
        let err = b.latest().unwrap_err().to_string();
        assert!(err.contains("has not given a value"), "{err}");
        assert!(err.contains("garbage"), "{err}");
    }
}
