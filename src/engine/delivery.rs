//! Delivery: the scheduler thread, the worker pool and the timeout watchdog.
//!
//! The scheduler sleeps on the engine's clock until the wheel's next deadline (or a wake-up
//! from a publisher), takes every due event out of the wheel and sends them to the workers
//! in batches. A worker *prepares* a batch — reads each publish record, and writes one record
//! per event, all with one sync: an attempt (the handlers will run), an ack (no handler for
//! the name: ignored) or a drop (past retention) — then runs the handlers of each attempted
//! event in turn, appending each attempt's outcome (ack, retry or drop) as soon as it ends.
//! An outcome is durable on its own, and a bad one fails alone; the outcomes of concurrent
//! workers share syncs through the log's group commit.
//!
//! A worker's batch lives in its `Slot`, so that when a handler runs past its deadline the
//! watchdog can abandon the worker (its thread is left to finish the handler; the late
//! result is ignored), fail that attempt with `FUNCTION_TIME_OUT`, and hand the rest of the
//! batch to a new worker thread: capacity is kept.
//!
//! An event waits in its batch between its attempt record and its handlers; a worker checks
//! just before the handlers whether a cancel (of the event or its job) arrived meanwhile, and
//! if so skips it, so no handler starts after `cancel` or `cancel_job` returned.
//!
//! Architecture Invariant: an attempt record is durable before any handler of that attempt
//! runs, so attempt counts never go backwards across a crash.

use super::guard::guarded;
use super::handler::{Context, Deadline, Event, HandlerErrorKind};
use super::options::EXPIRED_MESSAGE;
use super::{Inner, Registered};
use crate::clock::Wake;
use crate::format::{
    Ack, AckOutcome, Attempt, Cancel, CancelTarget, DropReason as RecordDropReason,
    MAX_PAYLOAD_LEN, Record, Retry, clip_message,
};
use crate::ids::{EventId, JobId};
use crate::index::{Applied, EventState, NO_TIMER};
use crate::log::RecordBytes;
use crate::retry::{Decision, DropReason, Failure, FailureInput, RetryContext, RetryReason};
use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most events in one batch handed to a worker.
const MAX_BATCH: usize = 512;
/// Most events a worker takes at once when several batches wait in the queue.
const MAX_WORKER_BATCH: usize = 4096;

/// The running delivery threads of an engine.
pub(crate) struct Delivery {
    scheduler: JoinHandle<()>,
    watchdog: JoinHandle<()>,
    shared: Arc<Shared>,
}

/// What the scheduler, the workers and the watchdog share.
struct Shared {
    dispatch: Mutex<Option<Sender<Vec<u64>>>>,
    receiver: Receiver<Vec<u64>>,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Wakes the watchdog when a handler starts.
    watch: Wake,
    stopping: AtomicBool,
    /// Workers not abandoned and not yet exited.
    alive: Mutex<usize>,
    exited: Condvar,
}

/// One event ready for its handlers: its attempt record is durable.
struct Prepared {
    id: EventId,
    name: Arc<str>,
    record: Arc<RecordBytes>,
    body: Range<usize>,
    published_ms: i64,
    first_due_ms: i64,
    /// When this attempt was due.
    due_ms: i64,
    attempt: u32,
    job: Option<JobId>,
    retry_context: Option<RetryContext>,
    handlers: Arc<Vec<Registered>>,
}

struct Outcome {
    prepared: Arc<Prepared>,
    failure: Option<Failed>,
}

/// A failed attempt: how it failed, for the retry policy, and the message kept in the log.
struct Failed {
    failure: Failure,
    message: String,
}

impl Failed {
    fn new(failure: Failure) -> Failed {
        let message = failure_message(&failure);
        Failed { failure, message }
    }
}

#[derive(Default)]
struct Batch {
    remaining: VecDeque<Arc<Prepared>>,
    /// Outcomes not yet written: the watchdog leaves a timed-out attempt's here for the
    /// worker that takes over the batch.
    outcomes: Vec<Outcome>,
}

#[derive(Default)]
struct SlotState {
    abandoned: bool,
    current: Option<(Arc<Prepared>, Arc<Deadline>)>,
    batch: Batch,
}

/// A worker's state, shared with the watchdog.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
}

