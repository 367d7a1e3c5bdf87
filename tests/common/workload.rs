//! A seeded engine workload on the fault-injecting storage, the model of what each call
//! returned, and the checks of a recovered disk against that model.
//!
//! A workload is a list of [`Step`]s derived from a seed: publishes (due now or later, with
//! handlers that acknowledge, fail once, fail always or ask for a retry), keyed publishes
//! (`publish_with` on three keys, so that keeps, replaces and restatements happen, with
//! priorities and key windows), pushes, cancels of events and jobs, pauses and resumes, clock
//! advances (which deliver, retry and expire), `compact_now`, and `start`. It runs on a
//! `ManualClock` with background compaction off, synchronous segment preparation, one worker
//! and 4 KiB segments, and waits for the engine to be idle after every step, so the storage
//! operations follow from the seed (their number and order still vary a little from run to
//! run).
//!
//! The [`Model`] records each call's outcome: `Ok` (the promise applies), or an error (the
//! call may or may not have reached the disk: unknown). Handlers check in the first life
//! that nothing is delivered before its due time, that no attempt starts after a cancel (or
//! a replace of the event) returned, and that nothing of a paused name is delivered.
//! [`check_log`] compares what recovery reads from a crashed disk with the model;
//! [`check_reopen`] opens an engine on it and checks what it delivers.

use afterlog::format::{CancelTarget, Record};
use afterlog::log::{Log, LogOptions};
use afterlog::storage::{MemStorage, Storage};
use afterlog::{
    After, Engine, EventId, HandlerError, JobId, KeyMode, KeyOutcome, ManualClock, Options,
    PublishOptions, Published, Reader, RetryOptions, RetryPolicy, RetryReason,
};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub const START_MS: i64 = 1_700_000_000_000;
/// The retry interval of a failed attempt (fixed policy).
pub const RETRY_MS: i64 = 60_000;
/// The `retry_after` of a handler's retry request.
pub const RETRY_AFTER_MS: i64 = 30_000;
/// Events older than this (after their first due time) expire.
pub const RETENTION_MS: i64 = 20 * 60_000;
/// The longest publish delay a workload uses.
pub const MAX_DELAY_MS: i64 = 5 * 60_000;
pub const SEGMENT_BYTES: u64 = 4096;
/// Real time to wait for the engine to become idle. It never takes this long unless the
/// engine hangs.
pub const IDLE: Duration = Duration::from_secs(20);
const NAMES: [&str; 2] = ["a", "q"];
/// The keys of keyed publishes (of name `a`): few, so that publishes find them taken.
pub const KEYS: u8 = 3;
/// The key window of a `Keep` publish that has one.
pub const WINDOW_MS: i64 = 2 * 60_000;

/// The key with index `k`.
pub fn key_bytes(k: u8) -> Vec<u8> {
    format!("key{k}").into_bytes()
}

/// SplitMix64.
pub fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn log_options() -> LogOptions {
    LogOptions {
        segment_bytes: SEGMENT_BYTES,
        prepare_in_background: false,
        ..LogOptions::default()
    }
}

pub fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .log_options(log_options())
        .compaction_interval(None)
        .workers(1)
        .retention(Duration::from_millis(RETENTION_MS as u64))
        .default_policy(RetryPolicy::fixed(Duration::from_millis(RETRY_MS as u64)))
}

/// What a handler does with an event, chosen by the prefix of its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Ack,
    FailOnce,
    FailAlways,
    RetryOnce,
}

impl Behaviour {
    fn prefix(self) -> &'static str {
        match self {
            Behaviour::Ack => "ack",
            Behaviour::FailOnce => "fail1",
            Behaviour::FailAlways => "fail",
            Behaviour::RetryOnce => "retry",
        }
    }

    fn of(body: &[u8]) -> Behaviour {
        let text = std::str::from_utf8(body).unwrap_or("");
        match text.split(':').next() {
            Some("fail1") => Behaviour::FailOnce,
            Some("fail") => Behaviour::FailAlways,
            Some("retry") => Behaviour::RetryOnce,
            _ => Behaviour::Ack,
        }
    }

    fn pick(rng: &mut u64) -> Behaviour {
        match splitmix(rng) % 8 {
            0 | 1 => Behaviour::FailOnce,
            2 => Behaviour::FailAlways,
            3 => Behaviour::RetryOnce,
            _ => Behaviour::Ack,
        }
    }
}

/// One step of a workload.
#[derive(Clone, Debug)]
pub enum Step {
    Start,
    Publish {
        behaviour: Behaviour,
        delay_ms: i64,
        pad: usize,
    },
    /// `publish_with` of name `a` with key `key` (an index below [`KEYS`]).
    PublishKeyed {
        behaviour: Behaviour,
        delay_ms: i64,
        key: u8,
        mode: KeyMode,
        /// `Keep` only: with a key window of [`WINDOW_MS`].
        window: bool,
        priority: i8,
    },
    Push {
        behaviours: Vec<Behaviour>,
        delay_ms: i64,
    },
    Pause {
        name: &'static str,
    },
    Resume {
        name: &'static str,
    },
    /// Cancels the `pick`-th (modulo) event whose publish returned `Ok`.
    Cancel {
        pick: usize,
    },
    /// Cancels the `pick`-th (modulo) job whose push returned `Ok`.
    CancelJob {
        pick: usize,
    },
    Advance {
        ms: i64,
    },
    Compact,
    /// `close`, then open the same disk again (a crash may hit the recovery).
    Restart,
}

fn pick_delay(rng: &mut u64) -> i64 {
    match splitmix(rng) % 6 {
        0 | 1 => 0,
        2 => 1_000,
        3 => 30_000,
        4 => 90_000,
        _ => MAX_DELAY_MS,
    }
}

fn pick_keyed(rng: &mut u64) -> Step {
    let mode = match splitmix(rng) % 3 {
        0 => KeyMode::Keep,
        1 => KeyMode::Replace,
        _ => KeyMode::ReplaceBody,
    };
    Step::PublishKeyed {
        behaviour: Behaviour::pick(rng),
        delay_ms: pick_delay(rng),
        key: (splitmix(rng) % u64::from(KEYS)) as u8,
        mode,
        window: mode == KeyMode::Keep && splitmix(rng).is_multiple_of(3),
        priority: [0, 1, -1, 5][(splitmix(rng) % 4) as usize],
    }
}

