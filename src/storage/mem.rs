//! Storage in memory that models a disk with a page cache, and injects faults.
//!
//! # The model
//! Each file is an inode with two states: its *durable* bytes (what a power cut leaves) and
//! its *current* bytes (what reads see: the durable bytes plus every write and `set_len`
//! since the last `sync_data`, which are also kept as a pending list). `sync_data` applies the
//! pending list to the durable bytes. The directory likewise has a current name → inode table
//! (what `list` and `open` see) and a durable one; `sync_dir` copies current to durable.
//! A removed file keeps working through the handles already open on it, as on Unix.
//!
//! # Operations and faults
//! Every call of a mutating operation (`write_all_at`, `set_len`, `sync_data`, `create`,
//! `rename`, `remove`, `sync_dir`) gets the next number of one counter per disk, starting at 1,
//! whether it then succeeds or fails. Faults are armed by number:
//! - [`MemStorage::crash_at`]: operation `n` has no effect, and it and every later call
//!   (mutating or reading) fails with "simulated crash". A write interrupted this way is
//!   still the last unsynced write, which [`CrashMode::TearLastWrite`] may partly keep.
//! - [`MemStorage::fail_once`] / [`MemStorage::fail_from`]: operation `n` (and, for
//!   `fail_from`, every later mutating operation) fails with "injected I/O error" and has no
//!   effect on the bytes. [`MemStorage::fail_sync_once`] fails the next `sync_data`.
//! - **A failed `sync_data` loses data, however the failure was injected.** Linux marks the
//!   dirty pages clean after a failed `fsync`, so the file's writes since its last successful
//!   sync never reach the disk even if a later sync succeeds, while reads keep showing them
//!   from the page cache ("fsyncgate"). Here, the file's pending list is dropped: its
//!   current bytes stay as they are, its durable bytes never receive those writes. A caller
//!   that retries a failed sync and trusts it loses data on the next simulated crash.
//! - [`MemStorage::set_short_reads`]: `read_at` returns a pseudo-random 1..=n bytes.
//!
//! # Crashes
//! [`MemStorage::after_crash_with`] builds a new, independent disk holding what survives
//! (see [`CrashMode`] for the data of files). With `lose_unsynced_dir_ops`, the directory is
//! its durable table: creates, renames and removes since the last `sync_dir` are undone, and
//! a file whose only name is lost vanishes together with its data, synced or not; a file
//! removed or renamed since the last `sync_dir` comes back under its old name with its
//! surviving data. Without it the current table survives.

mod crash;

pub use crash::{CrashMode, SECTOR_BYTES};

use super::{LockGuard, Mapped, Storage, StorageFile};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The largest file this storage holds, so that a wild offset is an error, not an abort.
pub const MEM_FILE_BYTES_MAX: u64 = 1 << 30;

/// The fake directory every [`MemStorage`] reports as its path.
const MEM_PATH: &str = "/mem";

/// The kind of a numbered (mutating) operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `StorageFile::write_all_at`.
    Write,
    /// `StorageFile::set_len`.
    SetLen,
    /// `StorageFile::sync_data`.
    SyncData,
    /// `Storage::create`.
    Create,
    /// `Storage::rename`.
    Rename,
    /// `Storage::remove`.
    Remove,
    /// `Storage::sync_dir`.
    SyncDir,
}

/// One numbered operation, as recorded by [`MemStorage::record_trace`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    /// The operation's number (the first is 1).
    pub op: u64,
    /// What it was.
    pub kind: OpKind,
    /// The file's name (its latest name for a handle; `from -> to` for a rename; empty for
    /// `sync_dir`).
    pub name: String,
    /// The offset of a write; the new length for `set_len`; otherwise 0.
    pub offset: u64,
    /// The length of a write; the number of pending operations for `sync_data`; otherwise 0.
    pub len: u64,
}

