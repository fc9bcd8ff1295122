//! The log's unit tests: frames across segments and laps, the end of the log, epochs, foreign
//! logs, and a model of sessions with crashes.

use super::*;
use crate::engine::embedded::storage::SimDisk;

const KEY: LogKey = LogKey(11, 12);

fn small() -> Geometry {
    Geometry::new(4096, 3).expect("geometry")
}

fn frames(log: &mut Log, from: u64, ceiling: u64) -> Vec<(u64, u64, Vec<u8>)> {
    frames_from(log, from, 0, ceiling)
}

fn frames_from(log: &mut Log, from: u64, floor: u64, ceiling: u64) -> Vec<(u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    log.scan(from, floor, ceiling, |lsn, epoch, payload| {
        out.push((lsn, epoch, payload.to_vec()));
        Ok(())
    })
    .expect("scan");
    out
}

#[test]
fn appended_frames_are_read_back_in_order_across_segments_and_laps() {
    let disk = SimDisk::new();
    let mut log = Log::create(Box::new(disk.clone()), small(), KEY).expect("create");
    let mut written = Vec::new();
    let mut applied = 0;
    for i in 0..40u32 {
        let payload = vec![u8::try_from(i).unwrap_or(0); 300 + 97 * (i as usize % 7)];
        if !log.room(applied, payload.len()) {
            // As the applier would: everything so far is applied.
            applied = log.end();
            written.clear();
        }
        let lsn = log.append(1, &payload, applied).expect("append");
        written.push((lsn, 1, payload));
    }
    log.sync().expect("sync");
    let mut reopened = Log::open(Box::new(disk), KEY).expect("open");
    assert_eq!(frames(&mut reopened, applied, 1), written);
    assert_eq!(reopened.end(), log.end());
    assert!(log.end() > small().ring(), "the test wraps the ring");
}

#[test]
fn the_log_ends_at_the_first_frame_not_written_in_this_lap() {
    let disk = SimDisk::new();
    let mut log = Log::create(Box::new(disk.clone()), small(), KEY).expect("create");
    log.append(1, b"one", 0).expect("append");
    log.append(1, b"two", 0).expect("append");
    log.sync().expect("sync");
    let mut reopened = Log::open(Box::new(disk.clone()), KEY).expect("open");
    assert_eq!(frames(&mut reopened, 0, 1).len(), 2);
    // From the second frame's position only the second frame is read.
    let second = frame::frame_bytes(3);
    assert_eq!(frames(&mut reopened, second, 1).len(), 1);
    // A session older than the frames (a ceiling below them) reads none.
    assert!(frames(&mut reopened, 0, 0).is_empty());
}

#[test]
fn an_older_epoch_after_a_newer_one_ends_the_log() {
    let disk = SimDisk::new();
    let mut log = Log::create(Box::new(disk.clone()), small(), KEY).expect("create");
    log.append(2, b"new session", 0).expect("append");
    log.append(1, b"left by the crashed one", 0)
        .expect("append");
    log.sync().expect("sync");
    let mut reopened = Log::open(Box::new(disk), KEY).expect("open");
    let read = frames(&mut reopened, 0, 2);
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].2, b"new session");
}

#[test]
fn a_log_of_another_key_or_no_log_is_refused() {
    let disk = SimDisk::new();
    Log::create(Box::new(disk.clone()), small(), KEY).expect("create");
    assert!(matches!(
        Log::open(Box::new(disk), LogKey(1, 1)),
        Err(Error::Corrupted(_))
    ));
    let empty = SimDisk::from_image(vec![0; HEADER_LEN]);
    assert!(matches!(
        Log::open(Box::new(empty), KEY),
        Err(Error::NotAStore(_))
    ));
    let short = SimDisk::from_image(vec![0; 10]);
    assert!(matches!(
        Log::open(Box::new(short), KEY),
        Err(Error::Corrupted(_))
    ));
}

