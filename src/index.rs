//! The event index: one compact entry per event and the state machine that the log's records
//! drive. Pure: no files, threads or clock; the owner (the scheduler) passes each durable
//! record in log order to [`Index::apply`] together with where it lies on disk, and carries out
//! the returned [`Effect`]s on its timing wheel.
//!
//! # States and transitions
//!
//! `n` is the record's attempt number and `a` the event's attempt count. "Finished" means
//! Succeeded, Failed, Cancelled or Expired. Every other combination is [`Rejected`] and changes
//! nothing.
//!
//! | record                 | from                         | to / result                               |
//! |------------------------|------------------------------|-------------------------------------------|
//! | Publish (new id)       | —                            | Scheduled at `due_ms` (Cancelled if its job is cancelled) |
//! | Publish (known id)     | any                          | Duplicate                                 |
//! | Publish with options replacing `h` (new id) | —       | Scheduled; `h` Cancelled if it is pending, in the same step |
//! | Publish restating `id` | Scheduled, Running           | unchanged, but its body is the new record's (`body_at`) |
//! | Publish restating `id` | finished                     | Duplicate                                 |
//! | Pause / resume `name`  | —                            | the name paused or not; Duplicate if it already was |
//! | Attempt `n > a`        | Scheduled, Running           | Running, `a = n` (Rejected if its job is cancelled) |
//! | Attempt `n ≤ a`        | any                          | Duplicate                                 |
//! | Retry `n == a`         | Running                      | Scheduled at `next_due_ms` with the retry context; Failed (not retried) if its job is cancelled |
//! | Retry `n > a`          | Scheduled                    | Scheduled at `next_due_ms`, `a = n`: attempt `n`'s own record was compacted away |
//! | Retry `n < a`          | Running                      | Duplicate (a stale outcome)               |
//! | Retry `n ≤ a`          | Scheduled, finished          | Duplicate (a replay)                      |
//! | Ack                    | Scheduled, Running           | Succeeded, `a = max(a, n)`                |
//! | Ack                    | Succeeded, Cancelled         | Duplicate                                 |
//! | Drop                   | Scheduled, Running           | Failed (exhausted, max age) or Expired (retention), `a = max(a, n)` |
//! | Drop                   | Failed, Expired, Cancelled   | Duplicate                                 |
//! | Retry, Ack, Drop       | Cancelled                    | Duplicate: a running attempt may finish after a cancel |
//! | Cancel event           | Scheduled, Running           | Cancelled                                 |
//! | Cancel event           | finished                     | Duplicate: the cancel lost a race with the outcome |
//! | Cancel job             | any                          | job marked cancelled; its Scheduled events → Cancelled; Duplicate if it was cancelled already |
//!
//! After a crash, events left Running (an attempt started, no outcome written) must be
//! delivered again: the owner calls [`Index::finish_replay`] once after replaying the log, which
//! turns each of them into Scheduled due now, keeping its attempt count so counts never go back.
//!
//! # Effects and timers
//!
//! Each entry has an opaque `timer` slot for the owner's wheel handle ([`NO_TIMER`] = none).
//! Whenever an event changes state while its timer is set, the index clears the slot and emits
//! [`Effect::Unschedule`] with the old handle; whenever an event becomes Scheduled it emits
//! [`Effect::Schedule`]. The owner records the handle of the wheel entry it adds with
//! [`Index::set_timer`], and clears it when it takes a due entry out of the wheel. During
//! replay the owner may ignore the effects and rebuild its wheel in bulk from
//! [`Index::scheduled`] afterwards.
//!
//! # Keys
//!
//! An event published with a key (per name) *holds* it from its publish until it is no
//! longer pending; a key published with a window (mode Keep) stays *taken* until the window
//! passes, even once its event finished.
//!
//! The key table keeps no key bytes: the keys are in the log. It is an open-addressing
//! table (linear probing, at most three quarters full) of 4-byte slots, each the low 32 bits
//! of a keyed event's id, placed by a 24-bit *fragment* of a hash of the name and key; the
//! fragment is also kept in the event's entry (beside its priority, in the job word: a keyed
//! event has no job), so the table can be rebuilt without reading a key. A lookup walks the
//! chain from the fragment's home, keeps the held keyed events of the name with the same
//! fragment, and asks the caller to *verify* each against the key in its publish record
//! (one read of a mapped page, and only on a fragment match): the answer is exact. An event
//! that no longer holds its key leaves a stale slot, ignored by lookups and dropped when the
//! table is rebuilt: when it is three quarters full, and by [`Index::sweep_keys`] (compaction
//! calls it each pass), so finishing an event costs nothing here. Beside each slot is a tag
//! byte, the fragment's low 8 bits, so a probe reads an event's entry only when the tags
//! match. A keyed event costs its 5 bytes over a table at most three quarters and usually
//! half full: about 10 bytes.
//!
//! # Memory
//!
//! Ids are dense (the engine allocates them sequentially), so entries live in chunks of
//! [`CHUNK_LEN`] slots indexed by id, not in a hash map. An entry is 36 bytes: due time, timer,
//! publish location, attempt count, job slot and an interned name sharing a word with the state.
//! Retry contexts live in a side map only for events that have one. [`Index::release`] forgets a
//! finished event; a chunk is freed once every slot in it is released (or, after replay, was
//! never published because compaction removed it).
//!
//! # Forgotten events
//!
//! A released event, or one whose publish the log no longer holds after compaction, cannot be
//! told apart from a replay of its own records, so every record about an id at or below
//! [`Index::max_event_id`] that the index does not hold is a [`Applied::Duplicate`]. A publish
//! is a duplicate when its slot is released or its chunk was freed (freed chunks are kept as a
//! set of ranges); otherwise it is inserted, so a publish that reaches the log after a publish
//! with a higher id is never lost. A record about an id above `max_event_id` is
//! [`RejectKind::Unknown`]. Jobs follow the same rule with [`Index::max_job_id`].

use std::collections::{BTreeMap, HashMap};
use std::mem::size_of;

use serde::Serialize;

use crate::format::{CancelTarget, DropReason, Record};
use crate::ids::{EventId, JobId};

/// Slots per chunk of entries.
pub const CHUNK_LEN: usize = 4096;
/// The timer slot's value when the owner holds no wheel entry for the event.
pub const NO_TIMER: u64 = u64::MAX;
/// Most distinct event names held at once (the name index shares a word with the state).
pub const NAMES_MAX: u32 = (1 << 24) - 1;
/// Most jobs held at once.
pub const JOBS_MAX: u32 = u32::MAX - 1;

const NO_JOB: u32 = u32::MAX;
const CHUNK_LEN_U64: u64 = CHUNK_LEN as u64;

/// Where an event's publish record lies: segment id and frame offset in that segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Location {
    /// The segment's id.
    pub segment: u32,
    /// Byte offset of the record's frame in the segment.
    pub offset: u32,
}

/// The state of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[repr(u8)]
pub enum EventState {
    /// Waiting for its due time (first delivery or a retry).
    Scheduled = 1,
    /// An attempt started and has no outcome yet.
    Running = 2,
    /// Acknowledged.
    Succeeded = 3,
    /// Dropped: retries exhausted or the policy's maximum age passed.
    Failed = 4,
    /// Cancelled, alone or with its job.
    Cancelled = 5,
    /// Dropped: not acknowledged within the retention.
    Expired = 6,
}

impl EventState {
    /// Every state, in code order.
    pub const ALL: [EventState; 6] = [
        EventState::Scheduled,
        EventState::Running,
        EventState::Succeeded,
        EventState::Failed,
        EventState::Cancelled,
        EventState::Expired,
    ];

    /// Scheduled or Running: the event will still be delivered.
    pub fn is_pending(self) -> bool {
        matches!(self, EventState::Scheduled | EventState::Running)
    }

    /// The lower-case name used by the CLI and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            EventState::Scheduled => "scheduled",
            EventState::Running => "running",
            EventState::Succeeded => "succeeded",
            EventState::Failed => "failed",
            EventState::Cancelled => "cancelled",
            EventState::Expired => "expired",
        }
    }

    fn from_code(code: u32) -> Option<EventState> {
        EventState::ALL.into_iter().find(|s| *s as u32 == code)
    }
}

