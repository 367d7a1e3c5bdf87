//! The engine's core: the event index, the timing wheel, the ledger of attempts in flight and
//! the bytes of each segment, owned in one place and changed only through the methods below.
//!
//! Pure: no threads, no files, no clock. Time comes in as `now_ms`; durable records come in
//! after the log wrote them, with where they lie. The facade (`mod.rs`), delivery and
//! compaction do the threads and the I/O around it, and hold it under one mutex
//! (`Inner::core`).
//!
//! # Planning
//!
//! [`plan`] decides what becomes of a due event — attempted, expired (the one retention
//! rule: `Options::past_retention`, from the first due time), ignored (the one no-handler
//! rule: only once delivery started), left waiting (a stalled name) or left pending — from
//! what delivery read of it, as a pure function.
//!
//! # Queues, priorities and flow control
//!
//! An event due is taken out of the wheel into its name's queue (`flow.rs`), and handed to
//! delivery from there, best priority first, as its name's flow allows: not while the name
//! is paused, never more attempts at once than its concurrency limit, never more starts than
//! its rate limit's tokens, and never more events in flight than a cap (so that priorities
//! order a backlog rather than the order events fell due). A queued event's timer slot in the
//! index holds [`QUEUED`]. Pause state is the index's (it comes from records); the core keeps
//! the sequence number of each name's latest pause record, the one compaction keeps.
//!
//! # The ledger
//!
//! An event taken out of the wheel is *in flight* until its attempt ends, in one of three
//! stages: `Taken` (handed to delivery, no record written yet), `Waiting` (its attempt record
//! is durable, its handlers have not begun) and `Running`. Every event enters the ledger once
//! ([`take_due`](Core::take_due)) and leaves it once ([`finish`](Core::finish)); both sides
//! assert it, so a double finish or a finish of an event never taken panics in tests instead
//! of skewing `wait_idle`.
//!
//! # Bytes per segment
//!
//! Every applied record adds its frame to its segment's bytes: publish bytes or history
//! bytes (attempts, outcomes, cancels). A segment's live share is estimated without reading
//! the log: its publish bytes times the share of its (held) events that are still pending —
//! a pending event's attempt and retry history is counted dead, as compaction keeps only its
//! latest attempt and retry. Bytes a rewrite kept although the estimate called them dead
//! (the history of finished events whose publish lies in an older segment, or the latest
//! history of pending ones) are remembered as the segment's *floor*, so the next pass does
//! not rewrite it for nothing; the floor is cleared when compaction releases events
//! published in an older segment (their records here became dead) and after
//! [`FLOOR_PASSES`] passes (superseded history). Compaction's choice is therefore
//! O(segments).
//!
//! # Lock order
//!
//! Take locks only in this order, and release in reverse:
//! 1. `Inner::compaction_lock` (one compaction pass at a time);
//! 2. `Inner::cancel_order` (a cancel's record against delivery's and expiry's records,
//!    held across their `Log::append` and the apply that follows: see `Inner`);
//! 3. `Inner::core` (this struct);
//! 4. the log's own locks (`Log::segment_reader`, `Log::install_compacted`: taken under the
//!    core so that a publish's location and the segment file it points into change together);
//! 5. `Inner::handlers` is never taken with the core held, nor are delivery's own locks (a
//!    worker's slot; the stall tables, `parked` before `abandoned`; the workers' queue; the
//!    applier's queue, which is held while an outcome is submitted to the log's queue, and
//!    under which the core is taken to mark the outcome submitted);
//!    `Log::append` (which waits for a sync) is never called with the core held;
//! 6. the table of names for metrics (`Counters::names`, `names.rs`) is a leaf: it may be
//!    taken under any of the above, and nothing is locked while it is held.

use super::flow::{Flow, FlowConfig, Queued};
use crate::format::{FRAME_HEADER_LEN, Record};
use crate::ids::{EventId, JobId};
use crate::index::{Applied, Effect, EventInfo, EventState, Index, JobStats, Location, NO_TIMER};
use crate::log::Position;
use crate::wheel::{TimerHandle, Wheel};
use std::collections::{BTreeMap, HashMap};

/// Passes after which a segment's floor is forgotten, so history superseded since its last
/// rewrite is reclaimed.
pub(crate) const FLOOR_PASSES: u64 = 64;

/// The index timer slot of an event waiting in its name's queue (no wheel handle packs to
/// it: see `TimerHandle::to_u64`).
pub(crate) const QUEUED: u64 = u64::MAX - 1;

/// Where an event in flight is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Taken out of the wheel; no record written for it yet.
    Taken,
    /// Its attempt record is durable; its handlers have not begun.
    Waiting,
    /// Its handlers run.
    Running,
    /// Its outcome record is queued in the log, not yet applied.
    Finishing,
}

/// What [`Core::begin_handlers`] found for an event waiting for its handlers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Begin {
    /// Run the handlers.
    Run,
    /// A cancel of the event reached it, or it changed otherwise: nothing more to do.
    Skip,
    /// Its job was cancelled while it waited: write its cancel instead of running it.
    CancelForJob,
}

/// A segment's bytes, as records applied to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SegmentBytes {
    /// Frames of publish records.
    pub publish: u64,
    /// Frames of every other record.
    pub history: u64,
    /// Held events published in this segment.
    pub events: u64,
    /// Of those, the pending ones.
    pub pending: u64,
    /// Bytes the last rewrite kept beyond the live estimate.
    pub floor: u64,
    /// The pass that set the floor.
    floor_pass: u64,
}

impl SegmentBytes {
    /// Estimated live bytes: the pending share of the publish bytes.
    pub fn live(&self) -> u64 {
        if self.events == 0 {
            return 0;
        }
        (u128::from(self.publish) * u128::from(self.pending.min(self.events))
            / u128::from(self.events)) as u64
    }

    /// Estimated bytes a rewrite would drop.
    pub fn reclaimable(&self, with_floor: bool) -> u64 {
        let floor = if with_floor { self.floor } else { 0 };
        (self.publish + self.history)
            .saturating_sub(self.live())
            .saturating_sub(floor)
    }
}

/// A candidate for compaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub segment: u64,
    pub data_len: u64,
    pub reclaimable: u64,
}

/// A Scheduled event past its due time, as expiry sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Overdue {
    pub id: EventId,
    pub attempts: u32,
    pub due_ms: i64,
    pub location: Location,
}

