//! The shared store's frames: how one message crosses the owner's socket.
//!
//! ```text
//! offset  size  field
//!      0     4  length of what follows (version and payload), u32 little-endian
//!      4     1  protocol version (PROTOCOL_VERSION)
//!      5     …  payload: one message, postcard-encoded (`message.rs`)
//! ```
//!
//! A reader checks the length against the connection's limit before it allocates anything, so a
//! length read from the socket never drives an unbounded allocation; a frame of another version,
//! or a payload that does not decode to exactly one message, is an error that closes the
//! connection (and only it). Cost: one allocation and one copy of the payload per frame.

use std::io::{self, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The protocol's version: a frame of any other is refused.
pub(crate) const PROTOCOL_VERSION: u8 = 1;

/// Room in a frame beyond a stored response's bytes (the message around it, a record's other
/// fields, a checkpoint's key).
pub(crate) const FRAME_OVERHEAD: usize = 64 * 1024;

/// The largest `Hello` (the first frame of a connection, before the limit is agreed).
pub(crate) const HELLO_LIMIT: usize = 4 * 1024;

/// The largest `max_response_bytes` a peer may declare: the builder's own bound
/// (`MAX_RESPONSE_BYTES_LIMIT`, held equal by a test in `store/builder`).
pub(crate) const MAX_DECLARED_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Bytes before the payload: the length and the version.
const HEAD: usize = 5;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The peer closed the connection before a frame began.
    #[error("the connection was closed")]
    Closed,
    /// No frame began within the connection's read timeout.
    #[error("no frame came")]
    Idle,
    #[error("the connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("a frame of {length} bytes is over the connection's limit of {limit}")]
    TooLarge { length: usize, limit: usize },
    #[error("a frame of protocol version {0}; this process speaks version {PROTOCOL_VERSION}")]
    Version(u8),
    #[error("a frame that does not decode: {0}")]
    Malformed(String),
}

/// `message` as one frame.
///
/// # Errors
/// A message postcard cannot encode (none of the protocol's can fail; the error is kept typed).
pub(crate) fn encode(message: &impl Serialize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0; HEAD];
    out[4] = PROTOCOL_VERSION;
    let mut out = postcard::to_extend(message, out)
        .map_err(|error| FrameError::Malformed(error.to_string()))?;
    let length = u32::try_from(out.len() - 4).map_err(|_| FrameError::TooLarge {
        length: out.len(),
        limit: u32::MAX as usize,
    })?;
    out[..4].copy_from_slice(&length.to_le_bytes());
    Ok(out)
}

/// Writes `message` as one frame.
///
/// # Errors
/// The socket's error (a write timeout is `WouldBlock` or `TimedOut`).
pub(crate) fn write(stream: &mut impl Write, message: &impl Serialize) -> Result<(), FrameError> {
    let frame = encode(message)?;
    stream.write_all(&frame)?;
    Ok(())
}

/// Reads one frame of at most `limit` bytes (after its length) and decodes its message.
///
/// # Errors
/// [`FrameError::Closed`] at a clean end before the frame, [`FrameError::Idle`] when the read
/// timeout passed before it began; the others as their names say.
pub(crate) fn read<T: DeserializeOwned>(
    stream: &mut impl Read,
    limit: usize,
) -> Result<T, FrameError> {
    let mut length = [0; 4];
    let mut got = 0;
    while got < length.len() {
        match stream.read(&mut length[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error)
                if got == 0
                    && matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                return Err(FrameError::Idle);
            }
            Err(error) => return Err(error.into()),
        }
    }
    let length = check_length(u32::from_le_bytes(length), limit)?;
    let mut rest = vec![0; length];
    stream.read_exact(&mut rest)?;
    decode_body(&rest)
}

/// Decodes one whole frame held in `bytes` (its length first), of at most `limit` bytes after
/// the length: what [`read`] does with a socket, for the fuzz target and the tests.
///
/// # Errors
/// As for [`read`]; a buffer whose length field does not match its size is malformed.
#[cfg(any(test, feature = "test-support"))]
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, FrameError> {
    let Some((length, rest)) = bytes.split_first_chunk::<4>() else {
        return Err(FrameError::Malformed(
            "shorter than a frame's length".into(),
        ));
    };
    let length = check_length(u32::from_le_bytes(*length), limit)?;
    if rest.len() != length {
        return Err(FrameError::Malformed(format!(
            "a length of {length} bytes before {} bytes",
            rest.len()
        )));
    }
    decode_body(rest)
}

fn check_length(length: u32, limit: usize) -> Result<usize, FrameError> {
    let length = length as usize;
    if length == 0 || length > limit {
        return Err(FrameError::TooLarge { length, limit });
    }
    Ok(length)
}

/// The version byte, then exactly one message.
fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let Some((&version, payload)) = body.split_first() else {
        return Err(FrameError::Malformed("an empty frame".into()));
    };
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version(version));
    }
    let (message, left) = postcard::take_from_bytes(payload)
        .map_err(|error| FrameError::Malformed(error.to_string()))?;
    if !left.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} bytes after the message",
            left.len()
        )));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Message {
        Ping(u64),
        Bytes(Vec<u8>),
    }

    #[test]
    fn a_frame_reads_back_as_its_message() {
        let mut wire = Vec::new();
        write(&mut wire, &Message::Ping(7)).expect("write");
        write(&mut wire, &Message::Bytes(vec![1, 2, 3])).expect("write");
        let mut reader = wire.as_slice();
        assert_eq!(
            read::<Message>(&mut reader, 100).expect("one"),
            Message::Ping(7)
        );
        assert_eq!(
            read::<Message>(&mut reader, 100).expect("two"),
            Message::Bytes(vec![1, 2, 3])
        );
        assert!(matches!(
            read::<Message>(&mut reader, 100),
            Err(FrameError::Closed)
        ));
    }

    #[test]
    fn a_length_over_the_limit_is_refused_before_anything_is_allocated() {
        let mut wire = u32::MAX.to_le_bytes().to_vec();
        wire.push(PROTOCOL_VERSION);
        let error = read::<Message>(&mut wire.as_slice(), 1 << 20).expect_err("too large");
        assert!(
            matches!(error, FrameError::TooLarge { length, .. } if length == u32::MAX as usize)
        );
        let frame = encode(&Message::Bytes(vec![0; 200])).expect("encode");
        assert!(matches!(
            decode::<Message>(&frame, 100),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(decode::<Message>(&frame, 300).is_ok());
    }

    #[test]
    fn another_version_a_torn_frame_and_trailing_bytes_are_errors() {
        let mut frame = encode(&Message::Ping(1)).expect("encode");
        frame[4] = PROTOCOL_VERSION + 1;
        assert!(matches!(
            decode::<Message>(&frame, 100),
            Err(FrameError::Version(_))
        ));
        let frame = encode(&Message::Ping(1)).expect("encode");
        let torn = &frame[..frame.len() - 1];
        assert!(matches!(
            decode::<Message>(torn, 100),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            read::<Message>(&mut &torn[..], 100),
            Err(FrameError::Io(error)) if error.kind() == io::ErrorKind::UnexpectedEof
        ));
        let mut longer = frame.clone();
        longer.push(0);
        let length = u32::try_from(longer.len() - 4).expect("small");
        longer[..4].copy_from_slice(&length.to_le_bytes());
        assert!(matches!(
            decode::<Message>(&longer, 100),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Message>(&[1, 0], 100),
            Err(FrameError::Malformed(_))
        ));
    }
}
