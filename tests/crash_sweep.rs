//! The engine crashed at every mutating storage operation of seeded workloads, in every
//! crash mode, and failed by I/O errors at every operation.
//!
//! **Crash sweep.** Each seed gives a workload (`common::workload`): publishes, pushes (every
//! other one, and every other cancel, through its async call: `publish_async`, ...),
//! keyed publishes (`publish_with` on three keys: keeps, with and without a key window,
//! replaces and restatements, with priorities), pauses and resumes (a name paused while its
//! events fall due, and in some workloads reopened while paused), recurring schedules (two
//! ids, created, redefined and removed, every 30 or 60 s with each catch-up policy, firing
//! as the clock advances), dead letters (events that fail always and expire, events of a name
//! with no handler) redriven and purged, attempts, acknowledgements, retries, cancels of
//! events and jobs, segment rolls (4 KiB segments), expiry (20-minute retention),
//! `compact_now` and close-and-reopen (some a while later, so schedules catch up; crashes
//! also hit recovery), on a `ManualClock`. A run
//! without faults counts its storage operations; then, for every operation `n`, the workload
//! runs again on a disk that crashes at `n`, and what survives is recovered in every mode:
//! unsynced writes dropped; the last write torn at many bytes; torn in a sector followed by
//! zeros; garbage after the last synced byte — each with and without the loss of directory
//! entries not yet synced. Every crash state is recovered (`Log::open`) and its records
//! compared with the model of what the calls returned (`check_log`: for keys, a `Kept`
//! publish wrote nothing, a replace's new event and its holder's cancel are one record, a
//! restated body is the one an `Ok` call gave; no two pending events share a key; each name
//! is paused as its last `Ok` call left it, or as a failed later one would; each schedule is
//! defined as its last `Ok` call left it, no `Ok` call's record is lost, and no schedule has
//! two pending occurrences; every `Ok` redrive is a publish flagged as the redrive of its dead
//! letter, every `Ok` purge's letters are gone). A sample of states is also opened by a full
//! engine (`check_reopen`): its paused names, index, dead letters and schedules agree with
//! the records; it resumes the paused names and delivers everything; it redrives two dead
//! letters and delivers them; every schedule has one pending occurrence after start, which
//! fires; and across both lives no occurrence of a schedule is delivered by two events.
//!
//! Scale: `AFTERLOG_SEEDS` (default 20) workloads, `AFTERLOG_CRASH_STATES` (default 100,000)
//! crash states in all, spread over the crash points by tearing the last write at more or
//! fewer bytes; `AFTERLOG_FULL_EVERY` (default 97) — one state in this many is also reopened
//! by an engine (besides the first state of every crash point). `AFTERLOG_SEED=<seed>` runs
//! that one workload. A failure names its seed, crash operation and mode.
//!
//! **I/O errors.** For one workload, each storage operation `k` fails once, and separately
//! every operation from `k` on: no call that writes returns `Ok` after a failed sync (until
//! the workload reopens the engine), errors after a failed sync say the log is poisoned, and
//! every reopen (after a power cut, and with every write on the disk) is consistent with the
//! model.

mod common;

