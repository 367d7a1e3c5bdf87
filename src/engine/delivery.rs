//! Delivery: the scheduler thread, the worker pool and the timeout watchdog.
//!
//! The scheduler sleeps on the engine's clock until the wheel's next deadline (or a wake-up
//! from a publisher), takes every due event out of the wheel into the core's ledger and sends
//! their ids to the workers in batches. A worker that takes a batch *prepares* it — reads each
//! publish record and writes one record per event, all with one sync: an attempt (the
//! handlers will run), an ack (no handler for the name: ignored) or a drop (past retention) —
//! and puts every attempted event on the shared ready queue. Every worker takes ready events
//! one at a time, so events due together spread across idle workers, and queues each
//! attempt's outcome (ack, retry or drop) in the log as soon as it ends, without waiting;
//! the applier thread applies each outcome once it is durable. An outcome is durable on its
//! own, and a bad one fails alone; the outcomes of every worker share syncs through the
//! log's group commit.
//!
//! A worker's running attempt lives in its `Slot`, so that when a handler runs past its
//! deadline the watchdog can abandon the worker (its thread is left to finish the handler;
//! the late result is ignored), fail that attempt with `FUNCTION_TIME_OUT`, and start a new
//! worker thread: capacity is kept, and a hung handler holds only its own worker. Abandoned
//! threads are bounded (`Options::abandoned_threads`): a name with that many handlers still
//! running past their timeouts is *stalled* — its due events wait, nothing written, until
//! one of them returns — and the names of other handlers go on.
//!
//! An event waits on the ready queue between its attempt record and its handlers; a worker
//! checks just before the handlers, under the core's lock, whether a cancel (of the event or
//! its job) arrived meanwhile, and if so skips it, so no attempt begins after `cancel` or
//! `cancel_job` returned. An attempt that passed this check before the cancel took effect
//! runs to its end (its worker may still be entering the handler as the cancel returns):
//! `cancel` answers `true` and the event is not retried; `cancel_job` does not count it.
//! Attempt and outcome records are appended and applied under `Inner::cancel_order`'s read
//! lock, so a cancel's record sits in the log where the core applied it.
//!
//! Architecture Invariant: an attempt record is durable before any handler of that attempt
//! runs, so attempt counts never go backwards across a crash.

#[cfg(feature = "tokio")]
#[path = "attempts.rs"]
mod attempts;

use super::core::{Begin, Planned};
use super::guard::guarded;
use super::handler::{Context, Deadline, Event, HandlerError, HandlerErrorKind, HandlerFn};
use super::names::{NameSlot, Outcome as Ended};
use super::options::EXPIRED_MESSAGE;
use super::{Inner, Registered};
use crate::clock::Wake;
use crate::format::{
    Ack, AckOutcome, Attempt, Cancel, CancelTarget, MAX_PAYLOAD_LEN, Record, Retry, clip_message,
};
use crate::ids::{EventId, JobId};
use crate::index::{Applied, EventState};
use crate::log::RecordBytes;
use crate::retry::{Decision, DropReason, Failure, FailureInput, RetryContext, RetryReason};
use crate::sync::thread::{self, JoinHandle};
use crate::sync::{Condvar, Mutex};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Most events in one batch handed to a worker.
const MAX_BATCH: usize = 512;
/// Most events a worker prepares at once when several batches wait in the queue.
const MAX_WORKER_BATCH: usize = 4096;
/// The longest the watchdog sleeps between two looks at the running handlers.
const WATCH_POLL_MS: i64 = 1_000;
/// How long a stalled name's due event waits before it is looked at again.
pub(crate) const STALL_RETRY_MS: i64 = 1_000;

/// The running delivery threads of an engine.
pub(crate) struct Delivery {
    scheduler: JoinHandle<()>,
    watchdog: JoinHandle<()>,
    applier: JoinHandle<()>,
    shared: Arc<Shared>,
}

/// What the scheduler, the workers and the watchdog share.
struct Shared {
    /// Due batches from the scheduler and prepared events between workers.
    queue: Mutex<Queue>,
    /// Notified when the queue gains work or closes.
    queued: Condvar,
    /// Outcomes submitted to the log, for the applier.
    outcomes: Mutex<Outcomes>,
    /// Notified when an outcome is submitted or the applier is told to stop.
    submitted: Condvar,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Wakes the watchdog when a handler starts with a deadline before `watch_until`.
    watch: Wake,
    /// The monotonic time the watchdog sleeps until (`i64::MAX` while it looks at the slots):
    /// a handler whose deadline is not earlier needs no wake-up, the watchdog sees it then.
    watch_until: AtomicI64,
    stopping: AtomicBool,
    /// Workers not abandoned and not yet exited.
    alive: Mutex<usize>,
    exited: Condvar,
    /// Threads abandoned in a handler that has not returned yet, by name, and in all.
    abandoned: Mutex<HashMap<Arc<str>, usize>>,
    abandoned_total: AtomicUsize,
    /// Prepared events of stalled names, waiting (attempt record durable) until one of the
    /// name's abandoned threads returns.
    parked: Mutex<HashMap<Arc<str>, Vec<Arc<Prepared>>>>,
    /// The attempts of events with async handlers, run as tasks on the runtime.
    #[cfg(feature = "tokio")]
    attempts: attempts::Attempts,
}

