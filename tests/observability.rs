//! Metrics through the `metrics` facade, the engine's own `metrics_text`, and spans and
//! events through `tracing` (docs/OBSERVABILITY.md).
//!
//! One recorder (`metrics_util`'s `DebuggingRecorder`) and one subscriber (a registry with
//! a layer that keeps every event and the fields of its spans) are installed for the whole
//! test binary, before any engine opens: the engine's threads are not the test's, so only
//! global ones see them. Tests run in parallel, so each uses event names of its own and
//! filters by them; the recorder's snapshots reset what they read, so every read goes
//! through `Recorded`, which adds each snapshot into one running total.

use afterlog::{
    After, Clock, Engine, HandlerError, HandlerOptions, ManualClock, MemStorage, Options,
    RetryPolicy, Wake,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

const START_MS: i64 = 1_700_000_000_000;
const IDLE: Duration = Duration::from_secs(20);

// ---- The recorder ----

/// A metric's name and its labels, sorted.
type MetricId = (String, Vec<(String, String)>);

/// Everything the recorder saw, summed over snapshots: counters added, histogram samples
/// appended, gauges last set.
#[derive(Default)]
struct Recorded {
    counters: HashMap<MetricId, u64>,
    histograms: HashMap<MetricId, Vec<f64>>,
    gauges: HashMap<String, f64>,
}

struct Observed {
    snapshotter: Snapshotter,
    recorded: Mutex<Recorded>,
    events: Mutex<Vec<Captured>>,
    captured: Condvar,
}

fn observed() -> &'static Observed {
    static OBSERVED: OnceLock<Observed> = OnceLock::new();
    OBSERVED.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("one recorder per test binary");
        let subscriber = tracing_subscriber::registry().with(Capture);
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        Observed {
            snapshotter,
            recorded: Mutex::new(Recorded::default()),
            events: Mutex::new(Vec::new()),
            captured: Condvar::new(),
        }
    })
}

fn labels_of(key: &CompositeKey) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = key
        .key()
        .labels()
        .map(|l| (l.key().to_string(), l.value().to_string()))
        .collect();
    labels.sort();
    labels
}

/// Adds a snapshot of the recorder to the running total and calls `f` with it.
fn recorded<T>(f: impl FnOnce(&Recorded) -> T) -> T {
    let observed = observed();
    let mut recorded = observed.recorded.lock().unwrap();
    for (key, _, _, value) in observed.snapshotter.snapshot().into_vec() {
        let id = (key.key().name().to_string(), labels_of(&key));
        match (key.kind(), value) {
            (MetricKind::Counter, DebugValue::Counter(n)) => {
                *recorded.counters.entry(id).or_default() += n;
            }
            (MetricKind::Histogram, DebugValue::Histogram(values)) => recorded
                .histograms
                .entry(id)
                .or_default()
                .extend(values.into_iter().map(|v| v.into_inner())),
            (MetricKind::Gauge, DebugValue::Gauge(v)) => {
                recorded.gauges.insert(id.0, v.into_inner());
            }
            _ => {}
        }
    }
    f(&recorded)
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    labels
}

/// A counter's total, 0 if never incremented.
fn counter(name: &str, pairs: &[(&str, &str)]) -> u64 {
    let id = (name.to_string(), labels(pairs));
    recorded(|r| r.counters.get(&id).copied().unwrap_or(0))
}

/// A histogram's samples so far.
fn samples(name: &str, pairs: &[(&str, &str)]) -> Vec<f64> {
    let id = (name.to_string(), labels(pairs));
    recorded(|r| r.histograms.get(&id).cloned().unwrap_or_default())
}

fn attempts(name: &str, outcome: &str) -> u64 {
    counter(
        "afterlog_attempts_total",
        &[("name", name), ("outcome", outcome)],
    )
}

// ---- The subscriber ----

/// An event, with its fields and the fields of every span it happened in (innermost first).
#[derive(Clone, Debug)]
struct Captured {
    level: tracing::Level,
    fields: HashMap<String, String>,
    spans: Vec<(String, HashMap<String, String>)>,
}

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
}

struct Capture;

impl<S> tracing_subscriber::Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: LayerContext<'_, S>,
    ) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let spans = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .map(|span| {
                        let fields = span
                            .extensions()
                            .get::<Fields>()
                            .map(|f| f.0.clone())
                            .unwrap_or_default();
                        (span.name().to_string(), fields)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let observed = observed();
        observed.events.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            fields: fields.0,
            spans,
        });
        observed.captured.notify_all();
    }
}

