//! Recurring schedules: [`Recurring`] rules, the catch-up at [`Engine::start`], and the
//! schedules thread, which publishes each schedule's next occurrence once the pending one
//! has finished.
//!
//! Every occurrence is published by a kind-9 record that also holds the schedule's
//! definition, so the log always says which occurrence a schedule published last. The next
//! one is written only after the previous one's finish is applied, under `schedule_lock`,
//! so a schedule never has two pending occurrences; a crash between the finish and the next
//! record leaves the schedule idle, and the next start publishes it (by its catch-up policy).
//!
//! [`Engine::start`]: super::Engine::start

use super::{Engine, Inner};
use crate::cron::Cron;
use crate::error::{Error, Result};
use crate::format::{
    CATCH_UP_ALL, CATCH_UP_LATEST, CATCH_UP_SKIP, MAX_SCHEDULE_ID_LEN, Publish, PublishEntry,
    Record, ScheduleDef, validate_name,
};
use crate::ids::EventId;
use crate::index::{Rule, ScheduleState};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Most records the schedules thread writes in one group (one sync), so that one append's
/// records stay a few megabytes at most.
const GROUP: usize = 1024;

/// How many occurrences missed while the engine was closed [`CatchUp::All`] publishes, per
/// schedule and start; the rest are skipped.
pub const CATCH_UP_ALL_CAP: u32 = 1_000;

/// What a schedule does about occurrences that fell due while the engine was closed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// None of them is published; the schedule goes on from now.
    Skip,
    /// Only the latest of them is published, at start.
    #[default]
    Latest,
    /// Each of them is published, one after the other from start (at most
    /// [`CATCH_UP_ALL_CAP`]; later ones are skipped).
    All,
}

impl CatchUp {
    fn code(self) -> u8 {
        match self {
            CatchUp::Skip => CATCH_UP_SKIP,
            CatchUp::Latest => CATCH_UP_LATEST,
            CatchUp::All => CATCH_UP_ALL,
        }
    }
}

/// When a schedule's occurrences fall: a cron expression or a fixed interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recurring {
    rule: RuleSpec,
    catch_up: CatchUp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RuleSpec {
    Cron(Cron),
    Every(Duration),
}

impl Recurring {
    /// At the times a cron expression matches, in UTC: five fields (minute, hour, day of
    /// month, month, day of week) or six with seconds first; lists, ranges, steps, and names
    /// of months and days (`0 9 * * MON-FRI`). A malformed expression is an error.
    pub fn cron(expr: &str) -> Result<Recurring> {
        let cron = Cron::parse(expr)
            .map_err(|why| Error::invalid(format!("cron expression {expr:?}: {why}")))?;
        if cron.text().len() > MAX_SCHEDULE_ID_LEN {
            return Err(Error::LimitExceeded {
                what: "cron expression bytes",
                found: cron.text().len() as u64,
                max: MAX_SCHEDULE_ID_LEN as u64,
            });
        }
        Ok(Recurring {
            rule: RuleSpec::Cron(cron),
            catch_up: CatchUp::default(),
        })
    }

    /// Every `interval` (whole milliseconds, at least one), the first an interval after
    /// the schedule is made.
    pub fn every(interval: Duration) -> Recurring {
        Recurring {
            rule: RuleSpec::Every(interval),
            catch_up: CatchUp::default(),
        }
    }

    /// What to do about occurrences missed while the engine was closed (default
    /// [`CatchUp::Latest`]).
    pub fn catch_up(mut self, catch_up: CatchUp) -> Recurring {
        self.catch_up = catch_up;
        self
    }
}

/// A schedule, as [`Engine::schedules`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// The schedule's id.
    pub id: String,
    /// The event name its occurrences are published under.
    pub name: String,
    /// When its pending occurrence is due, Unix epoch ms; `None` while the next one is
    /// being published.
    pub next_due_ms: Option<i64>,
    /// Its rule: `cron 0 9 * * MON-FRI` or `every 60000ms`.
    pub rule: String,
    /// Its catch-up policy.
    pub catch_up: CatchUp,
}

