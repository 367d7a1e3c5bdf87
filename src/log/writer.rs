//! The writer thread and group commit.
//!
//! Appenders queue requests (one or more encoded records each) under a mutex, which also
//! hands out sequence numbers, so queue order is sequence order. The writer takes everything
//! queued, frames it into one buffer, writes it with one positioned write and makes it durable
//! with one `fdatasync`: one sync serves every record waiting at that moment (a *sync group*).
//! Then it completes each request with the positions of its records: it records every
//! outcome and wakes one waiter, and the waiters wake each other as a binary tree, so the
//! wake-ups overlap the writer's next write and sync instead of delaying it.
//!
//! Architecture Invariant: no request is completed with `Ok` before the sync that covers
//! all of its records returned `Ok` (under `Durability::Sync`). A failed write or sync
//! poisons the log: that request and every later one fails, and no sync is ever retried.

use super::directory::Directory;
use super::segment::{SegmentSlot, install, new_header, prepare_file, segment_name, zero_fill};
use super::{Durability, LogOptions, Position, Then};
use crate::error::{Error, Result};
use crate::format::{
    FRAME_HEADER_LEN, RecordKind, SEAL_FRAME_LEN, SEGMENT_HEADER_LEN_V2, Seal, encode_frame,
    encode_seal,
};
use crate::storage::{Storage, StorageFile};
use crate::sync::{Condvar, Mutex, MutexGuard, thread};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most records in one sync group: `sync_delta` is a u16.
pub(crate) const MAX_GROUP_RECORDS: u64 = u16::MAX as u64 + 1;
/// Most bytes framed before a write is issued; larger groups are written in pieces but still
/// synced once.
const MAX_WRITE_BYTES: usize = 8 << 20;
/// Queued bytes beyond which appenders wait (only reachable under `Durability::Periodic`).
const MAX_QUEUED_BYTES: usize = 64 << 20;
/// The longest the writer waits for the appenders of the last group to come back before it
/// writes a smaller group (see `Writer::gather`); it never waits longer than a sync took.
const MAX_GATHER: Duration = Duration::from_millis(1);
/// Syncs faster than this are not worth gathering for (see `Writer::gather`).
const MIN_GATHER_SYNC: Duration = Duration::from_micros(500);

/// One appender's records, waiting to be written.
pub(crate) struct Request {
    pub first_seq: u64,
    /// Each record's kind and payload length, in order.
    pub records: Vec<(RecordKind, usize)>,
    /// The records' payloads, back to back (one allocation however many records).
    pub payloads: Vec<u8>,
    pub done: Arc<Completion>,
}

/// Where an appender waits for its request's outcome. Completed once; later completions
/// are ignored, so an error path may fail everything it holds without tracking what was
/// already completed.
#[derive(Default)]
pub(crate) struct Completion {
    state: Mutex<CompletionState>,
    cv: Condvar,
    /// Awaited by a future ([`Durable`](super::Durable)) instead of a thread: completed
    /// with its waker by the writer itself, never through a wake tree.
    asynchronous: bool,
}

#[derive(Default)]
struct CompletionState {
    completed: bool,
    /// Set by the first `complete`, which then runs the `then`s before it records the result.
    completing: bool,
    result: Option<Result<Vec<Position>>>,
    /// Set when the outcome is handed over by a wake tree: the waiters this one wakes
    /// before returning.
    tree: Option<(Arc<WakeTree>, usize)>,
    /// The task polling an asynchronous completion.
    waker: Option<std::task::Waker>,
    then: Option<Then>,
}

/// The completions of one sync group, woken as a binary tree: the writer wakes the first;
/// the waiter at index `i` wakes those at `2i + 1` and `2i + 2` before it returns. So the
/// writer issues one wake-up per group, and the others overlap its next write and sync.
pub(crate) struct WakeTree {
    waiters: Vec<Arc<Completion>>,
}

