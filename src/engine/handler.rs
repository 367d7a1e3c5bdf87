//! What handlers see and return: [`Event`], [`Context`], [`HandlerError`], [`HandlerOptions`].

use super::options::{DEFAULT_HANDLER_TIMEOUT, MAX_HANDLER_TIMEOUT};
use crate::ids::{EventId, JobId};
use crate::log::RecordBytes;
use crate::retry::{RetryContext, RetryOptions};
use crate::sync::Mutex;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// A handler: called with the event and a context; `Ok(())` acknowledges.
pub type Handler = dyn Fn(&Event, &mut Context) -> Result<(), HandlerError> + Send + Sync + 'static;

/// What an async handler returns: a future of the attempt's outcome.
#[cfg(feature = "tokio")]
pub type HandlerFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandlerError>> + Send + 'static>>;

/// An async handler (see [`Engine::on_async`](crate::Engine::on_async)), boxed.
#[cfg(feature = "tokio")]
pub type AsyncHandler = dyn Fn(Event, AsyncContext) -> HandlerFuture + Send + Sync + 'static;

/// A registered handler: called on a worker thread, or polled on the runtime.
#[derive(Clone)]
pub(crate) enum HandlerFn {
    Sync(Arc<Handler>),
    #[cfg(feature = "tokio")]
    Async(Arc<AsyncHandler>),
}

/// Options of one handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandlerOptions {
    pub(crate) timeout: Duration,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        HandlerOptions {
            timeout: DEFAULT_HANDLER_TIMEOUT,
        }
    }
}

impl HandlerOptions {
    /// How long the handler may run before its attempt fails with `FUNCTION_TIME_OUT`
    /// (default 5 s; at most 60 s — longer values are lowered to 60 s).
    pub fn timeout(mut self, timeout: Duration) -> HandlerOptions {
        self.timeout = timeout.min(MAX_HANDLER_TIMEOUT);
        self
    }
}

/// One delivery of an event to a handler. Every handler of one attempt sees the same `time`,
/// `delay`, `attempt` and retry context. Cheap to clone: the body stays in the log's mapped
/// segment, shared.
#[derive(Clone)]
pub struct Event {
    pub(crate) id: EventId,
    pub(crate) name: Arc<str>,
    pub(crate) record: Arc<RecordBytes>,
    pub(crate) body: Range<usize>,
    pub(crate) time_ms: i64,
    pub(crate) delay_ms: i64,
    pub(crate) attempt: u32,
    pub(crate) job: Option<JobId>,
    pub(crate) retry_context: Option<RetryContext>,
}

impl Event {
    /// The event's id.
    pub fn id(&self) -> EventId {
        self.id
    }

    /// Its name, e.g. `user.joined`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schedule that published this event (see [`Engine::schedule`]), if one did.
    ///
    /// [`Engine::schedule`]: crate::Engine::schedule
    pub fn schedule(&self) -> Option<&str> {
        match self.record.record() {
            Ok(crate::format::Record::Publish(p)) => p.schedule().map(|d| d.id),
            _ => None,
        }
    }

    /// The body given to `publish`, read from the log (a memory-mapped segment).
    pub fn body(&self) -> &[u8] {
        &self.record.payload()[self.body.clone()]
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.body())
    }

    /// When `publish` was called, Unix epoch ms.
    pub fn time_ms(&self) -> i64 {
        self.time_ms
    }

    /// How long the event was delayed: its first due time minus `time_ms`, in ms.
    pub fn delay_ms(&self) -> i64 {
        self.delay_ms
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The job the event belongs to, if it was pushed as one.
    pub fn job(&self) -> Option<JobId> {
        self.job
    }

    /// What the previous attempt asked to pass on (Forge's `retryContext`), on a retry.
    pub fn retry_context(&self) -> Option<&RetryContext> {
        self.retry_context.as_ref()
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("body_len", &self.body.len())
            .field("time_ms", &self.time_ms)
            .field("delay_ms", &self.delay_ms)
            .field("attempt", &self.attempt)
            .field("job", &self.job)
            .field("retry_context", &self.retry_context)
            .finish()
    }
}