/// An in-memory [`Storage`] with simulated crashes and injected I/O faults.
///
/// Clones share the same simulated disk. See the module documentation for the model. Its
/// lock is a flag of the disk: unlike [`FsStorage`](super::FsStorage), taking it creates no
/// file.
///
/// ```
/// use afterlog::storage::{CrashMode, MemStorage, Storage};
///
/// let disk = MemStorage::new();
/// let file = disk.create("log")?;
/// disk.sync_dir()?;
/// file.write_all_at(b"synced", 0)?;
/// file.sync_data()?;
/// disk.crash_at(disk.ops() + 2); // the sync after the next write
/// file.write_all_at(b" and not", 6)?;
/// assert!(file.sync_data().is_err());
///
/// for keep in 0..=disk.last_unsynced_write_len().unwrap_or(0) {
///     let after = disk.after_crash(CrashMode::TearLastWrite { keep });
///     assert_eq!(after.contents("log")?.len(), 6 + keep);
/// }
/// let after = disk.after_crash(CrashMode::DropUnsynced);
/// assert_eq!(after.contents("log")?, b"synced");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct MemStorage {
    disk: Arc<Disk>,
}

struct Disk {
    path: PathBuf,
    state: Mutex<State>,
}

/// What a crash left of the disk's fault bookkeeping.
#[derive(Clone, Copy)]
struct Crash {
    /// The operation the crash interrupted, if it was armed with `crash_at`.
    op: Option<u64>,
    /// The length of the write it interrupted, if it was a write.
    write_len: Option<usize>,
}

struct State {
    ops: u64,
    crash_at: Option<u64>,
    crash: Option<Crash>,
    fail_once: BTreeSet<u64>,
    fail_from: Option<u64>,
    fail_sync_once: bool,
    short_reads: bool,
    rng: u64,
    locked: bool,
    trace: Option<Vec<TraceEntry>>,
    next_ino: u64,
    inodes: BTreeMap<u64, Inode>,
    current: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
}

/// A file's contents. The byte vectors are shared copy-on-write, so a disk rebuilt after a
/// crash costs nothing for files without unsynced writes.
struct Inode {
    /// The latest name, for traces and debugging.
    name: String,
    durable: Arc<Vec<u8>>,
    current: Arc<Vec<u8>>,
    /// Writes and length changes since the last sync, oldest first.
    pending: Vec<Pending>,
    /// Open handles: an unlinked inode lives while one is open.
    handles: usize,
}

enum Pending {
    Write { op: u64, offset: u64, data: Vec<u8> },
    SetLen { len: u64 },
}

/// Why an operation must not take effect.
enum Refusal {
    /// The disk had crashed before the call.
    Dead(io::Error),
    /// The crash armed with `crash_at` happens at this very operation.
    Interrupted(io::Error),
    /// An injected I/O error.
    Injected(io::Error),
}

impl Refusal {
    fn into_error(self) -> io::Error {
        match self {
            Refusal::Dead(e) | Refusal::Interrupted(e) | Refusal::Injected(e) => e,
        }
    }
}

fn crash_error(crash: Crash) -> io::Error {
    match crash.op {
        Some(op) => io::Error::other(format!("simulated crash at operation {op}")),
        None => io::Error::other("simulated crash"),
    }
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file named {name:?}"))
}

/// SplitMix64: a small, well-mixed generator for deterministic pseudo-random choices.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes `data` at `offset`, zero-filling any gap. An empty write changes nothing, like
/// `pwrite` of zero bytes. Offsets are checked against `MEM_FILE_BYTES_MAX` beforehand.
fn apply_write(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let start = offset as usize;
    let end = start + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[start..end].copy_from_slice(data);
}

fn apply_pending(bytes: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data, .. } => apply_write(bytes, *offset, data),
        Pending::SetLen { len } => bytes.resize(*len as usize, 0),
    }
}

fn check_end(offset: u64, len: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= MEM_FILE_BYTES_MAX => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("offset {offset} + {len} bytes exceeds {MEM_FILE_BYTES_MAX} bytes"),
        )),
    }
}

impl State {
    fn new(trace: bool) -> State {
        State {
            ops: 0,
            crash_at: None,
            crash: None,
            fail_once: BTreeSet::new(),
            fail_from: None,
            fail_sync_once: false,
            short_reads: false,
            rng: 0x5EED_0FAF_7E71_0C00,
            locked: false,
            trace: trace.then(Vec::new),
            next_ino: 1,
            inodes: BTreeMap::new(),
            current: BTreeMap::new(),
            durable: BTreeMap::new(),
        }
    }

