//! Scenario 15: the dashboard of a big directory. A directory is filled with `events`
//! pending events (scenario 4's fill: eight names, due over 30 days), then an engine adds a
//! few thousand delivered, failed (dead letters) and cancelled events, a job and a schedule.
//! A fresh process (this harness, `--child-serve DIR`) builds the dashboard
//! (`afterlog::web::Dashboard::open`) and serves it on loopback, as `afterlog serve` does;
//! every page is fetched `rounds` times over HTTP and the slowest time of each kept; then the
//! child's peak resident memory (`VmHWM` of `/proc/PID/status`) is read.
//!
//! Last, `/metrics` of a live engine: an engine delivering events published by a thread
//! beside it (8 names), its dashboard's router (`afterlog::web::router`) served on loopback
//! in this process; `/metrics` is fetched 200 times, 5 ms apart, and the 99th percentile
//! and the slowest kept.

use crate::{Progress, fresh_dir};
use afterlog::{After, Engine, HandlerError, Options, Recurring, RetryPolicy};
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct Params {
    pub events: u64,
    pub rounds: usize,
}

impl Params {
    pub fn steps(&self) -> u64 {
        5
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Page {
    pub path: String,
    pub bytes: usize,
    /// The slowest of the rounds.
    pub max_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Dashboard {
    pub events: u64,
    pub fill_s: f64,
    /// From the child's start to its first answer: the first read of the directory.
    pub build_s: f64,
    pub pages: Vec<Page>,
    pub slowest_page_ms: f64,
    pub vm_hwm_bytes: u64,
    pub rss_anon_bytes: u64,
    pub rss_file_bytes: u64,
    /// `/metrics` of a live engine under load: 99th percentile and slowest, ms.
    pub live_metrics_p99_ms: f64,
    pub live_metrics_max_ms: f64,
    pub live_metrics_bytes: usize,
    pub live_delivered_during: u64,
}

/// A few thousand events in every other state, a job and a schedule, beside the pending ones.
fn add_variety(dir: &Path) {
    let engine = Engine::open_with(
        dir,
        Options::default()
            .compaction_interval(None)
            .default_policy(RetryPolicy::fixed(Duration::from_millis(1)).max_attempts(1)),
    )
    .expect("open");
    engine.on("dash.ok", |_e, _c| Ok(()));
    engine.on("dash.fail", |_e, _c| {
        Err(HandlerError::msg("upstream said no"))
    });
    engine.start();
    for i in 0..5_000u32 {
        engine
            .publish("dash.ok", i.to_le_bytes(), After::NOW)
            .expect("publish");
    }
    for i in 0..1_000u32 {
        engine
            .publish("dash.fail", i.to_le_bytes(), After::NOW)
            .expect("publish");
    }
    for _ in 0..500 {
        let id = engine
            .publish("dash.ok", b"later", After::delay(Duration::from_secs(3600)))
            .expect("publish");
        engine.cancel(id).expect("cancel");
    }
    engine
        .push("dash.ok", ["a"; 50], Duration::from_secs(60))
        .expect("push");
    engine
        .schedule(
            "dash-tick",
            "dash.ok",
            b"",
            Recurring::every(Duration::from_secs(60)),
        )
        .expect("schedule");
    let deadline = Instant::now() + Duration::from_secs(120);
    while engine.metrics().dead_letters < 1_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    engine.wait_idle(Duration::from_secs(30));
    engine.close().expect("close");
}

/// The child: builds the dashboard, serves it, prints its address, serves until stdin ends.
pub fn child_serve(dir: &Path) {
    let started = Instant::now();
    let dashboard = afterlog::web::Dashboard::open(dir).expect("dashboard");
    let build_s = started.elapsed().as_secs_f64();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        println!(
            "{}",
            serde_json::json!({"addr": addr.to_string(), "build_s": build_s})
        );
        let _ = std::io::stdout().flush();
        let stop = async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut sink = Vec::new();
                let _ = std::io::stdin().read_to_end(&mut sink);
            })
            .await;
        };
        afterlog::web::serve(dashboard, listener, stop)
            .await
            .expect("serve");
    });
}

fn fetch(addr: &str, path: &str) -> (u16, usize) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("response");
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out.len())
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// `/metrics` of a live engine's mounted router while the engine delivers.
fn live_metrics(base: &Path) -> (f64, f64, usize, u64) {
    let dir = fresh_dir(base, "dashboard-live");
    let engine = Engine::open_with(&dir, Options::default()).expect("open");
    const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];
    for name in NAMES {
        engine.on(name, |_e, _c| Ok(()));
    }
    engine.start();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = NAMES[i % NAMES.len()];
                engine.push(name, ["x"; 50], Duration::ZERO).expect("push");
                i += 1;
            }
        })
    };
    let router = afterlog::web::router(&engine).expect("router");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = runtime.spawn(async move { axum::serve(listener, router).await });
    let before = engine.metrics().acked;
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..200 {
        let t = Instant::now();
        let (status, n) = fetch(&addr, "/metrics");
        times.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, 200);
        bytes = n;
        std::thread::sleep(Duration::from_millis(5));
    }
    let delivered = engine.metrics().acked - before;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.join().expect("publisher");
    server.abort();
    drop(runtime);
    engine.close().expect("close");
    let _ = std::fs::remove_dir_all(&dir);
    times.sort_by(f64::total_cmp);
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    (p99, *times.last().expect("times"), bytes, delivered)
}

