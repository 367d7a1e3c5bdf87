//! A handler that closes its own engine — by `close`, or by dropping the last clone — is not
//! waited for: close returns, the handler's `Ok` is acknowledged (not turned into a timeout
//! and delivered again), and the directory is released once its outcome is written.

use afterlog::{After, Engine, Error, EventId, ManualClock, Options, Reader};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const START_MS: i64 = 1_700_000_000_000;
/// A guard against a hang only; nothing is asserted on how long anything takes.
const HANG: Duration = Duration::from_secs(20);

fn options() -> Options {
    Options::default()
        .clock(ManualClock::new(START_MS))
        .compaction_interval(None)
}

/// The event's state and attempts, read back from the directory.
fn state(dir: &Path, id: EventId) -> (&'static str, u32) {
    let events = Reader::open(dir).unwrap().events().unwrap();
    let row = events.iter().find(|e| e.id == id).expect("the event");
    (row.state.name(), row.attempts)
}

#[test]
fn a_handler_that_closes_its_engine_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_with(dir.path(), options()).unwrap();
    let slot: Arc<Mutex<Option<Engine>>> = Arc::new(Mutex::new(Some(engine.clone())));
    let (closed_tx, closed_rx) = mpsc::channel();
    let closed_tx = Mutex::new(closed_tx);
    let handler_slot = slot.clone();
    engine.on("shutdown", move |_, _| {
        let engine = handler_slot.lock().unwrap().take().expect("delivered once");
        let closed = engine.close();
        let _ = closed_tx.lock().unwrap().send(closed);
        Ok(())
    });
    let id = engine.publish("shutdown", "", After::NOW).unwrap();
    engine.start();
    closed_rx
        .recv_timeout(HANG)
        .expect("close from a handler waited for the handler itself")
        .expect("close from a handler");
    // A close on another thread returns once the engine is closed: the handler's outcome
    // written, the lock released.
    engine.close().unwrap();
    let m = engine.metrics();
    assert_eq!((m.acked, m.timed_out, m.retried), (1, 0, 0), "{m:?}");
    assert!(matches!(
        engine.publish("shutdown", "", After::NOW),
        Err(Error::Closed)
    ));
    assert_eq!(state(dir.path(), id), ("succeeded", 1));
    let reopened = Engine::open_with(dir.path(), options()).unwrap();
    assert_eq!(reopened.metrics().pending, 0);
    reopened.close().unwrap();
}

#[test]
fn a_handler_that_drops_the_last_clone_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_with(dir.path(), options()).unwrap();
    let slot: Arc<Mutex<Option<Engine>>> = Arc::new(Mutex::new(Some(engine.clone())));
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (dropped_tx, dropped_rx) = mpsc::channel();
    let (go_rx, dropped_tx) = (Mutex::new(go_rx), Mutex::new(dropped_tx));
    let handler_slot = slot.clone();
    engine.on("last", move |_, _| {
        // Wait until the test has dropped its own clone, so this one is the last.
        let _ = go_rx.lock().unwrap().recv();
        drop(handler_slot.lock().unwrap().take());
        let _ = dropped_tx.lock().unwrap().send(());
        Ok(())
    });
    let id = engine.publish("last", "", After::NOW).unwrap();
    engine.start();
    drop(engine);
    go_tx.send(()).unwrap();
    dropped_rx
        .recv_timeout(HANG)
        .expect("dropping the last clone in a handler waited for the handler itself");
    // No clone is left to wait on: the lock is released once the worker has written the
    // outcome, so the open is retried while the directory is still locked.
    let until = Instant::now() + HANG;
    let reopened = loop {
        match Engine::open_with(dir.path(), options()) {
            Ok(engine) => break engine,
            Err(Error::Locked { .. }) if Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    };
    assert_eq!(reopened.metrics().pending, 0, "{:?}", reopened.metrics());
    reopened.close().unwrap();
    assert_eq!(state(dir.path(), id), ("succeeded", 1));
}
