//! The dashboard's pages (HTML rendered here, every piece of data escaped by [`esc`]), its
//! JSON API and `/metrics`.

use super::view::{EventLine, OTHER_NAME, Query as ViewQuery, View};
use super::{BODY_SHOWN, Dashboard, PAGE_ROWS, at, base_of};
use crate::engine::prometheus::{Escaped, family};
use crate::error::Result;
use crate::format::Record;
use crate::ids::{EventId, JobId};
use crate::index::EventState;
use crate::render;
use axum::extract::{OriginalUri, Path as UrlPath, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Json, Response};
use serde_json::{Value, json};
use std::fmt::Write as _;

/// Text made safe inside HTML, in element content and in quoted attribute values alike.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Text made safe as one value of a URL's query or path.
fn url(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn now_ms() -> i64 {
    crate::clock::Clock::now_ms(&crate::clock::SystemClock)
}

/// What every page handler is given: the dashboard and where it is mounted.
struct Ctx {
    d: Dashboard,
    base: String,
}

impl Ctx {
    fn new(d: Dashboard, original: &OriginalUri, uri: &Uri) -> Ctx {
        let base = base_of(original, uri);
        Ctx { d, base }
    }

    fn href(&self, path: &str) -> String {
        esc(&at(&self.base, path))
    }

    fn page(&self, title: &str, refresh: bool, body: &str) -> Response {
        let mut o = String::with_capacity(body.len() + 4096);
        o.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
        o.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
        if refresh {
            o.push_str("<meta http-equiv=\"refresh\" content=\"5\">");
        }
        let _ = write!(o, "<title>{} — afterlog</title>", esc(title));
        o.push_str(STYLE);
        o.push_str("</head><body><header><strong>afterlog</strong><nav>");
        for (path, label) in [
            ("/", "Overview"),
            ("/events", "Events"),
            ("/jobs", "Jobs"),
            ("/schedules", "Schedules"),
            ("/dead", "Dead letters"),
            ("/segments", "Segments"),
            ("/metrics", "Metrics"),
        ] {
            let _ = write!(o, "<a href=\"{}\">{label}</a>", self.href(path));
        }
        let mode = if self.d.live() {
            "live engine"
        } else {
            "read-only"
        };
        let _ = write!(
            o,
            "</nav><span class=\"dir\">{} · <span class=\"mode\">{mode}</span></span></header><main>",
            esc(&self.d.view().dir().display().to_string())
        );
        if let Some(problem) = self.d.problem() {
            let _ = write!(o, "<p class=\"problem\">{}</p>", esc(&problem));
        }
        let _ = write!(o, "<h1>{}</h1>", esc(title));
        o.push_str(body);
        o.push_str("</main></body></html>");
        Html(o).into_response()
    }

    /// A link to job `job`'s page (nothing for no job).
    fn job_link(&self, job: Option<JobId>) -> String {
        job.map_or(String::new(), |j| {
            format!(
                "<a href=\"{}\">{j}</a>",
                self.href(&format!("/jobs/{}", j.0))
            )
        })
    }

    /// A POST form with one button, carrying the CSRF token.
    fn button(&self, action: &str, fields: &[(&str, &str)], label: &str) -> String {
        let mut o = format!(
            "<form method=\"post\" action=\"{}\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            self.href(&format!("/actions/{action}")),
            esc(self.d.csrf())
        );
        for (k, v) in fields {
            let _ = write!(
                o,
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                esc(v)
            );
        }
        let _ = write!(
            o,
            "<button type=\"submit\" data-action=\"{action}\">{}</button></form>",
            esc(label)
        );
        o
    }
}

const STYLE: &str = "<style>\
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}\
header{display:flex;gap:1.5em;align-items:center;padding:.6em 1.2em;background:#1d2330;color:#fff}\
header a{color:#cfe0ff;margin-right:1em;text-decoration:none}header .dir{margin-left:auto;opacity:.8}\
.mode{font-weight:bold}main{padding:1em 1.5em}h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em}\
table{border-collapse:collapse;background:#fff;margin:.5em 0}td,th{padding:.3em .7em;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}\
th{background:#eef0f3}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.cards{display:flex;flex-wrap:wrap;gap:.8em}.card{background:#fff;padding:.6em 1em;border:1px solid #e3e6ea;min-width:8em}\
.card b{display:block;font-size:1.4em}.problem{background:#fde8e8;padding:.5em 1em;border:1px solid #f5b5b5}\
pre{background:#fff;border:1px solid #e3e6ea;padding:.7em;white-space:pre-wrap;word-break:break-all;max-width:100em}\
td pre{margin:0;padding:0;border:0;background:none}\
form.inline{display:inline;margin:0}button{cursor:pointer}svg{background:#fff;border:1px solid #e3e6ea}\
.filters input,.filters select{margin-right:.6em}.muted{color:#6b7280}\
</style>";

fn state_from(s: &str) -> Option<EventState> {
    EventState::ALL.into_iter().find(|st| st.name() == s)
}

/// Bars of `values` as an inline SVG, each with a tooltip; `labels` under some bars.
fn chart(values: &[u64], tips: &[String], labels: &[(usize, String)], title: &str) -> String {
    let (w, h, pad) = (720.0f64, 140.0f64, 18.0f64);
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let bar = w / values.len().max(1) as f64;
    let mut o = format!(
        "<svg role=\"img\" aria-label=\"{}\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(title),
        h + pad,
        h + pad
    );
    for (i, &v) in values.iter().enumerate() {
        let bh = (v as f64 / max) * (h - 4.0);
        let _ = write!(
            o,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4a78c2\"><title>{}</title></rect>",
            i as f64 * bar + 0.5,
            h - bh,
            (bar - 1.0).max(0.5),
            bh,
            esc(tips.get(i).map_or("", String::as_str))
        );
    }
    for (i, label) in labels {
        let _ = write!(
            o,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" fill=\"#6b7280\">{}</text>",
            *i as f64 * bar,
            h + 13.0,
            esc(label)
        );
    }
    let _ = write!(
        o,
        "<text x=\"{}\" y=\"12\" font-size=\"11\" text-anchor=\"end\" fill=\"#6b7280\">max {}</text></svg>",
        w - 4.0,
        max as u64
    );
    o
}

fn due_chart(counts: &[u64], now: i64, width_ms: i64, title: &str) -> String {
    let buckets = counts.len();
    let tips: Vec<String> = counts
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} due from {}", render::time(now + i as i64 * width_ms)))
        .collect();
    let step = (buckets / 6).max(1);
    let labels: Vec<(usize, String)> = (0..buckets)
        .step_by(step)
        .map(|i| (i, format!("+{}", human_ms(i as i64 * width_ms))))
        .collect();
    chart(counts, &tips, &labels, title)
}

