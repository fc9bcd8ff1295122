//! The counters script (`counters.lua`) as Rust sees it: how a connection loads it, the
//! operations a call carries, the command that carries them, and the replies it returns.
//!
//! **Two forms, one source.** On Redis 7 the script is loaded as a function library and called
//! with `FCALL`: its helpers are made once, at load, where a script (`EVALSHA`) makes them again
//! at every call (callgrind: 76k Redis instructions per empty call as a script, 34k as a
//! function). Where `FUNCTION LOAD` is refused (Redis 6.2, or an ACL without it), the same
//! source runs as a script. The library's name carries a hash of the source, so that stores of
//! two versions sharing a server never call each other's code.
//!
//! One call runs any number of operations on keys of one cluster slot, atomically and in order
//! (a later operation sees an earlier one's writes), so a pipelined batch of concurrent checks
//! costs Redis one script invocation instead of one each.

use std::sync::{Arc, LazyLock};

use sha2::{Digest, Sha256};

use super::namespace::MicroSpec;
use crate::ratelimit::charge::OpKind;

/// What both forms share: `counters.lua`, which defines `main(keys, args)`.
const BODY: &str = include_str!("counters.lua");

/// The script form, for `SCRIPT LOAD` and `EVALSHA`.
pub(crate) static SCRIPT: LazyLock<String> =
    LazyLock::new(|| format!("{BODY}\nreturn main(KEYS, ARGV)\n"));

/// The function form: the function's name (also the library's) and the library, for
/// `FUNCTION LOAD` and `FCALL`.
pub(crate) static LIBRARY: LazyLock<(String, String)> = LazyLock::new(|| {
    let digest = Sha256::digest(BODY.as_bytes());
    let hex = digest.iter().take(8).fold(String::new(), |mut hex, byte| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{byte:02x}");
        hex
    });
    let name = format!("tollgate_counters_{hex}");
    let library = format!("#!lua name={name}\n{BODY}\nredis.register_function('{name}', main)\n");
    (name, library)
});

/// How a connection calls the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invoke {
    /// `FCALL` of this function (Redis 7).
    Function(String),
    /// `EVALSHA` of the script with this SHA-1.
    Script(String),
}

/// Loads the script on `connection`: as a function library where the server takes one, else
/// as a script.
///
/// # Errors
/// A message if the server takes neither (or the connection fails).
pub(crate) fn load(connection: &mut redis::Connection) -> Result<Invoke, String> {
    let (name, library) = &*LIBRARY;
    let loaded: redis::RedisResult<String> = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(library)
        .query(connection);
    match loaded {
        Ok(_) => Ok(Invoke::Function(name.clone())),
        // A server without functions, or a user not allowed them: the script. (A connection
        // that failed fails again below, with its own message.)
        Err(_) => redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(&*SCRIPT)
            .query(connection)
            .map(Invoke::Script)
            .map_err(|e| format!("SCRIPT LOAD failed: {e}")),
    }
}

/// Whether Redis refused a call because it no longer has the script or the function (a
/// restart, `SCRIPT FLUSH`, `FUNCTION FLUSH`): the call did not run.
pub(crate) fn is_missing(error: &redis::RedisError) -> bool {
    error.code() == Some("NOSCRIPT") || error.to_string().contains("Function not found")
}

/// What an operation does (the script's `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    Charge,
    Peek,
    Refund,
    Reset,
    /// Creates a bucket's sentinel if it has none (a new namespace).
    Init,
    /// Marks a bucket drained from now: its data was lost.
    Mark,
    /// Replaces a bucket's sentinel left by another secret.
    Replace,
}

impl Code {
    fn letter(self) -> &'static str {
        match self {
            Code::Charge => "c",
            Code::Peek => "p",
            Code::Refund => "r",
            Code::Reset => "x",
            Code::Init => "i",
            Code::Mark => "m",
            Code::Replace => "M",
        }
    }

    /// The code and amount of a rate operation.
    pub(crate) fn of(kind: OpKind) -> (Code, u64) {
        match kind {
            OpKind::Charge { cost } => (Code::Charge, cost),
            OpKind::Peek => (Code::Peek, 0),
            OpKind::Refund { amount } => (Code::Refund, amount),
            OpKind::Reset => (Code::Reset, 0),
        }
    }

    /// Whether the operation may change something in Redis.
    pub(crate) fn writes(self) -> bool {
        self != Code::Peek
    }
}

