//! The `afterlog` binary, run for real on data directories written by the engine.

use afterlog::log::LogOptions;
use afterlog::{
    After, Engine, EventId, HandlerError, JobId, KeyMode, KeyOutcome, ManualClock, Options,
    PublishOptions, Reader,
};
use serde_json::Value;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const IDLE: Duration = Duration::from_secs(10);
/// Small segments, so a few records fill several.
const SEGMENT: u64 = 4096;
const SEG1: &str = "00000000000000000001.seg";

fn afterlog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_afterlog"))
        .args(args)
        .output()
        .expect("run afterlog")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = afterlog(args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "afterlog {args:?}: stdout {} stderr {}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn json(args: &[&str]) -> Value {
    let out = ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("afterlog {args:?}: {e}: {out}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .log_options(LogOptions {
            segment_bytes: SEGMENT,
            prepare_in_background: false,
            ..LogOptions::default()
        })
        .compaction_interval(None)
}

/// What `write_sample` wrote.
struct Sample {
    ok: Vec<EventId>,
    failing: EventId,
    later: EventId,
    cancelled: EventId,
    job: JobId,
    /// Records written in all.
    records: u64,
}

/// Writes a directory that spans several segments: three events acknowledged, one failing
/// (retried later), one due in a day, one cancelled, and a job of two due in an hour.
fn write_sample(dir: &Path) -> Sample {
    let clock = ManualClock::new(now_ms());
    let engine = Engine::open_with(dir, options(&clock)).unwrap();
    engine.on("ok", |_, _| Ok(()));
    engine.on("failing", |_, _| Err(HandlerError::msg("boom")));
    let big = vec![b'x'; 2000];
    let ok: Vec<EventId> = (0..3)
        .map(|i| {
            let body = if i == 1 {
                b"hello".to_vec()
            } else {
                big.clone()
            };
            engine.publish("ok", body, After::NOW).unwrap()
        })
        .collect();
    let failing = engine.publish("failing", "f", After::NOW).unwrap();
    let later = engine
        .publish(
            "later",
            [0xffu8, 0x00, 0x01],
            After::parse("1 day").unwrap(),
        )
        .unwrap();
    let cancelled = engine
        .publish("later", "gone", After::parse("1 day").unwrap())
        .unwrap();
    assert!(engine.cancel(cancelled).unwrap());
    let job = engine
        .push("batch", ["a", "b"], Duration::from_secs(3600))
        .unwrap();
    engine.start();
    assert!(engine.wait_idle(IDLE));
    engine.close().unwrap();
    // 6 publishes + 1 push, 1 cancel, 3 × (attempt, ack), attempt + retry for the failing one.
    Sample {
        ok,
        failing,
        later,
        cancelled,
        job,
        records: 7 + 1 + 6 + 2,
    }
}

fn segments(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

#[test]
fn inspect_shows_what_was_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let s = write_sample(tmp.path());
    assert!(
        segments(tmp.path()).len() >= 2,
        "the sample spans segments: {}",
        ok(&["inspect", dir])
    );

    let v = json(&["inspect", dir, "--json"]);
    assert_eq!(v["events_by_state"]["succeeded"], 3);
    assert_eq!(v["events_by_state"]["scheduled"], 4);
    assert_eq!(v["events_by_state"]["cancelled"], 1);
    assert_eq!(v["events"], 8);
    assert_eq!(v["jobs"], 1);
    assert_eq!(v["records_by_kind"]["publish"], 7);
    assert_eq!(v["records_by_kind"]["ack"], 3);
    assert_eq!(v["records_by_kind"]["retry"], 1);
    assert_eq!(v["records_by_kind"]["cancel"], 1);
    let total: u64 = v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["records"].as_u64().unwrap())
        .sum();
    assert_eq!(total, s.records);
    assert_eq!(v["recovery"]["torn_bytes"], 0);
    let next = v["next_due"].as_array().unwrap();
    assert_eq!(next.len(), 4);
    assert_eq!(
        next[0]["id"], s.failing.0,
        "the retry is due first: {next:?}"
    );

    let table = ok(&["inspect", dir]);
    assert!(table.contains("recovery    clean"), "{table}");
    assert!(table.contains("SEGMENT  FILE BYTES"), "{table}");
    let has_row = |cells: &[&str]| {
        table
            .lines()
            .any(|l| l.split_whitespace().eq(cells.iter().copied()))
    };
    assert!(has_row(&["succeeded", "3"]), "{table}");
    assert!(has_row(&["publish", "7"]), "{table}");
    assert!(table.contains("jobs        1"), "{table}");
    assert!(table.contains(&format!("{}  later", s.later)), "{table}");
}

