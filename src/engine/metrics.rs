//! Counters of the engine's work and a histogram of delivery lateness; the gauges the
//! `metrics` facade is given (see docs/OBSERVABILITY.md).

use super::names::{NameMetrics, Names};
use crate::log::LogCounters;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Lateness buckets: one per millisecond below `EXACT_MS`, then one per power of two.
const EXACT_MS: u64 = 128;
const BUCKETS: usize = EXACT_MS as usize + 64;

fn bucket_of(late_ms: u64) -> usize {
    if late_ms < EXACT_MS {
        late_ms as usize
    } else {
        EXACT_MS as usize + (u64::BITS - late_ms.leading_zeros()) as usize - 8
    }
}

/// The largest lateness a bucket holds.
fn bucket_max_ms(bucket: usize) -> u64 {
    if bucket < EXACT_MS as usize {
        bucket as u64
    } else {
        let bits = (bucket - EXACT_MS as usize + 8) as u32;
        if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        }
    }
}

/// What delivery reports of its threads, for a snapshot.
#[derive(Debug, Default)]
pub(crate) struct DeliveryGauges {
    pub abandoned_threads: u64,
    pub stalled_names: Vec<String>,
    pub async_running: u64,
    pub async_waiting: u64,
}

/// What the core reports, for a snapshot.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CoreGauges {
    pub pending: u64,
    pub in_flight: u64,
    pub queued: u64,
    pub index_bytes: u64,
    pub dead_letters: u64,
    pub schedules: u64,
    /// Bytes of the segment files (the log's, not the core's, but read with them).
    pub disk_bytes: u64,
}

/// The facade's gauges, taken once when the engine opens, set by [`Gauges::set`].
pub(crate) struct Gauges {
    pending: metrics::Gauge,
    in_flight: metrics::Gauge,
    queued: metrics::Gauge,
    dead_letters: metrics::Gauge,
    disk_bytes: metrics::Gauge,
    index_bytes: metrics::Gauge,
}

impl std::fmt::Debug for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gauges")
    }
}

/// Describes every metric to the installed recorder (its help text and unit), once per
/// process: the texts of docs/OBSERVABILITY.md's table.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(|| {
        let c = Unit::Count;
        describe_counter!("afterlog_published_total", c, "Events published.");
        describe_counter!(
            "afterlog_attempts_total",
            c,
            "Finished deliveries, by how they ended."
        );
        describe_counter!("afterlog_cancelled_total", c, "Events cancelled.");
        describe_counter!(
            "afterlog_dead_letters_total",
            c,
            "Events that became dead letters."
        );
        let s = Unit::Seconds;
        describe_histogram!(
            "afterlog_lateness_seconds",
            s,
            "From an attempt's due time to the start of its handlers."
        );
        describe_histogram!(
            "afterlog_handler_duration_seconds",
            s,
            "One handler's call."
        );
        describe_histogram!(
            "afterlog_fsync_duration_seconds",
            s,
            "One data sync of the log."
        );
        describe_histogram!(
            "afterlog_records_per_sync",
            c,
            "Records one data sync made durable."
        );
        describe_gauge!("afterlog_pending_events", c, "Events scheduled or running.");
        describe_gauge!(
            "afterlog_in_flight_events",
            c,
            "Events taken for delivery whose attempt has not finished."
        );
        describe_gauge!(
            "afterlog_queued_events",
            c,
            "Due events waiting in their names' queues."
        );
        describe_gauge!("afterlog_dead_letters_kept", c, "Dead letters kept.");
        describe_gauge!(
            "afterlog_disk_bytes",
            Unit::Bytes,
            "Bytes of the segment files."
        );
        describe_gauge!(
            "afterlog_index_bytes",
            Unit::Bytes,
            "Heap bytes of the event index (an estimate)."
        );
    });
}

impl Default for Gauges {
    fn default() -> Self {
        describe();
        Gauges {
            pending: metrics::gauge!("afterlog_pending_events"),
            in_flight: metrics::gauge!("afterlog_in_flight_events"),
            queued: metrics::gauge!("afterlog_queued_events"),
            dead_letters: metrics::gauge!("afterlog_dead_letters_kept"),
            disk_bytes: metrics::gauge!("afterlog_disk_bytes"),
            index_bytes: metrics::gauge!("afterlog_index_bytes"),
        }
    }
}

impl Gauges {
    pub fn set(&self, g: &CoreGauges) {
        self.pending.set(g.pending as f64);
        self.in_flight.set(g.in_flight as f64);
        self.queued.set(g.queued as f64);
        self.dead_letters.set(g.dead_letters as f64);
        self.disk_bytes.set(g.disk_bytes as f64);
        self.index_bytes.set(g.index_bytes as f64);
    }
}

