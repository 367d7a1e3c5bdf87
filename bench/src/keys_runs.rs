//! Scenario 12: keys, priorities and flow control, each measured side by side with the same
//! run without them.
//!
//! - **Keyed publish**: `publishers` threads publish 200-byte events due in a day for a timed
//!   run, each with a key of its own (`KeyMode::Keep`, distinct keys: every publish writes)
//!   against the same with `publish` (no key). Runs alternate; the median of `rounds` each.
//! - **Priorities**: `events` events due now are published (64 threads) before `start`, with
//!   priorities from -5 to 5 mixed, or none; then the engine starts and the rate is events
//!   from `start` to the last acknowledgement.
//! - **Concurrency limit**: the same, with the events spread over five names; one run with
//!   `Options::concurrency("limited", 1)` on one of them, one without. The rate is that of the
//!   four other names: events from `start` to their last acknowledgement.
//! - **Memory**: a directory of `memory_events` pending events, each published with a key
//!   (`key-` and the id, 12 bytes), against one without keys, written alike (one record per
//!   event, through the log's `append_all`); a fresh process opens each and reports its
//!   resident anonymous memory per pending event (as scenario 5 does).

use crate::recovery::{fill, open_in_child};
use crate::{Progress, fresh_dir, median};
use afterlog::{After, Engine, KeyMode, Options, PublishOptions};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BODY: [u8; 200] = [7; 200];
const LIMITED: &str = "limited";
const OTHERS: [&str; 4] = ["a", "b", "c", "d"];
/// Bytes of each key of the memory run: `key-` and 8 digits.
pub const KEY_LEN: usize = 12;

pub struct Params {
    pub secs: Duration,
    pub warmup: Duration,
    pub rounds: usize,
    pub publishers: usize,
    pub events: u64,
    pub memory_events: u64,
}

