//! The engine restarted at every stage of an event's life: closed and reopened, dropped
//! without `close`, and (on the fault-injecting `MemStorage`) crashed in every crash mode.
//!
//! Two scenarios build a data directory holding events in each stage at the moment the
//! engine goes away:
//! - **before start**: events due now but never started (no `start()` yet), a future event,
//!   a job, a cancelled event and a cancelled job;
//! - **after start**: a future event, an acknowledged one, one retrying after a failed
//!   attempt, a cancelled one, one whose handler is *running* (blocked on a channel) when the
//!   engine goes away, a partly done job and a cancelled job, plus filler events spread over
//!   several 64 KiB segments.
//!
//! After the restart a recording handler that acknowledges everything is registered and the
//! manual clock is advanced past every due time. The checks: every pending event is
//! delivered exactly once (no crash happens after the restart), nothing acknowledged or
//! cancelled is delivered, nothing is delivered before its due time, attempt numbers never go
//! backwards (an event that was running is re-attempted with attempt + 1), `job_stats`
//! survive unchanged, and event and job ids continue. A second, clean restart then delivers
//! nothing at all.
//!
//! The same two later lives check an engine whose *async* attempts are in flight when it goes
//! away (`restart_with_async_attempts_in_flight`): closed with `close_async`, or left without
//! its tokio runtime (dropped while handlers await), on either runtime flavour.

use afterlog::log::LogOptions;
use afterlog::storage::{CrashMode, FsStorage, MemStorage, Storage};
use afterlog::{After, Engine, EventId, HandlerError, JobId, JobStats, ManualClock, Options};
use crossbeam_channel::{Receiver, Sender, bounded};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

const START_MS: i64 = 1_700_000_000_000;
const IDLE: Duration = Duration::from_secs(10);
/// The default (Ampt) retry interval: a failed attempt is due again this much later.
const RETRY: Duration = Duration::from_secs(6 * 60);
const FUTURE: Duration = Duration::from_secs(60);

/// How the engine goes away.
#[derive(Clone, Copy, Debug)]
enum Restart {
    /// `close()`, then open again.
    Close,
    /// The last handle dropped without `close()`.
    Drop,
    /// The disk crashes (`crash_now`) while the engine runs; what survives under the mode
    /// is opened by a new engine. Only on `MemStorage`.
    Crash(CrashMode),
}

/// Where the data lives across restarts.
enum Disk {
    Mem(MemStorage),
    Fs(tempfile::TempDir),
}

impl Disk {
    fn storage(&self) -> Arc<dyn Storage> {
        match self {
            Disk::Mem(disk) => Arc::new(disk.clone()),
            Disk::Fs(dir) => Arc::new(FsStorage::new(dir.path()).unwrap()),
        }
    }

    /// The disk after the engine went away by `restart`.
    fn after(self, restart: Restart) -> Disk {
        match (self, restart) {
            (Disk::Mem(disk), Restart::Crash(mode)) => Disk::Mem(disk.after_crash(mode)),
            (disk, _) => disk,
        }
    }

    fn crash_now(&self) {
        match self {
            Disk::Mem(disk) => disk.crash_now(),
            Disk::Fs(_) => unreachable!("crashes are simulated on MemStorage only"),
        }
    }
}

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .log_options(LogOptions {
            segment_bytes: 64 * 1024,
            prepare_in_background: false,
            ..LogOptions::default()
        })
}

fn open(disk: &Disk, clock: &ManualClock) -> Engine {
    Engine::open_storage(disk.storage(), options(clock))
        .unwrap_or_else(|e| panic!("the directory does not reopen: {e}"))
}

/// Every case: both restarts without a crash on real files and in memory, and a crash in
/// every mode `CrashMode::all_for` lists (dropping unsynced data, tears, torn sectors,
/// garbage).
fn cases() -> Vec<(&'static str, Restart)> {
    let mut cases = vec![
        ("fs", Restart::Close),
        ("fs", Restart::Drop),
        ("mem", Restart::Close),
        ("mem", Restart::Drop),
    ];
    for seed in [1, 7] {
        for mode in CrashMode::all_for(seed) {
            cases.push(("mem", Restart::Crash(mode)));
        }
    }
    cases
}

fn new_disk(kind: &str) -> Disk {
    match kind {
        "fs" => Disk::Fs(tempfile::tempdir().unwrap()),
        _ => Disk::Mem(MemStorage::new()),
    }
}

/// Ends the engine's life by `restart`. For a crash the disk dies first, so nothing the
/// engine does afterwards reaches it.
fn go_away(engine: Engine, disk: &Disk, restart: Restart) {
    match restart {
        Restart::Close => engine.close().unwrap(),
        Restart::Drop => drop(engine),
        Restart::Crash(_) => {
            disk.crash_now();
            // Closing a crashed engine fails (its log is poisoned); it must not hang or panic.
            let _ = engine.close();
        }
    }
}

