//! [`HealthWatch`]: a store's health read on a thread of its own, so that an async readiness
//! probe answers from memory. [`Store::health`] may wait for a round trip to PostgreSQL or Redis
//! (bounded by their call timeouts); a `/health` handler on an async runtime must not.
//!
//! One named thread (`tollgate-health`) per watch calls `health()` every `every` and keeps the
//! answer with the time it was taken; dropping the watch stops and joins the thread (it holds a
//! clone of the store until then).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use parking_lot::RwLock;

use super::{Health, Store};
use crate::error::{Error, Result};

/// The latest health of a store, refreshed in the background. Made by [`Store::watch_health`].
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Health, Store};
///
/// let store = Store::in_memory()?;
/// let watch = store.watch_health(Duration::from_secs(1))?;
/// // In an async `/health` handler: no I/O, no blocking.
/// assert!(watch.latest().is_ready());
/// store.close()?;
/// # Ok::<(), tollgate::Error>(())
/// ```
pub struct HealthWatch {
    latest: Arc<RwLock<(Health, Instant)>>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HealthWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (health, at) = &*self.latest.read();
        f.debug_struct("HealthWatch")
            .field("latest", health)
            .field("age", &at.elapsed())
            .finish_non_exhaustive()
    }
}

impl HealthWatch {
    pub(crate) fn start(store: &Store, every: Duration) -> Result<Self> {
        if every.is_zero() {
            return Err(Error::InvalidArgument(
                "a health watch's interval must be greater than zero".into(),
            ));
        }
        let latest = Arc::new(RwLock::new((store.health(), Instant::now())));
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let (store, shared) = (store.clone(), Arc::clone(&latest));
        let thread = std::thread::Builder::new()
            .name("tollgate-health".into())
            .spawn(move || {
                loop {
                    match stopped.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => {
                            let health = store.health();
                            *shared.write() = (health, Instant::now());
                        }
                        _ => return,
                    }
                }
            })
            .map_err(Error::storage)?;
        Ok(Self {
            latest,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The latest health read: never waits for I/O.
    pub fn latest(&self) -> Health {
        self.latest.read().0.clone()
    }

    /// How long ago [`HealthWatch::latest`] was read.
    pub fn age(&self) -> Duration {
        self.latest.read().1.elapsed()
    }
}

impl Drop for HealthWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_follows_the_store_and_stops_when_dropped() {
        let store = Store::in_memory().unwrap();
        let watch = store.watch_health(Duration::from_millis(5)).unwrap();
        assert!(watch.latest().is_ready());
        store.clone().close().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while watch.latest() != Health::Closed {
            assert!(Instant::now() < deadline, "the watch never saw the close");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(watch.age() < Duration::from_secs(10));
        drop(watch); // joins its thread
        assert!(matches!(
            store.watch_health(Duration::ZERO),
            Err(Error::InvalidArgument(_))
        ));
    }
}
