//! Concurrency models of the log's and the engine's thread hand-offs, explored under
//! `shuttle`.
//!
//! Built only with `RUSTFLAGS="--cfg afterlog_shuttle"`: then the locks, condition variables
//! and threads of the log and the engine are shuttle's (src/sync.rs), and each model below
//! runs the real `Log` or `Engine` on a `MemStorage` disk under many schedules, chosen at
//! random and by PCT (probabilistic concurrency testing, which finds bugs needing a few
//! unlikely preemptions).
//! A thread that waits forever is reported as a deadlock; a failing schedule is printed as a
//! string that `AFTERLOG_SHUTTLE_REPLAY` replays (docs/TESTING.md, "Concurrency models").
//!
//! ```text
//! RUSTFLAGS="--cfg afterlog_shuttle" CARGO_TARGET_DIR=target/shuttle \
//!     cargo test --release --test shuttle
//! ```
//!
//! Knobs: `AFTERLOG_SHUTTLE_ITERS` (schedules per model and scheduler, default 30,000),
//! `AFTERLOG_SHUTTLE_PCT_DEPTH` (default 3), `AFTERLOG_SHUTTLE_REPLAY` (a failing schedule;
//! run the one model it came from).
#![cfg(afterlog_shuttle)]

use afterlog::format::{Cancel, CancelTarget, Publish, PublishEntry, Record, RecordKind};
use afterlog::index::{Index, Location};
use afterlog::log::{Log, LogOptions, Position};
use afterlog::storage::{CrashMode, MemStorage, Storage};
use afterlog::{
    After, Context, Engine, Error, Event, EventId, EventState, HandlerError, HandlerOptions,
    ManualClock, Options, RetryReason, log::is_temp_name,
};
use shuttle::sync::Mutex;
use shuttle::thread;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Schedules explored per model and per scheduler.
fn iterations() -> usize {
    std::env::var("AFTERLOG_SHUTTLE_ITERS")
        .ok()
        .map(|v| v.parse().expect("AFTERLOG_SHUTTLE_ITERS is a number"))
        .unwrap_or(30_000)
}

/// Runs `model` under `iterations()` random schedules and as many PCT schedules, or replays
/// the schedule in `AFTERLOG_SHUTTLE_REPLAY`.
fn explore(name: &str, model: impl Fn() + Send + Sync + Clone + 'static) {
    let _hint = ReplayHint;
    if let Ok(schedule) = std::env::var("AFTERLOG_SHUTTLE_REPLAY") {
        // The schedule as shuttle prints it: quotes and line breaks are ignored.
        shuttle::replay(model, &schedule.replace('"', ""));
        return;
    }
    let depth = std::env::var("AFTERLOG_SHUTTLE_PCT_DEPTH")
        .ok()
        .map(|v| v.parse().expect("AFTERLOG_SHUTTLE_PCT_DEPTH is a number"))
        .unwrap_or(3);
    let n = iterations();
    shuttle::check_random(model.clone(), n);
    shuttle::check_pct(model, n, depth);
    eprintln!("shuttle model {name}: {n} random and {n} PCT (depth {depth}) schedules passed");
}

/// Says how to replay a failing schedule (shuttle prints the schedule itself).
struct ReplayHint;

impl Drop for ReplayHint {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // libtest names the thread after the test.
            let test = std::thread::current().name().unwrap_or("<test>").to_owned();
            eprintln!(
                "replay it: AFTERLOG_SHUTTLE_REPLAY='<the failing schedule above>' \
                 RUSTFLAGS=\"--cfg afterlog_shuttle\" CARGO_TARGET_DIR=target/shuttle \
                 cargo test --release --test shuttle -- --exact {test}"
            );
        }
    }
}

/// 4 KiB segments, so a few records fill one.
const SMALL_SEGMENT: u64 = 4096;
/// Segments no model fills (small enough that zero-filling one costs little).
const LARGE_SEGMENT: u64 = 64 << 10;

fn options(segment_bytes: u64, prepare_in_background: bool) -> LogOptions {
    LogOptions {
        segment_bytes,
        prepare_in_background,
        ..LogOptions::default()
    }
}

/// A record as bytes: its kind and encoded payload.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owned {
    kind: RecordKind,
    payload: Vec<u8>,
}

impl Owned {
    fn of(record: &Record<'_>) -> Owned {
        let mut payload = Vec::new();
        record.encode(&mut payload);
        Owned {
            kind: record.kind(),
            payload,
        }
    }

    fn record(&self) -> Record<'_> {
        Record::decode(self.kind, &self.payload).expect("a record this test encoded")
    }
}

/// Publish record `n`, with a body of `body_len` bytes (a record is about `body_len + 60`).
fn publish(n: u64, body_len: usize) -> Owned {
    let body = vec![n as u8; body_len];
    let entries = [PublishEntry {
        id: EventId(n + 1),
        due_ms: 1_000 + n as i64,
        name: "model",
        body: &body,
    }];
    Owned::of(&Record::Publish(Publish::new(None, 7, &entries)))
}