/// Deliveries seen after a restart: id → attempts, in order.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<BTreeMap<EventId, Vec<u32>>>>);

impl Recorder {
    fn register(&self, engine: &Engine, names: &[&str]) {
        for name in names {
            let seen = self.0.clone();
            engine.on(name, move |event, _| {
                seen.lock()
                    .entry(event.id())
                    .or_default()
                    .push(event.attempt());
                Ok(())
            });
        }
    }

    fn ids(&self) -> BTreeSet<EventId> {
        self.0.lock().keys().copied().collect()
    }

    fn snapshot(&self) -> BTreeMap<EventId, Vec<u32>> {
        self.0.lock().clone()
    }
}

fn stats(engine: &Engine, job: JobId) -> JobStats {
    engine.job_stats(job).unwrap()
}

// ---------------------------------------------------------------------------------------
// Scenario 1: the engine goes away before `start()`.
// ---------------------------------------------------------------------------------------

#[test]
fn restart_before_start_keeps_due_scheduled_and_cancelled_events() {
    for (kind, restart) in cases() {
        let context = format!("{kind} {restart:?}");
        before_start(new_disk(kind), restart, &context);
    }
}

fn before_start(disk: Disk, restart: Restart, context: &str) {
    let clock = ManualClock::new(START_MS);
    let engine = open(&disk, &clock);
    let due = engine.publish("a", b"due", After::NOW).unwrap();
    let later = engine.publish("a", b"later", After::delay(FUTURE)).unwrap();
    let cancelled = engine.publish("a", b"cancelled", After::NOW).unwrap();
    assert!(engine.cancel(cancelled).unwrap(), "{context}");
    let job = engine
        .push("q", ["1", "2", "3"], Duration::from_millis(1))
        .unwrap();
    let dead_job = engine.push("q", ["x", "y"], FUTURE).unwrap();
    assert_eq!(engine.cancel_job(dead_job).unwrap(), 2, "{context}");
    let job_before = stats(&engine, job);
    let dead_before = stats(&engine, dead_job);
    assert_eq!(job_before.in_progress, 3, "{context}");
    assert_eq!(dead_before.cancelled, 2, "{context}");
    // Nothing was delivered: there is no handler and no start().
    go_away(engine, &disk, restart);

    let disk = disk.after(restart);
    let engine = open(&disk, &clock);
    assert_eq!(stats(&engine, job), job_before, "{context}: job stats");
    assert_eq!(
        stats(&engine, dead_job),
        dead_before,
        "{context}: job stats"
    );
    let recorder = Recorder::default();
    recorder.register(&engine, &["a", "q"]);
    engine.start();
    clock.advance(Duration::from_millis(1));
    assert!(engine.wait_idle(IDLE), "{context}");
    let job_ids: Vec<EventId> = (0..3).map(|i| EventId(later.0 + 2 + i)).collect();
    let mut expected: BTreeSet<EventId> = [due].into_iter().chain(job_ids).collect();
    assert_eq!(
        recorder.ids(),
        expected,
        "{context}: due events after restart"
    );
    assert!(
        !recorder.ids().contains(&later),
        "{context}: delivered early"
    );
    clock.advance(FUTURE);
    assert!(engine.wait_idle(IDLE), "{context}");
    expected.insert(later);
    let seen = recorder.snapshot();
    assert_eq!(recorder.ids(), expected, "{context}: every pending event");
    for (id, attempts) in &seen {
        assert_eq!(attempts, &vec![1], "{context}: event {id} attempts");
    }
    assert_eq!(
        stats(&engine, job),
        JobStats {
            success: 3,
            ..JobStats::default()
        },
        "{context}"
    );
    assert_eq!(stats(&engine, dead_job), dead_before, "{context}");
    ids_continue(&engine, EventId(later.0 + 6), dead_job, context);
    engine.close().unwrap();
}

/// A new publish and a new push get ids above every id used before the restart.
fn ids_continue(engine: &Engine, max_event: EventId, max_job: JobId, context: &str) {
    let id = engine.publish("later", b"x", After::delay(FUTURE)).unwrap();
    assert!(
        id > max_event,
        "{context}: event id {id} reused (max {max_event})"
    );
    let job = engine.push("later", ["x"], FUTURE).unwrap();
    assert!(
        job > max_job,
        "{context}: job id {job} reused (max {max_job})"
    );
}

// ---------------------------------------------------------------------------------------
// Scenario 2: the engine goes away while delivering.
// ---------------------------------------------------------------------------------------

