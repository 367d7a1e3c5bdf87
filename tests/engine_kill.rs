//! Real processes killed with SIGKILL at random moments, on real files.
//!
//! The test binary re-invokes itself as the child (the `kill_child` test, which does nothing
//! unless `AFTERLOG_KILL_CHILD_DIR` is set), so `cargo test` builds everything this needs.
//! The child opens the data directory with the system clock, registers handlers that
//! acknowledge most events and fail the first attempt of some, starts, and publishes in a
//! loop: events due now, events due a few ms later, jobs, events cancelled right after their
//! publish, cancels of recent events and of recent jobs. It prints one line per call that
//! *returned* (`P <id>`, `J <job> <n>`, `C <id> <bool>`, `K <job> <n>`), `X <id>` when a
//! cancel returned `true` before the event's due time (so no attempt of it can ever start),
//! and `A <id>` / `F <id>` when a handler acknowledges / fails.
//!
//! The parent kills it 5 to 200 ms after spawning it (even rounds: during start-up,
//! recovery, publishing or delivery; one round in four within the time the last child took
//! to start and recover, so that kills keep hitting recovery) or after it reported the end
//! of recovery (odd rounds), then, on the same directory:
//! 1. scans the log with `Log::scan` (the directory is never corrupt) and checks that every
//!    call the child reported as returned is in it: publishes, whole jobs, cancels; and that
//!    no handler ran in the child for an event cancelled before it fell due;
//! 2. opens an engine (the directory always reopens), registers a recording handler, starts
//!    and waits until every published event that is neither acknowledged, dropped, nor
//!    cancelled (alone or with its job) is delivered, with attempt = the last attempt the log
//!    holds + 1 (counts never go backwards); no acknowledged or cancelled event is delivered;
//!    no id was ever published twice, and a new publish and push get fresh ids;
//! 3. every event id and job id the child was given, and the fresh ones, lie above every id
//!    known from earlier rounds (ids are never reused, across restarts and compactions);
//! 4. every `COMPACT_EVERY` rounds compacts, which removes every finished event, so the
//!    directory stays small however many rounds run (each round scans it three times:
//!    without compaction the campaign's cost grows with the square of the rounds);
//! 5. closes it, and the next round's child continues with the same directory.
//!
//! `sigkill_during_async_attempts_loses_nothing` runs the same campaign with an async
//! child (`AFTERLOG_KILL_CHILD_MODE`): a tokio runtime, current-thread in some rounds and
//! multi-thread in others; async handlers that also say `S <id>` when an attempt starts,
//! await `tokio::time::sleep` for a few ms (`sleep…` bodies) or fail their first attempt
//! (`fail…`); two tasks that publish, push and cancel with the `*_async` calls and report
//! each call once its future completed (the record is durable). One round in four is killed
//! right after an attempt started; the campaign counts the kills that came while async
//! attempts were in flight and requires them in at least one round in eight. The parent's
//! checks are the same, its engine delivering with sync handlers or with async ones (on the
//! engine's own runtime or on one given by `Options::runtime`).
//!
//! `AFTERLOG_KILLS` sets the number of rounds of each campaign (default 100;
//! `scripts/campaign` runs 5,000), `AFTERLOG_KILL_SEED` the seed.

use afterlog::format::{CancelTarget, Record};
use afterlog::log::Log;
use afterlog::storage::FsStorage;
use afterlog::{
    After, AsyncContext, Engine, Event, EventId, HandlerError, JobId, Options, RetryPolicy,
};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_DIR_ENV: &str = "AFTERLOG_KILL_CHILD_DIR";
const CHILD_SEED_ENV: &str = "AFTERLOG_KILL_CHILD_SEED";
/// `sync` (or unset): sync handlers and blocking calls; `current-thread` / `multi-thread`:
/// async handlers and `*_async` calls on a tokio runtime of that flavour.
const CHILD_MODE_ENV: &str = "AFTERLOG_KILL_CHILD_MODE";
/// Marks the child's protocol lines among anything the test harness prints.
const MARK: &str = "@@ ";
const NAMES: [&str; 2] = ["ev", "q"];
/// Delay of the events the child cancels right after publishing them.
const CANCEL_AHEAD: Duration = Duration::from_millis(300);
const SIGKILL: i32 = 9;
/// Rounds between two compactions by the parent. The children live too briefly for the
/// background compaction; between two passes the log grows over a few segments, so children
/// still roll segments and recover logs of several.
const COMPACT_EVERY: u64 = 16;

