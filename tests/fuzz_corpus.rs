//! Replays the committed fuzz corpora through the same checks the fuzz targets run, so every
//! input a fuzzer ever kept stays a regression test in `cargo test`. Also builds the small
//! real directories that seeded the `read_directory` corpus and runs its check on them.
//!
//! The global allocator refuses any allocation above the limit a check sets for its thread
//! (`afterlog::testing::allocation_limit_bytes`), as the `read_directory` fuzz target's does:
//! a replayed input that makes a reader allocate more than its data holds aborts the run
//! with "memory allocation of N bytes failed".

use afterlog::log::LogOptions;
use afterlog::storage::{CrashMode, MemStorage, Storage};
use afterlog::{
    After, Engine, HandlerError, ManualClock, Options, RetryOptions, RetryPolicy, RetryReason,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: afterlog::testing::BoundedAllocator = afterlog::testing::BoundedAllocator;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        check(&std::fs::read(&path).unwrap());
        n += 1;
    }
    n
}

#[test]
fn decode_frame_corpus() {
    assert!(replay("decode_frame", afterlog::testing::check_decode) > 10);
}

#[test]
fn recover_segment_corpus() {
    assert!(replay("recover_segment", afterlog::testing::check_recover) > 10);
}

#[test]
fn parse_after_corpus() {
    assert!(replay("parse_after", afterlog::testing::check_after) > 10);
}

#[test]
fn cron_corpus() {
    assert!(replay("cron", afterlog::testing::check_cron) > 10);
}

#[test]
fn read_directory_corpus() {
    assert!(replay("read_directory", afterlog::testing::check_read_directory) > 10);
}

// ---------------------------------------------------------------------------------------
// The seeds of the `read_directory` corpus: small directories the engine wrote.
// ---------------------------------------------------------------------------------------

const START_MS: i64 = 1_700_000_000_000;

fn open(disk: &MemStorage, clock: &ManualClock) -> Engine {
    let options = Options::default()
        .clock(clock.clone())
        .log_options(LogOptions {
            segment_bytes: 4096,
            prepare_in_background: false,
            ..LogOptions::default()
        })
        .compaction_interval(None)
        .workers(1)
        .default_policy(RetryPolicy::fixed(Duration::from_secs(60)).max_attempts(3))
        .retention(Duration::from_secs(3600));
    let engine = Engine::open_storage(Arc::new(disk.clone()), options).unwrap();
    engine.on("ok", |_, _| Ok(()));
    engine.on("fail", |_, _| Err(HandlerError::msg("always fails")));
    engine.on("later", |event, _| {
        if event.attempt() == 1 {
            Err(HandlerError::retry(RetryOptions {
                retry_after: Duration::from_secs(30),
                reason: RetryReason::UpstreamRateLimited,
                data: b"cursor=7".to_vec(),
            }))
        } else {
            Ok(())
        }
    });
    engine
}

fn idle(engine: &Engine) {
    assert!(engine.wait_idle(Duration::from_secs(60)), "never idle");
}

/// A directory's files: names and contents.
type Files = Vec<(String, Vec<u8>)>;

fn files(disk: &MemStorage) -> Files {
    let mut names = disk.list().unwrap();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let bytes = disk.contents(&name).unwrap();
            (name, bytes)
        })
        .collect()
}

/// Publishes of every kind, delivered: acks, retries with data, drops after the last
/// attempt, cancels of events and jobs, and expiry past retention.
fn every_record_kind(disk: &MemStorage, clock: &ManualClock) -> Engine {
    let engine = open(disk, clock);
    engine.publish("ok", "hello", After::NOW).unwrap();
    engine.publish("later", [0xFFu8, 0, 1], After::NOW).unwrap();
    engine.publish("fail", "", After::ms(1_000)).unwrap();
    let job = engine
        .push("ok", ["a", "b", "c"], Duration::from_secs(600))
        .unwrap();
    let gone = engine.publish("ok", "cancelled", After::ms(5_000)).unwrap();
    engine.cancel(gone).unwrap();
    engine.cancel_job(job).unwrap();
    engine.publish("nobody", "unhandled", After::NOW).unwrap();
    engine.start();
    idle(&engine);
    for _ in 0..4 {
        clock.advance_ms(60_000);
        idle(&engine);
    }
    engine.publish("ok", "stale", After::ms(1)).unwrap();
    engine
}

