//! `afterlog`: inspect, replay, verify, compact, publish, pause and resume in a data
//! directory.
//!
//! Reads go through the library's read-only [`Reader`] (no lock, nothing written), so they
//! work beside a running engine. `compact`, `publish`, `pause` and `resume` open an
//! [`Engine`] and take the
//! directory's lock: while another engine holds it they refuse with exit code 4.
//! Exit codes are listed in `EXIT_CODES` and in docs/CLI.md.

use afterlog::render::{self, Table, bytes, escape, record_json, time};
use afterlog::{
    After, Engine, Error, EventId, EventState, JobId, KeyMode, KeyOutcome, Manifest, Options,
    Position, PublishOptions, Published, Reader, Record, RecordFilter, RecordKind, Recovery,
};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const EXIT_CODES: &str = "\
Exit codes:
  0  success (verify: the log is sound; a torn tail alone is sound)
  1  any other failure (an I/O error, say)
  2  bad usage or input: unknown option, bad time, bad name
  3  corruption: a record or header that cannot be what afterlog wrote
  4  locked: an engine holds the directory (compact, publish, pause, resume)
  5  not found: the directory or the event does not exist
  6  not an afterlog data directory";

#[derive(Parser)]
#[command(
    name = "afterlog",
    version,
    about = "Inspect, replay, verify, compact, publish, pause and resume in an afterlog data directory",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Segments, record counts, events by state, jobs, next due times, paused names, limits,
    /// keys held, recovery outcome
    #[command(
        after_help = "Example:\n  afterlog inspect data\n  afterlog inspect data --json | jq .events_by_state"
    )]
    Inspect {
        /// The data directory
        dir: PathBuf,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// One row per event, with its state
    #[command(
        after_help = "Examples:\n  afterlog events data --state scheduled --due-before '1 hour'\n  afterlog events data --name user.joined --limit 10 --json\n  afterlog events data --name invoice.send --key invoice-42"
    )]
    Events {
        /// The data directory
        dir: PathBuf,
        #[command(flatten)]
        filters: EventArgs,
        /// Print one JSON array of events
        #[arg(long)]
        json: bool,
    },
    /// One event's whole history and its body
    #[command(
        after_help = "Example:\n  afterlog event data ev-42\n  afterlog event data 42 --json"
    )]
    Event {
        /// The data directory
        dir: PathBuf,
        /// The event id (`ev-42` or `42`)
        id: String,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Every record in log order as JSON lines, streaming
    #[command(
        after_help = "A bound is a sequence number when it is a bare number, else a time: RFC 3339,\n\
                      the forms `after` accepts, or a duration (`2 hours`) meaning that long ago.\n\n\
                      Examples:\n  afterlog replay data --from '1 day' --kind publish\n  afterlog replay data --from 100 --until 200 --name user.joined"
    )]
    Replay {
        /// The data directory
        dir: PathBuf,
        /// First record: a sequence number or a time
        #[arg(long, value_name = "TIME|SEQ")]
        from: Option<String>,
        /// Last record: a sequence number or a time
        #[arg(long, value_name = "TIME|SEQ")]
        until: Option<String>,
        /// Only records about events with this name
        #[arg(long)]
        name: Option<String>,
        /// Only records of these kinds (publish, attempt, retry, ack, cancel, drop, publish-with, pause, schedule, purge-dead, job-done; repeat or comma-separate)
        #[arg(long, value_delimiter = ',')]
        kind: Vec<String>,
        /// Only records about events of this job (`job-3` or `3`)
        #[arg(long)]
        job: Option<String>,
        /// Output is always JSON lines; accepted for uniformity
        #[arg(long)]
        json: bool,
    },
    /// Check every record; exit 3 on corruption, naming file and offset
    #[command(
        after_help = "A torn tail at the end of the last segment (the remains of a write a crash\n\
                      interrupted) is reported but is not corruption: a writer cuts it on open.\n\n\
                      Examples:\n  afterlog verify data\n  afterlog verify data --salvage repaired"
    )]
    Verify {
        /// The data directory
        dir: PathBuf,
        /// Also write a repaired copy (valid records only) to this new directory
        #[arg(long, value_name = "OUT")]
        salvage: Option<PathBuf>,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Run one compaction pass (takes the directory lock)
    #[command(after_help = "Example:\n  afterlog compact data")]
    Compact {
        /// The data directory
        dir: PathBuf,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Publish one event (takes the directory lock)
    #[command(
        after_help = "Examples:\n  afterlog publish data user.joined '{\"email\":\"a@b.c\"}'\n  afterlog publish data reminder 'call back' --after '2 hours'\n  afterlog publish data invoice.send 42 --key invoice-42 --key-window '1 day' --priority 5"
    )]
    Publish {
        /// The data directory (must exist)
        dir: PathBuf,
        /// The event name
        name: String,
        /// The body, as given
        body: String,
        /// When it is due: `now` (default), ms, `N unit`, RFC 3339, epoch ms
        #[arg(long, value_name = "AFTER")]
        after: Option<String>,
        /// A key (1 to 255 bytes, per event name): see --key-mode
        #[arg(long)]
        key: Option<String>,
        /// What to do when a pending event holds the key: keep (write nothing), replace
        /// (cancel it and write this one) or replace-body (give it this body)
        #[arg(long, value_enum, value_name = "MODE", default_value_t = KeyModeArg::Keep, requires = "key")]
        key_mode: KeyModeArg,
        /// keep only: the key stays taken this long after the publish (`1 day`, ms)
        #[arg(long, value_name = "DURATION", requires = "key")]
        key_window: Option<String>,
        /// Higher first among due events (-128 to 127, default 0)
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i8>,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Pause an event name, durably: its events fall due and wait (takes the directory lock)
    #[command(after_help = "Example:\n  afterlog pause data email.send")]
    Pause {
        /// The data directory
        dir: PathBuf,
        /// The event name
        name: String,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Resume a paused event name (takes the directory lock)
    #[command(after_help = "Example:\n  afterlog resume data email.send")]
    Resume {
        /// The data directory
        dir: PathBuf,
        /// The event name
        name: String,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// List dead letters, newest first: events dropped after their retries or past retention,
    /// or acknowledged with no handler (read-only, no lock)
    #[command(
        after_help = "Examples:\n  afterlog dead data\n  afterlog dead data --name email.send --json"
    )]
    Dead {
        /// The data directory
        dir: PathBuf,
        /// Only dead letters of this event name
        #[arg(long)]
        name: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print one JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// List the recurring schedules: id, event name, rule, catch-up and next due time
    /// (read-only, no lock)
    #[command(
        after_help = "Examples:\n  afterlog schedules data\n  afterlog schedules data --json"
    )]
    Schedules {
        /// The data directory
        dir: PathBuf,
        /// Print one JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Publish a dead letter again as a new event, due now, and forget it (takes the lock)
    #[command(after_help = "Example:\n  afterlog redrive data ev-42")]
    Redrive {
        /// The data directory
        dir: PathBuf,
        /// The dead letter's event id (`ev-42` or `42`)
        id: String,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Forget every dead letter (takes the directory lock)
    #[command(
        name = "purge-dead",
        after_help = "Example:\n  afterlog purge-dead data"
    )]
    PurgeDead {
        /// The data directory
        dir: PathBuf,
        /// Print one JSON object
        #[arg(long)]
        json: bool,
    },
    /// A web dashboard of the directory: read-only, takes no lock, works beside a running
    /// engine and follows what it writes (pages, a JSON API under /api/, /metrics)
    #[command(
        after_help = "Example:\n  afterlog serve data\n  afterlog serve data --addr 0.0.0.0:7878 --token \"$(openssl rand -hex 16)\""
    )]
    Serve {
        /// The data directory
        dir: PathBuf,
        /// Where to listen; anything but a loopback address needs --token
        #[arg(long, default_value = "127.0.0.1:7878")]
        addr: std::net::SocketAddr,
        /// Require this token on every request (`Authorization: Bearer <token>`, or open
        /// /login?token=<token> once in a browser)
        #[arg(long, env = "AFTERLOG_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// A failure: the exit code and one line for stderr.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
    fn usage(message: impl Into<String>) -> Failure {
        Failure::new(2, message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match &e {
            Error::Corrupt { .. } | Error::ChecksumMismatch { .. } => 3,
            Error::UnsupportedVersion { .. } => 3,
            Error::Locked { .. } => 4,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 5,
            Error::NotADataDirectory { .. } => 6,
            Error::InvalidInput { .. } | Error::LimitExceeded { .. } => 2,
            _ => 1,
        };
        let message = match &e {
            Error::Locked { dir } => format!(
                "refusing: {} is in use by a running engine (its lock is held); stop it or use the read-only commands",
                dir.display()
            ),
            // The directory named on the command line is missing; anything else missing (a
            // segment that is a dangling link, say) is said as the error says it.
            Error::Io { source, path, .. }
                if source.kind() == std::io::ErrorKind::NotFound
                    && std::fs::symlink_metadata(path).is_err() =>
            {
                format!("{}: no such directory", path.display())
            }
            _ => e.to_string(),
        };
        Failure::new(code, message)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::new(1, format!("writing output: {e}"))
    }
}

type CliResult = Result<u8, Failure>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect { dir, json } => inspect(&dir, json),
        Command::Events { dir, filters, json } => events(&dir, filters, json),
        Command::Event { dir, id, json } => event(&dir, &id, json),
        Command::Replay {
            dir,
            from,
            until,
            name,
            kind,
            job,
            json: _,
        } => replay(&dir, from, until, name, kind, job),
        Command::Verify { dir, salvage, json } => verify(&dir, salvage.as_deref(), json),
        Command::Compact { dir, json } => compact(&dir, json),
        Command::Publish {
            dir,
            name,
            body,
            after,
            key,
            key_mode,
            key_window,
            priority,
            json,
        } => publish_options(key, key_mode.into(), key_window, priority)
            .and_then(|options| publish(&dir, &name, &body, after.as_deref(), options, json)),
        Command::Pause { dir, name, json } => set_paused(&dir, &name, true, json),
        Command::Resume { dir, name, json } => set_paused(&dir, &name, false, json),
        Command::Dead {
            dir,
            name,
            limit,
            json,
        } => dead(&dir, name.as_deref(), limit, json),
        Command::Redrive { dir, id, json } => redrive(&dir, &id, json),
        Command::Schedules { dir, json } => schedules(&dir, json),
        Command::PurgeDead { dir, json } => purge_dead(&dir, json),
        Command::Serve { dir, addr, token } => serve(&dir, addr, token),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        // A reader that closed the pipe (`| head`) has what it wanted.
        Err(f) if f.message.contains("Broken pipe") => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("afterlog: {}", escape(&f.message));
            ExitCode::from(f.code)
        }
    }
}