#[test]
fn restart_while_delivering_at_every_stage() {
    for (kind, restart) in cases() {
        let context = format!("{kind} {restart:?}");
        while_delivering(new_disk(kind), restart, &context);
    }
}

/// What the first life left, to check the second against.
struct World {
    /// Pending events and the attempt their next delivery must carry, with the time (ms
    /// after `START_MS`) before which they must not be delivered.
    pending: BTreeMap<EventId, (u32, i64)>,
    /// Acknowledged or cancelled events: never delivered again.
    finished: BTreeSet<EventId>,
    jobs: Vec<(JobId, JobStats)>,
    max_event: EventId,
    max_job: JobId,
}

/// The first life's handler: acknowledges `ack…`, fails `fail…`, and blocks on `block` until
/// released (then fails, so a clean shutdown leaves it retrying).
fn first_life_handler(
    engine: &Engine,
    names: &[&str],
    entered: Sender<EventId>,
    release: Receiver<()>,
) {
    for name in names {
        let (entered, release) = (entered.clone(), release.clone());
        engine.on(name, move |event, _| {
            let body = event.body();
            if body.starts_with(b"ack") {
                Ok(())
            } else if body.starts_with(b"fail") {
                Err(HandlerError::msg("first attempt fails"))
            } else if body == b"block" {
                entered.send(event.id()).unwrap();
                let _ = release.recv_timeout(Duration::from_secs(30));
                Err(HandlerError::msg("released"))
            } else {
                panic!("unexpected body {:?}", String::from_utf8_lossy(body))
            }
        });
    }
}

fn while_delivering(disk: Disk, restart: Restart, context: &str) {
    let clock = ManualClock::new(START_MS);
    let engine = open(&disk, &clock);
    let (entered_tx, entered_rx) = bounded(4);
    let (release_tx, release_rx) = bounded::<()>(4);
    first_life_handler(&engine, &["a", "q"], entered_tx, release_rx);
    let mut pending = BTreeMap::new();
    let mut finished = BTreeSet::new();
    let future_ms = FUTURE.as_millis() as i64;
    let retry_ms = RETRY.as_millis() as i64;

    // Filler over several segments: every third event waits for the future, the rest are
    // acknowledged at once.
    let filler = vec![b'.'; 1000];
    for i in 0..200 {
        if i % 3 == 0 {
            let mut body = b"ack-later".to_vec();
            body.extend_from_slice(&filler);
            let id = engine.publish("a", &body, After::delay(FUTURE)).unwrap();
            pending.insert(id, (1, future_ms));
        } else {
            let mut body = b"ack".to_vec();
            body.extend_from_slice(&filler);
            let id = engine.publish("a", &body, After::NOW).unwrap();
            finished.insert(id);
        }
    }
    let future = engine
        .publish("a", b"ack-future", After::delay(FUTURE))
        .unwrap();
    pending.insert(future, (1, future_ms));
    let acked = engine.publish("a", b"ack", After::NOW).unwrap();
    finished.insert(acked);
    let retrying = engine.publish("a", b"fail", After::NOW).unwrap();
    pending.insert(retrying, (2, retry_ms));
    let cancelled = engine.publish("a", b"ack", After::delay(FUTURE)).unwrap();
    assert!(engine.cancel(cancelled).unwrap(), "{context}");
    finished.insert(cancelled);
    // A job: two events acknowledged, one failing (retrying), one cancelled on its own.
    let job = engine
        .push(
            "q",
            ["ack-1", "ack-2", "fail-3", "ack-4"],
            Duration::from_millis(1),
        )
        .unwrap();
    let job_first = EventId(cancelled.0 + 1);
    let job_ids: Vec<EventId> = (0..4).map(|i| EventId(job_first.0 + i)).collect();
    // A job cancelled before it fell due.
    let dead_job = engine.push("q", ["ack-x", "ack-y"], FUTURE).unwrap();
    assert_eq!(engine.cancel_job(dead_job).unwrap(), 2, "{context}");
    finished.extend((0..2).map(|i| EventId(job_first.0 + 4 + i)));

    engine.start();
    clock.advance(Duration::from_millis(1));
    assert!(engine.wait_idle(IDLE), "{context}: first life idle");
    finished.extend([job_ids[0], job_ids[1], job_ids[3]]);
    pending.insert(job_ids[2], (2, retry_ms));
    // The acknowledged event cannot be cancelled any more.
    assert!(!engine.cancel(acked).unwrap(), "{context}");
    let job_stats = stats(&engine, job);
    assert_eq!(
        job_stats,
        JobStats {
            success: 3,
            in_progress: 1,
            ..JobStats::default()
        },
        "{context}"
    );
    let dead_stats = stats(&engine, dead_job);

    // An event whose handler is running when the engine goes away.
    let running = engine.publish("a", b"block", After::NOW).unwrap();
    let entered = entered_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{context}: the blocking handler never ran"));
    assert_eq!(entered, running);
    match restart {
        // A crash while the handler runs: its attempt is durable, its outcome never written.
        // It must be re-attempted at once with attempt 2.
        Restart::Crash(_) => {
            disk.crash_now();
            release_tx.send(()).unwrap();
            pending.insert(running, (2, 0));
        }
        // A clean shutdown waits for the running handler; it fails, so the event is retrying.
        Restart::Close | Restart::Drop => {
            let release = release_tx.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                let _ = release.send(());
            });
            pending.insert(running, (2, retry_ms));
        }
    }
    let world = World {
        pending,
        finished,
        jobs: vec![(job, job_stats), (dead_job, dead_stats)],
        max_event: running,
        max_job: dead_job,
    };
    go_away(engine, &disk, restart);
    let disk = disk.after(restart);
    second_life(&disk, &clock, &world, context);
    // And once more, cleanly: nothing is left to deliver.
    third_life(&disk, &clock, &world, context);
}

