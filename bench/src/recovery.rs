//! Scenarios 4 and 5: recovery time and memory per pending event.
//!
//! For each count, a data directory is filled with that many pending events (200-byte
//! bodies, 8 names, each its own publish record — as `Engine::publish` writes them — due
//! over days 1–31 from now), written through the log's `append_all` in batches of 1,024.
//! Then a fresh process (this binary, `--child-open DIR`) opens an engine on it: the time
//! `Engine::open_with` takes is the recovery time (scan and verify every record, rebuild the
//! index and the timing wheel), and its resident anonymous memory (`RssAnon` of
//! `/proc/self/status`) before and after the open, divided by the pending events, is the
//! memory per pending event. A fresh process keeps the figure free of what earlier scenarios
//! left in the allocator. The baseline is reading the same files sequentially (1 MiB reads).
//! Both are timed with the files in the page cache (just written), and, with `--cold`, also
//! after dropping the page cache (`/proc/sys/vm/drop_caches`, root only).

use crate::machine::rss;
use crate::{Progress, fresh_dir};
use afterlog::EventId;
use afterlog::format::{EventOptions, KEY_KEEP, Publish, PublishEntry, Record};
use afterlog::log::{Log, LogOptions};
use afterlog::storage::{FsStorage, Storage};
use afterlog::{Engine, Options};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NAMES: [&str; 8] = [
    "user.joined",
    "user.left",
    "invoice.due",
    "invoice.paid",
    "email.reminder",
    "report.daily",
    "cache.expire",
    "trial.ending",
];
const BODY: [u8; 200] = [0x42; 200];
const DAY_MS: i64 = 86_400_000;

