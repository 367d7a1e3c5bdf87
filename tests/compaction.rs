//! Compaction: disk use follows live data, nothing live is lost, nothing finished returns.

use afterlog::log::{Log, LogOptions};
use afterlog::storage::FsStorage;
use afterlog::{After, Engine, HandlerError, ManualClock, Options, RetryPolicy};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const START_MS: i64 = 1_700_000_000_000;
const IDLE: Duration = Duration::from_secs(10);
const SEGMENT: u64 = 64 * 1024;

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .log_options(LogOptions {
            segment_bytes: SEGMENT,
            prepare_in_background: false,
            ..LogOptions::default()
        })
        .compaction_interval(None)
        .policy("flaky", RetryPolicy::fixed(Duration::from_secs(60)))
}

fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn segment_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count()
}

#[test]
fn disk_use_follows_live_data_in_a_steady_publish_ack_load() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    engine.on("work", |_, _| Ok(()));
    engine.start();
    let baseline_index = engine.metrics().index_bytes;
    let body = [5u8; 300];
    let mut peak_disk = 0;
    // 40,000 events of ~330 bytes: about 13 MB of history through 64 KiB segments; 100 live
    // (a minute ahead) at any time.
    for round in 0..400u64 {
        for _ in 0..100 {
            engine.publish("work", body, After::ms(60_000)).unwrap();
        }
        clock.advance(Duration::from_secs(60));
        assert!(engine.wait_idle(IDLE));
        // Compaction every ten rounds: between passes ~1,000 events of history pile up.
        peak_disk = peak_disk.max(disk_bytes(dir.path()));
        if round % 10 == 9 {
            engine.compact_now().unwrap();
        }
    }
    let m = engine.metrics();
    assert_eq!(m.acked, 40_000);
    let history = m.records * 100; // a rough lower bound of the bytes written
    eprintln!(
        "steady state: {} records written (~{} MB of history), peak disk {} KB in {} segments, index {} -> {} bytes",
        m.records,
        history / 1_000_000,
        peak_disk / 1024,
        segment_count(dir.path()),
        baseline_index,
        m.index_bytes
    );
    // Between passes, up to ten rounds of history (~1,000 events, ~400 KB with their attempt
    // and ack records) pile up, against 13 MB written in all: disk follows the live data and
    // the compaction interval, not the history.
    assert!(peak_disk < 12 * SEGMENT, "peak disk {peak_disk} bytes");
    engine.compact_now().unwrap();
    // Every event finished: the index is back to its baseline but for the one partly filled
    // chunk of entries that new ids will fill (4,096 × 36 bytes).
    let chunk = 4096 * 36 + 1024;
    assert!(
        engine.metrics().index_bytes <= baseline_index + chunk,
        "index did not shrink back: {}",
        engine.metrics().index_bytes
    );
}

#[test]
fn compaction_keeps_every_live_event_with_its_state_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let (later, flaky, job) = {
        let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
        engine.on("done", |_, _| Ok(()));
        engine.on("flaky", |_, _| Err(HandlerError::msg("down")));
        engine.on("later", |_, _| Ok(()));
        engine.start();
        let mut later = Vec::new();
        for i in 0..300u64 {
            engine.publish("done", [1u8; 200], After::NOW).unwrap();
            if i % 10 == 0 {
                later.push(
                    engine
                        .publish("later", [2u8; 200], After::parse("1 day").unwrap())
                        .unwrap(),
                );
            }
        }
        let flaky = engine.publish("flaky", b"f", After::NOW).unwrap();
        let job = engine
            .push("done", vec![[3u8; 100]; 10], Duration::from_secs(3600))
            .unwrap();
        assert!(engine.wait_idle(IDLE));
        let stats = engine.compact_now().unwrap();
        assert!(
            stats.segments_rewritten + stats.segments_removed > 0,
            "{stats:?}"
        );
        assert!(stats.events_released >= 290, "{stats:?}");
        let m = engine.metrics();
        assert_eq!(m.pending, 30 + 1 + 10);
        engine.close().unwrap();
        (later, flaky, job)
    };
    // What is on disk: no publish of an acknowledged "done" event remains except the job's.
    let mut published = HashSet::new();
    Log::scan(&FsStorage::existing(dir.path()).unwrap(), |_, r| {
        if let afterlog::format::Record::Publish(p) = r {
            published.extend(p.events().map(|e| e.id));
        }
        Ok(())
    })
    .unwrap();
    assert!(
        published.len() < 100,
        "{} publishes left after compaction",
        published.len()
    );
    for id in later.iter().chain([&flaky]) {
        assert!(published.contains(id), "live event {id} lost");
    }

    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    for name in ["done", "later", "flaky"] {
        let s = seen.clone();
        engine.on(name, move |e, _| {
            s.lock().push((e.id(), e.attempt()));
            Ok(())
        });
    }
    engine.start();
    assert_eq!(engine.job_stats(job).unwrap().in_progress, 10);
    clock.advance(Duration::from_secs(86_400));
    assert!(engine.wait_idle(IDLE));
    let seen = seen.lock().clone();
    let ids: HashSet<_> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(seen.len(), 30 + 1 + 10, "{seen:?}");
    for id in &later {
        assert!(ids.contains(id));
    }
    // The failing event keeps its attempt count through compaction and restart.
    let flaky_attempt = seen.iter().find(|(id, _)| *id == flaky).unwrap().1;
    assert!(
        flaky_attempt >= 2,
        "attempt count went back to {flaky_attempt}"
    );
    assert_eq!(engine.job_stats(job).unwrap().success, 10);
    // Ids continue even though compaction removed many publish records.
    let next = engine.publish("done", b"x", After::NOW).unwrap();
    assert!(next.0 > 311, "id {next} reused");
}

