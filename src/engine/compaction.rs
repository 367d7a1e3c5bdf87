//! Compaction: rewrite sealed segments without the records of finished events, so that disk
//! use follows the live data, and free the index entries of those events.
//!
//! A pass (`compact_now`, or the background thread every `compaction_interval`):
//! 1. **Retention**: a Scheduled event more than the retention past its first due time (it
//!    was not delivered: the engine was not started, say) gets a drop record (expired), by the
//!    rule delivery applies (`Options::past_retention`).
//! 2. **Choice**: for each sealed segment, its live bytes are the frames of publish records
//!    that still hold a pending event — known from the index, no scan of the log — and the
//!    rest is dead. Segments whose dead share is at least the threshold are compacted, most
//!    dead first, up to a byte budget per pass.
//! 3. **Rewrite** (`Log::compact_segment`): a record is kept when
//!    - it is a publish with a pending event (a job's publish is kept whole while any of its
//!      events is pending, so job stats survive a restart);
//!    - it names an event the index still holds whose publish is kept — in this segment or in
//!      another one. An ack, cancel or drop whose publish still exists elsewhere is therefore
//!      never dropped: no finished event comes back after a restart (no resurrection);
//!    - it cancels a job the index still holds.
//! 4. **Swap**: under the engine's lock, the new segment becomes visible to readers, the
//!    locations of moved publishes are updated and the events whose publish was dropped are
//!    released from the index (memory follows live events).
//!
//! Architecture Invariant: compaction decides from the index, whose finished states never
//! become pending again; a decision that is stale by the time of the swap can only keep too
//! much, never drop a live record.

use super::Inner;
use super::options::EXPIRED_MESSAGE;
use crate::error::Result;
use crate::format::{CancelTarget, Record};
use crate::ids::{EventId, JobId};
use crate::index::{Applied, EventState, Location, NO_TIMER};
use crate::log::SegmentReader;
use crate::retry::DropReason;
use crate::wheel::TimerHandle;
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

/// Runs one pass. `min_dead` is the dead share (0..=1) a segment needs to be compacted;
/// `budget_bytes` bounds the data read per pass.
pub(crate) fn pass(
    inner: &Arc<Inner>,
    min_dead: f64,
    budget_bytes: u64,
) -> Result<CompactionStats> {
    let mut stats = CompactionStats {
        events_expired: expire(inner)?,
        ..CompactionStats::default()
    };
    let mut candidates = choose(inner, min_dead);
    let mut spent = 0u64;
    while let Some((id, data_len)) = candidates.pop() {
        if spent > 0 && spent + data_len > budget_bytes {
            break;
        }
        spent += data_len;
        compact_one(inner, id, &mut stats)?;
    }
    Ok(stats)
}