/// A record's result when it was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The index changed.
    Changed,
    /// Nothing changed: the record was applied before, or can only be a replay.
    Duplicate,
}

/// Why a record was refused. The index is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The event concerned, if the record names one.
    pub event: Option<EventId>,
    /// The job concerned, for a job's cancel or publish.
    pub job: Option<JobId>,
    /// The class of problem.
    pub kind: RejectKind,
    /// What is wrong, with the values involved.
    pub reason: String,
}

/// The class of a [`Rejected`] record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectKind {
    /// The id is above every id the index has seen published.
    Unknown,
    /// The record is not allowed in the event's (or job's) current state.
    Transition,
    /// A limit of the index was reached, or the record names id 0.
    Limit,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.event, self.job) {
            (Some(e), _) => write!(f, "{e}: {}", self.reason),
            (None, Some(j)) => write!(f, "{j}: {}", self.reason),
            (None, None) => f.write_str(&self.reason),
        }
    }
}

/// Work for the owner's timing wheel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Add a wheel entry for `event` at `due_ms`, then record its handle with `set_timer`.
    Schedule {
        /// The event.
        event: EventId,
        /// When it is due, Unix epoch ms.
        due_ms: i64,
    },
    /// Remove the wheel entry `timer` of `event`; the index has already cleared its slot.
    Unschedule {
        /// The event.
        event: EventId,
        /// The handle the owner stored with `set_timer`.
        timer: u64,
    },
}

/// The retry context for an event's next attempt, as the log stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRetryContext {
    /// The attempt whose retry record carried this context: compaction keeps that record.
    pub attempt: u32,
    /// How many retries were requested so far (at least 1).
    pub retry_count: u32,
    /// The `RetryReason` code (1..=6).
    pub reason: u8,
    /// The data the handler passed along.
    pub data: Box<[u8]>,
}

/// What the index knows about one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventInfo<'a> {
    /// The event.
    pub id: EventId,
    /// Its state.
    pub state: EventState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Its name.
    pub name: &'a str,
    /// Its job, if it was pushed as part of one.
    pub job: Option<JobId>,
    /// Where its publish record lies.
    pub location: Location,
    /// Where its body lies: its publish, or the latest record that restated it with a new
    /// body (with the same name, times and options).
    pub body_at: Location,
    /// The owner's wheel handle, or [`NO_TIMER`].
    pub timer: u64,
    /// When it is next due while Scheduled; otherwise when it was last due. Unix epoch ms.
    pub due_ms: i64,
    /// The retry context for its next attempt.
    pub retry: Option<&'a StoredRetryContext>,
    /// Its priority (higher first among due events; 0 unless published with one).
    pub priority: i8,
    /// Whether it was published with a key.
    pub keyed: bool,
}

/// Progress of a job (the events of one `push`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
pub struct JobStats {
    /// Events acknowledged.
    pub success: u64,
    /// Events scheduled or running.
    pub in_progress: u64,
    /// Events dropped: retries exhausted, maximum age, or past retention.
    pub failed: u64,
    /// Events cancelled before their attempt began: scheduled ones, and ones handed to a
    /// worker whose handlers had not started (what [`cancel_job`](crate::Engine::cancel_job)
    /// and [`cancel`](crate::Engine::cancel) count), plus events of the job cancelled one by
    /// one while running. An attempt already running when its job is cancelled finishes: it
    /// counts as a success or, failed, as failed (its job being cancelled, it is not retried).
    /// After a crash, an event whose attempt the crash interrupted in a cancelled job counts
    /// here too.
    pub cancelled: u64,
}

// Slot codes: the state codes of `EventState`, plus these two.
const VACANT: u32 = 0;
const RELEASED: u32 = 7;
const STATE_MASK: u32 = 0x07;
/// The (finished) event is a dead letter (`dead.rs`).
const DEAD: u32 = 0x08;
const HAS_RETRY: u32 = 0x10;
/// The entry has no job; its job field holds its priority (as a `u8`) instead.
const HAS_PRIORITY: u32 = 0x20;
/// The entry was published with a key (in the key table while it holds it).
const HAS_KEY: u32 = 0x40;
const NAME_SHIFT: u32 = 8;

/// One slot. Every field is a `u32` (or a pair of them) so the entry packs to 36 bytes with
/// no padding: memory per pending event is what bounds how many events fit in RAM.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Next due time while Scheduled, else the last one; i64 as little-end word first.
    due_ms: [u32; 2],
    /// The owner's wheel handle, low word first.
    timer: [u32; 2],
    segment: u32,
    offset: u32,
    attempts: u32,
    /// Index into the job table, or `NO_JOB`; with `HAS_PRIORITY`, the priority instead (an
    /// event with options has no job); with `HAS_KEY`, the key's fragment above the priority.
    job: u32,
    /// Bits 0..3: slot code; bit 3: a dead letter; bit 4: has a retry context; bit 5: `job` holds the priority;
    /// bit 6: published with a key; bits 8..32: name index.
    tag: u32,
}

const _: () = assert!(size_of::<Entry>() <= 36);

impl Entry {
    const VACANT: Entry = Entry {
        due_ms: [0; 2],
        timer: [u32::MAX; 2],
        segment: 0,
        offset: 0,
        attempts: 0,
        job: NO_JOB,
        tag: VACANT,
    };

    fn code(&self) -> u32 {
        self.tag & STATE_MASK
    }
    fn state(&self) -> Option<EventState> {
        EventState::from_code(self.code())
    }
    fn set_state(&mut self, s: EventState) {
        self.tag = (self.tag & !STATE_MASK) | s as u32;
    }
    fn name(&self) -> u32 {
        self.tag >> NAME_SHIFT
    }
    fn has_retry(&self) -> bool {
        self.tag & HAS_RETRY != 0
    }
    fn set_has_retry(&mut self, yes: bool) {
        if yes {
            self.tag |= HAS_RETRY;
        } else {
            self.tag &= !HAS_RETRY;
        }
    }
    fn due_ms(&self) -> i64 {
        (u64::from(self.due_ms[0]) | (u64::from(self.due_ms[1]) << 32)) as i64
    }
    fn set_due_ms(&mut self, due_ms: i64) {
        let v = due_ms as u64;
        self.due_ms = [v as u32, (v >> 32) as u32];
    }
    fn timer(&self) -> u64 {
        u64::from(self.timer[0]) | (u64::from(self.timer[1]) << 32)
    }
    fn set_timer(&mut self, t: u64) {
        self.timer = [t as u32, (t >> 32) as u32];
    }
    fn location(&self) -> Location {
        Location {
            segment: self.segment,
            offset: self.offset,
        }
    }
    fn job(&self) -> Option<u32> {
        (self.job != NO_JOB && self.tag & (HAS_PRIORITY | HAS_KEY) == 0).then_some(self.job)
    }
    fn priority(&self) -> i8 {
        if self.tag & (HAS_PRIORITY | HAS_KEY) != 0 {
            self.job as u8 as i8
        } else {
            0
        }
    }
    /// A keyed event's key fragment.
    fn fragment(&self) -> u32 {
        self.job >> 8
    }
    fn has_key(&self) -> bool {
        self.tag & HAS_KEY != 0
    }
}

struct Chunk {
    entries: Box<[Entry]>,
    /// Slots published and not released.
    live: u32,
    /// Slots ever published (released ones included).
    filled: u32,
}

struct Job {
    id: JobId,
    /// Smallest and largest event id of the job: its events are allocated consecutively.
    first: u64,
    last: u64,
    /// Events of the job by state code (1..=6), released ones included.
    by_state: [u32; 7],
    size: u32,
    released: u32,
    cancelled: bool,
    /// Its job-done record is applied (`jobs.rs`).
    summarized: bool,
}

