//! The fuzz targets' logic, as plain functions of the fuzzer's bytes. `fuzz/fuzz_targets/*.rs`
//! call them under libFuzzer; `tests/it/fuzz_seeds.rs` calls them over the committed seed corpus
//! (`fuzz/seeds/<target>/`), so a regression shows up in `cargo test` without nightly.
//!
//! Each function panics when it finds a violation; that is how a fuzzer sees one.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use super::harness::{Harness, Op};
use crate::engine::codec;
use crate::engine::embedded::log;
use crate::engine::embedded::storage::{RecordCounts, SimDisk};
use crate::idempotency::{Begin, Fingerprint, IdempotencyKey, StoredResponse};
use crate::ratelimit::{Limit, Quota, RateDurability};
use crate::{ManualClock, Store, StoreBuilder};

/// Most operations one `state_machine` input runs.
const MAX_OPS: usize = 64;

/// `decode_record`: arbitrary bytes into every decoder of on-disk values. Never a panic; whatever
/// decodes re-encodes to a value that decodes the same, and a record's head agrees with it.
/// (Allocation stays bounded by the input: the fuzz run sets libFuzzer's `-malloc_limit_mb`.)
pub fn decode_record(data: &[u8]) {
    if let Ok(record) = codec::decode_record(data) {
        let encoded = codec::encode_record(&record).expect("a decoded record re-encodes");
        let again = codec::decode_record(&encoded).expect("a re-encoded record decodes");
        assert_eq!(again, record, "record round trip");
        let head = codec::decode_record_head(data).expect("a decodable record has a head");
        assert_eq!(head.expires_at, record.expires_at, "head expiry");
        assert_eq!(
            usize::try_from(head.state).ok(),
            Some(RecordCounts::slot(&record)),
            "head state"
        );
    }
    let _ = codec::decode_record_head(data);
    if let Ok(rate) = codec::decode_rate(data) {
        let encoded = codec::encode_rate(&rate);
        assert_eq!(
            codec::decode_rate(&encoded).ok(),
            Some(rate),
            "rate round trip"
        );
    }
    if let Ok(value) = codec::decode_meta("fuzz", data) {
        assert_eq!(
            codec::encode_meta(value).as_slice(),
            data,
            "meta round trip"
        );
    }
    if let Ok((at, kind, id)) = codec::decode_expiry_key(data) {
        assert_eq!(
            codec::expiry_key(at, kind, &id).as_slice(),
            data,
            "expiry key round trip"
        );
    }
}

