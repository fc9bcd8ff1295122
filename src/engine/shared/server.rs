//! The owner's side of a shared store: a Unix socket beside the file, one thread per connection,
//! each request run on the embedded engine as if the owner's own caller had asked.
//!
//! - **Who may connect**: the socket is made mode 0600 as soon as it is bound, and every
//!   connection's peer is checked (`SO_PEERCRED`): a process of another user is closed before it
//!   is read.
//! - **What a connection is**: its `Hello` says which process it serves. The process's *anchor*
//!   connection carries no requests; when it closes (the process exited or was killed), the
//!   process's epoch ends and its leases are taken over at once (`engine::processes`). Other
//!   connections carry requests, one at a time, each answered in order.
//! - **Bad input**: a frame over the agreed limit, of another version, or that does not decode
//!   closes that connection only; nothing it sent is executed.
//! - **Closing**: `stop` stops accepting, shuts the read side of every connection and joins
//!   their threads. A connection finishes the request it runs and answers it; any request read
//!   after the owner began closing is not executed but answered [`Reply::Goodbye`], so its client
//!   knows to send it again to the next owner. An idle connection is said goodbye to as well
//!   after [`IDLE_TIMEOUT`].

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use super::frame::{self, FRAME_OVERHEAD, FrameError, HELLO_LIMIT, MAX_DECLARED_RESPONSE_BYTES};
use super::message::{Begun, Hello, Reply, Request, Welcome, WireError, WireHealth, WireStats};
use crate::engine::embedded::Embedded;
use crate::engine::{CounterEngine, Early, RecordEngine};
use crate::error::{Error, Result};
use crate::idempotency::Digest;
use crate::ratelimit::check_subject;

/// A connection with no request for this long is said goodbye to (its client connects again).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a peer may take to say hello, or to take an answer. (Once a frame began, the
/// rest must come within the connection's read timeout: [`IDLE_TIMEOUT`] after the hello.)
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The most connections served at once (a client keeps one per thread calling at once).
const MAX_CONNECTIONS: usize = 1024;

/// The owner's server.
pub(crate) struct Server {
    socket: PathBuf,
    /// The listening socket, shut down by `stop` to end the acceptor's `accept`.
    listener: UnixListener,
    closing: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<(u64, UnixStream)>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

/// What every connection thread shares.
struct Context {
    engine: Arc<Embedded>,
    closing: Arc<AtomicBool>,
    max_response_bytes: usize,
    uid: u32,
}

impl Server {
    /// Binds `socket` (removing a stale one: only the file's owner calls this, holding its lock)
    /// and serves `engine` on it.
    ///
    /// # Errors
    /// [`Error::Storage`] if the socket cannot be bound or its mode set.
    pub(crate) fn start(
        socket: &Path,
        engine: Arc<Embedded>,
        max_response_bytes: usize,
    ) -> Result<Server> {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(Error::storage(error)),
        }
        let listener = UnixListener::bind(socket).map_err(Error::storage)?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
            .map_err(Error::storage)?;
        let closing = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let context = Arc::new(Context {
            engine,
            closing: Arc::clone(&closing),
            max_response_bytes,
            uid: super::peer::own_uid(),
        });
        let stopper = listener.try_clone().map_err(Error::storage)?;
        let acceptor = {
            let (connections, threads) = (Arc::clone(&connections), Arc::clone(&threads));
            std::thread::Builder::new()
                .name("tollgate-shared-accept".into())
                .spawn(move || accept(&listener, &context, &connections, &threads))
                .map_err(Error::storage)?
        };
        Ok(Server {
            socket: socket.to_path_buf(),
            listener: stopper,
            closing,
            connections,
            threads,
            acceptor: Some(acceptor),
        })
    }

