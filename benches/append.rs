//! Durable appends against the raw physical limit of the same file system, side by side.
//!
//! Three scenarios, each run against a raw baseline in the same process, alternating
//! raw and afterlog rounds so that noise on a shared machine hits both:
//!
//! 1. One appender: `Log::append` in a loop, against `pwrite` of one 200-byte record plus
//!    `fdatasync`, per record.
//! 2. 64 appenders (64 threads, each calling `Log::append` in a loop), against an ideal group
//!    commit: a single thread writing 64 records of 200 bytes with one `pwrite` and one
//!    `fdatasync`, over and over. That is the most any group commit can get out of 64 waiters
//!    (every sync carries all 64, and no thread hand-off costs anything), so it is an upper
//!    bound, not an implementation.
//! 3. Batches of 1,024: `Log::append_all` of 1,024 records, against one `pwrite` of
//!    1,024 × 200 bytes plus one `fdatasync`.
//!
//! Raw writes go to one pre-sized, zero-filled and synced file (so, like afterlog's
//! segments, overwrites need no metadata update), wrapping around at its end. Afterlog
//! appends publish records with a 200-byte body under `Durability::Sync` with default
//! options (64 MiB segments, prepared in the background); segment preparation and rolls
//! during a run are part of what is measured.
//!
//! A second reference, *fresh*, writes the same raw records the same way but into new
//! files, each zero-filled and synced ahead of need by a background thread exactly as
//! afterlog prepares its segments. The raw baseline overwrites blocks that were written
//! before; a log that keeps its history cannot, so *fresh* is the cost the file system
//! charges any such log before it frames, checksums or hands off a single record. The
//! ratio against it is afterlog's own overhead.
//!
//! Usage: `cargo bench --bench append [-- --quick]`. Environment:
//! `AFTERLOG_BENCH_SECS` (seconds per timed run, default 3; 0.8 with `--quick`),
//! `AFTERLOG_BENCH_ROUNDS` (raw/afterlog pairs per scenario, default 3; 2 with `--quick`),
//! `AFTERLOG_BENCH_QUICK=1` (same as `--quick`), `AFTERLOG_BENCH_ONLY` (scenarios to run, by
//! key: `1`, `64`, `1024`, comma-separated; default all), `AFTERLOG_BENCH_DIR` (where files go;
//! default `afterlog-bench` under the cargo target directory: it must be on the disk being
//! measured, not a tmpfs), `AFTERLOG_BENCH_SEGMENT_MIB` (segment size; default the log's
//! default, 64 MiB).

use afterlog::EventId;
use afterlog::format::{FRAME_HEADER_LEN, Publish, PublishEntry, Record};
use afterlog::log::{Log, LogCounters, LogOptions};
use afterlog::storage::{FsStorage, Storage};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const BODY_LEN: usize = 200;
const NAME: &str = "bench.event";
/// Bytes a raw record occupies.
const RAW_RECORD_LEN: usize = BODY_LEN;
/// The raw baseline's pre-sized file; writes wrap around at its end.
const RAW_FILE_BYTES: u64 = 256 << 20;
const WARMUP: Duration = Duration::from_millis(300);
/// Pause after opening a log, for its background segment preparation to finish.
const SETTLE: Duration = Duration::from_millis(1500);

struct Config {
    secs: Duration,
    rounds: usize,
    dir: PathBuf,
}

#[derive(Clone, Copy)]
enum Scenario {
    One,
    Concurrent(usize),
    Batch(usize),
}

impl Scenario {
    fn label(self) -> String {
        match self {
            Scenario::One => "1 appender".into(),
            Scenario::Concurrent(n) => format!("{n} appenders"),
            Scenario::Batch(n) => format!("batches of {n}"),
        }
    }
    /// The name `AFTERLOG_BENCH_ONLY` selects the scenario by.
    fn key(self) -> String {
        match self {
            Scenario::One => "1".into(),
            Scenario::Concurrent(n) | Scenario::Batch(n) => n.to_string(),
        }
    }
    fn target(self) -> f64 {
        match self {
            Scenario::One | Scenario::Concurrent(_) => 0.9,
            Scenario::Batch(_) => 0.7,
        }
    }
}

