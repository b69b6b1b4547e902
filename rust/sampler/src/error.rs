//! Errors of the sampler. Each variant names what failed and says what the user can do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: permission denied. {hint}", path.display())]
    Permission { path: PathBuf, hint: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: cannot parse {what} from {text:?}", path.display())]
    Parse {
        path: PathBuf,
        what: &'static str,
        text: String,
    },

    #[error("NVML {call} failed: {message} (code {code}). {hint}")]
    Nvml {
        call: &'static str,
        code: i32,
        message: String,
        hint: String,
    },

    #[error("{0}")]
    Invalid(String),

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
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