impl Job {
    fn stats(&self) -> JobStats {
        let n = |s: EventState| u64::from(self.by_state[s as usize]);
        JobStats {
            success: n(EventState::Succeeded),
            in_progress: n(EventState::Scheduled) + n(EventState::Running),
            failed: n(EventState::Failed) + n(EventState::Expired),
            cancelled: n(EventState::Cancelled),
        }
    }
}

struct Name {
    text: Box<str>,
    /// Entries published and not released that carry this name.
    refs: u32,
}

/// The event index. See the module documentation for the state machine.
#[derive(Default)]
pub struct Index {
    chunks: BTreeMap<u64, Chunk>,
    /// Chunks freed after every slot was released: start → end (exclusive), coalesced.
    freed: BTreeMap<u64, u64>,
    retries: HashMap<EventId, StoredRetryContext>,
    jobs: Vec<Option<Job>>,
    free_jobs: Vec<u32>,
    job_slots: HashMap<JobId, u32>,
    names: Vec<Option<Name>>,
    free_names: Vec<u32>,
    name_slots: HashMap<Box<str>, u32>,
    /// Keyed events, by a fragment of the hash of name and key (see "Keys" above).
    keys: KeyTable,
    /// Hashes names and keys into fragments (seeded per process).
    key_hasher: std::collections::hash_map::RandomState,
    /// Every key's fragment is 0 (tests of the verification).
    collide_keys: bool,
    /// Until when (Unix epoch ms) keys published with a window stay taken, by event.
    windows: HashMap<EventId, i64>,
    /// Where the body of an event restated with a new body (mode ReplaceBody) lies: the
    /// latest restating record.
    bodies: HashMap<EventId, Location>,
    /// Paused event names.
    paused: std::collections::BTreeSet<Box<str>>,
    /// Dead letters, in log order of the records that killed them.
    dead: dead::DeadList,
    /// Recurring schedules and their pending occurrences.
    schedules: schedules::Schedules,
    /// Finished jobs' final counts.
    summaries: jobs::JobSummaries,
    /// Held events by state code (1..=6).
    counts: [u64; 7],
    max_event: u64,
    max_job: u64,
    /// Ids at or below this were settled by `finish_replay`: a slot never published by then
    /// was removed by compaction and will never be.
    settled: u64,
}

/// How an event holds a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyHold {
    Pending,
    Window,
    Stale,
}

/// Bits of a key's hash fragment.
const FRAGMENT_BITS: u32 = 24;
const FRAGMENT_MASK: u32 = (1 << FRAGMENT_BITS) - 1;
/// An empty slot of the key table.
const NO_KEY: u32 = 0;

/// The key table's slots (see "Keys" above).
#[derive(Default)]
struct KeyTable {
    /// The low 32 bits of keyed events' ids, `NO_KEY` for empty; a power of two long, or 0.
    slots: Vec<u32>,
    /// Beside each slot, the low 8 bits of its event's fragment: a probe looks at an event's
    /// entry only when they match.
    tags: Vec<u8>,
    /// Keyed events whose low 32 bits are 0 (one id in 2^32), which a slot cannot hold.
    wide: Vec<EventId>,
    /// Slots not empty.
    used: usize,
}

impl KeyTable {
    /// The slot a fragment's chain starts at.
    fn home(&self, fragment: u32) -> usize {
        ((u64::from(fragment) * self.slots.len() as u64) >> FRAGMENT_BITS) as usize
    }

    /// The values of the chain of `fragment` (from its home to the first empty slot) whose
    /// tag is the fragment's.
    fn chain(&self, fragment: u32) -> impl Iterator<Item = u32> + '_ {
        let n = self.slots.len();
        let home = if n == 0 { 0 } else { self.home(fragment) };
        let tag = fragment as u8;
        (0..n)
            .map(move |i| (home + i) & (n - 1))
            .take_while(|&s| self.slots[s] != NO_KEY)
            .filter(move |&s| self.tags[s] == tag)
            .map(|s| self.slots[s])
    }

    /// The distinct values of the slots, sorted.
    fn lows(&self) -> Vec<u32> {
        let mut lows: Vec<u32> = self.slots.iter().copied().filter(|&v| v != NO_KEY).collect();
        lows.sort_unstable();
        lows.dedup();
        lows
    }

    /// Puts `low` with `fragment` into the first empty slot of its chain.
    fn place(&mut self, low: u32, fragment: u32) {
        let mask = self.slots.len() - 1;
        let mut s = self.home(fragment);
        while self.slots[s] != NO_KEY {
            s = (s + 1) & mask;
        }
        self.slots[s] = low;
        self.tags[s] = fragment as u8;
        self.used += 1;
    }
}

fn split(id: EventId) -> (u64, usize) {
    let i = id.0 - 1;
    (i / CHUNK_LEN_U64, (i % CHUNK_LEN_U64) as usize)
}

