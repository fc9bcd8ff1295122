//! The write-ahead log: frames appended to a ring of preallocated segments in one file.
//!
//! Positions (LSNs) count bytes in an endless log; the frame at LSN `p` lives at file offset
//! `HEADER_BYTES + p % ring`, where the ring is `segments × segment_bytes`. A frame never crosses a
//! segment boundary (so it never wraps around the ring's end): when the next frame does not fit in
//! the rest of its segment, a padding frame fills the rest (or, under [`frame::HEADER`] bytes, the
//! rest is skipped without one). In the first lap the file is extended with zeros a chunk at a
//! time ahead of the frames, so after the first lap every sync writes data only, no file-size
//! metadata.
//!
//! The redb file keeps the *applied* position: everything before it is in redb. The log may
//! overwrite the ring only behind it ([`Log::room`]), so the frames from the applied position to
//! the end are always intact. Recovery ([`Log::scan`]) reads frames from the applied position
//! while each is the one expected there: at its own position, of a known kind, inside its segment,
//! MAC valid, and written by a session no older than the frame before it. The first frame that is
//! not ends the log: a torn or unsynced tail is cut there, and since the writer syncs a batch's
//! frames before answering any of it, whatever was acknowledged is before the cut. The epoch rule
//! covers a subtle case: after a cut, new frames overwrite the tail, and a whole frame of the
//! crashed session, written after the torn one, may sit just where the new frames end; its epoch
//! is older than theirs, so it is not taken for a continuation. For the same reason the redb
//! file keeps, with the applied position, the epoch of the session that moved it: the first frame
//! read must be of that session or a later one (the new frames may end exactly at the applied
//! position, with such a leftover right after them).
//!
//! The file header (the first [`HEADER_BYTES`]):
//!
//! ```text
//! offset  size  field
//!      0     8  magic "tollglog"
//!      8     4  version (1), little-endian
//!     12     4  segment bytes
//!     16     4  segments
//!     20     4  zero
//!     24     8  key check: SipHash-1-3-64 of "tollgate log" under the store's log key
//!     32  4064  zero
//! ```

pub(crate) mod change;
mod file;
pub(crate) mod frame;
pub(crate) mod overlay;
pub(crate) mod recovery;
pub(crate) mod view;

use std::hash::Hasher;

use super::storage::Device as StorageBackend;
use siphasher::sip::SipHasher13;

pub(crate) use file::LogFile;
pub(crate) use frame::LogKey;
use frame::{HEADER, Invalid, KIND_BATCH, KIND_PADDING, KIND_WRAP};

use crate::error::Error;

/// Bytes before the ring: the file header.
pub(crate) const HEADER_BYTES: u64 = HEADER_LEN as u64;
const HEADER_LEN: usize = 4096;
const MAGIC: &[u8; 8] = b"tollglog";
const VERSION: u32 = 1;

/// The file grows by this much at a time in the first lap (zeros written ahead of the frames).
const ALLOCATION_CHUNK: u64 = 256 * 1024;

/// Smallest segment accepted (a frame must fit a few records).
pub(crate) const MIN_SEGMENT_BYTES: u32 = 4096;
/// Fewest segments: the writer fills one while the applier frees another.
pub(crate) const MIN_SEGMENTS: u32 = 2;

/// The log's shape, fixed when its file is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub segment_bytes: u32,
    pub segments: u32,
}

impl Geometry {
    /// A valid geometry: segments of at least [`MIN_SEGMENT_BYTES`] (a multiple of 8), at least
    /// [`MIN_SEGMENTS`] of them.
    pub(crate) fn new(segment_bytes: u32, segments: u32) -> Result<Self, Error> {
        if segment_bytes < MIN_SEGMENT_BYTES
            || u64::from(segment_bytes) % frame::ALIGN != 0
            || segments < MIN_SEGMENTS
        {
            return Err(Error::InvalidArgument(format!(
                "a log of {segments} segments of {segment_bytes} bytes (at least \
                 {MIN_SEGMENTS} segments of at least {MIN_SEGMENT_BYTES} bytes, a multiple of 8)"
            )));
        }
        Ok(Self {
            segment_bytes,
            segments,
        })
    }

