//! The locks, condition variables, threads and thread locals of the log's and the engine's
//! hand-offs, in one place.
//!
//! In a normal build these are plain re-exports of what the log and the engine use
//! (`parking_lot`'s `Mutex`, `Condvar` and `RwLock`, `std`'s `OnceLock`, threads and
//! `thread_local!`): no wrapper, no cost.
//!
//! Built with `RUSTFLAGS="--cfg afterlog_shuttle"`, they are `shuttle`'s instead, behind the
//! same API as `parking_lot`'s (`lock()` returns the guard, `Condvar::wait` takes
//! `&mut guard`), so `tests/shuttle.rs` explores the schedules of the real writer, appenders,
//! segment preparation and compaction swap, and of the engine's scheduler, workers, watchdog
//! and `close` (docs/TESTING.md, "Concurrency models"). Threads are `shuttle::thread`'s
//! (`spawn`, `Builder` with a name, `JoinHandle`); a thread local is `shuttle`'s, one per
//! shuttle thread (a `std` one would be shared by every shuttle thread, which all run on one
//! OS thread), and offers `with` alone. In such a build the log and the engine work only
//! inside a `shuttle` test (`shuttle::check_random` and friends), and these things differ
//! from a real run:
//! - shuttle does not model time, so a timed wait (`Condvar::wait_for`, `wait_until`: the
//!   writer gathering a group, `Durability::Periodic`) is one whose deadline passes while the
//!   other threads take their turn: it releases the lock, lets the schedule run anyone, takes
//!   the lock back and reports a timeout. A real timed wait can always end so; one ended by
//!   a notification is not explored. `Durability::Periodic`'s writer would spin on it until
//!   real time passes its interval, so the models use `Durability::Sync`;
//! - `OnceLock` takes a shuttle lock around each access, so that setting it (sealing a
//!   segment) and reading it are points where the schedule can switch threads;
//! - a `ManualClock`'s wait has no real-time cap (src/clock.rs): it ends only when its
//!   `Wake` is notified or the clock changes, so a lost wake-up is a deadlock. The engine's
//!   own timed waits (`wait_idle`'s polling, `close` waiting for workers) time out as above.
//!
//! Locks of `MemStorage` stay `parking_lot`'s: each is held for a few memory operations with
//! no lock, wait or spawn of this module inside, so no thread can be switched out while
//! holding one (shuttle runs every thread on one OS thread; a real lock held across a switch
//! would hang the test).

#[cfg(not(afterlog_shuttle))]
pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};
#[cfg(not(afterlog_shuttle))]
pub(crate) use std::sync::OnceLock;
#[cfg(not(afterlog_shuttle))]
pub(crate) use std::{thread, thread_local};

#[cfg(afterlog_shuttle)]
pub(crate) use shuttle::thread_local;
#[cfg(afterlog_shuttle)]
pub(crate) use shuttle_api::{Condvar, Mutex, MutexGuard, OnceLock, RwLock, thread};

#[cfg(afterlog_shuttle)]
mod shuttle_api {
    use std::fmt;
    use std::ops::{Deref, DerefMut};
    use std::sync::PoisonError;
    use std::time::{Duration, Instant};

    pub(crate) use shuttle::thread;

    /// `parking_lot::Mutex`'s API over `shuttle::sync::Mutex`: no poisoning (a panic fails
    /// the shuttle test anyway).
    #[derive(Default)]
    pub(crate) struct Mutex<T>(shuttle::sync::Mutex<T>);