/// In-memory storage whose removal of a segment file waits at a gate once armed, so a test
/// can hold a compaction pass in the middle of its work.
#[derive(Debug, Clone)]
struct GatedDisk {
    inner: afterlog::storage::MemStorage,
    gate: Arc<Gate>,
}

#[derive(Debug, Default)]
struct Gate {
    /// (armed, a removal is waiting, open)
    state: std::sync::Mutex<(bool, bool, bool)>,
    cv: std::sync::Condvar,
}

impl Gate {
    fn arm(&self) {
        self.state.lock().unwrap().0 = true;
    }

    fn wait_entered(&self) {
        let state = self.state.lock().unwrap();
        let (_state, timeout) = self
            .cv
            .wait_timeout_while(state, Duration::from_secs(10), |s| !s.1)
            .unwrap();
        assert!(!timeout.timed_out(), "compaction never removed a segment");
    }

    fn open(&self) {
        self.state.lock().unwrap().2 = true;
        self.cv.notify_all();
    }

    fn pass(&self) {
        let mut state = self.state.lock().unwrap();
        if state.0 {
            state.1 = true;
            self.cv.notify_all();
            let _open = self.cv.wait_while(state, |s| !s.2).unwrap();
        }
    }
}

impl afterlog::storage::Storage for GatedDisk {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.inner.list()
    }
    fn create(&self, name: &str) -> std::io::Result<Box<dyn afterlog::storage::StorageFile>> {
        self.inner.create(name)
    }
    fn open(&self, name: &str) -> std::io::Result<Box<dyn afterlog::storage::StorageFile>> {
        self.inner.open(name)
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        if name.ends_with(".seg") {
            self.gate.pass();
        }
        self.inner.remove(name)
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.inner.sync_dir()
    }
    fn try_lock(&self) -> std::io::Result<Option<afterlog::storage::LockGuard>> {
        self.inner.try_lock()
    }
}

#[test]
fn close_waits_for_a_compaction_running_on_another_thread() {
    let disk = GatedDisk {
        inner: afterlog::storage::MemStorage::new(),
        gate: Arc::default(),
    };
    let clock = ManualClock::new(START_MS);
    let open = || Engine::open_storage(Arc::new(disk.clone()), options(&clock));
    let engine = open().unwrap();
    let body = vec![b'x'; 2000];
    for _ in 0..100 {
        let id = engine
            .publish("x", &body, After::parse("1 hour").unwrap())
            .unwrap();
        engine.cancel(id).unwrap();
    }
    disk.gate.arm();
    let compacting = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.compact_now())
    };
    disk.gate.wait_entered();
    let closing = {
        let engine = engine.clone();
        std::thread::spawn(move || engine.close())
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !closing.is_finished(),
        "close returned while compaction ran"
    );
    match open() {
        Err(afterlog::Error::Locked { .. }) => {}
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second engine opened the directory while compaction ran"),
    }
    // A pass asked for once close began is refused.
    assert!(matches!(engine.compact_now(), Err(afterlog::Error::Closed)));
    disk.gate.open();
    let stats = compacting.join().unwrap().unwrap();
    assert!(stats.segments_removed > 0, "{stats:?}");
    closing.join().unwrap().unwrap();
    let reopened = open().unwrap();
    assert_eq!(reopened.metrics().pending, 0);
    reopened.close().unwrap();
}
