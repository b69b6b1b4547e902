//! The context variable that holds the innermost open region (`carbonctx.current()`), read and
//! set through CPython's C API: a region follows its thread or asyncio task as the variable does.

use std::ffi::CString;
use std::ptr;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

// The context-variable C API (CPython 3.7 and later, unchanged since). It is left out of the
// limited API's headers but exported by every CPython this package supports; calling the
// ContextVar's Python methods instead would cost a method lookup and call each.
extern "C" {
    fn PyContextVar_New(
        name: *const std::ffi::c_char,
        def: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;
    fn PyContextVar_Get(
        var: *mut ffi::PyObject,
        default_value: *mut ffi::PyObject,
        value: *mut *mut ffi::PyObject,
    ) -> std::ffi::c_int;
    fn PyContextVar_Set(var: *mut ffi::PyObject, value: *mut ffi::PyObject) -> *mut ffi::PyObject;
    fn PyContextVar_Reset(var: *mut ffi::PyObject, token: *mut ffi::PyObject) -> std::ffi::c_int;
}

static CURRENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The context variable that holds the innermost open region (`carbonctx.current()`).
pub(crate) fn current_var(py: Python<'_>) -> PyResult<&'static Py<PyAny>> {
    CURRENT.get_or_try_init(py, || {
        let name = CString::new("carbonctx_region").expect("no NUL in the name");
        // SAFETY: the name is a valid C string and the default is Py_None (borrowed by the
        // call); the new reference is owned by the returned object.
        unsafe {
            let var = PyContextVar_New(name.as_ptr(), ffi::Py_None());
            Bound::from_owned_ptr_or_err(py, var).map(Bound::unbind)
        }
    })
}

pub(crate) fn context_get<'py>(py: Python<'py>, var: &Py<PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let mut out: *mut ffi::PyObject = ptr::null_mut();
    // SAFETY: `var` is a ContextVar (made by `current_var`); on success `out` is a new
    // reference (the default, None, when unset).
    unsafe {
        if PyContextVar_Get(var.as_ptr(), ptr::null_mut(), &mut out) < 0 {
            return Err(PyErr::fetch(py));
        }
        Bound::from_owned_ptr_or_err(py, out)
    }
}

pub(crate) fn context_set<'py>(
    py: Python<'py>,
    var: &Py<PyAny>,
    value: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `var` is a ContextVar; the token returned is a new reference.
    unsafe { Bound::from_owned_ptr_or_err(py, PyContextVar_Set(var.as_ptr(), value.as_ptr())) }
}

/// Resets the variable to where `token` found it. A token made in another context (the region
/// was left in a different task or thread) is ignored, as the Python API would refuse it: then
/// the answer is false (that context still holds the region).
pub(crate) fn context_reset(py: Python<'_>, var: &Py<PyAny>, token: &Py<PyAny>) -> PyResult<bool> {
    // SAFETY: `var` is a ContextVar and `token` one of its tokens.
    if unsafe { PyContextVar_Reset(var.as_ptr(), token.as_ptr()) } < 0 {
        let err = PyErr::fetch(py);
        if !err.is_instance_of::<PyValueError>(py) && !err.is_instance_of::<PyRuntimeError>(py) {
            return Err(err);
        }
        return Ok(false);
    }
    Ok(true)
}
