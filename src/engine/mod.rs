//! The engine: the log, the event index and the timing wheel joined into the product.
//!
//! - `options.rs`: [`Options`].
//! - `handler.rs`: what handlers see and return.
//! - `delivery.rs`: the scheduler thread, the worker pool and the timeout watchdog.
//! - `guard.rs`: the unwind guard of every background thread: a panic stops the engine.
//! - `metrics.rs`: counters and the lateness histogram.
//!
//! Publishing writes a durable record, then applies it to the index and the wheel under one
//! lock (`Core`). The scheduler takes due events out of the wheel and hands them to workers in
//! batches; a worker writes the batch's attempt records (one sync), runs the handlers, and
//! appends each attempt's outcome as it ends.

mod compaction;
mod core;
mod dead;
mod delivery;
mod flow;
mod futures;
mod guard;
mod handler;
mod keys;
mod metrics;
mod names;
mod options;
mod order;
pub(crate) mod prometheus;
mod schedules;

pub use compaction::CompactionStats;
pub use dead::{DeadLetter, DeadReason};
#[cfg(feature = "tokio")]
pub use handler::{AsyncContext, AsyncHandler, HandlerFuture};
pub use handler::{Context, Event, Handler, HandlerError, HandlerOptions};
pub use keys::{KeyMode, KeyOutcome, PublishOptions, Published};
pub use metrics::Metrics;
pub use names::NameMetrics;
pub use options::{
    ABANDONED_TOTAL_FACTOR, DEFAULT_ABANDONED_THREADS, DEFAULT_ASYNC_ATTEMPTS,
    DEFAULT_DEAD_RETENTION, DEFAULT_HANDLER_TIMEOUT, DEFAULT_MAX_PUSH_BYTES,
    DEFAULT_MAX_PUSH_EVENTS, DEFAULT_RETENTION, FORGE_MAX_DELAY, MAX_HANDLER_TIMEOUT,
    MIN_COMPACTION_INTERVAL, Options,
};
pub use schedules::{CATCH_UP_ALL_CAP, CatchUp, Recurring, ScheduleInfo};

use self::core::Core;
pub(crate) use self::core::location;
use crate::after::After;
use crate::clock::{Clock, Wake};
use crate::error::{Error, Result};
use crate::format::{
    Cancel, CancelTarget, MAX_PAYLOAD_LEN, Publish, PublishEntry, Record, validate_name,
};
use crate::ids::{EventId, JobId};
use crate::index::{Applied, JobStats};
use crate::log::{Log, Position};
use crate::storage::{FsStorage, Storage};
use crate::sync::{Condvar, Mutex, RwLock};
pub(crate) use dead::death;
use handler::HandlerFn;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A handler registered for a name, with its options.
#[derive(Clone)]
pub(crate) struct Registered {
    pub handler: HandlerFn,
    pub options: HandlerOptions,
}

pub(crate) struct Inner {
    pub log: Log,
    /// The delivery state (see `core.rs` for what it holds and the lock order).
    pub core: Mutex<Core>,
    pub options: Options,
    pub clock: Arc<dyn Clock>,
    /// The handlers of each name, in registration order. Registration appends in place; a
    /// batch being prepared takes a clone of the `Arc` (a snapshot).
    pub handlers: RwLock<HashMap<String, Arc<Vec<Registered>>>>,
    next_event: AtomicU64,
    next_job: AtomicU64,
    /// Wakes the scheduler.
    pub wake: Wake,
    pub started: AtomicBool,
    pub closing: AtomicBool,
    /// Notified whenever work finishes, for `wait_idle` and `close`.
    pub idle: Condvar,
    pub metrics: metrics::Counters,
    /// Keeps the log's order of a cancel and of the records of the events it names (attempts,
    /// outcomes, expiry drops) the order in which the core applied them, so that a replay
    /// decides as the engine did. Delivery and expiry append and apply their records under
    /// the read lock, `cancel` and `cancel_job` under the write lock. Without it a cancel
    /// could be written before an ack but applied after it (`cancel` answers `false`, the
    /// handler's success counts) and a reopen would find the event cancelled.
    pub cancel_order: order::OrderLock,
    /// One keyed publish per key at a time (`keys.rs`).
    key_locks: keys::KeyLocks,
    /// One pause or resume at a time, so that each writes a record only when it changes
    /// the name's state.
    pause_lock: Mutex<()>,
    /// One redrive or purge of dead letters at a time.
    dead_lock: Mutex<()>,
    /// One schedule change or next occurrence at a time, so that each schedule has at most
    /// one pending occurrence.
    schedule_lock: Mutex<()>,
    /// Schedules catching up after a start with `CatchUp::All`.
    catching_up: Mutex<schedules::CatchingUp>,
    /// Idle schedules the schedules thread took and has not yet published (for `wait_idle`).
    schedules_in_flight: std::sync::atomic::AtomicUsize,
    schedules_thread: Mutex<Option<crate::sync::thread::JoinHandle<()>>>,
    pub delivery: Mutex<Option<delivery::Delivery>>,
    /// One compaction pass at a time.
    compaction_lock: Mutex<()>,
    /// Wakes the background compaction thread (on close).
    compaction_wake: Wake,
    compactor: Mutex<Option<crate::sync::thread::JoinHandle<()>>>,
    /// The first background thread that panicked, if any: the engine is then stopped.
    panicked: guard::Panicked,
    /// Set when `close` has finished (the log is closed, the lock released), for a second
    /// `close` to wait for.
    closed: Mutex<bool>,
    closed_cv: Condvar,
}