#[test]
fn events_lists_rows_with_filters() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let s = write_sample(tmp.path());

    let all = json(&["events", dir, "--json"]);
    assert_eq!(all.as_array().unwrap().len(), 8);
    let failing = &all[s.failing.0 as usize - 1];
    assert_eq!(failing["name"], "failing");
    assert_eq!(failing["state"], "scheduled");
    assert_eq!(failing["attempts"], 1);
    assert_eq!(failing["last_reason"], "error");
    assert_eq!(failing["last_message"], "boom");
    assert!(failing["next_due_ms"].as_i64() > failing["first_due_ms"].as_i64());

    let done = json(&["events", dir, "--state", "succeeded", "--json"]);
    let ids: Vec<u64> = done
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, s.ok.iter().map(|e| e.0).collect::<Vec<_>>());

    let job = json(&["events", dir, "--job", &s.job.to_string(), "--json"]);
    assert_eq!(job.as_array().unwrap().len(), 2);
    assert!(job.as_array().unwrap().iter().all(|e| e["job"] == s.job.0));

    let soon = json(&["events", dir, "--due-before", "2 hours", "--json"]);
    let soon_ids: Vec<u64> = soon
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert!(!soon_ids.contains(&s.later.0), "due in a day: {soon_ids:?}");
    assert!(
        soon_ids.len() >= 2,
        "the job is due in an hour: {soon_ids:?}"
    );

    let limited = json(&["events", dir, "--limit", "2", "--json"]);
    assert_eq!(limited.as_array().unwrap().len(), 2);

    let table = ok(&["events", dir, "--name", "failing"]);
    assert!(table.starts_with("ID  "), "{table}");
    assert!(table.contains("error: boom"), "{table}");
    assert!(table.contains("1 event(s)"), "{table}");

    let bad = afterlog(&["events", dir, "--state", "sleeping"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("bad state"), "{}", stderr(&bad));
}

#[test]
fn event_shows_history_and_body() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let s = write_sample(tmp.path());

    let v = json(&["event", dir, &s.failing.to_string(), "--json"]);
    assert_eq!(v["body"], "f");
    let kinds: Vec<&str> = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["publish", "attempt", "retry"]);
    assert_eq!(v["records"][2]["message"], "boom");

    let bin = json(&["event", dir, &s.later.0.to_string(), "--json"]);
    assert_eq!(bin["body_hex"], "ff0001");

    let cancelled = json(&["event", dir, &s.cancelled.to_string(), "--json"]);
    assert_eq!(cancelled["event"]["state"], "cancelled");
    assert_eq!(cancelled["records"][1]["kind"], "cancel");

    let table = ok(&["event", dir, &s.ok[1].to_string()]);
    assert!(table.contains("state      succeeded"), "{table}");
    assert!(table.contains("attempt 1 acknowledged"), "{table}");
    assert!(table.contains("body (5 bytes, UTF-8):\nhello"), "{table}");

    let missing = afterlog(&["event", dir, "ev-999"]);
    assert_eq!(missing.status.code(), Some(5));
    assert!(stderr(&missing).contains("ev-999 not found"));
    assert_eq!(stderr(&missing).lines().count(), 1);
}

#[test]
fn replay_streams_json_lines_with_filters() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let s = write_sample(tmp.path());

    let lines: Vec<Value> = ok(&["replay", dir])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, s.records);
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=s.records).collect::<Vec<_>>(), "log order");
    assert_eq!(lines[0]["events"][0]["body_bytes"], 2000);

    let publishes = ok(&["replay", dir, "--kind", "publish"]);
    assert_eq!(publishes.lines().count(), 7);
    let window = ok(&["replay", dir, "--from", "3", "--until", "5"]);
    let seqs: Vec<u64> = window
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [3, 4, 5]);

    let failing = ok(&["replay", dir, "--name", "failing"]);
    let kinds: Vec<String> = failing
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds, ["publish", "attempt", "retry"]);

    let by_time = ok(&[
        "replay", dir, "--from", "1 hour", "--until", "now", "--kind", "ack",
    ]);
    assert_eq!(by_time.lines().count(), 3);
    let future = ok(&["replay", dir, "--from", "2099-01-01T00:00:00Z"]);
    assert_eq!(future, "");

    let bad = afterlog(&["replay", dir, "--from", "yesterday-ish"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).starts_with("afterlog: bad time"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn verify_reports_corruption_with_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    write_sample(tmp.path());
    let out = ok(&["verify", dir]);
    assert!(out.contains(": sound"), "{out}");
    assert!(json(&["verify", dir, "--json"])["sound"] == true);

    // Flip a byte in the payload of the second record, in the first (sealed) segment.
    let filter = afterlog::RecordFilter {
        seq_from: Some(2),
        seq_until: Some(2),
        ..Default::default()
    };
    let mut second = None;
    Reader::open(tmp.path())
        .unwrap()
        .records(&filter, |pos, _| {
            second = Some(pos);
            Ok(())
        })
        .unwrap();
    let second = second.unwrap();
    assert_eq!(second.segment, 1);
    let at = second.offset + 25;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(tmp.path().join(SEG1))
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, at).unwrap();
    file.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    drop(file);
    let offset = format!("at offset {}", second.offset);

    let o = afterlog(&["verify", dir]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    let report = stdout(&o);
    assert!(report.contains(SEG1), "{report}");
    assert!(report.contains(&offset), "{report}");
    assert!(report.contains("checksum"), "{report}");
    assert!(stderr(&o).contains("is corrupt"), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&afterlog(&["verify", dir, "--json"]))).unwrap();
    assert_eq!(v["sound"], false);
    assert_eq!(v["problems"][0]["offset"], second.offset);

    // Other commands fail with the same code and one line.
    let o = afterlog(&["inspect", dir]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains(&offset), "{}", stderr(&o));

    // Salvage writes a sound copy and leaves the original alone.
    let before = std::fs::read(tmp.path().join(SEG1)).unwrap();
    let out_dir = tmp.path().join("salvaged");
    let out_dir = out_dir.to_str().unwrap();
    let o = afterlog(&["verify", dir, "--salvage", out_dir]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stdout(&o).contains("salvaged"), "{}", stdout(&o));
    assert_eq!(std::fs::read(tmp.path().join(SEG1)).unwrap(), before);
    assert!(ok(&["verify", out_dir]).contains(": sound"));
    let events = json(&["events", out_dir, "--json"]);
    assert!(!events.as_array().unwrap().is_empty());
}