impl Delivery {
    pub fn start(inner: &Arc<Inner>) -> Delivery {
        let (tx, rx) = crossbeam_channel::unbounded();
        let workers = inner.options.workers;
        let shared = Arc::new(Shared {
            dispatch: Mutex::new(Some(tx)),
            receiver: rx,
            slots: Mutex::new(Vec::new()),
            watch: Wake::new(),
            stopping: AtomicBool::new(false),
            alive: Mutex::new(0),
            exited: Condvar::new(),
        });
        for _ in 0..workers {
            spawn_worker(inner, &shared, Batch::default());
        }
        let scheduler = {
            let (inner, shared) = (inner.clone(), shared.clone());
            std::thread::Builder::new()
                .name("afterlog-scheduler".into())
                .spawn(move || {
                    guarded(&inner, "scheduler", || schedule(&inner, &shared));
                })
                .expect("spawn the scheduler thread")
        };
        let watchdog = {
            let (inner, shared) = (inner.clone(), shared.clone());
            std::thread::Builder::new()
                .name("afterlog-watchdog".into())
                .spawn(move || {
                    guarded(&inner, "watchdog", || watch(&inner, &shared));
                })
                .expect("spawn the watchdog thread")
        };
        Delivery {
            scheduler,
            watchdog,
            shared,
        }
    }

    /// Stops the scheduler, lets the workers finish what was dispatched (running handlers up
    /// to their timeouts), then stops the watchdog.
    ///
    /// Called from a handler (a worker of this engine), it does not wait for that worker,
    /// and returns true: the worker closes the log when it exits, after the handler's
    /// outcome is written. A stopped engine (a background thread panicked) waits for no
    /// handler: the log is poisoned, so nothing they do can be recorded.
    pub fn stop(self, inner: &Inner) -> bool {
        inner.wake.notify();
        let _ = self.scheduler.join();
        self.shared.dispatch.lock().take();
        let own = own_slot(inner);
        let until = Instant::now() + super::MAX_HANDLER_TIMEOUT + Duration::from_secs(5);
        loop {
            // The calling worker counts as alive until the watchdog abandons it.
            let own_alive = own
                .as_ref()
                .is_some_and(|slot| !slot.state.lock().abandoned);
            let mut alive = self.shared.alive.lock();
            if *alive <= usize::from(own_alive)
                || Instant::now() >= until
                || inner.stopped().is_some()
            {
                break;
            }
            self.shared
                .exited
                .wait_for(&mut alive, Duration::from_millis(50));
        }
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.watch.notify();
        let _ = self.watchdog.join();
        // With the watchdog gone, the calling worker can no longer be abandoned.
        let deferred = own.is_some_and(|slot| !slot.state.lock().abandoned);
        if deferred {
            CLOSE_ON_EXIT.set(true);
        }
        deferred
    }
}

