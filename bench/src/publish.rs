//! Scenario 1: durable publish of 200-byte bodies, by 1 publisher, by 64 concurrent
//! publishers and in batches of 1,024, against afterlog, its log alone, and four baselines:
//!
//! - **afterlog**: `Engine::publish` (due in one hour, so nothing is delivered during the
//!   run) under the default `Durability::Sync`; batches are one `Engine::push` of 1,024
//!   events, with `Options::max_push_events(1024)` and `max_push_bytes` raised to fit. The
//!   background compaction is off (nothing would be dead anyway). Syncs: the engine's
//!   `metrics().fsyncs`.
//! - **log**: afterlog's segment log alone, without the engine's index: `Log::append` of one
//!   publish record per event (64 threads calling it concurrently), and `Log::append_all`
//!   of 1,024 such records per batch, with default `LogOptions` (64 MiB segments prepared in
//!   the background). Syncs: the log's counters.
//! - **raw**: `pwrite` + `fdatasync` on a pre-sized, zero-filled, synced file (wrapping at
//!   its end): 1 record per sync; 64 records per sync from one thread for 64 publishers (an
//!   ideal group commit: an upper bound no implementation reaches); 1,024 records per sync
//!   for batches.
//! - **fresh**: the same raw writes, but into new 64 MiB files, each zero-filled and synced
//!   (in 1 MiB steps) by a background thread ahead of need, exactly as the log prepares its
//!   segments; full files are deleted. Raw overwrites blocks written before, which a log that
//!   keeps its history cannot do: fresh is what the file system charges any such log before
//!   it frames, checksums or hands off one record.
//! - **sqlite**: one connection in WAL mode with `synchronous=FULL`, table `jobs(id, name,
//!   due_ms, body)` with an index on `due_ms`; one transaction (one WAL sync) per publish or
//!   per batch; the 64 publishers share the connection behind a mutex (SQLite admits one
//!   writer at a time whatever the connection count; a connection per thread only adds
//!   busy-handler sleeps).
//! - **fjall**: one keyspace, key = due time and id (big-endian), value = body; `insert`
//!   (or a write batch of 1,024) followed by `Database::persist(PersistMode::SyncData)`; the
//!   64 publishers call both concurrently.

use crate::{Progress, fresh_dir, median};
use afterlog::format::{Publish, PublishEntry, Record};
use afterlog::log::{Log, LogOptions};
use afterlog::storage::{FsStorage, Storage};
use afterlog::{After, Engine, EventId, Options};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

pub const BODY_LEN: usize = 200;
pub const BODY: [u8; BODY_LEN] = [0x5a; BODY_LEN];
pub const NAME: &str = "bench.event";
const RAW_FILE_BYTES: u64 = 256 << 20;
pub const DUE_IN: Duration = Duration::from_secs(3600);
/// Pause after opening an engine, for its background segment preparation to finish.
const SETTLE: Duration = Duration::from_millis(1500);

pub const SYSTEMS: [&str; 6] = ["afterlog", "log", "raw", "fresh", "sqlite", "fjall"];
/// The systems afterlog and its log are compared against.
pub const BASELINES: [&str; 4] = ["raw", "fresh", "sqlite", "fjall"];
/// Bytes of each file of the fresh baseline: the log's default segment size.
const FRESH_FILE_BYTES: u64 = 64 << 20;

#[derive(Clone, Copy, Debug)]
pub enum Shape {
    One,
    Concurrent(usize),
    Batch(usize),
}