impl Shared {
    /// Whether `name`'s attempts wait because too many of its handlers hang.
    fn stalled(&self, inner: &Inner, name: &str) -> bool {
        // `abandon` counts the total first and `returned` last: none in all, none of `name`.
        if self.abandoned_total.load(Ordering::Acquire) == 0 {
            return false;
        }
        let bound = inner.options.abandoned_threads;
        let abandoned = self.abandoned.lock();
        let of_name = abandoned.get(name).copied().unwrap_or(0);
        of_name >= bound
            || (of_name > 0
                && self.abandoned_total.load(Ordering::Relaxed)
                    >= bound.saturating_mul(super::options::ABANDONED_TOTAL_FACTOR))
    }

    fn abandon(&self, name: &Arc<str>) {
        self.abandoned_total.fetch_add(1, Ordering::AcqRel);
        *self.abandoned.lock().entry(name.clone()).or_default() += 1;
    }

    /// An abandoned thread's handler returned.
    fn returned(&self, inner: &Inner, name: &str) {
        let mut abandoned = self.abandoned.lock();
        if let Some(n) = abandoned.get_mut(name) {
            *n -= 1;
            if *n == 0 {
                abandoned.remove(name);
            }
        }
        drop(abandoned);
        self.abandoned_total.fetch_sub(1, Ordering::AcqRel);
        inner
            .metrics
            .abandoned_returned
            .fetch_add(1, Ordering::Relaxed);
        // Every name may be free now (the engine-wide bound): ready what waited.
        let parked: Vec<Arc<Prepared>> = {
            let mut parked = self.parked.lock();
            let names: Vec<Arc<str>> = parked.keys().cloned().collect();
            names
                .into_iter()
                .filter(|n| !self.stalled(inner, n))
                .filter_map(|n| parked.remove(&n))
                .flatten()
                .collect()
        };
        self.push_ready(parked);
    }

    /// Keeps a prepared event of a stalled name until the name is free again.
    fn park(&self, inner: &Inner, prepared: Arc<Prepared>) {
        inner.metrics.stalled.fetch_add(1, Ordering::Relaxed);
        let mut parked = self.parked.lock();
        // Checked again under the lock `returned` takes: a thread that returned meanwhile
        // found nothing to ready.
        if self.stalled(inner, &prepared.name) {
            parked
                .entry(prepared.name.clone())
                .or_default()
                .push(prepared);
        } else {
            drop(parked);
            self.push_ready([prepared]);
        }
    }
}

/// The workers' queue. Holds at most the events in flight.
#[derive(Default)]
struct Queue {
    /// Due events, from the scheduler.
    due: VecDeque<Vec<EventId>>,
    /// Prepared events (attempt record durable), from the worker that prepared them to
    /// whichever worker is free: taken before due batches.
    ready: VecDeque<Arc<Prepared>>,
    /// No more due batches come: workers exit once the ready events are done.
    closed: bool,
}

/// Outcomes whose records are queued in the log, in submission order: the applier waits
/// for each to be durable and applies it, so a worker never waits for a sync between two
/// attempts, and the outcomes of every worker share syncs.
#[derive(Default)]
struct Outcomes {
    queue: VecDeque<Submitted>,
    /// No more submissions: later outcomes are written and applied by their worker.
    closed: bool,
}

/// An outcome record queued in the log, with what rebuilds it for the index.
struct Submitted {
    pending: crate::log::Pending,
    prepared: Arc<Prepared>,
    decided: Option<Decided>,
    now_ms: i64,
    ended: Ended,
}

/// What a worker takes from the queue.
enum Work {
    Ready(Arc<Prepared>),
    Due(Vec<EventId>),
    Exit,
}

impl Shared {
    fn push_ready(&self, prepared: impl IntoIterator<Item = Arc<Prepared>>) {
        let mut queue = self.queue.lock();
        let before = queue.ready.len();
        queue.ready.extend(prepared);
        let added = queue.ready.len() - before;
        drop(queue);
        match added {
            0 => {}
            1 => {
                self.queued.notify_one();
            }
            _ => {
                self.queued.notify_all();
            }
        }
    }

    fn push_due(&self, batch: Vec<EventId>) {
        let mut queue = self.queue.lock();
        if queue.closed {
            return;
        }
        queue.due.push_back(batch);
        drop(queue);
        self.queued.notify_one();
    }

    fn close_queue(&self) {
        self.queue.lock().closed = true;
        self.queued.notify_all();
    }

    /// Waits for work: a ready event first, else due batches (several at once under load, so
    /// that one sync serves more events, up to a limit), else the end.
    fn take_work(&self) -> Work {
        let mut queue = self.queue.lock();
        loop {
            if let Some(prepared) = queue.ready.pop_front() {
                return Work::Ready(prepared);
            }
            if let Some(mut ids) = queue.due.pop_front() {
                while ids.len() < MAX_WORKER_BATCH {
                    match queue.due.pop_front() {
                        Some(more) => ids.extend(more),
                        None => break,
                    }
                }
                return Work::Due(ids);
            }
            if queue.closed {
                return Work::Exit;
            }
            self.queued.wait(&mut queue);
        }
    }
}

