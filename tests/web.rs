//! The dashboard over HTTP: `afterlog serve` as a child process (read-only, no lock, beside a
//! running engine, following it), and the router mounted in an axum application with its
//! actions — with a real HTTP client. Security: escaping of names, keys and bodies, the
//! token, CSRF and origin checks, POST-only actions, and nothing written by `serve`.

use afterlog::{
    After, Engine, HandlerError, KeyMode, ManualClock, Options, PublishOptions, Reader, RetryPolicy,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const XSS: &str = "<script>alert(1)</script>";
const START_MS: i64 = 1_800_000_000_000;

/// A directory with events in every state, a dead letter, a job, a schedule, a paused name,
/// a name, key and body that are markup, and a body longer than a page shows.
fn make_dir(dir: &Path) -> (afterlog::EventId, afterlog::EventId) {
    let clock = ManualClock::new(START_MS);
    let engine = Engine::open_with(
        dir,
        Options::default()
            .clock(clock.clone())
            .compaction_interval(None)
            .default_policy(RetryPolicy::fixed(Duration::from_secs(1)).max_attempts(2)),
    )
    .expect("open");
    engine.on("ok", |_e, _c| Ok(()));
    engine.on("fails", |_e, _c| {
        Err(HandlerError::msg(format!("failed: {XSS}")))
    });
    engine.on(XSS, |_e, _c| Ok(()));
    engine.start();
    for _ in 0..3 {
        engine.publish("ok", b"{}", After::NOW).expect("publish");
    }
    engine.publish("fails", b"x", After::NOW).expect("publish");
    let later = engine
        .publish("ok", b"later", After::delay(Duration::from_secs(3600)))
        .expect("publish");
    let cancelled = engine
        .publish("ok", b"c", After::delay(Duration::from_secs(60)))
        .expect("publish");
    engine.cancel(cancelled).expect("cancel");
    let xss = engine
        .publish_with(
            XSS,
            XSS.as_bytes(),
            After::delay(Duration::from_secs(7200)),
            PublishOptions::default().key(XSS, KeyMode::Keep),
        )
        .expect("publish_with")
        .id;
    let big = vec![b'z'; 10_000];
    engine
        .publish("ok", &big, After::delay(Duration::from_secs(86_400)))
        .expect("publish");
    engine
        .push("ok", ["a", "b", "c"], Duration::from_secs(600))
        .expect("push");
    engine
        .schedule(
            "tick",
            "ok",
            b"",
            afterlog::Recurring::every(Duration::from_secs(300)),
        )
        .expect("schedule");
    engine.pause("paused.name").expect("pause");
    for _ in 0..4 {
        assert!(engine.wait_idle(Duration::from_secs(10)));
        clock.advance(Duration::from_secs(2));
    }
    assert!(engine.wait_idle(Duration::from_secs(10)));
    engine.close().expect("close");
    (later, xss)
}

/// `afterlog serve` as a child, killed when dropped.
struct Served {
    child: Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, extra: &[&str]) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_afterlog"))
        .arg("serve")
        .arg(dir)
        .args(["--addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn afterlog serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("first line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    Served { child, base: url }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = client().get(url).send().await.expect("GET");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.expect("body"))
}

async fn json(url: &str) -> serde_json::Value {
    let (status, _, body) = get(url).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

/// Every file of the directory and its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_shows_what_the_reader_reads_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let (later, xss) = make_dir(&dir);
    let before = files(&dir);
    let served = serve(&dir, &[]);
    let base = served.base.clone();

    // Every page answers, with the security headers.
    for page in [
        "/",
        "/events",
        "/events?state=failed",
        &format!("/events/{}", later.0),
        "/jobs",
        "/jobs/1",
        "/schedules",
        "/dead",
        "/segments",
        "/metrics",
        "/api/overview",
        "/api/events",
        "/api/jobs",
        "/api/schedules",
        "/api/dead",
        "/api/segments",
    ] {
        let (status, headers, body) = get(&format!("{base}{page}")).await;
        assert_eq!(status, 200, "{page}: {body}");
        let csp = headers
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(csp.starts_with("default-src 'none'"), "{page}: {csp:?}");
        assert_eq!(
            headers.get("x-content-type-options").map(|v| v.as_bytes()),
            Some(&b"nosniff"[..])
        );
    }

    // The numbers are the reader's.
    let reader = Reader::open(&dir).expect("reader");
    let summary = reader.summary().expect("summary");
    let overview = json(&format!("{base}/api/overview")).await;
    for (state, n) in &summary.events_by_state {
        assert_eq!(overview["states"][*state], *n, "state {state}");
    }
    let dead = reader.dead_letters(100).expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(overview["dead_letters"], 1);
    let api_dead = json(&format!("{base}/api/dead")).await;
    assert_eq!(api_dead["dead_letters"][0]["id"], dead[0].id.0);
    assert_eq!(
        api_dead["dead_letters"][0]["message"],
        dead[0].message.as_str()
    );
    assert_eq!(overview["paused"], serde_json::json!(["paused.name"]));
    let schedules = json(&format!("{base}/api/schedules")).await;
    let listed = reader.schedules().expect("schedules");
    assert_eq!(schedules["schedules"][0]["id"], listed[0].id.as_str());
    assert_eq!(
        schedules["schedules"][0]["next_due_ms"],
        serde_json::json!(listed[0].next_due_ms)
    );
    let events = json(&format!("{base}/api/events?limit=1000")).await;
    let rows = reader.events().expect("events");
    assert_eq!(events["events"].as_array().map(Vec::len), Some(rows.len()));
    for (api, row) in events["events"].as_array().unwrap().iter().zip(&rows) {
        assert_eq!(api["id"], row.id.0);
        assert_eq!(api["state"], row.state.name());
        assert_eq!(api["attempts"], row.attempts);
        assert_eq!(api["name"], row.name.as_str());
    }
    // Pages of two follow each other to the end.
    let mut after = 0u64;
    let mut seen = 0;
    loop {
        let page = json(&format!("{base}/api/events?limit=2&after={after}")).await;
        seen += page["events"].as_array().unwrap().len();
        match page["next_after"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, rows.len());

    // Markup in a name, key, body and failure message is text.
    let (_, _, overview_html) = get(&format!("{base}/")).await;
    let (_, _, event_html) = get(&format!("{base}/events/{}", xss.0)).await;
    let dead_id = dead[0].id.0;
    let (_, _, dead_event_html) = get(&format!("{base}/events/{dead_id}")).await;
    let (_, _, dead_html) = get(&format!("{base}/dead")).await;
    let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;";
    for (page, html) in [
        ("overview", &overview_html),
        ("event", &event_html),
        ("dead event", &dead_event_html),
        ("dead", &dead_html),
    ] {
        assert!(!html.contains("<script"), "{page} holds a script tag");
    }
    assert!(overview_html.contains(escaped));
    assert_eq!(
        event_html.matches(escaped).count(),
        4,
        "name, key, body, title: {event_html}"
    );
    assert!(dead_event_html.contains(&format!("failed: {escaped}")));

    // A long body is cut, with a download of the whole of it.
    let big = rows.iter().find(|r| r.body_bytes == 10_000).expect("big");
    let (_, _, big_html) = get(&format!("{base}/events/{}", big.id.0)).await;
    assert!(big_html.contains(&"z".repeat(4096)) && !big_html.contains(&"z".repeat(4097)));
    assert!(big_html.contains(&format!("/events/{}/body", big.id.0)));
    let r = client()
        .get(format!("{base}/events/{}/body", big.id.0))
        .send()
        .await
        .expect("download");
    assert_eq!(
        r.headers()
            .get("content-disposition")
            .and_then(|v| v.to_str().ok()),
        Some(format!("attachment; filename=\"ev-{}.body\"", big.id.0).as_str())
    );
    assert_eq!(r.bytes().await.expect("bytes").len(), 10_000);

    // Bad input is refused with a reason; an action does not exist on a read-only dashboard.
    let (status, _, body) = get(&format!("{base}/events?state=nope")).await;
    assert_eq!((status, body.contains("nope")), (400, true));
    let (status, _, _) = get(&format!("{base}/events/ev-0")).await;
    assert_eq!(status, 400);
    let (status, _, _) = get(&format!("{base}/events/999999")).await;
    assert_eq!(status, 404);
    let r = client()
        .post(format!("{base}/actions/pause"))
        .form(&[("csrf", "x"), ("name", "ok")])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 404);

    // No lock: an engine opens the directory beside it, and the dashboard follows it.
    let engine = Engine::open_with(&dir, Options::default().compaction_interval(None))
        .expect("an engine opens beside serve");
    let id = engine
        .publish("ok", b"new", After::delay(Duration::from_secs(999)))
        .expect("publish");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, _) = get(&format!("{base}/api/events/{}", id.0)).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the dashboard never showed {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.close().expect("close");
    // `serve` wrote nothing: every file but what the engine wrote is as it was.
    drop(served);
    let after = files(&dir);
    for (name, bytes) in &before {
        if name.ends_with(".seg") || name == "MANIFEST" {
            continue; // the engine appended to these
        }
        assert_eq!(after.get(name), Some(bytes), "{name} changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_an_engine_changes_no_byte() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    make_dir(&dir);
    let before = files(&dir);
    let served = serve(&dir, &[]);
    for page in ["/", "/events", "/dead", "/segments", "/api/overview"] {
        let (status, _, _) = get(&format!("{}{page}", served.base)).await;
        assert_eq!(status, 200);
    }
    drop(served);
    assert_eq!(files(&dir), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_off_loopback_and_checked_when_set() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    make_dir(&dir);
    // Any address but loopback needs a token; nothing is served.
    let out = Command::new(env!("CARGO_BIN_EXE_afterlog"))
        .arg("serve")
        .arg(&dir)
        .args(["--addr", "0.0.0.0:0"])
        .env_remove("AFTERLOG_TOKEN")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));

    let served = serve(&dir, &["--token", "s3cret"]);
    let base = &served.base;
    let (status, _, _) = get(&format!("{base}/api/overview")).await;
    assert_eq!(status, 401);
    let r = client()
        .get(format!("{base}/api/overview"))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 401);
    let r = client()
        .get(format!("{base}/api/overview"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
    // The login sets the cookie a browser then sends.
    let (status, _, _) = get(&format!("{base}/login?token=wrong")).await;
    assert_eq!(status, 401);
    let r = client()
        .get(format!("{base}/login?token=s3cret"))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status().as_u16(), 303);
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("cookie")
        .to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let pair = cookie.split(';').next().unwrap().to_owned();
    let r = client()
        .get(format!("{base}/"))
        .header("cookie", pair)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200);
}

/// The mounted router: actions act on the live engine, only by POST with the page's CSRF
/// token and from the same origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mounted_router_acts_on_the_live_engine() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let (later, _) = make_dir(&dir);
    let engine =
        Engine::open_with(&dir, Options::default().compaction_interval(None)).expect("open");
    engine.on("ok", |_e, _c| Ok(()));
    let app =
        axum::Router::new().nest("/afterlog", afterlog::web::router(&engine).expect("router"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let base = format!("http://{addr}/afterlog");

    let (status, _, page) = get(&format!("{base}/events/{}", later.0)).await;
    assert_eq!(status, 200);
    // Links and forms point under the mount.
    assert!(page.contains("href=\"/afterlog/events\""), "{page}");
    assert!(page.contains("action=\"/afterlog/actions/cancel\""));
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("csrf field")
        .to_owned();
    let action = format!("{base}/actions/cancel");
    let id = later.0.to_string();
    // GET is not an action; no token, a wrong one, another origin: refused.
    let (status, _, _) = get(&action).await;
    assert_eq!(status, 405);
    for (token, origin) in [
        ("", None),
        ("wrong", None),
        (csrf.as_str(), Some("http://evil.example")),
    ] {
        let mut req = client()
            .post(&action)
            .form(&[("csrf", token), ("id", id.as_str())]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        let r = req.send().await.expect("post");
        assert_eq!(
            r.status().as_u16(),
            403,
            "token {token:?} origin {origin:?}"
        );
    }
    assert_eq!(
        Reader::open(&dir)
            .unwrap()
            .event_history(later)
            .unwrap()
            .unwrap()
            .row
            .state,
        afterlog::EventState::Scheduled
    );
    // The right token from the same origin cancels, and the page says so at once.
    let r = client()
        .post(&action)
        .header("origin", format!("http://{addr}"))
        .form(&[("csrf", csrf.as_str()), ("id", id.as_str())])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/afterlog/events/{}", later.0).as_str())
    );
    let api = json(&format!("{base}/api/events/{}", later.0)).await;
    assert_eq!(api["event"]["state"], "cancelled");

    // Pause and resume, redrive and purge.
    let post = |what: &'static str, field: (&'static str, String)| {
        let csrf = csrf.clone();
        let url = format!("{base}/actions/{what}");
        async move {
            client()
                .post(url)
                .form(&[("csrf".to_string(), csrf), (field.0.to_string(), field.1)])
                .send()
                .await
                .expect("post")
                .status()
                .as_u16()
        }
    };
    assert_eq!(post("pause", ("name", "ok".into())).await, 303);
    assert_eq!(
        engine.paused(),
        vec!["ok".to_string(), "paused.name".to_string()]
    );
    assert_eq!(post("resume", ("name", "paused.name".into())).await, 303);
    assert_eq!(engine.paused(), vec!["ok".to_string()]);
    let dead = engine.dead_letters(10).expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(post("redrive", ("id", dead[0].id.0.to_string())).await, 303);
    assert!(engine.dead_letters(10).expect("dead").is_empty());
    let overview = json(&format!("{base}/api/overview")).await;
    assert_eq!(overview["dead_letters"], 0);
    // `/metrics` of the live engine: its own counts, then the directory's gauges.
    let (status, _, text) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("# TYPE afterlog_published_total counter"),
        "{text}"
    );
    assert!(text.contains("afterlog_dir_disk_bytes "), "{text}");
    assert_eq!(post("redrive", ("id", "ev-0".into())).await, 400);
    assert_eq!(post("nonsense", ("id", "1".into())).await, 400);

    server.abort();
    engine.close().expect("close");
}
