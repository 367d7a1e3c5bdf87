//! How an engine is configured.

use crate::clock::{Clock, SystemClock};
use crate::log::{Durability, LogOptions};
use crate::retry::RetryPolicy;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The default handler timeout (Ampt): 5 seconds.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a handler may be given (Ampt): 60 seconds.
pub const MAX_HANDLER_TIMEOUT: Duration = Duration::from_secs(60);
/// The shortest background compaction interval: a shorter one (zero, say) is raised to this,
/// so the compaction thread never runs its passes back to back in a busy loop.
pub const MIN_COMPACTION_INTERVAL: Duration = Duration::from_millis(10);
/// How long an event is kept after its first due time when never acknowledged: 14 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);
/// Most events in one `push` (Forge).
pub const DEFAULT_MAX_PUSH_EVENTS: usize = 50;
/// Most payload bytes in one `push` (Forge: 200 KB).
pub const DEFAULT_MAX_PUSH_BYTES: usize = 200 * 1024;
/// The longest `push` delay on a queue with the Forge policy: 15 minutes.
pub const FORGE_MAX_DELAY: Duration = Duration::from_secs(900);

/// The message of the drop record of an event past retention.
pub(crate) const EXPIRED_MESSAGE: &str =
    "not acknowledged within the retention after its first due time";

/// Events in flight per worker (plus `async_attempts`) before due events wait in their
/// names' queues, where priorities order them.
pub(crate) const IN_FLIGHT_PER_WORKER: usize = 4096;

/// Default of [`Options::async_attempts`]: async attempts that may run at once.
pub const DEFAULT_ASYNC_ATTEMPTS: usize = 1024;

/// Default of [`Options::abandoned_threads`].
pub const DEFAULT_ABANDONED_THREADS: usize = 8;
/// The engine-wide bound on abandoned handler threads, as a multiple of
/// [`Options::abandoned_threads`].
pub const ABANDONED_TOTAL_FACTOR: usize = 4;

/// How long a dead letter is kept by default: 30 days.
pub const DEFAULT_DEAD_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The hook [`Options::on_dead`] installs.
pub(crate) type DeadHook = Arc<dyn Fn(&super::DeadLetter) + Send + Sync>;

/// Options of [`Engine::open_with`](crate::Engine::open_with). Every setter consumes and
/// returns the options, so they chain.
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) policies: HashMap<String, RetryPolicy>,
    pub(crate) default_policy: RetryPolicy,
    pub(crate) workers: usize,
    pub(crate) abandoned_threads: usize,
    pub(crate) retention: Duration,
    pub(crate) record_retention: bool,
    pub(crate) max_push_events: usize,
    pub(crate) max_push_bytes: usize,
    pub(crate) log: LogOptions,
    pub(crate) compaction_interval: Option<Duration>,
    pub(crate) compaction_min_dead: f64,
    pub(crate) compaction_budget_bytes: u64,
    pub(crate) async_attempts: usize,
    /// Concurrency and rate limits per name, as given (checked at open).
    pub(crate) limits: HashMap<String, super::flow::Limits>,
    pub(crate) dead_retention: Duration,
    pub(crate) on_dead: Option<DeadHookFn>,
    #[cfg(feature = "tokio")]
    pub(crate) runtime: Option<tokio::runtime::Handle>,
}

/// [`Options::on_dead`]'s hook, with a `Debug` that names it only.
#[derive(Clone)]
pub(crate) struct DeadHookFn(pub DeadHook);

