//! Idempotency for Python: `fingerprint`, what `begin` answers (`Acquired`, `Replay`,
//! `InFlight`, `Mismatch`) and the `Lease` to execute under.
//!
//! A `Lease` holds tollgate's lease behind a mutex, taken inside `detach` (never while holding
//! the GIL): a keep-alive thread's `extend` and the handler's `complete` wait for each other, as
//! the tower layer's lease slot does. Resolving a lease (`complete`, `fail`, `release`) takes it
//! out; a second resolution raises `InvalidArgument`.

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use tollgate::Error;
use tollgate::idempotency::{Begin, Fingerprint, Outcome, StoredResponse};

use crate::errors::{invalid, to_py};
use crate::seconds;

/// The request's fingerprint: a SHA-256 over the method, the path (with its query as sent), the
/// query pairs, the header fields that are part of the request's meaning, and the body, each
/// length-prefixed so that no two different requests share one. Returns 32 bytes.
#[pyfunction]
#[pyo3(signature = (body = b"".as_slice(), method = "", path = "", query = Vec::new(), headers = Vec::new()))]
pub fn fingerprint<'py>(
    py: Python<'py>,
    body: &[u8],
    method: &str,
    path: &str,
    query: Vec<(String, String)>,
    headers: Vec<(String, HeaderValue)>,
) -> Bound<'py, PyBytes> {
    let mut request = Fingerprint::request().method(method).path(path);
    for (name, value) in &query {
        request = request.query(name, value);
    }
    for (name, value) in &headers {
        request = request.header(&name.to_ascii_lowercase(), &value.0);
    }
    PyBytes::new(py, request.body(body).finish().as_bytes())
}

/// The `Idempotency-Key` sent with a request, from the values of its header field (`values`,
/// each as sent): `None` when there is none, the key when it is an RFC 8941 string or a bare
/// token, `InvalidArgument` with the reason when it is malformed or sent twice.
#[pyfunction]
pub fn parse_idempotency_key(values: Vec<HeaderValue>) -> PyResult<Option<String>> {
    let values: Vec<&[u8]> = values.iter().map(|value| value.0.as_slice()).collect();
    tollgate::tower::parse_idempotency_key(&values).map_err(invalid)
}

/// A header field value: `str` (Latin-1, as WSGI and the HTTP spec give it) or `bytes`.
pub struct HeaderValue(pub Vec<u8>);

impl<'a, 'py> FromPyObject<'a, 'py> for HeaderValue {
    type Error = PyErr;

    fn extract(value: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(bytes) = value.cast::<PyBytes>() {
            return Ok(Self(bytes.as_bytes().to_vec()));
        }
        let text: String = value.extract()?;
        text.chars()
            .map(|c| u8::try_from(u32::from(c)).ok())
            .collect::<Option<Vec<u8>>>()
            .map(Self)
            .ok_or_else(|| invalid(format!("header value {text:?} is not Latin-1")))
    }
}

/// The fingerprint given to `begin`: 32 bytes.
pub(crate) fn fingerprint_arg(bytes: &[u8]) -> PyResult<Fingerprint> {
    let array: [u8; 32] = bytes.try_into().map_err(|_| {
        invalid(format!(
            "a fingerprint is 32 bytes (from tollgate.fingerprint), not {}",
            bytes.len()
        ))
    })?;
    Ok(Fingerprint::from_bytes(array))
}

/// The answer to `begin`, as the Python object.
pub(crate) fn to_python(py: Python<'_>, begin: Begin) -> PyResult<Py<PyAny>> {
    Ok(match begin {
        Begin::Acquired(lease) => Acquired {
            lease: Py::new(py, Lease::new(lease))?,
        }
        .into_pyobject(py)?
        .into_any()
        .unbind(),
        Begin::Replay(replay) => {
            let failed = replay.outcome() == Outcome::Failed;
            Replay {
                response: replay.into_response(),
                failed,
            }
            .into_pyobject(py)?
            .into_any()
            .unbind()
        }
        Begin::InFlight { retry_after } => InFlight {
            retry_after: seconds::float(retry_after),
        }
        .into_pyobject(py)?
        .into_any()
        .unbind(),
        Begin::Mismatch => Mismatch.into_pyobject(py)?.into_any().unbind(),
        // `Begin` may grow: an answer this binding does not know is a bug to report.
        #[allow(unreachable_patterns)]
        _ => return Err(to_py(&Error::Internal("an unknown begin answer".into()))),
    })
}

/// This caller owns the key: execute the request, then resolve ``lease``.
#[pyclass(frozen, module = "tollgate")]
pub struct Acquired {
    lease: Py<Lease>,
}

#[pymethods]
impl Acquired {
    /// The lease to execute under.
    #[getter]
    fn lease(&self, py: Python<'_>) -> Py<Lease> {
        self.lease.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        let lease = self.lease.get();
        format!(
            "Acquired(lease=Lease(token={}, recovered={}))",
            lease.token,
            if lease.recovered { "True" } else { "False" }
        )
    }
}

