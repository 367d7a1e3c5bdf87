//! The dashboard's picture of a data directory, kept small enough for ten million events and
//! brought up to date by reading only what was appended since the last look.
//!
//! The reader ([`crate::Reader`]) answers each question with a fresh scan and an index of
//! about 40 bytes per event: right for the CLI, too slow and too big for a page that must
//! render in well under a second beside a directory of ten million events. A `View` is
//! built by one scan and then follows the log:
//!
//! - per event, 14 bytes in chunks of 4,096 ids (state and flags, attempts, name, next due
//!   time in seconds, and where its publish record lies), so a page of events, a count by
//!   state or a chart of what falls due is a walk over compact arrays, and a row's body,
//!   key and times are read from its publish record (one `pread`);
//! - counts by state, per name and per job, kept as records arrive;
//! - per segment, the range of event ids its records name, so one event's history is read
//!   from the segments that can hold it, not from the whole log;
//! - attempts and failures per minute for the last week.
//!
//! [`View::refresh`] reads what the segments gained since the last look. A segment read
//! before that compaction rewrote (shorter) or removed is followed too: compaction drops
//! only what finished events no longer need, so the view forgets the events whose publish
//! went, finds the new offsets of the records kept, and applies those appended after its
//! last read (by sequence number, which compaction keeps). Only a segment missing below the
//! ones read makes it report that it must be rebuilt ([`View::build`] from scratch, which the
//! server does beside the old view and swaps in).
//!
//! The view applies records by the index's rules (`crate::index`) for what it keeps: the
//! property test `web_view` in the tests replays random workloads and compares every event's
//! state, attempts and due time with the reader's.
//!
//! Architecture Invariant: like the reader, a view never writes and never takes the lock.

use crate::error::{Error, Result};
use crate::format::{
    AckOutcome, CancelTarget, DropReason, FRAME_HEADER_LEN, Record, RecordKind, decode_frame,
};
use crate::ids::{EventId, JobId};
use crate::index::EventState;
use crate::log::{Log, Position, parse_segment_name, read_header, segment_name};
use crate::storage::{Storage, StorageFile, read_exact_at};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

const CHUNK: usize = 4096;
const STATE_BITS: u8 = 0b111;
const DEAD: u8 = 0b1000;
const KEYED: u8 = 0b1_0000;
/// Attempts and failures are counted per minute for this many minutes back.
pub const ACTIVITY_MINUTES: i64 = 7 * 24 * 60;
/// Names beyond this many share the last name slot, shown as `OTHER_NAME`.
const NAMES_MAX: usize = u16::MAX as usize;
/// What events of the names beyond `NAMES_MAX` are shown as.
pub const OTHER_NAME: &str = "(other names)";

/// Events `id >> 12` of one chunk: columns, so a walk over one of them stays in cache.
struct Chunk {
    flags: [u8; CHUNK],
    attempts: [u8; CHUNK],
    name: [u16; CHUNK],
    due_s: [u32; CHUNK],
    segment: [u16; CHUNK],
    offset: [u32; CHUNK],
}

impl Chunk {
    fn new() -> Box<Chunk> {
        Box::new(Chunk {
            flags: [0; CHUNK],
            attempts: [0; CHUNK],
            name: [0; CHUNK],
            due_s: [0; CHUNK],
            segment: [0; CHUNK],
            offset: [0; CHUNK],
        })
    }
}

/// Per name: its events by state and its dead letters.
#[derive(Clone, Debug, Default)]
pub struct NameCounts {
    /// The name.
    pub name: String,
    /// Events by state code (index `EventState as usize`; 0 unused).
    pub by_state: [u64; 7],
    /// Dead letters.
    pub dead: u64,
}

/// One job as the log tells it.
#[derive(Clone, Debug, Default)]
pub struct JobRow {
    /// Its id.
    pub id: u64,
    /// Its events by state code, while the log holds them.
    pub by_state: [u64; 7],
    /// Whether a cancel of the job was written.
    pub cancelled: bool,
    /// Its final counts (success, failed, cancelled) and when it finished, once a job-done
    /// record says so.
    pub done: Option<(u64, u64, u64, i64)>,
    /// When it was pushed, Unix epoch ms.
    pub published_ms: i64,
    /// Its first and last event ids.
    pub first: u64,
    /// See `first`.
    pub last: u64,
}

impl JobRow {
    /// Its counts as `job_stats` gives them: success, in progress, failed, cancelled.
    pub fn stats(&self) -> (u64, u64, u64, u64) {
        let s = |st: EventState| self.by_state[st as usize];
        let live = (
            s(EventState::Succeeded),
            s(EventState::Scheduled) + s(EventState::Running),
            s(EventState::Failed) + s(EventState::Expired),
            s(EventState::Cancelled),
        );
        match self.done {
            Some((success, failed, cancelled, _)) if live.1 == 0 => (success, 0, failed, cancelled),
            _ => live,
        }
    }
}

/// One schedule as its latest record defines it.
#[derive(Clone, Debug)]
pub struct ScheduleRow {
    /// The event name of its occurrences.
    pub name: String,
    /// `cron …` or `every …ms`.
    pub rule: String,
    /// Its catch-up policy's name.
    pub catch_up: &'static str,
    /// The occurrence its latest record published.
    pub occurrence: Option<EventId>,
    /// That occurrence's time, Unix epoch ms (a retry of it moves its due time, not this).
    pub occurrence_ms: i64,
}

/// Attempts started, failures and publishes in one minute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Events published.
    pub published: u64,
    /// Attempts started.
    pub attempts: u64,
    /// Attempts that failed (retried or dropped).
    pub failures: u64,
}

/// A segment as the view read it.
#[derive(Clone, Debug, Default)]
pub struct SegmentRow {
    /// Its id.
    pub id: u64,
    /// The file's length when it was last read.
    pub file_bytes: u64,
    /// Where reading stopped: the end of its last valid record.
    pub end: u64,
    /// Records read.
    pub records: u64,
    /// Its format version.
    pub version: u32,
    /// Whether compaction wrote it.
    pub compacted: bool,
    /// The smallest and largest event ids its records name (`u64::MAX, 0` for none).
    pub min_id: u64,
    /// See `min_id`.
    pub max_id: u64,
    /// Whether it holds a record about a job as a whole (a cancel of a job, a job-done),
    /// which names no event.
    pub job_records: bool,
    /// Records read, by kind code.
    kinds: [u64; 16],
    /// The sequence number of the last record applied.
    last_seq: u64,
}

