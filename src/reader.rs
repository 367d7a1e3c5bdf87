//! The read-only reader: open a data directory without its lock, even while an engine runs,
//! and read what it holds — records in log order with filters, events and their states,
//! one event's history, segments and the recovery outcome — without writing a byte.
//!
//! Every read is a fresh scan of the files ([`Log::scan`]): sealed segments plus the valid
//! prefix of the active one. A torn or in-progress tail of the last segment is reported in
//! the [`Recovery`] value, never cut.
//!
//! Beside a running engine, each read is bounded to what was there when it began: it lists
//! the segments once and opens each once (a file renamed or removed between the listing and
//! the open, a temporary file or a segment compaction removed, is not damage), and every
//! scan of one read ends where its first scan of the last segment ended.
//!
//! Memory: [`Reader::records`] streams in constant memory (a name or job filter remembers
//! the matching ids as runs of consecutive ids); [`Reader::summary`] holds one row per event.
//!
//! Architecture Invariant: the reader never writes, never removes, never takes the lock.

use crate::error::{Error, Result};
use crate::format::{
    Cancel, CancelTarget, DropReason, FRAME_HEADER_LEN, MANIFEST_FILE, MANIFEST_TEMP_FILE,
    MAX_FRAME_LEN, MAX_SEGMENT_HEADER_LEN, Manifest, Record, RecordKind, SegmentHeader,
    decode_frame,
};
use crate::ids::{EventId, JobId};
use crate::index::{EventState, Index};
use crate::log::{
    Durability, Log, LogOptions, Position, Recovery, is_temp_name, parse_segment_name, read_header,
    segment_name,
};
use crate::storage::{
    FsStorage, LOCK_FILE, LockGuard, Mapped, Storage, StorageFile, read_exact_at,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A data directory opened for reading only.
#[derive(Debug)]
pub struct Reader {
    storage: Arc<dyn Storage>,
    /// Segment ids and file sizes, in id order, as listed at open.
    files: Vec<(u64, u64)>,
    /// Bytes of every file in the directory.
    disk_bytes: u64,
}

/// Which records [`Reader::records`] hands over. Every condition set must hold.
#[derive(Clone, Debug, Default)]
pub struct RecordFilter {
    /// Only these kinds (empty: every kind).
    pub kinds: Vec<RecordKind>,
    /// Only records about events with this name (a publish matches if any entry does; a job
    /// cancel matches if the job published an event with the name; a pause or resume of the
    /// name matches).
    pub name: Option<String>,
    /// Only records about events of this job, and the job's cancel.
    pub job: Option<JobId>,
    /// Only records about this event (its publish, a cancel of its job included).
    pub event: Option<EventId>,
    /// Sequence numbers from (inclusive).
    pub seq_from: Option<u64>,
    /// Sequence numbers until (inclusive).
    pub seq_until: Option<u64>,
    /// Record times from, Unix epoch ms (inclusive); see [`record_time_ms`].
    pub time_from_ms: Option<i64>,
    /// Record times until, Unix epoch ms (inclusive).
    pub time_until_ms: Option<i64>,
}

/// Which events [`Reader::events_where`] returns: those matching every field that is set.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Only events in this state.
    pub state: Option<EventState>,
    /// Only events with this name.
    pub name: Option<String>,
    /// Only events of this job.
    pub job: Option<JobId>,
    /// Only events next due (or, once finished, last due) before this time, Unix epoch ms.
    pub due_before_ms: Option<i64>,
    /// Only events published with this key (of any name, unless `name` is set too),
    /// whatever their state.
    pub key: Option<Vec<u8>>,
    /// At most this many events, the lowest ids first.
    pub limit: Option<usize>,
}

impl EventFilter {
    fn matches(&self, e: &crate::index::EventInfo<'_>) -> bool {
        self.state.is_none_or(|s| e.state == s)
            && self.name.as_deref().is_none_or(|n| e.name == n)
            && self.job.is_none_or(|j| e.job == Some(j))
            && self.due_before_ms.is_none_or(|t| e.due_ms < t)
            && (self.key.is_none() || e.keyed)
    }
}

/// One event as the log describes it. Serialized with its ids as numbers and its state as
/// the state's lower-case [name](EventState::name).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EventRow {
    /// The event id.
    pub id: EventId,
    /// Its name.
    pub name: String,
    /// Its state.
    #[serde(serialize_with = "state_name")]
    pub state: EventState,
    /// Attempts started.
    pub attempts: u32,
    /// Its job, if it was pushed as part of one.
    pub job: Option<JobId>,
    /// When it was published, Unix epoch ms.
    pub published_ms: i64,
    /// Its first due time, Unix epoch ms.
    pub first_due_ms: i64,
    /// When it is next due while scheduled; otherwise when it was last due.
    pub next_due_ms: i64,
    /// Body length in bytes.
    pub body_bytes: u64,
    /// The reason of its last failed attempt (`error` when the handler returned an error,
    /// else a retry reason such as `FUNCTION_TIME_OUT`), if any attempt failed.
    pub last_reason: Option<String>,
    /// The message of its last failure or drop, if any.
    pub last_message: Option<String>,
    /// Its priority (0 unless published with one).
    pub priority: i8,
    /// Its key, if it was published with one: the key's text, any bytes that are not UTF-8
    /// shown as U+FFFD.
    pub key: Option<String>,
}

fn state_name<S: serde::Serializer>(state: &EventState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state.name())
}

/// One segment file.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SegmentInfo {
    /// The segment id.
    pub id: u64,
    /// Its file name.
    pub file: String,
    /// The file's size in bytes (segments are pre-allocated).
    pub file_bytes: u64,
    /// Bytes of header and valid records.
    pub data_bytes: u64,
    /// Sequence numbers of its first and last record, if it holds any.
    pub first_seq: Option<u64>,
    /// See `first_seq`.
    pub last_seq: Option<u64>,
    /// Records in it.
    pub records: u64,
    /// Bytes of records about events that are still pending (scheduled or running).
    pub live_bytes: u64,
    /// `live_bytes` over the record bytes (1.0 for a segment without records).
    pub live_share: f64,
    /// Whether compaction wrote it.
    pub compacted: bool,
}

/// Everything one replay of the log found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// The segments, in id order.
    pub segments: Vec<SegmentInfo>,
    /// Records by kind, in kind order (publish, attempt, retry, ack, cancel, drop).
    pub records_by_kind: Vec<(&'static str, u64)>,
    /// Events by state, in state order.
    pub events_by_state: Vec<(&'static str, u64)>,
    /// Every event the log holds, in id order.
    pub events: Vec<EventRow>,
    /// Jobs the log names.
    pub jobs: u64,
    /// Records the state machine refused (an outcome whose publish was compacted away).
    pub rejected: u64,
    /// Bytes of every file in the directory.
    pub disk_bytes: u64,
    /// What a writer's recovery would find: a torn tail is cut when an engine opens.
    #[serde(serialize_with = "serialize_recovery")]
    pub recovery: Recovery,
    /// Paused event names, sorted.
    pub paused: Vec<String>,
    /// Keys taken, per event name (sorted), counted at the reader's clock (the system's).
    pub keys: Vec<KeysHeld>,
    /// Dead letters the log holds (see [`Reader::dead_letters`]).
    pub dead_letters: u64,
    /// Schedules defined (see [`Reader::schedules`]).
    pub schedules: u64,
}

/// The events of one name that take a key.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeysHeld {
    /// The event name.
    pub name: String,
    /// Pending events holding their key (one per key).
    pub pending: u64,
    /// Finished events whose key window is still open (their key may also be held by a
    /// pending event that replaced them).
    pub windows: u64,
}

