//! The quickstart: an engine on the data directory `afterlog-data`.
//!
//! It registers handlers (one fails its first attempt and is retried), publishes events a
//! second or two ahead and a job of three, prints every delivery, retry and ack as it happens,
//! and leaves two reminders due a little after it exits. Run it again: the reminders of the
//! previous run are recovered from the log and delivered.
//!
//! ```text
//! cargo run --release -p afterlog-quickstart
//! ```

use afterlog::{After, Engine, HandlerError, Options, Result, RetryPolicy};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const DIR: &str = "afterlog-data";

#[derive(Serialize, Deserialize)]
struct Signup {
    user_id: String,
    email: String,
}

fn main() -> Result<()> {
    let started = Instant::now();
    let options = Options::default().policy(
        "email.send",
        RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(5),
    );
    let engine = Engine::open_with(DIR, options)?;
    let recovered = engine.metrics().pending;
    println!(
        "[{:>5.2}s] opened {DIR}: {recovered} pending event(s) recovered from earlier runs",
        secs(started)
    );

    let done = Arc::new(AtomicU64::new(0));
    let d = done.clone();
    engine.on("user.joined", move |event, _ctx| {
        let signup: Signup = event.json()?;
        println!(
            "[{:>5.2}s] deliver {} user.joined {} <{}> (attempt {}, delayed {} ms) -> ack",
            secs(started),
            event.id(),
            signup.user_id,
            signup.email,
            event.attempt(),
            event.delay_ms()
        );
        d.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    let d = done.clone();
    engine.on("email.send", move |event, _ctx| {
        if event.attempt() == 1 {
            println!(
                "[{:>5.2}s] deliver {} email.send attempt 1 -> fails, retry in 1 s",
                secs(started),
                event.id()
            );
            return Err(HandlerError::msg("smtp: connection refused"));
        }
        println!(
            "[{:>5.2}s] deliver {} email.send attempt {} -> ack",
            secs(started),
            event.id(),
            event.attempt()
        );
        d.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    let d = done.clone();
    engine.on("report.build", move |event, _ctx| {
        println!(
            "[{:>5.2}s] deliver {} report.build {} of {} -> ack",
            secs(started),
            event.id(),
            String::from_utf8_lossy(event.body()),
            event.job().map_or("no job".to_string(), |j| j.to_string())
        );
        d.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    engine.on("reminder", move |event, _ctx| {
        let age_s = (now_ms() - event.time_ms()) as f64 / 1000.0;
        println!(
            "[{:>5.2}s] deliver {} reminder {:?}, published {age_s:.1} s ago by an earlier run -> ack",
            secs(started),
            event.id(),
            String::from_utf8_lossy(event.body())
        );
        Ok(())
    });
    engine.start();

    let signup = Signup {
        user_id: "2b6mgh78g334".into(),
        email: "newuser@example.com".into(),
    };
    let id = engine.publish_json("user.joined", &signup, After::NOW)?;
    println!("[{:>5.2}s] published {id} user.joined now", secs(started));
    let id = engine.publish_json("user.joined", &signup, After::parse("2 seconds")?)?;
    println!(
        "[{:>5.2}s] published {id} user.joined after \"2 seconds\"",
        secs(started)
    );
    let id = engine.publish(
        "email.send",
        br#"{"to":"newuser@example.com"}"#,
        After::ms(500),
    )?;
    println!(
        "[{:>5.2}s] published {id} email.send after 500 ms",
        secs(started)
    );
    let job = engine.push(
        "report.build",
        ["january", "february", "march"],
        Duration::from_secs(1),
    )?;
    println!(
        "[{:>5.2}s] pushed {job}: 3 report.build events after 1 s",
        secs(started)
    );
    for text in ["water the plants", "call back"] {
        let id = engine.publish("reminder", text, After::parse("5 seconds")?)?;
        println!(
            "[{:>5.2}s] published {id} reminder {text:?} after 5 seconds (for the next run)",
            secs(started)
        );
    }

    // Wait for this run's six deliveries (the reminders are left for the next run).
    let deadline = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::Relaxed) < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = engine.job_stats(job)?;
    let m = engine.metrics();
    println!(
        "[{:>5.2}s] {job}: {} succeeded, {} in progress, {} failed, {} cancelled",
        secs(started),
        stats.success,
        stats.in_progress,
        stats.failed,
        stats.cancelled
    );
    println!(
        "[{:>5.2}s] published {}, delivered {}, acked {}, retried {}, pending {}, {} log records in {} fsyncs",
        secs(started),
        m.published,
        m.delivered,
        m.acked,
        m.retried,
        m.pending,
        m.records,
        m.fsyncs
    );
    engine.close()?;
    println!(
        "[{:>5.2}s] closed; run again to see the reminders recovered",
        secs(started)
    );
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}
