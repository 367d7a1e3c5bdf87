//! Publish throughput with the background compaction on and off, and the disk use it keeps.
//!
//! Real files, the system clock, default durability (a publish returns once synced). Each
//! run: 8 threads publish 200-byte events due in 0–2 s for the run's duration; a no-op
//! handler acknowledges them. Runs alternate compaction on (`compaction_interval(Some(1 s))`)
//! and off (`None`), with 4 MiB segments so that several passes happen. Printed: events/s of
//! each and the ratio on/off; for compaction-on runs, the data directory's bytes sampled every
//! 250 ms (a compact series, the maximum and the final value) against the records written, to
//! show that disk use follows live data, not history.
//!
//! Usage: `cargo bench --bench compaction [-- --quick]`. Environment: `AFTERLOG_BENCH_SECS`
//! (seconds per run, default 10; 3 with `--quick`), `AFTERLOG_BENCH_ROUNDS` (on/off pairs,
//! default 2; 1 with `--quick`), `AFTERLOG_BENCH_QUICK=1` (same as `--quick`),
//! `AFTERLOG_BENCH_DIR` (where files go; default `afterlog-bench-compaction` under the cargo
//! target directory; it must be on a disk, not a tmpfs).

use afterlog::{After, Engine, Options};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const THREADS: usize = 8;
const BODY: usize = 200;
const SEGMENT: u64 = 4 << 20;
const SAMPLE: Duration = Duration::from_millis(250);

struct Run {
    events_per_s: f64,
    samples: Vec<u64>,
    final_bytes: u64,
    records: u64,
    published: u64,
    acked: u64,
    compacted_bytes: u64,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn run(dir: &Path, compaction: bool, secs: Duration) -> Run {
    let _ = std::fs::remove_dir_all(dir);
    let interval = compaction.then_some(Duration::from_secs(1));
    let options = Options::default()
        .segment_bytes(SEGMENT)
        .compaction_interval(interval);
    let engine = Engine::open_with(dir, options).expect("open engine");
    engine.on("e", |_, _| Ok(()));
    engine.start();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let publishers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (engine, stop, count) = (engine.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let body = [b'b'; BODY];
                let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ t as u64;
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let delay_ms = rng % 2000;
                    let after = if delay_ms == 0 {
                        After::NOW
                    } else {
                        After::ms(delay_ms)
                    };
                    engine.publish("e", body, after).expect("publish");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut samples = Vec::new();
    while started.elapsed() < secs {
        std::thread::sleep(SAMPLE);
        samples.push(dir_bytes(dir));
    }
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let published = count.load(Ordering::Relaxed);
    let m = engine.metrics();
    engine.close().expect("close");
    Run {
        events_per_s: published as f64 / elapsed,
        final_bytes: dir_bytes(dir),
        samples,
        records: m.records,
        published,
        acked: m.acked,
        compacted_bytes: m.compacted_bytes,
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("AFTERLOG_BENCH_QUICK").is_ok_and(|v| v == "1");
    let secs = std::env::var("AFTERLOG_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(if quick { 3.0 } else { 10.0 });
    let rounds = std::env::var("AFTERLOG_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(if quick { 1 } else { 2 })
        .max(1);
    let dir = std::env::var_os("AFTERLOG_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
                .join("afterlog-bench-compaction")
        });
    let secs = Duration::from_secs_f64(secs);
    println!(
        "afterlog compaction bench: {THREADS} threads, {BODY}-byte events due in 0-2 s, \
         {} MiB segments, {:.1} s per run, {rounds} on/off pairs ({})",
        SEGMENT >> 20,
        secs.as_secs_f64(),
        dir.display()
    );
    let (mut on_total, mut off_total) = (0.0, 0.0);
    for round in 1..=rounds {
        for compaction in [true, false] {
            let r = run(&dir, compaction, secs);
            let label = if compaction { "on " } else { "off" };
            println!(
                "round {round} compaction {label}: {:>8.0} events/s  ({} published, {} acked, \
                 {} records written; final disk {:.1} MiB)",
                r.events_per_s,
                r.published,
                r.acked,
                r.records,
                mib(r.final_bytes)
            );
            if compaction {
                on_total += r.events_per_s;
                let series: Vec<String> = r
                    .samples
                    .iter()
                    .map(|b| format!("{:.0}", mib(*b)))
                    .collect();
                let max = r.samples.iter().copied().max().unwrap_or(0);
                // A publish frame is the body plus ~60 bytes of name, ids, times and frame
                // header; attempt and ack frames are ~40 bytes.
                let history = r.published * (BODY as u64 + 60) + (r.records - r.published) * 40;
                println!(
                    "    disk MiB every 250 ms: [{}]\n    max {:.1} MiB, final {:.1} MiB; \
                     history written ~{:.1} MiB; compaction reclaimed {:.1} MiB",
                    series.join(" "),
                    mib(max),
                    mib(r.final_bytes),
                    mib(history),
                    mib(r.compacted_bytes)
                );
            } else {
                off_total += r.events_per_s;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (on, off) = (on_total / rounds as f64, off_total / rounds as f64);
    println!(
        "mean: compaction on {on:.0} events/s, off {off:.0} events/s, ratio {:.2} (target >= 0.85)",
        on / off
    );
}