/// The steps of workload `seed`: 30 to 49 steps; `start` comes first, or after a few steps
/// (so some events wait for it), and the clock moves far enough for retries and expiry; the
/// engine is reopened after the last compaction and publishes once more. In the middle, `a`
/// is paused while events of it fall due (and, in a third of the workloads, the engine is
/// reopened while it is paused), then resumed.
pub fn steps(seed: u64) -> Vec<Step> {
    let mut rng = seed ^ 0xA5A5_0000_C0FF_EE00;
    let n = 30 + (splitmix(&mut rng) % 20) as usize;
    let start_at = (splitmix(&mut rng) % 6) as usize;
    let pause_at = n / 3 + (splitmix(&mut rng) % (n as u64 / 3)) as usize;
    let restart_paused = splitmix(&mut rng).is_multiple_of(3);
    let mut steps = Vec::with_capacity(n + 8);
    for i in 0..n {
        if i == start_at {
            steps.push(Step::Start);
        }
        if i == pause_at {
            steps.push(Step::Pause { name: "a" });
            steps.push(pick_keyed(&mut rng));
            steps.push(Step::Publish {
                behaviour: Behaviour::pick(&mut rng),
                delay_ms: 0,
                pad: 0,
            });
            steps.push(Step::Advance { ms: 30_000 });
            if restart_paused {
                steps.push(Step::Restart);
            }
            steps.push(Step::Resume { name: "a" });
            continue;
        }
        let step = match splitmix(&mut rng) % 23 {
            0..=4 => Step::Publish {
                behaviour: Behaviour::pick(&mut rng),
                delay_ms: pick_delay(&mut rng),
                pad: (splitmix(&mut rng) % 200) as usize,
            },
            5..=7 => pick_keyed(&mut rng),
            8 | 9 => Step::Push {
                behaviours: (0..1 + splitmix(&mut rng) % 3)
                    .map(|_| Behaviour::pick(&mut rng))
                    .collect(),
                delay_ms: pick_delay(&mut rng),
            },
            10 | 11 => Step::Cancel {
                pick: splitmix(&mut rng) as usize,
            },
            12 => Step::CancelJob {
                pick: splitmix(&mut rng) as usize,
            },
            13..=17 => Step::Advance {
                ms: match splitmix(&mut rng) % 4 {
                    0 => 1_000,
                    1 => 30_000,
                    2 => RETRY_MS,
                    _ => 7 * 60_000,
                },
            },
            18 | 19 => Step::Compact,
            20 => Step::Restart,
            21 => Step::Pause {
                name: NAMES[(splitmix(&mut rng) % 2) as usize],
            },
            _ => Step::Resume {
                name: NAMES[(splitmix(&mut rng) % 2) as usize],
            },
        };
        steps.push(step);
    }
    // A tail that lets retries run out into expiry, then compacts what finished.
    steps.push(Step::Advance { ms: RETENTION_MS });
    steps.push(Step::Advance { ms: RETRY_MS });
    steps.push(Step::Compact);
    // Reopen after the compaction and write again.
    steps.push(Step::Restart);
    steps.push(Step::Publish {
        behaviour: Behaviour::Ack,
        delay_ms: 0,
        pad: 0,
    });
    steps
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    Ok(T),
    /// The call failed (with this error): its record may or may not be on the disk.
    Unknown(String),
}

impl<T> Outcome<T> {
    fn of(r: afterlog::Result<T>) -> Outcome<T> {
        match r {
            Ok(v) => Outcome::Ok(v),
            Err(e) => Outcome::Unknown(e.to_string()),
        }
    }

    fn error(&self) -> Option<String> {
        match self {
            Outcome::Ok(_) => None,
            Outcome::Unknown(e) => Some(e.clone()),
        }
    }
}

/// A publish or a push, as tried.
#[derive(Clone, Debug)]
pub struct Tried {
    pub name: &'static str,
    pub bodies: Vec<Vec<u8>>,
    pub due_ms: i64,
    /// The event this call wrote: `Ok` with its id, or unknown. `None` for a push, and for a
    /// keyed publish that wrote no new event (`Kept`, `Updated`).
    pub publish: Option<Outcome<EventId>>,
    pub push: Option<Outcome<JobId>>,
    pub keyed: Option<Keyed>,
}

/// What a keyed publish asked for, and what it returned.
#[derive(Clone, Debug)]
pub struct Keyed {
    pub key: Vec<u8>,
    pub mode: KeyMode,
    pub window_ms: u64,
    pub priority: i8,
    pub result: Outcome<Published>,
}

impl Keyed {
    /// Whether this call may have cancelled the holder of its key: it returned
    /// `Replaced(holder)`, or it failed and might have replaced whichever event held the key.
    fn may_replace(&self, holder: EventId) -> bool {
        self.mode != KeyMode::Keep
            && match self.result {
                Outcome::Ok(p) => p.outcome == KeyOutcome::Replaced(holder),
                Outcome::Unknown(_) => true,
            }
    }

    /// Whether this call may have given the holder of its key its body: it returned
    /// `Updated`, or it failed and might have.
    fn may_restate(&self, holder: EventId) -> bool {
        self.mode == KeyMode::ReplaceBody
            && match self.result {
                Outcome::Ok(p) => p.outcome == KeyOutcome::Updated && p.id == holder,
                Outcome::Unknown(_) => true,
            }
    }
}

/// A `pause` (`paused`) or `resume` call.
#[derive(Clone, Debug)]
pub struct PauseCall {
    pub name: &'static str,
    pub paused: bool,
    /// Whether it had something to write: the engine said the name was not yet in that state.
    pub writes: bool,
    pub outcome: Outcome<()>,
}

/// One handler call in the first life.
#[derive(Clone, Debug)]
pub struct Call {
    pub id: EventId,
    pub attempt: u32,
    pub now_ms: i64,
    pub ok: bool,
}

/// What the first life's handlers see and check.
#[derive(Default)]
pub struct Live {
    /// body → first due time, filled before the publish is called.
    due_of: HashMap<Vec<u8>, i64>,
    /// Events whose cancel returned `Ok(true)`, and jobs whose cancel returned `Ok`.
    cancelled: BTreeSet<EventId>,
    cancelled_jobs: BTreeSet<JobId>,
    /// The names the engine says are paused, read after every pause, resume and reopen.
    paused: BTreeSet<String>,
    /// event → (time of the last failure, delay before its retry).
    failed: HashMap<EventId, (i64, i64)>,
    pub calls: Vec<Call>,
    pub bodies: HashMap<EventId, Vec<u8>>,
    pub violations: Vec<String>,
}

/// Everything the first life tried and what each call returned.
#[derive(Default)]
pub struct Model {
    pub tried: Vec<Tried>,
    /// body → index in `tried`.
    pub by_body: HashMap<Vec<u8>, usize>,
    pub cancels: Vec<(EventId, Outcome<bool>)>,
    pub job_cancels: Vec<(JobId, Outcome<u64>)>,
    pub pauses: Vec<PauseCall>,
    /// Event id → index in `tried`, for publishes that returned `Ok`.
    pub by_id: HashMap<EventId, usize>,
    pub compaction_tried: bool,
    /// The latest clock time of the life.
    pub last_ms: i64,
    /// Every publish, push and cancel that writes: the number of storage operations done
    /// before the call, and what it returned (`None`: `Ok`).
    pub returns: Vec<(u64, Option<String>)>,
    /// Errors of a `Restart`'s open on a disk that had not crashed.
    pub reopen_errors: Vec<String>,
    /// The number of storage operations done before each `Restart` reopened the disk.
    pub reopened_at: Vec<u64>,
    pub live: Arc<Mutex<Live>>,
}