fn second_life(disk: &Disk, clock: &ManualClock, world: &World, context: &str) {
    let engine = open(disk, clock);
    for (job, before) in &world.jobs {
        assert_eq!(stats(&engine, *job), *before, "{context}: job {job} stats");
    }
    let restart_ms = clock.now_ms();
    let recorder = Recorder::default();
    recorder.register(&engine, &["a", "q"]);
    engine.start();
    // Step through every earliest due time, checking nothing comes early, and end a little
    // past the last (retries are due 6 minutes after a failure at `START_MS` or 1 ms later).
    let mut steps: BTreeSet<i64> = world.pending.values().map(|&(_, at)| at).collect();
    steps.insert(0);
    steps.insert(steps.last().unwrap() + 10);
    for step in steps {
        let now = (START_MS + step).max(restart_ms);
        clock.set(now);
        assert!(engine.wait_idle(IDLE), "{context}: idle at +{step} ms");
        let seen = recorder.snapshot();
        for id in seen.keys() {
            if let Some(&(_, at)) = world.pending.get(id) {
                assert!(
                    START_MS + at <= now,
                    "{context}: {id} delivered before +{at} ms (now +{step})"
                );
            }
        }
    }
    let seen = recorder.snapshot();
    for id in seen.keys() {
        assert!(
            !world.finished.contains(id),
            "{context}: finished (acknowledged or cancelled) event {id} delivered again"
        );
        assert!(
            world.pending.contains_key(id),
            "{context}: delivered {id}, which nobody published"
        );
    }
    for (id, &(attempt, _)) in &world.pending {
        assert_eq!(
            seen.get(id),
            Some(&vec![attempt]),
            "{context}: event {id} must be delivered once after the restart with attempt {attempt}"
        );
    }
    let (job, before) = world.jobs[0];
    assert_eq!(
        stats(&engine, job),
        JobStats {
            success: before.success + before.in_progress,
            ..JobStats::default()
        },
        "{context}: the job completes"
    );
    assert_eq!(
        stats(&engine, world.jobs[1].0),
        world.jobs[1].1,
        "{context}"
    );
    assert_eq!(engine.metrics().pending, 0, "{context}");
    ids_continue(&engine, world.max_event, world.max_job, context);
    engine.close().unwrap();
}

fn third_life(disk: &Disk, clock: &ManualClock, world: &World, context: &str) {
    let engine = open(disk, clock);
    let recorder = Recorder::default();
    recorder.register(&engine, &["a", "q", "later"]);
    engine.start();
    assert!(engine.wait_idle(IDLE), "{context}");
    // Past every due time and retry of the scenario, but before `ids_continue`'s events.
    clock.advance(Duration::from_secs(30));
    assert!(engine.wait_idle(IDLE), "{context}");
    assert_eq!(
        recorder.ids(),
        BTreeSet::new(),
        "{context}: delivered again after a clean restart"
    );
    let (job, before) = world.jobs[0];
    assert_eq!(
        stats(&engine, job).success,
        before.success + before.in_progress
    );
    engine.close().unwrap();
}

// ---------------------------------------------------------------------------------------
// Scenario 3: the disk crashes at every storage operation of an engine's life.
// ---------------------------------------------------------------------------------------

/// What the log on a recovered disk holds, from `Log::scan`.
#[derive(Default)]
struct Scanned {
    published: BTreeMap<EventId, Option<JobId>>,
    finished: BTreeSet<EventId>,
    cancelled_jobs: BTreeSet<JobId>,
    attempts: BTreeMap<EventId, u32>,
}