/// One counter an operation touches.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub counter: String,
    pub sentinel: Arc<str>,
    pub spec: MicroSpec,
}

/// One operation of a call.
#[derive(Debug, Clone)]
pub(crate) struct Op {
    pub code: Code,
    pub amount: u64,
    /// Recreate a missing sentinel (the loss was seen and the secret confirmed) instead of
    /// reporting the bucket lost.
    pub recover: bool,
    pub secret_id: Arc<str>,
    pub targets: Vec<Target>,
}

impl Op {
    /// An operation on a bucket's sentinel alone (`Init`, `Mark` or `Replace`).
    pub(crate) fn on_bucket(code: Code, sentinel: Arc<str>, secret_id: Arc<str>) -> Op {
        Op {
            code,
            amount: 0,
            recover: false,
            secret_id,
            targets: vec![Target {
                counter: sentinel.to_string(),
                sentinel,
                spec: MicroSpec {
                    kind: "g",
                    a: 1,
                    b: 1,
                },
            }],
        }
    }
}

/// The time a call decides at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScriptTime {
    /// Microseconds since the Unix epoch, or `None` for Redis's `TIME`.
    pub now: Option<u64>,
    /// Milliseconds added to every counter's time to live (which runs on Redis's clock): 0 on
    /// `TIME`; a margin for the skew of a client's clock; a day for a test's stopped clock.
    pub expiry_margin_ms: u64,
}

/// The most limits one operation may charge: with at most `MAX_OPS_PER_CALL` (64) operations a
/// call then names fewer than 2^15 keys and limits, within the script's 16-bit indexes.
pub(crate) const MAX_TARGETS: usize = 256;

/// Zero bytes ending every call's binary string: one target's size (`counters.lua`).
const PADDING: usize = 6;

/// Appends `value` as a big-endian double (every number the script takes is an integer below
/// 2^53, exact as a double).
fn double(blob: &mut Vec<u8>, value: u64) {
    #[allow(clippy::cast_precision_loss)]
    blob.extend_from_slice(&(value as f64).to_be_bytes());
}

/// Appends `value` as a big-endian 16-bit index (see [`MAX_TARGETS`]).
fn index(blob: &mut Vec<u8>, value: usize) {
    blob.extend_from_slice(&u16::try_from(value).unwrap_or(u16::MAX).to_be_bytes());
}

/// The `FCALL` or `EVALSHA` that runs `ops` in one call at `time`; `drain`: lost buckets are
/// drained (the `DrainOnRecovery` crash policy). The call is one binary string (`counters.lua`
/// has its layout) and the secret ids it names.
pub(crate) fn command<'a>(
    invoke: &Invoke,
    time: ScriptTime,
    drain: bool,
    ops: impl Iterator<Item = &'a Op>,
) -> redis::Cmd {
    // The keys: each sentinel once (the script reads each once per call), each counter as it
    // comes (a counter twice in one call is rare, and reads the same either way). The limits
    // and the secret ids: each once.
    let mut keys: Vec<&str> = Vec::new();
    let mut sentinels: Vec<(&str, usize)> = Vec::new();
    let mut specs: Vec<MicroSpec> = Vec::new();
    let mut ids: Vec<&str> = Vec::new();
    let ops: Vec<&Op> = ops.collect();
    let mut refs: Vec<(usize, usize, usize)> = Vec::new();
    for op in &ops {
        if !ids.contains(&&*op.secret_id) {
            ids.push(&op.secret_id);
        }
        for target in &op.targets {
            keys.push(&target.counter);
            let counter = keys.len();
            let sentinel = if let Some(&(_, at)) = sentinels
                .iter()
                .find(|(name, _)| *name == &*target.sentinel)
            {
                at
            } else {
                keys.push(&target.sentinel);
                sentinels.push((&target.sentinel, keys.len()));
                keys.len()
            };
            let spec = if let Some(at) = specs.iter().position(|s| *s == target.spec) {
                at + 1
            } else {
                specs.push(target.spec);
                specs.len()
            };
            refs.push((counter, sentinel, spec));
        }
    }
    let mut blob =
        Vec::with_capacity(24 + specs.len() * 17 + ops.len() * 13 + refs.len() * 6 + PADDING);
    blob.push(u8::from(time.now.is_some()));
    double(&mut blob, time.now.unwrap_or(0));
    blob.push(u8::from(drain));
    double(&mut blob, time.expiry_margin_ms);
    index(&mut blob, specs.len());
    for micro in &specs {
        blob.push(micro.kind.as_bytes().first().copied().unwrap_or(b'g'));
        double(&mut blob, micro.a);
        double(&mut blob, micro.b);
    }
    index(&mut blob, ops.len());
    let mut refs = refs.into_iter();
    for op in &ops {
        blob.push(op.code.letter().as_bytes().first().copied().unwrap_or(b'p'));
        blob.push(u8::from(op.recover));
        let id = ids.iter().position(|id| *id == &*op.secret_id).unwrap_or(0) + 1;
        blob.push(u8::try_from(id).unwrap_or(u8::MAX));
        double(&mut blob, op.amount);
        index(&mut blob, op.targets.len());
        for (counter, sentinel, spec) in refs.by_ref().take(op.targets.len()) {
            index(&mut blob, counter);
            index(&mut blob, sentinel);
            index(&mut blob, spec);
        }
    }
    // The script reads an operation with its first target in one go: after a last operation
    // without targets, it reads these bytes (and ignores them).
    blob.extend_from_slice(&[0; PADDING]);
    let mut cmd = match invoke {
        Invoke::Function(name) => {
            let mut cmd = redis::cmd("FCALL");
            cmd.arg(name);
            cmd
        }
        Invoke::Script(sha) => {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(sha);
            cmd
        }
    };
    cmd.arg(keys.len()).arg(&keys).arg(blob).arg(&ids);
    cmd
}