/// Reads fuzzer bytes as numbers; past the end it reads zeros.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&first, rest)) => {
                self.0 = rest;
                first
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u64(&mut self) -> u64 {
        let mut bytes = [0; 8];
        for b in &mut bytes {
            *b = self.byte();
        }
        u64::from_le_bytes(bytes)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Decodes one operation: a tag byte, then its arguments.
fn next_op(bytes: &mut Bytes<'_>) -> Op {
    let lease = |b: &mut Bytes<'_>| usize::from(b.byte() % 4);
    match bytes.byte() % 21 {
        0..=4 => Op::Begin {
            key: bytes.byte() % super::KEYS,
            fingerprint: bytes.byte() % 2,
            lease_ttl: match bytes.byte() {
                0..=200 => None,
                ttl => Some(u64::from(ttl - 200)),
            },
        },
        5 | 6 => Op::Complete {
            lease: lease(bytes),
            status: 200 + u16::from(bytes.byte() % 4),
        },
        7 => Op::Fail {
            lease: lease(bytes),
            status: 400 + u16::from(bytes.byte() % 4),
        },
        8 => Op::Release {
            lease: lease(bytes),
        },
        9 => Op::Extend {
            lease: lease(bytes),
            by: u64::from(bytes.byte() % 90),
        },
        10 => Op::Checkpoint {
            lease: lease(bytes),
            name: bytes.byte() % 3,
        },
        11 => Op::DropLease {
            lease: lease(bytes),
        },
        12 | 13 => Op::Advance {
            seconds: u64::from(bytes.byte()),
        },
        14 => Op::StepBack {
            seconds: 1 + u64::from(bytes.byte() % 50),
        },
        15 => Op::Rate {
            subject: bytes.byte() % super::SUBJECTS,
            cost: u32::from(bytes.byte() % 7),
        },
        16 => Op::Compact,
        17 => match bytes.byte() % 2 {
            0 => Op::Reopen,
            _ => Op::DropAndReopen,
        },
        18 => Op::InjectFailure {
            after: bytes.u16() % 256,
        },
        19 => Op::PowerCut { seed: bytes.u64() },
        _ => Op::CutPowerDuringSync {
            after: bytes.byte() % 4,
            seed: bytes.u64(),
        },
    }
}

/// The operations an input encodes (at most 64).
pub fn state_machine_ops(data: &[u8]) -> Vec<Op> {
    let mut bytes = Bytes(data);
    let mut ops = Vec::new();
    while !bytes.is_empty() && ops.len() < MAX_OPS {
        ops.push(next_op(&mut bytes));
    }
    ops
}

/// `state_machine`: an operation sequence (begin / complete / fail / release / extend /
/// checkpoint / clock moves / rate checks / compaction / reopen), with I/O failures injected at a
/// fuzzer-chosen operation count and power cuts, against the reference model
/// ([`Harness`]). After a failure the store must refuse work, reopen, and match the last durable
/// model (or the model with the failed operation applied: its commit is in doubt). Each input
/// runs twice: on a store writing redb directly, and on one writing through its write-ahead log.
pub fn state_machine(data: &[u8]) {
    let ops = state_machine_ops(data);
    for (mode, start) in [
        ("direct", Harness::new as fn() -> Harness),
        ("through the log", Harness::with_write_ahead_log),
    ] {
        let mut harness = start();
        for (index, op) in ops.iter().enumerate() {
            if let Err(message) = harness.apply(op) {
                panic!("{mode}: operation {index} of {ops:?}: {message}");
            }
        }
    }
}

/// The rate-counter secret of the valid image: fixed, so the image (and what a regression input
/// flips in it) is the same in every process.
const CORRUPT_SECRET: (u64, u64) = (0x746f_6c6c_6761_7465, 0x6f70_656e_636f_7272);

fn corrupt_builder(clock: &ManualClock, verify: bool) -> StoreBuilder {
    Store::builder()
        .clock(clock.clone())
        .rate_durability(RateDurability::Immediate)
        .background_compaction(false)
        .cache_size(1 << 20)
        .verify_on_open(verify)
        .rate_secret_for_tests(CORRUPT_SECRET)
}

fn corrupt_clock() -> ManualClock {
    ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
}

fn corrupt_key(i: u8) -> IdempotencyKey {
    IdempotencyKey::new("fuzz", &format!("key-{i}")).expect("a valid key")
}

fn corrupt_limit() -> Limit {
    Limit::new("fuzz", Quota::per_minute(10)).expect("a valid limit")
}

/// What key `i` of the valid image stores (for every `i % 3 != 2`).
fn corrupt_response(i: u8) -> StoredResponse {
    StoredResponse::new(201, vec![i; 40]).with_header("x-fuzz", vec![i])
}

/// A small valid store image: completed, failed and running records, and rate counters. The same
/// bytes in every process (a fixed clock, secret and sequence of single-threaded commits).
pub fn valid_image() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let disk = SimDisk::new();
        let clock = corrupt_clock();
        let store = corrupt_builder(&clock, false)
            .open_simulated(&disk)
            .expect("a fresh simulated store opens");
        for i in 0..6 {
            let Ok(Begin::Acquired(lease)) = store.begin(&corrupt_key(i), &Fingerprint::of(&[i]))
            else {
                panic!("a fresh key is acquired");
            };
            let response = corrupt_response(i);
            match i % 3 {
                0 => lease.complete(response).expect("complete"),
                1 => lease.fail(response).expect("fail"),
                _ => drop(lease),
            }
            store
                .check(&corrupt_limit(), &format!("subject-{i}"))
                .expect("rate check");
        }
        store.close().expect("close");
        disk.durable_image()
    })
}

/// `open_corrupt`: a valid store image with fuzzer-chosen bytes changed (each 4 input bytes: a
/// 24-bit offset and a byte to XOR there), opened with `verify_on_open`. Opening and using the
/// store must end in a typed error or consistent answers (a replay is exactly what was stored),
/// never a panic (the test fails on one) or a hang (libFuzzer's timeout).
pub fn open_corrupt(data: &[u8]) {
    open_damaged(data, true);
}

/// [`open_corrupt`] without `verify_on_open`: damage reaches redb, which may panic; tollgate must
/// turn every such panic into a typed error (see [`super::contained_panics`]). Replays are not
/// checked (unverified damage can change a stored response). Some inputs make redb panic while
/// unwinding, which aborts the process: only inputs known not to do so are run this way.
pub fn open_corrupt_unverified(data: &[u8]) {
    open_damaged(data, false);
}