    /// Fails if the disk has crashed; every call, reading or writing, starts here.
    fn alive(&self) -> io::Result<()> {
        match self.crash {
            Some(crash) => Err(crash_error(crash)),
            None => Ok(()),
        }
    }

    /// Numbers a mutating operation and decides whether it may take effect.
    fn begin(
        &mut self,
        kind: OpKind,
        name: impl FnOnce() -> String,
        offset: u64,
        len: u64,
    ) -> Result<u64, Refusal> {
        self.alive().map_err(Refusal::Dead)?;
        self.ops += 1;
        let op = self.ops;
        if let Some(trace) = &mut self.trace {
            trace.push(TraceEntry {
                op,
                kind,
                name: name(),
                offset,
                len,
            });
        }
        if self.crash_at == Some(op) {
            let crash = Crash {
                op: Some(op),
                write_len: None,
            };
            self.crash = Some(crash);
            return Err(Refusal::Interrupted(crash_error(crash)));
        }
        let sync_fails = kind == OpKind::SyncData && std::mem::take(&mut self.fail_sync_once);
        if self.fail_once.remove(&op) || self.fail_from.is_some_and(|from| op >= from) || sync_fails
        {
            return Err(Refusal::Injected(io::Error::other(format!(
                "injected I/O error at operation {op} ({kind:?})"
            ))));
        }
        Ok(op)
    }

    fn inode(&mut self, ino: u64) -> &mut Inode {
        self.inodes
            .get_mut(&ino)
            .expect("an inode lives while a handle or a name refers to it")
    }

    fn linked(&self, ino: u64) -> bool {
        self.current.values().any(|&i| i == ino) || self.durable.values().any(|&i| i == ino)
    }

    /// Frees an inode that no name (current or durable) and no handle refers to.
    fn collect(&mut self, ino: u64) {
        let unused = self
            .inodes
            .get(&ino)
            .is_some_and(|inode| inode.handles == 0);
        if unused && !self.linked(ino) {
            self.inodes.remove(&ino);
        }
    }

    /// The last unsynced write on the whole disk: the one a crash tears.
    fn last_unsynced_write(&self) -> Option<(u64, usize)> {
        self.inodes
            .values()
            .flat_map(|inode| inode.pending.iter())
            .filter_map(|p| match p {
                Pending::Write { op, data, .. } => Some((*op, data.len())),
                Pending::SetLen { .. } => None,
            })
            .max_by_key(|&(op, _)| op)
    }
}

impl MemStorage {
    /// An empty disk.
    pub fn new() -> MemStorage {
        MemStorage::from_state(State::new(false))
    }

    fn from_state(state: State) -> MemStorage {
        MemStorage {
            disk: Arc::new(Disk {
                path: PathBuf::from(MEM_PATH),
                state: Mutex::new(state),
            }),
        }
    }

    /// How many mutating operations have been numbered so far (including any that failed).
    pub fn ops(&self) -> u64 {
        self.disk.state.lock().ops
    }

    /// Arms a crash at operation `op`: it does not take effect, and it and every later call
    /// fail with "simulated crash". An `op` already performed never fires.
    pub fn crash_at(&self, op: u64) {
        self.disk.state.lock().crash_at = Some(op);
    }

    /// Crashes now: every later call fails with "simulated crash".
    pub fn crash_now(&self) {
        let mut state = self.disk.state.lock();
        if state.crash.is_none() {
            state.crash = Some(Crash {
                op: None,
                write_len: None,
            });
        }
    }

    /// Whether the disk has crashed.
    pub fn crashed(&self) -> bool {
        self.disk.state.lock().crash.is_some()
    }

    /// The length of the write the crash interrupted, if `crash_at` named a write.
    pub fn interrupted_write_len(&self) -> Option<usize> {
        self.disk.state.lock().crash.and_then(|c| c.write_len)
    }

    /// The length of the last unsynced write on the disk (the interrupted one, if any): the
    /// write [`CrashMode::TearLastWrite`] tears. Tests tear it at every `keep` in `0..=len`.
    pub fn last_unsynced_write_len(&self) -> Option<usize> {
        self.disk
            .state
            .lock()
            .last_unsynced_write()
            .map(|(_, len)| len)
    }