/// What delivery knows of a due event when it plans its attempt.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlanInput {
    /// Attempts made so far.
    pub attempts: u32,
    /// Whether it is past retention now (`Options::past_retention`, from its first due time).
    pub past_retention: bool,
    /// Whether its name has handlers.
    pub has_handlers: bool,
    /// Whether delivery has started (`Engine::start`).
    pub started: bool,
    /// Whether its name is stalled (too many of its handlers hang).
    pub stalled: bool,
}

/// What becomes of a due event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Planned {
    /// Write attempt `attempt`, then run the handlers.
    Attempt { attempt: u32 },
    /// Write a drop (expired): past retention, whatever its handlers.
    Expire { attempt: u32 },
    /// Write an ack marked ignored: no handler for its name, once delivery has started.
    Ignore { attempt: u32 },
    /// Put it back in the wheel a while, nothing written: its name is stalled.
    Wait,
    /// Nothing: no handler, and delivery has not started (it stays pending).
    Leave,
}

/// The rules of delivery's plan, in order: retention first (an event past it is dropped,
/// even on a stalled name), then a stalled name waits, then an event without handler is
/// ignored (only once delivery started: handlers may still be registered before), and
/// everything else is attempted.
pub(crate) fn plan(input: &PlanInput) -> Planned {
    if input.past_retention {
        Planned::Expire {
            attempt: input.attempts,
        }
    } else if input.has_handlers && input.stalled {
        Planned::Wait
    } else if input.has_handlers {
        Planned::Attempt {
            attempt: input.attempts.saturating_add(1),
        }
    } else if input.started {
        Planned::Ignore {
            attempt: input.attempts,
        }
    } else {
        Planned::Leave
    }
}

/// The delivery state of an engine. See the module documentation.
pub(crate) struct Core {
    index: Index,
    wheel: Wheel<u64>,
    /// Events in flight: their stage and their name's flow slot.
    ledger: HashMap<EventId, (Stage, u32)>,
    flow: Flow,
    /// The sequence number of each name's latest pause record.
    pause_seq: HashMap<Box<str>, u64>,
    /// The sequence number of the latest purge of dead letters: compaction keeps it.
    purge_seq: Option<u64>,
    /// The sequence number of each schedule's latest kind-9 record: compaction keeps it.
    schedule_seq: HashMap<Box<str>, u64>,
    /// Notified when a schedule's pending occurrence finished (the schedules thread waits).
    pub schedules_wake: crate::clock::Wake,
    /// The schedules thread was woken for idle schedules or done jobs it has not taken yet:
    /// one wake-up per round, not one per applied record.
    follow_ups_woken: bool,
    /// The latest time `take_due` was given.
    now_ms: i64,
    /// The deadline the scheduler sleeps until (`i64::MAX`: none; `i64::MIN`: awake), so
    /// publishers know whether to wake it.
    sleeping_until_ms: i64,
    segments: BTreeMap<u32, SegmentBytes>,
    passes: u64,
    effects: Vec<Effect>,
}

/// The frame length of a record.
pub(crate) fn frame_len(record: &Record<'_>) -> u64 {
    (FRAME_HEADER_LEN + record.encoded_len()) as u64
}

/// The index's location of a record position. Segments are at most 4 GiB (checked on open),
/// and segment ids fit in 32 bits for any realistic log.
pub(crate) fn location(pos: Position) -> Location {
    Location {
        segment: pos.segment as u32,
        offset: pos.offset as u32,
    }
}

impl Core {
    /// An empty core with no limits, to replay a log into.
    #[cfg(test)]
    pub fn new() -> Core {
        Core::with_flow(FlowConfig::default())
    }

    /// An empty core with the engine's limits, to replay a log into.
    pub fn with_flow(config: FlowConfig) -> Core {
        Core {
            index: Index::new(),
            wheel: Wheel::new(0),
            ledger: HashMap::new(),
            flow: Flow::new(config),
            pause_seq: HashMap::new(),
            purge_seq: None,
            schedule_seq: HashMap::new(),
            schedules_wake: crate::clock::Wake::new(),
            follow_ups_woken: false,
            now_ms: 0,
            sleeping_until_ms: i64::MAX,
            segments: BTreeMap::new(),
            passes: 0,
            effects: Vec::new(),
        }
    }

    /// Applies one record of the log during replay (no wheel yet: see
    /// [`finish_replay`](Core::finish_replay)).
    pub fn replay(
        &mut self,
        pos: Position,
        record: &Record<'_>,
    ) -> Result<Applied, crate::index::Rejected> {
        let result = self.apply_counted(pos, record);
        self.effects.clear();
        self.note_latest(pos, record);
        result
    }

    /// Ends replay: events left Running by a crash become due at `now_ms`, and the wheel is
    /// built in bulk from the Scheduled events.
    pub fn finish_replay(&mut self, now_ms: i64) {
        self.index.finish_replay(now_ms, &mut self.effects);
        self.effects.clear();
        self.now_ms = now_ms;
        let paused: Vec<Box<str>> = self.index.paused().map(Into::into).collect();
        for name in paused {
            self.flow.set_paused(&name, true, now_ms);
        }
        let scheduled: Vec<(EventId, i64)> = self.index.scheduled().collect();
        self.wheel = Wheel::with_capacity(now_ms.max(0) as u64, scheduled.len());
        for (id, due_ms) in scheduled {
            self.schedule(id, due_ms);
        }
        // Cancelled-by-replay events stopped being pending: recount per segment.
        for bytes in self.segments.values_mut() {
            bytes.events = 0;
            bytes.pending = 0;
        }
        for e in self.index.held_events() {
            let bytes = self.segments.entry(e.location.segment).or_default();
            bytes.events += 1;
            bytes.pending += u64::from(e.state.is_pending());
        }
    }

    /// Applies a durable record: the index, the wheel and the segment's bytes. Returns what
    /// the index said, and whether the scheduler should wake (an event became due earlier
    /// than it sleeps).
    pub fn apply(
        &mut self,
        pos: Position,
        record: &Record<'_>,
    ) -> (Result<Applied, crate::index::Rejected>, bool) {
        let result = self.apply_counted(pos, record);
        let mut effects = std::mem::take(&mut self.effects);
        let earliest = self.apply_effects(&mut effects);
        self.effects = effects;
        if let (Record::Attempt(a), Ok(Applied::Changed)) = (record, &result)
            && let Some((stage, _)) = self.ledger.get_mut(&a.event)
        {
            debug_assert_eq!(*stage, Stage::Taken, "attempt of {} written twice", a.event);
            *stage = Stage::Waiting;
        }
        let mut wake = earliest.is_some_and(|due| due < self.sleeping_until_ms);
        self.note_latest(pos, record);
        if let Record::Pause(p) = record {
            wake |= self.flow.set_paused(p.name, p.paused, self.now_ms);
        }
        if !self.follow_ups_woken && (self.index.has_idle_schedules() || self.index.has_done_jobs())
        {
            self.follow_ups_woken = true;
            self.schedules_wake.notify();
        }
        (result, wake)
    }

