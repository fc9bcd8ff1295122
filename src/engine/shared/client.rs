//! A client's side of a shared store: its process's anchor connection (whose close tells the
//! owner the process has ended) and a pool of request connections, one per thread calling at
//! once.
//!
//! A call tells its caller which of three things happened, so that the shared engine can answer
//! with the right error: the request was not sent (or the owner said goodbye without running
//! it), so nothing happened and it may be sent again; it was sent and no answer came (the owner
//! died), so a change may or may not have been made; or the owner answered.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::Mutex;

use super::frame::{self, FRAME_OVERHEAD, FrameError, HELLO_LIMIT};
use super::message::{Hello, Reply, Request, Welcome};

/// The longest a connection's hello may take.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a request may wait for its answer (the owner's fsync included); past it the
/// connection is dropped and a change's outcome is unknown.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle request connections kept, at most.
const MAX_IDLE: usize = 64;

/// How a call went wrong.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Nothing was executed: the request was not sent, or the owner said goodbye.
    NotSent(String),
    /// The request was sent and no answer came: a change may or may not have been made.
    Lost(String),
    /// The request is larger than a frame may be: it was not sent, and never can be.
    TooLarge { size: usize, limit: usize },
}

/// How a connection attempt went.
pub(crate) enum Connected {
    Admitted(Client),
    /// The claimed epoch has ended: connect as a new process.
    EpochEnded,
    /// No owner answered on the socket (none runs, or it is starting or has died).
    Unreachable(String),
}

/// A connection to the owner, admitted for this process.
pub(crate) struct Client {
    socket: PathBuf,
    epoch: u64,
    store_epoch: u64,
    owner_pid: u32,
    max_response_bytes: usize,
    /// The agreed frame limit.
    limit: usize,
    anchor: Mutex<Option<UnixStream>>,
    /// Request connections not in use, each read through a buffer (a reply is usually one
    /// system call).
    idle: Mutex<Vec<BufReader<UnixStream>>>,
}

impl Client {
    /// Connects to the owner on `socket` as the process at `claim` (`None`: a new process).
    pub(crate) fn connect(
        socket: &Path,
        claim: Option<u64>,
        max_response_bytes: usize,
    ) -> Connected {
        let hello = Hello {
            pid: std::process::id(),
            claim,
            anchor: true,
            max_response_bytes: max_response_bytes as u64,
        };
        let (anchor, welcome) = match handshake(socket, &hello) {
            Ok(answer) => answer,
            Err(reason) => return Connected::Unreachable(reason),
        };
        match welcome {
            Welcome::Admitted {
                epoch,
                store_epoch,
                owner_pid,
                max_response_bytes: agreed,
            } => {
                let agreed = usize::try_from(agreed)
                    .unwrap_or(usize::MAX)
                    .min(super::frame::MAX_DECLARED_RESPONSE_BYTES.max(max_response_bytes));
                Connected::Admitted(Client {
                    socket: socket.to_path_buf(),
                    epoch,
                    store_epoch,
                    owner_pid,
                    max_response_bytes,
                    limit: agreed
                        .max(max_response_bytes)
                        .saturating_add(FRAME_OVERHEAD),
                    anchor: Mutex::new(Some(anchor)),
                    idle: Mutex::new(Vec::new()),
                })
            }
            Welcome::EpochEnded => Connected::EpochEnded,
            Welcome::Refused(reason) => Connected::Unreachable(reason),
        }
    }

    /// This process's epoch on the store.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The owner's epoch.
    pub(crate) fn store_epoch(&self) -> u64 {
        self.store_epoch
    }

    /// The owner's process id.
    pub(crate) fn owner_pid(&self) -> u32 {
        self.owner_pid
    }

    /// A second handle on the anchor, for a thread that waits for the owner to go away.
    pub(crate) fn anchor_watch(&self) -> Option<UnixStream> {
        self.anchor
            .lock()
            .as_ref()
            .and_then(|anchor| anchor.try_clone().ok())
    }

