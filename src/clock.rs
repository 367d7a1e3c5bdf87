//! Clocks: where "now" comes from, and how a thread waits for a later time.
//!
//! The engine reads the time and waits only through a [`Clock`], so a test can replace the
//! wall clock with a [`ManualClock`] and make fourteen days pass in milliseconds. A waiting
//! thread holds a [`Wake`], which other threads notify when there is new work or the clock
//! has changed.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::sync::{Condvar, Mutex};

/// The longest a [`SystemClock`] sleeps before reading the wall clock again, so that a jump
/// of the wall clock (an NTP step, a suspended laptop) is noticed within this time.
pub const SYSTEM_WAIT_CAP: Duration = Duration::from_secs(1);

/// The longest a [`ManualClock`] sleeps on wall time in one `wait_until` call, so that a
/// thread waiting on a clock nobody advances still returns to check for shutdown.
pub const MANUAL_WAIT_CAP: Duration = Duration::from_millis(100);

/// A source of the current time and a way to wait for a later one.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time in Unix epoch milliseconds.
    fn now_ms(&self) -> i64;

    /// Blocks until the clock reads ≥ `deadline_ms` (`None`: no deadline), or `wake` is
    /// notified, or the clock is changed (manual clock). Consumes a pending notification of
    /// `wake`, so a notification sent before the call is not lost. May return early
    /// spuriously; callers re-check their condition.
    fn wait_until(&self, wake: &Wake, deadline_ms: Option<i64>);

    /// A monotonic time in milliseconds, for measuring how long something runs (handler
    /// timeouts): it never steps when the wall clock does. Its origin is arbitrary; only
    /// differences mean anything. The default is [`now_ms`](Clock::now_ms), for clocks whose
    /// time never steps (a manual clock); [`SystemClock`] counts from an `Instant`.
    fn monotonic_ms(&self) -> i64 {
        self.now_ms()
    }

    /// [`wait_until`](Clock::wait_until) on the timeline of
    /// [`monotonic_ms`](Clock::monotonic_ms): blocks until it reads ≥ `deadline_ms`, or
    /// `wake` is notified, or the clock is changed. The default is `wait_until`, which
    /// matches the default `monotonic_ms`.
    fn wait_monotonic_until(&self, wake: &Wake, deadline_ms: Option<i64>) {
        self.wait_until(wake, deadline_ms);
    }
}

/// A cheap, clonable notifier for one waiting thread (or a few). Clones share one flag.
///
/// [`notify`](Wake::notify) sets the flag and wakes the waiters; a wait consumes the flag.
/// Notifications do not queue up: several before a wait count as one.
#[derive(Clone, Debug, Default)]
pub struct Wake {
    inner: Arc<WakeInner>,
}

#[derive(Debug, Default)]
struct WakeInner {
    notified: Mutex<bool>,
    condvar: Condvar,
}

impl WakeInner {
    fn notify(&self) {
        *self.notified.lock() = true;
        self.condvar.notify_all();
    }
}

impl Wake {
    /// A new notifier with no pending notification.
    pub fn new() -> Wake {
        Wake::default()
    }

    /// Wakes the threads waiting on this notifier, or the next one to wait.
    pub fn notify(&self) {
        self.inner.notify();
    }

