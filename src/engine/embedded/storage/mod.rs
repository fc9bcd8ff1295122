//! The embedded engine's storage: the only code that names redb's types.
//!
//! - `schema.rs`: the tables, meta keys and format checks;
//! - `open.rs`: creating or checking the file at open, the persisted counters;
//! - `backend.rs`: reads, the write transaction, counts, offline integrity and reclaim;
//! - `tables.rs`: one write transaction's tables, with the expiry index kept in step;
//! - `containment.rs`: redb's errors and panics as tollgate's;
//! - `sim_disk.rs`: a simulated disk for crash tests.
//!
//! - open: create or check the file, durably bump the boot epoch, return the persisted counters;
//! - read one record or counter from the latest committed state, without blocking the writer;
//! - run a batch of reads and writes in one atomic, durable transaction (`write`), where the batch
//!   can read its own writes, put and delete records (keeping the expiry index in step), count
//!   records, remove expired ones, save the counters, or roll everything back.
//!
//! Values are encoded by the engines' shared codec (`engine::codec`); the byte layout is in
//! `docs/FORMAT.md`.

mod backend;
mod containment;
mod open;
mod schema;
#[cfg(any(test, feature = "test-support"))]
mod sim_disk;
mod tables;

pub(crate) use backend::Backend;
#[cfg(any(test, feature = "test-support"))]
pub(crate) use containment::contained_panics;
pub(crate) use containment::io_kind;
pub(crate) use open::{Counters, OpenOptions, sync_directory as sync_parent};
pub(crate) use schema::LogState;
#[cfg(any(test, feature = "test-support"))]
pub use sim_disk::SimDisk;

/// A device the write-ahead log writes through (a file, memory, or the simulated disk): redb's
/// storage-backend trait, named here so that nothing outside `storage/` names redb.
pub(crate) use redb::StorageBackend as Device;

/// Where a store's bytes live.
#[derive(Debug, Clone)]
pub(crate) enum Location {
    /// A file.
    File(std::path::PathBuf),
    /// Memory only (`Store::in_memory`): nothing survives the store.
    Memory(std::sync::Arc<redb::backends::InMemoryBackend>),
    /// A simulated disk for crash and I/O-failure tests.
    #[cfg(any(test, feature = "test-support"))]
    Simulated(SimDisk),
}

impl Location {
    /// A new, empty store in memory.
    pub(crate) fn memory() -> Location {
        Location::Memory(std::sync::Arc::new(redb::backends::InMemoryBackend::new()))
    }

    /// The file's path, or a description of where the bytes are, for error messages.
    pub(crate) fn path(&self) -> std::path::PathBuf {
        match self {
            Location::File(path) => path.clone(),
            Location::Memory(_) => "(in memory)".into(),
            #[cfg(any(test, feature = "test-support"))]
            Location::Simulated(_) => "(simulated disk)".into(),
        }
    }

    /// The size of the store's bytes.
    pub(crate) fn len(&self) -> Result<u64, crate::Error> {
        match self {
            Location::File(path) => std::fs::metadata(path)
                .map(|meta| meta.len())
                .map_err(containment::storage),
            Location::Memory(memory) => {
                redb::StorageBackend::len(memory.as_ref()).map_err(containment::storage)
            }
            #[cfg(any(test, feature = "test-support"))]
            Location::Simulated(disk) => {
                redb::StorageBackend::len(disk).map_err(containment::storage)
            }
        }
    }
}
#[cfg(test)]
pub(crate) use tables::tests::backend as test_backend;
pub(crate) use tables::{RecordCounts, Tables};