fn human_ms(ms: i64) -> String {
    match ms {
        0 => "0".into(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms => format!("{}m", ms / 60_000),
    }
}

fn overview_json(view: &View, d: &Dashboard) -> Value {
    let by_state = view.by_state();
    let states: serde_json::Map<String, Value> = EventState::ALL
        .iter()
        .map(|s| (s.name().to_owned(), json!(by_state[*s as usize])))
        .collect();
    let names: Vec<Value> = view
        .names()
        .iter()
        .map(|n| {
            let by: serde_json::Map<String, Value> = EventState::ALL
                .iter()
                .map(|s| (s.name().to_owned(), json!(n.by_state[*s as usize])))
                .collect();
            json!({"name": n.name, "states": by, "dead_letters": n.dead})
        })
        .collect();
    let (records, kinds) = view.records();
    let disk = view.disk_bytes();
    json!({
        "dir": view.dir().display().to_string(),
        "live": d.live(),
        "events": view.events(),
        "states": states,
        "names": names,
        "dead_letters": view.dead_count(),
        "schedules": view.schedules().count(),
        "jobs": view.job_count(),
        "paused": view.paused().collect::<Vec<_>>(),
        "records": records,
        "records_by_kind": kinds.into_iter().map(|(k, n)| (k.to_owned(), json!(n)))
            .collect::<serde_json::Map<String, Value>>(),
        "segments": view.segments().count(),
        "disk_bytes": disk,
        "view_bytes": view.memory_bytes(),
        "problem": d.problem(),
    })
}

pub(super) async fn overview(
    State(d): State<Dashboard>,
    original: OriginalUri,
    uri: Uri,
) -> Response {
    let c = Ctx::new(d, &original, &uri);
    let view = c.d.view();
    let now = now_ms();
    let by_state = view.by_state();
    let mut o = String::new();
    o.push_str("<div class=\"cards\">");
    let _ = write!(
        o,
        "<div class=\"card\" id=\"card-events\">events<b>{}</b></div>",
        view.events()
    );
    for s in EventState::ALL {
        let _ = write!(
            o,
            "<div class=\"card\" id=\"card-{0}\"><a href=\"{1}\">{0}</a><b>{2}</b></div>",
            s.name(),
            c.href(&format!("/events?state={}", s.name())),
            by_state[s as usize]
        );
    }
    let disk = view.disk_bytes();
    let _ = write!(
        o,
        "<div class=\"card\" id=\"card-dead\"><a href=\"{}\">dead letters</a><b>{}</b></div>\
         <div class=\"card\" id=\"card-schedules\"><a href=\"{}\">schedules</a><b>{}</b></div>\
         <div class=\"card\" id=\"card-jobs\"><a href=\"{}\">jobs</a><b>{}</b></div>\
         <div class=\"card\" id=\"card-disk\"><a href=\"{}\">disk</a><b>{}</b></div></div>",
        c.href("/dead"),
        view.dead_count(),
        c.href("/schedules"),
        view.schedules().count(),
        c.href("/jobs"),
        view.job_count(),
        c.href("/segments"),
        esc(&render::bytes(disk)),
    );

    o.push_str("<h2>Events by name</h2><table id=\"names\"><tr><th>name</th>");
    for s in EventState::ALL {
        let _ = write!(o, "<th>{}</th>", s.name());
    }
    o.push_str("<th>dead</th><th>paused</th></tr>");
    let paused: Vec<&str> = view.paused().collect();
    for n in view.names() {
        let is_paused = paused.contains(&n.name.as_str());
        let link = if n.name == OTHER_NAME {
            esc(&n.name)
        } else {
            format!(
                "<a href=\"{}\">{}</a>",
                c.href(&format!("/events?name={}", url(&n.name))),
                esc(&n.name)
            )
        };
        let _ = write!(o, "<tr><td class=\"name\">{link}</td>");
        for s in EventState::ALL {
            let _ = write!(o, "<td class=\"n\">{}</td>", n.by_state[s as usize]);
        }
        let _ = write!(o, "<td class=\"n\">{}</td><td>", n.dead);
        if is_paused {
            o.push_str("paused ");
        }
        if c.d.live() && n.name != OTHER_NAME {
            o.push_str(&if is_paused {
                c.button("resume", &[("name", &n.name)], "Resume")
            } else {
                c.button("pause", &[("name", &n.name)], "Pause")
            });
        }
        o.push_str("</td></tr>");
    }
    o.push_str("</table>");
    if !paused.is_empty() {
        let list: Vec<String> = paused.iter().map(|p| esc(p)).collect();
        let _ = write!(o, "<p>Paused: {}</p>", list.join(", "));
    }

    o.push_str("<h2>Falling due</h2>");
    const WINDOWS: [(&str, i64, usize); 3] = [
        ("next hour, per minute", 60_000, 60),
        ("next day, per hour", 3_600_000, 24),
        ("next 30 days, per day", 86_400_000, 30),
    ];
    let (overdue, counts) = view.due_histograms(now, &WINDOWS.map(|(_, width, n)| (width, n)));
    for ((title, width, _), counts) in WINDOWS.into_iter().zip(&counts) {
        let svg = due_chart(counts, now, width, title);
        let _ = write!(o, "<h3>{title}</h3>{svg}");
        if title.starts_with("next hour") {
            let _ = write!(
                o,
                "<p id=\"overdue\">{overdue} scheduled {} due already (the engine is behind, stopped, or the name is paused).</p>",
                if overdue == 1 {
                    "event is"
                } else {
                    "events are"
                }
            );
        }
    }

    o.push_str("<h2>Attempts and failures, last 24 hours (per hour)</h2>");
    let this_minute = now.div_euclid(60_000);
    let mut attempts = vec![0u64; 24];
    let mut failures = vec![0u64; 24];
    for (minute, a) in view.activity(this_minute - 24 * 60 + 1) {
        let i = ((minute - (this_minute - 24 * 60 + 1)) / 60).clamp(0, 23) as usize;
        attempts[i] += a.attempts;
        failures[i] += a.failures;
    }
    let tips = |v: &[u64], what: &str| -> Vec<String> {
        v.iter()
            .enumerate()
            .map(|(i, c)| format!("{c} {what}, {}h ago", 23 - i))
            .collect()
    };
    let labels: Vec<(usize, String)> = (0..24)
        .step_by(4)
        .map(|i| (i, format!("-{}h", 24 - i)))
        .collect();
    let _ = write!(
        o,
        "<h3>attempts</h3>{}<h3>failures</h3>{}",
        chart(
            &attempts,
            &tips(&attempts, "attempts"),
            &labels,
            "attempts per hour"
        ),
        chart(
            &failures,
            &tips(&failures, "failures"),
            &labels,
            "failures per hour"
        )
    );
    let (records, _) = view.records();
    let _ = write!(
        o,
        "<h2>Disk</h2><p>{} in {} segments, {records} records; this view holds {}.</p>",
        esc(&render::bytes(disk)),
        view.segments().count(),
        esc(&render::bytes(view.memory_bytes()))
    );
    drop(view);
    c.page("Overview", true, &o)
}

pub(super) async fn api_overview(State(d): State<Dashboard>) -> Response {
    let v = overview_json(&d.view(), &d);
    Json(v).into_response()
}

#[derive(serde::Deserialize, Default)]
pub(super) struct EventsQuery {
    #[serde(default)]
    name: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    job: String,
    #[serde(default)]
    dead: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    limit: String,
}

fn bad(text: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{text}\n")).into_response()
}

fn view_query(q: &EventsQuery) -> std::result::Result<ViewQuery, String> {
    let state = match q.state.as_str() {
        "" => None,
        s => Some(state_from(s).ok_or_else(|| format!("no state {s:?}"))?),
    };
    let job = match q.job.trim() {
        "" => None,
        j => Some(j.parse::<JobId>().map_err(|e| e.to_string())?),
    };
    let after = match q.after.trim() {
        "" => 0,
        a => a
            .strip_prefix("ev-")
            .unwrap_or(a)
            .parse::<u64>()
            .map_err(|_| format!("after {a:?} is not an event id"))?,
    };
    let limit = match q.limit.trim() {
        "" => PAGE_ROWS,
        l => l
            .parse::<usize>()
            .map_err(|_| format!("limit {l:?} is not a number"))?
            .clamp(1, 1000),
    };
    Ok(ViewQuery {
        name: Some(q.name.clone()).filter(|n| !n.is_empty()),
        state,
        key: Some(q.key.as_bytes().to_vec()).filter(|k| !k.is_empty()),
        job,
        dead: !q.dead.is_empty(),
        after,
        limit,
    })
}

fn line_cells(c: &Ctx, l: &EventLine) -> String {
    format!(
        "<tr><td><a href=\"{}\">{}</a></td><td class=\"name\">{}</td><td class=\"state\">{}{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"key\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
        c.href(&format!("/events/{}", l.id.0)),
        l.id,
        esc(&l.name),
        l.state,
        if l.dead { " (dead)" } else { "" },
        l.attempts,
        esc(&render::time(l.due_ms)),
        l.priority,
        esc(l.key.as_deref().unwrap_or("")),
        c.job_link(l.job),
        l.body_bytes,
        esc(&render::time(l.published_ms)),
    )
}

const LINE_HEAD: &str = "<tr><th>id</th><th>name</th><th>state</th><th>attempts</th><th>due</th><th>priority</th><th>key</th><th>job</th><th>body bytes</th><th>published</th></tr>";

pub(super) async fn events(
    State(d): State<Dashboard>,
    original: OriginalUri,
    uri: Uri,
    Query(q): Query<EventsQuery>,
) -> Response {
    let c = Ctx::new(d, &original, &uri);
    let vq = match view_query(&q) {
        Ok(vq) => vq,
        Err(e) => return bad(e),
    };
    let view = c.d.view();
    let lines = match view.query(&vq) {
        Ok(l) => l,
        Err(e) => return failed(e),
    };
    let mut o = String::new();
    let _ = write!(
        o,
        "<form class=\"filters\" method=\"get\" action=\"{}\">name <select name=\"name\"><option value=\"\">any</option>",
        c.href("/events")
    );
    for n in view.names() {
        let sel = if q.name == n.name { " selected" } else { "" };
        let _ = write!(o, "<option value=\"{0}\"{sel}>{0}</option>", esc(&n.name));
    }
    o.push_str("</select> state <select name=\"state\"><option value=\"\">any</option>");
    for s in EventState::ALL {
        let sel = if q.state == s.name() { " selected" } else { "" };
        let _ = write!(o, "<option{sel}>{}</option>", s.name());
    }
    let _ = write!(
        o,
        "</select> key <input name=\"key\" value=\"{}\"> job <input name=\"job\" size=\"8\" value=\"{}\"> <label><input type=\"checkbox\" name=\"dead\" value=\"1\"{}> dead letters</label> <button type=\"submit\">Filter</button></form>",
        esc(&q.key),
        esc(&q.job),
        if vq.dead { " checked" } else { "" }
    );
    let _ = write!(o, "<table id=\"events\">{LINE_HEAD}");
    for l in &lines {
        o.push_str(&line_cells(&c, l));
    }
    o.push_str("</table>");
    if lines.is_empty() {
        o.push_str("<p class=\"muted\">No events match.</p>");
    }
    if lines.len() >= vq.limit
        && let Some(last) = lines.last()
    {
        let _ = write!(
            o,
            "<p><a id=\"next\" href=\"{}\">Next {} →</a></p>",
            c.href(&format!(
                "/events?name={}&state={}&key={}&job={}&dead={}&after={}",
                url(&q.name),
                url(&q.state),
                url(&q.key),
                url(&q.job),
                url(&q.dead),
                last.id.0
            )),
            vq.limit
        );
    }
    drop(view);
    c.page("Events", false, &o)
}

pub(super) async fn api_events(
    State(d): State<Dashboard>,
    Query(q): Query<EventsQuery>,
) -> Response {
    let vq = match view_query(&q) {
        Ok(vq) => vq,
        Err(e) => return bad(e),
    };
    match d.view().query(&vq) {
        Ok(lines) => {
            let next = (lines.len() >= vq.limit).then(|| lines.last().map(|l| l.id.0));
            Json(json!({"events": lines, "next_after": next.flatten()})).into_response()
        }
        Err(e) => failed(e),
    }
}

fn failed(e: crate::Error) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, format!("{what}\n")).into_response()
}

