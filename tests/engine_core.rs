//! The engine's core at work: events due together spread over the workers, and compaction
//! keeps only the retry history replay needs and skips a pass that would save nothing.

use afterlog::{
    Engine, HandlerError, ManualClock, Options, RetryOptions, RetryPolicy, RetryReason,
};
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const START_MS: i64 = 1_700_000_000_000;
const IDLE: Duration = Duration::from_secs(20);
/// How long a test waits for something that should happen at once before it fails (a
/// guard against hangs, not a timing claim).
const HANG: Duration = Duration::from_secs(20);

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .compaction_interval(None)
        .segment_bytes(64 * 1024)
}

/// A gate handlers wait at until `n` of them are inside at once (or `HANG` passes).
#[derive(Default)]
struct Gate {
    inside: Mutex<usize>,
    changed: Condvar,
}

impl Gate {
    /// Enters; returns whether `n` were inside together before `HANG`.
    fn meet(&self, n: usize) -> bool {
        let mut inside = self.inside.lock();
        *inside += 1;
        self.changed.notify_all();
        let until = Instant::now() + HANG;
        while *inside < n {
            if self.changed.wait_until(&mut inside, until).timed_out() {
                return false;
            }
        }
        true
    }
}

#[test]
fn events_due_together_run_on_every_idle_worker() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock).workers(4)).unwrap();
    // Each handler waits until four are inside at once: only events spread over the four
    // workers can meet (one worker running a batch in turn never can).
    let gate = Arc::new(Gate::default());
    let met = Arc::new(AtomicU32::new(0));
    {
        let (gate, met) = (gate.clone(), met.clone());
        engine.on("work", move |_, _| {
            if gate.meet(4) {
                met.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    engine.start();
    let job = engine
        .push("work", (0..8).map(|i| format!("{i}")), Duration::ZERO)
        .unwrap();
    assert!(engine.wait_idle(IDLE));
    assert_eq!(engine.job_stats(job).unwrap().success, 8);
    assert_eq!(
        met.load(Ordering::Relaxed),
        8,
        "every handler met three others: the job's events ran on four workers at once"
    );
    engine.close().unwrap();
}

#[test]
fn job_stats_move_with_each_event_of_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock).workers(1)).unwrap();
    // Each handler waits until every event that ran before it is acknowledged: while the
    // batch still runs, the job's stats move with each event.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(AtomicU32::new(0));
    {
        let (seen, started, handle) = (seen.clone(), started.clone(), engine.clone());
        engine.on("step", move |event, _| {
            let before = u64::from(started.fetch_add(1, Ordering::Relaxed));
            let until = Instant::now() + HANG;
            let mut success = handle.job_stats(event.job().unwrap()).unwrap().success;
            while success < before && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
                success = handle.job_stats(event.job().unwrap()).unwrap().success;
            }
            seen.lock().push(success);
            Ok(())
        });
    }
    engine.start();
    let job = engine
        .push("step", (0..10).map(|i| format!("{i}")), Duration::ZERO)
        .unwrap();
    assert!(engine.wait_idle(IDLE));
    let seen = seen.lock().clone();
    // One worker runs them in turn; each found the ones before it acknowledged.
    assert_eq!(seen, (0..10).collect::<Vec<u64>>());
    assert_eq!(engine.job_stats(job).unwrap().success, 10);
    engine.close().unwrap();
}

/// Handlers of `name` ask to be retried a minute later with some data, `rounds` times each.
fn failing_engine(
    dir: &std::path::Path,
    clock: &ManualClock,
    interval: Option<Duration>,
) -> Engine {
    let options = options(clock)
        .policy("flaky", RetryPolicy::fixed(Duration::from_secs(60)))
        .compaction_interval(interval)
        .compaction_min_dead(0.3);
    let engine = Engine::open_with(dir, options).unwrap();
    engine.on("flaky", |event, _| {
        let count = event.retry_context().map_or(0, |c| c.retry_count);
        Err(HandlerError::retry(RetryOptions {
            retry_after: Duration::from_secs(60),
            reason: RetryReason::RetryRequest,
            data: format!("after {count} retries, attempt {}", event.attempt())
                .repeat(8)
                .into_bytes(),
        }))
    });
    engine
}

