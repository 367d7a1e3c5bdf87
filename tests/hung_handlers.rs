//! Hung handlers: the threads left running handlers past their timeout are bounded, and a
//! hung handler holds only its own worker. One test in its own process, so that it can
//! count the process's threads.

use afterlog::{Engine, HandlerOptions, ManualClock, Options, RetryPolicy};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const START_MS: i64 = 1_700_000_000_000;
/// How long the test waits for something that should happen soon before it fails (a guard
/// against hangs, not a timing claim).
const HANG: Duration = Duration::from_secs(20);
const WORKERS: usize = 4;

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .compaction_interval(None)
        .segment_bytes(64 * 1024)
}

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn hung_handlers_are_bounded_and_hold_only_their_own_worker() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let bound = 3;
    let engine = Engine::open_with(
        dir.path(),
        options(&clock)
            .workers(WORKERS)
            .abandoned_threads(bound)
            .policy("hang", RetryPolicy::fixed(Duration::from_secs(1))),
    )
    .unwrap();
    // Hung handlers wait for the test to let them go; a quick name is delivered meanwhile.
    let release = Arc::new((Mutex::new(false), Condvar::new()));
    let entered = Arc::new(AtomicU32::new(0));
    {
        let (release, entered) = (release.clone(), entered.clone());
        engine.on_with(
            "hang",
            HandlerOptions::default().timeout(Duration::from_millis(50)),
            move |_, _| {
                entered.fetch_add(1, Ordering::Relaxed);
                let (open, changed) = &*release;
                let mut open = open.lock();
                while !*open {
                    changed.wait(&mut open);
                }
                Ok(())
            },
        );
    }
    let quick = Arc::new(AtomicU32::new(0));
    {
        let quick = quick.clone();
        engine.on("quick", move |_, _| {
            quick.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
    }
    let before = threads();
    engine.start();
    for i in 0..20 {
        engine
            .publish("hang", format!("{i}"), afterlog::After::NOW)
            .unwrap();
        engine
            .publish("quick", format!("{i}"), afterlog::After::NOW)
            .unwrap();
    }
    // Time passes: every hung attempt times out, is retried a second later, hangs again...
    let mut most_threads = 0;
    for _ in 0..60 {
        clock.advance(Duration::from_millis(600));
        std::thread::sleep(Duration::from_millis(5));
        most_threads = most_threads.max(threads());
    }
    let deadline = Instant::now() + HANG;
    while quick.load(Ordering::Relaxed) < 20 && Instant::now() < deadline {
        clock.advance(Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        quick.load(Ordering::Relaxed),
        20,
        "the quick events were delivered beside the hung ones"
    );
    let metrics = engine.metrics();
    println!(
        "threads before start {before}, at most {most_threads}; entered {}; {metrics:?}",
        entered.load(Ordering::Relaxed)
    );
    // The name stalls once `bound` of its threads hang; attempts already running when it
    // did may add at most one per other worker.
    let abandoned = metrics.abandoned_threads as usize;
    assert!(
        (bound..bound + WORKERS).contains(&abandoned),
        "{abandoned} abandoned threads"
    );
    assert_eq!(metrics.stalled_names, vec!["hang".to_string()]);
    assert!(metrics.stalled > 0);
    assert_eq!(entered.load(Ordering::Relaxed) as usize, abandoned);
    // Scheduler, watchdog, applier, schedules thread, the workers and the abandoned threads:
    // nothing more.
    assert!(
        most_threads <= before + 4 + WORKERS + abandoned,
        "{most_threads} threads, {before} before start"
    );
    // Let them go: the stalled name is delivered again.
    {
        let (open, changed) = &*release;
        *open.lock() = true;
        changed.notify_all();
    }
    let deadline = Instant::now() + HANG;
    while engine.metrics().acked < 40 && Instant::now() < deadline {
        clock.advance(Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(5));
    }
    let metrics = engine.metrics();
    assert_eq!(metrics.acked, 40, "{metrics:?}");
    assert_eq!(metrics.abandoned_threads, 0);
    assert!(metrics.stalled_names.is_empty());
    engine.close().unwrap();
}