pub fn run(base: &Path, p: &Params, progress: &Progress) -> Dashboard {
    progress.step(&format!(
        "dashboard: {} pending events to fill a directory",
        p.events
    ));
    let dir = fresh_dir(base, "dashboard");
    let fill_s = crate::recovery::fill(&dir, p.events, progress, None);
    progress.step("dashboard: delivered, failed and cancelled events beside them");
    add_variety(&dir);
    progress.step("dashboard: building it in a fresh process");
    let started = Instant::now();
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("--child-serve")
        .arg(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("child");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("child line");
    let build_s = started.elapsed().as_secs_f64();
    let hello: serde_json::Value = serde_json::from_str(line.trim()).expect("child hello");
    let addr = hello["addr"].as_str().expect("addr").to_owned();
    progress.step("dashboard: every page");
    let middle = p.events / 2;
    let paths = [
        "/".to_string(),
        "/events".into(),
        "/events?state=failed".into(),
        "/events?name=trial.ending".into(),
        format!("/events?after={middle}"),
        "/events?state=cancelled".into(),
        "/events?dead=1".into(),
        format!("/events/{middle}"),
        "/jobs".into(),
        "/jobs/1".into(),
        "/schedules".into(),
        "/dead".into(),
        "/segments".into(),
        "/metrics".into(),
        "/api/overview".into(),
        "/api/events".into(),
        format!("/api/events/{middle}"),
    ];
    let mut pages = Vec::new();
    for path in &paths {
        let mut max_ms = 0f64;
        let mut bytes = 0;
        for _ in 0..p.rounds.max(1) {
            let t = Instant::now();
            let (status, n) = fetch(&addr, path);
            max_ms = max_ms.max(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(status, 200, "{path}");
            bytes = n;
        }
        pages.push(Page {
            path: path.clone(),
            bytes,
            max_ms,
        });
    }
    let pid = child.id();
    let (vm_hwm_bytes, rss_anon_bytes, rss_file_bytes) = (
        status_field(pid, "VmHWM:"),
        status_field(pid, "RssAnon:"),
        status_field(pid, "RssFile:"),
    );
    drop(child.stdin.take());
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let slowest_page_ms = pages.iter().map(|p| p.max_ms).fold(0.0, f64::max);
    progress.step("dashboard: /metrics of a live engine");
    let (live_metrics_p99_ms, live_metrics_max_ms, live_metrics_bytes, live_delivered_during) =
        live_metrics(base);
    Dashboard {
        live_metrics_p99_ms,
        live_metrics_max_ms,
        live_metrics_bytes,
        live_delivered_during,
        events: p.events,
        fill_s,
        build_s,
        pages,
        slowest_page_ms,
        vm_hwm_bytes,
        rss_anon_bytes,
        rss_file_bytes,
    }
}

pub fn targets(d: &Dashboard, t: &mut Vec<crate::Target>) {
    use crate::target;
    t.push(target(
        format!("dashboard of {} events: slowest page, ms", d.events),
        d.slowest_page_ms,
        "<=",
        1000.0,
    ));
    t.push(target(
        format!("dashboard of {} events: peak RSS, MB", d.events),
        d.vm_hwm_bytes as f64 / 1e6,
        "<=",
        200.0,
    ));
    t.push(target(
        "/metrics of a live engine under load: p99, ms".to_string(),
        d.live_metrics_p99_ms,
        "<=",
        10.0,
    ));
}

pub fn print(d: &Dashboard) {
    println!();
    println!(
        "dashboard of {} events (filled in {:.1} s): built in {:.2} s; peak RSS {:.1} MB \
         (now {:.1} MB anonymous, {:.1} MB file)",
        d.events,
        d.fill_s,
        d.build_s,
        d.vm_hwm_bytes as f64 / 1e6,
        d.rss_anon_bytes as f64 / 1e6,
        d.rss_file_bytes as f64 / 1e6
    );
    for p in &d.pages {
        println!("  {:<40} {:>9.1} ms {:>9} B", p.path, p.max_ms, p.bytes);
    }
    println!(
        "/metrics of a live engine ({} events delivered meanwhile): p99 {:.2} ms, slowest \
         {:.2} ms, {} B",
        d.live_delivered_during, d.live_metrics_p99_ms, d.live_metrics_max_ms, d.live_metrics_bytes
    );
}