    /// Makes operation `op` fail once with "injected I/O error", without effect (but see the
    /// module documentation for a failed `sync_data`).
    pub fn fail_once(&self, op: u64) {
        self.disk.state.lock().fail_once.insert(op);
    }

    /// Makes operation `op` and every later mutating operation fail with "injected I/O
    /// error". Reads keep working.
    pub fn fail_from(&self, op: u64) {
        self.disk.state.lock().fail_from = Some(op);
    }

    /// Makes the next `sync_data`, on any file, fail; that file's unsynced writes will never
    /// become durable (see the module documentation).
    pub fn fail_sync_once(&self) {
        self.disk.state.lock().fail_sync_once = true;
    }

    /// Makes `read_at` return a pseudo-random number of bytes in `1..=available`, so that a
    /// reader that does not loop is caught.
    pub fn set_short_reads(&self, on: bool) {
        self.disk.state.lock().short_reads = on;
    }

    /// Starts (or stops, discarding it) recording a trace of the numbered operations. A disk
    /// built by `after_crash` records too if this one did, from an empty trace.
    #[doc(hidden)]
    pub fn record_trace(&self, on: bool) {
        let mut state = self.disk.state.lock();
        match (on, state.trace.is_some()) {
            (true, false) => state.trace = Some(Vec::new()),
            (false, true) => state.trace = None,
            _ => {}
        }
    }

    /// The recorded trace (empty unless `record_trace(true)` was called).
    #[doc(hidden)]
    pub fn trace(&self) -> Vec<TraceEntry> {
        self.disk.state.lock().trace.clone().unwrap_or_default()
    }

    /// The trace as one line per operation, for a failing test's message.
    #[doc(hidden)]
    pub fn trace_text(&self) -> String {
        let mut text = String::new();
        for e in self.trace() {
            text.push_str(&format!(
                "{:>6} {:?} {} offset={} len={}\n",
                e.op, e.kind, e.name, e.offset, e.len
            ));
        }
        text
    }

    /// Crashes this disk (if it has not crashed yet) and returns a new, independent disk
    /// holding what survives under `mode`, with the directory reverted to its last
    /// `sync_dir`. Equivalent to `after_crash_with(mode, true)`.
    pub fn after_crash(&self, mode: CrashMode) -> MemStorage {
        self.after_crash_with(mode, true)
    }

    /// Crashes this disk (if it has not crashed yet) and returns a new, independent disk
    /// holding what survives: file data per `mode`; the directory's durable table if
    /// `lose_unsynced_dir_ops`, else its current one. The new disk has no lock holder, an
    /// operation counter at 0 and no faults armed. This disk is left as it was, so it can be
    /// recovered again under another mode.
    pub fn after_crash_with(&self, mode: CrashMode, lose_unsynced_dir_ops: bool) -> MemStorage {
        self.crash_now();
        self.would_survive(mode, lose_unsynced_dir_ops)
    }

    /// A new, independent disk holding what a crash at this moment would leave, built as
    /// [`after_crash_with`](MemStorage::after_crash_with) builds it, while this disk goes on
    /// working. Lets a test check, the moment a call returns, that what it acknowledged is
    /// already durable.
    pub fn would_survive(&self, mode: CrashMode, lose_unsynced_dir_ops: bool) -> MemStorage {
        let state = self.disk.state.lock();
        let table = if lose_unsynced_dir_ops {
            &state.durable
        } else {
            &state.current
        };
        let torn_op = state.last_unsynced_write().map(|(op, _)| op);
        let mut next = State::new(state.trace.is_some());
        next.next_ino = state.next_ino;
        for (name, &ino) in table {
            let Some(inode) = state.inodes.get(&ino) else {
                continue;
            };
            let bytes = crash::surviving_bytes(&inode.durable, &inode.pending, mode, torn_op);
            next.inodes.insert(
                ino,
                Inode {
                    name: name.clone(),
                    durable: Arc::clone(&bytes),
                    current: bytes,
                    pending: Vec::new(),
                    handles: 0,
                },
            );
            next.current.insert(name.clone(), ino);
            next.durable.insert(name.clone(), ino);
        }
        MemStorage::from_state(next)
    }

