//! What the figures were measured on: the machine, its load, the file system, versions.

use serde::Serialize;
use std::path::Path;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_bytes: u64,
    pub kernel: String,
    /// File system type of the bench directory, from `/proc/self/mounts`.
    pub file_system: String,
    /// The mount point holding the bench directory.
    pub mount_point: String,
    pub dir: String,
    /// `/proc/loadavg` (1, 5, 15 minutes) when the run started and when it ended: other
    /// work on the machine shows here.
    pub load_average_start: [f64; 3],
    pub load_average_end: [f64; 3],
}

#[derive(Clone, Debug, Serialize)]
pub struct Versions {
    pub afterlog: String,
    pub harness: String,
    pub rustc: String,
    pub sqlite: String,
    pub rusqlite: String,
    pub fjall: String,
}

pub fn versions() -> Versions {
    Versions {
        afterlog: afterlog_version(),
        harness: env!("CARGO_PKG_VERSION").into(),
        rustc: env!("AFTERLOG_BENCH_RUSTC").into(),
        sqlite: rusqlite::version().into(),
        rusqlite: env!("AFTERLOG_BENCH_RUSQLITE").into(),
        fjall: env!("AFTERLOG_BENCH_FJALL").into(),
    }
}

/// The library's version: the harness is built in the same workspace, from `..`.
fn afterlog_version() -> String {
    let manifest = include_str!("../../Cargo.toml");
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && let Some(v) = line.strip_prefix("version = ") {
            return v.trim_matches('"').to_string();
        }
    }
    "unknown".into()
}

pub fn machine(dir: &Path) -> Machine {
    let (mount_point, file_system) = mount_of(dir);
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu: std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into()),
        memory_bytes: meminfo_kib("MemTotal").unwrap_or(0) * 1024,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        file_system,
        mount_point,
        dir: dir.display().to_string(),
        load_average_start: load_average(),
        load_average_end: load_average(),
    }
}

pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

fn meminfo_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    status_field(&text, key)
}

/// A `Key:   123 kB` field of `/proc/self/status` or `/proc/meminfo`, in kB.
pub fn status_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.split(':').next() == Some(key))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// This process's resident memory: (anonymous, file-backed) bytes, from `/proc/self/status`.
pub fn rss() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    (
        status_field(&text, "RssAnon").unwrap_or(0) * 1024,
        status_field(&text, "RssFile").unwrap_or(0) * 1024,
    )
}

/// The mount point and file system type of `dir`: the longest mount point containing it in
/// `/proc/self/mounts`.
fn mount_of(dir: &Path) -> (String, String) {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|mounts| {
            mounts
                .lines()
                .filter_map(|line| {
                    let mut fields = line.split_whitespace();
                    let (_dev, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
                    dir.starts_with(point)
                        .then(|| (point.to_string(), kind.to_string()))
                })
                .max_by_key(|(point, _)| point.len())
        })
        .unwrap_or_else(|| ("unknown".into(), "unknown".into()))
}