impl std::fmt::Debug for DeadHookFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("on_dead hook")
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            policies: HashMap::new(),
            default_policy: RetryPolicy::default(),
            workers: 4,
            abandoned_threads: DEFAULT_ABANDONED_THREADS,
            retention: DEFAULT_RETENTION,
            record_retention: true,
            max_push_events: DEFAULT_MAX_PUSH_EVENTS,
            max_push_bytes: DEFAULT_MAX_PUSH_BYTES,
            log: LogOptions::default(),
            compaction_interval: Some(Duration::from_secs(10)),
            dead_retention: DEFAULT_DEAD_RETENTION,
            on_dead: None,
            compaction_min_dead: 0.5,
            compaction_budget_bytes: 256 << 20,
            async_attempts: DEFAULT_ASYNC_ATTEMPTS,
            limits: HashMap::new(),
            #[cfg(feature = "tokio")]
            runtime: None,
        }
    }
}

impl Options {
    /// The clock the engine reads and waits on: [`SystemClock`] by default,
    /// [`ManualClock`](crate::ManualClock) in tests.
    pub fn clock(mut self, clock: impl Clock) -> Options {
        self.clock = Arc::new(clock);
        self
    }

    /// The retry policy of events named `name` (a queue, in Forge's words). A name whose
    /// policy is Forge's ([`RetryPolicy::is_forge`]: `RetryPolicy::forge()` and any policy
    /// built from it) also gets Forge's push limits (a delay of at most 15 minutes).
    pub fn policy(mut self, name: impl Into<String>, policy: RetryPolicy) -> Options {
        self.policies.insert(name.into(), policy);
        self
    }

    /// The retry policy of names without one of their own (default: Ampt's, every 6 minutes
    /// for 14 days).
    pub fn default_policy(mut self, policy: RetryPolicy) -> Options {
        self.default_policy = policy;
        self
    }

    /// Most attempts of events with async handlers running at once (default
    /// [`DEFAULT_ASYNC_ATTEMPTS`], at least 1), whatever [`workers`](Options::workers) says:
    /// an async attempt waiting on I/O holds no thread. More due events wait, in order, until
    /// a running attempt ends.
    pub fn async_attempts(mut self, n: usize) -> Options {
        self.async_attempts = n.max(1);
        self
    }

    /// The tokio runtime async handlers run on (default: the runtime current when
    /// [`Engine::start`](crate::Engine::start) is called; outside any, a one-thread runtime of
    /// the engine's own, `afterlog-async`, made when the first async attempt needs it and shut
    /// down by `close`).
    #[cfg(feature = "tokio")]
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Options {
        self.runtime = Some(handle);
        self
    }

    /// Worker threads running sync handlers (default 4, at least 1); they also write the
    /// attempt records of every due event. Async attempts run on the runtime, bounded by
    /// [`async_attempts`](Options::async_attempts) instead.
    pub fn workers(mut self, workers: usize) -> Options {
        self.workers = workers.max(1);
        self
    }

    /// Most threads left running handlers of one name past their timeout (default
    /// [`DEFAULT_ABANDONED_THREADS`], at least 1); the engine as a whole leaves at most
    /// [`ABANDONED_TOTAL_FACTOR`] times as many. A timed-out attempt fails at once and a new
    /// worker takes its thread's place, but the thread itself cannot be stopped: it finishes
    /// the handler on its own. A name with this many such threads is *stalled*: its due events
    /// wait (nothing is written; they are looked at again every second) until one of its
    /// handlers returns, and other names are delivered as before. `Metrics::abandoned_threads`
    /// and `Metrics::stalled_names` say so.
    pub fn abandoned_threads(mut self, n: usize) -> Options {
        self.abandoned_threads = n.max(1);
        self
    }

    /// How long after its first due time an unacknowledged event is dropped as expired
    /// (default 14 days).
    pub fn retention(mut self, retention: Duration) -> Options {
        self.retention = retention;
        self
    }

    /// Whether opening records the retention and the flow limits (`concurrency`,
    /// `rate_limit`) in the directory's manifest (default true), so that readers and the
    /// `afterlog` CLI know which events are live and which limits are in force. A tool that
    /// opens a directory without knowing the application's options turns this off, and
    /// leaves the recorded ones alone.
    pub fn record_retention(mut self, record: bool) -> Options {
        self.record_retention = record;
        self
    }

