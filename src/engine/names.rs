//! The engine's table of event names, for metrics: per name, the counts the engine reads back
//! (`Metrics::names`, `Engine::metrics_text`) and the `metrics` facade's handles, made once,
//! the first time the engine sees the name.
//!
//! A publish or an attempt therefore never builds a facade key (which allocates its labels
//! and has the recorder hash them): it looks its name up here (a read lock and a hash of the
//! name, no allocation) and adds to atomics, and the handles forward to the recorder. A
//! recorder installed after a name was first seen never sees that name's handles (they are
//! the no-op ones): install it before `Engine::open`.
//!
//! Label values are bounded by the names: the table holds at most [`MAX_NAMES`] entries, the
//! first 1,023 names seen and one shared by every later name, the empty name (`name=""`),
//! which no event can have.
//!
//! The table's lock is a leaf: it may be taken under the core's lock, and nothing is locked
//! or waited for while it is held. It is `parking_lot`'s even in a shuttle build, as
//! `MemStorage`'s are (src/sync.rs): held for a lookup only.

use crate::histogram::Histogram;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most names with an entry of their own; beyond, names share the entry of `""`.
pub(crate) const MAX_NAMES: usize = 1_024;

/// How an attempt ended, as the `outcome` label of `afterlog_attempts_total`. Each finished
/// delivery counts once: a handler's timeout or panic is the outcome of its attempt (its
/// policy then retried or dropped the event; a drop also counts as a dead letter), any other
/// failure is `retried` or `dropped` by what the policy decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every handler succeeded: acknowledged.
    Acked,
    /// A handler failed (an error or a retry request); the policy retries.
    Retried,
    /// A handler failed; the policy gave up (retries exhausted or maximum age).
    Dropped,
    /// Due past retention: dropped without running handlers.
    Expired,
    /// No handler for the name: acknowledged as ignored.
    Ignored,
    /// A handler ran past its timeout.
    TimedOut,
    /// A handler panicked.
    Panicked,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Acked,
        Outcome::Retried,
        Outcome::Dropped,
        Outcome::Expired,
        Outcome::Ignored,
        Outcome::TimedOut,
        Outcome::Panicked,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Acked => "acked",
            Outcome::Retried => "retried",
            Outcome::Dropped => "dropped",
            Outcome::Expired => "expired",
            Outcome::Ignored => "ignored",
            Outcome::TimedOut => "timed_out",
            Outcome::Panicked => "panicked",
        }
    }
}

/// A counter kept in the engine and forwarded to the facade.
struct Count {
    value: AtomicU64,
    facade: metrics::Counter,
}

impl Count {
    fn new(facade: metrics::Counter) -> Count {
        Count {
            value: AtomicU64::new(0),
            facade,
        }
    }

    fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
        self.facade.increment(n);
    }

    fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

/// One name's counts and histograms.
pub(crate) struct NameStats {
    pub name: Arc<str>,
    published: Count,
    attempts: [Count; Outcome::ALL.len()],
    cancelled: Count,
    dead_letters: Count,
    /// Due time to the start of the attempt's handlers (`afterlog_lateness_seconds`).
    pub lateness: Histogram,
    /// One handler's call (`afterlog_handler_duration_seconds`).
    pub handler_duration: Histogram,
}

impl NameStats {
    fn new(name: Arc<str>) -> NameStats {
        let label = name.to_string();
        let attempts = Outcome::ALL.map(|outcome| {
            Count::new(metrics::counter!(
                "afterlog_attempts_total",
                "name" => label.clone(),
                "outcome" => outcome.label()
            ))
        });
        NameStats {
            published: Count::new(metrics::counter!(
                "afterlog_published_total", "name" => label.clone()
            )),
            attempts,
            cancelled: Count::new(metrics::counter!(
                "afterlog_cancelled_total", "name" => label.clone()
            )),
            dead_letters: Count::new(metrics::counter!(
                "afterlog_dead_letters_total", "name" => label.clone()
            )),
            lateness: Histogram::seconds(metrics::histogram!(
                "afterlog_lateness_seconds", "name" => label.clone()
            )),
            handler_duration: Histogram::seconds(metrics::histogram!(
                "afterlog_handler_duration_seconds", "name" => label
            )),
            name,
        }
    }

    pub fn published(&self, n: u64) {
        self.published.add(n);
    }

    pub fn attempt(&self, outcome: Outcome) {
        self.attempts[outcome as usize].add(1);
    }