impl SegmentRow {
    /// Segment `id` with header `header`, its file `len` bytes long, before any record.
    fn new(id: u64, header: &crate::format::SegmentHeader, len: u64) -> SegmentRow {
        SegmentRow {
            id,
            file_bytes: len,
            end: header.len() as u64,
            version: header.format_version,
            compacted: header.flags & crate::format::FLAG_COMPACTED != 0,
            min_id: u64::MAX,
            ..SegmentRow::default()
        }
    }
}

/// One event as a page shows it: the view's columns and what its publish record adds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EventLine {
    /// Its id (a number in JSON).
    pub id: EventId,
    /// Its name.
    pub name: String,
    /// Its state's name.
    pub state: &'static str,
    /// Attempts started (saturates at 255 in the view).
    pub attempts: u32,
    /// Next due time while scheduled, else the last one, Unix epoch ms (second precision).
    pub due_ms: i64,
    /// Whether it is a dead letter.
    pub dead: bool,
    /// From the publish record: when it was published, Unix epoch ms.
    pub published_ms: i64,
    /// Its job.
    pub job: Option<JobId>,
    /// Its key, if any (lossy UTF-8).
    pub key: Option<String>,
    /// Its priority.
    pub priority: i8,
    /// Its body's length.
    pub body_bytes: u64,
}

/// Which events a page lists: every set field must match.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Only this name.
    pub name: Option<String>,
    /// Only this state.
    pub state: Option<EventState>,
    /// Only events published with this key.
    pub key: Option<Vec<u8>>,
    /// Only events of this job.
    pub job: Option<JobId>,
    /// Only dead letters.
    pub dead: bool,
    /// Ids above this one (the page's cursor).
    pub after: u64,
    /// At most this many.
    pub limit: usize,
}

/// What [`View::refresh`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// Nothing new.
    Same,
    /// Records were appended and applied.
    Grew,
    /// A segment the view read changed otherwise: build the view again.
    Rebuild,
}

/// See the module documentation.
pub struct View {
    storage: Arc<dyn Storage>,
    chunks: BTreeMap<u64, Box<Chunk>>,
    names: Vec<NameCounts>,
    name_ids: HashMap<Box<str>, u16>,
    /// Segment ids by the slot the chunks store.
    segment_ids: Vec<u64>,
    segment_slots: HashMap<u64, u16>,
    segments: BTreeMap<u64, SegmentRow>,
    files: HashMap<u64, Arc<dyn StorageFile>>,
    jobs: BTreeMap<u64, JobRow>,
    /// Runs of consecutive ids pushed as one job: first id → (last id, job).
    job_runs: BTreeMap<u64, (u64, u64)>,
    /// Keyed events by a hash of their key.
    keys: HashMap<u64, Vec<u64>>,
    /// Dead letters in the order they died (a redriven one stays here, its flag cleared).
    dead: Vec<(u64, Position)>,
    dead_count: u64,
    paused: BTreeSet<String>,
    schedules: BTreeMap<String, ScheduleRow>,
    activity: BTreeMap<i64, Activity>,
    by_state: [u64; 7],
    kinds: [u64; 16],
    records: u64,
    max_event: u64,
    last_record_ms: i64,
    compactions_followed: u64,
    /// While `build` reads: each segment's first read checks it whole.
    building: bool,
    /// Bytes of frames this refresh may still read, and whether it stopped for want of them.
    budget: u64,
    more: bool,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("dir", &self.storage.path())
            .field("records", &self.records)
            .field("events", &self.events())
            .finish_non_exhaustive()
    }
}