impl ScheduleInfo {
    /// The schedule `id` as the index holds it.
    pub(crate) fn of(id: &str, s: &ScheduleState) -> ScheduleInfo {
        ScheduleInfo {
            id: id.to_string(),
            name: s.name.to_string(),
            next_due_ms: s.pending.then_some(s.last_ms),
            rule: match &s.rule {
                Rule::Cron(c) => format!("cron {}", c.text()),
                Rule::Every { every_ms, .. } => format!("every {every_ms}ms"),
            },
            catch_up: match s.catch_up {
                CATCH_UP_SKIP => CatchUp::Skip,
                CATCH_UP_ALL => CatchUp::All,
                _ => CatchUp::Latest,
            },
        }
    }

    /// Every schedule of an index, sorted by id.
    pub(crate) fn list(index: &crate::index::Index) -> Vec<ScheduleInfo> {
        let mut list: Vec<ScheduleInfo> = index
            .schedules()
            .map(|(id, s)| ScheduleInfo::of(id, s))
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }
}

impl Engine {
    /// Publishes an event of `name` with `body` at every occurrence of `recurring`, durably
    /// and across restarts, under the schedule `id` (1 to 255 bytes). Scheduling an id again
    /// replaces its schedule (and cancels its pending occurrence). Each occurrence is an
    /// ordinary event, due at the occurrence's time; [`Event::schedule`] names its schedule.
    /// A schedule has at most one pending occurrence: an occurrence that falls due while
    /// the previous one is still pending (its handler is slow, say) is skipped. A bad id,
    /// name, body or rule, or a rule that never fires, is an error and nothing is written.
    ///
    /// [`Event::schedule`]: super::Event::schedule
    pub fn schedule(
        &self,
        id: &str,
        name: &str,
        body: impl AsRef<[u8]>,
        recurring: Recurring,
    ) -> Result<()> {
        self.inner().schedule(id, name, body.as_ref(), &recurring)
    }

    /// Removes schedule `id` and cancels its pending occurrence, in one record. Whether
    /// there was such a schedule (nothing is written when there was not).
    pub fn unschedule(&self, id: &str) -> Result<bool> {
        self.inner().unschedule(id)
    }

    /// The schedules, sorted by id.
    pub fn schedules(&self) -> Vec<ScheduleInfo> {
        self.inner().schedules()
    }
}

/// Schedules catching up after a start with [`CatchUp::All`]: until when (the start's
/// time) and how many were published.
#[derive(Default)]
pub(crate) struct CatchingUp(HashMap<Box<str>, (i64, u32)>);

fn validate_schedule_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_SCHEDULE_ID_LEN {
        return Err(Error::invalid(format!(
            "schedule id of {} bytes; ids are 1 to 255 bytes",
            id.len()
        )));
    }
    Ok(())
}

/// The latest occurrence of `rule` after `after_ms` and at or before `now_ms`, if any.
fn latest_until(rule: &Rule, after_ms: i64, now_ms: i64) -> Option<i64> {
    // Look back over growing windows, so that the walk forward counts few occurrences.
    const WINDOWS_MS: [i64; 7] = [
        1_000,
        60_000,
        3_600_000,
        86_400_000,
        32 * 86_400_000,
        400 * 86_400_000,
        31 * 366 * 86_400_000,
    ];
    for window in WINDOWS_MS {
        let from = after_ms.max(now_ms.saturating_sub(window));
        let Some(mut t) = rule.next_after(from).filter(|&t| t <= now_ms) else {
            if from == after_ms {
                return None;
            }
            continue;
        };
        while let Some(n) = rule.next_after(t).filter(|&n| n <= now_ms) {
            t = n;
        }
        return Some(t);
    }
    None
}

/// What to publish for a schedule: the occurrence time, and whether it replaces the
/// pending occurrence.
struct Next {
    due_ms: i64,
    replaces: Option<EventId>,
}

/// A schedule's next occurrence, ready to be written.
struct Planned {
    id: Box<str>,
    state: ScheduleState,
    body: Vec<u8>,
    next: Next,
    event: EventId,
}

