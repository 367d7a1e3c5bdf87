//! Dead letters (the wave-2 contract), on the manual clock: each way an event dies (retries
//! exhausted, a panic, past retention, no handler), listing newest first, the hook, redrive
//! and purge — and each across a restart and a compaction, until the dead retention passes.

use afterlog::{
    After, DeadLetter, DeadReason, Engine, EventState, HandlerError, ManualClock, Options, Reader,
    RetryPolicy,
};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const START_MS: i64 = 1_700_000_000_000;
const IDLE: Duration = Duration::from_secs(20);
const DAY: Duration = Duration::from_secs(86_400);

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .segment_bytes(64 << 10)
        .compaction_interval(None)
        .policy(
            "flaky",
            RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(2),
        )
}

/// Publishes one event of `name` due now and runs the engine until it is idle, advancing
/// the clock a second at a time `steps` times (for retries).
fn run(engine: &Engine, clock: &ManualClock, steps: u32) {
    engine.start();
    for _ in 0..=steps {
        assert!(engine.wait_idle(IDLE));
        clock.advance(Duration::from_secs(1));
    }
    assert!(engine.wait_idle(IDLE));
}

#[test]
fn an_event_whose_retries_are_exhausted_is_kept_with_its_last_message() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    engine.on("flaky", move |_, _| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        Err(HandlerError::msg(format!("smtp refused, try {n}")))
    });
    let id = engine.publish("flaky", "to: a@b.c", After::NOW).unwrap();
    run(&engine, &clock, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let dead = engine.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(
        (d.id, d.name.as_str(), &d.body[..]),
        (id, "flaky", &b"to: a@b.c"[..])
    );
    assert_eq!(d.attempts, 2);
    assert_eq!(d.reason, DeadReason::RetriesExhausted);
    assert_eq!(d.message, "smtp refused, try 2");
    assert!(d.dropped_ms >= START_MS + 1000, "{}", d.dropped_ms);
    assert_eq!(engine.metrics().dead_letters, 1);
    engine.close().unwrap();
    // A restart and a full compaction keep it, and the reader sees it too.
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    engine.compact_now().unwrap();
    assert_eq!(engine.dead_letters(10).unwrap(), dead);
    engine.close().unwrap();
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    assert_eq!(engine.dead_letters(10).unwrap(), dead);
    engine.close().unwrap();
    let reader = Reader::open(dir.path()).unwrap();
    assert_eq!(reader.dead_letters(10).unwrap(), dead);
    assert_eq!(reader.summary().unwrap().dead_letters, 1);
}

#[test]
fn a_panic_keeps_its_own_message() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    engine.on("flaky", |_, _| panic!("the mail server is on fire"));
    engine.publish("flaky", "x", After::NOW).unwrap();
    run(&engine, &clock, 3);
    let dead = engine.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].message.contains("the mail server is on fire"),
        "{}",
        dead[0].message
    );
    engine.close().unwrap();
}

#[test]
fn an_event_with_no_handler_is_acknowledged_as_ignored_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    engine.on("user.joined", |_, _| Ok(()));
    let typo = engine.publish("user.joinde", "{}", After::NOW).unwrap();
    let fine = engine.publish("user.joined", "{}", After::NOW).unwrap();
    run(&engine, &clock, 0);
    assert_eq!(engine.metrics().ignored, 1);
    let dead = engine.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id, dead[0].reason), (typo, DeadReason::NoHandler));
    assert!(
        dead[0].message.contains("user.joinde"),
        "{}",
        dead[0].message
    );
    engine.close().unwrap();
    let rows = Reader::open(dir.path()).unwrap().events().unwrap();
    let state = |id| rows.iter().find(|r| r.id == id).map(|r| r.state);
    // Acknowledged (as ignored), as before; and kept as a dead letter.
    assert_eq!(state(typo), Some(EventState::Succeeded));
    assert_eq!(state(fine), Some(EventState::Succeeded));
}

#[test]
fn an_event_past_retention_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let opts = || options(&clock).retention(DAY);
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    let id = engine.publish("late", "x", After::NOW).unwrap();
    // Never started: the compaction pass past the retention drops it.
    clock.advance(DAY * 2);
    let stats = engine.compact_now().unwrap();
    assert_eq!(stats.events_expired, 1);
    let dead = engine.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id, dead[0].reason),
        (id, DeadReason::PastRetention)
    );
    engine.close().unwrap();
}

#[test]
fn dead_letters_are_listed_newest_first_up_to_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    engine.start();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            engine
                .publish("nobody", format!("{i}"), After::NOW)
                .unwrap(),
        );
        assert!(engine.wait_idle(IDLE));
        clock.advance(Duration::from_secs(1));
    }
    let dead: Vec<_> = engine
        .dead_letters(3)
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(dead, vec![ids[4], ids[3], ids[2]]);
    assert_eq!(engine.dead_letters(100).unwrap().len(), 5);
    engine.close().unwrap();
}

