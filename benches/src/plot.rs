//! The PNGs of the runners' reports, per payload size: delivered throughput at max rate (one
//! bar per server) and the p99 latency at each fixed offered load (one line per server).
//! A TURN report ([`Report`]) plots packets per second; a node relay report ([`WsReport`],
//! WebSocket and QUIC, the JSON has `pairs`) plots messages per second with MB/s on the bars.
//!
//! Text is drawn with a TrueType font read at run time (DejaVu Sans by default, Debian's
//! `fonts-dejavu-core`), so the build links no font library.

use std::path::Path;

use anyhow::{Context as _, anyhow, ensure};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::generator::Rate;
use crate::report::{Median, Report, Server, ServerKind, Summary};
use crate::ws_report::{WsMedian, WsReport, WsServerKind};

/// The font used when none is given.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Width and height of the image.
const SIZE: (u32, u32) = (1100, 720);

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

fn color(server: ServerKind) -> RGBColor {
    match server {
        ServerKind::BosonUring => RGBColor(0x1f, 0x77, 0xb4),
        ServerKind::BosonEpoll => RGBColor(0x2c, 0xa0, 0x2c),
        ServerKind::BosonUringNogso => RGBColor(0x9e, 0xc9, 0xe8),
        ServerKind::BosonEpollNogso => RGBColor(0x98, 0xdf, 0x8a),
        ServerKind::Coturn => RGBColor(0xd6, 0x27, 0x28),
        ServerKind::CoturnSrc => RGBColor(0xff, 0x7f, 0x0e),
        ServerKind::Raw => RGBColor(0x7f, 0x7f, 0x7f),
        ServerKind::RawGso => RGBColor(0x3f, 0x3f, 0x3f),
    }
}

fn ws_color(server: WsServerKind) -> RGBColor {
    match server {
        WsServerKind::BosonWs => RGBColor(0x1f, 0x77, 0xb4),
        WsServerKind::WsBaseline => RGBColor(0xff, 0x7f, 0x0e),
        WsServerKind::BosonQuic => RGBColor(0x2c, 0xa0, 0x2c),
        WsServerKind::QuicBaseline => RGBColor(0x94, 0x67, 0xbd),
    }
}

/// One bar: its label, colour and height.
struct Bar {
    label: String,
    color: RGBColor,
    value: f64,
}