/// The request already finished: send its stored response again.
#[pyclass(frozen, module = "tollgate")]
pub struct Replay {
    response: StoredResponse,
    failed: bool,
}

#[pymethods]
impl Replay {
    /// The stored status code.
    #[getter]
    fn status(&self) -> u16 {
        self.response.status
    }

    /// The stored header fields, values as Latin-1 text.
    #[getter]
    fn headers(&self) -> Vec<(String, String)> {
        self.response
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.iter().map(|&b| char::from(b)).collect()))
            .collect()
    }

    /// The stored header fields as bytes (as ASGI sends them).
    #[getter]
    fn raw_headers<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        self.response
            .headers
            .iter()
            .map(|(name, value)| {
                PyTuple::new(
                    py,
                    [PyBytes::new(py, name.as_bytes()), PyBytes::new(py, value)],
                )
            })
            .collect()
    }

    /// The stored body.
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.response.body)
    }

    /// Whether the request was recorded with ``lease.fail`` rather than ``lease.complete``.
    #[getter]
    fn failed(&self) -> bool {
        self.failed
    }

    fn __repr__(&self) -> String {
        format!(
            "Replay(status={}, failed={}, body=<{} bytes>)",
            self.response.status,
            if self.failed { "True" } else { "False" },
            self.response.body.len()
        )
    }
}

/// Another caller holds a live lease on this key: retry after ``retry_after`` seconds, or begin
/// with ``wait=``.
#[pyclass(frozen, module = "tollgate")]
pub struct InFlight {
    retry_after: f64,
}

#[pymethods]
impl InFlight {
    /// Seconds until the current lease expires (> 0).
    #[getter]
    fn retry_after(&self) -> f64 {
        self.retry_after
    }

    fn __repr__(&self) -> String {
        format!("InFlight(retry_after={})", self.retry_after)
    }
}

/// The key was used before for a different request (another fingerprint).
#[pyclass(frozen, module = "tollgate")]
pub struct Mismatch;

#[pymethods]
impl Mismatch {
    fn __repr__(&self) -> &'static str {
        "Mismatch()"
    }
}

/// The exclusive, fenced right to execute one request. Every method that changes the record
/// returns once the change is durable; a lease whose key was taken over raises ``LeaseLost``.
#[pyclass(frozen, module = "tollgate")]
pub struct Lease {
    token: u64,
    attempt: u32,
    recovered: bool,
    checkpoint: Option<(String, Vec<u8>)>,
    state: Mutex<LeaseState>,
}

struct LeaseState {
    lease: Option<tollgate::idempotency::Lease>,
    expires_at: f64,
    /// The store said `LeaseLost`: every later call says it too.
    lost: bool,
}

impl LeaseState {
    /// Why there is no lease to use: it was lost, or resolved.
    fn failure(&self) -> Failure {
        if self.lost {
            Failure::Store(Error::LeaseLost)
        } else {
            Failure::Resolved
        }
    }

    /// Notes a `LeaseLost` answer.
    fn noting<T>(&mut self, result: tollgate::Result<T>) -> tollgate::Result<T> {
        if matches!(result, Err(Error::LeaseLost)) {
            self.lost = true;
        }
        result
    }
}

impl Lease {
    fn new(lease: tollgate::idempotency::Lease) -> Self {
        Self {
            token: lease.token(),
            attempt: lease.attempt(),
            recovered: lease.recovered(),
            checkpoint: lease
                .checkpoint()
                .map(|checkpoint| (checkpoint.name.clone(), checkpoint.data.clone())),
            state: Mutex::new(LeaseState {
                expires_at: seconds::unix(lease.expires_at()),
                lease: Some(lease),
                lost: false,
            }),
        }
    }

    /// Resolves the lease with `resolve`, outside the GIL; a `ResponseTooLarge` hands the lease
    /// back, so it can still be resolved another way.
    fn resolve(
        &self,
        py: Python<'_>,
        resolve: impl FnOnce(tollgate::idempotency::Lease) -> tollgate::Result<()> + Send,
    ) -> PyResult<()> {
        py.detach(|| self.resolve_now(resolve))
            .map_err(Failure::into_py)
    }

    /// `resolve` without the GIL and without Python objects: for the calling thread, or a
    /// worker of the event-loop bridge.
    pub(crate) fn resolve_now(
        &self,
        resolve: impl FnOnce(tollgate::idempotency::Lease) -> tollgate::Result<()>,
    ) -> Result<(), Failure> {
        let mut state = self.state.lock();
        let Some(lease) = state.lease.take() else {
            return Err(state.failure());
        };
        let resolved = resolve(lease);
        match state.noting(resolved) {
            Err(Error::ResponseTooLarge {
                size,
                limit,
                lease: Some(lease),
            }) => {
                state.lease = Some(*lease);
                Err(Failure::Store(Error::ResponseTooLarge {
                    size,
                    limit,
                    lease: None,
                }))
            }
            Err(error) => Err(Failure::Store(error)),
            Ok(()) => Ok(()),
        }
    }

