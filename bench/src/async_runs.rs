//! Scenario 11: afterlog's async API (feature `tokio`) on a tokio multi-thread runtime of
//! 2 worker threads, each figure beside the baseline it is compared with, measured in the
//! same run:
//!
//! - **publish**: `tasks` tokio tasks (64, then 1,024) each awaiting
//!   `Engine::publish_async` of a 200-byte body due in one hour, in a loop, on the engine of
//!   scenario 1 (default `Durability::Sync`, compaction off), against the raw baseline of
//!   scenario 1 writing `tasks` records per `pwrite` + `fdatasync` from one thread (the ideal
//!   group commit of `tasks` waiting publishers) and, for 64, scenario 1's 64 publisher OS
//!   threads calling the blocking `publish` on the same engine.
//! - **end to end**: scenario 2 twice per round, once with a no-op async handler
//!   (`on_async`, on the runtime) and once with a no-op sync handler (`on`, on the default 4
//!   workers); the same 4 publisher threads push jobs of 50 due now in both.
//! - **sleep**: 10,000 events due now (jobs of 50), each handled by an async handler that
//!   awaits `tokio::time::sleep(1 s)`, with `Options::async_attempts(10,000)` so that every
//!   one may wait at once; the time from the first due time (the first push) to the last
//!   acknowledgement. With threads this would take 10,000 workers.

use crate::engine_runs::{EndToEnd, end_to_end_run, push_in_jobs};
use crate::publish::{
    AfterlogSystem, BODY, DUE_IN, NAME, RawFile, Run, Shape, System, SystemResult, raw_run, run_of,
};
use crate::{Progress, fresh_dir};
use afterlog::{Engine, Options};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Worker threads of the runtime every part runs on.
pub const RUNTIME_WORKERS: usize = 2;
/// How long each handler of the sleep part awaits.
pub const SLEEP: Duration = Duration::from_secs(1);
/// Task counts up to this one also run as that many publisher OS threads.
const THREADS_UP_TO: usize = 64;

pub struct Params {
    pub secs: Duration,
    pub warmup: Duration,
    pub rounds: usize,
    pub tasks: Vec<usize>,
    pub e2e_events: u64,
    pub e2e_publishers: u64,
    pub sleep_events: u64,
}

impl Params {
    /// Progress steps, for the bar's length.
    pub fn steps(&self) -> u64 {
        let systems: usize = self
            .tasks
            .iter()
            .map(|&n| 2 + (n <= THREADS_UP_TO) as usize)
            .sum();
        1 + (systems * self.rounds) as u64 + 2 * self.e2e_rounds() as u64 + 1
    }

