//! The read-only `Reader` on real directories holding what the `read_directory` fuzz target
//! found (`afterlog::testing::check_read_directory` runs the same reads on memory). Each test
//! is one finding, fixed.

use afterlog::log::LogOptions;
use afterlog::{After, Engine, EventId, ManualClock, Options, Reader};
use std::path::Path;
use std::time::Duration;

const IDLE: Duration = Duration::from_secs(60);

fn open(dir: &Path, clock: &ManualClock) -> Engine {
    let options = Options::default()
        .clock(clock.clone())
        .log_options(LogOptions {
            segment_bytes: 4096,
            prepare_in_background: false,
            ..LogOptions::default()
        })
        .compaction_interval(None);
    let engine = Engine::open_with(dir, options).unwrap();
    engine.on("ok", |_, _| Ok(()));
    engine.start();
    engine
}

/// Found by the fuzzer: a salvage that copied no record left the id floors behind. The
/// copy's only segment was created before the floors were known, and sealing it (so that
/// the next segment's header carries them) did nothing for a segment without records. An
/// engine on the copy then handed out ids the original had already given out. Here the
/// original is a log whose records compaction removed: only its header's floors remember
/// the ids.
#[test]
fn a_salvage_without_records_keeps_the_id_floors() {
    let tmp = tempfile::tempdir().unwrap();
    let (original, copy) = (tmp.path().join("original"), tmp.path().join("copy"));
    let clock = ManualClock::new(1_700_000_000_000);
    let engine = open(&original, &clock);
    for _ in 0..3 {
        engine.publish("ok", "x", After::NOW).unwrap();
    }
    engine.push("ok", ["a", "b"], Duration::ZERO).unwrap();
    assert!(engine.wait_idle(IDLE));
    engine.compact_now().unwrap();
    engine.close().unwrap();

    let reader = Reader::open(&original).unwrap();
    assert_eq!(
        reader.summary().unwrap().recovery.records,
        0,
        "all compacted"
    );
    let salvage = reader.salvage(&copy, &mut |_| {}).unwrap();
    assert_eq!(salvage.records, 0);

    let engine = open(&copy, &clock);
    let id = engine.publish("ok", "y", After::NOW).unwrap();
    let job = engine.push("ok", ["c"], Duration::ZERO).unwrap();
    assert!(id > EventId(5), "the copy handed out {id} again");
    assert!(job.0 > 1, "the copy handed out {job} again");
    engine.close().unwrap();
}

/// Found with the one above: the floors of a segment whose records are damaged were left
/// out of the salvaged copy (only segments that scanned to the end gave theirs), though the
/// header that holds them is sound.
#[test]
fn a_salvage_keeps_the_id_floors_of_a_damaged_segment() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let (original, copy) = (tmp.path().join("original"), tmp.path().join("copy"));
    let clock = ManualClock::new(1_700_000_000_000);
    let engine = open(&original, &clock);
    for _ in 0..3 {
        engine.publish("ok", "x", After::NOW).unwrap();
    }
    assert!(engine.wait_idle(IDLE));
    // Compaction leaves one segment, whose header says ids up to 3 were given out.
    engine.compact_now().unwrap();
    for _ in 0..2 {
        engine
            .publish("ok", "y", After::delay(Duration::from_secs(60)))
            .unwrap();
    }
    engine.close().unwrap();
    let reader = Reader::open(&original).unwrap();
    let segments = reader.segments().unwrap();
    assert_eq!(segments.len(), 1);
    // Damage the first record; the second (a later sync) shows it is not a torn write.
    let path = original.join(&segments[0].file);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"\xAA", 64 + 30).unwrap();

    let reader = Reader::open(&original).unwrap();
    assert!(!reader.verify(&mut |_| {}).unwrap().problems.is_empty());
    let salvage = reader.salvage(&copy, &mut |_| {}).unwrap();
    assert_eq!((salvage.records, salvage.damaged_segments), (0, 1));

    let engine = open(&copy, &clock);
    let id = engine.publish("ok", "z", After::NOW).unwrap();
    assert!(id > EventId(3), "the copy handed out {id} again");
    engine.close().unwrap();
}

/// Found while fixing the one above: the recovery scan (the reader's, and an engine's on
/// open) overflowed on a frame following one numbered u64::MAX, and an engine that opened a
/// log ending there overflowed numbering the next record. Neither can happen to a log
/// afterlog wrote (2^63 records), but a damaged or foreign one may say anything.
#[test]
fn sequence_numbers_at_the_end_of_their_range_are_refused_not_overflowed() {
    use afterlog::format::{Attempt, Record, SegmentHeader, encode_frame, encode_header};
    let segment = |seqs: &[u64]| {
        let header = SegmentHeader {
            format_version: 1,
            segment_id: 1,
            first_seq: seqs[0],
            created_ms: 0,
            flags: 0,
            event_id_floor: 0,
            job_id_floor: 0,
            directory_id: 0,
        };
        let mut bytes = encode_header(&header);
        for &seq in seqs {
            let mut payload = Vec::new();
            Record::Attempt(Attempt {
                event: EventId(1),
                attempt: 1,
                started_ms: 0,
            })
            .encode(&mut payload);
            let kind = afterlog::format::RecordKind::Attempt;
            encode_frame(&mut bytes, 1, seq, kind, 0, &payload);
        }
        bytes
    };
    let tmp = tempfile::tempdir().unwrap();
    let seg1 = "00000000000000000001.seg";

    let past_the_end = tmp.path().join("past_the_end");
    std::fs::create_dir(&past_the_end).unwrap();
    std::fs::write(past_the_end.join(seg1), segment(&[u64::MAX, 0])).unwrap();
    let reader = Reader::open(&past_the_end).unwrap();
    let problems = reader.verify(&mut |_| {}).unwrap().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .problem
            .contains("sequence number 0 follows 18446744073709551615"),
        "{problems:?}"
    );

    let at_the_end = tmp.path().join("at_the_end");
    std::fs::create_dir(&at_the_end).unwrap();
    std::fs::write(at_the_end.join(seg1), segment(&[u64::MAX])).unwrap();
    assert!(Reader::open(&at_the_end).unwrap().summary().is_ok());
    let clock = ManualClock::new(1_700_000_000_000);
    let options = Options::default().clock(clock);
    let refused = Engine::open_with(&at_the_end, options)
        .map(|_| ())
        .unwrap_err();
    assert!(refused.to_string().contains("sequence number"), "{refused}");
}