impl WakeTree {
    /// Sets each waiter's outcome, then wakes the root. Every result must already be final:
    /// this is called only after the covering sync returned.
    pub fn complete(outcomes: Vec<(Arc<Completion>, Result<Vec<Position>>)>) {
        let mut waiters = Vec::with_capacity(outcomes.len());
        let mut results = Vec::with_capacity(outcomes.len());
        for (done, result) in outcomes {
            if done.asynchronous {
                // A waker costs the writer no more than a notification: woken here, each
                // one at once.
                done.complete(result);
            } else {
                waiters.push(done);
                results.push(result);
            }
        }
        if waiters.is_empty() {
            return;
        }
        let tree = Arc::new(WakeTree { waiters });
        // Record the outcomes from the last waiter to the first, without waking. A waiter
        // that is not asleep (or wakes spuriously) finds its outcome as soon as it is
        // recorded, before the root is woken, and wakes its children at once; their indices
        // are larger, so their outcomes are recorded by then. In the other order a child
        // asleep with no outcome yet would take that wake-up for a spurious one, sleep again,
        // and never be woken once its outcome is set.
        for (i, result) in results.into_iter().enumerate().rev() {
            let mut state = tree.waiters[i].state.lock();
            if state.completed {
                // Already failed (cannot happen on the paths that build trees): it will not
                // wake its children, so do it here.
                drop(state);
                tree.wake_children(i);
            } else {
                state.completed = true;
                state.result = Some(result);
                state.tree = Some((tree.clone(), i));
            }
        }
        tree.waiters[0].cv.notify_one();
    }

    fn wake_children(&self, i: usize) {
        for child in [2 * i + 1, 2 * i + 2] {
            if let Some(done) = self.waiters.get(child) {
                // Its outcome was recorded under its lock before its parent's (see
                // `complete`), so it either finds it without sleeping or is asleep and gets
                // this notification.
                done.cv.notify_one();
            }
        }
    }
}

impl Completion {
    /// A completion awaited by a future.
    pub fn asynchronous() -> Completion {
        Completion {
            asynchronous: true,
            ..Completion::default()
        }
    }

    pub fn complete(&self, result: Result<Vec<Position>>) {
        let mut state = self.state.lock();
        if state.completed || state.completing {
            return;
        }
        state.completing = true;
        // A `then` installed while another one runs is run too: the result is recorded only
        // once none is left, under the lock `then_or_now` looks at it with.
        while let Some(then) = state.then.take() {
            drop(state);
            run_then(then, &result);
            state = self.state.lock();
        }
        state.completed = true;
        state.result = Some(result);
        let waker = state.waker.take();
        drop(state);
        self.cv.notify_one();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Runs `then` with the outcome: now, on this thread, if the records are already durable
    /// (or failed) — else on the thread that completes them, before their waiter is woken.
    pub fn then_or_now(&self, then: Then) {
        let mut state = self.state.lock();
        if state.completed {
            // The waiter may have taken the result already: it saw the records durable.
            let taken = Ok(Vec::new());
            let result = state.result.as_ref().unwrap_or(&taken);
            run_then(then, result);
        } else {
            debug_assert!(state.then.is_none(), "one `then` per completion");
            state.then = Some(then);
        }
    }

    /// The future's side of [`wait`](Completion::wait).
    pub fn poll_result(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Vec<Position>>> {
        debug_assert!(
            self.asynchronous,
            "a thread's completion is woken through its condition variable"
        );
        let mut state = self.state.lock();
        match state.result.take() {
            Some(result) => std::task::Poll::Ready(result),
            None if state.completed => std::task::Poll::Ready(Err(Error::invalid(
                "the outcome of these records was taken already",
            ))),
            None => {
                if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    state.waker = Some(cx.waker().clone());
                }
                std::task::Poll::Pending
            }
        }
    }

    pub fn wait(&self) -> Result<Vec<Position>> {
        let mut state = self.state.lock();
        loop {
            if let Some(result) = state.result.take() {
                let tree = state.tree.take();
                drop(state);
                if let Some((tree, i)) = tree {
                    tree.wake_children(i);
                }
                return result;
            }
            self.cv.wait(&mut state);
        }
    }
}

/// The queue shared by appenders and the writer.
#[derive(Default)]
pub(crate) struct Queue {
    pub next_seq: u64,
    pub requests: Vec<Request>,
    pub queued_bytes: usize,
    pub closing: bool,
    pub poisoned: Option<String>,
    /// Requests for a sync of everything queued so far (`flush`).
    pub flushes: Vec<Arc<Completion>>,
    /// Seal the active segment (if it holds any record) once the flushes are done.
    pub roll_requested: bool,
    /// An appender wakes the writer only once this many requests are queued: 0 (always),
    /// except while the writer gathers a group (see `Writer::gather`).
    pub wake_at_requests: usize,
    /// Futures whose records wait for room in the queue (`Log::submit_all_async`).
    pub space_wakers: Vec<std::task::Waker>,
}

impl Queue {
    /// Wakes the futures waiting for room (the appenders waiting for it are notified on
    /// `Shared::space`): the queue shrank, or no record will ever be queued again.
    pub fn wake_space(&mut self) {
        for waker in self.space_wakers.drain(..) {
            waker.wake();
        }
    }
}

pub(crate) struct Shared {
    pub queue: Mutex<Queue>,
    /// Wakes the writer when work arrives.
    pub work: Condvar,
    /// Wakes appenders waiting for queue space.
    pub space: Condvar,
    pub storage: Arc<dyn Storage>,
    pub segments: super::segment::SegmentSet,
    pub stats: super::LogStats,
    /// The event and job id floors written into each new segment's header.
    pub floors: [std::sync::atomic::AtomicU64; 2],
    /// The manifest: the segments the directory holds, its id and settings.
    pub directory: Directory,
    /// The thread of the log that panicked outside the writer, and the panic's message.
    pub panicked: Mutex<Option<(String, String)>>,
}

impl Shared {
    /// Fails if the data directory was moved or replaced since the log locked it: the
    /// writer and compaction check before they create, rename or remove a file by name.
    pub fn check_lock(&self) -> Result<()> {
        self.storage
            .check_lock()
            .map_err(|e| Error::io("write to data directory", self.storage.path(), e))
    }

