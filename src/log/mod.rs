//! The write-ahead segment log: durable appends with group commit, recovery on open, and
//! reads of records by position.
//!
//! - `segment.rs`: segment files, their names, creation and the set readers map.
//! - `writer.rs`: the writer thread and group commit.
//! - `recovery.rs`: the scan on open, torn tails and corruption.

mod compact;
mod directory;
mod recovery;
mod segment;
mod writer;

pub use compact::{Compacted, SealedSegment, SegmentReader};
pub(crate) use writer::copy_error;
pub use recovery::Recovery;
pub(crate) use recovery::read_header;
pub use segment::{is_temp_name, parse_segment_name, segment_name};

use crate::error::{Error, Result};
use crate::format::Manifest;
use crate::histogram::{Histogram, RECORDS_BOUNDS};
use crate::format::{FRAME_HEADER_LEN, Record, RecordKind, decode_frame, get_u32};
use crate::storage::{LockGuard, Storage};
use crate::sync::Mutex;
use crate::sync::thread::{self, JoinHandle};
use directory::{Directory, new_directory_id};
use segment::{SegmentBytes, SegmentSlot, install, new_header, prepare_file};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use writer::{Active, Completion, Queue, Request, Shared, Writer};

/// When an append counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// An append returns only once its record is on disk (`fdatasync` returned). Concurrent
    /// appenders share one sync. The default.
    #[default]
    Sync,
    /// An append returns once its record is written to the operating system; the log syncs at
    /// least every interval. A crash of the machine (not of the process) can lose the
    /// appends of the last interval. `flush` and `close` sync everything.
    Periodic(Duration),
}

/// How the log is laid out and synced.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Size of a segment file, pre-allocated with zeros (default 64 MiB): the largest one.
    /// Segments start at `first_segment_bytes` and each new one doubles the size of the one
    /// before, up to this, so a small directory stays small.
    pub segment_bytes: u64,
    /// Size of the first segment of a directory (default 1 MiB; at most `segment_bytes`).
    pub first_segment_bytes: u64,
    /// When appends return.
    pub durability: Durability,
    /// Prepare the next segment on a background thread so a roll does not wait for
    /// zero-filling (default true; crash tests turn it off so that the order of storage
    /// operations is deterministic).
    pub prepare_in_background: bool,
    /// The retention to record in the directory's manifest, in ms, for readers and the CLI
    /// to know what is live; `None` keeps what the manifest says (default `None`: the engine
    /// sets it).
    pub retention_ms: Option<u64>,
    /// The flow limits to record in the manifest, sorted by name; `None` keeps what the
    /// manifest says (default `None`: the engine sets them).
    pub limits: Option<Vec<crate::format::NameLimits>>,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_bytes: 64 << 20,
            first_segment_bytes: 1 << 20,
            durability: Durability::Sync,
            prepare_in_background: true,
            retention_ms: None,
            limits: None,
        }
    }
}

/// Smallest segment size accepted.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

impl LogOptions {
    /// The size of the first segment of a directory.
    fn first_segment_len(&self) -> u64 {
        self.first_segment_bytes
            .clamp(MIN_SEGMENT_BYTES, self.segment_bytes.max(MIN_SEGMENT_BYTES))
    }

    /// The size of the segment after one of `len` bytes: twice as large, up to
    /// `segment_bytes`.
    pub(crate) fn segment_len_after(&self, len: u64) -> u64 {
        len.saturating_mul(2).clamp(
            self.first_segment_len(),
            self.segment_bytes.max(MIN_SEGMENT_BYTES),
        )
    }
}

/// The largest sequence number a writer hands out. Far beyond any real log (2^63 records), it
/// leaves room to number a group of records without overflow, whatever a log's last one says.
pub const SEQ_MAX: u64 = 1 << 63;

/// Records queued by [`Log::submit_all`]: wait for them to be durable.
#[must_use = "records are durable only once `wait` returns their positions"]
pub struct Pending(Arc<Completion>);

