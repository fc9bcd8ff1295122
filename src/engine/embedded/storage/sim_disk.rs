//! A simulated disk for crash and I/O-failure tests (feature `test-support`).
//!
//! It implements redb's `StorageBackend` over memory and keeps two images apart, as redb's own
//! `tests/it/crash_consistency.rs` does:
//! - **live**: every write applied at once (what the running process reads back);
//! - **durable**: the live image as of the last completed `sync_data`.
//!
//! Writes since the last sync are also kept as a list, so a simulated power cut can leave behind
//! any mix of them that redb's documented media assumptions allow (`docs/design.md`, "Assumptions
//! about underlying media"): single bytes are atomic, a completed sync makes earlier writes
//! durable, and a write changes no byte outside its range. [`SimDisk::crash_image`] keeps each
//! unsynced write whole, drops it, or keeps a random subset of its 512-byte sectors (a torn
//! write), and keeps or loses an unsynced change of the file's length.
//!
//! Two ways to fail:
//! - [`SimDisk::cut_power_at_sync`]: the n-th sync never completes. It and every later operation
//!   report an I/O error, as if the process had died mid-fsync; nothing after it reaches the disk.
//! - [`SimDisk::fail_at_operation`]: the n-th mutating operation (write, length change or sync)
//!   fails with an I/O error and so does every later one, until [`SimDisk::heal`]. The live image
//!   keeps what was written before the failure, as a page cache would.
//!
//! And a third, which is not a failure of the device: [`SimDisk::limit_size`] makes the disk full
//! at a given image size. A write or a length change that would grow the image past it fails
//! with [`std::io::ErrorKind::StorageFull`] (and changes nothing); writes within the image still
//! succeed, as on a real full filesystem, and [`SimDisk::unlimit_size`] gives the space back.
//!
//! A disk holds two files, as a store's directory does: the store's (the handle [`SimDisk::new`]
//! returns) and its write-ahead log's ([`SimDisk::log_file`]). They share the power, the count of
//! syncs and operations (a cut at sync `n` counts the syncs of both), the injected failures and
//! the space; each keeps its own images, and [`SimDisk::crashed`] gives both at once what one
//! power cut could leave.
//!
//! Cost: a sync copies the whole image, so this is for small test stores only.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// Sector size for torn writes.
const SECTOR: usize = 512;

/// An in-memory disk that can lose power or fail operations on cue. Clones share the disk.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
    /// Wakes syncs held by [`SimDisk::hold_syncs`].
    sync_gate: Arc<Condvar>,
    /// Which of the disk's files this handle reads and writes: 0 the store's, 1 its log's.
    file: usize,
}

/// One file's bytes.
#[derive(Debug, Default)]
struct FileImage {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last completed sync, oldest first: (offset, bytes).
    unsynced: Vec<(usize, Vec<u8>)>,
}

impl FileImage {
    /// What a power cut now could leave of this file, chosen by `random` (see
    /// [`SimDisk::crash_image`]).
    fn crash_image(&self, random: Option<&mut SplitMix>) -> Vec<u8> {
        let mut image = self.durable.clone();
        let Some(random) = random else {
            return image;
        };
        let length = if random.next() % 2 == 0 {
            self.live.len()
        } else {
            self.durable.len()
        };
        image.resize(length, 0);
        for (offset, bytes) in &self.unsynced {
            match random.next() % 3 {
                0 => {}
                1 => overlay(&mut image, *offset, bytes),
                _ => {
                    for (index, sector) in bytes.chunks(SECTOR).enumerate() {
                        if random.next() % 2 == 0 {
                            overlay(&mut image, offset + index * SECTOR, sector);
                        }
                    }
                }
            }
        }
        image
    }
}

#[derive(Debug, Default)]
struct DiskState {
    files: [FileImage; 2],
    /// Completed syncs.
    syncs: u64,
    /// Mutating operations attempted (writes, length changes, syncs).
    operations: u64,
    /// The sync (1-based, counted over the disk's life) that never completes.
    power_cut_at_sync: Option<u64>,
    /// The mutating operation (1-based) from which every operation fails.
    fail_from_operation: Option<u64>,
    /// Power is gone: every operation fails and nothing changes any more.
    dead: bool,
    /// Operations are failing (I/O failure injection), until healed.
    failing: bool,
    /// Syncs are held: each waits until a permit is given (see [`SimDisk::hold_syncs`]).
    holding_syncs: bool,
    /// Held syncs allowed to complete.
    sync_permits: u64,
    /// Syncs waiting at the gate.
    syncs_waiting: u64,
    /// The largest the image may grow (a full disk), if limited.
    size_limit: Option<usize>,
    /// Writes and length changes refused for want of space.
    refused_for_space: u64,
}

