//! System calls failing in a real process, injected by `strace`.
//!
//! The test binary re-invokes itself under `strace -f -e inject=SYSCALL:error=ERRNO:when=N`
//! as the child (the `syscall_child` test, a no-op unless `AFTERLOG_SYSCALL_CHILD_DIR` is
//! set). The child opens an engine on real files (small segments, so it rolls), publishes
//! events one by one, closes it, and does the same again (so the second open recovers what
//! the first session wrote), printing each id that returned `Ok` and each error; it stops
//! at the first session that saw an error. Every
//! system call the storage layer makes is failed in turn — `fdatasync`, `fsync`, `pwrite64`
//! (EIO and ENOSPC), `openat`, `rename`, `unlink`, `flock`, `getdents64` — at its
//! `N`-th call, for every `N` from 1 to a little past the number of such calls a clean run
//! makes in one thread. (strace counts each thread's calls on its own, so a run fails the
//! `N`-th call of every thread that makes one: the writer's `N`-th sync and the segment
//! preparer's `N`-th sync in the same run. Every call is failed in some run, not every call
//! alone.) Reads are not failed here: segments are read through memory maps, whose faults
//! the in-memory storage's short reads and the fuzzed decoders cover. Then, for every run:
//! - nothing panics, in any thread;
//! - once a publish has failed, no later publish returns `Ok` (a failed write or sync
//!   poisons the log and is never retried and acknowledged);
//! - an error after a failed sync names the sync;
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
    // Two sessions, so that the second one's open recovers what the first one wrote.
    for session in 0..2 {
        let engine = match Engine::open_with(&dir, options()) {
            Ok(engine) => engine,
            Err(e) => {
                println!("{MARK}E open: {e}");
                return;
            }
        };
        let body = vec![b'x'; 300];
        let mut failed = false;
        for _ in 0..PUBLISHES / 2 {
            match engine.publish("ev", &body, After::NOW) {
                Ok(id) => println!("{MARK}P {}", id.0),
                Err(e) => {
                    println!("{MARK}E publish: {e}");
                    failed = true;
                }
            }
        }
        match engine.close() {
            Ok(()) => println!("{MARK}closed {session}"),
            Err(e) => {
                println!("{MARK}E close: {e}");
                failed = true;
            }
        }
        if failed {
            return;
        }
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

/// A system call to fail, and how.
#[derive(Clone, Copy)]
struct Fault {
    syscall: &'static str,
    errno: &'static str,
}

const fn fault(syscall: &'static str, errno: &'static str) -> Fault {
    Fault { syscall, errno }
}

const FAULTS: [Fault; 10] = [
    fault("fdatasync", "EIO"),
    fault("fsync", "EIO"),
    fault("pwrite64", "EIO"),
    fault("pwrite64", "ENOSPC"),
    fault("openat", "EIO"),
    fault("openat", "ENOSPC"),
    fault("rename", "EIO"),
    fault("unlink", "EIO"),
    fault("flock", "EIO"),
    fault("getdents64", "EIO"),
];

/// What a child printed: its protocol lines and its standard error.
struct ChildRun {
    lines: Vec<String>,
    stderr: String,
}

/// The most times one thread of a clean child calls `syscall` (strace counts the calls
/// of each thread on its own, so `when=N` fails the `N`-th call of every thread).
fn calls_per_thread(syscall: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let status = strace_child(
        &[
            "-e".into(),
            format!("trace={syscall}"),
            "-o".into(),
            trace.display().to_string(),
        ],
        &dir.path().join("data"),
    )
    .stdout(std::process::Stdio::null())
    .status()
    .unwrap();
    assert!(status.success());
    let mut per_thread: std::collections::HashMap<String, u64> = Default::default();
    for line in std::fs::read_to_string(&trace).unwrap().lines() {
        // `PID syscall(...` or `PID syscall(... <unfinished ...>`; not the `resumed` half.
        if let Some((pid, call)) = line.split_once(' ')
            && call.starts_with(&format!("{syscall}("))
        {
            *per_thread.entry(pid.to_owned()).or_default() += 1;
        }
    }
    per_thread.into_values().max().unwrap_or(0)
}

/// The command that runs the child (the `syscall_child` test of this binary) on `dir` under
/// `strace -f -qq` with `strace_args`.
fn strace_child(strace_args: &[String], dir: &std::path::Path) -> Command {
    let mut command = Command::new("strace");
    command
        .args(["-f", "-qq"])
        .args(strace_args)
        .arg(std::env::current_exe().unwrap())
        .args([
            "syscall_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR_ENV, dir)
        // Set by cargo; without it the loader makes no failed attempts to count or fail.
        .env_remove("LD_LIBRARY_PATH");
    command
}

/// Runs the child under strace, failing the `when`-th call (0: none) as `fault` says.
fn child(dir: &std::path::Path, fault: Fault, when: u64) -> ChildRun {
    let mut args: Vec<String> = vec!["-o".into(), "/dev/null".into()];
    if when > 0 {
        args.push("-e".into());
        args.push(format!(
            "inject={}:error={}:when={when}",
            fault.syscall, fault.errno
        ));
    }
    let out = strace_child(&args, dir).output().unwrap();
    ChildRun {
        lines: String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(MARK).map(|(_, rest)| rest.to_owned()))
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
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
fn failed_system_calls_in_a_real_process_never_acknowledge_lost_data() {
    assert!(
        strace_works(),
        "strace is missing or cannot trace here: this test needs it (apt-get install strace)"
    );
    let probe = tempfile::tempdir().unwrap();
    let clean = child(probe.path(), FAULTS[0], 0);
    let ok = clean.lines.iter().filter(|l| l.starts_with("P ")).count() as u64;
    assert_eq!(ok, PUBLISHES, "the clean child: {:?}", clean.lines);
    let mut total = 0;
    for fault in FAULTS {
        let count = calls_per_thread(fault.syscall);
        let runs = count + 2;
        let mut failed_runs = 0;
        for when in 1..=runs {
            let context = format!("{} #{when} fails with {}", fault.syscall, fault.errno);
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            let run = child(&data, fault, when);
            assert!(
                !run.stderr.contains("panicked"),
                "{context}: a panic: {}",
                run.stderr
            );
            let mut failed = false;
            let mut acked = BTreeSet::new();
            for line in &run.lines {
                if let Some(id) = line.strip_prefix("P ") {
                    assert!(
                        !failed,
                        "{context}: a publish returned Ok after one failed: {:?}",
                        run.lines
                    );
                    acked.insert(id.parse::<u64>().unwrap());
                } else if let Some(error) = line.strip_prefix("E ") {
                    if fault.syscall == "fdatasync" {
                        assert!(
                            error.contains("sync") || error.contains("poisoned"),
                            "{context}: unclear error {line:?}"
                        );
                    }
                    failed |= error.starts_with("publish");
                }
            }
            failed_runs += u64::from(run.lines.iter().any(|l| l.starts_with("E ")));
            let seen = delivered(&data);
            for id in &acked {
                assert!(
                    seen.contains(id),
                    "{context}: acknowledged {id} lost: {:?}",
                    run.lines
                );
            }
        }
        total += runs;
        println!(
            "syscall fault {} {}: at most {count} calls per thread in a clean run, {runs} runs, {failed_runs} reported an error",
            fault.syscall, fault.errno
        );
    }
    println!("{total} runs with a failed system call, every acknowledged publish delivered");
}