    /// Blocks until notified or until `timeout` has passed, and consumes the notification.
    /// Returns whether a notification was consumed. With a zero timeout it only consumes a
    /// pending notification. For implementors of [`Clock`].
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let until = Instant::now().checked_add(timeout);
        let mut notified = self.inner.notified.lock();
        while !*notified {
            let now = Instant::now();
            let left = match until {
                Some(until) if now < until => until - now,
                Some(_) => break,
                None => Duration::MAX,
            };
            if self.inner.condvar.wait_for(&mut notified, left).timed_out() {
                break;
            }
        }
        std::mem::replace(&mut *notified, false)
    }

    /// Blocks until notified, and consumes the notification: a manual clock's wait in a
    /// shuttle build (see [`ManualClock`]).
    #[cfg(afterlog_shuttle)]
    fn wait(&self) {
        let mut notified = self.inner.notified.lock();
        while !*notified {
            self.inner.condvar.wait(&mut notified);
        }
        *notified = false;
    }
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
        }
    }

    /// Sleeps in steps of at most [`SYSTEM_WAIT_CAP`], re-reading the wall clock after each,
    /// until the deadline has passed or `wake` is notified.
    fn wait_until(&self, wake: &Wake, deadline_ms: Option<i64>) {
        loop {
            let step = match deadline_ms {
                None => SYSTEM_WAIT_CAP,
                Some(deadline_ms) => {
                    let remaining_ms = deadline_ms.saturating_sub(self.now_ms());
                    if remaining_ms <= 0 {
                        wake.wait_timeout(Duration::ZERO);
                        return;
                    }
                    Duration::from_millis(remaining_ms.unsigned_abs()).min(SYSTEM_WAIT_CAP)
                }
            };
            if wake.wait_timeout(step) {
                return;
            }
        }
    }

    /// Milliseconds since an `Instant` taken at the first call in the process.
    fn monotonic_ms(&self) -> i64 {
        // A `std` cell: it hands nothing between threads but the first `Instant`.
        static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        i64::try_from(origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Sleeps on `Instant` time until the monotonic deadline, or until `wake` is notified.
    fn wait_monotonic_until(&self, wake: &Wake, deadline_ms: Option<i64>) {
        let step = match deadline_ms {
            None => SYSTEM_WAIT_CAP,
            Some(deadline_ms) => {
                let remaining_ms = deadline_ms.saturating_sub(self.monotonic_ms());
                if remaining_ms <= 0 {
                    wake.wait_timeout(Duration::ZERO);
                    return;
                }
                Duration::from_millis(remaining_ms.unsigned_abs())
            }
        };
        wake.wait_timeout(step);
    }
}

/// A clock that moves only when told to, for tests and simulations. Clones share one time.
///
/// Every change ([`advance`](ManualClock::advance), [`set`](ManualClock::set)) notifies every
/// [`Wake`] that has ever been passed to [`wait_until`](Clock::wait_until) on this clock and
/// is still alive, so waiting threads re-check at once. A `wait_until` call returns after at
/// most [`MANUAL_WAIT_CAP`] of real time even if nothing happens, so a test that forgets to
/// advance the clock is slow, never hung.
///
/// In a shuttle build (src/sync.rs) that wait has no cap: shuttle does not model time, the
/// model's time moves only when one of its threads changes the clock, and every change
/// notifies, so a wait that only the cap would end is a lost wake-up, and the model reports
/// it as a deadlock instead of spinning through it.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    now_ms: Mutex<i64>,
    /// Every live `Wake` that has waited on this clock; dead entries are pruned on use.
    waiters: Mutex<Vec<Weak<WakeInner>>>,
}