    /// Remembers the latest record of the kinds of which compaction keeps only the latest.
    fn note_latest(&mut self, pos: Position, record: &Record<'_>) {
        match record {
            Record::Pause(p) => {
                self.pause_seq.insert(p.name.into(), pos.seq);
            }
            Record::PurgeDead(_) => self.purge_seq = Some(pos.seq),
            Record::Publish(p) => {
                if let Some(d) = p.schedule() {
                    self.schedule_seq.insert(d.id.into(), pos.seq);
                }
            }
            _ => {}
        }
    }

    /// Whether the kind-9 record with sequence number `seq` is schedule `id`'s latest.
    pub fn latest_schedule(&self, id: &str, seq: u64) -> bool {
        self.schedule_seq.get(id) == Some(&seq)
    }

    /// The schedules whose pending occurrence finished since the last call.
    pub fn take_idle_schedules(&mut self) -> Vec<Box<str>> {
        self.follow_ups_woken = false;
        self.index.take_idle_schedules()
    }

    /// The job-done records of the jobs whose last event finished since the last call.
    pub fn take_done_jobs(&mut self, now_ms: i64) -> Vec<crate::format::JobDone> {
        self.follow_ups_woken = false;
        self.index.take_done_jobs(now_ms)
    }

    /// Puts schedules whose next occurrence could not be written back on the idle list.
    pub fn requeue_idle_schedules(&mut self, ids: Vec<Box<str>>) {
        if !ids.is_empty() {
            self.index.requeue_idle_schedules(ids);
            self.schedules_wake.notify();
        }
    }

    /// Keeps dead letters `ms` after they died (0: none); call before replay.
    pub fn set_dead_retention(&mut self, ms: i64) {
        self.index.set_dead_retention(ms);
    }

    /// Whether the purge record with sequence number `seq` is the latest.
    pub fn latest_purge(&self, seq: u64) -> bool {
        self.purge_seq == Some(seq)
    }

    /// Forgets the dead letters (and finished jobs' summaries) past the dead retention at
    /// `now_ms`; how many dead letters.
    pub fn expire_dead(&mut self, now_ms: i64) -> u64 {
        self.index.expire_job_summaries(now_ms);
        self.index.expire_dead(now_ms)
    }

    /// The index's apply, with the bytes and pending counts of the segments kept up to date.
    fn apply_counted(
        &mut self,
        pos: Position,
        record: &Record<'_>,
    ) -> Result<Applied, crate::index::Rejected> {
        let loc = location(pos);
        let len = frame_len(record);
        // The events whose pending state this record may change, with their publish segment:
        // one for most records, a job's for a job's cancel (only that one allocates).
        let mut one = None;
        let mut of_job = Vec::new();
        match record {
            Record::Publish(p) => {
                if let Some(replaced) = p.options().and_then(|o| o.replaces) {
                    one = self.pending_at(replaced);
                }
            }
            Record::Cancel(c) => match c.target {
                crate::format::CancelTarget::Job(job) => {
                    let index = &self.index;
                    of_job.extend(
                        index
                            .job_events(job)
                            .filter_map(|id| index.get(id))
                            .filter(|e| e.state.is_pending())
                            .map(|e| (e.id, e.location.segment)),
                    );
                }
                crate::format::CancelTarget::Event(id) => one = self.pending_at(id),
            },
            other => one = other.event().and_then(|id| self.pending_at(id)),
        }
        let (held_before, pending_before) = (self.index.held_count(), self.index.pending_count());
        let result = self.index.apply(loc, record, &mut self.effects);
        let bytes = self.segments.entry(loc.segment).or_default();
        if let Record::Publish(_) = record {
            bytes.publish += len;
            if let Ok(Applied::Changed) = result {
                // A replace cancels its holder in the same record: count what it added.
                let cancelled = u64::from(one.is_some_and(|(id, _)| {
                    !self.index.state(id).is_some_and(EventState::is_pending)
                }));
                bytes.events += self.index.held_count() - held_before;
                bytes.pending += self.index.pending_count() + cancelled - pending_before;
            }
        } else {
            bytes.history += len;
        }
        for (id, segment) in one.into_iter().chain(of_job) {
            if !self.index.state(id).is_some_and(EventState::is_pending)
                && let Some(bytes) = self.segments.get_mut(&segment)
            {
                bytes.pending = bytes.pending.saturating_sub(1);
            }
        }
        result
    }

    fn pending_at(&self, id: EventId) -> Option<(EventId, u32)> {
        let e = self.index.get(id)?;
        e.state.is_pending().then_some((id, e.location.segment))
    }

    /// Puts a Scheduled event in the wheel at `due_ms` and records its handle in the index.
    fn schedule(&mut self, id: EventId, due_ms: i64) {
        let handle = self.wheel.insert(due_ms.max(0) as u64, id.0);
        self.index.set_timer(id, handle.to_u64());
    }

    /// Puts a Scheduled event that is in neither the wheel nor the ledger back in the wheel
    /// at `due_ms`; false (nothing done) if it changed meanwhile.
    fn reschedule(&mut self, id: EventId, due_ms: i64) -> bool {
        let outside = self
            .index
            .get(id)
            .is_some_and(|e| e.state == EventState::Scheduled && e.timer == NO_TIMER);
        if outside {
            self.schedule(id, due_ms);
        }
        outside
    }

    /// Carries out the index's effects on the wheel; returns the earliest new due time.
    fn apply_effects(&mut self, effects: &mut Vec<Effect>) -> Option<i64> {
        let mut earliest = None;
        for effect in effects.drain(..) {
            match effect {
                Effect::Schedule { event, due_ms } => {
                    self.schedule(event, due_ms);
                    earliest = Some(earliest.map_or(due_ms, |e: i64| e.min(due_ms)));
                }
                Effect::Unschedule { timer, event } => {
                    if timer == QUEUED {
                        self.unqueue(event);
                    } else if let Some(handle) = TimerHandle::from_u64(timer) {
                        self.wheel.cancel(handle);
                    }
                }
            }
        }
        earliest
    }