/// The damaged image for an `open_corrupt` input.
pub fn damaged_image(data: &[u8]) -> Vec<u8> {
    let mut image = valid_image().to_vec();
    for flip in data.chunks_exact(4) {
        let offset = usize::from(flip[0]) | usize::from(flip[1]) << 8 | usize::from(flip[2]) << 16;
        if let Some(byte) = image.get_mut(offset % valid_image().len()) {
            *byte ^= flip[3];
        }
    }
    image
}

fn open_damaged(data: &[u8], verify: bool) {
    let clock = corrupt_clock();
    let disk = SimDisk::from_image(damaged_image(data));
    let Ok(store) = corrupt_builder(&clock, verify).open_simulated(&disk) else {
        return;
    };
    for i in 0..8 {
        // The open verified every checksum, so whatever it accepted is data a commit wrote:
        // a replay is the stored response (an older commit may be all that survived, so a key may
        // also be absent or running).
        match store.begin(&corrupt_key(i), &Fingerprint::of(&[i])) {
            Ok(Begin::Replay(replay)) if verify => {
                assert_eq!(
                    replay.response(),
                    &corrupt_response(i),
                    "key {i} replays damage"
                );
            }
            Ok(Begin::Acquired(lease)) => {
                let _ = lease.complete(StoredResponse::new(200, vec![i]));
            }
            Ok(_) | Err(_) => {}
        }
        let _ = store.get(&corrupt_key(i));
        let _ = store.check(&corrupt_limit(), &format!("subject-{i}"));
    }
    clock.advance(Duration::from_secs(3 * 24 * 3600));
    let _ = store.compact_now();
    let _ = store.stats();
    let _ = store.flush();
    let _ = store.close();
}

/// The log geometry of the `log_recovery` target: four segments of 4 KiB.
const FUZZ_LOG_SEGMENT: u32 = 4096;
const FUZZ_LOG_SEGMENTS: u32 = 4;
const FUZZ_LOG_KEY: log::LogKey = log::LogKey(0x746f_6c6c, 0x6761_7465);

/// The epoch of the session appending after the recovery (the recovery reads frames below it).
const FUZZ_LOG_EPOCH: u64 = 1000;

/// A log file whose ring holds `ring` (the fuzzer's bytes, cut to the ring's size).
fn fuzz_log_image(ring: &[u8]) -> Option<Vec<u8>> {
    let geometry = log::Geometry::new(FUZZ_LOG_SEGMENT, FUZZ_LOG_SEGMENTS).ok()?;
    let disk = SimDisk::new();
    log::Log::create(Box::new(disk.clone()), geometry, FUZZ_LOG_KEY).ok()?;
    let mut image = disk.durable_image();
    let ring_bytes = usize::try_from(geometry.ring()).ok()?;
    image.extend_from_slice(&ring[..ring.len().min(ring_bytes)]);
    Some(image)
}

/// `log_recovery`: arbitrary bytes as the ring of a log file, recovered from position 0. Never
/// a panic; the frames read are in order, inside one lap, and their changes decode or are
/// reported corrupt; recovering twice reads the same frames; and after recovery the log takes a
/// new frame that the next recovery reads back after the same ones.
pub fn log_recovery(data: &[u8]) {
    let Some(image) = fuzz_log_image(data) else {
        return;
    };
    let recover = |image: Vec<u8>, ceiling: u64| {
        let disk = SimDisk::from_image(image);
        let mut log =
            log::Log::open(Box::new(disk.clone()), FUZZ_LOG_KEY).expect("the header is valid");
        let mut frames = Vec::new();
        let end = log
            .scan(0, 0, ceiling, |lsn, epoch, payload| {
                frames.push((lsn, epoch, payload.to_vec()));
                Ok(())
            })
            .expect("a scan of a simulated disk does not fail");
        (disk, log, frames, end)
    };
    let (disk, mut log, frames, end) = recover(image.clone(), FUZZ_LOG_EPOCH - 1);
    let ring = u64::from(FUZZ_LOG_SEGMENT) * u64::from(FUZZ_LOG_SEGMENTS);
    assert!(end <= ring, "a recovery reads at most one lap");
    for pair in frames.windows(2) {
        assert!(pair[0].0 < pair[1].0, "frames in order");
        assert!(pair[0].1 <= pair[1].1, "epochs never go back");
    }
    for (_, _, payload) in &frames {
        let _ = log::change::decode(payload);
    }
    let (_, _, again, end_again) = recover(image, FUZZ_LOG_EPOCH - 1);
    assert_eq!(
        (&again, end_again),
        (&frames, end),
        "recovery is deterministic"
    );
    if log.room(0, 16) {
        // As a store does: the session after a recovery has an epoch above every frame's.
        let lsn = log
            .append(FUZZ_LOG_EPOCH, b"appended after it", 0)
            .expect("append");
        log.sync().expect("sync");
        let (_, _, after, _) = recover(disk.durable_image(), FUZZ_LOG_EPOCH);
        assert_eq!(
            after.len(),
            frames.len() + 1,
            "the new frame follows the recovered ones"
        );
        assert_eq!(&after[..frames.len()], &frames[..]);
        assert_eq!(after[frames.len()].0, lsn);
    }
}