/// An open data directory: publish events, register handlers, and (after
/// [`start`](Engine::start)) have them delivered. Cheap to clone; clones share the engine.
/// Dropping the last clone closes it — but a clone captured by a handler (to publish
/// follow-up events, say) lives as long as the engine's handlers, so an engine whose handlers
/// hold clones must be closed with [`close`](Engine::close).
#[derive(Clone)]
pub struct Engine {
    handle: Arc<Handle>,
}

/// Closes the engine when the last [`Engine`] clone is dropped. Threads of the engine hold
/// `Inner`, not this, so they never keep an engine open that its users dropped.
struct Handle {
    inner: Arc<Inner>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // On a tokio runtime's thread, closing would hold that thread while handlers drain
        // (up to their timeouts) — and on a current-thread runtime the async handlers it waits
        // for could never run. The close runs on a thread of its own instead; the directory is
        // free once it is done (`close_async` says when).
        #[cfg(feature = "tokio")]
        if tokio::runtime::Handle::try_current().is_ok()
            && !self.inner.closing.load(Ordering::Acquire)
        {
            let inner = self.inner.clone();
            let spawned = crate::sync::thread::Builder::new()
                .name("afterlog-close".into())
                .spawn(move || {
                    let _ = inner.close();
                });
            if spawned.is_ok() {
                return;
            }
        }
        let _ = self.inner.close();
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("log", &self.handle.inner.log)
            .finish()
    }
}

