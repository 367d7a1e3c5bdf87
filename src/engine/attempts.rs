//! Async attempts: the attempts of events with async handlers, run as tasks on a tokio
//! runtime instead of on worker threads.
//!
//! A worker that takes such an event from the ready queue (its attempt record durable) admits
//! it here and goes on at once: the event's task runs its handlers in registration order —
//! each async one polled under a deadline, each sync one on the runtime's blocking pool — and
//! queues its outcome as a worker does. At most `Options::async_attempts` tasks run at once;
//! more wait here, in order, and each task that ends starts the next one. As many again may
//! wait; beyond that, the worker admitting one waits for room, so workers do not write the
//! attempt records of every due event far ahead of the tasks that run them.
//!
//! Timeouts are the watchdog's, on the engine's clock, as for threads: an attempt whose
//! handler runs past its deadline is *claimed* by the watchdog, which fails it with
//! `FUNCTION_TIME_OUT` and wakes its task; the task then drops the handler's future — which is
//! how an async handler is cancelled at the `.await` it waits at — and ends. Whoever claims
//! an attempt (its task, with the handlers' outcome, or the watchdog) writes its outcome, so
//! a runtime too busy to poll the task still sees the attempt fail on time.
//!
//! A runtime can shut down under an open engine. A task it drops before its first poll is
//! spawned again on a runtime of the engine's own, which from then on runs every async attempt;
//! a task it drops mid-attempt fails its attempt ("the runtime ... shut down"), and the
//! name's policy retries it.

use super::{
    Caller, Failed, Inner, Outcome, Prepared, Shared, failure_of, take_for_handlers, timed_out,
    write_outcome,
};
use crate::engine::handler::{AsyncContext, Context, Deadline, HandlerError, HandlerFn};
use crate::sync::{Condvar, Mutex};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::Instant;
use tracing::Instrument;

/// The running and waiting async attempts of one delivery.
pub(crate) struct Attempts {
    state: Mutex<State>,
    /// Notified when an attempt is claimed or a task ends (for `close`).
    changed: Condvar,
    /// Notified when the waiting attempts drop to the bound, for workers that wait for room.
    room: Condvar,
    /// The serial number of the last attempt spawned.
    next_serial: std::sync::atomic::AtomicU64,
    runtime: Mutex<Runtime>,
    bound: usize,
}

#[derive(Default)]
struct State {
    /// Tasks spawned and not ended.
    running: usize,
    /// Admitted attempts not yet claimed (running or waiting): what `close` waits for.
    open: usize,
    waiting: VecDeque<Arc<Prepared>>,
    /// The slots of running attempts, by serial number, for the watchdog.
    slots: HashMap<u64, Arc<AttemptSlot>>,
    /// The runtime refused a task (it shut down): no more are spawned.
    refused: bool,
    /// The attempt whose handler called `close`: its task closes the log when it ends.
    close_on_exit: Option<u64>,
}

enum Runtime {
    /// The runtime current at `start` or given with `Options::runtime`.
    Given(tokio::runtime::Handle),
    /// None was: one of the engine's own, made when the first async attempt needs it.
    Own(tokio::runtime::Runtime),
    None,
    /// The engine's own could not be made (or was shut down).
    Unavailable,
}

/// One running attempt, shared with the watchdog.
struct AttemptSlot {
    prepared: Arc<Prepared>,
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// The running handler's deadline.
    deadline: Option<Arc<Deadline>>,
    /// The attempt's outcome is being written, by its task or by the watchdog.
    claimed: bool,
    /// The watchdog claimed it: the handler ran past its deadline.
    timed_out: bool,
    /// The task, while it waits for its handler.
    waker: Option<Waker>,
}

impl Attempts {
    pub fn new(inner: &Inner) -> Attempts {
        let runtime = match inner
            .options
            .runtime
            .clone()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
        {
            Some(handle) => Runtime::Given(handle),
            None => Runtime::None,
        };
        Attempts {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            room: Condvar::new(),
            next_serial: std::sync::atomic::AtomicU64::new(0),
            runtime: Mutex::new(runtime),
            bound: inner.options.async_attempts,
        }
    }

