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
