//! The shared store: one store file used by every process of a host that opens it with
//! `StoreBuilder::open_shared`, with the same semantics as a store in one process.
//!
//! - **One owner.** redb's file lock decides who owns the file: the process whose open for
//!   writing succeeds runs the embedded engine as any store does and serves the others on a Unix
//!   socket beside the file (`<path>.sock`, `server.rs`). A process refused with `AlreadyOpen`
//!   connects as a *client* (`client.rs`): each of its operations is one request to the owner,
//!   answered by the owner's engine. Decisions stay where they are, in the owner's writer and the
//!   pure rules; a client decides nothing. Its replay cache (above the engine, in the façade)
//!   answers replays of finished records in its own process: a finished record never changes
//!   until it expires.
//! - **Leases belong to processes.** Each process gets an epoch of its own from the owner
//!   (`engine::processes`); its leases carry it. A process's *anchor* connection closing (it
//!   exited or was killed) ends its epoch: its leases are taken over at once, `recovered()`,
//!   checkpoint handed over. A live process's leases are never taken over before they expire.
//! - **The owner can go.** A client's anchor watcher sees the owner's connection close (it
//!   exited, closed its store, or was killed) and takes the file over at once, or connects to
//!   the client that did: whoever gets the lock becomes the owner (it recovers the file from the
//!   log, as any open does), the others reconnect to it and keep their epochs, claimed within
//!   the new owner's grace window. A call in flight when its owner goes answers within
//!   [`client::CALL_TIMEOUT`]: sent again to the next owner if it was not executed (or was a
//!   read), else [`Error::InDoubt`]; nothing hangs.

mod client;
pub(crate) mod frame;
pub(crate) mod message;
mod operations;
mod peer;
mod server;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use self::client::{CallError, Client, Connected};
use self::message::{Reply, Request};
use self::server::Server;
use super::embedded::{Embedded, Location, Options};
use super::notify::Notifier;
use super::processes::SHARED_EPOCH_BLOCK;
use super::write_counters::Counters;
use super::{RecordEngine, Swept};
use crate::clock::StoreTime;
use crate::error::{Error, Result};
use crate::status::Stats;

/// How long a new owner treats the epochs of processes it has not heard from as live: the time
/// its predecessor's clients have to reconnect and keep their leases.
pub(crate) const GRACE: Duration = Duration::from_secs(3);
/// The longest an open, or a move to a new owner, keeps trying before it gives up.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read-only open looks for an owner on the socket before it says the file is
/// open in a process that does not share it.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between attempts to own or to connect.
const RETRY_PAUSE: Duration = Duration::from_millis(5);
/// How often a client waiting for a key in flight looks again (other processes' commits wake
/// nobody here).
const WAIT_POLL: Duration = Duration::from_millis(20);

/// What opening a shared store takes.
pub(crate) struct SharedOptions {
    pub embedded: Options,
    pub path: PathBuf,
    pub max_response_bytes: usize,
    pub notifier: Arc<Notifier>,
    pub counters: Arc<Counters>,
    /// Attach to the owner only to read (`StoreBuilder::open_read_only`, the CLI): never take
    /// the file over, refuse every change here.
    pub read_only: bool,
}

/// The shared engine: this process's role on the file, and what it takes to change role.
pub(crate) struct Shared {
    inner: Arc<Inner>,
}

struct Inner {
    options: SharedOptions,
    socket: PathBuf,
    /// The client's clock (an owner's engine keeps its own).
    time: StoreTime,
    role: RwLock<Role>,
    /// Bumped at every change of role.
    generation: AtomicU64,
    switching: Mutex<()>,
    closed: AtomicBool,
    watchers: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Clone)]
enum Role {
    Owner(Arc<Owner>),
    Client(Arc<Client>),
    /// No owner could be reached or become: the next call tries again.
    Lost(String),
}

struct Owner {
    engine: Arc<Embedded>,
    server: Mutex<Server>,
}

/// Whether an operation may be sent again when its answer was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// It changes nothing: send it again.
    Read,
    /// It may have changed something: its outcome is unknown.
    Write,
}

/// The socket of the shared store at `path`: `<path>.sock`.
pub(crate) fn socket_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".sock");
    PathBuf::from(name)
}