/// The directories the seeds come from, by name.
fn seed_directories() -> Vec<(&'static str, Files)> {
    let mut out = Vec::new();

    let clock = ManualClock::new(START_MS);
    let disk = MemStorage::new();
    let engine = every_record_kind(&disk, &clock);
    engine.close().unwrap();
    out.push(("every_kind", files(&disk)));

    // Several segments, then a compaction that rewrites them.
    let clock = ManualClock::new(START_MS);
    let disk = MemStorage::new();
    let engine = open(&disk, &clock);
    for i in 0..40 {
        let name = if i % 3 == 0 { "ok" } else { "later" };
        engine
            .publish(name, format!("{i:0>120}"), After::ms(1 + i * 10))
            .unwrap();
    }
    engine.start();
    idle(&engine);
    engine.close().unwrap();
    out.push(("segments", files(&disk)));
    let engine = open(&disk, &clock);
    engine.start();
    clock.advance_ms(60_000);
    idle(&engine);
    engine.compact_now().unwrap();
    engine
        .publish("ok", "after compaction", After::NOW)
        .unwrap();
    idle(&engine);
    engine.close().unwrap();
    out.push(("compacted", files(&disk)));

    // Expiry: an event first due more than the retention ago expires when the engine starts.
    let clock = ManualClock::new(START_MS);
    let disk = MemStorage::new();
    let engine = open(&disk, &clock);
    engine.publish("ok", "never started", After::NOW).unwrap();
    clock.advance_ms(2 * 3_600_000);
    engine.start();
    idle(&engine);
    engine.close().unwrap();
    out.push(("expired", files(&disk)));

    // Crashes while a publish is written: its write torn, or garbage where it was going.
    for (name, mode) in [
        ("torn", CrashMode::TearLastWrite { keep: 30 }),
        ("garbage", CrashMode::GarbageAfterSynced { seed: 7 }),
    ] {
        let clock = ManualClock::new(START_MS);
        let disk = MemStorage::new();
        let engine = every_record_kind(&disk, &clock);
        idle(&engine);
        disk.crash_at(disk.ops() + 2);
        let _ = engine.publish("ok", "lost in the crash", After::NOW);
        let _ = engine.close();
        out.push((name, files(&disk.after_crash(mode))));
    }

    // Damage to synced data: a byte of a record in the middle flipped.
    let mut damaged = out[0].1.clone();
    if let Some((_, bytes)) = damaged.iter_mut().find(|(n, _)| n.ends_with(".seg")) {
        bytes[700] ^= 0x10;
    }
    out.push(("damaged", damaged));

    // Not a data directory, and an empty one.
    out.push(("foreign", vec![("notes.txt".to_owned(), b"hello".to_vec())]));
    out.push(("empty", Vec::new()));
    out
}

/// Every seed directory passes the check. With `AFTERLOG_WRITE_SEEDS=DIR`, their inputs are
/// written to `DIR` (how the corpus was seeded).
#[test]
fn real_directories_pass_the_read_directory_check() {
    let write_to = std::env::var_os("AFTERLOG_WRITE_SEEDS");
    for (name, files) in seed_directories() {
        let input = afterlog::testing::directory_input(&files);
        assert!(
            input.len() <= afterlog::testing::INPUT_BYTES_MAX,
            "seed {name} is {} bytes",
            input.len()
        );
        // Segments keep their names (a temporary file is named after the next segment).
        let segments = |files: &[(String, Vec<u8>)]| -> Vec<String> {
            let mut names: Vec<String> = files
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| n.ends_with(".seg"))
                .collect();
            names.sort();
            names
        };
        let round_trip = afterlog::testing::directory_files(&input);
        assert_eq!(segments(&round_trip), segments(&files), "seed {name}");
        assert_eq!(round_trip.len(), files.len(), "seed {name}");
        afterlog::testing::check_read_directory(&input);
        if let Some(dir) = &write_to {
            std::fs::write(Path::new(dir).join(format!("seed-{name}")), &input).unwrap();
        }
    }
    // The first segment of a directory without its header: the check writes one (lead 0).
    let first: Vec<(String, Vec<u8>)> = seed_directories()[0]
        .1
        .iter()
        .filter(|(name, _)| name.ends_with(".seg"))
        .take(1)
        .cloned()
        .collect();
    let raw = afterlog::testing::directory_input(&first);
    let header = afterlog::format::decode_header(&first[0].1).unwrap();
    let mut input = vec![0u8];
    input.extend_from_slice(&raw[1 + header.len()..]);
    afterlog::testing::check_read_directory(&input);
    if let Some(dir) = &write_to {
        std::fs::write(Path::new(dir).join("seed-header"), &input).unwrap();
    }
}
