//! One test per behaviour the two product requirements (Ampt events, Forge queues) ask for,
//! driven end to end on the manual clock. Time passes only through `clock.advance`/`set`;
//! `wait_idle` (with a generous real-time limit) is the point where the engine has caught up.

use afterlog::format::Record;
use afterlog::log::Log;
use afterlog::storage::FsStorage;
use afterlog::{
    After, Engine, Error, EventId, HandlerError, HandlerOptions, JobStats, ManualClock, Options,
    RetryContext, RetryOptions, RetryPolicy, RetryReason,
};
use chrono::{TimeZone, Utc};
use parking_lot::{Condvar, Mutex};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 2023-11-14T22:13:20Z.
const START_MS: i64 = 1_700_000_000_000;
const SECOND_MS: i64 = 1_000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Real time allowed for the engine to catch up after each step.
const IDLE: Duration = Duration::from_secs(20);
const FORGE: &str = "forge.queue";

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .segment_bytes(1 << 20)
}

fn open(dir: &Path, clock: &ManualClock) -> Engine {
    Engine::open_with(dir, options(clock)).unwrap()
}

/// An engine where `FORGE` (and any name in `more`) has Forge's queue policy.
fn open_forge(dir: &Path, clock: &ManualClock, more: &[&str]) -> Engine {
    let mut options = options(clock).policy(FORGE, RetryPolicy::forge());
    for name in more {
        options = options.policy(*name, RetryPolicy::forge());
    }
    Engine::open_with(dir, options).unwrap()
}

fn settle(engine: &Engine) {
    assert!(engine.wait_idle(IDLE), "engine did not become idle");
}

fn advance(clock: &ManualClock, engine: &Engine, by: Duration) {
    clock.advance(by);
    settle(engine);
}

fn advance_ms(clock: &ManualClock, engine: &Engine, by_ms: i64) {
    clock.advance_ms(by_ms);
    settle(engine);
}

/// How many events the publish records in `dir` hold, read without an engine.
fn published_on_disk(dir: &Path) -> usize {
    let storage = FsStorage::new(dir).unwrap();
    let mut events = 0;
    Log::scan(&storage, |_, record| {
        if let Record::Publish(p) = record {
            events += p.events().count();
        }
        Ok(())
    })
    .unwrap();
    events
}

/// What one handler saw on one call.
#[derive(Clone, Debug, PartialEq)]
struct Call {
    handler: &'static str,
    id: EventId,
    body: Vec<u8>,
    attempt: u32,
    time_ms: i64,
    delay_ms: i64,
    retry: Option<RetryContext>,
    now_ms: i64,
}

type Calls = Arc<Mutex<Vec<Call>>>;

fn record(calls: &Calls, handler: &'static str, event: &afterlog::Event, clock: &ManualClock) {
    calls.lock().push(Call {
        handler,
        id: event.id(),
        body: event.body().to_vec(),
        attempt: event.attempt(),
        time_ms: event.time_ms(),
        delay_ms: event.delay_ms(),
        retry: event.retry_context().cloned(),
        now_ms: clock.now_ms(),
    });
}

fn attempts(calls: &Calls) -> Vec<u32> {
    calls.lock().iter().map(|c| c.attempt).collect()
}

fn stats(success: u64, in_progress: u64, failed: u64, cancelled: u64) -> JobStats {
    JobStats {
        success,
        in_progress,
        failed,
        cancelled,
    }
}

// ---------------------------------------------------------------------------------------
// `after`

#[test]
fn every_after_form_is_delivered_at_its_due_time_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open(dir.path(), &clock);
    let calls: Calls = Arc::default();
    let (c, k) = (calls.clone(), clock.clone());
    engine.on("when", move |event, _| {
        record(&c, "when", event, &k);
        Ok(())
    });
    let at = Utc.timestamp_millis_opt(START_MS + 15 * SECOND_MS).unwrap();
    let forms: Vec<(&str, After, i64)> = vec![
        ("now", After::NOW, 0),
        ("ms", After::ms(1_500), 1_500),
        ("ms text", After::parse("7000").unwrap(), 7_000),
        (
            "duration",
            After::delay(Duration::from_millis(2_500)),
            2_500,
        ),
        ("epoch", After::epoch_ms(START_MS + 3_000), 3_000),
        (
            "epoch text",
            After::parse("1700000005000").unwrap(),
            5 * SECOND_MS,
        ),
        (
            "rfc3339",
            After::parse("2023-11-14T22:13:30.000Z").unwrap(),
            10 * SECOND_MS,
        ),
        (
            "rfc3339 offset",
            After::parse("2023-11-14T23:13:32+01:00").unwrap(),
            12 * SECOND_MS,
        ),
        ("datetime", After::at(at), 15 * SECOND_MS),
        ("datetime into", at.into(), 15 * SECOND_MS),
        ("1 second", After::parse("1 second").unwrap(), SECOND_MS),
        (
            "2 seconds",
            After::parse("2 seconds").unwrap(),
            2 * SECOND_MS,
        ),
        ("1 minute", After::parse("1 minute").unwrap(), MINUTE_MS),
        (
            "3 minutes",
            After::parse("3 minutes").unwrap(),
            3 * MINUTE_MS,
        ),
        ("1 hour", After::parse("1 hour").unwrap(), HOUR_MS),
        ("2 hours", After::parse("2 hours").unwrap(), 2 * HOUR_MS),
        ("1 day", After::parse("1 day").unwrap(), DAY_MS),
        ("1 days", After::parse("1 days").unwrap(), DAY_MS),
        ("2 days", After::parse("2 days").unwrap(), 2 * DAY_MS),
        ("1 week", After::parse("1 week").unwrap(), 7 * DAY_MS),
        ("2 weeks", After::parse("2 weeks").unwrap(), 14 * DAY_MS),
    ];
    let mut due = Vec::new();
    for (label, after, delay_ms) in forms {
        let id = engine.publish("when", label, after).unwrap();
        due.push((START_MS + delay_ms, id, label, delay_ms));
    }
    assert_eq!(engine.metrics().published, due.len() as u64);
    engine.start();
    settle(&engine);
    due.sort_by_key(|d| d.0);
    for (due_ms, id, label, delay_ms) in due {
        if due_ms > clock.now_ms() {
            clock.set(due_ms - 1);
            settle(&engine);
            assert!(
                calls.lock().iter().all(|c| c.id != id),
                "{label} delivered before {due_ms}"
            );
            clock.set(due_ms);
            settle(&engine);
        }
        let seen: Vec<Call> = calls
            .lock()
            .iter()
            .filter(|c| c.id == id)
            .cloned()
            .collect();
        assert_eq!(seen.len(), 1, "{label}: {seen:?}");
        assert_eq!(seen[0].now_ms, due_ms, "{label} delivered late");
        assert_eq!(seen[0].time_ms, START_MS, "{label}");
        assert_eq!(seen[0].delay_ms, delay_ms, "{label}");
        assert_eq!(seen[0].body, label.as_bytes());
    }
    engine.close().unwrap();
}

