//! Metrics and tracing: a Prometheus recorder and a `tracing` subscriber installed before the
//! engine opens, then one event acknowledged and one that fails once, and the exporter's text
//! printed beside the engine's own (`Engine::metrics_text`).
//!
//! `cargo run --example metrics_prometheus`

use afterlog::{After, Engine, HandlerError, Options, RetryPolicy};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Both before `Engine::open`: the engine takes its metric handles when it first sees a name.
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    tracing_subscriber::fmt().with_target(false).init();

    let dir = tempfile::tempdir()?;
    let options = Options::default().policy("mail", RetryPolicy::fixed(Duration::from_millis(50)));
    let engine = Engine::open_with(dir.path(), options)?;
    let failed_once = AtomicBool::new(false);
    engine.on("mail", move |event, _ctx| {
        tracing::info!(bytes = event.body().len(), "sending"); // inside the attempt's span
        if !failed_once.swap(true, Ordering::SeqCst) {
            return Err(HandlerError::msg("smtp: 421 try again later")); // a WARN line
        }
        Ok(())
    });
    engine.start();
    engine.publish("mail", "to: a@b.c", After::NOW)?;
    engine.publish("mail", "to: d@e.f", After::NOW)?;
    // The retry is due 50 ms after the failure: wait for it too.
    while engine.metrics().acked < 2 {
        engine.wait_idle(Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(10));
    }

    println!("--- metrics-exporter-prometheus ---");
    println!("{}", prometheus.render());
    println!("--- Engine::metrics_text ---");
    println!("{}", engine.metrics_text());
    engine.close()?;
    Ok(())
}
