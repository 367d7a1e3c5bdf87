//! Runs the harness binary on a tiny configuration of every scenario and checks that the
//! JSON report holds every expected figure and that the plot is an SVG. No timing is
//! asserted: the figures only have to be there.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn number(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for key in path.split('.') {
        at = match key.parse::<usize>() {
            Ok(i) => &at[i],
            Err(_) => &at[key],
        };
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {at}"))
}

#[test]
fn tiny_run_of_every_scenario_reports_every_figure() {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("afterlog-bench-test");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let json = base.join("run.json");
    let svg = base.join("run.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_afterlog-bench"))
        .args([
            "--quick",
            "--secs",
            "0.1",
            "--warmup",
            "0.02",
            "--publishers",
            "8",
        ])
        .args([
            "--e2e-events",
            "2000",
            "--timer-events",
            "500",
            "--timer-lead",
            "1",
        ])
        .args(["--recovery-events", "3000,6000", "--compaction-secs", "0.6"])
        .args(["--workers-events", "8", "--idle-pending", "2000"])
        .args([
            "--idle-passes",
            "3",
            "--idle-secs",
            "0.3",
            "--shrink-mb",
            "2",
        ])
        .args(["--async-tasks", "8,32", "--async-sleep-events", "200"])
        .args(["--keys-events", "2000", "--keys-memory-events", "3000"])
        .args(["--schedules", "200", "--dead-letters", "3000"])
        .args(["--dashboard-events", "3000"])
        .arg("--dir")
        .arg(base.join("data"))
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .expect("run afterlog-bench");
    assert!(
        out.status.success(),
        "afterlog-bench failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("durable publish"), "{table}");
    assert!(table.contains("target"), "{table}");

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in ["afterlog", "rustc", "sqlite", "fjall"] {
        assert!(v["versions"][key].is_string(), "versions.{key}");
    }
    for key in ["cores", "memory_bytes"] {
        number(&v, &format!("machine.{key}"));
    }
    assert!(v["machine"]["file_system"].is_string());
    assert_eq!(v["parameters"]["quick"], Value::Bool(true));
    assert_eq!(v["parameters"]["scenarios"].as_array().unwrap().len(), 14);
    assert_eq!(number(&v, "schedules.schedules"), 200.0);
    for key in [
        "deliveries",
        "delivered_share",
        "lateness_p50_ms",
        "lateness_p99_ms",
    ] {
        assert!(number(&v, &format!("schedules.{key}")) > 0.0 || key.starts_with("lateness"));
    }
    assert_eq!(number(&v, "dead.dead_letters"), 3000.0);
    for key in [
        "bytes_per_dead_letter",
        "index_estimate_bytes_per_dead_letter",
        "fresh_events_per_s",
        "beside_dead_events_per_s",
        "ratio",
    ] {
        assert!(number(&v, &format!("dead.{key}")) > 0.0, "dead.{key}");
    }
    assert_eq!(number(&v, "dashboard.events"), 3000.0);
    let pages = v["dashboard"]["pages"].as_array().expect("dashboard pages");
    assert!(pages.len() >= 10, "{pages:?}");
    for page in pages {
        assert!(page["bytes"].as_u64().unwrap() > 0, "{page}");
    }
    assert!(number(&v, "dashboard.vm_hwm_bytes") > 0.0);
    assert!(number(&v, "dashboard.live_metrics_bytes") > 0.0);
    assert!(number(&v, "dashboard.live_metrics_p99_ms") > 0.0);

    let publish = v["publish"].as_array().expect("publish");
    assert_eq!(publish.len(), 3);
    for (i, scenario) in ["1 publisher", "8 publishers", "batches of 1024"]
        .iter()
        .enumerate()
    {
        assert_eq!(publish[i]["scenario"], *scenario);
        for system in ["afterlog", "log", "raw", "fresh", "sqlite", "fjall"] {
            for key in ["events_per_s", "events_per_sync"] {
                assert!(number(&v, &format!("publish.{i}.systems.{system}.{key}")) > 0.0);
            }
            let runs = publish[i]["systems"][system]["runs"].as_array().unwrap();
            assert_eq!(runs.len(), 1);
        }
        for baseline in ["raw", "fresh", "sqlite", "fjall"] {
            number(&v, &format!("publish.{i}.afterlog_ratio.{baseline}"));
            number(&v, &format!("publish.{i}.log_ratio.{baseline}"));
        }
    }

    for key in [
        "events_per_s",
        "published_s",
        "acked_s",
        "records_per_fsync",
    ] {
        number(&v, &format!("end_to_end.{key}"));
    }
    for key in ["lateness_p50_ms", "lateness_p99_ms", "lateness_max_ms"] {
        assert!(number(&v, &format!("timer.{key}")) >= 0.0);
    }
    for i in 0..2 {
        for key in ["open_s", "events_per_s", "sequential_read_s", "data_bytes"] {
            number(&v, &format!("recovery.{i}.{key}"));
        }
        number(&v, &format!("memory.{i}.bytes_per_pending_event"));
    }
    assert_eq!(number(&v, "recovery.1.pending"), 6000.0);
    for key in ["on_events_per_s", "off_events_per_s", "ratio"] {
        number(&v, &format!("compaction.{key}"));
    }
    assert_eq!(v["compaction"]["runs"].as_array().unwrap().len(), 2);

    assert!(number(&v, "workers.ideal_s") > 0.0);
    let workers = v["workers"]["runs"].as_array().expect("workers runs");
    assert_eq!(workers.len(), 2);
    for (i, shape) in ["push", "publish"].iter().enumerate() {
        assert_eq!(workers[i]["shape"], *shape);
        assert_eq!(number(&v, &format!("workers.runs.{i}.events")), 8.0);
        for key in ["elapsed_s", "ratio_to_ideal", "lateness_p99_ms"] {
            number(&v, &format!("workers.runs.{i}.{key}"));
        }
    }
    assert_eq!(number(&v, "timer32.threads"), 32.0);
    for key in ["lateness_p50_ms", "lateness_p99_ms", "lateness_max_ms"] {
        assert!(number(&v, &format!("timer32.{key}")) >= 0.0);
    }
    assert_eq!(number(&v, "idle_pass.pending"), 2000.0);
    assert_eq!(v["idle_pass"]["idle_pass_ms"].as_array().unwrap().len(), 3);
    for key in [
        "first_pass_ms",
        "idle_pass_median_ms",
        "idle_pass_max_ms",
        "p50_ratio",
        "p99_ratio",
    ] {
        number(&v, &format!("idle_pass.{key}"));
    }
    let latency = v["idle_pass"]["runs"].as_array().expect("idle_pass runs");
    assert_eq!(latency.len(), 2);
    for i in 0..2 {
        assert!(number(&v, &format!("idle_pass.runs.{i}.published")) > 0.0);
        number(&v, &format!("idle_pass.runs.{i}.p99_us"));
    }

    for key in [
        "finished_bytes",
        "disk_before",
        "disk_after",
        "ratio_to_live_plus_segment",
    ] {
        assert!(number(&v, &format!("shrink.{key}")) > 0.0, "shrink.{key}");
    }

    assert_eq!(number(&v, "async.runtime_workers"), 2.0);
    let publish_async = v["async"]["publish"].as_array().expect("async publish");
    assert_eq!(publish_async.len(), 2);
    for (i, tasks) in [8.0, 32.0].iter().enumerate() {
        assert_eq!(number(&v, &format!("async.publish.{i}.tasks")), *tasks);
        assert_eq!(
            number(&v, &format!("async.publish.{i}.raw_records_per_sync")),
            *tasks
        );
        for system in ["afterlog_async", "raw", "afterlog_threads"] {
            assert!(number(&v, &format!("async.publish.{i}.{system}.events_per_s")) > 0.0);
        }
        for key in ["async_over_raw", "threads_over_raw", "async_over_threads"] {
            number(&v, &format!("async.publish.{i}.{key}"));
        }
    }
    for key in ["async_events_per_s", "sync_events_per_s", "ratio"] {
        assert!(number(&v, &format!("async.end_to_end.{key}")) > 0.0);
    }
    // At least 3 rounds, for the median of the rounds' paired ratios.
    for kind in ["async_runs", "sync_runs", "round_ratios"] {
        assert_eq!(v["async"]["end_to_end"][kind].as_array().unwrap().len(), 3);
    }
    assert_eq!(number(&v, "async.sleep.events"), 200.0);
    // Every handler sleeps 1 s.
    assert!(number(&v, "async.sleep.first_due_to_all_acked_s") >= 1.0);

    for key in [
        "unkeyed_per_s",
        "keyed_per_s",
        "no_priorities_per_s",
        "priorities_per_s",
        "others_unlimited_per_s",
        "others_beside_limit_per_s",
        "unkeyed_bytes_per_event",
        "keyed_bytes_per_event",
    ] {
        assert!(number(&v, &format!("keys.{key}")) > 0.0, "keys.{key}");
    }
    assert_eq!(number(&v, "keys.limited_most_at_once"), 1.0);
    assert_eq!(number(&v, "keys.memory_events"), 3000.0);

    // 3 log-vs-raw and 3 publish-vs-raw targets, 2 against SQLite and fjall, end to end,
    // lateness, 2 recovery, 2 memory, compaction; 2 workers, lateness of timer32, 2 idle
    // pass and the publish latency ratio; the disk after compaction; 2 async publish, async
    // end to end and the async sleep; keyed publish, priorities, the concurrency limit's
    // cost and its bound, memory per keyed event; the schedules' lateness and their share
    // delivered; memory per dead letter and the end to end rate beside them; the dashboard's
    // slowest page, its peak memory and `/metrics` of a live engine.
    let targets = v["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 38, "{targets:?}");
    for t in targets {
        assert!(t["name"].is_string() && t["met"].is_boolean());
        assert!(t["measured"].is_number() && t["target"].is_number(), "{t}");
    }

    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let _ = std::fs::remove_dir_all(&base);
}
