//! Durations as Python gives them: float seconds, checked.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::PyResult;

use crate::errors::invalid;

/// `seconds` as a `Duration`: finite, not negative, and (unless `zero_ok`) above zero.
pub(crate) fn duration(what: &str, seconds: f64, zero_ok: bool) -> PyResult<Duration> {
    let duration = Duration::try_from_secs_f64(seconds).map_err(|_| {
        invalid(format!(
            "{what} must be a finite number of seconds ≥ 0, not {seconds}"
        ))
    })?;
    if duration.is_zero() && !zero_ok {
        return Err(invalid(format!("{what} must be more than 0 seconds")));
    }
    Ok(duration)
}

/// A duration as float seconds.
pub(crate) fn float(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// A point in time as float unix seconds (before 1970: negative).
pub(crate) fn unix(time: SystemTime) -> f64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

/// Float unix seconds as a point in time.
pub(crate) fn from_unix(seconds: f64) -> PyResult<SystemTime> {
    let after = duration("a unix time", seconds, true)?;
    UNIX_EPOCH
        .checked_add(after)
        .ok_or_else(|| invalid(format!("{seconds} is not a representable unix time")))
}
