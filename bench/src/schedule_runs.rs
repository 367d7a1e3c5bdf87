//! Scenario 13: recurring schedules. `schedules` schedules, each `Recurring::every(1 s)`, are
//! made (their anchors spread over the second it takes to make them); after a warm-up of two
//! seconds, every delivery for `secs` is timed: lateness is the handler's start minus the
//! occurrence's time (`time_ms + delay_ms`), on the system clock. Also counted: deliveries
//! against the occurrences due in the window (one per schedule per second).

use crate::Progress;
use afterlog::{Engine, Options, Recurring};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Params {
    pub schedules: u64,
    pub secs: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct Schedules {
    pub schedules: u64,
    pub secs: f64,
    pub deliveries: u64,
    /// Deliveries in the window / occurrences due in it.
    pub delivered_share: f64,
    pub lateness_p50_ms: f64,
    pub lateness_p99_ms: f64,
    pub lateness_max_ms: f64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn run(base: &Path, p: &Params, progress: &Progress) -> Schedules {
    progress.step("schedules: 1 s schedules, lateness");
    let dir = crate::fresh_dir(base, "schedules");
    let engine = Engine::open_with(&dir, Options::default()).expect("open");
    let lateness = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let timing = Arc::new(AtomicBool::new(false));
    let (l, t) = (lateness.clone(), timing.clone());
    engine.on("tick", move |event, _| {
        if t.load(Ordering::Relaxed) {
            let late = now_ms() - (event.time_ms() + event.delay_ms());
            l.lock().expect("lateness").push(late);
        }
        Ok(())
    });
    engine.start();
    for i in 0..p.schedules {
        engine
            .schedule(
                &format!("s-{i}"),
                "tick",
                b"{}",
                Recurring::every(Duration::from_secs(1)),
            )
            .expect("schedule");
    }
    std::thread::sleep(Duration::from_secs(2));
    timing.store(true, Ordering::Relaxed);
    std::thread::sleep(p.secs);
    timing.store(false, Ordering::Relaxed);
    let mut late = std::mem::take(&mut *lateness.lock().expect("lateness"));
    engine.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
    late.sort_unstable();
    let pct = |q: f64| {
        if late.is_empty() {
            f64::NAN
        } else {
            late[((late.len() - 1) as f64 * q).round() as usize] as f64
        }
    };
    let expected = p.schedules as f64 * p.secs.as_secs_f64();
    Schedules {
        schedules: p.schedules,
        secs: p.secs.as_secs_f64(),
        deliveries: late.len() as u64,
        delivered_share: late.len() as f64 / expected,
        lateness_p50_ms: pct(0.5),
        lateness_p99_ms: pct(0.99),
        lateness_max_ms: late.last().map_or(f64::NAN, |&m| m as f64),
    }
}

pub fn targets(s: &Schedules, t: &mut Vec<crate::Target>) {
    use crate::target;
    t.push(target(
        format!("{} schedules every 1 s: lateness p99, ms", s.schedules),
        s.lateness_p99_ms,
        "<=",
        5.0,
    ));
    t.push(target(
        format!("{} schedules every 1 s: delivered / due", s.schedules),
        s.delivered_share,
        ">=",
        0.99,
    ));
}

pub fn print(s: &Schedules) {
    println!();
    println!(
        "schedules: {} every 1 s for {:.0} s: {} deliveries ({:.3} of those due), lateness \
         p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        s.schedules,
        s.secs,
        s.deliveries,
        s.delivered_share,
        s.lateness_p50_ms,
        s.lateness_p99_ms,
        s.lateness_max_ms
    );
}
