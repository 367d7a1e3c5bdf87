//! The engine's table of event names, for metrics: per name, the counts the engine reads back
//! (`Metrics::names`, `Engine::metrics_text`) and the `metrics` facade's handles, made once,
//! the first time the engine sees the name.
//!
//! A publish or an attempt therefore never builds a facade key (which allocates its labels
//! and has the recorder hash them): it looks its name up here (a read lock and a hash of the
//! name, no allocation) and adds to atomics, and the handles forward to the recorder. An
//! attempt carries its entry's [`NameSlot`] from the batch that prepared it, so no thread
//! bumps a reference count per event (entries never move nor leave). A
//! recorder installed after a name was first seen never sees that name's handles (they are
//! the no-op ones): install it before `Engine::open`.
//!
//! Label values are bounded by the names: the table holds at most [`MAX_NAMES`] entries, the
//! first 1,023 names seen and one shared by every later name, the empty name (`name=""`),
//! which no event can have.
//!
//! The table's lock is a leaf: it may be taken under the core's lock, and nothing is locked
//! or waited for while it is held. It is a plain lock, not `crate::sync`'s, even in a
//! shuttle build, as `MemStorage`'s are (src/sync.rs): held for a lookup only.

use crate::histogram::Histogram;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

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

/// The attempt counts of a name, by outcome, on cache lines of their own.
#[repr(align(128))]
struct Attempts([Count; Outcome::ALL.len()]);

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

/// One name's counts and histograms. What different threads write lies on different cache
/// lines: the reference count and the rare counts (publishers, cancels, deaths), the attempt
/// counts (the applier), each histogram (the workers).
pub(crate) struct NameStats {
    pub name: Arc<str>,
    published: Count,
    attempts: Attempts,
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
        let attempts = Attempts(Outcome::ALL.map(|outcome| {
            Count::new(metrics::counter!(
                "afterlog_attempts_total",
                "name" => label.clone(),
                "outcome" => outcome.label()
            ))
        }));
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
        self.attempts.0[outcome as usize].add(1);
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
        let attempts = |o: Outcome| self.attempts.0[o as usize].get();
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

/// Where a name's entry lies in the table: what an attempt carries instead of a reference
/// count, so that no thread bumps one per event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NameSlot(u16);

const _: () = assert!(MAX_NAMES <= u16::MAX as usize);

/// The table of names (see the module doc): an entry never moves nor leaves once made, so a
/// slot reaches it without a lock.
pub(crate) struct Names {
    slots: RwLock<Slots>,
    entries: Box<[OnceLock<Box<NameStats>>]>,
}

/// Names and their slots: every name with an entry, and up to [`MAX_ALIASES`] later names
/// that share the entry of `""`.
#[derive(Default)]
struct Slots {
    by_name: HashMap<Arc<str>, NameSlot>,
    /// Entries made.
    used: usize,
}

/// Most names beyond the bound remembered as sharing the entry of `""`, so that their
/// lookups take no write lock; later ones find it under the write lock each time.
const MAX_ALIASES: usize = 4 * MAX_NAMES;

impl Default for Names {
    fn default() -> Self {
        Names {
            slots: RwLock::new(Slots::default()),
            entries: (0..MAX_NAMES).map(|_| OnceLock::new()).collect(),
        }
    }
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names")
            .field("entries", &self.slots.read().used)
            .finish()
    }
}

impl Names {
    /// The slot of `name`'s entry, made if it is new.
    pub fn slot(&self, name: &str) -> NameSlot {
        if let Some(&slot) = self.slots.read().by_name.get(name) {
            return slot;
        }
        self.insert(name)
    }

    /// The entry in `slot`.
    pub fn at(&self, slot: NameSlot) -> &NameStats {
        // A slot is handed out only after its entry is set (`insert`).
        self.entries[usize::from(slot.0)]
            .get()
            .unwrap_or_else(|| panic!("name slot {} handed out unset", slot.0))
    }

    /// The entry of `name`, made if it is new.
    pub fn get(&self, name: &str) -> &NameStats {
        self.at(self.slot(name))
    }

    #[cold]
    fn insert(&self, name: &str) -> NameSlot {
        let mut slots = self.slots.write();
        if let Some(&slot) = slots.by_name.get(name) {
            return slot;
        }
        // Past the bound, the name shares the entry of "" (kept as the bound's last one).
        let key: &str = if slots.used + 1 >= MAX_NAMES && !name.is_empty() {
            ""
        } else {
            name
        };
        if let Some(&slot) = slots.by_name.get(key) {
            if slots.by_name.len() < MAX_NAMES + MAX_ALIASES {
                slots.by_name.insert(Arc::from(name), slot);
            }
            return slot;
        }
        let key: Arc<str> = Arc::from(key);
        let slot = NameSlot(slots.used as u16);
        let set = self.entries[slots.used].set(Box::new(NameStats::new(key.clone())));
        debug_assert!(set.is_ok(), "name slot {} set twice", slot.0);
        slots.used += 1;
        slots.by_name.insert(key, slot);
        slot
    }

    /// Every entry, by name.
    pub fn all(&self) -> Vec<&NameStats> {
        let mut all: Vec<&NameStats> = self
            .entries
            .iter()
            .map_while(|e| e.get())
            .map(|b| &**b)
            .collect();
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
            names.get(&format!("n{i}")).published(1);
        }
        let all = names.all();
        assert_eq!(all.len(), MAX_NAMES);
        let shared = all.iter().find(|s| s.name.is_empty()).map(|s| s.counts());
        assert_eq!(shared.map(|c| c.published), Some(11));
        // A name seen before the bound keeps its own entry.
        names.get("n0").published(1);
        assert_eq!(names.get("n0").counts().published, 2);
    }
}