/// A path for people, escaped (a file name may hold anything).
fn shown(path: &Path) -> String {
    escape(&path.display().to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
fn progress(total: u64, what: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what);
    bar
}

/// A time point. Absolute forms: RFC 3339, `YYYY-MM-DD`, and whatever `After::parse` reads
/// as a date. A duration (`2 hours`, `500 ms`) is taken from now, into the past or the
/// future as `direction` says (-1 or 1).
fn parse_time(text: &str, now: i64, direction: i64) -> Result<i64, Failure> {
    let bad = |why: String| Failure::usage(format!("bad time {text:?}: {why}"));
    let t = text.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Ok(d) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(d.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
        && let Some(dt) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(dt.and_utc().timestamp_millis());
    }
    let after = After::parse(t).map_err(|e| bad(e.to_string()))?;
    // A duration resolves at any `now`; a date only near its own time.
    match after.resolve(0) {
        Ok(delta) => Ok(now.saturating_add(direction.saturating_mul(delta))),
        Err(_) => {
            // An absolute time After reads (epoch ms, or a date form chrono did not): it
            // resolves at a `now` just before it. Search for it from the far past.
            let far = after
                .resolve(now)
                .or_else(|_| After::parse(t).and_then(|a| a.resolve(i64::MIN / 4)));
            far.map_err(|e| bad(e.to_string()))
        }
    }
}

/// A bound of `replay`: a bare number is a sequence number, anything else a time.
enum Bound {
    Seq(u64),
    Time(i64),
}

fn parse_bound(text: &str, now: i64) -> Result<Bound, Failure> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map(Bound::Seq)
            .map_err(|_| Failure::usage(format!("bad sequence number {text:?}")));
    }
    parse_time(t, now, -1).map(Bound::Time)
}

