//! Recurring schedules (the wave-2 contract), on the manual clock: cron and interval
//! schedules, at most one pending occurrence, `event.schedule()`, replacing and removing a
//! schedule, each catch-up policy after a restart, a crash between an occurrence's finish and
//! the next one, compaction, and a year of a per-minute schedule.

use afterlog::{CatchUp, Engine, ManualClock, MemStorage, Options, Recurring};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

/// 2024-01-01T00:00:00Z.
const START_MS: i64 = 1_704_067_200_000;
const IDLE: Duration = Duration::from_secs(20);
const MINUTE: Duration = Duration::from_secs(60);

/// The time `k` minutes after the start.
fn minute(k: i64) -> i64 {
    START_MS + k * 60_000
}

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .segment_bytes(64 << 10)
        .compaction_interval(None)
}

/// The (event time, schedule) of every delivery of `name`.
type Seen = Arc<Mutex<Vec<(i64, Option<String>)>>>;

fn record(engine: &Engine, name: &str) -> Seen {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    engine.on(name, move |event, _| {
        s.lock()
            .push((due_ms(event), event.schedule().map(str::to_string)));
        Ok(())
    });
    seen
}

/// When an event was due: its publish time plus its delay.
fn due_ms(event: &afterlog::Event) -> i64 {
    event.time_ms() + event.delay_ms()
}

fn times(seen: &Seen) -> Vec<i64> {
    seen.lock().iter().map(|&(t, _)| t).collect()
}

/// Advances the clock `step` at a time, `n` times, running the engine to idle after each.
fn run(engine: &Engine, clock: &ManualClock, step: Duration, n: u32) {
    assert!(engine.wait_idle(IDLE));
    for _ in 0..n {
        clock.advance(step);
        assert!(engine.wait_idle(IDLE));
    }
}

#[test]
fn an_every_schedule_publishes_each_occurrence_once_with_its_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let seen = record(&engine, "ping");
    engine
        .schedule("heartbeat", "ping", b"hi", Recurring::every(MINUTE))
        .unwrap();
    let list = engine.schedules();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].id.as_str(), list[0].name.as_str()),
        ("heartbeat", "ping")
    );
    assert_eq!(list[0].next_due_ms, Some(minute(1)));
    engine.start();
    run(&engine, &clock, MINUTE, 5);
    let want: Vec<i64> = (1..=5).map(minute).collect();
    assert_eq!(times(&seen), want);
    assert!(
        seen.lock()
            .iter()
            .all(|(_, s)| s.as_deref() == Some("heartbeat"))
    );
    assert_eq!(engine.schedules()[0].next_due_ms, Some(minute(6)));
    assert_eq!(engine.metrics().schedules, 1);
    engine.close().unwrap();
}

#[test]
fn a_cron_schedule_fires_at_its_times_in_utc() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS); // a Monday
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let seen = record(&engine, "report.build");
    engine
        .schedule(
            "daily-report",
            "report.build",
            br#"{}"#,
            Recurring::cron("0 9 * * MON-FRI").unwrap(),
        )
        .unwrap();
    engine.start();
    run(&engine, &clock, Duration::from_secs(3600), 24 * 7);
    let day = 86_400_000;
    let nine = 9 * 3_600_000;
    let want: Vec<i64> = (0..5).map(|d| START_MS + d * day + nine).collect();
    assert_eq!(times(&seen), want);
    engine.close().unwrap();
}

#[test]
fn bad_schedules_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    assert!(Recurring::cron("61 * * * *").is_err());
    assert!(Recurring::cron("* * *").is_err());
    let never = Recurring::cron("0 0 30 2 *").unwrap();
    let err = engine.schedule("feb-30", "x", b"", never).unwrap_err();
    assert!(err.to_string().contains("never fires"), "{err}");
    let every = |d| Recurring::every(d);
    assert!(
        engine
            .schedule("zero", "x", b"", every(Duration::ZERO))
            .is_err()
    );
    assert!(
        engine
            .schedule("sub-ms", "x", b"", every(Duration::from_micros(1500)))
            .is_err()
    );
    assert!(engine.schedule("", "x", b"", every(MINUTE)).is_err());
    assert!(
        engine
            .schedule(&"i".repeat(256), "x", b"", every(MINUTE))
            .is_err()
    );
    assert!(engine.schedule("no-name", "", b"", every(MINUTE)).is_err());
    assert!(engine.schedules().is_empty());
    assert!(!engine.unschedule("missing").unwrap());
    assert_eq!(engine.metrics().records, 0);
    engine.close().unwrap();
}

#[test]
fn a_slow_occurrence_makes_the_schedule_skip_the_ones_due_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let seen = record(&engine, "ping");
    engine
        .schedule("s", "ping", b"", Recurring::every(MINUTE))
        .unwrap();
    engine.start();
    // Ten and a half minutes pass in one step: the occurrence at minute 1 is delivered late,
    // and the next is the first after now, not the nine that fell due while it was pending.
    run(&engine, &clock, 10 * MINUTE + Duration::from_secs(30), 1);
    run(&engine, &clock, MINUTE, 1);
    assert_eq!(times(&seen), vec![minute(1), minute(11)]);
    engine.close().unwrap();
}

