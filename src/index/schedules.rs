//! Recurring schedules: each schedule's definition and the occurrence it last published,
//! as the latest kind-9 record of its id says.
//!
//! A schedule has at most one pending occurrence: the record that publishes an occurrence
//! cancels the pending one it replaces (a catch-up, a redefinition), and the next occurrence
//! is published only once the pending one is finished. When a schedule's pending occurrence
//! finishes (acknowledged, dropped, cancelled, expired), the schedule goes on the *idle*
//! list; the engine takes that list and publishes each schedule's next occurrence. A crash
//! between the finish and the next record leaves the schedule idle after replay, so the
//! engine publishes the next one at start: no occurrence is lost, and none is published twice,
//! because the finish and the next occurrence are each one record.

use super::{Applied, EventId, EventState, Index, RejectKind, Rejected, reject};
use crate::cron::Cron;
use crate::format::{Publish, ScheduleDef};
use std::collections::HashMap;

/// How a schedule's occurrences fall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// At the times a cron expression (UTC) matches.
    Cron(Cron),
    /// Every `every_ms` after `anchor_ms` (the time it was first scheduled).
    Every { anchor_ms: i64, every_ms: u64 },
}

impl Rule {
    /// The first occurrence strictly after `after_ms`, if any.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match *self {
            Rule::Cron(ref cron) => cron.next_after(after_ms),
            Rule::Every {
                anchor_ms,
                every_ms,
            } => {
                let every = i64::try_from(every_ms).ok().filter(|&e| e > 0)?;
                if after_ms < anchor_ms {
                    return anchor_ms.checked_add(every);
                }
                let k = (after_ms - anchor_ms) / every + 1;
                k.checked_mul(every)?.checked_add(anchor_ms)
            }
        }
    }

    /// The rule of a kind-9 record, or why it has none.
    pub fn of(def: &ScheduleDef<'_>) -> Result<Rule, String> {
        if def.every_ms > 0 {
            Ok(Rule::Every {
                anchor_ms: def.anchor_ms,
                every_ms: def.every_ms,
            })
        } else {
            Cron::parse(def.cron).map(Rule::Cron)
        }
    }
}

/// A schedule as the index holds it.
#[derive(Clone, Debug)]
pub struct ScheduleState {
    /// The name its occurrences are published under.
    pub name: Box<str>,
    pub rule: Rule,
    /// The catch-up code of the record (see `format::CATCH_UP_*`).
    pub catch_up: u8,
    /// The occurrence the latest record published (its publish holds the body).
    pub event: EventId,
    /// That occurrence's time.
    pub last_ms: i64,
    /// Whether that occurrence is still pending.
    pub pending: bool,
}

/// The schedules of an index.
#[derive(Default)]
pub(super) struct Schedules {
    table: HashMap<Box<str>, ScheduleState>,
    /// Pending occurrences, by event: the schedule that published each.
    occurrences: HashMap<EventId, Box<str>>,
    /// Schedules whose pending occurrence finished, in the order they did.
    idle: Vec<Box<str>>,
}

