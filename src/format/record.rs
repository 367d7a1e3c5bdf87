//! Record payloads: one encoder/decoder pair per record kind. Layouts are in `docs/FORMAT.md`
//! and repeated above each kind below. Decoders borrow names and bodies from the input (a
//! memory-mapped segment) and check every length against the bytes present before using it.

use super::{get_i64, get_u16, get_u32, get_u64};
use crate::ids::{EventId, JobId};
/// A drop record's reason is the policy's (and the retention's) [`DropReason`], stored as
/// its code.
pub use crate::retry::DropReason;

/// Largest event name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 255;
/// Largest failure message kept in a retry or drop record; longer messages are cut at a
/// character boundary before encoding.
pub const MAX_MESSAGE_LEN: usize = 1024;

/// The kind byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// One or more events published together (a `publish`, or a `push` job).
    Publish = 1,
    /// A delivery attempt started.
    Attempt = 2,
    /// An attempt failed and the event is due again later.
    Retry = 3,
    /// Every handler succeeded (or there was none): the event is done.
    Ack = 4,
    /// An event or a whole job was cancelled.
    Cancel = 5,
    /// The event was given up: retries exhausted or past retention.
    Drop = 6,
    /// One event published with options: a priority, a key, the event a key replaces, or
    /// the restatement of a pending event with a new body (format 2).
    PublishWith = 7,
    /// An event name paused or resumed (format 2).
    Pause = 8,
    /// A recurring schedule defined (with the occurrence it publishes) or removed
    /// (format 2).
    Schedule = 9,
    /// Every dead letter written before it is forgotten (format 2).
    PurgeDead = 10,
    /// The final counts of a job whose every event finished (format 2).
    JobDone = 11,
    /// Not a record: the last frame of a sealed format-2 segment, which proves where the
    /// segment ends (see `seal.rs`). The log checks it and hands it to no one.
    Seal = 16,
}

impl RecordKind {
    /// Every kind of record, in code order (not the seal, which is no record).
    pub const ALL: [RecordKind; 11] = [
        RecordKind::Publish,
        RecordKind::Attempt,
        RecordKind::Retry,
        RecordKind::Ack,
        RecordKind::Cancel,
        RecordKind::Drop,
        RecordKind::PublishWith,
        RecordKind::Pause,
        RecordKind::Schedule,
        RecordKind::PurgeDead,
        RecordKind::JobDone,
    ];

    /// Whether a segment of format `version` may hold this kind: format 1 knows kinds 1 to
    /// 6; format 2 adds the seal and kinds 7 to 11.
    pub fn in_version(self, version: u32) -> bool {
        version >= 2 || (self as u8) <= RecordKind::Drop as u8
    }

    /// The kind for a byte, if it names one.
    pub fn from_u8(b: u8) -> Option<RecordKind> {
        if b == RecordKind::Seal as u8 {
            return Some(RecordKind::Seal);
        }
        RecordKind::ALL.into_iter().find(|k| *k as u8 == b)
    }

    /// The lower-case name used by the CLI and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Publish => "publish",
            RecordKind::Attempt => "attempt",
            RecordKind::Retry => "retry",
            RecordKind::Ack => "ack",
            RecordKind::Cancel => "cancel",
            RecordKind::Drop => "drop",
            RecordKind::PublishWith => "publish-with",
            RecordKind::Pause => "pause",
            RecordKind::Schedule => "schedule",
            RecordKind::PurgeDead => "purge-dead",
            RecordKind::JobDone => "job-done",
            RecordKind::Seal => "seal",
        }
    }
}

/// A record, borrowing its variable-length fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// See [`Publish`].
    Publish(Publish<'a>),
    /// See [`Attempt`].
    Attempt(Attempt),
    /// See [`Retry`].
    Retry(Retry<'a>),
    /// See [`Ack`].
    Ack(Ack),
    /// See [`Cancel`].
    Cancel(Cancel),
    /// See [`Drop`].
    Drop(Drop<'a>),
    /// See [`Pause`].
    Pause(Pause<'a>),
    /// See [`PurgeDead`].
    PurgeDead(PurgeDead),
    /// See [`JobDone`].
    JobDone(JobDone),
}

/// Publish: one or more events, written atomically in one frame.
///
/// ```text
///  0  job           u64  0 = not part of a job
///  8  published_ms  i64
/// 16  count         u32  1 or more entries follow
/// 20  entries, each:
///      0  event_id  u64  non-zero
///      8  due_ms    i64
///     16  name_len  u16  1..=255
///     18  body_len  u32
///     22  name      UTF-8
///         body
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    /// The job the events belong to, if they were pushed as one.
    pub job: Option<JobId>,
    /// When `publish`/`push` was called, Unix epoch ms.
    pub published_ms: i64,
    entries: Entries<'a>,
    /// The options of a one-event publish (kind 7, and kind 9 for the occurrence it
    /// replaces); `None` for kind 1.
    options: Option<EventOptions<'a>>,
    /// The schedule of a kind-9 record.
    schedule: Option<ScheduleDef<'a>>,
}

/// Schedule (kind 9): a recurring schedule defined, with the occurrence it publishes now
/// (one event, due at the occurrence's time), or removed (no event). The record that
/// publishes an occurrence is the schedule's definition too, so the schedule and the
/// occurrence it last published are written together or not at all.
///
/// ```text
///  0  published_ms  i64
///  8  event_id      u64  the occurrence; 0 only when removed
/// 16  due_ms        i64  the occurrence's time (removed: 0)
/// 24  replaces      u64  the pending occurrence this record cancels; 0 = none
/// 32  anchor_ms     i64  every-schedules: occurrences at anchor + k * every_ms, k >= 1
/// 40  every_ms      u64  0 = a cron schedule
/// 48  flags         u8   bits 0-1: catch-up (0 skip, 1 latest, 2 all); bit 2: removed
/// 49  id_len        u8   1..=255
/// 50  name_len      u16  1..=255 (removed: 0)
/// 52  cron_len      u8   1..=255 for cron, 0 for every (removed: 0)
/// 53  body_len      u32
/// 57  id            UTF-8
///     name          UTF-8
///     cron          ASCII
///     body
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleDef<'a> {
    /// The schedule's id (1..=255 bytes).
    pub id: &'a str,
    /// The cron expression (empty for an every-schedule).
    pub cron: &'a str,
    /// The interval of an every-schedule, ms (0 for cron).
    pub every_ms: u64,
    /// When an every-schedule's occurrences are counted from, Unix epoch ms.
    pub anchor_ms: i64,
    /// [`CATCH_UP_SKIP`], [`CATCH_UP_LATEST`] or [`CATCH_UP_ALL`].
    pub catch_up: u8,
    /// The schedule is removed (the record publishes nothing).
    pub removed: bool,
}

/// Catch-up codes of a kind-9 record: missed occurrences are skipped.
pub const CATCH_UP_SKIP: u8 = 0;
/// Only the latest missed occurrence is published.
pub const CATCH_UP_LATEST: u8 = 1;
/// Each missed occurrence is published (up to a cap).
pub const CATCH_UP_ALL: u8 = 2;
/// Fixed bytes of a kind-9 payload before its strings and body.
pub const SCHEDULE_FIXED_LEN: usize = 57;
const SCHEDULE_REMOVED: u8 = 0b100;
const CATCH_UP_MASK: u8 = 0b11;
/// Largest schedule id, and largest cron expression, in bytes.
pub const MAX_SCHEDULE_ID_LEN: usize = 255;

/// Publish with options (kind 7): one event, with what `publish_with` adds.
///
/// ```text
///  0  published_ms  i64
///  8  event_id      u64  non-zero
/// 16  due_ms        i64
/// 24  replaces      u64  the event this record cancels (a key's Replace); 0 = none
/// 32  window_ms     u64  Keep: the key stays taken this long after published_ms; 0 = none
/// 40  priority      i8
/// 41  flags         u8   bits 0-1: key mode (0 none, 1 keep, 2 replace, 3 replace body);
///                        bit 2: restates the pending event `event_id` with a new body;
///                        bit 3: redrives the dead letter `replaces` (mode 0, no key)
/// 42  name_len      u16  1..=255
/// 44  key_len       u8   0 = no key (then mode 0), else 1..=255
/// 45  body_len      u32
/// 49  name          UTF-8
///     key
///     body
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventOptions<'a> {
    /// Higher first among due events; 0 is the default.
    pub priority: i8,
    /// The event's key (empty: none); keys are per event name.
    pub key: &'a [u8],
    /// How the key was used: [`KEY_KEEP`], [`KEY_REPLACE`], [`KEY_REPLACE_BODY`], or
    /// [`KEY_NONE`] with no key.
    pub mode: u8,
    /// Keep only: how long after the publish the key stays taken, ms (0: no window).
    pub window_ms: u64,
    /// The pending event this record cancels (it held the key, mode Replace).
    pub replaces: Option<EventId>,
    /// The record restates the pending event of its id with a new body (mode ReplaceBody):
    /// same name, key, priority, due and publish times.
    pub restates: bool,
    /// The record redrives the dead letter `replaces`: the new event is published and the
    /// dead letter forgotten, in one record (no key; `replaces` is not cancelled).
    pub redrives: bool,
}

