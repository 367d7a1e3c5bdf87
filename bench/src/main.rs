//! `afterlog-bench`: afterlog's benchmark harness. Each scenario runs against afterlog and
//! its baselines in the same process, on the same file system, and every figure lands in a
//! table on the terminal, and optionally a JSON file and an SVG plot. See
//! `docs/BENCHMARKS.md` for what each scenario and baseline does.

mod async_runs;
mod core_runs;
mod dashboard_runs;
mod dead_runs;
mod engine_runs;
mod keys_runs;
mod machine;
mod plot;
mod publish;
mod recovery;
mod schedule_runs;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    /// 1: durable publish (1 publisher, 64 publishers, batches of 1,024) vs raw, SQLite, fjall.
    Publish,
    /// 2: published → delivered → acknowledged, events/s.
    EndToEnd,
    /// 3: lateness of events due within one second.
    Timer,
    /// 4 and 5: reopen time with many pending events, and memory per pending event.
    Recovery,
    /// 6: publish throughput with compaction on vs off, disk bytes over time.
    Compaction,
    /// 7: 40 events due at once, 100 ms handlers, 4 workers: wall time against the ideal.
    Workers,
    /// 8: lateness of events due within one second, one publish each from 32 threads.
    Timer32,
    /// 9: a compaction pass with nothing to compact beside many pending events, and publish
    /// latency with passes running vs without.
    IdlePass,
    /// 10: disk after compacting 300 MB of finished events beside 1 MB of live ones.
    Shrink,
    /// 11: the async API on a 2-worker tokio runtime: 64 and 1,024 `publish_async` tasks vs
    /// raw, end to end with an async vs a sync handler, 10,000 handlers awaiting a 1 s sleep.
    Async,
    /// 12: keys, priorities and flow control: keyed vs unkeyed publish (64 publishers),
    /// delivery of due events with mixed priorities vs none, four names' end to end beside
    /// a concurrency limit of 1 on a fifth vs no limit, memory per keyed pending event.
    Keys,
    /// 13: recurring schedules: 10,000 schedules each every second, lateness of their
    /// occurrences.
    Schedules,
    /// 14: dead letters: memory per dead letter of a directory holding 1,000,000, and the
    /// end to end rate of live events beside them vs a fresh directory.
    Dead,
    /// 15: the dashboard of a directory of 10,000,000 events: every page's time and the
    /// serving process's peak memory.
    Dashboard,
}

const ALL: [Scenario; 14] = [
    Scenario::Publish,
    Scenario::EndToEnd,
    Scenario::Timer,
    Scenario::Recovery,
    Scenario::Compaction,
    Scenario::Workers,
    Scenario::Timer32,
    Scenario::IdlePass,
    Scenario::Shrink,
    Scenario::Async,
    Scenario::Keys,
    Scenario::Schedules,
    Scenario::Dead,
    Scenario::Dashboard,
];