/// One event: its line, its body, its records decoded; `None` when the view holds none.
struct EventPage {
    line: EventLine,
    body: Vec<u8>,
    records: Vec<(crate::Position, Value, String, crate::format::RecordKind)>,
    retry: Option<(String, u32, Vec<u8>)>,
    messages: Vec<(i64, String)>,
}

fn event_page(view: &View, id: EventId) -> Result<Option<EventPage>> {
    let Some(line) = view.line(id)? else {
        return Ok(None);
    };
    let mut page = EventPage {
        line,
        body: Vec::new(),
        records: Vec::new(),
        retry: None,
        messages: Vec::new(),
    };
    let history = view.history(id)?;
    page.body = view.body_in(id, &history).unwrap_or_default();
    for (pos, payload, kind) in &history {
        let (pos, kind) = (*pos, *kind);
        let Ok(record) = Record::decode_in(view.version_of(pos.segment), kind, payload) else {
            continue;
        };
        match &record {
            Record::Retry(r) if r.event == id => {
                page.retry = Some((
                    crate::reader::retry_reason_name(r.reason),
                    r.retry_count,
                    r.data.to_vec(),
                ));
                page.messages.push((r.failed_ms, r.message.to_owned()));
            }
            Record::Drop(d) if d.event == id && !d.message.is_empty() => {
                page.messages.push((d.dropped_ms, d.message.to_owned()));
            }
            _ => {}
        }
        page.records.push((
            pos,
            render::record_json(pos, &record),
            render::record_details(&record),
            kind,
        ));
    }
    Ok(Some(page))
}

