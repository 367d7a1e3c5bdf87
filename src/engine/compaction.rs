//! Compaction: rewrite sealed segments without the records of finished events, so that disk
//! use follows the live data, and free the index entries of those events.
//!
//! A pass (`compact_now`, or the background thread every `compaction_interval`):
//! 1. **Retention**: a Scheduled event more than the retention past its first due time (it
//!    was not delivered: the engine was not started, say) gets a drop record (expired), by the
//!    rule delivery applies (`Options::past_retention`).
//! 2. **Choice**: for each sealed segment, the core keeps its publish and history bytes and
//!    how many of its events are pending as records apply (`core.rs`, "Bytes per segment"),
//!    so the choice reads neither the log nor every event: O(segments). Segments whose
//!    estimated reclaimable share is at least the threshold are compacted, most first, up to
//!    a byte budget per pass; bytes an earlier rewrite could not drop are not counted again,
//!    so a pass that would save nothing does not run.
//! 3. **Rewrite** (`Log::compact_segment`): a record is kept when
//!    - it is a publish with a pending event (a job's publish is kept whole while any of its
//!      events is pending, so job stats survive a restart);
//!    - it names a finished event the index still holds whose publish is kept — in this
//!      segment or in another one. An ack, cancel or drop whose publish still exists
//!      elsewhere is therefore never dropped: no finished event comes back after a restart
//!      (no resurrection);
//!    - it is what replay needs of a pending event's history: its latest attempt, the retry
//!      that scheduled it again, and the retry that carried its retry context (`Keep`);
//!      older attempts and retries go, so retry history does not grow with the retries;
//!    - it cancels a job the index still holds.
//! 4. **Swap**: under the engine's lock, the new segment becomes visible to readers, the
//!    locations of moved publishes are updated and the events whose publish was dropped are
//!    released from the index (memory follows live events).
//!
//! Architecture Invariant: compaction decides from the index, whose finished states never
//! become pending again; a decision that is stale by the time of the swap can only keep too
//! much, never drop a live record.

use super::Inner;
use super::core::{Keep, SegmentBytes, frame_len};
use super::options::EXPIRED_MESSAGE;
use crate::error::Result;
use crate::format::{CancelTarget, Record};
use crate::ids::{EventId, JobId};
use crate::index::{Applied, Location};
use crate::log::{Position, SegmentReader};
use crate::retry::DropReason;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What one compaction pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompactionStats {
    /// Segments rewritten.
    pub segments_rewritten: u64,
    /// Segments removed because nothing in them was live.
    pub segments_removed: u64,
    /// Data bytes before, in the compacted segments.
    pub bytes_before: u64,
    /// Data bytes after.
    pub bytes_after: u64,
    /// Records dropped.
    pub records_dropped: u64,
    /// Finished events whose index entry was freed.
    pub events_released: u64,
    /// Events dropped past retention.
    pub events_expired: u64,
}

impl CompactionStats {
    /// Adds the figures of another pass.
    pub(crate) fn add(&mut self, other: &CompactionStats) {
        self.segments_rewritten += other.segments_rewritten;
        self.segments_removed += other.segments_removed;
        self.bytes_before += other.bytes_before;
        self.bytes_after += other.bytes_after;
        self.records_dropped += other.records_dropped;
        self.events_released += other.events_released;
        self.events_expired += other.events_expired;
    }
}

