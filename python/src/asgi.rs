//! The ASGI rate middleware's common path in native code: `RateLimitCore`, the base class of
//! `tollgate.asgi.RateLimitMiddleware`.
//!
//! A request whose limits memory can decide and that is allowed (the common answer) is handled
//! here entirely: the subjects, the check, the header fields and the `send` that adds them, and
//! the call of the app, whose awaitable is returned as the middleware's own (no coroutine of the
//! middleware's, no Python frame). Everything else (a counter not in memory, a denial, an error, a
//! cost or subject of the wrong type) goes to the Python class's `_slow(scope, receive, send,
//! checks, cost)`, which decides it the way the pure-Python middleware did. Nothing is charged
//! before the hand-over: a check that memory cannot answer, a denied check and a failed one charge
//! nothing, so `_slow` checks again.

use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::ratelimit::Limit;
use crate::store::Store;

/// Which fields an allowed answer carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnAllowed {
    None,
    Ietf,
    All,
}

/// The configuration `_configure` sets.
struct Core {
    app: Py<PyAny>,
    store: Py<Store>,
    limits: Vec<(Py<Limit>, Option<Py<PyAny>>)>,
    cost: Option<Py<PyAny>>,
    on_allowed: OnAllowed,
    /// Per field: its name, its last value and the `(name, value)` tuple made for it, the name
    /// lowercased as ASGI sends it. A field whose value did not change (the policy, the limit,
    /// mostly the reset) is sent as the same tuple again.
    last: parking_lot::Mutex<Vec<(&'static str, String, Py<PyTuple>)>>,
}

/// The native part of `tollgate.asgi.RateLimitMiddleware` (subclassed there; not for direct use).
#[pyclass(subclass, module = "tollgate._native")]
pub struct RateLimitCore {
    core: Option<Core>,
}

#[pymethods]
impl RateLimitCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        Self { core: None }
    }

    /// Sets what `__call__` needs: the app, the store, the `(limit, subject function or None)`
    /// pairs, the cost function (or None) and which fields an allowed answer carries (`"all"`,
    /// `"ietf"` or None).
    fn _configure(
        &mut self,
        app: Py<PyAny>,
        store: Py<Store>,
        limits: Vec<(Py<Limit>, Option<Py<PyAny>>)>,
        cost: Option<Py<PyAny>>,
        on_allowed: Option<&str>,
    ) -> PyResult<()> {
        let on_allowed = match on_allowed {
            None => OnAllowed::None,
            Some("ietf") => OnAllowed::Ietf,
            Some("all") => OnAllowed::All,
            Some(other) => {
                return Err(crate::errors::invalid(format!(
                    "on_allowed is \"all\", \"ietf\" or None, not {other:?}"
                )));
            }
        };
        self.core = Some(Core {
            app,
            store,
            limits,
            cost,
            on_allowed,
            last: parking_lot::Mutex::new(Vec::new()),
        });
        Ok(())
    }

    fn __call__<'py>(
        slf: &Bound<'py, Self>,
        scope: &Bound<'py, PyAny>,
        receive: &Bound<'py, PyAny>,
        send: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.borrow();
        let Some(core) = this.core.as_ref() else {
            return Err(crate::errors::invalid(
                "RateLimitCore is the base of tollgate.asgi.RateLimitMiddleware, not for direct use",
            ));
        };
        let app = core.app.bind(py);
        if !scope
            .get_item(pyo3::intern!(py, "type"))?
            .eq(pyo3::intern!(py, "http"))?
        {
            return app.call1((scope, receive, send));
        }
        // The subjects, each function called once (the slow path gets what they said).
        let mut subjects: Vec<(usize, Bound<'py, PyAny>, Option<String>)> =
            Vec::with_capacity(core.limits.len());
        for (index, (_, subject)) in core.limits.iter().enumerate() {
            let who = match subject {
                None => PyString::new(py, tollgate::tower::GLOBAL_SUBJECT).into_any(),
                Some(function) => function.bind(py).call1((scope,))?,
            };
            if who.is_none() {
                continue;
            }
            let text = who.extract::<String>().ok();
            subjects.push((index, who, text));
        }
        if subjects.is_empty() {
            return app.call1((scope, receive, send));
        }
        let cost_object = match &core.cost {
            None => 1u32.into_pyobject(py)?.into_any(),
            Some(function) => function.bind(py).call1((scope,))?,
        };
        let slow = || -> PyResult<Bound<'py, PyAny>> {
            let checks = PyList::empty(py);
            for (index, who, _) in &subjects {
                if let Some((limit, _)) = core.limits.get(*index) {
                    checks.append((limit.bind(py), who))?;
                }
            }
            slf.call_method1("_slow", (scope, receive, send, checks, &cost_object))
        };
        let (Ok(cost), true) = (
            cost_object.extract::<u32>(),
            subjects.iter().all(|(_, _, text)| text.is_some()),
        ) else {
            return slow();
        };
        let Ok(store) = core.store.get().store() else {
            return slow();
        };
        let pairs: Vec<(&tollgate::ratelimit::Limit, &str)> = subjects
            .iter()
            .filter_map(|(index, _, text)| {
                let (limit, _) = core.limits.get(*index)?;
                Some((&limit.get().inner, text.as_deref()?))
            })
            .collect();
        let decision = match store.try_check_all(&pairs, cost) {
            Ok(Some(decision)) if decision.allowed() => decision,
            _ => return slow(),
        };
        if core.on_allowed == OnAllowed::None {
            return app.call1((scope, receive, send));
        }
        let mut fields: Vec<Py<PyTuple>> = Vec::with_capacity(5);
        let mut failed = None;
        let mut last = core.last.lock();
        decision.for_each_header(|name, value| {
            // Retry-After comes only with a denial, never here.
            if failed.is_some()
                || (core.on_allowed == OnAllowed::Ietf && !name.starts_with("RateLimit"))
            {
                return;
            }
            match field_tuple(py, &mut last, name, value) {
                Ok(tuple) => fields.push(tuple),
                Err(error) => failed = Some(error),
            }
        });
        drop(last);
        if let Some(error) = failed {
            return Err(error);
        }
        let wrapped = Bound::new(
            py,
            SendWithFields {
                send: send.clone().unbind(),
                fields,
            },
        )?;
        app.call1((scope, receive, wrapped))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(core) = &self.core {
            visit.call(&core.app)?;
            visit.call(&core.store)?;
            for (limit, subject) in &core.limits {
                visit.call(limit)?;
                if let Some(subject) = subject {
                    visit.call(subject)?;
                }
            }
            if let Some(cost) = &core.cost {
                visit.call(cost)?;
            }
            if let Some(last) = core.last.try_lock() {
                for (_, _, tuple) in last.iter() {
                    visit.call(tuple)?;
                }
            }
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.core = None;
    }
}

