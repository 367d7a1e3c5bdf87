//! The segment log on real files: appends, recovery, torn tails, corruption, the lock.

mod common;

use afterlog::Error;
use afterlog::EventId;
use afterlog::format::{Publish, PublishEntry, Record};
use afterlog::log::{Log, LogOptions, Position, segment_name};
use afterlog::storage::{FsStorage, Storage};
use common::{Owned, append_owned, sample_record, small_options};
use std::path::Path;
use std::sync::Arc;

fn storage(dir: &Path) -> Arc<dyn Storage> {
    Arc::new(FsStorage::new(dir).unwrap())
}

type Opened = (Log, Vec<(Position, Owned)>, afterlog::log::Recovery);

fn open(dir: &Path) -> afterlog::Result<Opened> {
    let mut seen = Vec::new();
    let (log, recovery) = Log::open(storage(dir), small_options(), |p, r| {
        seen.push((p, Owned::of(r)));
        Ok(())
    })?;
    Ok((log, seen, recovery))
}

fn scan(dir: &Path) -> afterlog::Result<Vec<Owned>> {
    let mut seen = Vec::new();
    Log::scan(&*storage(dir), |_, r| {
        seen.push(Owned::of(r));
        Ok(())
    })?;
    Ok(seen)
}

fn write_records(dir: &Path, n: u64, body: &[u8]) -> Vec<(Position, Owned)> {
    let (log, seen, _) = open(dir).unwrap();
    assert!(seen.is_empty());
    let mut written = Vec::new();
    for i in 0..n {
        let owned = sample_record(i, body);
        let pos = append_owned(&log, &owned).unwrap();
        written.push((pos, owned));
    }
    log.close().unwrap();
    written
}

#[test]
fn appended_records_come_back_in_order_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_records(dir.path(), 300, &[7u8; 100]);
    let (log, seen, recovery) = open(dir.path()).unwrap();
    assert_eq!(seen, written);
    assert_eq!(recovery.torn_bytes, 0);
    assert_eq!(recovery.last_seq, 300);
    assert!(
        recovery.segments > 5,
        "small segments should have rolled, got {}",
        recovery.segments
    );
    // Every position reads back the same record, from sealed (mapped) and active segments.
    for (pos, owned) in &written {
        let read = log.read(pos.segment, pos.offset).unwrap();
        assert_eq!(read.seq(), pos.seq);
        assert_eq!(&Owned::of(&read.record().unwrap()), owned);
    }
    // Sequence numbers continue.
    let pos = append_owned(&log, &sample_record(300, b"x")).unwrap();
    assert_eq!(pos.seq, 301);
}

#[test]
fn a_second_open_of_the_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open(dir.path()).unwrap();
    match open(dir.path()) {
        Err(Error::Locked { dir: d }) => assert_eq!(d, dir.path()),
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
    drop(log);
    open(dir.path()).unwrap();
}

#[test]
fn oversized_and_badly_named_records_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open(dir.path()).unwrap();
    let body = vec![0u8; 256 * 1024];
    let entries = [PublishEntry {
        id: EventId(1),
        due_ms: 0,
        name: "n",
        body: &body,
    }];
    let err = log
        .append(&Record::Publish(Publish::new(None, 0, &entries)))
        .unwrap_err();
    assert!(matches!(err, Error::LimitExceeded { .. }), "{err}");
    let long_name = "n".repeat(256);
    for name in ["", long_name.as_str()] {
        let entries = [PublishEntry {
            id: EventId(1),
            due_ms: 0,
            name,
            body: b"",
        }];
        assert!(
            log.append(&Record::Publish(Publish::new(None, 0, &entries)))
                .is_err()
        );
    }
    // A batch with one bad record writes none of them.
    let good = [PublishEntry {
        id: EventId(2),
        due_ms: 0,
        name: "ok",
        body: b"",
    }];
    let bad = [PublishEntry {
        id: EventId(3),
        due_ms: 0,
        name: "",
        body: b"",
    }];
    let batch = [
        Record::Publish(Publish::new(None, 0, &good)),
        Record::Publish(Publish::new(None, 0, &bad)),
    ];
    assert!(log.append_all(&batch).is_err());
    log.close().unwrap();
    assert!(scan(dir.path()).unwrap().is_empty());
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_records(dir.path(), 9, &[1u8; 100_000]);
    let (_log, seen, _) = open(dir.path()).unwrap();
    assert_eq!(seen, written);
}

