//! A panic in the storage layer under the log's writer thread fails calls with an error that
//! names it; nothing hangs. `PanicDisk` wraps the in-memory storage: once armed, a file's
//! `sync_data` (or `write_all_at`) panics.

use afterlog::storage::{LockGuard, Mapped, MemStorage, Storage, StorageFile};
use afterlog::{After, Engine, ManualClock, Options};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::Duration;

const START_MS: i64 = 1_700_000_000_000;
/// How long a call may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(20);

const ARMED_NONE: u8 = 0;
const ARMED_SYNC: u8 = 1;
const ARMED_WRITE: u8 = 2;

#[derive(Debug, Clone)]
struct PanicDisk {
    inner: MemStorage,
    armed: Arc<AtomicU8>,
}

#[derive(Debug)]
struct PanicFile {
    inner: Box<dyn StorageFile>,
    armed: Arc<AtomicU8>,
}

impl PanicDisk {
    fn wrap(&self, file: Box<dyn StorageFile>) -> Box<dyn StorageFile> {
        Box::new(PanicFile {
            inner: file,
            armed: self.armed.clone(),
        })
    }
}

impl Storage for PanicDisk {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
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

impl StorageFile for PanicFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.armed.load(Ordering::SeqCst) == ARMED_WRITE {
            panic!("injected panic in write_all_at");
        }
        self.inner.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.armed.load(Ordering::SeqCst) == ARMED_SYNC {
            panic!("injected panic in sync_data");
        }
        self.inner.sync_data()
    }
    fn map(&self, len: u64) -> io::Result<Mapped> {
        self.inner.map(len)
    }
}

/// Runs `f` on a thread of its own and fails the test if it does not return within `HANG`.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("{what} hung after a panic in the writer thread"))
}

fn panic_in_the_writer(armed_with: u8, injected: &'static str) {
    let disk = PanicDisk {
        inner: MemStorage::new(),
        armed: Arc::default(),
    };
    let engine = Engine::open_storage(
        Arc::new(disk.clone()),
        Options::default()
            .clock(ManualClock::new(START_MS))
            .compaction_interval(None)
            .prepare_spare(false),
    )
    .unwrap();
    engine.publish("x", "before", After::NOW).unwrap();
    disk.armed.store(armed_with, Ordering::SeqCst);
    for attempt in ["the publish that meets the panic", "a later publish"] {
        let e = within(attempt, {
            let engine = engine.clone();
            move || engine.publish("x", "after", After::NOW)
        })
        .expect_err(attempt);
        let text = e.to_string();
        assert!(text.contains("writer thread panicked"), "{attempt}: {text}");
        assert!(
            text.contains(injected),
            "{attempt}: the panic's message is lost: {text}"
        );
    }
    let closed = within("close", move || engine.close());
    assert!(
        closed.is_err(),
        "close of a log whose writer panicked: {closed:?}"
    );
    // What was acknowledged before the panic is there.
    disk.armed.store(ARMED_NONE, Ordering::SeqCst);
    let engine = Engine::open_storage(
        Arc::new(disk.inner.clone()),
        Options::default()
            .clock(ManualClock::new(START_MS))
            .compaction_interval(None),
    )
    .unwrap();
    assert!(engine.metrics().pending >= 1);
    engine.close().unwrap();
}

#[test]
fn a_panicking_sync_fails_publishes_and_close_with_its_message() {
    panic_in_the_writer(ARMED_SYNC, "injected panic in sync_data");
}

#[test]
fn a_panicking_write_fails_publishes_and_close_with_its_message() {
    panic_in_the_writer(ARMED_WRITE, "injected panic in write_all_at");
}
