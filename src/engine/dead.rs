//! Dead letters: an event that dies — dropped after its retries or its maximum age, dropped
//! past retention, or acknowledged with no handler for its name — is kept, its publish and
//! its history on disk, for `Options::dead_retention`: listed newest first, redriven (a new
//! event, due now, same name and body) or purged. The index keeps the list (`index/dead.rs`):
//! what lives in memory is the event's entry and 24 bytes; name, body and message are read
//! from the log when asked for.
//!
//! A redrive is one record: the new event's publish (kind 7) names the dead letter it
//! redrives, so a crash leaves either both (the new event, the dead letter forgotten) or
//! neither. A purge is one record too (kind 10): every dead letter before it is forgotten.

use super::Inner;
use crate::error::{Error, Result};
use crate::format::{AckOutcome, EventOptions, Publish, PublishEntry, PurgeDead, Record};
use crate::ids::{EventId, JobId};
use crate::index::Location;
use crate::log::Position;
use crate::retry::DropReason;
use std::sync::atomic::Ordering;

/// Why an event died.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeadReason {
    /// Its retry policy gave up: retries exhausted.
    RetriesExhausted,
    /// Its retry policy's maximum age passed (a retry would have been due past it).
    MaxAge,
    /// Not acknowledged within the retention after its first due time.
    PastRetention,
    /// It fell due after `start()` with no handler for its name: acknowledged as ignored,
    /// and kept here, so a typo or a late registration loses nothing.
    NoHandler,
}

impl DeadReason {
    /// The lower-case name the CLI and JSON use.
    pub fn name(self) -> &'static str {
        match self {
            DeadReason::RetriesExhausted => "retries-exhausted",
            DeadReason::MaxAge => "max-age",
            DeadReason::PastRetention => "past-retention",
            DeadReason::NoHandler => "no-handler",
        }
    }

    pub(crate) fn of_drop(reason: DropReason) -> DeadReason {
        match reason {
            DropReason::Exhausted => DeadReason::RetriesExhausted,
            DropReason::MaxAge => DeadReason::MaxAge,
            DropReason::Expired => DeadReason::PastRetention,
        }
    }
}

impl std::fmt::Display for DeadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An event that died, as [`Engine::dead_letters`](crate::Engine::dead_letters) and the
/// [`Options::on_dead`](crate::Options::on_dead) hook see it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The event.
    pub id: EventId,
    /// Its name.
    pub name: String,
    /// Its body (its latest, for an event whose body a key's `ReplaceBody` replaced).
    pub body: Vec<u8>,
    /// Attempts made.
    pub attempts: u32,
    /// Why it died.
    pub reason: DeadReason,
    /// The last failure's message (a panic's own message included), or what killed it.
    pub message: String,
    /// When it died, Unix epoch ms.
    pub dropped_ms: i64,
    /// When it was published, Unix epoch ms.
    pub published_ms: i64,
    /// Its job, if it was pushed as part of one.
    pub job: Option<JobId>,
}

/// The message of a dead letter whose name had no handler.
pub(crate) fn no_handler_message(name: &str) -> String {
    format!("no handler for {name:?} when it fell due")
}

/// Whether `record`, once it changed its event, made it a dead letter: a drop, or the ack
/// of an event with no handler.
pub(crate) fn kills(record: &Record<'_>) -> bool {
    matches!(
        record,
        Record::Drop(_)
            | Record::Ack(crate::format::Ack {
                outcome: AckOutcome::Ignored,
                ..
            })
    )
}

/// What a record that killed an event says of it: why, the message, and when. `None` for a
/// record that kills no event.
pub(crate) fn death<'a>(record: &Record<'a>, name: &str) -> Option<(DeadReason, String, i64)> {
    match record {
        Record::Drop(d) => Some((
            DeadReason::of_drop(d.reason),
            d.message.to_owned(),
            d.dropped_ms,
        )),
        Record::Ack(a) if a.outcome == AckOutcome::Ignored => {
            Some((DeadReason::NoHandler, no_handler_message(name), a.acked_ms))
        }
        _ => None,
    }
}