thread_local! {
    /// On a worker thread: its engine (the address of its `Inner`) and its slot.
    static WORKER: RefCell<Option<(usize, Arc<Slot>)>> = const { RefCell::new(None) };
    /// On a worker thread whose handler called `close`: the worker closes the log on exit.
    static CLOSE_ON_EXIT: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is a worker of `inner`'s engine (a handler is running on it).
pub(super) fn on_worker_of(inner: &Inner) -> bool {
    own_slot(inner).is_some()
}

/// The slot of the current thread, if it is a worker of `inner`'s engine.
fn own_slot(inner: &Inner) -> Option<Arc<Slot>> {
    let address = std::ptr::from_ref(inner) as usize;
    WORKER.with_borrow(|worker| {
        worker
            .as_ref()
            .filter(|(engine, _)| *engine == address)
            .map(|(_, slot)| slot.clone())
    })
}

/// After a worker's loop panicked (outside a handler, whose panics are caught): it stops
/// counting as alive, so that `close` does not wait for it.
fn worker_panicked(shared: &Shared, slot: &Arc<Slot>) {
    {
        let mut state = slot.state.lock();
        if state.abandoned {
            // The watchdog has already let it go.
            return;
        }
        state.abandoned = true;
        state.current = None;
    }
    shared.slots.lock().retain(|s| !Arc::ptr_eq(s, slot));
    *shared.alive.lock() -= 1;
    shared.exited.notify_all();
}

fn spawn_worker(inner: &Arc<Inner>, shared: &Arc<Shared>, batch: Batch) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            batch,
            ..SlotState::default()
        }),
    });
    shared.slots.lock().push(slot.clone());
    *shared.alive.lock() += 1;
    let (thread_inner, thread_shared, thread_slot) = (inner.clone(), shared.clone(), slot.clone());
    let spawned = std::thread::Builder::new()
        .name("afterlog-worker".into())
        .spawn(move || {
            let engine = Arc::as_ptr(&thread_inner) as usize;
            WORKER.set(Some((engine, thread_slot.clone())));
            let ran = guarded(&thread_inner, "worker", || {
                work(&thread_inner, &thread_shared, &thread_slot)
            });
            if !ran {
                worker_panicked(&thread_shared, &thread_slot);
            }
            WORKER.set(None);
            if CLOSE_ON_EXIT.take() {
                let _ = thread_inner.finish_close();
            }
        });
    if spawned.is_err() {
        // The operating system refused a thread. The batch's events stay Running in the log
        // and are delivered again after a restart; here they stop counting as in flight.
        shared.slots.lock().retain(|s| !Arc::ptr_eq(s, &slot));
        *shared.alive.lock() -= 1;
        let state = std::mem::take(&mut *slot.state.lock());
        {
            let mut core = inner.core.lock();
            for p in &state.batch.remaining {
                core.waiting.remove(&p.id);
            }
        }
        finish(
            inner,
            (state.batch.remaining.len() + state.batch.outcomes.len()) as u64,
        );
    }
}

/// The scheduler thread.
fn schedule(inner: &Arc<Inner>, shared: &Shared) {
    let mut due = Vec::new();
    loop {
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        let now_ms = inner.clock.now_ms();
        let next = {
            let mut core = inner.core.lock();
            core.wheel
                .advance(now_ms.max(0) as u64, |_, id| due.push(id));
            for id in &due {
                core.index.set_timer(EventId(*id), NO_TIMER);
            }
            core.in_flight += due.len() as u64;
            let next = core
                .wheel
                .next_deadline_ms()
                .map(|d| d.min(i64::MAX as u64) as i64);
            core.sleeping_until_ms = if due.is_empty() {
                next.unwrap_or(i64::MAX)
            } else {
                i64::MIN
            };
            next
        };
        if !due.is_empty() {
            let per_worker = due
                .len()
                .div_ceil(inner.options.workers)
                .clamp(1, MAX_BATCH);
            let dispatch = shared.dispatch.lock().clone();
            for chunk in due.chunks(per_worker) {
                if let Some(tx) = &dispatch {
                    let _ = tx.send(chunk.to_vec());
                }
            }
            due.clear();
            // More may have fallen due meanwhile: look again before sleeping.
            continue;
        }
        inner.clock.wait_until(&inner.wake, next);
    }
}

/// A worker thread.
fn work(inner: &Arc<Inner>, shared: &Shared, slot: &Slot) {
    loop {
        if !run_batch(inner, shared, slot) {
            // Abandoned by the watchdog: another thread carries on with the batch.
            return;
        }
        let Ok(mut ids) = shared.receiver.recv() else {
            break;
        };
        // Under load, batches queue up while workers wait for syncs: take them all at once
        // (up to a limit), so one sync serves more events.
        while ids.len() < MAX_WORKER_BATCH {
            match shared.receiver.try_recv() {
                Ok(more) => ids.extend(more),
                Err(_) => break,
            }
        }
        let prepared = prepare(inner, ids);
        slot.state.lock().batch.remaining.extend(prepared);
    }
    *shared.alive.lock() -= 1;
    shared.exited.notify_all();
}