fn parse_id(text: &str, prefix: &str, what: &str) -> Result<u64, Failure> {
    let t = text.trim();
    let digits = t.strip_prefix(prefix).unwrap_or(t);
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(Failure::usage(format!(
            "bad {what} {text:?}: expected {prefix}N or N, N > 0"
        ))),
    }
}

fn out() -> std::io::BufWriter<std::io::StdoutLock<'static>> {
    std::io::BufWriter::new(std::io::stdout().lock())
}

fn print_json(value: &serde_json::Value) -> CliResult {
    let mut o = out();
    serde_json::to_writer_pretty(&mut o, value).map_err(|e| Failure::new(1, e.to_string()))?;
    writeln!(o)?;
    o.flush()?;
    Ok(0)
}

/// Each item as one JSON object per line, with the fields `extend` adds or changes.
fn print_json_lines<T: serde::Serialize>(
    items: &[T],
    extend: impl Fn(&T, &mut serde_json::Value),
) -> CliResult {
    let mut o = out();
    for item in items {
        let mut v = serde_json::to_value(item).map_err(|e| Failure::new(1, e.to_string()))?;
        extend(item, &mut v);
        writeln!(o, "{v}")?;
    }
    o.flush()?;
    Ok(0)
}

fn recovery_line(reader: &Reader, r: &Recovery) -> String {
    match r.torn_at {
        None => "clean (no torn tail)".into(),
        Some((segment, offset)) => format!(
            "torn tail of {} bytes at {} offset {offset} (a crash interrupted a write; a writer cuts it on open)",
            r.torn_bytes,
            shown(&reader.segment_path(segment))
        ),
    }
}

