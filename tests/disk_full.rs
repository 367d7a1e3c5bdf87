//! A full disk: the engine keeps what it has, frees space when asked, and recovers once space
//! is back — no stale error inherited, no space claimed that the work does not need.
//!
//! `FullDisk` wraps the in-memory storage: while full, a write that would extend a file fails
//! with ENOSPC (overwriting bytes a file already has succeeds, as on a real disk where they
//! are allocated). The command-line test runs on a small tmpfs when it can mount one (root).

mod common;

use afterlog::log::LogOptions;
use afterlog::storage::{Storage, StorageFile};
use afterlog::{After, Engine, ManualClock, Options};
use common::hooked::{Hooked, Hooks};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const START_MS: i64 = 1_700_000_000_000;
const SEGMENT: u64 = 4096;
const ENOSPC: i32 = 28;

#[derive(Debug, Default)]
struct Space {
    full: AtomicBool,
    /// Writes refused for lack of space.
    refused: AtomicU64,
    /// Names of every file created.
    created: Mutex<Vec<String>>,
}

impl Hooks for Space {
    fn create(&self, name: &str) {
        self.created.lock().unwrap().push(name.to_owned());
    }
    fn write(&self, file: &dyn StorageFile, end: u64) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) && end > file.len()? {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        Ok(())
    }
}

type FullDisk = Hooked<Space>;

fn full_disk() -> FullDisk {
    Hooked::new(Space::default())
}

fn set_full(disk: &FullDisk, full: bool) {
    disk.hooks.full.store(full, Ordering::SeqCst);
}

fn options(clock: &ManualClock, background: bool) -> Options {
    Options::default()
        .clock(clock.clone())
        .log_options(LogOptions {
            segment_bytes: SEGMENT,
            prepare_in_background: background,
            ..LogOptions::default()
        })
        .compaction_interval(None)
}

fn open(disk: &FullDisk, options: Options) -> afterlog::Result<Engine> {
    Engine::open_storage(Arc::new(disk.clone()), options)
}

fn body(i: u64) -> String {
    format!("{i:0200}")
}

#[test]
fn a_spare_that_failed_on_a_full_disk_is_prepared_again_once_space_is_back() {
    let disk = full_disk();
    let clock = ManualClock::new(START_MS);
    let engine = open(&disk, options(&clock, false)).unwrap();
    engine.publish("x", "0", After::NOW).unwrap();
    engine.close().unwrap();

    // Reopened on a full disk: once the active segment (pre-sized) is half full, its spare
    // segment is prepared in the background, and fails.
    set_full(&disk, true);
    let engine = open(&disk, options(&clock, true)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut published = 1;
    while disk.hooks.refused.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the spare never tried to write");
        if engine.metrics().records < 9 {
            engine.publish("x", body(published), After::NOW).unwrap();
            published += 1;
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Space is freed; publishing fills the segment and rolls without the stale error.
    set_full(&disk, false);
    for i in 1..=64 {
        if let Err(e) = engine.publish("x", body(i), After::NOW) {
            panic!("publish {i} after space came back: {e}");
        }
    }
    assert!(engine.metrics().records >= 64);
    engine.close().unwrap();
    let reopened = open(&disk, options(&clock, false)).unwrap();
    assert_eq!(reopened.metrics().pending, published + 64);
    reopened.close().unwrap();
}

#[test]
fn a_roll_that_finds_the_disk_full_fails_but_the_next_one_succeeds_once_space_is_back() {
    let disk = full_disk();
    let clock = ManualClock::new(START_MS);
    let engine = open(&disk, options(&clock, false)).unwrap();
    for i in 0..8 {
        engine.publish("x", body(i), After::NOW).unwrap();
    }
    set_full(&disk, true);
    // Sealing needs a new segment, which cannot be made: the compaction pass still runs on
    // what is sealed, and the log is not poisoned.
    engine.compact_now().unwrap_err();
    // No half-made segment is left holding space.
    let names = disk.inner.list().unwrap();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    set_full(&disk, false);
    engine.compact_now().unwrap();
    engine.publish("x", "after", After::NOW).unwrap();
    engine.close().unwrap();
}

#[test]
fn an_engine_without_a_spare_creates_no_file_ahead_of_need() {
    let disk = full_disk();
    let clock = ManualClock::new(START_MS);
    let engine = open(&disk, options(&clock, true).prepare_spare(false)).unwrap();
    engine.publish("x", "0", After::NOW).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    engine.close().unwrap();
    let created = disk.hooks.created.lock().unwrap().clone();
    // The manifest of the new directory, and its first segment: no spare.
    assert_eq!(created, ["MANIFEST.tmp", "00000000000000000001.seg.tmp"]);
}

#[test]
fn compaction_on_a_full_disk_frees_space() {
    let disk = full_disk();
    let clock = ManualClock::new(START_MS);
    let engine = open(&disk, options(&clock, false).prepare_spare(false)).unwrap();
    let ids: Vec<_> = (0..40)
        .map(|i| {
            engine
                .publish("x", body(i), After::parse("1 hour").unwrap())
                .unwrap()
        })
        .collect();
    for id in &ids {
        engine.cancel(*id).unwrap();
    }
    engine.close().unwrap();
    let segments = |disk: &FullDisk| {
        disk.inner
            .list()
            .unwrap()
            .iter()
            .filter(|n| n.ends_with(".seg"))
            .count()
    };
    let before = segments(&disk);
    assert!(before >= 3, "{before} segments");

    set_full(&disk, true);
    let engine = open(&disk, options(&clock, false).prepare_spare(false)).unwrap();
    let stats = engine.compact_now().unwrap();
    assert!(stats.segments_removed > 0, "{stats:?}");
    assert!(segments(&disk) < before);
    // The log is sound: it writes into the space its active segment already has.
    engine.publish("x", "after", After::NOW).unwrap();
    engine.close().unwrap();
}