impl Params {
    pub fn steps(&self) -> u64 {
        4 * self.rounds as u64 + 2
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Keys {
    pub publishers: usize,
    pub unkeyed_per_s: f64,
    pub keyed_per_s: f64,
    /// keyed / unkeyed.
    pub keyed_ratio: f64,
    pub due_events: u64,
    pub no_priorities_per_s: f64,
    pub priorities_per_s: f64,
    /// with priorities / without.
    pub priorities_ratio: f64,
    /// The four unlimited names' events per second, without any limit and beside a
    /// concurrency limit of 1 on the fifth name.
    pub others_unlimited_per_s: f64,
    pub others_beside_limit_per_s: f64,
    /// beside the limit / without.
    pub limit_ratio: f64,
    /// Attempts of the limited name that ran at once, at most (must be 1).
    pub limited_most_at_once: u64,
    pub memory_events: u64,
    pub key_bytes: usize,
    pub unkeyed_bytes_per_event: f64,
    pub keyed_bytes_per_event: f64,
    /// Keyed bytes per event minus the key's bytes: the target is ≤ 64.
    pub keyed_bytes_beyond_key: f64,
    pub keyed_index_estimate_per_event: f64,
}

/// Publishes from `publishers` threads for `secs` (after `warmup`); returns events/s.
fn timed_publish(base: &Path, p: &Params, keyed: bool) -> f64 {
    let dir = fresh_dir(base, "keys-publish");
    let engine = Engine::open_with(&dir, Options::default()).expect("open");
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..p.publishers)
        .map(|t| {
            let (engine, stop, counting, count) = (
                engine.clone(),
                stop.clone(),
                counting.clone(),
                count.clone(),
            );
            std::thread::spawn(move || {
                let mut i = 0u64;
                let day = After::parse("1 day").expect("a day");
                while !stop.load(Ordering::Relaxed) {
                    if keyed {
                        let key = format!("k-{t}-{i}");
                        engine
                            .publish_with(
                                "bench",
                                BODY,
                                day.clone(),
                                PublishOptions::default().key(key, KeyMode::Keep),
                            )
                            .expect("publish_with");
                    } else {
                        engine.publish("bench", BODY, day.clone()).expect("publish");
                    }
                    i += 1;
                    if counting.load(Ordering::Relaxed) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(p.warmup);
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(p.secs);
    let n = count.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("publisher");
    }
    engine.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
    n as f64 / elapsed.as_secs_f64()
}

/// Publishes `events` due now over `names` from 64 threads, with `priority(i)` each, before
/// `start`; then times delivery. Returns (events/s of the names `timed` from `start` to
/// their last acknowledgement, most attempts of `LIMITED` at once).
fn deliver(
    base: &Path,
    events: u64,
    names: &[&'static str],
    options: Options,
    priority: fn(u64) -> i8,
    timed: fn(&str) -> bool,
) -> (f64, u64) {
    let dir = fresh_dir(base, "keys-deliver");
    let engine = Engine::open_with(&dir, options).expect("open");
    let publishers = 64u64;
    let per = events.div_ceil(publishers);
    let names: Arc<Vec<&'static str>> = Arc::new(names.to_vec());
    let threads: Vec<_> = (0..publishers)
        .map(|t| {
            let (engine, names) = (engine.clone(), names.clone());
            std::thread::spawn(move || {
                for i in t * per..(t + 1) * per {
                    let name = names[i as usize % names.len()];
                    let options = PublishOptions::default().priority(priority(i));
                    engine
                        .publish_with(name, BODY, After::NOW, options)
                        .expect("publish_with");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("publisher");
    }
    let total = per * publishers;
    let expected = (0..total)
        .filter(|&i| timed(names[i as usize % names.len()]))
        .count() as u64;
    let acked = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    for &name in names.iter() {
        let (acked, running, most) = (acked.clone(), running.clone(), most.clone());
        let counts = timed(name);
        engine.on(name, move |_event, _ctx| {
            if name == LIMITED {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                running.fetch_sub(1, Ordering::SeqCst);
            }
            if counts {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    let started = Instant::now();
    engine.start();
    while acked.load(Ordering::Relaxed) < expected {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed();
    engine.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
    (
        expected as f64 / elapsed.as_secs_f64(),
        most.load(Ordering::SeqCst),
    )
}

/// Bytes of resident anonymous memory per pending event of a directory of `events` pending
/// events, keyed or not, opened by a fresh process; and the index's own estimate.
fn memory(base: &Path, events: u64, keyed: bool, progress: &Progress) -> (f64, f64) {
    let dir = fresh_dir(base, if keyed { "keys-memory" } else { "plain-memory" });
    fill(
        &dir,
        events,
        progress,
        keyed.then_some(key_of as fn(u64) -> Vec<u8>),
    );
    let report = open_in_child(&dir);
    assert_eq!(report.pending, events, "every written event is pending");
    let _ = std::fs::remove_dir_all(&dir);
    (
        report.rss_anon_after.saturating_sub(report.rss_anon_before) as f64 / events as f64,
        report.index_bytes_estimate as f64 / events as f64,
    )
}

pub fn run(base: &Path, p: &Params, progress: &Progress) -> Keys {
    let (mut unkeyed, mut keyed) = (Vec::new(), Vec::new());
    for round in 0..p.rounds {
        progress.step(&format!("keys: unkeyed publish, round {}", round + 1));
        unkeyed.push(timed_publish(base, p, false));
        progress.step(&format!("keys: keyed publish, round {}", round + 1));
        keyed.push(timed_publish(base, p, true));
    }
    let (unkeyed_per_s, keyed_per_s) = (median(unkeyed), median(keyed));

    let mixed = |i: u64| ((i * 7919) % 11) as i8 - 5;
    let none = |_: u64| 0i8;
    let all = |_: &str| true;
    let names = [OTHERS[0], OTHERS[1], OTHERS[2], OTHERS[3], LIMITED];
    let others = |name: &str| name != LIMITED;
    let (mut plain, mut prioritized, mut unlimited, mut limited) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut limited_most_at_once = 0;
    // Each pair runs one after the other, round after round: the median of each.
    for round in 1..=p.rounds {
        progress.step(&format!(
            "keys: {} due, no priorities / mixed, round {round}",
            p.events
        ));
        plain.push(deliver(base, p.events, &["bench"], Options::default(), none, all).0);
        prioritized.push(deliver(base, p.events, &["bench"], Options::default(), mixed, all).0);
        progress.step(&format!(
            "keys: five names, no limit / concurrency 1, round {round}"
        ));
        unlimited.push(deliver(base, p.events, &names, Options::default(), none, others).0);
        let (rate, most) = deliver(
            base,
            p.events,
            &names,
            Options::default().concurrency(LIMITED, 1),
            none,
            others,
        );
        limited.push(rate);
        limited_most_at_once = limited_most_at_once.max(most);
    }
    let (no_priorities_per_s, priorities_per_s) = (median(plain), median(prioritized));
    let (others_unlimited_per_s, others_beside_limit_per_s) = (median(unlimited), median(limited));

    progress.step(&format!(
        "keys: memory of {} pending, no keys",
        p.memory_events
    ));
    let (unkeyed_bytes, _) = memory(base, p.memory_events, false, progress);
    progress.step(&format!(
        "keys: memory of {} pending keyed",
        p.memory_events
    ));
    let (keyed_bytes, keyed_estimate) = memory(base, p.memory_events, true, progress);
    Keys {
        publishers: p.publishers,
        unkeyed_per_s,
        keyed_per_s,
        keyed_ratio: keyed_per_s / unkeyed_per_s,
        due_events: p.events,
        no_priorities_per_s,
        priorities_per_s,
        priorities_ratio: priorities_per_s / no_priorities_per_s,
        others_unlimited_per_s,
        others_beside_limit_per_s,
        limit_ratio: others_beside_limit_per_s / others_unlimited_per_s,
        limited_most_at_once,
        memory_events: p.memory_events,
        key_bytes: KEY_LEN,
        unkeyed_bytes_per_event: unkeyed_bytes,
        keyed_bytes_per_event: keyed_bytes,
        keyed_bytes_beyond_key: keyed_bytes - KEY_LEN as f64,
        keyed_index_estimate_per_event: keyed_estimate,
    }
}

pub fn targets(k: &Keys, t: &mut Vec<crate::Target>) {
    use crate::target;
    t.push(target(
        format!("keyed / unkeyed publish, {} publishers", k.publishers),
        k.keyed_ratio,
        ">=",
        0.9,
    ));
    t.push(target(
        format!("delivery of {} due, mixed priorities / none", k.due_events),
        k.priorities_ratio,
        ">=",
        0.9,
    ));
    t.push(target(
        "other names' end to end beside concurrency 1 / no limit".into(),
        k.limit_ratio,
        ">=",
        0.9,
    ));
    t.push(target(
        "concurrency 1: most attempts at once".into(),
        k.limited_most_at_once as f64,
        "<=",
        1.0,
    ));
    t.push(target(
        format!(
            "memory per keyed pending event beyond its {}-byte key, bytes",
            k.key_bytes
        ),
        k.keyed_bytes_beyond_key,
        "<=",
        64.0,
    ));
}

pub fn print(k: &Keys) {
    println!();
    println!(
        "keys: publish, {} publishers: unkeyed {}/s, keyed {}/s ({:.2}x)",
        k.publishers,
        crate::format_rate(k.unkeyed_per_s),
        crate::format_rate(k.keyed_per_s),
        k.keyed_ratio
    );
    println!(
        "keys: {} due events delivered: no priorities {}/s, mixed priorities {}/s ({:.2}x)",
        k.due_events,
        crate::format_rate(k.no_priorities_per_s),
        crate::format_rate(k.priorities_per_s),
        k.priorities_ratio
    );
    println!(
        "keys: four names' events beside a fifth: no limit {}/s, fifth at concurrency 1 {}/s \
         ({:.2}x; the fifth ran at most {} at once)",
        crate::format_rate(k.others_unlimited_per_s),
        crate::format_rate(k.others_beside_limit_per_s),
        k.limit_ratio,
        k.limited_most_at_once
    );
    println!(
        "keys: memory at {} pending: {:.1} bytes per event without keys, {:.1} with a \
         {}-byte key ({:.1} beyond the key; index estimate {:.1})",
        k.memory_events,
        k.unkeyed_bytes_per_event,
        k.keyed_bytes_per_event,
        k.key_bytes,
        k.keyed_bytes_beyond_key,
        k.keyed_index_estimate_per_event
    );
}

/// The key of event `id` in the memory run.
fn key_of(id: u64) -> Vec<u8> {
    let key = format!("key-{:08}", id % 100_000_000).into_bytes();
    debug_assert_eq!(key.len(), KEY_LEN);
    key
}
