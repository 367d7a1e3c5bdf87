//! Publishing that awaits durability: `publish_async`, `push_async`, `cancel_async`,
//! `cancel_job_async` and `close_async`.
//!
//! Each one checks its input and queues its record in the log on the calling thread, as the
//! blocking call does, and then, instead of sleeping until the record's sync group is durable,
//! returns a future the log's writer wakes (`Log::submit_all_async`). No thread waits, no
//! future polls on a timer, and any executor runs them: they need no runtime. The futures of
//! many tasks share one sync, as blocking publishers do.
//!
//! A record is applied to the core (indexed, scheduled, cancelled) once durable. The future
//! does it when it completes; a future dropped before that leaves it to the writer, which
//! applies the record as it completes it (`Durable::then_or_now`): dropping a future does not
//! take its record back, and never leaves a durable record unapplied until a restart.
//!
//! A cancel keeps `Inner::cancel_order`'s write side from before its record is queued until
//! it is applied, as the blocking call does; here the release is part of that application, on
//! whichever thread completes the record, so no future holds a lock across an `.await`.

use super::{Engine, Inner, check_publish_len, job_entries};
use crate::after::After;
use crate::error::{Error, Result};
use crate::format::{Publish, PublishEntry, Record};
use crate::ids::{EventId, JobId};
use crate::log::{Durable, Position, copy_error};
use crate::sync::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

impl Engine {
    /// Publishes an event like [`publish`](Engine::publish), as a future that completes when
    /// the event is durable — woken by the log's writer, with no thread blocked. The future is
    /// `Send` and needs no particular runtime. A bad name, body or `after` fails the future
    /// at once, and nothing is written.
    ///
    /// Dropping the future before it completes does not un-publish: the record is queued
    /// already, and may still become durable (it is then delivered as any other event).
    pub async fn publish_async(
        &self,
        name: &str,
        body: impl AsRef<[u8]> + Send,
        after: impl Into<After>,
    ) -> Result<EventId> {
        let inner = self.inner();
        let (id, now_ms, due_ms) = inner.new_event(name, &after.into())?;
        let entries = [PublishEntry {
            id,
            due_ms,
            name,
            body: body.as_ref(),
        }];
        let record = Record::Publish(Publish::new(None, now_ms, &entries));
        check_publish_len(&record)?;
        ApplyWhenDurable::submit(inner, record)?.await?;
        inner.count_published(name, 1);
        Ok(id)
    }

    /// Publishes `value` serialized as JSON, like [`publish_async`](Engine::publish_async).
    pub async fn publish_json_async<T: serde::Serialize + ?Sized>(
        &self,
        name: &str,
        value: &T,
        after: impl Into<After>,
    ) -> Result<EventId> {
        let body = super::json_body(value)?;
        self.publish_async(name, body, after).await
    }

    /// Pushes a job like [`push`](Engine::push), as a future that completes when the job is
    /// durable (see [`publish_async`](Engine::publish_async)).
    pub async fn push_async<I, B>(&self, name: &str, bodies: I, delay: Duration) -> Result<JobId>
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]> + Send,
    {
        let inner = self.inner();
        let bodies: Vec<B> = bodies.into_iter().collect();
        let slices: Vec<&[u8]> = bodies.iter().map(|b| b.as_ref()).collect();
        let (job, now_ms, due_ms, first) = inner.new_job(name, &slices, delay)?;
        let entries = job_entries(name, &slices, due_ms, first);
        let record = Record::Publish(Publish::new(Some(job), now_ms, &entries));
        check_publish_len(&record)?;
        ApplyWhenDurable::submit(inner, record)?.await?;
        inner.count_published(name, slices.len() as u64);
        Ok(job)
    }

    /// Cancels an event like [`cancel`](Engine::cancel), as a future that completes when the
    /// cancel is durable. Once it completes, no new attempt of the event starts. Dropped
    /// before it completes, the cancel may still take effect.
    ///
    /// Its first poll may wait briefly on the calling thread, as the blocking call does before
    /// it writes: for deliveries writing their records (at most one sync) and for outcomes of
    /// the event already queued to be applied (within a sync); the wait for its own record's
    /// sync is the future's.
    pub async fn cancel_async(&self, id: EventId) -> Result<bool> {
        Inner::cancel_async(self.inner(), id).await
    }

    /// Cancels a job like [`cancel_job`](Engine::cancel_job), as a future that completes
    /// when the cancel is durable.
    pub async fn cancel_job_async(&self, job: JobId) -> Result<u64> {
        Inner::cancel_job_async(self.inner(), job).await
    }

    /// Closes the engine like [`close`](Engine::close) — the scheduler stops, running
    /// handlers (sync and async) finish up to their timeouts, everything is flushed and the
    /// directory lock released — as a future: the waiting happens on a thread of the engine's
    /// own (`afterlog-close`), never on the runtime's, so the async handlers being drained go
    /// on running even on a current-thread runtime. Called from a handler of this engine, it
    /// does not wait for that handler's own attempt (whose outcome is written when it
    /// returns, as for `close`).
    pub async fn close_async(&self) -> Result<()> {
        let inner = self.inner().clone();
        let caller = super::delivery::Caller::current(&inner);
        let answer = Answer::new();
        let sender = answer.clone();
        crate::sync::thread::Builder::new()
            .name("afterlog-close".into())
            .spawn(move || sender.set(inner.close_from(caller)))
            .map_err(|e| Error::invalid(format!("cannot start the closing thread: {e}")))?;
        answer.await
    }
}

