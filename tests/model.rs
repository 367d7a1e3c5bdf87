//! The public API against an in-memory model, as a proptest state machine.
//!
//! A case is a list of up to `AFTERLOG_MODEL_OPS` (default 60; the long campaign uses 200)
//! operations: publish (due now or later; handlers acknowledge, or fail the first attempt),
//! push, cancel, cancel a job, advance the `ManualClock`, `compact_now`, close and reopen,
//! and a crash of the `MemStorage` disk in one of its crash modes followed by a reopen. After
//! each operation the engine is waited on until idle, and what it did is compared with the
//! model exactly: the ids it returned (they continue across restarts), what `cancel` and
//! `cancel_job` returned, and which `(event, attempt)` pairs the handlers saw — nothing
//! early, nothing after a cancel, nothing acknowledged twice, every due event once, with
//! attempt numbers that continue across crashes. `AFTERLOG_MODEL_CASES` sets the number of
//! cases (default 128; the long campaign uses 1,000). Proptest prints a minimal failing list.
//!
//! Nothing here depends on real time: the clock is manual, and the engine's timeouts run on
//! it. Waiting until idle takes milliseconds; its real-time limit (`HANG_GUARD`) only turns a
//! hang into a failure, reported as a hang (with the operations so far, printed at once),
//! never as a wrong result.

use afterlog::log::LogOptions;
use afterlog::storage::{CrashMode, MemStorage};
use afterlog::{After, Engine, EventId, HandlerError, JobId, ManualClock, Options, RetryPolicy};
use parking_lot::Mutex;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

const START_MS: i64 = 1_700_000_000_000;
const RETRY_MS: i64 = 60_000;
const DELAYS_MS: [i64; 4] = [0, 1_000, 45_000, 300_000];
/// How long (real time) waiting until idle may take before the test calls it a hang. The
/// engine needs milliseconds; the guard is generous so that a machine stalled by other work
/// never fails the test.
const HANG_GUARD: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
enum Op {
    Publish {
        delay: usize,
        fail_once: bool,
    },
    Push {
        n: usize,
        delay: usize,
        fail_once: bool,
    },
    Cancel {
        pick: usize,
    },
    CancelJob {
        pick: usize,
    },
    Advance {
        ms: i64,
    },
    Compact,
    Restart,
    Crash {
        mode: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..DELAYS_MS.len(), any::<bool>())
            .prop_map(|(delay, fail_once)| Op::Publish { delay, fail_once }),
        2 => (1..4usize, 0..DELAYS_MS.len(), any::<bool>())
            .prop_map(|(n, delay, fail_once)| Op::Push { n, delay, fail_once }),
        2 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        1 => any::<usize>().prop_map(|pick| Op::CancelJob { pick }),
        4 => prop_oneof![Just(1_000i64), Just(30_000), Just(RETRY_MS), Just(400_000)]
            .prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Compact),
        1 => Just(Op::Restart),
        1 => (0..6usize).prop_map(|mode| Op::Crash { mode }),
    ]
}

#[derive(Clone, Debug)]
struct ModelEvent {
    job: Option<JobId>,
    due_ms: i64,
    attempts: u32,
    fail_once: bool,
    finished: bool,
}

#[derive(Default)]
struct Model {
    events: BTreeMap<EventId, ModelEvent>,
    jobs: BTreeMap<JobId, Vec<EventId>>,
    next_event: u64,
    next_job: u64,
}

impl Model {
    /// Delivers every due event at `now_ms`; returns the `(event, attempt)` pairs.
    fn deliver(&mut self, now_ms: i64) -> BTreeSet<(EventId, u32)> {
        let mut out = BTreeSet::new();
        for (&id, e) in &mut self.events {
            if e.finished || e.due_ms > now_ms {
                continue;
            }
            e.attempts += 1;
            out.insert((id, e.attempts));
            if e.fail_once && e.attempts == 1 {
                e.due_ms = now_ms + RETRY_MS;
            } else {
                e.finished = true;
            }
        }
        out
    }
}

type Seen = Arc<Mutex<BTreeSet<(EventId, u32)>>>;

