//! `Engine::metrics_text`: the engine's own counts in the Prometheus text exposition format
//! (version 0.0.4), under the names the `metrics` facade is given (docs/OBSERVABILITY.md).
//!
//! Each family is a `# HELP` and a `# TYPE` line, then its samples; label values are escaped
//! as the format says (backslash, double quote and line feed). Histograms are Prometheus
//! histograms with the fixed buckets of `crate::histogram`: cumulative `_bucket{le=".."}`
//! lines ending with `le="+Inf"`, then `_sum` and `_count`.

use super::Inner;
use super::names::{NameStats, Outcome};
use crate::histogram::HistogramSnapshot;
use std::fmt::Write;

/// Renders every family (see the module doc).
pub(crate) fn render(inner: &Inner) -> String {
    let names = inner.metrics.names.all();
    let gauges = inner.core_gauges();
    // About 1.5 KB per name (counters and two histograms of 24 buckets each).
    let mut out = String::with_capacity(4_096 + names.len() * 6_144);
    per_name_counter(
        &mut out,
        "afterlog_published_total",
        "Events published.",
        &names,
        |c| c.published,
    );
    family(
        &mut out,
        "afterlog_attempts_total",
        "counter",
        "Finished deliveries, by how they ended.",
    );
    for stats in &names {
        let c = stats.counts();
        for outcome in Outcome::ALL {
            let n = match outcome {
                Outcome::Acked => c.acked,
                Outcome::Retried => c.retried,
                Outcome::Dropped => c.dropped,
                Outcome::Expired => c.expired,
                Outcome::Ignored => c.ignored,
                Outcome::TimedOut => c.timed_out,
                Outcome::Panicked => c.panicked,
            };
            let _ = writeln!(
                out,
                "afterlog_attempts_total{{name=\"{}\",outcome=\"{}\"}} {n}",
                Escaped(&stats.name),
                outcome.label()
            );
        }
    }
    per_name_counter(
        &mut out,
        "afterlog_cancelled_total",
        "Events cancelled.",
        &names,
        |c| c.cancelled,
    );
    per_name_counter(
        &mut out,
        "afterlog_dead_letters_total",
        "Events that became dead letters.",
        &names,
        |c| c.dead_letters,
    );
    family(
        &mut out,
        "afterlog_lateness_seconds",
        "histogram",
        "From an attempt's due time to the start of its handlers, in seconds.",
    );
    for stats in &names {
        histogram(
            &mut out,
            "afterlog_lateness_seconds",
            Some(&stats.name),
            &stats.lateness.snapshot(),
        );
    }
    family(
        &mut out,
        "afterlog_handler_duration_seconds",
        "histogram",
        "One handler's call, in seconds.",
    );
    for stats in &names {
        histogram(
            &mut out,
            "afterlog_handler_duration_seconds",
            Some(&stats.name),
            &stats.handler_duration.snapshot(),
        );
    }
    family(
        &mut out,
        "afterlog_fsync_duration_seconds",
        "histogram",
        "One data sync of the log, in seconds.",
    );
    let fsync = inner.log.fsync_histogram().snapshot();
    histogram(&mut out, "afterlog_fsync_duration_seconds", None, &fsync);
    family(
        &mut out,
        "afterlog_records_per_sync",
        "histogram",
        "Records one data sync made durable.",
    );
    let records = inner.log.records_per_sync_histogram().snapshot();
    histogram(&mut out, "afterlog_records_per_sync", None, &records);
    for (name, help, value) in [
        (
            "afterlog_pending_events",
            "Events scheduled or running.",
            gauges.pending,
        ),
        (
            "afterlog_in_flight_events",
            "Events taken for delivery whose attempt has not finished.",
            gauges.in_flight,
        ),
        (
            "afterlog_queued_events",
            "Due events waiting in their names' queues.",
            gauges.queued,
        ),
        (
            "afterlog_dead_letters_kept",
            "Dead letters kept.",
            gauges.dead_letters,
        ),
        (
            "afterlog_disk_bytes",
            "Bytes of the segment files.",
            gauges.disk_bytes,
        ),
        (
            "afterlog_index_bytes",
            "Heap bytes of the event index (an estimate).",
            gauges.index_bytes,
        ),
    ] {
        family(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// The `# HELP` and `# TYPE` lines of metric family `name`.
pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn per_name_counter(
    out: &mut String,
    name: &str,
    help: &str,
    names: &[&NameStats],
    value: impl Fn(&super::NameMetrics) -> u64,
) {
    family(out, name, "counter", help);
    for stats in names {
        let n = value(&stats.counts());
        let _ = writeln!(out, "{name}{{name=\"{}\"}} {n}", Escaped(&stats.name));
    }
}

fn histogram(out: &mut String, family: &str, name: Option<&str>, h: &HistogramSnapshot) {
    let (label, sep) = match name {
        Some(n) => (format!("name=\"{}\"", Escaped(n)), ","),
        None => (String::new(), ""),
    };
    for (le, count) in &h.buckets {
        let _ = writeln!(out, "{family}_bucket{{{label}{sep}le=\"{le}\"}} {count}");
    }
    let _ = writeln!(
        out,
        "{family}_bucket{{{label}{sep}le=\"+Inf\"}} {}",
        h.count
    );
    let braces = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            format!("{{{s}}}")
        }
    };
    let _ = writeln!(out, "{family}_sum{} {}", braces(&label), h.sum);
    let _ = writeln!(out, "{family}_count{} {}", braces(&label), h.count);
}

/// A label value escaped for the text format: `\` as `\\`, `"` as `\"`, a line feed as `\n`.
pub(crate) struct Escaped<'a>(pub(crate) &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let e = |s: &str| Escaped(s).to_string();
        assert_eq!(e("plain.name"), "plain.name");
        assert_eq!(e(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(e("line\nfeed"), r"line\nfeed");
        assert_eq!(e("\\\"\n"), r#"\\\"\n"#);
    }
}
