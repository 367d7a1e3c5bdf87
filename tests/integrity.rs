//! Completeness and identity of a data directory (format 2): a sealed segment cut at any byte,
//! a deleted segment, a deleted manifest and a segment from another directory are each
//! reported, naming the file, by recovery and by the reader — while compaction's own removals
//! never are. And the format-1 fixture opens, replays and delivers.

mod common;

use afterlog::format::{MANIFEST_FILE, decode_header};
use afterlog::log::{Log, segment_name};
use afterlog::storage::{CrashMode, MemStorage, Storage};
use afterlog::{After, Engine, Error, EventId, ManualClock, Options, Reader};
use common::{append_owned, sample_record, small_options};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const START_MS: i64 = 1_700_000_000_000;

/// A log of small segments: 120 records of mixed kinds, so several segments are sealed.
fn written_log() -> MemStorage {
    let disk = MemStorage::new();
    let (log, _) = Log::open(Arc::new(disk.clone()), small_options(), |_, _| Ok(())).unwrap();
    for i in 0..120 {
        append_owned(&log, &sample_record(i, &[b'x'; 90])).unwrap();
    }
    log.close().unwrap();
    disk
}

/// An independent copy of a disk whose every write was synced.
fn copy(disk: &MemStorage) -> MemStorage {
    disk.would_survive(CrashMode::DropUnsynced, false)
}

fn segment_ids(disk: &MemStorage) -> Vec<u64> {
    Log::manifest(disk).unwrap().expect("format 2").segments
}

/// The file an error names, if it names one.
fn file_of(e: &Error) -> Option<&Path> {
    match e {
        Error::Corrupt { file, .. } | Error::ChecksumMismatch { file, .. } => Some(file),
        _ => None,
    }
}

fn scan(disk: &MemStorage) -> afterlog::Result<u64> {
    Log::scan(disk, |_, _| Ok(())).map(|r| r.records)
}

fn open(disk: &MemStorage) -> afterlog::Result<u64> {
    let mut n = 0;
    let (log, _) = Log::open(Arc::new(disk.clone()), small_options(), |_, _| {
        n += 1;
        Ok(())
    })?;
    log.close()?;
    Ok(n)
}

#[test]
fn a_sealed_segment_cut_at_any_byte_is_reported_naming_it() {
    let disk = written_log();
    let ids = segment_ids(&disk);
    assert!(ids.len() >= 3, "the workload seals segments: {ids:?}");
    let all = scan(&disk).unwrap();
    assert_eq!(all, 120);
    for &id in &ids[..ids.len() - 1] {
        let name = segment_name(id);
        let bytes = disk.contents(&name).unwrap();
        let path = disk.path().join(&name);
        let mut cuts = 0;
        for cut in 0..bytes.len() {
            if bytes[cut..].iter().all(|&b| b == 0) {
                // Only zeros after the seal are gone: the segment lost nothing.
                assert_eq!(scan(&disk).unwrap(), all);
                break;
            }
            let cut_disk = copy(&disk);
            cut_disk.open(&name).unwrap().set_len(cut as u64).unwrap();
            let e = scan(&cut_disk).expect_err(&format!("cut of {name} at {cut} went unnoticed"));
            assert_eq!(file_of(&e), Some(path.as_path()), "cut at {cut}: {e}");
            // Recovery (which may write) refuses it too, and changes nothing it could lose.
            if cut % 97 == 0 || cut + 40 > bytes.len() {
                let e = open(&cut_disk).expect_err("recovery accepted a cut segment");
                assert_eq!(file_of(&e), Some(path.as_path()), "{e}");
                // The reader refuses a cut header at open, and verify reports the rest.
                match Reader::open_storage(Arc::new(cut_disk.clone())) {
                    Err(e) => assert_eq!(file_of(&e), Some(path.as_path()), "{e}"),
                    Ok(reader) => {
                        let verified = reader.verify(&mut |_| {}).unwrap();
                        assert!(
                            verified.problems.iter().any(|p| p.file == path),
                            "verify missed the cut at {cut}: {:?}",
                            verified.problems
                        );
                    }
                }
            }
            cuts += 1;
        }
        assert!(cuts > 64, "{name}: only {cuts} cuts tried");
    }
}