/// Writes a drop (expired) record for every Scheduled event past retention, by the rule
/// delivery applies (`Options::past_retention`): retention counts from the first due time.
/// Only events due in the past can be past it (a retry due past retention drops its event
/// instead). An event never attempted is still due at its first due time; for one retried
/// since, the first due time is read from its publish record.
///
/// The events are claimed under the engine's lock, out of the wheel, so the scheduler cannot
/// hand them to delivery too — which also drops an event past retention — and each expired
/// event gets one drop and is counted once. An event already taken out of the wheel by the
/// scheduler (its timer is `NO_TIMER`) is left to delivery.
fn expire(inner: &Arc<Inner>) -> Result<u64> {
    let now_ms = inner.clock.now_ms();
    type Due = (EventId, u32, i64, Option<(Location, Option<SegmentReader>)>);
    let due: Vec<Due> = {
        let core = inner.core.lock();
        core.index
            .scheduled()
            .filter(|&(_, due_ms)| due_ms < now_ms)
            .filter_map(|(id, due_ms)| {
                let i = core.index.get(id)?;
                if i.timer == NO_TIMER {
                    return None;
                }
                // The reader is taken under the lock that compaction swaps segments under.
                let publish = (i.attempts > 0).then(|| {
                    let reader = inner.log.segment_reader(u64::from(i.location.segment));
                    (i.location, reader)
                });
                Some((id, i.attempts, due_ms, publish))
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
        let mut claimed = Vec::with_capacity(past.len());
        for (id, attempts) in past {
            // Still scheduled, still in the wheel, not attempted since it was looked at.
            let Some(info) = core.index.get(id) else {
                continue;
            };
            if info.state != EventState::Scheduled
                || info.timer == NO_TIMER
                || info.attempts != attempts
            {
                continue;
            }
            let timer = info.timer;
            if let Some(handle) = TimerHandle::from_u64(timer) {
                core.wheel.cancel(handle);
            }
            core.index.set_timer(id, NO_TIMER);
            claimed.push((id, attempts));
        }
        claimed
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
    let positions = match inner.log.append_all(&records) {
        Ok(positions) => positions,
        Err(e) => {
            unclaim(inner, &expired);
            return Err(e);
        }
    };
    let mut n = 0;
    for (record, pos) in records.iter().zip(positions) {
        if let Ok(Applied::Changed) = inner.apply(pos, record) {
            n += 1;
        }
    }
    inner.metrics.expired.fetch_add(n, Ordering::Relaxed);
    Ok(n)
}

/// Puts claimed events whose drop could not be written back in the wheel, due at once.
fn unclaim(inner: &Inner, claimed: &[(EventId, u32)]) {
    let mut core = inner.core.lock();
    for &(id, _) in claimed {
        let Some(info) = core.index.get(id) else {
            continue;
        };
        if info.state != EventState::Scheduled || info.timer != NO_TIMER {
            continue;
        }
        let due_ms = info.due_ms;
        let handle = core.wheel.insert(due_ms.max(0) as u64, id.0);
        core.index.set_timer(id, handle.to_u64());
    }
}

/// Sealed segments worth compacting, least dead last (the caller pops from the end).
fn choose(inner: &Arc<Inner>, min_dead: f64) -> Vec<(u64, u64)> {
    let sealed = inner.log.sealed_segments();
    let live_publishes: HashSet<(u32, u32)> = {
        let core = inner.core.lock();
        core.index
            .held_events()
            .filter(|e| e.state.is_pending())
            .map(|e| (e.location.segment, e.location.offset))
            .collect()
    };
    let mut live_bytes: HashMap<u64, u64> = HashMap::new();
    for (segment, offset) in live_publishes {
        let len = inner
            .log
            .segment_reader(u64::from(segment))
            .and_then(|r| r.read(u64::from(offset)).ok())
            .map_or(0, |r| {
                r.payload().len() as u64 + crate::format::FRAME_HEADER_LEN as u64
            });
        *live_bytes.entry(u64::from(segment)).or_default() += len;
    }
    let header = crate::format::SEGMENT_HEADER_LEN as u64;
    let mut candidates: Vec<(f64, u64, u64)> = sealed
        .iter()
        .filter(|s| s.data_len > header)
        .filter_map(|s| {
            let data = s.data_len - header;
            let live = live_bytes.get(&s.id).copied().unwrap_or(0).min(data);
            let dead = (data - live) as f64 / data as f64;
            (dead > 0.0 && dead >= min_dead).then_some((dead, s.id, s.data_len))
        })
        .collect();
    candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    candidates
        .into_iter()
        .map(|(_, id, len)| (id, len))
        .collect()
}

/// What compaction decided for the ids a segment mentions.
struct Decisions {
    /// Publish frames (offsets in the segment) to keep.
    publishes: HashSet<u64>,
    /// Events whose records in the segment are kept.
    events: HashSet<EventId>,
    /// Jobs whose cancel records are kept.
    jobs: HashSet<JobId>,
}

fn compact_one(inner: &Arc<Inner>, id: u64, stats: &mut CompactionStats) -> Result<()> {
    let Ok(segment) = u32::try_from(id) else {
        return Ok(());
    };
    // Phase 1, no lock: which ids does the segment mention?
    let (mut events, mut jobs) = (HashSet::new(), HashSet::new());
    inner.log.visit_segment(id, &mut |_, record| match record {
        Record::Publish(p) => events.extend(p.events().map(|e| e.id)),
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
    let decisions = {
        let core = inner.core.lock();
        let held: Vec<_> = events.iter().filter_map(|e| core.index.get(*e)).collect();
        let publishes: HashSet<u64> = held
            .iter()
            .filter(|e| e.state.is_pending() && e.location.segment == segment)
            .map(|e| u64::from(e.location.offset))
            .collect();
        let kept_events = held
            .iter()
            .filter(|e| {
                e.location.segment != segment || publishes.contains(&u64::from(e.location.offset))
            })
            .map(|e| e.id)
            .collect();
        let kept_jobs = jobs
            .iter()
            .copied()
            .filter(|j| core.index.job_stats(*j).is_some())
            .collect();
        Decisions {
            publishes,
            events: kept_events,
            jobs: kept_jobs,
        }
    };
    // Phase 3, no lock: rewrite and swap on disk.
    let compacted = inner
        .log
        .compact_segment(id, &mut |pos, record| match record {
            Record::Publish(_) => decisions.publishes.contains(&pos.offset),
            Record::Cancel(c) => match c.target {
                CancelTarget::Event(e) => decisions.events.contains(&e),
                CancelTarget::Job(j) => decisions.jobs.contains(&j),
            },
            other => other.event().is_some_and(|e| decisions.events.contains(&e)),
        })?;
    // Phase 4, under the lock: make it visible, move locations, release dropped events.
    let mut released = 0u64;
    {
        let mut core = inner.core.lock();
        inner.log.install_compacted(&compacted);
        let in_segment: Vec<(EventId, u32, EventState)> = core
            .index
            .held_events()
            .filter(|e| e.location.segment == segment)
            .map(|e| (e.id, e.location.offset, e.state))
            .collect();
        for (event, offset, state) in in_segment {
            let offset = u64::from(offset);
            match compacted
                .moved
                .binary_search_by_key(&offset, |&(old, _)| old)
            {
                Ok(i) if decisions.publishes.contains(&offset) => {
                    let new = compacted.moved[i].1 as u32;
                    core.index.set_location(
                        event,
                        Location {
                            segment,
                            offset: new,
                        },
                    );
                }
                _ if !state.is_pending() && core.index.release(event) => released += 1,
                // Pending but its publish was not kept: impossible, since decisions only keep
                // more than needed; leave the entry as it is.
                _ => {}
            }
        }
    }
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
    Ok(())
}
