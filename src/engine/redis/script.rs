//! The counters script (`counters.lua`) as Rust sees it: the operations a call carries, the
//! `EVALSHA` command that carries them, and the replies it returns.
//!
//! One call runs any number of operations on keys of one cluster slot, atomically and in order
//! (a later operation sees an earlier one's writes), so a pipelined batch of concurrent checks
//! costs Redis one script invocation instead of one each.

use std::sync::Arc;

use super::namespace::MicroSpec;
use crate::ratelimit::charge::OpKind;

/// The script's source, loaded into Redis with `SCRIPT LOAD` (calls use its SHA-1).
pub(crate) const SOURCE: &str = include_str!("counters.lua");

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

/// The `EVALSHA` that runs `ops` in one call at `time`; `drain`: lost buckets are drained (the
/// `DrainOnRecovery` crash policy).
pub(crate) fn command<'a>(
    sha: &str,
    time: ScriptTime,
    drain: bool,
    ops: impl Iterator<Item = &'a Op>,
) -> redis::Cmd {
    // The keys: each sentinel once (the script reads each once per call), each counter as it
    // comes (a counter twice in one call is rare, and reads the same either way). The limits:
    // each once.
    let mut keys: Vec<&str> = Vec::new();
    let mut sentinels: Vec<(&str, usize)> = Vec::new();
    let mut specs: Vec<MicroSpec> = Vec::new();
    let mut count = 0usize;
    let ops: Vec<&Op> = ops.collect();
    let mut refs: Vec<(usize, usize, usize)> = Vec::new();
    for op in &ops {
        count += 1;
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
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(sha).arg(keys.len()).arg(&keys);
    match time.now {
        Some(now) => cmd.arg(now),
        None => cmd.arg(""),
    };
    cmd.arg(if drain { "1" } else { "0" })
        .arg(time.expiry_margin_ms)
        .arg(specs.len());
    for micro in &specs {
        cmd.arg(micro.kind).arg(micro.a).arg(micro.b);
    }
    cmd.arg(count);
    let mut refs = refs.into_iter();
    for op in ops {
        cmd.arg(op.code.letter())
            .arg(op.amount)
            .arg(if op.recover { "1" } else { "0" })
            .arg(&*op.secret_id)
            .arg(op.targets.len());
        for (counter, sentinel, spec) in refs.by_ref().take(op.targets.len()) {
            cmd.arg(counter).arg(sentinel).arg(spec);
        }
    }
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
    let redis::Value::Array(items) = value else {
        return Err(format!("the counters script returned {value:?}"));
    };
    if items.len() != count * 6 {
        return Err(format!(
            "the counters script answered {} numbers for {count} operations",
            items.len()
        ));
    }
    items.chunks_exact(6).map(decode_one).collect()
}

fn decode_one(fields: &[redis::Value]) -> Result<Reply, String> {
    let bad = || format!("the counters script returned {fields:?} for an operation");
    let mut numbers = [0i64; 6];
    if fields.len() != numbers.len() {
        return Err(bad());
    }
    for (number, field) in numbers.iter_mut().zip(fields) {
        let redis::Value::Int(int) = field else {
            return Err(bad());
        };
        *number = *int;
    }
    let [
        status,
        allowed,
        deciding,
        remaining,
        reset_after,
        retry_after,
    ] = numbers;
    let unsigned = |n: i64| u64::try_from(n).map_err(|_| bad());
    Ok(Reply {
        status: match status {
            0 => Status::Done,
            1 => Status::Lost,
            2 => Status::Foreign,
            _ => return Err(bad()),
        },
        allowed: allowed == 1,
        deciding: usize::try_from(deciding).map_err(|_| bad())?,
        remaining: unsigned(remaining)?,
        reset_after: unsigned(reset_after)?,
        retry_after: if retry_after < 0 {
            None
        } else {
            Some(unsigned(retry_after)?)
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

    /// Keys and limits are listed once each and referenced by their 1-based index.
    #[test]
    fn a_call_lists_each_key_once() {
        let ops = [op(Code::Charge, "c1", "s"), op(Code::Peek, "c2", "s")];
        let time = ScriptTime {
            now: Some(7),
            expiry_margin_ms: 9,
        };
        let cmd = command("sha", time, true, ops.iter());
        let args: Vec<String> = cmd
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => String::new(),
            })
            .collect();
        let expected = [
            "EVALSHA", "sha", "3", "c1", "s", "c2", "7", "1", "9", //
            "1", "f", "5", "1000", "2", //
            "c", "2", "0", "id", "1", "1", "2", "1", //
            "p", "2", "0", "id", "1", "3", "2", "1",
        ];
        // (c2's sentinel is s, already listed: it is referenced, not repeated.)
        assert_eq!(args, expected);
    }

    #[test]
    fn replies_decode_and_anything_else_is_refused() {
        use redis::Value::{Array, Int, Nil};
        let reply = |fields: &[i64]| Array(fields.iter().map(|&n| Int(n)).collect());
        let value = reply(&[0, 1, 0, 4, 10, -1, 1, 0, 0, 0, 0, -1]);
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
        assert_eq!(replies[1].status, Status::Lost);
        assert!(decode(&value, 3).is_err());
        assert!(decode(&Nil, 0).is_err());
        assert!(decode(&reply(&[0, 1, 0, -4, 0, -1]), 1).is_err());
        assert!(decode(&reply(&[9, 1, 0, 4, 0, -1]), 1).is_err());
        assert!(decode(&reply(&[0, 1]), 1).is_err());
        assert!(decode(&Array(vec![Nil; 6]), 1).is_err());
    }
}