    /// The current bytes of file `name` (what a read sees), for assertions.
    pub fn contents(&self, name: &str) -> io::Result<Vec<u8>> {
        let state = self.disk.state.lock();
        state.alive()?;
        let ino = *state.current.get(name).ok_or_else(|| not_found(name))?;
        Ok(state.inodes[&ino].current.to_vec())
    }
}

impl Default for MemStorage {
    fn default() -> MemStorage {
        MemStorage::new()
    }
}

impl fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.disk.state.lock();
        f.debug_struct("MemStorage")
            .field("files", &state.current.keys().collect::<Vec<_>>())
            .field("ops", &state.ops)
            .field("crashed", &state.crash.is_some())
            .finish()
    }
}

/// An open file on a [`MemStorage`].
struct MemFile {
    disk: Arc<Disk>,
    ino: u64,
}

impl MemFile {
    fn open(disk: &Arc<Disk>, state: &mut State, ino: u64) -> Box<dyn StorageFile> {
        state.inode(ino).handles += 1;
        Box::new(MemFile {
            disk: Arc::clone(disk),
            ino,
        })
    }
}

impl Drop for MemFile {
    fn drop(&mut self) {
        let mut state = self.disk.state.lock();
        if let Some(inode) = state.inodes.get_mut(&self.ino) {
            inode.handles -= 1;
        }
        state.collect(self.ino);
    }
}

impl fmt::Debug for MemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.disk.state.lock();
        let name = state.inodes.get(&self.ino).map(|i| i.name.as_str());
        f.debug_struct("MemFile")
            .field("ino", &self.ino)
            .field("name", &name)
            .finish()
    }
}

/// Releases a [`MemStorage`]'s lock when dropped.
struct MemLock(Arc<Disk>);

impl Drop for MemLock {
    fn drop(&mut self) {
        self.0.state.lock().locked = false;
    }
}

impl Storage for MemStorage {
    fn path(&self) -> &Path {
        &self.disk.path
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let state = self.disk.state.lock();
        state.alive()?;
        Ok(state.current.keys().cloned().collect())
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let mut state = self.disk.state.lock();
        state
            .begin(OpKind::Create, || name.to_owned(), 0, 0)
            .map_err(Refusal::into_error)?;
        if state.current.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("file {name:?} exists"),
            ));
        }
        let ino = state.next_ino;
        state.next_ino += 1;
        let empty = Arc::new(Vec::new());
        state.inodes.insert(
            ino,
            Inode {
                name: name.to_owned(),
                durable: Arc::clone(&empty),
                current: empty,
                pending: Vec::new(),
                handles: 0,
            },
        );
        state.current.insert(name.to_owned(), ino);
        Ok(MemFile::open(&self.disk, &mut state, ino))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        let mut state = self.disk.state.lock();
        state.alive()?;
        let ino = *state.current.get(name).ok_or_else(|| not_found(name))?;
        Ok(MemFile::open(&self.disk, &mut state, ino))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.disk.state.lock();
        state
            .begin(OpKind::Rename, || format!("{from} -> {to}"), 0, 0)
            .map_err(Refusal::into_error)?;
        let ino = *state.current.get(from).ok_or_else(|| not_found(from))?;
        if from == to {
            return Ok(());
        }
        state.current.remove(from);
        let replaced = state.current.insert(to.to_owned(), ino);
        state.inode(ino).name = to.to_owned();
        if let Some(old) = replaced {
            state.collect(old);
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut state = self.disk.state.lock();
        state
            .begin(OpKind::Remove, || name.to_owned(), 0, 0)
            .map_err(Refusal::into_error)?;
        let ino = state.current.remove(name).ok_or_else(|| not_found(name))?;
        state.collect(ino);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut state = self.disk.state.lock();
        state
            .begin(OpKind::SyncDir, String::new, 0, 0)
            .map_err(Refusal::into_error)?;
        let forgotten: Vec<u64> = state.durable.values().copied().collect();
        state.durable = state.current.clone();
        for ino in forgotten {
            state.collect(ino);
        }
        Ok(())
    }

    fn try_lock(&self) -> io::Result<Option<LockGuard>> {
        let mut state = self.disk.state.lock();
        state.alive()?;
        if state.locked {
            return Ok(None);
        }
        state.locked = true;
        Ok(Some(LockGuard::new(Box::new(MemLock(Arc::clone(
            &self.disk,
        ))))))
    }
}

