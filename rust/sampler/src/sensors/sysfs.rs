//! Reading one number from a sysfs attribute file kept open (powercap's `energy_uj`, hwmon's
//! attributes): `pread` from offset 0, parsed, and read again a few times when the text does
//! not parse, because a file rewritten in place (as the simulated machine does) can be caught
//! between two writes; sysfs itself never is. Only a value that stays unparseable costs the wait
//! (yield twice, then sleep `base_us`, 10 × and 100 × that).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use crate::error::Error;

/// How to read one kind of file.
pub(crate) struct NumberFile {
    /// Reads after the first before an unparseable value is reported.
    pub retries: u32,
    /// The first sleep between retries, in µs (after two yields).
    pub base_us: u64,
    /// What the value is, for the parse error (`an integer`).
    pub what: &'static str,
    /// Why an empty file is an error, for the I/O error.
    pub empty: &'static str,
    /// What to do when the read itself fails.
    pub hint: &'static str,
}

impl NumberFile {
    /// Reads `file` (opened from `path`) and parses it with `parse`; values longer than the
    /// 32-byte buffer are taken for a value cut short (no counter or attribute is that long).
    pub(crate) fn read<T>(
        &self,
        file: &File,
        path: &Path,
        parse: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<T, Error> {
        let mut buf = [0u8; 32];
        let mut attempt = 0;
        loop {
            let n = file
                .read_at(&mut buf, 0)
                .map_err(|e| Error::io(path, e, self.hint))?;
            let parsed = if n == 0 || n == buf.len() {
                None
            } else {
                parse(&buf[..n])
            };
            match parsed {
                Some(v) => return Ok(v),
                None if attempt < self.retries => {
                    // Give a writer caught half-way (perhaps preempted there) time to finish.
                    match attempt {
                        0 | 1 => std::thread::yield_now(),
                        k => std::thread::sleep(Duration::from_micros(
                            self.base_us * 10u64.pow(k - 2),
                        )),
                    }
                    attempt += 1;
                }
                None if n == 0 => {
                    return Err(Error::Io {
                        path: path.to_path_buf(),
                        source: io::Error::new(io::ErrorKind::UnexpectedEof, self.empty),
                    })
                }
                None => {
                    return Err(Error::Parse {
                        path: path.to_path_buf(),
                        what: self.what,
                        text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                    })
                }
            }
        }
    }
}