fn parse_event(id: &str) -> std::result::Result<EventId, String> {
    id.parse::<EventId>().map_err(|e| e.to_string())
}

pub(super) async fn event(
    State(d): State<Dashboard>,
    original: OriginalUri,
    uri: Uri,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let c = Ctx::new(d, &original, &uri);
    let id = match parse_event(&id) {
        Ok(id) => id,
        Err(e) => return bad(e),
    };
    let page = {
        let view = c.d.view();
        event_page(&view, id)
    };
    let page = match page {
        Ok(Some(p)) => p,
        Ok(None) => return not_found(format!("{id}: the log holds no publish of it")),
        Err(e) => return failed(e),
    };
    let l = &page.line;
    let mut o = String::new();
    let _ = write!(
        o,
        "<table id=\"event\"><tr><th>id</th><td>{}</td></tr><tr><th>name</th><td class=\"name\">{}</td></tr><tr><th>state</th><td class=\"state\">{}{}</td></tr><tr><th>attempts</th><td>{}</td></tr><tr><th>due</th><td>{}</td></tr><tr><th>published</th><td>{}</td></tr><tr><th>priority</th><td>{}</td></tr><tr><th>key</th><td class=\"key\">{}</td></tr><tr><th>job</th><td>{}</td></tr></table>",
        l.id,
        esc(&l.name),
        l.state,
        if l.dead { " (dead letter)" } else { "" },
        l.attempts,
        esc(&render::time(l.due_ms)),
        esc(&render::time(l.published_ms)),
        l.priority,
        esc(l.key.as_deref().unwrap_or("")),
        c.job_link(l.job),
    );
    if c.d.live() {
        let id_text = id.0.to_string();
        if l.state == "scheduled" || l.state == "running" {
            o.push_str(&c.button("cancel", &[("id", &id_text)], "Cancel this event"));
        }
        if l.dead {
            o.push_str(&c.button("redrive", &[("id", &id_text)], "Redrive"));
        }
    }
    let _ = write!(o, "<h2>Body ({} bytes)</h2>", page.body.len());
    let shown = &page.body[..page.body.len().min(BODY_SHOWN)];
    let _ = write!(
        o,
        "<pre id=\"body\">{}</pre>",
        esc(&String::from_utf8_lossy(shown))
    );
    if page.body.len() > BODY_SHOWN {
        let _ = write!(
            o,
            "<p>Cut at {BODY_SHOWN} bytes. <a id=\"download\" href=\"{}\">Download the whole body</a>.</p>",
            c.href(&format!("/events/{}/body", id.0))
        );
    }
    if let Some((reason, count, data)) = &page.retry {
        let _ = write!(
            o,
            "<h2>Retry context</h2><table><tr><th>reason</th><td>{}</td></tr><tr><th>retry count</th><td>{count}</td></tr><tr><th>data</th><td><pre>{}</pre></td></tr></table>",
            esc(reason),
            esc(&render::data_text(data))
        );
    }
    if !page.messages.is_empty() {
        o.push_str(
            "<h2>Failure messages</h2><table id=\"messages\"><tr><th>at</th><th>message</th></tr>",
        );
        for (at, m) in &page.messages {
            let _ = write!(
                o,
                "<tr><td>{}</td><td><pre>{}</pre></td></tr>",
                esc(&render::time(*at)),
                esc(m)
            );
        }
        o.push_str("</table>");
    }
    o.push_str("<h2>Records</h2><table id=\"records\"><tr><th>seq</th><th>segment:offset</th><th>kind</th><th>time</th><th>details</th></tr>");
    for (pos, json, details, kind) in &page.records {
        let time = json.get("time").and_then(Value::as_str).unwrap_or("");
        let _ = write!(
            o,
            "<tr><td class=\"n\">{}</td><td>{}:{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            pos.seq,
            pos.segment,
            pos.offset,
            kind.name(),
            esc(time),
            esc(details)
        );
    }
    o.push_str("</table>");
    c.page(&format!("Event {id}"), true, &o)
}