/// Runs one pass. `min_dead` is the estimated reclaimable share (0..=1) a segment needs to
/// be compacted; `budget_bytes` bounds the data read per pass. A `full` pass (`compact_now`)
/// rewrites every segment with anything estimated reclaimable, oldest first, ignoring what
/// earlier rewrites found unreclaimable; a background pass skips what would save nothing.
pub(crate) fn pass(
    inner: &Arc<Inner>,
    min_dead: f64,
    budget_bytes: u64,
    full: bool,
) -> Result<CompactionStats> {
    let mut stats = CompactionStats {
        events_expired: expire(inner)?,
        ..CompactionStats::default()
    };
    let sealed = inner.log.sealed_segments();
    let mut candidates = {
        let mut core = inner.core.lock();
        // Dead letters past the dead retention become finished events like any other, and
        // finished jobs' summaries past it are forgotten.
        core.expire_dead(inner.clock.now_ms());
        core.candidates(&sealed, min_dead, full)
    };
    let mut spent = 0u64;
    while let Some(candidate) = candidates.pop() {
        if spent > 0 && spent + candidate.data_len > budget_bytes {
            break;
        }
        spent += candidate.data_len;
        compact_one(inner, candidate.segment, &mut stats)?;
    }
    inner
        .metrics
        .compaction_passes
        .fetch_add(1, Ordering::Relaxed);
    Ok(stats)
}

/// Writes a drop (expired) record for every Scheduled event past retention, by the rule
/// delivery applies (`Options::past_retention`): retention counts from the first due time.
/// Only events due in the past can be past it (a retry due past retention drops its event
/// instead). An event never attempted is still due at its first due time; for one retried
/// since, the first due time is read from its publish record.
///
/// Delivery applies the same rule to every event it takes, so once the engine is started
/// there is nothing to do here; nor when nothing is due. Otherwise the scan is linear in the
/// pending events.
///
/// The events are claimed under the engine's lock, out of the wheel, so the scheduler cannot
/// hand them to delivery too, and each expired event gets one drop and is counted once. An
/// event already taken out of the wheel by the scheduler is left to delivery.
fn expire(inner: &Arc<Inner>) -> Result<u64> {
    let now_ms = inner.clock.now_ms();
    if inner.started.load(Ordering::Acquire) {
        return Ok(0);
    }
    type Due = (EventId, u32, i64, Option<(Location, Option<SegmentReader>)>);
    let due: Vec<Due> = {
        let core = inner.core.lock();
        if !core.any_due(now_ms) {
            return Ok(0);
        }
        core.overdue(now_ms)
            .into_iter()
            .map(|o| {
                // The reader is taken under the lock that compaction swaps segments under.
                let publish = (o.attempts > 0).then(|| {
                    let reader = inner.log.segment_reader(u64::from(o.location.segment));
                    (o.location, reader)
                });
                (o.id, o.attempts, o.due_ms, publish)
            })
            .collect()
    };
    let past: Vec<(EventId, u32)> = due
        .into_iter()
        .filter_map(|(id, attempts, due_ms, publish)| {
            // A publish that cannot be read: its current due time is a later bound.
            let first_due_ms = publish
                .and_then(|p| super::delivery::read_publish(id, p))
                .map_or(due_ms, |(_, _, _, first_due_ms)| first_due_ms);
            inner
                .options
                .past_retention(first_due_ms, now_ms)
                .then_some((id, attempts))
        })
        .collect();
    let expired: Vec<(EventId, u32)> = {
        let mut core = inner.core.lock();
        past.into_iter()
            .filter(|&(id, attempts)| core.claim(id, attempts))
            .collect()
    };
    if expired.is_empty() {
        return Ok(0);
    }
    let records: Vec<Record<'_>> = expired
        .iter()
        .map(|&(event, attempt)| {
            Record::Drop(crate::format::Drop {
                event,
                attempt,
                dropped_ms: now_ms,
                reason: DropReason::Expired,
                message: EXPIRED_MESSAGE,
            })
        })
        .collect();
    // Released once every drop is applied (see `Inner::cancel_order`).
    let order = inner.cancel_order.read();
    let positions = match inner.log.append_all(&records) {
        Ok(positions) => positions,
        Err(e) => {
            let mut core = inner.core.lock();
            for &(id, _) in &expired {
                core.unclaim(id);
            }
            return Err(e);
        }
    };
    let mut n = 0;
    let mut deaths = Vec::new();
    for (record, pos) in records.iter().zip(positions) {
        let mut stats = None;
        let applied = inner.apply_then(pos, record, |core, applied| {
            if matches!(applied, Ok(Applied::Changed)) {
                stats = record
                    .event()
                    .and_then(|id| core.index().name_of(id))
                    .map(|name| inner.metrics.names.get(name));
            }
        });
        if let Ok(Applied::Changed) = applied {
            n += 1;
            deaths.extend(record.event().map(|id| (id, pos)));
            if let Some(stats) = stats {
                stats.attempt(super::names::Outcome::Expired);
                stats.dead_letter();
            }
        }
    }
    drop(order);
    inner.announce_dead(deaths);
    inner.metrics.expired.fetch_add(n, Ordering::Relaxed);
    Ok(n)
}

