//! Keys, priorities and flow control (the wave-2 contract), on the manual clock: every mode
//! of a key and what a running holder means for it, key windows, races of many publishers
//! on one key, priorities, concurrency and rate limits, durable pause — and each across a
//! restart and a compaction.

use afterlog::{
    After, Engine, EventId, EventState, KeyMode, KeyOutcome, ManualClock, Options, PublishOptions,
    Reader,
};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const START_MS: i64 = 1_700_000_000_000;
const IDLE: Duration = Duration::from_secs(20);
const HOUR: Duration = Duration::from_secs(3600);

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .segment_bytes(64 << 10)
        .compaction_interval(None)
}

fn keyed(key: &str, mode: KeyMode) -> PublishOptions {
    PublishOptions::default().key(key, mode)
}

fn state(dir: &std::path::Path, id: EventId) -> Option<EventState> {
    Reader::open(dir)
        .unwrap()
        .events()
        .unwrap()
        .into_iter()
        .find(|e| e.id == id)
        .map(|e| e.state)
}

/// Bodies the handler of `name` saw, in order.
fn record_bodies(engine: &Engine, name: &str) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    engine.on(name, move |event, _| {
        s.lock().push(event.body().to_vec());
        Ok(())
    });
    seen
}

#[test]
fn keep_dedups_while_the_holder_is_pending_then_frees_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let seen = record_bodies(&engine, "invoice.send");
    let first = engine
        .publish_with("invoice.send", "a", HOUR, keyed("inv-42", KeyMode::Keep))
        .unwrap();
    assert_eq!(first.outcome, KeyOutcome::New);
    let again = engine
        .publish_with("invoice.send", "b", HOUR, keyed("inv-42", KeyMode::Keep))
        .unwrap();
    assert_eq!((again.id, again.outcome), (first.id, KeyOutcome::Kept));
    // Keys are per name: another name, or another key, is free.
    let other_name = engine
        .publish_with("invoice.void", "c", HOUR, keyed("inv-42", KeyMode::Keep))
        .unwrap();
    let other_key = engine
        .publish_with("invoice.send", "d", HOUR, keyed("inv-43", KeyMode::Keep))
        .unwrap();
    assert_eq!(other_name.outcome, KeyOutcome::New);
    assert_eq!(other_key.outcome, KeyOutcome::New);
    assert_eq!(
        engine.metrics().published,
        3,
        "a kept publish writes nothing"
    );
    engine.start();
    clock.advance(HOUR);
    assert!(engine.wait_idle(IDLE));
    seen.lock().sort();
    assert_eq!(*seen.lock(), vec![b"a".to_vec(), b"d".to_vec()]);
    // Acknowledged: the key is free again.
    let after = engine
        .publish_with(
            "invoice.send",
            "e",
            After::NOW,
            keyed("inv-42", KeyMode::Keep),
        )
        .unwrap();
    assert_eq!(after.outcome, KeyOutcome::New);
    assert_ne!(after.id, first.id);
    engine.close().unwrap();
}

#[test]
fn a_running_holder_keeps_its_key_and_is_cancelled_by_replace() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let entered = Arc::new(std::sync::Barrier::new(2));
    let release = Arc::new(std::sync::Barrier::new(2));
    let (e, r) = (entered.clone(), release.clone());
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    engine.on("sync", move |event, _| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            e.wait();
            r.wait();
            assert_eq!(event.body(), b"first");
            return Err(afterlog::HandlerError::msg("the running holder fails"));
        }
        Ok(())
    });
    let first = engine
        .publish_with("sync", "first", After::NOW, keyed("k", KeyMode::Keep))
        .unwrap();
    engine.start();
    entered.wait();
    // Running: Keep sees the holder.
    let kept = engine
        .publish_with("sync", "x", After::NOW, keyed("k", KeyMode::Keep))
        .unwrap();
    assert_eq!((kept.id, kept.outcome), (first.id, KeyOutcome::Kept));
    // ReplaceBody on a running holder acts as Replace; the running attempt goes on and its
    // failure is not retried.
    let replaced = engine
        .publish_with(
            "sync",
            "second",
            After::NOW,
            keyed("k", KeyMode::ReplaceBody),
        )
        .unwrap();
    assert_eq!(replaced.outcome, KeyOutcome::Replaced(first.id));
    release.wait();
    assert!(engine.wait_idle(IDLE));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the holder ran once, the new event once"
    );
    engine.close().unwrap();
    assert_eq!(state(dir.path(), first.id), Some(EventState::Cancelled));
    assert_eq!(state(dir.path(), replaced.id), Some(EventState::Succeeded));
}