    /// Tasks running and attempts waiting for room, now.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state.lock();
        (state.running as u64, state.waiting.len() as u64)
    }

    /// A handle on the runtime the tasks run on, making the engine's own if need be, and
    /// whether it is the application's (given, or current at `start`).
    fn handle(&self) -> Option<(tokio::runtime::Handle, bool)> {
        let mut runtime = self.runtime.lock();
        if let Runtime::None = *runtime {
            *runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("afterlog-async")
                .enable_all()
                .build()
                .map_or(Runtime::Unavailable, Runtime::Own);
        }
        match &*runtime {
            Runtime::Given(handle) => Some((handle.clone(), true)),
            Runtime::Own(own) => Some((own.handle().clone(), false)),
            Runtime::None | Runtime::Unavailable => None,
        }
    }

    /// Once every attempt is done: stops the engine's own runtime, if it made one, without
    /// waiting for it (a task still holding a timed-out handler is dropped).
    pub fn shut_down_own_runtime(&self) {
        let own = std::mem::replace(&mut *self.runtime.lock(), Runtime::Unavailable);
        match own {
            Runtime::Own(own) => own.shutdown_background(),
            other => *self.runtime.lock() = other,
        }
    }

    /// Waits until every admitted attempt is claimed (but `caller`'s own, if it is one), or
    /// `until`. Whether they are.
    pub fn wait_drained(&self, caller: &Caller, until: Instant) -> bool {
        let own = usize::from(matches!(caller, Caller::Attempt(_)));
        let mut state = self.state.lock();
        loop {
            if state.open <= own {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            self.changed.wait_for(
                &mut state,
                (until - now).min(std::time::Duration::from_millis(50)),
            );
        }
    }

    /// `close` was called by attempt `serial`'s handler: its task closes the log when it
    /// ends. False if it has ended (or was claimed by the watchdog): the caller closes it.
    pub fn close_on_exit(&self, serial: u64) -> bool {
        let mut state = self.state.lock();
        if state.slots.contains_key(&serial) {
            state.close_on_exit = Some(serial);
            true
        } else {
            false
        }
    }

    fn claimed(&self) {
        let mut state = self.state.lock();
        state.open -= 1;
        drop(state);
        self.changed.notify_all();
    }
}

/// Admits the async attempts among prepared events, and returns the others. Each starts now,
/// or when a running one ends. Those that start now are spawned by one task on the runtime,
/// so a batch costs one hand-off to the runtime's threads, not one per event (a task spawned
/// from the runtime's own thread goes to its local queue). Workers prepare no more than a
/// bound's worth of attempts ahead of the tasks (each waiting one has its attempt record
/// written already; a crash would count it): past that, this waits for room.
pub(super) fn admit_all(
    inner: &Arc<Inner>,
    shared: &Arc<Shared>,
    ready: Vec<Arc<Prepared>>,
) -> Vec<Arc<Prepared>> {
    let (batch, others): (Vec<_>, Vec<_>) = ready.into_iter().partition(|p| p.is_async());
    if batch.is_empty() {
        return others;
    }
    let attempts = &shared.attempts;
    let (mut now, mut refused) = (VecDeque::new(), Vec::new());
    {
        let mut state = attempts.state.lock();
        for prepared in batch {
            state.open += 1;
            if state.refused {
                refused.push(prepared);
            } else if state.running < attempts.bound {
                state.running += 1;
                now.push_back(prepared);
            } else {
                state.waiting.push_back(prepared);
            }
        }
    }
    never_run(inner, shared, refused);
    match now.len() {
        0 => {}
        1 => spawn(inner, shared, now.pop_front().expect("one")),
        _ => match attempts.handle() {
            Some((handle, _)) => {
                let batch = Batch {
                    inner: inner.clone(),
                    shared: shared.clone(),
                    left: now,
                };
                handle.spawn(async move { drop(batch) });
            }
            None => now.into_iter().for_each(|p| spawn(inner, shared, p)),
        },
    }
    wait_for_room(inner, shared, &mut attempts.state.lock(), attempts.bound);
    others
}

/// Waits until at most `most` attempts wait for room (or no task will ever take them: the
/// runtime refused, delivery stops, the engine stopped).
fn wait_for_room(
    inner: &Inner,
    shared: &Shared,
    state: &mut crate::sync::MutexGuard<'_, State>,
    most: usize,
) {
    while state.waiting.len() > most
        && !state.refused
        && !shared.stopping.load(Ordering::Acquire)
        && inner.stopped().is_none()
    {
        shared
            .attempts
            .room
            .wait_for(state, std::time::Duration::from_millis(50));
    }
}

/// Admitted attempts (`running` counts them), spawned when this is dropped: by a task on the
/// runtime, or by the runtime as it shuts down without running that task (`spawn` then finds
/// them a runtime: see `TaskEnd`).
struct Batch {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    left: VecDeque<Arc<Prepared>>,
}

impl Drop for Batch {
    fn drop(&mut self) {
        while let Some(prepared) = self.left.pop_front() {
            spawn(&self.inner, &self.shared, prepared);
        }
    }
}

