//! Writes a large log quickly, for measuring the command line's readers on it:
//!
//! ```text
//! cargo run --release --example fill_log -- DIR [GIB]
//! /usr/bin/time -v target/release/afterlog replay DIR > /dev/null
//! ```
//!
//! Appends publish records of 200-byte bodies (due in a day) through the log in batches of
//! 1,024 until the log holds about GIB gibibytes (default 1). It writes through the log
//! directly, which only the `internals` feature exposes (examples get it, as the tests do, from
//! the crate's dev-dependency on itself); an application publishes through `Engine`.

use afterlog::EventId;
use afterlog::format::{Publish, PublishEntry, Record};
use afterlog::log::{Log, LogOptions};
use afterlog::storage::FsStorage;
use std::sync::Arc;
use std::time::Instant;

fn main() -> afterlog::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: fill_log DIR [GIB]");
        std::process::exit(2);
    };
    let gib: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let target = (gib * (1u64 << 30) as f64) as u64;
    let storage = FsStorage::new(&dir).map_err(|e| afterlog::Error::Io {
        op: "create directory",
        path: dir.clone().into(),
        source: e,
    })?;
    let mut max_id = 0;
    let (log, _) = Log::open(Arc::new(storage), LogOptions::default(), |_, r| {
        if let Record::Publish(p) = r {
            max_id = p.events().map(|e| e.id.0).fold(max_id, u64::max);
        }
        Ok(())
    })?;
    let body = [b'x'; 200];
    let names = ["user.joined", "email.send", "report.build", "invoice.due"];
    let started = Instant::now();
    let (mut written, mut next) = (0u64, max_id + 1);
    while written < target {
        let entries: Vec<[PublishEntry<'_>; 1]> = (0..1024u64)
            .map(|i| {
                [PublishEntry {
                    id: EventId(next + i),
                    due_ms: 1_800_000_000_000,
                    name: names[(i % 4) as usize],
                    body: &body,
                }]
            })
            .collect();
        let records: Vec<Record<'_>> = entries
            .iter()
            .map(|e| Record::Publish(Publish::new(None, 1_700_000_000_000, e)))
            .collect();
        written += records
            .iter()
            .map(|r| (r.encoded_len() + 20) as u64)
            .sum::<u64>();
        log.append_all(&records)?;
        next += 1024;
    }
    log.close()?;
    println!(
        "wrote {} records, {:.2} GiB of frames, in {:.1?}",
        next - max_id - 1,
        written as f64 / (1u64 << 30) as f64,
        started.elapsed()
    );
    Ok(())
}