/// Opens the log on `disk`, returning it with every record recovery read, in order.
fn open(disk: &MemStorage, options: LogOptions) -> (Log, Vec<(Position, Owned)>) {
    let mut recovered = Vec::new();
    let storage: Arc<dyn Storage> = Arc::new(disk.clone());
    let (log, _) = Log::open(storage, options, |position, record| {
        recovered.push((position, Owned::of(record)));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("open failed: {e}"));
    (log, recovered)
}

/// Appends a record; once the append returned `Ok`, checks that a power cut at this moment
/// would leave the record on disk, at its position (the sync covering it returned first).
fn append(disk: &MemStorage, log: &Log, owned: &Owned) -> afterlog::Result<Position> {
    let position = log.append(&owned.record())?;
    assert_durable(disk, position, owned);
    Ok(position)
}

/// Checks that a power cut at this moment would leave `owned` on disk at `position`.
fn assert_durable(disk: &MemStorage, position: Position, owned: &Owned) {
    let survivor = disk.would_survive(CrashMode::DropUnsynced, true);
    let mut found = None;
    Log::scan(&survivor, |p, record| {
        if p == position {
            found = Some(Owned::of(record));
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("scan of what a power cut would leave: {e}"));
    assert_eq!(
        found.as_ref(),
        Some(owned),
        "an append returned {position:?} before its record was durable"
    );
}

/// Closes the last handle on a log.
fn close(log: Arc<Log>) -> afterlog::Result<()> {
    Arc::try_unwrap(log)
        .unwrap_or_else(|_| panic!("every thread holding the log was joined"))
        .close()
}

/// Checks what every appender got back: the records sorted by sequence number have
/// consecutive numbers from `first_seq` and increasing positions (queue order is sequence
/// order is file order).
fn check_queue_order(appended: &mut [(Position, Owned)], first_seq: u64) {
    appended.sort_by_key(|(p, _)| p.seq);
    for (i, (p, _)) in appended.iter().enumerate() {
        assert_eq!(
            p.seq,
            first_seq + i as u64,
            "sequence numbers: {appended:?}"
        );
    }
    for pair in appended.windows(2) {
        let (a, b) = (pair[0].0, pair[1].0);
        assert!(
            (a.segment, a.offset) < (b.segment, b.offset),
            "record {} at {a:?} is not before record {} at {b:?}",
            a.seq,
            b.seq
        );
    }
}

// ---------------------------------------------------------------------------------------
// a. Group commit
// ---------------------------------------------------------------------------------------

/// Three appenders of two records each (about 1.3 KiB, so three fill a 4 KiB segment and a
/// sync group rolls inside its write) while the writer runs; optionally a fourth thread that
/// flushes, appends and asks for a roll. Every append returns `Ok`; sequence numbers are
/// consecutive and in file order; each record reads back at its position at once; a roll
/// returns with the records before it sealed; a reopen recovers exactly what was appended,
/// where it was appended.
fn group_commit(prepare_in_background: bool, flush_and_roll: bool) {
    let disk = MemStorage::new();
    let (log, recovered) = open(&disk, options(SMALL_SEGMENT, prepare_in_background));
    assert!(recovered.is_empty());
    let log = Arc::new(log);
    let appenders: Vec<_> = (0..3u64)
        .map(|t| {
            let (disk, log) = (disk.clone(), log.clone());
            thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..2 {
                    let owned = publish(t * 2 + i, 1200 + 50 * (t * 2 + i) as usize);
                    let position = append(&disk, &log, &owned)
                        .unwrap_or_else(|e| panic!("append of appender {t} failed: {e}"));
                    // Read back while the writer writes and rolls: from the active
                    // segment, or from the map of a sealed one.
                    let read = log
                        .read(position.segment, position.offset)
                        .unwrap_or_else(|e| panic!("read of {position:?}: {e}"));
                    assert_eq!(
                        (read.seq(), read.payload()),
                        (position.seq, &owned.payload[..])
                    );
                    mine.push((position, owned));
                }
                assert!(mine[0].0.seq < mine[1].0.seq, "{mine:?}");
                mine
            })
        })
        .collect();
    let roller = flush_and_roll.then(|| {
        let (disk, log) = (disk.clone(), log.clone());
        thread::spawn(move || {
            log.flush().expect("flush");
            let owned = publish(100, 40);
            let position = append(&disk, &log, &owned).expect("append before the roll");
            log.roll().expect("roll");
            let sealed: Vec<u64> = log.sealed_segments().iter().map(|s| s.id).collect();
            assert!(
                sealed.contains(&position.segment),
                "segment {} of a record appended before roll() is not sealed: {sealed:?}",
                position.segment
            );
            (position, owned)
        })
    });
    let mut appended = Vec::new();
    for handle in appenders {
        appended.extend(handle.join().expect("appender"));
    }
    if let Some(handle) = roller {
        appended.push(handle.join().expect("roller"));
    }
    check_queue_order(&mut appended, 1);
    close(log).expect("close");
    assert_no_temporary_files(&disk);

    let (log, recovered) = open(&disk, options(SMALL_SEGMENT, prepare_in_background));
    assert_eq!(
        recovered, appended,
        "the reopen recovers exactly what was appended"
    );
    log.close().expect("close after reopen");
}

#[test]
fn group_commit_appenders_get_their_positions_and_a_reopen_recovers_them() {
    explore("group commit", || group_commit(false, false));
}

#[test]
fn group_commit_with_a_flush_and_a_roll_racing_the_appends() {
    explore("group commit, flush and roll", || group_commit(false, true));
}

#[test]
fn group_commit_with_segments_prepared_in_the_background() {
    explore("group commit, background preparation", || {
        group_commit(true, true)
    });
}

// ---------------------------------------------------------------------------------------
// b. Wake tree
// ---------------------------------------------------------------------------------------

const TREE_APPENDERS: u64 = 7;

/// The fewest syncs any schedule needed for the wake-tree model's 7 records: 1 means one
/// sync group held all 7, so waiter 0 woke 1 and 2, 1 woke 3 and 4, 2 woke 5 and 6.
static FEWEST_TREE_SYNCS: AtomicU64 = AtomicU64::new(u64::MAX);

/// Seven appenders of one record each into large segments: every sync group is one sync.
/// In a group of several, the writer wakes only the first waiter and each waiter wakes two
/// more; a waiter nobody wakes leaves every thread blocked, which shuttle reports.
fn wake_tree() {
    let disk = MemStorage::new();
    let (log, _) = open(&disk, options(LARGE_SEGMENT, false));
    let log = Arc::new(log);
    let appenders: Vec<_> = (0..TREE_APPENDERS)
        .map(|t| {
            let (disk, log) = (disk.clone(), log.clone());
            thread::spawn(move || {
                let owned = publish(t, 10);
                (append(&disk, &log, &owned).expect("append"), owned)
            })
        })
        .collect();
    let mut appended: Vec<_> = appenders
        .into_iter()
        .map(|h| h.join().expect("appender"))
        .collect();
    check_queue_order(&mut appended, 1);
    let counters = log.counters();
    assert_eq!(counters.records, TREE_APPENDERS);
    FEWEST_TREE_SYNCS.fetch_min(counters.syncs, Ordering::Relaxed);
    close(log).expect("close");
}

/// A waker that unparks the (shuttle) thread polling a future.
struct Unpark(thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `future` to its end on this thread, parking between polls.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let waker = std::task::Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park();
    }
}