    /// Rounds of the end-to-end comparison: at least 3, for a median of paired ratios.
    pub fn e2e_rounds(&self) -> usize {
        self.rounds.max(3)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct AsyncPublish {
    pub tasks: usize,
    /// Records the raw baseline writes per sync: `tasks`.
    pub raw_records_per_sync: usize,
    pub afterlog_async: SystemResult,
    pub raw: SystemResult,
    /// `tasks` publisher OS threads calling the blocking `publish` (only up to 64 tasks).
    pub afterlog_threads: Option<SystemResult>,
    /// afterlog async / raw.
    pub async_over_raw: f64,
    pub threads_over_raw: Option<f64>,
    pub async_over_threads: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AsyncEndToEnd {
    pub events: u64,
    pub publishers: u64,
    pub async_runs: Vec<EndToEnd>,
    pub sync_runs: Vec<EndToEnd>,
    /// Means of the runs.
    pub async_events_per_s: f64,
    pub sync_events_per_s: f64,
    /// The median over rounds of each round's async / sync (its two runs back to back).
    pub ratio: f64,
    /// Each round's async / sync, sorted.
    pub round_ratios: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AsyncSleep {
    pub events: u64,
    pub sleep_ms: u64,
    pub async_attempts: usize,
    /// From the first push to the last.
    pub publish_s: f64,
    /// From the first due time (the first push, due now) to the last acknowledgement (its
    /// ack record durable: `metrics().acked`).
    pub first_due_to_all_acked_s: f64,
    /// That time over the sleep alone.
    pub ratio_to_sleep: f64,
    /// The engine's lateness figures (`metrics()`), ms.
    pub lateness_p50_ms: u64,
    pub lateness_p99_ms: u64,
    pub lateness_max_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Async {
    pub runtime_workers: usize,
    pub publish: Vec<AsyncPublish>,
    pub end_to_end: AsyncEndToEnd,
    pub sleep: AsyncSleep,
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_WORKERS)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn run(base: &Path, p: &Params, progress: &Progress) -> Async {
    let rt = runtime();
    let publish = publish_runs(base, p, &rt, progress);
    let end_to_end = end_to_end(base, p, &rt, progress);
    let sleep = sleep(base, p.sleep_events, &rt, progress);
    Async {
        runtime_workers: RUNTIME_WORKERS,
        publish,
        end_to_end,
        sleep,
    }
}

// ---- publish -----------------------------------------------------------------------------

/// `tasks` tasks awaiting `publish_async` in a loop for `duration`; publishes in flight at
/// the deadline finish and count.
fn async_publish(rt: &Runtime, engine: &Engine, tasks: usize, duration: Duration) -> Run {
    let before = engine.metrics().fsyncs;
    let stop = Arc::new(AtomicBool::new(false));
    let (events, elapsed) = rt.block_on(async {
        let start = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (engine, stop) = (engine.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        engine
                            .publish_async(NAME, &BODY[..], DUE_IN)
                            .await
                            .expect("publish_async");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        tokio::time::sleep(duration).await;
        stop.store(true, Ordering::Relaxed);
        let mut events = 0;
        for h in handles {
            events += h.await.expect("publishing task");
        }
        (events, start.elapsed())
    });
    run_of(events, elapsed, engine.metrics().fsyncs - before)
}

/// What one timed run measures, by name.
enum Measure {
    Raw(usize),
    Async(usize),
    Threads(usize),
}

fn publish_runs(base: &Path, p: &Params, rt: &Runtime, progress: &Progress) -> Vec<AsyncPublish> {
    progress.step("async publish: opening");
    let raw = RawFile::create(&base.join("async-raw.dat"));
    let max_tasks = p.tasks.iter().copied().max().unwrap_or(1);
    let system = AfterlogSystem::open_in(&fresh_dir(base, "async-publish"), max_tasks);
    let engine = system.engine();
    let mut measures = Vec::new();
    for &n in &p.tasks {
        measures.push(Measure::Raw(n));
        if n <= THREADS_UP_TO {
            measures.push(Measure::Threads(n));
        }
        measures.push(Measure::Async(n));
    }
    let label = |m: &Measure| match m {
        Measure::Raw(n) => format!("raw, {n} records per sync"),
        Measure::Async(n) => format!("{n} publish_async tasks"),
        Measure::Threads(n) => format!("{n} publisher threads"),
    };
    let once = |m: &Measure, duration: Duration| match *m {
        Measure::Raw(n) => raw_run(&raw, n, duration),
        Measure::Async(n) => async_publish(rt, engine, n, duration),
        Measure::Threads(n) => system.run(Shape::Concurrent(n), duration),
    };
    for m in &measures {
        once(m, p.warmup);
    }
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); measures.len()];
    for round in 0..p.rounds {
        // Rotate the order so drift in the machine's load spreads over every system.
        for k in 0..measures.len() {
            let i = (k + round) % measures.len();
            progress.step(&format!(
                "async publish: {} (round {}/{})",
                label(&measures[i]),
                round + 1,
                p.rounds
            ));
            runs[i].push(once(&measures[i], p.secs));
        }
    }
    drop(system);
    let mut results: Vec<Option<SystemResult>> = runs
        .into_iter()
        .map(|r| Some(SystemResult::of(r)))
        .collect();
    let mut take = |want: &dyn Fn(&Measure) -> bool| {
        measures
            .iter()
            .position(want)
            .and_then(|i| results[i].take())
    };
    let mut out = Vec::new();
    for &n in &p.tasks {
        let raw = take(&|m| matches!(m, Measure::Raw(k) if *k == n)).expect("raw run");
        let afterlog_async =
            take(&|m| matches!(m, Measure::Async(k) if *k == n)).expect("async run");
        let afterlog_threads = take(&|m| matches!(m, Measure::Threads(k) if *k == n));
        let over = |a: &SystemResult, b: &SystemResult| a.events_per_s / b.events_per_s.max(1e-9);
        out.push(AsyncPublish {
            tasks: n,
            raw_records_per_sync: n,
            async_over_raw: over(&afterlog_async, &raw),
            threads_over_raw: afterlog_threads.as_ref().map(|t| over(t, &raw)),
            async_over_threads: afterlog_threads.as_ref().map(|t| over(&afterlog_async, t)),
            afterlog_async,
            raw,
            afterlog_threads,
        });
    }
    out
}

// ---- end to end --------------------------------------------------------------------------

fn end_to_end(base: &Path, p: &Params, rt: &Runtime, progress: &Progress) -> AsyncEndToEnd {
    let (mut async_runs, mut sync_runs) = (Vec::new(), Vec::new());
    for round in 0..p.e2e_rounds() {
        // Alternate which goes first.
        for k in 0..2 {
            let is_async = (k + round) % 2 == 0;
            progress.step(&format!(
                "async end to end: {} events, {} handler (round {}/{})",
                p.e2e_events,
                if is_async { "async" } else { "sync" },
                round + 1,
                p.e2e_rounds()
            ));
            if is_async {
                let options = Options::default().runtime(rt.handle().clone());
                async_runs.push(end_to_end_run(
                    base,
                    p.e2e_events,
                    p.e2e_publishers,
                    options,
                    |engine, a| {
                        engine.on_async("bench", move |_event, _ctx| {
                            let a = a.clone();
                            async move {
                                a.fetch_add(1, Ordering::Relaxed);
                                Ok(())
                            }
                        });
                    },
                ));
            } else {
                sync_runs.push(end_to_end_run(
                    base,
                    p.e2e_events,
                    p.e2e_publishers,
                    Options::default(),
                    |engine, a| {
                        engine.on("bench", move |_event, _ctx| {
                            a.fetch_add(1, Ordering::Relaxed);
                            Ok(())
                        });
                    },
                ));
            }
        }
    }
    let mean = |runs: &[EndToEnd]| {
        runs.iter().map(|r| r.events_per_s).sum::<f64>() / runs.len().max(1) as f64
    };
    let (a, s) = (mean(&async_runs), mean(&sync_runs));
    // Each round's two runs follow each other, so their ratio sees the same machine; the
    // median of those ratios is what the target is checked on (the machine's speed moves
    // between rounds more than the engine's ratio does).
    let mut ratios: Vec<f64> = async_runs
        .iter()
        .zip(&sync_runs)
        .map(|(a, s)| a.events_per_s / s.events_per_s.max(1e-9))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let ratio = match ratios.len() {
        0 => a / s.max(1e-9),
        n if n % 2 == 1 => ratios[n / 2],
        n => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
    };
    AsyncEndToEnd {
        events: async_runs.first().map_or(p.e2e_events, |r| r.events),
        publishers: p.e2e_publishers,
        async_runs,
        sync_runs,
        async_events_per_s: a,
        sync_events_per_s: s,
        ratio,
        round_ratios: ratios,
    }
}

// ---- sleep -------------------------------------------------------------------------------

fn sleep(base: &Path, events: u64, rt: &Runtime, progress: &Progress) -> AsyncSleep {
    progress.step(&format!(
        "async sleep: {events} events due now, handlers awaiting {} s",
        SLEEP.as_secs_f64()
    ));
    let dir = fresh_dir(base, "async-sleep");
    let attempts = events as usize;
    let options = Options::default()
        .runtime(rt.handle().clone())
        .async_attempts(attempts);
    let engine = Engine::open_with(&dir, options).expect("open");
    engine.on_async("sleepy", move |_event, _ctx| async move {
        tokio::time::sleep(SLEEP).await;
        Ok(())
    });
    engine.start();
    let body = [2u8; 100];
    let started = Instant::now();
    push_in_jobs(&engine, "sleepy", &body, events);
    let publish_s = started.elapsed().as_secs_f64();
    let deadline = started + SLEEP + Duration::from_secs(60);
    // Acknowledged = the ack record is durable and applied (`metrics().acked`).
    while engine.metrics().acked < events && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let m = engine.metrics();
    engine.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
    AsyncSleep {
        events,
        sleep_ms: SLEEP.as_millis() as u64,
        async_attempts: attempts,
        publish_s,
        first_due_to_all_acked_s: elapsed,
        ratio_to_sleep: elapsed / SLEEP.as_secs_f64(),
        lateness_p50_ms: m.lateness_p50_ms,
        lateness_p99_ms: m.lateness_p99_ms,
        lateness_max_ms: m.lateness_max_ms,
    }
}

/// The scenario's summary lines.
pub fn print(a: &Async) {
    use crate::format_rate;
    println!();
    println!(
        "async (tokio multi-thread runtime, {} workers):",
        a.runtime_workers
    );
    for s in &a.publish {
        let threads = match (
            &s.afterlog_threads,
            s.threads_over_raw,
            s.async_over_threads,
        ) {
            (Some(t), Some(tr), Some(at)) => format!(
                "; {} publisher threads {}/s ({tr:.2}x raw; async / threads {at:.2}x)",
                s.tasks,
                format_rate(t.events_per_s)
            ),
            _ => String::new(),
        };
        println!(
            "  {} publish_async tasks: {}/s ({:.1} per sync), raw {} per sync {}/s: {:.2}x raw{}",
            s.tasks,
            format_rate(s.afterlog_async.events_per_s),
            s.afterlog_async.events_per_sync,
            s.raw_records_per_sync,
            format_rate(s.raw.events_per_s),
            s.async_over_raw,
            threads
        );
    }
    let e = &a.end_to_end;
    let rates = |runs: &[EndToEnd]| {
        runs.iter()
            .map(|r| format_rate(r.events_per_s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  end to end, {} events, {} publishers pushing jobs of 50: async handler {}/s ({}), \
         sync handler {}/s ({}): {:.2}x (median of the rounds' ratios {})",
        e.events,
        e.publishers,
        format_rate(e.async_events_per_s),
        rates(&e.async_runs),
        format_rate(e.sync_events_per_s),
        rates(&e.sync_runs),
        e.ratio,
        e.round_ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let s = &a.sleep;
    println!(
        "  {} events due now, async handlers sleeping {} ms ({} async attempts): all acked {:.3} s \
         after the first due time ({:.2}x the sleep; pushed in {:.3} s; engine lateness p50 {} \
         / p99 {} / max {} ms)",
        s.events,
        s.sleep_ms,
        s.async_attempts,
        s.first_due_to_all_acked_s,
        s.ratio_to_sleep,
        s.publish_s,
        s.lateness_p50_ms,
        s.lateness_p99_ms,
        s.lateness_max_ms
    );
}

/// The scenario's targets.
pub fn targets(a: &Async, t: &mut Vec<crate::Target>) {
    for s in &a.publish {
        t.push(crate::target(
            format!(
                "async, {} tasks: afterlog / raw {} per sync",
                s.tasks, s.raw_records_per_sync
            ),
            s.async_over_raw,
            ">=",
            0.9,
        ));
    }
    t.push(crate::target(
        "async end to end: async / sync handler".into(),
        a.end_to_end.ratio,
        ">=",
        0.8,
    ));
    t.push(crate::target(
        format!(
            "async, {} due, 1 s sleeps: due → all acked, s",
            a.sleep.events
        ),
        a.sleep.first_due_to_all_acked_s,
        "<=",
        1.5,
    ));
}