/// Runs the handlers of every event in the slot's batch, writing each attempt's outcome as
/// soon as it ends. Returns false if the watchdog abandoned this worker meanwhile.
fn run_batch(inner: &Arc<Inner>, shared: &Shared, slot: &Slot) -> bool {
    loop {
        let (outcomes, next) = {
            let mut state = slot.state.lock();
            if state.abandoned {
                return false;
            }
            // Outcomes the watchdog left (the attempt that timed out in an abandoned worker).
            let outcomes = std::mem::take(&mut state.batch.outcomes);
            (outcomes, state.batch.remaining.pop_front())
        };
        for outcome in outcomes {
            write_outcome(inner, outcome);
        }
        let Some(prepared) = next else { break };
        if !take_for_handlers(inner, &prepared) {
            finish(inner, 1);
            continue;
        }
        let Some(failure) = run_handlers(inner, shared, slot, &prepared) else {
            return false;
        };
        if slot.state.lock().abandoned {
            return false;
        }
        write_outcome(inner, Outcome { prepared, failure });
    }
    true
}

/// Takes an event out of `Core::waiting` before its handlers run. False if a cancel reached
/// it while it waited in the batch, so that no attempt starts after a cancel returned: the
/// event was cancelled itself (nothing more to write), or its job was (the event is still
/// Running, and is cancelled here, durably, instead of being run; `cancel_job` counted it).
fn take_for_handlers(inner: &Inner, p: &Prepared) -> bool {
    {
        let mut core = inner.core.lock();
        core.waiting.remove(&p.id);
        let Some(info) = core.index.get(p.id) else {
            return false;
        };
        if info.state != EventState::Running || info.attempts != p.attempt {
            return false;
        }
        let job_cancelled = info
            .job
            .and_then(|job| core.index.job_cancelled(job))
            .unwrap_or(false);
        if !job_cancelled {
            return true;
        }
    }
    let record = Record::Cancel(Cancel {
        target: CancelTarget::Event(p.id),
        cancelled_ms: inner.clock.now_ms(),
    });
    // If the log refuses the record, the event stays Running until a restart, where recovery
    // cancels it because its job is cancelled.
    if let Ok(pos) = inner.log.append(&record) {
        let _ = inner.apply(pos, &record);
    }
    false
}

/// Calls every handler of the event in order. `None` if the worker was abandoned; otherwise
/// the attempt's failure, if any.
fn run_handlers(
    inner: &Arc<Inner>,
    shared: &Shared,
    slot: &Slot,
    p: &Arc<Prepared>,
) -> Option<Option<Failed>> {
    let event = Event {
        id: p.id,
        name: p.name.clone(),
        record: p.record.clone(),
        body: p.body.clone(),
        time_ms: p.published_ms,
        delay_ms: p.first_due_ms - p.published_ms,
        attempt: p.attempt,
        job: p.job,
        retry_context: p.retry_context.clone(),
    };
    // Lateness counts to the moment the handlers start: after the attempt record is durable.
    inner
        .metrics
        .record_lateness(inner.clock.now_ms() - p.due_ms);
    let mut first_failure = None;
    for registered in p.handlers.iter() {
        // Timeouts run on the monotonic clock: a step of the wall clock does not end them.
        let started_ms = inner.clock.monotonic_ms();
        let timeout_ms = registered.options.timeout.as_millis() as i64;
        let deadline = Arc::new(Deadline {
            started_ms,
            deadline_ms: Mutex::new(started_ms.saturating_add(timeout_ms)),
        });
        {
            let mut state = slot.state.lock();
            if state.abandoned {
                return None;
            }
            state.current = Some((p.clone(), deadline.clone()));
        }
        shared.watch.notify();
        let mut ctx = Context {
            job: p.job,
            deadline: deadline.clone(),
            engine: Arc::downgrade(inner),
        };
        let result = catch_unwind(AssertUnwindSafe(|| (registered.handler)(&event, &mut ctx)));
        {
            let mut state = slot.state.lock();
            if state.abandoned {
                return None;
            }
            state.current = None;
        }
        // A result that arrives after the deadline is ignored, even if the watchdog has not
        // noticed yet: the clock decides, not the race.
        if inner.clock.monotonic_ms() > *deadline.deadline_ms.lock() {
            inner.metrics.timed_out.fetch_add(1, Ordering::Relaxed);
            return Some(Some(Failed::new(Failure::Platform {
                reason: RetryReason::TimeOut,
            })));
        }
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Failed::new(match e.kind {
                HandlerErrorKind::Message(message) => Failure::Error { message },
                HandlerErrorKind::Retry(options) => Failure::RetryRequested(options),
            })),
            Err(payload) => {
                inner.metrics.panicked.fetch_add(1, Ordering::Relaxed);
                Some(Failed {
                    failure: Failure::Platform {
                        reason: RetryReason::PlatformUnknownError,
                    },
                    message: format!("panicked: {}", crate::error::panic_message(payload)),
                })
            }
        };
        if first_failure.is_none() {
            first_failure = failure;
        }
    }
    Some(first_failure)
}

