//! The web dashboard: pages and a JSON API over a data directory, read-only and without its
//! lock, and — mounted beside a live engine — actions.
//!
//! ```no_run
//! # async fn app(engine: afterlog::Engine) -> afterlog::Result<()> {
//! // In an axum application, beside the engine it runs:
//! let app = axum::Router::new().nest("/afterlog", afterlog::web::router(&engine)?);
//! # let _ = app; Ok(()) }
//! ```
//!
//! `afterlog serve DIR` serves [`Dashboard::open`]'s router on loopback. Pages are HTML
//! rendered on the server (no script, no CDN: they work with no internet), refresh
//! themselves, and escape every name, key, body and message. Every response forbids
//! scripts outright (`Content-Security-Policy: default-src 'none'`).
//!
//! Security: actions (cancel, cancel job, redrive, purge dead letters, pause, resume) exist
//! only on a dashboard of a live engine ([`Dashboard::for_engine`]); they are `POST` forms
//! carrying a token of the dashboard's own (CSRF), refused when the request's `Origin`
//! names another site. With [`Dashboard::token`] set, every request must carry it: as
//! `Authorization: Bearer <token>`, or the cookie `/login?token=<token>` sets.
//!
//! What a page shows comes from a [`View`](view::View) of the directory, which a thread of
//! the dashboard brings up to date every [`REFRESH`].

mod pages;
pub mod view;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::storage::{FsStorage, Storage};
use axum::Router;
use axum::extract::{Form, OriginalUri, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use parking_lot::RwLock;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;
use view::{Refreshed, View};

/// How often the dashboard reads what the directory gained.
pub const REFRESH: Duration = Duration::from_secs(1);
/// Rows per page of a list.
pub const PAGE_ROWS: usize = 50;
/// Bytes of a body a page shows; a longer one is cut, with a link to download it whole.
pub const BODY_SHOWN: usize = 4096;

/// A dashboard of one data directory; clones share it. See the module documentation.
#[derive(Clone)]
pub struct Dashboard {
    shared: Arc<Shared>,
}

struct Shared {
    view: RwLock<View>,
    /// Why the last refresh failed, if it did (shown on every page until one succeeds).
    problem: RwLock<Option<String>>,
    engine: Option<Engine>,
    token: RwLock<Option<String>>,
    csrf: String,
    storage: Arc<dyn Storage>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("dir", &self.shared.storage.path())
            .field("live", &self.shared.engine.is_some())
            .finish_non_exhaustive()
    }
}

/// The router of a dashboard of `engine`, with its actions: what to mount in an axum
/// application (`Router::nest("/afterlog", ..)`). Shorthand for
/// `Dashboard::for_engine(engine)?.router()`.
pub fn router(engine: &Engine) -> Result<Router> {
    Ok(Dashboard::for_engine(engine)?.router())
}

/// A random token: 128 bits from the standard library's per-process random hash keys.
fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    for i in 0..2u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

