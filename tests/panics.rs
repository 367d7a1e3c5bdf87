//! A panic in a background thread fails calls with an error that names it; nothing hangs.
//! The in-memory storage is wrapped (`common::hooked`): once armed, a file's `sync_data` (or
//! `write_all_at`) panics under the log's writer thread, a read under a worker, a file's
//! creation under the segment preparer. The engine's other threads meet a panic in the clock.

mod common;

use afterlog::storage::StorageFile;
use afterlog::{After, Clock, Engine, ManualClock, Options, Wake};
use common::hooked::{Hooked, Hooks};
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
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
        .unwrap_or_else(|_| panic!("{what} hung after a panic in a background thread"))
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

// A panic in each background thread of the engine stops the engine: every call fails with an
// error naming the thread and the panic's message, `wait_idle` returns false, and `close`
// releases the directory lock and returns the same error. Nothing hangs.
//
// Each test keeps one handler running (blocked until the test releases it), so the engine is
// never idle on its own: `wait_idle` returns only once the engine is stopped, which is the
// signal that the injected panic has happened.

/// The name of the thread whose clock reads panic, once armed.
#[derive(Debug, Default)]
struct ArmedThread(Mutex<Option<&'static str>>);

impl ArmedThread {
    fn arm(&self, thread: &'static str) {
        *self.0.lock().unwrap() = Some(thread);
    }

    fn fire_if_armed(&self, what: &str) {
        let armed = *self.0.lock().unwrap();
        if let Some(armed) = armed
            && std::thread::current().name() == Some(armed)
        {
            panic!("injected panic in {what} on {armed}");
        }
    }
}

/// A manual clock whose reads panic on one thread, once armed.
#[derive(Clone, Debug)]
struct PanickyClock {
    clock: ManualClock,
    armed: Arc<ArmedThread>,
}

impl Clock for PanickyClock {
    fn now_ms(&self) -> i64 {
        self.armed.fire_if_armed("the clock");
        self.clock.now_ms()
    }
    fn wait_until(&self, wake: &Wake, deadline_ms: Option<i64>) {
        self.clock.wait_until(wake, deadline_ms);
    }
}

/// A storage whose reads and file creations panic on one thread, once armed.
#[derive(Debug, Default)]
struct StorageArmed {
    read: ArmedThread,
    create: ArmedThread,
}

impl Hooks for StorageArmed {
    fn read(&self) {
        self.read.fire_if_armed("a read");
    }
    fn create(&self, _name: &str) {
        self.create.fire_if_armed("a file creation");
    }
}

/// An engine with one handler blocked on `release`, and what the test needs to drive it.
struct Stalled {
    engine: Engine,
    disk: Hooked<StorageArmed>,
    clock: PanickyClock,
    release: mpsc::Sender<()>,
    blocked: afterlog::EventId,
    job: afterlog::JobId,
}

fn stalled(options: Options) -> Stalled {
    let disk = Hooked::new(StorageArmed::default());
    let clock = PanickyClock {
        clock: ManualClock::new(START_MS),
        armed: Arc::new(ArmedThread::default()),
    };
    let engine = Engine::open_storage(
        Arc::new(disk.clone()),
        options.clock(clock.clone()).workers(2),
    )
    .unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let started_tx = Mutex::new(started_tx);
    let release_rx = Mutex::new(release_rx);
    engine.on("block", move |_, _| {
        let _ = started_tx.lock().unwrap().send(());
        let _ = release_rx.lock().unwrap().recv();
        Ok(())
    });
    engine.on("x", |_, _| Ok(()));
    let job = engine
        .push("x", [b"later"], Duration::from_secs(3600))
        .unwrap();
    let blocked = engine.publish("block", "", After::NOW).unwrap();
    engine.start();
    started_rx
        .recv_timeout(HANG)
        .expect("the blocking handler did not start");
    Stalled {
        engine,
        disk,
        clock,
        release: release_tx,
        blocked,
        job,
    }
}

/// A call on the engine that must fail.
type Call = Box<dyn FnOnce(Engine) -> afterlog::Error + Send>;

/// Waits until the engine is stopped, then checks that every call fails with the panic of
/// `thread` and that `close` releases the directory.
fn check_stopped(s: Stalled, thread: &str, injected: &str) {
    let engine = s.engine;
    let idle = within("wait_idle", {
        let engine = engine.clone();
        move || engine.wait_idle(Duration::MAX)
    });
    assert!(!idle, "a stopped engine reported itself idle");
    let expected = format!("afterlog's {thread} thread panicked: ");
    let check = |what: &str, e: afterlog::Error| {
        let text = e.to_string();
        assert!(text.contains(&expected), "{what}: {text}");
        assert!(
            text.contains(injected),
            "{what}: the panic's message is lost: {text}"
        );
    };
    let calls: Vec<(&str, Call)> = vec![
        (
            "publish",
            Box::new(|e| e.publish("x", "after", After::NOW).unwrap_err()),
        ),
        (
            "push",
            Box::new(|e| e.push("x", [b"after"], Duration::ZERO).unwrap_err()),
        ),
        (
            "cancel",
            Box::new(move |e| e.cancel(s.blocked).unwrap_err()),
        ),
        (
            "cancel_job",
            Box::new(move |e| e.cancel_job(s.job).unwrap_err()),
        ),
        ("compact_now", Box::new(|e| e.compact_now().unwrap_err())),
    ];
    for (what, call) in calls {
        let engine = engine.clone();
        check(what, within(what, move || call(engine)));
    }
    assert!(!engine.wait_idle(Duration::ZERO));
    // A second close of the stopped engine reports the same.
    let closed = within("close", move || (engine.close(), engine.close()));
    check("close", closed.0.expect_err("close of a stopped engine"));
    check("a second close", closed.1.expect_err("second close"));
    let _ = s.release.send(());
    // The directory is free, and the blocked event is delivered again after reopening.
    let engine = Engine::open_storage(
        Arc::new(s.disk.inner.clone()),
        Options::default()
            .clock(s.clock.clock.clone())
            .compaction_interval(None),
    )
    .unwrap();
    assert!(engine.metrics().pending >= 2, "{:?}", engine.metrics());
    engine.close().unwrap();
}

fn engine_options() -> Options {
    Options::default().compaction_interval(None)
}

#[test]
fn a_panic_in_the_scheduler_stops_the_engine() {
    let s = stalled(engine_options());
    s.clock.armed.arm("afterlog-scheduler");
    s.clock.clock.advance_ms(1);
    check_stopped(
        s,
        "scheduler",
        "injected panic in the clock on afterlog-scheduler",
    );
}

#[test]
fn a_panic_in_the_watchdog_stops_the_engine() {
    let s = stalled(engine_options());
    s.clock.armed.arm("afterlog-watchdog");
    s.clock.clock.advance_ms(1);
    check_stopped(
        s,
        "watchdog",
        "injected panic in the clock on afterlog-watchdog",
    );
}

/// The worker's loop outside the handlers: reading the publish record of a due event.
#[test]
fn a_panic_in_a_worker_outside_its_handler_stops_the_engine() {
    let s = stalled(engine_options());
    s.disk.hooks.read.arm("afterlog-worker");
    s.engine.publish("x", "read me", After::NOW).unwrap();
    check_stopped(s, "worker", "injected panic in a read on afterlog-worker");
}

#[test]
fn a_panic_in_the_background_compactor_stops_the_engine() {
    let s = stalled(Options::default().compaction_interval(Some(Duration::from_secs(1))));
    s.clock.armed.arm("afterlog-compactor");
    s.clock.clock.advance(Duration::from_secs(1));
    check_stopped(
        s,
        "compactor",
        "injected panic in the clock on afterlog-compactor",
    );
}

/// The segment preparer creates the next segment's file ahead of need; a roll (here the one
/// `compact_now` asks for) starts the preparation of the one after.
#[test]
fn a_panic_in_the_segment_preparer_stops_the_engine() {
    let s = stalled(
        engine_options()
            .prepare_spare(true)
            .segment_bytes(64 * 1024),
    );
    s.disk.hooks.create.arm("afterlog-prepare");
    let _ = s.engine.compact_now();
    // The next segment is prepared once the active one is half full.
    for _ in 0..100 {
        if s.engine
            .publish("x", [0u8; 1000], After::delay(Duration::from_secs(3600)))
            .is_err()
        {
            break;
        }
    }
    check_stopped(
        s,
        "segment preparer",
        "injected panic in a file creation on afterlog-prepare",
    );
}