#[test]
fn scheduling_an_id_again_replaces_it_and_unschedule_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let seen = record(&engine, "a");
    let seen_b = record(&engine, "b");
    engine
        .schedule("s", "a", b"", Recurring::every(MINUTE))
        .unwrap();
    engine.start();
    run(&engine, &clock, MINUTE, 1);
    engine
        .schedule("s", "b", b"", Recurring::every(2 * MINUTE))
        .unwrap();
    assert_eq!(engine.schedules().len(), 1);
    run(&engine, &clock, MINUTE, 4);
    assert_eq!(times(&seen), vec![minute(1)]);
    assert_eq!(times(&seen_b), vec![START_MS + 180_000, START_MS + 300_000]);
    assert!(engine.unschedule("s").unwrap());
    assert!(!engine.unschedule("s").unwrap());
    assert!(engine.schedules().is_empty());
    run(&engine, &clock, MINUTE, 4);
    assert_eq!(times(&seen_b).len(), 2);
    engine.close().unwrap();
    // Gone after a restart and a compaction too.
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    engine.compact_now().unwrap();
    assert!(engine.schedules().is_empty());
    engine.close().unwrap();
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    assert!(engine.schedules().is_empty());
    assert_eq!(engine.metrics().pending, 0);
    engine.close().unwrap();
}

/// A schedule every minute, closed at minute 2 (after two occurrences) and reopened at
/// minute 10 with `policy`: what the reopened engine delivers up to minute 12.
fn after_ten_minutes_closed(policy: CatchUp) -> Vec<i64> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let seen = record(&engine, "ping");
    let rule = Recurring::every(MINUTE).catch_up(policy);
    engine.schedule("s", "ping", b"", rule).unwrap();
    engine.start();
    run(&engine, &clock, MINUTE, 2);
    assert_eq!(times(&seen).len(), 2);
    engine.close().unwrap();
    clock.advance(8 * MINUTE);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let seen = record(&engine, "ping");
    engine.start();
    run(&engine, &clock, MINUTE, 2);
    engine.close().unwrap();
    times(&seen)
}

#[test]
fn catch_up_skip_publishes_none_of_the_missed_occurrences() {
    assert_eq!(
        after_ten_minutes_closed(CatchUp::Skip),
        vec![minute(10), minute(11), minute(12)]
    );
}

#[test]
fn catch_up_latest_publishes_the_latest_missed_occurrence_only() {
    // Minute 10 is now: the latest occurrence at or before the start.
    assert_eq!(
        after_ten_minutes_closed(CatchUp::Latest),
        vec![minute(10), minute(11), minute(12)]
    );
}

#[test]
fn catch_up_latest_replaces_a_missed_pending_occurrence_with_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    engine
        .schedule("s", "ping", b"", Recurring::every(MINUTE))
        .unwrap();
    engine.close().unwrap();
    // Reopened at minute 5 and a half: the pending minute-1 occurrence was missed.
    clock.advance(5 * MINUTE + Duration::from_secs(30));
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let seen = record(&engine, "ping");
    engine.start();
    run(&engine, &clock, MINUTE, 1);
    assert_eq!(times(&seen), vec![minute(5), minute(6)]);
    engine.close().unwrap();
}

#[test]
fn catch_up_all_publishes_each_missed_occurrence() {
    let mut want: Vec<i64> = (3..=10).map(minute).collect();
    want.extend([minute(11), minute(12)]);
    assert_eq!(after_ten_minutes_closed(CatchUp::All), want);
}

#[test]
fn catch_up_all_stops_at_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let rule = Recurring::every(Duration::from_secs(1)).catch_up(CatchUp::All);
    engine.schedule("s", "tick", b"", rule).unwrap();
    engine.close().unwrap();
    // 5,000 seconds closed: the first pending one and CATCH_UP_ALL_CAP more.
    clock.advance(Duration::from_secs(5_000));
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let seen = record(&engine, "tick");
    engine.start();
    assert!(engine.wait_idle(IDLE));
    let t = times(&seen);
    assert_eq!(t.len() as u32, afterlog::CATCH_UP_ALL_CAP + 1);
    assert_eq!(t[..3], [START_MS + 1000, START_MS + 2000, START_MS + 3000]);
    // Then it goes on from now.
    let now = START_MS + 5_000_000;
    assert_eq!(engine.schedules()[0].next_due_ms, Some(now + 1000));
    engine.close().unwrap();
}

#[test]
fn a_schedule_survives_restarts_and_compaction_without_firing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    engine
        .schedule("s", "ping", vec![7u8; 4000], Recurring::every(MINUTE))
        .unwrap();
    engine.close().unwrap();
    let mut all = Vec::new();
    for _ in 0..4 {
        let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
        let seen = record(&engine, "ping");
        engine.start();
        run(&engine, &clock, MINUTE, 10);
        let stats = engine.compact_now().unwrap();
        all.extend(times(&seen));
        assert_eq!(engine.schedules().len(), 1);
        engine.close().unwrap();
        assert!(
            stats.segments_removed + stats.segments_rewritten > 0,
            "{stats:?}"
        );
    }
    let want: Vec<i64> = (1..=40).map(minute).collect();
    assert_eq!(all, want);
}