fn inspect(dir: &Path, json: bool) -> CliResult {
    let reader = Reader::open(dir)?;
    let manifest = reader.manifest()?;
    let summary = reader.overview(5)?;
    let held: u64 = summary.events_by_state.iter().map(|(_, n)| n).sum();
    let mut next: Vec<&afterlog::EventRow> = summary
        .events
        .iter()
        .filter(|e| e.state == EventState::Scheduled)
        .collect();
    next.sort_by_key(|e| (e.next_due_ms, e.id));
    next.truncate(5);
    if json {
        let kinds: serde_json::Map<_, _> = summary
            .records_by_kind
            .iter()
            .map(|(k, n)| (k.to_string(), json!(n)))
            .collect();
        let states: serde_json::Map<_, _> = summary
            .events_by_state
            .iter()
            .map(|(k, n)| (k.to_string(), json!(n)))
            .collect();
        let next: Vec<_> = next
            .iter()
            .map(|e| json!({"id": e.id, "name": e.name, "due_ms": e.next_due_ms, "due": time(e.next_due_ms)}))
            .collect();
        return print_json(&json!({
            "dir": reader.dir(),
            "disk_bytes": summary.disk_bytes,
            "segments": summary.segments,
            "records_by_kind": kinds,
            "events_by_state": states,
            "events": held,
            "jobs": summary.jobs,
            "rejected_records": summary.rejected,
            "next_due": next,
            "recovery": serde_json::to_value(&summary).map_err(|e| Failure::new(1, e.to_string()))?["recovery"],
            "directory_id": manifest.as_ref().map(|m| format!("{:032x}", m.directory_id)),
            "format_version": if manifest.is_some() { 2 } else { 1 },
            "retention_ms": manifest.as_ref().and_then(|m| m.retention_ms),
            "segment_bytes": manifest.as_ref().and_then(|m| m.segment_bytes),
            "paused": summary.paused,
            "limits": manifest.as_ref().and_then(|m| m.limits.as_ref()),
            "keys": summary.keys,
            "dead_letters": summary.dead_letters,
            "schedules": summary.schedules,
        }));
    }
    let mut o = out();
    writeln!(o, "directory   {}", shown(reader.dir()))?;
    writeln!(o, "disk bytes  {}", bytes(summary.disk_bytes))?;
    writeln!(o, "format      {}", format_line(manifest.as_ref()))?;
    writeln!(o, "retention   {}", retention_line(manifest.as_ref()))?;
    writeln!(
        o,
        "recovery    {}",
        recovery_line(&reader, &summary.recovery)
    )?;
    writeln!(o)?;
    let mut t = Table::new(&[
        ("SEGMENT", true),
        ("FILE BYTES", true),
        ("DATA BYTES", true),
        ("SEQS", false),
        ("RECORDS", true),
        ("LIVE", true),
        ("COMPACTED", false),
    ]);
    for s in &summary.segments {
        let seqs = match (s.first_seq, s.last_seq) {
            (Some(a), Some(b)) => format!("{a}-{b}"),
            _ => "-".into(),
        };
        t.row(vec![
            s.id.to_string(),
            s.file_bytes.to_string(),
            s.data_bytes.to_string(),
            seqs,
            s.records.to_string(),
            format!("{:.1}%", s.live_share * 100.0),
            if s.compacted { "yes" } else { "no" }.into(),
        ]);
    }
    write!(o, "{}", t.render())?;
    writeln!(o)?;
    let mut t = Table::new(&[("KIND", false), ("RECORDS", true)]);
    for (k, n) in &summary.records_by_kind {
        t.row(vec![k.to_string(), n.to_string()]);
    }
    write!(o, "{}", t.render())?;
    writeln!(o)?;
    let mut t = Table::new(&[("STATE", false), ("EVENTS", true)]);
    for (s, n) in &summary.events_by_state {
        t.row(vec![s.to_string(), n.to_string()]);
    }
    write!(o, "{}", t.render())?;
    writeln!(o)?;
    writeln!(o, "jobs        {}", summary.jobs)?;
    let paused = if summary.paused.is_empty() {
        "none".to_string()
    } else {
        summary.paused.join(", ")
    };
    writeln!(o, "paused      {}", escape(&paused))?;
    writeln!(o, "dead        {} letter(s)", summary.dead_letters)?;
    writeln!(o, "schedules   {}", summary.schedules)?;
    writeln!(o, "limits      {}", escape(&limits_line(manifest.as_ref())))?;
    let keys: Vec<String> = summary
        .keys
        .iter()
        .map(|k| match k.windows {
            0 => format!("{}: {}", k.name, k.pending),
            w => format!(
                "{}: {} by pending events, {w} by the window of a finished event",
                k.name, k.pending
            ),
        })
        .collect();
    let keys = if keys.is_empty() {
        "none".to_string()
    } else {
        keys.join(", ")
    };
    writeln!(o, "keys held   {}", escape(&keys))?;
    if summary.rejected > 0 {
        writeln!(
            o,
            "rejected    {} record(s) about events whose publish was compacted away",
            summary.rejected
        )?;
    }
    writeln!(o)?;
    writeln!(o, "next due (first 5)")?;
    if next.is_empty() {
        writeln!(o, "  none scheduled")?;
    } else {
        let mut t = Table::new(&[("ID", false), ("NAME", false), ("DUE", false)]);
        for e in &next {
            t.row(vec![e.id.to_string(), e.name.clone(), time(e.next_due_ms)]);
        }
        write!(o, "{}", t.render())?;
    }
    o.flush()?;
    Ok(0)
}

/// `--key-mode` of `afterlog publish`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum KeyModeArg {
    Keep,
    Replace,
    ReplaceBody,
}

impl From<KeyModeArg> for KeyMode {
    fn from(mode: KeyModeArg) -> KeyMode {
        match mode {
            KeyModeArg::Keep => KeyMode::Keep,
            KeyModeArg::Replace => KeyMode::Replace,
            KeyModeArg::ReplaceBody => KeyMode::ReplaceBody,
        }
    }
}

/// The filters of `afterlog events`, as given.
#[derive(clap::Args)]
struct EventArgs {
    /// Only events in this state: scheduled, running, succeeded, failed, cancelled, expired
    #[arg(long)]
    state: Option<String>,
    /// Only events with this name
    #[arg(long)]
    name: Option<String>,
    /// Only events of this job (`job-3` or `3`)
    #[arg(long)]
    job: Option<String>,
    /// Only events next due before this time (`5 minutes` from now, RFC 3339, epoch ms)
    #[arg(long, value_name = "TIME")]
    due_before: Option<String>,
    /// Only events published with this key (of any name, unless --name is given)
    #[arg(long)]
    key: Option<String>,
    /// At most this many rows
    #[arg(long)]
    limit: Option<usize>,
}