#[test]
fn replace_debounces_and_replace_body_keeps_the_due_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let (first, second, updated) = {
        let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
        let first = engine
            .publish_with("search.index", "v1", HOUR, keyed("doc-1", KeyMode::Replace))
            .unwrap();
        clock.advance(Duration::from_secs(60));
        let second = engine
            .publish_with("search.index", "v2", HOUR, keyed("doc-1", KeyMode::Replace))
            .unwrap();
        assert_eq!(second.outcome, KeyOutcome::Replaced(first.id));
        assert_eq!(engine.metrics().pending, 1);
        let updated = engine
            .publish_with("mail", "draft", HOUR, keyed("user-7", KeyMode::ReplaceBody))
            .unwrap();
        assert_eq!(updated.outcome, KeyOutcome::New);
        clock.advance(Duration::from_secs(60));
        let again = engine
            .publish_with(
                "mail",
                "final",
                Duration::from_secs(5),
                keyed("user-7", KeyMode::ReplaceBody),
            )
            .unwrap();
        assert_eq!((again.id, again.outcome), (updated.id, KeyOutcome::Updated));
        engine.close().unwrap();
        (first, second, updated)
    };
    // A restart keeps it all: the replaced event cancelled, the updated body in place.
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let index = record_bodies(&engine, "search.index");
    let mail = Arc::new(Mutex::new(Vec::new()));
    let m = mail.clone();
    let start = clock.now_ms();
    engine.on("mail", move |event, _| {
        m.lock().push((event.body().to_vec(), event.delay_ms()));
        Ok(())
    });
    // The replace-body publish finds the key held after the restart too.
    let third = engine
        .publish_with(
            "mail",
            "final-2",
            HOUR,
            keyed("user-7", KeyMode::ReplaceBody),
        )
        .unwrap();
    assert_eq!((third.id, third.outcome), (updated.id, KeyOutcome::Updated));
    engine.start();
    // The updated event is due an hour after its own publish, not the update's.
    clock.set(START_MS + 60_000 + 3_600_000 - 1);
    assert!(engine.wait_idle(IDLE));
    assert!(mail.lock().is_empty(), "due time kept, not moved: {start}");
    clock.set(START_MS + 60_000 + 3_600_000);
    assert!(engine.wait_idle(IDLE));
    assert_eq!(*mail.lock(), vec![(b"final-2".to_vec(), 3_600_000)]);
    clock.set(START_MS + 60_000 + 3_600_000 + 60_000);
    assert!(engine.wait_idle(IDLE));
    assert_eq!(*index.lock(), vec![b"v2".to_vec()]);
    engine.close().unwrap();
    assert_eq!(state(dir.path(), first.id), Some(EventState::Cancelled));
    assert_eq!(state(dir.path(), second.id), Some(EventState::Succeeded));
}