use afterlog::storage::{CrashMode, MemStorage, OpKind};
use common::workload::{Model, Step, check_log, check_reopen, recover, run, splitmix, steps};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// Failing seeds found by the sweep, kept as regression tests.
const REGRESSION_SEEDS: &[u64] = &[];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The crash modes of one crash point: `tears` positions of the last unsynced write (every
/// byte if it is short enough), a third of them as torn sectors, two garbage fills.
fn modes(disk: &MemStorage, seed: u64, tears: usize) -> Vec<CrashMode> {
    let mut modes = vec![CrashMode::DropUnsynced];
    let Some(len) = disk.last_unsynced_write_len() else {
        // Nothing unsynced: every mode leaves the same bytes.
        return modes;
    };
    let mut rng = seed;
    modes.push(CrashMode::GarbageAfterSynced { seed });
    modes.push(CrashMode::GarbageAfterSynced { seed: !seed });
    let sectors = tears.div_ceil(3);
    let tears = tears - sectors + 1;
    let keeps = |n: usize, rng: &mut u64| -> Vec<usize> {
        if n > len {
            (0..=len).collect()
        } else {
            let mut k: Vec<usize> = (0..n)
                .map(|i| i * len / n.max(1) + (splitmix(rng) as usize % (len / n.max(1)).max(1)))
                .collect();
            k.push(len);
            k.sort_unstable();
            k.dedup();
            k
        }
    };
    for keep in keeps(tears, &mut rng) {
        modes.push(CrashMode::TearLastWrite { keep });
    }
    for keep in keeps(sectors, &mut rng) {
        if keep < len {
            modes.push(CrashMode::TornSectorZeros { keep });
        }
    }
    modes
}

#[derive(Default)]
struct Totals {
    points: AtomicU64,
    states: AtomicU64,
    reopened: AtomicU64,
}

/// Prints how to rerun a seed if its sweep panics.
struct Reproduce(u64);

impl Drop for Reproduce {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "rerun this workload with: AFTERLOG_SEED={} cargo test --release --test crash_sweep -- crash_sweep --nocapture",
                self.0
            );
        }
    }
}

fn assert_clean(model: &Model, context: &str) {
    assert!(
        model.reopen_errors.is_empty(),
        "{context}: a reopen failed without a crash: {:?}",
        model.reopen_errors
    );
    let live = model.live.lock();
    assert!(
        live.violations.is_empty(),
        "{context}: {:?}",
        live.violations
    );
}

/// Sweeps one workload; `tears` tear positions per crash point.
fn sweep_seed(seed: u64, steps: &[Step], tears: usize, full_every: u64, totals: &Totals) {
    let _reproduce = Reproduce(seed);
    let probe = MemStorage::new();
    let model = run(&probe, steps, seed);
    assert_clean(&model, &format!("seed {seed} without a crash"));
    let total = probe.ops();
    let mut rng = seed;
    for op in 1..=total {
        let disk = MemStorage::new();
        disk.crash_at(op);
        let model = run(&disk, steps, seed);
        let point = format!("seed {seed}, crash at operation {op} of {total}");
        assert_clean(&model, &point);
        for (i, mode) in modes(&disk, seed ^ op, tears).into_iter().enumerate() {
            for lose_dir in [true, false] {
                let context =
                    format!("{point}, {mode:?}, lose unsynced directory entries: {lose_dir}");
                let after = disk.after_crash_with(mode, lose_dir);
                let scanned = recover(&after).unwrap_or_else(|e| panic!("{context}: {e}"));
                check_log(&model, &scanned).unwrap_or_else(|e| panic!("{context}: {e}"));
                totals.states.fetch_add(1, Ordering::Relaxed);
                if (i == 0 && lose_dir) || splitmix(&mut rng).is_multiple_of(full_every) {
                    let fresh = disk.after_crash_with(mode, lose_dir);
                    check_reopen(&fresh, &model, &scanned)
                        .unwrap_or_else(|e| panic!("{context}: reopen: {e}"));
                    totals.reopened.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        totals.points.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn crash_sweep() {
    let started = Instant::now();
    let seeds: Vec<u64> = match env_u64("AFTERLOG_SEED") {
        Some(seed) => vec![seed],
        None => {
            let n = env_u64("AFTERLOG_SEEDS").unwrap_or(20);
            let first = env_u64("AFTERLOG_FIRST_SEED").unwrap_or(1);
            (first..first + n)
                .chain(REGRESSION_SEEDS.iter().copied())
                .collect()
        }
    };
    let target = env_u64("AFTERLOG_CRASH_STATES").unwrap_or(100_000);
    let full_every = env_u64("AFTERLOG_FULL_EVERY").unwrap_or(97).max(1);
    let workloads: Vec<Vec<Step>> = seeds.iter().map(|&s| steps(s)).collect();
    // Count the crash points to spread the states over them.
    let points: u64 = seeds
        .iter()
        .zip(&workloads)
        .map(|(&seed, steps)| {
            let probe = MemStorage::new();
            run(&probe, steps, seed);
            probe.ops()
        })
        .sum();
    // A crash point with an unsynced write gives 2 × (1 + 2 garbage + tear positions)
    // states, one without gives 2; about a fifth have none.
    let per_point = (target * 5 / 4).div_ceil(points.max(1) * 2);
    let tears = per_point.saturating_sub(3).max(1) as usize;
    println!(
        "crash sweep: {} workloads, {points} crash points, {tears} tear positions per point",
        seeds.len()
    );
    let totals = Totals::default();
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(i) else { break };
                    sweep_seed(seed, &workloads[i], tears, full_every, &totals);
                }
            });
        }
    });
    let states = totals.states.load(Ordering::Relaxed);
    println!(
        "crash sweep: {states} crash states checked at {} crash points ({} reopened by an engine) in {:.1?}",
        totals.points.load(Ordering::Relaxed),
        totals.reopened.load(Ordering::Relaxed),
        started.elapsed()
    );
    if env_u64("AFTERLOG_SEED").is_none() {
        assert!(
            states >= target * 9 / 10,
            "only {states} crash states of the {target} asked for"
        );
    }
}