/// Every record about one event, and its body.
#[derive(Clone, Debug)]
pub struct EventHistory {
    /// The event as the log leaves it.
    pub row: EventRow,
    /// Its body.
    pub body: Vec<u8>,
    /// Its records in log order: position, kind and the encoded payload (decode with
    /// [`Record::decode`]).
    pub records: Vec<(Position, RecordKind, Vec<u8>)>,
}

/// A problem `verify` found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// Byte offset in the file.
    pub offset: u64,
    /// What is wrong.
    pub problem: String,
}

/// The outcome of [`Reader::verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verification {
    /// Segments checked.
    pub segments: usize,
    /// Valid records.
    pub records: u64,
    /// Corruption found, in file order. Empty when the log is sound.
    pub problems: Vec<Problem>,
    /// Bytes of a torn tail at the end of the last segment (a normal crash; a writer cuts it).
    pub torn_bytes: u64,
    /// Where that tail starts.
    pub torn_at: Option<(PathBuf, u64)>,
}

/// The outcome of [`Reader::salvage`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Salvage {
    /// Records copied.
    pub records: u64,
    /// Segments that had a problem (their records after it were left behind).
    pub damaged_segments: u64,
}

fn serialize_recovery<S: serde::Serializer>(r: &Recovery, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("Recovery", 5)?;
    st.serialize_field("segments", &r.segments)?;
    st.serialize_field("records", &r.records)?;
    st.serialize_field("last_seq", &r.last_seq)?;
    st.serialize_field("torn_bytes", &r.torn_bytes)?;
    st.serialize_field(
        "torn_at",
        &r.torn_at
            .map(|(segment, offset)| (segment_name(segment), offset)),
    )?;
    st.end()
}

/// The time a record carries, Unix epoch ms: when it was published, an attempt started,
/// failed, was acknowledged, cancelled or dropped.
pub fn record_time_ms(record: &Record<'_>) -> i64 {
    match record {
        Record::Publish(p) => p.published_ms,
        Record::Attempt(a) => a.started_ms,
        Record::Retry(r) => r.failed_ms,
        Record::Ack(a) => a.acked_ms,
        Record::Cancel(c) => c.cancelled_ms,
        Record::Drop(d) => d.dropped_ms,
        Record::Pause(p) => p.at_ms,
        Record::PurgeDead(p) => p.at_ms,
        Record::JobDone(j) => j.finished_ms,
    }
}

/// The name of a drop record's reason.
pub fn drop_reason_name(reason: DropReason) -> &'static str {
    reason.name()
}

/// The name of a retry record's reason code: `error` for 0, else the retry reason.
pub fn retry_reason_name(code: u8) -> String {
    match crate::RetryReason::from_code(code) {
        Some(r) => r.to_string(),
        None if code == 0 => "error".into(),
        None => format!("reason {code}"),
    }
}

/// Ids as runs of consecutive ids: events of a job, or published one after another, take
/// one run, so a filter's memory follows the runs, not the events.
#[derive(Debug, Default)]
struct IdRuns(BTreeMap<u64, u64>);

impl IdRuns {
    fn insert(&mut self, id: u64) {
        if self.contains(id) {
            return;
        }
        let mut start = id;
        let mut end = id;
        if let Some((&s, &e)) = self.0.range(..id).next_back()
            && e + 1 == id
        {
            start = s;
            self.0.remove(&s);
        }
        // No run starts after u64::MAX.
        if let Some(e) = id.checked_add(1).and_then(|next| self.0.remove(&next)) {
            end = e;
        }
        self.0.insert(start, end);
    }

    fn contains(&self, id: u64) -> bool {
        self.0
            .range(..=id)
            .next_back()
            .is_some_and(|(_, &e)| id <= e)
    }
}

/// The state of a running filter.
struct Matcher<'f> {
    filter: &'f RecordFilter,
    /// Events published with the filter's name or job, or the filter's event.
    events: IdRuns,
    /// Jobs of those events.
    jobs: HashSet<u64>,
}

impl<'f> Matcher<'f> {
    fn new(filter: &'f RecordFilter) -> Self {
        Matcher {
            filter,
            events: IdRuns::default(),
            jobs: HashSet::new(),
        }
    }

    fn by_event(&self) -> bool {
        self.filter.name.is_some() || self.filter.job.is_some() || self.filter.event.is_some()
    }

    fn entry_matches(&self, id: EventId, name: &str, job: Option<JobId>) -> bool {
        let f = self.filter;
        f.name.as_deref().is_none_or(|n| n == name)
            && f.job.is_none_or(|j| Some(j) == job)
            && f.event.is_none_or(|e| e == id)
    }

    /// Learns from every record (even one outside the ranges), then says whether it passes.
    fn matches(&mut self, pos: Position, record: &Record<'_>) -> bool {
        let about = if self.by_event() {
            match record {
                Record::Publish(p) => {
                    let mut any = false;
                    for e in p.events() {
                        if self.entry_matches(e.id, e.name, p.job) {
                            self.events.insert(e.id.0);
                            if let Some(j) = p.job {
                                self.jobs.insert(j.0);
                            }
                            any = true;
                        }
                    }
                    // A replacing publish also cancels the holder.
                    any || p
                        .options()
                        .and_then(|o| o.replaces)
                        .is_some_and(|h| self.events.contains(h.0))
                }
                Record::Cancel(c) => match c.target {
                    CancelTarget::Event(e) => self.events.contains(e.0),
                    CancelTarget::Job(j) => self.jobs.contains(&j.0),
                },
                // A pause is about its name, not about any one event or job.
                Record::Pause(p) => {
                    let f = self.filter;
                    f.job.is_none() && f.event.is_none() && f.name.as_deref() == Some(p.name)
                }
                // About its job, whose events compaction may have removed already.
                Record::JobDone(j) => {
                    let f = self.filter;
                    let named = f.job == Some(j.job) && f.name.is_none() && f.event.is_none();
                    named || self.jobs.contains(&j.job.0)
                }
                // A purge is about every dead letter, not any one event, job or name.
                Record::PurgeDead(_) => {
                    let f = self.filter;
                    f.job.is_none() && f.event.is_none() && f.name.is_none()
                }
                other => other.event().is_some_and(|e| self.events.contains(e.0)),
            }
        } else {
            true
        };
        let f = self.filter;
        let time = record_time_ms(record);
        about
            && (f.kinds.is_empty() || f.kinds.contains(&record.kind()))
            && f.seq_from.is_none_or(|s| pos.seq >= s)
            && f.seq_until.is_none_or(|s| pos.seq <= s)
            && f.time_from_ms.is_none_or(|t| time >= t)
            && f.time_until_ms.is_none_or(|t| time <= t)
    }
}