#[test]
fn a_key_window_keeps_the_key_after_the_event_finished_across_restart_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let day = Duration::from_secs(86_400);
    let windowed = || {
        PublishOptions::default()
            .key("charge-9", KeyMode::Keep)
            .key_window(day)
    };
    let first = {
        let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
        let seen = record_bodies(&engine, "charge");
        let first = engine
            .publish_with("charge", "once", After::NOW, windowed())
            .unwrap();
        engine.start();
        assert!(engine.wait_idle(IDLE));
        assert_eq!(seen.lock().len(), 1);
        // Finished, but inside its window: still taken.
        let again = engine
            .publish_with("charge", "twice", After::NOW, windowed())
            .unwrap();
        assert_eq!((again.id, again.outcome), (first.id, KeyOutcome::Kept));
        // Fill segments so compaction has something to rewrite, and compact everything.
        for i in 0..2_000 {
            engine
                .publish("filler", vec![b'x'; 100], After::NOW)
                .unwrap();
            if i % 500 == 0 {
                engine.compact_now().unwrap();
            }
        }
        assert!(engine.wait_idle(IDLE));
        engine.compact_now().unwrap();
        engine.close().unwrap();
        first
    };
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let again = engine
        .publish_with("charge", "after restart", After::NOW, windowed())
        .unwrap();
    assert_eq!((again.id, again.outcome), (first.id, KeyOutcome::Kept));
    clock.advance(day);
    let later = engine
        .publish_with("charge", "next day", After::NOW, windowed())
        .unwrap();
    assert_eq!(later.outcome, KeyOutcome::New);
    engine.close().unwrap();
}

#[test]
fn thirty_two_threads_on_one_key_write_exactly_one_event() {
    for mode in [KeyMode::Keep, KeyMode::ReplaceBody] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(START_MS);
        let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(32));
        let threads: Vec<_> = (0..32)
            .map(|i| {
                let (engine, barrier) = (engine.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    engine
                        .publish_with("once", format!("{i}"), HOUR, keyed("the-key", mode))
                        .unwrap()
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let new: Vec<_> = results
            .iter()
            .filter(|p| p.outcome == KeyOutcome::New)
            .collect();
        assert_eq!(new.len(), 1, "{mode:?}: {results:?}");
        assert!(results.iter().all(|p| p.id == new[0].id), "{mode:?}");
        assert_eq!(engine.metrics().pending, 1);
        engine.close().unwrap();
    }
}

#[test]
fn replace_from_many_threads_leaves_one_pending_event() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for j in 0..10 {
                    engine
                        .publish_with(
                            "debounce",
                            format!("{i}.{j}"),
                            HOUR,
                            keyed("k", KeyMode::Replace),
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let m = engine.metrics();
    assert_eq!((m.published, m.pending, m.cancelled), (320, 1, 319));
    engine.close().unwrap();
}

#[test]
fn bad_keys_and_windows_are_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let bad = [
        PublishOptions::default().key("", KeyMode::Keep),
        PublishOptions::default().key("k".repeat(256), KeyMode::Keep),
        PublishOptions::default().key_window(HOUR),
        PublishOptions::default()
            .key("k", KeyMode::Replace)
            .key_window(HOUR),
    ];
    for options in bad {
        assert!(
            engine
                .publish_with("n", "b", After::NOW, options.clone())
                .is_err(),
            "{options:?}"
        );
    }
    let ok = engine
        .publish_with(
            "n",
            "b",
            After::NOW,
            PublishOptions::default().key("k".repeat(255), KeyMode::Keep),
        )
        .unwrap();
    assert_eq!(ok.outcome, KeyOutcome::New);
    assert_eq!(engine.metrics().published, 1);
    engine.close().unwrap();
    let records = Reader::open(dir.path()).unwrap().summary().unwrap();
    assert_eq!(records.events.len(), 1);
}

#[test]
fn higher_priorities_go_first_and_equal_ones_keep_due_order() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock).workers(1)).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    for name in ["a", "b"] {
        let o = order.clone();
        engine.on(name, move |event, _| {
            o.lock()
                .push(String::from_utf8(event.body().to_vec()).unwrap());
            Ok(())
        });
    }
    // Due at different times, all due by the time delivery starts.
    let mut want = Vec::new();
    for (i, priority) in [0i8, 5, -3, 5, 0, 127, -128, 5].into_iter().enumerate() {
        let name = if i % 2 == 0 { "a" } else { "b" };
        let body = format!("{i}:{priority}");
        engine
            .publish_with(
                name,
                &body,
                Duration::from_millis(10 + i as u64),
                PublishOptions::default().priority(priority),
            )
            .unwrap();
        want.push((priority, i, body));
    }
    want.sort_by_key(|(p, i, _)| (std::cmp::Reverse(*p), *i));
    clock.advance(Duration::from_secs(1));
    engine.start();
    assert!(engine.wait_idle(IDLE));
    let want: Vec<String> = want.into_iter().map(|(_, _, b)| b).collect();
    assert_eq!(*order.lock(), want);
    engine.close().unwrap();
}