impl Shape {
    pub fn label(self) -> String {
        match self {
            Shape::One => "1 publisher".into(),
            Shape::Concurrent(n) => format!("{n} publishers"),
            Shape::Batch(n) => format!("batches of {n}"),
        }
    }
    fn key(self) -> String {
        match self {
            Shape::One => "1".into(),
            Shape::Concurrent(n) => format!("c{n}"),
            Shape::Batch(n) => format!("b{n}"),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize)]
pub struct Run {
    pub events: u64,
    pub seconds: f64,
    /// Syncs (fsync/fdatasync) the system asked for during the run: counted by afterlog's
    /// metrics, by the raw loop, as commits for SQLite and as `persist` calls for fjall.
    pub syncs: u64,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SystemResult {
    /// Median of the rounds.
    pub events_per_s: f64,
    pub events_per_sync: f64,
    pub runs: Vec<Run>,
}

impl SystemResult {
    /// The median rate of `runs` and their events per sync.
    pub fn of(runs: Vec<Run>) -> SystemResult {
        let events: u64 = runs.iter().map(|r| r.events).sum();
        let syncs: u64 = runs.iter().map(|r| r.syncs).sum();
        SystemResult {
            events_per_s: median(runs.iter().map(Run::rate).collect()),
            events_per_sync: events as f64 / syncs.max(1) as f64,
            runs,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ShapeResult {
    pub scenario: String,
    pub publishers: usize,
    pub events_per_publish: usize,
    /// By system (see `SYSTEMS`).
    pub systems: BTreeMap<String, SystemResult>,
    /// afterlog's events/s over each baseline's.
    pub afterlog_ratio: BTreeMap<String, f64>,
    /// The log's events/s over each baseline's.
    pub log_ratio: BTreeMap<String, f64>,
}

pub struct Params {
    pub secs: Duration,
    pub warmup: Duration,
    pub rounds: usize,
    pub publishers: usize,
    pub batch: usize,
}

pub fn run(base: &Path, p: &Params, progress: &Progress) -> Vec<ShapeResult> {
    let shapes = [
        Shape::One,
        Shape::Concurrent(p.publishers),
        Shape::Batch(p.batch),
    ];
    let raw = RawFile::create(&base.join("raw.dat"));
    let mut out = Vec::new();
    for shape in shapes {
        progress.step(&format!("publish, {}: opening", shape.label()));
        let systems: Vec<Box<dyn System>> = vec![
            Box::new(AfterlogSystem::open(base, shape, p.batch)),
            Box::new(LogSystem::open(base, shape)),
            Box::new(RawSystem(&raw)),
            Box::new(FreshSystem(fresh_dir(
                base,
                &format!("publish-fresh-{}", shape.key()),
            ))),
            Box::new(SqliteSystem::open(base, shape)),
            Box::new(FjallSystem::open(base, shape)),
        ];
        for s in &systems {
            s.run(shape, p.warmup);
        }
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); systems.len()];
        for round in 0..p.rounds {
            // Rotate the order so drift in the machine's load spreads over every system.
            for k in 0..systems.len() {
                let i = (k + round) % systems.len();
                progress.step(&format!(
                    "publish, {}: {} (round {}/{})",
                    shape.label(),
                    SYSTEMS[i],
                    round + 1,
                    p.rounds
                ));
                runs[i].push(systems[i].run(shape, p.secs));
            }
        }
        drop(systems);
        let mut result = BTreeMap::new();
        for (i, runs) in runs.into_iter().enumerate() {
            result.insert(SYSTEMS[i].to_string(), SystemResult::of(runs));
        }
        let ratios = |system: &str| {
            let ours = result[system].events_per_s;
            BASELINES
                .iter()
                .map(|s| (s.to_string(), ours / result[*s].events_per_s.max(1e-9)))
                .collect()
        };
        let (afterlog_ratio, log_ratio) = (ratios("afterlog"), ratios("log"));
        out.push(ShapeResult {
            scenario: shape.label(),
            publishers: match shape {
                Shape::Concurrent(n) => n,
                _ => 1,
            },
            events_per_publish: match shape {
                Shape::Batch(n) => n,
                _ => 1,
            },
            systems: result,
            afterlog_ratio,
            log_ratio,
        });
    }
    out
}

pub trait System {
    fn run(&self, shape: Shape, duration: Duration) -> Run;
}

/// Runs `op(thread, n)` in a loop on `threads` threads for `duration`; `op` returns the
/// events it published. Operations in flight at the deadline finish and count.
fn concurrent(
    threads: usize,
    duration: Duration,
    op: impl Fn(u64, u64) -> u64 + Sync,
) -> (u64, Duration) {
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let barrier = Barrier::new(threads + 1);
    let start = std::thread::scope(|s| {
        for t in 0..threads as u64 {
            let (stop, total, barrier, op) = (&stop, &total, &barrier, &op);
            s.spawn(move || {
                barrier.wait();
                let mut n = 0u64;
                let mut events = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    events += op(t, n);
                    n += 1;
                }
                total.fetch_add(events, Ordering::Relaxed);
            });
        }
        barrier.wait();
        let start = Instant::now();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        start
    });
    (total.load(Ordering::Relaxed), start.elapsed())
}

/// Runs `op()` in a loop on this thread for `duration`; `op` returns the events it published.
fn serial(duration: Duration, mut op: impl FnMut() -> u64) -> (u64, Duration) {
    let mut events = 0;
    let start = Instant::now();
    while start.elapsed() < duration {
        events += op();
    }
    (events, start.elapsed())
}

pub fn run_of(events: u64, elapsed: Duration, syncs: u64) -> Run {
    Run {
        events,
        seconds: elapsed.as_secs_f64(),
        syncs,
    }
}

// ---- afterlog ----------------------------------------------------------------------------

pub struct AfterlogSystem {
    engine: Engine,
}

impl AfterlogSystem {
    fn open(base: &Path, shape: Shape, batch: usize) -> AfterlogSystem {
        AfterlogSystem::open_in(
            &fresh_dir(base, &format!("publish-afterlog-{}", shape.key())),
            batch,
        )
    }