    /// Most events in one `push` (default 50).
    pub fn max_push_events(mut self, n: usize) -> Options {
        self.max_push_events = n;
        self
    }

    /// Most body bytes in one `push` (default 200 KiB).
    pub fn max_push_bytes(mut self, n: usize) -> Options {
        self.max_push_bytes = n;
        self
    }

    /// The largest segment file (default 64 MiB). A directory's first segment is 1 MiB (at most
    /// this), and each new segment doubles the size of the one before up to this.
    pub fn segment_bytes(mut self, n: u64) -> Options {
        self.log.segment_bytes = n;
        self
    }

    /// At most `n` attempts of events named `name` at once, sync and async handlers alike
    /// (at least 1; zero is refused by `open`). Due events of the name wait in its queue,
    /// best priority first, while `n` attempts run; other names go on. An attempt counts from
    /// the moment delivery takes its event until its outcome is applied; a handler abandoned
    /// past its timeout no longer counts (its attempt failed).
    pub fn concurrency(mut self, name: &str, n: usize) -> Options {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.limits.entry(name.to_string()).or_default().concurrency = Some(n);
        self
    }

    /// At most `n` attempts of events named `name` start per `per`, on the engine's clock: a
    /// token bucket of `n` tokens refilled at one every `per / n`, so a burst of up to `n`
    /// starts at once after a quiet while, and over any time `t` at most `n + n × t / per`
    /// start. `n` and `per` (whole milliseconds) must not be zero: `open` refuses them.
    /// Events that find no token wait in the name's queue (retention still applies).
    pub fn rate_limit(mut self, name: &str, n: u32, per: Duration) -> Options {
        let per_ms = per.as_millis().min(i64::MAX as u128) as i64;
        self.limits.entry(name.to_string()).or_default().rate = Some((n, per_ms));
        self
    }

    /// Checks the flow limits: names valid, no zero limit.
    pub(crate) fn check_limits(&self) -> crate::Result<()> {
        let max = crate::format::MAX_MANIFEST_LIMITS;
        if self.limits.len() > max {
            return Err(crate::Error::LimitExceeded {
                what: "names with flow limits",
                found: self.limits.len() as u64,
                max: max as u64,
            });
        }
        for (name, limits) in &self.limits {
            crate::format::validate_name(name)?;
            if limits.concurrency == Some(0) {
                return Err(crate::Error::invalid(format!(
                    "concurrency limit 0 on {name:?}: no attempt could ever run (use pause)"
                )));
            }
            if let Some((n, per_ms)) = limits.rate
                && (n == 0 || per_ms <= 0)
            {
                return Err(crate::Error::invalid(format!(
                    "rate limit of {n} per {per_ms} ms on {name:?}: both must be above zero"
                )));
            }
        }
        Ok(())
    }

    /// The core's flow configuration.
    /// The limits as the manifest records them, sorted by name.
    pub(crate) fn recorded_limits(&self) -> Vec<crate::format::NameLimits> {
        let mut limits: Vec<_> = self
            .limits
            .iter()
            .map(|(name, l)| crate::format::NameLimits {
                name: name.clone(),
                concurrency: l.concurrency,
                rate: l.rate.map(|(n, per_ms)| (n, per_ms as u64)),
            })
            .collect();
        limits.sort_by(|a, b| a.name.cmp(&b.name));
        limits
    }

    pub(crate) fn flow_config(&self) -> super::flow::FlowConfig {
        super::flow::FlowConfig {
            limits: self.limits.clone(),
            retention_ms: self.retention_ms(),
            in_flight_cap: self
                .workers
                .saturating_mul(IN_FLIGHT_PER_WORKER)
                .saturating_add(self.async_attempts),
        }
    }

    /// When a publish counts as done (default [`Durability::Sync`]).
    pub fn durability(mut self, durability: Durability) -> Options {
        self.log.durability = durability;
        self
    }