/// afterlog's benchmark harness: durable publish against raw pwrite+fdatasync, SQLite and
/// fjall; end to end; timer accuracy; recovery; memory; compaction.
#[derive(Parser, Debug)]
#[command(name = "afterlog-bench", version)]
struct Args {
    /// Where data files go (default: `afterlog-bench` under the cargo target directory). It
    /// must be on the disk being measured, not a tmpfs; it is emptied first and removed after.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write every figure, the machine, versions and parameters to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw throughput by scenario and system, and latency percentiles, to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// A run under a minute: short timed runs, small counts, no 10,000,000-event cases.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Seconds per timed publish run (default 3; 0.5 with --quick).
    #[arg(long)]
    secs: Option<f64>,
    /// Seconds of untimed warm-up per system and shape (default 0.3; 0.1 with --quick).
    #[arg(long)]
    warmup: Option<f64>,
    /// Timed runs per system and publish shape; the median is reported (default 2; 1 with
    /// --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Concurrent publishers of the concurrent publish scenario.
    #[arg(long, default_value_t = 64)]
    publishers: usize,
    /// Events per batch of the batch publish scenario.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Events of the end-to-end scenario (default 1,000,000; 100,000 with --quick).
    #[arg(long)]
    e2e_events: Option<u64>,
    /// Events due within one second in the timer and timer32 scenarios (default 100,000;
    /// 20,000 with --quick).
    #[arg(long)]
    timer_events: Option<u64>,
    /// Seconds between the start of publishing and the first due time in the timer and
    /// timer32 scenarios (default 3; 2 with --quick).
    #[arg(long)]
    timer_lead: Option<f64>,
    /// Pending-event counts of the recovery and memory scenarios, comma-separated (default
    /// 1000000,10000000; 1000000 with --quick).
    #[arg(long, value_delimiter = ',')]
    recovery_events: Vec<u64>,
    /// Also time recovery and the sequential read with a cold page cache (drops the
    /// machine's page cache through /proc/sys/vm/drop_caches: root only).
    #[arg(long)]
    cold: bool,
    /// Seconds per compaction run (default 10; 2 with --quick).
    #[arg(long)]
    compaction_secs: Option<f64>,
    /// Compaction on/off pairs (default 1).
    #[arg(long, default_value_t = 1)]
    compaction_pairs: usize,
    /// Events of the workers scenario (default 40).
    #[arg(long, default_value_t = 40)]
    workers_events: u64,
    /// Pending events of the idle-pass scenario (default 1,000,000; 100,000 with --quick).
    #[arg(long)]
    idle_pending: Option<u64>,
    /// Timed idle compaction passes (default 5).
    #[arg(long, default_value_t = 5)]
    idle_passes: usize,
    /// Seconds per publish-latency run of the idle-pass scenario (default 5; 1 with --quick).
    #[arg(long)]
    idle_secs: Option<f64>,
    /// MB of finished events the shrink scenario compacts away (default 300; 30 with --quick).
    #[arg(long)]
    shrink_mb: Option<u64>,
    /// Concurrent `publish_async` tasks of the async scenario, comma-separated (default
    /// 64,1024).
    #[arg(long, value_delimiter = ',')]
    async_tasks: Vec<usize>,
    /// Events of the async scenario's end-to-end runs (default: --e2e-events).
    #[arg(long)]
    async_e2e_events: Option<u64>,
    /// Events due now whose async handlers sleep 1 s, in the async scenario (default 10,000;
    /// 2,000 with --quick).
    #[arg(long)]
    async_sleep_events: Option<u64>,
    /// Due events of the keys scenario's priority and concurrency runs (default 1,000,000;
    /// 100,000 with --quick).
    #[arg(long)]
    keys_events: Option<u64>,
    /// Schedules of the schedules scenario (default 10,000; 1,000 with --quick).
    #[arg(long)]
    schedules: Option<u64>,
    /// Dead letters of the dead-letters scenario (default 1,000,000; 100,000 with --quick).
    #[arg(long)]
    dead_letters: Option<u64>,
    /// Pending events of the dashboard scenario (default 10,000,000; 100,000 with --quick).
    #[arg(long)]
    dashboard_events: Option<u64>,
    /// Internal: serve the dashboard of this data directory on loopback until stdin ends.
    #[arg(long, hide = true)]
    child_serve: Option<PathBuf>,
    /// Pending keyed events of the keys scenario's memory run (default 1,000,000).
    #[arg(long)]
    keys_memory_events: Option<u64>,
    /// Internal: open this data directory, print the open time and memory as JSON, exit.
    #[arg(long, hide = true)]
    child_open: Option<PathBuf>,
}

/// Every parameter of a run, resolved.
#[derive(Clone, Debug, Serialize)]
struct Params {
    quick: bool,
    scenarios: Vec<Scenario>,
    body_bytes: usize,
    publish_secs: f64,
    publish_warmup_secs: f64,
    publish_rounds: usize,
    publishers: usize,
    batch: usize,
    e2e_events: u64,
    e2e_publishers: u64,
    timer_events: u64,
    timer_lead_secs: f64,
    recovery_events: Vec<u64>,
    cold: bool,
    compaction_secs: f64,
    compaction_pairs: usize,
    workers_events: u64,
    idle_pending: u64,
    idle_passes: usize,
    idle_secs: f64,
    shrink_mb: u64,
    async_tasks: Vec<usize>,
    async_e2e_events: u64,
    async_sleep_events: u64,
    keys_events: u64,
    keys_memory_events: u64,
    schedules: u64,
    dead_letters: u64,
    dashboard_events: u64,
}