/// Two blocking appenders and two futures share sync groups; a fifth appender drops its
/// future at once and leaves its work to whoever completes the records. Every future is
/// woken (else a deadlock) with its records durable, and the dropped one's work runs once.
fn async_completions() {
    let disk = MemStorage::new();
    let (log, _) = open(&disk, options(LARGE_SEGMENT, false));
    let log = Arc::new(log);
    let ran = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..4u64 {
        let (disk, log) = (disk.clone(), log.clone());
        handles.push(thread::spawn(move || {
            let owned = publish(t, 10);
            if t < 2 {
                return (append(&disk, &log, &owned).expect("append"), owned);
            }
            let durable = log.submit_all_async(&[owned.record()]).expect("submit");
            let position = block_on(durable).expect("durable")[0];
            assert_durable(&disk, position, &owned);
            (position, owned)
        }));
    }
    let dropper = {
        let (log, ran) = (log.clone(), ran.clone());
        thread::spawn(move || {
            let owned = publish(4, 10);
            let durable = log.submit_all_async(&[owned.record()]).expect("submit");
            durable.then_or_now(Box::new(move |written| {
                assert!(written.is_ok(), "the dropped future's records failed");
                ran.fetch_add(1, Ordering::SeqCst);
            }));
            drop(durable);
        })
    };
    let mut appended: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("appender"))
        .collect();
    dropper.join().expect("dropper");
    log.flush().expect("flush");
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "a dropped future's work ran {} times",
        ran.load(Ordering::SeqCst)
    );
    appended.sort_by_key(|(p, _)| p.seq);
    assert!(appended.windows(2).all(|w| w[0].0.offset < w[1].0.offset));
    close(log).expect("close");
}

#[test]
fn async_completions_wake_every_future_and_run_a_dropped_ones_work_once() {
    explore("async completions", async_completions);
}

#[test]
fn wake_tree_wakes_every_waiter_of_a_sync_group() {
    explore("wake tree", wake_tree);
    if std::env::var("AFTERLOG_SHUTTLE_REPLAY").is_err() {
        // Otherwise the model proved nothing about the tree.
        assert_eq!(
            FEWEST_TREE_SYNCS.load(Ordering::Relaxed),
            1,
            "no schedule put all {TREE_APPENDERS} appenders in one sync group"
        );
    }
}

// ---------------------------------------------------------------------------------------
// c. Poisoning
// ---------------------------------------------------------------------------------------

