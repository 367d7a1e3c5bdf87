//! A seeded engine workload on the fault-injecting storage, the model of what each call
//! returned, and the checks of a recovered disk against that model.
//!
//! A workload is a list of [`Step`]s derived from a seed: publishes (due now or later, with
//! handlers that acknowledge, fail once, fail always or ask for a retry), publishes of
//! [`NO_HANDLER`] (a name with no handler: each dies, acknowledged as ignored, when it falls
//! due), keyed publishes (`publish_with` on three keys, so that keeps, replaces and
//! restatements happen, with priorities and key windows), pushes, cancels of events and jobs,
//! pauses and resumes, schedules (`schedule` of `s0` or `s1`, created or redefined, of name
//! `a` or `q`, every 30 or 60 s, with each catch-up policy; `unschedule`), redrives of a
//! listed dead letter and purges of them, clock advances (which deliver, retry, expire and
//! fire schedules), `compact_now`, close and reopen (sometimes 90 s later, so schedules catch
//! up), and `start`. It runs on a `ManualClock` with background compaction off, synchronous
//! segment preparation, one worker and 4 KiB segments, and waits for the engine to be idle
//! after every step (the schedules thread included), so the storage operations follow from
//! the seed (their number and order still vary a little from run to run).
//!
//! The [`Model`] records each call's outcome: `Ok` (the promise applies), or an error (the
//! call may or may not have reached the disk: unknown). Handlers check in the first life
//! that nothing is delivered before its due time (an occurrence's: its time), that no
//! attempt starts after a cancel (or a replace of the event) returned, and that nothing of a
//! paused name is delivered; they record each occurrence delivered (schedule, time, event),
//! and the life fails if one occurrence was delivered by two events. After each schedule,
//! unschedule, redrive and purge that returned `Ok`, `schedules()` and `dead_letters()` say
//! what it did.
//!
//! [`check_log`] compares what recovery reads from a crashed disk with the model, including
//! kind-9 (schedule) and kind-10 (purge) records and the redrive flag: every schedule record
//! was asked for and leaves its schedule as the last `Ok` call did (or a later failed one
//! would); no schedule has two pending occurrences; every `Ok` redrive is a publish flagged
//! as the redrive of its dead letter, which is dead no more; no `Ok` purge leaves a letter it
//! counted. [`check_reopen`] opens an engine on the disk and checks what it holds (index,
//! pauses, dead letters, schedules, also through a `Reader`) and delivers: across both lives
//! each occurrence is delivered by one event; every schedule has one pending occurrence after
//! start, which fires; dead letters are those the records leave, and the two it redrives are
//! delivered.