    /// Bytes of the ring.
    pub(crate) fn ring(self) -> u64 {
        u64::from(self.segment_bytes) * u64::from(self.segments)
    }

    /// Largest payload of one frame.
    pub(crate) fn max_payload(self) -> usize {
        self.segment_bytes as usize - HEADER
    }

    /// Bytes left in the ring's lap of `lsn`, from `lsn`.
    fn lap(self, lsn: u64) -> u64 {
        self.ring() - lsn % self.ring()
    }

    /// Bytes left in the segment of `lsn`, from `lsn`.
    fn room(self, lsn: u64) -> u64 {
        let segment = u64::from(self.segment_bytes);
        segment - lsn % segment
    }

    /// The file offset of `lsn`.
    fn offset(self, lsn: u64) -> u64 {
        HEADER_BYTES + lsn % self.ring()
    }
}

/// The check of `key` kept in the header, so that a log of another store is not read.
fn key_check(key: LogKey) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(key.0, key.1);
    hasher.write(b"tollgate log");
    hasher.finish()
}

fn storage(error: std::io::Error) -> Error {
    Error::storage(error)
}

/// Where a scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// The position after the last frame read.
    pub end: u64,
    /// The epoch of the last frame read (the floor the scan started with if none).
    pub floor: u64,
    /// Whether the log ends there.
    pub complete: bool,
}

/// An open log file: appends at its end, reads back for recovery.
pub(crate) struct Log {
    device: Box<dyn StorageBackend>,
    geometry: Geometry,
    key: LogKey,
    /// Where the next frame goes.
    end: u64,
    /// File bytes already written once (the header and the segments entered so far).
    allocated: u64,
    /// A frame being assembled.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("geometry", &self.geometry)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Writes a new, empty log on `device` (whatever it held is replaced) and syncs it.
    ///
    /// # Errors
    /// The device's I/O errors.
    pub(crate) fn create(
        device: Box<dyn StorageBackend>,
        geometry: Geometry,
        key: LogKey,
    ) -> Result<Self, Error> {
        let mut header = vec![0; HEADER_LEN];
        header[0..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&geometry.segment_bytes.to_le_bytes());
        header[16..20].copy_from_slice(&geometry.segments.to_le_bytes());
        header[24..32].copy_from_slice(&key_check(key).to_le_bytes());
        device.set_len(HEADER_BYTES).map_err(storage)?;
        device.write(0, &header).map_err(storage)?;
        device.sync_data().map_err(storage)?;
        Ok(Self {
            device,
            geometry,
            key,
            end: 0,
            allocated: HEADER_BYTES,
            scratch: Vec::new(),
        })
    }

    /// Opens the log on `device`, checking that it is a tollgate log written with `key`. Its
    /// end is unknown until [`Log::scan`] finds it.
    ///
    /// # Errors
    /// [`Error::NotAStore`] for a file that is not a log, [`Error::Corrupted`] for a log of
    /// another store or a damaged header, and the device's I/O errors.
    pub(crate) fn open(device: Box<dyn StorageBackend>, key: LogKey) -> Result<Self, Error> {
        let len = device.len().map_err(storage)?;
        if len < HEADER_BYTES {
            return Err(Error::Corrupted(format!(
                "the log file is {len} bytes, shorter than its header"
            )));
        }
        let mut header = [0; 32];
        device.read(0, &mut header).map_err(storage)?;
        if &header[0..8] != MAGIC {
            return Err(Error::NotAStore("the log file has no log header".into()));
        }
        let field = |at: usize| {
            let mut four = [0; 4];
            four.copy_from_slice(&header[at..at + 4]);
            u32::from_le_bytes(four)
        };
        if field(8) != VERSION {
            return Err(Error::Corrupted(format!(
                "the log file is of version {}, this build reads {VERSION}",
                field(8)
            )));
        }
        let geometry = Geometry::new(field(12), field(16))
            .map_err(|_| Error::Corrupted("the log file's geometry is invalid".into()))?;
        let mut check = [0; 8];
        check.copy_from_slice(&header[24..32]);
        if u64::from_le_bytes(check) != key_check(key) {
            return Err(Error::Corrupted(
                "the log file belongs to another store (its key does not match)".into(),
            ));
        }
        Ok(Self {
            device,
            geometry,
            key,
            end: 0,
            allocated: len,
            scratch: Vec::new(),
        })
    }

    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Where the next frame goes.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Reads the frames from `from` (the applied position) to the end of the log, passing each
    /// batch's position, epoch and payload to `visit`, and sets the log's end after the last one.
    /// Returns the end. Epochs must stay within `epoch_floor` (the session that last moved the
    /// applied position: a frame below it was left behind by an older one) and `epoch_ceiling`
    /// (the session now opening: a frame above it is not this store's).
    ///
    /// # Errors
    /// The device's I/O errors and whatever `visit` returns.
    pub(crate) fn scan(
        &mut self,
        from: u64,
        epoch_floor: u64,
        epoch_ceiling: u64,
        visit: impl FnMut(u64, u64, &[u8]) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let mut visit = visit;
        self.scan_some(from, epoch_floor, epoch_ceiling, |lsn, epoch, payload| {
            visit(lsn, epoch, payload).map(|()| true)
        })
        .map(|scanned| scanned.end)
    }