    /// A queued event left its queue (cancelled, claimed): its name counts one fewer.
    fn unqueue(&mut self, id: EventId) {
        if let Some(name) = self.index.name_of(id) {
            let slot = self.flow.slot(name);
            self.flow.unqueued(slot);
        }
    }

    /// Moves every event due at `now_ms` out of the wheel into its name's queue, then takes
    /// what the flow hands out into the ledger (stage `Taken`), appending their ids to `due`.
    /// Returns the next deadline, and records whether the scheduler is about to sleep until
    /// it (nothing was handed out) or stays awake.
    pub fn take_due(&mut self, now_ms: i64, due: &mut Vec<EventId>) -> Option<i64> {
        self.now_ms = now_ms;
        let start = due.len();
        let mut fell_due = Vec::new();
        self.wheel
            .advance(now_ms.max(0) as u64, |_, id| fell_due.push(EventId(id)));
        for id in fell_due {
            let Some(info) = self.index.get(id) else {
                continue;
            };
            let queued = Queued {
                priority: info.priority,
                due_ms: info.due_ms,
                id: id.0,
            };
            let slot = self.flow.slot(info.name);
            self.index.set_timer(id, QUEUED);
            self.flow.push(slot, queued, now_ms);
        }
        let mut out = Vec::new();
        let index = &self.index;
        let mut live = |id: u64| {
            index
                .get(EventId(id))
                .is_some_and(|e| e.state == EventState::Scheduled && e.timer == QUEUED)
        };
        self.flow.dispatch(now_ms, usize::MAX, &mut live, &mut out);
        for (id, slot) in out {
            let id = EventId(id);
            self.index.set_timer(id, NO_TIMER);
            let previous = self.ledger.insert(id, (Stage::Taken, slot));
            assert!(previous.is_none(), "{id} taken out of the wheel twice");
            due.push(id);
        }
        let wheel_next = self
            .wheel
            .next_deadline_ms()
            .map(|d| d.min(i64::MAX as u64) as i64);
        let next = wheel_next
            .into_iter()
            .chain(self.flow.next_deadline_ms())
            .min();
        self.sleeping_until_ms = if due.len() == start {
            next.unwrap_or(i64::MAX)
        } else {
            i64::MIN
        };
        next
    }

    /// Puts an event taken out of the wheel back in, due at `due_ms`, without a record: its
    /// attempt was not begun (its name's handlers are stalled, say).
    pub fn put_back(&mut self, id: EventId, due_ms: i64) -> bool {
        let taken = self.ledger.remove(&id);
        let Some((Stage::Taken, slot)) = taken else {
            panic!("{id} put back while not taken ({taken:?})");
        };
        let more = self.flow.finish(slot, self.now_ms);
        (self.reschedule(id, due_ms) && due_ms < self.sleeping_until_ms) || more
    }

    /// Moves a waiting event to `Running` if nothing stopped it since its attempt record.
    pub fn begin_handlers(&mut self, id: EventId, attempt: u32) -> Begin {
        let stage = self.ledger.get_mut(&id).map(|(stage, _)| stage);
        let Some(stage) = stage else {
            panic!("{id} begins its handlers while not in flight");
        };
        if *stage != Stage::Waiting {
            return Begin::Skip;
        }
        let Some(info) = self.index.get(id) else {
            return Begin::Skip;
        };
        if info.state != EventState::Running || info.attempts != attempt {
            return Begin::Skip;
        }
        let job_cancelled = info
            .job
            .and_then(|job| self.index.job_cancelled(job))
            .unwrap_or(false);
        if job_cancelled {
            return Begin::CancelForJob;
        }
        *stage = Stage::Running;
        Begin::Run
    }

    /// The outcome of a running event is queued in the log.
    pub fn outcome_submitted(&mut self, id: EventId) {
        let stage = self.ledger.get_mut(&id).map(|(stage, _)| stage);
        let Some(stage) = stage else {
            panic!("{id} submits an outcome while not in flight");
        };
        debug_assert_eq!(*stage, Stage::Running, "{id} submits an outcome twice");
        *stage = Stage::Finishing;
    }

    /// Whether any of `ids` has an outcome queued in the log and not yet applied.
    pub fn finishing(&self, mut ids: impl Iterator<Item = EventId>) -> bool {
        ids.any(|id| self.stage(id) == Some(Stage::Finishing))
    }

    /// An event in flight is done: its attempt ended, or it was not attempted after all.
    /// True if the scheduler should wake: its name (or the cap on events in flight) has room
    /// for queued events again.
    pub fn finish(&mut self, id: EventId) -> bool {
        let taken = self.ledger.remove(&id);
        let Some((_, slot)) = taken else {
            panic!("{id} finished twice, or never taken");
        };
        self.flow.finish(slot, self.now_ms)
    }

    /// The stage of an event in flight.
    pub fn stage(&self, id: EventId) -> Option<Stage> {
        self.ledger.get(&id).map(|&(stage, _)| stage)
    }

    /// Whether `name` is paused.
    pub fn is_paused(&self, name: &str) -> bool {
        self.index.is_paused(name)
    }

    /// Due events waiting in their names' queues.
    pub fn queued(&self) -> u64 {
        self.flow.queued()
    }

    /// Whether the pause record at sequence number `seq` of `name` is its latest (the one
    /// compaction keeps).
    pub fn latest_pause(&self, name: &str, seq: u64) -> bool {
        self.pause_seq.get(name) == Some(&seq)
    }

    /// Events in flight.
    pub fn in_flight(&self) -> u64 {
        self.ledger.len() as u64
    }

    /// Whether nothing is in flight and nothing is due at `now_ms` (the due events of a
    /// paused name wait, and do not count).
    pub fn is_idle(&self, now_ms: i64) -> bool {
        let now = now_ms.max(0) as u64;
        self.ledger.is_empty()
            && self.wheel.next_deadline_ms().is_none_or(|d| d > now)
            && !self.flow.has_runnable()
    }