#[test]
fn concurrent_appenders_all_land_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _) = open(dir.path()).unwrap();
    let log = Arc::new(log);
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..200u64)
                    .map(|i| {
                        let owned = sample_record(t * 1000 + i, &t.to_le_bytes());
                        (append_owned(&log, &owned).unwrap(), owned)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut written: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let counters = log.counters();
    assert!(
        counters.syncs < 1600,
        "group commit shared no sync: {counters:?}"
    );
    Arc::into_inner(log).unwrap().close().unwrap();
    written.sort_by_key(|(p, _)| p.seq);
    let (_log, seen, _) = open(dir.path()).unwrap();
    assert_eq!(seen, written);
}

/// The last record's frame offset and length in its segment file.
fn last_frame(written: &[(Position, Owned)]) -> (std::path::PathBuf, u64, usize) {
    let (pos, owned) = written.last().unwrap();
    (
        segment_name(pos.segment).into(),
        pos.offset,
        20 + owned.payload.len(),
    )
}

#[test]
fn a_tail_torn_at_every_byte_of_the_last_record_is_cut() {
    let src = tempfile::tempdir().unwrap();
    let written = write_records(src.path(), 41, &[9u8; 60]);
    assert_eq!(
        written.last().unwrap().1.kind,
        1,
        "the last record must end in non-zero bytes"
    );
    let (name, offset, len) = last_frame(&written);
    let original = std::fs::read(src.path().join(&name)).unwrap();
    for keep in 0..len {
        for garbage in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            for entry in std::fs::read_dir(src.path()).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
            }
            // The write reached the disk only for its first `keep` bytes; the rest is zeros
            // (a pre-sized file) or garbage.
            let mut bytes = original.clone();
            for (i, b) in bytes[offset as usize + keep..offset as usize + len]
                .iter_mut()
                .enumerate()
            {
                *b = if garbage {
                    (i as u8).wrapping_mul(31).wrapping_add(1)
                } else {
                    0
                };
            }
            std::fs::write(dir.path().join(&name), &bytes).unwrap();
            let (log, seen, recovery) = open(dir.path()).unwrap();
            assert_eq!(
                seen,
                written[..written.len() - 1],
                "keep={keep} garbage={garbage}"
            );
            let nonzero = bytes[offset as usize..]
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| i + 1);
            assert_eq!(
                recovery.torn_bytes, nonzero as u64,
                "keep={keep} garbage={garbage}"
            );
            // Appending after the cut works and survives another reopen.
            let again = sample_record(1000, b"after");
            let pos = append_owned(&log, &again).unwrap();
            assert_eq!(pos.offset, offset);
            drop(log);
            let (_log, seen, recovery) = open(dir.path()).unwrap();
            assert_eq!(seen.len(), written.len());
            assert_eq!(seen.last().unwrap().1, again);
            assert_eq!(recovery.torn_bytes, 0);
        }
    }
}

#[test]
fn damage_before_a_later_sync_group_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_records(dir.path(), 40, &[9u8; 60]);
    // Records are appended one at a time, so each is its own sync group. Damage the
    // second-to-last record of the active segment: the last one, from a later group, proves
    // the damaged one had been synced.
    let (pos, _) = written[written.len() - 2];
    assert_eq!(pos.segment, written.last().unwrap().0.segment);
    let path = dir.path().join(segment_name(pos.segment));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[pos.offset as usize + 25] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    match open(dir.path()) {
        Err(Error::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert_eq!(file, path);
            assert_eq!(offset, pos.offset);
            assert!(reason.contains("later sync group"), "{reason}");
        }
        other => panic!(
            "expected corruption, got {:?}",
            other.map(|(_, s, r)| (s.len(), r))
        ),
    }
}