/// The events so far that `keep` keeps.
fn events(keep: impl Fn(&Captured) -> bool) -> Vec<Captured> {
    let events = observed().events.lock().unwrap();
    events.iter().filter(|e| keep(e)).cloned().collect()
}

/// Waits (on the capture's condition, at most `IDLE`) for an event that `keep` keeps.
fn wait_for_event(keep: impl Fn(&Captured) -> bool) -> Option<Captured> {
    let observed = observed();
    let events = observed.events.lock().unwrap();
    let (events, _) = observed
        .captured
        .wait_timeout_while(events, IDLE, |events| !events.iter().any(&keep))
        .unwrap();
    events.iter().find(|e| keep(e)).cloned()
}

fn field<'a>(e: &'a Captured, name: &str) -> Option<&'a str> {
    e.fields.get(name).map(String::as_str)
}

// ---- Engines ----

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .compaction_interval(None)
}

fn open(options: Options) -> Engine {
    observed();
    Engine::open_storage(Arc::new(MemStorage::new()), options).unwrap()
}

/// Runs the engine until it is idle, advancing the clock a second at a time `steps` times.
fn run(engine: &Engine, clock: &ManualClock, steps: u32) {
    engine.start();
    for _ in 0..=steps {
        assert!(engine.wait_idle(IDLE));
        clock.advance(Duration::from_secs(1));
    }
    assert!(engine.wait_idle(IDLE));
}

// ---- Metrics ----

#[test]
fn publishes_are_counted_per_name() {
    let clock = ManualClock::new(START_MS);
    let engine = open(options(&clock));
    for _ in 0..3 {
        engine
            .publish("obs.pub.x", "{}", After::parse("1 hour").unwrap())
            .unwrap();
    }
    engine
        .push("obs.pub.job", ["a", "b"], Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        counter("afterlog_published_total", &[("name", "obs.pub.x")]),
        3
    );
    assert_eq!(
        counter("afterlog_published_total", &[("name", "obs.pub.job")]),
        2
    );
    let m = engine.metrics();
    let x = m.names.iter().find(|n| n.name == "obs.pub.x").unwrap();
    assert_eq!(x.published, 3);
    assert_eq!(m.published, 5);
    let text = engine.metrics_text();
    assert!(
        text.contains("afterlog_published_total{name=\"obs.pub.x\"} 3\n"),
        "{text}"
    );
    assert!(text.contains("afterlog_published_total{name=\"obs.pub.job\"} 2\n"));
    assert!(text.contains("afterlog_pending_events 5\n"), "{text}");
    engine.close().unwrap();
}

#[test]
fn attempts_are_counted_by_outcome() {
    let clock = ManualClock::new(START_MS);
    let engine = open(options(&clock).policy(
        "obs.out.flaky",
        RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(2),
    ));
    engine.on("obs.out.flaky", |_, _| {
        Err(HandlerError::msg("smtp refused"))
    });
    engine.on("obs.out.ok", |_, _| Ok(()));
    engine.publish("obs.out.flaky", "", After::NOW).unwrap();
    engine.publish("obs.out.ok", "", After::NOW).unwrap();
    engine.publish("obs.out.ok", "", After::NOW).unwrap();
    // No handler: acknowledged as ignored, and kept as a dead letter.
    engine.publish("obs.out.none", "", After::NOW).unwrap();
    run(&engine, &clock, 3);

    // The first failure is retried, the second dropped by `max_attempts(2)`.
    assert_eq!(attempts("obs.out.flaky", "retried"), 1);
    assert_eq!(attempts("obs.out.flaky", "dropped"), 1);
    assert_eq!(attempts("obs.out.flaky", "acked"), 0);
    assert_eq!(attempts("obs.out.ok", "acked"), 2);
    assert_eq!(attempts("obs.out.none", "ignored"), 1);
    let dead = |name| counter("afterlog_dead_letters_total", &[("name", name)]);
    assert_eq!(
        (
            dead("obs.out.flaky"),
            dead("obs.out.ok"),
            dead("obs.out.none")
        ),
        (1, 0, 1)
    );
    // One lateness and one handler duration per attempt that ran its handlers.
    assert_eq!(
        samples("afterlog_lateness_seconds", &[("name", "obs.out.flaky")]).len(),
        2
    );
    assert_eq!(
        samples(
            "afterlog_handler_duration_seconds",
            &[("name", "obs.out.ok")]
        )
        .len(),
        2
    );
    // The log's histograms are global (other tests' engines add to them too).
    let fsyncs = samples("afterlog_fsync_duration_seconds", &[]);
    assert!(!fsyncs.is_empty());
    assert!(fsyncs.iter().all(|&s| s >= 0.0));
    let per_sync = samples("afterlog_records_per_sync", &[]);
    assert!(per_sync.iter().all(|&n| n >= 1.0), "{per_sync:?}");

    // The engine's own counts agree.
    let m = engine.metrics();
    let flaky = m.names.iter().find(|n| n.name == "obs.out.flaky").unwrap();
    assert_eq!(
        (flaky.retried, flaky.dropped, flaky.dead_letters),
        (1, 1, 1)
    );
    let text = engine.metrics_text();
    for line in [
        "afterlog_attempts_total{name=\"obs.out.flaky\",outcome=\"retried\"} 1",
        "afterlog_attempts_total{name=\"obs.out.flaky\",outcome=\"dropped\"} 1",
        "afterlog_attempts_total{name=\"obs.out.ok\",outcome=\"acked\"} 2",
        "afterlog_attempts_total{name=\"obs.out.none\",outcome=\"ignored\"} 1",
        "afterlog_dead_letters_total{name=\"obs.out.flaky\"} 1",
        "afterlog_lateness_seconds_count{name=\"obs.out.flaky\"} 2",
        "afterlog_handler_duration_seconds_bucket{name=\"obs.out.ok\",le=\"+Inf\"} 2",
        "afterlog_dead_letters_kept 2",
    ] {
        assert!(text.contains(&format!("{line}\n")), "{line} not in\n{text}");
    }
    engine.close().unwrap();
}