/// One record is appended and durable; then the next `sync_data` is armed to fail, and three
/// appenders of two records, a flush and a roll race. When the first sync after that is an
/// append group's, nothing can be acknowledged: every append and `close` fail with
/// `Error::Poisoned` (the flush and the roll too, unless they had nothing to sync), nothing
/// hangs, and after a power cut the disk holds the first record alone (a failed sync's writes
/// never reach the disk). When it is the sync of the segment the roll prepares, the roll fails
/// alone (a requested roll that cannot get its next segment leaves the log as it was): every
/// append succeeds and survives a power cut. With `big_records` (about 1.5 KiB), a group can
/// fill the segment, so the failed sync may be the one sealing it in the middle of a group's
/// write.
fn poisoning(big_records: bool) {
    let disk = MemStorage::new();
    let (log, _) = open(&disk, options(SMALL_SEGMENT, false));
    let first = publish(0, 20);
    let first_position = append(&disk, &log, &first).expect("the append before the fault");
    disk.fail_sync_once();
    let log = Arc::new(log);
    let body_len = if big_records { 1500 } else { 20 };
    let appenders: Vec<_> = (0..3u64)
        .map(|t| {
            let (disk, log) = (disk.clone(), log.clone());
            thread::spawn(move || {
                (0..2)
                    .map(|i| {
                        let owned = publish(1 + t * 2 + i, body_len);
                        let result = append(&disk, &log, &owned);
                        (owned, result)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let syncer = log.clone();
    let syncer = thread::spawn(move || {
        // Ahead of every append, a flush has nothing to sync and returns `Ok`; a roll then
        // fails the sync of the next segment it prepares, or finds the log poisoned.
        let flushed = syncer.flush();
        assert!(
            matches!(flushed, Ok(()) | Err(Error::Poisoned { .. })),
            "flush: {flushed:?}"
        );
        syncer.roll()
    });
    let appended: Vec<_> = appenders
        .into_iter()
        .flat_map(|h| h.join().expect("an appender"))
        .collect();
    let rolled = syncer.join().expect("the syncer");
    let roll_took_the_fault =
        matches!(&rolled, Err(Error::Io { op, .. }) if *op == "sync new segment");
    if roll_took_the_fault {
        for (owned, result) in &appended {
            assert!(
                result.is_ok(),
                "append of {owned:?} after a roll failed alone: {result:?}"
            );
        }
        assert!(log.poisoned().is_none());
        close(log).expect("close after a roll that failed alone");
        let (log, recovered) = open(
            &disk.after_crash(CrashMode::DropUnsynced),
            options(SMALL_SEGMENT, false),
        );
        assert_eq!(recovered.len(), 1 + appended.len());
        log.close().expect("close after reopen");
        return;
    }
    assert!(
        matches!(rolled, Ok(()) | Err(Error::Poisoned { .. })),
        "roll: {rolled:?}"
    );
    for (owned, result) in &appended {
        assert!(
            matches!(result, Err(Error::Poisoned { .. })),
            "append of {owned:?}: {result:?}, not poisoned"
        );
    }
    assert!(log.poisoned().is_some());
    match close(log) {
        Err(Error::Poisoned { .. }) => {}
        other => panic!("close of a poisoned log: {other:?}"),
    }

    let (log, recovered) = open(
        &disk.after_crash(CrashMode::DropUnsynced),
        options(SMALL_SEGMENT, false),
    );
    assert_eq!(recovered, vec![(first_position, first)]);
    log.close().expect("close after reopen");
}

#[test]
fn poisoning_fails_every_waiting_and_later_append() {
    explore("poisoning", || poisoning(false));
}

#[test]
fn poisoning_with_records_that_fill_segments() {
    explore("poisoning, full segments", || poisoning(true));
}

// ---------------------------------------------------------------------------------------
// d. Segment swap while a reader maps it
// ---------------------------------------------------------------------------------------

const SWAP_RECORDS: u64 = 6;

/// True once segment `id` is sealed (it stays sealed).
fn sealed(log: &Log, id: u64) -> bool {
    log.sealed_segments().iter().any(|s| s.id == id)
}

/// Segment 1 holds six records. A compactor rewrites it keeping records 0, 2 and 4, then,
/// under the model's index lock, installs the new version and moves their locations (as the
/// engine does). Meanwhile:
/// - a reader takes locations and a handle under that lock, then reads through the handle:
///   every read returns exactly the record the location names, whichever version it got;
/// - another reader reads record 0 (at the same offset in both versions) with `Log::read`
///   and, once the segment is sealed, visits it: it sees the old or the new version whole,
///   never a mix or a part.
///
/// With `roll_racing`, segment 1 is sealed by a roll racing the readers (they read it
/// first with `pread`, then through a map of the sealed bytes) and the compactor waits for
/// the seal. After the swap, reads are of the new version: the old offset of record 1 holds
/// record 2.
fn segment_swap(roll_racing: bool) {
    let disk = MemStorage::new();
    let (log, _) = open(&disk, options(LARGE_SEGMENT, false));
    let records: Vec<Owned> = (0..SWAP_RECORDS)
        .map(|n| publish(n, 30 + n as usize))
        .collect();
    let old: Vec<(u64, Owned)> = records
        .iter()
        .map(|r| {
            let p = append(&disk, &log, r).expect("append");
            assert_eq!(p.segment, 1);
            (p.offset, r.clone())
        })
        .collect();
    if !roll_racing {
        log.roll().expect("roll");
        assert!(sealed(&log, 1));
    }
    let all: Vec<Owned> = records.clone();
    let kept: Vec<Owned> = records.iter().step_by(2).cloned().collect();
    let log = Arc::new(log);
    // The model's index: each live record's current offset in segment 1.
    let index = Arc::new(Mutex::new(old.clone()));

    let mut threads = Vec::new();
    if roll_racing {
        let log = log.clone();
        threads.push(thread::spawn(move || log.roll().expect("roll")));
    }
    threads.push({
        let (log, index) = (log.clone(), index.clone());
        thread::spawn(move || {
            while !sealed(&log, 1) {
                thread::yield_now();
            }
            let compacted = log
                .compact_segment(1, &mut |p, _| p.seq % 2 == 1)
                .expect("compact");
            assert_eq!(compacted.records_kept, 3);
            let mut index = index.lock().unwrap();
            log.install_compacted(&compacted);
            index.retain(|(offset, _)| compacted.moved.iter().any(|&(from, _)| from == *offset));
            for (offset, _) in index.iter_mut() {
                let &(_, to) = compacted
                    .moved
                    .iter()
                    .find(|&&(from, _)| from == *offset)
                    .unwrap();
                *offset = to;
            }
        })
    });
    threads.push({
        let (log, index) = (log.clone(), index.clone());
        thread::spawn(move || {
            for _ in 0..2 {
                let (locations, handle) = {
                    let index = index.lock().unwrap();
                    (index.clone(), log.segment_reader(1).expect("segment 1"))
                };
                for (offset, expected) in &locations {
                    let read = handle.read(*offset).unwrap_or_else(|e| {
                        panic!("read at {offset} through a pinned handle: {e}")
                    });
                    assert_eq!(read.kind(), expected.kind);
                    assert_eq!(read.payload(), &expected.payload[..], "at {offset}");
                }
            }
        })
    });
    threads.push({
        let (log, old, all, kept) = (log.clone(), old.clone(), all.clone(), kept.clone());
        thread::spawn(move || {
            for _ in 0..2 {
                let read = log.read(1, old[0].0).expect("record 0");
                assert_eq!(read.payload(), &old[0].1.payload[..]);
                if sealed(&log, 1) {
                    let mut visited = Vec::new();
                    log.visit_segment(1, &mut |_, r| visited.push(Owned::of(r)))
                        .expect("visit");
                    assert!(
                        visited == all || visited == kept,
                        "a mixed or partial version: {visited:?}"
                    );
                }
            }
        })
    });
    for handle in threads {
        handle.join().expect("a racing thread");
    }

    // After the swap: the new version only.
    let mut visited = Vec::new();
    log.visit_segment(1, &mut |_, r| visited.push(Owned::of(r)))
        .expect("visit");
    assert_eq!(visited, kept);
    let read = log.read(1, old[1].0).expect("the new version's record 2");
    assert_eq!(read.payload(), &old[2].1.payload[..]);
    for (offset, expected) in index.lock().unwrap().iter() {
        let read = log.read(1, *offset).expect("a moved record");
        assert_eq!(read.payload(), &expected.payload[..]);
    }
    close(log).expect("close");

    let (log, recovered) = open(&disk, options(LARGE_SEGMENT, false));
    let recovered: Vec<Owned> = recovered.into_iter().map(|(_, r)| r).collect();
    assert_eq!(recovered, kept);
    log.close().expect("close after reopen");
}

#[test]
fn segment_swap_readers_see_one_whole_version() {
    explore("segment swap", || segment_swap(false));
}

#[test]
fn segment_swap_of_a_segment_sealed_while_it_is_read() {
    explore("segment swap, racing the seal", || segment_swap(true));
}

// ---------------------------------------------------------------------------------------
// e. Roll and background preparation racing close
// ---------------------------------------------------------------------------------------

/// Segments are prepared on a background thread. One thread appends and rolls twice,
/// another appends two records that each fill most of a segment, while `close` runs. Every
/// call returns `Ok` or `Error::Closed`; `close` returns `Ok` and leaves no temporary
/// segment behind; a reopen recovers exactly the records whose append returned `Ok`.
fn roll_racing_close() {
    let disk = MemStorage::new();
    let (log, _) = open(&disk, options(SMALL_SEGMENT, true));
    let log = Arc::new(log);
    let ok_or_closed = |what: &str, result: afterlog::Result<()>| match result {
        Ok(()) | Err(Error::Closed) => {}
        Err(e) => panic!("{what}: {e}"),
    };
    let roller = {
        let (disk, log) = (disk.clone(), log.clone());
        thread::spawn(move || {
            let mut acked = Vec::new();
            for n in 0..2 {
                let owned = publish(n, 40);
                match append(&disk, &log, &owned) {
                    Ok(p) => acked.push((p, owned)),
                    Err(Error::Closed) => {}
                    Err(e) => panic!("append: {e}"),
                }
                ok_or_closed("roll", log.roll());
            }
            acked
        })
    };
    let appender = {
        let (disk, log) = (disk.clone(), log.clone());
        thread::spawn(move || {
            let mut acked = Vec::new();
            for n in 10..12 {
                let owned = publish(n, 2500);
                match append(&disk, &log, &owned) {
                    Ok(p) => acked.push((p, owned)),
                    Err(Error::Closed) => {}
                    Err(e) => panic!("append: {e}"),
                }
            }
            acked
        })
    };
    log.close().expect("close");
    assert_no_temporary_files(&disk);
    let mut acked = roller.join().expect("roller");
    acked.extend(appender.join().expect("appender"));
    assert_no_temporary_files(&disk);
    drop(log);
    acked.sort_by_key(|(p, _)| p.seq);

    let (log, recovered) = open(&disk, options(SMALL_SEGMENT, true));
    assert_eq!(
        recovered, acked,
        "the reopen recovers exactly the acknowledged records"
    );
    log.close().expect("close after reopen");
}

fn assert_no_temporary_files(disk: &MemStorage) {
    let names = disk.list().expect("list");
    assert!(
        !names.iter().any(|n| is_temp_name(n)),
        "a temporary segment is left after close: {names:?}"
    );
}

#[test]
fn roll_and_background_preparation_racing_close() {
    explore("roll racing close", roll_racing_close);
}

// ---------------------------------------------------------------------------------------
// f. The engine: scheduler, workers, watchdog and close
// ---------------------------------------------------------------------------------------
//
// A real `Engine` on a `ManualClock` that threads of the model advance. The handlers do not
// panic: shuttle fails a schedule on any panic, even one the worker would catch.

/// When every engine model starts.
const T0_MS: i64 = 1_700_000_000_000;

/// A small engine: `workers` workers, no background compaction, segments prepared in line
/// (4 KiB: no model fills one).
fn engine(disk: &MemStorage, clock: &ManualClock, workers: usize) -> Engine {
    let options = Options::default()
        .clock(clock.clone())
        .workers(workers)
        .compaction_interval(None)
        .prepare_spare(false)
        .segment_bytes(SMALL_SEGMENT);
    Engine::open_storage(Arc::new(disk.clone()), options).expect("open the engine")
}

/// What a reopen of `disk` finds: each event's state once every record is replayed (as the
/// engine's recovery does it: records in log order, then an event left running becomes
/// scheduled again, or cancelled if its job was), and its acks and retries by attempt.
///
/// A worker's attempt record may follow the cancel of its event (the worker read the event
/// before the cancel): replay rejects it, as the engine did. The engine keeps a cancel and
/// the attempts and outcomes of the events it names in the log in the order it applied
/// them, so the reopen decides as the engine did.
struct Replayed {
    index: Index,
    outcomes: Vec<(EventId, u32, Outcome)>,
    /// Each event's attempt records and cancels (of the event itself), by their place in
    /// the log.
    history: Vec<(EventId, Written)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Written {
    Attempt,
    Cancel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Acked,
    Retried(Option<RetryReason>),
}

impl Replayed {
    fn of(disk: &MemStorage) -> Replayed {
        let mut index = Index::new();
        let mut outcomes = Vec::new();
        let mut history = Vec::new();
        let mut effects = Vec::new();
        Log::scan(disk, |position, record| {
            let location = Location {
                segment: position.segment as u32,
                offset: position.offset as u32,
            };
            // A late outcome of a cancelled event is a duplicate: rejected, and harmless.
            let _ = index.apply(location, record, &mut effects);
            match record {
                Record::Ack(a) => outcomes.push((a.event, a.attempt, Outcome::Acked)),
                Record::Retry(r) => outcomes.push((
                    r.event,
                    r.attempt,
                    Outcome::Retried(RetryReason::from_code(r.reason)),
                )),
                Record::Attempt(a) => history.push((a.event, Written::Attempt)),
                Record::Cancel(Cancel {
                    target: CancelTarget::Event(id),
                    ..
                }) => history.push((*id, Written::Cancel)),
                _ => {}
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("scan after close: {e}"));
        index.finish_replay(T0_MS, &mut effects);
        Replayed {
            index,
            outcomes,
            history,
        }
    }

    fn state(&self, id: EventId) -> EventState {
        self.index
            .state(id)
            .unwrap_or_else(|| panic!("{id} is in the log"))
    }

    /// What the log holds of `id`'s attempts and cancels, in log order.
    fn history_of(&self, id: EventId) -> Vec<Written> {
        self.history
            .iter()
            .filter(|(event, _)| *event == id)
            .map(|&(_, written)| written)
            .collect()
    }

    fn outcomes_of(&self, id: EventId) -> Vec<(u32, Outcome)> {
        self.outcomes
            .iter()
            .filter(|(event, _, _)| *event == id)
            .map(|&(_, attempt, outcome)| (attempt, outcome))
            .collect()
    }
}

/// Handler calls: each event's id with the stamp its handler took as it started.
#[derive(Clone, Default)]
struct Calls {
    /// One counter orders the handlers' starts and the returns of the model's calls.
    ticks: Arc<AtomicU64>,
    started: Arc<std::sync::Mutex<Vec<(EventId, u64)>>>,
}

impl Calls {
    fn stamp(&self) -> u64 {
        self.ticks.fetch_add(1, Ordering::SeqCst)
    }

    /// A handler that records its start and returns `Ok`.
    fn handler(
        &self,
    ) -> impl Fn(&Event, &mut Context) -> Result<(), HandlerError> + Send + Sync + 'static {
        let calls = self.clone();
        move |event, _| {
            let stamp = calls.stamp();
            calls.started().push((event.id(), stamp));
            Ok(())
        }
    }

    fn started(&self) -> std::sync::MutexGuard<'_, Vec<(EventId, u64)>> {
        // A std lock: held for one push or copy, with no shuttle operation inside.
        self.started.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn starts_of(&self, id: EventId) -> Vec<u64> {
        self.started()
            .iter()
            .filter(|(event, _)| *event == id)
            .map(|&(_, stamp)| stamp)
            .collect()
    }
}

/// Two workers deliver an event and a job of two, all due now, while another thread cancels
/// the event and then the job. Every handler runs at most once and nothing is in flight
/// once idle. A reopen finds each event cancelled exactly when a cancel said so (`cancel`
/// returned `true`, or `cancel_job` counted it) and acknowledged, once, otherwise; an event
/// that `cancel_job` counted never ran; the cancelled event ran only if its attempt had
/// begun before the cancel (its attempt record precedes the cancel in the log, and its
/// handler started before `cancel` returned, or was already being entered then).
fn cancel_racing_delivery(asynchronous: bool) {
    let disk = MemStorage::new();
    let clock = ManualClock::new(T0_MS);
    let engine = engine(&disk, &clock, 2);
    let calls = Calls::default();
    engine.on("model", calls.handler());
    let single = engine
        .publish("model", b"single", After::NOW)
        .expect("publish");
    let job = engine
        .push("model", ["first", "second"], Duration::ZERO)
        .expect("push");
    engine.start();
    let canceller = {
        let (engine, calls) = (engine.clone(), calls.clone());
        thread::spawn(move || {
            // The futures take the cancel ordering's write side on this thread and leave its
            // release to whoever completes their record (the log's writer).
            let cancelled = if asynchronous {
                block_on(engine.cancel_async(single))
            } else {
                engine.cancel(single)
            }
            .expect("cancel");
            let cancel_returned = calls.stamp();
            let counted = if asynchronous {
                block_on(engine.cancel_job_async(job))
            } else {
                engine.cancel_job(job)
            }
            .expect("cancel_job");
            (cancelled, cancel_returned, counted)
        })
    };
    let (cancelled, cancel_returned, counted) = canceller.join().expect("canceller");
    assert!(engine.wait_idle(Duration::from_secs(600)), "idle");
    let metrics = engine.metrics();
    assert_eq!(metrics.in_flight, 0, "nothing in flight once idle");
    assert_eq!(metrics.cancelled, u64::from(cancelled) + counted);
    engine.close().expect("close");

    let replayed = Replayed::of(&disk);
    let job_events: Vec<EventId> = replayed.index.job_events(job).collect();
    assert_eq!(job_events.len(), 2);
    let single_starts = calls.starts_of(single);
    assert!(single_starts.len() <= 1, "{single} ran {single_starts:?}");
    if cancelled {
        assert_eq!(replayed.state(single), EventState::Cancelled);
        if !single_starts.is_empty() {
            // A start after `cancel_returned` is a worker that began the attempt before the
            // cancel took effect and was still entering the handler: that attempt runs to
            // its end (its ack a duplicate), and no new one starts.
            assert_eq!(
                replayed.history_of(single),
                [Written::Attempt, Written::Cancel],
                "{single} ran (at {single_starts:?}; cancel returned at {cancel_returned}), \
                 so its attempt began before the cancel"
            );
            assert_eq!(replayed.outcomes_of(single), [(1, Outcome::Acked)]);
        }
    } else {
        assert_eq!(
            single_starts.len(),
            1,
            "{single}: not cancelled, so delivered"
        );
        assert_eq!(replayed.state(single), EventState::Succeeded);
        assert_eq!(replayed.outcomes_of(single), [(1, Outcome::Acked)]);
    }
    let mut cancelled_in_job = 0;
    for &id in &job_events {
        let starts = calls.starts_of(id);
        match replayed.state(id) {
            EventState::Cancelled => {
                cancelled_in_job += 1;
                assert!(
                    starts.is_empty(),
                    "{id} cancelled with its job ran at {starts:?}"
                );
            }
            EventState::Succeeded => {
                assert_eq!(
                    starts.len(),
                    1,
                    "{id} acknowledged, so run once: {starts:?}"
                );
                assert_eq!(replayed.outcomes_of(id), [(1, Outcome::Acked)]);
            }
            state => panic!("{id} is {state:?} after a reopen"),
        }
    }
    assert_eq!(
        cancelled_in_job, counted,
        "cancel_job counted what it cancelled"
    );
}

#[test]
fn cancel_and_cancel_job_racing_delivery() {
    explore("cancel racing delivery", || cancel_racing_delivery(false));
}

#[test]
fn cancel_async_and_cancel_job_async_racing_delivery() {
    explore("async cancel racing delivery", || {
        cancel_racing_delivery(true)
    });
}

/// A handler with a 1 s timeout returns while another thread moves the clock 2 s on, so the
/// watchdog (or the worker's own check of the deadline) may time the attempt out as it
/// ends. Exactly one outcome is written for the attempt: an ack, or a retry for
/// `FUNCTION_TIME_OUT`; the metrics agree; `close` returns.
fn timeout_racing_completion() {
    let disk = MemStorage::new();
    let clock = ManualClock::new(T0_MS);
    let engine = engine(&disk, &clock, 1);
    let entered = Arc::new(AtomicBool::new(false));
    {
        let entered = entered.clone();
        let options = HandlerOptions::default().timeout(Duration::from_secs(1));
        engine.on_with("model", options, move |_, _| {
            entered.store(true, Ordering::SeqCst);
            Ok(())
        });
    }
    let id = engine.publish("model", b"", After::NOW).expect("publish");
    engine.start();
    let advancer = {
        let clock = clock.clone();
        thread::spawn(move || {
            while !entered.load(Ordering::SeqCst) {
                thread::yield_now();
            }
            clock.advance(Duration::from_secs(2));
        })
    };
    advancer.join().expect("advancer");
    assert!(engine.wait_idle(Duration::from_secs(600)), "idle");
    let metrics = engine.metrics();
    assert_eq!(metrics.in_flight, 0, "nothing in flight once idle");
    engine.close().expect("close");

    let outcomes = Replayed::of(&disk).outcomes_of(id);
    match outcomes[..] {
        [(1, Outcome::Acked)] => {
            assert_eq!(
                (metrics.acked, metrics.retried, metrics.timed_out),
                (1, 0, 0)
            );
            TIMEOUT_OUTCOMES_SEEN.fetch_or(ACKED_SEEN, Ordering::Relaxed);
        }
        [(1, Outcome::Retried(Some(RetryReason::TimeOut)))] => {
            assert_eq!(
                (metrics.acked, metrics.retried, metrics.timed_out),
                (0, 1, 1)
            );
            let seen = if metrics.workers_replaced == 1 {
                WATCHDOG_SEEN
            } else {
                LATE_SEEN
            };
            TIMEOUT_OUTCOMES_SEEN.fetch_or(seen, Ordering::Relaxed);
        }
        _ => panic!("attempt 1 of {id} has one outcome, not {outcomes:?}"),
    }
}

/// The outcomes the timeout model's schedules reached: an ack, a time-out written by the
/// watchdog (which replaced the worker), one written by the worker that saw its result late.
static TIMEOUT_OUTCOMES_SEEN: AtomicU64 = AtomicU64::new(0);
const ACKED_SEEN: u64 = 1;
const WATCHDOG_SEEN: u64 = 2;
const LATE_SEEN: u64 = 4;

#[test]
fn handler_timeout_racing_its_completion() {
    explore("timeout racing completion", timeout_racing_completion);
    if std::env::var("AFTERLOG_SHUTTLE_REPLAY").is_err() {
        // Otherwise the model raced nothing.
        assert_eq!(
            TIMEOUT_OUTCOMES_SEEN.load(Ordering::Relaxed),
            ACKED_SEEN | WATCHDOG_SEEN | LATE_SEEN,
            "some outcome was reached by no schedule (1: ack, 2: watchdog, 4: late result)"
        );
    }
}

/// An event falls due (a thread moves the clock onto its due time) while `close` runs.
/// `close` returns, no thread hangs, and the log shows the event pending, or acknowledged
/// exactly when its handler ran.
fn close_racing_due_event() {
    let disk = MemStorage::new();
    let clock = ManualClock::new(T0_MS);
    let engine = engine(&disk, &clock, 1);
    let calls = Calls::default();
    engine.on("model", calls.handler());
    let id = engine
        .publish("model", b"", After::ms(1_000))
        .expect("publish");
    engine.start();
    let advancer = {
        let clock = clock.clone();
        thread::spawn(move || clock.advance(Duration::from_secs(1)))
    };
    engine.close().expect("close");
    advancer.join().expect("advancer");

    let replayed = Replayed::of(&disk);
    let starts = calls.starts_of(id);
    match replayed.state(id) {
        EventState::Succeeded => {
            assert_eq!(
                starts.len(),
                1,
                "{id} acknowledged, so run once: {starts:?}"
            );
            assert_eq!(replayed.outcomes_of(id), [(1, Outcome::Acked)]);
            CLOSE_OUTCOMES_SEEN.fetch_or(ACKED_SEEN, Ordering::Relaxed);
        }
        state if state.is_pending() => {
            assert!(
                starts.is_empty(),
                "{id} ran at {starts:?} but its ack is missing"
            );
            CLOSE_OUTCOMES_SEEN.fetch_or(PENDING_SEEN, Ordering::Relaxed);
        }
        state => panic!("{id} is {state:?} after a reopen"),
    }
}

/// What the close model's schedules left: the event acknowledged, or pending.
static CLOSE_OUTCOMES_SEEN: AtomicU64 = AtomicU64::new(0);
const PENDING_SEEN: u64 = 2;

#[test]
fn close_racing_an_event_falling_due() {
    explore("close racing a due event", close_racing_due_event);
    if std::env::var("AFTERLOG_SHUTTLE_REPLAY").is_err() {
        assert_eq!(
            CLOSE_OUTCOMES_SEEN.load(Ordering::Relaxed),
            ACKED_SEEN | PENDING_SEEN,
            "no schedule delivered the event before close, or every one did (1: ack, 2: pending)"
        );
    }
}