    /// Poisons the log from outside the writer thread: the writer fails whatever is queued
    /// and stops, and every later append fails.
    pub fn poison(&self, reason: String) {
        {
            let mut q = self.queue.lock();
            q.poisoned.get_or_insert(reason);
            q.wake_space();
        }
        self.work.notify_one();
        self.space.notify_all();
    }

    /// The current event and job id floors.
    pub fn id_floors(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.floors[0].load(Relaxed), self.floors[1].load(Relaxed))
    }
}

/// The writer's view of the active segment.
pub(crate) struct Active {
    pub slot: Arc<SegmentSlot>,
    pub id: u64,
    /// Where the next frame goes.
    pub offset: u64,
    /// The file's length: frames must end at or before it.
    pub capacity: u64,
    /// The event and job id floors its header carries.
    pub floors: (u64, u64),
    /// Where its records start (its header's length).
    pub data_start: u64,
    /// Records in it so far.
    pub records: u64,
    /// Whether it ends with a seal when it is sealed (format 2): its last `SEAL_FRAME_LEN`
    /// bytes are kept for the seal.
    pub seals: bool,
}

impl Active {
    /// Whether a roll has anything to seal: records, or a header whose id floors are below
    /// the log's (raised since it was written), which only a new segment's header can carry.
    fn worth_sealing(&self, floors: (u64, u64)) -> bool {
        self.offset > self.data_start || floors.0 > self.floors.0 || floors.1 > self.floors.1
    }

    /// Bytes at the end kept for the seal.
    fn reserved(&self) -> u64 {
        if self.seals { SEAL_FRAME_LEN as u64 } else { 0 }
    }
}

/// A segment file being prepared on a background thread: its id and file.
pub(crate) type Spare = thread::JoinHandle<Result<(u64, Arc<dyn StorageFile>)>>;

/// Prepares segment `id` of `len` bytes on a thread of its own, `afterlog-prepare`. `None`
/// when no thread can be had: the writer then prepares the segment itself when it rolls.
///
/// The preparation runs under a guard: a panic (in the storage layer, say) poisons the log
/// with an error that names the thread and the panic's message, so every later append fails
/// with it at once, rather than at the next roll or never.
pub(crate) fn spawn_spare(shared: Arc<Shared>, id: u64, len: u64) -> Option<Spare> {
    thread::Builder::new()
        .name("afterlog-prepare".into())
        .spawn(move || {
            let prepared =
                catch_unwind(AssertUnwindSafe(|| prepare_file(&*shared.storage, id, len)));
            match prepared {
                Ok(prepared) => prepared.map(|f| (id, f)),
                Err(payload) => {
                    let thread = "segment preparer".to_owned();
                    let message = crate::error::panic_message(payload);
                    let error = Error::Panicked {
                        thread: thread.clone(),
                        message: message.clone(),
                    };
                    shared.panicked.lock().get_or_insert((thread, message));
                    shared.poison(error.to_string());
                    Err(error)
                }
            }
        })
        .ok()
}

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub active: Active,
    pub options: LogOptions,
    pub clock_ms: fn() -> i64,
    /// A segment prepared ahead of need (its id and file).
    pub spare: Option<Spare>,
}