/// Key modes as stored in a kind-7 record.
pub const KEY_NONE: u8 = 0;
/// Keep: a publish finding the key taken writes nothing.
pub const KEY_KEEP: u8 = 1;
/// Replace: the holder is cancelled and the new event written, in one record.
pub const KEY_REPLACE: u8 = 2;
/// ReplaceBody: the holder's body is replaced, its due time kept.
pub const KEY_REPLACE_BODY: u8 = 3;
/// Largest key, in bytes.
pub const MAX_KEY_LEN: usize = 255;
/// Fixed bytes of a kind-7 payload before its name, key and body.
pub const PUBLISH_WITH_FIXED_LEN: usize = 49;
const RESTATES: u8 = 0b100;
const REDRIVES: u8 = 0b1000;
const MODE_MASK: u8 = 0b11;

/// Pause (kind 8): an event name is paused or resumed.
///
/// ```text
///  0  at_ms     i64
///  8  paused    u8   1 = paused, 0 = resumed
///  9  name_len  u16  1..=255
/// 11  name      UTF-8
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pause<'a> {
    /// The name.
    pub name: &'a str,
    /// Paused (true) or resumed.
    pub paused: bool,
    /// When, Unix epoch ms.
    pub at_ms: i64,
}
const PAUSE_FIXED_LEN: usize = 11;

/// Purge dead (kind 10): every dead letter whose record lies before this one in the log is
/// forgotten.
///
/// ```text
///  0  at_ms  i64
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PurgeDead {
    /// When, Unix epoch ms.
    pub at_ms: i64,
}
const PURGE_DEAD_LEN: usize = 8;

/// Job done (kind 11): every event of the job finished, with these counts. Written once per
/// job, after the last of its events finished, so that the job's stats stay readable after
/// compaction has removed its events (for the dead-letter retention).
///
/// ```text
///  0  job          u64
///  8  finished_ms  i64  when the counts were written
/// 16  success      u32  events acknowledged
/// 20  failed       u32  events dropped or expired
/// 24  cancelled    u32
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobDone {
    /// The job.
    pub job: JobId,
    /// When, Unix epoch ms.
    pub finished_ms: i64,
    /// Events acknowledged.
    pub success: u32,
    /// Events dropped: retries exhausted, maximum age, or past retention.
    pub failed: u32,
    /// Events cancelled.
    pub cancelled: u32,
}
const JOB_DONE_LEN: usize = 28;

/// Fixed bytes of a publish payload before its entries.
pub const PUBLISH_FIXED_LEN: usize = 20;
/// Fixed bytes of one publish entry before its name and body.
pub const PUBLISH_ENTRY_FIXED_LEN: usize = 22;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entries<'a> {
    Decoded { count: u32, bytes: &'a [u8] },
    Given(&'a [PublishEntry<'a>]),
    /// The one event of a kind-7 record.
    One(PublishEntry<'a>),
}

/// One event inside a publish record, as given to the encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublishEntry<'a> {
    /// The event's id.
    pub id: EventId,
    /// When it is first due, Unix epoch ms.
    pub due_ms: i64,
    /// Its name (1..=255 bytes).
    pub name: &'a str,
    /// Its body.
    pub body: &'a [u8],
}

/// One event read back from a publish record.
pub type EventEntry<'a> = PublishEntry<'a>;

impl<'a> Publish<'a> {
    /// A publish record for `entries` (at least one).
    pub fn new(job: Option<JobId>, published_ms: i64, entries: &'a [PublishEntry<'a>]) -> Self {
        Publish {
            job,
            published_ms,
            entries: Entries::Given(entries),
            options: None,
            schedule: None,
        }
    }

    /// A publish-with-options record (kind 7) for one event.
    pub fn with_options(
        published_ms: i64,
        entry: PublishEntry<'a>,
        options: EventOptions<'a>,
    ) -> Self {
        Publish {
            job: None,
            published_ms,
            entries: Entries::One(entry),
            options: Some(options),
            schedule: None,
        }
    }

    /// A schedule record (kind 9) publishing the occurrence `entry`, cancelling the pending
    /// occurrence `replaces`.
    pub fn scheduled(
        published_ms: i64,
        entry: PublishEntry<'a>,
        replaces: Option<EventId>,
        schedule: ScheduleDef<'a>,
    ) -> Self {
        Publish {
            job: None,
            published_ms,
            entries: Entries::One(entry),
            options: Some(EventOptions {
                replaces,
                ..EventOptions::default()
            }),
            schedule: Some(ScheduleDef {
                removed: false,
                ..schedule
            }),
        }
    }

    /// A schedule record (kind 9) removing schedule `id` and cancelling its pending
    /// occurrence `replaces`; it publishes nothing.
    pub fn unscheduled(published_ms: i64, id: &'a str, replaces: Option<EventId>) -> Self {
        Publish {
            job: None,
            published_ms,
            entries: Entries::Given(&[]),
            options: Some(EventOptions {
                replaces,
                ..EventOptions::default()
            }),
            schedule: Some(ScheduleDef {
                id,
                cron: "",
                every_ms: 0,
                anchor_ms: 0,
                catch_up: CATCH_UP_SKIP,
                removed: true,
            }),
        }
    }

    /// The schedule of a kind-9 record (`None` for other publishes).
    pub fn schedule(&self) -> Option<&ScheduleDef<'a>> {
        self.schedule.as_ref()
    }

    /// The options of a kind-7 record (`None` for a plain publish).
    pub fn options(&self) -> Option<&EventOptions<'a>> {
        self.options.as_ref()
    }

    /// The priority of the record's events (0 unless given).
    pub fn priority(&self) -> i8 {
        self.options.map_or(0, |o| o.priority)
    }

    /// How many events the record holds.
    pub fn count(&self) -> usize {
        match &self.entries {
            Entries::Decoded { count, .. } => *count as usize,
            Entries::Given(e) => e.len(),
            Entries::One(_) => 1,
        }
    }

    /// The events, in the order they were written.
    pub fn events(&self) -> EventIter<'a> {
        match &self.entries {
            Entries::Decoded { count, bytes } => EventIter::Decoded {
                left: *count,
                bytes,
            },
            Entries::Given(e) => EventIter::Given(e.iter()),
            Entries::One(e) => EventIter::One(Some(*e)),
        }
    }

    /// The encoded size of a publish payload holding these entries.
    pub fn encoded_len(entries: &[PublishEntry<'_>]) -> usize {
        PUBLISH_FIXED_LEN
            + entries
                .iter()
                .map(|e| PUBLISH_ENTRY_FIXED_LEN + e.name.len() + e.body.len())
                .sum::<usize>()
    }
}

