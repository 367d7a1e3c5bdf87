//! `fdatasync` failing with EIO in a real process, injected by `strace`.
//!
//! The test binary re-invokes itself under `strace -f -e inject=fdatasync:error=EIO:when=N`
//! as the child (the `syscall_child` test, a no-op unless `AFTERLOG_SYSCALL_CHILD_DIR` is
//! set), for every `N` from 1 to a little past the number of `fdatasync` calls the child
//! makes. The child opens an engine on real files and publishes events one by one, printing
//! each id that returned `Ok` and each error. Then, for every `N`:
//! - once a publish has failed with a poisoned log, no later publish returns `Ok` (a failed
//!   sync is never retried and acknowledged);
//! - the error names the failed sync;
//! - the directory reopens, and every publish that returned `Ok` is delivered.
//!
//! The test passes without checking anything, and says so, when `strace` is missing or
//! cannot trace (no ptrace permission).

use afterlog::{After, Engine, Options};
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const CHILD_DIR_ENV: &str = "AFTERLOG_SYSCALL_CHILD_DIR";
const MARK: &str = "@@ ";
const PUBLISHES: u64 = 20;

fn options() -> Options {
    Options::default()
        .segment_bytes(4096)
        .compaction_interval(None)
}

/// The child process's body.
#[test]
fn syscall_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let engine = match Engine::open_with(&dir, options()) {
        Ok(engine) => engine,
        Err(e) => {
            println!("{MARK}E open: {e}");
            return;
        }
    };
    let body = vec![b'x'; 300];
    for _ in 0..PUBLISHES {
        match engine.publish("ev", &body, After::NOW) {
            Ok(id) => println!("{MARK}P {}", id.0),
            Err(e) => println!("{MARK}E publish: {e}"),
        }
    }
    match engine.close() {
        Ok(()) => println!("{MARK}closed"),
        Err(e) => println!("{MARK}E close: {e}"),
    }
}

fn strace_works() -> bool {
    Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=fdatasync",
            "true",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs the child under strace, failing its `when`-th `fdatasync` (0: none); returns its
/// protocol lines.
fn child(dir: &std::path::Path, when: u64) -> Vec<String> {
    let exe = std::env::current_exe().unwrap();
    let mut args: Vec<String> = vec!["-f".into(), "-qq".into(), "-o".into(), "/dev/null".into()];
    if when > 0 {
        args.push("-e".into());
        args.push(format!("inject=fdatasync:error=EIO:when={when}"));
    }
    args.push(exe.display().to_string());
    args.extend(
        [
            "syscall_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ]
        .map(String::from),
    );
    let out = Command::new("strace")
        .args(&args)
        .env(CHILD_DIR_ENV, dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(MARK).map(|(_, rest)| rest.to_owned()))
        .collect()
}

/// Reopens `dir` and returns the ids delivered.
fn delivered(dir: &std::path::Path) -> BTreeSet<u64> {
    let engine = Engine::open_with(dir, options())
        .unwrap_or_else(|e| panic!("the directory does not reopen: {e}"));
    let seen = Arc::new(parking_lot::Mutex::new(BTreeSet::new()));
    let s = seen.clone();
    engine.on("ev", move |event, _| {
        s.lock().insert(event.id().0);
        Ok(())
    });
    engine.start();
    assert!(engine.wait_idle(Duration::from_secs(20)));
    engine.close().unwrap();
    seen.lock().clone()
}

#[test]
fn fdatasync_eio_in_a_real_process_never_acknowledges_lost_data() {
    if !strace_works() {
        println!("strace is missing or cannot trace here: skipped");
        return;
    }
    // How many fdatasync calls a clean run makes.
    let probe = tempfile::tempdir().unwrap();
    let clean = child(probe.path(), 0);
    let ok = clean.iter().filter(|l| l.starts_with("P ")).count() as u64;
    assert_eq!(ok, PUBLISHES, "the clean child: {clean:?}");
    let syncs = PUBLISHES + 8;
    let mut failed_runs = 0;
    for when in 1..=syncs {
        let context = format!("fdatasync #{when} fails");
        let dir = tempfile::tempdir().unwrap();
        let lines = child(dir.path(), when);
        let mut poisoned = false;
        let mut acked = BTreeSet::new();
        for line in &lines {
            if let Some(id) = line.strip_prefix("P ") {
                assert!(
                    !poisoned,
                    "{context}: a publish returned Ok after the log was poisoned: {lines:?}"
                );
                acked.insert(id.parse::<u64>().unwrap());
            } else if line.starts_with("E ") {
                assert!(
                    line.contains("sync") || line.contains("poisoned"),
                    "{context}: unclear error {line:?}"
                );
                poisoned |= line.contains("poisoned");
            }
        }
        failed_runs += u64::from(lines.iter().any(|l| l.starts_with("E ")));
        let seen = delivered(dir.path());
        for id in &acked {
            assert!(
                seen.contains(id),
                "{context}: acknowledged {id} lost: {lines:?}"
            );
        }
    }
    println!("{syncs} runs with a failed fdatasync, {failed_runs} of them reported an error");
}