    /// [`Log::scan`] that stops after the frame for which `visit` returns `false` (the log's end
    /// is then left where it was). Returns where it stopped, the epoch of the last frame read
    /// (`epoch_floor` if none), and whether that is the log's end.
    ///
    /// # Errors
    /// The device's I/O errors and whatever `visit` returns.
    pub(crate) fn scan_some(
        &mut self,
        from: u64,
        epoch_floor: u64,
        epoch_ceiling: u64,
        mut visit: impl FnMut(u64, u64, &[u8]) -> Result<bool, Error>,
    ) -> Result<Scanned, Error> {
        let len = self.device.len().map_err(storage)?;
        let mut lsn = from;
        let mut epoch_floor = epoch_floor;
        let mut payload = Vec::new();
        // At most one lap: the writer never has more than a ring of frames past the applied
        // position.
        while lsn - from < self.geometry.ring() {
            let room = self.geometry.room(lsn);
            if room < HEADER as u64 {
                lsn += room;
                continue;
            }
            let offset = self.geometry.offset(lsn);
            if offset + HEADER as u64 > len {
                break;
            }
            let mut header = [0; HEADER];
            self.device.read(offset, &mut header).map_err(storage)?;
            let lap = self.geometry.lap(lsn);
            let header = match frame::decode_header(&header, self.key, lsn, room, lap) {
                Ok(header) => header,
                Err(Invalid::Elsewhere | Invalid::Malformed | Invalid::Mac) => break,
            };
            if header.epoch < epoch_floor || header.epoch > epoch_ceiling {
                break;
            }
            if header.kind == KIND_PADDING || header.kind == KIND_WRAP {
                epoch_floor = header.epoch;
                lsn += if header.kind == KIND_WRAP { lap } else { room };
                continue;
            }
            // Bounded: `decode_header` checked the length against the segment's room.
            let size = header.length as usize;
            if offset + (HEADER + size) as u64 > len {
                break;
            }
            payload.resize(size, 0);
            self.device
                .read(offset + HEADER as u64, &mut payload)
                .map_err(storage)?;
            if frame::check_payload(&header, self.key, &payload).is_err() {
                break;
            }
            let more = visit(lsn, header.epoch, &payload)?;
            epoch_floor = header.epoch;
            lsn += frame::frame_bytes(size);
            if !more {
                return Ok(Scanned {
                    end: lsn,
                    floor: epoch_floor,
                    complete: false,
                });
            }
        }
        self.end = lsn;
        Ok(Scanned {
            end: lsn,
            floor: epoch_floor,
            complete: true,
        })
    }

    /// Bytes that appending a frame of `payload` bytes advances the end by (with the padding it
    /// may need first).
    pub(crate) fn advance(&self, payload: usize) -> u64 {
        let needed = frame::frame_bytes(payload);
        let room = self.geometry.room(self.end);
        if needed <= room {
            needed
        } else {
            room + needed
        }
    }