#[test]
fn the_hook_is_called_once_per_death_after_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let seen: Arc<Mutex<Vec<DeadLetter>>> = Arc::default();
    let s = seen.clone();
    let d = dir.path().to_owned();
    let opts = options(&clock).on_dead(move |dead| {
        // Durable before the hook: a reader already finds the drop.
        let reader = Reader::open(&d).unwrap();
        assert!(
            reader
                .dead_letters(100)
                .unwrap()
                .iter()
                .any(|r| r.id == dead.id)
        );
        s.lock().push(dead.clone());
    });
    let engine = Engine::open_with(dir.path(), opts).unwrap();
    engine.on("flaky", |_, _| Err(HandlerError::msg("no")));
    let failed = engine.publish("flaky", "a", After::NOW).unwrap();
    let ignored = engine.publish("nobody", "b", After::NOW).unwrap();
    run(&engine, &clock, 3);
    let mut got: Vec<_> = seen.lock().iter().map(|d| (d.id, d.reason)).collect();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(
        got,
        vec![
            (failed, DeadReason::RetriesExhausted),
            (ignored, DeadReason::NoHandler)
        ]
    );
    assert_eq!(seen.lock()[0].body.len(), 1);
    engine.close().unwrap();
    // Not again after a restart.
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    engine.start();
    assert!(engine.wait_idle(IDLE));
    assert_eq!(seen.lock().len(), 2);
    engine.close().unwrap();
}

#[test]
fn a_panicking_hook_is_counted_and_stops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let opts = options(&clock).on_dead(|_| panic!("hook bug"));
    let engine = Engine::open_with(dir.path(), opts).unwrap();
    engine.publish("nobody", "b", After::NOW).unwrap();
    engine.publish("nobody", "c", After::NOW).unwrap();
    run(&engine, &clock, 0);
    assert_eq!(engine.metrics().dead_hook_panics, 2);
    assert_eq!(engine.dead_letters(10).unwrap().len(), 2);
    engine.publish("nobody", "d", After::NOW).unwrap();
    assert!(engine.wait_idle(IDLE));
    engine.close().unwrap();
}

#[test]
fn redrive_publishes_again_and_forgets_the_dead_letter_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let dead_id = engine
        .publish("late.handler", "body-1", After::NOW)
        .unwrap();
    run(&engine, &clock, 0);
    assert_eq!(engine.dead_letters(10).unwrap().len(), 1);
    engine.close().unwrap();
    // The handler is registered now; the dead letter is redriven.
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let s = seen.clone();
    engine.on("late.handler", move |e, _| {
        s.lock().push(e.body().to_vec());
        Ok(())
    });
    let again = engine.redrive(dead_id).unwrap();
    assert_ne!(again, dead_id);
    assert!(engine.dead_letters(10).unwrap().is_empty());
    // Once only: it is no dead letter any more.
    let twice = engine.redrive(dead_id).unwrap_err().to_string();
    assert!(twice.contains("not a dead letter"), "{twice}");
    let unknown = engine
        .redrive(afterlog::EventId(999))
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("unknown event"), "{unknown}");
    let records = engine.metrics().records;
    run(&engine, &clock, 0);
    assert_eq!(*seen.lock(), vec![b"body-1".to_vec()]);
    assert!(engine.metrics().records > records);
    engine.compact_now().unwrap();
    engine.close().unwrap();
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    assert!(
        engine.dead_letters(10).unwrap().is_empty(),
        "no dead letter comes back"
    );
    engine.close().unwrap();
    assert!(
        Reader::open(dir.path())
            .unwrap()
            .dead_letters(10)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn purge_forgets_every_dead_letter_and_compaction_then_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    for i in 0..20 {
        engine
            .publish("nobody", format!("{i}"), After::NOW)
            .unwrap();
    }
    run(&engine, &clock, 0);
    assert_eq!(engine.dead_letters(100).unwrap().len(), 20);
    // Kept by compaction while they are dead letters.
    let kept = engine.compact_now().unwrap();
    assert_eq!(kept.events_released, 0);
    assert_eq!(engine.purge_dead().unwrap(), 20);
    assert_eq!(
        engine.purge_dead().unwrap(),
        0,
        "nothing left: nothing written"
    );
    assert!(engine.dead_letters(100).unwrap().is_empty());
    // Dead after the purge: kept.
    engine.publish("nobody", "later", After::NOW).unwrap();
    assert!(engine.wait_idle(IDLE));
    let stats = engine.compact_now().unwrap();
    assert_eq!(stats.events_released, 20);
    engine.close().unwrap();
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let dead = engine.dead_letters(100).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, b"later");
    engine.close().unwrap();
}