impl Writer {
    pub fn run(mut self) {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut last_sync = Instant::now();
        // Written but not yet synced (only under `Durability::Periodic`).
        let mut dirty = false;
        // Requests of the last group, whose appenders were just woken, and how long its
        // sync took.
        let mut last_group = (0, Duration::ZERO);
        loop {
            let (requests, flushes, roll_requested, closing) = {
                let mut q = self.shared.queue.lock();
                loop {
                    if let Some(reason) = q.poisoned.clone() {
                        let requests = std::mem::take(&mut q.requests);
                        let flushes = std::mem::take(&mut q.flushes);
                        drop(q);
                        fail_all(&requests, &flushes, &[], &reason);
                        return;
                    }
                    let interval = match self.options.durability {
                        Durability::Periodic(interval) if dirty => Some(interval),
                        _ => None,
                    };
                    let sync_due = interval.is_some_and(|i| last_sync.elapsed() >= i);
                    if !q.requests.is_empty() || !q.flushes.is_empty() || q.closing || sync_due {
                        break;
                    }
                    match interval {
                        Some(i) => {
                            let left = i
                                .saturating_sub(last_sync.elapsed())
                                .max(Duration::from_millis(1));
                            self.shared.work.wait_for(&mut q, left);
                        }
                        None => self.shared.work.wait(&mut q),
                    }
                }
                if matches!(self.options.durability, Durability::Sync) {
                    Self::gather(&self.shared, &mut q, last_group);
                }
                let requests = take_group(&mut q.requests);
                q.queued_bytes -= requests.iter().map(request_bytes).sum::<usize>();
                self.shared.space.notify_all();
                q.wake_space();
                (
                    requests,
                    std::mem::take(&mut q.flushes),
                    std::mem::take(&mut q.roll_requested),
                    q.closing && q.requests.is_empty(),
                )
            };
            let mut pending = Vec::with_capacity(requests.len());
            // A panic in the storage layer fails this group like an I/O error: every request
            // taken is failed, the log is poisoned, and nothing waits for a thread that is gone.
            let result = guarded(|| {
                self.write_group(&requests, &mut buf, &mut pending)
                    .and_then(|()| {
                        dirty |= !pending.is_empty();
                        let must_sync = match self.options.durability {
                            Durability::Sync => true,
                            Durability::Periodic(interval) => {
                                // Relaxed: an appender returns once its records are written.
                                WakeTree::complete(
                                    pending.drain(..).map(|(d, p)| (d, Ok(p))).collect(),
                                );
                                !flushes.is_empty() || closing || last_sync.elapsed() >= interval
                            }
                        };
                        if must_sync && dirty {
                            let started = Instant::now();
                            self.sync()?;
                            dirty = false;
                            last_sync = Instant::now();
                            last_group.1 = last_sync - started;
                        }
                        Ok(())
                    })
            });
            if let Err(e) = result {
                let reason = e.to_string();
                let (queued, queued_flushes) = {
                    let mut q = self.shared.queue.lock();
                    q.poisoned = Some(reason.clone());
                    self.shared.space.notify_all();
                    q.wake_space();
                    (
                        std::mem::take(&mut q.requests),
                        std::mem::take(&mut q.flushes),
                    )
                };
                fail_all(&requests, &flushes, &pending, &reason);
                fail_all(&queued, &queued_flushes, &[], &reason);
                return;
            }
            if roll_requested && self.active.worth_sealing(self.shared.id_floors()) {
                let next_seq = self.shared.queue.lock().next_seq;
                let first_unwritten = self.queued_first_seq().unwrap_or(next_seq);
                let rolled =
                    catch_unwind(AssertUnwindSafe(|| self.requested_roll(first_unwritten)))
                        .unwrap_or_else(|payload| Err(RollError::Fatal(panicked(payload))));
                match rolled {
                    Ok(()) => {}
                    Err(RollError::NoNextFile(e)) => {
                        // Nothing changed: the active segment goes on. The group's records
                        // are durable; only the flushes fail, with the reason.
                        WakeTree::complete(
                            pending
                                .into_iter()
                                .map(|(d, p)| (d, Ok(p)))
                                .chain(flushes.into_iter().map(|f| (f, Err(copy_error(&e)))))
                                .collect(),
                        );
                        last_group.0 = requests.len();
                        if closing {
                            self.finish();
                            return;
                        }
                        continue;
                    }
                    Err(RollError::Fatal(e)) => {
                        // The group's records are durable; only the flushes that asked for
                        // the roll fail, and the log is poisoned.
                        let reason = e.to_string();
                        self.shared.queue.lock().poisoned = Some(reason.clone());
                        WakeTree::complete(pending.into_iter().map(|(d, p)| (d, Ok(p))).collect());
                        fail_all(&[], &flushes, &[], &reason);
                        // The top of the loop fails whatever is queued behind, then stops.
                        continue;
                    }
                }
            }
            last_group.0 = requests.len();
            WakeTree::complete(
                pending
                    .into_iter()
                    .map(|(d, p)| (d, Ok(p)))
                    .chain(flushes.into_iter().map(|f| (f, Ok(Vec::new()))))
                    .collect(),
            );
            if closing {
                self.finish();
                return;
            }
        }
    }

