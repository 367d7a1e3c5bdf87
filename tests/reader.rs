//! The read-only `Reader` on real directories holding what the `read_directory` fuzz target
//! found (`afterlog::testing::check_read_directory` runs the same reads on memory). Each test
//! is one finding, fixed.

use afterlog::log::LogOptions;
use afterlog::storage::{FsStorage, LockGuard, Mapped, Storage, StorageFile};
use afterlog::{After, Engine, EventId, ManualClock, Options, Reader, RecordFilter};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    let job = engine.push("ok", ["a", "b"], Duration::ZERO).unwrap();
    assert!(engine.wait_idle(IDLE));
    // The finished job's counts are kept in a job-done record for the dead retention: past
    // it, compaction leaves no record at all.
    assert_eq!(engine.job_stats(job).unwrap().success, 2);
    clock.advance(Duration::from_secs(31 * 86_400));
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

/// Real files, with two things a running engine does to a reader between its reads:
/// `race` zeroes a range of the first read that covers it (a copy of the last segment that
/// reached those bytes before the writer did, and the later bytes after), and `ghosts`
/// are names that a listing shows and that are gone when opened (a temporary file renamed
/// into a segment, a segment compaction removed); the listing after a failed open no longer
/// shows them, the one after that does again (the next file vanishes).
#[derive(Debug)]
struct Beside {
    inner: FsStorage,
    race: Option<(String, u64, u64)>,
    raced: Arc<AtomicBool>,
    ghosts: Vec<String>,
    ghosts_listed: AtomicBool,
}

impl Beside {
    fn new(dir: &Path) -> Beside {
        Beside {
            inner: FsStorage::existing(dir).unwrap(),
            race: None,
            raced: Arc::new(AtomicBool::new(false)),
            ghosts: Vec::new(),
            ghosts_listed: AtomicBool::new(true),
        }
    }
}

#[derive(Debug)]
struct RacedFile {
    inner: Box<dyn StorageFile>,
    zeros: (u64, u64),
    raced: Arc<AtomicBool>,
}

impl StorageFile for RacedFile {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let n = self.inner.read_at(buf, offset)?;
        let (from, to) = self.zeros;
        let end = offset + n as u64;
        if from < end && offset < to && !self.raced.swap(true, Ordering::SeqCst) {
            let (a, b) = (from.max(offset) - offset, to.min(end) - offset);
            buf[a as usize..b as usize].fill(0);
        }
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    unsafe fn map(&self, len: u64) -> std::io::Result<Mapped> {
        // SAFETY: the caller's promise for this file is the promise for the file it wraps.
        unsafe { self.inner.map(len) }
    }
}

impl Storage for Beside {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn list(&self) -> std::io::Result<Vec<String>> {
        let mut names = self.inner.list()?;
        if self.ghosts_listed.swap(true, Ordering::SeqCst) {
            names.extend(self.ghosts.iter().cloned());
        }
        Ok(names)
    }
    fn create(&self, name: &str) -> std::io::Result<Box<dyn StorageFile>> {
        self.inner.create(name)
    }
    fn open(&self, name: &str) -> std::io::Result<Box<dyn StorageFile>> {
        if self.ghosts.iter().any(|g| g == name) {
            self.ghosts_listed.store(false, Ordering::SeqCst);
            return Err(std::io::ErrorKind::NotFound.into());
        }
        let file = self.inner.open(name)?;
        match &self.race {
            Some((raced, from, to)) if raced == name => Ok(Box::new(RacedFile {
                inner: file,
                zeros: (*from, *to),
                raced: self.raced.clone(),
            })),
            _ => Ok(file),
        }
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.inner.remove(name)
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.inner.sync_dir()
    }
    fn try_lock(&self) -> std::io::Result<Option<LockGuard>> {
        self.inner.try_lock()
    }
}