#[test]
fn a_crash_at_any_storage_operation_neither_loses_nor_repeats_an_occurrence() {
    // Each run crashes at one numbered storage operation (the unsynced writes are lost),
    // reopens and runs on to minute 6: every occurrence is delivered, each by one event (an
    // event may be delivered again, at least once, but no occurrence is published twice).
    let minutes = 6i64;
    let mut op = 1;
    loop {
        let clock = ManualClock::new(START_MS);
        let storage = Arc::new(MemStorage::new());
        let seen: Arc<Mutex<Vec<(i64, afterlog::EventId)>>> = Arc::default();
        let handler = |engine: &Engine| {
            let s = seen.clone();
            engine.on("ping", move |event, _| {
                s.lock().push((due_ms(event), event.id()));
                Ok(())
            });
        };
        let engine = Engine::open_storage(storage.clone(), options(&clock)).unwrap();
        handler(&engine);
        let rule = Recurring::every(MINUTE).catch_up(CatchUp::All);
        engine.schedule("s", "ping", b"", rule).unwrap();
        storage.crash_at(storage.ops() + op);
        engine.start();
        let mut crashed = false;
        for _ in 0..minutes {
            if !engine.wait_idle(IDLE) {
                crashed = true;
                break;
            }
            clock.advance(MINUTE);
        }
        crashed |= !engine.wait_idle(IDLE) || storage.crashed();
        drop(engine);
        if !crashed {
            break; // every operation of the run has been crashed at
        }
        let after = Arc::new(storage.after_crash(afterlog::CrashMode::DropUnsynced));
        let clock_ms = clock.now_ms();
        let engine = Engine::open_storage(after, options(&clock)).unwrap();
        handler(&engine);
        engine.start();
        while clock.now_ms() < minute(minutes) {
            assert!(engine.wait_idle(IDLE));
            clock.advance(MINUTE);
        }
        assert!(engine.wait_idle(IDLE));
        engine.close().unwrap();
        let mut by_time: std::collections::BTreeMap<i64, std::collections::BTreeSet<u64>> =
            Default::default();
        for &(t, id) in seen.lock().iter() {
            by_time.entry(t).or_default().insert(id.0);
        }
        let want: Vec<i64> = (1..=minutes).map(minute).collect();
        assert_eq!(
            by_time.keys().copied().collect::<Vec<_>>(),
            want,
            "crash at op {op} (clock {clock_ms})"
        );
        assert!(
            by_time.values().all(|ids| ids.len() == 1),
            "crash at op {op}: {by_time:?}"
        );
        op += 1;
    }
    assert!(op > 10, "only {op} operations");
}

#[test]
fn a_year_of_a_per_minute_schedule() {
    // A year in hourly steps of the manual clock: each step delivers the occurrence pending
    // since the step before (the hour's first minute, now late) and the one due at the very
    // instant it finished (the hour itself); the 58 that fell due while the first was
    // pending are skipped, as the contract says. It never drifts, fires twice or stops.
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let seen = record(&engine, "tick");
    engine
        .schedule(
            "minutely",
            "tick",
            b"",
            Recurring::cron("* * * * *").unwrap(),
        )
        .unwrap();
    engine.start();
    let hours = 366 * 24; // 2024 is a leap year
    run(&engine, &clock, Duration::from_secs(3600), hours);
    let t = times(&seen);
    assert_eq!(t.len() as u32, 2 * hours);
    for (k, pair) in t.chunks(2).enumerate() {
        let hour = START_MS + k as i64 * 3_600_000;
        assert_eq!(pair, [hour + 60_000, hour + 3_600_000], "hour {k}");
    }
    assert_eq!(
        engine.schedules()[0].next_due_ms,
        Some(clock.now_ms() + 60_000)
    );
    engine.close().unwrap();
}

#[test]
fn an_idle_schedule_survives_compaction_and_goes_on_at_start() {
    // Its occurrence cancelled before start (so no next one is published yet): compaction
    // must keep the schedule's record though its occurrence is finished.
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    engine
        .schedule("s", "ping", b"", Recurring::every(MINUTE))
        .unwrap();
    assert!(engine.cancel(afterlog::EventId(1)).unwrap());
    assert_eq!(engine.schedules()[0].next_due_ms, None);
    engine.compact_now().unwrap();
    engine.close().unwrap();
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    engine.compact_now().unwrap();
    let seen = record(&engine, "ping");
    engine.start();
    assert_eq!(engine.schedules()[0].next_due_ms, Some(START_MS + 120_000));
    run(&engine, &clock, MINUTE, 2);
    assert_eq!(times(&seen), vec![START_MS + 120_000]);
    engine.close().unwrap();
}
