//! Scenario 1: durable publish of 200-byte bodies, by 1 publisher, by 64 concurrent
//! publishers and in batches of 1,024, against afterlog and three baselines:
//!
//! - **afterlog**: `Engine::publish` (due in one hour, so nothing is delivered during the
//!   run) under the default `Durability::Sync`; batches are one `Engine::push` of 1,024
//!   events, with `Options::max_push_events(1024)` and `max_push_bytes` raised to fit. The
//!   background compaction is off (nothing would be dead anyway). Syncs: the engine's
//!   `metrics().fsyncs`.
//! - **raw**: `pwrite` + `fdatasync` on a pre-sized, zero-filled, synced file (wrapping at
//!   its end): 1 record per sync; 64 records per sync from one thread for 64 publishers (an
//!   ideal group commit: an upper bound no implementation reaches); 1,024 records per sync
//!   for batches.
//! - **sqlite**: one connection in WAL mode with `synchronous=FULL`, table `jobs(id, name,
//!   due_ms, body)` with an index on `due_ms`; one transaction (one WAL sync) per publish or
//!   per batch; the 64 publishers share the connection behind a mutex (SQLite admits one
//!   writer at a time whatever the connection count; a connection per thread only adds
//!   busy-handler sleeps).
//! - **fjall**: one keyspace, key = due time and id (big-endian), value = body; `insert`
//!   (or a write batch of 1,024) followed by `Database::persist(PersistMode::SyncData)`; the
//!   64 publishers call both concurrently.

use crate::{Progress, fresh_dir, median};
use afterlog::{After, Engine, Options};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

pub const BODY_LEN: usize = 200;
const BODY: [u8; BODY_LEN] = [0x5a; BODY_LEN];
const NAME: &str = "bench.event";
const RAW_FILE_BYTES: u64 = 256 << 20;
const DUE_IN: Duration = Duration::from_secs(3600);
/// Pause after opening an engine, for its background segment preparation to finish.
const SETTLE: Duration = Duration::from_millis(1500);

pub const SYSTEMS: [&str; 4] = ["afterlog", "raw", "sqlite", "fjall"];

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

#[derive(Clone, Debug, Serialize)]
pub struct ShapeResult {
    pub scenario: String,
    pub publishers: usize,
    pub events_per_publish: usize,
    /// By system: afterlog, raw, sqlite, fjall.
    pub systems: BTreeMap<String, SystemResult>,
    /// afterlog's events/s over each baseline's.
    pub afterlog_ratio: BTreeMap<String, f64>,
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
            Box::new(RawSystem(&raw)),
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
            let events: u64 = runs.iter().map(|r| r.events).sum();
            let syncs: u64 = runs.iter().map(|r| r.syncs).sum();
            result.insert(
                SYSTEMS[i].to_string(),
                SystemResult {
                    events_per_s: median(runs.iter().map(Run::rate).collect()),
                    events_per_sync: events as f64 / syncs.max(1) as f64,
                    runs,
                },
            );
        }
        let ours = result["afterlog"].events_per_s;
        let afterlog_ratio = SYSTEMS[1..]
            .iter()
            .map(|s| (s.to_string(), ours / result[*s].events_per_s.max(1e-9)))
            .collect();
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
        });
    }
    out
}

trait System {
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

fn run_of(events: u64, elapsed: Duration, syncs: u64) -> Run {
    Run {
        events,
        seconds: elapsed.as_secs_f64(),
        syncs,
    }
}

// ---- afterlog ----------------------------------------------------------------------------

struct AfterlogSystem {
    engine: Engine,
}

impl AfterlogSystem {
    fn open(base: &Path, shape: Shape, batch: usize) -> AfterlogSystem {
        let dir = fresh_dir(base, &format!("publish-afterlog-{}", shape.key()));
        let options = Options::default()
            .compaction_interval(None)
            .max_push_events(batch)
            .max_push_bytes(batch * BODY_LEN);
        let engine = Engine::open_with(&dir, options).expect("open afterlog");
        std::thread::sleep(SETTLE);
        AfterlogSystem { engine }
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

struct RawFile {
    file: File,
    path: PathBuf,
}

impl RawFile {
    /// A pre-sized file, all written as zeros and synced, so overwrites need no metadata.
    fn create(path: &Path) -> RawFile {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .expect("create raw file");
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < RAW_FILE_BYTES {
            file.write_all_at(&zeros, at).expect("zero-fill raw file");
            at += zeros.len() as u64;
        }
        file.sync_all().expect("sync raw file");
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

impl System for RawSystem<'_> {
    fn run(&self, shape: Shape, duration: Duration) -> Run {
        let per_sync = match shape {
            Shape::One => 1,
            Shape::Concurrent(n) | Shape::Batch(n) => n,
        };
        let buf = vec![0x5au8; per_sync * BODY_LEN];
        let mut offset = 0u64;
        let mut syncs = 0u64;
        let (events, elapsed) = serial(duration, || {
            if offset + buf.len() as u64 > RAW_FILE_BYTES {
                offset = 0;
            }
            self.0.file.write_all_at(&buf, offset).expect("raw pwrite");
            self.0.file.sync_data().expect("raw fdatasync");
            offset += buf.len() as u64;
            syncs += 1;
            per_sync as u64
        });
        run_of(events, elapsed, syncs)
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