impl ManualClock {
    /// A clock that reads `epoch_ms` until changed.
    pub fn new(epoch_ms: i64) -> ManualClock {
        ManualClock {
            inner: Arc::new(ManualInner {
                now_ms: Mutex::new(epoch_ms),
                waiters: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The current time in Unix epoch milliseconds.
    pub fn now_ms(&self) -> i64 {
        *self.inner.now_ms.lock()
    }

    /// Moves the clock forward by `by`, in whole milliseconds, saturating.
    pub fn advance(&self, by: Duration) {
        self.advance_ms(i64::try_from(by.as_millis()).unwrap_or(i64::MAX));
    }

    /// Moves the clock by `by_ms` milliseconds (backwards if negative), saturating.
    pub fn advance_ms(&self, by_ms: i64) {
        {
            let mut now_ms = self.inner.now_ms.lock();
            *now_ms = now_ms.saturating_add(by_ms);
        }
        self.notify_waiters();
    }

    /// Sets the clock to `epoch_ms`, forwards or backwards.
    pub fn set(&self, epoch_ms: i64) {
        *self.inner.now_ms.lock() = epoch_ms;
        self.notify_waiters();
    }

    fn register(&self, wake: &Wake) {
        let mut waiters = self.inner.waiters.lock();
        waiters.retain(|waiter| waiter.strong_count() > 0);
        let wake_ptr = Arc::as_ptr(&wake.inner);
        if !waiters.iter().any(|waiter| waiter.as_ptr() == wake_ptr) {
            waiters.push(Arc::downgrade(&wake.inner));
        }
    }

    fn notify_waiters(&self) {
        let live: Vec<Arc<WakeInner>> = {
            let mut waiters = self.inner.waiters.lock();
            waiters.retain(|waiter| waiter.strong_count() > 0);
            waiters.iter().filter_map(Weak::upgrade).collect()
        };
        for wake in live {
            wake.notify();
        }
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_ms", &self.now_ms())
            .finish_non_exhaustive()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        ManualClock::now_ms(self)
    }

    /// Registers `wake` with this clock (before reading the time, so a change in between is
    /// not missed), then returns at once if the deadline has passed, or else waits for a
    /// notification or a clock change for at most [`MANUAL_WAIT_CAP`] of real time.
    fn wait_until(&self, wake: &Wake, deadline_ms: Option<i64>) {
        self.register(wake);
        if deadline_ms.is_some_and(|deadline_ms| self.now_ms() >= deadline_ms) {
            wake.wait_timeout(Duration::ZERO);
            return;
        }
        #[cfg(not(afterlog_shuttle))]
        wake.wait_timeout(MANUAL_WAIT_CAP);
        #[cfg(afterlog_shuttle)]
        wake.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::{Decision, Failure, FailureInput, RetryPolicy};
    use crossbeam_channel::bounded;
    use std::thread;

    /// Only a guard against a hung test; no assertion is made on how long anything takes.
    const GUARD: Duration = Duration::from_secs(30);
    const T0: i64 = 1_795_000_000_000;

    #[test]
    fn clones_share_one_time() {
        let clock = ManualClock::new(T0);
        let clone = clock.clone();
        clock.advance(Duration::from_secs(2));
        assert_eq!(clone.now_ms(), T0 + 2_000);
        clone.advance_ms(-500);
        assert_eq!(clock.now_ms(), T0 + 1_500);
        clone.set(42);
        assert_eq!(Clock::now_ms(&clock), 42);
        clock.advance(Duration::MAX);
        assert_eq!(clock.now_ms(), i64::MAX);
        clock.set(i64::MIN);
        clock.advance_ms(-1);
        assert_eq!(clock.now_ms(), i64::MIN);
        assert!(format!("{clock:?}").contains("now_ms"));
    }

    #[test]
    fn notify_before_wait_is_not_lost() {
        let wake = Wake::new();
        wake.notify();
        wake.notify();
        let (done_tx, done_rx) = bounded(1);
        let waiter = wake.clone();
        thread::spawn(move || {
            SystemClock.wait_until(&waiter, None);
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(GUARD)
            .expect("a pending notification was lost");
        // Consumed: no notification is left over.
        assert!(!wake.wait_timeout(Duration::ZERO));

        wake.notify();
        let clock = ManualClock::new(T0);
        clock.wait_until(&wake, Some(T0 + 1_000_000));
        assert!(!wake.wait_timeout(Duration::ZERO));
    }

    #[test]
    fn notify_wakes_a_thread_waiting_on_the_system_clock() {
        let wake = Wake::new();
        let (ready_tx, ready_rx) = bounded(1);
        let (done_tx, done_rx) = bounded(1);
        let waiter = wake.clone();
        thread::spawn(move || {
            ready_tx.send(()).unwrap();
            SystemClock.wait_until(&waiter, None);
            done_tx.send(()).unwrap();
        });
        ready_rx.recv_timeout(GUARD).unwrap();
        wake.notify();
        done_rx
            .recv_timeout(GUARD)
            .expect("notify did not wake the waiting thread");
    }

    #[test]
    fn system_clock_waits_until_its_deadline() {
        let clock = SystemClock;
        let before = clock.now_ms();
        assert!(before > 1_600_000_000_000, "the wall clock reads {before}");
        let deadline = before + 20;
        let (done_tx, done_rx) = bounded(1);
        thread::spawn(move || {
            SystemClock.wait_until(&Wake::new(), Some(deadline));
            done_tx.send(SystemClock.now_ms()).unwrap();
        });
        let after = done_rx
            .recv_timeout(GUARD)
            .expect("wait_until did not return");
        assert!(
            after >= deadline,
            "returned at {after}, before the deadline {deadline}"
        );
        // A deadline in the past returns at once.
        clock.wait_until(&Wake::new(), Some(before - 1));
    }

    #[test]
    fn a_change_notifies_every_wake_that_waited_on_the_clock() {
        let clock = ManualClock::new(T0);
        let first = Wake::new();
        let second = Wake::new();
        // Deadlines already reached: these calls only register and return.
        clock.wait_until(&first, Some(T0));
        clock.wait_until(&second, Some(T0 - 5));
        clock.wait_until(&second, Some(T0));
        assert_eq!(clock.inner.waiters.lock().len(), 2);
        clock.advance_ms(1);
        assert!(first.wait_timeout(Duration::ZERO));
        assert!(second.wait_timeout(Duration::ZERO));
        clock.set(T0);
        assert!(first.wait_timeout(Duration::ZERO));
    }

    #[test]
    fn dropped_wakes_are_pruned() {
        let clock = ManualClock::new(T0);
        for _ in 0..100 {
            clock.wait_until(&Wake::new(), Some(T0));
        }
        assert!(clock.inner.waiters.lock().len() <= 1);
        clock.advance_ms(1);
        assert!(clock.inner.waiters.lock().is_empty());
    }

    #[test]
    fn advancing_wakes_a_waiting_thread() {
        let clock = ManualClock::new(T0);
        let deadline = T0 + 60_000;
        let (ready_tx, ready_rx) = bounded(1);
        let (done_tx, done_rx) = bounded(1);
        let thread_clock = clock.clone();
        thread::spawn(move || {
            let wake = Wake::new();
            ready_tx.send(()).unwrap();
            while thread_clock.now_ms() < deadline {
                thread_clock.wait_until(&wake, Some(deadline));
            }
            done_tx.send(thread_clock.now_ms()).unwrap();
        });
        ready_rx.recv_timeout(GUARD).unwrap();
        clock.advance(Duration::from_secs(59));
        assert!(done_rx.try_recv().is_err(), "woke before its deadline");
        clock.advance(Duration::from_secs(1));
        let woke_at = done_rx
            .recv_timeout(GUARD)
            .expect("advance did not wake the waiting thread");
        assert_eq!(woke_at, deadline);
    }

    #[test]
    fn waiting_on_a_manual_clock_nobody_advances_returns() {
        let clock = ManualClock::new(T0);
        let (done_tx, done_rx) = bounded(1);
        let thread_clock = clock.clone();
        thread::spawn(move || {
            thread_clock.wait_until(&Wake::new(), Some(T0 + 86_400_000));
            thread_clock.wait_until(&Wake::new(), None);
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(GUARD)
            .expect("wait_until on an idle manual clock hung");
        assert_eq!(clock.now_ms(), T0);
    }

    /// An event that always fails under the default policy, driven to its drop by a manual
    /// clock, while another thread sleeps on the same clock until the 14-day mark.
    #[test]
    fn fourteen_days_pass_in_milliseconds() {
        let clock = ManualClock::new(T0);
        let mark = T0 + 14 * 86_400_000;
        let (done_tx, done_rx) = bounded(1);
        let thread_clock = clock.clone();
        thread::spawn(move || {
            let wake = Wake::new();
            while thread_clock.now_ms() < mark {
                thread_clock.wait_until(&wake, Some(mark));
            }
            done_tx.send(()).unwrap();
        });

        let policy = RetryPolicy::ampt();
        let failure = Failure::Error {
            message: "mail server down".into(),
        };
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let input = FailureInput {
                event_id: 1,
                attempt: attempts,
                first_due_ms: T0,
                now_ms: clock.now_ms(),
                previous: None,
                failure: &failure,
            };
            match policy.decide(&input) {
                Decision::Retry { next_due_ms, .. } => clock.set(next_due_ms),
                Decision::Drop { .. } => break,
            }
        }
        assert_eq!(attempts, 1 + 14 * 24 * 10);
        assert_eq!(clock.now_ms(), mark);
        done_rx
            .recv_timeout(GUARD)
            .expect("the sleeping thread missed the 14-day mark");
    }
}
