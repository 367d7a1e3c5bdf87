//! How the CLI and the dashboard show things: aligned tables for people, JSON for scripts,
//! times, bodies. Not API: public (hidden) for the `afterlog` command.

use crate::record::{AckOutcome, CancelTarget, Record};
use crate::{Position, drop_reason_name, record_time_ms, retry_reason_name};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use std::fmt::Write as _;

/// Text from data (names, bodies, messages, file names) made safe for a terminal: control
/// characters (C0 and DEL as `\x1b`, C1 as `\u{9b}`) and the bidi overrides and isolates
/// (U+202A–U+202E, U+2066–U+2069, as `\u{202e}`) are written as escapes, so no escape
/// sequence (an OSC 52 clipboard write, a cursor movement) and no reordering reaches the
/// terminal. Newlines are escaped too: one item stays on one line. JSON output does not
/// go through here (serde_json escapes it exactly).
pub fn escape(text: &str) -> String {
    escape_keeping(text, &[])
}

/// Like [`escape`], but leaves newlines and tabs as they are: for a body printed alone.
pub fn escape_text(text: &str) -> String {
    escape_keeping(text, &['\n', '\t'])
}

fn escape_keeping(text: &str, keep: &[char]) -> String {
    let unsafe_char = |c: char| {
        !keep.contains(&c)
            && (c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c))
    };
    if !text.chars().any(unsafe_char) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !unsafe_char(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    out
}

/// A Unix epoch time in ms as RFC 3339 UTC with milliseconds.
pub fn time(epoch_ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(epoch_ms).map_or_else(
        || format!("{epoch_ms} ms"),
        |t| t.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

/// Bytes with a binary unit for people: `4096 (4.0 KiB)`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{n} ({value:.1} {})", UNITS[unit])
}

/// A body as JSON fields: `body` when it is UTF-8, else `body_hex`.
pub fn body_fields(body: &[u8], into: &mut serde_json::Map<String, Value>) {
    match std::str::from_utf8(body) {
        Ok(text) => into.insert("body".into(), Value::String(text.into())),
        Err(_) => into.insert("body_hex".into(), Value::String(hex(body))),
    };
}

/// Lower-case hex, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A body for people: the text when it is UTF-8 (escaped, see [`escape_text`]), else `hex:`
/// and its bytes.
pub fn body_text(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(text) => escape_text(text),
        Err(_) => format!("hex:{}", hex(body)),
    }
}