/// What compaction decided for the ids a segment mentions.
struct Decisions {
    /// Publish frames (offsets in the segment) to keep.
    publishes: HashSet<u64>,
    /// Events whose records in the segment are kept, and which of them.
    events: HashMap<EventId, Keep>,
    /// Jobs whose cancel records are kept.
    jobs: HashSet<JobId>,
    /// Pause records (sequence numbers) to keep: each name's latest.
    pauses: HashSet<u64>,
    /// The purge of dead letters to keep (its sequence number): the latest.
    purge: Option<u64>,
    /// Jobs whose job-done record is kept: their summary is within the retention.
    jobs_done: HashSet<JobId>,
}

impl Decisions {
    fn keeps(&self, pos: Position, record: &Record<'_>) -> bool {
        match record {
            Record::Publish(_) => self.publishes.contains(&pos.offset),
            Record::Pause(_) => self.pauses.contains(&pos.seq),
            Record::PurgeDead(_) => self.purge == Some(pos.seq),
            Record::JobDone(j) => self.jobs_done.contains(&j.job),
            Record::Cancel(c) => match c.target {
                CancelTarget::Event(e) => self.events.contains_key(&e),
                CancelTarget::Job(j) => self.jobs.contains(&j),
            },
            other => other
                .event()
                .and_then(|e| self.events.get(&e))
                .is_some_and(|keep| keep.keeps(other)),
        }
    }
}

