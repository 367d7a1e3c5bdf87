//! End-to-end engine figures on the system clock and real files:
//!
//! 1. **throughput**: events published in batches (`push` of 50, from several threads) →
//!    delivered to a no-op handler → acknowledged, in events/s from the first publish to the
//!    last ack;
//! 2. **lateness**: 100,000 events falling due within one second; the p50/p99/max lateness
//!    of their deliveries (start of the attempt minus the due time).
//!
//! `cargo bench --bench engine` (`AFTERLOG_BENCH_EVENTS`, `AFTERLOG_BENCH_DIR` to change the
//! event count and the directory; the default directory is under `target/`).

use afterlog::{Engine, Options};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn bench_dir(name: &str) -> std::path::PathBuf {
    let base = std::env::var_os("AFTERLOG_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data")
        });
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench directory");
    dir
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn throughput(events: u64, publishers: u64) -> f64 {
    let dir = bench_dir("engine-throughput");
    let engine = Engine::open_with(&dir, Options::default()).expect("open");
    let acked = Arc::new(AtomicU64::new(0));
    let a = acked.clone();
    engine.on("bench", move |_event, _ctx| {
        a.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    engine.start();
    let body = [7u8; 200];
    let per_publisher = events / publishers;
    let started = Instant::now();
    let threads: Vec<_> = (0..publishers)
        .map(|_| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let mut left = per_publisher;
                while left > 0 {
                    let n = left.min(50) as usize;
                    engine
                        .push("bench", std::iter::repeat_n(&body[..], n), Duration::ZERO)
                        .expect("push");
                    left -= n as u64;
                }
            })
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
    let rate = total as f64 / elapsed.as_secs_f64();
    println!(
        "end to end: {total} events, {publishers} publishers pushing jobs of 50: published in {published:.2?}, all acked in {elapsed:.2?} = {rate:.0} events/s ({} records, {} fsyncs, {:.1} records/fsync)",
        m.records, m.fsyncs, m.records_per_fsync
    );
    rate
}

fn lateness(events: u64) -> (u64, u64, u64) {
    let dir = bench_dir("engine-lateness");
    let engine = Engine::open_with(&dir, Options::default()).expect("open");
    let acked = Arc::new(AtomicU64::new(0));
    let a = acked.clone();
    engine.on("due", move |_event, _ctx| {
        a.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    engine.start();
    // Jobs of 50 share a due time; 2,000 jobs spread the 100,000 events over one second,
    // starting far enough ahead that publishing them is done first.
    let lead = Duration::from_secs(3);
    let jobs = events.div_ceil(50);
    let started = Instant::now();
    let base = chrono::Utc::now() + chrono::Duration::from_std(lead).expect("lead");
    let body = [1u8; 100];
    for j in 0..jobs {
        let due = base + chrono::Duration::microseconds((j * 1_000_000 / jobs) as i64);
        let n = (events - j * 50).min(50) as usize;
        let delay = (due - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::from_millis(1))
            .max(Duration::from_millis(1));
        engine
            .push("due", std::iter::repeat_n(&body[..], n), delay)
            .expect("push");
    }
    let published = started.elapsed();
    assert!(
        published < lead,
        "publishing took {published:?}, longer than the {lead:?} lead: lower AFTERLOG_BENCH_EVENTS"
    );
    while acked.load(Ordering::Relaxed) < events {
        std::thread::sleep(Duration::from_millis(5));
    }
    let m = engine.metrics();
    engine.close().expect("close");
    println!(
        "lateness: {events} events due within 1 s (published in {published:.2?}): p50 {} ms, p99 {} ms, max {} ms",
        m.lateness_p50_ms, m.lateness_p99_ms, m.lateness_max_ms
    );
    (m.lateness_p50_ms, m.lateness_p99_ms, m.lateness_max_ms)
}

fn main() {
    let events = env_u64("AFTERLOG_BENCH_EVENTS", 1_000_000);
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let rate = throughput(events, 4);
    let (_, p99, _) = lateness(100_000.min(events));
    println!();
    println!("| figure | measured | target |");
    println!("|---|---|---|");
    println!("| end to end, events/s | {rate:.0} | ≥ 200,000 |");
    println!("| lateness p99, ms (100,000 due within 1 s) | {p99} | ≤ 5 |");
}
