//! What a handler returns and how its failures are kept: `?` on std and anyhow errors, boxed
//! errors, a panic's own message in the log, and panic payloads that panic again when dropped.
//! Time passes only through the manual clock; `wait_idle` is where the engine has caught up.

use afterlog::{
    After, Engine, HandlerError, ManualClock, Options, Reader, RetryOptions, RetryReason,
};
use std::path::Path;
use std::time::{Duration, Instant};

/// 2023-11-14T22:13:20Z.
const START_MS: i64 = 1_700_000_000_000;
/// Real time allowed for the engine to catch up after each step.
const IDLE: Duration = Duration::from_secs(20);

fn open(dir: &Path, clock: &ManualClock) -> Engine {
    Engine::open_with(dir, Options::default().clock(clock.clone())).unwrap()
}

fn settle(engine: &Engine) {
    assert!(engine.wait_idle(IDLE), "engine did not become idle");
}

fn last_message(dir: &Path, id: afterlog::EventId) -> Option<String> {
    let events = Reader::open(dir).unwrap().events().unwrap();
    let row = events
        .iter()
        .find(|e| e.id == id)
        .expect("the event is in the log");
    row.last_message.clone()
}

#[derive(Debug)]
struct Outer(std::io::Error);

impl std::fmt::Display for Outer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reading the invoice")
    }
}

impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn question_mark_takes_std_errors_and_anyhow_errors() {
    fn std_error() -> Result<(), HandlerError> {
        "x".parse::<u32>()?;
        Ok(())
    }
    fn anyhow_error() -> Result<(), HandlerError> {
        let e: anyhow::Error = anyhow::anyhow!("upstream said no").context("sending mail");
        Err(e)?;
        Ok(())
    }
    fn chained() -> Result<(), HandlerError> {
        Err(Outer(std::io::Error::other("disk gone")))?;
        Ok(())
    }
    let e = std_error().unwrap_err();
    assert_eq!(e.message(), "invalid digit found in string");
    assert!(!e.is_retry());
    let e = anyhow_error().unwrap_err();
    assert_eq!(e.message(), "sending mail: upstream said no");
    assert!(!e.is_retry());
    // The causes are kept, after the error's own text.
    assert_eq!(
        chained().unwrap_err().message(),
        "reading the invoice: disk gone"
    );
}

#[test]
fn a_boxed_error_converts_with_one_call() {
    let boxed: Box<dyn std::error::Error + Send + Sync> = "no such user".into();
    let e = HandlerError::boxed(boxed);
    assert_eq!(e.message(), "no such user");
    assert!(!e.is_retry());
}

#[test]
fn msg_and_retry_are_told_apart() {
    let e = HandlerError::msg("plain");
    assert_eq!((e.message(), e.is_retry()), ("plain", false));
    assert!(e.retry_options().is_none());
    let e = HandlerError::retry(RetryOptions {
        retry_after: Duration::from_secs(30),
        reason: RetryReason::UpstreamRateLimited,
        data: b"page 2".to_vec(),
    });
    assert!(e.is_retry());
    let options = e.retry_options().unwrap();
    assert_eq!(
        (options.reason, options.data.as_slice()),
        (RetryReason::UpstreamRateLimited, &b"page 2"[..])
    );
}

#[test]
fn an_anyhow_error_in_a_handler_is_the_logged_message() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open(dir.path(), &clock);
    engine.on("mail", |event, _| {
        if event.attempt() == 1 {
            Err(anyhow::anyhow!("smtp 421").context("sending"))?;
        }
        Ok(())
    });
    let id = engine.publish("mail", b"m", After::NOW).unwrap();
    engine.start();
    settle(&engine);
    assert_eq!(
        last_message(dir.path(), id).as_deref(),
        Some("sending: smtp 421")
    );
    engine.close().unwrap();
}

#[test]
fn a_panics_own_message_is_kept_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = open(dir.path(), &clock);
    engine.on("static", |_, _| panic!("static text"));
    engine.on("formatted", |event, _| panic!("bad body of {}", event.id()));
    engine.on("other", |_, _| std::panic::panic_any(42_u32));
    let long = "é".repeat(2_000);
    let l = long.clone();
    engine.on("long", move |_, _| panic!("{l}"));
    let ids: Vec<_> = ["static", "formatted", "other", "long"]
        .iter()
        .map(|name| engine.publish(name, b"x", After::NOW).unwrap())
        .collect();
    engine.start();
    settle(&engine);
    assert_eq!(engine.metrics().panicked, 4);
    engine.close().unwrap();
    let messages: Vec<String> = ids
        .iter()
        .map(|id| last_message(dir.path(), *id).unwrap())
        .collect();
    assert_eq!(messages[0], "panicked: static text");
    assert_eq!(messages[1], format!("panicked: bad body of {}", ids[1]));
    assert_eq!(
        messages[2],
        "panicked: a panic whose payload is not a string"
    );
    // Clipped to the record's limit, on a character boundary.
    assert_eq!(messages[3].len(), 1_024);
    assert!(messages[3].starts_with("panicked: éé"));
}

/// A panic payload whose own `Drop` panics.
struct Explosive;

impl Drop for Explosive {
    fn drop(&mut self) {
        panic!("the payload's drop");
    }
}

#[test]
fn a_panic_payload_that_panics_when_dropped_does_not_kill_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(
        dir.path(),
        Options::default().clock(clock.clone()).workers(1),
    )
    .unwrap();
    engine.on("boom", |event, _| {
        if event.attempt() == 1 {
            std::panic::panic_any(Explosive);
        }
        Ok(())
    });
    let id = engine.publish("boom", b"x", After::NOW).unwrap();
    engine.start();
    settle(&engine);
    let m = engine.metrics();
    assert_eq!((m.panicked, m.retried, m.in_flight), (1, 1, 0));
    // The one worker is alive: the retry runs and is acknowledged.
    clock.advance(Duration::from_secs(6 * 60));
    settle(&engine);
    assert_eq!(engine.metrics().acked, 1);
    let started = Instant::now();
    engine.close().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "close took {:?}",
        started.elapsed()
    );
    assert_eq!(
        last_message(dir.path(), id).as_deref(),
        Some("panicked: a panic whose payload is not a string")
    );
}