    /// Waits, before taking a group, for the appenders of the last group to come back —
    /// when syncs are slow.
    ///
    /// A pipelined group commit splits its appenders in two halves that take turns: while
    /// one half's sync runs, the other half, just woken, queues again, and the writer takes
    /// that half alone as soon as the sync returns. Every sync then carries half the
    /// appenders. So when fewer requests are queued than the last group held, the writer
    /// waits until as many are (appenders wake it only then: one wake-up, not one per
    /// append), but no longer than the last sync took (capped at `MAX_GATHER`): at worst a
    /// group is delayed by one sync's time, at best its sync carries twice the records.
    ///
    /// Only when the last sync took `MIN_GATHER_SYNC` or more. On a disk that syncs in
    /// ~100 µs, waking and requeueing the appenders takes about as long as a sync, and the
    /// pipeline overlaps the two while a gathering writer would do them one after the other:
    /// measured with 64 appenders on 2 cores, gathering there cost 30 % (250k → 175k
    /// appends/s), while under slow syncs it gained 40–95 %. A single appender never waits
    /// (its group of one is always complete); flushes, rolls and close are never delayed.
    fn gather(shared: &Shared, q: &mut MutexGuard<'_, Queue>, last_group: (usize, Duration)) {
        let (target, sync_time) = last_group;
        if sync_time < MIN_GATHER_SYNC
            || q.requests.len() >= target
            || !q.flushes.is_empty()
            || q.roll_requested
            || q.closing
        {
            return;
        }
        let deadline = Instant::now() + sync_time.min(MAX_GATHER);
        q.wake_at_requests = target;
        while q.requests.len() < target && q.flushes.is_empty() && !q.closing {
            if shared.work.wait_until(q, deadline).timed_out() {
                break;
            }
        }
        q.wake_at_requests = 0;
    }