/// One event ready for its handlers: its attempt record is durable.
struct Prepared {
    id: EventId,
    name: Arc<str>,
    /// The name's counts and histograms.
    stats: NameSlot,
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

impl Prepared {
    /// Whether any handler of the event is async: its attempt runs as a task.
    #[cfg(feature = "tokio")]
    fn is_async(&self) -> bool {
        self.handlers
            .iter()
            .any(|r| matches!(r.handler, HandlerFn::Async(_)))
    }

    /// The span its handlers run in: the attempt's name, id, number and job.
    fn span(&self) -> tracing::Span {
        tracing::info_span!(
            "afterlog.attempt",
            name = &*self.name,
            id = self.id.0,
            attempt = self.attempt,
            job = self.job.map(|j| j.0),
        )
    }

    /// The event as its handlers see it.
    fn event(&self) -> Event {
        Event {
            id: self.id,
            name: self.name.clone(),
            record: self.record.clone(),
            body: self.body.clone(),
            time_ms: self.published_ms,
            delay_ms: self.first_due_ms - self.published_ms,
            attempt: self.attempt,
            job: self.job,
            retry_context: self.retry_context.clone(),
        }
    }
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
struct SlotState {
    abandoned: bool,
    current: Option<(Arc<Prepared>, Arc<Deadline>)>,
}

/// A worker's state, shared with the watchdog.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    /// Its handler called `close`: the worker closes the log when it exits.
    close_on_exit: AtomicBool,
}

/// Who calls `close`: a handler of the engine, whose own attempt `close` must not wait for,
/// or anyone else.
pub(crate) enum Caller {
    Outside,
    /// A sync handler, on this worker.
    Worker(Arc<Slot>),
    /// An async attempt (its serial number), from its handler's `poll` or its sync handler.
    #[cfg(feature = "tokio")]
    Attempt(u64),
}

impl Caller {
    /// The caller on the current thread.
    pub fn current(inner: &Inner) -> Caller {
        if let Some(slot) = own_slot(inner) {
            return Caller::Worker(slot);
        }
        #[cfg(feature = "tokio")]
        if let Some(serial) = attempts::current(inner) {
            return Caller::Attempt(serial);
        }
        Caller::Outside
    }