#[test]
fn a_concurrency_limit_bounds_attempts_of_its_name_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(
        dir.path(),
        options(&clock).workers(8).concurrency("limited", 2),
    )
    .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (running.clone(), most.clone());
    engine.on("limited", move |_, _| {
        let now = r.fetch_add(1, Ordering::SeqCst) + 1;
        m.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2));
        r.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    });
    let free = Arc::new(AtomicUsize::new(0));
    let f = free.clone();
    engine.on("free", move |_, _| {
        f.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    for _ in 0..40 {
        engine.publish("limited", "", After::NOW).unwrap();
        engine.publish("free", "", After::NOW).unwrap();
    }
    engine.start();
    assert!(engine.wait_idle(IDLE));
    assert_eq!(most.load(Ordering::SeqCst), 2);
    assert_eq!(free.load(Ordering::SeqCst), 40);
    assert_eq!(engine.metrics().acked, 80);
    engine.close().unwrap();
    assert!(
        Engine::open_with(dir.path(), options(&clock).concurrency("x", 0)).is_err(),
        "a zero limit is refused"
    );
}

#[test]
fn a_rate_limit_starts_at_most_its_tokens_on_the_engine_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(
        dir.path(),
        options(&clock).rate_limit("email", 10, Duration::from_secs(1)),
    )
    .unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let s = sent.clone();
    engine.on("email", move |_, _| {
        s.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    for _ in 0..100 {
        engine.publish("email", "", After::NOW).unwrap();
    }
    engine.start();
    // A full bucket: a burst of 10, then one every 100 ms. Settled: nothing in flight and
    // the rest waiting in the queue for tokens.
    let settle = |queued: u64| {
        let m = |e: &Engine| {
            let m = e.metrics();
            (m.in_flight, m.queued)
        };
        while m(&engine) != (0, queued) {
            std::thread::yield_now();
        }
    };
    settle(90);
    assert_eq!(sent.load(Ordering::SeqCst), 10, "{:?}", engine.metrics());
    clock.advance(Duration::from_millis(99));
    settle(90);
    assert_eq!(sent.load(Ordering::SeqCst), 10);
    clock.advance(Duration::from_millis(1));
    settle(89);
    assert_eq!(sent.load(Ordering::SeqCst), 11);
    // A token per 100 ms: 89 steps send the rest, one each.
    for left in (0..89).rev() {
        clock.advance(Duration::from_millis(100));
        settle(left);
    }
    assert_eq!(sent.load(Ordering::SeqCst), 100);
    // Idle now, the bucket refills: a quiet second later, a burst of 10 again.
    clock.advance(Duration::from_secs(1));
    for _ in 0..30 {
        engine.publish("email", "", After::NOW).unwrap();
    }
    settle(20);
    assert_eq!(sent.load(Ordering::SeqCst), 110);
    for left in (0..20).rev() {
        clock.advance(Duration::from_millis(100));
        settle(left);
    }
    assert!(engine.wait_idle(IDLE));
    assert_eq!(sent.load(Ordering::SeqCst), 130);
    engine.close().unwrap();
}

#[test]
fn pause_is_durable_and_resume_delivers_what_waited() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    {
        let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
        let seen = record_bodies(&engine, "report");
        let other = record_bodies(&engine, "other");
        engine.pause("report").unwrap();
        engine.pause("report").unwrap();
        assert_eq!(engine.paused(), vec!["report".to_string()]);
        engine.publish("report", "1", After::NOW).unwrap();
        engine.publish("other", "1", After::NOW).unwrap();
        engine.start();
        assert!(
            engine.wait_idle(IDLE),
            "a paused name's due events do not count as work"
        );
        assert!(seen.lock().is_empty());
        assert_eq!(other.lock().len(), 1);
        assert_eq!(engine.metrics().pending, 1);
        engine.close().unwrap();
    }
    assert_eq!(
        Reader::open(dir.path())
            .unwrap()
            .summary()
            .unwrap()
            .records_by_kind
            .iter()
            .find(|(k, _)| *k == "pause")
            .map(|(_, n)| *n),
        Some(1),
        "pausing a paused name writes nothing"
    );
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    assert_eq!(engine.paused(), vec!["report".to_string()]);
    let seen = record_bodies(&engine, "report");
    engine.start();
    clock.advance(Duration::from_secs(5));
    assert!(engine.wait_idle(IDLE));
    assert!(seen.lock().is_empty(), "still paused after the restart");
    engine.resume("report").unwrap();
    assert!(engine.wait_idle(IDLE));
    assert_eq!(*seen.lock(), vec![b"1".to_vec()]);
    assert!(engine.paused().is_empty());
    engine.close().unwrap();
}

#[test]
fn a_paused_name_keeps_its_retention() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock).retention(HOUR)).unwrap();
    let seen = record_bodies(&engine, "report");
    engine.pause("report").unwrap();
    let id = engine.publish("report", "old", After::NOW).unwrap();
    engine.start();
    clock.advance(HOUR + Duration::from_secs(120));
    for _ in 0..500 {
        if engine.metrics().expired == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
        clock.advance(Duration::from_millis(100));
    }
    assert!(engine.wait_idle(IDLE));
    assert_eq!(engine.metrics().expired, 1);
    engine.resume("report").unwrap();
    assert!(engine.wait_idle(IDLE));
    assert!(seen.lock().is_empty());
    engine.close().unwrap();
    assert_eq!(state(dir.path(), id), Some(EventState::Expired));
}