    /// The index, to read.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// An event the index holds.
    pub fn event(&self, id: EventId) -> Option<EventInfo<'_>> {
        self.index.get(id)
    }

    /// Progress of a job the index holds (not a finished job's summary).
    pub fn job_stats(&self, job: JobId) -> Option<JobStats> {
        self.index.job_stats(job)
    }

    /// Progress of a job: held, or finished and summarized within the dead retention at
    /// `now_ms`.
    pub fn job_stats_or_summary(&self, job: JobId, now_ms: i64) -> Option<JobStats> {
        self.index
            .job_stats(job)
            .or_else(|| self.index.finished_job(job, now_ms))
    }

    /// Whether `cancel(id)` would stop an event whose job's cancel already counted it: it
    /// waits for its handlers, and its worker cancels it.
    pub fn cancelled_with_job(&self, id: EventId) -> bool {
        self.stage(id) == Some(Stage::Waiting)
            && self
                .index
                .get(id)
                .and_then(|i| i.job)
                .and_then(|job| self.index.job_cancelled(job))
                .unwrap_or(false)
    }

    /// Events of `job` waiting for their handlers.
    pub fn job_waiting(&self, job: JobId) -> u64 {
        self.index
            .job_events(job)
            .filter(|id| self.stage(*id) == Some(Stage::Waiting))
            .count() as u64
    }

    /// Whether the wheel holds an event due at or before `now_ms`.
    pub fn any_due(&self, now_ms: i64) -> bool {
        let now = now_ms.max(0) as u64;
        self.wheel.next_deadline_ms().is_some_and(|d| d <= now) || self.flow.queued() > 0
    }

    /// Scheduled events in the wheel due before `now_ms`: expiry's candidates. Linear in the
    /// pending events; expiry calls it only when delivery does not run.
    pub fn overdue(&self, now_ms: i64) -> Vec<Overdue> {
        self.index
            .scheduled()
            .filter(|&(_, due_ms)| due_ms < now_ms)
            .filter_map(|(id, due_ms)| {
                let i = self.index.get(id)?;
                (i.timer != NO_TIMER).then_some(Overdue {
                    id,
                    attempts: i.attempts,
                    due_ms,
                    location: i.location,
                })
            })
            .collect()
    }

    /// Claims an overdue event for expiry: out of the wheel, so delivery cannot take it too.
    /// False if it changed since it was looked at.
    pub fn claim(&mut self, id: EventId, attempts: u32) -> bool {
        let Some(info) = self.index.get(id) else {
            return false;
        };
        if info.state != EventState::Scheduled
            || info.timer == NO_TIMER
            || info.attempts != attempts
        {
            return false;
        }
        if info.timer == QUEUED {
            self.unqueue(id);
        } else if let Some(handle) = TimerHandle::from_u64(info.timer) {
            self.wheel.cancel(handle);
        }
        self.index.set_timer(id, NO_TIMER);
        true
    }

    /// Puts a claimed event whose drop could not be written back in the wheel, at its due
    /// time.
    /// True if the scheduler should wake (it is due before it sleeps until).
    pub fn unclaim(&mut self, id: EventId) -> bool {
        match self.index.get(id).map(|e| e.due_ms) {
            Some(due_ms) => self.reschedule(id, due_ms) && due_ms < self.sleeping_until_ms,
            None => false,
        }
    }

    /// The bytes of a segment, as far as applied records tell.
    #[cfg(test)]
    pub fn segment_bytes(&self, segment: u32) -> SegmentBytes {
        self.segments.get(&segment).copied().unwrap_or_default()
    }

    /// Sealed segments (id, data bytes) worth rewriting: at least `min_dead` of their data
    /// estimated reclaimable (and something), least first, so the caller pops the best. A
    /// `full` choice ignores floors and orders by id (oldest last popped first), so that
    /// releases in older segments are seen by newer ones in the same pass.
    pub fn candidates(
        &mut self,
        sealed: &[crate::log::SealedSegment],
        min_dead: f64,
        full: bool,
    ) -> Vec<Candidate> {
        self.passes += 1;
        let passes = self.passes;
        let header = crate::format::SEGMENT_HEADER_LEN as u64;
        let mut out: Vec<Candidate> = Vec::new();
        for s in sealed {
            let Ok(id) = u32::try_from(s.id) else {
                continue;
            };
            let Some(bytes) = self.segments.get_mut(&id) else {
                // Nothing applied from it: only a header, or records the index refused.
                if s.data_len > header {
                    out.push(Candidate {
                        segment: s.id,
                        data_len: s.data_len,
                        reclaimable: s.data_len - header,
                    });
                }
                continue;
            };
            if bytes.floor > 0 && passes.saturating_sub(bytes.floor_pass) >= FLOOR_PASSES {
                bytes.floor = 0;
            }
            let data = s.data_len.saturating_sub(header);
            let reclaimable = bytes.reclaimable(!full).min(data);
            if data == 0 || reclaimable == 0 {
                continue;
            }
            if (reclaimable as f64) / (data as f64) >= min_dead {
                out.push(Candidate {
                    segment: s.id,
                    data_len: s.data_len,
                    reclaimable,
                });
            }
        }
        if full {
            out.sort_by_key(|c| std::cmp::Reverse(c.segment));
        } else {
            out.sort_by(|a, b| {
                let share = |c: &Candidate| c.reclaimable as f64 / c.data_len.max(1) as f64;
                share(a)
                    .total_cmp(&share(b))
                    .then(b.segment.cmp(&a.segment))
            });
        }
        out
    }

    /// What a rewrite of `segment`, keeping the publish frames at `kept_publishes` (offsets),
    /// keeps of the records about `id`: `None` if the event's records are not kept at all
    /// (it is not held, or its publish is dropped with this rewrite), else the rule for its
    /// history.
    pub fn keep_rule(
        &self,
        id: EventId,
        segment: u32,
        kept_publishes: &std::collections::HashSet<u64>,
    ) -> Option<Keep> {
        let e = self.index.get(id)?;
        if e.location.segment == segment && !kept_publishes.contains(&u64::from(e.location.offset))
        {
            return None;
        }
        if !e.state.is_pending() {
            return Some(Keep::All);
        }
        Some(Keep::Latest {
            attempt: e.attempts,
            retry_attempt: e.retry.map(|r| r.attempt),
        })
    }

    /// Installs the result of a rewrite of `segment`: publishes that moved get their new
    /// location (`moved`: old and new frame offsets, sorted), finished events whose publish
    /// was dropped are released. `published` lists the events whose publish was in the
    /// segment. Returns how many events were released.
    pub fn install_rewrite(
        &mut self,
        segment: u32,
        published: &[EventId],
        moved: &[(u64, u64)],
        kept: SegmentBytes,
    ) -> u64 {
        let mut released = 0u64;
        let mut events = 0u64;
        let mut pending = 0u64;
        // First, so that the dead letters whose record moved are not taken for lost.
        self.index.move_dead(segment, moved);
        for &id in published {
            let Some(e) = self.index.get(id) else {
                continue;
            };
            // The record holding a restated body moved (or was dropped with a finished event).
            if e.body_at.segment == segment
                && e.body_at != e.location
                && let Ok(i) =
                    moved.binary_search_by_key(&u64::from(e.body_at.offset), |&(old, _)| old)
            {
                let new = Location {
                    segment,
                    offset: moved[i].1 as u32,
                };
                self.index.set_body_location(id, new);
            }
            let Some(e) = self.index.get(id) else {
                continue;
            };
            if e.location.segment != segment {
                continue;
            }
            let offset = u64::from(e.location.offset);
            let state = e.state;
            match moved.binary_search_by_key(&offset, |&(old, _)| old) {
                Ok(i) => {
                    let new = moved[i].1 as u32;
                    self.index.set_location(
                        id,
                        Location {
                            segment,
                            offset: new,
                        },
                    );
                    events += 1;
                    pending += u64::from(state.is_pending());
                }
                Err(_) if !state.is_pending() && self.index.release(id) => released += 1,
                // Pending but its publish was not kept: impossible, since the keep rule keeps
                // every publish with a pending event; the entry stays as it is.
                Err(_) => {
                    events += 1;
                    pending += 1;
                }
            }
        }
        if moved.is_empty() {
            self.segments.remove(&segment);
        } else {
            let mut bytes = SegmentBytes {
                events,
                pending,
                ..kept
            };
            bytes.floor = (bytes.publish + bytes.history).saturating_sub(bytes.live());
            bytes.floor_pass = self.passes;
            self.segments.insert(segment, bytes);
        }
        if released > 0 {
            // Records in newer segments about the released events became dead.
            for (_, bytes) in self.segments.range_mut(segment + 1..) {
                bytes.floor = 0;
            }
        }
        released
    }

    /// Forgets keys no event holds any more (see `Index::sweep_keys`).
    pub fn sweep_keys(&mut self, now_ms: i64) -> usize {
        self.index.sweep_keys(now_ms)
    }

    /// Estimated heap bytes of the index.
    pub fn memory_bytes(&self) -> usize {
        self.index.memory_bytes()
    }

    /// Recomputes the index's counters and the ledger's agreement with it; panics on a
    /// mismatch. Linear: tests only.
    #[cfg(test)]
    pub fn check_invariants(&self) {
        self.index.check_invariants();
        for (&id, &(stage, _)) in &self.ledger {
            let info = self.index.get(id);
            if let Some(info) = info {
                assert_eq!(info.timer, NO_TIMER, "{id} in flight and in the wheel");
                if stage == Stage::Running {
                    assert!(
                        info.state != EventState::Scheduled,
                        "{id} running while scheduled"
                    );
                }
            }
        }
        let mut per_segment: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
        for e in self.index.held_events() {
            let c = per_segment.entry(e.location.segment).or_default();
            c.0 += 1;
            c.1 += u64::from(e.state.is_pending());
        }
        for (segment, (events, pending)) in per_segment {
            let bytes = self.segment_bytes(segment);
            assert_eq!(
                (bytes.events, bytes.pending),
                (events, pending),
                "events and pending of segment {segment}"
            );
        }
    }
}