impl Planned {
    fn record(&self, now_ms: i64) -> Record<'_> {
        let (cron, every_ms, anchor_ms) = match &self.state.rule {
            Rule::Cron(c) => (c.text(), 0, 0),
            Rule::Every {
                anchor_ms,
                every_ms,
            } => ("", *every_ms, *anchor_ms),
        };
        let def = ScheduleDef {
            id: &self.id,
            cron,
            every_ms,
            anchor_ms,
            catch_up: self.state.catch_up,
            removed: false,
        };
        let entry = PublishEntry {
            id: self.event,
            due_ms: self.next.due_ms,
            name: &self.state.name,
            body: &self.body,
        };
        Record::Publish(Publish::scheduled(now_ms, entry, self.next.replaces, def))
    }
}

impl Inner {
    fn schedule(&self, id: &str, name: &str, body: &[u8], recurring: &Recurring) -> Result<()> {
        self.check_open()?;
        validate_schedule_id(id)?;
        validate_name(name)?;
        let now_ms = self.clock.now_ms();
        let (rule, cron, every_ms) = match &recurring.rule {
            RuleSpec::Cron(c) => (Rule::Cron(c.clone()), c.text(), 0),
            RuleSpec::Every(d) => {
                let ms = d.as_millis();
                if ms == 0 || d.subsec_nanos() % 1_000_000 != 0 || ms > i64::MAX as u128 / 4 {
                    return Err(Error::invalid(format!(
                        "schedule interval {d:?}: give whole milliseconds, at least one"
                    )));
                }
                (
                    Rule::Every {
                        anchor_ms: now_ms,
                        every_ms: ms as u64,
                    },
                    "",
                    ms as u64,
                )
            }
        };
        let Some(due_ms) = rule.next_after(now_ms) else {
            return Err(Error::invalid(format!(
                "schedule {id:?} never fires: no occurrence in the next {} years",
                crate::cron::SEARCH_YEARS
            )));
        };
        let def = ScheduleDef {
            id,
            cron,
            every_ms,
            anchor_ms: now_ms,
            catch_up: recurring.catch_up.code(),
            removed: false,
        };
        let _one = self.schedule_lock.lock();
        let replaces = self.pending_occurrence(id);
        self.write_occurrence(def, name, body, due_ms, replaces, now_ms)?;
        self.catching_up.lock().0.remove(id);
        Ok(())
    }

    fn unschedule(&self, id: &str) -> Result<bool> {
        self.check_open()?;
        validate_schedule_id(id)?;
        let _one = self.schedule_lock.lock();
        if self.core.lock().index().schedule(id).is_none() {
            return Ok(false);
        }
        let replaces = self.pending_occurrence(id);
        let now_ms = self.clock.now_ms();
        let record = Record::Publish(Publish::unscheduled(now_ms, id, replaces));
        let pos = self.log.append(&record)?;
        let _ = self.apply(pos, &record);
        self.catching_up.lock().0.remove(id);
        Ok(true)
    }

    fn schedules(&self) -> Vec<ScheduleInfo> {
        ScheduleInfo::list(self.core.lock().index())
    }

    fn pending_occurrence(&self, id: &str) -> Option<EventId> {
        let core = self.core.lock();
        let s = core.index().schedule(id)?;
        s.pending.then_some(s.event)
    }

    /// Writes and applies one kind-9 record publishing an occurrence due at `due_ms`.
    fn write_occurrence(
        &self,
        def: ScheduleDef<'_>,
        name: &str,
        body: &[u8],
        due_ms: i64,
        replaces: Option<EventId>,
        now_ms: i64,
    ) -> Result<EventId> {
        let (event, _) = self.new_id()?;
        let entry = PublishEntry {
            id: event,
            due_ms,
            name,
            body,
        };
        let record = Record::Publish(Publish::scheduled(now_ms, entry, replaces, def));
        super::check_publish_len(&record)?;
        let pos = self.log.append(&record)?;
        let _ = self.apply(pos, &record);
        self.count_published(name, 1);
        Ok(event)
    }