pub(super) async fn api_event(
    State(d): State<Dashboard>,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let id = match parse_event(&id) {
        Ok(id) => id,
        Err(e) => return bad(e),
    };
    let page = event_page(&d.view(), id);
    match page {
        Ok(Some(p)) => {
            let shown = &p.body[..p.body.len().min(BODY_SHOWN)];
            Json(json!({
                "event": p.line,
                "body": String::from_utf8_lossy(shown),
                "body_bytes": p.body.len(),
                "body_cut": p.body.len() > BODY_SHOWN,
                "retry": p.retry.map(|(reason, count, data)| json!({
                    "reason": reason, "retry_count": count, "data": render::data_text(&data)})),
                "messages": p.messages.iter().map(|(at, m)| json!({"at_ms": at, "message": m})).collect::<Vec<_>>(),
                "records": p.records.into_iter().map(|(_, j, _, _)| j).collect::<Vec<_>>(),
            }))
            .into_response()
        }
        Ok(None) => not_found(format!("{id}: the log holds no publish of it")),
        Err(e) => failed(e),
    }
}

/// The whole body, as a download (never rendered by the browser).
pub(super) async fn body(State(d): State<Dashboard>, UrlPath(id): UrlPath<String>) -> Response {
    let id = match parse_event(&id) {
        Ok(id) => id,
        Err(e) => return bad(e),
    };
    let body = d.view().body(id);
    match body {
        Ok(Some(b)) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"ev-{}.body\"", id.0),
                ),
            ],
            b,
        )
            .into_response(),
        Ok(None) => not_found(format!("{id}: the log holds no publish of it")),
        Err(e) => failed(e),
    }
}