fn reject(event: Option<EventId>, kind: RejectKind, reason: impl Into<String>) -> Rejected {
    Rejected {
        event,
        job: None,
        kind,
        reason: reason.into(),
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index::default()
    }

    /// Applies one durable record found at `loc` (the publish record's location is kept for
    /// its events; other records' locations are not needed). Effects for the owner's wheel are
    /// appended to `effects`. A rejected record changes nothing and adds no effects.
    pub fn apply(
        &mut self,
        loc: Location,
        record: &Record<'_>,
        effects: &mut Vec<Effect>,
    ) -> Result<Applied, Rejected> {
        match record {
            Record::Publish(p) => match (p.schedule(), p.options()) {
                (Some(def), _) => self.apply_schedule(loc, p, def, effects),
                (None, Some(o)) => self.apply_publish_with(loc, p, *o, effects),
                (None, None) => self.apply_publish(loc, p, effects),
            },
            Record::Pause(p) => Ok(self.apply_pause(p.name, p.paused)),
            Record::JobDone(j) => Ok(self.apply_job_done(j)),
            Record::PurgeDead(_) => Ok(match self.purge_dead_before(loc) {
                0 => Applied::Duplicate,
                _ => Applied::Changed,
            }),
            Record::Attempt(a) => self.apply_attempt(a.event, a.attempt, effects),
            Record::Retry(r) => self.apply_retry(r, effects),
            Record::Ack(a) => {
                let applied = self.apply_outcome(a.event, a.attempt, None, effects);
                if let (Ok(Applied::Changed), crate::format::AckOutcome::Ignored) =
                    (&applied, a.outcome)
                {
                    self.add_dead(a.event, loc, a.acked_ms);
                }
                applied
            }
            Record::Drop(d) => {
                let applied = self.apply_outcome(d.event, d.attempt, Some(d.reason), effects);
                if let Ok(Applied::Changed) = applied {
                    self.add_dead(d.event, loc, d.dropped_ms);
                }
                applied
            }
            Record::Cancel(c) => match c.target {
                CancelTarget::Event(e) => self.apply_cancel_event(e, effects),
                CancelTarget::Job(j) => self.apply_cancel_job(j, effects),
            },
        }
    }

    fn apply_publish(
        &mut self,
        loc: Location,
        p: &crate::format::Publish<'_>,
        effects: &mut Vec<Effect>,
    ) -> Result<Applied, Rejected> {
        let job_id = p.job;
        let rej = |event: Option<EventId>, kind, reason: String| Rejected {
            event,
            job: job_id,
            kind,
            reason,
        };
        if job_id.is_some_and(|j| j.0 == 0) {
            return Err(rej(None, RejectKind::Limit, "job id 0 is reserved".into()));
        }
        // Check everything first so a refused record changes nothing.
        let mut new_names = 0u32;
        let mut any_new = false;
        for e in p.events() {
            if e.id.0 == 0 {
                return Err(rej(
                    None,
                    RejectKind::Limit,
                    "event id 0 is reserved".into(),
                ));
            }
            if self.publish_is_new(e.id) {
                any_new = true;
                if !self.name_slots.contains_key(e.name) {
                    new_names += 1;
                }
            }
        }
        if !any_new {
            if let Some(j) = job_id {
                self.max_job = self.max_job.max(j.0);
            }
            return Ok(Applied::Duplicate);
        }
        let live_names = self.names.len() as u64 - self.free_names.len() as u64;
        if live_names + u64::from(new_names) > u64::from(NAMES_MAX) {
            return Err(rej(
                p.events().next().map(|e| e.id),
                RejectKind::Limit,
                format!("more than {NAMES_MAX} distinct event names held at once"),
            ));
        }
        let job_slot = match job_id {
            None => None,
            Some(j) => match self.job_slots.get(&j) {
                Some(&slot) => Some(slot),
                None => {
                    let held = self.jobs.len() as u64 - self.free_jobs.len() as u64;
                    if held >= u64::from(JOBS_MAX) {
                        return Err(rej(
                            None,
                            RejectKind::Limit,
                            format!("more than {JOBS_MAX} jobs held at once"),
                        ));
                    }
                    Some(self.new_job(j))
                }
            },
        };
        if let Some(j) = job_id {
            self.max_job = self.max_job.max(j.0);
        }
        for e in p.events() {
            if !self.publish_is_new(e.id) {
                continue;
            }
            // Repeated ids inside one record: the second is a duplicate of the first.
            let name = self.intern(e.name);
            let cancelled = job_slot.is_some_and(|s| self.job_ref(s).cancelled);
            let state = if cancelled {
                EventState::Cancelled
            } else {
                EventState::Scheduled
            };
            let (chunk_no, slot) = split(e.id);
            let chunk = self.chunks.entry(chunk_no).or_insert_with(|| Chunk {
                entries: vec![Entry::VACANT; CHUNK_LEN].into_boxed_slice(),
                live: 0,
                filled: 0,
            });
            chunk.live += 1;
            chunk.filled += 1;
            let entry = &mut chunk.entries[slot];
            *entry = Entry {
                segment: loc.segment,
                offset: loc.offset,
                job: job_slot.unwrap_or(NO_JOB),
                tag: (name << NAME_SHIFT) | state as u32,
                ..Entry::VACANT
            };
            entry.set_due_ms(e.due_ms);
            self.counts[state as usize] += 1;
            if let Some(s) = job_slot {
                let job = self.job_mut(s);
                job.first = job.first.min(e.id.0);
                job.last = job.last.max(e.id.0);
                job.size += 1;
                job.by_state[state as usize] += 1;
            }
            self.max_event = self.max_event.max(e.id.0);
            if state == EventState::Scheduled {
                effects.push(Effect::Schedule {
                    event: e.id,
                    due_ms: e.due_ms,
                });
            }
        }
        Ok(Applied::Changed)
    }

    /// A publish with options (one event): a restatement of a pending event (its body moves
    /// here), or a new event — with its priority and key, after cancelling the event it
    /// replaces.
    fn apply_publish_with(
        &mut self,
        loc: Location,
        p: &crate::format::Publish<'_>,
        o: crate::format::EventOptions<'_>,
        effects: &mut Vec<Effect>,
    ) -> Result<Applied, Rejected> {
        let Some(e) = p.events().next() else {
            return Ok(Applied::Duplicate);
        };
        if o.restates {
            // A pending event's publish is never compacted away, so a restatement of an event
            // not held (finished, forgotten) is a replay of one that no longer matters.
            if !self.state(e.id).is_some_and(EventState::is_pending) {
                return Ok(Applied::Duplicate);
            }
            self.bodies.insert(e.id, loc);
            return Ok(Applied::Changed);
        }
        if !self.publish_is_new(e.id) {
            return Ok(Applied::Duplicate);
        }
        if let Some(replaced) = o.replaces
            && !o.redrives
            && self.state(replaced).is_some_and(EventState::is_pending)
        {
            self.transition(replaced, EventState::Cancelled, 0, effects);
        }
        let applied = self.apply_publish(loc, p, effects)?;
        if let Some(dead) = o.replaces.filter(|_| o.redrives) {
            self.forget_dead(dead);
        }
        let fragment = if o.key.is_empty() {
            0
        } else {
            let name = self.entry_mut(e.id).name();
            self.key_fragment(name, o.key)
        };
        let entry = self.entry_mut(e.id);
        if o.priority != 0 {
            entry.job = u32::from(o.priority as u8);
            entry.tag |= HAS_PRIORITY;
        }
        if !o.key.is_empty() {
            entry.job = (fragment << 8) | u32::from(o.priority as u8);
            entry.tag |= HAS_KEY;
            self.insert_key(e.id, fragment);
            if o.window_ms > 0 {
                let until = p
                    .published_ms
                    .saturating_add(o.window_ms.min(i64::MAX as u64) as i64);
                self.windows.insert(e.id, until);
            }
        }
        Ok(applied)
    }

    fn apply_pause(&mut self, name: &str, paused: bool) -> Applied {
        let changed = if paused {
            self.paused.insert(name.into())
        } else {
            self.paused.remove(name)
        };
        if changed {
            Applied::Changed
        } else {
            Applied::Duplicate
        }
    }

    /// The fragment of `key` of the name at index `name`.
    fn key_fragment(&self, name: u32, key: &[u8]) -> u32 {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = self.key_hasher.build_hasher();
        name.hash(&mut h);
        key.hash(&mut h);
        if self.collide_keys {
            return 0;
        }
        (h.finish() >> (64 - FRAGMENT_BITS)) as u32 & FRAGMENT_MASK
    }

    /// Makes every key's fragment 0, so that every lookup must tell keys apart by verifying
    /// them: for tests of the verification.
    #[doc(hidden)]
    pub fn collide_all_keys(&mut self) {
        self.collide_keys = true;
    }

    /// The held keyed events whose id's low 32 bits are `low`.
    fn keyed_with_low_bits(&self, low: u32) -> impl Iterator<Item = (EventId, &Entry)> + '_ {
        (0..=self.max_event >> 32)
            .map(move |high| EventId((high << 32) | u64::from(low)))
            .filter_map(|id| Some((id, self.held(id).ok()?)))
            .filter(|(_, e)| e.has_key())
    }

    /// Whether a keyed event still needs its slot: it is pending, or has a window.
    fn keeps_key(&self, id: EventId, e: &Entry) -> bool {
        e.state().is_some_and(EventState::is_pending) || self.windows.contains_key(&id)
    }

    /// Adds keyed event `id` with `fragment` to the table, rebuilding it without its stale
    /// slots first when it is three quarters full.
    fn insert_key(&mut self, id: EventId, fragment: u32) {
        if 4 * (self.keys.used + 1) > 3 * self.keys.slots.len() {
            let table = std::mem::take(&mut self.keys);
            self.keys = self.rebuilt_keys(&table, 1);
        }
        let low = id.0 as u32;
        if low == NO_KEY {
            self.keys.wide.push(id);
        } else {
            self.keys.place(low, fragment);
        }
    }

    /// `table` without stale slots, with room for `more` keyed events: at most half full.
    fn rebuilt_keys(&self, table: &KeyTable, more: usize) -> KeyTable {
        let kept: Vec<(u32, u32)> = table
            .lows()
            .iter()
            .flat_map(|&low| self.keyed_with_low_bits(low))
            .filter(|(id, e)| self.keeps_key(*id, e))
            .map(|(id, e)| (id.0 as u32, e.fragment()))
            .collect();
        let len = (2 * (kept.len() + more)).next_power_of_two().max(16);
        let mut new = KeyTable {
            slots: vec![NO_KEY; len],
            tags: vec![0; len],
            wide: table
                .wide
                .iter()
                .copied()
                .filter(|&id| self.held(id).is_ok_and(|e| self.keeps_key(id, e)))
                .collect(),
            used: 0,
        };
        for (low, fragment) in kept {
            new.place(low, fragment);
        }
        new
    }

    /// The held keyed events of the name at index `slot` whose fragment is that of `key`,
    /// with where their publish lies (an event may come twice).
    fn key_candidates(
        &self,
        slot: u32,
        key: &[u8],
    ) -> impl Iterator<Item = (EventId, Location)> + '_ {
        let fragment = self.key_fragment(slot, key);
        let wide = self.keys.wide.iter().map(|id| id.0 as u32);
        self.keys
            .chain(fragment)
            .chain(wide)
            .flat_map(move |low| {
                self.keyed_with_low_bits(low).filter(move |(id, e)| {
                    e.name() == slot
                        && e.fragment() == fragment
                        && (low != NO_KEY || self.keys.wide.contains(id))
                })
            })
            .map(|(id, e)| (id, e.location()))
    }

    /// The pending event holding `key` of `name`, if any. `verify(id, location)` says
    /// whether the publish record at `location` (of event `id`) has the key; it is asked
    /// only about events whose key's fragment matches.
    pub fn key_holder<E>(
        &self,
        name: &str,
        key: &[u8],
        verify: impl FnMut(EventId, Location) -> Result<bool, E>,
    ) -> Result<Option<EventId>, E> {
        self.find_key(name, key, None, verify)
    }

    /// The event that holds `key` of `name` at `now_ms`: a pending one, or else one
    /// published with a window that has not passed. `verify` as for
    /// [`key_holder`](Index::key_holder).
    pub fn key_taken<E>(
        &self,
        name: &str,
        key: &[u8],
        now_ms: i64,
        verify: impl FnMut(EventId, Location) -> Result<bool, E>,
    ) -> Result<Option<EventId>, E> {
        self.find_key(name, key, Some(now_ms), verify)
    }

    fn find_key<E>(
        &self,
        name: &str,
        key: &[u8],
        now_ms: Option<i64>,
        mut verify: impl FnMut(EventId, Location) -> Result<bool, E>,
    ) -> Result<Option<EventId>, E> {
        let Some(&slot) = self.name_slots.get(name) else {
            return Ok(None);
        };
        let mut window = None;
        for (id, loc) in self.key_candidates(slot, key) {
            let hold = self.key_hold(slot, id, now_ms);
            if hold == KeyHold::Stale || !verify(id, loc)? {
                continue;
            }
            if hold == KeyHold::Pending {
                return Ok(Some(id));
            }
            window = window.max(Some(id));
        }
        Ok(window)
    }

    /// How event `id` holds a key of the name at index `slot` (`now_ms`: count windows).
    fn key_hold(&self, slot: u32, id: EventId, now_ms: Option<i64>) -> KeyHold {
        let Ok(e) = self.held(id) else {
            return KeyHold::Stale;
        };
        if e.name() != slot || !e.has_key() {
            return KeyHold::Stale;
        }
        if e.state().is_some_and(EventState::is_pending) {
            return KeyHold::Pending;
        }
        match (now_ms, self.windows.get(&id)) {
            (Some(now), Some(&until)) if now < until => KeyHold::Window,
            _ => KeyHold::Stale,
        }
    }

    /// Whether a finished event's key window is still open at `now_ms`: compaction keeps its
    /// publish (and so its outcome) until it passes, so a restart keeps the key taken.
    pub fn window_open(&self, id: EventId, now_ms: i64) -> bool {
        self.windows.get(&id).is_some_and(|&until| now_ms < until)
    }

    /// Keyed events that take their key at `now_ms`: name, the event, and whether the event
    /// is still pending (else only its window holds the key). In id order.
    pub fn keys_taken(&self, now_ms: i64) -> Vec<(&str, EventId, bool)> {
        let mut taken: Vec<(&str, EventId, bool)> = self
            .keys
            .lows()
            .into_iter()
            .flat_map(|low| self.keyed_with_low_bits(low))
            .chain(self.keys.wide.iter().filter_map(|&id| Some((id, self.held(id).ok()?))))
            .filter_map(|(id, e)| match self.key_hold(e.name(), id, Some(now_ms)) {
                KeyHold::Stale => None,
                hold => Some((self.name_text(e.name()), id, hold == KeyHold::Pending)),
            })
            .collect();
        taken.sort_unstable_by_key(|t| t.1);
        taken.dedup_by_key(|t| t.1);
        taken
    }

    /// Forgets passed windows and rebuilds the key table without stale slots (events that
    /// no longer hold their key). Linear in the keys; returns how many slots it freed.
    pub fn sweep_keys(&mut self, now_ms: i64) -> usize {
        self.windows.retain(|_, until| now_ms < *until);
        let before = self.keys.used + self.keys.wide.len();
        let table = std::mem::take(&mut self.keys);
        self.keys = self.rebuilt_keys(&table, 0);
        before.saturating_sub(self.keys.used + self.keys.wide.len())
    }

    /// Paused event names, sorted.
    pub fn paused(&self) -> impl Iterator<Item = &str> {
        self.paused.iter().map(|n| &**n)
    }

    /// Whether `name` is paused.
    pub fn is_paused(&self, name: &str) -> bool {
        self.paused.contains(name)
    }

    /// Whether a publish of `id` would insert it: its slot was never published, released, or
    /// freed with its chunk.
    fn publish_is_new(&self, id: EventId) -> bool {
        let (chunk_no, slot) = split(id);
        match self.chunks.get(&chunk_no) {
            Some(c) => c.entries[slot].code() == VACANT,
            None => !self.is_freed(chunk_no),
        }
    }

    fn is_freed(&self, chunk_no: u64) -> bool {
        self.freed
            .range(..=chunk_no)
            .next_back()
            .is_some_and(|(_, &end)| chunk_no < end)
    }

    /// The held entry of `id`, or what a record about it means when there is none.
    fn held(&self, id: EventId) -> Result<&Entry, Result<Applied, Rejected>> {
        if id.0 == 0 {
            return Err(Err(reject(
                Some(id),
                RejectKind::Limit,
                "event id 0 is reserved",
            )));
        }
        let (chunk_no, slot) = split(id);
        if let Some(e) = self.chunks.get(&chunk_no).map(|c| &c.entries[slot])
            && e.state().is_some()
        {
            return Ok(e);
        }
        if id.0 <= self.max_event {
            Err(Ok(Applied::Duplicate))
        } else {
            Err(Err(reject(
                Some(id),
                RejectKind::Unknown,
                format!("unknown event (largest published id is {})", self.max_event),
            )))
        }
    }

    /// The entry of a held event, to change.
    fn held_mut(&mut self, id: EventId) -> Result<&mut Entry, ()> {
        self.held(id).map_err(|_| ())?;
        Ok(self.entry_mut(id))
    }

    fn entry_mut(&mut self, id: EventId) -> &mut Entry {
        let (chunk_no, slot) = split(id);
        let chunk = self.chunks.get_mut(&chunk_no);
        debug_assert!(chunk.is_some(), "{id} is not held");
        &mut chunk.expect("caller checked the event is held").entries[slot]
    }

    fn job_ref(&self, slot: u32) -> &Job {
        self.jobs[slot as usize]
            .as_ref()
            .expect("an entry's job slot is held while the entry is")
    }

    fn job_mut(&mut self, slot: u32) -> &mut Job {
        self.jobs[slot as usize]
            .as_mut()
            .expect("an entry's job slot is held while the entry is")
    }

    /// Moves a held event to `to`, keeping counters, timers and effects in step.
    fn transition(&mut self, id: EventId, to: EventState, due_ms: i64, effects: &mut Vec<Effect>) {
        let entry = self.entry_mut(id);
        let from = entry.state().expect("transition of a held event");
        let timer = entry.timer();
        entry.set_state(to);
        entry.set_timer(NO_TIMER);
        if to == EventState::Scheduled {
            entry.set_due_ms(due_ms);
        }
        let job = entry.job();
        if timer != NO_TIMER {
            effects.push(Effect::Unschedule { event: id, timer });
        }
        if to == EventState::Scheduled {
            effects.push(Effect::Schedule { event: id, due_ms });
        }
        if from.is_pending() && !to.is_pending() {
            self.occurrence_finished(id);
        }
        self.counts[from as usize] -= 1;
        self.counts[to as usize] += 1;
        if let Some(slot) = job {
            let job = self.job_mut(slot);
            job.by_state[from as usize] -= 1;
            job.by_state[to as usize] += 1;
            if from.is_pending() && !to.is_pending() {
                self.job_event_finished(slot);
            }
        }
    }

    fn job_cancelled_for(&self, e: &Entry) -> bool {
        e.job().is_some_and(|s| self.job_ref(s).cancelled)
    }

    fn apply_attempt(
        &mut self,
        id: EventId,
        n: u32,
        effects: &mut Vec<Effect>,
    ) -> Result<Applied, Rejected> {
        let e = match self.held(id) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let state = e.state().expect("held");
        let attempts = e.attempts;
        if n <= attempts {
            return Ok(Applied::Duplicate);
        }
        if !state.is_pending() {
            return Err(reject(
                Some(id),
                RejectKind::Transition,
                format!(
                    "attempt {n} on a {} event ({attempts} attempts made)",
                    state.name()
                ),
            ));
        }
        if self.job_cancelled_for(e) {
            return Err(reject(
                Some(id),
                RejectKind::Transition,
                format!("attempt {n} on a {} event of a cancelled job", state.name()),
            ));
        }
        if state == EventState::Scheduled {
            self.transition(id, EventState::Running, 0, effects);
        }
        self.entry_mut(id).attempts = n;
        Ok(Applied::Changed)
    }

    fn apply_retry(
        &mut self,
        r: &crate::format::Retry<'_>,
        effects: &mut Vec<Effect>,
    ) -> Result<Applied, Rejected> {
        let id = r.event;
        let e = match self.held(id) {
            Ok(e) => e,
            Err(res) => return res,
        };
        let state = e.state().expect("held");
        let attempts = e.attempts;
        let n = r.attempt;
        if state == EventState::Cancelled {
            return Ok(Applied::Duplicate);
        }
        // A retry of an attempt later than any started, on a Scheduled event: compaction
        // keeps only the latest retry (and attempt) of a pending event, so the retry's own
        // attempt record may be gone. The retry says that attempt ran and failed.
        let compacted_history = state == EventState::Scheduled && n > attempts;
        if n > attempts && !compacted_history {
            return Err(reject(
                Some(id),
                RejectKind::Transition,
                format!(
                    "retry of attempt {n} on a {} event with {attempts} attempts started",
                    state.name()
                ),
            ));
        }
        if !compacted_history && (state != EventState::Running || n < attempts) {
            return Ok(Applied::Duplicate);
        }
        let job_cancelled = self.job_cancelled_for(e);
        self.entry_mut(id).attempts = n;
        // The attempt started before its job was cancelled, so the cancel did not stop it: it
        // failed, and is not retried. Cancelled counts only events a cancel stopped before
        // their attempt began, as `cancel_job` returns.
        if job_cancelled {
            self.transition(id, EventState::Failed, 0, effects);
            return Ok(Applied::Changed);
        }
        if r.retry_count > 0 {
            self.retries.insert(
                id,
                StoredRetryContext {
                    attempt: n,
                    retry_count: r.retry_count,
                    reason: r.reason,
                    data: r.data.into(),
                },
            );
        } else {
            self.retries.remove(&id);
        }
        self.entry_mut(id).set_has_retry(r.retry_count > 0);
        self.transition(id, EventState::Scheduled, r.next_due_ms, effects);
        Ok(Applied::Changed)
    }

    /// Ack (`drop == None`) or Drop.
    fn apply_outcome(
        &mut self,
        id: EventId,
        n: u32,
        drop: Option<DropReason>,
        effects: &mut Vec<Effect>,
    ) -> Result<Applied, Rejected> {
        let e = match self.held(id) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let state = e.state().expect("held");
        let to = match drop {
            None => EventState::Succeeded,
            Some(DropReason::Exhausted | DropReason::MaxAge) => EventState::Failed,
            Some(DropReason::Expired) => EventState::Expired,
        };
        let same_outcome = match state {
            EventState::Scheduled | EventState::Running => {
                self.transition(id, to, 0, effects);
                let entry = self.entry_mut(id);
                entry.attempts = entry.attempts.max(n);
                return Ok(Applied::Changed);
            }
            EventState::Cancelled => true,
            EventState::Succeeded => to == EventState::Succeeded,
            EventState::Failed | EventState::Expired => to != EventState::Succeeded,
        };
        if same_outcome {
            Ok(Applied::Duplicate)
        } else {
            let what = if drop.is_some() { "drop" } else { "ack" };
            Err(reject(
                Some(id),
                RejectKind::Transition,
                format!("{what} of attempt {n} on a {} event", state.name()),
            ))
        }
    }

    fn apply_cancel_event(
        &mut self,
        id: EventId,
        effects: &mut Vec<Effect>,
    ) -> Result<Applied, Rejected> {
        let e = match self.held(id) {
            Ok(e) => e,
            Err(r) => return r,
        };
        if e.state().is_some_and(EventState::is_pending) {
            self.transition(id, EventState::Cancelled, 0, effects);
            Ok(Applied::Changed)
        } else {
            Ok(Applied::Duplicate)
        }
    }

    fn apply_cancel_job(
        &mut self,
        job: JobId,
        effects: &mut Vec<Effect>,
    ) -> Result<Applied, Rejected> {
        let Some(&slot) = self.job_slots.get(&job) else {
            return if job.0 != 0 && job.0 <= self.max_job {
                Ok(Applied::Duplicate)
            } else {
                Err(Rejected {
                    event: None,
                    job: Some(job),
                    kind: RejectKind::Unknown,
                    reason: format!("unknown job (largest published job id is {})", self.max_job),
                })
            };
        };
        let j = self.job_ref(slot);
        if j.cancelled && j.by_state[EventState::Scheduled as usize] == 0 {
            return Ok(Applied::Duplicate);
        }
        let (first, last) = (j.first, j.last);
        self.job_mut(slot).cancelled = true;
        let scheduled: Vec<EventId> = self
            .slots_between(first, last)
            .filter(|(_, e)| e.job() == Some(slot) && e.state() == Some(EventState::Scheduled))
            .map(|(id, _)| id)
            .collect();
        for id in scheduled {
            self.transition(id, EventState::Cancelled, 0, effects);
        }
        Ok(Applied::Changed)
    }

    /// Call once after replaying the log, before delivering anything. Every event left
    /// Running (its attempt started, no outcome written) becomes Scheduled due at `now_ms`,
    /// keeping its attempt count, or Cancelled if its job was cancelled. Ids up to
    /// [`Index::max_event_id`] are settled: slots never published by now were removed by
    /// compaction, so chunks holding only those and released slots are freed. Returns how many
    /// events were rescheduled.
    pub fn finish_replay(&mut self, now_ms: i64, effects: &mut Vec<Effect>) -> u64 {
        let running: Vec<EventId> = self.ids_in(EventState::Running).collect();
        let mut rescheduled = 0;
        for id in running {
            let cancelled = self.held(id).is_ok_and(|e| self.job_cancelled_for(e));
            if cancelled {
                self.transition(id, EventState::Cancelled, 0, effects);
            } else {
                self.transition(id, EventState::Scheduled, now_ms, effects);
                rescheduled += 1;
            }
        }
        self.settled = self.max_event;
        let chunk_nos: Vec<u64> = self.chunks.keys().copied().collect();
        for chunk_no in chunk_nos {
            self.free_chunk_if_done(chunk_no);
        }
        rescheduled
    }

    fn ids_in(&self, state: EventState) -> impl Iterator<Item = EventId> + '_ {
        self.chunks.iter().flat_map(move |(&chunk_no, c)| {
            c.entries
                .iter()
                .enumerate()
                .filter(move |(_, e)| e.code() == state as u32)
                .map(move |(i, _)| EventId(chunk_no * CHUNK_LEN_U64 + i as u64 + 1))
        })
    }

    fn free_chunk_if_done(&mut self, chunk_no: u64) {
        let Some(c) = self.chunks.get(&chunk_no) else {
            return;
        };
        // The last chunk of the id space ends at u64::MAX, one short of a whole chunk.
        let last_id = (chunk_no + 1).saturating_mul(CHUNK_LEN_U64);
        let done = c.live == 0 && (c.filled as usize == CHUNK_LEN || last_id <= self.settled);
        if !done {
            return;
        }
        self.chunks.remove(&chunk_no);
        // Insert [chunk_no, chunk_no + 1) into the range set, joining neighbours.
        let mut start = chunk_no;
        let mut end = chunk_no + 1;
        if let Some((&s, &e)) = self.freed.range(..=chunk_no).next_back()
            && e >= chunk_no
        {
            start = s;
            end = end.max(e);
            self.freed.remove(&s);
        }
        if let Some(e) = self.freed.remove(&end) {
            end = e;
        }
        self.freed.insert(start, end);
    }

    fn new_job(&mut self, id: JobId) -> u32 {
        let job = Job {
            id,
            first: u64::MAX,
            last: 0,
            by_state: [0; 7],
            size: 0,
            released: 0,
            cancelled: false,
            summarized: false,
        };
        let slot = match self.free_jobs.pop() {
            Some(s) => {
                self.jobs[s as usize] = Some(job);
                s
            }
            None => {
                self.jobs.push(Some(job));
                (self.jobs.len() - 1) as u32
            }
        };
        self.job_slots.insert(id, slot);
        slot
    }

    fn intern(&mut self, text: &str) -> u32 {
        if let Some(&i) = self.name_slots.get(text) {
            if let Some(n) = self.names[i as usize].as_mut() {
                n.refs += 1;
            }
            return i;
        }
        let name = Name {
            text: text.into(),
            refs: 1,
        };
        let i = match self.free_names.pop() {
            Some(i) => {
                self.names[i as usize] = Some(name);
                i
            }
            None => {
                self.names.push(Some(name));
                (self.names.len() - 1) as u32
            }
        };
        debug_assert!(i <= NAMES_MAX, "name index {i} over {NAMES_MAX}");
        self.name_slots.insert(text.into(), i);
        i
    }

    /// Forgets a finished event (Succeeded, Failed, Cancelled or Expired), typically once
    /// compaction has removed it from disk. Returns false, changing nothing, if the event is
    /// not held or not finished. Later records about it are duplicates (see the module
    /// documentation); its job's counters keep counting it until every event of the job is
    /// released, and then the job is forgotten too.
    pub fn release(&mut self, id: EventId) -> bool {
        let Ok(e) = self.held(id) else {
            return false;
        };
        let state = e.state().expect("held");
        if state.is_pending() {
            return false;
        }
        let (name, job, has_retry) = (e.name(), e.job(), e.has_retry());
        if e.tag & DEAD != 0 {
            self.forget_dead(id);
        }
        let entry = self.entry_mut(id);
        *entry = Entry {
            tag: RELEASED,
            ..Entry::VACANT
        };
        self.counts[state as usize] -= 1;
        if has_retry {
            self.retries.remove(&id);
        }
        self.windows.remove(&id);
        self.bodies.remove(&id);
        if let Some(n) = self.names[name as usize].as_mut() {
            n.refs -= 1;
            if n.refs == 0 {
                let text = self.names[name as usize].take().map(|n| n.text);
                if let Some(t) = text {
                    self.name_slots.remove(&t);
                }
                self.free_names.push(name);
            }
        }
        if let Some(slot) = job {
            let j = self.job_mut(slot);
            j.released += 1;
            if j.released == j.size {
                let jid = j.id;
                self.jobs[slot as usize] = None;
                self.job_slots.remove(&jid);
                self.free_jobs.push(slot);
            }
        }
        let (chunk_no, _) = split(id);
        if let Some(c) = self.chunks.get_mut(&chunk_no) {
            c.live -= 1;
        }
        self.free_chunk_if_done(chunk_no);
        true
    }

    /// Everything the index holds about `id`, or `None` if it is unknown or released.
    pub fn get(&self, id: EventId) -> Option<EventInfo<'_>> {
        let e = self.held(id).ok()?;
        Some(EventInfo {
            id,
            state: e.state()?,
            attempts: e.attempts,
            name: self.name_text(e.name()),
            job: e.job().map(|s| self.job_ref(s).id),
            location: e.location(),
            body_at: self.bodies.get(&id).copied().unwrap_or(e.location()),
            timer: e.timer(),
            due_ms: e.due_ms(),
            retry: if e.has_retry() {
                self.retries.get(&id)
            } else {
                None
            },
            priority: e.priority(),
            keyed: e.has_key(),
        })
    }

    fn name_text(&self, i: u32) -> &str {
        self.names
            .get(i as usize)
            .and_then(Option::as_ref)
            .map_or("", |n| &n.text)
    }

    /// The state of `id`, or `None` if it is unknown or released.
    pub fn state(&self, id: EventId) -> Option<EventState> {
        self.held(id).ok()?.state()
    }

    /// The name of `id`, or `None` if it is unknown or released.
    pub fn name_of(&self, id: EventId) -> Option<&str> {
        let e = self.held(id).ok()?;
        Some(self.name_text(e.name()))
    }

    /// Whether `id` is at or below [`Index::max_event_id`] and not held: released, or removed
    /// from the log by compaction.
    pub fn is_forgotten(&self, id: EventId) -> bool {
        id.0 != 0 && id.0 <= self.max_event && self.held(id).is_err()
    }

    /// A job's progress in O(1), or `None` if the job is unknown or all of its events were
    /// released.
    pub fn job_stats(&self, job: JobId) -> Option<JobStats> {
        let slot = *self.job_slots.get(&job)?;
        Some(self.job_ref(slot).stats())
    }

    /// Whether the job was cancelled, or `None` if it is not held.
    pub fn job_cancelled(&self, job: JobId) -> Option<bool> {
        let slot = *self.job_slots.get(&job)?;
        Some(self.job_ref(slot).cancelled)
    }

    /// The held (not released) events of a job, in id order.
    pub fn job_events(&self, job: JobId) -> impl Iterator<Item = EventId> + '_ {
        let slot = self.job_slots.get(&job).copied();
        let (first, last) = slot.map_or((1, 0), |s| {
            let j = self.job_ref(s);
            (j.first, j.last)
        });
        self.slots_between(first, last)
            .filter(move |(_, e)| e.job() == slot && slot.is_some() && e.state().is_some())
            .map(|(id, _)| id)
    }

    /// The slots of the chunks held for ids `first..=last`, with their ids. The work follows
    /// the chunks held, not the width of the range: the engine gives a job consecutive ids,
    /// but a record it did not write may name a job's events anywhere in the id space.
    fn slots_between(&self, first: u64, last: u64) -> impl Iterator<Item = (EventId, &Entry)> {
        let chunks = (first != 0 && first <= last).then(|| {
            let ((from, _), (to, _)) = (split(EventId(first)), split(EventId(last)));
            self.chunks.range(from..=to)
        });
        chunks
            .into_iter()
            .flatten()
            .flat_map(move |(&chunk_no, c)| {
                let base = chunk_no * CHUNK_LEN_U64 + 1;
                c.entries
                    .iter()
                    .enumerate()
                    // The last chunk of the id space has no slot for 2^64.
                    .map_while(move |(i, e)| Some((base.checked_add(i as u64)?, e)))
                    .take_while(move |&(id, _)| id <= last)
                    .filter(move |&(id, _)| id >= first)
                    .map(|(id, e)| (EventId(id), e))
            })
    }

    /// Events held in `state`.
    pub fn count(&self, state: EventState) -> u64 {
        self.counts[state as usize]
    }

    /// Events Scheduled or Running.
    pub fn pending_count(&self) -> u64 {
        self.count(EventState::Scheduled) + self.count(EventState::Running)
    }

    /// Events Running.
    pub fn running_count(&self) -> u64 {
        self.count(EventState::Running)
    }

    /// Events held in any state (finished ones until they are released).
    pub fn held_count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Every held event (pending or finished but not released), in id order: what
    /// compaction needs to know which records are still live and where publishes lie.
    pub fn held_events(&self) -> impl Iterator<Item = EventInfo<'_>> + '_ {
        self.chunks.iter().flat_map(move |(&chunk_no, c)| {
            c.entries.iter().enumerate().filter_map(move |(i, e)| {
                e.state()?;
                self.get(EventId(chunk_no * CHUNK_LEN_U64 + i as u64 + 1))
            })
        })
    }

    /// Every Scheduled event with its due time, in id order: the input of the wheel's bulk
    /// rebuild after replay.
    pub fn scheduled(&self) -> impl Iterator<Item = (EventId, i64)> + '_ {
        self.ids_in(EventState::Scheduled).map(|id| {
            let due = self.held(id).map_or(0, Entry::due_ms);
            (id, due)
        })
    }

    /// Stores the owner's wheel handle for a held event ([`NO_TIMER`] clears it). Returns
    /// false if the event is not held.
    pub fn set_timer(&mut self, id: EventId, timer: u64) -> bool {
        if self.held(id).is_err() {
            return false;
        }
        self.entry_mut(id).set_timer(timer);
        true
    }

    /// Points a held event restated with a new body at a new copy of that record (after
    /// compaction moved it). Returns false if the event has no restated body.
    pub fn set_body_location(&mut self, id: EventId, loc: Location) -> bool {
        match self.bodies.get_mut(&id) {
            Some(at) => {
                *at = loc;
                true
            }
            None => false,
        }
    }

    /// Points a held event at a new copy of its publish record (after compaction moved it).
    /// Returns false if the event is not held.
    pub fn set_location(&mut self, id: EventId, loc: Location) -> bool {
        if self.held(id).is_err() {
            return false;
        }
        let e = self.entry_mut(id);
        e.segment = loc.segment;
        e.offset = loc.offset;
        true
    }

    /// The largest event id published so far; new ids continue after it.
    pub fn max_event_id(&self) -> Option<EventId> {
        (self.max_event > 0).then_some(EventId(self.max_event))
    }

    /// The largest job id published so far; new job ids continue after it.
    pub fn max_job_id(&self) -> Option<JobId> {
        (self.max_job > 0).then_some(JobId(self.max_job))
    }

    /// An estimate of the heap bytes the index uses (not counting allocator overhead).
    pub fn memory_bytes(&self) -> usize {
        // A B-tree node holds up to 11 keys and values plus about 100 bytes of links.
        let btree = |len: usize, kv: usize| len.div_ceil(6) * (11 * kv + 100);
        // A hash map's table holds its capacity of (key, value) plus one control byte each.
        let hash = |cap: usize, kv: usize| cap * (kv + 1);
        let chunks = self.chunks.len() * CHUNK_LEN * size_of::<Entry>()
            + btree(self.chunks.len(), size_of::<(u64, Chunk)>());
        let freed = btree(self.freed.len(), 16);
        let retries = hash(
            self.retries.capacity(),
            size_of::<(EventId, StoredRetryContext)>(),
        ) + self.retries.values().map(|r| r.data.len()).sum::<usize>();
        let jobs = self.jobs.capacity() * size_of::<Option<Job>>()
            + self.free_jobs.capacity() * 4
            + hash(self.job_slots.capacity(), size_of::<(JobId, u32)>());
        let names = self.names.capacity() * size_of::<Option<Name>>()
            + self.free_names.capacity() * 4
            + hash(self.name_slots.capacity(), size_of::<(Box<str>, u32)>())
            + 2 * self
                .names
                .iter()
                .flatten()
                .map(|n| n.text.len())
                .sum::<usize>();
        let keys = 5 * self.keys.slots.capacity()
            + 8 * self.keys.wide.capacity()
            + hash(self.windows.capacity(), size_of::<(EventId, i64)>())
            + hash(self.bodies.capacity(), size_of::<(EventId, Location)>());
        chunks + freed + retries + jobs + names + keys
            + self.dead_memory_bytes()
            + self.schedule_memory_bytes()
            + self.job_summary_bytes()
    }

    /// Recomputes every counter from the entries and panics, naming the values, if one
    /// disagrees. Linear in the number of held events: tests and debug builds only.
    pub fn check_invariants(&self) {
        let mut counts = [0u64; 7];
        let mut jobs_seen: HashMap<u32, [u32; 7]> = HashMap::new();
        let mut name_refs: HashMap<u32, u32> = HashMap::new();
        let mut retries = 0usize;
        for (&chunk_no, c) in &self.chunks {
            assert!(
                !self.is_freed(chunk_no),
                "chunk {chunk_no} is held and freed"
            );
            let (mut live, mut filled) = (0u32, 0u32);
            for (i, e) in c.entries.iter().enumerate() {
                // Wrapping: the last slot of the id space's last chunk (id 2^64) is vacant.
                let id = EventId((chunk_no * CHUNK_LEN_U64).wrapping_add(i as u64 + 1));
                match e.code() {
                    VACANT => continue,
                    RELEASED => {
                        filled += 1;
                        assert_eq!(e.job, NO_JOB, "{id} released but keeps a job");
                        continue;
                    }
                    _ => {}
                }
                let s = e.state();
                assert!(s.is_some(), "{id} has slot code {}", e.code());
                live += 1;
                filled += 1;
                counts[e.code() as usize] += 1;
                assert!(id.0 <= self.max_event, "{id} above max {}", self.max_event);
                *name_refs.entry(e.name()).or_default() += 1;
                if let Some(j) = e.job() {
                    jobs_seen.entry(j).or_default()[e.code() as usize] += 1;
                    let job = self.job_ref(j);
                    assert!(
                        job.first <= id.0 && id.0 <= job.last,
                        "{id} outside its job's range {}..={}",
                        job.first,
                        job.last
                    );
                    if job.cancelled {
                        assert_ne!(
                            s,
                            Some(EventState::Scheduled),
                            "{id} scheduled in cancelled {}",
                            job.id
                        );
                    }
                }
                if e.has_retry() {
                    retries += 1;
                    assert!(
                        self.retries.contains_key(&id),
                        "{id} lost its retry context"
                    );
                }
                if e.timer() != NO_TIMER {
                    assert_eq!(s, Some(EventState::Scheduled), "{id} has a timer");
                }
            }
            assert_eq!(
                (c.live, c.filled),
                (live, filled),
                "chunk {chunk_no} counts"
            );
        }
        assert_eq!(counts, self.counts, "counts by state");
        assert_eq!(retries, self.retries.len(), "retry contexts");
        assert_eq!(self.pending_count(), counts[1] + counts[2], "pending count");
        let mut held_jobs = 0;
        for (slot, job) in self.jobs.iter().enumerate() {
            let Some(job) = job else { continue };
            held_jobs += 1;
            assert_eq!(
                self.job_slots.get(&job.id),
                Some(&(slot as u32)),
                "{}",
                job.id
            );
            let sum: u32 = job.by_state.iter().sum();
            assert_eq!(sum, job.size, "{} counters sum to its size", job.id);
            let seen = jobs_seen.remove(&(slot as u32)).unwrap_or_default();
            let live: u32 = seen.iter().sum();
            assert_eq!(live + job.released, job.size, "{} live + released", job.id);
            for (code, (held, counted)) in seen.iter().zip(job.by_state).enumerate() {
                assert!(
                    *held <= counted,
                    "{} state {code}: {held} held, counter {counted}",
                    job.id,
                );
            }
            assert!(
                job.id.0 <= self.max_job,
                "{} above max {}",
                job.id,
                self.max_job
            );
        }
        assert!(jobs_seen.is_empty(), "entries point at free job slots");
        assert_eq!(held_jobs, self.job_slots.len(), "job map");
        for (i, n) in self.names.iter().enumerate() {
            let refs = name_refs.remove(&(i as u32)).unwrap_or(0);
            match n {
                Some(n) => {
                    assert_eq!(n.refs, refs, "name {:?} references", n.text);
                    assert_eq!(self.name_slots.get(&n.text), Some(&(i as u32)));
                }
                None => assert_eq!(refs, 0, "entries point at free name {i}"),
            }
        }
        assert!(name_refs.is_empty(), "entries point past the name table");
    }
}

mod dead;
mod jobs;
mod schedules;
pub use schedules::{Rule, ScheduleState};
#[cfg(test)]
mod tests;

pub use dead::DeadRef;