fn open(disk: &MemStorage, clock: &ManualClock, seen: &Seen) -> Engine {
    let options = Options::default()
        .clock(clock.clone())
        .log_options(LogOptions {
            segment_bytes: 4096,
            prepare_in_background: false,
            ..LogOptions::default()
        })
        .compaction_interval(None)
        .workers(2)
        .default_policy(RetryPolicy::fixed(Duration::from_millis(RETRY_MS as u64)));
    let engine = Engine::open_storage(Arc::new(disk.clone()), options)
        .unwrap_or_else(|e| panic!("the engine does not open: {e}"));
    for name in ["a", "q"] {
        let seen = seen.clone();
        engine.on(name, move |event, _| {
            let fresh = seen.lock().insert((event.id(), event.attempt()));
            assert!(
                fresh,
                "{} attempt {} ran twice",
                event.id(),
                event.attempt()
            );
            if event.body() == b"fail" && event.attempt() == 1 {
                Err(HandlerError::msg("first attempt fails"))
            } else {
                Ok(())
            }
        });
    }
    engine.start();
    engine
}

/// Waits until the engine is idle; a failure says it is a hang, not a wrong result.
fn settle(engine: &Engine, ops: &[Op], step: usize) -> Result<(), TestCaseError> {
    if engine.wait_idle(HANG_GUARD) {
        return Ok(());
    }
    let m = engine.metrics();
    let message = format!(
        "HANG, not a wrong result: at step {step} the engine was still busy after \
         {HANG_GUARD:?} of real time ({} in flight, {} pending); operations: {ops:?}",
        m.in_flight, m.pending
    );
    // Printed now: shrinking a hang may take long.
    eprintln!("{message}");
    Err(TestCaseError::fail(message))
}

fn after(delay_ms: i64) -> After {
    if delay_ms == 0 {
        After::NOW
    } else {
        After::delay(Duration::from_millis(delay_ms as u64))
    }
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let clock = ManualClock::new(START_MS);
    let seen: Seen = Arc::default();
    let mut disk = MemStorage::new();
    let mut engine = open(&disk, &clock, &seen);
    let mut model = Model {
        next_event: 1,
        next_job: 1,
        ..Model::default()
    };
    let body = |fail_once: bool| if fail_once { "fail" } else { "ack" };
    // Two final advances deliver everything still due and the retries of those that fail.
    let tail = [Op::Advance { ms: 3_600_000 }, Op::Advance { ms: RETRY_MS }];
    for (step, op) in ops.iter().chain(tail.iter()).enumerate() {
        let now_ms = clock.now_ms();
        match op {
            Op::Publish { delay, fail_once } => {
                let due_ms = now_ms + DELAYS_MS[*delay];
                let id = engine
                    .publish("a", body(*fail_once), after(DELAYS_MS[*delay]))
                    .map_err(|e| TestCaseError::fail(format!("step {step}: publish: {e}")))?;
                prop_assert_eq!(id, EventId(model.next_event), "step {}: event id", step);
                model.next_event += 1;
                model.events.insert(
                    id,
                    ModelEvent {
                        job: None,
                        due_ms,
                        attempts: 0,
                        fail_once: *fail_once,
                        finished: false,
                    },
                );
            }
            Op::Push {
                n,
                delay,
                fail_once,
            } => {
                let delay_ms = DELAYS_MS[*delay];
                let bodies = vec![body(*fail_once); *n];
                let job = engine
                    .push("q", bodies, Duration::from_millis(delay_ms as u64))
                    .map_err(|e| TestCaseError::fail(format!("step {step}: push: {e}")))?;
                prop_assert_eq!(job, JobId(model.next_job), "step {}: job id", step);
                model.next_job += 1;
                let ids: Vec<EventId> = (0..*n as u64)
                    .map(|i| EventId(model.next_event + i))
                    .collect();
                model.next_event += *n as u64;
                for &id in &ids {
                    model.events.insert(
                        id,
                        ModelEvent {
                            job: Some(job),
                            due_ms: now_ms + delay_ms,
                            attempts: 0,
                            fail_once: *fail_once,
                            finished: false,
                        },
                    );
                }
                model.jobs.insert(job, ids);
            }
            Op::Cancel { pick } => {
                if model.events.is_empty() {
                    continue;
                }
                let id = *model.events.keys().nth(pick % model.events.len()).unwrap();
                let got = engine
                    .cancel(id)
                    .map_err(|e| TestCaseError::fail(format!("step {step}: cancel: {e}")))?;
                let e = model.events.get_mut(&id).unwrap();
                prop_assert_eq!(got, !e.finished, "step {}: cancel({})", step, id);
                e.finished = true;
            }
            Op::CancelJob { pick } => {
                if model.jobs.is_empty() {
                    continue;
                }
                let job = *model.jobs.keys().nth(pick % model.jobs.len()).unwrap();
                let got = engine
                    .cancel_job(job)
                    .map_err(|e| TestCaseError::fail(format!("step {step}: cancel_job: {e}")))?;
                let mut expected = 0;
                for id in &model.jobs[&job] {
                    let e = model.events.get_mut(id).unwrap();
                    expected += u64::from(!e.finished);
                    e.finished = true;
                }
                prop_assert_eq!(got, expected, "step {}: cancel_job({})", step, job);
            }
            Op::Advance { ms } => clock.advance_ms(*ms),
            Op::Compact => {
                engine
                    .compact_now()
                    .map_err(|e| TestCaseError::fail(format!("step {step}: compact: {e}")))?;
            }
            Op::Restart => {
                settle(&engine, ops, step)?;
                engine
                    .close()
                    .map_err(|e| TestCaseError::fail(format!("step {step}: close: {e}")))?;
                engine = open(&disk, &clock, &seen);
            }
            Op::Crash { mode } => {
                // The engine is idle: everything it returned or recorded is synced, so any
                // crash mode must keep it all.
                settle(&engine, ops, step)?;
                disk.crash_now();
                let _ = engine.close();
                disk = disk.after_crash(CrashMode::all_for(step as u64)[*mode]);
                engine = open(&disk, &clock, &seen);
            }
        }
        settle(&engine, ops, step)?;
        let expected = model.deliver(clock.now_ms());
        let got = std::mem::take(&mut *seen.lock());
        prop_assert_eq!(got, expected, "step {} ({:?}): deliveries", step, op);
    }
    for (id, e) in &model.events {
        prop_assert!(e.finished, "{} never finished: {:?}", id, e);
        if let Some(job) = e.job {
            prop_assert!(model.jobs[&job].contains(id));
        }
    }
    engine.close().unwrap();
    Ok(())
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn the_engine_matches_the_model() {
    let cases = env_u32("AFTERLOG_MODEL_CASES", 128);
    let max_ops = env_u32("AFTERLOG_MODEL_OPS", 60) as usize;
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..=max_ops))| {
        run(&ops)?;
    });
    println!("{cases} cases of up to {max_ops} operations matched the model");
}