impl Engine {
    /// Opens (recovers) the data directory `dir` with default options, creating it if needed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Engine> {
        Engine::open_with(dir, Options::default())
    }

    /// Opens (recovers) the data directory `dir`: takes its lock, replays the log into the
    /// index, rebuilds the wheel in bulk and continues ids. Publishing works at once;
    /// delivery begins at [`start`](Engine::start).
    pub fn open_with(dir: impl AsRef<Path>, options: Options) -> Result<Engine> {
        let dir = dir.as_ref();
        let storage =
            FsStorage::new(dir).map_err(|e| Error::io("create data directory", dir, e))?;
        Engine::open_storage(Arc::new(storage), options)
    }

    /// Opens an engine on any [`Storage`] (the fault-injecting `MemStorage` in tests).
    pub fn open_storage(storage: Arc<dyn Storage>, options: Options) -> Result<Engine> {
        if options.log.segment_bytes > u64::from(u32::MAX) {
            return Err(Error::LimitExceeded {
                what: "segment bytes",
                found: options.log.segment_bytes,
                max: u64::from(u32::MAX),
            });
        }
        options.check_limits()?;
        let mut core = Core::with_flow(options.flow_config());
        core.set_dead_retention(options.dead_retention_ms());
        let mut rejected = 0u64;
        let mut log_options = options.log.clone();
        if options.record_retention {
            log_options.retention_ms = Some(options.retention_ms().max(1) as u64);
            log_options.limits = Some(options.recorded_limits());
        }
        let (log, recovery) = Log::open(storage, log_options, |pos, record| {
            // A record the index cannot apply (an outcome whose publish was compacted away,
            // say) changes nothing; replay carries on.
            if core.replay(pos, record).is_err() {
                rejected += 1;
            }
            Ok(())
        })?;
        let clock = options.clock.clone();
        core.finish_replay(clock.now_ms());
        // Ids continue above every id in the log and above the floors in segment headers, which
        // remember allocated ids even after compaction removed every record naming them.
        let next_event = core
            .index()
            .max_event_id()
            .map_or(1, |id| id.0 + 1)
            .max(recovery.event_id_floor);
        let next_job = core
            .index()
            .max_job_id()
            .map_or(1, |id| id.0 + 1)
            .max(recovery.job_id_floor);
        log.raise_id_floors(next_event, next_job);
        let metrics = metrics::Counters::default();
        metrics.replay_rejected.store(rejected, Ordering::Relaxed);
        let inner = Arc::new(Inner {
            log,
            core: Mutex::new(core),
            clock,
            handlers: RwLock::new(HashMap::new()),
            next_event: AtomicU64::new(next_event),
            next_job: AtomicU64::new(next_job),
            wake: Wake::new(),
            started: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            idle: Condvar::new(),
            metrics,
            cancel_order: order::OrderLock::default(),
            key_locks: keys::KeyLocks::default(),
            pause_lock: Mutex::new(()),
            dead_lock: Mutex::new(()),
            schedule_lock: Mutex::new(()),
            catching_up: Mutex::new(schedules::CatchingUp::default()),
            schedules_in_flight: std::sync::atomic::AtomicUsize::new(0),
            schedules_thread: Mutex::new(None),
            delivery: Mutex::new(None),
            compaction_lock: Mutex::new(()),
            compaction_wake: Wake::new(),
            compactor: Mutex::new(None),
            panicked: guard::Panicked::default(),
            closed: Mutex::new(false),
            closed_cv: Condvar::new(),
            options,
        });
        if let Some(interval) = inner.options.compaction_interval {
            let thread_inner = inner.clone();
            // The first pass is due an interval after the open, however late the thread
            // starts (a clock advanced meanwhile must not push it back).
            let interval_ms = interval.as_millis().min(i64::MAX as u128) as i64;
            let first_ms = inner.clock.now_ms().saturating_add(interval_ms);
            let handle = crate::sync::thread::Builder::new()
                .name("afterlog-compactor".into())
                .spawn(move || {
                    let guard_inner = thread_inner.clone();
                    guard::guarded(&guard_inner, "compactor", move || {
                        thread_inner.compact_in_background(first_ms, interval_ms)
                    });
                })
                .map_err(|e| Error::invalid(format!("cannot start the compaction thread: {e}")))?;
            *inner.compactor.lock() = Some(handle);
        }
        Ok(Engine {
            handle: Arc::new(Handle { inner }),
        })
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.handle.inner
    }

    /// Registers a handler for events named `name`, with the default options (5 s timeout).
    /// Handlers of one name are called in registration order.
    pub fn on<F>(&self, name: &str, handler: F)
    where
        F: Fn(&Event, &mut Context) -> std::result::Result<(), HandlerError>
            + Send
            + Sync
            + 'static,
    {
        self.on_with(name, HandlerOptions::default(), handler);
    }

    /// Registers a handler with options.
    pub fn on_with<F>(&self, name: &str, options: HandlerOptions, handler: F)
    where
        F: Fn(&Event, &mut Context) -> std::result::Result<(), HandlerError>
            + Send
            + Sync
            + 'static,
    {
        self.register(
            name,
            Registered {
                handler: HandlerFn::Sync(Arc::new(handler)),
                options,
            },
        );
    }

    /// Registers an async handler for events named `name`, with the default options (5 s
    /// timeout): `handler` is called with the event and a context, and the future it returns
    /// is run on the tokio runtime current when [`start`](Engine::start) is called (or the
    /// one given with [`Options::runtime`]). An engine started outside any runtime runs a
    /// small one of its own (one thread, `afterlog-async`) for its async handlers.
    ///
    /// The future's `Ok(())` acknowledges; an error or a panic fails the attempt as a sync
    /// handler's does. When the timeout passes (on the engine's clock) the attempt fails with
    /// `FUNCTION_TIME_OUT` and the future is dropped: it is cancelled at the `.await` it is
    /// suspended at. Async attempts are not bounded by worker threads: up to
    /// [`Options::async_attempts`] (default 1,024) run at once. Sync and async handlers may
    /// share a name: for each attempt they run one after another in registration order (a
    /// sync one on the runtime's blocking pool), and all see the same `time`, `delay`,
    /// `attempt` and retry context.
    ///
    /// ```
    /// use afterlog::{After, Engine};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let engine = Engine::open(dir.path())?;
    /// engine.on_async("user.joined", |event, ctx| async move {
    ///     let email = std::str::from_utf8(event.body())?.to_owned();
    ///     // Give the handler's own I/O the time left before its timeout.
    ///     tokio::time::timeout(ctx.remaining(), async { println!("welcome, {email}") }).await?;
    ///     Ok(())
    /// });
    /// engine.start(); // on this runtime
    /// engine.publish_async("user.joined", "a@b.c", After::NOW).await?;
    /// engine.close_async().await?; // waits for running handlers, then closes
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tokio")]
    pub fn on_async<F, Fut>(&self, name: &str, handler: F)
    where
        F: Fn(Event, AsyncContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
    {
        self.on_async_with(name, HandlerOptions::default(), handler);
    }

    /// Registers an async handler with options (see [`on_async`](Engine::on_async)).
    #[cfg(feature = "tokio")]
    pub fn on_async_with<F, Fut>(&self, name: &str, options: HandlerOptions, handler: F)
    where
        F: Fn(Event, AsyncContext) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<(), HandlerError>> + Send + 'static,
    {
        let boxed: Arc<AsyncHandler> =
            Arc::new(move |event, ctx| -> HandlerFuture { Box::pin(handler(event, ctx)) });
        self.register(
            name,
            Registered {
                handler: HandlerFn::Async(boxed),
                options,
            },
        );
    }

    fn register(&self, name: &str, registered: Registered) {
        let mut handlers = self.inner().handlers.write();
        // Amortized O(1): the list is appended to in place, and copied only when a batch
        // being prepared still holds the previous version (which keeps seeing that one).
        match handlers.get_mut(name) {
            Some(list) => Arc::make_mut(list).push(registered),
            None => {
                handlers.insert(name.to_string(), Arc::new(vec![registered]));
            }
        }
    }

    /// Starts delivering due events (recovered ones included). Call it after registering
    /// handlers: before `start`, nothing is delivered, so no recovered event is missed.
    pub fn start(&self) {
        let inner = self.inner();
        if inner.closing.load(Ordering::Acquire) || inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        // Missed occurrences are published (or replaced) before anything is delivered.
        inner.catch_up_schedules();
        let delivery = delivery::Delivery::start(inner);
        *inner.delivery.lock() = Some(delivery);
        let thread_inner = inner.clone();
        let spawned = crate::sync::thread::Builder::new()
            .name("afterlog-schedules".into())
            .spawn(move || {
                let guard_inner = thread_inner.clone();
                guard::guarded(&guard_inner, "schedules", move || {
                    thread_inner.run_schedules()
                });
            });
        match spawned {
            Ok(handle) => *inner.schedules_thread.lock() = Some(handle),
            Err(e) => inner.stop_after_panic(
                "schedules",
                format!("cannot start the schedules thread: {e}"),
            ),
        }
    }

    /// Publishes an event, due `after` (Ampt's `events.publish`). Returns once the event is
    /// durable. A bad name, body, or `after` is an error and nothing is written.
    pub fn publish(
        &self,
        name: &str,
        body: impl AsRef<[u8]>,
        after: impl Into<After>,
    ) -> Result<EventId> {
        self.inner().publish(name, body.as_ref(), &after.into())
    }

    /// Publishes an event with a key or a priority (see [`PublishOptions`]). Returns once
    /// the event is durable — or, when its key is held and nothing is to be written
    /// ([`KeyOutcome::Kept`]), at once, with the holder's id.
    ///
    /// A key is per event name: an event holds it from its publish until it is acknowledged,
    /// cancelled or dropped (and, published with [`PublishOptions::key_window`], until the
    /// window passes). Publishes of one key are exact under any number of threads: each
    /// sees the one before it. A bad name, key (empty or over 255 bytes), body, window or
    /// `after` is an error and nothing is written.
    ///
    /// ```
    /// use afterlog::{After, Engine, KeyMode, KeyOutcome, PublishOptions};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let engine = Engine::open(dir.path())?;
    /// let once = PublishOptions::default().key("invoice-42", KeyMode::Keep);
    /// let first = engine.publish_with("invoice.send", "{}", After::parse("1 hour")?, once.clone())?;
    /// let again = engine.publish_with("invoice.send", "{}", After::parse("1 hour")?, once)?;
    /// assert_eq!((first.outcome, again.outcome), (KeyOutcome::New, KeyOutcome::Kept));
    /// assert_eq!(first.id, again.id);
    /// # Ok(())
    /// # }
    /// ```
    pub fn publish_with(
        &self,
        name: &str,
        body: impl AsRef<[u8]>,
        after: impl Into<After>,
        options: PublishOptions,
    ) -> Result<Published> {
        self.inner()
            .publish_with(name, body.as_ref(), &after.into(), &options)
    }

    /// Pauses `name`, durably: its events fall due and wait (retention still applies: one
    /// waiting past it is dropped as expired), attempts already running finish, and the name
    /// stays paused across restarts until [`resume`](Engine::resume). Pausing a paused name
    /// writes nothing.
    pub fn pause(&self, name: &str) -> Result<()> {
        self.inner().set_paused(name, true)
    }

    /// Resumes a paused name: its waiting events are delivered, best priority first.
    pub fn resume(&self, name: &str) -> Result<()> {
        self.inner().set_paused(name, false)
    }

    /// The paused names, sorted.
    pub fn paused(&self) -> Vec<String> {
        self.inner().paused()
    }

    /// The dead letters kept, newest first, at most `limit`: events dropped after their
    /// retries or maximum age, dropped past retention, or acknowledged with no handler for
    /// their name, each kept for [`Options::dead_retention`] (default 30 days) with its
    /// body, attempts and last failure message. Bodies are read from the log.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.inner().dead_letters(limit)
    }

    /// Publishes dead letter `id` again: a new event, due now, with its name, body and
    /// priority (no key, no job), and forgets the dead letter — in one record, so a crash
    /// leaves both done or neither. An id that is no dead letter (any more) is an error,
    /// and nothing is written.
    pub fn redrive(&self, id: EventId) -> Result<EventId> {
        self.inner().redrive(id)
    }

    /// Forgets every dead letter now (one record); returns how many there were. Compaction
    /// then removes their records as any finished event's.
    pub fn purge_dead(&self) -> Result<u64> {
        self.inner().purge_dead()
    }

    /// Publishes `value` serialized as JSON.
    pub fn publish_json<T: serde::Serialize + ?Sized>(
        &self,
        name: &str,
        value: &T,
        after: impl Into<After>,
    ) -> Result<EventId> {
        self.publish(name, json_body(value)?, after)
    }

    /// Pushes a job of events named `name` (Forge's `queue.push`), all due after `delay`, written
    /// atomically: all of them or none. At most 50 events and 200 KiB (see [`Options`]); on a
    /// name whose policy is Forge's
    /// ([`RetryPolicy::is_forge`](crate::RetryPolicy::is_forge): `RetryPolicy::forge()` and
    /// any policy built from it, the default policy included), `delay` is at most 15 minutes. A zero `delay` makes the
    /// events due at once.
    pub fn push<I, B>(&self, name: &str, bodies: I, delay: Duration) -> Result<JobId>
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        let bodies: Vec<B> = bodies.into_iter().collect();
        let bodies: Vec<&[u8]> = bodies.iter().map(|b| b.as_ref()).collect();
        self.inner().push(name, &bodies, delay)
    }

    /// Cancels an event: after this returns, no new attempt of it starts. Returns whether it
    /// was pending (false if it had already finished, even if compaction has forgotten it
    /// since). An id this engine never gave out — 0 (ids start at 1) or one above the last —
    /// is an error (`Error::InvalidInput`, "unknown event"), and nothing is written.
    pub fn cancel(&self, id: EventId) -> Result<bool> {
        self.inner().cancel(id)
    }

    /// Cancels every event of `job` that has not started; returns how many (0 for a job that
    /// finished, even if compaction has forgotten it since). Those are the events whose
    /// attempt had not begun — scheduled, or handed to a worker whose handlers had not
    /// started — and each is counted once, here, in [`JobStats::cancelled`] and in
    /// [`Metrics::cancelled`]. An attempt already running finishes: if it fails, its event
    /// fails (`JobStats::failed`) instead of being retried. A job id never given out — 0 or
    /// one above the last — is an error, as it is for [`job_stats`](Engine::job_stats).
    pub fn cancel_job(&self, job: JobId) -> Result<u64> {
        self.inner().cancel_job(job)
    }

    /// Progress of a job. A finished job's final counts stay readable after compaction has
    /// removed its events, for [`Options::dead_retention`] after it finished (a job-done
    /// record keeps them); after that, and for an id never given out, it is an error
    /// ("unknown job").
    pub fn job_stats(&self, job: JobId) -> Result<JobStats> {
        let now_ms = self.inner().clock.now_ms();
        let core = self.inner().core.lock();
        core.job_stats_or_summary(job, now_ms)
            .ok_or_else(|| Error::invalid(format!("unknown job {job}")))
    }

    /// Waits until nothing is due now and nothing is running (async attempts included), or
    /// `timeout` (real time) passes. Returns whether the engine became idle: false at once
    /// when a background thread panicked (the engine is stopped; see [`close`](Engine::close)).
    /// It blocks its thread: from async code, call it in `spawn_blocking` (on a
    /// current-thread runtime, the async handlers it waits for could not run meanwhile).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        self.inner().wait_idle(timeout)
    }

    /// Runs one full compaction pass now and waits for it: the active segment is sealed
    /// (if it holds any record), then every segment with any dead bytes is rewritten, so the
    /// records of every finished event leave the disk and their index entries are freed.
    ///
    /// When the active segment cannot be sealed because its successor cannot be created (a
    /// full disk), the sealed segments are compacted all the same — that is how space comes
    /// back — and sealing is tried once more after; if it still fails, the pass returns what
    /// it did, and the active segment's records wait for a later pass. If the pass freed
    /// nothing, the error of the roll is returned. A pass never runs after
    /// [`close`](Engine::close) began (`Error::Closed`), and `close` waits for a running one.
    pub fn compact_now(&self) -> Result<CompactionStats> {
        let inner = self.inner();
        inner.check_open()?;
        let _pass = inner.compaction_lock.lock();
        // Close may have begun while this waited for a pass of the background thread.
        inner.check_open()?;
        let Err(sealing) = inner.log.roll() else {
            return compaction::pass(inner, 0.0, u64::MAX, true);
        };
        if inner.log.poisoned().is_some() {
            return Err(sealing);
        }
        let mut stats = compaction::pass(inner, 0.0, u64::MAX, true)?;
        if inner.log.roll().is_ok() {
            stats.add(&compaction::pass(inner, 0.0, u64::MAX, true)?);
        } else if stats.bytes_before == stats.bytes_after && stats.events_expired == 0 {
            return Err(sealing);
        }
        Ok(stats)
    }

    /// The storage of the engine's data directory, for readers beside it (the dashboard).
    #[cfg_attr(not(feature = "web"), allow(dead_code))]
    pub(crate) fn storage(&self) -> Arc<dyn Storage> {
        self.handle.inner.log.storage()
    }

    /// Counters of the engine's work, in all and per event name.
    pub fn metrics(&self) -> Metrics {
        self.inner().metrics()
    }

    /// The engine's metrics in the Prometheus text exposition format (version 0.0.4): the
    /// counters per event name, the gauges and the histograms the `metrics` facade is given,
    /// under the same names (docs/OBSERVABILITY.md), read from the engine itself, so a
    /// `/metrics` endpoint needs no recorder. Histograms are Prometheus histograms
    /// (`_bucket{le}`, `_sum`, `_count`) with fixed buckets.
    pub fn metrics_text(&self) -> String {
        prometheus::render(self.inner())
    }

    /// Stops delivery (running handlers finish, up to their timeouts), syncs the log and
    /// releases the directory lock. Later calls on any clone fail with `Error::Closed`.
    ///
    /// It blocks its thread while handlers drain: from async code use
    /// [`close_async`](Engine::close_async), which waits on a thread of its own (on a
    /// current-thread runtime, a `close` would keep the async handlers it waits for from
    /// running until their timeouts fail them).
    ///
    /// A second `close` while one runs waits for it, and returns once the lock is released.
    ///
    /// Called from a handler (or by dropping the last clone there), `close` does not wait for
    /// the handler that called it: it stops the scheduler, waits for the other workers, and
    /// returns. The calling handler's attempt then ends as any other: when the handler
    /// returns, its outcome is written (an `Ok` is acknowledged, never turned into a timeout),
    /// and only then does its worker close the log and release the directory lock. A `close`
    /// on another thread meanwhile waits for that.
    ///
    /// If a background thread of the engine panicked, the engine is stopped: `close` does not
    /// wait for handlers (nothing more can be recorded), releases the lock and returns
    /// `Error::Panicked`, naming the thread and the panic's message.
    pub fn close(&self) -> Result<()> {
        self.inner().close()
    }
}

