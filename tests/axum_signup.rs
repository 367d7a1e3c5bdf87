//! examples/axum_signup.rs, run as a child process: every signup gets its welcome email
//! exactly once, across a graceful stop (SIGINT) that leaves emails not yet due and a restart
//! on the same data directory, and an email refused once by the mail service is retried.
//!
//! The mail service is served by this test (MAIL_URL), and records every call.

use afterlog::{EventId, EventState, Reader};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The bound on every wait: generous, so that a loaded machine only makes the test slower.
const WAIT: Duration = Duration::from_secs(60);
/// How long after a signup its email is due (AFTERLOG_SIGNUP_DELAY_MS).
const DELAY_MS: u64 = 3000;
/// The mail service refuses the first email to this address (503).
const FLAKY: &str = "flaky@example.com";

/// One call of the mail service.
#[derive(Clone, Debug)]
struct Call {
    key: String,
    to: String,
    accepted: bool,
}

type Calls = Arc<Mutex<Vec<Call>>>;

async fn mail(
    State(calls): State<Calls>,
    headers: HeaderMap,
    Json(mail): Json<serde_json::Value>,
) -> StatusCode {
    let key = headers
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let to = mail["to"].as_str().unwrap_or_default().to_string();
    let mut calls = calls.lock().unwrap();
    let accepted = !(to == FLAKY && calls.iter().all(|c| c.to != FLAKY));
    calls.push(Call { key, to, accepted });
    if accepted {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The example's binary, built by cargo next to this test's (target/<profile>/examples/),
/// so that the test never runs a stale one.
fn example_binary() -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    let profile_dir = deps.parent().unwrap().parent().unwrap().to_path_buf();
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--example", "axum_signup", "--features", "tokio"])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    if profile_dir.file_name().unwrap() == "release" {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "building the example failed: {status}");
    let binary = profile_dir.join("examples").join("axum_signup");
    assert!(binary.exists(), "{} is missing", binary.display());
    binary
}

/// A running example: its process, its address and the lines it prints.
struct Service {
    child: Child,
    addr: SocketAddr,
    lines: Receiver<String>,
}

impl Service {
    fn start(binary: &Path, dir: &Path, mail_url: &str) -> Service {
        let mut child = Command::new(binary)
            .arg(dir)
            .arg("127.0.0.1:0")
            .env("MAIL_URL", mail_url)
            .env("AFTERLOG_SIGNUP_DELAY_MS", DELAY_MS.to_string())
            // Every call here is local: none goes through a proxy the environment names.
            .env("NO_PROXY", "127.0.0.1")
            .env("no_proxy", "127.0.0.1")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the example starts");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                println!("example: {line}");
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut service = Service {
            child,
            addr: ([0, 0, 0, 0], 0).into(),
            lines,
        };
        let line = service.line_starting("listening on http://");
        service.addr = line["listening on http://".len()..].parse().unwrap();
        service
    }

    /// The next line the example prints that starts with `prefix`.
    fn line_starting(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("no line {prefix:?} within {WAIT:?}"),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the example exited before printing {prefix:?}")
                }
            }
        }
    }

    /// Ctrl-C: the example stops serving, closes its engine and exits 0.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.line_starting("closed");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the example did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "the example exited with {status}");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // A failed assertion leaves no process behind (after `stop`, it has exited already).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts a signup; the event id the example answers with.
async fn sign_up(client: &reqwest::Client, service: SocketAddr, email: &str) -> String {
    let response = client
        .post(format!("http://{service}/signup"))
        .json(&serde_json::json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    response.text().await.unwrap().trim().to_string()
}

/// Polls until `done` holds of the calls so far, or panics after `WAIT`.
fn wait_for(calls: &Calls, what: &str, done: impl Fn(&[Call]) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done(&calls.lock().unwrap()) {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?}; calls: {:?}",
            calls.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn accepted_keys(calls: &[Call]) -> Vec<String> {
    let mut keys: Vec<String> = calls
        .iter()
        .filter(|c| c.accepted)
        .map(|c| c.key.clone())
        .collect();
    keys.sort();
    keys
}

fn state_of(dir: &Path, id: &str) -> EventState {
    let id = EventId(id.trim_start_matches("ev-").parse().unwrap());
    let reader = Reader::open(dir).unwrap();
    reader.event_history(id).unwrap().unwrap().row.state
}

#[test]
fn every_signup_is_mailed_once_across_a_graceful_restart() {
    let binary = example_binary();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let calls: Calls = Arc::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let mail_url = format!("http://{}/mail", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/mail", post(mail))
        .with_state(calls.clone());
    rt.spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // First run: three signups, mailed while it runs (the flaky one on its second attempt).
    let service = Service::start(&binary, dir.path(), &mail_url);
    let mut ids = BTreeMap::new(); // event id -> email
    for email in ["a@example.com", FLAKY, "b@example.com"] {
        let id = rt.block_on(sign_up(&client, service.addr, email));
        ids.insert(id, email.to_string());
    }
    let first: Vec<String> = ids.keys().cloned().collect();
    wait_for(&calls, "the first three emails", |c| {
        accepted_keys(c) == first
    });

    // Three more signups, and a stop before their emails fall due.
    let mut later = Vec::new();
    for email in ["c@example.com", "d@example.com", "e@example.com"] {
        let id = rt.block_on(sign_up(&client, service.addr, email));
        ids.insert(id.clone(), email.to_string());
        later.push(id);
    }
    service.stop();
    for id in &later {
        assert_eq!(
            state_of(dir.path(), id),
            EventState::Scheduled,
            "{id} was delivered before the stop: the stop took longer than {DELAY_MS} ms"
        );
    }
    assert_eq!(accepted_keys(&calls.lock().unwrap()), first);

    // Second run, on the same directory: the pending emails go out.
    let service = Service::start(&binary, dir.path(), &mail_url);
    let all: Vec<String> = ids.keys().cloned().collect();
    wait_for(&calls, "all six emails", |c| accepted_keys(c) == all);
    // Absence of duplicates, checked a little after the fact.
    std::thread::sleep(Duration::from_millis(500));
    service.stop();

    let calls = calls.lock().unwrap().clone();
    assert_eq!(accepted_keys(&calls), all, "one accepted email per signup");
    for call in &calls {
        assert_eq!(ids[&call.key], call.to, "the key names the signup's event");
    }
    let refused: Vec<&Call> = calls.iter().filter(|c| !c.accepted).collect();
    assert_eq!(refused.len(), 1, "{calls:?}");
    assert_eq!(refused[0].to, FLAKY);
    assert_eq!(calls.len(), 7, "six emails and one retry: {calls:?}");
    for id in ids.keys() {
        assert_eq!(state_of(dir.path(), id), EventState::Succeeded, "{id}");
    }
}