fn events(dir: &Path, args: EventArgs, json: bool) -> CliResult {
    let EventArgs {
        state,
        name,
        job,
        due_before,
        key,
        limit,
    } = args;
    if let Some(k) = &key {
        afterlog::record::validate_key(k.as_bytes())
            .map_err(|e| Failure::usage(format!("bad --key: {e}")))?;
    }
    let state = state
        .map(|s| {
            EventState::ALL
                .into_iter()
                .find(|k| k.name() == s)
                .ok_or_else(|| {
                    Failure::usage(format!(
                        "bad state {s:?}: expected scheduled, running, succeeded, failed, \
                         cancelled or expired"
                    ))
                })
        })
        .transpose()?;
    let job = job.map(|j| parse_id(&j, "job-", "job id")).transpose()?;
    let due_before_ms = due_before
        .map(|t| parse_time(&t, now_ms(), 1))
        .transpose()?;
    let reader = Reader::open(dir)?;
    let filter = afterlog::EventFilter {
        state,
        name,
        job: job.map(JobId),
        due_before_ms,
        key: key.map(String::into_bytes),
        limit,
    };
    if json {
        // Streamed, one row at a time: a log of millions of events prints in the memory of
        // its index.
        let mut o = out();
        let mut first = true;
        let mut write_err = None;
        reader.visit_events(&filter, |row| {
            if write_err.is_none() {
                // Through a `Value`, so keys come sorted as in every other JSON output.
                let text = serde_json::to_string_pretty(&json!(row)).expect("a row serializes");
                let sep = if std::mem::take(&mut first) {
                    "[\n"
                } else {
                    ",\n"
                };
                write_err = write!(o, "{sep}  {}", text.replace('\n', "\n  ")).err();
            }
            Ok(())
        })?;
        if let Some(e) = write_err {
            return Err(e.into());
        }
        writeln!(o, "{}", if first { "[]" } else { "\n]" })?;
        o.flush()?;
        return Ok(0);
    }
    let rows = reader.events_where(&filter)?;
    // Priority and key columns only when some row has one.
    let priorities = rows.iter().any(|e| e.priority != 0);
    let keys = rows.iter().any(|e| e.key.is_some());
    let mut columns = vec![
        ("ID", false),
        ("NAME", false),
        ("STATE", false),
        ("ATTEMPTS", true),
        ("JOB", false),
        ("FIRST DUE", false),
        ("NEXT DUE", false),
    ];
    if priorities {
        columns.push(("PRIORITY", true));
    }
    if keys {
        columns.push(("KEY", false));
    }
    columns.push(("LAST FAILURE", false));
    let mut t = Table::new(&columns);
    for e in &rows {
        let failure = match (&e.last_reason, &e.last_message) {
            (Some(r), Some(m)) => format!("{r}: {m}"),
            (Some(r), None) => r.clone(),
            (None, Some(m)) => m.clone(),
            (None, None) => String::new(),
        };
        let mut row = vec![
            e.id.to_string(),
            e.name.clone(),
            e.state.name().into(),
            e.attempts.to_string(),
            e.job.map_or("-".into(), |j| j.to_string()),
            time(e.first_due_ms),
            time(e.next_due_ms),
        ];
        if priorities {
            row.push(e.priority.to_string());
        }
        if keys {
            row.push(e.key.clone().unwrap_or_else(|| "-".into()));
        }
        row.push(failure);
        t.row(row);
    }
    let mut o = out();
    write!(o, "{}", t.render())?;
    writeln!(o, "{} event(s)", rows.len())?;
    o.flush()?;
    Ok(0)
}

fn event(dir: &Path, id: &str, json: bool) -> CliResult {
    let id = EventId(parse_id(id, "ev-", "event id")?);
    let reader = Reader::open(dir)?;
    let Some(history) = reader.event_history(id)? else {
        return Err(Failure::new(
            5,
            format!(
                "{id} not found in {} (never published, or removed by compaction)",
                dir.display()
            ),
        ));
    };
    let decoded: Vec<(Position, Record<'_>)> = history
        .records
        .iter()
        .filter_map(|(pos, kind, payload)| Record::decode(*kind, payload).ok().map(|r| (*pos, r)))
        .collect();
    if json {
        let mut body = serde_json::Map::new();
        render::body_fields(&history.body, &mut body);
        let mut value = json!({
            "event": history.row,
            "records": decoded.iter().map(|(p, r)| record_json(*p, r)).collect::<Vec<_>>(),
        });
        if let Some(obj) = value.as_object_mut() {
            obj.extend(body);
        }
        return print_json(&value);
    }
    let e = &history.row;
    let mut o = out();
    writeln!(o, "event      {id}")?;
    writeln!(o, "name       {}", escape(&e.name))?;
    writeln!(o, "state      {}", e.state.name())?;
    writeln!(o, "attempts   {}", e.attempts)?;
    writeln!(
        o,
        "job        {}",
        e.job.map_or("-".into(), |j| j.to_string())
    )?;
    if let Some(key) = &e.key {
        writeln!(o, "key        {}", escape(key))?;
    }
    if e.priority != 0 {
        writeln!(o, "priority   {}", e.priority)?;
    }
    writeln!(o, "published  {}", time(e.published_ms))?;
    writeln!(o, "first due  {}", time(e.first_due_ms))?;
    writeln!(o, "next due   {}", time(e.next_due_ms))?;
    writeln!(o)?;
    let mut t = Table::new(&[
        ("SEQ", true),
        ("SEGMENT", true),
        ("OFFSET", true),
        ("KIND", false),
        ("TIME", false),
        ("WHAT", false),
    ]);
    for (pos, r) in &decoded {
        t.row(vec![
            pos.seq.to_string(),
            pos.segment.to_string(),
            pos.offset.to_string(),
            r.kind().name().into(),
            time(afterlog::record_time_ms(r)),
            render::record_details(r),
        ]);
    }
    write!(o, "{}", t.render())?;
    writeln!(o)?;
    let label = if std::str::from_utf8(&history.body).is_ok() {
        "UTF-8"
    } else {
        "hex"
    };
    writeln!(o, "body ({} bytes, {label}):", history.body.len())?;
    writeln!(o, "{}", render::body_text(&history.body))?;
    o.flush()?;
    Ok(0)
}

fn replay(
    dir: &Path,
    from: Option<String>,
    until: Option<String>,
    name: Option<String>,
    kinds: Vec<String>,
    job: Option<String>,
) -> CliResult {
    let now = now_ms();
    let mut filter = RecordFilter {
        name,
        job: job
            .map(|j| parse_id(&j, "job-", "job id").map(JobId))
            .transpose()?,
        ..RecordFilter::default()
    };
    for k in kinds {
        let kind = RecordKind::ALL
            .into_iter()
            .find(|x| x.name() == k)
            .ok_or_else(|| {
                Failure::usage(format!(
                    "bad kind {k:?}: expected publish, attempt, retry, ack, cancel, drop, \
                     publish-with or pause"
                ))
            })?;
        filter.kinds.push(kind);
    }
    match from.map(|t| parse_bound(&t, now)).transpose()? {
        Some(Bound::Seq(s)) => filter.seq_from = Some(s),
        Some(Bound::Time(t)) => filter.time_from_ms = Some(t),
        None => {}
    }
    match until.map(|t| parse_bound(&t, now)).transpose()? {
        Some(Bound::Seq(s)) => filter.seq_until = Some(s),
        Some(Bound::Time(t)) => filter.time_until_ms = Some(t),
        None => {}
    }
    let reader = Reader::open(dir)?;
    let bar = progress(reader.segment_file_bytes(), "replay");
    let mut o = out();
    let mut write_error = None;
    let mut n = 0u64;
    let scanned = reader.records(&filter, |pos, record| {
        n += 1;
        if n.is_multiple_of(1024) {
            bar.set_position(reader.progress_bytes(pos));
        }
        let line = record_json(pos, record);
        let written = serde_json::to_writer(&mut o, &line)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(o));
        if let Err(e) = written {
            write_error = Some(e);
            // Stop the scan: nobody reads the rest.
            return Err(Error::Closed);
        }
        Ok(())
    });
    bar.finish_and_clear();
    if let Some(e) = write_error {
        return Err(e.into());
    }
    scanned?;
    o.flush()?;
    Ok(0)
}

