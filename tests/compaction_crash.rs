//! Compaction crashed at every storage operation it performs, on the fault-injecting
//! `MemStorage`, and recovery crashed after a compaction.
//!
//! Each workload builds a data directory over several small segments holding events in every
//! state: acknowledged, pending far ahead, retrying with a retry context (Forge policy, a
//! requested retry and a plain error), dropped by their policy, cancelled alone or with their
//! job, expired past the retention, and jobs partly done or not started. Then a life that
//! publishes events already past the retention runs `compact_now` with a crash armed at its
//! k-th storage operation, for every k until the pass completes without reaching it. What
//! survives is recovered in every mode of `CrashMode::all_for` with and without the loss of
//! unsynced directory entries, and checked:
//! - the directory reopens, and `job_stats` of live jobs are unchanged;
//! - after the clock passes every due time, every pending event is delivered exactly once,
//!   with the attempt number after its last attempt and its retry context;
//! - no finished event (acknowledged, dropped, cancelled, expired) is delivered;
//! - the events past retention are delivered at most once, and never if the pass completed
//!   or a second pass runs after recovery;
//! - new event and job ids are above every id used before.
//!
//! Every recovered state is checked twice: as it is, and after a second compaction of the
//! recovered log followed by a clean restart.

use afterlog::log::LogOptions;
use afterlog::storage::{CrashMode, MemStorage};
use afterlog::{
    After, Engine, EventId, HandlerError, JobId, JobStats, ManualClock, Options, RetryContext,
    RetryOptions, RetryPolicy, RetryReason,
};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T0: i64 = 1_700_000_000_000;
const IDLE: Duration = Duration::from_secs(10);
const RETENTION: Duration = Duration::from_secs(3 * 24 * 3600);
/// The retention of the engine that delivers in a check: the scheduler drops an event that
/// falls due past its retention (from its first due time), and a check must see every
/// pending event delivered.
const LONG_RETENTION: Duration = Duration::from_secs(60 * 24 * 3600);
/// The retry the "forge" handler requests.
const FORGE_AFTER: Duration = Duration::from_secs(5 * 60);
/// Far enough ahead for "later" events and jobs.
const DAY: Duration = Duration::from_secs(24 * 3600);
const NAMES: [&str; 7] = ["ack", "later", "forge", "plain", "drop", "exp", "job"];

fn options(clock: &ManualClock, segment_bytes: u64) -> Options {
    options_with(clock, segment_bytes, RETENTION)
}

fn options_with(clock: &ManualClock, segment_bytes: u64, retention: Duration) -> Options {
    Options::default()
        .clock(clock.clone())
        .workers(1)
        .log_options(LogOptions {
            segment_bytes,
            prepare_in_background: false,
            ..LogOptions::default()
        })
        .compaction_interval(None)
        .retention(retention)
        .policy("forge", RetryPolicy::forge())
        .policy("plain", RetryPolicy::forge())
        .policy(
            "drop",
            RetryPolicy::fixed(Duration::from_secs(60)).max_attempts(1),
        )
}

fn open(disk: &MemStorage, clock: &ManualClock, segment_bytes: u64, context: &str) -> Engine {
    Engine::open_storage(Arc::new(disk.clone()), options(clock, segment_bytes))
        .unwrap_or_else(|e| panic!("{context}: the directory does not reopen: {e}"))
}

/// An independent copy of a disk whose data is all durable (after a clean close, or a disk
/// rebuilt by `after_crash`). The disk itself is crashed: it can only be copied again.
fn snapshot(disk: &MemStorage) -> MemStorage {
    disk.after_crash_with(CrashMode::DropUnsynced, true)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ack,
    Later,
    Forge,
    Plain,
    Drop,
    Exp,
    JobOk,
    JobFail,
    JobLater,
}

/// What was done to the events, to derive what must happen to each after a crash.
#[derive(Default)]
struct Book {
    kinds: BTreeMap<EventId, Kind>,
    cancelled: BTreeSet<EventId>,
    expired: BTreeSet<EventId>,
    /// Past retention at the crashed pass.
    expiring: BTreeSet<EventId>,
    jobs: Vec<(JobId, Vec<EventId>)>,
    /// The last attempt each event had, seen by the handlers.
    attempts: Arc<Mutex<BTreeMap<EventId, u32>>>,
}