#[test]
fn verify_reports_a_torn_tail_as_sound() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    write_sample(tmp.path());
    let reader = Reader::open(tmp.path()).unwrap();
    let last = reader.segments().unwrap().pop().unwrap();
    // The remains of a write that a crash interrupted: half a frame after the data.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(tmp.path().join(&last.file))
        .unwrap();
    file.write_all_at(&[40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 9], last.data_bytes)
        .unwrap();
    drop(file);

    let o = afterlog(&["verify", dir]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let report = stdout(&o);
    assert!(report.contains("torn tail: 9 bytes"), "{report}");
    assert!(
        report.contains(&format!("offset {}", last.data_bytes)),
        "{report}"
    );
    let v = json(&["verify", dir, "--json"]);
    assert_eq!(v["torn_bytes"], 9);
    let inspect = ok(&["inspect", dir]);
    assert!(inspect.contains("torn tail of 9 bytes"), "{inspect}");
}

#[test]
fn writes_are_refused_while_an_engine_runs_and_reads_work_beside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let clock = ManualClock::new(now_ms());
    let engine = Engine::open_with(tmp.path(), options(&clock)).unwrap();
    let id = engine
        .publish("user.joined", "a@b.c", After::parse("1 hour").unwrap())
        .unwrap();

    for args in [
        vec!["publish", dir, "x", "y"],
        vec!["compact", dir],
        vec!["pause", dir, "x"],
        vec!["resume", dir, "x"],
    ] {
        let o = afterlog(&args);
        assert_eq!(o.status.code(), Some(4), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).starts_with("afterlog: refusing:"),
            "{}",
            stderr(&o)
        );
        assert_eq!(stderr(&o).lines().count(), 1);
    }

    let events = json(&["events", dir, "--json"]);
    assert_eq!(events[0]["id"], id.0);
    assert_eq!(events[0]["state"], "scheduled");
    let v = json(&["inspect", dir, "--json"]);
    assert_eq!(v["events_by_state"]["scheduled"], 1);
    assert!(ok(&["verify", dir]).contains(": sound"));

    // The engine is unaffected and keeps writing.
    engine.publish("user.joined", "c@d.e", After::NOW).unwrap();
    engine.close().unwrap();
    assert_eq!(
        json(&["events", dir, "--json"]).as_array().unwrap().len(),
        2
    );
}

#[test]
fn publish_and_compact_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let s = write_sample(tmp.path());

    let v = json(&[
        "publish",
        dir,
        "note",
        "{\"a\":1}",
        "--after",
        "10 minutes",
        "--json",
    ]);
    let id = v["id"].as_u64().unwrap();
    assert!(id > s.job.0, "ids continue");
    assert!(v["due_ms"].as_i64().unwrap() > now_ms() + 9 * 60_000);
    let e = json(&["event", dir, &id.to_string(), "--json"]);
    assert_eq!(e["body"], "{\"a\":1}");
    assert_eq!(e["event"]["state"], "scheduled");
    let line = ok(&["publish", dir, "note", "now"]);
    assert!(line.starts_with("published ev-"), "{line}");

    let bad = afterlog(&["publish", dir, "note", "x", "--after", "2 years"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("more than one year"),
        "{}",
        stderr(&bad)
    );

    let before = json(&["inspect", dir, "--json"])["events"]
        .as_u64()
        .unwrap();
    let c = json(&["compact", dir, "--json"]);
    assert!(c["stats"]["records_dropped"].as_u64().unwrap() > 0, "{c}");
    let after = json(&["inspect", dir, "--json"]);
    assert!(after["events"].as_u64().unwrap() < before, "{after}");
    assert_eq!(
        after["events_by_state"]["succeeded"], 0,
        "finished events left the disk"
    );
    assert_eq!(after["events_by_state"]["scheduled"], 6);
    assert!(ok(&["compact", dir]).contains("segments rewritten"));
}