    /// Whether a frame of `payload` bytes can be appended without overwriting a frame at or
    /// after `applied` (which recovery may still need).
    pub(crate) fn room(&self, applied: u64, payload: usize) -> bool {
        payload <= self.geometry.max_payload()
            && self.end + self.advance(payload) <= applied + self.geometry.ring()
    }

    /// Writes a batch frame at the end (after a padding frame if it does not fit the rest of the
    /// segment) and returns its position. Not durable until [`Log::sync`]. `applied` is the
    /// applied position: when the frame would grow the file and the ring's start is free (applied)
    /// far enough, a wrap frame sends the log back there instead, so the file stays about as
    /// large as the most the applier ever lagged behind, not the whole ring.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a payload over the segment's room (callers check
    /// [`Log::room`] first), and the device's I/O errors.
    pub(crate) fn append(
        &mut self,
        epoch: u64,
        payload: &[u8],
        applied: u64,
    ) -> Result<u64, Error> {
        if payload.len() > self.geometry.max_payload() {
            return Err(Error::InvalidArgument(format!(
                "a log frame of {} bytes (at most {})",
                payload.len(),
                self.geometry.max_payload()
            )));
        }
        let needed = frame::frame_bytes(payload.len());
        let room = self.geometry.room(self.end);
        let lap = self.geometry.lap(self.end);
        let start = if needed > room {
            self.end + room
        } else {
            self.end
        };
        let grows = self.geometry.offset(start) + needed > self.allocated;
        // Back to the ring's start only if at least half the file is free there: a log whose
        // applier lags by more than that grows instead (to about twice the lag), rather than
        // making writers wait for the applier at the start of every lap.
        let half_file = (self.allocated.saturating_sub(HEADER_BYTES) / 2).max(needed);
        if grows
            && room >= HEADER as u64
            && self.end + lap + half_file <= applied + self.geometry.ring()
        {
            self.scratch.clear();
            frame::encode_padding(&mut self.scratch, self.key, self.end, epoch, KIND_WRAP, lap);
            self.write_at(self.end)?;
            self.end += lap;
        } else if needed > room {
            if room >= HEADER as u64 {
                self.scratch.clear();
                frame::encode_padding(
                    &mut self.scratch,
                    self.key,
                    self.end,
                    epoch,
                    KIND_PADDING,
                    room,
                );
                self.write_at(self.end)?;
            }
            self.end += room;
        }
        let lsn = self.end;
        self.scratch.clear();
        frame::encode(&mut self.scratch, self.key, lsn, epoch, KIND_BATCH, payload);
        self.write_at(lsn)?;
        self.end += needed;
        Ok(lsn)
    }

    /// Writes the scratch frame at `lsn`. In the first lap, the file is first extended with zeros
    /// up to the end of the [`ALLOCATION_CHUNK`] the frame ends in, so that a sync changes the
    /// file's size at most once per chunk, and never after the first lap.
    fn write_at(&mut self, lsn: u64) -> Result<(), Error> {
        let offset = self.geometry.offset(lsn);
        let end = offset + self.scratch.len() as u64;
        if end > self.allocated {
            let chunk = ALLOCATION_CHUNK.min(u64::from(self.geometry.segment_bytes));
            let ring_end = HEADER_BYTES + self.geometry.ring();
            let target =
                (HEADER_BYTES + (end - HEADER_BYTES).div_ceil(chunk) * chunk).min(ring_end);
            let zeros = vec![0; usize::try_from(chunk).unwrap_or(4096)];
            let mut at = self.allocated.max(HEADER_BYTES);
            while at < target {
                let n = (target - at).min(chunk);
                self.device
                    .write(at, &zeros[..usize::try_from(n).unwrap_or(0)])
                    .map_err(storage)?;
                at += n;
            }
            self.allocated = at;
        }
        self.device.write(offset, &self.scratch).map_err(storage)
    }

    /// Makes every frame appended so far durable.
    ///
    /// # Errors
    /// The device's I/O errors (after which nothing appended since the last sync is known to be
    /// durable).
    pub(crate) fn sync(&self) -> Result<(), Error> {
        self.device.sync_data().map_err(storage)
    }
}

#[cfg(test)]
mod tests;