/// Spawns an admitted event's task (`running` counts it already).
fn spawn(inner: &Arc<Inner>, shared: &Arc<Shared>, prepared: Arc<Prepared>) {
    let Some((handle, on_given)) = shared.attempts.handle() else {
        refuse(inner, shared, prepared);
        return;
    };
    let serial = shared.attempts.next_serial.fetch_add(1, Ordering::Relaxed) + 1;
    let slot = Arc::new(AttemptSlot {
        prepared,
        state: Mutex::new(SlotState::default()),
    });
    let end = TaskEnd {
        inner: inner.clone(),
        shared: shared.clone(),
        slot: slot.clone(),
        serial,
        started: false,
        claimed_here: false,
        on_given,
    };
    // The guard is moved into the task, so it runs even if the runtime drops the task
    // without ever polling it.
    handle.spawn(run(end, handle.clone()));
}

/// No runtime will run this admitted event's task (`running` counts it): it and every waiting
/// one stay in flight with no outcome (delivered again after a restart), and no more tasks
/// are spawned.
fn refuse(inner: &Inner, shared: &Shared, prepared: Arc<Prepared>) {
    let waiting: Vec<Arc<Prepared>> = {
        let mut state = shared.attempts.state.lock();
        state.refused = true;
        state.running -= 1;
        state.waiting.drain(..).collect()
    };
    never_run(inner, shared, std::iter::once(prepared).chain(waiting));
}

/// Admitted attempts that will not run: they leave the ledger unclaimed-for.
fn never_run(inner: &Inner, shared: &Shared, prepared: impl IntoIterator<Item = Arc<Prepared>>) {
    let ids: Vec<_> = prepared.into_iter().map(|p| p.id).collect();
    super::finish_all(inner, &ids);
    let mut state = shared.attempts.state.lock();
    state.open -= ids.len();
    drop(state);
    shared.attempts.changed.notify_all();
    shared.attempts.room.notify_all();
}

