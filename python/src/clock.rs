//! `tollgate.ManualClock`: a clock that moves only when told, for tests without sleeps.

use pyo3::prelude::*;

use crate::seconds;

/// A clock for tests: time stands still until ``advance`` or ``set`` moves it. Pass it to an
/// opener as ``clock=`` to test lease expiry, takeovers and rate windows without sleeping.
#[pyclass(frozen, module = "tollgate")]
pub struct ManualClock {
    pub(crate) inner: tollgate::ManualClock,
}

#[pymethods]
impl ManualClock {
    /// A clock at ``start`` (float unix seconds; default 1,800,000,000, in 2027).
    #[new]
    #[pyo3(signature = (start = 1_800_000_000.0))]
    fn new(start: f64) -> PyResult<Self> {
        Ok(Self {
            inner: tollgate::ManualClock::new(seconds::from_unix(start)?),
        })
    }

    /// Moves the clock forward by ``seconds``.
    fn advance(&self, seconds: f64) -> PyResult<()> {
        self.inner
            .advance(seconds::duration("advance", seconds, true)?);
        Ok(())
    }

    /// Sets the clock to ``unix_seconds``.
    fn set(&self, unix_seconds: f64) -> PyResult<()> {
        self.inner.set(seconds::from_unix(unix_seconds)?);
        Ok(())
    }

    /// The clock's time, float unix seconds.
    fn now(&self) -> f64 {
        use tollgate::Clock as _;
        seconds::unix(self.inner.now())
    }
}