#[test]
fn months_and_years_are_calendar_months_in_utc() {
    let dir = tempfile::tempdir().unwrap();
    let start = Utc.with_ymd_and_hms(2024, 1, 31, 12, 0, 0).unwrap();
    let clock = ManualClock::new(start.timestamp_millis());
    let engine = open(dir.path(), &clock);
    let calls: Calls = Arc::default();
    let (c, k) = (calls.clone(), clock.clone());
    engine.on("cal", move |event, _| {
        record(&c, "cal", event, &k);
        Ok(())
    });
    let ymd = |y, m, d| {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0)
            .unwrap()
            .timestamp_millis()
    };
    // January 31 plus a month is the last day of February (2024 is a leap year).
    let cases = [
        ("1 month", ymd(2024, 2, 29)),
        ("1 months", ymd(2024, 2, 29)),
        ("2 months", ymd(2024, 3, 31)),
        ("3 months", ymd(2024, 4, 30)),
        ("11 months", ymd(2024, 12, 31)),
        ("12 months", ymd(2025, 1, 31)),
        ("1 year", ymd(2025, 1, 31)),
        ("1 years", ymd(2025, 1, 31)),
    ];
    let mut due = Vec::new();
    for (text, due_ms) in cases {
        let id = engine
            .publish("cal", text, After::parse(text).unwrap())
            .unwrap();
        due.push((due_ms, id, text));
    }
    engine.start();
    settle(&engine);
    for (due_ms, id, text) in due {
        if due_ms > clock.now_ms() {
            clock.set(due_ms - 1);
            settle(&engine);
            assert!(calls.lock().iter().all(|c| c.id != id), "{text} early");
            clock.set(due_ms);
            settle(&engine);
        }
        let seen: Vec<Call> = calls
            .lock()
            .iter()
            .filter(|c| c.id == id)
            .cloned()
            .collect();
        assert_eq!(seen.len(), 1, "{text}");
        assert_eq!(seen[0].now_ms, due_ms, "{text}");
        assert_eq!(
            seen[0].delay_ms,
            due_ms - start.timestamp_millis(),
            "{text}"
        );
    }
    engine.close().unwrap();
}

#[test]
fn a_bad_after_is_an_error_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    {
        let engine = open(dir.path(), &clock);
        engine.on("bad", |_, _| Ok(()));
        engine.start();
        // Refused by the parser already.
        for text in [
            "0",
            "0 days",
            "-1 day",
            "-5",
            "0 months",
            "",
            "soon",
            "1 fortnight",
        ] {
            assert!(After::parse(text).is_err(), "{text:?} parsed");
        }
        let past = Utc.timestamp_millis_opt(START_MS - 1).unwrap();
        let far = Utc.timestamp_millis_opt(START_MS + 400 * DAY_MS).unwrap();
        let refused: Vec<(&str, After)> = vec![
            ("zero ms", After::ms(0)),
            ("zero duration", After::delay(Duration::ZERO)),
            ("epoch now", After::epoch_ms(START_MS)),
            ("epoch past", After::epoch_ms(START_MS - 1)),
            ("epoch negative", After::epoch_ms(-5)),
            (
                "rfc3339 past",
                After::parse("2023-11-14T22:13:19Z").unwrap(),
            ),
            ("datetime past", After::at(past)),
            ("367 days in ms", After::ms(367 * DAY_MS as u64)),
            ("367 days", After::parse("367 days").unwrap()),
            ("13 months", After::parse("13 months").unwrap()),
            ("2 years", After::parse("2 years").unwrap()),
            ("epoch far", After::epoch_ms(START_MS + 400 * DAY_MS)),
            ("rfc3339 far", After::parse("2025-01-01T00:00:00Z").unwrap()),
            ("datetime far", After::at(far)),
        ];
        for (label, after) in refused {
            let err = engine.publish("bad", label, after).unwrap_err();
            assert!(matches!(err, Error::InvalidInput { .. }), "{label}: {err}");
        }
        // The bound itself is allowed: one calendar year (366 days across February 2024).
        assert!(
            engine
                .publish("bad", "edge", After::ms(366 * DAY_MS as u64))
                .is_ok()
        );
        assert!(
            engine
                .publish("bad", "edge", After::ms(366 * DAY_MS as u64 + 1))
                .is_err()
        );
        settle(&engine);
        let m = engine.metrics();
        assert_eq!((m.published, m.delivered, m.pending), (1, 0, 1));
        engine.close().unwrap();
    }
    assert_eq!(published_on_disk(dir.path()), 1);
    let engine = open(dir.path(), &clock);
    let calls: Calls = Arc::default();
    let (c, k) = (calls.clone(), clock.clone());
    engine.on("bad", move |event, _| {
        record(&c, "bad", event, &k);
        Ok(())
    });
    engine.start();
    assert_eq!(
        engine.metrics().pending,
        1,
        "only the valid event recovered"
    );
    advance_ms(&clock, &engine, 366 * DAY_MS);
    let calls = calls.lock();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body, b"edge");
}

