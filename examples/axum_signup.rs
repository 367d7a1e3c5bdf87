//! An axum service that sends a welcome email a few seconds after a user signs up, through
//! afterlog: the signup is answered once the `user.joined` event is durable, and the email
//! goes out from an async handler when the event falls due — also if the service was
//! stopped (or killed) in between, since the event is in the log and is delivered after the
//! next start.
//!
//! ```sh
//! cargo run --example axum_signup --features tokio -- [DATA_DIR] [ADDR]
//! curl -X POST localhost:3000/signup -H 'content-type: application/json' -d '{"email":"a@b.c"}'
//! ```
//!
//! - `DATA_DIR` (default `afterlog-signup`): the engine's data directory.
//! - `ADDR` (default `127.0.0.1:3000`; port 0 picks one): where to listen. The address taken
//!   is printed as `listening on http://ADDR`.
//! - `AFTERLOG_SIGNUP_DELAY_MS` (default 3000): how long after the signup the email is due.
//! - `MAIL_URL` (default: this service's own `POST /mail`, which prints each email): where
//!   the handler posts the email, as a real service would call its mail provider.
//!
//! Ctrl-C (SIGINT) stops accepting requests, lets the ones in flight finish, then closes
//! the engine: handlers that are running finish, the log is synced and the directory
//! unlocked. Emails not yet due stay in the log for the next run.

use afterlog::{After, AsyncContext, Engine, Event, Options, RetryPolicy};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The body of `POST /signup`, and of the `user.joined` event.
#[derive(Serialize, Deserialize)]
struct Signup {
    email: String,
}

/// The body of `POST /mail`.
#[derive(Serialize, Deserialize)]
struct Mail {
    to: String,
    subject: String,
}

#[derive(Clone)]
struct App {
    engine: Engine,
    delay: Duration,
    mails: Arc<AtomicU64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "afterlog-signup".into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());
    let delay_ms: u64 = match std::env::var("AFTERLOG_SIGNUP_DELAY_MS") {
        Ok(ms) => ms.parse()?,
        Err(_) => 3000,
    };

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    let mail_url = std::env::var("MAIL_URL").unwrap_or_else(|_| format!("http://{local}/mail"));

    // A failed email is retried after 1 s, 2 s, 4 s, ... up to a minute apart (the default
    // policy retries every 6 minutes), and given up after 10 attempts.
    let options = Options::default().policy(
        "user.joined",
        RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(60), 2.0, 0.2)
            .max_attempts(10),
    );
    // Opening recovers the events of an earlier run that were not acknowledged.
    let engine = Engine::open_with(&dir, options)?;

    // reqwest without its default features: no TLS stack to build for a call to a local
    // endpoint, and a client that pools connections and takes a per-request timeout, which
    // hyper-util's lower-level client would make us write by hand.
    let client = reqwest::Client::new();
    engine.on_async("user.joined", move |event: Event, ctx: AsyncContext| {
        let (client, mail_url) = (client.clone(), mail_url.clone());
        async move {
            let signup: Signup = event.json()?;
            let mail = Mail {
                to: signup.email,
                subject: "Welcome!".into(),
            };
            // Delivery is at least once: after a crash between the mail call and the ack,
            // this runs again. The event id, the same on every attempt, lets the mail
            // service drop the duplicate.
            client
                .post(&mail_url)
                .header("Idempotency-Key", event.id().to_string())
                .json(&mail)
                // The handler's own timeout (5 s by default): the call gives up before the
                // engine does.
                .timeout(ctx.remaining())
                .send()
                .await?
                // A refused email (4xx, 5xx) is an error too: the attempt fails and the
                // event is retried.
                .error_for_status()?;
            Ok(())
        }
    });
    // Handlers run on this runtime; events recovered from the log are delivered from now on.
    engine.start();

    let app = App {
        engine: engine.clone(),
        delay: Duration::from_millis(delay_ms),
        mails: Arc::new(AtomicU64::new(0)),
    };
    let router = Router::new()
        .route("/signup", post(signup))
        .route("/mail", post(mail))
        .with_state(app);

    println!("listening on http://{local}");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            tokio::signal::ctrl_c().await.ok();
        })
        .await?;
    // The server has stopped; now the engine. `close_async` waits on a thread of its own, so
    // the handlers it waits for go on running on this runtime. (With the built-in `/mail`,
    // an email falling due now finds the server gone: its attempt fails and it is retried
    // after the next start.)
    engine.close_async().await?;
    println!("closed");
    Ok(())
}

/// `POST /signup`: publishes `user.joined`, answering 202 once it is durable.
async fn signup(
    State(app): State<App>,
    Json(signup): Json<Signup>,
) -> Result<(StatusCode, String), (StatusCode, String)> {
    let id = app
        .engine
        .publish_json_async("user.joined", &signup, After::delay(app.delay))
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((StatusCode::ACCEPTED, format!("{id}\n")))
}

/// `POST /mail`: the stand-in mail service, used when `MAIL_URL` is not set.
async fn mail(State(app): State<App>, Json(mail): Json<Mail>) -> StatusCode {
    let n = app.mails.fetch_add(1, Ordering::Relaxed) + 1;
    println!("mail #{n} to {}: {}", mail.to, mail.subject);
    StatusCode::OK
}