    pub fn cancelled(&self, n: u64) {
        self.cancelled.add(n);
    }

    pub fn dead_letter(&self) {
        self.dead_letters.add(1);
    }

    /// Records a start of handlers `late_ms` after the attempt's due time.
    pub fn lateness_ms(&self, late_ms: i64) {
        self.lateness
            .record((late_ms.max(0) as u64).saturating_mul(1_000));
    }

    /// The counts now.
    pub fn counts(&self) -> NameMetrics {
        let attempts = |o: Outcome| self.attempts[o as usize].get();
        NameMetrics {
            name: self.name.to_string(),
            published: self.published.get(),
            acked: attempts(Outcome::Acked),
            retried: attempts(Outcome::Retried),
            dropped: attempts(Outcome::Dropped),
            expired: attempts(Outcome::Expired),
            ignored: attempts(Outcome::Ignored),
            timed_out: attempts(Outcome::TimedOut),
            panicked: attempts(Outcome::Panicked),
            cancelled: self.cancelled.get(),
            dead_letters: self.dead_letters.get(),
        }
    }
}

/// One event name's counts since the engine opened (see [`Metrics::names`](crate::Metrics)).
///
/// The attempt counts partition finished deliveries: each counts once, by how it ended (a
/// timeout or a panic as `timed_out` or `panicked`, whatever the policy decided next). Names
/// beyond the first 1,023 the engine saw share the entry of the empty name.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct NameMetrics {
    /// The event name (`""`: the names beyond the first 1,023).
    pub name: String,
    /// Events published (a push counts each of its events).
    pub published: u64,
    /// Attempts whose handlers all succeeded.
    pub acked: u64,
    /// Failed attempts (an error or a retry request) retried.
    pub retried: u64,
    /// Failed attempts (an error or a retry request) after which the policy gave up.
    pub dropped: u64,
    /// Events dropped past retention.
    pub expired: u64,
    /// Events acknowledged with no handler for the name.
    pub ignored: u64,
    /// Attempts failed by a handler's timeout.
    pub timed_out: u64,
    /// Attempts failed by a handler's panic.
    pub panicked: u64,
    /// Events cancelled (one by one, with their job, or replaced by a key).
    pub cancelled: u64,
    /// Events that became dead letters.
    pub dead_letters: u64,
}

/// The table of names (see the module doc).
#[derive(Default)]
pub(crate) struct Names {
    table: RwLock<HashMap<Arc<str>, Arc<NameStats>>>,
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names")
            .field("len", &self.table.read().len())
            .finish()
    }
}

impl Names {
    /// The entry of `name`, made if it is new.
    pub fn get(&self, name: &str) -> Arc<NameStats> {
        if let Some(stats) = self.table.read().get(name) {
            return stats.clone();
        }
        self.insert(name)
    }

    /// Calls `f` with the entry of `name`, without cloning it (a publish's count).
    pub fn with<T>(&self, name: &str, f: impl FnOnce(&NameStats) -> T) -> T {
        if let Some(stats) = self.table.read().get(name) {
            return f(stats);
        }
        f(&self.insert(name))
    }

    #[cold]
    fn insert(&self, name: &str) -> Arc<NameStats> {
        let mut table = self.table.write();
        if let Some(stats) = table.get(name) {
            return stats.clone();
        }
        // Past the bound, the name shares the entry of "" (kept as the bound's last one).
        let key: Arc<str> = if table.len() + 1 >= MAX_NAMES && !name.is_empty() {
            Arc::from("")
        } else {
            Arc::from(name)
        };
        if let Some(stats) = table.get(&key) {
            return stats.clone();
        }
        let stats = Arc::new(NameStats::new(key.clone()));
        table.insert(key, stats.clone());
        stats
    }

    /// Every entry, by name.
    pub fn all(&self) -> Vec<Arc<NameStats>> {
        let mut all: Vec<Arc<NameStats>> = self.table.read().values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_past_the_bound_share_the_empty_name() {
        let names = Names::default();
        for i in 0..MAX_NAMES + 10 {
            names.with(&format!("n{i}"), |s| s.published(1));
        }
        let all = names.all();
        assert_eq!(all.len(), MAX_NAMES);
        let shared = all.iter().find(|s| s.name.is_empty()).map(|s| s.counts());
        assert_eq!(shared.map(|c| c.published), Some(11));
        // A name seen before the bound keeps its own entry.
        names.with("n0", |s| s.published(1));
        assert_eq!(names.get("n0").counts().published, 2);
    }
}