fn options() -> Options {
    Options::default()
        .segment_bytes(256 * 1024)
        .workers(2)
        .default_policy(RetryPolicy::fixed(Duration::from_millis(5)))
}

fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

// ---------------------------------------------------------------------------------------
// The child.
// ---------------------------------------------------------------------------------------

/// Writes one protocol line with a single `write` and flushes it, so a kill leaves either
/// the whole line or none of it in the pipe.
fn say(text: std::fmt::Arguments<'_>) {
    let line = format!("{MARK}{text}\n");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// Reports a failed call and ends the child (the parent fails the round).
fn fail(what: &str, e: afterlog::Error) -> ! {
    say(format_args!("E {what}: {e}"));
    std::process::exit(2)
}

/// The child process's body; a no-op test unless the parent set `AFTERLOG_KILL_CHILD_DIR`.
#[test]
fn kill_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let mut rng: u64 = std::env::var(CHILD_SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    match std::env::var(CHILD_MODE_ENV).as_deref() {
        Ok("current-thread") => async_child(&dir, rng, current_thread_runtime()),
        Ok("multi-thread") => async_child(&dir, rng, multi_thread_runtime()),
        _ => {}
    }
    let engine = Engine::open_with(&dir, options()).unwrap_or_else(|e| fail("open", e));
    for name in NAMES {
        engine.on(name, |event, _| {
            if event.body().starts_with(b"fail") && event.attempt() == 1 {
                say(format_args!("F {}", event.id().0));
                return Err(HandlerError::msg("first attempts of fail… events fail"));
            }
            say(format_args!("A {}", event.id().0));
            Ok(())
        });
    }
    engine.start();
    say(format_args!("O"));
    let mut recent: Vec<EventId> = Vec::new();
    let mut jobs: Vec<JobId> = Vec::new();
    // Never outlive a parent that failed to kill this process.
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let roll = splitmix(&mut rng);
        let body: &[u8] = if roll.is_multiple_of(5) {
            b"fail"
        } else {
            b"ack"
        };
        match (roll >> 8) % 10 {
            0..=3 => {
                let id = engine
                    .publish("ev", body, After::NOW)
                    .unwrap_or_else(|e| fail("publish", e));
                say(format_args!("P {}", id.0));
                recent.push(id);
            }
            4 | 5 => {
                let delay = 1 + (roll >> 16) % 20;
                let id = engine
                    .publish("ev", body, After::ms(delay))
                    .unwrap_or_else(|e| fail("publish", e));
                say(format_args!("P {}", id.0));
            }
            6 => {
                let n = 1 + (roll >> 16) % 5;
                let bodies: Vec<&[u8]> = (0..n)
                    .map(|i| if i == 1 { &b"fail"[..] } else { &b"ack"[..] })
                    .collect();
                let delay = Duration::from_millis(1 + (roll >> 24) % 10);
                let job = engine
                    .push("q", bodies, delay)
                    .unwrap_or_else(|e| fail("push", e));
                say(format_args!("J {} {n}", job.0));
                jobs.push(job);
            }
            7 => {
                let earliest_due_ms = epoch_ms() + CANCEL_AHEAD.as_millis() as i64;
                let id = engine
                    .publish("ev", body, After::delay(CANCEL_AHEAD))
                    .unwrap_or_else(|e| fail("publish", e));
                say(format_args!("P {}", id.0));
                let cancelled = engine.cancel(id).unwrap_or_else(|e| fail("cancel", e));
                say(format_args!("C {} {cancelled}", id.0));
                // Cancelled before it fell due: no attempt of it can ever start.
                if cancelled && epoch_ms() < earliest_due_ms {
                    say(format_args!("X {}", id.0));
                }
            }
            8 => {
                if let Some(&id) = recent.get(recent.len().saturating_sub(3)) {
                    let cancelled = engine.cancel(id).unwrap_or_else(|e| fail("cancel", e));
                    say(format_args!("C {} {cancelled}", id.0));
                }
            }
            _ => {
                if let Some(&job) = jobs.last() {
                    let n = engine
                        .cancel_job(job)
                        .unwrap_or_else(|e| fail("cancel job", e));
                    say(format_args!("K {} {n}", job.0));
                }
            }
        }
    }
    std::process::exit(0);
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The async child: the same protocol as the sync one, on a tokio runtime. Its handlers are
/// async: each says `S <id>` when its attempt starts, `sleep…` events await
/// `tokio::time::sleep` for a few ms, `fail…` events sleep a little and fail their first
/// attempt (so they are retried 5 ms later), the rest acknowledge after a yield; "q" also has
/// a sync handler, registered first, which runs on the runtime's blocking pool. Two
/// publishing tasks run at once, each with the sync child's mix of calls made with
/// `publish_async`, `push_async`, `cancel_async` and `cancel_job_async`, and each reports a
/// call once its future completed (the record is durable). Never returns.
fn async_child(dir: &str, seed: u64, runtime: tokio::runtime::Runtime) -> ! {
    runtime.block_on(async {
        let engine = Engine::open_with(dir, options()).unwrap_or_else(|e| fail("open", e));
        engine.on("q", |_, _| Ok(()));
        for name in NAMES {
            engine.on_async(name, |event: Event, _ctx: AsyncContext| async move {
                let id = event.id().0;
                say(format_args!("S {id}"));
                let body = event.body();
                if body.starts_with(b"fail") && event.attempt() == 1 {
                    tokio::time::sleep(Duration::from_millis(id % 3)).await;
                    say(format_args!("F {id}"));
                    return Err(HandlerError::msg("first attempts of fail… events fail"));
                }
                if body.starts_with(b"sleep") {
                    tokio::time::sleep(Duration::from_millis(1 + id % 6)).await;
                } else {
                    tokio::task::yield_now().await;
                }
                say(format_args!("A {id}"));
                Ok(())
            });
        }
        // On the runtime's thread: the async attempts run on this runtime.
        engine.start();
        say(format_args!("O"));
        // Never outlive a parent that failed to kill this process.
        let until = Instant::now() + Duration::from_secs(20);
        let publishers: Vec<_> = (0..2u64)
            .map(|i| {
                let engine = engine.clone();
                let mut rng = seed ^ i.wrapping_mul(0x5851_F42D_4C95_7F2D);
                tokio::spawn(async move { publish_async_loop(&engine, &mut rng, until).await })
            })
            .collect();
        for publisher in publishers {
            let _ = publisher.await;
        }
    });
    std::process::exit(0)
}

async fn publish_async_loop(engine: &Engine, rng: &mut u64, until: Instant) {
    let mut recent: Vec<EventId> = Vec::new();
    let mut jobs: Vec<JobId> = Vec::new();
    while Instant::now() < until {
        let roll = splitmix(rng);
        let body: &[u8] = match roll % 5 {
            0 => b"fail",
            1 | 2 => b"sleep",
            _ => b"ack",
        };
        match (roll >> 8) % 10 {
            0..=3 => {
                let id = engine
                    .publish_async("ev", body, After::NOW)
                    .await
                    .unwrap_or_else(|e| fail("publish", e));
                say(format_args!("P {}", id.0));
                recent.push(id);
            }
            4 | 5 => {
                let delay = 1 + (roll >> 16) % 20;
                let id = engine
                    .publish_async("ev", body, After::ms(delay))
                    .await
                    .unwrap_or_else(|e| fail("publish", e));
                say(format_args!("P {}", id.0));
            }
            6 => {
                let n = 1 + (roll >> 16) % 5;
                let bodies: Vec<&[u8]> = (0..n)
                    .map(|i| match i {
                        1 => &b"fail"[..],
                        2 => &b"sleep"[..],
                        _ => &b"ack"[..],
                    })
                    .collect();
                let delay = Duration::from_millis(1 + (roll >> 24) % 10);
                let job = engine
                    .push_async("q", bodies, delay)
                    .await
                    .unwrap_or_else(|e| fail("push", e));
                say(format_args!("J {} {n}", job.0));
                jobs.push(job);
            }
            7 => {
                let earliest_due_ms = epoch_ms() + CANCEL_AHEAD.as_millis() as i64;
                let id = engine
                    .publish_async("ev", body, After::delay(CANCEL_AHEAD))
                    .await
                    .unwrap_or_else(|e| fail("publish", e));
                say(format_args!("P {}", id.0));
                let cancelled = engine
                    .cancel_async(id)
                    .await
                    .unwrap_or_else(|e| fail("cancel", e));
                say(format_args!("C {} {cancelled}", id.0));
                if cancelled && epoch_ms() < earliest_due_ms {
                    say(format_args!("X {}", id.0));
                }
            }
            8 => {
                if let Some(&id) = recent.get(recent.len().saturating_sub(3)) {
                    let cancelled = engine
                        .cancel_async(id)
                        .await
                        .unwrap_or_else(|e| fail("cancel", e));
                    say(format_args!("C {} {cancelled}", id.0));
                }
            }
            _ => {
                if let Some(&job) = jobs.last() {
                    let n = engine
                        .cancel_job_async(job)
                        .await
                        .unwrap_or_else(|e| fail("cancel job", e));
                    say(format_args!("K {} {n}", job.0));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The parent.
// ---------------------------------------------------------------------------------------

/// What the child reported before it died.
#[derive(Default, Debug)]
struct Reported {
    opened: bool,
    published: Vec<u64>,
    jobs: Vec<(u64, u64)>,
    cancelled: Vec<u64>,
    cancelled_jobs: Vec<u64>,
    /// Events a handler ran for (`A` or `F` lines).
    handled: BTreeSet<u64>,
    acked: u64,
    /// Events cancelled before they fell due (`X` lines).
    cancelled_before_due: Vec<u64>,
    /// Per event, attempts started (`S` lines, async child) minus attempts that reported an
    /// outcome (`A` or `F`): above zero, the attempt was in flight when the kill came.
    open_attempts: BTreeMap<u64, i64>,
    errors: Vec<String>,
}

impl Reported {
    /// Events whose async attempt had started and not returned when the child died.
    fn in_flight(&self) -> Vec<u64> {
        self.open_attempts
            .iter()
            .filter(|&(_, &n)| n > 0)
            .map(|(&id, _)| id)
            .collect()
    }
}

fn parse(lines: &[String]) -> Reported {
    let mut r = Reported::default();
    for line in lines {
        let Some((_, text)) = line.split_once(MARK) else {
            continue;
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let num = |i: usize| -> u64 {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("bad line from the child: {line:?}"))
        };
        match words.first().copied() {
            Some("O") => r.opened = true,
            Some("P") => r.published.push(num(1)),
            Some("J") => r.jobs.push((num(1), num(2))),
            Some("C") if words.get(2) == Some(&"true") => r.cancelled.push(num(1)),
            Some("C") => {}
            Some("K") => r.cancelled_jobs.push(num(1)),
            Some("A") => {
                r.acked += 1;
                r.handled.insert(num(1));
                *r.open_attempts.entry(num(1)).or_default() -= 1;
            }
            Some("F") => {
                r.handled.insert(num(1));
                *r.open_attempts.entry(num(1)).or_default() -= 1;
            }
            Some("S") => {
                r.handled.insert(num(1));
                *r.open_attempts.entry(num(1)).or_default() += 1;
            }
            Some("X") => r.cancelled_before_due.push(num(1)),
            Some("E") => r.errors.push(text.to_string()),
            _ => panic!("bad line from the child: {line:?}"),
        }
    }
    r
}

/// What the log holds.
#[derive(Default)]
struct Scanned {
    published: BTreeMap<u64, Option<u64>>,
    jobs: HashMap<u64, Vec<u64>>,
    acked: BTreeSet<u64>,
    dropped: BTreeSet<u64>,
    cancelled: BTreeSet<u64>,
    cancelled_jobs: BTreeSet<u64>,
    /// The highest attempt number any record of the event carries.
    attempts: HashMap<u64, u32>,
    duplicate_publishes: Vec<u64>,
}

fn scan(dir: &Path) -> Scanned {
    let storage = FsStorage::existing(dir).unwrap();
    let mut s = Scanned::default();
    Log::scan(&storage, |_, record| {
        let mut attempt = |event: EventId, n: u32| {
            let a = s.attempts.entry(event.0).or_default();
            *a = (*a).max(n);
        };
        match record {
            Record::Publish(p) => {
                for e in p.events() {
                    if s.published.insert(e.id.0, p.job.map(|j| j.0)).is_some() {
                        s.duplicate_publishes.push(e.id.0);
                    }
                    if let Some(job) = p.job {
                        s.jobs.entry(job.0).or_default().push(e.id.0);
                    }
                }
            }
            Record::Attempt(a) => attempt(a.event, a.attempt),
            Record::Retry(r) => attempt(r.event, r.attempt),
            Record::Ack(a) => {
                attempt(a.event, a.attempt);
                s.acked.insert(a.event.0);
            }
            Record::Drop(d) => {
                attempt(d.event, d.attempt);
                s.dropped.insert(d.event.0);
            }
            Record::Cancel(c) => match c.target {
                CancelTarget::Event(id) => {
                    s.cancelled.insert(id.0);
                }
                CancelTarget::Job(job) => {
                    s.cancelled_jobs.insert(job.0);
                }
            },
            // These workloads neither pause nor publish with keys; a job's counts need no check here.
            Record::Pause(_) | Record::PurgeDead(_) | Record::JobDone(_) => {}
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("the log does not scan: {e}"));
    s
}

impl Scanned {
    /// Acknowledged, dropped or cancelled (alone or with its job): never delivered again.
    fn finished(&self, id: u64) -> bool {
        self.acked.contains(&id)
            || self.dropped.contains(&id)
            || self.cancelled.contains(&id)
            || self.published[&id].is_some_and(|job| self.cancelled_jobs.contains(&job))
    }
}

/// The highest event and job ids known from earlier rounds: no id handed out later may be
/// at or below them, even once compaction removed every record naming them.
#[derive(Default, Debug, Clone, Copy)]
struct Known {
    event: u64,
    job: u64,
}

/// Totals over the campaign.
#[derive(Default, Debug)]
struct Totals {
    kills: u64,
    killed_after_open: u64,
    published: u64,
    jobs: u64,
    cancels: u64,
    handler_acks: u64,
    redelivered: u64,
    compactions: u64,
    /// Async mode: kills that came while at least one async attempt was in flight, and the
    /// attempts in flight at those kills.
    killed_in_flight: u64,
    in_flight_at_kill: u64,
    /// Those kills by the child's runtime flavour.
    killed_in_flight_by_runtime: BTreeMap<&'static str, u64>,
    /// Events whose attempt was in flight at a kill, not finished in the log, and delivered
    /// again by the parent.
    in_flight_redelivered: u64,
}

/// Which child a campaign runs and how the parent delivers after each kill.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Sync,
    Async,
}

#[test]
fn sigkill_at_random_moments_loses_nothing() {
    campaign(Mode::Sync);
}

/// The async campaign: each child runs async handlers on a tokio runtime, current-thread in
/// some rounds and multi-thread in others (two rounds of each in turn), and publishes with
/// `publish_async`, `push_async`, `cancel_async` and `cancel_job_async`, reporting each call
/// once its future completed. Kills come as in the sync campaign, and one round in four
/// right after (0 to 10 ms after) an async attempt reported its start, so that kills land
/// among running async attempts (the totals count the kills that did, and at least one in
/// eight rounds must). After each kill the parent runs the same checks: every call reported
/// durable is in the log, every unfinished event is delivered again with the next attempt
/// number, nothing finished is delivered again — delivering with a sync handler, an async one
/// on the engine's own runtime, or an async one on a runtime given by `Options::runtime`,
/// one round in three each. `AFTERLOG_KILLS` and `AFTERLOG_KILL_SEED` apply as above.
#[test]
fn sigkill_during_async_attempts_loses_nothing() {
    campaign(Mode::Async);
}

/// How the parent's engine delivers what the kill left.
#[derive(Clone, Copy, Debug)]
enum Verify {
    Sync,
    /// Async handlers on the runtime the engine makes when none is current at `start`.
    AsyncOwnRuntime,
    /// Async handlers on the parent's runtime, given with `Options::runtime`.
    AsyncGivenRuntime,
}

fn campaign(mode: Mode) {
    let kills: u64 = std::env::var("AFTERLOG_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::var("AFTERLOG_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("{mode:?}: AFTERLOG_KILL_SEED={seed} AFTERLOG_KILLS={kills}");
    // The runtime the parent's engine is given in `Verify::AsyncGivenRuntime` rounds.
    let verify_runtime = multi_thread_runtime();
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = seed;
    let mut totals = Totals::default();
    let mut known = Known::default();
    let started = Instant::now();
    // How long the last child took from its spawn to the end of its recovery.
    let mut start_up: Option<Duration> = None;
    for round in 0..kills {
        let child_seed = splitmix(&mut rng);
        let roll = splitmix(&mut rng);
        // Every fourth round aims inside the start-up (process start and recovery), as long
        // as the last child's took: the directory stays small, so a delay of 5 ms or more
        // would mostly miss it.
        let delay = match start_up {
            Some(start_up) if round % 4 == 2 => {
                Duration::from_micros(roll % (start_up.as_micros() as u64).max(1))
            }
            _ => Duration::from_millis(5 + roll % 196),
        };
        // Async rounds: two current-thread children, then two multi-thread ones, so each
        // flavour meets every kind of kill moment.
        let child_mode = match mode {
            Mode::Sync => "sync",
            Mode::Async if (round / 2) % 2 == 0 => "current-thread",
            Mode::Async => "multi-thread",
        };
        let verify = match (mode, round % 3) {
            (Mode::Sync, _) | (Mode::Async, 0) => Verify::Sync,
            (Mode::Async, 1) => Verify::AsyncOwnRuntime,
            (Mode::Async, _) => Verify::AsyncGivenRuntime,
        };
        // Async rounds 3 mod 4: kill right after an async attempt started.
        let after_attempt = mode == Mode::Async && round % 4 == 3;
        let delay = if after_attempt {
            Duration::from_micros(roll % 10_000)
        } else {
            delay
        };
        let spawned = Instant::now();
        let mut child = Command::new(&exe)
            .args(["kill_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_MODE_ENV, child_mode)
            .env(CHILD_SEED_ENV, child_seed.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || complete_lines(stdout, &line_tx));
        let err_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        // Odd rounds count the delay from the end of recovery (the `O` line), so kills keep
        // hitting the workload; even rounds from the spawn, so they also hit process start
        // and recovery.
        let mut lines = Vec::new();
        if round % 2 == 1 {
            let give_up = Instant::now() + Duration::from_secs(30);
            while let Ok(line) = line_rx.recv_timeout(give_up - Instant::now()) {
                let opened = line.ends_with(&format!("{MARK}O"));
                lines.push(line);
                if opened {
                    start_up = Some(spawned.elapsed());
                    break;
                }
            }
            if after_attempt {
                while let Ok(line) = line_rx.recv_timeout(give_up - Instant::now()) {
                    let started = line.contains(&format!("{MARK}S "));
                    lines.push(line);
                    if started {
                        break;
                    }
                }
            }
        }
        std::thread::sleep(delay);
        // Child::kill sends SIGKILL on Unix.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(line_rx.try_iter());
        let stderr = err_reader.join().unwrap();
        let context = format!(
            "{mode:?} round {round} ({child_mode} child, verified {verify:?}, seed {seed}, killed after {delay:?})"
        );
        let reported = parse(&lines);
        assert!(
            reported.errors.is_empty() && status.signal() == Some(SIGKILL),
            "{context}: the child did not die by SIGKILL ({status:?}): {:?}\n{stderr}",
            reported.errors
        );
        totals.kills += 1;
        totals.killed_after_open += u64::from(reported.opened);
        totals.published += reported.published.len() as u64;
        totals.jobs += reported.jobs.len() as u64;
        totals.cancels += (reported.cancelled.len() + reported.cancelled_jobs.len()) as u64;
        totals.handler_acks += reported.acked;
        let in_flight = reported.in_flight().len() as u64;
        totals.killed_in_flight += u64::from(in_flight > 0);
        if in_flight > 0 {
            *totals
                .killed_in_flight_by_runtime
                .entry(child_mode)
                .or_default() += 1;
        }
        totals.in_flight_at_kill += in_flight;
        let compact = round % COMPACT_EVERY == COMPACT_EVERY - 1;
        let runtime = verify_runtime.handle();
        let (redelivered, in_flight_redelivered) = check_round(
            dir.path(),
            &reported,
            &context,
            &mut known,
            compact,
            verify,
            runtime,
        );
        totals.redelivered += redelivered;
        totals.in_flight_redelivered += in_flight_redelivered;
        totals.compactions += u64::from(compact);
    }
    println!(
        "{mode:?}: survived {} SIGKILLs in {:.1?}: {totals:?}",
        totals.kills,
        started.elapsed()
    );
    if mode == Mode::Async {
        assert!(
            totals.killed_in_flight >= kills / 8,
            "only {} of {kills} kills came while async attempts were in flight: {totals:?}",
            totals.killed_in_flight
        );
        if kills >= 8 {
            for flavour in ["current-thread", "multi-thread"] {
                assert!(
                    totals.killed_in_flight_by_runtime.contains_key(flavour),
                    "no kill came while async attempts ran on a {flavour} runtime: {totals:?}"
                );
            }
        }
    }
}

/// Reads the child's stdout to its end and sends each line; keeps only lines that end in a
/// newline (a kill may cut the last one).
fn complete_lines(stdout: impl Read, lines: &std::sync::mpsc::Sender<String>) {
    let mut reader = BufReader::new(stdout);
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(_) if line.ends_with(b"\n") => {
                line.pop();
                let _ = lines.send(String::from_utf8_lossy(&line).into_owned());
            }
            _ => return,
        }
    }
}

/// Checks the directory after a kill against what the child reported; delivers every
/// pending event; compacts if `compact`. Returns how many events were delivered, and how
/// many of them had an async attempt in flight at the kill.
fn check_round(
    dir: &Path,
    reported: &Reported,
    context: &str,
    known: &mut Known,
    compact: bool,
    verify: Verify,
    runtime: &tokio::runtime::Handle,
) -> (u64, u64) {
    let log = scan(dir);
    assert!(
        log.duplicate_publishes.is_empty(),
        "{context}: ids published twice: {:?}",
        log.duplicate_publishes
    );
    for id in &reported.published {
        assert!(
            log.published.contains_key(id),
            "{context}: event {id}, whose publish returned, is not in the log"
        );
    }
    for (job, n) in &reported.jobs {
        assert_eq!(
            log.jobs.get(job).map_or(0, |e| e.len() as u64),
            *n,
            "{context}: job {job}, whose push returned, is not whole in the log"
        );
    }
    for &id in &reported.published {
        assert!(
            id > known.event,
            "{context}: event id {id} handed out again (ids up to {} were known before)",
            known.event
        );
    }
    for (job, _) in &reported.jobs {
        assert!(
            *job > known.job,
            "{context}: job id {job} handed out again (ids up to {} were known before)",
            known.job
        );
        for &id in &log.jobs[job] {
            assert!(
                id > known.event,
                "{context}: event id {id} of job {job} handed out again (ids up to {} were known before)",
                known.event
            );
        }
    }
    for id in &reported.cancelled {
        assert!(
            log.cancelled.contains(id),
            "{context}: the cancel of {id} returned but is not in the log"
        );
    }
    for job in &reported.cancelled_jobs {
        assert!(
            log.cancelled_jobs.contains(job),
            "{context}: the cancel of job {job} returned but is not in the log"
        );
    }
    for id in &reported.cancelled_before_due {
        assert!(
            !reported.handled.contains(id),
            "{context}: event {id}, cancelled before it fell due, reached a handler"
        );
    }
    let must: BTreeSet<u64> = log
        .published
        .keys()
        .copied()
        .filter(|&id| !log.finished(id))
        .collect();

    // Every event whose async attempt was in flight at the kill and is not finished in the
    // log must be delivered again (it is in `must`).
    for id in reported.in_flight() {
        assert!(
            log.published.contains_key(&id),
            "{context}: event {id} ran in the child but is not in the log"
        );
    }
    let options = match verify {
        Verify::AsyncGivenRuntime => options().runtime(runtime.clone()),
        Verify::Sync | Verify::AsyncOwnRuntime => options(),
    };
    let engine = Engine::open_with(dir, options)
        .unwrap_or_else(|e| panic!("{context}: the directory does not reopen: {e}"));
    let delivered: Arc<Mutex<BTreeMap<u64, Vec<u32>>>> = Arc::default();
    for name in NAMES.into_iter().chain(["verify"]) {
        let delivered = delivered.clone();
        let record = move |event: &Event| {
            delivered
                .lock()
                .entry(event.id().0)
                .or_default()
                .push(event.attempt());
        };
        match verify {
            Verify::Sync => engine.on(name, move |event, _| {
                record(event);
                Ok(())
            }),
            Verify::AsyncOwnRuntime | Verify::AsyncGivenRuntime => {
                let record = Arc::new(record);
                engine.on_async(name, move |event: Event, _ctx: AsyncContext| {
                    let record = record.clone();
                    async move {
                        tokio::task::yield_now().await;
                        record(&event);
                        Ok(())
                    }
                })
            }
        }
    }
    // Not on a runtime's thread: `AsyncOwnRuntime` makes the engine's own.
    engine.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<u64> = {
            let d = delivered.lock();
            must.iter()
                .copied()
                .filter(|id| !d.contains_key(id))
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{context}: pending events never delivered after the restart: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let max_event = log
        .published
        .keys()
        .last()
        .copied()
        .unwrap_or(0)
        .max(known.event);
    let max_job = log.jobs.keys().max().copied().unwrap_or(0).max(known.job);
    let id = engine.publish("verify", b"", After::NOW).unwrap();
    assert!(id.0 > max_event, "{context}: event id {id} reused");
    let job = engine
        .push("verify", [b""], Duration::from_millis(1))
        .unwrap();
    assert!(job.0 > max_job, "{context}: job id {job} reused");
    let fresh = id.0..=id.0 + 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fresh.clone().any(|id| !delivered.lock().contains_key(&id)) {
        assert!(
            Instant::now() < deadline,
            "{context}: a fresh event was not delivered"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(engine.wait_idle(Duration::from_secs(10)), "{context}");
    let pending_left = engine.metrics().pending;
    if compact {
        engine
            .compact_now()
            .unwrap_or_else(|e| panic!("{context}: compaction failed: {e}"));
    }
    engine.close().unwrap();
    *known = Known {
        event: id.0 + 1,
        job: job.0,
    };
    assert_eq!(
        pending_left, 0,
        "{context}: events left pending after delivery"
    );

    let delivered = delivered.lock();
    for (id, attempts) in delivered.iter() {
        if fresh.contains(id) {
            continue;
        }
        assert!(
            log.published.contains_key(id),
            "{context}: delivered {id}, which is not in the log"
        );
        assert!(
            !log.finished(*id),
            "{context}: event {id} delivered after it was acknowledged or cancelled"
        );
        let previous = log.attempts.get(id).copied().unwrap_or(0);
        assert_eq!(
            attempts.first().copied(),
            Some(previous + 1),
            "{context}: event {id} attempted {attempts:?} after the log recorded attempt {previous}"
        );
    }
    let in_flight_redelivered = reported
        .in_flight()
        .into_iter()
        .filter(|id| delivered.contains_key(id))
        .count() as u64;
    (delivered.len() as u64 - 2, in_flight_redelivered)
}
