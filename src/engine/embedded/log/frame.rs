//! One frame of the write-ahead log: a fixed header, then the payload, padded to 8 bytes.
//!
//! ```text
//! offset  size  field
//!      0     8  lsn      the frame's log position (little-endian): where it starts in the endless log
//!      8     8  epoch    the boot epoch of the session that wrote it
//!     16     4  length   payload bytes (a padding frame: bytes skipped up to the segment's end)
//!     20     1  kind     1 = batch of changes, 2 = padding to the segment's end, 3 = wrap to the
//!                        ring's start
//!     21     3  zero
//!     24     8  mac      SipHash-1-3-64, keyed by the store's log key, of bytes 0..24 and the payload
//!     32     …  payload  (none for padding)
//! ```
//!
//! The keyed MAC is the checksum: it catches torn and damaged bytes as a CRC would, and a payload
//! (which carries response bodies a client chose) cannot be made to look like a valid frame
//! without the key. The position inside the MAC makes a frame left behind by an earlier lap of
//! the ring invalid where the current lap expects a frame.
//!
//! Decoding is pure and bounded: a header is checked before its payload is read, and a length
//! above the segment's room is refused, so no length read from disk drives an allocation.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;

/// Bytes of a frame header.
pub(crate) const HEADER: usize = 32;
/// Frames start at multiples of this.
pub(crate) const ALIGN: u64 = 8;

/// A frame of changes.
pub(crate) const KIND_BATCH: u8 = 1;
/// A frame that fills the rest of its segment: the next frame starts in the next segment.
pub(crate) const KIND_PADDING: u8 = 2;
/// A frame that skips the rest of the ring's lap: the next frame starts at the ring's start (the
/// writer reuses applied space there rather than growing the file).
pub(crate) const KIND_WRAP: u8 = 3;

/// The key of a store's frame MACs (two halves of a `SipHash` key, kept in the store file's meta).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogKey(pub u64, pub u64);

/// A frame header as found on disk, checked against its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub lsn: u64,
    pub epoch: u64,
    pub length: u32,
    pub kind: u8,
    mac: u64,
}

/// `n` rounded up to a multiple of [`ALIGN`].
pub(crate) fn aligned(n: u64) -> u64 {
    n.div_ceil(ALIGN).saturating_mul(ALIGN)
}

/// Bytes a batch frame with `payload` bytes takes on disk.
pub(crate) fn frame_bytes(payload: usize) -> u64 {
    aligned((HEADER + payload) as u64)
}

fn mac(key: LogKey, head: &[u8], payload: &[u8]) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(key.0, key.1);
    hasher.write(head);
    hasher.write(payload);
    hasher.finish()
}

/// The 24 bytes the MAC covers ahead of the payload.
fn head(lsn: u64, epoch: u64, length: u32, kind: u8) -> [u8; 24] {
    let mut out = [0; 24];
    out[0..8].copy_from_slice(&lsn.to_le_bytes());
    out[8..16].copy_from_slice(&epoch.to_le_bytes());
    out[16..20].copy_from_slice(&length.to_le_bytes());
    out[20] = kind;
    out
}

/// Appends a whole frame (header, payload, zero padding to [`ALIGN`]) to `out`.
pub(crate) fn encode(
    out: &mut Vec<u8>,
    key: LogKey,
    lsn: u64,
    epoch: u64,
    kind: u8,
    payload: &[u8],
) {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let head = head(lsn, epoch, length, kind);
    let start = out.len();
    out.extend_from_slice(&head);
    out.extend_from_slice(&mac(key, &head, payload).to_le_bytes());
    out.extend_from_slice(payload);
    let end = start as u64 + frame_bytes(payload.len());
    out.resize(usize::try_from(end).unwrap_or(out.len()), 0);
}

/// Appends a padding (or wrap) frame covering `room` bytes (at least [`HEADER`]): the rest of a
/// segment (or of the ring's lap).
pub(crate) fn encode_padding(
    out: &mut Vec<u8>,
    key: LogKey,
    lsn: u64,
    epoch: u64,
    kind: u8,
    room: u64,
) {
    let length = u32::try_from(room.saturating_sub(HEADER as u64)).unwrap_or(u32::MAX);
    let head = head(lsn, epoch, length, kind);
    out.extend_from_slice(&head);
    out.extend_from_slice(&mac(key, &head, &[]).to_le_bytes());
}

/// Why the bytes at a position are not the frame the log expects there: the log ends before them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Written at another position (an earlier lap of the ring), or never written.
    Elsewhere,
    /// An unknown kind, or a length past the room left in the segment.
    Malformed,
    /// The MAC does not match: torn, damaged, or not written with this store's key.
    Mac,
}