#[test]
fn timeouts_and_panics_are_outcomes_of_their_own() {
    let clock = ManualClock::new(START_MS);
    let once = RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(1);
    let engine = open(
        options(&clock)
            .policy("obs.tp.slow", once.clone())
            .policy("obs.tp.panics", once),
    );
    let c = clock.clone();
    engine.on_with(
        "obs.tp.slow",
        HandlerOptions::default().timeout(Duration::from_secs(1)),
        move |_, _| {
            // Past its timeout on the engine's clock: the attempt times out.
            c.advance(Duration::from_secs(2));
            Ok(())
        },
    );
    engine.on("obs.tp.panics", |_, _| panic!("boom"));
    engine.publish("obs.tp.slow", "", After::NOW).unwrap();
    engine.publish("obs.tp.panics", "", After::NOW).unwrap();
    run(&engine, &clock, 1);
    assert_eq!(attempts("obs.tp.slow", "timed_out"), 1);
    assert_eq!(attempts("obs.tp.panics", "panicked"), 1);
    // Each counts once: not also as dropped, though the policy dropped both.
    assert_eq!(attempts("obs.tp.slow", "dropped"), 0);
    assert_eq!(attempts("obs.tp.panics", "dropped"), 0);
    assert_eq!(
        counter("afterlog_dead_letters_total", &[("name", "obs.tp.panics")]),
        1
    );
    engine.close().unwrap();
}

#[test]
fn cancels_are_counted_per_name() {
    let clock = ManualClock::new(START_MS);
    let engine = open(options(&clock));
    let id = engine
        .publish("obs.cancel.one", "", After::parse("1 day").unwrap())
        .unwrap();
    engine
        .publish("obs.cancel.one", "", After::parse("1 day").unwrap())
        .unwrap();
    let job = engine
        .push("obs.cancel.job", ["a", "b", "c"], Duration::from_secs(600))
        .unwrap();
    assert!(engine.cancel(id).unwrap());
    assert!(!engine.cancel(id).unwrap());
    assert_eq!(engine.cancel_job(job).unwrap(), 3);
    assert_eq!(
        counter("afterlog_cancelled_total", &[("name", "obs.cancel.one")]),
        1
    );
    assert_eq!(
        counter("afterlog_cancelled_total", &[("name", "obs.cancel.job")]),
        3
    );
    let text = engine.metrics_text();
    assert!(text.contains("afterlog_cancelled_total{name=\"obs.cancel.job\"} 3\n"));
    engine.close().unwrap();
}