    /// The engine of this scenario in `dir` (empty), settled.
    pub fn open_in(dir: &Path, batch: usize) -> AfterlogSystem {
        let options = Options::default()
            .compaction_interval(None)
            .max_push_events(batch)
            .max_push_bytes(batch * BODY_LEN);
        let engine = Engine::open_with(dir, options).expect("open afterlog");
        std::thread::sleep(SETTLE);
        AfterlogSystem { engine }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for AfterlogSystem {
    fn drop(&mut self) {
        let _ = self.engine.close();
    }
}

impl System for AfterlogSystem {
    fn run(&self, shape: Shape, duration: Duration) -> Run {
        let engine = &self.engine;
        let before = engine.metrics().fsyncs;
        let publish = || {
            engine
                .publish(NAME, BODY, After::delay(DUE_IN))
                .expect("publish");
            1
        };
        let (events, elapsed) = match shape {
            Shape::One => serial(duration, publish),
            Shape::Concurrent(n) => concurrent(n, duration, |_, _| publish()),
            Shape::Batch(n) => serial(duration, || {
                engine
                    .push(NAME, std::iter::repeat_n(&BODY[..], n), DUE_IN)
                    .expect("push");
                n as u64
            }),
        };
        run_of(events, elapsed, engine.metrics().fsyncs - before)
    }
}

// ---- raw pwrite + fdatasync -------------------------------------------------------------

pub struct RawFile {
    file: File,
    path: PathBuf,
}

impl RawFile {
    /// A pre-sized file, all written as zeros and synced, so overwrites need no metadata.
    pub fn create(path: &Path) -> RawFile {
        let file = zero_filled(path, RAW_FILE_BYTES, false);
        RawFile {
            file,
            path: path.to_path_buf(),
        }
    }
}

impl Drop for RawFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct RawSystem<'a>(&'a RawFile);

/// Records the raw baselines write per sync: all of a shape's waiting records at once.
fn per_sync(shape: Shape) -> usize {
    match shape {
        Shape::One => 1,
        Shape::Concurrent(n) | Shape::Batch(n) => n,
    }
}

impl System for RawSystem<'_> {
    fn run(&self, shape: Shape, duration: Duration) -> Run {
        raw_run(self.0, per_sync(shape), duration)
    }
}

/// The raw baseline: one thread writing `per_sync` records with one `pwrite` then
/// `fdatasync`, in a loop for `duration`.
pub fn raw_run(raw: &RawFile, per_sync: usize, duration: Duration) -> Run {
    let buf = vec![0x5au8; per_sync * BODY_LEN];
    let mut offset = 0u64;
    let mut syncs = 0u64;
    let (events, elapsed) = serial(duration, || {
        if offset + buf.len() as u64 > RAW_FILE_BYTES {
            offset = 0;
        }
        raw.file.write_all_at(&buf, offset).expect("raw pwrite");
        raw.file.sync_data().expect("raw fdatasync");
        offset += buf.len() as u64;
        syncs += 1;
        per_sync as u64
    });
    run_of(events, elapsed, syncs)
}

/// The raw baseline's writes into new files, prepared ahead (see the module's doc).
struct FreshSystem(PathBuf);

/// A new file of `FRESH_FILE_BYTES` zeros, written and synced in 1 MiB steps as the log
/// prepares a segment, then synced whole.
fn fresh_file(dir: &Path, n: u64) -> File {
    zero_filled(&dir.join(format!("{n}.dat")), FRESH_FILE_BYTES, true)
}

/// A new file at `path` of `len` zeros written in 1 MiB pieces (each synced before the next
/// when `sync_each`, as the log prepares a segment), then synced whole.
fn zero_filled(path: &Path, len: u64, sync_each: bool) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create a zero-filled file");
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        file.write_all_at(&zeros, at).expect("zero-fill");
        if sync_each {
            file.sync_data().expect("sync a zero-filled piece");
        }
        at += zeros.len() as u64;
    }
    file.sync_all().expect("sync a zero-filled file");
    file
}

