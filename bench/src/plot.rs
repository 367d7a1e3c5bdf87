//! The SVG plot: durable publish throughput by scenario and system (log scale), timer
//! lateness percentiles, recovery rate against the sequential read, and the disk bytes of
//! the compaction runs over time.

use crate::Report;
use crate::publish::SYSTEMS;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// One per system of `SYSTEMS`, in order.
const COLORS: [RGBColor; SYSTEMS.len()] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x9e, 0xc9, 0xe8),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbc, 0xbc),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
];

type DrawResult = Result<(), Box<dyn std::error::Error>>;

pub fn draw(report: &Report, path: &Path) -> DrawResult {
    let root = SVGBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(480);
    let bottom = bottom.split_evenly((1, 3));
    publish_panel(report, &top)?;
    timer_panel(report, &bottom[0])?;
    recovery_panel(report, &bottom[1])?;
    compaction_panel(report, &bottom[2])?;
    root.present()?;
    Ok(())
}

fn not_run(area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>, what: &str) -> DrawResult {
    area.draw_text(
        &format!("{what}: not run"),
        &("sans-serif", 16).into_text_style(area),
        (20, 40),
    )?;
    Ok(())
}

fn publish_panel(
    report: &Report,
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
) -> DrawResult {
    let Some(publish) = &report.publish else {
        return not_run(area, "durable publish");
    };
    let max = publish
        .iter()
        .flat_map(|s| s.systems.values().map(|r| r.events_per_s))
        .fold(1.0f64, f64::max);
    let n = publish.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!(
                "Durable publish, {}-byte bodies: events/s (log scale)",
                report.parameters.body_bytes
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n, (10f64..max * 4.0).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("events/s")
        .y_label_formatter(&|v| crate::format_rate(*v))
        .draw()?;
    let width = 0.8 / SYSTEMS.len() as f64;
    for (j, system) in SYSTEMS.iter().enumerate() {
        let color = COLORS[j];
        chart
            .draw_series(publish.iter().enumerate().map(|(i, s)| {
                let x0 = i as f64 + 0.1 + j as f64 * width;
                let v = s.systems[*system].events_per_s.max(10.0);
                Rectangle::new([(x0, 10.0), (x0 + width * 0.9, v)], color.filled())
            }))?
            .label(*system)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        chart.draw_series(publish.iter().enumerate().map(|(i, s)| {
            let x0 = i as f64 + 0.1 + j as f64 * width;
            let v = s.systems[*system].events_per_s.max(10.0);
            Text::new(
                crate::format_rate(v),
                (x0, v * 1.25),
                ("sans-serif", 12).into_font(),
            )
        }))?;
    }
    // Scenario names under the axis, centred on their group.
    for (i, s) in publish.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 10.0));
        area.draw_text(
            &s.scenario,
            &("sans-serif", 15)
                .into_text_style(area)
                .pos(Pos::new(HPos::Center, VPos::Top)),
            (x - area.get_base_pixel().0, y - area.get_base_pixel().1 + 8),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn timer_panel(
    report: &Report,
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
) -> DrawResult {
    let Some(t) = &report.timer else {
        return not_run(area, "timer");
    };
    let values = [
        ("p50", t.lateness_p50_ms),
        ("p99", t.lateness_p99_ms),
        ("max", t.lateness_max_ms),
    ];
    let max = values.iter().map(|v| v.1).fold(5.0f64, f64::max) * 1.25;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("Lateness, {} events due within 1 s (ms)", t.events),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..3f64, 0f64..max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("ms")
        .draw()?;
    chart.draw_series(values.iter().enumerate().map(|(i, (_, v))| {
        Rectangle::new(
            [(i as f64 + 0.2, 0.0), (i as f64 + 0.8, *v)],
            COLORS[0].filled(),
        )
    }))?;
    chart.draw_series(values.iter().enumerate().map(|(i, (name, v))| {
        Text::new(
            format!("{name} {v:.2}"),
            (i as f64 + 0.2, v + max * 0.03),
            ("sans-serif", 13).into_font(),
        )
    }))?;
    chart.draw_series(LineSeries::new(
        [(0.0, 5.0), (3.0, 5.0)],
        RED.stroke_width(1),
    ))?;
    chart.draw_series(std::iter::once(Text::new(
        "p99 target 5 ms",
        (0.05, 5.0 + max * 0.01),
        ("sans-serif", 12).into_font().color(&RED),
    )))?;
    Ok(())
}

fn recovery_panel(
    report: &Report,
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
) -> DrawResult {
    let Some(rec) = &report.recovery else {
        return not_run(area, "recovery");
    };
    // Events/s replayed, and the rate at which a sequential read of the same bytes would
    // hand over the same events.
    let bars: Vec<(String, f64, f64)> = rec
        .iter()
        .map(|r| {
            (
                format!("{}M", r.pending as f64 / 1e6),
                r.events_per_s,
                r.pending as f64 / r.sequential_read_s,
            )
        })
        .collect();
    let max = bars.iter().map(|b| b.1.max(b.2)).fold(1e6f64, f64::max) * 3.0;
    let min = bars.iter().map(|b| b.1.min(b.2)).fold(1e6f64, f64::min) / 3.0;
    let n = bars.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption("Recovery: events/s (log scale)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n, (min..max).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&|v| crate::format_rate(*v))
        .draw()?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Rectangle::new(
                [(i as f64 + 0.1, min), (i as f64 + 0.48, b.1)],
                COLORS[0].filled(),
            )
        }))?
        .label("afterlog open")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], COLORS[0].filled()));
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Rectangle::new(
                [(i as f64 + 0.52, min), (i as f64 + 0.9, b.2)],
                COLORS[1].filled(),
            )
        }))?
        .label("sequential read, same bytes")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], COLORS[1].filled()));
    for (i, b) in bars.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(i as f64 + 0.5, min));
        area.draw_text(
            &format!("{} pending", b.0),
            &("sans-serif", 13)
                .into_text_style(area)
                .pos(Pos::new(HPos::Center, VPos::Top)),
            (x - area.get_base_pixel().0, y - area.get_base_pixel().1 + 6),
        )?;
    }
    chart
        .draw_series(LineSeries::new([(0.0, 1e6), (n, 1e6)], RED.stroke_width(1)))?
        .label("target 1M/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn compaction_panel(
    report: &Report,
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
) -> DrawResult {
    let Some(c) = &report.compaction else {
        return not_run(area, "compaction");
    };
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let max_t = c
        .runs
        .iter()
        .flat_map(|r| r.disk_bytes.iter().map(|s| s.0))
        .fold(1.0f64, f64::max);
    let max_b = c
        .runs
        .iter()
        .flat_map(|r| r.disk_bytes.iter().map(|s| mib(s.1)))
        .fold(1.0f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("Disk MiB over time; publish on/off {:.2}", c.ratio),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_t, 0f64..max_b)?;
    chart.configure_mesh().x_desc("s").y_desc("MiB").draw()?;
    for (on, color) in [(false, COLORS[2]), (true, COLORS[0])] {
        if let Some(run) = c.runs.iter().find(|r| r.compaction == on) {
            chart
                .draw_series(LineSeries::new(
                    run.disk_bytes.iter().map(|s| (s.0, mib(s.1))),
                    color.stroke_width(2),
                ))?
                .label(format!(
                    "compaction {} ({}/s)",
                    if on { "on" } else { "off" },
                    crate::format_rate(run.events_per_s)
                ))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