// ---------------------------------------------------------------------------------------
// Limits

#[test]
fn limits_are_refused_and_nothing_partial_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let limit = |r: afterlog::Result<_>| match r {
        Err(Error::LimitExceeded { .. }) => {}
        other => panic!("expected a limit error, got {other:?}"),
    };
    let invalid = |r: afterlog::Result<_>| match r {
        Err(Error::InvalidInput { .. }) => {}
        other => panic!("expected an invalid-input error, got {other:?}"),
    };
    let mut accepted = 0;
    {
        let engine = open_forge(dir.path(), &clock, &[]);
        // Body plus metadata must stay under 256 KB.
        limit(
            engine
                .publish("big", vec![0u8; 256 * 1024], After::NOW)
                .map(|_| ()),
        );
        limit(
            engine
                .publish("big", vec![0u8; 300 * 1024], After::NOW)
                .map(|_| ()),
        );
        engine
            .publish("big", vec![0u8; 250 * 1024], After::NOW)
            .unwrap();
        accepted += 1;
        // Names are 1 to 255 bytes of UTF-8.
        invalid(engine.publish("", b"x", After::NOW).map(|_| ()));
        limit(
            engine
                .publish(&"n".repeat(256), b"x", After::NOW)
                .map(|_| ()),
        );
        limit(
            engine
                .publish(&"é".repeat(128), b"x", After::NOW)
                .map(|_| ()),
        );
        invalid(engine.push("", ["x"], Duration::from_secs(1)).map(|_| ()));
        engine.publish(&"n".repeat(255), b"x", After::NOW).unwrap();
        accepted += 1;
        // A push holds at most 50 events and 200 KB.
        let bodies: Vec<String> = (0..51).map(|i| format!("e{i}")).collect();
        limit(
            engine
                .push("q", &bodies, Duration::from_secs(1))
                .map(|_| ()),
        );
        engine
            .push("q", &bodies[..50], Duration::from_secs(1))
            .unwrap();
        accepted += 50;
        let half = vec![0u8; 100 * 1024];
        limit(
            engine
                .push("q", [&half[..], &half[..], b"1"], Duration::from_secs(1))
                .map(|_| ()),
        );
        engine
            .push("q", [&half[..], &half[..]], Duration::from_secs(1))
            .unwrap();
        accepted += 2;
        invalid(
            engine
                .push("q", Vec::<&[u8]>::new(), Duration::from_secs(1))
                .map(|_| ()),
        );
        // A Forge queue delays at most 900 s; other names up to a year.
        invalid(
            engine
                .push(FORGE, ["x"], Duration::from_secs(901))
                .map(|_| ()),
        );
        invalid(
            engine
                .push(FORGE, ["x"], Duration::from_secs(2_000))
                .map(|_| ()),
        );
        engine.push(FORGE, ["x"], Duration::from_secs(900)).unwrap();
        engine.push("q", ["x"], Duration::from_secs(901)).unwrap();
        accepted += 2;
        invalid(
            engine
                .push("q", ["x"], Duration::from_secs(367 * 86_400))
                .map(|_| ()),
        );
        let m = engine.metrics();
        assert_eq!(m.published, accepted);
        assert_eq!(m.pending, accepted);
        engine.close().unwrap();
    }
    assert_eq!(published_on_disk(dir.path()) as u64, accepted);
    let engine = open(dir.path(), &clock);
    assert_eq!(engine.metrics().pending, accepted);
}

// ---------------------------------------------------------------------------------------
// Handlers

#[test]
fn several_handlers_run_in_order_with_the_same_view_on_every_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open_forge(dir.path(), &clock, &[]);
    let calls: Calls = Arc::default();
    for (i, name) in ["first", "second", "third"].into_iter().enumerate() {
        for queue in [FORGE, "plain"] {
            let (c, k) = (calls.clone(), clock.clone());
            engine.on(queue, move |event, _| {
                record(&c, name, event, &k);
                // The second handler fails the first two attempts; the others succeed.
                if i == 1 && event.attempt() <= 2 {
                    if event.name() == FORGE {
                        return Err(HandlerError::retry(RetryOptions {
                            retry_after: Duration::from_secs(10),
                            reason: RetryReason::RetryRequest,
                            data: format!("try {}", event.attempt()).into_bytes(),
                        }));
                    }
                    return Err(HandlerError::msg("second handler failed"));
                }
                Ok(())
            });
        }
    }
    let forge = engine.publish(FORGE, b"f", After::ms(5_000)).unwrap();
    let plain = engine.publish("plain", b"p", After::ms(5_000)).unwrap();
    engine.start();
    advance_ms(&clock, &engine, 5_000);
    advance_ms(&clock, &engine, 10_000);
    advance_ms(&clock, &engine, 10_000);
    clock.set(START_MS + 5_000 + 6 * MINUTE_MS);
    settle(&engine);
    clock.set(START_MS + 5_000 + 12 * MINUTE_MS);
    settle(&engine);
    let calls = calls.lock().clone();
    for (id, retries) in [(forge, true), (plain, false)] {
        let mine: Vec<&Call> = calls.iter().filter(|c| c.id == id).collect();
        assert_eq!(mine.len(), 9, "three attempts of three handlers: {mine:#?}");
        for (attempt, group) in mine.chunks(3).enumerate() {
            let attempt = attempt as u32 + 1;
            let names: Vec<&str> = group.iter().map(|c| c.handler).collect();
            assert_eq!(names, ["first", "second", "third"], "registration order");
            for c in group {
                assert_eq!(c.attempt, attempt);
                assert_eq!(c.time_ms, START_MS);
                assert_eq!(c.delay_ms, 5_000);
                assert_eq!(c.retry, group[0].retry);
                assert_eq!(c.now_ms, group[0].now_ms);
            }
            let expected = (retries && attempt > 1).then(|| RetryContext {
                retry_count: attempt - 1,
                retry_reason: RetryReason::RetryRequest,
                retry_data: format!("try {}", attempt - 1).into_bytes(),
            });
            assert_eq!(group[0].retry, expected, "attempt {attempt}");
        }
        // Forge retries after the requested 10 s; the default policy after 6 minutes.
        let times: Vec<i64> = mine
            .iter()
            .step_by(3)
            .map(|c| c.now_ms - START_MS)
            .collect();
        if retries {
            assert_eq!(times, [5_000, 15_000, 25_000]);
        } else {
            assert_eq!(
                times,
                [5_000, 5_000 + 6 * MINUTE_MS, 5_000 + 12 * MINUTE_MS]
            );
        }
    }
    let m = engine.metrics();
    assert_eq!((m.acked, m.retried, m.pending), (2, 4, 0));
    engine.close().unwrap();
}

