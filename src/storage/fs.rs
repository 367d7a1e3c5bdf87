//! Real files in a directory.

#![allow(unsafe_code)]

use super::{LockGuard, Mapped, Storage, StorageFile};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The name of the lock file inside a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Files in a directory on a real file system.
#[derive(Debug)]
pub struct FsStorage {
    dir: PathBuf,
    /// The device and inode of the directory `try_lock` locked, for `check_lock`.
    locked: Mutex<Option<(u64, u64)>>,
    /// Opened with [`existing`](FsStorage::existing): files are opened for reading only, and
    /// nothing is created, written, renamed, removed or locked.
    read_only: bool,
}

/// Attempts at locking a directory that keeps being replaced under its path.
const LOCK_PATH_ATTEMPTS: u32 = 3;

impl FsStorage {
    /// Storage in `dir`, which is created if missing.
    pub fn new(dir: impl AsRef<Path>) -> io::Result<FsStorage> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)?;
        Ok(FsStorage::at(dir, false))
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
        Ok(FsStorage::at(dir, true))
    }

    fn at(dir: PathBuf, read_only: bool) -> FsStorage {
        FsStorage {
            dir,
            locked: Mutex::new(None),
            read_only,
        }
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

    /// The device and inode the directory's path names now.
    fn path_identity(&self) -> io::Result<(u64, u64)> {
        let meta = std::fs::metadata(&self.dir)?;
        Ok((meta.dev(), meta.ino()))
    }

    /// One attempt at both locks.
    fn lock_once(&self) -> io::Result<LockAttempt> {
        // The directory itself: deleting or replacing a file in it leaves this lock alone,
        // so a cleaner that removes LOCK lets no second writer in.
        let dir = File::open(&self.dir)?;
        if !try_flock(&dir)? {
            return Ok(LockAttempt::Busy);
        }
        // And LOCK, which is all that builds before this one lock: they still conflict.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join(LOCK_FILE))?;
        if !try_flock(&file)? {
            return Ok(LockAttempt::Busy);
        }
        let meta = dir.metadata()?;
        let locked = (meta.dev(), meta.ino());
        if self.path_identity()? != locked {
            return Ok(LockAttempt::Replaced);
        }
        Ok(LockAttempt::Held(
            LockGuard::new(Box::new((dir, file))),
            locked,
        ))
    }
}

enum LockAttempt {
    /// Both locks are held; the device and inode of the locked directory.
    Held(LockGuard, (u64, u64)),
    /// Another holder has one of them.
    Busy,
    /// The path stopped naming the directory just locked (moved or replaced meanwhile).
    Replaced,
}

/// flock(2) `LOCK_EX | LOCK_NB`: held by the open file description, so a second open in
/// this process conflicts too, and the kernel releases it when the process dies. False
/// when another holder has it.
fn try_flock(file: &File) -> io::Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The error of a path that no longer names the directory that was locked (the caller's
/// error names the path).
fn replaced(when: &str) -> io::Error {
    io::Error::other(format!(
        "the data directory was moved or replaced {when}: its path names another directory now"
    ))
}

#[derive(Debug)]
struct FsFile {
    file: File,
    /// Set when the file could only be opened for reading: why opening it for writing
    /// failed, which every write reports instead of the kernel's "bad file descriptor".
    read_only: Option<(io::ErrorKind, String)>,
}

impl FsFile {
    fn writable(&self) -> io::Result<()> {
        match &self.read_only {
            None => Ok(()),
            Some((kind, why)) => Err(io::Error::new(
                *kind,
                format!("the file cannot be written: opening it for writing failed: {why}"),
            )),
        }
    }
}

/// A "not found" error for `path` that says so when `path` is a symbolic link whose target
/// is missing (the kernel's message would suggest the link itself is).
pub(crate) fn explain_missing(path: &Path, e: io::Error) -> io::Error {
    if e.kind() != io::ErrorKind::NotFound {
        return e;
    }
    match std::fs::read_link(path) {
        Ok(target) => io::Error::new(
            io::ErrorKind::NotFound,
            format!("a dangling symbolic link to {}", target.display()),
        ),
        Err(_) => e,
    }
}

/// Refuses what is not a regular file (after following symbolic links) before it is
/// opened, so that a FIFO never blocks an open or a read, and a dangling link says so.
fn check_regular(path: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| explain_missing(path, e))?;
    if meta.is_file() {
        return Ok(());
    }
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "of an unknown type"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file: it is {what}"),
    ))
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
            read_only: None,
        }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let path = self.dir.join(name);
        check_regular(&path)?;
        let opened = if self.read_only {
            File::open(&path).map(|file| {
                let why = (
                    io::ErrorKind::PermissionDenied,
                    "opened read-only".to_string(),
                );
                (file, Some(why))
            })
        } else {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map(|file| (file, None))
        };
        let (file, read_only) = match opened {
            Ok(opened) => opened,
            // A read-only file system, directory or file (or an immutable file) can still be
            // inspected; a write then reports why it cannot be done.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                (File::open(&path)?, Some((e.kind(), e.to_string())))
            }
            Err(e) => return Err(e),
        };
        // Replaced by something else between the check and the open: refuse it all the same.
        if !file.metadata()?.is_file() {
            check_regular(&path)?;
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
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
        for _ in 0..LOCK_PATH_ATTEMPTS {
            match self.lock_once()? {
                LockAttempt::Held(guard, locked) => {
                    *self.locked.lock().unwrap_or_else(|e| e.into_inner()) = Some(locked);
                    return Ok(Some(guard));
                }
                LockAttempt::Busy => return Ok(None),
                // Replaced between the open and the check: lock what the path names now.
                LockAttempt::Replaced => {}
            }
        }
        Err(replaced("while it was being locked"))
    }

    fn check_lock(&self) -> io::Result<()> {
        let locked = *self.locked.lock().unwrap_or_else(|e| e.into_inner());
        let Some(locked) = locked else {
            return Ok(());
        };
        match self.path_identity() {
            Ok(now) if now == locked => Ok(()),
            Ok(_) => Err(replaced("since it was locked")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(replaced("since it was locked")),
            Err(e) => Err(e),
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

    unsafe fn map(&self, len: u64) -> io::Result<Mapped> {
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
        // SAFETY: the map covers `0..len`, which our caller promises (see `map`'s safety
        // section) is not written, truncated or shrunk while the map lives: afterlog maps
        // sealed segments only (compaction writes new files and deletes old ones whole; a
        // deleted file stays readable while mapped), so the mapped bytes cannot change or
        // vanish under us. We checked `len <= file_len` above,
        // so no page of the map lies beyond the end of the file.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(len as usize)
                .map(&self.file)?
        };
        Ok(Mapped::new(Arc::new(map)))
    }
}