#[test]
fn bad_directories_give_one_line_and_a_code() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let o = afterlog(&["inspect", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(5));
    assert!(stderr(&o).contains("no such directory"), "{}", stderr(&o));
    let o = afterlog(&["publish", missing.to_str().unwrap(), "a", "b"]);
    assert_eq!(o.status.code(), Some(5));
    assert!(!missing.exists(), "publish does not create a directory");

    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "hi").unwrap();
    for cmd in ["inspect", "events", "verify", "compact"] {
        let o = afterlog(&[cmd, foreign.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(6), "{cmd}");
        assert!(
            stderr(&o).contains("not an afterlog data directory"),
            "{}",
            stderr(&o)
        );
        assert_eq!(stderr(&o).lines().count(), 1);
    }

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let v = json(&["inspect", empty.to_str().unwrap(), "--json"]);
    assert_eq!(v["events"], 0);

    let o = afterlog(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let help = ok(&["--help"]);
    assert!(help.contains("Exit codes:"), "{help}");
    assert!(ok(&["replay", "--help"]).contains("Examples:"));
}

/// The command's writes prepare no spare segment ahead of need: `afterlog publish` on a
/// fresh directory creates its first segment and nothing else. Observed with `strace`, which
/// the test needs (CI installs it): without it the test fails.
#[test]
fn publish_prepares_no_spare_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let trace = tmp.path().join("trace");
    let traced = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=openat", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_afterlog"))
        .args(["publish", dir.to_str().unwrap(), "x", "y"])
        .output();
    let o = traced.expect("strace is needed for this test (apt-get install strace)");
    assert!(
        trace.exists(),
        "strace could not trace here: {}",
        stderr(&o)
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let opened = std::fs::read_to_string(&trace).unwrap();
    assert!(opened.contains("00000000000000000001.seg.tmp"), "{opened}");
    assert!(
        !opened.contains("00000000000000000002.seg.tmp"),
        "a spare segment was prepared:\n{opened}"
    );
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// Tests run as root (CI too): a tmpfs that cannot be mounted fails the test.
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            mounted.status.success(),
            "mounting a tmpfs failed (the tests need root): {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).output();
    }
}

/// Fills the file system of `dir` until a write fails for lack of space.
fn fill_up(dir: &Path) {
    use std::io::Write;
    let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![1u8; 4096];
    while filler.write_all(&block).is_ok() {}
    let _ = filler.sync_all();
}

#[test]
fn compact_frees_space_on_a_full_disk() {
    let fs = Tmpfs::mount("2m");
    let data = fs.0.path().join("data");
    let clock = ManualClock::new(now_ms());
    let engine = Engine::open_with(&data, options(&clock)).unwrap();
    for i in 0..100 {
        let id = engine
            .publish("x", format!("{i:0200}"), After::parse("1 hour").unwrap())
            .unwrap();
        engine.cancel(id).unwrap();
    }
    engine.close().unwrap();
    fill_up(fs.0.path());

    let dir = data.to_str().unwrap();
    let v = json(&["compact", dir, "--json"]);
    let (before, after) = (
        v["disk_bytes_before"].as_u64().unwrap(),
        v["disk_bytes_after"].as_u64().unwrap(),
    );
    assert!(after < before, "{v}");
    assert!(v["stats"]["segments_removed"].as_u64().unwrap() > 0, "{v}");
    assert!(ok(&["verify", dir]).contains(": sound"));
}

/// A read-only bind mount of a directory; unmounted when dropped, a failed test included.
struct ReadOnlyMount {
    at: std::path::PathBuf,
}