    /// Stops serving: no new connection, every request running answered, every other one
    /// answered goodbye; joins every thread and removes the socket.
    pub(crate) fn stop(&mut self) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        // Shutting the listening socket down makes its `accept` fail at once: the acceptor sees
        // `closing` and returns (whatever became of the socket's name meanwhile).
        let _ = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Both);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for (_, stream) in self.connections.lock().iter() {
            let _ = stream.shutdown(std::net::Shutdown::Read);
        }
        let threads = std::mem::take(&mut *self.threads.lock());
        for thread in threads {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept(
    listener: &UnixListener,
    context: &Arc<Context>,
    connections: &Arc<Mutex<Vec<(u64, UnixStream)>>>,
    threads: &Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    for stream in listener.incoming() {
        if context.closing.load(Ordering::Acquire) {
            return;
        }
        let Ok(stream) = stream else {
            // A failed accept (out of descriptors, say) leaves the listener usable.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let mut live = connections.lock();
        if live.len() >= MAX_CONNECTIONS {
            continue;
        }
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        live.push((id, registered));
        drop(live);
        let (context, connections_of_thread) = (Arc::clone(context), Arc::clone(connections));
        let thread = std::thread::Builder::new()
            .name("tollgate-shared-conn".into())
            .spawn(move || {
                serve(stream, &context);
                connections_of_thread
                    .lock()
                    .retain(|(other, _)| *other != id);
            });
        let mut threads = threads.lock();
        threads.retain(|thread| !thread.is_finished());
        match thread {
            Ok(thread) => threads.push(thread),
            Err(_) => connections.lock().retain(|(other, _)| *other != id),
        }
    }
}

/// Serves one connection until it closes, misbehaves, idles out or the owner closes.
fn serve(mut stream: UnixStream, context: &Context) {
    if !super::peer::same_user(&stream, context.uid) {
        return;
    }
    if stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return;
    }
    let Ok(hello) = frame::read::<Hello>(&mut stream, HELLO_LIMIT) else {
        return;
    };
    let mut stream = std::io::BufReader::new(stream);
    let processes = context.engine.processes();
    let now = context.engine.now();
    let epoch = match (hello.anchor, hello.claim) {
        (true, None) => processes.admit().ok(),
        (true, Some(claim)) => processes.readmit(claim, now, false).then_some(claim),
        (false, Some(claim)) => processes.is_live(claim).then_some(claim),
        (false, None) => None,
    };
    let max_response_bytes = context.max_response_bytes.max(
        usize::try_from(hello.max_response_bytes)
            .unwrap_or(usize::MAX)
            .min(MAX_DECLARED_RESPONSE_BYTES),
    );
    let welcome = match epoch {
        Some(epoch) => Welcome::Admitted {
            epoch,
            store_epoch: context.engine.epoch(),
            owner_pid: std::process::id(),
            max_response_bytes: max_response_bytes as u64,
        },
        None if hello.claim.is_some() => Welcome::EpochEnded,
        None => Welcome::Refused("a connection that is not an anchor names its process".into()),
    };
    if frame::write(stream.get_mut(), &welcome).is_err() {
        if let (Some(epoch), true) = (epoch, hello.anchor) {
            end_unless_closing(context, processes, epoch);
        }
        return;
    }
    let Some(epoch) = epoch else { return };
    if hello.anchor {
        // An anchor carries nothing: it ends (EOF, an error, anything sent) when its process does.
        let _ = stream.get_ref().set_read_timeout(None);
        let left = frame::read::<Request>(&mut stream, HELLO_LIMIT);
        end_unless_closing(context, processes, epoch);
        if matches!(left, Ok(Request::Leave)) {
            let _ = frame::write(stream.get_mut(), &Reply::Done);
        }
        return;
    }
    let limit = max_response_bytes.saturating_add(FRAME_OVERHEAD);
    if stream
        .get_ref()
        .set_read_timeout(Some(IDLE_TIMEOUT))
        .is_ok()
    {
        requests(&mut stream, context, epoch, limit);
    }
}

/// Answers requests in order until the connection ends. A frame read through `stream`'s buffer
/// usually takes one system call.
fn requests(
    stream: &mut std::io::BufReader<UnixStream>,
    context: &Context,
    epoch: u64,
    limit: usize,
) {
    loop {
        let request = match frame::read::<Request>(stream, limit) {
            Ok(request) => request,
            Err(FrameError::Idle | FrameError::Closed) => {
                let _ = goodbye(stream.get_mut());
                return;
            }
            Err(_) => return,
        };
        if context.closing.load(Ordering::Acquire) {
            let _ = goodbye(stream.get_mut());
            return;
        }
        let reply = match execute(context, epoch, request, limit) {
            Ok(reply) => reply,
            Err(error) => Reply::Failed(WireError::of(&error)),
        };
        if frame::write(stream.get_mut(), &reply).is_err() {
            return;
        }
    }
}

/// `epoch`'s anchor closed: its process ended, and its leases are taken over at once, unless
/// the anchor closed because this owner is closing (`Server::stop` shuts every connection). The
/// process then lives on and will claim its epoch from the next owner; a request this owner
/// still finishes must see its leases live. (Ending them here let a request in flight during
/// the close take over a live process's lease: `tests/it/histories_records.rs::linearizable::shared`.)
fn end_unless_closing(
    context: &Context,
    processes: &crate::engine::processes::Processes,
    epoch: u64,
) {
    if !context.closing.load(Ordering::Acquire) {
        processes.ended(epoch);
    }
}

fn goodbye(stream: &mut UnixStream) -> std::io::Result<()> {
    let frame = frame::encode(&Reply::Goodbye).map_err(std::io::Error::other)?;
    stream.write_all(&frame)
}

/// Runs one request on the engine for the process at `epoch`.
fn execute(context: &Context, epoch: u64, request: Request, limit: usize) -> Result<Reply> {
    let engine = &*context.engine;
    Ok(match request {
        Request::Read { digest } => Reply::Record(engine.read(&Digest(digest))?),
        Request::Begin { digest, request } => {
            let (digest, request) = (Digest(digest), request.request(epoch));
            Reply::Begun(match engine.begin_without_writing(&digest, request)? {
                Early::Answer(decision, record) => Begun::Read(decision, record),
                Early::Write(seen) => Begun::Written(engine.begin(digest, request, seen)?),
                Early::Written(decision) => Begun::Written(decision),
            })
        }
        Request::BeginRead { digest, request } => {
            let (digest, request) = (Digest(digest), request.request(epoch));
            Reply::Begun(match engine.begin_without_writing(&digest, request)? {
                Early::Answer(decision, record) => Begun::Read(decision, record),
                Early::Write(_) | Early::Written(_) => Begun::MustWrite,
            })
        }
        Request::Resolve {
            digest,
            token,
            resolution,
        } => Reply::Resolved(engine.resolve(Digest(digest), token, resolution)?),
        Request::List {
            after,
            limit: count,
        } => list(engine, after, count, limit)?,
        Request::Rate { kind, checks } => {
            let limits = checks
                .iter()
                .map(|(limit, _)| limit.limit())
                .collect::<Result<Vec<_>>>()?;
            for (_, subject) in &checks {
                check_subject(subject)?;
            }
            let pairs: Vec<_> = limits
                .iter()
                .zip(&checks)
                .map(|(limit, (_, subject))| (limit, subject.as_str()))
                .collect();
            Reply::Rate(engine.run(kind, &pairs)?)
        }
        Request::Bulk { records } => {
            let count = records.len() as u64;
            let mut records = records.into_iter();
            let records = Box::new(move |_, _| {
                records
                    .next()
                    .map(|(digest, record)| (Digest(digest), record))
            });
            Reply::Loaded(engine.bulk_load(count, records)?)
        }
        Request::Flush => {
            engine.flush()?;
            Reply::Done
        }
        Request::Compact { limit } => Reply::Swept(engine.compact_step(limit as usize)?),
        Request::Stats => Reply::Stats(WireStats::of(&engine.stats()?)),
        Request::Health => Reply::Health(WireHealth::of(&engine.health())),
        Request::Leave => {
            return Err(Error::InvalidArgument(
                "a process leaves on its anchor connection".into(),
            ));
        }
    })
}

/// Up to `count` records after `after`, as many as fit a frame of `limit` bytes.
fn list(engine: &Embedded, after: Option<[u8; 32]>, count: u32, limit: usize) -> Result<Reply> {
    let after = after.map(Digest);
    let wanted = count as usize;
    let found = engine.list(after.as_ref(), wanted)?;
    let end = found.len() < wanted;
    let mut records = Vec::with_capacity(found.len());
    let mut bytes = 0usize;
    let budget = limit.saturating_sub(FRAME_OVERHEAD / 2);
    for (digest, record) in found {
        let entry = (digest.0, record.map_err(|error| WireError::of(&error)));
        let size = postcard::experimental::serialized_size(&entry).unwrap_or(usize::MAX);
        if !records.is_empty() && bytes.saturating_add(size) > budget {
            return Ok(Reply::Listed {
                records,
                end: false,
            });
        }
        bytes = bytes.saturating_add(size);
        records.push(entry);
    }
    Ok(Reply::Listed { records, end })
}
