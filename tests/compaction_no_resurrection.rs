//! No resurrection: an ack is never compacted away while an older segment still holds the
//! publish it settles.
//!
//! Event X is published in segment A among events due tomorrow (A stays mostly live), and
//! acknowledged in segment B among events published and acknowledged there (B is mostly
//! dead). A background pass with a one-byte budget compacts only the most dead segment, B,
//! leaving A untouched: B's rewrite must keep X's ack. The disk crashes at every storage
//! operation of that pass (and once right after it); each crash is recovered in every crash
//! mode, with and without the loss of unsynced directory entries, and X must not be
//! delivered. Then full passes compact A and B (the first drops X's publish; X's ack goes
//! in the same pass or, if B came first, in the next), the disk crashes again, and X must
//! still not be delivered while every event due tomorrow is, once.

use afterlog::format::Record;
use afterlog::log::{Log, LogOptions};
use afterlog::storage::{CrashMode, MemStorage};
use afterlog::{After, Engine, EventId, ManualClock, Options};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const T0: i64 = 1_700_000_000_000;
const IDLE: Duration = Duration::from_secs(10);
const SEGMENT: u64 = 4096;
const INTERVAL: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .workers(1)
        .log_options(LogOptions {
            segment_bytes: SEGMENT,
            prepare_in_background: false,
            ..LogOptions::default()
        })
        // One segment per background pass: the most dead one.
        .compaction_interval(Some(INTERVAL))
        .compaction_budget_bytes(1)
}

fn open(disk: &MemStorage, clock: &ManualClock, context: &str) -> Engine {
    Engine::open_storage(Arc::new(disk.clone()), options(clock))
        .unwrap_or_else(|e| panic!("{context}: the directory does not reopen: {e}"))
}

/// Which segments hold X's publish and X's ack, from a read-only scan of the disk.
fn where_is(disk: &MemStorage, x: EventId) -> (Option<u64>, Option<u64>) {
    let (mut publish, mut ack) = (None, None);
    Log::scan(disk, |pos, record| {
        match record {
            Record::Publish(p) if p.events().any(|e| e.id == x) => publish = Some(pos.segment),
            Record::Ack(a) if a.event == x => ack = Some(pos.segment),
            _ => {}
        }
        Ok(())
    })
    .unwrap();
    (publish, ack)
}

/// The directory before the pass: X published in segment 1 (A) and acknowledged in segment
/// 2 (B); segment 3 active. Returns the ids due tomorrow.
fn build(disk: &MemStorage, clock: &ManualClock) -> (Engine, EventId, Vec<EventId>) {
    let engine = open(disk, clock, "build");
    engine.on("x", |_, _| Ok(()));
    engine.on("later", |_, _| Ok(()));
    // A: X and ~3.6 KiB of events due tomorrow (the last spills into B). X is not A's first
    // record, so its offset differs from that of the live publish at the start of B.
    let mut later = vec![
        engine
            .publish("later", [b'l'; 300], After::delay(DAY))
            .unwrap(),
    ];
    let x = engine.publish("x", [b'x'; 100], After::NOW).unwrap();
    for _ in 0..10 {
        later.push(
            engine
                .publish("later", [b'l'; 300], After::delay(DAY))
                .unwrap(),
        );
    }
    engine.start();
    clock.advance(Duration::from_millis(1));
    assert!(engine.wait_idle(IDLE));
    // B: events published and acknowledged, until B is sealed.
    for _ in 0..12 {
        engine.publish("x", [b'd'; 300], After::NOW).unwrap();
        clock.advance(Duration::from_millis(1));
        assert!(engine.wait_idle(IDLE));
    }
    assert_eq!(where_is(disk, x), (Some(1), Some(2)), "the layout changed");
    (engine, x, later)
}

/// Deliveries after a restart.
type Seen = Arc<Mutex<BTreeMap<EventId, u32>>>;

