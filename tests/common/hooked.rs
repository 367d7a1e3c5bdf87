//! In-memory storage with hooks: a test decides what happens before a file is created,
//! written, grown, synced or read (a full disk, a panic), and the rest is `MemStorage`.

use afterlog::storage::{LockGuard, Mapped, MemStorage, Storage, StorageFile};
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// What a test does before the storage's operations; each default lets the operation be.
pub trait Hooks: Send + Sync + fmt::Debug + 'static {
    /// A file named `name` is about to be created.
    fn create(&self, _name: &str) {}
    /// `file` is about to hold bytes up to `end` (a write ending there, or a new length).
    fn write(&self, _file: &dyn StorageFile, _end: u64) -> io::Result<()> {
        Ok(())
    }
    /// A file is about to be synced.
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    /// A file is about to be read (`read_at`) or mapped.
    fn read(&self) {}
}

/// `MemStorage` behind `hooks`.
#[derive(Debug)]
pub struct Hooked<H> {
    pub inner: MemStorage,
    pub hooks: Arc<H>,
}

impl<H> Clone for Hooked<H> {
    fn clone(&self) -> Self {
        Hooked {
            inner: self.inner.clone(),
            hooks: self.hooks.clone(),
        }
    }
}

impl<H: Hooks> Hooked<H> {
    pub fn new(hooks: H) -> Hooked<H> {
        Hooked {
            inner: MemStorage::new(),
            hooks: Arc::new(hooks),
        }
    }

    fn wrap(&self, file: Box<dyn StorageFile>) -> Box<dyn StorageFile> {
        Box::new(HookedFile {
            inner: file,
            hooks: self.hooks.clone(),
        })
    }
}

impl<H: Hooks> Storage for Hooked<H> {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        self.hooks.create(name);
        self.inner.create(name).map(|f| self.wrap(f))
    }
    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        self.inner.open(name).map(|f| self.wrap(f))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
    fn try_lock(&self) -> io::Result<Option<LockGuard>> {
        self.inner.try_lock()
    }
}

#[derive(Debug)]
struct HookedFile<H> {
    inner: Box<dyn StorageFile>,
    hooks: Arc<H>,
}

impl<H: Hooks> StorageFile for HookedFile<H> {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.hooks.read();
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.hooks.write(&*self.inner, offset + buf.len() as u64)?;
        self.inner.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.hooks.write(&*self.inner, len)?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.hooks.sync()?;
        self.inner.sync_data()
    }
    unsafe fn map(&self, len: u64) -> io::Result<Mapped> {
        self.hooks.read();
        // SAFETY: the caller's promise for this file is the promise for the file it wraps.
        unsafe { self.inner.map(len) }
    }
}