    /// Runs `change` on the held lease, outside the GIL.
    fn change(
        &self,
        py: Python<'_>,
        change: impl FnOnce(&mut tollgate::idempotency::Lease) -> tollgate::Result<()> + Send,
    ) -> PyResult<()> {
        py.detach(|| {
            let mut state = self.state.lock();
            let Some(lease) = state.lease.as_mut() else {
                return Err(state.failure());
            };
            let changed = change(lease);
            let expires_at = seconds::unix(lease.expires_at());
            state.noting(changed).map_err(Failure::Store)?;
            state.expires_at = expires_at;
            Ok(())
        })
        .map_err(Failure::into_py)
    }
}

/// Why a lease could not be resolved, without Python objects (made into an exception later,
/// with the GIL).
pub(crate) enum Failure {
    /// The store's error.
    Store(Error),
    /// The lease was resolved before.
    Resolved,
}

impl Failure {
    pub(crate) fn into_py(self) -> PyErr {
        match self {
            Failure::Store(error) => to_py(&error),
            Failure::Resolved => {
                invalid("this lease was already resolved (completed, failed or released)")
            }
        }
    }
}

/// A response from Python values.
pub(crate) fn response(
    status: u16,
    body: &[u8],
    headers: Vec<(HeaderValue, HeaderValue)>,
) -> PyResult<StoredResponse> {
    let mut response = StoredResponse::new(status, body.to_vec());
    for (name, value) in headers {
        let name = String::from_utf8(name.0).map_err(|_| invalid("a header name must be ASCII"))?;
        response = response.with_header(name, value.0);
    }
    Ok(response)
}

#[pymethods]
impl Lease {
    /// The fencing token: strictly increasing per store.
    #[getter]
    fn token(&self) -> u64 {
        self.token
    }

    /// Which execution of the key this is: 1 for the first.
    #[getter]
    fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether an earlier attempt may have run (this lease took over an expired or orphaned one).
    #[getter]
    fn recovered(&self) -> bool {
        self.recovered
    }

    /// The checkpoint the last attempt saved, as ``(name, data)``, or ``None``.
    #[getter]
    fn checkpoint<'py>(&self, py: Python<'py>) -> Option<(String, Bound<'py, PyBytes>)> {
        self.checkpoint
            .as_ref()
            .map(|(name, data)| (name.clone(), PyBytes::new(py, data)))
    }

    /// When the lease expires unless extended: float unix seconds (by the store's clock).
    #[getter]
    fn expires_at(&self) -> f64 {
        self.state.lock().expires_at
    }

    /// Whether the lease was completed, failed or released.
    #[getter]
    fn resolved(&self) -> bool {
        self.state.lock().lease.is_none()
    }

    /// Records the request as completed with this response; durable when it returns. Later
    /// begins of the key replay it.
    #[pyo3(signature = (status, body = b"".as_slice(), headers = Vec::new()))]
    fn complete(
        &self,
        py: Python<'_>,
        status: u16,
        body: &[u8],
        headers: Vec<(HeaderValue, HeaderValue)>,
    ) -> PyResult<()> {
        let response = response(status, body, headers)?;
        self.resolve(py, move |lease| lease.complete(response))
    }

    /// Records the request as failed with this response (replayed like a completion, with
    /// ``Replay.failed`` set); durable when it returns.
    #[pyo3(signature = (status, body = b"".as_slice(), headers = Vec::new()))]
    fn fail(
        &self,
        py: Python<'_>,
        status: u16,
        body: &[u8],
        headers: Vec<(HeaderValue, HeaderValue)>,
    ) -> PyResult<()> {
        let response = response(status, body, headers)?;
        self.resolve(py, move |lease| lease.fail(response))
    }

    /// Gives the key back without an outcome: the next begin executes the request again.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.resolve(py, tollgate::idempotency::Lease::release)
    }

    /// Extends the lease to expire no earlier than ``seconds`` from now; durable when it returns.
    fn extend(&self, py: Python<'_>, seconds: f64) -> PyResult<()> {
        let by = seconds::duration("extend", seconds, false)?;
        self.change(py, move |lease| lease.extend(by))
    }

    /// Saves progress a later owner receives on takeover (``Lease.checkpoint``); replaces an
    /// earlier one; durable when it returns.
    fn save_checkpoint(&self, py: Python<'_>, name: &str, data: &[u8]) -> PyResult<()> {
        self.change(py, move |lease| lease.save_checkpoint(name, data))
    }

    /// ``with lease:`` releases the lease on exit unless it was resolved inside the block.
    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        if !self.resolved() {
            self.release(py)?;
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "Lease(token={}, attempt={}, recovered={}, resolved={})",
            self.token,
            self.attempt,
            if self.recovered { "True" } else { "False" },
            if self.resolved() { "True" } else { "False" }
        )
    }
}