impl Inner {
    fn check_open(&self) -> Result<()> {
        if let Some(stopped) = self.stopped() {
            Err(stopped)
        } else if self.closing.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Whether `id` was handed out by this engine or an earlier one on the directory (ids
    /// start at 1, so 0 never was).
    fn event_given_out(&self, id: EventId) -> bool {
        id.0 != 0 && id.0 < self.next_event.load(Ordering::Relaxed)
    }

    /// Whether `job` was handed out (job ids start at 1).
    fn job_given_out(&self, job: JobId) -> bool {
        job.0 != 0 && job.0 < self.next_job.load(Ordering::Relaxed)
    }

    fn publish(&self, name: &str, body: &[u8], after: &After) -> Result<EventId> {
        let (id, now_ms, due_ms) = self.new_event(name, after)?;
        let entries = [PublishEntry {
            id,
            due_ms,
            name,
            body,
        }];
        self.write_publish(Record::Publish(Publish::new(None, now_ms, &entries)))?;
        self.count_published(name, 1);
        tracing::trace!(name, id = id.0, due_ms, "published");
        Ok(id)
    }

    /// Gives out an event id: the id and now.
    fn new_id(&self) -> Result<(EventId, i64)> {
        self.check_open()?;
        let id = EventId(self.next_event.fetch_add(1, Ordering::Relaxed));
        self.log.raise_id_floors(id.0 + 1, 0);
        Ok((id, self.clock.now_ms()))
    }

    /// Checks a publish and gives out its event id: the id, now and the due time.
    fn new_event(&self, name: &str, after: &After) -> Result<(EventId, i64, i64)> {
        self.check_open()?;
        validate_name(name)?;
        let now_ms = self.clock.now_ms();
        let due_ms = after.resolve(now_ms)?;
        let id = EventId(self.next_event.fetch_add(1, Ordering::Relaxed));
        self.log.raise_id_floors(id.0 + 1, 0);
        Ok((id, now_ms, due_ms))
    }

    fn push(&self, name: &str, bodies: &[&[u8]], delay: Duration) -> Result<JobId> {
        let (job, now_ms, due_ms, first) = self.new_job(name, bodies, delay)?;
        let entries = job_entries(name, bodies, due_ms, first);
        self.write_publish(Record::Publish(Publish::new(Some(job), now_ms, &entries)))?;
        self.count_published(name, bodies.len() as u64);
        tracing::trace!(name, job = job.0, events = bodies.len(), due_ms, "pushed");
        Ok(job)
    }

    /// Checks a push and gives out its ids: the job, now, the due time and the first event id.
    fn new_job(
        &self,
        name: &str,
        bodies: &[&[u8]],
        delay: Duration,
    ) -> Result<(JobId, i64, i64, u64)> {
        self.check_open()?;
        validate_name(name)?;
        if bodies.is_empty() {
            return Err(Error::invalid("a push needs at least one event"));
        }
        let limit = |what, found: usize, max: usize| {
            Err(Error::LimitExceeded {
                what,
                found: found as u64,
                max: max as u64,
            })
        };
        if bodies.len() > self.options.max_push_events {
            return limit(
                "events in one push",
                bodies.len(),
                self.options.max_push_events,
            );
        }
        let bytes: usize = bodies.iter().map(|b| b.len()).sum();
        if bytes > self.options.max_push_bytes {
            return limit(
                "payload bytes in one push",
                bytes,
                self.options.max_push_bytes,
            );
        }
        if self.options.policy_for(name).is_forge() && delay > FORGE_MAX_DELAY {
            return Err(Error::invalid(format!(
                "push delay of {}s on {name:?} exceeds the 900s (15 minutes) a queue with the Forge policy allows",
                delay.as_secs()
            )));
        }
        let now_ms = self.clock.now_ms();
        // No delay means due at once, as a Forge push without `delayInSeconds` is; a zero
        // `After::delay` would be refused as "not later than now".
        let after = if delay.is_zero() {
            After::NOW
        } else {
            After::delay(delay)
        };
        let due_ms = after.resolve(now_ms)?;
        let first = self
            .next_event
            .fetch_add(bodies.len() as u64, Ordering::Relaxed);
        let job = JobId(self.next_job.fetch_add(1, Ordering::Relaxed));
        self.log
            .raise_id_floors(first + bodies.len() as u64, job.0 + 1);
        Ok((job, now_ms, due_ms, first))
    }

    /// Writes a publish record durably, then schedules its events.
    fn write_publish(&self, record: Record<'_>) -> Result<()> {
        check_publish_len(&record)?;
        let pos = self.log.append(&record)?;
        // A fresh publish is always accepted: its ids were never used.
        let _ = self.apply(pos, &record);
        Ok(())
    }

    /// Applies a durable record to the index and the wheel; wakes the scheduler if something
    /// became due earlier than it sleeps. Returns what the index said.
    pub(crate) fn apply(
        &self,
        pos: Position,
        record: &Record<'_>,
    ) -> std::result::Result<Applied, crate::index::Rejected> {
        self.apply_then(pos, record, |_, _| {})
    }

    /// [`apply`](Inner::apply), then `then` with the result under the same lock.
    pub(crate) fn apply_then(
        &self,
        pos: Position,
        record: &Record<'_>,
        then: impl FnOnce(&mut Core, &std::result::Result<Applied, crate::index::Rejected>),
    ) -> std::result::Result<Applied, crate::index::Rejected> {
        let mut core = self.core.lock();
        let (result, wake) = core.apply(pos, record);
        then(&mut core, &result);
        drop(core);
        if wake {
            self.wake.notify();
        }
        self.idle.notify_all();
        result
    }

    fn cancel(&self, id: EventId) -> Result<bool> {
        let Some(record) = self.cancel_record(id)? else {
            return Ok(false);
        };
        let _order = self.cancel_order.write();
        self.wait_outcomes_applied(|core| core.finishing(std::iter::once(id)));
        let pos = self.log.append(&record)?;
        Ok(self.apply_cancel(pos, &record))
    }

    /// The record that cancels `id`, or `None` if it is not pending (nothing to write).
    fn cancel_record(&self, id: EventId) -> Result<Option<Record<'static>>> {
        self.check_open()?;
        {
            let core = self.core.lock();
            match core.index().state(id) {
                // Its job's cancel counted it already; its worker cancels it.
                Some(_) if core.cancelled_with_job(id) => return Ok(None),
                Some(state) if state.is_pending() => {}
                Some(_) => return Ok(None),
                // Given out before but no longer indexed: finished, and compacted away.
                None if self.event_given_out(id) => return Ok(None),
                None => return Err(Error::invalid(format!("unknown event {id}"))),
            }
        }
        Ok(Some(Record::Cancel(Cancel {
            target: CancelTarget::Event(id),
            cancelled_ms: self.clock.now_ms(),
        })))
    }

    /// Applies a durable cancel of an event; whether it cancelled it.
    fn apply_cancel(&self, pos: Position, record: &Record<'_>) -> bool {
        let mut name = None;
        let applied = self.apply_then(pos, record, |core, applied| {
            if matches!(applied, Ok(Applied::Changed)) {
                // The cancelled event stays indexed (until compaction): its name is there.
                name = record
                    .event()
                    .and_then(|id| core.index().name_of(id))
                    .map(|n| self.metrics.names.get(n));
            }
        });
        let changed = matches!(applied, Ok(Applied::Changed));
        if changed {
            self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            if let Some(stats) = name {
                stats.cancelled(1);
            }
        }
        changed
    }

    /// Counts `n` events of `name` published.
    pub(crate) fn count_published(&self, name: &str, n: u64) {
        self.metrics.published.fetch_add(n, Ordering::Relaxed);
        self.metrics.names.get(name).published(n);
    }

    /// Counts `n` events of `name` cancelled.
    pub(crate) fn count_cancelled(&self, name: &str, n: u64) {
        self.metrics.cancelled.fetch_add(n, Ordering::Relaxed);
        self.metrics.names.get(name).cancelled(n);
    }

    pub(crate) fn cancel_job(&self, job: JobId) -> Result<u64> {
        let Some(record) = self.cancel_job_record(job)? else {
            return Ok(0);
        };
        let order = self.cancel_order.write();
        self.wait_outcomes_applied(|core| core.finishing(core.index().job_events(job)));
        let pos = self.log.append(&record)?;
        let n = self.apply_cancel_job(job, pos, &record);
        drop(order);
        Ok(n)
    }

    /// The record that cancels `job`, or `None` for a job that finished (nothing to write).
    fn cancel_job_record(&self, job: JobId) -> Result<Option<Record<'static>>> {
        self.check_open()?;
        if self.core.lock().job_stats(job).is_none() {
            // A job given out before but no longer indexed finished and was compacted away.
            if self.job_given_out(job) {
                return Ok(None);
            }
            return Err(Error::invalid(format!("unknown job {job}")));
        }
        Ok(Some(Record::Cancel(Cancel {
            target: CancelTarget::Job(job),
            cancelled_ms: self.clock.now_ms(),
        })))
    }