fn spawn_fresh(dir: &Path, n: u64) -> std::thread::JoinHandle<File> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || fresh_file(&dir, n))
}

impl System for FreshSystem {
    /// The first file is prepared before the clock starts, the next by a background thread
    /// while the current one fills.
    fn run(&self, shape: Shape, duration: Duration) -> Run {
        let dir = &self.0;
        let per_sync = per_sync(shape);
        let buf = vec![0x5au8; per_sync * BODY_LEN];
        let mut current = (0, fresh_file(dir, 0));
        let mut next = Some(spawn_fresh(dir, 1));
        let (mut offset, mut syncs) = (0u64, 0u64);
        let (events, elapsed) = serial(duration, || {
            if offset + buf.len() as u64 > FRESH_FILE_BYTES {
                let file = next.take().expect("a prepared file").join();
                let _ = std::fs::remove_file(dir.join(format!("{}.dat", current.0)));
                current = (current.0 + 1, file.expect("prepare a fresh file"));
                next = Some(spawn_fresh(dir, current.0 + 1));
                offset = 0;
            }
            current.1.write_all_at(&buf, offset).expect("fresh pwrite");
            current.1.sync_data().expect("fresh fdatasync");
            offset += buf.len() as u64;
            syncs += 1;
            per_sync as u64
        });
        if let Some(handle) = next {
            let _ = handle.join();
        }
        let _ = std::fs::remove_file(dir.join(format!("{}.dat", current.0)));
        let _ = std::fs::remove_file(dir.join(format!("{}.dat", current.0 + 1)));
        run_of(events, elapsed, syncs)
    }
}

// ---- afterlog's log alone -------------------------------------------------------------------

struct LogSystem {
    log: Log,
    next_id: AtomicU64,
}

impl LogSystem {
    /// Opens a fresh log and lets its first spare segment be prepared, so that timed runs
    /// see the steady state: one segment prepared ahead while the active one fills.
    fn open(base: &Path, shape: Shape) -> LogSystem {
        let dir = fresh_dir(base, &format!("publish-log-{}", shape.key()));
        let storage: Arc<dyn Storage> = Arc::new(FsStorage::new(&dir).expect("log directory"));
        let (log, _) = Log::open(storage, LogOptions::default(), |_, _| Ok(())).expect("open log");
        std::thread::sleep(SETTLE);
        LogSystem {
            log,
            next_id: AtomicU64::new(1),
        }
    }

    /// `n` publish entries of one event each, with fresh ids.
    fn entries(&self, n: usize) -> Vec<[PublishEntry<'static>; 1]> {
        let first = self.next_id.fetch_add(n as u64, Ordering::Relaxed);
        (first..first + n as u64)
            .map(|id| {
                [PublishEntry {
                    id: EventId(id),
                    due_ms: due_ms(id) as i64,
                    name: NAME,
                    body: &BODY,
                }]
            })
            .collect()
    }

    fn append(&self, n: usize) -> u64 {
        let entries = self.entries(n);
        let records: Vec<Record<'_>> = entries
            .iter()
            .map(|e| Record::Publish(Publish::new(None, 1, e)))
            .collect();
        self.log.append_all(&records).expect("append");
        n as u64
    }
}

impl Drop for LogSystem {
    fn drop(&mut self) {
        let _ = self.log.close();
    }
}

impl System for LogSystem {
    fn run(&self, shape: Shape, duration: Duration) -> Run {
        let before = self.log.counters().syncs;
        let (events, elapsed) = match shape {
            Shape::One => serial(duration, || self.append(1)),
            Shape::Concurrent(n) => concurrent(n, duration, |_, _| self.append(1)),
            Shape::Batch(n) => serial(duration, || self.append(n)),
        };
        run_of(events, elapsed, self.log.counters().syncs - before)
    }
}

// ---- SQLite -------------------------------------------------------------------------------

struct SqliteSystem {
    conn: Mutex<rusqlite::Connection>,
    next_id: AtomicU64,
}

