//! Scenarios run against the whole engine on the system clock: end-to-end throughput (2),
//! timer accuracy (3) and compaction's cost and effect (6).

use crate::{Progress, fresh_dir};
use afterlog::{After, Engine, Options};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Serialize)]
pub struct EndToEnd {
    pub events: u64,
    pub publishers: u64,
    pub events_per_push: u64,
    pub published_s: f64,
    pub acked_s: f64,
    /// Events from the first publish to the last acknowledgement, per second.
    pub events_per_s: f64,
    pub records: u64,
    pub fsyncs: u64,
    pub records_per_fsync: f64,
}

/// Scenario 2: `publishers` threads push jobs of 50 events due now; a no-op handler
/// acknowledges them; the rate is events from the first publish to the last ack.
pub fn end_to_end(base: &Path, events: u64, publishers: u64, progress: &Progress) -> EndToEnd {
    progress.step(&format!("end to end: {events} events"));
    end_to_end_run(base, events, publishers, Options::default(), |engine, a| {
        engine.on("bench", move |_event, _ctx| {
            a.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
    })
}

/// Pushes `events` events named `name` due now, as jobs of 50 (Forge's limit).
pub fn push_in_jobs(engine: &Engine, name: &str, body: &[u8], events: u64) {
    let mut left = events;
    while left > 0 {
        let n = left.min(50) as usize;
        engine
            .push(name, std::iter::repeat_n(body, n), Duration::ZERO)
            .expect("push");
        left -= n as u64;
    }
}

/// Scenario 2's run on an engine opened with `options`, whose handler of `bench`
/// `register` adds: it must count each acknowledgement in the counter it is given.
pub fn end_to_end_run(
    base: &Path,
    events: u64,
    publishers: u64,
    options: Options,
    register: impl FnOnce(&Engine, Arc<AtomicU64>),
) -> EndToEnd {
    let dir = fresh_dir(base, "end-to-end");
    let run = end_to_end_in(&dir, events, publishers, options, register);
    let _ = std::fs::remove_dir_all(&dir);
    run
}

/// [`end_to_end_run`] in the data directory `dir`, as it is (fresh or not); it is left there.
pub fn end_to_end_in(
    dir: &Path,
    events: u64,
    publishers: u64,
    options: Options,
    register: impl FnOnce(&Engine, Arc<AtomicU64>),
) -> EndToEnd {
    let engine = Engine::open_with(dir, options).expect("open");
    let acked = Arc::new(AtomicU64::new(0));
    register(&engine, acked.clone());
    engine.start();
    let body = [7u8; 200];
    let per_publisher = events.div_ceil(publishers);
    let started = Instant::now();
    let threads: Vec<_> = (0..publishers)
        .map(|_| {
            let engine = engine.clone();
            std::thread::spawn(move || push_in_jobs(&engine, "bench", &body, per_publisher))
        })
        .collect();
    for t in threads {
        t.join().expect("publisher");
    }
    let published = started.elapsed();
    let total = per_publisher * publishers;
    while acked.load(Ordering::Relaxed) < total {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed();
    let m = engine.metrics();
    engine.close().expect("close");
    EndToEnd {
        events: total,
        publishers,
        events_per_push: 50,
        published_s: published.as_secs_f64(),
        acked_s: elapsed.as_secs_f64(),
        events_per_s: total as f64 / elapsed.as_secs_f64(),
        records: m.records,
        fsyncs: m.fsyncs,
        records_per_fsync: m.records_per_fsync,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Timer {
    pub events: u64,
    pub spread_ms: u64,
    pub publish_s: f64,
    /// Lateness measured in the handler: the wall clock at the call minus the event's due
    /// time (`time_ms + delay_ms`), exact to the microsecond.
    pub lateness_p50_ms: f64,
    pub lateness_p99_ms: f64,
    pub lateness_max_ms: f64,
    /// The engine's own lateness figures (`metrics()`: start of the attempt minus due time,
    /// exact below 128 ms, above that rounded up to a power of two minus one).
    pub engine_lateness_p50_ms: u64,
    pub engine_lateness_p99_ms: u64,
    pub engine_lateness_max_ms: u64,
}

/// Microseconds since the Unix epoch, as the wall clock says.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The `p`-quantile (0..=1) of sorted values, nearest rank; NaN when empty.
pub fn quantile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

/// A due time 0–2 s from now, from a xorshift state: the publishers of the compaction
/// scenarios.
pub fn soon(rng: &mut u64) -> After {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let delay_ms = *rng % 2000;
    if delay_ms == 0 {
        After::NOW
    } else {
        After::ms(delay_ms)
    }
}

/// An engine whose handler of `due` records each event's lateness (now minus its due time,
/// µs): the timer scenarios' setup.
pub struct LatenessRun {
    pub engine: Engine,
    late_us: Arc<Mutex<Vec<i64>>>,
    acked: Arc<AtomicU64>,
}

impl LatenessRun {
    pub fn start(dir: &Path, events: u64) -> LatenessRun {
        let engine = Engine::open_with(dir, Options::default()).expect("open");
        let late_us = Arc::new(Mutex::new(Vec::with_capacity(events as usize)));
        let acked = Arc::new(AtomicU64::new(0));
        let (l, a) = (late_us.clone(), acked.clone());
        engine.on("due", move |event, _ctx| {
            let due_us = (event.time_ms() + event.delay_ms()) * 1000;
            l.lock().expect("lateness").push(now_us() - due_us);
            a.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        engine.start();
        LatenessRun {
            engine,
            late_us,
            acked,
        }
    }

    /// Waits for `events` acks (at most a minute past `lead`), closes the engine, removes
    /// `dir`; the lateness of every event in µs, sorted, and the engine's metrics.
    pub fn finish(self, dir: &Path, events: u64, lead: Duration) -> (Vec<i64>, afterlog::Metrics) {
        let deadline = Instant::now() + lead + Duration::from_secs(60);
        while self.acked.load(Ordering::Relaxed) < events && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let m = self.engine.metrics();
        self.engine.close().expect("close");
        let _ = std::fs::remove_dir_all(dir);
        let mut late = std::mem::take(&mut *self.late_us.lock().expect("lateness"));
        late.sort_unstable();
        (late, m)
    }
}

/// Scenario 3: `events` events whose due times spread over one second, starting `lead`
/// from now so that publishing them is done first (jobs of 50 share a due time).
pub fn timer(base: &Path, events: u64, lead: Duration, progress: &Progress) -> Timer {
    progress.step(&format!("timer accuracy: {events} events due within 1 s"));
    let dir = fresh_dir(base, "timer");
    let run = LatenessRun::start(&dir, events);
    let engine = &run.engine;
    let jobs = events.div_ceil(50);
    let started = Instant::now();
    let base_us = now_us() + lead.as_micros() as i64;
    let body = [1u8; 100];
    for j in 0..jobs {
        let due_us = base_us + (j * 1_000_000 / jobs) as i64;
        let n = (events - j * 50).min(50) as usize;
        let delay_ms = ((due_us - now_us()) / 1000).max(1) as u64;
        engine
            .push(
                "due",
                std::iter::repeat_n(&body[..], n),
                Duration::from_millis(delay_ms),
            )
            .expect("push");
    }
    let published = started.elapsed();
    let (late, m) = run.finish(&dir, events, lead);
    let pct = |q: f64| quantile(&late, q) / 1000.0;
    Timer {
        events,
        spread_ms: 1000,
        publish_s: published.as_secs_f64(),
        lateness_p50_ms: pct(0.5),
        lateness_p99_ms: pct(0.99),
        lateness_max_ms: pct(1.0),
        engine_lateness_p50_ms: m.lateness_p50_ms,
        engine_lateness_p99_ms: m.lateness_p99_ms,
        engine_lateness_max_ms: m.lateness_max_ms,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CompactionRun {
    pub compaction: bool,
    pub events_per_s: f64,
    pub published: u64,
    pub acked: u64,
    pub records: u64,
    pub compacted_bytes: u64,
    /// Data directory bytes, sampled: (seconds since the start, bytes).
    pub disk_bytes: Vec<(f64, u64)>,
    pub final_disk_bytes: u64,
    /// Estimated bytes of every record written (publish frames ~260 B, others ~40 B):
    /// what the directory would hold without compaction.
    pub history_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Compaction {
    pub publishers: usize,
    pub segment_bytes: u64,
    pub seconds_per_run: f64,
    pub interval_s: f64,
    pub runs: Vec<CompactionRun>,
    pub on_events_per_s: f64,
    pub off_events_per_s: f64,
    /// on / off.
    pub ratio: f64,
}

const COMPACTION_THREADS: usize = 8;
const COMPACTION_SEGMENT: u64 = 4 << 20;

/// Bytes of the files in `dir` (0 if it cannot be read).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Scenario 6: 8 threads publish 200-byte events due in 0–2 s, a no-op handler acks them;
/// runs alternate compaction on (every second) and off, with 4 MiB segments.
pub fn compaction(base: &Path, secs: Duration, pairs: usize, progress: &Progress) -> Compaction {
    let mut runs = Vec::new();
    for pair in 0..pairs {
        for on in [true, false] {
            progress.step(&format!(
                "compaction {} (pair {}/{pairs})",
                if on { "on" } else { "off" },
                pair + 1
            ));
            runs.push(compaction_run(base, on, secs));
        }
    }
    let mean = |on: bool| {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.compaction == on)
            .map(|r| r.events_per_s)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let (on, off) = (mean(true), mean(false));
    Compaction {
        publishers: COMPACTION_THREADS,
        segment_bytes: COMPACTION_SEGMENT,
        seconds_per_run: secs.as_secs_f64(),
        interval_s: 1.0,
        runs,
        on_events_per_s: on,
        off_events_per_s: off,
        ratio: on / off.max(1e-9),
    }
}

fn compaction_run(base: &Path, on: bool, secs: Duration) -> CompactionRun {
    let dir = fresh_dir(base, "compaction");
    let options = Options::default()
        .segment_bytes(COMPACTION_SEGMENT)
        .compaction_interval(on.then_some(Duration::from_secs(1)));
    let engine = Engine::open_with(&dir, options).expect("open engine");
    engine.on("e", |_, _| Ok(()));
    engine.start();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let publishers: Vec<_> = (0..COMPACTION_THREADS)
        .map(|t| {
            let (engine, stop, count) = (engine.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let body = [b'b'; 200];
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ t as u64;
                while !stop.load(Ordering::Relaxed) {
                    engine.publish("e", body, soon(&mut rng)).expect("publish");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    while started.elapsed() < secs {
        std::thread::sleep(Duration::from_millis(250));
        samples.push((started.elapsed().as_secs_f64(), dir_bytes(&dir)));
    }
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().expect("publisher");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let published = count.load(Ordering::Relaxed);
    let m = engine.metrics();
    engine.close().expect("close");
    let final_disk_bytes = dir_bytes(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    CompactionRun {
        compaction: on,
        events_per_s: published as f64 / elapsed,
        published,
        acked: m.acked,
        records: m.records,
        compacted_bytes: m.compacted_bytes,
        disk_bytes: samples,
        final_disk_bytes,
        history_bytes: published * 260 + m.records.saturating_sub(published) * 40,
    }
}