/// One session's appends: payload sizes, whether a sync follows each, and whether the
/// applier then applies everything synced. Few sizes, so that a new session's frame often
/// ends exactly where a frame of the crashed one begins.
fn session() -> impl proptest::strategy::Strategy<Value = Vec<(usize, bool, bool)>> {
    use proptest::prelude::Just;
    let size = proptest::prop_oneof![Just(0usize), Just(200), Just(600), Just(1400)];
    proptest::collection::vec(
        (
            size,
            proptest::bool::weighted(0.3),
            proptest::bool::weighted(0.3),
        ),
        1..40,
    )
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(256))]

    /// Sessions append (moving the applied position now and then, and wrapping to the ring's
    /// start when it is free), the power goes (an image keeping a random mix of the unsynced
    /// writes, whole, dropped or torn), the next session recovers from the applied position
    /// and appends at the cut. After every crash the frames read back are a prefix of the
    /// frames appended after the applied position (by every session, each from where the
    /// recovery before it ended), and hold every one synced before the cut.
    #[test]
    fn recovery_reads_a_prefix_holding_every_synced_frame(
        sessions in proptest::collection::vec((session(), 0u64..8), 1..5),
    ) {
        let mut image = None;
        // The frames after the applied position as of the last recovery.
        let mut kept: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        // The applied position, and the epoch of the session that moved it (as redb keeps them).
        let (mut applied, mut floor) = (0, 0);
        for (index, (appends, seed)) in sessions.iter().enumerate() {
            let epoch = index as u64 + 1;
            let disk = match image.take() {
                None => SimDisk::new(),
                Some(bytes) => SimDisk::from_image(bytes),
            };
            let mut log = if index == 0 {
                Log::create(Box::new(disk.clone()), small(), KEY).expect("create")
            } else {
                let mut log = Log::open(Box::new(disk.clone()), KEY).expect("open");
                let read = frames_from(&mut log, applied, floor, epoch);
                proptest::prop_assert_eq!(&read, &kept);
                log
            };
            let mut appended = kept.clone();
            let mut synced = kept.len();
            for (size, sync, apply) in appends {
                #[allow(clippy::cast_possible_truncation)] // a byte pattern
                let payload: Vec<u8> = (0..*size).map(|i| (i ^ index) as u8).collect();
                if !log.room(applied, payload.len()) {
                    break;
                }
                let lsn = log.append(epoch, &payload, applied).expect("append");
                appended.push((lsn, epoch, payload));
                if *sync {
                    log.sync().expect("sync");
                    synced = appended.len();
                    if *apply {
                        (applied, floor) = (log.end(), epoch);
                        appended.clear();
                        synced = 0;
                    }
                }
            }
            let crashed = disk.crash_image(*seed);
            let mut recovered = Log::open(Box::new(SimDisk::from_image(crashed.clone())), KEY)
                .expect("reopen");
            let read = frames_from(&mut recovered, applied, floor, epoch);
            proptest::prop_assert!(read.len() >= synced, "a synced frame was lost");
            proptest::prop_assert!(read.len() <= appended.len());
            proptest::prop_assert_eq!(&read[..], &appended[..read.len()]);
            kept = read;
            image = Some(crashed);
        }
    }
}

/// The applier lags by more than the space it freed at the ring's start: the log grows
/// rather than going back to the start, where it would soon have no room and make writers
/// wait for the applier.
#[test]
fn a_log_whose_applier_lags_grows_rather_than_waiting_at_the_start() {
    let disk = SimDisk::new();
    let geometry = Geometry::new(4096, 64).expect("geometry");
    let mut log = Log::create(Box::new(disk.clone()), geometry, KEY).expect("create");
    let start = log.end();
    let payload = vec![5u8; 300];
    while disk.size() < HEADER_BYTES + 5 * 4096 {
        assert!(log.room(start, payload.len()));
        log.append(1, &payload, start).expect("append");
    }
    // The applier has freed the first segment only, and the writer goes on.
    let applied = start + 4096;
    let before = disk.size();
    for n in 0..40 {
        assert!(log.room(applied, payload.len()), "no room after {n} frames");
        log.append(1, &payload, applied).expect("append");
    }
    assert!(disk.size() > before, "the file grew");
}

#[test]
fn a_store_whose_applier_keeps_up_keeps_a_small_log_file() {
    let disk = SimDisk::new();
    let geometry = Geometry::new(4096, 64).expect("geometry");
    let mut log = Log::create(Box::new(disk.clone()), geometry, KEY).expect("create");
    let mut last = Vec::new();
    for i in 0..500u32 {
        let applied = log.end();
        let payload = vec![u8::try_from(i % 251).unwrap_or(0); 300];
        let lsn = log.append(1, &payload, applied).expect("append");
        last = vec![(lsn, 1, payload)];
    }
    log.sync().expect("sync");
    assert!(
        log.end() > 2 * geometry.ring(),
        "the log went round the ring"
    );
    // 500 frames of 332 bytes, in a file of a few segments rather than the 256 KiB ring.
    assert!(
        disk.size() <= HEADER_BYTES + 3 * 4096,
        "{} bytes",
        disk.size()
    );
    let from = last[0].0;
    let mut reopened = Log::open(Box::new(disk), KEY).expect("open");
    assert_eq!(frames_from(&mut reopened, from, 1, 1), last);
}

#[test]
fn a_frame_over_a_segment_is_refused_and_room_respects_the_applied_position() {
    let disk = SimDisk::new();
    let mut log = Log::create(Box::new(disk), small(), KEY).expect("create");
    assert!(log.append(1, &vec![0; 4096], 0).is_err());
    assert!(log.room(0, small().max_payload()));
    let mut appended = 0;
    while log.room(0, 1000) {
        log.append(1, &[0; 1000], 0).expect("append");
        appended += 1;
    }
    // Three segments of three 1,000-byte frames each, and never past the applied position.
    assert_eq!(appended, 9);
    assert!(log.end() <= small().ring());
}