#[test]
fn every_bit_flip_of_a_sealed_segment_is_detected_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_records(dir.path(), 120, &[3u8; 30]);
    let first = written[0].0.segment;
    assert!(
        written.last().unwrap().0.segment > first,
        "segment {first} must be sealed"
    );
    let expected: Vec<Owned> = written.iter().map(|(_, o)| o.clone()).collect();
    let path = dir.path().join(segment_name(first));
    let original = std::fs::read(&path).unwrap();
    let (mut detected, mut harmless) = (0, 0);
    for bit in 0..original.len() * 8 {
        let mut bytes = original.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&path, &bytes).unwrap();
        match scan(dir.path()) {
            Ok(seen) => {
                assert_eq!(seen, expected, "flip of bit {bit} changed what was read");
                harmless += 1;
            }
            // A flip of the version field reads as a version this build does not know.
            Err(
                Error::Corrupt { file, .. }
                | Error::ChecksumMismatch { file, .. }
                | Error::UnsupportedVersion { file, .. },
            ) => {
                assert_eq!(file, path);
                detected += 1;
            }
            Err(other) => panic!("flip of bit {bit}: unexpected error {other}"),
        }
    }
    std::fs::write(&path, &original).unwrap();
    assert_eq!(scan(dir.path()).unwrap(), expected);
    // Flips in the zero padding are detected as bytes after the end of data, so every flip
    // is detected: none may pass silently.
    assert_eq!(harmless, 0, "{detected} detected");
}

#[test]
fn leftover_temporary_files_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 3, b"x");
    std::fs::write(dir.path().join("00000000000000000099.seg.tmp"), b"partial").unwrap();
    let (_log, seen, recovery) = open(dir.path()).unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        recovery.removed_temp_files,
        vec!["00000000000000000099.seg.tmp".to_string()]
    );
    assert!(!dir.path().join("00000000000000000099.seg.tmp").exists());
}

#[test]
fn corruption_is_reported_with_file_and_offset_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), 50, b"abc");
    let path = dir.path().join(segment_name(1));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3] = b'X'; // the magic
    std::fs::write(&path, &bytes).unwrap();
    let err = open(dir.path()).map(|_| ()).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("offset 0"), "{err}");
}

#[test]
fn periodic_durability_returns_early_and_syncs_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        durability: afterlog::log::Durability::Periodic(std::time::Duration::from_secs(3600)),
        ..small_options()
    };
    let (log, _) = Log::open(storage(dir.path()), options, |_, _| Ok(())).unwrap();
    for i in 0..20 {
        append_owned(&log, &sample_record(i, b"p")).unwrap();
    }
    let syncs_before_close = log.counters().syncs;
    log.close().unwrap();
    assert_eq!(scan(dir.path()).unwrap().len(), 20);
    // Rolls sync; otherwise nothing was synced before close.
    assert!(syncs_before_close <= 3, "{syncs_before_close}");
}

#[test]
fn another_process_cannot_take_the_lock_while_the_log_is_open() {
    if std::process::Command::new("flock")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no flock(1) on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join(afterlog::storage::LOCK_FILE);
    let try_lock_elsewhere = || {
        std::process::Command::new("flock")
            .args(["--nonblock", "--exclusive"])
            .arg(&lock)
            .arg("true")
            .status()
            .unwrap()
            .success()
    };
    let (log, _, _) = open(dir.path()).unwrap();
    assert!(
        !try_lock_elsewhere(),
        "another process took the lock of an open log"
    );
    drop(log);
    assert!(try_lock_elsewhere(), "the lock was not released on close");
}

/// A directory starts with a small segment, and each new one doubles the size of the one
/// before, up to `segment_bytes`: a small log takes little disk.
#[test]
fn segments_start_small_and_double_up_to_the_segment_size() {
    let disk = afterlog::storage::MemStorage::new();
    let options = LogOptions {
        segment_bytes: 64 << 10,
        first_segment_bytes: 4096,
        prepare_in_background: false,
        ..LogOptions::default()
    };
    let (log, _) = Log::open(Arc::new(disk.clone()), options, |_, _| Ok(())).unwrap();
    for i in 0..2500 {
        append_owned(&log, &sample_record(i, &[7u8; 100])).unwrap();
    }
    log.close().unwrap();
    let sizes: Vec<u64> = log
        .segment_ids()
        .iter()
        .map(|&id| disk.open(&segment_name(id)).unwrap().len().unwrap())
        .collect();
    assert!(sizes.len() >= 6, "{sizes:?}");
    assert_eq!(
        sizes[..6],
        [4096, 8192, 16384, 32768, 65536, 65536],
        "{sizes:?}"
    );
    assert!(sizes.iter().all(|&s| s <= 64 << 10), "{sizes:?}");
}
