//! The PNG of a runner's report: per payload size, the delivered packets per second at max
//! rate (one bar per server) and the p99 latency at each fixed offered load (one line per
//! server).
//!
//! Text is drawn with a TrueType font read at run time (DejaVu Sans by default, Debian's
//! `fonts-dejavu-core`), so the build links no font library.

use std::path::Path;

use anyhow::{Context as _, anyhow, ensure};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::generator::Rate;
use crate::report::{Median, Report, ServerKind};

/// The font used when none is given.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Width and height of the image.
const SIZE: (u32, u32) = (1100, 720);

fn color(server: ServerKind) -> RGBColor {
    match server {
        ServerKind::BosonUring => RGBColor(0x1f, 0x77, 0xb4),
        ServerKind::BosonEpoll => RGBColor(0x2c, 0xa0, 0x2c),
        ServerKind::Coturn => RGBColor(0xd6, 0x27, 0x28),
        ServerKind::Raw => RGBColor(0x7f, 0x7f, 0x7f),
    }
}

/// Reads `json` (a runner report) and writes the plot to `png`.
pub fn plot_file(json: &Path, png: &Path, font: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let report: Report =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
    register_font(font)?;
    draw(&report, png)
}

fn register_font(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading the font {} (pass --font)", path.display()))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a usable TrueType font", path.display()))
}

/// Draws `report` into `png`.
pub fn draw(report: &Report, png: &Path) -> anyhow::Result<()> {
    let mut payloads: Vec<usize> = report.medians.iter().map(|m| m.payload).collect();
    payloads.sort_unstable();
    payloads.dedup();
    ensure!(!payloads.is_empty(), "the report has no results to plot");
    let root = BitMapBackend::new(png, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let title = format!(
        "TURN ChannelData relay on one core: {} ({} CPUs), {} s/round, {} flows",
        report.machine.cpu_model, report.machine.nproc, report.duration_s, report.flows
    );
    let root = root
        .titled(&title, ("sans-serif", 20))
        .map_err(|e| anyhow!("{e}"))?;
    let rows = root.split_evenly((payloads.len(), 2));
    for (row, payload) in payloads.iter().enumerate() {
        let medians: Vec<&Median> = report
            .medians
            .iter()
            .filter(|m| m.payload == *payload)
            .collect();
        throughput(&rows[row * 2], *payload, &medians)?;
        latency(&rows[row * 2 + 1], *payload, &medians)?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Bars of delivered pps at max rate, one per server.
fn throughput(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    payload: usize,
    medians: &[&Median],
) -> anyhow::Result<()> {
    let bars: Vec<(ServerKind, f64)> = medians
        .iter()
        .filter(|m| m.rate == Rate::Max && m.rounds > 0)
        .map(|m| (m.server, m.delivered_pps / 1_000.0))
        .collect();
    let top = bars.iter().map(|b| b.1).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{payload} B payload: delivered kpps at max offered rate (median)"),
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(10)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..bars.len().max(1) as f64, 0.0..top)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_labels(0)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("kpps")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (server, kpps))| {
            let x = i as f64;
            Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, *kpps)],
                color(*server).filled(),
            )
        }))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (server, kpps))| {
            Text::new(
                format!("{} {kpps:.0}k", server.name()),
                (i as f64 + 0.12, kpps + top * 0.06),
                ("sans-serif", 13),
            )
        }))
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Lines of p99 latency against the fixed offered loads, one per server.
fn latency(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    payload: usize,
    medians: &[&Median],
) -> anyhow::Result<()> {
    let points = |server: ServerKind| -> Vec<(f64, f64)> {
        medians
            .iter()
            .filter(|m| m.server == server && m.rounds > 0)
            .filter_map(|m| Some((m.rate.pps()? as f64 / 1_000.0, m.p99_us)))
            .collect()
    };
    let all: Vec<(f64, f64)> = ServerKind::ALL.into_iter().flat_map(points).collect();
    let caption = format!("{payload} B payload: p99 one-way latency at fixed offered load");
    if all.is_empty() {
        area.draw(&Text::new(
            format!("{caption}: no fixed-load results"),
            (20, 30),
            ("sans-serif", 16),
        ))
        .map_err(|e| anyhow!("{e}"))?;
        return Ok(());
    }
    let right = all.iter().map(|p| p.0).fold(1.0, f64::max) * 1.1;
    let top = all.iter().map(|p| p.1).fold(1.0, f64::max) * 2.0;
    let bottom = (all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min) / 2.0).max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..right, (bottom..top).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc("offered kpps")
        .y_desc("p99 µs (log)")
        .y_labels(6)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for server in ServerKind::ALL {
        let line = points(server);
        if line.is_empty() {
            continue;
        }
        let style = color(server);
        chart
            .draw_series(LineSeries::new(line.clone(), style.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(server.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style.stroke_width(2)));
        chart
            .draw_series(
                line.into_iter()
                    .filter(|p| p.1 > 0.0)
                    .map(|p| Circle::new(p, 3, style.filled())),
            )
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