/// The running handler's deadline, shared with the watchdog that enforces it. Both times are
/// on the clock's monotonic timeline (`Clock::monotonic_ms`), which a wall-clock step does not
/// move.
#[derive(Debug)]
pub(crate) struct Deadline {
    pub started_ms: i64,
    pub deadline_ms: Mutex<i64>,
}

impl Deadline {
    pub(crate) fn new(started_ms: i64, timeout: Duration) -> Deadline {
        Deadline {
            started_ms,
            deadline_ms: Mutex::new(started_ms.saturating_add(timeout.as_millis() as i64)),
        }
    }

    fn set_timeout(&self, timeout: Duration) {
        let timeout = timeout.min(MAX_HANDLER_TIMEOUT);
        *self.deadline_ms.lock() = self.started_ms.saturating_add(timeout.as_millis() as i64);
    }

    /// The time left at `now_ms` (monotonic), zero once the deadline passed.
    fn remaining(&self, now_ms: i64) -> Duration {
        let left = self.deadline_ms.lock().saturating_sub(now_ms);
        Duration::from_millis(left.max(0) as u64)
    }
}

/// What a handler can do besides returning: change its timeout, cancel its job.
pub struct Context {
    pub(crate) job: Option<JobId>,
    pub(crate) deadline: Arc<Deadline>,
    pub(crate) engine: std::sync::Weak<super::Inner>,
    pub(crate) clock: Arc<dyn crate::clock::Clock>,
}

impl Context {
    /// Sets this handler's timeout, counted from when it started (at most 60 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.deadline.set_timeout(timeout);
    }

    /// The time left before this handler's timeout, on the engine's clock (zero once it
    /// passed): a handler can give its own I/O this deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.remaining(self.clock.monotonic_ms())
    }

    /// Cancels the event's job (Forge's `jobProgress.cancel()`): no event of it that has not
    /// started will be attempted. Durable when it returns. Returns how many events were
    /// cancelled; 0 for an event that is not part of a job.
    pub fn cancel_job(&mut self) -> crate::Result<u64> {
        let Some(job) = self.job else { return Ok(0) };
        let engine = self.engine.upgrade().ok_or(crate::Error::Closed)?;
        engine.cancel_job(job)
    }
}

/// What an async handler can do besides returning: change its timeout, read the time left,
/// cancel its job. Cheap to clone; every method takes `&self`, so it can be moved into the
/// handler's future and used across `.await`s.
#[cfg(feature = "tokio")]
#[derive(Clone)]
pub struct AsyncContext {
    pub(crate) job: Option<JobId>,
    pub(crate) deadline: Arc<Deadline>,
    pub(crate) engine: std::sync::Weak<super::Inner>,
    pub(crate) clock: Arc<dyn crate::clock::Clock>,
}

#[cfg(feature = "tokio")]
impl AsyncContext {
    /// Sets this handler's timeout, counted from when it started (at most 60 s). When it
    /// passes, the attempt fails with `FUNCTION_TIME_OUT` and the handler's future is dropped:
    /// it stops at the `.await` it is suspended at.
    pub fn set_timeout(&self, timeout: Duration) {
        self.deadline.set_timeout(timeout);
    }

    /// The time left before this handler's timeout, on the engine's clock (zero once it
    /// passed): hand it to the handler's own I/O (`tokio::time::timeout(ctx.remaining(), ..)`).
    pub fn remaining(&self) -> Duration {
        self.deadline.remaining(self.clock.monotonic_ms())
    }

    /// Cancels the event's job, like [`Context::cancel_job`]; completes once the cancel is
    /// durable. 0 for an event that is not part of a job.
    pub async fn cancel_job(&self) -> crate::Result<u64> {
        let Some(job) = self.job else { return Ok(0) };
        let engine = self.engine.upgrade().ok_or(crate::Error::Closed)?;
        super::Inner::cancel_job_async(&engine, job).await
    }
}

