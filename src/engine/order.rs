//! The lock that keeps a cancel's record where the core applied it (`Inner::cancel_order`).
//!
//! A readers–writer lock whose write side may be released by another thread than the one
//! that took it: an async `cancel` takes it, queues its record, and leaves the release to
//! whoever completes the record (the log's writer, once it is durable and applied), so that
//! no future holds a lock guard across an `.await`. Writers go first: a reader waits while a
//! writer waits, so a stream of deliveries never starves a cancel. Neither side is
//! reentrant.

use crate::sync::{Condvar, Mutex};

#[derive(Debug, Default)]
pub(crate) struct OrderLock {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    readers: usize,
    writer: bool,
    writers_waiting: usize,
}

/// A read hold, released on drop.
#[must_use]
pub(crate) struct Read<'a>(&'a OrderLock);

/// A write hold, released on drop (see [`OrderLock::write`]).
#[must_use]
pub(crate) struct Write<'a>(&'a OrderLock);

impl OrderLock {
    pub fn read(&self) -> Read<'_> {
        let mut state = self.state.lock();
        while state.writer || state.writers_waiting > 0 {
            self.changed.wait(&mut state);
        }
        state.readers += 1;
        Read(self)
    }

    pub fn write(&self) -> Write<'_> {
        self.acquire_write();
        Write(self)
    }

    /// Takes the write side without a guard: [`release_write`](OrderLock::release_write)
    /// gives it back, from any thread.
    pub fn acquire_write(&self) {
        let mut state = self.state.lock();
        state.writers_waiting += 1;
        while state.writer || state.readers > 0 {
            self.changed.wait(&mut state);
        }
        state.writers_waiting -= 1;
        state.writer = true;
    }

    pub fn release_write(&self) {
        let mut state = self.state.lock();
        debug_assert!(state.writer, "the write side is not held");
        state.writer = false;
        drop(state);
        self.changed.notify_all();
    }

    fn release_read(&self) {
        let mut state = self.state.lock();
        state.readers -= 1;
        let last = state.readers == 0;
        drop(state);
        if last {
            self.changed.notify_all();
        }
    }
}

impl Drop for Read<'_> {
    fn drop(&mut self) {
        self.0.release_read();
    }
}

impl Drop for Write<'_> {
    fn drop(&mut self) {
        self.0.release_write();
    }
}