impl SimDisk {
    /// An empty disk (redb creates a new database on it).
    pub fn new() -> Self {
        Self::default()
    }

    /// A disk holding `image` as the store's file (and no log), durable as if just synced.
    pub fn from_image(image: Vec<u8>) -> Self {
        Self::from_images(image, Vec::new())
    }

    /// A disk holding `store` as the store's file and `log` as its log's, durable as if just
    /// synced.
    pub fn from_images(store: Vec<u8>, log: Vec<u8>) -> Self {
        let disk = Self::default();
        {
            let mut state = disk.state.lock();
            for (file, image) in state.files.iter_mut().zip([store, log]) {
                file.durable.clone_from(&image);
                file.live = image;
            }
        }
        disk
    }

    /// The disk's other file, for the store's write-ahead log (the same disk: power, syncs,
    /// failures and space are shared). From a log handle, the store's file again.
    #[must_use]
    pub fn log_file(&self) -> SimDisk {
        SimDisk {
            state: Arc::clone(&self.state),
            sync_gate: Arc::clone(&self.sync_gate),
            file: 1 - self.file,
        }
    }

    /// Whether this handle's file holds any bytes (a log never written has none).
    pub fn has_bytes(&self) -> bool {
        !self.state.lock().files[self.file].live.is_empty()
    }

    /// A new disk holding what one power cut now could leave of both files: as
    /// [`SimDisk::crash_image`], the store's file first and then the log's from one stream of
    /// `seed`. `seed == 0` keeps no unsynced write of either.
    #[must_use]
    pub fn crashed(&self, seed: u64) -> SimDisk {
        let (store, log) = {
            let state = self.state.lock();
            let mut random = SplitMix(seed);
            let store = state.files[0].crash_image((seed != 0).then_some(&mut random));
            let log = state.files[1].crash_image((seed != 0).then_some(&mut random));
            (store, log)
        };
        SimDisk::from_images(store, log)
    }

    /// Syncs completed so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Mutating operations attempted so far (writes, length changes and syncs).
    pub fn operations(&self) -> u64 {
        self.state.lock().operations
    }

    /// Writes made to this file since its last completed sync (what a power cut now could tear
    /// or lose).
    pub fn unsynced_writes(&self) -> usize {
        self.state.lock().files[self.file].unsynced.len()
    }

    /// Whether the simulated power cut has happened.
    pub fn is_dead(&self) -> bool {
        self.state.lock().dead
    }

    /// Whether injected failures are in effect (the failing operation has been reached).
    pub fn is_failing(&self) -> bool {
        self.state.lock().failing
    }

    /// Cuts the power during sync number `sync` (1-based, counting every sync since the disk was
    /// created): that sync reports an error and the disk accepts nothing more.
    pub fn cut_power_at_sync(&self, sync: u64) {
        self.state.lock().power_cut_at_sync = Some(sync);
    }

    /// Cuts the power now: every later read, write and sync fails (the process sees a dead disk).
    pub fn cut_power_now(&self) {
        self.state.lock().dead = true;
    }

    /// Makes mutating operation number `operation` (1-based, counting since the disk was
    /// created) and every operation after it fail with an I/O error, until [`SimDisk::heal`].
    pub fn fail_at_operation(&self, operation: u64) {
        self.state.lock().fail_from_operation = Some(operation);
    }

    /// Makes every later sync wait (blocking the thread that commits) until
    /// [`SimDisk::allow_syncs`] lets it through or [`SimDisk::release_syncs`] ends the hold. With
    /// the writer parked inside a commit, a test can queue commands deterministically behind it.
    pub fn hold_syncs(&self) {
        let mut state = self.state.lock();
        state.holding_syncs = true;
        state.sync_permits = 0;
    }

    /// Lets `count` more held syncs complete; syncs stay held after those.
    pub fn allow_syncs(&self, count: u64) {
        self.state.lock().sync_permits += count;
        self.sync_gate.notify_all();
    }

    /// Ends [`SimDisk::hold_syncs`]: every waiting and later sync completes.
    pub fn release_syncs(&self) {
        self.state.lock().holding_syncs = false;
        self.sync_gate.notify_all();
    }

