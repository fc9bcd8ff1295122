//! What the store's keys on Redis are called, and the limits written in the script's units.
//!
//! Every key starts with the namespace (`StoreBuilder::redis_namespace`, default `tollgate`):
//!
//! ```text
//! <ns>:secret                       the counter-key secret, shared by every node: "v1 <32 hex>"
//! <ns>:{<ns>:<bucket>}:sentinel     one per bucket: "<secret id> <drained from, us>"
//! <ns>:{<ns>:<bucket>}:<32 hex>     a counter: SipHash-1-3-128(secret; limit, subject)
//! ```
//!
//! **Buckets and slots.** A subject's *slot part* is the text inside its first `{…}` (when not
//! empty), else the whole subject; its bucket is a keyed hash of that part, one of
//! [`CLUSTER_BUCKETS`] on a Redis Cluster. The braces in the key are a Redis Cluster hash tag:
//! every key of a bucket (its counters and its sentinel) lives in one cluster slot, so one script
//! can check and charge all the limits of one subject, and see the sentinel that says whether
//! the bucket's data was lost. Cluster masters fail (and lose data) apart, so each slot needs a
//! sentinel of its own. A standalone server loses its data all at once: there the namespace is
//! one bucket, and one sentinel watches it (so a batch of checks reads one sentinel, not one
//! each).
//! Subjects never reach Redis raw: both the counter key and the bucket come from the keyed hash.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ratelimit::{CounterKey, CounterKeys, Spec};

/// How many buckets the counters are spread over on a Redis Cluster (and how many sentinels a
/// namespace has there); a standalone server has one.
pub(crate) const CLUSTER_BUCKETS: u16 = 1024;

/// The largest window (GCRA: burst × interval) the script handles, in microseconds (about 35
/// years): with times below 2^52 µs every sum in the script stays an exact double.
const MAX_WINDOW_MICROS: u64 = 1 << 50;

/// A limit in the script's units: integer microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MicroSpec {
    /// `g` GCRA, `f` fixed window, `s` sliding window.
    pub kind: &'static str,
    /// GCRA: the emission interval (µs); windows: the limit.
    pub a: u64,
    /// GCRA: the burst; windows: the period (µs).
    pub b: u64,
}

impl MicroSpec {
    /// `spec` in microseconds. A GCRA interval or window period that is not a whole number of
    /// microseconds is rounded up: never more permissive than the limit asked for.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a window longer than 2^50 µs (about 35 years).
    pub(crate) fn of(spec: &Spec) -> Result<MicroSpec> {
        let micros = |nanos: u64| nanos.div_ceil(1000);
        let (kind, a, b) = match *spec {
            Spec::Gcra { interval, burst } => ("g", micros(interval), burst),
            Spec::FixedWindow { limit, period } => ("f", limit, micros(period)),
            Spec::SlidingWindow { limit, period } => ("s", limit, micros(period)),
        };
        let micro = MicroSpec { kind, a, b };
        // GCRA's window is burst × interval; a window's is its period.
        let window = if kind == "g" {
            a.checked_mul(b)
        } else {
            Some(b)
        };
        if window.is_none_or(|window| window > MAX_WINDOW_MICROS) {
            return Err(Error::InvalidArgument(
                "counters on Redis take windows (GCRA: burst × interval) up to 2^50 µs, about \
                 35 years"
                    .into(),
            ));
        }
        Ok(micro)
    }

    /// The same limit in nanoseconds, for the pure rules (the differential test compares them).
    #[cfg(test)]
    pub(crate) fn spec(&self) -> Spec {
        match self.kind {
            "g" => Spec::Gcra {
                interval: self.a,
                burst: self.b,
            },
            "f" => Spec::FixedWindow {
                limit: self.a,
                period: self.b,
            },
            _ => Spec::SlidingWindow {
                limit: self.a,
                period: self.b,
            },
        }
    }
}

/// Checks a namespace: 1 to 64 characters of `A-Z a-z 0-9 _ - . :` (no braces: they would
/// change the keys' hash tags).
///
/// # Errors
/// [`Error::InvalidArgument`] otherwise.
pub(crate) fn check_namespace(name: &str) -> Result<()> {
    let good = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if good {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "a Redis namespace is 1 to 64 characters of A-Z a-z 0-9 _ - . : ; got {name:?}"
        )))
    }
}