impl StorageFile for MemFile {
    fn len(&self) -> io::Result<u64> {
        let mut state = self.disk.state.lock();
        state.alive()?;
        Ok(state.inode(self.ino).current.len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut state = self.disk.state.lock();
        state.alive()?;
        let short_reads = state.short_reads;
        let bytes = Arc::clone(&state.inode(self.ino).current);
        let Some(available) = (bytes.len() as u64).checked_sub(offset) else {
            return Ok(0);
        };
        let mut n = buf.len().min(available as usize);
        if short_reads && n > 1 {
            n = 1 + (splitmix64(&mut state.rng) % n as u64) as usize;
        }
        let start = offset as usize;
        buf[..n].copy_from_slice(&bytes[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.disk.state.lock();
        let name = state.inodes.get(&self.ino).map(|i| i.name.clone());
        let begun = state.begin(
            OpKind::Write,
            || name.unwrap_or_default(),
            offset,
            buf.len() as u64,
        );
        let fits = check_end(offset, buf.len() as u64);
        let op = match begun {
            Ok(op) => op,
            Err(Refusal::Interrupted(e)) => {
                // The interrupted write stays pending (not applied), so a crash mode may
                // keep part of it.
                if fits.is_ok() {
                    let op = state.ops;
                    state.inode(self.ino).pending.push(Pending::Write {
                        op,
                        offset,
                        data: buf.to_vec(),
                    });
                    if let Some(crash) = &mut state.crash {
                        crash.write_len = Some(buf.len());
                    }
                }
                return Err(e);
            }
            Err(Refusal::Dead(e) | Refusal::Injected(e)) => return Err(e),
        };
        fits?;
        let inode = state.inode(self.ino);
        apply_write(Arc::make_mut(&mut inode.current), offset, buf);
        inode.pending.push(Pending::Write {
            op,
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.disk.state.lock();
        let name = state.inodes.get(&self.ino).map(|i| i.name.clone());
        state
            .begin(OpKind::SetLen, || name.unwrap_or_default(), len, 0)
            .map_err(Refusal::into_error)?;
        check_end(len, 0)?;
        let inode = state.inode(self.ino);
        let op = Pending::SetLen { len };
        apply_pending(Arc::make_mut(&mut inode.current), &op);
        inode.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.disk.state.lock();
        let (name, pending) = state
            .inodes
            .get(&self.ino)
            .map(|i| (i.name.clone(), i.pending.len() as u64))
            .unwrap_or_default();
        match state.begin(OpKind::SyncData, || name, 0, pending) {
            Ok(_) => {
                let inode = state.inode(self.ino);
                let pending = std::mem::take(&mut inode.pending);
                if !pending.is_empty() {
                    let durable = Arc::make_mut(&mut inode.durable);
                    for op in &pending {
                        apply_pending(durable, op);
                    }
                }
                Ok(())
            }
            Err(Refusal::Injected(e)) => {
                // fsyncgate: the kernel marks the pages clean; these writes never reach the
                // disk, though reads still see them.
                state.inode(self.ino).pending.clear();
                Err(e)
            }
            Err(Refusal::Dead(e) | Refusal::Interrupted(e)) => Err(e),
        }
    }

    #[allow(unsafe_code, reason = "the trait's method is unsafe to call; this copy is safe")]
    unsafe fn map(&self, len: u64) -> io::Result<Mapped> {
        let mut state = self.disk.state.lock();
        state.alive()?;
        let bytes = Arc::clone(&state.inode(self.ino).current);
        if len > bytes.len() as u64 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("cannot map {len} bytes of a {}-byte file", bytes.len()),
            ));
        }
        // Sharing the vector is a snapshot: a later write copies it first.
        Ok(Mapped::new(Arc::new(Prefix {
            bytes,
            len: len as usize,
        })))
    }
}

/// The first `len` bytes of a shared vector.
struct Prefix {
    bytes: Arc<Vec<u8>>,
    len: usize,
}

impl AsRef<[u8]> for Prefix {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}