#[test]
fn dead_letters_are_kept_for_the_dead_retention_then_compacted_away() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let opts = || options(&clock).dead_retention(DAY * 30);
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    engine.publish("nobody", "x", After::NOW).unwrap();
    run(&engine, &clock, 0);
    clock.advance(DAY * 29);
    engine.compact_now().unwrap();
    assert_eq!(engine.dead_letters(10).unwrap().len(), 1);
    engine.close().unwrap();
    clock.advance(DAY * 2);
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    assert!(
        engine.dead_letters(10).unwrap().is_empty(),
        "past the retention"
    );
    let stats = engine.compact_now().unwrap();
    assert_eq!(stats.events_released, 1);
    assert_eq!(engine.metrics().dead_letters, 0);
    engine.close().unwrap();
}

#[test]
fn a_zero_dead_retention_keeps_none_but_still_calls_the_hook() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let opts = options(&clock)
        .dead_retention(Duration::ZERO)
        .on_dead(move |_| {
            c.fetch_add(1, Ordering::SeqCst);
        });
    let engine = Engine::open_with(dir.path(), opts).unwrap();
    engine.publish("nobody", "x", After::NOW).unwrap();
    run(&engine, &clock, 0);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(engine.dead_letters(10).unwrap().is_empty());
    assert_eq!(engine.compact_now().unwrap().events_released, 1);
    engine.close().unwrap();
}

#[test]
fn a_finished_jobs_stats_stay_readable_for_the_dead_retention() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let opts = || options(&clock).dead_retention(DAY * 30);
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    engine.on("ok", |_, _| Ok(()));
    engine.on("flaky", |_, _| Err(HandlerError::msg("refused")));
    let done = engine.push("ok", ["a", "b", "c"], Duration::ZERO).unwrap();
    let failing = engine.push("flaky", ["d", "e"], Duration::ZERO).unwrap();
    let cancelled = engine
        .push("ok", ["f", "g"], Duration::from_secs(3600))
        .unwrap();
    assert_eq!(engine.cancel_job(cancelled).unwrap(), 2);
    run(&engine, &clock, 3);
    let want = |job| engine.job_stats(job).unwrap();
    let (done_stats, failing_stats, cancelled_stats) = (want(done), want(failing), want(cancelled));
    assert_eq!((done_stats.success, done_stats.in_progress), (3, 0));
    assert_eq!((failing_stats.failed, failing_stats.in_progress), (2, 0));
    assert_eq!(
        (cancelled_stats.cancelled, cancelled_stats.in_progress),
        (2, 0)
    );
    // Compaction removes the successful and cancelled events (the failed ones are dead
    // letters); each job's counts are still there, across a restart too.
    let stats = engine.compact_now().unwrap();
    assert_eq!(stats.events_released, 5, "{stats:?}");
    let all = [
        (done, done_stats),
        (failing, failing_stats),
        (cancelled, cancelled_stats),
    ];
    let same = |engine: &Engine, when: &str| {
        for (job, stats) in all {
            assert_eq!(engine.job_stats(job).unwrap(), stats, "{job} {when}");
        }
    };
    same(&engine, "after compaction");
    // Cancelling a job that finished cancels nothing and writes nothing.
    let records = engine.metrics().records;
    assert_eq!(engine.cancel_job(done).unwrap(), 0);
    assert_eq!(engine.metrics().records, records);
    engine.close().unwrap();
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    engine.compact_now().unwrap();
    same(&engine, "after a restart");
    engine.close().unwrap();
    // Past the retention, the counts go with the dead letters.
    clock.advance(DAY * 31);
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    engine.compact_now().unwrap();
    for job in [done, failing, cancelled] {
        assert!(engine.job_stats(job).is_err(), "{job} past the retention");
    }
    engine.close().unwrap();
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    assert!(
        engine.job_stats(done).is_err(),
        "the job-done records are compacted away"
    );
    assert_eq!(engine.metrics().records, 0, "nothing is left in the log");
    engine.close().unwrap();
}

#[test]
fn a_job_finished_before_a_crash_gets_its_counts_at_the_next_start() {
    use afterlog::{CrashMode, MemStorage};
    let clock = ManualClock::new(START_MS);
    let disk = Arc::new(MemStorage::new());
    let engine = Engine::open_storage(disk.clone(), options(&clock)).unwrap();
    let job = engine.push("ok", ["a", "b"], Duration::ZERO).unwrap();
    // Not started: the job finishes by its cancel, and no job-done record is written yet.
    assert_eq!(engine.cancel_job(job).unwrap(), 2);
    // Compaction keeps the job's events until its counts are in a job-done record.
    engine.compact_now().unwrap();
    assert_eq!(engine.job_stats(job).unwrap().cancelled, 2);
    drop(engine);
    let disk = Arc::new(disk.after_crash(CrashMode::DropUnsynced));
    let engine = Engine::open_storage(disk, options(&clock)).unwrap();
    engine.on("ok", |_, _| Ok(()));
    engine.start();
    assert!(engine.wait_idle(IDLE));
    let stats = engine.compact_now().unwrap();
    assert_eq!(stats.events_released, 2, "{stats:?}");
    assert_eq!(engine.job_stats(job).unwrap().cancelled, 2);
    engine.close().unwrap();
}