#[cfg(feature = "tokio")]
impl fmt::Debug for AsyncContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncContext")
            .field("job", &self.job)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("job", &self.job)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// Why a handler failed.
///
/// `?` converts any standard error (`std::io::Error`, `serde_json::Error`, ...) and any
/// [`anyhow::Error`] into one; its message is the error's text with its chain of causes
/// (`outer: inner`). A `Box<dyn Error + Send + Sync>` is not itself a `std::error::Error`:
/// convert it with one call, [`HandlerError::boxed`] (or `anyhow::Error::from_boxed`, then `?`).
///
/// ```
/// use afterlog::HandlerError;
///
/// fn parse(body: &[u8]) -> Result<u32, HandlerError> {
///     let text = std::str::from_utf8(body)?; // a std error
///     let n = text.parse::<u32>().map_err(anyhow::Error::from)?; // an anyhow::Error
///     if n == 0 {
///         return Err(HandlerError::msg("zero"));
///     }
///     Ok(n)
/// }
/// let e = parse(b"x").unwrap_err();
/// assert_eq!(e.message(), "invalid digit found in string");
/// assert!(!e.is_retry());
/// ```
pub struct HandlerError {
    pub(crate) kind: HandlerErrorKind,
}

#[derive(Debug)]
pub(crate) enum HandlerErrorKind {
    Message(String),
    Retry(RetryOptions),
}

impl HandlerError {
    /// A failure with a message; the name's retry policy decides what happens next.
    pub fn msg(message: impl Into<String>) -> HandlerError {
        HandlerError {
            kind: HandlerErrorKind::Message(message.into()),
        }
    }

    /// A request to be retried (Forge's `InvocationError`): after `retry_after` (at most
    /// 900 s), with the reason and data passed to the next attempt's retry context.
    pub fn retry(options: RetryOptions) -> HandlerError {
        HandlerError {
            kind: HandlerErrorKind::Retry(options),
        }
    }

    /// A failure from a boxed error, which `?` cannot convert (a `Box<dyn Error>` does not
    /// implement `Error`); the message is its text with its causes, as for `?`.
    pub fn boxed(error: Box<dyn std::error::Error + Send + Sync + 'static>) -> HandlerError {
        HandlerError::from(anyhow::Error::from_boxed(error))
    }

    /// The failure's message: the text given to [`msg`](HandlerError::msg) or converted by
    /// `?`; for a retry request, a description of it. This is the text kept in the log.
    pub fn message(&self) -> &str {
        match &self.kind {
            HandlerErrorKind::Message(m) => m,
            HandlerErrorKind::Retry(_) => "retry requested",
        }
    }

    /// Whether this is a retry request made with [`retry`](HandlerError::retry).
    pub fn is_retry(&self) -> bool {
        matches!(self.kind, HandlerErrorKind::Retry(_))
    }

    /// The retry request, if this is one.
    pub fn retry_options(&self) -> Option<&RetryOptions> {
        match &self.kind {
            HandlerErrorKind::Retry(o) => Some(o),
            HandlerErrorKind::Message(_) => None,
        }
    }
}

/// Any standard error and any `anyhow::Error` (a blanket impl over `std::error::Error` could
/// not also take `anyhow::Error`, which is not one).
impl<E: Into<anyhow::Error>> From<E> for HandlerError {
    fn from(error: E) -> HandlerError {
        // `{:#}` is the error with its causes, one line.
        HandlerError::msg(format!("{:#}", error.into()))
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            HandlerErrorKind::Message(m) => f.write_str(m),
            HandlerErrorKind::Retry(o) => write!(
                f,
                "retry requested ({}) after {:?}",
                o.reason, o.retry_after
            ),
        }
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.kind, f)
    }
}
