//! The log's file on a filesystem: opened (created with its parent directory entry left to the
//! caller to sync), read and written at offsets, synced with `fdatasync`. The log writes through
//! the storage's device trait, so the simulated disk of the crash tests can stand in for it.

use super::super::storage::Device as StorageBackend;
/// A log file on a filesystem, read and written at offsets.
#[derive(Debug)]
pub(crate) struct LogFile(std::fs::File);

impl LogFile {
    /// Opens the log at `path`: for writes, created if `create`; or, without `writable`, an
    /// existing one for reads.
    ///
    /// # Errors
    /// The filesystem's errors.
    pub(crate) fn open(
        path: &std::path::Path,
        writable: bool,
        create: bool,
    ) -> std::io::Result<Self> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .create(writable && create)
            .truncate(false)
            .open(path)
            .map(Self)
    }
}

impl StorageBackend for LogFile {
    fn len(&self) -> std::io::Result<u64> {
        self.0.metadata().map(|meta| meta.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_exact_at(&self.0, out, offset)
        }
        #[cfg(windows)]
        {
            let mut done = 0;
            while done < out.len() {
                let n = std::os::windows::fs::FileExt::seek_read(
                    &self.0,
                    &mut out[done..],
                    offset + done as u64,
                )?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                done += n;
            }
            Ok(())
        }
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::write_all_at(&self.0, data, offset)
        }
        #[cfg(windows)]
        {
            let mut done = 0;
            while done < data.len() {
                done += std::os::windows::fs::FileExt::seek_write(
                    &self.0,
                    &data[done..],
                    offset + done as u64,
                )?;
            }
            Ok(())
        }
    }
}