/// The watchdog thread: fails attempts whose handler runs past its deadline.
fn watch(inner: &Arc<Inner>, shared: &Arc<Shared>) {
    while !shared.stopping.load(Ordering::Acquire) {
        // Deadlines are on the monotonic clock (see `run_handlers`).
        let now_ms = inner.clock.monotonic_ms();
        let mut earliest: Option<i64> = None;
        let slots = shared.slots.lock().clone();
        for slot in slots {
            let mut state = slot.state.lock();
            let Some((prepared, deadline)) = state.current.clone() else {
                continue;
            };
            let deadline_ms = *deadline.deadline_ms.lock();
            if now_ms <= deadline_ms {
                earliest = Some(earliest.map_or(deadline_ms, |e| e.min(deadline_ms)));
                continue;
            }
            // Abandon the worker: its thread finishes the handler on its own and exits; the
            // rest of its batch moves to a new worker.
            state.abandoned = true;
            state.current = None;
            let mut batch = std::mem::take(&mut state.batch);
            drop(state);
            batch.outcomes.push(Outcome {
                prepared,
                failure: Some(Failed::new(Failure::Platform {
                    reason: RetryReason::TimeOut,
                })),
            });
            inner.metrics.timed_out.fetch_add(1, Ordering::Relaxed);
            inner
                .metrics
                .workers_replaced
                .fetch_add(1, Ordering::Relaxed);
            shared.slots.lock().retain(|s| !Arc::ptr_eq(s, &slot));
            {
                let mut alive = shared.alive.lock();
                *alive -= 1;
            }
            spawn_worker(inner, shared, batch);
        }
        inner
            .clock
            .wait_monotonic_until(&shared.watch, earliest.map(|d| d.saturating_add(1)));
    }
}

/// What the worker found for one due event.
enum Plan {
    Attempt(Prepared),
    Ignore { id: EventId, attempt: u32 },
    Expire { id: EventId, attempt: u32 },
}