    /// Holds the shuttle guard in an `Option` so that `Condvar::wait` can move it out and
    /// back through `&mut`, and the mutex so that a timed wait can take it again.
    pub(crate) struct MutexGuard<'a, T> {
        mutex: &'a shuttle::sync::Mutex<T>,
        inner: Option<shuttle::sync::MutexGuard<'a, T>>,
    }

    impl<T> Mutex<T> {
        #[track_caller]
        pub(crate) fn new(value: T) -> Mutex<T> {
            Mutex(shuttle::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard {
                mutex: &self.0,
                inner: Some(self.0.lock().unwrap_or_else(PoisonError::into_inner)),
            }
        }
    }

    impl<T> fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Mutex")
        }
    }

    const GUARD_MOVED: &str = "a guard is only empty inside Condvar::wait";

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.inner.as_ref().expect(GUARD_MOVED)
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.inner.as_mut().expect(GUARD_MOVED)
        }
    }

    /// `parking_lot::Condvar`'s API over `shuttle::sync::Condvar`.
    #[derive(Default)]
    pub(crate) struct Condvar(shuttle::sync::Condvar);

    /// How a timed wait ended: always by its deadline (see the module documentation).
    pub(crate) struct WaitTimeoutResult;

    impl WaitTimeoutResult {
        pub(crate) fn timed_out(&self) -> bool {
            true
        }
    }

    impl Condvar {
        pub(crate) fn new() -> Condvar {
            Condvar(shuttle::sync::Condvar::new())
        }

        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let inner = guard.inner.take().expect(GUARD_MOVED);
            guard.inner = Some(self.0.wait(inner).unwrap_or_else(PoisonError::into_inner));
        }

        pub(crate) fn wait_for<T>(
            &self,
            guard: &mut MutexGuard<'_, T>,
            _timeout: Duration,
        ) -> WaitTimeoutResult {
            Self::time_out(guard)
        }

        pub(crate) fn wait_until<T>(
            &self,
            guard: &mut MutexGuard<'_, T>,
            _deadline: Instant,
        ) -> WaitTimeoutResult {
            Self::time_out(guard)
        }

        /// A wait whose deadline passes while the other threads take their turn.
        fn time_out<T>(guard: &mut MutexGuard<'_, T>) -> WaitTimeoutResult {
            drop(guard.inner.take().expect(GUARD_MOVED));
            shuttle::thread::yield_now();
            guard.inner = Some(guard.mutex.lock().unwrap_or_else(PoisonError::into_inner));
            WaitTimeoutResult
        }

        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }

        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    impl fmt::Debug for Condvar {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Condvar")
        }
    }

    /// `parking_lot::RwLock`'s API over `shuttle::sync::RwLock`.
    #[derive(Default)]
    pub(crate) struct RwLock<T>(shuttle::sync::RwLock<T>);

    impl<T> RwLock<T> {
        #[track_caller]
        pub(crate) fn new(value: T) -> RwLock<T> {
            RwLock(shuttle::sync::RwLock::new(value))
        }

        pub(crate) fn read(&self) -> shuttle::sync::RwLockReadGuard<'_, T> {
            self.0.read().unwrap_or_else(PoisonError::into_inner)
        }

        pub(crate) fn write(&self) -> shuttle::sync::RwLockWriteGuard<'_, T> {
            self.0.write().unwrap_or_else(PoisonError::into_inner)
        }
    }

    impl<T> fmt::Debug for RwLock<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("RwLock")
        }
    }

    /// `std::sync::OnceLock` whose every access takes a shuttle lock first: a point where
    /// the schedule can switch threads, as a real `OnceLock`'s atomics are.
    pub(crate) struct OnceLock<T> {
        value: std::sync::OnceLock<T>,
        order: shuttle::sync::Mutex<()>,
    }

    impl<T> OnceLock<T> {
        #[track_caller]
        pub(crate) fn new() -> OnceLock<T> {
            OnceLock {
                value: std::sync::OnceLock::new(),
                order: shuttle::sync::Mutex::new(()),
            }
        }

        fn point(&self) -> shuttle::sync::MutexGuard<'_, ()> {
            self.order.lock().unwrap_or_else(PoisonError::into_inner)
        }

        pub(crate) fn get(&self) -> Option<&T> {
            let _point = self.point();
            self.value.get()
        }

        pub(crate) fn set(&self, value: T) -> Result<(), T> {
            let _point = self.point();
            self.value.set(value)
        }

        /// `init` runs under the shuttle lock: it must not take a lock of this module.
        pub(crate) fn get_or_init(&self, init: impl FnOnce() -> T) -> &T {
            let _point = self.point();
            self.value.get_or_init(init)
        }
    }

    impl<T: fmt::Debug> fmt::Debug for OnceLock<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // No scheduling point: formatting is not a hand-off.
            self.value.fmt(f)
        }
    }
}