#[test]
fn a_handler_that_gives_up_after_three_attempts_discards_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open(dir.path(), &clock);
    let calls: Calls = Arc::default();
    let (c, k) = (calls.clone(), clock.clone());
    engine.on_with(
        "user.joined",
        HandlerOptions::default().timeout(Duration::from_secs(10)),
        move |event, _| {
            record(&c, "h", event, &k);
            let sent: Result<(), HandlerError> = Err(HandlerError::msg("mail server down"));
            match sent {
                Err(e) if event.attempt() < 3 => Err(e),
                // Give up after three attempts: return successfully.
                _ => Ok(()),
            }
        },
    );
    engine.publish("user.joined", b"{}", After::NOW).unwrap();
    engine.start();
    settle(&engine);
    for _ in 0..5 {
        advance(&clock, &engine, Duration::from_secs(360));
    }
    assert_eq!(attempts(&calls), [1, 2, 3]);
    let times: Vec<i64> = calls.lock().iter().map(|c| c.now_ms - START_MS).collect();
    assert_eq!(times, [0, 6 * MINUTE_MS, 12 * MINUTE_MS]);
    let m = engine.metrics();
    assert_eq!((m.retried, m.acked, m.dropped, m.pending), (2, 1, 0, 0));
    engine.close().unwrap();
}

#[test]
fn a_handler_that_gives_up_after_five_hours_discards_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open(dir.path(), &clock);
    let calls: Calls = Arc::default();
    let (c, k) = (calls.clone(), clock.clone());
    engine.on("user.joined", move |event, _| {
        record(&c, "h", event, &k);
        // Age including the delay: now - time.
        if k.now_ms() - event.time_ms() < 5 * HOUR_MS {
            return Err(HandlerError::msg("mail server down"));
        }
        Ok(())
    });
    engine.publish("user.joined", b"{}", After::NOW).unwrap();
    engine.start();
    settle(&engine);
    for _ in 0..55 {
        advance(&clock, &engine, Duration::from_secs(360));
    }
    let calls = calls.lock();
    // Attempts every 6 minutes: the 51st is the first at five hours.
    assert_eq!(calls.len(), 51);
    assert_eq!(calls.last().unwrap().now_ms - START_MS, 5 * HOUR_MS);
    let m = engine.metrics();
    assert_eq!((m.retried, m.acked, m.pending), (50, 1, 0));
}

/// A handler on a Forge queue that advances the clock by `run` on its first attempt (after
/// `setup`) and by `second_run` on the second; returns the attempts and their retry reasons.
fn timeout_case(
    options: HandlerOptions,
    set_timeout: Option<Duration>,
    first_run: Duration,
    second_run: Duration,
) -> Vec<(u32, Option<RetryReason>)> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open_forge(dir.path(), &clock, &[]);
    let calls: Calls = Arc::default();
    let (c, k) = (calls.clone(), clock.clone());
    engine.on_with(FORGE, options, move |event, ctx| {
        record(&c, "h", event, &k);
        if let Some(t) = set_timeout {
            ctx.set_timeout(t);
        }
        k.advance(if event.attempt() == 1 {
            first_run
        } else {
            second_run
        });
        Ok(())
    });
    engine.publish(FORGE, b"t", After::NOW).unwrap();
    engine.start();
    settle(&engine);
    // Forge retries a platform failure after one minute.
    advance(&clock, &engine, Duration::from_secs(60));
    advance(&clock, &engine, Duration::from_secs(60));
    let seen = calls
        .lock()
        .iter()
        .map(|c| (c.attempt, c.retry.as_ref().map(|r| r.retry_reason)))
        .collect();
    assert_eq!(engine.metrics().pending, 0);
    engine.close().unwrap();
    seen
}

#[test]
fn handler_timeouts_default_option_set_timeout_and_the_sixty_second_cap() {
    let secs = Duration::from_secs;
    let timed_out_once = vec![(1, None), (2, Some(RetryReason::TimeOut))];
    let ok_first = vec![(1, None)];
    let default = HandlerOptions::default();
    // Default 5 s.
    assert_eq!(timeout_case(default, None, secs(5), secs(0)), ok_first);
    assert_eq!(
        timeout_case(default, None, secs(6), secs(4)),
        timed_out_once
    );
    // HandlerOptions::timeout.
    let ten = HandlerOptions::default().timeout(secs(10));
    assert_eq!(timeout_case(ten, None, secs(9), secs(0)), ok_first);
    assert_eq!(timeout_case(ten, None, secs(11), secs(9)), timed_out_once);
    // Context::set_timeout, counted from the handler's start; it may also shorten.
    assert_eq!(
        timeout_case(default, Some(secs(20)), secs(19), secs(0)),
        ok_first
    );
    assert_eq!(
        timeout_case(default, Some(secs(20)), secs(21), secs(19)),
        timed_out_once
    );
    assert_eq!(
        timeout_case(ten, Some(secs(2)), secs(3), secs(1)),
        timed_out_once
    );
    // 120 s is lowered to 60 s, both ways.
    let long = HandlerOptions::default().timeout(secs(120));
    assert_eq!(timeout_case(long, None, secs(59), secs(0)), ok_first);
    assert_eq!(timeout_case(long, None, secs(61), secs(60)), timed_out_once);
    assert_eq!(
        timeout_case(default, Some(secs(120)), secs(61), secs(59)),
        timed_out_once
    );
}