impl Scanned {
    fn of(disk: &MemStorage) -> Scanned {
        use afterlog::format::{CancelTarget, Record};
        let mut s = Scanned::default();
        afterlog::log::Log::scan(disk, |_, record| {
            let mut attempt = |id: EventId, n: u32| {
                let a = s.attempts.entry(id).or_default();
                *a = (*a).max(n);
            };
            match record {
                Record::Publish(p) => {
                    for e in p.events() {
                        s.published.insert(e.id, p.job);
                    }
                }
                Record::Attempt(a) => attempt(a.event, a.attempt),
                Record::Retry(r) => attempt(r.event, r.attempt),
                Record::Ack(a) => {
                    attempt(a.event, a.attempt);
                    s.finished.insert(a.event);
                }
                Record::Drop(d) => {
                    attempt(d.event, d.attempt);
                    s.finished.insert(d.event);
                }
                Record::Cancel(c) => match c.target {
                    CancelTarget::Event(id) => {
                        s.finished.insert(id);
                    }
                    CancelTarget::Job(job) => {
                        s.cancelled_jobs.insert(job);
                    }
                },
                // These workloads neither pause nor publish with keys; a job's counts are
                // checked through `job_stats`.
                Record::Pause(_) | Record::PurgeDead(_) | Record::JobDone(_) => {}
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("the recovered log does not scan: {e}"));
        s
    }

    /// Acknowledged, dropped or cancelled, alone or with its job.
    fn is_finished(&self, id: EventId) -> bool {
        self.finished.contains(&id)
            || self.published[&id].is_some_and(|job| self.cancelled_jobs.contains(&job))
    }
}

/// Calls that returned `Ok` in the first life.
#[derive(Default)]
struct Returned {
    published: Vec<EventId>,
    jobs: Vec<(JobId, u64)>,
    cancelled: Vec<EventId>,
    cancelled_jobs: Vec<JobId>,
}

/// A life that publishes, pushes, cancels, starts, delivers (acknowledging and failing) and
/// retries; every call may fail once the disk has crashed.
fn crashable_life(disk: &MemStorage, clock: &ManualClock) -> Returned {
    let mut r = Returned::default();
    let Ok(engine) = Engine::open_storage(Arc::new(disk.clone()), options(clock)) else {
        return r;
    };
    for name in ["a", "q"] {
        engine.on(name, |event, _| {
            if event.body().starts_with(b"fail") && event.attempt() == 1 {
                Err(HandlerError::msg("first attempt fails"))
            } else {
                Ok(())
            }
        });
    }
    let mut publish = |body: &[u8], after: After| {
        if let Ok(id) = engine.publish("a", body, after) {
            r.published.push(id);
        }
    };
    publish(b"ack", After::NOW);
    publish(b"fail", After::NOW);
    publish(b"ack-later", After::delay(FUTURE));
    publish(b"cancel-me", After::delay(FUTURE));
    if let Some(&id) = r.published.last()
        && matches!(engine.cancel(id), Ok(true))
    {
        r.cancelled.push(id);
    }
    if let Ok(job) = engine.push("q", ["ack", "fail", "ack"], Duration::from_millis(1)) {
        r.jobs.push((job, 3));
    }
    if let Ok(job) = engine.push("q", ["ack", "ack"], FUTURE) {
        r.jobs.push((job, 2));
        if engine.cancel_job(job).is_ok() {
            r.cancelled_jobs.push(job);
        }
    }
    engine.start();
    clock.advance(Duration::from_millis(1));
    engine.wait_idle(IDLE);
    if let Ok(id) = engine.publish("a", b"fail-while-running", After::NOW) {
        r.published.push(id);
    }
    engine.wait_idle(IDLE);
    clock.advance(RETRY);
    engine.wait_idle(IDLE);
    let _ = engine.close();
    r
}

#[test]
fn a_crash_at_any_storage_operation_loses_nothing_returned() {
    // Count the operations of a life without a crash.
    let clock = ManualClock::new(START_MS);
    let disk = MemStorage::new();
    crashable_life(&disk, &clock);
    let total = disk.ops();
    assert!(total > 20, "only {total} storage operations");
    let mut runs = 0;
    for op in 1..=total + 1 {
        for mode in [
            CrashMode::DropUnsynced,
            CrashMode::TearLastWrite { keep: 7 },
            CrashMode::TornSectorZeros { keep: 100 },
        ] {
            let context = format!("crash at operation {op} of {total}, {mode:?}");
            let clock = ManualClock::new(START_MS);
            let disk = MemStorage::new();
            disk.crash_at(op);
            let returned = crashable_life(&disk, &clock);
            let disk = disk.after_crash(mode);
            check_after_crash(&disk, &clock, &returned, &context);
            runs += 1;
        }
    }
    println!("{runs} crash states checked ({total} operations per life)");
}

fn check_after_crash(disk: &MemStorage, clock: &ManualClock, r: &Returned, context: &str) {
    let log = Scanned::of(disk);
    for id in &r.published {
        assert!(
            log.published.contains_key(id),
            "{context}: lost publish {id}"
        );
    }
    for (job, n) in &r.jobs {
        let held = log.published.values().filter(|j| **j == Some(*job)).count();
        assert_eq!(held as u64, *n, "{context}: job {job} not whole");
    }
    for id in &r.cancelled {
        assert!(log.finished.contains(id), "{context}: lost cancel of {id}");
    }
    for job in &r.cancelled_jobs {
        assert!(
            log.cancelled_jobs.contains(job),
            "{context}: lost cancel of {job}"
        );
    }
    let engine = Engine::open_storage(Arc::new(disk.clone()), options(clock))
        .unwrap_or_else(|e| panic!("{context}: the directory does not reopen: {e}"));
    let recorder = Recorder::default();
    recorder.register(&engine, &["a", "q"]);
    engine.start();
    // What is due now first: a jump of the clock past the handlers' timeouts while one of
    // them runs would time it out (and retry it) on the manual clock.
    assert!(engine.wait_idle(IDLE), "{context}");
    clock.advance(RETRY + FUTURE);
    assert!(engine.wait_idle(IDLE), "{context}");
    let seen = recorder.snapshot();
    for &id in log.published.keys() {
        if log.is_finished(id) {
            assert!(
                !seen.contains_key(&id),
                "{context}: finished event {id} delivered again"
            );
        } else {
            let previous = log.attempts.get(&id).copied().unwrap_or(0);
            assert_eq!(
                seen.get(&id),
                Some(&vec![previous + 1]),
                "{context}: event {id} after attempt {previous}"
            );
        }
    }
    for id in seen.keys() {
        assert!(
            log.published.contains_key(id),
            "{context}: delivered unknown {id}"
        );
    }
    assert_eq!(engine.metrics().pending, 0, "{context}");
    let max = log.published.keys().last().copied().unwrap_or(EventId(0));
    let id = engine.publish("a", b"x", After::delay(FUTURE)).unwrap();
    assert!(id > max, "{context}: id {id} reused");
    engine.close().unwrap();
}

// ---------------------------------------------------------------------------------------
// Retry contexts survive a restart.
// ---------------------------------------------------------------------------------------

#[test]
fn a_retry_context_survives_every_restart() {
    use afterlog::{RetryContext, RetryOptions, RetryReason};
    for (kind, restart) in cases() {
        let context = format!("{kind} {restart:?}");
        let clock = ManualClock::new(START_MS);
        let disk = new_disk(kind);
        let engine = open(&disk, &clock);
        engine.on("forge", |event, _| {
            Err(HandlerError::retry(RetryOptions {
                retry_after: Duration::from_secs(30),
                reason: RetryReason::UpstreamRateLimited,
                data: format!("after attempt {}", event.attempt()).into_bytes(),
            }))
        });
        let id = engine.publish("forge", b"x", After::NOW).unwrap();
        engine.start();
        assert!(engine.wait_idle(IDLE), "{context}");
        clock.advance(Duration::from_secs(30));
        assert!(engine.wait_idle(IDLE), "{context}");
        go_away(engine, &disk, restart);
        let disk = disk.after(restart);
        let engine = open(&disk, &clock);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        engine.on("forge", move |event, _| {
            s.lock()
                .push((event.id(), event.attempt(), event.retry_context().cloned()));
            Ok(())
        });
        engine.start();
        assert!(engine.wait_idle(IDLE), "{context}");
        assert!(seen.lock().is_empty(), "{context}: retried early");
        clock.advance(Duration::from_secs(30));
        assert!(engine.wait_idle(IDLE), "{context}");
        assert_eq!(
            *seen.lock(),
            vec![(
                id,
                3,
                Some(RetryContext {
                    retry_count: 2,
                    retry_reason: RetryReason::UpstreamRateLimited,
                    retry_data: b"after attempt 2".to_vec(),
                })
            )],
            "{context}"
        );
        engine.close().unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Async attempts in flight when the engine goes away.
// ---------------------------------------------------------------------------------------

/// How an engine with async attempts in flight goes away.
#[derive(Clone, Copy, Debug)]
enum AsyncEnd {
    /// `close_async().await` on the runtime while async handlers await: it drains them (the
    /// running ones and those waiting for room), as `close` drains sync handlers.
    CloseAsync,
    /// The tokio runtime is dropped while async handlers await: their tasks (and futures)
    /// are dropped and their attempts fail; the engine's own runtime takes over and runs the
    /// attempts that waited for room, and a later event; then `close` outside any runtime.
    RuntimeDropped,
}

/// Sets its flag when dropped: proves a handler's future was dropped.
struct DropFlag(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Runs `scenario` on a thread of its own and fails if it does not end within a minute:
/// nothing may hang, neither the close nor the runtime's shutdown nor the next life.
fn within_a_minute(context: &str, scenario: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = bounded::<()>(1);
    let thread = std::thread::spawn(move || {
        scenario();
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => thread.join().unwrap(),
        // The scenario panicked: its panic fails the test.
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
            panic!("{context}: hangs (not done after a minute)")
        }
    }
}

/// Async handlers of both runtime flavours, on real files and in memory, go away by
/// `close_async` or by their runtime's shutdown while four `block` attempts are in flight
/// (two running, awaiting; two waiting for room, `async_attempts(2)`) beside events in every
/// other stage (acknowledged, retrying, due later, cancelled, a partly done job, a cancelled
/// job). After the restart `second_life` delivers every unfinished event exactly once with
/// the next attempt number, and nothing finished: after `close_async` the drained `block`
/// attempts failed and are retried 6 minutes later with attempt 2; after the runtime's
/// shutdown they have no outcome and are delivered again at once with attempt 2. A third,
/// clean life delivers nothing. Each case must end within a minute.
#[test]
fn restart_with_async_attempts_in_flight() {
    for flavour in ["current-thread", "multi-thread"] {
        for end in [AsyncEnd::CloseAsync, AsyncEnd::RuntimeDropped] {
            for kind in ["fs", "mem"] {
                let context = format!("{kind} {flavour} {end:?}");
                let c = context.clone();
                within_a_minute(&context, move || {
                    async_in_flight(new_disk(kind), flavour, end, &c)
                });
            }
        }
    }
}

fn async_in_flight(disk: Disk, flavour: &str, end: AsyncEnd, context: &str) {
    let runtime = match flavour {
        "current-thread" => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(2);
            builder
        }
    }
    .enable_all()
    .build()
    .unwrap();
    let clock = ManualClock::new(START_MS);
    let mut options = options(&clock).async_attempts(2);
    // The multi-thread runtime is given; on the current-thread one the engine starts inside
    // `block_on` and takes the runtime current there.
    if flavour == "multi-thread" {
        options = options.runtime(runtime.handle().clone());
    }
    let engine = Engine::open_storage(disk.storage(), options)
        .unwrap_or_else(|e| panic!("{context}: does not open: {e}"));
    let (entered_tx, entered_rx) = bounded::<EventId>(16);
    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Set before the runtime is dropped: the block attempts the engine's own runtime then
    // runs fail at once instead of blocking.
    let runtime_gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for name in ["a", "q"] {
        let (entered, dropped, gone) = (entered_tx.clone(), dropped.clone(), runtime_gone.clone());
        engine.on_async(
            name,
            move |event: afterlog::Event, _ctx: afterlog::AsyncContext| {
                let (entered, dropped, gone) = (entered.clone(), dropped.clone(), gone.clone());
                async move {
                    let body = event.body();
                    if body.starts_with(b"ack") {
                        tokio::task::yield_now().await;
                        Ok(())
                    } else if body.starts_with(b"fail") {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        Err(HandlerError::msg("first attempt fails"))
                    } else if body == b"block" {
                        let _flag = DropFlag(dropped);
                        entered.send(event.id()).unwrap();
                        match end {
                            // Drained by the close: fails after a while, so it is retrying.
                            AsyncEnd::CloseAsync => {
                                tokio::time::sleep(Duration::from_millis(30)).await
                            }
                            // On the engine's own runtime, once the given one is gone.
                            AsyncEnd::RuntimeDropped
                                if gone.load(std::sync::atomic::Ordering::SeqCst) =>
                            {
                                tokio::time::sleep(Duration::from_millis(30)).await
                            }
                            // Dropped with the runtime long before this ends.
                            AsyncEnd::RuntimeDropped => {
                                tokio::time::sleep(Duration::from_secs(600)).await
                            }
                        }
                        Err(HandlerError::msg("released"))
                    } else {
                        panic!("unexpected body {:?}", String::from_utf8_lossy(body))
                    }
                }
            },
        );
    }
    let mut pending = BTreeMap::new();
    let mut finished = BTreeSet::new();
    let future_ms = FUTURE.as_millis() as i64;
    let retry_ms = RETRY.as_millis() as i64;
    let (mut world, engine) = runtime.block_on(async {
        let future = engine
            .publish_async("a", b"ack-future", After::delay(FUTURE))
            .await
            .unwrap();
        pending.insert(future, (1, future_ms));
        let acked = engine.publish_async("a", b"ack", After::NOW).await.unwrap();
        finished.insert(acked);
        let retrying = engine
            .publish_async("a", b"fail", After::NOW)
            .await
            .unwrap();
        pending.insert(retrying, (2, retry_ms));
        let cancelled = engine
            .publish_async("a", b"ack", After::delay(FUTURE))
            .await
            .unwrap();
        assert!(engine.cancel_async(cancelled).await.unwrap(), "{context}");
        finished.insert(cancelled);
        let job = engine
            .push_async("q", ["ack-1", "fail-2"], Duration::from_millis(1))
            .await
            .unwrap();
        let job_ids = [EventId(cancelled.0 + 1), EventId(cancelled.0 + 2)];
        let dead_job = engine
            .push_async("q", ["ack-x", "ack-y"], FUTURE)
            .await
            .unwrap();
        assert_eq!(
            engine.cancel_job_async(dead_job).await.unwrap(),
            2,
            "{context}"
        );
        finished.extend([EventId(job_ids[1].0 + 1), EventId(job_ids[1].0 + 2)]);
        engine.start();
        clock.advance(Duration::from_millis(1));
        let e = engine.clone();
        let idle = tokio::task::spawn_blocking(move || e.wait_idle(IDLE))
            .await
            .unwrap();
        assert!(idle, "{context}: first life idle");
        finished.insert(job_ids[0]);
        pending.insert(job_ids[1], (2, retry_ms));
        let job_stats = stats(&engine, job);
        assert_eq!(
            job_stats,
            JobStats {
                success: 1,
                in_progress: 1,
                ..JobStats::default()
            },
            "{context}"
        );
        let dead_stats = stats(&engine, dead_job);

        // Four attempts in flight: two await in their handlers, two wait for room.
        let mut blocks = Vec::new();
        for _ in 0..4 {
            blocks.push(
                engine
                    .publish_async("a", b"block", After::NOW)
                    .await
                    .unwrap(),
            );
        }
        let mut entered = BTreeSet::new();
        let give_up = std::time::Instant::now() + Duration::from_secs(20);
        while entered.len() < 2 {
            assert!(
                std::time::Instant::now() < give_up,
                "{context}: the blocking handlers never ran"
            );
            match entered_rx.try_recv() {
                Ok(id) => {
                    entered.insert(id);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
        // All four attempts are durable (`delivered` counts attempt records): the close
        // drains them and the restart sees them, though two may still wait for room. (The
        // close does not wait for events the scheduler has not handed to a worker yet.)
        while engine.metrics().delivered < 8 {
            assert!(
                std::time::Instant::now() < give_up,
                "{context}: the block attempts never started: {:?}",
                engine.metrics()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let m = engine.metrics();
        assert_eq!((m.acked, m.delivered), (2, 8), "{context}: {m:?}");
        // Each block attempt fails: drained by the close, or (runtime dropped) the two that
        // awaited fail with their runtime and the two that waited for room run on the
        // engine's own runtime and fail there. All retry at the policy's interval.
        for &id in &blocks {
            pending.insert(id, (2, retry_ms));
        }
        let world = World {
            pending,
            finished,
            jobs: vec![(job, job_stats), (dead_job, dead_stats)],
            max_event: *blocks.last().unwrap(),
            max_job: dead_job,
        };
        if let AsyncEnd::CloseAsync = end {
            engine.close_async().await.unwrap();
            // Every block attempt ran, the two that waited for room too.
            assert_eq!(
                dropped.load(std::sync::atomic::Ordering::SeqCst),
                4,
                "{context}"
            );
        }
        (world, engine)
    });
    if let AsyncEnd::RuntimeDropped = end {
        runtime_gone.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(runtime);
        // The running handlers' futures were dropped with their tasks.
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst) >= 2,
            "{context}: the awaiting handlers' futures were not dropped"
        );
        // The engine outlives its runtime: it still publishes.
        let later = engine
            .publish("a", b"ack-later", After::delay(FUTURE))
            .unwrap();
        world.pending.insert(later, (1, FUTURE.as_millis() as i64));
        // An event due now runs on the engine's own runtime, which took over.
        let orphan = engine.publish("a", b"ack-orphan", After::NOW).unwrap();
        assert!(engine.wait_idle(IDLE), "{context}: idle without a runtime");
        assert_eq!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            4,
            "{context}: every block attempt ended"
        );
        world.finished.insert(orphan);
        world.max_event = orphan;
        engine.close().unwrap();
    }
    drop(engine);
    second_life(&disk, &clock, &world, context);
    third_life(&disk, &clock, &world, context);
}