/// What the script says about one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Done,
    /// A bucket's sentinel is missing: its data was lost. Nothing was changed.
    Lost,
    /// A bucket's sentinel names another secret. Nothing was changed.
    Foreign,
}

/// One operation's reply (times in microseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reply {
    pub status: Status,
    pub allowed: bool,
    pub deciding: usize,
    pub remaining: u64,
    pub reset_after: u64,
    pub retry_after: Option<u64>,
}

/// The replies of a call of `count` operations.
///
/// # Errors
/// A message if the value is not what the script returns.
pub(crate) fn decode(value: &redis::Value, count: usize) -> Result<Vec<Reply>, String> {
    const SIZE: usize = 28;
    let bytes = match value {
        redis::Value::BulkString(bytes) => bytes.as_slice(),
        redis::Value::Array(items) if items.is_empty() => &[],
        _ => return Err(format!("the counters script returned {value:?}")),
    };
    if bytes.len() != count * SIZE {
        return Err(format!(
            "the counters script answered {} bytes for {count} operations",
            bytes.len()
        ));
    }
    bytes.chunks_exact(SIZE).map(decode_one).collect()
}

/// One operation's reply: `>BBHddd`.
fn decode_one(fields: &[u8]) -> Result<Reply, String> {
    let bad = || format!("the counters script returned {fields:?} for an operation");
    let (&[status, allowed], rest) = fields.split_first_chunk::<2>().ok_or_else(bad)?;
    let (deciding, rest) = rest.split_first_chunk::<2>().ok_or_else(bad)?;
    let number = |bytes: &[u8]| -> Result<f64, String> {
        let bytes: [u8; 8] = bytes.try_into().map_err(|_| bad())?;
        Ok(f64::from_be_bytes(bytes))
    };
    let (remaining, rest) = rest.split_at_checked(8).ok_or_else(bad)?;
    let (reset_after, retry_after) = rest.split_at_checked(8).ok_or_else(bad)?;
    let unsigned = |value: f64| -> Result<u64, String> {
        // The script's numbers are integers in [0, 2^53): anything else is not its answer.
        if (0.0..9_007_199_254_740_992.0).contains(&value) && value.fract() == 0.0 {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Ok(value as u64)
        } else {
            Err(bad())
        }
    };
    let retry = number(retry_after)?;
    Ok(Reply {
        status: match status {
            0 => Status::Done,
            1 => Status::Lost,
            2 => Status::Foreign,
            _ => return Err(bad()),
        },
        allowed: match allowed {
            0 => false,
            1 => true,
            _ => return Err(bad()),
        },
        deciding: usize::from(u16::from_be_bytes(*deciding)),
        remaining: unsigned(number(remaining)?)?,
        reset_after: unsigned(number(reset_after)?)?,
        retry_after: if retry < 0.0 && retry.to_bits() == (-1.0f64).to_bits() {
            None
        } else {
            Some(unsigned(retry)?)
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(code: Code, counter: &str, sentinel: &str) -> Op {
        Op {
            code,
            amount: 2,
            recover: false,
            secret_id: Arc::from("id"),
            targets: vec![Target {
                counter: counter.into(),
                sentinel: Arc::from(sentinel),
                spec: MicroSpec {
                    kind: "f",
                    a: 5,
                    b: 1000,
                },
            }],
        }
    }

    /// Keys, limits and secret ids are listed once each and referenced by their 1-based index;
    /// the call is the binary layout `counters.lua` reads.
    #[test]
    fn a_call_lists_each_key_once_and_encodes_the_layout() {
        let ops = [op(Code::Charge, "c1", "s"), op(Code::Peek, "c2", "s")];
        let time = ScriptTime {
            now: Some(7),
            expiry_margin_ms: 9,
        };
        let cmd = command(&Invoke::Script("sha".into()), time, true, ops.iter());
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => bytes.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        let text: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        // (c2's sentinel is s, already listed: it is referenced, not repeated.)
        assert_eq!(
            [text[0], text[1], text[2], text[3], text[4], text[5]],
            [&b"EVALSHA"[..], b"sha", b"3", b"c1", b"s", b"c2"]
        );
        assert_eq!(text[7], b"id");
        assert_eq!(text.len(), 8);
        let d = |n: f64| n.to_be_bytes().to_vec();
        let mut blob = vec![1];
        blob.extend(d(7.0));
        blob.push(1);
        blob.extend(d(9.0));
        blob.extend([0, 1, b'f']);
        blob.extend(d(5.0));
        blob.extend(d(1000.0));
        blob.extend([0, 2]);
        for (letter, counter) in [(b'c', 1u8), (b'p', 3)] {
            blob.extend([letter, 0, 1]);
            blob.extend(d(2.0));
            blob.extend([0, 1, 0, counter, 0, 2, 0, 1]);
        }
        blob.extend([0; 6]);
        assert_eq!(text[6], blob.as_slice());
    }

    fn encoded(fields: &[(u8, u8, u16, f64, f64, f64)]) -> redis::Value {
        let mut bytes = Vec::new();
        for &(status, allowed, deciding, remaining, reset, retry) in fields {
            bytes.extend([status, allowed]);
            bytes.extend(deciding.to_be_bytes());
            for number in [remaining, reset, retry] {
                bytes.extend(number.to_be_bytes());
            }
        }
        redis::Value::BulkString(bytes)
    }

    #[test]
    fn replies_decode_and_anything_else_is_refused() {
        let value = encoded(&[(0, 1, 0, 4.0, 10.0, -1.0), (1, 0, 2, 0.0, 0.0, 5.0)]);
        let replies = decode(&value, 2).unwrap();
        assert_eq!(
            replies[0],
            Reply {
                status: Status::Done,
                allowed: true,
                deciding: 0,
                remaining: 4,
                reset_after: 10,
                retry_after: None
            }
        );
        assert_eq!(
            (
                replies[1].status,
                replies[1].deciding,
                replies[1].retry_after
            ),
            (Status::Lost, 2, Some(5))
        );
        assert!(decode(&value, 3).is_err());
        assert!(decode(&redis::Value::Nil, 0).is_err());
        assert!(decode(&redis::Value::Int(3), 1).is_err());
        for bad in [
            (0, 1, 0, -4.0, 0.0, -1.0),
            (9, 1, 0, 4.0, 0.0, -1.0),
            (0, 7, 0, 4.0, 0.0, -1.0),
            (0, 1, 0, 0.5, 0.0, -1.0),
            (0, 1, 0, f64::NAN, 0.0, -1.0),
            (0, 1, 0, 1e300, 0.0, -1.0),
            (0, 1, 0, 1.0, 0.0, -2.0),
        ] {
            assert!(decode(&encoded(&[bad]), 1).is_err(), "{bad:?}");
        }
        assert!(decode(&redis::Value::BulkString(vec![0; 27]), 1).is_err());
    }
}