/// Checks the header in `bytes` (at least [`HEADER`] long) as the frame at `lsn`, with `room`
/// bytes left in its segment and `lap` left in the ring's lap. A padding or wrap frame's MAC is
/// checked here (it has no payload); a batch's is checked by [`check_payload`] once its payload
/// is read.
pub(crate) fn decode_header(
    bytes: &[u8; HEADER],
    key: LogKey,
    lsn: u64,
    room: u64,
    lap: u64,
) -> Result<Header, Invalid> {
    let word = |at: usize| {
        let mut eight = [0; 8];
        eight.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(eight)
    };
    let mut four = [0; 4];
    four.copy_from_slice(&bytes[16..20]);
    let header = Header {
        lsn: word(0),
        epoch: word(8),
        length: u32::from_le_bytes(four),
        kind: bytes[20],
        mac: word(24),
    };
    if header.lsn != lsn {
        return Err(Invalid::Elsewhere);
    }
    if bytes[21..24] != [0; 3] {
        return Err(Invalid::Malformed);
    }
    let total = HEADER as u64 + u64::from(header.length);
    match header.kind {
        KIND_BATCH if frame_bytes(header.length as usize) <= room => Ok(header),
        KIND_PADDING | KIND_WRAP
            if (header.kind == KIND_PADDING && total == room)
                || (header.kind == KIND_WRAP && total == lap) =>
        {
            if mac(key, &bytes[..24], &[]) == header.mac {
                Ok(header)
            } else {
                Err(Invalid::Mac)
            }
        }
        _ => Err(Invalid::Malformed),
    }
}

/// Checks a batch frame's MAC over its header and `payload`.
pub(crate) fn check_payload(header: &Header, key: LogKey, payload: &[u8]) -> Result<(), Invalid> {
    let head = head(header.lsn, header.epoch, header.length, header.kind);
    if mac(key, &head, payload) == header.mac {
        Ok(())
    } else {
        Err(Invalid::Mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: LogKey = LogKey(1, 2);

    fn header_of(bytes: &[u8]) -> [u8; HEADER] {
        let mut header = [0; HEADER];
        header.copy_from_slice(&bytes[..HEADER]);
        header
    }

    #[test]
    fn a_frame_decodes_at_its_own_position_only() {
        let mut out = Vec::new();
        encode(&mut out, KEY, 4096, 3, KIND_BATCH, b"payload");
        assert_eq!(out.len() as u64, frame_bytes(7));
        assert_eq!(out.len() as u64 % ALIGN, 0);
        let header = decode_header(&header_of(&out), KEY, 4096, 1 << 20, 1 << 30).expect("valid");
        assert_eq!((header.lsn, header.epoch, header.length), (4096, 3, 7));
        assert_eq!(check_payload(&header, KEY, b"payload"), Ok(()));
        assert_eq!(
            decode_header(&header_of(&out), KEY, 4096 + (1 << 20), 1 << 20, 1 << 30),
            Err(Invalid::Elsewhere)
        );
    }

    #[test]
    fn a_changed_byte_or_another_key_fails_the_mac() {
        let mut out = Vec::new();
        encode(&mut out, KEY, 0, 1, KIND_BATCH, b"abc");
        let header = decode_header(&header_of(&out), KEY, 0, 4096, 1 << 30).expect("valid");
        assert_eq!(check_payload(&header, KEY, b"abd"), Err(Invalid::Mac));
        assert_eq!(
            check_payload(&header, LogKey(1, 3), b"abc"),
            Err(Invalid::Mac)
        );
        let mut epoch_changed = header_of(&out);
        epoch_changed[8] ^= 1;
        let header = decode_header(&epoch_changed, KEY, 0, 4096, 1 << 30).expect("header shape");
        assert_eq!(check_payload(&header, KEY, b"abc"), Err(Invalid::Mac));
    }

    #[test]
    fn a_length_past_the_segment_is_refused_before_any_read() {
        let mut out = Vec::new();
        encode(&mut out, KEY, 0, 1, KIND_BATCH, &[0; 100]);
        assert_eq!(
            decode_header(&header_of(&out), KEY, 0, 64, 1 << 30),
            Err(Invalid::Malformed)
        );
        let mut unknown = header_of(&out);
        unknown[20] = 9;
        assert_eq!(
            decode_header(&unknown, KEY, 0, 4096, 1 << 30),
            Err(Invalid::Malformed)
        );
    }

    #[test]
    fn padding_must_cover_exactly_the_rest_of_its_segment() {
        let mut out = Vec::new();
        encode_padding(&mut out, KEY, 800, 2, KIND_PADDING, 224);
        assert_eq!(out.len(), HEADER);
        let header = decode_header(&header_of(&out), KEY, 800, 224, 9000).expect("valid");
        assert_eq!(header.kind, KIND_PADDING);
        assert_eq!(
            decode_header(&header_of(&out), KEY, 800, 232, 9000),
            Err(Invalid::Malformed)
        );
        assert_eq!(
            decode_header(&header_of(&out), LogKey(9, 9), 800, 224, 9000),
            Err(Invalid::Mac)
        );
        // A wrap covers the rest of the lap, not of the segment.
        let mut wrap = Vec::new();
        encode_padding(&mut wrap, KEY, 800, 2, KIND_WRAP, 9000);
        assert!(decode_header(&header_of(&wrap), KEY, 800, 224, 9000).is_ok());
        assert_eq!(
            decode_header(&header_of(&wrap), KEY, 800, 9000, 9008),
            Err(Invalid::Malformed)
        );
    }
}
