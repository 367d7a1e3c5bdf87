//! Scenarios of the engine's core on the system clock: worker parallelism with slow handlers
//! (7), timer accuracy with one-by-one publishes from 32 threads (8), and the cost of a
//! compaction pass that finds nothing to compact beside many pending events (9).
//!
//! Only the public API is used: `Engine`, `Options`, `After`, `Metrics`.

use crate::engine_runs::{LatenessRun, dir_bytes, now_us, quantile, soon};
use crate::{Progress, fresh_dir, median};
use afterlog::{After, CompactionStats, DEFAULT_MAX_PUSH_EVENTS, Engine, Options};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// 7: workers

/// Worker threads of the workers scenario, and how long each handler sleeps.
pub const WORKERS: usize = 4;
pub const HANDLER_MS: u64 = 100;

#[derive(Clone, Debug, Serialize)]
pub struct WorkersRun {
    /// `push` (one job of all the events) or `publish` (one call per event).
    pub shape: &'static str,
    pub events: u64,
    /// From the first publish to the last acknowledgement.
    pub elapsed_s: f64,
    /// `elapsed_s` over the ideal `events × handler time / workers`.
    pub ratio_to_ideal: f64,
    /// The engine's lateness figures (`metrics()`), ms.
    pub lateness_p50_ms: u64,
    pub lateness_p99_ms: u64,
    pub lateness_max_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Workers {
    pub workers: usize,
    pub handler_ms: u64,
    pub ideal_s: f64,
    pub runs: Vec<WorkersRun>,
}

/// Scenario 7: `events` events due at once, each handler sleeping 100 ms (real time) before
/// it acknowledges, on 4 workers; once as one `push`, once as one `publish` per event.
pub fn workers(base: &Path, events: u64, progress: &Progress) -> Workers {
    let ideal_s = (events * HANDLER_MS) as f64 / 1000.0 / WORKERS as f64;
    let runs = ["push", "publish"]
        .into_iter()
        .map(|shape| {
            progress.step(&format!("workers: {events} events by {shape}"));
            workers_run(base, shape, events, ideal_s)
        })
        .collect();
    Workers {
        workers: WORKERS,
        handler_ms: HANDLER_MS,
        ideal_s,
        runs,
    }
}

fn workers_run(base: &Path, shape: &'static str, events: u64, ideal_s: f64) -> WorkersRun {
    let dir = fresh_dir(base, "workers");
    // Only more than the default 50 events need a higher limit for the one push.
    let options = Options::default()
        .workers(WORKERS)
        .max_push_events((events as usize).max(DEFAULT_MAX_PUSH_EVENTS));
    let engine = Engine::open_with(&dir, options).expect("open");
    let acked = Arc::new((Mutex::new(0u64), Condvar::new()));
    let a = acked.clone();
    engine.on("slow", move |_event, _ctx| {
        std::thread::sleep(Duration::from_millis(HANDLER_MS));
        let (count, done) = &*a;
        *count.lock().expect("acked") += 1;
        done.notify_all();
        Ok(())
    });
    engine.start();
    let body = [3u8; 100];
    let started = Instant::now();
    if shape == "push" {
        engine
            .push(
                "slow",
                std::iter::repeat_n(&body[..], events as usize),
                Duration::ZERO,
            )
            .expect("push");
    } else {
        for _ in 0..events {
            engine.publish("slow", body, After::NOW).expect("publish");
        }
    }
    let (count, done) = &*acked;
    let deadline = started + Duration::from_secs_f64(ideal_s * 10.0 + 30.0);
    let mut n = count.lock().expect("acked");
    while *n < events && Instant::now() < deadline {
        n = done
            .wait_timeout(n, Duration::from_millis(50))
            .expect("acked")
            .0;
    }
    drop(n);
    let elapsed_s = started.elapsed().as_secs_f64();
    let m = engine.metrics();
    engine.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
    WorkersRun {
        shape,
        events,
        elapsed_s,
        ratio_to_ideal: elapsed_s / ideal_s,
        lateness_p50_ms: m.lateness_p50_ms,
        lateness_p99_ms: m.lateness_p99_ms,
        lateness_max_ms: m.lateness_max_ms,
    }
}

// ---------------------------------------------------------------------------------------
// 8: timer accuracy, one publish per event from 32 threads

pub const TIMER32_THREADS: u64 = 32;

#[derive(Clone, Debug, Serialize)]
pub struct Timer32 {
    pub events: u64,
    pub threads: u64,
    pub spread_ms: u64,
    pub lead_s: f64,
    pub publish_s: f64,
    /// Events whose due time had passed when their thread came to publish them (published
    /// with `After::NOW` instead): more than a few means the lead was too short.
    pub published_late: u64,
    /// Lateness measured in the handler, as in scenario 3, ms.
    pub lateness_p50_ms: f64,
    pub lateness_p99_ms: f64,
    pub lateness_max_ms: f64,
    pub engine_lateness_p50_ms: u64,
    pub engine_lateness_p99_ms: u64,
    pub engine_lateness_max_ms: u64,
}

/// Scenario 8: `events` events due over one second, starting `lead` from now, each its own
/// `publish` (an absolute due time, `After::epoch_ms`), from 32 threads: thread `t`
/// publishes events `t`, `t + 32`, … in due order.
pub fn timer32(base: &Path, events: u64, lead: Duration, progress: &Progress) -> Timer32 {
    progress.step(&format!(
        "timer accuracy: {events} publishes from 32 threads"
    ));
    let dir = fresh_dir(base, "timer32");
    let run = LatenessRun::start(&dir, events);
    let started = Instant::now();
    let base_us = now_us() + lead.as_micros() as i64;
    let threads: Vec<_> = (0..TIMER32_THREADS)
        .map(|t| {
            let engine = run.engine.clone();
            std::thread::spawn(move || publish_due_share(&engine, t, events, base_us))
        })
        .collect();
    let published_late = threads
        .into_iter()
        .map(|t| t.join().expect("publisher"))
        .sum();
    let publish_s = started.elapsed().as_secs_f64();
    let (late, m) = run.finish(&dir, events, lead);
    Timer32 {
        events,
        threads: TIMER32_THREADS,
        spread_ms: 1000,
        lead_s: lead.as_secs_f64(),
        publish_s,
        published_late,
        lateness_p50_ms: quantile(&late, 0.5) / 1000.0,
        lateness_p99_ms: quantile(&late, 0.99) / 1000.0,
        lateness_max_ms: quantile(&late, 1.0) / 1000.0,
        engine_lateness_p50_ms: m.lateness_p50_ms,
        engine_lateness_p99_ms: m.lateness_p99_ms,
        engine_lateness_max_ms: m.lateness_max_ms,
    }
}

/// Publishes thread `t`'s share of the events; returns how many were already due.
fn publish_due_share(engine: &Engine, t: u64, events: u64, base_us: i64) -> u64 {
    let body = [1u8; 100];
    let mut late = 0;
    for i in (t..events).step_by(TIMER32_THREADS as usize) {
        let due_ms = (base_us + (i * 1_000_000 / events) as i64 + 999) / 1000;
        // Two milliseconds of margin: the engine reads its own clock after ours.
        let on_time = due_ms - now_us() / 1000 >= 2
            && engine.publish("due", body, After::epoch_ms(due_ms)).is_ok();
        if !on_time {
            engine.publish("due", body, After::NOW).expect("publish");
            late += 1;
        }
    }
    late
}

// ---------------------------------------------------------------------------------------
// 9: idle compaction passes at many pending events

/// Far enough ahead that no prefilled event comes due during the scenario, and within the
/// 15 minutes `push` allows on the default policy.
const FAR_DELAY: Duration = Duration::from_secs(600);
const PREFILL_THREADS: u64 = 4;
const PUBLISHERS: usize = 8;
const PASS_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, Serialize)]
pub struct PublishLatencyRun {
    /// Background compaction every 100 ms (true) or off.
    pub compaction: bool,
    pub published: u64,
    pub events_per_s: f64,
    /// Latency of one `publish` call, µs.
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub compacted_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct IdlePass {
    pub pending: u64,
    pub prefill_s: f64,
    /// The first `compact_now`: seals the active segment, then a full pass.
    pub first_pass_ms: f64,
    pub first_pass: CompactionStats,
    /// The passes after it, with nothing to compact.
    pub idle_pass_ms: Vec<f64>,
    pub idle_pass_median_ms: f64,
    pub idle_pass_max_ms: f64,
    /// Segments the idle passes rewrote or removed (0 when they were idle).
    pub idle_segments_touched: u64,
    /// What the last of them did.
    pub last_idle_pass: CompactionStats,
    pub publishers: usize,
    pub seconds_per_run: f64,
    pub runs: Vec<PublishLatencyRun>,
    /// p50 and p99 publish latency, compaction on / off.
    pub p50_ratio: f64,
    pub p99_ratio: f64,
}

/// Scenario 9: `pending` events due in 10 minutes (jobs of 50 from 4 threads), then
/// `compact_now` once and `passes` more times, timed; then 8 publishers for `secs` each on
/// the same directory reopened, with background compaction every 100 ms and without.
pub fn idle_pass(
    base: &Path,
    pending: u64,
    passes: usize,
    secs: Duration,
    progress: &Progress,
) -> IdlePass {
    progress.step(&format!("idle compaction pass: prefill {pending} pending"));
    let dir = fresh_dir(base, "idle-pass");
    let engine = open_idle(&dir, None);
    let started = Instant::now();
    prefill(&engine, pending);
    let prefill_s = started.elapsed().as_secs_f64();
    progress.detail(&format!("idle compaction pass: {passes} passes"));
    let timed_pass = || {
        let started = Instant::now();
        let stats = engine.compact_now().expect("compact_now");
        (started.elapsed().as_secs_f64() * 1000.0, stats)
    };
    let (first_pass_ms, first_pass) = timed_pass();
    let idle: Vec<(f64, CompactionStats)> = (0..passes.max(1)).map(|_| timed_pass()).collect();
    engine.close().expect("close");
    let idle_pass_ms: Vec<f64> = idle.iter().map(|p| p.0).collect();
    let idle_segments_touched = idle
        .iter()
        .map(|p| p.1.segments_rewritten + p.1.segments_removed)
        .sum();
    let mut runs = Vec::new();
    for on in [true, false] {
        progress.step(&format!(
            "idle compaction pass: publish latency, compaction {}",
            if on { "on" } else { "off" }
        ));
        runs.push(latency_run(&dir, on, secs));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ratio = |f: fn(&PublishLatencyRun) -> f64| f(&runs[0]) / f(&runs[1]).max(1e-9);
    IdlePass {
        pending,
        prefill_s,
        first_pass_ms,
        first_pass,
        idle_pass_median_ms: median(idle_pass_ms.clone()),
        idle_pass_max_ms: idle_pass_ms.iter().copied().fold(0.0, f64::max),
        idle_pass_ms,
        idle_segments_touched,
        last_idle_pass: idle.last().map(|p| p.1).unwrap_or_default(),
        publishers: PUBLISHERS,
        seconds_per_run: secs.as_secs_f64(),
        p50_ratio: ratio(|r| r.p50_us),
        p99_ratio: ratio(|r| r.p99_us),
        runs,
    }
}

fn open_idle(dir: &Path, interval: Option<Duration>) -> Engine {
    let engine =
        Engine::open_with(dir, Options::default().compaction_interval(interval)).expect("open");
    engine.on("later", |_, _| Ok(()));
    engine.on("soon", |_, _| Ok(()));
    engine.start();
    engine
}

/// `pending` events named `later`, due in 10 minutes, as jobs of 50 from 4 threads.
fn prefill(engine: &Engine, pending: u64) {
    let threads: Vec<_> = (0..PREFILL_THREADS)
        .map(|t| {
            let engine = engine.clone();
            let share = pending / PREFILL_THREADS + u64::from(t < pending % PREFILL_THREADS);
            std::thread::spawn(move || {
                let body = [9u8; 200];
                let mut left = share;
                while left > 0 {
                    let n = left.min(50);
                    engine
                        .push(
                            "later",
                            std::iter::repeat_n(&body[..], n as usize),
                            FAR_DELAY,
                        )
                        .expect("push");
                    left -= n;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("prefill");
    }
}

/// 8 threads publish 200-byte events due in 0–2 s for `secs`, each call timed.
fn latency_run(dir: &Path, on: bool, secs: Duration) -> PublishLatencyRun {
    let engine = open_idle(dir, on.then_some(PASS_INTERVAL));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let threads: Vec<_> = (0..PUBLISHERS)
        .map(|t| {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::spawn(move || timed_publishes(&engine, t as u64, &stop))
        })
        .collect();
    std::thread::sleep(secs);
    stop.store(true, Ordering::Relaxed);
    let mut us: Vec<i64> = Vec::new();
    for t in threads {
        us.extend(t.join().expect("publisher"));
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let m = engine.metrics();
    engine.close().expect("close");
    us.sort_unstable();
    PublishLatencyRun {
        compaction: on,
        published: us.len() as u64,
        events_per_s: us.len() as f64 / elapsed_s,
        p50_us: quantile(&us, 0.5),
        p99_us: quantile(&us, 0.99),
        max_us: quantile(&us, 1.0),
        compacted_bytes: m.compacted_bytes,
    }
}

fn timed_publishes(engine: &Engine, seed: u64, stop: &AtomicBool) -> Vec<i64> {
    let body = [b's'; 200];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    let mut us = Vec::with_capacity(1 << 16);
    while !stop.load(Ordering::Relaxed) {
        let after = soon(&mut rng);
        let started = Instant::now();
        engine.publish("soon", body, after).expect("publish");
        us.push(started.elapsed().as_micros() as i64);
    }
    us
}

/// Scenario 10: disk after compacting `finished_mb` MB of acknowledged events beside
/// `live_mb` MB of pending ones, with the default segment size.
#[derive(Clone, Debug, Serialize)]
pub struct Shrink {
    pub finished_bytes: u64,
    pub live_bytes: u64,
    pub segment_bytes: u64,
    /// Bytes of the directory's files before and after `compact_now`, the engine open.
    pub disk_before: u64,
    pub disk_after: u64,
    /// `disk_after / (live_bytes + segment_bytes)`: the target is at most 1.05 (the live
    /// data's segment file is a little larger than the data, and the manifest is on disk).
    pub ratio_to_live_plus_segment: f64,
    pub compact_s: f64,
}

pub fn shrink(base: &Path, finished_mb: u64, live_mb: u64, progress: &Progress) -> Shrink {
    progress.step(&format!(
        "shrink: {finished_mb} MB finished beside {live_mb} MB live"
    ));
    let dir = fresh_dir(base, "shrink");
    let engine =
        Engine::open_with(&dir, Options::default().compaction_interval(None)).expect("open");
    engine.on("done", |_, _| Ok(()));
    engine.start();
    let body = vec![7u8; 1000];
    let jobs = |mb: u64| (mb * 1_000_000).div_ceil(50 * 1000);
    for _ in 0..jobs(live_mb) {
        engine
            .push(
                "later",
                std::iter::repeat_n(&body[..], 50),
                Duration::from_secs(600),
            )
            .expect("push");
    }
    for _ in 0..jobs(finished_mb) {
        engine
            .push("done", std::iter::repeat_n(&body[..], 50), Duration::ZERO)
            .expect("push");
    }
    engine.wait_idle(Duration::from_secs(600));
    let disk_before = dir_bytes(&dir);
    let started = Instant::now();
    engine.compact_now().expect("compact_now");
    let compact_s = started.elapsed().as_secs_f64();
    let disk_after = dir_bytes(&dir);
    engine.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
    let segment_bytes = 64 << 20;
    let live_bytes = jobs(live_mb) * 50 * 1000;
    Shrink {
        finished_bytes: jobs(finished_mb) * 50 * 1000,
        live_bytes,
        segment_bytes,
        disk_before,
        disk_after,
        ratio_to_live_plus_segment: disk_after as f64 / (live_bytes + segment_bytes) as f64,
        compact_s,
    }
}
