//! Memory per pending event: publishes 1,000,000 scheduled events (a few dozen names, a
//! quarter of them in jobs of ten) into the event index and puts each in the timing wheel, as
//! the scheduler does, then counts the heap bytes each holds with a counting global allocator.
//! Run with `cargo bench -p afterlog-microbench --bench index_memory` (`AFTERLOG_BENCH_EVENTS` sets the count).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use afterlog::format::{Publish, PublishEntry, Record};
use afterlog::index::{Index, Location};
use afterlog::wheel::Wheel;
use afterlog::{EventId, JobId};

struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter only
// observes the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        // SAFETY: the caller upholds `realloc`'s contract, which `System` shares.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn events() -> u64 {
    std::env::var("AFTERLOG_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}
const NAMES: usize = 40;
const JOB_LEN: u64 = 10;

fn main() {
    let events = events();
    let names: Vec<String> = (0..NAMES).map(|i| format!("app.event.{i}")).collect();
    let mut effects = Vec::with_capacity(JOB_LEN as usize);
    let mut entries: Vec<PublishEntry<'_>> = Vec::with_capacity(JOB_LEN as usize);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut index = Index::new();
    let (mut next_id, mut next_job, mut publishes) = (1u64, 1u64, 0u64);
    while next_id <= events {
        // One publish in 31 is a job of ten events, so a quarter of the events are in jobs.
        let in_job = publishes % 31 == 0 && next_id + JOB_LEN - 1 <= events;
        let count = if in_job { JOB_LEN } else { 1 };
        entries.clear();
        for k in 0..count {
            let id = next_id + k;
            entries.push(PublishEntry {
                id: EventId(id),
                due_ms: 1_700_000_000_000 + (id as i64 * 7919) % 86_400_000,
                name: &names[(id as usize * 31) % NAMES],
                body: b"",
            });
        }
        let job = in_job.then(|| {
            next_job += 1;
            JobId(next_job - 1)
        });
        let record = Record::Publish(Publish::new(job, 0, &entries));
        let loc = Location {
            segment: (next_id / 100_000) as u32,
            offset: (next_id % 100_000) as u32 * 64,
        };
        effects.clear();
        index
            .apply(loc, &record, &mut effects)
            .expect("a fresh publish is accepted");
        next_id += count;
        publishes += 1;
    }
    let held = LIVE_BYTES.load(Ordering::Relaxed) - before;
    let pending = index.pending_count();
    assert_eq!(pending, events);
    let jobs = next_job - 1;
    println!(
        "index: {pending} pending events, {jobs} jobs of {JOB_LEN} ({} events in jobs), {NAMES} names",
        jobs * JOB_LEN
    );
    println!(
        "index: {held} heap bytes = {:.2} bytes per pending event (estimate from memory_bytes: {:.2})",
        held as f64 / pending as f64,
        index.memory_bytes() as f64 / pending as f64
    );
    // The wheel, filled from the index's schedule effects as the scheduler rebuilds it on
    // start-up, with each timer's handle stored back in the index.
    // A bulk rebuild knows how many timers it inserts, so it reserves exactly.
    let scheduled: Vec<(EventId, i64)> = index.scheduled().collect();
    let before_wheel = LIVE_BYTES.load(Ordering::Relaxed);
    let mut wheel: Wheel<u64> = Wheel::with_capacity(1_700_000_000_000, scheduled.len());
    for (id, due_ms) in &scheduled {
        let handle = wheel.insert(*due_ms as u64, id.0);
        index.set_timer(*id, handle.to_u64());
    }
    let wheel_bytes = LIVE_BYTES.load(Ordering::Relaxed) - before_wheel;
    drop(scheduled);
    println!(
        "wheel: {wheel_bytes} heap bytes = {:.2} bytes per pending event",
        wheel_bytes as f64 / pending as f64
    );
    let total = LIVE_BYTES.load(Ordering::Relaxed) - before;
    println!(
        "index + wheel: {total} heap bytes = {:.2} bytes per pending event (target <= 64)",
        total as f64 / pending as f64
    );
    drop(wheel);
    drop(index);
}
