//! Timer throughput of afterlog's `Wheel` against tokio-util's `DelayQueue` and a `BTreeMap`,
//! in the same run.
//!
//! Three phases on `AFTERLOG_BENCH_TIMERS` timers (default 1,000,000) with pseudo-random
//! delays from 1 ms to 1 h: insert all, cancel every second one, expire the rest by advancing
//! past the last deadline. Criterion measures each phase of each implementation; then a plain
//! timing pass prints a table of millions of operations per second and the ratios.
//!
//! `AFTERLOG_BENCH_SUMMARY_ONLY=1` skips criterion and prints only the table.
//!
//! Each run builds its structures afresh, so a phase that first touches memory (insert above
//! all) pays page faults whenever the allocator has given the previous run's memory back to
//! the system. That depends on allocation history, not on the structure: the wheel's insert
//! has measured anywhere from about 60 to 320 Mops/s on one machine for this reason. In
//! steady state a wheel reuses its slab through its free list and pays none of it.
//!
//! ```text
//! cargo bench --bench wheel
//! AFTERLOG_BENCH_TIMERS=100000 AFTERLOG_BENCH_SUMMARY_ONLY=1 cargo bench --bench wheel
//! ```

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::hint::black_box;
use std::time::{Duration, Instant};

use afterlog::wheel::{TimerHandle, Wheel};
use criterion::{Criterion, SamplingMode, Throughput};
use tokio::runtime::Runtime;
use tokio_util::time::DelayQueue;

const TIMERS_DEFAULT: usize = 1_000_000;
const DELAY_MS_MAX: u64 = 3_600_000;
/// Runs per implementation in the summary pass; the table shows the median.
const SUMMARY_RUNS: usize = 5;
/// Where the wheel's clock starts: a plausible Unix time in milliseconds.
const START_MS: u64 = 1_780_000_000_000;

#[derive(Clone, Copy, Debug)]
enum Phase {
    Insert,
    Cancel,
    Expire,
}

const PHASES: [Phase; 3] = [Phase::Insert, Phase::Cancel, Phase::Expire];

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Insert => "insert",
            Phase::Cancel => "cancel",
            Phase::Expire => "expire",
        }
    }

    /// Operations in this phase for `timers` timers.
    fn ops(self, timers: usize) -> usize {
        match self {
            Phase::Insert => timers,
            Phase::Cancel => timers / 2,
            Phase::Expire => timers - timers / 2,
        }
    }
}

/// The time of each phase of one run.
#[derive(Clone, Copy, Debug)]
struct PhaseTimes([Duration; 3]);

impl PhaseTimes {
    fn get(&self, phase: Phase) -> Duration {
        self.0[phase as usize]
    }
}

#[derive(Clone, Copy, Debug)]
enum Subject {
    Wheel,
    DelayQueue,
    BTreeMap,
}

const SUBJECTS: [Subject; 3] = [Subject::Wheel, Subject::DelayQueue, Subject::BTreeMap];

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Wheel => "afterlog",
            Subject::DelayQueue => "DelayQueue",
            Subject::BTreeMap => "BTreeMap",
        }
    }

    fn run(self, runtime: &Runtime, delays_ms: &[u64]) -> PhaseTimes {
        match self {
            Subject::Wheel => run_wheel(delays_ms),
            Subject::DelayQueue => run_delay_queue(runtime, delays_ms),
            Subject::BTreeMap => run_btree_map(delays_ms),
        }
    }
}

/// Deterministic delays in `1..=DELAY_MS_MAX` from xorshift64*.
fn delays_ms(timers: usize) -> Vec<u64> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..timers)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            1 + state.wrapping_mul(0x2545_F491_4F6C_DD1D) % DELAY_MS_MAX
        })
        .collect()
}

fn run_wheel(delays_ms: &[u64]) -> PhaseTimes {
    let mut wheel: Wheel<u64> = Wheel::with_capacity(START_MS, delays_ms.len());
    let mut handles: Vec<TimerHandle> = Vec::with_capacity(delays_ms.len());

    let started = Instant::now();
    for (i, &delay_ms) in delays_ms.iter().enumerate() {
        handles.push(wheel.insert(START_MS + delay_ms, i as u64));
    }
    let insert = started.elapsed();

    let started = Instant::now();
    for handle in handles.iter().skip(1).step_by(2) {
        black_box(wheel.cancel(*handle));
    }
    let cancel = started.elapsed();

    let started = Instant::now();
    let mut expired = 0usize;
    wheel.advance(START_MS + DELAY_MS_MAX, |due_ms, value| {
        black_box((due_ms, value));
        expired += 1;
    });
    let expire = started.elapsed();

    assert_eq!(expired, Phase::Expire.ops(delays_ms.len()));
    assert!(wheel.is_empty());
    PhaseTimes([insert, cancel, expire])
}

