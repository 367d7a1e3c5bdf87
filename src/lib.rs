//! afterlog: an embedded, crash-safe engine for delayed and background events.
//!
//! Events are published now or up to a year ahead, kept in a write-ahead segment log, and
//! delivered at least once to the handlers registered for their name.
//!
//! ```
//! use afterlog::{After, Engine, HandlerError, ManualClock, Options};
//! use std::time::Duration;
//!
//! # let dir = tempfile::tempdir()?;
//! let clock = ManualClock::new(1_700_000_000_000);
//! let engine = Engine::open_with(dir.path(), Options::default().clock(clock.clone()))?;
//! engine.on("user.joined", |event, _ctx| {
//!     let body = std::str::from_utf8(event.body())?;
//!     if body.is_empty() {
//!         return Err(HandlerError::msg("no body")); // retried every 6 minutes
//!     }
//!     Ok(()) // acknowledged
//! });
//! engine.start();
//! let id = engine.publish("user.joined", r#"{"email":"a@b.c"}"#, After::parse("1 day")?)?;
//! clock.advance(Duration::from_secs(86_400)); // a day passes in a millisecond
//! assert!(engine.wait_idle(Duration::from_secs(5)));
//! assert_eq!(engine.metrics().acked, 1);
//! # let _ = id;
//! engine.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::big_endian_bytes, clippy::host_endian_bytes)]

mod after;
mod clock;
mod engine;
mod error;
mod histogram;
mod ids;
mod reader;
mod retry;
mod sync;

// How the `afterlog` command and the dashboard show records, times and bodies: not API.
#[cfg(any(feature = "cli", feature = "web"))]
#[doc(hidden)]
pub mod render;

/// The web dashboard (feature `web`): `afterlog serve` and a router to mount in an axum
/// application.
#[cfg(feature = "web")]
pub mod web;

// The internals: private to the crate, or `#[doc(hidden)]` public under the `internals`
// feature for afterlog's own tests, fuzz targets and benchmarks. Nothing in them is API.
macro_rules! internal_modules {
    ($(mod $name:ident;)*) => {
        $(
            #[cfg(feature = "internals")]
            #[doc(hidden)]
            pub mod $name;
            #[cfg(not(feature = "internals"))]
            #[allow(
                dead_code,
                unused_imports,
                reason = "what only the tests, fuzz targets and benchmarks use"
            )]
            mod $name;
        )*
    };
}

internal_modules! {
    mod cron;
    mod format;
    mod index;
    mod log;
    mod storage;
    mod wheel;
}

/// The checks the fuzz targets run (and `tests/fuzz_corpus.rs` replays): nothing the engine
/// needs, so built with `internals` only.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod testing;

pub use after::{After, ONE_YEAR_MS, latest_due_ms};
pub use clock::{Clock, MANUAL_WAIT_CAP, ManualClock, SYSTEM_WAIT_CAP, SystemClock, Wake};
pub use engine::{
    ABANDONED_TOTAL_FACTOR, CATCH_UP_ALL_CAP, CatchUp, CompactionStats, Context,
    DEFAULT_ABANDONED_THREADS, DEFAULT_ASYNC_ATTEMPTS, DEFAULT_DEAD_RETENTION,
    DEFAULT_HANDLER_TIMEOUT, DEFAULT_MAX_PUSH_BYTES, DEFAULT_MAX_PUSH_EVENTS, DEFAULT_RETENTION,
    DeadLetter, DeadReason, Engine, Event, FORGE_MAX_DELAY, Handler, HandlerError, HandlerOptions,
    KeyMode, KeyOutcome, MAX_HANDLER_TIMEOUT, MIN_COMPACTION_INTERVAL, Metrics, NameMetrics,
    Options, PublishOptions, Published, Recurring, ScheduleInfo,
};
#[cfg(feature = "tokio")]
pub use engine::{AsyncContext, AsyncHandler, HandlerFuture};
pub use error::{Error, Result};
pub use format::{Manifest, NameLimits};
pub use ids::{EventId, JobId};
pub use index::{EventState, JobStats};
pub use log::{Durability, Position, Recovery};
pub use reader::{
    EventFilter, EventHistory, EventRow, KeysHeld, Problem, Reader, RecordFilter, Salvage,
    SegmentInfo, Summary, Verification, drop_reason_name, record_time_ms, retry_reason_name,
};
pub use record::{Record, RecordKind};
pub use retry::{
    AMPT_MAX_AGE, AMPT_RETRY_INTERVAL, Decision, DropReason, FORGE_MAX_RETRIES, FORGE_RETRY_DELAY,
    Failure, FailureInput, MAX_RETRY_AFTER, RetryContext, RetryOptions, RetryPolicy, RetryReason,
};
pub use storage::{CrashMode, FsStorage, LockGuard, Mapped, MemStorage, Storage, StorageFile};

/// The records of the log, as [`Reader::records`] and [`Reader::event_history`] hand them
/// over: one type per record kind, borrowed from the segment they were read from.
/// `docs/FORMAT.md` gives each one's bytes.
pub mod record {
    pub use crate::format::{
        Ack, AckOutcome, Attempt, CATCH_UP_ALL, CATCH_UP_LATEST, CATCH_UP_SKIP, Cancel,
        CancelTarget, Drop, EventIter, EventOptions, JobDone, KEY_KEEP, KEY_NONE, KEY_REPLACE,
        KEY_REPLACE_BODY, MAX_KEY_LEN, Pause, Publish, PublishEntry, PurgeDead, Record,
        RecordError, RecordKind, Retry, ScheduleDef, validate_key,
    };
}