/// Three segments of published events, each event its own sync group, several in the last;
/// the engine closed. Returns the records written.
fn three_segments(dir: &Path) -> u64 {
    let clock = ManualClock::new(1_700_000_000_000);
    let engine = open(dir, &clock);
    let mut n = 0;
    while Reader::open(dir).unwrap().segments().unwrap().len() < 3 {
        engine
            .publish("ok", "x".repeat(100), After::delay(Duration::from_secs(60)))
            .unwrap();
        n += 1;
    }
    // A few more, so the last segment holds several groups.
    for _ in 0..5 {
        engine
            .publish("ok", "x".repeat(100), After::delay(Duration::from_secs(60)))
            .unwrap();
        n += 1;
    }
    engine.close().unwrap();
    n
}

/// Every read the commands make, on `storage`: none may report damage.
fn read_everything(storage: Arc<dyn Storage>, out: &Path, records: u64) {
    let reader = Reader::open_storage(storage.clone()).unwrap();
    let summary = reader.summary().unwrap();
    assert_eq!(summary.recovery.records, records);
    let reader = Reader::open_storage(storage.clone()).unwrap();
    assert_eq!(reader.events().unwrap().len() as u64, records);
    let reader = Reader::open_storage(storage.clone()).unwrap();
    let mut seen = 0;
    reader
        .records(&RecordFilter::default(), |_, _| {
            seen += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, records);
    let reader = Reader::open_storage(storage.clone()).unwrap();
    let report = reader.verify(&mut |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.records, records);
    let reader = Reader::open_storage(storage).unwrap();
    let salvage = reader.salvage(out, &mut |_| {}).unwrap();
    assert_eq!((salvage.records, salvage.damaged_segments), (records, 0));
}

/// Seen as `afterlog inspect` exiting 3 beside a fast writer, once in 46 runs: the reader
/// copied the last segment while the writer appended, and its copy held zeros where a sync
/// group had not been copied yet followed by the next group's frame. The writer only moves
/// forward, so reading the range again shows the group: it is not damage.
#[test]
fn a_copy_of_the_last_segment_racing_its_writer_is_not_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    three_segments(&dir);
    let reader = Reader::open(&dir).unwrap();
    let last = reader.segments().unwrap().pop().unwrap();
    let mut offsets = Vec::new();
    reader
        .records(&RecordFilter::default(), |pos, _| {
            if pos.segment == last.id {
                offsets.push(pos.offset);
            }
            Ok(())
        })
        .unwrap();
    assert!(offsets.len() >= 2, "{offsets:?}");
    let records = reader.summary().unwrap().recovery.records;
    for (i, out) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let mut storage = Beside::new(&dir);
        // The first group of the segment, not copied yet; the second, copied.
        storage.race = Some((last.file.clone(), offsets[0], offsets[1]));
        let storage: Arc<dyn Storage> = Arc::new(storage);
        let reader = Reader::open_storage(storage).unwrap();
        let read = match i {
            0 => reader.summary().map(|s| s.recovery.records),
            1 => reader.events().map(|e| e.len() as u64),
            2 => reader
                .records(&RecordFilter::default(), |_, _| Ok(()))
                .map(|r| r.records),
            3 => reader.verify(&mut |_| {}).map(|v| {
                assert!(v.problems.is_empty(), "{:?}", v.problems);
                v.records
            }),
            _ => reader
                .salvage(&tmp.path().join(out), &mut |_| {})
                .map(|s| s.records),
        };
        assert_eq!(read.unwrap(), records, "read {i}");
    }
}

/// Seen as every read-only command exiting 5 in 5-20 % of runs beside compaction
/// ("….seg.tmp: no such file or directory"): the reader listed the directory, then opened
/// a temporary file or a segment that was renamed or removed meanwhile.
#[test]
fn files_that_vanish_between_listing_and_opening_are_not_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let records = three_segments(&dir);
    let mut storage = Beside::new(&dir);
    storage.ghosts = vec![
        "00000000000000000000.seg".into(),
        "00000000000000000004.seg.tmp".into(),
    ];
    read_everything(Arc::new(storage), &tmp.path().join("copy"), records);
}
