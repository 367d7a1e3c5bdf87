//! Scenario 14: dead letters. A directory is filled with `dead` dead letters: events of a
//! name with no handler, pushed in batches of 1,024 and delivered (each is acknowledged as
//! ignored, so it is kept as a dead letter). Then:
//! - memory: a fresh process opens the directory and reports its resident anonymous memory
//!   before and after `Engine::open_with` (as scenario 5 does): the bytes per dead letter,
//!   beside the index's own estimate;
//! - end to end: scenario 2's run (`e2e_events` live events from 4 publishers, jobs of 50)
//!   on that directory against the same run on a fresh one, alternated round after round;
//!   the median of each.

use crate::engine_runs::{EndToEnd, end_to_end_in};
use crate::recovery::open_in_child;
use crate::{Progress, fresh_dir, median};
use afterlog::{Engine, Options};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub struct Params {
    pub dead: u64,
    pub e2e_events: u64,
    pub rounds: usize,
}

impl Params {
    pub fn steps(&self) -> u64 {
        2 + 2 * self.rounds as u64
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Dead {
    pub dead_letters: u64,
    pub fill_s: f64,
    /// Resident anonymous bytes a fresh process gains by opening the directory, per dead
    /// letter.
    pub bytes_per_dead_letter: f64,
    /// The engine's estimate of its index's heap bytes (`metrics().index_bytes`), per dead
    /// letter.
    pub index_estimate_bytes_per_dead_letter: f64,
    pub rounds: usize,
    pub fresh: Vec<EndToEnd>,
    pub beside_dead: Vec<EndToEnd>,
    pub fresh_events_per_s: f64,
    pub beside_dead_events_per_s: f64,
    /// Live end-to-end rate beside the dead letters / on a fresh directory.
    pub ratio: f64,
}

/// Fills `dir` with `dead` dead letters; the seconds it took.
fn fill(dir: &Path, dead: u64) -> f64 {
    let started = std::time::Instant::now();
    let engine = Engine::open_with(dir, Options::default().max_push_events(1024)).expect("open");
    let body = [7u8; 200];
    let mut left = dead;
    while left > 0 {
        let n = left.min(1024) as usize;
        engine
            .push("doomed", std::iter::repeat_n(&body[..], n), Duration::ZERO)
            .expect("push");
        left -= n as u64;
    }
    // Every event is due now and has no handler: each becomes a dead letter.
    engine.start();
    while engine.metrics().dead_letters < dead {
        std::thread::sleep(Duration::from_millis(10));
    }
    engine.close().expect("close");
    started.elapsed().as_secs_f64()
}

pub fn run(base: &Path, p: &Params, progress: &Progress) -> Dead {
    progress.step(&format!("dead letters: {} to fill a directory", p.dead));
    let dead_dir = fresh_dir(base, "dead-letters");
    let fill_s = fill(&dead_dir, p.dead);
    progress.step("dead letters: memory per dead letter, in a fresh process");
    let report = open_in_child(&dead_dir);
    assert_eq!(
        report.dead_letters, p.dead,
        "every dead letter is kept after a reopen"
    );
    let (mut fresh, mut beside_dead) = (Vec::new(), Vec::new());
    let count = |engine: &Engine, acked: std::sync::Arc<std::sync::atomic::AtomicU64>| {
        engine.on("bench", move |_event, _ctx| {
            acked.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
    };
    for round in 1..=p.rounds {
        progress.step(&format!("dead letters: end to end, fresh, round {round}"));
        let dir = fresh_dir(base, "dead-fresh");
        fresh.push(end_to_end_in(
            &dir,
            p.e2e_events,
            4,
            Options::default(),
            count,
        ));
        let _ = std::fs::remove_dir_all(&dir);
        progress.step(&format!(
            "dead letters: end to end beside {} dead letters, round {round}",
            p.dead
        ));
        beside_dead.push(end_to_end_in(
            &dead_dir,
            p.e2e_events,
            4,
            Options::default(),
            count,
        ));
    }
    let _ = std::fs::remove_dir_all(&dead_dir);
    let rate = |runs: &[EndToEnd]| median(runs.iter().map(|r| r.events_per_s).collect());
    let (fresh_events_per_s, beside_dead_events_per_s) = (rate(&fresh), rate(&beside_dead));
    Dead {
        dead_letters: p.dead,
        fill_s,
        bytes_per_dead_letter: report.rss_anon_after.saturating_sub(report.rss_anon_before) as f64
            / p.dead as f64,
        index_estimate_bytes_per_dead_letter: report.index_bytes_estimate as f64 / p.dead as f64,
        rounds: p.rounds,
        fresh,
        beside_dead,
        fresh_events_per_s,
        beside_dead_events_per_s,
        ratio: beside_dead_events_per_s / fresh_events_per_s,
    }
}

pub fn targets(d: &Dead, t: &mut Vec<crate::Target>) {
    use crate::target;
    t.push(target(
        format!("{} dead letters: memory each, bytes", d.dead_letters),
        d.bytes_per_dead_letter,
        "<=",
        64.0,
    ));
    t.push(target(
        format!("end to end beside {} dead letters / none", d.dead_letters),
        d.ratio,
        ">=",
        0.9,
    ));
}

pub fn print(d: &Dead) {
    println!();
    println!(
        "dead letters: {} (filled in {:.1} s): {:.1} B of memory each after a reopen (index \
         estimate {:.1} B); live end to end beside them {:.0}/s vs {:.0}/s fresh = {:.2}×",
        d.dead_letters,
        d.fill_s,
        d.bytes_per_dead_letter,
        d.index_estimate_bytes_per_dead_letter,
        d.beside_dead_events_per_s,
        d.fresh_events_per_s,
        d.ratio
    );
}