fn hash_key(key: &[u8]) -> u64 {
    // FNV-1a: stable, and the view never meets keys chosen to collide with each other's
    // hashes in a way that matters (a match is checked against the publish record).
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Opens segment `id`'s file; `None` when it is gone (compaction removed it).
fn open_file(storage: &dyn Storage, id: u64) -> Result<Option<Arc<dyn StorageFile>>> {
    match storage.open(&segment_name(id)) {
        Ok(f) => Ok(Some(Arc::from(f))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(
            "open segment",
            storage.path().join(segment_name(id)),
            e,
        )),
    }
}

/// Reads into `buf` from `offset` until it is full or the file ends; the bytes read.
fn read_up_to(file: &dyn StorageFile, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Hands every event id `record` names to `f`: a publish's events and the event it
/// replaces or redrives, or the one event of any other record.
fn ids_named(record: &Record<'_>, mut f: impl FnMut(u64)) {
    match record {
        Record::Publish(p) => {
            p.events().for_each(|e| f(e.id.0));
            if let Some(r) = p.options().and_then(|o| o.replaces) {
                f(r.0);
            }
        }
        other => other.event().into_iter().for_each(|e| f(e.0)),
    }
}

/// The job `record` is about as a whole: a cancel of the job, its job-done record.
fn job_named(record: &Record<'_>) -> Option<JobId> {
    match record {
        Record::Cancel(c) => match c.target {
            CancelTarget::Job(j) => Some(j),
            CancelTarget::Event(_) => None,
        },
        Record::JobDone(d) => Some(d.job),
        _ => None,
    }
}

fn due_seconds(ms: i64) -> u32 {
    ms.div_euclid(1000).clamp(0, i64::from(u32::MAX)) as u32
}

fn state_of(flags: u8) -> Option<EventState> {
    match flags & STATE_BITS {
        1 => Some(EventState::Scheduled),
        2 => Some(EventState::Running),
        3 => Some(EventState::Succeeded),
        4 => Some(EventState::Failed),
        5 => Some(EventState::Cancelled),
        6 => Some(EventState::Expired),
        _ => None,
    }
}

/// The segments a read should see, in id order: those the manifest lists and any above its
/// last (a roll the manifest does not show yet), never what an interrupted compaction left.
fn listed(storage: &dyn Storage) -> Result<Vec<u64>> {
    let names = storage
        .list()
        .map_err(|e| Error::io("list data directory", storage.path(), e))?;
    let mut ids: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    ids.sort_unstable();
    if let Some(m) = Log::manifest(storage)?
        && let Some(&last) = m.segments.last()
    {
        ids.retain(|id| *id > last || m.segments.binary_search(id).is_ok());
    }
    Ok(ids)
}

impl View {
    /// Reads the whole directory in `storage`.
    pub fn build(storage: Arc<dyn Storage>) -> Result<View> {
        let mut view = View {
            storage,
            chunks: BTreeMap::new(),
            names: Vec::new(),
            name_ids: HashMap::new(),
            segment_ids: Vec::new(),
            segment_slots: HashMap::new(),
            segments: BTreeMap::new(),
            files: HashMap::new(),
            jobs: BTreeMap::new(),
            job_runs: BTreeMap::new(),
            keys: HashMap::new(),
            dead: Vec::new(),
            dead_count: 0,
            paused: BTreeSet::new(),
            schedules: BTreeMap::new(),
            activity: BTreeMap::new(),
            by_state: [0; 7],
            kinds: [0; 16],
            records: 0,
            max_event: 0,
            last_record_ms: i64::MIN,
            compactions_followed: 0,
            building: true,
            budget: u64::MAX,
            more: false,
        };
        view.refresh()?;
        view.building = false;
        Ok(view)
    }

    /// Reads what was appended since the last read (see [`Refreshed`]).
    pub fn refresh(&mut self) -> Result<Refreshed> {
        self.refresh_bounded(u64::MAX).map(|(r, _)| r)
    }

    /// Like [`refresh`](View::refresh), but reads about `max_bytes` of appended frames at
    /// most (at least one frame), so that a caller holding a lock for it can let readers in
    /// between; `true` when there is more to read.
    pub fn refresh_bounded(&mut self, max_bytes: u64) -> Result<(Refreshed, bool)> {
        self.budget = max_bytes.max(1);
        self.more = false;
        let r = self.refresh_all();
        self.budget = u64::MAX;
        Ok((r?, self.more))
    }

    fn refresh_all(&mut self) -> Result<Refreshed> {
        let ids = listed(&*self.storage)?;
        let last_read = self.segments.keys().next_back().copied();
        // A segment read before the last one changes only by compaction, which rewrites it
        // shorter or removes it: what it drops is finished events (their publish among
        // them, or the event stays as it was), so the view drops the events whose publish
        // went and finds the new offsets of the records kept.
        let mut removed = Vec::new();
        let mut rewritten = Vec::new();
        for (&id, seg) in &self.segments {
            let len = self.file_len(id)?;
            if ids.binary_search(&id).is_err() || len.is_none() {
                removed.push(id);
            } else if len.is_some_and(|len| {
                // The last one read may have grown since (but was not compacted then).
                if Some(id) == last_read {
                    len < seg.file_bytes
                } else {
                    len != seg.file_bytes
                }
            }) {
                rewritten.push(id);
            }
        }
        let compacted = !removed.is_empty() || !rewritten.is_empty();
        if compacted {
            self.compacted(&removed, &rewritten)?;
        }
        if let Some(last) = last_read
            && ids
                .iter()
                .any(|&id| id < last && !self.segments.contains_key(&id))
        {
            return Ok(Refreshed::Rebuild);
        }
        let last_read = self.segments.keys().next_back().copied();
        let before = self.records;
        for id in ids {
            if last_read.is_some_and(|l| id < l) {
                continue;
            }
            let Some(len) = self.file_len(id)? else {
                continue;
            };
            self.read_segment(id, len)?;
        }
        Ok(if self.records == before && !compacted {
            Refreshed::Same
        } else {
            Refreshed::Grew
        })
    }

    /// Follows a compaction that removed segments `removed` and rewrote `rewritten`.
    fn compacted(&mut self, removed: &[u64], rewritten: &[u64]) -> Result<()> {
        // Where each record the rewritten segments kept lies now: publishes by event, and
        // the records that made dead letters.
        let mut publishes: HashMap<u64, u32> = HashMap::new();
        let mut deaths: HashMap<(u64, u64), Position> = HashMap::new();
        let mut rows = Vec::new();
        // Letters that died before; those records applied below push their own.
        let dead_before = std::mem::take(&mut self.dead);
        for &id in rewritten {
            self.files.remove(&id);
            let Some(len) = self.file_len(id)? else {
                continue;
            };
            let old = self.segments.remove(&id).expect("a segment read");
            self.uncount(&old);
            let path = self.storage.path().join(segment_name(id));
            let Some(file) = self.file(id)? else {
                continue;
            };
            let mut row = SegmentRow::new(id, &read_header(&*file, &path)?, len);
            let storage = self.storage.clone();
            Log::scan_alone(&*storage, id, false, |pos, record| {
                row.end = pos.offset + (FRAME_HEADER_LEN + record.encoded_len()) as u64;
                if pos.seq > old.last_seq {
                    // Appended after the view's last read of it, before its seal: new.
                    self.apply(pos, record, &mut row);
                } else {
                    self.note_record(pos, record, &mut row);
                }
                match record {
                    Record::Publish(p) if !p.options().is_some_and(|o| o.restates) => {
                        for e in p.events() {
                            publishes.insert(e.id.0, pos.offset as u32);
                        }
                    }
                    Record::Ack(_) | Record::Drop(_) => {
                        if let Some(e) = record.event() {
                            deaths.insert((e.0, id), pos);
                        }
                    }
                    _ => {}
                }
                Ok(())
            })?;
            rows.push(row);
        }
        for &id in removed {
            self.files.remove(&id);
            if let Some(old) = self.segments.remove(&id) {
                self.uncount(&old);
            }
        }
        let slot_of = |id: &u64| self.segment_slots.get(id).copied();
        let gone: Vec<u16> = removed.iter().filter_map(slot_of).collect();
        let moved: Vec<u16> = rewritten.iter().filter_map(slot_of).collect();
        let mut vanished = Vec::new();
        for (&no, c) in self.chunks.iter_mut() {
            for s in 0..CHUNK {
                if c.flags[s] & STATE_BITS == 0 {
                    continue;
                }
                let id = no * CHUNK as u64 + s as u64;
                if gone.contains(&c.segment[s]) {
                    vanished.push(id);
                } else if moved.contains(&c.segment[s]) {
                    match publishes.get(&id) {
                        Some(&offset) => c.offset[s] = offset,
                        None => vanished.push(id),
                    }
                }
            }
        }
        for id in vanished {
            self.forget_event(id);
        }
        // Dead letters whose record moved, or went (then the letter went with it).
        let died_since = std::mem::take(&mut self.dead);
        for (id, pos) in dead_before {
            if removed.contains(&pos.segment) {
                continue;
            }
            if rewritten.contains(&pos.segment) {
                if let Some(&now) = deaths.get(&(id, pos.segment)) {
                    self.dead.push((id, now));
                }
                continue;
            }
            self.dead.push((id, pos));
        }
        self.dead.extend(died_since);
        for row in rows {
            self.segments.insert(row.id, row);
        }
        self.chunks
            .retain(|_, c| c.flags.iter().any(|f| f & STATE_BITS != 0));
        // A job the log no longer names: its events went, and no job-done record holds it.
        self.jobs
            .retain(|_, j| j.done.is_some() || j.by_state.iter().any(|&n| n > 0));
        self.compactions_followed += 1;
        Ok(())
    }

    /// Takes the records of segment row `row` out of the view's counts.
    fn uncount(&mut self, row: &SegmentRow) {
        for (k, n) in row.kinds.iter().enumerate() {
            self.kinds[k] -= n;
        }
        self.records -= row.records;
    }

    /// Removes event `id` from the view and its counts (its publish was compacted away).
    fn forget_event(&mut self, id: u64) {
        let job = self.job_of(id);
        let Some((c, s)) = self.slot_mut(id) else {
            return;
        };
        let state = (c.flags[s] & STATE_BITS) as usize;
        let dead = c.flags[s] & DEAD != 0;
        let name = c.name[s] as usize;
        c.flags[s] = 0;
        self.by_state[state] -= 1;
        self.names[name].by_state[state] -= 1;
        if dead {
            self.dead_count -= 1;
            self.names[name].dead -= 1;
        }
        if let Some(j) = job.and_then(|j| self.jobs.get_mut(&j)) {
            j.by_state[state] -= 1;
        }
    }

    fn file(&mut self, id: u64) -> Result<Option<Arc<dyn StorageFile>>> {
        if let Some(f) = self.files.get(&id) {
            return Ok(Some(f.clone()));
        }
        let file = open_file(&*self.storage, id)?;
        if let Some(f) = &file {
            self.files.insert(id, f.clone());
        }
        Ok(file)
    }

    /// The length of segment `id`'s file as the directory has it now (a file held open
    /// may have been replaced by compaction's rename).
    fn file_len(&self, id: u64) -> Result<Option<u64>> {
        let Some(file) = open_file(&*self.storage, id)? else {
            return Ok(None);
        };
        file.len().map(Some).map_err(|e| {
            Error::io(
                "stat segment",
                self.storage.path().join(segment_name(id)),
                e,
            )
        })
    }

    /// Applies the records of segment `id` past where the view stopped in it.
    fn read_segment(&mut self, id: u64, len: u64) -> Result<()> {
        let Some(file) = self.file(id)? else {
            return Ok(());
        };
        let path = self.storage.path().join(segment_name(id));
        let header = read_header(&*file, &path)?;
        let from = self.segments.get(&id).map_or(0, |s| s.end);
        let mut row = self
            .segments
            .remove(&id)
            .unwrap_or_else(|| SegmentRow::new(id, &header, len));
        row.file_bytes = len;
        if from == 0 && self.building {
            // The first read of a segment checks it as `verify` does, but as the last
            // segment is (no seal required): one before the last may have been rolled just
            // now, its seal not yet written.
            let storage = self.storage.clone();
            Log::scan_alone(&*storage, id, false, |pos, record| {
                self.apply(pos, record, &mut row);
                row.end = pos.offset + (FRAME_HEADER_LEN + record.encoded_len()) as u64;
                Ok(())
            })?;
        } else {
            self.read_frames_from(&*file, &path, &mut row, len)?;
        }
        self.segments.insert(id, row);
        Ok(())
    }

    /// Applies the frames of the segment of `row` from `row.end` on, up to the first that
    /// is not whole and valid (the end of what the writer has written so far, or its seal).
    fn read_frames_from(
        &mut self,
        file: &dyn StorageFile,
        path: &std::path::Path,
        row: &mut SegmentRow,
        len: u64,
    ) -> Result<()> {
        const CHUNK_BYTES: usize = 1 << 20;
        let mut buf = Vec::new();
        // Bytes a frame cut by the previous read needs, read whole next.
        let mut need = 0;
        loop {
            let at = row.end;
            if at >= len {
                return Ok(());
            }
            if self.budget == 0 {
                self.more = true;
                return Ok(());
            }
            let step = (self.budget.min(CHUNK_BYTES as u64) as usize).max(FRAME_HEADER_LEN);
            let want = ((len - at) as usize).min(need.max(step));
            buf.resize(want, 0);
            let n =
                read_up_to(file, &mut buf, at).map_err(|e| Error::io("read segment", path, e))?;
            let mut used = 0;
            let more = loop {
                if used == n {
                    // This read ended at a frame boundary: the file may hold more.
                    break (n == want && row.end < len).then_some(0);
                }
                match decode_frame(&buf[used..n], row.id) {
                    Ok(Some(frame)) if frame.kind != RecordKind::Seal => {
                        let pos = Position {
                            segment: row.id,
                            offset: at + used as u64,
                            seq: frame.seq,
                        };
                        let frame_len = frame.len();
                        let Ok(record) = Record::decode_in(row.version, frame.kind, frame.payload)
                        else {
                            break None;
                        };
                        self.apply(pos, &record, row);
                        used += frame_len;
                        row.end = at + used as u64;
                    }
                    // A frame cut by the end of this read, which the file holds whole: read
                    // on from it, all of it at once.
                    Err(crate::format::FrameError::Truncated { needed, .. })
                        if n == want && at + (used + needed) as u64 <= len =>
                    {
                        break Some(needed);
                    }
                    // The end of data, a seal, a frame not yet whole, or one that fails its
                    // check: what follows is not written yet.
                    _ => break None,
                }
            };
            self.budget = self.budget.saturating_sub(used as u64);
            match more {
                Some(needed) if used > 0 || needed > n => need = needed,
                _ => return Ok(()),
            }
        }
    }

    fn segment_slot(&mut self, id: u64) -> u16 {
        if let Some(&s) = self.segment_slots.get(&id) {
            return s;
        }
        let slot = self.segment_ids.len().min(u16::MAX as usize) as u16;
        if (slot as usize) == self.segment_ids.len() {
            self.segment_ids.push(id);
        }
        self.segment_slots.insert(id, slot);
        slot
    }

    fn name_slot(&mut self, name: &str) -> u16 {
        if let Some(&n) = self.name_ids.get(name) {
            return n;
        }
        if self.names.len() >= NAMES_MAX {
            if self.names.len() == NAMES_MAX {
                self.names.push(NameCounts {
                    name: OTHER_NAME.into(),
                    ..NameCounts::default()
                });
            }
            return NAMES_MAX as u16;
        }
        let n = self.names.len() as u16;
        self.names.push(NameCounts {
            name: name.to_owned(),
            ..NameCounts::default()
        });
        self.name_ids.insert(name.into(), n);
        n
    }

    fn slot(&self, id: u64) -> Option<(&Chunk, usize)> {
        let c = self.chunks.get(&(id / CHUNK as u64))?;
        let s = (id % CHUNK as u64) as usize;
        (c.flags[s] & STATE_BITS != 0).then_some((c, s))
    }

    fn slot_mut(&mut self, id: u64) -> Option<(&mut Chunk, usize)> {
        let c = self.chunks.get_mut(&(id / CHUNK as u64))?;
        let s = (id % CHUNK as u64) as usize;
        (c.flags[s] & STATE_BITS != 0).then_some((c, s))
    }

    /// The state of event `id`, if the view holds it.
    pub fn state(&self, id: EventId) -> Option<EventState> {
        self.slot(id.0).and_then(|(c, s)| state_of(c.flags[s]))
    }

    fn job_of(&self, id: u64) -> Option<u64> {
        let (_, &(last, job)) = self.job_runs.range(..=id).next_back()?;
        (id <= last).then_some(job)
    }

    /// Moves event `id` to state `to`, keeping every count.
    fn set_state(&mut self, id: u64, to: EventState) {
        let job = self.job_of(id);
        let Some((c, s)) = self.slot_mut(id) else {
            return;
        };
        let from = (c.flags[s] & STATE_BITS) as usize;
        c.flags[s] = (c.flags[s] & !STATE_BITS) | to as u8;
        let name = c.name[s] as usize;
        self.by_state[from] -= 1;
        self.by_state[to as usize] += 1;
        self.names[name].by_state[from] -= 1;
        self.names[name].by_state[to as usize] += 1;
        if let Some(j) = job.and_then(|j| self.jobs.get_mut(&j)) {
            j.by_state[from] -= 1;
            j.by_state[to as usize] += 1;
        }
    }

    fn pending(&self, id: u64) -> bool {
        self.state(EventId(id)).is_some_and(EventState::is_pending)
    }

    fn set_dead(&mut self, id: u64, dead: bool) {
        let Some((c, s)) = self.slot_mut(id) else {
            return;
        };
        if (c.flags[s] & DEAD != 0) == dead {
            return;
        }
        c.flags[s] ^= DEAD;
        let name = c.name[s] as usize;
        if dead {
            self.dead_count += 1;
            self.names[name].dead += 1;
        } else {
            self.dead_count -= 1;
            self.names[name].dead -= 1;
        }
    }

    fn activity_at(&mut self, ms: i64) -> &mut Activity {
        let minute = ms.div_euclid(60_000);
        // Forget minutes older than the window behind the newest one.
        let newest = self
            .activity
            .keys()
            .next_back()
            .copied()
            .unwrap_or(minute)
            .max(minute);
        while let Some(&oldest) = self.activity.keys().next()
            && oldest < newest - ACTIVITY_MINUTES
        {
            self.activity.remove(&oldest);
        }
        self.activity.entry(minute).or_default()
    }

    /// Counts `record` at `pos` in the view and in its segment's row, and notes what it
    /// names: the ids and jobs [`history`](View::history) chooses segments by.
    fn note_record(&mut self, pos: Position, record: &Record<'_>, row: &mut SegmentRow) {
        let kind = (record.kind() as usize).min(15);
        self.records += 1;
        self.kinds[kind] += 1;
        row.records += 1;
        row.kinds[kind] += 1;
        row.last_seq = pos.seq;
        ids_named(record, |id| {
            row.min_id = row.min_id.min(id);
            row.max_id = row.max_id.max(id);
        });
        row.job_records |= job_named(record).is_some();
    }

    fn apply(&mut self, pos: Position, record: &Record<'_>, row: &mut SegmentRow) {
        self.note_record(pos, record, row);
        let at = crate::reader::record_time_ms(record);
        self.last_record_ms = self.last_record_ms.max(at);
        match record {
            Record::Publish(p) => self.apply_publish(pos, p),
            Record::Attempt(a) => {
                self.activity_at(a.started_ms).attempts += 1;
                let job_cancelled = self
                    .job_of(a.event.0)
                    .and_then(|j| self.jobs.get(&j))
                    .is_some_and(|j| j.cancelled);
                let state = self.state(a.event);
                if let Some((c, s)) = self.slot_mut(a.event.0) {
                    let attempts = u32::from(c.attempts[s]);
                    let fresh = a.attempt > attempts || attempts == u8::MAX as u32;
                    if fresh
                        && state.is_some_and(EventState::is_pending)
                        && !(job_cancelled && state == Some(EventState::Scheduled))
                    {
                        c.attempts[s] = a.attempt.min(u8::MAX as u32) as u8;
                        self.set_state(a.event.0, EventState::Running);
                    }
                }
            }
            Record::Retry(r) => {
                self.activity_at(r.failed_ms).failures += 1;
                let state = self.state(r.event);
                if let Some((c, s)) = self.slot_mut(r.event.0) {
                    let attempts = u32::from(c.attempts[s]);
                    let ok = match state {
                        Some(EventState::Running) => r.attempt >= attempts.min(255),
                        Some(EventState::Scheduled) => r.attempt > attempts,
                        _ => false,
                    };
                    if ok {
                        c.attempts[s] = r.attempt.max(attempts).min(255) as u8;
                        c.due_s[s] = due_seconds(r.next_due_ms);
                        self.set_state(r.event.0, EventState::Scheduled);
                    }
                }
            }
            Record::Ack(a) => {
                if self.finish(a.event.0, a.attempt, EventState::Succeeded)
                    && a.outcome == AckOutcome::Ignored
                {
                    self.kill(a.event.0, pos);
                }
            }
            Record::Drop(d) => {
                self.activity_at(d.dropped_ms).failures += 1;
                let to = match d.reason {
                    DropReason::Exhausted | DropReason::MaxAge => EventState::Failed,
                    DropReason::Expired => EventState::Expired,
                };
                if self.finish(d.event.0, d.attempt, to) {
                    self.kill(d.event.0, pos);
                }
            }
            Record::Cancel(c) => match c.target {
                CancelTarget::Event(e) => {
                    if self.pending(e.0) {
                        self.set_state(e.0, EventState::Cancelled);
                    }
                }
                CancelTarget::Job(j) => {
                    self.cancel_job(j.0);
                }
            },
            Record::Pause(p) => {
                if p.paused {
                    self.paused.insert(p.name.to_owned());
                } else {
                    self.paused.remove(p.name);
                }
            }
            Record::PurgeDead(_) => {
                for (id, _) in std::mem::take(&mut self.dead) {
                    self.set_dead(id, false);
                }
            }
            Record::JobDone(d) => {
                let job = self.jobs.entry(d.job.0).or_insert_with(|| JobRow {
                    id: d.job.0,
                    ..JobRow::default()
                });
                job.done = Some((
                    u64::from(d.success),
                    u64::from(d.failed),
                    u64::from(d.cancelled),
                    d.finished_ms,
                ));
            }
        }
    }

    /// Ends pending event `id` in state `to`; whether it was pending.
    fn finish(&mut self, id: u64, attempt: u32, to: EventState) -> bool {
        if !self.pending(id) {
            return false;
        }
        if let Some((c, s)) = self.slot_mut(id) {
            c.attempts[s] = c.attempts[s].max(attempt.min(255) as u8);
        }
        self.set_state(id, to);
        true
    }

    fn kill(&mut self, id: u64, pos: Position) {
        self.set_dead(id, true);
        self.dead.push((id, pos));
    }

    fn cancel_job(&mut self, job: u64) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        j.cancelled = true;
        let runs: Vec<(u64, u64)> = self
            .job_runs
            .range(j.first..=j.last)
            .filter(|(_, (_, owner))| *owner == job)
            .map(|(&first, &(last, _))| (first, last))
            .collect();
        for (first, last) in runs {
            for id in first..=last {
                if self.state(EventId(id)) == Some(EventState::Scheduled) {
                    self.set_state(id, EventState::Cancelled);
                }
            }
        }
    }

    fn apply_publish(&mut self, pos: Position, p: &crate::format::Publish<'_>) {
        let options = p.options().copied();
        if let Some(o) = options {
            if o.restates {
                return;
            }
            if let Some(replaced) = o.replaces {
                if o.redrives {
                    // The new event is written below; the dead letter is forgotten.
                    self.set_dead(replaced.0, false);
                } else if self.pending(replaced.0) {
                    self.set_state(replaced.0, EventState::Cancelled);
                }
            }
        }
        if let Some(def) = p.schedule() {
            if def.removed {
                if let Some(old) = self.schedules.remove(def.id)
                    && let Some(occ) = old.occurrence
                    && self.pending(occ.0)
                {
                    self.set_state(occ.0, EventState::Cancelled);
                }
                return;
            }
            let first = p.events().next();
            self.schedules.insert(
                def.id.to_owned(),
                ScheduleRow {
                    name: first.map(|e| e.name.to_owned()).unwrap_or_default(),
                    rule: crate::render::schedule_rule(def.cron, def.every_ms),
                    catch_up: crate::render::catch_up_name(def.catch_up),
                    occurrence: first.map(|e| e.id),
                    occurrence_ms: first.map_or(0, |e| e.due_ms),
                },
            );
        }
        let segment = self.segment_slot(pos.segment);
        let keyed = options.is_some_and(|o| !o.key.is_empty());
        let mut run: Option<(u64, u64)> = None;
        for e in p.events() {
            let id = e.id.0;
            if id == 0 || self.slot(id).is_some() {
                continue;
            }
            self.max_event = self.max_event.max(id);
            let name = self.name_slot(e.name);
            let c = self
                .chunks
                .entry(id / CHUNK as u64)
                .or_insert_with(Chunk::new);
            let s = (id % CHUNK as u64) as usize;
            c.flags[s] = EventState::Scheduled as u8 | if keyed { KEYED } else { 0 };
            c.attempts[s] = 0;
            c.name[s] = name;
            c.due_s[s] = due_seconds(e.due_ms);
            c.segment[s] = segment;
            c.offset[s] = pos.offset.min(u64::from(u32::MAX)) as u32;
            self.by_state[EventState::Scheduled as usize] += 1;
            self.names[name as usize].by_state[EventState::Scheduled as usize] += 1;
            if let Some(o) = options.filter(|o| !o.key.is_empty()) {
                self.keys.entry(hash_key(o.key)).or_default().push(id);
            }
            if let Some(job) = p.job {
                let j = self.jobs.entry(job.0).or_insert_with(|| JobRow {
                    id: job.0,
                    first: id,
                    last: id,
                    published_ms: p.published_ms,
                    ..JobRow::default()
                });
                j.first = j.first.min(id);
                j.last = j.last.max(id);
                j.by_state[EventState::Scheduled as usize] += 1;
                run = match run {
                    Some((first, last)) if last + 1 == id => Some((first, id)),
                    Some((first, last)) => {
                        self.job_runs.insert(first, (last, job.0));
                        Some((id, id))
                    }
                    None => Some((id, id)),
                };
            }
        }
        if let (Some((first, last)), Some(job)) = (run, p.job) {
            self.job_runs.insert(first, (last, job.0));
        }
        let n = p.events().count() as u64;
        self.activity_at(p.published_ms).published += n;
    }

    // ---- what pages ask ----

    /// How many times a refresh found segments compacted and followed.
    pub fn compactions_followed(&self) -> u64 {
        self.compactions_followed
    }

    /// The directory.
    pub fn dir(&self) -> &std::path::Path {
        self.storage.path()
    }

    /// Events the view holds.
    pub fn events(&self) -> u64 {
        self.by_state.iter().sum()
    }

    /// Events by state code.
    pub fn by_state(&self) -> [u64; 7] {
        self.by_state
    }

    /// Per name that has events in the view, sorted by name.
    pub fn names(&self) -> Vec<&NameCounts> {
        let mut v: Vec<&NameCounts> = self
            .names
            .iter()
            .filter(|n| n.by_state.iter().any(|&c| c > 0))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Dead letters held.
    pub fn dead_count(&self) -> u64 {
        self.dead_count
    }

    /// Paused names.
    pub fn paused(&self) -> impl Iterator<Item = &str> {
        self.paused.iter().map(String::as_str)
    }

    /// Schedules by id.
    pub fn schedules(&self) -> impl Iterator<Item = (&str, &ScheduleRow)> {
        self.schedules.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The time of a schedule's pending occurrence, Unix epoch ms; `None` once it
    /// finished (until an engine publishes the next one).
    pub fn schedule_next_due_ms(&self, s: &ScheduleRow) -> Option<i64> {
        let id = s.occurrence?;
        self.pending(id.0).then_some(s.occurrence_ms)
    }

    /// Jobs, newest first, after (below) job `before` when given, at most `limit`.
    pub fn jobs(&self, before: Option<u64>, limit: usize) -> Vec<&JobRow> {
        self.jobs
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .take(limit)
            .map(|(_, j)| j)
            .collect()
    }

    /// Jobs the view knows.
    pub fn job_count(&self) -> u64 {
        self.jobs.len() as u64
    }

    /// One job.
    pub fn job(&self, id: JobId) -> Option<&JobRow> {
        self.jobs.get(&id.0)
    }

    /// The segments, in id order.
    pub fn segments(&self) -> impl Iterator<Item = &SegmentRow> {
        self.segments.values()
    }

    /// Bytes of the segment files, as last read.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.file_bytes).sum()
    }

    /// Records read, and by kind.
    pub fn records(&self) -> (u64, Vec<(&'static str, u64)>) {
        (
            self.records,
            RecordKind::ALL
                .iter()
                .map(|k| (k.name(), self.kinds[(*k as usize).min(15)]))
                .collect(),
        )
    }

    /// The latest time any record carries, Unix epoch ms (`None` for an empty log).
    pub fn last_record_ms(&self) -> Option<i64> {
        (self.last_record_ms != i64::MIN).then_some(self.last_record_ms)
    }

    /// Per minute (Unix epoch minutes) from `from_minute` on.
    pub fn activity(&self, from_minute: i64) -> impl Iterator<Item = (i64, Activity)> + '_ {
        self.activity.range(from_minute..).map(|(&m, &a)| (m, a))
    }

    /// Scheduled events due from `from_ms` on, counted per bucket for each window
    /// `(width_ms, buckets)` of `windows` (one walk over every event for all of them), and
    /// those due before `from_ms` (overdue: the engine is behind, stopped, or the name is
    /// paused).
    pub fn due_histograms(&self, from_ms: i64, windows: &[(i64, usize)]) -> (u64, Vec<Vec<u64>>) {
        let from_s = from_ms.div_euclid(1000);
        let widths: Vec<(i64, i64)> = windows
            .iter()
            .map(|&(width_ms, buckets)| {
                let width_s = (width_ms / 1000).max(1);
                (width_s, from_s + width_s * buckets as i64)
            })
            .collect();
        let mut counts: Vec<Vec<u64>> = windows.iter().map(|&(_, n)| vec![0; n]).collect();
        let mut overdue = 0;
        for c in self.chunks.values() {
            for s in 0..CHUNK {
                if c.flags[s] & STATE_BITS != EventState::Scheduled as u8 {
                    continue;
                }
                let due = i64::from(c.due_s[s]);
                if due < from_s {
                    overdue += 1;
                    continue;
                }
                for (k, &(width_s, end_s)) in widths.iter().enumerate() {
                    if due < end_s {
                        counts[k][((due - from_s) / width_s) as usize] += 1;
                    }
                }
            }
        }
        (overdue, counts)
    }

    /// The events `q` selects, lowest ids first, with what their publish records add.
    pub fn query(&self, q: &Query) -> Result<Vec<EventLine>> {
        let name = match &q.name {
            Some(n) => match self.name_ids.get(n.as_str()) {
                Some(&slot) => Some(slot),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let mut range = (q.after.saturating_add(1), u64::MAX);
        if let Some(job) = q.job {
            match self.jobs.get(&job.0) {
                Some(j) => range = (range.0.max(j.first), j.last),
                None => return Ok(Vec::new()),
            }
        }
        let keyed: Option<Vec<u64>> = q.key.as_ref().map(|k| {
            let mut ids = self.keys.get(&hash_key(k)).cloned().unwrap_or_default();
            ids.sort_unstable();
            ids.dedup();
            ids
        });
        let matches = |c: &Chunk, s: usize| {
            let flags = c.flags[s];
            flags & STATE_BITS != 0
                && q.state.is_none_or(|st| flags & STATE_BITS == st as u8)
                && name.is_none_or(|n| c.name[s] == n)
                && (!q.dead || flags & DEAD != 0)
                && (q.key.is_none() || flags & KEYED != 0)
        };
        let mut ids = Vec::new();
        let want = q.limit.max(1);
        // Candidates, checked against the key by their publish records below.
        let consider = |id: u64, ids: &mut Vec<u64>| -> bool {
            if let Some((c, s)) = self.slot(id)
                && matches(c, s)
                && q.job.is_none_or(|j| self.job_of(id) == Some(j.0))
            {
                ids.push(id);
            }
            ids.len() >= want
        };
        match &keyed {
            Some(list) => {
                for &id in list.iter().filter(|&&id| id >= range.0 && id <= range.1) {
                    if consider(id, &mut ids) {
                        break;
                    }
                }
            }
            None => {
                'chunks: for (&no, c) in self.chunks.range(range.0 / CHUNK as u64..) {
                    let base = no * CHUNK as u64;
                    for s in 0..CHUNK {
                        let id = base + s as u64;
                        if id < range.0 {
                            continue;
                        }
                        if id > range.1 {
                            break 'chunks;
                        }
                        if matches(c, s) && q.job.is_none_or(|j| self.job_of(id) == Some(j.0)) {
                            ids.push(id);
                            if ids.len() >= want {
                                break 'chunks;
                            }
                        }
                    }
                }
            }
        }
        let mut lines = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(line) = self.line(EventId(id))? else {
                continue;
            };
            if let Some(k) = &q.key
                && line.key.as_deref().map(str::as_bytes) != Some(k.as_slice())
                && !self.key_bytes_match(EventId(id), k)?
            {
                continue;
            }
            lines.push(line);
        }
        Ok(lines)
    }

    fn key_bytes_match(&self, id: EventId, key: &[u8]) -> Result<bool> {
        let mut found = false;
        self.with_publish(id, |p| {
            found = p.options().is_some_and(|o| o.key == key);
        })?;
        Ok(found)
    }

    /// Reads the publish record of event `id` and hands it to `f`.
    fn with_publish(
        &self,
        id: EventId,
        f: impl FnOnce(&crate::format::Publish<'_>),
    ) -> Result<bool> {
        let Some((c, s)) = self.slot(id.0) else {
            return Ok(false);
        };
        let segment = self.segment_ids[c.segment[s] as usize];
        let offset = u64::from(c.offset[s]);
        let mut found = false;
        self.read_at(segment, offset, |record| {
            if let Record::Publish(p) = record {
                found = true;
                f(p);
            }
        })?;
        Ok(found)
    }

    /// Reads the record whose frame starts at `offset` of segment `segment`.
    pub fn read_at(&self, segment: u64, offset: u64, f: impl FnOnce(&Record<'_>)) -> Result<()> {
        let path = self.storage.path().join(segment_name(segment));
        let file = match self.files.get(&segment) {
            Some(f) => f.clone(),
            // Compacted away since the view read it: the next refresh follows.
            None => match open_file(&*self.storage, segment)? {
                Some(f) => f,
                None => return Ok(()),
            },
        };
        let version = self
            .segments
            .get(&segment)
            .map_or(crate::format::FORMAT_VERSION, |s| s.version);
        let mut head = [0u8; FRAME_HEADER_LEN];
        read_exact_at(&*file, &mut head, offset)
            .map_err(|e| Error::io("read segment", &path, e))?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > crate::format::MAX_FRAME_LEN {
            return Ok(());
        }
        let mut buf = vec![0u8; FRAME_HEADER_LEN + len];
        read_exact_at(&*file, &mut buf, offset).map_err(|e| Error::io("read segment", &path, e))?;
        if let Ok(Some(frame)) = decode_frame(&buf, segment)
            && let Ok(record) = Record::decode_in(version, frame.kind, frame.payload)
        {
            f(&record);
        }
        Ok(())
    }

    /// One event's line.
    pub fn line(&self, id: EventId) -> Result<Option<EventLine>> {
        let Some((c, s)) = self.slot(id.0) else {
            return Ok(None);
        };
        let flags = c.flags[s];
        let mut line = EventLine {
            id,
            name: self.names[c.name[s] as usize].name.clone(),
            state: state_of(flags).map_or("?", EventState::name),
            attempts: u32::from(c.attempts[s]),
            due_ms: i64::from(c.due_s[s]) * 1000,
            dead: flags & DEAD != 0,
            published_ms: 0,
            job: None,
            key: None,
            priority: 0,
            body_bytes: 0,
        };
        self.with_publish(id, |p| {
            line.published_ms = p.published_ms;
            line.job = p.job;
            if let Some(e) = p.events().find(|e| e.id == id) {
                line.body_bytes = e.body.len() as u64;
                line.name = e.name.to_owned();
            }
            if let Some(o) = p.options() {
                line.priority = o.priority;
                if !o.key.is_empty() {
                    line.key = Some(String::from_utf8_lossy(o.key).into_owned());
                }
            }
        })?;
        Ok(Some(line))
    }

    /// The dead letters, newest first: id, and where the record that killed it lies.
    pub fn dead_letters(&self) -> impl Iterator<Item = (EventId, Position)> + '_ {
        self.dead
            .iter()
            .rev()
            .filter(|(id, _)| self.slot(*id).is_some_and(|(c, s)| c.flags[s] & DEAD != 0))
            .map(|&(id, pos)| (EventId(id), pos))
    }

    /// Every record about event `id` in log order (its publish, attempts, retries, outcome,
    /// a cancel of it or of its job), read from the segments whose records can name it.
    pub fn history(&self, id: EventId) -> Result<Vec<(Position, Vec<u8>, RecordKind)>> {
        let job = self.job_of(id.0).map(JobId);
        let mut out = Vec::new();
        for seg in self.segments.values() {
            let names_it = seg.min_id <= id.0 && id.0 <= seg.max_id;
            if !(names_it || job.is_some() && seg.job_records) {
                continue;
            }
            Log::scan_alone(&*self.storage, seg.id, false, |pos, record| {
                let mut about = job.is_some() && job_named(record) == job;
                ids_named(record, |named| about |= named == id.0);
                if about && pos.offset < seg.end {
                    let mut payload = Vec::with_capacity(record.encoded_len());
                    record.encode(&mut payload);
                    out.push((pos, payload, record.kind()));
                }
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// The body of event `id`: its publish's, or that of the latest record that restated it.
    pub fn body(&self, id: EventId) -> Result<Option<Vec<u8>>> {
        Ok(self.body_in(id, &self.history(id)?))
    }

    /// The body of event `id` as its `history` (from [`history`](View::history)) tells it.
    pub fn body_in(
        &self,
        id: EventId,
        history: &[(Position, Vec<u8>, RecordKind)],
    ) -> Option<Vec<u8>> {
        let mut body = None;
        for (pos, payload, kind) in history {
            if let Ok(Record::Publish(p)) =
                Record::decode_in(self.version_of(pos.segment), *kind, payload)
                && let Some(e) = p.events().find(|e| e.id == id)
                && (body.is_none() || p.options().is_some_and(|o| o.restates))
            {
                body = Some(e.body.to_vec());
            }
        }
        body
    }

    /// The format version of segment `id`, as read.
    pub fn version_of(&self, id: u64) -> u32 {
        self.segments
            .get(&id)
            .map_or(crate::format::FORMAT_VERSION, |s| s.version)
    }

    /// Bytes of memory the view holds, estimated from its tables.
    pub fn memory_bytes(&self) -> u64 {
        let chunks = self.chunks.len() * std::mem::size_of::<Chunk>();
        let keys: usize = self.keys.values().map(|v| v.capacity() * 8 + 32).sum();
        (chunks + keys + self.dead.capacity() * 32 + self.jobs.len() * 128) as u64
    }
}