#[cfg(test)]
mod tests {
    /// The files of the log, the engine and the clocks: every hand-off between their threads.
    const HAND_OFF_FILES: [(&str, &str); 18] = [
        ("src/log/mod.rs", include_str!("log/mod.rs")),
        ("src/log/writer.rs", include_str!("log/writer.rs")),
        ("src/log/segment.rs", include_str!("log/segment.rs")),
        ("src/log/compact.rs", include_str!("log/compact.rs")),
        ("src/log/recovery.rs", include_str!("log/recovery.rs")),
        ("src/engine/mod.rs", include_str!("engine/mod.rs")),
        ("src/engine/core.rs", include_str!("engine/core.rs")),
        ("src/engine/delivery.rs", include_str!("engine/delivery.rs")),
        ("src/engine/guard.rs", include_str!("engine/guard.rs")),
        ("src/engine/attempts.rs", include_str!("engine/attempts.rs")),
        ("src/engine/futures.rs", include_str!("engine/futures.rs")),
        ("src/engine/order.rs", include_str!("engine/order.rs")),
        ("src/engine/handler.rs", include_str!("engine/handler.rs")),
        (
            "src/engine/compaction.rs",
            include_str!("engine/compaction.rs"),
        ),
        ("src/engine/metrics.rs", include_str!("engine/metrics.rs")),
        ("src/engine/names.rs", include_str!("engine/names.rs")),
        ("src/engine/options.rs", include_str!("engine/options.rs")),
        ("src/clock.rs", include_str!("clock.rs")),
    ];

    /// What these files must not take from `std::sync` (their `Arc`s and the atomics of
    /// counters, flags and id floors hand nothing over between threads).
    const HAND_OFFS: [&str; 7] = [
        "Mutex", "Condvar", "RwLock", "Once", "LazyLock", "Barrier", "mpsc",
    ];

    /// Lines allowed a `std` primitive, and why.
    const ALLOWED: [(&str, &str); 4] = [
        // `SystemClock`'s origin: a `static` (shuttle's cells are not `const`) set once with
        // an `Instant`; no hand-off waits on it.
        (
            "src/clock.rs",
            "static ORIGIN: std::sync::OnceLock<Instant>",
        ),
        // The metrics' descriptions, given to the recorder once per process: a `static`; no
        // hand-off waits on it.
        ("src/engine/metrics.rs", "static DESCRIBED: std::sync::Once"),
        // The table of names for metrics: a leaf lock held for a lookup, with nothing locked
        // or waited for under it (as `MemStorage`'s locks), and entries set once under it
        // and read without it; no thread waits on either for another.
        ("src/engine/names.rs", "use parking_lot::RwLock;"),
        ("src/engine/names.rs", "use std::sync::{Arc, OnceLock};"),
    ];

    /// The shuttle models explore the log and the engine only as far as they take their
    /// locks, condition variables, threads and thread locals from this module: a
    /// `parking_lot` lock or a `std` thread there would run unseen by them (or hang them).
    /// Unit tests may use real threads.
    #[test]
    fn the_log_and_the_engine_take_their_locks_and_threads_from_this_module() {
        for (path, text) in HAND_OFF_FILES {
            let code = text.split("#[cfg(test)]").next().unwrap_or(text);
            let code = code.split("#[cfg(all(test").next().unwrap_or(code);
            for (i, line) in code.lines().enumerate() {
                if ALLOWED
                    .iter()
                    .any(|(file, allowed)| *file == path && line.contains(allowed))
                {
                    continue;
                }
                let at = format!("{path}:{}: {line}", i + 1);
                for banned in ["parking_lot", "std::thread", "crossbeam"] {
                    assert!(!line.contains(banned), "{at}: use crate::sync instead");
                }
                if line.trim_start().starts_with("thread_local!") {
                    panic!("{at}: use crate::sync::thread_local! instead");
                }
                if let Some((_, used)) = line.split_once("std::sync::") {
                    for banned in HAND_OFFS {
                        assert!(!used.contains(banned), "{at}: use crate::sync instead");
                    }
                }
            }
        }
    }
}