/// What must hold after a restart.
#[derive(Clone, Debug)]
struct World {
    /// Pending events: the attempt number and retry context of their next delivery.
    pending: BTreeMap<EventId, (u32, Option<RetryContext>)>,
    /// Never delivered again.
    finished: BTreeSet<EventId>,
    /// Past retention when the crashed pass began.
    expiring: BTreeSet<EventId>,
    live_jobs: Vec<(JobId, JobStats)>,
    max_event: EventId,
    max_job: JobId,
    /// When every pending event is due.
    deliver_at_ms: i64,
}

fn forge_context(n: u32) -> RetryContext {
    RetryContext {
        retry_count: n,
        retry_reason: RetryReason::UpstreamRateLimited,
        retry_data: format!("after attempt {n}").into_bytes(),
    }
}

fn plain_context(n: u32) -> RetryContext {
    RetryContext {
        retry_count: n,
        retry_reason: RetryReason::PlatformUnknownError,
        retry_data: Vec::new(),
    }
}

impl Book {
    fn publish(&mut self, engine: &Engine, kind: Kind, body: &[u8], after: After) -> EventId {
        let name = match kind {
            Kind::Ack => "ack",
            Kind::Later => "later",
            Kind::Forge => "forge",
            Kind::Plain => "plain",
            Kind::Drop => "drop",
            Kind::Exp => "exp",
            _ => unreachable!("jobs are pushed"),
        };
        let id = engine.publish(name, body, after).unwrap();
        self.kinds.insert(id, kind);
        id
    }

    fn push(&mut self, engine: &Engine, bodies: &[&str], delay: Duration) -> JobId {
        let job = engine.push("job", bodies, delay).unwrap();
        let first = self.kinds.keys().last().map_or(1, |id| id.0 + 1);
        let ids: Vec<EventId> = (0..bodies.len() as u64)
            .map(|i| EventId(first + i))
            .collect();
        for (id, body) in ids.iter().zip(bodies) {
            let kind = match (*body, delay.is_zero()) {
                (_, false) => Kind::JobLater,
                ("fail", true) => Kind::JobFail,
                _ => Kind::JobOk,
            };
            self.kinds.insert(*id, kind);
        }
        self.jobs.push((job, ids));
        job
    }

    fn cancel(&mut self, engine: &Engine, id: EventId) {
        assert!(engine.cancel(id).unwrap(), "{id} was pending");
        self.cancelled.insert(id);
    }

    fn cancel_job(&mut self, engine: &Engine, job: JobId) {
        engine.cancel_job(job).unwrap();
        let ids = &self.jobs.iter().find(|(j, _)| *j == job).unwrap().1;
        self.cancelled.extend(ids.iter().copied());
    }

    /// The handlers of a building life: they record every attempt.
    fn register(&self, engine: &Engine) {
        for name in NAMES {
            let attempts = self.attempts.clone();
            engine.on(name, move |event, _| {
                attempts.lock().insert(event.id(), event.attempt());
                match event.name() {
                    "forge" => Err(HandlerError::retry(RetryOptions {
                        retry_after: FORGE_AFTER,
                        reason: RetryReason::UpstreamRateLimited,
                        data: format!("after attempt {}", event.attempt()).into_bytes(),
                    })),
                    "plain" | "drop" => Err(HandlerError::msg("down")),
                    "job" if event.body() == b"fail" => Err(HandlerError::msg("down")),
                    _ => Ok(()),
                }
            });
        }
    }