/// One record as a JSON object: where it lies, its kind and time, and its fields.
pub fn record_json(pos: Position, record: &Record<'_>) -> Value {
    let time_ms = record_time_ms(record);
    let mut o = serde_json::Map::new();
    o.insert("seq".into(), json!(pos.seq));
    o.insert("segment".into(), json!(pos.segment));
    o.insert("offset".into(), json!(pos.offset));
    o.insert("kind".into(), json!(record.kind().name()));
    o.insert("time_ms".into(), json!(time_ms));
    o.insert("time".into(), json!(time(time_ms)));
    match record {
        Record::Publish(p) => {
            o.insert("job".into(), json!(p.job.map(|j| j.0)));
            let events: Vec<Value> = p
                .events()
                .map(|e| {
                    let mut ev = serde_json::Map::new();
                    ev.insert("id".into(), json!(e.id.0));
                    ev.insert("name".into(), json!(e.name));
                    ev.insert("due_ms".into(), json!(e.due_ms));
                    ev.insert("body_bytes".into(), json!(e.body.len()));
                    body_fields(e.body, &mut ev);
                    Value::Object(ev)
                })
                .collect();
            o.insert("events".into(), Value::Array(events));
            if let Some(opts) = p.options() {
                o.insert("priority".into(), json!(opts.priority));
                if !opts.key.is_empty() {
                    o.insert("key".into(), json!(String::from_utf8_lossy(opts.key)));
                    o.insert("key_mode".into(), json!(key_mode_name(opts.mode)));
                }
                if opts.window_ms > 0 {
                    o.insert("key_window_ms".into(), json!(opts.window_ms));
                }
                o.insert("replaces".into(), json!(opts.replaces.map(|r| r.0)));
                o.insert("restates".into(), json!(opts.restates));
                o.insert("redrives".into(), json!(opts.redrives));
            }
            if let Some(d) = p.schedule() {
                o.insert(
                    "schedule".into(),
                    json!({
                        "id": d.id,
                        "rule": schedule_rule(d.cron, d.every_ms),
                        "cron": (!d.cron.is_empty()).then_some(d.cron),
                        "every_ms": (d.every_ms > 0).then_some(d.every_ms),
                        "anchor_ms": (d.every_ms > 0).then_some(d.anchor_ms),
                        "catch_up": catch_up_name(d.catch_up),
                        "removed": d.removed,
                    }),
                );
            }
        }
        Record::JobDone(j) => {
            o.insert("job".into(), json!(j.job.0));
            o.insert("success".into(), json!(j.success));
            o.insert("failed".into(), json!(j.failed));
            o.insert("cancelled".into(), json!(j.cancelled));
        }
        Record::Pause(p) => {
            o.insert("name".into(), json!(p.name));
            o.insert("paused".into(), json!(p.paused));
        }
        Record::PurgeDead(_) => {}
        Record::Attempt(a) => {
            o.insert("event".into(), json!(a.event.0));
            o.insert("attempt".into(), json!(a.attempt));
        }
        Record::Retry(r) => {
            o.insert("event".into(), json!(r.event.0));
            o.insert("attempt".into(), json!(r.attempt));
            o.insert("next_due_ms".into(), json!(r.next_due_ms));
            o.insert("retry_count".into(), json!(r.retry_count));
            o.insert("reason".into(), json!(retry_reason_name(r.reason)));
            o.insert("message".into(), json!(r.message));
            o.insert("data_bytes".into(), json!(r.data.len()));
            // The retry data itself: text as text, anything else as hex.
            o.insert("data".into(), json!(data_text(r.data)));
        }
        Record::Ack(a) => {
            o.insert("event".into(), json!(a.event.0));
            o.insert("attempt".into(), json!(a.attempt));
            let outcome = match a.outcome {
                AckOutcome::Handled => "handled",
                AckOutcome::Ignored => "ignored",
            };
            o.insert("outcome".into(), json!(outcome));
        }
        Record::Cancel(c) => match c.target {
            CancelTarget::Event(e) => {
                o.insert("event".into(), json!(e.0));
            }
            CancelTarget::Job(j) => {
                o.insert("job".into(), json!(j.0));
            }
        },
        Record::Drop(d) => {
            o.insert("event".into(), json!(d.event.0));
            o.insert("attempt".into(), json!(d.attempt));
            o.insert("reason".into(), json!(drop_reason_name(d.reason)));
            o.insert("message".into(), json!(d.message));
        }
    }
    Value::Object(o)
}

/// Retry data for people: UTF-8 as it is, other bytes as hex.
pub fn data_text(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(text) => text.to_owned(),
        Err(_) => data.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// A schedule record's rule in words, as `afterlog schedules` shows it: its cron expression,
/// or its interval.
pub fn schedule_rule(cron: &str, every_ms: u64) -> String {
    if cron.is_empty() {
        format!("every {every_ms}ms")
    } else {
        format!("cron {cron}")
    }
}

/// The name of a schedule record's catch-up code.
pub fn catch_up_name(code: u8) -> &'static str {
    match code {
        crate::record::CATCH_UP_SKIP => "skip",
        crate::record::CATCH_UP_LATEST => "latest",
        crate::record::CATCH_UP_ALL => "all",
        _ => "unknown",
    }
}