#[test]
fn a_timeout_on_the_default_policy_is_retried_six_minutes_later() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open(dir.path(), &clock);
    let calls: Calls = Arc::default();
    let (c, k) = (calls.clone(), clock.clone());
    engine.on("slow", move |event, _| {
        record(&c, "h", event, &k);
        if event.attempt() == 1 {
            k.advance(Duration::from_secs(6));
        }
        Ok(())
    });
    engine.publish("slow", b"x", After::NOW).unwrap();
    engine.start();
    settle(&engine);
    advance_ms(&clock, &engine, 6 * MINUTE_MS - 1);
    assert_eq!(attempts(&calls), [1]);
    advance_ms(&clock, &engine, 1);
    assert_eq!(attempts(&calls), [1, 2]);
    let calls = calls.lock();
    assert_eq!(
        calls[1].now_ms - calls[0].now_ms,
        6 * SECOND_MS + 6 * MINUTE_MS
    );
    // A platform failure carries its reason to the next attempt on every policy.
    assert_eq!(
        calls[1]
            .retry
            .as_ref()
            .map(|r| (r.retry_count, r.retry_reason)),
        Some((1, RetryReason::TimeOut))
    );
    let m = engine.metrics();
    assert_eq!((m.timed_out, m.retried, m.acked), (1, 1, 1));
}

/// A gate a blocked handler waits on (in real time, bounded so a failing test cannot hang).
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        let until = Instant::now() + Duration::from_secs(30);
        let mut open = self.open.lock();
        while !*open && Instant::now() < until {
            self.opened.wait_until(&mut open, until);
        }
    }

    fn open(&self) {
        *self.open.lock() = true;
        self.opened.notify_all();
    }
}

#[test]
fn a_timed_out_handler_is_abandoned_its_late_result_ignored_and_its_worker_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock).workers(1)).unwrap();
    let calls: Calls = Arc::default();
    let gate = Arc::new(Gate::default());
    let returned = Arc::new(Mutex::new(false));
    {
        let (c, k, g, r) = (calls.clone(), clock.clone(), gate.clone(), returned.clone());
        engine.on("stuck", move |event, _| {
            record(&c, "stuck", event, &k);
            if event.attempt() == 1 {
                // Run past the 5 s timeout and stay stuck until the test lets go.
                k.advance(Duration::from_secs(6));
                g.wait();
                *r.lock() = true;
            }
            Ok(())
        });
        let (c, k) = (calls.clone(), clock.clone());
        engine.on("next", move |event, _| {
            record(&c, "next", event, &k);
            Ok(())
        });
    }
    let stuck = engine.publish("stuck", b"s", After::NOW).unwrap();
    engine.start();
    // The watchdog fails the attempt while the handler is still blocked.
    settle(&engine);
    let m = engine.metrics();
    assert_eq!((m.timed_out, m.workers_replaced, m.retried), (1, 1, 1));
    assert!(!*returned.lock());
    // The only worker is stuck, yet later events are delivered: it was replaced.
    let next = engine.publish("next", b"n", After::NOW).unwrap();
    settle(&engine);
    assert!(calls.lock().iter().any(|c| c.id == next));
    // The late Ok is ignored: the event is still due for a retry.
    gate.open();
    let until = Instant::now() + IDLE;
    while !*returned.lock() && Instant::now() < until {
        std::thread::yield_now();
    }
    assert!(*returned.lock());
    settle(&engine);
    let m = engine.metrics();
    assert_eq!((m.acked, m.pending), (1, 1));
    advance(&clock, &engine, Duration::from_secs(6 * 60));
    let stuck_attempts: Vec<u32> = calls
        .lock()
        .iter()
        .filter(|c| c.id == stuck)
        .map(|c| c.attempt)
        .collect();
    assert_eq!(stuck_attempts, [1, 2]);
    let m = engine.metrics();
    assert_eq!((m.acked, m.pending, m.workers_replaced), (2, 0, 1));
    engine.close().unwrap();
}

#[test]
fn a_panicking_handler_fails_the_attempt_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open_forge(dir.path(), &clock, &[]);
    let calls: Calls = Arc::default();
    for queue in [FORGE, "plain"] {
        let (c, k) = (calls.clone(), clock.clone());
        engine.on(queue, move |event, _| {
            record(&c, "panics", event, &k);
            if event.attempt() == 1 {
                panic!("handler bug");
            }
            Ok(())
        });
        let (c, k) = (calls.clone(), clock.clone());
        engine.on(queue, move |event, _| {
            record(&c, "after", event, &k);
            Ok(())
        });
    }
    let forge = engine.publish(FORGE, b"f", After::NOW).unwrap();
    let plain = engine.publish("plain", b"p", After::NOW).unwrap();
    engine.start();
    settle(&engine);
    assert_eq!(engine.metrics().panicked, 2);
    advance(&clock, &engine, Duration::from_secs(60));
    advance(&clock, &engine, Duration::from_secs(300));
    let calls = calls.lock().clone();
    let of = |id| -> Vec<(&'static str, u32, Option<RetryContext>)> {
        calls
            .iter()
            .filter(|c| c.id == id)
            .map(|c| (c.handler, c.attempt, c.retry.clone()))
            .collect()
    };
    let ctx = Some(RetryContext {
        retry_count: 1,
        retry_reason: RetryReason::PlatformUnknownError,
        retry_data: Vec::new(),
    });
    assert_eq!(
        of(forge),
        [
            ("panics", 1, None),
            ("after", 1, None),
            ("panics", 2, ctx.clone()),
            ("after", 2, ctx.clone())
        ]
    );
    // A platform failure carries its reason to the next attempt on every policy.
    assert_eq!(
        of(plain),
        [
            ("panics", 1, None),
            ("after", 1, None),
            ("panics", 2, ctx.clone()),
            ("after", 2, ctx)
        ]
    );
    let m = engine.metrics();
    assert_eq!((m.panicked, m.acked, m.pending), (2, 2, 0));
    engine.close().unwrap();
}

