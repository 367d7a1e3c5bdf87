use super::*;
use crate::format::{Ack, AckOutcome, Attempt, Cancel, Drop, Publish, PublishEntry, Retry};

const LOC: Location = Location {
    segment: 3,
    offset: 128,
};

/// A record the tests own, so it can be applied again later.
#[derive(Clone, Debug)]
enum Owned {
    Publish {
        job: Option<u64>,
        events: Vec<(u64, i64, String)>,
    },
    Attempt(u64, u32),
    Retry {
        id: u64,
        n: u32,
        next_due_ms: i64,
        retry_count: u32,
        data: Vec<u8>,
    },
    Ack(u64, u32),
    Drop(u64, u32, DropReason),
    CancelEvent(u64),
    CancelJob(u64),
}

impl Owned {
    fn with<R>(&self, f: impl FnOnce(&Record<'_>) -> R) -> R {
        match self {
            Owned::Publish { job, events } => {
                let entries: Vec<PublishEntry<'_>> = events
                    .iter()
                    .map(|(id, due_ms, name)| PublishEntry {
                        id: EventId(*id),
                        due_ms: *due_ms,
                        name,
                        body: b"body",
                    })
                    .collect();
                f(&Record::Publish(Publish::new(job.map(JobId), 0, &entries)))
            }
            Owned::Attempt(id, n) => f(&Record::Attempt(Attempt {
                event: EventId(*id),
                attempt: *n,
                started_ms: 0,
            })),
            Owned::Retry {
                id,
                n,
                next_due_ms,
                retry_count,
                data,
            } => f(&Record::Retry(Retry {
                event: EventId(*id),
                attempt: *n,
                failed_ms: 0,
                next_due_ms: *next_due_ms,
                retry_count: *retry_count,
                reason: if *retry_count > 0 { 1 } else { 0 },
                message: "boom",
                data,
            })),
            Owned::Ack(id, n) => f(&Record::Ack(Ack {
                event: EventId(*id),
                attempt: *n,
                acked_ms: 0,
                outcome: AckOutcome::Handled,
            })),
            Owned::Drop(id, n, reason) => f(&Record::Drop(Drop {
                event: EventId(*id),
                attempt: *n,
                dropped_ms: 0,
                reason: *reason,
                message: "",
            })),
            Owned::CancelEvent(id) => f(&Record::Cancel(Cancel {
                target: CancelTarget::Event(EventId(*id)),
                cancelled_ms: 0,
            })),
            Owned::CancelJob(id) => f(&Record::Cancel(Cancel {
                target: CancelTarget::Job(JobId(*id)),
                cancelled_ms: 0,
            })),
        }
    }
}

fn run(ix: &mut Index, r: &Owned) -> (Result<Applied, Rejected>, Vec<Effect>) {
    let mut fx = Vec::new();
    let res = r.with(|rec| ix.apply(LOC, rec, &mut fx));
    if res.is_err() {
        assert!(fx.is_empty(), "a rejected record left effects {fx:?}");
    }
    ix.check_invariants();
    (res, fx)
}

fn ok(ix: &mut Index, r: Owned) -> Vec<Effect> {
    let (res, fx) = run(ix, &r);
    assert_eq!(res, Ok(Applied::Changed), "{r:?}");
    fx
}

fn dup(ix: &mut Index, r: Owned) {
    let (res, fx) = run(ix, &r);
    assert_eq!(res, Ok(Applied::Duplicate), "{r:?}");
    assert!(fx.is_empty(), "{r:?}: {fx:?}");
}

fn rejected(ix: &mut Index, r: Owned, kind: RejectKind) {
    let (res, _) = run(ix, &r);
    match res {
        Err(rej) => assert_eq!(rej.kind, kind, "{r:?}: {rej}"),
        other => panic!("{r:?} was accepted: {other:?}"),
    }
}

fn publish(ids: &[u64], job: Option<u64>) -> Owned {
    Owned::Publish {
        job,
        events: ids
            .iter()
            .map(|&id| (id, 1000 + id as i64, format!("name.{}", id % 3)))
            .collect(),
    }
}

fn retry(id: u64, n: u32, next_due_ms: i64, retry_count: u32) -> Owned {
    Owned::Retry {
        id,
        n,
        next_due_ms,
        retry_count,
        data: b"ctx".to_vec(),
    }
}

fn sched(id: u64, due_ms: i64) -> Effect {
    Effect::Schedule {
        event: EventId(id),
        due_ms,
    }
}

fn state(ix: &Index, id: u64) -> Option<EventState> {
    ix.state(EventId(id))
}

fn stats(success: u64, in_progress: u64, failed: u64, cancelled: u64) -> Option<JobStats> {
    Some(JobStats {
        success,
        in_progress,
        failed,
        cancelled,
    })
}

#[test]
fn entry_stays_within_budget() {
    assert!(size_of::<Entry>() <= 36, "{}", size_of::<Entry>());
    // The owner's wheel entry is about 24 bytes; both together must fit 64.
    assert!(size_of::<Entry>() + 24 <= 64);
}

#[test]
fn publish_schedules_each_event() {
    let mut ix = Index::new();
    let fx = ok(&mut ix, publish(&[1], None));
    assert_eq!(fx, vec![sched(1, 1001)]);
    let fx = ok(&mut ix, publish(&[2, 3, 4], Some(7)));
    assert_eq!(fx, vec![sched(2, 1002), sched(3, 1003), sched(4, 1004)]);
    let info = ix.get(EventId(3)).unwrap();
    assert_eq!(info.state, EventState::Scheduled);
    assert_eq!(info.attempts, 0);
    assert_eq!(info.name, "name.0");
    assert_eq!(info.job, Some(JobId(7)));
    assert_eq!(info.location, LOC);
    assert_eq!(info.timer, NO_TIMER);
    assert_eq!(info.due_ms, 1003);
    assert_eq!(info.retry, None);
    assert_eq!(ix.name_of(EventId(1)), Some("name.1"));
    assert_eq!(ix.get(EventId(1)).unwrap().job, None);
    assert_eq!(ix.job_stats(JobId(7)), stats(0, 3, 0, 0));
    assert_eq!(
        ix.job_events(JobId(7)).collect::<Vec<_>>(),
        vec![EventId(2), EventId(3), EventId(4)]
    );
    assert_eq!(ix.pending_count(), 4);
    assert_eq!(ix.count(EventState::Scheduled), 4);
    assert_eq!(ix.max_event_id(), Some(EventId(4)));
    assert_eq!(ix.max_job_id(), Some(JobId(7)));
    assert_eq!(
        ix.scheduled().collect::<Vec<_>>(),
        vec![
            (EventId(1), 1001),
            (EventId(2), 1002),
            (EventId(3), 1003),
            (EventId(4), 1004)
        ]
    );
}

#[test]
fn publish_again_is_a_duplicate() {
    let mut ix = Index::new();
    ok(&mut ix, publish(&[1, 2], Some(1)));
    dup(&mut ix, publish(&[1, 2], Some(1)));
    dup(&mut ix, publish(&[2], Some(1)));
    assert_eq!(ix.job_stats(JobId(1)), stats(0, 2, 0, 0));
    // A publish that reaches the log after a higher id is still inserted.
    ok(&mut ix, publish(&[5], None));
    ok(&mut ix, publish(&[4], None));
    assert_eq!(state(&ix, 4), Some(EventState::Scheduled));
}

#[test]
fn id_zero_is_rejected() {
    let mut ix = Index::new();
    rejected(&mut ix, publish(&[0], None), RejectKind::Limit);
    rejected(&mut ix, publish(&[1], Some(0)), RejectKind::Limit);
    assert_eq!(ix.held_count(), 0);
}

#[test]
fn attempt_runs_and_counts() {
    let mut ix = Index::new();
    ok(&mut ix, publish(&[1], None));
    assert!(ix.set_timer(EventId(1), 77));
    let fx = ok(&mut ix, Owned::Attempt(1, 1));
    assert_eq!(
        fx,
        vec![Effect::Unschedule {
            event: EventId(1),
            timer: 77
        }]
    );
    assert_eq!(state(&ix, 1), Some(EventState::Running));
    assert_eq!(ix.get(EventId(1)).unwrap().timer, NO_TIMER);
    assert_eq!(ix.running_count(), 1);
    dup(&mut ix, Owned::Attempt(1, 1));
    dup(&mut ix, Owned::Attempt(1, 0));
    // A new attempt without an outcome of the last one (the engine restarted it).
    assert!(ok(&mut ix, Owned::Attempt(1, 2)).is_empty());
    assert_eq!(ix.get(EventId(1)).unwrap().attempts, 2);
}

#[test]
fn attempt_without_a_timer_has_no_effect() {
    let mut ix = Index::new();
    ok(&mut ix, publish(&[1], None));
    // The owner took the entry out of its wheel when it fell due.
    assert!(ok(&mut ix, Owned::Attempt(1, 1)).is_empty());
}

#[test]
fn attempt_rejections() {
    let mut ix = Index::new();
    ok(&mut ix, publish(&[1], None));
    ok(&mut ix, Owned::Attempt(1, 1));
    ok(&mut ix, Owned::Ack(1, 1));
    rejected(&mut ix, Owned::Attempt(1, 2), RejectKind::Transition);
    dup(&mut ix, Owned::Attempt(1, 1));
    rejected(&mut ix, Owned::Attempt(9, 1), RejectKind::Unknown);
    assert_eq!(state(&ix, 1), Some(EventState::Succeeded));
}

#[test]
fn retry_reschedules_with_its_context() {
    let mut ix = Index::new();
    ok(&mut ix, publish(&[1], None));
    ok(&mut ix, Owned::Attempt(1, 1));
    let fx = ok(&mut ix, retry(1, 1, 5000, 1));
    assert_eq!(fx, vec![sched(1, 5000)]);
    let info = ix.get(EventId(1)).unwrap();
    assert_eq!(
        (info.state, info.attempts, info.due_ms),
        (EventState::Scheduled, 1, 5000)
    );
    let ctx = info.retry.unwrap();
    assert_eq!(
        (ctx.retry_count, ctx.reason, &*ctx.data),
        (1, 1, &b"ctx"[..])
    );
    // The same record again, or a stale one, changes nothing.
    dup(&mut ix, retry(1, 1, 5000, 1));
    dup(&mut ix, retry(1, 0, 5000, 1));
    // A retry of a later attempt on a Scheduled event: compaction removed that attempt's own
    // record, and the retry says it ran and failed.
    ok(&mut ix, retry(1, 2, 6000, 2));
    let info = ix.get(EventId(1)).unwrap();
    assert_eq!(
        (info.state, info.attempts, info.due_ms),
        (EventState::Scheduled, 2, 6000)
    );
    assert_eq!(info.retry.map(|r| (r.attempt, r.retry_count)), Some((2, 2)));
    ok(&mut ix, Owned::Attempt(1, 3));
    dup(&mut ix, retry(1, 1, 5000, 1));
    // A retry of an attempt that never started, on a Running event.
    rejected(&mut ix, retry(1, 4, 6000, 2), RejectKind::Transition);
    // A retry without a context clears the previous one.
    ok(&mut ix, retry(1, 3, 7000, 0));
    assert_eq!(ix.get(EventId(1)).unwrap().retry, None);
    ok(&mut ix, Owned::Attempt(1, 4));
    ok(&mut ix, Owned::Ack(1, 4));
    dup(&mut ix, retry(1, 4, 7000, 0));
    rejected(&mut ix, retry(1, 5, 7000, 0), RejectKind::Transition);
    rejected(&mut ix, retry(8, 1, 7000, 0), RejectKind::Unknown);
}

#[test]
fn ack_succeeds_from_running_or_scheduled() {
    let mut ix = Index::new();
    ok(&mut ix, publish(&[1, 2], None));
    ok(&mut ix, Owned::Attempt(1, 1));
    ok(&mut ix, Owned::Ack(1, 1));
    ix.set_timer(EventId(2), 5);
    // An event with no handler is acknowledged without running.
    let fx = ok(&mut ix, Owned::Ack(2, 1));
    assert_eq!(
        fx,
        vec![Effect::Unschedule {
            event: EventId(2),
            timer: 5
        }]
    );
    assert_eq!(state(&ix, 2), Some(EventState::Succeeded));
    assert_eq!(ix.get(EventId(2)).unwrap().attempts, 1);
    dup(&mut ix, Owned::Ack(1, 1));
    rejected(&mut ix, Owned::Ack(3, 1), RejectKind::Unknown);
    assert_eq!(ix.count(EventState::Succeeded), 2);
    assert_eq!(ix.pending_count(), 0);
}

#[test]
fn drop_fails_or_expires_by_reason() {
    let mut ix = Index::new();
    ok(&mut ix, publish(&[1, 2, 3], Some(4)));
    ok(&mut ix, Owned::Attempt(1, 1));
    ok(&mut ix, Owned::Drop(1, 1, DropReason::Exhausted));
    ok(&mut ix, Owned::Drop(2, 0, DropReason::MaxAge));
    ok(&mut ix, Owned::Drop(3, 0, DropReason::Expired));
    assert_eq!(state(&ix, 1), Some(EventState::Failed));
    assert_eq!(state(&ix, 2), Some(EventState::Failed));
    assert_eq!(state(&ix, 3), Some(EventState::Expired));
    assert_eq!(ix.job_stats(JobId(4)), stats(0, 0, 3, 0));
    dup(&mut ix, Owned::Drop(1, 1, DropReason::Exhausted));
    dup(&mut ix, Owned::Drop(3, 0, DropReason::Exhausted));
    rejected(&mut ix, Owned::Ack(1, 1), RejectKind::Transition);
    rejected(
        &mut ix,
        Owned::Drop(9, 1, DropReason::Expired),
        RejectKind::Unknown,
    );
    ok(&mut ix, publish(&[5], None));
    ok(&mut ix, Owned::Ack(5, 0));
    rejected(
        &mut ix,
        Owned::Drop(5, 1, DropReason::Expired),
        RejectKind::Transition,
    );
}

#[test]
fn cancel_event_and_late_outcomes() {
    let mut ix = Index::new();
    ok(&mut ix, publish(&[1, 2, 3], None));
    ix.set_timer(EventId(1), 11);
    assert_eq!(
        ok(&mut ix, Owned::CancelEvent(1)),
        vec![Effect::Unschedule {
            event: EventId(1),
            timer: 11
        }]
    );
    dup(&mut ix, Owned::CancelEvent(1));
    // A running attempt may finish; its outcome leaves the event cancelled.
    ok(&mut ix, Owned::Attempt(2, 1));
    ok(&mut ix, Owned::CancelEvent(2));
    dup(&mut ix, Owned::Ack(2, 1));
    dup(&mut ix, retry(2, 1, 9000, 0));
    dup(&mut ix, Owned::Drop(2, 1, DropReason::Exhausted));
    assert_eq!(state(&ix, 2), Some(EventState::Cancelled));
    // No new attempt after a cancel.
    rejected(&mut ix, Owned::Attempt(2, 2), RejectKind::Transition);
    // A cancel that lost the race with the outcome.
    ok(&mut ix, Owned::Ack(3, 0));
    dup(&mut ix, Owned::CancelEvent(3));
    assert_eq!(state(&ix, 3), Some(EventState::Succeeded));
    rejected(&mut ix, Owned::CancelEvent(4), RejectKind::Unknown);
    assert_eq!(ix.count(EventState::Cancelled), 2);
}

#[test]
fn cancel_job_stops_what_has_not_started() {
    let mut ix = Index::new();
    ok(&mut ix, publish(&[1, 2, 3, 4, 5], Some(1)));
    ok(&mut ix, publish(&[6], Some(2)));
    for id in 1..=4 {
        ok(&mut ix, Owned::Attempt(id, 1));
    }
    ok(&mut ix, Owned::Ack(4, 1));
    ix.set_timer(EventId(5), 50);
    let fx = ok(&mut ix, Owned::CancelJob(1));
    assert_eq!(
        fx,
        vec![Effect::Unschedule {
            event: EventId(5),
            timer: 50
        }]
    );
    assert_eq!(state(&ix, 5), Some(EventState::Cancelled));
    assert_eq!(ix.job_stats(JobId(1)), stats(1, 3, 0, 1));
    assert_eq!(ix.job_cancelled(JobId(1)), Some(true));
    dup(&mut ix, Owned::CancelJob(1));
    // Running events finish: a retry fails (not retried), an ack succeeds, a drop fails.
    // Cancelled counts only the event the cancel stopped before its attempt.
    assert!(ok(&mut ix, retry(1, 1, 9000, 1)).is_empty());
    ok(&mut ix, Owned::Ack(2, 1));
    ok(&mut ix, Owned::Drop(3, 1, DropReason::Exhausted));
    assert_eq!(state(&ix, 1), Some(EventState::Failed));
    assert_eq!(ix.get(EventId(1)).unwrap().retry, None);
    assert_eq!(ix.job_stats(JobId(1)), stats(2, 0, 2, 1));
    // The other job is untouched.
    assert_eq!(ix.job_stats(JobId(2)), stats(0, 1, 0, 0));
    rejected(&mut ix, Owned::CancelJob(3), RejectKind::Unknown);
}

#[test]
fn attempt_in_a_cancelled_job_is_rejected() {
    let mut ix = Index::new();
    ok(&mut ix, publish(&[1, 2], Some(1)));
    ok(&mut ix, Owned::Attempt(1, 1));
    ok(&mut ix, Owned::CancelJob(1));
    rejected(&mut ix, Owned::Attempt(1, 2), RejectKind::Transition);
    rejected(&mut ix, Owned::Attempt(2, 1), RejectKind::Transition);
}

#[test]
fn finish_replay_redelivers_running_events() {
    let mut ix = Index::new();
    ok(&mut ix, publish(&[1, 2], None));
    ok(&mut ix, publish(&[3, 4], Some(1)));
    ok(&mut ix, Owned::Attempt(1, 1));
    ok(&mut ix, retry(1, 1, 500, 0));
    ok(&mut ix, Owned::Attempt(1, 2));
    ok(&mut ix, Owned::Attempt(3, 1));
    ok(&mut ix, Owned::CancelJob(1));
    let mut fx = Vec::new();
    assert_eq!(ix.finish_replay(777, &mut fx), 1);
    ix.check_invariants();
    assert_eq!(fx, vec![sched(1, 777)]);
    let info = ix.get(EventId(1)).unwrap();
    assert_eq!(
        (info.state, info.attempts, info.due_ms),
        (EventState::Scheduled, 2, 777)
    );
    // A started event of a cancelled job is not delivered again.
    assert_eq!(state(&ix, 3), Some(EventState::Cancelled));
    assert_eq!(ix.running_count(), 0);
    // Counts never go back: attempt 2 again is a duplicate, attempt 3 runs.
    dup(&mut ix, Owned::Attempt(1, 2));
    ok(&mut ix, Owned::Attempt(1, 3));
}

#[test]
fn release_forgets_finished_events() {
    let mut ix = Index::new();
    ok(&mut ix, publish(&[1, 2], Some(1)));
    ok(&mut ix, publish(&[3], None));
    assert!(!ix.release(EventId(1)), "a pending event is kept");
    ok(&mut ix, Owned::Attempt(1, 1));
    ok(&mut ix, retry(1, 1, 10, 2));
    ok(&mut ix, Owned::Attempt(1, 2));
    ok(&mut ix, Owned::Ack(1, 2));
    assert!(ix.release(EventId(1)));
    assert!(!ix.release(EventId(1)));
    ix.check_invariants();
    assert_eq!(ix.get(EventId(1)), None);
    assert!(ix.is_forgotten(EventId(1)));
    assert!(!ix.is_forgotten(EventId(2)));
    assert!(!ix.is_forgotten(EventId(4)));
    // Any later record about it can only be a replay.
    dup(&mut ix, publish(&[1, 2], Some(1)));
    dup(&mut ix, Owned::Attempt(1, 5));
    dup(&mut ix, Owned::Ack(1, 2));
    dup(&mut ix, Owned::CancelEvent(1));
    // The job keeps counting it until all of its events are released.
    assert_eq!(ix.job_stats(JobId(1)), stats(1, 1, 0, 0));
    assert_eq!(
        ix.job_events(JobId(1)).collect::<Vec<_>>(),
        vec![EventId(2)]
    );
    ok(&mut ix, Owned::CancelEvent(2));
    assert!(ix.release(EventId(2)));
    assert_eq!(ix.job_stats(JobId(1)), None);
    dup(&mut ix, Owned::CancelJob(1));
    assert_eq!(ix.held_count(), 1);
    assert_eq!(
        ix.names.iter().flatten().count(),
        1,
        "unused names are freed"
    );
}

#[test]
fn a_chunk_is_freed_when_all_of_it_is_released() {
    let mut ix = Index::new();
    let n = CHUNK_LEN as u64 + 10;
    let ids: Vec<u64> = (1..=n).collect();
    for batch in ids.chunks(50) {
        ok_quiet(&mut ix, publish(batch, None));
    }
    assert_eq!(ix.chunks.len(), 2);
    let before = ix.memory_bytes();
    for id in 1..=CHUNK_LEN as u64 {
        ok_quiet(&mut ix, Owned::Ack(id, 0));
        assert!(ix.release(EventId(id)));
    }
    ix.check_invariants();
    assert_eq!(ix.chunks.len(), 1);
    let freed = before - ix.memory_bytes();
    assert!(
        freed > CHUNK_LEN * size_of::<Entry>() * 9 / 10,
        "{freed} bytes freed"
    );
    assert!(ix.is_freed(0));
    dup(&mut ix, publish(&[7], None));
    dup(&mut ix, Owned::Ack(7, 0));
    assert_eq!(state(&ix, n), Some(EventState::Scheduled));
}

#[test]
fn holes_left_by_compaction_are_settled_after_replay() {
    let mut ix = Index::new();
    // The log kept only a few events of the first chunk; the rest were compacted away.
    ok(&mut ix, publish(&[5, 6], None));
    ok(&mut ix, publish(&[CHUNK_LEN as u64 + 1], None));
    // An outcome whose publish was compacted away.
    dup(&mut ix, Owned::Ack(3, 1));
    ok(&mut ix, Owned::Ack(5, 0));
    ok(&mut ix, Owned::Ack(6, 0));
    assert!(ix.release(EventId(5)));
    assert!(ix.release(EventId(6)));
    assert_eq!(ix.chunks.len(), 2, "unpublished slots may still be filled");
    let mut fx = Vec::new();
    ix.finish_replay(0, &mut fx);
    assert_eq!(ix.chunks.len(), 1);
    ix.check_invariants();
}

fn ok_quiet(ix: &mut Index, r: Owned) {
    let mut fx = Vec::new();
    let res = r.with(|rec| ix.apply(LOC, rec, &mut fx));
    assert_eq!(res, Ok(Applied::Changed), "{r:?}");
}

#[test]
fn distinct_names_are_interned() {
    let mut ix = Index::new();
    for id in 1..=30 {
        ok(&mut ix, publish(&[id], None));
    }
    assert_eq!(ix.names.iter().flatten().count(), 3);
    assert_eq!(ix.name_of(EventId(4)), Some("name.1"));
}

mod model {
    //! The index against a plain model: a map of events, the transition table written out
    //! directly, and a wheel that follows the effects.

    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Clone, Debug, PartialEq)]
    struct MEvent {
        state: EventState,
        attempts: u32,
        job: Option<u64>,
        due_ms: i64,
        retry: Option<(u32, Vec<u8>)>,
        name: String,
        released: bool,
    }

    #[derive(Clone, Debug, PartialEq)]
    enum MEffect {
        Schedule(u64, i64),
        Unschedule(u64),
    }

    #[derive(Default)]
    struct Model {
        events: BTreeMap<u64, MEvent>,
        jobs: BTreeMap<u64, (bool, Vec<u64>)>,
        in_wheel: BTreeSet<u64>,
        max_event: u64,
        max_job: u64,
    }

    type Outcome = Result<Applied, RejectKind>;

    impl Model {
        fn set(&mut self, id: u64, to: EventState, due_ms: i64, fx: &mut Vec<MEffect>) {
            if self.in_wheel.remove(&id) {
                fx.push(MEffect::Unschedule(id));
            }
            let e = self.events.get_mut(&id).unwrap();
            e.state = to;
            if to == EventState::Scheduled {
                e.due_ms = due_ms;
                self.in_wheel.insert(id);
                fx.push(MEffect::Schedule(id, due_ms));
            }
        }

        fn held(&self, id: u64) -> Result<MEvent, Outcome> {
            match self.events.get(&id) {
                Some(e) if !e.released => Ok(e.clone()),
                _ if id <= self.max_event => Err(Ok(Applied::Duplicate)),
                _ => Err(Err(RejectKind::Unknown)),
            }
        }

        fn job_cancelled(&self, e: &MEvent) -> bool {
            e.job.is_some_and(|j| self.jobs[&j].0)
        }

        fn apply(&mut self, r: &Owned, fx: &mut Vec<MEffect>) -> Outcome {
            use EventState::*;
            match r {
                Owned::Publish { job, events } => {
                    let new: Vec<_> = events
                        .iter()
                        .filter(|(id, ..)| !self.events.contains_key(id))
                        .cloned()
                        .collect();
                    if let Some(j) = job {
                        self.max_job = self.max_job.max(*j);
                    }
                    if new.is_empty() {
                        return Ok(Applied::Duplicate);
                    }
                    for (id, due_ms, name) in new {
                        let cancelled = match job {
                            Some(j) => {
                                let entry = self.jobs.entry(*j).or_default();
                                entry.1.push(id);
                                entry.0
                            }
                            None => false,
                        };
                        self.events.insert(
                            id,
                            MEvent {
                                state: if cancelled { Cancelled } else { Scheduled },
                                attempts: 0,
                                job: *job,
                                due_ms,
                                retry: None,
                                name,
                                released: false,
                            },
                        );
                        if !cancelled {
                            self.in_wheel.insert(id);
                            fx.push(MEffect::Schedule(id, due_ms));
                        }
                        self.max_event = self.max_event.max(id);
                    }
                    Ok(Applied::Changed)
                }
                Owned::Attempt(id, n) => {
                    let e = match self.held(*id) {
                        Ok(e) => e,
                        Err(outcome) => return outcome,
                    };
                    if *n <= e.attempts {
                        return Ok(Applied::Duplicate);
                    }
                    if !e.state.is_pending() || self.job_cancelled(&e) {
                        return Err(RejectKind::Transition);
                    }
                    if e.state == Scheduled {
                        self.set(*id, Running, 0, fx);
                    }
                    self.events.get_mut(id).unwrap().attempts = *n;
                    Ok(Applied::Changed)
                }
                Owned::Retry {
                    id,
                    n,
                    next_due_ms,
                    retry_count,
                    data,
                } => {
                    let e = match self.held(*id) {
                        Ok(e) => e,
                        Err(outcome) => return outcome,
                    };
                    if e.state == Cancelled {
                        return Ok(Applied::Duplicate);
                    }
                    // A later attempt's retry on a Scheduled event: compaction removed that
                    // attempt's record; the retry says it ran.
                    let compacted = e.state == Scheduled && *n > e.attempts;
                    if *n > e.attempts && !compacted {
                        return Err(RejectKind::Transition);
                    }
                    if !compacted && (e.state != Running || *n < e.attempts) {
                        return Ok(Applied::Duplicate);
                    }
                    self.events.get_mut(id).unwrap().attempts = *n;
                    // A running attempt of a cancelled job fails: no retry.
                    if self.job_cancelled(&e) {
                        self.set(*id, Failed, 0, fx);
                        return Ok(Applied::Changed);
                    }
                    self.events.get_mut(id).unwrap().retry =
                        (*retry_count > 0).then(|| (*retry_count, data.clone()));
                    self.set(*id, Scheduled, *next_due_ms, fx);
                    Ok(Applied::Changed)
                }
                Owned::Ack(id, n) => self.outcome(*id, *n, Succeeded, fx),
                Owned::Drop(id, n, reason) => {
                    let to = if *reason == DropReason::Expired {
                        Expired
                    } else {
                        Failed
                    };
                    self.outcome(*id, *n, to, fx)
                }
                Owned::CancelEvent(id) => {
                    let e = match self.held(*id) {
                        Ok(e) => e,
                        Err(outcome) => return outcome,
                    };
                    if e.state.is_pending() {
                        self.set(*id, Cancelled, 0, fx);
                        Ok(Applied::Changed)
                    } else {
                        Ok(Applied::Duplicate)
                    }
                }
                Owned::CancelJob(j) => {
                    let Some((cancelled, ids)) = self.jobs.get(j).cloned() else {
                        return if *j <= self.max_job {
                            Ok(Applied::Duplicate)
                        } else {
                            Err(RejectKind::Unknown)
                        };
                    };
                    if ids.iter().all(|id| self.events[id].released) {
                        return Ok(Applied::Duplicate);
                    }
                    let mut scheduled: Vec<u64> = ids
                        .iter()
                        .copied()
                        .filter(|id| {
                            let e = &self.events[id];
                            !e.released && e.state == Scheduled
                        })
                        .collect();
                    if cancelled && scheduled.is_empty() {
                        return Ok(Applied::Duplicate);
                    }
                    self.jobs.get_mut(j).unwrap().0 = true;
                    scheduled.sort_unstable();
                    for id in scheduled {
                        self.set(id, Cancelled, 0, fx);
                    }
                    Ok(Applied::Changed)
                }
            }
        }

        fn outcome(&mut self, id: u64, n: u32, to: EventState, fx: &mut Vec<MEffect>) -> Outcome {
            use EventState::*;
            let e = match self.held(id) {
                Ok(e) => e,
                Err(outcome) => return outcome,
            };
            match e.state {
                Scheduled | Running => {
                    self.set(id, to, 0, fx);
                    let e = self.events.get_mut(&id).unwrap();
                    e.attempts = e.attempts.max(n);
                    Ok(Applied::Changed)
                }
                Cancelled => Ok(Applied::Duplicate),
                Succeeded if to == Succeeded => Ok(Applied::Duplicate),
                Failed | Expired if to != Succeeded => Ok(Applied::Duplicate),
                _ => Err(RejectKind::Transition),
            }
        }

        fn release(&mut self, id: u64) -> bool {
            match self.events.get_mut(&id) {
                Some(e) if !e.released && !e.state.is_pending() => {
                    e.released = true;
                    e.retry = None;
                    true
                }
                _ => false,
            }
        }

        fn job_stats(&self, j: u64) -> Option<JobStats> {
            let (_, ids) = self.jobs.get(&j)?;
            if ids.iter().all(|id| self.events[id].released) {
                return None;
            }
            let mut s = JobStats::default();
            for id in ids {
                match self.events[id].state {
                    EventState::Scheduled | EventState::Running => s.in_progress += 1,
                    EventState::Succeeded => s.success += 1,
                    EventState::Failed | EventState::Expired => s.failed += 1,
                    EventState::Cancelled => s.cancelled += 1,
                }
            }
            Some(s)
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Publish {
            count: usize,
            in_job: bool,
            due_ms: i64,
            name: u8,
        },
        Attempt {
            pick: usize,
            bump: u32,
        },
        Retry {
            pick: usize,
            delta: i8,
            next_due_ms: i64,
            retry_count: u32,
        },
        Ack {
            pick: usize,
            delta: i8,
        },
        Drop {
            pick: usize,
            delta: i8,
            reason: u8,
        },
        CancelEvent {
            pick: usize,
        },
        CancelJob {
            pick: usize,
        },
        Replay {
            pick: usize,
        },
        Release {
            pick: usize,
        },
        Unknown {
            ahead: u64,
            job: bool,
        },
    }

    /// Offset from the event's attempt count: mostly the current attempt.
    fn delta() -> impl Strategy<Value = i8> {
        prop_oneof![4 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)]
    }

    fn op() -> impl Strategy<Value = Op> {
        let pick = 0usize..1000;
        prop_oneof![
            3 => (1usize..4, any::<bool>(), 0i64..1000, 0u8..4)
                .prop_map(|(count, in_job, due_ms, name)| Op::Publish { count, in_job, due_ms, name }),
            4 => (pick.clone(), 0u32..3).prop_map(|(pick, bump)| Op::Attempt { pick, bump }),
            3 => (pick.clone(), delta(), 0i64..5000, 0u32..3).prop_map(
                |(pick, delta, next_due_ms, retry_count)| Op::Retry { pick, delta, next_due_ms, retry_count }),
            2 => (pick.clone(), delta()).prop_map(|(pick, delta)| Op::Ack { pick, delta }),
            1 => (pick.clone(), delta(), 1u8..=3).prop_map(|(pick, delta, reason)| Op::Drop { pick, delta, reason }),
            1 => pick.clone().prop_map(|pick| Op::CancelEvent { pick }),
            1 => pick.clone().prop_map(|pick| Op::CancelJob { pick }),
            3 => pick.clone().prop_map(|pick| Op::Replay { pick }),
            1 => pick.clone().prop_map(|pick| Op::Release { pick }),
            1 => (1u64..3, any::<bool>()).prop_map(|(ahead, job)| Op::Unknown { ahead, job }),
        ]
    }

    struct Harness {
        ix: Index,
        model: Model,
        /// The owner's wheel: event → (due, timer handle).
        wheel: BTreeMap<u64, (i64, u64)>,
        next_timer: u64,
        log: Vec<(Owned, bool)>,
        next_id: u64,
        next_job: u64,
    }

    impl Harness {
        fn apply(&mut self, r: &Owned) -> Result<Applied, Rejected> {
            let mut fx = Vec::new();
            let got = r.with(|rec| self.ix.apply(LOC, rec, &mut fx));
            let mut mfx = Vec::new();
            let want = self.model.apply(r, &mut mfx);
            assert_eq!(got.clone().map_err(|e| e.kind), want, "{r:?}: {got:?}");
            let mut seen = Vec::new();
            for f in fx {
                match f {
                    Effect::Schedule { event, due_ms } => {
                        assert!(
                            !self.wheel.contains_key(&event.0),
                            "{event} scheduled twice"
                        );
                        self.next_timer += 1;
                        self.wheel.insert(event.0, (due_ms, self.next_timer));
                        assert!(self.ix.set_timer(event, self.next_timer));
                        seen.push(MEffect::Schedule(event.0, due_ms));
                    }
                    Effect::Unschedule { event, timer } => {
                        let held = self.wheel.remove(&event.0).map(|(_, t)| t);
                        assert_eq!(held, Some(timer), "{event} unscheduled");
                        seen.push(MEffect::Unschedule(event.0));
                    }
                }
            }
            assert_eq!(seen, mfx, "effects of {r:?}");
            got
        }

        fn pick_event(&self, pick: usize) -> u64 {
            if self.next_id == 1 {
                1
            } else {
                (pick as u64 % (self.next_id - 1)) + 1
            }
        }

        fn attempts(&self, id: u64) -> u32 {
            self.model.events.get(&id).map_or(0, |e| e.attempts)
        }

        fn with_delta(&self, id: u64, delta: i8) -> u32 {
            self.attempts(id).saturating_add_signed(i32::from(delta))
        }

        fn record_for(&mut self, op: &Op) -> Option<Owned> {
            Some(match *op {
                Op::Publish {
                    count,
                    in_job,
                    due_ms,
                    name,
                } => {
                    let job = in_job.then(|| {
                        self.next_job += 1;
                        self.next_job
                    });
                    let events = (0..if in_job { count } else { 1 })
                        .map(|k| {
                            self.next_id += 1;
                            (self.next_id - 1, due_ms + k as i64, format!("n{name}"))
                        })
                        .collect();
                    Owned::Publish { job, events }
                }
                Op::Attempt { pick, bump } => {
                    let id = self.pick_event(pick);
                    Owned::Attempt(id, self.attempts(id) + bump)
                }
                Op::Retry {
                    pick,
                    delta,
                    next_due_ms,
                    retry_count,
                } => {
                    let id = self.pick_event(pick);
                    Owned::Retry {
                        id,
                        n: self.with_delta(id, delta),
                        next_due_ms,
                        retry_count,
                        data: vec![retry_count as u8; retry_count as usize],
                    }
                }
                Op::Ack { pick, delta } => {
                    let id = self.pick_event(pick);
                    Owned::Ack(id, self.with_delta(id, delta))
                }
                Op::Drop {
                    pick,
                    delta,
                    reason,
                } => {
                    let id = self.pick_event(pick);
                    let reason = [
                        DropReason::Exhausted,
                        DropReason::MaxAge,
                        DropReason::Expired,
                    ][reason as usize - 1];
                    Owned::Drop(id, self.with_delta(id, delta), reason)
                }
                Op::CancelEvent { pick } => Owned::CancelEvent(self.pick_event(pick)),
                Op::CancelJob { pick } => {
                    Owned::CancelJob((pick as u64 % self.next_job.max(1)) + 1)
                }
                Op::Replay { pick } => {
                    if self.log.is_empty() {
                        return None;
                    }
                    self.log[pick % self.log.len()].0.clone()
                }
                Op::Release { .. } | Op::Unknown { .. } => unreachable!(),
            })
        }

        fn compare(&self) {
            self.ix.check_invariants();
            for id in 1..=self.next_id {
                let got = self.ix.get(EventId(id)).map(|i| {
                    (
                        i.state,
                        i.attempts,
                        i.job.map(|j| j.0),
                        i.due_ms,
                        i.retry.map(|r| (r.retry_count, r.data.to_vec())),
                        i.name.to_string(),
                    )
                });
                let want = self.model.events.get(&id).filter(|e| !e.released).map(|e| {
                    (
                        e.state,
                        e.attempts,
                        e.job,
                        e.due_ms,
                        e.retry.clone(),
                        e.name.clone(),
                    )
                });
                assert_eq!(got, want, "event {id}");
            }
            for &j in self.model.jobs.keys() {
                assert_eq!(
                    self.ix.job_stats(JobId(j)),
                    self.model.job_stats(j),
                    "job {j}"
                );
                let want: Vec<EventId> = self.model.jobs[&j]
                    .1
                    .iter()
                    .filter(|id| !self.model.events[id].released)
                    .map(|&id| EventId(id))
                    .collect();
                assert_eq!(self.ix.job_events(JobId(j)).collect::<Vec<_>>(), want);
            }
            let held = || self.model.events.values().filter(|e| !e.released);
            for s in EventState::ALL {
                assert_eq!(
                    self.ix.count(s),
                    held().filter(|e| e.state == s).count() as u64
                );
            }
            let scheduled: Vec<(u64, i64)> = self
                .model
                .events
                .iter()
                .filter(|(_, e)| !e.released && e.state == EventState::Scheduled)
                .map(|(&id, e)| (id, e.due_ms))
                .collect();
            let got: Vec<(u64, i64)> = self.ix.scheduled().map(|(id, d)| (id.0, d)).collect();
            assert_eq!(got, scheduled);
            let wheel: Vec<(u64, i64)> = self.wheel.iter().map(|(&id, &(d, _))| (id, d)).collect();
            assert_eq!(
                wheel, scheduled,
                "the wheel holds exactly the scheduled events"
            );
            assert_eq!(
                self.ix.max_event_id().map_or(0, |e| e.0),
                self.model.max_event
            );
            assert_eq!(self.ix.max_job_id().map_or(0, |j| j.0), self.model.max_job);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn index_agrees_with_the_model(ops in proptest::collection::vec(op(), 1..80)) {
            let mut h = Harness {
                ix: Index::new(),
                model: Model::default(),
                wheel: BTreeMap::new(),
                next_timer: 0,
                log: Vec::new(),
                next_id: 1,
                next_job: 0,
            };
            for op in &ops {
                match *op {
                    Op::Release { pick } => {
                        let id = h.pick_event(pick);
                        let want = h.model.release(id);
                        prop_assert_eq!(h.ix.release(EventId(id)), want, "release {}", id);
                    }
                    Op::Unknown { ahead, job } => {
                        let r = if job {
                            Owned::CancelJob(h.next_job + ahead)
                        } else {
                            Owned::Ack(h.next_id - 1 + ahead, 0)
                        };
                        let res = h.apply(&r);
                        prop_assert!(res.is_err());
                    }
                    _ => {
                        let Some(r) = h.record_for(op) else { continue };
                        let res = h.apply(&r);
                                                h.log.push((r, res.is_ok()));
                    }
                }
                h.compare();
            }
            // Replaying every accepted record again changes nothing.
            let accepted: Vec<Owned> =
                h.log.iter().filter(|(_, ok)| *ok).map(|(r, _)| r.clone()).collect();
            for r in &accepted {
                let res = h.apply(r);
                prop_assert_eq!(res, Ok(Applied::Duplicate), "{:?}", r);
            }
            h.compare();
        }
    }
}

