//! The dashboard in a real browser: headless Chromium driven through chromedriver
//! (WebDriver, with the `fantoccini` crate), on a data directory that holds every kind of
//! thing a page shows. Part A serves it read-only with `afterlog serve` (a child process) and
//! checks each page's numbers against `Reader`; part B mounts `afterlog::web::router` in an
//! axum application beside a live engine and clicks its buttons. Each page is saved as a
//! screenshot under `target/screenshots/` (docs/screenshots/ holds a committed copy).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without them
//! the tests fail, saying so. `AFTERLOG_CHROMEDRIVER` and `AFTERLOG_CHROMIUM` name other
//! binaries.

use afterlog::{
    After, Engine, EventId, EventRow, EventState, HandlerError, JobId, ManualClock, Options,
    Reader, Recurring, RetryPolicy,
};
use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bound on every wait (a server starting, a page loading, an element appearing):
/// generous, so that a loaded machine only makes the test slower.
const WAIT: Duration = Duration::from_secs(60);
const IDLE: Duration = Duration::from_secs(20);
/// An event's name and body that a page must show as text.
const SCRIPT: &str = "<script>alert(1)</script>";
/// The event name whose attempts always fail: two attempts a second apart, then a dead letter.
const FLAKY: &str = "payment.charge";

fn install_hint() -> &'static str {
    "the browser test needs Debian's Chromium and its WebDriver: \
     `apt-get install -y chromium chromium-driver` (or name the binaries in \
     AFTERLOG_CHROMEDRIVER and AFTERLOG_CHROMIUM)"
}

fn tool(var: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var_os(var).unwrap_or_else(|| default.into()));
    assert!(
        path.is_file(),
        "{} not found: {}",
        path.display(),
        install_hint()
    );
    path
}

// ---------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------

/// A data directory on disk and the events a test looks at.
struct Workload {
    dir: tempfile::TempDir,
    clock: ManualClock,
    /// Named and with a body `SCRIPT`, scheduled.
    script: EventId,
    /// A body of more than `BODY_SHOWN` bytes, scheduled.
    big: EventId,
    /// Scheduled hours ahead (part B cancels it).
    later: EventId,
    /// Failed after its retries: a dead letter.
    dead: EventId,
    /// A job all of whose events succeeded.
    job: JobId,
}

fn options(clock: &ManualClock) -> Options {
    Options::default()
        .clock(clock.clone())
        .compaction_interval(None)
        .policy(
            FLAKY,
            RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(2),
        )
}

fn handlers(engine: &Engine) {
    for name in [
        "mail.send",
        "thumbnail.render",
        "report.build",
        "digest.daily",
    ] {
        engine.on(name, |_, _| Ok(()));
    }
    engine.on(FLAKY, |_, _| {
        Err(HandlerError::msg("card declined (code 51)"))
    });
}

fn after(text: &str) -> After {
    After::parse(text).unwrap()
}