    pub fn is_outside(&self) -> bool {
        matches!(self, Caller::Outside)
    }
}

impl Delivery {
    pub fn start(inner: &Arc<Inner>) -> Delivery {
        let workers = inner.options.workers;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
            outcomes: Mutex::new(Outcomes::default()),
            submitted: Condvar::new(),
            slots: Mutex::new(Vec::new()),
            watch: Wake::new(),
            watch_until: AtomicI64::new(i64::MAX),
            stopping: AtomicBool::new(false),
            alive: Mutex::new(0),
            exited: Condvar::new(),
            abandoned: Mutex::new(HashMap::new()),
            abandoned_total: AtomicUsize::new(0),
            parked: Mutex::new(HashMap::new()),
            #[cfg(feature = "tokio")]
            attempts: attempts::Attempts::new(inner),
        });
        for _ in 0..workers {
            spawn_worker(inner, &shared);
        }
        let scheduler = spawn_guarded(inner, &shared, "scheduler", |i, s| schedule(i, s));
        let watchdog = spawn_guarded(inner, &shared, "watchdog", watch);
        let applier = spawn_guarded(inner, &shared, "applier", |i, s| apply_outcomes(i, s));
        Delivery {
            scheduler,
            watchdog,
            applier,
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
    pub fn stop(self, inner: &Inner, caller: Caller) -> bool {
        inner.wake.notify();
        let _ = self.scheduler.join();
        self.shared.close_queue();
        let own = match &caller {
            Caller::Worker(slot) => Some(slot.clone()),
            _ => None,
        };
        let until = Instant::now() + super::MAX_HANDLER_TIMEOUT + Duration::from_secs(5);
        loop {
            if Instant::now() >= until || inner.stopped().is_some() {
                break;
            }
            // The calling worker counts as alive until the watchdog abandons it.
            let own_alive = own
                .as_ref()
                .is_some_and(|slot| !slot.state.lock().abandoned);
            let mut alive = self.shared.alive.lock();
            if *alive <= usize::from(own_alive) {
                drop(alive);
                // Workers are done: no more async attempts are admitted; wait for those that
                // run or wait for room (the caller's own excepted).
                #[cfg(feature = "tokio")]
                if !self.shared.attempts.wait_drained(&caller, until) {
                    continue;
                }
                break;
            }
            self.shared
                .exited
                .wait_for(&mut alive, Duration::from_millis(50));
        }
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.watch.notify();
        let _ = self.watchdog.join();
        // Every outcome submitted so far is applied; later ones (the calling worker's) are
        // written by their worker.
        self.shared.outcomes.lock().closed = true;
        self.shared.submitted.notify_all();
        let _ = self.applier.join();
        // With the watchdog gone, the calling worker can no longer be abandoned.
        let deferred = match caller {
            Caller::Outside => false,
            Caller::Worker(slot) => {
                let deferred = !slot.state.lock().abandoned;
                slot.close_on_exit.store(deferred, Ordering::Release);
                deferred
            }
            #[cfg(feature = "tokio")]
            Caller::Attempt(serial) => self.shared.attempts.close_on_exit(serial),
        };
        #[cfg(feature = "tokio")]
        self.shared.attempts.shut_down_own_runtime();
        deferred
    }

    /// Threads abandoned in a handler that has not returned yet.
    pub fn abandoned(&self) -> u64 {
        self.shared.abandoned_total.load(Ordering::Relaxed) as u64
    }

    /// Async attempts running and waiting for room, now.
    pub fn async_attempts(&self) -> (u64, u64) {
        #[cfg(feature = "tokio")]
        return self.shared.attempts.counts();
        #[cfg(not(feature = "tokio"))]
        (0, 0)
    }

    /// Names whose attempts wait because too many of their handlers hang.
    pub fn stalled_names(&self, inner: &Inner) -> Vec<String> {
        let names: Vec<Arc<str>> = self.shared.abandoned.lock().keys().cloned().collect();
        let mut stalled: Vec<String> = names
            .into_iter()
            .filter(|n| self.shared.stalled(inner, n))
            .map(|n| n.to_string())
            .collect();
        stalled.sort();
        stalled
    }
}

// `with` alone (not `set`, `take`, `with_borrow`): a shuttle build's thread locals offer no
// more (src/sync.rs).
crate::sync::thread_local! {
    /// On a worker thread: its engine (the address of its `Inner`) and its slot.
    static WORKER: RefCell<Option<(usize, Arc<Slot>)>> = const { RefCell::new(None) };
}

/// The slot of the current thread, if it is a worker of `inner`'s engine.
fn own_slot(inner: &Inner) -> Option<Arc<Slot>> {
    let address = std::ptr::from_ref(inner) as usize;
    WORKER.with(|worker| {
        worker
            .borrow()
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

/// Starts one of delivery's threads, `afterlog-{thread}`, under the engine's unwind guard.
fn spawn_guarded(
    inner: &Arc<Inner>,
    shared: &Arc<Shared>,
    thread: &'static str,
    body: fn(&Arc<Inner>, &Arc<Shared>),
) -> JoinHandle<()> {
    let (inner, shared) = (inner.clone(), shared.clone());
    thread::Builder::new()
        .name(format!("afterlog-{thread}"))
        .spawn(move || {
            guarded(&inner, thread, || body(&inner, &shared));
        })
        .unwrap_or_else(|e| panic!("spawn the {thread} thread: {e}"))
}

/// Starts a worker thread. If the operating system refuses one, delivery goes on with the
/// workers it has (counted in `Metrics::worker_spawn_failures`).
fn spawn_worker(inner: &Arc<Inner>, shared: &Arc<Shared>) {
    let slot = Arc::new(Slot::default());
    shared.slots.lock().push(slot.clone());
    *shared.alive.lock() += 1;
    let (thread_inner, thread_shared, thread_slot) = (inner.clone(), shared.clone(), slot.clone());
    let spawned = thread::Builder::new()
        .name("afterlog-worker".into())
        .spawn(move || {
            let engine = Arc::as_ptr(&thread_inner) as usize;
            WORKER.with(|worker| *worker.borrow_mut() = Some((engine, thread_slot.clone())));
            let ran = guarded(&thread_inner, "worker", || {
                work(&thread_inner, &thread_shared, &thread_slot)
            });
            if !ran {
                worker_panicked(&thread_shared, &thread_slot);
            }
            WORKER.with(|worker| *worker.borrow_mut() = None);
            if thread_slot.close_on_exit.load(Ordering::Acquire) {
                let _ = thread_inner.finish_close();
            }
        });
    if spawned.is_err() {
        shared.slots.lock().retain(|s| !Arc::ptr_eq(s, &slot));
        *shared.alive.lock() -= 1;
        shared.exited.notify_all();
        inner
            .metrics
            .worker_spawn_failures
            .fetch_add(1, Ordering::Relaxed);
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
        let next = inner.core.lock().take_due(now_ms, &mut due);
        if !due.is_empty() {
            // Small batches, so that preparing (one sync per batch) spreads over the workers
            // too; each worker then takes ready events one at a time.
            let per_worker = due
                .len()
                .div_ceil(inner.options.workers)
                .clamp(1, MAX_BATCH);
            for chunk in due.chunks(per_worker) {
                shared.push_due(chunk.to_vec());
            }
            due.clear();
            // More may have fallen due meanwhile: look again before sleeping.
            continue;
        }
        inner.clock.wait_until(&inner.wake, next);
    }
}

/// A worker thread: runs ready events one at a time, and prepares due batches when none is
/// ready.
fn work(inner: &Arc<Inner>, shared: &Arc<Shared>, slot: &Slot) {
    loop {
        match shared.take_work() {
            Work::Ready(prepared) => {
                if !run_one(inner, shared, slot, prepared) {
                    // Abandoned by the watchdog: a new worker took this one's place.
                    return;
                }
            }
            Work::Due(ids) => {
                let ready = prepare(inner, shared, ids);
                // The batch's async attempts go to the runtime together; the rest are ready.
                #[cfg(feature = "tokio")]
                let ready = attempts::admit_all(inner, shared, ready);
                shared.push_ready(ready);
            }
            Work::Exit => break,
        }
    }
    *shared.alive.lock() -= 1;
    shared.exited.notify_all();
}

/// Runs one ready event's handlers and writes its outcome. Returns false if the watchdog
/// abandoned this worker meanwhile (the watchdog wrote the outcome).
fn run_one(inner: &Arc<Inner>, shared: &Arc<Shared>, slot: &Slot, prepared: Arc<Prepared>) -> bool {
    #[cfg(feature = "tokio")]
    if prepared.is_async() {
        // Run as a task: the worker goes on at once.
        attempts::admit_all(inner, shared, vec![prepared]);
        return true;
    }
    if shared.stalled(inner, &prepared.name) {
        shared.park(inner, prepared);
        return true;
    }
    if !take_for_handlers(inner, &prepared) {
        finish(inner, prepared.id);
        return true;
    }
    let Some(failure) = run_handlers(inner, shared, slot, &prepared) else {
        return false;
    };
    write_outcome(inner, shared, Outcome { prepared, failure });
    true
}

/// Moves an event from waiting to running before its handlers run. False if a cancel reached
/// it while it waited, so that no attempt starts after a cancel returned: the event was
/// cancelled itself (nothing more to write), or its job was (the event is still Running, and
/// is cancelled here, durably, instead of being run; `cancel_job` counted it).
fn take_for_handlers(inner: &Inner, p: &Prepared) -> bool {
    match inner.core.lock().begin_handlers(p.id, p.attempt) {
        Begin::Run => return true,
        Begin::Skip => return false,
        Begin::CancelForJob => {}
    }
    let record = Record::Cancel(Cancel {
        target: CancelTarget::Event(p.id),
        cancelled_ms: inner.clock.now_ms(),
    });
    // If the log refuses the record, the event stays Running until a restart, where recovery
    // cancels it because its job is cancelled.
    let _order = inner.cancel_order.read();
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
    let event = p.event();
    // Lateness counts to the moment the handlers start: after the attempt record is durable.
    let late_ms = inner.clock.now_ms() - p.due_ms;
    inner.metrics.record_lateness(late_ms);
    let stats = inner.metrics.names.at(p.stats);
    stats.lateness_ms(late_ms);
    let span = p.span();
    let _entered = span.enter();
    let mut first_failure = None;
    for registered in p.handlers.iter() {
        // Timeouts run on the monotonic clock: a step of the wall clock does not end them.
        let started_ms = inner.clock.monotonic_ms();
        let deadline = Arc::new(Deadline::new(started_ms, registered.options.timeout));
        {
            let mut state = slot.state.lock();
            if state.abandoned {
                return None;
            }
            state.current = Some((p.clone(), deadline.clone()));
        }
        // Most handlers start with a deadline after the watchdog's next look: no wake-up (a
        // wake-up per handler costs a context switch).
        let deadline_ms = *deadline.deadline_ms.lock();
        if deadline_ms < shared.watch_until.load(Ordering::Acquire) {
            shared.watch.notify();
        }
        let mut ctx = Context {
            job: p.job,
            deadline: deadline.clone(),
            engine: Arc::downgrade(inner),
            clock: inner.clock.clone(),
        };
        let handler = match &registered.handler {
            HandlerFn::Sync(handler) => handler,
            #[cfg(feature = "tokio")]
            HandlerFn::Async(_) => unreachable!("an event with async handlers runs as a task"),
        };
        let called = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| handler(&event, &mut ctx)));
        stats.handler_duration.record_duration(called.elapsed());
        {
            let mut state = slot.state.lock();
            if state.abandoned {
                drop(state);
                // Dropped here, on the thread it was abandoned with, before it counts as
                // returned (a panicking drop included).
                let _ = catch_unwind(AssertUnwindSafe(move || drop(result)));
                shared.returned(inner, &p.name);
                return None;
            }
            state.current = None;
        }
        // A result that arrives after the deadline is ignored, even if the watchdog has not
        // noticed yet: the clock decides, not the race.
        if inner.clock.monotonic_ms() > *deadline.deadline_ms.lock() {
            return Some(Some(timed_out(inner)));
        }
        let failure = failure_of(inner, result);
        if first_failure.is_none() {
            first_failure = failure;
        }
    }
    Some(first_failure)
}

/// What `catch_unwind` returns: the value, or the panic's payload.
type Caught<T> = Result<T, Box<dyn std::any::Any + Send + 'static>>;

/// What a handler's result (or panic) means for its attempt.
fn failure_of(inner: &Inner, result: Caught<Result<(), HandlerError>>) -> Option<Failed> {
    match result {
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
    }
}

/// The failure of an attempt whose handler ran past its deadline.
fn timed_out(inner: &Inner) -> Failed {
    inner.metrics.timed_out.fetch_add(1, Ordering::Relaxed);
    Failed::new(Failure::Platform {
        reason: RetryReason::TimeOut,
    })
}

/// The watchdog thread: fails attempts whose handler runs past its deadline.
fn watch(inner: &Arc<Inner>, shared: &Arc<Shared>) {
    while !shared.stopping.load(Ordering::Acquire) {
        // Handlers starting from now on wake the watchdog, until it says how long it sleeps.
        shared.watch_until.store(i64::MAX, Ordering::Release);
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
            // Abandon the worker: its thread finishes the handler on its own and exits; a new
            // worker takes its place, and the attempt fails here.
            state.abandoned = true;
            state.current = None;
            drop(state);
            shared.abandon(&prepared.name);
            inner
                .metrics
                .workers_replaced
                .fetch_add(1, Ordering::Relaxed);
            shared.slots.lock().retain(|s| !Arc::ptr_eq(s, &slot));
            *shared.alive.lock() -= 1;
            spawn_worker(inner, shared);
            write_outcome(
                inner,
                shared,
                Outcome {
                    prepared,
                    failure: Some(timed_out(inner)),
                },
            );
        }
        #[cfg(feature = "tokio")]
        if let Some(deadline_ms) = attempts::watch(inner, shared, now_ms) {
            earliest = Some(earliest.map_or(deadline_ms, |e| e.min(deadline_ms)));
        }
        // The facade's gauges, once a second at most (this loop runs at least that often).
        inner.refresh_gauges();
        // At least once a second, so a deadline a handler shortened (`Context::set_timeout`)
        // is seen within a second of passing.
        let until = earliest
            .map_or(i64::MAX, |d| d.saturating_add(1))
            .min(now_ms.saturating_add(WATCH_POLL_MS));
        shared.watch_until.store(until, Ordering::Release);
        inner.clock.wait_monotonic_until(&shared.watch, Some(until));
    }
}

/// What the worker found for one due event.
enum Plan {
    Attempt(Prepared),
    Ignore {
        id: EventId,
        attempt: u32,
        stats: NameSlot,
    },
    Expire {
        id: EventId,
        attempt: u32,
        stats: NameSlot,
    },
}

/// Reads each due event and writes its attempt (or ignore/expire) record; returns the events
/// whose handlers should run. Every other event leaves the ledger here.
fn prepare(inner: &Arc<Inner>, shared: &Shared, ids: Vec<EventId>) -> Vec<Arc<Prepared>> {
    let now_ms = inner.clock.now_ms();
    let started = inner.started.load(Ordering::Acquire);
    let mut plans = Vec::with_capacity(ids.len());
    let mut finished = Vec::new();
    let mut stalled = Vec::new();
    let mut publishes = Publishes::default();
    let mut last: Option<NameSlot> = None;
    for id in ids {
        let info = {
            let core = inner.core.lock();
            core.event(id)
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
                    // The body is read where it lies now (a restated event's latest record).
                    let reader = inner.log.segment_reader(u64::from(i.body_at.segment));
                    (
                        (i.body_at, reader),
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
            finished.push(id);
            continue;
        };
        let Some((record, body, published_ms, first_due_ms)) = publishes.read(id, location) else {
            inner.metrics.read_errors.fetch_add(1, Ordering::Relaxed);
            finished.push(id);
            continue;
        };
        let handlers = inner.handlers.read().get(&*name).cloned();
        // Events due together are often of one name: the previous event's entry, if so.
        let stats = match last {
            Some(slot) if *inner.metrics.names.at(slot).name == *name => slot,
            _ => inner.metrics.names.slot(&name),
        };
        last = Some(stats);
        let planned = super::core::plan(&super::core::PlanInput {
            attempts,
            past_retention: inner.options.past_retention(first_due_ms, now_ms),
            has_handlers: handlers.as_ref().is_some_and(|h| !h.is_empty()),
            started,
            stalled: shared.stalled(inner, &name),
        });
        match (planned, handlers) {
            (Planned::Attempt { attempt }, Some(handlers)) => {
                plans.push(Plan::Attempt(Prepared {
                    id,
                    name,
                    stats,
                    record,
                    body,
                    published_ms,
                    first_due_ms,
                    due_ms,
                    attempt,
                    job,
                    retry_context,
                    handlers,
                }));
            }
            (Planned::Expire { attempt }, _) => plans.push(Plan::Expire { id, attempt, stats }),
            (Planned::Ignore { attempt }, _) => plans.push(Plan::Ignore { id, attempt, stats }),
            (Planned::Wait, _) => stalled.push(id),
            (Planned::Attempt { .. } | Planned::Leave, _) => finished.push(id),
        }
    }
    if !stalled.is_empty() {
        // Too many of the name's handlers hang: its events wait, nothing written.
        inner
            .metrics
            .stalled
            .fetch_add(stalled.len() as u64, Ordering::Relaxed);
        let mut core = inner.core.lock();
        let wake = stalled.iter().fold(false, |wake, &id| {
            core.put_back(id, now_ms.saturating_add(STALL_RETRY_MS)) | wake
        });
        drop(core);
        if wake {
            inner.wake.notify();
        }
        inner.idle.notify_all();
    }
    finish_all(inner, &finished);
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
            Plan::Ignore { id, attempt, .. } => Record::Ack(Ack {
                event: *id,
                attempt: *attempt,
                acked_ms: now_ms,
                outcome: AckOutcome::Ignored,
            }),
            Plan::Expire { id, attempt, .. } => Record::Drop(crate::format::Drop {
                event: *id,
                attempt: *attempt,
                dropped_ms: now_ms,
                reason: DropReason::Expired,
                message: EXPIRED_MESSAGE,
            }),
        })
        .collect();
    // Released once every record is applied (see `Inner::cancel_order`).
    let order = inner.cancel_order.read();
    let Ok(positions) = inner.log.append_all(&records) else {
        // The log is poisoned: nothing more can be recorded; the events stay pending on disk.
        let ids: Vec<EventId> = plans.iter().map(Plan::id).collect();
        finish_all(inner, &ids);
        return Vec::new();
    };
    let mut ready = Vec::new();
    let mut done = Vec::new();
    let mut deaths = Vec::new();
    for ((plan, record), pos) in plans.into_iter().zip(&records).zip(positions) {
        let applied = inner.apply(pos, record);
        let changed = matches!(applied, Ok(Applied::Changed));
        if changed && super::dead::kills(record) {
            deaths.push((plan.id(), pos));
            inner.metrics.names.at(plan.stats()).dead_letter();
        }
        match plan {
            Plan::Attempt(p) if changed => {
                inner.metrics.delivered.fetch_add(1, Ordering::Relaxed);
                ready.push(Arc::new(p));
            }
            Plan::Attempt(p) => done.push(p.id),
            Plan::Ignore { id, stats, .. } => {
                inner.metrics.ignored.fetch_add(1, Ordering::Relaxed);
                inner.metrics.names.at(stats).attempt(Ended::Ignored);
                done.push(id);
            }
            Plan::Expire { id, stats, .. } => {
                // Counted only by the drop that changed the event: one count per event.
                if changed {
                    inner.metrics.expired.fetch_add(1, Ordering::Relaxed);
                    inner.metrics.names.at(stats).attempt(Ended::Expired);
                }
                done.push(id);
            }
        }
    }
    drop(order);
    inner.announce_dead(deaths);
    finish_all(inner, &done);
    ready
}

