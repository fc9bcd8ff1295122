//! Which server holds each bucket: one standalone server, or the masters of a Redis Cluster.
//!
//! tollgate routes by itself instead of through the client's cluster connection, so that each
//! master gets one pipelining I/O thread (`link.rs`). A bucket's slot is asked of Redis
//! (`CLUSTER KEYSLOT` of its sentinel key, once per open), and the slot's master is read from
//! `CLUSTER SLOTS`. A call refused with `MOVED` or `ASK` (a resharding, a failover) did not run:
//! the store reads the map again and sends it where it now belongs.

use std::sync::Arc;

use super::link::{Link, LinkConfig};
use crate::error::{Error, Result};

/// The current map from buckets to servers.
pub(crate) struct Routes {
    pub(crate) links: Vec<Arc<Link>>,
    /// Per bucket: its cluster slot (0 on a standalone server) and the index of its link.
    by_bucket: Vec<(u16, usize)>,
}

impl Routes {
    /// A standalone server: its one bucket on one link.
    pub(crate) fn standalone(link: Arc<Link>) -> Routes {
        Routes {
            links: vec![link],
            by_bucket: vec![(0, 0)],
        }
    }

    /// The slot and link of `bucket`.
    pub(crate) fn route(&self, bucket: u16) -> Option<(u16, &Arc<Link>)> {
        let &(slot, link) = self.by_bucket.get(usize::from(bucket))?;
        Some((slot, self.links.get(link)?))
    }

    /// A cluster's map: `slots` is each bucket's slot, `ranges` what `CLUSTER SLOTS` said.
    /// Links to masters already in `old` are kept; new masters get a link of their own.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if a slot has no master (the cluster is not fully set up), or a
    /// link cannot start.
    pub(crate) fn cluster(
        slots: &[u16],
        ranges: &[(u16, u16, String, u16)],
        old: Option<&Routes>,
        config: &LinkConfig,
    ) -> Result<Routes> {
        let mut links: Vec<Arc<Link>> = Vec::new();
        let mut by_bucket = Vec::with_capacity(slots.len());
        for &slot in slots {
            let Some((_, _, host, port)) = ranges
                .iter()
                .find(|(start, end, _, _)| (*start..=*end).contains(&slot))
            else {
                return Err(Error::Unavailable(format!(
                    "no Redis Cluster master serves slot {slot}"
                )));
            };
            let addr = format!("{host}:{port}");
            let index = if let Some(index) = links.iter().position(|link| *link.addr == *addr) {
                index
            } else {
                let reused = old
                    .and_then(|old| old.links.iter().find(|link| *link.addr == *addr))
                    .cloned();
                let link = if let Some(link) = reused {
                    link
                } else {
                    let info = config.info.clone().set_addr(address(
                        config.info.addr(),
                        host.clone(),
                        *port,
                    ));
                    let link_config = LinkConfig {
                        info,
                        ..config.clone()
                    };
                    Arc::new(Link::start(addr, &link_config).map_err(Error::storage)?)
                };
                links.push(link);
                links.len() - 1
            };
            by_bucket.push((slot, index));
        }
        Ok(Routes { links, by_bucket })
    }
}

/// The seed's address kind (TCP, or TCP with TLS and the seed's TLS settings) at `host:port`.
fn address(seed: &redis::ConnectionAddr, host: String, port: u16) -> redis::ConnectionAddr {
    match seed {
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => redis::ConnectionAddr::Tcp(host, port),
    }
}

/// `CLUSTER SLOTS` as (first slot, last slot, master host, master port).
///
/// # Errors
/// A message if the reply is not shaped as Redis documents it.
pub(crate) fn parse_slots(
    value: &redis::Value,
) -> std::result::Result<Vec<(u16, u16, String, u16)>, String> {
    let bad = || format!("CLUSTER SLOTS returned {value:?}");
    let redis::Value::Array(ranges) = value else {
        return Err(bad());
    };
    let number = |value: &redis::Value| match value {
        redis::Value::Int(n) => u16::try_from(*n).map_err(|_| bad()),
        _ => Err(bad()),
    };
    let text = |value: &redis::Value| match value {
        redis::Value::BulkString(bytes) => Ok(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(text) => Ok(text.clone()),
        _ => Err(bad()),
    };
    ranges
        .iter()
        .map(|range| {
            let redis::Value::Array(fields) = range else {
                return Err(bad());
            };
            let [start, end, master, ..] = fields.as_slice() else {
                return Err(bad());
            };
            let redis::Value::Array(master) = master else {
                return Err(bad());
            };
            let [host, port, ..] = master.as_slice() else {
                return Err(bad());
            };
            Ok((number(start)?, number(end)?, text(host)?, number(port)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value::{Array, BulkString, Int};

    #[test]
    fn cluster_slots_parse_and_malformed_replies_are_refused() {
        let master = |port| {
            Array(vec![
                BulkString(b"127.0.0.1".to_vec()),
                Int(port),
                BulkString(b"id".to_vec()),
            ])
        };
        let value = Array(vec![
            Array(vec![Int(0), Int(5460), master(7000), master(7003)]),
            Array(vec![Int(5461), Int(16383), master(7001)]),
        ]);
        assert_eq!(
            parse_slots(&value).unwrap(),
            vec![
                (0, 5460, "127.0.0.1".to_string(), 7000),
                (5461, 16383, "127.0.0.1".to_string(), 7001)
            ]
        );
        assert!(parse_slots(&Int(1)).is_err());
        assert!(parse_slots(&Array(vec![Array(vec![Int(0), Int(1)])])).is_err());
        assert!(parse_slots(&Array(vec![Array(vec![Int(0), Int(70000), master(1)])])).is_err());
    }
}