/// What the child process reports about one open.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpenReport {
    pub open_s: f64,
    pub pending: u64,
    pub rss_anon_before: u64,
    pub rss_anon_after: u64,
    pub rss_file_after: u64,
    /// The engine's own estimate of its index's heap bytes (`metrics().index_bytes`).
    pub index_bytes_estimate: u64,
    /// Dead letters kept (`metrics().dead_letters`).
    pub dead_letters: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Recovery {
    pub pending: u64,
    pub segment_files: usize,
    pub data_bytes: u64,
    pub write_s: f64,
    /// Page cache warm (files just written).
    pub open_s: f64,
    pub events_per_s: f64,
    pub sequential_read_s: f64,
    pub sequential_bytes_per_s: f64,
    /// open time / sequential read time.
    pub open_over_read: f64,
    /// With `--cold`: the same after dropping the page cache.
    pub cold: Option<Cold>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cold {
    pub open_s: f64,
    pub events_per_s: f64,
    pub sequential_read_s: f64,
    pub open_over_read: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    pub pending: u64,
    pub method: &'static str,
    pub rss_anon_before: u64,
    pub rss_anon_after: u64,
    pub bytes_per_pending_event: f64,
    pub index_estimate_bytes_per_event: f64,
    /// File-backed resident bytes after the open (mapped segments): page cache, not heap.
    pub rss_file_after: u64,
}

/// In the child: open `dir`, report as one JSON line on stdout.
pub fn child_open(dir: &Path) {
    let (rss_anon_before, _) = rss();
    let started = Instant::now();
    let engine =
        Engine::open_with(dir, Options::default().compaction_interval(None)).expect("open engine");
    let open_s = started.elapsed().as_secs_f64();
    let m = engine.metrics();
    let (rss_anon_after, rss_file_after) = rss();
    let report = OpenReport {
        open_s,
        pending: m.pending,
        rss_anon_before,
        rss_anon_after,
        rss_file_after,
        index_bytes_estimate: m.index_bytes,
        dead_letters: m.dead_letters,
    };
    println!("{}", serde_json::to_string(&report).expect("report"));
    engine.close().expect("close");
}

pub fn open_in_child(dir: &Path) -> OpenReport {
    let exe = std::env::current_exe().expect("current exe");
    let out = std::process::Command::new(exe)
        .arg("--child-open")
        .arg(dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run child");
    assert!(out.status.success(), "child open failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).expect("child report")
}

fn drop_caches() -> bool {
    sync_file_systems();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// `sync(1)`: drop_caches only drops clean pages.
fn sync_file_systems() {
    let _ = std::process::Command::new("sync").status();
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n == "LOCK" || n == "lock"))
        .collect();
    files.sort();
    files
}

fn sequential_read(files: &[std::path::PathBuf]) -> (u64, Duration) {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    let started = Instant::now();
    for f in files {
        let mut file = std::fs::File::open(f).expect("open segment");
        loop {
            let n = file.read(&mut buf).expect("read segment");
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    (total, started.elapsed())
}

/// Fills a fresh directory with `pending` pending events, each published with the key
/// `key(id)` (`KeyMode::Keep`) when `key` is given; returns the seconds it took.
pub fn fill(dir: &Path, pending: u64, progress: &Progress, key: Option<fn(u64) -> Vec<u8>>) -> f64 {
    let storage: Arc<dyn Storage> = Arc::new(FsStorage::new(dir).expect("create dir"));
    let (log, _) = Log::open(storage, LogOptions::default(), |_, _| Ok(())).expect("open log");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let started = Instant::now();
    let mut next = 1u64;
    let mut entries: Vec<[PublishEntry<'static>; 1]> = Vec::with_capacity(1024);
    while next <= pending {
        let n = (pending - next + 1).min(1024);
        entries.clear();
        for id in next..next + n {
            entries.push([PublishEntry {
                id: EventId(id),
                due_ms: now_ms + DAY_MS + (id as i64 * 7919) % (30 * DAY_MS),
                name: NAMES[id as usize % NAMES.len()],
                body: &BODY,
            }]);
        }
        let keys: Vec<Vec<u8>> = match key {
            Some(key) => (next..next + n).map(key).collect(),
            None => Vec::new(),
        };
        let records: Vec<Record<'_>> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| match keys.get(i) {
                Some(key) => Record::Publish(Publish::with_options(
                    now_ms,
                    e[0],
                    EventOptions {
                        key,
                        mode: KEY_KEEP,
                        ..EventOptions::default()
                    },
                )),
                None => Record::Publish(Publish::new(None, now_ms, e)),
            })
            .collect();
        log.append_all(&records).expect("append_all");
        next += n;
        if next % (1 << 20) < 1024 {
            progress.detail(&format!("{} / {pending} events written", next - 1));
        }
    }
    log.close().expect("close log");
    started.elapsed().as_secs_f64()
}

pub fn run(
    base: &Path,
    counts: &[u64],
    cold: bool,
    progress: &Progress,
) -> (Vec<Recovery>, Vec<Memory>) {
    let mut recovery = Vec::new();
    let mut memory = Vec::new();
    for &pending in counts {
        progress.step(&format!("recovery: writing {pending} pending events"));
        let dir = fresh_dir(base, &format!("recovery-{pending}"));
        let write_s = fill(&dir, pending, progress, None);
        let files = segment_files(&dir);
        progress.step(&format!("recovery: reopening {pending} pending events"));
        let warm_read = sequential_read(&files);
        let report = open_in_child(&dir);
        assert_eq!(
            report.pending, pending,
            "every written event is pending after open"
        );
        let (data_bytes, read) = sequential_read(&files);
        let read = read.min(warm_read.1);
        let cold = if cold && drop_caches() {
            progress.step(&format!(
                "recovery: cold reopen of {pending} pending events"
            ));
            let open = open_in_child(&dir);
            drop_caches();
            let (_, read) = sequential_read(&files);
            Some(Cold {
                open_s: open.open_s,
                events_per_s: pending as f64 / open.open_s,
                sequential_read_s: read.as_secs_f64(),
                open_over_read: open.open_s / read.as_secs_f64(),
            })
        } else {
            None
        };
        recovery.push(Recovery {
            pending,
            segment_files: files.len(),
            data_bytes,
            write_s,
            open_s: report.open_s,
            events_per_s: pending as f64 / report.open_s,
            sequential_read_s: read.as_secs_f64(),
            sequential_bytes_per_s: data_bytes as f64 / read.as_secs_f64(),
            open_over_read: report.open_s / read.as_secs_f64(),
            cold,
        });
        memory.push(Memory {
            pending,
            method: "RssAnon of /proc/self/status in a fresh process, before and after Engine::open_with",
            rss_anon_before: report.rss_anon_before,
            rss_anon_after: report.rss_anon_after,
            bytes_per_pending_event: report.rss_anon_after.saturating_sub(report.rss_anon_before)
                as f64
                / pending as f64,
            index_estimate_bytes_per_event: report.index_bytes_estimate as f64 / pending as f64,
            rss_file_after: report.rss_file_after,
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
    (recovery, memory)
}