/// One timed run.
#[derive(Clone, Copy)]
struct Run {
    records: u64,
    elapsed: Duration,
    syncs: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; anything else unknown is ignored.
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("AFTERLOG_BENCH_QUICK").is_ok_and(|v| v == "1");
    let secs = std::env::var("AFTERLOG_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(if quick { 0.8 } else { 3.0 });
    let rounds = std::env::var("AFTERLOG_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(if quick { 2 } else { 3 })
        .max(1);
    let dir = bench_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench directory");
    let config = Config {
        secs: Duration::from_secs_f64(secs),
        rounds,
        dir,
    };

    let fs_type = fs_type(&config.dir);
    println!("afterlog append bench");
    println!(
        "  cores: {}   file system: {} ({})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        fs_type,
        config.dir.display()
    );
    if fs_type.contains("tmpfs") || fs_type.contains("ramfs") {
        println!("  WARNING: the bench directory is in memory; set AFTERLOG_BENCH_DIR to a disk");
    }
    println!(
        "  body {BODY_LEN} B; afterlog frame {} B per record; raw record {RAW_RECORD_LEN} B",
        frame_len()
    );
    println!(
        "  {:.1} s per timed run, {} raw/afterlog pairs per scenario, median taken",
        config.secs.as_secs_f64(),
        config.rounds
    );
    println!();

    let raw_file = RawFile::create(&config.dir.join("raw.dat"));
    let scenarios = [
        Scenario::One,
        Scenario::Concurrent(64),
        Scenario::Batch(1024),
    ];
    let only = std::env::var("AFTERLOG_BENCH_ONLY").ok();
    let mut rows = Vec::new();
    for scenario in scenarios {
        if let Some(only) = &only
            && !only.split(',').any(|s| s.trim() == scenario.key())
        {
            continue;
        }
        // Warm-up of both sides, untimed.
        let bench = Bench::open(&config, scenario);
        let fresh_dir = config.dir.join(format!("fresh-{}", scenario.key()));
        raw_run(&raw_file, scenario, WARMUP);
        bench.run(scenario, WARMUP);
        let mut raw = Vec::new();
        let mut ours = Vec::new();
        let mut fresh = Vec::new();
        for round in 0..config.rounds {
            // Alternate which side goes first so a drift in the machine's load evens out.
            if round % 2 == 0 {
                raw.push(raw_run(&raw_file, scenario, config.secs));
                ours.push(bench.run(scenario, config.secs));
                fresh.push(fresh_run(&fresh_dir, scenario, config.secs));
            } else {
                fresh.push(fresh_run(&fresh_dir, scenario, config.secs));
                ours.push(bench.run(scenario, config.secs));
                raw.push(raw_run(&raw_file, scenario, config.secs));
            }
        }
        bench.close();
        let fmt_runs = |runs: &[Run]| {
            runs.iter()
                .map(|r| format_rate(r.rate()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "{:<16} raw: {}   fresh: {}   afterlog: {}",
            scenario.label(),
            fmt_runs(&raw),
            fmt_runs(&fresh),
            fmt_runs(&ours)
        );
        rows.push((scenario, raw, fresh, ours));
    }
    drop(raw_file);
    let _ = std::fs::remove_dir_all(&config.dir);

    println!();
    println!(
        "{:<16} {:>10} {:>10} {:>10} {:>7} {:>7} {:>6} {:>10} {:>14}",
        "scenario",
        "raw/s",
        "fresh/s",
        "afterlog/s",
        "ratio",
        "target",
        "met",
        "vs fresh",
        "records/fsync"
    );
    for (scenario, raw, fresh, ours) in rows {
        let raw_rate = median(raw.iter().map(Run::rate).collect());
        let fresh_rate = median(fresh.iter().map(Run::rate).collect());
        let our_rate = median(ours.iter().map(Run::rate).collect());
        let records: u64 = ours.iter().map(|r| r.records).sum();
        let syncs: u64 = ours.iter().map(|r| r.syncs).sum();
        let ratio = our_rate / raw_rate;
        println!(
            "{:<16} {:>10} {:>10} {:>10} {:>6.2}x {:>6.1}x {:>6} {:>9.2}x {:>14.1}",
            scenario.label(),
            format_rate(raw_rate),
            format_rate(fresh_rate),
            format_rate(our_rate),
            ratio,
            scenario.target(),
            if ratio >= scenario.target() {
                "yes"
            } else {
                "NO"
            },
            our_rate / fresh_rate,
            records as f64 / syncs.max(1) as f64
        );
    }
}

fn bench_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("AFTERLOG_BENCH_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("afterlog-bench")
}

/// The file system type of `dir`: the type of the longest mount point containing it in
/// `/proc/self/mounts` (exact, where `stat -f` calls ext4 "ext2/ext3"), else `stat -f`.
fn fs_type(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let from_mounts = std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|mounts| {
            mounts
                .lines()
                .filter_map(|line| {
                    let mut fields = line.split_whitespace();
                    let (_dev, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
                    dir.starts_with(point)
                        .then(|| (point.len(), kind.to_string()))
                })
                .max_by_key(|(len, _)| *len)
                .map(|(_, kind)| kind)
        });
    from_mounts.unwrap_or_else(|| {
        std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(&dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    })
}

fn format_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

const BODY: [u8; BODY_LEN] = [0x5a; BODY_LEN];

fn entry(id: u64) -> PublishEntry<'static> {
    PublishEntry {
        id: EventId(id),
        due_ms: 1_700_000_000_000 + id as i64,
        name: NAME,
        body: &BODY,
    }
}

fn frame_len() -> usize {
    let entries = [entry(1)];
    FRAME_HEADER_LEN + Record::Publish(Publish::new(None, 0, &entries)).encoded_len()
}

// ---- raw baseline ------------------------------------------------------------------------

struct RawFile {
    file: File,
    path: PathBuf,
}

impl RawFile {
    /// A pre-sized file, all written as zeros and synced.
    fn create(path: &Path) -> RawFile {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .expect("create raw file");
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < RAW_FILE_BYTES {
            file.write_all_at(&zeros, at).expect("zero-fill raw file");
            at += zeros.len() as u64;
        }
        file.sync_all().expect("sync raw file");
        RawFile {
            file,
            path: path.to_path_buf(),
        }
    }
}

impl Drop for RawFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes `per_sync` raw records with one `pwrite` and one `fdatasync`, over and over.
fn raw_run(raw: &RawFile, scenario: Scenario, duration: Duration) -> Run {
    let per_sync = match scenario {
        Scenario::One => 1,
        Scenario::Concurrent(n) | Scenario::Batch(n) => n,
    };
    let buf = vec![0x5au8; per_sync * RAW_RECORD_LEN];
    let mut offset = 0u64;
    let mut records = 0u64;
    let mut syncs = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        if offset + buf.len() as u64 > RAW_FILE_BYTES {
            offset = 0;
        }
        raw.file.write_all_at(&buf, offset).expect("raw pwrite");
        raw.file.sync_data().expect("raw fdatasync");
        offset += buf.len() as u64;
        records += per_sync as u64;
        syncs += 1;
    }
    Run {
        records,
        elapsed: start.elapsed(),
        syncs,
    }
}

/// Bytes of each *fresh* file: the log's default segment size.
const FRESH_FILE_BYTES: u64 = 64 << 20;

/// A new file of `FRESH_FILE_BYTES` zeros, written and synced in 1 MiB steps as afterlog
/// prepares a segment, then synced whole.
fn fresh_file(dir: &Path, n: u64) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join(format!("{n}.dat")))
        .expect("create fresh file");
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < FRESH_FILE_BYTES {
        file.write_all_at(&zeros, at).expect("zero-fill fresh file");
        file.sync_data().expect("sync fresh file");
        at += zeros.len() as u64;
    }
    file.sync_all().expect("sync fresh file");
    file
}

/// Like `raw_run`, but into new files, the next one prepared by a background thread while
/// the current one fills (the first before the clock starts); files are deleted once full.
fn fresh_run(dir: &Path, scenario: Scenario, duration: Duration) -> Run {
    let per_sync = match scenario {
        Scenario::One => 1,
        Scenario::Concurrent(n) | Scenario::Batch(n) => n,
    };
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("create fresh directory");
    let buf = vec![0x5au8; per_sync * RAW_RECORD_LEN];
    let mut current = (0, fresh_file(dir, 0));
    let mut next = Some(spawn_fresh(dir, 1));
    let (mut offset, mut records, mut syncs) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        if offset + buf.len() as u64 > FRESH_FILE_BYTES {
            let file = next
                .take()
                .expect("a prepared file")
                .join()
                .expect("prepare");
            let _ = std::fs::remove_file(dir.join(format!("{}.dat", current.0)));
            current = (current.0 + 1, file);
            next = Some(spawn_fresh(dir, current.0 + 1));
            offset = 0;
        }
        current.1.write_all_at(&buf, offset).expect("fresh pwrite");
        current.1.sync_data().expect("fresh fdatasync");
        offset += buf.len() as u64;
        records += per_sync as u64;
        syncs += 1;
    }
    let elapsed = start.elapsed();
    if let Some(handle) = next {
        let _ = handle.join();
    }
    let _ = std::fs::remove_dir_all(dir);
    Run {
        records,
        elapsed,
        syncs,
    }
}