#[derive(Debug)]
pub(crate) struct Counters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
    pub expired: AtomicU64,
    pub ignored: AtomicU64,
    pub cancelled: AtomicU64,
    pub timed_out: AtomicU64,
    pub panicked: AtomicU64,
    pub workers_replaced: AtomicU64,
    pub abandoned_returned: AtomicU64,
    pub stalled: AtomicU64,
    pub worker_spawn_failures: AtomicU64,
    pub read_errors: AtomicU64,
    pub replay_rejected: AtomicU64,
    pub compacted_bytes: AtomicU64,
    pub compaction_passes: AtomicU64,
    pub compaction_written_bytes: AtomicU64,
    pub dead_hook_panics: AtomicU64,
    pub schedule_failures: AtomicU64,
    lateness: [AtomicU64; BUCKETS],
    lateness_max_ms: AtomicU64,
    /// Per event name: counts and histograms, with their facade handles.
    pub names: Names,
    pub gauges: Gauges,
    /// When the gauges were last set from a background thread (monotonic ms of the clock).
    pub gauges_set_ms: AtomicI64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            dead_hook_panics: AtomicU64::new(0),
            schedule_failures: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            workers_replaced: AtomicU64::new(0),
            abandoned_returned: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
            worker_spawn_failures: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            replay_rejected: AtomicU64::new(0),
            compacted_bytes: AtomicU64::new(0),
            compaction_passes: AtomicU64::new(0),
            compaction_written_bytes: AtomicU64::new(0),
            lateness: std::array::from_fn(|_| AtomicU64::new(0)),
            lateness_max_ms: AtomicU64::new(0),
            names: Names::default(),
            gauges: Gauges::default(),
            gauges_set_ms: AtomicI64::new(i64::MIN),
        }
    }
}

impl Counters {
    /// Records that a delivery started `late_ms` after its due time.
    pub fn record_lateness(&self, late_ms: i64) {
        let late = late_ms.max(0) as u64;
        self.lateness[bucket_of(late).min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.lateness_max_ms.fetch_max(late, Ordering::Relaxed);
    }

    fn percentile_ms(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .lateness
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // Exact below 128 ms; above, the bucket's upper bound (never an under-estimate).
                return bucket_max_ms(i).min(self.lateness_max_ms.load(Ordering::Relaxed));
            }
        }
        self.lateness_max_ms.load(Ordering::Relaxed)
    }

    pub fn snapshot(
        &self,
        core: CoreGauges,
        log: LogCounters,
        delivery: DeliveryGauges,
    ) -> Metrics {
        let CoreGauges {
            pending,
            in_flight,
            queued,
            index_bytes,
            dead_letters,
            schedules,
            disk_bytes,
        } = core;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Metrics {
            published: get(&self.published),
            delivered: get(&self.delivered),
            acked: get(&self.acked),
            retried: get(&self.retried),
            dropped: get(&self.dropped),
            expired: get(&self.expired),
            ignored: get(&self.ignored),
            cancelled: get(&self.cancelled),
            timed_out: get(&self.timed_out),
            panicked: get(&self.panicked),
            workers_replaced: get(&self.workers_replaced),
            abandoned_threads: delivery.abandoned_threads,
            abandoned_returned: get(&self.abandoned_returned),
            stalled: get(&self.stalled),
            stalled_names: delivery.stalled_names,
            async_running: delivery.async_running,
            async_waiting: delivery.async_waiting,
            worker_spawn_failures: get(&self.worker_spawn_failures),
            read_errors: get(&self.read_errors),
            replay_rejected: get(&self.replay_rejected),
            compacted_bytes: get(&self.compacted_bytes),
            compaction_passes: get(&self.compaction_passes),
            compaction_written_bytes: get(&self.compaction_written_bytes),
            dead_hook_panics: get(&self.dead_hook_panics),
            schedule_failures: get(&self.schedule_failures),
            schedules,
            dead_letters,
            pending,
            in_flight,
            queued,
            index_bytes,
            disk_bytes,
            names: self.names.all().iter().map(|n| n.counts()).collect(),
            records: log.records,
            fsyncs: log.syncs,
            records_per_fsync: if log.syncs == 0 {
                0.0
            } else {
                log.records as f64 / log.syncs as f64
            },
            lateness_p50_ms: self.percentile_ms(0.50),
            lateness_p99_ms: self.percentile_ms(0.99),
            lateness_max_ms: get(&self.lateness_max_ms),
        }
    }
}