impl Model {
    /// Whether the event of `tried[t]` (with `id`, `job` if known) may have finished
    /// (acknowledged, cancelled, replaced, expired), so that a compaction may have removed it.
    fn may_be_finished(&self, t: usize, id: Option<EventId>, job: Option<JobId>) -> bool {
        let tried = &self.tried[t];
        let live = self.live.lock();
        let handled = live.calls.iter().any(|c| {
            c.ok && (Some(c.id) == id
                || live
                    .bodies
                    .get(&c.id)
                    .is_some_and(|b| tried.bodies.contains(b)))
        });
        handled
            || id.is_some_and(|id| self.cancels.iter().any(|(c, _)| *c == id))
            || job.is_some_and(|j| self.job_cancels.iter().any(|(c, _)| *c == j))
            || id.is_some_and(|id| self.may_be_replaced(t, id))
            // Expired at an attempt, or dropped at a failure whose retry would fall due
            // past the retention.
            || self.last_ms + RETRY_MS > tried.due_ms + RETENTION_MS
    }

    /// Whether a keyed publish after `tried[t]` (event `id`), on the same key, may have
    /// replaced it.
    fn may_be_replaced(&self, t: usize, id: EventId) -> bool {
        let Some(key) = self.tried[t].keyed.as_ref().map(|k| &k.key) else {
            return false;
        };
        self.tried[t + 1..]
            .iter()
            .filter_map(|u| u.keyed.as_ref())
            .any(|k| k.key == *key && k.may_replace(id))
    }

    /// The paused states `name` may recover in: that of its last call that wrote and
    /// returned `Ok` (not paused if none did), and that of every failed call after it. (A call
    /// that had nothing to write answered from memory, which does not know whether a failed
    /// call reached the disk.)
    pub fn pause_states(&self, name: &str) -> BTreeSet<bool> {
        let calls: Vec<&PauseCall> = self.pauses.iter().filter(|c| c.name == name).collect();
        let last_ok = calls
            .iter()
            .rposition(|c| c.writes && c.outcome == Outcome::Ok(()));
        let mut states = BTreeSet::from([last_ok.is_some_and(|i| calls[i].paused)]);
        states.extend(
            calls[last_ok.map_or(0, |i| i + 1)..]
                .iter()
                .map(|c| c.paused),
        );
        states
    }
}

fn register(engine: &Engine, live: &Arc<Mutex<Live>>, clock: &ManualClock) {
    for name in NAMES {
        let live = live.clone();
        let clock = clock.clone();
        engine.on(name, move |event, _| {
            let now_ms = clock.now_ms();
            let body = event.body();
            let behaviour = Behaviour::of(body);
            let mut l = live.lock();
            let id = event.id();
            l.bodies.insert(id, body.to_vec());
            if l.paused.contains(name) {
                l.violations.push(format!(
                    "{id} attempt {} delivered while {name} is paused",
                    event.attempt()
                ));
            }
            match l.due_of.get(body) {
                Some(&due) if now_ms < due => l.violations.push(format!(
                    "{id} attempt {} delivered at {now_ms}, before its due time {due}",
                    event.attempt()
                )),
                Some(_) => {}
                None => l
                    .violations
                    .push(format!("{id} delivered, never published")),
            }
            if let Some(&(failed_ms, delay_ms)) = l.failed.get(&id)
                && now_ms < failed_ms + delay_ms
            {
                l.violations.push(format!(
                    "{id} attempt {} at {now_ms}, before its retry at {}",
                    event.attempt(),
                    failed_ms + delay_ms
                ));
            }
            if l.cancelled.contains(&id)
                || event.job().is_some_and(|j| l.cancelled_jobs.contains(&j))
            {
                l.violations.push(format!(
                    "{id} attempt {} started after its cancel returned",
                    event.attempt()
                ));
            }
            let result = match (behaviour, event.attempt()) {
                (Behaviour::FailAlways, _) | (Behaviour::FailOnce, 1) => {
                    l.failed.insert(id, (now_ms, RETRY_MS));
                    Err(HandlerError::msg("fails"))
                }
                (Behaviour::RetryOnce, 1) => {
                    l.failed.insert(id, (now_ms, RETRY_AFTER_MS));
                    Err(HandlerError::retry(RetryOptions {
                        retry_after: Duration::from_millis(RETRY_AFTER_MS as u64),
                        reason: RetryReason::UpstreamRateLimited,
                        data: b"later".to_vec(),
                    }))
                }
                _ => Ok(()),
            };
            l.calls.push(Call {
                id,
                attempt: event.attempt(),
                now_ms,
                ok: result.is_ok(),
            });
            result
        });
    }
}

