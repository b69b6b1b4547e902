//! The one error type of the core. Each variant names what failed, and [`Error::hint`] says what
//! the user can do about it (the binding maps variants onto the Python exception hierarchy and
//! shows the hint).
//!
//! Where a failure is not an error but a source that cannot be used, discovery reports it as a
//! [`crate::Unavailable`] (with its own reason and hint) instead.

use std::borrow::Cow;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process may not read a counter file or device. `hint` names the remedy that fits the
    /// backend (e.g. `chmod`, `CAP_SYS_RAWIO`, `perf_event_paranoid`).
    #[error("{}: permission denied. {hint}", path.display())]
    Permission { path: PathBuf, hint: String },

    /// Reading a counter file or device failed for another reason.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file held something that is not what the kernel writes there.
    #[error("{}: cannot parse {what} from {text:?}", path.display())]
    Parse {
        path: PathBuf,
        what: &'static str,
        text: String,
    },

    /// An NVML call failed; `hint` is specific to NVML's error code.
    #[error("NVML {call} failed: {message} (code {code}). {hint}")]
    Nvml {
        call: &'static str,
        code: i32,
        message: String,
        hint: String,
    },

    /// An argument or a configuration value is out of range; the message says which and why.
    #[error("{0}")]
    Invalid(String),

    /// The sampler (or simulator) thread could not be started, or ended during start-up.
    #[error("the sampler thread could not be started: {0}")]
    Thread(String),
}

impl Error {
    /// An I/O error on `path`, turned into `Permission` (with `hint`) where that is what it is.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error, hint: &str) -> Error {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            Error::Permission {
                path,
                hint: hint.to_string(),
            }
        } else {
            Error::Io { path, source }
        }
    }

    /// What the user can do about this error, in a sentence (never empty).
    pub fn hint(&self) -> Cow<'_, str> {
        match self {
            Error::Permission { hint, .. } | Error::Nvml { hint, .. } if !hint.is_empty() => {
                Cow::Borrowed(hint)
            }
            Error::Permission { .. } => Cow::Borrowed(
                "give the process read access to the file, or run with the needed privilege",
            ),
            Error::Nvml { .. } => Cow::Borrowed("check that the NVIDIA driver works (nvidia-smi)"),
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Cow::Borrowed(
                    "the file has gone: its driver was unloaded or the device removed; \
                     measuring goes on without it",
                )
            }
            Error::Io { .. } => Cow::Borrowed(
                "check that the file is readable (cat it); a device or driver error shows in \
                 dmesg",
            ),
            Error::Parse { .. } => Cow::Borrowed(
                "the kernel wrote something unexpected; please report it with the file's \
                 content and the kernel version (uname -r)",
            ),
            Error::Invalid(_) => Cow::Borrowed("correct the value the message names"),
            Error::Thread(_) => Cow::Borrowed(
                "the process may be at its thread or memory limit (ulimit -u, ulimit -v); \
                 free some and try again",
            ),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_a_hint() {
        let io = |kind| std::io::Error::new(kind, "x");
        let all = [
            Error::io("/f", io(std::io::ErrorKind::PermissionDenied), "chmod it"),
            Error::io("/f", io(std::io::ErrorKind::PermissionDenied), ""),
            Error::io("/f", io(std::io::ErrorKind::NotFound), ""),
            Error::io("/f", io(std::io::ErrorKind::Other), ""),
            Error::Parse {
                path: "/f".into(),
                what: "a number",
                text: "x".into(),
            },
            Error::Nvml {
                call: "nvmlInit_v2",
                code: 9,
                message: "Driver Not Loaded".into(),
                hint: "load the driver".into(),
            },
            Error::Invalid("bad".into()),
            Error::Thread("no".into()),
        ];
        for e in &all {
            assert!(!e.hint().is_empty(), "{e:?}");
        }
        assert_eq!(all[0].hint(), "chmod it");
        assert!(all[2].hint().contains("gone"));
    }
}