    /// Applies a durable cancel of `job`; how many of its events it cancelled.
    fn apply_cancel_job(&self, job: JobId, pos: Position, record: &Record<'_>) -> u64 {
        // Counted under the lock that applies the cancel: the Scheduled events it cancels,
        // and the events already handed to a worker whose handlers have not begun, which
        // their worker cancels instead of running (see `delivery::take_for_handlers`).
        let (n, name) = {
            let mut core = self.core.lock();
            // A job's events share one name (a push has one).
            let name = core
                .index()
                .job_events(job)
                .next()
                .and_then(|id| core.index().name_of(id))
                .map(|n| self.metrics.names.get(n));
            let before = core.job_stats(job).map_or(0, |s| s.cancelled);
            let was_cancelled = core.index().job_cancelled(job).unwrap_or(true);
            let waiting = if was_cancelled {
                0
            } else {
                core.job_waiting(job)
            };
            // Cancelling only unschedules: the scheduler needs no wake-up.
            let _ = core.apply(pos, record);
            let after = core.job_stats(job).map_or(before, |s| s.cancelled);
            (after.saturating_sub(before) + waiting, name)
        };
        self.metrics.cancelled.fetch_add(n, Ordering::Relaxed);
        if let Some(stats) = name.filter(|_| n > 0) {
            stats.cancelled(n);
        }
        self.idle.notify_all();
        n
    }