/// Runs workload `steps` on `disk` until it ends or the disk crashes; returns the model.
pub fn run(disk: &MemStorage, steps: &[Step], tag: u64) -> Model {
    let clock = ManualClock::new(START_MS);
    let mut model = Model {
        last_ms: START_MS,
        ..Model::default()
    };
    let Ok(mut engine) = Engine::open_storage(Arc::new(disk.clone()), options(&clock)) else {
        return model;
    };
    register(&engine, &model.live, &clock);
    let mut ok_ids: Vec<EventId> = Vec::new();
    let mut ok_jobs: Vec<JobId> = Vec::new();
    let mut started = false;
    for (i, step) in steps.iter().enumerate() {
        if disk.crashed() {
            break;
        }
        let now_ms = clock.now_ms();
        match step {
            Step::Start => {
                engine.start();
                started = true;
            }
            Step::Publish {
                behaviour,
                delay_ms,
                pad,
            } => {
                let mut body = format!("{}:{tag}:{i}:", behaviour.prefix()).into_bytes();
                body.resize(body.len() + pad, b'.');
                let due_ms = now_ms + delay_ms;
                model.live.lock().due_of.insert(body.clone(), due_ms);
                let after = if *delay_ms == 0 {
                    After::NOW
                } else {
                    After::delay(Duration::from_millis(*delay_ms as u64))
                };
                let ops = disk.ops();
                // Every other step goes through the async call: its future, polled to the end.
                let outcome = Outcome::of(if i % 2 == 0 {
                    engine.publish("a", &body, after)
                } else {
                    super::block_on(engine.publish_async("a", &body, after))
                });
                model.returns.push((ops, outcome.error()));
                if let Outcome::Ok(id) = outcome {
                    ok_ids.push(id);
                    model.by_id.insert(id, model.tried.len());
                }
                model.by_body.insert(body.clone(), model.tried.len());
                model.tried.push(Tried {
                    name: "a",
                    bodies: vec![body],
                    due_ms,
                    publish: Some(outcome),
                    push: None,
                    keyed: None,
                });
            }
            Step::PublishKeyed {
                behaviour,
                delay_ms,
                key,
                mode,
                window,
                priority,
            } => {
                let body = format!("{}:{tag}:{i}:key{key}", behaviour.prefix()).into_bytes();
                let due_ms = now_ms + delay_ms;
                model.live.lock().due_of.insert(body.clone(), due_ms);
                let key = key_bytes(*key);
                let window_ms = if *window { WINDOW_MS as u64 } else { 0 };
                let mut options = PublishOptions::default()
                    .key(&key, *mode)
                    .priority(*priority);
                if *window {
                    options = options.key_window(Duration::from_millis(window_ms));
                }
                let after = if *delay_ms == 0 {
                    After::NOW
                } else {
                    After::delay(Duration::from_millis(*delay_ms as u64))
                };
                let ops = disk.ops();
                let result = Outcome::of(engine.publish_with("a", &body, after, options));
                let publish = match &result {
                    Outcome::Ok(p) => {
                        let mut l = model.live.lock();
                        match p.outcome {
                            KeyOutcome::Replaced(holder) => {
                                l.cancelled.insert(holder);
                            }
                            // The holder keeps its due time.
                            KeyOutcome::Updated => {
                                let due = model.by_id.get(&p.id).map(|&t| model.tried[t].due_ms);
                                l.due_of.insert(body.clone(), due.unwrap_or(i64::MIN));
                            }
                            KeyOutcome::New | KeyOutcome::Kept => {}
                        }
                        drop(l);
                        match p.outcome {
                            KeyOutcome::New | KeyOutcome::Replaced(_) => {
                                ok_ids.push(p.id);
                                model.by_id.insert(p.id, model.tried.len());
                                Some(Outcome::Ok(p.id))
                            }
                            KeyOutcome::Kept | KeyOutcome::Updated => None,
                        }
                    }
                    Outcome::Unknown(e) => {
                        if *mode == KeyMode::ReplaceBody {
                            // It may have restated a holder due earlier.
                            model.live.lock().due_of.insert(body.clone(), i64::MIN);
                        }
                        Some(Outcome::Unknown(e.clone()))
                    }
                };
                // `Kept` is an answer from memory, not a write.
                if !matches!(&result, Outcome::Ok(p) if p.outcome == KeyOutcome::Kept) {
                    model.returns.push((ops, result.error()));
                }
                model.by_body.insert(body.clone(), model.tried.len());
                model.tried.push(Tried {
                    name: "a",
                    bodies: vec![body],
                    due_ms,
                    publish,
                    push: None,
                    keyed: Some(Keyed {
                        key,
                        mode: *mode,
                        window_ms,
                        priority: *priority,
                        result,
                    }),
                });
            }
            Step::Pause { name } | Step::Resume { name } => {
                let paused = matches!(step, Step::Pause { .. });
                let writes = engine.paused().iter().any(|p| p == name) != paused;
                if !paused {
                    // Delivery may start as soon as the resume is applied, before it returns.
                    model.live.lock().paused.remove(*name);
                }
                let ops = disk.ops();
                let outcome = Outcome::of(if paused {
                    engine.pause(name)
                } else {
                    engine.resume(name)
                });
                // Pausing a paused name is an answer from memory, not a write.
                if writes {
                    model.returns.push((ops, outcome.error()));
                }
                let now_paused: BTreeSet<String> = engine.paused().into_iter().collect();
                let mut l = model.live.lock();
                if outcome == Outcome::Ok(()) && now_paused.contains(*name) != paused {
                    l.violations.push(format!(
                        "{} of {name} returned Ok, paused() says {now_paused:?}",
                        if paused { "pause" } else { "resume" }
                    ));
                }
                l.paused = now_paused;
                drop(l);
                model.pauses.push(PauseCall {
                    name,
                    paused,
                    writes,
                    outcome,
                });
            }
            Step::Push {
                behaviours,
                delay_ms,
            } => {
                let bodies: Vec<Vec<u8>> = behaviours
                    .iter()
                    .enumerate()
                    .map(|(k, b)| format!("{}:{tag}:{i}:{k}", b.prefix()).into_bytes())
                    .collect();
                let due_ms = now_ms + delay_ms;
                {
                    let mut l = model.live.lock();
                    for b in &bodies {
                        l.due_of.insert(b.clone(), due_ms);
                    }
                }
                let delay = Duration::from_millis(*delay_ms as u64);
                let ops = disk.ops();
                let outcome = Outcome::of(if i % 2 == 0 {
                    engine.push("q", &bodies, delay)
                } else {
                    super::block_on(engine.push_async("q", &bodies, delay))
                });
                model.returns.push((ops, outcome.error()));
                if let Outcome::Ok(job) = outcome {
                    ok_jobs.push(job);
                }
                for b in &bodies {
                    model.by_body.insert(b.clone(), model.tried.len());
                }
                model.tried.push(Tried {
                    name: "q",
                    bodies,
                    due_ms,
                    publish: None,
                    push: Some(outcome),
                    keyed: None,
                });
            }
            Step::Cancel { pick } => {
                if let Some(&id) = ok_ids.get(pick % ok_ids.len().max(1)) {
                    let ops = disk.ops();
                    let outcome = Outcome::of(if i % 2 == 0 {
                        engine.cancel(id)
                    } else {
                        super::block_on(engine.cancel_async(id))
                    });
                    // `Ok(false)` (not pending) is an answer from memory, not a write.
                    if outcome != Outcome::Ok(false) {
                        model.returns.push((ops, outcome.error()));
                    }
                    if outcome == Outcome::Ok(true) {
                        model.live.lock().cancelled.insert(id);
                    }
                    model.cancels.push((id, outcome));
                }
            }
            Step::CancelJob { pick } => {
                if let Some(&job) = ok_jobs.get(pick % ok_jobs.len().max(1)) {
                    let ops = disk.ops();
                    let outcome = Outcome::of(if i % 2 == 0 {
                        engine.cancel_job(job)
                    } else {
                        super::block_on(engine.cancel_job_async(job))
                    });
                    model.returns.push((ops, outcome.error()));
                    if matches!(outcome, Outcome::Ok(_)) {
                        model.live.lock().cancelled_jobs.insert(job);
                    }
                    model.job_cancels.push((job, outcome));
                }
            }
            Step::Advance { ms } => {
                clock.advance_ms(*ms);
                model.last_ms = clock.now_ms();
            }
            Step::Compact => {
                model.compaction_tried = true;
                let _ = engine.compact_now();
            }
            Step::Restart => {
                stopped(engine.close(), &model.live);
                model.reopened_at.push(disk.ops());
                match Engine::open_storage(Arc::new(disk.clone()), options(&clock)) {
                    Ok(reopened) => engine = reopened,
                    Err(e) => {
                        if !disk.crashed() {
                            model.reopen_errors.push(e.to_string());
                        }
                        break;
                    }
                }
                let paused: BTreeSet<String> = engine.paused().into_iter().collect();
                let mut l = model.live.lock();
                // Whether a failure's retry record reached the log before an I/O error is
                // unknown: an attempt with no durable outcome is due again at once.
                l.failed.clear();
                for name in NAMES {
                    let states = model.pause_states(name);
                    if !states.contains(&paused.contains(name)) {
                        l.violations.push(format!(
                            "reopened with {name} paused: {}, its calls {:?} allow {states:?}",
                            paused.contains(name),
                            model.pauses
                        ));
                    }
                }
                l.paused = paused;
                drop(l);
                register(&engine, &model.live, &clock);
                if started {
                    engine.start();
                }
            }
        }
        // Before `start` nothing is delivered, so due events keep the engine busy.
        if started {
            engine.wait_idle(IDLE);
        }
    }
    stopped(engine.close(), &model.live);
    model
}