/// Found by fuzzing the reader: a job whose events lie far apart in the id space (no
/// record the engine writes does that, but a log may hold anything) made `cancel_job` and
/// `job_events` walk every id between them. They now walk the chunks held.
#[test]
fn a_job_spread_over_the_id_space_is_cancelled_at_once() {
    let mut ix = Index::new();
    ok(&mut ix, publish(&[1, 1 << 60, u64::MAX], Some(7)));
    let started = std::time::Instant::now();
    assert_eq!(ix.job_events(JobId(7)).count(), 3);
    ok(&mut ix, Owned::CancelJob(7));
    for id in [1, 1 << 60, u64::MAX] {
        assert_eq!(state(&ix, id), Some(EventState::Cancelled));
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

/// Found while fixing the one above: the end of the last chunk of the id space (ids up to
/// u64::MAX) overflowed when replay settled the chunks.
#[test]
fn the_last_id_of_the_id_space_settles() {
    let mut ix = Index::new();
    ok(&mut ix, publish(&[u64::MAX], None));
    ok(&mut ix, Owned::Ack(u64::MAX, 1));
    ix.finish_replay(0, &mut Vec::new());
    ix.release(EventId(u64::MAX));
    assert_eq!(state(&ix, u64::MAX), None);
}

/// Applies a keyed publish of event `id` (name, key, window), its location naming the id.
fn keyed(ix: &mut Index, id: u64, name: &str, key: &str, window_ms: u64) {
    keyed_unchecked(ix, id, name, key, window_ms);
    ix.check_invariants();
}

fn keyed_unchecked(ix: &mut Index, id: u64, name: &str, key: &str, window_ms: u64) {
    let record = Record::Publish(Publish::with_options(
        0,
        PublishEntry {
            id: EventId(id),
            due_ms: 1000,
            name,
            body: b"body",
        },
        crate::format::EventOptions {
            key: key.as_bytes(),
            mode: crate::format::KEY_KEEP,
            window_ms,
            priority: (id % 7) as i8 - 3,
            ..Default::default()
        },
    ));
    let at = Location {
        segment: (id >> 32) as u32 + 1,
        offset: id as u32,
    };
    assert_eq!(ix.apply(at, &record, &mut Vec::new()), Ok(Applied::Changed));
}

#[test]
fn keys_are_exact_when_their_fragments_collide() {
    for collide in [false, true] {
        let mut ix = Index::new();
        if collide {
            ix.collide_all_keys();
        }
        let mut keys: HashMap<u64, String> = HashMap::new();
        let wide = 1u64 << 32;
        let mut events: Vec<(u64, &str, String)> = (1..=50)
            .map(|id| (id, "n", format!("k{id}")))
            .collect();
        events.push((51, "m", "k1".into()));
        // Same low 32 bits as event 5, and an id whose low bits are all zero.
        events.push((wide + 5, "n", "k5-high".into()));
        events.push((wide, "n", "k-wide".into()));
        for (id, name, key) in &events {
            keyed(&mut ix, *id, name, key, 0);
            keys.insert(*id, key.clone());
        }
        // Published below.
        keys.insert(60, "k60".into());
        keys.insert(61, "k7".into());
        let verified = std::cell::Cell::new(0);
        let verify = |id: EventId, at: Location| -> Result<bool, ()> {
            verified.set(verified.get() + 1);
            let from_location = (u64::from(at.segment - 1) << 32) | u64::from(at.offset);
            assert_eq!(from_location, id.0, "the location is the event's publish");
            Ok(true)
        };
        let holder = |ix: &Index, name: &str, key: &str| {
            ix.key_holder(name, key.as_bytes(), |id, at| {
                verify(id, at).map(|_| keys.get(&id.0).is_some_and(|k| k == key))
            })
            .unwrap()
        };
        for (id, name, key) in &events {
            assert_eq!(holder(&ix, name, key), Some(EventId(*id)), "{key} of {name}");
            assert_eq!(ix.get(EventId(*id)).unwrap().priority, (*id % 7) as i8 - 3);
        }
        assert_eq!(holder(&ix, "n", "nobody"), None);
        assert_eq!(holder(&ix, "nobody", "k1"), None);
        // Without collisions a lookup of a free key verifies nothing (a 24-bit fragment
        // rarely matches); with them, every key of the name is a candidate.
        verified.set(0);
        assert_eq!(holder(&ix, "n", "free"), None);
        if collide {
            assert!(verified.get() >= 52, "{}", verified.get());
        } else {
            assert!(verified.get() <= 1, "{}", verified.get());
        }

        // A finished event no longer holds its key; one with a window keeps it taken.
        ok(&mut ix, Owned::Attempt(7, 1));
        ok(&mut ix, Owned::Ack(7, 1));
        assert_eq!(holder(&ix, "n", "k7"), None);
        keyed(&mut ix, 60, "n", "k60", 5_000);
        ok(&mut ix, Owned::CancelEvent(60));
        let taken = |ix: &Index, now| {
            ix.key_taken("n", b"k60", now, |id, _| Ok::<_, ()>(keys[&id.0] == "k60"))
                .unwrap()
        };
        assert_eq!(holder(&ix, "n", "k60"), None);
        assert_eq!(taken(&ix, 4_999), Some(EventId(60)));
        assert_eq!(taken(&ix, 5_000), None);
        let held: Vec<EventId> = ix.keys_taken(0).iter().map(|t| t.1).collect();
        assert_eq!(held.len(), events.len() + 1 - 1, "{held:?}");
        assert!(held.contains(&EventId(60)) && !held.contains(&EventId(7)));

        // The key is free again: a new event takes it; sweeping keeps every holder.
        keyed(&mut ix, 61, "n", "k7", 0);
        assert_eq!(holder(&ix, "n", "k7"), Some(EventId(61)));
        assert!(ix.sweep_keys(10_000) >= 2, "event 7 and the passed window of 60");
        for (id, name, key) in events.iter().filter(|e| e.0 != 7) {
            assert_eq!(holder(&ix, name, key), Some(EventId(*id)), "{key} after a sweep");
        }
        assert_eq!(holder(&ix, "n", "k7"), Some(EventId(61)));
        assert_eq!(taken(&ix, 4_999), None, "the window was swept");
    }
}

#[test]
fn the_key_table_grows_and_drops_stale_slots() {
    let mut ix = Index::new();
    for id in 1..=10_000u64 {
        keyed_unchecked(&mut ix, id, "n", &format!("key-{id}"), 0);
        // Every other event finishes at once: its slot is stale, dropped by the next rebuild.
        if id % 2 == 0 {
            let (res, _) = Owned::CancelEvent(id).with(|r| {
                let mut fx = Vec::new();
                (ix.apply(LOC, r, &mut fx), fx)
            });
            assert_eq!(res, Ok(Applied::Changed));
        }
    }
    ix.check_invariants();
    let table = ix.keys.slots.len();
    assert!(table <= 4 * 10_000, "{table} slots for 10,000 keys, half of them stale");
    for id in (1..=10_000u64).step_by(997) {
        let key = format!("key-{id}");
        let found = ix
            .key_holder("n", key.as_bytes(), |other, _| {
                Ok::<_, ()>(other.0 == id)
            })
            .unwrap();
        assert_eq!(found, (id % 2 == 1).then_some(EventId(id)), "{key}");
    }
}

#[test]
fn a_dead_letter_costs_its_entry_and_24_bytes() {
    let mut ix = Index::new();
    let n = 1u64 << 17;
    let ids: Vec<u64> = (1..=n).collect();
    for batch in ids.chunks(50) {
        ok_quiet(&mut ix, publish(batch, None));
    }
    let pending = ix.memory_bytes();
    for id in 1..=n {
        ok_quiet(&mut ix, Owned::Drop(id, 1, DropReason::Exhausted));
    }
    assert_eq!(ix.dead_count(), n);
    assert!(ix.is_dead(EventId(n)));
    let per = ix.memory_bytes() as f64 / n as f64;
    assert!(per <= 64.0, "{per:.1} bytes per dead letter");
    assert!(ix.memory_bytes() - pending <= n as usize * 24 + 4096);
    // Newest first; a purge after them forgets them all.
    assert_eq!(ix.dead_letters(0).next().map(|d| d.id), Some(EventId(n)));
    let after = Location {
        segment: LOC.segment + 1,
        offset: 0,
    };
    assert_eq!(ix.purge_dead_before(after), n);
    assert!(!ix.is_dead(EventId(n)));
    assert_eq!(ix.dead_count(), 0);
    ix.check_invariants();
}