/// A snapshot of the engine's counters (since open, except `pending` and `in_flight`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Metrics {
    /// Events published (a push counts each of its events).
    pub published: u64,
    /// Attempts started.
    pub delivered: u64,
    /// Events acknowledged by their handlers.
    pub acked: u64,
    /// Failed attempts scheduled again.
    pub retried: u64,
    /// Events dropped because their retry policy gave up.
    pub dropped: u64,
    /// Events dropped past retention.
    pub expired: u64,
    /// Events acknowledged without a handler for their name.
    pub ignored: u64,
    /// Events cancelled (one by one or with their job): the sum of what `cancel` (one for
    /// each `true`) and `cancel_job` returned, so the same events as in
    /// [`JobStats::cancelled`](crate::JobStats::cancelled) of jobs cancelled by this engine.
    pub cancelled: u64,
    /// Attempts failed by a handler timeout.
    pub timed_out: u64,
    /// Attempts failed by a handler panic.
    pub panicked: u64,
    /// Worker threads replaced after a handler timed out.
    pub workers_replaced: u64,
    /// Threads left running a handler past its timeout, now (see
    /// [`Options::abandoned_threads`](crate::Options::abandoned_threads)).
    pub abandoned_threads: u64,
    /// Abandoned threads whose handler returned since (and which exited).
    pub abandoned_returned: u64,
    /// Due events that waited because their name was stalled (each wait counts).
    pub stalled: u64,
    /// Names stalled now: too many of their handlers run past their timeouts.
    pub stalled_names: Vec<String>,
    /// Async attempts running now, as tasks on the runtime (feature `tokio`; at most
    /// [`Options::async_attempts`](crate::Options::async_attempts)).
    pub async_running: u64,
    /// Async attempts waiting for one of those to end, now.
    pub async_waiting: u64,
    /// Worker threads the operating system refused to start (delivery goes on with fewer).
    pub worker_spawn_failures: u64,
    /// Events whose publish record could not be read back.
    pub read_errors: u64,
    /// Records recovery could not apply (counted, skipped).
    pub replay_rejected: u64,
    /// Bytes of log reclaimed by compaction.
    pub compacted_bytes: u64,
    /// Compaction passes run (background and `compact_now`).
    pub compaction_passes: u64,
    /// Bytes compaction wrote (the segments it rewrote): what its savings cost.
    pub compaction_written_bytes: u64,
    /// Panics of the [`Options::on_dead`](crate::Options::on_dead) hook (each caught).
    pub dead_hook_panics: u64,
    /// Next occurrences of schedules that could not be written (each is tried again).
    pub schedule_failures: u64,
    /// Schedules defined now (see [`Engine::schedules`](crate::Engine::schedules)).
    pub schedules: u64,
    /// Dead letters kept now (see [`Engine::dead_letters`](crate::Engine::dead_letters)).
    pub dead_letters: u64,
    /// Events scheduled or running now.
    pub pending: u64,
    /// Events taken for delivery whose attempt has not finished.
    pub in_flight: u64,
    /// Due events waiting in their names' queues: paused names, names at their concurrency
    /// or rate limit, or a backlog past what is handed to delivery at once.
    pub queued: u64,
    /// Heap bytes of the event index (an estimate): follows the events not yet compacted away.
    pub index_bytes: u64,
    /// Bytes of the segment files on disk (the active segment at its pre-sized length).
    pub disk_bytes: u64,
    /// Counts per event name, sorted by name: every name published, attempted or cancelled
    /// since open (see [`NameMetrics`] for the bound on their number).
    pub names: Vec<NameMetrics>,
    /// Log records written since open.
    pub records: u64,
    /// Data syncs since open.
    pub fsyncs: u64,
    /// `records / fsyncs`.
    pub records_per_fsync: f64,
    /// Median lateness of deliveries (start of the attempt minus its due time), ms: exact
    /// below 128 ms, above that rounded up to a power of two minus one.
    pub lateness_p50_ms: u64,
    /// 99th percentile lateness, ms, likewise rounded up.
    pub lateness_p99_ms: u64,
    /// Largest lateness seen, ms.
    pub lateness_max_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_lateness_in_order() {
        let mut last = 0;
        for late in [0u64, 1, 5, 127, 128, 255, 256, 1000, 1 << 40, u64::MAX] {
            let b = bucket_of(late);
            assert!(b >= last && b < BUCKETS, "{late} -> {b}");
            assert!(
                bucket_max_ms(b) >= late,
                "{late} above its bucket's max {}",
                bucket_max_ms(b)
            );
            last = b;
        }
    }

    #[test]
    fn percentiles_are_exact_below_128_ms() {
        let c = Counters::default();
        for late in 0..100 {
            c.record_lateness(late);
        }
        assert_eq!(c.percentile_ms(0.5), 49);
        assert_eq!(c.percentile_ms(0.99), 98);
        c.record_lateness(5000);
        assert!(c.percentile_ms(1.0) >= 5000);
    }
}
