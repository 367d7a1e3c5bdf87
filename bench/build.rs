//! Records, for the report, the compiler's version and the versions of the baselines'
//! crates as locked in the workspace's `Cargo.lock`.

use std::path::Path;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = std::process::Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=AFTERLOG_BENCH_RUSTC={version}");

    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    for (krate, var) in [
        ("fjall", "AFTERLOG_BENCH_FJALL"),
        ("rusqlite", "AFTERLOG_BENCH_RUSQLITE"),
    ] {
        println!("cargo:rustc-env={var}={}", locked_version(&text, krate));
    }
}

/// The version of `krate` in a `Cargo.lock`'s text (the first one listed).
fn locked_version(lock: &str, krate: &str) -> String {
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{krate}\"")
            && let Some(v) = lines.next()
            && let Some(v) = v.trim().strip_prefix("version = ")
        {
            return v.trim_matches('"').to_string();
        }
    }
    "unknown".into()
}