/// What the reader remembers of each event beside the index.
#[derive(Default)]
struct Extra {
    published_ms: i64,
    first_due_ms: i64,
    body_bytes: u64,
    last_reason: Option<String>,
    last_message: Option<String>,
    key: Option<Box<[u8]>>,
    /// Restatements of the event (new bodies): where each lies, and its body's length. The
    /// index says which one is the body.
    restated: Vec<(crate::index::Location, u64)>,
}

/// Notes what `record` (found at `pos`) tells of the events `keep` accepts (for the others,
/// nothing is kept).
fn note_extra(
    extras: &mut HashMap<EventId, Extra>,
    pos: Position,
    record: &Record<'_>,
    keep: impl Fn(EventId) -> bool,
) {
    match record {
        Record::Publish(p) => {
            let options = p.options();
            let key = options.map(|o| o.key).filter(|k| !k.is_empty());
            for e in p.events().filter(|e| keep(e.id)) {
                if options.is_some_and(|o| o.restates) {
                    if let Some(x) = extras.get_mut(&e.id) {
                        x.restated
                            .push((crate::engine::location(pos), e.body.len() as u64));
                    }
                    continue;
                }
                extras.entry(e.id).or_insert_with(|| Extra {
                    published_ms: p.published_ms,
                    first_due_ms: e.due_ms,
                    body_bytes: e.body.len() as u64,
                    key: key.map(Box::from),
                    ..Extra::default()
                });
            }
        }
        Record::Retry(r) => {
            if let Some(x) = extras.get_mut(&r.event) {
                x.last_reason = Some(retry_reason_name(r.reason));
                x.last_message = Some(r.message.to_owned());
            }
        }
        Record::Drop(d) => {
            if let Some(x) = extras.get_mut(&d.event) {
                if !d.message.is_empty() {
                    x.last_message = Some(d.message.to_owned());
                }
                if x.last_reason.is_none() {
                    x.last_reason = Some(drop_reason_name(d.reason).to_owned());
                }
            }
        }
        _ => {}
    }
}

fn row(index: &Index, extras: &HashMap<EventId, Extra>, id: EventId) -> Option<EventRow> {
    let info = index.get(id)?;
    let extra = extras.get(&id);
    Some(EventRow {
        id,
        name: info.name.to_owned(),
        state: info.state,
        attempts: info.attempts,
        job: info.job,
        published_ms: extra.map_or(0, |x| x.published_ms),
        first_due_ms: extra.map_or(info.due_ms, |x| x.first_due_ms),
        next_due_ms: info.due_ms,
        body_bytes: extra.map_or(0, |x| {
            x.restated
                .iter()
                .rev()
                .find(|(at, _)| *at == info.body_at)
                .map_or(x.body_bytes, |r| r.1)
        }),
        last_reason: extra.and_then(|x| x.last_reason.clone()),
        last_message: extra.and_then(|x| x.last_message.clone()),
        priority: info.priority,
        key: extra
            .and_then(|x| x.key.as_deref())
            .map(|k| String::from_utf8_lossy(k).into_owned()),
    })
}

impl Reader {
    /// Opens the data directory `dir` for reading: takes no lock and writes nothing.
    ///
    /// Errors: `Error::Io` (kind `NotFound`) when `dir` does not exist;
    /// `Error::NotADataDirectory` when it holds no segment but other files; `Error::Corrupt`
    /// (file, offset 0) when a segment header or the manifest is invalid. Damage to records is reported by
    /// the reads that reach it, with its file and offset.
    pub fn open(dir: impl AsRef<Path>) -> Result<Reader> {
        let dir = dir.as_ref();
        let storage =
            FsStorage::existing(dir).map_err(|e| Error::io("open data directory", dir, e))?;
        // `stat`, not `open`: every entry counts, a subdirectory or an unreadable file too.
        Reader::open_with(Arc::new(storage), |name| {
            let path = dir.join(name);
            std::fs::metadata(&path)
                .map(|meta| meta.len())
                .map_err(|e| {
                    Error::io(
                        "stat file",
                        &path,
                        crate::storage::explain_missing(&path, e),
                    )
                })
        })
    }

    /// Opens the data directory in any [`Storage`] (the in-memory `MemStorage` in tests and
    /// fuzzing), as [`open`](Reader::open) does a path.
    pub fn open_storage(storage: Arc<dyn Storage>) -> Result<Reader> {
        let sizes = storage.clone();
        Reader::open_with(storage, move |name| {
            sizes
                .open(name)
                .and_then(|file| file.len())
                .map_err(|e| Error::io("stat file", sizes.path().join(name), e))
        })
    }

    fn open_with(
        storage: Arc<dyn Storage>,
        file_bytes: impl Fn(&str) -> Result<u64>,
    ) -> Result<Reader> {
        let dir = storage.path().to_path_buf();
        let names = list(&*storage)?;
        let mut files = Vec::new();
        let mut disk_bytes = 0;
        let mut foreign = Vec::new();
        for name in &names {
            let Some(len) = until_gone(&*storage, name, || file_bytes(name))? else {
                continue; // renamed or removed since the listing (a temporary file, say)
            };
            disk_bytes += len;
            if let Some(id) = parse_segment_name(name) {
                files.push((id, len));
            } else if name != LOCK_FILE
                && name != MANIFEST_FILE
                && name != MANIFEST_TEMP_FILE
                && !is_temp_name(name)
            {
                foreign.push(name.clone());
            }
        }
        files.sort_unstable();
        if files.is_empty() && !foreign.is_empty() {
            foreign.sort();
            return Err(Error::NotADataDirectory {
                dir,
                reason: format!(
                    "it holds no segment (*.seg) but other files, such as {}",
                    foreign[0]
                ),
            });
        }
        let mut present = Vec::with_capacity(files.len());
        for &(id, len) in &files {
            let name = segment_name(id);
            let path = dir.join(&name);
            let Some(file) = open_segment(&*storage, &name)? else {
                continue; // removed by compaction since the listing
            };
            present.push((id, len));
            read_header(&*file, &path)?;
        }
        // A damaged manifest, like a damaged header, is reported at open, naming the file.
        Log::manifest(&*storage)?;
        Ok(Reader {
            storage,
            files: present,
            disk_bytes,
        })
    }

    /// The directory's manifest (format 2): its id, its segments and the settings the engine
    /// recorded (retention, segment size). `None` for a format-1 directory.
    pub fn manifest(&self) -> Result<Option<Manifest>> {
        Log::manifest(&*self.storage)
    }

    /// What one read sees: the segments listed and opened now.
    fn snapshot(&self) -> Result<Arc<Snapshot>> {
        Snapshot::take(&*self.storage).map(Arc::new)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.storage.path()
    }

    /// The path of segment `segment`'s file in the directory.
    pub fn segment_path(&self, segment: u64) -> PathBuf {
        self.dir().join(segment_name(segment))
    }

    /// Bytes of every file in the directory, as listed at open.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Bytes of the segment files, as listed at open: the work of a full scan.
    pub fn segment_file_bytes(&self) -> u64 {
        self.files.iter().map(|&(_, len)| len).sum()
    }