/// The watchdog's look at the async attempts: claims and fails each one past its deadline,
/// and wakes its task. Returns the earliest deadline still ahead.
pub(super) fn watch(inner: &Arc<Inner>, shared: &Arc<Shared>, now_ms: i64) -> Option<i64> {
    let slots: Vec<Arc<AttemptSlot>> = shared
        .attempts
        .state
        .lock()
        .slots
        .values()
        .cloned()
        .collect();
    let mut earliest: Option<i64> = None;
    for slot in slots {
        let mut state = slot.state.lock();
        let Some(deadline) = state.deadline.clone() else {
            continue;
        };
        let deadline_ms = *deadline.deadline_ms.lock();
        if state.claimed {
            continue;
        }
        if now_ms <= deadline_ms {
            earliest = Some(earliest.map_or(deadline_ms, |e| e.min(deadline_ms)));
            continue;
        }
        state.claimed = true;
        state.timed_out = true;
        let waker = state.waker.take();
        drop(state);
        write_outcome(
            inner,
            shared,
            Outcome {
                prepared: slot.prepared.clone(),
                failure: Some(timed_out(inner)),
            },
        );
        shared.attempts.claimed();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
    earliest
}

/// Ends a task, however it ends: it leaves the watchdog's sight, an attempt nobody claimed
/// leaves the ledger (no outcome: it is delivered again after a restart), and the next
/// waiting attempt starts.
struct TaskEnd {
    inner: Arc<Inner>,
    shared: Arc<Shared>,
    slot: Arc<AttemptSlot>,
    serial: u64,
    /// The runtime polled the task.
    started: bool,
    /// The task claimed the attempt and wrote its outcome: `open` is lowered when it ends.
    claimed_here: bool,
    /// It was spawned on the application's runtime (not the engine's own).
    on_given: bool,
}

impl TaskEnd {
    /// Claims the attempt for its task. False if the watchdog did (it timed out).
    fn claim(&self) -> bool {
        let mut state = self.slot.state.lock();
        if state.claimed {
            return false;
        }
        state.claimed = true;
        state.deadline = None;
        true
    }
}

impl Drop for TaskEnd {
    fn drop(&mut self) {
        let (inner, shared) = (&self.inner, &self.shared);
        if !self.started && self.on_given && !shared.stopping.load(Ordering::Acquire) {
            // Dropped unpolled: the application's runtime it was spawned on has shut down.
            // The engine's own runtime takes over (another task dropped so may have made it
            // already): the attempt starts there.
            {
                let mut runtime = shared.attempts.runtime.lock();
                if matches!(*runtime, Runtime::Given(_)) {
                    *runtime = Runtime::None;
                }
            }
            spawn(inner, shared, self.slot.prepared.clone());
            return;
        }
        if !self.started {
            // Dropped unpolled, and no runtime will run it.
            refuse(inner, shared, self.slot.prepared.clone());
            return;
        }
        if self.claim() {
            // Dropped mid-attempt (its runtime shut down): the attempt fails, and the policy
            // decides when it runs again.
            let failure = Failed::new(crate::retry::Failure::Error {
                message: "the runtime running the attempt's async handler shut down".to_string(),
            });
            write_outcome(
                inner,
                shared,
                Outcome {
                    prepared: self.slot.prepared.clone(),
                    failure: Some(failure),
                },
            );
            shared.attempts.claimed();
        }
        let (next, close) = {
            let mut state = shared.attempts.state.lock();
            if self.claimed_here {
                state.open -= 1;
            }
            state.slots.remove(&self.serial);
            let close = state.close_on_exit == Some(self.serial);
            let next = if state.refused {
                None
            } else {
                state.waiting.pop_front()
            };
            if next.is_none() {
                state.running -= 1;
            }
            // Workers wait for room only while more than the bound waits: no wake-up per task.
            if next.is_some() && state.waiting.len() <= shared.attempts.bound {
                shared.attempts.room.notify_all();
            }
            (next, close)
        };
        shared.attempts.changed.notify_all();
        if let Some(next) = next {
            spawn(inner, shared, next);
        }
        if close {
            let _ = inner.finish_close();
        }
    }
}

/// An attempt's task.
async fn run(mut end: TaskEnd, handle: tokio::runtime::Handle) {
    end.started = true;
    let (inner, shared) = (end.inner.clone(), end.shared.clone());
    let p = end.slot.prepared.clone();
    end.shared
        .attempts
        .state
        .lock()
        .slots
        .insert(end.serial, end.slot.clone());
    if !take_for_handlers(&inner, &p) {
        // Cancelled while it waited: no outcome to write.
        if end.claim() {
            super::finish(&inner, p.id);
            shared.attempts.claimed();
        }
        return;
    }
    let late_ms = inner.clock.now_ms() - p.due_ms;
    inner.metrics.record_lateness(late_ms);
    let stats = inner.metrics.names.at(p.stats);
    stats.lateness_ms(late_ms);
    // The handlers' futures are polled in the attempt's span (`Instrument`: no runtime's
    // support needed), and a sync handler runs in it on the blocking pool.
    let span = p.span();
    let event = p.event();
    let mut first_failure: Option<Failed> = None;
    for registered in p.handlers.iter() {
        let started_ms = inner.clock.monotonic_ms();
        let deadline = Arc::new(Deadline::new(started_ms, registered.options.timeout));
        let deadline_ms = *deadline.deadline_ms.lock();
        {
            let mut state = end.slot.state.lock();
            if state.claimed {
                return;
            }
            state.deadline = Some(deadline.clone());
        }
        if deadline_ms < shared.watch_until.load(Ordering::Acquire) {
            shared.watch.notify();
        }
        let engine = Arc::downgrade(&inner);
        let address = Arc::as_ptr(&inner) as usize;
        let serial = end.serial;
        // A sync handler's state on the blocking pool.
        let mut blocking: Option<Arc<Mutex<Blocking>>> = None;
        let made: super::Caught<super::super::HandlerFuture> = match &registered.handler {
            HandlerFn::Async(handler) => {
                let ctx = AsyncContext {
                    job: p.job,
                    deadline: deadline.clone(),
                    engine,
                    clock: inner.clock.clone(),
                };
                // Calling the handler may panic too, before its future exists.
                catch_unwind(AssertUnwindSafe(|| {
                    let _entered = span.enter();
                    with_attempt(address, serial, || handler(event.clone(), ctx))
                }))
            }
            HandlerFn::Sync(handler) => {
                let mut ctx = Context {
                    job: p.job,
                    deadline: deadline.clone(),
                    engine,
                    clock: inner.clock.clone(),
                };
                let (handler, event) = (handler.clone(), event.clone());
                let left = Arc::new(Mutex::new(Blocking::Running));
                blocking = Some(left.clone());
                let (thread_inner, thread_shared, name) =
                    (inner.clone(), shared.clone(), p.name.clone());
                let thread_span = span.clone();
                let join = handle.spawn_blocking(move || {
                    let _entered = thread_span.enter();
                    let result = catch_unwind(AssertUnwindSafe(|| {
                        with_attempt(address, serial, || handler(&event, &mut ctx))
                    }));
                    // Left running past its timeout: the thread was counted as abandoned.
                    let mut left = left.lock();
                    if *left == Blocking::Abandoned {
                        thread_shared.returned(&thread_inner, &name);
                    }
                    *left = Blocking::Returned;
                    result
                });
                Ok(Box::pin(async move {
                    match join.await {
                        Ok(Ok(result)) => result,
                        Ok(Err(payload)) => std::panic::resume_unwind(payload),
                        Err(e) => Err(HandlerError::msg(format!(
                            "the handler's blocking task failed: {e}"
                        ))),
                    }
                }))
            }
        };
        let called = Instant::now();
        let result = match made {
            Ok(future) => {
                Guarded {
                    future: Some(future),
                    slot: &end.slot,
                    address,
                    serial,
                }
                .instrument(span.clone())
                .await
            }
            Err(payload) => Some(Err(payload)),
        };
        stats.handler_duration.record_duration(called.elapsed());
        // `None`: the watchdog claimed the attempt and wrote its timeout; the handler's
        // future is dropped already. A sync handler's thread cannot be stopped: it is left
        // to finish on the blocking pool, counted with the abandoned threads of its name
        // (`Options::abandoned_threads`) until it returns.
        let Some(result) = result else {
            if let Some(left) = blocking {
                let mut left = left.lock();
                if *left == Blocking::Running {
                    *left = Blocking::Abandoned;
                    shared.abandon(&p.name);
                }
            }
            return;
        };
        {
            let mut state = end.slot.state.lock();
            if state.claimed {
                return;
            }
            state.deadline = None;
        }
        // A result that arrives after the deadline is ignored, as on a worker.
        if inner.clock.monotonic_ms() > *deadline.deadline_ms.lock() {
            first_failure = Some(timed_out(&inner));
            break;
        }
        let failure = failure_of(&inner, result);
        if first_failure.is_none() {
            first_failure = failure;
        }
    }
    if !end.claim() {
        return;
    }
    write_outcome(
        &inner,
        &shared,
        Outcome {
            prepared: p,
            failure: first_failure,
        },
    );
    // Counted as claimed by `TaskEnd`, under the lock it takes anyway.
    end.claimed_here = true;
}

/// A sync handler of an async attempt, on the runtime's blocking pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blocking {
    Running,
    /// Its attempt timed out while it ran: counted as an abandoned thread.
    Abandoned,
    Returned,
}

