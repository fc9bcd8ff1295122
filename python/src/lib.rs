//! `tollgate._native`: tollgate's store, leases and rate limits for Python.
//!
//! The binding only translates: Python values into tollgate's types, tollgate's errors into
//! Python exceptions (`errors`), and every call that may wait on an fsync, a database or the
//! store's owner process runs with the GIL released (`Python::detach`). The answers memory can
//! give (`try_begin`, `try_check_all`) keep the GIL: they never wait.
//!
//! The Python package `tollgate` (beside this crate) re-exports these classes and adds the ASGI
//! and WSGI middlewares.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use pyo3::prelude::*;
use pyo3::types::PyDict;

mod asgi;
mod bridge;
mod clock;
mod errors;
mod idempotency;
mod ratelimit;
mod seconds;
mod store;

/// Forks of this process made through `os.fork` (counted in each child), once the hook is in.
static FORKS: AtomicU64 = AtomicU64::new(0);
static FORK_HOOK: AtomicBool = AtomicBool::new(false);

/// How many forks this process comes from (each counted in the child by `os.register_at_fork`),
/// or `None` where Python has no such hook (then callers compare process ids instead).
pub(crate) fn fork_count() -> Option<u64> {
    FORK_HOOK
        .load(Ordering::Acquire)
        .then(|| FORKS.load(Ordering::Acquire))
}

/// Run by `os.fork` in the child.
#[pyfunction]
fn _after_fork_in_child() {
    FORKS.fetch_add(1, Ordering::AcqRel);
}

/// The native module. Its classes are re-exported by the `tollgate` package.
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    if let Ok(register) = py.import("os")?.getattr("register_at_fork") {
        let hook = wrap_pyfunction!(_after_fork_in_child, module)?;
        let keywords = PyDict::new(py);
        keywords.set_item("after_in_child", hook)?;
        register.call((), Some(&keywords))?;
        FORK_HOOK.store(true, Ordering::Release);
    }
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // What the middlewares never store, and the header a replay carries: the tower layer's.
    module.add("HOP_BY_HOP", tollgate::tower::HOP_BY_HOP.to_vec())?;
    module.add("IDEMPOTENT_REPLAYED", tollgate::tower::IDEMPOTENT_REPLAYED)?;
    module.add("GLOBAL_SUBJECT", tollgate::tower::GLOBAL_SUBJECT)?;
    module.add_class::<store::Store>()?;
    module.add_class::<asgi::RateLimitCore>()?;
    module.add_class::<asgi::SendWithFields>()?;
    module.add_class::<bridge::Bridge>()?;
    module.add_class::<store::Stats>()?;
    module.add_class::<clock::ManualClock>()?;
    module.add_class::<idempotency::Acquired>()?;
    module.add_class::<idempotency::Replay>()?;
    module.add_class::<idempotency::InFlight>()?;
    module.add_class::<idempotency::Mismatch>()?;
    module.add_class::<idempotency::Lease>()?;
    module.add_class::<ratelimit::Quota>()?;
    module.add_class::<ratelimit::Limit>()?;
    module.add_class::<ratelimit::Decision>()?;
    module.add_function(wrap_pyfunction!(idempotency::fingerprint, module)?)?;
    module.add_function(wrap_pyfunction!(
        idempotency::parse_idempotency_key,
        module
    )?)?;
    module.add_function(wrap_pyfunction!(raise_for_test, module)?)?;
    Ok(())
}

/// Raises the exception a tollgate error of `kind` is raised as, through the one mapping every
/// call uses (for the tests of errors a test cannot provoke, such as a commit cut half-way).
#[pyfunction]
fn raise_for_test(kind: &str) -> PyResult<()> {
    use tollgate::Error;
    let error = match kind {
        "InDoubt" => Error::InDoubt("the connection broke during the commit".into()),
        "Unavailable" => Error::Unavailable("the database did not answer".into()),
        "StorageFull" => Error::StorageFull {
            path: "/var/lib/app/store.redb".into(),
        },
        "Corrupted" => Error::Corrupted("a record that cannot be decoded".into()),
        "NotAStore" => Error::NotAStore("a file of another program".into()),
        "CapacityExceeded" => Error::CapacityExceeded { limit: 10 },
        "Poisoned" => Error::Poisoned,
        "Superseded" => Error::Superseded,
        "Internal" => Error::Internal("a broken rule".into()),
        other => return Err(errors::invalid(format!("no test error named {other:?}"))),
    };
    Err(errors::to_py(&error))
}