/// Reads each due event and writes its attempt (or ignore/expire) record; returns the events
/// whose handlers should run.
fn prepare(inner: &Arc<Inner>, ids: Vec<u64>) -> Vec<Arc<Prepared>> {
    let now_ms = inner.clock.now_ms();
    let started = inner.started.load(Ordering::Acquire);
    let mut plans = Vec::with_capacity(ids.len());
    let mut finished = 0u64;
    for id in ids {
        let id = EventId(id);
        let info = {
            let core = inner.core.lock();
            core.index
                .get(id)
                .filter(|i| i.state == EventState::Scheduled)
                .map(|i| {
                    let retry = i.retry.and_then(|r| {
                        Some(RetryContext {
                            retry_count: r.retry_count,
                            retry_reason: RetryReason::from_code(r.reason)?,
                            retry_data: r.data.to_vec(),
                        })
                    });
                    // The segment is taken under the same lock as the location: compaction
                    // swaps both together, and the reader keeps this version of the file.
                    let reader = inner.log.segment_reader(u64::from(i.location.segment));
                    (
                        (i.location, reader),
                        i.attempts,
                        i.due_ms,
                        i.job,
                        Arc::<str>::from(i.name),
                        retry,
                    )
                })
        };
        let Some((location, attempts, due_ms, job, name, retry_context)) = info else {
            // Cancelled or finished since it fell due.
            finished += 1;
            continue;
        };
        let Some((record, body, published_ms, first_due_ms)) = read_publish(id, location) else {
            inner.metrics.read_errors.fetch_add(1, Ordering::Relaxed);
            finished += 1;
            continue;
        };
        if inner.options.past_retention(first_due_ms, now_ms) {
            plans.push(Plan::Expire {
                id,
                attempt: attempts,
            });
            continue;
        }
        let handlers = inner.handlers.read().get(&*name).cloned();
        match handlers {
            Some(handlers) if !handlers.is_empty() => {
                plans.push(Plan::Attempt(Prepared {
                    id,
                    name,
                    record,
                    body,
                    published_ms,
                    first_due_ms,
                    due_ms,
                    attempt: attempts + 1,
                    job,
                    retry_context,
                    handlers,
                }));
            }
            _ if started => plans.push(Plan::Ignore {
                id,
                attempt: attempts,
            }),
            _ => finished += 1,
        }
    }
    finish(inner, finished);
    if plans.is_empty() {
        return Vec::new();
    }
    let records: Vec<Record<'_>> = plans
        .iter()
        .map(|plan| match plan {
            Plan::Attempt(p) => Record::Attempt(Attempt {
                event: p.id,
                attempt: p.attempt,
                started_ms: now_ms,
            }),
            Plan::Ignore { id, attempt } => Record::Ack(Ack {
                event: *id,
                attempt: *attempt,
                acked_ms: now_ms,
                outcome: AckOutcome::Ignored,
            }),
            Plan::Expire { id, attempt } => Record::Drop(crate::format::Drop {
                event: *id,
                attempt: *attempt,
                dropped_ms: now_ms,
                reason: RecordDropReason::Expired,
                message: EXPIRED_MESSAGE,
            }),
        })
        .collect();
    let Ok(positions) = inner.log.append_all(&records) else {
        // The log is poisoned: nothing more can be recorded; the events stay pending on disk.
        finish(inner, plans.len() as u64);
        return Vec::new();
    };
    let mut ready = Vec::new();
    let mut done = 0u64;
    for ((plan, record), pos) in plans.into_iter().zip(&records).zip(positions) {
        let applied = inner.apply_then(pos, record, |core, applied| {
            if let (Record::Attempt(a), Ok(Applied::Changed)) = (record, applied) {
                core.waiting.insert(a.event);
            }
        });
        match plan {
            Plan::Attempt(p) if matches!(applied, Ok(Applied::Changed)) => {
                inner.metrics.delivered.fetch_add(1, Ordering::Relaxed);
                ready.push(Arc::new(p));
            }
            Plan::Attempt(_) => done += 1,
            Plan::Ignore { .. } => {
                inner.metrics.ignored.fetch_add(1, Ordering::Relaxed);
                done += 1;
            }
            Plan::Expire { .. } => {
                // Counted only by the drop that changed the event: one count per event.
                if matches!(applied, Ok(Applied::Changed)) {
                    inner.metrics.expired.fetch_add(1, Ordering::Relaxed);
                }
                done += 1;
            }
        }
    }
    finish(inner, done);
    ready
}

/// Reads an event's publish record: the record, the body's range in its payload, when it
/// was published and when it was first due.
pub(super) fn read_publish(
    id: EventId,
    (location, reader): (crate::index::Location, Option<crate::log::SegmentReader>),
) -> Option<(Arc<RecordBytes>, Range<usize>, i64, i64)> {
    let bytes = reader?.read(u64::from(location.offset)).ok()?;
    let (range, published_ms, first_due_ms) = {
        let Ok(Record::Publish(publish)) = bytes.record() else {
            return None;
        };
        let entry = publish.events().find(|e| e.id == id)?;
        let start = entry.body.as_ptr() as usize - bytes.payload().as_ptr() as usize;
        (
            start..start + entry.body.len(),
            publish.published_ms,
            entry.due_ms,
        )
    };
    Some((Arc::new(bytes), range, published_ms, first_due_ms))
}

/// What an attempt's policy decided after a failure, and the failure's message.
type Decided = (Decision, String);