    /// What schedule `id` publishes next (if it still exists and has none pending, or —
    /// `at_start` — if the pending one was missed and the policy replaces it), with the
    /// body of its last occurrence. The caller holds `schedule_lock`.
    fn plan_next(&self, id: &str, now_ms: i64, at_start: bool) -> Result<Option<Planned>> {
        let (state, body) = {
            let core = self.core.lock();
            let Some(state) = core.index().schedule(id).cloned() else {
                return Ok(None);
            };
            let at = core.event(state.event).map(|e| {
                (
                    e.body_at,
                    self.log.segment_reader(u64::from(e.body_at.segment)),
                )
            });
            (state, at)
        };
        let Some(next) = self.next_occurrence(id, &state, now_ms, at_start) else {
            return Ok(None);
        };
        let read = body.and_then(|at| super::delivery::read_publish(state.event, at));
        let Some((bytes, range, _, _)) = read else {
            return Err(Error::invalid(format!(
                "schedule {id:?}: the body of occurrence {} cannot be read",
                state.event
            )));
        };
        let (event, _) = self.new_id()?;
        Ok(Some(Planned {
            id: id.into(),
            body: bytes.payload()[range].to_vec(),
            state,
            next,
            event,
        }))
    }

    /// Writes the planned occurrences in one group of records (one sync) and applies them.
    fn write_planned(&self, planned: &[Planned], now_ms: i64) -> Result<()> {
        let records: Vec<Record<'_>> = planned.iter().map(|p| p.record(now_ms)).collect();
        for record in &records {
            super::check_publish_len(record)?;
        }
        self.append_applied(&records)?;
        for p in planned {
            self.count_published(&p.state.name, 1);
        }
        Ok(())
    }

    /// Plans and writes the next occurrence of each of `ids`; the ids whose next one could
    /// not be written. The caller holds `schedule_lock`.
    fn publish_next(&self, ids: Vec<Box<str>>, now_ms: i64, at_start: bool) -> Vec<Box<str>> {
        let mut failed = Vec::new();
        let mut planned = Vec::new();
        for id in ids {
            match self.plan_next(&id, now_ms, at_start) {
                Ok(Some(p)) => planned.push(p),
                Ok(None) => {}
                Err(_) => failed.push(id),
            }
        }
        for group in planned.chunks(GROUP) {
            if self.write_planned(group, now_ms).is_err() {
                failed.extend(group.iter().map(|p| p.id.clone()));
            }
        }
        self.metrics
            .schedule_failures
            .fetch_add(failed.len() as u64, Ordering::Relaxed);
        failed
    }

    /// The occurrence to publish for a schedule now, by the rules in the module docs.
    fn next_occurrence(
        &self,
        id: &str,
        s: &ScheduleState,
        now_ms: i64,
        at_start: bool,
    ) -> Option<Next> {
        let rule = &s.rule;
        let mut catching = self.catching_up.lock();
        if !at_start {
            if s.pending {
                return None;
            }
            if let Some((until, published)) = catching.0.get_mut(id) {
                if let Some(n) = rule.next_after(s.last_ms)
                    && n <= *until
                    && *published < CATCH_UP_ALL_CAP
                {
                    *published += 1;
                    return Some(Next {
                        due_ms: n,
                        replaces: None,
                    });
                }
                catching.0.remove(id);
            }
            // An occurrence that fell due while the previous one was pending is skipped.
            let due_ms = rule.next_after(s.last_ms.max(now_ms.saturating_sub(1)))?;
            return Some(Next {
                due_ms,
                replaces: None,
            });
        }
        // At start: was an occurrence missed while the engine was closed?
        let missed = if s.pending {
            s.last_ms < now_ms
        } else {
            rule.next_after(s.last_ms).is_some_and(|n| n < now_ms)
        };
        let pending = s.pending.then_some(s.event);
        if !missed {
            return (!s.pending)
                .then(|| Next {
                    due_ms: rule.next_after(s.last_ms).unwrap_or(i64::MAX),
                    replaces: None,
                })
                .filter(|n| n.due_ms != i64::MAX);
        }
        match s.catch_up {
            CATCH_UP_SKIP => Some(Next {
                due_ms: rule.next_after(now_ms.saturating_sub(1))?,
                replaces: pending,
            }),
            CATCH_UP_ALL => {
                catching.0.insert(id.into(), (now_ms, 1));
                (!s.pending).then(|| {
                    rule.next_after(s.last_ms).map(|due_ms| Next {
                        due_ms,
                        replaces: None,
                    })
                })?
            }
            _ => {
                let latest = latest_until(rule, s.last_ms, now_ms);
                match latest {
                    Some(due_ms) if due_ms > s.last_ms || !s.pending => Some(Next {
                        due_ms,
                        replaces: pending,
                    }),
                    _ => None,
                }
            }
        }
    }