impl Shared {
    /// Opens the store at `options.path` as its owner, or as a client of the process that owns it.
    ///
    /// # Errors
    /// Any error of the embedded open except `AlreadyOpen`; [`Error::Unavailable`] when the file
    /// is owned but no owner answers on its socket within `SWITCH_TIMEOUT`. Read-only:
    /// [`Error::AlreadyOpen`] when no owner answers within `ATTACH_TIMEOUT` (the file is open in
    /// a process that does not share it).
    pub(crate) fn open(options: SharedOptions) -> Result<Shared> {
        let socket = socket_path(&options.path);
        if socket.as_os_str().len() >= 104 {
            return Err(Error::InvalidArgument(format!(
                "a shared store's socket path must be under 104 bytes: {} is {} (use a shorter path)",
                socket.display(),
                socket.as_os_str().len()
            )));
        }
        let time = StoreTime::new(std::sync::Arc::clone(&options.embedded.clock), 0);
        let inner = Arc::new(Inner {
            options,
            socket,
            time,
            role: RwLock::new(Role::Lost("not open yet".into())),
            generation: AtomicU64::new(0),
            switching: Mutex::new(()),
            closed: AtomicBool::new(false),
            watchers: Mutex::new(Vec::new()),
        });
        if inner.options.read_only {
            Inner::switch(&inner, None, Instant::now() + ATTACH_TIMEOUT)
                .map_err(|_| Error::AlreadyOpen)?;
        } else {
            Inner::switch(&inner, None, Instant::now() + SWITCH_TIMEOUT)?;
        }
        Ok(Shared { inner })
    }

    /// This process's epoch on the store: the one its leases carry (a new one at every open,
    /// and after a move to a new owner that did not let it keep its own). A read-only client
    /// takes no lease: it reports the owner's.
    pub(crate) fn epoch(&self) -> u64 {
        match &*self.inner.role.read() {
            Role::Owner(owner) => owner.engine.epoch(),
            Role::Client(client) if self.inner.options.read_only => client.store_epoch(),
            Role::Client(client) => client.epoch(),
            Role::Lost(_) => 0,
        }
    }

    /// `Ok` unless this is a read-only client: then the change is refused here, never sent.
    pub(super) fn refuse_if_read_only(&self) -> Result<()> {
        if self.inner.options.read_only {
            return Err(Error::ReadOnly {
                path: self.inner.options.path.clone(),
                reason: "opened read-only: reads go through the process that owns the file".into(),
            });
        }
        Ok(())
    }

    /// The process id of the file's owner (this process's if it owns it).
    pub(crate) fn owner_pid(&self) -> Option<u32> {
        match &*self.inner.role.read() {
            Role::Owner(_) => Some(std::process::id()),
            Role::Client(client) => Some(client.owner_pid()),
            Role::Lost(_) => None,
        }
    }

    pub(crate) fn health(&self) -> crate::Health {
        if self.inner.closed.load(Ordering::Acquire) {
            return crate::Health::Closed;
        }
        let health = self.inner.call(
            Kind::Read,
            |engine| Ok(engine.health()),
            &Request::Health,
            |reply| match reply {
                Reply::Health(health) => Some(health.health()),
                _ => None,
            },
        );
        match health {
            // It reads, and refuses every write, as a read-only open of a file does.
            Ok(crate::Health::Ready) if self.inner.options.read_only => crate::Health::Degraded {
                reason: "opened read-only: reads go through the process that owns the file".into(),
            },
            Ok(health) => health,
            Err(error) => crate::Health::Unreachable {
                reason: error.to_string(),
            },
        }
    }