fn segments_bytes(dir: &std::path::Path) -> u64 {
    // Data bytes, not the files' preallocated length: what the reader reports.
    let reader = afterlog::Reader::open(dir).unwrap();
    reader
        .segments()
        .unwrap()
        .iter()
        .map(|s| s.data_bytes)
        .sum()
}

#[test]
fn retry_history_is_compacted_to_what_replay_needs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = failing_engine(dir.path(), &clock, None);
    engine.start();
    for i in 0..50 {
        engine
            .publish("flaky", format!("event {i}"), afterlog::After::NOW)
            .unwrap();
    }
    for _ in 0..40 {
        assert!(engine.wait_idle(IDLE));
        clock.advance(Duration::from_secs(60));
    }
    assert!(engine.wait_idle(IDLE));
    let metrics = engine.metrics();
    assert_eq!(metrics.retried, 50 * 41, "{metrics:?}");
    let before = segments_bytes(dir.path());
    engine.compact_now().unwrap();
    let after = segments_bytes(dir.path());
    println!("retry history: {before} bytes before compaction, {after} after");
    // 41 retries of 50 events, of which one attempt and one retry each are left.
    assert!(after * 10 < before, "{before} -> {after}");
    engine.close().unwrap();

    // Replay continues where the history left off: attempt counts and retry contexts.
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let seen = seen.clone();
        engine.on("flaky", move |event, _| {
            let count = event.retry_context().map(|c| c.retry_count);
            seen.lock().push((event.attempt(), count));
            Ok(())
        });
    }
    engine.start();
    clock.advance(Duration::from_secs(60));
    assert!(engine.wait_idle(IDLE));
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 50);
    assert!(
        seen.iter().all(|&s| s == (42, Some(41))),
        "attempt 42 with 41 retries for every event: {seen:?}"
    );
    assert_eq!(engine.metrics().acked, 50);
    engine.close().unwrap();
}

#[test]
fn a_background_pass_that_would_save_nothing_is_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let interval = Duration::from_secs(30);
    let engine = failing_engine(dir.path(), &clock, Some(interval));
    engine.start();
    for i in 0..50 {
        engine
            .publish("flaky", format!("event {i}"), afterlog::After::NOW)
            .unwrap();
    }
    // Half a minute at a time: the events retry every minute, and a pass runs in between.
    let pass = |engine: &Engine, delivering: bool| {
        let passes = engine.metrics().compaction_passes;
        clock.advance(interval);
        let until = Instant::now() + HANG;
        while engine.metrics().compaction_passes == passes {
            assert!(Instant::now() < until, "no background pass ran");
            std::thread::sleep(Duration::from_millis(1));
        }
        if delivering {
            assert!(engine.wait_idle(IDLE));
        }
    };
    for _ in 0..60 {
        pass(&engine, true);
    }
    let busy = engine.metrics();
    // Reopened and not started: the events stay pending with their latest history, nothing
    // new is written, and every later pass finds nothing to save.
    engine.close().unwrap();
    let engine = Engine::open_with(
        dir.path(),
        options(&clock)
            .compaction_interval(Some(interval))
            .compaction_min_dead(0.3),
    )
    .unwrap();
    pass(&engine, false);
    let quiet = engine.metrics();
    for _ in 0..30 {
        pass(&engine, false);
    }
    let after = engine.metrics();
    println!(
        "busy: {} passes wrote {} bytes, saved {}; quiet: 30 passes wrote {} bytes",
        busy.compaction_passes,
        busy.compaction_written_bytes,
        busy.compacted_bytes,
        after.compaction_written_bytes - quiet.compaction_written_bytes
    );
    assert!(busy.compacted_bytes > busy.compaction_written_bytes);
    assert_eq!(
        after.compaction_written_bytes, quiet.compaction_written_bytes,
        "passes with nothing to save wrote nothing"
    );
    engine.close().unwrap();
}