    /// What must hold after a restart, with `engine` open at the end of the life.
    fn world(&self, engine: &Engine, now_ms: i64) -> World {
        let attempts = self.attempts.lock().clone();
        let mut w = World {
            expiring: self.expiring.clone(),
            max_event: *self.kinds.keys().last().unwrap(),
            max_job: self.jobs.iter().map(|(j, _)| *j).max().unwrap(),
            pending: BTreeMap::new(),
            finished: BTreeSet::new(),
            live_jobs: Vec::new(),
            deliver_at_ms: now_ms + (DAY + DAY).as_millis() as i64,
        };
        for (&id, &kind) in &self.kinds {
            if self.cancelled.contains(&id) || self.expired.contains(&id) {
                w.finished.insert(id);
                continue;
            }
            if self.expiring.contains(&id) {
                continue;
            }
            let n = attempts.get(&id).copied().unwrap_or(0);
            let next = match kind {
                Kind::Ack | Kind::JobOk | Kind::Drop | Kind::Later | Kind::JobLater | Kind::Exp
                    if n > 0 =>
                {
                    None
                }
                Kind::Forge if n > 0 => Some((n + 1, Some(forge_context(n)))),
                Kind::Plain if n > 0 => Some((n + 1, Some(plain_context(n)))),
                _ => Some((n + 1, None)),
            };
            match next {
                Some(next) => {
                    w.pending.insert(id, next);
                }
                None => {
                    w.finished.insert(id);
                }
            }
        }
        for (job, ids) in &self.jobs {
            if ids.iter().any(|id| w.pending.contains_key(id)) {
                w.live_jobs.push((*job, engine.job_stats(*job).unwrap()));
            }
        }
        w
    }
}

#[derive(Clone, Copy, Debug)]
struct Workload {
    segment_bytes: u64,
    body: usize,
    rounds: usize,
}

const WORKLOADS: [Workload; 3] = [
    Workload {
        segment_bytes: 4 * 1024,
        body: 200,
        rounds: 10,
    },
    Workload {
        segment_bytes: 8 * 1024,
        body: 500,
        rounds: 8,
    },
    Workload {
        segment_bytes: 16 * 1024,
        body: 1500,
        rounds: 6,
    },
];

/// Builds the directory of a workload in one life that ends with a clean close. Returns the
/// disk, the book and the time the life ended at.
fn build(w: Workload) -> (MemStorage, Book, i64) {
    let disk = MemStorage::new();
    let clock = ManualClock::new(T0);
    let mut book = Book::default();
    let engine = open(&disk, &clock, w.segment_bytes, "build");
    let body = vec![b'.'; w.body];
    // Never delivered: expired by a first compaction before start.
    for _ in 0..3 {
        book.publish(&engine, Kind::Exp, &body, After::NOW);
    }
    clock.advance(RETENTION + Duration::from_secs(1));
    let stats = engine.compact_now().unwrap();
    assert_eq!(stats.events_expired, 3);
    book.expired.extend(book.kinds.keys().copied());

    book.register(&engine);
    engine.start();
    let mut laters = Vec::new();
    let mut live_job = None;
    for round in 0..w.rounds {
        for _ in 0..4 {
            book.publish(&engine, Kind::Ack, &body, After::NOW);
        }
        laters.push(book.publish(&engine, Kind::Later, &body, After::delay(DAY)));
        if round % 2 == 0 {
            book.publish(&engine, Kind::Forge, &body, After::NOW);
        }
        if round % 3 == 1 {
            book.publish(&engine, Kind::Plain, &body, After::NOW);
            let victim = laters[laters.len() - 2];
            book.cancel(&engine, victim);
        }
        if round % 4 == 2 {
            book.publish(&engine, Kind::Drop, &body, After::NOW);
        }
        match round {
            1 => {
                // Partly done, one event retrying.
                book.push(&engine, &["ok", "fail", "ok"], Duration::ZERO);
            }
            2 => {
                let job = book.push(&engine, &["ok", "ok"], DAY);
                book.cancel_job(&engine, job);
            }
            3 => {
                book.push(&engine, &["ok", "ok"], Duration::ZERO);
            }
            4 => live_job = Some(book.push(&engine, &["ok", "ok", "ok"], DAY)),
            _ => {}
        }
        // Outcomes land a round or two after their publishes, often in a later segment.
        if round % 2 == 1 {
            clock.advance(Duration::from_millis(1));
            assert!(engine.wait_idle(IDLE));
        }
    }
    clock.advance(Duration::from_millis(1));
    assert!(engine.wait_idle(IDLE));
    // A second attempt of the retrying events: forge's retry context counts 2.
    clock.advance(FORGE_AFTER);
    assert!(engine.wait_idle(IDLE));
    assert!(live_job.is_some());
    let m = engine.metrics();
    assert!(m.acked > 0 && m.retried > 0 && m.dropped > 0 && m.cancelled > 0);
    engine.close().unwrap();
    (disk, book, clock.now_ms())
}