impl ReadOnlyMount {
    /// Mounts `src` read-only at `at` (created). Tests run as root: if `mount` is refused,
    /// that is a failure, not a reason to skip.
    fn new(src: &Path, at: &Path) -> ReadOnlyMount {
        std::fs::create_dir_all(at).unwrap();
        let run = |args: &[&str]| {
            let o = Command::new("mount")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("cannot run mount {args:?}: {e}"));
            assert!(
                o.status.success(),
                "mount {args:?} failed ({}): this test needs root and a mount it may bind \
                 read-only: {}",
                o.status,
                stderr(&o)
            );
        };
        let (src, at_str) = (src.to_str().unwrap(), at.to_str().unwrap());
        run(&["--bind", src, at_str]);
        let mount = ReadOnlyMount {
            at: at.to_path_buf(),
        };
        run(&["-o", "remount,bind,ro", at_str]);
        mount
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

/// Seen as every read-only command failing with "Read-only file system" (exit 1) on a
/// directory of a read-only mount, the very place rescue tools are needed: the reader
/// opened segments for writing and fell back to reading only on a permission error. The
/// files of the mount are read-only too.
#[test]
fn read_only_commands_work_on_a_read_only_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data");
    std::fs::create_dir(&src).unwrap();
    let s = write_sample(&src);
    let mount = ReadOnlyMount::new(&src, &tmp.path().join("ro"));
    let dir = mount.at.to_str().unwrap();
    let denied = std::fs::OpenOptions::new()
        .write(true)
        .open(mount.at.join(SEG1))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(
        denied.kind(),
        std::io::ErrorKind::ReadOnlyFilesystem,
        "{denied}"
    );

    let v = json(&["inspect", dir, "--json"]);
    assert_eq!(v["events"], 8);
    let events = json(&["events", dir, "--json"]);
    assert_eq!(events.as_array().unwrap().len(), 8);
    ok(&["event", dir, &s.failing.to_string()]);
    let lines = ok(&["replay", dir]);
    assert_eq!(lines.lines().count() as u64, s.records);
    assert!(ok(&["verify", dir]).contains("sound"));
    let copy = tmp.path().join("copy");
    let out = ok(&["verify", dir, "--salvage", copy.to_str().unwrap()]);
    assert!(
        out.contains(&format!("salvaged {} record(s)", s.records)),
        "{out}"
    );
    let salvaged = json(&["events", copy.to_str().unwrap(), "--json"]);
    assert_eq!(salvaged, events);
    drop(mount);
}

/// Seen as `afterlog events` and `afterlog event` printing names and bodies raw: an OSC 52
/// clipboard write or a cursor movement in a body, a name or a failure message reached the
/// terminal. Every control character (C0, DEL, C1) and bidi override the CLI prints from
/// data is escaped; JSON stays exact.
#[test]
fn control_characters_from_data_are_escaped_in_text_output() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let name = "evil\u{1b}]52;c;aGk=\u{7}\u{202e}\u{9b}";
    let body = "\u{1b}[2J\u{1b}]52;c;ZXZpbA==\u{7}text\u{2066}\u{7f}";
    let message = "boom\u{1b}[31m\r";
    let clock = ManualClock::new(now_ms());
    let engine = Engine::open_with(tmp.path(), options(&clock)).unwrap();
    engine.on(name, move |_, _| Err(HandlerError::msg(message)));
    let id = engine.publish(name, body, After::NOW).unwrap();
    engine.start();
    assert!(engine.wait_idle(IDLE));
    engine.close().unwrap();

    let raw = |text: &str| {
        text.chars().find(|&c| {
            (c.is_control() && c != '\n')
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)
        })
    };
    let id_text = id.to_string();
    for args in [
        vec!["events", dir],
        vec!["event", dir, &id_text],
        vec!["inspect", dir],
        vec!["verify", dir],
    ] {
        let out = ok(&args);
        assert_eq!(
            raw(&out),
            None,
            "afterlog {args:?} printed a raw control: {out:?}"
        );
    }
    let events = ok(&["events", dir]);
    assert!(
        events.contains(r"evil\x1b]52;c;aGk=\x07\u{202e}\u{9b}"),
        "{events}"
    );
    assert!(events.contains(r"error: boom\x1b[31m\x0d"), "{events}");
    let history = ok(&["event", dir, &id_text]);
    assert!(
        history.contains(r"\x1b[2J\x1b]52;c;ZXZpbA==\x07text\u{2066}\x7f"),
        "{history}"
    );

    let exact = json(&["event", dir, &id_text, "--json"]);
    assert_eq!(exact["event"]["name"], name);
    assert_eq!(exact["event"]["last_message"], message);
    assert_eq!(exact["body"], body);
    let line: Value = serde_json::from_str(ok(&["replay", dir]).lines().next().unwrap()).unwrap();
    assert_eq!(line["events"][0]["name"], name);
    assert_eq!(line["events"][0]["body"], body);

    // A file name in an error message.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes\u{1b}[8m.txt"), "").unwrap();
    let o = afterlog(&["inspect", foreign.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains(r"notes\x1b[8m.txt"), "{}", stderr(&o));
}