/// One line: its legend, colour and points (x, y).
struct Line {
    label: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Reads `json` (a `run` or `run --ws` report) and writes the plot to `png`.
pub fn plot_file(json: &Path, png: &Path, font: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
    register_font(font)?;
    if value.get("pairs").is_some() {
        let report: WsReport = serde_json::from_value(value)
            .with_context(|| format!("parsing {} as a WebSocket report", json.display()))?;
        draw_ws(&report, png)
    } else {
        let report: Report = serde_json::from_value(value)
            .with_context(|| format!("parsing {} as a TURN report", json.display()))?;
        draw(&report, png)
    }
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
    let payloads = sizes(&report.medians)?;
    let title = format!(
        "TURN ChannelData relay on one core: {} ({} CPUs), {} s/round, {} flows",
        report.machine.cpu_model, report.machine.nproc, report.duration_s, report.flows
    );
    let (root, rows) = canvas(png, &title, payloads.len())?;
    for (row, payload) in payloads.iter().enumerate() {
        let medians: Vec<&Median> = report
            .medians
            .iter()
            .filter(|m| m.payload == *payload)
            .collect();
        let bars = medians
            .iter()
            .filter(|m| m.rate == Rate::Max && m.rounds > 0)
            .map(|m| Bar {
                label: format!("{} {:.0}k", m.server.name(), m.delivered_pps / 1_000.0),
                color: color(m.server),
                value: m.delivered_pps / 1_000.0,
            })
            .collect();
        let caption = format!("{payload} B payload: delivered kpps at max offered rate (median)");
        bars_panel(&rows[row * 2], &caption, "kpps", bars)?;
        let lines = p99_lines(&medians, color);
        let caption = format!("{payload} B payload: p99 one-way latency at fixed offered load");
        lines_panel(&rows[row * 2 + 1], &caption, "offered kpps", lines)?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Draws a WebSocket `report` into `png`.
pub fn draw_ws(report: &WsReport, png: &Path) -> anyhow::Result<()> {
    let packets = sizes(&report.medians)?;
    let transports = if report.medians.iter().any(|m| m.server.is_quic()) {
        "Node relays over QUIC and WebSocket"
    } else {
        "WebSocket relay"
    };
    let title = format!(
        "{transports}, {} worker(s) on one core: {} ({} CPUs), {} s/round, {} pairs",
        report.workers,
        report.machine.cpu_model,
        report.machine.nproc,
        report.duration_s,
        report.pairs
    );
    let (root, rows) = canvas(png, &title, packets.len())?;
    for (row, packet) in packets.iter().enumerate() {
        let medians: Vec<&WsMedian> = report
            .medians
            .iter()
            .filter(|m| m.packet == *packet)
            .collect();
        // A relay that failed in every round keeps its place, as an empty bar that says so.
        let bars = medians
            .iter()
            .filter(|m| m.rate == Rate::Max)
            .map(|m| Bar {
                label: if m.rounds == 0 {
                    format!("{}: no result", m.server.name())
                } else {
                    format!(
                        "{} {:.0}k/s {:.0} MB/s",
                        m.server.name(),
                        m.delivered_mps / 1_000.0,
                        m.delivered_mbps
                    )
                },
                color: ws_color(m.server),
                value: m.delivered_mps / 1_000.0,
            })
            .collect();
        let caption =
            format!("{packet} B packets: delivered k messages/s at max offered rate (median)");
        bars_panel(&rows[row * 2], &caption, "k msg/s", bars)?;
        let lines = p99_lines(&medians, ws_color);
        let caption = format!("{packet} B packets: p99 one-way latency at fixed offered load");
        lines_panel(&rows[row * 2 + 1], &caption, "offered k msg/s", lines)?;
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// The packet sizes of `medians`, sorted, once; an error if there are none.
fn sizes<M: Summary>(medians: &[M]) -> anyhow::Result<Vec<usize>> {
    let mut sizes: Vec<usize> = medians.iter().map(Summary::size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    ensure!(!sizes.is_empty(), "the report has no results to plot");
    Ok(sizes)
}

/// The image in `png`, white, under `title`, and its two panels (bars, lines) per size row.
fn canvas<'a>(
    png: &'a Path,
    title: &str,
    rows: usize,
) -> anyhow::Result<(Area<'a>, Vec<Area<'a>>)> {
    let root = BitMapBackend::new(png, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((rows, 2));
    Ok((root, panels))
}

/// One line per server of (offered thousands per second, p99) at the fixed loads that have
/// results, from the medians of one size.
fn p99_lines<M: Summary>(medians: &[&M], color: fn(M::Server) -> RGBColor) -> Vec<Line> {
    M::Server::ALL
        .iter()
        .map(|&server| Line {
            label: server.name(),
            color: color(server),
            points: medians
                .iter()
                .filter(|m| m.server() == server && m.rounds() > 0)
                .filter_map(|m| Some((m.rate().pps()? as f64 / 1_000.0, m.p99_us())))
                .collect(),
        })
        .collect()
}

/// A bar chart, one labelled bar per entry.
fn bars_panel(area: &Area<'_>, caption: &str, unit: &str, bars: Vec<Bar>) -> anyhow::Result<()> {
    let top = bars.iter().map(|b| b.value).fold(1.0, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
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
        .y_desc(unit)
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, bar)| {
            let x = i as f64;
            Rectangle::new([(x + 0.15, 0.0), (x + 0.85, bar.value)], bar.color.filled())
        }))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(bars.into_iter().enumerate().map(|(i, bar)| {
            Text::new(
                bar.label,
                (i as f64 + 0.12, bar.value + top * 0.06),
                ("sans-serif", 13),
            )
        }))
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// p99 latency (log scale) against offered load, one line per entry with points.
fn lines_panel(
    area: &Area<'_>,
    caption: &str,
    x_desc: &str,
    lines: Vec<Line>,
) -> anyhow::Result<()> {
    let all: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.points.clone()).collect();
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
        .x_desc(x_desc)
        .y_desc("p99 µs (log)")
        .y_labels(6)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for line in lines {
        if line.points.is_empty() {
            continue;
        }
        let style = line.color;
        chart
            .draw_series(LineSeries::new(line.points.clone(), style.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(line.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style.stroke_width(2)));
        chart
            .draw_series(
                line.points
                    .into_iter()
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