/// The name of a key mode stored in a record.
pub fn key_mode_name(mode: u8) -> &'static str {
    match mode {
        crate::record::KEY_KEEP => "keep",
        crate::record::KEY_REPLACE => "replace",
        crate::record::KEY_REPLACE_BODY => "replace-body",
        _ => "none",
    }
}

/// One record in words, for the history table.
pub fn record_details(record: &Record<'_>) -> String {
    match record {
        Record::Publish(p) if p.schedule().is_some_and(|d| d.removed) => {
            let id = p.schedule().map_or("", |d| d.id);
            match p.options().and_then(|o| o.replaces) {
                Some(r) => format!("schedule {id:?} removed, its occurrence {r} cancelled"),
                None => format!("schedule {id:?} removed"),
            }
        }
        Record::Publish(p) => {
            let n = p.count();
            let job = p.job.map_or(String::new(), |j| format!(" in {j}"));
            let mut text = format!("{n} event(s){job}");
            if let Some(d) = p.schedule() {
                text.push_str(&format!(
                    ", occurrence of schedule {:?} ({}, catch-up {})",
                    d.id,
                    schedule_rule(d.cron, d.every_ms),
                    catch_up_name(d.catch_up)
                ));
            }
            if let Some(o) = p.options() {
                if o.priority != 0 {
                    text.push_str(&format!(", priority {}", o.priority));
                }
                if !o.key.is_empty() {
                    text.push_str(&format!(
                        ", key {:?} ({})",
                        String::from_utf8_lossy(o.key),
                        key_mode_name(o.mode)
                    ));
                }
                match o.replaces {
                    Some(r) if o.redrives => text.push_str(&format!(", redrives dead letter {r}")),
                    Some(r) => text.push_str(&format!(", replaces {r}")),
                    None => {}
                }
                if o.restates {
                    text.push_str(", new body");
                }
            }
            text
        }
        Record::Pause(p) if p.paused => format!("{:?} paused", p.name),
        Record::Pause(p) => format!("{:?} resumed", p.name),
        Record::PurgeDead(_) => "every dead letter before this purged".into(),
        Record::JobDone(j) => format!(
            "{} done: {} succeeded, {} failed, {} cancelled",
            j.job, j.success, j.failed, j.cancelled
        ),
        Record::Attempt(a) => format!("attempt {} started", a.attempt),
        Record::Retry(r) => {
            let mut text = format!(
                "attempt {} failed ({}): {}; due again {}",
                r.attempt,
                retry_reason_name(r.reason),
                r.message,
                time(r.next_due_ms)
            );
            if !r.data.is_empty() {
                text.push_str(&format!("; retry data {:?}", data_text(r.data)));
            }
            text
        }
        Record::Ack(a) => match a.outcome {
            AckOutcome::Handled => format!("attempt {} acknowledged", a.attempt),
            AckOutcome::Ignored => format!("attempt {} ignored (no handler)", a.attempt),
        },
        Record::Cancel(c) => match c.target {
            CancelTarget::Event(e) => format!("{e} cancelled"),
            CancelTarget::Job(j) => format!("{j} cancelled"),
        },
        Record::Drop(d) => format!(
            "dropped after {} attempt(s) ({}): {}",
            d.attempt,
            drop_reason_name(d.reason),
            d.message
        ),
    }
}

/// A table with a header row; columns are padded to their widest cell. Numeric columns
/// (`right`) are aligned right.
pub struct Table {
    header: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[(&'static str, bool)]) -> Table {
        Table {
            header: header.iter().map(|h| h.0).collect(),
            right: header.iter().map(|h| h.1).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; every cell is [`escape`]d, so a cell from data cannot reach the terminal
    /// as a control sequence or break the alignment.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len(), "cells {cells:?}");
        self.rows
            .push(cells.into_iter().map(|c| escape(&c)).collect());
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i] - cell.chars().count();
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right[i] {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if i + 1 < row.len() {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}
