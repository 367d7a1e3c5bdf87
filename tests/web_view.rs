//! The dashboard's view of a directory (`afterlog::web::view::View`) against the reader: for
//! the crash sweep's seeded workloads (publishes, keys, pushes, cancels, retries, drops,
//! dead letters, redrives, purges, pauses, schedules, compaction, reopens), every event's
//! state, attempts and due time, the counts by state and name, the dead letters, paused
//! names, schedules and job stats agree — for a view built at the end, and for a view built
//! a third of the way and brought up to date by `refresh` twice, through the compactions
//! of the workloads that compact (or rebuilt when it says so).

mod common;

use afterlog::web::view::{Query, Refreshed, View};
use afterlog::{EventState, MemStorage, Reader};
use common::workload;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the reader says, in the view's terms.
fn reader_picture(disk: &MemStorage) -> Picture {
    let reader = Reader::open_storage(Arc::new(disk.clone())).expect("reader");
    let events = reader
        .events()
        .expect("events")
        .into_iter()
        .map(|r| {
            (
                r.id.0,
                (
                    r.state.name(),
                    r.attempts.min(255),
                    r.next_due_ms.div_euclid(1000) * 1000,
                ),
            )
        })
        .collect();
    let summary = reader.summary().expect("summary");
    let mut dead: Vec<u64> = reader
        .dead_letters(usize::MAX)
        .expect("dead letters")
        .into_iter()
        .map(|d| d.id.0)
        .collect();
    dead.sort_unstable();
    let schedules = reader
        .schedules()
        .expect("schedules")
        .into_iter()
        .map(|s| (s.id, (s.name, s.rule, s.next_due_ms)))
        .collect();
    Picture {
        events,
        dead,
        paused: summary.paused,
        schedules,
    }
}

fn view_picture(view: &View) -> Picture {
    let lines = view
        .query(&Query {
            limit: usize::MAX,
            ..Query::default()
        })
        .expect("query");
    let events = lines
        .iter()
        .map(|l| (l.id.0, (l.state, l.attempts, l.due_ms)))
        .collect();
    let mut dead: Vec<u64> = view.dead_letters().map(|(id, _)| id.0).collect();
    dead.sort_unstable();
    let schedules = view
        .schedules()
        .map(|(id, s)| {
            (
                id.to_owned(),
                (s.name.clone(), s.rule.clone(), view.schedule_next_due_ms(s)),
            )
        })
        .collect();
    Picture {
        events,
        dead,
        paused: view.paused().map(str::to_owned).collect(),
        schedules,
    }
}

