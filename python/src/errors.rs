//! tollgate's errors as Python exceptions: one class per variant, defined in
//! `tollgate/_errors.py` (so that `InvalidArgument` is also a `ValueError`) and looked up once.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use tollgate::Error;

/// The Python class name of the exception raised for `error`.
pub(crate) fn class_name(error: &Error) -> &'static str {
    match error {
        Error::LeaseLost => "LeaseLost",
        Error::ResponseTooLarge { .. } => "ResponseTooLarge",
        Error::CapacityExceeded { .. } => "CapacityExceeded",
        Error::CostTooLarge { .. } => "CostTooLarge",
        Error::InvalidKey(_) | Error::InvalidArgument(_) => "InvalidArgument",
        Error::Poisoned | Error::Storage(_) => "StorageError",
        Error::StorageFull { .. } => "StorageFull",
        Error::ReadOnly { .. } => "ReadOnly",
        Error::Closed => "Closed",
        Error::IncompatibleFormat { .. } => "IncompatibleFormat",
        Error::NotAStore(_) | Error::Corrupted(_) => "Corrupted",
        Error::AlreadyOpen => "AlreadyOpen",
        Error::Superseded => "Superseded",
        Error::Unavailable(_) => "Unavailable",
        Error::InDoubt(_) => "InDoubt",
        _ => "InternalError",
    }
}

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The exception class `name` of `tollgate._errors`.
pub(crate) fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    let module = ERRORS.get_or_try_init(py, || py.import("tollgate._errors").map(Bound::unbind))?;
    Ok(module.bind(py).getattr(name)?.cast_into::<PyType>()?)
}

/// The Python exception for `error`, its message the error's own.
pub(crate) fn to_py(error: &Error) -> PyErr {
    named(class_name(error), error.to_string())
}

/// The exception class `name` of `tollgate._errors` with `message`.
pub(crate) fn named(name: &str, message: String) -> PyErr {
    Python::attach(|py| match class(py, name) {
        Ok(class) => PyErr::from_type(class, message),
        Err(lookup) => lookup,
    })
}

/// `Result` of tollgate into `PyResult`.
pub(crate) trait IntoPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for tollgate::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(|error| to_py(&error))
    }
}

/// An `InvalidArgument` raised by the binding itself (a bad keyword value).
pub(crate) fn invalid(message: impl Into<String>) -> PyErr {
    to_py(&Error::InvalidArgument(message.into()))
}