    /// How far a scan at `pos` has come, in bytes of segment files (for progress bars).
    pub fn progress_bytes(&self, pos: Position) -> u64 {
        self.files
            .iter()
            .take_while(|&&(id, _)| id < pos.segment)
            .map(|&(_, len)| len)
            .sum::<u64>()
            + pos.offset
    }

    /// Hands every record that passes `filter` to `visit`, in log order, in constant memory.
    /// Returns what the scan found (a torn tail of the last segment is reported there).
    pub fn records(
        &self,
        filter: &RecordFilter,
        mut visit: impl FnMut(Position, &Record<'_>) -> Result<()>,
    ) -> Result<Recovery> {
        let mut matcher = Matcher::new(filter);
        let snap = self.snapshot()?;
        snap.scan(|pos, record| {
            if matcher.matches(pos, record) {
                visit(pos, record)
            } else {
                Ok(())
            }
        })
    }

    /// Replays the whole log: segments, record counts, events and their states, jobs, and
    /// the recovery outcome. Two scans: one to learn every event's state, one to measure
    /// each segment's live bytes.
    pub fn summary(&self) -> Result<Summary> {
        self.summarize(None)
    }

    /// Like [`summary`](Reader::summary), but `events` holds only the `n` scheduled events
    /// due soonest: memory stays that of the index (about 40 bytes per event) instead of a
    /// row per event. What `afterlog inspect` uses.
    pub fn overview(&self, n: usize) -> Result<Summary> {
        self.summarize(Some(n))
    }

    fn summarize(&self, next_due: Option<usize>) -> Result<Summary> {
        let mut index = Index::new();
        let mut effects = Vec::new();
        let mut extras: HashMap<EventId, Extra> = HashMap::new();
        let mut kinds = [0u64; 256];
        let mut rejected = 0;
        let mut jobs: HashSet<u64> = HashSet::new();
        // The sequence number of each name's latest pause record: the one that is live.
        let mut pauses: HashMap<String, u64> = HashMap::new();
        // The latest purge of dead letters: the one that is live.
        let mut purge = None;
        let snap = self.snapshot()?;
        let recovery = snap.scan(|pos, record| {
            kinds[record.kind() as usize] += 1;
            if let Record::Pause(p) = record {
                pauses.insert(p.name.to_owned(), pos.seq);
            }
            if let Record::PurgeDead(_) = record {
                purge = Some(pos.seq);
            }
            match record {
                Record::Publish(p) => jobs.extend(p.job.map(|j| j.0)),
                // A finished job whose events compaction removed is still named by its
                // job-done record.
                Record::JobDone(j) => {
                    jobs.insert(j.job.0);
                }
                _ => {}
            }
            if index
                .apply(crate::engine::location(pos), record, &mut effects)
                .is_err()
            {
                rejected += 1;
            }
            effects.clear();
            if next_due.is_none() {
                note_extra(&mut extras, pos, record, |_| true);
            }
            Ok(())
        })?;

        let mut segments: BTreeMap<u64, SegmentInfo> = BTreeMap::new();
        let headers = snap.headers()?;
        for (id, file) in &snap.segments {
            let (id, path) = (*id, self.dir().join(segment_name(*id)));
            let file_bytes = file
                .len()
                .map_err(|e| Error::io("stat segment", &path, e))?;
            segments.insert(
                id,
                SegmentInfo {
                    id,
                    file: segment_name(id),
                    file_bytes,
                    data_bytes: headers.get(&id).map_or(0, |h| h.len() as u64),
                    first_seq: None,
                    last_seq: None,
                    records: 0,
                    live_bytes: 0,
                    live_share: 1.0,
                    compacted: headers
                        .get(&id)
                        .is_some_and(|h| h.flags & crate::format::FLAG_COMPACTED != 0),
                },
            );
        }
        // What compaction keeps: pending events and dead letters.
        let pending =
            |id: EventId| index.state(id).is_some_and(EventState::is_pending) || index.is_dead(id);
        let pending_jobs: HashSet<u64> = jobs
            .iter()
            .copied()
            .filter(|&j| index.job_stats(JobId(j)).is_some_and(|s| s.in_progress > 0))
            .collect();
        snap.scan(|pos, record| {
            let len = (FRAME_HEADER_LEN + record.encoded_len()) as u64;
            let live = match record {
                Record::Publish(p) => p.events().any(|e| pending(e.id)),
                Record::Pause(p) => pauses.get(p.name) == Some(&pos.seq),
                Record::PurgeDead(_) => purge == Some(pos.seq),
                // Kept while its summary is (the reader keeps every one: it does not know
                // the engine's retention).
                Record::JobDone(j) => index.keeps_job_done(j.job, i64::MIN),
                Record::Cancel(Cancel {
                    target: CancelTarget::Job(j),
                    ..
                }) => pending_jobs.contains(&j.0),
                other => other.event().is_some_and(pending),
            };
            if let Some(s) = segments.get_mut(&pos.segment) {
                s.records += 1;
                s.first_seq.get_or_insert(pos.seq);
                s.last_seq = Some(pos.seq);
                s.data_bytes = s.data_bytes.max(pos.offset + len);
                if live {
                    s.live_bytes += len;
                }
            }
            Ok(())
        })?;
        for s in segments.values_mut() {
            let header_len = headers.get(&s.id).map_or(0, |h| h.len() as u64);
            let record_bytes = s.data_bytes.saturating_sub(header_len);
            s.live_share = if record_bytes == 0 {
                1.0
            } else {
                s.live_bytes as f64 / record_bytes as f64
            };
        }

        let ids: Vec<EventId> = match next_due {
            None => {
                let mut ids: Vec<EventId> = extras.keys().copied().collect();
                ids.sort_unstable();
                ids
            }
            Some(n) => {
                let mut due: Vec<(i64, EventId)> =
                    index.scheduled().map(|(id, due)| (due, id)).collect();
                due.sort_unstable();
                due.into_iter().take(n).map(|(_, id)| id).collect()
            }
        };
        let events = ids
            .into_iter()
            .filter_map(|id| row(&index, &extras, id))
            .collect();
        let mut keys: BTreeMap<&str, KeysHeld> = BTreeMap::new();
        for (name, _, pending) in
            index.keys_taken(crate::clock::Clock::now_ms(&crate::clock::SystemClock))
        {
            let held = keys.entry(name).or_insert_with(|| KeysHeld {
                name: name.to_owned(),
                pending: 0,
                windows: 0,
            });
            if pending {
                held.pending += 1;
            } else {
                held.windows += 1;
            }
        }
        Ok(Summary {
            dead_letters: index.dead_count(),
            schedules: index.schedule_count() as u64,
            paused: index.paused().map(str::to_owned).collect(),
            keys: keys.into_values().collect(),
            segments: segments.into_values().collect(),
            records_by_kind: RecordKind::ALL
                .iter()
                .map(|k| (k.name(), kinds[*k as usize]))
                .collect(),
            events_by_state: EventState::ALL
                .iter()
                .map(|s| (s.name(), index.count(*s)))
                .collect(),
            events,
            jobs: jobs.len() as u64,
            rejected,
            disk_bytes: self.disk_bytes,
            recovery,
        })
    }

    /// Every event the log holds, in id order, with its state.
    pub fn events(&self) -> Result<Vec<EventRow>> {
        self.events_where(&EventFilter::default())
    }

    /// The events `filter` selects, in id order (see [`visit_events`](Reader::visit_events)).
    pub fn events_where(&self, filter: &EventFilter) -> Result<Vec<EventRow>> {
        let mut rows = Vec::new();
        self.visit_events(filter, |row| {
            rows.push(row);
            Ok(())
        })?;
        Ok(rows)
    }

    /// Hands each event `filter` selects to `visit`, in id order; an error from `visit`
    /// stops the walk and is returned. Two scans: the first rebuilds the index alone (about
    /// 40 bytes per event) and selects, the second gathers the rest of each row for the
    /// selected events only. Memory is the index's plus the selected ids and what their
    /// rows need; the rows are never all held at once.
    pub fn visit_events(
        &self,
        filter: &EventFilter,
        mut visit: impl FnMut(EventRow) -> Result<()>,
    ) -> Result<()> {
        let mut index = Index::new();
        let mut effects = Vec::new();
        // With a key filter, the ids published with the key: as runs, so a job's events
        // or a long run of publishes take one entry.
        let mut with_key = IdRuns::default();
        let snap = self.snapshot()?;
        snap.scan(|pos, record| {
            if let (Some(key), Record::Publish(p)) = (&filter.key, record)
                && p.options().is_some_and(|o| o.key == key.as_slice())
            {
                for e in p.events() {
                    with_key.insert(e.id.0);
                }
            }
            let _ = index.apply(crate::engine::location(pos), record, &mut effects);
            effects.clear();
            Ok(())
        })?;
        let selected: Vec<EventId> = index
            .held_events()
            .filter(|e| filter.matches(e) && (filter.key.is_none() || with_key.contains(e.id.0)))
            .take(filter.limit.unwrap_or(usize::MAX))
            .map(|e| e.id)
            .collect();
        let mut extras = HashMap::new();
        if !selected.is_empty() {
            let keep: HashSet<EventId> = selected.iter().copied().collect();
            snap.scan(|pos, record| {
                note_extra(&mut extras, pos, record, |id| keep.contains(&id));
                Ok(())
            })?;
        }
        for id in selected {
            if let Some(row) = row(&index, &extras, id) {
                visit(row)?;
            }
        }
        Ok(())
    }

    /// The schedules the log defines, sorted by id (see
    /// [`Engine::schedules`](crate::Engine::schedules)). One scan of the log. A schedule
    /// whose pending occurrence finished shows no next due time until an engine publishes
    /// the next one.
    pub fn schedules(&self) -> Result<Vec<crate::ScheduleInfo>> {
        let snap = self.snapshot()?;
        let index = snap.replayed_index()?;
        Ok(crate::ScheduleInfo::list(&index))
    }

    /// The dead letters the log holds, newest first, at most `limit` (see
    /// [`Engine::dead_letters`](crate::Engine::dead_letters)). The reader does not know the
    /// engine's dead retention: it lists every dead letter not yet redriven, purged or
    /// compacted away, so one past the retention shows here until compaction removes it.
    /// Two scans of the log; memory is that of the index plus the letters returned.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<crate::DeadLetter>> {
        self.dead_letters_named(None, limit)
    }