/// Found by the model: once compaction removed a finished job (and every event) and the
/// engine restarted, `cancel_job` of that job failed with "unknown job" and `cancel` of its
/// event with "unknown event", where before the compaction they answered `Ok(0)` and
/// `Ok(false)`.
#[test]
fn cancels_of_compacted_events_and_jobs_answer_finished() {
    let disk = MemStorage::new();
    let clock = ManualClock::new(START_MS);
    let seen: Seen = Arc::default();
    let engine = open(&disk, &clock, &seen);
    let job = engine.push("q", ["ack"], Duration::ZERO).unwrap();
    assert!(engine.wait_idle(HANG_GUARD), "hang: never idle");
    assert_eq!(seen.lock().len(), 1);
    assert_eq!(engine.cancel_job(job).unwrap(), 0);
    assert!(!engine.cancel(EventId(1)).unwrap());
    engine.compact_now().unwrap();
    engine.close().unwrap();
    let engine = open(&disk, &clock, &seen);
    assert_eq!(
        engine.cancel_job(job).unwrap(),
        0,
        "cancel_job after compaction"
    );
    assert!(
        !engine.cancel(EventId(1)).unwrap(),
        "cancel after compaction"
    );
    assert!(engine.cancel(EventId(2)).is_err(), "an id never given out");
    assert!(
        engine.cancel_job(JobId(2)).is_err(),
        "a job never given out"
    );
    engine.close().unwrap();
}

/// Found by the model: after `compact_now` removed every record, the active segment was
/// empty; recovery then numbered the next record after the last record it found (none)
/// rather than after the segment header's first sequence number, so the following reopen
/// refused the directory as corrupt ("sequence number 1 follows 3").
#[test]
fn a_reopen_after_compacting_everything_away_reopens_again() {
    let disk = MemStorage::new();
    let clock = ManualClock::new(START_MS);
    let seen: Seen = Arc::default();
    let engine = open(&disk, &clock, &seen);
    engine.publish("a", "ack", After::NOW).unwrap();
    assert!(engine.wait_idle(HANG_GUARD), "hang: never idle");
    engine.compact_now().unwrap();
    engine.close().unwrap();
    let engine = open(&disk, &clock, &seen);
    let id = engine.publish("a", "ack", After::NOW).unwrap();
    assert!(engine.wait_idle(HANG_GUARD), "hang: never idle");
    engine.close().unwrap();
    let engine = open(&disk, &clock, &seen);
    assert!(engine.wait_idle(HANG_GUARD), "hang: never idle");
    assert_eq!(
        std::mem::take(&mut *seen.lock()),
        [(EventId(1), 1), (id, 1)].into_iter().collect()
    );
    engine.close().unwrap();
}