    /// At start, before delivery: the catch-up of every schedule that missed an occurrence
    /// while the engine was closed, and the next occurrence of every idle one.
    pub(super) fn catch_up_schedules(&self) {
        let _one = self.schedule_lock.lock();
        let now_ms = self.clock.now_ms();
        let ids: Vec<Box<str>> = {
            let mut core = self.core.lock();
            core.take_idle_schedules();
            core.index().schedules().map(|(id, _)| id.into()).collect()
        };
        // A schedule whose catch-up failed is left idle for the schedules thread.
        let failed = self.publish_next(ids, now_ms, true);
        self.core.lock().requeue_idle_schedules(failed);
    }

    /// The schedules thread: publishes the next occurrence of each schedule whose pending
    /// one finished, and writes the job-done record (`index/jobs.rs`) of each job whose last
    /// event finished, until the engine closes. Both are records that follow from applied
    /// ones, written in groups (one sync each) off the delivery path.
    pub(super) fn run_schedules(self: Arc<Inner>) {
        let wake = self.core.lock().schedules_wake.clone();
        let mut failed: Vec<Box<str>> = Vec::new();
        // Job-done records whose write failed, tried again with the next round.
        let mut unwritten: Vec<crate::format::JobDone> = Vec::new();
        while !self.closing.load(Ordering::Acquire) {
            let (idle, mut done) = {
                let mut core = self.core.lock();
                let idle = core.take_idle_schedules();
                let done = core.take_done_jobs(self.clock.now_ms());
                self.schedules_in_flight
                    .store(idle.len() + failed.len() + done.len(), Ordering::Release);
                (idle, done)
            };
            if idle.is_empty() && failed.is_empty() && done.is_empty() && unwritten.is_empty() {
                wake.wait_timeout(Duration::from_millis(100));
                continue;
            }
            done.append(&mut unwritten);
            unwritten = self.write_jobs_done(done);
            let jobs_failed = !unwritten.is_empty();
            let mut ids = std::mem::take(&mut failed);
            ids.extend(idle);
            if !ids.is_empty() {
                let _one = self.schedule_lock.lock();
                let now_ms = self.clock.now_ms();
                failed = self.publish_next(ids, now_ms, false);
            }
            self.schedules_in_flight.store(0, Ordering::Release);
            self.idle.notify_all();
            if !failed.is_empty() || jobs_failed {
                // A failed write (a full disk, say) is tried again a while later.
                wake.wait_timeout(Duration::from_secs(1));
            }
        }
    }

    /// Writes job-done records in groups of at most `GROUP` (one sync each) and applies them;
    /// the records that could not be written. Like a schedule whose next occurrence failed,
    /// they are kept by this thread, not in the core, so that `wait_idle` does not wait for
    /// a disk that refuses writes.
    fn write_jobs_done(&self, done: Vec<crate::format::JobDone>) -> Vec<crate::format::JobDone> {
        for (i, group) in done.chunks(GROUP).enumerate() {
            let records: Vec<Record<'_>> = group.iter().copied().map(Record::JobDone).collect();
            if self.append_applied(&records).is_err() {
                return done[i * GROUP..].to_vec();
            }
        }
        Vec::new()
    }

    /// Appends `records` as one group (one sync) and applies each once it is durable.
    fn append_applied(&self, records: &[Record<'_>]) -> Result<()> {
        let positions = self.log.append_all(records)?;
        for (record, pos) in records.iter().zip(positions) {
            let _ = self.apply(pos, record);
        }
        Ok(())
    }
}