/// Notes a violation if `close` says a thread of the engine panicked.
fn stopped(closed: afterlog::Result<()>, live: &Mutex<Live>) {
    if let Err(e @ afterlog::Error::Panicked { .. }) = closed {
        live.lock().violations.push(e.to_string());
    }
}

/// What recovery reads from a disk.
#[derive(Default, Debug)]
pub struct Scanned {
    /// id → (name, body as published, due, job).
    pub published: BTreeMap<EventId, (String, Vec<u8>, i64, Option<JobId>)>,
    pub acked: BTreeSet<EventId>,
    pub dropped: BTreeSet<EventId>,
    pub cancelled: BTreeSet<EventId>,
    pub cancelled_jobs: BTreeSet<JobId>,
    /// The highest attempt number any record names.
    pub attempts: BTreeMap<EventId, u32>,
    /// (event, attempt) of every ack and retry record.
    pub outcomes: Vec<(EventId, u32, bool)>,
    /// The due time of the latest retry record.
    pub retry_due: BTreeMap<EventId, i64>,
    /// Names paused by the latest pause records.
    pub paused: BTreeSet<String>,
    /// The options of every keyed event, from its publish record.
    pub keys: BTreeMap<EventId, KeyedRecord>,
    /// Holder → the event whose record replaced it (cancelled it in the same record).
    pub replaced: BTreeMap<EventId, EventId>,
    /// Every restatement record, in log order.
    pub restatements: Vec<Restatement>,
    /// The body of each restated event (its last applied restatement's).
    pub restated: BTreeMap<EventId, Vec<u8>>,
    /// Every body any publish record holds (restated ones too).
    pub bodies: BTreeSet<Vec<u8>>,
}

/// The key options a kind-7 record gave a new event.
#[derive(Clone, Debug)]
pub struct KeyedRecord {
    pub key: Vec<u8>,
    pub priority: i8,
    pub window_ms: u64,
    pub replaces: Option<EventId>,
}

/// A kind-7 record restating event `id` with a new body.
#[derive(Clone, Debug)]
pub struct Restatement {
    pub id: EventId,
    pub name: String,
    pub key: Vec<u8>,
    pub body: Vec<u8>,
    pub due_ms: i64,
    pub priority: i8,
    /// The event was pending (as the records before it say), so the body is now its.
    pub applied: bool,
}

impl Scanned {
    fn add(&mut self, record: &Record<'_>) {
        let attempt = |s: &mut Scanned, id: EventId, n: u32| {
            let a = s.attempts.entry(id).or_default();
            *a = (*a).max(n);
        };
        match record {
            Record::Publish(p) => {
                let options = p.options();
                for e in p.events() {
                    self.bodies.insert(e.body.to_vec());
                    if let Some(o) = options.filter(|o| o.restates) {
                        let applied = self.published.contains_key(&e.id) && !self.is_finished(e.id);
                        if applied {
                            self.restated.insert(e.id, e.body.to_vec());
                        }
                        self.restatements.push(Restatement {
                            id: e.id,
                            name: e.name.to_owned(),
                            key: o.key.to_vec(),
                            body: e.body.to_vec(),
                            due_ms: e.due_ms,
                            priority: o.priority,
                            applied,
                        });
                        continue;
                    }
                    if self.published.contains_key(&e.id) {
                        continue;
                    }
                    self.published
                        .insert(e.id, (e.name.to_owned(), e.body.to_vec(), e.due_ms, p.job));
                    let Some(o) = options else { continue };
                    if let Some(holder) = o.replaces
                        && self.published.contains_key(&holder)
                        && !self.is_finished(holder)
                    {
                        self.replaced.insert(holder, e.id);
                    }
                    if !o.key.is_empty() {
                        self.keys.insert(
                            e.id,
                            KeyedRecord {
                                key: o.key.to_vec(),
                                priority: o.priority,
                                window_ms: o.window_ms,
                                replaces: o.replaces,
                            },
                        );
                    }
                }
            }
            Record::Pause(p) => {
                if p.paused {
                    self.paused.insert(p.name.to_owned());
                } else {
                    self.paused.remove(p.name);
                }
            }
            // A finished job's counts: nothing the model predicts.
            Record::PurgeDead(_) | Record::JobDone(_) => {}
            Record::Attempt(a) => attempt(self, a.event, a.attempt),
            Record::Retry(r) => {
                attempt(self, r.event, r.attempt);
                self.outcomes.push((r.event, r.attempt, false));
                let due = self.retry_due.entry(r.event).or_insert(r.next_due_ms);
                *due = (*due).max(r.next_due_ms);
            }
            Record::Ack(a) => {
                attempt(self, a.event, a.attempt);
                self.outcomes.push((a.event, a.attempt, true));
                self.acked.insert(a.event);
            }
            Record::Drop(d) => {
                attempt(self, d.event, d.attempt);
                self.dropped.insert(d.event);
            }
            Record::Cancel(c) => match c.target {
                CancelTarget::Event(id) => {
                    self.cancelled.insert(id);
                }
                CancelTarget::Job(job) => {
                    self.cancelled_jobs.insert(job);
                }
            },
        }
    }

    /// Acknowledged, dropped or cancelled, alone or with its job.
    pub fn is_finished(&self, id: EventId) -> bool {
        self.acked.contains(&id)
            || self.dropped.contains(&id)
            || self.cancelled.contains(&id)
            || self.replaced.contains_key(&id)
            || self
                .published
                .get(&id)
                .and_then(|p| p.3)
                .is_some_and(|job| self.cancelled_jobs.contains(&job))
    }

