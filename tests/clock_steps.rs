//! Steps of the wall clock: handler timeouts run on the monotonic clock, so a forward step
//! does not time a handler out; a backward step does not make the scheduler spin.
//!
//! Test clocks wrap `ManualClock`: one whose wall time and monotonic time move apart, one that
//! counts how the scheduler waits. No assertion is made on how long anything takes.

use afterlog::{After, Clock, Engine, HandlerOptions, ManualClock, Options, Wake};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

const START_MS: i64 = 1_700_000_000_000;
/// Real time allowed for the engine to catch up; a guard against a hang only.
const IDLE: Duration = Duration::from_secs(20);
const HOUR_MS: i64 = 3_600_000;

/// Wall time and monotonic time on two manual clocks, so a test can step one alone.
#[derive(Clone, Debug)]
struct SplitClock {
    wall: ManualClock,
    monotonic: ManualClock,
}

impl Clock for SplitClock {
    fn now_ms(&self) -> i64 {
        self.wall.now_ms()
    }
    fn wait_until(&self, wake: &Wake, deadline_ms: Option<i64>) {
        self.wall.wait_until(wake, deadline_ms);
    }
    fn monotonic_ms(&self) -> i64 {
        self.monotonic.now_ms()
    }
    fn wait_monotonic_until(&self, wake: &Wake, deadline_ms: Option<i64>) {
        self.monotonic.wait_until(wake, deadline_ms);
    }
}

fn split_engine() -> (Engine, SplitClock) {
    let clock = SplitClock {
        wall: ManualClock::new(START_MS),
        monotonic: ManualClock::new(0),
    };
    let engine = Engine::open_storage(
        Arc::new(afterlog::storage::MemStorage::new()),
        Options::default()
            .clock(clock.clone())
            .compaction_interval(None),
    )
    .unwrap();
    (engine, clock)
}

/// The wall clock jumps an hour forward while a handler with a 5 s timeout runs; the
/// handler's success is an ack, not a `FUNCTION_TIME_OUT`.
#[test]
fn a_forward_wall_step_during_a_handler_does_not_time_it_out() {
    let (engine, clock) = split_engine();
    let wall = clock.wall.clone();
    engine.on_with(
        "step",
        HandlerOptions::default().timeout(Duration::from_secs(5)),
        move |_, _| {
            wall.advance_ms(HOUR_MS);
            Ok(())
        },
    );
    engine.publish("step", "", After::NOW).unwrap();
    engine.start();
    assert!(engine.wait_idle(IDLE), "the engine did not become idle");
    let m = engine.metrics();
    assert_eq!((m.acked, m.timed_out, m.retried), (1, 0, 0), "{m:?}");
    engine.close().unwrap();
}

/// The monotonic clock still times a handler out: here it is advanced past the timeout while
/// the wall clock stands still.
#[test]
fn the_monotonic_clock_times_a_handler_out() {
    let (engine, clock) = split_engine();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, release_rx) = (Mutex::new(started_tx), Mutex::new(release_rx));
    engine.on_with(
        "slow",
        HandlerOptions::default().timeout(Duration::from_secs(5)),
        move |_, _| {
            let _ = started_tx.lock().unwrap().send(());
            let _ = release_rx.lock().unwrap().recv();
            Ok(())
        },
    );
    engine.publish("slow", "", After::NOW).unwrap();
    engine.start();
    started_rx
        .recv_timeout(IDLE)
        .expect("the handler did not start");
    clock.monotonic.advance(Duration::from_secs(6));
    assert!(engine.wait_idle(IDLE), "the engine did not become idle");
    let m = engine.metrics();
    assert_eq!((m.acked, m.timed_out, m.retried), (0, 1, 1), "{m:?}");
    release_tx.send(()).unwrap();
    engine.close().unwrap();
}

/// A manual clock that counts the scheduler's waits, and those whose deadline had already
/// passed: a wait that returns at once and finds nothing due is a wasted loop.
#[derive(Clone, Debug)]
struct CountingClock {
    clock: ManualClock,
    waits: Arc<AtomicU64>,
    passed: Arc<AtomicU64>,
}

impl Clock for CountingClock {
    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
    fn wait_until(&self, wake: &Wake, deadline_ms: Option<i64>) {
        if std::thread::current().name() == Some("afterlog-scheduler") {
            self.waits.fetch_add(1, Ordering::Relaxed);
            if deadline_ms.is_some_and(|d| d <= self.clock.now_ms()) {
                self.passed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.clock.wait_until(wake, deadline_ms);
    }
}

/// After a backward step of an hour, two events are published: both are due before the
/// scheduler's last time, and so wait in the wheel's ready list. Once the first has been
/// delivered, the scheduler sleeps until the second is due rather than waking again and
/// again for the deadline of the first.
#[test]
fn a_backward_wall_step_does_not_make_the_scheduler_spin() {
    let clock = CountingClock {
        clock: ManualClock::new(START_MS),
        waits: Arc::default(),
        passed: Arc::default(),
    };
    let engine = Engine::open_storage(
        Arc::new(afterlog::storage::MemStorage::new()),
        Options::default()
            .clock(clock.clone())
            .compaction_interval(None),
    )
    .unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let done_tx = Mutex::new(done_tx);
    engine.on("x", move |event, _| {
        let _ = done_tx.lock().unwrap().send(event.body().to_vec());
        Ok(())
    });
    engine.start();
    // The scheduler has seen START_MS; then the wall clock steps back an hour.
    engine.publish("x", "warm-up", After::NOW).unwrap();
    assert_eq!(done_rx.recv_timeout(IDLE).unwrap(), b"warm-up");
    assert!(engine.wait_idle(IDLE));
    clock.clock.set(START_MS - HOUR_MS);
    engine
        .publish("x", "first", After::delay(Duration::from_secs(1)))
        .unwrap();
    engine
        .publish("x", "second", After::delay(Duration::from_secs(1800)))
        .unwrap();
    clock.clock.advance(Duration::from_secs(1));
    assert_eq!(done_rx.recv_timeout(IDLE).unwrap(), b"first");
    let before = clock.passed.load(Ordering::Relaxed);
    // Idle only if the wheel's next deadline is the second event's, not the first's.
    let idle = engine.wait_idle(IDLE);
    // Then a few wake-ups of the scheduler that find nothing due.
    for _ in 0..5 {
        clock.clock.advance(Duration::from_secs(60));
        engine.wait_idle(IDLE);
    }
    let (waits, passed) = (
        clock.waits.load(Ordering::Relaxed),
        clock.passed.load(Ordering::Relaxed) - before,
    );
    println!(
        "scheduler waits: {waits}; since the first event, on a deadline already passed: {passed}"
    );
    // A clock change between the scheduler's read and its wait can cost one each.
    assert!(
        passed <= 5,
        "the scheduler woke {passed} times for a deadline already passed"
    );
    assert!(
        idle,
        "not idle with one event half an hour away: {:?}",
        engine.metrics()
    );
    clock.clock.advance(Duration::from_secs(1800));
    assert_eq!(done_rx.recv_timeout(IDLE).unwrap(), b"second");
    assert!(engine.wait_idle(IDLE));
    assert_eq!(engine.metrics().acked, 3);
    engine.close().unwrap();
}
