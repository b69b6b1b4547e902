//! Core errors as the public Python exceptions (`carbonctx.errors`): each variant of
//! `carbonctx_sampler::Error` raises the class a user would catch for it, with its message and
//! its hint.

use std::time::Duration;

use carbonctx_sampler::Error;
use pyo3::prelude::*;

pyo3::import_exception!(carbonctx.errors, ConfigurationError);
pyo3::import_exception!(carbonctx.errors, SamplerError);
pyo3::import_exception!(carbonctx.errors, SourcePermissionError);
pyo3::import_exception!(carbonctx.errors, SourceUnavailableError);

/// A setting or argument that cannot be used (`ConfigurationError`, also a `ValueError`).
pub(crate) fn configuration(message: String) -> PyErr {
    ConfigurationError::new_err(message)
}

/// Seconds as a Duration; a value no Duration holds (negative, NaN, over ~584 years) is a
/// configuration error instead of a panic.
pub(crate) fn seconds(what: &str, secs: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| configuration(format!("{what}: {secs} is not a usable number of seconds")))
}

/// The Python exception for a core error: permission problems as `SourcePermissionError` (also
/// a `PermissionError`), unreadable or vanished sources as `SourceUnavailableError`, bad values
/// as `ConfigurationError`, a thread that could not start as `SamplerError`.
pub(crate) fn from_core(e: Error) -> PyErr {
    let hint = e.hint();
    let message = if e.to_string().contains(hint.as_ref()) {
        e.to_string()
    } else {
        format!("{e}. {hint}")
    };
    match e {
        Error::Permission { .. } => SourcePermissionError::new_err(message),
        Error::Io { .. } | Error::Parse { .. } | Error::Nvml { .. } => {
            SourceUnavailableError::new_err(message)
        }
        Error::Invalid(_) => ConfigurationError::new_err(message),
        Error::Thread(_) => SamplerError::new_err(message),
    }
}