/// The workload of the I/O error test: it publishes with keys, replaces, restates, reopens
/// the engine while a name is paused (with two schedules of that name pending), redefines,
/// fires and removes schedules, and redrives and purges dead letters.
const IO_SEED: u64 = 251;

#[test]
fn io_error_at_every_operation_never_acknowledges_unsynced_data() {
    let steps = steps(IO_SEED);
    let probe = MemStorage::new();
    probe.record_trace(true);
    run(&probe, &steps, IO_SEED);
    let trace = probe.trace();
    let mut runs = 0;
    for entry in &trace {
        let k = entry.op;
        for forever in [false, true] {
            let disk = MemStorage::new();
            disk.record_trace(true);
            if forever {
                disk.fail_from(k);
            } else {
                disk.fail_once(k);
            }
            let mut model = run(&disk, &steps, IO_SEED);
            // What operation `k` is in this run: the order of the engine's writes may differ
            // from the probe's (the worker and the caller write concurrently).
            let ran = disk.trace();
            let Some(failed) = ran.iter().find(|e| e.op == k) else {
                continue;
            };
            let context = format!(
                "I/O error at operation {k} ({:?} {}), forever: {forever}",
                failed.kind, failed.name
            );
            // An injected error may fail a reopen in the middle of the workload.
            model.reopen_errors.clear();
            assert_clean(&model, &context);
            if failed.kind == OpKind::SyncData && failed.name.ends_with(".seg") {
                // A sync of a live segment failed: nothing returns Ok afterwards (until the
                // workload reopens the disk), and the
                // errors say why. (A failed sync of a compaction's output or of a segment being
                // prepared only abandons that file; the crash views below check that nothing
                // acknowledged depended on it.)
                // Until a reopen recovers the log.
                let reopen = model.reopened_at.iter().copied().find(|&at| at >= k);
                for (ops, error) in &model.returns {
                    if *ops >= k && reopen.is_none_or(|at| *ops < at) {
                        let error = error.as_deref().unwrap_or_else(|| {
                            panic!(
                                "{context}: a call returned Ok after the failed sync: {:?}",
                                model.returns
                            )
                        });
                        assert!(
                            error.contains("poisoned") || error.contains("closed"),
                            "{context}: unclear error after a failed sync: {error}"
                        );
                    }
                }
            }
            // A power cut after the error, and every write reaching the disk.
            let views = [
                (CrashMode::DropUnsynced, true),
                (CrashMode::DropUnsynced, false),
                (CrashMode::TearLastWrite { keep: usize::MAX }, false),
            ];
            for (mode, lose_dir) in views {
                let after = disk.after_crash_with(mode, lose_dir);
                let scanned = recover(&after).unwrap_or_else(|e| panic!("{context}: {e}"));
                check_log(&model, &scanned).unwrap_or_else(|e| panic!("{context}: {e}"));
                let fresh = disk.after_crash_with(mode, lose_dir);
                check_reopen(&fresh, &model, &scanned)
                    .unwrap_or_else(|e| panic!("{context}: reopen after {mode:?}: {e}"));
            }
            runs += 1;
        }
    }
    println!(
        "{runs} runs with an I/O error, {} operations per run",
        trace.len()
    );
}