impl Params {
    fn from(args: &Args) -> Params {
        let q = args.quick;
        Params {
            quick: q,
            scenarios: if args.only.is_empty() {
                ALL.to_vec()
            } else {
                args.only.clone()
            },
            body_bytes: publish::BODY_LEN,
            publish_secs: args.secs.unwrap_or(if q { 0.5 } else { 3.0 }),
            publish_warmup_secs: args.warmup.unwrap_or(if q { 0.1 } else { 0.3 }),
            publish_rounds: args.rounds.unwrap_or(if q { 1 } else { 2 }).max(1),
            publishers: args.publishers.max(1),
            batch: args.batch.max(1),
            e2e_events: args
                .e2e_events
                .unwrap_or(if q { 100_000 } else { 1_000_000 }),
            e2e_publishers: 4,
            timer_events: args
                .timer_events
                .unwrap_or(if q { 20_000 } else { 100_000 }),
            timer_lead_secs: args.timer_lead.unwrap_or(if q { 2.0 } else { 3.0 }),
            recovery_events: if !args.recovery_events.is_empty() {
                args.recovery_events.clone()
            } else if q {
                vec![1_000_000]
            } else {
                vec![1_000_000, 10_000_000]
            },
            cold: args.cold,
            compaction_secs: args.compaction_secs.unwrap_or(if q { 2.0 } else { 10.0 }),
            compaction_pairs: args.compaction_pairs.max(1),
            workers_events: args.workers_events.max(1),
            idle_pending: args
                .idle_pending
                .unwrap_or(if q { 100_000 } else { 1_000_000 }),
            idle_passes: args.idle_passes.max(1),
            idle_secs: args.idle_secs.unwrap_or(if q { 1.0 } else { 5.0 }),
            shrink_mb: args.shrink_mb.unwrap_or(if q { 30 } else { 300 }).max(1),
            async_tasks: if args.async_tasks.is_empty() {
                vec![64, 1024]
            } else {
                args.async_tasks.iter().map(|&n| n.max(1)).collect()
            },
            async_e2e_events: args.async_e2e_events.or(args.e2e_events).unwrap_or(if q {
                100_000
            } else {
                1_000_000
            }),
            async_sleep_events: args
                .async_sleep_events
                .unwrap_or(if q { 2_000 } else { 10_000 })
                .max(1),
            keys_events: args
                .keys_events
                .unwrap_or(if q { 100_000 } else { 1_000_000 })
                .max(1),
            keys_memory_events: args.keys_memory_events.unwrap_or(1_000_000).max(1),
            schedules: args
                .schedules
                .unwrap_or(if q { 1_000 } else { 10_000 })
                .max(1),
            dead_letters: args
                .dead_letters
                .unwrap_or(if q { 100_000 } else { 1_000_000 })
                .max(1),
            dashboard_events: args
                .dashboard_events
                .unwrap_or(if q { 100_000 } else { 10_000_000 })
                .max(1),
        }
    }

    fn runs(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }

    /// Progress steps, for the bar's length.
    fn steps(&self) -> u64 {
        let mut n = 0;
        if self.runs(Scenario::Publish) {
            n += 3 * (1 + publish::SYSTEMS.len() as u64 * self.publish_rounds as u64);
        }
        n += self.runs(Scenario::EndToEnd) as u64 + self.runs(Scenario::Timer) as u64;
        if self.runs(Scenario::Recovery) {
            n += self.recovery_events.len() as u64 * (2 + self.cold as u64);
        }
        if self.runs(Scenario::Compaction) {
            n += 2 * self.compaction_pairs as u64;
        }
        n += 2 * self.runs(Scenario::Workers) as u64 + self.runs(Scenario::Timer32) as u64;
        n += 3 * self.runs(Scenario::IdlePass) as u64;
        n += self.runs(Scenario::Shrink) as u64;
        if self.runs(Scenario::Async) {
            n += self.async_params().steps();
        }
        if self.runs(Scenario::Keys) {
            n += self.keys_params().steps();
        }
        n += self.runs(Scenario::Schedules) as u64;
        if self.runs(Scenario::Dead) {
            n += self.dead_params().steps();
        }
        if self.runs(Scenario::Dashboard) {
            n += self.dashboard_params().steps();
        }
        n
    }

    fn dashboard_params(&self) -> dashboard_runs::Params {
        dashboard_runs::Params {
            events: self.dashboard_events,
            rounds: self.publish_rounds,
        }
    }