    /// Like [`dead_letters`](Reader::dead_letters), but only those of event `name` when one
    /// is given: the newest `limit` of that name, whose bodies alone are read.
    pub fn dead_letters_named(
        &self,
        name: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::DeadLetter>> {
        let snap = self.snapshot()?;
        let index = snap.replayed_index()?;
        // Per letter: its entry's facts, then the body and death the second scan finds.
        struct Wanted {
            name: String,
            attempts: u32,
            job: Option<JobId>,
            body_at: crate::index::Location,
            at: crate::index::Location,
            body: Option<(Vec<u8>, i64)>,
            death: Option<(crate::DeadReason, String, i64)>,
        }
        let letters: Vec<crate::index::DeadRef> = index
            .dead_letters(i64::MIN)
            .filter(|d| name.is_none_or(|n| index.name_of(d.id) == Some(n)))
            .take(limit)
            .collect();
        let mut wanted: HashMap<EventId, Wanted> = letters
            .iter()
            .filter_map(|d| {
                let e = index.get(d.id)?;
                Some((
                    d.id,
                    Wanted {
                        name: e.name.to_owned(),
                        attempts: e.attempts,
                        job: e.job,
                        body_at: e.body_at,
                        at: d.at,
                        body: None,
                        death: None,
                    },
                ))
            })
            .collect();
        let mut by_location: HashMap<crate::index::Location, Vec<EventId>> = HashMap::new();
        for (&id, w) in &wanted {
            by_location.entry(w.body_at).or_default().push(id);
            by_location.entry(w.at).or_default().push(id);
        }
        snap.scan(|pos, record| {
            let loc = crate::engine::location(pos);
            let Some(ids) = by_location.get(&loc) else {
                return Ok(());
            };
            for id in ids {
                let Some(w) = wanted.get_mut(id) else {
                    continue;
                };
                if let Record::Publish(p) = record
                    && loc == w.body_at
                    && let Some(e) = p.events().find(|e| e.id == *id)
                {
                    w.body = Some((e.body.to_vec(), p.published_ms));
                }
                if loc == w.at {
                    w.death = crate::engine::death(record, &w.name);
                }
            }
            Ok(())
        })?;
        Ok(letters
            .into_iter()
            .filter_map(|d| {
                let id = d.id;
                let w = wanted.remove(&id)?;
                let ((body, published_ms), (reason, message, dropped_ms)) = (w.body?, w.death?);
                Some(crate::DeadLetter {
                    id,
                    name: w.name,
                    body,
                    attempts: w.attempts,
                    reason,
                    message,
                    dropped_ms,
                    published_ms,
                    job: w.job,
                })
            })
            .collect())
    }

    /// The segments, in id order.
    pub fn segments(&self) -> Result<Vec<SegmentInfo>> {
        Ok(self.summary()?.segments)
    }

    /// Every record about `id` in log order, its body and its state; `None` when the log
    /// holds no publish of it (never published, or removed by compaction).
    pub fn event_history(&self, id: EventId) -> Result<Option<EventHistory>> {
        let filter = RecordFilter {
            event: Some(id),
            ..RecordFilter::default()
        };
        let mut index = Index::new();
        let mut effects = Vec::new();
        let mut extras = HashMap::new();
        let mut body = None;
        let mut records = Vec::new();
        self.records(&filter, |pos, record| {
            let applied = index.apply(crate::engine::location(pos), record, &mut effects);
            effects.clear();
            // The body is its publish's, or that of the latest record that restated it
            // while it was pending (a restatement of a finished event changes nothing).
            if let Record::Publish(p) = record
                && let Some(e) = p.events().find(|e| e.id == id)
            {
                let restated = p.options().is_some_and(|o| o.restates)
                    && applied == Ok(crate::index::Applied::Changed);
                if body.is_none() || restated {
                    body = Some(e.body.to_vec());
                }
            }
            note_extra(&mut extras, pos, record, |_| true);
            let mut payload = Vec::with_capacity(record.encoded_len());
            record.encode(&mut payload);
            records.push((pos, record.kind(), payload));
            Ok(())
        })?;
        let (Some(body), Some(row)) = (body, row(&index, &extras, id)) else {
            return Ok(None);
        };
        Ok(Some(EventHistory { row, body, records }))
    }

    /// Checks every record of every segment. Unlike the other reads, it does not stop at the
    /// first damaged segment: each segment is checked on its own, then the log as a whole
    /// (sequence numbers across segments). `progress` is told the segment bytes checked so far.
    pub fn verify(&self, progress: &mut dyn FnMut(u64)) -> Result<Verification> {
        let mut out = Verification::default();
        let mut done = 0;
        let snap = self.snapshot()?;
        let last = snap.last_id();
        let mut records = HashMap::new();
        for (id, file) in &snap.segments {
            let id = *id;
            if snap.is_leftover(id) {
                continue;
            }
            let path = self.dir().join(segment_name(id));
            let len = file
                .len()
                .map_err(|e| Error::io("stat segment", &path, e))?;
            out.segments += 1;
            let mut valid = 0;
            let scanned = snap.scan_alone(id, |pos, _| {
                valid += 1;
                if pos.seq.is_multiple_of(4096) {
                    progress(done + pos.offset);
                }
                Ok(())
            });
            // Records before a problem are valid too.
            out.records += valid;
            records.insert(id, valid);
            match scanned {
                Ok(report) => {
                    if let Some((_, offset)) = report.torn_at {
                        if Some(id) == last {
                            out.torn_bytes = report.torn_bytes;
                            out.torn_at = Some((path, offset));
                        } else {
                            let problem = describe_at(&**file, id, offset);
                            out.problems.push(Problem {
                                file: path,
                                offset,
                                problem: format!("{problem} in a sealed segment"),
                            });
                        }
                    }
                }
                Err(e) => out.problems.push(problem_of(e, &path)),
            }
            done += len;
            progress(done);
        }
        out.problems
            .extend(self.directory_problems(&snap, &records)?);
        if out.problems.is_empty()
            && let Err(e) = snap.scan(|_, _| Ok(()))
        {
            out.problems.push(problem_of(e, self.dir()));
        }
        Ok(out)
    }

    /// Segments that are not this directory's (format 2): a header naming another directory,
    /// or records in a segment the manifest does not list. `records` holds each segment's
    /// valid records.
    fn directory_problems(
        &self,
        snap: &Snapshot,
        records: &HashMap<u64, u64>,
    ) -> Result<Vec<Problem>> {
        let Some(mut manifest) = snap.manifest.clone() else {
            return Ok(Vec::new());
        };
        let headers = snap.headers()?;
        let mut problems = Vec::new();
        for (id, _) in &snap.segments {
            let path = self.dir().join(segment_name(*id));
            if let Some(header) = headers.get(id)
                && header.has_seals()
                && header.directory_id != manifest.directory_id
            {
                problems.push(Problem {
                    file: path,
                    offset: 0,
                    problem: format!(
                        "the segment belongs to another directory (id {:032x}; this directory's \
                         MANIFEST says {:032x})",
                        header.directory_id, manifest.directory_id
                    ),
                });
                continue;
            }
            let n = records.get(id).copied().unwrap_or(0);
            if n > 0 && manifest.segments.binary_search(id).is_err() {
                // Beside a running engine the manifest may have moved on since it was read: a
                // roll lists its segment before it writes a record there.
                if let Some(now) = self.manifest()? {
                    manifest = now;
                }
                if manifest.segments.binary_search(id).is_err() {
                    problems.push(Problem {
                        file: path,
                        offset: 0,
                        problem: format!(
                            "the segment holds {n} records but the MANIFEST does not list it \
                             (a segment copied from elsewhere?)"
                        ),
                    });
                }
            }
        }
        Ok(problems)
    }
}

/// Why no frame decodes at `offset` of segment `id`, in words.
fn describe_at(file: &dyn StorageFile, id: u64, offset: u64) -> String {
    {
        let len = file.len().unwrap_or(0);
        let want = (len.saturating_sub(offset)).min(MAX_FRAME_LEN as u64) as usize;
        let mut buf = vec![0u8; want];
        if read_exact_at(file, &mut buf, offset).is_err() {
            return "unreadable bytes".into();
        }
        match decode_frame(&buf, id) {
            Err(e) => e.to_string(),
            Ok(None) => "a zero length ends the data but non-zero bytes follow".into(),
            Ok(Some(_)) => "an unexpected frame".into(),
        }
    }
}

impl Reader {
    /// Writes a repaired copy of the log to the new directory `out`: every valid record, in
    /// order, with new sequence numbers; records after damage in a segment are left behind.
    /// The original is not changed. `out` must not exist or be empty.
    pub fn salvage(&self, out: &Path, progress: &mut dyn FnMut(u64)) -> Result<Salvage> {
        if out.exists() {
            let empty = std::fs::read_dir(out)
                .map_err(|e| Error::io("list directory", out, e))?
                .next()
                .is_none();
            if !empty {
                return Err(Error::invalid(format!(
                    "salvage target {} exists and is not empty",
                    out.display()
                )));
            }
        }
        let storage = FsStorage::new(out).map_err(|e| Error::io("create directory", out, e))?;
        self.salvage_into(
            Arc::new(storage),
            LogOptions::default().segment_bytes,
            progress,
        )
    }