/// Iterates over the events of a publish record.
#[derive(Clone, Debug)]
pub enum EventIter<'a> {
    #[doc(hidden)]
    Decoded { left: u32, bytes: &'a [u8] },
    #[doc(hidden)]
    Given(std::slice::Iter<'a, PublishEntry<'a>>),
    #[doc(hidden)]
    One(Option<PublishEntry<'a>>),
}

impl<'a> Iterator for EventIter<'a> {
    type Item = EventEntry<'a>;

    fn next(&mut self) -> Option<EventEntry<'a>> {
        match self {
            EventIter::Given(it) => it.next().copied(),
            EventIter::One(e) => e.take(),
            EventIter::Decoded { left, bytes } => {
                if *left == 0 {
                    return None;
                }
                // The decoder validated every entry, so these reads are in bounds.
                let (entry, used) = parse_entry(bytes).ok()?;
                *bytes = &bytes[used..];
                *left -= 1;
                Some(entry)
            }
        }
    }
}

/// Attempt: a delivery attempt started (written before any handler runs).
///
/// ```text
///  0  event_id    u64
///  8  attempt     u32  1-based number of this attempt
/// 12  started_ms  i64
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The event.
    pub event: EventId,
    /// 1-based number of this attempt.
    pub attempt: u32,
    /// When it started, Unix epoch ms.
    pub started_ms: i64,
}
const ATTEMPT_LEN: usize = 20;

/// Retry: an attempt failed; the event is due again at `next_due_ms`.
///
/// ```text
///  0  event_id     u64
///  8  attempt      u32  the attempt that failed
/// 12  failed_ms    i64
/// 20  next_due_ms  i64
/// 28  retry_count  u32  retry context for the next attempt; 0 = none
/// 32  reason       u8   RetryReason code 1..=6, or 0 = the handler returned an error
/// 33  message_len  u16  ≤ 1024
/// 35  data_len     u32
/// 39  message      UTF-8
///     data
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry<'a> {
    /// The event.
    pub event: EventId,
    /// The attempt that failed.
    pub attempt: u32,
    /// When it failed, Unix epoch ms.
    pub failed_ms: i64,
    /// When the next attempt is due, Unix epoch ms.
    pub next_due_ms: i64,
    /// The retry context's count for the next attempt; 0 means no retry context.
    pub retry_count: u32,
    /// Why it failed: a `RetryReason` code, or 0 for a handler error.
    pub reason: u8,
    /// The failure message (at most `MAX_MESSAGE_LEN` bytes).
    pub message: &'a str,
    /// The retry data for the next attempt's context.
    pub data: &'a [u8],
}
const RETRY_FIXED_LEN: usize = 39;

/// Ack: every handler succeeded, or the event had no handler.
///
/// ```text
///  0  event_id  u64
///  8  attempt   u32
/// 12  acked_ms  i64
/// 20  outcome   u8   0 = handled, 1 = ignored (no handler)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// The event.
    pub event: EventId,
    /// The attempt that succeeded.
    pub attempt: u32,
    /// When, Unix epoch ms.
    pub acked_ms: i64,
    /// Handled or ignored.
    pub outcome: AckOutcome,
}
const ACK_LEN: usize = 21;

/// How an event was acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// Every handler returned `Ok`.
    Handled = 0,
    /// No handler was registered for the name when it fell due.
    Ignored = 1,
}

/// Cancel: an event, or every not-yet-started event of a job, is cancelled.
///
/// ```text
///  0  target        u8   1 = event, 2 = job
///  1  id            u64  event id or job id
///  9  cancelled_ms  i64
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cancel {
    /// What is cancelled.
    pub target: CancelTarget,
    /// When, Unix epoch ms.
    pub cancelled_ms: i64,
}
const CANCEL_LEN: usize = 17;

/// The object of a cancel record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelTarget {
    /// One event.
    Event(EventId),
    /// Every event of a job that has not started.
    Job(JobId),
}

/// Drop: the event was given up.
///
/// ```text
///  0  event_id     u64
///  8  attempt      u32  attempts made
/// 12  dropped_ms   i64
/// 20  reason       u8   1 = retries exhausted, 2 = policy max age, 3 = past retention
/// 21  message_len  u16  ≤ 1024
/// 23  message      UTF-8
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drop<'a> {
    /// The event.
    pub event: EventId,
    /// Attempts made.
    pub attempt: u32,
    /// When, Unix epoch ms.
    pub dropped_ms: i64,
    /// Why.
    pub reason: DropReason,
    /// The last failure message, if any.
    pub message: &'a str,
}
const DROP_FIXED_LEN: usize = 23;

/// Why a payload did not decode: the offset inside the payload and the problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError {
    /// The record kind being decoded.
    pub kind: RecordKind,
    /// Byte offset of the problem inside the payload.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} record, payload offset {}: {}",
            self.kind.name(),
            self.offset,
            self.reason
        )
    }
}

fn err(kind: RecordKind, offset: usize, reason: impl Into<String>) -> RecordError {
    RecordError {
        kind,
        offset,
        reason: reason.into(),
    }
}