    /// The body an event is delivered with: its last restatement's, or its publish's.
    pub fn body(&self, id: EventId) -> Option<&[u8]> {
        self.restated
            .get(&id)
            .or_else(|| self.published.get(&id).map(|p| &p.1))
            .map(Vec::as_slice)
    }

    fn has_body(&self, body: &[u8]) -> Option<(EventId, Option<JobId>)> {
        self.published
            .iter()
            .find(|(_, p)| p.1 == body)
            .map(|(id, p)| (*id, p.3))
    }
}

/// Recovers `disk` the way an engine does (`Log::open`: cut the torn tail, finish or undo an
/// interrupted compaction) and reads every record.
pub fn recover(disk: &MemStorage) -> Result<Scanned, String> {
    let mut s = Scanned::default();
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    let (log, _) = Log::open(storage, log_options(), |_, record| {
        s.add(record);
        Ok(())
    })
    .map_err(|e| format!("recovery failed: {e}"))?;
    drop(log);
    Ok(s)
}

/// Checks what recovery read against the model: nothing returned `Ok` is lost (Promise 1),
/// nothing was invented (Promise 4), nothing finished came back (Promise 5); and for keys
/// and pauses: a `Kept` publish wrote nothing, a replace's new event and the cancel of its
/// holder are one record, a restated body is the one an `Ok` restatement gave (or that of a
/// later failed one), no two pending events of a name hold one key, and each name is paused
/// as its last `Ok` pause or resume left it (or as a later failed one would).
pub fn check_log(model: &Model, s: &Scanned) -> Result<(), String> {
    // Nothing invented: every publish matches one tried, with the id and job it returned.
    for (id, (name, body, due_ms, job)) in &s.published {
        let Some(&t) = model.by_body.get(body) else {
            return Err(format!(
                "recovered {id} with a body nobody published: {body:?}"
            ));
        };
        let t = &model.tried[t];
        if t.name != name || t.due_ms != *due_ms {
            return Err(format!(
                "recovered {id} differs from what was published: {t:?}"
            ));
        }
        if let Some(k) = &t.keyed {
            check_keyed_record(*id, *job, t, k, s)?;
            continue;
        }
        match (&t.publish, &t.push, job) {
            (Some(Outcome::Ok(ok)), _, None) if ok != id => {
                return Err(format!("publish returned {ok}, the log holds it as {id}"));
            }
            (Some(_), _, None) => {}
            (_, Some(Outcome::Ok(ok)), Some(j)) if ok != j => {
                return Err(format!("push returned {ok}, the log holds {id} in {j}"));
            }
            (_, Some(_), Some(_)) => {}
            _ => return Err(format!("recovered {id} with the wrong job {job:?}: {t:?}")),
        }
    }
    for r in &s.restatements {
        check_restatement(r, model, s)?;
    }
    let live = model.live.lock();
    for &(id, attempt, ok) in &s.outcomes {
        let called = live
            .calls
            .iter()
            .any(|c| c.id == id && c.attempt == attempt && c.ok == ok);
        if !called {
            return Err(format!(
                "recovered an outcome (ok={ok}) of {id} attempt {attempt} no handler returned"
            ));
        }
    }
    for (&id, &attempt) in &s.attempts {
        let calls = live.calls.iter().filter(|c| c.id == id).count() as u32;
        if attempt > calls + 1 {
            return Err(format!(
                "recovered attempt {attempt} of {id} after {calls} calls"
            ));
        }
    }
    drop(live);
    for id in &s.cancelled {
        if !model.cancels.iter().any(|(c, _)| c == id) {
            return Err(format!("recovered a cancel of {id} nobody asked for"));
        }
    }
    for job in &s.cancelled_jobs {
        if !model.job_cancels.iter().any(|(c, _)| c == job) {
            return Err(format!("recovered a cancel of {job} nobody asked for"));
        }
    }
    // Nothing returned is lost, unless it finished and a compaction may have removed it.
    let compacted = model.compaction_tried;
    for (ti, t) in model.tried.iter().enumerate() {
        let ok_publish = matches!(t.publish, Some(Outcome::Ok(_)));
        let ok_job = match t.push {
            Some(Outcome::Ok(job)) => Some(job),
            _ => None,
        };
        if !ok_publish && ok_job.is_none() {
            continue;
        }
        let id = match t.publish {
            Some(Outcome::Ok(id)) => Some(id),
            _ => None,
        };
        for body in &t.bodies {
            // A keyed event may have been restated since: found by its id.
            let found = match (id, &t.keyed) {
                (Some(id), Some(_)) => s.published.get(&id).map(|p| (id, p.3)),
                _ => s.has_body(body),
            };
            match found {
                Some((_, job)) if ok_job.is_some() && job != ok_job => {
                    return Err(format!("job {ok_job:?} holds an event of {job:?}"));
                }
                Some(_) => {}
                None if compacted && model.may_be_finished(ti, id, ok_job) => {}
                None => {
                    let live = model.live.lock();
                    let ids: Vec<_> = live
                        .bodies
                        .iter()
                        .filter(|(_, b)| *b == body)
                        .map(|(i, _)| *i)
                        .collect();
                    let calls: Vec<_> = live.calls.iter().filter(|c| ids.contains(&c.id)).collect();
                    return Err(format!(
                        "lost a returned {} of {:?} (due {}, last {}; calls {calls:?})",
                        if ok_publish { "publish" } else { "push" },
                        String::from_utf8_lossy(body),
                        t.due_ms - START_MS,
                        model.last_ms - START_MS,
                    ));
                }
            }
        }
    }
    for (id, outcome) in &model.cancels {
        // Compaction may have removed the cancel only together with the publish.
        let may_be_gone = compacted && !s.published.contains_key(id);
        if *outcome == Outcome::Ok(true) && !s.cancelled.contains(id) && !may_be_gone {
            return Err(format!("lost the returned cancel of {id}"));
        }
    }
    for (job, outcome) in &model.job_cancels {
        let may_be_gone = compacted && !s.published.values().any(|p| p.3 == Some(*job));
        if matches!(outcome, Outcome::Ok(n) if *n > 0)
            && !s.cancelled_jobs.contains(job)
            && !may_be_gone
        {
            return Err(format!("lost the returned cancel of {job}"));
        }
    }
    // Every event settled by a returned cancel stays finished.
    for (id, outcome) in &model.cancels {
        if *outcome == Outcome::Ok(true) && s.published.contains_key(id) && !s.is_finished(*id) {
            return Err(format!("cancelled {id} is pending again"));
        }
    }
    check_keyed_calls(model, s)?;
    // One pending holder per key of a name.
    let mut holders: BTreeMap<(&str, &[u8]), EventId> = BTreeMap::new();
    for (id, k) in &s.keys {
        if s.is_finished(*id) {
            continue;
        }
        let name = s.published[id].0.as_str();
        if let Some(other) = holders.insert((name, &k.key), *id) {
            return Err(format!(
                "{other} and {id} are both pending and hold key {:?} of {name}",
                String::from_utf8_lossy(&k.key)
            ));
        }
    }
    for name in NAMES {
        let states = model.pause_states(name);
        let paused = s.paused.contains(name);
        if !states.contains(&paused) {
            return Err(format!(
                "{name} recovered paused: {paused}, but its pause and resume calls allow \
                 {states:?}: {:?}",
                model.pauses
            ));
        }
    }
    if let Some(name) = s.paused.iter().find(|n| !NAMES.contains(&n.as_str())) {
        return Err(format!("recovered a pause of {name} nobody asked for"));
    }
    Ok(())
}