fn verify(dir: &Path, salvage: Option<&Path>, json: bool) -> CliResult {
    let reader = Reader::open(dir)?;
    let bar = progress(reader.segment_file_bytes(), "verify");
    let report = reader.verify(&mut |done| bar.set_position(done))?;
    bar.finish_and_clear();
    let salvaged = match salvage {
        Some(out_dir) => {
            let bar = progress(reader.segment_file_bytes(), "salvage");
            let s = reader.salvage(out_dir, &mut |done| bar.set_position(done))?;
            bar.finish_and_clear();
            Some(s)
        }
        None => None,
    };
    let code = if report.problems.is_empty() { 0 } else { 3 };
    if json {
        let mut value =
            serde_json::to_value(&report).map_err(|e| Failure::new(1, e.to_string()))?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("sound".into(), json!(code == 0));
            if let (Some(s), Some(out_dir)) = (&salvaged, salvage) {
                obj.insert(
                    "salvage".into(),
                    json!({"dir": out_dir, "records": s.records, "damaged_segments": s.damaged_segments}),
                );
            }
        }
        print_json(&value)?;
        return Ok(code);
    }
    let mut o = out();
    for p in &report.problems {
        writeln!(
            o,
            "CORRUPT {} at offset {}: {}",
            shown(&p.file),
            p.offset,
            escape(&p.problem)
        )?;
    }
    if let Some((file, offset)) = &report.torn_at {
        writeln!(
            o,
            "torn tail: {} bytes at {} offset {offset} (a crash interrupted the last write; not corruption, a writer cuts it on open)",
            report.torn_bytes,
            shown(file)
        )?;
    }
    let verdict = if code == 0 {
        "sound".to_string()
    } else {
        format!("CORRUPT ({} problem(s))", report.problems.len())
    };
    writeln!(
        o,
        "{} segment(s), {} valid record(s): {verdict}",
        report.segments, report.records
    )?;
    if let (Some(s), Some(out_dir)) = (&salvaged, salvage) {
        writeln!(
            o,
            "salvaged {} record(s) to {} ({} damaged segment(s) cut short); {} is unchanged",
            s.records,
            shown(out_dir),
            s.damaged_segments,
            shown(dir)
        )?;
    }
    o.flush()?;
    if code != 0 {
        eprintln!(
            "afterlog: {} is corrupt: {} problem(s), first in {} at offset {}",
            shown(dir),
            report.problems.len(),
            shown(&report.problems[0].file),
            report.problems[0].offset
        );
    }
    Ok(code)
}

/// The format line of `inspect`.
fn format_line(manifest: Option<&Manifest>) -> String {
    match manifest {
        Some(m) => format!(
            "2 (directory {:032x}, segments up to {})",
            m.directory_id,
            m.segment_bytes.map_or("unknown size".into(), bytes)
        ),
        None => {
            "1 (no MANIFEST: written by an older afterlog, upgraded when an engine opens it)".into()
        }
    }
}

/// What the directory says its retention is, in words.
fn retention_line(manifest: Option<&Manifest>) -> String {
    match manifest.and_then(|m| m.retention_ms) {
        Some(ms) => format!("{} (recorded by the engine)", duration_words(ms)),
        None => "not recorded: `afterlog compact` expires nothing".into(),
    }
}

/// The flow limits the engine recorded, in words.
fn limits_line(manifest: Option<&Manifest>) -> String {
    let Some(limits) = manifest.and_then(|m| m.limits.as_ref()) else {
        return "not recorded (no engine of this version has opened the directory)".into();
    };
    if limits.is_empty() {
        return "none (recorded by the engine)".into();
    }
    let each: Vec<String> = limits
        .iter()
        .map(|l| {
            let mut parts = Vec::new();
            if let Some(c) = l.concurrency {
                parts.push(format!("concurrency {c}"));
            }
            if let Some((n, per_ms)) = l.rate {
                parts.push(format!("rate {n} per {}", duration_words(per_ms)));
            }
            format!("{}: {}", l.name, parts.join(", "))
        })
        .collect();
    format!("{} (recorded by the engine)", each.join("; "))
}

/// `ms` in the largest whole unit that fits (days, hours, minutes, seconds, ms).
fn duration_words(ms: u64) -> String {
    for (unit, len) in [
        ("day", 86_400_000),
        ("hour", 3_600_000),
        ("minute", 60_000),
        ("second", 1000),
    ] {
        if ms >= len && ms.is_multiple_of(len) {
            let n = ms / len;
            return format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
        }
    }
    format!("{ms} ms")
}