const SQLITE_INSERT: &str = "INSERT INTO jobs (id, name, due_ms, body) VALUES (?1, ?2, ?3, ?4)";

impl SqliteSystem {
    fn open(base: &Path, shape: Shape) -> SqliteSystem {
        let dir = fresh_dir(base, &format!("publish-sqlite-{}", shape.key()));
        let conn = rusqlite::Connection::open(dir.join("jobs.db")).expect("open sqlite");
        conn.pragma_update(None, "journal_mode", "WAL")
            .expect("WAL mode");
        conn.pragma_update(None, "synchronous", "FULL")
            .expect("synchronous=FULL");
        conn.execute_batch(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, name TEXT NOT NULL, \
             due_ms INTEGER NOT NULL, body BLOB NOT NULL);
             CREATE INDEX jobs_due ON jobs (due_ms);",
        )
        .expect("create jobs table");
        SqliteSystem {
            conn: Mutex::new(conn),
            next_id: AtomicU64::new(1),
        }
    }

    fn insert(&self, conn: &rusqlite::Connection, n: u64) {
        let id = self.next_id.fetch_add(n, Ordering::Relaxed);
        let mut stmt = conn.prepare_cached(SQLITE_INSERT).expect("prepare insert");
        for id in id..id + n {
            stmt.execute(rusqlite::params![
                id as i64,
                NAME,
                due_ms(id) as i64,
                &BODY[..]
            ])
            .expect("insert");
        }
    }
}

impl System for SqliteSystem {
    fn run(&self, shape: Shape, duration: Duration) -> Run {
        let commits = AtomicU64::new(0);
        // One transaction (one commit, one WAL sync) per publish or per batch.
        let publish = |n: u64| {
            let mut conn = self.conn.lock().expect("sqlite lock");
            if n == 1 {
                self.insert(&conn, 1);
            } else {
                let tx = conn.transaction().expect("begin");
                self.insert(&tx, n);
                tx.commit().expect("commit");
            }
            commits.fetch_add(1, Ordering::Relaxed);
            n
        };
        let (events, elapsed) = match shape {
            Shape::One => serial(duration, || publish(1)),
            Shape::Concurrent(t) => concurrent(t, duration, |_, _| publish(1)),
            Shape::Batch(n) => serial(duration, || publish(n as u64)),
        };
        run_of(events, elapsed, commits.load(Ordering::Relaxed))
    }
}

fn due_ms(id: u64) -> u64 {
    1_900_000_000_000 + id % 3_600_000
}

// ---- fjall --------------------------------------------------------------------------------

struct FjallSystem {
    db: fjall::Database,
    jobs: fjall::Keyspace,
    next_id: AtomicU64,
}

impl FjallSystem {
    fn open(base: &Path, shape: Shape) -> FjallSystem {
        let dir = fresh_dir(base, &format!("publish-fjall-{}", shape.key()));
        let db = fjall::Database::builder(&dir).open().expect("open fjall");
        let jobs = db
            .keyspace("jobs", fjall::KeyspaceCreateOptions::default)
            .expect("fjall keyspace");
        FjallSystem {
            db,
            jobs,
            next_id: AtomicU64::new(1),
        }
    }
}

fn fjall_key(id: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&due_ms(id).to_be_bytes());
    key[8..].copy_from_slice(&id.to_be_bytes());
    key
}

impl System for FjallSystem {
    fn run(&self, shape: Shape, duration: Duration) -> Run {
        let persists = AtomicU64::new(0);
        let publish = |n: u64| {
            let id = self.next_id.fetch_add(n, Ordering::Relaxed);
            if n == 1 {
                self.jobs.insert(fjall_key(id), BODY).expect("fjall insert");
            } else {
                let mut batch = self.db.batch();
                for id in id..id + n {
                    batch.insert(&self.jobs, fjall_key(id), BODY);
                }
                batch.commit().expect("fjall batch");
            }
            self.db
                .persist(fjall::PersistMode::SyncData)
                .expect("fjall persist");
            persists.fetch_add(1, Ordering::Relaxed);
            n
        };
        let (events, elapsed) = match shape {
            Shape::One => serial(duration, || publish(1)),
            Shape::Concurrent(t) => concurrent(t, duration, |_, _| publish(1)),
            Shape::Batch(n) => serial(duration, || publish(n as u64)),
        };
        run_of(events, elapsed, persists.load(Ordering::Relaxed))
    }
}