use afterlog::format::{
    AckOutcome, CATCH_UP_ALL, CATCH_UP_LATEST, CATCH_UP_SKIP, CancelTarget, Publish, Record,
    ScheduleDef,
};
use afterlog::log::{Log, LogOptions};
use afterlog::storage::{MemStorage, Storage};
use afterlog::{
    After, CatchUp, DeadLetter, DeadReason, Engine, EventId, HandlerError, JobId, KeyMode,
    KeyOutcome, ManualClock, Options, PublishOptions, Published, Reader, Recurring, RetryOptions,
    RetryPolicy, RetryReason, ScheduleInfo,
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
/// The name of events no handler is registered for in the workload: each dies (acknowledged
/// as ignored, kept as a dead letter) when it falls due after `start`. The reopened engines
/// of [`check_reopen`] register one, late, so what is left of the name is delivered.
pub const NO_HANDLER: &str = "nohandler";
/// The schedules of a workload: `s0` and `s1`.
pub const SCHEDULES: u8 = 2;
/// Enough for every dead letter of a workload.
const ALL_DEAD: usize = 10_000;
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
    /// A publish of `name` (`a`, or [`NO_HANDLER`]).
    Publish {
        name: &'static str,
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
    /// `close`, then open the same disk again (a crash may hit the recovery) `down_ms`
    /// later, so that schedules catch up on what they missed meanwhile.
    Restart {
        down_ms: i64,
    },
    /// Redrives the `pick`-th (modulo) dead letter `dead_letters` lists, if there is one.
    Redrive {
        pick: usize,
    },
    PurgeDead,
    /// Creates or redefines schedule `s{id}` (`id` below [`SCHEDULES`]): every `every_ms`,
    /// of `name`, with a body that `behaviour` handles.
    Schedule {
        id: u8,
        name: &'static str,
        every_ms: u64,
        catch_up: CatchUp,
        behaviour: Behaviour,
    },
    Unschedule {
        id: u8,
    },
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

fn pick_schedule(rng: &mut u64, id: u8) -> Step {
    Step::Schedule {
        id,
        name: NAMES[(splitmix(rng) % 2) as usize],
        every_ms: if splitmix(rng).is_multiple_of(3) {
            60_000
        } else {
            30_000
        },
        catch_up: [CatchUp::Skip, CatchUp::Latest, CatchUp::All][(splitmix(rng) % 3) as usize],
        behaviour: if splitmix(rng).is_multiple_of(3) {
            Behaviour::FailOnce
        } else {
            Behaviour::Ack
        },
    }
}

/// A publish of [`NO_HANDLER`]: a dead letter once it falls due after `start`.
fn orphan(delay_ms: i64) -> Step {
    Step::Publish {
        name: NO_HANDLER,
        behaviour: Behaviour::Ack,
        delay_ms,
        pad: 0,
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

/// The steps of workload `seed`: 28 to 39 steps and a tail (39 to 55 in all); `start` comes
/// first, or after a few steps
/// (so some events wait for it), and the clock moves far enough for retries and expiry; the
/// engine is reopened after the last compaction and publishes once more. In the middle, `a`
/// is paused while events of it fall due (and, in a third of the workloads, the engine is
/// reopened while it is paused), then resumed. Three workloads in four schedule `s0` at
/// their second step (so it fires at most clock advances after), and three in four publish
/// an event of [`NO_HANDLER`] at their third (so a dead letter waits for the redrives and
/// purges); the tail redrives a dead letter (most by then: events that failed always have
/// expired) and purges in half the workloads, before the last compaction.
pub fn steps(seed: u64) -> Vec<Step> {
    let mut rng = seed ^ 0xA5A5_0000_C0FF_EE00;
    let n = 28 + (splitmix(&mut rng) % 12) as usize;
    let start_at = (splitmix(&mut rng) % 6) as usize;
    let pause_at = n / 3 + (splitmix(&mut rng) % (n as u64 / 3)) as usize;
    let restart_paused = splitmix(&mut rng).is_multiple_of(3);
    let early_schedule = !splitmix(&mut rng).is_multiple_of(4);
    let early_orphan = !splitmix(&mut rng).is_multiple_of(4);
    let mut steps = Vec::with_capacity(n + 12);
    for i in 0..n {
        if i == start_at {
            steps.push(Step::Start);
        }
        if i == 1 && early_schedule {
            steps.push(pick_schedule(&mut rng, 0));
        }
        if i == 2 && early_orphan {
            steps.push(orphan(0));
        }
        if i == pause_at {
            steps.push(Step::Pause { name: "a" });
            steps.push(pick_keyed(&mut rng));
            steps.push(Step::Publish {
                name: "a",
                behaviour: Behaviour::pick(&mut rng),
                delay_ms: 0,
                pad: 0,
            });
            steps.push(Step::Advance { ms: 30_000 });
            if restart_paused {
                steps.push(Step::Restart { down_ms: 0 });
            }
            steps.push(Step::Resume { name: "a" });
            continue;
        }
        steps.push(pick_step(&mut rng));
    }
    // A tail that lets retries run out into expiry, redrives and purges some of what died,
    // then compacts what finished.
    steps.push(Step::Advance { ms: RETENTION_MS });
    steps.push(Step::Advance { ms: RETRY_MS });
    steps.push(Step::Redrive {
        pick: splitmix(&mut rng) as usize,
    });
    if splitmix(&mut rng).is_multiple_of(2) {
        steps.push(Step::PurgeDead);
    }
    steps.push(Step::Compact);
    // Reopen after the compaction (a while later, in a third of the workloads) and write
    // again; half the workloads leave a fresh dead letter.
    steps.push(Step::Restart {
        down_ms: if splitmix(&mut rng).is_multiple_of(3) {
            90_000
        } else {
            0
        },
    });
    steps.push(Step::Publish {
        name: "a",
        behaviour: Behaviour::Ack,
        delay_ms: 0,
        pad: 0,
    });
    if splitmix(&mut rng).is_multiple_of(2) {
        steps.push(orphan(0));
    }
    steps
}

/// One step of the middle of a workload.
fn pick_step(rng: &mut u64) -> Step {
    match splitmix(rng) % 29 {
        0..=4 => Step::Publish {
            name: "a",
            behaviour: Behaviour::pick(rng),
            delay_ms: pick_delay(rng),
            pad: (splitmix(rng) % 200) as usize,
        },
        5..=7 => pick_keyed(rng),
        8 | 9 => Step::Push {
            behaviours: (0..1 + splitmix(rng) % 3)
                .map(|_| Behaviour::pick(rng))
                .collect(),
            delay_ms: pick_delay(rng),
        },
        10 | 11 => Step::Cancel {
            pick: splitmix(rng) as usize,
        },
        12 => Step::CancelJob {
            pick: splitmix(rng) as usize,
        },
        13..=17 => Step::Advance {
            ms: match splitmix(rng) % 4 {
                0 => 1_000,
                1 => 30_000,
                2 => RETRY_MS,
                _ => 7 * 60_000,
            },
        },
        18 | 19 => Step::Compact,
        20 => Step::Restart {
            down_ms: if splitmix(rng).is_multiple_of(3) {
                90_000
            } else {
                0
            },
        },
        21 => Step::Pause {
            name: NAMES[(splitmix(rng) % 2) as usize],
        },
        22 => Step::Resume {
            name: NAMES[(splitmix(rng) % 2) as usize],
        },
        23 => Step::Redrive {
            pick: splitmix(rng) as usize,
        },
        24 => Step::PurgeDead,
        25 | 26 => {
            let id = (splitmix(rng) % u64::from(SCHEDULES)) as u8;
            pick_schedule(rng, id)
        }
        27 => Step::Unschedule {
            id: (splitmix(rng) % u64::from(SCHEDULES)) as u8,
        },
        _ => orphan(pick_delay(rng)),
    }
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

/// A schedule's definition, as a `schedule` call gave it and as each of its kind-9 records
/// holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct ScheduleRule {
    pub name: String,
    pub body: Vec<u8>,
    pub every_ms: u64,
    /// When it was scheduled: its occurrences fall at `anchor_ms + k × every_ms`, `k ≥ 1`.
    pub anchor_ms: i64,
    /// A `format::CATCH_UP_*` code.
    pub catch_up: u8,
}

impl std::fmt::Debug for ScheduleRule {
    /// `a "ack:1:3:s0" every 30000ms from 1700000030000 (catch-up 1)`: the body as text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} every {}ms from {} (catch-up {})",
            self.name,
            String::from_utf8_lossy(&self.body),
            self.every_ms,
            self.anchor_ms,
            self.catch_up
        )
    }
}

impl ScheduleRule {
    /// The first occurrence strictly after `after_ms`.
    pub fn next_after(&self, after_ms: i64) -> i64 {
        let every = self.every_ms as i64;
        if after_ms < self.anchor_ms {
            return self.anchor_ms + every;
        }
        self.anchor_ms + ((after_ms - self.anchor_ms) / every + 1) * every
    }

    /// Whether `due_ms` is one of the rule's occurrences.
    fn has(&self, due_ms: i64) -> bool {
        let k = due_ms - self.anchor_ms;
        k > 0 && k % self.every_ms as i64 == 0
    }
}

/// The `format::CATCH_UP_*` code of a policy.
pub fn catch_up_code(c: CatchUp) -> u8 {
    match c {
        CatchUp::Skip => CATCH_UP_SKIP,
        CatchUp::Latest => CATCH_UP_LATEST,
        _ => CATCH_UP_ALL,
    }
}

/// A `schedule` (with the definition it asked for) or `unschedule` (`def: None`) call.
#[derive(Clone, Debug)]
pub struct ScheduleCall {
    /// `s0` or `s1`.
    pub id: String,
    pub def: Option<ScheduleRule>,
    pub at_ms: i64,
    /// Whether it had something to write: `unschedule` of an id the engine does not hold
    /// answers `Ok(false)` from memory, which does not know whether a failed call reached
    /// the disk.
    pub writes: bool,
    pub outcome: Outcome<bool>,
}

/// A `redrive` or `purge_dead` call, in call order.
#[derive(Clone, Debug)]
pub enum DeadCall {
    /// `redrive(dead)`, of the dead letter listed with this name and body.
    Redrive {
        dead: EventId,
        name: String,
        body: Vec<u8>,
        at_ms: i64,
        outcome: Outcome<EventId>,
    },
    /// `purge_dead()`, with the dead letters `dead_letters` listed just before it.
    Purge {
        listed: Vec<EventId>,
        outcome: Outcome<u64>,
    },
}

/// One delivery of a schedule's occurrence: the schedule, the occurrence's time (the
/// event's time plus its delay) and the event.
pub type Occurrence = (String, i64, EventId);

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
    /// Every delivery of an occurrence, attempts again included.
    pub occurrences: Vec<Occurrence>,
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
    pub schedule_calls: Vec<ScheduleCall>,
    /// Every redrive and purge, with the length of `tried` when it was called.
    pub dead_calls: Vec<(usize, DeadCall)>,
    /// Event id → index in `tried`, for publishes that returned `Ok`.
    pub by_id: HashMap<EventId, usize>,
    pub compaction_tried: bool,
    /// The latest clock time of the life.
    pub last_ms: i64,
    /// Every call that writes (publishes, pushes, cancels, pauses, schedules, redrives,
    /// purges): the number of storage operations done before the call, and what it
    /// returned (`None`: `Ok`).
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
            // Ignored, and no longer a dead letter (redriven or purged) once a later call
            // may have redriven or purged it.
            || (tried.name == NO_HANDLER && self.dead_calls.iter().any(|(at, _)| *at > t))
    }

    /// The definitions schedule `id` may recover with (`None`: no schedule): that of its
    /// last call that wrote and returned `Ok` (none if none did), and that of every failed
    /// call after it.
    pub fn schedule_states(&self, id: &str) -> Vec<Option<&ScheduleRule>> {
        let calls: Vec<&ScheduleCall> = self
            .schedule_calls
            .iter()
            .filter(|c| c.id == id && c.writes)
            .collect();
        let last_ok = calls
            .iter()
            .rposition(|c| matches!(c.outcome, Outcome::Ok(_)));
        let mut states = vec![last_ok.and_then(|i| calls[i].def.as_ref())];
        states.extend(
            calls[last_ok.map_or(0, |i| i + 1)..]
                .iter()
                .map(|c| c.def.as_ref()),
        );
        states
    }

    /// Whether the event that redrive `r` (of `dead_calls`) returned as `new` may have
    /// finished, so that compaction may have removed its record: handled, expired, or dead
    /// and redriven or purged by a later call.
    fn redriven_may_be_finished(&self, r: usize, new: EventId, at_ms: i64) -> bool {
        let handled = self.live.lock().calls.iter().any(|c| c.ok && c.id == new);
        handled || self.last_ms + RETRY_MS > at_ms + RETENTION_MS || self.dead_calls.len() > r + 1
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
            // An occurrence is due at its time; a publish (or its redrive, which has its
            // body and is due later) at the due time its publish asked for.
            let due = match event.schedule() {
                Some(schedule) => {
                    let due = event.time_ms() + event.delay_ms();
                    l.occurrences.push((schedule.to_owned(), due, id));
                    Some(due)
                }
                None => l.due_of.get(body).copied(),
            };
            match due {
                Some(due) if now_ms < due => l.violations.push(format!(
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
                name,
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
                    engine.publish(name, &body, after)
                } else {
                    super::block_on(engine.publish_async(name, &body, after))
                });
                model.returns.push((ops, outcome.error()));
                if let Outcome::Ok(id) = outcome {
                    ok_ids.push(id);
                    model.by_id.insert(id, model.tried.len());
                }
                model.by_body.insert(body.clone(), model.tried.len());
                model.tried.push(Tried {
                    name,
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
            Step::Redrive { pick } => redrive(&engine, &mut model, disk, *pick),
            Step::PurgeDead => purge(&engine, &mut model, disk),
            Step::Schedule {
                id,
                name,
                every_ms,
                catch_up,
                behaviour,
            } => {
                let rule = ScheduleRule {
                    name: (*name).to_owned(),
                    body: format!("{}:{tag}:{i}:s{id}", behaviour.prefix()).into_bytes(),
                    every_ms: *every_ms,
                    anchor_ms: now_ms,
                    catch_up: catch_up_code(*catch_up),
                };
                schedule(&engine, &mut model, disk, format!("s{id}"), rule, *catch_up);
            }
            Step::Unschedule { id } => unschedule(&engine, &mut model, disk, format!("s{id}")),
            Step::Restart { down_ms } => {
                stopped(engine.close(), &model.live);
                clock.advance_ms(*down_ms);
                model.last_ms = clock.now_ms();
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
    let twice = published_twice(&model.live.lock().occurrences);
    if let Some(twice) = twice {
        model.live.lock().violations.push(twice);
    }
    model
}

/// An occurrence delivered by two different events (published twice), among `occurrences`.
fn published_twice<'a>(occurrences: impl IntoIterator<Item = &'a Occurrence>) -> Option<String> {
    let mut by: BTreeMap<(&str, i64), BTreeSet<EventId>> = BTreeMap::new();
    for (schedule, due_ms, id) in occurrences {
        by.entry((schedule, *due_ms)).or_default().insert(*id);
    }
    by.into_iter()
        .find(|(_, ids)| ids.len() > 1)
        .map(|((s, due), ids)| {
            format!(
                "the occurrence of schedule {s} due at {} was published as {ids:?}: twice",
                due - START_MS
            )
        })
}

/// `schedule(id, rule)`; then `schedules()` lists it as defined, its first occurrence
/// pending.
fn schedule(
    engine: &Engine,
    model: &mut Model,
    disk: &MemStorage,
    id: String,
    rule: ScheduleRule,
    catch_up: CatchUp,
) {
    let recurring = Recurring::every(Duration::from_millis(rule.every_ms)).catch_up(catch_up);
    let ops = disk.ops();
    let outcome = Outcome::of(engine.schedule(&id, &rule.name, &rule.body, recurring));
    model.returns.push((ops, outcome.error()));
    if outcome == Outcome::Ok(()) {
        let listed = engine.schedules().into_iter().find(|s| s.id == id);
        let want = Some(rule.next_after(rule.anchor_ms));
        if listed
            .as_ref()
            .is_none_or(|s| s.name != rule.name || s.next_due_ms != want || s.catch_up != catch_up)
        {
            model.live.lock().violations.push(format!(
                "schedule {id} {rule:?} returned Ok, schedules() lists {listed:?}"
            ));
        }
    }
    model.schedule_calls.push(ScheduleCall {
        id,
        at_ms: rule.anchor_ms,
        def: Some(rule),
        writes: true,
        outcome: match outcome {
            Outcome::Ok(()) => Outcome::Ok(true),
            Outcome::Unknown(e) => Outcome::Unknown(e),
        },
    });
}

/// `unschedule(id)`: `Ok(true)` iff `schedules()` listed it, and it is gone after.
fn unschedule(engine: &Engine, model: &mut Model, disk: &MemStorage, id: String) {
    let listed = engine.schedules().iter().any(|s| s.id == id);
    let at_ms = model.last_ms;
    let ops = disk.ops();
    let outcome = Outcome::of(engine.unschedule(&id));
    let writes = outcome != Outcome::Ok(false);
    if writes {
        model.returns.push((ops, outcome.error()));
    }
    if let Outcome::Ok(removed) = outcome
        && (removed != listed || engine.schedules().iter().any(|s| s.id == id))
    {
        model.live.lock().violations.push(format!(
            "unschedule {id} returned {removed} (listed before: {listed}), schedules() lists {:?}",
            engine.schedules()
        ));
    }
    model.schedule_calls.push(ScheduleCall {
        id,
        def: None,
        at_ms,
        writes,
        outcome,
    });
}

/// Redrives the `pick`-th dead letter listed, if any: a new event, and the dead letter is no
/// longer listed.
fn redrive(engine: &Engine, model: &mut Model, disk: &MemStorage, pick: usize) {
    let Ok(list) = engine.dead_letters(ALL_DEAD) else {
        return;
    };
    let Some(dead) = list.get(pick % list.len().max(1)) else {
        return;
    };
    // Due now; a publish of the body was due earlier, an occurrence's body has none.
    model
        .live
        .lock()
        .due_of
        .entry(dead.body.clone())
        .or_insert(model.last_ms);
    let ops = disk.ops();
    let outcome = Outcome::of(engine.redrive(dead.id));
    model.returns.push((ops, outcome.error()));
    if let Outcome::Ok(new) = outcome {
        let still = engine
            .dead_letters(ALL_DEAD)
            .is_ok_and(|l| l.iter().any(|d| d.id == dead.id));
        if still || new == dead.id {
            model.live.lock().violations.push(format!(
                "redrive of {} returned {new}; still a dead letter: {still}",
                dead.id
            ));
        }
    }
    model.dead_calls.push((
        model.tried.len(),
        DeadCall::Redrive {
            dead: dead.id,
            name: dead.name.clone(),
            body: dead.body.clone(),
            at_ms: model.last_ms,
            outcome,
        },
    ));
}

/// `purge_dead()`: it counts the dead letters listed before it, and none is listed after.
fn purge(engine: &Engine, model: &mut Model, disk: &MemStorage) {
    let Ok(listed) = engine.dead_letters(ALL_DEAD) else {
        return;
    };
    let listed: Vec<EventId> = listed.iter().map(|d| d.id).collect();
    let ops = disk.ops();
    let outcome = Outcome::of(engine.purge_dead());
    // Nothing to purge is an answer from memory, not a write.
    if outcome != Outcome::Ok(0) {
        model.returns.push((ops, outcome.error()));
    }
    if let Outcome::Ok(n) = outcome {
        let after = engine.dead_letters(ALL_DEAD).map(|l| l.len());
        if n != listed.len() as u64 || after.as_ref().is_ok_and(|&a| a > 0) {
            model.live.lock().violations.push(format!(
                "purge_dead returned {n} with {} listed; {after:?} listed after",
                listed.len()
            ));
        }
    }
    model
        .dead_calls
        .push((model.tried.len(), DeadCall::Purge { listed, outcome }));
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
    /// Events acknowledged as ignored (no handler).
    pub ignored: BTreeSet<EventId>,
    /// The dead letters the records leave, in log order: each event a drop or an ignored
    /// ack finished, less those a later redrive names or a later purge forgets.
    pub dead: BTreeSet<EventId>,
    /// Redriven events: the new event → its redrive.
    pub redrives: BTreeMap<EventId, RedriveRecord>,
    /// How many purge records there are.
    pub purges: usize,
    /// Every kind-9 record, in log order.
    pub schedule_records: Vec<ScheduleRecord>,
    /// Each occurrence → the schedule whose record published it.
    pub occurrence: BTreeMap<EventId, String>,
    /// Occurrences a schedule's removal cancelled (pending when it applied).
    pub unscheduled: BTreeSet<EventId>,
}

/// A kind-7 record with the redrive flag.
#[derive(Clone, Debug)]
pub struct RedriveRecord {
    /// The dead letter it names.
    pub dead: EventId,
    /// Whether that event was a dead letter when the record applied, as the records before
    /// it say (`None`: its publish is not in the log, compacted away).
    pub was_dead: Option<bool>,
}

/// A kind-9 record: a definition with the occurrence it publishes, or a removal.
#[derive(Clone, Debug)]
pub struct ScheduleRecord {
    pub id: String,
    /// `None`: the schedule is removed.
    pub def: Option<ScheduleRule>,
    pub event: Option<EventId>,
    pub due_ms: i64,
    pub published_ms: i64,
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
            Record::Publish(p) if p.schedule().is_some() => self.add_schedule(p),
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
                    if o.redrives {
                        // The dead letter `replaces` is forgotten, not cancelled.
                        let dead = o.replaces.unwrap_or(EventId(0));
                        let was_dead = self
                            .published
                            .contains_key(&dead)
                            .then(|| self.dead.remove(&dead));
                        self.redrives.insert(e.id, RedriveRecord { dead, was_dead });
                        continue;
                    }
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
            Record::PurgeDead(_) => {
                self.purges += 1;
                self.dead.clear();
            }
            // A finished job's counts: nothing the model predicts.
            Record::JobDone(_) => {}
            Record::Attempt(a) => attempt(self, a.event, a.attempt),
            Record::Retry(r) => {
                attempt(self, r.event, r.attempt);
                self.outcomes.push((r.event, r.attempt, false));
                let due = self.retry_due.entry(r.event).or_insert(r.next_due_ms);
                *due = (*due).max(r.next_due_ms);
            }
            Record::Ack(a) => {
                attempt(self, a.event, a.attempt);
                if a.outcome == AckOutcome::Ignored {
                    self.ignored.insert(a.event);
                    self.dies(a.event);
                } else {
                    self.outcomes.push((a.event, a.attempt, true));
                }
                self.acked.insert(a.event);
            }
            Record::Drop(d) => {
                attempt(self, d.event, d.attempt);
                self.dies(d.event);
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

    /// A drop or an ignored ack of `id`, before it applies: a pending event dies.
    fn dies(&mut self, id: EventId) {
        if self.published.contains_key(&id) && !self.is_finished(id) {
            self.dead.insert(id);
        }
    }

    /// A kind-9 record: a definition publishes its occurrence (cancelling the pending one
    /// it replaces), a removal cancels the pending one.
    fn add_schedule(&mut self, p: &Publish<'_>) {
        let def: &ScheduleDef<'_> = p.schedule().expect("a kind-9 record");
        let replaces = p
            .options()
            .and_then(|o| o.replaces)
            .filter(|&r| self.published.contains_key(&r) && !self.is_finished(r));
        let Some(e) = p.events().next() else {
            self.unscheduled.extend(replaces);
            self.schedule_records.push(ScheduleRecord {
                id: def.id.to_owned(),
                def: None,
                event: None,
                due_ms: 0,
                published_ms: p.published_ms,
            });
            return;
        };
        if self.published.contains_key(&e.id) {
            return;
        }
        if let Some(r) = replaces {
            self.replaced.insert(r, e.id);
        }
        self.bodies.insert(e.body.to_vec());
        self.published
            .insert(e.id, (e.name.to_owned(), e.body.to_vec(), e.due_ms, None));
        self.occurrence.insert(e.id, def.id.to_owned());
        self.schedule_records.push(ScheduleRecord {
            id: def.id.to_owned(),
            def: Some(ScheduleRule {
                name: e.name.to_owned(),
                body: e.body.to_vec(),
                every_ms: def.every_ms,
                anchor_ms: def.anchor_ms,
                catch_up: def.catch_up,
            }),
            event: Some(e.id),
            due_ms: e.due_ms,
            published_ms: p.published_ms,
        });
    }

    /// The latest kind-9 record of schedule `id`: what replay makes of it.
    pub fn latest_schedule(&self, id: &str) -> Option<&ScheduleRecord> {
        self.schedule_records.iter().rev().find(|r| r.id == id)
    }

    /// The schedules the records leave defined, with their latest record.
    pub fn schedules(&self) -> BTreeMap<&str, (&ScheduleRule, &ScheduleRecord)> {
        let ids: BTreeSet<&str> = self
            .schedule_records
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        ids.into_iter()
            .filter_map(|id| {
                let r = self.latest_schedule(id)?;
                Some((id, (r.def.as_ref()?, r)))
            })
            .collect()
    }

    /// Acknowledged, dropped or cancelled, alone or with its job.
    pub fn is_finished(&self, id: EventId) -> bool {
        self.acked.contains(&id)
            || self.dropped.contains(&id)
            || self.cancelled.contains(&id)
            || self.replaced.contains_key(&id)
            || self.unscheduled.contains(&id)
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

    /// The event a publish or push wrote with `body` (not a redrive of it, which has its
    /// body too).
    fn has_body(&self, body: &[u8]) -> Option<(EventId, Option<JobId>)> {
        self.published
            .iter()
            .find(|(id, p)| p.1 == body && !self.redrives.contains_key(id))
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
    // Nothing invented: every publish matches one tried, with the id and job it returned
    // (redrives and occurrences are checked by `check_dead` and `check_schedules`).
    for (id, (name, body, due_ms, job)) in &s.published {
        if s.redrives.contains_key(id) || s.occurrence.contains_key(id) {
            continue;
        }
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
    check_schedules(model, s)?;
    check_dead(model, s)
}

/// Schedules: every kind-9 record was asked for by a call (with its definition; a removal
/// by an `unschedule` that wrote) and publishes an occurrence of its rule; each schedule's
/// latest record leaves it as its last `Ok` call did (or a later failed one would); the
/// record of every `Ok` call is there, or a later call's is (compaction keeps each
/// schedule's latest record only); and no schedule has two pending occurrences.
fn check_schedules(model: &Model, s: &Scanned) -> Result<(), String> {
    for r in &s.schedule_records {
        let mut calls = model.schedule_calls.iter().filter(|c| c.id == r.id);
        let asked = match &r.def {
            Some(def) => calls.any(|c| c.def.as_ref() == Some(def)),
            None => calls.any(|c| c.def.is_none() && c.writes),
        };
        if !asked {
            return Err(format!(
                "recovered a schedule record no call asked for: {r:?}; calls {:?}",
                model.schedule_calls
            ));
        }
        if let (Some(def), Some(e)) = (&r.def, r.event)
            && !def.has(r.due_ms)
        {
            return Err(format!(
                "occurrence {e} of schedule {} is due at {}, not an occurrence of {def:?}",
                r.id, r.due_ms
            ));
        }
    }
    let ids: BTreeSet<&str> = model
        .schedule_calls
        .iter()
        .map(|c| c.id.as_str())
        .chain(s.schedule_records.iter().map(|r| r.id.as_str()))
        .collect();
    for id in ids {
        let state = s.latest_schedule(id).and_then(|r| r.def.as_ref());
        let states = model.schedule_states(id);
        if !states.contains(&state) {
            return Err(format!(
                "schedule {id} recovered as {state:?}, but its calls allow {states:?}: {:?}",
                model.schedule_calls
            ));
        }
    }
    let has_record = |c: &ScheduleCall| {
        s.schedule_records.iter().any(|r| {
            r.id == c.id
                && match (&c.def, &r.def) {
                    (Some(a), Some(b)) => a == b,
                    (None, None) => r.published_ms == c.at_ms,
                    _ => false,
                }
        })
    };
    for (ci, c) in model.schedule_calls.iter().enumerate() {
        if !c.writes || !matches!(c.outcome, Outcome::Ok(_)) || has_record(c) {
            continue;
        }
        let superseded = model.compaction_tried
            && model.schedule_calls[ci + 1..]
                .iter()
                .any(|later| later.id == c.id && has_record(later));
        if !superseded {
            return Err(format!(
                "lost the record of a schedule call that returned Ok: {c:?}"
            ));
        }
    }
    check_one_pending(s)
}

/// Every pending occurrence is the one its schedule's latest record published: so no
/// schedule has two, and a removed schedule none.
pub fn check_one_pending(s: &Scanned) -> Result<(), String> {
    for (&e, schedule) in &s.occurrence {
        if s.is_finished(e) {
            continue;
        }
        let latest = s.latest_schedule(schedule);
        if latest.and_then(|r| r.event) != Some(e) {
            return Err(format!(
                "occurrence {e} of schedule {schedule} is pending, but the schedule's latest \
                 record is {latest:?}"
            ));
        }
    }
    Ok(())
}

/// Dead letters: every redrive record was asked for (by a call that returned its event, or
/// failed) with the listed letter's name and body, due at the call, and names a dead letter;
/// no letter is redriven twice; a redrive that returned `Ok` is in the log as a publish with
/// the redrive flag naming its dead letter (or its event finished and was compacted away),
/// and that letter is dead no more; a purge that returned `Ok` leaves none of the letters
/// listed before it, and its record (or a later one) is there; only [`NO_HANDLER`]'s events
/// are acknowledged as ignored.
fn check_dead(model: &Model, s: &Scanned) -> Result<(), String> {
    let mut redriven = BTreeSet::new();
    for (new, r) in &s.redrives {
        let call = model.dead_calls.iter().find_map(|(_, c)| match c {
            DeadCall::Redrive {
                dead,
                name,
                body,
                at_ms,
                outcome,
            } if *dead == r.dead
                && (matches!(outcome, Outcome::Ok(id) if id == new)
                    || matches!(outcome, Outcome::Unknown(_))) =>
            {
                Some((name, body, *at_ms))
            }
            _ => None,
        });
        let Some((name, body, at_ms)) = call else {
            return Err(format!(
                "recovered {new}, a redrive of {} no redrive call returned or left in doubt",
                r.dead
            ));
        };
        let p = &s.published[new];
        if (&p.0, &p.1, p.2, p.3) != (name, body, at_ms, None) {
            return Err(format!(
                "redrive {new} of {} recovered as {p:?}; the dead letter was {name} {:?}, \
                 redriven at {at_ms}",
                r.dead,
                String::from_utf8_lossy(body)
            ));
        }
        if r.was_dead == Some(false) {
            return Err(format!(
                "{new} redrives {}, which was no dead letter by the records before it",
                r.dead
            ));
        }
        if !redriven.insert(r.dead) {
            return Err(format!("{} redriven twice: {:?}", r.dead, s.redrives));
        }
    }
    for (ri, (_, call)) in model.dead_calls.iter().enumerate() {
        match call {
            DeadCall::Redrive {
                dead,
                at_ms,
                outcome: Outcome::Ok(new),
                ..
            } => {
                match s.redrives.get(new) {
                    Some(r) if r.dead == *dead => {}
                    _ if s.published.contains_key(new) => {
                        return Err(format!(
                            "redrive of {dead} returned {new}, whose record is {:?}",
                            s.redrives.get(new)
                        ));
                    }
                    _ if model.compaction_tried
                        && model.redriven_may_be_finished(ri, *new, *at_ms) => {}
                    _ => return Err(format!("lost {new}, the returned redrive of {dead}")),
                }
                if s.dead.contains(dead) {
                    return Err(format!(
                        "{dead} is a dead letter, though its redrive returned {new}"
                    ));
                }
            }
            DeadCall::Purge {
                listed,
                outcome: Outcome::Ok(n),
            } => {
                if let Some(id) = listed.iter().find(|id| s.dead.contains(id)) {
                    return Err(format!(
                        "{id} is a dead letter, though a purge returned {n} after listing it"
                    ));
                }
                if *n > 0 && s.purges == 0 {
                    return Err(format!("lost the record of a purge that returned {n}"));
                }
            }
            _ => {}
        }
    }
    let purged = model
        .dead_calls
        .iter()
        .any(|(_, c)| matches!(c, DeadCall::Purge { outcome, .. } if *outcome != Outcome::Ok(0)));
    if s.purges > 0 && !purged {
        return Err("recovered a purge no call wrote".into());
    }
    if let Some(id) = s
        .ignored
        .iter()
        .find(|id| s.published.get(id).is_some_and(|p| p.0 != NO_HANDLER))
    {
        return Err(format!(
            "{id} of {} was acknowledged as ignored, but its name has a handler",
            s.published[id].0
        ));
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

/// One delivery by a reopened engine.
struct Seen {
    id: EventId,
    attempt: u32,
    now_ms: i64,
    body: Vec<u8>,
    name: &'static str,
    /// The schedule that published it, and the occurrence's time.
    schedule: Option<(String, i64)>,
}

/// What a reopened engine did, for the checks after it closed.
struct Reopened {
    seen: Vec<Seen>,
    /// The schedules' pending occurrences right after `start`.
    next: BTreeMap<String, i64>,
    /// Dead letters redriven by the reopened engine: the new event and the letter.
    redriven: Vec<(EventId, DeadLetter)>,
    /// The clock at the end.
    end_ms: i64,
    expired: u64,
    dead: Vec<DeadLetter>,
    schedules: Vec<ScheduleInfo>,
}

/// Opens an engine on the recovered disk and delivers: first at the crash's time, then, once
/// the names the log leaves paused are resumed, past every due time. The engine's index
/// agrees with the records (`check_index`), and so do its paused names, dead letters and
/// schedules (`check_open_state`); nothing of a paused name is delivered before the resume,
/// and every event with its latest body. Every event the log holds unfinished is delivered
/// once, with the next attempt number, and never before its due time, unless it expired or
/// is an occurrence that its schedule's catch-up replaces at start; nothing finished is
/// delivered (Promises 2 and 3). Handlers are registered for [`NO_HANDLER`] too (late), and
/// the newest and the oldest dead letter are redriven: each new event is delivered once and
/// its letter is gone. After `start` every schedule has one pending occurrence, which fires;
/// across both lives no occurrence is published as two events (`check_occurrences`). The
/// engine opens and closes without error (Promise 4), and a second reopen delivers nothing
/// and lists the same dead letters and schedules (`reopen_again`).
pub fn check_reopen(disk: &MemStorage, model: &Model, s: &Scanned) -> Result<(), String> {
    let r = deliver_reopened(disk, model, s)?;
    let dead_end: BTreeSet<EventId> = r.dead.iter().map(|d| d.id).collect();
    let last = reopen_again(disk, r.end_ms, &dead_end, &r.schedules)?;
    let delivered = check_deliveries(&r, s)?;
    let mut expired = Vec::new();
    for (&id, p) in &s.published {
        if s.is_finished(id) {
            continue;
        }
        let next = s.attempts.get(&id).copied().unwrap_or(0) + 1;
        if replaced_at_start(s, id, model.last_ms) {
            if let Some(attempts) = delivered.get(&id) {
                return Err(format!(
                    "occurrence {id} of {:?}, which its catch-up replaces at start, was \
                     delivered as {attempts:?}",
                    s.occurrence.get(&id)
                ));
            }
            continue;
        }
        match delivered.get(&id) {
            Some(attempts) if attempts == &vec![next] => {}
            None if r.end_ms > p.2 + RETENTION_MS => expired.push(id),
            other => {
                return Err(format!(
                    "{id} after attempt {} was delivered as {other:?}, expected [{next}] once",
                    next - 1
                ));
            }
        }
    }
    for (new, dead) in &r.redriven {
        if delivered.get(new) != Some(&vec![1]) {
            return Err(format!(
                "{new}, the reopened engine's redrive of {}, was delivered as {:?}",
                dead.id,
                delivered.get(new)
            ));
        }
    }
    check_dead_after(s, &r, &expired)?;
    check_occurrences(model, s, &r, &last)
}

/// Opens the engine on the recovered disk, checks what it holds, registers handlers (that
/// acknowledge everything) for every name, starts, redrives two dead letters, resumes the
/// paused names and delivers past every due time.
fn deliver_reopened(disk: &MemStorage, model: &Model, s: &Scanned) -> Result<Reopened, String> {
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
    let reader = Reader::open_storage(Arc::new(disk.clone()))
        .map_err(|e| format!("a reader beside the reopened engine fails: {e}"))?;
    check_index(&reader, s)?;
    check_open_state(&engine, &reader, s)?;
    drop(reader);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    for name in NAMES.into_iter().chain([NO_HANDLER]) {
        let seen = seen.clone();
        let clock = clock.clone();
        engine.on(name, move |event, _| {
            seen.lock().push(Seen {
                id: event.id(),
                attempt: event.attempt(),
                now_ms: clock.now_ms(),
                body: event.body().to_vec(),
                name,
                schedule: event
                    .schedule()
                    .map(|s| (s.to_owned(), event.time_ms() + event.delay_ms())),
            });
            Ok(())
        });
    }
    engine.start();
    let mut idle = engine.wait_idle(IDLE);
    if let Some(e) = seen
        .lock()
        .iter()
        .find(|e| paused.iter().any(|p| p == e.name))
    {
        return Err(format!(
            "delivered {} of paused {} after the reopen",
            e.id, e.name
        ));
    }
    let next = pending_after_start(&engine, s)?;
    let redriven = redrive_some(&engine)?;
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
    let r = Reopened {
        expired: engine.metrics().expired,
        dead: engine
            .dead_letters(ALL_DEAD)
            .map_err(|e| format!("the reopened engine lists no dead letters: {e}"))?,
        schedules: engine.schedules(),
        seen: std::mem::take(&mut *seen.lock()),
        next,
        redriven,
        end_ms,
    };
    engine
        .close()
        .map_err(|e| format!("the reopened engine does not close: {e}"))?;
    Ok(r)
}

/// The dead letters, schedules and paused names of the engine just opened on the recovered
/// disk, and of a reader beside it, against the records: the dead letters the records leave
/// (none redriven or purged), counted by the metrics; each schedule the records leave
/// defined, with its latest record's name, rule and catch-up, and the time of its pending
/// occurrence if that one is pending.
fn check_open_state(engine: &Engine, reader: &Reader, s: &Scanned) -> Result<(), String> {
    let ids = |l: Vec<DeadLetter>| l.into_iter().map(|d| d.id).collect::<BTreeSet<_>>();
    let dead = engine
        .dead_letters(ALL_DEAD)
        .map(ids)
        .map_err(|e| format!("the reopened engine lists no dead letters: {e}"))?;
    if dead != s.dead {
        return Err(format!(
            "the reopened engine lists the dead letters {dead:?}, the records leave {:?}",
            s.dead
        ));
    }
    let counted = engine.metrics().dead_letters;
    if counted != dead.len() as u64 {
        return Err(format!(
            "the metrics count {counted} dead letters, the engine lists {dead:?}"
        ));
    }
    let read = reader
        .dead_letters(ALL_DEAD)
        .map(ids)
        .map_err(|e| format!("a reader lists no dead letters: {e}"))?;
    if read != dead {
        return Err(format!(
            "a reader lists the dead letters {read:?}, the engine {dead:?}"
        ));
    }
    let listed = engine.schedules();
    let got: Vec<_> = listed
        .iter()
        .map(|i| {
            let rule = i.rule.clone();
            (
                i.id.clone(),
                i.name.clone(),
                rule,
                catch_up_code(i.catch_up),
                i.next_due_ms,
            )
        })
        .collect();
    let want: Vec<_> = s
        .schedules()
        .into_iter()
        .map(|(id, (def, r))| {
            let pending = r.event.filter(|&e| !s.is_finished(e)).map(|_| r.due_ms);
            let rule = format!("every {}ms", def.every_ms);
            (id.to_owned(), def.name.clone(), rule, def.catch_up, pending)
        })
        .collect();
    if got != want {
        return Err(format!(
            "the reopened engine lists the schedules {got:?}, the records leave {want:?}"
        ));
    }
    let read = reader
        .schedules()
        .map_err(|e| format!("a reader lists no schedules: {e}"))?;
    if read != listed {
        return Err(format!(
            "a reader lists the schedules {read:?}, the engine {listed:?}"
        ));
    }
    Ok(())
}

/// After `start`, every schedule the records define has one pending occurrence (an idle one
/// got its next at start, a missed one its catch-up): its time, by schedule.
fn pending_after_start(engine: &Engine, s: &Scanned) -> Result<BTreeMap<String, i64>, String> {
    let listed = engine.schedules();
    let ids: Vec<&str> = listed.iter().map(|i| i.id.as_str()).collect();
    let defined: Vec<&str> = s.schedules().into_keys().collect();
    if ids != defined {
        return Err(format!(
            "after start the engine lists the schedules {ids:?}, the records define {defined:?}"
        ));
    }
    listed
        .into_iter()
        .map(|i| match i.next_due_ms {
            Some(due) => Ok((i.id, due)),
            None => Err(format!(
                "schedule {} has no pending occurrence after start: {i:?}",
                i.id
            )),
        })
        .collect()
}

/// Redrives the newest and the oldest dead letter: each returns a new event, and the letter
/// is no longer listed (nor redriven again).
fn redrive_some(engine: &Engine) -> Result<Vec<(EventId, DeadLetter)>, String> {
    let list = engine
        .dead_letters(ALL_DEAD)
        .map_err(|e| format!("the reopened engine lists no dead letters: {e}"))?;
    let picks = list
        .first()
        .into_iter()
        .chain(list.last().filter(|_| list.len() > 1));
    let mut redriven = Vec::new();
    for dead in picks {
        let new = engine
            .redrive(dead.id)
            .map_err(|e| format!("the reopened engine does not redrive {}: {e}", dead.id))?;
        if engine.redrive(dead.id).is_ok() {
            return Err(format!("{} redriven twice by the reopened engine", dead.id));
        }
        redriven.push((new, dead.clone()));
    }
    let after = engine
        .dead_letters(ALL_DEAD)
        .map_err(|e| format!("the reopened engine lists no dead letters: {e}"))?;
    if let Some((_, d)) = redriven
        .iter()
        .find(|(_, d)| after.iter().any(|a| a.id == d.id))
    {
        return Err(format!("{} is still a dead letter after its redrive", d.id));
    }
    Ok(redriven)
}

/// Each delivery of the reopened engine: an event the records hold unfinished, with its
/// latest body, at or after its due time (or at once, after a crash during its attempt), of
/// its schedule if it is an occurrence; a redrive of the reopened engine's, with its dead
/// letter's name and body; or a new occurrence of a schedule the records define, with its
/// name and body, at one of its rule's times. The attempts delivered, by event.
fn check_deliveries(r: &Reopened, s: &Scanned) -> Result<BTreeMap<EventId, Vec<u32>>, String> {
    let schedules = s.schedules();
    let mut delivered: BTreeMap<EventId, Vec<u32>> = BTreeMap::new();
    for e in &r.seen {
        let id = e.id;
        if let Some(p) = s.published.get(&id) {
            if s.body(id) != Some(e.body.as_slice()) {
                return Err(format!(
                    "delivered {id} with body {:?}, the log holds {:?}",
                    String::from_utf8_lossy(&e.body),
                    s.body(id).map(String::from_utf8_lossy)
                ));
            }
            if s.is_finished(id) {
                return Err(format!("delivered finished {id} again"));
            }
            let due_ms = s.retry_due.get(&id).copied().unwrap_or(p.2);
            // A crash during an attempt makes the event due at once; otherwise its due time
            // holds.
            let running = s
                .attempts
                .get(&id)
                .is_some_and(|&a| !s.outcomes.iter().any(|&(o, n, _)| o == id && n == a));
            if e.now_ms < due_ms && !running {
                return Err(format!(
                    "delivered {id} at {}, before its due time {due_ms}",
                    e.now_ms
                ));
            }
            let schedule = e.schedule.as_ref().map(|(sch, _)| sch);
            if schedule != s.occurrence.get(&id) {
                return Err(format!(
                    "delivered {id} as an occurrence of {schedule:?}, the log says {:?}",
                    s.occurrence.get(&id)
                ));
            }
        } else if let Some((_, d)) = r.redriven.iter().find(|(n, _)| *n == id) {
            if (e.name, &e.body) != (d.name.as_str(), &d.body) {
                return Err(format!(
                    "delivered {id}, the redrive of {}, as {} {:?}",
                    d.id,
                    e.name,
                    String::from_utf8_lossy(&e.body)
                ));
            }
        } else if let Some((schedule, due_ms)) = &e.schedule {
            let def = schedules.get(schedule.as_str()).map(|(def, _)| *def);
            if def.is_none_or(|d| d.name != e.name || d.body != e.body || !d.has(*due_ms))
                || e.now_ms < *due_ms
            {
                return Err(format!(
                    "delivered {id} at {} as the occurrence of {schedule} due at {due_ms}; \
                     the records define {def:?}",
                    e.now_ms
                ));
            }
        } else {
            return Err(format!("delivered {id}, which the log does not hold"));
        }
        delivered.entry(id).or_default().push(e.attempt);
    }
    Ok(delivered)
}

/// Whether the pending occurrence `id` (if it is one) is replaced by its schedule's catch-up
/// when an engine starts at `now_ms`: it was due before then (missed), and the policy is
/// `Skip` (the next one from now instead), or `Latest` with a later occurrence due by now.
fn replaced_at_start(s: &Scanned, id: EventId, now_ms: i64) -> bool {
    let Some(schedule) = s.occurrence.get(&id) else {
        return false;
    };
    let Some(r) = s.latest_schedule(schedule).filter(|r| r.event == Some(id)) else {
        return false;
    };
    let Some(def) = &r.def else { return false };
    r.due_ms < now_ms
        && match def.catch_up {
            CATCH_UP_SKIP => true,
            CATCH_UP_LATEST => def.next_after(r.due_ms) <= now_ms,
            _ => false,
        }
}

/// The dead letters at the end of the reopened engine's life: those the records left, less
/// the two it redrove, and the events that expired (past retention) in it, counted by the
/// metrics; new occurrences that expired are the only others.
fn check_dead_after(s: &Scanned, r: &Reopened, expired: &[EventId]) -> Result<(), String> {
    // Those that expired at start may be the ones redriven.
    let mut want: BTreeSet<EventId> = s.dead.clone();
    want.extend(expired);
    for (_, d) in &r.redriven {
        want.remove(&d.id);
    }
    let got: BTreeSet<EventId> = r.dead.iter().map(|d| d.id).collect();
    if let Some(id) = want.difference(&got).next() {
        return Err(format!(
            "{id} is not a dead letter at the end of the reopened engine; it lists {got:?}, \
             expected {want:?} ({} expired; {:?})",
            r.expired,
            s.published.get(id)
        ));
    }
    // Others: new occurrences that expired, listed at the end or redriven.
    let redriven_others = r
        .redriven
        .iter()
        .map(|(_, d)| d)
        .filter(|d| !s.dead.contains(&d.id) && !expired.contains(&d.id));
    let others: Vec<&DeadLetter> = r
        .dead
        .iter()
        .filter(|d| !want.contains(&d.id))
        .chain(redriven_others)
        .collect();
    if let Some(d) = others.iter().find(|d| {
        d.reason != DeadReason::PastRetention
            || s.published.contains_key(&d.id)
            || r.redriven.iter().any(|(n, _)| *n == d.id)
    }) {
        return Err(format!(
            "the reopened engine made {} a dead letter ({}): {d:?}",
            d.id, d.reason
        ));
    }
    let counted = expired.len() + others.len();
    if r.expired != counted as u64 {
        return Err(format!(
            "{} expired on reopen, {counted} could have",
            r.expired
        ));
    }
    Ok(())
}

/// Across both lives, each occurrence of a schedule (its time) was delivered by one event:
/// none was published twice. The occurrence each schedule had pending after start fired (or
/// expired), and the log the reopened engine left holds one pending occurrence of each
/// schedule, due after the end, as the engine listed it.
fn check_occurrences(
    model: &Model,
    s: &Scanned,
    r: &Reopened,
    last: &Scanned,
) -> Result<(), String> {
    let mut all: Vec<Occurrence> = model.live.lock().occurrences.clone();
    all.extend(r.seen.iter().filter_map(|e| {
        let (schedule, due_ms) = e.schedule.clone()?;
        Some((schedule, due_ms, e.id))
    }));
    if let Some(twice) = published_twice(&all) {
        return Err(twice);
    }
    for (schedule, &due_ms) in &r.next {
        // The latest record of that time: a redefinition at the same instant with the
        // same interval replaces an occurrence with one of the same time.
        let event = last
            .schedule_records
            .iter()
            .rfind(|x| x.id == *schedule && x.due_ms == due_ms)
            .and_then(|x| x.event);
        let fired =
            event.is_some_and(|e| r.seen.iter().any(|x| x.id == e) || last.dropped.contains(&e));
        if !fired {
            let e = event.unwrap_or(EventId(0));
            return Err(format!(
                "the occurrence of {schedule} due at {due_ms}, pending after start, never \
                 fired (event {event:?}: acknowledged {}, replaced by {:?}, attempts {:?}; \
                 delivered {:?})",
                last.acked.contains(&e),
                last.replaced.get(&e),
                last.attempts.get(&e),
                r.seen.iter().map(|x| (x.id, x.attempt)).collect::<Vec<_>>()
            ));
        }
    }
    check_one_pending(last)?;
    for (id, (def, latest)) in s.schedules() {
        let listed = r.schedules.iter().find(|i| i.id == id);
        let pending = last
            .latest_schedule(id)
            .filter(|x| x.def.as_ref() == Some(def))
            .and_then(|x| x.event.filter(|&e| !last.is_finished(e)).map(|_| x.due_ms));
        if pending.is_none_or(|due| due <= r.end_ms)
            || listed.and_then(|i| i.next_due_ms) != pending
        {
            return Err(format!(
                "schedule {id} (latest record {latest:?}) ends the reopened engine with \
                 {listed:?}, its log's pending occurrence due at {pending:?}"
            ));
        }
    }
    Ok(())
}

/// A second reopen, after the reopened engine closed: nothing is paused or delivered, the
/// dead letters and schedules are those the first one left. The log it leaves, read again.
fn reopen_again(
    disk: &MemStorage,
    end_ms: i64,
    dead: &BTreeSet<EventId>,
    schedules: &[ScheduleInfo],
) -> Result<Scanned, String> {
    let clock = ManualClock::new(end_ms);
    let engine = Engine::open_storage(Arc::new(disk.clone()), options(&clock))
        .map_err(|e| format!("the engine does not reopen a second time: {e}"))?;
    if !engine.paused().is_empty() {
        return Err(format!(
            "resumed, then reopened with {:?} paused",
            engine.paused()
        ));
    }
    let listed: BTreeSet<EventId> = engine
        .dead_letters(ALL_DEAD)
        .map_err(|e| format!("the engine reopened a second time lists no dead letters: {e}"))?
        .iter()
        .map(|d| d.id)
        .collect();
    if listed != *dead {
        return Err(format!(
            "reopened a second time with the dead letters {listed:?}, closed with {dead:?}"
        ));
    }
    if engine.schedules() != schedules {
        return Err(format!(
            "reopened a second time with the schedules {:?}, closed with {schedules:?}",
            engine.schedules()
        ));
    }
    let again: Arc<Mutex<Vec<EventId>>> = Arc::default();
    for name in NAMES.into_iter().chain([NO_HANDLER]) {
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
    recover(disk).map_err(|e| format!("after the reopened engines: {e}"))
}

/// The index of the engine open on `disk` (read by a `Reader` beside it) against the records
/// recovered: the same events, each pending iff no record finished it (a replaced holder is
/// cancelled iff the record of the event that replaced it was recovered), with the length of
/// its latest body.
fn check_index(reader: &Reader, s: &Scanned) -> Result<(), String> {
    let rows = reader
        .events()
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
