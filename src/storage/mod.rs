//! Storage behind a small trait: a directory of files that can be created, written at an
//! offset, synced, renamed, removed and mapped.
//!
//! Two implementations: [`FsStorage`] (real files; sealed segments are read through
//! `memmap2`) and [`MemStorage`] (memory, with injected faults: unsynced writes dropped on a
//! simulated crash, torn writes, failed syncs, short reads). The log and everything above it
//! only ever talk to `dyn Storage`, so every crash scenario runs on both.

mod fs;
mod mem;

pub(crate) use fs::explain_missing;
pub use fs::{FsStorage, LOCK_FILE};
pub use mem::{CrashMode, MEM_FILE_BYTES_MAX, MemStorage, OpKind, SECTOR_BYTES, TraceEntry};

use std::fmt;
use std::io;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

/// A directory of files.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// The directory, for error messages.
    fn path(&self) -> &Path;
    /// The names of the files in the directory (not sorted).
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a new, empty file; fails if it exists. The directory entry is durable only
    /// after `sync_dir`.
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>>;
    /// Renames a file, replacing any file named `to`. Durable only after `sync_dir`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file. Durable only after `sync_dir`.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes every create, rename and remove so far durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Takes the directory's exclusive lock, or returns `Ok(None)` at once if another holder
    /// (in this or another process) has it. The lock is released when the guard is dropped.
    fn try_lock(&self) -> io::Result<Option<LockGuard>>;
    /// Fails if the directory this storage locked is no longer the one its path names (it
    /// was moved or replaced since [`try_lock`](Storage::try_lock)): files created, renamed
    /// or removed by path would then land in a directory someone else may hold. Storage
    /// without paths (in memory) always passes.
    fn check_lock(&self) -> io::Result<()> {
        Ok(())
    }
}

/// One open file.
#[allow(
    clippy::len_without_is_empty,
    reason = "a file length is an io::Result"
)]
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// The file's length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; may return fewer (a short read), and 0 at
    /// the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed. Durable only after
    /// `sync_data`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Sets the file's length (zero-filling when it grows). Durable only after `sync_data`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data (and the metadata needed to read it) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// A read-only view of the bytes `0..len`: a memory map for real files.
    ///
    /// The contract is on the caller, so the method is `unsafe` rather than the trait
    /// sealed: implementing the trait (a wrapper that injects faults, say) is safe, while
    /// mapping a file that someone then shrinks is not, whoever implemented it. A sealed
    /// trait would forbid the first and still allow the second.
    ///
    /// # Safety
    ///
    /// While the returned view (or a clone of it) lives, the file must not be truncated or
    /// shrunk below `len`, nor the bytes `0..len` written, by this process or any other:
    /// with a memory map, a truncated page faults (`SIGBUS`) on the next read and a write
    /// changes bytes that safe code holds as `&[u8]`. afterlog maps sealed segments only,
    /// which it never writes again.
    #[allow(unsafe_code, reason = "the caller promises the mapped range does not change")]
    unsafe fn map(&self, len: u64) -> io::Result<Mapped>;
}

/// A held directory lock; dropping it releases the lock.
pub struct LockGuard(#[allow(dead_code)] Box<dyn Send + Sync>);

impl LockGuard {
    /// Wraps whatever releases the lock when dropped.
    pub fn new(inner: Box<dyn Send + Sync>) -> LockGuard {
        LockGuard(inner)
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockGuard")
    }
}

/// Read-only bytes of a sealed file: a memory map, or a copy for in-memory storage.
/// Cloning is cheap (reference counted).
#[derive(Clone)]
pub struct Mapped(Arc<dyn AsRef<[u8]> + Send + Sync>);

impl Mapped {
    /// Wraps any byte owner.
    pub fn new(bytes: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Mapped {
        Mapped(bytes)
    }
}

impl Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl fmt::Debug for Mapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mapped({} bytes)", self.len())
    }
}

/// Reads exactly `buf.len()` bytes at `offset`, retrying short reads. Running out of file
/// is an `UnexpectedEof` error.
pub fn read_exact_at(
    file: &dyn StorageFile,
    mut buf: &mut [u8],
    mut offset: u64,
) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file ends before offset {offset}"),
                ));
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