/// Deliveries after a restart: id → (attempt, retry context) of each delivery.
type Seen = Arc<Mutex<BTreeMap<EventId, Vec<(u32, Option<RetryContext>)>>>>;

/// How the crashed pass ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// The crash interrupted it.
    Crashed,
    /// It completed; the disk crashed right after.
    Completed,
}

/// Opens a recovered disk and checks it against `world` (see the module doc). With
/// `second_pass`, the recovered log is compacted again and the engine restarted cleanly
/// before delivery.
fn check(
    disk: &MemStorage,
    now_ms: i64,
    segment_bytes: u64,
    world: &World,
    pass: Pass,
    second_pass: bool,
    context: &str,
) {
    let clock = ManualClock::new(now_ms);
    if second_pass {
        let engine = open(disk, &clock, segment_bytes, context);
        engine
            .compact_now()
            .unwrap_or_else(|e| panic!("{context}: second pass: {e}"));
        engine.close().unwrap();
    }
    let engine = Engine::open_storage(
        Arc::new(disk.clone()),
        options_with(&clock, segment_bytes, LONG_RETENTION),
    )
    .unwrap_or_else(|e| panic!("{context}: the directory does not reopen: {e}"));
    {
        for (job, before) in &world.live_jobs {
            assert_eq!(
                engine.job_stats(*job).unwrap(),
                *before,
                "{context}: job {job} stats after a second pass"
            );
        }
    }
    let seen: Seen = Arc::default();
    for name in NAMES {
        let seen = seen.clone();
        engine.on(name, move |event, _| {
            seen.lock()
                .entry(event.id())
                .or_default()
                .push((event.attempt(), event.retry_context().cloned()));
            Ok(())
        });
    }
    engine.start();
    // Past every due time, but within every pending event's retention (the scheduler drops
    // an event that falls due later than that).
    clock.set(clock.now_ms().max(world.deliver_at_ms) + 1);
    assert!(engine.wait_idle(IDLE), "{context}: idle");
    let seen = seen.lock().clone();
    for (id, next) in &world.pending {
        assert_eq!(
            seen.get(id),
            Some(&vec![next.clone()]),
            "{context}: pending event {id} must be delivered once as {next:?}"
        );
    }
    for id in seen.keys() {
        assert!(
            !world.finished.contains(id),
            "{context}: finished event {id} delivered again"
        );
        assert!(
            world.pending.contains_key(id) || world.expiring.contains(id),
            "{context}: delivered unknown event {id}"
        );
    }
    for id in &world.expiring {
        match seen.get(id) {
            None => {}
            Some(d) if pass == Pass::Crashed && !second_pass && d == &vec![(1, None)] => {}
            Some(d) => panic!("{context}: event {id} past retention delivered: {d:?}"),
        }
    }
    for (job, before) in &world.live_jobs {
        assert_eq!(
            engine.job_stats(*job).unwrap(),
            JobStats {
                success: before.success + before.in_progress,
                ..JobStats::default()
            },
            "{context}: job {job} completes"
        );
    }
    assert_eq!(engine.metrics().pending, 0, "{context}");
    let id = engine.publish("later", b"x", After::delay(DAY)).unwrap();
    assert!(id > world.max_event, "{context}: event id {id} reused");
    let job = engine.push("job", ["x"], DAY).unwrap();
    assert!(job > world.max_job, "{context}: job id {job} reused");
    engine.close().unwrap();
}