/// Events of six names in every state but running and expired, two jobs, a schedule, a
/// paused name, two dead letters; the clock is the system's at the start, advanced a few
/// seconds (so the charts, drawn at the system's time, show what is due).
fn workload() -> Workload {
    let dir = tempfile::tempdir().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let clock = ManualClock::new(now_ms);
    let engine = Engine::open_with(dir.path(), options(&clock)).unwrap();
    handlers(&engine);
    engine.pause("digest.daily").unwrap();
    engine
        .publish("digest.daily", "{\"day\":\"today\"}", After::NOW)
        .unwrap();
    for i in 0..6 {
        let body = format!("{{\"to\":\"user{i}@example.com\"}}");
        engine.publish("mail.send", body, After::NOW).unwrap();
    }
    for (i, when) in ["10 minutes", "40 minutes", "3 hours"].iter().enumerate() {
        let body = format!("{{\"to\":\"later{i}@example.com\"}}");
        engine.publish("mail.send", body, after(when)).unwrap();
    }
    let dead = engine
        .publish(FLAKY, "{\"amount\":1200}", After::NOW)
        .unwrap();
    engine.publish("user.joinde", "{}", After::NOW).unwrap();
    let job = engine
        .push(
            "thumbnail.render",
            ["a.png", "b.png", "c.png"],
            Duration::ZERO,
        )
        .unwrap();
    engine
        .push(
            "thumbnail.render",
            ["d.png", "e.png"],
            Duration::from_secs(600),
        )
        .unwrap();
    engine
        .schedule(
            "hourly-report",
            "report.build",
            "{}",
            Recurring::every(Duration::from_secs(3600)),
        )
        .unwrap();
    let later = engine
        .publish("report.build", "{\"kind\":\"weekly\"}", after("2 hours"))
        .unwrap();
    let gone = engine
        .publish("report.build", "{\"kind\":\"monthly\"}", after("5 hours"))
        .unwrap();
    assert!(engine.cancel(gone).unwrap());
    let script = engine.publish(SCRIPT, SCRIPT, after("30 minutes")).unwrap();
    let mut body = String::new();
    for i in 0.. {
        if body.len() > 6000 {
            break;
        }
        body.push_str(&format!(
            "line {i:04} of an upload larger than a page shows\n"
        ));
    }
    let big = engine.publish("upload.scan", body, after("1 day")).unwrap();

    engine.start();
    for _ in 0..4 {
        assert!(engine.wait_idle(IDLE));
        clock.advance(Duration::from_secs(1));
    }
    assert!(engine.wait_idle(IDLE));
    engine.close().unwrap();
    Workload {
        dir,
        clock,
        script,
        big,
        later,
        dead,
        job,
    }
}

// ---------------------------------------------------------------------------------------
// Child processes and the browser
// ---------------------------------------------------------------------------------------

/// A child process killed, with everything it started, when this is dropped (on failure
/// too): it runs in a process group of its own, and the group is killed.
struct Guarded {
    child: Child,
    what: &'static str,
}

impl Guarded {
    fn spawn(what: &'static str, command: &mut Command) -> Guarded {
        let child = command
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}; {}", install_hint()));
        Guarded { child, what }
    }

    fn check_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited early: {status}", self.what);
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let killed = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !killed {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Chromium through chromedriver; the driver (and the browser under it) is killed when
/// this is dropped.
struct Browser {
    client: Client,
    _profile: tempfile::TempDir,
    _driver: Guarded,
}

impl Browser {
    async fn start() -> Browser {
        let driver_bin = tool("AFTERLOG_CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = tool("AFTERLOG_CHROMIUM", "/usr/bin/chromium");
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut driver = Guarded::spawn(
            "chromedriver",
            Command::new(&driver_bin)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        // Polled, with a bound: chromedriver listening.
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            driver.check_running();
            assert!(
                Instant::now() < deadline,
                "chromedriver is not listening on port {port} after {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            // The machine has no network: nothing may try to reach one.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1600",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium, "args": args }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("a Chromium session through chromedriver: {e}"));
        Browser {
            client,
            _profile: profile,
            _driver: driver,
        }
    }

    /// Opens `url`, waits for `ready`, checks that no script element and no dialog made
    /// it into the page, and saves a screenshot as `target/screenshots/<shot>.png`.
    async fn visit(&self, url: &str, ready: &str, shot: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        self.ready(url, ready).await;
        self.screenshot(shot).await;
    }

    async fn ready(&self, url: &str, ready: &str) {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(ready))
            .await
            .unwrap_or_else(|e| {
                panic!("{url}: no {ready:?} within {WAIT:?}: {e}");
            });
        let scripts = self.client.find_all(Locator::Css("script")).await.unwrap();
        assert!(scripts.is_empty(), "{url}: the page holds a script element");
        match self.client.get_alert_text().await {
            Err(CmdError::Standard(e)) if e.error.to_string() == "no such alert" => {}
            other => panic!("{url}: a dialog is open, or asking failed: {other:?}"),
        }
    }

    async fn screenshot(&self, shot: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{shot}.png")), png).unwrap();
    }

    /// The text of the element `css`, read again when a page refresh (every page but the
    /// events list refreshes itself) made it stale.
    async fn text(&self, css: &str) -> String {
        for _ in 0..5 {
            let read = async {
                let e = self.client.find(Locator::Css(css)).await?;
                e.text().await
            };
            match read.await {
                Ok(t) => return t,
                Err(e) if e.is_stale_element_reference() || e.is_no_such_element() => {
                    self.ready("(refreshed)", css).await;
                }
                Err(e) => panic!("{css}: {e}"),
            }
        }
        panic!("{css}: stale five times in a row")
    }

    /// The cells of the rows of table `css` that have any (the header row has none), read
    /// again when a page refresh made them stale.
    async fn table(&self, css: &str) -> Vec<Vec<String>> {
        for _ in 0..5 {
            match read_table(&self.client, css).await {
                Ok(rows) => return rows,
                Err(e) if e.is_stale_element_reference() || e.is_no_such_element() => {
                    self.ready("(refreshed)", css).await;
                }
                Err(e) => panic!("{css}: {e}"),
            }
        }
        panic!("{css}: stale five times in a row")
    }

    /// Clicks `button` (a CSS selector) and waits for the page the form's redirect leads to,
    /// which holds `ready`.
    async fn click(&self, row: Option<&Element>, button: &str, ready: &str) {
        let b = match row {
            Some(row) => row.find(Locator::Css(button)).await,
            None => self.client.find(Locator::Css(button)).await,
        }
        .unwrap_or_else(|e| panic!("no button {button:?}: {e}"));
        let before = self.client.current_url().await.unwrap();
        b.click().await.unwrap();
        // The form posts and its answer redirects; wait for the page that follows.
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(ready))
            .await
            .unwrap_or_else(|e| panic!("after {button:?} on {before}: no {ready:?}: {e}"));
        self.ready("(after a click)", ready).await;
    }

    async fn url(&self) -> String {
        self.client.current_url().await.unwrap().to_string()
    }
}