#[test]
fn keys_priorities_pause_and_limits_are_shown_and_pause_is_set_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let clock = ManualClock::new(now_ms());
    let engine = Engine::open_with(
        tmp.path(),
        options(&clock).concurrency("invoice.send", 2).rate_limit(
            "mail.send",
            10,
            Duration::from_secs(1),
        ),
    )
    .unwrap();
    let keyed = |key: &str, mode| {
        PublishOptions::default()
            .key(key, mode)
            .priority(3)
            .key_window(Duration::from_secs(86_400))
    };
    let invoice = |body: &str, after: &str, options| {
        engine
            .publish_with("invoice.send", body, After::parse(after).unwrap(), options)
            .unwrap()
    };
    let a = invoice("a", "1 hour", keyed("inv-1", KeyMode::Keep));
    let b = invoice("b", "1 hour", keyed("inv-2", KeyMode::Keep));
    let c = invoice(
        "c",
        "2 hours",
        PublishOptions::default().key("inv-2", KeyMode::Replace),
    );
    assert_eq!(c.outcome, KeyOutcome::Replaced(b.id));
    engine
        .publish("mail.send", "plain", After::parse("1 hour").unwrap())
        .unwrap();
    engine.pause("mail.send").unwrap();
    engine.close().unwrap();

    // `events --key`: every event published with the key, whatever its state.
    let rows = json(&["events", dir, "--key", "inv-2", "--json"]);
    let rows = rows.as_array().unwrap();
    let ids: Vec<u64> = rows.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [b.id.0, c.id.0]);
    assert_eq!(rows[0]["state"], "cancelled");
    assert_eq!(rows[0]["priority"], 3);
    assert_eq!(rows[1]["state"], "scheduled");
    assert_eq!(rows[1]["key"], "inv-2");
    assert_eq!(rows[1]["priority"], 0);
    let only = json(&[
        "events",
        dir,
        "--key",
        "inv-1",
        "--name",
        "invoice.send",
        "--json",
    ]);
    assert_eq!(only.as_array().unwrap().len(), 1);
    assert_eq!(only[0]["id"], a.id.0);
    assert_eq!(
        json(&[
            "events",
            dir,
            "--key",
            "inv-1",
            "--name",
            "mail.send",
            "--json"
        ]),
        serde_json::json!([])
    );
    let table = ok(&["events", dir, "--key", "inv-1"]);
    assert!(
        table.contains("PRIORITY") && table.contains("KEY") && table.contains("inv-1"),
        "{table}"
    );
    // Without keys or priorities in the rows, the columns stay out.
    let table = ok(&["events", dir, "--name", "mail.send"]);
    assert!(
        !table.contains("PRIORITY") && !table.contains("KEY"),
        "{table}"
    );
    // A bad key is refused.
    let o = afterlog(&["events", dir, "--key", ""]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let long = "k".repeat(256);
    assert_eq!(
        afterlog(&["events", dir, "--key", &long]).status.code(),
        Some(2)
    );

    // `inspect`: paused names, limits in force, keys held.
    let v = json(&["inspect", dir, "--json"]);
    assert_eq!(v["paused"], serde_json::json!(["mail.send"]));
    assert_eq!(
        v["keys"],
        // Event b, replaced, still takes its key by its window.
        serde_json::json!([{"name": "invoice.send", "pending": 2, "windows": 1}])
    );
    assert_eq!(v["limits"][0]["name"], "invoice.send");
    assert_eq!(v["limits"][0]["concurrency"], 2);
    assert_eq!(v["limits"][1]["name"], "mail.send");
    assert_eq!(v["limits"][1]["rate"], serde_json::json!([10, 1000]));
    let text = ok(&["inspect", dir]);
    assert!(text.contains("paused      mail.send"), "{text}");
    assert!(
        text.contains("invoice.send: concurrency 2; mail.send: rate 10 per 1 second"),
        "{text}"
    );
    assert!(
        text.contains(
            "keys held   invoice.send: 2 by pending events, 1 by the window of a finished event"
        ),
        "{text}"
    );

    // `resume` and `pause` offline: durable records, and the tool keeps the recorded limits.
    let records = |dir: &str| {
        json(&["inspect", dir, "--json"])["records_by_kind"]["pause"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(records(dir), 1);
    assert_eq!(ok(&["resume", dir, "mail.send"]), "resumed mail.send\n");
    assert_eq!(records(dir), 2);
    assert_eq!(
        ok(&["resume", dir, "mail.send"]),
        "mail.send was already not paused: nothing written\n"
    );
    assert_eq!(records(dir), 2);
    assert_eq!(
        json(&["pause", dir, "report.daily", "--json"]),
        serde_json::json!({"name": "report.daily", "paused": true, "changed": true})
    );
    let v = json(&["inspect", dir, "--json"]);
    assert_eq!(v["paused"], serde_json::json!(["report.daily"]));
    assert_eq!(v["limits"].as_array().unwrap().len(), 2, "{v}");
    // A bad name writes nothing.
    let o = afterlog(&["pause", dir, ""]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(records(dir), 3);
    // `replay --name` shows the name's pause records.
    let lines = ok(&["replay", dir, "--name", "report.daily", "--kind", "pause"]);
    assert_eq!(lines.lines().count(), 1, "{lines}");

    // `publish --key`: each mode, and bad options refused before anything is written.
    let v = json(&[
        "publish",
        dir,
        "invoice.send",
        "again",
        "--key",
        "inv-1",
        "--json",
    ]);
    assert_eq!(
        (v["outcome"].as_str(), v["id"].as_u64()),
        (Some("kept"), Some(a.id.0))
    );
    let text = ok(&[
        "publish",
        dir,
        "invoice.send",
        "new body",
        "--key",
        "inv-1",
        "--key-mode",
        "replace-body",
    ]);
    assert!(
        text.starts_with(&format!("updated the body of {}", a.id)),
        "{text}"
    );
    let v = json(&[
        "publish",
        dir,
        "invoice.send",
        "d",
        "--key",
        "inv-3",
        "--priority",
        "-5",
        "--key-window",
        "1 day",
        "--json",
    ]);
    assert_eq!(v["outcome"], "new");
    let d = v["id"].as_u64().unwrap();
    let v = json(&[
        "publish",
        dir,
        "invoice.send",
        "e",
        "--key",
        "inv-3",
        "--key-mode",
        "replace",
        "--json",
    ]);
    assert_eq!(
        (v["outcome"].as_str(), v["replaced"].as_u64()),
        (Some("replaced"), Some(d))
    );
    let rows = json(&["events", dir, "--key", "inv-3", "--json"]);
    assert_eq!(rows[0]["priority"], -5);
    assert_eq!(rows[0]["state"], "cancelled");
    let before = json(&["inspect", dir, "--json"])["records_by_kind"].clone();
    for options in [
        &["--key", "k", "--key-mode", "bogus"][..],
        &[
            "--key",
            "k",
            "--key-mode",
            "replace",
            "--key-window",
            "1 day",
        ],
        &["--key", "k", "--key-window", "0 ms"],
        &["--key", ""],
        &["--key-mode", "keep"],
        &["--priority", "300"],
    ] {
        let args = [&["publish", dir, "n", "b"][..], options].concat();
        let o = afterlog(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(json(&["inspect", dir, "--json"])["records_by_kind"], before);

    // The engine sees what the tool wrote.
    let engine = Engine::open_with(tmp.path(), options(&clock)).unwrap();
    assert_eq!(engine.paused(), ["report.daily"]);
    engine.close().unwrap();
    let history = Reader::open(tmp.path())
        .unwrap()
        .event_history(a.id)
        .unwrap()
        .unwrap();
    assert_eq!(history.body, b"new body");
    let text = ok(&["event", dir, &a.id.to_string()]);
    assert!(text.contains("key        inv-1\npriority   3\n"), "{text}");
    // Reopened without limits, the engine records none in force.
    let v = json(&["inspect", dir, "--json"]);
    assert_eq!(v["limits"], serde_json::json!([]));
    assert!(ok(&["inspect", dir]).contains("limits      none (recorded by the engine)"));
}

#[test]
fn dead_letters_are_listed_redriven_and_purged_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let clock = ManualClock::new(now_ms());
    let engine = Engine::open_with(tmp.path(), options(&clock)).unwrap();
    engine.on("fails", |_, _| Err(HandlerError::msg("<b>refused</b>")));
    let typo = engine.publish("user.joinde", "{}", After::NOW).unwrap();
    let failed = engine.publish("fails", "body-f", After::NOW).unwrap();
    let options_fail = afterlog::RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(1);
    engine.close().unwrap();
    let engine =
        Engine::open_with(tmp.path(), options(&clock).policy("fails", options_fail)).unwrap();
    engine.on("fails", |_, _| Err(HandlerError::msg("<b>refused</b>")));
    engine.start();
    assert!(engine.wait_idle(IDLE));
    engine.close().unwrap();

    let lines = ok(&["dead", dir, "--json"]);
    let rows: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{lines}");
    // Newest first: the failure died after the ignored typo.
    assert_eq!(rows[0]["id"], failed.to_string());
    assert_eq!(rows[0]["reason"], "retries-exhausted");
    assert_eq!(rows[0]["message"], "<b>refused</b>");
    assert_eq!(rows[0]["body"], "body-f");
    assert_eq!(rows[1]["id"], typo.to_string());
    assert_eq!(rows[1]["reason"], "no-handler");
    let only = ok(&["dead", dir, "--name", "fails", "--json"]);
    assert_eq!(only.lines().count(), 1);
    let table = ok(&["dead", dir]);
    assert!(
        table.contains("no-handler") && table.contains("2 dead letter(s)"),
        "{table}"
    );
    let inspect = json(&["inspect", dir, "--json"]);
    assert_eq!(inspect["dead_letters"], 2);

    // Redrive takes the lock and writes one record; a second redrive is refused.
    let redriven = json(&["redrive", dir, &typo.to_string(), "--json"]);
    assert_eq!(redriven["dead_letter"], typo.to_string());
    let again = afterlog(&["redrive", dir, &typo.to_string()]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("not a dead letter"),
        "{}",
        stderr(&again)
    );
    let engine = Engine::open_with(tmp.path(), options(&clock)).unwrap();
    engine.redrive(failed).unwrap();
    let busy = afterlog(&["purge-dead", dir]);
    assert_eq!(
        busy.status.code(),
        Some(4),
        "refused beside a running engine"
    );
    engine.close().unwrap();
    assert!(ok(&["purge-dead", dir]).contains("no dead letters"));
    assert!(ok(&["dead", dir]).contains("0 dead letter(s)"));
}

#[test]
fn schedules_are_listed_offline_and_counted_by_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let clock = ManualClock::new(now_ms());
    let engine = Engine::open_with(tmp.path(), options(&clock)).unwrap();
    let every = afterlog::Recurring::every(Duration::from_secs(60));
    engine.schedule("heartbeat", "ping", b"", every).unwrap();
    let cron = afterlog::Recurring::cron("0 9 * * MON-FRI")
        .unwrap()
        .catch_up(afterlog::CatchUp::Skip);
    engine
        .schedule("daily-report", "report.build", b"{}", cron)
        .unwrap();
    let next = engine.schedules();
    engine.close().unwrap();

    let lines = ok(&["schedules", dir, "--json"]);
    let rows: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{lines}");
    assert_eq!(rows[0]["id"], "daily-report");
    assert_eq!(rows[0]["rule"], "cron 0 9 * * MON-FRI");
    assert_eq!(rows[0]["catch_up"], "skip");
    assert_eq!(rows[0]["next_due_ms"], next[0].next_due_ms.unwrap());
    assert_eq!(rows[1]["id"], "heartbeat");
    assert_eq!(rows[1]["name"], "ping");
    assert_eq!(rows[1]["rule"], "every 60000ms");
    assert_eq!(rows[1]["catch_up"], "latest");
    let table = ok(&["schedules", dir]);
    assert!(
        table.contains("report.build") && table.contains("2 schedule(s)"),
        "{table}"
    );
    let inspect = json(&["inspect", dir, "--json"]);
    assert_eq!(inspect["schedules"], 2);
    assert_eq!(inspect["events_by_state"]["scheduled"], 2, "{inspect}");
    assert_eq!(inspect["records_by_kind"]["schedule"], 2, "{inspect}");
    // An occurrence's history shows its schedule; `replay` does too.
    let replayed = ok(&["replay", dir, "--kind", "schedule"]);
    let records: Vec<Value> = replayed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{replayed}");
    let heartbeat = &records[0];
    assert_eq!(heartbeat["schedule"]["id"], "heartbeat", "{heartbeat}");
    assert_eq!(heartbeat["schedule"]["rule"], "every 60000ms");
    assert_eq!(heartbeat["schedule"]["every_ms"], 60000);
    assert_eq!(heartbeat["schedule"]["catch_up"], "latest");
    assert_eq!(heartbeat["schedule"]["removed"], false);
    assert_eq!(records[1]["schedule"]["cron"], "0 9 * * MON-FRI");
    let id = heartbeat["events"][0]["id"].as_u64().unwrap();
    let event = ok(&["event", dir, &format!("ev-{id}")]);
    assert!(
        event.contains("occurrence of schedule \"heartbeat\" (every 60000ms, catch-up latest)"),
        "{event}"
    );
}

#[test]
fn a_finished_jobs_counts_are_shown_after_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    let clock = ManualClock::new(now_ms());
    let engine = Engine::open_with(tmp.path(), options(&clock)).unwrap();
    engine.on("ok", |_, _| Ok(()));
    let job = engine.push("ok", ["a", "b"], Duration::ZERO).unwrap();
    engine.start();
    assert!(engine.wait_idle(Duration::from_secs(20)));
    engine.compact_now().unwrap();
    assert_eq!(engine.job_stats(job).unwrap().success, 2);
    engine.close().unwrap();
    let replayed = ok(&[
        "replay",
        dir,
        "--kind",
        "job-done",
        "--job",
        &job.0.to_string(),
    ]);
    let record: Value = serde_json::from_str(replayed.trim()).unwrap();
    assert_eq!(record["kind"], "job-done");
    assert_eq!(record["job"], job.0);
    assert_eq!(
        (&record["success"], &record["failed"], &record["cancelled"]),
        (&2.into(), &0.into(), &0.into())
    );
    let inspect = json(&["inspect", dir, "--json"]);
    assert_eq!(inspect["jobs"], 1, "{inspect}");
    assert_eq!(inspect["records_by_kind"]["job-done"], 1, "{inspect}");
    assert_eq!(inspect["records_by_kind"]["publish"], 0, "{inspect}");
}
