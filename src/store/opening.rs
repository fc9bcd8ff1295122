//! Opening a store on an engine: the façade makes each engine's options from the builder,
//! opens the engine (and the Redis counters beside it, if asked), and names the file in an open's
//! error.

use std::path::Path;
use std::sync::Arc;

use super::builder::Settings;
use super::replay_cache::ReplayCache;
use super::{Shared, Store, StoreBuilder};
use crate::engine::Engine;
use crate::engine::embedded::{Embedded, Location};
use crate::engine::notify::Notifier;
use crate::engine::write_counters::Counters;
use crate::error::{Error, Result};

/// Rate counters that live elsewhere than on the store's engine, opened before it.
struct Elsewhere {
    #[cfg(feature = "redis")]
    redis: Option<crate::engine::redis::Redis>,
}

impl Elsewhere {
    #[cfg_attr(
        not(feature = "redis"),
        allow(unused_variables, clippy::unnecessary_wraps)
    )]
    fn open(builder: &StoreBuilder) -> Result<Elsewhere> {
        Ok(Elsewhere {
            #[cfg(feature = "redis")]
            redis: builder
                .redis_options()
                .map(|options| {
                    crate::engine::redis::Redis::open(
                        &options,
                        Arc::clone(&builder.clock),
                        builder.crash_policy,
                    )
                })
                .transpose()?,
        })
    }
}

/// An open's error for the file at `path`, with the path in its message where the error does
/// not name it already (what it is, and its variant, stay the same).
fn naming(path: &Path, error: Error) -> Error {
    let shown = path.display().to_string();
    let named = |reason: String| {
        if reason.contains(&shown) {
            reason
        } else {
            format!("{shown}: {reason}")
        }
    };
    match error {
        Error::NotAStore(reason) => Error::NotAStore(named(reason)),
        Error::Corrupted(reason) => Error::Corrupted(named(reason)),
        Error::Storage(storage) if !storage.to_string().contains(&shown) => {
            Error::storage(AtPath {
                path: shown,
                source: storage.into_inner(),
            })
        }
        other => other,
    }
}

/// A storage error of the open of the file at `path`: "`path`: the error", the error its source.
#[derive(Debug)]
struct AtPath {
    path: String,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

impl std::fmt::Display for AtPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.source)
    }
}

impl std::error::Error for AtPath {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// What every engine's open gets besides its own options: the store's checked settings, and the
/// notifier and counters the façade shares with the engine.
struct Parts<'a> {
    settings: &'a Settings,
    notifier: &'a Arc<Notifier>,
    counters: &'a Arc<Counters>,
}

impl Store {
    /// Opens a store on the engine `open` makes: checks the builder's settings, opens the rate
    /// counters that live elsewhere (first: a failure there leaves no engine open), then the
    /// engine.
    fn open_on(
        builder: &StoreBuilder,
        open: impl FnOnce(Parts<'_>) -> Result<Engine>,
    ) -> Result<Store> {
        let settings = builder.settings()?;
        let elsewhere = Elsewhere::open(builder)?;
        let notifier = Arc::new(Notifier::default());
        let counters = Arc::new(Counters::default());
        let engine = open(Parts {
            settings: &settings,
            notifier: &notifier,
            counters: &counters,
        })?;
        Ok(Store::with_engine(
            builder, settings, engine, elsewhere, notifier, counters,
        ))
    }

    pub(crate) fn open_embedded(builder: &StoreBuilder, location: Location) -> Result<Store> {
        Store::open_on(builder, |parts| {
            let path = if let Location::File(path) = &location {
                Some(path.clone())
            } else {
                None
            };
            Embedded::open(
                &builder.embedded_options(parts.settings),
                location,
                Arc::clone(parts.notifier),
                Arc::clone(parts.counters),
            )
            .map(Engine::Embedded)
            .map_err(|error| match &path {
                Some(path) => naming(path, error),
                None => error,
            })
        })
    }

    /// Opens the file at `path` shared by the processes of the host (`StoreBuilder::open_shared`).
    #[cfg(target_os = "linux")]
    pub(crate) fn open_shared_file(builder: &StoreBuilder, path: &Path) -> Result<Store> {
        use crate::engine::shared::{Shared, SharedOptions};
        Store::open_on(builder, |parts| {
            Shared::open(SharedOptions {
                embedded: builder.embedded_options(parts.settings),
                path: path.to_path_buf(),
                max_response_bytes: parts.settings.max_response_bytes,
                notifier: Arc::clone(parts.notifier),
                counters: Arc::clone(parts.counters),
                read_only: builder.read_only,
            })
            .map(Engine::Shared)
            .map_err(|error| naming(path, error))
        })
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn open_postgres(builder: &StoreBuilder, conn: &str) -> Result<Store> {
        Store::open_on(builder, |parts| {
            crate::engine::postgres::Postgres::open(
                &builder.postgres_options(parts.settings),
                conn,
                parts.notifier,
                Arc::clone(parts.counters),
            )
            .map(Engine::Postgres)
        })
    }

    #[cfg_attr(not(feature = "redis"), allow(clippy::needless_pass_by_value))]
    fn with_engine(
        builder: &StoreBuilder,
        settings: Settings,
        engine: Engine,
        elsewhere: Elsewhere,
        notifier: Arc<Notifier>,
        counters: Arc<Counters>,
    ) -> Store {
        #[cfg(not(feature = "redis"))]
        let Elsewhere {} = elsewhere;
        Store {
            shared: Arc::new(Shared {
                engine,
                #[cfg(feature = "redis")]
                redis: elsewhere.redis,
                settings,
                notifier,
                counters,
                replays: ReplayCache::new(builder.replay_cache_size),
            }),
        }
    }
}