async fn read_table(c: &Client, css: &str) -> Result<Vec<Vec<String>>, CmdError> {
    let mut rows = Vec::new();
    for tr in c.find_all(Locator::Css(&format!("{css} tr"))).await? {
        let mut cells = Vec::new();
        for td in tr.find_all(Locator::Css("td")).await? {
            cells.push(td.text().await?);
        }
        if !cells.is_empty() {
            rows.push(cells);
        }
    }
    Ok(rows)
}

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("screenshots")
}

/// `afterlog serve DIR --addr 127.0.0.1:0`, and the address it prints.
fn serve(dir: &Path) -> (Guarded, SocketAddr) {
    let mut child = Guarded::spawn(
        "afterlog serve",
        Command::new(env!("CARGO_BIN_EXE_afterlog"))
            .arg("serve")
            .arg(dir)
            .args(["--addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    );
    let stdout = child.child.stdout.take().unwrap();
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = send.send(line);
    });
    let line = lines
        .recv_timeout(WAIT)
        .unwrap_or_else(|e| panic!("afterlog serve printed no line within {WAIT:?}: {e}"));
    let prefix = "afterlog serve: http://";
    let rest = line
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("afterlog serve's first line: {line:?}"));
    let addr = rest.split('/').next().unwrap().parse().unwrap();
    (child, addr)
}

// ---------------------------------------------------------------------------------------
// What the reader says
// ---------------------------------------------------------------------------------------

fn count(rows: &[EventRow], keep: impl Fn(&EventRow) -> bool) -> u64 {
    rows.iter().filter(|r| keep(r)).count() as u64
}

/// Success, in progress, failed, cancelled: a job's columns.
fn job_columns(rows: &[EventRow], job: JobId) -> [String; 4] {
    let of = |states: &[EventState]| {
        count(rows, |r| r.job == Some(job) && states.contains(&r.state)).to_string()
    };
    [
        of(&[EventState::Succeeded]),
        of(&[EventState::Scheduled, EventState::Running]),
        of(&[EventState::Failed, EventState::Expired]),
        of(&[EventState::Cancelled]),
    ]
}

