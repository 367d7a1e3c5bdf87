//! Finished jobs: the final counts of a job whose every event finished, kept after
//! compaction has released its events, for the dead-letter retention.
//!
//! A job's counts live in its `Job` while any of its events is held. Once the last of its
//! events finishes, the job is *done*: it waits on the `done` set until its job-done record
//! (kind 11) is applied, which copies its counts here. Compaction keeps every finished event
//! of a done job whose record is not yet applied (`awaits_summary`), so the counts are never
//! lost between the two; and it keeps each job-done record while its summary is within the
//! retention, so a replay finds the same summaries. A summary costs about 48 bytes (the
//! table's entry: job id, three counts and a time).

use super::{Index, JobStats};
use crate::format::JobDone;
use crate::ids::{EventId, JobId};
use crate::index::Applied;
use std::collections::{BTreeSet, HashMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Summary {
    success: u32,
    failed: u32,
    cancelled: u32,
    finished_ms: i64,
}

#[derive(Default)]
pub(super) struct JobSummaries {
    /// Jobs whose every event finished and whose job-done record is not applied yet.
    done: BTreeSet<JobId>,
    /// Final counts of finished jobs, from their job-done records.
    table: HashMap<JobId, Summary>,
}

impl Index {
    /// Called when an event of the job at `slot` left a pending state: the job is done once
    /// none of its events is pending.
    pub(super) fn job_event_finished(&mut self, slot: u32) {
        let job = self.job_ref(slot);
        if job.stats().in_progress == 0 && !job.summarized {
            let id = job.id;
            self.summaries.done.insert(id);
        }
    }

    /// Applies a job-done record: the job's final counts are kept from now on.
    pub(super) fn apply_job_done(&mut self, j: &JobDone) -> Applied {
        self.summaries.done.remove(&j.job);
        let summarized = match self.job_slots.get(&j.job).copied() {
            Some(slot) => std::mem::replace(&mut self.job_mut(slot).summarized, true),
            None => false,
        };
        if summarized || self.summaries.table.contains_key(&j.job) {
            return Applied::Duplicate;
        }
        self.summaries.table.insert(
            j.job,
            Summary {
                success: j.success,
                failed: j.failed,
                cancelled: j.cancelled,
                finished_ms: j.finished_ms,
            },
        );
        Applied::Changed
    }

    /// Whether jobs are done whose job-done record is still to be written.
    pub fn has_done_jobs(&self) -> bool {
        !self.summaries.done.is_empty()
    }

    /// The job-done records to write for the jobs done since the last call (each job once:
    /// the caller keeps a record it could not write, and tries again).
    pub fn take_done_jobs(&mut self, finished_ms: i64) -> Vec<JobDone> {
        let done = std::mem::take(&mut self.summaries.done);
        done.into_iter()
            .filter_map(|job| {
                let slot = *self.job_slots.get(&job)?;
                let stats = self.job_ref(slot).stats();
                let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
                Some(JobDone {
                    job,
                    finished_ms,
                    success: count(stats.success),
                    failed: count(stats.failed),
                    cancelled: count(stats.cancelled),
                })
            })
            .collect()
    }

    /// Whether `id` belongs to a job whose every event finished but whose counts are not
    /// yet in a durable job-done record: compaction keeps its records until they are.
    pub fn awaits_summary(&self, id: EventId) -> bool {
        let Ok(e) = self.held(id) else {
            return false;
        };
        e.job().is_some_and(|slot| !self.job_ref(slot).summarized)
    }

    /// The final counts of a finished job at `now_ms`, from its job-done record, if it is
    /// still within the dead-letter retention.
    pub fn finished_job(&self, job: JobId, now_ms: i64) -> Option<JobStats> {
        let s = self.summaries.table.get(&job)?;
        self.dead_kept(s.finished_ms, now_ms).then(|| JobStats {
            success: u64::from(s.success),
            in_progress: 0,
            failed: u64::from(s.failed),
            cancelled: u64::from(s.cancelled),
        })
    }

    /// Whether compaction keeps the job-done record of `job` at `now_ms`.
    pub fn keeps_job_done(&self, job: JobId, now_ms: i64) -> bool {
        self.summaries
            .table
            .get(&job)
            .is_some_and(|s| self.dead_kept(s.finished_ms, now_ms))
    }

    /// Forgets the summaries past the retention at `now_ms`.
    pub fn expire_job_summaries(&mut self, now_ms: i64) {
        let retention = self.dead_retention_ms();
        self.summaries
            .table
            .retain(|_, s| super::dead::kept(retention, s.finished_ms, now_ms));
    }

    /// Heap bytes of the summaries and the done set (an estimate).
    pub(super) fn job_summary_bytes(&self) -> usize {
        // A hash table entry of 8 + 24 bytes with its control byte, at 7/8 load; a B-tree
        // entry of 8 bytes with its share of a node.
        self.summaries.table.capacity() * 33 + self.summaries.done.len() * 18
    }
}
