//! Real files in a directory.

#![allow(unsafe_code)]

use super::{LockGuard, Mapped, Storage, StorageFile};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name of the lock file inside a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Files in a directory on a real file system.
#[derive(Debug)]
pub struct FsStorage {
    dir: PathBuf,
    /// Opened with [`existing`](FsStorage::existing): files are opened for reading only, and
    /// nothing is created, written, renamed, removed or locked.
    read_only: bool,
}

impl FsStorage {
    /// Storage in `dir`, which is created if missing.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<FsStorage> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        Ok(FsStorage {
            dir,
            read_only: false,
        })
    }

    /// Storage in an existing `dir`, read-only: files are opened for reading only (so a
    /// read-only mount or read-only files work), and every create, write, rename, remove,
    /// sync and lock fails with `PermissionDenied` without touching the directory.
    pub fn existing(dir: impl AsRef<Path>) -> io::Result<FsStorage> {
        let dir = dir.as_ref().to_path_buf();
        if !std::fs::metadata(&dir)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            ));
        }
        Ok(FsStorage {
            dir,
            read_only: true,
        })
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} was opened read-only", self.dir.display()),
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct FsFile {
    file: File,
    /// Opened for reading only: writes fail here, not with `EBADF` from the kernel.
    read_only: bool,
}

impl FsFile {
    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ));
        }
        Ok(())
    }
}

impl Storage for FsStorage {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        self.writable()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.dir.join(name))?;
        Ok(Box::new(FsFile {
            file,
            read_only: false,
        }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let path = self.dir.join(name);
        if self.read_only {
            return Ok(Box::new(FsFile {
                file: File::open(&path)?,
                read_only: true,
            }));
        }
        let (file, read_only) = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => (f, false),
            // A read-only file, or one on a read-only mount, can still be read.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                (File::open(&path)?, true)
            }
            Err(e) => return Err(e),
        };
        Ok(Box::new(FsFile { file, read_only }))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.writable()?;
        std::fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.writable()?;
        std::fs::remove_file(self.dir.join(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.writable()?;
        File::open(&self.dir)?.sync_all()
    }

    fn try_lock(&self) -> io::Result<Option<LockGuard>> {
        self.writable()?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join(LOCK_FILE))?;
        // flock(2): held by the open file description, so a second open in this process
        // conflicts too, and the kernel releases it when the process dies.
        match file.try_lock() {
            Ok(()) => Ok(Some(LockGuard::new(Box::new(file)))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

impl StorageFile for FsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(&self.file, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writable()?;
        FileExt::write_all_at(&self.file, buf, offset)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn map(&self, len: u64) -> io::Result<Mapped> {
        if len == 0 {
            return Ok(Mapped::new(Arc::new(Vec::<u8>::new())));
        }
        let file_len = self.len()?;
        if len > file_len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("cannot map {len} bytes of a {file_len}-byte file"),
            ));
        }
        // SAFETY: the map covers `0..len`, which the caller guarantees is sealed: afterlog
        // never writes, truncates or shrinks a sealed segment (compaction writes new files
        // and deletes old ones whole; a deleted file stays readable while mapped), so the
        // mapped bytes cannot change or vanish under us. We checked `len <= file_len` above,
        // so no page of the map lies beyond the end of the file.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(len as usize)
                .map(&self.file)?
        };
        Ok(Mapped::new(Arc::new(map)))
    }
}
