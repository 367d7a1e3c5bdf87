//! A panic in the storage layer under the log's writer thread fails calls with an error that
//! names it; nothing hangs. The in-memory storage is wrapped (`common::hooked`): once armed, a
//! file's `sync_data` (or `write_all_at`) panics.

mod common;

use afterlog::storage::StorageFile;
use afterlog::{After, Engine, ManualClock, Options};
use common::hooked::{Hooked, Hooks};
use std::io;
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

/// What is armed to panic.
#[derive(Debug, Default)]
struct Armed(AtomicU8);

impl Hooks for Armed {
    fn write(&self, _file: &dyn StorageFile, _end: u64) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) == ARMED_WRITE {
            panic!("injected panic in write_all_at");
        }
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        if self.0.load(Ordering::SeqCst) == ARMED_SYNC {
            panic!("injected panic in sync_data");
        }
        Ok(())
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
    let disk = Hooked::new(Armed::default());
    let engine = Engine::open_storage(
        Arc::new(disk.clone()),
        Options::default()
            .clock(ManualClock::new(START_MS))
            .compaction_interval(None)
            .prepare_spare(false),
    )
    .unwrap();
    engine.publish("x", "before", After::NOW).unwrap();
    disk.hooks.0.store(armed_with, Ordering::SeqCst);
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
    disk.hooks.0.store(ARMED_NONE, Ordering::SeqCst);
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