fn spawn_fresh(dir: &Path, n: u64) -> std::thread::JoinHandle<File> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || fresh_file(&dir, n))
}

// ---- afterlog ------------------------------------------------------------------------------

/// Default options, except `AFTERLOG_BENCH_SEGMENT_MIB` (segment size) when set.
fn log_options() -> LogOptions {
    let mut options = LogOptions::default();
    if let Some(mib) = std::env::var("AFTERLOG_BENCH_SEGMENT_MIB")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        options.segment_bytes = mib << 20;
    }
    options
}

/// One open log, used for every afterlog round of a scenario.
struct Bench {
    log: Log,
    dir: PathBuf,
}

impl Bench {
    /// Opens a fresh log and lets its first spare segment (zero-filled in the background
    /// right after open) be prepared, so that timed rounds see the steady state: one
    /// segment prepared ahead while the active one fills.
    fn open(config: &Config, scenario: Scenario) -> Bench {
        let dir = config.dir.join(format!("log-{}", scenario.key()));
        let _ = std::fs::remove_dir_all(&dir);
        let storage: Arc<dyn Storage> = Arc::new(FsStorage::new(&dir).expect("create log dir"));
        let (log, _) = Log::open(storage, log_options(), |_, _| Ok(())).expect("open log");
        // No API tells when the spare is ready; 64 MiB of zeros and a sync take well under
        // this on a disk that syncs thousands of times a second.
        std::thread::sleep(SETTLE);
        Bench { log, dir }
    }