impl Dashboard {
    /// A read-only dashboard of the data directory `dir` (no lock taken, nothing written):
    /// reads it once, then follows it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Dashboard> {
        let dir = dir.as_ref();
        // The reader's checks: a missing directory, one that holds no segment.
        crate::Reader::open(dir)?;
        let storage =
            FsStorage::existing(dir).map_err(|e| Error::io("open data directory", dir, e))?;
        Dashboard::with(Arc::new(storage), None)
    }

    /// A read-only dashboard of the directory in any storage (tests).
    pub fn open_storage(storage: Arc<dyn Storage>) -> Result<Dashboard> {
        Dashboard::with(storage, None)
    }

    /// A dashboard of `engine`'s directory, with actions on the engine.
    pub fn for_engine(engine: &Engine) -> Result<Dashboard> {
        Dashboard::with(engine.storage(), Some(engine.clone()))
    }

    fn with(storage: Arc<dyn Storage>, engine: Option<Engine>) -> Result<Dashboard> {
        let view = View::build(storage.clone())?;
        let shared = Arc::new(Shared {
            view: RwLock::new(view),
            problem: RwLock::new(None),
            engine,
            token: RwLock::new(None),
            csrf: random_token(),
            storage,
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("afterlog-dashboard".into())
            .spawn(move || follow(weak))
            .map_err(|e| Error::io("start the dashboard's thread", "", e))?;
        Ok(Dashboard { shared })
    }

    /// Requires `token` on every request (see the module documentation); an empty one
    /// requires none.
    pub fn token(self, token: impl Into<String>) -> Dashboard {
        *self.shared.token.write() = Some(token.into()).filter(|t| !t.is_empty());
        self
    }

    /// Reads what the directory gained now, instead of at the next [`REFRESH`].
    pub fn refresh(&self) -> Result<()> {
        refresh(&self.shared)
    }

    /// The router: pages, `/api/…`, `/metrics`, and on a live engine's dashboard the
    /// actions under `/actions/…`.
    pub fn router(&self) -> Router {
        let mut r = Router::new()
            .route("/", get(pages::overview))
            .route("/events", get(pages::events))
            .route("/events/{id}", get(pages::event))
            .route("/events/{id}/body", get(pages::body))
            .route("/jobs", get(pages::jobs))
            .route("/jobs/{id}", get(pages::job))
            .route("/schedules", get(pages::schedules))
            .route("/dead", get(pages::dead))
            .route("/segments", get(pages::segments))
            .route("/metrics", get(pages::metrics))
            .route("/api/overview", get(pages::api_overview))
            .route("/api/events", get(pages::api_events))
            .route("/api/events/{id}", get(pages::api_event))
            .route("/api/jobs", get(pages::api_jobs))
            .route("/api/schedules", get(pages::api_schedules))
            .route("/api/dead", get(pages::api_dead))
            .route("/api/segments", get(pages::api_segments))
            .route("/login", get(login));
        if self.shared.engine.is_some() {
            r = r.route("/actions/{action}", post(action));
        }
        r.layer(middleware::from_fn_with_state(self.clone(), guard))
            .with_state(self.clone())
    }

    pub(crate) fn view(&self) -> parking_lot::RwLockReadGuard<'_, View> {
        self.shared.view.read()
    }

    pub(crate) fn problem(&self) -> Option<String> {
        self.shared.problem.read().clone()
    }

    pub(crate) fn live(&self) -> bool {
        self.shared.engine.is_some()
    }

    pub(crate) fn csrf(&self) -> &str {
        &self.shared.csrf
    }

    pub(crate) fn engine(&self) -> Option<&Engine> {
        self.shared.engine.as_ref()
    }
}

/// Bytes of appended frames one hold of the view's write lock reads at most: pages wait
/// for a step, never for a whole segment.
const REFRESH_STEP: u64 = 256 << 10;

fn refresh(shared: &Shared) -> Result<()> {
    let outcome = loop {
        match shared.view.write().refresh_bounded(REFRESH_STEP) {
            Ok((Refreshed::Rebuild, _)) => break Ok(Refreshed::Rebuild),
            Ok((_, true)) => continue,
            Ok((r, false)) => break Ok(r),
            Err(e) => break Err(e),
        }
    };
    let result = match outcome {
        Ok(Refreshed::Rebuild) => View::build(shared.storage.clone()).map(|v| {
            *shared.view.write() = v;
        }),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    *shared.problem.write() = result.as_ref().err().map(|e| e.to_string());
    result
}

/// The dashboard's thread: refreshes the view every `REFRESH` until the dashboard is
/// dropped. A panic in a refresh is reported on the pages, and the thread goes on.
fn follow(shared: Weak<Shared>) {
    loop {
        std::thread::sleep(REFRESH);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = refresh(&shared);
        }));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with no message".into());
            *shared.problem.write() = Some(format!("reading the directory panicked: {message}"));
        }
    }
}

/// The path the dashboard is mounted at (`""` at the root), from the request as the
/// application received it and as the nested router sees it.
pub(crate) fn base_of(original: &OriginalUri, uri: &axum::http::Uri) -> String {
    let full = original.path();
    let inner = uri.path();
    // Nested at `/afterlog`, the overview is `/afterlog` itself, which the nested router
    // sees as `/`.
    full.strip_suffix(inner)
        .or((inner == "/").then_some(full))
        .unwrap_or("")
        .trim_end_matches('/')
        .to_owned()
}

/// The address of the dashboard's `path` mounted at `base`. Its overview is `base` itself:
/// axum routes a router nested at `/afterlog` at `/afterlog`, and answers `/afterlog/` with
/// a 404.
pub(crate) fn at(base: &str, path: &str) -> String {
    if path == "/" && !base.is_empty() {
        base.to_owned()
    } else {
        format!("{base}{path}")
    }
}

fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const COOKIE: &str = "afterlog_token";

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Checks the token (when one is set) and adds the security headers to every response.
async fn guard(State(d): State<Dashboard>, req: Request, next: Next) -> Response {
    let is_login = req.uri().path() == "/login";
    let token = d.shared.token.read().clone();
    if let Some(token) = &token
        && !is_login
    {
        let headers = req.headers();
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let given = bearer.or_else(|| cookie_token(headers));
        if !given.is_some_and(|g| equal_in_constant_time(g.as_bytes(), token.as_bytes())) {
            return secured(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "this dashboard needs its token: send `Authorization: Bearer <token>`, \
                     or open /login?token=<token> once in a browser\n",
                )
                    .into_response(),
            );
        }
    }
    secured(next.run(req).await)
}

fn secured(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

#[derive(serde::Deserialize)]
struct Login {
    token: String,
}

/// Sets the token cookie when the token is right, and goes to the overview.
async fn login(
    State(d): State<Dashboard>,
    original: OriginalUri,
    uri: axum::http::Uri,
    Query(q): Query<Login>,
) -> Response {
    let base = base_of(&original, &uri);
    let token = d.shared.token.read().clone();
    match &token {
        Some(token) if equal_in_constant_time(q.token.as_bytes(), token.as_bytes()) => {
            let path = if base.is_empty() { "/" } else { &base };
            let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path={path}");
            let mut r = Redirect::to(&at(&base, "/")).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Some(_) => (StatusCode::UNAUTHORIZED, "wrong token\n").into_response(),
        None => Redirect::to(&at(&base, "/")).into_response(),
    }
}

#[derive(serde::Deserialize)]
struct ActionForm {
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
}

/// `POST /actions/{cancel,cancel-job,redrive,purge-dead,pause,resume}`: checks the CSRF
/// token and the origin, acts on the engine, and goes back to the page it names.
async fn action(
    State(d): State<Dashboard>,
    original: OriginalUri,
    uri: axum::http::Uri,
    headers: HeaderMap,
    UrlPath(what): UrlPath<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let base = base_of(&original, &uri);
    if !equal_in_constant_time(form.csrf.as_bytes(), d.csrf().as_bytes()) {
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token\n").into_response();
    }
    if let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if origin != "null" && origin_host != host {
            return (StatusCode::FORBIDDEN, "cross-origin request refused\n").into_response();
        }
    }
    let Some(engine) = d.engine().cloned() else {
        return (
            StatusCode::NOT_FOUND,
            "no actions on a read-only dashboard\n",
        )
            .into_response();
    };
    let id = form.id.clone();
    let name = form.name.clone();
    let what2 = what.clone();
    let outcome = tokio::task::spawn_blocking(move || -> Result<String> {
        match what2.as_str() {
            "cancel" => {
                let id: crate::EventId = id.parse()?;
                engine.cancel(id)?;
                Ok(format!("/events/{}", id.0))
            }
            "cancel-job" => {
                let job: crate::JobId = id.parse()?;
                engine.cancel_job(job)?;
                Ok(format!("/jobs/{}", job.0))
            }
            "redrive" => {
                let id: crate::EventId = id.parse()?;
                let new = engine.redrive(id)?;
                Ok(format!("/events/{}", new.0))
            }
            "purge-dead" => {
                engine.purge_dead()?;
                Ok("/dead".into())
            }
            "pause" => {
                engine.pause(&name)?;
                Ok("/".into())
            }
            "resume" => {
                engine.resume(&name)?;
                Ok("/".into())
            }
            other => Err(Error::invalid(format!("no action {other:?}"))),
        }
    })
    .await;
    match outcome {
        Ok(Ok(back)) => {
            let _ = d.refresh();
            Redirect::to(&at(&base, &back)).into_response()
        }
        Ok(Err(e @ Error::InvalidInput { .. })) => {
            (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
        }
        Ok(Err(e)) => (StatusCode::CONFLICT, format!("{what}: {e}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}\n")).into_response(),
    }
}

/// Whether `addr` may be served without a token: loopback only.
pub fn needs_token(addr: &SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

/// Serves `dashboard` on `listener` until `shutdown` completes.
pub async fn serve(
    dashboard: Dashboard,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr().ok();
    axum::serve(listener, dashboard.router())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| {
            Error::io(
                "serve the dashboard",
                addr.map(|a| a.to_string()).unwrap_or_default(),
                e,
            )
        })
}