fn ids(rows: &[EventRow], keep: impl Fn(&EventRow) -> bool) -> Vec<String> {
    rows.iter()
        .filter(|r| keep(r))
        .map(|r| r.id.to_string())
        .collect()
}

fn first_column(table: &[Vec<String>]) -> Vec<String> {
    let mut v: Vec<String> = table.iter().map(|r| r[0].clone()).collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------
// Part A: every page of `afterlog serve`, against the reader
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_of_afterlog_serve_shows_what_the_reader_reads() {
    let w = workload();
    let reader = Reader::open(w.dir.path()).unwrap();
    let summary = reader.summary().unwrap();
    let rows = summary.events.clone();
    let dead = reader.dead_letters(100).unwrap();
    let schedules = reader.schedules().unwrap();
    let segments = reader.segments().unwrap();
    // The workload holds what the pages are meant to show.
    let by_state: BTreeMap<&str, u64> = summary.events_by_state.iter().copied().collect();
    for state in ["scheduled", "succeeded", "failed", "cancelled"] {
        assert!(by_state[state] > 0, "no {state} event: {by_state:?}");
    }
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(summary.paused, ["digest.daily"]);

    let (_server, addr) = serve(w.dir.path());
    let b = Browser::start().await;
    let base = format!("http://{addr}");

    // The overview: cards and the table of names.
    b.visit(&format!("{base}/"), "#names", "overview").await;
    for (state, n) in &summary.events_by_state {
        let shown = b.text(&format!("#card-{state} b")).await;
        assert_eq!(shown, n.to_string(), "the {state} card");
    }
    assert_eq!(b.text("#card-events b").await, rows.len().to_string());
    assert_eq!(b.text("#card-dead b").await, dead.len().to_string());
    assert_eq!(summary.dead_letters, dead.len() as u64);
    assert_eq!(
        b.text("#card-schedules b").await,
        schedules.len().to_string()
    );
    assert_eq!(b.text("#card-jobs b").await, summary.jobs.to_string());
    let names = b.table("#names").await;
    let mut expected_names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    expected_names.sort();
    expected_names.dedup();
    let shown_names: Vec<&str> = names.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(shown_names, expected_names, "the names, sorted");
    for row in &names {
        let name = row[0].as_str();
        let mut expected = vec![name.to_owned()];
        for s in EventState::ALL {
            expected.push(count(&rows, |r| r.name == name && r.state == s).to_string());
        }
        expected.push(dead.iter().filter(|d| d.name == name).count().to_string());
        let paused = if summary.paused.iter().any(|p| p == name) {
            "paused"
        } else {
            ""
        };
        expected.push(paused.to_owned());
        assert_eq!(
            row, &expected,
            "the row of {name:?} (name, states, dead, paused)"
        );
    }

    // The events: all of them (fewer than a page), then the failed ones.
    b.visit(&format!("{base}/events"), "#events", "events")
        .await;
    let events = b.table("#events").await;
    assert_eq!(first_column(&events), sorted(ids(&rows, |_| true)));
    let script_row = events
        .iter()
        .find(|r| r[0] == w.script.to_string())
        .unwrap();
    assert_eq!(script_row[1], SCRIPT, "a name is shown as text");
    b.visit(
        &format!("{base}/events?state=failed"),
        "#events",
        "events-failed",
    )
    .await;
    let failed = b.table("#events").await;
    assert_eq!(
        first_column(&failed),
        sorted(ids(&rows, |r| r.state == EventState::Failed))
    );
    assert!(
        failed.iter().all(|r| r[2].starts_with("failed")),
        "{failed:?}"
    );

    // One event: a dead letter, with its records and its failure messages.
    let history = reader.event_history(w.dead).unwrap().unwrap();
    b.visit(&format!("{base}/events/{}", w.dead.0), "#records", "event")
        .await;
    assert_eq!(b.text("#event td.state").await, "failed (dead letter)");
    assert_eq!(b.text("#body").await, "{\"amount\":1200}");
    assert_eq!(b.table("#records").await.len(), history.records.len());
    let messages = b.table("#messages").await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages.iter().all(|m| m[1] == "card declined (code 51)"));
    // The script's event: its name and body are text, and nothing ran.
    b.visit(
        &format!("{base}/events/{}", w.script.0),
        "#body",
        "event-script",
    )
    .await;
    assert_eq!(b.text("#body").await, SCRIPT);
    assert_eq!(b.text("#event td.name").await, SCRIPT);
    // A body larger than a page shows: cut, with a link to the whole of it.
    let big = reader.event_history(w.big).unwrap().unwrap();
    assert!(big.body.len() > afterlog::web::BODY_SHOWN);
    b.visit(
        &format!("{base}/events/{}", w.big.0),
        "#download",
        "event-big",
    )
    .await;
    let shown = String::from_utf8(big.body[..afterlog::web::BODY_SHOWN].to_vec()).unwrap();
    assert_eq!(b.text("#body").await.trim_end(), shown.trim_end());
    let link = b.client.find(Locator::Css("#download")).await.unwrap();
    let href = link.attr("href").await.unwrap().unwrap();
    assert!(
        href.ends_with(&format!("/events/{}/body", w.big.0)),
        "{href}"
    );

    // Jobs, and one job.
    b.visit(&format!("{base}/jobs"), "#jobs", "jobs").await;
    let jobs = b.table("#jobs").await;
    assert_eq!(jobs.len() as u64, summary.jobs);
    for row in &jobs {
        let job: JobId = row[0].parse().unwrap();
        assert_eq!(row[2..6], job_columns(&rows, job), "the row of {job}");
    }
    b.visit(&format!("{base}/jobs/{}", w.job.0), "#job", "job")
        .await;
    let job = b.table("#job").await;
    let numbers: Vec<String> = job[..4].iter().map(|r| r[0].clone()).collect();
    assert_eq!(numbers, job_columns(&rows, w.job), "{job:?}");
    assert_eq!(numbers, ["3", "0", "0", "0"]);
    let job_events = b.table("#events").await;
    assert_eq!(
        first_column(&job_events),
        sorted(ids(&rows, |r| r.job == Some(w.job)))
    );

    // Schedules, dead letters, segments.
    b.visit(&format!("{base}/schedules"), "#schedules", "schedules")
        .await;
    let shown: Vec<[String; 3]> = b
        .table("#schedules")
        .await
        .into_iter()
        .map(|r| [r[0].clone(), r[1].clone(), r[2].clone()])
        .collect();
    let expected: Vec<[String; 3]> = schedules
        .iter()
        .map(|s| [s.id.clone(), s.name.clone(), s.rule.clone()])
        .collect();
    assert_eq!(shown, expected);

    b.visit(&format!("{base}/dead"), "#dead", "dead").await;
    let shown = b.table("#dead").await;
    let shown: Vec<(String, String, String, String)> = shown
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[3].clone(), r[4].clone()))
        .collect();
    let expected: Vec<(String, String, String, String)> = dead
        .iter()
        .map(|d| {
            (
                d.id.to_string(),
                d.name.clone(),
                d.message.clone(),
                d.attempts.to_string(),
            )
        })
        .collect();
    assert_eq!(shown, expected, "dead letters, newest first");
    assert!(
        b.text("#dead-count")
            .await
            .starts_with(&format!("{} dead letters", dead.len()))
    );

    b.visit(&format!("{base}/segments"), "#segments", "segments")
        .await;
    let shown: Vec<[String; 4]> = b
        .table("#segments")
        .await
        .into_iter()
        .map(|r| [r[0].clone(), r[1].clone(), r[2].clone(), r[3].clone()])
        .collect();
    let expected: Vec<[String; 4]> = segments
        .iter()
        .map(|s| {
            [
                s.file.clone(),
                s.file_bytes.to_string(),
                s.data_bytes.to_string(),
                s.records.to_string(),
            ]
        })
        .collect();
    assert_eq!(shown, expected, "segment, file bytes, data bytes, records");

    b.client.close().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Part B: the router mounted beside a live engine, and its buttons
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buttons_of_a_mounted_dashboard_act_on_its_engine() {
    let w = workload();
    // Not started: the states stay where the buttons put them (a redriven event would
    // otherwise be attempted, and fail again, while the test looks at it).
    let engine = Engine::open_with(w.dir.path(), options(&w.clock)).unwrap();
    handlers(&engine);
    let app = axum::Router::new().nest("/afterlog", afterlog::web::router(&engine).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let b = Browser::start().await;
    let base = format!("http://{addr}/afterlog");

    // Pause a name from the overview. Nested at `/afterlog`, it is at `/afterlog` (axum
    // answers `/afterlog/` with a 404), and every link and redirect says so.
    b.visit(&base, "#names", "live-overview").await;
    let home = b.client.find(Locator::Css("header nav a")).await.unwrap();
    assert_eq!(
        home.attr("href").await.unwrap().as_deref(),
        Some("/afterlog")
    );
    assert_eq!(b.text("header .mode").await, "live engine");
    let row = name_row(&b, "mail.send").await;
    b.click(Some(&row), "button[data-action=\"pause\"]", "#names")
        .await;
    assert_eq!(b.url().await, base);
    let row = name_row(&b, "mail.send").await;
    let cells = row.find_all(Locator::Css("td")).await.unwrap();
    let paused_cell = cells.last().unwrap();
    assert!(paused_cell.text().await.unwrap().starts_with("paused"));
    paused_cell
        .find(Locator::Css("button[data-action=\"resume\"]"))
        .await
        .unwrap();
    assert_eq!(engine.paused(), ["digest.daily", "mail.send"]);

    // Cancel a scheduled event from its page.
    b.visit(
        &format!("{base}/events/{}", w.later.0),
        "#event",
        "live-event",
    )
    .await;
    assert_eq!(b.text("#event td.state").await, "scheduled");
    b.click(None, "button[data-action=\"cancel\"]", "#event")
        .await;
    assert_eq!(b.url().await, format!("{base}/events/{}", w.later.0));
    assert_eq!(b.text("#event td.state").await, "cancelled");
    let state = |id: EventId| {
        Reader::open(w.dir.path())
            .unwrap()
            .events()
            .unwrap()
            .into_iter()
            .find(|r| r.id == id)
            .map(|r| (r.name, r.state))
    };
    assert_eq!(
        state(w.later),
        Some(("report.build".into(), EventState::Cancelled))
    );

    // Redrive the dead letter of the failing name.
    b.visit(&format!("{base}/dead"), "#dead", "live-dead").await;
    let rows = b.client.find_all(Locator::Css("#dead tr")).await.unwrap();
    let mut target = None;
    for row in rows {
        if row.text().await.unwrap().starts_with(&w.dead.to_string()) {
            target = Some(row);
        }
    }
    let row = target.expect("the dead letter's row");
    b.click(Some(&row), "button[data-action=\"redrive\"]", "#event")
        .await;
    let url = b.url().await;
    let new: EventId = url
        .strip_prefix(&format!("{base}/events/"))
        .unwrap_or_else(|| panic!("after a redrive: {url}"))
        .parse::<u64>()
        .map(EventId)
        .unwrap();
    assert!(new.0 > w.dead.0, "{new} after {}", w.dead);
    assert_eq!(b.text("#event td.name").await, FLAKY);
    assert_eq!(state(new), Some((FLAKY.into(), EventState::Scheduled)));
    let dead = engine.dead_letters(100).unwrap();
    assert!(dead.iter().all(|d| d.id != w.dead), "{dead:?}");
    b.visit(&base, "#names", "live-overview-after").await;

    b.client.close().await.unwrap();
    server.abort();
    tokio::task::spawn_blocking(move || engine.close())
        .await
        .unwrap()
        .unwrap();
}

/// The row of `name` in the overview's table of names.
async fn name_row(b: &Browser, name: &str) -> Element {
    for row in b.client.find_all(Locator::Css("#names tr")).await.unwrap() {
        if let Ok(cell) = row.find(Locator::Css("td.name")).await
            && cell.text().await.unwrap() == name
        {
            return row;
        }
    }
    panic!("no row of {name:?} in #names")
}