    /// Under `cancel_order`'s write lock: waits until no outcome `queued` names is queued in
    /// the log and not yet applied (the applier applies each within a sync), so that a cancel
    /// written next is applied after them, as a replay will.
    fn wait_outcomes_applied(&self, queued: impl Fn(&Core) -> bool) {
        let mut core = self.core.lock();
        while queued(&core) && self.stopped().is_none() {
            self.idle.wait_for(&mut core, Duration::from_millis(10));
        }
    }

    fn is_idle(&self, core: &Core) -> bool {
        let schedules_busy = self.started.load(Ordering::Acquire)
            && (core.index().has_idle_schedules()
                || core.index().has_done_jobs()
                || self.schedules_in_flight.load(Ordering::Acquire) > 0);
        !schedules_busy && core.is_idle(self.clock.now_ms())
    }

    fn wait_idle(&self, timeout: Duration) -> bool {
        // A timeout too long for an `Instant` (`Duration::MAX`, say) is no deadline at all.
        let until = Instant::now().checked_add(timeout);
        let mut core = self.core.lock();
        loop {
            // A stopped engine never becomes idle: its work is left for the next open.
            if self.stopped().is_some() {
                return false;
            }
            if self.is_idle(&core) {
                return true;
            }
            let now = Instant::now();
            let left = match until {
                Some(until) if now >= until => return false,
                Some(until) => until - now,
                None => Duration::MAX,
            };
            // Short waits: a clock change does not notify this condition variable.
            let step = left.min(Duration::from_millis(10));
            self.idle.wait_for(&mut core, step);
        }
    }