#[test]
fn a_deleted_segment_or_manifest_is_reported_naming_it() {
    let disk = written_log();
    for id in segment_ids(&disk) {
        let gone = copy(&disk);
        gone.remove(&segment_name(id)).unwrap();
        let path = disk.path().join(segment_name(id));
        let e = scan(&gone).expect_err("a deleted segment went unnoticed");
        assert_eq!(file_of(&e), Some(path.as_path()), "{e}");
        let e = open(&gone).expect_err("recovery accepted a deleted segment");
        assert_eq!(file_of(&e), Some(path.as_path()), "{e}");
        let verified = Reader::open_storage(Arc::new(gone))
            .unwrap()
            .verify(&mut |_| {})
            .unwrap();
        assert!(
            !verified.problems.is_empty(),
            "verify said a directory without {} is sound",
            segment_name(id)
        );
    }
    let gone = copy(&disk);
    gone.remove(MANIFEST_FILE).unwrap();
    let e = open(&gone).expect_err("recovery accepted a deleted manifest");
    assert_eq!(file_of(&e), Some(disk.path().join(MANIFEST_FILE).as_path()));
    assert!(e.to_string().contains("MANIFEST is missing"), "{e}");
}

#[test]
fn a_segment_from_another_directory_is_reported() {
    let a = written_log();
    let b = written_log();
    let ids = segment_ids(&b);
    // Replace one of B's sealed segments with A's segment of the same id: a valid segment
    // whose frames all pass their checksums, but of another directory.
    let victim = segment_name(ids[1]);
    let foreign = copy(&b);
    let file = foreign.open(&victim).unwrap();
    let theirs = a.contents(&victim).unwrap();
    file.set_len(0).unwrap();
    file.write_all_at(&theirs, 0).unwrap();
    file.sync_data().unwrap();
    let e = scan(&foreign).expect_err("a foreign segment went unnoticed");
    assert!(e.to_string().contains("another directory"), "{e}");
    assert!(open(&foreign).is_err());
    let verified = Reader::open_storage(Arc::new(foreign))
        .unwrap()
        .verify(&mut |_| {})
        .unwrap();
    assert!(
        verified
            .problems
            .iter()
            .any(|p| p.problem.contains("another directory")),
        "{:?}",
        verified.problems
    );

    // And A's segments copied in under new ids, past B's last one.
    let extra = copy(&b);
    let last = *ids.last().unwrap();
    for (k, &id) in segment_ids(&a)[..2].iter().enumerate() {
        let theirs = a.contents(&segment_name(id)).unwrap();
        let mine = segment_name(last + 1 + k as u64);
        let file = extra.create(&mine).unwrap();
        file.write_all_at(&theirs, 0).unwrap();
        file.sync_data().unwrap();
    }
    extra.sync_dir().unwrap();
    assert!(open(&extra).is_err(), "recovery adopted foreign segments");
    let verified = Reader::open_storage(Arc::new(extra))
        .unwrap()
        .verify(&mut |_| {})
        .unwrap();
    assert!(
        !verified.problems.is_empty(),
        "verify said a directory with foreign segments is sound"
    );
}

/// Compaction removes and rewrites segments: none of that is ever reported.
#[test]
fn compaction_removing_segments_is_never_reported() {
    let disk = MemStorage::new();
    let clock = ManualClock::new(START_MS);
    let options = || {
        Options::default()
            .clock(clock.clone())
            .log_options(small_options())
            .compaction_interval(None)
    };
    let engine = Engine::open_storage(Arc::new(disk.clone()), options()).unwrap();
    engine.on("done", |_, _| Ok(()));
    // Pending events in the first segment, then segments of finished events only.
    let kept: Vec<EventId> = (0..4)
        .map(|_| {
            engine
                .publish("later", b"pending", After::parse("1 day").unwrap())
                .unwrap()
        })
        .collect();
    for i in 0..200 {
        engine
            .publish("done", format!("event {i}").as_bytes(), After::NOW)
            .unwrap();
    }
    engine.start();
    assert!(engine.wait_idle(Duration::from_secs(10)));
    let before = segment_ids(&disk).len();
    let stats = engine.compact_now().unwrap();
    assert!(stats.segments_removed > 0, "{stats:?}");
    engine.close().unwrap();
    assert!(segment_ids(&disk).len() < before);
    scan(&disk).unwrap();
    let verified = Reader::open_storage(Arc::new(disk.clone()))
        .unwrap()
        .verify(&mut |_| {})
        .unwrap();
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);
    let engine = Engine::open_storage(Arc::new(disk.clone()), options()).unwrap();
    assert_eq!(engine.metrics().pending, kept.len() as u64);
    engine.close().unwrap();
}