    fn close(self) {
        self.log.close().expect("close log");
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Appends for `duration` in the shape of `scenario`.
    fn run(&self, scenario: Scenario, duration: Duration) -> Run {
        let log = &self.log;
        let before = log.counters();
        let (records, elapsed) = match scenario {
            Scenario::One => one_appender(log, duration),
            Scenario::Concurrent(n) => concurrent_appenders(log, n, duration),
            Scenario::Batch(n) => batches(log, n, duration),
        };
        let after: LogCounters = log.counters();
        assert_eq!(after.records - before.records, records);
        Run {
            records,
            elapsed,
            syncs: after.syncs - before.syncs,
        }
    }
}

fn one_appender(log: &Log, duration: Duration) -> (u64, Duration) {
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        n += 1;
        let entries = [entry(n)];
        log.append(&Record::Publish(Publish::new(None, 1, &entries)))
            .expect("append");
    }
    (n, start.elapsed())
}

fn concurrent_appenders(log: &Log, threads: usize, duration: Duration) -> (u64, Duration) {
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let barrier = Barrier::new(threads + 1);
    let start = std::thread::scope(|s| {
        for t in 0..threads as u64 {
            let (stop, total, barrier) = (&stop, &total, &barrier);
            s.spawn(move || {
                barrier.wait();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let entries = [entry((t << 40) + n + 1)];
                    log.append(&Record::Publish(Publish::new(None, 1, &entries)))
                        .expect("append");
                    n += 1;
                }
                total.fetch_add(n, Ordering::Relaxed);
            });
        }
        barrier.wait();
        let start = Instant::now();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        start
    });
    // The scope joined every thread: appends in flight at the deadline finished and count.
    (total.load(Ordering::Relaxed), start.elapsed())
}

fn batches(log: &Log, size: usize, duration: Duration) -> (u64, Duration) {
    let mut entries: Vec<[PublishEntry<'static>; 1]> =
        (0..size as u64).map(|_| [entry(0)]).collect();
    let mut n = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        for e in entries.iter_mut() {
            n += 1;
            e[0].id = EventId(n);
        }
        let records: Vec<Record<'_>> = entries
            .iter()
            .map(|e| Record::Publish(Publish::new(None, 1, e)))
            .collect();
        log.append_all(&records).expect("append_all");
    }
    (n, start.elapsed())
}