/// Every recovery of a crashed disk: each mode of `CrashMode::all_for`, with and without
/// the loss of unsynced directory entries.
fn recoveries(seed: u64) -> Vec<(CrashMode, bool)> {
    CrashMode::all_for(seed)
        .into_iter()
        .flat_map(|mode| [(mode, false), (mode, true)])
        .collect()
}

/// Counts what was checked.
#[derive(Default, Debug)]
struct Tally {
    /// Recovered disks checked (each twice: as is and after a second pass).
    crash_states: u64,
    /// Of them, crashes during recovery after a compaction.
    recovery_crash_states: u64,
    /// Storage operations of the compaction passes crashed.
    pass_ops: Vec<u64>,
}

/// Crashes the pass that `life` ends with at each of its storage operations. `life` opens
/// an engine on a new disk, brings it to the moment before the pass, and returns the disk,
/// the engine and the world to check against.
fn crash_every_pass_op(
    w: Workload,
    seed: u64,
    tally: &mut Tally,
    crash_recovery: bool,
    life: &dyn Fn(&ManualClock) -> (MemStorage, Engine, World),
) {
    for k in 1.. {
        let clock = ManualClock::new(0);
        let (disk, engine, world) = life(&clock);
        let before = disk.ops();
        disk.crash_at(before + k);
        let result = engine.compact_now();
        let pass = if disk.crashed() {
            assert!(result.is_err(), "a pass that crashed returned {result:?}");
            Pass::Crashed
        } else {
            result.unwrap();
            tally.pass_ops.push(disk.ops() - before);
            disk.crash_now();
            Pass::Completed
        };
        let _ = engine.close();
        drop(engine);
        let now_ms = clock.now_ms();
        for (mode, lose_dir) in recoveries(seed) {
            let context =
                format!("{w:?}: crash at pass operation {k}, {mode:?}, lose dir ops {lose_dir}");
            // Each use gets its own copy: recovering a disk (even to copy it) crashes it.
            let recovered = || disk.after_crash_with(mode, lose_dir);
            if crash_recovery && (mode == CrashMode::DropUnsynced || lose_dir) {
                crash_every_recovery_op(&recovered, now_ms, w, &world, pass, tally, &context);
            }
            check(
                &recovered(),
                now_ms,
                w.segment_bytes,
                &world,
                pass,
                false,
                &context,
            );
            check(
                &recovered(),
                now_ms,
                w.segment_bytes,
                &world,
                pass,
                true,
                &context,
            );
            tally.crash_states += 1;
        }
        if pass == Pass::Completed {
            break;
        }
    }
}

/// Crashes the reopening of `disk` at each storage operation it performs (removing a
/// temporary file, cutting a torn tail, ...), then recovers and checks.
fn crash_every_recovery_op(
    disk: &dyn Fn() -> MemStorage,
    now_ms: i64,
    w: Workload,
    world: &World,
    pass: Pass,
    tally: &mut Tally,
    context: &str,
) {
    let probe = disk();
    let clock = ManualClock::new(now_ms);
    drop(open(&probe, &clock, w.segment_bytes, context));
    let ops = probe.ops();
    for j in 1..=ops {
        let d = disk();
        d.crash_at(j);
        if let Ok(engine) =
            Engine::open_storage(Arc::new(d.clone()), options(&clock, w.segment_bytes))
        {
            let _ = engine.close();
        }
        for lose_dir in [false, true] {
            let recovered = d.after_crash_with(CrashMode::TearLastWrite { keep: 0 }, lose_dir);
            let context = format!(
                "{context}; reopen crashed at operation {j}/{ops}, lose dir ops {lose_dir}"
            );
            check(
                &recovered,
                now_ms,
                w.segment_bytes,
                world,
                pass,
                false,
                &context,
            );
            tally.recovery_crash_states += 1;
        }
    }
}

impl Book {
    fn copy(&self) -> Book {
        Book {
            kinds: self.kinds.clone(),
            cancelled: self.cancelled.clone(),
            expired: self.expired.clone(),
            expiring: self.expiring.clone(),
            jobs: self.jobs.clone(),
            attempts: Arc::new(Mutex::new(self.attempts.lock().clone())),
        }
    }
}