    /// Frames and writes every record of `requests`; each request moves to `unsynced` with its
    /// positions once written. Rolls to a new segment when one is full.
    fn write_group(
        &mut self,
        requests: &[Request],
        buf: &mut Vec<u8>,
        unsynced: &mut Vec<(Arc<Completion>, Vec<Position>)>,
    ) -> Result<()> {
        buf.clear();
        let mut buf_start = self.active.offset;
        let mut group_first = requests.first().map_or(0, |r| r.first_seq);
        let mut written: Vec<(usize, Vec<Position>)> = Vec::with_capacity(requests.len());
        for (i, request) in requests.iter().enumerate() {
            let mut positions = Vec::with_capacity(request.records.len());
            let mut payload_start = 0;
            for (j, &(kind, payload_len)) in request.records.iter().enumerate() {
                let payload = &request.payloads[payload_start..payload_start + payload_len];
                payload_start += payload_len;
                let seq = request.first_seq + j as u64;
                let frame_len = (FRAME_HEADER_LEN + payload.len()) as u64;
                let full =
                    self.active.offset + frame_len + self.active.reserved() > self.active.capacity;
                // A directory written by format 1 keeps appending to its format-1 segment
                // until a record of a later kind comes: that one starts a format-2 segment.
                let newer_kind = !self.active.seals && !kind.in_version(1);
                if full || newer_kind {
                    // Seal the full segment: what is buffered is written and synced first, so
                    // a sealed segment is always entirely durable.
                    self.write_buf(buf, buf_start)?;
                    self.sync()?;
                    // Complete nothing here: the caller completes every request once the
                    // whole group is durable, or fails them all.
                    for (k, pos) in written.drain(..) {
                        unsynced.push((requests[k].done.clone(), pos));
                    }
                    self.roll(seq, frame_len)?;
                    buf_start = self.active.offset;
                    group_first = seq;
                }
                let delta = u16::try_from(seq - group_first)
                    .expect("sync groups are capped at 65,536 records");
                encode_frame(buf, self.active.id, seq, kind, delta, payload);
                positions.push(Position {
                    segment: self.active.id,
                    offset: self.active.offset,
                    seq,
                });
                self.active.offset += frame_len;
                self.active.records += 1;
                if buf.len() >= MAX_WRITE_BYTES {
                    self.write_buf(buf, buf_start)?;
                    buf_start = self.active.offset;
                }
            }
            written.push((i, positions));
        }
        self.write_buf(buf, buf_start)?;
        for (k, pos) in written {
            unsynced.push((requests[k].done.clone(), pos));
        }
        self.shared
            .stats
            .add_records(requests.iter().map(|r| r.records.len() as u64).sum());
        self.prepare_spare_if_half_full();
        Ok(())
    }

    /// Once the active segment is half full, the next one is prepared in the background (the
    /// spare), so that a roll finds it ready; not before, so that a directory that writes
    /// little keeps no idle segment-sized file beside its active one.
    pub(crate) fn prepare_spare_if_half_full(&mut self) {
        if self.options.prepare_in_background
            && self.spare.is_none()
            && self.active.offset >= self.active.capacity / 2
        {
            let len = self.options.segment_len_after(self.active.capacity);
            self.spare = spawn_spare(self.shared.clone(), self.active.id + 1, len);
        }
    }

    fn write_buf(&mut self, buf: &mut Vec<u8>, at: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.active.slot.file.write_all_at(buf, at).map_err(|e| {
            Error::io(
                "write segment",
                self.shared
                    .storage
                    .path()
                    .join(segment_name(self.active.id)),
                e,
            )
        })?;
        buf.clear();
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        let started = Instant::now();
        self.active.slot.file.sync_data().map_err(|e| {
            Error::io(
                "sync segment",
                self.shared
                    .storage
                    .path()
                    .join(segment_name(self.active.id)),
                e,
            )
        })?;
        self.shared.stats.add_sync(started.elapsed());
        Ok(())
    }

    /// Seals the active segment and installs the next one, whose first record will be `seq`
    /// and which must hold at least a frame of `frame_len` bytes.
    ///
    /// The order makes every crash recoverable: once the next file is prepared, the seal
    /// (which names `seq`) is written and synced; then the new segment is installed (header
    /// synced, renamed, directory synced); then the manifest lists it; only then is a record
    /// written into it.
    fn roll(&mut self, seq: u64, frame_len: u64) -> Result<()> {
        self.shared.check_lock()?;
        let (file, capacity) = self.next_file(frame_len)?;
        self.install_next(file, capacity, seq)
    }

    /// The file of the next segment, prepared (the spare, or made now) and large enough for
    /// a frame of `frame_len` bytes, with its capacity. On an error nothing has changed but
    /// the loss of the spare: the active segment is as it was.
    ///
    /// A spare whose preparation failed (a full disk, say) is forgotten, not inherited: its
    /// error may be stale by now (space freed since), so the file is prepared again here, and
    /// only that attempt's error counts.
    fn next_file(&mut self, frame_len: u64) -> Result<(Arc<dyn StorageFile>, u64)> {
        let next_id = self.active.id + 1;
        let storage = &*self.shared.storage;
        let spare = match self.spare.take().map(|handle| handle.join()) {
            Some(Ok(Ok((id, file)))) if id == next_id => Some(file),
            // A spare for another id (cannot happen), a failed or a panicked preparation.
            _ => None,
        };
        let len = self.options.segment_len_after(self.active.capacity);
        let file = match spare {
            Some(file) => file,
            None => prepare_file(storage, next_id, len)?,
        };
        let mut capacity = file.len().map_err(|e| {
            Error::io(
                "stat segment",
                storage.path().join(super::segment::temp_name(next_id)),
                e,
            )
        })?;
        let needed = SEGMENT_HEADER_LEN_V2 as u64 + frame_len + SEAL_FRAME_LEN as u64;
        if needed > capacity {
            // One record larger than a whole segment: grow this segment for it.
            let name = super::segment::temp_name(next_id);
            if let Err(e) = zero_fill(&*file, capacity, needed) {
                let _ = storage.remove(&name);
                return Err(Error::io("zero-fill segment", storage.path().join(name), e));
            }
            capacity = needed;
        }
        Ok((file, capacity))
    }