// ---------------------------------------------------------------------------------------
// Forge

#[test]
fn forge_retry_requests_are_clamped_carry_their_context_and_stop_after_four_retries() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open_forge(dir.path(), &clock, &[]);
    let calls: Calls = Arc::default();
    let (c, k) = (calls.clone(), clock.clone());
    engine.on(FORGE, move |event, _| {
        record(&c, "h", event, &k);
        let (retry_after, reason) = if event.attempt() == 1 {
            (Duration::from_secs(2_000), RetryReason::UpstreamRateLimited)
        } else {
            (Duration::from_secs(30), RetryReason::RetryRequest)
        };
        Err(HandlerError::retry(RetryOptions {
            retry_after,
            reason,
            data: format!("userName=john;{}", event.attempt()).into_bytes(),
        }))
    });
    let job = engine
        .push(FORGE, ["hello"], Duration::from_secs(5))
        .unwrap();
    engine.start();
    advance(&clock, &engine, Duration::from_secs(5));
    assert_eq!(attempts(&calls), [1]);
    // 2000 s is lowered to 900 s.
    advance(&clock, &engine, Duration::from_secs(899));
    assert_eq!(attempts(&calls), [1]);
    advance(&clock, &engine, Duration::from_secs(1));
    assert_eq!(attempts(&calls), [1, 2]);
    assert_eq!(engine.job_stats(job).unwrap(), stats(0, 1, 0, 0));
    for _ in 0..6 {
        advance(&clock, &engine, Duration::from_secs(30));
    }
    let calls = calls.lock().clone();
    assert_eq!(
        calls.len(),
        5,
        "four retries, then the fifth failure drops it"
    );
    assert_eq!(calls[0].retry, None);
    for (i, c) in calls.iter().enumerate().skip(1) {
        assert_eq!(c.attempt, i as u32 + 1);
        assert_eq!(
            c.retry,
            Some(RetryContext {
                retry_count: i as u32,
                retry_reason: if i == 1 {
                    RetryReason::UpstreamRateLimited
                } else {
                    RetryReason::RetryRequest
                },
                retry_data: format!("userName=john;{i}").into_bytes(),
            })
        );
    }
    assert_eq!(
        calls[1].retry.as_ref().unwrap().retry_reason.to_string(),
        "FUNCTION_UPSTREAM_RATE_LIMITED"
    );
    assert_eq!(engine.job_stats(job).unwrap(), stats(0, 0, 1, 0));
    let m = engine.metrics();
    assert_eq!((m.retried, m.dropped, m.pending), (4, 1, 0));
    engine.close().unwrap();
}

#[test]
fn the_question_mark_on_a_std_error_fails_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open_forge(dir.path(), &clock, &[]);
    let calls: Calls = Arc::default();
    let parsed = Arc::new(Mutex::new(Vec::new()));
    for queue in [FORGE, "plain"] {
        let (c, k, p) = (calls.clone(), clock.clone(), parsed.clone());
        engine.on(queue, move |event, _| {
            record(&c, "h", event, &k);
            let text = std::str::from_utf8(event.body())?;
            let n: i64 = if event.attempt() == 1 {
                text.parse()?
            } else {
                text.len() as i64
            };
            p.lock().push(n);
            Ok(())
        });
    }
    let forge = engine.publish(FORGE, b"not a number", After::NOW).unwrap();
    let plain = engine.publish("plain", b"nope", After::NOW).unwrap();
    engine.start();
    settle(&engine);
    assert!(parsed.lock().is_empty());
    assert_eq!(engine.metrics().retried, 2);
    advance(&clock, &engine, Duration::from_secs(60));
    advance_ms(&clock, &engine, 6 * MINUTE_MS - 60 * SECOND_MS - 1);
    let of = |id| -> Vec<(u32, i64, Option<RetryReason>)> {
        calls
            .lock()
            .iter()
            .filter(|c| c.id == id)
            .map(|c| {
                (
                    c.attempt,
                    c.now_ms - START_MS,
                    c.retry.as_ref().map(|r| r.retry_reason),
                )
            })
            .collect()
    };
    assert_eq!(
        of(forge),
        [
            (1, 0, None),
            (2, MINUTE_MS, Some(RetryReason::PlatformUnknownError))
        ]
    );
    assert_eq!(of(plain), [(1, 0, None)]);
    advance_ms(&clock, &engine, 1);
    assert_eq!(of(plain), [(1, 0, None), (2, 6 * MINUTE_MS, None)]);
    let m = engine.metrics();
    assert_eq!((m.acked, m.pending), (2, 0));
    engine.close().unwrap();
}