#[derive(serde::Deserialize, Default)]
pub(super) struct JobsQuery {
    #[serde(default)]
    before: String,
}

fn job_json(j: &super::view::JobRow) -> Value {
    let (success, in_progress, failed, cancelled) = j.stats();
    json!({
        "id": j.id, "pushed_ms": j.published_ms, "first_event": j.first, "last_event": j.last,
        "success": success, "in_progress": in_progress, "failed": failed, "cancelled": cancelled,
        "cancel_written": j.cancelled, "finished_ms": j.done.map(|d| d.3),
    })
}

pub(super) async fn jobs(
    State(d): State<Dashboard>,
    original: OriginalUri,
    uri: Uri,
    Query(q): Query<JobsQuery>,
) -> Response {
    let c = Ctx::new(d, &original, &uri);
    let before = q.before.trim().parse::<JobId>().ok().map(|j| j.0);
    let view = c.d.view();
    let jobs = view.jobs(before, PAGE_ROWS);
    let mut o = String::from(
        "<table id=\"jobs\"><tr><th>job</th><th>pushed</th><th>success</th><th>in progress</th><th>failed</th><th>cancelled</th><th>finished</th></tr>",
    );
    for j in &jobs {
        let (success, in_progress, failed, cancelled) = j.stats();
        let _ = write!(
            o,
            "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td class=\"n\">{success}</td><td class=\"n\">{in_progress}</td><td class=\"n\">{failed}</td><td class=\"n\">{cancelled}</td><td>{}</td></tr>",
            c.href(&format!("/jobs/{}", j.id)),
            JobId(j.id),
            esc(&render::time(j.published_ms)),
            j.done.map_or(String::new(), |d| esc(&render::time(d.3))),
        );
    }
    o.push_str("</table>");
    if jobs.len() >= PAGE_ROWS
        && let Some(last) = jobs.last()
    {
        let _ = write!(
            o,
            "<p><a id=\"next\" href=\"{}\">Older jobs →</a></p>",
            c.href(&format!("/jobs?before={}", last.id))
        );
    }
    let _ = write!(
        o,
        "<p class=\"muted\">{} jobs in all.</p>",
        view.job_count()
    );
    drop(view);
    c.page("Jobs", true, &o)
}

pub(super) async fn api_jobs(State(d): State<Dashboard>, Query(q): Query<JobsQuery>) -> Response {
    let before = q.before.trim().parse::<JobId>().ok().map(|j| j.0);
    let view = d.view();
    let jobs: Vec<Value> = view
        .jobs(before, PAGE_ROWS)
        .into_iter()
        .map(job_json)
        .collect();
    Json(json!({"jobs": jobs, "total": view.job_count()})).into_response()
}