    /// Like [`salvage`](Reader::salvage), into any empty [`Storage`], with segments of
    /// `segment_bytes`.
    pub fn salvage_into(
        &self,
        out: Arc<dyn Storage>,
        segment_bytes: u64,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Salvage> {
        let names = out
            .list()
            .map_err(|e| Error::io("list directory", out.path(), e))?;
        if !names.is_empty() {
            return Err(Error::invalid(format!(
                "salvage target {} is not empty",
                out.path().display()
            )));
        }
        let manifest = self.manifest()?;
        let options = LogOptions {
            segment_bytes,
            first_segment_bytes: LogOptions::default().first_segment_bytes.min(segment_bytes),
            durability: Durability::Periodic(std::time::Duration::from_secs(1)),
            prepare_in_background: false,
            retention_ms: manifest.as_ref().and_then(|m| m.retention_ms),
            limits: manifest.and_then(|m| m.limits),
        };
        // Ids must continue above every id the original allocated: the floors of every
        // header, a damaged segment's too.
        let snap = self.snapshot()?;
        let floors = snap.headers()?.values().fold((0, 0), |(e, j), h| {
            (e.max(h.event_id_floor), j.max(h.job_id_floor))
        });
        let (log, _) = Log::open(out, options, |_, _| Ok(()))?;
        let mut report = Salvage::default();
        let mut done = 0;
        let mut batch: Vec<(RecordKind, Vec<u8>)> = Vec::new();
        let flush = |batch: &mut Vec<(RecordKind, Vec<u8>)>| -> Result<()> {
            let records = batch
                .iter()
                .map(|(kind, payload)| {
                    Record::decode(*kind, payload).map_err(|e| Error::invalid(e.to_string()))
                })
                .collect::<Result<Vec<_>>>()?;
            log.append_all(&records)?;
            batch.clear();
            Ok(())
        };
        let last = snap.last_id();
        for (id, file) in &snap.segments {
            let id = *id;
            if snap.is_leftover(id) {
                continue;
            }
            let len = file.len().unwrap_or(0);
            let mut failed = None;
            let scanned = snap.scan_alone(id, |_, record| {
                let mut payload = Vec::with_capacity(record.encoded_len());
                record.encode(&mut payload);
                batch.push((record.kind(), payload));
                report.records += 1;
                if batch.len() >= 1024 {
                    flush(&mut batch)?;
                }
                Ok(())
            });
            match scanned {
                Ok(r) => {
                    if r.torn_bytes > 0 && Some(id) != last {
                        report.damaged_segments += 1;
                    }
                }
                Err(e @ (Error::Corrupt { .. } | Error::ChecksumMismatch { .. })) => {
                    failed = Some(e)
                }
                Err(e) => return Err(e),
            }
            if failed.is_some() {
                report.damaged_segments += 1;
            }
            done += len;
            progress(done);
        }
        flush(&mut batch)?;
        log.raise_id_floors(floors.0, floors.1);
        // Seal the segment so that the next one carries the floors in its header (even when
        // no record was copied).
        log.roll()?;
        log.close()?;
        Ok(report)
    }
}

fn problem_of(e: Error, fallback: &Path) -> Problem {
    match e {
        Error::Corrupt {
            file,
            offset,
            reason,
        } => Problem {
            file,
            offset,
            problem: reason,
        },
        Error::ChecksumMismatch {
            file,
            offset,
            expected,
            found,
        } => Problem {
            file,
            offset,
            problem: format!(
                "frame checksum mismatch: stored {expected:#010x}, computed {found:#010x}"
            ),
        },
        other => Problem {
            file: fallback.to_path_buf(),
            offset: 0,
            problem: other.to_string(),
        },
    }
}

fn read_only() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "read-only view")
}