/// Writes the outcome of one attempt and applies it: an ack, a retry or a drop.
///
/// Each outcome is its own append, so it is durable on its own as soon as its attempt ends
/// (concurrent workers' outcomes still share syncs through the log's group commit), and a
/// record the log refuses fails only its own attempt, never the rest of a batch.
fn write_outcome(inner: &Arc<Inner>, outcome: Outcome) {
    let now_ms = inner.clock.now_ms();
    let p = &outcome.prepared;
    let decided = outcome
        .failure
        .map(|failed| decide_fitting(inner, p, failed, now_ms));
    let record = outcome_record(p, decided.as_ref(), now_ms);
    // Only a poisoned or closed log refuses a record that fits: the event then stays Running
    // on disk and is delivered again after a restart.
    if let Ok(pos) = inner.log.append(&record) {
        let _ = inner.apply(pos, &record);
        let counter = match record {
            Record::Ack(_) => &inner.metrics.acked,
            Record::Retry(_) => &inner.metrics.retried,
            _ => &inner.metrics.dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    finish(inner, 1);
}

/// Decides what follows a failed attempt. A retry request whose data would make its record
/// larger than the log takes (`MAX_PAYLOAD_LEN` with the metadata) cannot be written: the
/// request is turned into a plain failure of the attempt whose message says so, the data is
/// dropped, and the policy decides again (a plain error's retry, at the policy's backoff).
fn decide_fitting(inner: &Inner, p: &Prepared, failed: Failed, now_ms: i64) -> Decided {
    let Failed { failure, message } = failed;
    let decided = decide(inner, p, &failure, message.clone(), now_ms);
    let len = outcome_record(p, Some(&decided), now_ms).encoded_len();
    if len <= MAX_PAYLOAD_LEN {
        return decided;
    }
    let data_len = match &failure {
        Failure::RetryRequested(options) => options.data.len(),
        _ => 0,
    };
    let message = format!(
        "{message}, but its retry data of {data_len} bytes makes a record of {len} bytes, over \
         the limit of {MAX_PAYLOAD_LEN}: the data was dropped and the attempt failed"
    );
    let oversized = Failure::Error {
        message: message.clone(),
    };
    decide(inner, p, &oversized, message, now_ms)
}

/// What the name's policy decides after `failure`, with the retention's limit on top: a retry
/// due past retention drops the event instead.
fn decide(inner: &Inner, p: &Prepared, failure: &Failure, message: String, now_ms: i64) -> Decided {
    let mut decision = inner.options.policy_for(&p.name).decide(&FailureInput {
        event_id: p.id.0,
        attempt: p.attempt,
        first_due_ms: p.first_due_ms,
        now_ms,
        previous: p.retry_context.as_ref(),
        failure,
    });
    if let Decision::Retry { next_due_ms, .. } = decision
        && inner.options.past_retention(p.first_due_ms, next_due_ms)
    {
        decision = Decision::Drop {
            reason: DropReason::MaxAge,
        };
    }
    (decision, message)
}

/// The record of an attempt's outcome: an ack if it succeeded (`decided` is `None`), else
/// the retry or drop its policy decided.
fn outcome_record<'a>(p: &Prepared, decided: Option<&'a Decided>, now_ms: i64) -> Record<'a> {
    match decided {
        None => Record::Ack(Ack {
            event: p.id,
            attempt: p.attempt,
            acked_ms: now_ms,
            outcome: AckOutcome::Handled,
        }),
        Some((
            Decision::Retry {
                next_due_ms,
                context,
            },
            message,
        )) => Record::Retry(Retry {
            event: p.id,
            attempt: p.attempt,
            failed_ms: now_ms,
            next_due_ms: *next_due_ms,
            retry_count: context.as_ref().map_or(0, |c| c.retry_count),
            reason: context.as_ref().map_or(0, |c| c.retry_reason.code()),
            message: clip_message(message),
            data: context.as_ref().map_or(&[][..], |c| &c.retry_data),
        }),
        Some((Decision::Drop { reason }, message)) => Record::Drop(crate::format::Drop {
            event: p.id,
            attempt: p.attempt,
            dropped_ms: now_ms,
            reason: match reason {
                DropReason::Exhausted => RecordDropReason::Exhausted,
                DropReason::MaxAge => RecordDropReason::MaxAge,
            },
            message: clip_message(message),
        }),
    }
}

fn failure_message(failure: &Failure) -> String {
    match failure {
        Failure::Error { message } => message.clone(),
        Failure::RetryRequested(o) => format!("retry requested: {}", o.reason),
        Failure::Platform { reason } => reason.to_string(),
    }
}

/// Marks `n` in-flight events finished.
fn finish(inner: &Inner, n: u64) {
    if n == 0 {
        return;
    }
    let mut core = inner.core.lock();
    core.in_flight = core.in_flight.saturating_sub(n);
    drop(core);
    inner.idle.notify_all();
}