#[test]
fn new_segments_carry_the_directory_id_and_old_ones_stay_format_1() {
    let (dir, _clock, engine) = open_fixture("v1", START_MS, Some(4096));
    for i in 0..40 {
        engine
            .publish(
                "ok",
                format!("after the upgrade {i}").as_bytes(),
                After::NOW,
            )
            .unwrap();
    }
    engine.close().unwrap();
    let manifest = Reader::open(dir.path())
        .unwrap()
        .manifest()
        .unwrap()
        .unwrap();
    let mut versions = Vec::new();
    for id in &manifest.segments {
        let bytes = std::fs::read(dir.path().join(segment_name(*id))).unwrap();
        let header = decode_header(&bytes).unwrap();
        if header.format_version == 2 {
            assert_eq!(header.directory_id, manifest.directory_id);
        }
        versions.push(header.format_version);
    }
    assert_eq!(versions[..3], [1, 1, 1], "the fixture's segments are kept");
    assert!(versions[3..].iter().all(|&v| v == 2), "{versions:?}");
    assert_eq!(manifest.retention_ms, Some(14 * 86_400_000));
}

/// A directory written by format 1 goes on appending to its format-1 segment, until a
/// record of a later kind comes (here a pause, first thing after the open): that one starts
/// a format-2 segment, so no format-1 segment ever holds a kind it does not know.
#[test]
fn a_record_of_a_later_kind_starts_a_format_2_segment_in_a_format_1_directory() {
    let (dir, _clock, engine) = open_fixture("v1", START_MS, None);
    engine
        .publish("ok", b"plain, format 1", After::NOW)
        .unwrap();
    engine.pause("ok").unwrap();
    let keyed = afterlog::PublishOptions::default().key(b"k", afterlog::KeyMode::Keep);
    engine
        .publish_with("ok", b"keyed", After::NOW, keyed)
        .unwrap();
    engine.close().unwrap();
    let reader = Reader::open(dir.path()).unwrap();
    let problems = reader.verify(&mut |_| {}).unwrap().problems;
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(reader.summary().unwrap().paused, ["ok"]);
    let manifest = reader.manifest().unwrap().unwrap();
    let versions: Vec<u32> = manifest
        .segments
        .iter()
        .map(|id| {
            let bytes = std::fs::read(dir.path().join(segment_name(*id))).unwrap();
            decode_header(&bytes).unwrap().format_version
        })
        .collect();
    assert_eq!(
        versions,
        [1, 1, 1, 2],
        "the pause started a format-2 segment"
    );
}