impl Index {
    /// Applies a kind-9 record: a definition with the occurrence it publishes (after the
    /// pending one it replaces is cancelled), or a removal (which cancels the pending one).
    pub(super) fn apply_schedule(
        &mut self,
        loc: super::Location,
        p: &Publish<'_>,
        def: &ScheduleDef<'_>,
        effects: &mut Vec<super::Effect>,
    ) -> Result<Applied, Rejected> {
        let replaced = p.options().and_then(|o| o.replaces);
        let Some(e) = p.events().next() else {
            // A removal.
            let existed = self.schedules.table.remove(def.id).is_some();
            let cancelled = self.cancel_occurrence(replaced, effects);
            self.schedules.idle.retain(|id| &**id != def.id);
            return Ok(if existed || cancelled {
                Applied::Changed
            } else {
                Applied::Duplicate
            });
        };
        if !self.publish_is_new(e.id) {
            return Ok(Applied::Duplicate);
        }
        let rule = Rule::of(def).map_err(|why| {
            reject(
                Some(e.id),
                RejectKind::Limit,
                format!("schedule {:?}: {why}", def.id),
            )
        })?;
        self.cancel_occurrence(replaced, effects);
        let applied = self.apply_publish(loc, p, effects)?;
        let id: Box<str> = def.id.into();
        self.schedules.idle.retain(|i| *i != id);
        // A redefinition whose replaced occurrence had finished: forget that one's mapping.
        if let Some(old) = self.schedules.table.get(&id)
            && old.pending
        {
            self.schedules.occurrences.remove(&old.event);
        }
        let pending = self.state(e.id).is_some_and(EventState::is_pending);
        if pending {
            self.schedules.occurrences.insert(e.id, id.clone());
        }
        let state = ScheduleState {
            name: e.name.into(),
            rule,
            catch_up: def.catch_up,
            event: e.id,
            last_ms: e.due_ms,
            pending,
        };
        self.schedules.table.insert(id.clone(), state);
        if !pending {
            self.schedules.idle.push(id);
        }
        Ok(applied)
    }

    /// Cancels a schedule's pending occurrence `replaced` (if still pending) without
    /// marking its schedule idle. Whether it was pending.
    fn cancel_occurrence(
        &mut self,
        replaced: Option<EventId>,
        effects: &mut Vec<super::Effect>,
    ) -> bool {
        let Some(replaced) = replaced else {
            return false;
        };
        self.schedules.occurrences.remove(&replaced);
        if self.state(replaced).is_some_and(EventState::is_pending) {
            self.transition(replaced, EventState::Cancelled, 0, effects);
            true
        } else {
            false
        }
    }

    /// Called when `id` stops being pending: if it was a schedule's pending occurrence, the
    /// schedule becomes idle.
    pub(super) fn occurrence_finished(&mut self, id: EventId) {
        if self.schedules.occurrences.is_empty() {
            return;
        }
        let Some(schedule) = self.schedules.occurrences.remove(&id) else {
            return;
        };
        if let Some(s) = self.schedules.table.get_mut(&schedule)
            && s.event == id
        {
            s.pending = false;
            self.schedules.idle.push(schedule);
        }
    }

    /// Takes the schedules whose occurrence finished since the last call.
    pub fn take_idle_schedules(&mut self) -> Vec<Box<str>> {
        std::mem::take(&mut self.schedules.idle)
    }

    /// Puts schedules back on the idle list (their next occurrence could not be written).
    pub fn requeue_idle_schedules(&mut self, ids: Vec<Box<str>>) {
        self.schedules.idle.extend(ids);
    }

    /// Whether a schedule waits for its next occurrence.
    pub fn has_idle_schedules(&self) -> bool {
        !self.schedules.idle.is_empty()
    }

    /// The schedule `id`.
    pub fn schedule(&self, id: &str) -> Option<&ScheduleState> {
        self.schedules.table.get(id)
    }

    /// Every schedule, in no particular order.
    pub fn schedules(&self) -> impl Iterator<Item = (&str, &ScheduleState)> {
        self.schedules.table.iter().map(|(id, s)| (&**id, s))
    }

    /// How many schedules there are.
    pub fn schedule_count(&self) -> usize {
        self.schedules.table.len()
    }

    /// The schedule whose occurrence `id` is, while it is pending.
    pub fn occurrence_of(&self, id: EventId) -> Option<&str> {
        self.schedules.occurrences.get(&id).map(|s| &**s)
    }

    /// An estimate of the bytes the schedules take.
    pub(super) fn schedule_memory_bytes(&self) -> usize {
        let s = &self.schedules;
        let per = std::mem::size_of::<(Box<str>, ScheduleState)>() + 1;
        s.table.capacity() * per
            + s.table
                .iter()
                .map(|(id, st)| 2 * id.len() + st.name.len() + std::mem::size_of::<Cron>())
                .sum::<usize>()
            + s.occurrences.capacity() * (std::mem::size_of::<(EventId, Box<str>)>() + 1)
    }
}