    pub(crate) fn check_usable(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        match &*self.inner.role.read() {
            Role::Owner(owner) => owner.engine.check_usable(),
            Role::Client(_) | Role::Lost(_) => Ok(()),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    pub(crate) fn stats(&self) -> Result<Stats> {
        let mut stats =
            self.inner.call(
                Kind::Read,
                Embedded::stats,
                &Request::Stats,
                |reply| match reply {
                    Reply::Stats(stats) => Some(stats.stats()),
                    _ => None,
                },
            )?;
        // Any process's sweep is the store's: the later of the owner's and this one's.
        let own = self.inner.options.counters.snapshot().last_compaction;
        if own.is_some_and(|own| {
            stats
                .last_compaction
                .is_none_or(|theirs| theirs.finished_at < own.finished_at)
        }) {
            stats.last_compaction = own;
        }
        if self.inner.options.read_only && stats.degraded.is_none() {
            stats.degraded = Some(crate::status::DegradedCause::ReadOnly);
        }
        Ok(stats)
    }

    pub(crate) fn compact_step(&self, limit: usize) -> Result<Swept> {
        self.refuse_if_read_only()?;
        let request = Request::Compact {
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
        };
        self.inner.call(
            Kind::Write,
            |engine| engine.compact_step(limit),
            &request,
            |reply| match reply {
                Reply::Swept(swept) => Some(swept),
                _ => None,
            },
        )
    }

    /// Closes this process's part: an owner stops serving (its clients take the file over) and
    /// closes the file; a client closes its connections (its epoch ends).
    pub(crate) fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = {
            let _switching = self.inner.switching.lock();
            let role =
                std::mem::replace(&mut *self.inner.role.write(), Role::Lost("closed".into()));
            match role {
                Role::Owner(owner) => {
                    owner.server.lock().stop();
                    owner.engine.close()
                }
                Role::Client(client) => {
                    client.close();
                    Ok(())
                }
                Role::Lost(_) => Ok(()),
            }
        };
        let watchers = std::mem::take(&mut *self.inner.watchers.lock());
        for watcher in watchers {
            if watcher.thread().id() != std::thread::current().id() {
                let _ = watcher.join();
            }
        }
        result
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn out_of_turn(reply: std::mem::Discriminant<Reply>) -> Error {
    Error::Internal(format!("the store's owner answered out of turn: {reply:?}"))
}

impl Inner {
    /// Runs an operation: on the engine if this process owns the file, else as `request` to the
    /// owner, moving to the next owner when this one has gone.
    fn call<T>(
        self: &Arc<Self>,
        kind: Kind,
        on_owner: impl Fn(&Embedded) -> Result<T>,
        request: &Request,
        on_reply: impl Fn(Reply) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + SWITCH_TIMEOUT;
        loop {
            if self.closed.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            let generation = self.generation.load(Ordering::Acquire);
            let role = self.role.read().clone();
            let failure = match role {
                Role::Owner(owner) => return on_owner(&owner.engine),
                Role::Client(client) => match client.call(request) {
                    Ok(Reply::Failed(error)) => {
                        return Err(error.into_error(&self.options.path));
                    }
                    Ok(reply) => {
                        let discriminant = std::mem::discriminant(&reply);
                        return on_reply(reply).ok_or_else(|| out_of_turn(discriminant));
                    }
                    Err(failure) => failure,
                },
                Role::Lost(reason) => CallError::NotSent(reason),
            };
            match failure {
                CallError::TooLarge { size, limit } => {
                    return Err(Error::InvalidArgument(format!(
                        "a request of {size} bytes is over the shared store's frame limit of {limit} bytes (max_response_bytes and a margin): send less at once"
                    )));
                }
                CallError::NotSent(reason) => {
                    if Instant::now() >= deadline {
                        return Err(Error::Unavailable(format!(
                            "no owner of the shared store answered; nothing was changed: {reason}"
                        )));
                    }
                    Inner::switch(self, Some(generation), deadline)?;
                }
                CallError::Lost(reason) => {
                    // Move on at once, so that the next call finds the next owner.
                    let switched = Inner::switch(self, Some(generation), deadline);
                    if kind == Kind::Write {
                        return Err(Error::InDoubt(format!(
                            "the shared store's owner went away before it answered: {reason}"
                        )));
                    }
                    switched?;
                }
            }
        }
    }

    /// Becomes the owner, or a client of the owner, unless the role changed since `seen` (another
    /// thread moved on already). Keeps trying until `deadline`.
    fn switch(this: &Arc<Self>, seen: Option<u64>, deadline: Instant) -> Result<()> {
        let switching = this.switching.lock();
        if this.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        if seen.is_some_and(|seen| seen != this.generation.load(Ordering::Acquire)) {
            return Ok(());
        }
        // A call that failed while its owner still runs (a connection refused, say) is tried
        // again on the same owner: leaving it would end this process's epoch, and its leases.
        if let Role::Client(client) = &*this.role.read() {
            if client.owner_alive() {
                drop(switching);
                std::thread::sleep(RETRY_PAUSE);
                return Ok(());
            }
        }
        let old = std::mem::replace(&mut *this.role.write(), Role::Lost("switching".into()));
        let mut claim = match &old {
            Role::Client(client) => {
                client.close();
                Some(client.epoch())
            }
            Role::Owner(_) | Role::Lost(_) => None,
        };
        drop(old);
        let outcome = loop {
            // A close while this waits for an owner ends the wait.
            if this.closed.load(Ordering::Acquire) {
                break Err(Error::Closed);
            }
            if !this.options.read_only {
                match this.try_own(claim) {
                    Ok(owner) => break Ok(Role::Owner(Arc::new(owner))),
                    Err(Error::AlreadyOpen) => {}
                    Err(error) => break Err(error),
                }
            }
            match Client::connect(&this.socket, claim, this.options.max_response_bytes) {
                Connected::Admitted(client) => break Ok(Role::Client(Arc::new(client))),
                // This process's leases were taken over: go on as a new process.
                Connected::EpochEnded => {
                    claim = None;
                    continue;
                }
                Connected::Unreachable(reason) => {
                    if Instant::now() >= deadline {
                        break Err(Error::Unavailable(format!(
                            "the shared store's file is owned by a process that does not answer on {}: {reason}",
                            this.socket.display()
                        )));
                    }
                }
            }
            std::thread::sleep(RETRY_PAUSE);
        };
        match outcome {
            Ok(role) => {
                if let Role::Client(client) = &role {
                    this.watch(client);
                }
                *this.role.write() = role;
                this.generation.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Err(error) => {
                *this.role.write() = Role::Lost(error.to_string());
                this.generation.fetch_add(1, Ordering::AcqRel);
                Err(error)
            }
        }
    }

    /// Opens the file for writing as its owner and serves it; `former` is the epoch this process
    /// had as a client (its leases stay live).
    fn try_own(&self, former: Option<u64>) -> Result<Owner> {
        let mut embedded = self.options.embedded.clone();
        embedded.epoch_block = SHARED_EPOCH_BLOCK;
        let engine = Arc::new(Embedded::open(
            &embedded,
            Location::File(self.options.path.clone()),
            Arc::clone(&self.options.notifier),
            Arc::clone(&self.options.counters),
        )?);
        let now = engine.now();
        let grace_until = now.saturating_add(crate::clock::duration_to_nanos(GRACE));
        engine.processes().share(grace_until);
        if let Some(former) = former {
            engine.processes().readmit(former, now, true);
        }
        match Server::start(
            &self.socket,
            Arc::clone(&engine),
            self.options.max_response_bytes,
        ) {
            Ok(server) => Ok(Owner {
                engine,
                server: Mutex::new(server),
            }),
            Err(error) => {
                let _ = engine.close();
                Err(error)
            }
        }
    }

    /// Starts a thread that waits on `client`'s anchor and moves to the next owner as soon as
    /// this one goes.
    fn watch(self: &Arc<Self>, client: &Client) {
        let Some(mut anchor) = client.anchor_watch() else {
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(self);
        let generation = self.generation.load(Ordering::Acquire).wrapping_add(1);
        let watcher = std::thread::Builder::new()
            .name("tollgate-shared-watch".into())
            .spawn(move || {
                let _ = anchor.set_read_timeout(None);
                let _ = frame::read::<Reply>(&mut anchor, frame::HELLO_LIMIT);
                if let Some(inner) = weak.upgrade() {
                    if !inner.closed.load(Ordering::Acquire) {
                        let _ = Inner::switch(
                            &inner,
                            Some(generation),
                            Instant::now() + SWITCH_TIMEOUT,
                        );
                    }
                }
            });
        if let Ok(watcher) = watcher {
            let mut watchers = self.watchers.lock();
            watchers.retain(|watcher| !watcher.is_finished());
            watchers.push(watcher);
        }
    }
}