/// Starting inputs for `log_recovery`: rings holding valid frames of changes (whole, torn at the
/// end, and after a padding frame).
pub fn log_recovery_seeds() -> Vec<Vec<u8>> {
    let Ok(geometry) = log::Geometry::new(FUZZ_LOG_SEGMENT, FUZZ_LOG_SEGMENTS) else {
        return Vec::new();
    };
    let mut payload = Vec::new();
    log::change::put_rate(&mut payload, &[1; 16], None);
    log::change::delete_record(&mut payload, &crate::idempotency::Digest([2; 32]));
    log::change::counters(&mut payload, 7, 1_800_000_000_000_000_000);
    let record = crate::idempotency::Record {
        fingerprint: [7; 32],
        created_at: 1,
        expires_at: 2,
        attempts: 1,
        record_ttl: 1,
        body: crate::idempotency::RecordBody::Completed(StoredResponse::new(200, b"ok".to_vec())),
    };
    if let Ok(encoded) = codec::encode_record(&record) {
        log::change::put_record(&mut payload, &crate::idempotency::Digest([3; 32]), &encoded);
    }
    let ring_of = |frames: &[(u64, usize)]| -> Vec<u8> {
        let disk = SimDisk::new();
        let Ok(mut log) = log::Log::create(Box::new(disk.clone()), geometry, FUZZ_LOG_KEY) else {
            return Vec::new();
        };
        for &(epoch, size) in frames {
            let _ = log.append(epoch, &payload[..size.min(payload.len())], 0);
        }
        let _ = log.sync();
        disk.durable_image().split_off(4096)
    };
    let whole = ring_of(&[(1, payload.len()), (1, payload.len()), (2, payload.len())]);
    let mut torn = whole.clone();
    torn.truncate(whole.len().saturating_sub(40));
    vec![
        whole,
        torn,
        ring_of(&[(1, 17), (3, payload.len())]),
        // Enough frames to pad the first segment.
        ring_of(&[(1, payload.len()); 30]),
    ]
}

/// Starting inputs for `decode_record`: one valid encoding of every kind of on-disk value.
pub fn decode_record_seeds() -> Vec<Vec<u8>> {
    use crate::engine::codec::StoredRate;
    use crate::idempotency::{Checkpoint, Record, RecordBody};
    use crate::ratelimit::RateState;
    let record = |body| Record {
        fingerprint: [7; 32],
        created_at: 1_800_000_000_000_000_000,
        expires_at: 1_800_000_100_000_000_000,
        attempts: 2,
        record_ttl: 100_000_000_000,
        body,
    };
    let response = StoredResponse::new(201, b"{\"id\":1}".to_vec()).with_header("a", b"b".to_vec());
    let mut seeds: Vec<Vec<u8>> = [
        record(RecordBody::Running {
            token: 9,
            epoch: 3,
            lease_expires_at: 1_800_000_030_000_000_000,
            checkpoint: Some(Checkpoint {
                name: "charged".into(),
                data: b"ch_1".to_vec(),
            }),
        }),
        record(RecordBody::Completed(response.clone())),
        record(RecordBody::Failed(response)),
    ]
    .iter()
    .filter_map(|r| codec::encode_record(r).ok())
    .collect();
    for state in [
        RateState::Gcra { tat: 5 },
        RateState::FixedWindow {
            window: 60,
            count: 3,
        },
        RateState::SlidingWindow {
            window: 60,
            previous: 2,
            current: 1,
        },
    ] {
        seeds.push(codec::encode_rate(&StoredRate { state, idle_at: 99 }).to_vec());
    }
    seeds.push(codec::encode_meta(42).to_vec());
    seeds.push(codec::expiry_key(1_800_000_000, 1, &[3; 32]).to_vec());
    seeds
}