/// The key that holds a namespace's secret.
pub(crate) fn secret_key(namespace: &str) -> String {
    format!("{namespace}:secret")
}

/// The secret as stored: `v1 ` and 32 hex digits.
pub(crate) fn encode_secret(secret: (u64, u64)) -> String {
    format!("v1 {:016x}{:016x}", secret.0, secret.1)
}

/// A secret read from Redis.
///
/// # Errors
/// [`Error::Corrupted`] if the value is not one [`encode_secret`] writes.
pub(crate) fn decode_secret(value: &str) -> Result<(u64, u64)> {
    let bad = || Error::Corrupted(format!("the Redis counter secret is malformed: {value:?}"));
    let hex = value.strip_prefix("v1 ").ok_or_else(bad)?;
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let first = u64::from_str_radix(&hex[..16], 16).map_err(|_| bad())?;
    let second = u64::from_str_radix(&hex[16..], 16).map_err(|_| bad())?;
    Ok((first, second))
}

/// A subject's slot part: the text inside its first `{…}` if that is not empty, else all of it
/// (the rule Redis Cluster applies to keys).
pub(crate) fn slot_part(subject: &str) -> &str {
    if let Some(open) = subject.find('{') {
        let rest = &subject[open + 1..];
        if let Some(close) = rest.find('}') {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    subject
}

/// The names of one namespace's keys under one secret.
#[derive(Debug)]
pub(crate) struct Namespace {
    pub(crate) secret: (u64, u64),
    keys: CounterKeys,
    /// Names the secret in sentinels, without giving it away: 16 hex digits of a keyed hash.
    pub(crate) secret_id: Arc<str>,
    /// Every bucket's sentinel key, by bucket.
    sentinels: Vec<Arc<str>>,
    /// Every bucket's counter keys' prefix, `<ns>:{<ns>:<bucket>}:`, by bucket.
    prefixes: Vec<String>,
}

impl Namespace {
    /// The keys of namespace `name` under `secret`, over `buckets` buckets (at least 1).
    pub(crate) fn new(name: &str, secret: (u64, u64), buckets: u16) -> Result<Namespace> {
        let buckets = buckets.max(1);
        let keys = CounterKeys::new(secret);
        let id = keys.key("tollgate.secret-id", "id")?;
        let mut secret_id = String::with_capacity(16);
        for byte in &id.0[..8] {
            let _ = write!(secret_id, "{byte:02x}");
        }
        let prefixes: Vec<String> = (0..buckets)
            .map(|bucket| format!("{name}:{{{name}:{bucket}}}:"))
            .collect();
        let sentinels = prefixes
            .iter()
            .map(|prefix| Arc::from(format!("{prefix}sentinel")))
            .collect();
        Ok(Namespace {
            secret,
            keys,
            secret_id: Arc::from(secret_id),
            sentinels,
            prefixes,
        })
    }

    /// The bucket of `subject`'s counters.
    pub(crate) fn bucket(&self, subject: &str) -> Result<u16> {
        let hash = self.keys.key("tollgate.bucket", slot_part(subject))?;
        let buckets = u16::try_from(self.sentinels.len()).unwrap_or(1).max(1);
        Ok(u16::from_be_bytes([hash.0[0], hash.0[1]]) % buckets)
    }

    /// The key of `subject`'s counter under the limit named `limit`, and the keyed hash it is
    /// written from (which names the counter for the denial cache).
    pub(crate) fn counter_key(
        &self,
        limit: &str,
        subject: &str,
        bucket: u16,
    ) -> Result<(String, [u8; 16])> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let CounterKey(hash) = self.keys.key(limit, subject)?;
        let prefix = self
            .prefixes
            .get(usize::from(bucket))
            .map_or("", String::as_str);
        let mut key = String::with_capacity(prefix.len() + 32);
        key.push_str(prefix);
        for byte in hash {
            key.push(char::from(HEX[usize::from(byte >> 4)]));
            key.push(char::from(HEX[usize::from(byte & 15)]));
        }
        Ok((key, hash))
    }

    /// The sentinel key of `bucket`.
    pub(crate) fn sentinel(&self, bucket: u16) -> Arc<str> {
        self.sentinels
            .get(usize::from(bucket))
            .map_or_else(|| Arc::from(""), Arc::clone)
    }

    /// How many buckets the namespace has.
    pub(crate) fn buckets(&self) -> u16 {
        u16::try_from(self.sentinels.len()).unwrap_or(u16::MAX)
    }

    /// Every sentinel key, by bucket.
    pub(crate) fn sentinels(&self) -> &[Arc<str>] {
        &self.sentinels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_part_follows_the_cluster_rule() {
        assert_eq!(slot_part("user:42"), "user:42");
        assert_eq!(slot_part("{user:42}:ip:10.0.0.1"), "user:42");
        assert_eq!(slot_part("ip:{7}"), "7");
        assert_eq!(slot_part("{}x{y}"), "{}x{y}");
        assert_eq!(slot_part("{open"), "{open");
    }

    #[test]
    fn keys_share_a_bucket_exactly_when_their_slot_parts_do() {
        let ns = Namespace::new("ns", (1, 2), CLUSTER_BUCKETS).unwrap();
        let tagged = ns.bucket("{user:42}:ip").unwrap();
        assert_eq!(tagged, ns.bucket("{user:42}:device").unwrap());
        assert_eq!(tagged, ns.bucket("user:42").unwrap());
        let (key, _) = ns.counter_key("login", "user:42", tagged).unwrap();
        assert!(key.starts_with(&format!("ns:{{ns:{tagged}}}:")), "{key}");
        assert_eq!(key.len(), format!("ns:{{ns:{tagged}}}:").len() + 32);
        assert!(!key.contains("user"), "the subject is hashed: {key}");
        assert_eq!(
            &*ns.sentinel(tagged),
            format!("ns:{{ns:{tagged}}}:sentinel")
        );
        let spread: std::collections::HashSet<u16> = (0..200)
            .map(|i| ns.bucket(&format!("user:{i}")).unwrap())
            .collect();
        assert!(
            spread.len() > 150,
            "{} buckets for 200 subjects",
            spread.len()
        );
        assert_eq!(ns.buckets(), CLUSTER_BUCKETS);
        assert_eq!(ns.sentinels().len(), usize::from(CLUSTER_BUCKETS));
        assert_eq!(&*ns.sentinels()[7], "ns:{ns:7}:sentinel");
        assert_eq!(secret_key("ns"), "ns:secret");
        // A standalone server: one bucket, one sentinel.
        let standalone = Namespace::new("ns", (1, 2), 1).unwrap();
        assert_eq!(standalone.buckets(), 1);
        assert_eq!(standalone.bucket("anyone").unwrap(), 0);
        assert_eq!(standalone.sentinels().len(), 1);
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_typed_errors() {
        let secret = (0x0123_4567_89ab_cdef, 42);
        assert_eq!(decode_secret(&encode_secret(secret)).unwrap(), secret);
        for bad in ["", "v1 ", "v2 0123456789abcdef0123456789abcdef", "v1 xyz"] {
            assert!(
                matches!(decode_secret(bad), Err(Error::Corrupted(_))),
                "{bad}"
            );
        }
        let a = Namespace::new("ns", (1, 2), CLUSTER_BUCKETS).unwrap();
        let b = Namespace::new("ns", (1, 3), CLUSTER_BUCKETS).unwrap();
        assert_ne!(a.secret_id, b.secret_id);
        assert_eq!(a.secret_id.len(), 16);
    }

    #[test]
    fn limits_are_rounded_up_to_microseconds_and_bounded() {
        let gcra = Spec::Gcra {
            interval: 333_333_333,
            burst: 3,
        };
        assert_eq!(
            MicroSpec::of(&gcra).unwrap(),
            MicroSpec {
                kind: "g",
                a: 333_334,
                b: 3
            }
        );
        let widest = Spec::FixedWindow {
            limit: 1,
            period: (1 << 50) * 1000,
        };
        assert_eq!(
            MicroSpec::of(&widest).unwrap().b,
            1 << 50,
            "2^50 µs is accepted"
        );
        let huge = Spec::FixedWindow {
            limit: 1,
            period: (1 << 50) * 1000 + 1,
        };
        assert!(matches!(
            MicroSpec::of(&huge),
            Err(Error::InvalidArgument(_))
        ));
        for name in ["", "a{b", "x}", &"n".repeat(65), "sp ace"] {
            assert!(check_namespace(name).is_err(), "{name:?}");
        }
        assert!(check_namespace("tollgate:prod-1.eu_west").is_ok());
    }
}