/// Opens an engine for an offline write: the directory must exist and be a data directory
/// (an empty one is fine); no background compaction, no delivery, and no spare segment
/// prepared ahead (a one-off write needs none, and a compaction run to free space on a full
/// disk must not first claim a segment's worth of it). It runs with the settings the
/// directory recorded: its segment size, and its retention, or (when none is recorded, as in
/// a format-1 directory) no expiry at all: the CLI never expires an event it cannot know is
/// past the application's retention. It records nothing of its own.
fn open_engine(dir: &Path) -> Result<(Engine, Option<u64>), Failure> {
    let manifest = Reader::open(dir)?.manifest()?;
    let retention_ms = manifest.as_ref().and_then(|m| m.retention_ms);
    let mut options = Options::default()
        .compaction_interval(None)
        .prepare_spare(false)
        .record_retention(false)
        .retention(retention_ms.map_or(Duration::MAX, Duration::from_millis));
    if let Some(segment_bytes) = manifest.as_ref().and_then(|m| m.segment_bytes) {
        options = options.segment_bytes(segment_bytes);
    }
    Ok((Engine::open_with(dir, options)?, retention_ms))
}

fn compact(dir: &Path, json: bool) -> CliResult {
    let before = Reader::open(dir)?.disk_bytes();
    let (engine, retention_ms) = open_engine(dir)?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.set_message("compacting");
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        bar
    } else {
        ProgressBar::hidden()
    };
    let stats = engine.compact_now();
    bar.finish_and_clear();
    let stats = stats?;
    engine.close()?;
    let after = Reader::open(dir)?.disk_bytes();
    if json {
        return print_json(&json!({
            "stats": stats,
            "disk_bytes_before": before,
            "disk_bytes_after": after,
            "retention_ms": retention_ms,
        }));
    }
    match retention_ms {
        Some(ms) => eprintln!(
            "afterlog: retention {} (recorded by the engine)",
            duration_words(ms)
        ),
        None => eprintln!(
            "afterlog: the directory records no retention: nothing expired (open it with the \
             application's engine once to record it)"
        ),
    }
    let mut t = Table::new(&[("", false), ("", true)]);
    let rows = [
        ("segments rewritten", stats.segments_rewritten),
        ("segments removed", stats.segments_removed),
        ("data bytes before", stats.bytes_before),
        ("data bytes after", stats.bytes_after),
        ("records dropped", stats.records_dropped),
        ("events released", stats.events_released),
        ("events expired", stats.events_expired),
        ("disk bytes before", before),
        ("disk bytes after", after),
    ];
    for (k, v) in rows {
        t.row(vec![k.into(), v.to_string()]);
    }
    let table = t.render();
    let mut o = out();
    // Skip the empty header row.
    for line in table.lines().skip(1) {
        writeln!(o, "{line}")?;
    }
    o.flush()?;
    Ok(0)
}

/// The options of `afterlog publish`, checked before anything is opened.
fn publish_options(
    key: Option<String>,
    mode: KeyMode,
    window: Option<String>,
    priority: Option<i8>,
) -> Result<PublishOptions, Failure> {
    let mut options = PublishOptions::default().priority(priority.unwrap_or(0));
    let Some(key) = key else {
        return Ok(options);
    };
    afterlog::record::validate_key(key.as_bytes())
        .map_err(|e| Failure::usage(format!("bad --key: {e}")))?;
    options = options.key(key, mode);
    if let Some(text) = window {
        if mode != KeyMode::Keep {
            return Err(Failure::usage("--key-window needs --key-mode keep"));
        }
        let bad = |why: String| Failure::usage(format!("bad --key-window {text:?}: {why}"));
        let ms = After::parse(&text)
            .and_then(|a| a.resolve(0))
            .map_err(|e| bad(e.to_string()))?;
        if ms <= 0 {
            return Err(bad("a window is a duration above zero".into()));
        }
        options = options.key_window(Duration::from_millis(ms as u64));
    }
    Ok(options)
}

fn publish(
    dir: &Path,
    name: &str,
    body: &str,
    after: Option<&str>,
    options: PublishOptions,
    json: bool,
) -> CliResult {
    let after = match after {
        None => After::NOW,
        Some(text) => {
            After::parse(text).map_err(|e| Failure::usage(format!("bad --after {text:?}: {e}")))?
        }
    };
    // Check the time before taking the lock, so a bad one writes nothing.
    let now = now_ms();
    after
        .resolve(now)
        .map_err(|e| Failure::usage(format!("bad --after: {e}")))?;
    let (engine, _) = open_engine(dir)?;
    let published_ms = now_ms();
    let due_ms = after
        .resolve(published_ms)
        .map_err(|e| Failure::usage(format!("bad --after: {e}")))?;
    let rule = if after.is_now() {
        After::NOW
    } else {
        After::epoch_ms(due_ms)
    };
    let published = engine.publish_with(name, body.as_bytes(), rule, options);
    let closed = engine.close();
    let Published { id, outcome } = published?;
    closed?;
    let (what, replaced) = match outcome {
        KeyOutcome::New => ("new", None),
        KeyOutcome::Kept => ("kept", None),
        KeyOutcome::Replaced(previous) => ("replaced", Some(previous)),
        KeyOutcome::Updated => ("updated", None),
    };
    if json {
        return print_json(&json!({
            "id": id.0,
            "name": name,
            "due_ms": due_ms,
            "due": time(due_ms),
            "outcome": what,
            "replaced": replaced.map(|r| r.0),
        }));
    }
    let mut o = out();
    match outcome {
        KeyOutcome::New => writeln!(o, "published {id} ({}), due {}", escape(name), time(due_ms))?,
        KeyOutcome::Kept => writeln!(
            o,
            "kept: {id} ({}) holds the key; nothing written",
            escape(name)
        )?,
        KeyOutcome::Replaced(previous) => writeln!(
            o,
            "published {id} ({}), due {}, replacing {previous} (cancelled)",
            escape(name),
            time(due_ms)
        )?,
        KeyOutcome::Updated => writeln!(
            o,
            "updated the body of {id} ({}), which holds the key; its due time is kept",
            escape(name)
        )?,
    }
    o.flush()?;
    Ok(0)
}

