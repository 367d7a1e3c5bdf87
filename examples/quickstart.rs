//! The quickstart: opens (or recovers) the data directory `afterlog-data`, reports what it
//! found, appends a few thousand durable "publish" records from several threads with group
//! commit, and reads some back. Run it again: the records of the earlier runs are recovered.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use afterlog::format::{Publish, PublishEntry, Record};
use afterlog::log::{Log, LogOptions};
use afterlog::storage::FsStorage;
use afterlog::{EventId, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const DIR: &str = "afterlog-data";
const THREADS: u64 = 8;
const PER_THREAD: u64 = 500;

fn main() -> Result<()> {
    let storage = Arc::new(FsStorage::new(DIR).map_err(|e| afterlog::Error::Io {
        op: "create data directory",
        path: DIR.into(),
        source: e,
    })?);
    let started = Instant::now();
    let (mut publishes, mut max_id) = (0u64, 0u64);
    let (log, recovery) = Log::open(storage, LogOptions::default(), |_, record| {
        if let Record::Publish(p) = record {
            for e in p.events() {
                publishes += 1;
                max_id = max_id.max(e.id.0);
            }
        }
        Ok(())
    })?;
    println!(
        "opened {DIR}: {} segment(s), {} record(s) recovered ({publishes} published events) in {:.1?}; torn tail cut: {} bytes",
        recovery.segments,
        recovery.records,
        started.elapsed(),
        recovery.torn_bytes
    );

    let log = Arc::new(log);
    let next_id = Arc::new(AtomicU64::new(max_id + 1));
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (log, next_id) = (log.clone(), next_id.clone());
            std::thread::spawn(move || -> Result<u64> {
                let mut last = 0;
                for i in 0..PER_THREAD {
                    let id = EventId(next_id.fetch_add(1, Ordering::Relaxed));
                    let body = format!(r#"{{"user_id":"u{t}-{i}","email":"user{i}@example.com"}}"#);
                    let entries = [PublishEntry {
                        id,
                        due_ms: 0,
                        name: "user.joined",
                        body: body.as_bytes(),
                    }];
                    last = log
                        .append(&Record::Publish(Publish::new(None, 0, &entries)))?
                        .seq;
                }
                Ok(last)
            })
        })
        .collect();
    for t in threads {
        t.join().expect("appender thread panicked")?;
    }
    let elapsed = started.elapsed();
    let counters = log.counters();
    let n = THREADS * PER_THREAD;
    println!(
        "appended {n} durable records from {THREADS} threads in {elapsed:.2?} ({:.0} records/s, {} fsyncs, {:.1} records per fsync)",
        n as f64 / elapsed.as_secs_f64(),
        counters.syncs,
        counters.records as f64 / counters.syncs.max(1) as f64
    );
    Arc::into_inner(log).expect("threads finished").close()?;
    println!("closed; run again to see these records recovered");
    Ok(())
}