#[test]
fn the_format_1_fixture_is_read_and_delivered() {
    let fixture = fixture("v1");
    // Read in place: the reader writes nothing.
    let reader = Reader::open(&fixture).unwrap();
    assert_eq!(reader.manifest().unwrap(), None);
    let events = reader.events().unwrap();
    let mut ids: Vec<u64> = events.iter().map(|e| e.id.0).collect();
    ids.sort_unstable();
    assert_eq!(ids, [62, 64, 65, 66, 67, 68]);
    let verified = reader.verify(&mut |_| {}).unwrap();
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);

    // Opened by an engine (in a copy), every pending event is delivered.
    let (dir, clock, engine) = open_fixture("v1", START_MS, None);
    assert_eq!(engine.metrics().pending, 6);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    for name in ["ok", "fail", "queue"] {
        let seen = seen.clone();
        engine.on(name, move |event, _| {
            seen.lock()
                .push((event.id(), event.body().to_vec(), event.attempt()));
            Ok(())
        });
    }
    engine.start();
    clock.advance(Duration::from_secs(2 * 86_400));
    assert!(engine.wait_idle(Duration::from_secs(10)));
    let mut seen = seen.lock().clone();
    seen.sort();
    let bodies: Vec<(u64, &[u8], u32)> = seen
        .iter()
        .map(|(id, body, attempt)| (id.0, body.as_slice(), *attempt))
        .collect();
    assert_eq!(
        bodies,
        [
            (62, &b"fails"[..], 2),
            (64, b"a", 1),
            (65, b"b", 1),
            (66, b"c", 1),
            (67, b"due in a day", 1),
            (68, br#"{"pending":true}"#, 1),
        ]
    );
    let stats = engine.job_stats(afterlog::JobId(1)).unwrap();
    assert_eq!((stats.success, stats.in_progress), (3, 0));
    // Ids continue above the fixture's.
    let next = engine.publish("ok", b"new", After::NOW).unwrap();
    assert!(next > EventId(68), "{next:?}");
    engine.close().unwrap();
    let reopened = Reader::open(dir.path()).unwrap();
    assert!(
        reopened.manifest().unwrap().is_some(),
        "upgraded to format 2"
    );
    let problems = reopened.verify(&mut |_| {}).unwrap().problems;
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn a_newer_format_version_is_refused_as_unsupported() {
    let disk = written_log();
    let name = segment_name(segment_ids(&disk)[0]);
    let mut bytes = disk.contents(&name).unwrap();
    bytes[8] = 3;
    let file = disk.open(&name).unwrap();
    file.write_all_at(&bytes, 0).unwrap();
    file.sync_data().unwrap();
    match scan(&disk) {
        Err(Error::UnsupportedVersion { found: 3, file }) => {
            assert_eq!(file, disk.path().join(&name))
        }
        other => panic!("{other:?}"),
    }
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// An engine on a copy of fixture `name` (the checked-in files are never written), on a
/// manual clock at `now_ms`, compaction off; with the directory it runs in.
fn open_fixture(
    name: &str,
    now_ms: i64,
    segment_bytes: Option<u64>,
) -> (tempfile::TempDir, ManualClock, Engine) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture(name), dir.path());
    let clock = ManualClock::new(now_ms);
    let mut options = Options::default()
        .clock(clock.clone())
        .compaction_interval(None);
    if let Some(n) = segment_bytes {
        options = options.segment_bytes(n);
    }
    let engine = Engine::open_with(dir.path(), options).unwrap();
    (dir, clock, engine)
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The format-2 fixture (`tests/fixtures/make_v2.rs`) holds every record kind of format 2:
/// read in place by the reader, and opened, replayed and delivered by an engine.
#[test]
fn the_format_2_fixture_is_read_and_delivered() {
    let fixture = fixture("v2");
    let reader = Reader::open(&fixture).unwrap();
    let summary = reader.summary().unwrap();
    for (kind, n) in &summary.records_by_kind {
        assert!(
            *n > 0,
            "no {kind} record in the fixture: {:?}",
            summary.records_by_kind
        );
    }
    assert_eq!(
        summary.records_by_kind.len(),
        11,
        "{:?}",
        summary.records_by_kind
    );
    assert_eq!(summary.paused, ["held", "nobody", "ok"]);
    assert_eq!(
        (summary.dead_letters, summary.schedules, summary.jobs),
        (2, 2, 3)
    );
    let dead: Vec<(u64, String)> = reader
        .dead_letters(10)
        .unwrap()
        .into_iter()
        .map(|d| (d.id.0, d.message))
        .collect();
    assert_eq!(
        dead,
        [
            (46, "always fails".to_owned()),
            (47, "no handler for \"nobody\" when it fell due".to_owned())
        ]
    );
    let schedules: Vec<String> = reader
        .schedules()
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(schedules, ["every-minute", "hourly"]);
    let verified = reader.verify(&mut |_| {}).unwrap();
    assert!(verified.problems.is_empty(), "{:?}", verified.problems);

    let (_dir, clock, engine) = open_fixture("v2", START_MS + 93_000, None);
    assert_eq!(engine.metrics().pending, 11);
    assert_eq!(engine.paused(), ["held", "nobody", "ok"]);
    // The finished job's events were compacted away: its counts come from its job-done
    // record; the cancelled job's from its events.
    let done = engine.job_stats(afterlog::JobId(1)).unwrap();
    assert_eq!((done.success, done.in_progress), (3, 0));
    assert_eq!(engine.job_stats(afterlog::JobId(2)).unwrap().cancelled, 2);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    for name in ["ok", "nobody", "held", "queue", "tick"] {
        let seen = seen.clone();
        engine.on(name, move |event, _| {
            let schedule = event.schedule().map(str::to_owned);
            seen.lock()
                .push((event.id().0, event.body().to_vec(), schedule));
            Ok(())
        });
    }
    for name in ["held", "nobody", "ok"] {
        engine.resume(name).unwrap();
    }
    engine.start();
    clock.advance(Duration::from_secs(2 * 86_400));
    assert!(engine.wait_idle(Duration::from_secs(10)));
    let mut seen = seen.lock().clone();
    seen.sort();
    let plain: Vec<(u64, &[u8])> = seen
        .iter()
        .filter(|(_, _, schedule)| schedule.is_none())
        .map(|(id, body, _)| (*id, body.as_slice()))
        .collect();
    assert_eq!(
        plain,
        [
            (53, &b"redriven"[..]),
            (54, b"new body"),
            (56, b"replaced"),
            (57, b"low"),
            (58, b"waits for resume"),
            (62, b"a"),
            (63, b"b"),
            (64, b"c"),
            (65, b"due in a day"),
        ]
    );
    // Both schedules' pending occurrences fire, and they go on.
    for (id, body) in [(50u64, &b"hourly"[..]), (52, b"{\"tick\":true}")] {
        assert!(
            seen.iter()
                .any(|(e, b, s)| *e == id && b == body && s.is_some()),
            "occurrence {id}: {seen:?}"
        );
    }
    assert_eq!(engine.schedules().len(), 2);
    assert_eq!(engine.dead_letters(10).unwrap().len(), 2);
    engine.close().unwrap();
}

/// A last segment of 2 GiB (sparse: a file grown by hand, or by a bug) is scanned in chunks:
/// recovery, `inspect` and `verify` run under a 1 GiB address-space limit, which a read of the
/// whole file into memory would exceed.
#[test]
fn a_huge_last_segment_is_read_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_with(
        dir.path(),
        Options::default()
            .segment_bytes(64 << 10)
            .compaction_interval(None),
    )
    .unwrap();
    for i in 0..100 {
        engine
            .publish(
                "later",
                format!("event {i}").as_bytes(),
                After::parse("1 day").unwrap(),
            )
            .unwrap();
    }
    engine.close().unwrap();
    let manifest = Reader::open(dir.path())
        .unwrap()
        .manifest()
        .unwrap()
        .unwrap();
    let last = dir
        .path()
        .join(segment_name(*manifest.segments.last().unwrap()));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        vec!["inspect", d],
        vec!["verify", d],
        vec!["publish", d, "ping", "{}"],
        vec!["events", d, "--json"],
    ] {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 1048576 && exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_afterlog"))
            .args(&args)
            .env("MALLOC_ARENA_MAX", "2")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "afterlog {args:?} under 1 GiB: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reader = Reader::open(dir.path()).unwrap();
    assert_eq!(reader.events().unwrap().len(), 101);
}

/// A flipped bit anywhere in the manifest is never silent: the open reads the same records
/// (the other slot, an older manifest that still describes the log), or fails naming a file.
#[test]
fn every_bit_flip_of_the_manifest_is_detected_or_harmless() {
    let disk = written_log();
    let all = scan(&disk).unwrap();
    let original = disk.contents(MANIFEST_FILE).unwrap();
    let used = original.iter().rposition(|&b| b != 0).unwrap() + 1;
    let (mut harmless, mut detected) = (0, 0);
    for bit in 0..used * 8 {
        let flipped = copy(&disk);
        let mut bytes = original.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let file = flipped.open(MANIFEST_FILE).unwrap();
        file.write_all_at(&bytes, 0).unwrap();
        file.sync_data().unwrap();
        match scan(&flipped) {
            Ok(n) => {
                assert_eq!(n, all, "flip of bit {bit} changed what was read");
                harmless += 1;
            }
            Err(e) => {
                assert!(file_of(&e).is_some(), "flip of bit {bit}: {e}");
                detected += 1;
            }
        }
    }
    assert!(
        detected > 0 && harmless > 0,
        "{detected} detected, {harmless} harmless"
    );
}
