//! The read-only commands beside a busy engine: publishers and handlers append to small
//! segments while compaction rewrites and removes them every 100 ms. Every command must see
//! a sound log (exit 0, no CORRUPT): the engine is healthy, so any other report is false.
//!
//! `AFTERLOG_READER_RUNS` runs of each command (default 30); the campaign runs 1,000 in
//! release (scripts/campaign).

use afterlog::{After, Engine, Options};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const SEGMENT_BYTES: u64 = 64 << 10;
const COMPACTION_INTERVAL: Duration = Duration::from_millis(100);
const PUBLISHERS: usize = 2;

/// An engine that publishes and acknowledges until dropped.
struct BusyEngine {
    engine: Engine,
    stop: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
    publishers: Vec<JoinHandle<()>>,
}

impl BusyEngine {
    fn start(dir: &Path) -> BusyEngine {
        let options = Options::default()
            .segment_bytes(SEGMENT_BYTES)
            .compaction_interval(Some(COMPACTION_INTERVAL));
        let engine = Engine::open_with(dir, options).expect("open the engine");
        engine.on("ok", |_, _| Ok(()));
        engine.start();
        let stop = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let publishers = (0..PUBLISHERS)
            .map(|p| {
                let (engine, stop, published) = (engine.clone(), stop.clone(), published.clone());
                std::thread::spawn(move || {
                    let body = vec![b'x'; 100 + 50 * p];
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // Every tenth event stays pending a while, so compaction rewrites
                        // segments (a temporary file renamed over the old one) before it
                        // removes them.
                        let after = if n.is_multiple_of(10) {
                            After::delay(Duration::from_millis(700))
                        } else {
                            After::NOW
                        };
                        engine.publish("ok", &body, after).expect("publish");
                        published.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    }
                })
            })
            .collect();
        BusyEngine {
            engine,
            stop,
            published,
            publishers,
        }
    }

    /// Waits until the engine has written a few segments' worth.
    fn warm_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.published.load(Ordering::Relaxed) < 2_000 {
            assert!(Instant::now() < deadline, "the engine published too slowly");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for BusyEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for p in self.publishers.drain(..) {
            let _ = p.join();
        }
        let _ = self.engine.close();
    }
}

fn runs() -> usize {
    std::env::var("AFTERLOG_READER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

/// The read-only commands, as argument lists; `{out}` is a fresh salvage directory.
const COMMANDS: [(&str, &[&str]); 5] = [
    ("inspect", &["inspect", "{dir}"]),
    ("events", &["events", "{dir}", "--limit", "100"]),
    ("replay", &["replay", "{dir}", "--kind", "publish"]),
    ("verify", &["verify", "{dir}"]),
    ("salvage", &["verify", "{dir}", "--salvage", "{out}"]),
];

#[test]
fn read_only_commands_beside_a_busy_engine_report_no_false_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let busy = BusyEngine::start(&dir);
    busy.warm_up();
    let runs = runs();
    let started = Instant::now();
    let mut false_reports: Vec<String> = Vec::new();
    let mut per_command = [0usize; COMMANDS.len()];
    for run in 0..runs {
        for (c, (name, args)) in COMMANDS.iter().enumerate() {
            let out: PathBuf = tmp.path().join(format!("salvage-{run}"));
            let args: Vec<String> = args
                .iter()
                .map(|a| {
                    a.replace("{dir}", &dir.to_string_lossy())
                        .replace("{out}", &out.to_string_lossy())
                })
                .collect();
            let o = Command::new(env!("CARGO_BIN_EXE_afterlog"))
                .args(&args)
                .output()
                .expect("run afterlog");
            let stdout = String::from_utf8_lossy(&o.stdout);
            if o.status.code() != Some(0) || stdout.contains("CORRUPT") {
                per_command[c] += 1;
                let report = format!(
                    "run {run}, {name}: exit {:?}: {} {}",
                    o.status.code(),
                    String::from_utf8_lossy(&o.stderr).trim(),
                    stdout
                        .lines()
                        .filter(|l| l.contains("CORRUPT"))
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                eprintln!("{report}");
                false_reports.push(report);
            }
            if out.exists() {
                std::fs::remove_dir_all(&out).unwrap();
            }
        }
    }
    let published = busy.published.load(Ordering::Relaxed);
    drop(busy);
    let counts: Vec<String> = COMMANDS
        .iter()
        .zip(per_command)
        .map(|((name, _), n)| format!("{name} {n}"))
        .collect();
    println!(
        "readers beside a running engine: {runs} runs of each of {} commands in {:.1} s \
         ({published} events published meanwhile), {} false reports ({})",
        COMMANDS.len(),
        started.elapsed().as_secs_f64(),
        false_reports.len(),
        counts.join(", ")
    );
    assert!(
        false_reports.is_empty(),
        "{} false reports of damage beside a healthy engine, first: {}",
        false_reports.len(),
        false_reports[0]
    );
}