    /// Syncs waiting at the gate of [`SimDisk::hold_syncs`] right now.
    pub fn syncs_waiting(&self) -> u64 {
        self.state.lock().syncs_waiting
    }

    /// Fills the disk: from now on its files together cannot grow past `bytes` (nor past their
    /// current size, if that is larger). Growing writes and length changes fail with
    /// `StorageFull`.
    pub fn limit_size(&self, bytes: u64) {
        let mut state = self.state.lock();
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        state.size_limit = Some(bytes.max(state.used()));
    }

    /// Fills the disk at its files' current size ([`SimDisk::limit_size`]).
    pub fn fill(&self) {
        self.limit_size(0);
    }

    /// Gives the space back: the image may grow again.
    pub fn unlimit_size(&self) {
        self.state.lock().size_limit = None;
    }

    /// Writes and length changes refused so far for want of space.
    pub fn refused_for_space(&self) -> u64 {
        self.state.lock().refused_for_space
    }

    /// The current size of this file's image (what the running process sees).
    pub fn size(&self) -> u64 {
        self.state.lock().files[self.file].live.len() as u64
    }

    /// Ends injected failures: later operations succeed again on the live image.
    pub fn heal(&self) {
        let mut state = self.state.lock();
        state.failing = false;
        state.fail_from_operation = None;
    }

    /// This file's image as of its last completed sync.
    pub fn durable_image(&self) -> Vec<u8> {
        self.state.lock().files[self.file].durable.clone()
    }

    /// What a power cut now could leave of this file: the durable image plus, chosen by `seed`,
    /// some of the unsynced writes, each kept whole, dropped, or torn at sector boundaries, and
    /// the unsynced file length kept or lost. `seed == 0` keeps no unsynced write.
    pub fn crash_image(&self, seed: u64) -> Vec<u8> {
        let state = self.state.lock();
        let mut random = SplitMix(seed);
        state.files[self.file].crash_image((seed != 0).then_some(&mut random))
    }

    /// Counts a mutating operation and reports whether it must fail.
    fn start_operation(state: &mut DiskState) -> Result<(), std::io::Error> {
        if state.dead {
            return Err(power_lost());
        }
        state.operations += 1;
        if state
            .fail_from_operation
            .is_some_and(|from| state.operations >= from)
        {
            state.failing = true;
        }
        if state.failing {
            return Err(std::io::Error::other("simulated I/O failure"));
        }
        Ok(())
    }
}

/// Writes `bytes` at `offset` into `image`, clipped to its length.
fn overlay(image: &mut [u8], offset: usize, bytes: &[u8]) {
    if offset >= image.len() {
        return;
    }
    let end = image.len().min(offset + bytes.len());
    image[offset..end].copy_from_slice(&bytes[..end - offset]);
}

impl DiskState {
    /// Bytes the files take.
    fn used(&self) -> usize {
        self.files.iter().map(|file| file.live.len()).sum()
    }
}

/// Refuses growing `file` to `end` bytes on a full disk.
fn check_space(state: &mut DiskState, file: usize, end: usize) -> Result<(), std::io::Error> {
    let current = state.files[file].live.len();
    if end > current
        && state
            .size_limit
            .is_some_and(|limit| state.used() - current + end > limit)
    {
        state.refused_for_space += 1;
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "simulated disk full",
        ));
    }
    Ok(())
}

fn power_lost() -> std::io::Error {
    std::io::Error::other("simulated power loss")
}

fn to_index(value: u64) -> Result<usize, std::io::Error> {
    usize::try_from(value).map_err(|_| std::io::Error::other("offset beyond the address space"))
}

impl redb::StorageBackend for SimDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        let state = self.state.lock();
        if state.dead {
            return Err(power_lost());
        }
        Ok(state.files[self.file].live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let state = self.state.lock();
        if state.dead {
            return Err(power_lost());
        }
        let start = to_index(offset)?;
        let bytes = start
            .checked_add(out.len())
            .and_then(|end| state.files[self.file].live.get(start..end))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut state = self.state.lock();
        Self::start_operation(&mut state)?;
        let len = to_index(len)?;
        check_space(&mut state, self.file, len)?;
        state.files[self.file].live.resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut state = self.state.lock();
        if state.holding_syncs {
            state.syncs_waiting += 1;
            while state.holding_syncs && state.sync_permits == 0 {
                self.sync_gate.wait(&mut state);
            }
            state.syncs_waiting -= 1;
            if state.holding_syncs {
                state.sync_permits -= 1;
            }
        }
        Self::start_operation(&mut state)?;
        if state.power_cut_at_sync == Some(state.syncs + 1) {
            state.dead = true;
            return Err(power_lost());
        }
        state.syncs += 1;
        let FileImage {
            live,
            durable,
            unsynced,
        } = &mut state.files[self.file];
        durable.clone_from(live);
        unsynced.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut state = self.state.lock();
        Self::start_operation(&mut state)?;
        let start = to_index(offset)?;
        let end = start
            .checked_add(data.len())
            .ok_or_else(|| std::io::Error::other("write beyond the address space"))?;
        check_space(&mut state, self.file, end)?;
        let file = &mut state.files[self.file];
        if end > file.live.len() {
            file.live.resize(end, 0);
        }
        file.live[start..end].copy_from_slice(data);
        file.unsynced.push((start, data.to_vec()));
        Ok(())
    }
}