/// `DelayQueue` on a paused current-thread runtime, so expiring an hour takes no wall time.
fn run_delay_queue(runtime: &Runtime, delays_ms: &[u64]) -> PhaseTimes {
    runtime.block_on(async {
        let mut queue: DelayQueue<u64> = DelayQueue::with_capacity(delays_ms.len());
        let mut keys = Vec::with_capacity(delays_ms.len());
        let start = tokio::time::Instant::now();

        let started = Instant::now();
        for (i, &delay_ms) in delays_ms.iter().enumerate() {
            keys.push(queue.insert_at(i as u64, start + Duration::from_millis(delay_ms)));
        }
        let insert = started.elapsed();

        let started = Instant::now();
        for key in keys.iter().skip(1).step_by(2) {
            black_box(queue.remove(key));
        }
        let cancel = started.elapsed();

        let started = Instant::now();
        tokio::time::advance(Duration::from_millis(DELAY_MS_MAX + 1)).await;
        let mut expired = 0usize;
        while let Some(entry) = poll_fn(|cx| queue.poll_expired(cx)).await {
            black_box(entry.into_inner());
            expired += 1;
        }
        let expire = started.elapsed();

        assert_eq!(expired, Phase::Expire.ops(delays_ms.len()));
        PhaseTimes([insert, cancel, expire])
    })
}

fn run_btree_map(delays_ms: &[u64]) -> PhaseTimes {
    let mut map: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut keys = Vec::with_capacity(delays_ms.len());

    let started = Instant::now();
    for (i, &delay_ms) in delays_ms.iter().enumerate() {
        let key = (START_MS + delay_ms, i as u64);
        map.insert(key, i as u64);
        keys.push(key);
    }
    let insert = started.elapsed();

    let started = Instant::now();
    for key in keys.iter().skip(1).step_by(2) {
        black_box(map.remove(key));
    }
    let cancel = started.elapsed();

    let started = Instant::now();
    let now_ms = START_MS + DELAY_MS_MAX;
    let mut expired = 0usize;
    while let Some(entry) = map.first_entry() {
        if entry.key().0 > now_ms {
            break;
        }
        black_box(entry.remove());
        expired += 1;
    }
    let expire = started.elapsed();

    assert_eq!(expired, Phase::Expire.ops(delays_ms.len()));
    PhaseTimes([insert, cancel, expire])
}

fn paused_runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}

fn criterion_benches(criterion: &mut Criterion, runtime: &Runtime, delays_ms: &[u64]) {
    for phase in PHASES {
        let mut group = criterion.benchmark_group(format!("wheel/{}", phase.name()));
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2))
            .throughput(Throughput::Elements(phase.ops(delays_ms.len()) as u64));
        for subject in SUBJECTS {
            group.bench_function(subject.name(), |bencher| {
                bencher.iter_custom(|iterations| {
                    (0..iterations)
                        .map(|_| subject.run(runtime, delays_ms).get(phase))
                        .sum()
                })
            });
        }
        group.finish();
    }
}

fn mops_per_s(ops: usize, time: Duration) -> f64 {
    ops as f64 / time.as_secs_f64() / 1e6
}

fn print_summary(runtime: &Runtime, delays_ms: &[u64]) {
    let timers = delays_ms.len();
    // The median time of each phase for each subject.
    let medians: Vec<[Duration; 3]> = SUBJECTS
        .iter()
        .map(|&subject| {
            let runs: Vec<PhaseTimes> = (0..SUMMARY_RUNS)
                .map(|_| subject.run(runtime, delays_ms))
                .collect();
            PHASES.map(|phase| {
                let mut times: Vec<Duration> = runs.iter().map(|run| run.get(phase)).collect();
                times.sort_unstable();
                times[times.len() / 2]
            })
        })
        .collect();
    println!();
    println!(
        "{timers} timers, delays 1 ms..1 h, median of {SUMMARY_RUNS} runs; \
         Wheel<u64> entry: {} bytes",
        Wheel::<u64>::ENTRY_BYTES
    );
    println!(
        "| phase  | ops       | afterlog Mops/s | DelayQueue Mops/s | BTreeMap Mops/s \
         | afterlog/DelayQueue | afterlog/BTreeMap |"
    );
    println!(
        "|--------|-----------|-----------------|-------------------|-----------------\
         |---------------------|-------------------|"
    );
    for phase in PHASES {
        let ops = phase.ops(timers);
        let rates: Vec<f64> = medians
            .iter()
            .map(|times| mops_per_s(ops, times[phase as usize]))
            .collect();
        println!(
            "| {:<6} | {:>9} | {:>15.1} | {:>17.1} | {:>15.1} | {:>18.2}x | {:>16.2}x |",
            phase.name(),
            ops,
            rates[0],
            rates[1],
            rates[2],
            rates[0] / rates[1],
            rates[0] / rates[2],
        );
    }
}

fn main() {
    let timers = std::env::var("AFTERLOG_BENCH_TIMERS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(TIMERS_DEFAULT);
    let summary_only = std::env::var_os("AFTERLOG_BENCH_SUMMARY_ONLY").is_some();
    let delays_ms = delays_ms(timers);
    let runtime = paused_runtime();
    if !summary_only {
        let mut criterion = Criterion::default().configure_from_args();
        criterion_benches(&mut criterion, &runtime, &delays_ms);
        criterion.final_summary();
    }
    print_summary(&runtime, &delays_ms);
}