    /// Sends `request` and waits for its answer.
    ///
    /// # Errors
    /// [`CallError::NotSent`] when nothing was executed, [`CallError::Lost`] when the answer
    /// did not come.
    pub(crate) fn call(&self, request: &Request) -> Result<Reply, CallError> {
        let pooled = self.idle.lock().pop();
        let mut stream = match pooled {
            Some(stream) => stream,
            None => self.open_connection()?,
        };
        let frame =
            frame::encode(request).map_err(|error| CallError::NotSent(error.to_string()))?;
        if frame.len() - 4 > self.limit {
            self.idle.lock().push(stream);
            return Err(CallError::TooLarge {
                size: frame.len(),
                limit: self.limit,
            });
        }
        if let Err(error) = stream.get_mut().write_all(&frame) {
            return Err(CallError::NotSent(format!(
                "the owner's connection failed: {error}"
            )));
        }
        match frame::read::<Reply>(&mut stream, self.limit) {
            Ok(Reply::Goodbye) => Err(CallError::NotSent("the owner is closing".into())),
            Ok(reply) => {
                let mut idle = self.idle.lock();
                if idle.len() < MAX_IDLE {
                    idle.push(stream);
                }
                Ok(reply)
            }
            Err(FrameError::Closed) => Err(CallError::Lost(
                "the owner closed the connection before answering".into(),
            )),
            Err(error) => Err(CallError::Lost(format!(
                "no answer from the owner: {error}"
            ))),
        }
    }

    fn open_connection(&self) -> Result<BufReader<UnixStream>, CallError> {
        let hello = Hello {
            pid: std::process::id(),
            claim: Some(self.epoch),
            anchor: false,
            max_response_bytes: self.max_response_bytes as u64,
        };
        match handshake(&self.socket, &hello) {
            Ok((stream, Welcome::Admitted { .. })) => {
                let timeouts = stream
                    .set_read_timeout(Some(CALL_TIMEOUT))
                    .and_then(|()| stream.set_write_timeout(Some(CALL_TIMEOUT)));
                timeouts.map_err(|error| CallError::NotSent(error.to_string()))?;
                Ok(BufReader::new(stream))
            }
            Ok((_, Welcome::EpochEnded)) => Err(CallError::NotSent(
                "this process's epoch ended on the store's owner".into(),
            )),
            Ok((_, Welcome::Refused(reason))) | Err(reason) => Err(CallError::NotSent(reason)),
        }
    }

    /// Closes every connection, the anchor last: the owner ends this process's epoch, and
    /// answers once it has, so that when this returns this process's leases are free (within
    /// `HELLO_TIMEOUT`, or at once if the owner has gone).
    pub(crate) fn close(&self) {
        for stream in self.idle.lock().drain(..) {
            let _ = stream.get_ref().shutdown(std::net::Shutdown::Both);
        }
        if let Some(mut anchor) = self.anchor.lock().take() {
            let timeouts = anchor
                .set_read_timeout(Some(HELLO_TIMEOUT))
                .and_then(|()| anchor.set_write_timeout(Some(HELLO_TIMEOUT)));
            if timeouts.is_ok() && frame::write(&mut anchor, &Request::Leave).is_ok() {
                // `Done`, or the end of the connection (the watcher may have read `Done`):
                // either comes after the owner ended the epoch.
                let _ = frame::read::<Reply>(&mut anchor, HELLO_LIMIT);
            }
            let _ = anchor.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Whether the owner's end of the anchor is still open (it has not exited, closed or been
    /// killed). Looks without waiting and without taking anything from the socket.
    pub(crate) fn owner_alive(&self) -> bool {
        let anchor = self.anchor.lock();
        let Some(anchor) = anchor.as_ref() else {
            return false;
        };
        let mut byte = [0u8; 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        match rustix::net::recv(anchor, &mut byte[..], flags) {
            // Nothing to read: open. (The owner sends nothing on an anchor but `Done`.)
            Err(rustix::io::Errno::AGAIN) => true,
            // The end of the connection, or an error on it.
            Ok((_, 0)) | Err(_) => false,
            Ok(_) => true,
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.close();
    }
}

/// Connects to `socket` and exchanges the hello.
fn handshake(socket: &Path, hello: &Hello) -> Result<(UnixStream, Welcome), String> {
    let mut stream = UnixStream::connect(socket).map_err(|error| error.to_string())?;
    stream
        .set_read_timeout(Some(HELLO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HELLO_TIMEOUT)))
        .map_err(|error| error.to_string())?;
    frame::write(&mut stream, hello).map_err(|error| error.to_string())?;
    let welcome = frame::read::<Welcome>(&mut stream, HELLO_LIMIT).map_err(|e| e.to_string())?;
    Ok((stream, welcome))
}