fn compact_one(inner: &Arc<Inner>, id: u64, stats: &mut CompactionStats) -> Result<()> {
    let Ok(segment) = u32::try_from(id) else {
        return Ok(());
    };
    // Phase 1, no lock: which ids does the segment mention, and whose publish is in it?
    let (mut events, mut published, mut jobs) = (HashSet::new(), Vec::new(), HashSet::new());
    // Replace records (at offset, the new event) and the event each cancelled; pause records.
    let (mut replaces, mut pauses, mut purges) = (Vec::new(), Vec::new(), Vec::new());
    let mut jobs_done = Vec::new();
    // Schedule records: the schedule, the sequence number and the offset of each.
    let mut schedules = Vec::new();
    inner
        .log
        .visit_segment(id, &mut |pos, record| match record {
            Record::Publish(p) => {
                for e in p.events() {
                    events.insert(e.id);
                    published.push(e.id);
                }
                if let Some(replaced) = p.options().and_then(|o| o.replaces) {
                    replaces.push((pos.offset, replaced));
                    events.insert(replaced);
                }
                if let Some(d) = p.schedule() {
                    schedules.push((d.id.to_string(), pos.seq, pos.offset));
                }
            }
            Record::Pause(p) => pauses.push((p.name.to_string(), pos.seq)),
            Record::PurgeDead(_) => purges.push(pos.seq),
            Record::JobDone(j) => jobs_done.push(j.job),
            Record::Cancel(c) => match c.target {
                CancelTarget::Event(e) => {
                    events.insert(e);
                }
                CancelTarget::Job(j) => {
                    jobs.insert(j);
                }
            },
            other => events.extend(other.event()),
        })?;
    // Phase 2, under the lock: decide.
    let now_ms = inner.clock.now_ms();
    let decisions = {
        let mut core = inner.core.lock();
        core.sweep_keys(now_ms);
        let index = core.index();
        // A pending event's publish, and the record holding its body if it was restated; a
        // dead letter's, the same; a finished event's publish while its key's window is open
        // (so the key stays taken across a restart), or while its job's counts are not yet
        // in a job-done record (so they are never lost).
        let mut publishes: HashSet<u64> = HashSet::new();
        for e in events.iter().filter_map(|e| core.event(*e)) {
            let dead = index.is_dead(e.id);
            if e.state.is_pending()
                || dead
                || index.window_open(e.id, now_ms)
                || index.awaits_summary(e.id)
            {
                if e.location.segment == segment {
                    publishes.insert(u64::from(e.location.offset));
                }
                if e.body_at.segment == segment && (e.state.is_pending() || dead) {
                    publishes.insert(u64::from(e.body_at.offset));
                }
            }
        }
        // Each schedule's latest record: its definition (and its occurrence's publish, whose
        // history is then kept with it, so that a replay finds that occurrence finished).
        for (schedule, seq, offset) in &schedules {
            if core.latest_schedule(schedule, *seq) {
                publishes.insert(*offset);
            }
        }
        // A replace record also cancels the event it replaced: kept while that event's
        // publish is, so the cancel outlives it (no resurrection).
        for &(offset, replaced) in &replaces {
            let replaced_kept = core.event(replaced).is_some_and(|h| {
                h.location.segment != segment || publishes.contains(&u64::from(h.location.offset))
            });
            if replaced_kept {
                publishes.insert(offset);
            }
        }
        let pauses = pauses
            .iter()
            .filter(|(name, seq)| core.latest_pause(name, *seq))
            .map(|&(_, seq)| seq)
            .collect();
        let kept_events = events
            .iter()
            .filter_map(|&e| Some((e, core.keep_rule(e, segment, &publishes)?)))
            .collect();
        let kept_jobs = jobs
            .iter()
            .copied()
            .filter(|j| core.job_stats(*j).is_some())
            .collect();
        let purge = purges.into_iter().find(|&seq| core.latest_purge(seq));
        let jobs_done = jobs_done
            .into_iter()
            .filter(|&j| core.index().keeps_job_done(j, now_ms))
            .collect();
        Decisions {
            publishes,
            events: kept_events,
            jobs: kept_jobs,
            pauses,
            purge,
            jobs_done,
        }
    };
    // Phase 3, no lock: rewrite and swap on disk.
    let mut kept = SegmentBytes::default();
    let compacted = inner.log.compact_segment(id, &mut |pos, record| {
        let keep = decisions.keeps(pos, record);
        if keep {
            match record {
                Record::Publish(_) => kept.publish += frame_len(record),
                _ => kept.history += frame_len(record),
            }
        }
        keep
    })?;
    // Phase 4, under the lock: make it visible, move locations, release dropped events.
    let released = {
        let mut core = inner.core.lock();
        inner.log.install_compacted(&compacted);
        published.sort_unstable();
        published.dedup();
        core.install_rewrite(segment, &published, &compacted.moved, kept)
    };
    if compacted.removed() {
        stats.segments_removed += 1;
    } else {
        stats.segments_rewritten += 1;
    }
    stats.bytes_before += compacted.bytes_before;
    stats.bytes_after += compacted.bytes_after;
    stats.records_dropped += compacted.records_before - compacted.records_kept;
    stats.events_released += released;
    inner.metrics.compacted_bytes.fetch_add(
        compacted.bytes_before - compacted.bytes_after,
        Ordering::Relaxed,
    );
    inner
        .metrics
        .compaction_written_bytes
        .fetch_add(compacted.bytes_after, Ordering::Relaxed);
    Ok(())
}