pub(super) async fn job(
    State(d): State<Dashboard>,
    original: OriginalUri,
    uri: Uri,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let c = Ctx::new(d, &original, &uri);
    let id = match id.parse::<JobId>() {
        Ok(j) => j,
        Err(e) => return bad(e.to_string()),
    };
    let view = c.d.view();
    let Some(j) = view.job(id) else {
        return not_found(format!("{id}: the log holds no event of it"));
    };
    let (success, in_progress, failed, cancelled) = j.stats();
    let mut o = format!(
        "<table id=\"job\"><tr><th>success</th><td class=\"n\">{success}</td></tr><tr><th>in progress</th><td class=\"n\">{in_progress}</td></tr><tr><th>failed</th><td class=\"n\">{failed}</td></tr><tr><th>cancelled</th><td class=\"n\">{cancelled}</td></tr><tr><th>pushed</th><td>{}</td></tr></table>",
        esc(&render::time(j.published_ms))
    );
    if c.d.live() && in_progress > 0 {
        o.push_str(&c.button(
            "cancel-job",
            &[("id", &id.0.to_string())],
            "Cancel this job",
        ));
    }
    let lines = view
        .query(&ViewQuery {
            job: Some(id),
            limit: PAGE_ROWS,
            ..ViewQuery::default()
        })
        .unwrap_or_default();
    let _ = write!(o, "<h2>Events</h2><table id=\"events\">{LINE_HEAD}");
    for l in &lines {
        o.push_str(&line_cells(&c, l));
    }
    o.push_str("</table>");
    if lines.len() >= PAGE_ROWS {
        let _ = write!(
            o,
            "<p><a href=\"{}\">All its events →</a></p>",
            c.href(&format!("/events?job={}", id.0))
        );
    }
    drop(view);
    c.page(&format!("Job {id}"), true, &o)
}

fn schedules_json(view: &View) -> Vec<Value> {
    view.schedules()
        .map(|(id, s)| {
            json!({"id": id, "name": s.name, "rule": s.rule, "catch_up": s.catch_up,
                   "next_due_ms": view.schedule_next_due_ms(s),
                   "occurrence": s.occurrence.map(|e| e.0)})
        })
        .collect()
}

pub(super) async fn schedules(
    State(d): State<Dashboard>,
    original: OriginalUri,
    uri: Uri,
) -> Response {
    let c = Ctx::new(d, &original, &uri);
    let view = c.d.view();
    let mut o = String::from(
        "<table id=\"schedules\"><tr><th>id</th><th>name</th><th>rule</th><th>catch-up</th><th>next due</th></tr>",
    );
    for (id, s) in view.schedules() {
        let next = view.schedule_next_due_ms(s);
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(id),
            esc(&s.name),
            esc(&s.rule),
            s.catch_up,
            match (next, s.occurrence) {
                (Some(ms), Some(occ)) => format!(
                    "<a href=\"{}\">{}</a>",
                    c.href(&format!("/events/{}", occ.0)),
                    esc(&render::time(ms))
                ),
                _ => "being published".into(),
            }
        );
    }
    o.push_str("</table>");
    drop(view);
    c.page("Schedules", true, &o)
}

pub(super) async fn api_schedules(State(d): State<Dashboard>) -> Response {
    Json(json!({"schedules": schedules_json(&d.view())})).into_response()
}

#[derive(serde::Deserialize, Default)]
pub(super) struct DeadQuery {
    #[serde(default)]
    skip: String,
    #[serde(default)]
    name: String,
}

struct DeadRow {
    line: EventLine,
    reason: &'static str,
    message: String,
    died_ms: i64,
}

fn dead_rows(view: &View, name: &str, skip: usize) -> Result<(Vec<DeadRow>, bool)> {
    let mut rows = Vec::new();
    let mut more = false;
    let mut seen = 0;
    for (id, pos) in view.dead_letters() {
        let Some(line) = view.line(id)? else {
            continue;
        };
        if !name.is_empty() && line.name != name {
            continue;
        }
        seen += 1;
        if seen <= skip {
            continue;
        }
        if rows.len() == PAGE_ROWS {
            more = true;
            break;
        }
        let mut death = None;
        view.read_at(pos.segment, pos.offset, |record| {
            death = crate::engine::death(record, &line.name);
        })?;
        let (reason, message, died_ms) =
            death.map_or(("?", String::new(), 0), |(r, m, at)| (r.name(), m, at));
        rows.push(DeadRow {
            line,
            reason,
            message,
            died_ms,
        });
    }
    Ok((rows, more))
}