crate::sync::thread_local! {
    /// While an attempt's handler is polled (or its sync handler runs): its engine (the
    /// address of its `Inner`) and the attempt's serial number, for `close`.
    static ATTEMPT: std::cell::Cell<Option<(usize, u64)>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` as attempt `serial` of the engine at `address`.
fn with_attempt<T>(address: usize, serial: u64, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<(usize, u64)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0;
            ATTEMPT.with(|a| a.set(previous));
        }
    }
    let _restore = Restore(ATTEMPT.with(|a| a.replace(Some((address, serial)))));
    f()
}

/// The async attempt of `inner`'s engine being run on this thread, if any.
pub(super) fn current(inner: &Inner) -> Option<u64> {
    let address = std::ptr::from_ref(inner) as usize;
    ATTEMPT
        .with(|a| a.get())
        .filter(|(engine, _)| *engine == address)
        .map(|(_, serial)| serial)
}

/// A handler's future under its attempt's deadline: `None` once the watchdog claimed the
/// attempt (the future is dropped then, at once); else the handler's result, a panic caught.
struct Guarded<'a> {
    future: Option<super::super::HandlerFuture>,
    slot: &'a AttemptSlot,
    address: usize,
    serial: u64,
}

impl Future for Guarded<'_> {
    type Output = Option<super::Caught<Result<(), HandlerError>>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        {
            let mut state = this.slot.state.lock();
            if state.timed_out {
                drop(state);
                // Dropped here, inside the task, so its destructors run before the task ends.
                let future = this.future.take();
                let _ = catch_unwind(AssertUnwindSafe(move || drop(future)));
                return Poll::Ready(None);
            }
            if !state
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.waker = Some(cx.waker().clone());
            }
        }
        let Some(future) = this.future.as_mut() else {
            return Poll::Ready(None);
        };
        let (address, serial) = (this.address, this.serial);
        match catch_unwind(AssertUnwindSafe(|| {
            with_attempt(address, serial, || future.as_mut().poll(cx))
        })) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => {
                this.future = None;
                Poll::Ready(Some(Ok(result)))
            }
            Err(payload) => {
                let future = this.future.take();
                let _ = catch_unwind(AssertUnwindSafe(move || drop(future)));
                Poll::Ready(Some(Err(payload)))
            }
        }
    }
}