    /// The gauges of the core and the log now, also handed to the facade's gauges.
    pub(crate) fn core_gauges(&self) -> metrics::CoreGauges {
        let mut gauges = {
            let core = self.core.lock();
            metrics::CoreGauges {
                pending: core.index().pending_count(),
                in_flight: core.in_flight(),
                queued: core.queued(),
                index_bytes: core.memory_bytes() as u64,
                dead_letters: core.index().dead_count(),
                schedules: core.index().schedule_count() as u64,
                disk_bytes: 0,
            }
        };
        gauges.disk_bytes = self.log.disk_bytes();
        self.metrics.gauges.set(&gauges);
        gauges
    }

    /// Sets the facade's gauges if a second (on the engine's monotonic clock) passed since
    /// they were last set here: called from the watchdog's loop, which runs at least once a
    /// second while delivery runs.
    pub(crate) fn refresh_gauges(&self) {
        let now_ms = self.clock.monotonic_ms();
        let last_ms = self.metrics.gauges_set_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last_ms) >= GAUGES_INTERVAL_MS {
            self.metrics.gauges_set_ms.store(now_ms, Ordering::Relaxed);
            let _ = self.core_gauges();
        }
    }

    fn metrics(&self) -> Metrics {
        let core_gauges = self.core_gauges();
        let gauges = match &*self.delivery.lock() {
            Some(d) => metrics::DeliveryGauges {
                abandoned_threads: d.abandoned(),
                stalled_names: d.stalled_names(self),
                async_running: d.async_attempts().0,
                async_waiting: d.async_attempts().1,
            },
            None => metrics::DeliveryGauges::default(),
        };
        self.metrics
            .snapshot(core_gauges, self.log.counters(), gauges)
    }

    /// The background compaction thread: a paced pass every `interval` on the engine's clock.
    fn compact_in_background(self: Arc<Inner>, first_ms: i64, interval_ms: i64) {
        let mut next_ms = first_ms;
        while !self.closing.load(Ordering::Acquire) {
            let now_ms = self.clock.now_ms();
            if now_ms >= next_ms {
                let _pass = self.compaction_lock.lock();
                if self.closing.load(Ordering::Acquire) {
                    break;
                }
                let (min_dead, budget) = (
                    self.options.compaction_min_dead,
                    self.options.compaction_budget_bytes,
                );
                // A failed pass leaves everything as it was; the next one tries again.
                let took = Instant::now();
                let _ = compaction::pass(&self, min_dead, budget, false);
                // An interval from the pass's start, so a clock that moves on during the pass
                // does not push the next one back; a pass that took longer than the interval
                // is followed by a quarter of an interval's rest.
                next_ms = now_ms.saturating_add(interval_ms);
                if took.elapsed().as_millis() >= interval_ms as u128 {
                    next_ms = self.clock.now_ms().saturating_add(interval_ms / 4);
                }
            }
            self.clock.wait_until(&self.compaction_wake, Some(next_ms));
        }
    }

    fn close(&self) -> Result<()> {
        self.close_from(delivery::Caller::current(self))
    }

    /// `close`, called by `caller`: a handler of this engine's (its own attempt is not waited
    /// for) or anyone else.
    pub(crate) fn close_from(&self, caller: delivery::Caller) -> Result<()> {
        if self.closing.swap(true, Ordering::AcqRel) {
            // Another close runs: wait for it to finish, so that the directory is free when
            // this returns — unless this is a handler of this engine, which that close may
            // be waiting for.
            // Bounded as the first close's wait for handlers is.
            if caller.is_outside() {
                let until = Instant::now() + MAX_HANDLER_TIMEOUT + Duration::from_secs(5);
                let mut closed = self.closed.lock();
                while !*closed && Instant::now() < until {
                    self.closed_cv.wait_until(&mut closed, until);
                }
            }
            return self.stopped().map_or(Ok(()), Err);
        }
        self.wake.notify();
        self.compaction_wake.notify();
        let compactor = self.compactor.lock().take();
        if let Some(compactor) = compactor {
            let _ = compactor.join();
        }
        self.core.lock().schedules_wake.notify();
        let schedules = self.schedules_thread.lock().take();
        if let Some(schedules) = schedules {
            let _ = schedules.join();
        }
        // A `compact_now` running on another thread finishes before the lock is released
        // (a pass that starts from now on sees `closing` and does nothing), so no second
        // engine opens the directory while this one still renames and removes files in it.
        drop(self.compaction_lock.lock());
        let delivery = self.delivery.lock().take();
        if let Some(delivery) = delivery
            && delivery.stop(self, caller)
        {
            // Called from a handler: its worker closes the log once the handler returned and
            // its outcome is written (`finish_close`).
            return self.stopped().map_or(Ok(()), Err);
        }
        self.finish_close()
    }

    /// The last step of `close`: closes the log (releasing the directory lock) and lets a
    /// second `close` waiting for this one return. A stopped engine's close fails with the
    /// panic that stopped it.
    pub(crate) fn finish_close(&self) -> Result<()> {
        let closed = self.log.close();
        *self.closed.lock() = true;
        self.closed_cv.notify_all();
        match self.stopped() {
            Some(stopped) => Err(stopped),
            None => closed,
        }
    }
}

/// How often the watchdog sets the facade's gauges, at most (engine clock, monotonic).
const GAUGES_INTERVAL_MS: i64 = 1_000;

/// The entries of a push: consecutive ids from `first`, one due time.
fn job_entries<'a>(
    name: &'a str,
    bodies: &[&'a [u8]],
    due_ms: i64,
    first: u64,
) -> Vec<PublishEntry<'a>> {
    bodies
        .iter()
        .enumerate()
        .map(|(i, body)| PublishEntry {
            id: EventId(first + i as u64),
            due_ms,
            name,
            body,
        })
        .collect()
}

/// A publish record too large for the log is refused before anything is written.
fn check_publish_len(record: &Record<'_>) -> Result<()> {
    if record.encoded_len() > MAX_PAYLOAD_LEN {
        return Err(Error::LimitExceeded {
            what: "event bytes (body plus metadata)",
            found: record.encoded_len() as u64,
            max: MAX_PAYLOAD_LEN as u64,
        });
    }
    Ok(())
}

/// A JSON body, or the error that says why `value` is not one.
fn json_body<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| Error::invalid(format!("body is not serializable as JSON: {e}")))
}
