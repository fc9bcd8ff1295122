//! The builder's settings of rate counters on Redis (feature `redis`), beside the records of
//! any engine.

use std::time::Duration;

use super::StoreBuilder;

/// What the builder says about rate counters on Redis.
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    /// The URL (`None`: the counters live on the store's own engine).
    pub(super) url: Option<String>,
    /// The namespace of every key on Redis (`None`: `tollgate`).
    pub(super) namespace: Option<String>,
    /// The bound on every Redis call.
    pub(super) timeout: Duration,
    /// Redis scripts decide on this store's clock instead of Redis `TIME`.
    pub(super) client_time: bool,
    /// Denials from Redis are remembered and answered locally until their retry time.
    pub(super) denial_cache: bool,
    /// The certificate authority (PEM) `rediss://` trusts instead of the system's.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(super) ca_certificate: Option<Vec<u8>>,
}

impl StoreBuilder {
    /// Keeps this store's rate counters in Redis (feature `redis`): every `check`, `check_n`,
    /// `check_all`, `peek`, `refund` and `reset` is decided by one script call on the server, on
    /// Redis's clock, so every store (every node) using the same server and namespace counts the
    /// same counters. The idempotency records stay on the engine the store is opened on (a file,
    /// or PostgreSQL). `url` is `redis://[user:password@]host:port[/db]`, or the address of any
    /// node of a Redis Cluster (the store finds the others).
    ///
    /// Every decision is made by Redis when it is taken: [`RateDurability`](crate::ratelimit::RateDurability) does not apply (an
    /// explicit `Batched` is refused at open) and the counters last as long as Redis keeps them.
    /// When Redis loses them (a restart without persistence, a failover to an empty replica, a
    /// flush), the store notices and applies its [`CrashPolicy`](crate::ratelimit::CrashPolicy).
    ///
    /// ```no_run
    /// use tollgate::Store;
    /// use tollgate::ratelimit::{Limit, Quota};
    ///
    /// let store = Store::builder()
    ///     .rate_counters_redis("redis://127.0.0.1:6379")
    ///     .redis_namespace("shop-api")
    ///     .open_in_memory()?; // records in memory here; a file or PostgreSQL in production
    /// let login = Limit::new("login", Quota::per_minute(5))?;
    /// assert!(store.check(&login, "user:42")?.allowed());
    /// # Ok::<(), tollgate::Error>(())
    /// ```
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn rate_counters_redis(mut self, url: &str) -> Self {
        self.redis.url = Some(url.to_string());
        self
    }

    /// The namespace of every key the store writes to Redis (see
    /// [`StoreBuilder::rate_counters_redis`]): 1 to 64 characters of `A-Z a-z 0-9 _ - . :`.
    /// Stores on different namespaces never see each other's counters; every key of one starts
    /// with `<namespace>:`. Default = `tollgate`.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_namespace(mut self, namespace: &str) -> Self {
        self.redis.namespace = Some(namespace.to_string());
        self
    }

    /// The longest a rate operation waits for Redis (to connect, send and be answered) before
    /// it fails with [`Error::Unavailable`](crate::Error::Unavailable) (or [`Error::InDoubt`](crate::Error::InDoubt) for a charge that was sent):
    /// never a silent allow. After such a failure the store stops sending to that server (a
    /// circuit breaker) and refuses at once until a probe finds it back. Default = 250 ms.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis.timeout = timeout;
        self
    }

    /// Decide on this store's clock instead of Redis's `TIME`, for deployments whose Redis
    /// refuses `TIME` inside scripts (some proxies and managed services). Then nodes whose clocks
    /// disagree decide differently: keep them synchronized. Default = `false`.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_client_time(mut self, enabled: bool) -> Self {
        self.redis.client_time = enabled;
        self
    }

    /// Remember denials: a check of cost 1 on one counter that Redis denied is denied again
    /// by this store, without asking Redis, until the retry time Redis gave, for at most one
    /// second after Redis said so. A flood of denied requests (a bot guessing passwords) then
    /// costs Redis one call per subject per second per node. The cache never allows anything;
    /// after a `refund` or `reset` of that counter on *another* node it may deny for up to that
    /// second what Redis would now allow (one here drops the entry at once). `peek` and
    /// multi-limit checks always ask Redis. Default = `true`.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_denial_cache(mut self, enabled: bool) -> Self {
        self.redis.denial_cache = enabled;
        self
    }

    /// For `rediss://` URLs: trust the certificate authority in `pem` (one or more PEM
    /// certificates) instead of the system's trust store, for a Redis whose certificate a private
    /// CA signed. The server's name is checked against its certificate either way. Default =
    /// the system's store (which honours `SSL_CERT_FILE`).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.redis.ca_certificate = Some(pem.into());
        self
    }

    /// The Redis engine's options, if the counters live there.
    #[cfg(feature = "redis")]
    pub(crate) fn redis_options(&self) -> Option<crate::engine::redis::RedisOptions> {
        let url = self.redis.url.clone()?;
        Some(crate::engine::redis::RedisOptions {
            url,
            namespace: self
                .redis
                .namespace
                .clone()
                .unwrap_or_else(|| "tollgate".to_string()),
            timeout: self.redis.timeout,
            client_time: self.redis.client_time,
            denial_cache: self.redis.denial_cache,
            ca_certificate: self.redis.ca_certificate.clone(),
        })
    }
}
