//! A histogram of fixed buckets, kept twice: in the engine's own atomics (for
//! `Engine::metrics_text`) and in the `metrics` facade's handle (for whatever recorder the
//! application installed).
//!
//! Values are integers in a base unit (microseconds for times, records for counts); the
//! bucket bounds are in the same unit, and `scale` turns both into the unit a reader sees
//! (seconds: `1e6`). Recording is two relaxed atomic additions, a search of at most
//! [`MAX_BOUNDS`] bounds and the facade's call (one branch when no recorder is installed).

use std::sync::atomic::{AtomicU64, Ordering};

/// Most bucket bounds a histogram has (the `+Inf` bucket is on top).
pub(crate) const MAX_BOUNDS: usize = 24;

/// Bounds of the histograms of times, in microseconds: 10 µs to an hour.
pub(crate) const SECONDS_BOUNDS_US: &[u64] = &[
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    3_600_000_000,
];

/// Microseconds in a second: the scale of the histograms of times.
pub(crate) const US_PER_SECOND: f64 = 1e6;

/// Bounds of the histogram of records per sync: powers of two up to a sync group's limit.
pub(crate) const RECORDS_BOUNDS: &[u64] = &[
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 2_048, 4_096, 8_192, 16_384, 32_768, 65_536,
];

const _: () = assert!(SECONDS_BOUNDS_US.len() <= MAX_BOUNDS);
const _: () = assert!(RECORDS_BOUNDS.len() <= MAX_BOUNDS);

/// A histogram of fixed buckets (see the module doc). Aligned to two cache lines, so that
/// its counts share no line with what other threads write beside it.
#[repr(align(128))]
pub(crate) struct Histogram {
    /// Inclusive upper bounds, ascending, in the base unit.
    bounds: &'static [u64],
    scale: f64,
    /// One count per bound, then the `+Inf` bucket; not cumulative.
    counts: [AtomicU64; MAX_BOUNDS + 1],
    sum: AtomicU64,
    facade: metrics::Histogram,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.snapshot();
        f.debug_struct("Histogram")
            .field("count", &s.count)
            .field("sum", &s.sum)
            .finish()
    }
}

/// What a histogram holds at one moment, in the unit a reader sees.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HistogramSnapshot {
    /// `(upper bound, observations at or below it)`: cumulative, as Prometheus's `le`
    /// buckets, without the `+Inf` one (that is `count`).
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// A histogram with `bounds` (base unit), shown divided by `scale`, that also records
    /// into `facade`.
    pub fn new(bounds: &'static [u64], scale: f64, facade: metrics::Histogram) -> Histogram {
        debug_assert!(bounds.len() <= MAX_BOUNDS, "{} bounds", bounds.len());
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds {bounds:?}");
        Histogram {
            bounds,
            scale,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            facade,
        }
    }

    /// A histogram of times in seconds, recorded in microseconds.
    pub fn seconds(facade: metrics::Histogram) -> Histogram {
        Histogram::new(SECONDS_BOUNDS_US, US_PER_SECOND, facade)
    }

    /// Records one observation of `value` (base unit).
    pub fn record(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&b| b < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.facade.record(value as f64 / self.scale);
    }

    /// Records a duration, in microseconds (for the histograms of times).
    pub fn record_duration(&self, elapsed: std::time::Duration) {
        self.record(elapsed.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    /// The buckets, sum and count now. Read bucket by bucket without a lock, so a
    /// concurrent observation may be in some of the figures and not yet in others.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (i, &bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            buckets.push((bound as f64 / self.scale, cumulative));
        }
        let count = cumulative + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            sum: self.sum.load(Ordering::Relaxed) as f64 / self.scale,
            count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_inclusive() {
        let h = Histogram::new(RECORDS_BOUNDS, 1.0, metrics::Histogram::noop());
        for v in [1, 2, 3, 4, 100_000] {
            h.record(v);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.sum, 100_010.0);
        assert_eq!(s.buckets[0], (1.0, 1)); // 1
        assert_eq!(s.buckets[1], (2.0, 2)); // 1, 2
        assert_eq!(s.buckets[2], (4.0, 4)); // 1, 2, 3, 4
        // 100,000 is above every bound: only in `count` (the +Inf bucket).
        assert_eq!(s.buckets.last(), Some(&(65_536.0, 4)));
    }

    #[test]
    fn times_show_in_seconds() {
        let h = Histogram::seconds(metrics::Histogram::noop());
        h.record_duration(std::time::Duration::from_millis(3));
        let s = h.snapshot();
        assert_eq!(s.sum, 0.003);
        let first_holding = s.buckets.iter().find(|b| b.1 == 1).map(|b| b.0);
        assert_eq!(first_holding, Some(0.005));
    }
}
