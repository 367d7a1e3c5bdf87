//! Unwind guards for the engine's background threads.
//!
//! Every background thread of the engine (the scheduler, the workers, the watchdog, the
//! compactor) runs its body under [`guarded`]. A panic there — a bug, or a panic in the
//! storage layer or a clock — stops the engine instead of leaving callers to wait for a
//! thread that is gone: the thread's name and the panic's message are recorded, the log is
//! poisoned (nothing more is written, so what is on disk stays what was acknowledged), every
//! waiter is woken, and from then on every call fails with [`Error::Panicked`], which names
//! the thread and the message. `close` still stops the other threads and releases the
//! directory lock; reopening the directory recovers the engine.
//!
//! The log's own threads are guarded in the log: a panic of the writer fails every append
//! with the writer's message, and a panic of the segment preparer poisons the log and is
//! reported here as the engine's (see [`Inner::stopped`]).

use super::Inner;
use crate::error::{Error, panic_message};
use crate::sync::Mutex;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The first background thread of the engine that panicked, and the panic's message.
#[derive(Debug, Default)]
pub(crate) struct Panicked {
    first: Mutex<Option<(String, String)>>,
}

impl Panicked {
    fn get(&self) -> Option<(String, String)> {
        self.first.lock().clone()
    }
}

/// Runs a background thread's body. Returns whether it ran to its end; if it panicked
/// instead, the engine is stopped (see the module doc) and the caller cleans up after the
/// thread (a worker stops counting as alive, so `close` does not wait for it).
pub(crate) fn guarded(inner: &Inner, thread: &str, body: impl FnOnce()) -> bool {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(()) => true,
        Err(payload) => {
            inner.stop_after_panic(thread, panic_message(payload));
            false
        }
    }
}

impl Inner {
    /// Records that `thread` panicked with `message` (the first panic wins), poisons the log
    /// and wakes every thread that waits for the engine: the scheduler, the compactor, and
    /// `wait_idle` and `close` on the idle condition variable. Appenders waiting on the log
    /// are woken by its poison.
    pub(crate) fn stop_after_panic(&self, thread: &str, message: String) {
        let (error, first_panic) = {
            let mut first = self.panicked.first.lock();
            let first_panic = first.is_none();
            let (thread, message) =
                first.get_or_insert_with(|| (thread.to_owned(), message.clone()));
            let error = Error::Panicked {
                thread: thread.clone(),
                message: message.clone(),
            };
            (error, first_panic)
        };
        if first_panic {
            tracing::error!(
                thread,
                error = %message,
                "engine stopped: a background thread panicked; every call fails until it is reopened"
            );
        }
        self.log.poison(error.to_string());
        self.wake.notify();
        self.compaction_wake.notify();
        // Taking the lock orders the notification after any waiter's check of `stopped`.
        drop(self.core.lock());
        self.idle.notify_all();
    }

    /// The error every call fails with once a background thread panicked (the engine's, or
    /// the log's segment preparer): `None` while the engine runs.
    pub(crate) fn stopped(&self) -> Option<Error> {
        let (thread, message) = self.panicked.get().or_else(|| self.log.panicked())?;
        Some(Error::Panicked { thread, message })
    }
}
