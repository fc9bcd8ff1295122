//! Rate limits for Python: `Quota`, `Limit` and the `Decision` a check returns.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::time::Duration;

use crate::errors::{IntoPy, invalid};
use crate::seconds;

/// How much a limit allows: a count per period, with a burst (GCRA), or a fixed or sliding
/// window.
#[pyclass(frozen, module = "tollgate")]
#[derive(Clone, Copy)]
pub struct Quota {
    pub(crate) inner: tollgate::ratelimit::Quota,
}

fn window(seconds: f64) -> PyResult<Duration> {
    seconds::duration("a window", seconds, false)
}

#[pymethods]
impl Quota {
    /// ``n`` per second, with a burst of ``n`` (GCRA).
    #[staticmethod]
    fn per_second(n: u32) -> Self {
        Self {
            inner: tollgate::ratelimit::Quota::per_second(n),
        }
    }

    /// ``n`` per minute, with a burst of ``n`` (GCRA).
    #[staticmethod]
    fn per_minute(n: u32) -> Self {
        Self {
            inner: tollgate::ratelimit::Quota::per_minute(n),
        }
    }

    /// ``n`` per hour, with a burst of ``n`` (GCRA).
    #[staticmethod]
    fn per_hour(n: u32) -> Self {
        Self {
            inner: tollgate::ratelimit::Quota::per_hour(n),
        }
    }

    /// ``n`` per ``seconds`` as a GCRA (a smooth rate with a burst of ``n``).
    #[staticmethod]
    fn rate(n: u32, seconds: f64) -> PyResult<Self> {
        Ok(Self {
            inner: tollgate::ratelimit::Quota::new(n, window(seconds)?),
        })
    }

    /// At most ``n`` in each window of ``seconds``, windows aligned to the clock.
    #[staticmethod]
    fn fixed_window(n: u32, seconds: f64) -> PyResult<Self> {
        Ok(Self {
            inner: tollgate::ratelimit::Quota::fixed_window(n, window(seconds)?),
        })
    }

    /// At most ``n`` in any window of ``seconds`` (the previous window weighted).
    #[staticmethod]
    fn sliding_window(n: u32, seconds: f64) -> PyResult<Self> {
        Ok(Self {
            inner: tollgate::ratelimit::Quota::sliding_window(n, window(seconds)?),
        })
    }

    /// The same quota with a burst of ``burst`` (GCRA quotas).
    fn with_burst(&self, burst: u32) -> Self {
        Self {
            inner: self.inner.with_burst(burst),
        }
    }

    /// The count per period.
    #[getter]
    fn count(&self) -> u32 {
        self.inner.count()
    }

    /// The period, in seconds.
    #[getter]
    fn period(&self) -> f64 {
        seconds::float(self.inner.period())
    }

    /// The burst.
    #[getter]
    fn burst(&self) -> u32 {
        self.inner.burst()
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

/// A named limit: its name identifies its counters in the store.
#[pyclass(frozen, module = "tollgate")]
pub struct Limit {
    pub(crate) inner: tollgate::ratelimit::Limit,
}

#[pymethods]
impl Limit {
    /// A limit named ``name`` (letters, digits and ``._:-``) allowing ``quota``.
    ///
    /// Raises ``InvalidArgument`` for an empty or bad name or a zero quota.
    #[new]
    fn new(name: &str, quota: &Quota) -> PyResult<Self> {
        Ok(Self {
            inner: tollgate::ratelimit::Limit::new(name, quota.inner).py()?,
        })
    }

    /// The limit's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The limit's quota.
    #[getter]
    fn quota(&self) -> Quota {
        Quota {
            inner: *self.inner.quota(),
        }
    }

    fn __repr__(&self) -> String {
        format!("Limit({:?}, {:?})", self.inner.name(), self.inner.quota())
    }
}

/// The answer to a rate check.
#[pyclass(frozen, module = "tollgate")]
pub struct Decision {
    pub(crate) inner: tollgate::ratelimit::Decision,
}

#[pymethods]
impl Decision {
    /// Whether the request is allowed (and was charged).
    #[getter]
    fn allowed(&self) -> bool {
        self.inner.allowed()
    }

    /// What is left of the tightest limit after this decision.
    #[getter]
    fn remaining(&self) -> u32 {
        self.inner.remaining()
    }

    /// The tightest limit's count.
    #[getter]
    fn limit(&self) -> u32 {
        self.inner.limit()
    }

    /// Seconds until a denied request could be allowed; ``None`` when allowed.
    #[getter]
    fn retry_after(&self) -> Option<f64> {
        self.inner.retry_after().map(seconds::float)
    }

    /// Seconds until the tightest limit is whole again.
    #[getter]
    fn reset_after(&self) -> f64 {
        seconds::float(self.inner.reset_after())
    }

    /// The name of the limit that decided.
    #[getter]
    fn policy(&self) -> &str {
        self.inner.policy()
    }

    /// The header fields of this decision: ``RateLimit-Policy``, ``RateLimit``,
    /// ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``, ``X-RateLimit-Reset``, and
    /// ``Retry-After`` when denied.
    fn headers(&self) -> Vec<(&'static str, String)> {
        self.inner.headers()
    }

    /// The same fields as ASGI sends them: lowercase names and values as bytes; without
    /// ``Retry-After`` unless ``retry_after`` (an allowed answer, or one shadow mode let through,
    /// carries none); with ``only="ietf"``, only ``RateLimit-Policy`` and ``RateLimit``.
    #[pyo3(signature = (retry_after = true, only = "all"))]
    fn asgi_headers<'py>(
        &self,
        py: Python<'py>,
        retry_after: bool,
        only: &str,
    ) -> PyResult<Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
        let ietf_only = match only {
            "all" => false,
            "ietf" => true,
            other => {
                return Err(invalid(format!(
                    "only is \"all\" or \"ietf\", not {other:?}"
                )));
            }
        };
        Ok(self
            .inner
            .headers()
            .into_iter()
            .filter(|(name, _)| retry_after || *name != "Retry-After")
            .filter(|(name, _)| !ietf_only || name.starts_with("RateLimit"))
            .map(|(name, value)| {
                (
                    PyBytes::new(py, name.to_ascii_lowercase().as_bytes()),
                    PyBytes::new(py, value.as_bytes()),
                )
            })
            .collect())
    }

    fn __bool__(&self) -> bool {
        self.inner.allowed()
    }

    fn __repr__(&self) -> String {
        format!(
            "Decision(allowed={}, remaining={}, limit={}, policy={:?})",
            if self.inner.allowed() {
                "True"
            } else {
                "False"
            },
            self.inner.remaining(),
            self.inner.limit(),
            self.inner.policy()
        )
    }
}