    /// Whether the next segment file is prepared (pre-sized, zero-filled) on a background
    /// thread ahead of need, so that a roll does not wait for it (default true). Turn it off
    /// for short sessions that write little, or on a disk short of space: a roll then
    /// prepares its file itself, and an open creates no file but the first segment of an
    /// empty directory.
    pub fn prepare_spare(mut self, on: bool) -> Options {
        self.log.prepare_in_background = on;
        self
    }

    /// All log options at once (with the `internals` feature only: the log's options are
    /// not API).
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn log_options(mut self, log: LogOptions) -> Options {
        self.log = log;
        self
    }

    /// How often the background compaction pass runs, on the engine's clock (default every
    /// 10 s; at least [`MIN_COMPACTION_INTERVAL`], 10 ms — shorter values, zero included, are
    /// raised to it); `None` turns the background pass off (`compact_now` still works).
    pub fn compaction_interval(mut self, interval: Option<Duration>) -> Options {
        self.compaction_interval = interval.map(|i| i.max(MIN_COMPACTION_INTERVAL));
        self
    }

    /// The share of a sealed segment's bytes that must be dead (finished events) before the
    /// background pass rewrites it (default 0.5, clamped to 0..=1).
    pub fn compaction_min_dead(mut self, share: f64) -> Options {
        self.compaction_min_dead = if share.is_nan() {
            0.5
        } else {
            share.clamp(0.0, 1.0)
        };
        self
    }

    /// Most segment bytes one background pass reads (default 256 MiB): compaction's I/O is
    /// paced so that it never competes with publishing for long.
    pub fn compaction_budget_bytes(mut self, bytes: u64) -> Options {
        self.compaction_budget_bytes = bytes.max(1);
        self
    }

    /// The retention in milliseconds, saturated to `i64`.
    /// How long a dead letter — an event dropped after its retries, past its maximum age or
    /// past retention, or acknowledged with no handler — is kept: listed by
    /// [`Engine::dead_letters`](crate::Engine::dead_letters), redriven, its publish and
    /// history kept on disk (default 30 days; zero keeps none). After it, compaction forgets
    /// it as any finished event.
    pub fn dead_retention(mut self, retention: Duration) -> Options {
        self.dead_retention = retention;
        self
    }

    /// Calls `hook` once for each event that dies, once its dead letter is durable, on the
    /// engine thread that recorded it (keep it quick: that thread applies other outcomes
    /// meanwhile). A panic in the hook is caught and counted
    /// ([`Metrics::dead_hook_panics`](crate::Metrics::dead_hook_panics)). Called with dead
    /// letters kept or not (a zero [`dead_retention`](Options::dead_retention)).
    pub fn on_dead(mut self, hook: impl Fn(&super::DeadLetter) + Send + Sync + 'static) -> Options {
        self.on_dead = Some(DeadHookFn(Arc::new(hook)));
        self
    }

    pub(crate) fn dead_retention_ms(&self) -> i64 {
        self.dead_retention.as_millis().min(i64::MAX as u128) as i64
    }

    pub(crate) fn retention_ms(&self) -> i64 {
        self.retention.as_millis().min(i64::MAX as u128) as i64
    }

    /// Whether an event first due at `first_due_ms` is past retention at `at_ms`: more than
    /// the retention after its *first* due time, whatever its retries made its current due
    /// time. The one rule of retention: delivery checks it before an attempt and for a retry's
    /// due time, compaction before it expires an event that nothing delivers.
    pub(crate) fn past_retention(&self, first_due_ms: i64, at_ms: i64) -> bool {
        at_ms > first_due_ms.saturating_add(self.retention_ms())
    }

    pub(crate) fn policy_for(&self, name: &str) -> &RetryPolicy {
        self.policies.get(name).unwrap_or(&self.default_policy)
    }
}