impl Pending {
    /// Waits until the records are durable; their positions, or the error that failed them
    /// (a failed sync poisons the log: nothing queued after it is written either).
    pub fn wait(self) -> Result<Vec<Position>> {
        self.0.wait()
    }
}

/// Work to do once records are durable (or failed), on whichever thread completes them: what
/// an abandoned future leaves to the writer (see [`Durable::then_or_now`]).
pub type Then = Box<dyn FnOnce(&Result<Vec<Position>>) + Send>;

/// Records queued by [`Log::submit_all_async`]: a future of their positions, complete when
/// they are durable (or failed). Dropping it does not take the records back: they are
/// written all the same; [`then_or_now`](Durable::then_or_now) says what to do then.
#[must_use = "records are durable only once the future completes"]
pub struct Durable {
    done: Arc<Completion>,
    /// Records not queued yet: the queue was full.
    waiting: Option<Box<Encoded>>,
    shared: Arc<Shared>,
}

/// Records validated and encoded for the writer's queue.
struct Encoded {
    /// Each record's kind and payload length, in order.
    kinds: Vec<(RecordKind, usize)>,
    /// The payloads, back to back.
    payloads: Vec<u8>,
}

/// Queues `encoded` for the writer, completed through `done`. With the queue full: waits for
/// room if `wait`; else registers `waker` (if any) to be woken when the writer makes room, and
/// hands the records back (`Ok(Some)`) for a later try.
fn enqueue(
    shared: &Shared,
    encoded: Encoded,
    done: &Arc<Completion>,
    wait: bool,
    waker: Option<&std::task::Waker>,
) -> Result<Option<Encoded>> {
    let bytes = encoded.payloads.len() + encoded.kinds.len() * FRAME_HEADER_LEN;
    let wake = {
        let mut q = shared.queue.lock();
        loop {
            if let Some(reason) = &q.poisoned {
                return Err(Error::Poisoned {
                    reason: reason.clone(),
                });
            }
            if q.closing {
                return Err(Error::Closed);
            }
            if q.queued_bytes == 0 || q.queued_bytes + bytes <= writer::max_queued_bytes() {
                break;
            }
            if !wait {
                if let Some(waker) = waker {
                    q.space_wakers.push(waker.clone());
                }
                return Ok(Some(encoded));
            }
            shared.space.wait(&mut q);
        }
        let first_seq = q.next_seq;
        if first_seq > SEQ_MAX {
            return Err(Error::LimitExceeded {
                what: "sequence number",
                found: first_seq,
                max: SEQ_MAX,
            });
        }
        q.next_seq += encoded.kinds.len() as u64;
        q.queued_bytes += bytes;
        q.requests.push(Request {
            first_seq,
            records: encoded.kinds,
            payloads: encoded.payloads,
            done: done.clone(),
        });
        // While the writer gathers a group, only the append that completes it wakes it.
        q.requests.len() >= q.wake_at_requests
    };
    if wake {
        shared.work.notify_one();
    }
    Ok(None)
}

impl Durable {
    /// Runs `then` with the records' outcome once they are durable or failed: at once if they
    /// are, else on the writer's thread before it wakes this future. For a future dropped
    /// before it completed, whose records must still be applied. `then` must be quick and
    /// must not wait for the log.
    pub fn then_or_now(&self, then: Then) {
        self.done.then_or_now(then);
    }
}

impl std::future::Future for Durable {
    type Output = Result<Vec<Position>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        if let Some(encoded) = this.waiting.take() {
            match enqueue(&this.shared, *encoded, &this.done, false, Some(cx.waker())) {
                Ok(None) => {}
                Ok(Some(encoded)) => {
                    this.waiting = Some(Box::new(encoded));
                    return std::task::Poll::Pending;
                }
                Err(e) => return std::task::Poll::Ready(Err(e)),
            }
        }
        this.done.poll_result(cx)
    }
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Durable")
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