/// How many times a file that a listing names but that cannot be found is looked for again
/// while new listings still name it.
const VANISHED_RETRIES: usize = 4;

fn list(storage: &dyn Storage) -> Result<Vec<String>> {
    storage
        .list()
        .map_err(|e| Error::io("list directory", storage.path(), e))
}

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

/// Runs `op` on the file `name`, which a listing just named. Beside a running engine a file
/// can go between the listing and the open: a temporary file renamed into a segment, a
/// segment compaction removed. Such a file is `None` once a new listing no longer names it;
/// while listings still name it, `op` is tried again, a bounded number of times.
fn until_gone<T>(
    storage: &dyn Storage,
    name: &str,
    mut op: impl FnMut() -> Result<T>,
) -> Result<Option<T>> {
    let mut tries = 0;
    loop {
        match op() {
            Ok(value) => return Ok(Some(value)),
            Err(e) if is_not_found(&e) => {
                if !list(storage)?.iter().any(|n| n == name) {
                    return Ok(None);
                }
                tries += 1;
                if tries > VANISHED_RETRIES {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens segment `name`; `None` when it was removed since the listing that named it.
fn open_segment(storage: &dyn Storage, name: &str) -> Result<Option<Box<dyn StorageFile>>> {
    until_gone(storage, name, || {
        storage
            .open(name)
            .map_err(|e| Error::io("open segment", storage.path().join(name), e))
    })
}

/// The segments one read sees: listed once and each opened once, so every scan of the read
/// sees the same files whatever happens to their names meanwhile (an open file outlives a
/// rename over it and its removal, and compaction only ever renames or removes whole
/// files). The last segment may still be appended to: once a scan of it has ended, later
/// scans of the same read see zeros past that end, so they all end at the same record, the
/// durable prefix the read saw first. Read-only: every write fails.
#[derive(Debug)]
struct Snapshot {
    dir: PathBuf,
    /// The manifest as it was read, and its bytes, which the snapshot serves as `MANIFEST`.
    manifest: Option<Manifest>,
    manifest_bytes: Option<Arc<Vec<u8>>>,
    /// Segment ids and their open files, in id order.
    segments: Vec<(u64, Arc<dyn StorageFile>)>,
    /// The segment being appended to: the last one the manifest lists (or the last one).
    last: Option<u64>,
    /// Where the first scan of the last segment ended (`u64::MAX` until then).
    last_end: Arc<AtomicU64>,
    /// Segments above the last one the manifest lists, installed by a roll after the manifest
    /// was read: they read as empty past their header (a roll writes no record into a segment
    /// before the manifest lists it, so what they hold now came after this read began).
    unlisted_ends: HashMap<u64, Arc<AtomicU64>>,
}

/// How many times a snapshot is taken again when a segment its manifest lists went before
/// it was opened (compaction removed it, and rewrote the manifest first).
const SNAPSHOT_RETRIES: usize = 100;

impl Snapshot {
    /// The index a replay of the whole snapshot builds (records it refuses are skipped, as
    /// an engine's recovery skips them).
    fn replayed_index(&self) -> Result<Index> {
        let mut index = Index::new();
        let mut effects = Vec::new();
        self.scan(|pos, record| {
            let _ = index.apply(crate::engine::location(pos), record, &mut effects);
            effects.clear();
            Ok(())
        })?;
        Ok(index)
    }

    fn take(storage: &dyn Storage) -> Result<Snapshot> {
        let mut tries = 0;
        loop {
            let (manifest_bytes, manifest) = read_manifest_bytes(storage)?;
            let mut ids: Vec<u64> = list(storage)?
                .iter()
                .filter_map(|n| parse_segment_name(n))
                .collect();
            ids.sort_unstable();
            let mut segments = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(file) = open_segment(storage, &segment_name(id))? {
                    segments.push((id, Arc::from(file)));
                }
            }
            let opened = |id: &u64| segments.iter().any(|(s, _)| s == id);
            let complete = manifest
                .as_ref()
                .is_none_or(|m| m.segments.iter().all(opened));
            tries += 1;
            // A listed segment that is gone: compaction unlisted it since the manifest was
            // read (then a new manifest says so), or it is missing, which the scan reports.
            if !complete && tries < SNAPSHOT_RETRIES && read_manifest_bytes(storage)?.1 != manifest
            {
                continue;
            }
            let last = match &manifest {
                Some(m) => m.segments.last().copied(),
                None => segments.last().map(|&(id, _)| id),
            };
            let mut unlisted_ends = HashMap::new();
            if manifest.is_some() {
                let last_listed = last.unwrap_or(0);
                for (id, file) in segments.iter().filter(|(id, _)| *id > last_listed) {
                    let path = storage.path().join(segment_name(*id));
                    if let Ok(header) = read_header(&**file, &path) {
                        unlisted_ends.insert(*id, Arc::new(AtomicU64::new(header.len() as u64)));
                    }
                }
            }
            return Ok(Snapshot {
                dir: storage.path().to_path_buf(),
                manifest,
                manifest_bytes,
                segments,
                last,
                last_end: Arc::new(AtomicU64::new(u64::MAX)),
                unlisted_ends,
            });
        }
    }

    fn last_id(&self) -> Option<u64> {
        self.last
    }

    /// True for a segment the manifest does not list, below the last one it lists: what an
    /// interrupted compaction left of a segment it unlisted (its records are finished), which
    /// the next engine to open the directory removes. Reads skip it.
    fn is_leftover(&self, id: u64) -> bool {
        self.manifest.as_ref().is_some_and(|m| {
            m.segments.last().is_some_and(|&last| id < last)
                && m.segments.binary_search(&id).is_err()
        })
    }

    /// [`Log::scan`] of this snapshot; the first scan that reads the last segment bounds the
    /// later ones to where it ended.
    fn scan(&self, visit: impl FnMut(Position, &Record<'_>) -> Result<()>) -> Result<Recovery> {
        self.bounded(true, visit, |visit| Log::scan(self, visit))
    }

    /// [`Log::scan_alone`] of segment `id` of this snapshot, which must end with a seal when
    /// it comes before the last segment.
    fn scan_alone(
        &self,
        id: u64,
        visit: impl FnMut(Position, &Record<'_>) -> Result<()>,
    ) -> Result<Recovery> {
        let sealed = self.last.is_some_and(|last| id < last);
        self.bounded(Some(id) == self.last, visit, |visit| {
            Log::scan_alone(self, id, sealed, visit)
        })
    }

    /// Runs `scan` with `visit`, noting where the records of the last segment end; when the
    /// scan read the last segment (`covers_last`), later scans of this snapshot end there.
    fn bounded(
        &self,
        covers_last: bool,
        mut visit: impl FnMut(Position, &Record<'_>) -> Result<()>,
        scan: impl FnOnce(&mut dyn FnMut(Position, &Record<'_>) -> Result<()>) -> Result<Recovery>,
    ) -> Result<Recovery> {
        let mut end = self.last_header_len();
        let report = scan(&mut |pos, record| {
            if Some(pos.segment) == self.last {
                end = pos.offset + (FRAME_HEADER_LEN + record.encoded_len()) as u64;
            }
            visit(pos, record)
        });
        if covers_last {
            self.last_end.fetch_min(end, Ordering::Relaxed);
        }
        report
    }

    /// The header length of the last segment (where its records start).
    fn last_header_len(&self) -> u64 {
        self.last
            .and_then(|id| self.segments.iter().find(|(s, _)| *s == id))
            .and_then(|(id, file)| read_header(&**file, &self.dir.join(segment_name(*id))).ok())
            .map_or(MAX_SEGMENT_HEADER_LEN as u64, |h| h.len() as u64)
    }

    /// The segments' headers, by id (a header that does not decode is left out).
    fn headers(&self) -> Result<HashMap<u64, SegmentHeader>> {
        let mut headers = HashMap::new();
        for (id, file) in &self.segments {
            let path = self.dir.join(segment_name(*id));
            if let Ok(h) = read_header(&**file, &path) {
                headers.insert(*id, h);
            }
        }
        Ok(headers)
    }
}

/// A manifest file's bytes and what they say.
type ManifestRead = (Option<Arc<Vec<u8>>>, Option<Manifest>);

/// The manifest's bytes and what they say; `None` for a directory without one.
fn read_manifest_bytes(storage: &dyn Storage) -> Result<ManifestRead> {
    Ok(match Log::manifest_bytes(storage)? {
        Some((bytes, manifest)) => (Some(Arc::new(bytes)), Some(manifest)),
        None => (None, None),
    })
}

/// The manifest as a snapshot read it.
#[derive(Debug)]
struct ManifestFile(Arc<Vec<u8>>);

impl StorageFile for ManifestFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let from = (offset as usize).min(self.0.len());
        let n = buf.len().min(self.0.len() - from);
        buf[..n].copy_from_slice(&self.0[from..from + n]);
        Ok(n)
    }
    fn write_all_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn sync_data(&self) -> io::Result<()> {
        Err(read_only())
    }
    #[allow(
        unsafe_code,
        reason = "the trait's method is unsafe to call; this copy is safe"
    )]
    unsafe fn map(&self, len: u64) -> io::Result<Mapped> {
        let len = (len as usize).min(self.0.len());
        Ok(Mapped::new(Arc::new(self.0[..len].to_vec())))
    }
}

impl Storage for Snapshot {
    fn path(&self) -> &Path {
        &self.dir
    }
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self
            .segments
            .iter()
            .map(|&(id, _)| segment_name(id))
            .chain(
                self.manifest_bytes
                    .as_ref()
                    .map(|_| MANIFEST_FILE.to_string()),
            )
            .collect())
    }
    fn create(&self, _name: &str) -> io::Result<Box<dyn StorageFile>> {
        Err(read_only())
    }
    fn open(&self, name: &str) -> io::Result<Box<dyn StorageFile>> {
        if name == MANIFEST_FILE
            && let Some(bytes) = &self.manifest_bytes
        {
            return Ok(Box::new(ManifestFile(bytes.clone())));
        }
        let (id, file) = self
            .segments
            .iter()
            .find(|(id, _)| segment_name(*id) == name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in this read's view"))?;
        let end = if Some(*id) == self.last {
            Some(self.last_end.clone())
        } else {
            self.unlisted_ends.get(id).cloned()
        };
        Ok(Box::new(SnapshotFile {
            file: file.clone(),
            end,
        }))
    }
    fn rename(&self, _from: &str, _to: &str) -> io::Result<()> {
        Err(read_only())
    }
    fn remove(&self, _name: &str) -> io::Result<()> {
        Err(read_only())
    }
    fn sync_dir(&self) -> io::Result<()> {
        Err(read_only())
    }
    fn try_lock(&self) -> io::Result<Option<LockGuard>> {
        Err(read_only())
    }
}

/// A segment of a [`Snapshot`]: the last one reads as zeros past the snapshot's end.
#[derive(Debug)]
struct SnapshotFile {
    file: Arc<dyn StorageFile>,
    end: Option<Arc<AtomicU64>>,
}

impl StorageFile for SnapshotFile {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = self.file.read_at(buf, offset)?;
        if let Some(end) = &self.end {
            let end = end.load(Ordering::Relaxed);
            let from = end.saturating_sub(offset).min(n as u64) as usize;
            buf[from..n].fill(0);
        }
        Ok(n)
    }
    fn write_all_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn set_len(&self, _len: u64) -> io::Result<()> {
        Err(read_only())
    }
    fn sync_data(&self) -> io::Result<()> {
        Err(read_only())
    }
    #[allow(
        unsafe_code,
        reason = "passes the caller's promise on to the file it wraps"
    )]
    unsafe fn map(&self, len: u64) -> io::Result<Mapped> {
        // SAFETY: our caller makes `map`'s promise for `0..len` of this file, which is the
        // wrapped file. Only sealed segments are mapped (a scan reads the last one of its
        // view with `read_at`), and those never change.
        unsafe { self.file.map(len) }
    }
}

#[cfg(test)]
mod tests {
    use super::IdRuns;

    /// Found by the fuzzer: a filter on the events of a publish holding id u64::MAX (which a
    /// log may hold, though the engine never gets there) overflowed looking for the run that
    /// starts after it.
    #[test]
    fn id_runs_reach_the_last_id() {
        let mut runs = IdRuns::default();
        for id in [u64::MAX, 5, u64::MAX - 1, 4, 6] {
            runs.insert(id);
        }
        assert_eq!(
            runs.0.into_iter().collect::<Vec<_>>(),
            [(4, 6), (u64::MAX - 1, u64::MAX)]
        );
    }
}