    /// Seals the active segment and installs `file` as the next one, whose first record will
    /// be `seq`.
    fn install_next(&mut self, file: Arc<dyn StorageFile>, capacity: u64, seq: u64) -> Result<()> {
        let next_id = self.active.id + 1;
        if self.active.seals {
            let mut seal = Vec::with_capacity(SEAL_FRAME_LEN);
            encode_seal(
                &mut seal,
                self.active.id,
                seq,
                Seal {
                    records: self.active.records,
                    data_len: self.active.offset,
                },
            );
            let at = self.active.offset;
            self.write_buf(&mut seal, at)?;
            self.sync()?;
            self.active.offset += SEAL_FRAME_LEN as u64;
        }
        let data_start = SEGMENT_HEADER_LEN_V2 as u64;
        let floors = self.shared.id_floors();
        let storage = &*self.shared.storage;
        install(
            storage,
            &*file,
            &new_header(
                next_id,
                seq,
                (self.clock_ms)(),
                floors,
                self.shared.directory.id(),
            ),
        )?;
        self.active.slot.seal(self.active.offset);
        self.shared.directory.add_segment(storage, next_id)?;
        let slot = Arc::new(SegmentSlot::active(next_id, file));
        self.shared.segments.insert(slot.clone());
        self.active = Active {
            slot,
            id: next_id,
            offset: data_start,
            capacity,
            floors,
            data_start,
            records: 0,
            seals: true,
        };
        self.shared.stats.add_roll();
        Ok(())
    }

    /// On close: wait for a spare being prepared and remove it, so a clean shutdown leaves
    /// no temporary file behind.
    fn finish(&mut self) {
        if let Some(handle) = self.spare.take()
            && let Ok(Ok((id, _))) = handle.join()
        {
            let _ = self.shared.storage.remove(&super::segment::temp_name(id));
        }
    }
}

/// After the writer thread panicked outside a group: poisons the log and fails whatever is
/// queued, so no appender, flush or close waits for it.
pub(crate) fn fail_after_panic(shared: &Shared, error: Error) {
    let reason = error.to_string();
    let (requests, flushes) = {
        let mut q = shared.queue.lock();
        q.poisoned.get_or_insert(reason.clone());
        shared.space.notify_all();
        q.wake_space();
        (
            std::mem::take(&mut q.requests),
            std::mem::take(&mut q.flushes),
        )
    };
    fail_all(&requests, &flushes, &[], &reason);
}

/// Runs `f`, turning a panic into an error that poisons the log.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(panicked(payload)))
}

/// The error for a panic of the writer thread, with the panic's own message.
pub(crate) fn panicked(payload: Box<dyn std::any::Any + Send>) -> Error {
    let message = crate::error::panic_message(payload);
    Error::invalid(format!("the log writer thread panicked: {message}"))
}

/// Why a requested roll failed.
enum RollError {
    /// No next segment could be had (a full disk, say): nothing changed, the log goes on.
    NoNextFile(Error),
    /// Anything else: the log is poisoned.
    Fatal(Error),
}

impl Writer {
    /// A roll asked for by `Log::roll` (compaction seals the active segment before a pass).
    /// Unlike a roll of a full segment, which must have its next file to write the group, it
    /// can fail harmlessly when the next file cannot be prepared: then the active segment
    /// stays active, so a full disk does not poison the log that compaction is about to
    /// free space in.
    fn requested_roll(&mut self, seq: u64) -> std::result::Result<(), RollError> {
        self.shared.check_lock().map_err(RollError::Fatal)?;
        let (file, capacity) = self.next_file(0).map_err(RollError::NoNextFile)?;
        self.install_next(file, capacity, seq)
            .map_err(RollError::Fatal)
    }