/// What a rewrite keeps of a held event's records other than its publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Keep {
    /// Every record (a finished event: its outcome must outlive its publish).
    All,
    /// A pending event: only what replay needs — its latest attempt, the retry that made it
    /// Scheduled (same attempt), and the retry that carried its retry context.
    Latest {
        attempt: u32,
        retry_attempt: Option<u32>,
    },
}

impl Keep {
    /// Whether `record` (about the event) is kept.
    pub fn keeps(self, record: &Record<'_>) -> bool {
        match (self, record) {
            (Keep::All, _) => true,
            (Keep::Latest { attempt, .. }, Record::Attempt(a)) => a.attempt == attempt,
            (
                Keep::Latest {
                    attempt,
                    retry_attempt,
                },
                Record::Retry(r),
            ) => r.attempt == attempt || Some(r.attempt) == retry_attempt,
            // Outcomes and cancels of a pending event were duplicates or stale: still kept,
            // they are rare and replay treats them as it did.
            (Keep::Latest { .. }, _) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The core alone against a model, with time as an input: what is due, what is in
    //! flight, when the engine is idle, job counts and the per-segment counts, after every
    //! step of random runs of the delivery protocol (take, attempt, begin, outcome) mixed
    //! with publishes, pushes, cancels, put-backs and rolls.

    use super::*;
    use crate::format::{
        Ack, AckOutcome, Attempt, Cancel, CancelTarget, Publish, PublishEntry, Retry,
    };
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Clone, Debug)]
    enum Op {
        Publish {
            delay_ms: i64,
        },
        Push {
            n: u8,
            delay_ms: i64,
        },
        Advance {
            ms: i64,
        },
        Attempt {
            pick: usize,
        },
        Begin {
            pick: usize,
        },
        Outcome {
            pick: usize,
            kind: u8,
            delay_ms: i64,
        },
        Cancel {
            pick: usize,
        },
        CancelJob {
            pick: usize,
        },
        Skip {
            pick: usize,
        },
        PutBack {
            pick: usize,
            delay_ms: i64,
        },
        Roll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0i64..3000).prop_map(|delay_ms| Op::Publish { delay_ms }),
            1 => (1u8..5, 0i64..3000).prop_map(|(n, delay_ms)| Op::Push { n, delay_ms }),
            3 => (0i64..2000).prop_map(|ms| Op::Advance { ms }),
            3 => any::<usize>().prop_map(|pick| Op::Attempt { pick }),
            3 => any::<usize>().prop_map(|pick| Op::Begin { pick }),
            3 => (any::<usize>(), 0u8..3, 1i64..3000)
                .prop_map(|(pick, kind, delay_ms)| Op::Outcome { pick, kind, delay_ms }),
            1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
            1 => any::<usize>().prop_map(|pick| Op::CancelJob { pick }),
            1 => any::<usize>().prop_map(|pick| Op::Skip { pick }),
            1 => (any::<usize>(), 0i64..2000).prop_map(|(pick, delay_ms)| Op::PutBack { pick, delay_ms }),
            1 => Just(Op::Roll),
        ]
    }

    /// What the model knows of an event.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum M {
        Scheduled(i64),
        Flight(Stage),
        Done,
    }

    #[derive(Clone, Copy, Debug)]
    struct Ev {
        m: M,
        attempts: u32,
        /// The event's record state is Running (an attempt record applied, no outcome).
        running: bool,
        cancelled: bool,
        job: Option<u64>,
        succeeded: bool,
    }

    struct Run {
        core: Core,
        events: BTreeMap<u64, Ev>,
        cancelled_jobs: Vec<u64>,
        now: i64,
        next_id: u64,
        next_job: u64,
        segment: u64,
        offset: u64,
    }

    impl Run {
        fn apply(
            &mut self,
            record: &Record<'_>,
        ) -> (Result<Applied, crate::index::Rejected>, bool) {
            let pos = Position {
                segment: self.segment,
                offset: self.offset,
                seq: 0,
            };
            self.offset += frame_len(record);
            self.core.apply(pos, record)
        }

        fn pick(&self, pick: usize, want: impl Fn(&Ev) -> bool) -> Option<u64> {
            let ids: Vec<u64> = self
                .events
                .iter()
                .filter(|(_, e)| want(e))
                .map(|(&id, _)| id)
                .collect();
            (!ids.is_empty()).then(|| ids[pick % ids.len()])
        }

        fn publish(&mut self, n: u8, job: bool, delay_ms: i64) {
            let job = job.then(|| {
                self.next_job += 1;
                self.next_job
            });
            let due = self.now + delay_ms;
            let names: Vec<String> = (0..n).map(|i| format!("name{}", i % 2)).collect();
            let entries: Vec<PublishEntry<'_>> = (0..n as usize)
                .map(|i| PublishEntry {
                    id: EventId(self.next_id + i as u64),
                    due_ms: due,
                    name: &names[i],
                    body: b"body",
                })
                .collect();
            let record = Record::Publish(Publish::new(job.map(JobId), self.now, &entries));
            let (result, _) = self.apply(&record);
            assert_eq!(result, Ok(Applied::Changed));
            for i in 0..u64::from(n) {
                self.events.insert(
                    self.next_id + i,
                    Ev {
                        m: M::Scheduled(due),
                        attempts: 0,
                        running: false,
                        cancelled: false,
                        job,
                        succeeded: false,
                    },
                );
            }
            self.next_id += u64::from(n);
        }

        fn step(&mut self, op: &Op) {
            match *op {
                Op::Publish { delay_ms } => self.publish(1, false, delay_ms),
                Op::Push { n, delay_ms } => self.publish(n, true, delay_ms),
                Op::Advance { ms } => {
                    self.now += ms;
                    let mut due = Vec::new();
                    self.core.take_due(self.now, &mut due);
                    let mut got: Vec<u64> = due.iter().map(|id| id.0).collect();
                    got.sort_unstable();
                    let want: Vec<u64> = self
                        .events
                        .iter()
                        .filter(|(_, e)| matches!(e.m, M::Scheduled(d) if d <= self.now))
                        .map(|(&id, _)| id)
                        .collect();
                    assert_eq!(got, want, "due at {}", self.now);
                    for id in got {
                        self.events.get_mut(&id).unwrap().m = M::Flight(Stage::Taken);
                    }
                }
                Op::Attempt { pick } => {
                    let Some(id) = self.pick(pick, |e| e.m == M::Flight(Stage::Taken)) else {
                        return;
                    };
                    let e = self.events[&id];
                    let record = Record::Attempt(Attempt {
                        event: EventId(id),
                        attempt: e.attempts + 1,
                        started_ms: self.now,
                    });
                    let (result, _) = self.apply(&record);
                    let e = self.events.get_mut(&id).unwrap();
                    if e.cancelled {
                        // Cancelled since it fell due: its attempt is refused or a duplicate.
                        assert_ne!(result, Ok(Applied::Changed));
                        self.core.finish(EventId(id));
                        e.m = M::Done;
                    } else {
                        assert_eq!(result, Ok(Applied::Changed));
                        e.attempts += 1;
                        e.running = true;
                        e.m = M::Flight(Stage::Waiting);
                    }
                }
                Op::Begin { pick } => {
                    let Some(id) = self.pick(pick, |e| e.m == M::Flight(Stage::Waiting)) else {
                        return;
                    };
                    let e = self.events[&id];
                    let begin = self.core.begin_handlers(EventId(id), e.attempts);
                    let job_cancelled = e.job.is_some_and(|j| self.cancelled_jobs.contains(&j));
                    let e = self.events.get_mut(&id).unwrap();
                    if e.cancelled && !(job_cancelled && e.running) {
                        assert_eq!(begin, Begin::Skip);
                        self.core.finish(EventId(id));
                        e.m = M::Done;
                    } else if job_cancelled {
                        assert_eq!(begin, Begin::CancelForJob);
                        let record = Record::Cancel(Cancel {
                            target: CancelTarget::Event(EventId(id)),
                            cancelled_ms: self.now,
                        });
                        let _ = self.apply(&record);
                        self.core.finish(EventId(id));
                        let e = self.events.get_mut(&id).unwrap();
                        e.cancelled = true;
                        e.running = false;
                        e.m = M::Done;
                    } else {
                        assert_eq!(begin, Begin::Run);
                        e.m = M::Flight(Stage::Running);
                    }
                }
                Op::Outcome {
                    pick,
                    kind,
                    delay_ms,
                } => {
                    let Some(id) = self.pick(pick, |e| e.m == M::Flight(Stage::Running)) else {
                        return;
                    };
                    let e = self.events[&id];
                    let event = EventId(id);
                    let record = match kind {
                        0 => Record::Ack(Ack {
                            event,
                            attempt: e.attempts,
                            acked_ms: self.now,
                            outcome: AckOutcome::Handled,
                        }),
                        1 => Record::Retry(Retry {
                            event,
                            attempt: e.attempts,
                            failed_ms: self.now,
                            next_due_ms: self.now + delay_ms,
                            retry_count: e.attempts,
                            reason: 2,
                            message: "failed",
                            data: b"ctx",
                        }),
                        _ => Record::Drop(crate::format::Drop {
                            event,
                            attempt: e.attempts,
                            dropped_ms: self.now,
                            reason: crate::format::DropReason::Exhausted,
                            message: "gave up",
                        }),
                    };
                    let pos = Position {
                        segment: self.segment,
                        offset: self.offset,
                        seq: 0,
                    };
                    self.offset += frame_len(&record);
                    // As delivery does: applied and finished under one lock.
                    let (result, _) = self.core.apply(pos, &record);
                    self.core.finish(event);
                    let job_cancelled = e.job.is_some_and(|j| self.cancelled_jobs.contains(&j));
                    let e = self.events.get_mut(&id).unwrap();
                    e.running = false;
                    if e.cancelled {
                        assert_eq!(result, Ok(Applied::Duplicate));
                        e.m = M::Done;
                    } else if kind == 1 && !job_cancelled {
                        assert_eq!(result, Ok(Applied::Changed));
                        e.m = M::Scheduled(self.now + delay_ms);
                    } else {
                        assert_eq!(result, Ok(Applied::Changed));
                        e.succeeded = kind == 0;
                        e.m = M::Done;
                    }
                }
                Op::Cancel { pick } => {
                    let Some(id) = self.pick(pick, |e| !e.cancelled && e.m != M::Done) else {
                        return;
                    };
                    let record = Record::Cancel(Cancel {
                        target: CancelTarget::Event(EventId(id)),
                        cancelled_ms: self.now,
                    });
                    let (result, _) = self.apply(&record);
                    assert_eq!(result, Ok(Applied::Changed));
                    let e = self.events.get_mut(&id).unwrap();
                    e.cancelled = true;
                    e.running = false;
                    if let M::Scheduled(_) = e.m {
                        e.m = M::Done;
                    }
                }
                Op::CancelJob { pick } => {
                    let Some(id) = self.pick(pick, |e| e.job.is_some()) else {
                        return;
                    };
                    let job = self.events[&id].job.unwrap();
                    if self.cancelled_jobs.contains(&job) {
                        return;
                    }
                    let record = Record::Cancel(Cancel {
                        target: CancelTarget::Job(JobId(job)),
                        cancelled_ms: self.now,
                    });
                    let (result, _) = self.apply(&record);
                    assert_eq!(result, Ok(Applied::Changed));
                    self.cancelled_jobs.push(job);
                    for e in self.events.values_mut().filter(|e| e.job == Some(job)) {
                        // Scheduled events (in the wheel or taken, no attempt yet) are
                        // cancelled; running ones finish.
                        if !e.running && e.m != M::Done && !e.cancelled {
                            e.cancelled = true;
                            if let M::Scheduled(_) = e.m {
                                e.m = M::Done;
                            }
                        }
                    }
                }
                Op::Skip { pick } => {
                    let Some(id) = self.pick(pick, |e| e.m == M::Flight(Stage::Taken)) else {
                        return;
                    };
                    // Delivery found it cancelled (or could not read it): it leaves the ledger.
                    if !self.events[&id].cancelled {
                        return;
                    }
                    self.core.finish(EventId(id));
                    self.events.get_mut(&id).unwrap().m = M::Done;
                }
                Op::PutBack { pick, delay_ms } => {
                    let Some(id) = self.pick(pick, |e| e.m == M::Flight(Stage::Taken)) else {
                        return;
                    };
                    let due = self.now + delay_ms;
                    self.core.put_back(EventId(id), due);
                    let e = self.events.get_mut(&id).unwrap();
                    e.m = if e.cancelled {
                        M::Done
                    } else {
                        M::Scheduled(due)
                    };
                }
                Op::Roll => {
                    self.segment += 1;
                    self.offset = 0;
                }
            }
        }

        fn check(&self) {
            self.core.check_invariants();
            let in_flight = self
                .events
                .values()
                .filter(|e| matches!(e.m, M::Flight(_)))
                .count() as u64;
            assert_eq!(self.core.in_flight(), in_flight);
            for (&id, e) in &self.events {
                let stage = match e.m {
                    M::Flight(stage) => Some(stage),
                    _ => None,
                };
                assert_eq!(self.core.stage(EventId(id)), stage, "stage of {id}");
            }
            let due_now = self
                .events
                .values()
                .any(|e| matches!(e.m, M::Scheduled(d) if d <= self.now));
            assert_eq!(self.core.is_idle(self.now), in_flight == 0 && !due_now);
            let pending = self
                .events
                .values()
                .filter(|e| {
                    !e.cancelled
                        && (e.running || matches!(e.m, M::Scheduled(_) | M::Flight(Stage::Taken)))
                })
                .count() as u64;
            assert_eq!(self.core.index().pending_count(), pending);
            let mut jobs: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
            for e in self.events.values() {
                if let Some(job) = e.job {
                    let j = jobs.entry(job).or_default();
                    j.0 += u64::from(e.succeeded);
                    j.1 += u64::from(e.cancelled && !e.running && !e.succeeded);
                }
            }
            for (job, (success, _)) in jobs {
                let stats = self.core.job_stats(JobId(job)).unwrap();
                assert_eq!(stats.success, success, "job {job}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn core_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..120)) {
            let mut run = Run {
                core: Core::new(),
                events: BTreeMap::new(),
                cancelled_jobs: Vec::new(),
                now: 1_000,
                next_id: 1,
                next_job: 0,
                segment: 1,
                offset: 0,
            };
            run.core.finish_replay(run.now);
            for op in &ops {
                run.step(op);
                run.check();
            }
        }
    }

    #[test]
    fn the_plan_puts_retention_first_then_stalls_then_handlers() {
        let input = |past_retention, has_handlers, started, stalled| PlanInput {
            attempts: 2,
            past_retention,
            has_handlers,
            started,
            stalled,
        };
        for (has, started, stalled) in [
            (true, true, true),
            (false, true, false),
            (true, false, false),
        ] {
            assert_eq!(
                plan(&input(true, has, started, stalled)),
                Planned::Expire { attempt: 2 }
            );
        }
        assert_eq!(plan(&input(false, true, true, true)), Planned::Wait);
        assert_eq!(
            plan(&input(false, true, true, false)),
            Planned::Attempt { attempt: 3 }
        );
        assert_eq!(
            plan(&input(false, false, true, true)),
            Planned::Ignore { attempt: 2 }
        );
        assert_eq!(plan(&input(false, false, false, false)), Planned::Leave);
    }

    #[test]
    #[should_panic(expected = "finished twice")]
    fn a_double_finish_panics() {
        let mut core = Core::new();
        core.finish_replay(0);
        let entries = [PublishEntry {
            id: EventId(1),
            due_ms: 0,
            name: "n",
            body: b"",
        }];
        let record = Record::Publish(Publish::new(None, 0, &entries));
        let _ = core.apply(
            Position {
                segment: 1,
                offset: 0,
                seq: 0,
            },
            &record,
        );
        let mut due = Vec::new();
        core.take_due(0, &mut due);
        assert_eq!(due, vec![EventId(1)]);
        core.finish(EventId(1));
        core.finish(EventId(1));
    }
}