/// A recovered event written by keyed publish `t`: the id it returned, the options it asked
/// for, and the holder it returned as replaced named in the same record.
fn check_keyed_record(
    id: EventId,
    job: Option<JobId>,
    t: &Tried,
    k: &Keyed,
    s: &Scanned,
) -> Result<(), String> {
    match (&t.publish, job) {
        (Some(Outcome::Ok(ok)), None) if *ok != id => {
            return Err(format!(
                "publish_with returned {ok}, the log holds it as {id}"
            ));
        }
        (Some(_), None) => {}
        _ => {
            return Err(format!(
                "recovered {id} of a keyed publish that wrote no event (job {job:?}): {t:?}"
            ));
        }
    }
    let Some(r) = s.keys.get(&id) else {
        return Err(format!("recovered keyed {id} without its key: {t:?}"));
    };
    if r.key != k.key || r.priority != k.priority || r.window_ms != k.window_ms {
        return Err(format!(
            "recovered {id} with options {r:?}, asked for {k:?}"
        ));
    }
    if let Outcome::Ok(p) = &k.result {
        let replaces = match p.outcome {
            KeyOutcome::Replaced(holder) => Some(holder),
            _ => None,
        };
        if r.replaces != replaces {
            return Err(format!(
                "publish_with returned {:?}, the record of {id} replaces {:?}",
                p.outcome, r.replaces
            ));
        }
    }
    if let Some(holder) = r.replaces
        && let Some(h) = s.keys.get(&holder)
        && (h.key != r.key || s.published[&holder].0 != s.published[&id].0)
    {
        return Err(format!(
            "{id} replaced {holder}, which holds another key: {h:?}"
        ));
    }
    Ok(())
}

/// A restatement record: its body is that of a `ReplaceBody` publish of the event's key that
/// returned `Updated` with this event, or failed; it keeps the event's name, due time, key
/// and priority.
fn check_restatement(r: &Restatement, model: &Model, s: &Scanned) -> Result<(), String> {
    let id = r.id;
    let k = model
        .by_body
        .get(&r.body)
        .and_then(|&t| model.tried[t].keyed.as_ref());
    let Some(k) = k.filter(|k| k.may_restate(id)) else {
        return Err(format!(
            "recovered a restatement of {id} to {:?} that no publish_with returned or left \
             in doubt: {:?}",
            String::from_utf8_lossy(&r.body),
            model.by_body.get(&r.body).map(|&t| &model.tried[t])
        ));
    };
    if r.key != k.key {
        return Err(format!(
            "restatement of {id} under another key: {r:?}, {k:?}"
        ));
    }
    if let (Some(p), Some(o)) = (s.published.get(&id), s.keys.get(&id)) {
        if p.0 != r.name || p.2 != r.due_ms || o.key != r.key || o.priority != r.priority {
            return Err(format!(
                "restatement {r:?} changes more than the body of {id}: {p:?} {o:?}"
            ));
        }
    } else if r.applied {
        return Err(format!("restatement of {id}, not keyed, applied: {r:?}"));
    }
    Ok(())
}

/// What keyed publishes returned: `Kept` wrote nothing; after `Replaced(holder)` the holder
/// is finished (the new event's record cancels it; compaction may drop that record only with
/// the holder's publish); after `Updated` the holder has the new body (or a later one).
fn check_keyed_calls(model: &Model, s: &Scanned) -> Result<(), String> {
    let compacted = model.compaction_tried;
    for (ti, t) in model.tried.iter().enumerate() {
        let Some(Keyed {
            key,
            result: Outcome::Ok(p),
            ..
        }) = &t.keyed
        else {
            continue;
        };
        let body = &t.bodies[0];
        match p.outcome {
            KeyOutcome::Kept => {
                if s.bodies.contains(body) {
                    return Err(format!(
                        "publish_with returned Kept({}), the log holds its body {:?}",
                        p.id,
                        String::from_utf8_lossy(body)
                    ));
                }
                if let Some(h) = s.keys.get(&p.id)
                    && h.key != *key
                {
                    return Err(format!("Kept by {}, which holds another key {h:?}", p.id));
                }
            }
            KeyOutcome::Replaced(holder) => {
                // The new event's record cancels the holder (`check_keyed_record` checks it
                // names it): whether or not it survived compaction, the holder is not pending.
                if s.published.contains_key(&holder) && !s.is_finished(holder) {
                    return Err(format!(
                        "{holder} is pending, but publish_with returned Replaced({holder}) \
                         with {} (its record recovered: {})",
                        p.id,
                        s.published.contains_key(&p.id)
                    ));
                }
            }
            KeyOutcome::Updated => {
                let holder = p.id;
                let later: Vec<&Tried> = model.tried[ti + 1..]
                    .iter()
                    .filter(|u| {
                        u.keyed
                            .as_ref()
                            .is_some_and(|k| k.key == *key && k.may_restate(holder))
                    })
                    .collect();
                if later
                    .iter()
                    .any(|u| matches!(u.keyed.as_ref().unwrap().result, Outcome::Ok(_)))
                {
                    // A later Ok restatement is checked instead.
                    continue;
                }
                let mut allowed: Vec<&[u8]> = vec![body];
                allowed.extend(later.iter().map(|u| u.bodies[0].as_slice()));
                match s.body(holder) {
                    Some(_) if compacted && s.is_finished(holder) => {}
                    Some(b) if allowed.contains(&b) => {}
                    Some(b) => {
                        return Err(format!(
                            "{holder} recovered with body {:?}; publish_with returned Updated \
                             for {:?}",
                            String::from_utf8_lossy(b),
                            String::from_utf8_lossy(body)
                        ));
                    }
                    None if compacted || !model.by_id.contains_key(&holder) => {}
                    None => {
                        return Err(format!(
                            "lost {holder}, whose body publish_with returned Updated"
                        ));
                    }
                }
            }
            KeyOutcome::New => {}
        }
    }
    Ok(())
}