/// The `(name, value)` tuple of one field, the one made last time when its value is the same
/// (`last` keeps, per field, its last value and tuple, whose name is lowercased as ASGI sends it).
fn field_tuple(
    py: Python<'_>,
    last: &mut Vec<(&'static str, String, Py<PyTuple>)>,
    name: &'static str,
    value: &str,
) -> PyResult<Py<PyTuple>> {
    let slot = last.iter().position(|(known, _, _)| *known == name);
    let entry = slot.and_then(|at| last.get_mut(at));
    if let Some((_, cached, tuple)) = &entry {
        if cached == value {
            return Ok(tuple.clone_ref(py));
        }
    }
    let name_bytes = match &entry {
        Some((_, _, tuple)) => tuple.bind(py).get_item(0)?,
        None => PyBytes::new(py, name.to_ascii_lowercase().as_bytes()).into_any(),
    };
    let value_bytes = PyBytes::new(py, value.as_bytes()).into_any();
    let tuple = PyTuple::new(py, [name_bytes, value_bytes])?.unbind();
    match entry {
        Some(entry) => {
            entry.1.clear();
            entry.1.push_str(value);
            entry.2 = tuple.clone_ref(py);
        }
        None => last.push((name, value.to_owned(), tuple.clone_ref(py))),
    }
    Ok(tuple)
}

/// The `send` an allowed request's app gets: the response's start carries the rate fields too.
/// A plain callable returning the server's awaitable (ASGI asks for an awaitable callable, not a
/// coroutine function).
#[pyclass(frozen, module = "tollgate._native")]
pub struct SendWithFields {
    send: Py<PyAny>,
    fields: Vec<Py<PyTuple>>,
}

#[pymethods]
impl SendWithFields {
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if message
            .get_item(pyo3::intern!(py, "type"))?
            .eq(pyo3::intern!(py, "http.response.start"))?
        {
            // Each message is the app's own, made for this send: its headers are replaced by a
            // new list with the fields after them.
            let headers = PyList::empty(py);
            match message.get_item(pyo3::intern!(py, "headers")) {
                Ok(existing) => {
                    for header in existing.try_iter()? {
                        headers.append(header?)?;
                    }
                }
                // A start message without headers has none to keep.
                Err(error) if error.is_instance_of::<PyKeyError>(py) => {}
                Err(error) => return Err(error),
            }
            for field in &self.fields {
                headers.append(field.bind(py))?;
            }
            message.set_item(pyo3::intern!(py, "headers"), headers)?;
        }
        self.send.bind(py).call1((message,))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.send)?;
        for field in &self.fields {
            visit.call(field)?;
        }
        Ok(())
    }
}