    /// The sequence number of the first request still queued, if any: the first record the
    /// next segment will hold.
    fn queued_first_seq(&self) -> Option<u64> {
        self.shared
            .queue
            .lock()
            .requests
            .first()
            .map(|r| r.first_seq)
    }
}

fn request_bytes(r: &Request) -> usize {
    r.payloads.len() + r.records.len() * FRAME_HEADER_LEN
}

/// Takes the requests of one sync group from the queue: everything, up to
/// `MAX_GROUP_RECORDS` records (a request is never split).
fn take_group(requests: &mut Vec<Request>) -> Vec<Request> {
    let mut records = 0u64;
    let mut n = 0;
    for r in requests.iter() {
        let len = r.records.len() as u64;
        if n > 0 && records + len > MAX_GROUP_RECORDS {
            break;
        }
        records += len;
        n += 1;
    }
    if n == requests.len() {
        std::mem::take(requests)
    } else {
        requests.drain(..n).collect()
    }
}

pub(crate) fn max_queued_bytes() -> usize {
    MAX_QUEUED_BYTES
}

/// The same error again, for a second waiter (`Error` is not `Clone`: an I/O error keeps its
/// kind and message, a poisoned or closed log says so again).
pub(crate) fn copy_error(e: &Error) -> Error {
    match e {
        Error::Io { op, path, source } => Error::Io {
            op,
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Poisoned { reason } => Error::Poisoned {
            reason: reason.clone(),
        },
        Error::Closed => Error::Closed,
        other => Error::invalid(other.to_string()),
    }
}

/// Runs a completion's `then`; a panic in it is the caller's (a bug) but must not take the
/// writer down with it: it is caught, and the records' waiter is still woken.
fn run_then(then: Then, result: &Result<Vec<Position>>) {
    let _ = catch_unwind(AssertUnwindSafe(move || then(result)));
}

fn fail_all(
    requests: &[Request],
    flushes: &[Arc<Completion>],
    written: &[(Arc<Completion>, Vec<Position>)],
    reason: &str,
) {
    let err = || Error::Poisoned {
        reason: reason.to_string(),
    };
    let dones = requests
        .iter()
        .map(|r| &r.done)
        .chain(flushes)
        .chain(written.iter().map(|(d, _)| d));
    for done in dones {
        done.complete(Err(err()));
    }
}

#[cfg(all(test, not(afterlog_shuttle)))]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A child is woken with its outcome even when its parent wakes it before
    /// `WakeTree::complete` has recorded everything. In a sync group this happens when the
    /// parent's appender finds its outcome before the root is woken (found by the group
    /// commit models of tests/shuttle.rs: with outcomes recorded first to last, the child's
    /// notification came before its outcome and it slept forever). Here the parent was
    /// already completed, so `complete` itself wakes the child as it goes, and holding the
    /// child's lock makes the child look at its state between that notification and the
    /// recording of its outcome.
    #[test]
    fn a_child_woken_early_still_gets_its_outcome() {
        let pause = Duration::from_millis(50);
        let parent = Arc::new(Completion::default());
        parent.complete(Ok(Vec::new()));
        let child = Arc::new(Completion::default());
        let (woken_tx, woken_rx) = std::sync::mpsc::channel();
        let waiter = {
            let child = child.clone();
            std::thread::spawn(move || woken_tx.send(child.wait().is_ok()).unwrap())
        };
        std::thread::sleep(pause); // the child falls asleep with no outcome
        let held = child.state.lock();
        let completer = {
            let (parent, child) = (parent.clone(), child.clone());
            std::thread::spawn(move || {
                WakeTree::complete(vec![(parent, Ok(Vec::new())), (child, Ok(Vec::new()))]);
            })
        };
        std::thread::sleep(pause); // `complete` waits for the child's lock
        // The longest waiter gets the lock: the child, if it was notified already.
        parking_lot::MutexGuard::unlock_fair(held);
        let woken = woken_rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(woken, Ok(true), "the child was never woken");
        completer.join().unwrap();
        waiter.join().unwrap();
    }
}