pub(super) async fn dead(
    State(d): State<Dashboard>,
    original: OriginalUri,
    uri: Uri,
    Query(q): Query<DeadQuery>,
) -> Response {
    let c = Ctx::new(d, &original, &uri);
    let skip = q.skip.trim().parse::<usize>().unwrap_or(0);
    let view = c.d.view();
    let (rows, more) = match dead_rows(&view, &q.name, skip) {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let mut o = format!(
        "<p id=\"dead-count\">{} dead letters, newest first.</p>",
        view.dead_count()
    );
    if c.d.live() && view.dead_count() > 0 {
        o.push_str(&c.button("purge-dead", &[], "Purge every dead letter"));
    }
    o.push_str("<table id=\"dead\"><tr><th>id</th><th>name</th><th>reason</th><th>message</th><th>attempts</th><th>died</th><th></th></tr>");
    for r in &rows {
        let mut message = r.message.clone();
        if message.len() > 300 {
            let mut cut = 300;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let _ = write!(
            o,
            "<tr><td><a href=\"{}\">{}</a></td><td class=\"name\">{}</td><td>{}</td><td class=\"message\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            c.href(&format!("/events/{}", r.line.id.0)),
            r.line.id,
            esc(&r.line.name),
            r.reason,
            esc(&message),
            r.line.attempts,
            esc(&render::time(r.died_ms)),
            if c.d.live() {
                c.button("redrive", &[("id", &r.line.id.0.to_string())], "Redrive")
            } else {
                String::new()
            }
        );
    }
    o.push_str("</table>");
    if more {
        let _ = write!(
            o,
            "<p><a id=\"next\" href=\"{}\">Older →</a></p>",
            c.href(&format!(
                "/dead?name={}&skip={}",
                url(&q.name),
                skip + PAGE_ROWS
            ))
        );
    }
    drop(view);
    c.page("Dead letters", true, &o)
}

pub(super) async fn api_dead(State(d): State<Dashboard>, Query(q): Query<DeadQuery>) -> Response {
    let skip = q.skip.trim().parse::<usize>().unwrap_or(0);
    let view = d.view();
    match dead_rows(&view, &q.name, skip) {
        Ok((rows, more)) => Json(json!({
            "total": view.dead_count(),
            "more": more,
            "dead_letters": rows.iter().map(|r| json!({
                "id": r.line.id.0, "name": r.line.name, "reason": r.reason, "message": r.message,
                "attempts": r.line.attempts, "died_ms": r.died_ms})).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => failed(e),
    }
}

fn segments_json(view: &View) -> Vec<Value> {
    view.segments()
        .map(|s| {
            json!({"id": s.id, "file_bytes": s.file_bytes, "data_bytes": s.end, "records": s.records,
                   "format_version": s.version, "compacted": s.compacted,
                   "event_ids": (s.min_id <= s.max_id).then_some([s.min_id, s.max_id])})
        })
        .collect()
}

pub(super) async fn segments(
    State(d): State<Dashboard>,
    original: OriginalUri,
    uri: Uri,
) -> Response {
    let c = Ctx::new(d, &original, &uri);
    let view = c.d.view();
    let mut o = String::from(
        "<table id=\"segments\"><tr><th>segment</th><th>file bytes</th><th>data bytes</th><th>records</th><th>format</th><th>compacted</th><th>event ids</th></tr>",
    );
    for s in view.segments() {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&crate::log::segment_name(s.id)),
            s.file_bytes,
            s.end,
            s.records,
            s.version,
            if s.compacted { "yes" } else { "no" },
            if s.min_id <= s.max_id {
                format!("{}–{}", s.min_id, s.max_id)
            } else {
                String::new()
            }
        );
    }
    o.push_str("</table>");
    drop(view);
    c.page("Segments", true, &o)
}

pub(super) async fn api_segments(State(d): State<Dashboard>) -> Response {
    Json(json!({"segments": segments_json(&d.view())})).into_response()
}

/// `/metrics`: on a live engine's dashboard, the engine's own counts
/// ([`Engine::metrics_text`](crate::Engine::metrics_text)); then what the directory holds, as
/// gauges, in the Prometheus text format.
pub(super) async fn metrics(State(d): State<Dashboard>) -> Response {
    let mut o = d
        .engine()
        .map(crate::Engine::metrics_text)
        .unwrap_or_default();
    {
        let view = d.view();
        family(
            &mut o,
            "afterlog_dir_events",
            "gauge",
            "Events the data directory holds, by name and state.",
        );
        for n in view.names() {
            for s in EventState::ALL {
                let _ = writeln!(
                    o,
                    "afterlog_dir_events{{name=\"{}\",state=\"{}\"}} {}",
                    Escaped(&n.name),
                    s.name(),
                    n.by_state[s as usize]
                );
            }
        }
        family(
            &mut o,
            "afterlog_dir_dead_letters",
            "gauge",
            "Dead letters the data directory holds, by name.",
        );
        for n in view.names() {
            let _ = writeln!(
                o,
                "afterlog_dir_dead_letters{{name=\"{}\"}} {}",
                Escaped(&n.name),
                n.dead
            );
        }
        let disk = view.disk_bytes();
        let (records, _) = view.records();
        for (name, help, value) in [
            (
                "afterlog_dir_disk_bytes",
                "Bytes of the segment files.",
                disk,
            ),
            (
                "afterlog_dir_segments",
                "Segment files.",
                view.segments().count() as u64,
            ),
            ("afterlog_dir_records", "Records in the log.", records),
            (
                "afterlog_dir_schedules",
                "Recurring schedules.",
                view.schedules().count() as u64,
            ),
        ] {
            family(&mut o, name, "gauge", help);
            let _ = writeln!(o, "{name} {value}");
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        o,
    )
        .into_response()
}
