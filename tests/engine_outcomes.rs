//! Outcomes of attempts, cancel counts, Forge's limits and retention, on the manual clock.

use afterlog::format::Record;
use afterlog::{
    After, Engine, HandlerError, ManualClock, Options, Reader, RetryOptions, RetryReason,
};
use std::time::Duration;

const START_MS: i64 = 1_700_000_000_000;
const IDLE: Duration = Duration::from_secs(10);

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .segment_bytes(1 << 20)
        .compaction_interval(None)
}

/// The failure messages of an event's retry records, read back from the closed directory.
fn retry_messages(dir: &std::path::Path, id: afterlog::EventId) -> Vec<(String, usize)> {
    let reader = Reader::open(dir).unwrap();
    let history = reader
        .event_history(id)
        .unwrap()
        .expect("the event is on disk");
    history
        .records
        .iter()
        .filter_map(|(_, kind, payload)| match Record::decode(*kind, payload) {
            Ok(Record::Retry(r)) => Some((r.message.to_string(), r.data.len())),
            _ => None,
        })
        .collect()
}

#[test]
fn retry_data_over_the_record_limit_fails_its_attempt_alone() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock).workers(1)).unwrap();
    engine.on("job", |event, _ctx| {
        if event.body() == b"big" {
            return Err(HandlerError::retry(RetryOptions {
                retry_after: Duration::from_secs(30),
                reason: RetryReason::RetryRequest,
                data: vec![0; 300_000],
            }));
        }
        Ok(())
    });
    // Both due at once: one worker takes them in one batch.
    let big = engine.publish("job", b"big", After::NOW).unwrap();
    let fine = engine.publish("job", b"fine", After::NOW).unwrap();
    engine.start();
    assert!(engine.wait_idle(IDLE));
    let m = engine.metrics();
    assert_eq!((m.acked, m.retried, m.pending), (1, 1, 1), "{m:?}");
    assert!(
        !engine.cancel(fine).unwrap(),
        "the successful event is done"
    );
    assert!(
        engine.cancel(big).unwrap(),
        "the oversized retry is pending"
    );
    engine.close().unwrap();
    let retries = retry_messages(dir.path(), big);
    assert_eq!(retries.len(), 1, "{retries:?}");
    let (message, data_len) = &retries[0];
    assert_eq!(*data_len, 0, "the oversized data is not written");
    assert!(
        message.contains("retry data") && message.contains("300000"),
        "the message says why: {message}"
    );
}

#[test]
fn compaction_expires_a_retried_event_by_its_first_due_time_as_delivery_does() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let retention = Duration::from_secs(3600);
    let opts = || options(&clock).retention(retention);
    let id = {
        let engine = Engine::open_with(dir.path(), opts()).unwrap();
        engine.on("job", |_, _| Err(HandlerError::msg("down")));
        let id = engine.publish("job", b"x", After::NOW).unwrap();
        engine.start();
        assert!(engine.wait_idle(IDLE));
        // One failure: the retry is due 6 minutes after the first due time.
        assert_eq!(engine.metrics().retried, 1);
        engine.close().unwrap();
        id
    };
    // Not started, so nothing delivers it. Past the first due time plus the retention, but
    // not yet past the retry's due time plus the retention.
    clock.set(START_MS + 3_600_000 + 60_000);
    let engine = Engine::open_with(dir.path(), opts()).unwrap();
    let stats = engine.compact_now().unwrap();
    assert_eq!(stats.events_expired, 1, "{stats:?}");
    assert!(!engine.cancel(id).unwrap(), "the event expired");
    assert_eq!(engine.metrics().expired, 1);
    engine.close().unwrap();
}

#[test]
fn a_policy_built_from_forge_keeps_forge_push_limits() {
    use afterlog::RetryPolicy;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(
        dir.path(),
        options(&clock)
            .policy(
                "shorter",
                RetryPolicy::forge().max_retry_after(Duration::from_secs(60)),
            )
            .policy("fewer", RetryPolicy::forge().max_attempts(2))
            .policy("plain", RetryPolicy::fixed(Duration::from_secs(60))),
    )
    .unwrap();
    let sixteen_minutes = Duration::from_secs(16 * 60);
    for name in ["shorter", "fewer"] {
        let refused = engine.push(name, ["a"], sixteen_minutes);
        assert!(refused.is_err(), "{name}: {refused:?}");
        engine.push(name, ["a"], afterlog::FORGE_MAX_DELAY).unwrap();
    }
    engine.push("plain", ["a"], sixteen_minutes).unwrap();
    engine.close().unwrap();
}

#[test]
fn cancel_job_metrics_and_job_stats_count_the_same_cancelled_events() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock).workers(1)).unwrap();
    let returned = Arc::new(AtomicU64::new(u64::MAX));
    let r = returned.clone();
    // The first event cancels its job and fails: the rest of the job never starts.
    engine.on("queue", move |event, ctx| {
        if event.body() == b"first" {
            r.store(ctx.cancel_job().unwrap(), Ordering::SeqCst);
            return Err(HandlerError::msg("gave up"));
        }
        Ok(())
    });
    let job = engine
        .push("queue", ["first", "b", "c", "d"], Duration::ZERO)
        .unwrap();
    let later = engine
        .push("queue", ["e", "f", "g"], Duration::from_secs(60))
        .unwrap();
    engine.start();
    assert!(engine.wait_idle(IDLE));
    let in_handler = returned.load(Ordering::SeqCst);
    let n = in_handler + engine.cancel_job(later).unwrap();
    let stats = engine.job_stats(job).unwrap();
    let later_stats = engine.job_stats(later).unwrap();
    let m = engine.metrics();
    assert_eq!(n, 6, "{stats:?} {later_stats:?}");
    assert_eq!(m.cancelled, n, "{m:?}");
    assert_eq!(stats.cancelled + later_stats.cancelled, n, "{stats:?}");
    // The attempt that ran fails; it is not retried, since its job is cancelled.
    assert_eq!((stats.failed, stats.in_progress), (1, 0), "{stats:?}");
    engine.close().unwrap();
}