/// The crashed life: events past retention are published, the clock passes their retention
/// (and nothing else's), and the pass both expires them and compacts. Not started, so the
/// pass is the only thing that writes.
fn expiring_life(
    base: &MemStorage,
    book: &Book,
    end_ms: i64,
    w: Workload,
) -> impl Fn(&ManualClock) -> (MemStorage, Engine, World) {
    let base = snapshot(base);
    let book = book.copy();
    move |clock| {
        let disk = snapshot(&base);
        clock.set(end_ms);
        let engine = open(&disk, clock, w.segment_bytes, "crashed life");
        let mut book = book.copy();
        // Retention counts from the first due time, so the expiring events are published
        // (on a clock stepped back) before every event still pending was first due: the life
        // began `RETENTION + 1 s` after T0.
        clock.set(T0 + RETENTION.as_millis() as i64 - 1_000);
        for _ in 0..2 {
            let id = book.publish(&engine, Kind::Exp, b"expiring", After::NOW);
            book.expiring.insert(id);
        }
        clock.advance(RETENTION + Duration::from_secs(1));
        let world = book.world(&engine, end_ms);
        (disk, engine, world)
    }
}

/// The crashed life, started: a clean pass, then more events published, acknowledged,
/// retried and cancelled, then the pass that crashes (compaction of a compacted log).
fn interleaved_life(
    base: &MemStorage,
    book: &Book,
    end_ms: i64,
    w: Workload,
) -> impl Fn(&ManualClock) -> (MemStorage, Engine, World) {
    let base = snapshot(base);
    let book = book.copy();
    move |clock| {
        let disk = snapshot(&base);
        clock.set(end_ms);
        let engine = open(&disk, clock, w.segment_bytes, "crashed life");
        let mut book = book.copy();
        book.register(&engine);
        engine.start();
        engine.compact_now().unwrap();
        let body = vec![b'+'; w.body];
        let mut laters = Vec::new();
        for round in 0..4 {
            for _ in 0..3 {
                book.publish(&engine, Kind::Ack, &body, After::NOW);
            }
            laters.push(book.publish(&engine, Kind::Later, &body, After::delay(DAY)));
            if round % 2 == 0 {
                book.publish(&engine, Kind::Forge, &body, After::NOW);
            }
            if round == 2 {
                book.cancel(&engine, laters[0]);
            }
            clock.advance(Duration::from_millis(1));
            assert!(engine.wait_idle(IDLE));
        }
        // Everything due is done; the next due time is minutes away.
        let world = book.world(&engine, end_ms);
        (disk, engine, world)
    }
}

fn report(what: &str, tally: &Tally, started: Instant) {
    println!(
        "{what}: {} crash states of the pass checked (each as recovered and after a second pass), \
         {} crash states of recovery after a pass; pass operations per workload {:?}; {:.1} s",
        tally.crash_states,
        tally.recovery_crash_states,
        tally.pass_ops,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_crash_at_every_storage_operation_of_a_pass_loses_nothing_and_resurrects_nothing() {
    let started = Instant::now();
    let mut tally = Tally::default();
    for (i, w) in WORKLOADS.into_iter().enumerate() {
        let (base, book, end_ms) = build(w);
        let life = expiring_life(&base, &book, end_ms, w);
        crash_every_pass_op(w, 1 + i as u64, &mut tally, true, &life);
    }
    report("expiring pass", &tally, started);
    assert!(tally.crash_states > 100);
}

#[test]
fn a_crash_in_a_pass_after_more_traffic_on_a_compacted_log() {
    let started = Instant::now();
    let mut tally = Tally::default();
    for (i, w) in WORKLOADS.into_iter().enumerate() {
        let (base, book, end_ms) = build(w);
        let life = interleaved_life(&base, &book, end_ms, w);
        crash_every_pass_op(w, 11 + i as u64, &mut tally, false, &life);
    }
    report("interleaved pass", &tally, started);
    assert!(tally.crash_states > 100);
}