/// Where a record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The segment's id.
    pub segment: u64,
    /// Byte offset of the record's frame in the segment file.
    pub offset: u64,
    /// The record's sequence number.
    pub seq: u64,
}

/// Counters of the log's work.
#[derive(Debug)]
pub(crate) struct LogStats {
    records: AtomicU64,
    syncs: AtomicU64,
    rolls: AtomicU64,
    /// Records written since the last sync (only the writer thread changes it).
    unsynced: AtomicU64,
    /// How long each data sync took (`afterlog_fsync_duration_seconds`).
    fsync: Histogram,
    /// Records each data sync made durable (`afterlog_records_per_sync`).
    records_per_sync: Histogram,
}

impl Default for LogStats {
    /// The facade's handles are taken here, once: from the recorder installed when the log
    /// opens (see docs/OBSERVABILITY.md).
    fn default() -> Self {
        LogStats {
            records: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            rolls: AtomicU64::new(0),
            unsynced: AtomicU64::new(0),
            fsync: Histogram::seconds(metrics::histogram!("afterlog_fsync_duration_seconds")),
            records_per_sync: Histogram::new(
                RECORDS_BOUNDS,
                1.0,
                metrics::histogram!("afterlog_records_per_sync"),
            ),
        }
    }
}

impl LogStats {
    fn add_records(&self, n: u64) {
        self.records.fetch_add(n, Ordering::Relaxed);
        self.unsynced.fetch_add(n, Ordering::Relaxed);
    }
    fn add_sync(&self, took: std::time::Duration) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.fsync.record_duration(took);
        let records = self.unsynced.swap(0, Ordering::Relaxed);
        if records > 0 {
            self.records_per_sync.record(records);
        }
    }
    fn add_roll(&self) {
        self.rolls.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of the log's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogCounters {
    /// Records written since open.
    pub records: u64,
    /// Data syncs since open.
    pub syncs: u64,
    /// Segments started since open.
    pub rolls: u64,
}

/// A record read back from the log.
#[derive(Debug)]
pub struct RecordBytes {
    bytes: SegmentBytes,
    kind: RecordKind,
    seq: u64,
}

impl RecordBytes {
    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The record's kind.
    pub fn kind(&self) -> RecordKind {
        self.kind
    }

    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[FRAME_HEADER_LEN..]
    }

    /// The decoded record.
    pub fn record(&self) -> Result<Record<'_>> {
        Record::decode(self.kind, self.payload()).map_err(|e| Error::invalid(e.to_string()))
    }
}