impl<'a> Record<'a> {
    /// The kind byte this record is framed with.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Publish(p) if p.schedule.is_some() => RecordKind::Schedule,
            Record::Publish(p) if p.options.is_some() => RecordKind::PublishWith,
            Record::Publish(_) => RecordKind::Publish,
            Record::Pause(_) => RecordKind::Pause,
            Record::PurgeDead(_) => RecordKind::PurgeDead,
            Record::JobDone(_) => RecordKind::JobDone,
            Record::Attempt(_) => RecordKind::Attempt,
            Record::Retry(_) => RecordKind::Retry,
            Record::Ack(_) => RecordKind::Ack,
            Record::Cancel(_) => RecordKind::Cancel,
            Record::Drop(_) => RecordKind::Drop,
        }
    }

    /// The event this record concerns, if it concerns exactly one.
    pub fn event(&self) -> Option<EventId> {
        match self {
            Record::Publish(_) | Record::Pause(_) | Record::PurgeDead(_) | Record::JobDone(_) => {
                None
            }
            Record::Attempt(r) => Some(r.event),
            Record::Retry(r) => Some(r.event),
            Record::Ack(r) => Some(r.event),
            Record::Cancel(Cancel {
                target: CancelTarget::Event(e),
                ..
            }) => Some(*e),
            Record::Cancel(_) => None,
            Record::Drop(r) => Some(r.event),
        }
    }

    /// The payload's encoded size.
    pub fn encoded_len(&self) -> usize {
        match self {
            Record::Publish(Publish {
                schedule: Some(d),
                entries,
                ..
            }) => {
                let (name, body) = match entries {
                    Entries::One(e) => (e.name.len(), e.body.len()),
                    _ => (0, 0),
                };
                SCHEDULE_FIXED_LEN + d.id.len() + name + d.cron.len() + body
            }
            Record::Publish(p) => match (&p.entries, &p.options) {
                (Entries::One(e), Some(o)) => {
                    PUBLISH_WITH_FIXED_LEN + e.name.len() + o.key.len() + e.body.len()
                }
                (Entries::One(e), None) => Publish::encoded_len(std::slice::from_ref(e)),
                (Entries::Given(e), _) => Publish::encoded_len(e),
                (Entries::Decoded { bytes, .. }, _) => PUBLISH_FIXED_LEN + bytes.len(),
            },
            Record::Pause(p) => PAUSE_FIXED_LEN + p.name.len(),
            Record::PurgeDead(_) => PURGE_DEAD_LEN,
            Record::JobDone(_) => JOB_DONE_LEN,
            Record::Attempt(_) => ATTEMPT_LEN,
            Record::Retry(r) => RETRY_FIXED_LEN + r.message.len() + r.data.len(),
            Record::Ack(_) => ACK_LEN,
            Record::Cancel(_) => CANCEL_LEN,
            Record::Drop(r) => DROP_FIXED_LEN + r.message.len(),
        }
    }

    /// Checks the limits an encoder relies on. The engine calls this before anything is
    /// queued for writing, so a bad input is an error and nothing is written.
    pub fn validate(&self) -> crate::Result<()> {
        let too_long = |what, found: usize, max: usize| {
            Err(crate::Error::LimitExceeded {
                what,
                found: found as u64,
                max: max as u64,
            })
        };
        match self {
            Record::Publish(p) if p.schedule.is_some() => validate_schedule(p)?,
            Record::Publish(p) => {
                if p.count() == 0 {
                    return Err(crate::Error::invalid(
                        "a publish record needs at least one event",
                    ));
                }
                for e in p.events() {
                    validate_name(e.name)?;
                    if e.id.0 == 0 {
                        return Err(crate::Error::invalid("event id 0 is reserved"));
                    }
                }
                if p.job.is_some_and(|j| j.0 == 0) {
                    return Err(crate::Error::invalid("job id 0 is reserved"));
                }
                if let Some(o) = &p.options {
                    validate_options(o, p)?;
                }
            }
            Record::Pause(p) => validate_name(p.name)?,
            Record::Retry(r) if r.message.len() > MAX_MESSAGE_LEN => {
                return too_long("failure message bytes", r.message.len(), MAX_MESSAGE_LEN);
            }
            Record::Drop(r) if r.message.len() > MAX_MESSAGE_LEN => {
                return too_long("failure message bytes", r.message.len(), MAX_MESSAGE_LEN);
            }
            _ => {}
        }
        let len = self.encoded_len();
        if len > super::MAX_PAYLOAD_LEN {
            return too_long(
                "record bytes (body plus metadata)",
                len,
                super::MAX_PAYLOAD_LEN,
            );
        }
        Ok(())
    }

    /// Appends the payload to `out`. The record must have passed `validate`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        match self {
            Record::Publish(p @ Publish {
                schedule: Some(d), ..
            }) => encode_schedule(p, d, out),
            Record::Publish(Publish {
                published_ms,
                entries: Entries::One(e),
                options: Some(o),
                ..
            }) => {
                out.extend_from_slice(&published_ms.to_le_bytes());
                out.extend_from_slice(&e.id.0.to_le_bytes());
                out.extend_from_slice(&e.due_ms.to_le_bytes());
                out.extend_from_slice(&o.replaces.map_or(0, |r| r.0).to_le_bytes());
                out.extend_from_slice(&o.window_ms.to_le_bytes());
                out.push(o.priority as u8);
                out.push(
                    (o.mode & MODE_MASK)
                        | if o.restates { RESTATES } else { 0 }
                        | if o.redrives { REDRIVES } else { 0 },
                );
                out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
                out.push(o.key.len() as u8);
                out.extend_from_slice(&(e.body.len() as u32).to_le_bytes());
                out.extend_from_slice(e.name.as_bytes());
                out.extend_from_slice(o.key);
                out.extend_from_slice(e.body);
            }
            Record::Pause(p) => {
                out.extend_from_slice(&p.at_ms.to_le_bytes());
                out.push(u8::from(p.paused));
                out.extend_from_slice(&(p.name.len() as u16).to_le_bytes());
                out.extend_from_slice(p.name.as_bytes());
            }
            Record::PurgeDead(p) => out.extend_from_slice(&p.at_ms.to_le_bytes()),
            Record::JobDone(j) => {
                out.extend_from_slice(&j.job.0.to_le_bytes());
                out.extend_from_slice(&j.finished_ms.to_le_bytes());
                out.extend_from_slice(&j.success.to_le_bytes());
                out.extend_from_slice(&j.failed.to_le_bytes());
                out.extend_from_slice(&j.cancelled.to_le_bytes());
            }
            Record::Publish(p) => {
                out.extend_from_slice(&p.job.map_or(0, |j| j.0).to_le_bytes());
                out.extend_from_slice(&p.published_ms.to_le_bytes());
                out.extend_from_slice(&(p.count() as u32).to_le_bytes());
                match &p.entries {
                    Entries::Decoded { bytes, .. } => out.extend_from_slice(bytes),
                    Entries::One(e) => encode_entry(e, out),
                    Entries::Given(entries) => {
                        for e in entries.iter() {
                            encode_entry(e, out);
                        }
                    }
                }
            }
            Record::Attempt(a) => {
                out.extend_from_slice(&a.event.0.to_le_bytes());
                out.extend_from_slice(&a.attempt.to_le_bytes());
                out.extend_from_slice(&a.started_ms.to_le_bytes());
            }
            Record::Retry(r) => {
                out.extend_from_slice(&r.event.0.to_le_bytes());
                out.extend_from_slice(&r.attempt.to_le_bytes());
                out.extend_from_slice(&r.failed_ms.to_le_bytes());
                out.extend_from_slice(&r.next_due_ms.to_le_bytes());
                out.extend_from_slice(&r.retry_count.to_le_bytes());
                out.push(r.reason);
                out.extend_from_slice(&(r.message.len() as u16).to_le_bytes());
                out.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
                out.extend_from_slice(r.message.as_bytes());
                out.extend_from_slice(r.data);
            }
            Record::Ack(a) => {
                out.extend_from_slice(&a.event.0.to_le_bytes());
                out.extend_from_slice(&a.attempt.to_le_bytes());
                out.extend_from_slice(&a.acked_ms.to_le_bytes());
                out.push(a.outcome as u8);
            }
            Record::Cancel(c) => {
                let (tag, id) = match c.target {
                    CancelTarget::Event(e) => (1u8, e.0),
                    CancelTarget::Job(j) => (2u8, j.0),
                };
                out.push(tag);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&c.cancelled_ms.to_le_bytes());
            }
            Record::Drop(d) => {
                out.extend_from_slice(&d.event.0.to_le_bytes());
                out.extend_from_slice(&d.attempt.to_le_bytes());
                out.extend_from_slice(&d.dropped_ms.to_le_bytes());
                out.push(d.reason.code());
                out.extend_from_slice(&(d.message.len() as u16).to_le_bytes());
                out.extend_from_slice(d.message.as_bytes());
            }
        }
        debug_assert_eq!(out.len() - start, self.encoded_len(), "{:?}", self.kind());
    }

    /// Decodes a payload of `kind` found in a segment of format `version`: a kind the version
    /// does not know (kind 7 in a format-1 segment, say) is an error, not a record.
    pub fn decode_in(
        version: u32,
        kind: RecordKind,
        p: &'a [u8],
    ) -> Result<Record<'a>, RecordError> {
        if !kind.in_version(version) {
            return Err(err(
                kind,
                0,
                format!("record kind {} does not exist in format {version}", kind as u8),
            ));
        }
        Record::decode(kind, p)
    }

    /// Decodes a payload of `kind` as the current format writes it. Every length is checked
    /// against the payload before it is used; trailing bytes are an error, so a payload has
    /// exactly one reading.
    pub fn decode(kind: RecordKind, p: &'a [u8]) -> Result<Record<'a>, RecordError> {
        let exact = |len: usize| {
            if p.len() == len {
                Ok(())
            } else {
                Err(err(
                    kind,
                    0,
                    format!("payload is {} bytes, expected {len}", p.len()),
                ))
            }
        };
        let event_id = |at: usize| -> Result<EventId, RecordError> {
            match get_u64(p, at) {
                0 => Err(err(kind, at, "event id 0 is reserved")),
                id => Ok(EventId(id)),
            }
        };
        match kind {
            RecordKind::Seal => Err(err(kind, 0, "a seal frame is not a record")),
            RecordKind::Publish => {
                if p.len() < PUBLISH_FIXED_LEN {
                    return Err(err(
                        kind,
                        0,
                        format!("payload is {} bytes, below 20", p.len()),
                    ));
                }
                let job = match get_u64(p, 0) {
                    0 => None,
                    j => Some(JobId(j)),
                };
                let count = get_u32(p, 16);
                if count == 0 {
                    return Err(err(kind, 16, "event count is 0"));
                }
                let bytes = &p[PUBLISH_FIXED_LEN..];
                let mut rest = bytes;
                for i in 0..count {
                    let offset = p.len() - rest.len();
                    let (_, used) = parse_entry(rest)
                        .map_err(|reason| err(kind, offset, format!("entry {i}: {reason}")))?;
                    rest = &rest[used..];
                }
                if !rest.is_empty() {
                    return Err(err(
                        kind,
                        p.len() - rest.len(),
                        "bytes after the last entry",
                    ));
                }
                Ok(Record::Publish(Publish {
                    job,
                    published_ms: get_i64(p, 8),
                    entries: Entries::Decoded { count, bytes },
                    options: None,
                    schedule: None,
                }))
            }
            RecordKind::PublishWith => decode_publish_with(p),
            RecordKind::Schedule => decode_schedule(p),
            RecordKind::Pause => {
                if p.len() < PAUSE_FIXED_LEN {
                    return Err(err(
                        kind,
                        0,
                        format!("payload is {} bytes, below {PAUSE_FIXED_LEN}", p.len()),
                    ));
                }
                let paused = match p[8] {
                    0 => false,
                    1 => true,
                    b => return Err(err(kind, 8, format!("unknown pause flag {b}"))),
                };
                let name_len = get_u16(p, 9) as usize;
                if name_len == 0 || name_len > MAX_NAME_LEN {
                    return Err(err(kind, 9, format!("name length {name_len} outside 1..=255")));
                }
                exact(PAUSE_FIXED_LEN + name_len)?;
                let name = std::str::from_utf8(&p[PAUSE_FIXED_LEN..])
                    .map_err(|_| err(kind, PAUSE_FIXED_LEN, "name is not UTF-8"))?;
                Ok(Record::Pause(Pause {
                    name,
                    paused,
                    at_ms: get_i64(p, 0),
                }))
            }
            RecordKind::PurgeDead => {
                exact(PURGE_DEAD_LEN)?;
                Ok(Record::PurgeDead(PurgeDead {
                    at_ms: get_i64(p, 0),
                }))
            }
            RecordKind::JobDone => {
                exact(JOB_DONE_LEN)?;
                let job = get_u64(p, 0);
                if job == 0 {
                    return Err(err(kind, 0, "job id 0 is reserved"));
                }
                Ok(Record::JobDone(JobDone {
                    job: JobId(job),
                    finished_ms: get_i64(p, 8),
                    success: get_u32(p, 16),
                    failed: get_u32(p, 20),
                    cancelled: get_u32(p, 24),
                }))
            }
            RecordKind::Attempt => {
                exact(ATTEMPT_LEN)?;
                Ok(Record::Attempt(Attempt {
                    event: event_id(0)?,
                    attempt: get_u32(p, 8),
                    started_ms: get_i64(p, 12),
                }))
            }
            RecordKind::Retry => {
                if p.len() < RETRY_FIXED_LEN {
                    return Err(err(
                        kind,
                        0,
                        format!("payload is {} bytes, below 39", p.len()),
                    ));
                }
                let message_len = get_u16(p, 33) as usize;
                let data_len = get_u32(p, 35) as usize;
                if message_len > MAX_MESSAGE_LEN {
                    return Err(err(
                        kind,
                        33,
                        format!("message length {message_len} over 1024"),
                    ));
                }
                exact(RETRY_FIXED_LEN + message_len + data_len)?;
                let message =
                    std::str::from_utf8(&p[RETRY_FIXED_LEN..RETRY_FIXED_LEN + message_len])
                        .map_err(|_| err(kind, RETRY_FIXED_LEN, "message is not UTF-8"))?;
                let reason = p[32];
                if reason > 6 {
                    return Err(err(kind, 32, format!("unknown reason code {reason}")));
                }
                let retry_count = get_u32(p, 28);
                if retry_count > 0 && reason == 0 {
                    return Err(err(kind, 32, "a retry context needs a reason"));
                }
                Ok(Record::Retry(Retry {
                    event: event_id(0)?,
                    attempt: get_u32(p, 8),
                    failed_ms: get_i64(p, 12),
                    next_due_ms: get_i64(p, 20),
                    retry_count,
                    reason,
                    message,
                    data: &p[RETRY_FIXED_LEN + message_len..],
                }))
            }
            RecordKind::Ack => {
                exact(ACK_LEN)?;
                let outcome = match p[20] {
                    0 => AckOutcome::Handled,
                    1 => AckOutcome::Ignored,
                    b => return Err(err(kind, 20, format!("unknown outcome {b}"))),
                };
                Ok(Record::Ack(Ack {
                    event: event_id(0)?,
                    attempt: get_u32(p, 8),
                    acked_ms: get_i64(p, 12),
                    outcome,
                }))
            }
            RecordKind::Cancel => {
                exact(CANCEL_LEN)?;
                let id = get_u64(p, 1);
                if id == 0 {
                    return Err(err(kind, 1, "id 0 is reserved"));
                }
                let target = match p[0] {
                    1 => CancelTarget::Event(EventId(id)),
                    2 => CancelTarget::Job(JobId(id)),
                    b => return Err(err(kind, 0, format!("unknown cancel target {b}"))),
                };
                Ok(Record::Cancel(Cancel {
                    target,
                    cancelled_ms: get_i64(p, 9),
                }))
            }
            RecordKind::Drop => {
                if p.len() < DROP_FIXED_LEN {
                    return Err(err(
                        kind,
                        0,
                        format!("payload is {} bytes, below 23", p.len()),
                    ));
                }
                let message_len = get_u16(p, 21) as usize;
                if message_len > MAX_MESSAGE_LEN {
                    return Err(err(
                        kind,
                        21,
                        format!("message length {message_len} over 1024"),
                    ));
                }
                exact(DROP_FIXED_LEN + message_len)?;
                let reason = DropReason::from_code(p[20])
                    .ok_or_else(|| err(kind, 20, format!("unknown drop reason {}", p[20])))?;
                let message = std::str::from_utf8(&p[DROP_FIXED_LEN..])
                    .map_err(|_| err(kind, DROP_FIXED_LEN, "message is not UTF-8"))?;
                Ok(Record::Drop(Drop {
                    event: event_id(0)?,
                    attempt: get_u32(p, 8),
                    dropped_ms: get_i64(p, 12),
                    reason,
                    message,
                }))
            }
        }
    }
}