#[test]
fn a_push_of_fifty_events_reports_its_progress_in_job_stats() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open_forge(dir.path(), &clock, &[]);
    let calls: Calls = Arc::default();
    let (c, k) = (calls.clone(), clock.clone());
    engine.on(FORGE, move |event, _| {
        record(&c, "h", event, &k);
        assert!(event.job().is_some());
        let i: u32 = std::str::from_utf8(event.body()).unwrap().parse().unwrap();
        match i % 3 {
            0 => Ok(()),
            1 => Err(HandlerError::msg("always fails")),
            _ if event.attempt() == 1 => Err(HandlerError::msg("fails once")),
            _ => Ok(()),
        }
    });
    let bodies: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    let job = engine.push(FORGE, &bodies, Duration::from_secs(5)).unwrap();
    // A second job, cancelled before it runs.
    let other = engine
        .push(FORGE, ["a", "b", "c"], Duration::from_secs(5))
        .unwrap();
    assert_ne!(job, other);
    engine.start();
    settle(&engine);
    assert_eq!(engine.job_stats(job).unwrap(), stats(0, 50, 0, 0));
    assert_eq!(engine.cancel_job(other).unwrap(), 3);
    assert_eq!(engine.job_stats(other).unwrap(), stats(0, 0, 0, 3));
    advance(&clock, &engine, Duration::from_secs(5));
    // 17 with i % 3 == 0 succeeded; the rest wait for their retry.
    assert_eq!(engine.job_stats(job).unwrap(), stats(17, 33, 0, 0));
    advance(&clock, &engine, Duration::from_secs(60));
    // 16 with i % 3 == 2 succeeded on their second attempt.
    assert_eq!(engine.job_stats(job).unwrap(), stats(33, 17, 0, 0));
    for _ in 0..3 {
        advance(&clock, &engine, Duration::from_secs(60));
    }
    // The 17 with i % 3 == 1 failed five times: dropped.
    assert_eq!(engine.job_stats(job).unwrap(), stats(33, 0, 17, 0));
    assert_eq!(calls.lock().len(), 17 + 16 * 2 + 17 * 5);
    assert!(calls.lock().iter().all(|c| c.body != b"a"));
    assert!(engine.job_stats(afterlog::JobId(999)).is_err());
    engine.close().unwrap();
}

#[test]
fn a_push_without_delay_is_due_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open_forge(dir.path(), &clock, &[]);
    let calls: Calls = Arc::default();
    let (c, k) = (calls.clone(), clock.clone());
    engine.on(FORGE, move |event, _| {
        record(&c, "h", event, &k);
        Ok(())
    });
    let job = engine
        .push(FORGE, ["hello", "world"], Duration::ZERO)
        .unwrap();
    engine.start();
    settle(&engine);
    assert_eq!(engine.job_stats(job).unwrap(), stats(2, 0, 0, 0));
    assert!(
        calls
            .lock()
            .iter()
            .all(|c| c.delay_ms == 0 && c.now_ms == START_MS)
    );
    engine.close().unwrap();
}

// ---------------------------------------------------------------------------------------
// Cancel

#[test]
fn cancel_and_cancel_job_stop_every_later_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open(dir.path(), &clock);
    let calls: Calls = Arc::default();
    let (c, k) = (calls.clone(), clock.clone());
    engine.on("fails", move |event, _| {
        record(&c, "h", event, &k);
        Err(HandlerError::msg("down"))
    });
    // Cancelled before it is due.
    let early = engine
        .publish("fails", b"early", After::ms(10_000))
        .unwrap();
    assert!(engine.cancel(early).unwrap());
    assert!(!engine.cancel(early).unwrap(), "already cancelled");
    // Cancelled while waiting for a retry.
    let retrying = engine.publish("fails", b"retrying", After::NOW).unwrap();
    // A job cancelled before it is due, and one cancelled between retries.
    let waiting = engine
        .push("fails", ["w1", "w2", "w3"], Duration::from_secs(10))
        .unwrap();
    let failing = engine
        .push("fails", ["f1", "f2"], Duration::from_secs(1))
        .unwrap();
    assert_eq!(engine.cancel_job(waiting).unwrap(), 3);
    engine.start();
    settle(&engine);
    advance(&clock, &engine, Duration::from_secs(1));
    assert_eq!(calls.lock().len(), 3, "retrying, f1 and f2 attempted once");
    assert!(engine.cancel(retrying).unwrap());
    assert_eq!(engine.cancel_job(failing).unwrap(), 2);
    assert_eq!(engine.job_stats(failing).unwrap(), stats(0, 0, 0, 2));
    assert_eq!(engine.cancel_job(failing).unwrap(), 0);
    for _ in 0..4 {
        advance(&clock, &engine, Duration::from_secs(360));
    }
    let calls = calls.lock();
    assert_eq!(calls.len(), 3, "no attempt after a cancel: {calls:#?}");
    assert!(calls.iter().all(|c| c.attempt == 1 && c.body != b"early"));
    let m = engine.metrics();
    assert_eq!((m.cancelled, m.pending), (7, 0));
    assert!(engine.cancel(EventId(10_000)).is_err(), "unknown event");
}

#[test]
fn cancel_job_from_a_handler_stops_the_rest_of_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    // One worker, so the whole job is handed to it at once.
    let options = options(&clock)
        .workers(1)
        .policy(FORGE, RetryPolicy::forge());
    let engine = Engine::open_with(dir.path(), options).unwrap();
    let calls: Calls = Arc::default();
    let cancelled = Arc::new(Mutex::new(Vec::new()));
    let (c, k, n) = (calls.clone(), clock.clone(), cancelled.clone());
    engine.on(FORGE, move |event, ctx| {
        record(&c, "h", event, &k);
        // Something went wrong: cancel the job (Forge's `jobProgress.cancel()`).
        n.lock().push(ctx.cancel_job().unwrap());
        Ok(())
    });
    let job = engine
        .push(FORGE, ["1", "2", "3", "4", "5"], Duration::from_secs(1))
        .unwrap();
    engine.start();
    advance(&clock, &engine, Duration::from_secs(1));
    advance(&clock, &engine, Duration::from_secs(3600));
    assert_eq!(
        calls.lock().len(),
        1,
        "events ran after their job was cancelled"
    );
    assert_eq!(*cancelled.lock(), [4]);
    assert_eq!(engine.job_stats(job).unwrap(), stats(1, 0, 0, 4));
    assert_eq!(engine.metrics().pending, 0);
    // An event outside any job has no job to cancel.
    let (k2, out) = (clock.clone(), Arc::new(Mutex::new(None)));
    let o = out.clone();
    engine.on("solo", move |_, ctx| {
        let _ = &k2;
        *o.lock() = Some(ctx.cancel_job().unwrap());
        Ok(())
    });
    engine.publish("solo", b"x", After::NOW).unwrap();
    settle(&engine);
    assert_eq!(*out.lock(), Some(0));
    engine.close().unwrap();
}