/// The write-ahead log of one data directory.
pub struct Log {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Held from open to close.
    lock: Mutex<Option<LockGuard>>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.shared.storage.path())
            .finish()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Log {
    /// Opens (recovers) the log in `storage`: takes the directory lock, scans every segment,
    /// hands each record in order to `visit`, cuts a torn tail, and starts the writer.
    pub fn open(
        storage: Arc<dyn Storage>,
        options: LogOptions,
        mut visit: impl FnMut(Position, &Record<'_>) -> Result<()>,
    ) -> Result<(Log, Recovery)> {
        if options.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(Error::LimitExceeded {
                what: "segment bytes (minimum)",
                found: options.segment_bytes,
                max: MIN_SEGMENT_BYTES,
            });
        }
        let dir = storage.path().to_path_buf();
        let lock = take_lock(&*storage)?;
        let recovered = recovery::recover(&*storage, false, &mut visit)?;
        let report = recovered.report;
        if report.last_seq > SEQ_MAX {
            // No log gets there (2^63 records); a damaged or foreign one may say it did.
            return Err(Error::LimitExceeded {
                what: "sequence number",
                found: report.last_seq,
                max: SEQ_MAX,
            });
        }
        // The manifest lists every segment recovery kept (a format-1 directory gets its first
        // one now, with a new id), and the settings this open runs with.
        let mut manifest = report.manifest.clone().unwrap_or_else(|| Manifest {
            directory_id: new_directory_id(),
            generation: 0,
            retention_ms: None,
            segment_bytes: None,
            segments: Vec::new(),
            limits: None,
        });
        manifest.segments = recovered
            .sealed
            .iter()
            .map(|s| s.id)
            .chain(recovered.active.as_ref().map(|(slot, ..)| slot.id))
            .collect();
        manifest.segment_bytes = Some(options.segment_bytes);
        if options.retention_ms.is_some() {
            manifest.retention_ms = options.retention_ms;
        }
        if options.limits.is_some() {
            manifest.limits = options.limits.clone();
        }
        let directory = Directory::open(&*storage, recovered.manifest_file, manifest)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                next_seq: report.last_seq + 1,
                ..Queue::default()
            }),
            work: Default::default(),
            space: Default::default(),
            storage: storage.clone(),
            segments: Default::default(),
            stats: Default::default(),
            floors: [
                AtomicU64::new(report.event_id_floor),
                AtomicU64::new(report.job_id_floor),
            ],
            directory,
            panicked: Mutex::new(None),
        });
        let last_sealed = recovered.sealed.last().map(|s| s.id);
        for slot in recovered.sealed {
            shared.segments.insert(slot);
        }
        let active = match recovered.active {
            Some((slot, header, offset, records)) => {
                let capacity = slot
                    .file
                    .len()
                    .map_err(|e| Error::io("stat segment", &dir, e))?;
                shared.segments.insert(slot.clone());
                Active {
                    id: slot.id,
                    slot,
                    offset,
                    capacity,
                    floors: (header.event_id_floor, header.job_id_floor),
                    data_start: header.len() as u64,
                    records,
                    seals: header.has_seals(),
                }
            }
            None => {
                // A new directory, or one whose last segment was sealed by a roll that
                // stopped before the next segment was installed.
                let id = last_sealed.map_or(1, |last| last + 1);
                let len = match last_sealed.and_then(|last| shared.segments.get(last)) {
                    Some(slot) => options.segment_len_after(
                        slot.file
                            .len()
                            .map_err(|e| Error::io("stat segment", &dir, e))?,
                    ),
                    None => options.first_segment_len(),
                };
                let file = prepare_file(&*storage, id, len)?;
                let floors = shared.id_floors();
                let header = new_header(
                    id,
                    report.last_seq + 1,
                    now_ms(),
                    floors,
                    shared.directory.id(),
                );
                install(&*storage, &*file, &header)?;
                shared.directory.add_segment(&*storage, id)?;
                let slot = Arc::new(SegmentSlot::active(id, file));
                shared.segments.insert(slot.clone());
                Active {
                    id,
                    slot,
                    offset: header.len() as u64,
                    capacity: len,
                    floors,
                    data_start: header.len() as u64,
                    records: 0,
                    seals: true,
                }
            }
        };
        // The spare is prepared once the active segment is half full (`Writer`).
        let mut writer = Writer {
            shared: shared.clone(),
            active,
            options,
            clock_ms: now_ms,
            spare: None,
        };
        writer.prepare_spare_if_half_full();
        let handle = thread::Builder::new()
            .name("afterlog-writer".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    // Under a guard: a panic anywhere in the writer fails every waiting and
                    // later append with an error that names it, never a hang.
                    let ran =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.run()));
                    if let Err(payload) = ran {
                        writer::fail_after_panic(&shared, writer::panicked(payload));
                    }
                }
            })
            .map_err(|e| Error::io("start writer thread", &dir, e))?;
        Ok((
            Log {
                shared,
                writer: Mutex::new(Some(handle)),
                lock: Mutex::new(Some(lock)),
            },
            report,
        ))
    }

    /// Scans the log in `storage` without taking its lock or writing anything, handing each
    /// record in order to `visit`. Works beside a running engine: a torn or in-progress tail
    /// of the last segment is reported, not cut.
    pub fn scan(
        storage: &dyn Storage,
        mut visit: impl FnMut(Position, &Record<'_>) -> Result<()>,
    ) -> Result<Recovery> {
        Ok(recovery::recover(storage, true, &mut visit)?.report)
    }

    /// Scans segment `id` of `storage` on its own, as if it were the whole log, read only:
    /// what `afterlog verify` checks each segment with. `sealed` says whether the segment
    /// must prove its end with a seal (any but the last, in format 2).
    pub fn scan_alone(
        storage: &dyn Storage,
        id: u64,
        sealed: bool,
        mut visit: impl FnMut(Position, &Record<'_>) -> Result<()>,
    ) -> Result<Recovery> {
        recovery::scan_alone(storage, id, sealed, &mut visit)
    }

    /// The storage the log lives in (what a reader beside it opens).
    pub fn storage(&self) -> Arc<dyn Storage> {
        self.shared.storage.clone()
    }

    /// The manifest of the directory in `storage`, if it has one (format 2).
    pub fn manifest(storage: &dyn Storage) -> Result<Option<Manifest>> {
        directory::read_manifest(storage)
    }

    /// The manifest file's bytes and the manifest they hold, if the directory has one.
    pub(crate) fn manifest_bytes(storage: &dyn Storage) -> Result<Option<(Vec<u8>, Manifest)>> {
        Ok(directory::read_manifest_bytes(storage)?.map(|(bytes, file)| (bytes, file.manifest)))
    }

    /// Appends one record; returns once it is durable (see [`Durability`]).
    pub fn append(&self, record: &Record<'_>) -> Result<Position> {
        let positions = self.append_all(std::slice::from_ref(record))?;
        Ok(positions[0])
    }

    /// Appends records with consecutive sequence numbers; returns once all are durable.
    /// Every record is validated first: on a bad one, nothing is written.
    pub fn append_all(&self, records: &[Record<'_>]) -> Result<Vec<Position>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.submit_all(records)?.wait()
    }

    /// Queues records for the writer like [`append_all`](Log::append_all), without waiting:
    /// the returned [`Pending`] says when they are durable (or why they never will be). The
    /// records are validated and encoded before this returns; on a bad one, nothing is
    /// queued. Records of one caller's submissions keep the order of the calls.
    pub fn submit_all(&self, records: &[Record<'_>]) -> Result<Pending> {
        self.submit(records, Completion::default()).map(Pending)
    }

    /// [`submit_all`](Log::submit_all) for a future: the returned [`Durable`] completes when
    /// the records are durable, woken by the writer (no thread waits for it). Should the
    /// queue be full (only under `Durability::Periodic`, or with 64 MiB of records waiting),
    /// the records wait in the future, which queues them once the writer makes room: no
    /// thread waits for that either. Dropped before they are queued, they are never written.
    pub fn submit_all_async(&self, records: &[Record<'_>]) -> Result<Durable> {
        let done = Arc::new(Completion::asynchronous());
        let encoded = self.encode(records)?;
        let waiting = match encoded {
            None => {
                done.complete(Ok(Vec::new()));
                None
            }
            Some(encoded) => enqueue(&self.shared, encoded, &done, false, None)?,
        };
        Ok(Durable {
            done,
            waiting: waiting.map(Box::new),
            shared: self.shared.clone(),
        })
    }

    /// [`submit_all_async`](Log::submit_all_async), but the records are queued before this
    /// returns (waiting for room on this thread, for at most one write): for a caller that
    /// hands the outcome to [`Durable::then_or_now`] and drops the future.
    pub fn submit_all_async_queued(&self, records: &[Record<'_>]) -> Result<Durable> {
        let done = self.submit(records, Completion::asynchronous())?;
        Ok(Durable {
            done,
            waiting: None,
            shared: self.shared.clone(),
        })
    }

    fn submit(&self, records: &[Record<'_>], done: Completion) -> Result<Arc<Completion>> {
        let done = Arc::new(done);
        match self.encode(records)? {
            None => done.complete(Ok(Vec::new())),
            Some(encoded) => {
                let waited = enqueue(&self.shared, encoded, &done, true, None)?;
                debug_assert!(waited.is_none(), "a waiting enqueue always queues");
            }
        }
        Ok(done)
    }

    /// Validates and encodes records for the queue; `None` for no records.
    fn encode(&self, records: &[Record<'_>]) -> Result<Option<Encoded>> {
        if records.is_empty() {
            return Ok(None);
        }
        if records.len() as u64 > writer::MAX_GROUP_RECORDS {
            return Err(Error::LimitExceeded {
                what: "records in one append",
                found: records.len() as u64,
                max: writer::MAX_GROUP_RECORDS,
            });
        }
        let mut capacity = 0;
        for record in records {
            record.validate()?;
            capacity += record.encoded_len();
        }
        // All payloads in one buffer; each record's length is what its encoding wrote.
        let mut payloads = Vec::with_capacity(capacity);
        let mut kinds = Vec::with_capacity(records.len());
        for record in records {
            let start = payloads.len();
            record.encode(&mut payloads);
            kinds.push((record.kind(), payloads.len() - start));
        }
        Ok(Some(Encoded { kinds, payloads }))
    }

    /// Returns once everything appended before the call is durable.
    pub fn flush(&self) -> Result<()> {
        self.sync_request(false)
    }

    /// Syncs everything appended so far and seals the active segment (if it holds any
    /// record), so that compaction can reach every record written before the call. An
    /// active segment without records is sealed too when the id floors rose above those in
    /// its header (see [`raise_id_floors`](Log::raise_id_floors)): the next segment's header
    /// makes them durable.
    pub fn roll(&self) -> Result<()> {
        self.sync_request(true)
    }

    fn sync_request(&self, roll: bool) -> Result<()> {
        let done = Arc::new(Completion::default());
        {
            let mut q = self.shared.queue.lock();
            if let Some(reason) = &q.poisoned {
                return Err(Error::Poisoned {
                    reason: reason.clone(),
                });
            }
            if q.closing {
                return Err(Error::Closed);
            }
            q.flushes.push(done.clone());
            q.roll_requested |= roll;
        }
        self.shared.work.notify_one();
        done.wait().map(|_| ())
    }

    /// Reads the record whose frame starts at `offset` in `segment`, verifying its checksum.
    pub fn read(&self, segment: u64, offset: u64) -> Result<RecordBytes> {
        let storage = &*self.shared.storage;
        let slot = self
            .shared
            .segments
            .get(segment)
            .ok_or_else(|| Error::Corrupt {
                file: storage.path().join(segment_name(segment)),
                offset,
                reason: "no such segment".into(),
            })?;
        read_frame(storage, &slot, offset)
    }

    /// Raises the id floors written into the headers of segments created from now on: every
    /// event id below `event` and job id below `job` has been allocated.
    pub fn raise_id_floors(&self, event: u64, job: u64) {
        self.shared.floors[0].fetch_max(event, Ordering::Relaxed);
        self.shared.floors[1].fetch_max(job, Ordering::Relaxed);
    }

    /// The reason the log is poisoned, if it is.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.queue.lock().poisoned.clone()
    }

    /// Poisons the log: whatever is queued fails with `reason`, and so does every later
    /// append, flush and roll.
    pub(crate) fn poison(&self, reason: String) {
        self.shared.poison(reason);
    }

    /// The thread of the log that panicked outside the writer (the segment preparer), and
    /// the panic's message; the log is then poisoned.
    pub(crate) fn panicked(&self) -> Option<(String, String)> {
        self.shared.panicked.lock().clone()
    }

    /// The log's counters.
    pub fn counters(&self) -> LogCounters {
        let s = &self.shared.stats;
        LogCounters {
            records: s.records.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
            rolls: s.rolls.load(Ordering::Relaxed),
        }
    }

    /// How long each data sync took, in seconds.
    pub(crate) fn fsync_histogram(&self) -> &Histogram {
        &self.shared.stats.fsync
    }

    /// Records each data sync made durable.
    pub(crate) fn records_per_sync_histogram(&self) -> &Histogram {
        &self.shared.stats.records_per_sync
    }

    /// Bytes of the segment files on disk (the active one at its pre-sized length). A file
    /// whose length cannot be read counts as empty.
    pub fn disk_bytes(&self) -> u64 {
        self.shared
            .segments
            .all()
            .iter()
            .map(|s| s.file.len().unwrap_or(0))
            .sum()
    }

    /// The ids of the segments, in order.
    pub fn segment_ids(&self) -> Vec<u64> {
        self.shared.segments.all().iter().map(|s| s.id).collect()
    }

    /// Syncs everything, stops the writer and releases the directory lock; later appends
    /// fail with `Error::Closed`. Reads of sealed segments keep working.
    pub fn close(&self) -> Result<()> {
        let handle = self.writer.lock().take();
        let Some(handle) = handle else { return Ok(()) };
        let _release = ReleaseOnReturn(&self.lock);
        let flushed = self.flush();
        {
            let mut q = self.shared.queue.lock();
            q.closing = true;
            // Futures waiting for room fail with `Error::Closed` when next polled.
            q.wake_space();
        }
        self.shared.work.notify_one();
        self.shared.space.notify_all();
        let joined = handle.join();
        match (flushed, joined) {
            (_, Err(_)) => Err(Error::invalid("the log writer thread panicked")),
            (Err(Error::Closed), Ok(())) => Ok(()),
            (result, Ok(())) => result,
        }
    }
}

/// Attempts at the directory lock before `Error::Locked`, and the pause between them.
const LOCK_ATTEMPTS: u32 = 5;
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Takes the directory lock (on real files, the directory itself and `LOCK`: deleting or
/// replacing `LOCK` does not let a second writer in). It is taken before recovery, so a
/// refused open has removed nothing (not even the temporary files of the holder). A lock held
/// by another open fails within about 50 ms: a few retries ride out the moment when a process
/// that just closed the directory still shares the lock with a child it is forking (`flock`
/// locks are shared across `fork` until the child's `exec` closes its copy).
fn take_lock(storage: &dyn Storage) -> Result<LockGuard> {
    let dir = storage.path();
    for attempt in 1..=LOCK_ATTEMPTS {
        match storage
            .try_lock()
            .map_err(|e| Error::io("lock data directory", dir, e))?
        {
            Some(lock) => return Ok(lock),
            None if attempt < LOCK_ATTEMPTS => thread::sleep(LOCK_RETRY_PAUSE),
            None => {}
        }
    }
    Err(Error::Locked {
        dir: dir.to_path_buf(),
    })
}

/// Reads and verifies the frame at `offset` of one segment.
fn read_frame(storage: &dyn Storage, slot: &SegmentSlot, offset: u64) -> Result<RecordBytes> {
    let corrupt = |reason: String| Error::Corrupt {
        file: storage.path().join(segment_name(slot.id)),
        offset,
        reason,
    };
    let head = slot.read(storage, offset, FRAME_HEADER_LEN)?;
    let len = get_u32(&head, 0) as usize;
    if len == 0 || len > crate::format::MAX_PAYLOAD_LEN {
        return Err(corrupt(format!("no frame here (length {len})")));
    }
    let bytes = slot.read(storage, offset, FRAME_HEADER_LEN + len)?;
    match decode_frame(&bytes, slot.id) {
        Ok(Some(frame)) => {
            let (kind, seq) = (frame.kind, frame.seq);
            Ok(RecordBytes { bytes, kind, seq })
        }
        Ok(None) => Err(corrupt("no frame here (length 0)".into())),
        Err(e) => Err(corrupt(e.to_string())),
    }
}

/// Releases the directory lock when `close` returns, whatever it returns.
struct ReleaseOnReturn<'a>(&'a Mutex<Option<LockGuard>>);

impl Drop for ReleaseOnReturn<'_> {
    fn drop(&mut self) {
        self.0.lock().take();
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
