//! A shared store's handshake, for tests that speak to an owner's socket as a foreign process
//! would (a process of another user, one that speaks garbage).

use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::engine::shared::frame;
use crate::engine::shared::message::{Hello, Welcome};

/// A valid `Hello` of a new process, as one frame.
///
/// # Panics
/// Never: the message always encodes.
pub fn hello_frame() -> Vec<u8> {
    frame::encode(&Hello {
        pid: std::process::id(),
        claim: None,
        anchor: true,
        max_response_bytes: 1 << 20,
    })
    .expect("a hello encodes")
}

/// Sends [`hello_frame`] on `stream` and says whether the owner admitted the connection (`false`
/// if it closed it, refused it, or said nothing within 5 s).
pub fn is_admitted(stream: &mut UnixStream) -> bool {
    use std::io::Write;
    let timeouts = stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(5))));
    if timeouts.is_err() || stream.write_all(&hello_frame()).is_err() {
        return false;
    }
    matches!(
        frame::read::<Welcome>(stream, frame::HELLO_LIMIT),
        Ok(Welcome::Admitted { .. })
    )
}