impl Inner {
    pub(crate) async fn cancel_async(self: &Arc<Inner>, id: EventId) -> Result<bool> {
        let Some(record) = self.cancel_record(id)? else {
            return Ok(false);
        };
        self.cancel_when_durable(
            record,
            |core| core.finishing(std::iter::once(id)),
            |inner, pos, record| inner.apply_cancel(pos, record),
        )
        .await
    }

    pub(crate) async fn cancel_job_async(self: &Arc<Inner>, job: JobId) -> Result<u64> {
        let Some(record) = self.cancel_job_record(job)? else {
            return Ok(0);
        };
        self.cancel_when_durable(
            record,
            |core| core.finishing(core.index().job_events(job)),
            move |inner, pos, record| inner.apply_cancel_job(job, pos, record),
        )
        .await
    }

    /// Queues a cancel's `record` (see `submit_cancel`) and answers what `apply` says once it
    /// is durable and applied — by whoever completes it, which then releases `cancel_order`.
    async fn cancel_when_durable<T: Send + 'static>(
        self: &Arc<Inner>,
        record: Record<'static>,
        queued: impl Fn(&super::Core) -> bool,
        apply: impl FnOnce(&Inner, Position, &Record<'_>) -> T + Send + 'static,
    ) -> Result<T> {
        let answer = Answer::new();
        let durable = self.submit_cancel(&record, queued)?;
        let (inner, sender) = (self.clone(), answer.clone());
        durable.then_or_now(Box::new(move |written| {
            let answer = written
                .as_ref()
                .map_err(copy_error)
                .map(|positions| apply(&inner, positions[0], &record));
            inner.cancel_order.release_write();
            sender.set(answer);
        }));
        // The answer is set before the writer wakes the record's future, which is not needed.
        drop(durable);
        answer.await
    }

    /// Takes `cancel_order`'s write side, waits for the outcomes `queued` names to be applied
    /// and queues `record`. On success the write side stays taken: the caller's `then`
    /// releases it once the record is applied.
    fn submit_cancel(
        &self,
        record: &Record<'_>,
        queued: impl Fn(&super::Core) -> bool,
    ) -> Result<Durable> {
        // Both waits are short: readers hold the lock across one sync at most, and the
        // applier applies each outcome within a sync of its being queued.
        self.cancel_order.acquire_write();
        self.wait_outcomes_applied(queued);
        // Queued before this returns: its `then` releases the write side.
        let submitted = self
            .log
            .submit_all_async_queued(std::slice::from_ref(record));
        if submitted.is_err() {
            self.cancel_order.release_write();
        }
        submitted
    }
}

/// A record queued by an async call, applied once durable (see the module doc): by this
/// future as it completes, or by the log's writer if the future is dropped first.
struct ApplyWhenDurable<'a> {
    inner: &'a Arc<Inner>,
    durable: Option<Durable>,
    record: Record<'a>,
}

impl<'a> ApplyWhenDurable<'a> {
    fn submit(inner: &'a Arc<Inner>, record: Record<'a>) -> Result<ApplyWhenDurable<'a>> {
        let durable = inner.log.submit_all_async(std::slice::from_ref(&record))?;
        Ok(ApplyWhenDurable {
            inner,
            durable: Some(durable),
            record,
        })
    }
}

impl Future for ApplyWhenDurable<'_> {
    type Output = Result<Position>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(durable) = this.durable.as_mut() else {
            return Poll::Ready(Err(Error::invalid("polled after it completed")));
        };
        let written = match Pin::new(durable).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(written) => written,
        };
        this.durable = None;
        let pos = written?[0];
        // A fresh publish is always accepted: its ids were never used.
        let _ = this.inner.apply(pos, &this.record);
        Poll::Ready(Ok(pos))
    }
}

impl Drop for ApplyWhenDurable<'_> {
    fn drop(&mut self) {
        let Some(durable) = self.durable.take() else {
            return;
        };
        // The record outlives this future only as its bytes, read back when it is applied.
        let kind = self.record.kind();
        let mut payload = Vec::with_capacity(self.record.encoded_len());
        self.record.encode(&mut payload);
        // The writer runs this before `close` can join it, so this is never the engine's last
        // reference: the engine is not dropped on the writer's thread.
        let inner = self.inner.clone();
        durable.then_or_now(Box::new(move |written| {
            let (Ok(positions), Ok(record)) = (written, Record::decode(kind, &payload)) else {
                return;
            };
            if let Some(&pos) = positions.first() {
                let _ = inner.apply(pos, &record);
            }
        }));
    }
}

/// A value set once by another thread, awaited by a future.
pub(crate) struct Answer<T>(Arc<Mutex<AnswerState<T>>>);

struct AnswerState<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

impl<T> Clone for Answer<T> {
    fn clone(&self) -> Self {
        Answer(self.0.clone())
    }
}

impl<T> Answer<T> {
    pub fn new() -> Answer<T> {
        Answer(Arc::new(Mutex::new(AnswerState {
            value: None,
            waker: None,
        })))
    }

    pub fn set(&self, value: T) {
        let waker = {
            let mut state = self.0.lock();
            state.value = Some(value);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Future for Answer<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<T> {
        let mut state = self.0.lock();
        match state.value.take() {
            Some(value) => Poll::Ready(value),
            None => {
                if !state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}