    fn dead_params(&self) -> dead_runs::Params {
        dead_runs::Params {
            dead: self.dead_letters,
            e2e_events: self.e2e_events,
            rounds: self.publish_rounds,
        }
    }

    fn schedule_params(&self) -> schedule_runs::Params {
        schedule_runs::Params {
            schedules: self.schedules,
            secs: Duration::from_secs_f64(if self.quick { 3.0 } else { 10.0 }),
        }
    }

    fn keys_params(&self) -> keys_runs::Params {
        keys_runs::Params {
            secs: Duration::from_secs_f64(self.publish_secs),
            warmup: Duration::from_secs_f64(self.publish_warmup_secs),
            rounds: self.publish_rounds,
            publishers: self.publishers,
            events: self.keys_events,
            memory_events: self.keys_memory_events,
        }
    }

    fn async_params(&self) -> async_runs::Params {
        async_runs::Params {
            secs: Duration::from_secs_f64(self.publish_secs),
            warmup: Duration::from_secs_f64(self.publish_warmup_secs),
            rounds: self.publish_rounds,
            tasks: self.async_tasks.clone(),
            e2e_events: self.async_e2e_events,
            e2e_publishers: self.e2e_publishers,
            sleep_events: self.async_sleep_events,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    name: String,
    measured: f64,
    /// `>=` or `<=`.
    comparison: &'static str,
    target: f64,
    met: bool,
}

pub fn target(name: String, measured: f64, comparison: &'static str, target: f64) -> Target {
    let met = match comparison {
        ">=" => measured >= target,
        _ => measured <= target,
    };
    Target {
        name,
        measured,
        comparison,
        target,
        met,
    }
}

#[derive(Clone, Debug, Serialize)]
struct Report {
    command: Vec<String>,
    started_unix_s: u64,
    duration_s: f64,
    machine: machine::Machine,
    versions: machine::Versions,
    parameters: Params,
    publish: Option<Vec<publish::ShapeResult>>,
    end_to_end: Option<engine_runs::EndToEnd>,
    timer: Option<engine_runs::Timer>,
    recovery: Option<Vec<recovery::Recovery>>,
    memory: Option<Vec<recovery::Memory>>,
    compaction: Option<engine_runs::Compaction>,
    workers: Option<core_runs::Workers>,
    timer32: Option<core_runs::Timer32>,
    idle_pass: Option<core_runs::IdlePass>,
    shrink: Option<core_runs::Shrink>,
    #[serde(rename = "async")]
    async_api: Option<async_runs::Async>,
    keys: Option<keys_runs::Keys>,
    schedules: Option<schedule_runs::Schedules>,
    dead: Option<dead_runs::Dead>,
    dashboard: Option<dashboard_runs::Dashboard>,
    targets: Vec<Target>,
}

/// The progress bar on stderr (hidden when stderr is not a terminal).
pub struct Progress {
    bar: ProgressBar,
    step: std::cell::Cell<u64>,
}

impl Progress {
    fn new(steps: u64) -> Progress {
        let bar = ProgressBar::new(steps);
        bar.set_style(
            ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                .expect("progress template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress {
            bar,
            step: std::cell::Cell::new(0),
        }
    }

    /// A new step begins (the previous one is done).
    pub fn step(&self, msg: &str) {
        if self.step.get() > 0 {
            self.bar.inc(1);
        }
        self.step.set(self.step.get() + 1);
        self.bar.set_message(msg.to_string());
    }

    /// More about the current step.
    pub fn detail(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }

    /// A line above the bar.
    pub fn println(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// An empty directory `name` under `base`.
pub fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench directory");
    dir
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn format_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn default_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("afterlog-bench")
}

fn main() {
    let args = Args::parse();
    if let Some(dir) = &args.child_open {
        recovery::child_open(dir);
        return;
    }
    if let Some(dir) = &args.child_serve {
        dashboard_runs::child_serve(dir);
        return;
    }
    let params = Params::from(&args);
    let dir = args.dir.clone().unwrap_or_else(default_dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create bench directory");
    let mut machine = machine::machine(&dir);
    if machine.file_system.contains("tmpfs") || machine.file_system.contains("ramfs") {
        eprintln!(
            "WARNING: {} is in memory; pass --dir on a disk",
            dir.display()
        );
    }
    let started = Instant::now();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let progress = Progress::new(params.steps());

    let publish = params.runs(Scenario::Publish).then(|| {
        let r = publish::run(
            &dir,
            &publish::Params {
                secs: Duration::from_secs_f64(params.publish_secs),
                warmup: Duration::from_secs_f64(params.publish_warmup_secs),
                rounds: params.publish_rounds,
                publishers: params.publishers,
                batch: params.batch,
            },
            &progress,
        );
        for s in &r {
            progress.println(&format!(
                "publish, {}: {}",
                s.scenario,
                publish::SYSTEMS
                    .iter()
                    .map(|k| format!("{k} {}/s", format_rate(s.systems[*k].events_per_s)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        r
    });
    let end_to_end = params.runs(Scenario::EndToEnd).then(|| {
        let r = engine_runs::end_to_end(&dir, params.e2e_events, params.e2e_publishers, &progress);
        progress.println(&format!("end to end: {}/s", format_rate(r.events_per_s)));
        r
    });
    let timer = params.runs(Scenario::Timer).then(|| {
        let r = engine_runs::timer(
            &dir,
            params.timer_events,
            Duration::from_secs_f64(params.timer_lead_secs),
            &progress,
        );
        progress.println(&format!(
            "timer: lateness p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            r.lateness_p50_ms, r.lateness_p99_ms, r.lateness_max_ms
        ));
        r
    });
    let (recovery, memory) = if params.runs(Scenario::Recovery) {
        let (r, m) = recovery::run(&dir, &params.recovery_events, params.cold, &progress);
        (Some(r), Some(m))
    } else {
        (None, None)
    };
    let compaction = params.runs(Scenario::Compaction).then(|| {
        engine_runs::compaction(
            &dir,
            Duration::from_secs_f64(params.compaction_secs),
            params.compaction_pairs,
            &progress,
        )
    });
    let (workers, timer32, idle_pass) = core_scenarios(&dir, &params, &progress);
    let shrink = params
        .runs(Scenario::Shrink)
        .then(|| core_runs::shrink(&dir, params.shrink_mb, 1, &progress));
    let async_api = params
        .runs(Scenario::Async)
        .then(|| async_runs::run(&dir, &params.async_params(), &progress));
    let keys = params
        .runs(Scenario::Keys)
        .then(|| keys_runs::run(&dir, &params.keys_params(), &progress));
    let schedules = params
        .runs(Scenario::Schedules)
        .then(|| schedule_runs::run(&dir, &params.schedule_params(), &progress));
    let dead = params
        .runs(Scenario::Dead)
        .then(|| dead_runs::run(&dir, &params.dead_params(), &progress));
    let dashboard = params
        .runs(Scenario::Dashboard)
        .then(|| dashboard_runs::run(&dir, &params.dashboard_params(), &progress));
    progress.finish();
    let _ = std::fs::remove_dir_all(&dir);
    machine.load_average_end = machine::load_average();

    let mut report = Report {
        command: std::env::args().collect(),
        started_unix_s,
        duration_s: started.elapsed().as_secs_f64(),
        machine,
        versions: machine::versions(),
        parameters: params,
        publish,
        end_to_end,
        timer,
        recovery,
        memory,
        compaction,
        workers,
        timer32,
        idle_pass,
        shrink,
        async_api,
        keys,
        schedules,
        dead,
        dashboard,
        targets: Vec::new(),
    };
    report.targets = targets(&report);
    print_table(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).expect("serialize report");
        std::fs::write(path, text + "\n").expect("write JSON");
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot::draw(&report, path).expect("draw plot");
        eprintln!("wrote {}", path.display());
    }
}

type CoreResults = (
    Option<core_runs::Workers>,
    Option<core_runs::Timer32>,
    Option<core_runs::IdlePass>,
);

fn core_scenarios(dir: &Path, params: &Params, progress: &Progress) -> CoreResults {
    let workers = params
        .runs(Scenario::Workers)
        .then(|| core_runs::workers(dir, params.workers_events, progress));
    let timer32 = params.runs(Scenario::Timer32).then(|| {
        let r = core_runs::timer32(
            dir,
            params.timer_events,
            Duration::from_secs_f64(params.timer_lead_secs),
            progress,
        );
        progress.println(&format!(
            "timer32: lateness p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            r.lateness_p50_ms, r.lateness_p99_ms, r.lateness_max_ms
        ));
        r
    });
    let idle_pass = params.runs(Scenario::IdlePass).then(|| {
        core_runs::idle_pass(
            dir,
            params.idle_pending,
            params.idle_passes,
            Duration::from_secs_f64(params.idle_secs),
            progress,
        )
    });
    (workers, timer32, idle_pass)
}

fn targets(r: &Report) -> Vec<Target> {
    let mut t = Vec::new();
    if let Some(publish) = &r.publish {
        for s in publish {
            let raw_target = if s.events_per_publish > 1 { 0.7 } else { 0.9 };
            for (system, ratios) in [("log", &s.log_ratio), ("afterlog", &s.afterlog_ratio)] {
                t.push(target(
                    format!("publish, {}: {system} / raw", s.scenario),
                    ratios["raw"],
                    ">=",
                    raw_target,
                ));
            }
            if s.publishers > 1 {
                t.push(target(
                    format!("publish, {}: afterlog / sqlite", s.scenario),
                    s.afterlog_ratio["sqlite"],
                    ">=",
                    5.0,
                ));
                t.push(target(
                    format!("publish, {}: afterlog / fjall", s.scenario),
                    s.afterlog_ratio["fjall"],
                    ">=",
                    2.0,
                ));
            }
        }
    }
    if let Some(e) = &r.end_to_end {
        t.push(target(
            "end to end, events/s".into(),
            e.events_per_s,
            ">=",
            200_000.0,
        ));
    }
    if let Some(timer) = &r.timer {
        t.push(target(
            format!("lateness p99, ms ({} due within 1 s)", timer.events),
            timer.lateness_p99_ms,
            "<=",
            5.0,
        ));
    }
    // Side by side with the jobs-of-50 timer above.
    if let Some(timer) = &r.timer32 {
        t.push(target(
            format!("lateness p99, ms ({} publishes, 32 threads)", timer.events),
            timer.lateness_p99_ms,
            "<=",
            5.0,
        ));
    }
    for rec in r.recovery.iter().flatten() {
        t.push(target(
            format!("recovery of {} pending, events/s", rec.pending),
            rec.events_per_s,
            ">=",
            1_000_000.0,
        ));
    }
    for m in r.memory.iter().flatten() {
        t.push(target(
            format!("memory at {} pending, bytes per event", m.pending),
            m.bytes_per_pending_event,
            "<=",
            64.0,
        ));
    }
    if let Some(c) = &r.compaction {
        t.push(target(
            "publish with compaction on / off".into(),
            c.ratio,
            ">=",
            0.85,
        ));
    }
    core_targets(r, &mut t);
    if let Some(a) = &r.async_api {
        async_runs::targets(a, &mut t);
    }
    if let Some(k) = &r.keys {
        keys_runs::targets(k, &mut t);
    }
    if let Some(s) = &r.schedules {
        schedule_runs::targets(s, &mut t);
    }
    if let Some(d) = &r.dead {
        dead_runs::targets(d, &mut t);
    }
    if let Some(d) = &r.dashboard {
        dashboard_runs::targets(d, &mut t);
    }
    t
}

fn core_targets(r: &Report, t: &mut Vec<Target>) {
    if let Some(w) = &r.workers {
        for run in &w.runs {
            t.push(target(
                format!(
                    "workers, {} of {}: elapsed / ideal {:.1} s",
                    run.shape, run.events, w.ideal_s
                ),
                run.ratio_to_ideal,
                "<=",
                1.2,
            ));
        }
    }
    if let Some(s) = &r.shrink {
        t.push(target(
            format!(
                "disk after compacting {} MB finished / (live + one segment)",
                s.finished_bytes / 1_000_000
            ),
            s.ratio_to_live_plus_segment,
            "<=",
            // The live data's own segment file is a little larger than the data, and the
            // 8 KiB manifest is on disk too.
            1.05,
        ));
    }
    if let Some(p) = &r.idle_pass {
        for (what, ms) in [
            ("median", p.idle_pass_median_ms),
            ("max", p.idle_pass_max_ms),
        ] {
            t.push(target(
                format!("idle pass at {} pending, {what} ms", p.pending),
                ms,
                "<=",
                10.0,
            ));
        }
        t.push(target(
            "publish p99 with passes every 100 ms / off".into(),
            p.p99_ratio,
            "<=",
            1.2,
        ));
    }
}

fn print_table(r: &Report) {
    let m = &r.machine;
    println!(
        "afterlog {} | {} cores, {:.1} GiB, {} on {} ({}) | load {:.2} → {:.2} | {:.0} s",
        r.versions.afterlog,
        m.cores,
        m.memory_bytes as f64 / (1u64 << 30) as f64,
        m.file_system,
        m.mount_point,
        m.dir,
        m.load_average_start[0],
        m.load_average_end[0],
        r.duration_s
    );
    println!(
        "baselines: SQLite {} (rusqlite {}), fjall {}; {}",
        r.versions.sqlite, r.versions.rusqlite, r.versions.fjall, r.versions.rustc
    );
    if let Some(publish) = &r.publish {
        println!();
        print!("{:<18}", "durable publish");
        for system in publish::SYSTEMS {
            print!(" {:>10}", format!("{system}/s"));
        }
        println!();
        for s in publish {
            print!("{:<18}", s.scenario);
            for system in publish::SYSTEMS {
                print!(" {:>10}", format_rate(s.systems[system].events_per_s));
            }
            println!();
        }
        println!();
        print!("{:<18}", "ratios");
        for baseline in publish::BASELINES {
            print!(
                " {:>14} {:>14}",
                format!("afterlog/{baseline}"),
                format!("log/{baseline}")
            );
        }
        println!();
        for s in publish {
            print!("{:<18}", s.scenario);
            for baseline in publish::BASELINES {
                print!(
                    " {:>13.2}x {:>13.2}x",
                    s.afterlog_ratio[baseline], s.log_ratio[baseline]
                );
            }
            println!();
        }
        println!(
            "{:<18} {}",
            "events per sync",
            publish
                .iter()
                .map(|s| format!(
                    "{}: {}",
                    s.scenario,
                    publish::SYSTEMS
                        .iter()
                        .map(|k| format!("{k} {:.1}", s.systems[*k].events_per_sync))
                        .collect::<Vec<_>>()
                        .join(" ")
                ))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    if let Some(e) = &r.end_to_end {
        println!();
        println!(
            "end to end: {} events, {} publishers pushing jobs of {}: {}/s (published in {:.2} s, \
             all acked in {:.2} s; {:.1} records per fsync)",
            e.events,
            e.publishers,
            e.events_per_push,
            format_rate(e.events_per_s),
            e.published_s,
            e.acked_s,
            e.records_per_fsync
        );
    }
    if let Some(t) = &r.timer {
        println!(
            "timer: {} events due within 1 s: lateness p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
             (engine metrics: {} / {} / {} ms)",
            t.events,
            t.lateness_p50_ms,
            t.lateness_p99_ms,
            t.lateness_max_ms,
            t.engine_lateness_p50_ms,
            t.engine_lateness_p99_ms,
            t.engine_lateness_max_ms
        );
    }
    if let Some(t) = &r.timer32 {
        println!(
            "timer32: {} publishes from {} threads, due within 1 s: lateness p50 {:.2} ms, \
             p99 {:.2} ms, max {:.2} ms (engine metrics: {} / {} / {} ms; published in \
             {:.2} s, {} after their due time)",
            t.events,
            t.threads,
            t.lateness_p50_ms,
            t.lateness_p99_ms,
            t.lateness_max_ms,
            t.engine_lateness_p50_ms,
            t.engine_lateness_p99_ms,
            t.engine_lateness_max_ms,
            t.publish_s,
            t.published_late
        );
    }
    if let (Some(rec), Some(mem)) = (&r.recovery, &r.memory) {
        println!();
        println!(
            "{:<12} {:>10} {:>9} {:>11} {:>10} {:>11} {:>9} {:>11}",
            "recovery",
            "data MiB",
            "open s",
            "events/s",
            "read s",
            "read MiB/s",
            "open/read",
            "B/pending"
        );
        for (rc, m) in rec.iter().zip(mem) {
            println!(
                "{:<12} {:>10.0} {:>9.3} {:>11} {:>10.3} {:>11.0} {:>8.1}x {:>11.1}",
                rc.pending,
                rc.data_bytes as f64 / (1u64 << 20) as f64,
                rc.open_s,
                format_rate(rc.events_per_s),
                rc.sequential_read_s,
                rc.sequential_bytes_per_s / (1u64 << 20) as f64,
                rc.open_over_read,
                m.bytes_per_pending_event
            );
            if let Some(c) = &rc.cold {
                println!(
                    "{:<12} {:>10} {:>9.3} {:>11} {:>10.3} {:>11} {:>8.1}x",
                    "  cold",
                    "",
                    c.open_s,
                    format_rate(c.events_per_s),
                    c.sequential_read_s,
                    "",
                    c.open_over_read
                );
            }
        }
    }
    if let Some(c) = &r.compaction {
        println!();
        println!(
            "compaction: on {}/s, off {}/s, ratio {:.2}",
            format_rate(c.on_events_per_s),
            format_rate(c.off_events_per_s),
            c.ratio
        );
        for run in c.runs.iter().filter(|r| r.compaction) {
            let max = run.disk_bytes.iter().map(|s| s.1).max().unwrap_or(0);
            println!(
                "  on: disk max {:.1} MiB, final {:.1} MiB, history written ~{:.1} MiB, reclaimed {:.1} MiB",
                max as f64 / 1048576.0,
                run.final_disk_bytes as f64 / 1048576.0,
                run.history_bytes as f64 / 1048576.0,
                run.compacted_bytes as f64 / 1048576.0
            );
        }
    }
    print_core(r);
    if let Some(a) = &r.async_api {
        async_runs::print(a);
    }
    if let Some(k) = &r.keys {
        keys_runs::print(k);
    }
    if let Some(s) = &r.schedules {
        schedule_runs::print(s);
    }
    if let Some(d) = &r.dead {
        dead_runs::print(d);
    }
    if let Some(d) = &r.dashboard {
        dashboard_runs::print(d);
    }
    println!();
    println!(
        "{:<52} {:>12} {:>12} {:>5}",
        "target", "measured", "target", "met"
    );
    for t in &r.targets {
        println!(
            "{:<52} {:>12} {:>12} {:>5}",
            t.name,
            fmt_figure(t.measured),
            format!("{} {}", t.comparison, fmt_figure(t.target)),
            if t.met { "yes" } else { "NO" }
        );
    }
}

fn print_core(r: &Report) {
    if let Some(w) = &r.workers {
        println!();
        for run in &w.runs {
            println!(
                "workers: {} events by {}, {} ms handlers on {} workers: {:.3} s, {:.2}x the \
                 ideal {:.1} s (engine lateness p50 {} / p99 {} / max {} ms)",
                run.events,
                run.shape,
                w.handler_ms,
                w.workers,
                run.elapsed_s,
                run.ratio_to_ideal,
                w.ideal_s,
                run.lateness_p50_ms,
                run.lateness_p99_ms,
                run.lateness_max_ms
            );
        }
    }
    if let Some(s) = &r.shrink {
        println!();
        println!(
            "shrink: {} MB finished beside {} MB live: {} MB on disk before compact_now, {} MB \
             after ({:.2} s), segments of {} MiB",
            s.finished_bytes / 1_000_000,
            s.live_bytes / 1_000_000,
            s.disk_before / 1_000_000,
            s.disk_after / 1_000_000,
            s.compact_s,
            s.segment_bytes >> 20
        );
    }
    if let Some(p) = &r.idle_pass {
        println!();
        println!(
            "idle pass: {} pending (prefilled in {:.2} s); first compact_now {:.1} ms; {} idle \
             passes: median {:.2} ms, max {:.2} ms ({} segments touched)",
            p.pending,
            p.prefill_s,
            p.first_pass_ms,
            p.idle_pass_ms.len(),
            p.idle_pass_median_ms,
            p.idle_pass_max_ms,
            p.idle_segments_touched
        );
        for run in &p.runs {
            println!(
                "  publish latency, {} publishers, compaction {}: p50 {:.0} µs, p99 {:.0} µs, \
                 max {:.0} µs ({}/s)",
                p.publishers,
                if run.compaction {
                    "every 100 ms"
                } else {
                    "off"
                },
                run.p50_us,
                run.p99_us,
                run.max_us,
                format_rate(run.events_per_s)
            );
        }
        println!(
            "  on / off: p50 {:.2}x, p99 {:.2}x",
            p.p50_ratio, p.p99_ratio
        );
    }
}

fn fmt_figure(v: f64) -> String {
    if v >= 1000.0 {
        format_rate(v)
    } else {
        format!("{v:.2}")
    }
}