#[test]
fn cancel_from_a_handler_stops_an_event_already_handed_to_the_same_worker() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    // One worker, so both events are handed to it together.
    let engine = Engine::open_with(dir.path(), options(&clock).workers(1)).unwrap();
    let a = engine.publish("pair", b"a", After::ms(1_000)).unwrap();
    let b = engine.publish("pair", b"b", After::ms(1_000)).unwrap();
    let calls: Calls = Arc::default();
    let handle: Arc<Mutex<Option<Engine>>> = Arc::new(Mutex::new(Some(engine.clone())));
    let (c, k, h) = (calls.clone(), clock.clone(), handle.clone());
    engine.on("pair", move |event, _| {
        record(&c, "h", event, &k);
        // The first of the pair to run cancels the other.
        if c.lock().len() == 1 {
            let other = if event.id() == a { b } else { a };
            let engine = h.lock().clone().unwrap();
            assert!(engine.cancel(other).unwrap());
        }
        Ok(())
    });
    engine.start();
    advance(&clock, &engine, Duration::from_secs(1));
    advance(&clock, &engine, Duration::from_secs(3600));
    let ran: Vec<EventId> = calls.lock().iter().map(|c| c.id).collect();
    assert_eq!(ran.len(), 1, "the cancelled event ran: {ran:?}");
    let m = engine.metrics();
    assert_eq!((m.acked, m.cancelled, m.pending), (1, 1, 0));
    handle.lock().take();
    engine.close().unwrap();
}

// ---------------------------------------------------------------------------------------
// No handler, start, a year ahead, JSON

#[test]
fn nothing_is_delivered_before_start_and_an_event_without_handler_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open(dir.path(), &clock);
    let calls: Calls = Arc::default();
    let (c, k) = (calls.clone(), clock.clone());
    engine.on("handled", move |event, _| {
        record(&c, "h", event, &k);
        Ok(())
    });
    engine.publish("handled", b"h", After::NOW).unwrap();
    engine.publish("nobody", b"n", After::ms(1_000)).unwrap();
    clock.advance(Duration::from_secs(2));
    // Events are due, and nothing takes them: the engine is not idle, and nothing ran.
    assert!(!engine.wait_idle(Duration::from_millis(300)));
    let m = engine.metrics();
    assert_eq!((m.delivered, m.ignored, m.pending), (0, 0, 2));
    assert!(calls.lock().is_empty());
    engine.start();
    settle(&engine);
    assert_eq!(calls.lock().len(), 1);
    let m = engine.metrics();
    assert_eq!((m.delivered, m.acked, m.ignored, m.pending), (1, 1, 1, 0));
    // Acknowledged: not retried later.
    advance(&clock, &engine, Duration::from_secs(3600));
    let m = engine.metrics();
    assert_eq!((m.ignored, m.retried, m.pending), (1, 0, 0));
    engine.close().unwrap();
}

#[test]
fn an_event_a_year_ahead_is_delivered_after_a_year_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open(dir.path(), &clock);
    let calls: Calls = Arc::default();
    let (c, k) = (calls.clone(), clock.clone());
    engine.on("anniversary", move |event, _| {
        record(&c, "h", event, &k);
        Ok(())
    });
    // 2023-11-14 plus one calendar year crosses February 29, 2024: 366 days.
    let year = engine
        .publish("anniversary", b"year", After::parse("1 year").unwrap())
        .unwrap();
    let days = engine
        .publish(
            "anniversary",
            b"365 days",
            After::delay(Duration::from_secs(365 * 86_400)),
        )
        .unwrap();
    engine.start();
    settle(&engine);
    for _ in 0..12 {
        advance(&clock, &engine, Duration::from_secs(30 * 86_400));
        assert!(calls.lock().is_empty(), "delivered early");
    }
    clock.set(START_MS + 365 * DAY_MS - 1);
    settle(&engine);
    assert!(calls.lock().is_empty());
    advance_ms(&clock, &engine, 1);
    assert_eq!(
        calls.lock().iter().map(|c| c.id).collect::<Vec<_>>(),
        [days]
    );
    advance_ms(&clock, &engine, DAY_MS - 1);
    assert_eq!(calls.lock().len(), 1);
    advance_ms(&clock, &engine, 1);
    let calls = calls.lock();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].id, year);
    assert_eq!(calls[1].delay_ms, 366 * DAY_MS);
    assert_eq!(calls[1].now_ms, START_MS + 366 * DAY_MS);
}

#[test]
fn publish_json_round_trips_through_event_json() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct UserJoined {
        user_id: String,
        email: String,
        tags: Vec<String>,
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open(dir.path(), &clock);
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    engine.on("user.joined", move |event, _| {
        let user: UserJoined = event.json()?;
        g.lock().push((user, event.json::<serde_json::Value>()?));
        Ok(())
    });
    let user = UserJoined {
        user_id: "2b6mgh78g334".into(),
        email: "newuser@example.com".into(),
        tags: vec!["new".into(), "é\"quoted\"".into()],
    };
    engine
        .publish_json("user.joined", &user, After::parse("1 day").unwrap())
        .unwrap();
    engine.start();
    advance_ms(&clock, &engine, DAY_MS);
    let got = got.lock();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, user);
    assert_eq!(got[0].1["email"], "newuser@example.com");
    engine.close().unwrap();
}