impl Inner {
    /// The dead letters kept, newest first, at most `limit`.
    pub(crate) fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.check_open()?;
        let now_ms = self.clock.now_ms();
        let refs: Vec<_> = {
            let core = self.core.lock();
            core.index()
                .dead_letters(now_ms)
                .take(limit)
                .map(|d| (d.id, d.at))
                .collect()
        };
        Ok(refs
            .into_iter()
            .filter_map(|(id, at)| self.read_dead(id, at))
            .collect())
    }

    /// Reads the event `id` that the record at `at` killed, from the index and the log:
    /// `None` if the index no longer holds it or its records cannot be read.
    fn read_dead(&self, id: EventId, at: Location) -> Option<DeadLetter> {
        let (name, attempts, job, body_at, death_at) = {
            let core = self.core.lock();
            let e = core.event(id)?;
            let body = (
                e.body_at,
                self.log.segment_reader(u64::from(e.body_at.segment)),
            );
            let death = self.log.segment_reader(u64::from(at.segment));
            (e.name.to_owned(), e.attempts, e.job, body, death)
        };
        let (bytes, range, published_ms, _) = super::delivery::read_publish(id, body_at)?;
        let record = death_at?.read(u64::from(at.offset)).ok()?;
        let (reason, message, dropped_ms) = death(&record.record().ok()?, &name)?;
        Some(DeadLetter {
            id,
            body: bytes.payload()[range].to_vec(),
            name,
            attempts,
            reason,
            message,
            dropped_ms,
            published_ms,
            job,
        })
    }

    /// The dead letter `id` as kept now, or an error naming why it is none.
    fn kept_dead_letter(&self, id: EventId) -> Result<DeadLetter> {
        let at = {
            let core = self.core.lock();
            let now_ms = self.clock.now_ms();
            // Newest first: a redrive is usually of a recent death.
            core.index()
                .is_dead(id)
                .then(|| core.index().dead_letters(now_ms).find(|d| d.id == id))
                .flatten()
                .map(|d| d.at)
        };
        match at {
            Some(at) => self
                .read_dead(id, at)
                .ok_or_else(|| Error::invalid(format!("dead letter {id} cannot be read"))),
            None if self.event_given_out(id) => {
                Err(Error::invalid(format!("event {id} is not a dead letter")))
            }
            None => Err(Error::invalid(format!("unknown event {id}"))),
        }
    }

    /// Publishes dead letter `id` again as a new event, due now, and forgets the dead
    /// letter, in one record.
    pub(crate) fn redrive(&self, id: EventId) -> Result<EventId> {
        self.check_open()?;
        // One redrive or purge at a time: a dead letter is redriven once.
        let _one = self.dead_lock.lock();
        let dead = self.kept_dead_letter(id)?;
        let priority = self.core.lock().event(id).map_or(0, |e| e.priority);
        let (new, now_ms) = self.new_id()?;
        let entry = PublishEntry {
            id: new,
            due_ms: now_ms,
            name: &dead.name,
            body: &dead.body,
        };
        let options = EventOptions {
            priority,
            replaces: Some(id),
            redrives: true,
            ..EventOptions::default()
        };
        let record = Record::Publish(Publish::with_options(now_ms, entry, options));
        self.write_publish(record)?;
        self.count_published(&dead.name, 1);
        Ok(new)
    }

    /// Forgets every dead letter now; how many were kept.
    pub(crate) fn purge_dead(&self) -> Result<u64> {
        self.check_open()?;
        let _one = self.dead_lock.lock();
        let before = self.core.lock().index().dead_count();
        if before == 0 {
            return Ok(0);
        }
        let record = Record::PurgeDead(PurgeDead {
            at_ms: self.clock.now_ms(),
        });
        let pos = self.log.append(&record)?;
        let _ = self.apply(pos, &record);
        let after = self.core.lock().index().dead_count();
        Ok(before.saturating_sub(after))
    }

    /// Announces each death (the event, and where the record that killed it lies, durable
    /// and applied; its name's count of dead letters was added where it was applied): when
    /// the `on_dead` hook is set or a `tracing` subscriber listens at `error`, reads the dead
    /// letter for an `error` event and the hook. A panic in the hook is caught and counted.
    pub(crate) fn announce_dead(&self, deaths: Vec<(EventId, Position)>) {
        let hook = self.options.on_dead.as_ref();
        if hook.is_none() && !tracing::enabled!(tracing::Level::ERROR) {
            return;
        }
        for (id, pos) in deaths {
            // Finished and held, right after its death was applied (compaction keeps it).
            let Some(dead) = self.read_dead(id, super::location(pos)) else {
                continue;
            };
            tracing::error!(
                name = %dead.name,
                id = id.0,
                reason = dead.reason.name(),
                error = %dead.message,
                attempts = dead.attempts,
                "event died: kept as a dead letter"
            );
            let Some(hook) = hook else { continue };
            let call = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (hook.0)(&dead)));
            if call.is_err() {
                self.metrics
                    .dead_hook_panics
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
