//! Dead letters: events dropped (retries exhausted, maximum age, past retention) or
//! acknowledged with no handler, kept — their entry, publish and history — until the dead
//! retention passes, a redrive or a purge forgets them.
//!
//! A dead letter costs its entry (which it keeps: a finished event is held until compaction
//! drops its publish, and compaction keeps a dead letter's) and 24 bytes here: its id, when
//! it died, and where the record that killed it lies (the drop, or the ack of an ignored
//! event), for its reason and message. The list is in log order of those records, so a purge
//! forgets a prefix and a rewrite of one segment moves one run of it; an entry's `DEAD` bit
//! answers "is this event a dead letter" in O(1).

use super::{DEAD, EventId, Index, Location};
use std::collections::VecDeque;

/// One dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadRef {
    /// The event.
    pub id: EventId,
    /// When it died (the record's time), Unix epoch ms.
    pub dropped_ms: i64,
    /// Where its drop (or ignored ack) record lies.
    pub at: Location,
}

/// The dead letters, in log order of their records.
#[derive(Default)]
pub(super) struct DeadList {
    list: VecDeque<DeadRef>,
    /// How long a dead letter is kept, ms; `None`: until purged (the reader's view).
    retention_ms: Option<i64>,
}

/// Whether something that died (or finished) at `at_ms` is still kept at `now_ms` under
/// `retention_ms` (`None`: until purged).
pub(super) fn kept(retention_ms: Option<i64>, at_ms: i64, now_ms: i64) -> bool {
    retention_ms.is_none_or(|r| at_ms.saturating_add(r) > now_ms)
}

fn key(l: Location) -> (u32, u32) {
    (l.segment, l.offset)
}

impl Index {
    /// Keeps dead letters `ms` after they died (0: none is kept). Without a call they are
    /// kept until purged, as the reader, which does not know the engine's options, shows them.
    pub fn set_dead_retention(&mut self, ms: i64) {
        self.dead.retention_ms = Some(ms.max(0));
    }

    /// How long dead letters (and finished jobs' summaries) are kept, ms; `None`: until
    /// purged.
    pub(super) fn dead_retention_ms(&self) -> Option<i64> {
        self.dead.retention_ms
    }

    /// `id` died by the record at `at`, at `dropped_ms`.
    pub(super) fn add_dead(&mut self, id: EventId, at: Location, dropped_ms: i64) {
        if self.dead.retention_ms == Some(0) {
            return;
        }
        let Ok(e) = self.held_mut(id) else {
            return;
        };
        if e.tag & DEAD != 0 {
            return;
        }
        e.tag |= DEAD;
        let item = DeadRef { id, dropped_ms, at };
        // Records are applied in log order but for the few a concurrent writer applies late.
        let list = &mut self.dead.list;
        let mut i = list.len();
        while i > 0 && key(list[i - 1].at) > key(at) {
            i -= 1;
        }
        list.insert(i, item);
    }

    /// Forgets the dead letter `id` (redriven); false if it is none.
    pub(super) fn forget_dead(&mut self, id: EventId) -> bool {
        if !self.is_dead(id) {
            return false;
        }
        if let Some(i) = self.dead.list.iter().rposition(|d| d.id == id) {
            self.dead.list.remove(i);
        }
        self.clear_dead_bit(id);
        true
    }

    /// Forgets every dead letter whose record lies before `at` (a purge there); how many.
    pub(super) fn purge_dead_before(&mut self, at: Location) -> u64 {
        let n = self.dead.list.partition_point(|d| key(d.at) < key(at));
        let gone: Vec<DeadRef> = self.dead.list.drain(..n).collect();
        for d in &gone {
            self.clear_dead_bit(d.id);
        }
        gone.len() as u64
    }

    fn clear_dead_bit(&mut self, id: EventId) {
        if let Ok(e) = self.held_mut(id) {
            e.tag &= !DEAD;
        }
    }

    /// Whether `id` is a dead letter (kept, not yet past the dead retention's sweep).
    pub fn is_dead(&self, id: EventId) -> bool {
        self.held(id).is_ok_and(|e| e.tag & DEAD != 0)
    }

    /// Forgets the dead letters past the retention at `now_ms`; how many. The list is in log
    /// order, which is death order but for late applies, so this stops at the first one
    /// still kept: a late one waits for the next sweep.
    pub fn expire_dead(&mut self, now_ms: i64) -> u64 {
        let Some(retention) = self.dead.retention_ms else {
            return 0;
        };
        let mut n = 0;
        while let Some(d) = self.dead.list.front().copied() {
            if d.dropped_ms.saturating_add(retention) > now_ms {
                break;
            }
            self.dead.list.pop_front();
            self.clear_dead_bit(d.id);
            n += 1;
        }
        n
    }

    /// Whether a dead letter that died at `dropped_ms` is still kept at `now_ms`.
    pub fn dead_kept(&self, dropped_ms: i64, now_ms: i64) -> bool {
        kept(self.dead.retention_ms, dropped_ms, now_ms)
    }

    /// The dead letters still kept at `now_ms`, newest (latest record) first.
    pub fn dead_letters(&self, now_ms: i64) -> impl Iterator<Item = DeadRef> + '_ {
        self.dead
            .list
            .iter()
            .rev()
            .copied()
            .filter(move |d| self.dead_kept(d.dropped_ms, now_ms))
    }

    /// How many dead letters the list holds (some may be past the retention until the next
    /// sweep).
    pub fn dead_count(&self) -> u64 {
        self.dead.list.len() as u64
    }

    /// A rewrite of `segment` moved its kept frames (`moved`: old and new offsets, sorted):
    /// the dead letters whose record lay there follow it. One whose record was not kept (it
    /// cannot be: compaction keeps a dead letter's history) is forgotten.
    pub fn move_dead(&mut self, segment: u32, moved: &[(u64, u64)]) {
        let list = &mut self.dead.list;
        let start = list.partition_point(|d| d.at.segment < segment);
        let end = list.partition_point(|d| d.at.segment <= segment);
        let mut lost = Vec::new();
        for d in list.range_mut(start..end) {
            match moved.binary_search_by_key(&u64::from(d.at.offset), |&(old, _)| old) {
                Ok(i) => d.at.offset = moved[i].1 as u32,
                Err(_) => lost.push(d.id),
            }
        }
        for id in lost {
            self.forget_dead(id);
        }
    }

    /// Heap bytes of the dead list.
    pub(super) fn dead_memory_bytes(&self) -> usize {
        self.dead.list.capacity() * std::mem::size_of::<DeadRef>()
    }
}