#[test]
fn expired_events_are_counted_as_expired_and_dead() {
    let clock = ManualClock::new(START_MS);
    let engine = open(options(&clock).retention(Duration::from_secs(3_600)));
    engine.publish("obs.expire", "", After::NOW).unwrap();
    clock.advance(Duration::from_secs(7_200));
    // Before start, a compaction pass expires it.
    assert_eq!(engine.compact_now().unwrap().events_expired, 1);
    assert_eq!(attempts("obs.expire", "expired"), 1);
    assert_eq!(
        counter("afterlog_dead_letters_total", &[("name", "obs.expire")]),
        1
    );
    engine.close().unwrap();
}

#[test]
fn the_facade_gauges_are_set_when_metrics_are_read() {
    let clock = ManualClock::new(START_MS);
    let engine = open(options(&clock));
    engine
        .publish("obs.gauge", "", After::parse("1 hour").unwrap())
        .unwrap();
    let m = engine.metrics();
    assert!(m.disk_bytes > 0 && m.index_bytes > 0, "{m:?}");
    // Every engine of this binary sets the same gauges: that they exist is what is checked
    // here; their values are the engine's own (tested through `metrics_text` above).
    recorded(|r| {
        for gauge in [
            "afterlog_pending_events",
            "afterlog_in_flight_events",
            "afterlog_queued_events",
            "afterlog_dead_letters_kept",
            "afterlog_disk_bytes",
            "afterlog_index_bytes",
        ] {
            assert!(r.gauges.contains_key(gauge), "{gauge} not set");
        }
    });
    engine.close().unwrap();
}

// ---- The text format ----

/// A sample line parsed back: its name, labels (unescaped) and value.
fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => panic!("no value: {line:?}"),
    };
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line:?}"
    );
    let mut labels = Vec::new();
    let mut chars = rest.chars().peekable();
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            assert_eq!(chars.next(), Some('"'), "label {key:?} in {line:?}");
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some('"') => break,
                    Some('\n') | None => panic!("unterminated label value in {line:?}"),
                    Some(c) => value.push(c),
                }
            }
            labels.push((key, value));
            match chars.next() {
                Some(',') => continue,
                Some('}') => break,
                other => panic!("{other:?} after a label in {line:?}"),
            }
        }
    }
    let rest: String = chars.collect();
    let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("{line:?}"));
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|_| panic!("value {v:?} in {line:?}")),
    };
    (name.to_string(), labels, value)
}

#[test]
fn metrics_text_parses_back_with_odd_names_escaped() {
    let clock = ManualClock::new(START_MS);
    let engine = open(options(&clock));
    let odd = "obs.text \"quoted\" back\\slash\nnewline";
    engine.on(odd, |_, _| Ok(()));
    engine.publish(odd, "", After::NOW).unwrap();
    engine.publish("obs.text.plain", "", After::NOW).unwrap();
    run(&engine, &clock, 0);
    let text = engine.metrics_text();
    assert!(text.ends_with('\n'));
    assert!(
        text.contains(
            r#"afterlog_published_total{name="obs.text \"quoted\" back\\slash\nnewline"} 1"#
        ),
        "{text}"
    );
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut seen_odd = 0;
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(_), Some(help)) => assert!(!help.is_empty()),
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                    assert!(
                        typed.insert(name.to_string(), kind.to_string()).is_none(),
                        "{name} typed twice"
                    );
                }
                _ => panic!("bad comment {line:?}"),
            }
            continue;
        }
        let (name, labels, value) = parse_sample(line);
        // Every sample belongs to a family typed before it.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(&name);
        assert!(typed.contains_key(family), "{name} before its TYPE line");
        assert!(value >= 0.0, "{line}");
        if labels.iter().any(|(k, v)| k == "name" && v == odd) {
            seen_odd += 1;
        }
    }
    // Published, 7 outcomes, cancelled, dead letters, and two histograms of 24 buckets,
    // a sum and a count each.
    assert_eq!(seen_odd, 1 + 7 + 1 + 1 + 2 * (24 + 2));
    assert_eq!(typed.get("afterlog_attempts_total").unwrap(), "counter");
    assert_eq!(
        typed.get("afterlog_fsync_duration_seconds").unwrap(),
        "histogram"
    );
    engine.close().unwrap();
}

// ---- Tracing ----