#[test]
fn a_holder_restated_while_its_name_is_paused_expires_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock).retention(HOUR)).unwrap();
    let seen = record_bodies(&engine, "report");
    engine.start();
    let key = keyed("k", KeyMode::ReplaceBody);
    let held = engine
        .publish_with("report", "old", Duration::from_secs(60), key.clone())
        .unwrap();
    engine.pause("report").unwrap();
    clock.advance(Duration::from_secs(120));
    assert!(engine.wait_idle(IDLE));
    // Due and queued behind the pause: claimed out of its queue, restated, queued again.
    let restated = engine
        .publish_with("report", "new", After::NOW, key)
        .unwrap();
    assert_eq!(
        (restated.id, restated.outcome),
        (held.id, KeyOutcome::Updated)
    );
    clock.advance(HOUR + Duration::from_secs(120));
    assert!(engine.wait_idle(IDLE));
    engine.resume("report").unwrap();
    assert!(engine.wait_idle(IDLE));
    assert!(seen.lock().is_empty());
    engine.close().unwrap();
    assert_eq!(state(dir.path(), held.id), Some(EventState::Expired));
}

#[test]
fn a_reader_sees_the_restated_body() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let key = keyed("k", KeyMode::ReplaceBody);
    let held = engine
        .publish_with("report", "old", HOUR, key.clone())
        .unwrap();
    let restated = engine
        .publish_with("report", "a longer body", HOUR, key)
        .unwrap();
    assert_eq!(restated.outcome, KeyOutcome::Updated);
    engine.close().unwrap();
    let rows = Reader::open(dir.path()).unwrap().events().unwrap();
    let row = rows.iter().find(|r| r.id == held.id).unwrap();
    assert_eq!(row.body_bytes, "a longer body".len() as u64);
}

#[test]
fn pause_survives_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    {
        let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
        engine.on("filler", |_, _| Ok(()));
        engine.pause("a").unwrap();
        engine.pause("b").unwrap();
        engine.resume("a").unwrap();
        engine.start();
        for _ in 0..3_000 {
            engine
                .publish("filler", vec![b'x'; 100], After::NOW)
                .unwrap();
        }
        assert!(engine.wait_idle(IDLE));
        engine.compact_now().unwrap();
        engine.compact_now().unwrap();
        engine.close().unwrap();
    }
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    assert_eq!(engine.paused(), vec!["b".to_string()]);
    engine.close().unwrap();
}