/// Opens a recovered disk, checks X is finished, delivers everything due by tomorrow, and
/// returns the deliveries.
fn deliver(disk: &MemStorage, clock: &ManualClock, x: EventId, context: &str) -> Seen {
    let engine = open(disk, clock, context);
    assert!(
        !engine.cancel(x).unwrap(),
        "{context}: X is pending again after a restart"
    );
    let seen: Seen = Arc::default();
    for name in ["x", "later"] {
        let seen = seen.clone();
        engine.on(name, move |event, _| {
            *seen.lock().entry(event.id()).or_default() += 1;
            Ok(())
        });
    }
    engine.start();
    clock.advance(DAY + Duration::from_secs(1));
    assert!(engine.wait_idle(IDLE), "{context}");
    engine.close().unwrap();
    seen
}

fn check_seen(seen: &Seen, x: EventId, later: &[EventId], context: &str) {
    let seen = seen.lock();
    assert!(
        !seen.contains_key(&x),
        "{context}: acknowledged event {x} delivered again"
    );
    for id in later {
        assert_eq!(seen.get(id), Some(&1), "{context}: {id} delivered once");
    }
}

#[test]
fn an_ack_outlives_its_publish_when_its_segment_is_compacted_first() {
    let started = Instant::now();
    let mut states = 0;
    for k in 1.. {
        let disk = MemStorage::new();
        let clock = ManualClock::new(T0);
        let (engine, x, later) = build(&disk, &clock);
        let compacted_before = engine.metrics().compacted_bytes;
        disk.crash_at(disk.ops() + k);
        // The background pass: only B, the most dead segment, fits the budget.
        clock.advance(INTERVAL);
        let deadline = Instant::now() + IDLE;
        while !disk.crashed() && engine.metrics().compacted_bytes == compacted_before {
            assert!(Instant::now() < deadline, "the background pass never ran");
            std::thread::sleep(Duration::from_millis(1));
        }
        let completed = !disk.crashed();
        let _ = engine.close();
        if completed {
            // B was rewritten, A untouched: X's ack kept while A holds its publish.
            assert_eq!(
                where_is(&disk, x),
                (Some(1), Some(2)),
                "X's ack was dropped"
            );
            disk.crash_now();
        }
        drop(engine);
        for mode in CrashMode::all_for(k) {
            for lose_dir in [false, true] {
                let context = format!("crash at pass operation {k}, {mode:?}, lose dir {lose_dir}");
                let clock = ManualClock::new(clock.now_ms());
                let seen = deliver(&disk.after_crash_with(mode, lose_dir), &clock, x, &context);
                check_seen(&seen, x, &later, &context);

                // Then a full pass over A and B, a crash right after it, and again.
                let recovered = disk.after_crash_with(mode, lose_dir);
                let clock = ManualClock::new(clock.now_ms());
                let engine = open(&recovered, &clock, &context);
                engine.compact_now().unwrap();
                assert_eq!(
                    where_is(&recovered, x).0,
                    None,
                    "{context}: X's publish outlived a full pass"
                );
                // If the pass took B before A, X's ack is dropped by the next one.
                engine.compact_now().unwrap();
                assert_eq!(
                    where_is(&recovered, x),
                    (None, None),
                    "{context}: X's ack outlived two full passes"
                );
                recovered.crash_now();
                let _ = engine.close();
                drop(engine);
                for mode2 in [
                    CrashMode::DropUnsynced,
                    CrashMode::TearLastWrite { keep: 0 },
                ] {
                    let context = format!("{context}; crash after a full pass, {mode2:?}");
                    let again = recovered.after_crash_with(mode2, true);
                    let seen = deliver(&again, &clock, x, &context);
                    check_seen(&seen, x, &later, &context);
                }
                states += 1;
            }
        }
        if completed {
            break;
        }
    }
    println!(
        "{states} crash states of a pass over the ack's segment checked in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
