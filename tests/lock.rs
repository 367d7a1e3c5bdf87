//! The data directory lock at its edges: a deleted or replaced `LOCK`, a directory moved
//! away under a running engine, a second opener that must leave the first one's files alone.

use afterlog::log::LogOptions;
use afterlog::{After, Engine, Error, ManualClock, Options};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const START_MS: i64 = 1_700_000_000_000;
const SEGMENT: u64 = 4096;

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

fn open(dir: &Path) -> afterlog::Result<Engine> {
    Engine::open_with(dir, options(&ManualClock::new(START_MS), false))
}

fn assert_locked(result: afterlog::Result<Engine>, dir: &Path) {
    match result {
        Err(Error::Locked { dir: d }) => assert_eq!(d, dir),
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second engine opened a directory another engine holds"),
    }
}

/// Every file of `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn a_deleted_lock_file_keeps_a_second_engine_out() {
    let tmp = tempfile::tempdir().unwrap();
    let a = open(tmp.path()).unwrap();
    a.publish("x", "1", After::NOW).unwrap();
    std::fs::remove_file(tmp.path().join("LOCK")).unwrap();
    assert_locked(open(tmp.path()), tmp.path());
    // A keeps writing, and once it closes the directory opens again.
    a.publish("x", "2", After::NOW).unwrap();
    a.close().unwrap();
    let b = open(tmp.path()).unwrap();
    b.close().unwrap();
}

#[test]
fn a_replaced_lock_file_keeps_a_second_engine_out() {
    let tmp = tempfile::tempdir().unwrap();
    let a = open(tmp.path()).unwrap();
    let lock = tmp.path().join("LOCK");
    std::fs::remove_file(&lock).unwrap();
    std::fs::write(&lock, b"").unwrap();
    assert_locked(open(tmp.path()), tmp.path());
    // Renamed over, as an editor or a sync tool would.
    std::fs::write(tmp.path().join("LOCK.new"), b"").unwrap();
    std::fs::rename(tmp.path().join("LOCK.new"), &lock).unwrap();
    assert_locked(open(tmp.path()), tmp.path());
    a.close().unwrap();
}

#[test]
fn a_refused_open_leaves_the_running_engines_files_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let a = Engine::open_with(tmp.path(), options(&ManualClock::new(START_MS), true)).unwrap();
    // A prepares its spare segment in the background once its active one is half full.
    let spare = "00000000000000000002.seg.tmp";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut written = 0;
    while std::fs::metadata(tmp.path().join(spare)).map_or(0, |m| m.len()) < SEGMENT {
        assert!(Instant::now() < deadline, "no spare segment appeared");
        if written < SEGMENT * 5 / 8 {
            a.publish("x", format!("{written:0200}"), After::NOW)
                .unwrap();
            written += 240;
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::fs::remove_file(tmp.path().join("LOCK")).unwrap();
    let before = files(tmp.path());
    assert_locked(open(tmp.path()), tmp.path());
    assert_eq!(
        files(tmp.path()),
        before,
        "the refused open changed A's files"
    );
    // A's spare is still there for its next roll: A fills its segment without an error.
    for i in 0..64 {
        a.publish("x", format!("{i:0200}"), After::NOW).unwrap();
    }
    a.close().unwrap();
}

#[test]
fn the_command_refuses_to_write_when_lock_was_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let a = open(tmp.path()).unwrap();
    let id = a
        .publish("x", "1", After::parse("1 hour").unwrap())
        .unwrap();
    std::fs::remove_file(tmp.path().join("LOCK")).unwrap();
    let dir = tmp.path().to_str().unwrap();
    for args in [vec!["publish", dir, "x", "y"], vec!["compact", dir]] {
        let o = Command::new(env!("CARGO_BIN_EXE_afterlog"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {stderr}");
        assert!(stderr.starts_with("afterlog: refusing:"), "{stderr}");
    }
    // Nothing was written beside A: its next id follows its own.
    let next = a.publish("x", "2", After::NOW).unwrap();
    assert_eq!(next.0, id.0 + 1);
    a.close().unwrap();
}

#[test]
fn a_data_directory_moved_away_poisons_the_engine_at_its_next_roll() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let a = open(&dir).unwrap();
    a.publish("x", "1", After::NOW).unwrap();
    std::fs::rename(&dir, tmp.path().join("moved")).unwrap();
    // Someone else starts a fresh directory at the old path.
    let b = open(&dir).unwrap();
    let mut failed = None;
    for i in 0..64 {
        if let Err(e) = a.publish("x", format!("{i:0200}"), After::NOW) {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("A rolled into a directory it does not hold");
    assert!(e.to_string().contains("moved or replaced"), "{e}");
    // A wrote no segment into B's directory.
    let names: Vec<String> = files(&dir).into_keys().collect();
    assert_eq!(
        names,
        ["00000000000000000001.seg", "LOCK", "MANIFEST"],
        "{names:?}"
    );
    b.close().unwrap();
    let _ = a.close();
}

#[test]
fn compaction_refuses_to_touch_a_directory_that_was_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let clock = ManualClock::new(START_MS);
    let a = Engine::open_with(&dir, options(&clock, false)).unwrap();
    for i in 0..32 {
        a.publish("x", format!("{i:0200}"), After::parse("1 hour").unwrap())
            .unwrap();
    }
    // Everything sealed, nothing dead yet: nothing to rewrite.
    assert_eq!(a.compact_now().unwrap().segments_removed, 0);
    std::fs::rename(&dir, tmp.path().join("moved")).unwrap();
    std::fs::create_dir(&dir).unwrap();
    // Past retention, the pass expires every event and would remove their segments.
    clock.advance(Duration::from_secs(15 * 86_400));
    let e = a.compact_now().unwrap_err();
    assert!(e.to_string().contains("moved or replaced"), "{e}");
    // Poisoned: later writes fail too, and nothing appeared in the new directory.
    assert!(a.publish("x", "2", After::NOW).is_err());
    assert!(files(&dir).is_empty(), "{:?}", files(&dir).keys());
    let moved = files(&tmp.path().join("moved"));
    assert!(moved.len() > 3, "segments were removed: {:?}", moved.keys());
    let _ = a.close();
}