#[test]
fn a_failed_attempt_is_a_warning_and_a_dead_letter_an_error() {
    let clock = ManualClock::new(START_MS);
    let engine = open(options(&clock).policy(
        "obs.trace.fail",
        RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(2),
    ));
    engine.on("obs.trace.fail", |_, _| {
        Err(HandlerError::msg("upstream said no"))
    });
    let id = engine.publish("obs.trace.fail", "", After::NOW).unwrap();
    run(&engine, &clock, 3);
    let id_text = id.0.to_string();
    let ours = |e: &Captured| {
        field(e, "name") == Some("obs.trace.fail") && field(e, "id") == Some(&id_text)
    };
    let warned = events(|e| e.level == tracing::Level::WARN && ours(e));
    assert_eq!(warned.len(), 2, "{warned:?}");
    for (n, e) in warned.iter().enumerate() {
        assert_eq!(field(e, "error"), Some("upstream said no"));
        assert_eq!(field(e, "message"), Some("attempt failed"));
        assert_eq!(field(e, "attempt"), Some((n + 1).to_string().as_str()));
    }
    let died = events(|e| e.level == tracing::Level::ERROR && ours(e));
    assert_eq!(died.len(), 1, "{died:?}");
    assert_eq!(field(&died[0], "reason"), Some("retries-exhausted"));
    assert_eq!(field(&died[0], "error"), Some("upstream said no"));
    engine.close().unwrap();
}

/// The attempt's span as the handler's own event saw it: its fields.
fn attempt_span(marker: &str) -> HashMap<String, String> {
    let seen = events(|e| field(e, "marker") == Some(marker));
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (span, fields) = &seen[0].spans[0];
    assert_eq!(span, "afterlog.attempt");
    fields.clone()
}

#[test]
fn a_handler_runs_in_the_span_of_its_attempt() {
    let clock = ManualClock::new(START_MS);
    let engine = open(options(&clock));
    let in_span = Arc::new(AtomicBool::new(false));
    let seen = in_span.clone();
    engine.on("obs.span.sync", move |_, _| {
        let current = tracing::Span::current();
        seen.store(
            current
                .metadata()
                .is_some_and(|m| m.name() == "afterlog.attempt"),
            Ordering::SeqCst,
        );
        tracing::info!(marker = "sync handler", "sending");
        Ok(())
    });
    engine.on_async("obs.span.async", |_, _| async {
        tracing::info!(marker = "async handler", "sending");
        Ok(())
    });
    let job = engine.push("obs.span.sync", ["a"], Duration::ZERO).unwrap();
    let id = engine.publish("obs.span.async", "", After::NOW).unwrap();
    run(&engine, &clock, 0);
    assert!(in_span.load(Ordering::SeqCst));
    let sync = attempt_span("sync handler");
    assert_eq!(sync.get("name").map(String::as_str), Some("obs.span.sync"));
    assert_eq!(sync.get("attempt").map(String::as_str), Some("1"));
    assert_eq!(
        sync.get("job").map(String::as_str),
        Some(job.0.to_string().as_str())
    );
    assert!(sync.contains_key("id"));
    let not_async = attempt_span("async handler");
    assert_eq!(
        not_async.get("name").map(String::as_str),
        Some("obs.span.async")
    );
    assert_eq!(
        not_async.get("id").map(String::as_str),
        Some(id.0.to_string().as_str())
    );
    engine.close().unwrap();
}

/// A manual clock that panics once armed, on the scheduler's thread.
#[derive(Debug, Clone)]
struct PanickyClock {
    clock: ManualClock,
    armed: Arc<AtomicBool>,
}

impl Clock for PanickyClock {
    fn now_ms(&self) -> i64 {
        let on_scheduler = std::thread::current().name() == Some("afterlog-scheduler");
        if on_scheduler && self.armed.load(Ordering::SeqCst) {
            panic!("injected clock failure");
        }
        self.clock.now_ms()
    }
    fn wait_until(&self, wake: &Wake, deadline_ms: Option<i64>) {
        self.clock.wait_until(wake, deadline_ms);
    }
}

#[test]
fn a_stopped_engine_is_an_error() {
    let clock = PanickyClock {
        clock: ManualClock::new(START_MS),
        armed: Arc::new(AtomicBool::new(false)),
    };
    let engine = open(
        Options::default()
            .clock(clock.clone())
            .compaction_interval(None),
    );
    engine.start();
    clock.armed.store(true, Ordering::SeqCst);
    clock.clock.advance(Duration::from_secs(1));
    let stopped = wait_for_event(|e| {
        e.level == tracing::Level::ERROR
            && field(e, "thread") == Some("scheduler")
            && field(e, "error") == Some("injected clock failure")
    });
    assert!(stopped.is_some(), "no error event for the stopped engine");
    assert!(engine.close().is_err());
}
