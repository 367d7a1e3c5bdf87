//! The `afterlog` CLI writes with the settings the directory recorded (docs/CLI.md,
//! "Settings"): a compaction expires only what is past the application's retention, nothing
//! when none is recorded, and CLI writes keep the directory's segment size.

use afterlog::{After, Engine, ManualClock, Options, Reader};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const DAY_MS: i64 = 86_400_000;

fn afterlog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_afterlog"))
        .args(args)
        .output()
        .expect("run afterlog")
}

fn ok(args: &[&str]) -> Output {
    let o = afterlog(args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "afterlog {args:?}: stdout {} stderr {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn json(args: &[&str]) -> Value {
    let o = ok(args);
    serde_json::from_slice(&o.stdout).unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Five events due 20 days ago, never delivered, in a directory whose engine ran with
/// `retention`.
fn overdue_events(dir: &Path, retention: Duration) {
    let clock = ManualClock::new(now_ms() - 20 * DAY_MS);
    let engine = Engine::open_with(
        dir,
        Options::default()
            .clock(clock)
            .retention(retention)
            .compaction_interval(None)
            .segment_bytes(64 << 10),
    )
    .unwrap();
    for i in 0..5 {
        engine
            .publish("report", format!("overdue {i}").as_bytes(), After::NOW)
            .unwrap();
    }
    engine.close().unwrap();
}

fn scheduled(dir: &Path) -> usize {
    json(&["events", dir.to_str().unwrap(), "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "scheduled")
        .count()
}

#[test]
fn compact_expires_by_the_retention_the_directory_recorded() {
    let dir = tempfile::tempdir().unwrap();
    overdue_events(dir.path(), Duration::from_secs(30 * 86_400));
    let d = dir.path().to_str().unwrap();
    let inspect = String::from_utf8(ok(&["inspect", d]).stdout).unwrap();
    assert!(
        inspect.contains("retention   30 days (recorded by the engine)"),
        "{inspect}"
    );
    let out = json(&["compact", d, "--json"]);
    assert_eq!(out["stats"]["events_expired"], 0, "{out}");
    assert_eq!(out["retention_ms"], 30 * DAY_MS, "{out}");
    assert_eq!(scheduled(dir.path()), 5);

    // The same events under the default 14 days are past it: the CLI expires them.
    let dir = tempfile::tempdir().unwrap();
    overdue_events(dir.path(), Duration::from_secs(14 * 86_400));
    let out = json(&["compact", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(out["stats"]["events_expired"], 5, "{out}");
    assert_eq!(scheduled(dir.path()), 0);
}

#[test]
fn compact_expires_nothing_when_no_retention_is_recorded() {
    // The format-1 fixture records no retention, and its events are years overdue.
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let d = dir.path().to_str().unwrap();
    let before = scheduled(dir.path());
    assert_eq!(before, 6);
    let o = ok(&["compact", d]);
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("records no retention: nothing expired"),
        "{said}"
    );
    assert_eq!(scheduled(dir.path()), before);
    // The CLI recorded no retention of its own.
    let manifest = Reader::open(dir.path())
        .unwrap()
        .manifest()
        .unwrap()
        .unwrap();
    assert_eq!(manifest.retention_ms, None);
    let inspect = String::from_utf8(ok(&["inspect", d]).stdout).unwrap();
    assert!(inspect.contains("retention   not recorded"), "{inspect}");
}

#[test]
fn cli_writes_keep_the_directory_segment_size() {
    let dir = tempfile::tempdir().unwrap();
    overdue_events(dir.path(), Duration::from_secs(30 * 86_400));
    let d = dir.path().to_str().unwrap();
    for i in 0..3 {
        ok(&["publish", d, "ping", &format!("{{\"n\":{i}}}")]);
        ok(&["compact", d]);
    }
    let mut total = 0;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let len = entry.metadata().unwrap().len();
        files.push((name.clone(), len));
        assert!(!name.ends_with(".tmp"), "{name} left behind");
        assert!(
            len <= 64 << 10,
            "{name} is {len} bytes, the directory's segments 64 KiB"
        );
        total += len;
    }
    // Four segments of at most 64 KiB (three sealed, one active) and the 8 KiB manifest.
    assert!(
        total <= 4 * (64 << 10) + 8192,
        "{total} bytes on disk: {files:?}"
    );
    let manifest = Reader::open(dir.path())
        .unwrap()
        .manifest()
        .unwrap()
        .unwrap();
    assert_eq!(manifest.segment_bytes, Some(64 << 10));
    assert_eq!(manifest.retention_ms, Some(30 * DAY_MS as u64));
}