fn encode_entry(e: &PublishEntry<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&e.id.0.to_le_bytes());
    out.extend_from_slice(&e.due_ms.to_le_bytes());
    out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
    out.extend_from_slice(&(e.body.len() as u32).to_le_bytes());
    out.extend_from_slice(e.name.as_bytes());
    out.extend_from_slice(e.body);
}

/// Checks a key: 1..=255 bytes.
pub fn validate_key(key: &[u8]) -> crate::Result<()> {
    if key.is_empty() {
        return Err(crate::Error::invalid("event key is empty; keys are 1 to 255 bytes"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(crate::Error::LimitExceeded {
            what: "event key bytes",
            found: key.len() as u64,
            max: MAX_KEY_LEN as u64,
        });
    }
    Ok(())
}

/// The rules of a kind-7 record's options, as the decoder enforces them.
fn options_problem(o: &EventOptions<'_>, id: EventId) -> Option<&'static str> {
    if o.mode > KEY_REPLACE_BODY {
        Some("unknown key mode")
    } else if (o.mode == KEY_NONE) != o.key.is_empty() {
        Some("a key needs a mode, and a mode a key")
    } else if o.key.len() > MAX_KEY_LEN {
        Some("key over 255 bytes")
    } else if o.window_ms > 0 && o.mode != KEY_KEEP {
        Some("a key window needs mode keep")
    } else if o.replaces.is_some()
        && !o.redrives
        && o.mode != KEY_REPLACE
        && o.mode != KEY_REPLACE_BODY
    {
        Some("only a replace cancels an event")
    } else if o.replaces == Some(id) || o.replaces.is_some_and(|r| r.0 == 0) {
        Some("an event cannot replace itself or event 0")
    } else if o.restates && (o.mode != KEY_REPLACE_BODY || o.replaces.is_some()) {
        Some("only a replace-body without a replaced event restates one")
    } else if o.redrives && (o.mode != KEY_NONE || o.replaces.is_none() || o.restates) {
        Some("a redrive names its dead letter and has no key")
    } else {
        None
    }
}

fn validate_options(o: &EventOptions<'_>, p: &Publish<'_>) -> crate::Result<()> {
    if !o.key.is_empty() {
        validate_key(o.key)?;
    }
    let id = p.events().next().map_or(EventId(0), |e| e.id);
    if p.count() != 1 || p.job.is_some() {
        return Err(crate::Error::invalid(
            "a publish with options holds one event of no job",
        ));
    }
    match options_problem(o, id) {
        Some(problem) => Err(crate::Error::invalid(problem)),
        None => Ok(()),
    }
}

fn decode_publish_with(p: &[u8]) -> Result<Record<'_>, RecordError> {
    let kind = RecordKind::PublishWith;
    if p.len() < PUBLISH_WITH_FIXED_LEN {
        return Err(err(
            kind,
            0,
            format!("payload is {} bytes, below {PUBLISH_WITH_FIXED_LEN}", p.len()),
        ));
    }
    let id = match get_u64(p, 8) {
        0 => return Err(err(kind, 8, "event id 0 is reserved")),
        id => EventId(id),
    };
    let name_len = get_u16(p, 42) as usize;
    let key_len = p[44] as usize;
    let body_len = get_u32(p, 45) as usize;
    if name_len == 0 || name_len > MAX_NAME_LEN {
        return Err(err(kind, 42, format!("name length {name_len} outside 1..=255")));
    }
    let want = PUBLISH_WITH_FIXED_LEN + name_len + key_len + body_len;
    if p.len() != want {
        return Err(err(
            kind,
            0,
            format!("payload is {} bytes, expected {want}", p.len()),
        ));
    }
    let name_end = PUBLISH_WITH_FIXED_LEN + name_len;
    let name = std::str::from_utf8(&p[PUBLISH_WITH_FIXED_LEN..name_end])
        .map_err(|_| err(kind, PUBLISH_WITH_FIXED_LEN, "name is not UTF-8"))?;
    let flags = p[41];
    if flags & !(MODE_MASK | RESTATES | REDRIVES) != 0 {
        return Err(err(kind, 41, format!("unknown flags {flags:#04x}")));
    }
    let options = EventOptions {
        priority: p[40] as i8,
        key: &p[name_end..name_end + key_len],
        mode: flags & MODE_MASK,
        window_ms: get_u64(p, 32),
        replaces: match get_u64(p, 24) {
            0 => None,
            r => Some(EventId(r)),
        },
        restates: flags & RESTATES != 0,
        redrives: flags & REDRIVES != 0,
    };
    if let Some(problem) = options_problem(&options, id) {
        return Err(err(kind, 41, problem));
    }
    let entry = PublishEntry {
        id,
        due_ms: get_i64(p, 16),
        name,
        body: &p[name_end + key_len..],
    };
    Ok(Record::Publish(Publish {
        job: None,
        published_ms: get_i64(p, 0),
        entries: Entries::One(entry),
        options: Some(options),
        schedule: None,
    }))
}

/// What is wrong with a kind-9 record's fields, as the decoder enforces it.
fn schedule_problem(d: &ScheduleDef<'_>, event: Option<EventId>, replaces: Option<EventId>) -> Option<&'static str> {
    if d.id.is_empty() || d.id.len() > MAX_SCHEDULE_ID_LEN {
        Some("schedule id length outside 1..=255")
    } else if d.cron.len() > MAX_SCHEDULE_ID_LEN {
        Some("cron expression over 255 bytes")
    } else if d.catch_up > CATCH_UP_ALL {
        Some("unknown catch-up policy")
    } else if replaces.is_some_and(|r| r.0 == 0 || Some(r) == event) {
        Some("an occurrence cannot replace itself or event 0")
    } else if d.removed {
        (event.is_some() || !d.cron.is_empty() || d.every_ms != 0)
            .then_some("a removal publishes nothing and has no rule")
    } else if event.is_none() {
        Some("a schedule record publishes its occurrence")
    } else if d.cron.is_empty() == (d.every_ms == 0) {
        Some("a schedule has a cron expression or an interval, not both")
    } else {
        None
    }
}

fn validate_schedule(p: &Publish<'_>) -> crate::Result<()> {
    let d = p.schedule.as_ref().expect("a schedule record");
    let event = p.events().next();
    if let Some(e) = event {
        validate_name(e.name)?;
    }
    if p.count() > 1 || p.job.is_some() {
        return Err(crate::Error::invalid(
            "a schedule record publishes at most one event, of no job",
        ));
    }
    let replaces = p.options.and_then(|o| o.replaces);
    match schedule_problem(d, event.map(|e| e.id), replaces) {
        Some(problem) => Err(crate::Error::invalid(problem)),
        None => Ok(()),
    }
}

fn encode_schedule(p: &Publish<'_>, d: &ScheduleDef<'_>, out: &mut Vec<u8>) {
    let event = p.events().next();
    let (id, due_ms, name, body) = event.map_or((0, 0, "", &[][..]), |e| (e.id.0, e.due_ms, e.name, e.body));
    out.extend_from_slice(&p.published_ms.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&due_ms.to_le_bytes());
    let replaces = p.options.and_then(|o| o.replaces);
    out.extend_from_slice(&replaces.map_or(0, |r| r.0).to_le_bytes());
    out.extend_from_slice(&d.anchor_ms.to_le_bytes());
    out.extend_from_slice(&d.every_ms.to_le_bytes());
    out.push((d.catch_up & CATCH_UP_MASK) | if d.removed { SCHEDULE_REMOVED } else { 0 });
    out.push(d.id.len() as u8);
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.push(d.cron.len() as u8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(d.id.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(d.cron.as_bytes());
    out.extend_from_slice(body);
}

fn decode_schedule(p: &[u8]) -> Result<Record<'_>, RecordError> {
    let kind = RecordKind::Schedule;
    if p.len() < SCHEDULE_FIXED_LEN {
        return Err(err(
            kind,
            0,
            format!("payload is {} bytes, below {SCHEDULE_FIXED_LEN}", p.len()),
        ));
    }
    let flags = p[48];
    if flags & !(CATCH_UP_MASK | SCHEDULE_REMOVED) != 0 {
        return Err(err(kind, 48, format!("unknown flags {flags:#04x}")));
    }
    let (id_len, name_len, cron_len) = (p[49] as usize, get_u16(p, 50) as usize, p[52] as usize);
    let body_len = get_u32(p, 53) as usize;
    let want = SCHEDULE_FIXED_LEN + id_len + name_len + cron_len + body_len;
    if p.len() != want {
        return Err(err(
            kind,
            0,
            format!("payload is {} bytes, expected {want}", p.len()),
        ));
    }
    let text = |at: usize, len: usize, what: &'static str| {
        std::str::from_utf8(&p[at..at + len]).map_err(|_| err(kind, at, what))
    };
    let id = text(SCHEDULE_FIXED_LEN, id_len, "schedule id is not UTF-8")?;
    let name_at = SCHEDULE_FIXED_LEN + id_len;
    let name = text(name_at, name_len, "name is not UTF-8")?;
    let cron = text(name_at + name_len, cron_len, "cron expression is not UTF-8")?;
    let body = &p[name_at + name_len + cron_len..];
    let event = match get_u64(p, 8) {
        0 => None,
        e => Some(EventId(e)),
    };
    let replaces = match get_u64(p, 24) {
        0 => None,
        r => Some(EventId(r)),
    };
    let def = ScheduleDef {
        id,
        cron,
        every_ms: get_u64(p, 40),
        anchor_ms: get_i64(p, 32),
        catch_up: flags & CATCH_UP_MASK,
        removed: flags & SCHEDULE_REMOVED != 0,
    };
    if let Some(problem) = schedule_problem(&def, event, replaces) {
        return Err(err(kind, 48, problem));
    }
    if event.is_some() && (name_len == 0 || name_len > MAX_NAME_LEN) {
        return Err(err(kind, 50, format!("name length {name_len} outside 1..=255")));
    }
    if event.is_none() && (name_len != 0 || body_len != 0 || get_i64(p, 16) != 0) {
        return Err(err(kind, 50, "a removal has no name, body or due time"));
    }
    let published_ms = get_i64(p, 0);
    let options = Some(EventOptions {
        replaces,
        ..EventOptions::default()
    });
    Ok(Record::Publish(Publish {
        job: None,
        published_ms,
        entries: match event {
            Some(id) => Entries::One(PublishEntry {
                id,
                due_ms: get_i64(p, 16),
                name,
                body,
            }),
            None => Entries::Given(&[]),
        },
        options,
        schedule: Some(def),
    }))
}

/// Checks an event name: 1..=255 bytes (a `&str` is UTF-8 already).
pub fn validate_name(name: &str) -> crate::Result<()> {
    if name.is_empty() {
        return Err(crate::Error::invalid(
            "event name is empty; names are 1 to 255 bytes of UTF-8",
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(crate::Error::LimitExceeded {
            what: "event name bytes",
            found: name.len() as u64,
            max: MAX_NAME_LEN as u64,
        });
    }
    Ok(())
}

/// Cuts `message` to at most `MAX_MESSAGE_LEN` bytes at a character boundary.
pub fn clip_message(message: &str) -> &str {
    if message.len() <= MAX_MESSAGE_LEN {
        return message;
    }
    let mut end = MAX_MESSAGE_LEN;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Parses one publish entry at the start of `b`, returning it and the bytes it used.
fn parse_entry(b: &[u8]) -> Result<(EventEntry<'_>, usize), String> {
    if b.len() < PUBLISH_ENTRY_FIXED_LEN {
        return Err(format!(
            "{} bytes left, an entry needs at least 22",
            b.len()
        ));
    }
    let id = get_u64(b, 0);
    if id == 0 {
        return Err("event id 0 is reserved".into());
    }
    let name_len = get_u16(b, 16) as usize;
    let body_len = get_u32(b, 18) as usize;
    if name_len == 0 || name_len > MAX_NAME_LEN {
        return Err(format!("name length {name_len} outside 1..=255"));
    }
    let used = PUBLISH_ENTRY_FIXED_LEN + name_len + body_len;
    if b.len() < used {
        return Err(format!("entry needs {used} bytes, {} left", b.len()));
    }
    let name = std::str::from_utf8(&b[PUBLISH_ENTRY_FIXED_LEN..PUBLISH_ENTRY_FIXED_LEN + name_len])
        .map_err(|_| "name is not UTF-8".to_string())?;
    let entry = PublishEntry {
        id: EventId(id),
        due_ms: get_i64(b, 8),
        name,
        body: &b[PUBLISH_ENTRY_FIXED_LEN + name_len..used],
    };
    Ok((entry, used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(r: &Record<'_>) {
        r.validate().unwrap();
        let mut buf = Vec::new();
        r.encode(&mut buf);
        assert_eq!(buf.len(), r.encoded_len());
        let back = Record::decode(r.kind(), &buf).unwrap();
        // Compare by re-encoding: a decoded publish borrows its entries differently.
        let mut again = Vec::new();
        back.encode(&mut again);
        assert_eq!(buf, again);
        if let (Record::Publish(a), Record::Publish(b)) = (r, &back) {
            assert_eq!(
                a.events().collect::<Vec<_>>(),
                b.events().collect::<Vec<_>>()
            );
            assert_eq!((a.job, a.published_ms), (b.job, b.published_ms));
            assert_eq!(a.options(), b.options());
            assert_eq!(a.schedule(), b.schedule());
        } else {
            assert_eq!(r, &back);
        }
    }

    prop_compose! {
        fn entry_parts()(id in 1u64.., due_ms in any::<i64>(), name in "[a-z.]{1,40}",
                         body in proptest::collection::vec(any::<u8>(), 0..300))
                        -> (u64, i64, String, Vec<u8>) {
            (id, due_ms, name, body)
        }
    }

    proptest! {
        #[test]
        fn publish_round_trips(job in proptest::option::of(1u64..), published_ms in any::<i64>(),
                               parts in proptest::collection::vec(entry_parts(), 1..8)) {
            let entries: Vec<PublishEntry<'_>> = parts.iter().map(|(id, due_ms, name, body)| {
                PublishEntry { id: EventId(*id), due_ms: *due_ms, name, body }
            }).collect();
            round_trip(&Record::Publish(Publish::new(job.map(JobId), published_ms, &entries)));
        }

        #[test]
        fn attempt_round_trips(event in 1u64.., attempt in any::<u32>(), started_ms in any::<i64>()) {
            round_trip(&Record::Attempt(Attempt { event: EventId(event), attempt, started_ms }));
        }

        #[test]
        fn retry_round_trips(event in 1u64.., attempt in any::<u32>(), failed_ms in any::<i64>(),
                             next_due_ms in any::<i64>(), retry_count in any::<u32>(), reason in 1u8..=6,
                             message in ".{0,100}", data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let message = clip_message(&message);
            round_trip(&Record::Retry(Retry { event: EventId(event), attempt, failed_ms, next_due_ms,
                                              retry_count, reason, message, data: &data }));
        }

        #[test]
        fn ack_round_trips(event in 1u64.., attempt in any::<u32>(), acked_ms in any::<i64>(), ignored in any::<bool>()) {
            let outcome = if ignored { AckOutcome::Ignored } else { AckOutcome::Handled };
            round_trip(&Record::Ack(Ack { event: EventId(event), attempt, acked_ms, outcome }));
        }

        #[test]
        fn cancel_round_trips(id in 1u64.., job in any::<bool>(), cancelled_ms in any::<i64>()) {
            let target = if job { CancelTarget::Job(JobId(id)) } else { CancelTarget::Event(EventId(id)) };
            round_trip(&Record::Cancel(Cancel { target, cancelled_ms }));
        }

        #[test]
        fn drop_round_trips(event in 1u64.., attempt in any::<u32>(), dropped_ms in any::<i64>(),
                            reason in 1u8..=3, message in ".{0,100}") {
            let reason = DropReason::from_code(reason).unwrap();
            round_trip(&Record::Drop(Drop { event: EventId(event), attempt, dropped_ms, reason, message: clip_message(&message) }));
        }

        #[test]
        fn publish_with_round_trips(parts in entry_parts(), published_ms in any::<i64>(),
                                    priority in any::<i8>(), key in proptest::collection::vec(any::<u8>(), 1..255),
                                    mode in 0u8..=3, window_ms in any::<u64>(), replaces in 0u64..4,
                                    restates in any::<bool>()) {
            let (id, due_ms, name, body) = parts;
            let key = if mode == KEY_NONE { &[][..] } else { &key[..] };
            let options = EventOptions {
                priority,
                key,
                mode,
                window_ms: if mode == KEY_KEEP { window_ms } else { 0 },
                replaces: (mode >= KEY_REPLACE && replaces > 0 && replaces != id && !restates)
                    .then_some(EventId(replaces)),
                restates: restates && mode == KEY_REPLACE_BODY,
                redrives: false,
            };
            let entry = PublishEntry { id: EventId(id), due_ms, name: &name, body: &body };
            round_trip(&Record::Publish(Publish::with_options(published_ms, entry, options)));
        }

        #[test]
        fn redrive_round_trips(parts in entry_parts(), published_ms in any::<i64>(),
                               priority in any::<i8>(), dead in 1u64..) {
            let (id, due_ms, name, body) = parts;
            prop_assume!(dead != id);
            let options = EventOptions {
                priority,
                replaces: Some(EventId(dead)),
                redrives: true,
                ..EventOptions::default()
            };
            let entry = PublishEntry { id: EventId(id), due_ms, name: &name, body: &body };
            round_trip(&Record::Publish(Publish::with_options(published_ms, entry, options)));
        }

        #[test]
        fn schedule_round_trips(parts in entry_parts(), published_ms in any::<i64>(),
                                schedule in "[a-z-]{1,40}", replaces in 0u64..4,
                                every_ms in 0u64..100_000, anchor_ms in any::<i64>(),
                                catch_up in 0u8..=2) {
            let (id, due_ms, name, body) = parts;
            prop_assume!(replaces != id);
            let cron = if every_ms == 0 { "*/5 * * * *" } else { "" };
            let def = ScheduleDef { id: &schedule, cron, every_ms, anchor_ms, catch_up, removed: false };
            let entry = PublishEntry { id: EventId(id), due_ms, name: &name, body: &body };
            let replaces = (replaces > 0).then_some(EventId(replaces));
            round_trip(&Record::Publish(Publish::scheduled(published_ms, entry, replaces, def)));
        }

        #[test]
        fn unschedule_round_trips(schedule in "[a-z-]{1,40}", replaces in 0u64..4, at_ms in any::<i64>()) {
            let replaces = (replaces > 0).then_some(EventId(replaces));
            let record = Record::Publish(Publish::unscheduled(at_ms, &schedule, replaces));
            prop_assert_eq!(record.kind(), RecordKind::Schedule);
            round_trip(&record);
        }

        #[test]
        fn purge_dead_round_trips(at_ms in any::<i64>()) {
            round_trip(&Record::PurgeDead(PurgeDead { at_ms }));
        }

        #[test]
        fn job_done_round_trips(
            job in 1u64..,
            finished_ms in any::<i64>(),
            (success, failed, cancelled) in (any::<u32>(), any::<u32>(), any::<u32>()),
        ) {
            round_trip(&Record::JobDone(JobDone { job: JobId(job), finished_ms, success, failed, cancelled }));
        }

        #[test]
        fn pause_round_trips(name in "[a-z.]{1,40}", paused in any::<bool>(), at_ms in any::<i64>()) {
            round_trip(&Record::Pause(Pause { name: &name, paused, at_ms }));
        }

        #[test]
        fn decode_never_panics(kind in 1u8..=11, bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let kind = RecordKind::from_u8(kind).unwrap();
            if let Ok(r) = Record::decode(kind, &bytes) {
                let mut again = Vec::new();
                r.encode(&mut again);
                prop_assert_eq!(again, bytes);
            }
        }
    }

    #[test]
    fn format_1_segments_know_only_kinds_1_to_6() {
        let mut payload = Vec::new();
        Record::Pause(Pause {
            name: "n",
            paused: true,
            at_ms: 0,
        })
        .encode(&mut payload);
        assert!(Record::decode_in(2, RecordKind::Pause, &payload).is_ok());
        let refused = Record::decode_in(1, RecordKind::Pause, &payload).unwrap_err();
        assert!(refused.reason.contains("format 1"), "{refused}");
        assert!(RecordKind::ALL[..6].iter().all(|k| k.in_version(1)));
        assert!(!RecordKind::PublishWith.in_version(1));
    }

    #[test]
    fn limits_are_enforced_before_encoding() {
        let body = vec![0u8; super::super::MAX_PAYLOAD_LEN];
        let entries = [PublishEntry {
            id: EventId(1),
            due_ms: 0,
            name: "n",
            body: &body,
        }];
        let r = Record::Publish(Publish::new(None, 0, &entries));
        assert!(matches!(
            r.validate(),
            Err(crate::Error::LimitExceeded { .. })
        ));
        let long = "x".repeat(256);
        let entries = [PublishEntry {
            id: EventId(1),
            due_ms: 0,
            name: &long,
            body: b"",
        }];
        assert!(
            Record::Publish(Publish::new(None, 0, &entries))
                .validate()
                .is_err()
        );
        let entries = [PublishEntry {
            id: EventId(1),
            due_ms: 0,
            name: "",
            body: b"",
        }];
        assert!(
            Record::Publish(Publish::new(None, 0, &entries))
                .validate()
                .is_err()
        );
        assert_eq!(clip_message(&"é".repeat(1000)).len(), 1024);
    }
}
