//! Files in a data directory that are not what their names say: an immutable segment, a FIFO
//! or a dangling symbolic link named as a segment. Each is a clear error naming the file,
//! never a hang or a misleading system message.

use afterlog::{After, Engine, Options, Reader};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

const SEG1: &str = "00000000000000000001.seg";
const SEG2: &str = "00000000000000000002.seg";

fn options() -> Options {
    Options::default()
        .segment_bytes(4096)
        .prepare_spare(false)
        .compaction_interval(None)
}

/// A closed data directory with one segment holding one event.
fn data_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Engine::open_with(tmp.path(), options()).unwrap();
    engine.publish("x", "1", After::NOW).unwrap();
    engine.close().unwrap();
    tmp
}

/// Opens an engine on another thread; fails the test if it takes more than 10 s.
fn open_within_limit(dir: &Path) -> afterlog::Result<Engine> {
    let (tx, rx) = mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(Engine::open_with(&dir, options()));
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("opening the directory hung")
}

fn open_error(dir: &Path) -> String {
    match open_within_limit(dir) {
        Ok(_) => panic!("the directory opened"),
        Err(e) => e.to_string(),
    }
}

/// Sets or clears the immutable attribute; false when the file system or user cannot.
fn chattr(path: &Path, flag: &str) -> bool {
    Command::new("chattr")
        .arg(flag)
        .arg(path)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn an_immutable_segment_is_reported_as_not_writable() {
    let tmp = data_dir();
    let seg = tmp.path().join(SEG1);
    assert!(
        chattr(&seg, "+i"),
        "chattr +i failed: the test needs root and chattr (e2fsprogs)"
    );
    let message = open_error(tmp.path());
    assert!(chattr(&seg, "-i"));
    assert!(message.contains(SEG1), "{message}");
    assert!(message.contains("cannot be written"), "{message}");
    assert!(
        message.contains("Operation not permitted"),
        "the original error is lost: {message}"
    );
    assert!(!message.contains("Bad file descriptor"), "{message}");
}

#[test]
fn a_fifo_named_as_a_segment_is_refused_without_blocking() {
    let tmp = data_dir();
    let fifo = tmp.path().join(SEG2);
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let message = open_error(tmp.path());
    assert!(message.contains(SEG2), "{message}");
    assert!(message.contains("not a regular file"), "{message}");
    assert!(message.contains("FIFO"), "{message}");
    // The reader says the same, without hanging either.
    let (tx, rx) = mpsc::channel();
    let dir = tmp.path().to_path_buf();
    std::thread::spawn(move || {
        let verified =
            Reader::open(&dir).and_then(|r| r.verify(&mut |_| {}).map(|v| v.problems.len()));
        let _ = tx.send(verified.map_err(|e| e.to_string()));
    });
    let verified = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the reader hung on a FIFO");
    assert!(!matches!(verified, Ok(0)), "a FIFO passed as sound");
}

#[test]
fn a_dangling_symlink_named_as_a_segment_is_named_as_such() {
    let tmp = data_dir();
    std::os::unix::fs::symlink(tmp.path().join("elsewhere.seg"), tmp.path().join(SEG2)).unwrap();
    let message = open_error(tmp.path());
    assert!(message.contains(SEG2), "{message}");
    assert!(message.contains("dangling symbolic link"), "{message}");
    assert!(message.contains("elsewhere.seg"), "{message}");
}

#[test]
fn a_symlink_to_a_regular_segment_still_opens() {
    let tmp = data_dir();
    let elsewhere = tempfile::tempdir().unwrap();
    let real = elsewhere.path().join(SEG1);
    std::fs::rename(tmp.path().join(SEG1), &real).unwrap();
    std::os::unix::fs::symlink(&real, tmp.path().join(SEG1)).unwrap();
    let engine = open_within_limit(tmp.path()).unwrap();
    assert_eq!(engine.metrics().pending, 1);
    engine.close().unwrap();
}

#[test]
fn the_command_names_a_dangling_symlink_segment() {
    let tmp = data_dir();
    std::os::unix::fs::symlink("nowhere.seg", tmp.path().join(SEG2)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_afterlog"))
        .args(["publish", tmp.path().to_str().unwrap(), "x", "y"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr.contains(SEG2), "{stderr}");
    assert!(
        stderr.contains("dangling symbolic link to nowhere.seg"),
        "{stderr}"
    );
}