#[derive(Debug, PartialEq)]
struct Picture {
    events: BTreeMap<u64, (&'static str, u32, i64)>,
    dead: Vec<u64>,
    paused: Vec<String>,
    schedules: BTreeMap<String, (String, String, Option<i64>)>,
}

/// The view's own counts agree with its events.
fn check_counts(view: &View, seed: u64) {
    let lines = view
        .query(&Query {
            limit: usize::MAX,
            ..Query::default()
        })
        .expect("query");
    let by_state = view.by_state();
    for s in EventState::ALL {
        let n = lines.iter().filter(|l| l.state == s.name()).count() as u64;
        assert_eq!(
            by_state[s as usize],
            n,
            "seed {seed}: count of {}",
            s.name()
        );
        for name in view.names() {
            let n = lines
                .iter()
                .filter(|l| l.state == s.name() && l.name == name.name)
                .count() as u64;
            assert_eq!(
                name.by_state[s as usize],
                n,
                "seed {seed}: count of {} {}",
                name.name,
                s.name()
            );
        }
    }
    assert_eq!(
        view.dead_count(),
        view.dead_letters().count() as u64,
        "seed {seed}"
    );
    // Filtered pages are the matching part of the whole list, page by page.
    for s in EventState::ALL {
        let mut after = 0;
        let mut paged = Vec::new();
        loop {
            let page = view
                .query(&Query {
                    state: Some(s),
                    after,
                    limit: 7,
                    ..Query::default()
                })
                .expect("page");
            paged.extend(page.iter().map(|l| l.id.0));
            match page.last() {
                Some(l) if page.len() == 7 => after = l.id.0,
                _ => break,
            }
        }
        let all: Vec<u64> = lines
            .iter()
            .filter(|l| l.state == s.name())
            .map(|l| l.id.0)
            .collect();
        assert_eq!(paged, all, "seed {seed}: pages of {}", s.name());
    }
}

fn seeds() -> u64 {
    std::env::var("AFTERLOG_VIEW_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120)
}

#[test]
fn a_view_built_from_a_directory_agrees_with_the_reader() {
    for seed in 0..seeds() {
        let disk = MemStorage::new();
        workload::run(&disk, &workload::steps(seed), seed);
        let view = View::build(Arc::new(disk.clone())).expect("view");
        assert_eq!(view_picture(&view), reader_picture(&disk), "seed {seed}");
        check_counts(&view, seed);
    }
}

#[test]
fn a_view_that_follows_a_directory_agrees_with_the_reader() {
    let (mut rebuilt, mut grew, mut compacted) = (0, 0, 0);
    for seed in 0..seeds() {
        let disk = MemStorage::new();
        let steps = workload::steps(seed);
        let third = steps.len() / 3;
        workload::run(&disk, &steps[..third], seed);
        let mut view = View::build(Arc::new(disk.clone())).expect("view");
        // Odd workloads go on without compaction, so the view follows their appends alone;
        // the others compact as they go. The view follows twice, and is checked each time.
        let rest: Vec<workload::Step> = steps[third..]
            .iter()
            .filter(|s| seed % 2 == 0 || !matches!(s, workload::Step::Compact))
            .cloned()
            .collect();
        let (second, last) = rest.split_at(rest.len() / 2);
        for part in [second, last] {
            workload::run(&disk, part, seed);
            match view.refresh().expect("refresh") {
                Refreshed::Rebuild => {
                    rebuilt += 1;
                    view = View::build(Arc::new(disk.clone())).expect("view");
                }
                Refreshed::Grew => grew += 1,
                Refreshed::Same => {}
            }
            assert_eq!(view_picture(&view), reader_picture(&disk), "seed {seed}");
            check_counts(&view, seed);
        }
        compacted += (view.compactions_followed() > 0) as u32;
    }
    // Views followed appends alone, and compactions; a rebuild is the rare case of the
    // segment the view read last being rewritten.
    assert!(
        grew > 0 && compacted > 0,
        "rebuilt {rebuilt}, grew {grew}, compacted {compacted}"
    );
}

/// A segment read in many chunks: the view follows megabytes appended to the active segment
/// after it was built, frame by frame across the chunk boundaries, in bounded steps.
#[test]
fn a_view_follows_megabytes_appended_to_the_active_segment() {
    use afterlog::{After, Engine, ManualClock, Options};
    use std::time::Duration;
    let disk = MemStorage::new();
    let clock = ManualClock::new(1_800_000_000_000);
    let engine = Engine::open_storage(
        Arc::new(disk.clone()),
        Options::default()
            .clock(clock.clone())
            .compaction_interval(None)
            .log_options(afterlog::log::LogOptions {
                segment_bytes: 16 << 20,
                first_segment_bytes: 16 << 20,
                ..afterlog::log::LogOptions::default()
            }),
    )
    .expect("open");
    engine.on("a", |_e, _c| Ok(()));
    let body = vec![7u8; 3000];
    for _ in 0..100 {
        engine.publish("a", &body, After::NOW).expect("publish");
    }
    let mut view = View::build(Arc::new(disk.clone())).expect("view");
    engine.start();
    // About 6 MB more, in frames of odd sizes, while earlier ones are delivered.
    for i in 0..2_000usize {
        engine
            .publish(
                "a",
                &body[..1000 + i % 2000],
                After::delay(Duration::from_secs(1 + i as u64 % 7)),
            )
            .expect("publish");
    }
    clock.advance(Duration::from_secs(3));
    assert!(engine.wait_idle(Duration::from_secs(30)));
    // In steps of at most about 256 KiB, as the dashboard's thread reads (a step reads one
    // frame at least).
    let mut steps = 0;
    loop {
        let (r, more) = view.refresh_bounded(256 << 10).expect("refresh");
        assert_eq!(r, Refreshed::Grew);
        steps += 1;
        if !more {
            break;
        }
    }
    assert!(steps > 10, "{steps} steps");
    // One segment, read past several chunks of 1 MiB.
    assert_eq!(view.segments().count(), 1);
    assert!(view.segments().all(|s| s.end > 4 << 20));
    assert_eq!(view_picture(&view), reader_picture(&disk));
    check_counts(&view, 0);
    assert_eq!(view.events(), 2_100);
    // Nothing new: the same.
    assert_eq!(view.refresh().expect("refresh"), Refreshed::Same);
    engine.close().expect("close");
}

/// A body restated (`KeyMode::ReplaceBody`) in a later segment than every other record of
/// its event: the view reads the history from that segment too, and shows the new body.
#[test]
fn a_body_restated_in_a_later_segment_is_the_one_shown() {
    use afterlog::{After, Engine, KeyMode, ManualClock, Options, PublishOptions};
    use std::time::Duration;
    let disk = MemStorage::new();
    let clock = ManualClock::new(1_800_000_000_000);
    let engine = Engine::open_storage(
        Arc::new(disk.clone()),
        Options::default()
            .clock(clock.clone())
            .compaction_interval(None)
            .log_options(afterlog::log::LogOptions {
                segment_bytes: 4096,
                first_segment_bytes: 4096,
                ..afterlog::log::LogOptions::default()
            }),
    )
    .expect("open");
    let keyed = |body: &[u8]| {
        engine
            .publish_with(
                "k",
                body,
                After::delay(Duration::from_secs(3600)),
                PublishOptions::default().key("one", KeyMode::ReplaceBody),
            )
            .expect("publish_with")
            .id
    };
    let id = keyed(b"old");
    for _ in 0..40 {
        engine
            .publish("filler", [1u8; 300], After::delay(Duration::from_secs(60)))
            .expect("publish");
    }
    assert_eq!(keyed(b"new"), id);
    engine.close().expect("close");
    let view = View::build(Arc::new(disk.clone())).expect("view");
    assert!(view.segments().count() > 2);
    let reader = Reader::open_storage(Arc::new(disk.clone())).expect("reader");
    let history = reader.event_history(id).expect("history").expect("held");
    assert_eq!(history.body, b"new");
    assert_eq!(view.body(id).expect("body").as_deref(), Some(&b"new"[..]));
    assert_eq!(
        view.history(id).expect("history").len(),
        history.records.len()
    );
}