fn set_paused(dir: &Path, name: &str, paused: bool, json: bool) -> CliResult {
    let (engine, _) = open_engine(dir)?;
    let was = engine.paused().iter().any(|n| n == name);
    let result = if paused {
        engine.pause(name)
    } else {
        engine.resume(name)
    };
    // A bad name writes nothing; the engine closes either way.
    let closed = engine.close();
    result?;
    closed?;
    let changed = was != paused;
    if json {
        return print_json(&json!({"name": name, "paused": paused, "changed": changed}));
    }
    let mut o = out();
    let (verb, state) = if paused {
        ("paused", "paused")
    } else {
        ("resumed", "not paused")
    };
    if changed {
        writeln!(o, "{verb} {}", escape(name))?;
    } else {
        writeln!(o, "{} was already {state}: nothing written", escape(name))?;
    }
    o.flush()?;
    Ok(0)
}

fn dead(dir: &Path, name: Option<&str>, limit: usize, json: bool) -> CliResult {
    // The name filter applies before the limit: the newest `limit` of that name.
    let letters = Reader::open(dir)?.dead_letters_named(name, limit)?;
    if json {
        return print_json_lines(&letters, |d, v| {
            v["id"] = json!(d.id.to_string());
            v["body"] = json!(String::from_utf8_lossy(&d.body));
            v["dropped"] = json!(time(d.dropped_ms));
        });
    }
    let mut o = out();
    let mut t = Table::new(&[
        ("ID", false),
        ("NAME", false),
        ("DIED", false),
        ("REASON", false),
        ("ATTEMPTS", true),
        ("MESSAGE", false),
    ]);
    for d in &letters {
        t.row(vec![
            d.id.to_string(),
            escape(&d.name),
            time(d.dropped_ms),
            d.reason.to_string(),
            d.attempts.to_string(),
            escape(&d.message),
        ]);
    }
    write!(o, "{}", t.render())?;
    writeln!(o, "{} dead letter(s)", letters.len())?;
    o.flush()?;
    Ok(0)
}

fn schedules(dir: &Path, json: bool) -> CliResult {
    let list = Reader::open(dir)?.schedules()?;
    if json {
        return print_json_lines(&list, |s, v| v["next_due"] = json!(s.next_due_ms.map(time)));
    }
    let mut o = out();
    let mut t = Table::new(&[
        ("ID", false),
        ("NAME", false),
        ("RULE", false),
        ("CATCH-UP", false),
        ("NEXT DUE", false),
    ]);
    for s in &list {
        t.row(vec![
            escape(&s.id),
            escape(&s.name),
            escape(&s.rule),
            format!("{:?}", s.catch_up).to_lowercase(),
            s.next_due_ms.map_or_else(|| "-".to_string(), time),
        ]);
    }
    write!(o, "{}", t.render())?;
    writeln!(o, "{} schedule(s)", list.len())?;
    o.flush()?;
    Ok(0)
}

fn redrive(dir: &Path, id: &str, json: bool) -> CliResult {
    let id = EventId(parse_id(id, "ev-", "event id")?);
    let (engine, _) = open_engine(dir)?;
    let result = engine.redrive(id);
    // A refused redrive writes nothing; the engine closes either way.
    let closed = engine.close();
    let new = result?;
    closed?;
    if json {
        return print_json(&json!({"dead_letter": id.to_string(), "event": new.to_string()}));
    }
    let mut o = out();
    writeln!(o, "redrove {id} as {new}, due now")?;
    o.flush()?;
    Ok(0)
}

fn purge_dead(dir: &Path, json: bool) -> CliResult {
    let (engine, _) = open_engine(dir)?;
    let result = engine.purge_dead();
    let closed = engine.close();
    let purged = result?;
    closed?;
    if json {
        return print_json(&json!({"purged": purged}));
    }
    let mut o = out();
    match purged {
        0 => writeln!(o, "no dead letters: nothing written")?,
        n => writeln!(o, "purged {n} dead letter(s)")?,
    }
    o.flush()?;
    Ok(0)
}

fn serve(dir: &Path, addr: std::net::SocketAddr, token: Option<String>) -> CliResult {
    let token = token.filter(|t| !t.is_empty());
    if afterlog::web::needs_token(&addr) && token.is_none() {
        return Err(Failure::usage(format!(
            "refusing to serve {addr} without --token: only a loopback address may go without one"
        )));
    }
    let mut dashboard = afterlog::web::Dashboard::open(dir)?;
    if let Some(token) = token {
        dashboard = dashboard.token(token);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::new(1, format!("starting the server: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Failure::new(1, format!("listening on {addr}: {e}")))?;
        let bound = listener.local_addr().unwrap_or(addr);
        {
            let mut o = out();
            writeln!(
                o,
                "afterlog serve: http://{bound}/ ({}, read-only)",
                shown(dir)
            )?;
            o.flush()?;
        }
        afterlog::web::serve(dashboard, listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        Ok(0)
    })
}