/// Starting inputs for `state_machine`: short scripted sequences in the input encoding.
pub fn state_machine_seeds() -> Vec<Vec<u8>> {
    vec![
        // begin, complete, begin again (replay)
        vec![0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0],
        // begin, checkpoint, reopen, begin (takeover with the checkpoint)
        vec![0, 1, 0, 0, 10, 0, 1, 17, 0, 0, 1, 0, 0],
        // begin, fail an I/O soon, complete (in doubt), begin
        vec![0, 2, 0, 0, 18, 3, 0, 5, 0, 1, 0, 2, 0, 0],
        // rate checks across a power cut
        vec![15, 0, 3, 15, 0, 2, 19, 1, 0, 0, 0, 0, 0, 0, 0, 15, 0, 1],
        // begin, power cut inside the next commit (torn), complete (in doubt), begin
        vec![
            0, 1, 0, 0, 20, 0, 7, 0, 0, 0, 0, 0, 0, 0, 5, 0, 1, 0, 1, 0, 0,
        ],
        // time moves, compaction
        vec![0, 0, 0, 0, 12, 200, 12, 200, 16, 0, 0, 0, 0],
    ]
}

/// Starting inputs for `open_corrupt`: no change, and a few single-byte flips.
pub fn open_corrupt_seeds() -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        vec![0, 0, 0, 0xFF],
        vec![9, 0, 0, 0x01],
        vec![0x00, 0x10, 0, 0x80],
        vec![0x40, 0x02, 0, 0x04, 0x00, 0x20, 0, 0x10],
    ]
}

/// `shared_protocol`: arbitrary bytes as a frame of the shared store's protocol, read as each
/// message a peer may send. Never a panic, never an allocation beyond the frame limit; whatever
/// decodes re-encodes to a frame that decodes the same, and the socket reader agrees with the
/// whole-buffer decoder.
#[cfg(target_os = "linux")]
pub fn shared_protocol(data: &[u8]) {
    use crate::engine::shared::frame;
    use crate::engine::shared::message::{Hello, Reply, Request, Welcome};
    /// A small limit, so that the fuzzer reaches "over the limit" too.
    const LIMIT: usize = 1 << 16;
    fn check<T>(data: &[u8])
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let whole = frame::decode::<T>(data, LIMIT);
        let streamed = frame::read::<T>(&mut &data[..], LIMIT);
        if let Ok(message) = whole {
            let again = frame::encode(&message).expect("a decoded message encodes");
            let decoded = frame::decode::<T>(&again, LIMIT).expect("a re-encoded message decodes");
            assert_eq!(decoded, message, "message round trip");
            assert_eq!(
                streamed.expect("the socket reader reads what the decoder decodes"),
                message
            );
        }
    }
    check::<Hello>(data);
    check::<Welcome>(data);
    check::<Request>(data);
    check::<Reply>(data);
}

/// Starting inputs for `shared_protocol`: one frame of each kind of message.
#[cfg(target_os = "linux")]
pub fn shared_protocol_seeds() -> Vec<Vec<u8>> {
    use crate::engine::shared::frame;
    use crate::engine::shared::message::{Begun, Hello, Reply, Request, WireBegin, WireLimit};
    use crate::idempotency::machine::{BeginDecision, Resolution};
    let limit = Limit::new("api", Quota::per_second(5)).expect("a valid limit");
    let hello = Hello {
        pid: 42,
        claim: Some(7),
        anchor: true,
        max_response_bytes: 1 << 20,
    };
    let begin = WireBegin {
        fingerprint: [3; 32],
        lease_ttl: 30_000_000_000,
        record_ttl: 86_400_000_000_000,
    };
    let requests = [
        Request::Read { digest: [1; 32] },
        Request::Begin {
            digest: [2; 32],
            request: begin,
        },
        Request::Resolve {
            digest: [2; 32],
            token: 9,
            resolution: Resolution::Complete(StoredResponse::new(201, b"ok".to_vec())),
        },
        Request::List {
            after: None,
            limit: 10,
        },
        Request::Rate {
            kind: crate::ratelimit::charge::OpKind::Charge { cost: 1 },
            checks: vec![(WireLimit::of(&limit), "user:1".into())],
        },
        Request::Stats,
    ];
    let mut seeds = vec![frame::encode(&hello).expect("encodes")];
    seeds.extend(requests.iter().map(|r| frame::encode(r).expect("encodes")));
    seeds.push(
        frame::encode(&Reply::Begun(Begun::Written(BeginDecision::InFlight {
            retry_after: 5,
        })))
        .expect("encodes"),
    );
    seeds.push(frame::encode(&Reply::Goodbye).expect("encodes"));
    seeds
}