impl Plan {
    fn id(&self) -> EventId {
        match self {
            Plan::Attempt(p) => p.id,
            Plan::Ignore { id, .. } | Plan::Expire { id, .. } => *id,
        }
    }

    fn stats(&self) -> NameSlot {
        match self {
            Plan::Attempt(p) => p.stats,
            Plan::Ignore { stats, .. } | Plan::Expire { stats, .. } => *stats,
        }
    }
}

/// The publish records one `prepare` read, each read and parsed once: the events of a job
/// share one record, and reading it per event would check and parse it once per event.
#[derive(Default)]
struct Publishes {
    records: HashMap<(u32, u32), ParsedPublish>,
}

struct ParsedPublish {
    bytes: Arc<RecordBytes>,
    published_ms: i64,
    /// Each event of the record, in id order: its body's range in the payload and its first
    /// due time.
    events: Vec<(EventId, Range<usize>, i64)>,
}

impl ParsedPublish {
    fn event(&self, id: EventId) -> Option<&(EventId, Range<usize>, i64)> {
        // The first entry of the id, as the index keeps (a repeated id is a duplicate).
        let i = self.events.partition_point(|e| e.0 < id);
        self.events.get(i).filter(|e| e.0 == id)
    }
}

impl Publishes {
    fn read(
        &mut self,
        id: EventId,
        (location, reader): (crate::index::Location, Option<crate::log::SegmentReader>),
    ) -> Option<(Arc<RecordBytes>, Range<usize>, i64, i64)> {
        let key = (location.segment, location.offset);
        // A record of a compacted segment's new file may sit where another one sat in the
        // file read before: one without the event is read again.
        let stale = self
            .records
            .get(&key)
            .is_some_and(|parsed| parsed.event(id).is_none());
        if stale || !self.records.contains_key(&key) {
            let bytes = reader?.read(u64::from(location.offset)).ok()?;
            let (published_ms, events) = {
                let Ok(Record::Publish(publish)) = bytes.record() else {
                    return None;
                };
                let base = bytes.payload().as_ptr() as usize;
                let mut events: Vec<(EventId, Range<usize>, i64)> = publish
                    .events()
                    .map(|e| {
                        let start = e.body.as_ptr() as usize - base;
                        (e.id, start..start + e.body.len(), e.due_ms)
                    })
                    .collect();
                // A push's ids are consecutive, so this is already sorted.
                events.sort_by_key(|e| e.0);
                (publish.published_ms, events)
            };
            self.records.insert(
                key,
                ParsedPublish {
                    bytes: Arc::new(bytes),
                    published_ms,
                    events,
                },
            );
        }
        let parsed = self.records.get(&key)?;
        let (_, body, first_due_ms) = parsed.event(id)?.clone();
        Some((
            parsed.bytes.clone(),
            body,
            parsed.published_ms,
            first_due_ms,
        ))
    }
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

/// Writes the outcome of one attempt and has it applied: an ack, a retry or a drop.
///
/// Each outcome is its own record, durable on its own as soon as its attempt ends: it is
/// queued in the log at once and the applier applies it when its sync group is durable
/// (concurrent workers' outcomes share syncs through the log's group commit; the worker goes
/// on with its next attempt meanwhile). A record the log refuses fails only its own attempt,
/// never another. Once delivery stops, an outcome is written and applied here.
fn write_outcome(inner: &Arc<Inner>, shared: &Shared, outcome: Outcome) {
    let now_ms = inner.clock.now_ms();
    let prepared = outcome.prepared;
    let cause = outcome.failure.as_ref().and_then(|failed| {
        tracing::warn!(
            name = &*prepared.name,
            id = prepared.id.0,
            attempt = prepared.attempt,
            error = %failed.message,
            "attempt failed"
        );
        match failed.failure {
            Failure::Platform {
                reason: RetryReason::TimeOut,
            } => Some(Ended::TimedOut),
            Failure::Platform {
                reason: RetryReason::PlatformUnknownError,
            } => Some(Ended::Panicked),
            _ => None,
        }
    });
    let decided = outcome
        .failure
        .map(|failed| decide_fitting(inner, &prepared, failed, now_ms));
    let record = outcome_record(&prepared, decided.as_ref(), now_ms);
    let ended = match (&record, cause) {
        (Record::Ack(_), _) => Ended::Acked,
        (_, Some(cause)) => cause,
        (Record::Retry(_), None) => Ended::Retried,
        (_, None) => Ended::Dropped,
    };
    // Submitted under `cancel_order`'s read lock and marked in the ledger, so that a cancel
    // of the event waits until this outcome is applied before it writes its own record: the
    // log's order of the two is then the order in which the core applied them.
    let _order = inner.cancel_order.read();
    let mut outcomes = shared.outcomes.lock();
    if outcomes.closed {
        drop(outcomes);
        // Only a poisoned or closed log refuses a record that fits: the event then stays
        // Running on disk and is delivered again after a restart.
        let written = inner.log.append(&record).map(|pos| vec![pos]);
        apply_durable(
            inner,
            &mut vec![(prepared, decided, now_ms, written, ended)],
        );
        return;
    }
    match inner.log.submit_all(std::slice::from_ref(&record)) {
        Ok(pending) => {
            inner.core.lock().outcome_submitted(prepared.id);
            outcomes.queue.push_back(Submitted {
                pending,
                prepared,
                decided,
                now_ms,
                ended,
            });
            drop(outcomes);
            shared.submitted.notify_one();
        }
        Err(_) => {
            drop(outcomes);
            finish(inner, prepared.id);
        }
    }
}

/// The applier thread: applies each submitted outcome once it is durable, in submission
/// order, until delivery stops and nothing is left.
fn apply_outcomes(inner: &Arc<Inner>, shared: &Shared) {
    let mut taken = VecDeque::new();
    let mut durable = Vec::new();
    loop {
        {
            let mut outcomes = shared.outcomes.lock();
            while outcomes.queue.is_empty() {
                if outcomes.closed {
                    return;
                }
                shared.submitted.wait(&mut outcomes);
            }
            // Everything submitted so far: most of it shares one sync group.
            std::mem::swap(&mut taken, &mut outcomes.queue);
        }
        for submitted in taken.drain(..) {
            let Submitted {
                pending,
                prepared,
                decided,
                now_ms,
                ended,
            } = submitted;
            let written = pending.wait();
            durable.push((prepared, decided, now_ms, written, ended));
        }
        apply_durable(inner, &mut durable);
    }
}

/// An outcome the log wrote (its position) or failed, with what rebuilds its record and
/// how its attempt ended.
type Durable = (
    Arc<Prepared>,
    Option<Decided>,
    i64,
    crate::error::Result<Vec<crate::log::Position>>,
    Ended,
);

/// Applies outcomes the log wrote (or failed), under one lock of the core.
fn apply_durable(inner: &Inner, durable: &mut Vec<Durable>) {
    let mut wake = false;
    let mut deaths = Vec::new();
    {
        let mut core = inner.core.lock();
        for (prepared, decided, now_ms, written, ended) in durable.iter() {
            let Some(&pos) = written.as_ref().ok().and_then(|p| p.first()) else {
                wake |= core.finish(prepared.id);
                continue;
            };
            let record = outcome_record(prepared, decided.as_ref(), *now_ms);
            // Counted before the event stops being in flight, so `wait_idle` sees the count.
            let counter = match record {
                Record::Ack(_) => &inner.metrics.acked,
                Record::Retry(_) => &inner.metrics.retried,
                _ => &inner.metrics.dropped,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let stats = inner.metrics.names.at(prepared.stats);
            stats.attempt(*ended);
            // The event leaves the ledger under the lock that may put it back in the wheel,
            // so the scheduler never finds it in both.
            let (applied, woken) = core.apply(pos, &record);
            wake |= woken;
            if applied == Ok(Applied::Changed) && super::dead::kills(&record) {
                deaths.push((prepared.id, pos));
                // Counted before the event stops being in flight, as the outcome is.
                stats.dead_letter();
            }
            wake |= core.finish(prepared.id);
        }
    }
    durable.clear();
    inner.announce_dead(deaths);
    if wake {
        inner.wake.notify();
    }
    inner.idle.notify_all();
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
            reason: *reason,
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

/// An event in flight is done.
fn finish(inner: &Inner, id: EventId) {
    finish_all(inner, &[id]);
}

/// Events in flight are done.
fn finish_all(inner: &Inner, ids: &[EventId]) {
    if ids.is_empty() {
        return;
    }
    let mut core = inner.core.lock();
    let wake = ids.iter().fold(false, |wake, &id| core.finish(id) | wake);
    drop(core);
    if wake {
        // A name at its concurrency limit (or the cap on events in flight) has room again.
        inner.wake.notify();
    }
    inner.idle.notify_all();
}