/// A tiny deterministic generator (`SplitMix64`) for choosing what survives a crash.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use redb::StorageBackend;

    use super::*;

    #[test]
    fn power_cut_keeps_only_synced_bytes() {
        let disk = SimDisk::new();
        disk.write(0, b"abcd").unwrap();
        disk.sync_data().unwrap();
        disk.write(0, b"XY").unwrap();
        disk.cut_power_at_sync(2);
        assert!(disk.sync_data().is_err());
        assert!(disk.is_dead());
        assert!(disk.write(0, b"zz").is_err());
        assert_eq!(disk.durable_image(), b"abcd");
        assert_eq!(disk.crash_image(0), b"abcd");
    }

    #[test]
    fn crash_images_mix_unsynced_writes_within_their_ranges() {
        let disk = SimDisk::new();
        disk.write(0, &[0u8; 2048]).unwrap();
        disk.sync_data().unwrap();
        disk.write(0, &[7u8; 2048]).unwrap();
        let mut seen_torn = false;
        for seed in 1..64 {
            let image = disk.crash_image(seed);
            assert_eq!(image.len(), 2048);
            // Every sector is wholly old or wholly new.
            for sector in image.chunks(SECTOR) {
                assert!(sector.iter().all(|b| *b == sector[0]));
            }
            let new = image.chunks(SECTOR).filter(|s| s[0] == 7).count();
            seen_torn |= new > 0 && new < 4;
        }
        assert!(seen_torn, "some seed tears the write");
    }

    #[test]
    fn held_syncs_wait_for_a_permit() {
        let disk = SimDisk::new();
        disk.hold_syncs();
        let syncing = {
            let disk = disk.clone();
            std::thread::spawn(move || disk.sync_data())
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while disk.syncs_waiting() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the sync never reached the gate"
            );
            std::thread::yield_now();
        }
        assert_eq!(disk.syncs(), 0, "a held sync does not complete");
        disk.allow_syncs(1);
        syncing.join().unwrap().unwrap();
        assert_eq!(disk.syncs(), 1);
        disk.release_syncs();
        disk.sync_data().unwrap();
        assert_eq!(disk.syncs(), 2);
    }

    #[test]
    fn a_full_disk_refuses_growth_until_space_returns() {
        let disk = SimDisk::new();
        disk.write(0, &[1u8; 100]).unwrap();
        disk.fill();
        let full = disk.write(90, &[2u8; 20]).unwrap_err();
        assert_eq!(full.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(
            disk.set_len(101).unwrap_err().kind(),
            std::io::ErrorKind::StorageFull
        );
        // Within the image: fine, as on a real filesystem.
        disk.write(0, &[3u8; 100]).unwrap();
        disk.set_len(50).unwrap();
        disk.set_len(100).unwrap();
        disk.sync_data().unwrap();
        assert_eq!(disk.refused_for_space(), 2);
        assert!(!disk.is_failing(), "a full disk is not a failing one");
        disk.unlimit_size();
        disk.write(90, &[2u8; 20]).unwrap();
        assert_eq!(disk.size(), 110);
    }

    #[test]
    fn injected_failures_are_sticky_until_healed() {
        let disk = SimDisk::new();
        disk.fail_at_operation(2);
        disk.write(0, b"a").unwrap();
        assert!(disk.write(1, b"b").is_err());
        assert!(disk.sync_data().is_err());
        assert!(disk.is_failing());
        disk.heal();
        disk.write(1, b"c").unwrap();
        let mut out = [0u8; 2];
        disk.read(0, &mut out).unwrap();
        assert_eq!(&out, b"ac");
    }
}