/// Opens an engine on the recovered disk and delivers: first at the crash's time, then, once
/// the names the log leaves paused are resumed, past every due time. The engine's index
/// agrees with the records (`check_index`) and its paused names with the pause records; nothing
/// of a paused name is delivered before the resume, and every event with its latest body. Every event the log holds unfinished is delivered once, with the next
/// attempt number, and never before its due time, unless it expired; nothing finished is
/// delivered (Promises 2 and 3); the engine opens and closes without error (Promise 4), and
/// a second reopen delivers nothing.
pub fn check_reopen(disk: &MemStorage, model: &Model, s: &Scanned) -> Result<(), String> {
    let clock = ManualClock::new(model.last_ms);
    let engine = Engine::open_storage(Arc::new(disk.clone()), options(&clock))
        .map_err(|e| format!("the engine does not reopen: {e}"))?;
    let paused: Vec<String> = s.paused.iter().cloned().collect();
    if engine.paused() != paused {
        return Err(format!(
            "the reopened engine has {:?} paused, the log {paused:?}",
            engine.paused()
        ));
    }
    check_index(disk, s)?;
    type Seen = (EventId, u32, i64, Vec<u8>, String);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    for name in NAMES {
        let seen = seen.clone();
        let clock = clock.clone();
        engine.on(name, move |event, _| {
            seen.lock().push((
                event.id(),
                event.attempt(),
                clock.now_ms(),
                event.body().to_vec(),
                name.to_owned(),
            ));
            Ok(())
        });
    }
    engine.start();
    let mut idle = engine.wait_idle(IDLE);
    if let Some(e) = seen.lock().iter().find(|e| paused.contains(&e.4)) {
        return Err(format!(
            "delivered {} of paused {} after the reopen",
            e.0, e.4
        ));
    }
    for name in &paused {
        engine
            .resume(name)
            .map_err(|e| format!("the reopened engine does not resume {name}: {e}"))?;
    }
    idle &= engine.wait_idle(IDLE);
    let end_ms = model.last_ms + MAX_DELAY_MS + RETRY_MS + 1;
    clock.set(end_ms);
    idle &= engine.wait_idle(IDLE);
    if !idle {
        return Err("the reopened engine never became idle".into());
    }
    let expired = engine.metrics().expired;
    engine
        .close()
        .map_err(|e| format!("the reopened engine does not close: {e}"))?;
    // Once more: everything was delivered or expired, so nothing is delivered again.
    let engine = Engine::open_storage(Arc::new(disk.clone()), options(&clock))
        .map_err(|e| format!("the engine does not reopen a second time: {e}"))?;
    if !engine.paused().is_empty() {
        return Err(format!(
            "resumed, then reopened with {:?} paused",
            engine.paused()
        ));
    }
    let again: Arc<Mutex<Vec<EventId>>> = Arc::default();
    for name in NAMES {
        let again = again.clone();
        engine.on(name, move |event, _| {
            again.lock().push(event.id());
            Ok(())
        });
    }
    engine.start();
    if !engine.wait_idle(IDLE) {
        return Err("the engine reopened a second time never became idle".into());
    }
    engine
        .close()
        .map_err(|e| format!("the engine reopened a second time does not close: {e}"))?;
    if !again.lock().is_empty() {
        return Err(format!(
            "delivered again after a clean restart: {:?}",
            again.lock()
        ));
    }
    let seen = seen.lock();
    let mut delivered: BTreeMap<EventId, Vec<u32>> = BTreeMap::new();
    for (id, attempt, now_ms, body, _) in seen.iter() {
        let (id, attempt, now_ms) = (*id, *attempt, *now_ms);
        let Some(p) = s.published.get(&id) else {
            return Err(format!("delivered {id}, which the log does not hold"));
        };
        if s.body(id) != Some(body.as_slice()) {
            return Err(format!(
                "delivered {id} with body {:?}, the log holds {:?}",
                String::from_utf8_lossy(body),
                s.body(id).map(String::from_utf8_lossy)
            ));
        }
        if s.is_finished(id) {
            return Err(format!("delivered finished {id} again"));
        }
        let due_ms = s.retry_due.get(&id).copied().unwrap_or(p.2);
        // A crash during an attempt makes the event due at once; otherwise its due time holds.
        let running = s
            .attempts
            .get(&id)
            .is_some_and(|&a| !s.outcomes.iter().any(|&(e, n, _)| e == id && n == a));
        if now_ms < due_ms && !running {
            return Err(format!(
                "delivered {id} at {now_ms}, before its due time {due_ms}"
            ));
        }
        delivered.entry(id).or_default().push(attempt);
    }
    let mut expired_here = 0;
    for (&id, p) in &s.published {
        if s.is_finished(id) {
            continue;
        }
        let next = s.attempts.get(&id).copied().unwrap_or(0) + 1;
        match delivered.get(&id) {
            Some(attempts) if attempts == &vec![next] => {}
            None if end_ms > p.2 + RETENTION_MS => expired_here += 1,
            other => {
                return Err(format!(
                    "{id} after attempt {} was delivered as {other:?}, expected [{next}] once",
                    next - 1
                ));
            }
        }
    }
    if expired != expired_here {
        return Err(format!(
            "{expired} expired on reopen, {expired_here} could have"
        ));
    }
    Ok(())
}

/// The index of the engine open on `disk` (read by a `Reader` beside it) against the records
/// recovered: the same events, each pending iff no record finished it (a replaced holder is
/// cancelled iff the record of the event that replaced it was recovered), with the length of
/// its latest body.
fn check_index(disk: &MemStorage, s: &Scanned) -> Result<(), String> {
    let rows = Reader::open_storage(Arc::new(disk.clone()))
        .and_then(|r| r.events())
        .map_err(|e| format!("a reader beside the reopened engine fails: {e}"))?;
    let rows: BTreeMap<EventId, _> = rows.into_iter().map(|r| (r.id, r)).collect();
    for (&id, p) in &s.published {
        let Some(row) = rows.get(&id) else {
            return Err(format!("the reopened engine does not hold {id}: {p:?}"));
        };
        let finished = s.is_finished(id);
        if row.state.is_pending() == finished {
            return Err(format!(
                "the reopened engine holds {id} as {:?}, the records say finished: {finished} \
                 (replaced by {:?})",
                row.state,
                s.replaced.get(&id)
            ));
        }
        let body = s.body(id).map_or(0, |b| b.len() as u64);
        if row.body_bytes != body && !finished {
            return Err(format!(
                "the reopened engine holds {id} with a body of {} bytes, the records {body}",
                row.body_bytes
            ));
        }
    }
    if let Some(id) = rows.keys().find(|id| !s.published.contains_key(id)) {
        return Err(format!(
            "the reopened engine holds {id}, the records do not"
        ));
    }
    Ok(())
}
